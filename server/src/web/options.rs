//! The HTTP listeners' options and their access rule.

use std::net::SocketAddr;

use mexec_common::tls::Tls;
use mexec_common::token::Token;
use serde::Deserialize;

use crate::daemon::DaemonSettings;

/// Flags both daemons take for their HTTP listeners.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct WebFlags {
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics [default: off].
    #[arg(long, env = "MEXEC_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Serve the HTTP listeners as plain HTTP without the token even beyond
    /// loopback or with TLS configured (anyone who reaches them sees user
    /// names and commands).
    #[arg(long)]
    pub http_insecure: bool,
}

/// The config-file keys of the same.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct WebFile {
    /// Where to serve `/metrics`. Default: nowhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Plain HTTP without the token beyond loopback. Default: false.
    pub http_insecure: Option<bool>,
}

/// How a listener is protected, from the daemon's own settings.
#[derive(Debug, Clone)]
pub struct WebAccess {
    /// HTTPS with a client certificate from the cluster CA.
    pub tls: Option<Tls>,
    /// The token every request must carry.
    pub token: Option<Token>,
    /// Plain HTTP without a token was asked for.
    pub insecure: bool,
}

/// Why an HTTP listener was refused.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error(
        "refusing to serve HTTP on {listen} without authentication: anyone who can reach it \
         could read the farm's users and commands. Give --token-file or --tls-*, listen on \
         127.0.0.1, or pass --http-insecure to accept the risk"
    )]
    OpenDoor { listen: SocketAddr },
    #[error("cannot serve HTTPS: {0}")]
    Tls(String),
    #[error("cannot listen on {listen}: {source}")]
    Bind {
        listen: SocketAddr,
        source: std::io::Error,
    },
}

impl WebFlags {
    /// `--http-insecure`, from the flag or the file.
    pub fn insecure(&self, file: &WebFile) -> bool {
        self.http_insecure || file.http_insecure.unwrap_or(false)
    }
}

impl WebAccess {
    /// The protection of a listener on `listen` of a daemon with `daemon`'s
    /// settings; refused when it would be open beyond loopback.
    pub fn resolve(
        listen: SocketAddr,
        daemon: &DaemonSettings,
        insecure: bool,
    ) -> Result<WebAccess, WebError> {
        let access = if insecure {
            WebAccess {
                tls: None,
                token: None,
                insecure,
            }
        } else {
            WebAccess {
                tls: daemon.tls.clone(),
                // A certificate from the cluster CA is enough, as a browser
                // cannot add a header; the token is for token mode.
                token: daemon.tls.is_none().then(|| daemon.token.clone()).flatten(),
                insecure,
            }
        };
        if access.is_open() && !listen.ip().is_loopback() && !insecure {
            return Err(WebError::OpenDoor { listen });
        }
        Ok(access)
    }

    /// Neither TLS nor the token protects the listener.
    pub fn is_open(&self) -> bool {
        self.tls.is_none() && self.token.is_none()
    }

    /// The URL scheme it serves.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// An HTTP listener asked for: where, and how it is protected.
#[derive(Debug, Clone)]
pub struct WebListen {
    pub listen: SocketAddr,
    pub access: WebAccess,
}

impl WebListen {
    /// The listener at `listen`, if one is asked for, under the rule.
    pub fn resolve(
        listen: Option<SocketAddr>,
        daemon: &DaemonSettings,
        insecure: bool,
    ) -> Result<Option<WebListen>, WebError> {
        listen
            .map(|listen| {
                let access = WebAccess::resolve(listen, daemon, insecure)?;
                Ok(WebListen { listen, access })
            })
            .transpose()
    }

    /// Binds it (see `listener::bind`).
    pub async fn bind(&self) -> Result<tokio::net::TcpListener, WebError> {
        super::listener::bind(self.listen, &self.access).await
    }
}
