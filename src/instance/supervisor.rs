//! The per-instance supervisor: the one process that owns a guest's QEMU.
//!
//! Every running instance has a supervisor, detached in its own session, so
//! the CLI that launched the instance can exit while the guest keeps
//! running. The service writes a [`LaunchSpec`] to `instances/<id>/launch.json`
//! and starts `amirun __supervise <launch.json>` with [`spawn_detached`]; the
//! CLI's hidden subcommand calls [`run`]. The supervisor then:
//!
//! 1. takes the pid file (locked, so two supervisors never run one instance),
//! 2. starts QEMU with stdin from `/dev/null`, output into the supervisor log,
//!    in its own process group, with a parent-death signal (SIGKILL), so a
//!    supervisor killed with `-9` never leaves QEMU running as an orphan,
//! 3. connects to QMP and waits for QEMU's events,
//! 4. answers the control socket ([`ControlRequest`]) and turns SIGTERM and
//!    SIGINT into a graceful stop,
//! 5. when QEMU has exited, appends exactly one `exited` record saying why
//!    ([`ExitReason`]), removes its pid file and control socket, and returns.
//!
//! # The event log
//!
//! `events.jsonl` is append-only across runs of the instance, one
//! [`EventRecord`] a line: `{"ts":"<RFC 3339>","event":"<name>",…}`.
//!
//! | event | fields | when |
//! |---|---|---|
//! | `supervisor-started` | `pid` | a supervisor took the instance; a new run begins |
//! | `qemu-started` | `pid` | QEMU was spawned |
//! | `guest-running` | | QMP first reported the vCPUs running |
//! | `reset` | `guest`, `reason` | the machine reset: a reboot from the guest (`guest-reset`) or a requested reboot (`host-qmp-system-reset`) |
//! | `stop-requested` | `force`, `by` | a stop was asked for, over the control socket (`control`) or by a signal to the supervisor (`signal`) |
//! | `exited` | `reason`, `exit_status`, `qemu_pid`, `shutdown_reason`, `detail` | QEMU is gone; always the last record of a run |
//!
//! # Stopping
//!
//! A graceful stop presses the ACPI power button (`system_powerdown`) and
//! gives the guest `stop_timeout_secs` to power off. After that, or at once
//! for a forced stop, the supervisor sends QMP `quit`; if QEMU is still there
//! [`QUIT_GRACE`] later, SIGKILL. Without an OS (firmware only), the power
//! button is ignored, so a graceful stop ends as `forced` after the timeout.
//!
//! # Rebooting
//!
//! EC2's RebootInstances is an OS reboot. QEMU offers no clean "reboot
//! button"; only the guest can reboot cleanly (e.g. through a guest agent's
//! `guest-shutdown mode=reboot`, which amirun does not wire yet). So a reboot
//! request is a `system_reset`: a hard reset that keeps every disk, like
//! EC2's own fallback when a guest ignores the reboot request.

use crate::network::GuestNamespace;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::qmp::{Qmp, QmpError, QmpEvent};
use crate::paths::Paths;

/// The hidden CLI subcommand that runs a supervisor: `amirun __supervise <launch.json>`.
pub const SUPERVISE_SUBCOMMAND: &str = "__supervise";

/// How long after QMP `quit` the supervisor waits before SIGKILL.
pub const QUIT_GRACE: Duration = Duration::from_secs(5);

/// How long one QMP command the supervisor sends itself may take.
const QMP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the supervisor waits for QMP's last events after QEMU exited,
/// and for control clients waiting on the exit to get their answer.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

fn default_stop_timeout() -> u64 {
    60
}

fn default_start_timeout() -> u64 {
    30
}

