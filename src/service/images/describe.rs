//! `DescribeImages`: the AMIs a caller may see (its own, shared with it,
//! public), selected by id, owner, launch permission and filters.

use super::*;

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
    /// Page size, 6 to 1000 images (EC2's range).
    #[serde(default)]
    pub max_results: Option<i64>,
    #[serde(default)]
    pub next_token: Option<String>,
}

/// What `DescribeImages` returns: a page of images in id order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeImagesResult {
    pub images: Vec<Image>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// `DescribeImages`' filters, EC2's documented list. What amirun's AMIs
/// never have (product codes, kernels by id, watermarks, scan results,
/// instance type specifications, SSM parameters) has no values, as on EC2
/// for an AMI without it.
pub(super) const IMAGE_FILTERS: &[&str] = &[
    "architecture",
    "block-device-mapping.encrypted",
    "creation-date",
    "ena-support",
    "free-tier-eligible",
    "image-allowed",
    "image-watermark.source-image-creation-time",
    "image-watermark.source-image-id",
    "image-watermark.source-image-region",
    "image-watermark.watermark-creation-time",
    "image-watermark.watermark-key",
    "instance-type-specification.supported-instance-type",
    "instance-type-specification.unsupported-instance-type",
    "kernel-id",
    "manifest-location",
    "platform",
    "product-code",
    "product-code.type",
    "public-ssm-parameter-name",
    "ramdisk-id",
    "scan-result.critical-fix-available-since",
    "scan-result.finding-scan-date",
    "scan-result.high-fix-available-since",
    "scan-result.highest-finding-severity-label",
    "scan-result.informational-fix-available-since",
    "scan-result.low-fix-available-since",
    "scan-result.medium-fix-available-since",
    "sriov-net-support",
    "state-reason-code",
    "state-reason-message",
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

pub(super) fn image_filter_values(
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
        "creation-date" => one(&image.creation_date),
        "ena-support" => one("true"),
        "sriov-net-support" => one("simple"),
        // No Allowed AMIs settings in amirun: every AMI is allowed; none is
        // free-tier eligible (no billing).
        "image-allowed" => one("true"),
        "free-tier-eligible" => one("false"),
        "manifest-location" => opt(&image.image_location),
        "state-reason-code" => image
            .state_reason
            .iter()
            .map(|_| image.state.to_string())
            .collect(),
        "state-reason-message" => opt(&image.state_reason),
        "block-device-mapping.encrypted" => ebs().map(|_| "false".to_string()).collect(),
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

pub(super) fn render_image(image: &ImageState, tags: &[crate::store::TagState]) -> Image {
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
        tags: tags.iter().map(Tag::from).collect(),
        virtualization_type: image.virtualization_type.clone(),
        boot_mode: image.boot_mode,
        source_instance_id: image.source_instance_id.clone(),
        source_image_id: image.source_image_id.clone(),
        source_image_region: image.source_image_region.clone(),
    }
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
        if self.is_remote_region(&caller.region) {
            self.refresh_remote_images(caller)?;
        }
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
            .and_then(|images| {
                let paging =
                    crate::service::paging::Paging::of(input.max_results, &input.next_token);
                let (images, next_token) = crate::service::paging::page(images, &paging, 6, 1000)?;
                Ok(DescribeImagesResult { images, next_token })
            })
    }
}
