//! The image store: fetches disk images (file, http, https) into a
//! content-addressed blob store, hashing while streaming, verifying against
//! a digest or the vendor's checksum file, converting to qcow2, and renaming
//! into place only when complete.
//!
//! INTERFACE STUB written by the lead; the bodies are being implemented.

use crate::paths::Paths;
use std::path::PathBuf;
use url::Url;

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
    /// Any other failure (unreachable URL, unreadable file, …).
    #[error("{message}")]
    Other {
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl ImageError {
    /// EC2-style error code.
    pub fn code(&self) -> &'static str {
        match self {
            ImageError::ChecksumMismatch { .. } => "InvalidParameterValue",
            ImageError::Other { .. } => "InvalidParameterValue",
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
    /// Format the source had before conversion.
    pub source_format: String,
    /// Path of the stored file.
    pub path: PathBuf,
}

/// The content-addressed blob store under `$AMIRUN_HOME/blobs`.
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
    pub fn fetch(&self, source: &Source, progress: Progress) -> Result<Blob, ImageError> {
        let _ = (source, progress, &self.paths);
        unimplemented!()
    }

    /// A stored blob by digest, if present.
    pub fn get(&self, sha256: &str) -> Option<Blob> {
        let _ = sha256;
        unimplemented!()
    }
}
