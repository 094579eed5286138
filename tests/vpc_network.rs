//! VPC networks with real guests, driven at the supervisor and network
//! layer (the VPC model that resolves attachments from records lands
//! separately; here they are written by hand, as the service will).
//!
//! Three tiny x86_64 guests, each under its own supervisor: A serves web
//! pages on ports 8080 and 8081 and on 22, and its group admits 8080 from
//! anywhere; B sits in the same VPC and subnet; C sits in a second VPC
//! with the same address block. B reaches A's 8080 by A's private address
//! and not 8081; C reaches neither; every guest got its address by DHCP
//! and its instance id from IMDS through the VPC network; the host reaches
//! 8080 on A's public (loopback) address and not 8081, and no longer 8080
//! once the rule is revoked on the running guest ([`apply_vpc_rules`]);
//! the SSH forward reaches A's port 22 whatever the groups say. Neither
//! VPC has a route out. D sits in a third VPC (10.1.0.0/16) with an
//! internet gateway: it reaches a server "on the internet" through pasta,
//! and neither the host's own address nor A's private address. When the
//! supervisors are gone, so is everything they made: namespaces, dnsmasq,
//! pasta, the VPC directories.
//!
//! The scenario runs in a network and mount namespace the test creates
//! (`unshare --net --mount`); its "internet" is one more namespace behind
//! a veth pair ([`SETUP`]): nothing can leave the machine even if the
//! code is wrong.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use amirun::ids::{new_id, IdKind};
use amirun::instance::supervisor::{self, spawn_detached, LaunchSpec, SupervisorClient};
use amirun::machine::{
    self, Accel, Arch, Boot, DiskFormat, DiskSpec, MachineSpec, NetSpec, Outbound, SmbiosIdentity,
    VpcNic,
};
use amirun::metadata::imds::ImdsConfig;
use amirun::metadata::seed::{build_seed, SeedSpec};
use amirun::network::{apply_vpc_rules, FlowRule, GuestNetworkSpec, Protocol, VpcAttachment};
use amirun::paths::Paths;
use common::wait_until;

/// Set in the re-executed test process that runs inside the namespaces.
const INSIDE: &str = "AMIRUN_TEST_VPC_NETNS";
const TEST_NAME: &str = "guests_of_a_vpc_reach_each_other_only_as_their_groups_allow";
const BOOT: Duration = Duration::from_secs(300);

/// Not a test: the supervisor entry point of this binary re-executed as
/// `<exe> __supervise <launch.json>`. As a plain test it does nothing.
#[test]
#[allow(non_snake_case)]
fn entry__supervise() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some(supervisor::SUPERVISE_SUBCOMMAND) {
        return;
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let code = match supervisor::run(Path::new(&args[2])) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("supervisor: {e}");
            1
        }
    };
    std::process::exit(code);
}

#[test]
fn guests_of_a_vpc_reach_each_other_only_as_their_groups_allow() {
    if std::env::var_os(INSIDE).is_some() {
        return scenario();
    }
    let exe = std::env::current_exe().unwrap();
    let status = Command::new("unshare")
        .args(["--net", "--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!("set -e; ip link set lo up\n{SETUP}\nexec \"$@\""))
        .arg("sh")
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

/// Inside the test's namespace: an "internet" (a namespace of its own
/// behind a veth pair, with [`INTERNET`] on its loopback) and the test
/// namespace's own address [`HOST`] with a default route to it, so pasta
/// has an interface to work with. Packets never leave these namespaces.
const SETUP: &str = "mkdir -p /run/netns; mount -t tmpfs none /run/netns
ip netns add internet
ip link add up0 type veth peer name wan0 netns internet
ip addr add 192.0.2.53/24 dev up0; ip link set up0 up
ip route add default via 192.0.2.1 dev up0
ip -n internet link set lo up; ip -n internet addr add 203.0.113.7/32 dev lo
ip -n internet addr add 192.0.2.1/24 dev wan0; ip -n internet link set wan0 up";
/// A server "on the internet", outside every VPC.
const INTERNET: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
/// The test namespace's (the host's) own address.
const HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 53);

