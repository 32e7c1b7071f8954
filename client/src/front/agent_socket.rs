//! Reaching this user's agent for this build (starting it when none
//! listens) and handing it the job: how we were started, then, once it
//! took the job, our stdout and stderr. Whatever goes wrong up to then
//! sends the job down the direct path, with the reason.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use mexec_proto::v1::{
    agent_reply, agent_request, AgentInvocation, AgentReply, AgentRequest, EnvVar,
};

use crate::agent::{read_blocking, send_fds, write_blocking, Place, PASSED, SERVE_VARIABLE};
use crate::origin::Origin;

/// How long an agent may take to say it took the job before `mexec`
/// stops waiting and runs the job itself.
const TAKEN_WITHIN: Duration = Duration::from_secs(2);
/// How long a just-started agent may take to open its socket.
const START_WITHIN: Duration = Duration::from_secs(1);

/// Hands the job to the agent; the stream is the job's from then on.
/// `Err` says why the job runs directly instead.
pub fn hand_over(origin: &Origin) -> Result<UnixStream, String> {
    let place = Place::for_this_build().map_err(|err| format!("no place for the agent: {err}"))?;
    let mut stream = connect_or_start(&place)?;
    check_peer(&stream).map_err(|err| format!("not our agent: {err}"))?;
    let broken = |err: std::io::Error| format!("cannot send the job to the agent: {err}");
    write_blocking(&mut stream, &invocation(origin, &place.build)).map_err(broken)?;
    stream
        .set_read_timeout(Some(TAKEN_WITHIN))
        .map_err(broken)?;
    match read_blocking::<AgentReply>(&mut stream).map(|r| r.and_then(|r| r.msg)) {
        Ok(Some(agent_reply::Msg::Taken(_))) => {}
        Ok(Some(agent_reply::Msg::Refused(refused))) => {
            return Err(format!("the agent refused: {}", refused.reason))
        }
        Ok(_) => return Err("the agent closed before taking the job".into()),
        Err(err)
            if matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            retire_hung(&place);
            return Err(format!("the agent did not answer in {TAKEN_WITHIN:?}"));
        }
        Err(err) => return Err(format!("the agent failed: {err}")),
    }
    stream.set_read_timeout(None).map_err(broken)?;
    // The agent waits for them; a job it took but could not get them for
    // it drops when we close.
    send_fds(&stream, &PASSED)
        .map_err(|err| format!("cannot pass descriptors to the agent: {err}"))?;
    Ok(stream)
}

/// The first message: how we were started.
fn invocation(origin: &Origin, build: &str) -> AgentRequest {
    let bytes = |s: &std::ffi::OsStr| bytes::Bytes::copy_from_slice(s.as_bytes());
    let cwd = origin.cwd.as_deref().unwrap_or(Path::new("/"));
    AgentRequest {
        msg: Some(agent_request::Msg::Invocation(AgentInvocation {
            build: build.to_owned(),
            argv: origin.argv.iter().map(|a| bytes(a)).collect(),
            env: (origin.env.iter())
                .map(|(name, value)| EnvVar {
                    name: bytes(name),
                    value: bytes(value),
                })
                .collect(),
            cwd: bytes(cwd.as_os_str()),
            umask: origin.umask,
            pid: origin.pid,
            exe: bytes(origin.exe.as_os_str()),
            stdin_terminal: origin.stdin_terminal,
            stdin_null: origin.stdin_null,
            build_scope: origin.build_scope.clone(),
        })),
    }
}

/// Moves a hung agent aside: without its socket and lock file the next
/// `mexec` starts a fresh one, and the old one, should it wake, takes no
/// more jobs and exits after those it has.
fn retire_hung(place: &Place) {
    let _ = std::fs::remove_file(&place.socket);
    let _ = std::fs::remove_file(&place.lock);
}

/// Connects to the agent, starting one when none listens.
fn connect_or_start(place: &Place) -> Result<UnixStream, String> {
    match UnixStream::connect(&place.socket) {
        Ok(stream) => return Ok(stream),
        Err(err)
            if matches!(
                err.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) => {}
        Err(err) => return Err(format!("cannot reach the agent: {err}")),
    }
    start(place).map_err(|err| format!("cannot start the agent: {err}"))?;
    let deadline = Instant::now() + START_WITHIN;
    let mut pause = Duration::from_micros(500);
    loop {
        std::thread::sleep(pause);
        if let Ok(stream) = UnixStream::connect(&place.socket) {
            return Ok(stream);
        }
        if Instant::now() >= deadline {
            return Err(format!("the agent did not start within {START_WITHIN:?}"));
        }
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Starts the agent: the whole client, detached, with no descriptors of
/// ours (it must not hold make's pipes open).
fn start(place: &Place) -> std::io::Result<()> {
    crate::placement::SharedState::create_private_dir(&place.dir)?;
    std::process::Command::new(crate::binaries::full_client())
        .env(SERVE_VARIABLE, "1")
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(drop)
}

/// Refuses an agent of another user: it would get our descriptors and our
/// job.
fn check_peer(stream: &UnixStream) -> std::io::Result<()> {
    let peer = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)?;
    if peer.uid() != nix::unistd::getuid().as_raw() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("the agent's socket belongs to uid {}", peer.uid()),
        ));
    }
    Ok(())
}
