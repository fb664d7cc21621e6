//! A progress bar on long work, at a terminal only.

use std::io::{IsTerminal, Read};

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

/// A reader that moves a bar by the bytes read through it.
pub struct Counted<'a, R> {
    inner: R,
    bar: &'a ProgressBar,
}

impl<'a, R> Counted<'a, R> {
    pub fn new(inner: R, bar: &'a ProgressBar) -> Self {
        Counted { inner, bar }
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}
