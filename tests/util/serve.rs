//! `amirun serve` on a loopback port, driven by the real aws CLI from
//! `target/pyenv` (installed by `scripts/test.sh`).

use super::Env;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

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
        let log = env.path("serve.log");
        let mut child = env
            .cmd()
            .args(["serve", "--listen", "127.0.0.1:0", "--accel", "tcg"])
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
            .unwrap_or_else(|| panic!("amirun serve printed {line:?}"))
            .to_string();
        Serve { child, url, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn aws_cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new(pyenv("aws"))
            .arg("ec2")
            .args(args)
            .args(["--output", "json"])
            .envs([
                ("AWS_ENDPOINT_URL_EC2", self.url.as_str()),
                ("AWS_CONFIG_FILE", "/dev/null"),
                ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
                ("AWS_EC2_METADATA_DISABLED", "true"),
                ("AWS_ACCESS_KEY_ID", "000000000000"),
                ("AWS_SECRET_ACCESS_KEY", "secret"),
                ("AWS_DEFAULT_REGION", "us-east-1"),
                ("AWS_PAGER", ""),
            ])
            .output()
            .unwrap()
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
