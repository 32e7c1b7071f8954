//! One job in the agent: take the descriptors and the job from its
//! `mexec`, run it through the same retry loop a `mexec` process runs
//! (with the hooks that send output, messages and a local run to that
//! `mexec`), and tell it the exit code. The `mexec`'s socket closing is
//! the `mexec` gone: the job's future is dropped, which resets its streams
//! to the node, and the node kills the job, as when a `mexec` process dies.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mexec_proto::v1::{
    agent_reply, agent_request, AgentAlive, AgentExit, AgentInvocation, AgentRefused, AgentReply,
    AgentRequest, AgentRunLocally, AgentStdinWanted, AgentTaken, EnvVar,
};
use tokio::io::Interest;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use super::farms::Farms;
use super::wire;
use crate::invocation;
use crate::job::Job;
use crate::job_hooks::{self as hooks, Hooks, LocalRunner};
use crate::origin::Origin;
use crate::placement::SharedState;
use crate::settings::Settings;
use crate::{retry, EXIT_MEXEC_FAILURE};

/// How long a `mexec` may take between connecting and sending its job.
const JOB_WITHIN: Duration = Duration::from_secs(5);

/// What the agent's jobs share.
#[derive(Debug)]
pub struct Shared {
    pub farms: Farms,
    /// The running binary's identity: a `mexec` of another build is refused.
    pub build: String,
    next_holder: std::sync::atomic::AtomicU32,
}

impl Shared {
    pub fn new(build: String) -> Shared {
        Shared {
            farms: Farms::default(),
            build,
            next_holder: 1.into(),
        }
    }
}

/// Serves one `mexec` connection, from its descriptors to its exit code.
/// `Err` says why its `mexec` was refused (it runs the job itself).
pub async fn serve(mut stream: UnixStream, shared: &Shared) -> Result<(), String> {
    let late = |_| "no job within the time allowed".to_owned();
    let invocation = tokio::time::timeout(JOB_WITHIN, read_invocation(&mut stream))
        .await
        .map_err(late)??;
    let prepared = match prepare(invocation, shared) {
        Ok(prepared) => prepared,
        Err(reason) => {
            let refused = AgentReply {
                msg: Some(agent_reply::Msg::Refused(AgentRefused {
                    reason: reason.clone(),
                })),
            };
            let _ = wire::write(&mut stream, &refused).await;
            return Err(reason);
        }
    };
    let taken = AgentReply {
        msg: Some(agent_reply::Msg::Taken(AgentTaken {})),
    };
    wire::write(&mut stream, &taken)
        .await
        .map_err(|err| err.to_string())?;
    // The descriptors come only now: a `mexec` that gave up on a hung
    // agent leaves none of them in its socket, where they would keep
    // make's pipes open.
    let fds = tokio::time::timeout(JOB_WITHIN, receive_fds(&stream))
        .await
        .map_err(late)??;
    let (mut reader, writer) = stream.into_split();
    let writer = Arc::new(tokio::sync::Mutex::new(writer));
    let holder = shared
        .next_holder
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // After "taken": a first fingerprint of a slow compiler must not pass
    // for a hung agent.
    // Alive meanwhile too: a first fingerprint may take seconds.
    let prepared = tokio::select! {
        prepared = with_toolchain(prepared) => prepared,
        never = keep_alive(writer.clone()) => match never {},
    };
    let code = match prepared {
        Ok(prepared) => run(prepared, fds, holder, &mut reader, writer.clone()).await,
        Err(reason) => {
            // On the job's stderr, as any message of the job's `mexec`.
            if let Some(stderr) = fds.get(1).and_then(|fd| fd.try_clone().ok()) {
                use std::io::Write;
                let _ = writeln!(std::fs::File::from(stderr), "mexec: {reason}");
            }
            Some(EXIT_MEXEC_FAILURE)
        }
    };
    SharedState::for_this_user().forget_holder(holder);
    if let Some(code) = code {
        let exit = AgentReply {
            msg: Some(agent_reply::Msg::Exit(AgentExit { code })),
        };
        let _ = wire::write(&mut *writer.lock().await, &exit).await;
    }
    Ok(())
}

/// A job ready to run.
struct Prepared {
    settings: Settings,
    connector: mexec_common::connector::Connector,
    job: Job,
}

/// The job with our fingerprint of its compiler, where the settings check
/// it. Making one may run the compiler: not on the runtime every other job
/// of the agent shares.
async fn with_toolchain(mut prepared: Prepared) -> Result<Prepared, String> {
    if !prepared.job.checks_toolchain(&prepared.settings) {
        return Ok(prepared);
    }
    let mut job = prepared.job;
    prepared.job = tokio::task::spawn_blocking(move || {
        job.add_toolchain();
        job
    })
    .await
    .map_err(|err| format!("the toolchain check failed: {err}"))?;
    Ok(prepared)
}

