//! The EC2 endpoint (`amirun serve`) driven by real clients: boto3 and the
//! aws CLI from PyPI, installed into `target/pyenv` by `scripts/test.sh`.
//! The Python side (`tests/python/ec2_api.py`) checks every raw response
//! against botocore's model; these tests run it and fail when it fails.

mod util;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use util::*;

#[test]
fn boto3_runs_bakes_copies_shares_and_terminates_across_a_restart() {
    let env = Env::with_images();
    let state = env.path("scenario.json");
    let state = state.to_str().unwrap();
    let server = Serve::start(&env);
    server.python("launch", &[("SCENARIO_STATE", state)]);
    // Restart the server: nothing is lost, the instance keeps running.
    let log = server.stop();
    assert!(
        log.contains("action=RunInstances account=000000000000 region=us-east-1 status=200"),
        "{log}"
    );
    assert!(log.contains("amirun serve: stopped"), "{log}");
    let server = Serve::start(&env);
    let out = server.python("finish", &[("SCENARIO_STATE", state)]);
    assert!(out.contains("checked "), "{out}");
    let log = server.log();
    assert!(log.contains("region=us-west-2"), "{log}");
    assert!(log.contains("account=111111111111"), "{log}");
    assert!(
        log.contains("action=CreateImage account=000000000000 region=us-east-1 status=200"),
        "{log}"
    );
}

