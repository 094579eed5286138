//! A small synchronous client for QMP, QEMU's machine protocol.
//!
//! The supervisor uses it to learn whether the guest runs, to press the ACPI
//! power button, to reset and quit QEMU, and (later) to take live disk
//! snapshots. QMP is JSON objects, one per line, over a Unix socket: QEMU
//! greets, the client negotiates capabilities, then sends commands and gets
//! one `return` or `error` per command, interleaved with asynchronous events
//! (`SHUTDOWN`, `RESET`, `POWERDOWN`, …) at any time.
//!
//! [`Qmp`] keeps a reader thread that sorts what QEMU sends into replies and
//! events. [`Qmp::execute`] sends one command and waits for its reply (matched
//! by `id`), so events never confuse a caller; events are kept in order until
//! someone takes them with [`Qmp::next_event`], [`Qmp::wait_event`] or
//! [`Qmp::drain_events`]. All methods take `&self`: one thread may wait for
//! events while others run commands.
//!
//! ```no_run
//! use std::time::{Duration, Instant};
//! use amirun::instance::qmp::Qmp;
//!
//! let qmp = Qmp::connect("/path/to/qmp.sock".as_ref(), Instant::now() + Duration::from_secs(10))?;
//! assert!(qmp.query_status()?.running);
//! qmp.system_reset()?;
//! let reset = qmp.wait_event("RESET", Instant::now() + Duration::from_secs(5))?;
//! assert_eq!(reset.and_then(|e| e.guest()), Some(false));
//! qmp.quit()?;
//! # Ok::<(), amirun::instance::qmp::QmpError>(())
//! ```

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// How long [`Qmp::execute`] waits for a reply unless told otherwise.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// How many unread events are kept; older ones are dropped beyond this.
const MAX_QUEUED_EVENTS: usize = 1024;

/// How often [`Qmp::connect_while`] retries while QEMU has not yet created
/// its socket.
const CONNECT_RETRY: Duration = Duration::from_millis(20);

/// What went wrong talking QMP.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be connected to before the deadline.
    #[error("Could not connect to QMP socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("QMP connection failed")]
    Io(#[from] std::io::Error),
    /// QEMU sent something that is not QMP, or the greeting never came.
    #[error("QMP protocol error: {0}")]
    Protocol(String),
    /// QEMU refused a command.
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    /// No reply came in time.
    #[error("QMP command {command} got no reply within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
    /// QEMU closed the connection (it exited, or is exiting).
    #[error("QMP connection closed by QEMU")]
    Closed,
}

/// When QEMU emitted an event (seconds and microseconds since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QmpTimestamp {
    pub seconds: i64,
    pub microseconds: i64,
}

/// One asynchronous event, e.g. `{"event":"SHUTDOWN","data":{"guest":true,"reason":"guest-shutdown"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QmpEvent {
    /// Event name: `SHUTDOWN`, `RESET`, `POWERDOWN`, `STOP`, `RESUME`, …
    pub event: String,
    /// Event-specific data (`Null` when the event has none).
    #[serde(default)]
    pub data: Value,
    /// When QEMU emitted it.
    #[serde(default)]
    pub timestamp: Option<QmpTimestamp>,
}

impl QmpEvent {
    /// `data.guest` of `SHUTDOWN` and `RESET`: true when the guest asked for it.
    pub fn guest(&self) -> Option<bool> {
        self.data.get("guest").and_then(Value::as_bool)
    }

    /// `data.reason` of `SHUTDOWN` and `RESET`, e.g. `guest-shutdown`,
    /// `guest-reset`, `host-qmp-quit`, `host-qmp-system-reset`, `host-signal`.
    pub fn reason(&self) -> Option<&str> {
        self.data.get("reason").and_then(Value::as_str)
    }
}

/// The answer of `query-status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VmStatus {
    /// QEMU's run state: `running`, `paused`, `prelaunch`, `shutdown`, …
    pub status: String,
    /// Whether vCPUs are running.
    pub running: bool,
}

