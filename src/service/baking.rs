//! Baking: `CreateImage` from an instance's EBS volumes, and moving images
//! in and out (`ImportSnapshot`, `ExportImage`).
//!
//! CreateImage takes one snapshot layer of every EBS volume of the
//! instance ([`super::layers`]) and registers an AMI that records its
//! source instance and source image. It holds the instance's object lock
//! for the whole file work (start, stop and terminate take the same lock),
//! and the locks of the volumes and of the new AMI and snapshot ids until
//! it commits. The AMI is recorded `pending` (with its snapshots) before any
//! file is touched and becomes `available` in the transaction that records
//! the layers. If it fails in between, the snapshots are settled from the
//! files (what a volume already stands on is kept and completed, the rest
//! removed) and the AMI record goes; if it is killed, the next process does
//! the same and completes the AMI when every layer stands
//! ([`super::recovery`]). How the layers are taken depends on the instance:
//!
//! - stopped: the files are switched with no guest running;
//! - running, default: EC2 reboots the instance for a consistent image;
//!   amirun stops it cleanly (ACPI power button), snapshots it as stopped,
//!   and starts it again (the guest sees a reboot);
//! - running with `--no-reboot`: live, inside the supervisor
//!   ([`crate::instance::live_snapshot`]: pause, switch, resume whatever
//!   happens, with a deadline), so a client killed meanwhile cannot leave the
//!   guest paused; the guest is paused only around the switch; the pause is measured
//!   and reported, and so is whether a guest agent froze the filesystems
//!   (amirun's machines have no guest agent channel, so the image is
//!   crash-consistent, as EC2 warns for NoReboot).
//!
//! The operation returns when the AMI is `available` (amirun has no
//! background worker); `wait image-available` then returns at once.

use super::images::{check_name, check_unique_name, tags_for};
use super::instances::WaitFailure;
use super::layers::LayerInfo;
use super::shapes::{DiskContainer, Tag, TagSpecification};
use super::{check_image_id, image_not_found, now, Caller, Error, ErrorCode, Result, Service};
use crate::domain::{ImageStateName, InstanceStateName, RootDeviceType, SnapshotStateName};
use crate::ids::{self, IdKind};
use crate::store::{BlockDeviceMapping, EbsBlockDevice, ImageState, SnapshotState, SourceSpec};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `CreateImage`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct CreateImageRequest {
    pub instance_id: String,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Snapshot a running instance live instead of rebooting it.
    #[serde(default)]
    pub no_reboot: Option<bool>,
    /// Changes to the instance's mappings: `NoDevice` leaves a volume out,
    /// `DeleteOnTermination` may change, new devices (blank EBS or
    /// `ephemeralN`) are added.
    #[serde(default)]
    pub block_device_mappings: Vec<BlockDeviceMapping>,
    #[serde(default)]
    pub tag_specifications: Vec<TagSpecification>,
    /// amirun's own (`amirun create-image --flatten`), not a member of
    /// EC2's request: write every snapshot standalone (no parent layers).
    #[serde(skip)]
    pub flatten: bool,
}

/// What `CreateImage` returns: EC2's `ImageId` and amirun's report.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateImageResult {
    pub image_id: String,
    #[serde(rename = "Amirun")]
    pub report: CreateImageReport,
}

/// How the image was made.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateImageReport {
    /// `stopped`, `reboot` or `live`.
    pub mode: String,
    /// Wall-clock seconds for the whole operation.
    pub seconds: f64,
    /// Live only: how long the guest was paused, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause_ms: Option<f64>,
    /// Live only: whether a guest agent froze the filesystems.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_agent: Option<String>,
    pub snapshots: Vec<LayerInfo>,
}

/// `import-snapshot`.
#[derive(Debug, Clone, Default)]
pub struct ImportSnapshotInput {
    pub disk_container: DiskContainer,
    pub description: Option<String>,
    pub tag_specifications: Vec<TagSpecification>,
}

/// `export-image` (to a local file instead of an S3 bucket).
#[derive(Debug, Clone, Default)]
pub struct ExportImageInput {
    pub image_id: String,
    /// `qcow2`, `raw`, `vmdk` (stream-optimized, as EC2 exports) or `vhd`.
    pub disk_image_format: String,
    pub output: PathBuf,
    pub description: Option<String>,
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::internal(what).with_source(e)
}

