//! EBS snapshots as qcow2 layers: taking them (from stopped volumes, or live
//! over QMP), collapsing long chains, merging a deleted snapshot into what
//! builds on it, and copying.
//!
//! # The layer model
//!
//! A snapshot with `has_file` is an immutable qcow2 file
//! (`snapshots/<snap-id>.qcow2`) whose backing chain leads to its parent's
//! data: the parent's own layer, or a blob (`blobs/sha256/<hex>`) for an
//! imported or catalog snapshot. Its size on disk is what changed since the
//! parent. A volume is a writable overlay on the snapshot recorded as its
//! *base* (`Db::volume_base`; at launch, the snapshot it was made from).
//!
//! Taking a snapshot of volume V (overlay on base B) costs O(1), whatever
//! the disk size:
//!
//! 1. hard-link V's current file to `snapshots/<new>.qcow2`: the snapshot
//!    *is* what V holds now, with V's backing chain (B …);
//! 2. make a fresh empty overlay on the new snapshot at
//!    `volumes/<vol>.next.qcow2` (`qemu-img create -u`: the size is known,
//!    the backing file is not opened, so this works while QEMU holds it);
//! 3. live only: the supervisor pauses the guest (`stop`), switches every
//!    disk to its new overlay in one QMP `transaction` of
//!    `blockdev-snapshot-sync` (`mode=existing`), resumes it (`cont`, always,
//!    with a deadline) and does step 4 itself
//!    ([`crate::instance::live_snapshot`]); the pause is measured;
//! 4. rename the new overlay over `volumes/<vol>.qcow2`. From here the old
//!    file is reachable only as the snapshot, and nothing writes to it.
//!
//! The snapshot is recorded `pending` (with parent B, the real chain of the
//! linked file) before step 1, under the locks of the instance, the volume
//! and the new id. Then one transaction completes it and moves V's base to
//! it. Whether the work is kept after a failure or a crash is decided from
//! the files ([`super::recovery`]): if V's file backs onto the snapshot's
//! file (step 4 happened), the snapshot is completed; otherwise the link and
//! the new overlay are removed and V is as it was.
//!
//! Chains stay bounded: a new snapshot whose chain would hold more than
//! `AMIRUN_MAX_CHAIN_DEPTH` layers (default 16) is collapsed, i.e. rewritten
//! as a standalone qcow2 of its whole chain (no parent). `--flatten` asks for
//! the same on purpose. The collapse comes after step 4, so a failed one
//! (no space left) keeps the snapshot as a layer, recorded.
//!
//! # Deleting a layer others build on
//!
//! Deleting snapshot S rebases every layer directly on S (child snapshots,
//! and overlays of volumes whose base is S) onto S's own backing file with
//! `qemu-img rebase` in safe mode, which copies into the child exactly the
//! data S held that the child did not override. The children stay whole and
//! see the same disk; then S's record and file go. When S is a blob-backed
//! snapshot (no layer of its own), its children already point at the
//! immutable blob and nothing is copied. As on EC2, only an AMI using S
//! makes the delete `InvalidSnapshot.InUse`; amirun also refuses while any
//! file the records do not list as S's dependent backs onto S's file (the
//! real chains, from `qemu-img info`), and while S or a child of S is
//! `pending`. S is marked `deleting` first (from then on it is gone for
//! callers: not described, not found), so a killed delete is finished by
//! the next process. While an instance that is not stopped has a volume
//! whose chain reads S (its QEMU holds those files open), the delete
//! succeeds at once and the merge waits: S's layer stays under those
//! volumes until nothing running reads it, and then the recovery pass of
//! the next process merges and removes it.
//!
//! Copies (CopySnapshot, CopyImage) write under a temporary name, rename,
//! then record, holding the new ids' locks throughout: a crash leaves only
//! files no record owns, which the orphan sweep removes.

use super::shapes::{Tag, TagSpecification};
use super::snapshots::DeleteSnapshotRequest;
use super::{
    check_snapshot_id, now, snapshot_not_found, Caller, Error, ErrorCode, Result, Service,
};
use crate::domain::{InstanceStateName, SnapshotStateName};
use crate::ids::{self, IdKind};
use crate::instance::supervisor::SupervisorClient;
use crate::store::{Db, SnapshotState, VolumeState};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Default for `AMIRUN_MAX_CHAIN_DEPTH`: snapshot layers in one chain.
pub const DEFAULT_MAX_CHAIN_DEPTH: usize = 16;

/// One volume to snapshot, planned before any file is touched.
#[derive(Debug, Clone)]
pub(crate) struct LayerPlan {
    pub volume: VolumeState,
    /// Position of the volume among the instance's disks (QMP node `diskN`),
    /// for a live snapshot.
    pub disk_index: Option<usize>,
    pub snapshot_id: String,
    /// The volume's base: the new snapshot's parent.
    pub parent: Option<String>,
    /// The blob at the root of the chain, if any.
    pub root_blob: Option<String>,
    /// Rewrite the new snapshot standalone (chain too deep, or asked for).
    pub collapse: bool,
}

