//! The executor: a gRPC server that runs jobs for clients.
//!
//! Layout:
//! - `config`: `mexecd` settings from flags, `MEXEC_*` variables and TOML,
//!   and the executor's safety rule (jobs never run as root).
//! - `service`: the tonic handlers.
//! - `valid_job`: a job checked and decoded once, at admission.
//! - `job`: one admitted job's steps: start, supervise, finish.
//! - `environment`: the variables a job starts with.
//! - `process`: spawning, signalling and reaping a job's process group.
//! - `launch`: the fork and exec of a job's first process (into its
//!   cgroup v2 by `clone3`).
//! - `account`: the account jobs run as.
//! - `account_note`: why a job failed in a tree its account cannot write.
//! - `admission`: slots, the bounded queue and draining.
//! - `limits`: the resources a job may use.
//! - `limits_text`: the limits in words, for the start line.
//! - `memory`: the node's watcher of each job's resident memory.
//! - `cgroup`: each job in a cgroup of its own, ended with the job; the
//!   process limit.
//! - `job_cgroup`: one job's cgroup, made, limited and ended.
//! - `spawner`: on cgroup v1, the threads that fork jobs from inside their
//!   cgroups, so that no job waits for a move between cgroups.
//! - `group_keeper`: the process that kills the jobs' groups and cgroups if
//!   the daemon dies without doing it.
//! - `procfs`: what the executor reads from /proc.
//! - `pace`: the rate at which a client's stdin and messages are read.
//! - `policy`: the programs this node is allowed to run.
//! - `load`: the load report.
//! - `membership`: joining a gatekeeper and streaming our load (and our
//!   jobs' starts and ends) to it.
//! - `observe`: the metrics and the job events.
//! - `lease_check`: the gatekeeper's lease tickets, checked before a job
//!   of a member node is admitted.
//! - `desktop`: a desktop node's sampler of its owner's load, its offer and
//!   the reclaim of repeatable jobs.
//! - `owner_load`: what a desktop offers, decided from samples (no I/O).
//! - `priority`: the CPU and I/O priority jobs run at.
//! - `unmounted`: the node's mark that the shared tree is not mounted.
//! - `error`: refusals and their gRPC statuses.
//! - `toolchains`: the fingerprints of the compilers this node runs, kept
//!   current and reported with the load.
//! - `fit`: whether the node has what a job requires, and the client's
//!   compiler.

mod account;
mod account_note;
mod admission;
mod cgroup;
pub mod config;
mod cwd_wait;
mod desktop;
mod environment;
mod error;
mod fit;
pub mod group_keeper;
mod job;
mod job_cgroup;
mod launch;
pub mod lease_check;
mod limits;
mod limits_text;
mod load;
mod membership;
mod memory;
pub mod observe;
mod owner_load;
mod pace;
mod policy;
mod priority;
mod process;
mod procfs;
mod service;
mod shared_tree;
mod spawner;
mod toolchains;
mod unmounted;
mod valid_job;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mexec_common::connector::Connector;
use mexec_proto::v1::executor_server::ExecutorServer;
use mexec_proto::v1::LoadReport;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use account::{Account, AccountError, JobAccounts};
pub use admission::{Admission, Counts};
pub use cgroup::Cgroups;
pub use config::{Flags, Settings, SettingsError};
pub use error::JobError;
pub use group_keeper::GroupKeeper;
pub use lease_check::{DirectJobs, LeaseCheck};
pub use limits::JobLimits;
pub use limits_text::describe as describe_limits;
pub use memory::MemoryWatch;
pub use owner_load::DesktopPolicy;
pub use policy::{CommandPolicy, Program};
pub use priority::JobPriority;
pub use valid_job::{validate, ValidJob};

use crate::auth::Access;
use crate::daemon::{self, PeerStreams};
use crate::request_limits::MAX_MESSAGE_BYTES;

