//! The only module that runs `qemu-img`: overlays, conversions, snapshots'
//! chains and image facts parsed from `qemu-img info --output=json`.
//!
//! Keeping every `qemu-img` call here means one place decides how the tool is
//! found, which flags are always passed (formats are given explicitly wherever
//! they are known, so content is never re-probed behind our back), and how its
//! failures are reported: a [`DiskError`] that names the operation and the file
//! and carries `qemu-img`'s own stderr.
//!
//! Operations that produce a new file ([`convert`], [`create_overlay`],
//! [`create_blank`]) write it under a hidden temporary name beside the
//! destination and rename it into place once `qemu-img` has succeeded and the
//! data is synced, so a failure (or a kill) never leaves a half-written file at
//! the destination and never damages a file that was there before.
//! Operations that change a file in place ([`resize`], [`rebase`], [`commit`])
//! are as atomic as `qemu-img` makes them.

use crate::error_code::ErrorCode;
use serde::Deserialize;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The program this module runs.
const QEMU_IMG: &str = "qemu-img";

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
    pub fn code(&self) -> ErrorCode {
        match self {
            DiskError::QemuImgMissing => ErrorCode::MissingDependency,
            _ => ErrorCode::InvalidParameterValue,
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
    /// Backing file, if any (`full-backing-filename`, i.e. resolved against
    /// the image's directory when the stored name is relative).
    pub backing_file: Option<PathBuf>,
    /// Format recorded for the backing file, if any.
    pub backing_format: Option<String>,
    /// Other host files the image reads its data from: a qcow2 external data
    /// file, or vmdk extents other than the image file itself. Empty for a
    /// self-contained image. An image fetched from elsewhere must have none,
    /// or opening it would read arbitrary host files.
    pub data_files: Vec<PathBuf>,
}

/// `qemu-img info --output=json` as qemu-img 7.x to 10.x print it (the
/// fields amirun uses).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct InfoJson {
    format: String,
    virtual_size: u64,
    #[serde(default)]
    actual_size: Option<u64>,
    #[serde(default)]
    filename: Option<String>,
    #[serde(default)]
    backing_filename: Option<String>,
    #[serde(default)]
    full_backing_filename: Option<String>,
    #[serde(default)]
    backing_filename_format: Option<String>,
    #[serde(default)]
    format_specific: Option<FormatSpecific>,
}

#[derive(Debug, Deserialize)]
struct FormatSpecific {
    #[serde(default)]
    data: serde_json::Value,
}

impl InfoJson {
    fn into_info(self, path: &Path) -> ImageInfo {
        let backing_file = self
            .full_backing_filename
            .or(self.backing_filename)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        let own_name = self.filename.clone().unwrap_or_default();
        let dir = path.parent().unwrap_or(Path::new(""));
        let mut data_files = Vec::new();
        if let Some(data) = self.format_specific.as_ref().map(|f| &f.data) {
            // qcow2 with an external data file.
            if let Some(file) = data.get("data-file").and_then(|v| v.as_str()) {
                data_files.push(dir.join(file));
            }
            // vmdk: every extent is a file; a monolithic image lists itself.
            if let Some(extents) = data.get("extents").and_then(|v| v.as_array()) {
                for name in extents
                    .iter()
                    .filter_map(|e| e.get("filename").and_then(|v| v.as_str()))
                {
                    let file = dir.join(name);
                    if name != own_name && Path::new(name) != path && !data_files.contains(&file) {
                        data_files.push(file);
                    }
                }
            }
        }
        ImageInfo {
            format: self.format,
            virtual_size: self.virtual_size,
            actual_size: self.actual_size.unwrap_or(0),
            backing_file,
            backing_format: self.backing_filename_format,
            data_files,
        }
    }
}

/// Result of [`check`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Corrupted clusters (data may be lost).
    pub corruptions: u64,
    /// Leaked clusters (space wasted, data intact).
    pub leaks: u64,
    /// Errors that stopped the check from looking at everything.
    pub check_errors: u64,
    /// Whether the format has no consistency check (e.g. raw); all counts are 0.
    pub unsupported: bool,
}

