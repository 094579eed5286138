//! `ModifyVolume` and `DescribeVolumesModifications`: grow or retype a
//! volume (online under a running guest) and show its last modification.

use super::*;

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

impl Service {
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
    pub(super) fn commit_modification(
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
        let (volumes_modifications, next_token) =
            crate::service::paging::page(out, &paging, 5, 500)?;
        Ok(DescribeVolumesModificationsResult {
            volumes_modifications,
            next_token,
        })
    }
}
