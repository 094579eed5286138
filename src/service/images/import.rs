//! AMIs from outside: `ImportImage` (disk images into snapshots and an EBS
//! AMI), `RegisterImage` (from an image location or from snapshots), and
//! fetching an AMI's data into the blob store before its first launch.

use super::*;

/// `ImportImage`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ImportImageRequest {
    #[serde(default)]
    pub disk_containers: Vec<DiskContainer>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub architecture: Option<Architecture>,
    #[serde(default)]
    pub boot_mode: Option<BootMode>,
    #[serde(default)]
    pub platform: Option<String>,
    #[serde(default)]
    pub tag_specifications: Vec<TagSpecification>,
}

/// A disk of a finished import.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SnapshotDetail {
    pub device_name: String,
    pub disk_image_size: f64,
    pub format: String,
    pub snapshot_id: String,
    pub status: String,
    pub url: String,
}

/// What `ImportImage` returns (the import has completed when it returns).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImportImageResult {
    pub architecture: Architecture,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub image_id: String,
    pub import_task_id: String,
    pub platform: String,
    pub progress: String,
    pub snapshot_details: Vec<SnapshotDetail>,
    pub status: String,
    pub status_message: String,
    pub boot_mode: BootMode,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
}

/// `RegisterImage`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct RegisterImageRequest {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub architecture: Option<Architecture>,
    #[serde(default)]
    pub image_location: Option<String>,
    #[serde(default)]
    pub root_device_name: Option<String>,
    #[serde(default)]
    pub block_device_mappings: Vec<BlockDeviceMapping>,
    #[serde(default)]
    pub boot_mode: Option<BootMode>,
    /// Only `hvm`.
    #[serde(default)]
    pub virtualization_type: Option<String>,
    #[serde(default)]
    pub tag_specifications: Vec<TagSpecification>,
}

/// What `RegisterImage` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RegisterImageResult {
    pub image_id: String,
}

/// What `fetch-image` (amirun's own verb) reports per disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct FetchedDisk {
    pub device_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    pub sha256: String,
    pub size: u64,
    pub virtual_size: u64,
    pub path: String,
}

impl Service {
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
            if c.snapshot_id.is_some() {
                return Err(Error::new(
                    ErrorCode::UnsupportedOperation,
                    format!(
                        "DiskContainer.{}.SnapshotId is not supported; give the disk image as Url",
                        i + 1
                    ),
                ));
            }
            let blob = self.fetch_source(&source)?;
            disks.push((url, blob, c));
        }
        crate::failpoint::hit("import-image:after-fetch")?;
        let image_id = ids::new_id(IdKind::Image);
        let created = now();
        let mut details = Vec::new();
        let mut bdm = Vec::new();
        let mut snapshots = Vec::new();
        for (i, (url, blob, container)) in disks.iter().enumerate() {
            let device = match &container.device_name {
                Some(d) => d.clone(),
                None if i == 0 => "/dev/sda1".to_string(),
                None => format!("/dev/sd{}", (b'b' + i as u8 - 1) as char),
            };
            if bdm
                .iter()
                .any(|m: &BlockDeviceMapping| m.device_name == device)
            {
                return Err(Error::invalid_value(format!(
                    "DiskContainer.{}.DeviceName {device} is given twice",
                    i + 1
                )));
            }
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
                description: Some(
                    container.description.clone().unwrap_or_else(|| {
                        format!("Created by AWS-VMImport service for {task_id}")
                    }),
                ),
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
            root_device_name: bdm[0].device_name.clone(),
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
