//! Nova v2.1: flavors and servers (create, list, show, stop, start,
//! reboot, console log, image create, delete), at one fixed microversion
//! so that every answer has the same shape.
//!
//! Servers are created with `networks: "none"` unless the caller names
//! networks: amirun's all-in-one cloud has no Neutron
//! (scripts/openstack-aio.sh), and that needs microversion 2.37 or later.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::auth::{Request, Session};
use super::{OpenStackError, Result};

/// The compute API microversion every request asks for: 2.79 gives
/// `networks: none` (2.37), the flavor embedded in a server (2.47), the
/// image id in `createImage`'s answer (2.45) and `delete_on_termination`
/// of attached volumes (2.79). Zed serves up to 2.93.
pub const COMPUTE_MICROVERSION: &str = "2.79";

/// A flavor: the instance type's size.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Flavor {
    pub id: String,
    pub name: String,
    pub vcpus: u32,
    /// MiB.
    pub ram: u64,
    /// Root disk, GiB (0: the image's size).
    pub disk: u64,
    #[serde(rename = "OS-FLV-EXT-DATA:ephemeral", default)]
    pub ephemeral: u64,
}

/// What to create: Nova's create-flavor body.
#[derive(Clone, Debug, Serialize)]
pub struct NewFlavor {
    pub name: String,
    pub vcpus: u32,
    /// MiB.
    pub ram: u64,
    /// GiB.
    pub disk: u64,
    #[serde(rename = "OS-FLV-EXT-DATA:ephemeral")]
    pub ephemeral: u64,
}

/// A server as Nova shows it (the members amirun reads).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Server {
    pub id: String,
    pub name: String,
    /// `BUILD`, `ACTIVE`, `SHUTOFF`, `REBOOT`, `HARD_REBOOT`, `ERROR`,
    /// `DELETED`, `SOFT_DELETED`, …
    pub status: String,
    #[serde(rename = "OS-EXT-STS:vm_state", default)]
    pub vm_state: Option<String>,
    #[serde(rename = "OS-EXT-STS:task_state", default)]
    pub task_state: Option<String>,
    /// The compute host (only shown to admins).
    #[serde(rename = "OS-EXT-SRV-ATTR:host", default)]
    pub host: Option<String>,
    /// The server's index in its multi-create (only shown to admins).
    #[serde(rename = "OS-EXT-SRV-ATTR:launch_index", default)]
    pub launch_index: Option<u32>,
    /// The availability zone it was placed in.
    #[serde(rename = "OS-EXT-AZ:availability_zone", default)]
    pub availability_zone: Option<String>,
    #[serde(default)]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Why the server is in ERROR.
    #[serde(default)]
    pub fault: Option<Fault>,
    #[serde(default)]
    pub created: Option<String>,
}

/// The error that put a server in `ERROR`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Fault {
    #[serde(default)]
    pub code: Option<u16>,
    #[serde(default)]
    pub message: String,
}

/// One entry of `block_device_mapping_v2`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct BlockDevice {
    /// `image`, `volume`, `snapshot`, `blank`.
    pub source_type: String,
    /// `volume` (Cinder) or `local` (the compute host's disk).
    pub destination_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    pub boot_index: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_size: Option<u64>,
    pub delete_on_termination: bool,
}

/// What to boot: Nova's create-server body.
#[derive(Clone, Debug, Default)]
pub struct NewServer {
    pub name: String,
    /// Glance image id (None when booting from a volume mapping).
    pub image_id: Option<String>,
    pub flavor_id: String,
    /// Raw user data (sent base64-encoded).
    pub user_data: Option<Vec<u8>>,
    pub key_name: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub block_devices: Vec<BlockDevice>,
    /// Ask for a config drive.
    pub config_drive: bool,
    /// Network ids; empty means `networks: "none"`.
    pub networks: Vec<String>,
    /// Launch this many at once (Nova's min_count = max_count).
    pub count: u32,
    /// The availability zone (the cloud's default when None).
    pub availability_zone: Option<String>,
}

