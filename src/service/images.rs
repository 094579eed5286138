//! AMI operations: describe, import, register, deregister, copy, attributes,
//! and fetching an AMI's data into the blob store.

use super::filter;
use super::shapes::*;
use super::{
    check_image_id, check_snapshot_id, image_not_found, now, snapshot_not_found, Caller, Error,
    ErrorCode, Result, Service,
};
use crate::domain::{
    AccountId, Architecture, BootMode, ImageStateName, RootDeviceType, SnapshotStateName,
};
use crate::ids::{self, IdKind};
use crate::store::{BlockDeviceMapping, Db, EbsBlockDevice, ImageState, SnapshotState, SourceSpec};

const IMAGE_FILTERS: &[&str] = &[
    "architecture",
    "block-device-mapping.delete-on-termination",
    "block-device-mapping.device-name",
    "block-device-mapping.snapshot-id",
    "block-device-mapping.volume-size",
    "block-device-mapping.volume-type",
    "boot-mode",
    "description",
    "hypervisor",
    "image-id",
    "image-type",
    "is-public",
    "name",
    "owner-alias",
    "owner-id",
    "platform-details",
    "root-device-name",
    "root-device-type",
    "source-image-id",
    "source-image-region",
    "source-instance-id",
    "state",
    "tag-key",
    "usage-operation",
    "virtualization-type",
];

/// Whether `caller` may see (and launch) `image`: own, public or shared.
pub(crate) fn can_launch(
    db: &Db,
    caller: &Caller,
    image: &ImageState,
) -> crate::store::Result<bool> {
    Ok(image.owner_id == caller.account
        || image.public
        || db
            .launch_users(&image.image_id)?
            .iter()
            .any(|u| *u == caller.account))
}

pub(super) fn check_name(name: &str) -> Result<()> {
    let ok = (3..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorCode::InvalidAmiNameMalformed,
            format!(
                "AMI name '{name}' is invalid: use 3 to 128 letters, digits and ( ) [ ] space . / - ' @ _"
            ),
        ))
    }
}

pub(super) fn check_unique_name(db: &Db, caller: &Caller, name: &str) -> Result<()> {
    if let Some(other) = db
        .images_in_region(&caller.region)?
        .into_iter()
        .find(|i| i.owner_id == caller.account && i.name == name)
    {
        return Err(Error::new(
            ErrorCode::InvalidAmiNameDuplicate,
            format!(
                "AMI name {name} is already in use by AMI {}",
                other.image_id
            ),
        ));
    }
    Ok(())
}

fn check_enum(what: &str, value: &str, allowed: &[&str]) -> Result<()> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(Error::invalid_value(format!(
            "Value ({value}) for parameter {what} is invalid; use one of {}",
            allowed.join(", ")
        )))
    }
}

/// Tags from tag specifications for one resource type.
pub(crate) fn tags_for(
    specs: &[TagSpecification],
    resource_type: &str,
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for s in specs {
        if s.resource_type == resource_type {
            for t in &s.tags {
                out.push((t.key.clone(), t.value.clone().unwrap_or_default()));
            }
        }
    }
    Ok(out)
}

impl Service {
    /// `DescribeImages`.
    pub fn describe_images(
        &mut self,
        caller: &Caller,
        input: DescribeImagesRequest,
    ) -> Result<DescribeImagesResult> {
        for id in &input.image_ids {
            check_image_id(id)?;
        }
        filter::check_names(&input.filters, IMAGE_FILTERS)?;
        for u in &input.executable_users {
            if u != "self" && u != "all" && !AccountId::is_valid(u) {
                return Err(Error::invalid_value(format!(
                    "Executable user '{u}' is not self, all or a 12-digit account id"
                )));
            }
        }
        self.store
            .read(|db| -> Result<Vec<Image>> {
                let shared: std::collections::HashSet<String> = db
                    .images_shared_with(&caller.account)?
                    .into_iter()
                    .collect();
                let mut out = Vec::new();
                let mut missing: Vec<String> = input.image_ids.clone();
                for image in db.images_in_region(&caller.region)? {
                    let visible = image.owner_id == caller.account
                        || image.public
                        || shared.contains(&image.image_id);
                    if !visible {
                        continue;
                    }
                    if !input.image_ids.is_empty() {
                        if !input.image_ids.contains(&image.image_id) {
                            continue;
                        }
                        missing.retain(|m| m != &image.image_id);
                    }
                    if !filter::owner_selected(
                        &input.owners,
                        &caller.account,
                        &image.owner_id,
                        image.owner_alias.as_deref(),
                    ) {
                        continue;
                    }
                    if !input.executable_users.is_empty()
                        && !input.executable_users.iter().any(|u| match u.as_str() {
                            "all" => image.public,
                            "self" => shared.contains(&image.image_id),
                            acct => db
                                .launch_users(&image.image_id)
                                .map(|us| us.iter().any(|x| x == acct))
                                .unwrap_or(false),
                        })
                    {
                        continue;
                    }
                    let tags = db.tags_of(&image.image_id)?;
                    if !filter::matches(&input.filters, |name| {
                        image_filter_values(&image, &tags, name)
                    }) {
                        continue;
                    }
                    out.push(render_image(&image, &tags));
                }
                if !missing.is_empty() {
                    return Err(image_not_found(&missing));
                }
                Ok(out)
            })
            .map(|images| DescribeImagesResult { images })
    }

