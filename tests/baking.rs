//! Baking, as a user sees it: real tiny guests write files into their
//! persistent root, the instance becomes an AMI, and instances of that AMI
//! boot with the files (never silently the base).

mod util;

use util::*;

const X86: &str = "amirun/tiny-x86_64";

/// Poll until the instance is in `want` (any other final state fails).
fn wait_for(env: &Env, id: &str, want: &str, secs: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let s = env.state(id);
        if s == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline && s != "terminated",
            "{id} is {s}, not {want}; console:\n{}",
            env.console(id)
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// Launch `ami` with a script that runs `body` and powers off; returns the
/// instance once it has stopped.
fn run_script_and_stop(env: &Env, ami: &str, body: &str) -> String {
    let script = format!("#!/bin/sh\n{body}\nsync\npoweroff\n");
    let id = env.run_instances(&["--image-id", ami, "--user-data", &script])[0].clone();
    wait_for(env, &id, "stopped", 300);
    id
}

fn snapshot(env: &Env, id: &str) -> serde_json::Value {
    env.ok(&["describe-snapshots", "--snapshot-ids", id])["Snapshots"][0].clone()
}

fn root_snapshot_of(env: &Env, ami: &str) -> String {
    let v = env.ok(&["describe-images", "--image-ids", ami]);
    v["Images"][0]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn chain_000_001_002_layers_are_small_and_deleting_the_middle_keeps_002_whole() {
    let env = Env::with_images();
    let base = env.ami(X86);

    // 000: one file.
    let i0 = run_script_and_stop(&env, &base, "echo v0 > /root/layer0");
    let out = env.ok(&[
        "create-image",
        "--instance-id",
        &i0,
        "--name",
        "web-000",
        "--description",
        "layer 0",
    ]);
    let ami0 = out["ImageId"].as_str().unwrap().to_string();
    assert_eq!(out["Amirun"]["Mode"], "stopped");
    env.ok(&[
        "wait",
        "image-available",
        "--image-ids",
        &ami0,
        "--timeout",
        "30",
    ]);
    let img0 = &env.ok(&["describe-images", "--image-ids", &ami0])["Images"][0];
    assert_eq!(img0["SourceInstanceId"], i0.as_str());
    assert_eq!(img0["SourceImageId"], base.as_str());
    assert_eq!(img0["State"], "available");

    // 001 and 002, each from an instance of the previous one.
    let i1 = run_script_and_stop(&env, &ami0, "echo v1 > /root/layer1");
    let ami1 = env.ok(&["create-image", "--instance-id", &i1, "--name", "web-001"])["ImageId"]
        .as_str()
        .unwrap()
        .to_string();
    let i2 = run_script_and_stop(&env, &ami1, "echo v2 > /root/layer2");
    let ami2 = env.ok(&["create-image", "--instance-id", &i2, "--name", "web-002"])["ImageId"]
        .as_str()
        .unwrap()
        .to_string();
    for i in [&i0, &i1, &i2] {
        env.ok(&["terminate-instances", "--instance-ids", i]);
    }

    // Each snapshot is a small layer on the previous one.
    let (s0, s1, s2) = (
        root_snapshot_of(&env, &ami0),
        root_snapshot_of(&env, &ami1),
        root_snapshot_of(&env, &ami2),
    );
    let base_snap = root_snapshot_of(&env, &base);
    for (s, parent, depth) in [(&s0, &base_snap, 1), (&s1, &s0, 2), (&s2, &s1, 3)] {
        let v = snapshot(&env, s);
        assert_eq!(v["Amirun"]["ParentSnapshotId"], parent.as_str(), "{v}");
        assert_eq!(v["Amirun"]["ChainDepth"], depth, "{v}");
        let bytes = v["Amirun"]["StorageBytes"].as_u64().unwrap();
        let volume = v["VolumeSize"].as_u64().unwrap() << 30;
        eprintln!("{s}: {bytes} bytes on disk for a {volume}-byte volume");
        assert!(bytes < 16 << 20, "layer {s} takes {bytes} bytes: {v}");
        assert!(bytes * 50 < volume, "{v}");
    }

    // The snapshot of an AMI cannot go; deregistering the AMI frees it, and
    // deleting it merges its data into 002's layer.
    env.fails(
        &["delete-snapshot", "--snapshot-id", &s1],
        "InvalidSnapshot.InUse",
    );
    env.ok(&["deregister-image", "--image-id", &ami1]);
    env.ok(&["delete-snapshot", "--snapshot-id", &s1]);
    env.fails(
        &["describe-snapshots", "--snapshot-ids", &s1],
        "InvalidSnapshot.NotFound",
    );
    assert!(!env.home().join(format!("snapshots/{s1}.qcow2")).exists());
    let v = snapshot(&env, &s2);
    assert_eq!(v["Amirun"]["ParentSnapshotId"], s0.as_str(), "{v}");
    assert_eq!(v["Amirun"]["ChainDepth"], 2, "{v}");

    // 002 has all three changes; 000 only the first. Both boot at once.
    let show = "#!/bin/sh\necho \"layers: $(cat /root/layer0 2>/dev/null || echo no0) $(cat /root/layer1 2>/dev/null || echo no1) $(cat /root/layer2 2>/dev/null || echo no2)\"\n";
    let v2 = env.run_instances(&["--image-id", &ami2, "--user-data", show])[0].clone();
    let v0 = env.run_instances(&["--image-id", &ami0, "--user-data", show])[0].clone();
    let c2 = env.wait_console(&v2, "amirun-tiny: ready", 300);
    let c0 = env.wait_console(&v0, "amirun-tiny: ready", 300);
    assert!(c2.contains("layers: v0 v1 v2"), "{c2}");
    assert!(c0.contains("layers: v0 no1 no2"), "{c0}");
    // Running instances read 000's layer through their volumes: as on EC2
    // the delete succeeds at once; the layer stays until they are gone.
    env.ok(&["deregister-image", "--image-id", &ami0]);
    env.ok(&["delete-snapshot", "--snapshot-id", &s0]);
    env.fails(
        &["describe-snapshots", "--snapshot-ids", &s0],
        "InvalidSnapshot.NotFound",
    );
    env.fails(
        &["delete-snapshot", "--snapshot-id", &s0],
        "InvalidSnapshot.NotFound",
    );
    let layer0 = env.home().join(format!("snapshots/{s0}.qcow2"));
    assert!(layer0.exists(), "the running volumes still need {s0}");
    env.ok(&["terminate-instances", "--instance-ids", &v0, &v2]);
    env.wait("instance-terminated", &v0);
    env.wait("instance-terminated", &v2);
    // The next process merges it into 002 and reclaims it.
    env.ok(&["describe-snapshots", "--snapshot-ids", &s2]);
    assert!(!layer0.exists(), "{s0}'s layer was not reclaimed");

    // A standalone copy of 002 has the whole chain in one file.
    let copy = env.ok(&["copy-snapshot", "--source-snapshot-id", &s2, "--flatten"])["SnapshotId"]
        .as_str()
        .unwrap()
        .to_string();
    let v = snapshot(&env, &copy);
    assert!(v["Amirun"]["ParentSnapshotId"].is_null(), "{v}");
    assert_eq!(v["Amirun"]["ChainDepth"], 1);
    assert!(
        v["Amirun"]["StorageBytes"].as_u64().unwrap() > 16 << 20,
        "{v}"
    );
}

#[test]
fn no_reboot_snapshots_live_keeps_uptime_and_reports_the_pause() {
    let env = Env::with_images();
    let base = env.ami(X86);
    let script = "#!/bin/sh\necho live-data > /root/live\nsync\n(while true; do echo \"tick $(cut -d' ' -f1 /proc/uptime)\"; sleep 1; done) &\n";
    let id = env.run_instances(&["--image-id", &base, "--user-data", script])[0].clone();
    env.wait_console(&id, "amirun-tiny: ready", 300);
    env.wait_console(&id, "tick ", 60);
    let out = env.ok(&[
        "create-image",
        "--instance-id",
        &id,
        "--name",
        "live-000",
        "--no-reboot",
    ]);
    let r = &out["Amirun"];
    assert_eq!(r["Mode"], "live", "{out}");
    let pause = r["PauseMs"].as_f64().unwrap();
    eprintln!(
        "live snapshot: guest paused {pause:.1} ms; guest agent: {}",
        r["GuestAgent"]
    );
    assert!(pause > 0.0 && pause < 5000.0, "{out}");
    assert!(
        r["GuestAgent"].as_str().unwrap().starts_with("none"),
        "{out}"
    );
    let ami = out["ImageId"].as_str().unwrap().to_string();

    // Still the same boot: the guest keeps ticking and never rebooted.
    let before = env.console(&id).matches("tick ").count();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while env.console(&id).matches("tick ").count() < before + 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no ticks after the snapshot:\n{}",
            env.console(&id)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let console = env.console(&id);
    assert!(
        console.contains("amirun-tiny: boot 1") && !console.contains("amirun-tiny: boot 2"),
        "{console}"
    );
    assert_eq!(env.state(&id), "running");

    // A second live snapshot past the chain depth limit is written standalone.
    let out2 = env
        .cmd()
        .env("AMIRUN_MAX_CHAIN_DEPTH", "1")
        .args([
            "create-image",
            "--instance-id",
            &id,
            "--name",
            "live-001",
            "--no-reboot",
        ])
        .output()
        .unwrap();
    let out2: serde_json::Value = serde_json::from_slice(&out2.stdout).unwrap();
    assert_eq!(out2["Amirun"]["Snapshots"][0]["Collapsed"], true, "{out2}");
    assert!(
        out2["Amirun"]["Snapshots"][0]["ParentSnapshotId"].is_null(),
        "{out2}"
    );

    // The snapshot a running volume stands on can be deleted once no AMI
    // uses it (as on EC2); its layer stays until the volume is gone.
    let snap = root_snapshot_of(&env, &ami);
    let ami2 = out2["ImageId"].as_str().unwrap().to_string();
    let snap2 = root_snapshot_of(&env, &ami2);
    env.ok(&["deregister-image", "--image-id", &ami2]);
    env.ok(&["delete-snapshot", "--snapshot-id", &snap2]);
    let layer2 = env.home().join(format!("snapshots/{snap2}.qcow2"));
    assert!(layer2.exists(), "the running volume still needs {snap2}");
    env.ok(&["terminate-instances", "--instance-ids", &id]);
    env.wait("instance-terminated", &id);
    env.ok(&["describe-snapshots", "--snapshot-ids", &snap]);
    assert!(!layer2.exists(), "{snap2}'s layer was not reclaimed");

    // The live image boots with the data written before the snapshot.
    let check = "#!/bin/sh\necho \"found: $(cat /root/live)\"\n";
    let j = env.run_instances(&["--image-id", &ami, "--user-data", check])[0].clone();
    let c = env.wait_console(&j, "amirun-tiny: ready", 300);
    assert!(c.contains("found: live-data"), "{c}");
    env.fails(
        &["delete-snapshot", "--snapshot-id", &snap],
        "InvalidSnapshot.InUse",
    );
    env.ok(&["terminate-instances", "--instance-ids", &j]);
}

#[test]
fn export_to_vmdk_and_import_boots_the_same() {
    let env = Env::with_images();
    let base = env.ami(X86);
    let i = run_script_and_stop(&env, &base, "echo exported-ok > /root/marker");
    let ami = env.ok(&["create-image", "--instance-id", &i, "--name", "to-export"])["ImageId"]
        .as_str()
        .unwrap()
        .to_string();
    env.ok(&["terminate-instances", "--instance-ids", &i]);
    let file = env.path("web.vmdk");
    let out = env.ok(&[
        "export-image",
        "--image-id",
        &ami,
        "--disk-image-format",
        "VMDK",
        "--output-file",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out["Status"], "completed");
    assert_eq!(image_format(&file), "vmdk");
    let imported = env.ok(&[
        "import-image",
        "--disk-containers",
        &format!("Url=file://{},Format=vmdk", file.display()),
    ]);
    let ami2 = imported["ImageId"].as_str().unwrap().to_string();
    // The imported snapshot can also come in alone.
    let snap = env.ok(&[
        "import-snapshot",
        "--disk-container",
        &format!("Url=file://{},Format=VMDK", file.display()),
    ]);
    assert_eq!(snap["SnapshotTaskDetail"]["Status"], "completed");

    let check = "#!/bin/sh\necho \"marker: $(cat /root/marker)\"\n";
    let j = env.run_instances(&["--image-id", &ami2, "--user-data", check])[0].clone();
    let c = env.wait_console(&j, "amirun-tiny: ready", 300);
    assert!(c.contains("marker: exported-ok"), "{c}");
    assert!(
        c.contains("amirun-tiny: boot 2"),
        "the exported disk keeps the boot counter: {c}"
    );
    env.ok(&["terminate-instances", "--instance-ids", &j]);
}

#[test]
fn bake_recipes_chain_and_a_failed_bake_leaves_nothing() {
    let env = Env::with_images();
    let recipes = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("images/recipes");
    let dir = env.path("recipes");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["web-000.json", "web-001.json"] {
        std::fs::copy(recipes.join(f), dir.join(f)).unwrap();
    }
    // Baking 001 bakes 000 first (from_recipe), then 001 on it.
    let out = env.ok(&["bake", dir.join("web-001.json").to_str().unwrap()]);
    let ami1 = out["ImageId"].as_str().unwrap().to_string();
    assert_eq!(out["BakedBases"].as_array().unwrap().len(), 1, "{out}");
    let img = &env.ok(&["describe-images", "--image-ids", &ami1])["Images"][0];
    assert_eq!(img["Name"], "web-server-001");
    assert!(
        img["Tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["Key"] == "layer" && t["Value"] == "001"),
        "{img}"
    );
    assert_eq!(img["SourceImageId"], out["BaseImageId"]);

    let check =
        "#!/bin/sh\necho \"baked: $(cat /etc/web/role) $(cat /root/layer0) $(cat /root/layer1)\"\n";
    let j = env.run_instances(&["--image-id", &ami1, "--user-data", check])[0].clone();
    let c = env.wait_console(&j, "amirun-tiny: ready", 300);
    assert!(c.contains("baked: web-server ruby-1 redis-1"), "{c}");
    env.ok(&["terminate-instances", "--instance-ids", &j]);
    env.wait("instance-terminated", &j);

    // A failing step: non-zero exit, the step and the console tail named,
    // no AMI, no snapshot, no volume left behind.
    let snaps_before = env.ok(&["describe-snapshots", "--owner-ids", "self"])["Snapshots"]
        .as_array()
        .unwrap()
        .len();
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        r##"{"name":"web-bad","base":{"name":"web-server-000"},
            "user_data":"#!/bin/sh\necho about-to-fail\nexit 3\n","timeout_secs":300}"##,
    )
    .unwrap();
    let r = env.fails(&["bake", bad.to_str().unwrap()], "BakeFailed");
    assert!(r.stderr.contains("step provision"), "{}", r.stderr);
    assert!(
        r.stderr.contains("FAILED step user-data exit 3"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("about-to-fail"),
        "console tail expected: {}",
        r.stderr
    );
    let v = env.ok(&[
        "describe-images",
        "--owners",
        "self",
        "--filters",
        "Name=name,Values=web-bad",
    ]);
    assert!(v["Images"].as_array().unwrap().is_empty(), "{v}");
    let snaps_after = env.ok(&["describe-snapshots", "--owner-ids", "self"])["Snapshots"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(snaps_before, snaps_after);
    let vols = env.ok(&["describe-volumes"]);
    assert!(vols["Volumes"].as_array().unwrap().is_empty(), "{vols}");
    assert!(files_in(&env.home().join("volumes")).is_empty());
}

#[test]
fn create_image_of_a_running_instance_reboots_it_around_the_snapshot() {
    let env = Env::with_images();
    let base = env.ami(X86);
    let script = "#!/bin/sh\necho rebooted-bake > /root/reboot-file\nsync\n";
    let id = env.run_instances(&["--image-id", &base, "--user-data", script])[0].clone();
    env.wait("instance-running", &id);
    env.wait_console(&id, "amirun-tiny: ready", 180);
    let out = env.ok(&[
        "create-image",
        "--instance-id",
        &id,
        "--name",
        "reboot-path",
    ]);
    let ami = out["ImageId"].as_str().unwrap().to_string();
    env.ok(&[
        "wait",
        "image-available",
        "--image-ids",
        &ami,
        "--timeout",
        "300",
    ]);
    // The source instance was cleanly cycled and is running again from its own disk.
    env.wait("instance-running", &id);
    env.wait_console(&id, "amirun-tiny: boot 2", 180);
    let d = env.ok(&["describe-images", "--image-ids", &ami]);
    assert_eq!(d["Images"][0]["SourceInstanceId"], id.as_str());
    // An instance of the new AMI has the file written before the snapshot.
    let check = "#!/bin/sh\necho found-$(cat /root/reboot-file)\n";
    let j = env.run_instances(&["--image-id", &ami, "--user-data", check])[0].clone();
    env.wait_console(&j, "found-rebooted-bake", 180);
    env.ok(&["terminate-instances", "--instance-ids", &id, &j]);
    env.wait("instance-terminated", &id);
    env.wait("instance-terminated", &j);
}
