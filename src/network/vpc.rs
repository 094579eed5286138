//! A real network per VPC on this host, where amirun has the privilege
//! (root): why it exists is that instances of one VPC must share a layer-2
//! network, reach each other only as their security groups allow, and
//! never send anything addressed to a VPC range off the machine.
//!
//! Layout (one per VPC, files named by [`crate::paths::VpcNetworkFiles`]):
//! - a network namespace, bind-mounted at `netns` so it outlives any one
//!   supervisor (mounted only once it is set up, so a supervisor killed
//!   half-way leaves nothing); made under the `lock` file, joined by every
//!   supervisor of the VPC with a shared lock on `members`, and taken down
//!   by the last one to leave (an exclusive lock on `members` that
//!   succeeds), or by [`sweep`] when every member died;
//! - inside it a bridge [`BRIDGE`] with each subnet's router address
//!   (network + 1, as on EC2), `169.254.169.254` on `lo`, forwarding on,
//!   IPv6 off, `prohibit` routes for 169.254.0.0/16, the VPC block and the
//!   host's own addresses;
//! - dnsmasq (Debian's `dnsmasq-base`) as the VPC's DHCP server: one static
//!   range per subnet, one host file per interface (MAC -> private address)
//!   in `dhcp-hosts/`, DNS relayed to the internet gateway's resolver or
//!   off;
//! - for a VPC with an internet gateway, pasta as the outbound leg (as for a
//!   private guest namespace, see [`super`]), masqueraded, and never for
//!   private, link-local, loopback, multicast or host destinations (an
//!   nftables set, not only routes: pasta copies the host's routes);
//! - each guest is a tap device ([`VpcPort`]) opened in the namespace by
//!   its supervisor and handed to QEMU as a file descriptor
//!   ([`crate::machine::VPC_TAP_FD`]): not persistent, so it vanishes with
//!   QEMU and the supervisor, whatever kills them.
//!
//! Security groups are nftables rules (the `nft` CLI from Debian's
//! `nftables`, fed one generated script per change: a script is one atomic
//! transaction, and every value in it is re-rendered from a parsed address,
//! block, port or MAC, so nothing a user typed reaches nft verbatim).
//! The kernel here has no bridge conntrack, so bridged IPv4 is passed
//! through the inet hooks (`br_netfilter`, `bridge-nf-call-iptables=1`,
//! checked when the namespace is made) where the rules are stateful
//! (`ct state established,related accept`) and keyed by private address;
//! a bridge-family table makes those addresses trustworthy (each tap may
//! only send its own MAC and address, ARP included, and DHCP requests).
//! A new connection from guest A to guest B passes A's egress chain, then
//! B's ingress chain; anything else is dropped.
//!
//! IMDS: a guest's connection to 169.254.169.254:80 is DNATed, by its
//! (anti-spoofed) source address, to a listener of its own supervisor bound
//! in the namespace on `169.254.169.254:<port>`, which relays it to the
//! supervisor's IMDS socket. A responder on the bridge rather than a second
//! NIC with slirp: images configure one NIC (cloud-init's fallback, the
//! tiny image's udhcpc) and EC2's IMDS is on the primary interface's path.
//!
//! Public addresses: the supervisor listens on the guest's public address
//! (a loopback address from 127.0.0.0/8) on exactly the TCP ports its
//! ingress rules open to the host (a rule whose peers contain
//! [`HOST_PEER`], e.g. 0.0.0.0/0), and relays each connection into the
//! namespace to the private address, where the guest's nft chain for
//! traffic from the namespace admits the same ports. A userspace relay
//! rather than DNAT: DNAT from the host would need a link between the
//! host's namespace and the VPC's (and rules in the host's own ruleset),
//! which is exactly the path that must not exist. Rule changes reach a
//! running guest through [`apply_vpc_rules`] (an abstract unix socket of
//! its supervisor, named by the interface id, root only), which replaces
//! its chains in one transaction and opens or closes listeners.

