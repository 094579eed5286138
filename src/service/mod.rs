//! The one door into the engine: one method per EC2 operation.
//!
//! The CLI and the HTTP API translate their input into calls on [`Service`]
//! and render what it returns; neither runs `qemu-img`, opens the database or
//! builds a QEMU argv. The service checks permissions (an account sees its
//! own AMIs, those shared with it and public ones) and state rules, and is
//! the only caller of [`crate::store`], [`crate::blobs`], [`crate::disk`]
//! and [`crate::catalog`].
//!
//! Long work (downloads, conversions) happens outside database transactions:
//! an operation fetches first, then records everything it made in one
//! transaction, and removes what it made if recording fails. What a killed
//! process leaves in between is settled at the next open ([`recovery`]).

pub mod bake_recipe;
pub mod baking;
pub mod boot_test;
pub mod error;
pub mod filter;
pub mod hibernation;
pub mod image_worker;
pub mod images;
mod imds_config;
pub mod import_policy;
pub mod instance_attributes;
pub mod instance_facts;
pub mod instance_status;
pub mod instance_types;
pub mod instances;
mod keypairs;
pub mod launch_templates;
pub mod layers;
pub mod network_interfaces;
pub mod object_lock;
pub mod paging;
pub mod recovery;
pub mod regions;
pub mod security_groups;
pub mod shapes;
pub mod snapshot_attributes;
pub mod snapshots;
pub mod tags;
pub mod volumes;
pub mod vpc;

pub use error::{Error, ErrorCode, Result};
pub use keypairs::{
    CreateKeyPairRequest, DeleteKeyPairRequest, DeleteKeyPairResult, DescribeKeyPairsRequest,
    DescribeKeyPairsResult, ImportKeyPairRequest, ImportKeyPairResult, KeyPair, KeyPairInfo,
};

use crate::blobs::{BlobStore, Progress};
use crate::catalog::{self, Catalog};
use crate::domain::AccountId;
use crate::domain::{ImageStateName, RootDeviceType, SnapshotStateName};
use crate::ids::{self, IdKind};
use crate::paths::Paths;
use crate::store::{BlobState, ImageState, SnapshotState, Store};
use std::path::PathBuf;

/// Who is calling, and where: every operation is scoped by both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// 12-digit account id.
    pub account: AccountId,
    /// Region name, e.g. `us-east-1`.
    pub region: String,
}

impl Caller {
    /// A caller, with the account and region checked for shape.
    pub fn new(account: impl Into<String>, region: impl Into<String>) -> Result<Caller> {
        let (account, region) = (account.into(), region.into());
        let Ok(account) = account.parse::<AccountId>() else {
            return Err(Error::invalid_value(format!(
                "Account id '{account}' is not 12 digits"
            )));
        };
        if !is_region_name(&region) {
            return Err(Error::invalid_value(format!(
                "Region '{region}' is not a region name like us-east-1"
            )));
        }
        Ok(Caller { account, region })
    }
}

fn is_region_name(r: &str) -> bool {
    let parts: Vec<&str> = r.split('-').collect();
    parts.len() >= 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        && parts
            .last()
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
}

