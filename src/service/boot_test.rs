//! `boot-test`: launch an AMI, watch its serial console until it proves it
//! booted (a userspace marker, a user-given regex, or ssh answering), report
//! how long each stage took, and terminate it. What a CI job needs to know
//! whether an image boots, and why not when it does not.

use super::instances::RunInstancesRequest;
use super::{Caller, Result, Service};
use crate::domain::{Base64Blob, InstanceStateName};
use crate::machine::AccelRequest;
use regex::Regex;
use serde::Serialize;
use std::io::{Read, Seek, SeekFrom};
use std::time::{Duration, Instant};

/// What to test.
#[derive(Debug, Clone)]
pub struct BootTestInput {
    pub image_id: String,
    pub instance_type: Option<String>,
    /// Regex the console must match; default: [`USERSPACE`].
    pub expect: Option<String>,
    /// Also wait for the ssh forward to answer with an SSH banner.
    pub wait_ssh: bool,
    pub timeout: Duration,
    pub user_data: Option<Vec<u8>>,
    pub key_name: Option<String>,
    pub accel: AccelRequest,
    /// Leave the instance running.
    pub keep: bool,
}

/// Console lines that mean the kernel has started.
pub const KERNEL: &str = r"Linux version|Booting Linux|EFI stub: |\[ *[0-9]+\.[0-9]{6}\] ";
/// Console lines that mean userspace has started. (Not "Welcome to": GRUB
/// prints "Welcome to GRUB!" before any kernel runs.)
pub const USERSPACE: &str =
    r"amirun-tiny: userspace up|Run /init as init process|systemd\[1\]: |login: ";

/// Seconds from the start of the launch to each stage (absent when not reached).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Timings {
    pub launch_returned: Option<f64>,
    pub process_start: Option<f64>,
    pub firmware: Option<f64>,
    pub kernel: Option<f64>,
    pub userspace: Option<f64>,
    #[serde(rename = "Match")]
    pub matched: Option<f64>,
    pub ssh: Option<f64>,
}

/// The JSON report.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct BootTestReport {
    pub success: bool,
    pub image_id: String,
    pub instance_id: Option<String>,
    pub instance_type: Option<String>,
    pub architecture: Option<String>,
    pub accelerator: Option<String>,
    pub expect: String,
    pub matched_line: Option<String>,
    pub timings: Timings,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    pub final_state: Option<String>,
    pub console_tail: Vec<String>,
}

fn ssh_banner(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).is_ok() && &buf == b"SSH-"
}