use super::VpcAttachment;
use super::{host_addresses, in_namespace, NetworkStatus, DNS_FORWARD};
use crate::paths::VpcNetworkFiles;
use nix::fcntl::{Flock, FlockArg};
use nix::libc;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The bridge in every VPC namespace.
pub const BRIDGE: &str = "br0";
/// The nftables tables' name (`inet amirun`, `bridge amirun`).
pub const TABLE: &str = "amirun";
/// The address the host's connections to a public address come from, as
/// far as security groups are concerned: a port is open on the public
/// address when an ingress rule admits TCP on it from a block containing it.
pub const HOST_PEER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
/// Most listeners on one public address (a rule may open 65535 ports).
pub const MAX_PUBLIC_PORTS: usize = 256;
/// The firewall mark of the SSH forward's connections (`amirun ssh`):
/// amirun's own management path, admitted to port 22 whatever the groups say.
pub const SSH_MARK: u32 = 0x616d_7373;
/// Destinations the internet gateway never carries (plus the VPC's own
/// block and the host's addresses).
const NEVER_OUTBOUND: [&str; 9] = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
];
/// How long a helper (pasta, dnsmasq) may take to come up or go.
const HELPER_TIMEOUT: Duration = Duration::from_secs(15);

fn invalid(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg.into())
}

mod rules;

use rules::rule_admits;
pub use rules::{
    attach_script, base_ruleset, detach_script, public_ports, rules_script, Cidr, PortPlan,
};

/// Runs `nft -f -` with `script` inside `ns` (one transaction).
fn nft(ns: &File, script: &str) -> std::io::Result<()> {
    run_in(ns, "nft", &["-f", "-"], Some(script))
}

/// Runs a program inside `ns`, feeding it `stdin`; its stderr is the error.
fn run_in(ns: &File, program: &str, args: &[&str], stdin: Option<&str>) -> std::io::Result<()> {
    in_namespace(ns, || {
        let mut child = Command::new(program)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot run {program}: {e}")))?;
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(text.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "{program} {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    })
}

/// Whether VPC networks can be made here; the error says why not (the
/// service then launches the guest isolated and says so).
pub fn available() -> Result<(), String> {
    super::namespaces_available()?;
    if !Path::new("/dev/net/tun").exists() {
        return Err("there is no /dev/net/tun for tap devices".into());
    }
    for (tool, package) in [("nft", "nftables"), ("dnsmasq", "dnsmasq-base")] {
        let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .any(|d| d.join(tool).is_file());
        if !found {
            return Err(format!("{tool} is missing (install Debian's {package})"));
        }
    }
    std::thread::spawn(|| {
        // SAFETY: unshare only changes this short-lived thread's namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        if !Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists() {
            return Err("bridged traffic cannot be filtered: br_netfilter is not loaded (modprobe br_netfilter)".into());
        }
        Ok(())
    })
    .join()
    .unwrap_or_else(|_| Err("the probe panicked".into()))
}

/// An exclusive `flock` on a lock file that is still the one at `path`
/// (teardown removes the directory, so a waiter may have locked a file
/// that is gone).
fn lock_exclusive(path: &Path) -> std::io::Result<Flock<File>> {
    loop {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let lock = Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| e)?;
        let same = std::fs::metadata(path)
            .is_ok_and(|m| lock.metadata().is_ok_and(|l| l.ino() == m.ino()));
        if same {
            return Ok(lock);
        }
    }
}

fn make_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// The namespace mounted at `path`, if one is (an empty file is a mount
/// point whose namespace is gone).
fn mounted_ns(path: &Path) -> std::io::Result<Option<File>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // SAFETY: fstatfs on a valid fd into a zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(f.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    Ok((st.f_type as i64 == NSFS_MAGIC).then_some(f))
}

