//! Launch templates: named, numbered versions of RunInstances parameters,
//! so a fleet is launched again and again the same way and rolled onto a
//! new AMI by making a new version the default.
//!
//! A version's `LaunchTemplateData` is kept as the caller gave it (botocore's
//! member names, the same as RunInstances' own). It is checked as EC2
//! checks it: at create time only its syntax (known members of the right
//! types, a valid instance type, shutdown behavior, device names, base64
//! user data, well-formed ids); at launch time, by RunInstances itself,
//! whether the AMI, key pair and snapshots exist.
//!
//! RunInstances with `LaunchTemplate` ([`Service::apply_launch_template`]):
//! the version's data is the base, every member of the request itself
//! replaces the template's member of the same name, and the instances are
//! tagged `aws:ec2launchtemplate:id` and `aws:ec2launchtemplate:version`.
//!
//! Versions are numbered from 1; `$Latest` and `$Default` name the newest
//! and the default one. A version's data never changes; the default can
//! (ModifyLaunchTemplate) and cannot be deleted while it is the default.
//! Every change is one store transaction: there are no files.

use super::paging::Paging;
use super::shapes::{Filter, Tag, TagSpecification};
use super::volumes::check_device_name;
use super::{filter, now, Caller, Error, ErrorCode, Result, Service};
use crate::ids::{self, IdKind};
use crate::store::{LaunchTemplateState, LaunchTemplateVersionState};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// `LaunchTemplateTagSpecificationRequest`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct LaunchTemplateTagSpecificationRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
}

/// `LaunchTemplateEbsBlockDeviceRequest`: what amirun's volumes honour.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct LaunchTemplateEbsBlockDeviceRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_on_termination: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput: Option<u64>,
}

/// `LaunchTemplateBlockDeviceMappingRequest`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct LaunchTemplateBlockDeviceMappingRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ebs: Option<LaunchTemplateEbsBlockDeviceRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_device: Option<String>,
}

/// `LaunchTemplateHibernationOptionsRequest`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct LaunchTemplateHibernationOptionsRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configured: Option<bool>,
}

/// `RequestLaunchTemplateData`: the members amirun keeps. Anything else is
/// refused (UnknownParameter), never dropped.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct RequestLaunchTemplateData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    /// Base64, as RunInstances takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tag_specifications: Vec<LaunchTemplateTagSpecificationRequest>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block_device_mappings: Vec<LaunchTemplateBlockDeviceMappingRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_options: Option<crate::service::instances::InstanceMetadataOptionsRequest>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_group_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_initiated_shutdown_behavior: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hibernation_options: Option<LaunchTemplateHibernationOptionsRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ebs_optimized: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_api_termination: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_api_stop: Option<bool>,
}

/// `CreateLaunchTemplate`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct CreateLaunchTemplateRequest {
    pub launch_template_name: String,
    #[serde(default)]
    pub version_description: Option<String>,
    pub launch_template_data: RequestLaunchTemplateData,
    #[serde(default)]
    pub tag_specifications: Vec<TagSpecification>,
    #[serde(default)]
    pub client_token: Option<String>,
}

/// `CreateLaunchTemplateVersion`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct CreateLaunchTemplateVersionRequest {
    #[serde(default)]
    pub launch_template_id: Option<String>,
    #[serde(default)]
    pub launch_template_name: Option<String>,
    #[serde(default)]
    pub source_version: Option<String>,
    #[serde(default)]
    pub version_description: Option<String>,
    pub launch_template_data: RequestLaunchTemplateData,
    #[serde(default)]
    pub resolve_alias: Option<bool>,
    #[serde(default)]
    pub client_token: Option<String>,
}

/// `DescribeLaunchTemplates`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DescribeLaunchTemplatesRequest {
    #[serde(default)]
    pub launch_template_ids: Vec<String>,
    #[serde(default)]
    pub launch_template_names: Vec<String>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub next_token: Option<String>,
    #[serde(default)]
    pub max_results: Option<i64>,
}

