//! The TLS handshake of a daemon's gRPC port, done here rather than by
//! tonic (which logs a failed handshake at debug level, without the
//! peer), so every failed handshake is on record: a refusal of kind
//! `tls-handshake` with the peer's address and why (`handshake_failure`).
//!
//! On a port without TLS, a connection that opens with a TLS hello is
//! put on record the same way (`plain`).
//!
//! A client without TLS (plain-text HTTP/2, as `mexec` without its
//! `--tls-*` settings speaks) is answered in its own protocol: every
//! request gets a refusal naming the settings it lacks. TLS bytes would
//! reach it as garbage, which it could not tell from a node that died
//! under its job.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use mexec_common::refusal::Refusal;
use mexec_common::tls::{Tls, HANDSHAKE_TIMEOUT};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use super::handshake_failure::{self, Opening};
use super::Conn;
use crate::refusal_log::{self, Refused, Who};

/// The server side of mutual TLS for one of a daemon's ports.
#[derive(Clone)]
pub struct Handshake {
    acceptor: TlsAcceptor,
    /// Whether a plain-text HTTP/2 client is answered with a gRPC refusal
    /// (on the gRPC port; an HTTP listener only closes it).
    answers_plain_grpc: bool,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Handshake(..)")
    }
}

impl Handshake {
    /// Mutual TLS with `tls`, offering HTTP/2 only, as gRPC needs.
    pub fn new(tls: &Tls) -> Result<Handshake, String> {
        Ok(Handshake {
            acceptor: acceptor(tls, &[b"h2"])?,
            answers_plain_grpc: true,
        })
    }

    /// Mutual TLS with `tls` for an HTTP listener (HTTP/2 and HTTP/1.1).
    pub fn for_http(tls: &Tls) -> Result<Handshake, String> {
        Ok(Handshake {
            acceptor: acceptor(tls, &[b"h2", b"http/1.1"])?,
            answers_plain_grpc: false,
        })
    }
}

/// Who refuses, in the record and in the answer to a plain-text client.
#[derive(Debug, Clone)]
pub struct Here {
    /// The node's name (the gatekeeper's host).
    pub node: Arc<str>,
    /// "executor" or "gatekeeper".
    pub role: &'static str,
}

impl Here {
    fn record(&self, peer: Option<SocketAddr>, reason: &str) {
        refusal_log::record(Refused {
            node: &self.node,
            kind: Refusal::TlsHandshake,
            peer,
            who: Who::Unknown,
            reason,
        });
    }

    /// What a client without TLS is told.
    fn plain_refusal(&self) -> String {
        format!(
            "{} {} takes only mutual TLS, and this client connected without TLS: give it \
             --tls-ca, --tls-cert and --tls-key (MEXEC_TLS_CA, MEXEC_TLS_CERT, MEXEC_TLS_KEY, \
             or tls_ca, tls_cert, tls_key in its config) with a certificate from the cluster's \
             CA (`mexec-cert user NAME`)",
            self.role, self.node
        )
    }
}

/// Runs the handshake of each connection from `conns`, each in its own
/// task (a slow one holds up no other), and hands on those that
/// completed; a failed one is put on record and closed.
pub fn incoming(
    conns: ReceiverStream<io::Result<Conn>>,
    handshake: Handshake,
    here: Here,
) -> ReceiverStream<io::Result<TlsStream<Conn>>> {
    each_connection(conns, move |conn| {
        let (handshake, here) = (handshake.clone(), here.clone());
        async move { handshake.accept(conn, &here).await }
    })
}

/// For a port without TLS: hands on each connection from `conns`, and
/// puts one that opens with a TLS hello on record (a client set up for
/// TLS at a node with a token or none). It is served as any other: the
/// HTTP/2 layer's plain-text answer is what tells that client the node
/// has no TLS.
pub fn plain(
    conns: ReceiverStream<io::Result<Conn>>,
    here: Here,
) -> ReceiverStream<io::Result<Conn>> {
    each_connection(conns, move |conn| {
        let here = here.clone();
        async move {
            let mut first = [0u8; 1];
            let peeked = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.peek(&mut first)).await;
            if let Ok(Ok(1)) = peeked {
                if handshake_failure::opening(&first) == Opening::Tls {
                    here.record(
                        conn.peer(),
                        "a TLS client on this port, which has no TLS (it takes a token or \
                         nothing): the client has --tls-ca, --tls-cert and --tls-key, this \
                         daemon does not",
                    );
                }
            }
            Some(conn)
        }
    })
}

