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

/// Where public addresses come from: 127.100.0.0/16 (loopback, so the
/// host reaches them and nothing else does).
pub const PUBLIC_BLOCK: &str = "127.100.0.0/16";

/// Security groups per interface, as EC2's default quota.
const MAX_GROUPS: usize = 5;

// ----- RunInstances' network members -----

/// RunInstances' members that place an instance in a VPC (botocore's
/// names; the rest of the request is `RunInstancesInput`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct LaunchNetworkInput {
    #[serde(default)]
    pub security_group_ids: Vec<String>,
    #[serde(default)]
    pub security_groups: Vec<String>,
    #[serde(default)]
    pub subnet_id: Option<String>,
    #[serde(default)]
    pub private_ip_address: Option<String>,
    #[serde(default)]
    pub network_interfaces: Vec<InstanceNetworkInterfaceSpecification>,
    #[serde(default)]
    pub placement: Option<Placement>,
}

/// RunInstances' `NetworkInterfaces` item (device index 0 only).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct InstanceNetworkInterfaceSpecification {
    #[serde(default)]
    pub associate_public_ip_address: Option<bool>,
    #[serde(default)]
    pub delete_on_termination: Option<bool>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub device_index: Option<i64>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub network_interface_id: Option<String>,
    #[serde(default)]
    pub private_ip_address: Option<String>,
    #[serde(default)]
    pub subnet_id: Option<String>,
}

/// RunInstances' `Placement` (the zone; default tenancy only).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Placement {
    #[serde(default)]
    pub availability_zone: Option<String>,
    #[serde(default)]
    pub tenancy: Option<String>,
    #[serde(default)]
    pub group_name: Option<String>,
}

/// Where a launch puts its instances, resolved and checked before anything is made.
#[derive(Debug, Clone)]
pub struct LaunchNetworkPlan {
    vpc: VpcState,
    subnet: SubnetState,
    group_ids: Vec<String>,
    private_ip: Option<Ipv4Addr>,
    public: bool,
    description: String,
    /// Instances of this launch that have their interface already.
    attached: Vec<String>,
}

fn combination(message: &str) -> Error {
    Error::new(ErrorCode::InvalidParameterCombination, message)
}

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

/// An instance's network as describe-instances shows it.
#[derive(Debug, Clone)]
pub struct InstanceNetwork {
    pub(crate) eni: NetworkInterfaceState,
    /// (id, name) of each group.
    pub(crate) groups: Vec<(String, String)>,
}

/// Filters of DescribeInstances this module answers.
pub const INSTANCE_NETWORK_FILTERS: &[&str] = &[
    "vpc-id",
    "subnet-id",
    "private-ip-address",
    "private-dns-name",
    "ip-address",
    "dns-name",
    "instance.group-id",
    "instance.group-name",
    "group-id",
    "group-name",
    "source-dest-check",
    "association.public-ip",
    "network-interface.network-interface-id",
    "network-interface.subnet-id",
    "network-interface.vpc-id",
    "network-interface.mac-address",
    "network-interface.status",
    "network-interface.source-dest-check",
    "network-interface.group-id",
    "network-interface.group-name",
    "network-interface.private-dns-name",
    "network-interface.description",
    "network-interface.addresses.private-ip-address",
    "network-interface.addresses.primary",
    "network-interface.association.public-ip",
    "network-interface.attachment.attachment-id",
    "network-interface.attachment.device-index",
    "network-interface.attachment.status",
    "network-interface.attachment.delete-on-termination",
];

/// An instance's values for one of [`INSTANCE_NETWORK_FILTERS`]; `None`
/// for other names.
pub fn instance_filter_values(
    net: Option<&InstanceNetwork>,
    region: &str,
    name: &str,
) -> Option<Vec<String>> {
    if !INSTANCE_NETWORK_FILTERS.contains(&name) {
        return None;
    }
    let Some(n) = net else {
        return Some(Vec::new());
    };
    let e = &n.eni;
    let one = |s: &str| vec![s.to_string()];
    Some(match name {
        "vpc-id" | "network-interface.vpc-id" => one(&e.vpc_id),
        "subnet-id" | "network-interface.subnet-id" => one(&e.subnet_id),
        "private-ip-address" | "network-interface.addresses.private-ip-address" => {
            one(&e.private_ip)
        }
        "private-dns-name" | "network-interface.private-dns-name" => {
            one(&private_dns_name(&e.private_ip, region))
        }
        "ip-address" | "association.public-ip" | "network-interface.association.public-ip" => {
            e.public_ip.iter().cloned().collect()
        }
        "dns-name" => e
            .public_ip
            .iter()
            .map(|p| public_dns_name(p, region))
            .collect(),
        "instance.group-id" | "group-id" | "network-interface.group-id" => {
            n.groups.iter().map(|(id, _)| id.clone()).collect()
        }
        "instance.group-name" | "group-name" | "network-interface.group-name" => {
            n.groups.iter().map(|(_, name)| name.clone()).collect()
        }
        "source-dest-check"
        | "network-interface.source-dest-check"
        | "network-interface.addresses.primary" => one("true"),
        "network-interface.network-interface-id" => one(&e.network_interface_id),
        "network-interface.mac-address" => one(&e.mac),
        "network-interface.status" => one("in-use"),
        "network-interface.description" => one(&e.description),
        "network-interface.attachment.attachment-id" => e.attachment_id.iter().cloned().collect(),
        "network-interface.attachment.device-index" => one(&e.device_index.to_string()),
        "network-interface.attachment.status" => one("attached"),
        "network-interface.attachment.delete-on-termination" => {
            one(&e.delete_on_termination.to_string())
        }
        _ => Vec::new(),
    })
}

