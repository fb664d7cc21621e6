//! A progress bar on long work, at a terminal only.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// A byte-counting spinner on stderr when it is a terminal; hidden
/// otherwise (scripts, CI). Counts the bytes actually applied.
pub fn bar(message: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg}: {bytes} applied, {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(message.to_string());
    bar
}
