//! The VPC's namespace and its membership: made once under the `lock`
//! file, joined by every supervisor of the VPC, taken down by the last to
//! leave or by [`sweep`] when every member died.

use super::*;

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

pub(super) fn make_dir(dir: &Path) -> std::io::Result<()> {
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

/// One VPC's network, joined: held by each supervisor of the VPC.
pub struct VpcNetwork {
    files: VpcNetworkFiles,
    ns: File,
    member: Option<Flock<File>>,
    /// Why the internet gateway's leg (pasta) did not start, if it did
    /// not: the network works without it, with nowhere to send outbound
    /// traffic or DNS queries (as a guest namespace whose leg failed).
    pub(super) leg_error: Option<String>,
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
    if let Ok(c) = crate::network::cstring(&files.netns) {
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
    let target = crate::network::cstring(&files.netns)?;
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