/// What went wrong starting or talking to a supervisor.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The launch spec could not be read.
    #[error("Could not read launch spec {path}")]
    ReadSpec {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The launch spec is not valid JSON for a [`LaunchSpec`].
    #[error("Launch spec {path} is malformed")]
    ParseSpec {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// Another supervisor holds this instance.
    #[error("Instance {instance_id} already has a running supervisor (pid {pid})")]
    AlreadyRunning { instance_id: String, pid: String },
    /// The launch was withdrawn (see [`fence`]) before this supervisor took
    /// the instance: nothing was started.
    #[error("The launch of {instance_id} was withdrawn before its supervisor started")]
    Withdrawn { instance_id: String },
    /// A file or socket of the instance could not be used.
    #[error("Could not {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The supervisor process could not be started.
    #[error("Could not start the supervisor {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The supervisor could not set itself up (a thread, signal handling).
    #[error("Could not set up the supervisor's {what}")]
    Setup {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl SupervisorError {
    fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_owned();
        move |source| SupervisorError::Io { what, path, source }
    }
}

/// Everything a supervisor needs to run one instance, written by the service
/// to `instances/<id>/launch.json` (see [`Paths::launch_spec`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchSpec {
    /// The instance (`i-…`).
    pub instance_id: String,
    /// The QEMU binary.
    pub program: PathBuf,
    /// QEMU's whole argv after the program; it already names `qmp_socket`
    /// (as a QMP server socket) and `serial_log`.
    pub args: Vec<String>,
    /// QEMU's QMP socket.
    pub qmp_socket: PathBuf,
    /// Serial console log (QEMU writes it; kept here for the record).
    pub serial_log: PathBuf,
    /// The supervisor's control socket.
    pub control_socket: PathBuf,
    /// The event log (`events.jsonl`).
    pub events: PathBuf,
    /// The supervisor's pid file.
    pub pid_file: PathBuf,
    /// Where the supervisor's and QEMU's stdout and stderr go.
    pub supervisor_log: PathBuf,
    /// Grace period after the ACPI power button before a hard stop.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout_secs: u64,
    /// How long QEMU may take to answer on QMP after it is spawned.
    #[serde(default = "default_start_timeout")]
    pub start_timeout_secs: u64,
    /// The instance metadata service the supervisor serves
    /// ([`crate::metadata::imds::ImdsConfig`]); none without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imds: Option<Value>,
    /// The guest's own network namespace and outbound leg
    /// ([`crate::network`]); none for an isolated guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::network::GuestNetworkSpec>,
}

impl LaunchSpec {
    /// A spec with every file at its place under `paths` and default timeouts.
    pub fn new(paths: &Paths, instance_id: &str, program: PathBuf, args: Vec<String>) -> Self {
        LaunchSpec {
            instance_id: instance_id.to_owned(),
            program,
            args,
            qmp_socket: paths.qmp_socket(instance_id),
            serial_log: paths.serial_log(instance_id),
            control_socket: paths.control_socket(instance_id),
            events: paths.events(instance_id),
            pid_file: paths.supervisor_pid(instance_id),
            supervisor_log: paths.supervisor_log(instance_id),
            stop_timeout_secs: default_stop_timeout(),
            start_timeout_secs: default_start_timeout(),
            imds: None,
            network: None,
        }
    }

    /// Reads a spec from its JSON file.
    pub fn read(path: &Path) -> Result<Self, SupervisorError> {
        let text = std::fs::read(path).map_err(|source| SupervisorError::ReadSpec {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|source| SupervisorError::ParseSpec {
            path: path.to_owned(),
            source,
        })
    }

    /// Writes the spec as JSON, atomically (temp file beside it, then rename).
    pub fn write(&self, path: &Path) -> Result<(), SupervisorError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut tmp =
            tempfile::NamedTempFile::new_in(dir).map_err(SupervisorError::io("write", path))?;
        let text = serde_json::to_vec_pretty(self).expect("LaunchSpec serialises");
        tmp.write_all(&text)
            .map_err(SupervisorError::io("write", path))?;
        tmp.persist(path)
            .map_err(|e| SupervisorError::io("write", path)(e.error))?;
        Ok(())
    }
}

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
    fn from_status(status: ExitStatus) -> Option<Self> {
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
struct EventLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl EventLog {
    fn open(path: &Path) -> Result<Self, SupervisorError> {
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

    fn append(&self, event: Event) {
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

// ---------------------------------------------------------------------------
// Control protocol

/// A request on the control socket: one JSON object a line, e.g.
/// `{"op":"stop","force":false}`. Each gets one [`ControlResponse`] line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum ControlRequest {
    /// Report a [`StatusReport`].
    Status,
    /// Stop QEMU: gracefully (ACPI power button, then hard after
    /// `stop_timeout_secs`) or, with `force`, at once. Without `wait` the
    /// answer is `{"stopping":true}` as soon as the stop is under way; with
    /// `wait` it is the [`ExitRecord`] once QEMU has exited and the pid file
    /// and control socket are gone.
    Stop {
        #[serde(default)]
        force: bool,
        #[serde(default)]
        wait: bool,
    },
    /// Reset the machine (`system_reset`; see the module doc on rebooting).
    Reboot,
    /// Take a live snapshot of disks inside the supervisor: pause, switch,
    /// resume whatever happens, rename (see [`super::live_snapshot`]). With
    /// no disks, a barrier for a snapshot in flight.
    LiveSnapshot(super::live_snapshot::LiveSnapshotRequest),
    /// Plug, unplug, grow or find an EBS volume's disk (see [`super::hotplug`]).
    Disk(super::hotplug::DiskRequest),
    /// Run any QMP command and return its `return` value.
    Qmp {
        execute: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        arguments: Option<Value>,
    },
}

/// The answer to a [`ControlRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlResponse {
    /// Whether the request succeeded.
    pub ok: bool,
    /// The result when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Why not, when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ControlResponse {
    fn ok(result: Value) -> Self {
        ControlResponse {
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    fn err(message: impl std::fmt::Display) -> Self {
        ControlResponse {
            ok: false,
            result: None,
            error: Some(message.to_string()),
        }
    }
}

/// What `{"op":"status"}` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The instance.
    pub instance_id: String,
    /// The supervisor's pid.
    pub supervisor_pid: u32,
    /// QEMU's pid, once spawned.
    pub qemu_pid: Option<u32>,
    /// QMP `query-status`'s `status` (`running`, `paused`, …); `None` while
    /// QMP is not connected or did not answer.
    pub qmp_status: Option<String>,
    /// When QEMU was spawned.
    pub started_at: Option<DateTime<Utc>>,
    /// Seconds since QEMU was spawned.
    pub uptime_secs: f64,
    /// Whether a stop is under way.
    pub stopping: bool,
}

// ---------------------------------------------------------------------------
// The running supervisor

/// Where a stop is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopPhase {
    /// No stop under way.
    None,
    /// The power button was pressed; hard stop at the deadline.
    PoweringDown { deadline: Instant },
    /// `quit` was sent (or SIGTERM without QMP); SIGKILL at the deadline.
    Quitting { deadline: Instant },
    /// SIGKILL was sent.
    Killed,
}

struct State {
    qemu_pid: Option<u32>,
    qemu_started: Option<(Instant, DateTime<Utc>)>,
    /// Set by the waiter thread once QEMU is reaped.
    qemu_exit: Option<ExitStatus>,
    qmp: Option<Arc<Qmp>>,
    /// The QMP event pump saw the connection end.
    qmp_closed: bool,
    guest_running_logged: bool,
    /// The last `SHUTDOWN` event.
    shutdown: Option<QmpEvent>,
    stop_requested: bool,
    force_requested: bool,
    phase: StopPhase,
    /// The supervisor itself sent `quit` or a signal to QEMU.
    ended_by_us: bool,
    final_record: Option<ExitRecord>,
    /// Control clients waiting for `final_record`.
    waiters: usize,
}

struct Supervisor {
    spec: LaunchSpec,
    events: EventLog,
    state: Mutex<State>,
    changed: Condvar,
}

impl Supervisor {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(
        &self,
        guard: MutexGuard<'a, State>,
        deadline: Option<Instant>,
    ) -> MutexGuard<'a, State> {
        match deadline {
            None => self.changed.wait(guard).unwrap_or_else(|p| p.into_inner()),
            Some(d) => {
                let timeout = d.saturating_duration_since(Instant::now());
                self.changed
                    .wait_timeout(guard, timeout)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
        }
    }

    /// Sends `signal` to QEMU unless it has already been reaped (the state
    /// lock makes sure the pid is still ours).
    fn signal_qemu(&self, st: &State, sig: Signal) {
        if st.qemu_exit.is_some() {
            return;
        }
        if let Some(pid) = st.qemu_pid {
            if let Err(e) = signal::kill(Pid::from_raw(pid as i32), sig) {
                tracing::warn!("could not send {sig} to QEMU {pid}: {e}");
            }
        }
    }

    /// Asks for a stop; the coordinator loop in [`run`] carries it out.
    fn request_stop(&self, force: bool, by: &str) {
        let mut st = self.lock();
        if st.qemu_exit.is_some() || (st.stop_requested && (st.force_requested || !force)) {
            return; // Nothing new.
        }
        st.stop_requested = true;
        st.force_requested |= force;
        drop(st);
        tracing::info!(force, by, "stop requested");
        self.events.append(Event::StopRequested {
            force,
            by: by.to_owned(),
        });
        self.changed.notify_all();
    }

    fn mark_guest_running(&self) {
        let mut st = self.lock();
        if st.guest_running_logged {
            return;
        }
        st.guest_running_logged = true;
        drop(st);
        tracing::info!("guest running");
        self.events.append(Event::GuestRunning);
    }

    fn on_qmp_event(&self, ev: QmpEvent) {
        tracing::info!(event = %ev.event, data = %ev.data, "QMP event");
        match ev.event.as_str() {
            "SHUTDOWN" => {
                self.lock().shutdown = Some(ev);
                self.changed.notify_all();
            }
            "RESET" => self.events.append(Event::Reset {
                guest: ev.guest().unwrap_or(false),
                reason: ev.reason().map(str::to_owned),
            }),
            "RESUME" => self.mark_guest_running(),
            _ => {}
        }
    }

    fn qmp(&self) -> Option<Arc<Qmp>> {
        self.lock().qmp.clone()
    }

    fn status(&self) -> StatusReport {
        let (qemu_pid, started, stopping, qmp) = {
            let st = self.lock();
            (
                st.qemu_pid,
                st.qemu_started,
                st.stop_requested,
                st.qmp.clone(),
            )
        };
        let qmp_status = qmp.and_then(|q| {
            q.execute_with_timeout("query-status", None, QMP_TIMEOUT)
                .ok()
                .and_then(|v| v.get("status").and_then(Value::as_str).map(str::to_owned))
        });
        StatusReport {
            instance_id: self.spec.instance_id.clone(),
            supervisor_pid: std::process::id(),
            qemu_pid,
            qmp_status,
            started_at: started.map(|s| s.1),
            uptime_secs: started.map_or(0.0, |s| s.0.elapsed().as_secs_f64()),
            stopping,
        }
    }

    fn handle(&self, request: ControlRequest) -> ControlResponse {
        match request {
            ControlRequest::Status => ControlResponse::ok(json!(self.status())),
            ControlRequest::Stop { force, wait } => {
                if !wait {
                    self.request_stop(force, "control");
                    return ControlResponse::ok(json!({"stopping": true}));
                }
                let mut st = self.lock();
                st.waiters += 1;
                drop(st);
                self.request_stop(force, "control");
                st = self.lock();
                while st.final_record.is_none() {
                    st = self.wait(st, None);
                }
                let record = st.final_record.clone();
                drop(st);
                ControlResponse::ok(json!(record))
            }
            ControlRequest::Reboot => {
                if self.lock().stop_requested {
                    return ControlResponse::err("The instance is stopping");
                }
                match self.qmp() {
                    None => ControlResponse::err("QEMU's QMP socket is not connected"),
                    Some(q) => match q.execute_with_timeout("system_reset", None, QMP_TIMEOUT) {
                        Ok(_) => ControlResponse::ok(json!({})),
                        Err(e) => ControlResponse::err(e),
                    },
                }
            }
            ControlRequest::LiveSnapshot(r) => match self.qmp() {
                None => ControlResponse::err("QEMU's QMP socket is not connected"),
                Some(q) => match super::live_snapshot::take(&q, &r) {
                    Ok(reply) => ControlResponse::ok(json!(reply)),
                    Err(e) => ControlResponse::err(e),
                },
            },
            ControlRequest::Disk(r) => match self.qmp() {
                None => ControlResponse::err("QEMU's QMP socket is not connected"),
                Some(q) => match super::hotplug::handle(&q, &r) {
                    Ok(v) => ControlResponse::ok(v),
                    Err(e) => ControlResponse::err(e),
                },
            },
            ControlRequest::Qmp { execute, arguments } => match self.qmp() {
                None => ControlResponse::err("QEMU's QMP socket is not connected"),
                Some(q) => match q.execute(&execute, arguments) {
                    Ok(v) => ControlResponse::ok(v),
                    Err(QmpError::Closed) if execute == "quit" => ControlResponse::ok(json!({})),
                    Err(e) => ControlResponse::err(e),
                },
            },
        }
    }

    /// Serves one control connection until the client hangs up.
    fn serve(self: &Arc<Self>, stream: UnixStream) {
        let Ok(mut out) = stream.try_clone() else {
            return;
        };
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if line.trim().is_empty() {
                continue;
            }
            let (response, waits) = match serde_json::from_str::<ControlRequest>(&line) {
                Ok(req) => {
                    // `handle` counted a waiting stop in `waiters`.
                    let waits = matches!(req, ControlRequest::Stop { wait: true, .. });
                    (self.handle(req), waits)
                }
                Err(e) => (
                    ControlResponse::err(format!("Malformed control request: {e}")),
                    false,
                ),
            };
            let mut text = serde_json::to_vec(&response).expect("responses serialise");
            text.push(b'\n');
            let written = out.write_all(&text);
            if waits {
                self.lock().waiters -= 1;
                self.changed.notify_all();
            }
            if written.is_err() {
                break;
            }
        }
    }

    /// Decides why QEMU ended, from what the supervisor did and saw.
    fn classify(&self, st: &State, qmp_connected: bool, status: ExitStatus) -> ExitReason {
        let shutdown = st.shutdown.as_ref();
        let by_guest = shutdown.and_then(QmpEvent::guest) == Some(true);
        if !qmp_connected {
            return ExitReason::StartFailed;
        }
        if st.ended_by_us {
            return ExitReason::Forced;
        }
        if by_guest {
            return if st.stop_requested {
                ExitReason::StopRequested
            } else {
                ExitReason::GuestShutdown
            };
        }
        if let Some(sig) = status.signal() {
            return match Signal::try_from(sig) {
                Ok(Signal::SIGKILL | Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP) => {
                    ExitReason::QemuKilled
                }
                _ => ExitReason::QemuCrashed,
            };
        }
        if status.code() != Some(0) {
            return ExitReason::QemuCrashed;
        }
        // A clean exit nobody here asked for: the shutdown event says why.
        match shutdown.and_then(QmpEvent::reason) {
            Some("host-signal") => ExitReason::QemuKilled,
            Some("host-qmp-quit") => ExitReason::Forced,
            _ => ExitReason::QemuCrashed,
        }
    }
}

/// Runs the supervisor for the instance described by `launch_spec_path`
/// until QEMU has exited, and returns the `exited` record it wrote.
///
/// This is the body of `amirun __supervise <launch.json>`; the caller should
/// have set up logging to stderr (which [`spawn_detached`] points at the
/// supervisor log) and exit when it returns. It installs process-wide
/// handlers for SIGTERM and SIGINT, and QEMU's parent-death signal is tied
/// to the calling thread, so call it from a thread that lives until it
/// returns (the main thread). An error means nothing was started; a QEMU
/// that could not be started is an `Ok` record with reason `start-failed`.
pub fn run(launch_spec_path: &Path) -> Result<ExitRecord, SupervisorError> {
    let spec = LaunchSpec::read(launch_spec_path)?;
    // What the supervisor and QEMU create (serial log, events, sockets) is
    // the owner's alone; a serial log from an older run is tightened too.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let _ = crate::private_fs::private_file(&spec.serial_log, false);
    let pid_lock = claim_pid_file(&spec)?;
    // Whoever decided under the fence that this instance is not running
    // withdrew (or replaced) the launch spec: then this run is not wanted.
    if LaunchSpec::read(launch_spec_path).ok().as_ref() != Some(&spec) {
        let _ = std::fs::remove_file(&spec.pid_file);
        return Err(SupervisorError::Withdrawn {
            instance_id: spec.instance_id.clone(),
        });
    }
    let events = EventLog::open(&spec.events)?;
    let sup = Arc::new(Supervisor {
        spec,
        events,
        state: Mutex::new(State {
            qemu_pid: None,
            qemu_started: None,
            qemu_exit: None,
            qmp: None,
            qmp_closed: false,
            guest_running_logged: false,
            shutdown: None,
            stop_requested: false,
            force_requested: false,
            phase: StopPhase::None,
            ended_by_us: false,
            final_record: None,
            waiters: 0,
        }),
        changed: Condvar::new(),
    });
    sup.events.append(Event::SupervisorStarted {
        pid: std::process::id(),
    });
    tracing::info!(instance = %sup.spec.instance_id, "supervisor started");

    let result = supervise(&sup);
    if let Ok(record) = &result {
        sup.events.append(Event::Exited(record.clone()));
        tracing::info!(reason = record.reason.as_str(), "QEMU exited");
    }
    // Clean up before answering clients waiting for the exit, so that what
    // they see next (probe, a new start) finds the instance fully stopped.
    let _ = std::fs::remove_file(&sup.spec.control_socket);
    let _ = std::fs::remove_file(&sup.spec.pid_file);
    if let Ok(record) = &result {
        let mut st = sup.lock();
        st.final_record = Some(record.clone());
        sup.changed.notify_all();
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while st.waiters > 0 && Instant::now() < deadline {
            st = sup.wait(st, Some(deadline));
        }
    }
    drop(pid_lock);
    result
}

/// Takes the pid file: locked for the supervisor's lifetime, so a second
/// supervisor for the same instance is refused.
fn claim_pid_file(spec: &LaunchSpec) -> Result<Flock<File>, SupervisorError> {
    let path = &spec.pid_file;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(SupervisorError::io("create", dir))?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(SupervisorError::io("open the pid file", path))?;
    let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let pid = std::fs::read_to_string(path).unwrap_or_default();
            return Err(SupervisorError::AlreadyRunning {
                instance_id: spec.instance_id.clone(),
                pid: pid.trim().to_owned(),
            });
        }
        Err((_, errno)) => {
            return Err(SupervisorError::io("lock the pid file", path)(errno.into()));
        }
    };
    lock.set_len(0)
        .and_then(|()| (&*lock).write_all(format!("{}\n", std::process::id()).as_bytes()))
        .map_err(SupervisorError::io("write the pid file", path))?;
    Ok(lock)
}

