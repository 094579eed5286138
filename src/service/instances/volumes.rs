//! `DescribeVolumes`: the caller's EBS volumes with their attachments,
//! after the instances they belong to are reconciled.

use super::*;

/// `DescribeVolumes`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DescribeVolumesRequest {
    #[serde(default)]
    pub volume_ids: Vec<String>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    /// 5 to 500; the aws CLI pages with it.
    #[serde(default)]
    pub max_results: Option<i64>,
    #[serde(default)]
    pub next_token: Option<String>,
}

/// An attachment of a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct VolumeAttachment {
    pub attach_time: Option<String>,
    pub device: String,
    pub instance_id: String,
    pub state: String,
    pub volume_id: String,
    pub delete_on_termination: bool,
}

/// An EBS volume as EC2 shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Volume {
    pub attachments: Vec<VolumeAttachment>,
    pub availability_zone: String,
    pub create_time: String,
    pub encrypted: bool,
    pub size: u64,
    pub snapshot_id: String,
    pub state: VolumeStateName,
    pub volume_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iops: Option<u64>,
    pub volume_type: String,
    pub multi_attach_enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throughput: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
}

/// What `DescribeVolumes` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeVolumesResult {
    pub volumes: Vec<Volume>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// `DescribeVolumes`' filters, EC2's documented list (but
/// `availability-zone-id`, which amirun does not keep: refused).
pub(super) const VOLUME_FILTERS: &[&str] = &[
    "attachment.attach-time",
    "attachment.status",
    "availability-zone",
    "create-time",
    "encrypted",
    "fast-restored",
    "multi-attach-enabled",
    "operator.managed",
    "operator.principal",
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

impl Service {
    /// `DescribeVolumes`.
    pub fn describe_volumes(
        &mut self,
        caller: &Caller,
        input: DescribeVolumesRequest,
    ) -> Result<DescribeVolumesResult> {
        let (volume_ids, filters) = (&input.volume_ids, &input.filters);
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
                "attachment.attach-time" => v.attach_time.iter().cloned().collect(),
                "attachment.status" => v.instance_id.iter().map(|_| "attached".into()).collect(),
                "availability-zone" => vec![v.availability_zone.clone()],
                "create-time" => vec![v.create_time.clone()],
                "encrypted" | "fast-restored" | "multi-attach-enabled" | "operator.managed" => {
                    vec!["false".into()]
                }
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
            let attachments = match (&v.instance_id, &v.device) {
                (Some(i), Some(d)) => vec![VolumeAttachment {
                    attach_time: v.attach_time.clone(),
                    device: d.clone(),
                    instance_id: i.clone(),
                    state: "attached".into(),
                    volume_id: v.volume_id.clone(),
                    delete_on_termination: v.delete_on_termination,
                }],
                _ => Vec::new(),
            };
            let perf = self.store.read(|db| db.volume_performance(&v.volume_id))?;
            let (iops, throughput) =
                crate::service::volumes::performance_shown(&v.volume_type, v.size_gib, perf);
            out.push(Volume {
                attachments,
                availability_zone: v.availability_zone.clone(),
                create_time: v.create_time.clone(),
                encrypted: false,
                size: v.size_gib,
                snapshot_id: v.snapshot_id.clone().unwrap_or_default(),
                state: v.state,
                volume_id: v.volume_id.clone(),
                iops,
                volume_type: v.volume_type.clone(),
                multi_attach_enabled: false,
                throughput,
                tags: tags.iter().map(Tag::from).collect(),
            });
        }
        if let Some(m) = missing.first() {
            return Err(Error::new(
                ErrorCode::InvalidVolumeNotFound,
                format!("The volume '{m}' does not exist."),
            ));
        }
        // EC2: above 500, only 500 come back (the aws CLI asks for 1000).
        let paging = crate::service::paging::Paging {
            max_results: input.max_results.map(|m| m.min(500)),
            next_token: input.next_token.clone(),
        };
        let (volumes, next_token) = crate::service::paging::page(out, &paging, 5, 500)?;
        Ok(DescribeVolumesResult {
            volumes,
            next_token,
        })
    }
}
