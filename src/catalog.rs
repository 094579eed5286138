//! Catalog files: the list of AMIs amirun offers without a manual step.
//!
//! The built-in catalog (`images/catalog.json`, compiled into the binary)
//! lists upstream cloud images; more files join from `$AMIRUN_HOME/catalog.d/*.json`
//! (where `scripts/build-images.sh` writes locally built images) and from
//! `--catalog FILE`. The format is documented in `images/README.md`. Parsing
//! and validation are separate steps: [`CatalogFile::parse`] reads JSON with
//! unknown keys refused, [`CatalogFile::validate`] checks the meaning.

use crate::domain::{Architecture, BootMode, RootDeviceType};
use crate::error_code::ErrorCode;
use crate::store::SourceSpec;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// The catalog compiled into the binary.
pub const BUILTIN: &str = include_str!("../images/catalog.json");

/// Name under which the built-in catalog is reported in errors.
pub const BUILTIN_NAME: &str = "<built-in images/catalog.json>";

/// The regions catalog AMIs appear in unless an entry lists its own.
pub const DEFAULT_REGIONS: &[&str] = &[
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "ca-central-1",
    "sa-east-1",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "eu-central-1",
    "eu-north-1",
    "ap-south-1",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-southeast-1",
    "ap-southeast-2",
];

/// What went wrong reading a catalog file.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The file could not be read.
    #[error("Cannot read catalog file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid catalog JSON.
    #[error("Catalog file {path} is not valid: {source}")]
    Syntax {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    /// An entry makes no sense.
    #[error("Catalog file {path}, entry '{key}': {message}")]
    Invalid {
        path: String,
        key: String,
        message: String,
    },
}

impl CatalogError {
    /// EC2-style error code.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::InvalidManifest
    }
}

/// One catalog file, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogFile {
    /// Always 1 for now.
    pub format_version: u32,
    /// The AMIs it lists.
    pub images: Vec<CatalogEntry>,
}

/// One AMI of a catalog file.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    /// Stable unique key; per-region ids derive from it.
    pub key: String,
    /// The AMI's Name.
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// `amazon`, `debian`, `ubuntu`, … (the OwnerAlias).
    pub owner_alias: String,
    /// Owner account id; by default the alias's well-known account.
    #[serde(default)]
    pub owner_id: Option<String>,
    /// `x86_64`, `arm64` or `i386`.
    pub architecture: String,
    /// `uefi`, `legacy-bios` or `uefi-preferred`.
    #[serde(default)]
    pub boot_mode: Option<String>,
    /// `ebs` or `instance-store`.
    #[serde(default = "default_root_device_type")]
    pub root_device_type: String,
    #[serde(default = "default_root_device_name")]
    pub root_device_name: String,
    /// Regions it appears in (default [`DEFAULT_REGIONS`]).
    #[serde(default)]
    pub regions: Option<Vec<String>>,
    /// Pinned ids per region.
    #[serde(default)]
    pub image_ids: BTreeMap<String, String>,
    /// The root disk image.
    pub source: SourceSpec,
    /// Kernel for direct kernel boot.
    #[serde(default)]
    pub kernel: Option<SourceSpec>,
    /// Initial ramdisk for direct kernel boot.
    #[serde(default)]
    pub ramdisk: Option<SourceSpec>,
    #[serde(default)]
    pub kernel_cmdline: Option<String>,
    /// Root volume size in GiB (default: the image's virtual size, rounded up).
    #[serde(default)]
    pub min_size_gib: Option<u64>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

fn default_root_device_type() -> String {
    RootDeviceType::Ebs.to_string()
}

/// `value` as one of `all`, or the message naming `field` and the choices.
fn one_of<T: Copy + std::fmt::Display>(field: &str, value: &str, all: &[T]) -> Result<T, String> {
    all.iter()
        .copied()
        .find(|v| v.to_string() == value)
        .ok_or_else(|| {
            let names: Vec<String> = all.iter().map(T::to_string).collect();
            format!("{field} '{value}' is not one of {names:?}")
        })
}

