//! Crash safety of images and snapshots: `kill -9` (a failpoint armed with
//! `AMIRUN_FAILPOINTS`) at every step of create-image (stopped, flatten,
//! live), copy-image, copy-snapshot, delete-snapshot and import-image; after
//! each kill a fresh process must see a consistent world (no pending object,
//! every record with its file and every file with its record, `qemu-img
//! check` clean), a retry must succeed, and the real tiny guest must still
//! boot with what it wrote.

mod util;

use serde_json::Value;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};
use util::*;

const X86: &str = "amirun/tiny-x86_64";
const ACCOUNT: &str = "000000000000";

/// Run amirun with `failpoint` armed and require that it was killed there.
fn killed_at(env: &Env, failpoint: &str, args: &[&str]) {
    let out = env
        .cmd()
        .env("AMIRUN_FAILPOINTS", failpoint)
        .args(args)
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{failpoint}: amirun {args:?} was not killed ({:?}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn poll(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_state(env: &Env, id: &str, want: &str) {
    poll(&format!("{id} {want}"), 300, || env.state(id) == want);
}

/// `qemu-img check` of a file: clean (leaks are harmless), chain readable.
///
/// The top file of a running guest's volume is being written by its QEMU,
/// whose metadata caches reach the file only on flush, so a check through
/// `-U` can catch a cluster allocated but not yet counted; such an error
/// goes away by itself, damage does not: a volume in use must check clean
/// within a deadline.
fn assert_qcow2_clean(path: &Path) {
    let check = || {
        std::process::Command::new("qemu-img")
            .args(["check", "-U", "-f", "qcow2"])
            .arg(path)
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = check();
    while !matches!(out.status.code(), Some(0) | Some(3)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        out = check();
    }
    let code = out.status.code();
    assert!(
        matches!(code, Some(0) | Some(3)),
        "qemu-img check {}: {code:?}\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout)
    );
    let out = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--backing-chain"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "backing chain of {} does not open:\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn name_of(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// What a fresh process sees after a crash: nothing pending, records and
/// files match one to one, every file checks clean.
fn assert_consistent(env: &Env, ctx: &str) {
    let images = env.ok(&["describe-images", "--owners", "self"]);
    for i in images["Images"].as_array().unwrap() {
        assert_eq!(i["State"], "available", "{ctx}: {i}");
    }
    let snaps = env.ok(&["describe-snapshots"]);
    let mut layers = std::collections::HashSet::new();
    for s in snaps["Snapshots"].as_array().unwrap() {
        assert_eq!(s["State"], "completed", "{ctx}: {s}");
        let id = s["SnapshotId"].as_str().unwrap();
        if s["OwnerId"] == ACCOUNT && s["Amirun"]["HasLayer"] == true {
            layers.insert(format!("{id}.qcow2"));
            assert!(
                env.home()
                    .join("snapshots")
                    .join(format!("{id}.qcow2"))
                    .exists(),
                "{ctx}: snapshot {id} has no file"
            );
        }
    }
    for f in files_in(&env.home().join("snapshots")) {
        assert!(
            layers.contains(&name_of(&f)),
            "{ctx}: {} has no record",
            f.display()
        );
        assert_qcow2_clean(&f);
    }
    let vols = env.ok(&["describe-volumes"]);
    let vols: std::collections::HashSet<String> = vols["Volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| format!("{}.qcow2", v["VolumeId"].as_str().unwrap()))
        .collect();
    for f in files_in(&env.home().join("volumes")) {
        assert!(
            vols.contains(&name_of(&f)),
            "{ctx}: {} has no record",
            f.display()
        );
        assert_qcow2_clean(&f);
    }
}

fn image_named(env: &Env, name: &str) -> Option<Value> {
    let v = env.ok(&[
        "describe-images",
        "--owners",
        "self",
        "--filters",
        &format!("Name=name,Values={name}"),
    ]);
    v["Images"].as_array().unwrap().first().cloned()
}

fn root_snapshot(image: &Value) -> String {
    image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
        .as_str()
        .unwrap()
        .to_string()
}

fn snapshot(env: &Env, id: &str) -> Value {
    env.ok(&["describe-snapshots", "--snapshot-ids", id])["Snapshots"][0].clone()
}

fn create_image(env: &Env, args: &[&str]) -> String {
    let mut all = vec!["create-image"];
    all.extend_from_slice(args);
    env.ok(&all)["ImageId"].as_str().unwrap().to_string()
}

/// Launch `ami` with user data `body`; the console shows `marker` once it ran.
fn launch(env: &Env, ami: &str, body: &str) -> String {
    let script = format!("#!/bin/sh\n{body}\n");
    env.run_instances(&["--image-id", ami, "--user-data", &script])[0].clone()
}

/// A new instance of `ami` must find the marker file the first guest wrote.
fn assert_marker_in(env: &Env, ami: &str, marker: &str) {
    let i = launch(env, ami, "cat /root/marker; sync; poweroff");
    env.wait_console(&i, marker, 300);
    env.ok(&["terminate-instances", "--instance-ids", &i]);
}

#[test]
fn stopped_instance_create_copy_and_delete_survive_kill_at_every_step() {
    let started = Instant::now();
    let env = Env::with_images();
    let base = env.ami(X86);
    let i = launch(
        &env,
        &base,
        "echo crash-marker-stopped > /root/marker\nsync\npoweroff",
    );
    wait_state(&env, &i, "stopped");
    env.wait_console(&i, "boot 1", 5);

    // create-image of a stopped instance: rolled back before the rename,
    // forward after it.
    for (step, flatten, forward) in [
        ("after-intent", false, false),
        ("after-link", false, false),
        ("after-overlay", false, false),
        ("after-rename", false, true),
        ("after-collapse", true, true),
    ] {
        let name = format!("img-{step}");
        let mut args = vec!["create-image", "--instance-id", &i, "--name", &name];
        if flatten {
            args.push("--flatten");
        }
        killed_at(&env, &format!("create-image:{step}"), &args);
        assert_consistent(&env, step);
        match image_named(&env, &name) {
            Some(img) => {
                assert!(forward, "{step}: the AMI should have been removed: {img}");
                assert_eq!(img["State"], "available");
                let s = snapshot(&env, &root_snapshot(&img));
                if flatten {
                    assert!(s["Amirun"]["ParentSnapshotId"].is_null(), "{s}");
                }
                // Retrying the same name is EC2's duplicate; a new name works.
                env.fails(&args, "InvalidAMIName.Duplicate");
                let again = format!("{name}-again");
                args[4] = &again;
                create_image(&env, &args[1..]);
            }
            None => {
                assert!(!forward, "{step}: the AMI should have been completed");
                create_image(&env, &args[1..]);
            }
        }
        assert_consistent(&env, &format!("{step} retried"));
    }

    // The repro: the AMI a kill after the rename left is whole; deregister
    // it and delete its snapshot, and the volume keeps its data (merged).
    let img = image_named(&env, "img-after-rename").unwrap();
    let snap = root_snapshot(&img);
    env.ok(&[
        "deregister-image",
        "--image-id",
        img["ImageId"].as_str().unwrap(),
    ]);
    env.ok(&["delete-snapshot", "--snapshot-id", &snap]);
    assert_consistent(&env, "repro delete");

    // "No space left" while flattening: the layer is kept, recorded, used.
    let out = env
        .cmd()
        .env("AMIRUN_FAILPOINTS", "create-image:after-collapse=error")
        .args([
            "create-image",
            "--instance-id",
            &i,
            "--name",
            "img-collapse-error",
            "--flatten",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["Amirun"]["Snapshots"][0]["Collapsed"], false, "{v}");
    assert_consistent(&env, "collapse error");

    // copy-image and copy-snapshot: the copy is whole or absent.
    let src = image_named(&env, "img-after-intent").unwrap();
    let src_id = src["ImageId"].as_str().unwrap().to_string();
    for step in ["after-copy", "after-rename"] {
        let name = format!("copy-{step}");
        let args = [
            "copy-image",
            "--source-region",
            "us-east-1",
            "--source-image-id",
            &src_id,
            "--name",
            &name,
        ];
        killed_at(&env, &format!("copy-image:{step}"), &args);
        assert_consistent(&env, &format!("copy-image {step}"));
        assert!(image_named(&env, &name).is_none());
        env.ok(&args);
        assert_consistent(&env, &format!("copy-image {step} retried"));
    }
    let src_snap = root_snapshot(&src);
    for (step, flatten) in [("after-copy", false), ("before-commit", true)] {
        let mut args = vec!["copy-snapshot", "--source-snapshot-id", &src_snap];
        if flatten {
            args.push("--flatten");
        }
        let before = env.ok(&["describe-snapshots"])["Snapshots"]
            .as_array()
            .unwrap()
            .len();
        killed_at(&env, &format!("copy-snapshot:{step}"), &args);
        assert_consistent(&env, &format!("copy-snapshot {step}"));
        let after = env.ok(&["describe-snapshots"])["Snapshots"]
            .as_array()
            .unwrap()
            .len();
        assert_eq!(before, after, "copy-snapshot {step} left a record");
        env.ok(&args);
        assert_consistent(&env, &format!("copy-snapshot {step} retried"));
    }

    // delete-snapshot of a layer another layer and the volume build on:
    // once marked, a killed delete is finished by the next process.
    for step in ["after-intent", "after-rebase", "after-record"] {
        let a1 = create_image(
            &env,
            &["--instance-id", &i, "--name", &format!("d1-{step}")],
        );
        let a2 = create_image(
            &env,
            &["--instance-id", &i, "--name", &format!("d2-{step}")],
        );
        let s1 = root_snapshot(&env.ok(&["describe-images", "--image-ids", &a1])["Images"][0]);
        let s2 = root_snapshot(&env.ok(&["describe-images", "--image-ids", &a2])["Images"][0]);
        assert_eq!(
            snapshot(&env, &s2)["Amirun"]["ParentSnapshotId"],
            s1.as_str()
        );
        env.ok(&["deregister-image", "--image-id", &a1]);
        killed_at(
            &env,
            &format!("delete-snapshot:{step}"),
            &["delete-snapshot", "--snapshot-id", &s1],
        );
        assert_consistent(&env, &format!("delete-snapshot {step}"));
        env.fails(
            &["describe-snapshots", "--snapshot-ids", &s1],
            "InvalidSnapshot.NotFound",
        );
        assert!(snapshot(&env, &s2)["Amirun"]["ParentSnapshotId"] != s1.as_str());
    }

    // A pending snapshot whose writer still runs (its lock held here) is
    // left alone by recovery and cannot be deleted; once the writer is
    // gone, the next process settles it.
    killed_at(
        &env,
        "create-image:after-overlay",
        &["create-image", "--instance-id", &i, "--name", "held"],
    );
    let db = rusqlite::Connection::open(env.home().join("state.db")).unwrap();
    let pending: String = db
        .query_row(
            "SELECT snapshot_id FROM snapshots WHERE state = 'pending'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let paths = amirun::paths::Paths::new(env.home(), env.path("runtime"));
    let held = amirun::service::object_lock::lock(&paths, &pending).unwrap();
    assert_eq!(snapshot(&env, &pending)["State"], "pending");
    env.fails(
        &["delete-snapshot", "--snapshot-id", &pending],
        "IncorrectState",
    );
    drop(held);
    assert_consistent(&env, "held writer gone");
    assert!(image_named(&env, "held").is_none());

    // Whatever the records say, a snapshot a real file backs onto is not
    // deleted: here the volume's recorded base is made stale by hand (as an
    // older amirun left it), and the real chain still refuses the delete.
    let a3 = create_image(&env, &["--instance-id", &i, "--name", "stale-base"]);
    let s3 = root_snapshot(&env.ok(&["describe-images", "--image-ids", &a3])["Images"][0]);
    let parent = snapshot(&env, &s3)["Amirun"]["ParentSnapshotId"]
        .as_str()
        .unwrap()
        .to_string();
    let vol = env.instance(&i)["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
        .as_str()
        .unwrap()
        .to_string();
    let set_base = |base: &str| {
        db.execute(
            "UPDATE volume_bases SET base_snapshot_id = ?1 WHERE volume_id = ?2",
            [base, vol.as_str()],
        )
        .unwrap()
    };
    assert_eq!(set_base(&parent), 1);
    env.ok(&["deregister-image", "--image-id", &a3]);
    let r = env.fails(
        &["delete-snapshot", "--snapshot-id", &s3],
        "InvalidSnapshot.InUse",
    );
    assert!(r.stderr.contains(&vol), "{}", r.stderr);
    set_base(&s3);
    drop(db);
    assert_consistent(&env, "stale base");

    // The instance still boots from its disk (boot counter kept), and the
    // last AMI holds what the guest wrote.
    env.ok(&["start-instances", "--instance-ids", &i]);
    env.wait_console(&i, "boot 2", 300);
    let last = image_named(&env, "d2-after-record").unwrap();
    assert_marker_in(
        &env,
        last["ImageId"].as_str().unwrap(),
        "crash-marker-stopped",
    );
    env.ok(&["terminate-instances", "--instance-ids", &i]);
    eprintln!("stopped: {:.1} s", started.elapsed().as_secs_f64());
}

/// The last `tick N` the guest printed.
fn last_tick(env: &Env, id: &str) -> u64 {
    env.console(id)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("tick "))
        .filter_map(|n| n.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

/// The guest is not paused: it keeps printing ticks.
fn assert_guest_runs(env: &Env, id: &str, ctx: &str) {
    let t = last_tick(env, id);
    poll(&format!("{ctx}: guest {id} ticks past {t}"), 60, || {
        last_tick(env, id) >= t + 2
    });
    assert_eq!(env.state(id), "running", "{ctx}");
}

#[test]
fn live_create_image_never_leaves_the_guest_paused_and_survives_kills() {
    let started = Instant::now();
    let env = Env::with_images();
    let base = env.ami(X86);
    let i = launch(
        &env,
        &base,
        "echo crash-marker-live > /root/marker\nsync\n(n=0; while true; do n=$((n+1)); echo \"tick $n\"; sleep 1; done) &",
    );
    wait_state(&env, &i, "running");
    env.wait_console(&i, "tick 2", 300);

    for (step, forward) in [
        ("create-image:after-intent", false),
        ("create-image:after-link", false),
        ("create-image:after-overlay", false),
        ("live-snapshot:sent", true),
        ("create-image:after-rename", true),
    ] {
        let name = format!("live-{}", step.replace(':', "-"));
        let args = [
            "create-image",
            "--instance-id",
            &i,
            "--name",
            &name,
            "--no-reboot",
        ];
        killed_at(&env, step, &args);
        assert_consistent(&env, step);
        assert_guest_runs(&env, &i, step);
        match image_named(&env, &name) {
            Some(img) => {
                assert!(forward, "{step}: the AMI should have been removed: {img}");
                assert_eq!(img["State"], "available");
            }
            None => {
                assert!(!forward, "{step}: the AMI should have been completed");
                env.ok(&args);
            }
        }
        assert_consistent(&env, &format!("{step} retried"));
        assert_guest_runs(&env, &i, &format!("{step} retried"));
    }

    // Default (reboot) mode killed after the rename: the instance was
    // stopped for the image, the AMI is whole, and the instance starts with
    // its root fs (boot counter); an AMI taken live holds the marker.
    let args = [
        "create-image",
        "--instance-id",
        &i,
        "--name",
        "reboot-after-rename",
    ];
    killed_at(&env, "create-image:after-rename", &args);
    assert_consistent(&env, "reboot after-rename");
    assert_eq!(
        image_named(&env, "reboot-after-rename").unwrap()["State"],
        "available"
    );
    wait_state(&env, &i, "stopped");
    env.ok(&["start-instances", "--instance-ids", &i]);
    env.wait_console(&i, "boot 2", 300);
    let img = image_named(&env, "live-create-image-after-rename").unwrap();
    assert_marker_in(&env, img["ImageId"].as_str().unwrap(), "crash-marker-live");
    env.ok(&["terminate-instances", "--instance-ids", &i]);
    eprintln!("live: {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn imports_verify_what_they_store_and_orphans_are_swept() {
    let env = Env::new();
    let raw = env.path("disk.raw");
    make_raw(&raw, 4);
    let url = format!("file://{}", raw.display());
    let container = format!("Url={url},Format=RAW");
    let import = |env: &Env| -> Value {
        let out = env.ok(&["import-image", "--disk-containers", &container]);
        env.ok(&[
            "describe-images",
            "--image-ids",
            out["ImageId"].as_str().unwrap(),
        ])["Images"][0]
            .clone()
    };

    // A kill after the fetch leaves no AMI; a retry imports.
    killed_at(
        &env,
        "import-image:after-fetch",
        &["import-image", "--disk-containers", &container],
    );
    assert_consistent(&env, "import after-fetch");
    let first = import(&env);
    let blob_of = |img: &Value| {
        let s = snapshot(&env, &root_snapshot(img));
        s["Amirun"]["BaseBlob"].as_str().unwrap().to_string()
    };
    let b1 = blob_of(&first);

    // The same file changed in place at the same URL is fetched again.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
        f.seek(SeekFrom::Start(4096)).unwrap();
        f.write_all(b"changed in place").unwrap();
    }
    let second = import(&env);
    assert_ne!(blob_of(&second), b1, "a changed file gave the old blob");

    // A cache hit is still checked against the declared format.
    env.fails(
        &[
            "import-image",
            "--disk-containers",
            &format!("Url={url},Format=VMDK"),
        ],
        "InvalidParameterValue",
    );

    // A truncated qcow2 never becomes an AMI.
    let good = env.path("good.qcow2");
    qemu_img_convert(&raw, "qcow2", &good);
    let bytes = std::fs::read(&good).unwrap();
    let cut = env.path("cut.qcow2");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let r = env.fails(
        &[
            "import-image",
            "--disk-containers",
            &format!("Url=file://{},Format=QCOW2", cut.display()),
        ],
        "InvalidParameterValue",
    );
    assert!(r.stderr.contains("damaged"), "{}", r.stderr);
    assert_consistent(&env, "truncated");

    // Files no record owns are swept by the next process, and reported.
    let home = env.home();
    let orphan_snap = home.join("snapshots/snap-0123456789abcdef0.qcow2");
    let orphan_tmp = home.join("snapshots/.snap-0123456789abcdef1.qcow2.tmp");
    let orphan_vol = home.join("volumes/vol-0123456789abcdef0.qcow2");
    let orphan_next = home.join("volumes/vol-0123456789abcdef1.next.qcow2");
    let orphan_dir = home.join("instances/i-0123456789abcdef0");
    let orphan_run = env.path("runtime").join("i-0123456789abcdef0");
    for d in [
        home.join("snapshots"),
        home.join("volumes"),
        orphan_dir.clone(),
        orphan_run.clone(),
    ] {
        std::fs::create_dir_all(d).unwrap();
    }
    for f in [&orphan_snap, &orphan_tmp, &orphan_vol, &orphan_next] {
        std::fs::copy(&good, f).unwrap();
    }
    std::fs::write(orphan_dir.join("serial.log"), "x").unwrap();
    std::fs::write(orphan_run.join("root.qcow2"), "x").unwrap();
    let r = env.run(&["--debug", "describe-images", "--owners", "self"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for p in [
        &orphan_snap,
        &orphan_tmp,
        &orphan_vol,
        &orphan_next,
        &orphan_dir,
        &orphan_run,
    ] {
        assert!(!p.exists(), "{} was not swept", p.display());
        assert!(
            r.stderr.contains(&name_of(p)),
            "the sweep did not report {}:\n{}",
            p.display(),
            r.stderr
        );
    }
    assert_consistent(&env, "swept");
}