/// Add EC2's network fields to an instance as describe-instances renders it.
pub fn add_instance_fields(
    shape: &mut crate::service::instances::Instance,
    net: &InstanceNetwork,
    region: &str,
) {
    let e = &net.eni;
    let private_dns = private_dns_name(&e.private_ip, region);
    let public_dns = e
        .public_ip
        .as_deref()
        .map(|p| public_dns_name(p, region))
        .unwrap_or_default();
    let groups: Vec<Value> = net
        .groups
        .iter()
        .map(|(id, name)| json!({"GroupId": id, "GroupName": name}))
        .collect();
    let association = e
        .public_ip
        .as_ref()
        .map(|p| json!({"IpOwnerId": "amazon", "PublicDnsName": public_dns, "PublicIp": p}));
    let mut address = json!({
        "Primary": true,
        "PrivateDnsName": private_dns,
        "PrivateIpAddress": e.private_ip,
    });
    let mut interface = json!({
        "Attachment": {
            "AttachTime": e.attach_time,
            "AttachmentId": e.attachment_id,
            "DeleteOnTermination": e.delete_on_termination,
            "DeviceIndex": e.device_index,
            "Status": "attached",
            "NetworkCardIndex": 0,
        },
        "Description": e.description,
        "Groups": groups,
        "Ipv6Addresses": [],
        "MacAddress": e.mac,
        "NetworkInterfaceId": e.network_interface_id,
        "OwnerId": e.owner_id,
        "PrivateDnsName": private_dns,
        "PrivateIpAddress": e.private_ip,
        "SourceDestCheck": true,
        "Status": "in-use",
        "SubnetId": e.subnet_id,
        "VpcId": e.vpc_id,
        "InterfaceType": "interface",
    });
    if let Some(a) = &association {
        address["Association"] = a.clone();
        interface["Association"] = a.clone();
    }
    interface["PrivateIpAddresses"] = json!([address]);
    shape.vpc_id = Some(e.vpc_id.clone());
    shape.subnet_id = Some(e.subnet_id.clone());
    shape.private_ip_address = e.private_ip.clone();
    shape.private_dns_name = private_dns;
    shape.public_dns_name = public_dns;
    shape.public_ip_address = e.public_ip.clone();
    shape.security_groups = net
        .groups
        .iter()
        .map(|(id, name)| crate::service::instances::GroupIdentifier {
            group_id: id.clone(),
            group_name: name.clone(),
        })
        .collect();
    shape.source_dest_check = Some(true);
    shape.network_interfaces = vec![interface];
}

