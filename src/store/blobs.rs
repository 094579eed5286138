//! Blob records: the `blobs` table, the facts of each file in the
//! content-addressed blob store (size, virtual size, where it first came from).

use super::{Db, Result};
use rusqlite::{params, OptionalExtension};

/// A stored blob's facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobState {
    pub sha256: String,
    pub size: u64,
    pub virtual_size: u64,
    pub source_format: String,
    pub first_source: String,
    pub created: String,
}

impl Db<'_> {
    /// Record a stored blob (first source wins).
    pub fn put_blob(&self, b: &BlobState) -> Result<()> {
        self.conn.execute(
            "INSERT OR IGNORE INTO blobs (sha256, size, virtual_size, source_format, first_source, created) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![b.sha256, b.size, b.virtual_size, b.source_format, b.first_source, b.created],
        )?;
        Ok(())
    }

    /// A stored blob's facts.
    pub fn blob(&self, sha256: &str) -> Result<Option<BlobState>> {
        Ok(self
            .conn
            .query_row(
                "SELECT sha256, size, virtual_size, source_format, first_source, created FROM blobs WHERE sha256 = ?1",
                [sha256],
                |r| {
                    Ok(BlobState {
                        sha256: r.get(0)?,
                        size: r.get(1)?,
                        virtual_size: r.get(2)?,
                        source_format: r.get(3)?,
                        first_source: r.get(4)?,
                        created: r.get(5)?,
                    })
                },
            )
            .optional()?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::temp_store;
    use super::*;

    fn blob(first_source: &str) -> BlobState {
        BlobState {
            sha256: "ab".repeat(32),
            size: 1 << 20,
            virtual_size: 1 << 30,
            source_format: "raw".into(),
            first_source: first_source.into(),
            created: "2026-01-01T00:00:00.000Z".into(),
        }
    }

    #[test]
    fn blobs_round_trip_and_first_source_wins() {
        let (_dir, mut store) = temp_store();
        store.write(|db| db.put_blob(&blob("file:///a"))).unwrap();
        store.write(|db| db.put_blob(&blob("file:///b"))).unwrap();
        let got = store.read(|db| db.blob(&"ab".repeat(32))).unwrap();
        assert_eq!(got, Some(blob("file:///a")));
        assert_eq!(store.read(|db| db.blob("cd")).unwrap(), None);
    }
}
