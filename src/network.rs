//! Host networking for guests: the only module that touches the host's
//! network plumbing.
//!
//! Why it exists: QEMU user networking (slirp) is the guest's DHCP server,
//! DNS relay, IMDS capture (`guestfwd`) and SSH forward (`hostfwd`), but it
//! makes its outbound connections from the namespace QEMU runs in, and there
//! its gateway address *is* that namespace's 127.0.0.1 (libslirp 4.7; QEMU
//! 7.2 cannot turn that off). Run in the host's namespace, a guest would reach
//! every loopback service of the host. So a guest with outbound access
//! ([`crate::machine::Outbound::Nat`]) runs in a network namespace of its
//! own ([`GuestNamespace`]), where loopback is empty, and gets an outbound
//! leg that is not the host:
//!
//! - the supervisor makes the namespace (root only) and holds it only by a
//!   file descriptor, which QEMU joins and pasta inherits, so it goes away
//!   with them and nothing is left behind even when the supervisor is
//!   killed (QEMU and pasta die with it); `lo` up,
//!   `prohibit` routes for 169.254.0.0/16 (the host's metadata service and
//!   every other link-local service) and for each of the host's own IPv4
//!   addresses, read when the instance starts;
//! - `pasta` (passt) attaches to it with `--no-map-gw` (the gateway is not an
//!   alias of the host) and every port forward off (`-t/-u/-T/-U none`, so
//!   the namespace's loopback is never spliced to the host's), IPv4 only,
//!   and `--dns-forward` [`DNS_FORWARD`]: queries to that address go to the
//!   host's first resolver (measured with one on an address of the host's
//!   own, which the guest itself cannot reach);
//! - QEMU enters the namespace in its `pre_exec` and a private mount
//!   namespace where `/etc/resolv.conf` names [`DNS_FORWARD`], so slirp's
//!   DNS relay ends at the host's resolver;
//! - slirp's `hostfwd` for SSH now listens on the namespace's 127.0.0.1, so
//!   the supervisor listens on the host's 127.0.0.1 at the same port and
//!   relays each connection into the namespace ([`GuestNamespace::start_ssh_relay`]);
//! - IMDS needs nothing: its `guestfwd` runs `amirun __imds-relay` to a unix
//!   socket by path, which works across network namespaces.
//!
//! A guest in a VPC joins its VPC's network instead ([`vpc`]): a namespace
//! per VPC with a bridge, the guest on a tap device, security groups in
//! nftables; [`GuestNamespace`] holds its port there the same way.
//!
//! Where no namespace can be made (not root, no CAP_SYS_ADMIN), the service
//! launches the guest isolated instead (`restrict=on`: IMDS and SSH only)
//! and says why in `describe-instances` ([`NetworkStatus`]). Where pasta is
//! missing or cannot start (for example in a namespace with no routable
//! interface), the guest keeps IMDS and SSH and its DNS and outbound
//! connections have nowhere to go; the status says that too.

pub mod attachment;
pub mod vpc;

pub use attachment::{FlowRule, Protocol, VpcAttachment};
pub use vpc::apply_vpc_rules;

use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::libc;

/// The address the guest namespace's `/etc/resolv.conf` names; pasta
/// forwards DNS sent to it to the host's resolver. From 198.18.0.0/15
/// (benchmarking, never a real destination); only ever seen inside the
/// guest's namespace.
pub const DNS_FORWARD: &str = "198.18.0.53";

/// How long pasta may take to configure the namespace.
const LEG_TIMEOUT: Duration = Duration::from_secs(15);

/// What the supervisor sets up for a guest that runs in its own namespace
/// (part of the launch spec).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNetworkSpec {
    /// The `resolv.conf` QEMU sees (written by the supervisor).
    pub resolv_conf: PathBuf,
    /// Where the supervisor records how the network came up ([`NetworkStatus`]).
    pub status_file: PathBuf,
    /// The SSH forward's port, on the host's and the namespace's 127.0.0.1.
    pub ssh_port: Option<u16>,
    /// For a guest in a VPC ([`vpc`]): the files of the VPC's network
    /// (`Paths::vpc_network`); the guest's [`VpcAttachment`] is in the
    /// launch spec beside this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_network: Option<crate::paths::VpcNetworkFiles>,
    /// For a guest in a VPC: the supervisor's IMDS socket, which the
    /// guest reaches through the VPC network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imds_socket: Option<PathBuf>,
}