/// Everything between taking the pid file and writing the `exited` record.
fn supervise(sup: &Arc<Supervisor>) -> Result<ExitRecord, SupervisorError> {
    let spec = &sup.spec;
    install_stop_signals(sup)?;
    serve_control_socket(sup)?;
    start_imds(spec);

    // The guest's network namespace (held until QEMU is gone), then QEMU.
    let guest_net = match spec
        .network
        .as_ref()
        .map(GuestNamespace::create)
        .transpose()
    {
        Ok(n) => n,
        Err(e) => {
            tracing::error!("could not make the guest's network namespace: {e}");
            return Ok(ExitRecord {
                reason: ExitReason::StartFailed,
                exit_status: None,
                qemu_pid: None,
                shutdown_reason: None,
                detail: Some(format!("Could not make the guest's network namespace: {e}")),
            });
        }
    };
    let _ = std::fs::remove_file(&spec.qmp_socket);
    let child = match spawn_qemu(spec, guest_net.as_ref()) {
        Ok(child) => child,
        Err(e) => {
            tracing::error!("could not start {}: {e}", spec.program.display());
            return Ok(ExitRecord {
                reason: ExitReason::StartFailed,
                exit_status: None,
                qemu_pid: None,
                shutdown_reason: None,
                detail: Some(format!("Could not start {}: {e}", spec.program.display())),
            });
        }
    };
    let qemu_pid = child.id();
    {
        let mut st = sup.lock();
        st.qemu_pid = Some(qemu_pid);
        st.qemu_started = Some((Instant::now(), Utc::now()));
    }
    sup.events.append(Event::QemuStarted { pid: qemu_pid });
    tracing::info!(pid = qemu_pid, "QEMU started");
    spawn_waiter(sup, child)?;
    if let Some(Err(e)) = guest_net.as_ref().map(GuestNamespace::start_ssh_relay) {
        tracing::error!("no SSH forward: {e}");
    }

    // Connect to QMP while QEMU lives.
    let deadline = Instant::now() + Duration::from_secs(spec.start_timeout_secs);
    let connected = Qmp::connect_while(&spec.qmp_socket, deadline, || {
        sup.lock().qemu_exit.is_none()
    });
    let mut start_failure = None;
    match connected {
        Ok(qmp) => {
            let qmp = Arc::new(qmp);
            sup.lock().qmp = Some(Arc::clone(&qmp));
            spawn_event_pump(sup, Arc::clone(&qmp))?;
            match qmp.execute_with_timeout("query-status", None, QMP_TIMEOUT) {
                Ok(v) if v.get("running").and_then(Value::as_bool) == Some(true) => {
                    sup.mark_guest_running()
                }
                Ok(v) => tracing::info!(status = %v, "guest not running yet"),
                Err(e) => tracing::warn!("query-status failed: {e}"),
            }
        }
        Err(e) => {
            let mut st = sup.lock();
            st.qmp_closed = true;
            start_failure = Some(if st.qemu_exit.is_some() {
                format!(
                    "QEMU exited before QMP answered; its messages are in {}",
                    spec.supervisor_log.display()
                )
            } else {
                tracing::error!("QMP did not answer; killing QEMU: {e}");
                sup.signal_qemu(&st, Signal::SIGKILL);
                format!("QMP on {} did not answer: {e}", spec.qmp_socket.display())
            });
        }
    }
    let qmp_connected = start_failure.is_none();

    coordinate(sup);

    // QEMU is gone: let the pump take QMP's last events (SHUTDOWN comes
    // before the socket closes), then decide why it ended.
    let mut st = sup.lock();
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while !st.qmp_closed && Instant::now() < deadline {
        st = sup.wait(st, Some(deadline));
    }
    let status = st.qemu_exit.expect("coordinate returns once QEMU exited");
    let reason = sup.classify(&st, qmp_connected, status);
    let detail = start_failure;
    let record = ExitRecord {
        reason,
        exit_status: ExitStatusRecord::from_status(status),
        qemu_pid: Some(qemu_pid),
        shutdown_reason: st
            .shutdown
            .as_ref()
            .and_then(|e| e.reason().map(str::to_owned)),
        detail,
    };
    st.qmp = None;
    Ok(record)
}

