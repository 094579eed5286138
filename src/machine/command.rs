//! The QEMU command line itself: [`qemu_command`] validates a
//! [`MachineSpec`] and turns it into an argv of typed options, device by
//! device; [`find_qemu`] finds the emulator to run it with.

use super::net::{is_unicast_mac, netdev};
use super::qemu_opts::{ArgError, Argv, OptList};
use super::{
    disk_node_name, tb_cache_mib, Accel, Arch, Boot, DiskFormat, DiskSpec, FreePages, MachineError,
    MachineSpec, TbCache, BALLOON_ID,
};
use std::path::{Path, PathBuf};

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
/// `virtio-rng`, the free-page-reporting balloon, serial, QMP, SMBIOS.
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
    // TCG's translation cache is sized for the guest (see `TbCache`).
    let mut accel = OptList::new(spec.accel.qemu_name()).map_err(arg("accel"))?;
    if spec.accel == Accel::Tcg {
        let mib = match spec.tb_cache {
            TbCache::ForGuest => Some(tb_cache_mib(spec.memory_mib)),
            TbCache::QemuDefault => None,
            TbCache::Mib(n) => Some(n),
        };
        if let Some(mib) = mib {
            accel = accel.set("tb-size", mib).map_err(arg("tb_cache"))?;
        }
    }
    a.opt("-accel", accel);
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
    for port in 0..super::spec::HOTPLUG_PORTS {
        let dev = OptList::new("pcie-root-port")
            .and_then(|d| d.set("id", super::spec::hotplug_port(port)))
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
            .and_then(|d| match &spec.net.vpc_nic {
                Some(nic) => d.set("mac", &nic.mac),
                None => Ok(d),
            })
            .map_err(arg("net"))?,
    );
    // Guests (and cloud-init's ssh key generation) want entropy early.
    a.opt(
        "-device",
        OptList::new("virtio-rng-pci").map_err(arg("rng"))?,
    );
    // Memory the guest frees goes back to the host (see `FreePages`).
    if spec.free_pages == FreePages::Reported {
        a.opt(
            "-device",
            OptList::new("virtio-balloon-pci")
                .and_then(|d| d.set("id", BALLOON_ID))
                .and_then(|d| d.switch("free-page-reporting", true))
                .map_err(arg("free_pages"))?,
        );
    }

    // Console: the first serial port (ttyS0 / ttyAMA0) to a log file, the
    // source of GetConsoleOutput. Truncated at each boot; a resumed guest
    // carries on writing after what it wrote before it hibernated.
    let mut serial = OptList::new("file")
        .and_then(|c| c.set("id", "serial0"))
        .and_then(|c| c.path("path", &spec.serial_log))
        .map_err(arg("serial_log"))?;
    if spec.incoming {
        serial = serial.switch("append", true).map_err(arg("serial_log"))?;
    }
    a.opt("-chardev", serial);
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

    // A resume: wait paused for `migrate-incoming` from the supervisor.
    if spec.incoming {
        a.raw("-incoming", "defer").map_err(arg("incoming"))?;
    }

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

