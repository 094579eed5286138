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
//! The schema is versioned with `PRAGMA user_version`; [`MIGRATIONS`] holds
//! one SQL batch per version, applied in order inside one transaction.

use crate::domain::{
    Accel, Architecture, BootMode, ImageStateName, InstanceStateName, RootDeviceType,
    ShutdownBehavior, SnapshotStateName, VolumeStateName,
};
use crate::error_code::ErrorCode;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

mod launch_templates;
mod volume_changes;

pub use launch_templates::{LaunchTemplateState, LaunchTemplateVersionState};
pub use volume_changes::{AttachIntent, VolumeModificationState, VolumePerformance};

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

/// One SQL batch per schema version; index 0 takes a database to version 1.
pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE images (
    image_id            TEXT PRIMARY KEY,
    region              TEXT NOT NULL,
    name                TEXT NOT NULL,
    description         TEXT,
    owner_id            TEXT NOT NULL,
    owner_alias         TEXT,
    architecture        TEXT NOT NULL,
    boot_mode           TEXT,
    root_device_type    TEXT NOT NULL,
    root_device_name    TEXT NOT NULL,
    virtualization_type TEXT NOT NULL,
    state               TEXT NOT NULL,
    state_reason        TEXT,
    creation_date       TEXT NOT NULL,
    public              INTEGER NOT NULL DEFAULT 0,
    image_location      TEXT,
    root_source         TEXT,
    root_blob           TEXT,
    kernel_source       TEXT,
    ramdisk_source      TEXT,
    kernel_cmdline      TEXT,
    source_image_id     TEXT,
    source_image_region TEXT,
    source_instance_id  TEXT,
    catalog_key         TEXT,
    block_device_mappings TEXT NOT NULL
);
CREATE INDEX images_by_region ON images(region);
CREATE UNIQUE INDEX images_by_catalog ON images(catalog_key, region) WHERE catalog_key IS NOT NULL;

CREATE TABLE image_snapshots (
    image_id    TEXT NOT NULL REFERENCES images(image_id) ON DELETE CASCADE,
    snapshot_id TEXT NOT NULL,
    PRIMARY KEY (image_id, snapshot_id)
);
CREATE INDEX image_snapshots_by_snapshot ON image_snapshots(snapshot_id);

CREATE TABLE launch_permissions (
    image_id TEXT NOT NULL REFERENCES images(image_id) ON DELETE CASCADE,
    user_id  TEXT NOT NULL,
    PRIMARY KEY (image_id, user_id)
);

CREATE TABLE snapshots (
    snapshot_id        TEXT PRIMARY KEY,
    region             TEXT NOT NULL,
    owner_id           TEXT NOT NULL,
    owner_alias        TEXT,
    volume_id          TEXT,
    volume_size_gib    INTEGER NOT NULL,
    state              TEXT NOT NULL,
    description        TEXT,
    start_time         TEXT NOT NULL,
    source             TEXT,
    blob_sha256        TEXT,
    parent_snapshot_id TEXT,
    has_file           INTEGER NOT NULL DEFAULT 0,
    storage_bytes      INTEGER,
    catalog_key        TEXT
);
CREATE INDEX snapshots_by_region ON snapshots(region);

CREATE TABLE tags (
    resource_id TEXT NOT NULL,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (resource_id, key)
);

CREATE TABLE blobs (
    sha256        TEXT PRIMARY KEY,
    size          INTEGER NOT NULL,
    virtual_size  INTEGER NOT NULL,
    source_format TEXT NOT NULL,
    first_source  TEXT NOT NULL,
    created       TEXT NOT NULL
);

CREATE TABLE catalog_sync (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    fingerprint TEXT NOT NULL
);
"#,
    r#"
CREATE TABLE instances (
    instance_id        TEXT PRIMARY KEY,
    region             TEXT NOT NULL,
    owner_id           TEXT NOT NULL,
    reservation_id     TEXT NOT NULL,
    image_id           TEXT NOT NULL,
    instance_type      TEXT NOT NULL,
    architecture       TEXT NOT NULL,
    boot_mode          TEXT NOT NULL,
    root_device_type   TEXT NOT NULL,
    root_device_name   TEXT NOT NULL,
    state              TEXT NOT NULL,
    state_reason       TEXT,
    state_transition_reason TEXT,
    launch_time        TEXT NOT NULL,
    key_name           TEXT,
    user_data          BLOB,
    shutdown_behavior  TEXT NOT NULL,
    accel              TEXT NOT NULL,
    accel_reason       TEXT NOT NULL,
    ssh_port           INTEGER,
    imds_port          INTEGER,
    launch_index       INTEGER NOT NULL,
    metadata_options   TEXT NOT NULL,
    devices            TEXT NOT NULL,
    updated            TEXT NOT NULL
);
CREATE INDEX instances_by_region ON instances(region);

