//! VPCs and subnets, EC2's way: every account has a default VPC in each
//! region (172.31.0.0/16, an internet gateway, one default subnet per
//! availability zone mapping public addresses, a `default` security group),
//! made on first use; users add VPCs and subnets of their own. Internet
//! gateways and route tables are read-only views of the VPC records.
//!
//! The default VPC is made in one `BEGIN IMMEDIATE` transaction that first
//! looks again whether another process made it meanwhile; its ids are
//! derived from the account and region, and a unique index allows one
//! default VPC per account and region, so two processes opening a fresh
//! home at once make one. VPC records own no files, so each operation is
//! one transaction and a killed process leaves nothing half-made (no
//! intent record is needed). Once deleted, a default VPC is not made again
//! (as on EC2; `default_vpcs_made` remembers it).

use super::filter;
use super::paging::Paging;
use super::shapes::{Filter, Tag, TagSpecification};
use super::{now, Caller, Error, ErrorCode, Result, Service};
use crate::ids::{self, IdKind};
use crate::store::vpc::{SecurityGroupRuleState, SecurityGroupState, SubnetState, VpcState};
use crate::store::Db;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// The default VPC's block, as on EC2.
pub const DEFAULT_VPC_CIDR: &str = "172.31.0.0/16";

/// An IPv4 block (`a.b.c.d/n`, `a.b.c.d` the block's first address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    base: u32,
    prefix: u8,
}

impl Block {
    /// Parse `a.b.c.d/n`; `None` for anything else, or when host bits are set.
    pub fn parse(s: &str) -> Option<Block> {
        let (addr, prefix) = s.split_once('/')?;
        let addr: Ipv4Addr = addr.parse().ok()?;
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
        if !prefix.to_string().eq(s.split_once('/')?.1) {
            return None;
        }
        let base = u32::from(addr);
        let block = Block { base, prefix };
        (base & block.mask() == base).then_some(block)
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The first address.
    pub fn first(&self) -> u32 {
        self.base
    }

    /// The last address.
    pub fn last(&self) -> u32 {
        self.base | !self.mask()
    }

    /// Whether `o` lies inside this block.
    pub fn contains(&self, o: &Block) -> bool {
        o.prefix >= self.prefix && o.base & self.mask() == self.base
    }

    /// Whether an address lies inside this block.
    pub fn contains_addr(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & self.mask() == self.base
    }

    /// Whether the blocks share an address.
    pub fn overlaps(&self, o: &Block) -> bool {
        self.first() <= o.last() && o.first() <= self.last()
    }

    /// The addresses EC2 lets instances use: all but the first four and the last.
    pub fn usable(&self) -> impl Iterator<Item = Ipv4Addr> {
        let (first, last) = (self.first() as u64 + 4, self.last() as u64);
        (first..last).map(|a| Ipv4Addr::from(a as u32))
    }

    /// How many addresses [`Block::usable`] gives.
    pub fn usable_count(&self) -> u64 {
        (1u64 << (32 - self.prefix)).saturating_sub(5)
    }
}

impl std::fmt::Display for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

/// The availability zones of a region (those `DescribeAvailabilityZones` lists).
pub(crate) fn zones(region: &str) -> Vec<String> {
    vec![format!("{region}a")]
}

/// The tags of a resource in EC2's shape.
pub(crate) fn tags_of(db: &Db, id: &str) -> Result<Vec<Tag>> {
    Ok(db.tags_of(id)?.iter().map(Tag::from).collect())
}

/// Record the tags `specs` give resources of `resource_type`.
pub(crate) fn put_tags(
    db: &Db,
    specs: &[TagSpecification],
    resource_type: &str,
    id: &str,
) -> Result<()> {
    for (k, v) in super::images::tags_for(specs, resource_type)? {
        db.put_tag(id, &k, &v)?;
    }
    Ok(())
}

fn check_id(kind: IdKind, id: &str, code: ErrorCode) -> Result<()> {
    if ids::is_well_formed(kind, id) {
        Ok(())
    } else {
        Err(Error::new(
            code,
            format!("Invalid id: \"{id}\" (expecting \"{}-...\")", kind.prefix()),
        ))
    }
}

/// `InvalidVpcID.NotFound`.
pub(crate) fn vpc_not_found(id: &str) -> Error {
    Error::new(
        ErrorCode::InvalidVpcIdNotFound,
        format!("The vpc ID '{id}' does not exist"),
    )
}

/// `InvalidSubnetID.NotFound`.
pub(crate) fn subnet_not_found(id: &str) -> Error {
    Error::new(
        ErrorCode::InvalidSubnetIdNotFound,
        format!("The subnet ID '{id}' does not exist"),
    )
}

/// The caller's VPC `id`, or EC2's error.
pub(crate) fn owned_vpc(db: &Db, caller: &Caller, id: &str) -> Result<VpcState> {
    check_id(IdKind::Vpc, id, ErrorCode::InvalidVpcIdMalformed)?;
    db.vpc(id)?
        .filter(|v| v.region == caller.region && v.owner_id == caller.account)
        .ok_or_else(|| vpc_not_found(id))
}

/// The caller's subnet `id`, or EC2's error.
pub(crate) fn owned_subnet(db: &Db, caller: &Caller, id: &str) -> Result<SubnetState> {
    check_id(IdKind::Subnet, id, ErrorCode::InvalidSubnetIdMalformed)?;
    db.subnet(id)?
        .filter(|s| s.region == caller.region && s.owner_id == caller.account)
        .ok_or_else(|| subnet_not_found(id))
}

/// EC2's resource type of a VPC-model id (`vpc`, `subnet`, `security-group`, …).
pub(crate) fn resource_type(id: &str) -> Option<&'static str> {
    Some(match id.rsplit_once('-')?.0 {
        "vpc" => "vpc",
        "subnet" => "subnet",
        "sg" => "security-group",
        "sgr" => "security-group-rule",
        "eni" => "network-interface",
        "igw" => "internet-gateway",
        "rtb" => "route-table",
        _ => return None,
    })
}