/// Options for opening the service. The settings taken from the
/// environment are read once, by [`ServiceOptions::from_env`], where the
/// front end starts; nothing below reads the environment.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// Extra catalog files (`--catalog FILE`).
    pub extra_catalogs: Vec<PathBuf>,
    /// Progress bars for long work.
    pub progress: bool,
    /// Which image sources callers may name (the HTTP API restricts them).
    pub import_policy: import_policy::ImportPolicy,
    /// Seconds a graceful stop waits for the guest before forcing it
    /// (`AMIRUN_STOP_TIMEOUT`, default 60).
    pub stop_timeout_secs: u64,
    /// The amirun executable run as supervisor and IMDS relay
    /// (`AMIRUN_EXE`, default this executable).
    pub supervisor_exe: Option<PathBuf>,
    /// Snapshot layers in one chain before a snapshot is flattened
    /// (`AMIRUN_MAX_CHAIN_DEPTH`, default [`layers::DEFAULT_MAX_CHAIN_DEPTH`], at least 1).
    pub max_chain_depth: usize,
    /// Whether launches make a NoCloud seed (`AMIRUN_NOCLOUD_SEED` is not `0`);
    /// without one the guest learns about itself only from IMDS, as on EC2.
    pub nocloud_seed: bool,
    /// Outbound access of a guest launched without the
    /// [`crate::machine::OUTBOUND_TAG`] tag (`AMIRUN_GUEST_OUTBOUND`=`nat`|`none`,
    /// default `nat`). Test suites set `none` so that no guest outside a
    /// network namespace of their own can send a packet off the machine.
    pub default_outbound: crate::machine::Outbound,
    /// The accelerator `RunInstances` asks for (`--accel` / `AMIRUN_ACCEL`,
    /// default `auto`): amirun's own setting, never a request member.
    pub launch_accel: crate::machine::AccelRequest,
    /// TCG's translation cache per guest (`AMIRUN_TCG_TB_MIB`: MiB, or
    /// `qemu` for QEMU's own default; unset: sized for the guest, see
    /// [`crate::machine::TbCache`]). For benchmarks.
    pub tb_cache: crate::machine::TbCache,
    /// Whether guests give the memory they freed back to the host
    /// ([`crate::machine::FreePages`]). `AMIRUN_MEMORY_SAVINGS=off` turns
    /// this and the sized TCG cache off together (QEMU's defaults, the
    /// baseline of `scripts/bench-hibernate.sh`); `AMIRUN_TCG_TB_MIB`
    /// still sets the cache. For benchmarks.
    pub free_pages: crate::machine::FreePages,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        ServiceOptions {
            extra_catalogs: Vec::new(),
            progress: false,
            import_policy: import_policy::ImportPolicy::default(),
            stop_timeout_secs: 60,
            supervisor_exe: std::env::current_exe().ok(),
            max_chain_depth: layers::DEFAULT_MAX_CHAIN_DEPTH,
            nocloud_seed: true,
            default_outbound: crate::machine::Outbound::Nat,
            launch_accel: crate::machine::AccelRequest::default(),
            tb_cache: crate::machine::TbCache::ForGuest,
            free_pages: crate::machine::FreePages::Reported,
        }
    }
}

impl ServiceOptions {
    /// The defaults with the settings the environment gives: the one place
    /// amirun's service settings are read from it.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok();
        let mut defaults = ServiceOptions::default();
        match var("AMIRUN_MEMORY_SAVINGS").as_deref() {
            None | Some("on") => {}
            Some("off") => {
                defaults.tb_cache = crate::machine::TbCache::QemuDefault;
                defaults.free_pages = crate::machine::FreePages::Kept;
            }
            Some(v) => {
                tracing::warn!("AMIRUN_MEMORY_SAVINGS={v} is neither 'on' nor 'off'; ignored")
            }
        }
        ServiceOptions {
            stop_timeout_secs: var("AMIRUN_STOP_TIMEOUT")
                .and_then(|s| s.parse().ok())
                .unwrap_or(defaults.stop_timeout_secs),
            supervisor_exe: std::env::var_os("AMIRUN_EXE")
                .map(PathBuf::from)
                .or(defaults.supervisor_exe.clone()),
            max_chain_depth: var("AMIRUN_MAX_CHAIN_DEPTH")
                .and_then(|s| s.parse::<usize>().ok())
                .unwrap_or(defaults.max_chain_depth)
                .max(1),
            nocloud_seed: var(imds_config::NOCLOUD_SEED_ENV).is_none_or(|v| v != "0"),
            default_outbound: match var("AMIRUN_GUEST_OUTBOUND") {
                None => defaults.default_outbound,
                Some(v) => crate::machine::Outbound::from_tag(&v).unwrap_or_else(|| {
                    tracing::warn!(
                        "AMIRUN_GUEST_OUTBOUND={v} is neither 'nat' nor 'none'; using 'nat'"
                    );
                    defaults.default_outbound
                }),
            },
            tb_cache: match var("AMIRUN_TCG_TB_MIB").as_deref() {
                None => defaults.tb_cache,
                Some("qemu") => crate::machine::TbCache::QemuDefault,
                Some(v) => match v.parse::<u32>() {
                    Ok(mib) if mib > 0 => crate::machine::TbCache::Mib(mib),
                    _ => {
                        tracing::warn!("AMIRUN_TCG_TB_MIB={v} is neither MiB nor 'qemu'; ignored");
                        defaults.tb_cache
                    }
                },
            },
            ..defaults
        }
    }
}

/// The engine: database, blob store, catalog.
pub struct Service {
    paths: Paths,
    store: Store,
    blobs: BlobStore,
    progress: Progress,
    import_policy: import_policy::ImportPolicy,
    options: ServiceOptions,
    /// Regions bound to a remote backend (`$AMIRUN_HOME/regions.d`).
    remote: instances::RemoteRegions,
}