CREATE TABLE volumes (
    volume_id             TEXT PRIMARY KEY,
    region                TEXT NOT NULL,
    owner_id              TEXT NOT NULL,
    size_gib              INTEGER NOT NULL,
    snapshot_id           TEXT,
    state                 TEXT NOT NULL,
    create_time           TEXT NOT NULL,
    availability_zone     TEXT NOT NULL,
    volume_type           TEXT NOT NULL,
    instance_id           TEXT,
    device                TEXT,
    attach_time           TEXT,
    delete_on_termination INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX volumes_by_region ON volumes(region);

CREATE TABLE key_pairs (
    key_pair_id  TEXT PRIMARY KEY,
    region       TEXT NOT NULL,
    owner_id     TEXT NOT NULL,
    key_name     TEXT NOT NULL,
    key_type     TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    public_key   TEXT NOT NULL,
    private_key  TEXT,
    create_time  TEXT NOT NULL,
    UNIQUE (region, owner_id, key_name)
);
"#,
    // 3: which snapshot layer an EBS volume's overlay sits on right now.
    // Taking a snapshot of a volume turns its current file into the
    // snapshot's layer and gives the volume a fresh overlay on top, so the
    // volume's base moves on while its EC2 `SnapshotId` stays the one it
    // was created from. A row overrides `volumes.snapshot_id`; a NULL base
    // means the overlay stands alone (or on a blob only).
    r#"
CREATE TABLE volume_bases (
    volume_id        TEXT PRIMARY KEY,
    base_snapshot_id TEXT
);
CREATE INDEX volume_bases_by_snapshot ON volume_bases(base_snapshot_id);
"#,
    // 4: launch templates and their versions (`launch_templates`), and what
    // volumes need beyond their row (`volume_changes`): performance,
    // the last modification, attach/detach intents.
    r#"
CREATE TABLE launch_templates (
    launch_template_id TEXT PRIMARY KEY,
    region             TEXT NOT NULL,
    owner_id           TEXT NOT NULL,
    name               TEXT NOT NULL,
    create_time        TEXT NOT NULL,
    created_by         TEXT NOT NULL,
    default_version    INTEGER NOT NULL,
    latest_version     INTEGER NOT NULL,
    UNIQUE (region, owner_id, name)
);
CREATE TABLE launch_template_versions (
    launch_template_id TEXT NOT NULL REFERENCES launch_templates(launch_template_id) ON DELETE CASCADE,
    version            INTEGER NOT NULL,
    description        TEXT,
    create_time        TEXT NOT NULL,
    created_by         TEXT NOT NULL,
    data               TEXT NOT NULL,
    PRIMARY KEY (launch_template_id, version)
);
CREATE TABLE volume_performance (
    volume_id  TEXT PRIMARY KEY,
    iops       INTEGER,
    throughput INTEGER
);
CREATE TABLE volume_modifications (
    volume_id           TEXT PRIMARY KEY,
    state               TEXT NOT NULL,
    status_message      TEXT,
    original_size       INTEGER NOT NULL,
    target_size         INTEGER NOT NULL,
    original_type       TEXT NOT NULL,
    target_type         TEXT NOT NULL,
    original_iops       INTEGER,
    target_iops         INTEGER,
    original_throughput INTEGER,
    target_throughput   INTEGER,
    start_time          TEXT NOT NULL,
    end_time            TEXT
);
CREATE TABLE volume_attach_intents (
    volume_id   TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL,
    device      TEXT NOT NULL,
    op          TEXT NOT NULL,
    delete_on_termination INTEGER NOT NULL,
    started     TEXT NOT NULL
);
"#,
];

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
#[serde(rename_all = "PascalCase")]
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
#[serde(rename_all = "PascalCase")]
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

/// One tag on one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagState {
    pub resource_id: String,
    pub key: String,
    pub value: String,
}