    /// `ImportImage`: fetch the disk(s), store them as snapshots and register a
    /// private EBS-backed AMI; returns when the AMI is available.
    pub fn import_image(
        &mut self,
        caller: &Caller,
        input: ImportImageRequest,
    ) -> Result<ImportImageResult> {
        if input.disk_containers.is_empty() {
            return Err(Error::missing("DiskContainers"));
        }
        let architecture = input.architecture.unwrap_or_default();
        let boot_mode: BootMode = match input.boot_mode {
            Some(b) => b,
            None if architecture == Architecture::Arm64 => BootMode::Uefi,
            None => BootMode::UefiPreferred,
        };
        let task_id = ids::new_id(IdKind::ImportTask);
        // Fetch every disk first; nothing is recorded until all are in the blob store.
        let mut disks = Vec::new();
        for (i, c) in input.disk_containers.iter().enumerate() {
            let url = c
                .url
                .clone()
                .ok_or_else(|| Error::missing(&format!("DiskContainer.{}.Url", i + 1)))?;
            let url = self
                .import_policy
                .admit(&format!("DiskContainer.{}.Url", i + 1), &url)?;
            let format = c.format.as_ref().map(|f| f.to_ascii_lowercase());
            if let Some(f) = &format {
                check_enum("Format", f, &["raw", "vmdk", "vhd", "vhdx", "qcow2"])?;
            }
            let source = SourceSpec {
                url: url.clone(),
                sha256: None,
                checksum_url: None,
                format,
            };
            crate::catalog::validate_source(&source).map_err(Error::invalid_value)?;
            let blob = self.fetch_source(&source)?;
            disks.push((url, blob));
        }
        crate::failpoint::hit("import-image:after-fetch")?;
        let image_id = ids::new_id(IdKind::Image);
        let created = now();
        let mut details = Vec::new();
        let mut bdm = Vec::new();
        let mut snapshots = Vec::new();
        for (i, (url, blob)) in disks.iter().enumerate() {
            let device = if i == 0 {
                "/dev/sda1".to_string()
            } else {
                format!("/dev/sd{}", (b'b' + i as u8 - 1) as char)
            };
            let snapshot_id = ids::new_id(IdKind::Snapshot);
            let gib = blob.virtual_size.div_ceil(1 << 30).max(1);
            snapshots.push(SnapshotState {
                snapshot_id: snapshot_id.clone(),
                region: caller.region.clone(),
                owner_id: caller.account.to_string(),
                owner_alias: None,
                volume_id: None,
                volume_size_gib: gib,
                state: SnapshotStateName::Completed,
                description: Some(format!("Created by AWS-VMImport service for {task_id}")),
                start_time: created.clone(),
                source: None,
                blob_sha256: Some(blob.sha256.clone()),
                parent_snapshot_id: None,
                has_file: false,
                storage_bytes: Some(blob.size),
                catalog_key: None,
            });
            bdm.push(BlockDeviceMapping {
                device_name: device.clone(),
                ebs: Some(EbsBlockDevice {
                    delete_on_termination: Some(true),
                    snapshot_id: Some(snapshot_id.clone()),
                    volume_size: Some(gib),
                    volume_type: Some("gp2".into()),
                    encrypted: Some(false),
                    ..Default::default()
                }),
                ..Default::default()
            });
            details.push(SnapshotDetail {
                device_name: device,
                disk_image_size: blob.size as f64,
                format: blob.source_format.to_ascii_uppercase(),
                snapshot_id,
                status: "completed".into(),
                url: url.clone(),
            });
        }
        let image = ImageState {
            description: input.description.clone(),
            boot_mode: Some(boot_mode),
            root_device_name: "/dev/sda1".into(),
            block_device_mappings: bdm,
            ..ImageState::private(
                &image_id,
                &caller.region,
                &caller.account,
                &task_id,
                architecture,
                &created,
            )
        };
        let image_tags = tags_for(&input.tag_specifications, "import-image-task")?;
        self.store.write(|db| -> Result<()> {
            for s in &snapshots {
                db.put_snapshot(s)?;
            }
            db.put_image(&image)?;
            for (k, v) in &image_tags {
                db.put_tag(&image_id, k, v)?;
            }
            Ok(())
        })?;
        Ok(ImportImageResult {
            architecture,
            description: input.description.clone(),
            image_id,
            import_task_id: task_id,
            platform: input.platform.clone().unwrap_or_else(|| "Linux".into()),
            progress: "100".into(),
            snapshot_details: details,
            status: "completed".into(),
            status_message: "completed".into(),
            boot_mode,
            tags: image_tags
                .into_iter()
                .map(|(key, value)| Tag {
                    key,
                    value: Some(value),
                })
                .collect(),
        })
    }

