//! The guest's network as QEMU sees it: user-mode networking (slirp) on
//! 169.254.0.0/16, the SSH forward, the IMDS `guestfwd`, and whether the
//! guest may reach out ([`NetSpec`] says why each choice is made).

use super::qemu_opts::{shell_quote, ArgError, OptList};

/// Host ports the guest is reachable on, and its way to the metadata service.
///
/// QEMU user networking (slirp) is used with the guest network set to
/// `169.254.0.0/16` (host 169.254.0.2, DNS 169.254.0.3, guest 169.254.0.15):
/// slirp only accepts a `guestfwd` inside its own network, and 169.254.169.254
/// must be one so the guest's IMDS requests reach amirun.
///
/// The guest must never reach the host's own loopback services nor the
/// host's own metadata service. slirp works against both (libslirp 4.7,
/// measured by `tests/guest_isolation.rs`): a connection to the gateway
/// 169.254.0.2, on any port, is made to the host's 127.0.0.1; one to the DNS
/// address 169.254.0.3 on port 53 goes to the host's first resolver, which
/// on many hosts is itself a loopback service (systemd-resolved's
/// 127.0.0.53); any other address is connected to from the host, so
/// 169.254.169.254 would be the host's own metadata service. libslirp's
/// `disable_host_loopback` would close the first but QEMU 7.2 does not
/// expose it, and passt (Debian's 2023-03 build) has `--no-map-gw` but no
/// way to serve 169.254.169.254 itself. Hence:
/// - [`Outbound::None`] (`restrict=on`) drops every guest packet except
///   DHCP and connections that match a `guestfwd`; the `hostfwd` for SSH
///   keeps working. DHCP then hands out no router and no resolver, and no
///   alias, port or address leads out of slirp. The price is no DNS and no
///   outbound access;
/// - [`Outbound::Nat`] lets slirp connect out like a NAT gateway, DNS
///   included. Its argv alone would give the guest the host's loopback, so
///   the service asks for it only together with a network namespace of the
///   guest's own, where the supervisor runs QEMU ([`crate::network`]:
///   there slirp's "host" is an empty loopback and the way out is pasta);
///   where no namespace can be made, the guest gets [`Outbound::None`];
/// - in both, a `guestfwd` for 169.254.169.254:80 is always present: it is
///   matched before slirp connects anywhere, whatever route the guest
///   takes; without [`ImdsForward`] it runs a command that closes the
///   connection at once;
/// - `ipv6=off`, so the IPv6 endpoint (`fd00:ec2::254`) is unreachable too.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetSpec {
    /// Host port on 127.0.0.1 forwarded to the guest's port 22.
    pub ssh_port: Option<u16>,
    /// How the guest's connections to 169.254.169.254:80 are served.
    pub imds: Option<ImdsForward>,
    /// Whether the guest may open connections to the outside.
    pub outbound: Outbound,
    /// A network interface in a VPC instead of user networking: a tap
    /// device the supervisor opens in the VPC's network namespace and hands
    /// to QEMU as file descriptor [`VPC_TAP_FD`] ([`crate::network::vpc`]);
    /// `ssh_port`, `imds` and `outbound` are then served there instead.
    pub vpc_nic: Option<VpcNic>,
}

/// The guest's network interface in its VPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpcNic {
    /// The interface's MAC address (`0a:…`, as EC2's).
    pub mac: String,
}

/// The descriptor number the tap device of a [`VpcNic`] has in QEMU
/// (`-netdev tap,fd=3`); the supervisor's network hook puts it there.
pub const VPC_TAP_FD: i32 = 3;

/// Whether `mac` is six lowercase or uppercase hex pairs with colons and
/// the multicast bit clear.
pub fn is_unicast_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
        && u8::from_str_radix(parts[0], 16).is_ok_and(|b| b & 1 == 0)
}