/// `DescribeLaunchTemplateVersions`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DescribeLaunchTemplateVersionsRequest {
    #[serde(default)]
    pub launch_template_id: Option<String>,
    #[serde(default)]
    pub launch_template_name: Option<String>,
    #[serde(default)]
    pub versions: Vec<String>,
    #[serde(default)]
    pub min_version: Option<String>,
    #[serde(default)]
    pub max_version: Option<String>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub next_token: Option<String>,
    #[serde(default)]
    pub max_results: Option<i64>,
    #[serde(default)]
    pub resolve_alias: Option<bool>,
}

/// `ModifyLaunchTemplate`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ModifyLaunchTemplateRequest {
    #[serde(default)]
    pub launch_template_id: Option<String>,
    #[serde(default)]
    pub launch_template_name: Option<String>,
    /// `SetDefaultVersion` on the wire (botocore's member name is DefaultVersion).
    #[serde(default)]
    pub default_version: Option<String>,
    #[serde(default)]
    pub client_token: Option<String>,
}

/// `DeleteLaunchTemplate`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DeleteLaunchTemplateRequest {
    #[serde(default)]
    pub launch_template_id: Option<String>,
    #[serde(default)]
    pub launch_template_name: Option<String>,
}

/// `DeleteLaunchTemplateVersions`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DeleteLaunchTemplateVersionsRequest {
    #[serde(default)]
    pub launch_template_id: Option<String>,
    #[serde(default)]
    pub launch_template_name: Option<String>,
    pub versions: Vec<String>,
}

/// `LaunchTemplateSpecification` (RunInstances' `LaunchTemplate`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct LaunchTemplateSpecification {
    #[serde(default)]
    pub launch_template_id: Option<String>,
    #[serde(default)]
    pub launch_template_name: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
}

/// EC2's `LaunchTemplate`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct LaunchTemplate {
    pub launch_template_id: String,
    pub launch_template_name: String,
    pub create_time: String,
    pub created_by: String,
    pub default_version_number: i64,
    pub latest_version_number: i64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
}

/// EC2's `LaunchTemplateVersion`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct LaunchTemplateVersion {
    pub launch_template_id: String,
    pub launch_template_name: String,
    pub version_number: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_description: Option<String>,
    pub create_time: String,
    pub created_by: String,
    pub default_version: bool,
    pub launch_template_data: Value,
}

/// `CreateLaunchTemplate`'s, `ModifyLaunchTemplate`'s and `DeleteLaunchTemplate`'s result.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct LaunchTemplateResult {
    pub launch_template: LaunchTemplate,
}

/// `CreateLaunchTemplateVersion`'s result.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateLaunchTemplateVersionResult {
    pub launch_template_version: LaunchTemplateVersion,
}

/// `DescribeLaunchTemplates`' result.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeLaunchTemplatesResult {
    pub launch_templates: Vec<LaunchTemplate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// `DescribeLaunchTemplateVersions`' result.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeLaunchTemplateVersionsResult {
    pub launch_template_versions: Vec<LaunchTemplateVersion>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// A version that was deleted.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeletedVersion {
    pub launch_template_id: String,
    pub launch_template_name: String,
    pub version_number: i64,
}

/// Why a version was not deleted (`ResponseError`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ResponseError {
    pub code: String,
    pub message: String,
}

/// A version that was not deleted.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct UndeletedVersion {
    pub launch_template_id: String,
    pub launch_template_name: String,
    pub version_number: i64,
    pub response_error: ResponseError,
}

/// `DeleteLaunchTemplateVersions`' result.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeleteLaunchTemplateVersionsResult {
    pub successfully_deleted_launch_template_versions: Vec<DeletedVersion>,
    pub unsuccessfully_deleted_launch_template_versions: Vec<UndeletedVersion>,
}

const TEMPLATE_FILTERS: &[&str] = &["create-time", "launch-template-name", "tag-key"];
const VERSION_FILTERS: &[&str] = &[
    "create-time",
    "ebs-optimized",
    "image-id",
    "instance-type",
    "is-default-version",
    "kernel-id",
    "ram-disk-id",
];

/// The tag keys EC2 puts on instances launched from a template.
pub const TEMPLATE_ID_TAG: &str = "aws:ec2launchtemplate:id";
/// See [`TEMPLATE_ID_TAG`].
pub const TEMPLATE_VERSION_TAG: &str = "aws:ec2launchtemplate:version";

