//! One operation at a time per object: start, stop, reboot, terminate,
//! create-image and the reconciliation of live state all hold the instance's
//! lock while they change it, so two processes serialise instead of racing;
//! a writer holds the lock of every object it is making (new instance,
//! volume, snapshot, AMI ids) until its records are committed, so "record
//! pending or missing, lock free" means "its writer is gone" to recovery and
//! to the orphan sweep.
//!
//! Within one thread the lock is re-entrant: an operation that holds an
//! instance's lock may call another that takes it (create-image stopping
//! and starting its instance); the inner guard is a no-op and the flock is
//! released when the outer guard drops. Other threads and processes wait.
//!
//! The lock is an `flock` on `$AMIRUN_HOME/locks/<id>.lock` (see
//! [`crate::paths::Paths::object_lock`]): the kernel drops it when its
//! holder dies, however it dies, so a killed process never leaves an
//! object locked. A lock file is removed only by a process that holds it
//! ([`ObjectLock::remove_file`], used by the orphan sweep for ids with no
//! record), and whoever takes a lock checks afterwards that the file it
//! locked is still the one under that name, and tries again if not: so a
//! removal never lets two processes hold "the same" lock.

use super::{Error, Result};
use crate::paths::Paths;
use nix::fcntl::{Flock, FlockArg};
use std::cell::RefCell;
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::time::{Duration, Instant};

thread_local! {
    /// Objects whose lock this thread holds (for re-entrance).
    static HELD: RefCell<HashSet<String>> = RefCell::new(HashSet::new());
}

fn held_here(object_id: &str) -> bool {
    HELD.with(|h| h.borrow().contains(object_id))
}

/// How long an operation waits for another one on the same object.
const WAIT: Duration = Duration::from_secs(300);

/// Proof that this process holds an object's lock; released on drop.
#[derive(Debug)]
pub struct ObjectLock {
    /// `None` for a nested guard of a lock this thread already holds.
    file: Option<Flock<File>>,
    object_id: String,
}

impl ObjectLock {
    fn owned(file: Flock<File>, object_id: &str) -> Self {
        HELD.with(|h| h.borrow_mut().insert(object_id.to_string()));
        ObjectLock {
            file: Some(file),
            object_id: object_id.to_string(),
        }
    }

    fn nested(object_id: &str) -> Self {
        ObjectLock {
            file: None,
            object_id: object_id.to_string(),
        }
    }
}

impl Drop for ObjectLock {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            HELD.with(|h| h.borrow_mut().remove(&self.object_id));
        }
    }
}

impl ObjectLock {
    /// The object (`i-…`, `vol-…`, `snap-…`, `ami-…`) this lock guards.
    pub fn object_id(&self) -> &str {
        &self.object_id
    }

    /// Remove the lock file while holding it, then release it: for objects
    /// that no longer exist. A nested guard leaves the file to its owner.
    pub fn remove_file(self, paths: &Paths) -> std::io::Result<bool> {
        if self.file.is_none() {
            return Ok(false);
        }
        std::fs::remove_file(paths.object_lock(&self.object_id))?;
        Ok(true)
    }
}

fn open(paths: &Paths, object_id: &str) -> Result<File> {
    let path = paths.object_lock(object_id);
    let io = |what: &str, e: std::io::Error| {
        Error::internal(format!("Cannot {what} the lock file {}", path.display())).with_source(e)
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

/// Whether the file `locked` is still the one named by `object_id`'s lock path.
fn still_named(paths: &Paths, object_id: &str, locked: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (
        locked.metadata(),
        std::fs::metadata(paths.object_lock(object_id)),
    ) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Take `object_id`'s lock, waiting (polling the kernel lock, bounded by
/// five minutes) while another process holds it.
pub fn lock(paths: &Paths, object_id: &str) -> Result<ObjectLock> {
    if held_here(object_id) {
        return Ok(ObjectLock::nested(object_id));
    }
    let deadline = Instant::now() + WAIT;
    let mut file = open(paths, object_id)?;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(f) if still_named(paths, object_id, &f) => {
                return Ok(ObjectLock::owned(f, object_id))
            }
            // Removed (or replaced) by its holder meanwhile: lock the new file.
            Ok(_) => file = open(paths, object_id)?,
            Err((f, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                file = f;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err((_, errno)) => {
                return Err(Error::incorrect_instance_state(format!(
                    "'{object_id}' is busy with another operation; try again"
                ))
                .with_source(std::io::Error::from(errno)))
            }
        }
    }
}

/// Take `object_id`'s lock only if nobody holds it now.
pub fn try_lock(paths: &Paths, object_id: &str) -> Result<Option<ObjectLock>> {
    if held_here(object_id) {
        return Ok(Some(ObjectLock::nested(object_id)));
    }
    match Flock::lock(open(paths, object_id)?, FlockArg::LockExclusiveNonblock) {
        Ok(f) if still_named(paths, object_id, &f) => Ok(Some(ObjectLock::owned(f, object_id))),
        // Removed (or replaced) by its holder meanwhile: the name is free again.
        Ok(_) => try_lock(paths, object_id),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(Error::internal(format!("Cannot lock '{object_id}'"))
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
        assert_eq!(held.object_id(), "i-0123456789abcdef0");
        // Another thread is refused while this one holds it.
        let p = paths.clone();
        let other =
            std::thread::spawn(move || try_lock(&p, "i-0123456789abcdef0").unwrap().is_none());
        assert!(other.join().unwrap());
        assert!(try_lock(&paths, "i-0fffffffffffffff0").unwrap().is_some());
        drop(held);
        let p = paths.clone();
        let other =
            std::thread::spawn(move || try_lock(&p, "i-0123456789abcdef0").unwrap().is_some());
        assert!(other.join().unwrap());
    }

    #[test]
    fn a_removed_lock_file_is_never_held_twice() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path().join("home"), dir.path().join("run"));
        let id = "vol-0123456789abcdef0";
        // A second thread opens the file before the holder removes it, and
        // locks the removed inode afterwards: it must notice and relock.
        let held = lock(&paths, id).unwrap();
        let stale = open(&paths, id).unwrap();
        assert!(held.remove_file(&paths).unwrap());
        assert!(!paths.object_lock(id).exists());
        let stale = Flock::lock(stale, FlockArg::LockExclusiveNonblock).unwrap();
        assert!(!still_named(&paths, id, &stale));
        let p = paths.clone();
        let fresh = std::thread::spawn(move || lock(&p, id).map(|l| l.object_id().to_string()));
        assert_eq!(fresh.join().unwrap().unwrap(), id);
        assert!(paths.object_lock(id).exists());
    }

    #[test]
    fn the_holding_thread_may_take_its_lock_again() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path().join("home"), dir.path().join("run"));
        let outer = lock(&paths, "i-0123456789abcdef0").unwrap();
        {
            let inner = lock(&paths, "i-0123456789abcdef0").unwrap();
            assert!(try_lock(&paths, "i-0123456789abcdef0").unwrap().is_some());
            drop(inner);
        }
        // The inner guard's drop did not release the flock.
        let p = paths.clone();
        let other =
            std::thread::spawn(move || try_lock(&p, "i-0123456789abcdef0").unwrap().is_none());
        assert!(other.join().unwrap());
        drop(outer);
        assert!(!held_here("i-0123456789abcdef0"));
    }
}
