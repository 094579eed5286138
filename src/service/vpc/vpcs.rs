//! VPCs of the user's own: `CreateVpc`, `DeleteVpc`, `DescribeVpcs`, and
//! how a VPC record is shown.

use super::*;

/// `CreateVpc`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct CreateVpcRequest {
    #[serde(default)]
    pub cidr_block: Option<String>,
    #[serde(default)]
    pub instance_tenancy: Option<String>,
    #[serde(default)]
    pub tag_specifications: Vec<TagSpecification>,
}

/// `CreateVpc`'s result.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateVpcResult {
    pub vpc: Vpc,
}

/// `DeleteVpc`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DeleteVpcRequest {
    pub vpc_id: String,
}

/// `DescribeVpcs`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DescribeVpcsRequest {
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub vpc_ids: Vec<String>,
    #[serde(default)]
    pub max_results: Option<i64>,
    #[serde(default)]
    pub next_token: Option<String>,
}

/// `DescribeVpcs`' result.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeVpcsResult {
    pub vpcs: Vec<Vpc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// A VPC as EC2 shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Vpc {
    pub cidr_block: String,
    pub dhcp_options_id: String,
    pub state: String,
    pub vpc_id: String,
    pub owner_id: String,
    pub instance_tenancy: String,
    pub cidr_block_association_set: Vec<VpcCidrBlockAssociation>,
    pub is_default: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
}

/// One IPv4 block of a VPC.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct VpcCidrBlockAssociation {
    pub association_id: String,
    pub cidr_block: String,
    pub cidr_block_state: CidrBlockState,
}

/// `{State: associated}`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CidrBlockState {
    pub state: String,
}

const VPC_FILTERS: &[&str] = &[
    "cidr",
    "cidr-block-association.cidr-block",
    "cidr-block-association.state",
    "dhcp-options-id",
    "is-default",
    // Ansible's amazon.aws looks the default VPC up by the API's member name.
    "isDefault",
    "owner-id",
    "state",
    "vpc-id",
    "tag-key",
    "cidr-block-association.association-id",
    "ipv6-cidr-block-association.ipv6-cidr-block",
    "ipv6-cidr-block-association.ipv6-pool",
    "ipv6-cidr-block-association.association-id",
    "ipv6-cidr-block-association.state",
];

fn render_vpc(db: &Db, v: &VpcState) -> Result<Vpc> {
    Ok(Vpc {
        cidr_block: v.cidr_block.clone(),
        dhcp_options_id: ids::derived_id(IdKind::Vpc, &format!("dopt/{}", v.region))
            .replacen("vpc-", "dopt-", 1),
        state: "available".into(),
        vpc_id: v.vpc_id.clone(),
        owner_id: v.owner_id.clone(),
        instance_tenancy: v.instance_tenancy.clone(),
        cidr_block_association_set: vec![VpcCidrBlockAssociation {
            association_id: ids::derived_id(IdKind::Vpc, &format!("cidr/{}", v.vpc_id)).replacen(
                "vpc-",
                "vpc-cidr-assoc-",
                1,
            ),
            cidr_block: v.cidr_block.clone(),
            cidr_block_state: CidrBlockState {
                state: "associated".into(),
            },
        }],
        is_default: v.is_default,
        tags: tags_of(db, &v.vpc_id)?,
    })
}

