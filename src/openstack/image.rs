//! Glance v2: images (create a record, upload its data, show, list,
//! change visibility, delete) and image members (the projects an image is
//! shared with, and their acceptance).
//!
//! An image is made in two steps as Glance wants: `create` gives a record
//! in status `queued`, `upload` streams the file and Glance turns it
//! `active`. Glance refuses qcow2 files with a backing file; flattening is
//! the caller's job.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::auth::Session;
use super::{OpenStackError, Result};

/// An image as Glance shows it (the members amirun reads).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Image {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    /// `queued`, `saving`, `active`, `killed`, `deleted`, `deactivated`, …
    pub status: String,
    /// `public`, `private`, `shared`, `community`.
    pub visibility: String,
    /// The owning project.
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub disk_format: Option<String>,
    /// Glance's multihash of the data (`os_hash_algo` names the algorithm).
    #[serde(default)]
    pub os_hash_value: Option<String>,
    #[serde(default)]
    pub os_hash_algo: Option<String>,
    /// Every other member, image properties (`hw_*`, `architecture`, …) included.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl Image {
    /// A string property (`architecture`, `hw_firmware_type`, …).
    pub fn property(&self, key: &str) -> Option<&str> {
        self.extra.get(key).and_then(Value::as_str)
    }
}

/// What to create: Glance's create-image body.
#[derive(Clone, Debug, Serialize)]
pub struct NewImage {
    pub name: String,
    /// `qcow2`, `raw`, …
    pub disk_format: String,
    /// `bare` for a disk image.
    pub container_format: String,
    /// `private` (default in Glance), `shared`, `public`, `community`.
    pub visibility: String,
    /// Image properties, sent as top-level string members (Glance's way):
    /// `architecture`, `hw_firmware_type`, `hw_machine_type`, amirun's own.
    #[serde(flatten)]
    pub properties: BTreeMap<String, String>,
}

impl NewImage {
    /// A private qcow2 disk image named `name`.
    pub fn qcow2(name: &str) -> NewImage {
        NewImage {
            name: name.to_string(),
            disk_format: "qcow2".into(),
            container_format: "bare".into(),
            visibility: "private".into(),
            properties: BTreeMap::new(),
        }
    }

    /// Set one property.
    pub fn property(mut self, key: &str, value: &str) -> NewImage {
        self.properties.insert(key.to_string(), value.to_string());
        self
    }
}

/// A project an image is shared with, and whether it accepted.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Member {
    pub member_id: String,
    pub image_id: String,
    /// `pending`, `accepted`, `rejected`.
    pub status: String,
}

#[derive(Deserialize)]
struct Members {
    members: Vec<Member>,
}

#[derive(Deserialize)]
struct Images {
    images: Vec<Image>,
}

/// The Glance v2 API of a session.
pub struct Glance<'a>(pub &'a Session);

impl Glance<'_> {
    /// Create an image record (status `queued`).
    pub fn create(&self, image: &NewImage) -> Result<Image> {
        let body = serde_json::to_value(image).expect("a NewImage is JSON");
        self.0
            .request(Method::POST, "image", "/v2/images")?
            .json(&body)
            .send_json()
    }

    /// Stream the file at `path` as the image's data; Glance checks the
    /// format and makes the image `active`.
    pub fn upload(&self, id: &str, path: &Path) -> Result<()> {
        let file_err = |source| OpenStackError::File {
            path: path.display().to_string(),
            source,
        };
        let file = File::open(path).map_err(file_err)?;
        let len = file.metadata().map_err(file_err)?.len();
        self.0
            .request(Method::PUT, "image", &format!("/v2/images/{id}/file"))?
            .header("Content-Type", "application/octet-stream")
            .header("Content-Length", &len.to_string())
            .body(reqwest::blocking::Body::sized(file, len))
            .send()?;
        Ok(())
    }

    /// One image.
    pub fn show(&self, id: &str) -> Result<Image> {
        self.0
            .request(Method::GET, "image", &format!("/v2/images/{id}"))?
            .send_json()
    }

    /// Images visible to the project whose name is `name` (all when None).
    pub fn list(&self, name: Option<&str>) -> Result<Vec<Image>> {
        let mut path = "/v2/images?limit=1000".to_string();
        if let Some(n) = name {
            path.push_str("&name=");
            path.push_str(&url::form_urlencoded::byte_serialize(n.as_bytes()).collect::<String>());
        }
        let list: Images = self.0.request(Method::GET, "image", &path)?.send_json()?;
        Ok(list.images)
    }

    /// Set the visibility (`private`, `shared`, `public`, `community`).
    pub fn set_visibility(&self, id: &str, visibility: &str) -> Result<Image> {
        let patch = json!([{"op": "replace", "path": "/visibility", "value": visibility}]);
        self.0
            .request(Method::PATCH, "image", &format!("/v2/images/{id}"))?
            .json_as(&patch, "application/openstack-images-v2.1-json-patch")
            .send_json()
    }

    /// Delete the image and its data.
    pub fn delete(&self, id: &str) -> Result<()> {
        self.0
            .request(Method::DELETE, "image", &format!("/v2/images/{id}"))?
            .send()?;
        Ok(())
    }

    /// Share the image with a project (the image must be `shared`).
    pub fn add_member(&self, id: &str, project_id: &str) -> Result<Member> {
        self.0
            .request(Method::POST, "image", &format!("/v2/images/{id}/members"))?
            .json(&json!({"member": project_id}))
            .send_json()
    }

    /// The projects the image is shared with.
    pub fn members(&self, id: &str) -> Result<Vec<Member>> {
        let m: Members = self
            .0
            .request(Method::GET, "image", &format!("/v2/images/{id}/members"))?
            .send_json()?;
        Ok(m.members)
    }

    /// As the member project: accept (or reject) a shared image.
    pub fn set_member_status(&self, id: &str, project_id: &str, status: &str) -> Result<Member> {
        self.0
            .request(
                Method::PUT,
                "image",
                &format!("/v2/images/{id}/members/{project_id}"),
            )?
            .json(&json!({"status": status}))
            .send_json()
    }

    /// Stop sharing the image with a project.
    pub fn remove_member(&self, id: &str, project_id: &str) -> Result<()> {
        self.0
            .request(
                Method::DELETE,
                "image",
                &format!("/v2/images/{id}/members/{project_id}"),
            )?
            .send()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_image_sends_properties_as_top_level_members() {
        let img = NewImage::qcow2("tiny")
            .property("architecture", "x86_64")
            .property("hw_firmware_type", "bios");
        let v = serde_json::to_value(&img).unwrap();
        assert_eq!(
            v,
            json!({"name": "tiny", "disk_format": "qcow2", "container_format": "bare",
                   "visibility": "private", "architecture": "x86_64", "hw_firmware_type": "bios"})
        );
    }

    #[test]
    fn image_keeps_properties() {
        let img: Image = serde_json::from_value(json!({
            "id": "1", "name": "tiny", "status": "active", "visibility": "shared",
            "owner": "p", "size": 5, "disk_format": "qcow2", "architecture": "x86_64",
            "os_hash_algo": "sha512", "os_hash_value": "ab", "tags": [],
        }))
        .unwrap();
        assert_eq!(img.property("architecture"), Some("x86_64"));
        assert_eq!(img.size, Some(5));
    }
}
