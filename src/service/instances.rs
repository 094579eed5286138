//! Instances: launch AMIs as QEMU guests with EC2's lifecycle, and their
//! EBS volumes.
//!
//! State machine (EC2's names and codes):
//!
//! ```text
//! pending(0) -> running(16) -> stopping(64) -> stopped(80) -> pending ...
//! pending|running|stopping|stopped -> shutting-down(32) -> terminated(48)
//! ```
//!
//! The states, their codes and allowed transitions are
//! [`crate::domain::InstanceStateName`]; the decision of reconciliation is
//! the pure [`crate::domain::reconcile`], which `Service::reconcile_locked`
//! feeds with probed facts and applies.
//!
//! The database holds the last state amirun recorded (the intent); what is
//! shown is reconciled with live facts on every read ([`Service::refresh_instances`]):
//! whether the supervisor and QEMU are alive, and the supervisor's `exited`
//! record. So a killed supervisor or QEMU never leaves an instance `running`,
//! and a guest that powers itself off stops (EBS) or terminates
//! (instance-store, or shutdown behavior `terminate`).
//!
//! # Concurrency and crashes
//!
//! Every change to an instance happens under its object lock
//! ([`super::object_lock`]): run-instances holds the locks of its new
//! instance and volume ids from before their files exist until the records
//! are committed and each supervisor runs; start, stop, reboot, terminate
//! (and create-image) hold the instance's lock while they act; the
//! reconciliation on every read takes it with `try_lock` and leaves an
//! instance whose lock is held as recorded. So a launch in progress is never
//! judged dead by another process.
//!
//! "The supervisor is gone" is decided only under the fence
//! ([`supervisor::fence`], the pid file's lock): a supervisor that runs or is
//! taking its pid file keeps the instance alive; one spawned by a launcher
//! that was then killed finds its launch spec withdrawn and never starts
//! QEMU. Before any disk is removed, no QEMU of the instance may be alive.
//!
//! A launcher killed with `-9` leaves, depending on the step: nothing; files
//! without records whose locks are free (removed by the orphan sweep at
//! store open); or `pending` records whose supervisor never started. Those
//! are settled like a launch EC2 could not complete: `terminated` with
//! `Server.InternalError` ("The launch was interrupted before the instance
//! booted; launch it again"), volumes following DeleteOnTermination. An
//! interrupted start of a stopped instance goes back to `stopped` with
//! `Server.InternalError`.
//!
//! # Rooms
//!
//! - `launch`: `RunInstances` (idempotent with `ClientToken`);
//!   `launch_rules`: EC2's launch rules as pure, table-tested functions;
//!   `boot`: the launch spec and the supervisor (launch and start).
//! - `lifecycle`: start, stop, reboot, terminate.
//! - `describe`: `DescribeInstances`, `GetConsoleOutput`, ssh targets.
//! - `volumes`: `DescribeVolumes`.
//! - `reconcile`: live facts applied to stored intent, the waiters' poller,
//!   and the lookups of the caller's instances every room uses.
//!
//! Each room's requests and results are its own and re-exported here.

