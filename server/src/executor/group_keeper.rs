//! Jobs die with the daemon, however it dies. A daemon that is SIGKILLed or
//! killed by the OOM killer cannot kill its jobs' process groups itself, and
//! PR_SET_PDEATHSIG reaches only each group's leader: a compiler's `cc1` and
//! `as` would run on, writing the object file while the client's retry on
//! another node writes the same file.
//!
//! So the daemon starts a small keeper process and tells it over a pipe
//! which process groups are running jobs. When the pipe closes, the daemon
//! is gone, and the keeper SIGKILLs every group it still holds, then ends
//! the daemon's job cgroups (`cgroup`), which holds what left its group
//! (`setsid`, a double fork), then exits. It costs one short pipe write per
//! job start and end.
//!
//! The keeper is the `mexecd` binary started in keeper mode: `mexecd`
//! re-executes itself (`GroupKeeper::start(current_exe)`), and a test that
//! runs an executor inside its own process starts the built `mexecd`.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use nix::sys::signal::{killpg, signal, SigHandler, Signal};
use nix::unistd::Pid;

/// Set in the keeper's environment: "you are the keeper".
const KEEPER_ENV: &str = "MEXECD_GROUP_KEEPER";

/// Set in the keeper's environment: the daemon's directory of job cgroups.
const CGROUPS_ENV: &str = "MEXECD_GROUP_KEEPER_CGROUPS";

/// The daemon's end: registers and forgets the groups of running jobs.
#[derive(Debug)]
pub struct GroupKeeper {
    pipe: Mutex<std::process::ChildStdin>,
    _keeper: Child,
}

/// A job's group, held by the keeper until this is dropped; drop it only
/// after the group has been killed.
#[derive(Debug)]
pub struct KeptGroup {
    keeper: Arc<GroupKeeper>,
    pgid: u32,
}

impl GroupKeeper {
    /// Starts `mexecd` (the binary at `program`) as the keeper process,
    /// which also ends the job cgroups below `cgroups`.
    pub fn start(program: &Path, cgroups: Option<&Path>) -> std::io::Result<Arc<GroupKeeper>> {
        let mut command = Command::new(program);
        // What `ps` shows, so nobody takes it for a second daemon.
        command
            .arg0("mexecd: group keeper")
            .env(KEEPER_ENV, "1")
            .env_remove(CGROUPS_ENV)
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        if let Some(cgroups) = cgroups {
            command.env(CGROUPS_ENV, cgroups);
        }
        let mut keeper = command.spawn()?;
        // Rust opens pipes close-on-exec, so jobs never hold the write
        // end open: the daemon's exit is the pipe's end.
        let pipe = keeper.stdin.take().expect("piped stdin");
        Ok(Arc::new(GroupKeeper {
            pipe: Mutex::new(pipe),
            _keeper: keeper,
        }))
    }

    /// Hands the group `pgid` to the keeper.
    pub fn keep(self: &Arc<Self>, pgid: u32) -> KeptGroup {
        self.send(&format!("+{pgid}\n"));
        KeptGroup {
            keeper: Arc::clone(self),
            pgid,
        }
    }

    fn send(&self, line: &str) {
        // A line is far below PIPE_BUF, so the write is atomic and, with
        // the keeper reading, never blocks for long. A dead keeper only
        // loses the protection; the job itself is unaffected.
        let mut pipe = self.pipe.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(err) = pipe.write_all(line.as_bytes()) {
            tracing::warn!(%err, "the group keeper is gone; jobs may outlive a crash");
        }
    }
}

impl Drop for KeptGroup {
    fn drop(&mut self) {
        self.keeper.send(&format!("-{}\n", self.pgid));
    }
}

/// In the keeper process (started with `KEEPER_ENV`): serves the daemon
/// and exits, never returning. Elsewhere returns at once.
pub fn serve_if_keeper() {
    if std::env::var_os(KEEPER_ENV).is_none() {
        return;
    }
    // A Ctrl-C in the daemon's terminal or a signal to its process group
    // must not take the keeper away before the daemon has drained.
    for ignored in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: SIG_IGN installs no handler, so no code of ours runs in
        // signal context.
        let _ = unsafe { signal(ignored, SigHandler::SigIgn) };
    }
    let mut groups: HashSet<i32> = HashSet::new();
    for line in BufReader::new(std::io::stdin().lock()).lines() {
        let Ok(line) = line else { break };
        let (sign, pgid) = line.split_at(line.len().min(1));
        match (sign, pgid.parse::<i32>()) {
            ("+", Ok(pgid)) if pgid > 1 => {
                groups.insert(pgid);
            }
            ("-", Ok(pgid)) => {
                groups.remove(&pgid);
            }
            _ => {}
        }
    }
    // The daemon is gone: whatever it was running goes too.
    for pgid in groups {
        // A group that is already gone gives ESRCH, which is fine.
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
    if let Some(cgroups) = std::env::var_os(CGROUPS_ENV) {
        super::job_cgroup::end_all(Path::new(&cgroups));
    }
    std::process::exit(0);
}