/// Arguments of `blockdev-snapshot-sync`: put a new qcow2 overlay on top of a
/// disk while the guest runs, so the old top becomes a stable snapshot.
///
/// Name the disk either by `device` (the id of a `-drive`) or by `node_name`
/// (the node name of a `-blockdev`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct SnapshotSync {
    /// Block backend name (`-drive id=`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Block node name (`-blockdev node-name=`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The new overlay file QEMU creates (mode `absolute-paths`).
    pub snapshot_file: PathBuf,
    /// Node name to give the new overlay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_node_name: Option<String>,
    /// Format of the new overlay, normally `qcow2`.
    pub format: String,
}

impl SnapshotSync {
    /// This snapshot as one action of a [`Qmp::transaction`], so several
    /// disks can be snapshotted atomically.
    pub fn action(&self) -> Value {
        json!({"type": "blockdev-snapshot-sync", "data": self})
    }
}

/// What the reader thread has sorted out of the stream.
#[derive(Default)]
struct Inbox {
    greeting: Option<Value>,
    replies: VecDeque<Value>,
    events: VecDeque<QmpEvent>,
    /// Set when the stream ended; carries why, for diagnostics.
    closed: Option<String>,
}

struct Shared {
    inbox: Mutex<Inbox>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a change until `deadline` (forever when `None`); returns the
    /// guard and whether the deadline passed.
    fn wait<'a>(
        &self,
        guard: MutexGuard<'a, Inbox>,
        deadline: Option<Instant>,
    ) -> (MutexGuard<'a, Inbox>, bool) {
        match deadline {
            None => (
                self.changed.wait(guard).unwrap_or_else(|p| p.into_inner()),
                false,
            ),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return (guard, true);
                }
                let (g, _) = self
                    .changed
                    .wait_timeout(guard, d - now)
                    .unwrap_or_else(|p| p.into_inner());
                (g, false)
            }
        }
    }
}

/// A QMP connection in command mode (capabilities negotiated).
pub struct Qmp {
    /// Write side; the lock also serialises commands.
    writer: Mutex<UnixStream>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    command_timeout: Duration,
    greeting: Value,
    reader: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp")
            .field("greeting", &self.greeting)
            .finish_non_exhaustive()
    }
}

impl Qmp {
    /// Connects to QEMU's QMP socket, retrying until `deadline` while the
    /// socket does not exist yet or refuses (QEMU creates it asynchronously),
    /// then reads the greeting and negotiates capabilities.
    pub fn connect(path: &Path, deadline: Instant) -> Result<Qmp, QmpError> {
        Self::connect_while(path, deadline, || true)
    }

