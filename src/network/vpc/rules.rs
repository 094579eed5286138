//! The pure half of VPC networks: checking an attachment ([`PortPlan`])
//! and generating the nftables scripts that carry it out, so every rule
//! the data plane installs is pinned by the unit tests below.

use super::{invalid, BRIDGE, HOST_PEER, NEVER_OUTBOUND, SSH_MARK, TABLE};
use crate::network::{FlowRule, Protocol, VpcAttachment};
use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 block, always kept as its network address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr {
    net: Ipv4Addr,
    prefix: u8,
}

impl Cidr {
    fn mask(self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    /// Whether `ip` is in the block.
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.net)
    }

    /// The `n`th address of the block.
    pub fn nth(self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.net).wrapping_add(n))
    }

    /// The last address (broadcast).
    pub fn last(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.net) | !self.mask())
    }

    /// The router address EC2 gives a subnet: network + 1.
    pub fn router(self) -> Ipv4Addr {
        self.nth(1)
    }

    /// The prefix length.
    pub fn prefix(self) -> u8 {
        self.prefix
    }

    /// The netmask as an address.
    pub fn netmask(self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask())
    }
}

impl FromStr for Cidr {
    type Err = std::io::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = s.split_once('/').unwrap_or((s, "32"));
        let ip: Ipv4Addr = a
            .parse()
            .map_err(|_| invalid(format!("'{s}' is not an IPv4 block")))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| invalid(format!("'{s}' is not an IPv4 block")))?;
        let mut c = Cidr { net: ip, prefix };
        c.net = Ipv4Addr::from(u32::from(ip) & c.mask());
        Ok(c)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// A guest's attachment, checked and reduced to typed values: everything
/// the data plane generates comes from here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortPlan {
    /// The tap device's name in the VPC namespace (`t` + 14 hex digits of the ENI id).
    pub tap: String,
    /// `eni-…`
    pub eni: String,
    pub vpc: Cidr,
    pub subnet: Cidr,
    pub ip: Ipv4Addr,
    /// Lowercase `xx:xx:xx:xx:xx:xx`.
    pub mac: String,
    pub public_ip: Option<Ipv4Addr>,
    pub internet_gateway: bool,
}

impl PortPlan {
    /// Checks an attachment: ids, blocks, the address inside its subnet
    /// (not one of the subnet's reserved five), a unicast MAC, a loopback
    /// public address.
    pub fn new(att: &VpcAttachment) -> std::io::Result<Self> {
        let hex = att
            .network_interface_id
            .strip_prefix("eni-")
            .filter(|h| h.len() >= 14 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| {
                invalid(format!(
                    "'{}' is not a network interface id",
                    att.network_interface_id
                ))
            })?;
        if !att.vpc_id.starts_with("vpc-")
            || !att.vpc_id[4..].bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(invalid(format!("'{}' is not a VPC id", att.vpc_id)));
        }
        let vpc: Cidr = att.vpc_cidr.parse()?;
        let subnet: Cidr = att.subnet_cidr.parse()?;
        if subnet.prefix < vpc.prefix || !vpc.contains(subnet.net) || subnet.prefix > 28 {
            return Err(invalid(format!(
                "Subnet {subnet} is not a /16../28 block inside {vpc}"
            )));
        }
        let ip = att.private_ip;
        let reserved = [
            subnet.nth(0),
            subnet.nth(1),
            subnet.nth(2),
            subnet.nth(3),
            subnet.last(),
        ];
        if !subnet.contains(ip) || reserved.contains(&ip) {
            return Err(invalid(format!(
                "{ip} is not an assignable address of subnet {subnet}"
            )));
        }
        let mac = att.mac.to_ascii_lowercase();
        if !crate::machine::is_unicast_mac(&mac) {
            return Err(invalid(format!(
                "'{}' is not a unicast MAC address",
                att.mac
            )));
        }
        if let Some(p) = att.public_ip {
            if !p.is_loopback() || p == HOST_PEER {
                return Err(invalid(format!(
                    "Public address {p} is not a loopback address of its own"
                )));
            }
        }
        let hex = hex.to_ascii_lowercase();
        Ok(PortPlan {
            tap: format!("t{}", &hex[hex.len() - 14..]),
            eni: att.network_interface_id.clone(),
            vpc,
            subnet,
            ip,
            mac,
            public_ip: att.public_ip,
            internet_gateway: att.internet_gateway,
        })
    }
}

