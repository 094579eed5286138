//! What users read about instances: `DescribeInstances` (with its
//! filters, states reconciled first), `GetConsoleOutput`, and amirun's own
//! reads (`amirun ssh`'s target, the raw console for waiters).

use super::*;

/// What `RunInstances` returns, and one entry of `DescribeInstances`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Reservation {
    /// Security groups (none until instances have VPC networking).
    pub groups: Vec<GroupIdentifier>,
    pub instances: Vec<Instance>,
    pub owner_id: String,
    pub reservation_id: String,
}

/// A security group an instance or reservation is in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GroupIdentifier {
    pub group_id: String,
    pub group_name: String,
}

/// An instance as EC2 shows it (botocore's `Instance`; the members amirun
/// has facts for), with amirun's own facts under `Amirun`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Instance {
    pub ami_launch_index: u32,
    pub image_id: String,
    pub instance_id: String,
    pub instance_type: String,
    pub launch_time: String,
    pub monitoring: Monitoring,
    pub placement: InstancePlacement,
    pub private_dns_name: String,
    pub private_ip_address: String,
    pub product_codes: Vec<ProductCode>,
    pub public_dns_name: String,
    pub state: InstanceStateShape,
    pub state_transition_reason: String,
    pub architecture: Architecture,
    pub block_device_mappings: Vec<InstanceBlockDeviceMapping>,
    pub ebs_optimized: bool,
    pub ena_support: bool,
    pub hypervisor: String,
    pub root_device_name: String,
    pub root_device_type: RootDeviceType,
    pub virtualization_type: String,
    pub boot_mode: BootMode,
    pub current_instance_boot_mode: BootMode,
    pub cpu_options: CpuOptions,
    /// EC2's `InstanceMetadataOptionsResponse`, as recorded at launch.
    pub metadata_options: Value,
    /// EC2's `HibernationOptions` ([`crate::service::hibernation::shape`]).
    pub hibernation_options: Value,
    pub platform_details: String,
    pub usage_operation: String,
    #[serde(rename = "Amirun")]
    pub amirun: InstanceFacts,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<StateReason>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
    /// VPC fields (see [`crate::service::network_interfaces::add_instance_fields`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vpc_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_ip_address: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<GroupIdentifier>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_dest_check: Option<bool>,
    /// EC2's `InstanceNetworkInterface`s, as the VPC model renders them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub network_interfaces: Vec<Value>,
}

/// Detailed monitoring (always `disabled`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Monitoring {
    pub state: String,
}

/// Where an instance runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstancePlacement {
    pub availability_zone: String,
    pub group_name: String,
    pub tenancy: String,
}

/// A product code (amirun's AMIs have none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProductCode {
    pub product_code_id: String,
    pub product_code_type: String,
}

/// An EBS volume of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceBlockDeviceMapping {
    pub device_name: String,
    pub ebs: EbsInstanceBlockDevice,
}

/// The EBS side of [`InstanceBlockDeviceMapping`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct EbsInstanceBlockDevice {
    pub attach_time: String,
    pub delete_on_termination: bool,
    /// `attached`, or `detached` once the instance is terminated.
    pub status: String,
    pub volume_id: String,
}

/// vCPUs as EC2 counts them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CpuOptions {
    pub core_count: u32,
    pub threads_per_core: u32,
}

/// amirun's own facts about an instance (`Amirun` in its shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceFacts {
    /// `kvm` or `tcg`, and why.
    pub accelerator: crate::domain::Accel,
    pub accelerator_reason: String,
    /// `127.0.0.1:PORT` of the guest's ssh while it is not terminated.
    pub ssh_endpoint: Option<String>,
    /// `nat`, `none` (or `invalid` for a bad tag), and why it is less than asked.
    pub guest_outbound: String,
    pub guest_outbound_reason: Option<String>,
    /// The serial log on the host.
    pub console_log: String,
}

/// `DescribeInstances`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DescribeInstancesRequest {
    #[serde(default)]
    pub instance_ids: Vec<String>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    /// Page size, 5 to 1000 instances; not with `InstanceIds` (EC2's rule).
    #[serde(default)]
    pub max_results: Option<i64>,
    #[serde(default)]
    pub next_token: Option<String>,
}

