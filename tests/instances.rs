//! The launcher, as a user sees it: real tiny guests booted from their own
//! disks under TCG, with EC2's lifecycle rules.

mod util;

use util::*;

const X86: &str = "amirun/tiny-x86_64";
const X86_STORE: &str = "amirun/tiny-x86_64-instance-store";
const ARM: &str = "amirun/tiny-arm64";

#[test]
fn tiny_x86_64_ebs_lifecycle_with_user_data_and_volumes() {
    let env = Env::with_images();
    let ami = env.ami(X86);
    let script = env.path("user-data.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho user-data-ran-$(cat /proc/sys/kernel/hostname)\n",
    )
    .unwrap();
    let ids = env.run_instances(&[
        "--image-id",
        &ami,
        "--instance-type",
        "t3.micro",
        "--user-data",
        &format!("file://{}", script.display()),
        "--block-device-mappings",
        "DeviceName=/dev/sdf,Ebs={VolumeSize=1,DeleteOnTermination=false}",
        "--tag-specifications",
        "ResourceType=instance,Tags=[{Key=Name,Value=lifecycle}]",
    ]);
    let id = &ids[0];
    // The CLI has exited; another process sees the instance running.
    env.wait("instance-running", id);
    let i = env.instance(id);
    assert_eq!(i["State"]["Name"], "running");
    assert_eq!(i["Architecture"], "x86_64");
    assert_eq!(i["InstanceType"], "t3.micro");
    assert_eq!(i["Amirun"]["Accelerator"], "tcg");
    assert_eq!(i["Tags"][0]["Value"], "lifecycle");
    let console = env.wait_console(id, "amirun-tiny: ready", 180);
    assert!(console.contains("amirun-tiny: userspace up"), "{console}");
    assert!(console.contains("amirun-tiny: boot 1"), "{console}");
    assert!(console.contains("user-data-ran-"), "{console}");
    let out = env.ok(&["get-console-output", "--instance-id", id]);
    assert!(out["Output"].as_str().unwrap().contains("accel=tcg"));
    let vols = env.ok(&[
        "describe-volumes",
        "--filters",
        &format!("Name=attachment.instance-id,Values={id}"),
    ]);
    let vols = vols["Volumes"].as_array().unwrap().clone();
    assert_eq!(vols.len(), 2, "{vols:?}");
    let root = vols
        .iter()
        .find(|v| v["Attachments"][0]["Device"] == "/dev/xvda")
        .unwrap()["VolumeId"]
        .as_str()
        .unwrap()
        .to_string();
    let extra = vols
        .iter()
        .find(|v| v["Attachments"][0]["Device"] == "/dev/sdf")
        .unwrap()["VolumeId"]
        .as_str()
        .unwrap()
        .to_string();

    // Stop and start: the EBS root keeps the boot counter.
    env.ok(&["stop-instances", "--instance-ids", id]);
    env.wait("instance-stopped", id);
    assert_eq!(
        env.instance(id)["StateReason"]["Code"],
        "Client.UserInitiatedShutdown"
    );
    env.ok(&["start-instances", "--instance-ids", id]);
    env.wait("instance-running", id);
    env.wait_console(id, "amirun-tiny: boot 2", 180);
    env.wait_console(id, "amirun-tiny: ready", 180);

    // Terminate: the root volume goes, the extra one stays available.
    env.ok(&["terminate-instances", "--instance-ids", id]);
    env.wait("instance-terminated", id);
    env.fails(
        &["describe-volumes", "--volume-ids", &root],
        "InvalidVolume.NotFound",
    );
    let v = env.ok(&["describe-volumes", "--volume-ids", &extra]);
    assert_eq!(v["Volumes"][0]["State"], "available");
    assert!(!env.home().join(format!("volumes/{root}.qcow2")).exists());
    assert!(env.home().join(format!("volumes/{extra}.qcow2")).exists());
}

#[test]
fn tiny_arm64_runs_under_tcg() {
    let env = Env::with_images();
    let ami = env.ami(ARM);
    let id = &env.run_instances(&["--image-id", &ami, "--instance-type", "t4g.micro"])[0];
    env.wait("instance-running", id);
    let console = env.wait_console(id, "amirun-tiny: boot 1", 240);
    assert!(console.contains("amirun-tiny: userspace up"), "{console}");
    let i = env.instance(id);
    assert_eq!(i["Architecture"], "arm64");
    assert_eq!(i["InstanceType"], "t4g.micro");
    assert_eq!(i["Amirun"]["Accelerator"], "tcg");
    env.ok(&["terminate-instances", "--instance-ids", id]);
    env.wait("instance-terminated", id);
}

