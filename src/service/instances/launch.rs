//! `RunInstances`: from a request to instances whose supervisors run.
//!
//! Everything is checked before anything is made ([`super::launch_rules`]);
//! the locks of every new id are taken before its files exist and held until
//! its records are committed (see the parent module's "Concurrency and
//! crashes"). A `ClientToken` makes a launch idempotent: the reservation id
//! is derived from it, and a repeated request returns that reservation.

use super::*;
use crate::service::network_interfaces::{
    InstanceNetworkInterfaceSpecification, LaunchNetworkInput, LaunchNetworkPlan,
    Placement as NetworkPlacement,
};

/// `RunInstances`. The accelerator is amirun's own setting, not a member:
/// [`Service::set_launch_accel`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct RunInstancesRequest {
    pub image_id: String,
    #[serde(default)]
    pub instance_type: Option<String>,
    pub min_count: u32,
    pub max_count: u32,
    #[serde(default)]
    pub key_name: Option<String>,
    #[serde(default)]
    pub user_data: Option<Base64Blob>,
    #[serde(default)]
    pub block_device_mappings: Vec<BlockDeviceMapping>,
    #[serde(default)]
    pub instance_initiated_shutdown_behavior: Option<ShutdownBehavior>,
    #[serde(default)]
    pub tag_specifications: Vec<TagSpecification>,
    #[serde(default)]
    pub metadata_options: Option<InstanceMetadataOptionsRequest>,
    /// Only the region's one zone, default tenancy.
    #[serde(default)]
    pub placement: Option<Placement>,
    /// Only `false`: amirun's volumes have no separate EBS bandwidth.
    #[serde(default)]
    pub ebs_optimized: Option<bool>,
    /// Idempotency (boto3 and the SDKs send one with every launch): a
    /// repeated token returns the first launch's reservation instead of
    /// launching again. The reservation id is derived from the token.
    #[serde(default)]
    pub client_token: Option<String>,
    /// VPC placement (see [`crate::service::network_interfaces`]).
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
    /// `Configured=true`: a stop may hibernate ([`crate::service::hibernation`]).
    #[serde(default)]
    pub hibernation_options: Option<crate::service::hibernation::HibernationOptionsRequest>,
    /// Only an empty one (Packer sends `IamInstanceProfile.Name=`): amirun
    /// has no IAM roles to give an instance.
    #[serde(default)]
    pub iam_instance_profile: Option<IamInstanceProfileSpecification>,
    /// Only `Enabled=false`: amirun has no detailed monitoring.
    #[serde(default)]
    pub monitoring: Option<RunInstancesMonitoringEnabled>,
    /// Only `false` at launch (ModifyInstanceAttribute turns it on).
    #[serde(default)]
    pub disable_api_termination: Option<bool>,
}

/// `IamInstanceProfile` of `RunInstances`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct IamInstanceProfileSpecification {
    #[serde(default)]
    pub arn: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

/// `Monitoring` of `RunInstances`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct RunInstancesMonitoringEnabled {
    pub enabled: bool,
}

impl RunInstancesRequest {
    /// The request's network members, as the VPC model plans them.
    fn network(&self) -> LaunchNetworkInput {
        LaunchNetworkInput {
            security_group_ids: self.security_group_ids.clone(),
            security_groups: self.security_groups.clone(),
            subnet_id: self.subnet_id.clone(),
            private_ip_address: self.private_ip_address.clone(),
            network_interfaces: self.network_interfaces.clone(),
            placement: self.placement.as_ref().map(|p| NetworkPlacement {
                availability_zone: p.availability_zone.clone(),
                tenancy: p.tenancy.clone(),
                group_name: None,
            }),
        }
    }
}

/// `MetadataOptions` of `RunInstances` (IMDS settings), also a launch template's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct InstanceMetadataOptionsRequest {
    /// `optional` (default) or `required` (IMDSv2 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_tokens: Option<String>,
    /// 1 to 64 (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_put_response_hop_limit: Option<i64>,
    /// `enabled` (default) or `disabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_endpoint: Option<String>,
    /// Only `disabled`: IMDS answers on IPv4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_protocol_ipv6: Option<String>,
    /// Only `disabled`: instance tags are not in the metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_metadata_tags: Option<String>,
}

