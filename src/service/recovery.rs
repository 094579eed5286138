//! Crash recovery for images and snapshots: whatever a killed process left
//! between "intent" and "commit" is rolled forward or back the next time
//! the store is opened, so `pending` never outlives the process that made it
//! and no file lies around without a record.
//!
//! # The protocol: intent -> act -> commit
//!
//! Every operation that changes both files and records works in three steps:
//!
//! 1. **lock**: it takes the object lock ([`super::object_lock`]) of the
//!    instance and volumes it changes and of every id it is about to make,
//!    and keeps them until it has committed;
//! 2. **intent**: it records what it is about to make (`pending` AMI and
//!    snapshots; a snapshot being deleted is marked `deleting`), or, when
//!    nothing existing changes (copies), records nothing yet;
//! 3. **act**: it writes files under temporary names (or as new, still
//!    unreferenced files) and renames them into place, marking each step
//!    with a failpoint;
//! 4. **commit**: one transaction records the result; then locks go.
//!
//! "Record `pending`/`deleting` or missing, object lock free" therefore
//! means "its writer is gone" ([`super::object_lock`]). `Service::recover`,
//! run by [`Service::open`], finds such work and settles it, deciding from
//! the real files (the qcow2 backing chain `qemu-img info` reports), not
//! from what the database believed:
//!
//! | left behind | decided by | outcome |
//! |---|---|---|
//! | `pending` snapshot of volume V | V's file backs onto the snapshot's file (the new overlay was renamed into place) | forward: `completed`, V's base moved to it; standalone if the file has no backing (collapse done) |
//! | | otherwise | back: `V.next.qcow2` (if it backs onto the snapshot), the snapshot file and the record go |
//! | `pending` AMI | every snapshot it maps is `completed` | forward: `available` |
//! | | otherwise | back: the AMI record goes (kept snapshots stay, they are volume bases) |
//! | `deleting` snapshot | (the merge may be half done: some children already point past it) | forward: finish the merge and the delete (`Service::finish_delete`), once no running instance reads it (a deferred delete waits until then) |
//!
//! Volumes of their own (create, delete, attach, detach, modify) are
//! settled the same way by `Service::recover_volumes`, whose table is in
//! [`super::volumes`].
//!
//! A live snapshot's pause, switch, resume and renames happen inside the
//! instance's supervisor ([`crate::instance::live_snapshot`]); before judging
//! the files of a running instance, recovery sends its supervisor an empty
//! live-snapshot request, which returns once any switch in flight is over.
//!
//! # The orphan sweep
//!
//! Then `Service::sweep` removes, and reports at debug level, every file
//! that no record owns and whose writer is gone ("no record, lock free";
//! the record is read again under the lock, so a writer that committed
//! meanwhile keeps its file): temporary and unrecorded files in
//! `snapshots/`, unrecorded volumes and stray `*.next.qcow2` in `volumes/`,
//! hibernation states (`volumes/<i-id>.hibernation`) of instances that are
//! gone, incomplete ones (`….hibernation.tmp`) unless their instance may be
//! hibernating right now (recorded neither stopped nor terminated),
//! `instances/<id>/` and runtime `<id>/` directories of instances with no
//! record, temporary files of finished fetches in `blobs/tmp/`, and lock
//! files in `locks/` of objects that have no record. VPC networks (runtime
//! `vpc/<id>/`) that no supervisor holds any more are taken down.
//!
//! # Cost
//!
//! When nothing is pending, the pass is one read transaction and a
//! `readdir` of each of those directories; nothing runs `qemu-img`.

