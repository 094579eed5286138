//! The only module that runs `qemu-img`: overlays, conversions, snapshots'
//! chains and image facts parsed from `qemu-img info --output=json`.
//!
//! INTERFACE STUB written by the lead; the bodies are being implemented.

use std::path::{Path, PathBuf};

/// What went wrong running `qemu-img`.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// `qemu-img` is not installed.
    #[error("qemu-img is not installed; install the Debian package qemu-utils")]
    QemuImgMissing,
    /// `qemu-img` ran and failed.
    #[error("qemu-img {op} failed for {path}: {stderr}")]
    Failed {
        op: &'static str,
        path: PathBuf,
        stderr: String,
    },
    /// Running it failed at the OS level.
    #[error("could not run qemu-img {op} for {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Its JSON could not be read.
    #[error("could not parse qemu-img info for {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl DiskError {
    /// EC2-style error code.
    pub fn code(&self) -> &'static str {
        match self {
            DiskError::QemuImgMissing => "MissingDependency",
            _ => "InvalidParameterValue",
        }
    }
}

/// Facts about one image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// `qcow2`, `raw`, `vmdk`, `vpc` (vhd), `vhdx`, …
    pub format: String,
    /// Size the guest sees, in bytes.
    pub virtual_size: u64,
    /// Bytes used on the host.
    pub actual_size: u64,
    /// Backing file, if any.
    pub backing_file: Option<PathBuf>,
}

/// `qemu-img info --output=json` of `path` (format probed from content).
pub fn info(path: &Path) -> Result<ImageInfo, DiskError> {
    let _ = path;
    unimplemented!()
}

/// Convert `src` (format given or probed) into a new file `dst` of `dst_format`.
pub fn convert(
    src: &Path,
    src_format: Option<&str>,
    dst: &Path,
    dst_format: &str,
) -> Result<(), DiskError> {
    let _ = (src, src_format, dst, dst_format);
    unimplemented!()
}

/// A new qcow2 overlay at `dst` backed by `backing`, optionally grown to `size` bytes.
pub fn create_overlay(
    backing: &Path,
    backing_format: &str,
    dst: &Path,
    size: Option<u64>,
) -> Result<(), DiskError> {
    let _ = (backing, backing_format, dst, size);
    unimplemented!()
}

/// A new blank qcow2 disk of `size` bytes.
pub fn create_blank(dst: &Path, size: u64) -> Result<(), DiskError> {
    let _ = (dst, size);
    unimplemented!()
}