fn check_name(name: &str) -> Result<()> {
    let ok = (3..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"().-/_".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorCode::InvalidLaunchTemplateNameMalformed,
            format!(
                "The launch template name '{name}' is malformed: use 3 to 128 letters, digits and ( ) . - / _"
            ),
        ))
    }
}

fn check_template_id(id: &str) -> Result<()> {
    if ids::is_well_formed(IdKind::LaunchTemplate, id) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorCode::InvalidLaunchTemplateIdMalformed,
            format!("The specified ID for the launch template ({id}) is malformed."),
        ))
    }
}

fn id_not_found(id: &str) -> Error {
    Error::new(
        ErrorCode::InvalidLaunchTemplateIdNotFound,
        format!("The specified launch template, with template ID {id}, does not exist."),
    )
}

fn name_not_found(name: &str) -> Error {
    Error::new(
        ErrorCode::InvalidLaunchTemplateNameNotFound,
        format!("The specified launch template, with template name {name}, does not exist."),
    )
}

fn version_not_found(t: &LaunchTemplateState, version: &str) -> Error {
    Error::new(
        ErrorCode::InvalidLaunchTemplateIdVersionNotFound,
        format!(
            "Could not find launch template version {version} of {} ({}); its versions go up to {}",
            t.launch_template_id, t.name, t.latest_version
        ),
    )
}

/// The syntax checks EC2 makes when a version is created (ids are checked
/// at launch).
fn check_data(data: &RequestLaunchTemplateData) -> Result<()> {
    if let Some(id) = &data.image_id {
        super::check_image_id(id)?;
    }
    if let Some(t) = &data.instance_type {
        if crate::machine::instance_type(t).is_none() {
            return Err(Error::invalid_value(format!(
                "Invalid value '{t}' for InstanceType."
            )));
        }
    }
    if let Some(u) = &data.user_data {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(u.trim())
            .map_err(|e| {
                Error::invalid_value("Invalid BASE64 encoding of UserData").with_source(e)
            })?;
    }
    if let Some(b) = &data.instance_initiated_shutdown_behavior {
        if b.parse::<crate::domain::ShutdownBehavior>().is_err() {
            return Err(Error::invalid_value(format!(
                "Value ({b}) for parameter InstanceInitiatedShutdownBehavior is invalid; use stop or terminate"
            )));
        }
    }
    for m in &data.block_device_mappings {
        let device = m.device_name.as_deref().ok_or_else(|| {
            Error::new(
                ErrorCode::InvalidBlockDeviceMapping,
                "A block device mapping of the launch template has no DeviceName",
            )
        })?;
        if device != "/dev/xvda" && device != "/dev/sda1" {
            check_device_name(device).map_err(|_| {
                Error::new(
                    ErrorCode::InvalidBlockDeviceMapping,
                    format!("Invalid device name {device}"),
                )
            })?;
        }
        if let Some(s) = m.ebs.as_ref().and_then(|e| e.snapshot_id.as_ref()) {
            super::check_snapshot_id(s)?;
        }
    }
    for s in &data.tag_specifications {
        match s.resource_type.as_deref() {
            Some("instance" | "volume" | "network-interface" | "spot-instances-request") | None => {
            }
            Some(other) => {
                return Err(Error::invalid_value(format!(
                    "'{other}' is not a valid taggable resource type for a launch template; use instance, volume, network-interface or spot-instances-request"
                )))
            }
        }
    }
    Ok(())
}

fn data_json(data: &RequestLaunchTemplateData) -> Value {
    serde_json::to_value(data).expect("launch template data serializes")
}

fn description(d: &Option<String>) -> Result<()> {
    if d.as_ref().is_some_and(|d| d.len() > 255) {
        return Err(Error::invalid_value(
            "The version description is longer than 255 characters",
        ));
    }
    Ok(())
}

impl Service {
    /// The caller's template named by id or by name (exactly one of them).
    fn find_template(
        &mut self,
        caller: &Caller,
        id: Option<&str>,
        name: Option<&str>,
    ) -> Result<LaunchTemplateState> {
        let all = self
            .store
            .read(|db| db.launch_templates_of(&caller.region, &caller.account))?;
        match (id, name) {
            (Some(_), Some(_)) => Err(Error::new(
                ErrorCode::InvalidParameterCombination,
                "Specify either the launch template ID or the launch template name, not both",
            )),
            (None, None) => Err(Error::missing("LaunchTemplateId or LaunchTemplateName")),
            (Some(id), None) => {
                check_template_id(id)?;
                all.into_iter()
                    .find(|t| t.launch_template_id == id)
                    .ok_or_else(|| id_not_found(id))
            }
            (None, Some(name)) => all
                .into_iter()
                .find(|t| t.name == name)
                .ok_or_else(|| name_not_found(name)),
        }
    }

