//! The retry loop around one job: ask the route where to go, run there,
//! and follow where the outcome leads: the next node, a back-off while the
//! farm is busy, a rerun of a repeatable job whose node was lost, another
//! way to the farm, or a local run when no node can take the job (or the
//! job is itself inside a farm job).
//!
//! Layout:
//! - `route`: the ways to the farm (direct, leased, relayed), each as where
//!   the next attempt goes and what an outcome leads to.

mod route;

use std::time::{Duration, Instant};

use mexec_common::connector::Connector;
use mexec_proto::v1::exit;

use crate::job::Job;
use crate::joblog;
use crate::local;
use crate::node_run;
use crate::os::SignalStream;
use crate::outcome::Outcome;
use crate::output::Output;
use crate::settings::Settings;
use crate::{say, EXIT_MEXEC_FAILURE};
use route::{Attempt, Context, Route, Step};

/// How often a repeatable job may be retried after losing its node.
const MAX_LOST_RETRIES: u32 = 3;
/// Back-off while every node is full: starts here, doubles, with jitter.
const BUSY_BACKOFF_START: Duration = Duration::from_millis(20);
const BUSY_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Runs `job` on the farm (or here) and returns the exit code for `mexec`.
pub async fn run(settings: &Settings, connector: &Connector, job: &Job) -> i32 {
    let mut signals = match SignalStream::install() {
        Ok(signals) => signals,
        Err(err) => {
            say!("cannot install signal handlers: {err}");
            return EXIT_MEXEC_FAILURE;
        }
    };
    let mut run = JobRun {
        settings,
        connector,
        job,
        signals: &mut signals,
        output: Output::new(job.repeatable),
        started: Instant::now(),
        lost_retries: 0,
        backoff: BUSY_BACKOFF_START,
    };
    if let Some(outer) = mexec_common::farm_job::outer_job(&job.env) {
        return run.inside_farm_job(&outer.to_string_lossy()).await;
    }
    run.drive(Route::for_settings(settings)).await
}

struct JobRun<'a> {
    settings: &'a Settings,
    connector: &'a Connector,
    job: &'a Job,
    signals: &'a mut SignalStream,
    output: Output,
    started: Instant,
    lost_retries: u32,
    backoff: Duration,
}

impl<'a> JobRun<'a> {
    /// Follows the steps from `route` until the job is over.
    async fn drive(&mut self, mut route: Route) -> i32 {
        let mut step = Step::Again;
        loop {
            step = match step {
                Step::Again => route.next(self.context(), self.signals).await,
                Step::Run(attempt) => {
                    let outcome = self.attempt(&attempt).await;
                    route.after(self.context(), outcome)
                }
                Step::Wait => match self.wait_for_slot().await {
                    Some(code) => return code,
                    None => Step::Again,
                },
                Step::Switch(next) => {
                    route = *next;
                    Step::Again
                }
                Step::Lost {
                    node,
                    reason,
                    stdin_consumed,
                } => match self.after_lost(&node, &reason, stdin_consumed).await {
                    Some(code) => return code,
                    None => Step::Again,
                },
                Step::Finished { node, exit } => return self.finish(&node, &exit).await,
                Step::Abandon(signal) => return self.abandon(signal).await,
                Step::FallBack(why) => return self.fall_back(&why).await,
            };
        }
    }

