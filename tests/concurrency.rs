//! Many amirun processes at once on the same few real tiny guests:
//! run-instances, describe-instances, create-image, stop/start, reboot and
//! terminate race each other. Watchers check all along that no instance is
//! ever shown stopped or terminated while its QEMU runs, and that no guest
//! ever has a volume deleted under it or writes into a snapshot file; at
//! the end records and files agree and no guest runs untracked.

mod util;

use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use util::*;

const X86: &str = "amirun/tiny-x86_64";

fn amirun(env: &Env, args: &[&str]) -> Run {
    env.cmd()
        .env("AMIRUN_STOP_TIMEOUT", "5")
        .args(args)
        .output()
        .expect("run amirun")
        .into()
}

/// QEMU pids by instance.
fn qemus(env: &Env) -> HashMap<String, HashSet<u32>> {
    let mut m: HashMap<String, HashSet<u32>> = HashMap::new();
    for (pid, id, qemu) in processes(env) {
        if qemu {
            m.entry(id).or_default().insert(pid);
        }
    }
    m
}

/// Snapshot files whose content changed since `seen` last looked at them
/// (size or modification time): a guest must never write into the file an
/// AMI was made from. Updates `seen`.
fn snapshots_changed(env: &Env, seen: &Mutex<HashMap<String, (u64, i64, i64)>>) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut seen = seen.lock().unwrap();
    for e in std::fs::read_dir(env.home().join("snapshots"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("snap-") && name.ends_with(".qcow2")) {
            continue;
        }
        let Ok(m) = e.metadata() else { continue };
        let now = (m.size(), m.mtime(), m.mtime_nsec());
        if let Some(before) = seen.insert(name.clone(), now) {
            if before != now {
                out.push(format!(
                    "snapshot file {name} changed after it was made: {before:?} -> {now:?}"
                ));
            }
        }
    }
    out
}

/// Volume files a live QEMU has open although they were deleted (no name
/// left at all: a live snapshot renames a new overlay over the volume's
/// name, but the old file lives on as the snapshot).
fn deleted_volumes_in_use(env: &Env) -> Vec<String> {
    let mut out = Vec::new();
    for pids in qemus(env).values() {
        for pid in pids {
            let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                if let Ok(target) = std::fs::read_link(fd.path()) {
                    let t = target.display().to_string();
                    let gone = std::fs::metadata(fd.path()).is_ok_and(|m| {
                        use std::os::unix::fs::MetadataExt;
                        m.nlink() == 0
                    });
                    if t.contains("/volumes/") && gone {
                        out.push(format!("QEMU {pid} has deleted {t} open"));
                    }
                }
            }
        }
    }
    out
}

fn instances_of(v: &Value) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for r in v["Reservations"].as_array().into_iter().flatten() {
        for i in r["Instances"].as_array().into_iter().flatten() {
            out.insert(i["InstanceId"].as_str().unwrap().to_string(), i.clone());
        }
    }
    out
}

fn state_of(i: &Value) -> String {
    i["State"]["Name"].as_str().unwrap_or_default().to_string()
}

/// One worker of the mix.
/// Processes running describe-instances in a loop beside the 12 workers:
/// 20 concurrent amirun processes in all.
const DESCRIBERS: usize = 8;

type Job = Box<dyn FnOnce(&Env, &Watch) + Send>;

/// What the watchers saw go wrong.
#[derive(Default)]
struct Watch {
    stop: AtomicBool,
    violations: Mutex<Vec<String>>,
    /// Size and modification time of each snapshot file when first seen.
    snapshot_files: Mutex<HashMap<String, (u64, i64, i64)>>,
    describes: AtomicUsize,
    /// Commands of the mix that succeeded / lost a race with EC2's error.
    succeeded: AtomicUsize,
    refused: AtomicUsize,
}

impl Watch {
    fn report(&self, what: String) {
        eprintln!("VIOLATION: {what}");
        self.violations.lock().unwrap().push(what);
    }
}

/// describe-instances in a loop: an instance shown stopped or terminated
/// must not have had the same QEMU alive before and after the call.
fn describer(env: Arc<Env>, watch: Arc<Watch>) {
    while !watch.stop.load(Ordering::Relaxed) {
        let before = qemus(&env);
        let r = amirun(&env, &["describe-instances"]);
        let after = qemus(&env);
        if r.code != 0 {
            watch.report(format!("describe-instances failed: {}", r.stderr));
            continue;
        }
        watch.describes.fetch_add(1, Ordering::Relaxed);
        for v in snapshots_changed(&env, &watch.snapshot_files) {
            watch.report(v);
        }
        for (id, i) in instances_of(&r.json()) {
            let s = state_of(&i);
            if s != "stopped" && s != "terminated" {
                continue;
            }
            let (Some(b), Some(a)) = (before.get(&id), after.get(&id)) else {
                continue;
            };
            if let Some(pid) = b.intersection(a).next() {
                watch.report(format!(
                    "{id} shown {s} ({}) while its QEMU {pid} ran throughout",
                    i["StateReason"]
                ));
            }
        }
        for v in deleted_volumes_in_use(&env) {
            watch.report(v);
        }
    }
}

