//! Mutual TLS for every mexec connection: loading the cluster CA and this
//! program's certificate and key, building tonic's server and client
//! configurations, and reading who the peer is from its certificate.
//!
//! The cluster CA (made by `mexec-cert`) issues two kinds of certificate,
//! told apart by their extended key usage: *node* certificates (executors,
//! the gatekeeper) may serve and connect (serverAuth and clientAuth);
//! *user* certificates may only connect (clientAuth). The common name is the
//! node's or the user's name. rustls (with the ring provider) verifies
//! chains, validity dates and key usage; this module only names the peer.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use x509_parser::prelude::{FromDer, X509Certificate};

/// How long a TLS handshake may take before the connection is dropped: a
/// peer that opens a socket and says nothing must not hold it for ever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The three files of a TLS set-up, as given by `--tls-ca`, `--tls-cert`
/// and `--tls-key` (or their variables and config keys).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsPaths {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "TLS needs all three of --tls-ca, --tls-cert and --tls-key (or none of them); \
         missing: {0}"
    )]
    Incomplete(String),
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path} holds no PEM `{label}` block")]
    NotPem {
        what: &'static str,
        path: PathBuf,
        label: &'static str,
    },
}

/// A loaded TLS set-up: the CA that vouches for peers, and our own
/// certificate and key.
#[derive(Clone)]
pub struct Tls {
    ca: Certificate,
    identity: Identity,
    /// The same files as PEM, for the daemons, which serve TLS with
    /// rustls directly rather than through tonic (`server::daemon`).
    pem: std::sync::Arc<TlsPem>,
}

/// The PEM text of a TLS set-up.
#[derive(Clone)]
#[allow(missing_debug_implementations)] // holds the key
pub struct TlsPem {
    pub ca: Vec<u8>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never goes into logs.
        f.write_str("Tls(..)")
    }
}

impl TlsPaths {
    /// Loads the files; `Ok(None)` when none is given (token or open mode).
    pub fn load(&self) -> Result<Option<Tls>, TlsError> {
        let (ca, cert, key) = match (&self.ca, &self.cert, &self.key) {
            (None, None, None) => return Ok(None),
            (Some(ca), Some(cert), Some(key)) => (ca, cert, key),
            _ => {
                let missing: Vec<&str> = [
                    ("--tls-ca", self.ca.is_none()),
                    ("--tls-cert", self.cert.is_none()),
                    ("--tls-key", self.key.is_none()),
                ]
                .into_iter()
                .filter_map(|(flag, absent)| absent.then_some(flag))
                .collect();
                return Err(TlsError::Incomplete(missing.join(", ")));
            }
        };
        let ca = read_pem("CA certificate", ca, "CERTIFICATE")?;
        let cert = read_pem("certificate", cert, "CERTIFICATE")?;
        let key = read_pem("private key", key, "PRIVATE KEY")?;
        Ok(Some(Tls {
            ca: Certificate::from_pem(&ca),
            identity: Identity::from_pem(&cert, &key),
            pem: std::sync::Arc::new(TlsPem { ca, cert, key }),
        }))
    }

    /// Whether any of the three is given.
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }

    /// Each field from `self`, else from `fallback` (flags over the file).
    pub fn or(self, fallback: TlsPaths) -> TlsPaths {
        TlsPaths {
            ca: self.ca.or(fallback.ca),
            cert: self.cert.or(fallback.cert),
            key: self.key.or(fallback.key),
        }
    }
}

fn read_pem(what: &'static str, path: &Path, label: &'static str) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })?;
    // Checked here so a wrong file is named at start-up, not as an opaque
    // handshake failure on the first connection.
    let text = String::from_utf8_lossy(&bytes);
    let marker = format!("-----BEGIN {label}-----");
    let any_key = label == "PRIVATE KEY"
        && text.contains("-----BEGIN ")
        && text.contains(" PRIVATE KEY-----");
    if !text.contains(&marker) && !any_key {
        return Err(TlsError::NotPem {
            what,
            path: path.to_owned(),
            label,
        });
    }
    Ok(bytes)
}

impl Tls {
    /// The CA, certificate and key as PEM.
    pub fn pem(&self) -> &TlsPem {
        &self.pem
    }

    /// A client configuration that trusts only the cluster CA (not the
    /// system's roots) and presents our certificate.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .timeout(HANDSHAKE_TIMEOUT)
    }
}

/// An endpoint for `host:port`: `https` with our certificate when `tls` is
/// given, plain `http` otherwise. Every channel mexec opens goes through
/// here, so no connection can skip TLS by accident.
pub fn endpoint(authority: &str, tls: Option<&Tls>) -> Result<Endpoint, tonic::transport::Error> {
    endpoint_for(authority, tls, None)
}

/// Like `endpoint`, checking the server's certificate against `node` (a
/// name `mexec-cert node` always puts in it) instead of the host part of
/// `authority`, which may be an address the certificate does not list.
pub fn endpoint_for(
    authority: &str,
    tls: Option<&Tls>,
    node: Option<&str>,
) -> Result<Endpoint, tonic::transport::Error> {
    match tls {
        Some(tls) => {
            let mut config = tls.client_config();
            if let Some(node) = node {
                config = config.domain_name(node);
            }
            Endpoint::from_shared(format!("https://{authority}"))?.tls_config(config)
        }
        None => Endpoint::from_shared(format!("http://{authority}")),
    }
}

/// What a peer's certificate says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A person; jobs run on their behalf are accounted to this name.
    User(String),
    /// An executor or the gatekeeper, trusted to relay jobs for users.
    Node(String),
}

impl Peer {
    /// The name in the certificate.
    pub fn name(&self) -> &str {
        match self {
            Peer::User(name) | Peer::Node(name) => name,
        }
    }
}

/// Reads the peer from the leaf of a verified chain (`Request::peer_certs`).
/// `None` when the certificate has no usable common name.
pub fn peer_from_der(leaf: &[u8]) -> Option<Peer> {
    let (_, cert) = X509Certificate::from_der(leaf).ok()?;
    let name = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    if name.is_empty() {
        return None;
    }
    let serves = cert
        .extended_key_usage()
        .ok()
        .flatten()
        .is_some_and(|eku| eku.value.server_auth);
    Some(if serves {
        Peer::Node(name)
    } else {
        Peer::User(name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_three_files_or_none() {
        assert!(TlsPaths::default().load().unwrap().is_none());
        let half = TlsPaths {
            ca: Some("/x/ca.pem".into()),
            ..TlsPaths::default()
        };
        let err = half.load().unwrap_err().to_string();
        assert!(err.contains("missing: --tls-cert, --tls-key"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_pem_is_named() {
        let dir = std::env::temp_dir().join(format!("mexec-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let paths = TlsPaths {
            ca: Some(junk.clone()),
            cert: Some(junk.clone()),
            key: Some(junk.clone()),
        };
        let err = paths.load().unwrap_err().to_string();
        assert!(
            err.contains("CA certificate") && err.contains("junk.pem"),
            "{err}"
        );
        assert!(peer_from_der(b"garbage").is_none());
    }
}
