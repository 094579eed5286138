//! `DescribeNetworkInterfaces`: interfaces in EC2's shape, by id and filters.

use super::*;

/// `DescribeNetworkInterfaces`. `IncludeManagedResources` is honoured
/// trivially: amirun has no interfaces managed by other services.
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
    "association.allocation-id",
    "association.association-id",
    "addresses.association.owner-id",
    "addresses.association.public-ip",
    "association.ip-owner-id",
    "attachment.attach-time",
    "availability-zone-id",
    "ipv6-addresses.ipv6-address",
    "operator.managed",
    "operator.principal",
    "requester-id",
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
                    let shown = render_interface(db, e, region)?;
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
                            n => filter::tag_values(&tags, n).unwrap_or_else(|| {
                                // `addresses.*` is the shape's PrivateIpAddresses.
                                let n = n.replacen("addresses.", "private-ip-addresses.", 1);
                                filter::shown_values(&shown, &n)
                            }),
                        }
                    });
                    if keep {
                        out.push(shown);
                    }
                }
                let (network_interfaces, next_token) =
                    crate::service::paging::page(out, &paging, 5, 1000)?;
                Ok(DescribeNetworkInterfacesResult {
                    network_interfaces,
                    next_token,
                })
            })
    }
}
