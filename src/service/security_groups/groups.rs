//! Making and deleting groups: `CreateSecurityGroup` (with its one rule,
//! all traffic out) and `DeleteSecurityGroup` (not `default`, not while
//! an interface or another group's rule uses it).

use super::*;

/// `CreateSecurityGroup`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct CreateSecurityGroupRequest {
    pub description: String,
    pub group_name: String,
    #[serde(default)]
    pub vpc_id: Option<String>,
    #[serde(default)]
    pub tag_specifications: Vec<TagSpecification>,
}

/// `CreateSecurityGroup`'s result.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateSecurityGroupResult {
    pub group_id: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
    pub security_group_arn: String,
}

/// `DeleteSecurityGroup`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DeleteSecurityGroupRequest {
    #[serde(default)]
    pub group_id: Option<String>,
    #[serde(default)]
    pub group_name: Option<String>,
}

/// `DeleteSecurityGroup`'s result.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeleteSecurityGroupResult {
    pub r#return: bool,
    pub group_id: String,
}

impl Service {
    /// `CreateSecurityGroup`: a group in a VPC (by default the default VPC)
    /// that allows all traffic out and nothing in.
    pub fn create_security_group(
        &mut self,
        caller: &Caller,
        req: CreateSecurityGroupRequest,
    ) -> Result<CreateSecurityGroupResult> {
        let name = req.group_name.trim();
        if name.is_empty() || name.len() > 255 {
            return Err(Error::invalid_value(
                "Group name must be 1 to 255 characters",
            ));
        }
        if name.starts_with("sg-") {
            return Err(Error::invalid_value(format!(
                "Invalid value '{name}' for groupName. Group names may not be in the format sg-*."
            )));
        }
        if req.description.len() > 255 {
            return Err(Error::invalid_value(
                "Group description must be at most 255 characters",
            ));
        }
        let default_vpc = self.default_vpc(caller)?;
        self.store.write(|db| -> Result<CreateSecurityGroupResult> {
            // Packer 1.6 sends `VpcId=` (empty) for "the default VPC".
            let vpc = match req.vpc_id.as_ref().filter(|v| !v.is_empty()) {
                Some(id) => owned_vpc(db, caller, id)?,
                None => default_vpc.clone().ok_or_else(|| {
                    Error::new(ErrorCode::VpcIdNotSpecified, "No default VPC for this user")
                })?,
            };
            if db
                .security_groups_of_vpc(&vpc.vpc_id)?
                .iter()
                .any(|g| g.group_name == name)
            {
                return Err(Error::new(
                    ErrorCode::InvalidGroupDuplicate,
                    format!(
                        "The security group '{name}' already exists for VPC '{}'",
                        vpc.vpc_id
                    ),
                ));
            }
            let group = SecurityGroupState {
                group_id: ids::new_id(IdKind::SecurityGroup),
                vpc_id: vpc.vpc_id.clone(),
                region: caller.region.clone(),
                owner_id: caller.account.to_string(),
                group_name: name.to_string(),
                description: req.description.clone(),
            };
            db.insert_security_group(&group)?;
            db.insert_security_group_rule(&allow_all_egress(
                &group.group_id,
                ids::new_id(IdKind::SecurityGroupRule),
            ))?;
            put_tags(
                db,
                &req.tag_specifications,
                "security-group",
                &group.group_id,
            )?;
            Ok(CreateSecurityGroupResult {
                group_id: group.group_id.clone(),
                tags: tags_of(db, &group.group_id)?,
                security_group_arn: arn(&group),
            })
        })
    }

    /// `DeleteSecurityGroup`: not the `default` group, not while an interface
    /// is in it or another group's rule names it.
    pub fn delete_security_group(
        &mut self,
        caller: &Caller,
        req: DeleteSecurityGroupRequest,
    ) -> Result<DeleteSecurityGroupResult> {
        let default_vpc = self.default_vpc(caller)?;
        self.sweep_interfaces()?;
        self.store.write(|db| -> Result<DeleteSecurityGroupResult> {
            let g = target_group(
                db,
                caller,
                default_vpc.as_ref(),
                req.group_id.as_deref(),
                req.group_name.as_deref(),
            )?;
            if g.group_name == "default" {
                return Err(Error::new(
                    ErrorCode::CannotDelete,
                    format!(
                        "the specified group: \"{}\" name: \"default\" cannot be deleted by a user",
                        g.group_id
                    ),
                ));
            }
            let in_use = !db.network_interfaces_in_group(&g.group_id)?.is_empty();
            let referenced = db
                .rules_referencing(&g.group_id)?
                .iter()
                .any(|r| r.group_id != g.group_id);
            if in_use || referenced {
                return Err(Error::new(
                    ErrorCode::DependencyViolation,
                    format!("resource {} has a dependent object", g.group_id),
                ));
            }
            for r in db.security_group_rules(&g.group_id)? {
                for t in db.tags_of(&r.rule_id)? {
                    db.delete_tag(&r.rule_id, &t.key, None)?;
                }
            }
            for t in db.tags_of(&g.group_id)? {
                db.delete_tag(&g.group_id, &t.key, None)?;
            }
            db.delete_security_group(&g.group_id)?;
            Ok(DeleteSecurityGroupResult {
                r#return: true,
                group_id: g.group_id,
            })
        })
    }
}