/// What a snapshot pass did, for the caller's report.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct LayerReport {
    /// `stopped` (files switched with no guest running) or `live` (QMP).
    pub mode: String,
    /// How long the guest was paused (live only), in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause_ms: Option<f64>,
    /// Whether filesystems were frozen through a guest agent (live only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_agent: Option<String>,
    /// The snapshots made.
    pub layers: Vec<LayerInfo>,
}

/// One snapshot made.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct LayerInfo {
    pub snapshot_id: String,
    pub volume_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_snapshot_id: Option<String>,
    /// Bytes the layer takes on disk.
    pub storage_bytes: u64,
    /// Whether it was written standalone.
    pub collapsed: bool,
}

/// The file holding a snapshot's data, if it has any yet.
pub(crate) fn data_path(paths: &crate::paths::Paths, s: &SnapshotState) -> Option<PathBuf> {
    if s.has_file {
        Some(paths.snapshot(&s.snapshot_id))
    } else {
        s.blob_sha256.as_deref().map(|b| paths.blob(b))
    }
}

/// Snapshot layers (files) in the chain that starts at `id`.
pub(crate) fn depth(db: &Db, id: Option<&str>) -> crate::store::Result<usize> {
    let mut n = 0;
    let mut next = id.map(str::to_owned);
    while let Some(sid) = next {
        let Some(s) = db.snapshot(&sid)? else { break };
        if !s.has_file || n > 10_000 {
            break;
        }
        n += 1;
        next = s.parent_snapshot_id;
    }
    Ok(n)
}

/// Snapshot ids of the chain that starts at `id` (inclusive).
fn chain(db: &Db, id: Option<&str>) -> crate::store::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut next = id.map(str::to_owned);
    while let Some(sid) = next {
        if out.contains(&sid) {
            break;
        }
        out.push(sid.clone());
        next = db.snapshot(&sid)?.and_then(|s| s.parent_snapshot_id);
    }
    Ok(out)
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::internal(what).with_source(e)
}

/// Files made by a snapshot pass that are removed again if it fails.
struct Undo(Vec<PathBuf>);

impl Drop for Undo {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = std::fs::remove_file(f);
        }
    }
}

impl Service {
    /// Plan snapshots of `volumes` (with their disk index for live ones).
    pub(crate) fn plan_layers(
        &mut self,
        volumes: Vec<(VolumeState, Option<usize>)>,
        flatten: bool,
    ) -> Result<Vec<LayerPlan>> {
        let max = self.options.max_chain_depth.max(1);
        self.store.read(|db| -> Result<Vec<LayerPlan>> {
            let mut out = Vec::new();
            for (volume, disk_index) in volumes {
                let parent = db.volume_base(&volume)?;
                let base = match &parent {
                    Some(p) => db.snapshot(p)?,
                    None => None,
                };
                let root_blob = base.as_ref().and_then(|b| b.blob_sha256.clone());
                let collapse = flatten || depth(db, parent.as_deref())? + 1 > max;
                out.push(LayerPlan {
                    volume,
                    disk_index,
                    snapshot_id: ids::new_id(IdKind::Snapshot),
                    parent,
                    root_blob,
                    collapse,
                });
            }
            Ok(out)
        })
    }

    /// The snapshot records of a plan, in state `pending`.
    pub(crate) fn pending_snapshots(
        &self,
        caller: &Caller,
        plans: &[LayerPlan],
        description: &str,
    ) -> Vec<SnapshotState> {
        let start = now();
        plans
            .iter()
            .map(|p| SnapshotState {
                snapshot_id: p.snapshot_id.clone(),
                region: caller.region.clone(),
                owner_id: caller.account.to_string(),
                owner_alias: None,
                volume_id: Some(p.volume.volume_id.clone()),
                volume_size_gib: p.volume.size_gib,
                state: SnapshotStateName::Pending,
                description: Some(description.to_string()),
                start_time: start.clone(),
                source: None,
                // The linked file's real chain until a collapse commits.
                blob_sha256: p.root_blob.clone(),
                parent_snapshot_id: p.parent.clone(),
                has_file: true,
                storage_bytes: None,
                catalog_key: None,
            })
            .collect()
    }