/// What `DescribeInstances` returns. A page holds `MaxResults` instances
/// (in launch order), grouped in their reservations; a reservation larger
/// than a page continues on the next.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeInstancesResult {
    pub reservations: Vec<Reservation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// `GetConsoleOutput`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct GetConsoleOutputRequest {
    pub instance_id: String,
    /// Only the most recent output (the last 64 KiB).
    #[serde(default)]
    pub latest: Option<bool>,
}

/// What `GetConsoleOutput` returns. `Output` is base64, as on EC2's wire
/// (clients decode it for display).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetConsoleOutputResult {
    pub instance_id: String,
    pub timestamp: String,
    pub output: Base64Blob,
}

/// `DescribeInstances`' filters as EC2 documents them (botocore's list),
/// besides the network ones of
/// [`crate::service::network_interfaces::INSTANCE_NETWORK_FILTERS`] and
/// `tag:KEY`. Each is answered from the instance as `describe-instances`
/// shows it ([`shown_values`]); a feature amirun never gives an instance
/// (Spot, capacity reservations, outposts, IPv6, …) has no values, as on
/// EC2 for an instance without it. What amirun does not keep
/// (`client-token`, `availability-zone-id`, `usage-operation-update-time`)
/// is refused rather than answered wrongly.
pub(super) const INSTANCE_FILTERS: &[&str] = &[
    "affinity",
    "architecture",
    "availability-zone",
    "block-device-mapping.attach-time",
    "block-device-mapping.delete-on-termination",
    "block-device-mapping.device-name",
    "block-device-mapping.status",
    "block-device-mapping.volume-id",
    "boot-mode",
    "capacity-reservation-id",
    "capacity-reservation-specification.capacity-reservation-preference",
    "capacity-reservation-specification.capacity-reservation-target.capacity-reservation-id",
    "capacity-reservation-specification.capacity-reservation-target.capacity-reservation-resource-group-arn",
    "current-instance-boot-mode",
    "ebs-optimized",
    "ena-support",
    "enclave-options.enabled",
    "hibernation-options.configured",
    "host-id",
    "hypervisor",
    "iam-instance-profile.arn",
    "iam-instance-profile.id",
    "image-id",
    "instance-id",
    "instance-lifecycle",
    "instance-state-code",
    "instance-state-name",
    "instance-type",
    "ipv6-address",
    "kernel-id",
    "key-name",
    "launch-index",
    "launch-time",
    "maintenance-options.auto-recovery",
    "metadata-options.http-endpoint",
    "metadata-options.http-protocol-ipv4",
    "metadata-options.http-protocol-ipv6",
    "metadata-options.http-put-response-hop-limit",
    "metadata-options.http-tokens",
    "metadata-options.instance-metadata-tags",
    "metadata-options.state",
    "monitoring-state",
    "network-interface.addresses.association.allocation-id",
    "network-interface.addresses.association.association-id",
    "network-interface.addresses.association.carrier-ip",
    "network-interface.addresses.association.customer-owned-ip",
    "network-interface.addresses.association.ip-owner-id",
    "network-interface.addresses.association.public-dns-name",
    "network-interface.addresses.association.public-ip",
    "network-interface.addresses.private-dns-name",
    "network-interface.association.allocation-id",
    "network-interface.association.association-id",
    "network-interface.association.carrier-ip",
    "network-interface.association.customer-owned-ip",
    "network-interface.association.ip-owner-id",
    "network-interface.association.public-dns-name",
    "network-interface.attachment.attach-time",
    "network-interface.attachment.instance-id",
    "network-interface.attachment.instance-owner-id",
    "network-interface.attachment.network-card-index",
    "network-interface.availability-zone",
    "network-interface.deny-all-igw-traffic",
    "network-interface.ipv4-prefixes.ipv4-prefix",
    "network-interface.ipv6-address",
    "network-interface.ipv6-addresses.ipv6-address",
    "network-interface.ipv6-addresses.is-primary-ipv6",
    "network-interface.ipv6-native",
    "network-interface.ipv6-prefixes.ipv6-prefix",
    "network-interface.operator.managed",
    "network-interface.operator.principal",
    "network-interface.outpost-arn",
    "network-interface.owner-id",
    "network-interface.private-ip-address",
    "network-interface.public-dns-name",
    "network-interface.requester-id",
    "network-interface.requester-managed",
    "network-interface.tag-key",
    "network-interface.tag-value",
    "network-performance-options.bandwidth-weighting",
    "operator.managed",
    "operator.principal",
    "outpost-arn",
    "owner-id",
    "placement-group-name",
    "placement-partition-number",
    "platform",
    "platform-details",
    "private-dns-name-options.enable-resource-name-dns-a-record",
    "private-dns-name-options.enable-resource-name-dns-aaaa-record",
    "private-dns-name-options.hostname-type",
    "product-code",
    "product-code.type",
    "ramdisk-id",
    "reason",
    "requester-id",
    "reservation-id",
    "root-device-name",
    "root-device-type",
    "spot-instance-request-id",
    "state-reason-code",
    "state-reason-message",
    "tag-key",
    "tenancy",
    "tpm-support",
    "usage-operation",
    "virtualization-type",
];

