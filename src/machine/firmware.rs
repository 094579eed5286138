//! Finding UEFI firmware through QEMU's firmware descriptors.
//!
//! Distributions describe their firmware builds in JSON files
//! (`/usr/share/qemu/firmware/*.json`, QEMU's `docs/interop/firmware.json`):
//! which file is the code, which is the variable-store template, for which
//! architecture and machine, with which features. Reading those instead of
//! hard-coding `/usr/share/OVMF/...` keeps amirun working when a distribution
//! renames its files. We pick plain firmware: no Secure Boot, no enrolled keys
//! (AMIs boot with Secure Boot off unless they ask otherwise).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Arch, MachineError};

/// Where QEMU looks for descriptors, highest priority first. A file in an
/// earlier directory hides one of the same name in a later one.
pub const FIRMWARE_DESCRIPTOR_DIRS: &[&str] = &["/etc/qemu/firmware", "/usr/share/qemu/firmware"];

/// Features that rule a descriptor out: we want firmware that boots any AMI.
const UNWANTED_FEATURES: &[&str] = &["secure-boot", "enrolled-keys", "requires-smm", "amd-sev-es"];

/// One firmware descriptor file (only the fields amirun reads).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct FirmwareDescriptorConfig {
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// `uefi`, `bios`, ...
    #[serde(default)]
    pub interface_types: Vec<String>,
    /// How the firmware is mapped into the guest.
    pub mapping: FirmwareMappingConfig,
    /// Architectures and machine-type globs it supports.
    #[serde(default)]
    pub targets: Vec<FirmwareTargetConfig>,
    /// `secure-boot`, `enrolled-keys`, `requires-smm`, ...
    #[serde(default)]
    pub features: Vec<String>,
}

/// The `mapping` object of a descriptor.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct FirmwareMappingConfig {
    /// `flash`, `memory` or `kernel`; amirun uses `flash` only.
    pub device: String,
    /// The code image (for `flash`).
    pub executable: Option<FirmwareFileConfig>,
    /// The variable-store template (for `flash`).
    pub nvram_template: Option<FirmwareFileConfig>,
}

/// A file named by a descriptor.
#[derive(Debug, Clone, Deserialize)]
pub struct FirmwareFileConfig {
    /// Absolute path.
    pub filename: PathBuf,
    /// `raw` or `qcow2`.
    #[serde(default = "raw")]
    pub format: String,
}

fn raw() -> String {
    "raw".to_string()
}

/// One element of `targets`.
#[derive(Debug, Clone, Deserialize)]
pub struct FirmwareTargetConfig {
    /// QEMU's architecture name (`x86_64`, `aarch64`).
    pub architecture: String,
    /// Machine-type globs (`pc-q35-*`, `virt-*`).
    #[serde(default)]
    pub machines: Vec<String>,
}

/// The firmware chosen for an architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UefiFirmware {
    /// Descriptor it came from.
    pub descriptor: PathBuf,
    /// Read-only code image, mapped as pflash unit 0.
    pub code: PathBuf,
    /// Variable-store template; each instance gets its own copy (pflash unit 1).
    pub vars_template: PathBuf,
}

/// Matches `name` against a glob whose only wildcard is `*`.
fn glob_match(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((prefix, rest)) => {
            let Some(tail) = name.strip_prefix(prefix) else {
                return false;
            };
            if rest.is_empty() {
                return true;
            }
            (0..=tail.len()).any(|i| tail.is_char_boundary(i) && glob_match(rest, &tail[i..]))
        }
    }
}

/// The versioned machine name QEMU resolves our alias to; descriptor globs
/// (`pc-q35-*`, `virt-*`) are written against such names.
fn versioned_machine(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "pc-q35-7.2",
        Arch::Arm64 => "virt-7.2",
    }
}

