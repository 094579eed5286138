//! `DescribeSnapshotAttribute`, `ModifySnapshotAttribute` and
//! `ResetSnapshotAttribute`: who may create volumes from a snapshot
//! (`createVolumePermission`: account ids, or the group `all`), and its
//! product codes (always none: amirun has no marketplace). Ansible's
//! `ec2_snapshot_info` and the SDKs' snapshot sharing call these. An account
//! a snapshot is shared with sees it in DescribeSnapshots
//! (`RestorableByUserIds`), as on EC2.

use super::{check_snapshot_id, snapshot_not_found, Caller, Error, ErrorCode, Result, Service};
use crate::domain::{AccountId, SnapshotStateName};
use crate::store::SnapshotState;
use serde::{Deserialize, Serialize};

/// `CreateVolumePermission`: one account, or `Group=all`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct CreateVolumePermission {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// `CreateVolumePermissionModifications`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct CreateVolumePermissionModifications {
    #[serde(default)]
    pub add: Vec<CreateVolumePermission>,
    #[serde(default)]
    pub remove: Vec<CreateVolumePermission>,
}

/// `DescribeSnapshotAttribute` / `ResetSnapshotAttribute` input.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct SnapshotAttributeRequest {
    pub attribute: String,
    pub snapshot_id: String,
}

/// `ModifySnapshotAttribute` input: the structure, or `OperationType` with
/// `UserId.N` / `UserGroup.N`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ModifySnapshotAttributeRequest {
    pub snapshot_id: String,
    #[serde(default)]
    pub attribute: Option<String>,
    #[serde(default)]
    pub create_volume_permission: Option<CreateVolumePermissionModifications>,
    #[serde(default)]
    pub group_names: Vec<String>,
    #[serde(default)]
    pub operation_type: Option<String>,
    #[serde(default)]
    pub user_ids: Vec<String>,
}

/// `DescribeSnapshotAttribute` output: the snapshot id and the one attribute.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeSnapshotAttributeResult {
    pub snapshot_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create_volume_permissions: Option<Vec<CreateVolumePermission>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product_codes: Option<Vec<serde_json::Value>>,
}

/// The stored grantee of a permission: an account id, or `all`.
fn grantee(p: &CreateVolumePermission) -> Result<String> {
    match (&p.user_id, &p.group) {
        (Some(u), None) if AccountId::is_valid(u) => Ok(u.clone()),
        (None, Some(g)) if g == "all" => Ok("all".into()),
        (Some(u), None) => Err(Error::invalid_value(format!(
            "Value ({u}) for parameter userId is invalid. Expected a 12-digit account id"
        ))),
        (None, Some(g)) => Err(Error::invalid_value(format!(
            "Value ({g}) for parameter group is invalid. The only group is 'all'"
        ))),
        _ => Err(Error::invalid_value(
            "A createVolumePermission names either a UserId or Group=all",
        )),
    }
}

fn shown(grantee: &str) -> CreateVolumePermission {
    if grantee == "all" {
        CreateVolumePermission {
            user_id: None,
            group: Some("all".into()),
        }
    } else {
        CreateVolumePermission {
            user_id: Some(grantee.to_string()),
            group: None,
        }
    }
}

fn check_attribute(attribute: &str) -> Result<()> {
    match attribute {
        "createVolumePermission" | "productCodes" => Ok(()),
        other => Err(Error::invalid_value(format!(
            "Value ({other}) for parameter attribute is invalid. Use createVolumePermission or productCodes"
        ))),
    }
}

impl Service {
    /// The caller's own snapshot (not one being deleted), or EC2's errors.
    fn own_snapshot(&mut self, caller: &Caller, snapshot_id: &str) -> Result<SnapshotState> {
        check_snapshot_id(snapshot_id)?;
        let s = self
            .store
            .read(|db| db.snapshot(snapshot_id))?
            .filter(|s| s.region == caller.region && s.state != SnapshotStateName::Deleting)
            .ok_or_else(|| snapshot_not_found(snapshot_id))?;
        if s.owner_id != caller.account {
            let shared = self
                .store
                .read(|db| db.snapshot_volume_permissions(snapshot_id))?;
            if s.catalog_key.is_none() && !shared.iter().any(|g| g == "all" || *g == caller.account)
            {
                return Err(snapshot_not_found(snapshot_id));
            }
            return Err(Error::new(
                ErrorCode::UnauthorizedOperation,
                format!(
                    "Account {} does not own snapshot {snapshot_id}; only its owner can see or change its attributes",
                    caller.account
                ),
            ));
        }
        Ok(s)
    }