#[test]
fn instance_store_cannot_stop_survives_reboot_and_leaves_nothing() {
    let env = Env::with_images();
    let ami = env.ami(X86_STORE);
    let id = &env.run_instances(&["--image-id", &ami])[0];
    env.wait("instance-running", id);
    env.wait_console(id, "amirun-tiny: ready", 180);
    let r = env.fails(
        &["stop-instances", "--instance-ids", id],
        "UnsupportedOperation",
    );
    assert!(r.stderr.contains(id.as_str()));
    let runtime = env.dir.path().join("runtime").join(id);
    assert!(runtime.join("root.qcow2").exists());
    env.ok(&["reboot-instances", "--instance-ids", id]);
    env.wait_console(id, "amirun-tiny: boot 2", 180);
    assert_eq!(env.state(id), "running");
    env.ok(&["terminate-instances", "--instance-ids", id]);
    env.wait("instance-terminated", id);
    assert!(
        !runtime.exists(),
        "instance store must be gone: {runtime:?}"
    );
}

#[test]
fn guest_poweroff_stops_ebs_and_terminates_instance_store() {
    let env = Env::with_images();
    let poweroff = "#!/bin/sh\necho bye\npoweroff\n";
    let ebs = env.run_instances(&["--image-id", &env.ami(X86), "--user-data", poweroff])[0].clone();
    let store =
        env.run_instances(&["--image-id", &env.ami(X86_STORE), "--user-data", poweroff])[0].clone();
    let term = env.run_instances(&[
        "--image-id",
        &env.ami(X86),
        "--user-data",
        poweroff,
        "--instance-initiated-shutdown-behavior",
        "terminate",
    ])[0]
        .clone();
    env.wait("instance-stopped", &ebs);
    env.wait("instance-terminated", &store);
    env.wait("instance-terminated", &term);
    assert_eq!(
        env.instance(&ebs)["StateReason"]["Code"],
        "Client.InstanceInitiatedShutdown"
    );
    assert!(env.console(&ebs).contains("bye"));
}

fn pid_of(env: &Env, id: &str, file: &str) -> i32 {
    match file {
        "supervisor" => {
            std::fs::read_to_string(env.home().join("instances").join(id).join("supervisor.pid"))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        }
        _ => {
            let events =
                std::fs::read_to_string(env.home().join("instances").join(id).join("events.jsonl"))
                    .unwrap();
            events
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .rfind(|e| e["event"] == "qemu-started")
                .unwrap()["pid"]
                .as_i64()
                .unwrap() as i32
        }
    }
}

#[test]
fn killing_qemu_or_the_supervisor_never_leaves_running() {
    let env = Env::with_images();
    let ami = env.ami(X86);
    let ids = env.run_instances(&[
        "--image-id",
        &ami,
        "--count",
        "2",
        "--instance-type",
        "t3.nano",
    ]);
    for id in &ids {
        env.wait("instance-running", id);
    }
    let qemu = pid_of(&env, &ids[0], "qemu");
    std::process::Command::new("kill")
        .args(["-9", &qemu.to_string()])
        .status()
        .unwrap();
    let sup = pid_of(&env, &ids[1], "supervisor");
    std::process::Command::new("kill")
        .args(["-9", &sup.to_string()])
        .status()
        .unwrap();
    for id in &ids {
        env.wait("instance-stopped", id);
        let i = env.instance(id);
        assert_eq!(i["StateReason"]["Code"], "Server.InternalError", "{i}");
    }
    // They can be started again.
    env.ok(&["start-instances", "--instance-ids", &ids[0]]);
    env.wait("instance-running", &ids[0]);
    env.wait_console(&ids[0], "amirun-tiny: userspace up", 180);
}

#[test]
fn eight_tiny_instances_run_at_once() {
    let env = Env::with_images();
    let ami = env.ami(X86);
    let ids = env.run_instances(&[
        "--image-id",
        &ami,
        "--count",
        "8",
        "--instance-type",
        "t3.nano",
    ]);
    assert_eq!(ids.len(), 8);
    for id in &ids {
        env.wait_console(id, "amirun-tiny: userspace up", 420);
    }
    let running = env.ok(&[
        "describe-instances",
        "--filters",
        "Name=instance-state-name,Values=running",
        "--query",
        "length(Reservations[].Instances[])",
    ]);
    assert_eq!(running, 8);
    let mut args = vec!["terminate-instances", "--instance-ids"];
    args.extend(ids.iter().map(String::as_str));
    env.ok(&args);
    for id in &ids {
        env.wait("instance-terminated", id);
    }
}