/// What the coordinator does next, outside the state lock.
enum Step {
    PowerDown,
    Quit,
    Kill,
}

/// Carries out stop requests until QEMU has exited.
fn coordinate(sup: &Arc<Supervisor>) {
    let stop_timeout = Duration::from_secs(sup.spec.stop_timeout_secs);
    loop {
        let (step, qmp) = {
            let mut st = sup.lock();
            let step = loop {
                if st.qemu_exit.is_some() {
                    return;
                }
                let now = Instant::now();
                let has_qmp = st.qmp.is_some();
                match st.phase {
                    StopPhase::None if st.stop_requested => {
                        if st.force_requested || !has_qmp {
                            st.phase = StopPhase::Quitting {
                                deadline: now + QUIT_GRACE,
                            };
                            break Step::Quit;
                        }
                        st.phase = StopPhase::PoweringDown {
                            deadline: now + stop_timeout,
                        };
                        break Step::PowerDown;
                    }
                    StopPhase::PoweringDown { deadline }
                        if st.force_requested || now >= deadline =>
                    {
                        st.phase = StopPhase::Quitting {
                            deadline: now + QUIT_GRACE,
                        };
                        break Step::Quit;
                    }
                    StopPhase::Quitting { deadline } if now >= deadline => {
                        st.phase = StopPhase::Killed;
                        break Step::Kill;
                    }
                    _ => {}
                }
                let wake = match st.phase {
                    StopPhase::PoweringDown { deadline } | StopPhase::Quitting { deadline } => {
                        Some(deadline)
                    }
                    StopPhase::None | StopPhase::Killed => None,
                };
                st = sup.wait(st, wake);
            };
            if matches!(step, Step::Quit | Step::Kill) {
                st.ended_by_us = true;
            }
            if matches!(step, Step::Kill) {
                tracing::warn!("QEMU did not quit; sending SIGKILL");
                sup.signal_qemu(&st, Signal::SIGKILL);
            }
            (step, st.qmp.clone())
        };
        match (step, qmp) {
            (Step::PowerDown, Some(q)) => {
                tracing::info!("pressing the ACPI power button");
                if let Err(e) = q.execute_with_timeout("system_powerdown", None, QMP_TIMEOUT) {
                    tracing::warn!("system_powerdown failed: {e}");
                }
            }
            (Step::Quit, Some(q)) => {
                tracing::info!("sending QMP quit");
                match q.execute_with_timeout("quit", None, QMP_TIMEOUT) {
                    Ok(_) | Err(QmpError::Closed) => {}
                    Err(e) => {
                        tracing::warn!("quit failed: {e}; sending SIGTERM");
                        sup.signal_qemu(&sup.lock(), Signal::SIGTERM);
                    }
                }
            }
            (Step::Quit | Step::PowerDown, None) => {
                tracing::info!("no QMP; sending SIGTERM to QEMU");
                sup.signal_qemu(&sup.lock(), Signal::SIGTERM);
            }
            (Step::Kill, _) => {}
        }
    }
}

