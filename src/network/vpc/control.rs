//! Rule changes for a running guest: [`apply_vpc_rules`] talks to the
//! abstract unix socket its supervisor's [`VpcPort`] serves.

use super::*;

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

/// Serves [`apply_vpc_rules`] for this port (root, or this uid, only).
pub(super) fn serve_control(state: &Arc<PortState>) -> std::io::Result<Served> {
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
