//! The supervisor as the service will use it: started detached, driven over
//! its control socket and by signals, watched through `probe` and the event
//! log. Most tests run a real QEMU (x86_64 q35, TCG, no OS); the exit reasons
//! that need a cooperating guest OS use a fake QEMU that speaks QMP.
//!
//! Until the CLI has its hidden `__supervise` subcommand, this test binary
//! plays amirun: [`spawn_detached`] runs `<this binary> __supervise
//! <launch.json>`, libtest treats both words as name filters, and only
//! `entry__supervise` matches; it calls [`supervisor::run`]. The same trick
//! gives `entry__fake_qemu` and `entry__spawn`.

#![allow(non_snake_case)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use amirun::ids::{new_id, IdKind};
use amirun::instance::supervisor::{
    self, probe, read_events, spawn_detached, ClientError, Event, EventRecord, ExitReason,
    ExitRecord, ExitStatusRecord, LaunchSpec, LiveState, SupervisorClient, SupervisorError,
    SUPERVISE_SUBCOMMAND,
};
use amirun::paths::Paths;
use common::{wait_until, QEMU_TIMEOUT};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

/// Not a test: the supervisor entry point of this binary re-executed as
/// `<exe> __supervise <launch.json>`. As a plain test it does nothing.
#[test]
fn entry__supervise() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some(SUPERVISE_SUBCOMMAND) {
        return;
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let code = match supervisor::run(Path::new(&args[2])) {
        Ok(_) => 0,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "supervisor: {e}");
            1
        }
    };
    std::process::exit(code);
}

/// Not a test: a caller that starts a supervisor and exits at once, like the
/// CLI's `run-instances` will (`<exe> __spawn <launch.json>`).
#[test]
fn entry__spawn() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some("__spawn") {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let code = match spawn_detached(&exe, Path::new(&args[2])) {
        Ok(_) => 0,
        Err(_) => 1,
    };
    std::process::exit(code);
}