impl CheckReport {
    /// No corruption and every cluster checked (leaks are harmless).
    pub fn is_consistent(&self) -> bool {
        self.corruptions == 0 && self.check_errors == 0
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct CheckJson {
    #[serde(default)]
    corruptions: u64,
    #[serde(default)]
    leaks: u64,
    #[serde(default)]
    check_errors: u64,
}

/// `qemu-img info --output=json` of `path` (format probed from content).
///
/// Backing files are not opened; `-U` lets it read an image a running QEMU
/// holds open.
pub fn info(path: &Path) -> Result<ImageInfo, DiskError> {
    info_impl(path, None)
}

/// Like [`info`], but opens `path` as `format` instead of probing it.
pub fn info_as(path: &Path, format: &str) -> Result<ImageInfo, DiskError> {
    info_impl(path, Some(format))
}

fn info_impl(path: &Path, format: Option<&str>) -> Result<ImageInfo, DiskError> {
    let mut cmd = qemu_img();
    cmd.args(["info", "--output=json", "-U"]);
    if let Some(f) = format {
        cmd.args(["-f", f]);
    }
    cmd.arg(path);
    let stdout = run(cmd, "info", path)?;
    let parsed: InfoJson = serde_json::from_slice(&stdout).map_err(|source| DiskError::Parse {
        path: path.to_owned(),
        source,
    })?;
    Ok(parsed.into_info(path))
}

/// Convert `src` (format given or probed) into a new file `dst` of `dst_format`.
///
/// `dst` is written under a temporary name beside it and renamed into place
/// on success, replacing any file already there.
pub fn convert(
    src: &Path,
    src_format: Option<&str>,
    dst: &Path,
    dst_format: &str,
) -> Result<(), DiskError> {
    let tmp = temp_beside(dst, "convert")?;
    let mut cmd = qemu_img();
    cmd.arg("convert");
    if let Some(f) = src_format {
        cmd.args(["-f", f]);
    }
    cmd.args(["-O", dst_format]).arg(src).arg(&tmp);
    run(cmd, "convert", src)?;
    finish(tmp, dst, "convert")
}

/// A new qcow2 overlay at `dst` backed by `backing`, optionally grown to `size` bytes.
///
/// The backing path is recorded absolute, so the overlay does not depend on
/// the working directory. `dst` is written beside itself and renamed into
/// place, replacing any file already there.
pub fn create_overlay(
    backing: &Path,
    backing_format: &str,
    dst: &Path,
    size: Option<u64>,
) -> Result<(), DiskError> {
    let backing = absolute(backing, "create")?;
    let tmp = temp_beside(dst, "create")?;
    let mut cmd = qemu_img();
    cmd.args(["create", "-q", "-f", "qcow2", "-b"])
        .arg(&backing)
        .args(["-F", backing_format])
        .arg(&tmp);
    if let Some(size) = size {
        cmd.arg(size.to_string());
    }
    run(cmd, "create", dst)?;
    finish(tmp, dst, "create")
}

/// A new qcow2 overlay at `dst` backed by `backing`, of `size` bytes,
/// without opening the backing file (`qemu-img create -u`).
///
/// For an overlay on a file a running QEMU holds locked (a live snapshot):
/// `qemu-img` could not open it, and needs not, since the size is given.
pub fn create_overlay_unopened(
    backing: &Path,
    backing_format: &str,
    dst: &Path,
    size: u64,
) -> Result<(), DiskError> {
    let backing = absolute(backing, "create")?;
    let tmp = temp_beside(dst, "create")?;
    let mut cmd = qemu_img();
    cmd.args(["create", "-q", "-u", "-f", "qcow2", "-b"])
        .arg(&backing)
        .args(["-F", backing_format])
        .arg(&tmp)
        .arg(size.to_string());
    run(cmd, "create", dst)?;
    finish(tmp, dst, "create")
}

/// Like [`convert`], with `-o` options for the new file (e.g.
/// `subformat=streamOptimized`) and progress: `on_progress` gets the
/// percentage done as `qemu-img convert -p` reports it.
pub fn convert_with_progress(
    src: &Path,
    src_format: Option<&str>,
    dst: &Path,
    dst_format: &str,
    options: Option<&str>,
    on_progress: &mut dyn FnMut(f64),
) -> Result<(), DiskError> {
    use std::io::Read;
    let tmp = temp_beside(dst, "convert")?;
    let mut cmd = qemu_img();
    cmd.args(["convert", "-p"]);
    if let Some(f) = src_format {
        cmd.args(["-f", f]);
    }
    cmd.args(["-O", dst_format]);
    if let Some(o) = options {
        cmd.args(["-o", o]);
    }
    cmd.arg(src).arg(&tmp);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tracing::debug!(?cmd, "running qemu-img");
    let io = |source| DiskError::Io {
        op: "convert",
        path: src.to_owned(),
        source,
    };
    let mut child = cmd.spawn().map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            DiskError::QemuImgMissing
        } else {
            io(source)
        }
    })?;
    let mut stderr = child.stderr.take().expect("piped");
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    // Progress lines look like "    (12.50/100%)\r".
    let mut stdout = child.stdout.take().expect("piped");
    let mut pending = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        let n = stdout.read(&mut chunk).map_err(io)?;
        if n == 0 {
            break;
        }
        for &b in &chunk[..n] {
            if b == b'\r' || b == b'\n' {
                let line = String::from_utf8_lossy(&pending);
                if let Some(p) = line
                    .trim()
                    .strip_prefix('(')
                    .and_then(|l| l.split('/').next())
                    .and_then(|p| p.parse::<f64>().ok())
                {
                    on_progress(p);
                }
                pending.clear();
            } else {
                pending.push(b);
            }
        }
    }
    let status = child.wait().map_err(io)?;
    let stderr = err_reader.join().unwrap_or_default();
    if !status.success() {
        return Err(failed("convert", src, &stderr));
    }
    finish(tmp, dst, "convert")
}