    /// Like [`Qmp::connect`], but gives up early as soon as `keep_trying`
    /// returns false (the supervisor passes "QEMU is still alive").
    pub fn connect_while(
        path: &Path,
        deadline: Instant,
        mut keep_trying: impl FnMut() -> bool,
    ) -> Result<Qmp, QmpError> {
        loop {
            match UnixStream::connect(path) {
                Ok(stream) => return Self::from_stream(stream, deadline),
                Err(e) => {
                    let retryable = matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    );
                    let now = Instant::now();
                    if !retryable || now >= deadline || !keep_trying() {
                        return Err(QmpError::Connect {
                            path: path.to_owned(),
                            source: e,
                        });
                    }
                    std::thread::sleep(CONNECT_RETRY.min(deadline - now));
                }
            }
        }
    }

    /// Speaks QMP over an already connected stream: waits for the greeting
    /// until `deadline` and negotiates capabilities.
    pub fn from_stream(stream: UnixStream, deadline: Instant) -> Result<Qmp, QmpError> {
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        let read_side = stream.try_clone()?;
        let shared = Arc::new(Shared {
            inbox: Mutex::new(Inbox::default()),
            changed: Condvar::new(),
        });
        let reader = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("qmp-reader".into())
                .spawn(move || read_loop(read_side, &shared))?
        };
        let mut qmp = Qmp {
            writer: Mutex::new(stream),
            shared,
            next_id: AtomicU64::new(1),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            greeting: Value::Null,
            reader: Some(reader),
        };
        qmp.greeting = qmp.wait_greeting(deadline)?;
        let timeout = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        qmp.execute_with_timeout("qmp_capabilities", None, timeout)?;
        Ok(qmp)
    }

    fn wait_greeting(&self, deadline: Instant) -> Result<Value, QmpError> {
        let mut inbox = self.shared.lock();
        loop {
            if let Some(g) = inbox.greeting.take() {
                return Ok(g);
            }
            if let Some(why) = &inbox.closed {
                return Err(QmpError::Protocol(format!(
                    "connection ended before the QMP greeting ({why})"
                )));
            }
            let (g, timed_out) = self.shared.wait(inbox, Some(deadline));
            inbox = g;
            if timed_out && inbox.greeting.is_none() {
                return Err(QmpError::Protocol(
                    "no QMP greeting before the deadline".into(),
                ));
            }
        }
    }

    /// The greeting QEMU sent (`{"QMP":{"version":…,"capabilities":…}}`).
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// Changes how long [`Qmp::execute`] waits for a reply.
    pub fn set_command_timeout(&mut self, timeout: Duration) {
        self.command_timeout = timeout;
    }

    /// Runs one command and returns its `return` value. Events that arrive
    /// meanwhile are queued, not lost.
    pub fn execute(&self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        self.execute_with_timeout(command, arguments, self.command_timeout)
    }

    /// [`Qmp::execute`] with an explicit reply timeout.
    pub fn execute_with_timeout(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        self.exchange(command, arguments, timeout, None)
    }

    /// Hands QEMU an open file descriptor under `name` (QMP `getfd`, the
    /// descriptor passed along with the command as `SCM_RIGHTS`), for a
    /// later `fd:NAME` migration URI. QEMU keeps its own copy.
    pub fn send_fd(&self, name: &str, fd: BorrowedFd<'_>) -> Result<(), QmpError> {
        self.exchange(
            "getfd",
            Some(json!({ "fdname": name })),
            self.command_timeout,
            Some(fd),
        )
        .map(drop)
    }

    fn exchange(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut request = json!({"execute": command, "id": id});
        if let Some(args) = arguments {
            request["arguments"] = args;
        }
        let mut line = serde_json::to_vec(&request).expect("a JSON value serialises");
        line.push(b'\n');

        // Hold the writer for the whole exchange: one command at a time.
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if self.shared.lock().closed.is_some() {
            return Err(QmpError::Closed);
        }
        let sent = match fd {
            None => writer.write_all(&line),
            Some(fd) => send_with_fd(&writer, &line, fd),
        };
        if let Err(e) = sent {
            return Err(match e.kind() {
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
                    QmpError::Closed
                }
                _ => QmpError::Io(e),
            });
        }
        let deadline = Instant::now() + timeout;
        let mut inbox = self.shared.lock();
        loop {
            while let Some(reply) = inbox.replies.pop_front() {
                if reply.get("id").and_then(Value::as_u64) != Some(id) {
                    // A late reply to a command that timed out earlier.
                    continue;
                }
                drop(inbox);
                drop(writer);
                return reply_value(command, reply);
            }
            if inbox.closed.is_some() {
                return Err(QmpError::Closed);
            }
            let (g, timed_out) = self.shared.wait(inbox, Some(deadline));
            inbox = g;
            if timed_out && inbox.replies.is_empty() {
                return Err(QmpError::Timeout {
                    command: command.to_owned(),
                    timeout,
                });
            }
        }
    }

    /// `query-status`.
    pub fn query_status(&self) -> Result<VmStatus, QmpError> {
        let v = self.execute("query-status", None)?;
        serde_json::from_value(v)
            .map_err(|e| QmpError::Protocol(format!("unexpected query-status reply: {e}")))
    }

    /// `system_powerdown`: presses the ACPI power button. The guest OS
    /// decides what to do; firmware alone ignores it.
    pub fn system_powerdown(&self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).map(drop)
    }

    /// `system_reset`: a hard reset, like the reset button.
    pub fn system_reset(&self) -> Result<(), QmpError> {
        self.execute("system_reset", None).map(drop)
    }

    /// `quit`: QEMU exits at once. A connection closed before the reply
    /// counts as success, since that is what quitting does.
    pub fn quit(&self) -> Result<(), QmpError> {
        match self.execute("quit", None) {
            Ok(_) | Err(QmpError::Closed) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `stop`: pauses the vCPUs.
    pub fn stop(&self) -> Result<(), QmpError> {
        self.execute("stop", None).map(drop)
    }

    /// `cont`: resumes paused vCPUs.
    pub fn cont(&self) -> Result<(), QmpError> {
        self.execute("cont", None).map(drop)
    }

    /// `blockdev-snapshot-sync`: one live external snapshot.
    pub fn blockdev_snapshot_sync(&self, snapshot: &SnapshotSync) -> Result<(), QmpError> {
        let args = serde_json::to_value(snapshot).expect("SnapshotSync serialises");
        self.execute("blockdev-snapshot-sync", Some(args)).map(drop)
    }

    /// `transaction`: several actions (e.g. [`SnapshotSync::action`]) applied
    /// atomically: all or none.
    pub fn transaction(&self, actions: Vec<Value>) -> Result<(), QmpError> {
        self.execute("transaction", Some(json!({ "actions": actions })))
            .map(drop)
    }

    /// Takes the oldest queued event, waiting until `deadline` (forever when
    /// `None`). `Ok(None)` when the deadline passed; [`QmpError::Closed`]
    /// once the connection ended and every event was taken.
    pub fn next_event(&self, deadline: Option<Instant>) -> Result<Option<QmpEvent>, QmpError> {
        let mut inbox = self.shared.lock();
        loop {
            if let Some(ev) = inbox.events.pop_front() {
                return Ok(Some(ev));
            }
            if inbox.closed.is_some() {
                return Err(QmpError::Closed);
            }
            let (g, timed_out) = self.shared.wait(inbox, deadline);
            inbox = g;
            if timed_out && inbox.events.is_empty() {
                return Ok(None);
            }
        }
    }

    /// Takes the first queued event named `name` (leaving other events
    /// queued), waiting until `deadline`. `Ok(None)` when the deadline passed.
    pub fn wait_event(&self, name: &str, deadline: Instant) -> Result<Option<QmpEvent>, QmpError> {
        let mut inbox = self.shared.lock();
        loop {
            if let Some(pos) = inbox.events.iter().position(|e| e.event == name) {
                return Ok(inbox.events.remove(pos));
            }
            if inbox.closed.is_some() {
                return Err(QmpError::Closed);
            }
            let (g, timed_out) = self.shared.wait(inbox, Some(deadline));
            inbox = g;
            if timed_out && !inbox.events.iter().any(|e| e.event == name) {
                return Ok(None);
            }
        }
    }

    /// Takes every queued event without waiting.
    pub fn drain_events(&self) -> Vec<QmpEvent> {
        self.shared.lock().events.drain(..).collect()
    }

    /// Whether QEMU closed the connection.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed.is_some()
    }
}