/// Run a command that may lose a race: success, or one of EC2's answers
/// for a state conflict. Anything else (an internal error, a crash) is a
/// violation.
fn racing(env: &Env, watch: &Watch, args: &[&str]) -> Option<Value> {
    let r = amirun(env, args);
    if r.code == 0 {
        watch.succeeded.fetch_add(1, Ordering::Relaxed);
        return Some(if r.stdout.trim().is_empty() {
            Value::Null
        } else {
            r.json()
        });
    }
    let allowed = ["IncorrectInstanceState", "InvalidInstanceID.NotFound"];
    if allowed.iter().any(|c| r.stderr.contains(c)) {
        watch.refused.fetch_add(1, Ordering::Relaxed);
    } else {
        watch.report(format!("amirun {args:?} failed: {}", r.stderr));
    }
    None
}

/// Poll (bounded) until `id` is in a settled state; returns it.
fn settled(env: &Env, id: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let s = env.state(id);
        if matches!(s.as_str(), "running" | "stopped" | "terminated") {
            return s;
        }
        assert!(Instant::now() < deadline, "{id} stays {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ids_in(dir: &Path) -> Vec<String> {
    files_in(dir)
        .iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.split('.').next().unwrap().to_string()
        })
        .collect()
}

/// Records and files agree, and only running instances have guests.
fn check_final(env: &Env) -> BTreeMap<String, Value> {
    let instances = instances_of(&env.ok(&["describe-instances"]));
    let volumes: BTreeMap<String, Value> = env.ok(&["describe-volumes"])["Volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["VolumeId"].as_str().unwrap().to_string(), v.clone()))
        .collect();
    for id in volumes.keys() {
        assert!(
            env.home()
                .join("volumes")
                .join(format!("{id}.qcow2"))
                .exists(),
            "volume {id} has no file"
        );
    }
    for id in ids_in(&env.home().join("volumes")) {
        assert!(volumes.contains_key(&id), "volume file {id} has no record");
    }
    for id in ids_in(&env.home().join("instances")) {
        assert!(
            instances.contains_key(&id),
            "instance dir {id} has no record"
        );
    }
    let running = qemus(env);
    for (id, i) in &instances {
        let s = state_of(i);
        match s.as_str() {
            "running" => assert!(running.contains_key(id), "{id} is running without QEMU"),
            _ => assert!(
                !running.contains_key(id),
                "{id} is {s} with QEMU {:?}",
                running[id]
            ),
        }
    }
    for (pid, id, _) in processes(env) {
        let s = instances.get(&id).map(state_of).unwrap_or_default();
        assert_eq!(s, "running", "process {pid} runs {id}, which is '{s}'");
    }
    instances
}

#[test]
fn twenty_processes_on_three_instances_never_lose_a_live_guest() {
    let started = Instant::now();
    let env = Arc::new(Env::with_images());
    let ami = env.ami(X86);
    let watch = Arc::new(Watch::default());
    let describers: Vec<_> = (0..DESCRIBERS)
        .map(|_| {
            let (env, watch) = (Arc::clone(&env), Arc::clone(&watch));
            std::thread::spawn(move || describer(env, watch))
        })
        .collect();

    // The repro: a launch of three while others describe.
    let r = amirun(
        &env,
        &[
            "run-instances",
            "--image-id",
            &ami,
            "--instance-type",
            "t3.nano",
            "--count",
            "3",
            "--block-device-mappings",
            "DeviceName=/dev/sdf,Ebs={VolumeSize=1}",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let ids: Vec<String> = instances_of(&serde_json::json!({"Reservations": [r.json()]}))
        .into_keys()
        .collect();
    assert_eq!(ids.len(), 3);
    for id in &ids {
        env.wait("instance-running", id);
    }
    let launched = started.elapsed();
    let (a, b, c) = (ids[0].clone(), ids[1].clone(), ids[2].clone());

    // The mix.
    let mut workers = Vec::new();
    let mut spawn = |f: Job| {
        let (env, watch) = (Arc::clone(&env), Arc::clone(&watch));
        workers.push(std::thread::spawn(move || f(&env, &watch)));
    };
    for _ in 0..2 {
        let a = a.clone();
        spawn(Box::new(move |env, watch| {
            for _ in 0..3 {
                racing(env, watch, &["stop-instances", "--instance-ids", &a]);
                settled(env, &a);
                racing(env, watch, &["start-instances", "--instance-ids", &a]);
                settled(env, &a);
            }
        }));
    }
    {
        let b = b.clone();
        spawn(Box::new(move |env, watch| {
            for _ in 0..3 {
                racing(env, watch, &["reboot-instances", "--instance-ids", &b]);
                settled(env, &b);
            }
        }));
    }
    {
        let b = b.clone();
        spawn(Box::new(move |env, watch| {
            let r = amirun(
                env,
                &[
                    "create-image",
                    "--instance-id",
                    &b,
                    "--name",
                    "racing-b",
                    "--no-reboot",
                ],
            );
            if r.code == 0 {
                watch.succeeded.fetch_add(1, Ordering::Relaxed);
            } else if r.stderr.contains("InternalError") {
                watch.report(format!("create-image failed: {}", r.stderr));
            } else {
                watch.refused.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    {
        // create-image with its reboot, racing the stop/start workers on A:
        // it and they serialise on A's lock, so the AMI is never made from
        // a file a running guest still writes.
        let a = a.clone();
        spawn(Box::new(move |env, watch| {
            let r = amirun(
                env,
                &["create-image", "--instance-id", &a, "--name", "racing-a"],
            );
            if r.code == 0 {
                watch.succeeded.fetch_add(1, Ordering::Relaxed);
            } else if r.stderr.contains("InternalError") {
                watch.report(format!("create-image of A failed: {}", r.stderr));
            } else {
                watch.refused.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for _ in 0..2 {
        let ami = ami.clone();
        spawn(Box::new(move |env, watch| {
            let r = amirun(
                env,
                &[
                    "run-instances",
                    "--image-id",
                    &ami,
                    "--instance-type",
                    "t3.nano",
                ],
            );
            if r.code != 0 {
                watch.report(format!("run-instances failed: {}", r.stderr));
                return;
            }
            watch.succeeded.fetch_add(1, Ordering::Relaxed);
            let id = r.json()["Instances"][0]["InstanceId"]
                .as_str()
                .unwrap()
                .to_string();
            settled(env, &id);
            racing(env, watch, &["terminate-instances", "--instance-ids", &id]);
        }));
    }
    for _ in 0..2 {
        let c = c.clone();
        spawn(Box::new(move |env, watch| {
            racing(env, watch, &["terminate-instances", "--instance-ids", &c]);
        }));
    }
    for _ in 0..3 {
        spawn(Box::new(move |env, watch| {
            for _ in 0..10 {
                let r = amirun(env, &["describe-volumes"]);
                if r.code != 0 {
                    watch.report(format!("describe-volumes failed: {}", r.stderr));
                }
            }
        }));
    }
    let workers_count = workers.len();
    for w in workers {
        w.join().unwrap();
    }
    let mixed = started.elapsed();

    // Let every transition finish, watched all along.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let all = instances_of(&env.ok(&["describe-instances"]));
        let busy: Vec<String> = all
            .iter()
            .filter(|(_, i)| !matches!(state_of(i).as_str(), "running" | "stopped" | "terminated"))
            .map(|(id, i)| format!("{id} {}", state_of(i)))
            .collect();
        if busy.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "never settled: {busy:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    watch.stop.store(true, Ordering::Relaxed);
    for d in describers {
        d.join().unwrap();
    }
    for v in snapshots_changed(&env, &watch.snapshot_files) {
        watch.report(v);
    }
    let violations = watch.violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{violations:#?}");
    let instances = check_final(&env);
    assert_eq!(state_of(&instances[&c]), "terminated");
    assert_eq!(state_of(&instances[&b]), "running");
    // A ends running or stopped; either way it boots again.
    if state_of(&instances[&a]) == "stopped" {
        env.ok(&["start-instances", "--instance-ids", &a]);
    }
    env.wait("instance-running", &a);
    env.wait_console(&a, "amirun-tiny: userspace up", 300);
    for id in [&a, &b] {
        let r = amirun(&env, &["terminate-instances", "--instance-ids", id]);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    for id in [&a, &b] {
        env.wait("instance-terminated", id);
    }
    check_final(&env);
    assert!(processes(&env).is_empty());
    eprintln!(
        "launch of 3 under {DESCRIBERS} describers: {:.1} s; mix of {} workers + {DESCRIBERS} describers: {:.1} s ({} commands succeeded, {} refused with EC2's error); {} describes; total {:.1} s",
        launched.as_secs_f64(),
        workers_count,
        (mixed - launched).as_secs_f64(),
        watch.succeeded.load(Ordering::Relaxed),
        watch.refused.load(Ordering::Relaxed),
        watch.describes.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
}
