//! Running a job on one node: connect, send the job, relay output, stdin
//! and signals, and say how it ended. Whether the job *started* decides what
//! the driver may do next, so the outcome keeps the two apart.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use mexec_common::nodes::NodeAddr;
use mexec_common::tls::Tls;
use mexec_common::token::Token;
use mexec_proto::v1::executor_client::ExecutorClient;
use mexec_proto::v1::gatekeeper_client::GatekeeperClient;
use mexec_proto::v1::{
    run_request, run_response, Exit, LoadReport, RunRequest, Signal, StatusRequest, StdinEof,
};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::job::Job;
use crate::os::SignalStream;
use crate::output::{Output, Stream};

/// How long a connection attempt may take before the node counts as down.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 pings on a running job's connection, so a node that goes
/// silent without closing it (cut off, frozen, powered off) is noticed
/// within interval + timeout: 6 s (docs/architecture.md lists the bounds).
/// The pings are answered by the node's HTTP/2 layer, not by the job, so
/// a long quiet compile does not count as silence.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(4);
/// The same terminating signal this many times gives up on the node: the
/// connection is dropped, which kills the remote job.
const SIGNALS_BEFORE_ABANDON: u32 = 3;
const STDIN_CHUNK: usize = 64 * 1024;

/// Why a node did not start the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotStarted {
    /// Every slot and queue place is taken: wait and ask again.
    Busy(String),
    /// No connection (refused, timed out, reset).
    Unreachable(String),
    /// The node answered no (draining, cwd missing, bad token...).
    Refused(String),
}

/// How an attempt on one node ended.
#[derive(Debug)]
pub enum Outcome {
    /// The job ran and ended; `exit` is its status.
    Finished { node: String, exit: Exit },
    /// The job never started there.
    NotStarted(NotStarted),
    /// The job started, then the node or the connection was lost.
    /// `stdin_consumed` says whether any of our stdin went to it, which
    /// could not be sent again.
    Lost {
        node: String,
        reason: String,
        stdin_consumed: bool,
    },
    /// The user insisted with signals; the job was abandoned.
    Abandoned { signal: i32 },
}

/// The TLS set-up every channel of this process uses, once configured.
/// Channels are opened in many places (placement, leases, status, runs);
/// like the cluster's CA, the identity is one per process.
static TLS: OnceLock<Tls> = OnceLock::new();

/// Makes every later channel use mutual TLS with `tls` (the first call wins).
pub fn use_tls(tls: Tls) {
    let _ = TLS.set(tls);
}

/// Opens a channel to `node`.
pub async fn connect(node: &NodeAddr) -> Result<Channel, String> {
    let endpoint = mexec_common::tls::endpoint(&node.authority(), TLS.get())
        .map_err(|e| format!("bad address: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(err)) => {
            let mut cause = transport_cause(&err);
            cause.push_str(tls_hint(&cause));
            Err(cause)
        }
        Err(_) => Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
    }
}

/// Asks `node` for its load.
pub async fn load_report(node: &NodeAddr, token: Option<&Token>) -> Result<LoadReport, String> {
    let channel = connect(node).await?;
    let mut request = Request::new(StatusRequest {});
    request.set_timeout(CONNECT_TIMEOUT);
    if let Some(token) = token {
        token.attach(request.metadata_mut());
    }
    ExecutorClient::new(channel)
        .status(request)
        .await
        .map(|r| r.into_inner())
        .map_err(|s| s.message().to_owned())
}

/// Where a `Run` stream goes.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// Straight to an executor.
    Executor(&'a NodeAddr),
    /// Through the gatekeeper, which places the job and relays it.
    Relay(&'a NodeAddr),
}

impl Target<'_> {
    fn addr(&self) -> &NodeAddr {
        match self {
            Target::Executor(addr) | Target::Relay(addr) => addr,
        }
    }
}