    /// Steps 1-4 of the module doc for every planned volume at once; with
    /// `live`, the instance's guest is paused once around the switch (inside
    /// its supervisor). Then collapses what the plan says. Returns the
    /// report; records nothing. The caller holds the locks of the instance,
    /// the volumes and the new snapshot ids, and has recorded the snapshots
    /// `pending`; failpoints are named `<op>:<step>`.
    ///
    /// On error, the caller settles the pending snapshots from the files
    /// (`Service::settle_snapshot`): what a volume already stands on is
    /// kept, the rest removed.
    pub(crate) fn take_layers(
        &mut self,
        op: &str,
        live: Option<&str>,
        plans: &[LayerPlan],
    ) -> Result<LayerReport> {
        let fail = |step: &str| crate::failpoint::hit(&format!("{op}:{step}"));
        let sdir = self.paths.snapshot_dir();
        std::fs::create_dir_all(&sdir)
            .map_err(io_err(format!("Cannot create {}", sdir.display())))?;
        let mut switches = Vec::new();
        for p in plans {
            let vol = self.paths.volume(&p.volume.volume_id);
            let snap = self.paths.snapshot(&p.snapshot_id);
            let size = crate::disk::info(&vol)?.virtual_size;
            std::fs::hard_link(&vol, &snap).map_err(io_err(format!(
                "Cannot link {} to {}",
                vol.display(),
                snap.display()
            )))?;
            fail("after-link")?;
            let next = self.paths.volume_pending(&p.volume.volume_id);
            crate::disk::create_overlay_unopened(&snap, "qcow2", &next, size)?;
            fail("after-overlay")?;
            switches.push((p.disk_index, next, vol, p.volume.volume_id.clone()));
        }
        let mut report = LayerReport {
            mode: "stopped".into(),
            ..Default::default()
        };
        if let Some(instance_id) = live {
            let (pause, agent) = self.live_switch(instance_id, &switches)?;
            report.mode = "live".into();
            report.pause_ms = Some(pause);
            report.guest_agent = Some(agent);
        } else {
            for (_, next, vol, _) in &switches {
                std::fs::rename(next, vol).map_err(io_err(format!(
                    "Cannot move the new overlay {} into place",
                    next.display()
                )))?;
            }
        }
        // The volumes now stand on the new layers: from here on the layers
        // are kept whatever happens (a failed collapse leaves a layer).
        fail("after-rename")?;
        for p in plans {
            let snap = self.paths.snapshot(&p.snapshot_id);
            let mut collapsed = false;
            if p.collapse {
                // A standalone copy of the whole chain replaces the layer (a
                // running QEMU keeps reading the old inode, same content).
                match crate::disk::convert(&snap, Some("qcow2"), &snap, "qcow2")
                    .map_err(Error::from)
                    .and_then(|()| fail("after-collapse").map_err(Error::from))
                {
                    Ok(()) => collapsed = true,
                    Err(e) => tracing::warn!(
                        snapshot = %p.snapshot_id,
                        "cannot write the snapshot standalone, keeping it as a layer: {e}"
                    ),
                }
            }
            report.layers.push(LayerInfo {
                snapshot_id: p.snapshot_id.clone(),
                volume_id: p.volume.volume_id.clone(),
                parent_snapshot_id: if collapsed { None } else { p.parent.clone() },
                storage_bytes: crate::disk::info(&snap)?.actual_size,
                collapsed,
            });
        }
        Ok(report)
    }

    /// Switch each disk to its new overlay inside the supervisor (pause,
    /// one QMP transaction, resume whatever happens, rename: see
    /// [`crate::instance::live_snapshot`]). Returns the pause in ms and what
    /// happened about a guest agent.
    fn live_switch(
        &mut self,
        instance_id: &str,
        switches: &[(Option<usize>, PathBuf, PathBuf, String)],
    ) -> Result<(f64, String)> {
        use crate::instance::hotplug::{DiskLocation, DiskRequest};
        use crate::instance::live_snapshot::{LiveDisk, LiveSnapshotRequest};
        let socket = self.paths.control_socket(instance_id);
        let mut c = SupervisorClient::connect(&socket)?;
        let mut disks = Vec::new();
        for (index, next, vol, volume_id) in switches {
            let index =
                index.ok_or_else(|| Error::internal("A live snapshot needs the disk's index"))?;
            // The disk is found by its serial (the volume id): a volume
            // attached or detached while the guest runs moves the others'
            // positions, never their serials.
            let serial = crate::machine::volume_serial(volume_id);
            let found = c.disk(DiskRequest::Find {
                serial: serial.clone(),
            })?;
            let node = serde_json::from_value::<Option<DiskLocation>>(found)
                .ok()
                .flatten()
                .map(|l| l.node)
                .ok_or_else(|| {
                    Error::internal(format!(
                        "QEMU of {instance_id} shows no disk with serial {serial}"
                    ))
                })?;
            let abs = |p: &PathBuf| {
                std::path::absolute(p).map_err(io_err(format!("Cannot resolve {}", p.display())))
            };
            disks.push(LiveDisk {
                node,
                new_node: format!("disk{index}-{}", &ids::new_id(IdKind::Snapshot)[5..]),
                next: abs(next)?,
                volume: abs(vol)?,
            });
        }
        // amirun's machines have no guest agent channel; say so rather than
        // pretend the filesystems were frozen.
        let agent = "none: no guest agent channel, snapshot is crash-consistent".to_string();
        let reply = c.live_snapshot(LiveSnapshotRequest { disks })?;
        if !reply.switched || reply.error.is_some() {
            return Err(Error::internal(format!(
                "QEMU of {instance_id} refused the live snapshot: {}",
                reply.error.unwrap_or_default()
            )));
        }
        Ok((reply.pause_ms, agent))
    }

    /// After a failed [`Service::take_layers`]: keep what a volume already
    /// stands on, remove the rest (the caller still holds the locks).
    pub(crate) fn settle_failed(&mut self, records: &[SnapshotState]) {
        for r in records {
            if let Err(e) = self.settle_snapshot(r) {
                tracing::warn!(snapshot = %r.snapshot_id, "cannot settle after a failure: {e}");
            }
        }
    }

