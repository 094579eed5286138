//! Shapes of EC2's model shared by several operations (Tag, Filter,
//! TagSpecification, launch permissions), and the AMI operations' requests
//! and results, in botocore's names.
//!
//! Results serialize to exactly the JSON the aws CLI prints (PascalCase
//! keys, absent optionals omitted). Requests deserialize from the same
//! names and refuse members they do not know, so the CLI's JSON/shorthand
//! options and the HTTP API's parameters map onto them without
//! translation tables ([`crate::api::request`]).

use crate::domain::{Architecture, BootMode, ImageStateName, RootDeviceType, SnapshotStateName};
use crate::store::BlockDeviceMapping;
use serde::{Deserialize, Deserializer, Serialize};

/// A value that may be given as one item or a list (shorthand `Values=a`).
pub fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany<T> {
        Many(Vec<T>),
        One(T),
    }
    Ok(match Option::<OneOrMany<T>>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrMany::Many(v)) => v,
        Some(OneOrMany::One(v)) => vec![v],
    })
}

/// A describe filter: `Name=…,Values=…`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Filter {
    pub name: String,
    #[serde(default, deserialize_with = "one_or_many")]
    pub values: Vec<String>,
}

/// A tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Tag {
    pub key: String,
    #[serde(default)]
    pub value: Option<String>,
}

/// Tags to put on resources created by an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct TagSpecification {
    pub resource_type: String,
    #[serde(default, deserialize_with = "one_or_many")]
    pub tags: Vec<Tag>,
}

/// Why an image is in its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct StateReason {
    pub code: String,
    pub message: String,
}

/// An AMI as `describe-images` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Image {
    pub architecture: Architecture,
    pub creation_date: String,
    pub image_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_location: Option<String>,
    pub image_type: String,
    pub public: bool,
    pub owner_id: String,
    pub platform_details: String,
    pub usage_operation: String,
    pub state: ImageStateName,
    pub block_device_mappings: Vec<BlockDeviceMapping>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub ena_support: bool,
    pub hypervisor: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_owner_alias: Option<String>,
    pub name: String,
    pub root_device_name: String,
    pub root_device_type: RootDeviceType,
    pub sriov_net_support: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<StateReason>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
    pub virtualization_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_mode: Option<BootMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_instance_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_image_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_image_region: Option<String>,
}

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

/// One disk of an import (EC2's `ImageDiskContainer`; `UserBucket`, an S3
/// location, is not a member: amirun reads `Url`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DiskContainer {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub device_name: Option<String>,
    #[serde(default)]
    pub snapshot_id: Option<String>,
}

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

/// `DescribeImages`. `IncludeDeprecated` and `IncludeDisabled` are honoured
/// trivially: amirun never deprecates or disables an AMI.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DescribeImagesRequest {
    #[serde(default)]
    pub image_ids: Vec<String>,
    #[serde(default)]
    pub owners: Vec<String>,
    #[serde(default)]
    pub executable_users: Vec<String>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub include_deprecated: Option<bool>,
    #[serde(default)]
    pub include_disabled: Option<bool>,
}

/// What `DescribeImages` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeImagesResult {
    pub images: Vec<Image>,
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
}

/// What `DescribeSnapshots` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeSnapshotsResult {
    pub snapshots: Vec<Snapshot>,
}

/// `DeleteSnapshot`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DeleteSnapshotRequest {
    pub snapshot_id: String,
}

/// One launch permission: an account or the group `all`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct LaunchPermission {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// `--launch-permission Add=[…],Remove=[…]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct LaunchPermissionModifications {
    #[serde(default, deserialize_with = "one_or_many")]
    pub add: Vec<LaunchPermission>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub remove: Vec<LaunchPermission>,
}

/// `ModifyImageAttribute`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ModifyImageAttributeRequest {
    pub image_id: String,
    #[serde(default)]
    pub attribute: Option<String>,
    #[serde(default)]
    pub operation_type: Option<String>,
    #[serde(default)]
    pub user_ids: Vec<String>,
    #[serde(default)]
    pub user_groups: Vec<String>,
    #[serde(default)]
    pub launch_permission: Option<LaunchPermissionModifications>,
    #[serde(default)]
    pub description: Option<AttributeValue>,
    #[serde(default)]
    pub value: Option<String>,
}

/// `DescribeImageAttribute` and `ResetImageAttribute`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ImageAttributeRequest {
    pub image_id: String,
    /// `launchPermission`, `description`, `bootMode`, … (EC2's camelCase names).
    pub attribute: String,
}

/// `DescribeImageAttribute` (botocore's `DescribeImageAttributeRequest`).
pub type DescribeImageAttributeRequest = ImageAttributeRequest;
/// `ResetImageAttribute` (botocore's `ResetImageAttributeRequest`).
pub type ResetImageAttributeRequest = ImageAttributeRequest;

/// `DeregisterImage`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DeregisterImageRequest {
    pub image_id: String,
    #[serde(default)]
    pub delete_associated_snapshots: Option<bool>,
}

/// A `{"Value": …}` attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct AttributeValue {
    pub value: String,
}

/// What `describe-image-attribute` returns: the image id and the one attribute asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ImageAttribute {
    pub image_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launch_permissions: Option<Vec<LaunchPermission>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<AttributeValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_mode: Option<AttributeValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_device_mappings: Option<Vec<BlockDeviceMapping>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sriov_net_support: Option<AttributeValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product_codes: Option<Vec<serde_json::Value>>,
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

/// `CreateTags` and `DeleteTags` (botocore's `CreateTagsRequest`,
/// `DeleteTagsRequest`): `DeleteTags` takes tags without values (any
/// value) or none at all (every tag).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct TagsRequest {
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default)]
    pub tags: Vec<Tag>,
}

/// `CreateTags`.
pub type CreateTagsRequest = TagsRequest;
/// `DeleteTags`.
pub type DeleteTagsRequest = TagsRequest;

/// `DescribeTags`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DescribeTagsRequest {
    #[serde(default)]
    pub filters: Vec<Filter>,
}

/// What `DescribeTags` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeTagsResult {
    pub tags: Vec<TagDescription>,
}

/// A tag as `describe-tags` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TagDescription {
    pub key: String,
    pub resource_id: String,
    pub resource_type: String,
    pub value: String,
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
