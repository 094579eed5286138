//! Instances: launch AMIs as QEMU guests with EC2's lifecycle, and their
//! EBS volumes.
//!
//! State machine (EC2's names and codes):
//!
//! ```text
//! pending(0) -> running(16) -> stopping(64) -> stopped(80) -> pending ...
//! pending|running|stopping|stopped -> shutting-down(32) -> terminated(48)
//! ```
//!
//! The database holds the last state amirun recorded (the intent); what is
//! shown is reconciled with live facts on every read ([`Service::refresh_instances`]):
//! whether the supervisor and QEMU are alive, and the supervisor's `exited`
//! record. So a killed supervisor or QEMU never leaves an instance `running`,
//! and a guest that powers itself off stops (EBS) or terminates
//! (instance-store, or shutdown behavior `terminate`).

use super::shapes::{Filter, Tag, TagSpecification};
use super::{filter, now, Caller, Error, Result, Service};
use crate::ids::{self, IdKind};
use crate::instance::supervisor::{self, ExitReason, LaunchSpec, SupervisorClient};
use crate::machine::{
    self, Accel, AccelRequest, Arch, Boot, DiskFormat, DiskSpec, MachineSpec, NetSpec,
    SmbiosIdentity,
};
use crate::network::{self, NetworkStatus};
use crate::store::{BlockDeviceMapping, ImageState, InstanceDevice, InstanceState, VolumeState};
use serde::Serialize;
use serde_json::{json, Value};
use std::path::PathBuf;

/// EC2's numeric code for a state name.
pub fn state_code(name: &str) -> u16 {
    match name {
        "pending" => 0,
        "running" => 16,
        "shutting-down" => 32,
        "terminated" => 48,
        "stopping" => 64,
        "stopped" => 80,
        _ => 0,
    }
}

/// `run-instances`.
#[derive(Debug, Clone, Default)]
pub struct RunInstancesInput {
    pub image_id: String,
    pub instance_type: Option<String>,
    pub min_count: u32,
    pub max_count: u32,
    pub key_name: Option<String>,
    pub user_data: Option<Vec<u8>>,
    pub block_device_mappings: Vec<BlockDeviceMapping>,
    pub shutdown_behavior: Option<String>,
    pub tag_specifications: Vec<TagSpecification>,
    pub accel: AccelRequest,
    pub metadata_options: Option<Value>,
}

/// An instance's state as EC2 shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceStateShape {
    pub code: u16,
    pub name: String,
}

impl InstanceStateShape {
    fn of(name: &str) -> Self {
        InstanceStateShape {
            code: state_code(name),
            name: name.to_string(),
        }
    }
}

/// One entry of Starting/Stopping/TerminatingInstances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct StateChange {
    pub current_state: InstanceStateShape,
    pub instance_id: String,
    pub previous_state: InstanceStateShape,
}

/// What `get-console-output` returns (Output as text; the HTTP API base64-encodes it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ConsoleOutput {
    pub instance_id: String,
    pub timestamp: String,
    pub output: String,
}

/// How to log in to an instance (for `amirun ssh`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    pub port: u16,
    pub user: String,
    pub identity_file: Option<PathBuf>,
}

