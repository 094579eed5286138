//! The only module that touches the database: a SQLite file under
//! `$AMIRUN_HOME` in WAL mode, so several `amirun` processes can read and
//! write at once.
//!
//! Every change that spans objects runs in one [`Store::write`] closure, a
//! `BEGIN IMMEDIATE` transaction: writers queue on SQLite's lock (with a
//! generous busy timeout) instead of failing, and a failed operation leaves
//! nothing half-made. No transaction is held across a download or a boot:
//! callers fetch first, then record.
//!
//! The schema is versioned with `PRAGMA user_version`; [`MIGRATIONS`]
//! (`store/schema.rs`) holds one SQL batch per version, applied in order
//! inside one transaction.
//!
//! This file holds the connection, the transactions ([`Store`], [`Db`]) and
//! the error type. Each table family has a file of its own under `store/`
//! with its row type and an `impl Db<'_>` block of its statements:
//! `images` (with launch permissions), `snapshots`, `blobs`, `tags`,
//! `instances`, `volumes` (with their base layers), `key_pairs`, `catalog`.

mod attributes;
mod blobs;
mod catalog;
mod images;
mod instances;
mod key_pairs;
mod schema;
mod snapshots;
mod tags;
mod volumes;

pub use blobs::BlobState;
pub use images::{BlockDeviceMapping, EbsBlockDevice, ImageState, SourceSpec};
pub use instances::{InstanceDevice, InstanceState};
pub use key_pairs::KeyPairState;
pub use schema::MIGRATIONS;
pub use snapshots::SnapshotState;
pub use tags::TagState;
pub use volumes::VolumeState;

mod launch_templates;
mod remote;
mod volume_changes;

pub use launch_templates::{LaunchTemplateState, LaunchTemplateVersionState};
pub use remote::{RemoteImageState, RemoteInstanceState};
pub use volume_changes::{AttachIntent, VolumeModificationState, VolumePerformance};
pub mod vpc;

use crate::domain::{
    Accel, Architecture, BootMode, ImageStateName, InstanceStateName, RootDeviceType,
    ShutdownBehavior, SnapshotStateName, VolumeStateName,
};
use crate::error_code::ErrorCode;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{Connection, TransactionBehavior};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What went wrong with the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened.
    #[error("Cannot open the state database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// The lock serialising database opens could not be taken.
    #[error("Cannot lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A statement failed.
    #[error("State database error")]
    Sql(#[from] rusqlite::Error),
    /// A stored JSON column did not parse.
    #[error("Corrupt record in the state database")]
    Json(#[from] serde_json::Error),
    /// The database was written by a newer amirun.
    #[error("The state database has schema version {found}, newer than this amirun ({supported}); upgrade amirun")]
    TooNew { found: i64, supported: i64 },
}

impl StoreError {
    /// EC2-style error code.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::InternalError
    }
}

/// Result of a store call.
pub type Result<T> = std::result::Result<T, StoreError>;

/// The database.
pub struct Store {
    conn: Connection,
}

/// The domain enums are TEXT columns holding EC2's spellings (the same
/// strings the columns held before the enums existed).
macro_rules! text_column {
    ($($ty:ty),+) => {$(
        impl ToSql for $ty {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }
        impl FromSql for $ty {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                value
                    .as_str()?
                    .parse()
                    .map_err(|e| FromSqlError::Other(Box::new(e)))
            }
        }
    )+};
}

text_column!(
    Accel,
    Architecture,
    BootMode,
    ImageStateName,
    InstanceStateName,
    RootDeviceType,
    ShutdownBehavior,
    SnapshotStateName,
    VolumeStateName
);

/// A view of the database inside one transaction; all statements live here.
pub struct Db<'c> {
    conn: &'c Connection,
}

