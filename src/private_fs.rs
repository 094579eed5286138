//! Private by default on disk: amirun's state holds private keys, user data
//! and console output, so nobody but its owner may read it.
//!
//! - `$AMIRUN_HOME` is created 0700 and tightened to 0700 when it is ours
//!   and looser ([`ensure_private_home`]); files that hold secrets (the
//!   database and its `-wal`/`-shm`, seeds, serial logs) are 0600
//!   ([`private_file`]). Modes are given at creation (`mode()` on the open
//!   or mkdir), never left to the umask, and fixed on existing files.
//! - The runtime directory lives in a shared place (`/dev/shm`, or wherever
//!   `AMIRUN_RUNTIME_DIR` points), so it is checked before use
//!   ([`ensure_runtime_dir`]): it must belong to the effective user and
//!   must not be writable by group or others (someone else could have
//!   planted files or symlinks in it); then it is tightened to 0700.
//!   Anything else is refused with a message naming the directory and the fix.
//! - Without `AMIRUN_RUNTIME_DIR` or `XDG_RUNTIME_DIR`, the runtime directory
//!   gets a random name, recorded in `$AMIRUN_HOME` ([`recorded_runtime_dir`]):
//!   another user cannot create it first, as they could a predictable name.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PrivateDirError {
    #[error("Cannot create or inspect {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "The runtime directory {path} belongs to uid {owner}, not to you (uid {me}): \
         someone else controls what is in it. Remove it, or set AMIRUN_RUNTIME_DIR \
         to a directory of your own with mode 0700"
    )]
    NotOwned { path: PathBuf, owner: u32, me: u32 },
    #[error(
        "The runtime directory {path} is writable by others (mode {mode:04o}): \
         someone else could have put files in it. Remove it, or set AMIRUN_RUNTIME_DIR \
         to a directory of your own with mode 0700"
    )]
    Writable { path: PathBuf, mode: u32 },
    #[error("The runtime directory {path} is not a directory")]
    NotDirectory { path: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PrivateDirError + '_ {
    move |source| PrivateDirError::Io {
        path: path.to_owned(),
        source,
    }
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Create `dir` (and missing parents) with mode 0700 whatever the umask;
/// an existing one of ours with group or other bits is tightened to 0700.
pub fn ensure_private_home(dir: &Path) -> Result<(), PrivateDirError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let meta = std::fs::metadata(dir).map_err(io(dir))?;
    if meta.uid() == euid() && meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    }
    Ok(())
}

/// Create the runtime directory 0700 if it is missing (parents as they
/// would be by `mkdir -p`), then check that it is a directory of the
/// effective user that nobody else can write to, and tighten it to 0700.
pub fn ensure_runtime_dir(dir: &Path) -> Result<(), PrivateDirError> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(dir)(e)),
    }
    let meta = std::fs::metadata(dir).map_err(io(dir))?;
    if !meta.is_dir() {
        return Err(PrivateDirError::NotDirectory {
            path: dir.to_owned(),
        });
    }
    if meta.uid() != euid() {
        return Err(PrivateDirError::NotOwned {
            path: dir.to_owned(),
            owner: meta.uid(),
            me: euid(),
        });
    }
    if meta.mode() & 0o022 != 0 {
        return Err(PrivateDirError::Writable {
            path: dir.to_owned(),
            mode: meta.mode() & 0o7777,
        });
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    }
    Ok(())
}