#[test]
fn bad_launches_are_refused_and_leave_nothing() {
    let env = Env::with_images();
    let ami = env.ami(X86);
    env.fails(
        &["run-instances", "--image-id", "ami-0123456789abcdef0"],
        "InvalidAMIID.NotFound",
    );
    env.fails(
        &["run-instances", "--image-id", "ami-bad"],
        "InvalidAMIID.Malformed",
    );
    env.fails(
        &[
            "run-instances",
            "--image-id",
            &ami,
            "--instance-type",
            "t9.enormous",
        ],
        "InvalidParameterValue",
    );
    env.fails(
        &[
            "run-instances",
            "--image-id",
            &ami,
            "--instance-type",
            "t4g.micro",
        ],
        "InvalidParameterValue",
    );
    env.fails(
        &["run-instances", "--image-id", &ami, "--key-name", "nope"],
        "InvalidKeyPair.NotFound",
    );
    let r = env.fails(
        &["run-instances", "--image-id", &ami, "--accel", "kvm"],
        "UnsupportedOperation",
    );
    assert!(r.stderr.contains("tcg"), "{}", r.stderr);
    // A private AMI of another account cannot be launched.
    let raw = env.path("p.raw");
    make_raw(&raw, 2);
    let other = env.ok(&[
        "--account",
        "999999999999",
        "import-image",
        "--disk-containers",
        &format!("Url=file://{}", raw.display()),
    ]);
    env.fails(
        &[
            "run-instances",
            "--image-id",
            other["ImageId"].as_str().unwrap(),
        ],
        "InvalidAMIID.NotFound",
    );
    // No QEMU on PATH: the error names the Debian package.
    let r: Run = env
        .cmd()
        .env("PATH", "/nonexistent")
        .args(["run-instances", "--image-id", &ami])
        .output()
        .unwrap()
        .into();
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("qemu-system-x86"), "{}", r.stderr);
    let none = env.ok(&["describe-instances"]);
    assert_eq!(none["Reservations"].as_array().unwrap().len(), 0);
    assert!(files_in(&env.home().join("volumes")).is_empty());
    assert!(files_in(&env.home().join("instances")).is_empty());
    env.fails(
        &["stop-instances", "--instance-ids", "i-0123456789abcdef0"],
        "InvalidInstanceID.NotFound",
    );
}

#[test]
fn boot_test_reports_timings_and_failures() {
    let env = Env::with_images();
    let ami = env.ami(X86);
    let ok = env.ok(&["boot-test", "--image-id", &ami, "--timeout", "240"]);
    assert_eq!(ok["Success"], true, "{ok}");
    let t = &ok["Timings"];
    assert!(t["Userspace"].as_f64().unwrap() > 0.0);
    // A quiet kernel may print nothing before userspace; when it does, it comes first.
    if let Some(k) = t["Kernel"].as_f64() {
        assert!(k <= t["Userspace"].as_f64().unwrap(), "{t}");
    }
    assert!(
        t["ProcessStart"].as_f64().unwrap() < t["Userspace"].as_f64().unwrap(),
        "{t}"
    );
    assert!(!ok["MatchedLine"].as_str().unwrap().is_empty(), "{ok}");
    let marker = env.ok(&[
        "boot-test",
        "--image-id",
        &ami,
        "--expect",
        "amirun-tiny: boot [0-9]+",
        "--timeout",
        "240",
    ]);
    assert!(
        marker["MatchedLine"]
            .as_str()
            .unwrap()
            .contains("amirun-tiny: boot 1"),
        "{marker}"
    );
    assert_eq!(ok["FinalState"], "terminated");
    let r = env.run(&[
        "boot-test",
        "--image-id",
        &ami,
        "--expect",
        "this never appears",
        "--timeout",
        "20",
    ]);
    assert_ne!(r.code, 0);
    let report = r.json();
    assert_eq!(report["Success"], false);
    assert!(report["FailureReason"]
        .as_str()
        .unwrap()
        .contains("Timed out"));
    assert!(!report["ConsoleTail"].as_array().unwrap().is_empty());
    assert_eq!(report["FinalState"], "terminated");
}

