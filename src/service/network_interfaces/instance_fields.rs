//! An instance's network as `DescribeInstances` shows and filters it.

use super::*;

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

impl Service {
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
}