/// A web server answering `body` on `addr`:8080, in the network namespace
/// at `netns` (or the test's own).
fn web_server(netns: Option<&str>, addr: Ipv4Addr, body: &'static str) {
    let ns = netns.map(|p| std::fs::File::open(p).unwrap());
    let listener = std::thread::spawn(move || {
        if let Some(ns) = ns {
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a namespace fd we hold; only this thread moves.
            let r = unsafe { nix::libc::setns(ns.as_raw_fd(), nix::libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
        }
        std::net::TcpListener::bind((addr, 8080)).unwrap()
    })
    .join()
    .unwrap();
    std::thread::spawn(move || {
        for c in listener.incoming() {
            let Ok(mut c) = c else { continue };
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = c.read(&mut [0u8; 1024]);
            let _ = write!(c, "HTTP/1.0 200 OK\r\n\r\n{body}\n");
        }
    });
}

/// User data of a guest in a VPC with an internet gateway: the internet
/// is reachable, the host and the private address of another VPC are not.
fn outbound_client() -> String {
    format!(
        r#"#!/bin/sh
probe() {{
	body=$(timeout 5 wget -q -O - "$2" 2>/dev/null)
	case "$body" in
	*"$3"*) echo "probe $1 REACHED" ;;
	*) echo "probe $1 blocked" ;;
	esac
}}
probe internet http://{INTERNET}:8080/ internet-page
probe host http://{HOST}:8080/ host-page
probe other-vpc http://172.31.16.10:8080/ served-by-a
echo "probe done"
"#
    )
}

fn build_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("AMIRUN_BUILD_DIR") {
        return PathBuf::from(d);
    }
    PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/amirun/images")
}

fn rule(protocol: Protocol, ports: Option<u16>, peers: &[&str]) -> FlowRule {
    FlowRule {
        protocol,
        from_port: ports,
        to_port: ports,
        peers: peers.iter().map(|p| p.to_string()).collect(),
    }
}

/// An attachment as the service resolves it; `n` picks the interface id,
/// the MAC and the public address.
fn attachment(vpc: &str, n: u8, ip: [u8; 4], ingress: Vec<FlowRule>) -> VpcAttachment {
    VpcAttachment {
        vpc_id: vpc.to_string(),
        vpc_cidr: "172.31.0.0/16".into(),
        subnet_id: "subnet-0123456789abcdef0".into(),
        subnet_cidr: "172.31.16.0/20".into(),
        network_interface_id: format!("eni-0123456789abcde{n:02x}"),
        private_ip: Ipv4Addr::from(ip),
        mac: format!("0a:00:00:00:00:{n:02x}"),
        public_ip: Some(Ipv4Addr::new(127, 100, 0, n)),
        internet_gateway: false,
        ingress,
        egress: vec![rule(Protocol::All, None, &["0.0.0.0/0"])],
    }
}

