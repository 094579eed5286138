//! Security groups: EC2's stateful firewall per network interface, as
//! records. Each rule of a group is stored with one peer (an IPv4 block or
//! another group of the same VPC); `IpPermissions` are assembled from them
//! for display, as EC2 does. A change to a group's rules is handed to the
//! data plane at once for every running instance in the group
//! (`Service::apply_rules_of_groups`).
//!
//! Rule changes are one transaction each, all or nothing: a request whose
//! second permission is a duplicate adds none of them.

use super::filter;
use super::paging::Paging;
use super::shapes::{Filter, Tag, TagSpecification};
use super::vpc::{owned_vpc, put_tags, tags_of, Block};
use super::{Caller, Error, ErrorCode, Result, Service};
use crate::ids::{self, IdKind};
use crate::store::vpc::{SecurityGroupRuleState, SecurityGroupState, VpcState};
use crate::store::Db;
use serde::{Deserialize, Serialize};

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

/// A revoked rule.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RevokedSecurityGroupRule {
    pub security_group_rule_id: String,
    pub group_id: String,
    pub is_egress: bool,
    pub ip_protocol: String,
    pub from_port: i64,
    pub to_port: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cidr_ipv4: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub referenced_group_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

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

/// `DescribeSecurityGroups`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DescribeSecurityGroupsRequest {
    #[serde(default)]
    pub group_ids: Vec<String>,
    #[serde(default)]
    pub group_names: Vec<String>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub max_results: Option<i64>,
    #[serde(default)]
    pub next_token: Option<String>,
}

/// `DescribeSecurityGroups`' result.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeSecurityGroupsResult {
    pub security_groups: Vec<SecurityGroup>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// `DescribeSecurityGroupRules`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DescribeSecurityGroupRulesRequest {
    #[serde(default)]
    pub security_group_rule_ids: Vec<String>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub max_results: Option<i64>,
    #[serde(default)]
    pub next_token: Option<String>,
}

/// `DescribeSecurityGroupRules`' result.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeSecurityGroupRulesResult {
    pub security_group_rules: Vec<SecurityGroupRule>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// `AuthorizeSecurityGroupIngress`/`Egress` and `RevokeSecurityGroupIngress`/`Egress`:
/// the permissions as `IpPermissions`, or (the legacy form Packer and old
/// scripts send) one permission in top-level members.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct SecurityGroupRulesRequest {
    #[serde(default)]
    pub group_id: Option<String>,
    #[serde(default)]
    pub group_name: Option<String>,
    #[serde(default)]
    pub ip_permissions: Vec<IpPermission>,
    #[serde(default)]
    pub cidr_ip: Option<String>,
    #[serde(default)]
    pub ip_protocol: Option<String>,
    #[serde(default)]
    pub from_port: Option<i64>,
    #[serde(default)]
    pub to_port: Option<i64>,
    #[serde(default)]
    pub source_security_group_name: Option<String>,
    #[serde(default)]
    pub source_security_group_owner_id: Option<String>,
    /// Revoke only.
    #[serde(default)]
    pub security_group_rule_ids: Vec<String>,
    /// Authorize only.
    #[serde(default)]
    pub tag_specifications: Vec<TagSpecification>,
}

/// The names botocore gives the four rule requests.
pub type AuthorizeSecurityGroupIngressRequest = SecurityGroupRulesRequest;
/// See [`SecurityGroupRulesRequest`].
pub type AuthorizeSecurityGroupEgressRequest = SecurityGroupRulesRequest;
/// See [`SecurityGroupRulesRequest`].
pub type RevokeSecurityGroupIngressRequest = SecurityGroupRulesRequest;
/// See [`SecurityGroupRulesRequest`].
pub type RevokeSecurityGroupEgressRequest = SecurityGroupRulesRequest;

/// `AuthorizeSecurityGroupIngress`/`Egress`' result.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AuthorizeSecurityGroupResult {
    pub r#return: bool,
    pub security_group_rules: Vec<SecurityGroupRule>,
}

/// `RevokeSecurityGroupIngress`/`Egress`' result.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RevokeSecurityGroupResult {
    pub r#return: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unknown_ip_permissions: Vec<IpPermission>,
    pub revoked_security_group_rules: Vec<RevokedSecurityGroupRule>,
}