/// How an instance's network came up, shown by `describe-instances` as
/// `Amirun.GuestOutbound` and `Amirun.GuestOutboundReason`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkStatus {
    /// `nat` (DNS and outbound through the leg) or `none`.
    pub outbound: String,
    /// Why the guest has less than it asked for, or how it is connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl NetworkStatus {
    /// A status with a reason.
    pub fn new(outbound: &str, reason: impl Into<String>) -> Self {
        NetworkStatus {
            outbound: outbound.to_owned(),
            reason: Some(reason.into()),
        }
    }

    /// Reads a status file; `None` when there is none (older instances).
    pub fn read(path: &Path) -> Option<Self> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    /// Writes the status atomically (temp file beside it, then rename).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        tmp.write_all(&serde_json::to_vec(self).expect("serialisable"))?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }
}

/// Whether guests can get a network namespace of their own here: root with
/// CAP_SYS_ADMIN (tried by making and dropping one in a short thread).
/// The error says why not.
pub fn namespaces_available() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("a network namespace per guest needs root".into());
    }
    std::thread::spawn(|| {
        // SAFETY: unshare only changes this short-lived thread's namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "cannot create a network namespace: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    })
    .join()
    .unwrap_or_else(|_| Err("the namespace probe panicked".into()))
}

/// Runs `f` on a thread that has joined the network namespace `ns`: sockets
/// it makes and processes it spawns belong to that namespace.
fn in_namespace<T: Send>(
    ns: &File,
    f: impl FnOnce() -> std::io::Result<T> + Send,
) -> std::io::Result<T> {
    let fd = ns.as_raw_fd();
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a valid namespace fd changes only this thread.
            if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("namespace thread panicked")))
    })
}

fn cstring(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other)
}

/// The host's own IPv4 addresses (`ip -j -4 addr`), loopback left out.
fn host_addresses() -> std::io::Result<Vec<Ipv4Addr>> {
    let out = Command::new("ip").args(["-j", "-4", "addr"]).output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "ip -j -4 addr: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(parse_addresses(&out.stdout))
}

fn parse_addresses(json: &[u8]) -> Vec<Ipv4Addr> {
    let links: Vec<serde_json::Value> = serde_json::from_slice(json).unwrap_or_default();
    links
        .iter()
        .filter_map(|l| l["addr_info"].as_array())
        .flatten()
        .filter_map(|a| a["local"].as_str()?.parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback())
        .collect()
}

/// The `ip -batch` lines that seal a fresh namespace before any leg exists.
fn seal_commands(host: &[Ipv4Addr]) -> String {
    let mut s = String::from("link set lo up\nroute add prohibit 169.254.0.0/16\n");
    for a in host {
        s.push_str(&format!("route add prohibit {a}/32\n"));
    }
    s
}

/// One guest's network namespace, its outbound leg and its SSH relay; the
/// supervisor holds it while QEMU runs. Dropping it stops the leg; the
/// namespace ends with the last process in it.
pub struct GuestNamespace {
    spec: GuestNetworkSpec,
    ns: File,
    leg: Option<Child>,
    /// The guest's port in its VPC's network instead (then `ns` is the VPC's).
    vpc: Option<vpc::VpcPort>,
}

