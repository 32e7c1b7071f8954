//! The retry loop around one job: find a node (directly from the node list,
//! or through a gatekeeper's lease or relay), run there, and on failure go
//! to the next node, wait for a busy farm, retry a repeatable job whose node
//! was lost, or run locally when no node can take it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use mexec_common::nodes::NodeAddr;
use mexec_proto::v1::exit;

use crate::gatekeeper::{self, MemberCache, NoLease};
use crate::job::Job;
use crate::joblog;
use crate::local;
use crate::os::SignalStream;
use crate::output::Output;
use crate::placement::shared_state::SharedState;
use crate::placement::Placement;
use crate::remote::{self, NotStarted, Outcome, Target};
use crate::settings::Settings;
use crate::{say, EXIT_MEXEC_FAILURE};

/// How often a repeatable job may be retried after losing its node.
const MAX_LOST_RETRIES: u32 = 3;
/// Nodes a leased job may be refused by before it runs locally.
const MAX_LEASE_REFUSALS: usize = 3;
/// Back-off while every node is full: starts here, doubles, with jitter.
const BUSY_BACKOFF_START: Duration = Duration::from_millis(20);
const BUSY_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Runs `job` on the farm (or here) and returns the exit code for `mexec`.
pub async fn run(settings: &Settings, job: &Job) -> i32 {
    let mut signals = match SignalStream::install() {
        Ok(signals) => signals,
        Err(err) => {
            say!("cannot install signal handlers: {err}");
            return EXIT_MEXEC_FAILURE;
        }
    };
    let mut run = JobRun {
        settings,
        job,
        signals: &mut signals,
        output: Output::new(job.repeatable),
        started: Instant::now(),
        lost_retries: 0,
        backoff: BUSY_BACKOFF_START,
    };
    match &settings.gatekeeper {
        Some(gatekeeper) if settings.relay => run.relayed(gatekeeper).await,
        Some(gatekeeper) => run.leased(gatekeeper).await,
        None => run.direct(&settings.nodes).await,
    }
}

/// What happens after an attempt that did not finish the job.
enum Next {
    /// Try again (elsewhere, or after a back-off).
    Retry,
    /// The job is over with this exit code.
    Exit(i32),
}

struct JobRun<'a> {
    settings: &'a Settings,
    job: &'a Job,
    signals: &'a mut SignalStream,
    output: Output,
    started: Instant,
    lost_retries: u32,
    backoff: Duration,
}

