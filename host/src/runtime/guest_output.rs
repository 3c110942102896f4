//! A plugin's stdout and stderr, forwarded line by line to the host log.
//! Without this a guest panic message would be lost: Rust prints it to
//! stderr just before the instance traps. The last panic seen is also kept,
//! so the fault the platform gets says why the plugin failed.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use crate::capabilities::log::{TARGET, within_budget};
use crate::limits::{LogBudget, MAX_LOG_LINE_BYTES};
use crate::printable::printable;
/// How much the guest may hand over per write; it never has to wait.
const WRITE_PERMIT: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One stream of one call. Clones share the same buffer: WASI hands out a
/// new stream handle each time the guest asks for stderr.
#[derive(Clone)]
pub struct GuestOutput {
    lines: Arc<Mutex<LineSink>>,
}

struct LineSink {
    plugin: Arc<str>,
    stream: Stream,
    partial: Vec<u8>,
    /// The call's, shared with its `log` import and its other stream: a
    /// chatty plugin cannot flood the log.
    budget: Arc<LogBudget>,
    panic: PanicCapture,
}

/// Recognises Rust's panic report:
/// `thread '<unnamed>' panicked at src/lib.rs:10:5:` then the message lines,
/// then `note: run with RUST_BACKTRACE=1 ...`.
#[derive(Default)]
struct PanicCapture {
    location: Option<String>,
    message: String,
    complete: bool,
}

impl PanicCapture {
    fn observe(&mut self, line: &str) {
        if let Some((_, location)) = line.split_once(" panicked at ") {
            *self = Self {
                location: Some(location.trim_end_matches(':').to_owned()),
                ..Self::default()
            };
        } else if self.location.is_some() && !self.complete {
            if line.starts_with("note:") || self.message.len() > MAX_LOG_LINE_BYTES {
                self.complete = true;
            } else if !line.trim().is_empty() {
                if !self.message.is_empty() {
                    self.message.push(' ');
                }
                self.message.push_str(line.trim());
            }
        }
    }

    fn summary(&self) -> Option<String> {
        let location = self.location.as_deref()?;
        Some(if self.message.is_empty() {
            format!("panicked at {location}")
        } else {
            format!("panicked at {location}: {}", self.message)
        })
    }
}

impl LineSink {
    fn push(&mut self, bytes: &[u8]) {
        for chunk in bytes.split_inclusive(|&b| b == b'\n') {
            match chunk.strip_suffix(b"\n") {
                Some(rest) => {
                    self.append(rest);
                    self.emit();
                }
                None => self.append(chunk),
            }
        }
    }

    fn append(&mut self, bytes: &[u8]) {
        let room = MAX_LOG_LINE_BYTES.saturating_sub(self.partial.len());
        self.partial
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn emit(&mut self) {
        let raw = std::mem::take(&mut self.partial);
        let line = String::from_utf8_lossy(&raw);
        let line = line.trim_end_matches('\r');
        if self.stream == Stream::Stderr {
            self.panic.observe(line);
        }
        if line.is_empty() || !within_budget(&self.budget, &self.plugin, line.len()) {
            return;
        }
        match self.stream {
            Stream::Stdout => {
                tracing::info!(target: TARGET, plugin = %self.plugin, stream = "stdout", "{}", printable(line))
            }
            Stream::Stderr => {
                tracing::warn!(target: TARGET, plugin = %self.plugin, stream = "stderr", "{}", printable(line))
            }
        }
    }
}

impl GuestOutput {
    pub fn new(plugin: Arc<str>, stream: Stream, budget: Arc<LogBudget>) -> Self {
        let sink = LineSink {
            plugin,
            stream,
            partial: Vec::new(),
            budget,
            panic: PanicCapture::default(),
        };
        Self {
            lines: Arc::new(Mutex::new(sink)),
        }
    }

    /// A panic can never leave the sink half-updated in a way that matters:
    /// at worst a log line is lost.
    fn sink(&self) -> std::sync::MutexGuard<'_, LineSink> {
        self.lines.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, bytes: &[u8]) {
        self.sink().push(bytes);
    }

    /// Logs an unterminated last line and returns the panic the guest
    /// reported, if it did, as `panicked at <location>: <message>`.
    pub fn finish(&self) -> Option<String> {
        let mut sink = self.sink();
        if !sink.partial.is_empty() {
            sink.emit();
        }
        sink.panic.summary()
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.push(bytes);
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::LogAdmission;

    fn budget() -> Arc<LogBudget> {
        Arc::new(LogBudget::new(1 << 20, 1000))
    }

    #[test]
    fn a_rust_panic_report_becomes_a_summary() {
        let stderr = GuestOutput::new(Arc::from("mysql"), Stream::Stderr, budget());
        stderr.push(b"starting\n\nthread '<unnamed>' panicked at src/lib.rs:10:5:\n");
        stderr.push(b"index out of bounds: the len is 0 but the index is 3\nnote: run with `RUST_BACKTRACE=1`");
        assert_eq!(
            stderr.finish().as_deref(),
            Some(
                "panicked at src/lib.rs:10:5: index out of bounds: the len is 0 but the index is 3"
            )
        );
    }

    #[test]
    fn a_panic_without_note_is_still_reported() {
        let stderr = GuestOutput::new(Arc::from("mysql"), Stream::Stderr, budget());
        stderr.push(b"thread 'main' panicked at src/a.rs:1:1:\nboom");
        assert_eq!(
            stderr.finish().as_deref(),
            Some("panicked at src/a.rs:1:1: boom")
        );
    }

    #[test]
    fn plain_output_reports_no_panic_and_long_lines_are_cut() {
        let stdout = GuestOutput::new(Arc::from("mysql"), Stream::Stdout, budget());
        stdout.push(b"thread 'x' panicked at nothing:\n");
        assert_eq!(stdout.finish(), None, "only stderr carries panics");

        let stderr = GuestOutput::new(Arc::from("mysql"), Stream::Stderr, budget());
        stderr.push(&vec![b'x'; MAX_LOG_LINE_BYTES * 2]);
        assert_eq!(stderr.sink().partial.len(), MAX_LOG_LINE_BYTES);
        assert_eq!(stderr.finish(), None);
        assert!(
            stderr.sink().partial.is_empty(),
            "finish logs the last line"
        );
    }

    #[test]
    fn output_beyond_the_budget_is_dropped() {
        let budget = Arc::new(LogBudget::new(10_000, 1000));
        let stdout = GuestOutput::new(Arc::from("mysql"), Stream::Stdout, budget.clone());
        let stderr = GuestOutput::new(Arc::from("mysql"), Stream::Stderr, budget.clone());
        let line = [b"y".repeat(1000), b"\n".to_vec()].concat();
        for _ in 0..6 {
            stdout.push(&line);
            stderr.push(&line);
        }
        assert_eq!(
            budget.admit(0),
            LogAdmission::Drop,
            "both streams draw on the call's one budget"
        );
    }
}
