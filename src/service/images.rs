//! AMI operations: describe, import, register, deregister, copy, attributes,
//! and fetching an AMI's data into the blob store.
//!
//! # Rooms
//!
//! - `describe`: `DescribeImages` and the AMI's shape;
//! - `import`: `ImportImage`, `RegisterImage`, fetching an AMI's data;
//! - `copy`: `CopyImage`, `DeregisterImage`;
//! - `attributes`: launch permissions and description.
//!
//! Here: who may see or launch an AMI, name rules, tags from tag
//! specifications, and the lookups every room uses.

use super::filter;
use super::shapes::*;
use super::{
    check_image_id, check_snapshot_id, image_not_found, now, snapshot_not_found, Caller, Error,
    ErrorCode, Result, Service,
};
use crate::domain::{
    AccountId, Architecture, BootMode, ImageStateName, RootDeviceType, SnapshotStateName,
};
use crate::ids::{self, IdKind};
use crate::store::{BlockDeviceMapping, Db, EbsBlockDevice, ImageState, SnapshotState, SourceSpec};
use serde::{Deserialize, Serialize};

mod attributes;
mod copy;
mod describe;
mod import;

pub use attributes::{
    AttributeValue, DescribeImageAttributeRequest, ImageAttribute, ImageAttributeRequest,
    LaunchPermission, LaunchPermissionModifications, ModifyImageAttributeRequest,
    ResetImageAttributeRequest,
};
pub use copy::{
    CopyImageRequest, CopyImageResult, DeleteSnapshotResult, DeregisterImageRequest,
    DeregisterImageResult,
};
pub use describe::{DescribeImagesRequest, DescribeImagesResult, Image};
pub use import::{
    FetchedDisk, ImportImageRequest, ImportImageResult, RegisterImageRequest, RegisterImageResult,
    SnapshotDetail,
};

/// Whether `caller` may see (and launch) `image`: own, public or shared.
pub(crate) fn can_launch(
    db: &Db,
    caller: &Caller,
    image: &ImageState,
) -> crate::store::Result<bool> {
    Ok(image.owner_id == caller.account
        || image.public
        || db
            .launch_users(&image.image_id)?
            .iter()
            .any(|u| *u == caller.account))
}

pub(super) fn check_name(name: &str) -> Result<()> {
    let ok = (3..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorCode::InvalidAmiNameMalformed,
            format!(
                "AMI name '{name}' is invalid: use 3 to 128 letters, digits and ( ) [ ] space . / - ' @ _"
            ),
        ))
    }
}

pub(super) fn check_unique_name(db: &Db, caller: &Caller, name: &str) -> Result<()> {
    if let Some(other) = db
        .images_in_region(&caller.region)?
        .into_iter()
        .find(|i| i.owner_id == caller.account && i.name == name)
    {
        return Err(Error::new(
            ErrorCode::InvalidAmiNameDuplicate,
            format!(
                "AMI name {name} is already in use by AMI {}",
                other.image_id
            ),
        ));
    }
    Ok(())
}

fn check_enum(what: &str, value: &str, allowed: &[&str]) -> Result<()> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(Error::invalid_value(format!(
            "Value ({value}) for parameter {what} is invalid; use one of {}",
            allowed.join(", ")
        )))
    }
}

/// Tags from tag specifications for one resource type.
pub(crate) fn tags_for(
    specs: &[TagSpecification],
    resource_type: &str,
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for s in specs {
        if s.resource_type == resource_type {
            for t in &s.tags {
                out.push((t.key.clone(), t.value.clone().unwrap_or_default()));
            }
        }
    }
    Ok(out)
}

impl Service {
    /// Look up an AMI the caller owns in the caller's region.
    fn owned_image(&mut self, caller: &Caller, image_id: &str) -> Result<ImageState> {
        check_image_id(image_id)?;
        self.store.read(|db| -> Result<ImageState> {
            let image = db
                .image(image_id)?
                .filter(|i| i.region == caller.region)
                .ok_or_else(|| image_not_found(&[image_id.to_string()]))?;
            if image.owner_id != caller.account {
                if can_launch(db, caller, &image)? {
                    return Err(Error::new(
                        ErrorCode::AuthFailure,
                        format!(
                            "Not authorized for image {image_id}: account {} does not own it",
                            caller.account
                        ),
                    ));
                }
                return Err(image_not_found(&[image_id.to_string()]));
            }
            Ok(image)
        })
    }

    /// Look up an AMI the caller may launch, in the caller's region.
    pub fn launchable_image(&mut self, caller: &Caller, image_id: &str) -> Result<ImageState> {
        check_image_id(image_id)?;
        self.store.read(|db| -> Result<ImageState> {
            let image = db
                .image(image_id)?
                .filter(|i| i.region == caller.region)
                .ok_or_else(|| image_not_found(&[image_id.to_string()]))?;
            if !can_launch(db, caller, &image)? {
                return Err(image_not_found(&[image_id.to_string()]));
            }
            Ok(image)
        })
    }
}