/// An instance's values for one of [`INSTANCE_FILTERS`], read from the
/// instance as `describe-instances` shows it (`shown`, botocore's member
/// names): the filter's path in kebab case is the shape's path in
/// PascalCase (`metadata-options.http-tokens` is
/// `MetadataOptions.HttpTokens`), but for the names EC2 spells otherwise.
/// Lists are flattened; empty strings are no value.
pub(super) fn shown_values(
    shown: &Value,
    owner_id: &str,
    reservation_id: &str,
    name: &str,
) -> Vec<String> {
    let path: String = match name {
        "owner-id" => return vec![owner_id.to_string()],
        "reservation-id" => return vec![reservation_id.to_string()],
        "instance-state-code" => "State.Code".into(),
        "instance-state-name" => "State.Name".into(),
        // EC2 shows no EnclaveOptions/Operator/MaintenanceOptions for
        // amirun's instances; their values are EC2's defaults.
        "enclave-options.enabled" | "operator.managed" | "network-interface.operator.managed" => {
            return vec!["false".into()]
        }
        "maintenance-options.auto-recovery" => return vec!["default".into()],
        "launch-index" => "AmiLaunchIndex".into(),
        "reason" => "StateTransitionReason".into(),
        "state-reason-code" => "StateReason.Code".into(),
        "state-reason-message" => "StateReason.Message".into(),
        "monitoring-state" => "Monitoring.State".into(),
        "availability-zone" => "Placement.AvailabilityZone".into(),
        "tenancy" => "Placement.Tenancy".into(),
        "affinity" => "Placement.Affinity".into(),
        "host-id" => "Placement.HostId".into(),
        "placement-group-name" => "Placement.GroupName".into(),
        "placement-partition-number" => "Placement.PartitionNumber".into(),
        "product-code" => "ProductCodes.ProductCodeId".into(),
        "product-code.type" => "ProductCodes.ProductCodeType".into(),
        "block-device-mapping.device-name" => "BlockDeviceMappings.DeviceName".into(),
        n if n.starts_with("block-device-mapping.") => {
            format!(
                "BlockDeviceMappings.Ebs.{}",
                filter::pascal(&n["block-device-mapping.".len()..])
            )
        }
        "network-interface.tag-key" => "NetworkInterfaces.TagSet.Key".into(),
        "network-interface.tag-value" => "NetworkInterfaces.TagSet.Value".into(),
        "network-interface.ipv6-address" => "NetworkInterfaces.Ipv6Addresses.Ipv6Address".into(),
        n if n.starts_with("network-interface.addresses.") => format!(
            "NetworkInterfaces.PrivateIpAddresses.{}",
            filter::pascal_path(&n["network-interface.addresses.".len()..])
        ),
        n if n.starts_with("network-interface.") => format!(
            "NetworkInterfaces.{}",
            filter::pascal_path(&n["network-interface.".len()..])
        ),
        n => filter::pascal_path(n),
    };
    filter::path_values(shown, &path)
}