/// Spawns QEMU: stdin `/dev/null`, stdout and stderr appended to the
/// supervisor log, its own process group (so signals meant for the
/// supervisor's group reach only the supervisor, which stops QEMU cleanly),
/// and SIGKILL when the supervisor dies.
fn spawn_qemu(
    spec: &LaunchSpec,
    net: Option<&GuestNamespace>,
) -> std::io::Result<std::process::Child> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.supervisor_log)?;
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let parent = nix::unistd::getpid();
    // SAFETY: the closure only makes async-signal-safe system calls
    // (setpgid, prctl, getppid) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The supervisor may have died before prctl took effect.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        });
        if let Some(net) = net {
            cmd.pre_exec(net.pre_exec_hook()?);
        }
    }
    // std resets the signal mask and SIGPIPE in the child; handlers we
    // installed are reset by exec.
    cmd.spawn()
}

/// Waits for QEMU in a thread: first without reaping, so that no pid is
/// signalled after it could have been reused, then reaps under the lock.
fn spawn_waiter(
    sup: &Arc<Supervisor>,
    mut child: std::process::Child,
) -> Result<(), SupervisorError> {
    let sup = Arc::clone(sup);
    let pid = Pid::from_raw(child.id() as i32);
    std::thread::Builder::new()
        .name("qemu-waiter".into())
        .spawn(move || {
            while let Err(nix::errno::Errno::EINTR) =
                waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT)
            {}
            let mut st = sup.lock();
            let status = loop {
                match child.wait() {
                    Ok(status) => break status,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // Only if the child was reaped elsewhere; record it
                        // as killed rather than hang.
                        tracing::error!("waiting for QEMU failed: {e}");
                        break ExitStatus::from_raw(nix::libc::SIGKILL);
                    }
                }
            };
            st.qemu_exit = Some(status);
            drop(st);
            sup.changed.notify_all();
        })
        .map_err(|source| SupervisorError::Setup {
            what: "qemu-waiter thread",
            source,
        })?;
    Ok(())
}