impl JobRun<'_> {
    /// Places over `nodes` ourselves, with load shared between clients.
    async fn direct(&mut self, nodes: &[NodeAddr]) -> i32 {
        if nodes.is_empty() {
            return self
                .fall_back("no nodes are configured (set MEXEC_NODES, --nodes or MEXEC_GATEKEEPER)")
                .await;
        }
        let placement = Placement::new(nodes.to_vec(), SharedState::for_this_user())
            .with_policy(self.settings.placement);
        let mut lost: HashSet<usize> = HashSet::new();
        loop {
            let mut tried = lost.clone();
            let mut busy = false;
            let mut causes = Vec::new();
            while let Some(choice) = placement.choose(&tried) {
                tried.insert(choice.index);
                let addr = &placement.nodes()[choice.index];
                spawn_refresh(&placement, &choice.refresh, self.settings);
                if self.settings.verbose {
                    say!("running {} on {}", self.job.program(), addr.authority());
                }
                let outcome = self.attempt(Target::Executor(addr)).await;
                placement.release(choice.index);
                match outcome {
                    Outcome::Finished { node, exit } => return self.finish(&node, &exit).await,
                    Outcome::NotStarted(NotStarted::Busy(cause)) => {
                        busy = true;
                        self.explain(&cause);
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
                        match self.after_lost(&node, &reason, stdin_consumed).await {
                            Next::Retry => {
                                lost.insert(choice.index);
                            }
                            Next::Exit(code) => return code,
                        }
                    }
                    Outcome::Abandoned { signal } => return self.abandon(signal).await,
                }
            }
            if busy {
                if let Next::Exit(code) = self.wait_for_slot().await {
                    return code;
                }
                continue;
            }
            let why = if causes.is_empty() {
                "every node was lost during the job".to_owned()
            } else {
                causes.join("; ")
            };
            return self
                .fall_back(&format!("no node could run the job ({why})"))
                .await;
        }
    }

    /// Asks the gatekeeper for a slot, then runs on that node directly.
    async fn leased(&mut self, gatekeeper: &NodeAddr) -> i32 {
        let mut avoid: Vec<String> = Vec::new();
        let mut causes = Vec::new();
        loop {
            let token = self.settings.token.as_ref();
            let lease = tokio::select! {
                lease = gatekeeper::acquire(gatekeeper, token, self.job, &avoid) => lease,
                signal = self.signals.next() => return self.abandon(signal).await,
            };
            let lease = match lease {
                Ok(lease) => lease,
                Err(NoLease::Busy(cause)) => {
                    self.explain(&cause);
                    if let Next::Exit(code) = self.wait_for_slot().await {
                        return code;
                    }
                    continue;
                }
                Err(NoLease::Unreachable(cause)) => {
                    return self.without_gatekeeper(gatekeeper, &cause).await;
                }
                Err(NoLease::Refused(cause)) => {
                    return self
                        .fall_back(&format!("gatekeeper {}: {cause}", gatekeeper.authority()))
                        .await
                }
            };
            if self.settings.verbose {
                say!(
                    "running {} on {} ({})",
                    self.job.program(),
                    lease.node,
                    lease.addr.authority()
                );
            }
            let outcome = self.attempt(Target::Executor(&lease.addr)).await;
            let node = lease.node.clone();
            drop(lease);
            match outcome {
                Outcome::Finished { node, exit } => return self.finish(&node, &exit).await,
                // The gatekeeper can see the node, we cannot: we are
                // outside the cluster, so let the gatekeeper relay.
                Outcome::NotStarted(NotStarted::Unreachable(cause)) => {
                    self.explain(&format!("{cause}; relaying through the gatekeeper"));
                    return self.relayed(gatekeeper).await;
                }
                Outcome::NotStarted(NotStarted::Busy(cause) | NotStarted::Refused(cause)) => {
                    causes.push(cause);
                    if causes.len() >= MAX_LEASE_REFUSALS {
                        let why = causes.join("; ");
                        return self
                            .fall_back(&format!("no node could run the job ({why})"))
                            .await;
                    }
                }
                Outcome::Lost {
                    node,
                    reason,
                    stdin_consumed,
                } => {
                    if let Next::Exit(code) = self.after_lost(&node, &reason, stdin_consumed).await
                    {
                        return code;
                    }
                }
                Outcome::Abandoned { signal } => return self.abandon(signal).await,
            }
            avoid.push(node);
        }
    }

    /// Sends the whole job through the gatekeeper.
    async fn relayed(&mut self, gatekeeper: &NodeAddr) -> i32 {
        loop {
            match self.attempt(Target::Relay(gatekeeper)).await {
                Outcome::Finished { node, exit } => return self.finish(&node, &exit).await,
                Outcome::NotStarted(NotStarted::Busy(cause)) => {
                    self.explain(&cause);
                    if let Next::Exit(code) = self.wait_for_slot().await {
                        return code;
                    }
                }
                Outcome::NotStarted(NotStarted::Unreachable(cause)) => {
                    let why = format!("gatekeeper {} unreachable: {cause}", gatekeeper.authority());
                    return self.fall_back(&why).await;
                }
                Outcome::NotStarted(NotStarted::Refused(cause)) => {
                    return self.fall_back(&cause).await;
                }
                Outcome::Lost {
                    node,
                    reason,
                    stdin_consumed,
                } => {
                    if let Next::Exit(code) = self.after_lost(&node, &reason, stdin_consumed).await
                    {
                        return code;
                    }
                }
                Outcome::Abandoned { signal } => return self.abandon(signal).await,
            }
        }
    }

    /// The gatekeeper is down: place directly over the members it last
    /// told us about, else the configured nodes.
    async fn without_gatekeeper(&mut self, gatekeeper: &NodeAddr, cause: &str) -> i32 {
        let cached = MemberCache::for_gatekeeper(gatekeeper).nodes();
        let (nodes, source) = if cached.is_empty() {
            (self.settings.nodes.clone(), "configured")
        } else {
            (cached, "last known")
        };
        say!(
            "gatekeeper {} unreachable ({cause}); placing directly over {} {source} nodes",
            gatekeeper.authority(),
            nodes.len()
        );
        self.direct(&nodes).await
    }

    async fn attempt(&mut self, target: Target<'_>) -> Outcome {
        let token = self.settings.token.as_ref();
        remote::run_on(target, token, self.job, &mut self.output, self.signals).await
    }

    /// A node was lost mid-job: retry when the job is safe to repeat.
    async fn after_lost(&mut self, node: &str, reason: &str, stdin_consumed: bool) -> Next {
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
            return Next::Exit(EXIT_MEXEC_FAILURE);
        }
        self.explain(&format!(
            "node {node} was lost while running {} ({reason}); retrying elsewhere",
            self.job.program()
        ));
        self.output.discard();
        self.lost_retries += 1;
        Next::Retry
    }

    /// A busy farm is not a failure: wait for a slot rather than piling
    /// the job onto this machine.
    async fn wait_for_slot(&mut self) -> Next {
        let jitter = rand::random_range(0..=self.backoff.as_millis() as u64 / 2);
        let pause = self.backoff + Duration::from_millis(jitter);
        self.backoff = (self.backoff * 2).min(BUSY_BACKOFF_MAX);
        tokio::select! {
            _ = tokio::time::sleep(pause) => Next::Retry,
            signal = self.signals.next() => Next::Exit(128 + signal),
        }
    }

    async fn abandon(&mut self, signal: i32) -> i32 {
        let _ = self.output.finish().await;
        128 + signal
    }

    async fn fall_back(&mut self, why: &str) -> i32 {
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
        self.report_with_cpu(node, "remote", code, (exit.user_us + exit.system_us) / 1000);
        code
    }

    fn explain(&self, what: &str) {
        if self.settings.verbose {
            say!("{what}");
        }
    }

    fn report(&self, node: &str, placed: &str, code: i32) {
        self.report_with_cpu(node, placed, code, 0);
    }

    fn report_with_cpu(&self, node: &str, placed: &str, code: i32, cpu_ms: u64) {
        if let Some(path) = &self.settings.joblog {
            let entry = joblog::Entry {
                job_id: &self.job.job_id,
                program: &self.job.program(),
                user: &self.job.user,
                node,
                placed,
                exit_code: code,
                wall_ms: self.started.elapsed().as_millis() as u64,
                cpu_ms,
                finished_unix_ms: crate::placement::shared_state::now_ms(),
                retries: self.lost_retries,
            };
            joblog::append(path, &entry);
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
