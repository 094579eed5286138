//! EBS snapshot records: the `snapshots` table (each a qcow2 layer on a
//! parent snapshot or a blob, or a source not yet fetched).

use super::{from_opt_json, opt_json, upsert_set, Db, Result, SourceSpec};
use crate::domain::SnapshotStateName;
use rusqlite::{params, Row};

/// A stored EBS snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotState {
    pub snapshot_id: String,
    pub region: String,
    pub owner_id: String,
    pub owner_alias: Option<String>,
    pub volume_id: Option<String>,
    pub volume_size_gib: u64,
    pub state: SnapshotStateName,
    pub description: Option<String>,
    pub start_time: String,
    /// Where its data comes from while it is not yet fetched (catalog AMIs).
    pub source: Option<SourceSpec>,
    /// The blob holding its data, once fetched.
    pub blob_sha256: Option<String>,
    /// The snapshot this one is a qcow2 layer on.
    pub parent_snapshot_id: Option<String>,
    /// Whether `snapshots/<id>.qcow2` holds its own layer.
    pub has_file: bool,
    pub storage_bytes: Option<u64>,
    pub catalog_key: Option<String>,
}

const SNAPSHOT_COLUMNS: &str = "snapshot_id, region, owner_id, owner_alias, volume_id, \
    volume_size_gib, state, description, start_time, source, blob_sha256, parent_snapshot_id, \
    has_file, storage_bytes, catalog_key";

struct SnapshotRow(SnapshotState, Option<String>);

fn snapshot_row(r: &Row) -> rusqlite::Result<SnapshotRow> {
    Ok(SnapshotRow(
        SnapshotState {
            snapshot_id: r.get(0)?,
            region: r.get(1)?,
            owner_id: r.get(2)?,
            owner_alias: r.get(3)?,
            volume_id: r.get(4)?,
            volume_size_gib: r.get(5)?,
            state: r.get(6)?,
            description: r.get(7)?,
            start_time: r.get(8)?,
            source: None,
            blob_sha256: r.get(10)?,
            parent_snapshot_id: r.get(11)?,
            has_file: r.get(12)?,
            storage_bytes: r.get(13)?,
            catalog_key: r.get(14)?,
        },
        r.get(9)?,
    ))
}

impl SnapshotRow {
    fn parse(self) -> Result<SnapshotState> {
        let SnapshotRow(mut s, source) = self;
        s.source = from_opt_json(source)?;
        Ok(s)
    }
}

