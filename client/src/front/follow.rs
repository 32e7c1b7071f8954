//! From the agent's "taken" to the job's exit, in one poll loop: the
//! agent's messages, our signals (relayed to the job), and our stdin once
//! the job wants it (relayed in chunks). The job's stdout and stderr do
//! not pass through here: the agent writes them to the descriptors we
//! passed it.

use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use mexec_proto::v1::{
    agent_reply, agent_request, AgentLocalExit, AgentReply, AgentRequest, AgentSignal,
    AgentStdinEof,
};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::local_run;
use super::signals::Signals;
use crate::agent::{read_blocking, write_blocking};
use crate::EXIT_MEXEC_FAILURE;

/// How the job ended for us.
pub enum Ended {
    /// Exit with this code.
    Exit(i32),
    /// The agent went away under the job; `stdin_read` says whether any of
    /// our stdin had gone to it (then it must not run again).
    Lost { stdin_read: bool },
}

/// Whether our stdin goes to the job yet.
#[derive(PartialEq)]
enum Stdin {
    NotWanted,
    Relaying,
    Ended,
}

/// Relays until the agent says how the job ended.
pub fn follow(mut stream: UnixStream) -> Ended {
    let signals = match Signals::block() {
        Ok(signals) => signals,
        Err(err) => {
            super::say(format_args!("cannot block signals: {err}"));
            return Ended::Exit(EXIT_MEXEC_FAILURE);
        }
    };
    let ended = relay(&mut stream, &signals);
    signals.restore();
    ended
}

fn relay(stream: &mut UnixStream, signals: &Signals) -> Ended {
    let mut stdin = Stdin::NotWanted;
    let mut stdin_read = false;
    let our_stdin = std::io::stdin();
    let silence = silence_limit();
    let mut heard = Instant::now();
    loop {
        let Some(wait) = silence.checked_sub(heard.elapsed()) else {
            // The agent sends a message every second while it runs the
            // job: it hangs. Killed, its connections close and the node
            // kills the job, which may then run again.
            kill_agent(stream, silence);
            return Ended::Lost { stdin_read };
        };
        let (agent, signal, input) = {
            let mut fds = vec![
                PollFd::new(stream.as_fd(), PollFlags::POLLIN),
                PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            ];
            if stdin == Stdin::Relaying {
                fds.push(PollFd::new(our_stdin.as_fd(), PollFlags::POLLIN));
            }
            let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
            if let Err(err) = poll(&mut fds, timeout) {
                super::say(format_args!("lost track of the agent: {err}"));
                return Ended::Exit(EXIT_MEXEC_FAILURE);
            }
            let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
            (
                ready(&fds[0]),
                ready(&fds[1]),
                fds.get(2).is_some_and(ready),
            )
        };
        if signal {
            forward_signals(stream, signals);
        }
        if input {
            match relay_stdin_chunk(stream, &our_stdin) {
                true => stdin_read = true,
                false => stdin = Stdin::Ended,
            }
        }
        if !agent {
            continue;
        }
        let reply = read_blocking::<AgentReply>(stream);
        heard = Instant::now();
        match reply.ok().flatten().and_then(|reply| reply.msg) {
            Some(agent_reply::Msg::Alive(_)) => {}
            Some(agent_reply::Msg::Exit(exit)) => return Ended::Exit(exit.code),
            Some(agent_reply::Msg::RunLocally(command)) => {
                let code = local_run::run(command, signals);
                // The agent's messages waited meanwhile.
                heard = Instant::now();
                let exit = agent_request::Msg::LocalExit(AgentLocalExit { code });
                if write_blocking(stream, &AgentRequest { msg: Some(exit) }).is_err() {
                    return Ended::Exit(code);
                }
            }
            Some(agent_reply::Msg::StdinWanted(_)) => {
                if stdin == Stdin::NotWanted {
                    stdin = Stdin::Relaying;
                }
            }
            Some(agent_reply::Msg::Taken(_) | agent_reply::Msg::Refused(_)) | None => {
                return Ended::Lost { stdin_read }
            }
        }
    }
}

/// Sends the agent the signals that arrived.
fn forward_signals(stream: &mut UnixStream, signals: &Signals) {
    while let Some(signo) = signals.next() {
        // SIGCHLD is for a local run; here it can only be an agent we
        // started that found another one running, and left.
        if signo != nix::sys::signal::Signal::SIGCHLD as i32 {
            send(stream, agent_request::Msg::Signal(AgentSignal { signo }));
        }
    }
}

/// Sends the agent the next chunk of our stdin; `false` at its end (the
/// agent is told).
fn relay_stdin_chunk(stream: &mut UnixStream, stdin: &std::io::Stdin) -> bool {
    let mut chunk = vec![0u8; crate::node_run::STDIN_CHUNK];
    match stdin.lock().read(&mut chunk) {
        Ok(n) if n > 0 => {
            chunk.truncate(n);
            send(stream, agent_request::Msg::Stdin(chunk.into()));
            true
        }
        _ => {
            send(stream, agent_request::Msg::StdinEof(AgentStdinEof {}));
            false
        }
    }
}

/// How long the agent may say nothing during a job before it is taken
/// for hung (`MEXEC_AGENT_SILENCE_SECS`, default 10; it speaks every
/// second).
fn silence_limit() -> Duration {
    std::env::var("MEXEC_AGENT_SILENCE_SECS")
        .ok()
        .and_then(|secs| secs.parse::<f64>().ok())
        .filter(|secs| secs.is_finite() && *secs > 0.0)
        .map_or(DEFAULT_SILENCE, Duration::from_secs_f64)
}

const DEFAULT_SILENCE: Duration = Duration::from_secs(10);

/// Kills the agent at the other end of `stream` (SO_PEERCRED names it).
fn kill_agent(stream: &UnixStream, silent_for: Duration) {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    if let Ok(peer) = getsockopt(stream, PeerCredentials) {
        super::say(format_args!(
            "the agent (pid {}) said nothing for {silent_for:?}; killed it",
            peer.pid()
        ));
        crate::os::send_signal(peer.pid() as u32, nix::sys::signal::Signal::SIGKILL as i32);
    }
}

/// Sends one message; a closed socket shows on the read side.
fn send(stream: &mut UnixStream, msg: agent_request::Msg) {
    let _ = write_blocking(stream, &AgentRequest { msg: Some(msg) });
}