impl Service {
    /// Run one boot test; the report says whether it passed (errors are for bad input).
    pub fn boot_test(&mut self, caller: &Caller, input: &BootTestInput) -> Result<BootTestReport> {
        let expect = input
            .expect
            .clone()
            .unwrap_or_else(|| USERSPACE.to_string());
        let expect_re = Regex::new(&expect).map_err(|e| {
            super::Error::invalid_value(format!("--expect '{expect}' is not a valid regex"))
                .with_source(e)
        })?;
        let kernel_re = Regex::new(KERNEL).expect("valid");
        let user_re = Regex::new(USERSPACE).expect("valid");
        let start = Instant::now();
        let wall = chrono::Utc::now();
        self.set_launch_accel(input.accel);
        let reservation = self.run_instances(
            caller,
            RunInstancesRequest {
                image_id: input.image_id.clone(),
                instance_type: input.instance_type.clone(),
                min_count: 1,
                max_count: 1,
                key_name: input.key_name.clone(),
                user_data: input.user_data.clone().map(Base64Blob),
                ..Default::default()
            },
        )?;
        let mut report = BootTestReport {
            success: false,
            image_id: input.image_id.clone(),
            instance_id: None,
            instance_type: None,
            architecture: None,
            accelerator: None,
            expect: expect.clone(),
            matched_line: None,
            timings: Timings {
                launch_returned: Some(start.elapsed().as_secs_f64()),
                ..Default::default()
            },
            failure_reason: None,
            final_state: None,
            console_tail: Vec::new(),
        };
        let inst = &reservation.instances[0];
        let id = inst.instance_id.clone();
        report.instance_id = Some(id.clone());
        report.instance_type = Some(inst.instance_type.clone());
        report.architecture = Some(inst.architecture.to_string());
        report.accelerator = Some(inst.amirun.accelerator.to_string());
        let ssh_port = inst
            .amirun
            .ssh_endpoint
            .as_deref()
            .and_then(|e| e.rsplit(':').next())
            .and_then(|p| p.parse::<u16>().ok());
        let log = self.paths.serial_log(&id);
        let mut text = String::new();
        let mut offset = 0u64;
        let mut last_state_check = Instant::now();
        let mut console_done = false;
        loop {
            if let Ok(mut f) = std::fs::File::open(&log) {
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                if len < offset {
                    // QEMU truncated the log (a restart): read from the top.
                    offset = 0;
                    text.clear();
                }
                if len > offset && f.seek(SeekFrom::Start(offset)).is_ok() {
                    let mut buf = Vec::new();
                    if f.read_to_end(&mut buf).is_ok() {
                        offset += buf.len() as u64;
                        text.push_str(&String::from_utf8_lossy(&buf));
                    }
                }
            }
            let t = start.elapsed().as_secs_f64();
            if report.timings.firmware.is_none() && !text.is_empty() {
                report.timings.firmware = Some(t);
            }
            if report.timings.kernel.is_none() && kernel_re.is_match(&text) {
                report.timings.kernel = Some(t);
            }
            if report.timings.userspace.is_none() && user_re.is_match(&text) {
                report.timings.userspace = Some(t);
            }
            if !console_done {
                if let Some(line) = text.lines().find(|l| expect_re.is_match(l)) {
                    report.timings.matched = Some(t);
                    report.matched_line = Some(line.trim_end().to_string());
                    console_done = true;
                }
            }
            if console_done && input.wait_ssh && report.timings.ssh.is_none() {
                if let Some(p) = ssh_port {
                    if ssh_banner(p) {
                        report.timings.ssh = Some(start.elapsed().as_secs_f64());
                    }
                }
            }
            if console_done && (!input.wait_ssh || report.timings.ssh.is_some()) {
                report.success = true;
                break;
            }
            if start.elapsed() >= input.timeout {
                report.failure_reason = Some(format!(
                    "Timed out after {} s waiting for {}",
                    input.timeout.as_secs(),
                    if console_done {
                        "ssh to answer".to_string()
                    } else {
                        format!("the console to match /{expect}/")
                    }
                ));
                break;
            }
            if last_state_check.elapsed() >= Duration::from_secs(1) {
                last_state_check = Instant::now();
                let v = self.describe_instance_json(caller, &id)?;
                let state = v["Reservations"][0]["Instances"][0]["State"]["Name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                let up = state.parse::<InstanceStateName>().is_ok_and(|s| s.is_up());
                if !up {
                    report.failure_reason = Some(format!(
                        "The instance became {state} before the console matched: {}",
                        v["Reservations"][0]["Instances"][0]["StateReason"]["Message"]
                            .as_str()
                            .unwrap_or("no reason recorded")
                    ));
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Ok(events) = crate::instance::supervisor::read_events(&self.paths.events(&id)) {
            if let Some(e) = events.iter().find(|e| {
                matches!(
                    e.event,
                    crate::instance::supervisor::Event::QemuStarted { .. }
                )
            }) {
                report.timings.process_start =
                    Some((e.ts - wall).num_milliseconds() as f64 / 1000.0);
            }
        }
        report.console_tail = text
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .map(String::from)
            .collect();
        if !input.keep {
            self.terminate_now(caller, &id)?;
        }
        let v = self.describe_instance_json(caller, &id)?;
        report.final_state = v["Reservations"][0]["Instances"][0]["State"]["Name"]
            .as_str()
            .map(String::from);
        Ok(report)
    }
}
