//! The image store: fetches disk images (file, http, https) into a
//! content-addressed blob store, hashing while streaming, verifying against
//! a digest or the vendor's checksum file, converting to qcow2, and renaming
//! into place only when complete.
//!
//! Base images are large, come from elsewhere and are shared by every AMI,
//! snapshot and volume built on them, so they get a store of their own whose
//! files never change once written. A fetch goes:
//!
//! 1. resolve the expected digest (inline, or the entry for the image's file
//!    name in the vendor's checksum file);
//! 2. take an exclusive lock on the source (URL + digest; for a `file://`
//!    URL also the file's device, inode, size, mtime and ctime, so a file
//!    changed in place is fetched again), so concurrent fetches of one
//!    source download it once; under the lock, a source seen before is
//!    answered from the source index, after the same checks a fetch gets
//!    (declared format, `qemu-img check` of the blob);
//! 3. stream the bytes into `blobs/tmp/`, hashing as they pass, fsync, verify;
//! 4. detect the format from the content (never trusting the name), refuse
//!    images that would read other host files, convert to qcow2;
//! 5. refuse a qcow2 that `qemu-img check` finds damaged (a truncated
//!    file), hash it and rename it to `blobs/sha256/<hex>`, then record the
//!    source in the index.
//!
//! Nothing at a blob path is ever partial: an interrupted fetch (even
//! `kill -9`) leaves only a file in `blobs/tmp/`, which a later fetch removes
//! once it can tell nobody is writing it (it holds that source's lock).
//!
//! The HTTP client is blocking: call this from a plain thread, not from
//! inside an async runtime.

use crate::disk::{self, DiskError};
use crate::paths::Paths;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};
use std::fs::{self, File, OpenOptions};
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use url::Url;

/// Formats accepted from a source, by qemu's names (`vpc` is VHD).
const SOURCE_FORMATS: &[&str] = &["qcow2", "raw", "vmdk", "vpc", "vhdx"];

/// Declared format of files that are not disk images (kernels, initial
/// ramdisks for direct kernel boot): stored byte for byte, never probed or
/// converted.
pub const OPAQUE_FORMAT: &str = "file";
/// A checksum file larger than this is not a checksum file.
const CHECKSUM_FILE_LIMIT: u64 = 16 * 1024 * 1024;
/// Temp files nobody can be tied to are removed after this long.
const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);
/// Copy buffer for streaming.
const CHUNK: usize = 1024 * 1024;

/// What went wrong fetching or storing an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The digest of what was fetched is not the one expected.
    #[error("Checksum mismatch for {url}: expected {algorithm} {expected}, got {actual}")]
    ChecksumMismatch {
        url: String,
        algorithm: &'static str,
        expected: String,
        actual: String,
    },
    /// The URL's scheme is not one amirun fetches from.
    #[error("Unsupported URL {url}; use a file://, http:// or https:// URL")]
    UnsupportedUrl { url: String },
    /// An inline digest is not a sha256.
    #[error("Invalid sha256 {digest:?} for {url}; expected 64 hexadecimal digits")]
    InvalidDigest { url: String, digest: String },
    /// A local file could not be read.
    #[error("Cannot read {path}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The server could not be reached or the request failed.
    #[error("Cannot download {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error status.
    #[error("Cannot download {url}: HTTP status {status}")]
    HttpStatus { url: String, status: u16 },
    /// The transfer stopped before the end.
    #[error(
        "Download of {url} was interrupted after {received} bytes; run the command again to retry"
    )]
    Interrupted {
        url: String,
        received: u64,
        #[source]
        source: io::Error,
    },
    /// The checksum file lists no digest for the image.
    #[error("Checksum file {checksum_url} has no sha256 or sha512 entry for {file_name}")]
    NoChecksumEntry {
        checksum_url: String,
        file_name: String,
    },
    /// The checksum file is implausibly large.
    #[error("Checksum file {checksum_url} is larger than {CHECKSUM_FILE_LIMIT} bytes")]
    ChecksumFileTooLarge { checksum_url: String },
    /// The image is in a format amirun does not take.
    #[error("Unsupported image format {format} for {url}; use qcow2, raw, vmdk, vhd or vhdx")]
    UnsupportedFormat { url: String, format: String },
    /// `qemu-img check` found the image damaged (e.g. a truncated qcow2).
    #[error("Image {url} is damaged: qemu-img check found {corruptions} corruptions and {check_errors} check errors")]
    Corrupt {
        url: String,
        corruptions: u64,
        check_errors: u64,
    },
    /// The declared format is not what the content is.
    #[error("Image {url} was declared {declared} but its content is {detected}")]
    FormatMismatch {
        url: String,
        declared: String,
        detected: String,
    },
    /// The image would read other files on the host (backing file, vmdk
    /// extents, qcow2 data file).
    #[error("Image {url} is not self-contained: it refers to {reference}")]
    NotSelfContained { url: String, reference: String },
    /// `qemu-img` failed inspecting or converting the image.
    #[error("Cannot inspect or convert the image from {url}")]
    Disk {
        url: String,
        #[source]
        source: DiskError,
    },
    /// The blob store itself could not be written.
    #[error("Cannot write to the image store at {path}")]
    Store {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ImageError {
    /// EC2-style error code.
    pub fn code(&self) -> &'static str {
        match self {
            ImageError::Disk { source, .. } => source.code(),
            ImageError::Store { .. } => "InternalError",
            ImageError::ChecksumMismatch { .. }
            | ImageError::UnsupportedUrl { .. }
            | ImageError::InvalidDigest { .. }
            | ImageError::Unreadable { .. }
            | ImageError::Unreachable { .. }
            | ImageError::HttpStatus { .. }
            | ImageError::Interrupted { .. }
            | ImageError::NoChecksumEntry { .. }
            | ImageError::ChecksumFileTooLarge { .. }
            | ImageError::UnsupportedFormat { .. }
            | ImageError::FormatMismatch { .. }
            | ImageError::Corrupt { .. }
            | ImageError::NotSelfContained { .. } => "InvalidParameterValue",
        }
    }
}

