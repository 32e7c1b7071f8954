//! The whole client's `main`: `mexec-client`, which the front becomes
//! when the agent does not take a job (and `mexec` itself where there is
//! no front). It runs the job directly, shows `--status` and `--usage`,
//! says what is wrong with a command line, and serves as the agent.

use crate::invocation::{self, Invocation};
use crate::job::Job;
use crate::origin::{Origin, AGENT_LOST_VARIABLE, DIRECT_REASON_VARIABLE};
use crate::settings::Settings;
use crate::{retry, say, status, usage, EXIT_MEXEC_FAILURE};

/// Returns the process's exit code.
pub fn main() -> i32 {
    #[cfg(unix)]
    if std::env::var_os(crate::agent::SERVE_VARIABLE).is_some() {
        return crate::agent::run_agent();
    }
    // First: it reads the umask, before any thread starts.
    let origin = Origin::of_this_process();
    let invocation = match invocation::parse(&origin) {
        Ok(invocation) => invocation,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                EXIT_MEXEC_FAILURE
            } else {
                0
            };
        }
    };
    let settings = match Settings::resolve(&invocation.flags, &origin) {
        Ok(settings) => settings,
        Err(err) => {
            say!("{err}");
            return EXIT_MEXEC_FAILURE;
        }
    };
    let connector = settings.farm.connector();
    let flags = &invocation.flags;
    if flags.status && flags.watch {
        return status::watch(&settings.farm, &connector);
    }
    if flags.status {
        return status::show(&settings.farm, &connector, flags.json);
    }
    if flags.usage {
        return usage::show(&settings.farm, &connector, flags.json);
    }
    run(&invocation, &settings, &origin, &connector)
}

/// Makes the job and runs it directly.
fn run(
    invocation: &Invocation,
    settings: &Settings,
    origin: &Origin,
    connector: &mexec_common::connector::Connector,
) -> i32 {
    let job = match Job::new(invocation, settings, origin) {
        Ok(job) => job,
        Err(err) => {
            say!("{err}");
            return err.exit_code();
        }
    };
    if let Some(code) = after_lost_agent(&job) {
        return code;
    }
    let reason = std::env::var(DIRECT_REASON_VARIABLE).unwrap_or_else(|_| "direct".into());
    if settings.verbose && reason != "direct" {
        say!("running directly: {reason}");
    }
    crate::job_hooks::set_direct_reason(reason);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            say!("cannot start: {err}");
            return EXIT_MEXEC_FAILURE;
        }
    };
    let code = runtime.block_on(retry::run(settings, connector, &job));
    // A stdin read may still be blocked on a terminal or an idle pipe; it
    // cannot be cancelled, so do not wait for it.
    runtime.shutdown_background();
    crate::renew::directory(&job.cwd);
    code
}

/// After the agent was lost under the job (the front says so): `None` to
/// run it again, which is safe for a repeatable job that got none of our
/// stdin, else the exit code of a job lost as with a lost node.
fn after_lost_agent(job: &Job) -> Option<i32> {
    let lost = std::env::var(AGENT_LOST_VARIABLE).ok()?;
    if job.repeatable && lost != "stdin" {
        return None;
    }
    say!(
        "the agent was lost while running {}; not retried (pass --retry for jobs that are \
         safe to repeat)",
        job.program()
    );
    Some(EXIT_MEXEC_FAILURE)
}
