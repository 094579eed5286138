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
use std::sync::{Arc, Mutex};

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
    /// The upload or snapshot ended without data, with the backend's word.
    pub failed: Option<String>,
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
    /// A task (a snapshot, a power change) is under way on it.
    pub busy: bool,
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
    /// The image with this id, None when it is gone.
    fn image(&self, id: &str) -> Result<Option<PublishedImage>>;
    /// Upload an image; returns its id once usable.
    fn publish_image(&self, spec: &ImageSpec) -> Result<String>;
    /// Remove an image.
    fn delete_image(&self, id: &str) -> Result<()>;
    /// The tenant (project) this connection acts in: what images are shared with.
    fn tenant(&self) -> Result<String>;
    /// Let `tenant` launch image `id` (idempotent).
    fn share_image(&self, id: &str, tenant: &str) -> Result<()>;
    /// Stop letting `tenant` launch image `id` (idempotent).
    fn unshare_image(&self, id: &str, tenant: &str) -> Result<()>;
    /// As the tenant an image was shared with: take the share.
    fn accept_image(&self, id: &str) -> Result<()>;
    /// Make sure servers of this size can be launched (needs the rights
    /// to define sizes; launches by other tenants then find it).
    fn prepare_size(&self, size: &MachineSize) -> Result<()>;
    /// Launch servers (the call returns once the backend took them).
    fn launch(&self, spec: &LaunchSpec) -> Result<()>;
    /// Start an image of the server's disk, named `key`; returns the
    /// image's id at once (it becomes ready later, see [`Backend::image`]).
    fn snapshot(&self, server_id: &str, key: &str) -> Result<String>;
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
///  "clouds_yaml": "/etc/openstack/clouds.yaml",
///  "accounts": {"222222222222": "amirun-aio-demo"}}
/// ```
///
/// `clouds_yaml` is optional (the `openstack` CLI's search path otherwise).
/// `accounts` gives an EC2 account its own cloud entry (its own project);
/// every other account acts through `cloud`, which also defines the
/// instance types' sizes (it needs the rights to).
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
    /// 12-digit account id → cloud name.
    #[serde(default)]
    pub accounts: BTreeMap<String, String>,
}

/// Where a bound region's instances run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegionBackend {
    OpenStack {
        /// The region's own cloud entry (and every unlisted account's).
        cloud: String,
        clouds_yaml: Option<PathBuf>,
        /// Accounts with their own cloud entry.
        accounts: BTreeMap<String, String>,
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
        for (account, cloud) in &c.accounts {
            if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("account {account:?} is not 12 digits"));
            }
            if cloud.is_empty() {
                return Err(format!("the cloud of account {account} is empty"));
            }
        }
        Ok((
            c.region,
            RegionBackend::OpenStack {
                cloud: c.cloud,
                clouds_yaml: c.clouds_yaml,
                accounts: c.accounts,
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
    /// The cloud entry `account` acts through (None: the region's own).
    pub fn cloud_of(&self, account: Option<&str>) -> &str {
        match self {
            RegionBackend::OpenStack {
                cloud, accounts, ..
            } => account
                .and_then(|a| accounts.get(a))
                .unwrap_or(cloud)
                .as_str(),
        }
    }

    /// Connect as `account` (None: the region's own cloud entry). A
    /// connection is kept for the life of the process and shared: `amirun
    /// serve` opens its service for each request, and a login for each
    /// would cost seconds (the session renews its token itself).
    pub fn connect(&self, account: Option<&str>) -> Result<Arc<dyn Backend>> {
        /// A cloud entry: its name and clouds.yaml.
        type Entry = (String, Option<PathBuf>);
        static CONNECTED: Mutex<BTreeMap<Entry, Arc<dyn Backend>>> = Mutex::new(BTreeMap::new());
        let cloud = self.cloud_of(account);
        match self {
            RegionBackend::OpenStack { clouds_yaml, .. } => {
                let mut connected = CONNECTED.lock().unwrap_or_else(|p| p.into_inner());
                let key = (cloud.to_string(), clouds_yaml.clone());
                if let Some(b) = connected.get(&key) {
                    return Ok(b.clone());
                }
                let b: Arc<dyn Backend> = Arc::new(openstack::OpenStackBackend::connect(
                    cloud,
                    clouds_yaml.as_deref(),
                )?);
                connected.insert(key, b.clone());
                Ok(b)
            }
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
                clouds_yaml: None,
                accounts: BTreeMap::new(),
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
        std::fs::write(
            dir.path().join("x.json"),
            r#"{"region": "r", "backend": "openstack", "cloud": "c", "accounts": {"12": "d"}}"#,
        )
        .unwrap();
        let e = RegionBindings::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not 12 digits"), "{e}");
        std::fs::write(
            dir.path().join("x.json"),
            r#"{"region": "r", "backend": "openstack", "cloud": "c", "accounts": {"222222222222": "d"}}"#,
        )
        .unwrap();
        let b = RegionBindings::load(dir.path()).unwrap();
        let r = b.get("r").unwrap();
        assert_eq!(r.cloud_of(Some("222222222222")), "d");
        assert_eq!(r.cloud_of(Some("333333333333")), "c");
        assert_eq!(r.cloud_of(None), "c");
    }
}