/// What every job of this node shares.
#[derive(Debug)]
pub struct NodeContext {
    /// The node's name, in every message.
    pub name: String,
    /// Slots, queue and draining.
    pub admission: Arc<Admission>,
    /// Whose account jobs run as.
    pub run_as: JobAccounts,
    /// Flips to true when the grace period after SIGTERM is over.
    pub abort_all: watch::Receiver<bool>,
    /// Who may run jobs here, and as which user.
    pub access: Access,
    /// The programs allowed here; `None` allows all.
    pub policy: Option<CommandPolicy>,
    /// What one job may use.
    pub limits: JobLimits,
    /// Watches each job's memory against `limits.memory_bytes`.
    pub memory: Arc<MemoryWatch>,
    /// How long a client has to send the job after opening a stream.
    pub start_timeout: Duration,
    /// How long a missing working directory is waited for before the job
    /// is refused (a network file system may show it late).
    pub cwd_wait: Duration,
    /// Whether a job's changed files are fsynced before its exit goes out.
    pub write_back_outputs: bool,
    /// Names seen in the jobs' working directories (`shared_tree`).
    pub seen_names: Arc<shared_tree::SeenNames>,
    /// Open streams per peer address.
    pub streams: Arc<PeerStreams>,
    /// Kills the jobs' process groups if the daemon dies without doing it.
    pub groups: Option<Arc<GroupKeeper>>,
    /// The jobs' cgroups, where the node may make them.
    pub cgroups: Option<Arc<Cgroups>>,
    /// The gatekeeper's key, and the lease tickets used.
    pub lease: LeaseCheck,
    /// On a desktop node, its owner's load and what it offers.
    pub desktop: Option<Arc<desktop::Desktop>>,
    /// The CPU and I/O priority jobs run at.
    pub priority: JobPriority,
    /// The node's metrics and job events.
    pub observe: observe::Observer,
    /// The fingerprints of the compilers jobs asked to check.
    pub toolchains: Arc<toolchains::Toolchains>,
    /// What jobs may require of this node (os, arch, CPU, labels...).
    pub properties: mexec_common::properties::Properties,
    /// Marked when jobs are refused because the shared tree is not here.
    pub unmounted: unmounted::Unmounted,
}

impl NodeContext {
    /// The node's load now.
    pub fn load_report(&self) -> LoadReport {
        let offer = self.desktop.as_ref().map(|d| d.offer());
        let mut report = load::report(&self.name, self.admission.counts(), offer.as_ref());
        report.toolchains = self.toolchains.report();
        report.properties = self.properties.clone();
        report.unmounted = self.unmounted.current();
        report
    }

    /// Resolves when the job of `spec` is to be given back to a desktop's
    /// owner (reclaim, for repeatable jobs); never on a plain node.
    pub async fn reclaimed(&self, spec: &mexec_proto::v1::JobSpec) {
        match &self.desktop {
            Some(desktop) => desktop.reclaimed(spec.repeatable).await,
            None => std::future::pending().await,
        }
    }
}

/// What watches over an executor's jobs from outside the job: made by
/// whoever starts the executor, so that `mexecd` and a test that runs an
/// executor inside its own process each give the right ones.
#[derive(Debug)]
pub struct Watchers {
    /// The group keeper; without one, jobs may outlive a crash of the
    /// daemon (a clean stop still kills them).
    pub groups: Option<Arc<GroupKeeper>>,
    /// The node's memory watcher.
    pub memory: Arc<MemoryWatch>,
    /// A cgroup per job, so that nothing a job starts outlives it; `None`
    /// where this node cannot make cgroups.
    pub cgroups: Option<Arc<Cgroups>>,
}

impl Watchers {
    /// A memory watcher, the jobs' cgroups, and a group keeper started
    /// from `keeper` (the `mexecd` binary: `mexecd` passes its own
    /// executable) that also ends those cgroups; a keeper that cannot start
    /// costs a warning, not the daemon. Call inside the runtime: the memory
    /// watcher is a task.
    pub fn start(keeper: &Path) -> Watchers {
        let cgroups = Cgroups::create().map(Arc::new);
        let groups = match GroupKeeper::start(keeper, cgroups.as_deref().map(Cgroups::dir)) {
            Ok(keeper) => Some(keeper),
            Err(err) => {
                tracing::warn!(%err, "no group keeper: jobs may outlive a crash of this daemon");
                None
            }
        };
        Watchers {
            groups,
            memory: MemoryWatch::start(),
            cgroups,
        }
    }
}

/// Serves the executor on `listener` until `shutdown` resolves; then stops
/// admitting, lets running jobs finish for up to `settings.grace`, kills
/// what is left, and returns.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    watchers: Watchers,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    run_with_metrics(listener, None, settings, watchers, shutdown).await
}