/// The id of what a request with an idempotency token (`ClientToken`) makes:
/// derived from the caller and the token, so a repeated request finds what
/// the first one made instead of making it again. EC2's tokens are 1 to 64
/// printable ASCII characters.
pub(crate) fn client_token_id(kind: IdKind, caller: &Caller, token: &str) -> Result<String> {
    if token.is_empty() || token.len() > 64 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::invalid_value(format!(
            "Value ({token}) for parameter ClientToken is invalid; use 1 to 64 printable ASCII characters"
        )));
    }
    Ok(ids::derived_id(
        kind,
        &format!("client-token/{}/{}/{token}", caller.account, caller.region),
    ))
}

/// EC2's answer to a `ClientToken` that comes back with other parameters
/// than the request that first used it.
pub(crate) fn idempotent_mismatch(token: &str) -> Error {
    Error::new(
        ErrorCode::IdempotentParameterMismatch,
        format!(
            "The client token '{token}' was used before with different parameters; use a new token for a new request"
        ),
    )
}

/// Current time in EC2's format (`2026-11-22T18:44:25.000Z`).
pub(crate) fn now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

impl Service {
    /// Open the state under `paths` and bring catalog AMIs up to date.
    pub fn open(paths: Paths, options: ServiceOptions) -> Result<Service> {
        crate::private_fs::ensure_private_home(paths.home()).map_err(|e| {
            Error::internal(format!(
                "Cannot create the state directory {}",
                paths.home().display()
            ))
            .with_source(e)
        })?;
        crate::private_fs::ensure_runtime_dir(paths.runtime())
            .map_err(|e| Error::new(ErrorCode::UnsafeRuntimeDirectory, e.to_string()))?;
        // SQLite gives -wal and -shm the database's mode: make it 0600 first.
        let [db, wal, shm] = paths.database_files();
        for (file, create) in [(db, true), (wal, false), (shm, false)] {
            crate::private_fs::private_file(&file, create).map_err(|e| {
                Error::internal(format!("Cannot make {} private", file.display())).with_source(e)
            })?;
        }
        let remote = instances::RemoteRegions::load(&paths)?;
        let store = Store::open(&paths.database(), &paths.database_lock())?;
        let blobs = BlobStore::new(paths.clone());
        let mut service = Service {
            paths,
            store,
            blobs,
            progress: if options.progress {
                Progress::Auto
            } else {
                Progress::Hidden
            },
            import_policy: options.import_policy.clone(),
            options: options.clone(),
            remote,
        };
        let catalog = catalog::load(&service.paths.catalog_dir(), &options.extra_catalogs)?;
        warn_skipped(&catalog);
        service.sync_catalog(&catalog)?;
        // Settle what dead writers left and sweep orphans (service::recovery).
        // A pass that cannot finish is retried by the next open; it must
        // not keep the user from the state.
        if let Err(e) = service.recover() {
            tracing::warn!("recovery pass did not finish: {e}");
        }
        Ok(service)
    }

    /// The accelerator later launches ask for ([`ServiceOptions::launch_accel`]).
    pub fn set_launch_accel(&mut self, accel: crate::machine::AccelRequest) {
        self.options.launch_accel = accel;
    }

