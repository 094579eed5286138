//! What amirun knows of objects a remote backend holds (`crate::backend`):
//! which backend image an AMI was published as in a region, and each
//! instance that runs there with the backend's server id. A row is written
//! before the remote object is made (server id or image id still empty),
//! so a process killed in between leaves a record that the next reader
//! settles from what the backend really has.

use super::{from_opt_json, to_json, Db, Result};
use crate::domain::{Architecture, BootMode, InstanceStateName, RootDeviceType};
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

/// The schema batch of these tables.
pub const MIGRATION: &str = r#"
CREATE TABLE remote_images (
    image_id         TEXT NOT NULL,
    region           TEXT NOT NULL,
    backend_image_id TEXT,
    updated          TEXT NOT NULL,
    PRIMARY KEY (image_id, region)
);
CREATE TABLE remote_instances (
    instance_id TEXT PRIMARY KEY,
    region      TEXT NOT NULL,
    owner_id    TEXT NOT NULL,
    record      TEXT NOT NULL
);
CREATE INDEX remote_instances_by_region ON remote_instances(region);
"#;

/// An AMI published to a region's backend: `backend_image_id` is None
/// while the upload is in progress (or was interrupted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteImageState {
    pub image_id: String,
    pub region: String,
    pub backend_image_id: Option<String>,
    pub updated: String,
}

/// An instance on a remote backend: EC2's view (ids, type, state as last
/// reconciled) and the backend's (launch group, server id, host, zone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteInstanceState {
    pub instance_id: String,
    pub region: String,
    pub owner_id: String,
    pub reservation_id: String,
    pub image_id: String,
    pub instance_type: String,
    pub architecture: Architecture,
    pub boot_mode: BootMode,
    pub root_device_type: RootDeviceType,
    pub root_device_name: String,
    pub root_size_gib: u64,
    pub launch_index: u32,
    pub launch_time: String,
    pub key_name: Option<String>,
    /// The backend's launch group (found again by it after a crash).
    pub group: String,
    /// None until the backend's server is known.
    pub server_id: Option<String>,
    pub host: Option<String>,
    pub zone: Option<String>,
    pub state: InstanceStateName,
    /// `Code: message`, as EC2's StateReason.
    pub state_reason: Option<String>,
    pub updated: String,
}

impl Db<'_> {
    /// Insert or replace a published-image row.
    pub fn put_remote_image(&self, i: &RemoteImageState) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO remote_images (image_id, region, backend_image_id, updated) \
             VALUES (?1, ?2, ?3, ?4)",
            params![i.image_id, i.region, i.backend_image_id, i.updated],
        )?;
        Ok(())
    }

    /// Forget an AMI's published image in a region.
    pub fn delete_remote_image(&self, image_id: &str, region: &str) -> Result<()> {
        self.conn.execute(
            "DELETE FROM remote_images WHERE image_id = ?1 AND region = ?2",
            params![image_id, region],
        )?;
        Ok(())
    }

    /// The published-image row of an AMI in a region.
    pub fn remote_image(&self, image_id: &str, region: &str) -> Result<Option<RemoteImageState>> {
        Ok(self
            .conn
            .query_row(
                "SELECT image_id, region, backend_image_id, updated FROM remote_images \
                 WHERE image_id = ?1 AND region = ?2",
                params![image_id, region],
                |r| {
                    Ok(RemoteImageState {
                        image_id: r.get(0)?,
                        region: r.get(1)?,
                        backend_image_id: r.get(2)?,
                        updated: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    /// Insert or replace a remote instance.
    pub fn put_remote_instance(&self, i: &RemoteInstanceState) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO remote_instances (instance_id, region, owner_id, record) \
             VALUES (?1, ?2, ?3, ?4)",
            params![i.instance_id, i.region, i.owner_id, to_json(i)?],
        )?;
        Ok(())
    }

    /// Forget a remote instance (a launch the backend refused).
    pub fn delete_remote_instance(&self, instance_id: &str) -> Result<()> {
        self.conn.execute(
            "DELETE FROM remote_instances WHERE instance_id = ?1",
            params![instance_id],
        )?;
        Ok(())
    }

    /// One remote instance.
    pub fn remote_instance(&self, instance_id: &str) -> Result<Option<RemoteInstanceState>> {
        let record: Option<String> = self
            .conn
            .query_row(
                "SELECT record FROM remote_instances WHERE instance_id = ?1",
                params![instance_id],
                |r| r.get(0),
            )
            .optional()?;
        from_opt_json(record)
    }

    /// The remote instances of a region, in launch order.
    pub fn remote_instances_in_region(&self, region: &str) -> Result<Vec<RemoteInstanceState>> {
        let mut stmt = self
            .conn
            .prepare("SELECT record FROM remote_instances WHERE region = ?1 ORDER BY rowid")?;
        let rows = stmt.query_map(params![region], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(serde_json::from_str(&r?)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn remote_rows_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db"), &dir.path().join("l")).unwrap();
        let img = RemoteImageState {
            image_id: "ami-1".into(),
            region: "eu-west-1".into(),
            backend_image_id: None,
            updated: "t".into(),
        };
        store.write(|db| db.put_remote_image(&img)).unwrap();
        assert_eq!(
            store
                .read(|db| db.remote_image("ami-1", "eu-west-1"))
                .unwrap(),
            Some(img)
        );
        assert_eq!(
            store
                .read(|db| db.remote_image("ami-1", "us-east-1"))
                .unwrap(),
            None
        );
        let i = RemoteInstanceState {
            instance_id: "i-1".into(),
            region: "eu-west-1".into(),
            owner_id: "000000000000".into(),
            reservation_id: "r-1".into(),
            image_id: "ami-1".into(),
            instance_type: "t3.micro".into(),
            architecture: Architecture::X86_64,
            boot_mode: BootMode::LegacyBios,
            root_device_type: RootDeviceType::Ebs,
            root_device_name: "/dev/xvda".into(),
            root_size_gib: 1,
            launch_index: 0,
            launch_time: "t".into(),
            key_name: None,
            group: "amirun-r-1".into(),
            server_id: None,
            host: None,
            zone: None,
            state: InstanceStateName::Pending,
            state_reason: None,
            updated: "t".into(),
        };
        store.write(|db| db.put_remote_instance(&i)).unwrap();
        assert_eq!(
            store.read(|db| db.remote_instance("i-1")).unwrap(),
            Some(i.clone())
        );
        assert_eq!(
            store
                .read(|db| db.remote_instances_in_region("eu-west-1"))
                .unwrap(),
            vec![i]
        );
        store.write(|db| db.delete_remote_instance("i-1")).unwrap();
        assert_eq!(store.read(|db| db.remote_instance("i-1")).unwrap(), None);
    }
}