/// `run`, serving `/metrics` on `metrics` too (bound from
/// `settings.metrics` by `mexecd`).
pub async fn run_with_metrics(
    listener: TcpListener,
    metrics: Option<TcpListener>,
    settings: Settings,
    watchers: Watchers,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (abort_tx, abort_rx) = watch::channel(false);
    let ctx = Arc::new(node_context(&settings, watchers, abort_rx));
    let metrics = metrics
        .zip(settings.metrics.as_ref())
        .map(|(metrics, web)| {
            tokio::spawn(observe::serve_metrics(
                ctx.clone(),
                metrics,
                web.access.clone(),
            ))
        });
    let sampler = ctx
        .desktop
        .as_ref()
        .map(|desktop| desktop.start(ctx.admission.clone()));
    let membership = settings.gatekeeper.clone().map(|gatekeeper| {
        let config = join_config(&settings, gatekeeper, listener.local_addr().ok());
        tokio::spawn(membership::stay_joined(ctx.clone(), config))
    });
    let admission = ctx.admission.clone();
    let toolchain_watch = tokio::spawn(toolchains::watch(ctx.toolchains.clone(), move || {
        admission.announce()
    }));
    let executor = ExecutorServer::new(service::ExecutorService::new(ctx.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let drain = drain(
        ctx.admission.clone(),
        settings.grace,
        abort_tx,
        settings.name.clone(),
    );
    let access = ctx.access.clone();
    let other = mexec_proto::v1::gatekeeper_server::GatekeeperServer::new(
        crate::wrong_service::NotAGatekeeper {
            node: settings.name.clone(),
        },
    );
    let result = daemon::serve(
        listener,
        &settings.daemon,
        access,
        (executor, other),
        shutdown,
        drain,
    )
    .await;
    for task in [membership, sampler, metrics].into_iter().flatten() {
        task.abort();
    }
    toolchain_watch.abort();
    result
}

fn node_context(
    settings: &Settings,
    watchers: Watchers,
    abort_all: watch::Receiver<bool>,
) -> NodeContext {
    NodeContext {
        name: settings.name.clone(),
        admission: Admission::new(settings.slots, settings.max_queued),
        run_as: settings.run_as.clone(),
        abort_all,
        access: match settings.run_as {
            // Running a job as a user needs that user proven, not claimed.
            JobAccounts::Submitter { .. } => settings.daemon.access().requiring_proof(),
            _ => settings.daemon.access(),
        }
        .at_node(&settings.name, "executor"),
        policy: CommandPolicy::new(&settings.allowed_programs),
        limits: settings.limits,
        memory: watchers.memory,
        start_timeout: settings.daemon.start_timeout,
        cwd_wait: settings.cwd_wait,
        write_back_outputs: settings.write_back_outputs,
        seen_names: Arc::default(),
        streams: PeerStreams::new(settings.max_streams_per_peer),
        groups: watchers.groups,
        cgroups: watchers.cgroups,
        lease: LeaseCheck::new(settings.gatekeeper.as_deref(), settings.direct_jobs),
        desktop: settings.desktop.map(desktop::Desktop::new),
        priority: if settings.desktop.is_some() {
            JobPriority::Idle
        } else {
            JobPriority::Normal
        },
        observe: observe::Observer::new(),
        toolchains: toolchains::Toolchains::new(),
        properties: mexec_common::properties::this_machine(&settings.labels),
        unmounted: unmounted::Unmounted::default(),
    }
}

/// How to join `gatekeeper`, for an executor listening on `bound`.
fn join_config(
    settings: &Settings,
    gatekeeper: String,
    bound: Option<SocketAddr>,
) -> membership::JoinConfig {
    let advertise = settings.advertise.clone().unwrap_or_else(|| {
        // A wildcard listen address says nothing to clients; let the
        // gatekeeper use the address our stream comes from.
        match bound {
            Some(bound) if !settings.daemon.listen.ip().is_unspecified() => bound.to_string(),
            _ => String::new(),
        }
    });
    let daemon = &settings.daemon;
    membership::JoinConfig {
        gatekeeper,
        advertise,
        port: bound.map_or(0, |bound| bound.port()),
        connector: Connector::new(
            daemon.tls.clone(),
            daemon.token.clone(),
            membership::TIMEOUTS,
        ),
    }
}

/// Draining after a stop: no new jobs, running ones get `grace` to finish,
/// then what is left is killed.
async fn drain(
    admission: Arc<Admission>,
    grace: Duration,
    abort: watch::Sender<bool>,
    name: String,
) {
    tracing::info!(node = %name, "draining: no new jobs; waiting for running ones");
    admission.start_draining();
    if tokio::time::timeout(grace, admission.idle()).await.is_err() {
        tracing::warn!(node = %name, ?grace, "grace period over: killing remaining jobs");
        let _ = abort.send(true);
        admission.idle().await;
    }
    tracing::info!(node = %name, "drained; exiting");
}
