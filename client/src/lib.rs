//! The `mexec` client: started once per command (often by make), it picks
//! the least-loaded node, runs the command there in the same working
//! directory, and behaves as the local command would.
//!
//! Two binaries (`binaries`): on Linux `mexec` is `front`, which hands each
//! job to the build host's agent (`agent`) or becomes `mexec-client`, the
//! whole client (`cli`); elsewhere `mexec` is the whole client.
//!
//! Layout: the pipeline, in the order a job passes through (each module
//! uses only those before it, and the helpers listed after):
//! - `origin`: how a `mexec` was started (command line, environment,
//!   directory, umask, stdin), read of this process or sent to the agent.
//! - `flags`: the command line, and the same flags from `MEXEC_*` variables.
//! - `invocation`: which form we were started in (`mexec -- cmd`, `mexec cmd`,
//!   `CC=mexec`, a masquerade symlink) and the command that follows.
//! - `path_map`: `--map LOCAL=REMOTE`, this machine's paths to the executors'.
//! - `settings`: flags and variables over the TOML config file.
//! - `masquerade`: finding the real compiler behind a symlink named `gcc`.
//! - `executor_view`: the job as the executors see it (mapped paths, and the
//!   environment a client on another operating system sends).
//! - `toolchain_cache`: our fingerprint of a job's compiler, kept between
//!   jobs in the user's private state directory.
//! - `job`: the whole job, made once from the invocation and the settings.
//! - `outcome`: how an attempt ended: not started, finished, lost.
//! - `failed_call`: what a failed call means, from the refusal kind, the
//!   status code and the error's types.
//! - `member_cache`: the gatekeeper's member list, kept for when it is down.
//! - `lease`: slot leases from the gatekeeper.
//! - `node_run`: running the job at one node (or the relaying gatekeeper)
//!   and relaying everything.
//! - `local`: running the command here when no node can.
//! - `retry`: the retry loop: next node, back-off, another route, local
//!   fallback.
//! - `status`: `mexec --status`.
//! - `status_toolchains`: what it says of each node's compilers (marked
//!   where they are not ours) and properties.
//! - `renew`: after a job, this host's view of its directory renewed.
//! - `cli`: the whole client's `main`.
//! - `front`: the `mexec` front's `main` (Linux).
//!
//! Helpers used along the way:
//! - `placement`: choosing a node, with load shared between client
//!   processes (its `Policy` is one of the flags).
//! - `output`: writing (or holding back, for retries) the job's output.
//! - `port_probe`: what answers at an address where a plain-text call
//!   broke (a web server, a TLS port), so a job that never started is
//!   not reported as "may have run".
//! - `console_text`: output for a Windows console, which takes only UTF-8.
//! - `joblog`: one JSON line per job for scripts and summaries.
//! - `os`: the operating-system specific parts (signals, umask, processes).
//! - `agent`: the build host's agent, which runs the jobs of this user's
//!   `mexec` processes.
//! - `job_hooks`: where a job's output, messages, signals and local run go
//!   when the agent runs it (set by `agent`, read along the pipeline).
//!
//! Every channel is opened through one `Connector` (TLS, token, timeouts),
//! made from the settings in `main` and passed down.

pub mod agent;
pub mod binaries;
pub mod cli;
pub mod console_text;
pub mod executor_view;
pub mod failed_call;
pub mod flags;
#[cfg(target_os = "linux")]
pub mod front;
pub mod invocation;
pub mod job;
pub mod job_hooks;
pub mod joblog;
pub mod lease;
pub mod local;
pub mod masquerade;
pub mod member_cache;
pub mod node_run;
pub mod origin;
pub mod os;
pub mod outcome;
pub mod output;
pub mod path_map;
pub mod placement;
pub mod port_probe;
pub mod renew;
pub mod retry;
pub mod settings;
pub mod status;
pub mod status_toolchains;
pub mod toolchain_cache;
pub mod usage;

/// mexec's own failures exit with this code, as ssh does.
pub const EXIT_MEXEC_FAILURE: i32 = 255;

/// The C `main` of a client binary on Linux, which runs `$run` and exits
/// with its code. The standard library's start-up finds the main thread's
/// stack by reading and parsing /proc/self/maps (glibc's
/// pthread_getattr_np), a tenth of the client's CPU per job in a profile,
/// for a guard-page message on stack overflow; a binary with this `main`
/// (and `#![no_main]`) skips it, and `os::start_up` does what else of it
/// mexec relies on.
#[macro_export]
macro_rules! c_main {
    ($run:path) => {
        #[cfg(all(target_os = "linux", not(test)))]
        #[unsafe(no_mangle)]
        extern "C" fn main(
            _argc: std::ffi::c_int,
            _argv: *const *const std::ffi::c_char,
        ) -> std::ffi::c_int {
            $crate::os::start_up();
            std::process::exit($run());
        }
    };
}

/// Prints a `mexec: ...` line on stderr (the job's `mexec`'s, in the agent).
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::job_hooks::say(format_args!($($arg)*))
    };
}
