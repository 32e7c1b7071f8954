//! The gatekeeper: a non-computing member that knows who is in the cluster,
//! shares slots fairly among users and builds, grants placement leases to
//! clients inside the cluster and relays whole jobs for clients outside it.
//!
//! Layout:
//! - `cluster`: members, leases and the fair queue (pure logic).
//! - `service`: the tonic handlers for membership, leases and status.
//! - `relay`: running a client's job on a node and relaying it both ways.
//! - `config`: `mexec-gatekeeper` settings.

pub mod cluster;
pub mod config;
mod relay;
mod service;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mexec_common::tls::Tls;
use mexec_common::token::Token;
use mexec_proto::v1::gatekeeper_server::GatekeeperServer;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;

use crate::auth::Access;
use crate::streams::PeerStreams;
use cluster::Cluster;
pub use config::Settings;

/// What every handler shares.
#[derive(Debug)]
pub struct Shared {
    pub cluster: Mutex<Cluster>,
    /// The cluster token, sent to executors when relaying.
    pub token: Option<Token>,
    /// Our node certificate, presented to executors when relaying.
    pub tls: Option<Tls>,
    /// Who may call, and as which user.
    pub access: Access,
    /// Open streams per peer address.
    pub streams: Arc<PeerStreams>,
    /// How long a caller has to send a stream's first message.
    pub start_timeout: Duration,
}

impl Shared {
    /// Runs `f` on the cluster under its lock.
    pub fn with<R>(&self, f: impl FnOnce(&mut Cluster) -> R) -> R {
        let mut cluster = self.cluster.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut cluster)
    }
}

/// Pings on every connection, so a client that vanished without closing
/// its socket is noticed within interval + timeout, 10 s: its lease goes
/// back to the pool and its queued request is dropped.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Streams one peer address may hold open: a build host runs one lease or
/// relayed stream per job, so this is generous.
const MAX_STREAMS_PER_PEER: usize = 4096;
/// How long open streams may delay a stopping gatekeeper.
const LINGER_AFTER_STOP: Duration = Duration::from_secs(2);

/// Serves the gatekeeper on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let shared = Arc::new(Shared {
        cluster: Mutex::new(Cluster::new(settings.limits.clone())),
        token: settings.token.clone(),
        tls: settings.tls.clone(),
        access: Access::new(
            settings.token.clone(),
            settings.tls.is_some(),
            settings.allowed_users.clone(),
        ),
        streams: PeerStreams::new(MAX_STREAMS_PER_PEER),
        start_timeout: settings.start_timeout,
    });
    let reaper = tokio::spawn(expire_silent_nodes(shared.clone()));

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<GatekeeperServer<service::GatekeeperService>>()
        .await;
    let access = shared.access.clone();
    let gatekeeper = InterceptedService::new(
        GatekeeperServer::new(service::GatekeeperService::new(shared))
            .max_decoding_message_size(crate::executor::MAX_MESSAGE_BYTES),
        move |request| access.check(request),
    );
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(KEEPALIVE_INTERVAL));
    let (stopping_tx, stopping) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        let _ = stopping_tx.send(());
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
        .add_service(gatekeeper)
        .serve_with_incoming_shutdown(incoming, shutdown);
    // Lease and membership streams stay open for as long as their peers
    // live; they must not hold a stopping gatekeeper up. Clients and
    // executors find the next one on their own.
    let linger = async {
        if stopping.await.is_ok() {
            tokio::time::sleep(LINGER_AFTER_STOP).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let result = tokio::select! {
        result = server => result,
        _ = linger => Ok(()),
    };
    reaper.abort();
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
