//! The OpenStack backend: images in Glance, servers in Nova, through
//! [`crate::openstack`]'s blocking client.
//!
//! - An image is a private qcow2 Glance image named by its key, with the
//!   properties Nova's libvirt driver reads (`architecture`,
//!   `hw_firmware_type`, `hw_disk_bus`).
//! - A machine size is a flavor `amirun-<name>-<disk>g`, made on first use
//!   (needs an admin cloud); a key is a Nova key pair, imported on first
//!   use and replaced when its public key changed.
//! - A launch is one create of `count` servers (Nova's multi-create), all
//!   named after the group and carrying it as metadata `amirun:group`;
//!   each server's index is Nova's `launch_index`. Servers get no network
//!   (`networks: none`): the all-in-one cloud has no Neutron agents.
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
            .map(|i| PublishedImage {
                ready: i.status == "active",
                id: i.id,
            })
            .collect())
    }

    fn publish_image(&self, spec: &ImageSpec) -> Result<String> {
        let glance = Glance(&self.session);
        let firmware = match spec.firmware {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        };
        let image = glance
            .create(
                &NewImage::qcow2(&spec.key)
                    .property("architecture", &spec.architecture)
                    .property("hw_firmware_type", firmware)
                    .property("hw_disk_bus", "virtio"),
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
                    id: s.id,
                    group,
                    index: s.launch_index,
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
}