/// How a fetched image is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// An inline sha256 (64 hex digits).
    Sha256(String),
    /// The vendor's checksum file (SHA256SUMS, SHA512SUMS, BSD-style CHECKSUM, or a single-digest file).
    ChecksumFile(Url),
    /// No digest given: the content is hashed and stored by its sha256 only.
    Unverified,
}

/// One image to fetch.
#[derive(Debug, Clone)]
pub struct Source {
    pub url: Url,
    pub expected: Expected,
    /// Declared format (`qcow2`, `raw`, `vmdk`, `vhd`, `vhdx`); detected from content when `None`.
    pub format: Option<String>,
}

/// Whether to draw a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// On stderr when it is a terminal.
    Auto,
    /// Never.
    Hidden,
}

/// A verified, stored qcow2 blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// sha256 of the stored (qcow2) file: its name in the store.
    pub sha256: String,
    /// Bytes on disk.
    pub size: u64,
    /// Size the guest sees.
    pub virtual_size: u64,
    /// Format the source had before conversion (qemu's name: `vpc` for vhd).
    pub source_format: String,
    /// Path of the stored file.
    pub path: PathBuf,
}

/// The content-addressed blob store under `$AMIRUN_HOME/blobs`.
///
/// ```no_run
/// use amirun::images::{BlobStore, Expected, Progress, Source};
/// use url::Url;
///
/// let store = BlobStore::new(amirun::paths::Paths::from_env());
/// let base = "https://cloud.debian.org/images/cloud/bookworm/latest/";
/// let blob = store.fetch(
///     &Source {
///         url: Url::parse(&format!("{base}debian-12-genericcloud-amd64.qcow2"))?,
///         expected: Expected::ChecksumFile(Url::parse(&format!("{base}SHA512SUMS"))?),
///         format: Some("qcow2".into()),
///     },
///     Progress::Auto,
/// )?;
/// // Later, by digest alone (no network):
/// assert_eq!(store.get(&blob.sha256).as_ref(), Some(&blob));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct BlobStore {
    paths: Paths,
}

/// One entry of the source index (`blobs/sources/<key>.json`).
#[derive(Debug, Serialize, Deserialize)]
struct SourceRecord {
    url: String,
    sha256: String,
    source_format: String,
}

impl BlobStore {
    /// The store rooted at `paths`.
    pub fn new(paths: Paths) -> Self {
        Self { paths }
    }

    /// Fetch `source` unless an identical source was fetched before; concurrent
    /// callers for one source wait on a lock and download it once.
    ///
    /// "Identical" means the same URL (without fragment) and the same
    /// expected digest. For [`Expected::ChecksumFile`] the checksum file is
    /// read on every call (it is small), so a vendor URL that now serves a
    /// newer image is fetched again.
    pub fn fetch(&self, source: &Source, progress: Progress) -> Result<Blob, ImageError> {
        let mut url = source.url.clone();
        url.set_fragment(None);
        let origin = Origin::parse(&url)?;
        let declared = source
            .format
            .as_deref()
            .map(|f| qemu_format_name(f, &url))
            .transpose()?;
        let mut client = HttpClient::default();
        let expected = match &source.expected {
            Expected::Sha256(hex) => Some(ExpectedDigest::inline_sha256(hex, &url)?),
            Expected::ChecksumFile(sums_url) => {
                let text = read_checksum_file(sums_url, &mut client)?;
                let name = file_name(&url);
                let digest =
                    find_digest(&text, &name).ok_or_else(|| ImageError::NoChecksumEntry {
                        checksum_url: sums_url.to_string(),
                        file_name: name.clone(),
                    })?;
                Some(digest)
            }
            Expected::Unverified => None,
        };
        // A local file is known by its identity and change time too, so a
        // file changed in place at the same URL is fetched again.
        let identity = match &origin {
            Origin::File(path) => Some(file_identity(path)?),
            Origin::Http => None,
        };
        let key = source_key(&url, expected.as_ref(), identity.as_deref());

        for dir in [
            self.paths.blob_dir(),
            self.paths.blob_tmp_dir(),
            self.paths.blob_lock_dir(),
            self.paths.blob_source_dir(),
        ] {
            fs::create_dir_all(&dir).map_err(|source| store_err(&dir, source))?;
        }

        let _lock = self.lock_source(&key, &url, progress)?;
        if let Some(blob) = self.lookup_source(&key) {
            // A hit is checked like a fetch: the declared format, and the
            // blob's own consistency; otherwise the source is fetched again.
            let format_ok = declared.as_deref().is_none_or(|d| d == blob.source_format);
            let intact = blob.source_format == OPAQUE_FORMAT
                || disk::check(&blob.path).is_ok_and(|c| c.is_consistent());
            if format_ok && intact {
                tracing::debug!(%url, sha256 = %blob.sha256, "source already in the store");
                return Ok(blob);
            }
            if !intact {
                tracing::warn!(path = %blob.path.display(), "stored blob fails qemu-img check; fetching again");
                let _ = fs::remove_file(&blob.path);
            }
        }
        let _ = self.remove_stale_temp_files(&key);
        let blob = self.download(
            &url,
            &origin,
            &key,
            expected,
            declared,
            progress,
            &mut client,
        )?;
        self.record_source(&key, &url, &blob)?;
        tracing::info!(%url, sha256 = %blob.sha256, "image stored");
        Ok(blob)
    }

