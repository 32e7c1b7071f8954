//! Running a job at one place (an executor, or the gatekeeper that relays
//! it): connect, send the job, relay output, stdin and signals, and say how
//! it ended, keeping "never started" apart from "started, then lost".

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mexec_common::connector::{AuthChannel, Connector};
use mexec_common::dial::dial_named;
use mexec_common::nodes::NodeAddr;
use mexec_proto::v1::executor_client::ExecutorClient;
use mexec_proto::v1::gatekeeper_client::GatekeeperClient;
use mexec_proto::v1::{
    run_request, run_response, Exit, JobSpec, LeaseTicket, RunRequest, RunResponse, Signal,
    StdinEof,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status, Streaming};

use crate::failed_call;
use crate::job::Job;
use crate::job_hooks::StdinSource;
use crate::os::SignalStream;
use crate::outcome::{NotStarted, Outcome};
use crate::output::{Output, Stream};

/// The same terminating signal this many times gives up on the node: the
/// connection is dropped, which kills the remote job.
const SIGNALS_BEFORE_ABANDON: u32 = 3;
pub const STDIN_CHUNK: usize = 64 * 1024;

/// Where a `Run` stream goes.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// Straight to an executor.
    Executor(&'a NodeAddr),
    /// Straight to the executor the gatekeeper leased a slot on, by name:
    /// under TLS its certificate must name that node. The ticket goes with
    /// the job: a member node runs nothing without it.
    Leased {
        addr: &'a NodeAddr,
        node: &'a str,
        ticket: Option<&'a LeaseTicket>,
    },
    /// Through the gatekeeper, which places the job and relays it.
    Relay(&'a NodeAddr),
}

impl Target<'_> {
    fn addr(&self) -> &NodeAddr {
        match self {
            Target::Executor(addr) | Target::Leased { addr, .. } | Target::Relay(addr) => addr,
        }
    }

    fn node_name(&self) -> Option<&str> {
        match self {
            Target::Leased { node, .. } => Some(node),
            Target::Executor(_) | Target::Relay(_) => None,
        }
    }

    fn ticket(&self) -> Option<LeaseTicket> {
        match self {
            Target::Leased { ticket, .. } => ticket.cloned(),
            Target::Executor(_) | Target::Relay(_) => None,
        }
    }
}

/// Runs `job` at `target`, relaying output to `output` and `signals` to it.
pub async fn run_on(
    target: Target<'_>,
    connector: &Connector,
    job: &Job,
    output: &mut Output,
    signals: &mut SignalStream,
) -> Outcome {
    let node = target.addr();
    let tls = connector.tls().is_some();
    let channel = match dial_named(connector, node, target.node_name()).await {
        Ok(channel) => channel,
        Err(cause) => return Outcome::NotStarted(NotStarted::Unreachable(cause)),
    };
    let munge_credential = match connector.credential().await {
        Ok(credential) => credential,
        Err(err) => return Outcome::NotStarted(NotStarted::Refused(err.to_string())),
    };
    let (requests, request_stream) = mpsc::channel::<RunRequest>(8);
    let start = RunRequest {
        msg: Some(run_request::Msg::Start(JobSpec {
            lease: target.ticket(),
            munge_credential,
            ..job.spec()
        })),
    };
    // Cannot fail: the receiver is alive and the channel empty.
    let _ = requests.try_send(start);
    let mut responses = match open(target, channel, request_stream).await {
        Ok(responses) => responses,
        Err(status) => {
            note_unmounted(&status, node);
            return unconfirmed(&status, node, tls).await;
        }
    };
    let mut run = RunStream {
        node,
        tls,
        forward_stdin: job.forward_stdin,
        requests,
        started_on: None,
        stdin_task: None,
        stdin_read: Arc::new(AtomicBool::new(false)),
        insistence: (0, 0),
    };
    let outcome = run.relay(&mut responses, output, signals).await;
    run.end(outcome)
}

/// Opens the `Run` stream at `target`, with the job already queued on it.
async fn open(
    target: Target<'_>,
    channel: AuthChannel,
    requests: mpsc::Receiver<RunRequest>,
) -> Result<Streaming<RunResponse>, Status> {
    let request = Request::new(ReceiverStream::new(requests));
    let opened = match target {
        Target::Executor(_) | Target::Leased { .. } => {
            ExecutorClient::new(channel).run(request).await
        }
        Target::Relay(_) => GatekeeperClient::new(channel).run(request).await,
    };
    opened.map(|response| response.into_inner())
}

/// One job's stream, from the first answer to the end.
struct RunStream<'a> {
    /// Where the stream went (the node's address, or the gatekeeper's).
    node: &'a NodeAddr,
    tls: bool,
    forward_stdin: bool,
    requests: mpsc::Sender<RunRequest>,
    /// The node's name, once it said it started the job.
    started_on: Option<String>,
    stdin_task: Option<JoinHandle<()>>,
    /// Whether any of our stdin was read for the job.
    stdin_read: Arc<AtomicBool>,
    /// The last signal forwarded and how often in a row.
    insistence: (i32, u32),
}