impl Db<'_> {
    /// Insert or replace a snapshot.
    pub fn put_snapshot(&self, s: &SnapshotState) -> Result<()> {
        self.conn.execute(
            &format!(
                "INSERT INTO snapshots ({SNAPSHOT_COLUMNS}) VALUES \
                 (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15) \
                 ON CONFLICT(snapshot_id) DO UPDATE SET {}",
                upsert_set(SNAPSHOT_COLUMNS)
            ),
            params![
                s.snapshot_id,
                s.region,
                s.owner_id,
                s.owner_alias,
                s.volume_id,
                s.volume_size_gib,
                s.state,
                s.description,
                s.start_time,
                opt_json(&s.source)?,
                s.blob_sha256,
                s.parent_snapshot_id,
                s.has_file,
                s.storage_bytes,
                s.catalog_key,
            ],
        )?;
        Ok(())
    }

    /// One snapshot by id, in any region.
    pub fn snapshot(&self, snapshot_id: &str) -> Result<Option<SnapshotState>> {
        Ok(self
            .snapshots_where("snapshot_id = ?1", [snapshot_id])?
            .pop())
    }

    /// All snapshots of a region, ordered by id.
    pub fn snapshots_in_region(&self, region: &str) -> Result<Vec<SnapshotState>> {
        self.snapshots_where("region = ?1 ORDER BY snapshot_id", [region])
    }

    /// All snapshots that come from catalog files.
    pub fn catalog_snapshots(&self) -> Result<Vec<SnapshotState>> {
        self.snapshots_where("catalog_key IS NOT NULL", [])
    }

    /// Snapshots in a state, in any region (recovery looks for `pending`
    /// and `deleting` ones).
    pub fn snapshots_in_state(&self, state: SnapshotStateName) -> Result<Vec<SnapshotState>> {
        self.snapshots_where("state = ?1 ORDER BY snapshot_id", [state])
    }

    /// Ids of every snapshot record (the orphan sweep's view of `snapshots/`).
    pub fn snapshot_id_set(&self) -> Result<std::collections::HashSet<String>> {
        self.id_set("SELECT snapshot_id FROM snapshots")
    }

    /// Snapshots matching a `WHERE` clause (written here, never from user input).
    fn snapshots_where(
        &self,
        clause: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<SnapshotState>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE {clause}"
        ))?;
        let rows = stmt.query_map(params, snapshot_row)?;
        rows.map(|r| r?.parse()).collect()
    }

    /// Delete a snapshot record.
    pub fn delete_snapshot(&self, snapshot_id: &str) -> Result<bool> {
        self.delete_tags_of(snapshot_id)?;
        Ok(self.conn.execute(
            "DELETE FROM snapshots WHERE snapshot_id = ?1",
            [snapshot_id],
        )? > 0)
    }

    /// Snapshots whose data is a layer on `snapshot_id`.
    pub fn child_snapshots(&self, snapshot_id: &str) -> Result<Vec<SnapshotState>> {
        self.snapshots_where(
            "parent_snapshot_id = ?1 ORDER BY snapshot_id",
            [snapshot_id],
        )
    }

    /// Record that every snapshot fetched from `source` now has its data in `sha256`.
    pub fn set_snapshot_blob(&self, snapshot_id: &str, sha256: &str, bytes: u64) -> Result<()> {
        self.conn.execute(
            "UPDATE snapshots SET blob_sha256 = ?2, storage_bytes = ?3 WHERE snapshot_id = ?1",
            params![snapshot_id, sha256, bytes],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::temp_store;
    use super::super::SourceSpec;
    use super::*;

    fn snapshot(id: &str, parent: Option<&str>) -> SnapshotState {
        SnapshotState {
            snapshot_id: id.into(),
            region: "us-east-1".into(),
            owner_id: "000000000000".into(),
            owner_alias: None,
            volume_id: Some("vol-1".into()),
            volume_size_gib: 8,
            state: SnapshotStateName::Completed,
            description: Some("d".into()),
            start_time: "2026-01-01T00:00:00.000Z".into(),
            source: Some(SourceSpec {
                url: "file:///x.qcow2".into(),
                sha256: Some("ab".into()),
                checksum_url: None,
                format: Some("qcow2".into()),
            }),
            blob_sha256: None,
            parent_snapshot_id: parent.map(Into::into),
            has_file: true,
            storage_bytes: None,
            catalog_key: None,
        }
    }

    #[test]
    fn snapshots_round_trip_with_children_and_blob() {
        let (_dir, mut store) = temp_store();
        store
            .write(|db| {
                db.put_snapshot(&snapshot("snap-1", None))?;
                db.put_snapshot(&snapshot("snap-2", Some("snap-1")))
            })
            .unwrap();
        let got = store.read(|db| db.snapshot("snap-2")).unwrap().unwrap();
        assert_eq!(got, snapshot("snap-2", Some("snap-1")));
        let children = store.read(|db| db.child_snapshots("snap-1")).unwrap();
        assert_eq!(children, vec![snapshot("snap-2", Some("snap-1"))]);
        store
            .write(|db| db.set_snapshot_blob("snap-1", "cd", 42))
            .unwrap();
        let got = store.read(|db| db.snapshot("snap-1")).unwrap().unwrap();
        assert_eq!(got.blob_sha256.as_deref(), Some("cd"));
        assert_eq!(got.storage_bytes, Some(42));
        assert!(store.write(|db| db.delete_snapshot("snap-2")).unwrap());
        let ids = store.read(|db| db.snapshot_id_set()).unwrap();
        assert_eq!(
            ids.into_iter().collect::<Vec<_>>(),
            vec!["snap-1".to_string()]
        );
    }
}
