//! Real EC2 tools drive `amirun serve` unchanged but for the endpoint: the
//! aws CLI's waiters, boto3's sts client, Ansible's `amazon.aws` collection
//! and Packer's `amazon-ebs` builder. Each is installed by
//! `scripts/test.sh` (aws CLI and boto3 into `target/pyenv`, Ansible too;
//! Debian's `packer`).

mod util;

use base64::Engine;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;
use util::*;

const X86: &str = "amirun/tiny-x86_64";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
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
    let run = server.aws(&[
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
    let early = server.aws(&[
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
        .aws_command()
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
    let ok = server.aws(&["describe-instance-status", "--instance-ids", &id]);
    let s = &statuses(&ok)[0];
    assert_eq!(s["InstanceState"]["Name"], "running", "{ok}");
    assert_eq!(s["SystemStatus"]["Status"], "ok", "{ok}");
    assert_eq!(s["InstanceStatus"]["Details"][0]["Name"], "reachability");
    assert_eq!(s["InstanceStatus"]["Details"][0]["Status"], "passed");
    let filtered = server.aws(&[
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
    server.aws(&["stop-instances", "--instance-ids", &id]);
    server.aws(&["wait", "instance-stopped", "--instance-ids", &id]);
    let stopped = server.aws(&["describe-instance-status", "--instance-ids", &id]);
    assert!(statuses(&stopped).is_empty(), "{stopped}");
    let all = server.aws(&[
        "describe-instance-status",
        "--instance-ids",
        &id,
        "--include-all-instances",
    ]);
    assert_eq!(
        statuses(&all)[0]["InstanceStatus"]["Status"],
        "not-applicable"
    );
    server.aws(&["terminate-instances", "--instance-ids", &id]);
}

/// DescribeInstanceAttribute / ModifyInstanceAttribute as the aws CLI sends
/// them, with EC2's rules: some attributes change only while stopped, and
/// the next start boots with them; termination protection holds.
#[test]
fn aws_cli_instance_attributes_follow_ec2s_rules() {
    let env = Env::with_images();
    let server = Serve::start(&env);
    let ami = env.ami(X86);
    let run = server.aws(&[
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
        server.aws(&[
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
    server.aws(&[
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
    server.aws(&[
        "modify-instance-attribute",
        "--instance-id",
        &id,
        "--no-disable-api-termination",
    ]);
    server.aws(&[
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
    server.aws(&["stop-instances", "--instance-ids", &id]);
    server.aws(&["wait", "instance-stopped", "--instance-ids", &id]);
    server.aws(&[
        "modify-instance-attribute",
        "--instance-id",
        &id,
        "--ena-support",
    ]);
    server.aws(&[
        "modify-instance-attribute",
        "--instance-id",
        &id,
        "--sriov-net-support",
        "Value=simple",
    ]);
    server.aws(&[
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
    server.aws(&[
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
    server.aws(&["start-instances", "--instance-ids", &id]);
    env.wait_console(&id, "attribute-user-data-ran", 300);
    let i = server.aws(&["describe-instances", "--instance-ids", &id]);
    assert_eq!(
        i["Reservations"][0]["Instances"][0]["InstanceType"], "t3.small",
        "{i}"
    );

    // Terminate keeps the root volume now that DeleteOnTermination is false.
    server.aws(&["terminate-instances", "--instance-ids", &id]);
    server.aws(&["wait", "instance-terminated", "--instance-ids", &id]);
    let v = server.aws(&["describe-volumes", "--volume-ids", &volume]);
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
    let run = server.aws(&[
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
    let made = server.aws(&[
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
    let pending = server.aws(&["describe-images", "--image-ids", &image]);
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
    server.aws(&["wait", "image-available", "--image-ids", &image]);
    eprintln!("image-available after {:?}", started.elapsed());
    let done = server.aws(&["describe-images", "--image-ids", &image]);
    let img = &done["Images"][0];
    assert_eq!(img["State"], "available", "{done}");
    let snap = img["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
        .as_str()
        .unwrap();
    let s = server.aws(&["describe-snapshots", "--snapshot-ids", snap]);
    assert_eq!(s["Snapshots"][0]["State"], "completed", "{s}");
    snapshot_and_image_attributes(&server, &image, snap);

    // EC2 rebooted the instance for the image: it runs again.
    server.aws(&["wait", "instance-running", "--instance-ids", &id]);
    server.aws(&["terminate-instances", "--instance-ids", &id]);
    // No job or worker is left behind.
    let jobs = files_in(&env.home().join("jobs"));
    assert!(jobs.is_empty(), "{jobs:?}");
}

/// Snapshot and image attributes in the forms the aws CLI, boto3 and
/// Packer send them, on a baked AMI and its snapshot.
fn snapshot_and_image_attributes(server: &Serve, image: &str, snap: &str) {
    let attr = |name: &str| {
        server.aws(&[
            "describe-snapshot-attribute",
            "--snapshot-id",
            snap,
            "--attribute",
            name,
        ])
    };
    let v = attr("createVolumePermission");
    assert_eq!(v["SnapshotId"], snap, "{v}");
    assert_eq!(v["CreateVolumePermissions"], serde_json::json!([]), "{v}");
    assert_eq!(attr("productCodes")["ProductCodes"], serde_json::json!([]));
    server.aws(&[
        "modify-snapshot-attribute",
        "--snapshot-id",
        snap,
        "--attribute",
        "createVolumePermission",
        "--operation-type",
        "add",
        "--user-ids",
        "111111111111",
    ]);
    server.aws(&[
        "modify-snapshot-attribute",
        "--snapshot-id",
        snap,
        "--create-volume-permission",
        "Add=[{Group=all}]",
    ]);
    let v = attr("createVolumePermission");
    assert_eq!(
        v["CreateVolumePermissions"],
        serde_json::json!([{"UserId": "111111111111"}, {"Group": "all"}]),
        "{v}"
    );
    server.aws_fails(
        &[
            "modify-snapshot-attribute",
            "--snapshot-id",
            snap,
            "--create-volume-permission",
            "Add=[{UserId=12}]",
        ],
        "InvalidParameterValue",
    );
    server.aws_fails(
        &[
            "describe-snapshot-attribute",
            "--snapshot-id",
            "snap-00000000000000000",
            "--attribute",
            "productCodes",
        ],
        "InvalidSnapshot.NotFound",
    );
    server.aws(&[
        "reset-snapshot-attribute",
        "--snapshot-id",
        snap,
        "--attribute",
        "createVolumePermission",
    ]);
    assert_eq!(
        attr("createVolumePermission")["CreateVolumePermissions"],
        serde_json::json!([])
    );

    // ModifyImageAttribute: the CLI's OperationType form, the structure
    // form, Packer's structure-plus-UserId form, and the description.
    let launch = || {
        server.aws(&[
            "describe-image-attribute",
            "--image-id",
            image,
            "--attribute",
            "launchPermission",
        ])["LaunchPermissions"]
            .clone()
    };
    server.aws(&[
        "modify-image-attribute",
        "--image-id",
        image,
        "--attribute",
        "launchPermission",
        "--operation-type",
        "add",
        "--user-ids",
        "222222222222",
    ]);
    server.aws(&[
        "modify-image-attribute",
        "--image-id",
        image,
        "--launch-permission",
        "Add=[{UserId=333333333333}],Remove=[{UserId=222222222222}]",
    ]);
    assert_eq!(launch(), serde_json::json!([{"UserId": "333333333333"}]));
    server.aws(&[
        "modify-image-attribute",
        "--image-id",
        image,
        "--launch-permission",
        "Add=[{UserId=444444444444}]",
        "--user-ids",
        "444444444444",
    ]);
    assert_eq!(launch().as_array().unwrap().len(), 2);
    server.aws(&[
        "modify-image-attribute",
        "--image-id",
        image,
        "--description",
        "Value=baked",
    ]);
    let d = server.aws(&[
        "describe-image-attribute",
        "--image-id",
        image,
        "--attribute",
        "description",
    ]);
    assert_eq!(d["Description"]["Value"], "baked", "{d}");
}

/// boto3's sts client on the same endpoint learns the account, in STS's shape.
#[test]
fn boto3_sts_get_caller_identity_on_the_ec2_endpoint() {
    let env = Env::new();
    let server = Serve::start(&env);
    let script = r#"
import boto3, json, os
sts = boto3.client("sts", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
who = sts.get_caller_identity()
print(json.dumps({k: who[k] for k in ("Account", "Arn", "UserId")}))
other = boto3.client("sts", endpoint_url=os.environ["AWS_ENDPOINT_URL"],
                     aws_access_key_id="111111111111", aws_secret_access_key="x")
print(json.dumps({"Account": other.get_caller_identity()["Account"]}))
"#;
    let out = Command::new(pyenv("python"))
        .args(["-c", script])
        .envs(server.client_env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines[0],
        serde_json::json!({"Account": "000000000000", "Arn": "arn:aws:iam::000000000000:root", "UserId": "000000000000"})
    );
    assert_eq!(lines[1]["Account"], "111111111111");
    assert!(
        server.log().contains("action=GetCallerIdentity"),
        "{}",
        server.log()
    );
    // The aws CLI too.
    let out = Command::new(pyenv("aws"))
        .args(["sts", "get-caller-identity", "--output", "json"])
        .envs(server.client_env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["Account"], "000000000000");
}

/// The Ansible playbook `tests/tools/ansible-ec2.yml` (amazon.aws: launch
/// with wait, tag, stop, start, bake, remove everything) runs green twice.
#[test]
fn ansible_amazon_aws_playbook_runs_green_twice() {
    let env = Env::with_images();
    // Stops (stop, the bake's reboot, terminate) wait for the tiny guest's
    // power button at most 10 s: the playbook's waiters poll every 15 s.
    let server = Serve::start_with(&env, &[("AMIRUN_STOP_TIMEOUT", "10")]);
    for run in 1..=2 {
        let started = Instant::now();
        let out = Command::new(pyenv("ansible-playbook"))
            .arg(repo().join("tests/tools/ansible-ec2.yml"))
            .envs(server.client_env())
            .env("AMIRUN_ENDPOINT", &server.url)
            .env("RUN_NAME", "ansible")
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_LOCAL_TEMP", env.path("ansible-tmp"))
            .env("ANSIBLE_HOME", env.path("ansible-home"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "run {run} failed:\n{stdout}\n{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            server.log()
        );
        assert!(stdout.contains("failed=0"), "{stdout}");
        eprintln!("ansible run {run}: {:?}", started.elapsed());
    }
    // Everything was removed: no instance left running, no AMI of ours.
    let images = server.aws(&["describe-images", "--owners", "self"]);
    assert_eq!(images["Images"], serde_json::json!([]), "{images}");
}

/// Set in the re-executed test process that runs inside the namespaces.
const INSIDE: &str = "AMIRUN_TEST_REAL_TOOLS_NETNS";
const PACKER_TEST: &str = "packer_amazon_ebs_bakes_an_ami_that_boots_with_the_provisioned_file";

/// Debian's `packer` builds `tests/tools/packer-ebs.json` (source AMI
/// filter, temporary key pair and security group, shell provisioner over
/// ssh), unchanged but for the endpoint; the AMI boots with the file the
/// provisioner wrote. Runs inside a network namespace this test creates, so
/// whatever address Packer dials stays on this machine.
#[test]
fn packer_amazon_ebs_bakes_an_ami_that_boots_with_the_provisioned_file() {
    if Command::new("packer").arg("version").output().is_err() {
        eprintln!("SKIPPED: `packer` is not installed (scripts/test.sh installs Debian's packer)");
        return;
    }
    if std::env::var_os(INSIDE).is_none() {
        let exe = std::env::current_exe().unwrap();
        let status = Command::new("unshare")
            .args(["--net", "--mount", "--propagation", "private", "sh", "-c"])
            .arg("set -e; ip link set lo up; exec \"$@\"")
            .arg("sh")
            .arg(&exe)
            .args([PACKER_TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(INSIDE, "1")
            .status()
            .expect("run unshare");
        assert!(
            status.success(),
            "the Packer build inside `unshare --net --mount` failed ({status})"
        );
        return;
    }
    let env = Env::with_images();
    // Inside this test's own namespace the guest may join its VPC's network
    // (as on EC2: Packer dials its PublicIpAddress on port 22).
    let server = Serve::start_with(&env, &[("AMIRUN_GUEST_OUTBOUND", "nat")]);
    let started = Instant::now();
    let out = Command::new("packer")
        .args(["build", "-machine-readable"])
        .arg(repo().join("tests/tools/packer-ebs.json"))
        .envs(server.client_env())
        .env("AMIRUN_ENDPOINT", &server.url)
        .env("RUN_NAME", "test")
        .env("PACKER_NO_COLOR", "1")
        .env("PACKER_CACHE_DIR", env.path("packer-cache"))
        .env("HOME", env.path("packer-home"))
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let said: Vec<&str> = stdout
        .lines()
        .filter(|l| {
            l.contains(",ui,say,") || l.contains(",ui,error,") || l.contains(",ui,message,")
        })
        .collect();
    eprintln!("packer build: {:?}\n{}", started.elapsed(), said.join("\n"));
    assert!(
        out.status.success(),
        "packer build failed:\n{}\n{}\nserver log:\n{}",
        said.join("\n"),
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    let ami = stdout
        .lines()
        .find(|l| l.contains(",artifact,0,id,"))
        .and_then(|l| l.rsplit(',').next())
        .and_then(|id| id.split("%!(PACKER_COMMA)").last())
        .and_then(|id| id.rsplit(':').next())
        .unwrap_or_else(|| panic!("no artifact id in:\n{stdout}"))
        .to_string();
    assert!(ami.starts_with("ami-"), "{ami}");
    // The AMI boots with what the provisioner wrote.
    let check = "#!/bin/sh\necho \"marker: $(cat /etc/packer-marker)\" >/dev/console\n";
    let run = server.aws(&["run-instances", "--image-id", &ami, "--user-data", check]);
    let id = run["Instances"][0]["InstanceId"]
        .as_str()
        .unwrap()
        .to_string();
    env.wait_console(&id, "marker: provisioned-by-packer", 600);
    server.aws(&["terminate-instances", "--instance-ids", &id]);
}
