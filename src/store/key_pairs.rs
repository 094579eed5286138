//! Key pair records: the `key_pairs` table, one named public key per
//! account and region (with the private key when amirun made it).

use super::{Db, Result};
use rusqlite::{params, Row};

/// A stored key pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPairState {
    pub key_pair_id: String,
    pub region: String,
    pub owner_id: String,
    pub key_name: String,
    pub key_type: String,
    pub fingerprint: String,
    pub public_key: String,
    /// Kept so `amirun ssh` can log in with a key amirun created.
    pub private_key: Option<String>,
    pub create_time: String,
}

const KEY_PAIR_COLUMNS: &str = "key_pair_id, region, owner_id, key_name, key_type, fingerprint, \
    public_key, private_key, create_time";

fn key_pair_row(r: &Row) -> rusqlite::Result<KeyPairState> {
    Ok(KeyPairState {
        key_pair_id: r.get(0)?,
        region: r.get(1)?,
        owner_id: r.get(2)?,
        key_name: r.get(3)?,
        key_type: r.get(4)?,
        fingerprint: r.get(5)?,
        public_key: r.get(6)?,
        private_key: r.get(7)?,
        create_time: r.get(8)?,
    })
}

impl Db<'_> {
    /// Insert a key pair.
    pub fn insert_key_pair(&self, k: &KeyPairState) -> Result<()> {
        self.conn.execute(
            &format!(
                "INSERT INTO key_pairs ({KEY_PAIR_COLUMNS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)"
            ),
            params![
                k.key_pair_id,
                k.region,
                k.owner_id,
                k.key_name,
                k.key_type,
                k.fingerprint,
                k.public_key,
                k.private_key,
                k.create_time,
            ],
        )?;
        Ok(())
    }

    /// The caller's key pairs in a region.
    pub fn key_pairs(&self, region: &str, owner_id: &str) -> Result<Vec<KeyPairState>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {KEY_PAIR_COLUMNS} FROM key_pairs WHERE region = ?1 AND owner_id = ?2 ORDER BY key_name"
        ))?;
        let rows = stmt.query_map([region, owner_id], key_pair_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Delete a key pair by name.
    pub fn delete_key_pair(&self, region: &str, owner_id: &str, key_name: &str) -> Result<bool> {
        Ok(self.conn.execute(
            "DELETE FROM key_pairs WHERE region = ?1 AND owner_id = ?2 AND key_name = ?3",
            params![region, owner_id, key_name],
        )? > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::temp_store;
    use super::*;

    fn key_pair(name: &str) -> KeyPairState {
        KeyPairState {
            key_pair_id: format!("key-{name}"),
            region: "us-east-1".into(),
            owner_id: "000000000000".into(),
            key_name: name.into(),
            key_type: "ed25519".into(),
            fingerprint: "fp".into(),
            public_key: "ssh-ed25519 AAAA".into(),
            private_key: Some("secret".into()),
            create_time: "2026-01-01T00:00:00.000Z".into(),
        }
    }

    #[test]
    fn key_pairs_round_trip_per_owner_and_delete() {
        let (_dir, mut store) = temp_store();
        store
            .write(|db| {
                db.insert_key_pair(&key_pair("b"))?;
                db.insert_key_pair(&key_pair("a"))
            })
            .unwrap();
        assert_eq!(
            store
                .read(|db| db.key_pairs("us-east-1", "000000000000"))
                .unwrap(),
            vec![key_pair("a"), key_pair("b")]
        );
        assert!(store
            .read(|db| db.key_pairs("us-east-1", "111111111111"))
            .unwrap()
            .is_empty());
        assert!(store
            .write(|db| db.delete_key_pair("us-east-1", "000000000000", "a"))
            .unwrap());
        assert!(!store
            .write(|db| db.delete_key_pair("us-east-1", "000000000000", "a"))
            .unwrap());
    }
}