/// Runs `job` at `target`, relaying output to `output` and `signals` to it.
pub async fn run_on(
    target: Target<'_>,
    token: Option<&Token>,
    job: &Job,
    output: &mut Output,
    signals: &mut SignalStream,
) -> Outcome {
    let node = target.addr();
    let channel = match connect(node).await {
        Ok(channel) => channel,
        Err(cause) => return Outcome::NotStarted(NotStarted::Unreachable(cause)),
    };
    let (requests, request_stream) = mpsc::channel::<RunRequest>(8);
    let start = RunRequest {
        msg: Some(run_request::Msg::Start(job.spec())),
    };
    // Cannot fail: the receiver is alive and the channel empty.
    let _ = requests.try_send(start);
    let mut request = Request::new(ReceiverStream::new(request_stream));
    if let Some(token) = token {
        token.attach(request.metadata_mut());
    }
    let opened = match target {
        Target::Executor(_) => ExecutorClient::new(channel).run(request).await,
        Target::Relay(_) => GatekeeperClient::new(channel).run(request).await,
    };
    let mut responses = match opened {
        Ok(response) => response.into_inner(),
        Err(status) => return unconfirmed(&status, node),
    };

    let mut started_on: Option<String> = None;
    let mut stdin_task = None;
    let stdin_read = Arc::new(AtomicBool::new(false));
    let mut insistence = (0, 0);
    let outcome = loop {
        tokio::select! {
            message = responses.message() => match message {
                Ok(Some(response)) => match response.msg {
                    Some(run_response::Msg::Queued(_)) | None => {}
                    Some(run_response::Msg::Accepted(accepted)) => {
                        if job.forward_stdin {
                            stdin_task = Some(tokio::spawn(forward_stdin(
                                requests.clone(),
                                stdin_read.clone(),
                            )));
                        }
                        started_on = Some(accepted.node);
                    }
                    Some(run_response::Msg::Stdout(chunk)) => {
                        if output.write(Stream::Stdout, chunk).await.is_err() {
                            // Our stdout is gone (a closed pipe): so is the
                            // job's, as locally; stop relaying.
                            break lost_output(&started_on, node);
                        }
                    }
                    Some(run_response::Msg::Stderr(chunk)) => {
                        let _ = output.write(Stream::Stderr, chunk).await;
                    }
                    Some(run_response::Msg::Exit(exit)) => {
                        let node = started_on.clone().unwrap_or_else(|| node.authority());
                        break Outcome::Finished { node, exit };
                    }
                },
                Ok(None) => break ended_early(&started_on, node, "the node closed the job's stream without an exit status".into()),
                Err(status) => match &started_on {
                    None => break unconfirmed(&status, node),
                    Some(_) => break ended_early(&started_on, node, status_cause(&status)),
                },
            },
            signal = signals.next() => {
                if started_on.is_none() {
                    // Still connecting or queued: nothing runs yet, so
                    // leaving is the whole of stopping.
                    break Outcome::Abandoned { signal };
                }
                let message = RunRequest { msg: Some(run_request::Msg::Signal(Signal { signo: signal })) };
                if requests.try_send(message.clone()).is_err() {
                    // The request stream is full of stdin: send when it drains.
                    let requests = requests.clone();
                    tokio::spawn(async move { requests.send(message).await });
                }
                insistence = if insistence.0 == signal { (signal, insistence.1 + 1) } else { (signal, 1) };
                if insistence.1 >= SIGNALS_BEFORE_ABANDON {
                    break Outcome::Abandoned { signal };
                }
            }
        }
    };
    if let Some(task) = stdin_task {
        task.abort();
    }
    match outcome {
        Outcome::Lost { node, reason, .. } => Outcome::Lost {
            node,
            reason,
            stdin_consumed: stdin_read.load(Ordering::Acquire),
        },
        other => other,
    }
}

/// Whether `status` is an answer the peer chose to give (busy, draining,
/// refused, not allowed) rather than a connection that broke (the peer
/// killed, restarting, unreachable mid-stream).
pub fn answered(status: &tonic::Status) -> bool {
    match status.code() {
        Code::Unavailable => status.message().contains("draining"),
        Code::Unknown | Code::Cancelled | Code::Internal | Code::DeadlineExceeded => false,
        _ => true,
    }
}

/// The stream failed after the job was sent and before the node said it
/// started it. An answer the node chose to give (busy, draining, cwd
/// missing, not allowed) means it did not; a broken connection leaves it
/// unknown, because the node may have started the job and died before its
/// `Accepted` arrived. Unknown counts as lost, so a job that is not safe
/// to repeat is never run twice.
fn unconfirmed(status: &tonic::Status, node: &NodeAddr) -> Outcome {
    if answered(status) {
        return Outcome::NotStarted(classify(status));
    }
    let cause = status_cause(status);
    // A TLS alert (our certificate refused after a TLS 1.3 handshake that
    // looked done to us) comes before any request reaches the node.
    if tls_refusal(&cause) {
        let hint = tls_hint(&cause);
        return Outcome::NotStarted(NotStarted::Refused(format!("{cause}{hint}")));
    }
    Outcome::Lost {
        node: node.authority(),
        reason: format!(
            "{cause}{} (before the node confirmed the start, so the job may have run)",
            tls_hint(&cause)
        ),
        stdin_consumed: false,
    }
}