#[test]
fn key_pairs() {
    let env = Env::new();
    let k = env.ok(&[
        "create-key-pair",
        "--key-name",
        "dev",
        "--key-type",
        "ed25519",
    ]);
    assert!(k["KeyMaterial"]
        .as_str()
        .unwrap()
        .contains("OPENSSH PRIVATE KEY"));
    let rsa = env.ok(&["create-key-pair", "--key-name", "legacy"]);
    assert!(rsa["KeyMaterial"]
        .as_str()
        .unwrap()
        .contains("BEGIN RSA PRIVATE KEY"));
    env.fails(
        &["create-key-pair", "--key-name", "dev"],
        "InvalidKeyPair.Duplicate",
    );
    let pubkey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGvV8s0cQ1mBvOUdTPsEtYhYqS7C0S2kSMr0Xv0ZpB1P test@example";
    env.ok(&[
        "import-key-pair",
        "--key-name",
        "imported",
        "--public-key-material",
        pubkey,
    ]);
    env.fails(
        &[
            "import-key-pair",
            "--key-name",
            "junk",
            "--public-key-material",
            "not a key",
        ],
        "InvalidKey.Format",
    );
    let d = env.ok(&["describe-key-pairs", "--query", "KeyPairs[].KeyName"]);
    assert_eq!(d, serde_json::json!(["dev", "imported", "legacy"]));
    env.ok(&["delete-key-pair", "--key-name", "dev"]);
    env.fails(
        &["describe-key-pairs", "--key-names", "dev"],
        "InvalidKeyPair.NotFound",
    );
}

#[test]
fn debian_12_runs_user_data_through_cloud_init_and_ssh_logs_in() {
    let env = Env::with_images();
    let ami = env.ami("debian-12-x86_64-local");
    env.ok(&[
        "create-key-pair",
        "--key-name",
        "me",
        "--key-type",
        "ed25519",
    ]);
    let script = "#!/bin/sh\necho \"ran-as-$(id -un)\" > /var/tmp/user-data.txt\necho user-data-console-marker\n";
    let id = &env.run_instances(&[
        "--image-id",
        &ami,
        "--key-name",
        "me",
        "--instance-type",
        "t3.small",
        "--user-data",
        script,
    ])[0];
    env.wait("instance-running", id);
    let console = env.wait_console(id, "user-data-console-marker", 600);
    env.wait_console(id, "Datasource DataSourceNoCloud", 300);
    assert!(console.contains("Cloud-init v."), "{console}");
    let out: Run = env
        .cmd()
        .args(["ssh", id, "--", "cat /var/tmp/user-data.txt; id -un"])
        .output()
        .unwrap()
        .into();
    assert_eq!(out.code, 0, "ssh failed: {}", out.stderr);
    assert!(out.stdout.contains("ran-as-root"), "{}", out.stdout);
    assert!(out.stdout.contains("debian"), "{}", out.stdout);
    env.ok(&["terminate-instances", "--instance-ids", id]);
    env.wait("instance-terminated", id);
}

#[test]
fn direct_kernel_boot_amis_boot_without_firmware() {
    let env = Env::with_images();
    for arch in ["x86_64", "arm64"] {
        let ami = env.ami(&format!("amirun/tiny-{arch}-kernel"));
        // EC2's default type (m1.small) is x86 only: arm64 names its own.
        let itype = if arch == "arm64" {
            "t4g.micro"
        } else {
            "m1.small"
        };
        let report = env.ok(&[
            "boot-test",
            "--image-id",
            &ami,
            "--instance-type",
            itype,
            "--expect",
            "amirun-tiny: ready",
            "--timeout",
            "240",
        ]);
        assert_eq!(report["FinalState"], "terminated", "{report}");
        assert_eq!(report["Success"], true, "{report}");
        let id = report["InstanceId"].as_str().unwrap();
        let launch =
            std::fs::read_to_string(env.home().join("instances").join(id).join("launch.json"))
                .unwrap();
        let launch: serde_json::Value = serde_json::from_str(&launch).unwrap();
        let args: Vec<&str> = launch["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(
            args.contains(&"-kernel") && args.contains(&"-initrd"),
            "{args:?}"
        );
        assert!(
            !args.iter().any(|a| a.contains("pflash")),
            "no firmware flash for a direct kernel boot: {args:?}"
        );
        let console = env.console(id);
        assert!(console.contains("amirun-tiny: boot 1"), "{console}");
        assert!(!console.contains("GRUB"), "{console}");
    }
}