/// A command that serves one guest connection to 169.254.169.254:80 on its
/// stdin/stdout; slirp starts one per connection.
///
/// A `guestfwd` to a socket chardev (`...-tcp:127.0.0.1:PORT`) would be
/// simpler but QEMU opens that socket once and serves only the first guest
/// connection (seen with QEMU 7.2: the second request hangs), while
/// cloud-init makes dozens. So IMDS goes through a per-connection command,
/// `amirun __imds-relay` to the supervisor's socket (see [`crate::metadata::imds`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImdsForward {
    /// Program and arguments.
    pub argv: Vec<String>,
}

/// Whether the guest can reach beyond its host's forwarded ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Outbound {
    /// NAT to anywhere the host reaches (like an EC2 subnet with a NAT
    /// gateway), DNS through the host's resolver. Run in the host's own
    /// namespace this would also reach the host's loopback through the
    /// gateway and DNS aliases (see [`NetSpec`]), so it is only ever run in
    /// a guest namespace ([`crate::network`]).
    Nat,
    /// No outbound connections (`restrict=on`); IMDS and SSH still work.
    #[default]
    None,
}

/// The instance tag that chooses [`Outbound`] for the instance's next boot:
/// `nat` (also when absent; granted where a guest namespace can be made) or
/// `none`.
pub const OUTBOUND_TAG: &str = "amirun:outbound";

impl Outbound {
    /// The value of [`OUTBOUND_TAG`] for this choice.
    pub fn as_str(self) -> &'static str {
        match self {
            Outbound::Nat => "nat",
            Outbound::None => "none",
        }
    }

    /// Reads a value of [`OUTBOUND_TAG`]; `None` for a value it does not know.
    pub fn from_tag(value: &str) -> Option<Self> {
        match value {
            "nat" => Some(Outbound::Nat),
            "none" => Some(Outbound::None),
            _ => None,
        }
    }
}

/// The guest network layout (see [`NetSpec`]).
pub const GUEST_NET: &str = "169.254.0.0/16";
/// Address of the host as the guest sees it (slirp's gateway).
pub const GUEST_GATEWAY: &str = "169.254.0.2";
/// Address of slirp's DNS relay as the guest sees it (set explicitly: QEMU's
/// default for a /16 would be 169.254.2.3).
pub const GUEST_DNS: &str = "169.254.0.3";
/// First (and in practice only) address slirp's DHCP hands out.
pub const GUEST_ADDRESS: &str = "169.254.0.15";
/// The metadata service address.
pub const IMDS_ADDRESS: &str = "169.254.169.254";
/// Command used when no IMDS is configured: it closes the connection at once.
pub const IMDS_CLOSED_COMMAND: &str = "/bin/true";

/// The user-mode network (see [`NetSpec`] for every choice).
pub(super) fn netdev(net: &NetSpec) -> Result<OptList, ArgError> {
    if net.vpc_nic.is_some() {
        // The tap device in the VPC's namespace; no user networking at all.
        return OptList::new("tap")?
            .set("id", "net0")?
            .set("fd", VPC_TAP_FD);
    }
    let mut n = OptList::new("user")?
        .set("id", "net0")?
        .switch("ipv6", false)?
        .set("net", GUEST_NET)?
        .set("host", GUEST_GATEWAY)?
        .set("dns", GUEST_DNS)?
        .set("dhcpstart", GUEST_ADDRESS)?;
    if net.outbound == Outbound::None {
        n = n.switch("restrict", true)?;
    }
    if let Some(port) = net.ssh_port {
        n = n.set("hostfwd", format!("tcp:127.0.0.1:{port}-:22"))?;
    }
    let command = match &net.imds {
        Some(f) => f
            .argv
            .iter()
            .map(|w| shell_quote(w))
            .collect::<Vec<_>>()
            .join(" "),
        None => IMDS_CLOSED_COMMAND.to_string(),
    };
    n.set("guestfwd", format!("tcp:{IMDS_ADDRESS}:80-cmd:{command}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_tag_values() {
        assert_eq!(Outbound::from_tag("nat"), Some(Outbound::Nat));
        assert_eq!(Outbound::from_tag("none"), Some(Outbound::None));
        assert_eq!(Outbound::from_tag("NAT"), None);
        assert_eq!(
            Outbound::from_tag(Outbound::Nat.as_str()),
            Some(Outbound::Nat)
        );
    }
}
