//! What answers at an address, asked only after a plain-text call there
//! broke in a way that leaves open whether the job started. A web server
//! (it answers a plain HTTP/1 request in HTTP/1) or a TLS port (it
//! answers with a TLS alert) could not have run a job sent as plain-text
//! gRPC, so the job did not start and the client can say what it reached.
//! A plain-text gRPC peer answers HTTP/1 with HTTP/2 frames: then the
//! probe says nothing and the failure keeps its meaning.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long the probe waits to connect, and then for an answer: a peer
/// that is there answers at once.
const PROBE_WAIT: Duration = Duration::from_secs(1);
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: mexec\r\nConnection: close\r\n\r\n";

/// What spoke at the address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Speaks {
    /// HTTP/1, with its status line.
    Http1(String),
    /// TLS.
    Tls,
}

impl Speaks {
    /// Why a plain-text gRPC call to `authority` could not have reached a
    /// mexec daemon, and what to set instead.
    pub fn explain(&self, authority: &str) -> String {
        match self {
            Speaks::Http1(status) => format!(
                "{authority} is not a mexec daemon's gRPC port: it answers plain HTTP/1 \
                 (`{status}`), as a web server (a daemon's --metrics-listen port) does; give \
                 the daemon's --listen address in MEXEC_NODES or MEXEC_GATEKEEPER"
            ),
            Speaks::Tls => format!(
                "{authority} takes TLS, and this client connects without it: give it \
                 MEXEC_TLS_CA, MEXEC_TLS_CERT and MEXEC_TLS_KEY (or --tls-ca, --tls-cert, \
                 --tls-key) with a certificate from the cluster's CA (`mexec-cert user NAME`)"
            ),
        }
    }
}

/// Asks `authority` in plain HTTP/1 what it is; `None` when it is not
/// plainly a web server or a TLS port (a gRPC peer, or nothing there).
pub async fn probe(authority: &str) -> Option<Speaks> {
    let connect = TcpStream::connect(authority);
    let mut stream = tokio::time::timeout(PROBE_WAIT, connect).await.ok()?.ok()?;
    stream.write_all(REQUEST).await.ok()?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 256];
    let reading = async {
        while answer.len() < 8 || !answer.contains(&b'\n') && answer.len() < 128 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(PROBE_WAIT, reading).await;
    speaks(&answer)
}

/// What `answer`, the first bytes back, says.
fn speaks(answer: &[u8]) -> Option<Speaks> {
    if answer.starts_with(b"HTTP/1.") {
        let text = String::from_utf8_lossy(answer);
        let line = text.split(['\r', '\n']).next().unwrap_or_default();
        let line: String = line.chars().filter(|c| !c.is_control()).take(80).collect();
        return Some(Speaks::Http1(line));
    }
    // A TLS record (an alert, 0x15, or a handshake, 0x16) of TLS 1.x.
    match answer {
        [0x15 | 0x16, 0x03, ..] => Some(Speaks::Tls),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_by_their_first_bytes() {
        assert_eq!(
            speaks(b"HTTP/1.0 400 Bad request\r\nServer: x\r\n"),
            Some(Speaks::Http1("HTTP/1.0 400 Bad request".into()))
        );
        assert_eq!(speaks(&[0x15, 0x03, 0x03, 0x00, 0x02]), Some(Speaks::Tls));
        // HTTP/2 SETTINGS from a plain-text gRPC peer, and nothing.
        assert_eq!(speaks(&[0x00, 0x00, 0x18, 0x04, 0x00]), None);
        assert_eq!(speaks(b""), None);
    }
}
