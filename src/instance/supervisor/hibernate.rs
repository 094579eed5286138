//! Hibernation inside the supervisor: a paused guest's memory and device
//! state saved to a file with QEMU's own migration machinery, and loaded
//! back into a QEMU started with `-incoming defer`.
//!
//! QEMU 7.2 (what Debian 12 ships) has no `file:` migration URI, so the
//! supervisor opens the file itself and hands QEMU the descriptor over QMP
//! (`getfd`, then `migrate uri=fd:NAME`); that works the same on newer
//! QEMUs and keeps file names out of QEMU's URI parser.
//!
//! Saving writes `<id>.hibernation.tmp`, waits until `query-migrate` says
//! `completed`, syncs the file and only then renames it to
//! `<id>.hibernation` (and syncs the directory): a state file under its
//! final name is always complete. Resuming loads it with `migrate-incoming`,
//! waits until the guest left `inmigrate`, runs it (`cont` when QEMU did not
//! already), then removes the file: a saved state is resumed at most once.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::instance::qmp::{Qmp, QmpError};

/// The name the state file's descriptor gets inside QEMU.
const FD_NAME: &str = "hibernation";

/// How long saving or loading a guest's state may take; a 1 GiB guest
/// writes in seconds, this bound only catches a QEMU that hangs.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(600);

/// How often the migration status is asked for while it runs.
const POLL: Duration = Duration::from_millis(20);

/// How long one QMP command may take here.
const QMP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a hibernation could not save or load the guest's state.
#[derive(Debug, thiserror::Error)]
pub enum HibernateError {
    /// The state file could not be made, synced, renamed, opened or removed.
    #[error("Could not {what} the hibernation state {path}")]
    File {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// QEMU refused a command or went away.
    #[error("QEMU refused {command}")]
    Qmp {
        command: &'static str,
        #[source]
        source: QmpError,
    },
    /// QEMU reported the migration failed.
    #[error("QEMU's migration ended {status}: {detail}")]
    Failed { status: String, detail: String },
    /// The migration did not finish in time.
    #[error("The guest's state was not transferred within {0:?}")]
    Timeout(Duration),
}

impl HibernateError {
    /// The message and its causes on one line, for the event log.
    pub fn detail(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(e) = source {
            text.push_str(": ");
            text.push_str(&e.to_string());
            source = e.source();
        }
        text
    }
}

fn file_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> HibernateError {
    let path = path.to_owned();
    move |source| HibernateError::File { what, path, source }
}

fn qmp(q: &Qmp, command: &'static str, arguments: Option<Value>) -> Result<Value, HibernateError> {
    q.execute_with_timeout(command, arguments, QMP_TIMEOUT)
        .map_err(|source| HibernateError::Qmp { command, source })
}

/// Syncs the directory holding `path`, so a rename or removal in it is durable.
fn sync_dir(path: &Path) -> Result<(), HibernateError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(file_err("sync the directory of", path))
}

/// Pauses the guest and saves its state to `tmp`, renamed to `dest` once
/// complete; returns the size of the state. On error the guest stays
/// paused, `tmp` is removed and `dest` does not exist; the caller decides
/// whether to run the guest on.
pub fn save(q: &Qmp, tmp: &Path, dest: &Path) -> Result<u64, HibernateError> {
    let _ = std::fs::remove_file(dest);
    let _ = std::fs::remove_file(tmp);
    let result = save_to(q, tmp, dest);
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
        let _ = std::fs::remove_file(dest);
    }
    result
}

fn save_to(q: &Qmp, tmp: &Path, dest: &Path) -> Result<u64, HibernateError> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .map_err(file_err("create", tmp))?;
    // Paused first, so memory is written once rather than copied live.
    qmp(q, "stop", None)?;
    // Migration is throttled to 128 MiB/s by default; a file takes all.
    qmp(
        q,
        "migrate-set-parameters",
        Some(json!({ "max-bandwidth": i64::MAX / 2 })),
    )?;
    q.send_fd(FD_NAME, file.as_fd())
        .map_err(|source| HibernateError::Qmp {
            command: "getfd",
            source,
        })?;
    qmp(
        q,
        "migrate",
        Some(json!({ "uri": format!("fd:{FD_NAME}") })),
    )?;
    wait_migration(q, "query-migrate")?;
    file.sync_all().map_err(file_err("sync", tmp))?;
    let size = file.metadata().map_err(file_err("stat", tmp))?.len();
    drop(file);
    std::fs::rename(tmp, dest).map_err(file_err("rename", tmp))?;
    sync_dir(dest)?;
    Ok(size)
}

/// Polls the migration status until it is `completed`; any end other than
/// that is an error.
fn wait_migration(q: &Qmp, query: &'static str) -> Result<(), HibernateError> {
    let deadline = Instant::now() + TRANSFER_TIMEOUT;
    loop {
        let info = qmp(q, query, None)?;
        let status = info.get("status").and_then(Value::as_str).unwrap_or("");
        match status {
            "completed" => return Ok(()),
            "failed" | "cancelled" => {
                return Err(HibernateError::Failed {
                    status: status.to_owned(),
                    detail: info
                        .get("error-desc")
                        .and_then(Value::as_str)
                        .unwrap_or("no reason given")
                        .to_owned(),
                })
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            return Err(HibernateError::Timeout(TRANSFER_TIMEOUT));
        }
        std::thread::sleep(POLL);
    }
}

/// Loads the state at `path` into a QEMU started with `-incoming defer`,
/// runs the guest, and removes the file. QEMU exits by itself when the
/// state cannot be loaded (the error is then a closed QMP connection); the
/// file is removed in every case, so it is never tried twice.
pub fn resume(q: &Qmp, path: &Path) -> Result<(), HibernateError> {
    let result = resume_from(q, path);
    let removed = std::fs::remove_file(path).map_err(file_err("remove", path));
    let _ = sync_dir(path);
    result.and(removed)
}

fn resume_from(q: &Qmp, path: &Path) -> Result<(), HibernateError> {
    let file = File::open(path).map_err(file_err("open", path))?;
    q.send_fd(FD_NAME, file.as_fd())
        .map_err(|source| HibernateError::Qmp {
            command: "getfd",
            source,
        })?;
    qmp(
        q,
        "migrate-incoming",
        Some(json!({ "uri": format!("fd:{FD_NAME}") })),
    )?;
    // The guest leaves `inmigrate` when the whole state is loaded.
    let deadline = Instant::now() + TRANSFER_TIMEOUT;
    let status = loop {
        let status = qmp(q, "query-status", None)?;
        let status = status
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if status != "inmigrate" {
            break status;
        }
        if Instant::now() >= deadline {
            return Err(HibernateError::Timeout(TRANSFER_TIMEOUT));
        }
        std::thread::sleep(POLL);
    };
    if status != "running" {
        qmp(q, "cont", None)?;
    }
    Ok(())
}