    /// A stored blob by digest, if present.
    pub fn get(&self, sha256: &str) -> Option<Blob> {
        if !is_hex(sha256, 64) {
            return None;
        }
        let sha256 = sha256.to_ascii_lowercase();
        let path = self.paths.blob(&sha256);
        let size = fs::metadata(&path).ok()?.len();
        let source_format = self
            .source_format_of(&sha256)
            .unwrap_or_else(|| "qcow2".to_owned());
        let virtual_size = if source_format == OPAQUE_FORMAT {
            size
        } else {
            disk::info_as(&path, "qcow2").ok()?.virtual_size
        };
        Some(Blob {
            sha256,
            size,
            virtual_size,
            source_format,
            path,
        })
    }

    /// Take the exclusive lock of one source, telling the user when another
    /// fetch holds it.
    fn lock_source(
        &self,
        key: &str,
        url: &Url,
        progress: Progress,
    ) -> Result<Flock<File>, ImageError> {
        let path = self.paths.blob_lock(key);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| store_err(&path, source))?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((file, Errno::EWOULDBLOCK)) => {
                tracing::info!(%url, "waiting for another fetch of the same source");
                if show_progress(progress) {
                    eprintln!("Waiting for another amirun process fetching {url}");
                }
                file
            }
            Err((_, errno)) => return Err(store_err(&path, errno.into())),
        };
        loop {
            match Flock::lock(file, FlockArg::LockExclusive) {
                Ok(lock) => return Ok(lock),
                Err((f, Errno::EINTR)) => file = f,
                Err((_, errno)) => return Err(store_err(&path, errno.into())),
            }
        }
    }

    /// The blob a source produced before, if both the record and the blob
    /// are still there.
    fn lookup_source(&self, key: &str) -> Option<Blob> {
        let text = fs::read(self.paths.blob_source(key)).ok()?;
        let record: SourceRecord = serde_json::from_slice(&text).ok()?;
        let mut blob = self.get(&record.sha256)?;
        blob.source_format = record.source_format;
        Some(blob)
    }

    /// Source format recorded for a blob by any source that produced it.
    fn source_format_of(&self, sha256: &str) -> Option<String> {
        fs::read_dir(self.paths.blob_source_dir())
            .ok()?
            .filter_map(|e| fs::read(e.ok()?.path()).ok())
            .filter_map(|text| serde_json::from_slice::<SourceRecord>(&text).ok())
            .find(|r| r.sha256 == sha256)
            .map(|r| r.source_format)
    }

    /// Write the index entry of a source atomically.
    fn record_source(&self, key: &str, url: &Url, blob: &Blob) -> Result<(), ImageError> {
        let path = self.paths.blob_source(key);
        let record = SourceRecord {
            url: url.to_string(),
            sha256: blob.sha256.clone(),
            source_format: blob.source_format.clone(),
        };
        let text = serde_json::to_vec_pretty(&record).expect("a record serialises");
        let dir = self.paths.blob_source_dir();
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{key}."))
            .tempfile_in(&dir)
            .map_err(|source| store_err(&dir, source))?;
        tmp.write_all(&text)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|source| store_err(tmp.path(), source))?;
        tmp.persist(&path).map_err(|e| store_err(&path, e.error))?;
        sync_dir(&dir);
        Ok(())
    }

    /// Remove files in `blobs/tmp` left by fetches that are no longer
    /// running: those of `own_key` (whose lock the caller holds), those of
    /// any other source whose lock is free, and unrecognised ones older than
    /// [`STALE_TEMP_AGE`]. Best effort: failures are only logged.
    fn remove_stale_temp_files(&self, own_key: &str) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        let Ok(entries) = fs::read_dir(self.paths.blob_tmp_dir()) else {
            return removed;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            // Held (when it is another source's) until the file is gone, so
            // no fetch of that source starts meanwhile.
            let mut _other_lock = None;
            let stale = match temp_file_key(&name) {
                Some(key) if key == own_key => true,
                Some(key) => match self.try_lock_idle(key) {
                    Some(lock) => {
                        _other_lock = lock;
                        true
                    }
                    None => false,
                },
                None => entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .is_some_and(|age| age > STALE_TEMP_AGE),
            };
            if stale {
                tracing::debug!(path = %path.display(), "removing stale temporary file");
                match fs::remove_file(&path) {
                    Ok(()) => removed.push(path),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot remove stale temporary file")
                    }
                }
            }
        }
        removed
    }

    /// Remove temporary files of fetches that are no longer running (the
    /// orphan sweep at store open); returns what was removed.
    pub fn sweep_temp(&self) -> Vec<PathBuf> {
        self.remove_stale_temp_files("")
    }

    /// `Some` when no fetch of source `key` is running: its lock, taken
    /// without waiting (`Some(None)` when the source has no lock file at all).
    fn try_lock_idle(&self, key: &str) -> Option<Option<Flock<File>>> {
        match File::open(self.paths.blob_lock(key)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Some(None),
            Err(_) => None,
            Ok(file) => Flock::lock(file, FlockArg::LockExclusiveNonblock)
                .ok()
                .map(Some),
        }
    }

    /// Stream, verify, detect, convert and store one source. Every temporary
    /// file is removed when this returns, on success or failure.
    #[allow(clippy::too_many_arguments)]
    fn download(
        &self,
        url: &Url,
        origin: &Origin,
        key: &str,
        expected: Option<ExpectedDigest>,
        declared: Option<String>,
        progress: Progress,
        client: &mut HttpClient,
    ) -> Result<Blob, ImageError> {
        let tmp_dir = self.paths.blob_tmp_dir();
        let new_temp = |suffix: &str| {
            tempfile::Builder::new()
                .prefix(&format!("{key}."))
                .suffix(suffix)
                .tempfile_in(&tmp_dir)
                .map_err(|source| store_err(&tmp_dir, source))
        };
        let mut fetched = new_temp(".part")?;
        let want_sha512 = expected
            .as_ref()
            .is_some_and(|d| d.algorithm == Algorithm::Sha512);

        let (reader, total) = origin.open(url, client)?;
        let fetched_path = fetched.path().to_owned();
        let hashes = stream(
            reader,
            total,
            (fetched.as_file_mut(), &fetched_path),
            want_sha512,
            url,
            origin,
            progress,
        )?;
        fetched
            .as_file()
            .sync_all()
            .map_err(|source| store_err(fetched.path(), source))?;

        if let Some(expected) = &expected {
            let actual = match expected.algorithm {
                Algorithm::Sha256 => &hashes.sha256,
                Algorithm::Sha512 => hashes.sha512.as_ref().expect("sha512 was computed"),
            };
            if !actual.eq_ignore_ascii_case(&expected.hex) {
                return Err(ImageError::ChecksumMismatch {
                    url: url.to_string(),
                    algorithm: expected.algorithm.name(),
                    expected: expected.hex.clone(),
                    actual: actual.clone(),
                });
            }
        }

        let fetched = fetched.into_temp_path();
        let format = detect_format(&fetched, declared.as_deref(), url)?;

        let (final_path, sha256) = if format == "qcow2" || format == OPAQUE_FORMAT {
            (fetched, hashes.sha256)
        } else {
            let converted = new_temp(".qcow2")?.into_temp_path();
            let spinner = conversion_spinner(&format, progress);
            let result = disk::convert(&fetched, Some(&format), &converted, "qcow2");
            if let Some(s) = spinner {
                s.finish_and_clear();
            }
            result.map_err(|source| disk_err(url, source))?;
            drop(fetched);
            let sha256 = sha256_of_file(&converted)?;
            (converted, sha256)
        };
        if format != OPAQUE_FORMAT {
            let report = disk::check(&final_path).map_err(|source| disk_err(url, source))?;
            if !report.is_consistent() {
                return Err(ImageError::Corrupt {
                    url: url.to_string(),
                    corruptions: report.corruptions,
                    check_errors: report.check_errors,
                });
            }
        }
        let virtual_size = if format == OPAQUE_FORMAT {
            fs::metadata(&final_path)
                .map_err(|source| store_err(&final_path, source))?
                .len()
        } else {
            disk::info_as(&final_path, "qcow2")
                .map_err(|source| disk_err(url, source))?
                .virtual_size
        };

        let blob_path = self.paths.blob(&sha256);
        if blob_path.exists() {
            // The same content came from another source: keep the file
            // that is there (it may be in use).
            drop(final_path);
        } else {
            set_read_only(&final_path)?;
            final_path
                .persist(&blob_path)
                .map_err(|e| store_err(&blob_path, e.error))?;
            sync_dir(&self.paths.blob_dir());
        }
        let size = fs::metadata(&blob_path)
            .map_err(|source| store_err(&blob_path, source))?
            .len();
        Ok(Blob {
            sha256,
            size,
            virtual_size,
            source_format: format,
            path: blob_path,
        })
    }
}