impl Service {
    /// `CreateVpc`: a VPC with a main route table and a `default` group, no
    /// internet gateway.
    pub fn create_vpc(
        &mut self,
        caller: &Caller,
        req: CreateVpcRequest,
    ) -> Result<CreateVpcResult> {
        let cidr = req.cidr_block.ok_or_else(|| Error::missing("CidrBlock"))?;
        let block = parse_block(&cidr, "cidrBlock")?;
        if !(16..=28).contains(&block.prefix) {
            return Err(Error::new(
                ErrorCode::InvalidVpcRange,
                format!("The CIDR '{cidr}' is invalid."),
            ));
        }
        let tenancy = req.instance_tenancy.unwrap_or_else(|| "default".into());
        if tenancy != "default" {
            return Err(Error::invalid_value(format!(
                "Value ({tenancy}) for parameter instanceTenancy is invalid; amirun runs only default tenancy"
            )));
        }
        self.default_vpc(caller)?;
        let vpc = VpcState {
            vpc_id: ids::new_id(IdKind::Vpc),
            region: caller.region.clone(),
            owner_id: caller.account.to_string(),
            cidr_block: block.to_string(),
            is_default: false,
            instance_tenancy: tenancy,
            internet_gateway_id: None,
            main_route_table_id: ids::new_id(IdKind::RouteTable),
            default_group_id: ids::new_id(IdKind::SecurityGroup),
            created: now(),
        };
        self.store.write(|db| -> Result<CreateVpcResult> {
            insert_vpc_with_group(db, &vpc, |k, _| ids::new_id(k))?;
            put_tags(db, &req.tag_specifications, "vpc", &vpc.vpc_id)?;
            Ok(CreateVpcResult {
                vpc: render_vpc(db, &vpc)?,
            })
        })
    }

    /// `DeleteVpc`: only a VPC with no subnets, interfaces or groups but its `default`.
    pub fn delete_vpc(&mut self, caller: &Caller, req: DeleteVpcRequest) -> Result<()> {
        self.default_vpc(caller)?;
        self.sweep_interfaces()?;
        self.store.write(|db| -> Result<()> {
            let vpc = owned_vpc(db, caller, &req.vpc_id)?;
            let groups = db.security_groups_of_vpc(&vpc.vpc_id)?;
            let busy = !db.subnets_of_vpc(&vpc.vpc_id)?.is_empty()
                || groups.iter().any(|g| g.group_id != vpc.default_group_id)
                || db
                    .all_network_interfaces()?
                    .iter()
                    .any(|n| n.vpc_id == vpc.vpc_id);
            if busy {
                return Err(Error::new(
                    ErrorCode::DependencyViolation,
                    format!(
                        "The vpc '{}' has dependencies and cannot be deleted.",
                        vpc.vpc_id
                    ),
                ));
            }
            for id in [&vpc.vpc_id, &vpc.default_group_id] {
                for t in db.tags_of(id)? {
                    db.delete_tag(id, &t.key, None)?;
                }
            }
            db.delete_vpc(&vpc.vpc_id)?;
            Ok(())
        })
    }

    /// `DescribeVpcs`.
    pub fn describe_vpcs(
        &mut self,
        caller: &Caller,
        req: DescribeVpcsRequest,
    ) -> Result<DescribeVpcsResult> {
        let paging = Paging::of(req.max_results, &req.next_token);
        filter::check_names(&req.filters, VPC_FILTERS)?;
        self.default_vpc(caller)?;
        self.store.read(|db| -> Result<DescribeVpcsResult> {
            for id in &req.vpc_ids {
                owned_vpc(db, caller, id)?;
            }
            let mut vpcs = Vec::new();
            for v in db.vpcs(&caller.region, &caller.account)? {
                if !req.vpc_ids.is_empty() && !req.vpc_ids.contains(&v.vpc_id) {
                    continue;
                }
                let tags = db.tags_of(&v.vpc_id)?;
                let shown = render_vpc(db, &v)?;
                let keep = filter::matches(&req.filters, |name| match name {
                    "cidr" | "cidr-block-association.cidr-block" => vec![v.cidr_block.clone()],
                    "cidr-block-association.state" | "state" => {
                        vec![if name == "state" {
                            "available"
                        } else {
                            "associated"
                        }
                        .into()]
                    }
                    "dhcp-options-id" => vec![shown.dhcp_options_id.clone()],
                    "is-default" | "isDefault" => vec![v.is_default.to_string()],
                    "owner-id" => vec![v.owner_id.clone()],
                    "vpc-id" => vec![v.vpc_id.clone()],
                    n => filter::tag_values(&tags, n)
                        .unwrap_or_else(|| filter::shown_values(&shown, n)),
                });
                if keep {
                    vpcs.push(shown);
                }
            }
            let (vpcs, next_token) = crate::service::paging::page(vpcs, &paging, 5, 1000)?;
            Ok(DescribeVpcsResult { vpcs, next_token })
        })
    }
}
