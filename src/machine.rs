//! From an instance spec to a QEMU command line: machine type, CPU,
//! firmware, devices and accelerator, per guest architecture.
//!
//! Everything here is a pure function of a [`MachineSpec`] except the few
//! host look-ups that are named as such ([`find_qemu`], [`firmware`] discovery,
//! the [`accel`] probe), so the argv of every profile is pinned by unit tests
//! below. Only the supervisor spawns the result.
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

pub mod accel;
pub mod firmware;
pub mod instance_types;
pub mod qemu_opts;

use crate::error_code::ErrorCode;
use std::fmt;
use std::path::{Path, PathBuf};

pub use accel::{choose_accel, AccelChoice, AccelRequest};
pub use firmware::{
    find_system_uefi_firmware, find_uefi_firmware, install_uefi_vars, UefiFirmware,
};
pub use instance_types::{instance_type, InstanceType, INSTANCE_TYPES};
use qemu_opts::{shell_quote, ArgError, Argv, OptList};

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

/// Guest CPU architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// `x86_64` (and `i386` AMIs, which run on the same emulator).
    X86_64,
    /// `arm64` (Graviton-like).
    Arm64,
}

impl Arch {
    /// Parses an EC2 architecture name; `i386` runs on x86_64 QEMU.
    pub fn from_ec2(name: &str) -> Result<Self, MachineError> {
        match name.parse::<crate::domain::Architecture>() {
            Ok(a) => Ok(a.machine()),
            Err(_) => Err(MachineError::InvalidValue {
                what: "architecture",
                value: name.to_string(),
                expected: "x86_64, i386 or arm64",
            }),
        }
    }

    /// EC2's name.
    pub fn ec2_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }

    /// QEMU's (and firmware descriptors') name.
    pub fn qemu_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "aarch64",
        }
    }

    /// The system emulator binary.
    pub fn qemu_binary(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Arm64 => "qemu-system-aarch64",
        }
    }

    /// The Debian package that ships [`Arch::qemu_binary`].
    pub fn qemu_package(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86",
            Arch::Arm64 => "qemu-system-arm",
        }
    }

    /// The Debian package that ships UEFI firmware for this architecture.
    pub fn firmware_package(self) -> &'static str {
        match self {
            Arch::X86_64 => "ovmf",
            Arch::Arm64 => "qemu-efi-aarch64",
        }
    }

    /// The guest's first serial console device name.
    pub fn console_device(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Arm64 => "ttyAMA0",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.ec2_name())
    }
}

impl std::str::FromStr for Arch {
    type Err = MachineError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Arch::from_ec2(s)
    }
}

/// An AMI's boot mode, as EC2 names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootMode {
    /// `uefi`.
    Uefi,
    /// `legacy-bios`.
    LegacyBios,
    /// `uefi-preferred`: UEFI where the instance type supports it.
    UefiPreferred,
}

impl BootMode {
    /// Parses EC2's name.
    pub fn from_ec2(name: &str) -> Result<Self, MachineError> {
        match name {
            "uefi" => Ok(BootMode::Uefi),
            "legacy-bios" => Ok(BootMode::LegacyBios),
            "uefi-preferred" => Ok(BootMode::UefiPreferred),
            _ => Err(MachineError::InvalidValue {
                what: "boot mode",
                value: name.to_string(),
                expected: "uefi, legacy-bios or uefi-preferred",
            }),
        }
    }

    /// EC2's name.
    pub fn ec2_name(self) -> &'static str {
        match self {
            BootMode::Uefi => "uefi",
            BootMode::LegacyBios => "legacy-bios",
            BootMode::UefiPreferred => "uefi-preferred",
        }
    }

    /// Whether this boot mode boots through UEFI on `arch`. Every amirun
    /// machine supports UEFI, so `uefi-preferred` is UEFI; arm64 has no
    /// legacy BIOS (as on Graviton), so `legacy-bios` there is an error.
    pub fn uses_uefi(self, arch: Arch) -> Result<bool, MachineError> {
        match (self, arch) {
            (BootMode::LegacyBios, Arch::Arm64) => Err(MachineError::UnsupportedBoot {
                arch,
                boot: "legacy BIOS",
            }),
            (BootMode::LegacyBios, Arch::X86_64) => Ok(false),
            (BootMode::Uefi | BootMode::UefiPreferred, _) => Ok(true),
        }
    }
}

impl std::str::FromStr for BootMode {
    type Err = MachineError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BootMode::from_ec2(s)
    }
}

/// The accelerator QEMU runs the guest with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization; only for the host's own architecture.
    Kvm,
    /// QEMU's emulator; works everywhere, slower.
    Tcg,
}

impl Accel {
    /// QEMU's name (`-accel NAME`).
    pub fn qemu_name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// How the guest boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// UEFI firmware from pflash.
    Uefi {
        /// Read-only firmware code (e.g. `OVMF_CODE_4M.fd`).
        code: PathBuf,
        /// This instance's own copy of the variable store ([`install_uefi_vars`]).
        vars: PathBuf,
    },
    /// SeaBIOS, QEMU's default on x86 (x86_64 only).
    LegacyBios,
    /// Direct kernel boot: QEMU loads the kernel and initrd itself.
    Kernel {
        /// Kernel image.
        kernel: PathBuf,
        /// Initial ramdisk.
        initrd: Option<PathBuf>,
        /// Kernel command line.
        cmdline: String,
    },
}

/// Image format of a disk file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// qcow2 (volumes, snapshots, overlays).
    Qcow2,
    /// Raw (the NoCloud seed).
    Raw,
}

impl DiskFormat {
    fn driver(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }
}

