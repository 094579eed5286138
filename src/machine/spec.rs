//! What the user's instance is, as QEMU needs it: guest architecture, boot
//! mode and boot method, accelerator, disks, SMBIOS identity, gathered in a
//! [`MachineSpec`] (the network half is [`super::net`]).

use super::{MachineError, NetSpec};
use std::fmt;
use std::path::PathBuf;

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
        /// This instance's own copy of the variable store ([`install_uefi_vars`](super::install_uefi_vars)).
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
    pub(super) fn driver(self) -> &'static str {
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
pub fn hotplug_blockdev(node: &str, path: &std::path::Path) -> serde_json::Value {
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
    /// KVM or TCG (see [`choose_accel`](super::choose_accel)).
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
    /// TCG's translation-block cache; ignored under KVM.
    pub tb_cache: TbCache,
    /// Whether memory the guest freed goes back to the host.
    pub free_pages: FreePages,
    /// Start paused, waiting for a saved state to be loaded over QMP
    /// (`-incoming defer`, then `migrate-incoming`): a resume from
    /// hibernation. The rest of the argv is the same as for a cold boot.
    pub incoming: bool,
}

/// How big TCG's translation-block cache is (`-accel tcg,tb-size=MiB`).
///
/// QEMU 5.0 and later reserve 1 GiB for it in system emulation, and a
/// guest's QEMU fills much of that with code it translated once at boot
/// (firmware, kernel init): a t3.nano (0.5 GiB guest) QEMU held 322 MB
/// RSS. Sized for the guest's memory instead ([`tb_cache_mib`]), the
/// cache is flushed and refilled when full, which costs little for the
/// small working sets of these guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TbCache {
    /// Sized for the guest by [`tb_cache_mib`] (the default).
    #[default]
    ForGuest,
    /// QEMU's own default (no `tb-size`), for comparison in benchmarks.
    QemuDefault,
    /// This many MiB.
    Mib(u32),
}

/// The translation-block cache for a guest of `memory_mib`: 1/32 of its
/// memory, at least 16 MiB and at most 256 MiB (t3.nano: 16 MiB, t3.micro:
/// 32 MiB, 8 GiB and more: 256 MiB).
pub fn tb_cache_mib(memory_mib: u64) -> u32 {
    (memory_mib / 32).clamp(16, 256) as u32
}

/// What becomes of guest memory the guest has freed.
///
/// QEMU keeps every page of guest RAM the guest ever wrote: firmware, the
/// boot loader, the kernel's decompression and the initramfs touch far more
/// than a small guest goes on using. A tiny t3.nano guest (512 MiB) held
/// 166 MB of its RAM when ready, 4 KiB pages or huge pages alike. With a
/// virtio balloon that offers free-page reporting, a guest kernel with
/// `CONFIG_PAGE_REPORTING` (Debian's, with the `virtio_balloon` driver)
/// reports its free 2 MiB blocks, at once when the driver loads and then
/// as more are freed, and QEMU drops them from its RSS. The balloon is
/// never inflated: the guest keeps all the memory of its instance type, and
/// a reported page the guest takes again is simply a new zero page. A
/// guest without the driver ignores the device. The device is part of the
/// machine's state, so a hibernated guest resumes with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FreePages {
    /// Reported by the guest and dropped by QEMU
    /// (`virtio-balloon-pci,free-page-reporting=on`), for every instance
    /// type: what it saves grows with the memory.
    #[default]
    Reported,
    /// Kept by QEMU (no balloon device), for comparison in benchmarks.
    Kept,
}

/// The balloon device's id (QMP `qom-get` reads it at this path).
pub const BALLOON_ID: &str = "balloon0";

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "i-0123456789abcdef0";
    const UUID: &str = "ec2f7329-1f7c-5399-19b0-62b1a6e8a901";

    #[test]
    fn smbios_identity_looks_like_ec2() {
        let s = SmbiosIdentity::for_instance(ID, "t3.micro");
        assert_eq!(s.uuid, UUID);
        assert_eq!(s, SmbiosIdentity::for_instance(ID, "t3.micro"));
        assert_ne!(s.uuid, SmbiosIdentity::for_instance("i-1", "t3.micro").uuid);
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
}