fn ended_early(started_on: &Option<String>, node: &NodeAddr, reason: String) -> Outcome {
    match started_on {
        None => Outcome::NotStarted(NotStarted::Refused(format!(
            "node {}: {reason}",
            node.authority()
        ))),
        Some(name) => Outcome::Lost {
            node: name.clone(),
            reason,
            stdin_consumed: false,
        },
    }
}

fn lost_output(started_on: &Option<String>, node: &NodeAddr) -> Outcome {
    // Exit as a local process writing to a closed pipe would: SIGPIPE.
    let node = started_on.clone().unwrap_or_else(|| node.authority());
    Outcome::Finished {
        node,
        exit: Exit {
            status: Some(mexec_proto::v1::exit::Status::Signal(13)),
            ..Exit::default()
        },
    }
}

async fn forward_stdin(requests: mpsc::Sender<RunRequest>, read_any: Arc<AtomicBool>) {
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; STDIN_CHUNK];
    loop {
        let message = match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => run_request::Msg::StdinEof(StdinEof {}),
            Ok(n) => {
                read_any.store(true, Ordering::Release);
                run_request::Msg::Stdin(bytes::Bytes::copy_from_slice(&buf[..n]))
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

/// Sorts a refusal into busy, unreachable or refused.
pub fn classify(status: &tonic::Status) -> NotStarted {
    let mut cause = status_cause(status);
    cause.push_str(tls_hint(&cause));
    match status.code() {
        Code::ResourceExhausted => NotStarted::Busy(cause),
        Code::Unavailable if !status.message().contains("draining") => {
            NotStarted::Unreachable(cause)
        }
        _ => NotStarted::Refused(cause),
    }
}

fn status_cause(status: &tonic::Status) -> String {
    use std::error::Error;
    let mut cause = if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        status.message().to_owned()
    };
    // "transport error" alone says nothing; the innermost source does
    // ("received fatal alert: UnknownCA").
    let mut source: Option<&dyn Error> = status.source();
    let mut innermost = None;
    while let Some(inner) = source {
        innermost = Some(inner.to_string());
        source = inner.source();
    }
    if let Some(inner) = innermost.filter(|inner| !cause.contains(inner.as_str())) {
        cause = format!("{cause}: {inner}");
    }
    cause
}

/// Whether a failure names TLS itself (an alert, a certificate), not only
/// a dropped connection.
fn tls_refusal(cause: &str) -> bool {
    let cause = cause.to_ascii_lowercase();
    ["certificate", "alert", "tls", "handshake"]
        .iter()
        .any(|word| cause.contains(word))
}

/// A hint to add when a failure reads like the two ends disagree about
/// TLS (one side without it, a certificate the other does not accept).
fn tls_hint(cause: &str) -> &'static str {
    const SURE: &str = " (mutual TLS: the node and this client need certificates from the same \
                        cluster CA, valid now; see --tls-ca, --tls-cert, --tls-key)";
    const MAYBE: &str = " (the node dropped the connection: if it uses mutual TLS, this client \
                         needs a certificate from the same cluster CA, valid now; see --tls-ca, \
                         --tls-cert, --tls-key)";
    // With TLS 1.3 the server may reject our certificate after we think
    // the handshake is done: we then only see an HTTP/2 error or the
    // connection drop.
    let lower = cause.to_ascii_lowercase();
    let dropped = ["broken pipe", "connection reset", "connection closed"];
    if tls_refusal(cause) || lower.contains("h2 protocol error") {
        SURE
    } else if dropped.iter().any(|word| lower.contains(word)) {
        MAYBE
    } else {
        ""
    }
}

fn transport_cause(err: &tonic::transport::Error) -> String {
    use std::error::Error;
    // The innermost cause says what happened ("Connection refused").
    let mut cause: &dyn Error = err;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}