    /// `RegisterImage`: an instance-store AMI from `--image-location`, or an
    /// EBS AMI from block device mappings naming snapshots.
    pub fn register_image(
        &mut self,
        caller: &Caller,
        input: RegisterImageRequest,
    ) -> Result<RegisterImageResult> {
        check_name(&input.name)?;
        let architecture = input.architecture.unwrap_or_default();
        let boot_mode = input.boot_mode;
        let virtualization = input
            .virtualization_type
            .clone()
            .unwrap_or_else(|| "hvm".into());
        check_enum("VirtualizationType", &virtualization, &["hvm"])?;
        let image_id = ids::new_id(IdKind::Image);
        let mut image = ImageState {
            description: input.description.clone(),
            boot_mode,
            root_device_name: String::new(),
            virtualization_type: virtualization,
            block_device_mappings: input.block_device_mappings.clone(),
            ..ImageState::private(
                &image_id,
                &caller.region,
                &caller.account,
                &input.name,
                architecture,
                &now(),
            )
        };
        if let Some(location) = &input.image_location {
            let location = &self.import_policy.admit("ImageLocation", location)?;
            let source = SourceSpec {
                url: location.clone(),
                sha256: None,
                checksum_url: None,
                format: None,
            };
            crate::catalog::validate_source(&source).map_err(|m| {
                Error::new(
                    ErrorCode::InvalidManifest,
                    format!("The image location is not usable: {m}"),
                )
            })?;
            let blob = self.fetch_source(&source)?;
            image.root_device_type = RootDeviceType::InstanceStore;
            image.root_device_name = input
                .root_device_name
                .clone()
                .unwrap_or_else(|| "/dev/sda1".into());
            image.image_location = Some(location.clone());
            image.root_source = Some(source);
            image.root_blob = Some(blob.sha256);
        } else {
            let root = input
                .root_device_name
                .clone()
                .unwrap_or_else(|| "/dev/xvda".into());
            if input.block_device_mappings.is_empty() {
                return Err(Error::missing("ImageLocation or BlockDeviceMappings"));
            }
            let has_root = input.block_device_mappings.iter().any(|m| {
                m.device_name == root && m.ebs.as_ref().is_some_and(|e| e.snapshot_id.is_some())
            });
            if !has_root {
                return Err(Error::invalid_value(format!(
                    "No block device mapping gives a snapshot for the root device {root}"
                )));
            }
            image.root_device_name = root;
        }
        let tags = tags_for(&input.tag_specifications, "image")?;
        self.store.write(|db| -> Result<()> {
            check_unique_name(db, caller, &input.name)?;
            // Fill in snapshot facts (size) and check ownership.
            for m in image.block_device_mappings.iter_mut() {
                if let Some(ebs) = m.ebs.as_mut() {
                    if let Some(sid) = &ebs.snapshot_id {
                        check_snapshot_id(sid)?;
                        let snap = db
                            .snapshot(sid)?
                            .filter(|s| s.region == caller.region && s.owner_id == caller.account)
                            .ok_or_else(|| snapshot_not_found(sid))?;
                        if snap.state != SnapshotStateName::Completed {
                            return Err(Error::new(
                                ErrorCode::IncorrectState,
                                format!(
                                    "Snapshot {sid} is {}, not completed; try again later",
                                    snap.state
                                ),
                            ));
                        }
                        let size = ebs.volume_size.unwrap_or(snap.volume_size_gib);
                        if size < snap.volume_size_gib {
                            return Err(Error::invalid_value(format!(
                                "Volume of {size} GiB is smaller than snapshot {sid} ({} GiB)",
                                snap.volume_size_gib
                            )));
                        }
                        ebs.volume_size = Some(size);
                        ebs.delete_on_termination.get_or_insert(true);
                        ebs.volume_type.get_or_insert_with(|| "gp3".into());
                        ebs.encrypted.get_or_insert(false);
                    }
                }
            }
            db.put_image(&image)?;
            for (k, v) in &tags {
                db.put_tag(&image_id, k, v)?;
            }
            Ok(())
        })?;
        Ok(RegisterImageResult { image_id })
    }

