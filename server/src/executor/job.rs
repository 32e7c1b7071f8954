//! One job from admission to exit status: start the process, pump its
//! output into the response stream, feed it stdin, deliver signals, and kill
//! its whole process group when the client leaves, the timeout passes or the
//! node gives up on draining.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mexec_proto::v1::{
    exit, run_request, run_response, Accepted, Exit, JobSpec, Queued, RunRequest, RunResponse,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::admission::{SlotGuard, Ticket};
use super::error::JobError;
use super::process::{self, Reaped};
use super::NodeContext;

/// The response stream's sending half.
pub type Outbound = mpsc::Sender<Result<RunResponse, Status>>;

/// How many output chunks may wait for the client. With 64 KiB chunks this
/// bounds what a slow reader can make us hold to half a MiB per job.
pub const OUTPUT_QUEUE: usize = 8;
const CHUNK: usize = 64 * 1024;
/// Stdin chunks that may wait for the job to read them.
const STDIN_QUEUE: usize = 16;
/// After the job's leader exits and its group is killed, how long output
/// may still drain (a process that left the group can hold the pipe open).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// Checks a job before it is admitted.
pub fn validate(spec: &JobSpec) -> Result<(), JobError> {
    if spec.argv.is_empty() || spec.argv[0].is_empty() {
        return Err(JobError::EmptyArgv);
    }
    let cwd = Path::new(std::ffi::OsStr::from_bytes(&spec.cwd));
    let shown = String::from_utf8_lossy(&spec.cwd).into_owned();
    if !cwd.is_absolute() {
        return Err(JobError::RelativeCwd(shown));
    }
    if !cwd.is_dir() {
        return Err(JobError::CwdMissing(shown));
    }
    Ok(())
}

enum Control {
    Signal(i32),
    ClientGone,
}

/// Why the executor killed the job, if it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kill {
    ClientGone,
    Timeout(Duration),
    Shutdown,
}

/// Runs an admitted job to its end, reporting on `out`.
pub async fn run(
    ctx: Arc<NodeContext>,
    spec: JobSpec,
    ticket: Ticket,
    inbound: Streaming<RunRequest>,
    out: Outbound,
) {
    let Some(slot) = take_slot(&ctx, ticket, &out).await else {
        return;
    };
    let started_at = Instant::now();
    let argv0 = String::from_utf8_lossy(&spec.argv[0]).into_owned();
    let started = match process::spawn(&spec, ctx.run_as.as_ref()) {
        Ok(started) => started,
        Err(err) => {
            let exit = spawn_failure(&spec, &argv0, &err);
            log_job(&ctx, &spec, &argv0, started_at, &exit);
            let _ = out.send(Ok(response(run_response::Msg::Exit(exit)))).await;
            return;
        }
    };
    let pid = started.pid;
    let _ = out
        .send(Ok(response(run_response::Msg::Accepted(Accepted {
            node: ctx.name.clone(),
            pid,
        }))))
        .await;

    let pumps = [
        tokio::spawn(pump(started.stdout, out.clone(), run_response::Msg::Stdout)),
        tokio::spawn(pump(started.stderr, out.clone(), run_response::Msg::Stderr)),
    ];
    let (stdin_tx, stdin_rx) = mpsc::channel(STDIN_QUEUE);
    let stdin_writer = started
        .stdin
        .map(|stdin| tokio::spawn(write_stdin(stdin, stdin_rx)));
    let (control_tx, mut control) = mpsc::unbounded_channel();
    let reader = tokio::spawn(read_inbound(inbound, stdin_tx, control_tx));

    let timeout = (spec.timeout_ms > 0).then(|| Duration::from_millis(spec.timeout_ms));
    let deadline = tokio::time::sleep(timeout.unwrap_or(Duration::MAX / 4));
    tokio::pin!(deadline);
    let reaper = process::reap(pid);
    tokio::pin!(reaper);
    let mut abort = ctx.abort_all.clone();
    let mut killed: Option<Kill> = None;
    let reaped = loop {
        tokio::select! {
            reaped = &mut reaper => break reaped,
            Some(ctl) = control.recv() => match ctl {
                Control::Signal(signal) if process::is_deliverable(signal) => {
                    process::signal_group(pid, signal)
                }
                Control::Signal(_) => {}
                Control::ClientGone => kill(pid, &mut killed, Kill::ClientGone),
            },
            _ = out.closed(), if killed.is_none() => kill(pid, &mut killed, Kill::ClientGone),
            _ = &mut deadline, if killed.is_none() && timeout.is_some() => {
                kill(pid, &mut killed, Kill::Timeout(timeout.unwrap_or_default()))
            }
            _ = abort.wait_for(|abort| *abort), if killed.is_none() => {
                kill(pid, &mut killed, Kill::Shutdown)
            }
        }
    };
    // Whatever the leader left running in its group goes with it: a node
    // must not collect stray processes from finished jobs.
    process::signal_group(pid, libc::SIGKILL);
    reader.abort();
    if let Some(writer) = stdin_writer {
        writer.abort();
    }
    for pump in pumps {
        let abort_handle = pump.abort_handle();
        if tokio::time::timeout(DRAIN_AFTER_EXIT, pump).await.is_err() {
            abort_handle.abort();
        }
    }
    drop(slot);
    let exit = exit_message(reaped, started_at, killed);
    log_job(&ctx, &spec, &argv0, started_at, &exit);
    let _ = out.send(Ok(response(run_response::Msg::Exit(exit)))).await;
}

