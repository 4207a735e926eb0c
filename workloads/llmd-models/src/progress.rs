//! Progress bars on stderr (indicatif), or hidden bars when progress is off.

use std::borrow::Cow;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A byte-count bar for a job of `len` bytes.
pub(crate) fn bytes(enabled: bool, len: u64, msg: impl Into<Cow<'static, str>>) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    // indicatif's stderr target draws nothing when stderr is not a terminal.
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        // wide_bar takes what the terminal has left, so the line never wraps.
        "{msg} [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(msg);
    bar
}

/// A spinner with elapsed time, for steps whose length is unknown.
pub(crate) fn spinner(enabled: bool, msg: impl Into<Cow<'static, str>>) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    bar.set_style(style);
    bar.set_message(msg);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}
