//! Catalog sync: the `catalog_sync` table, the fingerprint of the catalog
//! files last synced into the database (so unchanged files are not re-read).

use super::{Db, Result};
use rusqlite::OptionalExtension;

impl Db<'_> {
    /// Fingerprint of the catalog files last synced into the database.
    pub fn catalog_fingerprint(&self) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT fingerprint FROM catalog_sync WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Remember the fingerprint of the catalog files just synced.
    pub fn set_catalog_fingerprint(&self, fingerprint: &str) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO catalog_sync (id, fingerprint) VALUES (1, ?1)",
            [fingerprint],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::temp_store;

    #[test]
    fn catalog_fingerprint_round_trips() {
        let (_dir, mut store) = temp_store();
        assert_eq!(store.read(|db| db.catalog_fingerprint()).unwrap(), None);
        store.write(|db| db.set_catalog_fingerprint("f1")).unwrap();
        store.write(|db| db.set_catalog_fingerprint("f2")).unwrap();
        assert_eq!(
            store
                .read(|db| db.catalog_fingerprint())
                .unwrap()
                .as_deref(),
            Some("f2")
        );
    }
}