/// Takes QMP events as they come and records what matters.
fn spawn_event_pump(sup: &Arc<Supervisor>, qmp: Arc<Qmp>) -> Result<(), SupervisorError> {
    let sup = Arc::clone(sup);
    std::thread::Builder::new()
        .name("qmp-events".into())
        .spawn(move || {
            loop {
                match qmp.next_event(None) {
                    Ok(Some(ev)) => sup.on_qmp_event(ev),
                    Ok(None) => continue,
                    Err(_) => break,
                }
            }
            sup.lock().qmp_closed = true;
            sup.changed.notify_all();
        })
        .map_err(|source| SupervisorError::Setup {
            what: "qmp-events thread",
            source,
        })?;
    Ok(())
}

/// Serves the guest's instance metadata service, when the spec has one. A
/// metadata service that cannot start is logged, not fatal: the guest still
/// boots (and finds no IMDS, as with `HttpEndpoint=disabled`).
fn start_imds(spec: &LaunchSpec) {
    let Some(value) = &spec.imds else { return };
    let started = serde_json::from_value::<crate::metadata::imds::ImdsConfig>(value.clone())
        .map_err(std::io::Error::other)
        .and_then(crate::metadata::imds::serve);
    if let Err(e) = started {
        tracing::error!("the instance metadata service could not start: {e}");
    }
}