    /// Where this service keeps its state.
    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// Make the catalog's AMIs (and their snapshots) exist in every region
    /// they list, with stable ids; drop catalog AMIs whose entries are gone.
    /// Runs only when the catalog files changed since the last sync.
    fn sync_catalog(&mut self, catalog: &Catalog) -> Result<()> {
        let current = self.store.read(|db| db.catalog_fingerprint())?;
        if current.as_deref() == Some(catalog.fingerprint.as_str()) {
            return Ok(());
        }
        self.store.write(|db| -> Result<()> {
            // Another process may have synced while we waited for the lock.
            if db.catalog_fingerprint()?.as_deref() == Some(catalog.fingerprint.as_str()) {
                return Ok(());
            }
            let now = now();
            let mut wanted = std::collections::HashSet::new();
            for (_, entry) in &catalog.entries {
                // Loading validated every entry: this does not fail.
                let (architecture, boot_mode, root_device_type) = entry
                    .kinds()
                    .map_err(|m| Error::internal(format!("Catalog entry {}: {m}", entry.key)))?;
                for region in entry.regions() {
                    let image_id = entry.image_ids.get(&region).cloned().unwrap_or_else(|| {
                        ids::derived_id(IdKind::Image, &format!("{}/{region}", entry.key))
                    });
                    wanted.insert(image_id.clone());
                    let existing = db.image(&image_id)?;
                    let mut bdm = Vec::new();
                    let (mut root_source, mut root_blob) = (None, None);
                    if root_device_type == RootDeviceType::Ebs {
                        let snapshot_id =
                            ids::derived_id(IdKind::Snapshot, &format!("{}/{region}", entry.key));
                        let old = db.snapshot(&snapshot_id)?;
                        let same_source =
                            old.as_ref().and_then(|o| o.source.as_ref()) == Some(&entry.source);
                        let size = entry.min_size_gib.unwrap_or(8).max(
                            old.as_ref()
                                .filter(|_| same_source)
                                .map_or(0, |o| o.volume_size_gib),
                        );
                        db.put_snapshot(&SnapshotState {
                            snapshot_id: snapshot_id.clone(),
                            region: region.clone(),
                            owner_id: entry.owner_id(),
                            owner_alias: Some(entry.owner_alias.clone()),
                            volume_id: None,
                            volume_size_gib: size,
                            state: SnapshotStateName::Completed,
                            description: Some(format!("Data of {}", entry.name)),
                            start_time: old.as_ref().map_or(now.clone(), |o| o.start_time.clone()),
                            source: Some(entry.source.clone()),
                            blob_sha256: old
                                .as_ref()
                                .filter(|_| same_source)
                                .and_then(|o| o.blob_sha256.clone()),
                            parent_snapshot_id: None,
                            has_file: false,
                            storage_bytes: old
                                .as_ref()
                                .filter(|_| same_source)
                                .and_then(|o| o.storage_bytes),
                            catalog_key: Some(entry.key.clone()),
                        })?;
                        bdm.push(crate::store::BlockDeviceMapping {
                            device_name: entry.root_device_name.clone(),
                            ebs: Some(crate::store::EbsBlockDevice {
                                delete_on_termination: Some(true),
                                snapshot_id: Some(snapshot_id),
                                volume_size: Some(size),
                                volume_type: Some("gp3".into()),
                                encrypted: Some(false),
                                iops: Some(3000),
                                throughput: Some(125),
                            }),
                            ..Default::default()
                        });
                    } else {
                        root_source = Some(entry.source.clone());
                        root_blob = existing
                            .as_ref()
                            .filter(|o| o.root_source.as_ref() == Some(&entry.source))
                            .and_then(|o| o.root_blob.clone());
                        bdm.push(crate::store::BlockDeviceMapping {
                            device_name: "/dev/sdb".into(),
                            virtual_name: Some("ephemeral0".into()),
                            ..Default::default()
                        });
                    }
                    let image = ImageState {
                        image_id: image_id.clone(),
                        region: region.clone(),
                        name: entry.name.clone(),
                        description: entry.description.clone(),
                        owner_id: entry.owner_id(),
                        owner_alias: Some(entry.owner_alias.clone()),
                        architecture,
                        boot_mode,
                        root_device_type,
                        root_device_name: entry.root_device_name.clone(),
                        virtualization_type: "hvm".into(),
                        state: ImageStateName::Available,
                        state_reason: None,
                        creation_date: existing
                            .as_ref()
                            .map_or(now.clone(), |o| o.creation_date.clone()),
                        public: true,
                        image_location: Some(format!("{}/{}", entry.owner_alias, entry.name)),
                        root_source,
                        root_blob,
                        kernel_source: entry.kernel.clone(),
                        ramdisk_source: entry.ramdisk.clone(),
                        kernel_cmdline: entry.kernel_cmdline.clone(),
                        source_image_id: None,
                        source_image_region: None,
                        source_instance_id: None,
                        catalog_key: Some(entry.key.clone()),
                        block_device_mappings: bdm,
                    };
                    db.put_image(&image)?;
                    for (k, v) in &entry.tags {
                        db.put_tag(&image_id, k, v)?;
                    }
                }
            }
            // With a file skipped, its AMIs cannot be told from removed ones:
            // keep every catalog AMI until the file is readable again.
            let complete = catalog.skipped.is_empty();
            for old in db.catalog_images()? {
                if complete && !wanted.contains(&old.image_id) {
                    db.delete_image(&old.image_id)?;
                }
            }
            for snap in db.catalog_snapshots()? {
                if db.images_using_snapshot(&snap.snapshot_id)?.is_empty() {
                    db.delete_snapshot(&snap.snapshot_id)?;
                }
            }
            db.set_catalog_fingerprint(&catalog.fingerprint)?;
            Ok(())
        })
    }

