//! The `mexec` process on Linux: a small front that make starts for every
//! job. It hands the agent how it was started (the agent makes the job of
//! that, as the whole client would), passes it its stdout and stderr,
//! relays its signals and stdin, runs the job here when the agent says so,
//! and exits with the job's status. Where the agent does not take the job
//! (turned off, cannot be started, hung, or the command line is not a job
//! for it: `--status`, `--help`, a bad option), the front becomes the
//! whole client, `mexec-client`, with the reason, and that runs the job
//! directly or says what is wrong. The front links no async runtime, no
//! RPC stack and no option parser, so that it starts in a fraction of the
//! whole client's time.
//!
//! - `agent_socket`: reaching the agent (starting it when there is none),
//!   and handing it the job.
//! - `follow`: from the agent's "taken" to the job's exit.
//! - `local_run`: the job run here, when no node can take it.
//! - `signals`: the forwarded signals, read from a signalfd.
//! - `direct`: becoming the whole client.

mod agent_socket;
mod direct;
mod follow;
mod local_run;
mod signals;

use crate::origin::Origin;

/// The front's `main`; returns the exit code.
pub fn main() -> i32 {
    if !crate::agent::enabled() {
        return direct::become_full_client("MEXEC_AGENT=0", None);
    }
    let origin = Origin::of_this_process();
    if mexec_common::farm_job::outer_job(&origin.env).is_some() {
        // The whole client runs it here. No agent: one started from a job
        // would be part of that job, and end with it.
        return direct::become_full_client("inside a farm job", None);
    }
    let Ok(cwd) = origin.cwd.clone() else {
        // The whole client says what is wrong, or runs what needs no
        // directory (`--help`).
        return direct::become_full_client("no working directory", None);
    };
    let stream = match agent_socket::hand_over(&origin) {
        Ok(stream) => stream,
        Err(reason) => return direct::become_full_client(&reason, None),
    };
    match follow::follow(stream) {
        follow::Ended::Exit(code) => {
            crate::renew::directory(&cwd);
            code
        }
        // Its connections to the nodes went with it, and the job with
        // them: the whole client runs it again where that is safe.
        follow::Ended::Lost { stdin_read } => {
            let lost = if stdin_read { "stdin" } else { "1" };
            direct::become_full_client(
                "the agent was lost during the job; ran it again",
                Some(lost),
            )
        }
    }
}

/// Prints a `mexec: ...` line on stderr.
fn say(message: std::fmt::Arguments<'_>) {
    eprintln!("mexec: {message}");
}
