//! Live facts: what is true of an instance's processes right now, read from
//! its pid file, event log and `/proc`, and the fence that proves no
//! supervisor runs it.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use nix::fcntl::{Flock, FlockArg};

use super::{read_events, Event, ExitRecord, SUPERVISE_SUBCOMMAND};
use crate::paths::Paths;

/// What is true of an instance's processes right now, read from its pid
/// file, its event log and `/proc`; the service reconciles stored state
/// with this on every read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LiveState {
    /// The pid file names a live process that is this instance's supervisor.
    pub supervisor_alive: bool,
    /// The pid in the pid file, if there is one (alive or not).
    pub supervisor_pid: Option<u32>,
    /// The current run's QEMU is alive.
    pub qemu_alive: bool,
    /// The current run's QEMU pid (from its `qemu-started` record).
    pub qemu_pid: Option<u32>,
    /// The current run's `exited` record; `None` while running, and also
    /// when a supervisor died without writing one (killed with `-9`).
    pub last_exit: Option<ExitRecord>,
    /// When `last_exit` was recorded.
    pub last_exit_at: Option<DateTime<Utc>>,
}

/// Reads the live facts of `instance_id` (see [`LiveState`]).
///
/// A pid counts as alive when `/proc/<pid>` exists, is not a zombie, and its
/// command line is the right program for this instance: `__supervise` and
/// the instance id for the supervisor, the instance id for QEMU (whose argv
/// names its QMP socket under the instance dir). The "current run" is
/// everything after the last `supervisor-started` record.
pub fn probe(paths: &Paths, instance_id: &str) -> LiveState {
    let mut live = LiveState::default();
    live.supervisor_pid = std::fs::read_to_string(paths.supervisor_pid(instance_id))
        .ok()
        .and_then(|t| t.trim().parse().ok());
    live.supervisor_alive = live.supervisor_pid.is_some_and(|pid| {
        process_matches(pid, |args| {
            args.iter().any(|a| a == SUPERVISE_SUBCOMMAND)
                && args.iter().any(|a| a.contains(instance_id))
        })
    });
    for record in read_events(&paths.events(instance_id)).unwrap_or_default() {
        match record.event {
            Event::SupervisorStarted { .. } => {
                live.qemu_pid = None;
                live.last_exit = None;
                live.last_exit_at = None;
            }
            Event::QemuStarted { pid } => live.qemu_pid = Some(pid),
            Event::Exited(exit) => {
                live.last_exit = Some(exit);
                live.last_exit_at = Some(record.ts);
            }
            _ => {}
        }
    }
    live.qemu_alive = live.last_exit.is_none()
        && live.qemu_pid.is_some_and(|pid| {
            process_matches(pid, |args| args.iter().any(|a| a.contains(instance_id)))
        });
    live
}

/// Holds an instance's pid file lock while no supervisor does: proof that
/// no supervisor runs the instance and that none can start while the
/// returned lock is held (a supervisor starting meanwhile fails to take its
/// pid file). `None` when a supervisor holds it.
///
/// Whoever decides from this that a launch was abandoned before its
/// supervisor ran removes the launch spec before dropping the fence, so a
/// supervisor spawned for it that takes the pid file afterwards sees its
/// launch withdrawn and exits without starting QEMU.
pub fn fence(paths: &Paths, instance_id: &str) -> std::io::Result<Option<Flock<File>>> {
    use std::os::unix::fs::MetadataExt;
    let path = paths.supervisor_pid(instance_id);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    loop {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, errno)) => return Err(errno.into()),
        };
        // A supervisor that was exiting may have removed the file we opened:
        // then the lock guards nothing; take the file now at the path.
        let ours = lock.metadata()?;
        match std::fs::metadata(&path) {
            Ok(m) if m.ino() == ours.ino() && m.dev() == ours.dev() => return Ok(Some(lock)),
            _ => continue,
        }
    }
}

/// The pids of live QEMU processes running `instance_id` (found in /proc by
/// their command line), whatever the records say.
pub fn qemu_pids(instance_id: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            process_matches(pid, |args| {
                args.first().is_some_and(|a| a.contains("qemu-system"))
                    && args.iter().any(|a| a.contains(instance_id))
            })
        })
        .collect()
}

/// Whether `pid` is a live (not zombie) process whose argv satisfies `check`.
fn process_matches(pid: u32, check: impl Fn(&[String]) -> bool) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let Ok(stat) = std::fs::read_to_string(proc_dir.join("stat")) else {
        return false;
    };
    // The state follows the parenthesised command name, which may contain
    // spaces or parentheses itself.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    if matches!(state, None | Some("Z") | Some("X") | Some("x")) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(proc_dir.join("cmdline")) else {
        return false;
    };
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    check(&args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::supervisor::events::{
        Event, EventLog, ExitReason, ExitRecord, ExitStatusRecord,
    };

    #[test]
    fn probe_takes_the_exit_of_the_current_run_only() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path(), dir.path().join("run"));
        let id = "i-0123456789abcdef0";
        std::fs::create_dir_all(paths.instance_dir(id)).unwrap();
        let log = EventLog::open(&paths.events(id)).unwrap();
        log.append(Event::SupervisorStarted { pid: 1 });
        log.append(Event::QemuStarted { pid: 2 });
        log.append(Event::Exited(ExitRecord {
            reason: ExitReason::GuestShutdown,
            exit_status: Some(ExitStatusRecord::Code(0)),
            qemu_pid: Some(2),
            shutdown_reason: Some("guest-shutdown".into()),
            detail: None,
        }));
        let live = probe(&paths, id);
        assert_eq!(live.last_exit.unwrap().reason, ExitReason::GuestShutdown);
        assert!(!live.supervisor_alive && !live.qemu_alive);

        // A later run whose supervisor vanished without a record.
        log.append(Event::SupervisorStarted { pid: 3 });
        std::fs::write(paths.supervisor_pid(id), "3\n").unwrap();
        let live = probe(&paths, id);
        assert_eq!(live.last_exit, None);
        assert_eq!(live.supervisor_pid, Some(3));
        assert_eq!(live.qemu_pid, None);
    }

    #[test]
    fn probe_does_not_mistake_another_process_for_the_supervisor() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path(), dir.path().join("run"));
        let id = "i-0123456789abcdef0";
        std::fs::create_dir_all(paths.instance_dir(id)).unwrap();
        // This test process is alive but is no supervisor.
        std::fs::write(
            paths.supervisor_pid(id),
            format!("{}\n", std::process::id()),
        )
        .unwrap();
        assert!(!probe(&paths, id).supervisor_alive);
    }
}