fn acceptable(desc: &FirmwareDescriptorConfig, arch: Arch) -> Option<(PathBuf, PathBuf)> {
    if !desc.interface_types.iter().any(|t| t == "uefi") || desc.mapping.device != "flash" {
        return None;
    }
    if desc
        .features
        .iter()
        .any(|f| UNWANTED_FEATURES.contains(&f.as_str()))
    {
        return None;
    }
    let machine = versioned_machine(arch);
    let targets = desc.targets.iter().any(|t| {
        t.architecture == arch.qemu_name() && t.machines.iter().any(|m| glob_match(m, machine))
    });
    if !targets {
        return None;
    }
    let code = desc.mapping.executable.as_ref()?;
    let vars = desc.mapping.nvram_template.as_ref()?;
    // amirun maps both as raw block nodes; qcow2 firmware would need a
    // different driver and is not what Debian ships.
    if code.format != "raw" || vars.format != "raw" {
        return None;
    }
    if !code.filename.is_file() || !vars.filename.is_file() {
        return None;
    }
    Some((code.filename.clone(), vars.filename.clone()))
}

/// Finds plain (no Secure Boot) UEFI firmware for `arch` in the descriptor
/// directories `dirs`, highest priority first (normally
/// [`FIRMWARE_DESCRIPTOR_DIRS`]; tests pass their own).
///
/// Descriptors are considered in file-name order, as QEMU and libvirt do
/// (`50-...` before `60-...`); one naming files that do not exist is skipped.
/// With nothing usable, the error names the Debian package to install.
pub fn find_uefi_firmware(arch: Arch, dirs: &[PathBuf]) -> Result<UefiFirmware, MachineError> {
    let mut by_name: BTreeMap<String, PathBuf> = BTreeMap::new();
    for dir in dirs {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(MachineError::Io {
                    path: dir.clone(),
                    source,
                })
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".json") {
                by_name.entry(name).or_insert_with(|| entry.path());
            }
        }
    }
    for path in by_name.values() {
        let desc = read_descriptor(path)?;
        if let Some((code, vars_template)) = acceptable(&desc, arch) {
            return Ok(UefiFirmware {
                descriptor: path.clone(),
                code,
                vars_template,
            });
        }
    }
    Err(MachineError::FirmwareMissing {
        arch,
        dirs: dirs.to_vec(),
        package: arch.firmware_package(),
    })
}

/// [`find_uefi_firmware`] in QEMU's standard descriptor directories.
pub fn find_system_uefi_firmware(arch: Arch) -> Result<UefiFirmware, MachineError> {
    let dirs: Vec<PathBuf> = FIRMWARE_DESCRIPTOR_DIRS.iter().map(PathBuf::from).collect();
    find_uefi_firmware(arch, &dirs)
}

fn read_descriptor(path: &Path) -> Result<FirmwareDescriptorConfig, MachineError> {
    let text = std::fs::read(path).map_err(|source| MachineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|source| MachineError::FirmwareDescriptor {
        path: path.to_path_buf(),
        source,
    })
}

