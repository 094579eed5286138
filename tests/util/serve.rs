//! `amirun serve` on a loopback port, driven by the real aws CLI from
//! `target/pyenv` (installed by `scripts/test.sh`).

use super::Env;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `amirun serve` on a free loopback port; killed on drop.
pub struct Serve {
    child: Child,
    pub url: String,
    log: PathBuf,
}

/// A tool of the test venv (boto3, aws CLI).
pub fn pyenv(tool: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/pyenv/bin")
        .join(tool);
    assert!(
        p.exists(),
        "{} is missing: run scripts/test.sh (it installs boto3 and awscli into target/pyenv)",
        p.display()
    );
    p
}

impl Serve {
    pub fn start(env: &Env) -> Serve {
        Self::spawn(env, &[], &[])
    }

    /// With extra environment (e.g. `AMIRUN_FAILPOINTS`).
    pub fn start_with(env: &Env, vars: &[(&str, &str)]) -> Serve {
        Self::spawn(env, &[], vars)
    }

    /// With extra `amirun serve` options (e.g. `--strict`, `--import-dir`).
    pub fn start_args(env: &Env, args: &[&str]) -> Serve {
        Self::spawn(env, args, &[])
    }

    fn spawn(env: &Env, args: &[&str], vars: &[(&str, &str)]) -> Serve {
        let n = std::fs::read_dir(env.dir.path()).unwrap().count();
        let log = env.path(&format!("serve-{n}.log"));
        let mut child = env
            .cmd()
            .args(["serve", "--listen", "127.0.0.1:0", "--accel", "tcg"])
            .args(args)
            .envs(vars.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("amirun serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("amirun serve: listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "amirun serve printed {line:?}; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .to_string();
        Serve { child, url, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and wait for a clean exit; the server's log.
    pub fn stop(mut self) -> String {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(
                    st.success(),
                    "amirun serve exited with {st}:\n{}",
                    self.log()
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "amirun serve did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.log()
    }

    /// Run a scenario of `tests/python/ec2_api.py` (boto3) against this
    /// server, with `extra` environment; it must succeed. Its stdout.
    pub fn python(&self, scenario: &str, extra: &[(&str, &str)]) -> String {
        self.python_script("ec2_api.py", scenario, extra)
    }

    /// Run a scenario of `tests/python/SCRIPT` against this server, with
    /// `extra` environment; it must succeed. Its stdout.
    pub fn python_script(&self, script: &str, scenario: &str, extra: &[(&str, &str)]) -> String {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/python")
            .join(script);
        let out = Command::new(pyenv("python"))
            .arg(script)
            .arg(scenario)
            .envs(self.client_env())
            .env("AWS_ENDPOINT_URL_EC2", &self.url)
            .envs(extra.iter().copied())
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            out.status.success(),
            "scenario {scenario} failed:\n{stdout}\n{stderr}\nserver log:\n{}",
            self.log()
        );
        eprintln!("{stdout}{stderr}");
        stdout.into_owned()
    }

    /// One unsigned Query API request (`Action=...&Version=...`); the raw
    /// response, status line and body.
    pub fn call(&self, body: &str) -> String {
        let addr = self.url.trim_start_matches("http://").trim_end_matches('/');
        let mut s = TcpStream::connect(addr).unwrap();
        write!(
            s,
            "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// `aws ec2 ARGS` on a server armed with a failpoint that kills it:
    /// the call fails (no retry) and the server is gone afterwards.
    pub fn aws_kills(mut self, args: &[&str]) {
        let out = Command::new(pyenv("aws"))
            .arg("ec2")
            .args(args)
            .envs(self.client_env())
            .env("AWS_MAX_ATTEMPTS", "1")
            .env("AWS_RETRY_MODE", "standard")
            .output()
            .unwrap();
        assert!(!out.status.success(), "aws ec2 {args:?} succeeded");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the server survived its failpoint:\n{}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Environment of an AWS client that knows nothing but this endpoint
    /// (every service: EC2 and STS alike).
    pub fn client_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.url.clone()),
            ("AWS_CONFIG_FILE", "/dev/null".into()),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("AWS_ACCESS_KEY_ID", "000000000000".into()),
            ("AWS_SECRET_ACCESS_KEY", "secret".into()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
            ("AWS_PAGER", String::new()),
        ]
    }

    /// The aws CLI against this endpoint (`aws --output json ec2`).
    pub fn aws_command(&self) -> Command {
        let mut c = Command::new(pyenv("aws"));
        c.args(["--output", "json", "ec2"]).envs(self.client_env());
        c
    }

    fn aws_cmd(&self, args: &[&str]) -> std::process::Output {
        self.aws_command().args(args).output().unwrap()
    }

    /// `aws ec2 ARGS`, which must succeed; its JSON output (`null` when none).
    pub fn aws(&self, args: &[&str]) -> Value {
        let out = self.aws_cmd(args);
        assert!(
            out.status.success(),
            "aws ec2 {args:?} failed:\n{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        if out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Value::Null;
        }
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `aws ec2 ARGS`, which must fail with EC2 error `code`; its stderr.
    pub fn aws_fails(&self, args: &[&str], code: &str) -> String {
        let out = self.aws_cmd(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "aws ec2 {args:?} succeeded, expected {code}"
        );
        assert!(
            stderr.contains(&format!("({code})")),
            "aws ec2 {args:?}: expected {code}, got:\n{stderr}"
        );
        stderr
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
