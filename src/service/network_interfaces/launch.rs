//! Where a launch puts its instances: RunInstances' network members
//! resolved and checked with EC2's rules and errors before anything is
//! made, then one interface per instance with its addresses.

use super::*;

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

impl Service {
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
}