impl NewServer {
    fn body(&self) -> Value {
        let mut s = json!({
            "name": self.name,
            "flavorRef": self.flavor_id,
            "networks": if self.networks.is_empty() {
                json!("none")
            } else {
                json!(self.networks.iter().map(|n| json!({"uuid": n})).collect::<Vec<_>>())
            },
        });
        let o = s.as_object_mut().expect("an object");
        if let Some(img) = &self.image_id {
            o.insert("imageRef".into(), json!(img));
        }
        if let Some(ud) = &self.user_data {
            let b64 = base64::engine::general_purpose::STANDARD.encode(ud);
            o.insert("user_data".into(), json!(b64));
        }
        if let Some(k) = &self.key_name {
            o.insert("key_name".into(), json!(k));
        }
        if !self.metadata.is_empty() {
            o.insert("metadata".into(), json!(self.metadata));
        }
        if !self.block_devices.is_empty() {
            o.insert("block_device_mapping_v2".into(), json!(self.block_devices));
        }
        if let Some(az) = &self.availability_zone {
            o.insert("availability_zone".into(), json!(az));
        }
        if self.config_drive {
            o.insert("config_drive".into(), json!(true));
        }
        if self.count > 1 {
            o.insert("min_count".into(), json!(self.count));
            o.insert("max_count".into(), json!(self.count));
            o.insert("return_reservation_id".into(), json!(true));
        }
        json!({ "server": s })
    }
}

/// How to reboot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RebootKind {
    /// Ask the guest (ACPI).
    Soft,
    /// Reset the machine.
    Hard,
}

/// The Nova API of a session.
pub struct Nova<'a>(pub &'a Session);

#[derive(Deserialize)]
struct Flavors {
    flavors: Vec<Flavor>,
}
#[derive(Deserialize)]
struct OneFlavor {
    flavor: Flavor,
}
#[derive(Deserialize)]
struct Servers {
    servers: Vec<Server>,
}
#[derive(Deserialize)]
struct OneServer {
    server: Server,
}
#[derive(Deserialize)]
struct Created {
    id: String,
}
#[derive(Deserialize)]
struct CreatedServer {
    server: Created,
}
#[derive(Deserialize)]
struct Reservation {
    reservation_id: String,
}
#[derive(Deserialize)]
struct ConsoleOutput {
    output: String,
}
#[derive(Deserialize)]
struct OneKeypair {
    keypair: Keypair,
}

/// An ssh key pair Nova installs into guests (per user).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Keypair {
    pub name: String,
    pub public_key: String,
}

#[derive(Deserialize)]
struct ImageCreated {
    image_id: String,
}

/// What `create` started: one server, or a reservation of several.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Launched {
    Server(String),
    /// Servers of a multi-create share this reservation id
    /// (list them with [`Nova::list_reservation`]).
    Reservation(String),
}