/// One disk attached to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// Image file.
    pub path: PathBuf,
    /// Its format.
    pub format: DiskFormat,
    /// Attach read-only.
    pub read_only: bool,
    /// Serial the guest sees (at most 20 bytes, virtio's limit); for an EBS
    /// volume use [`volume_serial`].
    pub serial: Option<String>,
}

/// The serial EC2 gives an EBS volume's NVMe disk: the id without its dash
/// (`vol-0123456789abcdef0` -> `vol0123456789abcdef0`, 20 bytes).
pub fn volume_serial(volume_id: &str) -> String {
    volume_id.replacen('-', "", 1)
}

/// Empty PCIe root ports every machine has for volumes attached while it
/// runs (AttachVolume): q35's and virt's root bus takes no hot-plugged device.
pub const HOTPLUG_PORTS: usize = 8;

/// The device id of hot-plug root port `n`.
pub fn hotplug_port(n: usize) -> String {
    format!("hotplug{n}")
}

/// QMP `blockdev-add` arguments for a volume plugged into a running
/// machine: the same node as a boot disk's ([`DiskSpec`], qcow2, writable,
/// `discard=unmap`).
pub fn hotplug_blockdev(node: &str, path: &Path) -> serde_json::Value {
    serde_json::json!({
        "driver": "qcow2",
        "node-name": node,
        "read-only": false,
        "discard": "unmap",
        "file": {"driver": "file", "filename": path},
    })
}

/// QMP `device_add` arguments for that volume's disk on root port `port`:
/// a `virtio-blk-pci` with the volume's serial, as at boot.
pub fn hotplug_device(id: &str, node: &str, serial: &str, port: usize) -> serde_json::Value {
    serde_json::json!({
        "driver": "virtio-blk-pci",
        "id": id,
        "drive": node,
        "serial": serial,
        "bus": hotplug_port(port),
    })
}

/// The QEMU block node name of disk `index` of a spec (QMP snapshots use it).
pub fn disk_node_name(index: usize) -> String {
    format!("disk{index}")
}

/// Host ports the guest is reachable on, and its way to the metadata service.
///
/// QEMU user networking (slirp) is used with the guest network set to
/// `169.254.0.0/16` (host 169.254.0.2, DNS 169.254.0.3, guest 169.254.0.15):
/// slirp only accepts a `guestfwd` inside its own network, and 169.254.169.254
/// must be one so the guest's IMDS requests reach amirun.
///
/// The guest must never reach the host's own loopback services nor the
/// host's own metadata service. slirp works against both (libslirp 4.7,
/// measured by `tests/guest_isolation.rs`): a connection to the gateway
/// 169.254.0.2, on any port, is made to the host's 127.0.0.1; one to the DNS
/// address 169.254.0.3 on port 53 goes to the host's first resolver, which
/// on many hosts is itself a loopback service (systemd-resolved's
/// 127.0.0.53); any other address is connected to from the host, so
/// 169.254.169.254 would be the host's own metadata service. libslirp's
/// `disable_host_loopback` would close the first but QEMU 7.2 does not
/// expose it, and passt (Debian's 2023-03 build) has `--no-map-gw` but no
/// way to serve 169.254.169.254 itself. Hence:
/// - [`Outbound::None`] (`restrict=on`) drops every guest packet except
///   DHCP and connections that match a `guestfwd`; the `hostfwd` for SSH
///   keeps working. DHCP then hands out no router and no resolver, and no
///   alias, port or address leads out of slirp. The price is no DNS and no
///   outbound access;
/// - [`Outbound::Nat`] lets slirp connect out like a NAT gateway, DNS
///   included. Its argv alone would give the guest the host's loopback, so
///   the service asks for it only together with a network namespace of the
///   guest's own, where the supervisor runs QEMU ([`crate::network`]:
///   there slirp's "host" is an empty loopback and the way out is pasta);
///   where no namespace can be made, the guest gets [`Outbound::None`];
/// - in both, a `guestfwd` for 169.254.169.254:80 is always present: it is
///   matched before slirp connects anywhere, whatever route the guest
///   takes; without [`ImdsForward`] it runs a command that closes the
///   connection at once;
/// - `ipv6=off`, so the IPv6 endpoint (`fd00:ec2::254`) is unreachable too.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetSpec {
    /// Host port on 127.0.0.1 forwarded to the guest's port 22.
    pub ssh_port: Option<u16>,
    /// How the guest's connections to 169.254.169.254:80 are served.
    pub imds: Option<ImdsForward>,
    /// Whether the guest may open connections to the outside.
    pub outbound: Outbound,
}

/// A command that serves one guest connection to 169.254.169.254:80 on its
/// stdin/stdout; slirp starts one per connection.
///
/// A `guestfwd` to a socket chardev (`...-tcp:127.0.0.1:PORT`) would be
/// simpler but QEMU opens that socket once and serves only the first guest
/// connection (seen with QEMU 7.2: the second request hangs), while
/// cloud-init makes dozens. So IMDS goes through a per-connection command,
/// `amirun __imds-relay` to the supervisor's socket (see [`crate::metadata::imds`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImdsForward {
    /// Program and arguments.
    pub argv: Vec<String>,
}

/// Whether the guest can reach beyond its host's forwarded ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Outbound {
    /// NAT to anywhere the host reaches (like an EC2 subnet with a NAT
    /// gateway), DNS through the host's resolver. Run in the host's own
    /// namespace this would also reach the host's loopback through the
    /// gateway and DNS aliases (see [`NetSpec`]), so it is only ever run in
    /// a guest namespace ([`crate::network`]).
    Nat,
    /// No outbound connections (`restrict=on`); IMDS and SSH still work.
    #[default]
    None,
}

/// The instance tag that chooses [`Outbound`] for the instance's next boot:
/// `nat` (also when absent; granted where a guest namespace can be made) or
/// `none`.
pub const OUTBOUND_TAG: &str = "amirun:outbound";

