//! The `mexec` side of the agent: find this user's agent (start it when
//! there is none), hand it the job with our stdout and stderr, forward our
//! signals, and exit with the job's status. Whatever goes wrong before the
//! agent took the job sends the job down the direct path instead, with the
//! reason; an agent lost during a job costs a job that is safe to repeat
//! nothing (it runs again directly) and fails any other as a lost node
//! would.

use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mexec_common::farm::FarmFlags;
use mexec_proto::v1::{
    agent_reply, agent_request, AgentFarm, AgentJob, AgentLocalExit, AgentReply, AgentRequest,
    AgentSignal, AgentStdinEof,
};
use tokio::net::UnixStream;

use super::place::Place;
use super::{wire, SERVE_VARIABLE};
use crate::job::Job;
use crate::os::SignalStream;
use crate::settings::Settings;
use crate::{local, say, EXIT_MEXEC_FAILURE};

/// How long an agent may take to say it took the job before `mexec`
/// stops waiting and runs the job itself.
const TAKEN_WITHIN: Duration = Duration::from_secs(2);
/// How long a just-started agent may take to open its socket.
const START_WITHIN: Duration = Duration::from_secs(1);

/// How a handoff ended.
#[derive(Debug)]
pub enum Handoff {
    /// The job ran (through the agent, or locally at its request): exit so.
    Done(i32),
    /// Run the job directly; the text says why.
    Direct(String),
}

/// Hands `job` to the agent, unless it is off. The job's stdin stays
/// ours: we read it when the agent asks and pass it on (a read left
/// blocked in the agent after the job ended would take input meant for
/// the next command; here it ends with this process).
pub async fn run(farm: &FarmFlags, settings: &Settings, job: &Job) -> Handoff {
    if !super::enabled() {
        return Handoff::Direct("MEXEC_AGENT=0".into());
    }
    let place = match Place::for_this_build() {
        Ok(place) => place,
        Err(err) => return Handoff::Direct(format!("no place for the agent: {err}")),
    };
    let stream = match connect_or_start(&place) {
        Ok(stream) => stream,
        Err(why) => return Handoff::Direct(why),
    };
    let request = job_request(farm, settings, job, &place.build);
    let mut stream = match hand_over(stream, &request).await {
        Ok(stream) => stream,
        Err(why) => return Handoff::Direct(why),
    };
    match tokio::time::timeout(TAKEN_WITHIN, wire::read::<AgentReply>(&mut stream)).await {
        Ok(Ok(Some(AgentReply {
            msg: Some(agent_reply::Msg::Taken(_)),
        }))) => {}
        Ok(Ok(Some(AgentReply {
            msg: Some(agent_reply::Msg::Refused(refused)),
        }))) => return Handoff::Direct(format!("the agent refused: {}", refused.reason)),
        Ok(Ok(_)) => return Handoff::Direct("the agent closed before taking the job".into()),
        Ok(Err(err)) => return Handoff::Direct(format!("the agent failed: {err}")),
        Err(_) => {
            retire_hung(&place);
            return Handoff::Direct(format!("the agent did not answer in {TAKEN_WITHIN:?}"));
        }
    }
    // The agent waits for them; a job it took but could not get them for
    // it drops when we close.
    if let Err(err) = send_fds(&stream).await {
        return Handoff::Direct(format!("cannot pass descriptors to the agent: {err}"));
    }
    follow(stream, job).await
}

/// Relays signals until the agent says how the job ended.
async fn follow(stream: UnixStream, job: &Job) -> Handoff {
    let mut signals = match SignalStream::install() {
        Ok(signals) => signals,
        Err(err) => {
            say!("cannot install signal handlers: {err}");
            return Handoff::Done(EXIT_MEXEC_FAILURE);
        }
    };
    let (mut reader, mut writer) = stream.into_split();
    let (stdin_tx, mut stdin_rx) = tokio::sync::mpsc::channel::<AgentRequest>(4);
    let mut stdin_tx = Some(stdin_tx);
    loop {
        let reply = tokio::select! {
            reply = wire::read::<AgentReply>(&mut reader) => reply,
            Some(chunk) = stdin_rx.recv() => {
                let _ = wire::write(&mut writer, &chunk).await;
                continue;
            }
            signal = signals.next() => {
                let request = AgentRequest {
                    msg: Some(agent_request::Msg::Signal(AgentSignal { signo: signal })),
                };
                // A closed socket shows on the read side.
                let _ = wire::write(&mut writer, &request).await;
                continue;
            }
        };
        match reply.ok().flatten().and_then(|reply| reply.msg) {
            Some(agent_reply::Msg::Exit(exit)) => return Handoff::Done(exit.code),
            Some(agent_reply::Msg::RunLocally(_)) => {
                let code = local::run(job, &mut signals).await;
                let request = AgentRequest {
                    msg: Some(agent_request::Msg::LocalExit(AgentLocalExit { code })),
                };
                if wire::write(&mut writer, &request).await.is_err() {
                    return Handoff::Done(code);
                }
            }
            Some(agent_reply::Msg::StdinWanted(_)) => {
                if let Some(chunks) = stdin_tx.take() {
                    tokio::spawn(read_stdin(chunks));
                }
            }
            Some(agent_reply::Msg::Taken(_) | agent_reply::Msg::Refused(_)) | None => {
                return agent_lost(job)
            }
        }
    }
}

/// Reads our stdin for the job, in chunks the agent passes on as they are.
async fn read_stdin(chunks: tokio::sync::mpsc::Sender<AgentRequest>) {
    let mut stdin = crate::job_hooks::StdinSource::Own(tokio::io::stdin());
    loop {
        let msg = match stdin.next_chunk(crate::node_run::STDIN_CHUNK).await {
            Ok(Some(chunk)) => agent_request::Msg::Stdin(chunk),
            Ok(None) | Err(_) => agent_request::Msg::StdinEof(AgentStdinEof {}),
        };
        let eof = matches!(msg, agent_request::Msg::StdinEof(_));
        if chunks.send(AgentRequest { msg: Some(msg) }).await.is_err() || eof {
            return;
        }
    }
}