    /// Record what [`Service::take_layers`] made: snapshots completed, volume bases moved.
    pub(crate) fn record_layers(db: &Db, report: &LayerReport) -> Result<()> {
        for l in &report.layers {
            let mut s = db
                .snapshot(&l.snapshot_id)?
                .ok_or_else(|| snapshot_not_found(&l.snapshot_id))?;
            s.state = SnapshotStateName::Completed;
            s.storage_bytes = Some(l.storage_bytes);
            if l.collapsed {
                s.parent_snapshot_id = None;
                s.blob_sha256 = None;
            }
            db.put_snapshot(&s)?;
            db.set_volume_base(&l.volume_id, Some(&l.snapshot_id))?;
        }
        Ok(())
    }

    /// `CreateSnapshot`: a layer of one volume; live when its instance runs.
    pub fn create_snapshot(
        &mut self,
        caller: &Caller,
        input: CreateSnapshotRequest,
    ) -> Result<CreateSnapshotResult> {
        self.refresh_instances(caller)?;
        let volume = self
            .store
            .read(|db| db.volume(&input.volume_id))?
            .filter(|v| v.region == caller.region && v.owner_id == caller.account)
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::InvalidVolumeNotFound,
                    format!("The volume '{}' does not exist.", input.volume_id),
                )
            })?;
        let mut live = None;
        let mut index = None;
        if let Some(iid) = &volume.instance_id {
            let i = self
                .store
                .read(|db| db.instance(iid))?
                .ok_or_else(|| Error::internal(format!("Instance {iid} is missing")))?;
            index = i
                .devices
                .iter()
                .position(|d| d.volume_id.as_deref() == Some(&volume.volume_id));
            match i.state {
                InstanceStateName::Stopped | InstanceStateName::Terminated => {}
                InstanceStateName::Running | InstanceStateName::Pending => {
                    live = Some(iid.clone())
                }
                s => {
                    return Err(Error::new(
                        ErrorCode::IncorrectState,
                        format!(
                            "Volume {} is attached to {iid}, which is {s}; try again when it is running or stopped",
                            volume.volume_id
                        ),
                    ))
                }
            }
        }
        // Instance, volume, then the new snapshot: held until the commit.
        let mut locks = Vec::new();
        if let Some(iid) = &volume.instance_id {
            locks.push(super::object_lock::lock(&self.paths, iid)?);
        }
        locks.push(super::object_lock::lock(&self.paths, &volume.volume_id)?);
        let plans = self.plan_layers(vec![(volume, index)], input.flatten)?;
        locks.push(super::object_lock::lock(
            &self.paths,
            &plans[0].snapshot_id,
        )?);
        let description = input.description.clone().unwrap_or_default();
        let records = self.pending_snapshots(caller, &plans, &description);
        let tags = super::images::tags_for(&input.tag_specifications, "snapshot")?;
        self.store.write(|db| -> Result<()> {
            for s in &records {
                db.put_snapshot(s)?;
                for (k, v) in &tags {
                    db.put_tag(&s.snapshot_id, k, v)?;
                }
            }
            Ok(())
        })?;
        let report = match self.take_layers("create-snapshot", live.as_deref(), &plans) {
            Ok(r) => r,
            Err(e) => {
                self.settle_failed(&records);
                return Err(e);
            }
        };
        self.store.write(|db| Self::record_layers(db, &report))?;
        drop(locks);
        let s = &records[0];
        let volume_id = report.layers[0].volume_id.clone();
        Ok(CreateSnapshotResult {
            description,
            encrypted: false,
            owner_id: s.owner_id.clone(),
            progress: "100%".into(),
            snapshot_id: s.snapshot_id.clone(),
            start_time: s.start_time.clone(),
            state: SnapshotStateName::Completed,
            volume_id,
            volume_size: s.volume_size_gib,
            tags: tags
                .into_iter()
                .map(|(key, value)| Tag {
                    key,
                    value: Some(value),
                })
                .collect(),
            amirun: report,
        })
    }

    /// `CreateSnapshots`: a snapshot of each EBS volume of an instance
    /// (less the boot volume or listed data volumes), crash-consistent: a
    /// running guest's disks all switch to their new layers in one pause
    /// (one QMP transaction), a stopped one's while nothing writes.
    pub fn create_snapshots(
        &mut self,
        caller: &Caller,
        input: CreateSnapshotsRequest,
    ) -> Result<CreateSnapshotsResult> {
        let spec = &input.instance_specification;
        let copy_volume_tags = match input.copy_tags_from_source.as_deref() {
            None => false,
            Some("volume") => true,
            Some(other) => {
                return Err(Error::invalid_value(format!(
                    "Value ({other}) for parameter CopyTagsFromSource is invalid; use volume"
                )))
            }
        };
        self.refresh_instances(caller)?;
        let instance = self
            .owned_instances(caller, std::slice::from_ref(&spec.instance_id))?
            .remove(0);
        let iid = instance.instance_id.clone();
        let live = match instance.state {
            InstanceStateName::Stopped => None,
            InstanceStateName::Running | InstanceStateName::Pending => Some(iid.clone()),
            s => {
                return Err(Error::new(
                    ErrorCode::IncorrectState,
                    format!(
                        "Instance {iid} is {s}; snapshot its volumes when it is running or stopped"
                    ),
                ))
            }
        };
        let data_volumes: Vec<&str> = instance
            .devices
            .iter()
            .filter(|d| d.device_name != instance.root_device_name)
            .filter_map(|d| d.volume_id.as_deref())
            .collect();
        if let Some(v) = spec
            .exclude_data_volume_ids
            .iter()
            .find(|v| !data_volumes.contains(&v.as_str()))
        {
            return Err(Error::invalid_value(format!(
                "Volume {v} is not a data volume of {iid}; ExcludeDataVolumeIds names data volumes of the instance"
            )));
        }
        // Instance first, then its volumes, then the new snapshots: held until the commit.
        let mut locks = vec![super::object_lock::lock(&self.paths, &iid)?];
        let mut volumes = Vec::new();
        for (index, d) in instance.devices.iter().enumerate() {
            let Some(vid) = &d.volume_id else { continue };
            let boot = d.device_name == instance.root_device_name;
            if (boot && spec.exclude_boot_volume == Some(true))
                || spec.exclude_data_volume_ids.contains(vid)
            {
                continue;
            }
            let v = self
                .store
                .read(|db| db.volume(vid))?
                .ok_or_else(|| Error::internal(format!("Volume {vid} of {iid} is missing")))?;
            locks.push(super::object_lock::lock(&self.paths, vid)?);
            volumes.push((v, Some(index)));
        }
        if volumes.is_empty() {
            return Err(Error::invalid_value(format!(
                "Instance {iid} has no EBS volume left to snapshot"
            )));
        }
        let zones: Vec<String> = volumes
            .iter()
            .map(|(v, _)| v.availability_zone.clone())
            .collect();
        let plans = self.plan_layers(volumes, false)?;
        for p in &plans {
            locks.push(super::object_lock::lock(&self.paths, &p.snapshot_id)?);
        }
        let description = input.description.clone().unwrap_or_default();
        let records = self.pending_snapshots(caller, &plans, &description);
        let tags = super::images::tags_for(&input.tag_specifications, "snapshot")?;
        let mut tags_of = Vec::new();
        for p in &plans {
            let mut t = tags.clone();
            if copy_volume_tags {
                for vt in self.store.read(|db| db.tags_of(&p.volume.volume_id))? {
                    if !t.iter().any(|(k, _)| *k == vt.key) {
                        t.push((vt.key, vt.value));
                    }
                }
            }
            tags_of.push(t);
        }
        self.store.write(|db| -> Result<()> {
            for (s, t) in records.iter().zip(&tags_of) {
                db.put_snapshot(s)?;
                for (k, v) in t {
                    db.put_tag(&s.snapshot_id, k, v)?;
                }
            }
            Ok(())
        })?;
        let report = match self.take_layers("create-snapshots", live.as_deref(), &plans) {
            Ok(r) => r,
            Err(e) => {
                self.settle_failed(&records);
                return Err(e);
            }
        };
        self.store.write(|db| Self::record_layers(db, &report))?;
        drop(locks);
        let snapshots = records
            .iter()
            .zip(&report.layers)
            .zip(tags_of)
            .zip(zones)
            .map(|(((s, l), t), zone)| SnapshotInfo {
                description: description.clone(),
                tags: t
                    .into_iter()
                    .map(|(key, value)| Tag {
                        key,
                        value: Some(value),
                    })
                    .collect(),
                encrypted: false,
                volume_id: l.volume_id.clone(),
                state: SnapshotStateName::Completed,
                volume_size: s.volume_size_gib,
                start_time: s.start_time.clone(),
                progress: "100%".into(),
                owner_id: s.owner_id.clone(),
                snapshot_id: s.snapshot_id.clone(),
                availability_zone: zone,
            })
            .collect();
        Ok(CreateSnapshotsResult { snapshots })
    }

    /// `CopySnapshot`: a new snapshot with the same data. A layer is copied
    /// as a layer on the same parent; with `flatten`, the whole chain is
    /// written as one standalone qcow2.
    pub fn copy_snapshot(
        &mut self,
        caller: &Caller,
        input: CopySnapshotRequest,
    ) -> Result<CopySnapshotResult> {
        check_snapshot_id(&input.source_snapshot_id)?;
        if let Some(d) = input.destination_region.as_deref() {
            if d != caller.region {
                return Err(Error::invalid_value(format!(
                    "DestinationRegion {d} is not the region this request went to ({}); send the request to {d}",
                    caller.region
                )));
            }
        }
        if let Some(url) = input.presigned_url.as_deref() {
            let names_source = url::Url::parse(url).is_ok_and(|u| {
                u.query_pairs()
                    .any(|(k, v)| k == "SourceSnapshotId" && v == input.source_snapshot_id)
            });
            if !names_source {
                return Err(Error::invalid_value(format!(
                    "PresignedUrl does not name the snapshot {}",
                    input.source_snapshot_id
                )));
            }
        }
        let source_region = input
            .source_region
            .clone()
            .unwrap_or_else(|| caller.region.clone());
        let src = self
            .store
            .read(|db| db.snapshot(&input.source_snapshot_id))?
            .filter(|s| {
                s.region == source_region
                    && (s.owner_id == caller.account || s.catalog_key.is_some())
                    && s.state == SnapshotStateName::Completed
            })
            .ok_or_else(|| snapshot_not_found(&input.source_snapshot_id))?;
        let new_id = ids::new_id(IdKind::Snapshot);
        // Held until the record commits: a file left by a crash is swept.
        let _lock = super::object_lock::lock(&self.paths, &new_id)?;
        let dst = self.paths.snapshot(&new_id);
        let sdir = self.paths.snapshot_dir();
        std::fs::create_dir_all(&sdir)
            .map_err(io_err(format!("Cannot create {}", sdir.display())))?;
        let mut undo = Undo(Vec::new());
        let mut record = SnapshotState {
            snapshot_id: new_id.clone(),
            region: caller.region.clone(),
            owner_id: caller.account.to_string(),
            owner_alias: None,
            description: Some(input.description.clone().unwrap_or_else(|| {
                format!("[Copied {} from {source_region}]", input.source_snapshot_id)
            })),
            start_time: now(),
            catalog_key: None,
            state: SnapshotStateName::Completed,
            ..src.clone()
        };
        if input.flatten {
            let from = match data_path(&self.paths, &src) {
                Some(p) => p,
                None => {
                    self.fetch_snapshot_data(caller, &src)?;
                    let s = self
                        .store
                        .read(|db| db.snapshot(&src.snapshot_id))?
                        .ok_or_else(|| snapshot_not_found(&src.snapshot_id))?;
                    data_path(&self.paths, &s).ok_or_else(|| snapshot_not_found(&s.snapshot_id))?
                }
            };
            crate::disk::convert(&from, Some("qcow2"), &dst, "qcow2")?;
            undo.0.push(dst.clone());
            record.has_file = true;
            record.parent_snapshot_id = None;
            record.blob_sha256 = None;
            record.source = None;
            record.storage_bytes = Some(crate::disk::info(&dst)?.actual_size);
        } else if src.has_file {
            let tmp = self.paths.snapshot_tmp(&new_id);
            undo.0.push(tmp.clone());
            std::fs::copy(self.paths.snapshot(&src.snapshot_id), &tmp)
                .map_err(io_err(format!("Cannot copy snapshot {}", src.snapshot_id)))?;
            crate::failpoint::hit("copy-snapshot:after-copy")?;
            std::fs::rename(&tmp, &dst)
                .map_err(io_err(format!("Cannot move {} into place", dst.display())))?;
            undo.0.push(dst.clone());
        }
        crate::failpoint::hit("copy-snapshot:before-commit")?;
        let tags = super::images::tags_for(&input.tag_specifications, "snapshot")?;
        self.store.write(|db| -> Result<()> {
            db.put_snapshot(&record)?;
            for (k, v) in &tags {
                db.put_tag(&new_id, k, v)?;
            }
            Ok(())
        })?;
        undo.0.clear();
        Ok(CopySnapshotResult {
            snapshot_id: new_id,
            tags: tags
                .into_iter()
                .map(|(key, value)| Tag {
                    key,
                    value: Some(value),
                })
                .collect(),
        })
    }

    /// Make a data-less (catalog) snapshot's blob local.
    pub(crate) fn fetch_snapshot_data(&mut self, caller: &Caller, s: &SnapshotState) -> Result<()> {
        let image = self
            .store
            .read(|db| db.images_using_snapshot(&s.snapshot_id))?;
        let image = image.first().ok_or_else(|| {
            Error::internal(format!("Snapshot {} has no data yet", s.snapshot_id))
        })?;
        self.fetch_image(caller, image).map(drop)
    }

    /// `DeleteSnapshot` (see the module doc): merges the layer into what
    /// builds on it first. Refused for a `pending` snapshot, and while a file
    /// the records do not know of backs onto it (the real chains decide).
    /// The snapshot is marked `deleting` before any file changes, so a
    /// killed delete is finished by recovery ([`super::recovery`]).
    pub fn delete_snapshot(&mut self, caller: &Caller, input: DeleteSnapshotRequest) -> Result<()> {
        let snapshot_id = input.snapshot_id.as_str();
        check_snapshot_id(snapshot_id)?;
        self.refresh_instances(caller)?;
        // A pending snapshot's writer holds its lock: refuse at once, not after the wait.
        if let Some(s) = self.store.read(|db| db.snapshot(snapshot_id))? {
            if s.state == SnapshotStateName::Pending
                && s.region == caller.region
                && s.owner_id == caller.account
            {
                return Err(Error::new(
                    ErrorCode::IncorrectState,
                    format!(
                        "The snapshot {snapshot_id} is pending; try again when it is completed"
                    ),
                ));
            }
        }
        let _lock = super::object_lock::lock(&self.paths, snapshot_id)?;
        let (s, children, volumes) = self.store.read(
            |db| -> Result<(SnapshotState, Vec<SnapshotState>, Vec<VolumeState>)> {
                let s = db
                    .snapshot(snapshot_id)?
                    .filter(|s| {
                        s.region == caller.region
                            && (s.owner_id == caller.account || s.catalog_key.is_some())
                    })
                    .ok_or_else(|| snapshot_not_found(snapshot_id))?;
                if s.owner_id != caller.account {
                    return Err(Error::new(
                        ErrorCode::UnauthorizedOperation,
                        format!(
                            "Account {} does not own snapshot {snapshot_id}",
                            caller.account
                        ),
                    ));
                }
                if s.state == SnapshotStateName::Pending {
                    return Err(Error::new(
                        ErrorCode::IncorrectState,
                        format!(
                            "The snapshot {snapshot_id} is pending; try again when it is completed"
                        ),
                    ));
                }
                if s.state == SnapshotStateName::Deleting {
                    // Deleted already, as far as EC2's callers can tell.
                    return Err(snapshot_not_found(snapshot_id));
                }
                check_not_in_ami(db, snapshot_id)?;
                if let Some(c) = db
                    .child_snapshots(snapshot_id)?
                    .into_iter()
                    .find(|c| c.state != SnapshotStateName::Completed)
                {
                    return Err(Error::new(
                        ErrorCode::IncorrectState,
                        format!(
                            "Snapshot {} is being made on {snapshot_id}; try again when it is completed",
                            c.snapshot_id
                        ),
                    ));
                }
                Ok((
                    s,
                    db.child_snapshots(snapshot_id)?,
                    db.volumes_on_snapshot(snapshot_id)?,
                ))
            },
        )?;
        if s.has_file {
            let known: Vec<PathBuf> = children
                .iter()
                .map(|c| self.paths.snapshot(&c.snapshot_id))
                .chain(volumes.iter().map(|v| self.paths.volume(&v.volume_id)))
                .collect();
            let others = self.files_backing_onto(&self.paths.snapshot(snapshot_id), &known);
            if !others.is_empty() {
                return Err(super::recovery::backed_onto(snapshot_id, &others));
            }
        }
        let (s, deferred) = self.store.write(|db| -> Result<(SnapshotState, bool)> {
            check_not_in_ami(db, snapshot_id)?;
            let mut s = db
                .snapshot(snapshot_id)?
                .ok_or_else(|| snapshot_not_found(snapshot_id))?;
            s.state = SnapshotStateName::Deleting;
            db.put_snapshot(&s)?;
            Ok((s, read_by_running_instance(db, snapshot_id)?))
        })?;
        crate::failpoint::hit("delete-snapshot:after-intent")?;
        if deferred {
            // Gone for EC2's callers; the layer stays under the running
            // volumes that read it until they stop, then recovery merges it.
            return Ok(());
        }
        self.finish_delete(&s)
    }

    /// The file work and records of a delete marked `deleting` (the caller
    /// holds the snapshot's lock): every layer and volume still backed by
    /// the snapshot's file is rebased onto its backing file, records follow,
    /// then the record and the file go. Safe to run again after a crash:
    /// what already points past the snapshot is not rebased twice.
    pub(crate) fn finish_delete(&mut self, s: &SnapshotState) -> Result<()> {
        let snapshot_id = s.snapshot_id.as_str();
        let file = self.paths.snapshot(snapshot_id);
        let has_file = s.has_file && file.exists();
        // Where S's own data stands: its layer's backing file, if any.
        let backing: Option<PathBuf> = if has_file {
            crate::disk::info(&file)?.backing_file
        } else {
            None
        };
        let (children, volumes) = self.store.read(|db| -> Result<_> {
            Ok((
                db.child_snapshots(snapshot_id)?,
                db.volumes_on_snapshot(snapshot_id)?,
            ))
        })?;
        for c in &children {
            let path = self.paths.snapshot(&c.snapshot_id);
            if has_file && super::recovery::backs_onto(&path, &file) {
                rebase_onto(&path, backing.as_deref())?;
                crate::failpoint::hit("delete-snapshot:after-rebase")?;
            }
            let bytes = crate::disk::info(&path).map(|i| i.actual_size).ok();
            let flat = s.has_file && backing.is_none();
            self.store.write(|db| -> Result<()> {
                if let Some(mut c) = db.snapshot(&c.snapshot_id)? {
                    c.parent_snapshot_id = s.parent_snapshot_id.clone();
                    if flat {
                        c.blob_sha256 = None;
                    }
                    if c.has_file {
                        c.storage_bytes = bytes.or(c.storage_bytes);
                    }
                    db.put_snapshot(&c)?;
                }
                Ok(())
            })?;
        }
        for v in &volumes {
            let path = self.paths.volume(&v.volume_id);
            if has_file && super::recovery::backs_onto(&path, &file) {
                rebase_onto(&path, backing.as_deref())?;
                crate::failpoint::hit("delete-snapshot:after-rebase")?;
            }
            self.store
                .write(|db| db.set_volume_base(&v.volume_id, s.parent_snapshot_id.as_deref()))?;
        }
        self.store.write(|db| -> Result<()> {
            if !db.child_snapshots(snapshot_id)?.is_empty()
                || !db.volumes_on_snapshot(snapshot_id)?.is_empty()
            {
                return Err(Error::new(
                    ErrorCode::InvalidSnapshotInUse,
                    format!("The snapshot {snapshot_id} gained dependents meanwhile; try again"),
                ));
            }
            db.delete_snapshot(snapshot_id)?;
            Ok(())
        })?;
        crate::failpoint::hit("delete-snapshot:after-record")?;
        if s.has_file {
            let _ = std::fs::remove_file(&file);
        }
        Ok(())
    }
}

