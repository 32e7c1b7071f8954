//! The job run here, when the agent found no node for it (it has said
//! why on the job's stderr): the command and environment it sent, in our
//! directory and with our standard descriptors, our signals forwarded,
//! and the shell's exit code convention.

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStringExt;

use mexec_proto::v1::AgentRunLocally;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::signals::Signals;
use crate::os;

/// Runs the command and returns its exit code.
pub fn run(command: AgentRunLocally, signals: &Signals) -> i32 {
    let os = |bytes: &bytes::Bytes| OsString::from_vec(bytes.to_vec());
    let argv: Vec<OsString> = command.argv.iter().map(os).collect();
    let Some((program, args)) = argv.split_first() else {
        return crate::EXIT_MEXEC_FAILURE;
    };
    let name = program.to_string_lossy();
    // std clears the signal mask for the child: it gets its signals itself.
    let spawned = std::process::Command::new(program)
        .args(args)
        .env_clear()
        .envs(
            command
                .env
                .iter()
                .map(|var| (os(&var.name), os(&var.value))),
        )
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => {
            let (code, message) = crate::local::spawn_failure(&name, &err);
            super::say(format_args!("{message}"));
            return code;
        }
    };
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return os::exit_code(status),
            Ok(None) => {}
            Err(err) => {
                super::say(format_args!("lost track of local {name}: {err}"));
                return crate::EXIT_MEXEC_FAILURE;
            }
        }
        // SIGCHLD is among the signals, so its exit wakes this poll.
        let mut ready = [PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut ready, PollTimeout::NONE);
        while let Some(signo) = signals.next() {
            if signo != nix::sys::signal::Signal::SIGCHLD as i32 {
                os::send_signal(child.id(), signo);
            }
        }
    }
}