/// Check that the caller owns the VPC-model resource `id` (for tagging),
/// with EC2's NotFound error when not.
pub(crate) fn check_owned_resource(db: &Db, caller: &Caller, id: &str) -> Result<()> {
    let invalid = || Error::new(ErrorCode::InvalidId, format!("The ID '{id}' is not valid"));
    match resource_type(id).ok_or_else(invalid)? {
        "vpc" => owned_vpc(db, caller, id).map(|_| ()),
        "subnet" => owned_subnet(db, caller, id).map(|_| ()),
        "security-group" => super::security_groups::owned_group(db, caller, id).map(|_| ()),
        "security-group-rule" => {
            for g in db.security_groups(&caller.region, &caller.account)? {
                if db
                    .security_group_rules(&g.group_id)?
                    .iter()
                    .any(|r| r.rule_id == id)
                {
                    return Ok(());
                }
            }
            Err(Error::new(
                ErrorCode::InvalidSecurityGroupRuleIdNotFound,
                format!("The security group rule ID '{id}' does not exist"),
            ))
        }
        "network-interface" => {
            if db
                .network_interfaces(&caller.region, &caller.account)?
                .iter()
                .any(|n| n.network_interface_id == id)
            {
                Ok(())
            } else {
                Err(Error::new(
                    ErrorCode::InvalidNetworkInterfaceIdNotFound,
                    format!("The networkInterface ID '{id}' does not exist"),
                ))
            }
        }
        "internet-gateway" | "route-table" => {
            let found = db.vpcs(&caller.region, &caller.account)?.iter().any(|v| {
                v.internet_gateway_id.as_deref() == Some(id) || v.main_route_table_id == id
            });
            match (found, resource_type(id)) {
                (true, _) => Ok(()),
                (false, Some("internet-gateway")) => Err(Error::new(
                    ErrorCode::InvalidInternetGatewayIdNotFound,
                    format!("The internetGateway ID '{id}' does not exist"),
                )),
                _ => Err(Error::new(
                    ErrorCode::InvalidRouteTableIdNotFound,
                    format!("The routeTable ID '{id}' does not exist"),
                )),
            }
        }
        _ => Err(invalid()),
    }
}

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
        super::security_groups::allow_all_egress(
            &group.group_id,
            derive(IdKind::SecurityGroupRule, "egress"),
        ),
    ];
    (group, rules)
}