/// Not a test: a fake QEMU (`<exe> __fake_qemu <qmp.sock>`) that plays a
/// guest OS which obeys the ACPI power button, and can be told over QMP to
/// reboot (`x-guest-reboot`) or power off (`x-guest-poweroff`) by itself, or
/// to crash (`x-crash`).
#[test]
fn entry__fake_qemu() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some("__fake_qemu") {
        return;
    }
    let listener = UnixListener::bind(&args[2]).unwrap();
    let (conn, _) = listener.accept().unwrap();
    let mut out = conn.try_clone().unwrap();
    let mut send = |v: Value| writeln!(out, "{v}").unwrap();
    let event = |name: &str, data: Value| json!({"timestamp": {"seconds": 0, "microseconds": 0}, "event": name, "data": data});
    send(
        json!({"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}}, "capabilities": []}}),
    );
    for line in BufReader::new(conn).lines() {
        let cmd: Value = serde_json::from_str(&line.unwrap()).unwrap();
        let ok = |ret: Value| json!({"return": ret, "id": cmd["id"]});
        match cmd["execute"].as_str().unwrap() {
            "query-status" => send(ok(json!({"status": "running", "running": true}))),
            "system_powerdown" => {
                send(ok(json!({})));
                send(event("POWERDOWN", json!({})));
                send(event(
                    "SHUTDOWN",
                    json!({"guest": true, "reason": "guest-shutdown"}),
                ));
                std::process::exit(0);
            }
            "x-guest-poweroff" => {
                send(ok(json!({})));
                send(event(
                    "SHUTDOWN",
                    json!({"guest": true, "reason": "guest-shutdown"}),
                ));
                std::process::exit(0);
            }
            "x-guest-reboot" => {
                send(ok(json!({})));
                send(event(
                    "RESET",
                    json!({"guest": true, "reason": "guest-reset"}),
                ));
            }
            "x-crash" => {
                send(ok(json!({})));
                std::process::abort();
            }
            "quit" => {
                send(ok(json!({})));
                send(event(
                    "SHUTDOWN",
                    json!({"guest": false, "reason": "host-qmp-quit"}),
                ));
                std::process::exit(0);
            }
            _ => send(ok(json!({}))),
        }
    }
    std::process::exit(0);
}

/// One instance's state dir, id and supervisor; kills what is left on drop.
struct Instance {
    _dir: tempfile::TempDir,
    paths: Paths,
    id: String,
}

impl Instance {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path(), dir.path().join("run"));
        let id = new_id(IdKind::Instance);
        std::fs::create_dir_all(paths.instance_dir(&id)).unwrap();
        Instance {
            _dir: dir,
            paths,
            id,
        }
    }

    /// A spec for a real firmware-only QEMU.
    fn qemu_spec(&self, stop_timeout_secs: u64) -> LaunchSpec {
        let args = common::firmware_only_args(
            &self.paths.qmp_socket(&self.id),
            &self.paths.serial_log(&self.id),
        );
        let mut spec = LaunchSpec::new(&self.paths, &self.id, "qemu-system-x86_64".into(), args);
        spec.stop_timeout_secs = stop_timeout_secs;
        spec
    }

    /// A spec for the fake QEMU above.
    fn fake_spec(&self) -> LaunchSpec {
        let qmp = self.paths.qmp_socket(&self.id);
        LaunchSpec::new(
            &self.paths,
            &self.id,
            std::env::current_exe().unwrap(),
            vec!["__fake_qemu".into(), qmp.display().to_string()],
        )
    }

    fn write_spec(&self, spec: &LaunchSpec) -> PathBuf {
        let path = self.paths.launch_spec(&self.id);
        spec.write(&path).unwrap();
        path
    }

    /// Starts a detached supervisor and waits until the guest runs.
    fn start(&self, spec: &LaunchSpec) -> u32 {
        let exe = std::env::current_exe().unwrap();
        let pid = spawn_detached(&exe, &self.write_spec(spec)).unwrap();
        self.wait_event("guest-running");
        assert_eq!(self.probe().supervisor_pid, Some(pid));
        pid
    }

    fn probe(&self) -> LiveState {
        probe(&self.paths, &self.id)
    }

    fn events(&self) -> Vec<EventRecord> {
        read_events(&self.paths.events(&self.id)).unwrap()
    }

    fn event_names(&self) -> Vec<String> {
        self.events().iter().map(name).collect()
    }

    /// Polls the event log until an event named `event` is there.
    fn wait_event(&self, event: &str) -> EventRecord {
        let mut found = None;
        wait_until(&format!("event {event}"), QEMU_TIMEOUT, || {
            found = self.events().into_iter().find(|r| name(r) == event);
            found.is_some()
        });
        found.unwrap()
    }

    /// Polls until the supervisor is gone and returns the exit record.
    fn wait_exit(&self) -> ExitRecord {
        let mut live = LiveState::default();
        wait_until("the supervisor to exit", QEMU_TIMEOUT, || {
            live = self.probe();
            !live.supervisor_alive && live.last_exit.is_some()
        });
        assert!(!live.qemu_alive);
        live.last_exit.unwrap()
    }

    fn client(&self) -> SupervisorClient {
        SupervisorClient::connect(&self.paths.control_socket(&self.id)).unwrap()
    }

    fn qemu_pid(&self) -> u32 {
        self.probe().qemu_pid.expect("a qemu-started record")
    }

    /// The supervisor removed its pid file and control socket.
    fn assert_cleaned_up(&self) {
        assert!(!self.paths.supervisor_pid(&self.id).exists());
        assert!(!self.paths.control_socket(&self.id).exists());
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let live = self.probe();
        for (alive, pid) in [
            (live.supervisor_alive, live.supervisor_pid),
            (live.qemu_alive, live.qemu_pid),
        ] {
            if let (true, Some(pid)) = (alive, pid) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }
}

