//! One job from admission to exit status: start the process, pump its
//! output into the response stream, feed it stdin, deliver signals, and kill
//! its whole process group when the client leaves, the timeout passes or the
//! node gives up on draining.

use std::collections::VecDeque;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mexec_proto::v1::{
    exit, run_request, run_response, Accepted, Exit, JobSpec, Queued, RunRequest, RunResponse,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};

use super::admission::{SlotGuard, Ticket};
use super::error::JobError;
use super::limits::{self, Exceeded, Rlimits};
use super::pace::Pace;
use super::process::{self, Reaped};
use super::NodeContext;

/// The response stream's sending half.
pub type Outbound = mpsc::Sender<Result<RunResponse, Status>>;

/// How many output chunks may wait for the client. With 64 KiB chunks this
/// bounds what a slow reader can make us hold to half a MiB per job.
pub const OUTPUT_QUEUE: usize = 8;
const CHUNK: usize = 64 * 1024;
/// Stdin chunks queued to the writer task.
const STDIN_QUEUE: usize = 4;
/// Stdin bytes held while the job does not read, before we stop reading the
/// client's stream (and so its signals) and let flow control push back.
const STDIN_BUFFER: usize = 4 * 1024 * 1024;
/// After the job's leader exits and its group is killed, how long output
/// may still drain (a process that left the group can hold the pipe open).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// Checks a job before it is admitted.
pub fn validate(spec: &JobSpec) -> Result<(), JobError> {
    if spec.argv.is_empty() || spec.argv[0].is_empty() {
        return Err(JobError::EmptyArgv);
    }
    limits::check_request(spec)?;
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
    OutputLimit(u64),
}

/// Why the executor killed the job, if it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kill {
    ClientGone,
    Timeout(Duration),
    Shutdown,
    Limit(Exceeded),
}