/// The agent went away under the job: its connections to the nodes went
/// with it, so the job is gone too. Repeat it directly when that is safe.
fn agent_lost(job: &Job) -> Handoff {
    if job.repeatable {
        return Handoff::Direct("the agent was lost during the job; ran it again".into());
    }
    say!(
        "the agent was lost while running {}; not retried (pass --retry for jobs that are \
         safe to repeat)",
        job.program()
    );
    Handoff::Done(EXIT_MEXEC_FAILURE)
}

/// Moves a hung agent aside: without its socket and lock file the next
/// `mexec` starts a fresh one, and the old one, should it wake, takes no
/// more jobs and exits after those it has.
fn retire_hung(place: &Place) {
    let _ = std::fs::remove_file(&place.socket);
    let _ = std::fs::remove_file(&place.lock);
}

/// Connects to the agent, starting one when none listens.
fn connect_or_start(place: &Place) -> Result<StdUnixStream, String> {
    match connect(&place.socket) {
        Ok(stream) => return Ok(stream),
        Err(err)
            if matches!(
                err.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) => {}
        Err(err) => return Err(format!("cannot reach the agent: {err}")),
    }
    start(place).map_err(|err| format!("cannot start the agent: {err}"))?;
    let deadline = std::time::Instant::now() + START_WITHIN;
    let mut pause = Duration::from_micros(500);
    loop {
        std::thread::sleep(pause);
        if let Ok(stream) = connect(&place.socket) {
            return Ok(stream);
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!("the agent did not start within {START_WITHIN:?}"));
        }
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

fn connect(socket: &Path) -> std::io::Result<StdUnixStream> {
    StdUnixStream::connect(socket)
}

/// Refuses an agent of another user: it would get our descriptors and our
/// job (SO_PEERCRED, or what the system has instead).
fn check_peer(stream: &UnixStream) -> std::io::Result<()> {
    let peer = stream.peer_cred()?;
    if peer.uid() != nix::unistd::getuid().as_raw() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("the agent's socket belongs to uid {}", peer.uid()),
        ));
    }
    Ok(())
}

/// Starts the agent: this binary again, detached, with no descriptors of
/// ours (it must not hold make's pipes open).
fn start(place: &Place) -> std::io::Result<()> {
    crate::placement::SharedState::create_private_dir(&place.dir)?;
    std::process::Command::new(std::env::current_exe()?)
        .env(SERVE_VARIABLE, "1")
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(drop)
}

/// Sends the byte that carries our stdout and stderr.
async fn send_fds(stream: &UnixStream) -> std::io::Result<()> {
    loop {
        stream.writable().await?;
        match stream.try_io(tokio::io::Interest::WRITABLE, || {
            wire::send_fds(stream, &wire::PASSED)
        }) {
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
            done => return done,
        }
    }
}

/// Sends the job (our descriptors follow once the agent took it).
async fn hand_over(stream: StdUnixStream, request: &AgentRequest) -> Result<UnixStream, String> {
    let broken = |err: std::io::Error| format!("cannot send the job to the agent: {err}");
    stream.set_nonblocking(true).map_err(broken)?;
    let mut stream = UnixStream::from_std(stream).map_err(broken)?;
    check_peer(&stream).map_err(|err| format!("not our agent: {err}"))?;
    wire::write(&mut stream, request).await.map_err(broken)?;
    Ok(stream)
}

/// The job as the agent gets it.
fn job_request(farm: &FarmFlags, settings: &Settings, job: &Job, build: &str) -> AgentRequest {
    let placement = match settings.placement {
        crate::placement::Policy::LeastLoaded => "load",
        crate::placement::Policy::Random => "random",
        crate::placement::Policy::RoundRobin => "round-robin",
    };
    AgentRequest {
        msg: Some(agent_request::Msg::Job(AgentJob {
            build: build.to_owned(),
            spec: Some(job.spec()),
            local_argv: job.argv.iter().map(|a| bytes_of(a)).collect(),
            repeatable: job.repeatable,
            farm: Some(agent_farm(farm, &job.cwd)),
            relay: settings.relay,
            no_local: settings.no_local,
            explain: settings.verbose,
            joblog: settings
                .joblog
                .as_ref()
                .map(|path| bytes_of(job.cwd.join(path).as_os_str()))
                .unwrap_or_default(),
            placement: placement.to_owned(),
        })),
    }
}

/// The farm flags with their paths made absolute (the agent runs in /),
/// and the config file always named: the default one when it exists, else
/// an empty file, so that the agent's own default cannot stand in.
fn agent_farm(farm: &FarmFlags, cwd: &Path) -> AgentFarm {
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| bytes_of(cwd.join(p).as_os_str()));
    let config = farm
        .config
        .clone()
        .or_else(|| mexec_common::farm::default_config_path().filter(|path| path.exists()))
        .or_else(|| Some(PathBuf::from("/dev/null")));
    AgentFarm {
        config: path(&config),
        nodes: farm.nodes.clone(),
        gatekeeper: farm.gatekeeper.clone(),
        token_file: path(&farm.token_file),
        tls_ca: path(&farm.tls_ca),
        tls_cert: path(&farm.tls_cert),
        tls_key: path(&farm.tls_key),
        munge: farm.munge,
        munge_socket: path(&farm.munge_socket),
    }
}

fn bytes_of(s: &std::ffi::OsStr) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(s.as_encoded_bytes())
}