impl GuestNamespace {
    /// Makes the namespace, seals it, starts the leg and records the
    /// outcome in the status file. An error means there is no usable
    /// namespace (the guest must not start); a leg that fails only leaves a
    /// reason.
    ///
    /// With a VPC attachment (and [`GuestNetworkSpec::vpc_network`]) the
    /// guest joins its VPC's network instead ([`vpc::VpcPort`]).
    pub fn create(
        spec: &GuestNetworkSpec,
        attachment: Option<&VpcAttachment>,
    ) -> std::io::Result<Self> {
        if let (Some(att), Some(files)) = (attachment, &spec.vpc_network) {
            return Self::create_in_vpc(spec, files, att);
        }
        let started = Instant::now();
        let ns = std::thread::spawn(|| {
            // SAFETY: unshare changes only this thread, which ends right
            // after; the open file keeps the namespace alive.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            File::open("/proc/thread-self/ns/net")
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("namespace thread panicked")))?;
        let mut me = GuestNamespace {
            spec: spec.clone(),
            ns,
            leg: None,
            vpc: None,
        };
        std::fs::write(&spec.resolv_conf, format!("nameserver {DNS_FORWARD}\n"))?;
        let host = host_addresses()?;
        let batch = seal_commands(&host);
        in_namespace(&me.ns, || {
            let mut ip = Command::new("ip")
                .args(["-batch", "-"])
                .stdin(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            ip.stdin
                .take()
                .expect("piped")
                .write_all(batch.as_bytes())?;
            let out = ip.wait_with_output()?;
            if !out.status.success() {
                return Err(std::io::Error::other(format!(
                    "ip -batch in the guest namespace: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            Ok(())
        })?;
        let status = match me.start_leg() {
            Ok(()) => NetworkStatus::new(
                "nat",
                format!(
                    "Outbound through pasta from a private network namespace; DNS to the host's resolver; the host's loopback, its {} address(es) and 169.254.0.0/16 are unreachable",
                    host.len()
                ),
            ),
            Err(e) => NetworkStatus::new(
                "none",
                format!("The outbound leg did not start ({e}); the guest has IMDS and its SSH forward but no DNS or outbound access"),
            ),
        };
        tracing::info!(
            outbound = %status.outbound,
            reason = ?status.reason,
            ms = started.elapsed().as_millis() as u64,
            "guest network"
        );
        if let Err(e) = status.write(&spec.status_file) {
            tracing::warn!("could not write {}: {e}", spec.status_file.display());
        }
        Ok(me)
    }

    fn create_in_vpc(
        spec: &GuestNetworkSpec,
        files: &crate::paths::VpcNetworkFiles,
        att: &VpcAttachment,
    ) -> std::io::Result<Self> {
        let started = Instant::now();
        let port = vpc::VpcPort::attach(files, att, spec.imds_socket.as_deref())?;
        let status = port.status();
        tracing::info!(
            outbound = %status.outbound,
            reason = ?status.reason,
            ms = started.elapsed().as_millis() as u64,
            "guest network"
        );
        if let Err(e) = status.write(&spec.status_file) {
            tracing::warn!("could not write {}: {e}", spec.status_file.display());
        }
        Ok(GuestNamespace {
            spec: spec.clone(),
            ns: port.ns()?,
            leg: None,
            vpc: Some(port),
        })
    }

    /// Starts pasta on the namespace and waits until it has configured it.
    fn start_leg(&mut self) -> Result<(), String> {
        // pasta joins the namespace through a descriptor it inherits: it
        // cannot open another process's /proc/PID/ns/net once it has
        // dropped its capabilities.
        let ns_fd = self.ns.as_raw_fd();
        let mut cmd = Command::new("pasta");
        cmd.args(["-f", "-q", "-4", "--config-net", "--no-map-gw"])
            .args(["-t", "none", "-u", "none", "-T", "none", "-U", "none"])
            .args(["--dns-forward", DNS_FORWARD])
            // pasta drops to `nobody` by default, which may not join a
            // namespace owned by root.
            .args(["--runas", "0", "--netns"])
            .arg(format!("/proc/self/fd/{ns_fd}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: fcntl and prctl are async-signal-safe and allocate nothing;
        // clearing FD_CLOEXEC affects only the child's copy of the table.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(ns_fd, libc::F_SETFD, 0) != 0
                    || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| format!("cannot run pasta: {e}"))?;
        let deadline = Instant::now() + LEG_TIMEOUT;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                let mut msg = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut msg);
                }
                let msg: Vec<&str> = msg
                    .lines()
                    .filter(|l| !l.starts_with("Failed to send"))
                    .collect();
                return Err(format!("pasta exited with {st}: {}", msg.join("; ")));
            }
            if self.has_default_route() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "pasta did not configure the namespace within {}s",
                    LEG_TIMEOUT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Keep reading pasta's messages (into the supervisor's log), so a
        // full pipe never stalls it.
        if let Some(err) = child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if !line.starts_with("Failed to send") {
                        eprintln!("pasta: {line}");
                    }
                }
            });
        }
        self.leg = Some(child);
        Ok(())
    }

    fn has_default_route(&self) -> bool {
        in_namespace(&self.ns, || {
            std::fs::read_to_string("/proc/thread-self/net/route")
        })
        .is_ok_and(|t| {
            t.lines()
                .skip(1)
                .any(|l| l.split_whitespace().nth(1) == Some("00000000"))
        })
    }

    /// A hook for QEMU's `pre_exec`: join the namespace, and a private mount
    /// namespace in which `/etc/resolv.conf` names [`DNS_FORWARD`]. Only
    /// async-signal-safe system calls on values made here.
    ///
    /// In a VPC: QEMU stays where it is and gets the tap device as
    /// descriptor [`crate::machine::VPC_TAP_FD`].
    pub fn pre_exec_hook(
        &self,
    ) -> std::io::Result<impl FnMut() -> std::io::Result<()> + Send + Sync + 'static> {
        let fd: RawFd = self.ns.as_raw_fd();
        let tap: Option<RawFd> = self.vpc.as_ref().map(vpc::VpcPort::tap_fd);
        let resolv = cstring(&self.spec.resolv_conf)?;
        Ok(move || {
            if let Some(tap) = tap {
                let to = crate::machine::VPC_TAP_FD;
                // SAFETY: dup2 and fcntl on descriptors this process owns;
                // async-signal-safe, no allocation.
                unsafe {
                    if tap == to {
                        if libc::fcntl(to, libc::F_SETFD, 0) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    } else if libc::dup2(tap, to) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                return Ok(());
            }
            // SAFETY: system calls on a valid fd and C strings owned by the
            // closure; no allocation.
            unsafe {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0
                    || libc::unshare(libc::CLONE_NEWNS) != 0
                    || libc::mount(
                        std::ptr::null(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                // Without it slirp's DNS simply finds no resolver.
                libc::mount(
                    resolv.as_ptr(),
                    c"/etc/resolv.conf".as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                );
            }
            Ok(())
        })
    }

    /// Listens on the host's 127.0.0.1 at the SSH port and relays each
    /// connection to the same port on the namespace's 127.0.0.1, where
    /// slirp's `hostfwd` listens.
    ///
    /// In a VPC: relays to the guest's private address, port 22.
    pub fn start_ssh_relay(&self) -> std::io::Result<()> {
        let Some(port) = self.spec.ssh_port else {
            return Ok(());
        };
        if let Some(v) = &self.vpc {
            return v.start_ssh_relay(port);
        }
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))?;
        let ns = self.ns.try_clone()?;
        std::thread::Builder::new()
            .name("ssh-relay".into())
            .spawn(move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { continue };
                    let Ok(ns) = ns.try_clone() else { continue };
                    std::thread::spawn(move || {
                        match in_namespace(&ns, || TcpStream::connect((Ipv4Addr::LOCALHOST, port)))
                        {
                            Ok(guest) => splice(client, guest),
                            Err(e) => tracing::debug!("ssh relay: guest side: {e}"),
                        }
                    });
                }
            })?;
        Ok(())
    }
}

