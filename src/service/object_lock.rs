//! One operation at a time per object: start, stop, reboot, terminate,
//! create-image and the reconciliation of live state all hold the instance's
//! lock while they change it, so two processes serialise instead of racing;
//! a writer holds the lock of every object it is making (new instance,
//! volume, snapshot, AMI ids) until its records are committed, so "record
//! pending or missing, lock free" means "its writer is gone" to recovery and
//! to the orphan sweep.
//!
//! The lock is an `flock` on `$AMIRUN_HOME/locks/<id>.lock` (see
//! [`crate::paths::Paths::object_lock`]): the kernel drops it when its
//! holder dies, however it dies, so a killed process never leaves an
//! object locked. The file is never deleted while in use (deleting a locked
//! file would let a second process lock a new inode under the same name).

use super::{Error, Result};
use crate::paths::Paths;
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::time::{Duration, Instant};

/// How long an operation waits for another one on the same object.
const WAIT: Duration = Duration::from_secs(300);

/// Proof that this process holds an object's lock; released on drop.
#[derive(Debug)]
pub struct ObjectLock {
    _file: Flock<File>,
    object_id: String,
}

impl ObjectLock {
    /// The object (`i-…`, `vol-…`, `snap-…`, `ami-…`) this lock guards.
    pub fn object_id(&self) -> &str {
        &self.object_id
    }
}

fn open(paths: &Paths, object_id: &str) -> Result<File> {
    let path = paths.object_lock(object_id);
    let io = |what: &str, e: std::io::Error| {
        Error::new(
            "InternalError",
            format!("Cannot {what} the lock file {}", path.display()),
        )
        .with_source(e)
    };
    std::fs::create_dir_all(paths.lock_dir()).map_err(|e| io("create the directory of", e))?;
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io("open", e))
}

/// Take `object_id`'s lock, waiting (polling the kernel lock, bounded by
/// [`WAIT`]) while another process holds it.
pub fn lock(paths: &Paths, object_id: &str) -> Result<ObjectLock> {
    let deadline = Instant::now() + WAIT;
    let mut file = open(paths, object_id)?;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(f) => {
                return Ok(ObjectLock {
                    _file: f,
                    object_id: object_id.to_string(),
                })
            }
            Err((f, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                file = f;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err((_, errno)) => {
                return Err(Error::new(
                    "IncorrectInstanceState",
                    format!("'{object_id}' is busy with another operation; try again"),
                )
                .with_source(std::io::Error::from(errno)))
            }
        }
    }
}

/// Take `object_id`'s lock only if nobody holds it now.
pub fn try_lock(paths: &Paths, object_id: &str) -> Result<Option<ObjectLock>> {
    match Flock::lock(open(paths, object_id)?, FlockArg::LockExclusiveNonblock) {
        Ok(f) => Ok(Some(ObjectLock {
            _file: f,
            object_id: object_id.to_string(),
        })),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(
            Error::new("InternalError", format!("Cannot lock '{object_id}'"))
                .with_source(std::io::Error::from(errno)),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_refused_to_try_lock_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path().join("home"), dir.path().join("run"));
        let held = lock(&paths, "i-0123456789abcdef0").unwrap();
        assert_eq!(held.object_id(), "i-0123456789abcdef0");
        assert!(try_lock(&paths, "i-0123456789abcdef0").unwrap().is_none());
        assert!(try_lock(&paths, "i-0fffffffffffffff0").unwrap().is_some());
        drop(held);
        assert!(try_lock(&paths, "i-0123456789abcdef0").unwrap().is_some());
    }
}