/// `Placement` of `RunInstances`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Placement {
    /// The region's one zone (`<region>a`).
    #[serde(default)]
    pub availability_zone: Option<String>,
    /// Only `default`.
    #[serde(default)]
    pub tenancy: Option<String>,
}

/// Files made while launching, removed if the launch fails.
#[derive(Default)]
pub(super) struct Undo {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    armed: bool,
}

impl Undo {
    fn new() -> Self {
        Undo {
            files: Vec::new(),
            dirs: Vec::new(),
            armed: true,
        }
    }
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if self.armed {
            for f in &self.files {
                let _ = std::fs::remove_file(f);
            }
            for d in &self.dirs {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
}

/// EC2's limit on user data, counted after base64 decoding.
pub(crate) const USER_DATA_LIMIT: usize = 16 * 1024;

/// What [`Service::run_instances`] decided before making anything.
pub(super) struct LaunchPlan {
    image: ImageState,
    type_name: String,
    itype: &'static machine::InstanceType,
    count: u32,
    shutdown: ShutdownBehavior,
    public_keys: Vec<String>,
    outbound: machine::Outbound,
    accel: machine::AccelChoice,
    boot_mode: BootMode,
    metadata_options: Value,
    fetched: Vec<crate::service::images::FetchedDisk>,
    mappings: Vec<BlockDeviceMapping>,
    /// GiB and bytes of each EBS mapping, in order.
    volume_sizes: Vec<(u64, u64)>,
    /// Subnet, groups and addresses, checked before anything is made.
    network: LaunchNetworkPlan,
    /// What to record of hibernation (`Null`: not configured).
    hibernation: Value,
}

impl Service {
    /// `RunInstances`: launch `max_count` instances of an AMI; returns the reservation.
    pub fn run_instances(
        &mut self,
        caller: &Caller,
        input: RunInstancesRequest,
    ) -> Result<Reservation> {
        if let Some(backend) = self.remote_backend(caller)? {
            return self.remote_run_instances(caller, &*backend, &input);
        }
        let input = &input;
        let reservation_id = match &input.client_token {
            Some(token) => {
                let id = crate::service::client_token_id(IdKind::Reservation, caller, token)?;
                if let Some(done) = self.launched_reservation(caller, &id)? {
                    // EC2 refuses a token that comes back with other parameters.
                    let wanted_type = (input.instance_type.as_deref())
                        .unwrap_or(machine::instance_types::DEFAULT_INSTANCE_TYPE);
                    let count = done.instances.len() as u32;
                    let same = (input.min_count..=input.max_count).contains(&count)
                        && done.instances.iter().all(|i| {
                            i.image_id == input.image_id
                                && i.instance_type == wanted_type
                                && i.key_name == input.key_name
                        });
                    if !same {
                        return Err(crate::service::idempotent_mismatch(token));
                    }
                    return Ok(done);
                }
                id
            }
            None => ids::new_id(IdKind::Reservation),
        };
        let mut plan = self.plan_launch(caller, input)?;
        let launch_time = now();
        // The locks of every new id, taken before its files exist and held
        // until its records are committed (and, for an instance, until its
        // supervisor runs): a process killed at any step leaves either no
        // record (files whose lock is free: the orphan sweep's) or records
        // that reconciliation settles. Declared before `undo`, so that
        // undo's removals happen while the locks are still held.
        let mut instance_locks: Vec<ObjectLock> = Vec::new();
        let mut volume_locks: Vec<ObjectLock> = Vec::new();
        let mut undo = Undo::new();
        let vdir = self.paths.volume_dir();
        std::fs::create_dir_all(&vdir)
            .map_err(io_error(format!("Cannot create {}", vdir.display())))?;
        let mut instances = Vec::new();
        let mut volumes = Vec::new();
        let mut taken = self.store.read(|db| db.ports_in_use())?;
        for index in 0..plan.count {
            let instance_id = ids::new_id(IdKind::Instance);
            instance_locks.push(object_lock::lock(&self.paths, &instance_id)?);
            failpoint("run-instances:locked")?;
            self.attach_launch_interface(caller, &mut plan.network, &instance_id, &launch_time)?;
            let dir = self.paths.instance_dir(&instance_id);
            undo.dirs.push(dir.clone());
            std::fs::create_dir_all(&dir)
                .map_err(io_error(format!("Cannot create {}", dir.display())))?;
            let rdir = self.paths.instance_runtime_dir(&instance_id);
            undo.dirs.push(rdir.clone());
            std::fs::create_dir_all(&rdir)
                .map_err(io_error(format!("Cannot create {}", rdir.display())))?;
            failpoint("run-instances:dirs")?;
            let devices = self.make_disks(
                caller,
                &plan,
                &instance_id,
                &launch_time,
                &mut undo,
                &mut volume_locks,
                &mut volumes,
            )?;
            if self.options.nocloud_seed {
                crate::metadata::build_seed(
                    &self.paths.seed_image(&instance_id),
                    &crate::metadata::SeedSpec {
                        instance_id: instance_id.clone(),
                        hostname: "ip-169-254-0-15".into(),
                        user_data: input.user_data.as_ref().map(|u| u.bytes().to_vec()),
                        public_keys: plan.public_keys.clone(),
                        network_config: None,
                    },
                )?;
                failpoint("run-instances:seed")?;
            }
            let ssh_port = free_port(&taken)?;
            taken.push(ssh_port);
            let state = InstanceState {
                instance_id: instance_id.clone(),
                region: caller.region.clone(),
                owner_id: caller.account.to_string(),
                reservation_id: reservation_id.clone(),
                image_id: plan.image.image_id.clone(),
                instance_type: plan.type_name.clone(),
                architecture: plan.image.architecture,
                boot_mode: plan.boot_mode,
                root_device_type: plan.image.root_device_type,
                root_device_name: plan.image.root_device_name.clone(),
                state: InstanceStateName::Pending,
                state_reason: None,
                state_transition_reason: None,
                launch_time: launch_time.clone(),
                key_name: input.key_name.clone(),
                user_data: input.user_data.as_ref().map(|u| u.bytes().to_vec()),
                shutdown_behavior: plan.shutdown,
                accel: plan.accel.accel,
                accel_reason: plan.accel.reason.clone(),
                ssh_port: Some(ssh_port),
                imds_port: None,
                launch_index: index,
                metadata_options: plan.metadata_options.clone(),
                hibernation: plan.hibernation.clone(),
                devices,
                updated: launch_time.clone(),
            };
            self.prepare_boot_with(&state, plan.outbound, false)?;
            failpoint("run-instances:prepared")?;
            instances.push(state);
        }
        let tags = crate::service::images::tags_for(&input.tag_specifications, "instance")?;
        let volume_tags = crate::service::images::tags_for(&input.tag_specifications, "volume")?;
        self.store.write(|db| -> Result<()> {
            for v in &volumes {
                db.put_volume(v)?;
                for (k, val) in &volume_tags {
                    db.put_tag(&v.volume_id, k, val)?;
                }
            }
            for i in &instances {
                db.put_instance(i)?;
                for (k, v) in &tags {
                    db.put_tag(&i.instance_id, k, v)?;
                }
            }
            Ok(())
        })?;
        undo.disarm();
        drop(volume_locks);
        failpoint("run-instances:committed")?;
        // Each instance's lock is held until its supervisor runs (or the
        // launch is settled), so no other process takes a launch in
        // progress for a dead instance.
        for (i, lock) in instances.iter().zip(instance_locks) {
            if let Err(e) = self.spawn_supervisor(&i.instance_id, "run-instances") {
                self.record_exit(
                    &i.instance_id,
                    Some("Server.InternalError"),
                    &format!("The supervisor could not start: {e}"),
                )?;
            }
            failpoint("run-instances:started")?;
            drop(lock);
        }
        let shown = self.describe_instances(
            caller,
            DescribeInstancesRequest {
                instance_ids: instances.iter().map(|i| i.instance_id.clone()).collect(),
                ..Default::default()
            },
        )?;
        shown
            .reservations
            .into_iter()
            .next()
            .ok_or_else(|| Error::internal(format!("Reservation {reservation_id} is not shown")))
    }

    /// The checks every launch makes first, wherever it runs (this
    /// machine or a region's backend): the AMI is available, the type
    /// exists and fits the AMI's architecture, the count and the user data
    /// are within EC2's limits.
    pub(super) fn check_launch_basics(
        &mut self,
        caller: &Caller,
        input: &RunInstancesRequest,
    ) -> Result<LaunchBasics> {
        let image = self.launchable_image(caller, &input.image_id)?;
        if image.state != ImageStateName::Available {
            return Err(Error::new(
                ErrorCode::InvalidAmiIdUnavailable,
                format!("Image {} is {}, not available", image.image_id, image.state),
            ));
        }
        // EC2's default, whatever the AMI: an arm64 AMI needs a type named.
        let type_name = (input.instance_type.as_deref())
            .unwrap_or(machine::instance_types::DEFAULT_INSTANCE_TYPE)
            .to_string();
        let itype = machine::instance_type(&type_name).ok_or_else(|| {
            Error::invalid_value(format!("Invalid value '{type_name}' for InstanceType."))
        })?;
        if !itype.supports_architecture(image.architecture.as_str()) {
            return Err(Error::invalid_value(
                format!(
                    "The architecture '{}' of the specified instance type does not match the architecture '{}' of the specified AMI. Specify an instance type and an AMI that have matching architectures, and try again. You can use 'describe-instance-types' or 'describe-images' to discover the architecture of the instance type or AMI.",
                    itype.architectures_for_error(),
                    image.architecture
                ),
            ));
        }
        let count = launch_count(input.min_count, input.max_count)?;
        if let Some(u) = &input.user_data {
            if u.bytes().len() > USER_DATA_LIMIT {
                return Err(Error::invalid_value(format!(
                    "User data is limited to {USER_DATA_LIMIT} bytes (this is {} bytes after base64 decoding)",
                    u.bytes().len()
                )));
            }
        }
        Ok(LaunchBasics {
            image,
            type_name,
            itype,
            count,
        })
    }

    /// Everything a launch checks before it makes anything, and what it
    /// needs from the checks: the AMI (its data made local), the type, the
    /// merged mappings with each EBS volume's size, the accelerator.
    fn plan_launch(&mut self, caller: &Caller, input: &RunInstancesRequest) -> Result<LaunchPlan> {
        let LaunchBasics {
            image,
            type_name,
            itype,
            count,
        } = self.check_launch_basics(caller, input)?;
        // Subnet and groups first: a zone is checked against its subnet.
        let network = self.plan_launch_network(caller, &input.network(), count)?;
        check_placement(input.placement.as_ref(), &caller.region)?;
        check_ebs_options(&input.block_device_mappings)?;
        if input.ebs_optimized == Some(true) {
            return Err(Error::new(
                ErrorCode::UnsupportedOperation,
                "EbsOptimized=true is not supported: amirun's volumes have no separate EBS bandwidth; leave it out",
            ));
        }
        if let Some(p) = &input.iam_instance_profile {
            let given = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
            if given(&p.arn) || given(&p.name) {
                return Err(Error::new(
                    ErrorCode::UnsupportedOperation,
                    "IamInstanceProfile is not supported: amirun has no IAM roles to give an instance; leave it out",
                ));
            }
        }
        if input.monitoring.as_ref().is_some_and(|m| m.enabled) {
            return Err(Error::new(
                ErrorCode::UnsupportedOperation,
                "Monitoring.Enabled=true is not supported: amirun has no detailed monitoring; leave it out",
            ));
        }
        if input.disable_api_termination == Some(true) {
            return Err(Error::new(
                ErrorCode::UnsupportedOperation,
                "DisableApiTermination=true at launch is not supported yet; launch, then modify-instance-attribute --disable-api-termination",
            ));
        }
        let shutdown = input
            .instance_initiated_shutdown_behavior
            .unwrap_or(ShutdownBehavior::Stop);
        let public_keys = match &input.key_name {
            Some(k) => vec![self.key_pair(caller, k)?.public_key],
            None => Vec::new(),
        };
        let outbound = guest_outbound(
            crate::service::images::tags_for(&input.tag_specifications, "instance")?
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
            self.options.default_outbound,
        )?;
        let arch = image.architecture.machine();
        machine::find_qemu(arch)?;
        let accel = machine::choose_accel(
            self.options.launch_accel,
            arch,
            &self.paths.accel_probe_cache(),
        )?;
        let boot_mode = resolve_boot_mode(&image, arch)?;
        let metadata_options = metadata_options(input.metadata_options.as_ref())?;
        // Long work first, with no transaction held: make the AMI's data local.
        let fetched = self.fetch_image(caller, &image.image_id)?;
        let mappings = merge_mappings(&image.block_device_mappings, &input.block_device_mappings);
        // Every size is checked before anything is made.
        let mut volume_sizes = Vec::new();
        for m in &mappings {
            let Some(ebs) = &m.ebs else { continue };
            let data = ebs
                .snapshot_id
                .as_ref()
                .and_then(|s| fetched.iter().find(|d| d.snapshot_id.as_deref() == Some(s)));
            if data.is_none() {
                if let Some(s) = &ebs.snapshot_id {
                    return Err(crate::service::snapshot_not_found(s));
                }
            }
            let snapshot_gib = data.map(|d| d.virtual_size.div_ceil(1 << 30));
            let gib = volume_size_gib(&m.device_name, ebs, snapshot_gib)?;
            volume_sizes.push((gib, gib_to_bytes(gib)?));
        }
        let root_volume_gib = mappings
            .iter()
            .filter(|m| m.ebs.is_some())
            .zip(&volume_sizes)
            .find(|(m, _)| m.device_name == image.root_device_name)
            .map(|(_, &(gib, _))| gib);
        let hibernation = crate::service::hibernation::check_launch(
            input.hibernation_options.as_ref(),
            itype,
            image.root_device_type,
            root_volume_gib,
        )?;
        Ok(LaunchPlan {
            image,
            type_name,
            itype,
            count,
            shutdown,
            public_keys,
            outbound,
            accel,
            boot_mode,
            metadata_options,
            fetched,
            mappings,
            volume_sizes,
            network,
            hibernation,
        })
    }

    /// One new instance's disks: the instance-store root overlay, one
    /// volume per EBS mapping (locked, recorded in `volumes`, removed by
    /// `undo` if the launch fails) and its instance-store disks; the root
    /// device first.
    #[allow(clippy::too_many_arguments)]
    fn make_disks(
        &mut self,
        caller: &Caller,
        plan: &LaunchPlan,
        instance_id: &str,
        launch_time: &str,
        undo: &mut Undo,
        volume_locks: &mut Vec<ObjectLock>,
        volumes: &mut Vec<VolumeState>,
    ) -> Result<Vec<InstanceDevice>> {
        let mut devices = Vec::new();
        // Root disk.
        if plan.image.root_device_type == RootDeviceType::InstanceStore {
            let root = plan
                .fetched
                .iter()
                .find(|d| d.snapshot_id.is_none())
                .ok_or_else(|| Error::internal("Instance-store AMI has no root image"))?;
            crate::disk::create_overlay(
                std::path::Path::new(&root.path),
                "qcow2",
                &self.paths.instance_store_root(instance_id),
                None,
            )?;
            devices.push(InstanceDevice {
                device_name: plan.image.root_device_name.clone(),
                volume_id: None,
                virtual_name: Some("root".into()),
                size_gib: root.virtual_size.div_ceil(1 << 30),
                delete_on_termination: true,
                attach_time: launch_time.to_string(),
            });
        }
        let mut ephemeral = 0u32;
        let mut sizes = plan.volume_sizes.iter();
        for m in &plan.mappings {
            if let Some(ebs) = &m.ebs {
                let &(size_gib, size_bytes) = sizes.next().expect("one size per EBS mapping");
                let volume_id = ids::new_id(IdKind::Volume);
                volume_locks.push(object_lock::lock(&self.paths, &volume_id)?);
                let path = self.paths.volume(&volume_id);
                let data = ebs.snapshot_id.as_ref().and_then(|s| {
                    plan.fetched
                        .iter()
                        .find(|d| d.snapshot_id.as_deref() == Some(s))
                });
                undo.files.push(path.clone());
                match data {
                    Some(d) => crate::disk::create_overlay(
                        std::path::Path::new(&d.path),
                        "qcow2",
                        &path,
                        Some(size_bytes),
                    )?,
                    None => crate::disk::create_blank(&path, size_bytes)?,
                }
                failpoint("run-instances:volume")?;
                let delete = ebs.delete_on_termination.unwrap_or(true);
                volumes.push(VolumeState {
                    volume_id: volume_id.clone(),
                    region: caller.region.clone(),
                    owner_id: caller.account.to_string(),
                    size_gib,
                    snapshot_id: ebs.snapshot_id.clone(),
                    state: VolumeStateName::InUse,
                    create_time: launch_time.to_string(),
                    availability_zone: format!("{}a", caller.region),
                    volume_type: ebs.volume_type.clone().unwrap_or_else(|| "gp3".into()),
                    instance_id: Some(instance_id.to_string()),
                    device: Some(m.device_name.clone()),
                    attach_time: Some(launch_time.to_string()),
                    delete_on_termination: delete,
                });
                let dev = InstanceDevice {
                    device_name: m.device_name.clone(),
                    volume_id: Some(volume_id),
                    virtual_name: None,
                    size_gib,
                    delete_on_termination: delete,
                    attach_time: launch_time.to_string(),
                };
                if m.device_name == plan.image.root_device_name {
                    devices.insert(0, dev);
                } else {
                    devices.push(dev);
                }
            } else if let Some(v) = &m.virtual_name {
                if let Some(&gib) = plan.itype.instance_store_gib.get(ephemeral as usize) {
                    devices.push(InstanceDevice {
                        device_name: m.device_name.clone(),
                        volume_id: None,
                        virtual_name: Some(v.clone()),
                        size_gib: gib,
                        delete_on_termination: true,
                        attach_time: launch_time.to_string(),
                    });
                    ephemeral += 1;
                }
            }
        }
        // Instance-store disks of `d` types that no mapping named.
        for (n, &gib) in plan
            .itype
            .instance_store_gib
            .iter()
            .enumerate()
            .skip(ephemeral as usize)
        {
            devices.push(InstanceDevice {
                device_name: format!("/dev/sd{}", (b'b' + n as u8) as char),
                virtual_name: Some(format!("ephemeral{n}")),
                volume_id: None,
                size_gib: gib,
                delete_on_termination: true,
                attach_time: launch_time.to_string(),
            });
        }
        if devices
            .first()
            .is_none_or(|d| d.device_name != plan.image.root_device_name)
        {
            return Err(Error::new(
                ErrorCode::InvalidBlockDeviceMapping,
                format!(
                    "No block device mapping gives the root device {}",
                    plan.image.root_device_name
                ),
            ));
        }
        Ok(devices)
    }

    /// The reservation a launch with this id made earlier, if any.
    pub(super) fn launched_reservation(
        &mut self,
        caller: &Caller,
        reservation_id: &str,
    ) -> Result<Option<Reservation>> {
        let ids_: Vec<String> = self
            .store
            .read(|db| db.instances_in_region(&caller.region))?
            .into_iter()
            .filter(|i| i.owner_id == caller.account && i.reservation_id == reservation_id)
            .map(|i| i.instance_id)
            .collect();
        if ids_.is_empty() {
            return Ok(None);
        }
        let shown = self.describe_instances(
            caller,
            DescribeInstancesRequest {
                instance_ids: ids_,
                ..Default::default()
            },
        )?;
        Ok(shown.reservations.into_iter().next())
    }
}

/// What [`Service::check_launch_basics`] found.
pub(super) struct LaunchBasics {
    pub image: ImageState,
    pub type_name: String,
    pub itype: &'static machine::InstanceType,
    pub count: u32,
}
