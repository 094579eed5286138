//! Guest isolation with real guests. The host side: a web server and a
//! stand-in resolver (TCP and UDP port 53) on 127.0.0.1, and a DNS server
//! on a non-loopback address. The guests: tiny ones that try every route
//! their own network gives them to the host's loopback (their gateway and
//! DNS address on the server's port and on port 53, the metadata address
//! and another link-local address on the server's port).
//!
//! A default guest (outbound access: as root it joins its VPC's network,
//! whose internet gateway is pasta; DHCP names its subnet's VPC router as
//! gateway and DNS, dnsmasq there) reaches none of the
//! loopback servers, yet reads its instance id from IMDS, gets its DNS
//! lookup answered by the host's resolver, and is reachable through its SSH
//! forward. A guest launched with `amirun:outbound=none` is sealed: no DNS
//! either, still IMDS and SSH.
//!
//! The scenario runs in a network and mount namespace the test creates
//! (`unshare --net --mount`), so nothing can leave the machine: besides
//! loopback it holds one link with 192.0.2.53/24 (a `dummy`, or a bridge
//! without ports where the kernel has no dummy driver) and a default route
//! into it, so that pasta finds a routable interface; packets sent there
//! are discarded inside the namespace. `/etc/resolv.conf` is bind-mounted
//! to name 192.0.2.53, where the test's DNS server listens.

mod util;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use util::*;

const X86: &str = "amirun/tiny-x86_64";
/// Set in the re-executed test process that runs inside the namespaces.
const INSIDE: &str = "AMIRUN_TEST_ISOLATION_NETNS";
const SECRET: &str = "HOST-LOOPBACK-SECRET";
const TEST_NAME: &str = "guests_never_reach_host_loopback_but_keep_imds_dns_and_ssh";
/// The test namespace's own address, where its DNS server listens.
const RESOLVER: &str = "192.0.2.53";
/// The name the DNS server answers, and its answer (never contacted).
const NAME: &str = "probe.amirun.test";
const ANSWER: [u8; 4] = [192, 0, 2, 99];
/// The host's "own metadata service": an address on the test namespace's
/// loopback with a web server on port 80 and on the probes' port, as a
/// cloud host reaches its provider's.
const HOST_METADATA: &str = "169.254.169.254";

#[test]
fn guests_never_reach_host_loopback_but_keep_imds_dns_and_ssh() {
    let setup = format!(
        "ip link add up0 type dummy 2>/dev/null || ip link add up0 type bridge
        ip addr add {RESOLVER}/24 dev up0; ip link set up0 up
        ip route add default via 192.0.2.1 dev up0
        ip addr add {HOST_METADATA}/32 dev lo"
    );
    in_private_namespace(TEST_NAME, &setup, scenario);
}

/// Where the namespace offers pasta no routable interface, the outbound
/// leg cannot start: the guest still launches, keeps IMDS and its SSH
/// forward, reaches nothing else, and `describe-instances` says why.
#[test]
fn a_guest_whose_outbound_leg_cannot_start_keeps_imds_and_ssh() {
    in_private_namespace(
        "a_guest_whose_outbound_leg_cannot_start_keeps_imds_and_ssh",
        "true",
        scenario_without_leg,
    );
}

/// Runs `scenario` in this test binary re-executed inside a new network
/// and mount namespace with `lo` up, after the shell commands `setup`, with
/// `/etc/resolv.conf` naming [`RESOLVER`].
fn in_private_namespace(test: &str, setup: &str, scenario: fn()) {
    if std::env::var_os(INSIDE).is_some() {
        return scenario();
    }
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, format!("nameserver {RESOLVER}\n")).unwrap();
    let exe = std::env::current_exe().unwrap();
    let script = format!(
        "set -e; ip link set lo up\n{setup}\nmount --bind \"$1\" /etc/resolv.conf; shift; exec \"$@\""
    );
    let status = Command::new("unshare")
        .args(["--net", "--mount", "--propagation", "private", "sh", "-c"])
        .arg(script)
        .arg("sh")
        .arg(&resolv)
        .arg(&exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        // Inside its own namespace, the default guest gets its outbound leg.
        .env("AMIRUN_GUEST_OUTBOUND", "nat")
        .status()
        .expect("run unshare");
    assert!(
        status.success(),
        "the scenario inside `unshare --net --mount` failed ({status}); it needs root"
    );
}

