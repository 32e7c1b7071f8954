//! Accepting connections with bounds, before any authentication can run:
//! a cap on the connections one peer address holds and on all of them
//! (below the process's descriptor limit, so a flood of sockets never
//! starves the jobs' own pipes), and a deadline for a new connection's
//! first bytes (the HTTP/2 preface, or the TLS hello), so a socket that
//! never speaks is closed instead of holding a descriptor for good.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use mexec_common::clock::now_ms;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Sleep;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// A new connection must send this many bytes (the HTTP/2 preface is 24)
/// within `FIRST_BYTES_DEADLINE`, or it is closed.
const FIRST_BYTES: usize = 24;
pub const FIRST_BYTES_DEADLINE: Duration = Duration::from_secs(10);
/// Connections one peer address may hold: a build host opens one per
/// running `mexec`, so this is well above any `make -j`.
pub const MAX_CONNECTIONS_PER_PEER: usize = 1024;
/// The most connections in all, whatever the descriptor limit allows.
const MAX_CONNECTIONS: usize = 16384;
/// At most one log line per this many milliseconds for a cap that is hit,
/// so a flood does not also flood the log.
const LOG_EVERY_MS: u64 = 1000;

/// The caps, and the connections held now.
#[derive(Debug)]
struct Caps {
    per_peer: usize,
    total: usize,
    held: Mutex<Held>,
    last_log_ms: AtomicU64,
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    per_peer: HashMap<IpAddr, usize>,
}

/// The total cap for this process: half its descriptor limit (the rest is
/// for jobs' pipes, files and the daemon itself), within `MAX_CONNECTIONS`.
pub fn total_cap() -> usize {
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    usize::try_from(limit / 2)
        .unwrap_or(MAX_CONNECTIONS)
        .clamp(16, MAX_CONNECTIONS)
}

impl Caps {
    /// Takes a place for a connection from `peer`, or says which cap is hit.
    fn enter(self: &Arc<Self>, peer: IpAddr) -> Result<Place, String> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held.total >= self.total {
            return Err(format!("{} connections in all", self.total));
        }
        let of_peer = held.per_peer.entry(peer).or_default();
        if *of_peer >= self.per_peer {
            return Err(format!("{} connections from {peer}", self.per_peer));
        }
        *of_peer += 1;
        held.total += 1;
        Ok(Place {
            caps: self.clone(),
            peer,
        })
    }

    fn refused(&self, peer: SocketAddr, cap: &str) {
        let now = now_ms();
        let last = self.last_log_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= LOG_EVERY_MS
            && self
                .last_log_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(%peer, cap, "connection refused: connection cap reached");
        }
    }
}

/// A connection's place under the caps, given back when it closes.
#[derive(Debug)]
struct Place {
    caps: Arc<Caps>,
    peer: IpAddr,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut held = self.caps.held.lock().unwrap_or_else(|p| p.into_inner());
        held.total -= 1;
        if let Some(n) = held.per_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                held.per_peer.remove(&self.peer);
            }
        }
    }
}

/// An accepted connection: the socket, its place under the caps, and the
/// deadline for its first bytes until they arrived.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    first_bytes: Option<(usize, Pin<Box<Sleep>>)>,
    _place: Place,
}

impl Conn {
    /// The peer's address.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.stream.peer_addr().ok()
    }

    /// The bytes that have arrived, without taking them: what the peer
    /// speaks, before anything reads it. Waits for the first byte; 0 when
    /// the peer closed without sending any.
    pub async fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.peek(buf).await
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        let Some((wanted, deadline)) = &mut this.first_bytes else {
            return polled;
        };
        if let Poll::Ready(Ok(())) = polled {
            *wanted = wanted.saturating_sub(buf.filled().len() - before);
            if *wanted == 0 {
                this.first_bytes = None;
            }
            return polled;
        }
        if polled.is_pending() && deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("nothing arrived within {FIRST_BYTES_DEADLINE:?} of connecting"),
            )));
        }
        polled
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts on `listener` under the caps, handing connections to the
/// server; a connection over a cap is closed at once, with a log line.
/// Accepting ends when the server stops taking connections.
pub fn incoming(listener: TcpListener, keepalive: Duration) -> ReceiverStream<io::Result<Conn>> {
    let caps = Arc::new(Caps {
        per_peer: MAX_CONNECTIONS_PER_PEER,
        total: total_cap(),
        held: Mutex::new(Held::default()),
        last_log_ms: AtomicU64::new(0),
    });
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    // Out of descriptors, or the peer gave up in the
                    // backlog: go on accepting once the moment passed.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let place = match caps.enter(peer.ip()) {
                Ok(place) => place,
                Err(cap) => {
                    caps.refused(peer, &cap);
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let _ = set_keepalive(&stream, keepalive);
            let conn = Conn {
                stream,
                first_bytes: Some((
                    FIRST_BYTES,
                    Box::pin(tokio::time::sleep(FIRST_BYTES_DEADLINE)),
                )),
                _place: place,
            };
            if tx.send(Ok(conn)).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// TCP keepalive, so the kernel notices a peer that vanished.
fn set_keepalive(stream: &TcpStream, interval: Duration) -> io::Result<()> {
    let keepalive = socket2::TcpKeepalive::new().with_time(interval);
    socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_per_peer_and_in_all_and_places_come_back() {
        let caps = Arc::new(Caps {
            per_peer: 2,
            total: 3,
            held: Mutex::new(Held::default()),
            last_log_ms: AtomicU64::new(0),
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = caps.enter(a).unwrap();
        let _second = caps.enter(a).unwrap();
        assert!(caps.enter(a).unwrap_err().contains("from 10.0.0.1"));
        let _third = caps.enter(b).unwrap();
        assert!(caps.enter(b).unwrap_err().contains("in all"));
        drop(first);
        assert!(caps.enter(b).is_ok());
    }
}
