//! Shared helpers of the integration tests: polling with deadlines (never a
//! bare sleep as synchronisation) and the QEMU argv of a firmware-only guest.

#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

/// Polls `cond` every 20 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Generous bound for anything QEMU does under TCG on a busy 2-core machine.
pub const QEMU_TIMEOUT: Duration = Duration::from_secs(60);

/// A q35 TCG machine with no disk and no OS: SeaBIOS finds nothing to boot
/// and the machine keeps running (halted in firmware) until told otherwise.
/// QMP server on `qmp`, serial console into `serial`.
pub fn firmware_only_args(qmp: &Path, serial: &Path) -> Vec<String> {
    [
        "-machine",
        "q35",
        "-accel",
        "tcg",
        "-nodefaults",
        "-display",
        "none",
        "-m",
        "64",
        "-chardev",
        &format!("socket,id=qmp,path={},server=on,wait=off", qmp.display()),
        "-mon",
        "chardev=qmp,mode=control",
        "-serial",
        &format!("file:{}", serial.display()),
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}