/// A web server on the host side that answers [`SECRET`] and counts connections.
struct LoopbackServer {
    port: u16,
    connections: Arc<AtomicUsize>,
}

impl LoopbackServer {
    fn start(port: u16) -> Self {
        Self::start_on("127.0.0.1", port)
    }

    fn start_on(addr: &str, port: u16) -> Self {
        let listener = TcpListener::bind((addr, port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&connections);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = write!(
                    s,
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n{SECRET}\n"
                );
            }
        });
        LoopbackServer { port, connections }
    }
}

/// A DNS server on UDP `addr`:53 that answers A queries for [`NAME`] with
/// [`ANSWER`] (every other query with no records) and counts queries.
fn dns_server(addr: &str) -> Arc<AtomicUsize> {
    let sock = UdpSocket::bind((addr, 53)).unwrap();
    let queries = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&queries);
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            count.fetch_add(1, Ordering::SeqCst);
            if let Some(reply) = dns_reply(&buf[..n]) {
                let _ = sock.send_to(&reply, from);
            }
        }
    });
    queries
}

fn dns_reply(q: &[u8]) -> Option<Vec<u8>> {
    // Header (12 bytes), then one question: labels, 0, type, class.
    let mut end = 12;
    while *q.get(end)? != 0 {
        end += 1 + usize::from(q[end]);
    }
    let qname = q.get(12..end)?;
    let qtype = u16::from_be_bytes([*q.get(end + 1)?, *q.get(end + 2)?]);
    let question = q.get(12..end + 5)?;
    let ours: Vec<u8> = NAME
        .split('.')
        .flat_map(|l| std::iter::once(l.len() as u8).chain(l.bytes()))
        .collect();
    let answer = qtype == 1 && qname.eq_ignore_ascii_case(&ours);
    let mut r = vec![
        q[0],
        q[1],
        0x81,
        0x80,
        0,
        1,
        0,
        u8::from(answer),
        0,
        0,
        0,
        0,
    ];
    r.extend_from_slice(question);
    if answer {
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        r.extend_from_slice(&ANSWER);
    }
    Some(r)
}

/// User data: start a web page on port 22 (tiny has no sshd) for the SSH
/// forward, probe the host's loopback servers through every route the
/// guest's own network gives it, look up [`NAME`], read the instance id
/// from IMDS.
fn probe_script(port: u16) -> String {
    let answer = ANSWER.map(|b| b.to_string()).join(".");
    format!(
        r#"#!/bin/sh
mkdir -p /www
iid=$(timeout 8 wget -q -O - http://169.254.169.254/latest/meta-data/instance-id 2>/dev/null)
echo "probe imds instance-id=$iid"
echo "ssh-forward-reaches-$iid" >/www/index.html
httpd -p 22 -h /www && echo "probe port-22 server up"
# What DHCP gave: with outbound access (in the default VPC) gateway and
# DNS are its subnet's VPC router; neither when sealed (restrict=on),
# which then tries the user network's gateway 169.254.0.2 and DNS
# 169.254.0.3 all the same (both in the guest's own /16).
gw=$(ip route | sed -n 's/^default via \([0-9.]*\).*/\1/p' | head -n1)
dns=$(sed -n 's/^nameserver //p' /etc/resolv.conf | head -n1)
echo "probe-config gw=$gw dns=$dns"
gw=${{gw:-169.254.0.2}}
dns=${{dns:-169.254.0.3}}
probe() {{
	body=$(timeout 8 wget -q -O - "$2" 2>/dev/null)
	case "$body" in
	*{SECRET}*) echo "probe $1 REACHED" ;;
	*) echo "probe $1 blocked" ;;
	esac
}}
probe gateway "http://$gw:{port}/"
probe gateway-port-53 "http://$gw:53/"
probe dns "http://$dns:{port}/"
probe dns-port-53 "http://$dns:53/"
probe imds-address "http://169.254.169.254:{port}/"
probe link-local "http://169.254.0.1:{port}/"
if timeout 20 nslookup {NAME} $dns 2>&1 | grep -q '{answer}'; then
	echo "probe dns-lookup answered"
else
	echo "probe dns-lookup unanswered"
fi
echo "probe done"
"#
    )
}