/// Binds the control socket (mode 0600) and serves it from a thread.
fn serve_control_socket(sup: &Arc<Supervisor>) -> Result<(), SupervisorError> {
    let path = &sup.spec.control_socket;
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(SupervisorError::io("bind", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(SupervisorError::io("restrict", path))?;
    let sup = Arc::clone(sup);
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let sup = Arc::clone(&sup);
                let _ = std::thread::Builder::new()
                    .name("control-conn".into())
                    .spawn(move || sup.serve(stream));
            }
        })
        .map_err(|source| SupervisorError::Setup {
            what: "control thread",
            source,
        })?;
    Ok(())
}

/// Write end of the self-pipe the signal handler writes to.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_stop_signal(sig: nix::libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: the fd stays open for the life of the process; write(2)
        // is async-signal-safe.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let _ = nix::unistd::write(fd, &[sig as u8]);
    }
}

/// Turns SIGTERM and SIGINT into graceful stops, through a self-pipe and a
/// thread (a handler, not a blocked mask, so it works whichever thread the
/// kernel picks).
fn install_stop_signals(sup: &Arc<Supervisor>) -> Result<(), SupervisorError> {
    let io_err = |e: nix::errno::Errno| SupervisorError::Setup {
        what: "signal handling",
        source: e.into(),
    };
    let (read_end, write_end): (OwnedFd, OwnedFd) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io_err)?;
    nix::fcntl::fcntl(
        write_end.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK),
    )
    .map_err(io_err)?;
    // Leak the write end: the handler may run until the process exits.
    let old = SIGNAL_PIPE.swap(
        std::os::fd::IntoRawFd::into_raw_fd(write_end),
        Ordering::SeqCst,
    );
    if old >= 0 {
        // SAFETY: a previous run's write end, no longer referenced.
        drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(old) });
    }
    let action = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only loads an atomic and calls write(2).
        unsafe { signal::sigaction(sig, &action) }.map_err(io_err)?;
    }
    let sup = Arc::clone(sup);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let file = File::from(read_end);
            let mut buf = [0u8; 1];
            while let Ok(1) = nix::unistd::read(file.as_fd().as_raw_fd(), &mut buf) {
                tracing::info!("got signal {}", buf[0]);
                sup.request_stop(false, "signal");
            }
        })
        .map_err(|source| SupervisorError::Setup {
            what: "signal thread",
            source,
        })?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Starting a supervisor

/// Starts `amirun_exe __supervise <launch_spec_path>` as a daemon and
/// returns its pid: in its own session, not a child of the caller (double
/// fork, so a long-running caller collects no zombies), stdin `/dev/null`,
/// stdout and stderr appended to the spec's `supervisor_log`. The caller may
/// exit at once; the instance keeps running.
///
/// The supervisor has not necessarily taken its pid file yet when this
/// returns; use [`probe`] to see it come up.
pub fn spawn_detached(amirun_exe: &Path, launch_spec_path: &Path) -> Result<u32, SupervisorError> {
    let spec = LaunchSpec::read(launch_spec_path)?;
    let log_path = &spec.supervisor_log;
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir).map_err(SupervisorError::io("create", dir))?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(SupervisorError::io("open", log_path))?;
    let spawn_err = |source: std::io::Error| SupervisorError::Spawn {
        program: amirun_exe.to_owned(),
        source,
    };
    let (pid_read, pid_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| spawn_err(e.into()))?;
    let pid_write_fd = pid_write.as_raw_fd();

    let mut cmd = Command::new(amirun_exe);
    cmd.arg(SUPERVISE_SUBCOMMAND)
        .arg(launch_spec_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(spawn_err)?)
        .stderr(log);
    // SAFETY: only async-signal-safe calls (setsid, fork, write, _exit);
    // the pid is formatted into a stack buffer, without allocating.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid()?;
            match nix::unistd::fork()? {
                nix::unistd::ForkResult::Parent { child } => {
                    let bytes = (child.as_raw() as u32).to_le_bytes();
                    let fd = std::os::fd::BorrowedFd::borrow_raw(pid_write_fd);
                    let _ = nix::unistd::write(fd, &bytes);
                    nix::libc::_exit(0);
                }
                // The grandchild goes on to exec the supervisor; its copy
                // of the pipe closes on exec.
                nix::unistd::ForkResult::Child => Ok(()),
            }
        });
    }
    let mut intermediate = cmd.spawn().map_err(spawn_err)?;
    drop(pid_write);
    let _ = intermediate.wait();
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(pid_read.as_raw_fd(), &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(spawn_err(e.into())),
        }
    }
    if got != buf.len() {
        return Err(spawn_err(std::io::Error::other(
            "the supervisor's pid never came back from the fork",
        )));
    }
    Ok(u32::from_le_bytes(buf))
}

// ---------------------------------------------------------------------------
// Talking to a supervisor

/// What went wrong talking to a supervisor.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nobody answers on the control socket (the supervisor is not running).
    #[error("Could not connect to the supervisor at {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The connection failed midway.
    #[error("Lost the connection to the supervisor")]
    Io(#[from] std::io::Error),
    /// The supervisor answered something unreadable, or hung up.
    #[error("Unexpected answer from the supervisor: {0}")]
    Protocol(String),
    /// The supervisor refused the request.
    #[error("The supervisor refused: {0}")]
    Refused(String),
}

/// A connection to one supervisor's control socket.
pub struct SupervisorClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl SupervisorClient {
    /// How long a request other than a waiting stop may take.
    const TIMEOUT: Duration = Duration::from_secs(60);

