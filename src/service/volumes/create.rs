//! `CreateVolume`: a blank volume or one from a snapshot's layer, and the
//! volume as `CreateVolume` answers it.

use super::*;

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

impl Service {
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
                crate::service::check_snapshot_id(s)?;
                let snap = self
                    .store
                    .read(|db| db.snapshot(s))?
                    .filter(|x| {
                        x.region == caller.region
                            && (x.owner_id == caller.account || x.catalog_key.is_some())
                            && x.state == SnapshotStateName::Completed
                    })
                    .ok_or_else(|| crate::service::snapshot_not_found(s))?;
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
        let tags = crate::service::images::tags_for(&req.tag_specifications, "volume")?;
        // The snapshot's data, local.
        let base = match &snapshot {
            Some(s) => Some(match crate::service::layers::data_path(&self.paths, s) {
                Some(p) if p.exists() => p,
                _ => {
                    self.fetch_snapshot_data(caller, s)?;
                    let fresh = self
                        .store
                        .read(|db| db.snapshot(&s.snapshot_id))?
                        .ok_or_else(|| crate::service::snapshot_not_found(&s.snapshot_id))?;
                    crate::service::layers::data_path(&self.paths, &fresh).ok_or_else(|| {
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
            Some(token) => crate::service::client_token_id(IdKind::Volume, caller, token)?,
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
                    return Err(crate::service::idempotent_mismatch(token));
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
}
