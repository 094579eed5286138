//! Userspace relays: listeners served from a thread, and byte copies both
//! ways between a connection and one made inside the VPC's namespace (for
//! IMDS, public addresses and `amirun ssh`).

use super::*;

/// A listening socket served by a thread until [`Served::stop`].
pub(super) struct Served {
    pub(super) listener: RawFd,
    pub(super) stopped: Arc<AtomicBool>,
}

impl Served {
    pub(super) fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        // SAFETY: shutdown wakes the accepting thread; the fd stays owned by it.
        unsafe { libc::shutdown(self.listener, libc::SHUT_RDWR) };
    }
}

/// Serves `listener` from a thread, calling `each` on a thread per connection.
pub(super) fn serve_tcp(
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
pub(super) trait Duplex: Read + Write + Send + Sized + 'static {
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
pub(super) fn relay<A: Duplex, B: Duplex>(mut a: A, mut b: B) {
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
pub(super) fn connect_in(
    ns: &File,
    to: SocketAddrV4,
    mark: Option<u32>,
) -> std::io::Result<TcpStream> {
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