    /// Connects to a control socket ([`Paths::control_socket`]).
    pub fn connect(control_socket: &Path) -> Result<Self, ClientError> {
        let writer =
            UnixStream::connect(control_socket).map_err(|source| ClientError::Connect {
                path: control_socket.to_owned(),
                source,
            })?;
        let reader = BufReader::new(writer.try_clone()?);
        Ok(SupervisorClient { reader, writer })
    }

    /// Sends one request and returns its result.
    pub fn request(&mut self, request: &ControlRequest) -> Result<Value, ClientError> {
        let waits = matches!(request, ControlRequest::Stop { wait: true, .. });
        self.writer
            .set_read_timeout((!waits).then_some(Self::TIMEOUT))?;
        let mut line = serde_json::to_vec(request).expect("requests serialise");
        line.push(b'\n');
        self.writer.write_all(&line)?;
        let mut answer = String::new();
        if self.reader.read_line(&mut answer)? == 0 {
            return Err(ClientError::Protocol("the supervisor hung up".into()));
        }
        let response: ControlResponse = serde_json::from_str(&answer)
            .map_err(|e| ClientError::Protocol(format!("{e}: {}", answer.trim())))?;
        if response.ok {
            Ok(response.result.unwrap_or(Value::Null))
        } else {
            Err(ClientError::Refused(
                response.error.unwrap_or_else(|| "no reason given".into()),
            ))
        }
    }

    /// The supervisor's [`StatusReport`].
    pub fn status(&mut self) -> Result<StatusReport, ClientError> {
        let v = self.request(&ControlRequest::Status)?;
        serde_json::from_value(v).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Starts a stop (graceful, or with `force` at once) and returns as soon
    /// as it is under way.
    pub fn stop(&mut self, force: bool) -> Result<(), ClientError> {
        self.request(&ControlRequest::Stop { force, wait: false })
            .map(drop)
    }

    /// Stops and waits until QEMU has exited and the supervisor has removed
    /// its pid file and control socket; returns the `exited` record.
    pub fn stop_and_wait(&mut self, force: bool) -> Result<ExitRecord, ClientError> {
        let v = self.request(&ControlRequest::Stop { force, wait: true })?;
        serde_json::from_value(v).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Resets the machine (see the module doc on rebooting).
    pub fn reboot(&mut self) -> Result<(), ClientError> {
        self.request(&ControlRequest::Reboot).map(drop)
    }

    /// Takes a live snapshot inside the supervisor ([`super::live_snapshot`]).
    pub fn live_snapshot(
        &mut self,
        request: super::live_snapshot::LiveSnapshotRequest,
    ) -> Result<super::live_snapshot::LiveSnapshotReply, ClientError> {
        let request = ControlRequest::LiveSnapshot(request);
        self.writer.set_read_timeout(Some(Self::TIMEOUT))?;
        let mut line = serde_json::to_vec(&request).expect("requests serialise");
        line.push(b'\n');
        self.writer.write_all(&line)?;
        // The supervisor finishes the snapshot even if this process dies now.
        let _ = crate::failpoint::hit("live-snapshot:sent");
        let mut answer = String::new();
        if self.reader.read_line(&mut answer)? == 0 {
            return Err(ClientError::Protocol("the supervisor hung up".into()));
        }
        let response: ControlResponse = serde_json::from_str(&answer)
            .map_err(|e| ClientError::Protocol(format!("{e}: {}", answer.trim())))?;
        if !response.ok {
            return Err(ClientError::Refused(
                response.error.unwrap_or_else(|| "no reason given".into()),
            ));
        }
        serde_json::from_value(response.result.unwrap_or(Value::Null))
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// A disk operation in the supervisor ([`super::hotplug`]).
    pub fn disk(&mut self, request: super::hotplug::DiskRequest) -> Result<Value, ClientError> {
        self.request(&ControlRequest::Disk(request))
    }

    /// Runs a QMP command through the supervisor and returns its `return` value.
    pub fn qmp(&mut self, execute: &str, arguments: Option<Value>) -> Result<Value, ClientError> {
        self.request(&ControlRequest::Qmp {
            execute: execute.to_owned(),
            arguments,
        })
    }
}

// ---------------------------------------------------------------------------
// Live facts

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

    #[test]
    fn control_requests_parse_from_the_documented_lines() {
        let parse = |s: &str| serde_json::from_str::<ControlRequest>(s).unwrap();
        assert_eq!(parse(r#"{"op":"status"}"#), ControlRequest::Status);
        assert_eq!(
            parse(r#"{"op":"stop","force":false}"#),
            ControlRequest::Stop {
                force: false,
                wait: false
            }
        );
        assert_eq!(parse(r#"{"op":"reboot"}"#), ControlRequest::Reboot);
        assert_eq!(
            parse(r#"{"op":"qmp","execute":"query-block"}"#),
            ControlRequest::Qmp {
                execute: "query-block".into(),
                arguments: None
            }
        );
    }

    #[test]
    fn launch_spec_round_trips_with_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path(), dir.path().join("run"));
        let spec = LaunchSpec::new(
            &paths,
            "i-0123456789abcdef0",
            "qemu-system-x86_64".into(),
            vec!["-nodefaults".into()],
        );
        assert_eq!(
            spec.control_socket,
            paths.control_socket("i-0123456789abcdef0")
        );
        let path = dir.path().join("launch.json");
        spec.write(&path).unwrap();
        assert_eq!(LaunchSpec::read(&path).unwrap(), spec);

        let mut v = serde_json::to_value(&spec).unwrap();
        v.as_object_mut().unwrap().remove("stop_timeout_secs");
        std::fs::write(&path, v.to_string()).unwrap();
        assert_eq!(LaunchSpec::read(&path).unwrap().stop_timeout_secs, 60);
    }
}
