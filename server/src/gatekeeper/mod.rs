//! The gatekeeper: a non-computing member that knows who is in the cluster,
//! shares slots fairly among users and builds, grants placement leases to
//! clients inside the cluster and relays whole jobs for clients outside it.
//!
//! Layout:
//! - `config`: `mexec-gatekeeper` settings.
//! - `cluster`: members, leases and the fair queue (pure logic).
//! - `fit`: which members a request may go to (requirements, toolchain).
//! - `registration`: what a registering node may say, and where it is
//!   reached (the address its stream comes from).
//! - `shared`: what every handler shares, and the steps lease and relay
//!   handlers have in common.
//! - `service`: the tonic handlers for membership, leases and status.
//! - `relay`: running a client's job on a node and relaying it both ways.
//! - `observe`: metrics, the live dashboard and per-user accounting.

pub mod cluster;
pub mod config;
pub mod fit;
pub mod observe;
mod registration;
mod relay;
mod service;
mod shared;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mexec_common::connector::{Connector, Timeouts};
use mexec_common::lease_ticket::Secret;
use mexec_proto::v1::gatekeeper_server::GatekeeperServer;
use tokio::net::TcpListener;

use crate::daemon::{self, PeerStreams};
use crate::request_limits::MAX_MESSAGE_BYTES;
use crate::web;
use cluster::Cluster;
pub use config::{Flags, Settings, SettingsError};
use shared::Shared;

/// Streams one peer address may hold open: a build host runs one lease or
/// relayed stream per job, so this is generous.
const MAX_STREAMS_PER_PEER: usize = 4096;
/// Relaying to a node: a node that does not answer within 3 s is passed
/// over; one that goes silent under a relayed job is given up after 15 s
/// (the client's own keepalive with us notices sooner).
const RELAY_TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(3),
    keepalive_interval: Duration::from_secs(5),
    keepalive_timeout: Duration::from_secs(10),
};

/// The gatekeeper's HTTP listeners, bound, and its accounting database,
/// opened: made by `mexec-gatekeeper` from its settings, so that a bad
/// address or database stops it at start with a clear error.
#[derive(Debug)]
pub struct Observed {
    /// `/metrics` alone (`--metrics-listen`).
    pub metrics: Option<TcpListener>,
    /// The dashboard and `/metrics` (`--http-listen`).
    pub http: Option<TcpListener>,
    pub accounting: observe::accounting::Accounting,
}

/// Serves the gatekeeper on `listener` until `shutdown` resolves, with
/// accounting in memory and no HTTP listener.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let accounting =
        observe::accounting::Accounting::open(None).expect("an in-memory database opens");
    let observed = Observed {
        metrics: None,
        http: None,
        accounting,
    };
    run_observed(listener, observed, settings, shutdown).await
}

/// `run`, with the HTTP listeners and accounting of `observed`.
pub async fn run_observed(
    listener: TcpListener,
    observed: Observed,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let daemon = &settings.daemon;
    let shared = Arc::new(Shared {
        cluster: Mutex::new(Cluster::new(settings.limits.clone())),
        nodes: Connector::new(daemon.tls.clone(), daemon.token.clone(), RELAY_TIMEOUTS),
        access: daemon
            .access()
            .at_node(&mexec_common::host::name(), "gatekeeper"),
        streams: PeerStreams::new(MAX_STREAMS_PER_PEER),
        start_timeout: daemon.start_timeout,
        lease_secret: Secret::generate(),
        observe: observe::Observer::new(observed.accounting),
    });
    let mut tasks = vec![
        tokio::spawn(expire_silent_nodes(shared.clone())),
        tokio::spawn(observe::publish(shared.clone())),
    ];
    let web = |listen: &Option<web::WebListen>| listen.as_ref().map(|l| l.access.clone());
    if let Some((listener, access)) = observed.metrics.zip(web(&settings.metrics)) {
        tasks.push(tokio::spawn(observe::serve_metrics(
            shared.clone(),
            listener,
            access,
        )));
    }
    if let Some((listener, access)) = observed.http.zip(web(&settings.http)) {
        tasks.push(tokio::spawn(observe::serve_http(
            shared.clone(),
            listener,
            access,
        )));
    }
    let access = shared.access.clone();
    let other = mexec_proto::v1::executor_server::ExecutorServer::new(
        crate::wrong_service::NotAnExecutor {
            node: access.node().to_owned(),
        },
    );
    let gatekeeper = GatekeeperServer::new(service::GatekeeperService::new(shared))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    // Nothing to drain: lease and membership streams end with their peers,
    // who find the next gatekeeper on their own.
    let result = daemon::serve(
        listener,
        daemon,
        access,
        (gatekeeper, other),
        shutdown,
        async {},
    )
    .await;
    for task in tasks {
        task.abort();
    }
    result
}

/// Drops members that stopped reporting without closing their stream (a
/// frozen process, a cut link).
async fn expire_silent_nodes(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(cluster::HEARTBEAT);
    loop {
        tick.tick().await;
        for name in shared.with(|c| c.expire_silent(Instant::now())) {
            tracing::warn!(node = %name, "node silent too long: dropped from the cluster");
        }
    }
}
