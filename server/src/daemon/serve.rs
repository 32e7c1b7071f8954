//! Serving a daemon's gRPC service: the same transport set-up, access
//! checks, health reporting and stop sequence for both daemons, so neither
//! can serve without TLS or the token by accident, or stop differently.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tonic::codegen::Service;
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;

use super::connections;
use super::stream_limits::MAX_STREAMS_PER_CONNECTION;
use super::tls_accept::{self, Here};
use super::DaemonSettings;

/// How often HTTP/2 connections are probed, so a peer that vanished without
/// closing its socket (its host cut off or powered off) is noticed within
/// interval + timeout, 10 s: an executor then kills its jobs and frees the
/// slots, a gatekeeper takes its leases back and drops its queued requests.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections are closed (gracefully: no new streams, those open run to
/// their end) at this age, so a peer that holds connections open without
/// using them gives its descriptors back.
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);
/// How long open streams may keep a stopping daemon up once `drain` is
/// done: peers get a moment to read their last messages, but a peer that
/// keeps an idle stream open (a lease, a membership) must not keep the
/// daemon up. Clients and executors find the next one on their own.
const LINGER_AFTER_DRAIN: Duration = Duration::from_secs(2);

/// Serves `service` beside `grpc.health.v1` and `other` (the other
/// daemon's service, saying this is not that daemon: `wrong_service`) on
/// `listener`, behind TLS and the `access` checks, until `stop` resolves. Then health reports
/// the service not serving, `drain` runs to its end (while the daemon still
/// answers, so peers hear why it takes nothing new), new connections are
/// refused, and open streams get `LINGER_AFTER_DRAIN` before it returns.
pub async fn serve<S, O>(
    listener: TcpListener,
    daemon: &DaemonSettings,
    access: crate::auth::Access,
    (service, other): (S, O),
    stop: impl Future<Output = ()> + Send + 'static,
    drain: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    O: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    O::Future: Send + 'static,
{
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<S>().await;
    let (drained_tx, drained) = tokio::sync::oneshot::channel::<()>();
    let stopping = async move {
        stop.await;
        health.set_not_serving::<S>().await;
        drain.await;
        let _ = drained_tx.send(());
    };
    // TLS is ours (`tls_accept`), not tonic's: every failed handshake goes
    // on record.
    let here = Here {
        node: Arc::from(access.node()),
        role: access.role(),
    };
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        // An idle connection (one holding no stream) is closed at this
        // age; one with streams is closed when the last ends, never under
        // a running job. Clients open a new one when they need it.
        .max_connection_age(MAX_CONNECTION_AGE)
        .add_service(health_service)
        .add_service(InterceptedService::new(service, access.clone()))
        // The other daemon's service, answering that this is not it.
        .add_service(InterceptedService::new(other, access));
    let incoming = connections::incoming(listener, KEEPALIVE_INTERVAL);
    let handshake = daemon.handshake.clone();
    let server = async move {
        match handshake {
            Some(handshake) => {
                let sessions = tls_accept::incoming(incoming, handshake, here);
                router
                    .serve_with_incoming_shutdown(sessions, stopping)
                    .await
            }
            None => {
                let conns = tls_accept::plain(incoming, here);
                router.serve_with_incoming_shutdown(conns, stopping).await
            }
        }
    };
    let linger = async {
        if drained.await.is_ok() {
            tokio::time::sleep(LINGER_AFTER_DRAIN).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = server => result,
        _ = linger => Ok(()),
    }
}
