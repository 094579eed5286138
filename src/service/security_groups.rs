//! Security groups: EC2's stateful firewall per network interface, as
//! records. Each rule of a group is stored with one peer (an IPv4 block or
//! another group of the same VPC); `IpPermissions` are assembled from them
//! for display, as EC2 does. A change to a group's rules is handed to the
//! data plane at once for every running instance in the group
//! (`Service::apply_rules_of_groups`).
//!
//! Rule changes are one transaction each, all or nothing: a request whose
//! second permission is a duplicate adds none of them.
//!
//! Rooms: this file holds how groups and rules are found and shown;
//! `groups` makes and deletes groups, `rules` authorizes and revokes
//! rules, `describe` answers the two Describe actions.

use super::filter;
use super::paging::Paging;
use super::shapes::{Filter, Tag, TagSpecification};
use super::vpc::{owned_vpc, put_tags, tags_of, Block};
use super::{Caller, Error, ErrorCode, Result, Service};
use crate::ids::{self, IdKind};
use crate::store::vpc::{SecurityGroupRuleState, SecurityGroupState, VpcState};
use crate::store::Db;
use serde::{Deserialize, Serialize};

mod describe;
mod groups;
mod rules;

pub use describe::{
    DescribeSecurityGroupRulesRequest, DescribeSecurityGroupRulesResult,
    DescribeSecurityGroupsRequest, DescribeSecurityGroupsResult,
};
pub use groups::{
    CreateSecurityGroupRequest, CreateSecurityGroupResult, DeleteSecurityGroupRequest,
    DeleteSecurityGroupResult,
};
pub use rules::{
    AuthorizeSecurityGroupEgressRequest, AuthorizeSecurityGroupIngressRequest,
    AuthorizeSecurityGroupResult, RevokeSecurityGroupEgressRequest,
    RevokeSecurityGroupIngressRequest, RevokeSecurityGroupResult, RevokedSecurityGroupRule,
    SecurityGroupRulesRequest,
};

/// The rule every new group starts with: all traffic out.
pub(crate) fn allow_all_egress(group_id: &str, rule_id: String) -> SecurityGroupRuleState {
    SecurityGroupRuleState {
        rule_id,
        group_id: group_id.to_string(),
        is_egress: true,
        ip_protocol: "-1".into(),
        from_port: None,
        to_port: None,
        cidr_ipv4: Some("0.0.0.0/0".into()),
        referenced_group_id: None,
        description: None,
    }
}

// ----- shapes -----

/// One permission: a protocol and port range with its peers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct IpPermission {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_port: Option<i64>,
    #[serde(default)]
    pub ip_protocol: Option<String>,
    #[serde(default)]
    pub ip_ranges: Vec<IpRange>,
    #[serde(default)]
    pub ipv6_ranges: Vec<serde_json::Value>,
    #[serde(default)]
    pub prefix_list_ids: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_port: Option<i64>,
    #[serde(default)]
    pub user_id_group_pairs: Vec<UserIdGroupPair>,
}

/// An IPv4 peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct IpRange {
    #[serde(default)]
    pub cidr_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A group peer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct UserIdGroupPair {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_id: Option<String>,
}

/// A group as EC2 shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SecurityGroup {
    pub description: String,
    pub group_name: String,
    pub ip_permissions: Vec<IpPermission>,
    pub owner_id: String,
    pub group_id: String,
    pub ip_permissions_egress: Vec<IpPermission>,
    pub vpc_id: String,
    pub security_group_arn: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
}

/// A rule as `DescribeSecurityGroupRules` shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SecurityGroupRule {
    pub security_group_rule_id: String,
    pub group_id: String,
    pub group_owner_id: String,
    pub is_egress: bool,
    pub ip_protocol: String,
    pub from_port: i64,
    pub to_port: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cidr_ipv4: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub referenced_group_info: Option<ReferencedSecurityGroup>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub tags: Vec<Tag>,
    pub security_group_rule_arn: String,
}

/// The group a rule names as its peer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReferencedSecurityGroup {
    pub group_id: String,
    pub user_id: String,
}

// ----- helpers -----

fn check_group_id(id: &str) -> Result<()> {
    if ids::is_well_formed(IdKind::SecurityGroup, id) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorCode::InvalidGroupIdMalformed,
            format!("Invalid id: \"{id}\" (expecting \"sg-...\")"),
        ))
    }
}

/// `InvalidGroup.NotFound` for an id or name.
pub(crate) fn group_not_found(what: &str) -> Error {
    Error::new(
        ErrorCode::InvalidGroupNotFound,
        format!("The security group '{what}' does not exist"),
    )
}

/// The caller's group `id`, or EC2's error.
pub(crate) fn owned_group(db: &Db, caller: &Caller, id: &str) -> Result<SecurityGroupState> {
    check_group_id(id)?;
    db.security_group(id)?
        .filter(|g| g.region == caller.region && g.owner_id == caller.account)
        .ok_or_else(|| group_not_found(id))
}

