//! One guest's place on its VPC's bridge ([`VpcPort`]): its tap device,
//! nft chains, DHCP entry, IMDS and public-address listeners.

use super::*;

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

/// State a port's threads share.
pub(super) struct PortState {
    ns: File,
    pub(super) plan: PortPlan,
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
    pub(super) fn apply(self: &Arc<Self>, text: &[u8]) -> std::io::Result<()> {
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
