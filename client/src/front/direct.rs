//! Becoming the whole client: `mexec-client` beside this binary, started
//! in our place with our command line and environment, and told why the
//! job did not go through the agent (for the job log and `--explain`).

use std::os::unix::process::CommandExt;

use crate::binaries;
use crate::origin::{AGENT_LOST_VARIABLE, DIRECT_REASON_VARIABLE};
use crate::EXIT_MEXEC_FAILURE;

/// Replaces this process with the whole client; returns only when that
/// cannot be started, with our exit code.
pub fn become_full_client(reason: &str, agent_lost: Option<&str>) -> i32 {
    let full = binaries::full_client();
    let mut argv = std::env::args_os();
    let mut command = std::process::Command::new(&full);
    if let Some(argv0) = argv.next() {
        // The form (a masquerade's name) is read from argv[0].
        command.arg0(argv0);
    }
    command.args(argv).env(DIRECT_REASON_VARIABLE, reason);
    if let Some(lost) = agent_lost {
        command.env(AGENT_LOST_VARIABLE, lost);
    }
    // Our signal mask is reset for it, as for any program std starts.
    let err = command.exec();
    super::say(format_args!(
        "cannot run the whole client {} ({err}); it belongs beside {}",
        full.display(),
        binaries::front().display()
    ));
    EXIT_MEXEC_FAILURE
}
