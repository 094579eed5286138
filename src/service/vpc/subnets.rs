//! Subnets: `CreateSubnet`, `DeleteSubnet`, `DescribeSubnets`, and how
//! many addresses a subnet has left.

use super::*;

/// `CreateSubnet`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct CreateSubnetRequest {
    pub vpc_id: String,
    #[serde(default)]
    pub cidr_block: Option<String>,
    #[serde(default)]
    pub availability_zone: Option<String>,
    #[serde(default)]
    pub availability_zone_id: Option<String>,
    #[serde(default)]
    pub tag_specifications: Vec<TagSpecification>,
}

/// `CreateSubnet`'s result.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateSubnetResult {
    pub subnet: Subnet,
}

/// `DeleteSubnet`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DeleteSubnetRequest {
    pub subnet_id: String,
}

/// `DescribeSubnets`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DescribeSubnetsRequest {
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub subnet_ids: Vec<String>,
    #[serde(default)]
    pub max_results: Option<i64>,
    #[serde(default)]
    pub next_token: Option<String>,
}

/// `DescribeSubnets`' result.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeSubnetsResult {
    pub subnets: Vec<Subnet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// A subnet as EC2 shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Subnet {
    pub availability_zone: String,
    pub availability_zone_id: String,
    pub available_ip_address_count: u64,
    pub cidr_block: String,
    pub default_for_az: bool,
    pub map_public_ip_on_launch: bool,
    pub map_customer_owned_ip_on_launch: bool,
    pub state: String,
    pub subnet_id: String,
    pub vpc_id: String,
    pub owner_id: String,
    pub assign_ipv6_address_on_creation: bool,
    pub ipv6_cidr_block_association_set: Vec<serde_json::Value>,
    pub subnet_arn: String,
    pub enable_dns64: bool,
    pub ipv6_native: bool,
    pub private_dns_name_options_on_launch: PrivateDnsNameOptionsOnLaunch,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
}

/// How instances of a subnet are named.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PrivateDnsNameOptionsOnLaunch {
    pub hostname_type: String,
    pub enable_resource_name_dns_a_record: bool,
    pub enable_resource_name_dns_aaaa_record: bool,
}

const SUBNET_FILTERS: &[&str] = &[
    "availability-zone",
    "availability-zone-id",
    "availabilityZone",
    "available-ip-address-count",
    "cidr",
    "cidr-block",
    "cidrBlock",
    "default-for-az",
    "defaultForAz",
    "map-public-ip-on-launch",
    "owner-id",
    "state",
    "subnet-arn",
    "subnet-id",
    "vpc-id",
    "tag-key",
    "customer-owned-ipv4-pool",
    "enable-dns64",
    "enable-lni-at-device-index",
    "ipv6-cidr-block-association.ipv6-cidr-block",
    "ipv6-cidr-block-association.association-id",
    "ipv6-cidr-block-association.state",
    "ipv6-native",
    "map-customer-owned-ip-on-launch",
    "outpost-arn",
    "private-dns-name-options-on-launch.hostname-type",
    "private-dns-name-options-on-launch.enable-resource-name-dns-a-record",
    "private-dns-name-options-on-launch.enable-resource-name-dns-aaaa-record",
];

/// How many addresses of a subnet are free.
fn free_addresses(db: &Db, s: &SubnetState) -> Result<u64> {
    let used = db
        .all_network_interfaces()?
        .iter()
        .filter(|n| n.subnet_id == s.subnet_id)
        .count() as u64;
    Ok(Block::parse(&s.cidr_block)
        .map_or(0, |b| b.usable_count())
        .saturating_sub(used))
}

fn render_subnet(db: &Db, s: &SubnetState) -> Result<Subnet> {
    Ok(Subnet {
        availability_zone: s.availability_zone.clone(),
        availability_zone_id: crate::service::regions::zone_id(&s.region),
        available_ip_address_count: free_addresses(db, s)?,
        cidr_block: s.cidr_block.clone(),
        default_for_az: s.default_for_az,
        map_public_ip_on_launch: s.map_public_ip_on_launch,
        map_customer_owned_ip_on_launch: false,
        state: "available".into(),
        subnet_id: s.subnet_id.clone(),
        vpc_id: s.vpc_id.clone(),
        owner_id: s.owner_id.clone(),
        assign_ipv6_address_on_creation: false,
        ipv6_cidr_block_association_set: Vec::new(),
        subnet_arn: format!(
            "arn:aws:ec2:{}:{}:subnet/{}",
            s.region, s.owner_id, s.subnet_id
        ),
        enable_dns64: false,
        ipv6_native: false,
        private_dns_name_options_on_launch: PrivateDnsNameOptionsOnLaunch {
            hostname_type: "ip-name".into(),
            enable_resource_name_dns_a_record: false,
            enable_resource_name_dns_aaaa_record: false,
        },
        tags: tags_of(db, &s.subnet_id)?,
    })
}