#[test]
fn aws_cli_describe_images_prints_what_amirun_prints() {
    let env = Env::with_images();
    let server = Serve::start(&env);
    let out = Command::new(pyenv("aws"))
        .args([
            "ec2",
            "describe-images",
            "--output",
            "json",
            "--endpoint-url",
            &server.url,
        ])
        .envs(server.client_env())
        .env_remove("AWS_ENDPOINT_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let via_api: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let via_cli = env.ok(&["describe-images"]);
    assert!(
        via_cli["Images"].as_array().unwrap().len() >= 3,
        "{via_cli}"
    );
    assert_eq!(via_api, via_cli);
    // And with the endpoint from the environment, as SDKs pick it up.
    let out = Command::new(pyenv("aws"))
        .args(["ec2", "describe-images", "--output", "json", "--image-ids"])
        .arg(via_cli["Images"][0]["ImageId"].as_str().unwrap())
        .envs(server.client_env())
        .env_remove("AWS_ENDPOINT_URL")
        .env("AWS_ENDPOINT_URL_EC2", &server.url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let one: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(one["Images"][0], via_cli["Images"][0]);
}

#[test]
fn errors_reach_boto3_with_ec2_codes_and_bad_requests_never_crash_the_server() {
    let env = Env::with_images();
    let server = Serve::start(&env);
    server.python("errors", &[]);
    let out = server.python("bench", &[("BENCH_REQUESTS", "200")]);
    assert!(out.contains("requests/s"), "{out}");
    let log = server.log();
    assert!(log.contains("action=LaunchRockets"), "{log}");
    assert!(log.contains("status=413"), "{log}");
    // One line per request, and the server is still up.
    assert!(
        server
            .log()
            .lines()
            .filter(|l| l.contains(" POST / "))
            .count()
            > 200
    );
    server.stop();
}

#[test]
fn strict_mode_verifies_signatures_from_the_signed_headers() {
    let env = Env::with_images();
    let server = Serve::start_args(
        &env,
        &[
            "--strict",
            "--access-key",
            "AKIDSTRICT:right-secret:123456789012",
            "--access-key",
            "123456789012:second-secret",
        ],
    );
    server.python("strict", &[]);
    // The aws CLI signs differently from boto3's defaults (its own headers).
    let out = Command::new(pyenv("aws"))
        .args(["ec2", "describe-key-pairs", "--output", "json"])
        .envs(server.client_env())
        .env("AWS_ACCESS_KEY_ID", "AKIDSTRICT")
        .env("AWS_SECRET_ACCESS_KEY", "right-secret")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["KeyPairs"][0]["KeyName"], "strict-key");
    let log = server.log();
    assert!(log.contains("account=123456789012"), "{log}");
    assert!(log.contains("status=401"), "{log}");
}

/// The exfiltration chain of issue 10 (ImportImage file:///root-only-file,
/// then boot it as a second disk) fails at its first step; imports from the
/// operator's import directory and over http still work.
#[test]
fn api_callers_import_only_urls_and_files_under_the_import_dir() {
    let env = Env::with_images();
    let secret = env.path("root-only-file");
    std::fs::write(&secret, "the host's secret\n").unwrap();
    let server = Serve::start(&env);
    server.python(
        "import_refused",
        &[("SECRET_FILE", secret.to_str().unwrap())],
    );
    server.stop();

    let dir = env.path("imports");
    std::fs::create_dir_all(&dir).unwrap();
    make_raw(&dir.join("disk.raw"), 1);
    std::os::unix::fs::symlink(&secret, dir.join("escape")).unwrap();
    let server = Serve::start_args(&env, &["--import-dir", dir.to_str().unwrap()]);
    server.python(
        "imports",
        &[
            ("IMPORT_DIR", dir.to_str().unwrap()),
            ("OUTSIDE_FILE", secret.to_str().unwrap()),
        ],
    );
    server.stop();
    // The CLI acts as the local user: it still imports any file.
    let v = env.ok(&[
        "import-image",
        "--disk-containers",
        &format!("Format=raw,Url=file://{}", dir.join("disk.raw").display()),
    ]);
    assert_eq!(v["Status"], "completed", "{v}");
}

/// A listener others can reach needs --strict, or the operator's explicit
/// --insecure-allow-remote (tried inside a network namespace with only
/// loopback, so nothing is reachable from outside).
#[test]
fn a_non_loopback_listener_needs_strict_or_an_explicit_flag() {
    let env = Env::with_images();
    let out = env
        .cmd()
        .args(["serve", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("0.0.0.0:0") && stderr.contains("--strict"),
        "{stderr}"
    );
    let c = env.cmd();
    let program = c.get_program().to_owned();
    let mut ns = Command::new("unshare");
    ns.arg("-n").arg(program);
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => ns.env(k, v),
            None => ns.env_remove(k),
        };
    }
    let mut child = ns
        .args(["serve", "--listen", "0.0.0.0:0", "--insecure-allow-remote"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        line.starts_with("amirun serve: listening on http://0.0.0.0:"),
        "{line:?}"
    );
}

fn describe_key_pairs_request() -> String {
    let body = "Action=DescribeKeyPairs&Version=2016-11-15";
    format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Send `request` on a new connection and return the status line.
fn status_of(addr: &str, request: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.lines().next().unwrap_or_default().to_string()
}

/// Slow clients are cut off after the configured timeouts (headers: the
/// whole head must arrive in time, however it is dripped; body: likewise,
/// then 408), while other requests keep being answered; at most
/// --max-connections are served at once.
#[test]
fn slow_clients_are_cut_off_while_others_are_answered() {
    use std::io::{Read, Write};
    let env = Env::with_images();
    let server = Serve::start_args(
        &env,
        &[
            "--header-timeout",
            "2",
            "--body-timeout",
            "2",
            "--max-connections",
            "32",
        ],
    );
    let addr = server.url.trim_start_matches("http://").to_string();
    // 20 clients drip a header line every 200 ms and never finish.
    let started = Instant::now();
    let drippers: Vec<_> = (0..20)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(&addr).unwrap();
                s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n").unwrap();
                let t = Instant::now();
                for n in 0.. {
                    std::thread::sleep(Duration::from_millis(200));
                    if s.write_all(format!("X-Drip-{i}-{n}: y\r\n").as_bytes()).is_err() {
                        break;
                    }
                    // A closed connection shows as EOF (or a reset) on read.
                    s.set_nonblocking(true).unwrap();
                    let mut b = [0u8; 1];
                    let closed = matches!(s.read(&mut b), Ok(0))
                        || matches!(s.read(&mut b), Err(e) if e.kind() != std::io::ErrorKind::WouldBlock);
                    s.set_nonblocking(false).unwrap();
                    if closed || t.elapsed() > Duration::from_secs(120) {
                        break;
                    }
                }
                t.elapsed()
            })
        })
        .collect();
    // Meanwhile, ordinary requests are answered.
    let mut answered = 0;
    while started.elapsed() < Duration::from_secs(1) || answered < 3 {
        assert_eq!(
            status_of(&addr, &describe_key_pairs_request()),
            "HTTP/1.1 200 OK"
        );
        answered += 1;
    }
    for d in drippers {
        let held = d.join().unwrap();
        // Cut off after about the 2 s header timeout (generous bounds).
        assert!(
            held >= Duration::from_millis(1500) && held < Duration::from_secs(60),
            "a dripping client was held {held:?}"
        );
    }
    // A body that stops coming: 408 RequestTimeout after the body timeout.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    let t = Instant::now();
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nAction=Desc")
        .unwrap();
    let mut out = String::new();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let _ = s.read_to_string(&mut out);
    let held = t.elapsed();
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(out.contains("<Code>RequestTimeout</Code>"), "{out}");
    assert!(
        held >= Duration::from_millis(1500) && held < Duration::from_secs(60),
        "{held:?}"
    );
    assert_eq!(
        status_of(&addr, &describe_key_pairs_request()),
        "HTTP/1.1 200 OK"
    );
    server.stop();

    // With room for 2 connections, 2 idle ones make a third request wait
    // until the header timeout frees a slot; then it is answered.
    let server = Serve::start_args(&env, &["--header-timeout", "2", "--max-connections", "2"]);
    let addr = server.url.trim_start_matches("http://").to_string();
    let idle: Vec<_> = (0..2)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    // The kernel hands connections over in order: these two take the slots.
    let t = Instant::now();
    assert_eq!(
        status_of(&addr, &describe_key_pairs_request()),
        "HTTP/1.1 200 OK"
    );
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(1000) && waited < Duration::from_secs(60),
        "the third connection waited {waited:?}"
    );
    drop(idle);
    server.stop();
}
