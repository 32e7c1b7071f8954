//! The job's output on our stdout and stderr. A job that may be retried on
//! another node holds its output back (up to a bound) until it ends, so a
//! retried compile prints the retry's output, not a mix of two attempts.

use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use crate::console_text::ConsoleText;
use crate::job_hooks::{self, Sink};
use crate::os;

/// Which of our streams a chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// How much output a repeatable job may hold back; past it the output is
/// written out and the job can no longer be retried.
pub const HOLD_LIMIT: usize = 8 * 1024 * 1024;

/// Our stdout and stderr, in streaming or holding mode.
pub struct Output {
    holding: bool,
    held: Vec<(Stream, Bytes)>,
    held_bytes: usize,
    written_any: bool,
    stdout: Sink,
    stderr: Sink,
    /// Conversions for streams that are a Windows console (else None).
    stdout_console: Option<ConsoleText>,
    stderr_console: Option<ConsoleText>,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output")
            .field("holding", &self.holding)
            .field("held_bytes", &self.held_bytes)
            .finish_non_exhaustive()
    }
}

impl Output {
    /// `hold` keeps output back until `finish`. Our stdout and stderr, or
    /// in the agent the job's `mexec`'s.
    pub fn new(hold: bool) -> Self {
        let (stdout, stderr): (Sink, Sink) = job_hooks::output_sinks()
            .unwrap_or_else(|| (Box::new(tokio::io::stdout()), Box::new(tokio::io::stderr())));
        Output {
            holding: hold,
            held: Vec::new(),
            held_bytes: 0,
            written_any: false,
            stdout,
            stderr,
            stdout_console: os::stdout_is_text_console().then(ConsoleText::default),
            stderr_console: os::stderr_is_text_console().then(ConsoleText::default),
        }
    }

    /// Takes one chunk of the job's output.
    pub async fn write(&mut self, stream: Stream, chunk: Bytes) -> std::io::Result<()> {
        if self.holding {
            self.held_bytes += chunk.len();
            self.held.push((stream, chunk));
            if self.held_bytes > HOLD_LIMIT {
                self.release().await?;
            }
            return Ok(());
        }
        self.write_now(stream, &chunk).await
    }

    /// Whether nothing reached our streams yet, so an attempt can be dropped.
    pub fn can_restart(&self) -> bool {
        !self.written_any
    }

    /// Forgets the held output of a failed attempt.
    pub fn discard(&mut self) {
        self.held.clear();
        self.held_bytes = 0;
    }

    /// Writes what is held and flushes; the job is over.
    pub async fn finish(&mut self) -> std::io::Result<()> {
        self.release().await?;
        if let Some(rest) = self.stdout_console.as_mut().map(ConsoleText::finish) {
            self.stdout.write_all(&rest).await?;
        }
        if let Some(rest) = self.stderr_console.as_mut().map(ConsoleText::finish) {
            self.stderr.write_all(&rest).await?;
        }
        self.stdout.flush().await?;
        self.stderr.flush().await
    }

    async fn release(&mut self) -> std::io::Result<()> {
        self.holding = false;
        for (stream, chunk) in std::mem::take(&mut self.held) {
            self.write_now(stream, &chunk).await?;
        }
        self.held_bytes = 0;
        Ok(())
    }

    async fn write_now(&mut self, stream: Stream, chunk: &[u8]) -> std::io::Result<()> {
        self.written_any = true;
        // Flushing each chunk keeps stdout and stderr in the order the job
        // produced them when both go to one terminal or file.
        match stream {
            Stream::Stdout => {
                match &mut self.stdout_console {
                    Some(console) => self.stdout.write_all(&console.convert(chunk)).await?,
                    None => self.stdout.write_all(chunk).await?,
                }
                self.stdout.flush().await
            }
            Stream::Stderr => {
                match &mut self.stderr_console {
                    Some(console) => self.stderr.write_all(&console.convert(chunk)).await?,
                    None => self.stderr.write_all(chunk).await?,
                }
                self.stderr.flush().await
            }
        }
    }
}
