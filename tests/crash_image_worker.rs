//! Crash safety of EC2's asynchronous CreateImage (`amirun serve`): the
//! request returns a pending AMI and a detached worker bakes it. `kill -9`
//! of the request after the hand-over was written, or of the worker at every
//! step (a failpoint armed with `AMIRUN_FAILPOINTS`, inherited by the
//! worker), leaves the AMI pending only until the next process opens the
//! state: recovery then settles it from the real files, `available` when
//! the layers stand and `failed` (with a StateReason) otherwise, and no
//! snapshot, job or worker is left over. A retry works, and the baked AMI
//! boots with what the first guest wrote.

mod util;

use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use util::*;

const X86: &str = "amirun/tiny-x86_64";

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    Some(&text[start..start + text[start..].find(close)?])
}

/// Whether a CreateImage worker of `image_id` runs.
fn worker_runs(image_id: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            == Some("Z");
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        !zombie && cmdline.contains("__create-image") && cmdline.contains(image_id)
    })
}

fn poll(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn image(env: &Env, id: &str) -> Value {
    env.ok(&["describe-images", "--image-ids", id])["Images"][0].clone()
}

fn name_of(p: &std::path::Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// Nothing pending, every snapshot record with its file and every file with
/// its record, no job or worker lock left.
fn assert_settled(env: &Env, ctx: &str) {
    let images = env.ok(&["describe-images", "--owners", "self"]);
    for i in images["Images"].as_array().unwrap() {
        assert_ne!(i["State"], "pending", "{ctx}: {i}");
    }
    let snaps = env.ok(&["describe-snapshots", "--owner-ids", "self"]);
    let mut files = std::collections::HashSet::new();
    for s in snaps["Snapshots"].as_array().unwrap() {
        assert_eq!(s["State"], "completed", "{ctx}: {s}");
        if s["Amirun"]["HasLayer"] == true {
            files.insert(format!("{}.qcow2", s["SnapshotId"].as_str().unwrap()));
        }
    }
    for f in files_in(&env.home().join("snapshots")) {
        assert!(
            files.contains(&name_of(&f)),
            "{ctx}: {} has no record",
            f.display()
        );
    }
    let jobs: Vec<PathBuf> = files_in(&env.home().join("jobs"));
    assert!(jobs.is_empty(), "{ctx}: jobs left: {jobs:?}");
}

#[test]
fn a_killed_create_image_worker_is_settled_from_the_files() {
    let env = Env::with_images();
    let ami = env.ami(X86);
    // A stopped instance whose disk holds a marker.
    let script = "#!/bin/sh\necho baked-marker-7 >/root/marker; sync; poweroff\n";
    let i = env.run_instances(&["--image-id", &ami, "--user-data", script])[0].clone();
    poll("instance stopped", 300, || env.state(&i) == "stopped");

    // Killed at each step: before the worker took over (the request after
    // writing the job), then inside the worker before and after the rename
    // that makes the layer stand.
    for (failpoint, outcome) in [
        ("create-image:job-written", None),
        ("create-image:worker-started", Some("failed")),
        ("create-image:after-intent", Some("failed")),
        ("create-image:after-overlay", Some("failed")),
        ("create-image:after-rename", Some("available")),
    ] {
        let server = Serve::start_with(&env, &[("AMIRUN_FAILPOINTS", failpoint)]);
        let name = format!("bake-{}", failpoint.trim_start_matches("create-image:"));
        let started = Instant::now();
        let reply = server.call(&format!(
            "Action=CreateImage&Version=2016-11-15&InstanceId={i}&Name={name}"
        ));
        let Some(outcome) = outcome else {
            // The request itself was killed: no answer, nothing handed over.
            assert!(!reply.contains("<imageId>"), "{failpoint}: {reply}");
            drop(server);
            assert_settled(&env, failpoint);
            let images = env.ok(&["describe-images", "--owners", "self"]);
            let pending: Vec<&Value> = images["Images"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|i| i["Name"] == name.as_str())
                .collect();
            // Recorded before the kill: settled as failed (the caller got no id).
            for p in pending {
                assert_eq!(p["State"], "failed", "{failpoint}: {p}");
            }
            continue;
        };
        let id = between(&reply, "<imageId>", "</imageId>")
            .unwrap_or_else(|| panic!("{failpoint}: {reply}"))
            .to_string();
        eprintln!(
            "{failpoint}: CreateImage answered in {:?}",
            started.elapsed()
        );
        poll(&format!("{failpoint}: worker gone"), 120, || {
            !worker_runs(&id)
        });
        drop(server);
        // A fresh process settles what the dead worker left.
        let img = image(&env, &id);
        assert_eq!(img["State"], outcome, "{failpoint}: {img}");
        if outcome == "failed" {
            assert!(
                img["StateReason"]["Message"]
                    .as_str()
                    .is_some_and(|m| m.contains("Server.InternalError")),
                "{failpoint}: {img}"
            );
        }
        assert_settled(&env, failpoint);
    }

    // Without a failpoint the worker bakes; the AMI boots with the marker.
    let server = Serve::start(&env);
    let reply = server.call(&format!(
        "Action=CreateImage&Version=2016-11-15&InstanceId={i}&Name=bake-whole"
    ));
    let id = between(&reply, "<imageId>", "</imageId>")
        .unwrap_or_else(|| panic!("{reply}"))
        .to_string();
    poll("bake-whole available", 300, || {
        let r = server.call(&format!(
            "Action=DescribeImages&Version=2016-11-15&ImageId.1={id}"
        ));
        r.contains("<imageState>available</imageState>")
    });
    drop(server);
    assert_settled(&env, "whole");
    for baked in ["bake-whole", "bake-after-rename"] {
        let ami = env.ok(&[
            "describe-images",
            "--owners",
            "self",
            "--filters",
            &format!("Name=name,Values={baked}"),
        ])["Images"][0]["ImageId"]
            .as_str()
            .unwrap()
            .to_string();
        let check = "#!/bin/sh\ncat /root/marker; sync; poweroff\n";
        let j = env.run_instances(&["--image-id", &ami, "--user-data", check])[0].clone();
        env.wait_console(&j, "baked-marker-7", 300);
        env.ok(&["terminate-instances", "--instance-ids", &j]);
    }
    env.ok(&["terminate-instances", "--instance-ids", &i]);
}
