//! Choosing between KVM and TCG by evidence, not by the existence of `/dev/kvm`.
//!
//! On some hosts `/dev/kvm` opens and answers every ioctl, yet ordinary
//! guests never run (a nested hypervisor such as PVM that only runs specially
//! built kernels; HOST.md). So KVM counts as usable only when a probe guest,
//! started with the same machine and CPU model a real guest would get, reaches
//! a known point within a bound. The probe payload is a few bytes generated
//! here: on x86_64 a multiboot image that prints `K` on the first serial port
//! and exits through `isa-debug-exit`; on arm64 a raw image that prints `K`
//! on the PL011 and powers off through PSCI. The verdict is cached per host
//! kernel and QEMU binary, so launches do not pay for it again.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{find_qemu, Accel, Arch, MachineError};

/// How long a probe guest may take to reach its known point.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// What the user asked for (`--accel auto|kvm|tcg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelRequest {
    /// KVM when it demonstrably works for this guest, TCG otherwise.
    #[default]
    Auto,
    /// KVM or an error.
    Kvm,
    /// TCG, always.
    Tcg,
}

impl std::str::FromStr for AccelRequest {
    type Err = MachineError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "kvm" => Ok(Self::Kvm),
            "tcg" => Ok(Self::Tcg),
            _ => Err(MachineError::InvalidValue {
                what: "accelerator",
                value: s.to_string(),
                expected: "auto, kvm or tcg",
            }),
        }
    }
}

/// The accelerator chosen, with a one-line reason to show the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    /// KVM or TCG.
    pub accel: Accel,
    /// Why, in one line ("KVM present but a probe guest did not run within 3s (nested PVM?)").
    pub reason: String,
}

/// The outcome of one KVM probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvmProbeState {
    /// Whether the probe guest reached its known point in time.
    pub usable: bool,
    /// One line: what happened.
    pub reason: String,
    /// Wall time of the probe in milliseconds.
    pub elapsed_ms: u64,
}

/// The architecture of the machine amirun runs on, if it is one amirun emulates.
pub fn host_arch() -> Option<Arch> {
    match std::env::consts::ARCH {
        "x86_64" => Some(Arch::X86_64),
        "aarch64" => Some(Arch::Arm64),
        _ => None,
    }
}

/// Picks the accelerator for a guest of architecture `guest`.
///
/// KVM is considered only for the host's own architecture, with `/dev/kvm`
/// read-write, and when a probe guest runs (see the module doc). The probe's
/// verdict is cached in `probe_cache` (normally
/// [`Paths::accel_probe_cache`](crate::paths::Paths::accel_probe_cache)).
/// `Kvm` requested where KVM cannot work is an `UnsupportedOperation` error;
/// `Auto` then falls back to TCG with the reason.
pub fn choose_accel(
    requested: AccelRequest,
    guest: Arch,
    probe_cache: &Path,
) -> Result<AccelChoice, MachineError> {
    if requested == AccelRequest::Tcg {
        return Ok(AccelChoice {
            accel: Accel::Tcg,
            reason: "TCG requested".to_string(),
        });
    }
    let verdict = kvm_verdict(guest, probe_cache)?;
    match (verdict, requested) {
        (Ok(reason), _) => Ok(AccelChoice {
            accel: Accel::Kvm,
            reason,
        }),
        (Err(reason), AccelRequest::Kvm) => Err(MachineError::KvmUnusable {
            arch: guest,
            reason,
        }),
        (Err(reason), _) => Ok(AccelChoice {
            accel: Accel::Tcg,
            reason,
        }),
    }
}

/// `Ok(reason)` when KVM runs `guest` guests here, `Err(reason)` when not.
fn kvm_verdict(guest: Arch, probe_cache: &Path) -> Result<Result<String, String>, MachineError> {
    let host = host_arch();
    if host != Some(guest) {
        let host = host.map_or(std::env::consts::ARCH, Arch::ec2_name);
        return Ok(Err(format!(
            "{guest} guest on an {host} host: KVM runs only the host's own architecture"
        )));
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return Ok(Err(format!("/dev/kvm is not usable: {e}")));
    }
    let qemu = find_qemu(guest)?;
    let key = probe_key(guest, &qemu);
    let mut cache = ProbeCacheState::load(probe_cache);
    let state = match cache.entries.get(&key) {
        Some(state) => state.clone(),
        None => {
            let state = probe_kvm(guest, &qemu, PROBE_TIMEOUT)?;
            cache.entries.insert(key, state.clone());
            cache.store(probe_cache)?;
            state
        }
    };
    Ok(if state.usable {
        Ok(format!("KVM: {}", state.reason))
    } else {
        Err(state.reason)
    })
}

