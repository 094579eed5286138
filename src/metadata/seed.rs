//! The NoCloud seed: a FAT volume labelled `cidata` holding `meta-data`,
//! `user-data` and optionally `network-config`.
//!
//! cloud-init's NoCloud datasource finds a vfat or iso9660 filesystem whose
//! label is `cidata` (its docs: "cidata or CIDATA"; releases before 17.x
//! matched only `cidata`), so the label is written lower-case, as
//! `cloud-localds` does. The image is made in pure Rust with `fatfs`, in a
//! temporary file beside the target that is renamed into place, so a guest
//! never sees half a seed. File times are the FAT epoch (1980-01-01), so the
//! same spec gives the same bytes.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use super::MetadataError;

/// The volume label, padded to FAT's 11 bytes.
pub const SEED_LABEL: [u8; 11] = *b"cidata     ";

/// Smallest seed image; FAT12 with room for the three files.
const MIN_IMAGE_BYTES: u64 = 1 << 20;

/// What goes on the seed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeedSpec {
    /// `instance-id` in `meta-data`; cloud-init runs its per-instance steps
    /// again when this changes.
    pub instance_id: String,
    /// `local-hostname` in `meta-data` (EC2 style: `ip-169-254-0-15`).
    pub hostname: String,
    /// `user-data`, written byte for byte; `None` gives an empty file (the
    /// file itself must exist for NoCloud).
    pub user_data: Option<Vec<u8>>,
    /// OpenSSH public keys (`public-keys` in `meta-data`), one line each.
    pub public_keys: Vec<String>,
    /// `network-config` (cloud-init network config v1 or v2 YAML), if any.
    pub network_config: Option<String>,
}

/// A YAML scalar: a JSON string is a valid YAML double-quoted scalar, and
/// quoting every value keeps a key like `no` or `1e3` a string.
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string always serialises")
}

/// The `meta-data` document for `spec`.
pub fn meta_data(spec: &SeedSpec) -> String {
    let mut out = format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        yaml_str(&spec.instance_id),
        yaml_str(&spec.hostname)
    );
    if !spec.public_keys.is_empty() {
        out.push_str("public-keys:\n");
        for key in &spec.public_keys {
            out.push_str(&format!("  - {}\n", yaml_str(key)));
        }
    }
    out
}

fn validate(spec: &SeedSpec) -> Result<(), MetadataError> {
    let bad = |field: &'static str, reason: &str| MetadataError::InvalidSeed {
        instance_id: spec.instance_id.clone(),
        field,
        reason: reason.to_string(),
    };
    if spec.instance_id.is_empty() || spec.instance_id.chars().any(char::is_control) {
        return Err(bad("instance_id", "empty or holds a control character"));
    }
    let host_ok = !spec.hostname.is_empty()
        && spec.hostname.len() <= 253
        && spec
            .hostname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !host_ok {
        return Err(bad(
            "hostname",
            "not a host name (letters, digits, '-', '.')",
        ));
    }
    for key in &spec.public_keys {
        if key.trim().is_empty() || key.contains(['\n', '\r']) {
            return Err(bad("public_keys", "a key is empty or spans lines"));
        }
    }
    Ok(())
}

