//! Tags: the `tags` table, one key and value per resource id of any kind;
//! deleting a resource record deletes its tags.

use super::{Db, Result};
use rusqlite::params;

/// One tag on one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagState {
    pub resource_id: String,
    pub key: String,
    pub value: String,
}

impl Db<'_> {
    /// Set (add or overwrite) a tag.
    pub fn put_tag(&self, resource_id: &str, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO tags (resource_id, key, value) VALUES (?1, ?2, ?3)",
            params![resource_id, key, value],
        )?;
        Ok(())
    }

    /// Delete a tag; with `value`, only when it has that value.
    pub fn delete_tag(&self, resource_id: &str, key: &str, value: Option<&str>) -> Result<()> {
        match value {
            Some(v) => self.conn.execute(
                "DELETE FROM tags WHERE resource_id = ?1 AND key = ?2 AND value = ?3",
                params![resource_id, key, v],
            )?,
            None => self.conn.execute(
                "DELETE FROM tags WHERE resource_id = ?1 AND key = ?2",
                params![resource_id, key],
            )?,
        };
        Ok(())
    }

    /// Delete every tag of a resource (its record is going).
    pub(super) fn delete_tags_of(&self, resource_id: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM tags WHERE resource_id = ?1", [resource_id])?;
        Ok(())
    }

    /// Tags of one resource, ordered by key.
    pub fn tags_of(&self, resource_id: &str) -> Result<Vec<TagState>> {
        let mut stmt = self.conn.prepare(
            "SELECT resource_id, key, value FROM tags WHERE resource_id = ?1 ORDER BY key",
        )?;
        let rows = stmt.query_map([resource_id], |r| {
            Ok(TagState {
                resource_id: r.get(0)?,
                key: r.get(1)?,
                value: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every tag, ordered by resource and key.
    pub fn all_tags(&self) -> Result<Vec<TagState>> {
        let mut stmt = self
            .conn
            .prepare("SELECT resource_id, key, value FROM tags ORDER BY resource_id, key")?;
        let rows = stmt.query_map([], |r| {
            Ok(TagState {
                resource_id: r.get(0)?,
                key: r.get(1)?,
                value: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::temp_store;
    use super::*;

    fn tag(resource_id: &str, key: &str, value: &str) -> TagState {
        TagState {
            resource_id: resource_id.into(),
            key: key.into(),
            value: value.into(),
        }
    }

    #[test]
    fn tags_round_trip_overwrite_and_delete_by_value() {
        let (_dir, mut store) = temp_store();
        store
            .write(|db| {
                db.put_tag("i-1", "Name", "a")?;
                db.put_tag("i-1", "Name", "b")?;
                db.put_tag("i-1", "env", "dev")?;
                db.put_tag("ami-1", "Name", "c")
            })
            .unwrap();
        assert_eq!(
            store.read(|db| db.tags_of("i-1")).unwrap(),
            vec![tag("i-1", "Name", "b"), tag("i-1", "env", "dev")]
        );
        store
            .write(|db| {
                db.delete_tag("i-1", "Name", Some("a"))?;
                db.delete_tag("i-1", "env", None)
            })
            .unwrap();
        assert_eq!(
            store.read(|db| db.all_tags()).unwrap(),
            vec![tag("ami-1", "Name", "c"), tag("i-1", "Name", "b")]
        );
    }
}
