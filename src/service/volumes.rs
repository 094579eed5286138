//! EBS volumes on their own: CreateVolume, AttachVolume, DetachVolume,
//! DeleteVolume, ModifyVolume and DescribeVolumesModifications, with EC2's
//! rules (types, sizes, IOPS, device names, states) and errors.
//!
//! A volume is a qcow2 file (`volumes/<vol>.qcow2`): blank, or an overlay on
//! its snapshot's layer ([`super::layers`]). States:
//!
//! ```text
//! creating -> available <-> in-use        available -> deleting -> (gone)
//! ```
//!
//! Attached to a stopped instance, a volume is one more disk at its next
//! start. Attached to a running one, it is hot-plugged: the instance's
//! supervisor adds a virtio disk whose serial is the volume id without its
//! dash, as EC2's NVMe serial is ([`crate::instance::hotplug`]); a detach
//! asks the guest to let go first. ModifyVolume grows the file with
//! `qemu-img resize`, or, under a running guest, with QMP `block_resize`,
//! so the guest sees the new size at once.
//!
//! # Crashes
//!
//! Each operation holds the locks of the instance and the volume, records
//! its intent, acts, then commits in one transaction; recovery
//! (`Service::recover_volumes`) settles what a killed process left, from
//! the real files and the running guest:
//!
//! | left behind | decided by | outcome |
//! |---|---|---|
//! | `creating` volume | its file opens as a qcow2 | forward: `available`; else the record goes |
//! | `deleting` volume | - | forward: file and record go |
//! | attach intent | the guest has a disk with the volume's serial | forward: `in-use`; else back: `available` |
//! | detach intent | the guest has no disk with the volume's serial | forward: `available`; else back: `in-use` |
//! | `modifying` modification | the file's virtual size reached the target | forward: `completed`; else `failed`, volume as it was |
//!
//! Rooms: this file holds what they share (id checks, the caller's volume,
//! the supervisor's disk requests); `rules` keeps EC2's stateless checks
//! (device names, sizes, IOPS and throughput), `create`, `attach` (attach
//! and detach), `modify` (ModifyVolume and DescribeVolumesModifications)
//! and `delete` answer the operations, and `recovery` settles what a
//! killed process left. DescribeVolumes is the instances' (it shows their
//! attachments: [`super::instances`]).

use super::instances::{check_instance_ids, gib_to_bytes, volume_size_limits};
use super::object_lock::{self, try_lock};
use super::paging::Paging;
use super::shapes::{Filter, TagSpecification};
use super::{filter, now, Caller, Error, ErrorCode, Result, Service};
use crate::domain::{InstanceStateName, SnapshotStateName, VolumeStateName};
use crate::ids::{self, IdKind};
use crate::instance::hotplug::DiskRequest;
use crate::instance::supervisor::SupervisorClient;
use crate::store::{
    AttachIntent, InstanceDevice, VolumeModificationState, VolumePerformance, VolumeState,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

mod attach;
mod create;
mod delete;
mod modify;
mod recovery;
mod rules;

pub use attach::{AttachVolumeRequest, DetachVolumeRequest, VolumeAttachment};
pub use create::CreateVolumeRequest;
pub use delete::DeleteVolumeRequest;
pub use modify::{
    DescribeVolumesModificationsRequest, DescribeVolumesModificationsResult, ModifyVolumeRequest,
    ModifyVolumeResult, VolumeModification,
};
pub(crate) use rules::{check_device_name, performance_shown};
use rules::{check_performance, size_check};

fn check_volume_id(id: &str) -> Result<()> {
    if ids::is_well_formed(IdKind::Volume, id) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorCode::InvalidVolumeIdMalformed,
            format!("Invalid id: \"{id}\" (expecting \"vol-...\")"),
        ))
    }
}

fn volume_not_found(id: &str) -> Error {
    Error::new(
        ErrorCode::InvalidVolumeNotFound,
        format!("The volume '{id}' does not exist."),
    )
}

/// The one availability zone of a region.
fn zone_of(region: &str) -> String {
    format!("{region}a")
}

fn failpoint(name: &str) -> Result<()> {
    crate::failpoint::hit(name).map_err(|e| Error::internal(e.to_string()))
}

impl Service {
    /// The caller's volume `id`, or `InvalidVolume.NotFound`.
    fn owned_volume(&mut self, caller: &Caller, id: &str) -> Result<VolumeState> {
        self.store
            .read(|db| db.volume(id))?
            .filter(|v| v.region == caller.region && v.owner_id == caller.account)
            .ok_or_else(|| volume_not_found(id))
    }

    /// Send a disk request to the supervisor of a running instance.
    fn disk_request(&self, instance_id: &str, request: DiskRequest) -> Result<Value> {
        let socket = self.paths.control_socket(instance_id);
        let mut c = SupervisorClient::connect(&socket)?;
        Ok(c.disk(request)?)
    }
}
