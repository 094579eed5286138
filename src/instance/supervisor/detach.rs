//! Starting a supervisor as a daemon, detached from its caller.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::fcntl::OFlag;

use super::{LaunchSpec, SupervisorError, SUPERVISE_SUBCOMMAND};

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
