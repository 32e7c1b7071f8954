//! Serving a router on an HTTP listener: plain HTTP, or HTTPS that wants a
//! client certificate from the cluster CA, with the token checked in front
//! of every route in token mode. Connections are accepted under the gRPC
//! listeners' caps (per peer, in all, first bytes within 10 s:
//! `daemon::incoming`). Each connection ends when the daemon stops (an
//! event stream would otherwise keep it up for ever).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use mexec_common::token::Token;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::StreamExt;

use super::{WebAccess, WebError};
use crate::daemon::{self, Handshake, Here};

/// TCP keepalive on accepted connections, as on the gRPC listeners.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// Binds `listen`, warning when the listener is open beyond loopback
/// (which `WebAccess::resolve` allows only with `--http-insecure`).
pub async fn bind(listen: SocketAddr, access: &WebAccess) -> Result<TcpListener, WebError> {
    if access.is_open() && !listen.ip().is_loopback() {
        tracing::warn!(
            %listen,
            "serving HTTP beyond loopback without TLS or token (--http-insecure): \
             anyone who reaches it sees the farm's users and commands"
        );
    }
    TcpListener::bind(listen)
        .await
        .map_err(|source| WebError::Bind { listen, source })
}

/// Serves `router` on `listener` under `access` until `stop` resolves;
/// a failed TLS handshake is on record as refused `here`.
pub async fn serve(
    (listener, here): (TcpListener, Here),
    access: WebAccess,
    router: Router,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WebError> {
    let router = match access.token.clone() {
        Some(token) => router.layer(middleware::from_fn(move |request, next| {
            require_token(token.clone(), request, next)
        })),
        None => router,
    };
    let handshake = access
        .tls
        .as_ref()
        .map(Handshake::for_http)
        .transpose()
        .map_err(WebError::Tls)?;
    let (stopped_tx, stopped) = watch::channel(false);
    let mut incoming = daemon::incoming(listener, KEEPALIVE);
    tokio::pin!(stop);
    loop {
        let tcp = tokio::select! {
            accepted = incoming.next() => match accepted {
                Some(Ok(conn)) => conn,
                Some(Err(_)) => continue,
                None => break,
            },
            _ = &mut stop => break,
        };
        let (router, handshake, stopped) = (router.clone(), handshake.clone(), stopped.clone());
        let here = here.clone();
        tokio::spawn(async move {
            match handshake {
                None => connection(tcp, router, stopped).await,
                // No certificate, or one the CA did not sign: no request
                // is read, and the refusal is on record.
                Some(handshake) => {
                    if let Some(tls) = handshake.accept(tcp, &here).await {
                        connection(tls, router, stopped).await;
                    }
                }
            }
        });
    }
    let _ = stopped_tx.send(true);
    Ok(())
}

/// Serves one connection, HTTP/1.1 or HTTP/2, until it ends or the daemon
/// stops.
async fn connection<I>(io: I, router: Router, mut stopped: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let builder = auto::Builder::new(TokioExecutor::new());
    let serving = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(router));
    tokio::select! {
        _ = serving => {}
        _ = stopped.wait_for(|stopped| *stopped) => {}
    }
}

/// Refuses a request without the token, in its header or (for a
/// browser) as `?token=`.
async fn require_token(token: Token, request: Request, next: Next) -> Response {
    let mut metadata = tonic::metadata::MetadataMap::from_headers(request.headers().clone());
    if let Some(sent) = query_token(request.uri().query()) {
        if let Ok(value) = format!("Bearer {sent}").parse() {
            metadata.insert(mexec_common::token::METADATA_KEY, value);
        }
    }
    if token.admits(&metadata) {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            "missing or wrong token: send `Authorization: Bearer TOKEN` or add ?token=TOKEN\n",
        )
            .into_response()
    }
}

fn query_token(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_found_among_query_pairs() {
        assert_eq!(query_token(Some("a=1&token=xyz")), Some("xyz"));
        assert_eq!(query_token(Some("a=1")), None);
        assert_eq!(query_token(None), None);
    }
}
