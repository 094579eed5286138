//! The OpenStack backend: images in Glance, servers in Nova, through
//! [`crate::openstack`]'s blocking client.
//!
//! - An image is a `shared` qcow2 Glance image named by its key (seen only
//!   by its project and the projects made its members), with the
//!   properties Nova's libvirt driver reads (`architecture`,
//!   `hw_firmware_type`, `hw_disk_bus`, and a virtio-scsi CD-ROM bus for the
//!   config drive). Sharing is Glance membership, accepted by the member.
//! - A snapshot is Nova's createImage of the server; Nova copies the
//!   image's properties onto it.
//! - A machine size is a flavor `amirun-<name>-<disk>g`, made on first use
//!   (needs an admin cloud); a key is a Nova key pair, imported on first
//!   use and replaced when its public key changed.
//! - A launch is one create of `count` servers (Nova's multi-create), all
//!   named after the group and carrying it as metadata `amirun:group`;
//!   each server's index is Nova's `launch_index` (admins see it), else
//!   the `-N` suffix Nova gives the names of a multi-create. User data
//!   goes on a config drive. Servers get no network (`networks: none`):
//!   the all-in-one cloud has no Neutron agents.
//! - Root disks are the compute host's local disks (no Cinder yet): they
//!   survive stop and start, and go with the server.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{
    Backend, BackendError, Firmware, ImageSpec, LaunchSpec, PowerAction, PublishedImage, Result,
    ServerFacts, ServerPower,
};
use crate::openstack::compute::{NewFlavor, NewServer, Nova, RebootKind, Server};
use crate::openstack::image::{Glance, NewImage};
use crate::openstack::{CloudConfig, OpenStackError, Session};

/// Metadata key naming a server's launch group.
pub const GROUP_KEY: &str = "amirun:group";

/// How long an uploaded image may take to turn `active`.
const IMAGE_ACTIVE_WITHIN: Duration = Duration::from_secs(300);

/// A logged-in OpenStack cloud.
pub struct OpenStackBackend {
    cloud: String,
    session: Session,
}

impl OpenStackBackend {
    /// Log in to `cloud` of `clouds_yaml` (or of the `openstack` CLI's search path).
    pub fn connect(cloud: &str, clouds_yaml: Option<&Path>) -> Result<OpenStackBackend> {
        let name = format!("OpenStack cloud {cloud}");
        let config = match clouds_yaml {
            Some(p) => CloudConfig::from_file(p, cloud),
            None => CloudConfig::from_clouds_yaml(cloud),
        }
        .map_err(|e| failed(&name, e))?;
        let session = Session::connect(config).map_err(|e| failed(&name, e))?;
        Ok(OpenStackBackend {
            cloud: cloud.to_string(),
            session,
        })
    }

    fn err(&self, e: OpenStackError) -> BackendError {
        let backend = self.name();
        match e.status() {
            Some(s) if (400..500).contains(&s) => BackendError::Refused {
                backend,
                source: Box::new(e),
            },
            _ => failed(&backend, e),
        }
    }

