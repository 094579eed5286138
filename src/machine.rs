//! From an instance spec to a QEMU command line: machine type, CPU,
//! firmware, devices and accelerator, per guest architecture.
//!
//! Everything here is a pure function of a [`MachineSpec`] except the few
//! host look-ups that are named as such ([`find_qemu`], [`firmware`] discovery,
//! the [`accel`] probe), so the argv of every profile is pinned by unit tests
//! (in [`command`]). Only the supervisor spawns the result.
//!
//! The guest sees an EC2-like machine:
//! - x86_64: `q35` (PCIe, like Nitro) with SeaBIOS or OVMF; arm64: `virt`
//!   with AAVMF and a GICv3 (like Graviton). Direct kernel boot on both.
//! - Disks are virtio-blk with the EBS volume id as serial, as EC2's NVMe
//!   disks show it (`vol0123456789abcdef0`); the root disk boots first; the
//!   NoCloud seed is one more read-only virtio disk.
//! - The console is the first serial port (`ttyS0` / `ttyAMA0`), written to a
//!   log file; QMP listens on a unix socket.
//! - SMBIOS says `Amazon EC2` and a `ec2…` UUID, which is how cloud-init and
//!   friends recognise EC2.
//! - Network: QEMU user networking on 169.254.0.0/16, with outbound access
//!   only where the supervisor runs QEMU in a namespace of the guest's own
//!   ([`crate::network`]); see [`NetSpec`] for why and for how the guest is
//!   kept away from the host's loopback and metadata service.
//!
//! Files: [`spec`] (what to boot: architecture, boot, disks, SMBIOS),
//! [`net`] (the guest network and its `-netdev`), [`command`] (validation
//! and the argv, device by device), [`qemu_opts`] (the typed argv builder),
//! [`accel`], [`firmware`], [`instance_types`]. This file holds the error
//! type.

pub mod accel;
pub mod command;
pub mod firmware;
pub mod instance_types;
pub mod net;
pub mod qemu_opts;
pub mod spec;

use crate::error_code::ErrorCode;
use qemu_opts::ArgError;
use std::path::PathBuf;

pub use accel::{choose_accel, AccelChoice, AccelRequest};
pub use command::{
    find_qemu, qemu_command, QemuCommand, MAX_CMDLINE, MAX_SERIAL, MAX_VCPUS, MIN_MEMORY_MIB,
};
pub use firmware::{
    find_system_uefi_firmware, find_uefi_firmware, install_uefi_vars, UefiFirmware,
};
pub use instance_types::{instance_type, InstanceType, INSTANCE_TYPES};
pub use net::{
    is_unicast_mac, ImdsForward, NetSpec, Outbound, VpcNic, GUEST_ADDRESS, GUEST_DNS,
    GUEST_GATEWAY, GUEST_NET, IMDS_ADDRESS, IMDS_CLOSED_COMMAND, OUTBOUND_TAG, VPC_TAP_FD,
};
pub use spec::{
    disk_node_name, hotplug_blockdev, hotplug_device, hotplug_port, tb_cache_mib, volume_serial,
    Accel, Arch, Boot, BootMode, DiskFormat, DiskSpec, FreePages, MachineSpec, SmbiosIdentity,
    TbCache, BALLOON_ID, HOTPLUG_PORTS,
};

/// What went wrong building or preparing a machine.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// A name given by the user is not one we know.
    #[error("Unknown {what} {value:?}; expected {expected}")]
    InvalidValue {
        /// What was being parsed ("architecture", "boot mode", ...).
        what: &'static str,
        /// What the user gave.
        value: String,
        /// The accepted spellings.
        expected: &'static str,
    },
    /// A spec field is out of range or malformed.
    #[error("Invalid {field} for {instance_id}: {reason}")]
    InvalidSpec {
        /// The instance being built.
        instance_id: String,
        /// The field at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The boot mode cannot work on this architecture.
    #[error("{arch} guests cannot boot with {boot}; use boot mode uefi")]
    UnsupportedBoot {
        /// Guest architecture.
        arch: Arch,
        /// The boot asked for.
        boot: &'static str,
    },
    /// A value could not be put on QEMU's command line.
    #[error("Cannot pass {instance_id}'s {field} to QEMU")]
    Argument {
        /// The instance being built.
        instance_id: String,
        /// The field at fault.
        field: &'static str,
        /// The refusal.
        #[source]
        source: ArgError,
    },
    /// The QEMU system emulator for an architecture is not installed.
    #[error("{program} is not installed; install the Debian package {package}")]
    QemuMissing {
        /// `qemu-system-x86_64` or `qemu-system-aarch64`.
        program: &'static str,
        /// The package that ships it.
        package: &'static str,
    },
    /// No usable UEFI firmware descriptor.
    #[error("No UEFI firmware for {arch} guests in {}; install the Debian package {package}", display_dirs(.dirs))]
    FirmwareMissing {
        /// Guest architecture.
        arch: Arch,
        /// Descriptor directories searched.
        dirs: Vec<PathBuf>,
        /// The package that ships the firmware.
        package: &'static str,
    },
    /// A firmware descriptor is not valid JSON of the expected shape.
    #[error("Cannot parse firmware descriptor {path}")]
    FirmwareDescriptor {
        /// The descriptor file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// KVM was asked for but cannot run this guest here.
    #[error("KVM cannot run {arch} guests on this host: {reason}; use --accel tcg")]
    KvmUnusable {
        /// Guest architecture.
        arch: Arch,
        /// One line: why (from the probe).
        reason: String,
    },
    /// A file operation failed.
    #[error("Cannot access {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn display_dirs(dirs: &[PathBuf]) -> String {
    let v: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    v.join(", ")
}

impl MachineError {
    /// EC2-style error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            MachineError::InvalidValue { .. }
            | MachineError::InvalidSpec { .. }
            | MachineError::Argument { .. } => ErrorCode::InvalidParameterValue,
            MachineError::UnsupportedBoot { .. } => ErrorCode::InvalidParameterCombination,
            MachineError::KvmUnusable { .. } => ErrorCode::UnsupportedOperation,
            MachineError::QemuMissing { .. } | MachineError::FirmwareMissing { .. } => {
                ErrorCode::MissingDependency
            }
            MachineError::FirmwareDescriptor { .. } | MachineError::Io { .. } => {
                ErrorCode::InternalError
            }
        }
    }
}