use super::object_lock::try_lock;
use super::{Error, ErrorCode, Result, Service};
use crate::domain::{ImageStateName, InstanceStateName, SnapshotStateName};
use crate::ids::{self, IdKind};
use crate::paths::Paths;
use crate::store::SnapshotState;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Whether the qcow2 file at `file` has `target` as its backing file.
pub(crate) fn backs_onto(file: &Path, target: &Path) -> bool {
    let Ok(info) = crate::disk::info(file) else {
        return false;
    };
    let Some(backing) = info.backing_file else {
        return false;
    };
    same_file(&backing, target)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => std::path::absolute(a).ok() == std::path::absolute(b).ok(),
    }
}

/// The object id a state file belongs to: its name without a leading dot,
/// up to the first `.` (`snap-….qcow2`, `.snap-….qcow2.convert….tmp`).
fn id_of(name: &str) -> &str {
    let name = name.trim_start_matches('.');
    name.split('.').next().unwrap_or(name)
}

fn entries(dir: &Path) -> Vec<(String, PathBuf)> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .collect()
        })
        .unwrap_or_default()
}

impl Service {
    /// Settle what dead writers left, then sweep orphans (see the module
    /// doc). One object that cannot be settled is logged and left for the
    /// next pass; it never stops the others.
    pub(crate) fn recover(&mut self) -> Result<()> {
        let (pending, deleting, images) = self.store.read(|db| -> Result<_> {
            Ok((
                db.snapshots_in_state(SnapshotStateName::Pending)?,
                db.snapshots_in_state(SnapshotStateName::Deleting)?,
                db.images_in_state(ImageStateName::Pending)?,
            ))
        })?;
        for s in pending {
            let Some(_lock) = try_lock(&self.paths, &s.snapshot_id)? else {
                continue;
            };
            let fresh = self.store.read(|db| db.snapshot(&s.snapshot_id))?;
            if let Some(s) = fresh.filter(|s| s.state == SnapshotStateName::Pending) {
                match self.settle_snapshot(&s) {
                    Ok(kept) => tracing::debug!(
                        snapshot = %s.snapshot_id,
                        "recovery: writer gone, pending snapshot {}",
                        if kept { "completed (its volume stands on it)" } else { "removed" }
                    ),
                    Err(e) => {
                        tracing::warn!(snapshot = %s.snapshot_id, "recovery: cannot settle: {e}")
                    }
                }
            }
        }
        for s in deleting {
            let Some(_lock) = try_lock(&self.paths, &s.snapshot_id)? else {
                continue;
            };
            let fresh = self.store.read(|db| db.snapshot(&s.snapshot_id))?;
            if let Some(s) = fresh.filter(|s| s.state == SnapshotStateName::Deleting) {
                let id = s.snapshot_id.clone();
                if self
                    .store
                    .read(|db| super::layers::read_by_running_instance(db, &id))?
                {
                    // A deferred delete: its layer is read by a running guest.
                    continue;
                }
                tracing::debug!(snapshot = %s.snapshot_id, "recovery: finishing an interrupted delete");
                if let Err(e) = self.finish_delete(&s) {
                    tracing::warn!(snapshot = %s.snapshot_id, "recovery: cannot finish the delete: {e}");
                }
            }
        }
        for i in images {
            if self.is_remote_region(&i.region) {
                // Made by a backend: settled from it when its region's
                // images are read (`instances::remote::images`).
                continue;
            }
            let Some(_lock) = try_lock(&self.paths, &i.image_id)? else {
                continue;
            };
            if self.has_image_job(&i.image_id) {
                // EC2's CreateImage: settled by its worker, or here once it is gone.
                if !self.image_worker_alive(&i.image_id)? {
                    tracing::debug!(image = %i.image_id, "recovery: CreateImage worker gone");
                    if let Err(e) = self.settle_image_job(&i.image_id) {
                        tracing::warn!(image = %i.image_id, "recovery: cannot settle: {e}");
                    }
                }
                continue;
            }
            match self.settle_image(&i.image_id) {
                Ok(kept) => {
                    tracing::debug!(image = %i.image_id, "recovery: writer gone, pending AMI {}",
                    if kept { "made available" } else { "removed" })
                }
                Err(e) => tracing::warn!(image = %i.image_id, "recovery: cannot settle: {e}"),
            }
        }
        // Volumes made, deleted, attached, detached or grown by a dead writer.
        if let Err(e) = self.recover_volumes() {
            tracing::warn!("recovery: cannot settle volume operations: {e}");
        }
        self.sweep()?;
        Ok(())
    }