fn validate(spec: &MachineSpec) -> Result<(), MachineError> {
    let bad = |field: &'static str, reason: String| MachineError::InvalidSpec {
        instance_id: spec.instance_id.clone(),
        field,
        reason,
    };
    if let Some(nic) = &spec.net.vpc_nic {
        if !is_unicast_mac(&nic.mac) {
            return Err(bad(
                "net.vpc_nic.mac",
                format!(
                    "'{}' is not a unicast MAC address (xx:xx:xx:xx:xx:xx)",
                    nic.mac
                ),
            ));
        }
    }
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
    use super::super::{volume_serial, ImdsForward, NetSpec, Outbound, SmbiosIdentity};
    use super::*;
    use crate::error_code::ErrorCode;

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
                vpc_nic: None,
            },
            qmp_socket: "/s/instances/i-0123456789abcdef0/qmp.sock".into(),
            serial_log: "/s/instances/i-0123456789abcdef0/serial.log".into(),
            smbios: SmbiosIdentity::for_instance(ID, "t3.micro"),
            tb_cache: TbCache::ForGuest,
            free_pages: FreePages::Reported,
            incoming: false,
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
            "-device virtio-balloon-pci,id=balloon0,free-page-reporting=on",
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
                    "-accel tcg,tb-size=32",
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
                    "-accel tcg,tb-size=32",
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
                    "-accel tcg,tb-size=32",
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
                    "-accel tcg,tb-size=32",
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
            vpc_nic: None,
        };
        let cmd = qemu_command(&spec).unwrap();
        let netdev = &cmd.args[cmd.args.iter().position(|a| a == "-netdev").unwrap() + 1];
        assert_eq!(
            netdev,
            "user,id=net0,ipv6=off,net=169.254.0.0/16,host=169.254.0.2,dns=169.254.0.3,dhcpstart=169.254.0.15,restrict=on,guestfwd=tcp:169.254.169.254:80-cmd:'/opt/my tools/relay' 'a,,b'"
        );
    }

    #[test]
    fn a_vpc_nic_is_the_supervisors_tap_with_its_mac() {
        let mut spec = base(Arch::X86_64, Boot::LegacyBios);
        spec.net.vpc_nic = Some(crate::machine::VpcNic {
            mac: "0a:12:34:56:78:9a".into(),
        });
        let cmd = qemu_command(&spec).unwrap();
        let l = lines(&cmd);
        assert!(
            l.contains(&"-netdev tap,id=net0,fd=3".to_string()),
            "{l:#?}"
        );
        assert!(
            l.contains(&"-device virtio-net-pci,netdev=net0,mac=0a:12:34:56:78:9a".to_string()),
            "{l:#?}"
        );
        for bad in [
            "0b:12:34:56:78:9a",
            "0a:12:34:56:78",
            "0a:12:34:56:78:9a,x=y",
            "zz:12:34:56:78:9a",
        ] {
            spec.net.vpc_nic = Some(crate::machine::VpcNic { mac: bad.into() });
            assert!(
                matches!(
                    qemu_command(&spec),
                    Err(MachineError::InvalidSpec {
                        field: "net.vpc_nic.mac",
                        ..
                    })
                ),
                "{bad}"
            );
        }
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
    fn paths_with_commas_cannot_inject_options() {
        let mut spec = base(Arch::X86_64, Boot::LegacyBios);
        spec.serial_log = "/tmp/x,id=evil".into();
        let cmd = qemu_command(&spec).unwrap();
        assert!(cmd
            .args
            .contains(&"file,id=serial0,path=/tmp/x,,id=evil".to_string()));
    }

    #[test]
    fn tcg_cache_is_sized_for_the_guest_and_a_resume_waits_for_its_state() {
        let accel = |spec: &MachineSpec| -> String {
            let cmd = qemu_command(spec).unwrap();
            let i = cmd.args.iter().position(|a| a == "-accel").unwrap();
            cmd.args[i + 1].clone()
        };
        let mut spec = base(Arch::X86_64, uefi());
        spec.memory_mib = 512;
        assert_eq!(accel(&spec), "tcg,tb-size=16");
        spec.memory_mib = 16 * 1024;
        assert_eq!(accel(&spec), "tcg,tb-size=256");
        spec.tb_cache = TbCache::QemuDefault;
        assert_eq!(accel(&spec), "tcg");
        spec.tb_cache = TbCache::Mib(48);
        assert_eq!(accel(&spec), "tcg,tb-size=48");
        spec.accel = Accel::Kvm;
        assert_eq!(accel(&spec), "kvm");

        let spec = base(Arch::X86_64, uefi());
        let cold = lines(&qemu_command(&spec).unwrap());
        assert!(!cold.iter().any(|l| l.starts_with("-incoming")));
        let resume = lines(
            &qemu_command(&MachineSpec {
                incoming: true,
                ..spec
            })
            .unwrap(),
        );
        assert_eq!(resume.last().unwrap(), "-incoming defer");
        assert!(resume.contains(
            &"-chardev file,id=serial0,path=/s/instances/i-0123456789abcdef0/serial.log,append=on"
                .to_string()
        ));
        // Otherwise the same machine: a state loads only into its twin.
        let same: Vec<_> = resume
            .iter()
            .filter(|l| !l.starts_with("-incoming") && !l.starts_with("-chardev file"))
            .collect();
        let cold_same: Vec<_> = cold
            .iter()
            .filter(|l| !l.starts_with("-chardev file"))
            .collect();
        assert_eq!(same, cold_same);
    }

    #[test]
    fn freed_guest_memory_goes_back_unless_kept() {
        let balloon = "-device virtio-balloon-pci,id=balloon0,free-page-reporting=on";
        let mut spec = base(Arch::Arm64, kernel());
        assert!(lines(&qemu_command(&spec).unwrap()).contains(&balloon.to_string()));
        spec.free_pages = FreePages::Kept;
        let l = lines(&qemu_command(&spec).unwrap());
        assert!(!l.iter().any(|l| l.contains("balloon")), "{l:#?}");
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