/// Ends the helper whose pid is in `pid_file` if it is still the helper
/// that wrote it (its command line names that file: a reused pid is left
/// alone), and waits until it is gone.
fn stop_helper(pid_file: &Path, signal: libc::c_int) {
    let Some(pid) = helper_pid(pid_file) else {
        return;
    };
    // SAFETY: kill on a pid we just checked.
    unsafe { libc::kill(pid, signal) };
    if signal != libc::SIGTERM {
        return;
    }
    let deadline = Instant::now() + HELPER_TIMEOUT;
    while helper_pid(pid_file) == Some(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if helper_pid(pid_file) == Some(pid) {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// The pid in `pid_file`, if that process is alive and names the file on
/// its command line (dnsmasq's `--pid-file=`, pasta's `--pid`).
fn helper_pid(pid_file: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let needle = pid_file.as_os_str().as_encoded_bytes();
    (pid > 1 && cmdline.windows(needle.len()).any(|w| w == needle)).then_some(pid)
}

/// One VPC's network, joined: held by each supervisor of the VPC.
pub struct VpcNetwork {
    files: VpcNetworkFiles,
    ns: File,
    member: Option<Flock<File>>,
    /// Why the internet gateway's leg (pasta) did not start, if it did
    /// not: the network works without it, with nowhere to send outbound
    /// traffic or DNS queries (as a guest namespace whose leg failed).
    leg_error: Option<String>,
}

impl VpcNetwork {
    /// Joins the VPC's network, making it (or the subnet's part of it)
    /// first when needed.
    pub fn join(files: &VpcNetworkFiles, plan: &PortPlan) -> std::io::Result<Self> {
        make_dir(&files.dir)?;
        let _lock = lock_exclusive(&files.lock)?;
        let ns = match mounted_ns(&files.netns)? {
            Some(ns) => ns,
            None => {
                let made = create_namespace(files, plan);
                if made.is_err() {
                    teardown(files);
                }
                made?
            }
        };
        let mut leg_error = None;
        let joined = (|| {
            ensure_subnet(files, &ns, plan)?;
            if plan.internet_gateway {
                if let Err(e) = ensure_leg(files, &ns) {
                    tracing::warn!("the VPC's internet gateway did not start: {e}");
                    leg_error = Some(e.to_string());
                }
            }
            let members = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&files.members)?;
            Flock::lock(members, FlockArg::LockShared).map_err(|(_, e)| std::io::Error::from(e))
        })();
        match joined {
            Ok(member) => Ok(VpcNetwork {
                files: files.clone(),
                ns,
                member: Some(member),
                leg_error,
            }),
            Err(e) => {
                leave_locked(files);
                Err(e)
            }
        }
    }

    /// The namespace.
    pub fn ns(&self) -> &File {
        &self.ns
    }
}

/// The subnet's router address on the bridge, and dnsmasq serving every
/// subnet (restarted when one is new). Called with the lock held.
fn ensure_subnet(f: &VpcNetworkFiles, ns: &File, plan: &PortPlan) -> std::io::Result<()> {
    {
        let mut subnets: BTreeSet<Cidr> = std::fs::read_to_string(&f.subnets)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect();
        let new = subnets.insert(plan.subnet);
        if new {
            let gw = format!("{}/{}", plan.subnet.router(), plan.subnet.prefix());
            run_in(ns, "ip", &["addr", "replace", &gw, "dev", BRIDGE], None)?;
            let text: String = subnets.iter().map(|s| format!("{s}\n")).collect();
            std::fs::write(&f.subnets, text)?;
        }
        if !new && helper_pid(&f.dnsmasq_pid).is_some() {
            return Ok(());
        }
        stop_helper(&f.dnsmasq_pid, libc::SIGTERM);
        make_dir(&f.dhcp_hosts)?;
        let mut args = vec![
            "--conf-file=/dev/null".to_string(),
            format!("--pid-file={}", f.dnsmasq_pid.display()),
            format!("--log-facility={}", f.dnsmasq_log.display()),
            format!("--interface={BRIDGE}"),
            "--bind-interfaces".into(),
            "--user=root".into(),
            "--group=root".into(),
            "--dhcp-authoritative".into(),
            format!("--dhcp-leasefile={}", f.leases.display()),
            format!("--dhcp-hostsdir={}", f.dhcp_hosts.display()),
        ];
        for s in &subnets {
            args.push(format!(
                "--dhcp-range={},static,{},1h",
                s.nth(0),
                s.netmask()
            ));
        }
        if plan.internet_gateway {
            args.extend([
                "--no-resolv".into(),
                "--no-hosts".into(),
                format!("--server={DNS_FORWARD}"),
            ]);
        } else {
            args.push("--port=0".into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // dnsmasq forks into the background once it is listening; its
        // first process exits then.
        run_in(ns, "dnsmasq", &args, None)?;
        let deadline = Instant::now() + HELPER_TIMEOUT;
        while helper_pid(&f.dnsmasq_pid).is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if helper_pid(&f.dnsmasq_pid).is_none() {
            return Err(std::io::Error::other(format!(
                "dnsmasq did not start; see {}",
                f.dnsmasq_log.display()
            )));
        }
        Ok(())
    }
}

/// The internet gateway: pasta on the namespace (forked into the
/// background, its pid in `leg.pid`), waited for until it configured a
/// default route. Called with the lock held.
fn ensure_leg(f: &VpcNetworkFiles, ns: &File) -> std::io::Result<()> {
    {
        if helper_pid(&f.leg_pid).is_some() {
            return Ok(());
        }
        let ns_fd = ns.as_raw_fd();
        let mut cmd = Command::new("pasta");
        cmd.args(["-q", "-4", "--config-net", "--no-map-gw"])
            .args(["-t", "none", "-u", "none", "-T", "none", "-U", "none"])
            .args(["--dns-forward", DNS_FORWARD, "--runas", "0", "--pid"])
            .arg(&f.leg_pid)
            .arg("--netns")
            .arg(format!("/proc/self/fd/{ns_fd}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: fcntl is async-signal-safe; it clears FD_CLOEXEC on the
        // child's copy of the namespace fd only.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(ns_fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd
            .output()
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot run pasta: {e}")))?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "pasta exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let deadline = Instant::now() + HELPER_TIMEOUT;
        while !has_default_route(ns) {
            if Instant::now() > deadline {
                stop_helper(&f.leg_pid, libc::SIGTERM);
                return Err(std::io::Error::other(
                    "pasta did not configure the VPC namespace",
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

fn has_default_route(ns: &File) -> bool {
    in_namespace(ns, || {
        std::fs::read_to_string("/proc/thread-self/net/route")
    })
    .is_ok_and(|t| {
        t.lines()
            .skip(1)
            .any(|l| l.split_whitespace().nth(1) == Some("00000000"))
    })
}

impl Drop for VpcNetwork {
    fn drop(&mut self) {
        self.member = None;
        leave(&self.files);
    }
}

/// Takes the network down if nobody is a member any more.
fn leave(files: &VpcNetworkFiles) {
    let Ok(_lock) = lock_exclusive(&files.lock) else {
        return;
    };
    leave_locked(files);
}

/// [`leave`] with the lock held.
fn leave_locked(files: &VpcNetworkFiles) {
    let Ok(members) = File::open(&files.members) else {
        teardown(files);
        return;
    };
    if let Ok(_alone) = Flock::lock(members, FlockArg::LockExclusiveNonblock) {
        teardown(files);
    }
}

/// Removes a VPC network whatever state it is in (helpers, mount, files).
/// Called with the lock held.
fn teardown(files: &VpcNetworkFiles) {
    stop_helper(&files.dnsmasq_pid, libc::SIGTERM);
    stop_helper(&files.leg_pid, libc::SIGTERM);
    if let Ok(c) = super::cstring(&files.netns) {
        // SAFETY: umount2 on a C string we own; failing means not mounted.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    let _ = std::fs::remove_dir_all(&files.dir);
    tracing::info!(dir = %files.dir.display(), "VPC network removed");
}

/// Takes down every VPC network under `root` that has no member left (its
/// supervisors were killed): run at recovery.
pub fn sweep(root: &Path) {
    let Ok(dirs) = std::fs::read_dir(root) else {
        return;
    };
    for d in dirs.flatten() {
        if d.path().is_dir() {
            leave(&VpcNetworkFiles::in_dir(d.path()));
        }
    }
}

/// Makes the namespace and mounts it at `netns`, then sets it up.
fn create_namespace(files: &VpcNetworkFiles, plan: &PortPlan) -> std::io::Result<File> {
    // Held only by this descriptor until it is fully set up and mounted: a
    // supervisor killed half-way leaves nothing behind.
    let ns = std::thread::spawn(|| {
        // SAFETY: unshare changes only this thread, which ends right after;
        // the open file keeps the namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        File::open("/proc/thread-self/ns/net")
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("namespace thread panicked")))?;
    let host = host_addresses()?;
    in_namespace(&ns, || {
        for (key, value) in [
            ("net/ipv6/conf/all/disable_ipv6", "1"),
            ("net/ipv6/conf/default/disable_ipv6", "1"),
            ("net/ipv4/ip_forward", "1"),
            ("net/bridge/bridge-nf-call-iptables", "1"),
        ] {
            std::fs::write(Path::new("/proc/sys").join(key), value).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot set {key} in the VPC namespace: {e}"),
                )
            })?;
        }
        Ok(())
    })?;
    let mut batch = format!(
        "link set lo up\naddr add 169.254.169.254/32 dev lo\n\
         link add {BRIDGE} type bridge\nlink set {BRIDGE} up\n\
         route add prohibit 169.254.0.0/16\nroute add prohibit {}\n",
        plan.vpc
    );
    for a in &host {
        batch.push_str(&format!("route add prohibit {a}/32\n"));
    }
    run_in(&ns, "ip", &["-batch", "-"], Some(&batch))?;
    nft(&ns, &base_ruleset(plan.vpc, &host, plan.internet_gateway))?;
    File::create(&files.netns)?;
    let source = CString::new(format!("/proc/self/fd/{}", ns.as_raw_fd())).expect("no NUL");
    let target = super::cstring(&files.netns)?;
    // SAFETY: mount with C strings we own; the source is our open namespace.
    if unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    tracing::info!(vpc = %plan.vpc, dir = %files.dir.display(), "VPC network made");
    Ok(ns)
}

/// `struct ifreq` as TUNSETIFF reads it.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens a new (not persistent) tap device named `name` in the calling
/// thread's namespace.
fn open_tap(name: &str) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
        _pad: [0; 22],
    };
    if name.len() >= libc::IFNAMSIZ {
        return Err(invalid(format!("'{name}' is too long for a device name")));
    }
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads an ifreq we own.
    if unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &mut req) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(f)
}

/// A listening socket served by a thread until [`Served::stop`].
struct Served {
    listener: RawFd,
    stopped: Arc<AtomicBool>,
}

impl Served {
    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        // SAFETY: shutdown wakes the accepting thread; the fd stays owned by it.
        unsafe { libc::shutdown(self.listener, libc::SHUT_RDWR) };
    }
}

/// Serves `listener` from a thread, calling `each` on a thread per connection.
fn serve_tcp(
    name: &str,
    listener: TcpListener,
    each: impl Fn(TcpStream) + Send + Sync + 'static,
) -> std::io::Result<Served> {
    let fd = listener.as_raw_fd();
    let stopped = Arc::new(AtomicBool::new(false));
    let stop = Arc::clone(&stopped);
    let each = Arc::new(each);
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            for c in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(c) = c else { continue };
                let each = Arc::clone(&each);
                std::thread::spawn(move || each(c));
            }
        })?;
    Ok(Served {
        listener: fd,
        stopped,
    })
}

/// A byte stream that can be split in two halves and half-closed.
trait Duplex: Read + Write + Send + Sized + 'static {
    fn dup(&self) -> std::io::Result<Self>;
    fn close_write(&self);
}

impl Duplex for TcpStream {
    fn dup(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
    fn close_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

impl Duplex for UnixStream {
    fn dup(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
    fn close_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

/// Copies both ways until each side has closed.
fn relay<A: Duplex, B: Duplex>(mut a: A, mut b: B) {
    let (Ok(mut a2), Ok(mut b2)) = (a.dup(), b.dup()) else {
        return;
    };
    let t = std::thread::spawn(move || {
        let _ = std::io::copy(&mut b2, &mut a2);
        a2.close_write();
    });
    let _ = std::io::copy(&mut a, &mut b);
    b.close_write();
    let _ = t.join();
}

/// A TCP connection to `to` from inside `ns`, with firewall mark `mark`.
fn connect_in(ns: &File, to: SocketAddrV4, mark: Option<u32>) -> std::io::Result<TcpStream> {
    in_namespace(ns, || {
        // SAFETY: a new socket we own at once.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh socket; TcpStream now owns it.
        let stream = unsafe { TcpStream::from_raw_fd(fd) };
        if let Some(mark) = mark {
            // SAFETY: setsockopt with a u32 we own.
            if unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_MARK,
                    &mark as *const u32 as *const libc::c_void,
                    4,
                )
            } != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: to.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*to.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: connect with a sockaddr_in we own.
        if unsafe {
            libc::connect(
                fd,
                &sa as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        } != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    })
}

/// The abstract unix socket name a guest's supervisor takes rule changes on.
fn control_name(eni: &str) -> String {
    format!("amirun/vpc-port/{eni}")
}

/// Replaces the security-group rules of a running guest (its supervisor's
/// [`VpcPort`]): its nft chains in one transaction, and the ports open on
/// its public address. A guest that does not run here with a VPC network
/// has nothing to change (`Ok`).
pub fn apply_vpc_rules(att: &VpcAttachment) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    PortPlan::new(att)?;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(control_name(
        &att.network_interface_id,
    ))?;
    let mut s = match UnixStream::connect_addr(&addr) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(()),
        Err(e) => return Err(e),
    };
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(&serde_json::to_vec(att).expect("serialisable"))?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    match reply.trim().strip_prefix("ok") {
        Some(_) => Ok(()),
        None => Err(std::io::Error::other(format!(
            "{}: {}",
            att.network_interface_id,
            reply.trim().trim_start_matches("error: ")
        ))),
    }
}

/// The uid of a unix socket's peer.
fn peer_uid(s: &UnixStream) -> Option<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt into a ucred we own.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        )
    };
    (r == 0).then_some(cred.uid)
}

/// State a port's threads share.
struct PortState {
    ns: File,
    plan: PortPlan,
    att: Mutex<VpcAttachment>,
    /// Listeners on the public address, by port.
    public: Mutex<BTreeMap<u16, Served>>,
}

impl PortState {
    /// Opens and closes listeners on the public address to match the rules.
    fn sync_public(self: &Arc<Self>) {
        let Some(ip) = self.plan.public_ip else {
            return;
        };
        let ranges = public_ports(&self.att.lock().expect("port state"));
        let wanted: BTreeSet<u16> = ranges
            .iter()
            .flat_map(|(a, b)| *a..=*b)
            .take(MAX_PUBLIC_PORTS)
            .collect();
        if ranges
            .iter()
            .map(|(a, b)| usize::from(b - a) + 1)
            .sum::<usize>()
            > MAX_PUBLIC_PORTS
        {
            tracing::warn!("only the first {MAX_PUBLIC_PORTS} open ports are forwarded on {ip}");
        }
        let mut public = self.public.lock().expect("port state");
        public.retain(|port, served| {
            let keep = wanted.contains(port);
            if !keep {
                served.stop();
            }
            keep
        });
        for port in wanted {
            if public.contains_key(&port) {
                continue;
            }
            let listener = match TcpListener::bind((ip, port)) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!("cannot listen on {ip}:{port}: {e}");
                    continue;
                }
            };
            let me = Arc::clone(self);
            match serve_tcp("public", listener, move |c| me.forward(c, port)) {
                Ok(s) => {
                    public.insert(port, s);
                }
                Err(e) => tracing::warn!("cannot serve {ip}:{port}: {e}"),
            }
        }
    }

    /// Relays one connection to the public address into the VPC, if the
    /// rules (as they are now) admit its source on that port.
    fn forward(&self, client: TcpStream, port: u16) {
        let from = match client.peer_addr() {
            Ok(std::net::SocketAddr::V4(a)) => *a.ip(),
            _ => return,
        };
        let admitted = rule_admits(&self.att.lock().expect("port state"), from, port);
        if !admitted {
            return;
        }
        match connect_in(&self.ns, SocketAddrV4::new(self.plan.ip, port), None) {
            Ok(guest) => relay(client, guest),
            Err(e) => tracing::debug!("public {port}: guest side: {e}"),
        }
    }

    /// Takes one rule change from [`apply_vpc_rules`].
    fn apply(self: &Arc<Self>, text: &[u8]) -> std::io::Result<()> {
        let att: VpcAttachment = serde_json::from_slice(text).map_err(invalid_data)?;
        let plan = PortPlan::new(&att)?;
        if plan.tap != self.plan.tap || plan.ip != self.plan.ip || plan.mac != self.plan.mac {
            return Err(invalid(format!(
                "{} is not the interface this supervisor runs",
                att.network_interface_id
            )));
        }
        nft(&self.ns, &rules_script(&self.plan, &att)?)?;
        *self.att.lock().expect("port state") = att;
        self.sync_public();
        Ok(())
    }
}

