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

/// How long a detach waits for the guest to let go of the disk.
const DETACH_TIMEOUT_SECS: u64 = 30;
/// The same with `Force`.
const FORCED_DETACH_TIMEOUT_SECS: u64 = 5;

/// `CreateVolume`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct CreateVolumeRequest {
    #[serde(default)]
    pub availability_zone: Option<String>,
    #[serde(default)]
    pub availability_zone_id: Option<String>,
    #[serde(default)]
    pub encrypted: Option<bool>,
    #[serde(default)]
    pub iops: Option<u64>,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub snapshot_id: Option<String>,
    #[serde(default)]
    pub volume_type: Option<String>,
    #[serde(default)]
    pub tag_specifications: Vec<TagSpecification>,
    #[serde(default)]
    pub multi_attach_enabled: Option<bool>,
    #[serde(default)]
    pub throughput: Option<u64>,
    #[serde(default)]
    pub client_token: Option<String>,
}

/// `AttachVolume`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct AttachVolumeRequest {
    pub device: String,
    pub instance_id: String,
    pub volume_id: String,
}

/// `DetachVolume`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DetachVolumeRequest {
    #[serde(default)]
    pub device: Option<String>,
    #[serde(default)]
    pub force: Option<bool>,
    #[serde(default)]
    pub instance_id: Option<String>,
    pub volume_id: String,
}

/// `DeleteVolume`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DeleteVolumeRequest {
    pub volume_id: String,
}

/// `ModifyVolume`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ModifyVolumeRequest {
    pub volume_id: String,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub volume_type: Option<String>,
    #[serde(default)]
    pub iops: Option<u64>,
    #[serde(default)]
    pub throughput: Option<u64>,
    #[serde(default)]
    pub multi_attach_enabled: Option<bool>,
}

/// `DescribeVolumesModifications`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DescribeVolumesModificationsRequest {
    #[serde(default)]
    pub volume_ids: Vec<String>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub next_token: Option<String>,
    #[serde(default)]
    pub max_results: Option<i64>,
}

/// EC2's `VolumeAttachment` (AttachVolume's and DetachVolume's result).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct VolumeAttachment {
    pub attach_time: Option<String>,
    pub device: String,
    pub instance_id: String,
    pub state: String,
    pub volume_id: String,
    pub delete_on_termination: bool,
}

/// EC2's `VolumeModification`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct VolumeModification {
    pub volume_id: String,
    pub modification_state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    pub target_size: u64,
    pub target_iops: u64,
    pub target_volume_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_throughput: Option<u64>,
    pub target_multi_attach_enabled: bool,
    pub original_size: u64,
    pub original_iops: u64,
    pub original_volume_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_throughput: Option<u64>,
    pub original_multi_attach_enabled: bool,
    pub progress: u64,
    pub start_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
}

/// `ModifyVolume`'s result.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ModifyVolumeResult {
    pub volume_modification: VolumeModification,
}

/// `DescribeVolumesModifications`' result.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeVolumesModificationsResult {
    pub volumes_modifications: Vec<VolumeModification>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

const MODIFICATION_FILTERS: &[&str] = &[
    "modification-state",
    "original-size",
    "original-volume-type",
    "start-time",
    "target-size",
    "target-volume-type",
    "volume-id",
    "original-iops",
    "target-iops",
    "originalMultiAttachEnabled",
    "targetMultiAttachEnabled",
];

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