    /// A version by number, `$Latest` or `$Default`.
    fn find_version(
        &mut self,
        t: &LaunchTemplateState,
        version: &str,
    ) -> Result<LaunchTemplateVersionState> {
        let n = match version {
            "$Latest" => t.latest_version,
            "$Default" => t.default_version,
            v => v.parse::<i64>().map_err(|_| version_not_found(t, v))?,
        };
        self.store
            .read(|db| db.launch_template_versions(&t.launch_template_id))?
            .into_iter()
            .find(|v| v.version == n)
            .ok_or_else(|| version_not_found(t, version))
    }

    fn template_shown(&mut self, t: &LaunchTemplateState) -> Result<LaunchTemplate> {
        let tags = self.store.read(|db| db.tags_of(&t.launch_template_id))?;
        Ok(LaunchTemplate {
            launch_template_id: t.launch_template_id.clone(),
            launch_template_name: t.name.clone(),
            create_time: t.create_time.clone(),
            created_by: t.created_by.clone(),
            default_version_number: t.default_version,
            latest_version_number: t.latest_version,
            tags: tags
                .into_iter()
                .map(|t| Tag {
                    key: t.key,
                    value: Some(t.value),
                })
                .collect(),
        })
    }

    fn version_shown(
        t: &LaunchTemplateState,
        v: &LaunchTemplateVersionState,
    ) -> LaunchTemplateVersion {
        LaunchTemplateVersion {
            launch_template_id: t.launch_template_id.clone(),
            launch_template_name: t.name.clone(),
            version_number: v.version,
            version_description: v.description.clone(),
            create_time: v.create_time.clone(),
            created_by: v.created_by.clone(),
            default_version: v.version == t.default_version,
            launch_template_data: v.data.clone(),
        }
    }

    /// `CreateLaunchTemplate`: the template and its version 1 (the default).
    pub fn create_launch_template(
        &mut self,
        caller: &Caller,
        req: CreateLaunchTemplateRequest,
    ) -> Result<LaunchTemplateResult> {
        check_name(&req.launch_template_name)?;
        description(&req.version_description)?;
        check_data(&req.launch_template_data)?;
        let tags = super::images::tags_for(&req.tag_specifications, "launch-template")?;
        let created = now();
        // `ClientToken`: the template's id comes from it, so a repeat finds
        // what the first request made.
        let template_id = match &req.client_token {
            Some(token) => super::client_token_id(IdKind::LaunchTemplate, caller, token)?,
            None => ids::new_id(IdKind::LaunchTemplate),
        };
        let t = LaunchTemplateState {
            launch_template_id: template_id,
            region: caller.region.clone(),
            owner_id: caller.account.to_string(),
            name: req.launch_template_name.clone(),
            create_time: created.clone(),
            created_by: format!("arn:aws:iam::{}:root", caller.account),
            default_version: 1,
            latest_version: 1,
        };
        let v = LaunchTemplateVersionState {
            launch_template_id: t.launch_template_id.clone(),
            version: 1,
            description: req.version_description.clone(),
            create_time: created,
            created_by: t.created_by.clone(),
            data: data_json(&req.launch_template_data),
        };
        let token = req.client_token.as_deref();
        let made = self.store.write(|db| -> Result<Option<LaunchTemplateState>> {
            // A repeated token: what the first request made, when it asked the same.
            if let (Some(token), Some(made)) = (token, db.launch_template(&t.launch_template_id)?) {
                let first = db.launch_template_versions(&made.launch_template_id)?;
                let same = made.owner_id == t.owner_id
                    && made.name == t.name
                    && first.iter().any(|x| x.version == 1 && x.data == v.data);
                return if same {
                    Ok(Some(made))
                } else {
                    Err(super::idempotent_mismatch(token))
                };
            }
            // Checked inside the transaction: two creates of one name race here.
            if db
                .launch_templates_of(&t.region, &t.owner_id)?
                .iter()
                .any(|x| x.name == t.name)
            {
                return Err(Error::new(
                    ErrorCode::InvalidLaunchTemplateNameAlreadyExists,
                    format!(
                        "Launch template name already in use: '{}'; choose another name or add a version to it",
                        t.name
                    ),
                ));
            }
            db.put_launch_template(&t)?;
            db.put_launch_template_version(&v)?;
            for (k, val) in &tags {
                db.put_tag(&t.launch_template_id, k, val)?;
            }
            Ok(None)
        })?;
        Ok(LaunchTemplateResult {
            launch_template: self.template_shown(made.as_ref().unwrap_or(&t))?,
        })
    }