/// `InvalidSnapshot.InUse` while an AMI uses the snapshot (EC2's one reason).
fn check_not_in_ami(db: &Db, snapshot_id: &str) -> Result<()> {
    if let Some(ami) = db.images_using_snapshot(snapshot_id)?.first() {
        return Err(Error::new(
            ErrorCode::InvalidSnapshotInUse,
            format!("The snapshot {snapshot_id} is currently in use by {ami}"),
        ));
    }
    Ok(())
}

/// Whether an instance that is not stopped reads the snapshot through a
/// volume's chain (its QEMU holds those files open, so the layer cannot be
/// merged into them now).
pub(crate) fn read_by_running_instance(db: &Db, snapshot_id: &str) -> Result<bool> {
    Ok(check_unread(db, snapshot_id).is_err())
}

fn check_unread(db: &Db, snapshot_id: &str) -> Result<()> {
    for i in db.live_instances()? {
        if i.state == InstanceStateName::Stopped {
            continue;
        }
        for d in &i.devices {
            let Some(vid) = &d.volume_id else { continue };
            let Some(v) = db.volume(vid)? else { continue };
            if chain(db, db.volume_base(&v)?.as_deref())?
                .iter()
                .any(|s| s == snapshot_id)
            {
                return Err(Error::new(
                    ErrorCode::InvalidSnapshotInUse,
                    format!(
                        "The snapshot {snapshot_id} is read by volume {vid} of {}, which is {}; stop it first",
                        i.instance_id, i.state
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Safe rebase of a qcow2 layer onto `backing` (a qcow2 file), or flatten it.
fn rebase_onto(path: &Path, backing: Option<&Path>) -> Result<()> {
    crate::disk::rebase(path, backing.map(|b| (b, "qcow2")), false)?;
    Ok(())
}

/// `CreateSnapshot`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct CreateSnapshotRequest {
    pub volume_id: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub tag_specifications: Vec<TagSpecification>,
    /// amirun's own (`amirun create-snapshot --flatten`), not a member of
    /// EC2's request: write the snapshot standalone (whole chain in one file).
    #[serde(skip)]
    pub flatten: bool,
}

/// What `CreateSnapshot` returns: botocore's `Snapshot`, with how the
/// layer was taken under `Amirun`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateSnapshotResult {
    pub description: String,
    pub encrypted: bool,
    pub owner_id: String,
    pub progress: String,
    pub snapshot_id: String,
    pub start_time: String,
    pub state: SnapshotStateName,
    pub volume_id: String,
    pub volume_size: u64,
    pub tags: Vec<Tag>,
    #[serde(rename = "Amirun")]
    pub amirun: LayerReport,
}

/// `CreateSnapshots`: every EBS volume of one instance, at one point.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct CreateSnapshotsRequest {
    pub instance_specification: InstanceSpecification,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub tag_specifications: Vec<TagSpecification>,
    /// `volume`: each snapshot also gets its volume's tags.
    #[serde(default)]
    pub copy_tags_from_source: Option<String>,
}

/// Which instance's volumes `CreateSnapshots` takes, and which it leaves out.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct InstanceSpecification {
    pub instance_id: String,
    #[serde(default)]
    pub exclude_boot_volume: Option<bool>,
    #[serde(default)]
    pub exclude_data_volume_ids: Vec<String>,
}

/// One snapshot of `CreateSnapshots` (botocore's `SnapshotInfo`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SnapshotInfo {
    pub description: String,
    pub tags: Vec<Tag>,
    pub encrypted: bool,
    pub volume_id: String,
    pub state: SnapshotStateName,
    pub volume_size: u64,
    pub start_time: String,
    pub progress: String,
    pub owner_id: String,
    pub snapshot_id: String,
    pub availability_zone: String,
}

/// What `CreateSnapshots` returns.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateSnapshotsResult {
    pub snapshots: Vec<SnapshotInfo>,
}

/// `CopySnapshot`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct CopySnapshotRequest {
    pub source_snapshot_id: String,
    #[serde(default)]
    pub source_region: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub tag_specifications: Vec<TagSpecification>,
    /// The region the copy is made in, which the SDKs add: it must be the
    /// region the request is sent to.
    #[serde(default)]
    pub destination_region: Option<String>,
    /// The source region's presigned request, which the SDKs add: checked to
    /// name the same snapshot (amirun's regions are one host, so it grants
    /// nothing beyond the caller's own rights).
    #[serde(default)]
    pub presigned_url: Option<String>,
    /// amirun's own (`amirun copy-snapshot --flatten`), not a member of
    /// EC2's request: write the copy standalone (whole chain in one file).
    #[serde(skip)]
    pub flatten: bool,
}

/// What `CopySnapshot` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CopySnapshotResult {
    pub snapshot_id: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn chain_depth_setting_has_a_floor() {
        assert!(crate::service::ServiceOptions::from_env().max_chain_depth >= 1);
    }
}
