//! How a `mexec` was started: its command line, environment, working
//! directory, umask and standard input, the build it belongs to and the
//! binary it runs from. A `mexec` process reads them of itself; the agent
//! gets them in the invocation a `mexec` hands it and makes the same job
//! from them, so that nothing of the agent's own process (its directory,
//! its environment) leaks into a job.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::os;

/// What a job is made from, besides the settings.
#[derive(Debug)]
pub struct Origin {
    /// The command line, argv[0] included.
    pub argv: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    /// The working directory, or why it could not be read (reported only
    /// when a job needs it: `mexec --help` works in a removed directory).
    pub cwd: Result<PathBuf, String>,
    pub umask: u32,
    /// The `mexec` process (job ids carry it).
    pub pid: u32,
    /// The `mexec` binary that was started: a masquerade must not find it
    /// on PATH again.
    pub exe: PathBuf,
    pub stdin_terminal: bool,
    pub stdin_null: bool,
    /// What tells this build from others on the host (`os::build_scope`).
    pub build_scope: String,
    /// Whether `env` is this process's own environment, which clap may
    /// read for the options' `MEXEC_*` defaults (and show in `--help`).
    pub own_process: bool,
}

/// Variables a `mexec` front sets for the full client it hands a job to;
/// they are not the job's and never reach it.
pub const HANDOFF_VARIABLES: [&str; 2] = [DIRECT_REASON_VARIABLE, AGENT_LOST_VARIABLE];
/// Why the front ran the job directly rather than through the agent.
pub const DIRECT_REASON_VARIABLE: &str = "MEXEC_DIRECT_REASON";
/// Set when the agent was lost during the job: "1", or "stdin" when some
/// of our stdin had gone to the job (which then must not run again).
pub const AGENT_LOST_VARIABLE: &str = "MEXEC_AGENT_LOST";

impl Origin {
    /// This process's. Reads the umask, so it must come before any other
    /// thread starts.
    pub fn of_this_process() -> Origin {
        let env: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(name, _)| !HANDOFF_VARIABLES.iter().any(|v| name == v))
            .collect();
        Origin {
            argv: std::env::args_os().collect(),
            env,
            cwd: std::env::current_dir().map_err(|err| err.to_string()),
            umask: os::current_umask(),
            pid: std::process::id(),
            exe: crate::binaries::front(),
            stdin_terminal: os::stdin_is_terminal(),
            stdin_null: os::stdin_is_null(),
            build_scope: os::build_scope().to_string(),
            own_process: true,
        }
    }

    /// The variable `name` of the job's environment.
    pub fn var(&self, name: &str) -> Option<OsString> {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    /// The variable `name` when it is set and valid Unicode (as
    /// `std::env::var` reads it).
    pub fn var_text(&self, name: &str) -> Option<String> {
        self.var(name)?.into_string().ok()
    }
}