fn invalid_data(e: serde_json::Error) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e)
}

/// One guest's place on its VPC's bridge, held by its supervisor while QEMU
/// runs: the tap, its rules, its DHCP entry, its IMDS and public listeners,
/// its control socket. Dropping it removes them and leaves the network.
pub struct VpcPort {
    state: Arc<PortState>,
    tap: File,
    served: Vec<Served>,
    ssh: Mutex<Option<Served>>,
    dhcp_host: PathBuf,
    dnsmasq_pid: PathBuf,
    // Dropped last: leaving may take the whole network down.
    _net: VpcNetwork,
}

impl VpcPort {
    /// Joins the VPC network and plugs the guest in; `imds_socket` is the
    /// supervisor's IMDS server.
    pub fn attach(
        files: &VpcNetworkFiles,
        att: &VpcAttachment,
        imds_socket: Option<&Path>,
    ) -> std::io::Result<Self> {
        let plan = PortPlan::new(att)?;
        let net = VpcNetwork::join(files, &plan)?;
        let ns = net.ns().try_clone()?;
        let tap = in_namespace(&ns, || open_tap(&plan.tap)).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot make tap device {}: {e}", plan.tap),
            )
        })?;
        // IMDS: a listener in the namespace, relayed to the supervisor's socket.
        let imds = in_namespace(&ns, || {
            TcpListener::bind((Ipv4Addr::new(169, 254, 169, 254), 0))
        })?;
        let imds_port = imds.local_addr()?.port();
        let socket = imds_socket.map(Path::to_owned);
        let imds = serve_tcp("imds", imds, move |c| {
            if let Some(s) = socket.as_ref().and_then(|p| UnixStream::connect(p).ok()) {
                relay(c, s);
            }
        })?;
        // A predecessor with this address that was killed left its entries.
        for map in ["ingress", "egress", "public", "imds"] {
            let _ = nft(
                &ns,
                &format!("delete element inet {TABLE} {map} {{ {} }}\n", plan.ip),
            );
        }
        nft(&ns, &attach_script(&plan, att, imds_port)?)?;
        // From here on, a failure drops the port, which undoes all of it.
        let mut port = VpcPort {
            state: Arc::new(PortState {
                ns,
                plan: plan.clone(),
                att: Mutex::new(att.clone()),
                public: Mutex::new(BTreeMap::new()),
            }),
            tap,
            served: vec![imds],
            ssh: Mutex::new(None),
            dhcp_host: files.dhcp_hosts.join(&plan.eni),
            dnsmasq_pid: files.dnsmasq_pid.clone(),
            _net: net,
        };
        std::fs::write(&port.dhcp_host, format!("{},{},1h\n", plan.mac, plan.ip))?;
        run_in(
            &port.state.ns,
            "ip",
            &["link", "set", &plan.tap, "master", BRIDGE, "up"],
            None,
        )?;
        port.state.sync_public();
        port.served.push(serve_control(&port.state)?);
        Ok(port)
    }

    /// The VPC's namespace.
    pub fn ns(&self) -> std::io::Result<File> {
        self.state.ns.try_clone()
    }

    /// The tap device's descriptor (for QEMU, at [`crate::machine::VPC_TAP_FD`]).
    pub fn tap_fd(&self) -> RawFd {
        self.tap.as_raw_fd()
    }

    /// What `describe-instances` shows about this network.
    pub fn status(&self) -> NetworkStatus {
        let p = &self.state.plan;
        let public = p
            .public_ip
            .map_or(String::new(), |ip| format!("; public address {ip}"));
        if let (true, Some(e)) = (p.internet_gateway, &self._net.leg_error) {
            NetworkStatus::new(
                "none",
                format!(
                    "VPC network: {} on the VPC's bridge in subnet {}{public}. The outbound leg did not start ({e}); the guest has IMDS and its SSH forward but no DNS or outbound access",
                    p.ip, p.subnet
                ),
            )
        } else if p.internet_gateway {
            NetworkStatus::new(
                "nat",
                format!(
                    "VPC network: {} on the VPC's bridge in subnet {}{public}; outbound through the internet gateway (pasta), never to private, link-local or host addresses",
                    p.ip, p.subnet
                ),
            )
        } else {
            NetworkStatus::new(
                "none",
                format!(
                    "VPC network: {} on the VPC's bridge in subnet {}{public}; the VPC has no internet gateway, so no outbound path",
                    p.ip, p.subnet
                ),
            )
        }
    }

    /// Listens on the host's 127.0.0.1 at `port` and relays to the guest's
    /// port 22 (amirun's management path, marked [`SSH_MARK`]).
    pub fn start_ssh_relay(&self, port: u16) -> std::io::Result<()> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))?;
        let state = Arc::clone(&self.state);
        *self.ssh.lock().expect("ssh relay") =
            Some(serve_tcp(
                "ssh-relay",
                listener,
                move |c| match connect_in(
                    &state.ns,
                    SocketAddrV4::new(state.plan.ip, 22),
                    Some(SSH_MARK),
                ) {
                    Ok(g) => relay(c, g),
                    Err(e) => tracing::debug!("ssh relay: guest side: {e}"),
                },
            )?);
        Ok(())
    }
}

