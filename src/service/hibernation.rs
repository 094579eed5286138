//! Hibernation as EC2 has it: an instance launched with
//! `HibernationOptions.Configured=true` may be stopped with `Hibernate`,
//! which saves its guest's memory and device state next to its volumes;
//! the next start resumes the guest from there instead of booting it.
//!
//! This file holds the service's rules; the supervisor does the saving and
//! loading ([`crate::instance::supervisor`], `hibernate.rs`), and
//! [`crate::paths`] names the state file. `instances.rs` calls in at four
//! points: launch (the prerequisites, [`check_launch`]), stop (whether a
//! hibernating stop is allowed, [`check_stop`]), settle (record or discard
//! what was saved, [`Service::settle_hibernation`]) and start (resume only
//! from a state that is still valid, [`Service::take_resume`]).
//!
//! # When a saved state is valid
//!
//! The supervisor writes the state under a temporary name and renames it
//! only once QEMU reported the migration complete. When the instance
//! settles as `stopped` with EC2's hibernation reason, the service records
//! the state file's size and the identity (device, inode, size, mtime) of
//! every EBS volume file as the guest left them. A start resumes only when
//! all of that still holds; anything else (a truncated or missing state,
//! a volume rewritten meanwhile by create-image, a snapshot merge or a
//! rebase) discards the state and boots cleanly, as a real machine would
//! after losing power. A resumed state is removed by the supervisor; the
//! record forgets it before the supervisor starts, so a state is never
//! resumed twice.

use super::{Error, ErrorCode, Result, Service};
use crate::domain::{InstanceStateName, RootDeviceType, USER_HIBERNATE};
use crate::machine::instance_types::InstanceType;
use crate::paths::Paths;
use crate::store::InstanceState;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::os::unix::fs::MetadataExt;

/// EC2 hibernates instances with at most this much memory (150 GiB).
const MAX_MEMORY_MIB: u64 = 150 * 1024;

/// RunInstances' `HibernationOptions` (EC2's `HibernationOptionsRequest`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct HibernationOptionsRequest {
    /// Enable the instance for hibernation.
    #[serde(default, deserialize_with = "boolean")]
    pub configured: bool,
}

/// A Boolean member as JSON gives it, or as text (`true`/`false`, as the
/// command line's shorthand gives it).
fn boolean<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        Bool(bool),
        Text(String),
    }
    match Given::deserialize(d)? {
        Given::Bool(b) => Ok(b),
        Given::Text(t) if t.eq_ignore_ascii_case("true") => Ok(true),
        Given::Text(t) if t.eq_ignore_ascii_case("false") => Ok(false),
        Given::Text(t) => Err(serde::de::Error::custom(format!(
            "Value ({t}) for parameter Configured is invalid; use true or false"
        ))),
    }
}

/// What an instance records about hibernation (the store's `hibernation`
/// column).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HibernationState {
    /// Launched with `HibernationOptions.Configured=true`.
    configured: bool,
    /// The state saved by the last hibernation, not yet resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    saved: Option<SavedState>,
}

/// A complete saved state and the volumes it belongs with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SavedState {
    /// Size of the state file.
    size: u64,
    /// Every EBS volume file as the hibernated guest left it.
    volumes: Vec<FileIdentity>,
}

/// Who a file is and whether it changed: any rewrite of a volume's qcow2
/// (a new overlay, a rebase, a write) changes one of these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FileIdentity {
    volume_id: String,
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
}

fn unsupported(message: String) -> Error {
    Error::new(ErrorCode::UnsupportedHibernationConfiguration, message)
}

fn state_of(i: &InstanceState) -> HibernationState {
    serde_json::from_value(i.hibernation.clone()).unwrap_or_default()
}

fn store_state(i: &mut InstanceState, h: &HibernationState) {
    i.hibernation = if h == &HibernationState::default() {
        Value::Null
    } else {
        serde_json::to_value(h).expect("hibernation state serialises")
    };
}

/// Whether the instance was launched for hibernation.
pub fn configured(i: &InstanceState) -> bool {
    state_of(i).configured
}

