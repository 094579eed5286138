//! The event log (`events.jsonl`): what a supervisor records about each run
//! of its instance, and how QEMU ended (see the table in the parent module).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::SupervisorError;

/// Why QEMU ended; the `reason` of the `exited` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExitReason {
    /// The guest powered itself off (QMP `SHUTDOWN` with `guest: true`) and
    /// no stop had been asked for.
    GuestShutdown,
    /// A graceful stop was asked for (control `stop` or SIGTERM/SIGINT to the
    /// supervisor) and the guest powered off after the ACPI power button,
    /// within `stop_timeout_secs`.
    StopRequested,
    /// The supervisor ended QEMU itself: a forced stop, or a graceful stop
    /// whose grace period ran out (QMP `quit`, then SIGKILL); also a `quit`
    /// sent through the QMP passthrough.
    Forced,
    /// QEMU died on its own: a crash signal (SIGSEGV, SIGABRT, …), a non-zero
    /// exit, or an exit with no shutdown event.
    QemuCrashed,
    /// Someone else ended QEMU with a signal: SIGKILL, or SIGTERM/SIGINT/
    /// SIGHUP (which QEMU turns into a clean exit with shutdown reason
    /// `host-signal`).
    QemuKilled,
    /// QEMU could not be spawned, exited before QMP answered, or QMP did not
    /// answer within `start_timeout_secs` (QEMU is then killed).
    StartFailed,
    /// The guest hibernated: its memory and device state were saved
    /// completely to the hibernation state file, then QEMU quit.
    Hibernated,
    /// QEMU could not load the saved hibernation state it was started to
    /// resume from (the state file is then removed).
    ResumeFailed,
}

impl ExitReason {
    /// The name used in the event log, e.g. `guest-shutdown`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::GuestShutdown => "guest-shutdown",
            ExitReason::StopRequested => "stop-requested",
            ExitReason::Forced => "forced",
            ExitReason::QemuCrashed => "qemu-crashed",
            ExitReason::QemuKilled => "qemu-killed",
            ExitReason::StartFailed => "start-failed",
            ExitReason::Hibernated => "hibernated",
            ExitReason::ResumeFailed => "resume-failed",
        }
    }
}

/// How the QEMU process ended: `{"code":N}` or `{"signal":N}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExitStatusRecord {
    /// Exited with this status code.
    Code(i32),
    /// Killed by this signal number.
    Signal(i32),
}

impl ExitStatusRecord {
    pub(super) fn from_status(status: ExitStatus) -> Option<Self> {
        status
            .code()
            .map(ExitStatusRecord::Code)
            .or_else(|| status.signal().map(ExitStatusRecord::Signal))
    }
}

/// The final record of a run: how and why QEMU ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Why it ended.
    pub reason: ExitReason,
    /// How the process ended; `None` when QEMU never started.
    pub exit_status: Option<ExitStatusRecord>,
    /// QEMU's pid, if it was spawned.
    pub qemu_pid: Option<u32>,
    /// The `reason` of QMP's `SHUTDOWN` event, when there was one
    /// (`guest-shutdown`, `host-qmp-quit`, `host-signal`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_reason: Option<String>,
    /// A human explanation, for `start-failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One kind of line in the event log (see the module doc for the table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// A supervisor took the instance; a new run begins.
    SupervisorStarted { pid: u32 },
    /// QEMU was spawned.
    QemuStarted { pid: u32 },
    /// QMP first reported the vCPUs running.
    GuestRunning,
    /// The machine reset (guest reboot or requested reset).
    Reset { guest: bool, reason: Option<String> },
    /// A stop was asked for.
    StopRequested { force: bool, by: String },
    /// A hibernation was asked for; the guest is paused while its state is saved.
    HibernateRequested,
    /// Saving the guest's state failed (`detail` says why); the guest runs
    /// on and is stopped the ordinary way, as EC2 does.
    HibernateFailed { detail: String },
    /// The guest resumed from its saved state (which is then removed).
    Resumed,
    /// QEMU is gone; the last record of a run.
    Exited(ExitRecord),
    /// An event this version does not know (written by a newer amirun).
    #[serde(other)]
    Other,
}

/// One line of the event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// When it was recorded.
    pub ts: DateTime<Utc>,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

/// Reads every record of an event log; lines that cannot be parsed are
/// skipped (a torn last line after a crash, say). A missing file is empty.
pub fn read_events(path: &Path) -> std::io::Result<Vec<EventRecord>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// Appends records to the event log, one `write` per line.
pub(super) struct EventLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl EventLog {
    pub(super) fn open(path: &Path) -> Result<Self, SupervisorError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(SupervisorError::io("open the event log", path))?;
        Ok(EventLog {
            path: path.to_owned(),
            file: Mutex::new(file),
        })
    }

    pub(super) fn append(&self, event: Event) {
        let durable = matches!(event, Event::Exited(_));
        let record = EventRecord {
            ts: Utc::now(),
            event,
        };
        let mut line = serde_json::to_vec(&record).expect("events serialise");
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let result =
            file.write_all(&line)
                .and_then(|()| if durable { file.sync_data() } else { Ok(()) });
        if let Err(e) = result {
            tracing::error!("could not append to {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_serialise_as_documented() {
        let line = |event| {
            let v = serde_json::to_value(EventRecord {
                ts: Utc::now(),
                event,
            })
            .unwrap();
            assert!(v["ts"].as_str().unwrap().ends_with('Z'), "{v}");
            v
        };
        let v = line(Event::QemuStarted { pid: 42 });
        assert_eq!(v["event"], "qemu-started");
        assert_eq!(v["pid"], 42);
        assert_eq!(line(Event::GuestRunning)["event"], "guest-running");
        let v = line(Event::Exited(ExitRecord {
            reason: ExitReason::QemuKilled,
            exit_status: Some(ExitStatusRecord::Signal(9)),
            qemu_pid: Some(7),
            shutdown_reason: None,
            detail: None,
        }));
        assert_eq!(
            v.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["ts", "event", "reason", "exit_status", "qemu_pid"]
        );
        assert_eq!(v["reason"], "qemu-killed");
        assert_eq!(v["exit_status"], json!({"signal": 9}));

        for reason in [
            ExitReason::GuestShutdown,
            ExitReason::StopRequested,
            ExitReason::Forced,
            ExitReason::QemuCrashed,
            ExitReason::QemuKilled,
            ExitReason::StartFailed,
            ExitReason::Hibernated,
            ExitReason::ResumeFailed,
        ] {
            assert_eq!(json!(reason), json!(reason.as_str()));
        }
    }

    #[test]
    fn unknown_events_and_torn_lines_are_tolerated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(
            &path,
            concat!(
                r#"{"ts":"2024-01-01T00:00:00Z","event":"supervisor-started","pid":1}"#,
                "\n",
                r#"{"ts":"2024-01-01T00:00:01Z","event":"imds-started","port":80}"#,
                "\n",
                r#"{"ts":"2024-01-01T00:00:02Z","event":"exited","reason":"forced","exit_status":{"code":0},"qemu_pid":5}"#,
                "\n",
                r#"{"ts":"2024-01-01T00:00:03Z","ev"#,
            ),
        )
        .unwrap();
        let events = read_events(&path).unwrap();
        assert_eq!(events.len(), 3);
        assert_eq!(events[1].event, Event::Other);
        assert!(matches!(&events[2].event, Event::Exited(r) if r.reason == ExitReason::Forced));
    }
}
