//! The retry loop around one job: choose a node, run there, and on failure
//! go to the next node, wait for a busy farm, retry a repeatable job whose
//! node was lost, or run locally when no node can take it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use mexec_proto::v1::exit;

use crate::job::Job;
use crate::joblog;
use crate::local;
use crate::os::SignalStream;
use crate::output::Output;
use crate::placement::shared_state::SharedState;
use crate::placement::Placement;
use crate::remote::{self, NotStarted, Outcome};
use crate::settings::Settings;
use crate::{say, EXIT_MEXEC_FAILURE};

/// How often a repeatable job may be retried after losing its node.
const MAX_LOST_RETRIES: u32 = 3;
/// Back-off while every node is full: starts here, doubles, with jitter.
const BUSY_BACKOFF_START: Duration = Duration::from_millis(20);
const BUSY_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Runs `job` on the farm (or here) and returns the exit code for `mexec`.
pub async fn run(settings: &Settings, job: &Job) -> i32 {
    let started = Instant::now();
    let mut signals = match SignalStream::install() {
        Ok(signals) => signals,
        Err(err) => {
            say!("cannot install signal handlers: {err}");
            return EXIT_MEXEC_FAILURE;
        }
    };
    let report = |node: &str, placed: &str, code: i32, retries: u32| {
        if let Some(path) = &settings.joblog {
            let entry = joblog::Entry {
                job_id: &job.job_id,
                program: &job.program(),
                node,
                placed,
                exit_code: code,
                wall_ms: started.elapsed().as_millis() as u64,
                retries,
            };
            joblog::append(path, &entry);
        }
    };
    if settings.nodes.is_empty() {
        return fall_back(
            settings,
            job,
            &mut signals,
            "no nodes are configured (set MEXEC_NODES or --nodes)",
            &report,
        )
        .await;
    }

    let placement = Placement::new(settings.nodes.clone(), SharedState::for_this_user());
    let mut output = Output::new(job.repeatable);
    let mut lost: HashSet<usize> = HashSet::new();
    let mut lost_retries = 0;
    let mut backoff = BUSY_BACKOFF_START;
    loop {
        let mut tried = lost.clone();
        let mut busy = false;
        let mut causes = Vec::new();
        while let Some(choice) = placement.choose(&tried) {
            tried.insert(choice.index);
            let addr = &placement.nodes()[choice.index];
            spawn_refresh(&placement, &choice.refresh, settings);
            if settings.verbose {
                say!("running {} on {}", job.program(), addr.authority());
            }
            let outcome = remote::run_on(
                addr,
                settings.token.as_ref(),
                job,
                &mut output,
                &mut signals,
            )
            .await;
            placement.release(choice.index);
            match outcome {
                Outcome::Finished { node, exit } => {
                    let code = finish(&mut output, &node, &exit).await;
                    report(&node, "remote", code, lost_retries);
                    return code;
                }
                Outcome::NotStarted(NotStarted::Busy(cause)) => {
                    busy = true;
                    if settings.verbose {
                        say!("{cause}");
                    }
                }
                Outcome::NotStarted(NotStarted::Unreachable(cause)) => {
                    placement.mark_down(choice.index);
                    causes.push(format!("{} unreachable: {cause}", addr.authority()));
                }
                Outcome::NotStarted(NotStarted::Refused(cause)) => causes.push(cause),
                Outcome::Lost {
                    node,
                    reason,
                    stdin_consumed,
                } => {
                    placement.mark_down(choice.index);
                    let may_retry = job.repeatable
                        && !stdin_consumed
                        && output.can_restart()
                        && lost_retries < MAX_LOST_RETRIES;
                    if !may_retry {
                        let _ = output.finish().await;
                        say!(
                            "node {node} was lost while running {}: {reason}; not retried{}",
                            job.program(),
                            if job.repeatable {
                                ""
                            } else {
                                " (pass --retry for jobs that are safe to repeat)"
                            }
                        );
                        report(&node, "failed", EXIT_MEXEC_FAILURE, lost_retries);
                        return EXIT_MEXEC_FAILURE;
                    }
                    if settings.verbose {
                        say!(
                            "node {node} was lost while running {} ({reason}); retrying elsewhere",
                            job.program()
                        );
                    }
                    output.discard();
                    lost.insert(choice.index);
                    lost_retries += 1;
                }
                Outcome::Abandoned { signal } => {
                    let _ = output.finish().await;
                    return 128 + signal;
                }
            }
        }
        if busy {
            // A busy farm is not a failure: wait for a slot rather than
            // piling the job onto this machine.
            let jitter = rand::random_range(0..=backoff.as_millis() as u64 / 2);
            tokio::select! {
                _ = tokio::time::sleep(backoff + Duration::from_millis(jitter)) => {}
                signal = signals.next() => return 128 + signal,
            }
            backoff = (backoff * 2).min(BUSY_BACKOFF_MAX);
            continue;
        }
        let why = if causes.is_empty() {
            "every node was lost during the job".to_owned()
        } else {
            causes.join("; ")
        };
        return fall_back(
            settings,
            job,
            &mut signals,
            &format!("no node could run the job ({why})"),
            &report,
        )
        .await;
    }
}

async fn fall_back(
    settings: &Settings,
    job: &Job,
    signals: &mut SignalStream,
    why: &str,
    report: &impl Fn(&str, &str, i32, u32),
) -> i32 {
    if settings.no_local {
        say!("{why}; not running it locally (--no-local)");
        report("", "failed", EXIT_MEXEC_FAILURE, 0);
        return EXIT_MEXEC_FAILURE;
    }
    say!("{why}; running {} locally", job.program());
    let code = local::run(job, signals).await;
    report("local", "local", code, 0);
    code
}

/// Writes what is left of the output and turns the exit status into ours.
async fn finish(output: &mut Output, node: &str, exit: &mexec_proto::v1::Exit) -> i32 {
    let _ = output.finish().await;
    if !exit.error.is_empty() {
        say!("node {node}: {}", exit.error);
    }
    match exit.status {
        Some(exit::Status::Code(code)) => code,
        Some(exit::Status::Signal(signal)) => 128 + signal,
        None => {
            say!("node {node} sent no exit status");
            EXIT_MEXEC_FAILURE
        }
    }
}

/// Fetches stale load reports in the background; a short job may end
/// first, and then the next client does it.
fn spawn_refresh(placement: &Placement, stale: &[usize], settings: &Settings) {
    for &index in stale {
        let addr = placement.nodes()[index].clone();
        let token = settings.token.clone();
        let nodes = placement.nodes().to_vec();
        tokio::spawn(async move {
            if let Ok(report) = remote::load_report(&addr, token.as_ref()).await {
                Placement::new(nodes, SharedState::for_this_user()).record(index, &report);
            }
        });
    }
}