/// `HibernationOptions` as describe-instances shows it.
pub fn shape(i: &InstanceState) -> Value {
    json!({ "Configured": configured(i) })
}

/// EC2's prerequisites for `HibernationOptions.Configured=true`: an EBS
/// root, a type that hibernates (current generation, at most 150 GiB of
/// memory, no instance-store disks, whose contents a stop discards), and a
/// root volume that can hold the guest's memory. Returns the value to
/// record on the instance (`Null` when hibernation was not asked for).
pub fn check_launch(
    options: Option<&HibernationOptionsRequest>,
    itype: &InstanceType,
    root_device_type: RootDeviceType,
    root_volume_gib: Option<u64>,
) -> Result<Value> {
    if !options.is_some_and(|o| o.configured) {
        return Ok(Value::Null);
    }
    if root_device_type != RootDeviceType::Ebs {
        return Err(unsupported(
            "Hibernation requires an EBS root volume; the AMI's root device type is instance-store."
                .into(),
        ));
    }
    if !itype.current_generation() || itype.memory_mib > MAX_MEMORY_MIB {
        return Err(unsupported(format!(
            "Hibernation is not supported for the instance type {}.",
            itype.name
        )));
    }
    if !itype.instance_store_gib.is_empty() {
        return Err(unsupported(format!(
            "Hibernation is not supported for instance types with instance store volumes ({}).",
            itype.name
        )));
    }
    let memory_gib = itype.memory_mib.div_ceil(1024);
    match root_volume_gib {
        Some(gib) if gib >= memory_gib => {}
        given => {
            return Err(unsupported(format!(
                "The root volume ({} GiB) must be at least as large as the memory of {} ({memory_gib} GiB) to hold it when the instance hibernates.",
                given.unwrap_or(0),
                itype.name
            )))
        }
    }
    let h = HibernationState {
        configured: true,
        saved: None,
    };
    Ok(serde_json::to_value(h).expect("hibernation state serialises"))
}

/// Whether `StopInstances` with `Hibernate` may hibernate `i`.
pub fn check_stop(i: &InstanceState) -> Result<()> {
    if !configured(i) {
        return Err(unsupported(format!(
            "The instance is not enabled for hibernation: {}",
            i.instance_id
        )));
    }
    if i.state == InstanceStateName::Pending {
        return Err(unsupported(format!(
            "Instance is not ready to hibernate yet, please try again later: {}",
            i.instance_id
        )));
    }
    Ok(())
}

/// The identity of every EBS volume file of `i`.
fn volume_identities(paths: &Paths, i: &InstanceState) -> std::io::Result<Vec<FileIdentity>> {
    i.devices
        .iter()
        .filter_map(|d| d.volume_id.as_deref())
        .map(|v| {
            let m = std::fs::metadata(paths.volume(v))?;
            Ok(FileIdentity {
                volume_id: v.to_owned(),
                dev: m.dev(),
                ino: m.ino(),
                size: m.len(),
                mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            })
        })
        .collect()
}

