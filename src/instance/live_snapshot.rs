//! Live disk snapshots done inside the supervisor, so the guest is never
//! left paused: the client that asked may die at any moment, the pause and
//! the resume both happen here, with a deadline.
//!
//! The service prepares, for each disk, a new empty overlay
//! (`volumes/<vol>.next.qcow2`) on the new snapshot layer, then sends one
//! [`LiveSnapshotRequest`]. The supervisor, in [`take`]:
//!
//! 1. flushes the volume files it is about to switch (`fsync`), so the pause
//!    has little left to write;
//! 2. pauses the guest (QMP `stop`);
//! 3. switches every disk to its overlay in one QMP `transaction` of
//!    `blockdev-snapshot-sync` (`mode=existing`);
//! 4. resumes the guest (`cont`) *whatever happened* in 2-3: a failed or
//!    timed-out step still ends in `cont`, retried until [`DEADLINE`];
//! 5. if the switch succeeded, renames each overlay over its volume file, so
//!    the files on disk say what QEMU now writes to (recovery decides from
//!    them: a volume backed by the new layer means "switched").
//!
//! Requests are serialised by one lock per supervisor; an empty request is a
//! barrier: it returns once any snapshot in flight has finished (recovery
//! sends one before judging the files of a running instance).

use super::qmp::Qmp;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the guest may stay paused before `cont` is forced.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// One disk to switch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveDisk {
    /// The QEMU node the disk's device reads from now.
    pub node: String,
    /// Name for the new top node.
    pub new_node: String,
    /// The prepared overlay (`volumes/<vol>.next.qcow2`), absolute.
    pub next: PathBuf,
    /// The volume file it replaces once switched, absolute.
    pub volume: PathBuf,
}

/// The control request's body (`{"op":"live-snapshot","disks":[…]}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LiveSnapshotRequest {
    #[serde(default)]
    pub disks: Vec<LiveDisk>,
}

/// What happened, for the client's report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveSnapshotReply {
    /// How long the guest was paused, in milliseconds.
    pub pause_ms: f64,
    /// Whether the disks were switched (and the overlays renamed).
    pub switched: bool,
    /// Why not, when they were not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

static IN_FLIGHT: Mutex<()> = Mutex::new(());

/// Do the snapshot (see the module doc). `Err` only when nothing was paused.
pub fn take(qmp: &Qmp, request: &LiveSnapshotRequest) -> Result<LiveSnapshotReply, String> {
    let _one = IN_FLIGHT.lock().unwrap_or_else(|p| p.into_inner());
    if request.disks.is_empty() {
        return Ok(LiveSnapshotReply {
            pause_ms: 0.0,
            switched: false,
            error: None,
        });
    }
    for d in &request.disks {
        if let Ok(f) = std::fs::File::open(&d.volume) {
            let _ = f.sync_data();
        }
    }
    let actions: Vec<Value> = request
        .disks
        .iter()
        .map(|d| {
            json!({
                "type": "blockdev-snapshot-sync",
                "data": {
                    "node-name": d.node,
                    "snapshot-file": d.next.display().to_string(),
                    "snapshot-node-name": d.new_node,
                    "format": "qcow2",
                    "mode": "existing",
                }
            })
        })
        .collect();
    let t0 = Instant::now();
    let deadline = t0 + DEADLINE;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100))
    };
    let stopped = qmp.execute_with_timeout("stop", None, left());
    let switched = match &stopped {
        Ok(_) => qmp
            .execute_with_timeout("transaction", Some(json!({ "actions": actions })), left())
            .map(drop)
            .map_err(|e| format!("QEMU refused the snapshot transaction: {e}")),
        Err(e) => Err(format!("QEMU did not pause: {e}")),
    };
    // Resume whatever happened: a `stop` that timed out may still land.
    let mut resumed = qmp.execute_with_timeout("cont", None, left());
    while resumed.is_err() && Instant::now() < deadline + DEADLINE {
        std::thread::sleep(Duration::from_millis(50));
        resumed = qmp.execute_with_timeout("cont", None, Duration::from_secs(2));
    }
    let pause_ms = t0.elapsed().as_secs_f64() * 1000.0;
    if let Err(e) = &resumed {
        tracing::error!("could not resume the guest after a live snapshot: {e}");
    }
    let mut error = switched.err();
    let ok = error.is_none();
    if ok {
        for d in &request.disks {
            if let Err(e) = std::fs::rename(&d.next, &d.volume) {
                error = Some(format!(
                    "Cannot move the new overlay {} into place: {e}",
                    d.next.display()
                ));
            }
        }
    }
    Ok(LiveSnapshotReply {
        pause_ms,
        switched: ok,
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_with_and_without_disks() {
        let r: LiveSnapshotRequest = serde_json::from_str("{}").unwrap();
        assert!(r.disks.is_empty());
        let r: LiveSnapshotRequest = serde_json::from_str(
            r#"{"disks":[{"node":"disk0","new_node":"d0","next":"/a.next","volume":"/a"}]}"#,
        )
        .unwrap();
        assert_eq!(r.disks[0].node, "disk0");
    }
}