/// Runs the job until it ends (`Some` exit code) or its `mexec` is gone
/// (`None`). Every descriptor of the `mexec`'s is closed on return, before
/// the exit code goes out: whoever reads the job's output sees its end no
/// later than the `mexec`'s exit.
async fn run(
    prepared: Prepared,
    fds: Vec<OwnedFd>,
    holder: u32,
    reader: &mut OwnedReadHalf,
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
) -> Option<i32> {
    let (signals, relayed) = mpsc::unbounded_channel();
    let (stdin, stdin_chunks) = mpsc::unbounded_channel();
    let (want_stdin, stdin_wanted) = mpsc::unbounded_channel();
    let pending = Arc::new(Mutex::new(None));
    let channels = Channels {
        relayed,
        stdin_chunks,
        want_stdin,
    };
    let Prepared {
        settings,
        connector,
        job,
    } = prepared;
    let job = Arc::new(job);
    let local = InClient {
        writer: writer.clone(),
        pending: pending.clone(),
        job: job.clone(),
    };
    let hooks = match make_hooks(fds, channels, holder, local) {
        Ok(hooks) => hooks,
        Err(err) => {
            crate::say!("the agent cannot use the job's descriptors: {err}");
            return Some(EXIT_MEXEC_FAILURE);
        }
    };
    let job_run = hooks::scope(hooks, retry::run(&settings, &connector, &job));
    let to_client = ToClient {
        signals,
        stdin: Some(stdin),
        pending,
    };
    tokio::select! {
        code = job_run => Some(code),
        () = from_client(reader, to_client) => None,
        () = ask_for_stdin(stdin_wanted, writer.clone()) => None,
        never = keep_alive(writer) => match never {},
    }
}

/// How often the agent tells a job's `mexec` it is alive.
const ALIVE_EVERY: Duration = Duration::from_secs(1);

/// Tells the `mexec` every `ALIVE_EVERY` that the agent still runs its
/// job; never ends.
async fn keep_alive(writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>) -> std::convert::Infallible {
    let alive = AgentReply {
        msg: Some(agent_reply::Msg::Alive(AgentAlive {})),
    };
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + ALIVE_EVERY, ALIVE_EVERY);
    loop {
        tick.tick().await;
        // A `mexec` that is gone shows on the read side.
        let _ = wire::write(&mut *writer.lock().await, &alive).await;
    }
}

/// Where what the `mexec` sends during the job goes.
struct ToClient {
    signals: mpsc::UnboundedSender<i32>,
    /// Dropped at the end of the `mexec`'s stdin.
    stdin: Option<mpsc::UnboundedSender<bytes::Bytes>>,
    pending: PendingLocal,
}

/// The job's ends of the channels its `mexec`'s messages arrive on.
struct Channels {
    relayed: mpsc::UnboundedReceiver<i32>,
    stdin_chunks: mpsc::UnboundedReceiver<bytes::Bytes>,
    want_stdin: mpsc::UnboundedSender<()>,
}

/// Asks the `mexec` for its stdin the first time the job wants it; never
/// ends by itself.
async fn ask_for_stdin(
    mut wanted: mpsc::UnboundedReceiver<()>,
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
) {
    if wanted.recv().await.is_some() {
        let request = AgentReply {
            msg: Some(agent_reply::Msg::StdinWanted(AgentStdinWanted {})),
        };
        let _ = wire::write(&mut *writer.lock().await, &request).await;
    }
    std::future::pending::<()>().await
}

/// Takes what the `mexec` sends during the job, until it is gone.
async fn from_client(reader: &mut OwnedReadHalf, mut to: ToClient) {
    loop {
        let Ok(Some(request)) = wire::read::<AgentRequest>(reader).await else {
            return;
        };
        match request.msg {
            Some(agent_request::Msg::Signal(signal)) => {
                let _ = to.signals.send(signal.signo);
            }
            Some(agent_request::Msg::LocalExit(exit)) => {
                if let Some(done) = to.pending.lock().ok().and_then(|mut p| p.take()) {
                    let _ = done.send(exit.code);
                }
            }
            Some(agent_request::Msg::Stdin(chunk)) => {
                if let Some(stdin) = &to.stdin {
                    let _ = stdin.send(chunk);
                }
            }
            Some(agent_request::Msg::StdinEof(_)) => to.stdin = None,
            // A second job on one connection is not ours to run.
            Some(agent_request::Msg::Invocation(_)) | None => return,
        }
    }
}

type PendingLocal = Arc<Mutex<Option<oneshot::Sender<i32>>>>;