/// The group named `name` in the VPC (by default the default VPC).
pub(crate) fn group_by_name(
    db: &Db,
    vpc: Option<&VpcState>,
    name: &str,
) -> Result<SecurityGroupState> {
    let Some(vpc) = vpc else {
        return Err(Error::new(
            ErrorCode::VpcIdNotSpecified,
            "No default VPC for this user. GroupName is only supported for EC2-Classic and default VPC.",
        ));
    };
    db.security_groups_of_vpc(&vpc.vpc_id)?
        .into_iter()
        .find(|g| g.group_name == name)
        .ok_or_else(|| {
            Error::new(
                ErrorCode::InvalidGroupNotFound,
                format!(
                    "The security group '{name}' does not exist in default VPC '{}'",
                    vpc.vpc_id
                ),
            )
        })
}

fn arn(g: &SecurityGroupState) -> String {
    format!(
        "arn:aws:ec2:{}:{}:security-group/{}",
        g.region, g.owner_id, g.group_id
    )
}

fn rule_arn(g: &SecurityGroupState, rule_id: &str) -> String {
    format!(
        "arn:aws:ec2:{}:{}:security-group-rule/{rule_id}",
        g.region, g.owner_id
    )
}

/// Permissions assembled from stored rules, as EC2 shows them (one per
/// protocol and port range, in the order first added).
fn permissions(rules: &[&SecurityGroupRuleState], owner: &str) -> Vec<IpPermission> {
    let mut out: Vec<IpPermission> = Vec::new();
    for r in rules {
        let i = match out.iter().position(|p| {
            p.ip_protocol.as_deref() == Some(r.ip_protocol.as_str())
                && p.from_port == r.from_port
                && p.to_port == r.to_port
        }) {
            Some(i) => i,
            None => {
                out.push(IpPermission {
                    ip_protocol: Some(r.ip_protocol.clone()),
                    from_port: r.from_port,
                    to_port: r.to_port,
                    ..Default::default()
                });
                out.len() - 1
            }
        };
        if let Some(c) = &r.cidr_ipv4 {
            out[i].ip_ranges.push(IpRange {
                cidr_ip: Some(c.clone()),
                description: r.description.clone(),
            });
        }
        if let Some(g) = &r.referenced_group_id {
            out[i].user_id_group_pairs.push(UserIdGroupPair {
                description: r.description.clone(),
                group_id: Some(g.clone()),
                user_id: Some(owner.to_string()),
                ..Default::default()
            });
        }
    }
    out
}

fn render_group(db: &Db, g: &SecurityGroupState) -> Result<SecurityGroup> {
    let rules = db.security_group_rules(&g.group_id)?;
    let ingress: Vec<_> = rules.iter().filter(|r| !r.is_egress).collect();
    let egress: Vec<_> = rules.iter().filter(|r| r.is_egress).collect();
    Ok(SecurityGroup {
        description: g.description.clone(),
        group_name: g.group_name.clone(),
        ip_permissions: permissions(&ingress, &g.owner_id),
        owner_id: g.owner_id.clone(),
        group_id: g.group_id.clone(),
        ip_permissions_egress: permissions(&egress, &g.owner_id),
        vpc_id: g.vpc_id.clone(),
        security_group_arn: arn(g),
        tags: tags_of(db, &g.group_id)?,
    })
}

fn render_rule(
    db: &Db,
    g: &SecurityGroupState,
    r: &SecurityGroupRuleState,
) -> Result<SecurityGroupRule> {
    Ok(SecurityGroupRule {
        security_group_rule_id: r.rule_id.clone(),
        group_id: g.group_id.clone(),
        group_owner_id: g.owner_id.clone(),
        is_egress: r.is_egress,
        ip_protocol: r.ip_protocol.clone(),
        from_port: r.from_port.unwrap_or(-1),
        to_port: r.to_port.unwrap_or(-1),
        cidr_ipv4: r.cidr_ipv4.clone(),
        referenced_group_info: r
            .referenced_group_id
            .as_ref()
            .map(|id| ReferencedSecurityGroup {
                group_id: id.clone(),
                user_id: g.owner_id.clone(),
            }),
        description: r.description.clone(),
        tags: tags_of(db, &r.rule_id)?,
        security_group_rule_arn: rule_arn(g, &r.rule_id),
    })
}

/// The group a rule request names: `GroupId`, or `GroupName` in the default VPC.
fn target_group(
    db: &Db,
    caller: &Caller,
    default_vpc: Option<&VpcState>,
    group_id: Option<&str>,
    group_name: Option<&str>,
) -> Result<SecurityGroupState> {
    match (group_id, group_name) {
        (Some(id), _) => owned_group(db, caller, id),
        (None, Some(name)) => group_by_name(db, default_vpc, name),
        (None, None) => Err(Error::missing("GroupId")),
    }
}