impl Outbound {
    /// The value of [`OUTBOUND_TAG`] for this choice.
    pub fn as_str(self) -> &'static str {
        match self {
            Outbound::Nat => "nat",
            Outbound::None => "none",
        }
    }

    /// Reads a value of [`OUTBOUND_TAG`]; `None` for a value it does not know.
    pub fn from_tag(value: &str) -> Option<Self> {
        match value {
            "nat" => Some(Outbound::Nat),
            "none" => Some(Outbound::None),
            _ => None,
        }
    }
}

/// The guest network layout (see [`NetSpec`]).
pub const GUEST_NET: &str = "169.254.0.0/16";
/// Address of the host as the guest sees it (slirp's gateway).
pub const GUEST_GATEWAY: &str = "169.254.0.2";
/// Address of slirp's DNS relay as the guest sees it (set explicitly: QEMU's
/// default for a /16 would be 169.254.2.3).
pub const GUEST_DNS: &str = "169.254.0.3";
/// First (and in practice only) address slirp's DHCP hands out.
pub const GUEST_ADDRESS: &str = "169.254.0.15";
/// The metadata service address.
pub const IMDS_ADDRESS: &str = "169.254.169.254";
/// Command used when no IMDS is configured: it closes the connection at once.
pub const IMDS_CLOSED_COMMAND: &str = "/bin/true";

/// What the guest's SMBIOS type 1 (system) table says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmbiosIdentity {
    /// System UUID; EC2's start with `ec2`.
    pub uuid: String,
    /// Product name: the instance type (`t3.micro`), as on Nitro.
    pub product: String,
}

impl SmbiosIdentity {
    /// The identity EC2 would give `instance_id`: a UUID derived from the id
    /// and starting with `ec2`, and the instance type as product name.
    pub fn for_instance(instance_id: &str, instance_type: &str) -> Self {
        use sha2::{Digest, Sha256};
        let hex = hex::encode(Sha256::digest(instance_id.as_bytes()));
        let h = format!("ec2{}", &hex[3..32]);
        Self {
            uuid: format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            ),
            product: instance_type.to_string(),
        }
    }
}

/// Everything needed to start one instance's QEMU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineSpec {
    /// `i-...`; also QEMU's `-name`.
    pub instance_id: String,
    /// Guest architecture.
    pub arch: Arch,
    /// How it boots.
    pub boot: Boot,
    /// KVM or TCG (see [`choose_accel`]).
    pub accel: Accel,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Disks, root first.
    pub disks: Vec<DiskSpec>,
    /// NoCloud seed image (raw FAT, label `cidata`), attached read-only.
    pub seed: Option<PathBuf>,
    /// Network.
    pub net: NetSpec,
    /// QMP unix socket QEMU listens on.
    pub qmp_socket: PathBuf,
    /// File the first serial port is written to.
    pub serial_log: PathBuf,
    /// SMBIOS identity.
    pub smbios: SmbiosIdentity,
}

/// A program and its arguments, ready for [`std::process::Command`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuCommand {
    /// `qemu-system-x86_64` or `qemu-system-aarch64` (looked up in `PATH`).
    pub program: String,
    /// Arguments.
    pub args: Vec<String>,
}

impl QemuCommand {
    /// A [`std::process::Command`] with program and arguments set.
    pub fn to_command(&self) -> std::process::Command {
        let mut c = std::process::Command::new(&self.program);
        c.args(&self.args);
        c
    }
}

