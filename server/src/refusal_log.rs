//! Every refusal either daemon sends, on record: one warning per refusal
//! with the peer's address, the user (proven by a certificate, or only
//! claimed), the kind (`common::refusal`), the node and the reason.
//!
//! A flood must not fill the disk: per node, kind and peer address, one
//! line per `WINDOW`; the refusals in between are counted and the next line
//! says how many were left out (`suppressed=N`). The table of windows is
//! bounded too: past `MAX_KEYS` peers, the rest share one entry per kind.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use mexec_common::refusal::Refusal;
use mexec_common::telemetry::Escaped;
use mexec_common::tls::Peer;
use tonic::Status;

/// The log target, which collectors filter on.
pub const TARGET: &str = "mexec_server::refusal";
/// At most one line per node, kind and peer in this time.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Peers tracked one by one; beyond this they share an entry.
const MAX_KEYS: usize = 4096;

/// Who was refused, as far as the daemon knows.
#[derive(Debug, Clone, Copy)]
pub enum Who<'a> {
    /// Named by a certificate from the cluster CA.
    Proven(&'a str),
    /// Named only by the request (token mode, or a node relaying).
    Claimed(&'a str),
    /// Refused before any user was named.
    Unknown,
}

impl<'a> Who<'a> {
    /// From the certificate the access check verified, if any, and what
    /// the request claimed (empty when it named no one).
    pub fn of(proven: Option<&'a Peer>, claimed: &'a str) -> Who<'a> {
        match proven {
            Some(Peer::User(name)) => Who::Proven(name),
            Some(Peer::Node(name)) if claimed.is_empty() => Who::Proven(name),
            _ if claimed.is_empty() => Who::Unknown,
            _ => Who::Claimed(claimed),
        }
    }

    fn parts(self) -> (&'a str, &'static str) {
        match self {
            Who::Proven(name) => (name, "certificate"),
            Who::Claimed(name) => (name, "claimed"),
            Who::Unknown => ("", "none"),
        }
    }
}

/// One refusal to put on record.
#[derive(Debug, Clone, Copy)]
pub struct Refused<'a> {
    pub node: &'a str,
    pub kind: Refusal,
    pub peer: Option<SocketAddr>,
    pub who: Who<'a>,
    pub reason: &'a str,
}

/// Records the refusal `status` carries, if it carries one (a stream the
/// client abandoned is no refusal).
pub fn status(node: &str, peer: Option<SocketAddr>, who: Who<'_>, status: &Status) {
    if let Some(kind) = Refusal::of(status) {
        record(Refused {
            node,
            kind,
            peer,
            who,
            reason: status.message(),
        });
    }
}

/// Logs `refused` at warn, unless a line for the same node, kind and peer
/// was written within `WINDOW`; then it only counts.
pub fn record(refused: Refused<'_>) {
    let Some(suppressed) =
        limiter().admit(refused.node, refused.kind, refused.peer, Instant::now())
    else {
        return;
    };
    let (user, proof) = refused.who.parts();
    let peer = refused
        .peer
        .map_or_else(|| "unknown".to_owned(), |p| p.to_string());
    tracing::warn!(
        target: TARGET,
        kind = refused.kind.as_str(),
        node = %Escaped(refused.node),
        peer = %peer,
        user = %Escaped(user),
        proof,
        suppressed,
        reason = %Escaped(refused.reason),
        "refused"
    );
}

type Key = (String, Refusal, Option<IpAddr>);

/// The windows of the lines written, per node, kind and peer.
#[derive(Debug, Default)]
struct Limiter {
    windows: Mutex<HashMap<Key, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    logged_at: Instant,
    suppressed: u64,
}

fn limiter() -> &'static Limiter {
    static LIMITER: OnceLock<Limiter> = OnceLock::new();
    LIMITER.get_or_init(Limiter::default)
}

impl Limiter {
    /// `Some(count left out since the last line)` when a line is due.
    fn admit(
        &self,
        node: &str,
        kind: Refusal,
        peer: Option<SocketAddr>,
        now: Instant,
    ) -> Option<u64> {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() >= MAX_KEYS {
            windows.retain(|_, w| now.duration_since(w.logged_at) < WINDOW);
        }
        let ip = peer.map(|p| p.ip().to_canonical());
        let mut key = (node.to_owned(), kind, ip);
        if windows.len() >= MAX_KEYS && !windows.contains_key(&key) {
            key.2 = None;
        }
        match windows.get_mut(&key) {
            Some(window) if now.duration_since(window.logged_at) < WINDOW => {
                window.suppressed += 1;
                None
            }
            Some(window) => {
                let suppressed = window.suppressed;
                *window = Window {
                    logged_at: now,
                    suppressed: 0,
                };
                Some(suppressed)
            }
            None => {
                windows.insert(
                    key,
                    Window {
                        logged_at: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_window_and_the_next_counts_what_was_left_out() {
        let limiter = Limiter::default();
        let a: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!(limiter.admit("n1", Refusal::Denied, Some(a), t0), Some(0));
        for _ in 0..5 {
            assert_eq!(limiter.admit("n1", Refusal::Denied, Some(a), t0), None);
        }
        // Another peer, kind or node has a window of its own.
        assert_eq!(limiter.admit("n1", Refusal::Denied, Some(b), t0), Some(0));
        assert_eq!(limiter.admit("n1", Refusal::Limit, Some(a), t0), Some(0));
        assert_eq!(limiter.admit("n2", Refusal::Denied, Some(a), t0), Some(0));
        let later = t0 + WINDOW;
        assert_eq!(
            limiter.admit("n1", Refusal::Denied, Some(a), later),
            Some(5)
        );
    }

    #[test]
    fn the_table_stays_bounded_under_a_flood_of_peers() {
        let limiter = Limiter::default();
        let t0 = Instant::now();
        let mut lines = 0;
        for i in 0..(MAX_KEYS as u32 * 4) {
            let peer = SocketAddr::from((std::net::Ipv4Addr::from(i), 1));
            lines += limiter
                .admit("n1", Refusal::Unauthenticated, Some(peer), t0)
                .is_some() as usize;
        }
        assert!(limiter.windows.lock().unwrap().len() <= MAX_KEYS + 1);
        assert!(lines <= MAX_KEYS + 1, "{lines} lines");
    }

    #[test]
    fn who_prefers_the_certificate_to_the_claim() {
        let alice = Peer::User("alice".into());
        assert!(matches!(
            Who::of(Some(&alice), "root"),
            Who::Proven("alice")
        ));
        assert!(matches!(Who::of(None, "bob"), Who::Claimed("bob")));
        assert!(matches!(Who::of(None, ""), Who::Unknown));
    }
}