fn name(record: &EventRecord) -> String {
    serde_json::to_value(record).unwrap()["event"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn pid_gone(pid: u32) -> bool {
    // Gone, or a zombie nobody reaped yet.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat[stat.rfind(')').unwrap() + 1..]
            .trim_start()
            .starts_with('Z'),
    }
}

#[test]
fn real_guest_starts_answers_control_and_stops_by_force() {
    let inst = Instance::new();
    let sup_pid = inst.start(&inst.qemu_spec(60));

    let names = inst.event_names();
    assert_eq!(
        &names[..3],
        ["supervisor-started", "qemu-started", "guest-running"]
    );
    let live = inst.probe();
    assert!(live.supervisor_alive && live.qemu_alive, "{live:?}");
    assert_eq!(live.last_exit, None);
    let qemu_pid = live.qemu_pid.unwrap();

    let mut client = inst.client();
    let status = client.status().unwrap();
    assert_eq!(status.instance_id, inst.id);
    assert_eq!(status.supervisor_pid, sup_pid);
    assert_eq!(status.qemu_pid, Some(qemu_pid));
    assert_eq!(status.qmp_status.as_deref(), Some("running"));
    assert!(!status.stopping);
    assert!(status.uptime_secs > 0.0);

    // QMP passthrough, and its errors.
    let blocks = client.qmp("query-status", None).unwrap();
    assert_eq!(blocks["status"], "running");
    match client.qmp("no-such-command", None) {
        Err(ClientError::Refused(msg)) => assert!(msg.contains("CommandNotFound"), "{msg}"),
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Reboot is a reset the event log records; QEMU keeps running.
    client.reboot().unwrap();
    let reset = inst.wait_event("reset");
    assert_eq!(
        reset.event,
        Event::Reset {
            guest: false,
            reason: Some("host-qmp-system-reset".into())
        }
    );
    assert!(inst.probe().qemu_alive);

    let exit = client.stop_and_wait(true).unwrap();
    assert_eq!(exit.reason, ExitReason::Forced);
    assert_eq!(exit.qemu_pid, Some(qemu_pid));
    assert_eq!(exit.exit_status, Some(ExitStatusRecord::Code(0)));
    assert_eq!(exit.shutdown_reason.as_deref(), Some("host-qmp-quit"));
    assert_eq!(inst.wait_exit(), exit);
    inst.assert_cleaned_up();
    assert!(pid_gone(qemu_pid));

    let names = inst.event_names();
    assert_eq!(names.iter().filter(|n| *n == "exited").count(), 1);
    assert_eq!(names.last().unwrap(), "exited");
    assert!(names.contains(&"stop-requested".to_owned()));
}

#[test]
fn graceful_stop_of_a_guest_without_an_os_is_forced_after_the_timeout() {
    let inst = Instance::new();
    inst.start(&inst.qemu_spec(2));
    let started = Instant::now();
    let exit = inst.client().stop_and_wait(false).unwrap();
    // Firmware ignores the power button: quit came after the grace period.
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(exit.reason, ExitReason::Forced);
    assert_eq!(exit.shutdown_reason.as_deref(), Some("host-qmp-quit"));
    assert_eq!(inst.wait_exit(), exit);
    inst.assert_cleaned_up();
    let stop = inst.wait_event("stop-requested");
    assert_eq!(
        stop.event,
        Event::StopRequested {
            force: false,
            by: "control".into()
        }
    );
}

#[test]
fn sigterm_to_the_supervisor_is_a_graceful_stop() {
    let inst = Instance::new();
    let sup_pid = inst.start(&inst.qemu_spec(2));
    let mut client = inst.client();
    kill(Pid::from_raw(sup_pid as i32), Signal::SIGTERM).unwrap();
    let stop = inst.wait_event("stop-requested");
    assert_eq!(
        stop.event,
        Event::StopRequested {
            force: false,
            by: "signal".into()
        }
    );
    // Still answering while it waits for the guest.
    assert!(client.status().unwrap().stopping);
    assert_eq!(inst.wait_exit().reason, ExitReason::Forced);
    inst.assert_cleaned_up();
}

#[test]
fn qemu_killed_with_sigkill_is_recorded_and_the_supervisor_exits() {
    let inst = Instance::new();
    inst.start(&inst.qemu_spec(60));
    let qemu_pid = inst.qemu_pid();
    kill(Pid::from_raw(qemu_pid as i32), Signal::SIGKILL).unwrap();
    let exit = inst.wait_exit();
    assert_eq!(exit.reason, ExitReason::QemuKilled);
    assert_eq!(exit.exit_status, Some(ExitStatusRecord::Signal(9)));
    assert_eq!(exit.qemu_pid, Some(qemu_pid));
    inst.assert_cleaned_up();
    let live = inst.probe();
    assert!(!live.supervisor_alive && !live.qemu_alive);
}

#[test]
fn supervisor_killed_with_sigkill_takes_qemu_down() {
    let inst = Instance::new();
    let sup_pid = inst.start(&inst.qemu_spec(60));
    let qemu_pid = inst.qemu_pid();
    kill(Pid::from_raw(sup_pid as i32), Signal::SIGKILL).unwrap();
    // Both go: the supervisor (a zombie or gone) and QEMU with it.
    wait_until("QEMU to die with its supervisor", QEMU_TIMEOUT, || {
        pid_gone(qemu_pid) && !inst.probe().supervisor_alive
    });
    let live = inst.probe();
    assert!(!live.supervisor_alive, "{live:?}");
    assert!(!live.qemu_alive, "{live:?}");
    assert_eq!(
        live.last_exit, None,
        "nobody was left to write an exit record"
    );
    // The stale pid file is still there; probe saw through it.
    assert_eq!(live.supervisor_pid, Some(sup_pid));
}

#[test]
fn the_launching_process_can_exit_while_the_instance_runs() {
    let inst = Instance::new();
    let spec_path = inst.write_spec(&inst.qemu_spec(60));
    let launcher = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("__spawn")
        .arg(&spec_path)
        .output()
        .unwrap();
    assert!(launcher.status.success(), "{launcher:?}");
    inst.wait_event("guest-running");
    let live = inst.probe();
    assert!(live.supervisor_alive && live.qemu_alive, "{live:?}");

    // Detached: another session than ours (a double fork leaves it in the
    // session its short-lived parent made), and not our child.
    let sup = Pid::from_raw(live.supervisor_pid.unwrap() as i32);
    assert_ne!(
        nix::unistd::getsid(Some(sup)).unwrap(),
        nix::unistd::getsid(None).unwrap()
    );
    let stat = std::fs::read_to_string(format!("/proc/{sup}/stat")).unwrap();
    let ppid: u32 = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(ppid, std::process::id());

    // A second supervisor for the same instance is refused.
    match supervisor::run(&spec_path) {
        Err(SupervisorError::AlreadyRunning { instance_id, pid }) => {
            assert_eq!(instance_id, inst.id);
            assert_eq!(pid, sup.to_string());
        }
        other => panic!("expected AlreadyRunning, got {other:?}"),
    }
    assert!(inst.probe().supervisor_alive);

    inst.client().stop(true).unwrap();
    assert_eq!(inst.wait_exit().reason, ExitReason::Forced);
    // The supervisor's log has QEMU's and its own output.
    let log = std::fs::read_to_string(inst.paths.supervisor_log(&inst.id)).unwrap();
    assert!(log.contains("QEMU started"), "{log}");
}

#[test]
fn a_guest_that_obeys_the_power_button_is_a_requested_stop() {
    let inst = Instance::new();
    inst.start(&inst.fake_spec());
    let exit = inst.client().stop_and_wait(false).unwrap();
    assert_eq!(exit.reason, ExitReason::StopRequested);
    assert_eq!(exit.shutdown_reason.as_deref(), Some("guest-shutdown"));
    assert_eq!(exit.exit_status, Some(ExitStatusRecord::Code(0)));
    // The answer comes after the cleanup, so a restart can follow at once.
    inst.assert_cleaned_up();
    assert_eq!(inst.wait_exit(), exit);
}

#[test]
fn a_guest_that_reboots_and_powers_off_by_itself_is_a_guest_shutdown() {
    let inst = Instance::new();
    inst.start(&inst.fake_spec());
    let mut client = inst.client();
    client.qmp("x-guest-reboot", None).unwrap();
    let reset = inst.wait_event("reset");
    assert_eq!(
        reset.event,
        Event::Reset {
            guest: true,
            reason: Some("guest-reset".into())
        }
    );
    client.qmp("x-guest-poweroff", None).unwrap();
    let exit = inst.wait_exit();
    assert_eq!(exit.reason, ExitReason::GuestShutdown);
    assert_eq!(exit.shutdown_reason.as_deref(), Some("guest-shutdown"));
    inst.assert_cleaned_up();
    assert!(!inst.event_names().contains(&"stop-requested".to_owned()));
}

#[test]
fn a_qemu_that_aborts_is_a_crash() {
    let inst = Instance::new();
    inst.start(&inst.fake_spec());
    inst.client().qmp("x-crash", None).unwrap();
    let exit = inst.wait_exit();
    assert_eq!(exit.reason, ExitReason::QemuCrashed);
    assert_eq!(
        exit.exit_status,
        Some(ExitStatusRecord::Signal(Signal::SIGABRT as i32))
    );
}

#[test]
fn a_missing_qemu_binary_is_a_failed_start() {
    let inst = Instance::new();
    let mut spec = inst.qemu_spec(60);
    spec.program = "/nonexistent/qemu-system-x86_64".into();
    let exe = std::env::current_exe().unwrap();
    spawn_detached(&exe, &inst.write_spec(&spec)).unwrap();
    let exit = inst.wait_exit();
    assert_eq!(exit.reason, ExitReason::StartFailed);
    assert_eq!(exit.qemu_pid, None);
    assert!(exit.detail.unwrap().contains("/nonexistent"));
    assert_eq!(
        inst.event_names(),
        ["supervisor-started", "exited"],
        "no qemu-started for a QEMU that never ran"
    );
}

#[test]
fn a_qemu_that_exits_before_qmp_answers_is_a_failed_start() {
    let inst = Instance::new();
    let mut spec = inst.qemu_spec(60);
    spec.args.push("-no-such-option".into());
    let exe = std::env::current_exe().unwrap();
    spawn_detached(&exe, &inst.write_spec(&spec)).unwrap();
    let exit = inst.wait_exit();
    assert_eq!(exit.reason, ExitReason::StartFailed);
    assert_eq!(exit.exit_status, Some(ExitStatusRecord::Code(1)));
    let log = std::fs::read_to_string(inst.paths.supervisor_log(&inst.id)).unwrap();
    assert!(
        log.contains("no-such-option"),
        "QEMU's stderr is in the log: {log}"
    );
}
