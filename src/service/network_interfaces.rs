//! Network interfaces: an instance's place in its VPC. A launch resolves
//! where the instance goes (subnet, groups, addresses) from RunInstances'
//! members with EC2's rules and errors, and gives it one interface
//! (`eni-…`, MAC `0a:…`) with a private address from its subnet (never the
//! first four or the last, as on AWS) and, when the subnet maps public
//! addresses or `AssociatePublicIpAddress` says so, a public address.
//!
//! Public addresses are loopback addresses the host reaches the guest at,
//! one per instance from [`PUBLIC_BLOCK`] (never 127.0.0.1); like EC2's
//! non-Elastic addresses they are released at stop and terminate and a new
//! one is taken at the next start. Private addresses and the interface go
//! at terminate.
//!
//! From these records the service resolves a guest's
//! [`VpcAttachment`] (its groups' rules with referenced groups expanded to
//! their members' addresses) for the supervisor at each boot, and hands a
//! new one to the data plane ([`crate::network::apply_vpc_rules`]) for
//! every running instance a rule or membership change affects.
//!
//! # Crashes
//!
//! A launch records each interface (the intent) in one transaction while
//! it holds the new instance's object lock, before the instance record is
//! committed; unique indexes make two allocations of one address
//! impossible. An interface whose instance has no record (the launch died
//! or failed) or is terminated, and whose instance lock is free, is
//! garbage: [`Service::sweep_interfaces`] removes it (and drops the public
//! address of a stopped instance) before anything counts or allocates
//! addresses.
//!
//! Rooms: this file holds addresses, names and the sweep; `launch`
//! places a launch's instances, `attachments` resolves what the data
//! plane and IMDS get and re-applies rules after changes,
//! `instance_fields` shows an instance's network in `DescribeInstances`,
//! `describe` answers `DescribeNetworkInterfaces`.

use super::filter;
use super::object_lock;
use super::paging::Paging;
use super::security_groups::{group_by_name, owned_group};
use super::shapes::Filter;
use super::vpc::{owned_subnet, tags_of, zones, Block};
use super::{Caller, Error, ErrorCode, Result, Service};
use crate::domain::InstanceStateName;
use crate::ids::{self, IdKind};
use crate::network::{FlowRule, Protocol, VpcAttachment};
use crate::store::vpc::{NetworkInterfaceState, SecurityGroupState, SubnetState, VpcState};
use crate::store::Db;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;

mod attachments;
mod describe;
mod instance_fields;
mod launch;

pub use describe::{DescribeNetworkInterfacesRequest, DescribeNetworkInterfacesResult};
pub use instance_fields::{
    add_instance_fields, instance_filter_values, InstanceNetwork, INSTANCE_NETWORK_FILTERS,
};
pub use launch::{
    InstanceNetworkInterfaceSpecification, LaunchNetworkInput, LaunchNetworkPlan, Placement,
};

/// Where public addresses come from: 127.100.0.0/16 (loopback, so the
/// host reaches them and nothing else does).
pub const PUBLIC_BLOCK: &str = "127.100.0.0/16";

/// Security groups per interface, as EC2's default quota.
const MAX_GROUPS: usize = 5;

fn parse_ip(s: &str) -> Result<Ipv4Addr> {
    s.parse().map_err(|_| {
        Error::invalid_value(format!(
            "Value ({s}) for parameter privateIpAddress is invalid. This is not a valid IPv4 address."
        ))
    })
}

/// The private DNS name EC2 gives an address in `region`.
pub(crate) fn private_dns_name(ip: &str, region: &str) -> String {
    let host = format!("ip-{}", ip.replace('.', "-"));
    if region == "us-east-1" {
        format!("{host}.ec2.internal")
    } else {
        format!("{host}.{region}.compute.internal")
    }
}

/// The public DNS name EC2 gives a public address in `region`.
pub(crate) fn public_dns_name(ip: &str, region: &str) -> String {
    let host = format!("ec2-{}", ip.replace('.', "-"));
    if region == "us-east-1" {
        format!("{host}.compute-1.amazonaws.com")
    } else {
        format!("{host}.{region}.compute.amazonaws.com")
    }
}

fn new_mac() -> String {
    let b: [u8; 5] = rand::random();
    format!(
        "0a:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[0], b[1], b[2], b[3], b[4]
    )
}