const GROUP_FILTERS: &[&str] = &[
    "description",
    "egress.ip-permission.cidr",
    "egress.ip-permission.from-port",
    "egress.ip-permission.group-id",
    "egress.ip-permission.group-name",
    "egress.ip-permission.protocol",
    "egress.ip-permission.to-port",
    "egress.ip-permission.user-id",
    "group-id",
    "group-name",
    "ip-permission.cidr",
    "ip-permission.from-port",
    "ip-permission.group-id",
    "ip-permission.group-name",
    "ip-permission.protocol",
    "ip-permission.to-port",
    "ip-permission.user-id",
    "owner-id",
    "vpc-id",
    "tag-key",
];

const RULE_FILTERS: &[&str] = &["group-id", "security-group-rule-id", "tag-key"];

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

/// A protocol as stored (`tcp`, `udp`, `icmp`, `-1`), from what EC2 accepts.
fn protocol(p: &str) -> Result<String> {
    Ok(match p.to_ascii_lowercase().as_str() {
        "tcp" | "6" => "tcp",
        "udp" | "17" => "udp",
        "icmp" | "1" => "icmp",
        "-1" | "all" => "-1",
        other => {
            return Err(Error::invalid_value(format!(
            "Invalid value '{other}' for IP protocol. amirun supports tcp, udp, icmp and -1 (all)"
        )))
        }
    }
    .to_string())
}

/// The port range of a permission as stored.
fn ports(proto: &str, from: Option<i64>, to: Option<i64>) -> Result<(Option<i64>, Option<i64>)> {
    match proto {
        "-1" => Ok((None, None)),
        "icmp" => {
            let (t, c) = (from.unwrap_or(-1), to.unwrap_or(-1));
            if !(-1..=255).contains(&t) || !(-1..=255).contains(&c) {
                return Err(Error::invalid_value(format!(
                    "Invalid value '{t}' for ICMP type or '{c}' for ICMP code"
                )));
            }
            Ok((Some(t), Some(c)))
        }
        _ => match (from, to) {
            (Some(f), Some(t)) if (0..=65535).contains(&f) && (0..=65535).contains(&t) && f <= t => {
                Ok((Some(f), Some(t)))
            }
            (Some(f), Some(t)) => Err(Error::invalid_value(format!(
                "Invalid value for portRange. The port range {f}-{t} is not valid (0-65535, from <= to)"
            ))),
            _ => Err(Error::invalid_value(
                "Invalid value for portRange. Must specify both from and to ports with TCP/UDP.",
            )),
        },
    }
}

fn same_rule(a: &SecurityGroupRuleState, b: &SecurityGroupRuleState) -> bool {
    a.is_egress == b.is_egress
        && a.ip_protocol == b.ip_protocol
        && a.from_port == b.from_port
        && a.to_port == b.to_port
        && a.cidr_ipv4 == b.cidr_ipv4
        && a.referenced_group_id == b.referenced_group_id
}