/// Where the bytes of a source come from.
enum Origin {
    File(PathBuf),
    Http,
}

impl Origin {
    fn parse(url: &Url) -> Result<Self, ImageError> {
        match url.scheme() {
            "file" => {
                url.to_file_path()
                    .map(Origin::File)
                    .map_err(|()| ImageError::UnsupportedUrl {
                        url: url.to_string(),
                    })
            }
            "http" | "https" => Ok(Origin::Http),
            _ => Err(ImageError::UnsupportedUrl {
                url: url.to_string(),
            }),
        }
    }

    /// A reader of the content and its length when known.
    fn open(
        &self,
        url: &Url,
        client: &mut HttpClient,
    ) -> Result<(Box<dyn Read>, Option<u64>), ImageError> {
        match self {
            Origin::File(path) => {
                let unreadable = |source| ImageError::Unreadable {
                    path: path.clone(),
                    source,
                };
                let file = File::open(path).map_err(unreadable)?;
                let meta = file.metadata().map_err(unreadable)?;
                if meta.is_dir() {
                    return Err(unreadable(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "is a directory",
                    )));
                }
                Ok((Box::new(file), Some(meta.len())))
            }
            Origin::Http => {
                let response = client.get(url)?;
                let total = response.content_length();
                Ok((Box::new(response), total))
            }
        }
    }
}

/// A blocking HTTP client, built on first use.
#[derive(Default)]
struct HttpClient(Option<reqwest::blocking::Client>);