    /// Look up an AMI the caller owns in the caller's region.
    fn owned_image(&mut self, caller: &Caller, image_id: &str) -> Result<ImageState> {
        check_image_id(image_id)?;
        self.store.read(|db| -> Result<ImageState> {
            let image = db
                .image(image_id)?
                .filter(|i| i.region == caller.region)
                .ok_or_else(|| image_not_found(&[image_id.to_string()]))?;
            if image.owner_id != caller.account {
                if can_launch(db, caller, &image)? {
                    return Err(Error::new(
                        ErrorCode::AuthFailure,
                        format!(
                            "Not authorized for image {image_id}: account {} does not own it",
                            caller.account
                        ),
                    ));
                }
                return Err(image_not_found(&[image_id.to_string()]));
            }
            Ok(image)
        })
    }

    /// `DeregisterImage`: keeps the snapshots unless asked to delete them.
    pub fn deregister_image(
        &mut self,
        caller: &Caller,
        input: DeregisterImageRequest,
    ) -> Result<DeregisterImageResult> {
        let image_id = input.image_id.as_str();
        let delete_associated_snapshots = input.delete_associated_snapshots.unwrap_or(false);
        let image = self.owned_image(caller, image_id)?;
        let mut results = Vec::new();
        let mut files = Vec::new();
        // Snapshots a real file still builds on stay, whatever the records say.
        let mut backed = std::collections::HashSet::new();
        if delete_associated_snapshots {
            for sid in image.snapshot_ids() {
                let file = self.paths.snapshot(&sid);
                if file.exists() && !self.files_backing_onto(&file, &[]).is_empty() {
                    backed.insert(sid);
                }
            }
        }
        self.store.write(|db| -> Result<()> {
            db.delete_image(image_id)?;
            if delete_associated_snapshots {
                for sid in image.snapshot_ids() {
                    let code = match db.snapshot(&sid)? {
                        Some(s) if s.owner_id == caller.account => {
                            if s.state != SnapshotStateName::Completed
                                || backed.contains(&sid)
                                || !db.images_using_snapshot(&sid)?.is_empty()
                                || !db.child_snapshots(&sid)?.is_empty()
                                || !db.volumes_on_snapshot(&sid)?.is_empty()
                            {
                                "client-error"
                            } else {
                                if s.has_file {
                                    files.push(self.paths.snapshot(&sid));
                                }
                                db.delete_snapshot(&sid)?;
                                "success"
                            }
                        }
                        _ => "client-error",
                    };
                    results.push(DeleteSnapshotResult {
                        snapshot_id: sid,
                        return_code: code.into(),
                    });
                }
            }
            Ok(())
        })?;
        for f in files {
            let _ = std::fs::remove_file(f);
        }
        Ok(DeregisterImageResult {
            ret: true,
            delete_snapshot_results: results,
        })
    }

