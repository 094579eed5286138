//! AMI records: the `images` table with its JSON columns (sources, block
//! device mappings), the `image_snapshots` index of which snapshots an AMI
//! uses, and `launch_permissions`.

use super::{from_opt_json, opt_json, to_json, upsert_set, Db, Result};
use crate::domain::{Architecture, BootMode, ImageStateName, RootDeviceType};
use rusqlite::{params, Row};
use serde::{Deserialize, Serialize};

/// Where the data of a disk comes from before it is in the blob store: a
/// URL and how to verify it (as written in a catalog file or given to
/// register/import).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// `file://`, `http://` or `https://` URL.
    pub url: String,
    /// Inline sha256 of the file at `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The vendor's checksum file listing the file at `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_url: Option<String>,
    /// Declared format (`qcow2`, `raw`, `vmdk`, `vhd`, `vhdx`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// An EBS block device of a mapping, in EC2's field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct EbsBlockDevice {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_on_termination: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput: Option<u64>,
}

/// One block device mapping, in EC2's field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct BlockDeviceMapping {
    pub device_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ebs: Option<EbsBlockDevice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_device: Option<String>,
}

/// A stored AMI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageState {
    pub image_id: String,
    pub region: String,
    pub name: String,
    pub description: Option<String>,
    pub owner_id: String,
    pub owner_alias: Option<String>,
    pub architecture: Architecture,
    pub boot_mode: Option<BootMode>,
    pub root_device_type: RootDeviceType,
    pub root_device_name: String,
    pub virtualization_type: String,
    pub state: ImageStateName,
    pub state_reason: Option<String>,
    pub creation_date: String,
    pub public: bool,
    pub image_location: Option<String>,
    /// Instance-store AMIs: where the root image comes from.
    pub root_source: Option<SourceSpec>,
    /// Instance-store AMIs: the root image's blob once fetched.
    pub root_blob: Option<String>,
    pub kernel_source: Option<SourceSpec>,
    pub ramdisk_source: Option<SourceSpec>,
    pub kernel_cmdline: Option<String>,
    pub source_image_id: Option<String>,
    pub source_image_region: Option<String>,
    pub source_instance_id: Option<String>,
    /// Set for AMIs that come from a catalog file.
    pub catalog_key: Option<String>,
    pub block_device_mappings: Vec<BlockDeviceMapping>,
}

impl ImageState {
    /// A new private, available, EBS-backed hvm AMI owned by `owner_id`, with
    /// nothing else set: callers fill in what their operation knows.
    pub fn private(
        image_id: &str,
        region: &str,
        owner_id: &str,
        name: &str,
        architecture: Architecture,
        created: &str,
    ) -> ImageState {
        ImageState {
            image_id: image_id.to_string(),
            region: region.to_string(),
            name: name.to_string(),
            description: None,
            owner_id: owner_id.to_string(),
            owner_alias: None,
            architecture,
            boot_mode: None,
            root_device_type: RootDeviceType::Ebs,
            root_device_name: "/dev/xvda".into(),
            virtualization_type: "hvm".into(),
            state: ImageStateName::Available,
            state_reason: None,
            creation_date: created.to_string(),
            public: false,
            image_location: None,
            root_source: None,
            root_blob: None,
            kernel_source: None,
            ramdisk_source: None,
            kernel_cmdline: None,
            source_image_id: None,
            source_image_region: None,
            source_instance_id: None,
            catalog_key: None,
            block_device_mappings: Vec::new(),
        }
    }

    /// Snapshot ids referenced by the block device mappings.
    pub fn snapshot_ids(&self) -> Vec<String> {
        self.block_device_mappings
            .iter()
            .filter_map(|m| m.ebs.as_ref().and_then(|e| e.snapshot_id.clone()))
            .collect()
    }
}

const IMAGE_COLUMNS: &str = "image_id, region, name, description, owner_id, owner_alias, \
    architecture, boot_mode, root_device_type, root_device_name, virtualization_type, state, \
    state_reason, creation_date, public, image_location, root_source, root_blob, kernel_source, \
    ramdisk_source, kernel_cmdline, source_image_id, source_image_region, source_instance_id, \
    catalog_key, block_device_mappings";