impl Service {
    /// `CreateSubnet`: a block inside its VPC's that overlaps no other subnet.
    pub fn create_subnet(
        &mut self,
        caller: &Caller,
        req: CreateSubnetRequest,
    ) -> Result<CreateSubnetResult> {
        let cidr = req.cidr_block.ok_or_else(|| Error::missing("CidrBlock"))?;
        let block = parse_block(&cidr, "cidrBlock")?;
        let zones = zones(&caller.region);
        let zone = match (&req.availability_zone, &req.availability_zone_id) {
            (Some(z), _) => z.clone(),
            (None, Some(id)) if *id == crate::service::regions::zone_id(&caller.region) => zones[0].clone(),
            (None, Some(id)) => {
                return Err(Error::invalid_value(format!(
                    "Value ({id}) for parameter availabilityZoneId is invalid. Subnets can currently only be created in the following availability zones: {}.",
                    crate::service::regions::zone_id(&caller.region)
                )))
            }
            (None, None) => zones[0].clone(),
        };
        if !zones.contains(&zone) {
            return Err(Error::invalid_value(format!(
                "Value ({zone}) for parameter availabilityZone is invalid. Subnets can currently only be created in the following availability zones: {}.",
                zones.join(", ")
            )));
        }
        self.default_vpc(caller)?;
        self.store.write(|db| -> Result<CreateSubnetResult> {
            let vpc = owned_vpc(db, caller, &req.vpc_id)?;
            let vpc_block = Block::parse(&vpc.cidr_block).expect("stored blocks are valid");
            if !(16..=28).contains(&block.prefix) || !vpc_block.contains(&block) {
                return Err(Error::new(
                    ErrorCode::InvalidSubnetRange,
                    format!("The CIDR '{cidr}' is invalid."),
                ));
            }
            if db
                .subnets_of_vpc(&vpc.vpc_id)?
                .iter()
                .any(|s| Block::parse(&s.cidr_block).is_some_and(|b| b.overlaps(&block)))
            {
                return Err(Error::new(
                    ErrorCode::InvalidSubnetConflict,
                    format!("The CIDR '{cidr}' conflicts with another subnet"),
                ));
            }
            let subnet = SubnetState {
                subnet_id: ids::new_id(IdKind::Subnet),
                vpc_id: vpc.vpc_id.clone(),
                region: caller.region.clone(),
                owner_id: caller.account.to_string(),
                cidr_block: block.to_string(),
                availability_zone: zone.clone(),
                default_for_az: false,
                map_public_ip_on_launch: false,
            };
            db.insert_subnet(&subnet)?;
            put_tags(db, &req.tag_specifications, "subnet", &subnet.subnet_id)?;
            Ok(CreateSubnetResult {
                subnet: render_subnet(db, &subnet)?,
            })
        })
    }

    /// `DeleteSubnet`: only a subnet no network interface is in.
    pub fn delete_subnet(&mut self, caller: &Caller, req: DeleteSubnetRequest) -> Result<()> {
        self.default_vpc(caller)?;
        self.sweep_interfaces()?;
        self.store.write(|db| -> Result<()> {
            let subnet = owned_subnet(db, caller, &req.subnet_id)?;
            if db
                .all_network_interfaces()?
                .iter()
                .any(|n| n.subnet_id == subnet.subnet_id)
            {
                return Err(Error::new(
                    ErrorCode::DependencyViolation,
                    format!(
                        "The subnet '{}' has dependencies and cannot be deleted.",
                        subnet.subnet_id
                    ),
                ));
            }
            for t in db.tags_of(&subnet.subnet_id)? {
                db.delete_tag(&subnet.subnet_id, &t.key, None)?;
            }
            db.delete_subnet(&subnet.subnet_id)?;
            Ok(())
        })
    }

    /// `DescribeSubnets`.
    pub fn describe_subnets(
        &mut self,
        caller: &Caller,
        req: DescribeSubnetsRequest,
    ) -> Result<DescribeSubnetsResult> {
        let paging = Paging::of(req.max_results, &req.next_token);
        filter::check_names(&req.filters, SUBNET_FILTERS)?;
        self.default_vpc(caller)?;
        self.store.read(|db| -> Result<DescribeSubnetsResult> {
            for id in &req.subnet_ids {
                owned_subnet(db, caller, id)?;
            }
            let mut subnets = Vec::new();
            for s in db.subnets(&caller.region, &caller.account)? {
                if !req.subnet_ids.is_empty() && !req.subnet_ids.contains(&s.subnet_id) {
                    continue;
                }
                let tags = db.tags_of(&s.subnet_id)?;
                let shown = render_subnet(db, &s)?;
                let keep = filter::matches(&req.filters, |name| match name {
                    "availability-zone" | "availabilityZone" => vec![s.availability_zone.clone()],
                    "availability-zone-id" => vec![shown.availability_zone_id.clone()],
                    "available-ip-address-count" => {
                        vec![shown.available_ip_address_count.to_string()]
                    }
                    "cidr" | "cidr-block" | "cidrBlock" => vec![s.cidr_block.clone()],
                    "default-for-az" | "defaultForAz" => vec![s.default_for_az.to_string()],
                    "map-public-ip-on-launch" => vec![s.map_public_ip_on_launch.to_string()],
                    "owner-id" => vec![s.owner_id.clone()],
                    "state" => vec!["available".into()],
                    "subnet-arn" => vec![shown.subnet_arn.clone()],
                    "subnet-id" => vec![s.subnet_id.clone()],
                    "vpc-id" => vec![s.vpc_id.clone()],
                    n => filter::tag_values(&tags, n)
                        .unwrap_or_else(|| filter::shown_values(&shown, n)),
                });
                if keep {
                    subnets.push(shown);
                }
            }
            let (subnets, next_token) = crate::service::paging::page(subnets, &paging, 5, 1000)?;
            Ok(DescribeSubnetsResult {
                subnets,
                next_token,
            })
        })
    }
}
