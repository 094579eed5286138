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

use super::object_lock::{self, ObjectLock};
use super::shapes::{Filter, Tag, TagSpecification};
use super::{filter, now, Caller, Error, ErrorCode, Result, Service};
use crate::domain::{
    reconcile, BootMode, ImageStateName, InstanceStateName, LiveFacts, Recorded, RootDeviceType,
    ShutdownBehavior, Transition, VolumeStateName,
};
use crate::ids::{self, IdKind};
use crate::instance::supervisor::{self, LaunchSpec, SupervisorClient};
use crate::machine::{
    self, AccelRequest, Arch, Boot, DiskFormat, DiskSpec, MachineSpec, NetSpec, SmbiosIdentity,
};
use crate::network::{self, NetworkStatus};
use crate::store::{
    BlockDeviceMapping, EbsBlockDevice, ImageState, InstanceDevice, InstanceState, VolumeState,
};
use serde::Serialize;
use serde_json::{json, Value};
use std::path::PathBuf;

/// Why [`Service::wait_for_state`] ended without every object in the
/// wanted state; each waiter turns it into its own error.
#[derive(Debug)]
pub enum WaitFailure<S> {
    /// `id` is in `state`, which it cannot leave for the wanted one.
    Hopeless {
        /// The object.
        id: String,
        /// Its state.
        state: S,
    },
    /// The deadline passed; `last` is what the last poll read.
    TimedOut {
        /// Each object's id and state at the last poll.
        last: Vec<(String, S)>,
    },
    /// Reading the states failed.
    Error(Error),
}

/// `run-instances`.
#[derive(Debug, Clone, Default)]
pub struct RunInstancesInput {
    pub image_id: String,
    pub instance_type: Option<String>,
    pub min_count: u32,
    pub max_count: u32,
    pub key_name: Option<String>,
    pub user_data: Option<Vec<u8>>,
    pub block_device_mappings: Vec<BlockDeviceMapping>,
    pub shutdown_behavior: Option<String>,
    pub tag_specifications: Vec<TagSpecification>,
    pub accel: AccelRequest,
    pub metadata_options: Option<Value>,
}

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

/// What `get-console-output` returns (Output as text; the HTTP API base64-encodes it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ConsoleOutput {
    pub instance_id: String,
    pub timestamp: String,
    pub output: String,
}

/// How to log in to an instance (for `amirun ssh`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    pub port: u16,
    pub user: String,
    pub identity_file: Option<PathBuf>,
}

const INSTANCE_FILTERS: &[&str] = &[
    "architecture",
    "availability-zone",
    "image-id",
    "instance-id",
    "instance-state-code",
    "instance-state-name",
    "instance-type",
    "key-name",
    "reservation-id",
    "root-device-type",
    "tag-key",
];

const VOLUME_FILTERS: &[&str] = &[
    "attachment.instance-id",
    "attachment.delete-on-termination",
    "attachment.device",
    "size",
    "snapshot-id",
    "status",
    "volume-id",
    "volume-type",
    "tag-key",
];

/// Files made while launching, removed if the launch fails.
#[derive(Default)]
struct Undo {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    armed: bool,
}