impl HttpClient {
    /// GET `url`, failing on a non-success status.
    fn get(&mut self, url: &Url) -> Result<reqwest::blocking::Response, ImageError> {
        let unreachable = |source| ImageError::Unreachable {
            url: url.to_string(),
            source,
        };
        let client = match &self.0 {
            Some(c) => c,
            None => {
                let c = reqwest::blocking::Client::builder()
                    .user_agent(concat!("amirun/", env!("CARGO_PKG_VERSION")))
                    .connect_timeout(Duration::from_secs(30))
                    // For the blocking client this bounds each wait (headers,
                    // and every read of the body), not the whole transfer.
                    .timeout(Duration::from_secs(120))
                    .build()
                    .map_err(unreachable)?;
                self.0.insert(c)
            }
        };
        let response = client.get(url.clone()).send().map_err(unreachable)?;
        let status = response.status();
        if !status.is_success() {
            return Err(ImageError::HttpStatus {
                url: url.to_string(),
                status: status.as_u16(),
            });
        }
        Ok(response)
    }
}

/// Digests of a streamed source.
struct Hashes {
    sha256: String,
    sha512: Option<String>,
}

/// Copy `reader` into `out`, hashing on the way and drawing progress.
fn stream(
    mut reader: Box<dyn Read>,
    total: Option<u64>,
    (out, out_path): (&mut File, &Path),
    want_sha512: bool,
    url: &Url,
    origin: &Origin,
    progress: Progress,
) -> Result<Hashes, ImageError> {
    let read_err = |received, source| match origin {
        Origin::File(path) => ImageError::Unreadable {
            path: path.clone(),
            source,
        },
        Origin::Http => ImageError::Interrupted {
            url: url.to_string(),
            received,
            source,
        },
    };
    let bar = download_bar(url, total, progress);
    let mut sha256 = Sha256::new();
    let mut sha512 = want_sha512.then(Sha512::new);
    let mut buf = vec![0u8; CHUNK];
    let mut received: u64 = 0;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(received, e)),
        };
        let chunk = &buf[..n];
        sha256.update(chunk);
        if let Some(h) = sha512.as_mut() {
            h.update(chunk);
        }
        out.write_all(chunk)
            .map_err(|source| store_err(out_path, source))?;
        received += n as u64;
        if let Some(b) = &bar {
            b.set_position(received);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if let Some(total) = total.filter(|&t| t != received) {
        return Err(read_err(
            received,
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("expected {total} bytes"),
            ),
        ));
    }
    Ok(Hashes {
        sha256: hex::encode(sha256.finalize()),
        sha512: sha512.map(|h| hex::encode(h.finalize())),
    })
}

fn show_progress(progress: Progress) -> bool {
    progress == Progress::Auto && io::stderr().is_terminal()
}

fn download_bar(url: &Url, total: Option<u64>, progress: Progress) -> Option<ProgressBar> {
    if !show_progress(progress) {
        return None;
    }
    let name = file_name(url);
    let bar = match total {
        Some(t) => ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        ),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec}")
                .expect("valid template"),
        ),
    };
    bar.set_message(format!("Downloading {name}"));
    Some(bar)
}

fn conversion_spinner(format: &str, progress: Progress) -> Option<ProgressBar> {
    if !show_progress(progress) {
        return None;
    }
    let spinner = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"),
    );
    spinner.set_message(format!("Converting {format} image to qcow2"));
    spinner.enable_steady_tick(Duration::from_millis(120));
    Some(spinner)
}

/// Detect the format of a fetched file from its content, check it against
/// the declared one and refuse anything that reads other host files.
fn detect_format(path: &Path, declared: Option<&str>, url: &Url) -> Result<String, ImageError> {
    if declared == Some(OPAQUE_FORMAT) {
        return Ok(OPAQUE_FORMAT.to_owned());
    }
    let mut info = disk::info(path).map_err(|source| disk_err(url, source))?;
    // A fixed-size VHD has its only header ("conectix") in the last 512
    // bytes, which qemu's probe does not look at: it says raw. (A source
    // declared raw is taken at its word.)
    if info.format == "raw" && declared != Some("raw") && has_vhd_footer(path) {
        if let Ok(vpc) = disk::info_as(path, "vpc") {
            info = vpc;
        }
    }
    let detected = info.format.clone();
    if let Some(declared) = declared {
        if declared != detected {
            return Err(ImageError::FormatMismatch {
                url: url.to_string(),
                declared: declared.to_owned(),
                detected,
            });
        }
    }
    if !SOURCE_FORMATS.contains(&detected.as_str()) {
        return Err(ImageError::UnsupportedFormat {
            url: url.to_string(),
            format: detected,
        });
    }
    if let Some(backing) = &info.backing_file {
        return Err(ImageError::NotSelfContained {
            url: url.to_string(),
            reference: format!("backing file {}", backing.display()),
        });
    }
    if let Some(file) = info.data_files.first() {
        return Err(ImageError::NotSelfContained {
            url: url.to_string(),
            reference: format!("data file {}", file.display()),
        });
    }
    Ok(detected)
}

fn has_vhd_footer(path: &Path) -> bool {
    use std::io::{Seek, SeekFrom};
    let Ok(mut f) = File::open(path) else {
        return false;
    };
    let mut cookie = [0u8; 8];
    f.seek(SeekFrom::End(-512)).is_ok()
        && f.read_exact(&mut cookie).is_ok()
        && &cookie == b"conectix"
}