/// The login user an image's vendor uses.
pub(super) fn default_user(image: Option<&ImageState>) -> String {
    match image.and_then(|i| i.owner_alias.as_deref()) {
        // Debian's genericcloud images (the catalog's and ours) log in as
        // `debian`; Debian's AMIs on AWS use `admin`.
        Some("debian") => "debian",
        Some("ubuntu") => "ubuntu",
        Some("amazon") => "ec2-user",
        Some("fedora") => "fedora",
        Some("alpine") => "alpine",
        Some("cirros") => "cirros",
        _ => match image.map(|i| i.name.as_str()) {
            Some(n) if n.starts_with("debian") => "debian",
            _ => "root",
        },
    }
    .to_string()
}

/// EC2's `StateTransitionReason` for a state reason recorded at `when`
/// (`2026-11-22T18:44:25.000Z`): "User initiated (2026-11-22 18:44:25 GMT)"
/// for a user's stop or terminate, else the reason with its time.
pub(super) fn state_transition_reason(reason: &str, when: &str) -> String {
    let at = chrono::DateTime::parse_from_rfc3339(when)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S GMT").to_string())
        .unwrap_or_else(|_| when.to_string());
    // A user's stop, hibernating or not.
    if reason.starts_with("Client.UserInitiatedShutdown")
        || reason.starts_with("Client.UserInitiatedHibernate")
    {
        format!("User initiated ({at})")
    } else {
        format!("{reason} ({at})")
    }
}

/// The recorded metadata options as EC2 shows them: `State` is `pending`
/// while the instance is, `applied` after.
pub(super) fn metadata_options_shown(recorded: &Value, state: InstanceStateName) -> Value {
    let mut shown = recorded.clone();
    if let Some(o) = shown.as_object_mut() {
        let s = if state == InstanceStateName::Pending {
            "pending"
        } else {
            "applied"
        };
        o.insert("State".into(), s.into());
    }
    shown
}

impl Service {
    /// `DescribeInstances`: reservations with their instances, states reconciled first.
    pub fn describe_instances(
        &mut self,
        caller: &Caller,
        input: DescribeInstancesRequest,
    ) -> Result<DescribeInstancesResult> {
        if let Some(backend) = self.remote_backend(caller)? {
            return self.remote_describe_instances(caller, &*backend, &input);
        }
        check_paging(&input)?;
        let (instance_ids, filters) = (&input.instance_ids, &input.filters);
        filter::check_names(
            filters,
            &[
                INSTANCE_FILTERS,
                crate::service::network_interfaces::INSTANCE_NETWORK_FILTERS,
            ]
            .concat(),
        )?;
        let wanted = if instance_ids.is_empty() {
            self.refresh_instances(caller)?;
            self.store
                .read(|db| db.instances_in_region(&caller.region))?
                .into_iter()
                .filter(|i| i.owner_id == caller.account)
                .collect()
        } else {
            self.owned_instances(caller, instance_ids)?
        };
        let mut selected: Vec<(String, Instance)> = Vec::new();
        let networks = self.instance_networks(caller)?;
        for i in wanted {
            let tags = self.store.read(|db| db.tags_of(&i.instance_id))?;
            let net = networks.get(&i.instance_id);
            let mut shape = self.render_instance(&i, &tags);
            if let Some(n) = net {
                crate::service::network_interfaces::add_instance_fields(&mut shape, n, &i.region);
            }
            if !filters.is_empty() {
                let shown = serde_json::to_value(&shape).expect("instances serialize");
                let keep = filter::matches(filters, |n| {
                    crate::service::network_interfaces::instance_filter_values(net, &i.region, n)
                        .or_else(|| filter::tag_values(&tags, n))
                        .unwrap_or_else(|| shown_values(&shown, &i.owner_id, &i.reservation_id, n))
                });
                if !keep {
                    continue;
                }
            }
            selected.push((i.reservation_id.clone(), shape));
        }
        paged_reservations(caller, selected, &input)
    }