    /// `CopyImage`: a new AMI (new ids, owned by the caller) in the caller's
    /// region from a visible AMI in `source_region`; snapshots are copied.
    pub fn copy_image(
        &mut self,
        caller: &Caller,
        input: CopyImageRequest,
    ) -> Result<CopyImageResult> {
        check_image_id(&input.source_image_id)?;
        check_name(&input.name)?;
        let source_caller =
            super::Caller::new(caller.account.to_string(), input.source_region.clone())?;
        let tags = tags_for(&input.tag_specifications, "image")?;
        let new_id = match &input.client_token {
            Some(token) => {
                let id = super::client_token_id(IdKind::Image, caller, token)?;
                let copied = self.store.read(|db| db.image(&id))?;
                if copied.is_some_and(|i| i.owner_id == caller.account) {
                    return Ok(CopyImageResult { image_id: id });
                }
                id
            }
            None => ids::new_id(IdKind::Image),
        };
        let (src, snaps) = self.store.read(|db| -> Result<_> {
            let src = db
                .image(&input.source_image_id)?
                .filter(|i| i.region == source_caller.region)
                .ok_or_else(|| image_not_found(std::slice::from_ref(&input.source_image_id)))?;
            if !can_launch(db, &source_caller, &src)? {
                return Err(image_not_found(std::slice::from_ref(
                    &input.source_image_id,
                )));
            }
            if src.state != ImageStateName::Available {
                return Err(Error::new(
                    ErrorCode::IncorrectState,
                    format!(
                        "Image {} is in state {}, not available",
                        src.image_id, src.state
                    ),
                ));
            }
            check_unique_name(db, caller, &input.name)?;
            let mut snaps = Vec::new();
            for sid in src.snapshot_ids() {
                snaps.push(db.snapshot(&sid)?.ok_or_else(|| snapshot_not_found(&sid))?);
            }
            Ok((src, snaps))
        })?;
        // The new ids stay locked until the records commit: a file of ours
        // that a crash leaves without a record is then swept (service::recovery).
        let mut locks = vec![super::object_lock::lock(&self.paths, &new_id)?];
        let mut copies: Vec<(String, SnapshotState)> = Vec::new();
        let mut made: Vec<std::path::PathBuf> = Vec::new();
        let copied = (|| -> Result<()> {
            for snap in &snaps {
                let new_sid = ids::new_id(IdKind::Snapshot);
                locks.push(super::object_lock::lock(&self.paths, &new_sid)?);
                if snap.has_file {
                    let dir = self.paths.snapshot_dir();
                    std::fs::create_dir_all(&dir).map_err(|e| {
                        Error::internal(format!("Cannot create {}", dir.display())).with_source(e)
                    })?;
                    let tmp = self.paths.snapshot_tmp(&new_sid);
                    let to = self.paths.snapshot(&new_sid);
                    made.push(tmp.clone());
                    std::fs::copy(self.paths.snapshot(&snap.snapshot_id), &tmp).map_err(|e| {
                        Error::internal(format!("Cannot copy snapshot {}", snap.snapshot_id))
                            .with_source(e)
                    })?;
                    crate::failpoint::hit("copy-image:after-copy")?;
                    std::fs::rename(&tmp, &to).map_err(|e| {
                        Error::internal(format!("Cannot move {} into place", to.display()))
                            .with_source(e)
                    })?;
                    made.push(to);
                    crate::failpoint::hit("copy-image:after-rename")?;
                }
                copies.push((
                    new_sid.clone(),
                    SnapshotState {
                        snapshot_id: new_sid,
                        region: caller.region.clone(),
                        owner_id: caller.account.to_string(),
                        owner_alias: None,
                        description: Some(format!(
                            "Copied for DestinationAmi {new_id} from SourceAmi {} for SourceSnapshot {}",
                            src.image_id, snap.snapshot_id
                        )),
                        start_time: now(),
                        catalog_key: None,
                        state: SnapshotStateName::Completed,
                        ..snap.clone()
                    },
                ));
            }
            Ok(())
        })();
        let result = copied.and_then(|()| {
            self.store.write(|db| -> Result<()> {
                check_unique_name(db, caller, &input.name)?;
                let mut image = src.clone();
                image.image_id = new_id.clone();
                image.region = caller.region.clone();
                image.name = input.name.clone();
                image.description = input.description.clone().or(src.description.clone());
                image.owner_id = caller.account.to_string();
                image.owner_alias = None;
                image.public = false;
                image.creation_date = now();
                image.catalog_key = None;
                image.image_location = None;
                image.source_image_id = Some(src.image_id.clone());
                image.source_image_region = Some(src.region.clone());
                let mut next = copies.iter();
                for m in image.block_device_mappings.iter_mut() {
                    let Some(ebs) = m.ebs.as_mut() else { continue };
                    if ebs.snapshot_id.is_none() {
                        continue;
                    }
                    let (new_sid, record) = next.next().ok_or_else(|| {
                        Error::internal("Snapshot copies do not match the mappings")
                    })?;
                    // The source snapshot must still be there (its copy's chain reads its parent).
                    if db
                        .snapshot(ebs.snapshot_id.as_deref().unwrap_or_default())?
                        .is_none()
                    {
                        return Err(snapshot_not_found(
                            ebs.snapshot_id.as_deref().unwrap_or_default(),
                        ));
                    }
                    db.put_snapshot(record)?;
                    ebs.snapshot_id = Some(new_sid.clone());
                }
                db.put_image(&image)?;
                if input.copy_image_tags == Some(true) {
                    for t in db.tags_of(&src.image_id)? {
                        db.put_tag(&new_id, &t.key, &t.value)?;
                    }
                }
                for (k, v) in &tags {
                    db.put_tag(&new_id, k, v)?;
                }
                Ok(())
            })
        });
        if result.is_err() {
            for f in made {
                let _ = std::fs::remove_file(f);
            }
        }
        drop(locks);
        result.map(|_| CopyImageResult { image_id: new_id })
    }

