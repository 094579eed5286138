//! run-instances survives being killed at any step, and refuses what EC2
//! refuses: each test kills a real amirun at a named failpoint
//! (`AMIRUN_FAILPOINTS`), then checks from a fresh process that the world is
//! consistent (records have their files, the fresh process's orphan sweep
//! left no file without a record, no guest runs for an instance not shown
//! running) and that the same command then succeeds with real tiny guests.

mod util;

use std::collections::BTreeMap;
use std::path::Path;
use util::*;

const X86: &str = "amirun/tiny-x86_64";

/// Run amirun with failpoints armed (and a short graceful-stop timeout).
fn amirun(env: &Env, args: &[&str], failpoints: &str) -> Run {
    env.cmd()
        .env("AMIRUN_FAILPOINTS", failpoints)
        .env("AMIRUN_STOP_TIMEOUT", "5")
        .args(args)
        .output()
        .expect("run amirun")
        .into()
}

/// Instance states and volume states as a fresh process reports them.
fn world(env: &Env) -> (BTreeMap<String, Value>, BTreeMap<String, Value>) {
    let mut instances = BTreeMap::new();
    for r in env.ok(&["describe-instances"])["Reservations"]
        .as_array()
        .unwrap()
    {
        for i in r["Instances"].as_array().unwrap() {
            instances.insert(i["InstanceId"].as_str().unwrap().to_string(), i.clone());
        }
    }
    let mut volumes = BTreeMap::new();
    for v in env.ok(&["describe-volumes"])["Volumes"].as_array().unwrap() {
        volumes.insert(v["VolumeId"].as_str().unwrap().to_string(), v.clone());
    }
    (instances, volumes)
}

use serde_json::Value;

/// Ids of the entries of a directory (file stem up to the first dot).
fn ids_in(dir: &Path) -> Vec<String> {
    files_in(dir)
        .iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.split('.').next().unwrap().to_string()
        })
        .collect()
}

/// The consistency every crash must leave: see the module doc.
fn check_consistent(env: &Env, context: &str) {
    let (instances, volumes) = world(env);
    let state = |i: &Value| i["State"]["Name"].as_str().unwrap().to_string();
    let procs = processes(env);
    for (id, i) in &instances {
        let s = state(i);
        assert!(
            s != "pending" || procs.iter().any(|(_, p, qemu)| p == id && !qemu),
            "{context}: {id} is pending with no supervisor after its launcher died: {i}"
        );
        if s != "terminated" {
            assert!(
                env.home().join("instances").join(id).is_dir(),
                "{context}: {id} ({s}) has no directory"
            );
        }
    }
    for (id, v) in &volumes {
        assert!(
            env.home()
                .join("volumes")
                .join(format!("{id}.qcow2"))
                .exists(),
            "{context}: volume {id} has no file: {v}"
        );
    }
    for id in ids_in(&env.home().join("volumes")) {
        assert!(
            volumes.contains_key(&id),
            "{context}: volume file {id} has no record after the sweep"
        );
    }
    for dir in [env.home().join("instances"), env.path("runtime")] {
        // The runtime dir also holds amirun's own files (accel-probe.json).
        for id in ids_in(&dir).into_iter().filter(|id| id.starts_with("i-")) {
            assert!(
                instances.contains_key(&id),
                "{context}: {} has no record after the sweep",
                dir.join(&id).display()
            );
        }
    }
    for (pid, id, qemu) in procs {
        let s = instances.get(&id).map(state).unwrap_or_default();
        assert!(
            matches!(
                s.as_str(),
                "pending" | "running" | "stopping" | "shutting-down"
            ),
            "{context}: {} {pid} runs {id}, which is '{s}'",
            if qemu { "QEMU" } else { "supervisor" }
        );
    }
}

fn terminate_all(env: &Env) {
    let (instances, _) = world(env);
    let live: Vec<&String> = instances
        .iter()
        .filter(|(_, i)| i["State"]["Name"] != "terminated")
        .map(|(id, _)| id)
        .collect();
    if live.is_empty() {
        return;
    }
    let mut args = vec!["terminate-instances", "--instance-ids"];
    args.extend(live.iter().map(|s| s.as_str()));
    let r = amirun(env, &args, "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    for id in live {
        env.wait("instance-terminated", id);
    }
    let left = processes(env);
    assert!(left.is_empty(), "guests left after terminating: {left:?}");
}

