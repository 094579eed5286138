//! Attributes EC2 keeps on instances and snapshots that are not part of
//! their records: an instance's modifiable attributes (`disableApiTermination`,
//! `enaSupport`, …) by EC2 name, and a snapshot's `createVolumePermission`.
//! Their rows are deleted with the object (triggers of migration 4).

use super::{Db, Result};

impl Db<'_> {
    /// The stored attributes of an instance: (EC2 name, JSON value).
    pub fn instance_attributes(
        &self,
        instance_id: &str,
    ) -> Result<Vec<(String, serde_json::Value)>> {
        let mut stmt = self.conn.prepare(
            "SELECT name, value FROM instance_attributes WHERE instance_id = ?1 ORDER BY name",
        )?;
        let rows = stmt.query_map([instance_id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, value) = row?;
            out.push((name, serde_json::from_str(&value)?));
        }
        Ok(out)
    }

    /// Set one attribute of an instance.
    pub fn set_instance_attribute(
        &self,
        instance_id: &str,
        name: &str,
        value: &serde_json::Value,
    ) -> Result<()> {
        self.conn.execute(
            "INSERT INTO instance_attributes (instance_id, name, value) VALUES (?1, ?2, ?3) \
             ON CONFLICT(instance_id, name) DO UPDATE SET value = excluded.value",
            [instance_id, name, &value.to_string()],
        )?;
        Ok(())
    }

    /// Who may create volumes from a snapshot: account ids, and `all` for everyone.
    pub fn snapshot_volume_permissions(&self, snapshot_id: &str) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare(
            "SELECT grantee FROM snapshot_volume_permissions WHERE snapshot_id = ?1 ORDER BY grantee",
        )?;
        let rows = stmt.query_map([snapshot_id], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Grant (`add`) or withdraw a snapshot's createVolumePermission.
    pub fn set_snapshot_volume_permission(
        &self,
        snapshot_id: &str,
        grantee: &str,
        add: bool,
    ) -> Result<()> {
        let sql = if add {
            "INSERT OR IGNORE INTO snapshot_volume_permissions (snapshot_id, grantee) VALUES (?1, ?2)"
        } else {
            "DELETE FROM snapshot_volume_permissions WHERE snapshot_id = ?1 AND grantee = ?2"
        };
        self.conn.execute(sql, [snapshot_id, grantee])?;
        Ok(())
    }

    /// Withdraw every createVolumePermission of a snapshot.
    pub fn clear_snapshot_volume_permissions(&self, snapshot_id: &str) -> Result<()> {
        self.conn.execute(
            "DELETE FROM snapshot_volume_permissions WHERE snapshot_id = ?1",
            [snapshot_id],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Store;
    use serde_json::json;

    #[test]
    fn attributes_round_trip_and_go_with_their_object() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db"), &dir.path().join("s.lock")).unwrap();
        store
            .write(|db| -> super::Result<()> {
                db.set_instance_attribute("i-1", "enaSupport", &json!(true))?;
                db.set_instance_attribute("i-1", "enaSupport", &json!(false))?;
                db.set_snapshot_volume_permission("snap-1", "111111111111", true)?;
                db.set_snapshot_volume_permission("snap-1", "all", true)?;
                db.set_snapshot_volume_permission("snap-1", "all", false)?;
                Ok(())
            })
            .unwrap();
        let (attrs, perms) = store
            .read(|db| -> super::Result<_> {
                Ok((
                    db.instance_attributes("i-1")?,
                    db.snapshot_volume_permissions("snap-1")?,
                ))
            })
            .unwrap();
        assert_eq!(attrs, vec![("enaSupport".to_string(), json!(false))]);
        assert_eq!(perms, vec!["111111111111".to_string()]);
    }
}