/// One disk attached to an instance, as recorded at launch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceDevice {
    /// EC2 device name (`/dev/xvda`, `/dev/sdb`).
    pub device_name: String,
    /// EBS volume id; `None` for instance-store disks.
    pub volume_id: Option<String>,
    /// `ephemeralN` / root for instance-store disks.
    pub virtual_name: Option<String>,
    /// Size in GiB.
    pub size_gib: u64,
    /// Whether terminate deletes the volume.
    pub delete_on_termination: bool,
    /// When it was attached.
    pub attach_time: String,
}

/// A stored instance: its launch facts and the last state amirun recorded.
/// The state shown to users is reconciled with live facts on every read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceState {
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
    /// EC2 state name: pending, running, stopping, stopped, shutting-down, terminated.
    pub state: InstanceStateName,
    /// `Code: message` of the last transition (EC2's StateReason).
    pub state_reason: Option<String>,
    pub state_transition_reason: Option<String>,
    pub launch_time: String,
    pub key_name: Option<String>,
    pub user_data: Option<Vec<u8>>,
    /// `stop` or `terminate`.
    pub shutdown_behavior: ShutdownBehavior,
    /// `kvm` or `tcg`.
    pub accel: Accel,
    pub accel_reason: String,
    pub ssh_port: Option<u16>,
    pub imds_port: Option<u16>,
    pub launch_index: u32,
    /// EC2 MetadataOptions as JSON.
    pub metadata_options: serde_json::Value,
    pub devices: Vec<InstanceDevice>,
    /// When the record last changed.
    pub updated: String,
}

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

const IMAGE_COLUMNS: &str = "image_id, region, name, description, owner_id, owner_alias, \
    architecture, boot_mode, root_device_type, root_device_name, virtualization_type, state, \
    state_reason, creation_date, public, image_location, root_source, root_blob, kernel_source, \
    ramdisk_source, kernel_cmdline, source_image_id, source_image_region, source_instance_id, \
    catalog_key, block_device_mappings";

const SNAPSHOT_COLUMNS: &str = "snapshot_id, region, owner_id, owner_alias, volume_id, \
    volume_size_gib, state, description, start_time, source, blob_sha256, parent_snapshot_id, \
    has_file, storage_bytes, catalog_key";

const INSTANCE_COLUMNS: &str = "instance_id, region, owner_id, reservation_id, image_id, \
    instance_type, architecture, boot_mode, root_device_type, root_device_name, state, \
    state_reason, state_transition_reason, launch_time, key_name, user_data, shutdown_behavior, \
    accel, accel_reason, ssh_port, imds_port, launch_index, metadata_options, devices, updated";

const VOLUME_COLUMNS: &str = "volume_id, region, owner_id, size_gib, snapshot_id, state, \
    create_time, availability_zone, volume_type, instance_id, device, attach_time, \
    delete_on_termination";

const KEY_PAIR_COLUMNS: &str = "key_pair_id, region, owner_id, key_name, key_type, fingerprint, \
    public_key, private_key, create_time";

struct InstanceRow(InstanceState, String, String);

fn instance_row(r: &Row) -> rusqlite::Result<InstanceRow> {
    Ok(InstanceRow(
        InstanceState {
            instance_id: r.get(0)?,
            region: r.get(1)?,
            owner_id: r.get(2)?,
            reservation_id: r.get(3)?,
            image_id: r.get(4)?,
            instance_type: r.get(5)?,
            architecture: r.get(6)?,
            boot_mode: r.get(7)?,
            root_device_type: r.get(8)?,
            root_device_name: r.get(9)?,
            state: r.get(10)?,
            state_reason: r.get(11)?,
            state_transition_reason: r.get(12)?,
            launch_time: r.get(13)?,
            key_name: r.get(14)?,
            user_data: r.get(15)?,
            shutdown_behavior: r.get(16)?,
            accel: r.get(17)?,
            accel_reason: r.get(18)?,
            ssh_port: r.get(19)?,
            imds_port: r.get(20)?,
            launch_index: r.get(21)?,
            metadata_options: serde_json::Value::Null,
            devices: Vec::new(),
            updated: r.get(24)?,
        },
        r.get(22)?,
        r.get(23)?,
    ))
}

impl InstanceRow {
    fn parse(self) -> Result<InstanceState> {
        let InstanceRow(mut i, meta, devices) = self;
        i.metadata_options = serde_json::from_str(&meta)?;
        i.devices = serde_json::from_str(&devices)?;
        Ok(i)
    }
}