#[test]
fn counts_sizes_and_user_data_are_checked_as_ec2_does() {
    let env = Env::with_images();
    let ami = env.ami(X86);
    let run = |extra: &[&str], failpoints: &str| {
        let mut args = vec![
            "run-instances",
            "--image-id",
            &ami,
            "--instance-type",
            "t3.nano",
        ];
        args.extend_from_slice(extra);
        amirun(&env, &args, failpoints)
    };
    let refused = |extra: &[&str], code: &str, text: &str| {
        let r = run(extra, "");
        assert_ne!(r.code, 0, "{extra:?} was accepted: {}", r.stdout);
        assert!(
            r.stderr.contains(code) && r.stderr.contains(text),
            "{extra:?}: expected {code} '{text}', got:\n{}",
            r.stderr
        );
    };
    refused(
        &["--max-count", "0"],
        "InvalidParameterValue",
        "Maximum instance count",
    );
    refused(
        &["--count", "0"],
        "InvalidParameterValue",
        "greater than zero",
    );
    refused(
        &["--min-count", "5", "--max-count", "2"],
        "InvalidParameterValue",
        "Minimum instance count (5)",
    );
    refused(&["--count", "65"], "InstanceLimitExceeded", "64");
    let bdm = |s: &str| format!("DeviceName=/dev/sdf,Ebs={{{s}}}");
    refused(
        &["--block-device-mappings", &bdm("VolumeSize=0")],
        "InvalidParameterValue",
        "minimum is 1GiB",
    );
    refused(
        &["--block-device-mappings", &bdm("VolumeSize=17179869184")],
        "InvalidParameterValue",
        "maximum is 16384GiB",
    );
    refused(
        &[
            "--block-device-mappings",
            &bdm("VolumeSize=2,VolumeType=io1"),
        ],
        "InvalidParameterValue",
        "minimum is 4GiB",
    );
    refused(
        &[
            "--block-device-mappings",
            &bdm("VolumeSize=100,VolumeType=st1"),
        ],
        "InvalidParameterValue",
        "minimum is 125GiB",
    );
    refused(
        &[
            "--block-device-mappings",
            &bdm("VolumeSize=1025,VolumeType=standard"),
        ],
        "InvalidParameterValue",
        "maximum is 1024GiB",
    );
    // The root volume cannot be smaller than the AMI's snapshot.
    let image = env.ok(&["describe-images", "--image-ids", &ami]);
    let root = image["Images"][0]["BlockDeviceMappings"][0].clone();
    let device = root["DeviceName"].as_str().unwrap();
    let snap_gib = root["Ebs"]["VolumeSize"].as_u64().unwrap_or(1);
    if snap_gib > 1 {
        refused(
            &[
                "--block-device-mappings",
                &format!("DeviceName={device},Ebs={{VolumeSize={}}}", snap_gib - 1),
            ],
            "InvalidBlockDeviceMapping",
            "is smaller than snapshot",
        );
    }
    let big = env.path("user-data-16385");
    std::fs::write(&big, vec![b'x'; 16385]).unwrap();
    refused(
        &["--user-data", &format!("fileb://{}", big.display())],
        "InvalidParameterValue",
        "User data is limited to 16384 bytes",
    );
    // Exactly 16 KiB passes every check: the launch gets as far as the
    // first step that makes something (armed to fail there).
    let fits = env.path("user-data-16384");
    std::fs::write(&fits, vec![b'x'; 16384]).unwrap();
    let r = run(
        &[
            "--user-data",
            &format!("fileb://{}", fits.display()),
            "--block-device-mappings",
            &bdm("VolumeSize=16384"),
        ],
        "run-instances:locked=error",
    );
    assert!(
        r.stderr
            .contains("Injected failure at failpoint run-instances:locked"),
        "{}",
        r.stderr
    );
    // Nothing was made by any of them.
    assert!(world(&env).0.is_empty());
    assert!(files_in(&env.home().join("volumes")).is_empty());
    assert!(files_in(&env.home().join("instances")).is_empty());
}