/// Writes the NoCloud seed for `spec` to `path` (through a temporary file
/// beside it, then rename; an existing seed is replaced whole).
pub fn build_seed(path: &Path, spec: &SeedSpec) -> Result<(), MetadataError> {
    validate(spec)?;
    let io = |source| MetadataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = meta_data(spec);
    let user = spec.user_data.as_deref().unwrap_or_default();
    let mut files: Vec<(&str, &[u8])> = vec![("meta-data", meta.as_bytes()), ("user-data", user)];
    if let Some(net) = &spec.network_config {
        files.push(("network-config", net.as_bytes()));
    }

    // Room for the files plus FAT overhead, rounded up to whole MiB.
    let content: u64 = files.iter().map(|(_, b)| b.len() as u64).sum();
    let size = (content + content / 8 + (512 << 10)).max(MIN_IMAGE_BYTES);
    let size = size.div_ceil(1 << 20) << 20;

    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".seed-")
        .tempfile_in(dir)
        .map_err(io)?;
    {
        let file = tmp.as_file_mut();
        file.set_len(size).map_err(io)?;
        fatfs::format_volume(
            &mut *file,
            fatfs::FormatVolumeOptions::new().volume_label(SEED_LABEL),
        )
        .map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        let fs = fatfs::FileSystem::new(&mut *file, fatfs::FsOptions::new()).map_err(io)?;
        {
            let root = fs.root_dir();
            for (name, bytes) in &files {
                let mut f = root.create_file(name).map_err(io)?;
                f.truncate().map_err(io)?;
                f.write_all(bytes).map_err(io)?;
                f.flush().map_err(io)?;
            }
        }
        fs.unmount().map_err(io)?;
    }
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_code::ErrorCode;
    use std::io::Read;

    fn spec() -> SeedSpec {
        SeedSpec {
            instance_id: "i-0123456789abcdef0".into(),
            hostname: "ip-169-254-0-15".into(),
            user_data: Some(b"#!/bin/sh\necho hello \xff\n".to_vec()),
            public_keys: vec!["ssh-ed25519 AAAAC3Nza me@host".into()],
            network_config: Some("version: 2\nethernets: {}\n".into()),
        }
    }

    fn read_back(path: &Path) -> (String, Vec<(String, Vec<u8>)>) {
        let file = std::fs::File::open(path).unwrap();
        let fs = fatfs::FileSystem::new(file, fatfs::FsOptions::new()).unwrap();
        let label = fs.volume_label();
        let mut files = Vec::new();
        for entry in fs.root_dir().iter() {
            let entry = entry.unwrap();
            let mut bytes = Vec::new();
            entry.to_file().read_to_end(&mut bytes).unwrap();
            files.push((entry.file_name(), bytes));
        }
        files.sort();
        (label, files)
    }

    #[test]
    fn seed_holds_exactly_the_files_given() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        build_seed(&path, &spec()).unwrap();
        let (label, files) = read_back(&path);
        assert_eq!(label, "cidata");
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["meta-data", "network-config", "user-data"]);
        assert_eq!(
            String::from_utf8(files[0].1.clone()).unwrap(),
            "instance-id: \"i-0123456789abcdef0\"\nlocal-hostname: \"ip-169-254-0-15\"\npublic-keys:\n  - \"ssh-ed25519 AAAAC3Nza me@host\"\n"
        );
        assert_eq!(files[1].1, b"version: 2\nethernets: {}\n");
        assert_eq!(files[2].1, b"#!/bin/sh\necho hello \xff\n");
        // Nothing left behind but the seed.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn no_user_data_gives_an_empty_file_and_same_spec_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec();
        s.user_data = None;
        s.network_config = None;
        s.public_keys.clear();
        let a = dir.path().join("a.img");
        let b = dir.path().join("b.img");
        build_seed(&a, &s).unwrap();
        build_seed(&b, &s).unwrap();
        let (_, files) = read_back(&a);
        assert_eq!(files.len(), 2);
        assert_eq!(files[1], ("user-data".to_string(), Vec::new()));
        assert!(!String::from_utf8_lossy(&files[0].1).contains("public-keys"));
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    }

    #[test]
    fn large_user_data_fits_and_replaces_the_old_seed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        build_seed(&path, &spec()).unwrap();
        let mut s = spec();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        s.user_data = Some(big.clone());
        build_seed(&path, &s).unwrap();
        let (_, files) = read_back(&path);
        assert_eq!(files[2].1, big);
    }

    #[test]
    fn refusals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        let mut s = spec();
        s.hostname = "bad host".into();
        let e = build_seed(&path, &s).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidParameterValue);
        assert!(e.to_string().contains("hostname"), "{e}");
        let mut s = spec();
        s.public_keys = vec!["ssh-rsa AAA\ninjected: true".into()];
        assert!(build_seed(&path, &s).is_err());
        assert!(!path.exists());
    }

    /// What the guest's tools see: blkid reports the label cloud-init
    /// searches for, and fsck.fat finds the filesystem clean (when installed).
    #[test]
    fn host_tools_accept_the_seed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        build_seed(&path, &spec()).unwrap();
        let run = |prog: &str, args: &[&str]| {
            std::process::Command::new(prog)
                .args(args)
                .arg(&path)
                .output()
                .ok()
        };
        if let Some(out) = run("blkid", &["-o", "export"]) {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("LABEL=cidata"), "{text}");
            assert!(text.contains("TYPE=vfat"), "{text}");
        }
        if let Some(out) = run("fsck.fat", &["-n"]) {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
}