    /// Fetch a source into the blob store (no transaction held) and record the blob.
    fn fetch_source(&mut self, source: &crate::store::SourceSpec) -> Result<crate::blobs::Blob> {
        let url = url::Url::parse(&source.url).map_err(|e| {
            Error::invalid_value(format!("The URL '{}' is not valid", source.url)).with_source(e)
        })?;
        let expected = match (&source.sha256, &source.checksum_url) {
            (Some(d), _) => crate::blobs::Expected::Sha256(d.to_ascii_lowercase()),
            (None, Some(c)) => {
                crate::blobs::Expected::ChecksumFile(url::Url::parse(c).map_err(|e| {
                    Error::invalid_value(format!("The checksum URL '{c}' is not valid"))
                        .with_source(e)
                })?)
            }
            (None, None) => crate::blobs::Expected::Unverified,
        };
        let blob = self.blobs.fetch(
            &crate::blobs::Source {
                url,
                expected,
                format: source.format.clone(),
            },
            self.progress,
        )?;
        let record = BlobState {
            sha256: blob.sha256.clone(),
            size: blob.size,
            virtual_size: blob.virtual_size,
            source_format: blob.source_format.clone(),
            first_source: source.url.clone(),
            created: now(),
        };
        self.store.write(|db| db.put_blob(&record))?;
        Ok(blob)
    }
}

/// Name each skipped catalog file on stderr, once per process and reason
/// (the API server opens the service for every request).
fn warn_skipped(catalog: &Catalog) {
    static WARNED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
    for e in &catalog.skipped {
        let line = format!("warning: skipping catalog file: {e}");
        if !warned.contains(&line) {
            eprintln!("{line}; its images are left as they were until it is fixed");
            warned.push(line);
        }
    }
}

/// `InvalidAMIID.NotFound` for these ids.
pub(crate) fn image_not_found(ids: &[String]) -> Error {
    Error::new(
        ErrorCode::InvalidAmiIdNotFound,
        match ids {
            [one] => format!("The image id '[{one}]' does not exist"),
            _ => format!("The image ids '[{}]' do not exist", ids.join(", ")),
        },
    )
}

/// Check an AMI id's shape.
pub(crate) fn check_image_id(id: &str) -> Result<()> {
    if ids::is_well_formed(IdKind::Image, id) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorCode::InvalidAmiIdMalformed,
            format!("Invalid id: \"{id}\" (expecting \"ami-...\")"),
        ))
    }
}

/// Check a snapshot id's shape.
pub(crate) fn check_snapshot_id(id: &str) -> Result<()> {
    if ids::is_well_formed(IdKind::Snapshot, id) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorCode::InvalidSnapshotIdMalformed,
            format!("Invalid id: \"{id}\" (expecting \"snap-...\")"),
        ))
    }
}

/// `InvalidSnapshot.NotFound`.
pub(crate) fn snapshot_not_found(id: &str) -> Error {
    Error::new(
        ErrorCode::InvalidSnapshotNotFound,
        format!("The snapshot '{id}' does not exist."),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token names one thing per caller: the same again, another account's
    /// or region's different; a malformed token is refused.
    #[test]
    fn client_tokens_derive_one_id_per_caller() {
        let a = Caller::new("000000000000", "us-east-1").unwrap();
        let b = Caller::new("111111111111", "us-east-1").unwrap();
        let west = Caller::new("000000000000", "us-west-2").unwrap();
        let id = client_token_id(IdKind::Reservation, &a, "tok").unwrap();
        assert!(ids::is_well_formed(IdKind::Reservation, &id), "{id}");
        assert_eq!(id, client_token_id(IdKind::Reservation, &a, "tok").unwrap());
        assert_ne!(id, client_token_id(IdKind::Reservation, &b, "tok").unwrap());
        assert_ne!(
            id,
            client_token_id(IdKind::Reservation, &west, "tok").unwrap()
        );
        assert_ne!(
            id,
            client_token_id(IdKind::Reservation, &a, "tok2").unwrap()
        );
        for bad in ["", "with space", &"x".repeat(65)] {
            let e = client_token_id(IdKind::Image, &a, bad).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidParameterValue);
        }
    }
}
