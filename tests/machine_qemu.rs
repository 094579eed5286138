//! QEMU itself accepts the argv `machine::qemu_command` builds, for every
//! profile: each machine is created for real (paused with `-S`) with the
//! host's firmware, a qcow2 root disk and a real seed, and must answer
//! `query-status` on its QMP socket. Boots are not attempted here (no guest
//! image is assumed); the argv unit tests pin the exact arguments.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use amirun::machine::{
    self, Accel, Arch, Boot, DiskFormat, DiskSpec, ImdsForward, MachineSpec, NetSpec, Outbound,
    SmbiosIdentity,
};
use amirun::metadata::{build_seed, SeedSpec};

const ID: &str = "i-0123456789abcdef0";

struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn qmp(sock: &Path, child: &mut Child) -> Result<String, String> {
    let start = Instant::now();
    let stream = loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return Err(format!("QEMU exited ({status}): {err}"));
        }
        match UnixStream::connect(sock) {
            Ok(s) => break s,
            Err(_) if start.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => return Err(format!("no QMP socket: {e}")),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut w = stream;
    let mut line = String::new();
    reader.read_line(&mut line).unwrap(); // greeting
    w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
        .unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    w.write_all(b"{\"execute\":\"query-status\"}\n").unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    w.write_all(b"{\"execute\":\"quit\"}\n").unwrap();
    Ok(line)
}

fn qcow2(path: &Path) -> bool {
    Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg("64M")
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn spec(dir: &Path, arch: Arch, boot: Boot) -> MachineSpec {
    let root = dir.join("root.qcow2");
    assert!(qcow2(&root), "qemu-img create failed");
    let seed = dir.join("seed.img");
    build_seed(
        &seed,
        &SeedSpec {
            instance_id: ID.into(),
            hostname: "ip-169-254-0-15".into(),
            ..Default::default()
        },
    )
    .unwrap();
    MachineSpec {
        instance_id: ID.into(),
        arch,
        boot,
        accel: Accel::Tcg,
        vcpus: 2,
        memory_mib: 256,
        disks: vec![DiskSpec {
            path: root,
            format: DiskFormat::Qcow2,
            read_only: false,
            serial: Some(machine::volume_serial("vol-0aaaaaaaaaaaaaaaa")),
        }],
        seed: Some(seed),
        net: NetSpec {
            ssh_port: None,
            imds: Some(ImdsForward {
                argv: vec!["/bin/cat".into()],
            }),
            outbound: Outbound::None,
            vpc_nic: None,
        },
        qmp_socket: dir.join("qmp.sock"),
        serial_log: dir.join("serial.log"),
        smbios: SmbiosIdentity::for_instance(ID, "t3.micro"),
        tb_cache: machine::TbCache::ForGuest,
        free_pages: machine::FreePages::Reported,
        incoming: false,
    }
}

fn accepts(arch: Arch, make_boot: impl Fn(&Path) -> Boot) {
    if machine::find_qemu(arch).is_err() {
        eprintln!("SKIP: {} not installed", arch.qemu_binary());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), arch, make_boot(dir.path()));
    let cmd = machine::qemu_command(&spec).unwrap();
    let mut c = cmd.to_command();
    c.arg("-S")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut q = Qemu(c.spawn().unwrap());
    let reply = qmp(&spec.qmp_socket, &mut q.0).unwrap_or_else(|e| panic!("{cmd:?}\n{e}"));
    assert!(reply.contains("\"status\": \"prelaunch\""), "{reply}");
}

fn uefi(arch: Arch) -> impl Fn(&Path) -> Boot {
    move |dir: &Path| {
        let fw = machine::find_system_uefi_firmware(arch).expect("UEFI firmware installed");
        let vars = dir.join("vars.fd");
        machine::install_uefi_vars(&fw, &vars).unwrap();
        Boot::Uefi {
            code: fw.code,
            vars,
        }
    }
}

fn kernel(payload: Vec<u8>) -> impl Fn(&Path) -> Boot {
    move |dir: &Path| {
        let k: PathBuf = dir.join("kernel");
        std::fs::write(&k, &payload).unwrap();
        Boot::Kernel {
            kernel: k,
            initrd: None,
            cmdline: "console=ttyS0".into(),
        }
    }
}

#[test]
fn qemu_accepts_x86_64_uefi() {
    accepts(Arch::X86_64, uefi(Arch::X86_64));
}

#[test]
fn qemu_accepts_x86_64_legacy_bios() {
    accepts(Arch::X86_64, |_: &Path| Boot::LegacyBios);
}

#[test]
fn qemu_accepts_x86_64_kernel() {
    accepts(Arch::X86_64, kernel(machine::accel::x86_64_probe_payload()));
}

#[test]
fn qemu_accepts_arm64_uefi() {
    accepts(Arch::Arm64, uefi(Arch::Arm64));
}

#[test]
fn qemu_accepts_arm64_kernel() {
    accepts(Arch::Arm64, kernel(machine::accel::arm64_probe_payload()));
}