fn insert_vpc_with_group(
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

// ----- requests and results (botocore's shapes) -----

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

/// `DescribeInternetGateways`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DescribeInternetGatewaysRequest {
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub internet_gateway_ids: Vec<String>,
    #[serde(default)]
    pub max_results: Option<i64>,
    #[serde(default)]
    pub next_token: Option<String>,
}

/// `DescribeInternetGateways`' result.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeInternetGatewaysResult {
    pub internet_gateways: Vec<InternetGateway>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// An internet gateway as EC2 shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InternetGateway {
    pub attachments: Vec<InternetGatewayAttachment>,
    pub internet_gateway_id: String,
    pub owner_id: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
}

/// Where an internet gateway is attached.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InternetGatewayAttachment {
    pub state: String,
    pub vpc_id: String,
}

/// `DescribeRouteTables`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DescribeRouteTablesRequest {
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub route_table_ids: Vec<String>,
    #[serde(default)]
    pub max_results: Option<i64>,
    #[serde(default)]
    pub next_token: Option<String>,
}

/// `DescribeRouteTables`' result.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeRouteTablesResult {
    pub route_tables: Vec<RouteTable>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// A route table as EC2 shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RouteTable {
    pub associations: Vec<RouteTableAssociation>,
    pub propagating_vgws: Vec<serde_json::Value>,
    pub route_table_id: String,
    pub routes: Vec<Route>,
    pub vpc_id: String,
    pub owner_id: String,
}

/// The main association of a route table.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RouteTableAssociation {
    pub main: bool,
    pub route_table_association_id: String,
    pub route_table_id: String,
    pub association_state: CidrBlockState,
}

/// One route.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Route {
    pub destination_cidr_block: String,
    pub gateway_id: String,
    pub origin: String,
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
];

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
];

const IGW_FILTERS: &[&str] = &[
    "attachment.state",
    "attachment.vpc-id",
    "internet-gateway-id",
    "owner-id",
    "tag-key",
];

const ROUTE_TABLE_FILTERS: &[&str] = &[
    "association.main",
    "association.route-table-association-id",
    "association.route-table-id",
    "owner-id",
    "route-table-id",
    "route.destination-cidr-block",
    "route.gateway-id",
    "route.origin",
    "route.state",
    "vpc-id",
    "tag-key",
];

