//! EBS volume records: the `volumes` table and `volume_bases`, the snapshot
//! layer each volume's qcow2 overlay sits on now (it moves when a snapshot
//! under it is merged away).

use super::{upsert_set, Db, Result};
use crate::domain::VolumeStateName;
use rusqlite::{params, OptionalExtension, Row};

/// A stored EBS volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeState {
    pub volume_id: String,
    pub region: String,
    pub owner_id: String,
    pub size_gib: u64,
    pub snapshot_id: Option<String>,
    /// creating, available, in-use, deleting.
    pub state: VolumeStateName,
    pub create_time: String,
    pub availability_zone: String,
    pub volume_type: String,
    pub instance_id: Option<String>,
    pub device: Option<String>,
    pub attach_time: Option<String>,
    pub delete_on_termination: bool,
}

pub(super) const VOLUME_COLUMNS: &str =
    "volume_id, region, owner_id, size_gib, snapshot_id, state, \
    create_time, availability_zone, volume_type, instance_id, device, attach_time, \
    delete_on_termination";

pub(super) fn volume_row(r: &Row) -> rusqlite::Result<VolumeState> {
    Ok(VolumeState {
        volume_id: r.get(0)?,
        region: r.get(1)?,
        owner_id: r.get(2)?,
        size_gib: r.get(3)?,
        snapshot_id: r.get(4)?,
        state: r.get(5)?,
        create_time: r.get(6)?,
        availability_zone: r.get(7)?,
        volume_type: r.get(8)?,
        instance_id: r.get(9)?,
        device: r.get(10)?,
        attach_time: r.get(11)?,
        delete_on_termination: r.get(12)?,
    })
}

impl Db<'_> {
    /// Insert or update a volume.
    pub fn put_volume(&self, v: &VolumeState) -> Result<()> {
        self.conn.execute(
            &format!(
                "INSERT INTO volumes ({VOLUME_COLUMNS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13) \
                 ON CONFLICT(volume_id) DO UPDATE SET {}",
                upsert_set(VOLUME_COLUMNS)
            ),
            params![
                v.volume_id,
                v.region,
                v.owner_id,
                v.size_gib,
                v.snapshot_id,
                v.state,
                v.create_time,
                v.availability_zone,
                v.volume_type,
                v.instance_id,
                v.device,
                v.attach_time,
                v.delete_on_termination,
            ],
        )?;
        Ok(())
    }

    /// One volume by id.
    pub fn volume(&self, volume_id: &str) -> Result<Option<VolumeState>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {VOLUME_COLUMNS} FROM volumes WHERE volume_id = ?1"),
                [volume_id],
                volume_row,
            )
            .optional()?)
    }

    /// All volumes of a region.
    pub fn volumes_in_region(&self, region: &str) -> Result<Vec<VolumeState>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {VOLUME_COLUMNS} FROM volumes WHERE region = ?1 ORDER BY create_time, volume_id"
        ))?;
        let rows = stmt.query_map([region], volume_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Volumes made from a snapshot (they depend on its data).
    pub fn volumes_from_snapshot(&self, snapshot_id: &str) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT volume_id FROM volumes WHERE snapshot_id = ?1")?;
        let rows = stmt.query_map([snapshot_id], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Delete a volume record.
    pub fn delete_volume(&self, volume_id: &str) -> Result<()> {
        self.delete_tags_of(volume_id)?;
        self.delete_volume_changes(volume_id)?;
        self.conn
            .execute("DELETE FROM volume_bases WHERE volume_id = ?1", [volume_id])?;
        self.conn
            .execute("DELETE FROM volumes WHERE volume_id = ?1", [volume_id])?;
        Ok(())
    }

    /// The snapshot whose layer a volume's overlay sits on directly
    /// (`None`: standalone or on a blob only). Without a recorded base, the
    /// one it was created from.
    pub fn volume_base(&self, v: &VolumeState) -> Result<Option<String>> {
        let row: Option<Option<String>> = self
            .conn
            .query_row(
                "SELECT base_snapshot_id FROM volume_bases WHERE volume_id = ?1",
                [&v.volume_id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(row.unwrap_or_else(|| v.snapshot_id.clone()))
    }

    /// Record the snapshot a volume's overlay now sits on.
    pub fn set_volume_base(&self, volume_id: &str, base: Option<&str>) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO volume_bases (volume_id, base_snapshot_id) VALUES (?1, ?2)",
            params![volume_id, base],
        )?;
        Ok(())
    }

    /// Volumes whose overlay sits directly on `snapshot_id`'s layer.
    pub fn volumes_on_snapshot(&self, snapshot_id: &str) -> Result<Vec<VolumeState>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {} FROM volumes v LEFT JOIN volume_bases b ON b.volume_id = v.volume_id \
             WHERE CASE WHEN b.volume_id IS NULL THEN v.snapshot_id ELSE b.base_snapshot_id END = ?1 \
             ORDER BY v.volume_id",
            VOLUME_COLUMNS
                .split(',')
                .map(|c| format!("v.{}", c.trim()))
                .collect::<Vec<_>>()
                .join(", ")
        ))?;
        let rows = stmt.query_map([snapshot_id], volume_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Ids of every volume record.
    pub fn volume_id_set(&self) -> Result<std::collections::HashSet<String>> {
        self.id_set("SELECT volume_id FROM volumes")
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::temp_store;
    use super::*;

    fn volume(id: &str, snapshot_id: Option<&str>) -> VolumeState {
        VolumeState {
            volume_id: id.into(),
            region: "us-east-1".into(),
            owner_id: "000000000000".into(),
            size_gib: 8,
            snapshot_id: snapshot_id.map(Into::into),
            state: VolumeStateName::InUse,
            create_time: "2026-01-01T00:00:00.000Z".into(),
            availability_zone: "us-east-1a".into(),
            volume_type: "gp3".into(),
            instance_id: Some("i-1".into()),
            device: Some("/dev/xvda".into()),
            attach_time: Some("2026-01-01T00:00:00.000Z".into()),
            delete_on_termination: true,
        }
    }

    #[test]
    fn volumes_round_trip_and_follow_their_base() {
        let (_dir, mut store) = temp_store();
        let v = volume("vol-1", Some("snap-1"));
        store.write(|db| db.put_volume(&v)).unwrap();
        assert_eq!(
            store.read(|db| db.volume("vol-1")).unwrap(),
            Some(v.clone())
        );
        // Without a recorded base, the volume sits on its source snapshot.
        assert_eq!(
            store.read(|db| db.volume_base(&v)).unwrap().as_deref(),
            Some("snap-1")
        );
        assert_eq!(
            store.read(|db| db.volumes_on_snapshot("snap-1")).unwrap(),
            vec![v.clone()]
        );
        store
            .write(|db| db.set_volume_base("vol-1", Some("snap-0")))
            .unwrap();
        assert!(store
            .read(|db| db.volumes_on_snapshot("snap-1"))
            .unwrap()
            .is_empty());
        assert_eq!(
            store.read(|db| db.volumes_on_snapshot("snap-0")).unwrap(),
            vec![v.clone()]
        );
        assert_eq!(
            store.read(|db| db.volumes_from_snapshot("snap-1")).unwrap(),
            vec!["vol-1".to_string()]
        );
        store.write(|db| db.delete_volume("vol-1")).unwrap();
        assert_eq!(store.read(|db| db.volume("vol-1")).unwrap(), None);
        assert!(store.read(|db| db.volume_id_set()).unwrap().is_empty());
    }
}