impl Drop for Qmp {
    fn drop(&mut self) {
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writer.shutdown(Shutdown::Both);
        drop(writer);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// Turns a reply into its `return` value or a [`QmpError::Command`].
fn reply_value(command: &str, mut reply: Value) -> Result<Value, QmpError> {
    if let Some(ret) = reply.get_mut("return") {
        return Ok(ret.take());
    }
    let err = reply.get("error").cloned().unwrap_or(Value::Null);
    Err(QmpError::Command {
        command: command.to_owned(),
        class: err
            .get("class")
            .and_then(Value::as_str)
            .unwrap_or("GenericError")
            .to_owned(),
        desc: err
            .get("desc")
            .and_then(Value::as_str)
            .unwrap_or("(no description)")
            .to_owned(),
    })
}

/// The reader thread: sorts lines into greeting, replies and events until
/// the stream ends.
fn read_loop(stream: UnixStream, shared: &Shared) {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let why = loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => break "end of stream".to_owned(),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => break e.to_string(),
        }
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let Ok(value) = serde_json::from_str::<Value>(text) else {
            tracing::warn!(line = text, "ignoring a line from QMP that is not JSON");
            continue;
        };
        let mut inbox = shared.lock();
        if value.get("QMP").is_some() {
            inbox.greeting = Some(value);
        } else if value.get("event").is_some() {
            match serde_json::from_value::<QmpEvent>(value) {
                Ok(ev) => {
                    if inbox.events.len() >= MAX_QUEUED_EVENTS {
                        inbox.events.pop_front();
                    }
                    inbox.events.push_back(ev);
                }
                Err(e) => tracing::warn!("ignoring a malformed QMP event: {e}"),
            }
        } else if value.get("return").is_some() || value.get("error").is_some() {
            inbox.replies.push_back(value);
        } else {
            tracing::warn!(line = text, "ignoring an unknown QMP message");
            continue;
        }
        drop(inbox);
        shared.changed.notify_all();
    };
    shared.lock().closed = Some(why);
    shared.changed.notify_all();
}