    /// `DescribeInstances` of one instance as JSON (`{"Reservations": [...]}`),
    /// for amirun's own verbs that read a field or two of it.
    pub(crate) fn describe_instance_json(&mut self, caller: &Caller, id: &str) -> Result<Value> {
        let shown = self.describe_instances(
            caller,
            DescribeInstancesRequest {
                instance_ids: vec![id.to_string()],
                ..Default::default()
            },
        )?;
        Ok(serde_json::to_value(shown).expect("results serialize"))
    }

    pub(super) fn render_instance(
        &self,
        i: &InstanceState,
        tags: &[crate::store::TagState],
    ) -> Instance {
        let itype = machine::instance_type(&i.instance_type);
        let net_status = NetworkStatus::read(&self.paths.network_status(&i.instance_id));
        let terminated = i.state == InstanceStateName::Terminated;
        let block_device_mappings = i
            .devices
            .iter()
            .filter_map(|d| {
                d.volume_id.as_ref().map(|v| InstanceBlockDeviceMapping {
                    device_name: d.device_name.clone(),
                    ebs: EbsInstanceBlockDevice {
                        attach_time: d.attach_time.clone(),
                        delete_on_termination: d.delete_on_termination,
                        status: if terminated { "detached" } else { "attached" }.into(),
                        volume_id: v.clone(),
                    },
                })
            })
            .collect();
        let guest_outbound = match &net_status {
            Some(s) => s.outbound.clone(),
            None => guest_outbound(
                tags.iter().map(|t| (t.key.as_str(), t.value.as_str())),
                self.options.default_outbound,
            )
            .map_or("invalid", machine::Outbound::as_str)
            .to_string(),
        };
        Instance {
            ami_launch_index: i.launch_index,
            image_id: i.image_id.clone(),
            instance_id: i.instance_id.clone(),
            instance_type: i.instance_type.clone(),
            launch_time: i.launch_time.clone(),
            monitoring: Monitoring {
                state: "disabled".into(),
            },
            placement: InstancePlacement {
                availability_zone: format!("{}a", i.region),
                group_name: String::new(),
                tenancy: "default".into(),
            },
            private_dns_name: if terminated {
                String::new()
            } else {
                "ip-169-254-0-15.ec2.internal".into()
            },
            private_ip_address: "169.254.0.15".into(),
            product_codes: Vec::new(),
            public_dns_name: String::new(),
            state: InstanceStateShape::of(i.state),
            state_transition_reason: i
                .state_reason
                .as_deref()
                .map(|r| state_transition_reason(r, &i.updated))
                .unwrap_or_default(),
            architecture: i.architecture,
            block_device_mappings,
            ebs_optimized: false,
            ena_support: true,
            hypervisor: "xen".into(),
            root_device_name: i.root_device_name.clone(),
            root_device_type: i.root_device_type,
            virtualization_type: "hvm".into(),
            boot_mode: i.boot_mode,
            current_instance_boot_mode: i.boot_mode,
            cpu_options: CpuOptions {
                core_count: itype.map_or(1, |t| t.vcpus),
                threads_per_core: 1,
            },
            // EC2 says `pending` until the options are in force on a running instance.
            metadata_options: metadata_options_shown(&i.metadata_options, i.state),
            hibernation_options: crate::service::hibernation::shape(i),
            platform_details: "Linux/UNIX".into(),
            usage_operation: "RunInstances".into(),
            amirun: InstanceFacts {
                accelerator: i.accel,
                accelerator_reason: i.accel_reason.clone(),
                ssh_endpoint: i
                    .ssh_port
                    .filter(|_| !terminated)
                    .map(|p| format!("127.0.0.1:{p}")),
                guest_outbound,
                guest_outbound_reason: net_status.and_then(|s| s.reason),
                console_log: self.paths.serial_log(&i.instance_id).display().to_string(),
            },
            key_name: i.key_name.clone(),
            state_reason: i.state_reason.as_ref().map(|r| {
                let (code, message) = r.split_once(": ").unwrap_or((r.as_str(), r.as_str()));
                StateReason {
                    code: code.to_string(),
                    message: message.to_string(),
                }
            }),
            tags: tags.iter().map(Tag::from).collect(),
            vpc_id: None,
            subnet_id: None,
            public_ip_address: None,
            security_groups: Vec::new(),
            source_dest_check: None,
            network_interfaces: Vec::new(),
        }
    }

