//! Helpers for tests that run the real `amirun` binary: each test gets its
//! own state directory, and reads what a user sees.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// One isolated amirun installation.
pub struct Env {
    pub dir: tempfile::TempDir,
}

/// What a command printed and how it exited.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("amirun-test")
            .tempdir()
            .unwrap();
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        std::fs::create_dir_all(dir.path().join("runtime")).unwrap();
        Env { dir }
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The amirun command with this environment.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_amirun"));
        c.env("AMIRUN_HOME", self.home())
            .env("AMIRUN_RUNTIME_DIR", self.dir.path().join("runtime"))
            .env_remove("AMIRUN_REGION")
            .env_remove("AMIRUN_ACCOUNT")
            .env_remove("AMIRUN_OUTPUT")
            .stdin(Stdio::null());
        // Guests get no outbound leg unless a test asks for one, from inside
        // a network namespace of its own (tests/guest_isolation.rs): no
        // guest of the suite can send a packet off this machine.
        if std::env::var_os("AMIRUN_GUEST_OUTBOUND").is_none() {
            c.env("AMIRUN_GUEST_OUTBOUND", "none");
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.cmd().args(args).output().expect("run amirun").into()
    }

    /// Run and require success; returns parsed JSON stdout (Null when empty).
    pub fn ok(&self, args: &[&str]) -> Value {
        let r = self.run(args);
        assert_eq!(r.code, 0, "amirun {args:?} failed:\n{}", r.stderr);
        if r.stdout.trim().is_empty() {
            Value::Null
        } else {
            r.json()
        }
    }

    /// Run and require failure with `code` in stderr.
    pub fn fails(&self, args: &[&str], code: &str) -> Run {
        let r = self.run(args);
        assert_ne!(
            r.code, 0,
            "amirun {args:?} unexpectedly succeeded:\n{}",
            r.stdout
        );
        assert!(
            r.stderr.contains(code),
            "amirun {args:?}: expected {code} in stderr, got:\n{}",
            r.stderr
        );
        r
    }
}

/// Make a raw disk image of `mib` MiB with a recognisable pattern.
pub fn make_raw(path: &Path, mib: usize) {
    let mut f = std::fs::File::create(path).unwrap();
    let mut block = vec![0u8; 1 << 20];
    for i in 0..mib {
        block[..16].copy_from_slice(format!("amirun-blk-{i:05}").as_bytes());
        f.write_all(&block).unwrap();
    }
}

/// Convert with qemu-img (test fixture only).
pub fn qemu_img_convert(src: &Path, fmt: &str, dst: &Path) {
    let st = Command::new("qemu-img")
        .args(["convert", "-O", fmt])
        .arg(src)
        .arg(dst)
        .status()
        .unwrap();
    assert!(st.success());
}

/// `qemu-img info` format of a file.
pub fn image_format(path: &Path) -> String {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(path)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["format"].as_str().unwrap().to_string()
}

/// A tiny HTTP server on 127.0.0.1 serving files from a directory,
/// counting GETs per path. Serves until the test process exits.
pub struct FileServer {
    pub port: u16,
    gets: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    pub connections: Arc<AtomicUsize>,
}

impl FileServer {
    pub fn start(root: PathBuf) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let gets: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>> =
            Default::default();
        let connections = Arc::new(AtomicUsize::new(0));
        let (g, c) = (gets.clone(), connections.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let root = root.clone();
                let g = g.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut line = String::new();
                    if reader.read_line(&mut line).is_err() {
                        return;
                    }
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                            break;
                        }
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                    *g.lock().unwrap().entry(path.clone()).or_default() += 1;
                    let file = root.join(path.trim_start_matches('/'));
                    match std::fs::File::open(&file) {
                        Ok(mut f) => {
                            let len = f.metadata().unwrap().len();
                            let _ = write!(
                                stream,
                                "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
                            );
                            let mut buf = vec![0u8; 1 << 16];
                            loop {
                                let n = f.read(&mut buf).unwrap_or(0);
                                if n == 0 || stream.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                        Err(_) => {
                            let _ = write!(
                                stream,
                                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            );
                        }
                    }
                });
            }
        });
        FileServer {
            port,
            gets,
            connections,
        }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    pub fn gets(&self, name: &str) -> usize {
        *self
            .gets
            .lock()
            .unwrap()
            .get(&format!("/{name}"))
            .unwrap_or(&0)
    }
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Files in a directory (empty when it does not exist).
pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => Vec::new(),
    }
}