    /// The flavor for `size`, made when missing.
    fn flavor(&self, size: &super::MachineSize) -> Result<String> {
        let nova = Nova(&self.session);
        let name = format!("amirun-{}-{}g", size.name, size.disk_gib);
        let find = || -> Result<Option<String>> {
            Ok(nova
                .flavors()
                .map_err(|e| self.err(e))?
                .into_iter()
                .find(|f| f.name == name)
                .map(|f| f.id))
        };
        if let Some(id) = find()? {
            return Ok(id);
        }
        match nova.create_flavor(&NewFlavor {
            name: name.clone(),
            vcpus: size.vcpus,
            ram: size.memory_mib,
            disk: size.disk_gib,
            ephemeral: 0,
        }) {
            Ok(f) => Ok(f.id),
            // Made by another launch meanwhile.
            Err(e) if e.status() == Some(409) => find()?.ok_or_else(|| self.err(e)),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Key pair `name` holding `public_key`, imported (or replaced) as needed.
    fn keypair(&self, name: &str, public_key: &str) -> Result<()> {
        let nova = Nova(&self.session);
        match nova.keypair(name).map_err(|e| self.err(e))? {
            Some(k) if k.public_key.trim() == public_key.trim() => return Ok(()),
            Some(_) => nova.delete_keypair(name).map_err(|e| self.err(e))?,
            None => {}
        }
        match nova.import_keypair(name, public_key) {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(409) => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }
}

/// What a backend knows of a Glance image.
fn published(i: crate::openstack::image::Image) -> PublishedImage {
    let failed = match i.status.as_str() {
        "killed" | "deleted" | "deactivated" | "pending_delete" => {
            Some(format!("the image is {}", i.status))
        }
        _ => None,
    };
    PublishedImage {
        ready: i.status == "active",
        failed,
        id: i.id,
    }
}

/// A server's index in its launch group: Nova's launch index, else the
/// `-N` (1-based) that a multi-create appends to the group's name.
fn index_of(server: &Server, group: &str) -> Option<u32> {
    server.launch_index.or_else(|| {
        if server.name == group {
            return Some(0);
        }
        let n: u32 = server
            .name
            .strip_prefix(group)?
            .strip_prefix('-')?
            .parse()
            .ok()?;
        n.checked_sub(1)
    })
}

fn failed(backend: &str, source: OpenStackError) -> BackendError {
    BackendError::Failed {
        backend: backend.to_string(),
        source: Box::new(source),
    }
}

/// Nova's status and task state in neutral terms.
pub fn power_of(server: &Server) -> ServerPower {
    let task = server.task_state.as_deref().unwrap_or("");
    if task == "deleting" {
        return ServerPower::Deleting;
    }
    match server.status.as_str() {
        "BUILD" => ServerPower::Building,
        "ACTIVE" if task == "powering-off" => ServerPower::PoweringOff,
        "ACTIVE" if task.starts_with("reboot") => ServerPower::Rebooting,
        "ACTIVE" => ServerPower::Running,
        "SHUTOFF" if task == "powering-on" => ServerPower::PoweringOn,
        "SHUTOFF" | "PAUSED" | "SUSPENDED" | "SHELVED" | "SHELVED_OFFLOADED" => {
            ServerPower::Stopped
        }
        "REBOOT" | "HARD_REBOOT" => ServerPower::Rebooting,
        "DELETED" | "SOFT_DELETED" => ServerPower::Deleted,
        "ERROR" => ServerPower::Failed(
            server
                .fault
                .as_ref()
                .map(|f| f.message.clone())
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| "the server is in ERROR".into()),
        ),
        _ => ServerPower::Running,
    }
}

impl Backend for OpenStackBackend {
    fn name(&self) -> String {
        format!("OpenStack cloud {}", self.cloud)
    }

    fn find_images(&self, key: &str) -> Result<Vec<PublishedImage>> {
        let images = Glance(&self.session)
            .list(Some(key))
            .map_err(|e| self.err(e))?;
        Ok(images
            .into_iter()
            .filter(|i| i.name.as_deref() == Some(key))
            .map(published)
            .collect())
    }

    fn image(&self, id: &str) -> Result<Option<PublishedImage>> {
        match Glance(&self.session).show(id) {
            Ok(i) => Ok(Some(published(i))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    fn tenant(&self) -> Result<String> {
        self.session.project_id().map_err(|e| self.err(e))
    }

    fn share_image(&self, id: &str, tenant: &str) -> Result<()> {
        let glance = Glance(&self.session);
        let image = glance.show(id).map_err(|e| self.err(e))?;
        if image.visibility == "private" {
            glance
                .set_visibility(id, "shared")
                .map_err(|e| self.err(e))?;
        }
        match glance.add_member(id, tenant) {
            // A member already.
            Err(e) if e.status() == Some(409) => Ok(()),
            other => other.map(|_| ()).map_err(|e| self.err(e)),
        }
    }

    fn unshare_image(&self, id: &str, tenant: &str) -> Result<()> {
        match Glance(&self.session).remove_member(id, tenant) {
            Err(e) if !e.is_not_found() => Err(self.err(e)),
            _ => Ok(()),
        }
    }

    fn accept_image(&self, id: &str) -> Result<()> {
        let tenant = self.tenant()?;
        Glance(&self.session)
            .set_member_status(id, &tenant, "accepted")
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    fn prepare_size(&self, size: &super::MachineSize) -> Result<()> {
        self.flavor(size).map(|_| ())
    }

    fn snapshot(&self, server_id: &str, key: &str) -> Result<String> {
        Nova(&self.session)
            .create_image(server_id, key, &Default::default())
            .map_err(|e| self.err(e))
    }

    fn publish_image(&self, spec: &ImageSpec) -> Result<String> {
        let glance = Glance(&self.session);
        let firmware = match spec.firmware {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        };
        let image = glance
            .create(
                &NewImage {
                    visibility: "shared".into(),
                    ..NewImage::qcow2(&spec.key)
                }
                .property("architecture", &spec.architecture)
                .property("hw_firmware_type", firmware)
                .property("hw_disk_bus", "virtio")
                .property("hw_cdrom_bus", "scsi")
                .property("hw_scsi_model", "virtio-scsi"),
            )
            .map_err(|e| self.err(e))?;
        glance
            .upload(&image.id, &spec.file)
            .map_err(|e| self.err(e))?;
        let start = Instant::now();
        loop {
            let now = glance.show(&image.id).map_err(|e| self.err(e))?;
            match now.status.as_str() {
                "active" => return Ok(image.id),
                "killed" | "deleted" | "deactivated" => {
                    return Err(failed(
                        &self.name(),
                        OpenStackError::Protocol {
                            url: format!("image {}", image.id),
                            reason: format!("the upload ended {}", now.status),
                        },
                    ))
                }
                last if start.elapsed() > IMAGE_ACTIVE_WITHIN => {
                    return Err(failed(
                        &self.name(),
                        OpenStackError::Timeout {
                            what: format!("image {}", image.id),
                            wanted: "active".into(),
                            last: last.to_string(),
                            seconds: IMAGE_ACTIVE_WITHIN.as_secs(),
                        },
                    ))
                }
                _ => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    fn delete_image(&self, id: &str) -> Result<()> {
        match Glance(&self.session).delete(id) {
            Err(e) if !e.is_not_found() => Err(self.err(e)),
            _ => Ok(()),
        }
    }

    fn launch(&self, spec: &LaunchSpec) -> Result<()> {
        let flavor_id = self.flavor(&spec.size)?;
        if let Some((name, key)) = &spec.key {
            self.keypair(name, key)?;
        }
        let server = NewServer {
            name: spec.group.clone(),
            image_id: Some(spec.image_id.clone()),
            flavor_id,
            user_data: spec.user_data.clone(),
            key_name: spec.key.as_ref().map(|(n, _)| n.clone()),
            metadata: [(GROUP_KEY.to_string(), spec.group.clone())].into(),
            count: spec.count,
            availability_zone: spec.zone.clone(),
            config_drive: spec.user_data.is_some(),
            ..NewServer::default()
        };
        Nova(&self.session)
            .create(&server)
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn servers(&self) -> Result<Vec<ServerFacts>> {
        let servers = Nova(&self.session).list(false).map_err(|e| self.err(e))?;
        Ok(servers
            .into_iter()
            .filter_map(|s| {
                let group = s.metadata.get(GROUP_KEY)?.clone();
                Some(ServerFacts {
                    power: power_of(&s),
                    index: index_of(&s, &group),
                    busy: s.task_state.is_some(),
                    id: s.id,
                    group,
                    host: s.host,
                    zone: s.availability_zone,
                })
            })
            .collect())
    }

    fn power(&self, server_id: &str, action: PowerAction) -> Result<()> {
        let nova = Nova(&self.session);
        let done = match action {
            PowerAction::Stop => nova.stop(server_id),
            PowerAction::Start => nova.start(server_id),
            PowerAction::Reboot => nova.reboot(server_id, RebootKind::Soft),
            PowerAction::Delete => nova.delete(server_id),
        };
        match done {
            // Gone already: nothing left to delete.
            Err(e) if action == PowerAction::Delete && e.is_not_found() => Ok(()),
            other => other.map_err(|e| self.err(e)),
        }
    }

    fn console(&self, server_id: &str) -> Result<String> {
        Nova(&self.session)
            .console_log(server_id, None)
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn server(status: &str, task: Option<&str>) -> Server {
        serde_json::from_value(json!({
            "id": "1", "name": "g", "status": status, "OS-EXT-STS:task_state": task,
            "OS-EXT-SRV-ATTR:launch_index": 3, "OS-EXT-AZ:availability_zone": "fake",
            "fault": {"code": 500, "message": "No valid host was found."},
        }))
        .unwrap()
    }

    #[test]
    fn nova_states_map_to_neutral_power() {
        use ServerPower::*;
        for (status, task, want) in [
            ("BUILD", None, Building),
            ("ACTIVE", None, Running),
            ("ACTIVE", Some("powering-off"), PoweringOff),
            ("ACTIVE", Some("rebooting"), Rebooting),
            ("ACTIVE", Some("deleting"), Deleting),
            ("SHUTOFF", None, Stopped),
            ("SHUTOFF", Some("powering-on"), PoweringOn),
            ("HARD_REBOOT", None, Rebooting),
            ("DELETED", None, Deleted),
            ("ERROR", None, Failed("No valid host was found.".into())),
        ] {
            assert_eq!(power_of(&server(status, task)), want, "{status} {task:?}");
        }
        let s = server("ACTIVE", None);
        assert_eq!(s.launch_index, Some(3));
        assert_eq!(s.availability_zone.as_deref(), Some("fake"));
    }

    #[test]
    fn a_servers_index_comes_from_nova_or_from_its_name() {
        let mut s = server("ACTIVE", None);
        assert_eq!(index_of(&s, "g"), Some(3));
        s.launch_index = None;
        assert_eq!(index_of(&s, "g"), Some(0));
        for (name, want) in [
            ("g-1", Some(0)),
            ("g-12", Some(11)),
            ("g-0", None),
            ("h-1", None),
            ("g-x", None),
        ] {
            s.name = name.into();
            assert_eq!(index_of(&s, "g"), want, "{name}");
        }
    }
}
