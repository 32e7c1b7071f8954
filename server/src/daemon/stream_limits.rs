//! A cap on the streams one peer (one IP address) may hold open at once,
//! so a single host cannot tie up a daemon with idle streams. HTTP/2's own
//! `max_concurrent_streams` caps them per connection; this caps them
//! across all of a peer's connections.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

/// Streams one peer may hold open on one connection (HTTP/2 setting).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// Streams one peer may hold open in all, by default.
pub const DEFAULT_MAX_STREAMS_PER_PEER: usize = 1024;

/// Open streams per peer.
#[derive(Debug)]
pub struct PeerStreams {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One open stream; dropping it closes its place.
#[derive(Debug)]
pub struct StreamPlace {
    owner: Arc<PeerStreams>,
    peer: Option<IpAddr>,
}

/// A peer over its limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooMany {
    pub peer: String,
    pub limit: usize,
}

impl PeerStreams {
    pub fn new(limit: usize) -> Arc<PeerStreams> {
        Arc::new(PeerStreams {
            limit,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a place for a stream from `peer` (unknown peers are not
    /// counted: they only occur on in-process transports).
    pub fn enter(self: &Arc<Self>, peer: Option<SocketAddr>) -> Result<StreamPlace, TooMany> {
        let peer = peer.map(|p| p.ip());
        if let Some(ip) = peer {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            let count = open.entry(ip).or_insert(0);
            if *count >= self.limit {
                return Err(TooMany {
                    peer: ip.to_string(),
                    limit: self.limit,
                });
            }
            *count += 1;
        }
        Ok(StreamPlace {
            owner: self.clone(),
            peer,
        })
    }
}

impl Drop for StreamPlace {
    fn drop(&mut self) {
        if let Some(ip) = self.peer {
            let mut open = self.owner.open.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = open.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    open.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_gets_its_limit_and_places_come_back() {
        let streams = PeerStreams::new(2);
        let peer: SocketAddr = "10.0.0.1:1000".parse().unwrap();
        let other: SocketAddr = "10.0.0.2:1000".parse().unwrap();
        let a = streams.enter(Some(peer)).unwrap();
        let _b = streams.enter(Some(peer)).unwrap();
        assert_eq!(streams.enter(Some(peer)).unwrap_err().limit, 2);
        assert!(streams.enter(Some(other)).is_ok());
        drop(a);
        assert!(streams.enter(Some(peer)).is_ok());
    }
}
