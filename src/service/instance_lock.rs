//! One operation at a time per instance: start, stop, reboot, terminate,
//! create-image and the reconciliation of live state all hold the instance's
//! lock while they change it, so two processes serialise instead of racing.
//!
//! The lock is an `flock` on `$AMIRUN_HOME/locks/<i-id>.lock` (see
//! [`crate::paths::Paths::instance_lock`]): the kernel drops it when its
//! holder dies, however it dies, so a killed process never leaves an
//! instance locked. The file is never deleted (deleting a locked file would
//! let a second process lock a new inode under the same name).

use super::{Error, Result};
use crate::paths::Paths;
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::time::{Duration, Instant};

/// How long an operation waits for another one on the same instance.
const WAIT: Duration = Duration::from_secs(300);

/// Proof that this process holds an instance's lock; released on drop.
#[derive(Debug)]
pub struct InstanceLock {
    _file: Flock<File>,
    instance_id: String,
}

impl InstanceLock {
    /// The instance this lock guards.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }
}

fn open(paths: &Paths, instance_id: &str) -> Result<File> {
    let path = paths.instance_lock(instance_id);
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

/// Take `instance_id`'s lock, waiting (polling the kernel lock, bounded by
/// [`WAIT`]) while another process holds it.
pub fn lock(paths: &Paths, instance_id: &str) -> Result<InstanceLock> {
    let deadline = Instant::now() + WAIT;
    let mut file = open(paths, instance_id)?;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(f) => {
                return Ok(InstanceLock {
                    _file: f,
                    instance_id: instance_id.to_string(),
                })
            }
            Err((f, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                file = f;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err((_, errno)) => {
                return Err(Error::new(
                    "IncorrectInstanceState",
                    format!(
                        "The instance '{instance_id}' is busy with another operation; try again"
                    ),
                )
                .with_source(std::io::Error::from(errno)))
            }
        }
    }
}

/// Take `instance_id`'s lock only if nobody holds it now.
pub fn try_lock(paths: &Paths, instance_id: &str) -> Result<Option<InstanceLock>> {
    match Flock::lock(open(paths, instance_id)?, FlockArg::LockExclusiveNonblock) {
        Ok(f) => Ok(Some(InstanceLock {
            _file: f,
            instance_id: instance_id.to_string(),
        })),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(Error::new(
            "InternalError",
            format!("Cannot lock the instance '{instance_id}'"),
        )
        .with_source(std::io::Error::from(errno))),
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
        assert_eq!(held.instance_id(), "i-0123456789abcdef0");
        assert!(try_lock(&paths, "i-0123456789abcdef0").unwrap().is_none());
        assert!(try_lock(&paths, "i-0fffffffffffffff0").unwrap().is_some());
        drop(held);
        assert!(try_lock(&paths, "i-0123456789abcdef0").unwrap().is_some());
    }
}
