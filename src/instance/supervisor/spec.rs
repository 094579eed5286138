//! The launch spec: everything a supervisor needs to run one instance,
//! written by the service as `launch.json` before it starts the supervisor.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::SupervisorError;
use crate::paths::Paths;

fn default_stop_timeout() -> u64 {
    60
}

fn default_start_timeout() -> u64 {
    30
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
    /// The guest's place in its VPC ([`crate::network::VpcAttachment`]);
    /// its network joins the VPC's when `network` names the VPC's files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc: Option<crate::network::VpcAttachment>,
    /// Where a hibernation saves the guest ([`Paths::hibernation_state`]);
    /// none when the instance was not launched for hibernation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hibernation_state: Option<PathBuf>,
    /// Where QEMU writes that state until it is complete
    /// ([`Paths::hibernation_state_tmp`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hibernation_state_tmp: Option<PathBuf>,
    /// Resume from `hibernation_state` instead of booting: `args` start
    /// QEMU with `-incoming defer`.
    #[serde(default)]
    pub resume: bool,
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
            vpc: None,
            hibernation_state: None,
            hibernation_state_tmp: None,
            resume: false,
        }
    }

    /// Lets the guest hibernate to the instance's state file (see
    /// [`LaunchSpec::hibernation_state`]); with `resume`, start from it.
    pub fn with_hibernation(mut self, paths: &Paths, resume: bool) -> Self {
        self.hibernation_state = Some(paths.hibernation_state(&self.instance_id));
        self.hibernation_state_tmp = Some(paths.hibernation_state_tmp(&self.instance_id));
        self.resume = resume;
        self
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths::Paths;

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