    /// `CreateLaunchTemplateVersion`: the next number; with `SourceVersion`,
    /// that version's data with the given members on top.
    pub fn create_launch_template_version(
        &mut self,
        caller: &Caller,
        req: CreateLaunchTemplateVersionRequest,
    ) -> Result<CreateLaunchTemplateVersionResult> {
        let t = self.find_template(
            caller,
            req.launch_template_id.as_deref(),
            req.launch_template_name.as_deref(),
        )?;
        description(&req.version_description)?;
        check_data(&req.launch_template_data)?;
        let mut data = match &req.source_version {
            Some(s) => self.find_version(&t, s)?.data,
            None => json!({}),
        };
        if let (Some(base), Value::Object(given)) =
            (data.as_object_mut(), data_json(&req.launch_template_data))
        {
            base.extend(given);
        }
        let id = t.launch_template_id.clone();
        let created_by = format!("arn:aws:iam::{}:root", caller.account);
        let description = req.version_description.clone();
        // `ClientToken`: the parameters' fingerprint, to tell a repeat
        // (the version the first request made) from a mismatch.
        let token = match &req.client_token {
            Some(token) => {
                super::client_token_id(IdKind::LaunchTemplate, caller, token)?;
                Some(token.clone())
            }
            None => None,
        };
        let fingerprint = json!({
            "LaunchTemplateId": id,
            "SourceVersion": req.source_version,
            "VersionDescription": description,
            "LaunchTemplateData": data,
        })
        .to_string();
        let (t, v) = self.store.write(|db| -> Result<_> {
            if let Some(token) = &token {
                let first = db.client_token(
                    &caller.account,
                    &caller.region,
                    "CreateLaunchTemplateVersion",
                    token,
                )?;
                if let Some((made, print)) = first {
                    let version = made
                        .rsplit_once(':')
                        .and_then(|(_, n)| n.parse::<i64>().ok());
                    let existing = db
                        .launch_template_versions(&id)?
                        .into_iter()
                        .find(|x| Some(x.version) == version);
                    match existing {
                        Some(v) if print == fingerprint => {
                            let t = db.launch_template(&id)?.ok_or_else(|| id_not_found(&id))?;
                            return Ok((t, v));
                        }
                        _ if print != fingerprint => {
                            return Err(super::idempotent_mismatch(token));
                        }
                        // The version is gone (deleted): a new one.
                        _ => {}
                    }
                }
            }
            // Numbered inside the transaction: concurrent versions queue.
            let mut t = db.launch_template(&id)?.ok_or_else(|| id_not_found(&id))?;
            t.latest_version += 1;
            let v = LaunchTemplateVersionState {
                launch_template_id: id.clone(),
                version: t.latest_version,
                description,
                create_time: now(),
                created_by,
                data,
            };
            db.put_launch_template(&t)?;
            db.put_launch_template_version(&v)?;
            if let Some(token) = &token {
                db.put_client_token(
                    &caller.account,
                    &caller.region,
                    "CreateLaunchTemplateVersion",
                    token,
                    &format!("{id}:{}", v.version),
                    &fingerprint,
                )?;
            }
            Ok((t, v))
        })?;
        Ok(CreateLaunchTemplateVersionResult {
            launch_template_version: Self::version_shown(&t, &v),
        })
    }

