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
//! | `stop-requested` | `force`, `by` | a stop was asked for, over the control socket (`control`), by a signal to the supervisor (`signal`), or after a hibernation (`hibernate`) |
//! | `hibernate-requested` | | a hibernation began: the guest is paused while its state is saved |
//! | `hibernate-failed` | `detail` | the state could not be saved; the guest runs on and is stopped the ordinary way |
//! | `resumed` | | the guest was loaded from its saved state and runs (the state file is removed) |
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
//! # Hibernating and resuming
//!
//! A hibernation (control `hibernate`) pauses the guest and has QEMU
//! migrate its memory and device state into the spec's
//! `hibernation_state_tmp`, renamed to `hibernation_state` only once QEMU
//! reports the migration complete; then QEMU quits and the run ends
//! `hibernated`. If the state cannot be saved, the guest is resumed and
//! stopped like any other (EC2 does the same). A spec with `resume` starts
//! QEMU with `-incoming defer`, loads that file, runs the guest and removes
//! the file; a state QEMU cannot load ends the run `resume-failed` (and the
//! file is removed too). See `hibernate.rs`.
//!
//! # Rebooting
//!
//! EC2's RebootInstances is an OS reboot. QEMU offers no clean "reboot
//! button"; only the guest can reboot cleanly (e.g. through a guest agent's
//! `guest-shutdown mode=reboot`, which amirun does not wire yet). So a reboot
//! request is a `system_reset`: a hard reset that keeps every disk, like
//! EC2's own fallback when a guest ignores the reboot request.
//!
//! # Where things are
//!
//! This file is the running supervisor itself (its state, the stop
//! coordinator, QEMU's spawn and reaping, signals). Around it:
//! `spec` (the launch spec), `events` (the event log and exit records),
//! `control` (the control protocol, both ends), `detach` (starting a
//! supervisor as a daemon), `live` (probes of live facts and the fence),
//! `hibernate` (saving and loading a guest's state over QMP).

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
use serde_json::{json, Value};

use super::qmp::{Qmp, QmpError, QmpEvent};

mod control;
mod detach;
mod events;
mod hibernate;
mod live;
mod spec;

pub use control::{ClientError, ControlRequest, ControlResponse, StatusReport, SupervisorClient};
pub use detach::spawn_detached;
use events::EventLog;
pub use events::{read_events, Event, EventRecord, ExitReason, ExitRecord, ExitStatusRecord};
pub use live::{fence, probe, qemu_pids, LiveState};
pub use spec::LaunchSpec;

/// The hidden CLI subcommand that runs a supervisor: `amirun __supervise <launch.json>`.
pub const SUPERVISE_SUBCOMMAND: &str = "__supervise";

/// How long after QMP `quit` the supervisor waits before SIGKILL.
pub const QUIT_GRACE: Duration = Duration::from_secs(5);

/// How long one QMP command the supervisor sends itself may take.
const QMP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the supervisor waits for QMP's last events after QEMU exited,
/// and for control clients waiting on the exit to get their answer.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// A hibernation is saving the guest's state.
    hibernating: bool,
    /// The guest's state was saved completely; QEMU is quitting.
    hibernated: bool,
    /// The saved state this run was to resume from could not be loaded.
    resume_failed: bool,
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

    fn handle(self: &Arc<Self>, request: ControlRequest) -> ControlResponse {
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
            ControlRequest::Hibernate => self.start_hibernation(),
            ControlRequest::Reboot => {
                let stopping = {
                    let st = self.lock();
                    st.stop_requested || st.hibernating
                };
                if stopping {
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

    /// Starts saving the guest's state in a thread of its own (see
    /// [`hibernate`]); once saved, QEMU quits and the run ends
    /// `hibernated`. If it cannot be saved, the guest runs on and is
    /// stopped the ordinary way, as EC2 does when a hibernation fails.
    fn start_hibernation(self: &Arc<Self>) -> ControlResponse {
        let (Some(dest), Some(tmp)) = (
            self.spec.hibernation_state.clone(),
            self.spec.hibernation_state_tmp.clone(),
        ) else {
            return ControlResponse::err("The instance is not enabled for hibernation");
        };
        let Some(qmp) = self.qmp() else {
            return ControlResponse::err("QEMU's QMP socket is not connected");
        };
        {
            let mut st = self.lock();
            if st.stop_requested || st.hibernating || st.qemu_exit.is_some() {
                return ControlResponse::err("The instance is stopping");
            }
            st.hibernating = true;
        }
        self.events.append(Event::HibernateRequested);
        tracing::info!("hibernating to {}", dest.display());
        let sup = Arc::clone(self);
        let worker = std::thread::Builder::new()
            .name("hibernate".into())
            .spawn(move || match hibernate::save(&qmp, &tmp, &dest) {
                Ok(size) => {
                    tracing::info!(size, "guest state saved");
                    sup.lock().hibernated = true;
                    sup.request_stop(true, "hibernate");
                }
                Err(e) => {
                    let detail = e.detail();
                    tracing::error!("hibernation failed: {detail}; stopping instead");
                    sup.events.append(Event::HibernateFailed { detail });
                    if let Err(e) = qmp.execute_with_timeout("cont", None, QMP_TIMEOUT) {
                        tracing::warn!("cont after a failed hibernation: {e}");
                    }
                    sup.lock().hibernating = false;
                    sup.request_stop(false, "hibernate");
                }
            });
        match worker {
            Ok(_) => ControlResponse::ok(json!({"hibernating": true})),
            Err(e) => {
                self.lock().hibernating = false;
                ControlResponse::err(format!("Could not start the hibernation: {e}"))
            }
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
        if st.hibernated {
            return ExitReason::Hibernated;
        }
        if st.resume_failed {
            return ExitReason::ResumeFailed;
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
            hibernating: false,
            hibernated: false,
            resume_failed: false,
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
        .map(|n| GuestNamespace::create(n, spec.vpc.as_ref()))
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
    if qmp_connected && spec.resume {
        resume(sup);
    }

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

/// Loads the saved state this run was started to resume from (see
/// [`hibernate::resume`]); if it cannot be loaded, QEMU is ended and the
/// run ends `resume-failed`.
fn resume(sup: &Arc<Supervisor>) {
    let (Some(path), Some(qmp)) = (sup.spec.hibernation_state.clone(), sup.qmp()) else {
        return;
    };
    match hibernate::resume(&qmp, &path) {
        Ok(()) => {
            tracing::info!("resumed from {}", path.display());
            sup.events.append(Event::Resumed);
        }
        Err(e) => {
            tracing::error!("could not resume: {}", e.detail());
            let mut st = sup.lock();
            st.resume_failed = true;
            st.ended_by_us = true;
            sup.signal_qemu(&st, Signal::SIGKILL);
        }
    }
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
