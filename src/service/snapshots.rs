//! EBS snapshot operations: describe (with each layer's parent and size).
//! Taking, copying and deleting layers is in [`super::layers`].

use super::filter;
use super::paging::Paging;
use super::shapes::*;
use super::{check_snapshot_id, snapshot_not_found, Caller, Result, Service};
use crate::domain::SnapshotStateName;
use crate::store::SnapshotState;
use serde::{Deserialize, Serialize};

/// An EBS snapshot as `describe-snapshots` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Snapshot {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub encrypted: bool,
    pub owner_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_alias: Option<String>,
    pub progress: String,
    pub snapshot_id: String,
    pub start_time: String,
    pub state: SnapshotStateName,
    pub volume_id: String,
    pub volume_size: u64,
    pub storage_tier: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
    /// amirun's own facts: the snapshot's layer, parent and size on disk.
    #[serde(rename = "Amirun", skip_serializing_if = "Option::is_none")]
    pub amirun: Option<SnapshotLayer>,
}

/// How a snapshot is stored (amirun's addition to EC2's Snapshot shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SnapshotLayer {
    /// The snapshot this one is a qcow2 layer on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_snapshot_id: Option<String>,
    /// Whether it has a layer file of its own (else its data is a blob).
    pub has_layer: bool,
    /// Bytes on disk: the layer alone (what changed), or the blob.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_bytes: Option<u64>,
    /// Snapshot layers in its chain, itself included.
    pub chain_depth: usize,
    /// The blob at the root of its chain, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_blob: Option<String>,
}

/// `DescribeSnapshots`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DescribeSnapshotsRequest {
    #[serde(default)]
    pub snapshot_ids: Vec<String>,
    #[serde(default)]
    pub owner_ids: Vec<String>,
    #[serde(default)]
    pub restorable_by_user_ids: Vec<String>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    /// 5 to 1000 (the aws CLI sends 1000 unless told otherwise).
    #[serde(default)]
    pub max_results: Option<i64>,
    #[serde(default)]
    pub next_token: Option<String>,
}

/// What `DescribeSnapshots` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeSnapshotsResult {
    pub snapshots: Vec<Snapshot>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// `DeleteSnapshot`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DeleteSnapshotRequest {
    pub snapshot_id: String,
}

/// `DescribeSnapshots`' filters, EC2's documented list.
const SNAPSHOT_FILTERS: &[&str] = &[
    "description",
    "encrypted",
    "storage-tier",
    "transfer-type",
    "owner-alias",
    "owner-id",
    "progress",
    "snapshot-id",
    "start-time",
    "status",
    "tag-key",
    "volume-id",
    "volume-size",
];

impl Service {
    /// `DescribeSnapshots`: the caller's own snapshots and those of catalog AMIs.
    pub fn describe_snapshots(
        &mut self,
        caller: &Caller,
        input: DescribeSnapshotsRequest,
    ) -> Result<DescribeSnapshotsResult> {
        let paging = Paging::of(input.max_results, &input.next_token);
        for id in &input.snapshot_ids {
            check_snapshot_id(id)?;
        }
        filter::check_names(&input.filters, SNAPSHOT_FILTERS)?;
        self.store.read(|db| -> Result<DescribeSnapshotsResult> {
            let mut out = Vec::new();
            let mut missing = input.snapshot_ids.clone();
            for s in db.snapshots_in_region(&caller.region)? {
                // A deleted snapshot whose layer still serves running volumes.
                let deleted = s.state == crate::domain::SnapshotStateName::Deleting;
                let shared = if deleted || s.owner_id == caller.account {
                    Vec::new()
                } else {
                    db.snapshot_volume_permissions(&s.snapshot_id)?
                };
                let shared_with_caller = shared.iter().any(|g| g == "all" || *g == caller.account);
                let visible = !deleted
                    && (s.owner_id == caller.account
                        || s.catalog_key.is_some()
                        || shared_with_caller);
                if !visible {
                    continue;
                }
                if !input.snapshot_ids.is_empty() {
                    if !input.snapshot_ids.contains(&s.snapshot_id) {
                        continue;
                    }
                    missing.retain(|m| m != &s.snapshot_id);
                }
                if !filter::owner_selected(
                    &input.owner_ids,
                    &caller.account,
                    &s.owner_id,
                    s.owner_alias.as_deref(),
                ) {
                    continue;
                }
                if !input.restorable_by_user_ids.is_empty()
                    && !input.restorable_by_user_ids.iter().any(|u| {
                        (u == "self" && (s.owner_id == caller.account || shared_with_caller))
                            || *u == s.owner_id
                            || shared.contains(u)
                            || u == "all"
                    })
                {
                    continue;
                }
                let tags = db.tags_of(&s.snapshot_id)?;
                if !filter::matches(&input.filters, |name| {
                    snapshot_filter_values(&s, &tags, name)
                }) {
                    continue;
                }
                let depth = super::layers::depth(db, Some(&s.snapshot_id))?;
                out.push(render_snapshot(&s, &tags, depth));
            }
            if let Some(m) = missing.first() {
                return Err(snapshot_not_found(m));
            }
            let (snapshots, next_token) = super::paging::page(out, &paging, 5, 1000)?;
            Ok(DescribeSnapshotsResult {
                snapshots,
                next_token,
            })
        })
    }
}

fn snapshot_filter_values(
    s: &SnapshotState,
    tags: &[crate::store::TagState],
    name: &str,
) -> Vec<String> {
    let one = |v: &str| vec![v.to_string()];
    match name {
        "description" => s.description.iter().cloned().collect(),
        "encrypted" => one("false"),
        "storage-tier" => one("standard"),
        "transfer-type" => one("standard"),
        "owner-alias" => s.owner_alias.iter().cloned().collect(),
        "owner-id" => one(&s.owner_id),
        "progress" => one("100%"),
        "snapshot-id" => one(&s.snapshot_id),
        "start-time" => one(&s.start_time),
        "status" => one(s.state.as_str()),
        "volume-id" => one(s.volume_id.as_deref().unwrap_or("vol-ffffffff")),
        "volume-size" => one(&s.volume_size_gib.to_string()),
        n => filter::tag_values(tags, n).unwrap_or_default(),
    }
}

fn render_snapshot(s: &SnapshotState, tags: &[crate::store::TagState], depth: usize) -> Snapshot {
    Snapshot {
        description: s.description.clone(),
        encrypted: false,
        owner_id: s.owner_id.clone(),
        owner_alias: s.owner_alias.clone(),
        progress: "100%".into(),
        snapshot_id: s.snapshot_id.clone(),
        start_time: s.start_time.clone(),
        state: s.state,
        volume_id: s.volume_id.clone().unwrap_or_else(|| "vol-ffffffff".into()),
        volume_size: s.volume_size_gib,
        storage_tier: "standard".into(),
        tags: tags.iter().map(Tag::from).collect(),
        amirun: Some(SnapshotLayer {
            parent_snapshot_id: s.parent_snapshot_id.clone(),
            has_layer: s.has_file,
            storage_bytes: s.storage_bytes,
            chain_depth: depth,
            base_blob: s.blob_sha256.clone(),
        }),
    }
}