/// The nft match (without verdict) of one rule; `None` when it admits
/// nothing (no peers). `field` is `saddr` (ingress) or `daddr` (egress).
fn rule_match(r: &FlowRule, field: &str) -> std::io::Result<Option<String>> {
    let peers = r
        .peers
        .iter()
        .map(|p| p.parse::<Cidr>())
        .collect::<Result<BTreeSet<_>, _>>()?;
    if peers.is_empty() {
        return Ok(None);
    }
    let set = peers
        .iter()
        .map(Cidr::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let ports = |proto: &str| -> std::io::Result<String> {
        Ok(match (r.from_port, r.to_port) {
            (None, _) | (Some(0), Some(65535)) => format!("meta l4proto {proto}"),
            (Some(a), None) => format!("{proto} dport {a}"),
            (Some(a), Some(b)) if a == b => format!("{proto} dport {a}"),
            (Some(a), Some(b)) if a < b => format!("{proto} dport {a}-{b}"),
            (Some(a), Some(b)) => {
                return Err(invalid(format!("Port range {a}-{b} is empty")));
            }
        })
    };
    let proto = match r.protocol {
        Protocol::Tcp => ports("tcp")?,
        Protocol::Udp => ports("udp")?,
        Protocol::Icmp => match (r.from_port, r.to_port) {
            (None, _) => "meta l4proto icmp".to_string(),
            (Some(t), None) => format!("icmp type {t}"),
            (Some(t), Some(c)) => format!("icmp type {t} icmp code {c}"),
        },
        Protocol::All => String::new(),
    };
    Ok(Some(
        format!("ip {field} {{ {set} }} {proto}")
            .trim_end()
            .to_string(),
    ))
}

/// The TCP ports the host may reach on the public address: those of
/// ingress rules (TCP or all traffic) with a peer containing [`HOST_PEER`].
pub fn public_ports(att: &VpcAttachment) -> Vec<(u16, u16)> {
    let mut ranges = BTreeSet::new();
    for r in &att.ingress {
        let from_host = r
            .peers
            .iter()
            .filter_map(|p| p.parse::<Cidr>().ok())
            .any(|c| c.contains(HOST_PEER));
        if !from_host {
            continue;
        }
        match (r.protocol, r.from_port, r.to_port) {
            (Protocol::All, ..) | (Protocol::Tcp, None, _) => {
                ranges.insert((1, 65535));
            }
            (Protocol::Tcp, Some(a), b) => {
                let b = b.unwrap_or(a);
                if a <= b {
                    ranges.insert((a.max(1), b));
                }
            }
            _ => {}
        }
    }
    ranges.into_iter().collect()
}

/// Whether a TCP connection from `from` to `port` on the public address is
/// admitted by the ingress rules (checked for each connection the relay
/// takes, against the rules as they are then).
pub fn rule_admits(att: &VpcAttachment, from: Ipv4Addr, port: u16) -> bool {
    att.ingress.iter().any(|r| {
        let ports_ok = match (r.protocol, r.from_port, r.to_port) {
            (Protocol::All, ..) | (Protocol::Tcp, None, _) => true,
            (Protocol::Tcp, Some(a), b) => (a..=b.unwrap_or(a)).contains(&port),
            _ => false,
        };
        ports_ok
            && r.peers
                .iter()
                .filter_map(|p| p.parse::<Cidr>().ok())
                .any(|c| c.contains(from))
    })
}

fn port_set(ranges: &[(u16, u16)]) -> String {
    ranges
        .iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The namespace's tables, made once with the namespace.
pub fn base_ruleset(vpc: Cidr, host: &[Ipv4Addr], internet_gateway: bool) -> String {
    let mut never: Vec<String> = NEVER_OUTBOUND.iter().map(|s| s.to_string()).collect();
    never.push(vpc.to_string());
    never.extend(host.iter().map(|a| format!("{a}/32")));
    let dns = if internet_gateway {
        format!("\t\tiifname \"{BRIDGE}\" meta l4proto {{ tcp, udp }} th dport 53 accept\n")
    } else {
        String::new()
    };
    format!(
        "table inet {TABLE} {{
\tset never_outbound {{ type ipv4_addr; flags interval; auto-merge; elements = {{ {never} }} }}
\tmap ingress {{ type ipv4_addr : verdict; }}
\tmap egress {{ type ipv4_addr : verdict; }}
\tmap public {{ type ipv4_addr : verdict; }}
\tmap imds {{ type ipv4_addr : verdict; }}
\tchain to_dest {{
\t\toifname \"{BRIDGE}\" ip daddr vmap @ingress
\t\toifname \"{BRIDGE}\" drop
\t\tip daddr @never_outbound drop
\t\taccept
\t}}
\tchain forward_filter {{
\t\ttype filter hook forward priority filter; policy drop;
\t\tct state established,related accept
\t\tct state invalid drop
\t\tiifname \"{BRIDGE}\" ip saddr vmap @egress
\t}}
\tchain input_filter {{
\t\ttype filter hook input priority filter; policy drop;
\t\tiifname \"lo\" accept
\t\tct state established,related accept
\t\tct state invalid drop
\t\tiifname \"{BRIDGE}\" udp sport 68 udp dport 67 accept
\t\tiifname \"{BRIDGE}\" ip daddr 169.254.169.254 ct status dnat accept
\t\tiifname \"{BRIDGE}\" icmp type echo-request accept
{dns}\t}}
\tchain output_filter {{
\t\ttype filter hook output priority filter; policy accept;
\t\toifname != \"{BRIDGE}\" accept
\t\tct state established,related accept
\t\tudp sport 67 udp dport 68 accept
\t\tmeta mark {SSH_MARK:#x} tcp dport 22 accept
\t\tip daddr vmap @public
\t\tdrop
\t}}
\tchain prerouting_nat {{
\t\ttype nat hook prerouting priority dstnat;
\t\tiifname \"{BRIDGE}\" ip daddr 169.254.169.254 tcp dport 80 ip saddr vmap @imds
\t}}
\tchain postrouting_nat {{
\t\ttype nat hook postrouting priority srcnat;
\t\tip saddr {vpc} oifname != \"{BRIDGE}\" masquerade
\t}}
}}
table bridge {TABLE} {{
\tmap ports {{ type ifname : verdict; }}
\tchain prerouting_filter {{
\t\ttype filter hook prerouting priority filter; policy drop;
\t\tiifname vmap @ports
\t}}
}}
",
        never = never.join(", ")
    )
}

/// The guest's security-group chains (ingress, egress, from the namespace):
/// flushed and refilled, so one script replaces them atomically.
pub fn rules_script(plan: &PortPlan, att: &VpcAttachment) -> std::io::Result<String> {
    let t = &plan.tap;
    let mut s = String::new();
    for chain in ["in", "eg", "pub"] {
        s.push_str(&format!(
            "add chain inet {TABLE} {chain}_{t}\nflush chain inet {TABLE} {chain}_{t}\n"
        ));
    }
    for r in &att.ingress {
        if let Some(m) = rule_match(r, "saddr")? {
            s.push_str(&format!("add rule inet {TABLE} in_{t} {m} accept\n"));
        }
    }
    s.push_str(&format!("add rule inet {TABLE} in_{t} drop\n"));
    for r in &att.egress {
        if let Some(m) = rule_match(r, "daddr")? {
            s.push_str(&format!("add rule inet {TABLE} eg_{t} {m} goto to_dest\n"));
        }
    }
    s.push_str(&format!("add rule inet {TABLE} eg_{t} drop\n"));
    let ports = public_ports(att);
    if !ports.is_empty() {
        s.push_str(&format!(
            "add rule inet {TABLE} pub_{t} tcp dport {{ {} }} accept\n",
            port_set(&ports)
        ));
    }
    s.push_str(&format!("add rule inet {TABLE} pub_{t} drop\n"));
    Ok(s)
}

/// Everything of one guest: its chains, its IMDS redirect, its map entries
/// and its tap's anti-spoofing chain.
pub fn attach_script(
    plan: &PortPlan,
    att: &VpcAttachment,
    imds_port: u16,
) -> std::io::Result<String> {
    let (t, ip, mac) = (&plan.tap, plan.ip, &plan.mac);
    let mut s = rules_script(plan, att)?;
    s.push_str(&format!(
        "add chain inet {TABLE} imds_{t}\nflush chain inet {TABLE} imds_{t}\n\
         add rule inet {TABLE} imds_{t} meta l4proto tcp dnat ip to 169.254.169.254:{imds_port}\n"
    ));
    for (map, chain) in [
        ("ingress", "in"),
        ("egress", "eg"),
        ("public", "pub"),
        ("imds", "imds"),
    ] {
        s.push_str(&format!(
            "add element inet {TABLE} {map} {{ {ip} : goto {chain}_{t} }}\n"
        ));
    }
    s.push_str(&format!(
        "add chain bridge {TABLE} port_{t}\nflush chain bridge {TABLE} port_{t}\n"
    ));
    for rule in [
        format!("ether saddr != {mac} drop"),
        format!("ether type arp arp saddr ether != {mac} drop"),
        format!("ether type arp arp saddr ip != {{ {ip}, 0.0.0.0 }} drop"),
        "ether type arp accept".to_string(),
        format!("ether type ip ip saddr {ip} accept"),
        "ether type ip ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept".to_string(),
        "drop".to_string(),
    ] {
        s.push_str(&format!("add rule bridge {TABLE} port_{t} {rule}\n"));
    }
    s.push_str(&format!(
        "add element bridge {TABLE} ports {{ \"{t}\" : goto port_{t} }}\n"
    ));
    Ok(s)
}

/// Removes what [`attach_script`] made (map entries first: they name the chains).
pub fn detach_script(tap: &str, ip: Ipv4Addr) -> String {
    let mut s = String::new();
    for map in ["ingress", "egress", "public", "imds"] {
        s.push_str(&format!("delete element inet {TABLE} {map} {{ {ip} }}\n"));
    }
    s.push_str(&format!(
        "delete element bridge {TABLE} ports {{ \"{tap}\" }}\n"
    ));
    for chain in ["in", "eg", "pub", "imds"] {
        s.push_str(&format!("delete chain inet {TABLE} {chain}_{tap}\n"));
    }
    s.push_str(&format!("delete chain bridge {TABLE} port_{tap}\n"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att() -> VpcAttachment {
        VpcAttachment {
            vpc_id: "vpc-0123456789abcdef0".into(),
            vpc_cidr: "172.31.0.0/16".into(),
            subnet_id: "subnet-0123456789abcdef0".into(),
            subnet_cidr: "172.31.16.0/20".into(),
            network_interface_id: "eni-0123456789abcdef0".into(),
            private_ip: Ipv4Addr::new(172, 31, 16, 10),
            mac: "0A:12:34:56:78:9A".into(),
            public_ip: Some(Ipv4Addr::new(127, 100, 0, 5)),
            internet_gateway: false,
            ingress: vec![
                FlowRule {
                    protocol: Protocol::Tcp,
                    from_port: Some(22),
                    to_port: Some(22),
                    peers: vec!["0.0.0.0/0".into()],
                },
                FlowRule {
                    protocol: Protocol::All,
                    from_port: None,
                    to_port: None,
                    peers: vec!["172.31.16.11/32".into(), "172.31.16.12".into()],
                },
                FlowRule {
                    protocol: Protocol::Udp,
                    from_port: Some(5000),
                    to_port: Some(5010),
                    peers: vec!["10.1.2.3/8".into()],
                },
                FlowRule {
                    protocol: Protocol::Icmp,
                    from_port: Some(8),
                    to_port: None,
                    peers: vec![],
                },
            ],
            egress: vec![FlowRule {
                protocol: Protocol::All,
                from_port: None,
                to_port: None,
                peers: vec!["0.0.0.0/0".into()],
            }],
        }
    }

    #[test]
    fn blocks_parse_to_their_network() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains(Ipv4Addr::new(10, 9, 9, 9)));
        assert!(!c.contains(Ipv4Addr::new(11, 0, 0, 0)));
        assert_eq!("1.2.3.4".parse::<Cidr>().unwrap().to_string(), "1.2.3.4/32");
        let z: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(z.contains(HOST_PEER));
        let s: Cidr = "172.31.16.0/20".parse().unwrap();
        assert_eq!(s.router(), Ipv4Addr::new(172, 31, 16, 1));
        assert_eq!(s.last(), Ipv4Addr::new(172, 31, 31, 255));
        assert_eq!(s.netmask(), Ipv4Addr::new(255, 255, 240, 0));
        for bad in ["", "1.2.3/8", "1.2.3.4/33", "1.2.3.4/x", "1.2.3.4/8 drop"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_plan_checks_the_attachment() {
        let p = PortPlan::new(&att()).unwrap();
        assert_eq!(p.tap, "t3456789abcdef0");
        assert_eq!(p.tap.len(), 15);
        assert_eq!(p.mac, "0a:12:34:56:78:9a");
        let bad = |f: fn(&mut VpcAttachment)| {
            let mut a = att();
            f(&mut a);
            PortPlan::new(&a).unwrap_err().to_string()
        };
        assert!(bad(|a| a.private_ip = Ipv4Addr::new(172, 31, 16, 1)).contains("not an assignable"));
        assert!(bad(|a| a.private_ip = Ipv4Addr::new(172, 31, 0, 9)).contains("not an assignable"));
        assert!(bad(|a| a.subnet_cidr = "10.0.0.0/24".into()).contains("inside"));
        assert!(bad(|a| a.mac = "0b:12:34:56:78:9a".into()).contains("MAC"));
        assert!(bad(|a| a.public_ip = Some(Ipv4Addr::new(192, 0, 2, 1))).contains("loopback"));
        assert!(bad(|a| a.network_interface_id = "eni-12\"; drop".into()).contains("interface id"));
        assert!(bad(|a| a.vpc_id = "vpc-1 x".into()).contains("VPC id"));
    }

    #[test]
    fn rules_become_stateful_chains() {
        let a = att();
        let p = PortPlan::new(&a).unwrap();
        let s = rules_script(&p, &a).unwrap();
        let t = &p.tap;
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(
            lines,
            [
                format!("add chain inet amirun in_{t}"),
                format!("flush chain inet amirun in_{t}"),
                format!("add chain inet amirun eg_{t}"),
                format!("flush chain inet amirun eg_{t}"),
                format!("add chain inet amirun pub_{t}"),
                format!("flush chain inet amirun pub_{t}"),
                format!("add rule inet amirun in_{t} ip saddr {{ 0.0.0.0/0 }} tcp dport 22 accept"),
                format!("add rule inet amirun in_{t} ip saddr {{ 172.31.16.11/32, 172.31.16.12/32 }} accept"),
                format!("add rule inet amirun in_{t} ip saddr {{ 10.0.0.0/8 }} udp dport 5000-5010 accept"),
                format!("add rule inet amirun in_{t} drop"),
                format!("add rule inet amirun eg_{t} ip daddr {{ 0.0.0.0/0 }} goto to_dest"),
                format!("add rule inet amirun eg_{t} drop"),
                format!("add rule inet amirun pub_{t} tcp dport {{ 22 }} accept"),
                format!("add rule inet amirun pub_{t} drop"),
            ]
        );
        let mut b = a.clone();
        b.ingress[0].to_port = Some(21);
        assert!(rules_script(&p, &b).is_err());
        b.ingress[0].peers = vec!["0.0.0.0/0; flush ruleset".into()];
        assert!(rules_script(&p, &b).is_err());
    }

    #[test]
    fn only_rules_open_to_the_host_open_public_ports() {
        let mut a = att();
        assert_eq!(public_ports(&a), [(22, 22)]);
        a.ingress[0].peers = vec!["203.0.113.0/24".into()];
        assert_eq!(public_ports(&a), []);
        a.ingress.push(FlowRule {
            protocol: Protocol::Tcp,
            from_port: Some(8000),
            to_port: Some(8080),
            peers: vec!["127.0.0.0/8".into()],
        });
        assert_eq!(public_ports(&a), [(8000, 8080)]);
    }

    #[test]
    fn the_relay_admits_by_the_rules_of_the_moment() {
        let mut a = att();
        assert!(rule_admits(&a, HOST_PEER, 22));
        assert!(!rule_admits(&a, HOST_PEER, 23));
        // Members of a group (the second rule) are not the host.
        assert!(rule_admits(&a, Ipv4Addr::new(172, 31, 16, 11), 8443));
        a.ingress.remove(0);
        assert!(!rule_admits(&a, HOST_PEER, 22));
    }

    #[test]
    fn the_base_ruleset_never_routes_private_or_host_destinations_out() {
        let s = base_ruleset(
            "172.31.0.0/16".parse().unwrap(),
            &[Ipv4Addr::new(192, 0, 2, 2)],
            false,
        );
        assert!(s.contains("elements = { 0.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10, 127.0.0.0/8, 169.254.0.0/16, 172.16.0.0/12, 192.168.0.0/16, 224.0.0.0/4, 240.0.0.0/4, 172.31.0.0/16, 192.0.2.2/32 }"), "{s}");
        assert!(!s.contains("th dport 53"), "no DNS without a gateway: {s}");
        assert!(
            base_ruleset("10.0.0.0/16".parse().unwrap(), &[], true).contains("th dport 53 accept")
        );
    }

    #[test]
    fn attaching_names_every_piece_and_detaching_removes_them() {
        let a = att();
        let p = PortPlan::new(&a).unwrap();
        let s = attach_script(&p, &a, 40000).unwrap();
        let t = &p.tap;
        for want in [
            format!(
                "add rule inet amirun imds_{t} meta l4proto tcp dnat ip to 169.254.169.254:40000"
            ),
            format!("add element inet amirun ingress {{ 172.31.16.10 : goto in_{t} }}"),
            format!("add rule bridge amirun port_{t} ether saddr != 0a:12:34:56:78:9a drop"),
            format!("add rule bridge amirun port_{t} ether type ip ip saddr 172.31.16.10 accept"),
            format!("add element bridge amirun ports {{ \"{t}\" : goto port_{t} }}"),
        ] {
            assert!(s.lines().any(|l| l == want), "no {want} in\n{s}");
        }
        let d = detach_script(t, p.ip);
        assert!(d.starts_with("delete element inet amirun ingress { 172.31.16.10 }\n"));
        assert!(d.ends_with(&format!("delete chain bridge amirun port_{t}\n")));
    }
}