const INSTANCE_FILTERS: &[&str] = &[
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

const VOLUME_FILTERS: &[&str] = &[
    "attachment.instance-id",
    "attachment.delete-on-termination",
    "attachment.device",
    "size",
    "snapshot-id",
    "status",
    "volume-id",
    "volume-type",
    "tag-key",
];

/// Files made while launching, removed if the launch fails.
#[derive(Default)]
struct Undo {
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

fn io_error(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::new("InternalError", what).with_source(e)
}

/// The guest network an instance's tags choose ([`machine::OUTBOUND_TAG`]):
/// outbound access (`nat`, the default) unless the tag says `none`.
fn guest_outbound<'a>(
    mut tags: impl Iterator<Item = (&'a str, &'a str)>,
) -> Result<machine::Outbound> {
    match tags.find(|(k, _)| *k == machine::OUTBOUND_TAG) {
        None => Ok(machine::Outbound::Nat),
        Some((_, v)) => machine::Outbound::from_tag(v).ok_or_else(|| {
            Error::invalid_value(format!(
                "Invalid value '{v}' for tag {}: use 'nat' (DNS and outbound access, the default) or 'none' (IMDS and SSH only)",
                machine::OUTBOUND_TAG
            ))
        }),
    }
}

/// A free TCP port on 127.0.0.1 not recorded for another instance.
fn free_port(taken: &[u16]) -> Result<u16> {
    for _ in 0..32 {
        let l = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(io_error("Cannot find a free port on 127.0.0.1".into()))?;
        let p = l
            .local_addr()
            .map_err(io_error("Cannot read a port".into()))?
            .port();
        if !taken.contains(&p) {
            return Ok(p);
        }
    }
    Err(Error::new(
        "InsufficientInstanceCapacity",
        "No free port on 127.0.0.1 for the ssh forward",
    ))
}

/// The login user an image's vendor uses.
fn default_user(image: Option<&ImageState>) -> String {
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

impl Service {
    /// `RunInstances`: launch `max_count` instances of an AMI; returns the reservation.
    pub fn run_instances(&mut self, caller: &Caller, input: &RunInstancesInput) -> Result<Value> {
        let image = self.launchable_image(caller, &input.image_id)?;
        if image.state != "available" {
            return Err(Error::new(
                "InvalidAMIID.Unavailable",
                format!("Image {} is {}, not available", image.image_id, image.state),
            ));
        }
        let type_name = input.instance_type.clone().unwrap_or_else(|| {
            if image.architecture == "arm64" {
                "t4g.micro".into()
            } else {
                "t3.micro".into()
            }
        });
        let itype = machine::instance_type(&type_name).ok_or_else(|| {
            Error::invalid_value(format!("Invalid value '{type_name}' for InstanceType."))
        })?;
        if !itype.supports_architecture(&image.architecture) {
            return Err(Error::new(
                "InvalidParameterValue",
                format!(
                    "The architecture '{}' of the specified instance type does not match the architecture '{}' of the specified AMI. Specify an instance type and an AMI that have matching architectures",
                    itype.architectures.join(","),
                    image.architecture
                ),
            ));
        }
        let (min, max) = (
            input.min_count.max(1),
            input.max_count.max(input.min_count).max(1),
        );
        if min > max || max > 64 {
            return Err(Error::invalid_value(format!(
                "MinCount {min} and MaxCount {max} must satisfy 1 <= MinCount <= MaxCount <= 64"
            )));
        }
        let shutdown = input
            .shutdown_behavior
            .clone()
            .unwrap_or_else(|| "stop".into());
        if shutdown != "stop" && shutdown != "terminate" {
            return Err(Error::invalid_value(format!(
                "Value ({shutdown}) for parameter InstanceInitiatedShutdownBehavior is invalid; use stop or terminate"
            )));
        }
        let public_keys = match &input.key_name {
            Some(k) => vec![self.key_pair(caller, k)?.public_key],
            None => Vec::new(),
        };
        let outbound = guest_outbound(
            super::images::tags_for(&input.tag_specifications, "instance")?
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        )?;
        let arch = Arch::from_ec2(&image.architecture)?;
        machine::find_qemu(arch)?;
        let accel = machine::choose_accel(input.accel, arch, &self.paths.accel_probe_cache())?;
        let boot_mode = resolve_boot_mode(&image, arch)?;
        let metadata_options = metadata_options(input.metadata_options.as_ref())?;
        // Long work first, with no transaction held: make the AMI's data local.
        let fetched = self.fetch_image(caller, &image.image_id)?;
        let mappings = merge_mappings(&image.block_device_mappings, &input.block_device_mappings);
        let reservation_id = ids::new_id(IdKind::Reservation);
        let launch_time = now();
        let mut undo = Undo::new();
        let vdir = self.paths.volume_dir();
        std::fs::create_dir_all(&vdir)
            .map_err(io_error(format!("Cannot create {}", vdir.display())))?;
        let mut instances = Vec::new();
        let mut volumes = Vec::new();
        let mut taken = self.store.read(|db| db.ports_in_use())?;
        for index in 0..max {
            let instance_id = ids::new_id(IdKind::Instance);
            let dir = self.paths.instance_dir(&instance_id);
            std::fs::create_dir_all(&dir)
                .map_err(io_error(format!("Cannot create {}", dir.display())))?;
            undo.dirs.push(dir);
            let rdir = self.paths.instance_runtime_dir(&instance_id);
            std::fs::create_dir_all(&rdir)
                .map_err(io_error(format!("Cannot create {}", rdir.display())))?;
            undo.dirs.push(rdir);
            let mut devices = Vec::new();
            // Root disk.
            if image.root_device_type == "instance-store" {
                let root = fetched
                    .iter()
                    .find(|d| d.snapshot_id.is_none())
                    .ok_or_else(|| {
                        Error::new("InternalError", "Instance-store AMI has no root image")
                    })?;
                crate::disk::create_overlay(
                    std::path::Path::new(&root.path),
                    "qcow2",
                    &self.paths.instance_store_root(&instance_id),
                    None,
                )?;
                devices.push(InstanceDevice {
                    device_name: image.root_device_name.clone(),
                    volume_id: None,
                    virtual_name: Some("root".into()),
                    size_gib: root.virtual_size.div_ceil(1 << 30),
                    delete_on_termination: true,
                    attach_time: launch_time.clone(),
                });
            }
            let mut ephemeral = 0u32;
            for m in &mappings {
                if let Some(ebs) = &m.ebs {
                    let volume_id = ids::new_id(IdKind::Volume);
                    let path = self.paths.volume(&volume_id);
                    let data = ebs
                        .snapshot_id
                        .as_ref()
                        .and_then(|s| fetched.iter().find(|d| d.snapshot_id.as_deref() == Some(s)));
                    let snapshot_gib = data.map_or(0, |d| d.virtual_size.div_ceil(1 << 30));
                    let size_gib = ebs
                        .volume_size
                        .unwrap_or(snapshot_gib.max(1))
                        .max(snapshot_gib)
                        .max(1);
                    match data {
                        Some(d) => crate::disk::create_overlay(
                            std::path::Path::new(&d.path),
                            "qcow2",
                            &path,
                            Some(size_gib << 30),
                        )?,
                        None if ebs.snapshot_id.is_some() => {
                            return Err(super::snapshot_not_found(
                                ebs.snapshot_id.as_deref().unwrap_or(""),
                            ))
                        }
                        None => crate::disk::create_blank(&path, size_gib << 30)?,
                    }
                    undo.files.push(path);
                    let delete = ebs.delete_on_termination.unwrap_or(true);
                    volumes.push(VolumeState {
                        volume_id: volume_id.clone(),
                        region: caller.region.clone(),
                        owner_id: caller.account.clone(),
                        size_gib,
                        snapshot_id: ebs.snapshot_id.clone(),
                        state: "in-use".into(),
                        create_time: launch_time.clone(),
                        availability_zone: format!("{}a", caller.region),
                        volume_type: ebs.volume_type.clone().unwrap_or_else(|| "gp3".into()),
                        instance_id: Some(instance_id.clone()),
                        device: Some(m.device_name.clone()),
                        attach_time: Some(launch_time.clone()),
                        delete_on_termination: delete,
                    });
                    let dev = InstanceDevice {
                        device_name: m.device_name.clone(),
                        volume_id: Some(volume_id),
                        virtual_name: None,
                        size_gib,
                        delete_on_termination: delete,
                        attach_time: launch_time.clone(),
                    };
                    if m.device_name == image.root_device_name {
                        devices.insert(0, dev);
                    } else {
                        devices.push(dev);
                    }
                } else if let Some(v) = &m.virtual_name {
                    if let Some(&gib) = itype.instance_store_gib.get(ephemeral as usize) {
                        devices.push(InstanceDevice {
                            device_name: m.device_name.clone(),
                            volume_id: None,
                            virtual_name: Some(v.clone()),
                            size_gib: gib,
                            delete_on_termination: true,
                            attach_time: launch_time.clone(),
                        });
                        ephemeral += 1;
                    }
                }
            }
            // Instance-store disks of `d` types that no mapping named.
            for (n, &gib) in itype
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
                    attach_time: launch_time.clone(),
                });
            }
            if devices
                .first()
                .is_none_or(|d| d.device_name != image.root_device_name)
            {
                return Err(Error::new(
                    "InvalidBlockDeviceMapping",
                    format!(
                        "No block device mapping gives the root device {}",
                        image.root_device_name
                    ),
                ));
            }
            if super::imds::nocloud_seed_wanted() {
                crate::metadata::build_seed(
                    &self.paths.seed_image(&instance_id),
                    &crate::metadata::SeedSpec {
                        instance_id: instance_id.clone(),
                        hostname: "ip-169-254-0-15".into(),
                        user_data: input.user_data.clone(),
                        public_keys: public_keys.clone(),
                        network_config: None,
                    },
                )?;
            }
            let ssh_port = free_port(&taken)?;
            taken.push(ssh_port);
            let state = InstanceState {
                instance_id: instance_id.clone(),
                region: caller.region.clone(),
                owner_id: caller.account.clone(),
                reservation_id: reservation_id.clone(),
                image_id: image.image_id.clone(),
                instance_type: type_name.clone(),
                architecture: image.architecture.clone(),
                boot_mode: boot_mode.clone(),
                root_device_type: image.root_device_type.clone(),
                root_device_name: image.root_device_name.clone(),
                state: "pending".into(),
                state_reason: None,
                state_transition_reason: None,
                launch_time: launch_time.clone(),
                key_name: input.key_name.clone(),
                user_data: input.user_data.clone(),
                shutdown_behavior: shutdown.clone(),
                accel: accel_name(accel.accel).into(),
                accel_reason: accel.reason.clone(),
                ssh_port: Some(ssh_port),
                imds_port: None,
                launch_index: index,
                metadata_options: metadata_options.clone(),
                devices,
                updated: launch_time.clone(),
            };
            self.prepare_boot_with(&state, outbound)?;
            instances.push(state);
        }
        let tags = super::images::tags_for(&input.tag_specifications, "instance")?;
        let volume_tags = super::images::tags_for(&input.tag_specifications, "volume")?;
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
        for i in &instances {
            if let Err(e) = self.spawn_supervisor(&i.instance_id) {
                self.record_exit(
                    &i.instance_id,
                    Some("Server.InternalError"),
                    &format!("The supervisor could not start: {e}"),
                )?;
            }
        }
        let shown = self.describe_instances(
            caller,
            &instances
                .iter()
                .map(|i| i.instance_id.clone())
                .collect::<Vec<_>>(),
            &[],
        )?;
        let reservation = shown
            .get("Reservations")
            .and_then(|r| r.get(0))
            .cloned()
            .unwrap_or(Value::Null);
        Ok(reservation)
    }

    /// [`Self::prepare_boot_with`] the guest network its tags choose now.
    fn prepare_boot(&mut self, i: &InstanceState) -> Result<()> {
        let tags = self.store.read(|db| db.tags_of(&i.instance_id))?;
        let outbound = guest_outbound(tags.iter().map(|t| (t.key.as_str(), t.value.as_str())))?;
        self.prepare_boot_with(i, outbound)
    }

    /// Create the per-boot files (instance-store disks, UEFI vars) and the launch spec.
    fn prepare_boot_with(&mut self, i: &InstanceState, outbound: machine::Outbound) -> Result<()> {
        let arch = Arch::from_ec2(&i.architecture)?;
        let rdir = self.paths.instance_runtime_dir(&i.instance_id);
        std::fs::create_dir_all(&rdir)
            .map_err(io_error(format!("Cannot create {}", rdir.display())))?;
        let mut disks = Vec::new();
        let mut ephemeral = 0u32;
        for d in &i.devices {
            let path = match (&d.volume_id, d.virtual_name.as_deref()) {
                (Some(v), _) => self.paths.volume(v),
                (None, Some("root")) => self.paths.instance_store_root(&i.instance_id),
                (None, _) => {
                    let p = self.paths.ephemeral_disk(&i.instance_id, ephemeral);
                    ephemeral += 1;
                    if !p.exists() {
                        crate::disk::create_blank(&p, d.size_gib << 30)?;
                    }
                    p
                }
            };
            if !path.exists() {
                return Err(Error::new(
                    "InternalError",
                    format!(
                        "Disk {} of {} is missing ({})",
                        d.device_name,
                        i.instance_id,
                        path.display()
                    ),
                ));
            }
            disks.push(DiskSpec {
                path,
                format: DiskFormat::Qcow2,
                read_only: false,
                serial: Some(match &d.volume_id {
                    Some(v) => machine::volume_serial(v),
                    None => format!("AWS{}", d.virtual_name.as_deref().unwrap_or("ephemeral")),
                }),
            });
        }
        let image = self.store.read(|db| db.image(&i.image_id))?;
        let kernel = image.as_ref().and_then(|im| im.kernel_source.clone());
        let boot = if let Some(kernel) = kernel {
            // Direct kernel boot: the AMI names a kernel (and ramdisk); they
            // are stored byte for byte, never converted like disk images.
            let image = image.expect("kernel came from the image");
            let kernel = self.fetch_opaque(&kernel)?;
            let initrd = match &image.ramdisk_source {
                Some(r) => Some(self.fetch_opaque(r)?),
                None => None,
            };
            Boot::Kernel {
                kernel,
                initrd,
                cmdline: image
                    .kernel_cmdline
                    .clone()
                    .unwrap_or_else(|| format!("console={}", arch.console_device())),
            }
        } else if i.boot_mode == "legacy-bios" {
            Boot::LegacyBios
        } else {
            let fw = machine::find_system_uefi_firmware(arch)?;
            let vars = self.paths.uefi_vars(&i.instance_id);
            machine::install_uefi_vars(&fw, &vars)?;
            Boot::Uefi {
                code: fw.code,
                vars,
            }
        };
        let itype = machine::instance_type(&i.instance_type).ok_or_else(|| {
            Error::invalid_value(format!(
                "Invalid value '{}' for InstanceType.",
                i.instance_type
            ))
        })?;
        let (imds, imds_forward) = self.imds_for_boot(i)?;
        let (outbound, guest_net) = self.guest_network(i, outbound)?;
        let spec = MachineSpec {
            instance_id: i.instance_id.clone(),
            arch,
            boot,
            accel: if i.accel == "kvm" {
                Accel::Kvm
            } else {
                Accel::Tcg
            },
            vcpus: itype.vcpus,
            memory_mib: itype.memory_mib,
            disks,
            // No seed when launched with AMIRUN_NOCLOUD_SEED=0: IMDS only.
            seed: Some(self.paths.seed_image(&i.instance_id)).filter(|s| s.exists()),
            net: NetSpec {
                ssh_port: i.ssh_port,
                imds: Some(imds_forward),
                outbound,
            },
            qmp_socket: self.paths.qmp_socket(&i.instance_id),
            serial_log: self.paths.serial_log(&i.instance_id),
            smbios: SmbiosIdentity::for_instance(&i.instance_id, &i.instance_type),
        };
        let cmd = machine::qemu_command(&spec)?;
        let mut launch = LaunchSpec::new(
            &self.paths,
            &i.instance_id,
            PathBuf::from(cmd.program),
            cmd.args,
        );
        launch.stop_timeout_secs = std::env::var("AMIRUN_STOP_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60);
        launch.imds = Some(serde_json::to_value(&imds).expect("serializable"));
        launch.network = guest_net;
        launch.write(&self.paths.launch_spec(&i.instance_id))?;
        Ok(())
    }

    /// The guest network for the next boot of `i`: outbound access needs a
    /// network namespace of the guest's own ([`network`]), made by its
    /// supervisor, which records how the leg came up; without one the guest
    /// is sealed instead, and the status file says why.
    fn guest_network(
        &self,
        i: &InstanceState,
        wanted: machine::Outbound,
    ) -> Result<(machine::Outbound, Option<network::GuestNetworkSpec>)> {
        let status_file = self.paths.network_status(&i.instance_id);
        let sealed = |why: String| -> Result<_> {
            NetworkStatus::new("none", why)
                .write(&status_file)
                .map_err(io_error(format!("write {}", status_file.display())))?;
            Ok((machine::Outbound::None, None))
        };
        if wanted == machine::Outbound::None {
            return sealed(format!(
                "Launched with {}=none: IMDS and SSH only",
                machine::OUTBOUND_TAG
            ));
        }
        if let Err(why) = network::namespaces_available() {
            return sealed(format!(
                "Sealed instead of outbound access: {why}; the guest has IMDS and SSH only"
            ));
        }
        let _ = std::fs::remove_file(&status_file);
        Ok((
            machine::Outbound::Nat,
            Some(network::GuestNetworkSpec {
                netns_file: self.paths.netns_file(&i.instance_id),
                resolv_conf: self.paths.guest_resolv_conf(&i.instance_id),
                status_file: status_file.clone(),
                ssh_port: i.ssh_port,
            }),
        ))
    }

    /// Fetch a kernel or ramdisk (a file, not a disk image) and return its path.
    fn fetch_opaque(&mut self, source: &crate::store::SourceSpec) -> Result<PathBuf> {
        let source = crate::store::SourceSpec {
            format: Some(crate::images::OPAQUE_FORMAT.into()),
            ..source.clone()
        };
        Ok(self.fetch_source(&source)?.path)
    }

    fn spawn_supervisor(&self, instance_id: &str) -> Result<u32> {
        let exe = std::env::var_os("AMIRUN_EXE")
            .map(PathBuf::from)
            .or_else(|| std::env::current_exe().ok())
            .ok_or_else(|| Error::new("InternalError", "Cannot find the amirun executable"))?;
        let pid = supervisor::spawn_detached(&exe, &self.paths.launch_spec(instance_id))?;
        // The supervisor writes its pid file once it is up; until then the
        // instance would look dead to reconciliation. Wait for a live fact.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let live = supervisor::probe(&self.paths, instance_id);
            if live.supervisor_alive || live.last_exit.is_some() {
                return Ok(pid);
            }
            if std::time::Instant::now() >= deadline {
                return Err(Error::new(
                    "InternalError",
                    format!(
                        "The supervisor of {instance_id} did not start within 20 s (see {})",
                        self.paths.supervisor_log(instance_id).display()
                    ),
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Record that an instance's guest ended outside the normal flow (e.g. the
    /// supervisor could not start), and settle it.
    fn record_exit(&mut self, instance_id: &str, code: Option<&str>, message: &str) -> Result<()> {
        let Some(mut i) = self.store.read(|db| db.instance(instance_id))? else {
            return Ok(());
        };
        let target = if i.root_device_type == "instance-store" {
            "terminated"
        } else {
            "stopped"
        };
        i.state_reason = Some(format!(
            "{}: {message}",
            code.unwrap_or("Server.InternalError")
        ));
        self.settle(&mut i, target)
    }

    /// Move an instance to a final state (`stopped` or `terminated`) and clean up its disks.
    fn settle(&mut self, i: &mut InstanceState, target: &str) -> Result<()> {
        i.state = target.to_string();
        i.updated = now();
        let runtime = self.paths.instance_runtime_dir(&i.instance_id);
        // Instance-store disks never survive a stop or terminate.
        let _ = std::fs::remove_dir_all(&runtime);
        let mut delete_files = Vec::new();
        let paths = self.paths.clone();
        let snapshot = i.clone();
        self.store.write(|db| -> Result<()> {
            db.put_instance(&snapshot)?;
            if target == "terminated" {
                for d in &snapshot.devices {
                    let Some(vid) = &d.volume_id else { continue };
                    let Some(mut v) = db.volume(vid)? else {
                        continue;
                    };
                    if v.delete_on_termination {
                        db.delete_volume(vid)?;
                        delete_files.push(paths.volume(vid));
                    } else {
                        v.state = "available".into();
                        v.instance_id = None;
                        v.device = None;
                        v.attach_time = None;
                        db.put_volume(&v)?;
                    }
                }
            }
            Ok(())
        })?;
        for f in delete_files {
            let _ = std::fs::remove_file(f);
        }
        if target == "terminated" {
            for f in [
                self.paths.seed_image(&i.instance_id),
                self.paths.uefi_vars(&i.instance_id),
            ] {
                let _ = std::fs::remove_file(f);
            }
        }
        Ok(())
    }

    /// Reconcile recorded states with live facts (supervisor, QEMU, exit record).
    pub fn refresh_instances(&mut self, caller: &Caller) -> Result<()> {
        let live: Vec<InstanceState> = self
            .store
            .read(|db| db.live_instances())?
            .into_iter()
            .filter(|i| i.region == caller.region)
            .collect();
        for mut i in live {
            if i.state == "stopped" {
                continue;
            }
            let facts = supervisor::probe(&self.paths, &i.instance_id);
            if facts.supervisor_alive {
                if i.state == "pending" && (facts.qemu_alive || facts.last_exit.is_none()) {
                    let running = supervisor::read_events(&self.paths.events(&i.instance_id))
                        .unwrap_or_default()
                        .iter()
                        .rev()
                        .take_while(|e| {
                            !matches!(e.event, supervisor::Event::SupervisorStarted { .. })
                        })
                        .any(|e| matches!(e.event, supervisor::Event::GuestRunning));
                    if running {
                        i.state = "running".into();
                        i.updated = now();
                        let s = i.clone();
                        self.store.write(|db| db.put_instance(&s))?;
                    }
                }
                continue;
            }
            // The supervisor is gone: the guest has ended. Decide how.
            let store_backed = i.root_device_type == "instance-store";
            let reason = facts.last_exit.as_ref().map(|e| e.reason);
            let (target, why) = match (i.state.as_str(), reason) {
                ("shutting-down", _) => (
                    "terminated",
                    "Client.UserInitiatedShutdown: User initiated shutdown",
                ),
                ("stopping", _) => (
                    "stopped",
                    "Client.UserInitiatedShutdown: User initiated shutdown",
                ),
                (_, Some(ExitReason::GuestShutdown)) => {
                    if store_backed || i.shutdown_behavior == "terminate" {
                        (
                            "terminated",
                            "Client.InstanceInitiatedShutdown: Instance initiated shutdown",
                        )
                    } else {
                        (
                            "stopped",
                            "Client.InstanceInitiatedShutdown: Instance initiated shutdown",
                        )
                    }
                }
                (_, Some(ExitReason::StopRequested | ExitReason::Forced)) => {
                    if store_backed {
                        (
                            "terminated",
                            "Client.UserInitiatedShutdown: User initiated shutdown",
                        )
                    } else {
                        (
                            "stopped",
                            "Client.UserInitiatedShutdown: User initiated shutdown",
                        )
                    }
                }
                (_, r) => {
                    let what = match r {
                        Some(ExitReason::QemuKilled) => "QEMU was killed",
                        Some(ExitReason::QemuCrashed) => "QEMU crashed",
                        Some(ExitReason::StartFailed) => {
                            "QEMU failed to start (see supervisor.log)"
                        }
                        _ => "the supervisor died",
                    };
                    let t = if store_backed {
                        "terminated"
                    } else {
                        "stopped"
                    };
                    i.state_reason = Some(format!("Server.InternalError: {what}"));
                    self.settle(&mut i, t)?;
                    continue;
                }
            };
            i.state_reason = Some(why.to_string());
            self.settle(&mut i, target)?;
        }
        let hour_ago = (chrono::Utc::now() - chrono::Duration::hours(1))
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string();
        let purged = self.store.write(|db| db.purge_terminated(&hour_ago))?;
        for id in purged {
            network::release_namespace(&self.paths.netns_file(&id));
            let _ = std::fs::remove_dir_all(self.paths.instance_dir(&id));
        }
        Ok(())
    }

    fn owned_instances(&mut self, caller: &Caller, ids_: &[String]) -> Result<Vec<InstanceState>> {
        for id in ids_ {
            if !ids::is_well_formed(IdKind::Instance, id) {
                return Err(Error::new(
                    "InvalidInstanceID.Malformed",
                    format!("Invalid id: \"{id}\" (expecting \"i-...\")"),
                ));
            }
        }
        if ids_.is_empty() {
            return Err(Error::missing("InstanceId"));
        }
        self.refresh_instances(caller)?;
        self.store.read(|db| -> Result<Vec<InstanceState>> {
            let mut out = Vec::new();
            let mut missing = Vec::new();
            for id in ids_ {
                match db.instance(id)? {
                    Some(i) if i.region == caller.region && i.owner_id == caller.account => {
                        out.push(i)
                    }
                    _ => missing.push(id.clone()),
                }
            }
            if !missing.is_empty() {
                return Err(Error::new(
                    "InvalidInstanceID.NotFound",
                    format!("The instance ID '{}' does not exist", missing.join(", ")),
                ));
            }
            Ok(out)
        })
    }

    /// `DescribeInstances`: reservations with their instances, states reconciled first.
    pub fn describe_instances(
        &mut self,
        caller: &Caller,
        instance_ids: &[String],
        filters: &[Filter],
    ) -> Result<Value> {
        filter::check_names(filters, INSTANCE_FILTERS)?;
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
        let mut reservations: Vec<(String, Vec<Value>)> = Vec::new();
        for i in wanted {
            let tags = self.store.read(|db| db.tags_of(&i.instance_id))?;
            let keep = filter::matches(filters, |name| match name {
                "architecture" => vec![i.architecture.clone()],
                "availability-zone" => vec![format!("{}a", i.region)],
                "image-id" => vec![i.image_id.clone()],
                "instance-id" => vec![i.instance_id.clone()],
                "instance-state-code" => vec![state_code(&i.state).to_string()],
                "instance-state-name" => vec![i.state.clone()],
                "instance-type" => vec![i.instance_type.clone()],
                "key-name" => i.key_name.iter().cloned().collect(),
                "reservation-id" => vec![i.reservation_id.clone()],
                "root-device-type" => vec![i.root_device_type.clone()],
                n => filter::tag_values(&tags, n).unwrap_or_default(),
            });
            if !keep {
                continue;
            }
            let shape = self.render_instance(&i, &tags);
            match reservations
                .iter_mut()
                .find(|(r, _)| *r == i.reservation_id)
            {
                Some((_, list)) => list.push(shape),
                None => reservations.push((i.reservation_id.clone(), vec![shape])),
            }
        }
        Ok(json!({
            "Reservations": reservations
                .into_iter()
                .map(|(r, instances)| json!({
                    "Groups": [],
                    "Instances": instances,
                    "OwnerId": caller.account,
                    "ReservationId": r,
                }))
                .collect::<Vec<_>>()
        }))
    }

    fn render_instance(&self, i: &InstanceState, tags: &[crate::store::TagState]) -> Value {
        let itype = machine::instance_type(&i.instance_type);
        let net_status = NetworkStatus::read(&self.paths.network_status(&i.instance_id));
        let bdm: Vec<Value> = i
            .devices
            .iter()
            .filter_map(|d| {
                d.volume_id.as_ref().map(|v| {
                    json!({
                        "DeviceName": d.device_name,
                        "Ebs": {
                            "AttachTime": d.attach_time,
                            "DeleteOnTermination": d.delete_on_termination,
                            "Status": if i.state == "terminated" { "detached" } else { "attached" },
                            "VolumeId": v,
                        }
                    })
                })
            })
            .collect();
        let mut v = json!({
            "AmiLaunchIndex": i.launch_index,
            "ImageId": i.image_id,
            "InstanceId": i.instance_id,
            "InstanceType": i.instance_type,
            "LaunchTime": i.launch_time,
            "Monitoring": {"State": "disabled"},
            "Placement": {"AvailabilityZone": format!("{}a", i.region), "GroupName": "", "Tenancy": "default"},
            "PrivateDnsName": if i.state == "terminated" { "".to_string() } else { "ip-169-254-0-15.ec2.internal".to_string() },
            "PrivateIpAddress": "169.254.0.15",
            "ProductCodes": [],
            "PublicDnsName": "",
            "State": InstanceStateShape::of(&i.state),
            "StateTransitionReason": i.state_reason.as_deref().map(|r| format!("{r} ({})", i.updated)).unwrap_or_default(),
            "Architecture": i.architecture,
            "BlockDeviceMappings": bdm,
            "EbsOptimized": false,
            "EnaSupport": true,
            "Hypervisor": "xen",
            "RootDeviceName": i.root_device_name,
            "RootDeviceType": i.root_device_type,
            "VirtualizationType": "hvm",
            "BootMode": i.boot_mode,
            "CurrentInstanceBootMode": i.boot_mode,
            "CpuOptions": {"CoreCount": itype.map_or(1, |t| t.vcpus), "ThreadsPerCore": 1},
            "MetadataOptions": i.metadata_options,
            "PlatformDetails": "Linux/UNIX",
            "UsageOperation": "RunInstances",
            "InstanceLifecycle": null,
            "Amirun": {
                "Accelerator": i.accel,
                "AcceleratorReason": i.accel_reason,
                "SshEndpoint": i.ssh_port.filter(|_| i.state != "terminated").map(|p| format!("127.0.0.1:{p}")),
                "GuestOutbound": net_status.as_ref().map_or_else(
                    || guest_outbound(tags.iter().map(|t| (t.key.as_str(), t.value.as_str()))).map_or("invalid", machine::Outbound::as_str).to_string(),
                    |s| s.outbound.clone()),
                "GuestOutboundReason": net_status.and_then(|s| s.reason),
                "ConsoleLog": self.paths.serial_log(&i.instance_id).display().to_string(),
            },
        });
        let obj = v.as_object_mut().expect("object");
        obj.remove("InstanceLifecycle");
        if let Some(k) = &i.key_name {
            obj.insert("KeyName".into(), json!(k));
        }
        if let Some(r) = &i.state_reason {
            let (code, message) = r.split_once(": ").unwrap_or((r.as_str(), r.as_str()));
            obj.insert(
                "StateReason".into(),
                json!({"Code": code, "Message": message}),
            );
        }
        if !tags.is_empty() {
            obj.insert(
                "Tags".into(),
                json!(tags
                    .iter()
                    .map(|t| Tag {
                        key: t.key.clone(),
                        value: Some(t.value.clone())
                    })
                    .collect::<Vec<_>>()),
            );
        }
        v
    }

    /// `StopInstances`: EBS-backed only; the guest gets the ACPI power button
    /// (or is cut off at once with `force`).
    pub fn stop_instances(
        &mut self,
        caller: &Caller,
        instance_ids: &[String],
        force: bool,
    ) -> Result<Value> {
        let instances = self.owned_instances(caller, instance_ids)?;
        for i in &instances {
            if i.root_device_type == "instance-store" {
                return Err(Error::new(
                    "UnsupportedOperation",
                    format!("The instance '{}' does not have an 'ebs' root device type and cannot be stopped.", i.instance_id),
                ));
            }
            if i.state == "terminated" || i.state == "shutting-down" {
                return Err(Error::new(
                    "IncorrectInstanceState",
                    format!(
                        "The instance '{}' is not in a state from which it can be stopped.",
                        i.instance_id
                    ),
                ));
            }
        }
        let mut changes = Vec::new();
        for mut i in instances {
            let previous = i.state.clone();
            if matches!(previous.as_str(), "pending" | "running" | "stopping") {
                i.state = "stopping".into();
                i.updated = now();
                let s = i.clone();
                self.store.write(|db| db.put_instance(&s))?;
                self.ask_supervisor(&i.instance_id, |c| c.stop(force))?;
            }
            changes.push(StateChange {
                current_state: InstanceStateShape::of(&i.state),
                instance_id: i.instance_id.clone(),
                previous_state: InstanceStateShape::of(&previous),
            });
        }
        Ok(json!({ "StoppingInstances": changes }))
    }

    /// Send a request to an instance's supervisor; a supervisor that is already
    /// gone is not an error (reconciliation settles the instance).
    fn ask_supervisor(
        &mut self,
        instance_id: &str,
        f: impl FnOnce(&mut SupervisorClient) -> std::result::Result<(), supervisor::ClientError>,
    ) -> Result<()> {
        let socket = self.paths.control_socket(instance_id);
        match SupervisorClient::connect(&socket) {
            Ok(mut c) => match f(&mut c) {
                Ok(()) => Ok(()),
                Err(e) if !supervisor::probe(&self.paths, instance_id).supervisor_alive => {
                    tracing::debug!("supervisor of {instance_id} went away: {e}");
                    Ok(())
                }
                Err(e) => Err(e.into()),
            },
            Err(e) => {
                if supervisor::probe(&self.paths, instance_id).supervisor_alive {
                    Err(e.into())
                } else {
                    Ok(())
                }
            }
        }
    }

    /// `StartInstances`: boot stopped EBS-backed instances again.
    pub fn start_instances(&mut self, caller: &Caller, instance_ids: &[String]) -> Result<Value> {
        let instances = self.owned_instances(caller, instance_ids)?;
        for i in &instances {
            if !matches!(i.state.as_str(), "stopped" | "running" | "pending") {
                return Err(Error::new(
                    "IncorrectInstanceState",
                    format!(
                        "The instance '{}' is not in a state from which it can be started.",
                        i.instance_id
                    ),
                ));
            }
        }
        let mut changes = Vec::new();
        for mut i in instances {
            let previous = i.state.clone();
            if previous == "stopped" {
                let taken = self.store.read(|db| db.ports_in_use())?;
                let taken: Vec<u16> = taken
                    .into_iter()
                    .filter(|p| Some(*p) != i.ssh_port)
                    .collect();
                if i.ssh_port.is_none_or(|p| {
                    taken.contains(&p) || std::net::TcpListener::bind(("127.0.0.1", p)).is_err()
                }) {
                    i.ssh_port = Some(free_port(&taken)?);
                }
                i.state = "pending".into();
                i.state_reason = None;
                i.updated = now();
                self.prepare_boot(&i)?;
                let s = i.clone();
                self.store.write(|db| db.put_instance(&s))?;
                if let Err(e) = self.spawn_supervisor(&i.instance_id) {
                    self.record_exit(
                        &i.instance_id,
                        None,
                        &format!("The supervisor could not start: {e}"),
                    )?;
                }
            }
            changes.push(StateChange {
                current_state: InstanceStateShape::of(&i.state),
                instance_id: i.instance_id.clone(),
                previous_state: InstanceStateShape::of(&previous),
            });
        }
        Ok(json!({ "StartingInstances": changes }))
    }

    /// `RebootInstances`: a reset of running instances; every disk is kept.
    pub fn reboot_instances(&mut self, caller: &Caller, instance_ids: &[String]) -> Result<()> {
        let instances = self.owned_instances(caller, instance_ids)?;
        for i in &instances {
            if i.state != "running" && i.state != "pending" {
                return Err(Error::new(
                    "IncorrectInstanceState",
                    format!("The instance '{}' is not running.", i.instance_id),
                ));
            }
        }
        for i in instances {
            self.ask_supervisor(&i.instance_id, |c| c.reboot())?;
        }
        Ok(())
    }

    /// `TerminateInstances`.
    pub fn terminate_instances(
        &mut self,
        caller: &Caller,
        instance_ids: &[String],
    ) -> Result<Value> {
        let instances = self.owned_instances(caller, instance_ids)?;
        let mut changes = Vec::new();
        for mut i in instances {
            let previous = i.state.clone();
            match previous.as_str() {
                "terminated" | "shutting-down" => {}
                "stopped" => {
                    i.state_reason =
                        Some("Client.UserInitiatedShutdown: User initiated shutdown".into());
                    self.settle(&mut i, "terminated")?;
                }
                _ => {
                    i.state = "shutting-down".into();
                    i.updated = now();
                    let s = i.clone();
                    self.store.write(|db| db.put_instance(&s))?;
                    self.ask_supervisor(&i.instance_id, |c| c.stop(false))?;
                }
            }
            changes.push(StateChange {
                current_state: InstanceStateShape::of(&i.state),
                instance_id: i.instance_id.clone(),
                previous_state: InstanceStateShape::of(&previous),
            });
        }
        Ok(json!({ "TerminatingInstances": changes }))
    }

    /// Terminate one instance without the ACPI grace period and wait until it is
    /// terminated (boot tests and failed bakes clean up with this).
    pub fn terminate_now(&mut self, caller: &Caller, instance_id: &str) -> Result<()> {
        let mut i = self
            .owned_instances(caller, &[instance_id.to_string()])?
            .remove(0);
        if i.state == "terminated" {
            return Ok(());
        }
        if supervisor::probe(&self.paths, instance_id).supervisor_alive {
            i.state = "shutting-down".into();
            i.updated = now();
            let s = i.clone();
            self.store.write(|db| db.put_instance(&s))?;
            let socket = self.paths.control_socket(instance_id);
            if let Ok(mut c) = SupervisorClient::connect(&socket) {
                let _ = c.stop_and_wait(true);
            }
        }
        self.refresh_instances(caller)?;
        let mut i = self
            .owned_instances(caller, &[instance_id.to_string()])?
            .remove(0);
        if i.state != "terminated" {
            i.state_reason = Some("Client.UserInitiatedShutdown: User initiated shutdown".into());
            self.settle(&mut i, "terminated")?;
        }
        Ok(())
    }

    /// `GetConsoleOutput`: the serial log (the last 64 KiB with `latest`),
    /// after a header line naming the machine and its accelerator.
    pub fn get_console_output(
        &mut self,
        caller: &Caller,
        instance_id: &str,
        latest: bool,
    ) -> Result<ConsoleOutput> {
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
        Ok(ConsoleOutput {
            instance_id: instance_id.to_string(),
            timestamp: now(),
            output: header + &String::from_utf8_lossy(tail),
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
        if i.state != "running" {
            return Err(Error::new(
                "IncorrectInstanceState",
                format!("The instance '{instance_id}' is {}, not running", i.state),
            ));
        }
        let port = i
            .ssh_port
            .ok_or_else(|| Error::new("UnsupportedOperation", "The instance has no ssh forward"))?;
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

    /// `DescribeVolumes`.
    pub fn describe_volumes(
        &mut self,
        caller: &Caller,
        volume_ids: &[String],
        filters: &[Filter],
    ) -> Result<Value> {
        filter::check_names(filters, VOLUME_FILTERS)?;
        self.refresh_instances(caller)?;
        let all = self.store.read(|db| db.volumes_in_region(&caller.region))?;
        let mut missing: Vec<&String> = volume_ids.iter().collect();
        let mut out = Vec::new();
        for v in all.into_iter().filter(|v| v.owner_id == caller.account) {
            if !volume_ids.is_empty() && !volume_ids.contains(&v.volume_id) {
                continue;
            }
            missing.retain(|m| **m != v.volume_id);
            let tags = self.store.read(|db| db.tags_of(&v.volume_id))?;
            let keep = filter::matches(filters, |name| match name {
                "attachment.instance-id" => v.instance_id.iter().cloned().collect(),
                "attachment.delete-on-termination" => vec![v.delete_on_termination.to_string()],
                "attachment.device" => v.device.iter().cloned().collect(),
                "size" => vec![v.size_gib.to_string()],
                "snapshot-id" => v.snapshot_id.iter().cloned().collect(),
                "status" => vec![v.state.clone()],
                "volume-id" => vec![v.volume_id.clone()],
                "volume-type" => vec![v.volume_type.clone()],
                n => filter::tag_values(&tags, n).unwrap_or_default(),
            });
            if !keep {
                continue;
            }
            let attachments: Vec<Value> = match (&v.instance_id, &v.device) {
                (Some(i), Some(d)) => vec![json!({
                    "AttachTime": v.attach_time,
                    "Device": d,
                    "InstanceId": i,
                    "State": "attached",
                    "VolumeId": v.volume_id,
                    "DeleteOnTermination": v.delete_on_termination,
                })],
                _ => Vec::new(),
            };
            let mut shape = json!({
                "Attachments": attachments,
                "AvailabilityZone": v.availability_zone,
                "CreateTime": v.create_time,
                "Encrypted": false,
                "Size": v.size_gib,
                "SnapshotId": v.snapshot_id.clone().unwrap_or_default(),
                "State": v.state,
                "VolumeId": v.volume_id,
                "Iops": 3000,
                "VolumeType": v.volume_type,
                "MultiAttachEnabled": false,
                "Throughput": 125,
            });
            if !tags.is_empty() {
                shape["Tags"] = json!(tags
                    .iter()
                    .map(|t| Tag {
                        key: t.key.clone(),
                        value: Some(t.value.clone())
                    })
                    .collect::<Vec<_>>());
            }
            out.push(shape);
        }
        if let Some(m) = missing.first() {
            return Err(Error::new(
                "InvalidVolume.NotFound",
                format!("The volume '{m}' does not exist."),
            ));
        }
        Ok(json!({ "Volumes": out }))
    }
}

fn accel_name(a: Accel) -> &'static str {
    match a {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
    }
}

/// EC2's boot mode rules: `uefi-preferred` boots UEFI where the firmware exists.
fn resolve_boot_mode(image: &ImageState, arch: Arch) -> Result<String> {
    let mode = image.boot_mode.as_deref().unwrap_or(match arch {
        Arch::Arm64 => "uefi",
        _ => "legacy-bios",
    });
    Ok(match (mode, arch) {
        ("legacy-bios", Arch::Arm64) => {
            return Err(Error::new(
                "InvalidParameterCombination",
                format!(
                    "Image {} is legacy-bios, which arm64 instances cannot boot",
                    image.image_id
                ),
            ))
        }
        ("uefi-preferred", Arch::X86_64) => {
            if machine::find_system_uefi_firmware(arch).is_ok() {
                "uefi"
            } else {
                "legacy-bios"
            }
        }
        ("uefi-preferred", _) => "uefi",
        (m, _) => m,
    }
    .to_string())
}

/// The AMI's mappings with the launch request's on top (by device name);
/// `NoDevice` removes one.
fn merge_mappings(
    image: &[BlockDeviceMapping],
    request: &[BlockDeviceMapping],
) -> Vec<BlockDeviceMapping> {
    let mut out: Vec<BlockDeviceMapping> = image.to_vec();
    for r in request {
        match out.iter_mut().find(|m| m.device_name == r.device_name) {
            Some(m) => {
                if r.no_device.is_some() {
                    m.no_device = Some(String::new());
                } else if let (Some(me), Some(re)) = (m.ebs.as_mut(), r.ebs.as_ref()) {
                    if re.volume_size.is_some() {
                        me.volume_size = re.volume_size;
                    }
                    if re.delete_on_termination.is_some() {
                        me.delete_on_termination = re.delete_on_termination;
                    }
                    if re.volume_type.is_some() {
                        me.volume_type = re.volume_type.clone();
                    }
                } else {
                    *m = r.clone();
                }
            }
            None => out.push(r.clone()),
        }
    }
    out.retain(|m| m.no_device.is_none());
    out
}

/// EC2's MetadataOptions with defaults filled in.
fn metadata_options(given: Option<&Value>) -> Result<Value> {
    let tokens = given
        .and_then(|g| g.get("HttpTokens"))
        .and_then(Value::as_str)
        .unwrap_or("optional");
    let endpoint = given
        .and_then(|g| g.get("HttpEndpoint"))
        .and_then(Value::as_str)
        .unwrap_or("enabled");
    let hops = given
        .and_then(|g| g.get("HttpPutResponseHopLimit"))
        .and_then(Value::as_u64)
        .unwrap_or(2);
    if !matches!(tokens, "optional" | "required") {
        return Err(Error::invalid_value(format!(
            "Value ({tokens}) for parameter HttpTokens is invalid; use optional or required"
        )));
    }
    if !matches!(endpoint, "enabled" | "disabled") {
        return Err(Error::invalid_value(format!(
            "Value ({endpoint}) for parameter HttpEndpoint is invalid; use enabled or disabled"
        )));
    }
    Ok(json!({
        "State": "applied",
        "HttpTokens": tokens,
        "HttpPutResponseHopLimit": hops,
        "HttpEndpoint": endpoint,
        "HttpProtocolIpv6": "disabled",
        "InstanceMetadataTags": "disabled",
    }))
}