/// Gives an instance its own UEFI variable store: copies the template to
/// `dest` (through a temp file beside it, then rename) unless `dest` already
/// exists, because variables (boot entries) persist across stop and start.
pub fn install_uefi_vars(firmware: &UefiFirmware, dest: &Path) -> Result<(), MachineError> {
    if dest.exists() {
        return Ok(());
    }
    let io = |source| MachineError::Io {
        path: dest.to_path_buf(),
        source,
    };
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    let mut src =
        std::fs::File::open(&firmware.vars_template).map_err(|source| MachineError::Io {
            path: firmware.vars_template.clone(),
            source,
        })?;
    std::io::copy(&mut src, tmp.as_file_mut()).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(dest).map_err(|e| io(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_code::ErrorCode;

    fn descriptor(arch: &str, machines: &str, code: &Path, vars: &Path, features: &str) -> String {
        format!(
            r#"{{"description":"t","interface-types":["uefi"],
               "mapping":{{"device":"flash",
                 "executable":{{"filename":"{}","format":"raw"}},
                 "nvram-template":{{"filename":"{}","format":"raw"}}}},
               "targets":[{{"architecture":"{arch}","machines":["{machines}"]}}],
               "features":[{features}],"tags":[]}}"#,
            code.display(),
            vars.display()
        )
    }

    #[test]
    fn globs() {
        assert!(glob_match("pc-q35-*", "pc-q35-7.2"));
        assert!(!glob_match("pc-i440fx-*", "pc-q35-7.2"));
        assert!(glob_match("virt-*", "virt-7.2"));
        assert!(glob_match("*", "virt-7.2"));
        assert!(glob_match("pc-*-7.2", "pc-q35-7.2"));
        assert!(!glob_match("virt", "virt-7.2"));
    }

    #[test]
    fn picks_the_plain_descriptor_and_skips_secure_boot() {
        let dir = tempfile::tempdir().unwrap();
        let f = |n: &str| {
            let p = dir.path().join(n);
            std::fs::write(&p, b"fw").unwrap();
            p
        };
        let (sc, sv, pc, pv) = (f("sec.fd"), f("sv.fd"), f("code.fd"), f("vars.fd"));
        let d = dir.path().join("d");
        std::fs::create_dir(&d).unwrap();
        let secure = descriptor("x86_64", "pc-q35-*", &sc, &sv, r#""secure-boot""#);
        std::fs::write(d.join("50-secure.json"), secure).unwrap();
        let plain = descriptor("x86_64", "pc-q35-*", &pc, &pv, r#""acpi-s3""#);
        std::fs::write(d.join("60-plain.json"), plain).unwrap();
        let arm = descriptor("aarch64", "virt-*", &pc, &pv, "");
        std::fs::write(d.join("70-arm.json"), arm).unwrap();

        let fw = find_uefi_firmware(Arch::X86_64, std::slice::from_ref(&d)).unwrap();
        assert_eq!(fw.code, pc);
        assert_eq!(fw.vars_template, pv);
        assert_eq!(fw.descriptor, d.join("60-plain.json"));
        let fw = find_uefi_firmware(Arch::Arm64, std::slice::from_ref(&d)).unwrap();
        assert_eq!(fw.descriptor, d.join("70-arm.json"));
    }

    #[test]
    fn missing_firmware_names_the_package() {
        let dir = tempfile::tempdir().unwrap();
        // A descriptor whose files do not exist does not count.
        let gone = dir.path().join("gone.fd");
        std::fs::write(
            dir.path().join("60-x.json"),
            descriptor("x86_64", "pc-q35-*", &gone, &gone, ""),
        )
        .unwrap();
        let err = find_uefi_firmware(Arch::X86_64, &[dir.path().to_path_buf()]).unwrap_err();
        assert!(
            err.to_string().contains("install the Debian package ovmf"),
            "{err}"
        );
        assert_eq!(err.code(), ErrorCode::MissingDependency);
        let err = find_uefi_firmware(Arch::Arm64, &[dir.path().join("nope")]).unwrap_err();
        assert!(err.to_string().contains("qemu-efi-aarch64"), "{err}");
    }

    #[test]
    fn system_descriptors_when_installed() {
        // On a host with ovmf / qemu-efi-aarch64 (HOST.md) the real
        // descriptors resolve to the non-secure builds.
        if let Ok(fw) = find_system_uefi_firmware(Arch::X86_64) {
            assert!(!fw.code.to_string_lossy().contains("secboot"), "{fw:?}");
        }
        if let Ok(fw) = find_system_uefi_firmware(Arch::Arm64) {
            assert!(
                !fw.vars_template.to_string_lossy().contains(".ms."),
                "{fw:?}"
            );
            // virt maps each pflash bank as 64 MiB; AAVMF images are that size.
            assert_eq!(std::fs::metadata(&fw.code).unwrap().len(), 64 << 20);
        }
    }

    #[test]
    fn vars_are_copied_once() {
        let dir = tempfile::tempdir().unwrap();
        let tpl = dir.path().join("tpl.fd");
        std::fs::write(&tpl, b"template").unwrap();
        let fw = UefiFirmware {
            descriptor: dir.path().join("x.json"),
            code: dir.path().join("code.fd"),
            vars_template: tpl,
        };
        let dest = dir.path().join("i-1/vars.fd");
        install_uefi_vars(&fw, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"template");
        std::fs::write(&dest, b"changed by guest").unwrap();
        install_uefi_vars(&fw, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"changed by guest");
    }
}