#[test]
fn run_instances_killed_at_every_step_leaves_a_consistent_world() {
    let env = Env::with_images();
    let ami = env.ami(X86);
    let args = [
        "run-instances",
        "--image-id",
        &ami,
        "--instance-type",
        "t3.nano",
        "--count",
        "2",
        "--user-data",
        "#!/bin/sh\necho secret-user-data\n",
        "--block-device-mappings",
        "DeviceName=/dev/sdf,Ebs={VolumeSize=1,DeleteOnTermination=false}",
    ];
    for step in [
        "run-instances:locked",
        "run-instances:dirs",
        "run-instances:volume",
        "run-instances:seed",
        "run-instances:prepared",
        "run-instances:committed",
        "run-instances:spawned",
        "run-instances:started",
    ] {
        let started = std::time::Instant::now();
        let before: Vec<String> = world(&env).0.into_keys().collect();
        let r = amirun(&env, &args, step);
        assert_eq!(r.code, -1, "{step}: not killed: {}\n{}", r.stdout, r.stderr);
        check_consistent(&env, step);
        let (instances, volumes) = world(&env);
        let new: Vec<&Value> = instances
            .iter()
            .filter(|(id, _)| !before.contains(id))
            .map(|(_, i)| i)
            .collect();
        match step {
            "run-instances:committed" => {
                // Committed, never started: settled as a failed launch.
                assert_eq!(new.len(), 2, "{step}: {new:?}");
                for i in &new {
                    assert_eq!(i["State"]["Name"], "terminated", "{i}");
                    assert_eq!(i["StateReason"]["Code"], "Server.InternalError", "{i}");
                }
                // The root volumes went with them; the kept ones are available.
                let kept: Vec<&Value> = volumes
                    .values()
                    .filter(|v| v["State"] == "available")
                    .collect();
                assert!(kept.len() >= 2, "{volumes:?}");
            }
            "run-instances:spawned" | "run-instances:started" => {
                assert_eq!(new.len(), 2, "{step}: {new:?}");
                // The second was never spawned; the first either runs (its
                // supervisor took the instance) or was withdrawn.
                let states: Vec<&str> = new
                    .iter()
                    .map(|i| i["State"]["Name"].as_str().unwrap())
                    .collect();
                assert!(states.contains(&"terminated"), "{step}: {states:?}");
                if step == "run-instances:started" {
                    assert!(
                        states.contains(&"running") || states.contains(&"pending"),
                        "{step}: {states:?}"
                    );
                }
            }
            _ => assert!(new.is_empty(), "{step}: records appeared: {new:?}"),
        }
        // A fresh retry of the same command succeeds and its guests boot.
        let r = amirun(&env, &args, "");
        assert_eq!(r.code, 0, "{step}: retry failed:\n{}", r.stderr);
        let ids: Vec<String> = serde_json::from_str::<Value>(&r.stdout).unwrap()["Instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["InstanceId"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids.len(), 2);
        for id in &ids {
            env.wait_console(id, "amirun-tiny: userspace up", 300);
            assert_eq!(env.state(id), "running");
        }
        check_consistent(&env, step);
        terminate_all(&env);
        check_consistent(&env, step);
        eprintln!("{step}: {:.1} s", started.elapsed().as_secs_f64());
    }
}

#[test]
fn a_start_killed_before_its_supervisor_runs_goes_back_to_stopped() {
    let env = Env::with_images();
    let ami = env.ami(X86);
    let ids = env.run_instances(&["--image-id", &ami, "--instance-type", "t3.nano"]);
    let id = &ids[0];
    env.wait("instance-running", id);
    let r = amirun(&env, &["stop-instances", "--instance-ids", id], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    env.wait("instance-stopped", id);
    let step = "start-instances:spawned";
    // 1. The supervisor cannot take the instance (this test holds its pid
    // file, as a reconciler's fence would): the killed start is undone.
    {
        let pid_file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(env.home().join("instances").join(id).join("supervisor.pid"))
            .unwrap();
        let held = nix::fcntl::Flock::lock(pid_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .expect("no supervisor runs a stopped instance");
        let r = amirun(&env, &["start-instances", "--instance-ids", id], step);
        assert_eq!(r.code, -1, "{step}: not killed: {}", r.stderr);
        // The spawned supervisor gives up: no guest starts.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !processes(&env).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?}",
                processes(&env)
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        drop(held);
    }
    check_consistent(&env, step);
    let i = env.instance(id);
    assert_eq!(i["State"]["Name"], "stopped", "{i}");
    assert_eq!(i["StateReason"]["Code"], "Server.InternalError", "{i}");
    assert!(
        i["StateReason"]["Message"]
            .as_str()
            .unwrap()
            .contains("start was interrupted"),
        "{i}"
    );
    let r = amirun(&env, &["start-instances", "--instance-ids", id], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    env.wait("instance-running", id);
    env.wait_console(id, "amirun-tiny: boot 2", 300);
    let r = amirun(&env, &["stop-instances", "--instance-ids", id], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    env.wait("instance-stopped", id);

    // 2. Free race between the spawned supervisor and the next reader:
    // either the supervisor took the instance or the start was undone;
    // never a stopped record over a live guest.
    let r = amirun(&env, &["start-instances", "--instance-ids", id], step);
    assert_eq!(r.code, -1, "{step}: not killed: {}", r.stderr);
    check_consistent(&env, step);
    let s = env.state(id);
    assert!(
        matches!(s.as_str(), "pending" | "running" | "stopped"),
        "{step}: {s}"
    );
    if s == "stopped" {
        let r = amirun(&env, &["start-instances", "--instance-ids", id], "");
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    env.wait("instance-running", id);
    env.wait_console(id, "amirun-tiny: boot 3", 300);
    terminate_all(&env);
    check_consistent(&env, "end");
}
