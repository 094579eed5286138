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
}

/// What `DescribeInstances` returns.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeInstancesResult {
    pub reservations: Vec<Reservation>,
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

pub(super) const INSTANCE_FILTERS: &[&str] = &[
    "architecture",
    "availability-zone",
    "image-id",
    "instance-id",
    "instance-state-code",
    "instance-state-name",
    "instance-type",
    "key-name",
    "reservation-id",
    "root-device-type",
    "tag-key",
];

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
        let mut reservations: Vec<(String, Vec<Instance>)> = Vec::new();
        let networks = self.instance_networks(caller)?;
        for i in wanted {
            let tags = self.store.read(|db| db.tags_of(&i.instance_id))?;
            let net = networks.get(&i.instance_id);
            let keep = filter::matches(filters, |name| match name {
                "architecture" => vec![i.architecture.to_string()],
                "availability-zone" => vec![format!("{}a", i.region)],
                "image-id" => vec![i.image_id.clone()],
                "instance-id" => vec![i.instance_id.clone()],
                "instance-state-code" => vec![i.state.code().to_string()],
                "instance-state-name" => vec![i.state.to_string()],
                "instance-type" => vec![i.instance_type.clone()],
                "key-name" => i.key_name.iter().cloned().collect(),
                "reservation-id" => vec![i.reservation_id.clone()],
                "root-device-type" => vec![i.root_device_type.to_string()],
                n => crate::service::network_interfaces::instance_filter_values(net, &i.region, n)
                    .or_else(|| filter::tag_values(&tags, n))
                    .unwrap_or_default(),
            });
            if !keep {
                continue;
            }
            let mut shape = self.render_instance(&i, &tags);
            if let Some(n) = net {
                crate::service::network_interfaces::add_instance_fields(&mut shape, n, &i.region);
            }
            match reservations
                .iter_mut()
                .find(|(r, _)| *r == i.reservation_id)
            {
                Some((_, list)) => list.push(shape),
                None => reservations.push((i.reservation_id.clone(), vec![shape])),
            }
        }
        Ok(DescribeInstancesResult {
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

    /// `DescribeInstances` of one instance as JSON (`{"Reservations": [...]}`),
    /// for amirun's own verbs that read a field or two of it.
    pub(crate) fn describe_instance_json(&mut self, caller: &Caller, id: &str) -> Result<Value> {
        let shown = self.describe_instances(
            caller,
            DescribeInstancesRequest {
                instance_ids: vec![id.to_string()],
                filters: Vec::new(),
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
}