/// Make `path` a 0600 file: created so when `create` and missing, tightened
/// when it exists with group or other bits; left alone when it is missing
/// and not to be created.
pub fn private_file(path: &Path, create: bool) -> std::io::Result<()> {
    if create {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_file() && m.mode() & 0o077 != 0 => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The runtime directory recorded in `pointer` when it still exists and
/// passes [`ensure_runtime_dir`]; else, when nothing is recorded yet, a
/// `legacy` directory an older amirun made, if it exists and passes the
/// same check (so its instance-store disks are not orphaned; a squatter's
/// would fail it); otherwise a new directory
/// `<base>/<prefix><16 random hex digits>` made 0700. The choice is recorded
/// under the flock `lock`, so concurrent processes agree on one.
pub fn recorded_runtime_dir(
    pointer: &Path,
    lock: &Path,
    base: &Path,
    prefix: &str,
    legacy: Option<&Path>,
) -> Result<PathBuf, PrivateDirError> {
    if let Some(home) = pointer.parent() {
        ensure_private_home(home)?;
    }
    let lock_file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(lock)
        .map_err(io(lock))?;
    let _held = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| io(lock)(errno.into()))?;
    let usable = |dir: &Path| dir.is_absolute() && dir.is_dir() && ensure_runtime_dir(dir).is_ok();
    let recorded = std::fs::read_to_string(pointer).ok();
    if let Some(text) = &recorded {
        let dir = PathBuf::from(text.trim());
        if usable(&dir) {
            return Ok(dir);
        }
    }
    let adopted = legacy.filter(|l| recorded.is_none() && usable(l));
    let dir = if let Some(l) = adopted {
        l.to_path_buf()
    } else {
        new_random_dir(base, prefix)?
    };
    let parent = pointer.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".runtime-dir-")
        .tempfile_in(parent)
        .map_err(io(pointer))?;
    writeln!(tmp, "{}", dir.display()).map_err(io(pointer))?;
    tmp.persist(pointer).map_err(|e| io(pointer)(e.error))?;
    Ok(dir)
}

fn new_random_dir(base: &Path, prefix: &str) -> Result<PathBuf, PrivateDirError> {
    loop {
        let suffix: [u8; 8] = rand::random();
        let dir = base.join(format!("{prefix}{}", hex::encode(suffix)));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io(&dir)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn homes_and_files_are_private_whatever_exists() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("a/home");
        ensure_private_home(&home).unwrap();
        assert_eq!(mode(&home), 0o700);
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_home(&home).unwrap();
        assert_eq!(mode(&home), 0o700);
        let f = home.join("f");
        private_file(&f, true).unwrap();
        assert_eq!(mode(&f), 0o600);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        private_file(&f, false).unwrap();
        assert_eq!(mode(&f), 0o600);
        private_file(&home.join("missing"), false).unwrap();
        assert!(!home.join("missing").exists());
    }

    #[test]
    fn runtime_dirs_writable_by_others_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        ensure_runtime_dir(&run).unwrap();
        assert_eq!(mode(&run), 0o700);
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
        ensure_runtime_dir(&run).unwrap();
        assert_eq!(mode(&run), 0o700);
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = ensure_runtime_dir(&run).unwrap_err();
        assert!(e.to_string().contains(&run.display().to_string()), "{e}");
        assert!(e.to_string().contains("0777"), "{e}");
    }

    #[test]
    fn the_recorded_runtime_dir_is_random_and_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        let (ptr, lock) = (home.join("runtime-dir"), home.join("runtime-dir.lock"));
        let legacy = tmp.path().join("legacy");
        std::fs::create_dir(&legacy).unwrap();
        std::fs::set_permissions(&legacy, std::fs::Permissions::from_mode(0o777)).unwrap();
        let pick = || recorded_runtime_dir(&ptr, &lock, tmp.path(), "amirun-t-", Some(&legacy));
        // A legacy directory writable by others is not adopted.
        let a = pick().unwrap();
        assert_ne!(a, legacy);
        assert_eq!(mode(&a), 0o700);
        assert_eq!(pick().unwrap(), a);
        // Gone (a reboot): a new random name, never the legacy one.
        std::fs::set_permissions(&legacy, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::remove_dir(&a).unwrap();
        let b = pick().unwrap();
        assert_ne!(a, b);
        assert!(b.file_name().unwrap().len() == "amirun-t-".len() + 16);
        // A first choice adopts a safe legacy directory.
        std::fs::remove_file(&ptr).unwrap();
        assert_eq!(pick().unwrap(), legacy);
    }
}