/// GET / through the instance's SSH forward (127.0.0.1:PORT -> guest:22).
fn get_through_ssh_forward(endpoint: &str) -> String {
    let mut s = TcpStream::connect(endpoint).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn probe_lines(console: &str) -> Vec<String> {
    console
        .lines()
        .map(|l| l.trim_matches(|c: char| c.is_control()))
        .filter(|l| l.starts_with("probe"))
        .map(str::to_string)
        .collect()
}

/// The VPC router of the instance's subnet (its network address + 1, as on
/// EC2), from what `describe-subnets` says of the instance's `SubnetId`.
fn vpc_router(env: &Env, instance: &serde_json::Value) -> std::net::Ipv4Addr {
    let subnet = instance["SubnetId"].as_str().expect("SubnetId");
    let v = env.ok(&["describe-subnets", "--subnet-ids", subnet]);
    let cidr = v["Subnets"][0]["CidrBlock"].as_str().expect("CidrBlock");
    let (net, _) = cidr.split_once('/').expect("a CIDR block");
    let net: std::net::Ipv4Addr = net.parse().unwrap();
    (u32::from(net) + 1).into()
}

fn scenario() {
    let env = Env::with_images();
    let ami = env.ami(X86);
    // A value the tag does not know is refused before anything is made.
    env.fails(
        &[
            "run-instances",
            "--image-id",
            &ami,
            "--tag-specifications",
            "ResourceType=instance,Tags=[{Key=amirun:outbound,Value=open}]",
        ],
        "InvalidParameterValue",
    );

    // Host loopback services: a web server, and TCP and UDP port 53
    // standing in for a local resolver such as systemd-resolved's. The
    // real resolver of this namespace listens on its non-loopback address.
    let web = LoopbackServer::start(0);
    let tcp53 = LoopbackServer::start(53);
    // The host's own metadata service, on port 80 and the probes' port.
    let metadata = [
        LoopbackServer::start_on(HOST_METADATA, 80),
        LoopbackServer::start_on(HOST_METADATA, web.port),
    ];
    let udp53 = dns_server("127.0.0.1");
    let resolver = dns_server(RESOLVER);

    // Both guests at once: the default (outbound access) and a sealed one.
    let open =
        env.run_instances(&["--image-id", &ami, "--user-data", &probe_script(web.port)])[0].clone();
    let sealed = env.run_instances(&[
        "--image-id",
        &ami,
        "--user-data",
        &probe_script(web.port),
        "--tag-specifications",
        "ResourceType=instance,Tags=[{Key=amirun:outbound,Value=none}]",
    ])[0]
        .clone();
    for (id, outbound, lookup) in [(&open, "nat", "answered"), (&sealed, "none", "unanswered")] {
        let console = env.wait_console(id, "probe done", 400);
        let lines = probe_lines(&console);
        let shown = env.instance(id)["Amirun"].clone();
        eprintln!("{id}: {shown}\n{lines:#?}");
        let log =
            std::fs::read_to_string(env.home().join("instances").join(id).join("supervisor.log"));
        for l in log
            .iter()
            .flat_map(|l| l.lines())
            .filter(|l| l.contains("guest network"))
        {
            eprintln!("{id}: {l}");
        }
        assert_eq!(shown["GuestOutbound"], outbound, "{id}: {shown}");
        let config = if outbound == "nat" {
            let router = vpc_router(&env, &env.instance(id));
            format!("probe-config gw={router} dns={router}")
        } else {
            "probe-config gw= dns=".into()
        };
        for want in [
            format!("probe imds instance-id={id}"),
            "probe port-22 server up".into(),
            config.clone(),
            "probe gateway blocked".into(),
            "probe gateway-port-53 blocked".into(),
            "probe dns blocked".into(),
            "probe dns-port-53 blocked".into(),
            "probe imds-address blocked".into(),
            "probe link-local blocked".into(),
            format!("probe dns-lookup {lookup}"),
        ] {
            assert!(lines.contains(&want), "{id}: no '{want}' in {lines:#?}");
        }
        let endpoint = shown["SshEndpoint"].as_str().unwrap().to_string();
        let page = get_through_ssh_forward(&endpoint);
        assert!(
            page.contains(&format!("ssh-forward-reaches-{id}")),
            "the SSH forward {endpoint} did not reach {id}: {page:?}"
        );
    }
    for m in &metadata {
        assert_eq!(
            m.connections.load(Ordering::SeqCst),
            0,
            "a guest reached the host's own metadata service (port {})",
            m.port
        );
    }
    assert_eq!(
        web.connections.load(Ordering::SeqCst),
        0,
        "a guest reached the host's loopback web server"
    );
    assert_eq!(
        tcp53.connections.load(Ordering::SeqCst),
        0,
        "a guest reached the host's loopback port 53 (TCP)"
    );
    assert_eq!(
        udp53.load(Ordering::SeqCst),
        0,
        "a guest's packets reached the host's loopback port 53 (UDP)"
    );
    assert!(
        resolver.load(Ordering::SeqCst) >= 1,
        "no DNS query reached the host's resolver"
    );

    for id in [&open, &sealed] {
        env.ok(&["terminate-instances", "--instance-ids", id]);
    }
    for id in [&open, &sealed] {
        env.wait("instance-terminated", id);
    }
    // The supervisor cleaned up after the guest's namespace.
    let resolv = env.home().join("instances").join(&open).join("resolv.conf");
    assert!(
        !resolv.exists(),
        "{} outlived its instance",
        resolv.display()
    );
}

fn scenario_without_leg() {
    let env = Env::with_images();
    let ami = env.ami(X86);
    let web = LoopbackServer::start(0);
    let id =
        env.run_instances(&["--image-id", &ami, "--user-data", &probe_script(web.port)])[0].clone();
    let console = env.wait_console(&id, "probe done", 400);
    let lines = probe_lines(&console);
    let shown = env.instance(&id)["Amirun"].clone();
    eprintln!("{id}: {shown}\n{lines:#?}");
    assert_eq!(shown["GuestOutbound"], "none", "{id}: {shown}");
    let reason = shown["GuestOutboundReason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("The outbound leg did not start") && reason.contains("pasta"),
        "{id}: {reason}"
    );
    for want in [
        format!("probe imds instance-id={id}"),
        "probe gateway blocked".into(),
        "probe dns blocked".into(),
        "probe imds-address blocked".into(),
        "probe dns-lookup unanswered".into(),
    ] {
        assert!(lines.contains(&want), "{id}: no '{want}' in {lines:#?}");
    }
    let endpoint = shown["SshEndpoint"].as_str().unwrap().to_string();
    let page = get_through_ssh_forward(&endpoint);
    assert!(
        page.contains(&format!("ssh-forward-reaches-{id}")),
        "the SSH forward {endpoint} did not reach {id}: {page:?}"
    );
    assert_eq!(web.connections.load(Ordering::SeqCst), 0);
    env.ok(&["terminate-instances", "--instance-ids", &id]);
    env.wait("instance-terminated", &id);
}
