//! Tag operations on the caller's own resources: create, delete, describe.

use super::filter;
use super::shapes::*;
use super::{image_not_found, snapshot_not_found, Caller, Error, ErrorCode, Result, Service};
use crate::store::Db;
use serde::{Deserialize, Serialize};

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
    /// Page size, 5 to 1000 tags.
    #[serde(default)]
    pub max_results: Option<i64>,
    #[serde(default)]
    pub next_token: Option<String>,
}

/// What `DescribeTags` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeTagsResult {
    pub tags: Vec<TagDescription>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
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

const TAG_FILTERS: &[&str] = &["key", "value", "resource-id", "resource-type"];

/// EC2's resource type name for an id.
fn resource_type(id: &str) -> &'static str {
    if let Some(t) = super::vpc::resource_type(id) {
        return t;
    }
    match id.split('-').next() {
        Some("ami") => "image",
        Some("snap") => "snapshot",
        Some("i") => "instance",
        Some("vol") => "volume",
        Some("key") => "key-pair",
        Some("lt") => "launch-template",
        _ => "unknown",
    }
}

/// Check that the caller owns `id` in its region.
fn check_owned(db: &Db, caller: &Caller, id: &str) -> Result<()> {
    if super::vpc::resource_type(id).is_some() {
        return super::vpc::check_owned_resource(db, caller, id);
    }
    let well_formed = match resource_type(id) {
        "image" => crate::ids::is_well_formed(crate::ids::IdKind::Image, id),
        "snapshot" => crate::ids::is_well_formed(crate::ids::IdKind::Snapshot, id),
        "key-pair" => crate::ids::is_well_formed(crate::ids::IdKind::KeyPair, id),
        "instance" => crate::ids::is_well_formed(crate::ids::IdKind::Instance, id),
        "volume" => crate::ids::is_well_formed(crate::ids::IdKind::Volume, id),
        "launch-template" => crate::ids::is_well_formed(crate::ids::IdKind::LaunchTemplate, id),
        _ => true,
    };
    if !well_formed {
        return Err(Error::new(
            ErrorCode::InvalidId,
            format!("The ID '{id}' is not valid"),
        ));
    }
    if resource_type(id) == "key-pair" {
        return if db
            .key_pairs(&caller.region, &caller.account)?
            .iter()
            .any(|k| k.key_pair_id == id)
        {
            Ok(())
        } else {
            Err(super::keypairs::key_not_found(id))
        };
    }
    let owned = match resource_type(id) {
        "image" => db
            .image(id)?
            .is_some_and(|i| i.region == caller.region && i.owner_id == caller.account),
        "snapshot" => db
            .snapshot(id)?
            .is_some_and(|s| s.region == caller.region && s.owner_id == caller.account),
        "instance" => {
            db.instance(id)?
                .is_some_and(|i| i.region == caller.region && i.owner_id == caller.account)
                // An instance of a region on a remote backend.
                || db.remote_instance(id)?.is_some_and(|i| {
                    i.region == caller.region && i.owner_id == caller.account
                })
        }
        "volume" => db
            .volume(id)?
            .is_some_and(|v| v.region == caller.region && v.owner_id == caller.account),
        "launch-template" => db
            .launch_template(id)?
            .is_some_and(|t| t.region == caller.region && t.owner_id == caller.account),
        _ => {
            return Err(Error::new(
                ErrorCode::InvalidId,
                format!("The ID '{id}' is not valid for tagging"),
            ))
        }
    };
    match resource_type(id) {
        _ if owned => Ok(()),
        "image" => Err(image_not_found(&[id.to_string()])),
        "instance" => Err(Error::new(
            ErrorCode::InvalidInstanceIdNotFound,
            format!("The instance ID '{id}' does not exist"),
        )),
        "volume" => Err(Error::new(
            ErrorCode::InvalidVolumeNotFound,
            format!("The volume '{id}' does not exist."),
        )),
        "launch-template" => Err(Error::new(
            ErrorCode::InvalidLaunchTemplateIdNotFound,
            format!("The specified launch template, with template ID {id}, does not exist."),
        )),
        _ => Err(snapshot_not_found(id)),
    }
}

impl Service {
    /// `CreateTags`: all resources get all tags, or nothing changes.
    pub fn create_tags(&mut self, caller: &Caller, input: CreateTagsRequest) -> Result<()> {
        let (resources, tags) = (&input.resources, &input.tags);
        if resources.is_empty() {
            return Err(Error::missing("resourceIdSet"));
        }
        if tags.is_empty() {
            return Err(Error::missing("Tag"));
        }
        for t in tags {
            if t.key.is_empty() || t.key.len() > 128 || t.key.starts_with("aws:") {
                return Err(Error::invalid_value(format!(
                    "Tag key '{}' must be 1 to 128 characters and not start with aws:",
                    t.key
                )));
            }
        }
        self.store.write(|db| -> Result<()> {
            for r in resources {
                check_owned(db, caller, r)?;
                for t in tags {
                    db.put_tag(r, &t.key, t.value.as_deref().unwrap_or(""))?;
                }
                if db.tags_of(r)?.len() > 50 {
                    return Err(Error::new(
                        ErrorCode::TagLimitExceeded,
                        format!("Resource {r} would have more than 50 tags"),
                    ));
                }
            }
            Ok(())
        })
    }

    /// `DeleteTags`: a tag given with a value is deleted only when the value matches.
    pub fn delete_tags(&mut self, caller: &Caller, input: DeleteTagsRequest) -> Result<()> {
        let (resources, tags) = (&input.resources, &input.tags);
        if resources.is_empty() {
            return Err(Error::missing("ResourceId"));
        }
        self.store.write(|db| -> Result<()> {
            for r in resources {
                check_owned(db, caller, r)?;
                if tags.is_empty() {
                    for t in db.tags_of(r)? {
                        db.delete_tag(r, &t.key, None)?;
                    }
                }
                for t in tags {
                    db.delete_tag(r, &t.key, t.value.as_deref())?;
                }
            }
            Ok(())
        })
    }

    /// `DescribeTags`: tags on the caller's own resources in its region.
    pub fn describe_tags(
        &mut self,
        caller: &Caller,
        input: DescribeTagsRequest,
    ) -> Result<DescribeTagsResult> {
        let filters = &input.filters;
        filter::check_names(filters, TAG_FILTERS)?;
        self.store.read(|db| -> Result<DescribeTagsResult> {
            let mut out = Vec::new();
            for t in db.all_tags()? {
                if check_owned(db, caller, &t.resource_id).is_err() {
                    continue;
                }
                let rtype = resource_type(&t.resource_id);
                let keep = filter::matches(filters, |name| match name {
                    "key" => vec![t.key.clone()],
                    "value" => vec![t.value.clone()],
                    "resource-id" => vec![t.resource_id.clone()],
                    "resource-type" => vec![rtype.to_string()],
                    _ => Vec::new(),
                });
                if keep {
                    out.push(TagDescription {
                        key: t.key,
                        resource_id: t.resource_id,
                        resource_type: rtype.into(),
                        value: t.value,
                    });
                }
            }
            let paging = super::paging::Paging::of(input.max_results, &input.next_token);
            let (tags, next_token) = super::paging::page(out, &paging, 5, 1000)?;
            Ok(DescribeTagsResult { tags, next_token })
        })
    }
}