impl Service {
    /// `CreateImage`, done before it returns (see the module doc); EC2's
    /// asynchronous CreateImage hands the same work to a worker
    /// ([`super::image_worker`]).
    pub fn create_image(
        &mut self,
        caller: &Caller,
        input: CreateImageRequest,
    ) -> Result<CreateImageResult> {
        if let Some(backend) = self.remote_backend(caller)? {
            return self.remote_create_image(caller, &*backend, &input);
        }
        self.create_image_as(caller, &input, None)
    }

    /// CreateImage making a new AMI, or filling in the `existing` pending
    /// AMI a worker was handed (whose name is taken already).
    pub(crate) fn create_image_as(
        &mut self,
        caller: &Caller,
        input: &CreateImageRequest,
        existing: Option<&str>,
    ) -> Result<CreateImageResult> {
        let started = Instant::now();
        check_name(&input.name)?;
        if !ids::is_well_formed(IdKind::Instance, &input.instance_id) {
            return Err(Error::new(
                ErrorCode::InvalidInstanceIdMalformed,
                format!(
                    "Invalid id: \"{}\" (expecting \"i-...\")",
                    input.instance_id
                ),
            ));
        }
        self.refresh_instances(caller)?;
        let id = input.instance_id.clone();
        let mut instance = self
            .store
            .read(|db| db.instance(&id))?
            .filter(|i| i.region == caller.region && i.owner_id == caller.account)
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::InvalidInstanceIdNotFound,
                    format!("The instance ID '{id}' does not exist"),
                )
            })?;
        if instance.root_device_type != RootDeviceType::Ebs {
            return Err(Error::new(
                ErrorCode::UnsupportedOperation,
                format!("The instance '{id}' is instance store-backed; CreateImage needs an EBS-backed instance"),
            ));
        }
        if instance.state == InstanceStateName::Stopping {
            instance = self.wait_stopped(caller, &id)?;
        }
        let mode = match (instance.state, input.no_reboot.unwrap_or(false)) {
            (InstanceStateName::Stopped, _) => "stopped",
            (s, true) if s.is_up() => "live",
            (s, false) if s.is_up() => "reboot",
            (s, _) => {
                return Err(Error::incorrect_instance_state(format!(
                    "The instance '{id}' is {s}; CreateImage needs it running or stopped"
                )))
            }
        };
        if mode == "reboot" {
            // EC2 reboots for a consistent image: stop cleanly, snapshot as
            // stopped, start again whatever happened.
            self.stop_instances(
                caller,
                super::instances::StopInstancesRequest {
                    instance_ids: vec![id.clone()],
                    force: None,
                    hibernate: None,
                },
            )?;
            let made = self
                .wait_stopped(caller, &id)
                .and_then(|_| self.create_image_locked(caller, input, "reboot", started, existing));
            let restarted = self.start_instances(
                caller,
                super::instances::StartInstancesRequest {
                    instance_ids: vec![id.clone()],
                },
            );
            let out = made?;
            restarted?;
            return Ok(out);
        }
        self.create_image_locked(caller, input, mode, started, existing)
    }

    /// CreateImage under the instance's lock (held for the whole file work,
    /// so no start, stop or other snapshot runs meanwhile): intent (pending
    /// records, new ids locked), layers, commit; a failure settles the
    /// snapshots from the files and removes the AMI record.
    fn create_image_locked(
        &mut self,
        caller: &Caller,
        input: &CreateImageRequest,
        mode: &str,
        started: Instant,
        existing: Option<&str>,
    ) -> Result<CreateImageResult> {
        let id = input.instance_id.clone();
        let _instance_lock = super::object_lock::lock(&self.paths, &id)?;
        let instance = self.store.read(|db| db.instance(&id))?.ok_or_else(|| {
            Error::new(
                ErrorCode::InvalidInstanceIdNotFound,
                format!("The instance ID '{id}' does not exist"),
            )
        })?;
        let fits = match mode {
            "live" => matches!(
                instance.state,
                InstanceStateName::Running | InstanceStateName::Pending
            ),
            _ => instance.state == InstanceStateName::Stopped,
        };
        if !fits {
            return Err(Error::incorrect_instance_state(format!(
                "The instance '{id}' became {} meanwhile; try again",
                instance.state
            )));
        }
        let source = self.store.read(|db| db.image(&instance.image_id))?;
        // Which volumes go in, and the new AMI's mappings.
        let mut volumes = Vec::new();
        let mut mappings = Vec::new();
        for (index, d) in instance.devices.iter().enumerate() {
            let asked = input
                .block_device_mappings
                .iter()
                .find(|m| m.device_name == d.device_name);
            if asked.is_some_and(|m| m.no_device.is_some()) {
                if d.device_name == instance.root_device_name {
                    return Err(Error::new(
                        ErrorCode::InvalidBlockDeviceMapping,
                        format!("The root device {} cannot be left out", d.device_name),
                    ));
                }
                continue;
            }
            match &d.volume_id {
                Some(vid) => {
                    let v = self.store.read(|db| db.volume(vid))?.ok_or_else(|| {
                        Error::internal(format!("Volume {vid} of {id} is missing"))
                    })?;
                    let asked_ebs = asked.and_then(|m| m.ebs.as_ref());
                    let size = asked_ebs.and_then(|e| e.volume_size).unwrap_or(v.size_gib);
                    if size < v.size_gib {
                        return Err(Error::new(
                            ErrorCode::InvalidBlockDeviceMapping,
                            format!(
                                "Volume size {size} GiB for {} is smaller than volume {vid} ({} GiB)",
                                d.device_name, v.size_gib
                            ),
                        ));
                    }
                    mappings.push((
                        Some(volumes.len()),
                        BlockDeviceMapping {
                            device_name: d.device_name.clone(),
                            ebs: Some(EbsBlockDevice {
                                delete_on_termination: Some(
                                    asked_ebs
                                        .and_then(|e| e.delete_on_termination)
                                        .unwrap_or(d.delete_on_termination),
                                ),
                                snapshot_id: None,
                                volume_size: Some(size),
                                volume_type: Some(v.volume_type.clone()),
                                encrypted: Some(false),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                    ));
                    volumes.push((v, Some(index)));
                }
                None => {
                    if let Some(name) = d.virtual_name.as_deref().filter(|n| *n != "root") {
                        mappings.push((
                            None,
                            BlockDeviceMapping {
                                device_name: d.device_name.clone(),
                                virtual_name: Some(name.to_string()),
                                ..Default::default()
                            },
                        ));
                    }
                }
            }
        }
        for m in &input.block_device_mappings {
            if m.no_device.is_none()
                && !instance
                    .devices
                    .iter()
                    .any(|d| d.device_name == m.device_name)
            {
                if m.ebs.as_ref().is_some_and(|e| e.snapshot_id.is_some()) {
                    return Err(Error::new(
                        ErrorCode::InvalidBlockDeviceMapping,
                        format!(
                            "A new mapping for {} cannot name a snapshot in CreateImage",
                            m.device_name
                        ),
                    ));
                }
                mappings.push((None, m.clone()));
            }
        }
        let mut locks = Vec::new();
        for (v, _) in &volumes {
            locks.push(super::object_lock::lock(&self.paths, &v.volume_id)?);
        }
        let plans = self.plan_layers(volumes, input.flatten)?;
        let image_id = existing.map_or_else(|| ids::new_id(IdKind::Image), String::from);
        locks.push(super::object_lock::lock(&self.paths, &image_id)?);
        for p in &plans {
            locks.push(super::object_lock::lock(&self.paths, &p.snapshot_id)?);
        }
        let block_device_mappings: Vec<BlockDeviceMapping> = mappings
            .into_iter()
            .map(|(vol, mut m)| {
                if let (Some(n), Some(e)) = (vol, m.ebs.as_mut()) {
                    e.snapshot_id = Some(plans[n].snapshot_id.clone());
                }
                m
            })
            .collect();
        let mut image = ImageState {
            description: input.description.clone(),
            boot_mode: source
                .as_ref()
                .and_then(|s| s.boot_mode)
                .or(Some(instance.boot_mode)),
            root_device_name: instance.root_device_name.clone(),
            state: ImageStateName::Pending,
            image_location: Some(format!("{}/{}", caller.account, input.name)),
            source_image_id: Some(instance.image_id.clone()),
            source_image_region: Some(instance.region.clone()),
            source_instance_id: Some(id.clone()),
            block_device_mappings,
            ..ImageState::private(
                &image_id,
                &caller.region,
                &caller.account,
                &input.name,
                instance.architecture,
                &now(),
            )
        };
        let records = self.pending_snapshots(
            caller,
            &plans,
            &format!("Created by CreateImage({id}) for {image_id}"),
        );
        let image_tags = tags_for(&input.tag_specifications, "image")?;
        let snap_tags = tags_for(&input.tag_specifications, "snapshot")?;
        if let Some(pending) = existing {
            // The worker's AMI: as recorded by its request.
            let recorded = self.store.read(|db| db.image(pending))?;
            let recorded = recorded.ok_or_else(|| image_not_found(&[pending.to_string()]))?;
            image.creation_date = recorded.creation_date;
        }
        self.store.write(|db| -> Result<()> {
            if existing.is_none() {
                check_unique_name(db, caller, &input.name)?;
            }
            for s in &records {
                db.put_snapshot(s)?;
                for (k, v) in &snap_tags {
                    db.put_tag(&s.snapshot_id, k, v)?;
                }
            }
            db.put_image(&image)?;
            for (k, v) in &image_tags {
                db.put_tag(&image_id, k, v)?;
            }
            Ok(())
        })?;
        let taken = crate::failpoint::hit("create-image:after-intent")
            .map_err(Error::from)
            .and_then(|()| {
                self.take_layers(
                    "create-image",
                    (mode == "live").then_some(id.as_str()),
                    &plans,
                )
            });
        let report = match taken {
            Ok(r) => r,
            Err(e) => {
                self.settle_failed(&records);
                if existing.is_none() {
                    let _ = self.store.write(|db| db.delete_image(&image_id));
                }
                return Err(e);
            }
        };
        image.state = ImageStateName::Available;
        self.store.write(|db| -> Result<()> {
            Self::record_layers(db, &report)?;
            db.put_image(&image)?;
            Ok(())
        })?;
        drop(locks);
        Ok(CreateImageResult {
            image_id,
            report: CreateImageReport {
                mode: mode.to_string(),
                seconds: started.elapsed().as_secs_f64(),
                pause_ms: report.pause_ms,
                guest_agent: report.guest_agent,
                snapshots: report.layers,
            },
        })
    }

    /// Poll until an instance is stopped (the stop timeout plus a margin).
    fn wait_stopped(&mut self, caller: &Caller, id: &str) -> Result<crate::store::InstanceState> {
        use InstanceStateName::{ShuttingDown, Stopped, Terminated};
        let secs = self.options.stop_timeout_secs + 30;
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut last = None;
        let read = |svc: &mut Service| {
            svc.refresh_instances(caller)?;
            let i = svc.store.read(|db| db.instance(id))?.ok_or_else(|| {
                Error::new(
                    ErrorCode::InvalidInstanceIdNotFound,
                    format!("The instance ID '{id}' does not exist"),
                )
            })?;
            let state = i.state;
            last = Some(i);
            Ok(vec![(id.to_string(), state)])
        };
        let interval = Duration::from_millis(200);
        match self.wait_for_state(
            Stopped,
            &[Terminated, ShuttingDown],
            deadline,
            interval,
            read,
        ) {
            Ok(_) => Ok(last.expect("read before reaching the state")),
            Err(WaitFailure::Error(e)) => Err(e),
            Err(WaitFailure::Hopeless { state, .. }) => Err(Error::new(
                ErrorCode::IncorrectInstanceState,
                format!("The instance '{id}' is {state} while waiting for it to stop"),
            )),
            Err(WaitFailure::TimedOut { .. }) => Err(Error::new(
                ErrorCode::IncorrectInstanceState,
                format!("The instance '{id}' did not stop within {secs} s"),
            )),
        }
    }

    /// `ImportSnapshot`: a disk image (raw, vmdk, vhd, vhdx, qcow2; file or
    /// URL) into the blob store, recorded as a snapshot.
    pub fn import_snapshot(
        &mut self,
        caller: &Caller,
        input: &ImportSnapshotInput,
    ) -> Result<Value> {
        let url = input
            .disk_container
            .url
            .clone()
            .ok_or_else(|| Error::missing("DiskContainer.Url"))?;
        let url = self.import_policy.admit("DiskContainer.Url", &url)?;
        let format = input
            .disk_container
            .format
            .as_ref()
            .map(|f| f.to_ascii_lowercase());
        if let Some(f) = &format {
            if !["raw", "vmdk", "vhd", "vhdx", "qcow2"].contains(&f.as_str()) {
                return Err(Error::invalid_value(format!(
                    "Value ({f}) for parameter Format is invalid; use raw, vmdk, vhd, vhdx or qcow2"
                )));
            }
        }
        let source = SourceSpec {
            url: url.clone(),
            sha256: None,
            checksum_url: None,
            format,
        };
        crate::catalog::validate_source(&source).map_err(Error::invalid_value)?;
        let blob = self.fetch_source(&source)?;
        let task_id = ids::new_id(IdKind::ImportTask).replacen("import-ami", "import-snap", 1);
        let snapshot_id = ids::new_id(IdKind::Snapshot);
        let description = input
            .description
            .clone()
            .unwrap_or_else(|| format!("Created by AWS-VMImport service for {task_id}"));
        let record = SnapshotState {
            snapshot_id: snapshot_id.clone(),
            region: caller.region.clone(),
            owner_id: caller.account.to_string(),
            owner_alias: None,
            volume_id: None,
            volume_size_gib: blob.virtual_size.div_ceil(1 << 30).max(1),
            state: SnapshotStateName::Completed,
            description: Some(description.clone()),
            start_time: now(),
            source: None,
            blob_sha256: Some(blob.sha256.clone()),
            parent_snapshot_id: None,
            has_file: false,
            storage_bytes: Some(blob.size),
            catalog_key: None,
        };
        let tags = tags_for(&input.tag_specifications, "import-snapshot-task")?;
        let snap_tags = tags_for(&input.tag_specifications, "snapshot")?;
        self.store.write(|db| -> Result<()> {
            db.put_snapshot(&record)?;
            for (k, v) in &snap_tags {
                db.put_tag(&snapshot_id, k, v)?;
            }
            Ok(())
        })?;
        Ok(json!({
            "Description": description,
            "ImportTaskId": task_id,
            "SnapshotTaskDetail": {
                "Description": description,
                "DiskImageSize": blob.size as f64,
                "Format": blob.source_format.to_ascii_uppercase(),
                "Progress": "100",
                "SnapshotId": snapshot_id,
                "Status": "completed",
                "StatusMessage": "completed",
                "Url": url,
            },
            "Tags": tags.into_iter().map(|(key, value)| Tag { key, value: Some(value) }).collect::<Vec<_>>(),
        }))
    }

    /// `ExportImage`: the AMI's root disk, its whole chain, as one file in
    /// `qcow2`, `raw`, `vmdk` or `vhd`; written beside the output and
    /// renamed into place; progress on a terminal.
    pub fn export_image(&mut self, caller: &Caller, input: &ExportImageInput) -> Result<Value> {
        check_image_id(&input.image_id)?;
        let format = input.disk_image_format.to_ascii_lowercase();
        let (qemu_format, options) = match format.as_str() {
            "qcow2" => ("qcow2", None),
            "raw" => ("raw", None),
            "vmdk" => ("vmdk", Some("subformat=streamOptimized")),
            "vhd" => ("vpc", Some("subformat=dynamic")),
            other => {
                return Err(Error::invalid_value(format!(
                    "Value ({other}) for parameter DiskImageFormat is invalid; use VMDK, RAW, VHD or QCOW2"
                )))
            }
        };
        let image = self.launchable_image(caller, &input.image_id)?;
        if image.owner_id != caller.account {
            return Err(image_not_found(std::slice::from_ref(&input.image_id)));
        }
        let disks = self.fetch_image(caller, &input.image_id)?;
        let root = disks
            .iter()
            .find(|d| d.device_name == image.root_device_name)
            .or(disks.first())
            .ok_or_else(|| Error::internal(format!("Image {} has no disk", input.image_id)))?;
        let output = std::path::absolute(&input.output)
            .map_err(io_err(format!("Cannot resolve {}", input.output.display())))?;
        let started = Instant::now();
        let bar = export_bar(self.progress);
        crate::disk::convert_with_progress(
            std::path::Path::new(&root.path),
            Some("qcow2"),
            &output,
            qemu_format,
            options,
            &mut |p| {
                if let Some(b) = &bar {
                    b.set_position(p as u64);
                }
            },
        )?;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let bytes = std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0);
        let task = ids::new_id(IdKind::ImportTask).replacen("import-ami", "export-ami", 1);
        Ok(json!({
            "ExportImageTaskId": task,
            "ImageId": input.image_id,
            "DiskImageFormat": format.to_ascii_uppercase(),
            "Description": input.description,
            "Progress": "100",
            "Status": "completed",
            "Amirun": {
                "Output": output.display().to_string(),
                "Bytes": bytes,
                "Seconds": started.elapsed().as_secs_f64(),
            },
        }))
    }
}

fn export_bar(progress: crate::blobs::Progress) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if progress != crate::blobs::Progress::Auto || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(100),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("exporting [{bar:40}] {pos}% {elapsed}")
    {
        bar.set_style(style);
    }
    Some(bar)
}
