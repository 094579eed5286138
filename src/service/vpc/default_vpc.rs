//! The default VPC: made on first use for each account and region, with its
//! default subnets, internet gateway, route table and `default` security
//! group; and `DescribeAccountAttributes`, which names it.

use super::*;

/// A VPC's `default` group and its rules: all traffic from the group
/// itself, all traffic out.
fn default_group(
    vpc: &VpcState,
    derive: impl Fn(IdKind, &str) -> String,
) -> (SecurityGroupState, Vec<SecurityGroupRuleState>) {
    let group = SecurityGroupState {
        group_id: vpc.default_group_id.clone(),
        vpc_id: vpc.vpc_id.clone(),
        region: vpc.region.clone(),
        owner_id: vpc.owner_id.clone(),
        group_name: "default".into(),
        description: "default VPC security group".into(),
    };
    let rules = vec![
        SecurityGroupRuleState {
            rule_id: derive(IdKind::SecurityGroupRule, "ingress"),
            group_id: group.group_id.clone(),
            is_egress: false,
            ip_protocol: "-1".into(),
            from_port: None,
            to_port: None,
            cidr_ipv4: None,
            referenced_group_id: Some(group.group_id.clone()),
            description: None,
        },
        crate::service::security_groups::allow_all_egress(
            &group.group_id,
            derive(IdKind::SecurityGroupRule, "egress"),
        ),
    ];
    (group, rules)
}

pub(super) fn insert_vpc_with_group(
    db: &Db,
    vpc: &VpcState,
    derive: impl Fn(IdKind, &str) -> String,
) -> Result<()> {
    db.insert_vpc(vpc)?;
    let (group, rules) = default_group(vpc, derive);
    db.insert_security_group(&group)?;
    for r in &rules {
        db.insert_security_group_rule(r)?;
    }
    Ok(())
}

/// `DescribeAccountAttributes`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DescribeAccountAttributesRequest {
    #[serde(default)]
    pub attribute_names: Vec<String>,
}

/// `DescribeAccountAttributes`' result.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeAccountAttributesResult {
    pub account_attributes: Vec<AccountAttribute>,
}

/// One account attribute.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AccountAttribute {
    pub attribute_name: String,
    pub attribute_values: Vec<AccountAttributeValue>,
}

/// One value of an account attribute.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AccountAttributeValue {
    pub attribute_value: String,
}

const ACCOUNT_ATTRIBUTES: &[&str] = &[
    "supported-platforms",
    "default-vpc",
    "max-instances",
    "vpc-max-security-groups-per-interface",
    "max-elastic-ips",
    "vpc-max-elastic-ips",
];

impl Service {
    /// The caller's default VPC, made (with its subnets, internet gateway,
    /// route table and `default` group) on first use; `None` once the user
    /// deleted it.
    pub(crate) fn default_vpc(&mut self, caller: &Caller) -> Result<Option<VpcState>> {
        let (region, account) = (caller.region.clone(), caller.account.to_string());
        let look = |db: &Db| -> Result<(Option<VpcState>, bool)> {
            Ok((
                db.vpcs(&region, &account)?
                    .into_iter()
                    .find(|v| v.is_default),
                db.default_vpc_made(&region, &account)?,
            ))
        };
        let (found, made) = self.store.read(look)?;
        if found.is_some() || made {
            return Ok(found);
        }
        self.store.write(|db| -> Result<Option<VpcState>> {
            // Another process may have made it while we waited for the lock.
            let (found, made) = look(db)?;
            if found.is_some() || made {
                return Ok(found);
            }
            let key = format!("default/{account}/{region}");
            let derive = |kind: IdKind, what: &str| ids::derived_id(kind, &format!("{key}/{what}"));
            let vpc = VpcState {
                vpc_id: derive(IdKind::Vpc, "vpc"),
                region: region.clone(),
                owner_id: account.clone(),
                cidr_block: DEFAULT_VPC_CIDR.into(),
                is_default: true,
                instance_tenancy: "default".into(),
                internet_gateway_id: Some(derive(IdKind::InternetGateway, "igw")),
                main_route_table_id: derive(IdKind::RouteTable, "rtb"),
                default_group_id: derive(IdKind::SecurityGroup, "sg"),
                created: now(),
            };
            insert_vpc_with_group(db, &vpc, |k, w| derive(k, &format!("sg/{w}")))?;
            // 172.31.0.0/20, 172.31.16.0/20, … one per zone, as on EC2.
            let base = Block::parse(DEFAULT_VPC_CIDR).expect("valid").first();
            for (n, zone) in zones(&region).iter().enumerate() {
                let block = Block {
                    base: base + (n as u32) * (1 << 12),
                    prefix: 20,
                };
                db.insert_subnet(&SubnetState {
                    subnet_id: derive(IdKind::Subnet, zone),
                    vpc_id: vpc.vpc_id.clone(),
                    region: region.clone(),
                    owner_id: account.clone(),
                    cidr_block: block.to_string(),
                    availability_zone: zone.clone(),
                    default_for_az: true,
                    map_public_ip_on_launch: true,
                })?;
            }
            db.mark_default_vpc_made(&region, &account)?;
            Ok(Some(vpc))
        })
    }

    /// `DescribeAccountAttributes`: the platform is VPC, and the default VPC.
    pub fn describe_account_attributes(
        &mut self,
        caller: &Caller,
        req: DescribeAccountAttributesRequest,
    ) -> Result<DescribeAccountAttributesResult> {
        if let Some(bad) = req
            .attribute_names
            .iter()
            .find(|n| !ACCOUNT_ATTRIBUTES.contains(&n.as_str()))
        {
            return Err(Error::invalid_value(format!(
                "Value ({bad}) for parameter attributeName is invalid; valid names are {}",
                ACCOUNT_ATTRIBUTES.join(", ")
            )));
        }
        let default_vpc = self
            .default_vpc(caller)?
            .map_or_else(|| "none".to_string(), |v| v.vpc_id);
        let value = |name: &str| match name {
            "supported-platforms" => "VPC".to_string(),
            "default-vpc" => default_vpc.clone(),
            "max-instances" => "20".to_string(),
            "vpc-max-security-groups-per-interface" => "5".to_string(),
            _ => "5".to_string(),
        };
        Ok(DescribeAccountAttributesResult {
            account_attributes: ACCOUNT_ATTRIBUTES
                .iter()
                .filter(|n| {
                    req.attribute_names.is_empty() || req.attribute_names.iter().any(|a| a == *n)
                })
                .map(|n| AccountAttribute {
                    attribute_name: n.to_string(),
                    attribute_values: vec![AccountAttributeValue {
                        attribute_value: value(n),
                    }],
                })
                .collect(),
        })
    }
}
