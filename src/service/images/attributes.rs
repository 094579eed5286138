//! An AMI's attributes: launch permissions (accounts and the group `all`)
//! and description, described, modified and reset.

use super::*;

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

impl Service {
    /// `ModifyImageAttribute`: launch permissions (accounts, group `all`) and description.
    pub fn modify_image_attribute(
        &mut self,
        caller: &Caller,
        input: ModifyImageAttributeRequest,
    ) -> Result<()> {
        let mut image = self.owned_image(caller, &input.image_id)?;
        let mut add: Vec<LaunchPermission> = Vec::new();
        let mut remove: Vec<LaunchPermission> = Vec::new();
        if let Some(lp) = &input.launch_permission {
            add.extend(lp.add.iter().cloned());
            remove.extend(lp.remove.iter().cloned());
        }
        let attribute = input.attribute.clone().unwrap_or_else(|| {
            if input.description.is_some() {
                "description".into()
            } else {
                "launchPermission".into()
            }
        });
        match attribute.as_str() {
            "launchPermission" => {
                let listed: Vec<LaunchPermission> = input
                    .user_ids
                    .iter()
                    .map(|u| LaunchPermission {
                        user_id: Some(u.clone()),
                        group: None,
                    })
                    .chain(input.user_groups.iter().map(|g| LaunchPermission {
                        user_id: None,
                        group: Some(g.clone()),
                    }))
                    .collect();
                if !listed.is_empty() {
                    match input.operation_type.as_deref() {
                        Some("add") => add.extend(listed),
                        Some("remove") => remove.extend(listed),
                        Some(other) => {
                            return Err(Error::invalid_value(format!(
                                "Value ({other}) for parameter OperationType is invalid; use add or remove"
                            )))
                        }
                        // Packer's `ami_users` sends `LaunchPermission.Add.N.UserId`
                        // and the same ids as `UserId.N` without an OperationType:
                        // the structure already says what to do.
                        None if input.launch_permission.is_some() => {}
                        None => return Err(Error::missing("OperationType")),
                    }
                }
                if add.is_empty() && remove.is_empty() {
                    return Err(Error::missing("LaunchPermission"));
                }
                for p in add.iter().chain(remove.iter()) {
                    match (&p.user_id, &p.group) {
                        (Some(u), None) if AccountId::is_valid(u) => {}
                        (None, Some(g)) if g == "all" => {}
                        _ => {
                            return Err(Error::invalid_value(format!(
                                "Launch permission {p:?} must name a 12-digit UserId or Group=all"
                            )))
                        }
                    }
                }
                self.store.write(|db| -> Result<()> {
                    for p in &add {
                        match &p.user_id {
                            Some(u) => db.add_launch_user(&image.image_id, u)?,
                            None => image.public = true,
                        }
                    }
                    for p in &remove {
                        match &p.user_id {
                            Some(u) => db.remove_launch_user(&image.image_id, u)?,
                            None => image.public = false,
                        }
                    }
                    db.put_image(&image)?;
                    Ok(())
                })?;
                if self.is_remote_region(&caller.region) {
                    let users = |ps: &[LaunchPermission]| -> Vec<String> {
                        ps.iter().filter_map(|p| p.user_id.clone()).collect()
                    };
                    self.remote_share(caller, &image, &users(&add), &users(&remove))?;
                }
                Ok(())
            }
            "description" => {
                let d = input
                    .description
                    .map(|d| d.value)
                    .or(input.value)
                    .ok_or_else(|| Error::missing("Description"))?;
                image.description = Some(d);
                self.store.write(|db| db.put_image(&image))?;
                Ok(())
            }
            other => Err(Error::invalid_value(format!(
                "Attribute {other} cannot be modified; use launchPermission or description"
            ))),
        }
    }

    /// `DescribeImageAttribute`.
    pub fn describe_image_attribute(
        &mut self,
        caller: &Caller,
        input: DescribeImageAttributeRequest,
    ) -> Result<ImageAttribute> {
        let (image_id, attribute) = (input.image_id.as_str(), input.attribute.as_str());
        let image = self.owned_image(caller, image_id)?;
        let mut out = ImageAttribute {
            image_id: image_id.to_string(),
            ..Default::default()
        };
        match attribute {
            "launchPermission" => {
                let users = self.store.read(|db| db.launch_users(image_id))?;
                let mut perms: Vec<LaunchPermission> = users
                    .into_iter()
                    .map(|u| LaunchPermission { user_id: Some(u), group: None })
                    .collect();
                if image.public {
                    perms.insert(0, LaunchPermission { user_id: None, group: Some("all".into()) });
                }
                out.launch_permissions = Some(perms);
            }
            "description" => {
                out.description = Some(AttributeValue { value: image.description.unwrap_or_default() })
            }
            "bootMode" => {
                out.boot_mode = image.boot_mode.map(|b| AttributeValue {
                    value: b.to_string(),
                });
            }
            "blockDeviceMapping" => out.block_device_mappings = Some(image.block_device_mappings),
            "sriovNetSupport" => out.sriov_net_support = Some(AttributeValue { value: "simple".into() }),
            "productCodes" => out.product_codes = Some(Vec::new()),
            other => {
                return Err(Error::invalid_value(format!(
                    "Value ({other}) for parameter attribute is invalid; use launchPermission, description, bootMode, blockDeviceMapping, sriovNetSupport or productCodes"
                )))
            }
        }
        Ok(out)
    }

    /// `ResetImageAttribute`: only launchPermission can be reset (to private).
    pub fn reset_image_attribute(
        &mut self,
        caller: &Caller,
        input: ResetImageAttributeRequest,
    ) -> Result<()> {
        let (image_id, attribute) = (input.image_id.as_str(), input.attribute.as_str());
        let mut image = self.owned_image(caller, image_id)?;
        if attribute != "launchPermission" {
            return Err(Error::invalid_value(format!(
                "Value ({attribute}) for parameter attribute is invalid; only launchPermission can be reset"
            )));
        }
        image.public = false;
        let users = self.store.read(|db| db.launch_users(image_id))?;
        self.store.write(|db| -> Result<()> {
            db.clear_launch_users(image_id)?;
            db.put_image(&image)?;
            Ok(())
        })?;
        if self.is_remote_region(&caller.region) {
            self.remote_share(caller, &image, &[], &users)?;
        }
        Ok(())
    }
}