/// Copies both ways until each side has closed.
fn splice(a: TcpStream, b: TcpStream) {
    let (Ok(mut a2), Ok(mut b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let t = std::thread::spawn(move || {
        let _ = std::io::copy(&mut b2, &mut a2);
        let _ = a2.shutdown(std::net::Shutdown::Write);
    });
    let (mut a, mut b) = (a, b);
    let _ = std::io::copy(&mut a, &mut b);
    let _ = b.shutdown(std::net::Shutdown::Write);
    let _ = t.join();
}

impl Drop for GuestNamespace {
    fn drop(&mut self) {
        if let Some(mut leg) = self.leg.take() {
            let _ = leg.kill();
            let _ = leg.wait();
        }
        let _ = std::fs::remove_file(&self.spec.resolv_conf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_addresses_from_ip_json() {
        let json = br#"[{"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1"}]},
            {"ifname":"eth0","addr_info":[{"family":"inet","local":"192.0.2.2","prefixlen":24}]},
            {"ifname":"br0","addr_info":[]}]"#;
        assert_eq!(parse_addresses(json), [Ipv4Addr::new(192, 0, 2, 2)]);
        assert!(parse_addresses(b"not json").is_empty());
    }

    #[test]
    fn sealing_blocks_link_local_and_host_addresses() {
        assert_eq!(
            seal_commands(&[Ipv4Addr::new(192, 0, 2, 2)]),
            "link set lo up\nroute add prohibit 169.254.0.0/16\nroute add prohibit 192.0.2.2/32\n"
        );
    }

    #[test]
    fn status_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("network.json");
        assert_eq!(NetworkStatus::read(&p), None);
        let s = NetworkStatus::new("none", "why");
        s.write(&p).unwrap();
        assert_eq!(NetworkStatus::read(&p), Some(s));
    }
}