/// The cache key: the guest arch, the host kernel release and the QEMU
/// binary's identity (path, size, mtime), a cheap stand-in for its version.
fn probe_key(arch: Arch, qemu: &Path) -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let (size, mtime) = std::fs::metadata(qemu)
        .map(|m| {
            use std::os::unix::fs::MetadataExt;
            (m.size(), m.mtime())
        })
        .unwrap_or_default();
    format!(
        "{}|{}|{}|{size}|{mtime}",
        arch.ec2_name(),
        release.trim(),
        qemu.display()
    )
}

/// The probe cache file: one verdict per key (see [`probe_key`]).
#[derive(Debug, Default, Serialize, Deserialize)]
struct ProbeCacheState {
    entries: BTreeMap<String, KvmProbeState>,
}

impl ProbeCacheState {
    /// A missing or unreadable cache is an empty one: the probe just reruns.
    fn load(path: &Path) -> Self {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn store(&self, path: &Path) -> Result<(), MachineError> {
        let io = |source| MachineError::Io {
            path: path.to_path_buf(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        serde_json::to_writer_pretty(tmp.as_file_mut(), self)
            .map_err(|e| io(std::io::Error::other(e)))?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        Ok(())
    }
}

/// The x86_64 probe payload: a multiboot (a.out kludge) image loaded at
/// 1 MiB whose 32-bit code writes `K` to COM1 (0x3f8) and 0x10 to
/// `isa-debug-exit` at 0xf4, so QEMU exits with status (0x10 << 1) | 1 = 33.
pub fn x86_64_probe_payload() -> Vec<u8> {
    const MAGIC: u32 = 0x1BAD_B002;
    const FLAGS: u32 = 1 << 16; // load addresses given in the header
    const BASE: u32 = 0x0010_0000;
    let header = [
        MAGIC,
        FLAGS,
        0u32.wrapping_sub(MAGIC.wrapping_add(FLAGS)),
        BASE,      // header_addr
        BASE,      // load_addr
        0,         // load_end_addr: the whole file
        0,         // bss_end_addr: none
        BASE + 32, // entry: right after this header
    ];
    let mut image: Vec<u8> = header.iter().flat_map(|w| w.to_le_bytes()).collect();
    image.extend_from_slice(&[
        0x66, 0xBA, 0xF8, 0x03, // mov dx, 0x3f8
        0xB0, b'K', //             mov al, 'K'
        0xEE, //                   out dx, al
        0x66, 0xBA, 0xF4, 0x00, // mov dx, 0xf4
        0xB0, 0x10, //             mov al, 0x10
        0xEE, //                   out dx, al   (QEMU exits here)
        0xF4, //                   hlt
        0xEB, 0xFD, //             jmp hlt
    ]);
    image
}

/// The arm64 probe payload: a raw image for `-M virt -kernel` that writes
/// `K` to the PL011 at 0x0900_0000 and calls PSCI SYSTEM_OFF through `hvc`,
/// so QEMU exits with status 0.
pub fn arm64_probe_payload() -> Vec<u8> {
    [
        0xD2A1_2001u32, // movz x1, #0x0900, lsl #16
        0x5280_0962,    // movz w2, #'K'
        0x3900_0022,    // strb w2, [x1]
        0xD280_0100,    // movz x0, #0x0008
        0xF2B0_8000,    // movk x0, #0x8400, lsl #16   (PSCI SYSTEM_OFF)
        0xD400_0002,    // hvc #0
        0x1400_0000,    // b .
    ]
    .iter()
    .flat_map(|w| w.to_le_bytes())
    .collect()
}

/// The QEMU arguments of a probe run (without the payload path).
fn probe_args(arch: Arch, accel: Accel) -> Vec<&'static str> {
    let cpu = match (arch, accel) {
        // The CPU model real guests get under KVM: a host that cannot run it
        // (HOST.md: "failed to set MSR 0x10a") must fail the probe.
        (_, Accel::Kvm) => "host",
        (Arch::X86_64, Accel::Tcg) => "max",
        (Arch::Arm64, Accel::Tcg) => "max,pauth-impdef=on",
    };
    let mut args = vec![
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-m",
        "32",
        "-serial",
        "stdio",
        "-accel",
        accel.qemu_name(),
        "-cpu",
        cpu,
    ];
    match arch {
        Arch::X86_64 => args.extend([
            "-machine",
            "q35",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
        ]),
        Arch::Arm64 => args.extend(["-machine", "virt"]),
    }
    args
}

/// Runs one probe guest of `arch` under KVM with `qemu` and reports whether it
/// reached its known point within `timeout`. Uncached; [`choose_accel`] caches.
pub fn probe_kvm(
    arch: Arch,
    qemu: &Path,
    timeout: Duration,
) -> Result<KvmProbeState, MachineError> {
    run_probe(arch, Accel::Kvm, qemu, timeout)
}

/// Runs the probe guest under `accel`. Under TCG it checks the payload itself.
pub fn run_probe(
    arch: Arch,
    accel: Accel,
    qemu: &Path,
    timeout: Duration,
) -> Result<KvmProbeState, MachineError> {
    let (payload, expected_status) = match arch {
        Arch::X86_64 => (x86_64_probe_payload(), 33),
        Arch::Arm64 => (arm64_probe_payload(), 0),
    };
    let io = |path: PathBuf| move |source| MachineError::Io { path, source };
    let mut file = tempfile::Builder::new()
        .prefix("amirun-probe-")
        .tempfile()
        .map_err(io(std::env::temp_dir()))?;
    std::io::Write::write_all(file.as_file_mut(), &payload).map_err(io(file.path().into()))?;

    let start = Instant::now();
    let mut child = Command::new(qemu)
        .args(probe_args(arch, accel))
        .arg("-kernel")
        .arg(file.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io(qemu.to_path_buf()))?;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(io(qemu.to_path_buf()))? {
            break Some(status);
        }
        if start.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = start.elapsed();
    let elapsed_ms = elapsed.as_millis() as u64;
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    let what = match accel {
        Accel::Kvm => "KVM present but a probe guest",
        Accel::Tcg => "A TCG probe guest",
    };
    let reason = match status {
        None => format!(
            "{what} did not run within {}s (nested PVM?)",
            timeout.as_secs_f32()
        ),
        Some(s) if s.code() == Some(expected_status) && out.contains('K') => {
            return Ok(KvmProbeState {
                usable: true,
                reason: format!("a probe guest ran in {elapsed_ms} ms"),
                elapsed_ms,
            });
        }
        Some(s) => {
            let detail = err
                .lines()
                .find(|l| l.contains("error"))
                .or_else(|| err.lines().last())
                .unwrap_or("no output")
                .trim()
                .to_string();
            format!("{what} failed ({s}): {detail}")
        }
    };
    Ok(KvmProbeState {
        usable: false,
        reason,
        elapsed_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_code::ErrorCode;

    #[test]
    fn parse_requests() {
        assert_eq!("auto".parse::<AccelRequest>().unwrap(), AccelRequest::Auto);
        assert_eq!("kvm".parse::<AccelRequest>().unwrap(), AccelRequest::Kvm);
        assert_eq!("tcg".parse::<AccelRequest>().unwrap(), AccelRequest::Tcg);
        assert!("hvf".parse::<AccelRequest>().is_err());
    }

    #[test]
    fn x86_payload_has_a_valid_multiboot_header() {
        let p = x86_64_probe_payload();
        let w = |i: usize| u32::from_le_bytes(p[i * 4..i * 4 + 4].try_into().unwrap());
        assert_eq!(w(0), 0x1BAD_B002);
        assert_eq!(w(0).wrapping_add(w(1)).wrapping_add(w(2)), 0);
    }

    /// The payloads are real: under TCG each reaches its known point.
    #[test]
    fn probe_payloads_run_under_tcg() {
        for arch in [Arch::X86_64, Arch::Arm64] {
            let Ok(qemu) = find_qemu(arch) else {
                eprintln!("skipping {arch}: {} not installed", arch.qemu_binary());
                continue;
            };
            let state = run_probe(arch, Accel::Tcg, &qemu, Duration::from_secs(20)).unwrap();
            assert!(state.usable, "{arch}: {state:?}");
        }
    }

    fn fake_qemu(dir: &Path, script: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("fake-qemu");
        std::fs::write(&p, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn a_hanging_probe_is_killed_at_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let qemu = fake_qemu(dir.path(), "exec sleep 30");
        let t = Instant::now();
        let s = probe_kvm(Arch::X86_64, &qemu, Duration::from_millis(300)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(!s.usable);
        assert_eq!(
            s.reason,
            "KVM present but a probe guest did not run within 0.3s (nested PVM?)"
        );
    }

    #[test]
    fn a_failing_probe_reports_qemus_error() {
        let dir = tempfile::tempdir().unwrap();
        let qemu = fake_qemu(
            dir.path(),
            "echo 'qemu: error: failed to set MSR' >&2; exit 1",
        );
        let s = probe_kvm(Arch::X86_64, &qemu, Duration::from_secs(5)).unwrap();
        assert!(!s.usable);
        assert!(
            s.reason.ends_with("qemu: error: failed to set MSR"),
            "{}",
            s.reason
        );
        // Exiting with the right status but printing nothing is not success.
        let qemu = fake_qemu(dir.path(), "exit 33");
        assert!(
            !probe_kvm(Arch::X86_64, &qemu, Duration::from_secs(5))
                .unwrap()
                .usable
        );
    }

    #[test]
    fn tcg_request_needs_no_probe() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("accel-probe.json");
        let c = choose_accel(AccelRequest::Tcg, Arch::Arm64, &cache).unwrap();
        assert_eq!(c.accel, Accel::Tcg);
        assert!(!cache.exists());
    }

    #[test]
    fn foreign_arch_is_never_kvm() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("accel-probe.json");
        let foreign = match host_arch() {
            Some(Arch::Arm64) => Arch::X86_64,
            _ => Arch::Arm64,
        };
        let c = choose_accel(AccelRequest::Auto, foreign, &cache).unwrap();
        assert_eq!(c.accel, Accel::Tcg);
        assert!(c.reason.contains("host's own architecture"), "{}", c.reason);
        let e = choose_accel(AccelRequest::Kvm, foreign, &cache).unwrap_err();
        assert_eq!(e.code(), ErrorCode::UnsupportedOperation);
        assert!(e.to_string().ends_with("use --accel tcg"), "{e}");
    }

    /// On the host itself: Auto resolves to whatever the probe says, the
    /// verdict is cached, and asking for KVM agrees with Auto.
    #[test]
    fn auto_on_this_host_follows_the_probe_and_caches_it() {
        let Some(host) = host_arch() else { return };
        if find_qemu(host).is_err() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("accel-probe.json");
        let t = Instant::now();
        let first = choose_accel(AccelRequest::Auto, host, &cache).unwrap();
        let probe_time = t.elapsed();
        eprintln!(
            "auto -> {:?} in {probe_time:?}: {}",
            first.accel, first.reason
        );
        assert!(probe_time < PROBE_TIMEOUT + Duration::from_secs(2));
        let t = Instant::now();
        let second = choose_accel(AccelRequest::Auto, host, &cache).unwrap();
        assert_eq!(first, second);
        if cache.exists() {
            // The second call read the cache instead of probing again.
            assert!(
                t.elapsed() < Duration::from_millis(500),
                "{:?}",
                t.elapsed()
            );
        }
        match choose_accel(AccelRequest::Kvm, host, &cache) {
            Ok(c) => assert_eq!(c.accel, first.accel),
            Err(e) => {
                assert_eq!(first.accel, Accel::Tcg);
                assert_eq!(e.code(), ErrorCode::UnsupportedOperation);
                assert!(e.to_string().contains(&first.reason), "{e}");
            }
        }
    }
}
