//! Progress bars and logs that do not garble each other.
//!
//! Logs (`tracing`, level from `RUST_LOG`, default info) go to stderr through [`LogWriter`], which
//! hides the active progress bar while it writes a line. Bars draw on stderr only when it is a
//! terminal (indicatif hides them otherwise); then [`EpochBar`] logs a progress line every tenth of
//! an epoch instead, so a run piped to a file still shows that it is alive.

use std::io::{self, IsTerminal, Write};
use std::sync::Mutex;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// The bar being drawn, if any, for [`LogWriter`] to suspend.
static ACTIVE_BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn active_bar() -> Option<ProgressBar> {
    ACTIVE_BAR.lock().ok().and_then(|bar| bar.clone())
}

/// Writes log lines to stderr with the active progress bar hidden for the moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match active_bar() {
            Some(bar) => bar.suspend(|| io::stderr().write_all(buf))?,
            None => io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> Self::Writer {
        LogWriter
    }
}

/// Installs the global `tracing` subscriber (once; later calls do nothing).
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(LogWriter)
        .with_ansi(io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// The progress bar of one epoch; cleared when dropped.
pub struct EpochBar {
    bar: ProgressBar,
    label: String,
    len: u64,
    started: Instant,
    log_every: u64,
}

impl EpochBar {
    pub fn new(label: String, len: u64) -> Self {
        let bar = ProgressBar::new(len);
        let style = ProgressStyle::with_template("{prefix} [{bar:20}] {pos}/{len} eta {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(label.clone());
        if let Ok(mut active) = ACTIVE_BAR.lock() {
            *active = Some(bar.clone());
        }
        Self {
            bar,
            label,
            len,
            started: Instant::now(),
            log_every: (len / 10).max(1),
        }
    }

    /// Advances by one step and shows the running figures.
    pub fn step(&self, loss: f64, accuracy: f64, active: [f64; 2]) {
        self.bar.inc(1);
        let done = self.bar.position();
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        let message = format!(
            "loss {loss:.4} acc {:.1}% active {:.2}%/{:.2}% {rate:.1} steps/s",
            100.0 * accuracy,
            100.0 * active[0],
            100.0 * active[1]
        );
        if self.bar.is_hidden() {
            if done.is_multiple_of(self.log_every) && done < self.len {
                tracing::info!("{}: step {done}/{}: {message}", self.label, self.len);
            }
        } else {
            self.bar.set_message(message);
        }
    }
}

impl Drop for EpochBar {
    fn drop(&mut self) {
        if let Ok(mut active) = ACTIVE_BAR.lock() {
            *active = None;
        }
        self.bar.finish_and_clear();
    }
}