/// Serves [`apply_vpc_rules`] for this port (root, or this uid, only).
fn serve_control(state: &Arc<PortState>) -> std::io::Result<Served> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(control_name(&state.plan.eni))?;
    let listener = UnixListener::bind_addr(&addr)?;
    let fd = listener.as_raw_fd();
    let stopped = Arc::new(AtomicBool::new(false));
    let stop = Arc::clone(&stopped);
    let state = Arc::clone(state);
    let me = nix::unistd::geteuid().as_raw();
    std::thread::Builder::new()
        .name("vpc-control".into())
        .spawn(move || {
            for c in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut c) = c else { continue };
                if !peer_uid(&c).is_some_and(|u| u == 0 || u == me) {
                    continue;
                }
                let mut text = Vec::new();
                let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                if (&mut c).take(1 << 20).read_to_end(&mut text).is_err() {
                    continue;
                }
                let reply = match state.apply(&text) {
                    Ok(()) => "ok\n".to_string(),
                    Err(e) => format!("error: {e}\n"),
                };
                let _ = c.write_all(reply.as_bytes());
            }
        })?;
    Ok(Served {
        listener: fd,
        stopped,
    })
}

impl Drop for VpcPort {
    fn drop(&mut self) {
        let ssh = self.ssh.lock().expect("ssh relay");
        for s in self.served.iter().chain(ssh.iter()) {
            s.stop();
        }
        for s in self.state.public.lock().expect("port state").values() {
            s.stop();
        }
        let p = &self.state.plan;
        if let Err(e) = nft(&self.state.ns, &detach_script(&p.tap, p.ip)) {
            tracing::warn!("could not remove the rules of {}: {e}", p.tap);
        }
        // dnsmasq forgets a removed host file only when told to.
        if std::fs::remove_file(&self.dhcp_host).is_ok() {
            stop_helper(&self.dnsmasq_pid, libc::SIGHUP);
        }
    }
}