/// The full path of the QEMU system emulator for `arch`, from `PATH`; the
/// error names the Debian package to install.
pub fn find_qemu(arch: Arch) -> Result<PathBuf, MachineError> {
    let program = arch.qemu_binary();
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
        .ok_or(MachineError::QemuMissing {
            program,
            package: arch.qemu_package(),
        })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Longest kernel command line accepted (`COMMAND_LINE_SIZE` on x86 and arm64, less the NUL).
pub const MAX_CMDLINE: usize = 2047;
/// Most vCPUs accepted (x86 q35 without an IOMMU stops at 255 APIC ids).
pub const MAX_VCPUS: u32 = 255;
/// Least memory accepted, in MiB.
pub const MIN_MEMORY_MIB: u64 = 64;
/// Virtio-blk's serial length limit.
pub const MAX_SERIAL: usize = 20;

/// Builds the QEMU command line for `spec`, refusing bad input before any
/// argument is produced.
///
/// The argv, in order (every choice explained inline):
/// `-name`, `-nodefaults -no-user-config -display none`, `-machine`,
/// `-accel`, `-cpu`, `-smp`, `-m`, firmware or kernel, disks, seed, network,
/// `virtio-rng`, serial, QMP, SMBIOS.
pub fn qemu_command(spec: &MachineSpec) -> Result<QemuCommand, MachineError> {
    validate(spec)?;
    let id = &spec.instance_id;
    let arg = |field: &'static str| {
        move |source: ArgError| MachineError::Argument {
            instance_id: id.clone(),
            field,
            source,
        }
    };
    let mut a = Argv::new();

    // The instance id names the process for `ps` and QMP's query-name.
    a.opt(
        "-name",
        OptList::with("guest", id).map_err(arg("instance_id"))?,
    );
    // No default NIC, VGA, floppy, CD-ROM or monitor, no host config files:
    // every device is listed below. `-display none` and not `-nographic`,
    // which would also claim stdio for the serial port and the monitor.
    a.flag("-nodefaults").flag("-no-user-config");
    a.opt("-display", OptList::new("none").map_err(arg("display"))?);

    // Machine: q35 (PCIe, like Nitro) / virt with a GICv3 (like Graviton;
    // GICv2 would also cap the guest at 8 vCPUs). UEFI pflash is given as
    // block nodes (`pflash0/1=`), consistent with the disks below.
    let mut machine = match spec.arch {
        Arch::X86_64 => OptList::new("q35"),
        Arch::Arm64 => OptList::new("virt").and_then(|m| m.set("gic-version", 3)),
    }
    .map_err(arg("machine"))?;
    if let Boot::Uefi { .. } = spec.boot {
        machine = machine
            .set("pflash0", "fw-code")
            .and_then(|m| m.set("pflash1", "fw-vars"))
            .map_err(arg("boot"))?;
    }
    a.opt("-machine", machine);
    // Accelerator chosen by `choose_accel`. TCG's thread mode is left to
    // QEMU: multi-threaded is already its default for these guest/host pairs.
    a.opt(
        "-accel",
        OptList::new(spec.accel.qemu_name()).map_err(arg("accel"))?,
    );
    // CPU: the host's under KVM; under TCG `max` (every feature TCG can
    // emulate), and on arm64 with the cheap pointer-auth algorithm: QEMU 7.2
    // defaults to QARMA, which makes an arm64 boot 3-4x slower (HOST.md).
    let cpu = match (spec.accel, spec.arch) {
        (Accel::Kvm, _) => OptList::new("host"),
        (Accel::Tcg, Arch::X86_64) => OptList::new("max"),
        (Accel::Tcg, Arch::Arm64) => {
            OptList::new("max").and_then(|c| c.switch("pauth-impdef", true))
        }
    }
    .map_err(arg("cpu"))?;
    a.opt("-cpu", cpu);
    a.raw("-smp", &spec.vcpus.to_string())
        .map_err(arg("vcpus"))?;
    a.raw("-m", &format!("{}M", spec.memory_mib))
        .map_err(arg("memory_mib"))?;

    match &spec.boot {
        Boot::Uefi { code, vars } => {
            // Code read-only and shared by all instances; variables are the
            // instance's own copy so boot entries survive stop/start.
            a.opt(
                "-blockdev",
                raw_file_node("fw-code", code, true).map_err(arg("boot"))?,
            );
            a.opt(
                "-blockdev",
                raw_file_node("fw-vars", vars, false).map_err(arg("boot"))?,
            );
            // AAVMF otherwise waits about 5 s at its boot-option timeout; with
            // the menu "enabled" and no splash time, it boots at once.
            if spec.arch == Arch::Arm64 {
                a.opt(
                    "-boot",
                    OptList::with("menu", "on")
                        .and_then(|o| o.set("splash-time", 0))
                        .map_err(arg("boot"))?,
                );
            }
        }
        // SeaBIOS is what q35 runs when no pflash is given.
        Boot::LegacyBios => {}
        Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } => {
            a.path("-kernel", kernel).map_err(arg("kernel"))?;
            if let Some(initrd) = initrd {
                a.path("-initrd", initrd).map_err(arg("initrd"))?;
            }
            a.raw("-append", cmdline).map_err(arg("cmdline"))?;
        }
    }

    for (index, disk) in spec.disks.iter().enumerate() {
        let node = disk_node_name(index);
        a.opt("-blockdev", disk_node(&node, disk).map_err(arg("disks"))?);
        let mut dev = OptList::new("virtio-blk-pci")
            .and_then(|d| d.set("id", format!("{node}-dev")))
            .and_then(|d| d.set("drive", &node))
            .map_err(arg("disks"))?;
        if let Some(serial) = &disk.serial {
            dev = dev.set("serial", serial).map_err(arg("disks"))?;
        }
        // Only the root disk is a boot candidate (firmware boot order).
        if index == 0 && !matches!(spec.boot, Boot::Kernel { .. }) {
            dev = dev.set("bootindex", 0).map_err(arg("disks"))?;
        }
        a.opt("-device", dev);
    }
    if let Some(seed) = &spec.seed {
        // The NoCloud seed: read-only, never booted from.
        let seed_disk = DiskSpec {
            path: seed.clone(),
            format: DiskFormat::Raw,
            read_only: true,
            serial: Some("cidata".to_string()),
        };
        a.opt(
            "-blockdev",
            disk_node("seed", &seed_disk).map_err(arg("seed"))?,
        );
        let dev = OptList::new("virtio-blk-pci")
            .and_then(|d| d.set("id", "seed-dev"))
            .and_then(|d| d.set("drive", "seed"))
            .and_then(|d| d.set("serial", "cidata"))
            .map_err(arg("seed"))?;
        a.opt("-device", dev);
    }

    // Root ports for volumes attached while the guest runs (one device
    // each). No I/O window: a virtio device behind a PCIe port is
    // modern-only, and eight 4 KiB windows would crowd the firmware's
    // 64 KiB of I/O space.
    for port in 0..HOTPLUG_PORTS {
        let dev = OptList::new("pcie-root-port")
            .and_then(|d| d.set("id", hotplug_port(port)))
            .and_then(|d| d.set("chassis", port + 1))
            .and_then(|d| d.set("io-reserve", 0))
            .map_err(arg("hotplug"))?;
        a.opt("-device", dev);
    }

    a.opt("-netdev", netdev(&spec.net).map_err(arg("net"))?);
    a.opt(
        "-device",
        OptList::new("virtio-net-pci")
            .and_then(|d| d.set("netdev", "net0"))
            .map_err(arg("net"))?,
    );
    // Guests (and cloud-init's ssh key generation) want entropy early.
    a.opt(
        "-device",
        OptList::new("virtio-rng-pci").map_err(arg("rng"))?,
    );

    // Console: the first serial port (ttyS0 / ttyAMA0) to a log file, the
    // source of GetConsoleOutput. Truncated at each QEMU start.
    a.opt(
        "-chardev",
        OptList::new("file")
            .and_then(|c| c.set("id", "serial0"))
            .and_then(|c| c.path("path", &spec.serial_log))
            .map_err(arg("serial_log"))?,
    );
    a.raw("-serial", "chardev:serial0")
        .map_err(arg("serial_log"))?;
    // QMP for the supervisor; `wait=off` so QEMU starts without a client.
    a.opt(
        "-chardev",
        OptList::new("socket")
            .and_then(|c| c.set("id", "qmp"))
            .and_then(|c| c.path("path", &spec.qmp_socket))
            .and_then(|c| c.switch("server", true))
            .and_then(|c| c.switch("wait", false))
            .map_err(arg("qmp_socket"))?,
    );
    a.opt(
        "-mon",
        OptList::with("chardev", "qmp")
            .and_then(|c| c.set("mode", "control"))
            .map_err(arg("qmp_socket"))?,
    );
    // SMBIOS type 1 as on EC2: cloud-init's ds-identify and tools like
    // ec2-metadata recognise EC2 by "Amazon EC2" and a UUID starting "ec2".
    // On arm64 the tables reach the guest through UEFI only.
    a.opt(
        "-smbios",
        OptList::with("type", 1)
            .and_then(|s| s.set("manufacturer", "Amazon EC2"))
            .and_then(|s| s.set("product", &spec.smbios.product))
            .and_then(|s| s.set("serial", &spec.smbios.uuid))
            .and_then(|s| s.set("uuid", &spec.smbios.uuid))
            .map_err(arg("smbios"))?,
    );

    Ok(QemuCommand {
        program: spec.arch.qemu_binary().to_string(),
        args: a.into_vec(),
    })
}