const ACCOUNT_ATTRIBUTES: &[&str] = &[
    "supported-platforms",
    "default-vpc",
    "max-instances",
    "vpc-max-security-groups-per-interface",
    "max-elastic-ips",
    "vpc-max-elastic-ips",
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
        availability_zone_id: super::regions::zone_id(&s.region),
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
                    "dhcp-options-id" => vec![render_vpc(db, &v)
                        .map(|r| r.dhcp_options_id)
                        .unwrap_or_default()],
                    "is-default" | "isDefault" => vec![v.is_default.to_string()],
                    "owner-id" => vec![v.owner_id.clone()],
                    "vpc-id" => vec![v.vpc_id.clone()],
                    n => filter::tag_values(&tags, n).unwrap_or_default(),
                });
                if keep {
                    vpcs.push(render_vpc(db, &v)?);
                }
            }
            let (vpcs, next_token) = super::paging::page(vpcs, &paging, 5, 1000)?;
            Ok(DescribeVpcsResult { vpcs, next_token })
        })
    }

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
            (None, Some(id)) if *id == super::regions::zone_id(&caller.region) => zones[0].clone(),
            (None, Some(id)) => {
                return Err(Error::invalid_value(format!(
                    "Value ({id}) for parameter availabilityZoneId is invalid. Subnets can currently only be created in the following availability zones: {}.",
                    super::regions::zone_id(&caller.region)
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
                    n => filter::tag_values(&tags, n).unwrap_or_default(),
                });
                if keep {
                    subnets.push(shown);
                }
            }
            let (subnets, next_token) = super::paging::page(subnets, &paging, 5, 1000)?;
            Ok(DescribeSubnetsResult {
                subnets,
                next_token,
            })
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

    /// `DescribeInternetGateways`: the gateways of the caller's VPCs (the default VPC has one).
    pub fn describe_internet_gateways(
        &mut self,
        caller: &Caller,
        req: DescribeInternetGatewaysRequest,
    ) -> Result<DescribeInternetGatewaysResult> {
        let paging = Paging::of(req.max_results, &req.next_token);
        filter::check_names(&req.filters, IGW_FILTERS)?;
        self.default_vpc(caller)?;
        self.store
            .read(|db| -> Result<DescribeInternetGatewaysResult> {
                let vpcs = db.vpcs(&caller.region, &caller.account)?;
                for id in &req.internet_gateway_ids {
                    if !vpcs
                        .iter()
                        .any(|v| v.internet_gateway_id.as_deref() == Some(id.as_str()))
                    {
                        return Err(Error::new(
                            ErrorCode::InvalidInternetGatewayIdNotFound,
                            format!("The internetGateway ID '{id}' does not exist"),
                        ));
                    }
                }
                let mut out = Vec::new();
                for v in &vpcs {
                    let Some(igw) = &v.internet_gateway_id else {
                        continue;
                    };
                    if !req.internet_gateway_ids.is_empty()
                        && !req.internet_gateway_ids.contains(igw)
                    {
                        continue;
                    }
                    let tags = db.tags_of(igw)?;
                    let keep = filter::matches(&req.filters, |name| match name {
                        "attachment.state" => vec!["available".into()],
                        "attachment.vpc-id" => vec![v.vpc_id.clone()],
                        "internet-gateway-id" => vec![igw.clone()],
                        "owner-id" => vec![v.owner_id.clone()],
                        n => filter::tag_values(&tags, n).unwrap_or_default(),
                    });
                    if keep {
                        out.push(InternetGateway {
                            attachments: vec![InternetGatewayAttachment {
                                state: "available".into(),
                                vpc_id: v.vpc_id.clone(),
                            }],
                            internet_gateway_id: igw.clone(),
                            owner_id: v.owner_id.clone(),
                            tags: tags_of(db, igw)?,
                        });
                    }
                }
                let (internet_gateways, next_token) = super::paging::page(out, &paging, 5, 1000)?;
                Ok(DescribeInternetGatewaysResult {
                    internet_gateways,
                    next_token,
                })
            })
    }

    /// `DescribeRouteTables`: each VPC's main table (its block routed locally,
    /// and everything else to its internet gateway when it has one).
    pub fn describe_route_tables(
        &mut self,
        caller: &Caller,
        req: DescribeRouteTablesRequest,
    ) -> Result<DescribeRouteTablesResult> {
        let paging = Paging::of(req.max_results, &req.next_token);
        filter::check_names(&req.filters, ROUTE_TABLE_FILTERS)?;
        self.default_vpc(caller)?;
        self.store.read(|db| -> Result<DescribeRouteTablesResult> {
            let vpcs = db.vpcs(&caller.region, &caller.account)?;
            for id in &req.route_table_ids {
                if !vpcs.iter().any(|v| v.main_route_table_id == *id) {
                    return Err(Error::new(
                        ErrorCode::InvalidRouteTableIdNotFound,
                        format!("The routeTable ID '{id}' does not exist"),
                    ));
                }
            }
            let mut out = Vec::new();
            for v in &vpcs {
                let rtb = &v.main_route_table_id;
                if !req.route_table_ids.is_empty() && !req.route_table_ids.contains(rtb) {
                    continue;
                }
                let mut routes = vec![Route {
                    destination_cidr_block: v.cidr_block.clone(),
                    gateway_id: "local".into(),
                    origin: "CreateRouteTable".into(),
                    state: "active".into(),
                }];
                if let Some(igw) = &v.internet_gateway_id {
                    routes.push(Route {
                        destination_cidr_block: "0.0.0.0/0".into(),
                        gateway_id: igw.clone(),
                        origin: "CreateRoute".into(),
                        state: "active".into(),
                    });
                }
                let association = ids::derived_id(IdKind::RouteTableAssociation, rtb);
                let tags = db.tags_of(rtb)?;
                let keep = filter::matches(&req.filters, |name| match name {
                    "association.main" => vec!["true".into()],
                    "association.route-table-association-id" => vec![association.clone()],
                    "association.route-table-id" | "route-table-id" => vec![rtb.clone()],
                    "owner-id" => vec![v.owner_id.clone()],
                    "route.destination-cidr-block" => routes
                        .iter()
                        .map(|r| r.destination_cidr_block.clone())
                        .collect(),
                    "route.gateway-id" => routes.iter().map(|r| r.gateway_id.clone()).collect(),
                    "route.origin" => routes.iter().map(|r| r.origin.clone()).collect(),
                    "route.state" => vec!["active".into()],
                    "vpc-id" => vec![v.vpc_id.clone()],
                    n => filter::tag_values(&tags, n).unwrap_or_default(),
                });
                if keep {
                    out.push(RouteTable {
                        associations: vec![RouteTableAssociation {
                            main: true,
                            route_table_association_id: association,
                            route_table_id: rtb.clone(),
                            association_state: CidrBlockState {
                                state: "associated".into(),
                            },
                        }],
                        propagating_vgws: Vec::new(),
                        route_table_id: rtb.clone(),
                        routes,
                        vpc_id: v.vpc_id.clone(),
                        owner_id: v.owner_id.clone(),
                    });
                }
            }
            let (route_tables, next_token) = super::paging::page(out, &paging, 5, 100)?;
            Ok(DescribeRouteTablesResult {
                route_tables,
                next_token,
            })
        })
    }
}