/// A new blank qcow2 disk of `size` bytes.
pub fn create_blank(dst: &Path, size: u64) -> Result<(), DiskError> {
    let tmp = temp_beside(dst, "create")?;
    let mut cmd = qemu_img();
    cmd.args(["create", "-q", "-f", "qcow2"])
        .arg(&tmp)
        .arg(size.to_string());
    run(cmd, "create", dst)?;
    finish(tmp, dst, "create")
}

/// Grow the image at `path` to `size` bytes (qemu-img refuses to shrink, which
/// would lose data). Its format is read first and passed explicitly.
pub fn resize(path: &Path, size: u64) -> Result<(), DiskError> {
    let format = info(path)?.format;
    let mut cmd = qemu_img();
    cmd.args(["resize", "-q", "-f", &format])
        .arg(path)
        .arg(size.to_string());
    run(cmd, "resize", path).map(drop)
}

/// Point the qcow2 image at `path` to a new backing file, or to none.
///
/// - `Some((backing, format))`, safe mode: the data that differs between the
///   old and the new backing chain is copied into `path`, so the guest sees
///   the same disk afterwards.
/// - `None`, safe mode: every block of the old chain is copied into `path`,
///   which becomes self-contained (flatten).
/// - `unsafe_mode`: only the recorded backing name changes (`-u`); use it when
///   the new backing file has the same content (a moved or renamed file).
///
/// A new backing path is recorded absolute.
pub fn rebase(
    path: &Path,
    new_backing: Option<(&Path, &str)>,
    unsafe_mode: bool,
) -> Result<(), DiskError> {
    let mut cmd = qemu_img();
    cmd.args(["rebase", "-q", "-f", "qcow2"]);
    if unsafe_mode {
        cmd.arg("-u");
    }
    match new_backing {
        Some((backing, format)) => {
            let backing = absolute(backing, "rebase")?;
            cmd.arg("-b").arg(backing).args(["-F", format]);
        }
        None => {
            cmd.args(["-b", ""]);
        }
    }
    cmd.arg(path);
    run(cmd, "rebase", path).map(drop)
}