/// The lowest free public address.
fn allocate_public(db: &Db) -> Result<String> {
    let used: BTreeSet<String> = db
        .all_network_interfaces()?
        .into_iter()
        .filter_map(|n| n.public_ip)
        .collect();
    let block = Block::parse(PUBLIC_BLOCK).expect("valid");
    (block.first()..=block.last())
        .map(Ipv4Addr::from)
        .filter(|a| !matches!(a.octets()[3], 0 | 255))
        .map(|a| a.to_string())
        .find(|a| !used.contains(a))
        .ok_or_else(|| {
            Error::new(
                ErrorCode::InsufficientInstanceCapacity,
                format!("Every public address of {PUBLIC_BLOCK} is in use"),
            )
        })
}

fn in_use_error(ip: Ipv4Addr) -> Error {
    Error::new(
        ErrorCode::InvalidIpAddressInUse,
        format!("Address {ip} is in use."),
    )
}

impl Service {
    /// Remove interfaces whose launch died or whose instance is terminated,
    /// and the public addresses of stopped instances (see the module doc).
    pub(crate) fn sweep_interfaces(&mut self) -> Result<()> {
        self.sweep_interfaces_except(&[])
    }

    fn sweep_interfaces_except(&mut self, keep: &[String]) -> Result<()> {
        let stale = |db: &Db, e: &NetworkInterfaceState| -> Result<Option<bool>> {
            let Some(id) = &e.instance_id else {
                return Ok(None);
            };
            Ok(match db.instance(id)? {
                None => Some(true),
                Some(i) if i.state == InstanceStateName::Terminated => Some(true),
                Some(i) if i.state == InstanceStateName::Stopped && e.public_ip.is_some() => {
                    Some(false)
                }
                Some(_) => None,
            })
        };
        let candidates: Vec<NetworkInterfaceState> = self.store.read(|db| -> Result<Vec<_>> {
            let mut out = Vec::new();
            for e in db.all_network_interfaces()? {
                if stale(db, &e)?.is_some() {
                    out.push(e);
                }
            }
            Ok(out)
        })?;
        for e in candidates {
            let Some(instance_id) = e.instance_id.clone() else {
                continue;
            };
            if keep.contains(&instance_id) {
                continue;
            }
            // A lock held elsewhere: its launch or stop is still going on.
            let Some(_lock) = object_lock::try_lock(&self.paths, &instance_id)? else {
                continue;
            };
            self.store.write(|db| -> Result<()> {
                match stale(db, &e)? {
                    Some(true) => {
                        for t in db.tags_of(&e.network_interface_id)? {
                            db.delete_tag(&e.network_interface_id, &t.key, None)?;
                        }
                        db.delete_network_interface(&e.network_interface_id)
                    }
                    Some(false) => db.set_public_ip(&e.network_interface_id, None),
                    None => Ok(()),
                }
                .map_err(Error::from)
            })?;
        }
        Ok(())
    }

    /// After a stop or terminate settled: drop the public address (a new
    /// one comes at the next start), and at terminate the interface with
    /// its private address. The caller holds the instance's lock.
    pub fn release_instance_addresses(
        &mut self,
        instance_id: &str,
        terminated: bool,
    ) -> Result<()> {
        let groups = self.store.write(|db| -> Result<Vec<String>> {
            let mut groups = Vec::new();
            for e in db.instance_network_interfaces(instance_id)? {
                if terminated {
                    for t in db.tags_of(&e.network_interface_id)? {
                        db.delete_tag(&e.network_interface_id, &t.key, None)?;
                    }
                    db.delete_network_interface(&e.network_interface_id)?;
                    groups.extend(e.group_ids);
                } else if e.public_ip.is_some() {
                    db.set_public_ip(&e.network_interface_id, None)?;
                }
            }
            Ok(groups)
        })?;
        if terminated && !groups.is_empty() {
            self.apply_to_referencing(&groups, Some(instance_id));
        }
        Ok(())
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_ec2() {
        assert_eq!(
            private_dns_name("172.31.0.4", "us-east-1"),
            "ip-172-31-0-4.ec2.internal"
        );
        assert_eq!(
            private_dns_name("172.31.0.4", "eu-west-1"),
            "ip-172-31-0-4.eu-west-1.compute.internal"
        );
        assert_eq!(
            public_dns_name("127.100.0.1", "us-east-1"),
            "ec2-127-100-0-1.compute-1.amazonaws.com"
        );
        assert_eq!(
            public_dns_name("127.100.0.1", "eu-west-1"),
            "ec2-127-100-0-1.eu-west-1.compute.amazonaws.com"
        );
        let mac = new_mac();
        assert!(mac.starts_with("0a:") && mac.len() == 17, "{mac}");
    }
}