/// Runs `each` on every connection from `conns` in a task of its own and
/// hands on what it returns, until the server stops taking connections.
fn each_connection<T, F, Fut>(
    mut conns: ReceiverStream<io::Result<Conn>>,
    each: F,
) -> ReceiverStream<io::Result<T>>
where
    T: Send + 'static,
    F: Fn(Conn) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Option<T>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                next = conns.next() => match next {
                    Some(Ok(conn)) => conn,
                    Some(Err(_)) => continue,
                    None => return,
                },
                _ = tx.closed() => return,
            };
            let (tx, handled) = (tx.clone(), each(conn));
            tokio::spawn(async move {
                if let Some(handed_on) = handled.await {
                    let _ = tx.send(Ok(handed_on)).await;
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

impl Handshake {
    /// The TLS session on `conn`, or `None` (on record) when there is none.
    pub async fn accept(&self, conn: Conn, here: &Here) -> Option<TlsStream<Conn>> {
        let peer = conn.peer();
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        let mut first = [0u8; 32];
        let seen = match tokio::time::timeout_at(deadline, conn.peek(&mut first)).await {
            // Closed without a byte (a port probe): no handshake was tried.
            Ok(Ok(0) | Err(_)) => return None,
            Ok(Ok(n)) => n,
            Err(_) => {
                here.record(peer, &format!("no TLS hello within {HANDSHAKE_TIMEOUT:?}"));
                return None;
            }
        };
        let first = &first[..seen];
        let opening = handshake_failure::opening(first);
        if opening == Opening::PlainHttp2 {
            let reason = handshake_failure::not_tls(&opening).unwrap_or_default();
            here.record(peer, &reason);
            if self.answers_plain_grpc {
                refuse_in_http2(conn, here.plain_refusal(), deadline).await;
            }
            return None;
        }
        match tokio::time::timeout_at(deadline, self.acceptor.accept(conn)).await {
            Ok(Ok(tls)) => Some(tls),
            Ok(Err(err)) => {
                here.record(peer, &handshake_failure::reason(&err, first));
                None
            }
            Err(_) => {
                let reason =
                    format!("the TLS handshake did not finish within {HANDSHAKE_TIMEOUT:?}");
                here.record(peer, &reason);
                None
            }
        }
    }
}

/// Answers every request on a plain-text HTTP/2 connection with the
/// refusal `message`, until the client closes it or `until`.
async fn refuse_in_http2(conn: Conn, message: String, until: Instant) {
    let router = axum::Router::new().fallback(move || {
        let status = Refusal::TlsHandshake.status(message.clone());
        async move { status.into_http::<axum::body::Body>() }
    });
    let builder = auto::Builder::new(TokioExecutor::new()).http2_only();
    let serving = builder.serve_connection(TokioIo::new(conn), TowerToHyperService::new(router));
    let _ = tokio::time::timeout_at(until, serving).await;
}

/// A TLS acceptor that wants a client certificate from the cluster CA
/// and offers the application protocols `alpn`.
pub fn acceptor(tls: &Tls, alpn: &[&[u8]]) -> Result<TlsAcceptor, String> {
    let bad = |what: &str, err: &dyn std::fmt::Display| format!("{what}: {err}");
    let pem = tls.pem();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&pem.ca) {
        let ca = ca.map_err(|e| bad("the CA certificate", &e))?;
        roots.add(ca).map_err(|e| bad("the CA certificate", &e))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| bad("the CA certificate", &e))?;
    let chain = CertificateDer::pem_slice_iter(&pem.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("the certificate", &e))?;
    let key = PrivateKeyDer::from_pem_slice(&pem.key).map_err(|e| bad("the key", &e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("TLS", &e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| bad("the certificate and key", &e))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}