    /// `ModifyImageAttribute`: launch permissions (accounts, group `all`) and description.
    pub fn modify_image_attribute(
        &mut self,
        caller: &Caller,
        input: ModifyImageAttributeRequest,
    ) -> Result<()> {
        let mut image = self.owned_image(caller, &input.image_id)?;
        let mut add: Vec<LaunchPermission> = Vec::new();
        let mut remove: Vec<LaunchPermission> = Vec::new();
        if let Some(lp) = &input.launch_permission {
            add.extend(lp.add.iter().cloned());
            remove.extend(lp.remove.iter().cloned());
        }
        let attribute = input.attribute.clone().unwrap_or_else(|| {
            if input.description.is_some() {
                "description".into()
            } else {
                "launchPermission".into()
            }
        });
        match attribute.as_str() {
            "launchPermission" => {
                let listed: Vec<LaunchPermission> = input
                    .user_ids
                    .iter()
                    .map(|u| LaunchPermission {
                        user_id: Some(u.clone()),
                        group: None,
                    })
                    .chain(input.user_groups.iter().map(|g| LaunchPermission {
                        user_id: None,
                        group: Some(g.clone()),
                    }))
                    .collect();
                if !listed.is_empty() {
                    match input.operation_type.as_deref() {
                        Some("add") => add.extend(listed),
                        Some("remove") => remove.extend(listed),
                        Some(other) => {
                            return Err(Error::invalid_value(format!(
                                "Value ({other}) for parameter OperationType is invalid; use add or remove"
                            )))
                        }
                        // Packer's `ami_users` sends `LaunchPermission.Add.N.UserId`
                        // and the same ids as `UserId.N` without an OperationType:
                        // the structure already says what to do.
                        None if input.launch_permission.is_some() => {}
                        None => return Err(Error::missing("OperationType")),
                    }
                }
                if add.is_empty() && remove.is_empty() {
                    return Err(Error::missing("LaunchPermission"));
                }
                for p in add.iter().chain(remove.iter()) {
                    match (&p.user_id, &p.group) {
                        (Some(u), None) if AccountId::is_valid(u) => {}
                        (None, Some(g)) if g == "all" => {}
                        _ => {
                            return Err(Error::invalid_value(format!(
                                "Launch permission {p:?} must name a 12-digit UserId or Group=all"
                            )))
                        }
                    }
                }
                self.store.write(|db| -> Result<()> {
                    for p in &add {
                        match &p.user_id {
                            Some(u) => db.add_launch_user(&image.image_id, u)?,
                            None => image.public = true,
                        }
                    }
                    for p in &remove {
                        match &p.user_id {
                            Some(u) => db.remove_launch_user(&image.image_id, u)?,
                            None => image.public = false,
                        }
                    }
                    db.put_image(&image)?;
                    Ok(())
                })
            }
            "description" => {
                let d = input
                    .description
                    .map(|d| d.value)
                    .or(input.value)
                    .ok_or_else(|| Error::missing("Description"))?;
                image.description = Some(d);
                self.store.write(|db| db.put_image(&image))?;
                Ok(())
            }
            other => Err(Error::invalid_value(format!(
                "Attribute {other} cannot be modified; use launchPermission or description"
            ))),
        }
    }