/// Merge the qcow2 image `top` into its backing file (`qemu-img commit`).
/// Afterwards the backing file holds the data; `top` is emptied.
pub fn commit(top: &Path) -> Result<(), DiskError> {
    let mut cmd = qemu_img();
    cmd.args(["commit", "-q", "-f", "qcow2"]).arg(top);
    run(cmd, "commit", top).map(drop)
}

/// Consistency check of the image at `path` (`qemu-img check`). Corruptions
/// and leaks are reported in the [`CheckReport`], not as errors; a format
/// without checks (raw) reports `unsupported`.
pub fn check(path: &Path) -> Result<CheckReport, DiskError> {
    let format = info(path)?.format;
    let mut cmd = qemu_img();
    cmd.args(["check", "--output=json", "-f", &format])
        .arg(path);
    let out = spawn(cmd, "check", path)?;
    match out.status.code() {
        // 0 clean, 2 corruptions, 3 leaks only: the JSON says how many.
        Some(0 | 2 | 3) => {
            let parsed: CheckJson =
                serde_json::from_slice(&out.stdout).map_err(|source| DiskError::Parse {
                    path: path.to_owned(),
                    source,
                })?;
            Ok(CheckReport {
                corruptions: parsed.corruptions,
                leaks: parsed.leaks,
                check_errors: parsed.check_errors,
                unsupported: false,
            })
        }
        // The format does not support checks.
        Some(63) => Ok(CheckReport {
            unsupported: true,
            ..CheckReport::default()
        }),
        _ => Err(failed("check", path, &out.stderr)),
    }
}

fn qemu_img() -> Command {
    let mut cmd = Command::new(QEMU_IMG);
    // Stable, untranslated messages in errors.
    cmd.env("LC_ALL", "C");
    cmd
}

/// Run `cmd`, returning its stdout on success.
fn run(cmd: Command, op: &'static str, path: &Path) -> Result<Vec<u8>, DiskError> {
    let out = spawn(cmd, op, path)?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(failed(op, path, &out.stderr))
    }
}

fn spawn(
    mut cmd: Command,
    op: &'static str,
    path: &Path,
) -> Result<std::process::Output, DiskError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tracing::debug!(?cmd, "running qemu-img");
    cmd.output().map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            DiskError::QemuImgMissing
        } else {
            DiskError::Io {
                op,
                path: path.to_owned(),
                source,
            }
        }
    })
}

fn failed(op: &'static str, path: &Path, stderr: &[u8]) -> DiskError {
    let stderr = String::from_utf8_lossy(stderr);
    let stderr = stderr.trim();
    DiskError::Failed {
        op,
        path: path.to_owned(),
        stderr: if stderr.is_empty() {
            "no message".to_owned()
        } else {
            stderr.to_owned()
        },
    }
}

fn absolute(path: &Path, op: &'static str) -> Result<PathBuf, DiskError> {
    std::path::absolute(path).map_err(|source| DiskError::Io {
        op,
        path: path.to_owned(),
        source,
    })
}

/// A hidden, uniquely named temporary file beside `dst`
/// (`.<dst name>.<random>.tmp`), removed again when dropped.
fn temp_beside(dst: &Path, op: &'static str) -> Result<tempfile::TempPath, DiskError> {
    let io = |source| DiskError::Io {
        op,
        path: dst.to_owned(),
        source,
    };
    let dir = match dst.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = dst.file_name().unwrap_or(OsStr::new("image"));
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    let file = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io)?;
    Ok(file.into_temp_path())
}