fn describe_rule(r: &SecurityGroupRuleState) -> String {
    let peer = r
        .cidr_ipv4
        .clone()
        .or(r.referenced_group_id.clone())
        .unwrap_or_default();
    match r.ip_protocol.as_str() {
        "-1" => format!("peer: {peer}, ALL, ALLOW"),
        p => format!(
            "peer: {peer}, {}, from port: {}, to port: {}, ALLOW",
            p.to_ascii_uppercase(),
            r.from_port.unwrap_or(-1),
            r.to_port.unwrap_or(-1)
        ),
    }
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

/// The stored rules a request's permissions stand for (not yet stored; ids are new).
fn rules_of_request(
    db: &Db,
    caller: &Caller,
    group: &SecurityGroupState,
    req: &SecurityGroupRulesRequest,
    egress: bool,
) -> Result<Vec<SecurityGroupRuleState>> {
    let legacy = req.cidr_ip.is_some()
        || req.ip_protocol.is_some()
        || req.from_port.is_some()
        || req.to_port.is_some()
        || req.source_security_group_name.is_some();
    if legacy && !req.ip_permissions.is_empty() {
        return Err(Error::new(
            ErrorCode::InvalidParameterCombination,
            "The parameter 'ipPermissions' may not be used in combination with 'ipProtocol', 'fromPort', 'toPort', 'cidrIp' or 'sourceSecurityGroupName'",
        ));
    }
    let given: Vec<IpPermission> = if legacy {
        vec![IpPermission {
            ip_protocol: Some(req.ip_protocol.clone().unwrap_or_else(|| "-1".into())),
            from_port: req.from_port,
            to_port: req.to_port,
            ip_ranges: req
                .cidr_ip
                .iter()
                .map(|c| IpRange {
                    cidr_ip: Some(c.clone()),
                    description: None,
                })
                .collect(),
            user_id_group_pairs: req
                .source_security_group_name
                .iter()
                .map(|n| UserIdGroupPair {
                    group_name: Some(n.clone()),
                    user_id: req.source_security_group_owner_id.clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }]
    } else {
        req.ip_permissions.clone()
    };
    let mut out = Vec::new();
    for p in &given {
        if !p.ipv6_ranges.is_empty() || !p.prefix_list_ids.is_empty() {
            return Err(Error::invalid_value(
                "amirun's VPCs are IPv4 only: Ipv6Ranges and PrefixListIds are not supported",
            ));
        }
        let proto = protocol(
            p.ip_protocol
                .as_deref()
                .ok_or_else(|| Error::missing("IpPermissions.IpProtocol"))?,
        )?;
        let (from, to) = ports(&proto, p.from_port, p.to_port)?;
        if p.ip_ranges.is_empty() && p.user_id_group_pairs.is_empty() {
            return Err(Error::new(
                ErrorCode::InvalidPermissionMalformed,
                "Each permission needs at least one peer: IpRanges or UserIdGroupPairs",
            ));
        }
        let rule = |cidr: Option<String>, peer: Option<String>, description: Option<String>| {
            SecurityGroupRuleState {
                rule_id: ids::new_id(IdKind::SecurityGroupRule),
                group_id: group.group_id.clone(),
                is_egress: egress,
                ip_protocol: proto.clone(),
                from_port: from,
                to_port: to,
                cidr_ipv4: cidr,
                referenced_group_id: peer,
                description,
            }
        };
        for r in &p.ip_ranges {
            let cidr = r.cidr_ip.clone().ok_or_else(|| Error::missing("CidrIp"))?;
            let block = Block::parse(&cidr).ok_or_else(|| {
                Error::new(
                    ErrorCode::InvalidPermissionMalformed,
                    format!("CIDR block {cidr} is malformed"),
                )
            })?;
            out.push(rule(Some(block.to_string()), None, r.description.clone()));
        }
        for pair in &p.user_id_group_pairs {
            let peer = match (&pair.group_id, &pair.group_name) {
                (Some(id), _) => owned_group(db, caller, id)?,
                (None, Some(name)) => db
                    .security_groups_of_vpc(&group.vpc_id)?
                    .into_iter()
                    .find(|g| &g.group_name == name)
                    .ok_or_else(|| group_not_found(name))?,
                (None, None) => return Err(Error::missing("UserIdGroupPairs.GroupId")),
            };
            if peer.vpc_id != group.vpc_id {
                return Err(Error::invalid_value(format!(
                    "You have specified two resources that belong to different networks: {} is in {}, {} in {}",
                    peer.group_id, peer.vpc_id, group.group_id, group.vpc_id
                )));
            }
            out.push(rule(None, Some(peer.group_id), pair.description.clone()));
        }
    }
    if out.is_empty() {
        return Err(Error::missing("IpPermissions"));
    }
    Ok(out)
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

    /// `DescribeSecurityGroups`: by id, by name (default VPC), by filters.
    pub fn describe_security_groups(
        &mut self,
        caller: &Caller,
        req: DescribeSecurityGroupsRequest,
    ) -> Result<DescribeSecurityGroupsResult> {
        let paging = Paging::of(req.max_results, &req.next_token);
        filter::check_names(&req.filters, GROUP_FILTERS)?;
        let default_vpc = self.default_vpc(caller)?;
        self.store
            .read(|db| -> Result<DescribeSecurityGroupsResult> {
                let mut named = Vec::new();
                for id in &req.group_ids {
                    named.push(owned_group(db, caller, id)?.group_id);
                }
                for name in &req.group_names {
                    named.push(group_by_name(db, default_vpc.as_ref(), name)?.group_id);
                }
                let all = db.security_groups(&caller.region, &caller.account)?;
                let mut out = Vec::new();
                for g in &all {
                    let selected = req.group_ids.is_empty() && req.group_names.is_empty()
                        || named.contains(&g.group_id);
                    if !selected {
                        continue;
                    }
                    let tags = db.tags_of(&g.group_id)?;
                    let rules = db.security_group_rules(&g.group_id)?;
                    let name_of = |id: &str| {
                        all.iter()
                            .find(|x| x.group_id == id)
                            .map(|x| x.group_name.clone())
                            .unwrap_or_default()
                    };
                    let keep = filter::matches(&req.filters, |name| {
                        let (egress, field) = match name.strip_prefix("egress.ip-permission.") {
                            Some(f) => (true, Some(f)),
                            None => (false, name.strip_prefix("ip-permission.")),
                        };
                        if let Some(field) = field {
                            let mine = rules.iter().filter(|r| r.is_egress == egress);
                            return mine
                                .filter_map(|r| match field {
                                    "cidr" => r.cidr_ipv4.clone(),
                                    "from-port" => Some(r.from_port.unwrap_or(-1).to_string()),
                                    "to-port" => Some(r.to_port.unwrap_or(-1).to_string()),
                                    "protocol" => Some(r.ip_protocol.clone()),
                                    "group-id" => r.referenced_group_id.clone(),
                                    "group-name" => r.referenced_group_id.as_deref().map(name_of),
                                    "user-id" => {
                                        r.referenced_group_id.as_ref().map(|_| g.owner_id.clone())
                                    }
                                    _ => None,
                                })
                                .collect();
                        }
                        match name {
                            "description" => vec![g.description.clone()],
                            "group-id" => vec![g.group_id.clone()],
                            "group-name" => vec![g.group_name.clone()],
                            "owner-id" => vec![g.owner_id.clone()],
                            "vpc-id" => vec![g.vpc_id.clone()],
                            n => filter::tag_values(&tags, n).unwrap_or_default(),
                        }
                    });
                    if keep {
                        out.push(render_group(db, g)?);
                    }
                }
                let (security_groups, next_token) = super::paging::page(out, &paging, 5, 1000)?;
                Ok(DescribeSecurityGroupsResult {
                    security_groups,
                    next_token,
                })
            })
    }

    /// `DescribeSecurityGroupRules`.
    pub fn describe_security_group_rules(
        &mut self,
        caller: &Caller,
        req: DescribeSecurityGroupRulesRequest,
    ) -> Result<DescribeSecurityGroupRulesResult> {
        let paging = Paging::of(req.max_results, &req.next_token);
        filter::check_names(&req.filters, RULE_FILTERS)?;
        self.default_vpc(caller)?;
        self.store
            .read(|db| -> Result<DescribeSecurityGroupRulesResult> {
                let mut out = Vec::new();
                let mut seen = Vec::new();
                for g in db.security_groups(&caller.region, &caller.account)? {
                    for r in db.security_group_rules(&g.group_id)? {
                        seen.push(r.rule_id.clone());
                        if !req.security_group_rule_ids.is_empty()
                            && !req.security_group_rule_ids.contains(&r.rule_id)
                        {
                            continue;
                        }
                        let tags = db.tags_of(&r.rule_id)?;
                        let keep = filter::matches(&req.filters, |name| match name {
                            "group-id" => vec![g.group_id.clone()],
                            "security-group-rule-id" => vec![r.rule_id.clone()],
                            n => filter::tag_values(&tags, n).unwrap_or_default(),
                        });
                        if keep {
                            out.push(render_rule(db, &g, &r)?);
                        }
                    }
                }
                if let Some(missing) = req
                    .security_group_rule_ids
                    .iter()
                    .find(|id| !seen.contains(id))
                {
                    return Err(Error::new(
                        ErrorCode::InvalidSecurityGroupRuleIdNotFound,
                        format!("The security group rule ID '{missing}' does not exist"),
                    ));
                }
                let (security_group_rules, next_token) =
                    super::paging::page(out, &paging, 5, 1000)?;
                Ok(DescribeSecurityGroupRulesResult {
                    security_group_rules,
                    next_token,
                })
            })
    }

    /// `AuthorizeSecurityGroupIngress`.
    pub fn authorize_security_group_ingress(
        &mut self,
        caller: &Caller,
        req: AuthorizeSecurityGroupIngressRequest,
    ) -> Result<AuthorizeSecurityGroupResult> {
        self.authorize(caller, req, false)
    }

    /// `AuthorizeSecurityGroupEgress`.
    pub fn authorize_security_group_egress(
        &mut self,
        caller: &Caller,
        req: AuthorizeSecurityGroupEgressRequest,
    ) -> Result<AuthorizeSecurityGroupResult> {
        if req.group_id.is_none() {
            return Err(Error::missing("GroupId"));
        }
        self.authorize(caller, req, true)
    }

    /// `RevokeSecurityGroupIngress`.
    pub fn revoke_security_group_ingress(
        &mut self,
        caller: &Caller,
        req: RevokeSecurityGroupIngressRequest,
    ) -> Result<RevokeSecurityGroupResult> {
        self.revoke(caller, req, false)
    }

    /// `RevokeSecurityGroupEgress`.
    pub fn revoke_security_group_egress(
        &mut self,
        caller: &Caller,
        req: RevokeSecurityGroupEgressRequest,
    ) -> Result<RevokeSecurityGroupResult> {
        if req.group_id.is_none() {
            return Err(Error::missing("GroupId"));
        }
        self.revoke(caller, req, true)
    }

    fn authorize(
        &mut self,
        caller: &Caller,
        req: SecurityGroupRulesRequest,
        egress: bool,
    ) -> Result<AuthorizeSecurityGroupResult> {
        if !req.security_group_rule_ids.is_empty() {
            return Err(Error::new(
                ErrorCode::UnknownParameter,
                "The parameter SecurityGroupRuleIds is not recognized",
            ));
        }
        let default_vpc = self.default_vpc(caller)?;
        let (group_id, result) = self.store.write(|db| -> Result<_> {
            let group = target_group(
                db,
                caller,
                default_vpc.as_ref(),
                req.group_id.as_deref(),
                req.group_name.as_deref(),
            )?;
            let new = rules_of_request(db, caller, &group, &req, egress)?;
            let existing = db.security_group_rules(&group.group_id)?;
            for (n, r) in new.iter().enumerate() {
                if existing.iter().chain(&new[..n]).any(|e| same_rule(e, r)) {
                    return Err(Error::new(
                        ErrorCode::InvalidPermissionDuplicate,
                        format!("the specified rule \"{}\" already exists", describe_rule(r)),
                    ));
                }
            }
            let mut shown = Vec::new();
            for r in &new {
                db.insert_security_group_rule(r)?;
                put_tags(
                    db,
                    &req.tag_specifications,
                    "security-group-rule",
                    &r.rule_id,
                )?;
                shown.push(render_rule(db, &group, r)?);
            }
            Ok((
                group.group_id.clone(),
                AuthorizeSecurityGroupResult {
                    r#return: true,
                    security_group_rules: shown,
                },
            ))
        })?;
        self.apply_rules_of_groups(&[group_id]);
        Ok(result)
    }

    fn revoke(
        &mut self,
        caller: &Caller,
        req: SecurityGroupRulesRequest,
        egress: bool,
    ) -> Result<RevokeSecurityGroupResult> {
        let default_vpc = self.default_vpc(caller)?;
        let (group_id, result) = self.store.write(|db| -> Result<_> {
            let group = target_group(
                db,
                caller,
                default_vpc.as_ref(),
                req.group_id.as_deref(),
                req.group_name.as_deref(),
            )?;
            let existing = db.security_group_rules(&group.group_id)?;
            let mut gone: Vec<SecurityGroupRuleState> = Vec::new();
            let mut unknown = Vec::new();
            if !req.security_group_rule_ids.is_empty() {
                for id in &req.security_group_rule_ids {
                    match existing
                        .iter()
                        .find(|r| &r.rule_id == id && r.is_egress == egress)
                    {
                        Some(r) => gone.push(r.clone()),
                        None => {
                            return Err(Error::new(
                                ErrorCode::InvalidSecurityGroupRuleIdNotFound,
                                format!("The security group rule ID '{id}' does not exist"),
                            ))
                        }
                    }
                }
            }
            let given = if req.security_group_rule_ids.is_empty()
                || !req.ip_permissions.is_empty()
                || req.ip_protocol.is_some()
            {
                rules_of_request(db, caller, &group, &req, egress)?
            } else {
                Vec::new()
            };
            for r in &given {
                match existing.iter().find(|e| same_rule(e, r)) {
                    Some(e) => gone.push(e.clone()),
                    None => unknown.push(r),
                }
            }
            if gone.is_empty() {
                return Err(Error::new(
                    ErrorCode::InvalidPermissionNotFound,
                    "The specified rule does not exist in this security group.",
                ));
            }
            let mut revoked = Vec::new();
            for r in &gone {
                for t in db.tags_of(&r.rule_id)? {
                    db.delete_tag(&r.rule_id, &t.key, None)?;
                }
                db.delete_security_group_rule(&r.rule_id)?;
                revoked.push(RevokedSecurityGroupRule {
                    security_group_rule_id: r.rule_id.clone(),
                    group_id: group.group_id.clone(),
                    is_egress: r.is_egress,
                    ip_protocol: r.ip_protocol.clone(),
                    from_port: r.from_port.unwrap_or(-1),
                    to_port: r.to_port.unwrap_or(-1),
                    cidr_ipv4: r.cidr_ipv4.clone(),
                    referenced_group_id: r.referenced_group_id.clone(),
                    description: r.description.clone(),
                });
            }
            let unknown: Vec<&SecurityGroupRuleState> = unknown.into_iter().collect();
            Ok((
                group.group_id.clone(),
                RevokeSecurityGroupResult {
                    r#return: true,
                    unknown_ip_permissions: permissions(&unknown, &group.owner_id),
                    revoked_security_group_rules: revoked,
                },
            ))
        })?;
        self.apply_rules_of_groups(&[group_id]);
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_and_ports_follow_ec2() {
        assert_eq!(protocol("TCP").unwrap(), "tcp");
        assert_eq!(protocol("6").unwrap(), "tcp");
        assert_eq!(protocol("-1").unwrap(), "-1");
        assert!(protocol("gre").is_err());
        assert_eq!(
            ports("tcp", Some(22), Some(22)).unwrap(),
            (Some(22), Some(22))
        );
        assert!(ports("tcp", Some(22), None).is_err());
        assert!(ports("tcp", Some(23), Some(22)).is_err());
        assert!(ports("udp", Some(0), Some(65536)).is_err());
        assert_eq!(ports("-1", Some(5), Some(6)).unwrap(), (None, None));
        assert_eq!(ports("icmp", None, None).unwrap(), (Some(-1), Some(-1)));
    }

    #[test]
    fn permissions_group_rules_by_protocol_and_ports() {
        let rule = |cidr: Option<&str>, peer: Option<&str>, from: i64| SecurityGroupRuleState {
            rule_id: "sgr-1".into(),
            group_id: "sg-1".into(),
            is_egress: false,
            ip_protocol: "tcp".into(),
            from_port: Some(from),
            to_port: Some(from),
            cidr_ipv4: cidr.map(String::from),
            referenced_group_id: peer.map(String::from),
            description: None,
        };
        let rules = [
            rule(Some("10.0.0.0/8"), None, 22),
            rule(None, Some("sg-2"), 22),
            rule(Some("0.0.0.0/0"), None, 80),
        ];
        let p = permissions(&rules.iter().collect::<Vec<_>>(), "000000000000");
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].ip_ranges.len(), 1);
        assert_eq!(
            p[0].user_id_group_pairs[0].group_id.as_deref(),
            Some("sg-2")
        );
        assert_eq!(p[1].from_port, Some(80));
        assert_eq!(
            describe_rule(&rules[0]),
            "peer: 10.0.0.0/8, TCP, from port: 22, to port: 22, ALLOW"
        );
    }
}
