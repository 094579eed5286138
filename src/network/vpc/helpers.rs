//! The VPC's helper processes: dnsmasq serving DHCP (and DNS) on the
//! bridge for every subnet, and pasta as the internet gateway's outbound
//! leg; each found again by its pid file.

use super::*;

/// Ends the helper whose pid is in `pid_file` if it is still the helper
/// that wrote it (its command line names that file: a reused pid is left
/// alone), and waits until it is gone.
pub(super) fn stop_helper(pid_file: &Path, signal: libc::c_int) {
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

/// The subnet's router address on the bridge, and dnsmasq serving every
/// subnet (restarted when one is new). Called with the lock held.
pub(super) fn ensure_subnet(
    f: &VpcNetworkFiles,
    ns: &File,
    plan: &PortPlan,
) -> std::io::Result<()> {
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
pub(super) fn ensure_leg(f: &VpcNetworkFiles, ns: &File) -> std::io::Result<()> {
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