    fn context(&self) -> Context<'a> {
        Context {
            settings: self.settings,
            connector: self.connector,
            job: self.job,
        }
    }

    async fn attempt(&mut self, attempt: &Attempt) -> Outcome {
        let (connector, job) = (self.connector, self.job);
        node_run::run_on(
            attempt.target(),
            connector,
            job,
            &mut self.output,
            self.signals,
        )
        .await
    }

    /// A node was lost mid-job: `None` to retry, as the job is safe to
    /// repeat, else the exit code.
    async fn after_lost(&mut self, node: &str, reason: &str, stdin_consumed: bool) -> Option<i32> {
        let may_retry = self.job.repeatable
            && !stdin_consumed
            && self.output.can_restart()
            && self.lost_retries < MAX_LOST_RETRIES;
        if !may_retry {
            let _ = self.output.finish().await;
            let hint = if self.job.repeatable {
                ""
            } else {
                " (pass --retry for jobs that are safe to repeat)"
            };
            say!(
                "node {node} was lost while running {}: {reason}; not retried{hint}",
                self.job.program()
            );
            self.report(node, "failed", EXIT_MEXEC_FAILURE);
            return Some(EXIT_MEXEC_FAILURE);
        }
        self.context().explain(&format!(
            "node {node} was lost while running {} ({reason}); retrying elsewhere",
            self.job.program()
        ));
        self.output.discard();
        self.lost_retries += 1;
        None
    }

    /// A busy farm is not a failure: wait for a slot rather than piling
    /// the job onto this machine. `Some` exit code when a signal came.
    async fn wait_for_slot(&mut self) -> Option<i32> {
        let jitter = rand::random_range(0..=self.backoff.as_millis() as u64 / 2);
        let pause = self.backoff + Duration::from_millis(jitter);
        self.backoff = (self.backoff * 2).min(BUSY_BACKOFF_MAX);
        tokio::select! {
            _ = tokio::time::sleep(pause) => None,
            signal = self.signals.next() => Some(128 + signal),
        }
    }

    async fn abandon(&mut self, signal: i32) -> i32 {
        let _ = self.output.finish().await;
        128 + signal
    }

    /// A `mexec` that a farm job started: the command runs here, on that
    /// job's node and in its slot (`mexec_common::farm_job` says why).
    async fn inside_farm_job(&mut self, outer: &str) -> i32 {
        self.context().explain(&format!(
            "inside farm job {outer}: running {} here",
            self.job.program()
        ));
        let code = local::run(self.job, self.signals).await;
        self.report("local", "local", code);
        code
    }

    async fn fall_back(&mut self, why: &str) -> i32 {
        // This machine is not known to have what the job requires.
        if !self.job.require.is_empty() {
            say!(
                "{why}; not running it locally: it requires {}",
                self.job.require.join(", ")
            );
            self.report("", "failed", EXIT_MEXEC_FAILURE);
            return EXIT_MEXEC_FAILURE;
        }
        if self.settings.no_local {
            say!("{why}; not running it locally (--no-local)");
            self.report("", "failed", EXIT_MEXEC_FAILURE);
            return EXIT_MEXEC_FAILURE;
        }
        say!("{why}; running {} locally", self.job.program());
        let code = local::run(self.job, self.signals).await;
        self.report("local", "local", code);
        code
    }

    /// Writes what is left of the output and turns the exit status into ours.
    async fn finish(&mut self, node: &str, exit: &mexec_proto::v1::Exit) -> i32 {
        let _ = self.output.finish().await;
        if !exit.error.is_empty() {
            say!("node {node}: {}", exit.error);
        }
        let code = match exit.status {
            Some(exit::Status::Code(code)) => code,
            Some(exit::Status::Signal(signal)) => 128 + signal,
            None => {
                say!("node {node} sent no exit status");
                EXIT_MEXEC_FAILURE
            }
        };
        let cpu_ms = (exit.user_us + exit.system_us) / 1000;
        self.report_with_cpu(node, "remote", code, (cpu_ms, Some(exit.wall_us / 1000)));
        code
    }

    fn report(&self, node: &str, placed: &str, code: i32) {
        self.report_with_cpu(node, placed, code, (0, None));
    }

    /// `used`: CPU time, and run time on the node (`None`: all of it).
    fn report_with_cpu(&self, node: &str, placed: &str, code: i32, used: (u64, Option<u64>)) {
        let (cpu_ms, run_ms) = used;
        if let Some(path) = &self.settings.joblog {
            let wall_ms = self.started.elapsed().as_millis() as u64;
            let run_ms = run_ms.unwrap_or(wall_ms).min(wall_ms);
            let entry = joblog::Entry {
                job_id: &self.job.job_id,
                program: &self.job.program(),
                user: &self.job.user,
                node,
                placed,
                exit_code: code,
                wall_ms,
                wait_ms: wall_ms - run_ms,
                run_ms,
                target: joblog::target(&self.job.argv),
                cpu_ms,
                finished_unix_ms: mexec_common::clock::now_ms(),
                retries: self.lost_retries,
                route: &crate::job_hooks::route_note(),
            };
            joblog::append(path, &entry);
        }
    }
}