    /// `GetConsoleOutput`: the serial log (the last 64 KiB with `latest`),
    /// after a header line naming the machine and its accelerator.
    pub fn get_console_output(
        &mut self,
        caller: &Caller,
        input: GetConsoleOutputRequest,
    ) -> Result<GetConsoleOutputResult> {
        if let Some(backend) = self.remote_backend(caller)? {
            return self.remote_console_output(caller, &*backend, &input);
        }
        let (instance_id, latest) = (input.instance_id.as_str(), input.latest.unwrap_or(false));
        let i = self
            .owned_instances(caller, &[instance_id.to_string()])?
            .remove(0);
        let bytes = std::fs::read(self.paths.serial_log(instance_id)).unwrap_or_default();
        let tail = if latest && bytes.len() > 64 * 1024 {
            &bytes[bytes.len() - 64 * 1024..]
        } else {
            &bytes[..]
        };
        let header = format!(
            "[amirun] {} {} {} {} accel={} ({})\n",
            i.instance_id, i.instance_type, i.architecture, i.boot_mode, i.accel, i.accel_reason
        );
        Ok(GetConsoleOutputResult {
            instance_id: instance_id.to_string(),
            timestamp: now(),
            output: Base64Blob((header + &String::from_utf8_lossy(tail)).into_bytes()),
        })
    }

    /// The raw serial log bytes of an instance (for waiting on the console).
    pub fn console_bytes(&mut self, caller: &Caller, instance_id: &str) -> Result<Vec<u8>> {
        self.owned_instances(caller, &[instance_id.to_string()])?;
        Ok(std::fs::read(self.paths.serial_log(instance_id)).unwrap_or_default())
    }

    /// How to ssh into an instance: forwarded port, login user, key file.
    pub fn ssh_target(
        &mut self,
        caller: &Caller,
        instance_id: &str,
        user: Option<&str>,
    ) -> Result<SshTarget> {
        let i = self
            .owned_instances(caller, &[instance_id.to_string()])?
            .remove(0);
        if i.state != InstanceStateName::Running {
            return Err(Error::incorrect_instance_state(format!(
                "The instance '{instance_id}' is {}, not running",
                i.state
            )));
        }
        let port = i.ssh_port.ok_or_else(|| {
            Error::new(
                ErrorCode::UnsupportedOperation,
                "The instance has no ssh forward",
            )
        })?;
        let identity_file = match &i.key_name {
            Some(k) => match self.key_pair(caller, k)?.private_key {
                Some(material) => {
                    let path = self.paths.instance_dir(instance_id).join("ssh-key");
                    std::fs::write(&path, material)
                        .map_err(io_error(format!("Cannot write {}", path.display())))?;
                    use std::os::unix::fs::PermissionsExt;
                    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
                    Some(path)
                }
                None => None,
            },
            None => None,
        };
        let image = self.store.read(|db| db.image(&i.image_id))?;
        Ok(SshTarget {
            port,
            user: user
                .map(String::from)
                .unwrap_or_else(|| default_user(image.as_ref())),
            identity_file,
        })
    }
}

/// EC2's rule: `MaxResults` pages a listing, so it cannot come with ids.
pub(super) fn check_paging(input: &DescribeInstancesRequest) -> Result<()> {
    if !input.instance_ids.is_empty() && input.max_results.is_some() {
        return Err(Error::new(
            ErrorCode::InvalidParameterCombination,
            "The parameter instancesSet cannot be used with the parameter maxResults",
        ));
    }
    Ok(())
}

