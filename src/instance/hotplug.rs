//! EBS volumes plugged into and out of a running guest, done inside the
//! supervisor (the only holder of QEMU's QMP socket): AttachVolume,
//! DetachVolume and ModifyVolume on a running instance arrive here as one
//! [`DiskRequest`] on the control socket.
//!
//! A disk is found by its virtio serial, the volume id without its dash
//! ([`crate::machine::volume_serial`]), whichever way it came in: on the
//! command line at boot (`diskN-dev`) or hot-plugged (`vol…-dev`); node
//! names change under live snapshots, serials never do.
//!
//! - attach: `blockdev-add` of the qcow2, then `device_add` of a
//!   `virtio-blk-pci` with the serial on the first free hot-plug root port
//!   ([`crate::machine::HOTPLUG_PORTS`]); the guest sees a new disk.
//! - detach: `device_del` asks the guest to let go (ACPI / PCIe hot-plug);
//!   the disk is gone once QEMU's peripheral list no longer shows it, then
//!   every block node nothing uses any more is deleted, so QEMU holds no
//!   file of the volume. A guest that does not let go within the timeout
//!   keeps the disk and the request fails (the volume stays attached).
//! - resize: `block_resize` of the disk's active node.
//! - find: the disk's device id and active node, or `null`.

use super::qmp::Qmp;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// One disk operation (`{"op":"disk","action":"attach",…}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum DiskRequest {
    /// Plug the qcow2 at `path` in as a virtio disk with this serial.
    Attach { serial: String, path: PathBuf },
    /// Ask the guest to release the disk with this serial, waiting at most
    /// `timeout_secs` for it.
    Detach { serial: String, timeout_secs: u64 },
    /// Grow the disk with this serial to `size` bytes.
    Resize { serial: String, size: u64 },
    /// Where the disk with this serial is now.
    Find { serial: String },
}

/// A disk of the running machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskLocation {
    /// Its device id (`/machine/peripheral/<device>`).
    pub device: String,
    /// The block node its device reads from now.
    pub node: String,
}

/// Carry out one request (see the module doc); the answer is the disk's
/// [`DiskLocation`] (attach, resize, find; `null` when find finds none) or
/// `{}` (detach).
pub fn handle(qmp: &Qmp, request: &DiskRequest) -> Result<Value, String> {
    match request {
        DiskRequest::Find { serial } => Ok(json!(find(qmp, serial)?)),
        DiskRequest::Attach { serial, path } => attach(qmp, serial, path).map(|l| json!(l)),
        DiskRequest::Detach {
            serial,
            timeout_secs,
        } => detach(qmp, serial, Duration::from_secs(*timeout_secs)).map(|()| json!({})),
        DiskRequest::Resize { serial, size } => {
            let at = find(qmp, serial)?.ok_or_else(|| format!("No disk with serial {serial}"))?;
            qmp.execute(
                "block_resize",
                Some(json!({"node-name": at.node, "size": size})),
            )
            .map_err(|e| format!("block_resize of {}: {e}", at.node))?;
            Ok(json!(at))
        }
    }
}

fn qmp_err(what: &str) -> impl Fn(super::qmp::QmpError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// The disk whose virtio serial is `serial`, if the machine has one.
pub fn find(qmp: &Qmp, serial: &str) -> Result<Option<DiskLocation>, String> {
    let list = qmp
        .execute("qom-list", Some(json!({"path": "/machine/peripheral"})))
        .map_err(qmp_err("qom-list"))?;
    for child in list.as_array().into_iter().flatten() {
        if child.get("type").and_then(Value::as_str) != Some("child<virtio-blk-pci>") {
            continue;
        }
        let Some(name) = child.get("name").and_then(Value::as_str) else {
            continue;
        };
        let path = format!("/machine/peripheral/{name}");
        let get = |property: &str| {
            qmp.execute("qom-get", Some(json!({"path": path, "property": property})))
                .map_err(qmp_err("qom-get"))
        };
        if get("serial")?.as_str() != Some(serial) {
            continue;
        }
        let node = get("drive")?.as_str().unwrap_or_default().to_string();
        return Ok(Some(DiskLocation {
            device: name.to_string(),
            node,
        }));
    }
    Ok(None)
}

fn attach(qmp: &Qmp, serial: &str, path: &std::path::Path) -> Result<DiskLocation, String> {
    if let Some(at) = find(qmp, serial)? {
        return Ok(at);
    }
    let node = serial.to_string();
    // A node of an attach that failed half way would block the name.
    let _ = qmp.execute("blockdev-del", Some(json!({"node-name": node})));
    qmp.execute(
        "blockdev-add",
        Some(crate::machine::hotplug_blockdev(&node, path)),
    )
    .map_err(qmp_err("blockdev-add"))?;
    let device = format!("{serial}-dev");
    let mut last = String::from("no hot-plug port");
    for port in 0..crate::machine::HOTPLUG_PORTS {
        let args = crate::machine::hotplug_device(&device, &node, serial, port);
        match qmp.execute("device_add", Some(args)) {
            Ok(_) => return Ok(DiskLocation { device, node }),
            // Occupied (one device per root port): try the next one.
            Err(e) => last = e.to_string(),
        }
    }
    let _ = qmp.execute("blockdev-del", Some(json!({"node-name": node})));
    Err(format!(
        "Every hot-plug port of the machine is taken ({last}); detach a volume or stop the instance first"
    ))
}

fn detach(qmp: &Qmp, serial: &str, timeout: Duration) -> Result<(), String> {
    let Some(at) = find(qmp, serial)? else {
        release_unused_nodes(qmp);
        return Ok(());
    };
    qmp.execute("device_del", Some(json!({"id": at.device})))
        .map_err(qmp_err("device_del"))?;
    let deadline = Instant::now() + timeout;
    while find(qmp, serial)?.is_some() {
        if Instant::now() >= deadline {
            return Err(format!(
                "The guest did not release disk {serial} within {} s; it stays attached",
                timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    release_unused_nodes(qmp);
    Ok(())
}

/// Delete every block node that nothing uses any more (what a removed
/// disk leaves): `blockdev-del` refuses nodes in use and nodes QEMU made by
/// itself, so only the detached disk's own nodes go.
fn release_unused_nodes(qmp: &Qmp) {
    let Ok(nodes) = qmp.execute("query-named-block-nodes", Some(json!({"flat": true}))) else {
        return;
    };
    for n in nodes.as_array().into_iter().flatten() {
        if let Some(name) = n.get("node-name").and_then(Value::as_str) {
            if !name.starts_with('#') {
                let _ = qmp.execute("blockdev-del", Some(json!({"node-name": name})));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_as_the_control_protocol_writes_them() {
        let r: DiskRequest = serde_json::from_value(json!({
            "action": "detach", "serial": "vol0123", "timeout_secs": 5
        }))
        .unwrap();
        assert_eq!(
            r,
            DiskRequest::Detach {
                serial: "vol0123".into(),
                timeout_secs: 5
            }
        );
    }
}
