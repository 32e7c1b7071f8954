//! A job's stdout and stderr: two pump tasks read the pipes in chunks into
//! the bounded response stream. When the client reads slowly, HTTP/2 flow
//! control stops tonic from taking from the stream, the pumps stop reading,
//! the pipe fills, and the job blocks in `write`: memory stays bounded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mexec_proto::v1::run_response;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, watch};

use super::{response, AbortOnDrop, Control, Outbound};

/// How many output chunks may wait for the client. With 64 KiB chunks this
/// bounds what a slow reader can make us hold to half a MiB per job.
pub const OUTPUT_QUEUE: usize = 8;
const CHUNK: usize = 64 * 1024;
/// After the job's leader exits and its group is killed, how long output
/// may still drain (a process that left the group can hold the pipe open).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// The two pumps of a job; aborted when dropped undrained.
pub struct Output {
    exited: watch::Sender<bool>,
    pumps: [AbortOnDrop; 2],
    budget: OutputBudget,
}

impl Output {
    /// Starts pumping `stdout` and `stderr` to `out`, within `limit` bytes
    /// in all; going over is reported on `over`.
    pub fn start(
        stdout: pipe::Receiver,
        stderr: pipe::Receiver,
        out: &Outbound,
        limit: Option<u64>,
        over: mpsc::UnboundedSender<Control>,
    ) -> Output {
        let (exited, exited_rx) = watch::channel(false);
        let budget = OutputBudget::new(limit, over);
        let pump = |pipe, wrap, exited| {
            AbortOnDrop(tokio::spawn(pump(
                pipe,
                out.clone(),
                wrap,
                exited,
                budget.clone(),
            )))
        };
        let pumps = [
            pump(stdout, run_response::Msg::Stdout, exited_rx.clone()),
            pump(stderr, run_response::Msg::Stderr, exited_rx),
        ];
        Output {
            exited,
            pumps,
            budget,
        }
    }

    /// The bytes the job has written so far, counted as they are read.
    pub fn written(&self) -> Arc<AtomicU64> {
        self.budget.used.clone()
    }

    /// The limit, once the job has gone over it.
    pub fn exceeded(&self) -> Option<u64> {
        self.budget.exceeded()
    }

    /// After the job has ended: the pumps finish sending what they have
    /// however slow the client is; only a pipe that stays silent for
    /// `DRAIN_AFTER_EXIT` after the exit ends them early.
    pub async fn drain(self) {
        let _ = self.exited.send(true);
        for pump in self.pumps {
            pump.join().await;
        }
    }
}

/// The output a job may still write, shared by its stdout and stderr.
#[derive(Clone)]
struct OutputBudget {
    limit: Option<u64>,
    used: Arc<AtomicU64>,
    over: mpsc::UnboundedSender<Control>,
}

impl OutputBudget {
    fn new(limit: Option<u64>, over: mpsc::UnboundedSender<Control>) -> Self {
        OutputBudget {
            limit,
            used: Arc::default(),
            over,
        }
    }

    fn exceeded(&self) -> Option<u64> {
        let limit = self.limit?;
        (self.used.load(Ordering::Relaxed) > limit).then_some(limit)
    }

    /// Counts `bytes`; false once the job is over its limit (the job is
    /// then killed and the rest of its output dropped).
    fn take(&self, bytes: usize) -> bool {
        let before = self.used.fetch_add(bytes as u64, Ordering::Relaxed);
        let Some(limit) = self.limit else {
            return true;
        };
        let within = before + bytes as u64 <= limit;
        if !within && before <= limit {
            let _ = self.over.send(Control::OutputLimit(limit));
        }
        within
    }
}

async fn pump(
    mut pipe: pipe::Receiver,
    out: Outbound,
    wrap: fn(Bytes) -> run_response::Msg,
    mut exited: watch::Receiver<bool>,
    budget: OutputBudget,
) {
    let mut buf = BytesMut::with_capacity(CHUNK);
    loop {
        buf.reserve(CHUNK);
        // Reads are cancel-safe: a read cut short by the exit loses nothing.
        let read = if *exited.borrow() {
            match tokio::time::timeout(DRAIN_AFTER_EXIT, pipe.read_buf(&mut buf)).await {
                Ok(read) => read,
                // A process that left the group holds the pipe open.
                Err(_) => return,
            }
        } else {
            tokio::select! {
                read = pipe.read_buf(&mut buf) => read,
                _ = exited.changed() => continue,
            }
        };
        match read {
            Ok(0) => return,
            Ok(_) => {
                let chunk = buf.split().freeze();
                if !budget.take(chunk.len()) {
                    return;
                }
                // A full queue waits here, which stops reading the pipe,
                // which stops the job at its next write: back-pressure.
                if out.send(Ok(response(wrap(chunk)))).await.is_err() {
                    return;
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}