fn make_hooks(
    fds: Vec<OwnedFd>,
    channels: Channels,
    holder: u32,
    local: InClient,
) -> std::io::Result<Arc<Hooks>> {
    let mut fds = fds.into_iter();
    let (Some(stdout), Some(stderr)) = (fds.next(), fds.next()) else {
        return Err(std::io::Error::other("fewer than two descriptors"));
    };
    let messages = std::fs::File::from(stderr.try_clone()?);
    let stdout = tokio::fs::File::from_std(std::fs::File::from(stdout));
    let stderr = tokio::fs::File::from_std(std::fs::File::from(stderr));
    Ok(Arc::new(Hooks {
        sinks: Mutex::new(Some((Box::new(stdout), Box::new(stderr)))),
        messages: Mutex::new(messages),
        signals: Mutex::new(Some(channels.relayed)),
        stdin: Arc::new(tokio::sync::Mutex::new(channels.stdin_chunks)),
        want_stdin: channels.want_stdin,
        holder,
        local: Box::new(local),
    }))
}

/// A local run, done by the job's `mexec`.
struct InClient {
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    pending: PendingLocal,
    /// The command and environment it runs.
    job: Arc<Job>,
}

impl LocalRunner for InClient {
    fn run_locally(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = i32> + Send + '_>> {
        Box::pin(async move {
            let (done, exit) = oneshot::channel();
            if let Ok(mut pending) = self.pending.lock() {
                *pending = Some(done);
            }
            let bytes = |s: &std::ffi::OsStr| bytes::Bytes::copy_from_slice(s.as_bytes());
            let command = AgentRunLocally {
                argv: self.job.argv.iter().map(|a| bytes(a)).collect(),
                env: (self.job.env.iter())
                    .map(|(name, value)| EnvVar {
                        name: bytes(name),
                        value: bytes(value),
                    })
                    .collect(),
            };
            let request = AgentReply {
                msg: Some(agent_reply::Msg::RunLocally(command)),
            };
            if wire::write(&mut *self.writer.lock().await, &request)
                .await
                .is_err()
            {
                return EXIT_MEXEC_FAILURE;
            }
            exit.await.unwrap_or(EXIT_MEXEC_FAILURE)
        })
    }
}

/// Reads how the `mexec` was started, the first message.
async fn read_invocation(stream: &mut UnixStream) -> Result<AgentInvocation, String> {
    let request = wire::read::<AgentRequest>(stream)
        .await
        .map_err(|err| format!("cannot read the job: {err}"))?;
    match request.and_then(|r| r.msg) {
        Some(agent_request::Msg::Invocation(invocation)) => Ok(invocation),
        _ => Err("the first message was not a job".into()),
    }
}

/// Reads the byte with the descriptors.
async fn receive_fds(stream: &UnixStream) -> Result<Vec<OwnedFd>, String> {
    loop {
        stream.readable().await.map_err(|err| err.to_string())?;
        match stream.try_io(Interest::READABLE, || wire::try_receive_fds(stream)) {
            Ok(Some(fds)) => return Ok(fds),
            Ok(None) => return Err("closed before sending its descriptors".into()),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(format!("cannot receive descriptors: {err}")),
        }
    }
}

/// The settings and the job, made from how the `mexec` was started as
/// that `mexec` would make them; `Err` for a job this agent will not run
/// (the `mexec` runs it, or says what is wrong with its command line).
fn prepare(message: AgentInvocation, shared: &Shared) -> Result<Prepared, String> {
    if message.build != shared.build {
        return Err(format!(
            "the agent is build {}, this mexec is build {}",
            shared.build, message.build
        ));
    }
    let origin = origin_of(message);
    let invocation = invocation::parse(&origin)
        .map_err(|err| format!("not a job for the agent ({:?})", err.kind()))?;
    let flags = &invocation.flags;
    if flags.status || flags.usage {
        return Err("not a job for the agent (--status, --usage)".into());
    }
    let farm = shared
        .farms
        .get(flags.farm(), &origin)
        .map_err(|err| format!("the farm: {err}"))?;
    let mut settings =
        Settings::with_farm(flags, &origin, farm.farm, farm.file).map_err(|err| err.to_string())?;
    // The job log is named from the job's directory, not the agent's.
    if let (Some(log), Ok(cwd)) = (&settings.joblog, &origin.cwd) {
        settings.joblog = Some(cwd.join(log));
    }
    let job =
        Job::without_toolchain(&invocation, &settings, &origin).map_err(|err| err.to_string())?;
    Ok(Prepared {
        settings,
        connector: farm.connector,
        job,
    })
}

/// The `mexec` process as its message describes it.
fn origin_of(message: AgentInvocation) -> Origin {
    Origin {
        argv: message.argv.iter().map(|a| os(a)).collect(),
        env: (message.env.iter())
            .map(|var| (os(&var.name), os(&var.value)))
            .collect(),
        cwd: Ok(PathBuf::from(os(&message.cwd))),
        umask: message.umask,
        pid: message.pid,
        exe: PathBuf::from(os(&message.exe)),
        stdin_terminal: message.stdin_terminal,
        stdin_null: message.stdin_null,
        build_scope: message.build_scope,
        own_process: false,
    }
}

fn os(bytes: &[u8]) -> OsString {
    OsString::from_vec(bytes.to_vec())
}