/// Runs an admitted job to its end, reporting on `out`.
pub async fn run(
    ctx: Arc<NodeContext>,
    spec: JobSpec,
    program: Option<PathBuf>,
    ticket: Ticket,
    inbound: Streaming<RunRequest>,
    out: Outbound,
) {
    let Some(slot) = take_slot(&ctx, ticket, &out).await else {
        return;
    };
    let started_at = Instant::now();
    let argv0 = String::from_utf8_lossy(&spec.argv[0]).into_owned();
    let rlimits = Rlimits::for_job(&ctx.limits);
    let started = match process::spawn(&spec, program.as_deref(), ctx.run_as.as_ref(), rlimits) {
        Ok(started) => started,
        Err(err) => {
            match spawn_failure(&ctx, &spec, &argv0, &err) {
                Ok(exit) => {
                    log_job(&ctx, &spec, &argv0, started_at, &exit);
                    let _ = out.send(Ok(response(run_response::Msg::Exit(exit)))).await;
                }
                // Not the command's fault: the client should go elsewhere.
                Err(refusal) => {
                    tracing::warn!(job_id = %spec.job_id, node = %ctx.name, %refusal, "job refused");
                    let _ = out.send(Err(refusal.into_status(&ctx.name))).await;
                }
            }
            return;
        }
    };
    let pid = started.pid;
    let kept = ctx.groups.as_ref().map(|keeper| keeper.keep(pid));
    let _ = out
        .send(Ok(response(run_response::Msg::Accepted(Accepted {
            node: ctx.name.clone(),
            pid,
        }))))
        .await;

    let (exited_tx, exited) = watch::channel(false);
    let (control_tx, mut control) = mpsc::unbounded_channel();
    let output_budget = OutputBudget::new(ctx.limits.output_bytes, control_tx.clone());
    let pumps = [
        tokio::spawn(pump(
            started.stdout,
            out.clone(),
            run_response::Msg::Stdout,
            exited.clone(),
            output_budget.clone(),
        )),
        tokio::spawn(pump(
            started.stderr,
            out.clone(),
            run_response::Msg::Stderr,
            exited,
            output_budget.clone(),
        )),
    ];
    let (stdin_tx, stdin_rx) = mpsc::channel(STDIN_QUEUE);
    let stdin_writer = started
        .stdin
        .map(|stdin| tokio::spawn(write_stdin(stdin, stdin_rx)));
    let reader = tokio::spawn(read_inbound(
        inbound,
        stdin_tx,
        control_tx,
        ctx.limits.stdin_bytes_per_sec,
    ));
    let mut memory = ctx
        .limits
        .memory_bytes
        .map(|limit| ctx.memory.watch(pid, limit));

    // The client's timeout may only shorten the node's wall-clock limit.
    let asked = (spec.timeout_ms > 0).then(|| Duration::from_millis(spec.timeout_ms));
    let (timeout, on_timeout) = match (asked, ctx.limits.wall) {
        (Some(asked), Some(wall)) if wall < asked => {
            (Some(wall), Kill::Limit(Exceeded::Wall(wall)))
        }
        (Some(asked), _) => (Some(asked), Kill::Timeout(asked)),
        (None, Some(wall)) => (Some(wall), Kill::Limit(Exceeded::Wall(wall))),
        (None, None) => (None, Kill::Timeout(Duration::ZERO)),
    };
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
                Control::OutputLimit(limit) => {
                    kill(pid, &mut killed, Kill::Limit(Exceeded::Output(limit)))
                }
            },
            _ = out.closed(), if killed.is_none() => kill(pid, &mut killed, Kill::ClientGone),
            _ = &mut deadline, if killed.is_none() && timeout.is_some() => {
                kill(pid, &mut killed, on_timeout)
            }
            over = async { (&mut memory.as_mut().expect("guarded").over).await },
                if killed.is_none() && memory.is_some() => match over {
                Ok(limit) => kill(pid, &mut killed, Kill::Limit(Exceeded::Memory(limit))),
                // The watcher is gone: nothing more will come from it.
                Err(_) => memory = None,
            },
            _ = abort.wait_for(|abort| *abort), if killed.is_none() => {
                kill(pid, &mut killed, Kill::Shutdown)
            }
        }
    };
    // The job may die of the closed pipe before the kill: still the limit.
    if killed.is_none() {
        killed = output_budget
            .exceeded()
            .map(|limit| Kill::Limit(Exceeded::Output(limit)));
    }
    // Whatever the leader left running in its group goes with it: a node
    // must not collect stray processes from finished jobs.
    process::signal_group(pid, libc::SIGKILL);
    drop(kept);
    reader.abort();
    if let Some(writer) = stdin_writer {
        writer.abort();
    }
    // The pumps finish sending what they have however slow the client is;
    // only a pipe that stays silent after the exit ends them early.
    let _ = exited_tx.send(true);
    for pump in pumps {
        let _ = pump.await;
    }
    drop(memory);
    drop(slot);
    let exit = exit_message(reaped, started_at, killed, &ctx.limits);
    log_job(&ctx, &spec, &argv0, started_at, &exit);
    if killed == Some(Kill::Shutdown) {
        // Not the command's outcome: a status error lets the client rerun
        // a repeatable job elsewhere instead of reporting SIGKILL.
        let status = Status::unavailable(format!(
            "node {} shut down before the job finished",
            ctx.name
        ));
        let _ = out.send(Err(status)).await;
        return;
    }
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

/// The output a job may still write, shared by its stdout and stderr.
#[derive(Clone)]
struct OutputBudget {
    limit: Option<u64>,
    used: Arc<std::sync::atomic::AtomicU64>,
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

    /// The limit, once the job has gone over it.
    fn exceeded(&self) -> Option<u64> {
        let limit = self.limit?;
        (self.used.load(std::sync::atomic::Ordering::Relaxed) > limit).then_some(limit)
    }