/// Raw image row before its JSON columns are parsed.
struct ImageRow(ImageState, [Option<String>; 3], String);

fn image_row(r: &Row) -> rusqlite::Result<ImageRow> {
    Ok(ImageRow(
        ImageState {
            image_id: r.get(0)?,
            region: r.get(1)?,
            name: r.get(2)?,
            description: r.get(3)?,
            owner_id: r.get(4)?,
            owner_alias: r.get(5)?,
            architecture: r.get(6)?,
            boot_mode: r.get(7)?,
            root_device_type: r.get(8)?,
            root_device_name: r.get(9)?,
            virtualization_type: r.get(10)?,
            state: r.get(11)?,
            state_reason: r.get(12)?,
            creation_date: r.get(13)?,
            public: r.get(14)?,
            image_location: r.get(15)?,
            root_source: None,
            root_blob: r.get(17)?,
            kernel_source: None,
            ramdisk_source: None,
            kernel_cmdline: r.get(20)?,
            source_image_id: r.get(21)?,
            source_image_region: r.get(22)?,
            source_instance_id: r.get(23)?,
            catalog_key: r.get(24)?,
            block_device_mappings: Vec::new(),
        },
        [r.get(16)?, r.get(18)?, r.get(19)?],
        r.get(25)?,
    ))
}

impl ImageRow {
    fn parse(self) -> Result<ImageState> {
        let ImageRow(mut image, [root, kernel, ramdisk], bdm) = self;
        image.root_source = from_opt_json(root)?;
        image.kernel_source = from_opt_json(kernel)?;
        image.ramdisk_source = from_opt_json(ramdisk)?;
        image.block_device_mappings = serde_json::from_str(&bdm)?;
        Ok(image)
    }
}