/// EC2's device names for an EBS volume of a Linux instance: `/dev/sd[b-z]`,
/// `/dev/sd[b-z][1-15]`, `/dev/xvd[b-z]`, `/dev/xvd[b-c][a-z]`,
/// `/dev/xvd[a-z][a-z]`... `/dev/hd[a-z]`, `/dev/hd[a-z][1-15]`.
pub(crate) fn check_device_name(device: &str) -> Result<()> {
    let bad = || {
        Error::invalid_value(format!(
            "Value ({device}) for parameter device is invalid. {device} is not a valid EBS device name."
        ))
    };
    let lower = |c: u8| c.is_ascii_lowercase();
    let partition = |rest: &[u8]| -> bool {
        match std::str::from_utf8(rest)
            .ok()
            .and_then(|s| s.parse::<u8>().ok())
        {
            Some(n) => (1..=15).contains(&n) && !rest.starts_with(b"0"),
            None => rest.is_empty(),
        }
    };
    let ok = if let Some(rest) = device.strip_prefix("/dev/sd") {
        let b = rest.as_bytes();
        !b.is_empty() && (b'b'..=b'z').contains(&b[0]) && partition(&b[1..])
    } else if let Some(rest) = device.strip_prefix("/dev/xvd") {
        let b = rest.as_bytes();
        match b {
            [c] => (b'b'..=b'z').contains(c),
            [c, d] => lower(*c) && lower(*d),
            _ => false,
        }
    } else if let Some(rest) = device.strip_prefix("/dev/hd") {
        let b = rest.as_bytes();
        !b.is_empty() && lower(b[0]) && partition(&b[1..])
    } else {
        false
    };
    if ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// IOPS and throughput a volume of this type and size may be given, as EC2
/// checks them; returns what the volume gets (`None`: the type's baseline).
fn check_performance(
    volume_type: &str,
    size_gib: u64,
    iops: Option<u64>,
    throughput: Option<u64>,
) -> Result<VolumePerformance> {
    let combination = |what: &str| {
        Error::new(
            ErrorCode::InvalidParameterCombination,
            format!("The parameter {what} is not supported for {volume_type} volumes."),
        )
    };
    if throughput.is_some() && volume_type != "gp3" {
        return Err(combination("throughput"));
    }
    let (lo, hi, per_gib) = match volume_type {
        "gp3" => (3000, 16000, 500),
        "io1" => (100, 64000, 50),
        "io2" => (100, 256000, 1000),
        _ => {
            if iops.is_some() {
                return Err(combination("iops"));
            }
            return Ok(VolumePerformance::default());
        }
    };
    let iops = match (iops, volume_type) {
        (Some(n), _) => Some(n),
        (None, "gp3") => None,
        (None, _) => {
            return Err(Error::new(
                ErrorCode::MissingParameter,
                format!("The request must contain the parameter iops for {volume_type} volumes"),
            ))
        }
    };
    if let Some(n) = iops {
        if n < lo {
            return Err(Error::invalid_value(format!(
                "Volume iops of {n} is too low; minimum is {lo}."
            )));
        }
        if n > hi {
            return Err(Error::invalid_value(format!(
                "Volume iops of {n} is too high; maximum is {hi}."
            )));
        }
        if n > per_gib * size_gib && n > lo {
            return Err(Error::invalid_value(format!(
                "Iops to volume size ratio of {:.6} is too high; maximum is {:.6}.",
                n as f64 / size_gib as f64,
                per_gib as f64
            )));
        }
    }
    if let Some(t) = throughput {
        if !(125..=1000).contains(&t) {
            return Err(Error::invalid_value(format!(
                "Throughput of {t} MiB/s is outside the range 125-1000 MiB/s for gp3 volumes."
            )));
        }
        let with = iops.unwrap_or(3000);
        if t * 4 > with && t > 125 {
            return Err(Error::invalid_value(format!(
                "Throughput to iops ratio of {:.6} is too high; maximum is 0.250000.",
                t as f64 / with as f64
            )));
        }
    }
    Ok(VolumePerformance { iops, throughput })
}

/// The IOPS and throughput EC2 shows for a volume.
pub(crate) fn performance_shown(
    volume_type: &str,
    size_gib: u64,
    p: VolumePerformance,
) -> (Option<u64>, Option<u64>) {
    let iops = match volume_type {
        "gp3" => Some(p.iops.unwrap_or(3000)),
        "gp2" => Some((size_gib * 3).clamp(100, 16000)),
        "io1" | "io2" => p.iops,
        _ => None,
    };
    let throughput = (volume_type == "gp3").then(|| p.throughput.unwrap_or(125));
    (iops, throughput)
}

fn size_check(volume_type: &str, size: u64) -> Result<()> {
    let (lo, hi) = volume_size_limits(volume_type)?;
    if size < lo {
        return Err(Error::invalid_value(format!(
            "Volume of {size}GiB is too small for volume type {volume_type}; minimum is {lo}GiB."
        )));
    }
    if size > hi {
        return Err(Error::invalid_value(format!(
            "Volume of {size}GiB is too large for volume type {volume_type}; maximum is {hi}GiB."
        )));
    }
    Ok(())
}

fn modification_shown(m: &VolumeModificationState) -> VolumeModification {
    let (oi, ot) = performance_shown(
        &m.original_type,
        m.original_size,
        VolumePerformance {
            iops: m.original_iops,
            throughput: m.original_throughput,
        },
    );
    let (ti, tt) = performance_shown(
        &m.target_type,
        m.target_size,
        VolumePerformance {
            iops: m.target_iops,
            throughput: m.target_throughput,
        },
    );
    VolumeModification {
        volume_id: m.volume_id.clone(),
        modification_state: m.state.clone(),
        status_message: m.status_message.clone(),
        target_size: m.target_size,
        target_iops: ti.unwrap_or(0),
        target_volume_type: m.target_type.clone(),
        target_throughput: tt,
        target_multi_attach_enabled: false,
        original_size: m.original_size,
        original_iops: oi.unwrap_or(0),
        original_volume_type: m.original_type.clone(),
        original_throughput: ot,
        original_multi_attach_enabled: false,
        progress: if m.state == "completed" { 100 } else { 0 },
        start_time: m.start_time.clone(),
        end_time: m.end_time.clone(),
    }
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

    /// `CreateVolume`: a blank volume of `Size` GiB, or one from a snapshot.
    pub fn create_volume(&mut self, caller: &Caller, req: CreateVolumeRequest) -> Result<Value> {
        let zone = match (&req.availability_zone, &req.availability_zone_id) {
            (Some(z), _) => z.clone(),
            (None, Some(id)) => id.clone(),
            (None, None) => return Err(Error::missing("AvailabilityZone")),
        };
        if zone != zone_of(&caller.region) {
            return Err(Error::invalid_value(format!(
                "Invalid availability zone: [{zone}]"
            )));
        }
        if req.encrypted == Some(true) {
            return Err(Error::new(
                ErrorCode::UnsupportedOperation,
                "amirun does not encrypt volumes; leave Encrypted out or false",
            ));
        }
        if req.multi_attach_enabled == Some(true) {
            return Err(Error::new(
                ErrorCode::UnsupportedOperation,
                "amirun volumes attach to one instance at a time; leave MultiAttachEnabled out or false",
            ));
        }
        let volume_type = req.volume_type.clone().unwrap_or_else(|| "gp2".into());
        volume_size_limits(&volume_type)?;
        let snapshot = match &req.snapshot_id {
            Some(s) => {
                super::check_snapshot_id(s)?;
                let snap = self
                    .store
                    .read(|db| db.snapshot(s))?
                    .filter(|x| {
                        x.region == caller.region
                            && (x.owner_id == caller.account || x.catalog_key.is_some())
                            && x.state == SnapshotStateName::Completed
                    })
                    .ok_or_else(|| super::snapshot_not_found(s))?;
                Some(snap)
            }
            None => None,
        };
        let snapshot_gib = snapshot.as_ref().map(|s| s.volume_size_gib);
        let size = match (req.size, snapshot_gib) {
            (Some(n), _) => n,
            (None, Some(g)) => g.max(volume_size_limits(&volume_type)?.0),
            (None, None) => {
                return Err(Error::new(
                    ErrorCode::MissingParameter,
                    "The request must contain the parameter size or snapshotId",
                ))
            }
        };
        size_check(&volume_type, size)?;
        if let (Some(g), Some(s)) = (snapshot_gib, &req.snapshot_id) {
            if size < g {
                return Err(Error::invalid_value(format!(
                    "Volume of {size}GiB is smaller than snapshot '{s}', expect size >= {g}GiB"
                )));
            }
        }
        let perf = check_performance(&volume_type, size, req.iops, req.throughput)?;
        let tags = super::images::tags_for(&req.tag_specifications, "volume")?;
        // The snapshot's data, local.
        let base = match &snapshot {
            Some(s) => Some(match super::layers::data_path(&self.paths, s) {
                Some(p) if p.exists() => p,
                _ => {
                    self.fetch_snapshot_data(caller, s)?;
                    let fresh = self
                        .store
                        .read(|db| db.snapshot(&s.snapshot_id))?
                        .ok_or_else(|| super::snapshot_not_found(&s.snapshot_id))?;
                    super::layers::data_path(&self.paths, &fresh).ok_or_else(|| {
                        Error::internal(format!("Snapshot {} has no data", s.snapshot_id))
                    })?
                }
            }),
            None => None,
        };
        // `ClientToken`: the volume's id comes from it, so a repeat finds
        // the volume the first request made (EC2's mismatch error when the
        // parameters differ).
        let volume_id = match &req.client_token {
            Some(token) => super::client_token_id(IdKind::Volume, caller, token)?,
            None => ids::new_id(IdKind::Volume),
        };
        let _lock = object_lock::lock(&self.paths, &volume_id)?;
        if let Some(token) = &req.client_token {
            if let Some(made) = self
                .store
                .read(|db| db.volume(&volume_id))?
                .filter(|v| v.owner_id == caller.account)
            {
                let same = made.size_gib == size
                    && made.volume_type == volume_type
                    && made.availability_zone == zone
                    && made.snapshot_id == req.snapshot_id;
                if !same {
                    return Err(super::idempotent_mismatch(token));
                }
                drop(_lock);
                return self.volume_json(caller, &volume_id);
            }
        }
        let record = VolumeState {
            volume_id: volume_id.clone(),
            region: caller.region.clone(),
            owner_id: caller.account.to_string(),
            size_gib: size,
            snapshot_id: req.snapshot_id.clone(),
            state: VolumeStateName::Creating,
            create_time: now(),
            availability_zone: zone,
            volume_type,
            instance_id: None,
            device: None,
            attach_time: None,
            delete_on_termination: false,
        };
        // Intent: the record, `creating`; then the file; then `available`.
        self.store.write(|db| -> Result<()> {
            db.put_volume(&record)?;
            db.put_volume_performance(&volume_id, perf)?;
            for (k, v) in &tags {
                db.put_tag(&volume_id, k, v)?;
            }
            Ok(())
        })?;
        failpoint("create-volume:intent")?;
        let path = self.paths.volume(&volume_id);
        let made = (|| -> Result<()> {
            std::fs::create_dir_all(self.paths.volume_dir()).map_err(|e| {
                Error::internal("Cannot create the volume directory").with_source(e)
            })?;
            let bytes = gib_to_bytes(size)?;
            match &base {
                Some(b) => crate::disk::create_overlay(b, "qcow2", &path, Some(bytes))?,
                None => crate::disk::create_blank(&path, bytes)?,
            }
            Ok(())
        })();
        if let Err(e) = made {
            let _ = std::fs::remove_file(&path);
            self.store.write(|db| db.delete_volume(&volume_id))?;
            return Err(e);
        }
        failpoint("create-volume:file")?;
        let id = volume_id.clone();
        self.store.write(|db| -> Result<()> {
            if let Some(mut v) = db.volume(&id)? {
                v.state = VolumeStateName::Available;
                db.put_volume(&v)?;
            }
            Ok(())
        })?;
        self.volume_json(caller, &volume_id)
    }

    /// One volume as `CreateVolume` answers it.
    fn volume_json(&mut self, caller: &Caller, volume_id: &str) -> Result<Value> {
        let shown = self.describe_volumes(
            caller,
            crate::service::instances::DescribeVolumesRequest {
                volume_ids: vec![volume_id.to_string()],
                filters: Vec::new(),
                max_results: None,
                next_token: None,
            },
        )?;
        Ok(serde_json::to_value(&shown.volumes[0]).expect("volumes serialize"))
    }

    /// `AttachVolume`: to a running instance (hot-plugged) or a stopped one
    /// (a disk from its next start).
    pub fn attach_volume(
        &mut self,
        caller: &Caller,
        req: AttachVolumeRequest,
    ) -> Result<VolumeAttachment> {
        check_volume_id(&req.volume_id)?;
        check_instance_ids(std::slice::from_ref(&req.instance_id))?;
        check_device_name(&req.device)?;
        let _ilock = object_lock::lock(&self.paths, &req.instance_id)?;
        let _vlock = object_lock::lock(&self.paths, &req.volume_id)?;
        let mut i = self
            .owned_instances(caller, std::slice::from_ref(&req.instance_id))?
            .remove(0);
        let mut v = self.owned_volume(caller, &req.volume_id)?;
        if v.instance_id.is_some() || v.state == VolumeStateName::InUse {
            return Err(Error::new(
                ErrorCode::VolumeInUse,
                format!("{} is already attached to an instance", v.volume_id),
            ));
        }
        if v.state != VolumeStateName::Available {
            return Err(Error::new(
                ErrorCode::IncorrectState,
                format!("The volume '{}' is not 'available'.", v.volume_id),
            ));
        }
        if v.availability_zone != zone_of(&i.region) {
            return Err(Error::new(
                ErrorCode::InvalidVolumeZoneMismatch,
                format!(
                    "The volume '{}' is not in the same availability zone as instance '{}'",
                    v.volume_id, i.instance_id
                ),
            ));
        }
        let running = match i.state {
            InstanceStateName::Running => true,
            InstanceStateName::Stopped => false,
            s => {
                return Err(Error::incorrect_instance_state(format!(
                    "Instance '{}' is not 'running' or 'stopped' (it is {s}).",
                    i.instance_id
                )))
            }
        };
        if i.devices.iter().any(|d| d.device_name == req.device) {
            return Err(Error::invalid_value(format!(
                "Invalid value '{}' for unixDevice. Attachment point {} is already in use",
                req.device, req.device
            )));
        }
        let attach_time = now();
        if running {
            let intent = AttachIntent {
                volume_id: v.volume_id.clone(),
                instance_id: i.instance_id.clone(),
                device: req.device.clone(),
                op: "attach".into(),
                delete_on_termination: false,
                started: attach_time.clone(),
            };
            self.store.write(|db| db.put_attach_intent(&intent))?;
            failpoint("attach-volume:intent")?;
            let path = std::path::absolute(self.paths.volume(&v.volume_id))
                .map_err(|e| Error::internal("Cannot resolve the volume's path").with_source(e))?;
            let plugged = self.disk_request(
                &i.instance_id,
                DiskRequest::Attach {
                    serial: crate::machine::volume_serial(&v.volume_id),
                    path,
                },
            );
            if let Err(e) = plugged {
                self.store
                    .write(|db| db.delete_attach_intent(&intent.volume_id))?;
                return Err(Error::internal(format!(
                    "The supervisor of {} could not plug {} in",
                    i.instance_id, v.volume_id
                ))
                .with_source(e));
            }
            failpoint("attach-volume:plugged")?;
        }
        v.state = VolumeStateName::InUse;
        v.instance_id = Some(i.instance_id.clone());
        v.device = Some(req.device.clone());
        v.attach_time = Some(attach_time.clone());
        v.delete_on_termination = false;
        i.devices.push(InstanceDevice {
            device_name: req.device.clone(),
            volume_id: Some(v.volume_id.clone()),
            virtual_name: None,
            size_gib: v.size_gib,
            delete_on_termination: false,
            attach_time: attach_time.clone(),
        });
        self.store.write(|db| -> Result<()> {
            db.put_volume(&v)?;
            db.put_instance(&i)?;
            db.delete_attach_intent(&v.volume_id)?;
            Ok(())
        })?;
        Ok(VolumeAttachment {
            attach_time: Some(attach_time),
            device: req.device,
            instance_id: i.instance_id,
            state: "attached".into(),
            volume_id: v.volume_id,
            delete_on_termination: false,
        })
    }

    /// `DetachVolume`: the guest of a running instance is asked to let go
    /// first (`Force` waits less); the root volume of a running instance
    /// stays.
    pub fn detach_volume(
        &mut self,
        caller: &Caller,
        req: DetachVolumeRequest,
    ) -> Result<VolumeAttachment> {
        check_volume_id(&req.volume_id)?;
        if let Some(iid) = &req.instance_id {
            check_instance_ids(std::slice::from_ref(iid))?;
        }
        self.refresh_instances(caller)?;
        let v = self.owned_volume(caller, &req.volume_id)?;
        let Some(iid) = v.instance_id.clone() else {
            return Err(Error::new(
                ErrorCode::IncorrectState,
                format!("Volume '{}' is in the '{}' state.", v.volume_id, v.state),
            ));
        };
        let wrong_instance = req.instance_id.as_ref().is_some_and(|x| *x != iid);
        let wrong_device = req
            .device
            .as_ref()
            .is_some_and(|d| Some(d) != v.device.as_ref());
        if wrong_instance || wrong_device {
            return Err(Error::new(
                ErrorCode::InvalidAttachmentNotFound,
                format!(
                    "Volume '{}' can not be detached from '{}' as '{}': it is attached to '{iid}' as '{}'",
                    v.volume_id,
                    req.instance_id.as_deref().unwrap_or(&iid),
                    req.device.as_deref().unwrap_or_default(),
                    v.device.as_deref().unwrap_or_default()
                ),
            ));
        }
        let _ilock = object_lock::lock(&self.paths, &iid)?;
        let _vlock = object_lock::lock(&self.paths, &v.volume_id)?;
        let mut i = self
            .owned_instances(caller, std::slice::from_ref(&iid))?
            .remove(0);
        let mut v = self.owned_volume(caller, &req.volume_id)?;
        if v.instance_id.as_deref() != Some(iid.as_str()) {
            return Err(Error::new(
                ErrorCode::IncorrectState,
                format!("Volume '{}' is in the '{}' state.", v.volume_id, v.state),
            ));
        }
        let device = v.device.clone().unwrap_or_default();
        let running = match i.state {
            InstanceStateName::Running => true,
            InstanceStateName::Stopped => false,
            s => {
                return Err(Error::incorrect_instance_state(format!(
                    "Instance '{iid}' is {s}; detach volumes when it is running or stopped."
                )))
            }
        };
        if running && device == i.root_device_name {
            return Err(Error::new(
                ErrorCode::IncorrectState,
                format!(
                    "Unable to detach root volume '{}' from instance '{iid}'",
                    v.volume_id
                ),
            ));
        }
        if running {
            let intent = AttachIntent {
                volume_id: v.volume_id.clone(),
                instance_id: iid.clone(),
                device: device.clone(),
                op: "detach".into(),
                delete_on_termination: v.delete_on_termination,
                started: now(),
            };
            self.store.write(|db| db.put_attach_intent(&intent))?;
            failpoint("detach-volume:intent")?;
            let timeout_secs = if req.force == Some(true) {
                FORCED_DETACH_TIMEOUT_SECS
            } else {
                DETACH_TIMEOUT_SECS
            };
            let unplugged = self.disk_request(
                &iid,
                DiskRequest::Detach {
                    serial: crate::machine::volume_serial(&v.volume_id),
                    timeout_secs,
                },
            );
            if let Err(e) = unplugged {
                self.store
                    .write(|db| db.delete_attach_intent(&intent.volume_id))?;
                return Err(Error::new(
                    ErrorCode::IncorrectState,
                    format!(
                        "The guest of {iid} did not release {}; it stays attached (retry, or stop the instance)",
                        v.volume_id
                    ),
                )
                .with_source(e));
            }
            failpoint("detach-volume:unplugged")?;
        }
        let attach_time = v.attach_time.clone();
        let delete_on_termination = v.delete_on_termination;
        v.state = VolumeStateName::Available;
        v.instance_id = None;
        v.device = None;
        v.attach_time = None;
        i.devices
            .retain(|d| d.volume_id.as_deref() != Some(v.volume_id.as_str()));
        self.store.write(|db| -> Result<()> {
            db.put_volume(&v)?;
            db.put_instance(&i)?;
            db.delete_attach_intent(&v.volume_id)?;
            Ok(())
        })?;
        Ok(VolumeAttachment {
            attach_time,
            device,
            instance_id: iid,
            state: "detached".into(),
            volume_id: v.volume_id,
            delete_on_termination,
        })
    }

    /// `DeleteVolume`: only a volume that is not attached.
    pub fn delete_volume(&mut self, caller: &Caller, req: DeleteVolumeRequest) -> Result<()> {
        check_volume_id(&req.volume_id)?;
        self.refresh_instances(caller)?;
        let _lock = object_lock::lock(&self.paths, &req.volume_id)?;
        let mut v = self.owned_volume(caller, &req.volume_id)?;
        if let Some(iid) = &v.instance_id {
            return Err(Error::new(
                ErrorCode::VolumeInUse,
                format!("Volume {} is currently attached to {iid}", v.volume_id),
            ));
        }
        if !matches!(
            v.state,
            VolumeStateName::Available | VolumeStateName::Deleting | VolumeStateName::Error
        ) {
            return Err(Error::new(
                ErrorCode::IncorrectState,
                format!("The volume '{}' is '{}'.", v.volume_id, v.state),
            ));
        }
        v.state = VolumeStateName::Deleting;
        self.store.write(|db| db.put_volume(&v))?;
        failpoint("delete-volume:intent")?;
        self.finish_volume_delete(&v.volume_id)
    }

    fn finish_volume_delete(&mut self, volume_id: &str) -> Result<()> {
        for f in [
            self.paths.volume(volume_id),
            self.paths.volume_pending(volume_id),
        ] {
            match std::fs::remove_file(&f) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(
                        Error::internal(format!("Cannot remove {}", f.display())).with_source(e)
                    )
                }
            }
        }
        failpoint("delete-volume:file")?;
        self.store.write(|db| db.delete_volume(volume_id))?;
        Ok(())
    }

    /// `ModifyVolume`: grow a volume (online under a running guest), change
    /// its type, IOPS or throughput, within EC2's limits.
    pub fn modify_volume(
        &mut self,
        caller: &Caller,
        req: ModifyVolumeRequest,
    ) -> Result<ModifyVolumeResult> {
        check_volume_id(&req.volume_id)?;
        if req.multi_attach_enabled == Some(true) {
            return Err(Error::new(
                ErrorCode::UnsupportedOperation,
                "amirun volumes attach to one instance at a time; leave MultiAttachEnabled out or false",
            ));
        }
        self.refresh_instances(caller)?;
        let v = self.owned_volume(caller, &req.volume_id)?;
        let _ilock = match &v.instance_id {
            Some(iid) => Some(object_lock::lock(&self.paths, iid)?),
            None => None,
        };
        let _vlock = object_lock::lock(&self.paths, &v.volume_id)?;
        let mut v = self.owned_volume(caller, &req.volume_id)?;
        if !matches!(v.state, VolumeStateName::Available | VolumeStateName::InUse) {
            return Err(Error::new(
                ErrorCode::IncorrectState,
                format!("The volume '{}' is '{}'.", v.volume_id, v.state),
            ));
        }
        let (perf, last) = self.store.read(|db| -> Result<_> {
            Ok((
                db.volume_performance(&v.volume_id)?,
                db.volume_modifications()?
                    .into_iter()
                    .find(|m| m.volume_id == v.volume_id),
            ))
        })?;
        if last.as_ref().is_some_and(|m| m.state == "modifying") {
            return Err(Error::new(
                ErrorCode::IncorrectModificationState,
                format!(
                    "Volume {} is already being modified; wait for the modification to complete",
                    v.volume_id
                ),
            ));
        }
        let target_type = req.volume_type.clone().unwrap_or(v.volume_type.clone());
        let target_size = req.size.unwrap_or(v.size_gib);
        if target_size < v.size_gib {
            return Err(Error::invalid_value(format!(
                "New size cannot be smaller than existing size (volume {} is {}GiB, asked for {target_size}GiB)",
                v.volume_id, v.size_gib
            )));
        }
        size_check(&target_type, target_size)?;
        let type_changes = target_type != v.volume_type;
        let target_perf = check_performance(
            &target_type,
            target_size,
            req.iops.or(if type_changes { None } else { perf.iops }),
            req.throughput
                .or(if type_changes { None } else { perf.throughput }),
        )?;
        if target_size == v.size_gib && !type_changes && target_perf == perf {
            return Err(Error::new(
                ErrorCode::InvalidParameterCombination,
                format!(
                    "Volume {} already has this size, type, IOPS and throughput; ask for a change",
                    v.volume_id
                ),
            ));
        }
        let mut m = VolumeModificationState {
            volume_id: v.volume_id.clone(),
            state: "modifying".into(),
            status_message: None,
            original_size: v.size_gib,
            target_size,
            original_type: v.volume_type.clone(),
            target_type: target_type.clone(),
            original_iops: perf.iops,
            target_iops: target_perf.iops,
            original_throughput: perf.throughput,
            target_throughput: target_perf.throughput,
            start_time: now(),
            end_time: None,
        };
        self.store.write(|db| db.put_volume_modification(&m))?;
        failpoint("modify-volume:intent")?;
        if target_size > v.size_gib {
            let bytes = gib_to_bytes(target_size)?;
            let running = match &v.instance_id {
                Some(iid) => self
                    .store
                    .read(|db| db.instance(iid))?
                    .is_some_and(|i| i.state == InstanceStateName::Running),
                None => false,
            };
            let grown = if running {
                let iid = v.instance_id.clone().expect("attached");
                self.disk_request(
                    &iid,
                    DiskRequest::Resize {
                        serial: crate::machine::volume_serial(&v.volume_id),
                        size: bytes,
                    },
                )
                .map(drop)
            } else {
                crate::disk::resize(&self.paths.volume(&v.volume_id), bytes).map_err(Error::from)
            };
            if let Err(e) = grown {
                m.state = "failed".into();
                m.status_message = Some(e.to_string());
                m.end_time = Some(now());
                self.store.write(|db| db.put_volume_modification(&m))?;
                return Err(e);
            }
            failpoint("modify-volume:grown")?;
        }
        m.state = "completed".into();
        m.end_time = Some(now());
        v.size_gib = target_size;
        v.volume_type = target_type;
        self.commit_modification(&v, &m, target_perf)?;
        Ok(ModifyVolumeResult {
            volume_modification: modification_shown(&m),
        })
    }

    /// Record a finished modification: the volume's size, type and
    /// performance, the attached instance's device size, the modification.
    fn commit_modification(
        &mut self,
        v: &VolumeState,
        m: &VolumeModificationState,
        perf: VolumePerformance,
    ) -> Result<()> {
        self.store.write(|db| -> Result<()> {
            db.put_volume(v)?;
            db.put_volume_performance(&v.volume_id, perf)?;
            db.put_volume_modification(m)?;
            if let Some(iid) = &v.instance_id {
                if let Some(mut i) = db.instance(iid)? {
                    for d in &mut i.devices {
                        if d.volume_id.as_deref() == Some(v.volume_id.as_str()) {
                            d.size_gib = v.size_gib;
                        }
                    }
                    db.put_instance(&i)?;
                }
            }
            Ok(())
        })
    }

    /// `DescribeVolumesModifications`: the last modification of each volume.
    pub fn describe_volumes_modifications(
        &mut self,
        caller: &Caller,
        req: DescribeVolumesModificationsRequest,
    ) -> Result<DescribeVolumesModificationsResult> {
        let paging = Paging::of(req.max_results, &req.next_token);
        for id in &req.volume_ids {
            check_volume_id(id)?;
        }
        filter::check_names(&req.filters, MODIFICATION_FILTERS)?;
        let (mods, volumes) = self.store.read(|db| -> Result<_> {
            Ok((
                db.volume_modifications()?,
                db.volumes_in_region(&caller.region)?,
            ))
        })?;
        let owned = |id: &str| {
            volumes
                .iter()
                .any(|v| v.volume_id == id && v.owner_id == caller.account)
        };
        for id in &req.volume_ids {
            if !owned(id) {
                return Err(volume_not_found(id));
            }
        }
        let out = mods
            .iter()
            .filter(|m| owned(&m.volume_id))
            .filter(|m| req.volume_ids.is_empty() || req.volume_ids.contains(&m.volume_id))
            .filter(|m| {
                filter::matches(&req.filters, |name| match name {
                    "modification-state" => vec![m.state.clone()],
                    "original-size" => vec![m.original_size.to_string()],
                    "original-volume-type" => vec![m.original_type.clone()],
                    "start-time" => vec![m.start_time.clone()],
                    "target-size" => vec![m.target_size.to_string()],
                    "target-volume-type" => vec![m.target_type.clone()],
                    "volume-id" => vec![m.volume_id.clone()],
                    n => filter::shown_values(&modification_shown(m), n),
                })
            })
            .map(modification_shown)
            .collect();
        let (volumes_modifications, next_token) = super::paging::page(out, &paging, 5, 500)?;
        Ok(DescribeVolumesModificationsResult {
            volumes_modifications,
            next_token,
        })
    }

    /// Settle what killed volume operations left (see the module doc); one
    /// that cannot be settled now is logged and left for the next pass.
    pub(crate) fn recover_volumes(&mut self) -> Result<()> {
        let (creating, deleting, intents, modifying) = self.store.read(|db| -> Result<_> {
            Ok((
                db.volumes_in_state(VolumeStateName::Creating)?,
                db.volumes_in_state(VolumeStateName::Deleting)?,
                db.attach_intents()?,
                db.volume_modifications()?
                    .into_iter()
                    .filter(|m| m.state == "modifying")
                    .collect::<Vec<_>>(),
            ))
        })?;
        for v in creating {
            let Some(_lock) = try_lock(&self.paths, &v.volume_id)? else {
                continue;
            };
            let path = self.paths.volume(&v.volume_id);
            let whole = crate::disk::info(&path).is_ok_and(|i| i.format == "qcow2");
            let id = v.volume_id.clone();
            self.store.write(|db| -> Result<()> {
                match db.volume(&id)? {
                    Some(mut v) if v.state == VolumeStateName::Creating => {
                        if whole {
                            v.state = VolumeStateName::Available;
                            db.put_volume(&v)?;
                        } else {
                            db.delete_volume(&id)?;
                        }
                    }
                    _ => {}
                }
                Ok(())
            })?;
            if !whole {
                let _ = std::fs::remove_file(&path);
            }
            tracing::debug!(volume = %v.volume_id, kept = whole, "recovery: interrupted create-volume settled");
        }
        for v in deleting {
            let Some(_lock) = try_lock(&self.paths, &v.volume_id)? else {
                continue;
            };
            if let Err(e) = self.finish_volume_delete(&v.volume_id) {
                tracing::warn!(volume = %v.volume_id, "recovery: cannot finish the delete: {e}");
            }
        }
        for intent in intents {
            let Some(_ilock) = try_lock(&self.paths, &intent.instance_id)? else {
                continue;
            };
            let Some(_vlock) = try_lock(&self.paths, &intent.volume_id)? else {
                continue;
            };
            if let Err(e) = self.settle_attach_intent(&intent) {
                tracing::warn!(volume = %intent.volume_id, "recovery: cannot settle the {}: {e}", intent.op);
            }
        }
        for m in modifying {
            let Some(v) = self.store.read(|db| db.volume(&m.volume_id))? else {
                continue;
            };
            let _ilock = match &v.instance_id {
                Some(iid) => match try_lock(&self.paths, iid)? {
                    Some(l) => Some(l),
                    None => continue,
                },
                None => None,
            };
            let Some(_vlock) = try_lock(&self.paths, &m.volume_id)? else {
                continue;
            };
            if let Err(e) = self.settle_modification(v, m) {
                tracing::warn!("recovery: cannot settle a volume modification: {e}");
            }
        }
        Ok(())
    }

    /// An attach or detach whose writer died: the guest decides.
    fn settle_attach_intent(&mut self, intent: &AttachIntent) -> Result<()> {
        let serial = crate::machine::volume_serial(&intent.volume_id);
        let has_disk = self
            .disk_request(
                &intent.instance_id,
                DiskRequest::Find {
                    serial: serial.clone(),
                },
            )
            .map(|v| !v.is_null())
            .unwrap_or(false);
        // Attach or detach alike: the volume is attached iff the guest has it.
        let attached = has_disk;
        let intent = intent.clone();
        self.store.write(|db| -> Result<()> {
            db.delete_attach_intent(&intent.volume_id)?;
            let (Some(mut v), Some(mut i)) = (
                db.volume(&intent.volume_id)?,
                db.instance(&intent.instance_id)?,
            ) else {
                return Ok(());
            };
            let listed = i
                .devices
                .iter()
                .any(|d| d.volume_id.as_deref() == Some(intent.volume_id.as_str()));
            if attached && !listed {
                let when = now();
                v.state = VolumeStateName::InUse;
                v.instance_id = Some(i.instance_id.clone());
                v.device = Some(intent.device.clone());
                v.attach_time = Some(when.clone());
                v.delete_on_termination = intent.delete_on_termination;
                i.devices.push(InstanceDevice {
                    device_name: intent.device.clone(),
                    volume_id: Some(v.volume_id.clone()),
                    virtual_name: None,
                    size_gib: v.size_gib,
                    delete_on_termination: intent.delete_on_termination,
                    attach_time: when,
                });
            } else if !attached && listed {
                v.state = VolumeStateName::Available;
                v.instance_id = None;
                v.device = None;
                v.attach_time = None;
                i.devices
                    .retain(|d| d.volume_id.as_deref() != Some(v.volume_id.as_str()));
            }
            db.put_volume(&v)?;
            db.put_instance(&i)?;
            Ok(())
        })?;
        tracing::debug!(volume = %intent.volume_id, attached, "recovery: interrupted {} settled", intent.op);
        Ok(())
    }

    /// A modification whose writer died: the file's size decides.
    fn settle_modification(
        &mut self,
        mut v: VolumeState,
        mut m: VolumeModificationState,
    ) -> Result<()> {
        let size = crate::disk::info(&self.paths.volume(&v.volume_id))?.virtual_size;
        if size >= gib_to_bytes(m.target_size)? {
            m.state = "completed".into();
            v.size_gib = m.target_size;
            v.volume_type = m.target_type.clone();
            let perf = VolumePerformance {
                iops: m.target_iops,
                throughput: m.target_throughput,
            };
            m.end_time = Some(now());
            self.commit_modification(&v, &m, perf)
        } else {
            m.state = "failed".into();
            m.status_message =
                Some("The modification was interrupted; modify the volume again".into());
            m.end_time = Some(now());
            self.store.write(|db| db.put_volume_modification(&m))?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_follow_ec2() {
        for ok in [
            "/dev/sdf",
            "/dev/sdp",
            "/dev/sdb1",
            "/dev/sdz15",
            "/dev/xvdf",
            "/dev/xvdba",
            "/dev/hdb",
        ] {
            assert!(check_device_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "sdf",
            "/dev/sda",
            "/dev/sdf16",
            "/dev/sdf0",
            "/dev/xvda1",
            "/dev/vdb",
            "/dev/nvme1n1",
            "/dev/sd",
        ] {
            let e = check_device_name(bad).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidParameterValue, "{bad}");
            assert!(
                e.message().contains("is not a valid EBS device name"),
                "{}",
                e.message()
            );
        }
    }

    #[test]
    fn iops_and_throughput_follow_ec2_per_type() {
        assert_eq!(
            check_performance("gp3", 10, None, None).unwrap(),
            VolumePerformance::default()
        );
        assert!(check_performance("gp3", 10, Some(5000), None).is_ok());
        // 500 IOPS per GiB.
        assert!(check_performance("gp3", 8, Some(5000), None).is_err());
        assert!(check_performance("gp3", 100, Some(20000), None).is_err());
        assert_eq!(
            check_performance("gp2", 10, Some(100), None)
                .unwrap_err()
                .code(),
            ErrorCode::InvalidParameterCombination
        );
        assert_eq!(
            check_performance("io1", 10, None, None).unwrap_err().code(),
            ErrorCode::MissingParameter
        );
        assert!(check_performance("io1", 10, Some(500), None).is_ok());
        assert!(check_performance("io1", 10, Some(501), None).is_err());
        assert!(check_performance("io2", 10, Some(10000), None).is_ok());
        // gp3 throughput: 125-1000 MiB/s and at most IOPS/4.
        assert!(check_performance("gp3", 10, None, Some(750)).is_ok());
        assert!(check_performance("gp3", 10, None, Some(751)).is_err());
        assert!(check_performance("gp3", 100, Some(8000), Some(1000)).is_ok());
        assert_eq!(
            check_performance("io1", 10, Some(100), Some(200))
                .unwrap_err()
                .code(),
            ErrorCode::InvalidParameterCombination
        );
        assert_eq!(
            performance_shown("gp2", 10, VolumePerformance::default()),
            (Some(100), None)
        );
        assert_eq!(
            performance_shown("gp3", 10, VolumePerformance::default()),
            (Some(3000), Some(125))
        );
    }
}
