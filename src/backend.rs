//! Where instances run and where image data lives, when that is not this
//! machine: the seam between amirun's EC2 service and an engine that places
//! VMs on other hosts (OpenStack today, [`openstack`]).
//!
//! A region is bound to a backend by a file in `$AMIRUN_HOME/regions.d/`
//! ([`RegionBindings`], read once when the service opens); a region without
//! a binding runs on the local QEMU engine, which is not behind this trait
//! (the service dispatches at the top of each instance operation, see
//! `service::instances::remote`).
//!
//! A backend never speaks EC2: it takes disk files, sizes, zones and opaque
//! group names, and reports servers with a neutral [`ServerPower`]. The
//! service keeps EC2's ids, states, rules and errors above it, and maps its
//! ids to the backend's in the store.

pub mod openstack;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// What can go wrong in a backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A region binding file is unreadable or wrong.
    #[error("Region binding {path}: {reason}")]
    Binding { path: String, reason: String },
    /// The cloud refused the request (it made nothing).
    #[error("{backend} refused the request")]
    Refused {
        backend: String,
        #[source]
        source: Box<crate::openstack::OpenStackError>,
    },
    /// The cloud could not be asked, or answered unexpectedly: what it
    /// made, if anything, is found again by its group name.
    #[error("{backend} failed")]
    Failed {
        backend: String,
        #[source]
        source: Box<crate::openstack::OpenStackError>,
    },
}

impl BackendError {
    /// True when the backend surely made nothing (it answered with a refusal).
    pub fn is_refusal(&self) -> bool {
        matches!(self, BackendError::Refused { .. })
    }
}

/// Result of a backend call.
pub type Result<T> = std::result::Result<T, BackendError>;

/// Which firmware a guest boots with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    Uefi,
}

/// A disk image to publish.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    /// Unique name the image is found by again (after a crash, too).
    pub key: String,
    /// A standalone qcow2 file (no backing file).
    pub file: PathBuf,
    /// `x86_64` or `aarch64`.
    pub architecture: String,
    pub firmware: Firmware,
}

/// An image a backend holds under a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedImage {
    pub id: String,
    /// Data uploaded and usable.
    pub ready: bool,
}

/// The size of a machine (an EC2 instance type, by name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineSize {
    /// A name for operators (the instance type's).
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Root disk.
    pub disk_gib: u64,
}

/// What to launch: `count` servers of one image, all tagged with `group`.
#[derive(Clone, Debug)]
pub struct LaunchSpec {
    /// Finds the servers again, after a crash too; each server also
    /// carries its index in the group (0..count).
    pub group: String,
    pub image_id: String,
    pub size: MachineSize,
    pub count: u32,
    pub user_data: Option<Vec<u8>>,
    /// An ssh public key to install, under this name in the backend.
    pub key: Option<(String, String)>,
    /// The backend's zone (its default when None).
    pub zone: Option<String>,
}

/// A server's power state in neutral terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerPower {
    Building,
    Running,
    PoweringOff,
    Stopped,
    PoweringOn,
    Rebooting,
    Deleting,
    Deleted,
    /// Broken, with the backend's reason.
    Failed(String),
}

/// What a backend knows of one server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerFacts {
    pub id: String,
    /// The launch group and index within it.
    pub group: String,
    pub index: Option<u32>,
    pub power: ServerPower,
    /// The compute host, when the backend tells.
    pub host: Option<String>,
    pub zone: Option<String>,
}

/// What to do to a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerAction {
    Stop,
    Start,
    Reboot,
    Delete,
}

/// The operations the service needs from where instances run and where
/// image data lives.
pub trait Backend: Send + Sync {
    /// Who this is, for messages (`OpenStack cloud amirun-aio`).
    fn name(&self) -> String;
    /// Images held under `key` (normally one).
    fn find_images(&self, key: &str) -> Result<Vec<PublishedImage>>;
    /// Upload an image; returns its id once usable.
    fn publish_image(&self, spec: &ImageSpec) -> Result<String>;
    /// Remove an image.
    fn delete_image(&self, id: &str) -> Result<()>;
    /// Launch servers (the call returns once the backend took them).
    fn launch(&self, spec: &LaunchSpec) -> Result<()>;
    /// Every server amirun launched there (any group).
    fn servers(&self) -> Result<Vec<ServerFacts>>;
    /// Power a server off or on, reboot or delete it.
    fn power(&self, server_id: &str, action: PowerAction) -> Result<()>;
    /// The server's console log.
    fn console(&self, server_id: &str) -> Result<String>;
}

