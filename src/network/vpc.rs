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
//!
//! Rooms: this file holds the constants, `nft` and [`available`];
//! `namespace` makes, joins and takes down the namespace, `helpers`
//! runs dnsmasq and pasta, `port` plugs a guest in, `control` carries
//! rule changes to it, `relay` copies connections in and out, and
//! `rules` renders nftables scripts.

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

mod control;
mod helpers;
mod namespace;
mod port;
mod relay;

pub use control::apply_vpc_rules;
use control::serve_control;
use helpers::{ensure_leg, ensure_subnet, stop_helper};
use namespace::make_dir;
pub use namespace::{sweep, VpcNetwork};
use port::PortState;
pub use port::VpcPort;
use relay::{connect_in, relay, serve_tcp, Served};

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