fn volume_row(r: &Row) -> rusqlite::Result<VolumeState> {
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
    // ----- images -----

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

    // ----- snapshots -----

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

    /// Ids of every volume record.
    pub fn volume_id_set(&self) -> Result<std::collections::HashSet<String>> {
        self.id_set("SELECT volume_id FROM volumes")
    }

    /// Ids of every instance record.
    pub fn instance_id_set(&self) -> Result<std::collections::HashSet<String>> {
        self.id_set("SELECT instance_id FROM instances")
    }

    /// Ids of every image record.
    pub fn image_id_set(&self) -> Result<std::collections::HashSet<String>> {
        self.id_set("SELECT image_id FROM images")
    }

    fn id_set(&self, sql: &str) -> Result<std::collections::HashSet<String>> {
        let mut stmt = self.conn.prepare(sql)?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
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

    /// Record the fetched root blob of an instance-store AMI.
    pub fn set_image_root_blob(&self, image_id: &str, sha256: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE images SET root_blob = ?2 WHERE image_id = ?1",
            params![image_id, sha256],
        )?;
        Ok(())
    }

    // ----- blobs -----

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

    // ----- tags -----

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

    fn delete_tags_of(&self, resource_id: &str) -> Result<()> {
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

    // ----- instances -----

    /// Insert or update an instance.
    pub fn put_instance(&self, i: &InstanceState) -> Result<()> {
        self.conn.execute(
            &format!(
                "INSERT INTO instances ({INSTANCE_COLUMNS}) VALUES \
                 (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20,?21,?22,?23,?24,?25) \
                 ON CONFLICT(instance_id) DO UPDATE SET {}",
                upsert_set(INSTANCE_COLUMNS)
            ),
            params![
                i.instance_id,
                i.region,
                i.owner_id,
                i.reservation_id,
                i.image_id,
                i.instance_type,
                i.architecture,
                i.boot_mode,
                i.root_device_type,
                i.root_device_name,
                i.state,
                i.state_reason,
                i.state_transition_reason,
                i.launch_time,
                i.key_name,
                i.user_data,
                i.shutdown_behavior,
                i.accel,
                i.accel_reason,
                i.ssh_port,
                i.imds_port,
                i.launch_index,
                to_json(&i.metadata_options)?,
                to_json(&i.devices)?,
                i.updated,
            ],
        )?;
        Ok(())
    }

    /// One instance by id, in any region.
    pub fn instance(&self, instance_id: &str) -> Result<Option<InstanceState>> {
        Ok(self
            .instances_where("instance_id = ?1", [instance_id])?
            .pop())
    }

    /// All instances of a region, in launch order.
    pub fn instances_in_region(&self, region: &str) -> Result<Vec<InstanceState>> {
        self.instances_where(
            "region = ?1 ORDER BY launch_time, launch_index, instance_id",
            [region],
        )
    }

    /// Every instance not yet terminated, in any region (for reconciliation).
    pub fn live_instances(&self) -> Result<Vec<InstanceState>> {
        self.instances_where("state != 'terminated'", [])
    }

    /// Instances matching a `WHERE` clause (written here, never from user input).
    fn instances_where(
        &self,
        clause: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<InstanceState>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE {clause}"
        ))?;
        let rows = stmt.query_map(params, instance_row)?;
        rows.map(|r| r?.parse()).collect()
    }

    /// Ports recorded for instances that are not terminated.
    pub fn ports_in_use(&self) -> Result<Vec<u16>> {
        let mut stmt = self.conn.prepare(
            "SELECT ssh_port FROM instances WHERE state != 'terminated' AND ssh_port IS NOT NULL \
             UNION SELECT imds_port FROM instances WHERE state != 'terminated' AND imds_port IS NOT NULL",
        )?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Forget terminated instances older than `before` (EC2 shows them for about an hour).
    pub fn purge_terminated(&self, before: &str) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare(
            "SELECT instance_id FROM instances WHERE state = 'terminated' AND updated < ?1",
        )?;
        let ids: Vec<String> = stmt
            .query_map([before], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for id in &ids {
            self.delete_tags_of(id)?;
            self.conn
                .execute("DELETE FROM instances WHERE instance_id = ?1", [id])?;
        }
        Ok(ids)
    }

    // ----- volumes -----

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

    // ----- key pairs -----

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

    // ----- catalog -----

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
    use super::*;

    fn image(id: &str) -> ImageState {
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