    /// `DescribeSnapshotAttribute`.
    pub fn describe_snapshot_attribute(
        &mut self,
        caller: &Caller,
        input: SnapshotAttributeRequest,
    ) -> Result<DescribeSnapshotAttributeResult> {
        check_attribute(&input.attribute)?;
        let s = self.own_snapshot(caller, &input.snapshot_id)?;
        let mut out = DescribeSnapshotAttributeResult {
            snapshot_id: s.snapshot_id.clone(),
            ..Default::default()
        };
        if input.attribute == "createVolumePermission" {
            let granted = self
                .store
                .read(|db| db.snapshot_volume_permissions(&s.snapshot_id))?;
            out.create_volume_permissions = Some(granted.iter().map(|g| shown(g)).collect());
        } else {
            out.product_codes = Some(Vec::new());
        }
        Ok(out)
    }

    /// `ModifySnapshotAttribute`: grant or withdraw createVolumePermission.
    pub fn modify_snapshot_attribute(
        &mut self,
        caller: &Caller,
        input: ModifySnapshotAttributeRequest,
    ) -> Result<()> {
        let attribute = input
            .attribute
            .clone()
            .unwrap_or_else(|| "createVolumePermission".into());
        check_attribute(&attribute)?;
        if attribute == "productCodes" {
            return Err(Error::new(
                ErrorCode::UnsupportedOperation,
                "The productCodes attribute of a snapshot cannot be modified",
            ));
        }
        let mut add = Vec::new();
        let mut remove = Vec::new();
        if let Some(m) = &input.create_volume_permission {
            add.extend(m.add.iter().map(grantee).collect::<Result<Vec<_>>>()?);
            remove.extend(m.remove.iter().map(grantee).collect::<Result<Vec<_>>>()?);
        }
        let listed: Vec<CreateVolumePermission> = input
            .user_ids
            .iter()
            .map(|u| CreateVolumePermission {
                user_id: Some(u.clone()),
                group: None,
            })
            .chain(input.group_names.iter().map(|g| CreateVolumePermission {
                user_id: None,
                group: Some(g.clone()),
            }))
            .collect();
        if !listed.is_empty() {
            let listed = listed.iter().map(grantee).collect::<Result<Vec<_>>>()?;
            match input.operation_type.as_deref() {
                Some("add") => add.extend(listed),
                Some("remove") => remove.extend(listed),
                Some(other) => {
                    return Err(Error::invalid_value(format!(
                        "Value ({other}) for parameter OperationType is invalid; use add or remove"
                    )))
                }
                // The structure already says what to do (as Packer sends it).
                None if input.create_volume_permission.is_some() => {}
                None => return Err(Error::missing("OperationType")),
            }
        }
        if add.is_empty() && remove.is_empty() {
            return Err(Error::missing("CreateVolumePermission"));
        }
        let s = self.own_snapshot(caller, &input.snapshot_id)?;
        let _lock = super::object_lock::lock(&self.paths, &s.snapshot_id)?;
        self.store.write(|db| -> Result<()> {
            for g in &add {
                db.set_snapshot_volume_permission(&s.snapshot_id, g, true)?;
            }
            for g in &remove {
                db.set_snapshot_volume_permission(&s.snapshot_id, g, false)?;
            }
            Ok(())
        })
    }

    /// `ResetSnapshotAttribute`: withdraw every createVolumePermission.
    pub fn reset_snapshot_attribute(
        &mut self,
        caller: &Caller,
        input: SnapshotAttributeRequest,
    ) -> Result<()> {
        check_attribute(&input.attribute)?;
        if input.attribute != "createVolumePermission" {
            return Err(Error::new(
                ErrorCode::UnsupportedOperation,
                "Only the createVolumePermission attribute of a snapshot can be reset",
            ));
        }
        let s = self.own_snapshot(caller, &input.snapshot_id)?;
        let _lock = super::object_lock::lock(&self.paths, &s.snapshot_id)?;
        self.store
            .write(|db| db.clear_snapshot_volume_permissions(&s.snapshot_id))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grantees_are_accounts_or_all() {
        let user = |u: &str| CreateVolumePermission {
            user_id: Some(u.into()),
            group: None,
        };
        assert_eq!(grantee(&user("111111111111")).unwrap(), "111111111111");
        assert!(grantee(&user("1111")).is_err());
        let all = CreateVolumePermission {
            user_id: None,
            group: Some("all".into()),
        };
        assert_eq!(grantee(&all).unwrap(), "all");
        assert_eq!(shown("all"), all);
        assert!(grantee(&CreateVolumePermission::default()).is_err());
    }
}