    /// Counts `bytes`; false once the job is over its limit (the job is
    /// then killed and the rest of its output dropped).
    fn take(&self, bytes: usize) -> bool {
        let Some(limit) = self.limit else {
            return true;
        };
        let before = self
            .used
            .fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
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

async fn write_stdin(mut stdin: pipe::Sender, mut chunks: mpsc::Receiver<Bytes>) {
    while let Some(chunk) = chunks.recv().await {
        // A job that closed its stdin wants no more; drop the rest.
        if stdin.write_all(&chunk).await.is_err() {
            return;
        }
    }
}

/// Reads the client's half of the stream. Stdin the job has not read yet is
/// held here (up to `STDIN_BUFFER` bytes) so that a signal sent after it is
/// still read and delivered at once.
async fn read_inbound(
    mut inbound: Streaming<RunRequest>,
    stdin: mpsc::Sender<Bytes>,
    control: mpsc::UnboundedSender<Control>,
    rate: Option<u64>,
) {
    let mut pace = rate.map(Pace::new);
    let mut stdin = Some(stdin);
    let mut pending: VecDeque<Bytes> = VecDeque::new();
    let mut pending_bytes = 0usize;
    let mut eof = false;
    let mut client_open = true;
    loop {
        if eof && pending.is_empty() {
            // Dropping the sender closes the job's stdin.
            stdin = None;
            if !client_open {
                return;
            }
        }
        let writer = stdin.clone().filter(|_| !pending.is_empty());
        let feed = async move {
            match writer {
                Some(tx) => tx.reserve_owned().await.ok(),
                None => std::future::pending().await,
            }
        };
        let message = tokio::select! {
            permit = feed => {
                match permit {
                    Some(permit) => {
                        let chunk = pending.pop_front().unwrap_or_default();
                        pending_bytes -= chunk.len();
                        permit.send(chunk);
                    }
                    // The job closed its stdin: the rest is dropped.
                    None => {
                        stdin = None;
                        pending.clear();
                        pending_bytes = 0;
                    }
                }
                continue;
            }
            message = inbound.message(), if client_open && pending_bytes < STDIN_BUFFER => message,
        };
        if let (Some(pace), Ok(Some(message))) = (pace.as_mut(), &message) {
            let stdin_bytes = match &message.msg {
                Some(run_request::Msg::Stdin(chunk)) => chunk.len(),
                _ => 0,
            };
            pace.wait(stdin_bytes).await;
        }
        match message {
            Ok(Some(RunRequest { msg: Some(msg) })) => match msg {
                run_request::Msg::Stdin(chunk) => {
                    if stdin.is_some() && !eof {
                        pending_bytes += chunk.len();
                        pending.push_back(chunk);
                    }
                }
                run_request::Msg::StdinEof(_) => eof = true,
                run_request::Msg::Signal(signal) => {
                    let _ = control.send(Control::Signal(signal.signo));
                }
                run_request::Msg::Start(_) => {
                    tracing::debug!("ignoring a second job spec on one Run stream")
                }
            },
            Ok(Some(RunRequest { msg: None })) => {}
            // The client half-closed its side: no more stdin, job goes on.
            Ok(None) => {
                eof = true;
                client_open = false;
            }
            Err(_) => {
                let _ = control.send(Control::ClientGone);
                return;
            }
        }
    }
}

/// Turns a failed spawn into the command's exit (127, 126) or, when the
/// working directory is at fault, a refusal the client can route around.
fn spawn_failure(
    ctx: &NodeContext,
    spec: &JobSpec,
    argv0: &str,
    err: &std::io::Error,
) -> Result<Exit, JobError> {
    let cwd = Path::new(std::ffi::OsStr::from_bytes(&spec.cwd));
    let shown = || String::from_utf8_lossy(&spec.cwd).into_owned();
    if !cwd.is_dir() {
        return Err(JobError::CwdMissing(shown()));
    }
    if let Some(account) = &ctx.run_as {
        if !process::can_enter(cwd, account) {
            return Err(JobError::CwdDenied {
                path: shown(),
                user: account.name.clone(),
            });
        }
    }
    // A PATH search that met an unreadable directory reports EACCES even
    // when the program is nowhere; a shell calls that "not found", so do we.
    let missing = err.kind() == std::io::ErrorKind::NotFound
        || !process::program_exists(
            &spec.argv[0],
            super::environment::job_path(spec)
                .as_ref()
                .map(|p| p.as_bytes()),
            cwd,
        );
    let (code, error) = if missing {
        (127, format!("command not found: {argv0}"))
    } else if err.kind() == std::io::ErrorKind::PermissionDenied {
        (126, format!("permission denied: {argv0}"))
    } else {
        (126, format!("cannot run {argv0}: {err}"))
    };
    Ok(Exit {
        status: Some(exit::Status::Code(code)),
        error,
        ..Exit::default()
    })
}

fn exit_message(
    reaped: std::io::Result<Reaped>,
    started_at: Instant,
    killed: Option<Kill>,
    limits: &limits::JobLimits,
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
    // The kernel enforces the CPU limit; the signal says it did.
    let killed = match (killed, reaped.status) {
        (None, Err(signal)) => {
            limits::hit_cpu_limit(limits, signal, reaped.user + reaped.system).map(Kill::Limit)
        }
        (killed, _) => killed,
    };
    let (error, limit) = match killed {
        Some(Kill::Timeout(limit)) => (format!("killed after its timeout of {limit:?}"), ""),
        Some(Kill::Shutdown) => (
            "killed: the node shut down before the job finished".to_owned(),
            "",
        ),
        Some(Kill::Limit(exceeded)) => (exceeded.message(), exceeded.name()),
        Some(Kill::ClientGone) | None => (String::new(), ""),
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
        limit: limit.to_owned(),
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
        client_os = %spec.client_os,
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
