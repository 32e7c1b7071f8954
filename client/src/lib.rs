//! The `mexec` client: started once per command (often by make), it picks
//! the least-loaded node, runs the command there in the same working
//! directory, and behaves as the local command would.
//!
//! Layout:
//! - `invocation`: which form we were started in (`mexec -- cmd`, `mexec cmd`,
//!   `CC=mexec`, a masquerade symlink) and the command that follows.
//! - `settings`: flags, `MEXEC_*` variables and the TOML config file.
//! - `masquerade`: finding the real compiler behind a symlink named `gcc`.
//! - `job`: the job spec built from this process's cwd, environment, umask.
//! - `path_map`: `--map LOCAL=REMOTE`, this machine's paths to the executors'.
//! - `remote_view`: the job as the executors see it (mapped paths, and the
//!   environment a client on another operating system sends).
//! - `placement`: choosing a node, with load shared between client processes.
//! - `remote`: running the job on one node and relaying everything.
//! - `gatekeeper`: leases, the cached member list, the cluster status.
//! - `output`: writing (or holding back, for retries) the job's output.
//! - `console_text`: output for a Windows console, which takes only UTF-8.
//! - `driver`: the retry loop: next node, back-off, local fallback.
//! - `local`: running the command here when no node can.
//! - `status`: `mexec --status`.
//! - `joblog`: one JSON line per job for scripts and summaries.
//! - `os`: the operating-system specific parts (signals, umask, processes).

pub mod console_text;
pub mod driver;
pub mod gatekeeper;
pub mod invocation;
pub mod job;
pub mod joblog;
pub mod local;
pub mod masquerade;
pub mod os;
pub mod output;
pub mod path_map;
pub mod placement;
pub mod remote;
pub mod remote_view;
pub mod settings;
pub mod status;

/// mexec's own failures exit with this code, as ssh does.
pub const EXIT_MEXEC_FAILURE: i32 = 255;

/// Prints a `mexec: ...` line on stderr.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        eprintln!("mexec: {}", format_args!($($arg)*))
    };
}