impl Nova<'_> {
    fn req(&self, method: Method, path: &str) -> Result<Request> {
        Ok(self.0.request(method, "compute", path)?.header(
            "OpenStack-API-Version",
            &format!("compute {COMPUTE_MICROVERSION}"),
        ))
    }

    /// Every flavor.
    pub fn flavors(&self) -> Result<Vec<Flavor>> {
        let f: Flavors = self.req(Method::GET, "/flavors/detail")?.send_json()?;
        Ok(f.flavors)
    }

    /// Create a flavor (admin).
    pub fn create_flavor(&self, flavor: &NewFlavor) -> Result<Flavor> {
        let f: OneFlavor = self
            .req(Method::POST, "/flavors")?
            .json(&json!({ "flavor": flavor }))
            .send_json()?;
        Ok(f.flavor)
    }

    /// Delete a flavor (admin).
    pub fn delete_flavor(&self, id: &str) -> Result<()> {
        self.req(Method::DELETE, &format!("/flavors/{id}"))?
            .send()?;
        Ok(())
    }

    /// The key pair named `name`, if the user has one.
    pub fn keypair(&self, name: &str) -> Result<Option<Keypair>> {
        match self
            .req(Method::GET, &format!("/os-keypairs/{name}"))?
            .send_json::<OneKeypair>()
        {
            Ok(k) => Ok(Some(k.keypair)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Import a public key as key pair `name`.
    pub fn import_keypair(&self, name: &str, public_key: &str) -> Result<Keypair> {
        let k: OneKeypair = self
            .req(Method::POST, "/os-keypairs")?
            .json(&json!({"keypair": {"name": name, "public_key": public_key}}))
            .send_json()?;
        Ok(k.keypair)
    }

    /// Delete key pair `name`.
    pub fn delete_keypair(&self, name: &str) -> Result<()> {
        self.req(Method::DELETE, &format!("/os-keypairs/{name}"))?
            .send()?;
        Ok(())
    }

    /// Boot a server (or `count` of them).
    pub fn create(&self, server: &NewServer) -> Result<Launched> {
        let resp = self
            .req(Method::POST, "/servers")?
            .json(&server.body())
            .send()?;
        let url = "/servers";
        if server.count > 1 {
            let r: Reservation = super::auth::read_json(url, resp)?;
            Ok(Launched::Reservation(r.reservation_id))
        } else {
            let c: CreatedServer = super::auth::read_json(url, resp)?;
            Ok(Launched::Server(c.server.id))
        }
    }

    /// Servers of the project (every project's with `all_tenants` as admin).
    pub fn list(&self, all_tenants: bool) -> Result<Vec<Server>> {
        let path = if all_tenants {
            "/servers/detail?all_tenants=1"
        } else {
            "/servers/detail"
        };
        let s: Servers = self.req(Method::GET, path)?.send_json()?;
        Ok(s.servers)
    }

    /// Servers of one multi-create.
    pub fn list_reservation(&self, reservation_id: &str) -> Result<Vec<Server>> {
        let s: Servers = self
            .req(
                Method::GET,
                &format!("/servers/detail?reservation_id={reservation_id}"),
            )?
            .send_json()?;
        Ok(s.servers)
    }

    /// One server.
    pub fn show(&self, id: &str) -> Result<Server> {
        let s: OneServer = self
            .req(Method::GET, &format!("/servers/{id}"))?
            .send_json()?;
        Ok(s.server)
    }

    fn action(&self, id: &str, body: Value) -> Result<reqwest::blocking::Response> {
        self.req(Method::POST, &format!("/servers/{id}/action"))?
            .json(&body)
            .send()
    }

    /// Power off (status becomes `SHUTOFF`).
    pub fn stop(&self, id: &str) -> Result<()> {
        self.action(id, json!({"os-stop": null}))?;
        Ok(())
    }

    /// Power on (status becomes `ACTIVE`).
    pub fn start(&self, id: &str) -> Result<()> {
        self.action(id, json!({"os-start": null}))?;
        Ok(())
    }

    /// Reboot.
    pub fn reboot(&self, id: &str, kind: RebootKind) -> Result<()> {
        let t = match kind {
            RebootKind::Soft => "SOFT",
            RebootKind::Hard => "HARD",
        };
        self.action(id, json!({"reboot": {"type": t}}))?;
        Ok(())
    }

    /// The serial console log (the last `lines` lines, or all).
    pub fn console_log(&self, id: &str, lines: Option<u32>) -> Result<String> {
        let body = match lines {
            Some(n) => json!({"os-getConsoleOutput": {"length": n}}),
            None => json!({"os-getConsoleOutput": {}}),
        };
        let resp = self.action(id, body)?;
        let c: ConsoleOutput = super::auth::read_json("os-getConsoleOutput", resp)?;
        Ok(c.output)
    }

    /// Snapshot the server into a new Glance image; returns its id.
    pub fn create_image(
        &self,
        id: &str,
        name: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<String> {
        let resp = self.action(
            id,
            json!({"createImage": {"name": name, "metadata": metadata}}),
        )?;
        let c: ImageCreated = super::auth::read_json("createImage", resp)?;
        Ok(c.image_id)
    }

    /// Delete the server.
    pub fn delete(&self, id: &str) -> Result<()> {
        self.req(Method::DELETE, &format!("/servers/{id}"))?
            .send()?;
        Ok(())
    }

    /// Poll until the server's status is one of `wanted` (ERROR fails at
    /// once with Nova's fault message).
    pub fn wait_status(&self, id: &str, wanted: &[&str], timeout: Duration) -> Result<Server> {
        let start = Instant::now();
        loop {
            let s = self.show(id)?;
            if wanted.contains(&s.status.as_str()) && s.task_state.is_none() {
                return Ok(s);
            }
            if s.status == "ERROR" {
                let why = s.fault.map(|f| f.message).unwrap_or_default();
                return Err(OpenStackError::Timeout {
                    what: format!("server {id}"),
                    wanted: wanted.join("|"),
                    last: format!("ERROR: {why}"),
                    seconds: start.elapsed().as_secs(),
                });
            }
            if start.elapsed() > timeout {
                return Err(OpenStackError::Timeout {
                    what: format!("server {id}"),
                    wanted: wanted.join("|"),
                    last: format!("{} (task {:?})", s.status, s.task_state),
                    seconds: timeout.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// Poll until the server is gone (404, or DELETED with no task left).
    pub fn wait_deleted(&self, id: &str, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            match self.show(id) {
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => return Err(e),
                // An admin can still show a deleted server: DELETED, no task.
                Ok(s) if s.status == "DELETED" && s.task_state.is_none() => return Ok(()),
                Ok(s) if start.elapsed() > timeout => {
                    return Err(OpenStackError::Timeout {
                        what: format!("server {id}"),
                        wanted: "deleted".into(),
                        last: s.status,
                        seconds: timeout.as_secs(),
                    })
                }
                Ok(_) => std::thread::sleep(Duration::from_secs(2)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_body_has_no_network_by_default_and_encodes_user_data() {
        let s = NewServer {
            name: "t".into(),
            image_id: Some("img".into()),
            flavor_id: "f".into(),
            user_data: Some(b"#!/bin/sh\necho hi\n".to_vec()),
            count: 1,
            ..NewServer::default()
        };
        assert_eq!(
            s.body(),
            json!({"server": {"name": "t", "flavorRef": "f", "networks": "none", "imageRef": "img",
                              "user_data": "IyEvYmluL3NoCmVjaG8gaGkK"}})
        );
    }

    #[test]
    fn multi_create_asks_for_a_reservation() {
        let s = NewServer {
            name: "many".into(),
            flavor_id: "f".into(),
            count: 40,
            block_devices: vec![BlockDevice {
                source_type: "image".into(),
                destination_type: "volume".into(),
                uuid: Some("img".into()),
                boot_index: 0,
                volume_size: Some(1),
                delete_on_termination: true,
            }],
            ..NewServer::default()
        };
        let b = s.body();
        assert_eq!(b["server"]["min_count"], json!(40));
        assert_eq!(b["server"]["return_reservation_id"], json!(true));
        assert_eq!(
            b["server"]["block_device_mapping_v2"][0]["destination_type"],
            json!("volume")
        );
        assert!(b["server"].get("imageRef").is_none());
    }

    #[test]
    fn server_reads_extended_attributes() {
        let s: Server = serde_json::from_value(json!({
            "id": "1", "name": "t", "status": "ACTIVE", "OS-EXT-STS:vm_state": "active",
            "OS-EXT-STS:task_state": null, "OS-EXT-SRV-ATTR:host": "aio", "tenant_id": "p",
            "metadata": {"amirun:instance-id": "i-0123"}, "links": [],
        }))
        .unwrap();
        assert_eq!(s.host.as_deref(), Some("aio"));
        assert_eq!(s.task_state, None);
        assert_eq!(s.metadata["amirun:instance-id"], "i-0123");
    }
}