/// The catalog file `scripts/build-images.sh` writes for the user running the tests.
pub fn built_catalog() -> PathBuf {
    if let Some(p) = std::env::var_os("AMIRUN_TEST_CATALOG") {
        return PathBuf::from(p);
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".local/share")
        });
    data.join("amirun/catalog.d/local-images.json")
}

impl Env {
    /// An environment whose catalog includes the locally built images.
    pub fn with_images() -> Env {
        let env = Env::new();
        let src = built_catalog();
        assert!(
            src.exists(),
            "{} is missing: run scripts/build-images.sh tiny all first",
            src.display()
        );
        let dir = env.home().join("catalog.d");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(&src, dir.join("local-images.json")).unwrap();
        env
    }

    /// The id of the AMI with this exact name.
    pub fn ami(&self, name: &str) -> String {
        let v = self.ok(&[
            "describe-images",
            "--filters",
            &format!("Name=name,Values={name}"),
            "--query",
            "Images[0].ImageId",
        ]);
        v.as_str()
            .unwrap_or_else(|| panic!("no AMI named {name}: run scripts/build-images.sh tiny all"))
            .to_string()
    }

    /// Launch and return the instance ids.
    pub fn run_instances(&self, args: &[&str]) -> Vec<String> {
        let mut all = vec!["run-instances"];
        all.extend_from_slice(args);
        let v = self.ok(&all);
        v["Instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["InstanceId"].as_str().unwrap().to_string())
            .collect()
    }

    /// One instance as describe-instances shows it.
    pub fn instance(&self, id: &str) -> Value {
        let v = self.ok(&["describe-instances", "--instance-ids", id]);
        v["Reservations"][0]["Instances"][0].clone()
    }

    pub fn state(&self, id: &str) -> String {
        self.instance(id)["State"]["Name"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The serial console of an instance (raw log file).
    pub fn console(&self, id: &str) -> String {
        std::fs::read_to_string(self.home().join("instances").join(id).join("serial.log"))
            .unwrap_or_default()
    }

    /// Poll the console until `needle` appears; panics with the console after `secs`.
    pub fn wait_console(&self, id: &str, needle: &str, secs: u64) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let c = self.console(id);
            if c.contains(needle) {
                return c;
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "{id}: '{needle}' not on the console within {secs} s; console:\n{c}\nstate: {}",
                    self.state(id)
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// `amirun wait WAITER --instance-ids ID`.
    pub fn wait(&self, waiter: &str, id: &str) {
        self.ok(&["wait", waiter, "--instance-ids", id, "--timeout", "300"]);
    }
}

impl Drop for Env {
    /// Instances must not outlive their test: kill every supervisor (QEMU
    /// dies with it), then take down the VPC networks they leave (dnsmasq,
    /// the gateway leg), as recovery's sweep would at the next open. A
    /// killed supervisor's membership lock is released a moment after it
    /// dies, so the sweep is repeated until nothing is left (10 s at most).
    fn drop(&mut self) {
        for dir in files_in(&self.home().join("instances")) {
            if let Ok(pid) = std::fs::read_to_string(dir.join("supervisor.pid")) {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                }
            }
        }
        let networks = self.dir.path().join("runtime").join("vpc");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while networks.exists() && !files_in(&networks).is_empty() {
            amirun::network::vpc::sweep(&networks);
            if std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// The instance id (`i-` + 17 hex digits) inside `s`, if any.
pub fn instance_id_in(s: &str) -> Option<String> {
    s.match_indices("i-").find_map(|(start, _)| {
        let id: String = s[start..].chars().take(19).collect();
        (id.len() == 19 && id[2..].chars().all(|c| c.is_ascii_hexdigit())).then_some(id)
    })
}

/// Live supervisor and QEMU processes of this environment (argv names its state directory):
/// (pid, instance id, is QEMU).
pub fn processes(env: &Env) -> Vec<(u32, String, bool)> {
    let home = env.home().display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        if stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            == Some("Z")
        {
            continue;
        }
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args.iter().any(|a| a.contains(&home)) {
            continue;
        }
        let qemu = args[0].contains("qemu-system");
        let supervisor = args.iter().any(|a| a == "__supervise");
        if !(qemu || supervisor) {
            continue;
        }
        if let Some(id) = args.iter().find_map(|a| instance_id_in(a)) {
            out.push((pid, id, qemu));
        }
    }
    out
}
