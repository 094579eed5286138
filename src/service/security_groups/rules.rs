//! Rule changes: `Authorize`/`RevokeSecurityGroupIngress`/`Egress`, from
//! the permissions a request names to stored rules (protocols and ports as
//! EC2 accepts them, duplicates refused), each change one transaction.

use super::*;

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