impl Undo {
    fn new() -> Self {
        Undo {
            files: Vec::new(),
            dirs: Vec::new(),
            armed: true,
        }
    }
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if self.armed {
            for f in &self.files {
                let _ = std::fs::remove_file(f);
            }
            for d in &self.dirs {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
}

/// EC2's limit on user data, counted after base64 decoding.
pub(crate) const USER_DATA_LIMIT: usize = 16 * 1024;

/// The most instances one request launches (EC2 launches up to MaxCount
/// within the account's quota; this is amirun's quota).
const LAUNCH_LIMIT: u32 = 64;

/// EC2's MinCount/MaxCount rules: both at least 1, MinCount at most
/// MaxCount. Returns how many instances to launch: MaxCount, or as many as
/// the quota allows when that is still at least MinCount.
fn launch_count(min: u32, max: u32) -> Result<u32> {
    if min == 0 {
        return Err(Error::invalid_value(
            "Minimum instance count must be greater than zero",
        ));
    }
    if max == 0 {
        return Err(Error::invalid_value(
            "Maximum instance count must be greater than zero",
        ));
    }
    if min > max {
        return Err(Error::invalid_value(format!(
            "Minimum instance count ({min}) must be less than or equal to maximum instance count ({max})"
        )));
    }
    if min > LAUNCH_LIMIT {
        return Err(Error::new(
            ErrorCode::InstanceLimitExceeded,
            format!(
                "You have requested more instances ({min}) than your current instance limit of {LAUNCH_LIMIT} allows; ask for at most {LAUNCH_LIMIT}"
            ),
        ));
    }
    Ok(max.min(LAUNCH_LIMIT))
}

/// EC2's size limits, in GiB, of each EBS volume type.
fn volume_size_limits(volume_type: &str) -> Result<(u64, u64)> {
    Ok(match volume_type {
        "gp2" | "gp3" => (1, 16384),
        "io1" => (4, 16384),
        "io2" => (4, 65536),
        "st1" | "sc1" => (125, 16384),
        "standard" => (1, 1024),
        other => {
            return Err(Error::invalid_value(format!(
                "Value ({other}) for parameter volumeType is invalid. Valid values: standard, io1, io2, gp2, gp3, sc1, st1"
            )))
        }
    })
}

/// The size in GiB of a new EBS volume, checked as EC2 checks it: within
/// its type's limits and not smaller than its snapshot (`snapshot_gib`).
fn volume_size_gib(device: &str, ebs: &EbsBlockDevice, snapshot_gib: Option<u64>) -> Result<u64> {
    let volume_type = ebs.volume_type.as_deref().unwrap_or("gp3");
    let (lo, hi) = volume_size_limits(volume_type)?;
    let size = match (ebs.volume_size, snapshot_gib) {
        (Some(size), _) => size,
        (None, Some(snap)) => snap.max(lo),
        (None, None) => {
            return Err(Error::new(
                ErrorCode::InvalidBlockDeviceMapping,
                format!("The block device mapping of {device} needs a VolumeSize or a SnapshotId"),
            ))
        }
    };
    if size < lo {
        return Err(Error::invalid_value(format!(
            "Volume of {size}GiB is too small for volume type {volume_type} ({device}); minimum is {lo}GiB"
        )));
    }
    if size > hi {
        return Err(Error::invalid_value(format!(
            "Volume of {size}GiB is too large for volume type {volume_type} ({device}); maximum is {hi}GiB"
        )));
    }
    if let (Some(snap), Some(id)) = (snapshot_gib, &ebs.snapshot_id) {
        if size < snap {
            return Err(Error::new(
                ErrorCode::InvalidBlockDeviceMapping,
                format!("Volume of size {size}GB is smaller than snapshot '{id}', expect size >= {snap}GB"),
            ));
        }
    }
    Ok(size)
}

/// GiB to bytes, refusing what does not fit in 64 bits.
fn gib_to_bytes(gib: u64) -> Result<u64> {
    gib.checked_mul(1 << 30)
        .ok_or_else(|| Error::invalid_value(format!("A size of {gib} GiB is too large")))
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

/// A free TCP port on 127.0.0.1 not recorded for another instance.
fn free_port(taken: &[u16]) -> Result<u16> {
    for _ in 0..32 {
        let l = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(io_error("Cannot find a free port on 127.0.0.1".into()))?;
        let p = l
            .local_addr()
            .map_err(io_error("Cannot read a port".into()))?
            .port();
        if !taken.contains(&p) {
            return Ok(p);
        }
    }
    Err(Error::new(
        ErrorCode::InsufficientInstanceCapacity,
        "No free port on 127.0.0.1 for the ssh forward",
    ))
}

/// The login user an image's vendor uses.
fn default_user(image: Option<&ImageState>) -> String {
    match image.and_then(|i| i.owner_alias.as_deref()) {
        // Debian's genericcloud images (the catalog's and ours) log in as
        // `debian`; Debian's AMIs on AWS use `admin`.
        Some("debian") => "debian",
        Some("ubuntu") => "ubuntu",
        Some("amazon") => "ec2-user",
        Some("fedora") => "fedora",
        Some("alpine") => "alpine",
        Some("cirros") => "cirros",
        _ => match image.map(|i| i.name.as_str()) {
            Some(n) if n.starts_with("debian") => "debian",
            _ => "root",
        },
    }
    .to_string()
}

impl Service {
    /// `RunInstances`: launch `max_count` instances of an AMI; returns the reservation.
    pub fn run_instances(&mut self, caller: &Caller, input: &RunInstancesInput) -> Result<Value> {
        let image = self.launchable_image(caller, &input.image_id)?;
        if image.state != ImageStateName::Available {
            return Err(Error::new(
                ErrorCode::InvalidAmiIdUnavailable,
                format!("Image {} is {}, not available", image.image_id, image.state),
            ));
        }
        // EC2's default, whatever the AMI: an arm64 AMI needs a type named.
        let type_name = (input.instance_type.as_deref())
            .unwrap_or(machine::instance_types::DEFAULT_INSTANCE_TYPE)
            .to_string();
        let itype = machine::instance_type(&type_name).ok_or_else(|| {
            Error::invalid_value(format!("Invalid value '{type_name}' for InstanceType."))
        })?;
        if !itype.supports_architecture(image.architecture.as_str()) {
            return Err(Error::invalid_value(
                format!(
                    "The architecture '{}' of the specified instance type does not match the architecture '{}' of the specified AMI. Specify an instance type and an AMI that have matching architectures, and try again. You can use 'describe-instance-types' or 'describe-images' to discover the architecture of the instance type or AMI.",
                    itype.architectures_for_error(),
                    image.architecture
                ),
            ));
        }
        let count = launch_count(input.min_count, input.max_count)?;
        if let Some(u) = &input.user_data {
            if u.len() > USER_DATA_LIMIT {
                return Err(Error::invalid_value(format!(
                    "User data is limited to {USER_DATA_LIMIT} bytes (this is {} bytes after base64 decoding)",
                    u.len()
                )));
            }
        }
        let shutdown = match input.shutdown_behavior.as_deref() {
            None => ShutdownBehavior::Stop,
            Some(given) => given.parse::<ShutdownBehavior>().map_err(|_| {
                Error::invalid_value(format!(
                    "Value ({given}) for parameter InstanceInitiatedShutdownBehavior is invalid; use stop or terminate"
                ))
            })?,
        };
        let public_keys = match &input.key_name {
            Some(k) => vec![self.key_pair(caller, k)?.public_key],
            None => Vec::new(),
        };
        let outbound = guest_outbound(
            super::images::tags_for(&input.tag_specifications, "instance")?
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
            self.options.default_outbound,
        )?;
        let arch = image.architecture.machine();
        machine::find_qemu(arch)?;
        let accel = machine::choose_accel(input.accel, arch, &self.paths.accel_probe_cache())?;
        let boot_mode = resolve_boot_mode(&image, arch)?;
        let metadata_options = metadata_options(input.metadata_options.as_ref())?;
        // Long work first, with no transaction held: make the AMI's data local.
        let fetched = self.fetch_image(caller, &image.image_id)?;
        let mappings = merge_mappings(&image.block_device_mappings, &input.block_device_mappings);
        // Every size is checked before anything is made.
        let mut volume_sizes = Vec::new();
        for m in &mappings {
            let Some(ebs) = &m.ebs else { continue };
            let data = ebs
                .snapshot_id
                .as_ref()
                .and_then(|s| fetched.iter().find(|d| d.snapshot_id.as_deref() == Some(s)));
            if data.is_none() {
                if let Some(s) = &ebs.snapshot_id {
                    return Err(super::snapshot_not_found(s));
                }
            }
            let snapshot_gib = data.map(|d| d.virtual_size.div_ceil(1 << 30));
            let gib = volume_size_gib(&m.device_name, ebs, snapshot_gib)?;
            volume_sizes.push((gib, gib_to_bytes(gib)?));
        }
        let reservation_id = ids::new_id(IdKind::Reservation);
        let launch_time = now();
        // The locks of every new id, taken before its files exist and held
        // until its records are committed (and, for an instance, until its
        // supervisor runs): a process killed at any step leaves either no
        // record (files whose lock is free: the orphan sweep's) or records
        // that reconciliation settles. Declared before `undo`, so that
        // undo's removals happen while the locks are still held.
        let mut instance_locks: Vec<ObjectLock> = Vec::new();
        let mut volume_locks: Vec<ObjectLock> = Vec::new();
        let mut undo = Undo::new();
        let vdir = self.paths.volume_dir();
        std::fs::create_dir_all(&vdir)
            .map_err(io_error(format!("Cannot create {}", vdir.display())))?;
        let mut instances = Vec::new();
        let mut volumes = Vec::new();
        let mut taken = self.store.read(|db| db.ports_in_use())?;
        for index in 0..count {
            let instance_id = ids::new_id(IdKind::Instance);
            instance_locks.push(object_lock::lock(&self.paths, &instance_id)?);
            failpoint("run-instances:locked")?;
            let dir = self.paths.instance_dir(&instance_id);
            undo.dirs.push(dir.clone());
            std::fs::create_dir_all(&dir)
                .map_err(io_error(format!("Cannot create {}", dir.display())))?;
            let rdir = self.paths.instance_runtime_dir(&instance_id);
            undo.dirs.push(rdir.clone());
            std::fs::create_dir_all(&rdir)
                .map_err(io_error(format!("Cannot create {}", rdir.display())))?;
            failpoint("run-instances:dirs")?;
            let mut devices = Vec::new();
            // Root disk.
            if image.root_device_type == RootDeviceType::InstanceStore {
                let root = fetched
                    .iter()
                    .find(|d| d.snapshot_id.is_none())
                    .ok_or_else(|| Error::internal("Instance-store AMI has no root image"))?;
                crate::disk::create_overlay(
                    std::path::Path::new(&root.path),
                    "qcow2",
                    &self.paths.instance_store_root(&instance_id),
                    None,
                )?;
                devices.push(InstanceDevice {
                    device_name: image.root_device_name.clone(),
                    volume_id: None,
                    virtual_name: Some("root".into()),
                    size_gib: root.virtual_size.div_ceil(1 << 30),
                    delete_on_termination: true,
                    attach_time: launch_time.clone(),
                });
            }
            let mut ephemeral = 0u32;
            let mut sizes = volume_sizes.iter();
            for m in &mappings {
                if let Some(ebs) = &m.ebs {
                    let &(size_gib, size_bytes) = sizes.next().expect("one size per EBS mapping");
                    let volume_id = ids::new_id(IdKind::Volume);
                    volume_locks.push(object_lock::lock(&self.paths, &volume_id)?);
                    let path = self.paths.volume(&volume_id);
                    let data = ebs
                        .snapshot_id
                        .as_ref()
                        .and_then(|s| fetched.iter().find(|d| d.snapshot_id.as_deref() == Some(s)));
                    undo.files.push(path.clone());
                    match data {
                        Some(d) => crate::disk::create_overlay(
                            std::path::Path::new(&d.path),
                            "qcow2",
                            &path,
                            Some(size_bytes),
                        )?,
                        None => crate::disk::create_blank(&path, size_bytes)?,
                    }
                    failpoint("run-instances:volume")?;
                    let delete = ebs.delete_on_termination.unwrap_or(true);
                    volumes.push(VolumeState {
                        volume_id: volume_id.clone(),
                        region: caller.region.clone(),
                        owner_id: caller.account.to_string(),
                        size_gib,
                        snapshot_id: ebs.snapshot_id.clone(),
                        state: VolumeStateName::InUse,
                        create_time: launch_time.clone(),
                        availability_zone: format!("{}a", caller.region),
                        volume_type: ebs.volume_type.clone().unwrap_or_else(|| "gp3".into()),
                        instance_id: Some(instance_id.clone()),
                        device: Some(m.device_name.clone()),
                        attach_time: Some(launch_time.clone()),
                        delete_on_termination: delete,
                    });
                    let dev = InstanceDevice {
                        device_name: m.device_name.clone(),
                        volume_id: Some(volume_id),
                        virtual_name: None,
                        size_gib,
                        delete_on_termination: delete,
                        attach_time: launch_time.clone(),
                    };
                    if m.device_name == image.root_device_name {
                        devices.insert(0, dev);
                    } else {
                        devices.push(dev);
                    }
                } else if let Some(v) = &m.virtual_name {
                    if let Some(&gib) = itype.instance_store_gib.get(ephemeral as usize) {
                        devices.push(InstanceDevice {
                            device_name: m.device_name.clone(),
                            volume_id: None,
                            virtual_name: Some(v.clone()),
                            size_gib: gib,
                            delete_on_termination: true,
                            attach_time: launch_time.clone(),
                        });
                        ephemeral += 1;
                    }
                }
            }
            // Instance-store disks of `d` types that no mapping named.
            for (n, &gib) in itype
                .instance_store_gib
                .iter()
                .enumerate()
                .skip(ephemeral as usize)
            {
                devices.push(InstanceDevice {
                    device_name: format!("/dev/sd{}", (b'b' + n as u8) as char),
                    virtual_name: Some(format!("ephemeral{n}")),
                    volume_id: None,
                    size_gib: gib,
                    delete_on_termination: true,
                    attach_time: launch_time.clone(),
                });
            }
            if devices
                .first()
                .is_none_or(|d| d.device_name != image.root_device_name)
            {
                return Err(Error::new(
                    ErrorCode::InvalidBlockDeviceMapping,
                    format!(
                        "No block device mapping gives the root device {}",
                        image.root_device_name
                    ),
                ));
            }
            if self.options.nocloud_seed {
                crate::metadata::build_seed(
                    &self.paths.seed_image(&instance_id),
                    &crate::metadata::SeedSpec {
                        instance_id: instance_id.clone(),
                        hostname: "ip-169-254-0-15".into(),
                        user_data: input.user_data.clone(),
                        public_keys: public_keys.clone(),
                        network_config: None,
                    },
                )?;
                failpoint("run-instances:seed")?;
            }
            let ssh_port = free_port(&taken)?;
            taken.push(ssh_port);
            let state = InstanceState {
                instance_id: instance_id.clone(),
                region: caller.region.clone(),
                owner_id: caller.account.to_string(),
                reservation_id: reservation_id.clone(),
                image_id: image.image_id.clone(),
                instance_type: type_name.clone(),
                architecture: image.architecture,
                boot_mode,
                root_device_type: image.root_device_type,
                root_device_name: image.root_device_name.clone(),
                state: InstanceStateName::Pending,
                state_reason: None,
                state_transition_reason: None,
                launch_time: launch_time.clone(),
                key_name: input.key_name.clone(),
                user_data: input.user_data.clone(),
                shutdown_behavior: shutdown,
                accel: accel.accel,
                accel_reason: accel.reason.clone(),
                ssh_port: Some(ssh_port),
                imds_port: None,
                launch_index: index,
                metadata_options: metadata_options.clone(),
                devices,
                updated: launch_time.clone(),
            };
            self.prepare_boot_with(&state, outbound)?;
            failpoint("run-instances:prepared")?;
            instances.push(state);
        }
        let tags = super::images::tags_for(&input.tag_specifications, "instance")?;
        let volume_tags = super::images::tags_for(&input.tag_specifications, "volume")?;
        self.store.write(|db| -> Result<()> {
            for v in &volumes {
                db.put_volume(v)?;
                for (k, val) in &volume_tags {
                    db.put_tag(&v.volume_id, k, val)?;
                }
            }
            for i in &instances {
                db.put_instance(i)?;
                for (k, v) in &tags {
                    db.put_tag(&i.instance_id, k, v)?;
                }
            }
            Ok(())
        })?;
        undo.disarm();
        drop(volume_locks);
        failpoint("run-instances:committed")?;
        // Each instance's lock is held until its supervisor runs (or the
        // launch is settled), so no other process takes a launch in
        // progress for a dead instance.
        for (i, lock) in instances.iter().zip(instance_locks) {
            if let Err(e) = self.spawn_supervisor(&i.instance_id, "run-instances") {
                self.record_exit(
                    &i.instance_id,
                    Some("Server.InternalError"),
                    &format!("The supervisor could not start: {e}"),
                )?;
            }
            failpoint("run-instances:started")?;
            drop(lock);
        }
        let shown = self.describe_instances(
            caller,
            &instances
                .iter()
                .map(|i| i.instance_id.clone())
                .collect::<Vec<_>>(),
            &[],
        )?;
        let reservation = shown
            .get("Reservations")
            .and_then(|r| r.get(0))
            .cloned()
            .unwrap_or(Value::Null);
        Ok(reservation)
    }

    /// [`Self::prepare_boot_with`] the guest network its tags choose now.
    fn prepare_boot(&mut self, i: &InstanceState) -> Result<()> {
        let tags = self.store.read(|db| db.tags_of(&i.instance_id))?;
        let outbound = guest_outbound(
            tags.iter().map(|t| (t.key.as_str(), t.value.as_str())),
            self.options.default_outbound,
        )?;
        self.prepare_boot_with(i, outbound)
    }

    /// Create the per-boot files (instance-store disks, UEFI vars) and the launch spec.
    fn prepare_boot_with(&mut self, i: &InstanceState, outbound: machine::Outbound) -> Result<()> {
        let arch = i.architecture.machine();
        let rdir = self.paths.instance_runtime_dir(&i.instance_id);
        std::fs::create_dir_all(&rdir)
            .map_err(io_error(format!("Cannot create {}", rdir.display())))?;
        let mut disks = Vec::new();
        let mut ephemeral = 0u32;
        for d in &i.devices {
            let path = match (&d.volume_id, d.virtual_name.as_deref()) {
                (Some(v), _) => self.paths.volume(v),
                (None, Some("root")) => self.paths.instance_store_root(&i.instance_id),
                (None, _) => {
                    let p = self.paths.ephemeral_disk(&i.instance_id, ephemeral);
                    ephemeral += 1;
                    if !p.exists() {
                        crate::disk::create_blank(&p, gib_to_bytes(d.size_gib)?)?;
                    }
                    p
                }
            };
            if !path.exists() {
                return Err(Error::internal(format!(
                    "Disk {} of {} is missing ({})",
                    d.device_name,
                    i.instance_id,
                    path.display()
                )));
            }
            disks.push(DiskSpec {
                path,
                format: DiskFormat::Qcow2,
                read_only: false,
                serial: Some(match &d.volume_id {
                    Some(v) => machine::volume_serial(v),
                    None => format!("AWS{}", d.virtual_name.as_deref().unwrap_or("ephemeral")),
                }),
            });
        }
        let image = self.store.read(|db| db.image(&i.image_id))?;
        let kernel = image.as_ref().and_then(|im| im.kernel_source.clone());
        let boot = if let Some(kernel) = kernel {
            // Direct kernel boot: the AMI names a kernel (and ramdisk); they
            // are stored byte for byte, never converted like disk images.
            let image = image.expect("kernel came from the image");
            let kernel = self.fetch_opaque(&kernel)?;
            let initrd = match &image.ramdisk_source {
                Some(r) => Some(self.fetch_opaque(r)?),
                None => None,
            };
            Boot::Kernel {
                kernel,
                initrd,
                cmdline: image
                    .kernel_cmdline
                    .clone()
                    .unwrap_or_else(|| format!("console={}", arch.console_device())),
            }
        } else if i.boot_mode == BootMode::LegacyBios {
            Boot::LegacyBios
        } else {
            let fw = machine::find_system_uefi_firmware(arch)?;
            let vars = self.paths.uefi_vars(&i.instance_id);
            machine::install_uefi_vars(&fw, &vars)?;
            Boot::Uefi {
                code: fw.code,
                vars,
            }
        };
        let itype = machine::instance_type(&i.instance_type).ok_or_else(|| {
            Error::invalid_value(format!(
                "Invalid value '{}' for InstanceType.",
                i.instance_type
            ))
        })?;
        let (imds, imds_forward) = self.imds_for_boot(i)?;
        let (outbound, guest_net) = self.guest_network(i, outbound)?;
        let spec = MachineSpec {
            instance_id: i.instance_id.clone(),
            arch,
            boot,
            accel: i.accel,
            vcpus: itype.vcpus,
            memory_mib: itype.memory_mib,
            disks,
            // No seed when launched with AMIRUN_NOCLOUD_SEED=0: IMDS only.
            seed: Some(self.paths.seed_image(&i.instance_id)).filter(|s| s.exists()),
            net: NetSpec {
                ssh_port: i.ssh_port,
                imds: Some(imds_forward),
                outbound,
            },
            qmp_socket: self.paths.qmp_socket(&i.instance_id),
            serial_log: self.paths.serial_log(&i.instance_id),
            smbios: SmbiosIdentity::for_instance(&i.instance_id, &i.instance_type),
        };
        let cmd = machine::qemu_command(&spec)?;
        let mut launch = LaunchSpec::new(
            &self.paths,
            &i.instance_id,
            PathBuf::from(cmd.program),
            cmd.args,
        );
        launch.stop_timeout_secs = self.options.stop_timeout_secs;
        launch.imds = Some(serde_json::to_value(&imds).expect("serializable"));
        launch.network = guest_net;
        launch.write(&self.paths.launch_spec(&i.instance_id))?;
        Ok(())
    }

    /// The guest network for the next boot of `i`: outbound access needs a
    /// network namespace of the guest's own ([`network`]), made by its
    /// supervisor, which records how the leg came up; without one the guest
    /// is sealed instead, and the status file says why.
    fn guest_network(
        &self,
        i: &InstanceState,
        wanted: machine::Outbound,
    ) -> Result<(machine::Outbound, Option<network::GuestNetworkSpec>)> {
        let status_file = self.paths.network_status(&i.instance_id);
        let sealed = |why: String| -> Result<_> {
            NetworkStatus::new("none", why)
                .write(&status_file)
                .map_err(io_error(format!("write {}", status_file.display())))?;
            Ok((machine::Outbound::None, None))
        };
        if wanted == machine::Outbound::None {
            return sealed(format!(
                "Outbound access is off ({}=none, or AMIRUN_GUEST_OUTBOUND=none without the tag): IMDS and SSH only",
                machine::OUTBOUND_TAG
            ));
        }
        if let Err(why) = network::namespaces_available() {
            return sealed(format!(
                "Sealed instead of outbound access: {why}; the guest has IMDS and SSH only"
            ));
        }
        let _ = std::fs::remove_file(&status_file);
        Ok((
            machine::Outbound::Nat,
            Some(network::GuestNetworkSpec {
                resolv_conf: self.paths.guest_resolv_conf(&i.instance_id),
                status_file: status_file.clone(),
                ssh_port: i.ssh_port,
            }),
        ))
    }

    /// Fetch a kernel or ramdisk (a file, not a disk image) and return its path.
    fn fetch_opaque(&mut self, source: &crate::store::SourceSpec) -> Result<PathBuf> {
        let source = crate::store::SourceSpec {
            format: Some(crate::blobs::OPAQUE_FORMAT.into()),
            ..source.clone()
        };
        Ok(self.fetch_source(&source)?.path)
    }

    /// Start an instance's supervisor and wait until it runs; the caller
    /// holds the instance's lock. `op` names the failpoint `<op>:spawned`.
    fn spawn_supervisor(&self, instance_id: &str, op: &str) -> Result<u32> {
        let exe = (self.options.supervisor_exe.clone())
            .ok_or_else(|| Error::internal("Cannot find the amirun executable"))?;
        let pid = supervisor::spawn_detached(&exe, &self.paths.launch_spec(instance_id))?;
        failpoint(&format!("{op}:spawned"))?;
        // The supervisor writes its pid file once it is up; until then the
        // instance would look dead to reconciliation. Wait for a live fact.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let live = supervisor::probe(&self.paths, instance_id);
            if live.supervisor_alive || live.last_exit.is_some() {
                return Ok(pid);
            }
            if std::time::Instant::now() >= deadline {
                return Err(Error::internal(format!(
                    "The supervisor of {instance_id} did not start within 20 s (see {})",
                    self.paths.supervisor_log(instance_id).display()
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Record that an instance's guest ended outside the normal flow (e.g. the
    /// supervisor could not start), and settle it.
    fn record_exit(&mut self, instance_id: &str, code: Option<&str>, message: &str) -> Result<()> {
        let Some(mut i) = self.store.read(|db| db.instance(instance_id))? else {
            return Ok(());
        };
        // A supervisor that came up late after all runs the instance.
        let Some(_fence) = self.fence(instance_id)? else {
            return Ok(());
        };
        self.withdraw_launch(instance_id);
        let target = if i.root_device_type == RootDeviceType::InstanceStore {
            InstanceStateName::Terminated
        } else {
            InstanceStateName::Stopped
        };
        i.state_reason = Some(format!(
            "{}: {message}",
            code.unwrap_or("Server.InternalError")
        ));
        self.settle(&mut i, target)
    }

    /// Move an instance to a final state (`stopped` or `terminated`) and clean up its disks.
    /// The caller holds the instance's lock and knows its supervisor is
    /// gone (under [`Self::fence`]); a QEMU left behind is ended first, so no
    /// disk is removed under a live guest.
    fn settle(&mut self, i: &mut InstanceState, target: InstanceStateName) -> Result<()> {
        self.ensure_guest_gone(&i.instance_id)?;
        i.state = target;
        i.updated = now();
        let runtime = self.paths.instance_runtime_dir(&i.instance_id);
        // Instance-store disks never survive a stop or terminate.
        let _ = std::fs::remove_dir_all(&runtime);
        let mut delete_files = Vec::new();
        let paths = self.paths.clone();
        let snapshot = i.clone();
        self.store.write(|db| -> Result<()> {
            db.put_instance(&snapshot)?;
            if target == InstanceStateName::Terminated {
                for d in &snapshot.devices {
                    let Some(vid) = &d.volume_id else { continue };
                    let Some(mut v) = db.volume(vid)? else {
                        continue;
                    };
                    if v.delete_on_termination {
                        db.delete_volume(vid)?;
                        delete_files.push(paths.volume(vid));
                    } else {
                        v.state = VolumeStateName::Available;
                        v.instance_id = None;
                        v.device = None;
                        v.attach_time = None;
                        db.put_volume(&v)?;
                    }
                }
            }
            Ok(())
        })?;
        for f in delete_files {
            let _ = std::fs::remove_file(f);
        }
        if target == InstanceStateName::Terminated {
            for f in [
                self.paths.seed_image(&i.instance_id),
                self.paths.uefi_vars(&i.instance_id),
            ] {
                let _ = std::fs::remove_file(f);
            }
        }
        Ok(())
    }

    /// Wait (bounded) until no QEMU of the instance is alive, killing one
    /// that outlived its supervisor (its parent-death signal is
    /// asynchronous); refuse to go on while one still runs.
    fn ensure_guest_gone(&self, instance_id: &str) -> Result<()> {
        let mut deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut killed = false;
        loop {
            let pids = supervisor::qemu_pids(instance_id);
            if pids.is_empty() {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                if killed {
                    return Err(Error::internal(
                        format!(
                            "QEMU (pid {pids:?}) of {instance_id} does not exit; its disks are kept; end it and retry"
                        ),
                    ));
                }
                for pid in &pids {
                    tracing::warn!(
                        "QEMU {pid} of {instance_id} outlived its supervisor; killing it"
                    );
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(*pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                killed = true;
                deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Hold the instance's pid file while no supervisor does (see
    /// [`supervisor::fence`]); `None` when a supervisor runs it.
    fn fence(&self, instance_id: &str) -> Result<Option<nix::fcntl::Flock<std::fs::File>>> {
        supervisor::fence(&self.paths, instance_id).map_err(|e| {
            Error::internal(format!("Cannot lock the pid file of {instance_id}")).with_source(e)
        })
    }

    /// Remove the launch spec of an instance whose launch or start was
    /// interrupted (under the fence): a supervisor spawned for it that has
    /// not taken the pid file yet then never starts QEMU. (Once a
    /// supervisor has run for the current launch, none other can be on its
    /// way, and the spec stays for inspection.)
    fn withdraw_launch(&self, instance_id: &str) {
        let _ = std::fs::remove_file(self.paths.launch_spec(instance_id));
    }

    /// Whether a supervisor started for the instance since its record was
    /// last written (the launch or start that made it `pending`); and
    /// whether one ever started.
    fn supervisor_runs(&self, i: &InstanceState) -> (bool, bool) {
        let started: Vec<chrono::DateTime<chrono::Utc>> =
            supervisor::read_events(&self.paths.events(&i.instance_id))
                .unwrap_or_default()
                .into_iter()
                .filter(|e| matches!(e.event, supervisor::Event::SupervisorStarted { .. }))
                .map(|e| e.ts)
                .collect();
        let since = match chrono::DateTime::parse_from_rfc3339(&i.updated) {
            Ok(written) => started.iter().any(|t| *t >= written),
            // Cannot tell: assume it started, so the usual rules apply.
            Err(_) => !started.is_empty(),
        };
        (since, !started.is_empty())
    }

    /// Reconcile recorded states with live facts (supervisor, QEMU, exit
    /// record). Each instance is reconciled under its lock; one whose lock
    /// another operation holds (a launch, start, stop, terminate or
    /// create-image in progress) is shown as recorded, never judged dead.
    pub fn refresh_instances(&mut self, caller: &Caller) -> Result<()> {
        let live: Vec<InstanceState> = self
            .store
            .read(|db| db.live_instances())?
            .into_iter()
            .filter(|i| i.region == caller.region)
            .collect();
        for i in live {
            if i.state == InstanceStateName::Stopped {
                continue;
            }
            let Some(_lock) = object_lock::try_lock(&self.paths, &i.instance_id)? else {
                continue;
            };
            self.reconcile_locked(&i.instance_id)?;
        }
        let hour_ago = (chrono::Utc::now() - chrono::Duration::hours(1))
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string();
        let purged = self.store.write(|db| db.purge_terminated(&hour_ago))?;
        for id in purged {
            let _ = std::fs::remove_dir_all(self.paths.instance_dir(&id));
        }
        Ok(())
    }

    /// The one state poller, used by every waiter (the CLI's `wait`,
    /// create-image's wait for a stop, the bake pollers): read the states of
    /// some objects with `read` every `interval` until all are `want`; fail
    /// as soon as one is in a `hopeless` state (one it cannot leave for
    /// `want`), or when `deadline` passes. `read` sees the service, so it
    /// may refresh, describe or read records as its caller needs.
    pub fn wait_for_state<S: Copy + PartialEq>(
        &mut self,
        want: S,
        hopeless: &[S],
        deadline: std::time::Instant,
        interval: std::time::Duration,
        mut read: impl FnMut(&mut Service) -> Result<Vec<(String, S)>>,
    ) -> std::result::Result<Vec<(String, S)>, WaitFailure<S>> {
        loop {
            let states = read(self).map_err(WaitFailure::Error)?;
            if !states.is_empty() && states.iter().all(|(_, s)| *s == want) {
                return Ok(states);
            }
            if let Some((id, s)) = states.iter().find(|(_, s)| hopeless.contains(s)) {
                return Err(WaitFailure::Hopeless {
                    id: id.clone(),
                    state: *s,
                });
            }
            if std::time::Instant::now() >= deadline {
                return Err(WaitFailure::TimedOut { last: states });
            }
            std::thread::sleep(interval);
        }
    }

    /// Reconcile one instance with its live facts; the caller holds its lock.
    ///
    /// "The supervisor is gone" is decided only under the fence (the pid
    /// file's lock), never from a missing pid alone: a supervisor that is
    /// just starting holds the pid file or, if it has not taken it yet, is
    /// withdrawn. A `pending` instance whose supervisor never started for
    /// this launch (its launcher was killed) is settled as EC2 settles a
    /// failed launch: `terminated` with `Server.InternalError`, its volumes
    /// following DeleteOnTermination; an interrupted start of a stopped
    /// instance goes back to `stopped`.
    pub(crate) fn reconcile_locked(&mut self, instance_id: &str) -> Result<()> {
        let Some(i) = self.store.read(|db| db.instance(instance_id))? else {
            return Ok(());
        };
        if matches!(
            i.state,
            InstanceStateName::Stopped | InstanceStateName::Terminated
        ) {
            return Ok(());
        }
        // The fence (if taken) is held until the transition is applied.
        let Some((live, _fence)) = self.live_facts(&i)? else {
            return Ok(());
        };
        let recorded = Recorded {
            state: i.state,
            root_device_type: i.root_device_type,
            shutdown_behavior: i.shutdown_behavior,
        };
        let transition = reconcile(&recorded, &live);
        self.apply_transition(i, transition)
    }

    /// Probe an instance's supervisor and guest. When no live supervisor is
    /// named in the pid file, the facts are gathered under the fence, which
    /// is returned to be held while acting on them; `None` when a
    /// supervisor holds the pid file (starting or ending: alive).
    fn live_facts(
        &self,
        i: &InstanceState,
    ) -> Result<Option<(LiveFacts, Option<nix::fcntl::Flock<std::fs::File>>)>> {
        let facts = supervisor::probe(&self.paths, &i.instance_id);
        if facts.supervisor_alive {
            let live = LiveFacts {
                supervisor_alive: true,
                qemu_alive: facts.qemu_alive,
                last_exit: facts.last_exit.as_ref().map(|e| e.reason),
                guest_running: i.state == InstanceStateName::Pending && self.guest_running(i),
                ..LiveFacts::default()
            };
            return Ok(Some((live, None)));
        }
        let Some(fence) = self.fence(&i.instance_id)? else {
            return Ok(None);
        };
        let facts = supervisor::probe(&self.paths, &i.instance_id);
        let (started_since, ever_started) = self.supervisor_runs(i);
        let live = LiveFacts {
            supervisor_alive: false,
            qemu_alive: facts.qemu_alive,
            last_exit: facts.last_exit.as_ref().map(|e| e.reason),
            guest_running: false,
            started_since,
            ever_started,
        };
        Ok(Some((live, Some(fence))))
    }

    /// Apply what [`reconcile`] decided to the record (and, when the guest
    /// is gone, to its files); the caller holds the lock and any fence.
    fn apply_transition(&mut self, mut i: InstanceState, transition: Transition) -> Result<()> {
        match transition {
            Transition::Keep => Ok(()),
            Transition::Running => {
                i.state = InstanceStateName::Running;
                i.updated = now();
                self.store.write(|db| db.put_instance(&i))?;
                Ok(())
            }
            Transition::Settle {
                to,
                reason,
                withdraw_launch,
            } => {
                if withdraw_launch {
                    // A supervisor its launcher spawned may still be on its way.
                    self.withdraw_launch(&i.instance_id);
                }
                i.state_reason = Some(reason);
                self.settle(&mut i, to)
            }
        }
    }

    /// Whether the instance's current supervisor reported the guest running
    /// (a `guest-running` event since its last `supervisor-started`).
    fn guest_running(&self, i: &InstanceState) -> bool {
        supervisor::read_events(&self.paths.events(&i.instance_id))
            .unwrap_or_default()
            .iter()
            .rev()
            .take_while(|e| !matches!(e.event, supervisor::Event::SupervisorStarted { .. }))
            .any(|e| matches!(e.event, supervisor::Event::GuestRunning))
    }

    /// Take the locks of `ids_` (in id order, so two operations on the same
    /// instances never deadlock) and return them reconciled. Start, stop,
    /// reboot and terminate hold these locks while they act, so they
    /// serialise with each other, with launches, create-image and
    /// reconciliation in every process.
    fn lock_owned_instances(
        &mut self,
        caller: &Caller,
        ids_: &[String],
    ) -> Result<(Vec<ObjectLock>, Vec<InstanceState>)> {
        check_instance_ids(ids_)?;
        let mut sorted = ids_.to_vec();
        sorted.sort();
        sorted.dedup();
        let locks = sorted
            .iter()
            .map(|id| object_lock::lock(&self.paths, id))
            .collect::<Result<Vec<_>>>()?;
        let instances = self.owned_instances(caller, ids_)?;
        Ok((locks, instances))
    }

    /// The caller's instances with these ids (states reconciled first), or
    /// `InvalidInstanceID.Malformed` / `.NotFound` naming the ids.
    pub(super) fn owned_instances(
        &mut self,
        caller: &Caller,
        ids_: &[String],
    ) -> Result<Vec<InstanceState>> {
        check_instance_ids(ids_)?;
        self.refresh_instances(caller)?;
        self.store.read(|db| -> Result<Vec<InstanceState>> {
            let mut out = Vec::new();
            let mut missing = Vec::new();
            for id in ids_ {
                match db.instance(id)? {
                    Some(i) if i.region == caller.region && i.owner_id == caller.account => {
                        out.push(i)
                    }
                    _ => missing.push(id.clone()),
                }
            }
            match missing.as_slice() {
                [] => Ok(out),
                [one] => Err(Error::new(
                    ErrorCode::InvalidInstanceIdNotFound,
                    format!("The instance ID '{one}' does not exist"),
                )),
                many => Err(Error::new(
                    ErrorCode::InvalidInstanceIdNotFound,
                    format!("The instance IDs '{}' do not exist", many.join(", ")),
                )),
            }
        })
    }

    /// `DescribeInstances`: reservations with their instances, states reconciled first.
    pub fn describe_instances(
        &mut self,
        caller: &Caller,
        instance_ids: &[String],
        filters: &[Filter],
    ) -> Result<Value> {
        filter::check_names(filters, INSTANCE_FILTERS)?;
        let wanted = if instance_ids.is_empty() {
            self.refresh_instances(caller)?;
            self.store
                .read(|db| db.instances_in_region(&caller.region))?
                .into_iter()
                .filter(|i| i.owner_id == caller.account)
                .collect()
        } else {
            self.owned_instances(caller, instance_ids)?
        };
        let mut reservations: Vec<(String, Vec<Value>)> = Vec::new();
        for i in wanted {
            let tags = self.store.read(|db| db.tags_of(&i.instance_id))?;
            let keep = filter::matches(filters, |name| match name {
                "architecture" => vec![i.architecture.to_string()],
                "availability-zone" => vec![format!("{}a", i.region)],
                "image-id" => vec![i.image_id.clone()],
                "instance-id" => vec![i.instance_id.clone()],
                "instance-state-code" => vec![i.state.code().to_string()],
                "instance-state-name" => vec![i.state.to_string()],
                "instance-type" => vec![i.instance_type.clone()],
                "key-name" => i.key_name.iter().cloned().collect(),
                "reservation-id" => vec![i.reservation_id.clone()],
                "root-device-type" => vec![i.root_device_type.to_string()],
                n => filter::tag_values(&tags, n).unwrap_or_default(),
            });
            if !keep {
                continue;
            }
            let shape = self.render_instance(&i, &tags);
            match reservations
                .iter_mut()
                .find(|(r, _)| *r == i.reservation_id)
            {
                Some((_, list)) => list.push(shape),
                None => reservations.push((i.reservation_id.clone(), vec![shape])),
            }
        }
        Ok(json!({
            "Reservations": reservations
                .into_iter()
                .map(|(r, instances)| json!({
                    "Groups": [],
                    "Instances": instances,
                    "OwnerId": caller.account,
                    "ReservationId": r,
                }))
                .collect::<Vec<_>>()
        }))
    }

    fn render_instance(&self, i: &InstanceState, tags: &[crate::store::TagState]) -> Value {
        let itype = machine::instance_type(&i.instance_type);
        let net_status = NetworkStatus::read(&self.paths.network_status(&i.instance_id));
        let bdm: Vec<Value> = i
            .devices
            .iter()
            .filter_map(|d| {
                d.volume_id.as_ref().map(|v| {
                    json!({
                        "DeviceName": d.device_name,
                        "Ebs": {
                            "AttachTime": d.attach_time,
                            "DeleteOnTermination": d.delete_on_termination,
                            "Status": if i.state == InstanceStateName::Terminated { "detached" } else { "attached" },
                            "VolumeId": v,
                        }
                    })
                })
            })
            .collect();
        let mut v = json!({
            "AmiLaunchIndex": i.launch_index,
            "ImageId": i.image_id,
            "InstanceId": i.instance_id,
            "InstanceType": i.instance_type,
            "LaunchTime": i.launch_time,
            "Monitoring": {"State": "disabled"},
            "Placement": {"AvailabilityZone": format!("{}a", i.region), "GroupName": "", "Tenancy": "default"},
            "PrivateDnsName": if i.state == InstanceStateName::Terminated { "".to_string() } else { "ip-169-254-0-15.ec2.internal".to_string() },
            "PrivateIpAddress": "169.254.0.15",
            "ProductCodes": [],
            "PublicDnsName": "",
            "State": InstanceStateShape::of(i.state),
            "StateTransitionReason": i.state_reason.as_deref().map(|r| state_transition_reason(r, &i.updated)).unwrap_or_default(),
            "Architecture": i.architecture,
            "BlockDeviceMappings": bdm,
            "EbsOptimized": false,
            "EnaSupport": true,
            "Hypervisor": "xen",
            "RootDeviceName": i.root_device_name,
            "RootDeviceType": i.root_device_type,
            "VirtualizationType": "hvm",
            "BootMode": i.boot_mode,
            "CurrentInstanceBootMode": i.boot_mode,
            "CpuOptions": {"CoreCount": itype.map_or(1, |t| t.vcpus), "ThreadsPerCore": 1},
            // EC2 says `pending` until the options are in force on a running instance.
            "MetadataOptions": metadata_options_shown(&i.metadata_options, i.state),
            "PlatformDetails": "Linux/UNIX",
            "UsageOperation": "RunInstances",
            "InstanceLifecycle": null,
            "Amirun": {
                "Accelerator": i.accel,
                "AcceleratorReason": i.accel_reason,
                "SshEndpoint": i.ssh_port.filter(|_| i.state != InstanceStateName::Terminated).map(|p| format!("127.0.0.1:{p}")),
                "GuestOutbound": net_status.as_ref().map_or_else(
                    || guest_outbound(tags.iter().map(|t| (t.key.as_str(), t.value.as_str())), self.options.default_outbound).map_or("invalid", machine::Outbound::as_str).to_string(),
                    |s| s.outbound.clone()),
                "GuestOutboundReason": net_status.and_then(|s| s.reason),
                "ConsoleLog": self.paths.serial_log(&i.instance_id).display().to_string(),
            },
        });
        let obj = v.as_object_mut().expect("object");
        obj.remove("InstanceLifecycle");
        if let Some(k) = &i.key_name {
            obj.insert("KeyName".into(), json!(k));
        }
        if let Some(r) = &i.state_reason {
            let (code, message) = r.split_once(": ").unwrap_or((r.as_str(), r.as_str()));
            obj.insert(
                "StateReason".into(),
                json!({"Code": code, "Message": message}),
            );
        }
        if !tags.is_empty() {
            obj.insert(
                "Tags".into(),
                json!(tags
                    .iter()
                    .map(|t| Tag {
                        key: t.key.clone(),
                        value: Some(t.value.clone())
                    })
                    .collect::<Vec<_>>()),
            );
        }
        v
    }

    /// `StopInstances`: EBS-backed only; the guest gets the ACPI power button
    /// (or is cut off at once with `force`).
    pub fn stop_instances(
        &mut self,
        caller: &Caller,
        instance_ids: &[String],
        force: bool,
    ) -> Result<Value> {
        let (_locks, instances) = self.lock_owned_instances(caller, instance_ids)?;
        self.check_api_protection(&instances, "stopped")?;
        for i in &instances {
            if i.root_device_type == RootDeviceType::InstanceStore {
                return Err(Error::new(
                    ErrorCode::UnsupportedOperation,
                    format!("The instance '{}' does not have an 'ebs' root device type and cannot be stopped.", i.instance_id),
                ));
            }
            if i.state == InstanceStateName::Terminated
                || i.state == InstanceStateName::ShuttingDown
            {
                return Err(Error::incorrect_instance_state(format!(
                    "The instance '{}' is not in a state from which it can be stopped.",
                    i.instance_id
                )));
            }
        }
        let mut changes = Vec::new();
        for mut i in instances {
            let previous = i.state;
            if matches!(
                previous,
                InstanceStateName::Pending
                    | InstanceStateName::Running
                    | InstanceStateName::Stopping
            ) {
                i.state = InstanceStateName::Stopping;
                i.updated = now();
                let s = i.clone();
                self.store.write(|db| db.put_instance(&s))?;
                self.ask_supervisor(&i.instance_id, |c| c.stop(force))?;
            }
            changes.push(StateChange {
                current_state: InstanceStateShape::of(i.state),
                instance_id: i.instance_id.clone(),
                previous_state: InstanceStateShape::of(previous),
            });
        }
        Ok(json!({ "StoppingInstances": changes }))
    }

    /// Send a request to an instance's supervisor; a supervisor that is already
    /// gone is not an error (reconciliation settles the instance).
    fn ask_supervisor(
        &mut self,
        instance_id: &str,
        f: impl FnOnce(&mut SupervisorClient) -> std::result::Result<(), supervisor::ClientError>,
    ) -> Result<()> {
        let socket = self.paths.control_socket(instance_id);
        match SupervisorClient::connect(&socket) {
            Ok(mut c) => match f(&mut c) {
                Ok(()) => Ok(()),
                Err(e) if !supervisor::probe(&self.paths, instance_id).supervisor_alive => {
                    tracing::debug!("supervisor of {instance_id} went away: {e}");
                    Ok(())
                }
                Err(e) => Err(e.into()),
            },
            Err(e) => {
                if supervisor::probe(&self.paths, instance_id).supervisor_alive {
                    Err(e.into())
                } else {
                    Ok(())
                }
            }
        }
    }

    /// `StartInstances`: boot stopped EBS-backed instances again.
    pub fn start_instances(&mut self, caller: &Caller, instance_ids: &[String]) -> Result<Value> {
        let (_locks, instances) = self.lock_owned_instances(caller, instance_ids)?;
        for i in &instances {
            if !matches!(
                i.state,
                InstanceStateName::Stopped
                    | InstanceStateName::Running
                    | InstanceStateName::Pending
            ) {
                return Err(Error::incorrect_instance_state(format!(
                    "The instance '{}' is not in a state from which it can be started.",
                    i.instance_id
                )));
            }
        }
        let mut changes = Vec::new();
        for mut i in instances {
            let previous = i.state;
            if previous == InstanceStateName::Stopped {
                let taken = self.store.read(|db| db.ports_in_use())?;
                let taken: Vec<u16> = taken
                    .into_iter()
                    .filter(|p| Some(*p) != i.ssh_port)
                    .collect();
                if i.ssh_port.is_none_or(|p| {
                    taken.contains(&p) || std::net::TcpListener::bind(("127.0.0.1", p)).is_err()
                }) {
                    i.ssh_port = Some(free_port(&taken)?);
                }
                i.state = InstanceStateName::Pending;
                i.state_reason = None;
                i.updated = now();
                self.prepare_boot(&i)?;
                let s = i.clone();
                self.store.write(|db| db.put_instance(&s))?;
                if let Err(e) = self.spawn_supervisor(&i.instance_id, "start-instances") {
                    self.record_exit(
                        &i.instance_id,
                        None,
                        &format!("The supervisor could not start: {e}"),
                    )?;
                }
            }
            changes.push(StateChange {
                current_state: InstanceStateShape::of(i.state),
                instance_id: i.instance_id.clone(),
                previous_state: InstanceStateShape::of(previous),
            });
        }
        Ok(json!({ "StartingInstances": changes }))
    }

    /// `RebootInstances`: a reset of running instances; every disk is kept.
    pub fn reboot_instances(&mut self, caller: &Caller, instance_ids: &[String]) -> Result<()> {
        let (_locks, instances) = self.lock_owned_instances(caller, instance_ids)?;
        for i in &instances {
            if i.state != InstanceStateName::Running && i.state != InstanceStateName::Pending {
                return Err(Error::incorrect_instance_state(format!(
                    "The instance '{}' is not running.",
                    i.instance_id
                )));
            }
        }
        for i in instances {
            self.ask_supervisor(&i.instance_id, |c| c.reboot())?;
        }
        Ok(())
    }

    /// `TerminateInstances`.
    pub fn terminate_instances(
        &mut self,
        caller: &Caller,
        instance_ids: &[String],
    ) -> Result<Value> {
        if instance_ids.is_empty() {
            return Err(Error::new(
                ErrorCode::InvalidParameterCombination,
                "No instances specified",
            ));
        }
        let (_locks, instances) = self.lock_owned_instances(caller, instance_ids)?;
        self.check_api_protection(&instances, "terminated")?;
        let mut changes = Vec::new();
        for mut i in instances {
            let previous = i.state;
            match previous {
                InstanceStateName::Terminated | InstanceStateName::ShuttingDown => {}
                InstanceStateName::Stopped => {
                    let Some(_fence) = self.fence(&i.instance_id)? else {
                        return Err(Error::incorrect_instance_state(format!(
                            "The instance '{}' is stopped but its supervisor runs; try again",
                            i.instance_id
                        )));
                    };
                    i.state_reason =
                        Some("Client.UserInitiatedShutdown: User initiated shutdown".into());
                    self.settle(&mut i, InstanceStateName::Terminated)?;
                }
                _ => {
                    i.state = InstanceStateName::ShuttingDown;
                    i.updated = now();
                    let s = i.clone();
                    self.store.write(|db| db.put_instance(&s))?;
                    self.ask_supervisor(&i.instance_id, |c| c.stop(false))?;
                }
            }
            changes.push(StateChange {
                current_state: InstanceStateShape::of(i.state),
                instance_id: i.instance_id.clone(),
                previous_state: InstanceStateShape::of(previous),
            });
        }
        Ok(json!({ "TerminatingInstances": changes }))
    }

    /// Terminate one instance without the ACPI grace period and wait until it is
    /// terminated (boot tests and failed bakes clean up with this).
    pub fn terminate_now(&mut self, caller: &Caller, instance_id: &str) -> Result<()> {
        let (_locks, mut found) = self.lock_owned_instances(caller, &[instance_id.to_string()])?;
        let mut i = found.remove(0);
        if i.state == InstanceStateName::Terminated {
            return Ok(());
        }
        if supervisor::probe(&self.paths, instance_id).supervisor_alive {
            i.state = InstanceStateName::ShuttingDown;
            i.updated = now();
            let s = i.clone();
            self.store.write(|db| db.put_instance(&s))?;
            let socket = self.paths.control_socket(instance_id);
            if let Ok(mut c) = SupervisorClient::connect(&socket) {
                let _ = c.stop_and_wait(true);
            }
        }
        self.refresh_instances(caller)?;
        let mut i = self
            .owned_instances(caller, &[instance_id.to_string()])?
            .remove(0);
        if i.state != InstanceStateName::Terminated {
            let Some(_fence) = self.fence(instance_id)? else {
                return Err(Error::incorrect_instance_state(format!(
                    "The supervisor of '{instance_id}' did not stop; terminate it again"
                )));
            };
            i.state_reason = Some("Client.UserInitiatedShutdown: User initiated shutdown".into());
            self.settle(&mut i, InstanceStateName::Terminated)?;
        }
        Ok(())
    }

    /// `GetConsoleOutput`: the serial log (the last 64 KiB with `latest`),
    /// after a header line naming the machine and its accelerator.
    pub fn get_console_output(
        &mut self,
        caller: &Caller,
        instance_id: &str,
        latest: bool,
    ) -> Result<ConsoleOutput> {
        let i = self
            .owned_instances(caller, &[instance_id.to_string()])?
            .remove(0);
        let bytes = std::fs::read(self.paths.serial_log(instance_id)).unwrap_or_default();
        let tail = if latest && bytes.len() > 64 * 1024 {
            &bytes[bytes.len() - 64 * 1024..]
        } else {
            &bytes[..]
        };
        let header = format!(
            "[amirun] {} {} {} {} accel={} ({})\n",
            i.instance_id, i.instance_type, i.architecture, i.boot_mode, i.accel, i.accel_reason
        );
        Ok(ConsoleOutput {
            instance_id: instance_id.to_string(),
            timestamp: now(),
            output: header + &String::from_utf8_lossy(tail),
        })
    }

    /// The raw serial log bytes of an instance (for waiting on the console).
    pub fn console_bytes(&mut self, caller: &Caller, instance_id: &str) -> Result<Vec<u8>> {
        self.owned_instances(caller, &[instance_id.to_string()])?;
        Ok(std::fs::read(self.paths.serial_log(instance_id)).unwrap_or_default())
    }

    /// How to ssh into an instance: forwarded port, login user, key file.
    pub fn ssh_target(
        &mut self,
        caller: &Caller,
        instance_id: &str,
        user: Option<&str>,
    ) -> Result<SshTarget> {
        let i = self
            .owned_instances(caller, &[instance_id.to_string()])?
            .remove(0);
        if i.state != InstanceStateName::Running {
            return Err(Error::incorrect_instance_state(format!(
                "The instance '{instance_id}' is {}, not running",
                i.state
            )));
        }
        let port = i.ssh_port.ok_or_else(|| {
            Error::new(
                ErrorCode::UnsupportedOperation,
                "The instance has no ssh forward",
            )
        })?;
        let identity_file = match &i.key_name {
            Some(k) => match self.key_pair(caller, k)?.private_key {
                Some(material) => {
                    let path = self.paths.instance_dir(instance_id).join("ssh-key");
                    std::fs::write(&path, material)
                        .map_err(io_error(format!("Cannot write {}", path.display())))?;
                    use std::os::unix::fs::PermissionsExt;
                    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
                    Some(path)
                }
                None => None,
            },
            None => None,
        };
        let image = self.store.read(|db| db.image(&i.image_id))?;
        Ok(SshTarget {
            port,
            user: user
                .map(String::from)
                .unwrap_or_else(|| default_user(image.as_ref())),
            identity_file,
        })
    }

    /// `DescribeVolumes`.
    pub fn describe_volumes(
        &mut self,
        caller: &Caller,
        volume_ids: &[String],
        filters: &[Filter],
    ) -> Result<Value> {
        filter::check_names(filters, VOLUME_FILTERS)?;
        self.refresh_instances(caller)?;
        let all = self.store.read(|db| db.volumes_in_region(&caller.region))?;
        let mut missing: Vec<&String> = volume_ids.iter().collect();
        let mut out = Vec::new();
        for v in all.into_iter().filter(|v| v.owner_id == caller.account) {
            if !volume_ids.is_empty() && !volume_ids.contains(&v.volume_id) {
                continue;
            }
            missing.retain(|m| **m != v.volume_id);
            let tags = self.store.read(|db| db.tags_of(&v.volume_id))?;
            let keep = filter::matches(filters, |name| match name {
                "attachment.instance-id" => v.instance_id.iter().cloned().collect(),
                "attachment.delete-on-termination" => vec![v.delete_on_termination.to_string()],
                "attachment.device" => v.device.iter().cloned().collect(),
                "size" => vec![v.size_gib.to_string()],
                "snapshot-id" => v.snapshot_id.iter().cloned().collect(),
                "status" => vec![v.state.to_string()],
                "volume-id" => vec![v.volume_id.clone()],
                "volume-type" => vec![v.volume_type.clone()],
                n => filter::tag_values(&tags, n).unwrap_or_default(),
            });
            if !keep {
                continue;
            }
            let attachments: Vec<Value> = match (&v.instance_id, &v.device) {
                (Some(i), Some(d)) => vec![json!({
                    "AttachTime": v.attach_time,
                    "Device": d,
                    "InstanceId": i,
                    "State": "attached",
                    "VolumeId": v.volume_id,
                    "DeleteOnTermination": v.delete_on_termination,
                })],
                _ => Vec::new(),
            };
            let mut shape = json!({
                "Attachments": attachments,
                "AvailabilityZone": v.availability_zone,
                "CreateTime": v.create_time,
                "Encrypted": false,
                "Size": v.size_gib,
                "SnapshotId": v.snapshot_id.clone().unwrap_or_default(),
                "State": v.state,
                "VolumeId": v.volume_id,
                "Iops": 3000,
                "VolumeType": v.volume_type,
                "MultiAttachEnabled": false,
                "Throughput": 125,
            });
            if !tags.is_empty() {
                shape["Tags"] = json!(tags
                    .iter()
                    .map(|t| Tag {
                        key: t.key.clone(),
                        value: Some(t.value.clone())
                    })
                    .collect::<Vec<_>>());
            }
            out.push(shape);
        }
        if let Some(m) = missing.first() {
            return Err(Error::new(
                ErrorCode::InvalidVolumeNotFound,
                format!("The volume '{m}' does not exist."),
            ));
        }
        Ok(json!({ "Volumes": out }))
    }
}

/// EC2's checks of an InstanceIds parameter.
fn check_instance_ids(ids_: &[String]) -> Result<()> {
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

/// EC2's `StateTransitionReason` for a state reason recorded at `when`
/// (`2026-11-22T18:44:25.000Z`): "User initiated (2026-11-22 18:44:25 GMT)"
/// for a user's stop or terminate, else the reason with its time.
fn state_transition_reason(reason: &str, when: &str) -> String {
    let at = chrono::DateTime::parse_from_rfc3339(when)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S GMT").to_string())
        .unwrap_or_else(|_| when.to_string());
    if reason.starts_with("Client.UserInitiatedShutdown") {
        format!("User initiated ({at})")
    } else {
        format!("{reason} ({at})")
    }
}

/// EC2's boot mode rules: `uefi-preferred` boots UEFI where the firmware exists.
fn resolve_boot_mode(image: &ImageState, arch: Arch) -> Result<BootMode> {
    let mode = image.boot_mode.unwrap_or(match arch {
        Arch::Arm64 => BootMode::Uefi,
        _ => BootMode::LegacyBios,
    });
    Ok(match (mode, arch) {
        (BootMode::LegacyBios, Arch::Arm64) => {
            return Err(Error::new(
                ErrorCode::InvalidParameterCombination,
                format!(
                    "Image {} is legacy-bios, which arm64 instances cannot boot",
                    image.image_id
                ),
            ))
        }
        (BootMode::UefiPreferred, Arch::X86_64) => {
            if machine::find_system_uefi_firmware(arch).is_ok() {
                BootMode::Uefi
            } else {
                BootMode::LegacyBios
            }
        }
        (BootMode::UefiPreferred, _) => BootMode::Uefi,
        (m, _) => m,
    })
}

/// The AMI's mappings with the launch request's on top (by device name);
/// `NoDevice` removes one.
fn merge_mappings(
    image: &[BlockDeviceMapping],
    request: &[BlockDeviceMapping],
) -> Vec<BlockDeviceMapping> {
    let mut out: Vec<BlockDeviceMapping> = image.to_vec();
    for r in request {
        match out.iter_mut().find(|m| m.device_name == r.device_name) {
            Some(m) => {
                if r.no_device.is_some() {
                    m.no_device = Some(String::new());
                } else if let (Some(me), Some(re)) = (m.ebs.as_mut(), r.ebs.as_ref()) {
                    if re.volume_size.is_some() {
                        me.volume_size = re.volume_size;
                    }
                    if re.delete_on_termination.is_some() {
                        me.delete_on_termination = re.delete_on_termination;
                    }
                    if re.volume_type.is_some() {
                        me.volume_type = re.volume_type.clone();
                    }
                } else {
                    *m = r.clone();
                }
            }
            None => out.push(r.clone()),
        }
    }
    out.retain(|m| m.no_device.is_none());
    out
}

/// The recorded metadata options as EC2 shows them: `State` is `pending`
/// while the instance is, `applied` after.
fn metadata_options_shown(recorded: &Value, state: InstanceStateName) -> Value {
    let mut shown = recorded.clone();
    if let Some(o) = shown.as_object_mut() {
        let s = if state == InstanceStateName::Pending {
            "pending"
        } else {
            "applied"
        };
        o.insert("State".into(), s.into());
    }
    shown
}

/// EC2's MetadataOptions with defaults filled in.
fn metadata_options(given: Option<&Value>) -> Result<Value> {
    let tokens = given
        .and_then(|g| g.get("HttpTokens"))
        .and_then(Value::as_str)
        .unwrap_or("optional");
    let endpoint = given
        .and_then(|g| g.get("HttpEndpoint"))
        .and_then(Value::as_str)
        .unwrap_or("enabled");
    let hops = given
        .and_then(|g| g.get("HttpPutResponseHopLimit"))
        .and_then(Value::as_u64)
        .unwrap_or(1);
    if !matches!(tokens, "optional" | "required") {
        return Err(Error::invalid_value(format!(
            "Value ({tokens}) for parameter HttpTokens is invalid; use optional or required"
        )));
    }
    if !matches!(endpoint, "enabled" | "disabled") {
        return Err(Error::invalid_value(format!(
            "Value ({endpoint}) for parameter HttpEndpoint is invalid; use enabled or disabled"
        )));
    }
    Ok(json!({
        "State": "applied",
        "HttpTokens": tokens,
        "HttpPutResponseHopLimit": hops,
        "HttpEndpoint": endpoint,
        "HttpProtocolIpv6": "disabled",
        "InstanceMetadataTags": "disabled",
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn metadata_options_are_pending_while_the_instance_is() {
        use crate::domain::InstanceStateName;
        let recorded = super::metadata_options(None).unwrap();
        let shown = super::metadata_options_shown(&recorded, InstanceStateName::Pending);
        assert_eq!(shown["State"], "pending");
        assert_eq!(shown["HttpPutResponseHopLimit"], 1);
        let shown = super::metadata_options_shown(&recorded, InstanceStateName::Running);
        assert_eq!(shown["State"], "applied");
    }

    #[test]
    fn state_transition_reason_reads_as_ec2_writes_it() {
        assert_eq!(
            super::state_transition_reason(
                "Client.UserInitiatedShutdown: User initiated shutdown",
                "2026-11-22T18:44:25.000Z"
            ),
            "User initiated (2026-11-22 18:44:25 GMT)"
        );
        assert_eq!(
            super::state_transition_reason("Server.InternalError: x", "2026-11-22T18:44:25.000Z"),
            "Server.InternalError: x (2026-11-22 18:44:25 GMT)"
        );
    }

    use super::*;

    #[test]
    fn counts_follow_ec2() {
        assert_eq!(launch_count(1, 1).unwrap(), 1);
        assert_eq!(launch_count(1, 3).unwrap(), 3);
        assert_eq!(launch_count(2, 500).unwrap(), LAUNCH_LIMIT);
        let e = launch_count(1, 0).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidParameterValue);
        assert!(
            e.message().contains("Maximum instance count"),
            "{}",
            e.message()
        );
        assert_eq!(
            launch_count(0, 1).unwrap_err().code(),
            ErrorCode::InvalidParameterValue
        );
        let e = launch_count(5, 2).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidParameterValue);
        assert!(e.message().contains("(5)") && e.message().contains("(2)"));
        assert_eq!(
            launch_count(65, 65).unwrap_err().code(),
            ErrorCode::InstanceLimitExceeded
        );
    }

    #[test]
    fn volume_sizes_follow_ec2_per_type_and_snapshot() {
        let ebs = |size: Option<u64>, t: Option<&str>, snap: Option<&str>| EbsBlockDevice {
            volume_size: size,
            volume_type: t.map(String::from),
            snapshot_id: snap.map(String::from),
            ..Default::default()
        };
        let code = |r: Result<u64>| r.unwrap_err().code();
        assert_eq!(
            volume_size_gib("/dev/sdf", &ebs(Some(1), None, None), None).unwrap(),
            1
        );
        assert_eq!(
            code(volume_size_gib("/dev/sdf", &ebs(Some(0), None, None), None)),
            ErrorCode::InvalidParameterValue
        );
        assert_eq!(
            code(volume_size_gib(
                "/dev/sdf",
                &ebs(Some(17179869184), None, None),
                None
            )),
            ErrorCode::InvalidParameterValue
        );
        assert_eq!(
            code(volume_size_gib(
                "/dev/sdf",
                &ebs(Some(3), Some("io1"), None),
                None
            )),
            ErrorCode::InvalidParameterValue
        );
        assert_eq!(
            volume_size_gib("/dev/sdf", &ebs(Some(65536), Some("io2"), None), None).unwrap(),
            65536
        );
        assert_eq!(
            code(volume_size_gib(
                "/dev/sdf",
                &ebs(Some(20000), Some("io1"), None),
                None
            )),
            ErrorCode::InvalidParameterValue
        );
        assert_eq!(
            code(volume_size_gib(
                "/dev/sdf",
                &ebs(Some(100), Some("st1"), None),
                None
            )),
            ErrorCode::InvalidParameterValue
        );
        assert_eq!(
            code(volume_size_gib(
                "/dev/sdf",
                &ebs(Some(1025), Some("standard"), None),
                None
            )),
            ErrorCode::InvalidParameterValue
        );
        assert_eq!(
            code(volume_size_gib(
                "/dev/sdf",
                &ebs(Some(8), Some("gp9"), None),
                None
            )),
            ErrorCode::InvalidParameterValue
        );
        assert_eq!(
            code(volume_size_gib("/dev/sdf", &ebs(None, None, None), None)),
            ErrorCode::InvalidBlockDeviceMapping
        );
        // The snapshot's size is the default and the floor.
        let snap = Some("snap-0123456789abcdef0");
        assert_eq!(
            volume_size_gib("/dev/xvda", &ebs(None, None, snap), Some(8)).unwrap(),
            8
        );
        let e = volume_size_gib("/dev/xvda", &ebs(Some(4), None, snap), Some(8)).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidBlockDeviceMapping);
        assert!(
            e.message().contains("expect size >= 8GB"),
            "{}",
            e.message()
        );
        // A type's minimum applies to a smaller snapshot.
        assert_eq!(
            volume_size_gib("/dev/xvda", &ebs(None, Some("st1"), snap), Some(1)).unwrap(),
            125
        );
    }

    #[test]
    fn gib_to_bytes_refuses_overflow() {
        assert_eq!(gib_to_bytes(16384).unwrap(), 16384 << 30);
        assert!(gib_to_bytes(17179869184).is_err());
    }
}
