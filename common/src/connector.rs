//! One way to open a channel to a peer: TLS or not, the token on every
//! request, and the timeouts of the role that connects.
//!
//! A `Connector` is built once from a process's settings and passed to
//! whatever opens channels (placement, leases, runs, status, membership,
//! relaying), so no channel can skip TLS or the token by accident and no
//! global state is needed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;

use crate::munge::{Munge, MungeError};
use crate::tls::{self, Tls};
use crate::token::Token;

/// How long to wait for a connection, and how a connection that goes
/// silent (peer cut off, frozen, powered off) is noticed: HTTP/2 pings
/// every `keepalive_interval`, given up after `keepalive_timeout`. The
/// pings are answered by the peer's HTTP/2 layer, not by a job, so a long
/// quiet job does not count as silence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

/// A channel whose requests all carry the token, when there is one.
pub type AuthChannel = InterceptedService<Channel, AttachToken>;

/// Opens channels with one process's TLS set-up, token and timeouts.
#[derive(Debug, Clone)]
pub struct Connector {
    tls: Option<Tls>,
    token: Option<Token>,
    timeouts: Timeouts,
    munge: Option<Munge>,
    /// Channels kept open, by peer (`keep_connections`).
    kept: Option<Arc<Mutex<KeptChannels>>>,
}

/// Open channels by peer (its address, and the node name TLS checks), with
/// when each was opened.
type KeptChannels = HashMap<(String, Option<String>), (AuthChannel, Instant)>;

/// How long a kept channel is used for new calls. The daemons close a
/// connection at 60 s of age (`max_connection_age`), and a call that
/// starts as that GOAWAY arrives fails without reaching them (seen as
/// "operation was canceled" in the soak test, which then placed the job
/// as if the gatekeeper were down); a channel well younger never meets it.
const KEEP_FOR: Duration = Duration::from_secs(45);

/// Why no channel could be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("bad address {authority}: {source}")]
    BadAddress {
        authority: String,
        source: tonic::transport::Error,
    },
    /// The connection or the TLS handshake failed; the source says how.
    #[error("{0}")]
    Transport(tonic::transport::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl Connector {
    pub fn new(tls: Option<Tls>, token: Option<Token>, timeouts: Timeouts) -> Connector {
        Connector {
            tls,
            token,
            timeouts,
            munge: None,
            kept: None,
        }
    }

    /// Jobs and leases sent through this connector carry a MUNGE
    /// credential from `munge`.
    pub fn with_munge(mut self, munge: Option<Munge>) -> Connector {
        self.munge = munge;
        self
    }

    /// A fresh MUNGE credential for one request (each is good for one
    /// decode); empty without MUNGE.
    pub async fn credential(&self) -> Result<String, MungeError> {
        match &self.munge {
            Some(munge) => munge.encode_async(Vec::new()).await,
            None => Ok(String::new()),
        }
    }

    /// The same connector, keeping each channel it opens for the next call
    /// to the same peer (a long-lived process: the build host's agent).
    /// Many calls share one HTTP/2 connection; a connection that broke is
    /// made again on the next call, whose failure to connect (a
    /// `tonic::ConnectError` in its status) means it never reached the peer.
    pub fn keep_connections(mut self) -> Connector {
        self.kept = Some(Arc::default());
        self
    }

    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_ref()
    }

    pub fn token(&self) -> Option<&Token> {
        self.token.as_ref()
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Connects to `authority` (`host:port`), checking a TLS peer's
    /// certificate against the host part.
    pub async fn connect(&self, authority: &str) -> Result<AuthChannel, ConnectError> {
        self.connect_to_node(authority, None).await
    }

    /// Connects to `authority`, checking a TLS peer's certificate against
    /// `node` (a name `mexec-cert node` always puts in it) when given,
    /// instead of the host part, which may be an address the certificate
    /// does not list.
    pub async fn connect_to_node(
        &self,
        authority: &str,
        node: Option<&str>,
    ) -> Result<AuthChannel, ConnectError> {
        let Some(kept) = &self.kept else {
            return self.open(authority, node).await;
        };
        let key = (authority.to_owned(), node.map(str::to_owned));
        let fresh = kept.lock().ok().and_then(|k| {
            k.get(&key)
                .filter(|(_, opened)| opened.elapsed() < KEEP_FOR)
                .map(|(channel, _)| channel.clone())
        });
        if let Some(channel) = fresh {
            return Ok(channel);
        }
        let channel = self.open(authority, node).await?;
        if let Ok(mut kept) = kept.lock() {
            kept.insert(key, (channel.clone(), Instant::now()));
        }
        Ok(channel)
    }

    async fn open(&self, authority: &str, node: Option<&str>) -> Result<AuthChannel, ConnectError> {
        let endpoint = tls::endpoint_for(authority, self.tls.as_ref(), node)
            .map_err(|source| ConnectError::BadAddress {
                authority: authority.to_owned(),
                source,
            })?
            .connect_timeout(self.timeouts.connect)
            // Job messages are small and latency is the product: with
            // Nagle, a small message can wait 40 ms for an ACK.
            .tcp_nodelay(true)
            .http2_keep_alive_interval(self.timeouts.keepalive_interval)
            .keep_alive_timeout(self.timeouts.keepalive_timeout)
            .keep_alive_while_idle(true);
        // The connect timeout covers TCP; this one covers the TLS handshake
        // and HTTP/2 set-up too.
        match tokio::time::timeout(self.timeouts.connect, endpoint.connect()).await {
            Ok(Ok(channel)) => Ok(InterceptedService::new(channel, self.attach_token())),
            Ok(Err(err)) => Err(ConnectError::Transport(err)),
            Err(_) => Err(ConnectError::Timeout(self.timeouts.connect)),
        }
    }

    /// The interceptor that puts the token on a request.
    pub fn attach_token(&self) -> AttachToken {
        AttachToken(self.token.clone())
    }
}

/// Adds the token, when there is one, and our version to every outgoing
/// request.
#[derive(Debug, Clone)]
pub struct AttachToken(Option<Token>);

impl Interceptor for AttachToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            token.attach(request.metadata_mut());
        }
        crate::version::attach(request.metadata_mut());
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUICK: Timeouts = Timeouts {
        connect: Duration::from_millis(500),
        keepalive_interval: Duration::from_secs(1),
        keepalive_timeout: Duration::from_secs(1),
    };

    #[tokio::test]
    async fn a_closed_port_is_a_transport_error_and_a_bad_address_says_so() {
        // Bind and drop: the port is closed for a moment after.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let connector = Connector::new(None, None, QUICK);
        let err = connector
            .connect(&format!("127.0.0.1:{port}"))
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::Transport(_)), "{err:?}");
        let err = connector.connect("not an address").await.unwrap_err();
        assert!(matches!(err, ConnectError::BadAddress { .. }), "{err:?}");
    }

    #[test]
    fn the_token_goes_on_every_request() {
        let dir = std::env::temp_dir().join(format!("mexec-connector-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let token = Token::from_file(&path).unwrap();
        let connector = Connector::new(None, Some(token.clone()), QUICK);
        let request = connector
            .attach_token()
            .call(tonic::Request::new(()))
            .unwrap();
        assert!(token.admits(request.metadata()));
        let request = Connector::new(None, None, QUICK)
            .attach_token()
            .call(tonic::Request::new(()))
            .unwrap();
        assert!(!token.admits(request.metadata()));
    }
}
