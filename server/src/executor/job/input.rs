//! The client's half of a job's stream: stdin for the job, signals for its
//! group. Stdin the job has not read yet is held here (up to
//! `STDIN_BUFFER` bytes) so that a signal sent after it is still read and
//! delivered at once; past that, reading stops and HTTP/2 flow control
//! pushes back on the client.

use std::collections::VecDeque;

use bytes::Bytes;
use mexec_proto::v1::{run_request, RunRequest};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tonic::Streaming;

use super::{AbortOnDrop, Control};
use crate::executor::pace::Pace;

/// Stdin chunks queued to the writer task.
const STDIN_QUEUE: usize = 4;
/// Stdin bytes held while the job does not read, before we stop reading the
/// client's stream (and so its signals) and let flow control push back.
const STDIN_BUFFER: usize = 4 * 1024 * 1024;

/// The tasks that read the client and feed the job; aborted when dropped.
pub struct Input {
    _reader: AbortOnDrop,
    _writer: Option<AbortOnDrop>,
}

impl Input {
    /// Starts reading `inbound`, paced to `rate` stdin bytes per second:
    /// stdin goes to the job's `stdin` pipe (when it has one), signals and
    /// a broken stream to `control`.
    pub fn start(
        inbound: Streaming<RunRequest>,
        stdin: Option<pipe::Sender>,
        control: mpsc::UnboundedSender<Control>,
        rate: Option<u64>,
    ) -> Input {
        let (stdin_tx, stdin_rx) = mpsc::channel(STDIN_QUEUE);
        let writer = stdin.map(|stdin| AbortOnDrop(tokio::spawn(write_stdin(stdin, stdin_rx))));
        let reader = tokio::spawn(read_inbound(inbound, stdin_tx, control, rate));
        Input {
            _reader: AbortOnDrop(reader),
            _writer: writer,
        }
    }
}

async fn write_stdin(mut stdin: pipe::Sender, mut chunks: mpsc::Receiver<Bytes>) {
    while let Some(chunk) = chunks.recv().await {
        // A job that closed its stdin wants no more; drop the rest.
        if stdin.write_all(&chunk).await.is_err() {
            return;
        }
    }
}

/// Stdin read from the client and not yet taken by the writer.
struct HeldStdin {
    /// `None` once the job's stdin is closed (end of input, or the job
    /// closed it).
    writer: Option<mpsc::Sender<Bytes>>,
    pending: VecDeque<Bytes>,
    bytes: usize,
    eof: bool,
}

impl HeldStdin {
    fn new(writer: mpsc::Sender<Bytes>) -> HeldStdin {
        HeldStdin {
            writer: Some(writer),
            pending: VecDeque::new(),
            bytes: 0,
            eof: false,
        }
    }

    /// Whether more of the client's stream may be read now.
    fn has_room(&self) -> bool {
        self.bytes < STDIN_BUFFER
    }

    /// Holds a chunk for the job, unless its stdin is closed or ended.
    fn push(&mut self, chunk: Bytes) {
        if self.writer.is_some() && !self.eof {
            self.bytes += chunk.len();
            self.pending.push_back(chunk);
        }
    }

    /// Marks the end of stdin; the job's stdin closes once it has all.
    fn end(&mut self) {
        self.eof = true;
        self.close_if_done();
    }

    fn close_if_done(&mut self) {
        if self.eof && self.pending.is_empty() {
            // Dropping the sender closes the job's stdin.
            self.writer = None;
        }
    }

    /// Whether the job's stdin has been closed.
    fn is_closed(&self) -> bool {
        self.writer.is_none()
    }

    /// Hands the oldest held chunk to the writer when it has room; never
    /// resolves while nothing is held.
    async fn feed(&mut self) {
        let Some(writer) = self.writer.clone().filter(|_| !self.pending.is_empty()) else {
            return std::future::pending().await;
        };
        match writer.reserve_owned().await {
            Ok(permit) => {
                let chunk = self.pending.pop_front().unwrap_or_default();
                self.bytes -= chunk.len();
                permit.send(chunk);
                self.close_if_done();
            }
            // The job closed its stdin: the rest is dropped.
            Err(_) => {
                self.writer = None;
                self.pending.clear();
                self.bytes = 0;
            }
        }
    }
}

/// Reads the client's half of the stream until it ends and the job has all
/// its stdin, or until it breaks (then the supervisor kills the job).
async fn read_inbound(
    mut inbound: Streaming<RunRequest>,
    stdin: mpsc::Sender<Bytes>,
    control: mpsc::UnboundedSender<Control>,
    rate: Option<u64>,
) {
    let mut pace = rate.map(Pace::new);
    let mut held = HeldStdin::new(stdin);
    let mut client_open = true;
    while client_open || !held.is_closed() {
        let message = tokio::select! {
            () = held.feed() => continue,
            message = inbound.message(), if client_open && held.has_room() => message,
        };
        if let (Some(pace), Ok(Some(message))) = (pace.as_mut(), &message) {
            let stdin_bytes = match &message.msg {
                Some(run_request::Msg::Stdin(chunk)) => chunk.len(),
                _ => 0,
            };
            pace.wait(stdin_bytes).await;
        }
        match message {
            Ok(Some(RunRequest { msg: Some(msg) })) => handle(msg, &mut held, &control),
            Ok(Some(RunRequest { msg: None })) => {}
            // The client half-closed its side: no more stdin, job goes on.
            Ok(None) => {
                held.end();
                client_open = false;
            }
            Err(_) => {
                let _ = control.send(Control::ClientGone);
                return;
            }
        }
    }
}

fn handle(msg: run_request::Msg, held: &mut HeldStdin, control: &mpsc::UnboundedSender<Control>) {
    match msg {
        run_request::Msg::Stdin(chunk) => held.push(chunk),
        run_request::Msg::StdinEof(_) => held.end(),
        run_request::Msg::Signal(signal) => {
            let _ = control.send(Control::Signal(signal.signo));
        }
        run_request::Msg::Start(_) => {
            tracing::debug!("ignoring a second job spec on one Run stream")
        }
    }
}
