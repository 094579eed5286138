//! The blob store: fetches disk images (file, http, https) into a
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
//!
//! This file holds the public types and the fetch pipeline
//! ([`BlobStore::fetch`]); its steps live beside it: `checksum` (step 1 and
//! verification), `sources` (step 2: source keys, locks, the source index,
//! stale temp files), `fetch` (step 3: file and HTTP origins, streaming
//! while hashing), `format` (step 4: detection and qemu's format names),
//! `progress` (the bars drawn on a terminal).
//!
//! Named `blobs`, not `images`: an AMI is an image too, and AMI operations
//! are [`crate::service`]'s; this module only holds the files under them.

mod checksum;
mod fetch;
mod format;
mod progress;
mod sources;

pub use progress::Progress;

use crate::disk::{self, DiskError};
use crate::error_code::ErrorCode;
use crate::paths::Paths;
use checksum::{find_digest, sha256_of_file, Algorithm, ExpectedDigest};
use fetch::{file_name, read_checksum_file, stream, HttpClient, Origin};
use format::{detect_format, qemu_format_name};
use progress::conversion_spinner;
use sources::{file_identity, source_key};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use url::Url;

/// Declared format of files that are not disk images (kernels, initial
/// ramdisks for direct kernel boot): stored byte for byte, never probed or
/// converted.
pub const OPAQUE_FORMAT: &str = "file";
/// A checksum file larger than this is not a checksum file.
const CHECKSUM_FILE_LIMIT: u64 = 16 * 1024 * 1024;
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
    pub fn code(&self) -> ErrorCode {
        match self {
            ImageError::Disk { source, .. } => source.code(),
            ImageError::Store { .. } => ErrorCode::InternalError,
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
            | ImageError::NotSelfContained { .. } => ErrorCode::InvalidParameterValue,
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
/// use amirun::blobs::{BlobStore, Expected, Progress, Source};
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

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
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

    #[test]
    fn get_refuses_non_digests() {
        let home = tempfile::tempdir().unwrap();
        let store = BlobStore::new(Paths::new(home.path(), home.path()));
        assert_eq!(store.get("../../etc/passwd"), None);
        assert_eq!(store.get(A256), None);
    }
}