/// One region's binding, as written in `regions.d/*.json`:
///
/// ```json
/// {"region": "eu-west-1", "backend": "openstack", "cloud": "amirun-aio",
///  "clouds_yaml": "/etc/openstack/clouds.yaml"}
/// ```
///
/// `clouds_yaml` is optional (the `openstack` CLI's search path otherwise).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RegionBindingConfig {
    pub region: String,
    /// Only `openstack`.
    pub backend: String,
    /// The cloud's name in clouds.yaml.
    pub cloud: String,
    #[serde(default)]
    pub clouds_yaml: Option<PathBuf>,
}

/// Where a bound region's instances run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegionBackend {
    OpenStack {
        cloud: String,
        clouds_yaml: Option<PathBuf>,
    },
}

/// Every bound region (the others are local).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionBindings {
    bound: BTreeMap<String, RegionBackend>,
}

impl RegionBindings {
    /// Read every `*.json` of `dir` (none when it does not exist). A broken
    /// file is an error naming it: a region must never fall back to the
    /// local engine because its binding could not be read.
    pub fn load(dir: &Path) -> Result<RegionBindings> {
        let mut out = RegionBindings::default();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => {
                return Err(BackendError::Binding {
                    path: dir.display().to_string(),
                    reason: e.to_string(),
                })
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        for path in files {
            let err = |reason: String| BackendError::Binding {
                path: path.display().to_string(),
                reason,
            };
            let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
            let (region, backend) = Self::parse(&text).map_err(err)?;
            if out.bound.insert(region.clone(), backend).is_some() {
                return Err(err(format!("region {region} is bound twice")));
            }
        }
        Ok(out)
    }

    /// One binding from a file's text.
    pub fn parse(text: &str) -> std::result::Result<(String, RegionBackend), String> {
        let c: RegionBindingConfig = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if c.backend != "openstack" {
            return Err(format!(
                "unknown backend {:?} (only \"openstack\")",
                c.backend
            ));
        }
        if c.cloud.is_empty() {
            return Err("\"cloud\" is empty".into());
        }
        Ok((
            c.region,
            RegionBackend::OpenStack {
                cloud: c.cloud,
                clouds_yaml: c.clouds_yaml,
            },
        ))
    }

    /// The backend of `region`, or None when it is local.
    pub fn get(&self, region: &str) -> Option<&RegionBackend> {
        self.bound.get(region)
    }

    /// The bound region names.
    pub fn regions(&self) -> impl Iterator<Item = &str> {
        self.bound.keys().map(String::as_str)
    }
}

impl RegionBackend {
    /// Connect to the backend.
    pub fn connect(&self) -> Result<Box<dyn Backend>> {
        match self {
            RegionBackend::OpenStack { cloud, clouds_yaml } => Ok(Box::new(
                openstack::OpenStackBackend::connect(cloud, clouds_yaml.as_deref())?,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bindings_and_refuses_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            RegionBindings::load(&dir.path().join("none")).unwrap(),
            RegionBindings::default()
        );
        std::fs::write(
            dir.path().join("eu.json"),
            r#"{"region": "eu-west-1", "backend": "openstack", "cloud": "amirun-aio"}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let b = RegionBindings::load(dir.path()).unwrap();
        assert_eq!(
            b.get("eu-west-1"),
            Some(&RegionBackend::OpenStack {
                cloud: "amirun-aio".into(),
                clouds_yaml: None
            })
        );
        assert_eq!(b.get("us-east-1"), None);
        std::fs::write(
            dir.path().join("x.json"),
            r#"{"region": "eu-west-2", "backend": "vmware", "cloud": "c"}"#,
        )
        .unwrap();
        let e = RegionBindings::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("x.json") && e.contains("vmware"), "{e}");
        std::fs::write(
            dir.path().join("x.json"),
            r#"{"region": "eu-west-1", "backend": "openstack", "cloud": "other"}"#,
        )
        .unwrap();
        let e = RegionBindings::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("bound twice"), "{e}");
        std::fs::write(
            dir.path().join("x.json"),
            r#"{"region": "r", "cloud": "c", "extra": 1}"#,
        )
        .unwrap();
        assert!(RegionBindings::load(dir.path()).is_err());
    }
}