/// One page of the instances shown (in launch order, each with its
/// reservation id), grouped into reservations as DescribeInstances answers.
pub(super) fn paged_reservations(
    caller: &Caller,
    selected: Vec<(String, Instance)>,
    input: &DescribeInstancesRequest,
) -> Result<DescribeInstancesResult> {
    let paging = crate::service::paging::Paging::of(input.max_results, &input.next_token);
    let (page, next_token) = crate::service::paging::page(selected, &paging, 5, 1000)?;
    let mut reservations: Vec<(String, Vec<Instance>)> = Vec::new();
    for (reservation_id, shape) in page {
        match reservations.iter_mut().find(|(r, _)| *r == reservation_id) {
            Some((_, list)) => list.push(shape),
            None => reservations.push((reservation_id, vec![shape])),
        }
    }
    Ok(DescribeInstancesResult {
        next_token,
        reservations: reservations
            .into_iter()
            .map(|(reservation_id, instances)| Reservation {
                groups: Vec::new(),
                instances,
                owner_id: caller.account.to_string(),
                reservation_id,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn metadata_options_are_pending_while_the_instance_is() {
        use crate::domain::InstanceStateName;
        let recorded = super::metadata_options(None).unwrap();
        let shown = super::metadata_options_shown(&recorded, InstanceStateName::Pending);
        assert_eq!(shown["State"], "pending");
        assert_eq!(shown["HttpPutResponseHopLimit"], 1);
        let shown = super::metadata_options_shown(&recorded, InstanceStateName::Running);
        assert_eq!(shown["State"], "applied");
    }

    #[test]
    fn state_transition_reason_reads_as_ec2_writes_it() {
        assert_eq!(
            super::state_transition_reason(
                "Client.UserInitiatedShutdown: User initiated shutdown",
                "2026-11-22T18:44:25.000Z"
            ),
            "User initiated (2026-11-22 18:44:25 GMT)"
        );
        assert_eq!(
            super::state_transition_reason("Server.InternalError: x", "2026-11-22T18:44:25.000Z"),
            "Server.InternalError: x (2026-11-22 18:44:25 GMT)"
        );
    }

    /// Filter names map onto the shown instance: kebab paths to PascalCase
    /// members, through lists, with EC2's own spellings where they differ.
    #[test]
    fn filters_read_the_instance_as_shown() {
        let shown = serde_json::json!({
            "State": {"Code": 48, "Name": "terminated"},
            "StateReason": {"Code": "Client.UserInitiatedShutdown", "Message": "m"},
            "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1},
            "BlockDeviceMappings": [
                {"DeviceName": "/dev/xvda", "Ebs": {"VolumeId": "vol-1", "DeleteOnTermination": true}},
                {"DeviceName": "/dev/sdf", "Ebs": {"VolumeId": "vol-2", "DeleteOnTermination": false}}
            ],
            "Placement": {"GroupName": "", "Tenancy": "default", "AvailabilityZone": "us-east-1a"},
            "AmiLaunchIndex": 3,
            "EbsOptimized": false,
            "NetworkInterfaces": [{"PrivateIpAddresses": [{"Association": {"PublicIp": "127.0.0.9"}}]}]
        });
        let v = |n: &str| super::shown_values(&shown, "123456789012", "r-1", n);
        assert_eq!(v("instance-state-code"), ["48"]);
        assert_eq!(v("availability-zone"), ["us-east-1a"]);
        assert_eq!(v("state-reason-code"), ["Client.UserInitiatedShutdown"]);
        assert_eq!(v("metadata-options.http-tokens"), ["required"]);
        assert_eq!(v("metadata-options.http-put-response-hop-limit"), ["1"]);
        assert_eq!(v("block-device-mapping.volume-id"), ["vol-1", "vol-2"]);
        assert_eq!(
            v("block-device-mapping.device-name"),
            ["/dev/xvda", "/dev/sdf"]
        );
        assert_eq!(
            v("block-device-mapping.delete-on-termination"),
            ["true", "false"]
        );
        assert!(
            v("placement-group-name").is_empty(),
            "an empty string is no value"
        );
        assert_eq!(v("tenancy"), ["default"]);
        assert_eq!(v("launch-index"), ["3"]);
        assert_eq!(v("ebs-optimized"), ["false"]);
        assert_eq!(v("owner-id"), ["123456789012"]);
        assert_eq!(v("reservation-id"), ["r-1"]);
        assert_eq!(
            v("network-interface.addresses.association.public-ip"),
            ["127.0.0.9"]
        );
        assert!(v("spot-instance-request-id").is_empty());
    }
}
