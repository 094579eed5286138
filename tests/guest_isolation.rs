//! Guest isolation with real guests: a web server on the host's 127.0.0.1,
//! and tiny guests that try every route slirp offers to it (their gateway,
//! their DNS address, the metadata address on another port). An isolated
//! guest (the default) reaches none of them, yet reads its instance id
//! from IMDS and is reachable through its SSH forward; a guest launched
//! with `amirun:outbound=nat` shows that the same probes do reach the host
//! when the door is open, so the probes can fail.
//!
//! The scenario runs in a network and mount namespace the test creates
//! (`unshare --net --mount`): only loopback exists there, so nothing can
//! leave the machine, and `/etc/resolv.conf` names 127.0.0.1 there, which
//! makes slirp's DNS address a route to the host's loopback as it is on
//! hosts with a local resolver. Guests probe only addresses their own
//! network gave them.

mod util;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use util::*;

const X86: &str = "amirun/tiny-x86_64";
/// Set in the re-executed test process that runs inside the namespaces.
const INSIDE: &str = "AMIRUN_TEST_ISOLATION_NETNS";
const SECRET: &str = "HOST-LOOPBACK-SECRET";
const TEST_NAME: &str = "isolated_guests_never_reach_host_loopback_but_keep_imds_and_ssh";

#[test]
fn isolated_guests_never_reach_host_loopback_but_keep_imds_and_ssh() {
    if std::env::var_os(INSIDE).is_some() {
        return scenario();
    }
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.1\n").unwrap();
    let exe = std::env::current_exe().unwrap();
    let status = Command::new("unshare")
        .args(["--net", "--mount", "--propagation", "private", "sh", "-c"])
        .arg("ip link set lo up && mount --bind \"$1\" /etc/resolv.conf && shift && exec \"$@\"")
        .arg("sh")
        .arg(&resolv)
        .arg(&exe)
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .status()
        .expect("run unshare");
    assert!(
        status.success(),
        "the scenario inside `unshare --net --mount` failed ({status}); it needs root"
    );
}

/// A web server on 127.0.0.1 that answers [`SECRET`] and counts connections.
struct LoopbackServer {
    port: u16,
    connections: Arc<AtomicUsize>,
}

impl LoopbackServer {
    fn start(port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
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

/// User data: probe the host's loopback server through every route the
/// guest's own network gives it, read the instance id from IMDS, then
/// serve a page on port 22 (tiny has no sshd) for the SSH forward.
fn probe_script(port: u16) -> String {
    format!(
        r#"#!/bin/sh
# What DHCP gave: a NAT guest gets gateway 169.254.0.2 and DNS 169.254.0.3;
# an isolated one neither (slirp leaves them out under restrict=on), but
# both addresses are in its own /16 (169.254.0.2 is its DHCP server), so it
# tries them all the same.
gw=$(ip route | sed -n 's/^default via \([0-9.]*\).*/\1/p' | head -n1)
dns=$(sed -n 's/^nameserver //p' /etc/resolv.conf | head -n1)
echo "probe-config gw=$gw dns=$dns"
gw=169.254.0.2
dns=169.254.0.3
probe() {{
	body=$(timeout 8 wget -q -O - "$2" 2>/dev/null)
	case "$body" in
	*{SECRET}*) echo "probe $1 REACHED" ;;
	*) echo "probe $1 blocked" ;;
	esac
}}
probe gateway "http://$gw:{port}/"
probe dns "http://$dns:{port}/"
probe dns-port-53 "http://$dns:53/"
probe imds-address "http://169.254.169.254:{port}/"
iid=$(timeout 8 wget -q -O - http://169.254.169.254/latest/meta-data/instance-id 2>/dev/null)
echo "probe imds instance-id=$iid"
mkdir -p /www
echo "ssh-forward-reaches-$iid" >/www/index.html
httpd -p 22 -h /www && echo "probe port-22 server up"
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

fn scenario() {
    // /proc/self/net/dev lists the interfaces of this process's namespace.
    let links: Vec<String> = std::fs::read_to_string("/proc/self/net/dev")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim().to_string()))
        .collect();
    assert_eq!(
        links,
        ["lo"],
        "the scenario must run where only loopback exists"
    );

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

    // Host loopback services: two web servers (one per guest, so each
    // count belongs to one guest) and one on port 53 standing in for a
    // local resolver such as systemd-resolved's.
    let closed = LoopbackServer::start(0);
    let open = LoopbackServer::start(0);
    let resolver = LoopbackServer::start(53);

    // The isolated guest first, alone, so that every connection the
    // servers see until it is done would be its.
    let isolated = env.run_instances(&[
        "--image-id",
        &ami,
        "--user-data",
        &probe_script(closed.port),
    ])[0]
        .clone();
    assert_eq!(env.instance(&isolated)["Amirun"]["GuestOutbound"], "none");
    let console = env.wait_console(&isolated, "probe done", 400);
    let lines = probe_lines(&console);
    eprintln!("isolated {isolated}: {lines:#?}");
    for want in [
        "probe-config gw= dns=".to_string(),
        "probe gateway blocked".into(),
        "probe dns blocked".into(),
        "probe dns-port-53 blocked".into(),
        "probe imds-address blocked".into(),
        format!("probe imds instance-id={isolated}"),
        "probe port-22 server up".into(),
    ] {
        assert!(
            lines.contains(&want),
            "{isolated}: no '{want}' in {lines:#?}"
        );
    }
    assert_eq!(
        closed.connections.load(Ordering::SeqCst),
        0,
        "an isolated guest reached the host's loopback"
    );
    assert_eq!(
        resolver.connections.load(Ordering::SeqCst),
        0,
        "an isolated guest reached the host's loopback resolver"
    );
    let endpoint = env.instance(&isolated)["Amirun"]["SshEndpoint"]
        .as_str()
        .unwrap()
        .to_string();
    let page = get_through_ssh_forward(&endpoint);
    assert!(
        page.contains(&format!("ssh-forward-reaches-{isolated}")),
        "the SSH forward {endpoint} did not reach {isolated}: {page:?}"
    );

    // The control: with outbound access the same probes do reach the host
    // (libslirp 4.7: the gateway on any port is the host's 127.0.0.1, the
    // DNS address on port 53 is the host's first resolver).
    let nat = env.run_instances(&[
        "--image-id",
        &ami,
        "--user-data",
        &probe_script(open.port),
        "--tag-specifications",
        "ResourceType=instance,Tags=[{Key=amirun:outbound,Value=nat}]",
    ])[0]
        .clone();
    assert_eq!(env.instance(&nat)["Amirun"]["GuestOutbound"], "nat");
    let console = env.wait_console(&nat, "probe done", 400);
    let lines = probe_lines(&console);
    eprintln!("nat {nat}: {lines:#?}");
    for want in [
        "probe-config gw=169.254.0.2 dns=169.254.0.3".to_string(),
        "probe gateway REACHED".into(),
        "probe dns blocked".into(),
        "probe dns-port-53 REACHED".into(),
        format!("probe imds instance-id={nat}"),
    ] {
        assert!(lines.contains(&want), "{nat}: no '{want}' in {lines:#?}");
    }
    assert!(open.connections.load(Ordering::SeqCst) >= 1);
    assert!(resolver.connections.load(Ordering::SeqCst) >= 1);

    for id in [&isolated, &nat] {
        env.ok(&["terminate-instances", "--instance-ids", id]);
    }
    for id in [&isolated, &nat] {
        env.wait("instance-terminated", id);
    }
}