/// qemu's name for a declared format (`vhd` is `vpc`), refusing unknown ones.
fn qemu_format_name(format: &str, url: &Url) -> Result<String, ImageError> {
    let lower = format.to_ascii_lowercase();
    if lower == OPAQUE_FORMAT {
        return Ok(lower);
    }
    let name = match lower.as_str() {
        "vhd" => "vpc",
        other => other,
    };
    if SOURCE_FORMATS.contains(&name) {
        Ok(name.to_owned())
    } else {
        Err(ImageError::UnsupportedFormat {
            url: url.to_string(),
            format: format.to_owned(),
        })
    }
}

/// Digest algorithms a checksum may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// By length of the hex digest.
    fn from_hex_len(len: usize) -> Option<Self> {
        match len {
            64 => Some(Algorithm::Sha256),
            128 => Some(Algorithm::Sha512),
            _ => None,
        }
    }
}

/// The digest a source must have.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ExpectedDigest {
    algorithm: Algorithm,
    /// Lower-case hex.
    hex: String,
}

impl ExpectedDigest {
    fn inline_sha256(hex: &str, url: &Url) -> Result<Self, ImageError> {
        let hex = hex.trim();
        if !is_hex(hex, 64) {
            return Err(ImageError::InvalidDigest {
                url: url.to_string(),
                digest: hex.to_owned(),
            });
        }
        Ok(Self {
            algorithm: Algorithm::Sha256,
            hex: hex.to_ascii_lowercase(),
        })
    }

    fn from_hex(hex: &str) -> Option<Self> {
        let algorithm = Algorithm::from_hex_len(hex.len())?;
        is_hex(hex, hex.len()).then(|| Self {
            algorithm,
            hex: hex.to_ascii_lowercase(),
        })
    }
}

/// Key of a source in the lock and index directories: sha256 of the URL
/// (the `url` crate has normalised it) and the expected digest.
fn source_key(url: &Url, expected: Option<&ExpectedDigest>, identity: Option<&str>) -> String {
    let digest = match expected {
        Some(d) => format!("{}:{}", d.algorithm.name(), d.hex),
        None => "unverified".to_owned(),
    };
    let text = match identity {
        Some(id) => format!("{url}\n{digest}\n{id}"),
        None => format!("{url}\n{digest}"),
    };
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// A local file's identity and change time: device, inode, size, mtime and
/// ctime (nanoseconds). Any write or replacement changes it.
fn file_identity(path: &Path) -> Result<String, ImageError> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path).map_err(|source| ImageError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    Ok(format!(
        "dev={} ino={} size={} mtime={}.{} ctime={}.{}",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    ))
}

/// The source key a file in `blobs/tmp` belongs to: temp files are named
/// `<key>.…`, and `disk::convert` names its own `.<key>.….tmp`.
fn temp_file_key(name: &str) -> Option<&str> {
    let name = name.trim_start_matches('.');
    let key = name.get(..64)?;
    (is_hex(key, 64) && name[64..].starts_with('.')).then_some(key)
}

