//! The executor: a gRPC server that runs jobs for clients.
//!
//! Layout:
//! - `service`: the tonic handlers.
//! - `job`: one job from admission to exit status.
//! - `environment`: the variables a job starts with.
//! - `process`: spawning, signalling and reaping a job's process group.
//! - `admission`: slots, the bounded queue and draining.
//! - `limits`: request size limits and the resources a job may use.
//! - `memory`: the node's watcher of each job's resident memory.
//! - `pace`: the rate at which a client's stdin and messages are read.
//! - `policy`: the programs this node is allowed to run.
//! - `load`: the load report.
//! - `membership`: joining a gatekeeper and streaming our load to it.
//! - `error`: refusals and their gRPC statuses.

mod admission;
mod environment;
mod error;
pub mod group_keeper;
mod job;
mod limits;
mod load;
mod membership;
mod memory;
mod pace;
mod policy;
mod process;
mod service;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use mexec_proto::v1::executor_server::ExecutorServer;
use mexec_proto::v1::LoadReport;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;

pub use admission::{Admission, Counts};
pub use error::JobError;
pub use job::validate;
pub use limits::{check_request, JobLimits, MAX_MESSAGE_BYTES};
pub use policy::CommandPolicy;

use crate::auth::Access;
use crate::config::Settings;
use crate::streams::PeerStreams;
use crate::users::Account;

/// What every job of this node shares.
#[derive(Debug)]
pub struct NodeContext {
    /// The node's name, in every message.
    pub name: String,
    /// Slots, queue and draining.
    pub admission: Arc<Admission>,
    /// The account jobs run as, when the daemon started as root.
    pub run_as: Option<Account>,
    /// Flips to true when the grace period after SIGTERM is over.
    pub abort_all: watch::Receiver<bool>,
    /// Who may run jobs here, and as which user.
    pub access: Access,
    /// The programs allowed here; `None` allows all.
    pub policy: Option<policy::CommandPolicy>,
    /// What one job may use.
    pub limits: JobLimits,
    /// Watches each job's memory against `limits.memory_bytes`.
    pub memory: Arc<memory::MemoryWatch>,
    /// How long a client has to send the job after opening a stream.
    pub start_timeout: Duration,
    /// Open streams per peer address.
    pub streams: Arc<PeerStreams>,
    /// Kills the jobs' process groups if the daemon dies without doing it.
    pub groups: Option<Arc<group_keeper::GroupKeeper>>,
}

impl NodeContext {
    /// The node's load now.
    pub fn load_report(&self) -> LoadReport {
        load::report(&self.name, self.admission.counts())
    }
}

/// How often HTTP/2 connections are probed, so a client that vanished
/// without closing its socket (its host cut off or powered off) is noticed
/// within interval + timeout, 10 s, and its jobs killed, freeing the slot.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connections may stay open after the last job has finished.
const LINGER_AFTER_DRAIN: Duration = Duration::from_secs(2);

/// Serves the executor on `listener` until `shutdown` resolves; then stops
/// admitting, lets running jobs finish for up to `settings.grace`, kills
/// what is left, and returns.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let admission = Admission::new(settings.slots, settings.max_queued);
    let (abort_tx, abort_rx) = watch::channel(false);
    let ctx = Arc::new(NodeContext {
        name: settings.name.clone(),
        admission: admission.clone(),
        run_as: settings.run_as.clone(),
        abort_all: abort_rx,
        access: Access::new(
            settings.token.clone(),
            settings.tls.is_some(),
            settings.allowed_users.clone(),
        ),
        policy: policy::CommandPolicy::new(&settings.allowed_programs),
        limits: settings.limits,
        memory: memory::MemoryWatch::start(),
        start_timeout: settings.start_timeout,
        streams: PeerStreams::new(settings.max_streams_per_peer),
        groups: match group_keeper::GroupKeeper::start() {
            Ok(keeper) => Some(keeper),
            Err(err) => {
                tracing::warn!(%err, "no group keeper: jobs may outlive a crash of this daemon");
                None
            }
        },
    });

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ExecutorServer<service::ExecutorService>>()
        .await;

    let access = ctx.access.clone();
    let executor = InterceptedService::new(
        ExecutorServer::new(service::ExecutorService::new(ctx.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
        move |request| access.check(request),
    );

    let membership = settings.gatekeeper.clone().map(|gatekeeper| {
        let config = membership::JoinConfig {
            gatekeeper,
            advertise: settings.advertise.clone().unwrap_or_else(|| {
                // A wildcard listen address says nothing to clients; let the
                // gatekeeper use the address our stream comes from.
                if settings.listen.ip().is_unspecified() {
                    String::new()
                } else {
                    listener
                        .local_addr()
                        .map(|a| a.to_string())
                        .unwrap_or_default()
                }
            }),
            port: listener.local_addr().map(|a| a.port()).unwrap_or(0),
            token: settings.token.clone(),
            tls: settings.tls.clone(),
        };
        tokio::spawn(membership::stay_joined(ctx.clone(), config))
    });

    let grace = settings.grace;
    let name = settings.name.clone();
    let (drained_tx, drained) = tokio::sync::oneshot::channel::<()>();
    let drain_then_stop = async move {
        shutdown.await;
        tracing::info!(node = %name, "draining: no new jobs; waiting for running ones");
        admission.start_draining();
        health_reporter
            .set_not_serving::<ExecutorServer<service::ExecutorService>>()
            .await;
        if tokio::time::timeout(grace, admission.idle()).await.is_err() {
            tracing::warn!(node = %name, ?grace, "grace period over: killing remaining jobs");
            let _ = abort_tx.send(true);
            admission.idle().await;
        }
        tracing::info!(node = %name, "drained; exiting");
        let _ = drained_tx.send(());
    };

    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &settings.tls {
        builder = builder.tls_config(tls.server_config())?;
    }
    let server = builder
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(Some(crate::streams::MAX_STREAMS_PER_CONNECTION))
        .add_service(health_service)
        .add_service(executor)
        .serve_with_incoming_shutdown(incoming(listener), drain_then_stop);
    // Once drained, clients get a moment to read their last messages; a
    // client that keeps an idle stream open must not keep the node up.
    let linger = async {
        if drained.await.is_ok() {
            tokio::time::sleep(LINGER_AFTER_DRAIN).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let result = tokio::select! {
        result = server => result,
        _ = linger => Ok(()),
    };
    if let Some(membership) = membership {
        membership.abort();
    }
    result
}

/// Accepted connections with Nagle off: job messages are small and latency
/// is the product (with Nagle, a small message can wait 40 ms for an ACK).
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(KEEPALIVE_INTERVAL))
}