    /// `DescribeImageAttribute`.
    pub fn describe_image_attribute(
        &mut self,
        caller: &Caller,
        input: DescribeImageAttributeRequest,
    ) -> Result<ImageAttribute> {
        let (image_id, attribute) = (input.image_id.as_str(), input.attribute.as_str());
        let image = self.owned_image(caller, image_id)?;
        let mut out = ImageAttribute {
            image_id: image_id.to_string(),
            ..Default::default()
        };
        match attribute {
            "launchPermission" => {
                let users = self.store.read(|db| db.launch_users(image_id))?;
                let mut perms: Vec<LaunchPermission> = users
                    .into_iter()
                    .map(|u| LaunchPermission { user_id: Some(u), group: None })
                    .collect();
                if image.public {
                    perms.insert(0, LaunchPermission { user_id: None, group: Some("all".into()) });
                }
                out.launch_permissions = Some(perms);
            }
            "description" => {
                out.description = Some(AttributeValue { value: image.description.unwrap_or_default() })
            }
            "bootMode" => {
                out.boot_mode = image.boot_mode.map(|b| AttributeValue {
                    value: b.to_string(),
                });
            }
            "blockDeviceMapping" => out.block_device_mappings = Some(image.block_device_mappings),
            "sriovNetSupport" => out.sriov_net_support = Some(AttributeValue { value: "simple".into() }),
            "productCodes" => out.product_codes = Some(Vec::new()),
            other => {
                return Err(Error::invalid_value(format!(
                    "Value ({other}) for parameter attribute is invalid; use launchPermission, description, bootMode, blockDeviceMapping, sriovNetSupport or productCodes"
                )))
            }
        }
        Ok(out)
    }

    /// `ResetImageAttribute`: only launchPermission can be reset (to private).
    pub fn reset_image_attribute(
        &mut self,
        caller: &Caller,
        input: ResetImageAttributeRequest,
    ) -> Result<()> {
        let (image_id, attribute) = (input.image_id.as_str(), input.attribute.as_str());
        let mut image = self.owned_image(caller, image_id)?;
        if attribute != "launchPermission" {
            return Err(Error::invalid_value(format!(
                "Value ({attribute}) for parameter attribute is invalid; only launchPermission can be reset"
            )));
        }
        image.public = false;
        self.store.write(|db| -> Result<()> {
            db.clear_launch_users(image_id)?;
            db.put_image(&image)?;
            Ok(())
        })
    }

    /// Look up an AMI the caller may launch, in the caller's region.
    pub fn launchable_image(&mut self, caller: &Caller, image_id: &str) -> Result<ImageState> {
        check_image_id(image_id)?;
        self.store.read(|db| -> Result<ImageState> {
            let image = db
                .image(image_id)?
                .filter(|i| i.region == caller.region)
                .ok_or_else(|| image_not_found(&[image_id.to_string()]))?;
            if !can_launch(db, caller, &image)? {
                return Err(image_not_found(&[image_id.to_string()]));
            }
            Ok(image)
        })
    }

    /// Make every disk of an AMI local (download and verify on first use).
    pub fn fetch_image(&mut self, caller: &Caller, image_id: &str) -> Result<Vec<FetchedDisk>> {
        let image = self.launchable_image(caller, image_id)?;
        let mut out = Vec::new();
        if image.root_device_type == RootDeviceType::InstanceStore {
            let source = image.root_source.clone().ok_or_else(|| {
                Error::internal(format!("Image {image_id} has no root image location"))
            })?;
            let blob = match image.root_blob.as_deref().and_then(|b| self.blobs.get(b)) {
                Some(b) => b,
                None => {
                    let b = self.fetch_source(&source)?;
                    self.store
                        .write(|db| db.set_image_root_blob(image_id, &b.sha256))?;
                    b
                }
            };
            out.push(FetchedDisk {
                device_name: image.root_device_name.clone(),
                snapshot_id: None,
                sha256: blob.sha256,
                size: blob.size,
                virtual_size: blob.virtual_size,
                path: blob.path.display().to_string(),
            });
        }
        for m in &image.block_device_mappings {
            let Some(sid) = m.ebs.as_ref().and_then(|e| e.snapshot_id.clone()) else {
                continue;
            };
            let snap = self
                .store
                .read(|db| db.snapshot(&sid))?
                .ok_or_else(|| snapshot_not_found(&sid))?;
            let (sha, path, size, vsize) = if snap.has_file {
                let p = self.paths.snapshot(&sid);
                let info = crate::disk::info(&p)?;
                (String::new(), p, info.actual_size, info.virtual_size)
            } else {
                let blob = match snap.blob_sha256.as_deref().and_then(|b| self.blobs.get(b)) {
                    Some(b) => b,
                    None => {
                        let source = snap.source.clone().ok_or_else(|| {
                            Error::internal(format!("Snapshot {sid} has no data and no source"))
                        })?;
                        let b = self.fetch_source(&source)?;
                        let gib = b.virtual_size.div_ceil(1 << 30);
                        self.store.write(|db| -> Result<()> {
                            db.set_snapshot_blob(&sid, &b.sha256, b.size)?;
                            if let Some(mut s) = db.snapshot(&sid)? {
                                if s.volume_size_gib < gib {
                                    s.volume_size_gib = gib;
                                    db.put_snapshot(&s)?;
                                }
                            }
                            Ok(())
                        })?;
                        b
                    }
                };
                (
                    blob.sha256.clone(),
                    blob.path.clone(),
                    blob.size,
                    blob.virtual_size,
                )
            };
            out.push(FetchedDisk {
                device_name: m.device_name.clone(),
                snapshot_id: Some(sid),
                sha256: sha,
                size,
                virtual_size: vsize,
                path: path.display().to_string(),
            });
        }
        Ok(out)
    }
}