    /// Settle a `pending` snapshot whose writer is gone or failed (the
    /// caller holds its lock): kept as `completed` when its volume's file
    /// stands on it, else removed with its files. Returns whether it was kept.
    pub(crate) fn settle_snapshot(&mut self, s: &SnapshotState) -> Result<bool> {
        let snap = self.paths.snapshot(&s.snapshot_id);
        if let Some(v) = &s.volume_id {
            self.live_barrier(v);
        }
        let forward = s
            .volume_id
            .as_ref()
            .is_some_and(|v| snap.exists() && backs_onto(&self.paths.volume(v), &snap));
        if forward {
            let info = crate::disk::info(&snap)?;
            let id = s.snapshot_id.clone();
            let volume = s.volume_id.clone();
            self.store.write(|db| -> Result<()> {
                let Some(mut s) = db.snapshot(&id)? else {
                    return Ok(());
                };
                if info.backing_file.is_none() {
                    s.parent_snapshot_id = None;
                    s.blob_sha256 = None;
                }
                s.state = SnapshotStateName::Completed;
                s.storage_bytes = Some(info.actual_size);
                db.put_snapshot(&s)?;
                if let Some(v) = &volume {
                    db.set_volume_base(v, Some(&id))?;
                }
                Ok(())
            })?;
            return Ok(true);
        }
        if let Some(v) = &s.volume_id {
            let next = self.paths.volume_pending(v);
            if next.exists() && backs_onto(&next, &snap) {
                remove(&next);
            }
        }
        if snap.exists() {
            remove(&snap);
        }
        self.store.write(|db| db.delete_snapshot(&s.snapshot_id))?;
        Ok(false)
    }

    /// Settle a `pending` AMI (the caller holds its lock): `available` when
    /// every snapshot it maps is `completed`, else removed. Returns whether
    /// it was kept.
    pub(crate) fn settle_image(&mut self, image_id: &str) -> Result<bool> {
        self.store.write(|db| -> Result<bool> {
            let Some(mut image) = db.image(image_id)? else {
                return Ok(false);
            };
            if image.state != ImageStateName::Pending {
                return Ok(true);
            }
            let mut whole = true;
            for sid in image.snapshot_ids() {
                whole &= db
                    .snapshot(&sid)?
                    .is_some_and(|s| s.state == SnapshotStateName::Completed);
            }
            if whole {
                image.state = ImageStateName::Available;
                db.put_image(&image)?;
            } else {
                db.delete_image(image_id)?;
            }
            Ok(whole)
        })
    }

    /// Wait for a live snapshot in flight in the supervisor of the instance
    /// `volume_id` is attached to, if it runs (best effort).
    fn live_barrier(&mut self, volume_id: &str) {
        let Ok(Some(v)) = self.store.read(|db| db.volume(volume_id)) else {
            return;
        };
        let Some(iid) = v.instance_id else { return };
        let socket = self.paths.control_socket(&iid);
        if !socket.exists() {
            return;
        }
        if let Ok(mut c) = crate::instance::supervisor::SupervisorClient::connect(&socket) {
            let _ = c.live_snapshot(Default::default());
        }
    }