/// Make the finished temporary file durable and rename it to `dst`.
fn finish(tmp: tempfile::TempPath, dst: &Path, op: &'static str) -> Result<(), DiskError> {
    let io = |source| DiskError::Io {
        op,
        path: dst.to_owned(),
        source,
    };
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    tmp.persist(dst).map_err(|e| io(e.error))?;
    if let Some(dir) = dst.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Durability of the rename itself; not fatal where directories
        // cannot be opened for sync.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const MIB: u64 = 1024 * 1024;

    fn raw_with_data(dir: &Path, name: &str, size: u64) -> PathBuf {
        let path = dir.join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&b"amirun-test-data".repeat(1024)).unwrap();
        f.set_len(size).unwrap();
        path
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn info_reads_format_sizes_and_backing() {
        let dir = tempfile::tempdir().unwrap();
        let raw = raw_with_data(dir.path(), "a.raw", 2 * MIB);
        let i = info(&raw).unwrap();
        assert_eq!(i.format, "raw");
        assert_eq!(i.virtual_size, 2 * MIB);
        assert_eq!(i.backing_file, None);
        assert!(i.data_files.is_empty());

        let overlay = dir.path().join("o.qcow2");
        create_overlay(&raw, "raw", &overlay, Some(4 * MIB)).unwrap();
        let i = info(&overlay).unwrap();
        assert_eq!(i.format, "qcow2");
        assert_eq!(i.virtual_size, 4 * MIB);
        assert_eq!(i.backing_file.as_deref(), Some(raw.as_path()));
        assert_eq!(i.backing_format.as_deref(), Some("raw"));
        assert!(i.actual_size > 0);
    }

    #[test]
    fn overlay_records_an_absolute_backing_path() {
        let dir = tempfile::tempdir().unwrap();
        raw_with_data(dir.path(), "base.raw", MIB);
        // A relative backing path given from inside the directory.
        let cwd = std::env::current_dir().unwrap();
        let rel = pathdiff(dir.path(), &cwd).join("base.raw");
        let overlay = dir.path().join("o.qcow2");
        create_overlay(&rel, "raw", &overlay, None).unwrap();
        let backing = info(&overlay).unwrap().backing_file.unwrap();
        assert!(backing.is_absolute(), "{backing:?}");
        assert_eq!(backing, std::path::absolute(&rel).unwrap());
    }

    /// `to` relative to `from` when `to` is under `from`, else `to` itself.
    fn pathdiff(to: &Path, from: &Path) -> PathBuf {
        to.strip_prefix(from)
            .map(Path::to_path_buf)
            .unwrap_or(to.to_path_buf())
    }

    #[test]
    fn convert_round_trips_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let raw = raw_with_data(dir.path(), "a.raw", MIB);
        let vmdk = dir.path().join("a.vmdk");
        convert(&raw, Some("raw"), &vmdk, "vmdk").unwrap();
        assert_eq!(info(&vmdk).unwrap().format, "vmdk");
        assert!(info(&vmdk).unwrap().data_files.is_empty());
        let qcow = dir.path().join("a.qcow2");
        convert(&vmdk, None, &qcow, "qcow2").unwrap();
        let back = dir.path().join("b.raw");
        convert(&qcow, Some("qcow2"), &back, "raw").unwrap();
        assert_eq!(std::fs::read(&raw).unwrap(), std::fs::read(&back).unwrap());
        assert_eq!(entries(dir.path()), ["a.qcow2", "a.raw", "a.vmdk", "b.raw"]);
    }

    #[test]
    fn failed_convert_keeps_the_old_destination_and_reports_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join("dst.qcow2");
        std::fs::write(&dst, b"previous").unwrap();
        let err = convert(&dir.path().join("missing.raw"), None, &dst, "qcow2").unwrap_err();
        match &err {
            DiskError::Failed { op, stderr, .. } => {
                assert_eq!(*op, "convert");
                assert!(stderr.contains("missing.raw"), "{stderr}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(err.code(), ErrorCode::InvalidParameterValue);
        assert_eq!(std::fs::read(&dst).unwrap(), b"previous");
        assert_eq!(entries(dir.path()), ["dst.qcow2"]);
    }

    #[test]
    fn blank_resize_check() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("eph.qcow2");
        create_blank(&disk, MIB).unwrap();
        assert_eq!(info(&disk).unwrap().virtual_size, MIB);
        resize(&disk, 3 * MIB).unwrap();
        assert_eq!(info(&disk).unwrap().virtual_size, 3 * MIB);
        let report = check(&disk).unwrap();
        assert!(report.is_consistent() && !report.unsupported, "{report:?}");

        let raw = raw_with_data(dir.path(), "a.raw", MIB);
        assert!(check(&raw).unwrap().unsupported);
    }

    #[test]
    fn rebase_and_commit_keep_the_guest_view() {
        let dir = tempfile::tempdir().unwrap();
        let raw = raw_with_data(dir.path(), "base.raw", MIB);
        let base = dir.path().join("base.qcow2");
        convert(&raw, Some("raw"), &base, "qcow2").unwrap();
        let top = dir.path().join("top.qcow2");
        create_overlay(&base, "qcow2", &top, None).unwrap();

        // Flatten: top becomes self-contained with the same content.
        rebase(&top, None, false).unwrap();
        assert_eq!(info(&top).unwrap().backing_file, None);
        let flat = dir.path().join("flat.raw");
        convert(&top, Some("qcow2"), &flat, "raw").unwrap();
        assert_eq!(std::fs::read(&raw).unwrap(), std::fs::read(&flat).unwrap());

        // Unsafe rebase only rewrites the name.
        rebase(&top, Some((&base, "qcow2")), true).unwrap();
        assert_eq!(
            info(&top).unwrap().backing_file.as_deref(),
            Some(base.as_path())
        );

        // Commit: an overlay holding data (made by converting, then pointed
        // at a blank backing file without copying) merges into that file.
        let blank = dir.path().join("blank.qcow2");
        create_blank(&blank, MIB).unwrap();
        let over = dir.path().join("over.qcow2");
        convert(&raw, Some("raw"), &over, "qcow2").unwrap();
        rebase(&over, Some((&blank, "qcow2")), true).unwrap();
        commit(&over).unwrap();
        let out = dir.path().join("out.raw");
        convert(&blank, Some("qcow2"), &out, "raw").unwrap();
        assert_eq!(std::fs::read(&raw).unwrap(), std::fs::read(&out).unwrap());
    }

    #[test]
    fn unopened_overlay_and_progress_convert() {
        let dir = tempfile::tempdir().unwrap();
        let raw = raw_with_data(dir.path(), "base.raw", 2 * MIB);
        let over = dir.path().join("o.qcow2");
        create_overlay_unopened(&raw, "raw", &over, 2 * MIB).unwrap();
        let i = info(&over).unwrap();
        assert_eq!(i.backing_file.as_deref(), Some(raw.as_path()));
        assert_eq!(i.virtual_size, 2 * MIB);
        let mut seen = Vec::new();
        let vmdk = dir.path().join("o.vmdk");
        convert_with_progress(
            &over,
            Some("qcow2"),
            &vmdk,
            "vmdk",
            Some("subformat=streamOptimized"),
            &mut |p| seen.push(p),
        )
        .unwrap();
        assert!(seen.last().is_some_and(|p| *p >= 99.9), "{seen:?}");
        let back = dir.path().join("back.raw");
        convert(&vmdk, Some("vmdk"), &back, "raw").unwrap();
        assert_eq!(std::fs::read(&raw).unwrap(), std::fs::read(&back).unwrap());
    }

    #[test]
    fn missing_program_is_reported_with_the_package_name() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = Command::new("qemu-img-that-does-not-exist");
        let err = run(cmd, "info", dir.path()).unwrap_err();
        assert!(matches!(err, DiskError::QemuImgMissing));
        assert!(err.to_string().contains("qemu-utils"));
        assert_eq!(err.code(), ErrorCode::MissingDependency);
    }

    #[test]
    fn vmdk_descriptor_pointing_elsewhere_lists_its_extent() {
        let dir = tempfile::tempdir().unwrap();
        raw_with_data(dir.path(), "secret.raw", MIB);
        let desc = dir.path().join("evil.vmdk");
        std::fs::write(
            &desc,
            "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
             createType=\"monolithicFlat\"\n\nRW 2048 FLAT \"secret.raw\" 0\n\n\
             ddb.virtualHWVersion = \"4\"\nddb.geometry.cylinders = \"2\"\n\
             ddb.geometry.heads = \"16\"\nddb.geometry.sectors = \"63\"\nddb.adapterType = \"ide\"\n",
        )
        .unwrap();
        let i = info(&desc).unwrap();
        assert_eq!(i.format, "vmdk");
        assert_eq!(i.data_files, [dir.path().join("secret.raw")]);
    }
}