/// What the data plane needs of one interface.
fn attachment_of(db: &Db, e: &NetworkInterfaceState) -> Result<VpcAttachment> {
    let vpc = db.vpc(&e.vpc_id)?.ok_or_else(|| {
        Error::internal(format!(
            "VPC {} of {} is gone",
            e.vpc_id, e.network_interface_id
        ))
    })?;
    let subnet = db.subnet(&e.subnet_id)?.ok_or_else(|| {
        Error::internal(format!(
            "Subnet {} of {} is gone",
            e.subnet_id, e.network_interface_id
        ))
    })?;
    let mut members: HashMap<String, Vec<String>> = HashMap::new();
    let (mut ingress, mut egress) = (Vec::new(), Vec::new());
    for g in &e.group_ids {
        for r in db.security_group_rules(g)? {
            let peers = match (&r.cidr_ipv4, &r.referenced_group_id) {
                (Some(c), _) => vec![c.clone()],
                (None, Some(peer)) => {
                    if !members.contains_key(peer) {
                        let mut m: Vec<String> = db
                            .network_interfaces_in_group(peer)?
                            .into_iter()
                            .filter(|n| n.instance_id.is_some())
                            .map(|n| format!("{}/32", n.private_ip))
                            .collect();
                        m.sort();
                        members.insert(peer.clone(), m);
                    }
                    members[peer].clone()
                }
                (None, None) => Vec::new(),
            };
            if peers.is_empty() {
                continue;
            }
            let protocol = match r.ip_protocol.as_str() {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                "icmp" => Protocol::Icmp,
                _ => Protocol::All,
            };
            let port = |p: Option<i64>| p.and_then(|p| u16::try_from(p).ok());
            let rule = FlowRule {
                protocol,
                from_port: if protocol == Protocol::All {
                    None
                } else {
                    port(r.from_port)
                },
                to_port: if protocol == Protocol::All {
                    None
                } else {
                    port(r.to_port)
                },
                peers,
            };
            let list = if r.is_egress {
                &mut egress
            } else {
                &mut ingress
            };
            if !list.contains(&rule) {
                list.push(rule);
            }
        }
    }
    Ok(VpcAttachment {
        vpc_id: vpc.vpc_id.clone(),
        vpc_cidr: vpc.cidr_block.clone(),
        subnet_id: subnet.subnet_id.clone(),
        subnet_cidr: subnet.cidr_block.clone(),
        network_interface_id: e.network_interface_id.clone(),
        private_ip: parse_ip(&e.private_ip)?,
        mac: e.mac.clone(),
        public_ip: e.public_ip.as_deref().map(parse_ip).transpose()?,
        internet_gateway: vpc.internet_gateway_id.is_some(),
        ingress,
        egress,
    })
}

// ----- DescribeNetworkInterfaces -----

/// `DescribeNetworkInterfaces`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DescribeNetworkInterfacesRequest {
    #[serde(default)]
    pub network_interface_ids: Vec<String>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub max_results: Option<i64>,
    #[serde(default)]
    pub next_token: Option<String>,
    #[serde(default)]
    pub include_managed_resources: Option<bool>,
}

/// `DescribeNetworkInterfaces`' result (interfaces in EC2's shape).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeNetworkInterfacesResult {
    pub network_interfaces: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

const ENI_FILTERS: &[&str] = &[
    "addresses.private-ip-address",
    "addresses.primary",
    "association.public-ip",
    "association.public-dns-name",
    "attachment.attachment-id",
    "attachment.instance-id",
    "attachment.instance-owner-id",
    "attachment.device-index",
    "attachment.status",
    "attachment.delete-on-termination",
    "availability-zone",
    "description",
    "group-id",
    "group-name",
    "interface-type",
    "mac-address",
    "network-interface-id",
    "owner-id",
    "private-ip-address",
    "private-dns-name",
    "requester-managed",
    "source-dest-check",
    "status",
    "subnet-id",
    "vpc-id",
    "tag-key",
];