    /// Remove files no record owns whose writer is gone (see the module
    /// doc); returns what was removed.
    pub(crate) fn sweep(&mut self) -> Result<Vec<PathBuf>> {
        // VPC networks whose supervisors were all killed (see network::vpc).
        crate::network::vpc::sweep(&self.paths.vpc_networks_dir());
        let snapshots = entries(&self.paths.snapshot_dir());
        let volumes = entries(&self.paths.volume_dir());
        let instances = entries(&self.paths.home().join("instances"));
        let runtime = entries(self.paths.runtime());
        let locks = entries(&self.paths.lock_dir());
        let mut removed = self.blobs.sweep_temp();
        removed.extend(self.sweep_locks(locks)?);
        if snapshots.is_empty() && volumes.is_empty() && instances.is_empty() && runtime.is_empty()
        {
            return Ok(removed);
        }
        let (snap_ids, vol_ids, inst_ids, pending_vols) = self.store.read(|db| -> Result<_> {
            let pending: HashSet<String> = db
                .snapshots_in_state(SnapshotStateName::Pending)?
                .into_iter()
                .filter_map(|s| s.volume_id)
                .collect();
            Ok((
                db.snapshot_id_set()?,
                db.volume_id_set()?,
                db.instance_id_set()?,
                pending,
            ))
        })?;
        let mut candidates: Vec<(String, PathBuf, Kind)> = Vec::new();
        for (name, path) in snapshots {
            let id = id_of(&name).to_string();
            if !ids::is_well_formed(IdKind::Snapshot, &id) {
                continue;
            }
            let canonical = name == format!("{id}.qcow2");
            if !canonical || !snap_ids.contains(&id) {
                candidates.push((id, path, Kind::Snapshot { canonical }));
            }
        }
        for (name, path) in volumes {
            if let Some((id, complete)) = Paths::parse_hibernation_state(&name) {
                if ids::is_well_formed(IdKind::Instance, id)
                    && (!complete || !inst_ids.contains(id))
                {
                    candidates.push((id.to_string(), path, Kind::Hibernation { complete }));
                }
                continue;
            }
            let id = id_of(&name).to_string();
            if !ids::is_well_formed(IdKind::Volume, &id) {
                continue;
            }
            let canonical = name == format!("{id}.qcow2");
            if !canonical || !vol_ids.contains(&id) {
                if !canonical && pending_vols.contains(&id) {
                    continue;
                }
                candidates.push((id, path, Kind::Volume { canonical }));
            }
        }
        for (name, path) in instances.into_iter().chain(runtime) {
            if ids::is_well_formed(IdKind::Instance, &name) && !inst_ids.contains(&name) {
                candidates.push((name, path, Kind::Instance));
            }
        }
        for (id, path, kind) in candidates {
            let Some(_lock) = try_lock(&self.paths, &id)? else {
                continue;
            };
            // Read again under the lock: a writer may have committed meanwhile.
            let owned = self.store.read(|db| -> Result<bool> {
                Ok(match kind {
                    Kind::Snapshot { canonical } => canonical && db.snapshot(&id)?.is_some(),
                    Kind::Volume { canonical } => {
                        if canonical {
                            db.volume(&id)?.is_some()
                        } else {
                            db.snapshots_in_state(SnapshotStateName::Pending)?
                                .iter()
                                .any(|s| s.volume_id.as_deref() == Some(&id))
                        }
                    }
                    Kind::Instance => db.instance(&id)?.is_some(),
                    // A saved state belongs to its instance until it
                    // terminates; one being written, while it is stopping.
                    Kind::Hibernation { complete } => db.instance(&id)?.is_some_and(|i| {
                        i.state != InstanceStateName::Terminated
                            && (complete || i.state != InstanceStateName::Stopped)
                    }),
                })
            })?;
            if owned {
                continue;
            }
            let gone = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match gone {
                Ok(()) => {
                    tracing::debug!(path = %path.display(), "sweep: removed, no record owns it");
                    removed.push(path);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), "sweep: cannot remove: {e}")
                }
            }
        }
        Ok(removed)
    }

    /// Lock files of objects that have no record (terminated and purged,
    /// deleted, or never committed), removed while held so no writer can be
    /// holding them ([`super::object_lock`]); `locks/` stays as large as the
    /// set of objects that exist.
    fn sweep_locks(&mut self, locks: Vec<(String, PathBuf)>) -> Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        if locks.is_empty() {
            return Ok(removed);
        }
        // One read for every id that has a record; only the rest are
        // candidates, read again one by one under their lock.
        let known = self.store.read(|db| -> Result<HashSet<String>> {
            let mut known = db.instance_id_set()?;
            known.extend(db.volume_id_set()?);
            known.extend(db.snapshot_id_set()?);
            known.extend(db.image_id_set()?);
            Ok(known)
        })?;
        for (name, path) in locks {
            let Some(id) = name.strip_suffix(".lock") else {
                continue;
            };
            let kind = [
                IdKind::Instance,
                IdKind::Volume,
                IdKind::Snapshot,
                IdKind::Image,
            ]
            .into_iter()
            .find(|k| ids::is_well_formed(*k, id));
            let Some(kind) = kind else { continue };
            let exists = |db: &crate::store::Db| -> Result<bool> {
                Ok(match kind {
                    IdKind::Instance => db.instance(id)?.is_some(),
                    IdKind::Volume => db.volume(id)?.is_some(),
                    IdKind::Snapshot => db.snapshot(id)?.is_some(),
                    _ => db.image(id)?.is_some(),
                })
            };
            if known.contains(id) {
                continue;
            }
            let Some(lock) = try_lock(&self.paths, id)? else {
                continue;
            };
            // Read again under the lock: a writer may have committed meanwhile.
            if self.store.read(exists)? {
                continue;
            }
            match lock.remove_file(&self.paths) {
                Ok(true) => {
                    tracing::debug!(path = %path.display(), "sweep: removed the lock of a gone object");
                    removed.push(path);
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(path = %path.display(), "sweep: cannot remove: {e}"),
            }
        }
        Ok(removed)
    }

    /// Files in `snapshots/` and `volumes/` (other than `except`) whose
    /// backing file is `target`: the real chains, whatever the records say.
    pub(crate) fn files_backing_onto(&self, target: &Path, except: &[PathBuf]) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for dir in [self.paths.snapshot_dir(), self.paths.volume_dir()] {
            for (name, path) in entries(&dir) {
                if name.starts_with('.') || !name.ends_with(".qcow2") {
                    continue;
                }
                if same_file(&path, target) || except.iter().any(|e| same_file(e, &path)) {
                    continue;
                }
                if backs_onto(&path, target) {
                    out.push(path);
                }
            }
        }
        out
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Snapshot {
        canonical: bool,
    },
    Volume {
        canonical: bool,
    },
    Instance,
    /// A hibernation state file (`complete`: under its final name).
    Hibernation {
        complete: bool,
    },
}

fn remove(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => tracing::debug!(path = %path.display(), "recovery: removed"),
        Err(e) => tracing::warn!(path = %path.display(), "recovery: cannot remove: {e}"),
    }
}

/// An error for a snapshot that real files still build on.
pub(crate) fn backed_onto(snapshot_id: &str, files: &[PathBuf]) -> Error {
    Error::new(
        ErrorCode::InvalidSnapshotInUse,
        format!(
            "The snapshot {snapshot_id} is still the backing file of {}; delete or rebase that first",
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_read_from_final_and_temporary_names() {
        assert_eq!(
            id_of("snap-0123456789abcdef0.qcow2"),
            "snap-0123456789abcdef0"
        );
        assert_eq!(
            id_of(".snap-0123456789abcdef0.qcow2.convert.Ab12.tmp"),
            "snap-0123456789abcdef0"
        );
        assert_eq!(
            id_of("vol-0123456789abcdef0.next.qcow2"),
            "vol-0123456789abcdef0"
        );
        assert_eq!(id_of("i-0123456789abcdef0"), "i-0123456789abcdef0");
    }
}