/// A block given by the caller, or `InvalidParameterValue` naming the parameter.
fn parse_block(cidr: &str, parameter: &str) -> Result<Block> {
    Block::parse(cidr).ok_or_else(|| {
        Error::invalid_value(format!(
            "Value ({cidr}) for parameter {parameter} is invalid. This is not a valid CIDR block."
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_parse_contain_and_overlap() {
        let vpc = Block::parse("172.31.0.0/16").unwrap();
        let a = Block::parse("172.31.0.0/20").unwrap();
        let b = Block::parse("172.31.16.0/20").unwrap();
        assert!(vpc.contains(&a) && vpc.contains(&b));
        assert!(!a.overlaps(&b));
        assert!(a.overlaps(&Block::parse("172.31.8.0/24").unwrap()));
        assert!(!a.contains(&vpc));
        assert_eq!(Block::parse("172.31.0.1/16"), None, "host bits set");
        assert_eq!(Block::parse("172.31.0.0/33"), None);
        assert_eq!(Block::parse("172.31.0.0/016"), None);
        assert_eq!(Block::parse("nonsense"), None);
        let usable: Vec<_> = Block::parse("10.0.0.0/28").unwrap().usable().collect();
        assert_eq!(usable.first(), Some(&Ipv4Addr::new(10, 0, 0, 4)));
        assert_eq!(usable.last(), Some(&Ipv4Addr::new(10, 0, 0, 14)));
        assert_eq!(
            usable.len() as u64,
            Block::parse("10.0.0.0/28").unwrap().usable_count()
        );
        assert_eq!(a.to_string(), "172.31.0.0/20");
    }
}