async fn take_slot(ctx: &NodeContext, ticket: Ticket, out: &Outbound) -> Option<SlotGuard> {
    let queue = match ticket {
        Ticket::Slot(slot) => return Some(slot),
        Ticket::Queued(queue) => queue,
    };
    let queued = Queued {
        node: ctx.name.clone(),
        queued: ctx.admission.counts().queued,
    };
    let _ = out
        .send(Ok(response(run_response::Msg::Queued(queued))))
        .await;
    tokio::select! {
        slot = queue.wait_for_slot() => match slot {
            Some(slot) => Some(slot),
            None => {
                let _ = out.send(Err(JobError::Draining.into_status(&ctx.name))).await;
                None
            }
        },
        // The client gave up while waiting: its place is freed on drop.
        _ = out.closed() => None,
    }
}

fn kill(pid: u32, killed: &mut Option<Kill>, why: Kill) {
    process::signal_group(pid, libc::SIGKILL);
    killed.get_or_insert(why);
}

async fn pump(mut pipe: pipe::Receiver, out: Outbound, wrap: fn(Bytes) -> run_response::Msg) {
    let mut buf = BytesMut::with_capacity(CHUNK);
    loop {
        buf.reserve(CHUNK);
        match pipe.read_buf(&mut buf).await {
            Ok(0) => return,
            Ok(_) => {
                let chunk = buf.split().freeze();
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

async fn write_stdin(mut stdin: pipe::Sender, mut chunks: mpsc::Receiver<Bytes>) {
    while let Some(chunk) = chunks.recv().await {
        // A job that closed its stdin wants no more; drop the rest.
        if stdin.write_all(&chunk).await.is_err() {
            return;
        }
    }
}

async fn read_inbound(
    mut inbound: Streaming<RunRequest>,
    stdin: mpsc::Sender<Bytes>,
    control: mpsc::UnboundedSender<Control>,
) {
    let mut stdin = Some(stdin);
    loop {
        match inbound.message().await {
            Ok(Some(RunRequest { msg: Some(msg) })) => match msg {
                run_request::Msg::Stdin(chunk) => {
                    if let Some(tx) = &stdin {
                        if tx.send(chunk).await.is_err() {
                            stdin = None;
                        }
                    }
                }
                run_request::Msg::StdinEof(_) => stdin = None,
                run_request::Msg::Signal(signal) => {
                    let _ = control.send(Control::Signal(signal.signo));
                }
                run_request::Msg::Start(_) => {
                    tracing::debug!("ignoring a second job spec on one Run stream")
                }
            },
            Ok(Some(RunRequest { msg: None })) => {}
            // The client half-closed its side: no more stdin, job goes on.
            Ok(None) => return,
            Err(_) => {
                let _ = control.send(Control::ClientGone);
                return;
            }
        }
    }
}

fn spawn_failure(spec: &JobSpec, argv0: &str, err: &std::io::Error) -> Exit {
    // A PATH search that met an unreadable directory reports EACCES even
    // when the program is nowhere; a shell calls that "not found", so do we.
    let missing = err.kind() == std::io::ErrorKind::NotFound
        || !process::program_exists(&spec.argv[0], job_path(spec));
    let (code, error) = if missing {
        (127, format!("command not found: {argv0}"))
    } else if err.kind() == std::io::ErrorKind::PermissionDenied {
        (126, format!("permission denied: {argv0}"))
    } else {
        (126, format!("cannot run {argv0}: {err}"))
    };
    Exit {
        status: Some(exit::Status::Code(code)),
        error,
        ..Exit::default()
    }
}

fn job_path(spec: &JobSpec) -> Option<&[u8]> {
    spec.env
        .iter()
        .find(|v| v.name.as_ref() == b"PATH")
        .map(|v| v.value.as_ref())
}

fn exit_message(
    reaped: std::io::Result<Reaped>,
    started_at: Instant,
    killed: Option<Kill>,
) -> Exit {
    let wall_us = started_at.elapsed().as_micros() as u64;
    let reaped = match reaped {
        Ok(reaped) => reaped,
        Err(err) => {
            return Exit {
                status: Some(exit::Status::Code(255)),
                wall_us,
                error: format!("lost track of the job's process: {err}"),
                ..Exit::default()
            }
        }
    };
    let error = match killed {
        Some(Kill::Timeout(limit)) => format!("killed after its timeout of {limit:?}"),
        Some(Kill::Shutdown) => "killed: the node shut down before the job finished".to_owned(),
        Some(Kill::ClientGone) | None => String::new(),
    };
    Exit {
        status: Some(match reaped.status {
            Ok(code) => exit::Status::Code(code),
            Err(signal) => exit::Status::Signal(signal),
        }),
        wall_us,
        user_us: reaped.user.as_micros() as u64,
        system_us: reaped.system.as_micros() as u64,
        max_rss_kib: reaped.max_rss_kib,
        error,
    }
}

fn log_job(ctx: &NodeContext, spec: &JobSpec, argv0: &str, started_at: Instant, exit: &Exit) {
    let status = match exit.status {
        Some(exit::Status::Code(code)) => format!("exit {code}"),
        Some(exit::Status::Signal(signal)) => format!("signal {signal}"),
        None => "unknown".to_owned(),
    };
    tracing::info!(
        job_id = %spec.job_id,
        user = %spec.user,
        client_host = %spec.client_host,
        build_id = %spec.build_id,
        argv0,
        node = %ctx.name,
        duration_ms = started_at.elapsed().as_millis() as u64,
        status,
        error = %exit.error,
        "job finished"
    );
}

fn response(msg: run_response::Msg) -> RunResponse {
    RunResponse { msg: Some(msg) }
}