fn render_interface(db: &Db, e: &NetworkInterfaceState, region: &str) -> Result<Value> {
    let private_dns = private_dns_name(&e.private_ip, region);
    let groups: Vec<Value> = e
        .group_ids
        .iter()
        .map(|g| -> Result<Value> {
            let name = db
                .security_group(g)?
                .map(|g| g.group_name)
                .unwrap_or_default();
            Ok(json!({"GroupId": g, "GroupName": name}))
        })
        .collect::<Result<_>>()?;
    let association = e.public_ip.as_ref().map(|p| {
        json!({"IpOwnerId": "amazon", "PublicDnsName": public_dns_name(p, region), "PublicIp": p})
    });
    let mut address =
        json!({"Primary": true, "PrivateDnsName": private_dns, "PrivateIpAddress": e.private_ip});
    let mut v = json!({
        "AvailabilityZone": e.availability_zone,
        "Description": e.description,
        "Groups": groups,
        "InterfaceType": "interface",
        "Ipv6Addresses": [],
        "MacAddress": e.mac,
        "NetworkInterfaceId": e.network_interface_id,
        "OwnerId": e.owner_id,
        "PrivateDnsName": private_dns,
        "PrivateIpAddress": e.private_ip,
        "RequesterManaged": false,
        "SourceDestCheck": true,
        "Status": "in-use",
        "SubnetId": e.subnet_id,
        "TagSet": tags_of(db, &e.network_interface_id)?,
        "VpcId": e.vpc_id,
    });
    if let Some(instance) = &e.instance_id {
        v["Attachment"] = json!({
            "AttachTime": e.attach_time,
            "AttachmentId": e.attachment_id,
            "DeleteOnTermination": e.delete_on_termination,
            "DeviceIndex": e.device_index,
            "NetworkCardIndex": 0,
            "InstanceId": instance,
            "InstanceOwnerId": e.owner_id,
            "Status": "attached",
        });
    }
    if let Some(a) = &association {
        address["Association"] = a.clone();
        v["Association"] = a.clone();
    }
    v["PrivateIpAddresses"] = json!([address]);
    Ok(v)
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

    /// Resolve and check where a launch of `count` instances goes
    /// (RunInstances' network members), before anything is made.
    pub fn plan_launch_network(
        &mut self,
        caller: &Caller,
        input: &LaunchNetworkInput,
        count: u32,
    ) -> Result<LaunchNetworkPlan> {
        // Packer 1.6 sends `SubnetId=` (empty) for "the default subnet".
        let mut subnet_id = input.subnet_id.clone().filter(|s| !s.is_empty());
        let mut group_ids = input.security_group_ids.clone();
        let group_names = input.security_groups.clone();
        let mut private_ip = input.private_ip_address.clone();
        let mut public = None;
        let mut description = "Primary network interface".to_string();
        if !input.network_interfaces.is_empty() {
            if subnet_id.is_some() {
                return Err(combination(
                    "Network interfaces and an instance-level subnet ID may not be specified on the same request",
                ));
            }
            if !group_ids.is_empty() || !group_names.is_empty() {
                return Err(combination(
                    "Network interfaces and an instance-level security groups may not be specified on the same request",
                ));
            }
            if private_ip.is_some() {
                return Err(combination(
                    "Network interfaces and an instance-level private IP address may not be specified on the same request",
                ));
            }
            let [ni] = input.network_interfaces.as_slice() else {
                return Err(Error::new(
                    ErrorCode::UnsupportedOperation,
                    "amirun attaches one network interface per instance (device index 0)",
                ));
            };
            match ni.device_index {
                Some(0) => {}
                None => return Err(Error::missing("NetworkInterface.DeviceIndex")),
                Some(n) => {
                    return Err(Error::new(
                        ErrorCode::UnsupportedOperation,
                        format!("amirun attaches one network interface per instance (device index 0, not {n})"),
                    ))
                }
            }
            if ni.network_interface_id.is_some() {
                return Err(Error::new(
                    ErrorCode::UnsupportedOperation,
                    "amirun does not attach existing network interfaces at launch; give SubnetId and Groups",
                ));
            }
            if ni.delete_on_termination == Some(false) {
                return Err(Error::new(
                    ErrorCode::UnsupportedOperation,
                    "amirun deletes the interfaces it makes at launch when the instance terminates (DeleteOnTermination must be true)",
                ));
            }
            subnet_id = ni.subnet_id.clone();
            group_ids = ni.groups.clone();
            private_ip = ni.private_ip_address.clone();
            public = ni.associate_public_ip_address;
            if let Some(d) = &ni.description {
                description = d.clone();
            }
        }
        let zone = match &input.placement {
            Some(p) => {
                // SDKs send empty strings for members left unset (Packer does).
                if p.tenancy
                    .as_deref()
                    .is_some_and(|t| !t.is_empty() && t != "default")
                {
                    return Err(Error::invalid_value(
                        "amirun runs only default tenancy (Placement.Tenancy)",
                    ));
                }
                if p.group_name.as_deref().is_some_and(|g| !g.is_empty()) {
                    return Err(Error::new(
                        ErrorCode::UnsupportedOperation,
                        "amirun has no placement groups (Placement.GroupName)",
                    ));
                }
                p.availability_zone.clone().filter(|z| !z.is_empty())
            }
            None => None,
        };
        if let Some(z) = &zone {
            if !zones(&caller.region).contains(z) {
                return Err(Error::invalid_value(format!(
                    "Invalid availability zone: [{z}]"
                )));
            }
        }
        let private_ip = private_ip.as_deref().map(parse_ip).transpose()?;
        if private_ip.is_some() && count > 1 {
            return Err(combination(
                "A private IP address can be given only when launching one instance (MaxCount 1)",
            ));
        }
        if group_ids.len() + group_names.len() > MAX_GROUPS {
            return Err(Error::new(
                ErrorCode::InvalidParameterValue,
                format!("At most {MAX_GROUPS} security groups can be given per network interface"),
            ));
        }
        let default_vpc = self.default_vpc(caller)?;
        self.sweep_interfaces()?;
        let plan = self.store.read(|db| -> Result<LaunchNetworkPlan> {
            let subnet = match &subnet_id {
                Some(id) => owned_subnet(db, caller, id)?,
                None => {
                    let vpc = default_vpc.as_ref().ok_or_else(|| {
                        Error::new(
                            ErrorCode::VpcIdNotSpecified,
                            "No default VPC for this user; give a SubnetId",
                        )
                    })?;
                    let zone = zone.clone().unwrap_or_else(|| zones(&caller.region)[0].clone());
                    db.subnets_of_vpc(&vpc.vpc_id)?
                        .into_iter()
                        .find(|s| s.default_for_az && s.availability_zone == zone)
                        .ok_or_else(|| {
                            Error::new(
                                ErrorCode::VpcIdNotSpecified,
                                format!("No default subnet for availability zone: '{zone}'; give a SubnetId"),
                            )
                        })?
                }
            };
            if let Some(z) = &zone {
                if *z != subnet.availability_zone {
                    return Err(Error::invalid_value(format!(
                        "Value ({z}) for parameter availabilityZone is invalid. Subnet '{}' is in availability zone {}",
                        subnet.subnet_id, subnet.availability_zone
                    )));
                }
            }
            let vpc = db.vpc(&subnet.vpc_id)?.ok_or_else(|| {
                Error::internal(format!("The VPC of {} is gone", subnet.subnet_id))
            })?;
            let mut groups: Vec<SecurityGroupState> = Vec::new();
            for id in &group_ids {
                groups.push(owned_group(db, caller, id)?);
            }
            if !group_names.is_empty() {
                if !vpc.is_default {
                    return Err(combination(
                        "The parameter groupName cannot be used with the parameter subnet",
                    ));
                }
                for name in &group_names {
                    groups.push(group_by_name(db, Some(&vpc), name)?);
                }
            }
            if let Some(g) = groups.iter().find(|g| g.vpc_id != vpc.vpc_id) {
                return Err(Error::new(
                    ErrorCode::InvalidParameter,
                    format!(
                        "Security group {} and subnet {} belong to different networks.",
                        g.group_id, subnet.subnet_id
                    ),
                ));
            }
            let mut ids_: Vec<String> = Vec::new();
            for g in groups {
                if !ids_.contains(&g.group_id) {
                    ids_.push(g.group_id);
                }
            }
            if ids_.is_empty() {
                ids_.push(vpc.default_group_id.clone());
            }
            if let Some(ip) = private_ip {
                let block = Block::parse(&subnet.cidr_block).expect("stored blocks are valid");
                if !block.contains_addr(ip) {
                    return Err(Error::invalid_value(format!(
                        "Address {ip} does not fall within the subnet's address range"
                    )));
                }
                if !block.usable().any(|a| a == ip) {
                    return Err(Error::invalid_value(format!(
                        "Address {ip} is reserved by AWS in subnet {} (the first four and the last address)",
                        subnet.subnet_id
                    )));
                }
                if db
                    .all_network_interfaces()?
                    .iter()
                    .any(|n| n.subnet_id == subnet.subnet_id && n.private_ip == ip.to_string())
                {
                    return Err(in_use_error(ip));
                }
            }
            Ok(LaunchNetworkPlan {
                public: public.unwrap_or(subnet.map_public_ip_on_launch),
                vpc,
                subnet,
                group_ids: ids_,
                private_ip,
                description: description.clone(),
                attached: Vec::new(),
            })
        })?;
        Ok(plan)
    }

    /// Give a launching instance its interface (the caller holds the
    /// instance's lock until its record is committed).
    pub fn attach_launch_interface(
        &mut self,
        caller: &Caller,
        plan: &mut LaunchNetworkPlan,
        instance_id: &str,
        launch_time: &str,
    ) -> Result<()> {
        self.sweep_interfaces_except(&plan.attached)?;
        let block = Block::parse(&plan.subnet.cidr_block).expect("stored blocks are valid");
        let p = &*plan;
        self.store.write(|db| -> Result<()> {
            let all = db.all_network_interfaces()?;
            let used: BTreeSet<String> = all
                .iter()
                .filter(|n| n.subnet_id == p.subnet.subnet_id)
                .map(|n| n.private_ip.clone())
                .collect();
            let ip = match p.private_ip {
                Some(ip) if used.contains(&ip.to_string()) => return Err(in_use_error(ip)),
                Some(ip) => ip,
                None => block.usable().find(|a| !used.contains(&a.to_string())).ok_or_else(|| {
                    Error::new(
                        ErrorCode::InsufficientFreeAddressesInSubnet,
                        format!(
                            "There are not enough free addresses in subnet '{}' to satisfy the requested number of instances.",
                            p.subnet.subnet_id
                        ),
                    )
                })?,
            };
            let macs: BTreeSet<&str> = all.iter().map(|n| n.mac.as_str()).collect();
            let mac = std::iter::repeat_with(new_mac)
                .find(|m| !macs.contains(m.as_str()))
                .expect("an unused MAC");
            let public_ip = if p.public { Some(allocate_public(db)?) } else { None };
            db.insert_network_interface(&NetworkInterfaceState {
                network_interface_id: ids::new_id(IdKind::NetworkInterface),
                region: caller.region.clone(),
                owner_id: caller.account.to_string(),
                vpc_id: p.vpc.vpc_id.clone(),
                subnet_id: p.subnet.subnet_id.clone(),
                availability_zone: p.subnet.availability_zone.clone(),
                private_ip: ip.to_string(),
                mac,
                public_ip,
                wants_public_ip: p.public,
                description: p.description.clone(),
                instance_id: Some(instance_id.to_string()),
                attachment_id: Some(ids::new_id(IdKind::NetworkInterfaceAttachment)),
                device_index: 0,
                attach_time: launch_time.to_string(),
                delete_on_termination: true,
                group_ids: p.group_ids.clone(),
            })?;
            Ok(())
        })?;
        plan.attached.push(instance_id.to_string());
        Ok(())
    }

    /// The VPC attachment for the next boot of an instance: a public
    /// address is taken now if its interface wants one. `None` for an
    /// instance without an interface (launched before VPCs existed).
    pub fn vpc_attachment_for_boot(&mut self, instance_id: &str) -> Result<Option<VpcAttachment>> {
        let attachment = self.store.write(|db| -> Result<Option<VpcAttachment>> {
            let Some(mut e) = db
                .instance_network_interfaces(instance_id)?
                .into_iter()
                .next()
            else {
                return Ok(None);
            };
            if e.wants_public_ip && e.public_ip.is_none() {
                let ip = allocate_public(db)?;
                db.set_public_ip(&e.network_interface_id, Some(&ip))?;
                e.public_ip = Some(ip);
            }
            attachment_of(db, &e).map(Some)
        })?;
        if attachment.is_some() {
            // Peers whose rules name this instance's groups now admit it.
            self.apply_after_membership_change(instance_id, &[], false);
        }
        Ok(attachment)
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

    /// The network of each of the caller's instances that has one.
    pub fn instance_networks(
        &mut self,
        caller: &Caller,
    ) -> Result<HashMap<String, InstanceNetwork>> {
        self.store
            .read(|db| -> Result<HashMap<String, InstanceNetwork>> {
                let names: HashMap<String, String> = db
                    .security_groups(&caller.region, &caller.account)?
                    .into_iter()
                    .map(|g| (g.group_id, g.group_name))
                    .collect();
                let mut out = HashMap::new();
                for e in db.network_interfaces(&caller.region, &caller.account)? {
                    let Some(id) = e.instance_id.clone() else {
                        continue;
                    };
                    let groups = e
                        .group_ids
                        .iter()
                        .map(|g| (g.clone(), names.get(g).cloned().unwrap_or_default()))
                        .collect();
                    out.entry(id).or_insert(InstanceNetwork { eni: e, groups });
                }
                Ok(out)
            })
    }

    /// What IMDS tells a guest about its network (`None` without an interface).
    pub(crate) fn imds_network(
        &mut self,
        instance_id: &str,
        region: &str,
    ) -> Result<Option<crate::metadata::imds::ImdsVpc>> {
        self.store
            .read(|db| -> Result<Option<crate::metadata::imds::ImdsVpc>> {
                let Some(e) = db
                    .instance_network_interfaces(instance_id)?
                    .into_iter()
                    .next()
                else {
                    return Ok(None);
                };
                let vpc = db.vpc(&e.vpc_id)?;
                let subnet = db.subnet(&e.subnet_id)?;
                let mut names = Vec::new();
                for g in &e.group_ids {
                    names.push(
                        db.security_group(g)?
                            .map(|g| g.group_name)
                            .unwrap_or_default(),
                    );
                }
                Ok(Some(crate::metadata::imds::ImdsVpc {
                    vpc_id: e.vpc_id.clone(),
                    vpc_cidr: vpc.map(|v| v.cidr_block).unwrap_or_default(),
                    subnet_id: e.subnet_id.clone(),
                    subnet_cidr: subnet.map(|s| s.cidr_block).unwrap_or_default(),
                    interface_id: e.network_interface_id.clone(),
                    local_ipv4: e.private_ip.clone(),
                    local_hostname: private_dns_name(&e.private_ip, region),
                    mac: e.mac.clone(),
                    security_group_ids: e.group_ids.clone(),
                    security_groups: names,
                    public_ipv4: e.public_ip.clone(),
                    public_hostname: e.public_ip.as_deref().map(|p| public_dns_name(p, region)),
                }))
            })
    }

    /// `DescribeNetworkInterfaces`.
    pub fn describe_network_interfaces(
        &mut self,
        caller: &Caller,
        req: DescribeNetworkInterfacesRequest,
    ) -> Result<DescribeNetworkInterfacesResult> {
        let paging = Paging::of(req.max_results, &req.next_token);
        filter::check_names(&req.filters, ENI_FILTERS)?;
        for id in &req.network_interface_ids {
            if !ids::is_well_formed(IdKind::NetworkInterface, id) {
                return Err(Error::new(
                    ErrorCode::InvalidNetworkInterfaceIdMalformed,
                    format!("Invalid id: \"{id}\" (expecting \"eni-...\")"),
                ));
            }
        }
        self.default_vpc(caller)?;
        self.sweep_interfaces()?;
        self.store
            .read(|db| -> Result<DescribeNetworkInterfacesResult> {
                let all = db.network_interfaces(&caller.region, &caller.account)?;
                if let Some(missing) = req
                    .network_interface_ids
                    .iter()
                    .find(|id| !all.iter().any(|e| &e.network_interface_id == *id))
                {
                    return Err(Error::new(
                        ErrorCode::InvalidNetworkInterfaceIdNotFound,
                        format!("The networkInterface ID '{missing}' does not exist"),
                    ));
                }
                let mut out = Vec::new();
                for e in &all {
                    if !req.network_interface_ids.is_empty()
                        && !req.network_interface_ids.contains(&e.network_interface_id)
                    {
                        continue;
                    }
                    let tags = db.tags_of(&e.network_interface_id)?;
                    let names: Vec<String> = e
                        .group_ids
                        .iter()
                        .map(|g| {
                            db.security_group(g)
                                .map(|g| g.map(|g| g.group_name).unwrap_or_default())
                        })
                        .collect::<std::result::Result<_, _>>()?;
                    let region = &caller.region;
                    let keep = filter::matches(&req.filters, |name| {
                        let one = |s: &str| vec![s.to_string()];
                        match name {
                            "addresses.private-ip-address" | "private-ip-address" => {
                                one(&e.private_ip)
                            }
                            "addresses.primary" | "source-dest-check" => one("true"),
                            "association.public-ip" => e.public_ip.iter().cloned().collect(),
                            "association.public-dns-name" => e
                                .public_ip
                                .iter()
                                .map(|p| public_dns_name(p, region))
                                .collect(),
                            "attachment.attachment-id" => e.attachment_id.iter().cloned().collect(),
                            "attachment.instance-id" => e.instance_id.iter().cloned().collect(),
                            "attachment.instance-owner-id" | "owner-id" => one(&e.owner_id),
                            "attachment.device-index" => one(&e.device_index.to_string()),
                            "attachment.status" => one("attached"),
                            "attachment.delete-on-termination" => {
                                one(&e.delete_on_termination.to_string())
                            }
                            "availability-zone" => one(&e.availability_zone),
                            "description" => one(&e.description),
                            "group-id" => e.group_ids.clone(),
                            "group-name" => names.clone(),
                            "interface-type" => one("interface"),
                            "mac-address" => one(&e.mac),
                            "network-interface-id" => one(&e.network_interface_id),
                            "private-dns-name" => one(&private_dns_name(&e.private_ip, region)),
                            "requester-managed" => one("false"),
                            "status" => one("in-use"),
                            "subnet-id" => one(&e.subnet_id),
                            "vpc-id" => one(&e.vpc_id),
                            n => filter::tag_values(&tags, n).unwrap_or_default(),
                        }
                    });
                    if keep {
                        out.push(render_interface(db, e, &caller.region)?);
                    }
                }
                let (network_interfaces, next_token) = super::paging::page(out, &paging, 5, 1000)?;
                Ok(DescribeNetworkInterfacesResult {
                    network_interfaces,
                    next_token,
                })
            })
    }

    /// `ModifyInstanceAttribute groupSet`: replace the groups of an
    /// instance's interface; running instances it affects get new rules.
    pub fn set_instance_groups(
        &mut self,
        caller: &Caller,
        instance_id: &str,
        group_ids: &[String],
    ) -> Result<()> {
        if group_ids.is_empty() {
            return Err(Error::missing("GroupId"));
        }
        if group_ids.len() > MAX_GROUPS {
            return Err(Error::invalid_value(format!(
                "At most {MAX_GROUPS} security groups can be given per network interface"
            )));
        }
        let _lock = object_lock::lock(&self.paths, instance_id)?;
        let instance = self
            .owned_instances(caller, &[instance_id.to_string()])?
            .remove(0);
        if instance.state == InstanceStateName::Terminated {
            return Err(Error::incorrect_instance_state(format!(
                "The instance '{instance_id}' is not in a state from which its groups can be changed (terminated)"
            )));
        }
        let old = self.store.write(|db| -> Result<Vec<String>> {
            let Some(e) = db.instance_network_interfaces(instance_id)?.into_iter().next() else {
                return Err(Error::new(
                    ErrorCode::UnsupportedOperation,
                    format!("The instance '{instance_id}' has no network interface in a VPC (launched before amirun had VPCs)"),
                ));
            };
            let mut wanted = Vec::new();
            for id in group_ids {
                let g = owned_group(db, caller, id)?;
                if g.vpc_id != e.vpc_id {
                    return Err(Error::new(
                        ErrorCode::InvalidParameter,
                        format!(
                            "Security group {} and instance {instance_id} belong to different networks.",
                            g.group_id
                        ),
                    ));
                }
                if !wanted.contains(&g.group_id) {
                    wanted.push(g.group_id);
                }
            }
            db.set_network_interface_groups(&e.network_interface_id, &wanted)?;
            Ok(e.group_ids)
        })?;
        let mut changed: Vec<String> = old;
        changed.extend(group_ids.iter().cloned());
        self.apply_after_membership_change(instance_id, &changed, true);
        Ok(())
    }

    /// Hand the data plane new rules for every running instance in these groups.
    pub(crate) fn apply_rules_of_groups(&mut self, group_ids: &[String]) {
        let result = self.vpc_attachments_in_groups(group_ids);
        apply_all(result);
    }

    /// What the data plane must enforce now for each pending or running
    /// instance in one of these groups: (instance id, attachment).
    pub fn vpc_attachments_in_groups(
        &mut self,
        group_ids: &[String],
    ) -> Result<Vec<(String, VpcAttachment)>> {
        self.store
            .read(|db| -> Result<Vec<(String, VpcAttachment)>> {
                let mut seen = BTreeSet::new();
                let mut out = Vec::new();
                for g in group_ids {
                    for e in db.network_interfaces_in_group(g)? {
                        if seen.insert(e.network_interface_id.clone()) {
                            if let Some(a) = running_attachment(db, &e)? {
                                out.push(a);
                            }
                        }
                    }
                }
                Ok(out)
            })
    }

    /// After an instance joined or left groups (launch, terminate, groupSet):
    /// every running instance whose rules name one of its groups (`extra`
    /// are groups it left), and with `include_self` the instance itself.
    fn apply_after_membership_change(
        &mut self,
        instance_id: &str,
        extra: &[String],
        include_self: bool,
    ) {
        let result = self
            .store
            .read(|db| -> Result<Vec<(String, VpcAttachment)>> {
                let mut out = Vec::new();
                let mut groups: Vec<String> = extra.to_vec();
                for e in db.instance_network_interfaces(instance_id)? {
                    groups.extend(e.group_ids.iter().cloned());
                    if include_self {
                        out.extend(running_attachment(db, &e)?);
                    }
                }
                out.extend(referencing_attachments(db, &groups, Some(instance_id))?);
                Ok(out)
            });
        apply_all(result);
    }

    /// Every running instance whose rules name one of `groups` (but `skip`).
    fn apply_to_referencing(&mut self, groups: &[String], skip: Option<&str>) {
        let result = self
            .store
            .read(|db| referencing_attachments(db, groups, skip));
        apply_all(result);
    }
}

/// The attachments of running instances whose groups' rules name one of `groups`.
fn referencing_attachments(
    db: &Db,
    groups: &[String],
    skip: Option<&str>,
) -> Result<Vec<(String, VpcAttachment)>> {
    let mut holders = BTreeSet::new();
    for g in groups {
        for r in db.rules_referencing(g)? {
            holders.insert(r.group_id);
        }
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for h in holders {
        for e in db.network_interfaces_in_group(&h)? {
            if e.instance_id.as_deref() == skip || !seen.insert(e.network_interface_id.clone()) {
                continue;
            }
            if let Some(a) = running_attachment(db, &e)? {
                out.push(a);
            }
        }
    }
    Ok(out)
}

/// The attachment of an interface whose instance is pending or running.
fn running_attachment(
    db: &Db,
    e: &NetworkInterfaceState,
) -> Result<Option<(String, VpcAttachment)>> {
    let Some(id) = &e.instance_id else {
        return Ok(None);
    };
    match db.instance(id)? {
        Some(i)
            if matches!(
                i.state,
                InstanceStateName::Pending | InstanceStateName::Running
            ) =>
        {
            Ok(Some((id.clone(), attachment_of(db, e)?)))
        }
        _ => Ok(None),
    }
}

/// Apply each attachment; a failure is logged, never the caller's error
/// (the records are right; the next boot applies them).
fn apply_all(result: Result<Vec<(String, VpcAttachment)>>) {
    match result {
        Ok(list) => {
            for (instance_id, a) in list {
                if let Err(e) = crate::network::apply_vpc_rules(&a) {
                    tracing::warn!("Cannot apply the security-group rules of {instance_id}: {e}");
                }
            }
        }
        Err(e) => tracing::warn!("Cannot resolve security-group rules to apply: {e}"),
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