fn image_filter_values(
    image: &ImageState,
    tags: &[crate::store::TagState],
    name: &str,
) -> Vec<String> {
    let one = |s: &str| vec![s.to_string()];
    let opt = |s: &Option<String>| s.iter().cloned().collect::<Vec<_>>();
    let ebs = || {
        image
            .block_device_mappings
            .iter()
            .filter_map(|m| m.ebs.as_ref())
    };
    match name {
        "architecture" => one(image.architecture.as_str()),
        "boot-mode" => image.boot_mode.iter().map(|b| b.to_string()).collect(),
        "description" => opt(&image.description),
        "hypervisor" => one("xen"),
        "image-id" => one(&image.image_id),
        "image-type" => one("machine"),
        "is-public" => one(if image.public { "true" } else { "false" }),
        "name" => one(&image.name),
        "owner-alias" => opt(&image.owner_alias),
        "owner-id" => one(&image.owner_id),
        "platform-details" => one("Linux/UNIX"),
        "usage-operation" => one("RunInstances"),
        "root-device-name" => one(&image.root_device_name),
        "root-device-type" => one(image.root_device_type.as_str()),
        "source-image-id" => opt(&image.source_image_id),
        "source-image-region" => opt(&image.source_image_region),
        "source-instance-id" => opt(&image.source_instance_id),
        "state" => one(image.state.as_str()),
        "virtualization-type" => one(&image.virtualization_type),
        "block-device-mapping.device-name" => image
            .block_device_mappings
            .iter()
            .map(|m| m.device_name.clone())
            .collect(),
        "block-device-mapping.snapshot-id" => ebs().filter_map(|e| e.snapshot_id.clone()).collect(),
        "block-device-mapping.volume-size" => ebs()
            .filter_map(|e| e.volume_size.map(|s| s.to_string()))
            .collect(),
        "block-device-mapping.volume-type" => ebs().filter_map(|e| e.volume_type.clone()).collect(),
        "block-device-mapping.delete-on-termination" => ebs()
            .filter_map(|e| e.delete_on_termination.map(|d| d.to_string()))
            .collect(),
        n => filter::tag_values(tags, n).unwrap_or_default(),
    }
}

fn render_image(image: &ImageState, tags: &[crate::store::TagState]) -> Image {
    Image {
        architecture: image.architecture,
        creation_date: image.creation_date.clone(),
        image_id: image.image_id.clone(),
        image_location: image.image_location.clone(),
        image_type: "machine".into(),
        public: image.public,
        owner_id: image.owner_id.clone(),
        platform_details: "Linux/UNIX".into(),
        usage_operation: "RunInstances".into(),
        state: image.state,
        block_device_mappings: image.block_device_mappings.clone(),
        description: image.description.clone(),
        ena_support: true,
        hypervisor: "xen".into(),
        image_owner_alias: image.owner_alias.clone(),
        name: image.name.clone(),
        root_device_name: image.root_device_name.clone(),
        root_device_type: image.root_device_type,
        sriov_net_support: "simple".into(),
        state_reason: image.state_reason.as_ref().map(|m| StateReason {
            code: image.state.to_string(),
            message: m.clone(),
        }),
        tags: tags
            .iter()
            .map(|t| Tag {
                key: t.key.clone(),
                value: Some(t.value.clone()),
            })
            .collect(),
        virtualization_type: image.virtualization_type.clone(),
        boot_mode: image.boot_mode,
        source_instance_id: image.source_instance_id.clone(),
        source_image_id: image.source_image_id.clone(),
        source_image_region: image.source_image_region.clone(),
    }
}
