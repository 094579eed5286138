//! `DescribeSecurityGroups` and `DescribeSecurityGroupRules`: by id, by
//! name, by filters.

use super::*;

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
    "egress.ip-permission.ipv6-cidr",
    "egress.ip-permission.prefix-list-id",
    "ip-permission.ipv6-cidr",
    "ip-permission.prefix-list-id",
];

const RULE_FILTERS: &[&str] = &["group-id", "security-group-rule-id", "tag-key"];

impl Service {
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
                let (security_groups, next_token) =
                    crate::service::paging::page(out, &paging, 5, 1000)?;
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
                    crate::service::paging::page(out, &paging, 5, 1000)?;
                Ok(DescribeSecurityGroupRulesResult {
                    security_group_rules,
                    next_token,
                })
            })
    }
}
