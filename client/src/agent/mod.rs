//! The build host's agent: one process per user (and per `mexec` build)
//! that runs the jobs of that user's `mexec` processes, in the line of
//! icecream's local daemon and sccache's server. It keeps the nodes' load
//! and reservations in memory, and `mexec` becomes a small process that
//! hands it the job and its stdout and stderr, forwards signals and exits
//! with the job's status. The first `mexec` that finds no agent starts one;
//! it exits after an idle period. Anything wrong with the agent costs a job
//! nothing: `mexec` runs it directly, as without an agent, and says why in
//! the job log. `MEXEC_AGENT=0` turns it off. The `mexec` side is the
//! crate's `front` (Linux only: elsewhere `mexec` always runs directly).
//! The agent makes each job from how its `mexec` was started, exactly as a
//! `mexec` process makes its own (`origin`, `invocation`, `settings`,
//! `job`).
//!
//! Layout:
//!
//! What a job run in the agent does differently (where output, messages,
//! signals and a local run go) is in the crate's `job_hooks`, which the
//! pipeline's modules consult; `placement` keeps its state in memory here.
//! - `place`: where the agent's socket and lock live, and which build they
//!   belong to.
//! - `wire`: the framing of the socket's messages and the passing of
//!   descriptors.
//! - `serve`: the agent process: one socket, one task per job, idle exit.
//! - `session`: one job in the agent, from its message to its exit.
//! - `farms`: the farms the agent's jobs go to, resolved once each.

#[cfg(unix)]
mod farms;
#[cfg(unix)]
mod place;
#[cfg(unix)]
mod serve;
#[cfg(unix)]
mod session;
#[cfg(unix)]
mod wire;

/// What the `mexec` front uses: where the agent is, and the socket's
/// messages.
#[cfg(unix)]
pub use place::Place;
/// The agent process's `main` (`mexec-client` with `SERVE_VARIABLE` set).
#[cfg(unix)]
pub use serve::main as run_agent;
#[cfg(unix)]
pub use wire::{read_blocking, send_fds, write_blocking, PASSED};

/// Set in the environment of the process `mexec` starts as the agent.
pub const SERVE_VARIABLE: &str = "MEXEC_AGENT_SERVE";

/// Whether `MEXEC_AGENT` leaves the agent on (unset, or anything but a
/// "no").
pub fn enabled() -> bool {
    match std::env::var("MEXEC_AGENT") {
        Ok(value) => !matches!(
            value.to_ascii_lowercase().as_str(),
            "0" | "off" | "no" | "false"
        ),
        Err(_) => true,
    }
}