    /// `DescribeLaunchTemplates`.
    pub fn describe_launch_templates(
        &mut self,
        caller: &Caller,
        req: DescribeLaunchTemplatesRequest,
    ) -> Result<DescribeLaunchTemplatesResult> {
        let paging = Paging::of(req.max_results, &req.next_token);
        for id in &req.launch_template_ids {
            check_template_id(id)?;
        }
        filter::check_names(&req.filters, TEMPLATE_FILTERS)?;
        let all = self
            .store
            .read(|db| db.launch_templates_of(&caller.region, &caller.account))?;
        for id in &req.launch_template_ids {
            if !all.iter().any(|t| &t.launch_template_id == id) {
                return Err(id_not_found(id));
            }
        }
        for name in &req.launch_template_names {
            if !all.iter().any(|t| &t.name == name) {
                return Err(name_not_found(name));
            }
        }
        let mut out = Vec::new();
        for t in all {
            if !req.launch_template_ids.is_empty()
                && !req.launch_template_ids.contains(&t.launch_template_id)
            {
                continue;
            }
            if !req.launch_template_names.is_empty() && !req.launch_template_names.contains(&t.name)
            {
                continue;
            }
            let tags = self.store.read(|db| db.tags_of(&t.launch_template_id))?;
            let keep = filter::matches(&req.filters, |name| match name {
                "create-time" => vec![t.create_time.clone()],
                "launch-template-name" => vec![t.name.clone()],
                n => filter::tag_values(&tags, n).unwrap_or_default(),
            });
            if keep {
                out.push(self.template_shown(&t)?);
            }
        }
        let (launch_templates, next_token) = super::paging::page(out, &paging, 1, 200)?;
        Ok(DescribeLaunchTemplatesResult {
            launch_templates,
            next_token,
        })
    }

    /// `DescribeLaunchTemplateVersions`: newest first.
    pub fn describe_launch_template_versions(
        &mut self,
        caller: &Caller,
        req: DescribeLaunchTemplateVersionsRequest,
    ) -> Result<DescribeLaunchTemplateVersionsResult> {
        let paging = Paging::of(req.max_results, &req.next_token);
        filter::check_names(&req.filters, VERSION_FILTERS)?;
        let templates = if req.launch_template_id.is_none() && req.launch_template_name.is_none() {
            // EC2 allows this only for $Latest / $Default across templates.
            if req.versions.is_empty()
                || req
                    .versions
                    .iter()
                    .any(|v| v != "$Latest" && v != "$Default")
            {
                return Err(Error::missing("LaunchTemplateId or LaunchTemplateName"));
            }
            self.store
                .read(|db| db.launch_templates_of(&caller.region, &caller.account))?
        } else {
            vec![self.find_template(
                caller,
                req.launch_template_id.as_deref(),
                req.launch_template_name.as_deref(),
            )?]
        };
        let bound = |t: &LaunchTemplateState, b: &Option<String>| -> Result<Option<i64>> {
            b.as_deref()
                .map(|s| match s {
                    "$Latest" => Ok(t.latest_version),
                    "$Default" => Ok(t.default_version),
                    n => n.parse::<i64>().map_err(|_| {
                        Error::invalid_value(format!("Invalid version bound '{n}': use a number"))
                    }),
                })
                .transpose()
        };
        let mut out = Vec::new();
        for t in &templates {
            let (min, max) = (bound(t, &req.min_version)?, bound(t, &req.max_version)?);
            let mut wanted: Vec<i64> = Vec::new();
            for v in &req.versions {
                wanted.push(match v.as_str() {
                    "$Latest" => t.latest_version,
                    "$Default" => t.default_version,
                    n => n.parse::<i64>().map_err(|_| version_not_found(t, n))?,
                });
            }
            let versions = self
                .store
                .read(|db| db.launch_template_versions(&t.launch_template_id))?;
            for w in &wanted {
                if !versions.iter().any(|v| v.version == *w) {
                    return Err(version_not_found(t, &w.to_string()));
                }
            }
            for v in versions.iter().rev() {
                if !wanted.is_empty() && !wanted.contains(&v.version) {
                    continue;
                }
                if min.is_some_and(|m| v.version < m) || max.is_some_and(|m| v.version > m) {
                    continue;
                }
                let s = |k: &str| v.data.get(k).and_then(Value::as_str).map(String::from);
                let keep = filter::matches(&req.filters, |name| match name {
                    "create-time" => vec![v.create_time.clone()],
                    "ebs-optimized" => vec![v
                        .data
                        .get("EbsOptimized")
                        .and_then(Value::as_bool)
                        .unwrap_or(false)
                        .to_string()],
                    "image-id" => s("ImageId").into_iter().collect(),
                    "instance-type" => s("InstanceType").into_iter().collect(),
                    "is-default-version" => vec![(v.version == t.default_version).to_string()],
                    "kernel-id" => s("KernelId").into_iter().collect(),
                    "ram-disk-id" => s("RamDiskId").into_iter().collect(),
                    _ => Vec::new(),
                });
                if keep {
                    out.push(Self::version_shown(t, v));
                }
            }
        }
        let (launch_template_versions, next_token) = super::paging::page(out, &paging, 1, 200)?;
        Ok(DescribeLaunchTemplateVersionsResult {
            launch_template_versions,
            next_token,
        })
    }

