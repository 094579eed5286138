//! The control protocol: the JSON lines a supervisor answers on its control
//! socket, and the client the service talks to it with.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ExitRecord;

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
    /// Hibernate: pause the guest, save its memory and device state to the
    /// spec's hibernation state file, then quit (see the parent module's
    /// doc). Answers `{"hibernating":true}` once under way; if the state
    /// cannot be saved, the guest is stopped the ordinary way instead.
    Hibernate,
    /// Take a live snapshot of disks inside the supervisor: pause, switch,
    /// resume whatever happens, rename (see [`crate::instance::live_snapshot`]). With
    /// no disks, a barrier for a snapshot in flight.
    LiveSnapshot(crate::instance::live_snapshot::LiveSnapshotRequest),
    /// Plug, unplug, grow or find an EBS volume's disk (see [`crate::instance::hotplug`]).
    Disk(crate::instance::hotplug::DiskRequest),
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
    pub(super) fn ok(result: Value) -> Self {
        ControlResponse {
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    pub(super) fn err(message: impl std::fmt::Display) -> Self {
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

    /// Starts a hibernation ([`ControlRequest::Hibernate`]).
    pub fn hibernate(&mut self) -> Result<(), ClientError> {
        self.request(&ControlRequest::Hibernate).map(drop)
    }

    /// Resets the machine (see the module doc on rebooting).
    pub fn reboot(&mut self) -> Result<(), ClientError> {
        self.request(&ControlRequest::Reboot).map(drop)
    }

    /// Takes a live snapshot inside the supervisor ([`crate::instance::live_snapshot`]).
    pub fn live_snapshot(
        &mut self,
        request: crate::instance::live_snapshot::LiveSnapshotRequest,
    ) -> Result<crate::instance::live_snapshot::LiveSnapshotReply, ClientError> {
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

    /// A disk operation in the supervisor ([`crate::instance::hotplug`]).
    pub fn disk(
        &mut self,
        request: crate::instance::hotplug::DiskRequest,
    ) -> Result<Value, ClientError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