use super::object_lock::{self, ObjectLock};
use super::shapes::{Filter, StateReason, Tag, TagSpecification};
use super::{filter, now, Caller, Error, ErrorCode, Result, Service};
use crate::domain::{
    reconcile, Architecture, Base64Blob, BootMode, ImageStateName, InstanceStateName, LiveFacts,
    Recorded, RootDeviceType, ShutdownBehavior, Transition, VolumeStateName,
};
use crate::ids::{self, IdKind};
use crate::instance::supervisor::{self, LaunchSpec, SupervisorClient};
use crate::machine::{
    self, Arch, Boot, DiskFormat, DiskSpec, MachineSpec, NetSpec, SmbiosIdentity,
};
use crate::network::{self, NetworkStatus};
use crate::store::{
    BlockDeviceMapping, EbsBlockDevice, ImageState, InstanceDevice, InstanceState, VolumeState,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::PathBuf;

mod boot;
mod describe;
mod launch;
mod launch_rules;
mod lifecycle;
mod reconcile;
mod remote;
mod volumes;

use boot::free_port;
pub use describe::{
    CpuOptions, DescribeInstancesRequest, DescribeInstancesResult, EbsInstanceBlockDevice,
    GetConsoleOutputRequest, GetConsoleOutputResult, GroupIdentifier, Instance,
    InstanceBlockDeviceMapping, InstanceFacts, InstancePlacement, Monitoring, ProductCode,
    Reservation,
};
pub(crate) use launch::USER_DATA_LIMIT;
pub use launch::{InstanceMetadataOptionsRequest, Placement, RunInstancesRequest};
use launch_rules::*;
pub(crate) use launch_rules::{gib_to_bytes, volume_size_limits};
pub use lifecycle::{
    InstanceIdsRequest, RebootInstancesRequest, StartInstancesRequest, StartInstancesResult,
    StopInstancesRequest, StopInstancesResult, TerminateInstancesRequest, TerminateInstancesResult,
};
pub use reconcile::WaitFailure;
pub(crate) use remote::RemoteRegions;
pub use volumes::{DescribeVolumesRequest, DescribeVolumesResult, Volume, VolumeAttachment};

/// An instance's state as EC2 shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceStateShape {
    pub code: u16,
    pub name: InstanceStateName,
}

impl InstanceStateShape {
    fn of(name: InstanceStateName) -> Self {
        InstanceStateShape {
            code: name.code(),
            name,
        }
    }
}

/// One entry of Starting/Stopping/TerminatingInstances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct StateChange {
    pub current_state: InstanceStateShape,
    pub instance_id: String,
    pub previous_state: InstanceStateShape,
}

/// How to log in to an instance (for `amirun ssh`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    pub port: u16,
    pub user: String,
    pub identity_file: Option<PathBuf>,
}

/// Mark a step of an operation for fault-injection tests (see [`crate::failpoint`]).
fn failpoint(name: &str) -> Result<()> {
    crate::failpoint::hit(name).map_err(|e| Error::internal(e.to_string()))
}

fn io_error(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::internal(what).with_source(e)
}

/// The guest network an instance's tags choose ([`machine::OUTBOUND_TAG`]):
/// outbound access (`nat`, the default) unless the tag says `none`.
fn guest_outbound<'a>(
    mut tags: impl Iterator<Item = (&'a str, &'a str)>,
    default: machine::Outbound,
) -> Result<machine::Outbound> {
    match tags.find(|(k, _)| *k == machine::OUTBOUND_TAG) {
        None => Ok(default),
        Some((_, v)) => machine::Outbound::from_tag(v).ok_or_else(|| {
            Error::invalid_value(format!(
                "Invalid value '{v}' for tag {}: use 'nat' (DNS and outbound access, the default) or 'none' (IMDS and SSH only)",
                machine::OUTBOUND_TAG
            ))
        }),
    }
}

/// EC2's checks of an InstanceIds parameter.
pub(crate) fn check_instance_ids(ids_: &[String]) -> Result<()> {
    for id in ids_ {
        if !ids::is_well_formed(IdKind::Instance, id) {
            return Err(Error::new(
                ErrorCode::InvalidInstanceIdMalformed,
                format!("Invalid id: \"{id}\" (expecting \"i-...\")"),
            ));
        }
    }
    if ids_.is_empty() {
        return Err(Error::missing("InstanceId"));
    }
    Ok(())
}

/// EC2's answer when ids named in a request are not the caller's
/// instances (one id or several: the wording differs); `Ok` when none is
/// missing.
fn instances_missing(missing: &[String]) -> Result<()> {
    match missing {
        [] => Ok(()),
        [one] => Err(Error::new(
            ErrorCode::InvalidInstanceIdNotFound,
            format!("The instance ID '{one}' does not exist"),
        )),
        many => Err(Error::new(
            ErrorCode::InvalidInstanceIdNotFound,
            format!("The instance IDs '{}' do not exist", many.join(", ")),
        )),
    }
}