    /// `ModifyLaunchTemplate`: which version is the default.
    pub fn modify_launch_template(
        &mut self,
        caller: &Caller,
        req: ModifyLaunchTemplateRequest,
    ) -> Result<LaunchTemplateResult> {
        let mut t = self.find_template(
            caller,
            req.launch_template_id.as_deref(),
            req.launch_template_name.as_deref(),
        )?;
        if let Some(d) = &req.default_version {
            let v = self.find_version(&t, d)?;
            let (id, n) = (t.launch_template_id.clone(), v.version);
            t = self.store.write(|db| -> Result<_> {
                let mut t = db.launch_template(&id)?.ok_or_else(|| id_not_found(&id))?;
                t.default_version = n;
                db.put_launch_template(&t)?;
                Ok(t)
            })?;
        }
        Ok(LaunchTemplateResult {
            launch_template: self.template_shown(&t)?,
        })
    }

    /// `DeleteLaunchTemplate`: the template and every version.
    pub fn delete_launch_template(
        &mut self,
        caller: &Caller,
        req: DeleteLaunchTemplateRequest,
    ) -> Result<LaunchTemplateResult> {
        let t = self.find_template(
            caller,
            req.launch_template_id.as_deref(),
            req.launch_template_name.as_deref(),
        )?;
        let shown = self.template_shown(&t)?;
        self.store
            .write(|db| db.delete_launch_template(&t.launch_template_id))?;
        Ok(LaunchTemplateResult {
            launch_template: shown,
        })
    }

    /// `DeleteLaunchTemplateVersions`: each version deleted or said why
    /// not; never the default one.
    pub fn delete_launch_template_versions(
        &mut self,
        caller: &Caller,
        req: DeleteLaunchTemplateVersionsRequest,
    ) -> Result<DeleteLaunchTemplateVersionsResult> {
        let t = self.find_template(
            caller,
            req.launch_template_id.as_deref(),
            req.launch_template_name.as_deref(),
        )?;
        if req.versions.is_empty() {
            return Err(Error::missing("LaunchTemplateVersion"));
        }
        if req.versions.len() > 200 {
            return Err(Error::invalid_value(
                "At most 200 versions can be deleted in one request; delete the launch template to delete them all",
            ));
        }
        let mut ok = Vec::new();
        let mut failed = Vec::new();
        let id = t.launch_template_id.clone();
        self.store.write(|db| -> Result<()> {
            let t = db.launch_template(&id)?.ok_or_else(|| id_not_found(&id))?;
            for v in &req.versions {
                let fail = |n: i64, code: &str, message: String| UndeletedVersion {
                    launch_template_id: t.launch_template_id.clone(),
                    launch_template_name: t.name.clone(),
                    version_number: n,
                    response_error: ResponseError {
                        code: code.into(),
                        message,
                    },
                };
                let Ok(n) = v.parse::<i64>() else {
                    failed.push(fail(
                        0,
                        "launchTemplateVersionDoesNotExist",
                        format!("'{v}' is not a version number"),
                    ));
                    continue;
                };
                if n == t.default_version {
                    failed.push(fail(
                        n,
                        "unexpectedError",
                        format!(
                            "Cannot delete the default version {n} of {}; make another version the default first, or delete the launch template",
                            t.launch_template_id
                        ),
                    ));
                } else if db.delete_launch_template_version(&t.launch_template_id, n)? {
                    ok.push(DeletedVersion {
                        launch_template_id: t.launch_template_id.clone(),
                        launch_template_name: t.name.clone(),
                        version_number: n,
                    });
                } else {
                    failed.push(fail(
                        n,
                        "launchTemplateVersionDoesNotExist",
                        format!("Version {n} of {} does not exist", t.launch_template_id),
                    ));
                }
            }
            Ok(())
        })?;
        Ok(DeleteLaunchTemplateVersionsResult {
            successfully_deleted_launch_template_versions: ok,
            unsuccessfully_deleted_launch_template_versions: failed,
        })
    }

