//! Real EC2 tools drive `amirun serve` unchanged but for the endpoint: the
//! aws CLI's waiters, boto3's sts client, Ansible's `amazon.aws` collection
//! and Packer's `amazon-ebs` builder. Each is installed by
//! `scripts/test.sh` (aws CLI and boto3 into `target/pyenv`, Ansible too;
//! Debian's `packer`).

mod util;

use base64::Engine;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Instant;
use util::*;

const X86: &str = "amirun/tiny-x86_64";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A tool of the venv `scripts/test.sh` makes.
fn pyenv(tool: &str) -> PathBuf {
    let p = repo().join("target/pyenv/bin").join(tool);
    assert!(
        p.exists(),
        "{} is missing: run scripts/test.sh (it installs the AWS tools into target/pyenv)",
        p.display()
    );
    p
}

/// A running `amirun serve` on a free loopback port.
struct Serve {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Serve {
    fn start(env: &Env) -> Serve {
        Self::start_with(env, &[])
    }

    /// With extra environment for the server (and the workers it starts).
    fn start_with(env: &Env, vars: &[(&str, &str)]) -> Serve {
        let log = env.path("serve.log");
        let mut child = env
            .cmd()
            .envs(vars.iter().copied())
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

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The aws CLI against this endpoint.
    fn aws(&self) -> Command {
        let mut c = Command::new(pyenv("aws"));
        c.args(["--output", "json", "ec2"])
            .envs(client_env(&self.url));
        c
    }

    /// `aws ec2 ARGS`, which must succeed; its JSON (Null when it printed nothing).
    fn aws_ok(&self, args: &[&str]) -> Value {
        let out = self.aws().args(args).output().unwrap();
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

    /// `aws ec2 ARGS`, which must fail with this EC2 error code.
    fn aws_fails(&self, args: &[&str], code: &str) -> String {
        let out = self.aws().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "aws ec2 {args:?} succeeded");
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

/// Environment of an AWS client that knows nothing but the endpoint.
fn client_env(url: &str) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", url),
        ("AWS_CONFIG_FILE", "/dev/null"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_ACCESS_KEY_ID", "000000000000"),
        ("AWS_SECRET_ACCESS_KEY", "secret"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_PAGER", ""),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn statuses(v: &Value) -> Vec<Value> {
    v["InstanceStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// `aws ec2 wait instance-status-ok` returns once the guest has booted, and
/// DescribeInstanceStatus shows the checks as EC2 does along the way.
#[test]
fn aws_cli_instance_status_ok_waiter_waits_for_the_booted_guest() {
    let env = Env::with_images();
    let server = Serve::start(&env);
    let ami = env.ami(X86);
    let run = server.aws_ok(&[
        "run-instances",
        "--image-id",
        &ami,
        "--instance-type",
        "t3.micro",
        "--count",
        "1",
    ]);
    let id = run["Instances"][0]["InstanceId"]
        .as_str()
        .unwrap()
        .to_string();
    // Right after the launch: not yet ok (pending: listed only with
    // --include-all-instances; running: initializing).
    let early = server.aws_ok(&[
        "describe-instance-status",
        "--instance-ids",
        &id,
        "--include-all-instances",
    ]);
    let s = &statuses(&early)[0];
    assert_eq!(s["InstanceId"], id.as_str(), "{early}");
    assert_ne!(s["InstanceStatus"]["Status"], "ok", "{early}");
    assert_eq!(s["AvailabilityZone"], "us-east-1a", "{early}");

    let started = Instant::now();
    let out = server
        .aws()
        .args(["wait", "instance-status-ok", "--instance-ids", &id])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "waiter failed after {:?}: {}\nconsole:\n{}",
        started.elapsed(),
        String::from_utf8_lossy(&out.stderr),
        env.console(&id)
    );
    eprintln!("instance-status-ok after {:?}", started.elapsed());
    // The guest really is up when the waiter says so.
    assert!(env.console(&id).contains("amirun-tiny: ready"));
    let ok = server.aws_ok(&["describe-instance-status", "--instance-ids", &id]);
    let s = &statuses(&ok)[0];
    assert_eq!(s["InstanceState"]["Name"], "running", "{ok}");
    assert_eq!(s["SystemStatus"]["Status"], "ok", "{ok}");
    assert_eq!(s["InstanceStatus"]["Details"][0]["Name"], "reachability");
    assert_eq!(s["InstanceStatus"]["Details"][0]["Status"], "passed");
    let filtered = server.aws_ok(&[
        "describe-instance-status",
        "--filters",
        "Name=instance-status.status,Values=initializing",
    ]);
    assert!(statuses(&filtered).is_empty(), "{filtered}");

    // Bad input gets EC2's errors.
    server.aws_fails(
        &[
            "describe-instance-status",
            "--instance-ids",
            "i-00000000000000000",
        ],
        "InvalidInstanceID.NotFound",
    );
    server.aws_fails(
        &["describe-instance-status", "--instance-ids", "x-1"],
        "InvalidInstanceID.Malformed",
    );
    server.aws_fails(
        &[
            "describe-instance-status",
            "--filters",
            "Name=bogus,Values=1",
        ],
        "InvalidParameterValue",
    );

    // Stopped: not listed by default, not-applicable with --include-all-instances.
    server.aws_ok(&["stop-instances", "--instance-ids", &id]);
    server.aws_ok(&["wait", "instance-stopped", "--instance-ids", &id]);
    let stopped = server.aws_ok(&["describe-instance-status", "--instance-ids", &id]);
    assert!(statuses(&stopped).is_empty(), "{stopped}");
    let all = server.aws_ok(&[
        "describe-instance-status",
        "--instance-ids",
        &id,
        "--include-all-instances",
    ]);
    assert_eq!(
        statuses(&all)[0]["InstanceStatus"]["Status"],
        "not-applicable"
    );
    server.aws_ok(&["terminate-instances", "--instance-ids", &id]);
}

/// DescribeInstanceAttribute / ModifyInstanceAttribute as the aws CLI sends
/// them, with EC2's rules: some attributes change only while stopped, and
/// the next start boots with them; termination protection holds.
#[test]
fn aws_cli_instance_attributes_follow_ec2s_rules() {
    let env = Env::with_images();
    let server = Serve::start(&env);
    let ami = env.ami(X86);
    let run = server.aws_ok(&[
        "run-instances",
        "--image-id",
        &ami,
        "--instance-type",
        "t3.micro",
    ]);
    let id = run["Instances"][0]["InstanceId"]
        .as_str()
        .unwrap()
        .to_string();
    let attr = |name: &str| {
        server.aws_ok(&[
            "describe-instance-attribute",
            "--instance-id",
            &id,
            "--attribute",
            name,
        ])
    };
    assert_eq!(attr("instanceType")["InstanceType"]["Value"], "t3.micro");
    assert_eq!(
        attr("disableApiTermination")["DisableApiTermination"]["Value"],
        false
    );
    assert_eq!(
        attr("instanceInitiatedShutdownBehavior")["InstanceInitiatedShutdownBehavior"]["Value"],
        "stop"
    );
    assert_eq!(
        attr("rootDeviceName")["RootDeviceName"]["Value"],
        "/dev/xvda"
    );
    let bdm = attr("blockDeviceMapping");
    assert_eq!(
        bdm["BlockDeviceMappings"][0]["Ebs"]["DeleteOnTermination"], true,
        "{bdm}"
    );
    assert_eq!(attr("userData")["InstanceId"], id.as_str());
    server.aws_fails(
        &[
            "describe-instance-attribute",
            "--instance-id",
            &id,
            "--attribute",
            "colour",
        ],
        "InvalidParameterValue",
    );
    server.aws_fails(
        &[
            "describe-instance-attribute",
            "--instance-id",
            "i-00000000000000000",
            "--attribute",
            "instanceType",
        ],
        "InvalidInstanceID.NotFound",
    );

    // While running: the type and user data are refused, protection is not.
    server.aws_fails(
        &[
            "modify-instance-attribute",
            "--instance-id",
            &id,
            "--instance-type",
            "Value=t3.small",
        ],
        "IncorrectInstanceState",
    );
    server.aws_ok(&[
        "modify-instance-attribute",
        "--instance-id",
        &id,
        "--disable-api-termination",
    ]);
    let refused = server.aws_fails(
        &["terminate-instances", "--instance-ids", &id],
        "OperationNotPermitted",
    );
    assert!(refused.contains("disableApiTermination"), "{refused}");
    server.aws_ok(&[
        "modify-instance-attribute",
        "--instance-id",
        &id,
        "--no-disable-api-termination",
    ]);
    server.aws_ok(&[
        "modify-instance-attribute",
        "--instance-id",
        &id,
        "--block-device-mappings",
        "DeviceName=/dev/xvda,Ebs={DeleteOnTermination=false}",
    ]);
    let bdm = attr("blockDeviceMapping");
    assert_eq!(
        bdm["BlockDeviceMappings"][0]["Ebs"]["DeleteOnTermination"], false,
        "{bdm}"
    );
    let volume = bdm["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
        .as_str()
        .unwrap()
        .to_string();
    server.aws_fails(
        &[
            "modify-instance-attribute",
            "--instance-id",
            &id,
            "--ena-support",
            "--sriov-net-support",
            "Value=simple",
        ],
        "InvalidParameterCombination",
    );

    // Stopped: what Packer and Ansible change, then the next boot uses it.
    server.aws_ok(&["stop-instances", "--instance-ids", &id]);
    server.aws_ok(&["wait", "instance-stopped", "--instance-ids", &id]);
    server.aws_ok(&[
        "modify-instance-attribute",
        "--instance-id",
        &id,
        "--ena-support",
    ]);
    server.aws_ok(&[
        "modify-instance-attribute",
        "--instance-id",
        &id,
        "--sriov-net-support",
        "Value=simple",
    ]);
    server.aws_ok(&[
        "modify-instance-attribute",
        "--instance-id",
        &id,
        "--attribute",
        "instanceType",
        "--value",
        "t3.small",
    ]);
    server.aws_fails(
        &[
            "modify-instance-attribute",
            "--instance-id",
            &id,
            "--instance-type",
            "Value=t4g.micro",
        ],
        "InvalidParameterValue",
    );
    // As EC2's user guide says: the `--value` form takes the script base64-encoded.
    let script = env.path("user-data.base64");
    std::fs::write(
        &script,
        base64::engine::general_purpose::STANDARD
            .encode("#!/bin/sh\necho attribute-user-data-ran\n"),
    )
    .unwrap();
    server.aws_ok(&[
        "modify-instance-attribute",
        "--instance-id",
        &id,
        "--attribute",
        "userData",
        "--value",
        &format!("file://{}", script.display()),
    ]);
    assert_eq!(attr("enaSupport")["EnaSupport"]["Value"], true);
    assert_eq!(
        attr("sriovNetSupport")["SriovNetSupport"]["Value"],
        "simple"
    );
    server.aws_ok(&["start-instances", "--instance-ids", &id]);
    env.wait_console(&id, "attribute-user-data-ran", 300);
    let i = server.aws_ok(&["describe-instances", "--instance-ids", &id]);
    assert_eq!(
        i["Reservations"][0]["Instances"][0]["InstanceType"], "t3.small",
        "{i}"
    );

    // Terminate keeps the root volume now that DeleteOnTermination is false.
    server.aws_ok(&["terminate-instances", "--instance-ids", &id]);
    server.aws_ok(&["wait", "instance-terminated", "--instance-ids", &id]);
    let v = server.aws_ok(&["describe-volumes", "--volume-ids", &volume]);
    assert_eq!(v["Volumes"][0]["State"], "available", "{v}");
}

/// How long the server took for the last request of `action` (its log line).
fn server_ms(log: &str, action: &str) -> u64 {
    log.lines()
        .rev()
        .find(|l| l.contains(&format!("action={action} ")))
        .and_then(|l| l.rsplit(' ').nth(1))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no {action} in the server log:\n{log}"))
}

/// `aws ec2 create-image` on a booting instance returns the id at once with
/// the image pending; the reboot and snapshot happen after, and `aws ec2
/// wait image-available` then sees the image available.
#[test]
fn aws_cli_create_image_returns_at_once_and_the_waiter_sees_it_available() {
    let env = Env::with_images();
    // The booting guest may not listen to the power button yet: a short
    // grace period keeps the reboot short.
    let server = Serve::start_with(&env, &[("AMIRUN_STOP_TIMEOUT", "10")]);
    let ami = env.ami(X86);
    let run = server.aws_ok(&[
        "run-instances",
        "--image-id",
        &ami,
        "--instance-type",
        "t3.micro",
    ]);
    let id = run["Instances"][0]["InstanceId"]
        .as_str()
        .unwrap()
        .to_string();
    let started = Instant::now();
    let made = server.aws_ok(&[
        "create-image",
        "--instance-id",
        &id,
        "--name",
        "booting-bake",
        "--tag-specifications",
        "ResourceType=image,Tags=[{Key=stage,Value=ci}]",
    ]);
    let cli_wall = started.elapsed();
    let image = made["ImageId"].as_str().unwrap().to_string();
    let ms = server_ms(&server.log(), "CreateImage");
    eprintln!("create-image: server {ms} ms, aws CLI wall {cli_wall:?}");
    assert!(ms < 1000, "CreateImage took {ms} ms in the server");
    let pending = server.aws_ok(&["describe-images", "--image-ids", &image]);
    assert_eq!(pending["Images"][0]["State"], "pending", "{pending}");
    assert_eq!(pending["Images"][0]["Tags"][0]["Value"], "ci", "{pending}");
    // The name is taken from the start.
    server.aws_fails(
        &[
            "create-image",
            "--instance-id",
            &id,
            "--name",
            "booting-bake",
        ],
        "InvalidAMIName.Duplicate",
    );
    server.aws_fails(
        &[
            "create-image",
            "--instance-id",
            "i-00000000000000000",
            "--name",
            "x-bake",
        ],
        "InvalidInstanceID.NotFound",
    );

    let started = Instant::now();
    server.aws_ok(&["wait", "image-available", "--image-ids", &image]);
    eprintln!("image-available after {:?}", started.elapsed());
    let done = server.aws_ok(&["describe-images", "--image-ids", &image]);
    let img = &done["Images"][0];
    assert_eq!(img["State"], "available", "{done}");
    let snap = img["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
        .as_str()
        .unwrap();
    let s = server.aws_ok(&["describe-snapshots", "--snapshot-ids", snap]);
    assert_eq!(s["Snapshots"][0]["State"], "completed", "{s}");
    // EC2 rebooted the instance for the image: it runs again.
    server.aws_ok(&["wait", "instance-running", "--instance-ids", &id]);
    server.aws_ok(&["terminate-instances", "--instance-ids", &id]);
    // No job or worker is left behind.
    let jobs = files_in(&env.home().join("jobs"));
    assert!(jobs.is_empty(), "{jobs:?}");
}
