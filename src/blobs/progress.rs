//! What the user sees while a fetch runs: a download bar and a conversion
//! spinner on stderr, only when it is a terminal.

use super::fetch::file_name;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{self, IsTerminal};
use std::time::Duration;
use url::Url;

/// Whether to draw a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// On stderr when it is a terminal.
    Auto,
    /// Never.
    Hidden,
}

pub(super) fn show_progress(progress: Progress) -> bool {
    progress == Progress::Auto && io::stderr().is_terminal()
}

pub(super) fn download_bar(
    url: &Url,
    total: Option<u64>,
    progress: Progress,
) -> Option<ProgressBar> {
    if !show_progress(progress) {
        return None;
    }
    let name = file_name(url);
    let bar = match total {
        Some(t) => ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        ),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec}")
                .expect("valid template"),
        ),
    };
    bar.set_message(format!("Downloading {name}"));
    Some(bar)
}

pub(super) fn conversion_spinner(format: &str, progress: Progress) -> Option<ProgressBar> {
    if !show_progress(progress) {
        return None;
    }
    let spinner = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"),
    );
    spinner.set_message(format!("Converting {format} image to qcow2"));
    spinner.enable_steady_tick(Duration::from_millis(120));
    Some(spinner)
}