impl Store {
    /// Open (creating if needed) the database at `path` and bring its schema up to date.
    ///
    /// Switching a new database to WAL and migrating are done under an
    /// exclusive lock on `init_lock`: SQLite answers `SQLITE_BUSY` at once
    /// (without its busy handler) when two processes switch journal modes
    /// of a fresh file together.
    pub fn open(path: &Path, init_lock: &Path) -> Result<Store> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(init_lock)
            .map_err(|e| StoreError::Lock {
                path: init_lock.to_owned(),
                source: e,
            })?;
        let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, errno)| StoreError::Lock {
                path: init_lock.to_owned(),
                source: errno.into(),
            })?;
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        conn.busy_timeout(Duration::from_secs(60))?;
        // WAL lets readers proceed while one process writes; the mode is
        // persistent, so only the first open of a new database changes it.
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        tracing::debug!(journal_mode = %mode, "opened state database");
        conn.execute_batch("PRAGMA foreign_keys=ON; PRAGMA synchronous=NORMAL;")?;
        let mut store = Store { conn };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<()> {
        let supported = MIGRATIONS.len() as i64;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > supported {
            return Err(StoreError::TooNew {
                found: version,
                supported,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(sql)?;
            tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Run `f` in one write transaction (`BEGIN IMMEDIATE`); commit if it returns `Ok`.
    pub fn write<T, E: From<StoreError>>(
        &mut self,
        f: impl FnOnce(&Db) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(StoreError::from)?;
        let out = f(&Db { conn: &tx })?;
        tx.commit().map_err(StoreError::from)?;
        Ok(out)
    }

    /// Run `f` in one read transaction (a consistent snapshot).
    pub fn read<T, E: From<StoreError>>(
        &mut self,
        f: impl FnOnce(&Db) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Deferred)
            .map_err(StoreError::from)?;
        let out = f(&Db { conn: &tx })?;
        tx.finish().map_err(StoreError::from)?;
        Ok(out)
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<String> {
    Ok(serde_json::to_string(v)?)
}

fn opt_json<T: Serialize>(v: &Option<T>) -> Result<Option<String>> {
    v.as_ref().map(to_json).transpose()
}

fn from_opt_json<T: for<'de> Deserialize<'de>>(s: Option<String>) -> Result<Option<T>> {
    Ok(s.map(|s| serde_json::from_str(&s)).transpose()?)
}

/// `c = excluded.c` for every column but the first (the key): an upsert
/// that updates in place, so rows that reference this one are kept.
fn upsert_set(columns: &str) -> String {
    columns
        .split(',')
        .map(str::trim)
        .skip(1)
        .map(|c| format!("{c} = excluded.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Db<'_> {
    fn id_set(&self, sql: &str) -> Result<std::collections::HashSet<String>> {
        let mut stmt = self.conn.prepare(sql)?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh store in its own temp dir (keep the dir alive while using it).
    pub(super) fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db"), &dir.path().join("lock")).unwrap();
        (dir, store)
    }

    /// An available EBS-backed AMI whose root is `snap-1`.
    pub(super) fn image(id: &str) -> ImageState {
        ImageState {
            image_id: id.into(),
            region: "us-east-1".into(),
            name: "n".into(),
            description: None,
            owner_id: "000000000000".into(),
            owner_alias: None,
            architecture: Architecture::X86_64,
            boot_mode: Some(BootMode::Uefi),
            root_device_type: RootDeviceType::Ebs,
            root_device_name: "/dev/xvda".into(),
            virtualization_type: "hvm".into(),
            state: ImageStateName::Available,
            state_reason: None,
            creation_date: "2026-01-01T00:00:00.000Z".into(),
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
            block_device_mappings: vec![BlockDeviceMapping {
                device_name: "/dev/xvda".into(),
                ebs: Some(EbsBlockDevice {
                    snapshot_id: Some("snap-1".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }],
        }
    }

    #[test]
    fn failed_write_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut store =
            Store::open(&dir.path().join("state.db"), &dir.path().join("lock")).unwrap();
        let r: std::result::Result<(), StoreError> = store.write(|db| {
            db.put_image(&image("ami-2"))?;
            Err(StoreError::TooNew {
                found: 9,
                supported: 1,
            })
        });
        assert!(r.is_err());
        assert!(store.read(|db| db.image("ami-2")).unwrap().is_none());
    }

    #[test]
    fn reopening_keeps_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let lock = dir.path().join("lock");
        drop(Store::open(&path, &lock).unwrap());
        let store = Store::open(&path, &lock).unwrap();
        let v: i64 = store
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
    }
}
