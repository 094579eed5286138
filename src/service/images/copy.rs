//! An AMI's life after it is made: `CopyImage` into another region (new
//! ids, snapshots copied; idempotent with `ClientToken`) and
//! `DeregisterImage` (its snapshots kept unless asked).

use super::*;

/// `CopyImage`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct CopyImageRequest {
    pub source_region: String,
    pub source_image_id: String,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub copy_image_tags: Option<bool>,
    #[serde(default)]
    pub tag_specifications: Vec<TagSpecification>,
    /// Idempotency (boto3 sends one with every copy): a repeated token
    /// returns the first copy; the new AMI's id is derived from it.
    #[serde(default)]
    pub client_token: Option<String>,
}

/// What `CopyImage` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CopyImageResult {
    pub image_id: String,
}

/// `DeregisterImage`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DeregisterImageRequest {
    pub image_id: String,
    #[serde(default)]
    pub delete_associated_snapshots: Option<bool>,
}

/// One result of `deregister-image --delete-associated-snapshots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeleteSnapshotResult {
    pub snapshot_id: String,
    pub return_code: String,
}

/// What `DeregisterImage` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeregisterImageResult {
    #[serde(rename = "Return")]
    pub ret: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub delete_snapshot_results: Vec<DeleteSnapshotResult>,
}

impl Service {
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
                let id = crate::service::client_token_id(IdKind::Image, caller, token)?;
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
        let mut locks = vec![crate::service::object_lock::lock(&self.paths, &new_id)?];
        let mut copies: Vec<(String, SnapshotState)> = Vec::new();
        let mut made: Vec<std::path::PathBuf> = Vec::new();
        let copied = (|| -> Result<()> {
            for snap in &snaps {
                let new_sid = ids::new_id(IdKind::Snapshot);
                locks.push(crate::service::object_lock::lock(&self.paths, &new_sid)?);
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

    /// `DeregisterImage`: keeps the snapshots unless asked to delete them.
    pub fn deregister_image(
        &mut self,
        caller: &Caller,
        input: DeregisterImageRequest,
    ) -> Result<DeregisterImageResult> {
        let image_id = input.image_id.as_str();
        let delete_associated_snapshots = input.delete_associated_snapshots.unwrap_or(false);
        let image = self.owned_image(caller, image_id)?;
        if self.is_remote_region(&caller.region) {
            self.remote_deregister(caller, image_id)?;
        }
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
}