/// `driver=raw,node-name=NAME,read-only=on|off,file.driver=file,file.filename=PATH`
fn raw_file_node(name: &str, path: &Path, read_only: bool) -> Result<OptList, ArgError> {
    OptList::with("driver", "raw")?
        .set("node-name", name)?
        .switch("read-only", read_only)?
        .set("file.driver", "file")?
        .path("file.filename", path)
}

/// A disk's block node. `discard=unmap` lets guest TRIM shrink qcow2 files.
fn disk_node(name: &str, disk: &DiskSpec) -> Result<OptList, ArgError> {
    let mut node = OptList::with("driver", disk.format.driver())?
        .set("node-name", name)?
        .switch("read-only", disk.read_only)?;
    if !disk.read_only {
        node = node.set("discard", "unmap")?;
    }
    node.set("file.driver", "file")?
        .path("file.filename", &disk.path)
}

/// The user-mode network (see [`NetSpec`] for every choice).
fn netdev(net: &NetSpec) -> Result<OptList, ArgError> {
    let mut n = OptList::new("user")?
        .set("id", "net0")?
        .switch("ipv6", false)?
        .set("net", GUEST_NET)?
        .set("host", GUEST_GATEWAY)?
        .set("dns", GUEST_DNS)?
        .set("dhcpstart", GUEST_ADDRESS)?;
    if net.outbound == Outbound::None {
        n = n.switch("restrict", true)?;
    }
    if let Some(port) = net.ssh_port {
        n = n.set("hostfwd", format!("tcp:127.0.0.1:{port}-:22"))?;
    }
    let command = match &net.imds {
        Some(f) => f
            .argv
            .iter()
            .map(|w| shell_quote(w))
            .collect::<Vec<_>>()
            .join(" "),
        None => IMDS_CLOSED_COMMAND.to_string(),
    };
    n.set("guestfwd", format!("tcp:{IMDS_ADDRESS}:80-cmd:{command}"))
}

