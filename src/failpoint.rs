//! Named crash points for fault-injection tests: the process dies on the spot,
//! as under `kill -9`, when the step it is at is named in `AMIRUN_FAILPOINTS`.
//!
//! Production code marks each step of an operation that changes files and
//! records with [`hit`]`("create-image:after-rename")`. Unless the variable is
//! set, a failpoint costs one environment look-up the first time and nothing
//! after. Tests set `AMIRUN_FAILPOINTS=name[,name…]` for one amirun process and
//! then check, from a fresh process, that recovery left a consistent world.
//!
//! `AMIRUN_FAILPOINTS=name=error` makes the step fail with an error instead of
//! killing the process (for "no space left"-style failures); [`hit`] then
//! returns `Err` with the failpoint's name.

use std::sync::OnceLock;

/// What a named failpoint does when reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// SIGKILL this process: no destructor, no unwinding, like `kill -9`.
    Kill,
    /// Return an error from [`hit`].
    Error,
}

fn armed() -> &'static [(String, Action)] {
    static ARMED: OnceLock<Vec<(String, Action)>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var("AMIRUN_FAILPOINTS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| match s.split_once('=') {
                Some((name, "error")) => (name.to_string(), Action::Error),
                _ => (name_of(s).to_string(), Action::Kill),
            })
            .collect()
    })
}

fn name_of(s: &str) -> &str {
    s.split_once('=').map_or(s, |(n, _)| n)
}

/// An injected failure, returned by [`hit`] for `name=error` failpoints.
#[derive(Debug, thiserror::Error)]
#[error("Injected failure at failpoint {0}")]
pub struct Injected(pub String);

/// Mark a step. Kills the process (SIGKILL) or returns [`Injected`] when the
/// step is armed in `AMIRUN_FAILPOINTS`; otherwise does nothing.
pub fn hit(name: &str) -> Result<(), Injected> {
    for (armed_name, action) in armed() {
        if armed_name == name {
            match action {
                Action::Kill => {
                    tracing::debug!("failpoint {name}: killing the process");
                    let _ = nix::sys::signal::kill(
                        nix::unistd::getpid(),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    // SIGKILL cannot be caught; should delivery be delayed, never go on.
                    std::process::abort();
                }
                Action::Error => return Err(Injected(name.to_string())),
            }
        }
    }
    Ok(())
}