/// The image's file name: the URL's last path segment, percent-decoded.
fn file_name(url: &Url) -> String {
    let segment = url
        .path_segments()
        .and_then(|mut s| s.next_back())
        .unwrap_or_default();
    percent_decode(segment)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Read a checksum file (file, http or https), refusing huge ones.
fn read_checksum_file(url: &Url, client: &mut HttpClient) -> Result<String, ImageError> {
    let too_large = || ImageError::ChecksumFileTooLarge {
        checksum_url: url.to_string(),
    };
    let mut bytes = Vec::new();
    match Origin::parse(url)? {
        Origin::File(path) => {
            let file = File::open(&path).map_err(|source| ImageError::Unreadable {
                path: path.clone(),
                source,
            })?;
            file.take(CHECKSUM_FILE_LIMIT + 1)
                .read_to_end(&mut bytes)
                .map_err(|source| ImageError::Unreadable { path, source })?;
        }
        Origin::Http => {
            let response = client.get(url)?;
            response
                .take(CHECKSUM_FILE_LIMIT + 1)
                .read_to_end(&mut bytes)
                .map_err(|source| ImageError::Interrupted {
                    url: url.to_string(),
                    received: 0,
                    source,
                })?;
        }
    }
    if bytes.len() as u64 > CHECKSUM_FILE_LIMIT {
        return Err(too_large());
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The digest listed for `file_name` in a checksum file.
///
/// Understands GNU coreutils lines (`<hex>  name`, `<hex> *name`), BSD lines
/// (`SHA256 (name) = <hex>`, also SHA512), and a file holding a single digest
/// (`<hex>` alone, or one GNU line whatever its name). sha256 or sha512 is
/// told from the digest's length. Comments (`#`), blank lines, the PGP
/// wrapper of a clear-signed file and lines about other files are skipped.
/// An exact name match wins over a match of the last path component
/// (`./name`, `dir/name`).
fn find_digest(text: &str, file_name: &str) -> Option<ExpectedDigest> {
    let mut by_basename = None;
    let mut gnu_or_bare = Vec::new();
    let mut in_signature = false;
    for raw in text.lines() {
        let mut line = raw.trim();
        if line == "-----BEGIN PGP SIGNATURE-----" {
            in_signature = true;
            continue;
        }
        if line == "-----END PGP SIGNATURE-----" {
            in_signature = false;
            continue;
        }
        // Dash-escaped lines of a clear-signed message.
        if let Some(rest) = line.strip_prefix("- ") {
            line = rest.trim();
        }
        if in_signature
            || line.is_empty()
            || line.starts_with('#')
            || line.starts_with("-----")
            || line.starts_with("Hash:")
        {
            continue;
        }
        let Some((name, hex, gnu)) = parse_bsd(line).or_else(|| parse_gnu(line)) else {
            continue;
        };
        let Some(digest) = ExpectedDigest::from_hex(hex) else {
            continue;
        };
        if gnu {
            gnu_or_bare.push(digest.clone());
        }
        match name {
            Some(n) if n == file_name => return Some(digest),
            Some(n) if n.rsplit('/').next() == Some(file_name) => {
                by_basename.get_or_insert(digest);
            }
            _ => {}
        }
    }
    by_basename.or_else(|| match gnu_or_bare.as_slice() {
        [only] => Some(only.clone()),
        _ => None,
    })
}

/// `ALGO (name) = hex` -> (name, hex, false). Algorithms other than SHA256
/// and SHA512 are recognised so their lines are skipped, not misread.
fn parse_bsd(line: &str) -> Option<(Option<&str>, &str, bool)> {
    let (algo, rest) = line.split_once(" (")?;
    let (name, hex) = rest.rsplit_once(") =")?;
    let hex = hex.trim();
    let len_ok = match algo.to_ascii_uppercase().as_str() {
        "SHA256" => hex.len() == 64,
        "SHA512" => hex.len() == 128,
        _ => false,
    };
    len_ok.then_some((Some(name), hex, false))
}

/// `hex  name`, `hex *name` or `hex` alone -> (name, hex, true).
fn parse_gnu(line: &str) -> Option<(Option<&str>, &str, bool)> {
    let (hex, name) = match line.split_once(char::is_whitespace) {
        Some((hex, rest)) => {
            let rest = rest.trim_start();
            let name = rest.strip_prefix('*').unwrap_or(rest);
            (hex, Some(name.strip_prefix("./").unwrap_or(name)))
        }
        None => (line, None),
    };
    Algorithm::from_hex_len(hex.len())?;
    is_hex(hex, hex.len()).then_some((name, hex, true))
}

fn sha256_of_file(path: &Path) -> Result<String, ImageError> {
    let mut file = File::open(path).map_err(|source| store_err(path, source))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(store_err(path, e)),
        };
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn set_read_only(path: &Path) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o444))
        .map_err(|source| store_err(path, source))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn store_err(path: &Path, source: io::Error) -> ImageError {
    ImageError::Store {
        path: path.to_owned(),
        source,
    }
}

fn disk_err(url: &Url, source: DiskError) -> ImageError {
    ImageError::Disk {
        url: url.to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A256: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B256: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn sha512(c: char) -> String {
        c.to_string().repeat(128)
    }

    fn d256(hex: &str) -> Option<ExpectedDigest> {
        Some(ExpectedDigest {
            algorithm: Algorithm::Sha256,
            hex: hex.to_owned(),
        })
    }

    #[test]
    fn gnu_checksum_lines() {
        let text = format!(
            "# comment\n{A256}  debian-12.qcow2\n{B256} *debian-12.raw\n\n{A256}  ./other.img\n"
        );
        assert_eq!(find_digest(&text, "debian-12.raw"), d256(B256));
        assert_eq!(find_digest(&text, "debian-12.qcow2"), d256(A256));
        assert_eq!(find_digest(&text, "other.img"), d256(A256));
        assert_eq!(find_digest(&text, "missing.img"), None);
    }

    #[test]
    fn exact_name_wins_over_basename() {
        let text = format!("{A256}  daily/disk.img\n{B256}  disk.img\n");
        assert_eq!(find_digest(&text, "disk.img"), d256(B256));
        let text = format!("{A256}  daily/disk.img\n{B256}  other.img\n");
        assert_eq!(find_digest(&text, "disk.img"), d256(A256));
    }

    #[test]
    fn sha512_is_told_by_length() {
        let h = sha512('c');
        let text = format!("{h}  debian-12-genericcloud-amd64.qcow2\n");
        let d = find_digest(&text, "debian-12-genericcloud-amd64.qcow2").unwrap();
        assert_eq!(d.algorithm, Algorithm::Sha512);
        assert_eq!(d.hex, h);
    }

    #[test]
    fn bsd_lines_in_a_signed_fedora_checksum_file() {
        let h512 = sha512('d');
        let text = format!(
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n\
             # Fedora-Cloud-Base-40-1.14.x86_64.qcow2: 397475840 bytes\n\
             MD5 (Fedora-Cloud-Base-40-1.14.x86_64.qcow2) = 0123456789abcdef0123456789abcdef\n\
             SHA256 (Fedora-Cloud-Base-40-1.14.x86_64.raw.xz) = {B256}\n\
             SHA256 (Fedora-Cloud-Base-40-1.14.x86_64.qcow2) = {A256}\n\
             SHA512 (Fedora-Cloud-Base-40-1.14.aarch64.qcow2) = {h512}\n\
             -----BEGIN PGP SIGNATURE-----\n\n\
             iQIzBAEBCAAdFiEEFz2fCq0+qfj4bHk0\n{A256}\n\
             -----END PGP SIGNATURE-----\n"
        );
        assert_eq!(
            find_digest(&text, "Fedora-Cloud-Base-40-1.14.x86_64.qcow2"),
            d256(A256)
        );
        let d = find_digest(&text, "Fedora-Cloud-Base-40-1.14.aarch64.qcow2").unwrap();
        assert_eq!((d.algorithm, d.hex), (Algorithm::Sha512, h512));
        // The digest-looking line inside the signature is not a single-digest file.
        assert_eq!(find_digest(&text, "nothing.qcow2"), None);
    }

    #[test]
    fn single_digest_files() {
        assert_eq!(find_digest(&format!("{A256}\n"), "x.img"), d256(A256));
        assert_eq!(
            find_digest(&format!("{}\n", A256.to_uppercase()), "x.img"),
            d256(A256)
        );
        assert_eq!(
            find_digest(&format!("{A256}  build-20240101.img\n"), "latest.img"),
            d256(A256)
        );
        // Two entries for other files: no guessing.
        assert_eq!(
            find_digest(&format!("{A256}  a.img\n{B256}  b.img\n"), "c.img"),
            None
        );
        // Garbage and wrong lengths are skipped.
        assert_eq!(find_digest("abc  x.img\nnot a digest\n", "x.img"), None);
    }

    #[test]
    fn crlf_and_dash_escaped_lines() {
        let text = format!("- {A256}  x.img\r\n{B256}  y.img\r\n");
        assert_eq!(find_digest(&text, "x.img"), d256(A256));
        assert_eq!(find_digest(&text, "y.img"), d256(B256));
    }

    #[test]
    fn source_keys_depend_on_url_and_digest_only() {
        let a = Url::parse("HTTP://Example.COM:80/a/disk.img#frag").unwrap();
        let mut a2 = a.clone();
        a2.set_fragment(None);
        let b = Url::parse("http://example.com/a/disk.img").unwrap();
        assert_eq!(
            source_key(&a2, d256(A256).as_ref(), None),
            source_key(&b, d256(A256).as_ref(), None)
        );
        assert_ne!(
            source_key(&b, d256(A256).as_ref(), None),
            source_key(&b, d256(B256).as_ref(), None)
        );
        assert_ne!(
            source_key(&b, None, None),
            source_key(&b, d256(A256).as_ref(), None)
        );
        assert!(is_hex(&source_key(&b, None, None), 64));
    }

    #[test]
    fn a_local_file_changed_in_place_gets_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        fs::write(&path, b"one").unwrap();
        let url = Url::from_file_path(&path).unwrap();
        let before = source_key(&url, None, Some(&file_identity(&path).unwrap()));
        assert_eq!(
            before,
            source_key(&url, None, Some(&file_identity(&path).unwrap()))
        );
        fs::write(&path, b"two").unwrap();
        let after = source_key(&url, None, Some(&file_identity(&path).unwrap()));
        assert_ne!(before, after);
    }

    #[test]
    fn file_names_are_percent_decoded() {
        let u = Url::parse("https://h/x/Fedora%2BCloud%20Base.qcow2?x=1").unwrap();
        assert_eq!(file_name(&u), "Fedora+Cloud Base.qcow2");
        assert_eq!(percent_decode("a%zzb%4"), "a%zzb%4");
    }

    #[test]
    fn temp_file_names_map_to_keys() {
        assert_eq!(temp_file_key(&format!("{A256}.x1y2.part")), Some(A256));
        assert_eq!(
            temp_file_key(&format!(".{A256}.x1.qcow2.Ab12.tmp")),
            Some(A256)
        );
        assert_eq!(temp_file_key("random.part"), None);
        assert_eq!(temp_file_key(&format!("{A256}x")), None);
    }

    #[test]
    fn declared_formats_use_qemu_names() {
        let u = Url::parse("file:///x").unwrap();
        assert_eq!(qemu_format_name("VHD", &u).unwrap(), "vpc");
        assert_eq!(qemu_format_name("vhdx", &u).unwrap(), "vhdx");
        let err = qemu_format_name("iso", &u).unwrap_err();
        assert!(matches!(err, ImageError::UnsupportedFormat { .. }));
        assert_eq!(err.code(), "InvalidParameterValue");
    }

    #[test]
    fn inline_digest_must_be_sha256() {
        let u = Url::parse("file:///x").unwrap();
        assert!(ExpectedDigest::inline_sha256("abc", &u).is_err());
        assert_eq!(
            ExpectedDigest::inline_sha256(&A256.to_uppercase(), &u).unwrap(),
            d256(A256).unwrap()
        );
    }

    #[test]
    fn stale_temp_files_of_idle_sources_are_removed() {
        let home = tempfile::tempdir().unwrap();
        let paths = Paths::new(home.path(), home.path().join("run"));
        let store = BlobStore::new(paths.clone());
        fs::create_dir_all(paths.blob_tmp_dir()).unwrap();
        fs::create_dir_all(paths.blob_lock_dir()).unwrap();
        let own = paths.blob_tmp_dir().join(format!("{A256}.1.part"));
        let idle = paths.blob_tmp_dir().join(format!(".{B256}.2.qcow2.3.tmp"));
        let busy_key = "c".repeat(64);
        let busy = paths.blob_tmp_dir().join(format!("{busy_key}.4.part"));
        let young_unknown = paths.blob_tmp_dir().join("something");
        for p in [&own, &idle, &busy, &young_unknown] {
            fs::write(p, b"x").unwrap();
        }
        let lock_file = File::create(paths.blob_lock(&busy_key)).unwrap();
        let _held = Flock::lock(lock_file, FlockArg::LockExclusive).unwrap();

        store.remove_stale_temp_files(A256);
        assert!(!own.exists());
        assert!(!idle.exists());
        assert!(busy.exists(), "a fetch holding its lock keeps its file");
        assert!(young_unknown.exists());
    }

    #[test]
    fn get_refuses_non_digests() {
        let home = tempfile::tempdir().unwrap();
        let store = BlobStore::new(Paths::new(home.path(), home.path()));
        assert_eq!(store.get("../../etc/passwd"), None);
        assert_eq!(store.get(A256), None);
    }
}
