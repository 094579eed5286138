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
//!
//! Rooms: this file holds what they share (finding a template and a
//! version, how they are shown, id checks); `data` keeps a version's
//! `LaunchTemplateData` and its syntax checks, `create` makes templates and
//! versions, `describe` lists them, `modify_delete` changes the default and
//! deletes, and `apply` is RunInstances' launch-template step.

use super::paging::Paging;
use super::shapes::{Filter, Tag, TagSpecification};
use super::volumes::check_device_name;
use super::{filter, now, Caller, Error, ErrorCode, Result, Service};
use crate::ids::{self, IdKind};
use crate::store::{LaunchTemplateState, LaunchTemplateVersionState};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

mod apply;
mod create;
mod data;
mod describe;
mod modify_delete;

pub use apply::{LaunchTemplateSpecification, TEMPLATE_ID_TAG, TEMPLATE_VERSION_TAG};
pub use create::{
    CreateLaunchTemplateRequest, CreateLaunchTemplateVersionRequest,
    CreateLaunchTemplateVersionResult,
};
use data::{check_data, data_json};
pub use data::{
    LaunchTemplateBlockDeviceMappingRequest, LaunchTemplateEbsBlockDeviceRequest,
    LaunchTemplateHibernationOptionsRequest, LaunchTemplateTagSpecificationRequest,
    RequestLaunchTemplateData,
};
pub use describe::{
    DescribeLaunchTemplateVersionsRequest, DescribeLaunchTemplateVersionsResult,
    DescribeLaunchTemplatesRequest, DescribeLaunchTemplatesResult,
};
pub use modify_delete::{
    DeleteLaunchTemplateRequest, DeleteLaunchTemplateVersionsRequest,
    DeleteLaunchTemplateVersionsResult, DeletedVersion, ModifyLaunchTemplateRequest, ResponseError,
    UndeletedVersion,
};

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
}