    /// The launch-template step of RunInstances: a request (botocore's
    /// member names) with `LaunchTemplate` (`spec`) becomes the template
    /// version's data with the request's own members on top, its instances
    /// tagged with the template's id and version.
    pub fn apply_launch_template(
        &mut self,
        caller: &Caller,
        spec: &LaunchTemplateSpecification,
        request: &Value,
    ) -> Result<Value> {
        let t = self.find_template(
            caller,
            spec.launch_template_id.as_deref(),
            spec.launch_template_name.as_deref(),
        )?;
        let v = self.find_version(&t, spec.version.as_deref().unwrap_or("$Default"))?;
        let mut merged = v.data.as_object().cloned().unwrap_or_default();
        for (k, val) in request.as_object().into_iter().flatten() {
            if k != "LaunchTemplate" {
                merged.insert(k.clone(), val.clone());
            }
        }
        // The instances say which template and version made them.
        let mut specs: Vec<Value> = merged
            .get("TagSpecifications")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let marks = [
            json!({"Key": TEMPLATE_ID_TAG, "Value": t.launch_template_id}),
            json!({"Key": TEMPLATE_VERSION_TAG, "Value": v.version.to_string()}),
        ];
        match specs
            .iter_mut()
            .find(|s| s.get("ResourceType").and_then(Value::as_str) == Some("instance"))
        {
            Some(s) => {
                let tags = s.as_object_mut().expect("a tag specification is an object");
                let list = tags.entry("Tags").or_insert_with(|| json!([]));
                if let Some(a) = list.as_array_mut() {
                    a.extend(marks);
                }
            }
            None => specs.push(json!({"ResourceType": "instance", "Tags": marks})),
        }
        merged.insert("TagSpecifications".into(), Value::Array(specs));
        Ok(Value::Object(merged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_ec2() {
        assert!(check_name("web-fleet_(v1)/a.b").is_ok());
        for bad in ["ab", "has space", &"x".repeat(129)] {
            assert_eq!(
                check_name(bad).unwrap_err().code(),
                ErrorCode::InvalidLaunchTemplateNameMalformed
            );
        }
    }

    #[test]
    fn data_is_checked_for_syntax_only() {
        let data: RequestLaunchTemplateData = crate::api::request(&json!({
            "ImageId": "ami-0123456789abcdef0",
            "InstanceType": "t3.micro",
            "UserData": "IyEvYmluL3NoCg==",
        }))
        .unwrap();
        // A well-formed id that exists nowhere is fine until launch.
        assert!(check_data(&data).is_ok());
        let bad = |v: Value| check_data(&crate::api::request(&v).unwrap()).unwrap_err();
        assert_eq!(
            bad(json!({"InstanceType": "t9.huge"})).code(),
            ErrorCode::InvalidParameterValue
        );
        assert_eq!(
            bad(json!({"ImageId": "ami-nope"})).code(),
            ErrorCode::InvalidAmiIdMalformed
        );
        assert_eq!(
            bad(json!({"UserData": "%%%"})).code(),
            ErrorCode::InvalidParameterValue
        );
        let e = crate::api::request::<RequestLaunchTemplateData>(&json!({"Monitoring": {}}))
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::UnknownParameter);
        let e = crate::api::request::<RequestLaunchTemplateData>(&json!({
            "BlockDeviceMappings": [{"DeviceName": "/dev/sdf", "Ebs": {"KmsKeyId": "k"}}]
        }))
        .unwrap_err();
        assert_eq!(e.code(), ErrorCode::UnknownParameter);
        assert!(e.message().contains("KmsKeyId"), "{}", e.message());
    }
}