/// Writes the launch spec of a tiny guest in a VPC and starts its supervisor.
fn launch(paths: &Paths, att: &VpcAttachment, user_data: &str, ssh_port: u16) -> String {
    let id = new_id(IdKind::Instance);
    let dir = paths.instance_dir(&id);
    std::fs::create_dir_all(&dir).unwrap();
    let images = build_dir();
    let base = images.join("tiny-x86_64.qcow2");
    assert!(
        base.is_file(),
        "{} is missing: run scripts/build-images.sh tiny x86_64",
        base.display()
    );
    let root = dir.join("root.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&base)
        .arg(&root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kernel_info = std::fs::read_to_string(images.join("tiny-x86_64.kernel")).unwrap();
    let cmdline = kernel_info
        .lines()
        .find_map(|l| l.strip_prefix("cmdline="))
        .unwrap()
        .to_string();
    build_seed(
        &paths.seed_image(&id),
        &SeedSpec {
            instance_id: id.clone(),
            hostname: format!("ip-{}", att.private_ip.to_string().replace('.', "-")),
            user_data: Some(user_data.as_bytes().to_vec()),
            ..SeedSpec::default()
        },
    )
    .unwrap();
    let spec = MachineSpec {
        instance_id: id.clone(),
        arch: Arch::X86_64,
        boot: Boot::Kernel {
            kernel: images.join("tiny-x86_64.vmlinuz"),
            initrd: Some(images.join("tiny-x86_64.initrd")),
            cmdline,
        },
        accel: Accel::Tcg,
        vcpus: 1,
        memory_mib: 256,
        disks: vec![DiskSpec {
            path: root,
            format: DiskFormat::Qcow2,
            read_only: false,
            serial: None,
        }],
        seed: Some(paths.seed_image(&id)),
        net: NetSpec {
            ssh_port: Some(ssh_port),
            imds: None,
            outbound: Outbound::None,
            vpc_nic: Some(VpcNic {
                mac: att.mac.clone(),
            }),
        },
        qmp_socket: paths.qmp_socket(&id),
        serial_log: paths.serial_log(&id),
        smbios: SmbiosIdentity::for_instance(&id, "t3.micro"),
        tb_cache: Default::default(),
        free_pages: Default::default(),
        incoming: false,
    };
    let cmd = machine::qemu_command(&spec).unwrap();
    let mut l = LaunchSpec::new(paths, &id, PathBuf::from(cmd.program), cmd.args);
    l.imds = Some(
        serde_json::to_value(ImdsConfig {
            socket: paths.imds_socket(&id),
            http_tokens: "optional".into(),
            http_endpoint: "enabled".into(),
            instance_id: id.clone(),
            local_ipv4: att.private_ip.to_string(),
            mac: att.mac.clone(),
            ..ImdsConfig::default()
        })
        .unwrap(),
    );
    l.network = Some(GuestNetworkSpec {
        resolv_conf: paths.guest_resolv_conf(&id),
        status_file: paths.network_status(&id),
        ssh_port: Some(ssh_port),
        vpc_network: Some(paths.vpc_network(&att.vpc_id)),
        imds_socket: Some(paths.imds_socket(&id)),
    });
    l.vpc = Some(att.clone());
    let path = paths.launch_spec(&id);
    l.write(&path).unwrap();
    spawn_detached(&std::env::current_exe().unwrap(), &path).unwrap();
    id
}

fn console(paths: &Paths, id: &str) -> String {
    let raw = std::fs::read(paths.serial_log(id)).unwrap_or_default();
    String::from_utf8_lossy(&raw).into_owned()
}

fn wait_console(paths: &Paths, id: &str, needle: &str) -> String {
    let deadline = std::time::Instant::now() + BOOT;
    loop {
        let last = console(paths, id);
        if last.contains(needle) {
            return last;
        }
        let gone = supervisor::probe(paths, id).last_exit.is_some();
        if gone || std::time::Instant::now() > deadline {
            let log = std::fs::read_to_string(paths.supervisor_log(id)).unwrap_or_default()
                + &std::fs::read_to_string(paths.events(id)).unwrap_or_default();
            panic!("{id}: no '{needle}' within {BOOT:?} (QEMU exited: {gone}); console:\n{last}\nsupervisor log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A plain HTTP GET of `/` at `addr`; `None` when the connection is refused
/// or yields nothing.
fn get(addr: (Ipv4Addr, u16)) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(10)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    Some(out).filter(|o| !o.is_empty())
}

/// User data of the server: pages on 8080, 8081 and 22 naming the port.
const SERVER: &str = r#"#!/bin/sh
for p in 8080 8081 22; do
	mkdir -p /www/$p && echo "served-by-a-on-$p" >/www/$p/index.html
	httpd -p $p -h /www/$p
done
echo "probe servers up"
"#;

/// User data of a client: waits (at most `tries` times 7 s) for the
/// allowed port, then tries every port once; prints one line per port.
fn client(target: &str, tries: u32) -> String {
    format!(
        r#"#!/bin/sh
probe() {{
	body=$(timeout 5 wget -q -O - "http://{target}:$1/" 2>/dev/null)
	case "$body" in
	*served-by-a-on-$1*) echo "probe $1 REACHED" ;;
	*) echo "probe $1 blocked" ;;
	esac
}}
i=0
while [ $i -lt {tries} ]; do
	timeout 5 wget -q -O - "http://{target}:8080/" >/dev/null 2>&1 && break
	i=$((i + 1))
	sleep 2
done
probe 8080
probe 8081
probe 22
echo "probe done"
"#
    )
}

fn probe_lines(console: &str) -> Vec<String> {
    console
        .lines()
        .map(|l| l.trim_matches(|c: char| c.is_control()))
        .filter(|l| l.starts_with("probe "))
        .map(str::to_string)
        .collect()
}

fn stop(paths: &Paths, id: &str) {
    let mut c = SupervisorClient::connect(&paths.control_socket(id)).unwrap();
    c.stop_and_wait(true).unwrap();
}

/// Kills the supervisors (and so their QEMUs) of a scenario that failed
/// half-way; a passing scenario has stopped them already.
struct Launched(Paths, Vec<String>);

impl Drop for Launched {
    fn drop(&mut self) {
        for id in &self.1 {
            // Only a live supervisor of this instance (probe checks its
            // command line), never whoever reused a stale pid.
            let live = supervisor::probe(&self.0, id);
            if let (true, Some(pid)) = (live.supervisor_alive, live.supervisor_pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        // What killed supervisors leave is what recovery sweeps.
        for id in &self.1 {
            wait_until(
                "a killed supervisor to be gone",
                Duration::from_secs(30),
                || !supervisor::probe(&self.0, id).supervisor_alive,
            );
        }
        amirun::network::vpc::sweep(&self.0.vpc_networks_dir());
    }
}

fn scenario() {
    let home = tempfile::tempdir().unwrap();
    let runtime = tempfile::tempdir().unwrap();
    let paths = Paths::new(home.path(), runtime.path());
    let mut launched = Launched(paths.clone(), Vec::new());
    let (vpc1, vpc2) = ("vpc-0aaaaaaaaaaaaaaa1", "vpc-0bbbbbbbbbbbbbbb2");
    let web_8080 = rule(Protocol::Tcp, Some(8080), &["0.0.0.0/0"]);
    let a_att = attachment(vpc1, 1, [172, 31, 16, 10], vec![web_8080.clone()]);
    let b_att = attachment(vpc1, 2, [172, 31, 16, 11], vec![]);
    let c_att = attachment(vpc2, 3, [172, 31, 16, 12], vec![]);
    let vpc3 = "vpc-0ccccccccccccccc3";
    let mut d_att = attachment(vpc3, 4, [10, 1, 0, 12], vec![]);
    d_att.vpc_cidr = "10.1.0.0/16".into();
    d_att.subnet_cidr = "10.1.0.0/24".into();
    d_att.internet_gateway = true;
    web_server(Some("/run/netns/internet"), INTERNET, "internet-page");
    web_server(None, HOST, "host-page");

    let a = launch(&paths, &a_att, SERVER, 42201);
    let b = launch(&paths, &b_att, &client("172.31.16.10", 30), 42202);
    launched.1.extend([a.clone(), b.clone()]);
    let a_console = wait_console(&paths, &a, "probe servers up");
    for want in [
        "amirun-tiny: network eth0 172.31.16.10/20 via 172.31.16.1".to_string(),
        format!("amirun-tiny: instance-id {a}"),
    ] {
        assert!(
            a_console.contains(&want),
            "{a}: no '{want}' in\n{a_console}"
        );
    }
    let status = std::fs::read_to_string(paths.network_status(&a)).unwrap();
    assert!(
        status.contains("VPC network") && status.contains("no outbound path"),
        "{status}"
    );

    let b_console = wait_console(&paths, &b, "probe done");
    assert!(
        b_console.contains(&format!("amirun-tiny: instance-id {b}")),
        "{b}: IMDS did not answer through the VPC network:\n{b_console}"
    );
    assert_eq!(
        probe_lines(&b_console),
        [
            "probe 8080 REACHED",
            "probe 8081 blocked",
            "probe 22 blocked",
            "probe done"
        ],
        "{b}: {b_console}"
    );

    // A guest of another VPC with the same block reaches nothing of A
    // (which serves by now).
    let c = launch(&paths, &c_att, &client("172.31.16.10", 2), 42203);
    launched.1.push(c.clone());
    // A VPC with an internet gateway reaches the internet, and neither the
    // host nor another VPC's private addresses.
    let d = launch(&paths, &d_att, &outbound_client(), 42204);
    launched.1.push(d.clone());
    let c_console = wait_console(&paths, &c, "probe done");
    assert!(
        c_console.contains("amirun-tiny: network eth0 172.31.16.12/20 via 172.31.16.1"),
        "{c_console}"
    );
    assert_eq!(
        probe_lines(&c_console),
        [
            "probe 8080 blocked",
            "probe 8081 blocked",
            "probe 22 blocked",
            "probe done"
        ],
        "{c}: {c_console}"
    );

    let d_console = wait_console(&paths, &d, "probe done");
    assert!(
        d_console.contains("amirun-tiny: network eth0 10.1.0.12/24 via 10.1.0.1"),
        "{d_console}"
    );
    assert_eq!(
        probe_lines(&d_console),
        [
            "probe internet REACHED",
            "probe host blocked",
            "probe other-vpc blocked",
            "probe done"
        ],
        "{d}: {d_console}"
    );
    let status = std::fs::read_to_string(paths.network_status(&d)).unwrap();
    assert!(status.contains("internet gateway (pasta)"), "{status}");

    // The host: A's public address opens exactly the admitted port.
    let public = a_att.public_ip.unwrap();
    let page = get((public, 8080)).unwrap_or_default();
    assert!(
        page.contains("served-by-a-on-8080"),
        "{public}:8080 gave {page:?}"
    );
    assert_eq!(get((public, 8081)), None, "{public}:8081 is open");
    assert_eq!(get((public, 22)), None, "{public}:22 is open");
    // amirun's SSH forward reaches port 22 whatever the groups say.
    let page = get((Ipv4Addr::LOCALHOST, 42201)).unwrap_or_default();
    assert!(
        page.contains("served-by-a-on-22"),
        "the SSH forward gave {page:?}"
    );

    // Neither VPC has a way out.
    for vpc in [vpc1, vpc2] {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", paths.vpc_network(vpc).netns.display()))
            .args(["ip", "route", "get", "192.0.2.1"])
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "{vpc} routes out: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    // Revoking the rule on the running guest closes the port; granting 8081
    // opens that one.
    let mut changed = a_att.clone();
    changed.ingress = vec![rule(Protocol::Tcp, Some(8081), &["0.0.0.0/0"])];
    let t = std::time::Instant::now();
    apply_vpc_rules(&changed).unwrap();
    eprintln!("apply_vpc_rules took {} ms", t.elapsed().as_millis());
    assert_eq!(
        get((public, 8080)),
        None,
        "{public}:8080 is still open after the revoke"
    );
    let page = get((public, 8081)).unwrap_or_default();
    assert!(
        page.contains("served-by-a-on-8081"),
        "{public}:8081 gave {page:?}"
    );
    // A rule change for another interface is refused by this supervisor.
    let mut wrong = changed.clone();
    wrong.private_ip = Ipv4Addr::new(172, 31, 16, 99);
    assert!(apply_vpc_rules(&wrong).is_err());

    // A killed supervisor leaves its VPC network behind (pasta and dnsmasq
    // keep it); recovery's sweep takes it down.
    let d_pid: i32 = std::fs::read_to_string(paths.supervisor_pid(&d))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until("D's supervisor to die", Duration::from_secs(30), || {
        !supervisor::probe(&paths, &d).supervisor_alive
    });
    let d_net = paths.vpc_network(vpc3);
    assert!(d_net.leg_pid.exists(), "nothing was left to sweep");
    // A killed process's command line is gone (its memory released) a
    // moment before its files are closed, so its membership lock may still
    // be held when the probe says it is dead: recovery sweeps again, and so
    // does this test, until the lock is released.
    wait_until(
        "the sweep to take D's VPC network down",
        Duration::from_secs(30),
        || {
            amirun::network::vpc::sweep(&paths.vpc_networks_dir());
            !d_net.dir.exists()
        },
    );
    assert!(
        paths.vpc_network(vpc1).dir.exists(),
        "the sweep took a VPC in use"
    );

    for id in [&a, &b, &c] {
        let log = std::fs::read_to_string(paths.supervisor_log(id)).unwrap_or_default();
        for l in log
            .lines()
            .filter(|l| l.contains("guest network") || l.contains("VPC network"))
        {
            eprintln!("{id}: {l}");
        }
        stop(&paths, id);
    }
    wait_until(
        "the VPC networks to be taken down",
        Duration::from_secs(30),
        || {
            std::fs::read_dir(paths.vpc_networks_dir())
                .map(|d| d.count() == 0)
                .unwrap_or(true)
        },
    );
    let out = Command::new("pgrep")
        .args(["-f", &runtime.path().display().to_string()])
        .output()
        .unwrap();
    assert!(
        out.stdout.is_empty(),
        "helpers outlived their VPCs: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}