impl RunStream<'_> {
    /// Relays until the job ends, the stream breaks or the user insists.
    async fn relay(
        &mut self,
        responses: &mut Streaming<RunResponse>,
        output: &mut Output,
        signals: &mut SignalStream,
    ) -> Outcome {
        loop {
            let ended = tokio::select! {
                message = responses.message() => match message {
                    Ok(Some(response)) => self.take(response, output).await,
                    Ok(None) => Some(self.ended_early(
                        "the node closed the job's stream without an exit status".into(),
                    )),
                    Err(status) => Some(self.broken(&status).await),
                },
                signal = signals.next() => self.forward(signal),
            };
            if let Some(outcome) = ended {
                return outcome;
            }
        }
    }

    /// Takes one message from the node; `Some` when the job is over.
    async fn take(&mut self, response: RunResponse, output: &mut Output) -> Option<Outcome> {
        match response.msg {
            Some(run_response::Msg::Queued(_)) | None => None,
            Some(run_response::Msg::Accepted(accepted)) => {
                if self.forward_stdin {
                    let (requests, read) = (self.requests.clone(), self.stdin_read.clone());
                    let source = StdinSource::for_job();
                    self.stdin_task = Some(tokio::spawn(forward_stdin(requests, read, source)));
                }
                self.started_on = Some(accepted.node);
                None
            }
            Some(run_response::Msg::Stdout(chunk)) => {
                // Our stdout is gone (a closed pipe): so is the job's, as
                // locally; stop relaying.
                let closed = output.write(Stream::Stdout, chunk).await.is_err();
                closed.then(|| self.lost_output())
            }
            Some(run_response::Msg::Stderr(chunk)) => {
                let _ = output.write(Stream::Stderr, chunk).await;
                None
            }
            Some(run_response::Msg::Exit(exit)) => Some(Outcome::Finished {
                node: self.node_name(),
                exit,
            }),
        }
    }

    /// Passes `signal` on to the job; `Some` when we give up on it.
    fn forward(&mut self, signal: i32) -> Option<Outcome> {
        if self.started_on.is_none() {
            // Still connecting or queued: nothing runs yet, so leaving is
            // the whole of stopping.
            return Some(Outcome::Abandoned { signal });
        }
        let message = RunRequest {
            msg: Some(run_request::Msg::Signal(Signal { signo: signal })),
        };
        if self.requests.try_send(message.clone()).is_err() {
            // The request stream is full of stdin: send when it drains.
            let requests = self.requests.clone();
            tokio::spawn(async move { requests.send(message).await });
        }
        self.insistence = match self.insistence {
            (last, count) if last == signal => (signal, count + 1),
            _ => (signal, 1),
        };
        (self.insistence.1 >= SIGNALS_BEFORE_ABANDON).then_some(Outcome::Abandoned { signal })
    }

    /// The stream failed: before the start that says nothing sure, after
    /// it the node was lost.
    async fn broken(&self, status: &Status) -> Outcome {
        match &self.started_on {
            None => {
                note_unmounted(status, self.node);
                unconfirmed(status, self.node, self.tls).await
            }
            Some(_) => self.ended_early(failed_call::cause(status)),
        }
    }

    fn ended_early(&self, reason: String) -> Outcome {
        match &self.started_on {
            None => Outcome::NotStarted(NotStarted::Refused(format!(
                "node {}: {reason}",
                self.node.authority()
            ))),
            Some(name) => Outcome::Lost {
                node: name.clone(),
                reason,
                stdin_consumed: false,
            },
        }
    }

    /// Exits as a local process writing to a closed pipe would: SIGPIPE.
    fn lost_output(&self) -> Outcome {
        Outcome::Finished {
            node: self.node_name(),
            exit: Exit {
                status: Some(mexec_proto::v1::exit::Status::Signal(13)),
                ..Exit::default()
            },
        }
    }

    /// The node's name, or where we sent the job when it never said.
    fn node_name(&self) -> String {
        self.started_on
            .clone()
            .unwrap_or_else(|| self.node.authority())
    }

    /// Stops forwarding stdin, and says in a lost job's outcome whether any
    /// of it went to the job.
    fn end(self, outcome: Outcome) -> Outcome {
        if let Some(task) = self.stdin_task {
            task.abort();
        }
        match outcome {
            Outcome::Lost { node, reason, .. } => Outcome::Lost {
                node,
                reason,
                stdin_consumed: self.stdin_read.load(Ordering::Acquire),
            },
            other => other,
        }
    }
}

async fn forward_stdin(
    requests: mpsc::Sender<RunRequest>,
    read_any: Arc<AtomicBool>,
    mut stdin: StdinSource,
) {
    loop {
        let message = match stdin.next_chunk(STDIN_CHUNK).await {
            Ok(None) | Err(_) => run_request::Msg::StdinEof(StdinEof {}),
            Ok(Some(chunk)) => {
                read_any.store(true, Ordering::Release);
                run_request::Msg::Stdin(chunk)
            }
        };
        let eof = matches!(message, run_request::Msg::StdinEof(_));
        if requests
            .send(RunRequest { msg: Some(message) })
            .await
            .is_err()
            || eof
        {
            return;
        }
    }
}

/// A call that failed before the node confirmed the start
/// (`failed_call::unconfirmed`); when it looks as if something other than
/// a plain-text gRPC peer answered, what is at the address is asked: a
/// web server or a TLS port ran nothing, and the client says what it
/// reached instead of "may have run".
async fn unconfirmed(status: &Status, node: &NodeAddr, tls: bool) -> Outcome {
    let outcome = failed_call::unconfirmed(status, node, tls);
    if !failed_call::worth_probing(status, tls) {
        return outcome;
    }
    match crate::port_probe::probe(&node.authority()).await {
        Some(speaks) => Outcome::NotStarted(NotStarted::Refused(speaks.explain(&node.authority()))),
        None => outcome,
    }
}

/// A node that refused the job because the shared tree is not mounted
/// there is marked so in the shared state: this user's next clients pass
/// over it for jobs under the mark until its load report clears it.
fn note_unmounted(status: &Status, node: &NodeAddr) {
    if let Some(top) = mexec_common::unmounted::of(status) {
        let state = crate::placement::SharedState::for_this_user();
        crate::placement::Placement::mark_unmounted(&state, &node.authority(), &top);
    }
}
