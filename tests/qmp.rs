//! The QMP client against a real QEMU 7.2 (x86_64 q35 under TCG, no OS).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use amirun::instance::qmp::{Qmp, SnapshotSync};
use serde_json::Value;

/// Kills QEMU if a test fails before it quits.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn real_qemu_reports_running_resets_snapshots_and_quits() {
    let dir = tempfile::tempdir().unwrap();
    let qmp_path = dir.path().join("qmp.sock");
    let base = dir.path().join("base.qcow2");
    let overlay = dir.path().join("overlay.qcow2");
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&base)
        .arg("16M")
        .status()
        .unwrap();
    assert!(made.success());

    let mut args = common::firmware_only_args(&qmp_path, &dir.path().join("serial.log"));
    // A disk with no device: enough for a live snapshot, nothing to boot.
    args.extend([
        "-drive".to_owned(),
        format!("file={},if=none,id=root,format=qcow2", base.display()),
    ]);
    let mut qemu = Reap(
        Command::new("qemu-system-x86_64")
            .args(&args)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let qmp = Qmp::connect(&qmp_path, Instant::now() + common::QEMU_TIMEOUT).unwrap();
    assert_eq!(qmp.greeting()["QMP"]["version"]["qemu"]["major"], 7);
    let status = qmp.query_status().unwrap();
    assert_eq!(status.status, "running");
    assert!(status.running);

    qmp.system_reset().unwrap();
    let reset = qmp
        .wait_event("RESET", Instant::now() + common::QEMU_TIMEOUT)
        .unwrap()
        .expect("a RESET event after system_reset");
    assert_eq!(reset.guest(), Some(false));
    assert_eq!(reset.reason(), Some("host-qmp-system-reset"));
    assert!(qmp.query_status().unwrap().running);

    qmp.stop().unwrap();
    assert_eq!(qmp.query_status().unwrap().status, "paused");
    qmp.cont().unwrap();
    assert!(qmp.query_status().unwrap().running);

    qmp.blockdev_snapshot_sync(&SnapshotSync {
        device: Some("root".into()),
        node_name: None,
        snapshot_file: overlay.clone(),
        snapshot_node_name: Some("root-overlay".into()),
        format: "qcow2".into(),
    })
    .unwrap();
    let blocks = qmp.execute("query-block", None).unwrap();
    let root = blocks
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["device"] == "root")
        .expect("the root drive in query-block");
    assert_eq!(
        root["inserted"]["file"],
        Value::from(overlay.to_str().unwrap())
    );
    assert_eq!(
        root["inserted"]["image"]["backing-image"]["filename"],
        Value::from(base.to_str().unwrap())
    );

    qmp.quit().unwrap();
    // QEMU reports its own shutdown before it closes the socket.
    let shutdown = qmp
        .wait_event("SHUTDOWN", Instant::now() + Duration::from_secs(10))
        .unwrap()
        .expect("a SHUTDOWN event after quit");
    assert_eq!(shutdown.guest(), Some(false));
    assert_eq!(shutdown.reason(), Some("host-qmp-quit"));
    let status = qemu.0.wait().unwrap();
    assert!(status.success(), "QEMU exited with {status}");
}