impl Db<'_> {
    /// Insert or replace an AMI and its snapshot references.
    pub fn put_image(&self, i: &ImageState) -> Result<()> {
        self.conn.execute(
            &format!(
                "INSERT INTO images ({IMAGE_COLUMNS}) VALUES \
                 (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20,?21,?22,?23,?24,?25,?26) \
                 ON CONFLICT(image_id) DO UPDATE SET {}",
                upsert_set(IMAGE_COLUMNS)
            ),
            params![
                i.image_id,
                i.region,
                i.name,
                i.description,
                i.owner_id,
                i.owner_alias,
                i.architecture,
                i.boot_mode,
                i.root_device_type,
                i.root_device_name,
                i.virtualization_type,
                i.state,
                i.state_reason,
                i.creation_date,
                i.public,
                i.image_location,
                opt_json(&i.root_source)?,
                i.root_blob,
                opt_json(&i.kernel_source)?,
                opt_json(&i.ramdisk_source)?,
                i.kernel_cmdline,
                i.source_image_id,
                i.source_image_region,
                i.source_instance_id,
                i.catalog_key,
                to_json(&i.block_device_mappings)?,
            ],
        )?;
        self.conn.execute(
            "DELETE FROM image_snapshots WHERE image_id = ?1",
            [&i.image_id],
        )?;
        for snap in i.snapshot_ids() {
            self.conn.execute(
                "INSERT OR IGNORE INTO image_snapshots (image_id, snapshot_id) VALUES (?1, ?2)",
                params![i.image_id, snap],
            )?;
        }
        Ok(())
    }

    /// One AMI by id, in any region.
    pub fn image(&self, image_id: &str) -> Result<Option<ImageState>> {
        Ok(self.images_where("image_id = ?1", [image_id])?.pop())
    }

    /// All AMIs of a region, ordered by id.
    pub fn images_in_region(&self, region: &str) -> Result<Vec<ImageState>> {
        self.images_where("region = ?1 ORDER BY image_id", [region])
    }

    /// All AMIs that come from catalog files.
    pub fn catalog_images(&self) -> Result<Vec<ImageState>> {
        self.images_where("catalog_key IS NOT NULL", [])
    }

    /// AMIs in a state, in any region (recovery looks for `pending` ones).
    pub fn images_in_state(&self, state: ImageStateName) -> Result<Vec<ImageState>> {
        self.images_where("state = ?1 ORDER BY image_id", [state])
    }

    /// AMIs matching a `WHERE` clause (written here, never from user input).
    fn images_where(&self, clause: &str, params: impl rusqlite::Params) -> Result<Vec<ImageState>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {IMAGE_COLUMNS} FROM images WHERE {clause}"
        ))?;
        let rows = stmt.query_map(params, image_row)?;
        rows.map(|r| r?.parse()).collect()
    }

    /// Delete an AMI (its launch permissions and snapshot references go with it).
    pub fn delete_image(&self, image_id: &str) -> Result<bool> {
        self.delete_tags_of(image_id)?;
        Ok(self
            .conn
            .execute("DELETE FROM images WHERE image_id = ?1", [image_id])?
            > 0)
    }

    /// AMIs whose block device mappings use a snapshot.
    pub fn images_using_snapshot(&self, snapshot_id: &str) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare(
            "SELECT image_id FROM image_snapshots WHERE snapshot_id = ?1 ORDER BY image_id",
        )?;
        let rows = stmt.query_map([snapshot_id], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Accounts explicitly allowed to launch an AMI.
    pub fn launch_users(&self, image_id: &str) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare(
            "SELECT user_id FROM launch_permissions WHERE image_id = ?1 ORDER BY user_id",
        )?;
        let rows = stmt.query_map([image_id], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// AMI ids an account was given explicit launch permission for.
    pub fn images_shared_with(&self, account: &str) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT image_id FROM launch_permissions WHERE user_id = ?1")?;
        let rows = stmt.query_map([account], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Grant an account launch permission.
    pub fn add_launch_user(&self, image_id: &str, user_id: &str) -> Result<()> {
        self.conn.execute(
            "INSERT OR IGNORE INTO launch_permissions (image_id, user_id) VALUES (?1, ?2)",
            params![image_id, user_id],
        )?;
        Ok(())
    }

    /// Revoke an account's launch permission.
    pub fn remove_launch_user(&self, image_id: &str, user_id: &str) -> Result<()> {
        self.conn.execute(
            "DELETE FROM launch_permissions WHERE image_id = ?1 AND user_id = ?2",
            params![image_id, user_id],
        )?;
        Ok(())
    }

    /// Revoke every explicit launch permission of an AMI.
    pub fn clear_launch_users(&self, image_id: &str) -> Result<()> {
        self.conn.execute(
            "DELETE FROM launch_permissions WHERE image_id = ?1",
            [image_id],
        )?;
        Ok(())
    }

    /// Ids of every image record.
    pub fn image_id_set(&self) -> Result<std::collections::HashSet<String>> {
        self.id_set("SELECT image_id FROM images")
    }

    /// Record the fetched root blob of an instance-store AMI.
    pub fn set_image_root_blob(&self, image_id: &str, sha256: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE images SET root_blob = ?2 WHERE image_id = ?1",
            params![image_id, sha256],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::image;
    use super::super::Store;

    #[test]
    fn images_round_trip_and_track_snapshot_use() {
        let dir = tempfile::tempdir().unwrap();
        let mut store =
            Store::open(&dir.path().join("state.db"), &dir.path().join("lock")).unwrap();
        store.write(|db| db.put_image(&image("ami-1"))).unwrap();
        let got = store.read(|db| db.image("ami-1")).unwrap().unwrap();
        assert_eq!(got, image("ami-1"));
        let users = store.read(|db| db.images_using_snapshot("snap-1")).unwrap();
        assert_eq!(users, vec!["ami-1".to_string()]);
        store.write(|db| db.delete_image("ami-1")).unwrap();
        let users = store.read(|db| db.images_using_snapshot("snap-1")).unwrap();
        assert!(users.is_empty());
    }
}