fn validate(spec: &MachineSpec) -> Result<(), MachineError> {
    let bad = |field: &'static str, reason: String| MachineError::InvalidSpec {
        instance_id: spec.instance_id.clone(),
        field,
        reason,
    };
    if !crate::ids::is_well_formed(crate::ids::IdKind::Instance, &spec.instance_id) {
        return Err(bad("instance_id", "not an instance id (i-...)".to_string()));
    }
    if spec.vcpus == 0 || spec.vcpus > MAX_VCPUS {
        return Err(bad(
            "vcpus",
            format!("{} is not between 1 and {MAX_VCPUS}", spec.vcpus),
        ));
    }
    if spec.memory_mib < MIN_MEMORY_MIB {
        return Err(bad(
            "memory_mib",
            format!("{} MiB is less than {MIN_MEMORY_MIB} MiB", spec.memory_mib),
        ));
    }
    match &spec.boot {
        Boot::LegacyBios if spec.arch == Arch::Arm64 => {
            return Err(MachineError::UnsupportedBoot {
                arch: spec.arch,
                boot: "legacy BIOS",
            })
        }
        Boot::Kernel { cmdline, .. } if cmdline.len() > MAX_CMDLINE => {
            return Err(bad(
                "cmdline",
                format!("{} bytes is longer than {MAX_CMDLINE}", cmdline.len()),
            ))
        }
        Boot::Uefi { .. } | Boot::LegacyBios if spec.disks.is_empty() => {
            return Err(bad("disks", "no root disk to boot from".to_string()))
        }
        _ => {}
    }
    for disk in &spec.disks {
        if let Some(serial) = &disk.serial {
            if serial.is_empty()
                || serial.len() > MAX_SERIAL
                || !serial
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(bad(
                    "disks",
                    format!("serial {serial:?} is not 1-{MAX_SERIAL} letters, digits or dashes"),
                ));
            }
        }
    }
    if let Some(imds) = &spec.net.imds {
        if imds.argv.is_empty() {
            return Err(bad("net", "IMDS command is empty".to_string()));
        }
    }
    if spec.net.ssh_port == Some(0) {
        return Err(bad("net", "SSH port 0".to_string()));
    }
    let uuid = &spec.smbios.uuid;
    let uuid_ok = uuid.len() == 36
        && uuid.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        });
    if !uuid_ok {
        return Err(bad("smbios", format!("{uuid:?} is not a UUID")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "i-0123456789abcdef0";

    fn base(arch: Arch, boot: Boot) -> MachineSpec {
        MachineSpec {
            instance_id: ID.to_string(),
            arch,
            boot,
            accel: Accel::Tcg,
            vcpus: 2,
            memory_mib: 1024,
            disks: vec![
                DiskSpec {
                    path: "/s/volumes/vol-0aaaaaaaaaaaaaaaa.qcow2".into(),
                    format: DiskFormat::Qcow2,
                    read_only: false,
                    serial: Some(volume_serial("vol-0aaaaaaaaaaaaaaaa")),
                },
                DiskSpec {
                    path: "/r/i-0123456789abcdef0/ephemeral0.qcow2".into(),
                    format: DiskFormat::Qcow2,
                    read_only: false,
                    serial: None,
                },
            ],
            seed: Some("/s/instances/i-0123456789abcdef0/seed.img".into()),
            net: NetSpec {
                ssh_port: Some(2222),
                imds: Some(ImdsForward {
                    argv: vec![
                        "/usr/bin/amirun".into(),
                        "imds-relay".into(),
                        "127.0.0.1:8775".into(),
                    ],
                }),
                outbound: Outbound::Nat,
            },
            qmp_socket: "/s/instances/i-0123456789abcdef0/qmp.sock".into(),
            serial_log: "/s/instances/i-0123456789abcdef0/serial.log".into(),
            smbios: SmbiosIdentity::for_instance(ID, "t3.micro"),
        }
    }

    fn uefi() -> Boot {
        Boot::Uefi {
            code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            vars: "/s/instances/i-0123456789abcdef0/vars.fd".into(),
        }
    }

    fn kernel() -> Boot {
        Boot::Kernel {
            kernel: "/k/vmlinuz".into(),
            initrd: Some("/k/initrd.img".into()),
            cmdline: "console=ttyS0 root=/dev/vda1".into(),
        }
    }

    /// The argv split into lines of one option and its value, for readable diffs.
    fn lines(cmd: &QemuCommand) -> Vec<String> {
        let mut out = vec![cmd.program.clone()];
        let mut it = cmd.args.iter().peekable();
        while let Some(a) = it.next() {
            match it.peek() {
                Some(v) if !v.starts_with('-') => out.push(format!("{a} {}", it.next().unwrap())),
                _ => out.push(a.clone()),
            }
        }
        out
    }

    const UUID: &str = "ec2f7329-1f7c-5399-19b0-62b1a6e8a901";

    fn common_tail() -> Vec<String> {
        [
            "-blockdev driver=qcow2,node-name=disk0,read-only=off,discard=unmap,file.driver=file,file.filename=/s/volumes/vol-0aaaaaaaaaaaaaaaa.qcow2",
            "-device virtio-blk-pci,id=disk0-dev,drive=disk0,serial=vol0aaaaaaaaaaaaaaaa,bootindex=0",
            "-blockdev driver=qcow2,node-name=disk1,read-only=off,discard=unmap,file.driver=file,file.filename=/r/i-0123456789abcdef0/ephemeral0.qcow2",
            "-device virtio-blk-pci,id=disk1-dev,drive=disk1",
            "-blockdev driver=raw,node-name=seed,read-only=on,file.driver=file,file.filename=/s/instances/i-0123456789abcdef0/seed.img",
            "-device virtio-blk-pci,id=seed-dev,drive=seed,serial=cidata",
            "-device pcie-root-port,id=hotplug0,chassis=1,io-reserve=0",
            "-device pcie-root-port,id=hotplug1,chassis=2,io-reserve=0",
            "-device pcie-root-port,id=hotplug2,chassis=3,io-reserve=0",
            "-device pcie-root-port,id=hotplug3,chassis=4,io-reserve=0",
            "-device pcie-root-port,id=hotplug4,chassis=5,io-reserve=0",
            "-device pcie-root-port,id=hotplug5,chassis=6,io-reserve=0",
            "-device pcie-root-port,id=hotplug6,chassis=7,io-reserve=0",
            "-device pcie-root-port,id=hotplug7,chassis=8,io-reserve=0",
            "-netdev user,id=net0,ipv6=off,net=169.254.0.0/16,host=169.254.0.2,dns=169.254.0.3,dhcpstart=169.254.0.15,hostfwd=tcp:127.0.0.1:2222-:22,guestfwd=tcp:169.254.169.254:80-cmd:/usr/bin/amirun imds-relay 127.0.0.1:8775",
            "-device virtio-net-pci,netdev=net0",
            "-device virtio-rng-pci",
            "-chardev file,id=serial0,path=/s/instances/i-0123456789abcdef0/serial.log",
            "-serial chardev:serial0",
            "-chardev socket,id=qmp,path=/s/instances/i-0123456789abcdef0/qmp.sock,server=on,wait=off",
            "-mon chardev=qmp,mode=control",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([format!(
            "-smbios type=1,manufacturer=Amazon EC2,product=t3.micro,serial={UUID},uuid={UUID}"
        )])
        .collect()
    }

    fn expect(head: &[&str], tail: Vec<String>) -> Vec<String> {
        head.iter().map(|s| s.to_string()).chain(tail).collect()
    }

    #[test]
    fn smbios_identity_looks_like_ec2() {
        let s = SmbiosIdentity::for_instance(ID, "t3.micro");
        assert_eq!(s.uuid, UUID);
        assert_eq!(s, SmbiosIdentity::for_instance(ID, "t3.micro"));
        assert_ne!(s.uuid, SmbiosIdentity::for_instance("i-1", "t3.micro").uuid);
    }

    #[test]
    fn x86_64_uefi() {
        let cmd = qemu_command(&base(Arch::X86_64, uefi())).unwrap();
        assert_eq!(
            lines(&cmd),
            expect(
                &[
                    "qemu-system-x86_64",
                    "-name guest=i-0123456789abcdef0",
                    "-nodefaults",
                    "-no-user-config",
                    "-display none",
                    "-machine q35,pflash0=fw-code,pflash1=fw-vars",
                    "-accel tcg",
                    "-cpu max",
                    "-smp 2",
                    "-m 1024M",
                    "-blockdev driver=raw,node-name=fw-code,read-only=on,file.driver=file,file.filename=/usr/share/OVMF/OVMF_CODE_4M.fd",
                    "-blockdev driver=raw,node-name=fw-vars,read-only=off,file.driver=file,file.filename=/s/instances/i-0123456789abcdef0/vars.fd",
                ],
                common_tail()
            )
        );
    }

    #[test]
    fn x86_64_legacy_bios() {
        let mut spec = base(Arch::X86_64, Boot::LegacyBios);
        spec.accel = Accel::Kvm;
        let cmd = qemu_command(&spec).unwrap();
        assert_eq!(
            lines(&cmd),
            expect(
                &[
                    "qemu-system-x86_64",
                    "-name guest=i-0123456789abcdef0",
                    "-nodefaults",
                    "-no-user-config",
                    "-display none",
                    "-machine q35",
                    "-accel kvm",
                    "-cpu host",
                    "-smp 2",
                    "-m 1024M",
                ],
                common_tail()
            )
        );
    }

    fn kernel_tail() -> Vec<String> {
        // No bootindex: nothing is booted from disk.
        common_tail()
            .into_iter()
            .map(|l| l.replace(",bootindex=0", ""))
            .collect()
    }

    #[test]
    fn x86_64_direct_kernel() {
        let cmd = qemu_command(&base(Arch::X86_64, kernel())).unwrap();
        assert_eq!(
            lines(&cmd),
            expect(
                &[
                    "qemu-system-x86_64",
                    "-name guest=i-0123456789abcdef0",
                    "-nodefaults",
                    "-no-user-config",
                    "-display none",
                    "-machine q35",
                    "-accel tcg",
                    "-cpu max",
                    "-smp 2",
                    "-m 1024M",
                    "-kernel /k/vmlinuz",
                    "-initrd /k/initrd.img",
                    "-append console=ttyS0 root=/dev/vda1",
                ],
                kernel_tail()
            )
        );
        // The command line stays one argument.
        assert!(cmd
            .args
            .contains(&"console=ttyS0 root=/dev/vda1".to_string()));
    }

    #[test]
    fn arm64_uefi() {
        let boot = Boot::Uefi {
            code: "/usr/share/AAVMF/AAVMF_CODE.fd".into(),
            vars: "/s/instances/i-0123456789abcdef0/vars.fd".into(),
        };
        let cmd = qemu_command(&base(Arch::Arm64, boot)).unwrap();
        assert_eq!(
            lines(&cmd),
            expect(
                &[
                    "qemu-system-aarch64",
                    "-name guest=i-0123456789abcdef0",
                    "-nodefaults",
                    "-no-user-config",
                    "-display none",
                    "-machine virt,gic-version=3,pflash0=fw-code,pflash1=fw-vars",
                    "-accel tcg",
                    "-cpu max,pauth-impdef=on",
                    "-smp 2",
                    "-m 1024M",
                    "-blockdev driver=raw,node-name=fw-code,read-only=on,file.driver=file,file.filename=/usr/share/AAVMF/AAVMF_CODE.fd",
                    "-blockdev driver=raw,node-name=fw-vars,read-only=off,file.driver=file,file.filename=/s/instances/i-0123456789abcdef0/vars.fd",
                    "-boot menu=on,splash-time=0",
                ],
                common_tail()
            )
        );
    }

    #[test]
    fn arm64_kernel() {
        let boot = Boot::Kernel {
            kernel: "/k/vmlinuz".into(),
            initrd: None,
            cmdline: "console=ttyAMA0".into(),
        };
        let mut spec = base(Arch::Arm64, boot);
        spec.net = NetSpec::default();
        let cmd = qemu_command(&spec).unwrap();
        let tail: Vec<String> = kernel_tail()
            .into_iter()
            .map(|l| {
                if l.starts_with("-netdev") {
                    "-netdev user,id=net0,ipv6=off,net=169.254.0.0/16,host=169.254.0.2,dns=169.254.0.3,dhcpstart=169.254.0.15,restrict=on,guestfwd=tcp:169.254.169.254:80-cmd:/bin/true".to_string()
                } else {
                    l
                }
            })
            .collect();
        assert_eq!(
            lines(&cmd),
            expect(
                &[
                    "qemu-system-aarch64",
                    "-name guest=i-0123456789abcdef0",
                    "-nodefaults",
                    "-no-user-config",
                    "-display none",
                    "-machine virt,gic-version=3",
                    "-accel tcg",
                    "-cpu max,pauth-impdef=on",
                    "-smp 2",
                    "-m 1024M",
                    "-kernel /k/vmlinuz",
                    "-append console=ttyAMA0",
                ],
                tail
            )
        );
    }

    #[test]
    fn restricted_network_and_quoted_imds_command() {
        let mut spec = base(Arch::X86_64, Boot::LegacyBios);
        spec.net = NetSpec {
            ssh_port: None,
            imds: Some(ImdsForward {
                argv: vec!["/opt/my tools/relay".into(), "a,b".into()],
            }),
            outbound: Outbound::None,
        };
        let cmd = qemu_command(&spec).unwrap();
        let netdev = &cmd.args[cmd.args.iter().position(|a| a == "-netdev").unwrap() + 1];
        assert_eq!(
            netdev,
            "user,id=net0,ipv6=off,net=169.254.0.0/16,host=169.254.0.2,dns=169.254.0.3,dhcpstart=169.254.0.15,restrict=on,guestfwd=tcp:169.254.169.254:80-cmd:'/opt/my tools/relay' 'a,,b'"
        );
    }

    /// The `-netdev` value of a spec's argv.
    fn netdev_of(spec: &MachineSpec) -> String {
        let cmd = qemu_command(spec).unwrap();
        cmd.args[cmd.args.iter().position(|a| a == "-netdev").unwrap() + 1].clone()
    }

    #[test]
    fn guests_are_isolated_unless_they_opt_in() {
        let mut spec = base(Arch::X86_64, Boot::LegacyBios);
        spec.net.outbound = Outbound::default();
        assert_eq!(netdev_of(&spec), "user,id=net0,ipv6=off,net=169.254.0.0/16,host=169.254.0.2,dns=169.254.0.3,dhcpstart=169.254.0.15,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22,guestfwd=tcp:169.254.169.254:80-cmd:/usr/bin/amirun imds-relay 127.0.0.1:8775");
        spec.net.outbound = Outbound::Nat;
        assert_eq!(netdev_of(&spec), "user,id=net0,ipv6=off,net=169.254.0.0/16,host=169.254.0.2,dns=169.254.0.3,dhcpstart=169.254.0.15,hostfwd=tcp:127.0.0.1:2222-:22,guestfwd=tcp:169.254.169.254:80-cmd:/usr/bin/amirun imds-relay 127.0.0.1:8775");
    }

    #[test]
    fn outbound_tag_values() {
        assert_eq!(Outbound::from_tag("nat"), Some(Outbound::Nat));
        assert_eq!(Outbound::from_tag("none"), Some(Outbound::None));
        assert_eq!(Outbound::from_tag("NAT"), None);
        assert_eq!(
            Outbound::from_tag(Outbound::Nat.as_str()),
            Some(Outbound::Nat)
        );
    }

    #[test]
    fn paths_with_commas_cannot_inject_options() {
        let mut spec = base(Arch::X86_64, Boot::LegacyBios);
        spec.serial_log = "/tmp/x,id=evil".into();
        let cmd = qemu_command(&spec).unwrap();
        assert!(cmd
            .args
            .contains(&"file,id=serial0,path=/tmp/x,,id=evil".to_string()));
    }

    #[test]
    fn refusals() {
        let e = qemu_command(&base(Arch::Arm64, Boot::LegacyBios)).unwrap_err();
        assert!(matches!(e, MachineError::UnsupportedBoot { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "arm64 guests cannot boot with legacy BIOS; use boot mode uefi"
        );
        assert_eq!(e.code(), ErrorCode::InvalidParameterCombination);

        let mut s = base(Arch::X86_64, uefi());
        s.vcpus = 0;
        let e = qemu_command(&s).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Invalid vcpus for i-0123456789abcdef0: 0 is not between 1 and 255"
        );
        assert_eq!(e.code(), ErrorCode::InvalidParameterValue);

        let mut s = base(Arch::X86_64, uefi());
        s.memory_mib = 16;
        assert!(qemu_command(&s).is_err());

        let mut s = base(Arch::X86_64, uefi());
        s.disks.clear();
        assert!(qemu_command(&s)
            .unwrap_err()
            .to_string()
            .contains("no root disk"));

        let mut s = base(Arch::X86_64, uefi());
        s.disks[0].serial = Some("vol-0aaaaaaaaaaaaaaaa".into()); // 21 bytes
        assert!(qemu_command(&s).is_err());

        let mut s = base(Arch::X86_64, kernel());
        s.boot = Boot::Kernel {
            kernel: "/k".into(),
            initrd: None,
            cmdline: "x".repeat(MAX_CMDLINE + 1),
        };
        assert!(qemu_command(&s).is_err());
        s.boot = Boot::Kernel {
            kernel: "/k".into(),
            initrd: None,
            cmdline: "console=ttyS0\ninit=/evil".into(),
        };
        assert!(matches!(
            qemu_command(&s).unwrap_err(),
            MachineError::Argument {
                field: "cmdline",
                ..
            }
        ));

        let mut s = base(Arch::X86_64, uefi());
        s.instance_id = "web-1".into();
        assert!(qemu_command(&s).is_err());

        let mut s = base(Arch::X86_64, uefi());
        s.smbios.uuid = "not-a-uuid".into();
        assert!(qemu_command(&s).is_err());
    }

    #[test]
    fn ec2_names() {
        assert_eq!(Arch::from_ec2("i386").unwrap(), Arch::X86_64);
        assert_eq!("arm64".parse::<Arch>().unwrap(), Arch::Arm64);
        let e = Arch::from_ec2("sparc").unwrap_err();
        assert_eq!(
            e.to_string(),
            "Unknown architecture \"sparc\"; expected x86_64, i386 or arm64"
        );
        assert_eq!(
            BootMode::from_ec2("uefi-preferred").unwrap(),
            BootMode::UefiPreferred
        );
        assert!(BootMode::from_ec2("bios").is_err());
        assert!(BootMode::UefiPreferred.uses_uefi(Arch::X86_64).unwrap());
        assert!(!BootMode::LegacyBios.uses_uefi(Arch::X86_64).unwrap());
        assert!(BootMode::LegacyBios.uses_uefi(Arch::Arm64).is_err());
        assert_eq!(
            volume_serial("vol-0123456789abcdef0"),
            "vol0123456789abcdef0"
        );
    }

    #[test]
    fn missing_qemu_names_the_package() {
        let e = MachineError::QemuMissing {
            program: Arch::Arm64.qemu_binary(),
            package: Arch::Arm64.qemu_package(),
        };
        assert_eq!(
            e.to_string(),
            "qemu-system-aarch64 is not installed; install the Debian package qemu-system-arm"
        );
    }
}