fn remove_state_files(paths: &Paths, instance_id: &str) {
    for f in [
        paths.hibernation_state(instance_id),
        paths.hibernation_state_tmp(instance_id),
    ] {
        match std::fs::remove_file(&f) {
            Ok(()) => tracing::info!("removed hibernation state {}", f.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot remove {}: {e}", f.display()),
        }
    }
}

impl Service {
    /// Called as `i` settles into `target` (its guest gone, the caller
    /// holding its lock, before the record is written): a hibernation
    /// that completed is recorded with the volumes it belongs with; any
    /// other end discards whatever state file there is.
    pub(crate) fn settle_hibernation(&self, i: &mut InstanceState, target: InstanceStateName) {
        let mut h = state_of(i);
        h.saved = None;
        let state = self.paths.hibernation_state(&i.instance_id);
        let hibernated = h.configured
            && target == InstanceStateName::Stopped
            && i.state_reason.as_deref() == Some(USER_HIBERNATE);
        if hibernated {
            let _ = std::fs::remove_file(self.paths.hibernation_state_tmp(&i.instance_id));
            match (std::fs::metadata(&state), volume_identities(&self.paths, i)) {
                (Ok(m), Ok(volumes)) => {
                    h.saved = Some(SavedState {
                        size: m.len(),
                        volumes,
                    })
                }
                (m, v) => {
                    tracing::warn!(
                        "{}: hibernated but its state cannot be recorded ({:?}, {:?}); the next start boots",
                        i.instance_id,
                        m.err(),
                        v.err()
                    );
                    remove_state_files(&self.paths, &i.instance_id);
                }
            }
        } else {
            remove_state_files(&self.paths, &i.instance_id);
        }
        store_state(i, &h);
    }

    /// Whether starting `i` resumes its saved state: only one recorded
    /// complete whose file and volumes are unchanged. The record forgets
    /// the state either way (the caller writes `i`); a state that is not
    /// resumed is removed, so the guest boots cleanly.
    pub(crate) fn take_resume(&self, i: &mut InstanceState) -> bool {
        let mut h = state_of(i);
        let Some(saved) = h.saved.take() else {
            remove_state_files(&self.paths, &i.instance_id);
            return false;
        };
        store_state(i, &h);
        let state = self.paths.hibernation_state(&i.instance_id);
        let size = std::fs::metadata(&state).map(|m| m.len()).ok();
        let volumes = volume_identities(&self.paths, i).ok();
        let valid = size == Some(saved.size) && volumes.as_ref() == Some(&saved.volumes);
        if !valid {
            tracing::info!(
                "{}: the saved hibernation state no longer matches (state size {size:?} vs {}, volumes changed: {}); booting",
                i.instance_id,
                saved.size,
                volumes.as_ref() != Some(&saved.volumes)
            );
            remove_state_files(&self.paths, &i.instance_id);
        }
        valid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn itype(name: &str) -> &'static InstanceType {
        crate::machine::instance_type(name).unwrap()
    }

    #[test]
    fn launch_prerequisites_follow_ec2() {
        let on = HibernationOptionsRequest { configured: true };
        let off = HibernationOptionsRequest { configured: false };
        let ebs = RootDeviceType::Ebs;
        assert_eq!(
            check_launch(None, itype("t3.nano"), ebs, Some(1)).unwrap(),
            Value::Null
        );
        assert_eq!(
            check_launch(Some(&off), itype("t3.nano"), ebs, Some(1)).unwrap(),
            Value::Null
        );
        let v = check_launch(Some(&on), itype("t3.nano"), ebs, Some(1)).unwrap();
        assert_eq!(v, json!({"Configured": true}));

        let code = |r: Result<Value>| r.unwrap_err().code();
        let want = ErrorCode::UnsupportedHibernationConfiguration;
        // Root volume smaller than memory (t3.large: 8 GiB).
        assert_eq!(
            code(check_launch(Some(&on), itype("t3.large"), ebs, Some(4))),
            want
        );
        assert!(check_launch(Some(&on), itype("t3.large"), ebs, Some(8)).is_ok());
        // Instance-store root, instance-store disks, too much memory.
        assert_eq!(
            code(check_launch(
                Some(&on),
                itype("t3.nano"),
                RootDeviceType::InstanceStore,
                None
            )),
            want
        );
        assert_eq!(
            code(check_launch(Some(&on), itype("m5d.large"), ebs, Some(100))),
            want
        );
        assert_eq!(
            code(check_launch(
                Some(&on),
                itype("x1.32xlarge"),
                ebs,
                Some(4000)
            )),
            want
        );
    }

    #[test]
    fn options_refuse_unknown_members() {
        let ok: HibernationOptionsRequest =
            serde_json::from_value(json!({"Configured": true})).unwrap();
        assert!(ok.configured);
        let text: HibernationOptionsRequest =
            serde_json::from_value(json!({"Configured": "false"})).unwrap();
        assert!(!text.configured);
        assert!(serde_json::from_value::<HibernationOptionsRequest>(
            json!({"Configured": "maybe"})
        )
        .is_err());
        assert!(
            serde_json::from_value::<HibernationOptionsRequest>(json!({"Enabled": true})).is_err()
        );
    }
}
