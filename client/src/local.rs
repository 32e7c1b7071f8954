//! Running the command on this machine, when no node can: same stdio,
//! forwarded signals, the shell's exit code convention.

use tokio::process::Command;

use crate::job::Job;
use crate::os::{self, SignalStream};

/// Runs `job` here and returns its exit code.
pub async fn run(job: &Job, signals: &mut SignalStream) -> i32 {
    // In the agent the job's `mexec` runs it, with its own stdio and
    // process group.
    if let Some(code) = crate::job_hooks::run_locally_elsewhere().await {
        return code;
    }
    let mut command = Command::new(&job.argv[0]);
    command
        .args(&job.argv[1..])
        .env_clear()
        .envs(job.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&job.cwd);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => {
            let (code, message) = spawn_failure(&job.program(), &err);
            crate::say!("{message}");
            return code;
        }
    };
    loop {
        tokio::select! {
            status = child.wait() => {
                return match status {
                    Ok(status) => os::exit_code(status),
                    Err(err) => {
                        crate::say!("lost track of local {}: {err}", job.program());
                        crate::EXIT_MEXEC_FAILURE
                    }
                };
            }
            signal = signals.next() => {
                if let Some(pid) = child.id() {
                    os::send_signal(pid, signal);
                }
            }
        }
    }
}

/// The exit code and message of a command that could not be started here,
/// as a shell gives them: 127 for a command not found, else 126.
pub fn spawn_failure(program: &str, err: &std::io::Error) -> (i32, String) {
    match err.kind() {
        std::io::ErrorKind::NotFound => (127, format!("command not found: {program}")),
        _ => (126, format!("cannot run {program} locally: {err}")),
    }
}
