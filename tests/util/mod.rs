//! Shared helpers for integration tests: a per-test state directory, test
//! disk images, and a tiny HTTP/1.1 server on loopback that counts requests
//! and can misbehave on purpose (cut a body short, stall, hold a response
//! until other requests arrived).

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use amirun::paths::Paths;

/// Upper bound on any wait in a test: a wait that hits it fails the test
/// rather than hanging it.
pub const BOUND: Duration = Duration::from_secs(60);

/// A state directory of its own for one test.
pub struct TestHome {
    pub dir: tempfile::TempDir,
    pub runtime: tempfile::TempDir,
}

impl TestHome {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            runtime: tempfile::tempdir().unwrap(),
        }
    }

    pub fn paths(&self) -> Paths {
        Paths::new(self.dir.path(), self.runtime.path())
    }

    /// Names of the files in a directory (empty when it does not exist).
    pub fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }
}

/// `len` bytes that are neither zero nor repetitive, from `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

/// Write a raw disk image of `len` bytes into `dir`.
pub fn raw_image(dir: &Path, name: &str, len: usize, seed: u64) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pattern(len, seed)).unwrap();
    path
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Run `qemu-img` with `args`, panicking with its stderr on failure.
pub fn qemu_img(args: &[&str]) {
    let out = std::process::Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img runs");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Guest-visible content of an image, via `qemu-img convert -O raw`.
pub fn guest_bytes(image: &Path, format: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.raw");
    qemu_img(&[
        "convert",
        "-f",
        format,
        "-O",
        "raw",
        image.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    std::fs::read(out).unwrap()
}

/// How the server answers one path.
#[derive(Clone)]
pub struct Served {
    pub body: Vec<u8>,
    pub mode: Mode,
    /// Hold the response until `path` was requested `count` times in all.
    pub gate: Option<(String, usize)>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// The whole body.
    Full,
    /// Announce the whole length, send this many bytes, close.
    CloseAfter(usize),
    /// Announce the whole length, send this many bytes, then wait until
    /// [`Server::release`] (or the server stops) and close.
    StallAfter(usize),
}

#[derive(Default)]
struct State {
    routes: HashMap<String, Served>,
    gets: HashMap<String, usize>,
    stalled: usize,
    released: bool,
}

/// A loopback HTTP server for one test.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<(Mutex<State>, Condvar)>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let shared = shared.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let shared = shared.clone();
                    std::thread::spawn(move || handle(conn, &shared));
                }
            })
        };
        Self {
            addr,
            shared,
            stop,
            accept: Some(accept),
        }
    }

    /// Serve `body` at `path` completely.
    pub fn serve(&self, path: &str, body: Vec<u8>) {
        self.route(
            path,
            Served {
                body,
                mode: Mode::Full,
                gate: None,
            },
        );
    }

    pub fn route(&self, path: &str, served: Served) {
        self.shared
            .0
            .lock()
            .unwrap()
            .routes
            .insert(path.to_owned(), served);
    }

    pub fn url(&self, path: &str) -> url::Url {
        url::Url::parse(&format!("http://{}{}", self.addr, path)).unwrap()
    }

    /// How many GET requests `path` received.
    pub fn gets(&self, path: &str) -> usize {
        *self.shared.0.lock().unwrap().gets.get(path).unwrap_or(&0)
    }

    /// Wait (bounded) until a response is stalled as [`Mode::StallAfter`] asks.
    pub fn wait_stalled(&self, count: usize) {
        let (lock, cond) = &*self.shared;
        let guard = lock.lock().unwrap();
        let (_guard, timeout) = cond
            .wait_timeout_while(guard, BOUND, |s| s.stalled < count)
            .unwrap();
        assert!(!timeout.timed_out(), "no stalled response within {BOUND:?}");
    }

    /// Let stalled responses end.
    pub fn release(&self) {
        let (lock, cond) = &*self.shared;
        lock.lock().unwrap().released = true;
        cond.notify_all();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.release();
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn handle(conn: TcpStream, shared: &(Mutex<State>, Condvar)) {
    let _ = conn.set_read_timeout(Some(BOUND));
    let _ = conn.set_write_timeout(Some(BOUND));
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // Headers, up to the blank line (bounded).
    for _ in 0..100 {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => {}
        }
    }
    let mut parts = request_line.split_whitespace();
    let (Some("GET"), Some(path)) = (parts.next(), parts.next()) else {
        return;
    };
    let (lock, cond) = shared;
    let served = {
        let mut state = lock.lock().unwrap();
        *state.gets.entry(path.to_owned()).or_default() += 1;
        cond.notify_all();
        state.routes.get(path).cloned()
    };
    let mut conn = conn;
    let Some(served) = served else {
        let _ = conn
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    if let Some((other, count)) = &served.gate {
        let state = lock.lock().unwrap();
        let deadline = Instant::now() + BOUND;
        let _ = cond
            .wait_timeout_while(state, BOUND, |s| {
                s.gets.get(other).copied().unwrap_or(0) < *count && Instant::now() < deadline
            })
            .unwrap();
    }
    let header = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
        served.body.len()
    );
    if conn.write_all(header.as_bytes()).is_err() {
        return;
    }
    match served.mode {
        Mode::Full => {
            let _ = conn.write_all(&served.body);
        }
        Mode::CloseAfter(n) => {
            let _ = conn.write_all(&served.body[..n]);
        }
        Mode::StallAfter(n) => {
            let _ = conn.write_all(&served.body[..n]);
            let _ = conn.flush();
            let mut state = lock.lock().unwrap();
            state.stalled += 1;
            cond.notify_all();
            let _ = cond
                .wait_timeout_while(state, BOUND, |s| !s.released)
                .unwrap();
        }
    }
    let _ = conn.flush();
    let _ = conn.shutdown(std::net::Shutdown::Both);
}

mod cli;
mod serve;
#[allow(unused_imports)]
pub use cli::*;
#[allow(unused_imports)]
pub use serve::*;
