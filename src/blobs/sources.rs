//! Per-source bookkeeping of the blob store: each source (URL + expected
//! digest, + identity for local files) has a key, an exclusive lock that
//! makes concurrent fetches of it wait and download once, and an index
//! entry naming the blob it produced. Temp files of fetches that are no
//! longer running (their lock is free) are swept here.

use super::checksum::ExpectedDigest;
use super::progress::show_progress;
use super::{is_hex, store_err, sync_dir, Blob, BlobStore, ImageError, Progress};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use url::Url;

/// Temp files nobody can be tied to are removed after this long.
pub(super) const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);

/// One entry of the source index (`blobs/sources/<key>.json`).
#[derive(Debug, Serialize, Deserialize)]
struct SourceRecord {
    url: String,
    sha256: String,
    source_format: String,
}

impl BlobStore {
    /// Take the exclusive lock of one source, telling the user when another
    /// fetch holds it.
    pub(super) fn lock_source(
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
    pub(super) fn lookup_source(&self, key: &str) -> Option<Blob> {
        let text = fs::read(self.paths.blob_source(key)).ok()?;
        let record: SourceRecord = serde_json::from_slice(&text).ok()?;
        let mut blob = self.get(&record.sha256)?;
        blob.source_format = record.source_format;
        Some(blob)
    }

    /// Source format recorded for a blob by any source that produced it.
    pub(super) fn source_format_of(&self, sha256: &str) -> Option<String> {
        fs::read_dir(self.paths.blob_source_dir())
            .ok()?
            .filter_map(|e| fs::read(e.ok()?.path()).ok())
            .filter_map(|text| serde_json::from_slice::<SourceRecord>(&text).ok())
            .find(|r| r.sha256 == sha256)
            .map(|r| r.source_format)
    }

    /// Write the index entry of a source atomically.
    pub(super) fn record_source(
        &self,
        key: &str,
        url: &Url,
        blob: &Blob,
    ) -> Result<(), ImageError> {
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
    pub(super) fn remove_stale_temp_files(&self, own_key: &str) -> Vec<PathBuf> {
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
    pub(super) fn try_lock_idle(&self, key: &str) -> Option<Option<Flock<File>>> {
        match File::open(self.paths.blob_lock(key)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Some(None),
            Err(_) => None,
            Ok(file) => Flock::lock(file, FlockArg::LockExclusiveNonblock)
                .ok()
                .map(Some),
        }
    }
}

/// Key of a source in the lock and index directories: sha256 of the URL
/// (the `url` crate has normalised it) and the expected digest.
pub(super) fn source_key(
    url: &Url,
    expected: Option<&ExpectedDigest>,
    identity: Option<&str>,
) -> String {
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
pub(super) fn file_identity(path: &Path) -> Result<String, ImageError> {
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
pub(super) fn temp_file_key(name: &str) -> Option<&str> {
    let name = name.trim_start_matches('.');
    let key = name.get(..64)?;
    (is_hex(key, 64) && name[64..].starts_with('.')).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::super::checksum::Algorithm;
    use super::*;
    use crate::paths::Paths;

    const A256: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B256: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn d256(hex: &str) -> Option<ExpectedDigest> {
        Some(ExpectedDigest {
            algorithm: Algorithm::Sha256,
            hex: hex.to_owned(),
        })
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
}