impl CatalogEntry {
    /// The entry's architecture, boot mode and root device type, parsed
    /// (the catalog file keeps what was written; [`CatalogFile::validate`]
    /// refuses entries where this fails).
    pub fn kinds(&self) -> Result<(Architecture, Option<BootMode>, RootDeviceType), String> {
        Ok((
            one_of("architecture", &self.architecture, Architecture::ALL)?,
            (self.boot_mode.as_deref())
                .map(|b| one_of("boot_mode", b, BootMode::ALL))
                .transpose()?,
            one_of(
                "root_device_type",
                &self.root_device_type,
                RootDeviceType::ALL,
            )?,
        ))
    }
}

fn default_root_device_name() -> String {
    "/dev/xvda".into()
}

impl CatalogEntry {
    /// Regions this entry appears in.
    pub fn regions(&self) -> Vec<String> {
        match &self.regions {
            Some(r) => r.clone(),
            None => DEFAULT_REGIONS.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The owner account id.
    pub fn owner_id(&self) -> String {
        self.owner_id
            .clone()
            .unwrap_or_else(|| alias_account(&self.owner_alias))
    }
}

/// The account id behind a well-known owner alias (AWS's own where known),
/// else a stable id derived from the alias.
pub fn alias_account(alias: &str) -> String {
    match alias {
        "amazon" => "137112412989".into(),
        "debian" => "136693071363".into(),
        "ubuntu" | "canonical" => "099720109477".into(),
        "fedora" => "125523088429".into(),
        "alpine" => "538276064493".into(),
        other => {
            let d = Sha256::digest(other.as_bytes());
            let n = u64::from_be_bytes(d[..8].try_into().expect("8 bytes")) % 1_000_000_000_000;
            format!("{n:012}")
        }
    }
}

const FORMATS: &[&str] = &["qcow2", "raw", "vmdk", "vhd", "vhdx"];

impl CatalogFile {
    /// Parse catalog JSON; `path` names the file in errors.
    pub fn parse(path: &str, text: &str) -> Result<CatalogFile, CatalogError> {
        serde_json::from_str(text).map_err(|source| CatalogError::Syntax {
            path: path.to_string(),
            source,
        })
    }

    /// Check every entry's meaning: known enum values, usable URLs, digests.
    pub fn validate(&self, path: &str) -> Result<(), CatalogError> {
        let invalid = |key: &str, message: String| CatalogError::Invalid {
            path: path.to_string(),
            key: key.to_string(),
            message,
        };
        if self.format_version != 1 {
            return Err(invalid(
                "-",
                format!(
                    "format_version {} is not supported (1 is)",
                    self.format_version
                ),
            ));
        }
        let mut keys = HashSet::new();
        let mut pinned: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
        for e in &self.images {
            if e.key.is_empty() || !keys.insert(e.key.as_str()) {
                return Err(invalid(&e.key, "keys must be non-empty and unique".into()));
            }
            e.kinds().map_err(|m| invalid(&e.key, m))?;
            for (what, src) in [
                ("source", Some(&e.source)),
                ("kernel", e.kernel.as_ref()),
                ("ramdisk", e.ramdisk.as_ref()),
            ] {
                if let Some(src) = src {
                    validate_source(src).map_err(|m| invalid(&e.key, format!("{what}: {m}")))?;
                }
            }
            for (region, id) in &e.image_ids {
                if !crate::ids::is_well_formed(crate::ids::IdKind::Image, id) {
                    return Err(invalid(
                        &e.key,
                        format!("pinned id '{id}' for {region} is not an AMI id"),
                    ));
                }
                // The store keys AMIs by id alone: one id is one AMI in one region.
                if let Some((other_key, other_region)) =
                    pinned.insert(id.as_str(), (e.key.as_str(), region.as_str()))
                {
                    return Err(invalid(
                        &e.key,
                        duplicate_pin(id, other_key, other_region, &e.key, region),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Why a pinned AMI id cannot be used twice, and what to do.
fn duplicate_pin(id: &str, key_a: &str, region_a: &str, key_b: &str, region_b: &str) -> String {
    format!(
        "AMI id '{id}' is pinned for {region_a} (entry '{key_a}') and again for {region_b} (entry '{key_b}'); an AMI id names one image in one region, so give each region its own id or drop the pin"
    )
}

/// Check a source spec: a supported URL scheme, a well-formed digest, a known format.
pub fn validate_source(src: &SourceSpec) -> Result<(), String> {
    let url = url::Url::parse(&src.url).map_err(|e| format!("url '{}': {e}", src.url))?;
    if !matches!(url.scheme(), "file" | "http" | "https") {
        return Err(format!(
            "url '{}': scheme '{}' is not file, http or https",
            src.url,
            url.scheme()
        ));
    }
    if let Some(d) = &src.sha256 {
        if d.len() != 64 || !d.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("sha256 '{d}' is not 64 hex digits"));
        }
    }
    if let Some(c) = &src.checksum_url {
        url::Url::parse(c).map_err(|e| format!("checksum_url '{c}': {e}"))?;
    }
    if let Some(f) = &src.format {
        if !FORMATS.contains(&f.as_str()) {
            return Err(format!("format '{f}' is not one of {FORMATS:?}"));
        }
    }
    Ok(())
}

/// All catalog entries in effect, with the file each came from.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Entries in file order; a later file's entry replaces an earlier one with the same key.
    pub entries: Vec<(String, CatalogEntry)>,
    /// Hash of every file's name and content: changes when any catalog changes.
    pub fingerprint: String,
    /// Files that could not be read or are not valid, one message each
    /// (naming the file, with the cause): their entries are left out, and
    /// nothing else is held up by them.
    pub skipped: Vec<String>,
}

/// An error and its causes on one line.
fn with_causes(e: &CatalogError) -> String {
    let mut line = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !line.contains(&s_text) {
            line.push_str(&format!(": {s_text}"));
        }
        source = s.source();
    }
    line
}

/// Load the built-in catalog, then every `*.json` in `dir` (sorted), then
/// `extra` files. A file in `dir` that cannot be read or is not valid is
/// skipped whole (listed in [`Catalog::skipped`]): one bad file never blocks
/// the others, nor anything that does not need its images. An `extra` file
/// (named on the command line for this command) that is broken is an error.
pub fn load(dir: &Path, extra: &[PathBuf]) -> Result<Catalog, CatalogError> {
    let mut files: Vec<(String, String)> = vec![(BUILTIN_NAME.to_string(), BUILTIN.to_string())];
    let mut listed: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect(),
        Err(_) => Vec::new(),
    };
    listed.sort();
    let mut skipped = Vec::new();
    for p in listed {
        match std::fs::read_to_string(&p) {
            Ok(text) => files.push((p.display().to_string(), text)),
            Err(source) => skipped.push(with_causes(&CatalogError::Read {
                path: p.display().to_string(),
                source,
            })),
        }
    }
    // Files named on this command line (`--catalog FILE`) are the caller's
    // request: one that is broken is an error, not a warning.
    for p in extra {
        let text = std::fs::read_to_string(p).map_err(|source| CatalogError::Read {
            path: p.display().to_string(),
            source,
        })?;
        let name = p.display().to_string();
        CatalogFile::parse(&name, &text)?.validate(&name)?;
        files.push((name, text));
    }
    let mut hasher = Sha256::new();
    for e in &skipped {
        hasher.update(e.as_bytes());
        hasher.update([0]);
    }
    let mut by_key: BTreeMap<String, usize> = BTreeMap::new();
    let mut entries: Vec<(String, CatalogEntry)> = Vec::new();
    for (name, text) in &files {
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(text.as_bytes());
        hasher.update([0]);
        let file = match CatalogFile::parse(name, text).and_then(|f| {
            f.validate(name)?;
            check_pins_against(name, &f, &entries)?;
            Ok(f)
        }) {
            Ok(f) => f,
            Err(e) if extra.iter().any(|p| p.display().to_string() == *name) => return Err(e),
            Err(e) => {
                skipped.push(with_causes(&e));
                continue;
            }
        };
        for e in file.images {
            match by_key.get(&e.key) {
                Some(&i) => entries[i] = (name.clone(), e),
                None => {
                    by_key.insert(e.key.clone(), entries.len());
                    entries.push((name.clone(), e));
                }
            }
        }
    }
    Ok(Catalog {
        entries,
        fingerprint: hex::encode(hasher.finalize()),
        skipped,
    })
}

/// A file's pinned AMI ids must not be pinned by another entry (other key)
/// of the files loaded before it.
fn check_pins_against(
    name: &str,
    file: &CatalogFile,
    entries: &[(String, CatalogEntry)],
) -> Result<(), CatalogError> {
    for e in &file.images {
        for (region, id) in &e.image_ids {
            for (other_file, other) in entries.iter().filter(|(_, o)| o.key != e.key) {
                if let Some((other_region, _)) = other.image_ids.iter().find(|(_, i)| *i == id) {
                    return Err(CatalogError::Invalid {
                        path: name.to_string(),
                        key: e.key.clone(),
                        message: format!(
                            "{} (in {other_file})",
                            duplicate_pin(id, &other.key, other_region, &e.key, region)
                        ),
                    });
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_is_valid() {
        let f = CatalogFile::parse(BUILTIN_NAME, BUILTIN).unwrap();
        f.validate(BUILTIN_NAME).unwrap();
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let bad = r#"{"format_version":1,"images":[{"key":"a","name":"a","owner_alias":"x","architecture":"x86_64","source":{"url":"file:///x"},"colour":"red"}]}"#;
        let e = CatalogFile::parse("f.json", bad).unwrap_err();
        assert!(e.to_string().contains("f.json"), "{e}");
        let bad = r#"{"format_version":1,"images":[{"key":"a","name":"a","owner_alias":"x","architecture":"sparc","source":{"url":"file:///x"}}]}"#;
        let f = CatalogFile::parse("f.json", bad).unwrap();
        let e = f.validate("f.json").unwrap_err();
        assert!(e.to_string().contains("sparc"), "{e}");
        let bad = r#"{"format_version":1,"images":[{"key":"a","name":"a","owner_alias":"x","architecture":"arm64","source":{"url":"ftp://h/x"}}]}"#;
        let f = CatalogFile::parse("f.json", bad).unwrap();
        assert!(f
            .validate("f.json")
            .unwrap_err()
            .to_string()
            .contains("ftp"));
    }

    #[test]
    fn later_files_override_by_key_and_change_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let a = load(dir.path(), &[]).unwrap();
        std::fs::write(
            dir.path().join("local.json"),
            r#"{"format_version":1,"images":[{"key":"k","name":"local","owner_alias":"amirun","architecture":"x86_64","source":{"url":"file:///tmp/x.qcow2"}}]}"#,
        )
        .unwrap();
        let b = load(dir.path(), &[]).unwrap();
        assert_ne!(a.fingerprint, b.fingerprint);
        assert_eq!(b.entries.last().unwrap().1.name, "local");
    }

    #[test]
    fn one_ami_id_pinned_twice_is_refused() {
        let file = |pins: &str| {
            format!(
                r#"{{"format_version":1,"images":[{{"key":"k","name":"n","owner_alias":"amirun","architecture":"x86_64","source":{{"url":"file:///tmp/x.qcow2"}},"image_ids":{{{pins}}}}}]}}"#
            )
        };
        let twice =
            file(r#""us-east-1":"ami-0123456789abcdef0","eu-west-1":"ami-0123456789abcdef0""#);
        let e = CatalogFile::parse("f.json", &twice)
            .unwrap()
            .validate("f.json")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("f.json") && e.contains("ami-0123456789abcdef0"),
            "{e}"
        );
        let once =
            file(r#""us-east-1":"ami-0123456789abcdef0","eu-west-1":"ami-0123456789abcdef1""#);
        CatalogFile::parse("f.json", &once)
            .unwrap()
            .validate("f.json")
            .unwrap();
    }

    #[test]
    fn a_broken_file_is_skipped_and_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("good.json"),
            r#"{"format_version":1,"images":[{"key":"g","name":"good","owner_alias":"amirun","architecture":"x86_64","source":{"url":"file:///tmp/x.qcow2"}}]}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("broken.json"), "{ not json").unwrap();
        let c = load(dir.path(), &[]).unwrap();
        assert!(c.entries.iter().any(|(_, e)| e.name == "good"));
        let why = &c.skipped;
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(why[0].contains("broken.json"), "{why:?}");
        // Named for this command: an error.
        let e = load(dir.path(), &[dir.path().join("broken.json")]).unwrap_err();
        assert!(e.to_string().contains("broken.json"), "{e}");
    }

    #[test]
    fn alias_accounts_are_stable_twelve_digits() {
        assert_eq!(alias_account("amazon"), "137112412989");
        let a = alias_account("amirun");
        assert_eq!(a.len(), 12);
        assert_eq!(a, alias_account("amirun"));
    }
}
