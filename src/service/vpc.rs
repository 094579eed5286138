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
//!
//! Rooms: this file holds what they share (address blocks, ownership
//! checks, tags); `default_vpc` makes the default VPC and answers
//! `DescribeAccountAttributes`, `vpcs` and `subnets` keep the user's
//! own, `gateways` shows internet gateways and route tables.

use super::filter;
use super::paging::Paging;
use super::shapes::{Filter, Tag, TagSpecification};
use super::{now, Caller, Error, ErrorCode, Result, Service};
use crate::ids::{self, IdKind};
use crate::store::vpc::{SecurityGroupRuleState, SecurityGroupState, SubnetState, VpcState};
use crate::store::Db;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

mod default_vpc;
mod gateways;
mod subnets;
mod vpcs;

use default_vpc::insert_vpc_with_group;
pub use default_vpc::{
    AccountAttribute, AccountAttributeValue, DescribeAccountAttributesRequest,
    DescribeAccountAttributesResult,
};
pub use gateways::{
    DescribeInternetGatewaysRequest, DescribeInternetGatewaysResult, DescribeRouteTablesRequest,
    DescribeRouteTablesResult, InternetGateway, InternetGatewayAttachment, Route, RouteTable,
    RouteTableAssociation,
};
pub use subnets::{
    CreateSubnetRequest, CreateSubnetResult, DeleteSubnetRequest, DescribeSubnetsRequest,
    DescribeSubnetsResult, PrivateDnsNameOptionsOnLaunch, Subnet,
};
pub use vpcs::{
    CidrBlockState, CreateVpcRequest, CreateVpcResult, DeleteVpcRequest, DescribeVpcsRequest,
    DescribeVpcsResult, Vpc, VpcCidrBlockAssociation,
};

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