/// Writes `line` with `fd` attached (`SCM_RIGHTS`) to its first byte.
fn send_with_fd(stream: &UnixStream, line: &[u8], fd: BorrowedFd<'_>) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    let fds = [fd.as_raw_fd()];
    let sent = loop {
        match sendmsg::<UnixAddr>(
            stream.as_raw_fd(),
            &[std::io::IoSlice::new(line)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        ) {
            Ok(n) => break n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    // A short send leaves the rest of the line to write plainly.
    let mut stream = stream;
    stream.write_all(&line[sent..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}"#;

    /// A scripted QMP server on one end of a socket pair: for each command it
    /// reads, `respond` returns the lines to send back.
    fn fake_server(
        respond: impl Fn(&Value) -> Vec<String> + Send + 'static,
    ) -> (UnixStream, JoinHandle<Vec<Value>>) {
        let (client, server) = UnixStream::pair().unwrap();
        let handle = std::thread::spawn(move || {
            let mut out = server.try_clone().unwrap();
            writeln!(out, "{GREETING}").unwrap();
            let mut seen = Vec::new();
            for line in BufReader::new(server).lines() {
                let Ok(line) = line else { break };
                let cmd: Value = serde_json::from_str(&line).unwrap();
                for reply in respond(&cmd) {
                    if writeln!(out, "{reply}").is_err() {
                        break;
                    }
                }
                let quit = cmd["execute"] == "quit";
                seen.push(cmd);
                if quit {
                    break;
                }
            }
            seen
        });
        (client, handle)
    }

    fn ok(cmd: &Value, ret: Value) -> String {
        json!({"return": ret, "id": cmd["id"]}).to_string()
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn handshake_then_commands_skip_and_keep_events() {
        let (client, server) = fake_server(|cmd| {
            match cmd["execute"].as_str().unwrap() {
            "qmp_capabilities" => vec![ok(cmd, json!({}))],
            "query-status" => vec![
                r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "POWERDOWN"}"#.into(),
                ok(cmd, json!({"status": "running", "singlestep": false, "running": true})),
            ],
            "system_reset" => vec![
                ok(cmd, json!({})),
                r#"{"timestamp": {"seconds": 3, "microseconds": 4}, "event": "RESET", "data": {"guest": false, "reason": "host-qmp-system-reset"}}"#.into(),
            ],
            _ => vec![ok(cmd, json!({}))],
        }
        });
        let qmp = Qmp::from_stream(client, soon()).unwrap();
        assert_eq!(qmp.greeting()["QMP"]["version"]["qemu"]["major"], 7);

        let status = qmp.query_status().unwrap();
        assert_eq!(status.status, "running");
        assert!(status.running);

        qmp.system_reset().unwrap();
        let reset = qmp.wait_event("RESET", soon()).unwrap().unwrap();
        assert_eq!(reset.guest(), Some(false));
        assert_eq!(reset.reason(), Some("host-qmp-system-reset"));

        // The POWERDOWN that came before the query-status reply is still there.
        let rest = qmp.drain_events();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].event, "POWERDOWN");
        assert_eq!(
            rest[0].timestamp,
            Some(QmpTimestamp {
                seconds: 1,
                microseconds: 2
            })
        );

        qmp.quit().unwrap();
        let seen = server.join().unwrap();
        let names: Vec<_> = seen
            .iter()
            .map(|c| c["execute"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["qmp_capabilities", "query-status", "system_reset", "quit"]
        );
        // Every command carries a distinct id.
        let mut ids: Vec<_> = seen.iter().map(|c| c["id"].as_u64().unwrap()).collect();
        ids.dedup();
        assert_eq!(ids.len(), 4);
    }

    #[test]
    fn errors_are_reported_with_class_and_description() {
        let (client, _server) = fake_server(|cmd| {
            match cmd["execute"].as_str().unwrap() {
            "qmp_capabilities" => vec![ok(cmd, json!({}))],
            _ => vec![json!({"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}, "id": cmd["id"]}).to_string()],
        }
        });
        let qmp = Qmp::from_stream(client, soon()).unwrap();
        match qmp.execute("nope", None) {
            Err(QmpError::Command {
                command,
                class,
                desc,
            }) => {
                assert_eq!(command, "nope");
                assert_eq!(class, "CommandNotFound");
                assert!(desc.contains("nope"));
            }
            other => panic!("expected a command error, got {other:?}"),
        }
    }

    #[test]
    fn arguments_are_sent_and_snapshot_args_are_kebab_case() {
        let (client, server) = fake_server(|cmd| vec![ok(cmd, json!({}))]);
        let qmp = Qmp::from_stream(client, soon()).unwrap();
        let snap = SnapshotSync {
            device: Some("root".into()),
            node_name: None,
            snapshot_file: "/tmp/over.qcow2".into(),
            snapshot_node_name: Some("root-over".into()),
            format: "qcow2".into(),
        };
        qmp.blockdev_snapshot_sync(&snap).unwrap();
        qmp.transaction(vec![snap.action()]).unwrap();
        qmp.quit().unwrap();
        let seen = server.join().unwrap();
        assert_eq!(
            seen[1]["arguments"],
            json!({"device": "root", "snapshot-file": "/tmp/over.qcow2", "snapshot-node-name": "root-over", "format": "qcow2"})
        );
        assert_eq!(seen[2]["execute"], "transaction");
        assert_eq!(
            seen[2]["arguments"]["actions"][0]["type"],
            "blockdev-snapshot-sync"
        );
    }

    #[test]
    fn a_silent_server_times_out_and_a_closed_one_says_so() {
        let (client, server) = fake_server(|cmd| match cmd["execute"].as_str().unwrap() {
            "qmp_capabilities" => vec![ok(cmd, json!({}))],
            // Never answers "slow"; answers quit by hanging up (no reply).
            _ => vec![],
        });
        let qmp = Qmp::from_stream(client, soon()).unwrap();
        match qmp.execute_with_timeout("slow", None, Duration::from_millis(100)) {
            Err(QmpError::Timeout { command, .. }) => assert_eq!(command, "slow"),
            other => panic!("expected a timeout, got {other:?}"),
        }
        // quit without a reply but with the stream closed is still success.
        qmp.quit().unwrap_or_else(|e| panic!("quit: {e}"));
        server.join().unwrap();
        assert!(matches!(
            qmp.next_event(Some(soon())),
            Err(QmpError::Closed)
        ));
        assert!(qmp.is_closed());
        assert!(matches!(qmp.query_status(), Err(QmpError::Closed)));
    }

    #[test]
    fn next_event_waits_until_its_deadline() {
        let (client, _server) = fake_server(|cmd| vec![ok(cmd, json!({}))]);
        let qmp = Qmp::from_stream(client, soon()).unwrap();
        let start = Instant::now();
        let got = qmp
            .next_event(Some(start + Duration::from_millis(100)))
            .unwrap();
        assert!(got.is_none());
        assert!(start.elapsed() >= Duration::from_millis(100));
    }

    #[test]
    fn connect_retries_until_the_socket_appears() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listen_path = path.clone();
        let server = std::thread::spawn(move || {
            // Bind only after the client has started trying.
            std::thread::sleep(Duration::from_millis(200));
            let listener = std::os::unix::net::UnixListener::bind(&listen_path).unwrap();
            let (conn, _) = listener.accept().unwrap();
            let mut out = conn.try_clone().unwrap();
            writeln!(out, "{GREETING}").unwrap();
            let mut lines = BufReader::new(conn).lines();
            let cmd: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
            writeln!(out, "{}", ok(&cmd, json!({}))).unwrap();
            // Keep the connection open until the client hangs up.
            for _ in lines {}
        });
        let qmp = Qmp::connect(&path, soon()).unwrap();
        drop(qmp);
        server.join().unwrap();
    }

    #[test]
    fn connect_gives_up_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let err = Qmp::connect(
            &dir.path().join("never.sock"),
            Instant::now() + Duration::from_millis(100),
        )
        .unwrap_err();
        assert!(matches!(err, QmpError::Connect { .. }), "{err:?}");
        let err = Qmp::connect_while(&dir.path().join("never.sock"), soon(), || false).unwrap_err();
        assert!(matches!(err, QmpError::Connect { .. }), "{err:?}");
    }
}
