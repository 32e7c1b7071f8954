//! Lease tickets at the door: an executor that is a member of a
//! gatekeeper's cluster runs a job only with a ticket that gatekeeper
//! signed for this node and this user, unexpired and not used before. So
//! per-user limits and fair share cannot be skipped by sending jobs to the
//! executor directly.
//!
//! The rule holds while the node is joined: the gatekeeper gave us our key
//! on the membership stream and that stream is open. When the stream
//! breaks (the gatekeeper is down or unreachable) clients place directly
//! over the members they last knew, and we take those jobs: the farm keeps
//! working through a gatekeeper outage, and the limits, which only the
//! gatekeeper can keep, hold again once it is back. An executor never
//! joined (no `--gatekeeper`, or `--direct-jobs allow`) takes direct jobs.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mexec_common::lease_ticket::{NodeKey, LIFE};
use mexec_proto::v1::LeaseTicket;
use serde::Deserialize;

/// How far our clock may be from the gatekeeper's.
const CLOCK_SKEW: Duration = Duration::from_secs(5);
/// Used tickets remembered at most: a gatekeeper grants far fewer than
/// this within a ticket's life; past it, jobs are refused rather than a
/// replay let through.
const MAX_REMEMBERED: usize = 65_536;

/// Whether a member executor takes jobs placed without the gatekeeper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DirectJobs {
    /// Only with a lease ticket from the gatekeeper (while joined).
    #[default]
    Lease,
    /// Any job, as without a gatekeeper.
    Allow,
}

/// The node's view of its gatekeeper's keys and the tickets used.
#[derive(Debug)]
pub struct LeaseCheck {
    /// The gatekeeper, for messages; `None` when tickets are never asked for.
    gatekeeper: Option<String>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The membership stream is open and gave us a key.
    joined: bool,
    current: Option<NodeKey>,
    /// A restarted gatekeeper's predecessor's key, until its tickets
    /// expire: a client granted a lease just before the restart is not
    /// refused for it.
    previous: Option<(NodeKey, Instant)>,
    /// MACs of used tickets, with their expiry.
    used: HashMap<Vec<u8>, u64>,
}

impl LeaseCheck {
    /// Tickets are asked for when the node joins `gatekeeper` and
    /// `direct` does not allow direct jobs.
    pub fn new(gatekeeper: Option<&str>, direct: DirectJobs) -> LeaseCheck {
        LeaseCheck {
            gatekeeper: gatekeeper
                .filter(|_| direct == DirectJobs::Lease)
                .map(str::to_owned),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The gatekeeper sent our key: tickets are asked for from now on.
    /// A different key than before means a new gatekeeper start.
    pub fn joined(&self, bytes: &[u8]) -> bool {
        let Some(key) = NodeKey::new(bytes) else {
            return false;
        };
        let mut state = self.state();
        if !state.current.as_ref().is_some_and(|k| k.is(bytes)) {
            let until = Instant::now() + LIFE + CLOCK_SKEW;
            state.previous = state.current.take().map(|old| (old, until));
            state.current = Some(key);
        }
        state.joined = true;
        true
    }

    /// The membership stream ended: direct jobs are taken until we join
    /// again.
    pub fn left(&self) {
        self.state().joined = false;
    }

    /// Whether this job of `user` may run on `node` (`now_ms` on our clock).
    pub fn check(
        &self,
        node: &str,
        user: &str,
        ticket: Option<&LeaseTicket>,
        now_ms: u64,
    ) -> Result<(), String> {
        let Some(gatekeeper) = &self.gatekeeper else {
            return Ok(());
        };
        let mut state = self.state();
        if !state.joined {
            return Ok(());
        }
        let refuse = |why: &str| {
            format!(
                "this node takes jobs only with a lease from gatekeeper {gatekeeper}: \
                 set MEXEC_GATEKEEPER={gatekeeper} (not MEXEC_NODES) to place jobs here ({why})"
            )
        };
        let ticket = ticket.ok_or_else(|| refuse("the job came without a lease ticket"))?;
        if ticket.node != node {
            return Err(refuse(&format!("the ticket is for node {}", ticket.node)));
        }
        if ticket.user != user {
            return Err(refuse(&format!("the ticket is for user {}", ticket.user)));
        }
        let skew = CLOCK_SKEW.as_millis() as u64;
        if now_ms > ticket.expires_unix_ms.saturating_add(skew) {
            return Err(refuse("the ticket has expired"));
        }
        let life = LIFE.as_millis() as u64;
        if ticket.expires_unix_ms > now_ms.saturating_add(life + skew) {
            return Err(refuse(
                "the ticket expires too far ahead (are the clocks set?)",
            ));
        }
        // The fields first, for a message that says what is wrong; none of
        // them counts until the MAC says the gatekeeper wrote them.
        if !state.signed(ticket) {
            return Err(refuse("the ticket is not signed by this node's gatekeeper"));
        }
        state
            .use_once(ticket, now_ms.saturating_sub(skew))
            .map_err(refuse)
    }
}

impl State {
    fn signed(&mut self, ticket: &LeaseTicket) -> bool {
        if self
            .previous
            .as_ref()
            .is_some_and(|(_, until)| *until < Instant::now())
        {
            self.previous = None;
        }
        self.current.iter().any(|k| k.verify(ticket))
            || self.previous.iter().any(|(k, _)| k.verify(ticket))
    }

    /// Marks `ticket` used; refused when it was. Tickets that expired
    /// before `expired_before` are forgotten: they are refused as expired.
    fn use_once(&mut self, ticket: &LeaseTicket, expired_before: u64) -> Result<(), &'static str> {
        if self.used.contains_key(ticket.mac.as_ref()) {
            return Err("the ticket was used already; each lease runs one job");
        }
        if self.used.len() >= MAX_REMEMBERED {
            self.used.retain(|_, expires| *expires >= expired_before);
            if self.used.len() >= MAX_REMEMBERED {
                return Err("too many tickets used lately to remember another");
            }
        }
        self.used
            .insert(ticket.mac.to_vec(), ticket.expires_unix_ms);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mexec_common::lease_ticket::Secret;

    const NOW: u64 = 1_700_000_000_000;

    fn joined(secret: &Secret) -> LeaseCheck {
        let check = LeaseCheck::new(Some("gk:7470"), DirectJobs::Lease);
        assert!(check.joined(&secret.node_key_bytes("n1")));
        check
    }

    #[test]
    fn only_a_fresh_ticket_for_this_node_and_user_passes_once() {
        let secret = Secret::from_bytes(b"s");
        let check = joined(&secret);
        let life = LIFE.as_millis() as u64;
        let good = secret.ticket("n1", "alice", 1, NOW + life);
        assert_eq!(check.check("n1", "alice", Some(&good), NOW), Ok(()));
        let again = check.check("n1", "alice", Some(&good), NOW).unwrap_err();
        assert!(again.contains("used already"), "{again}");
        let refused = |ticket: &LeaseTicket| check.check("n1", "alice", Some(ticket), NOW);
        assert!(refused(&secret.ticket("n2", "alice", 2, NOW + life)).is_err());
        assert!(refused(&secret.ticket("n1", "bob", 3, NOW + life)).is_err());
        assert!(refused(&secret.ticket("n1", "alice", 4, NOW - 6_000)).is_err());
        assert!(refused(&secret.ticket("n1", "alice", 5, NOW + 2 * life)).is_err());
        let forged = Secret::from_bytes(b"other").ticket("n1", "alice", 6, NOW + life);
        assert!(refused(&forged).is_err());
        let none = check.check("n1", "alice", None, NOW).unwrap_err();
        assert!(none.contains("MEXEC_GATEKEEPER=gk:7470"), "{none}");
        // Within the skew an expired ticket still passes.
        assert!(refused(&secret.ticket("n1", "alice", 7, NOW - 1_000)).is_ok());
    }

    #[test]
    fn direct_jobs_pass_when_not_joined_or_allowed() {
        let secret = Secret::from_bytes(b"s");
        let check = joined(&secret);
        check.left();
        assert_eq!(check.check("n1", "alice", None, NOW), Ok(()));
        let allow = LeaseCheck::new(Some("gk:7470"), DirectJobs::Allow);
        assert!(allow.joined(&secret.node_key_bytes("n1")));
        assert_eq!(allow.check("n1", "alice", None, NOW), Ok(()));
        let alone = LeaseCheck::new(None, DirectJobs::Lease);
        assert_eq!(alone.check("n1", "alice", None, NOW), Ok(()));
    }

    #[test]
    fn a_restarted_gatekeepers_predecessor_is_trusted_for_one_ticket_life() {
        let (old, new) = (Secret::from_bytes(b"old"), Secret::from_bytes(b"new"));
        let check = joined(&old);
        assert!(check.joined(&new.node_key_bytes("n1")));
        let life = LIFE.as_millis() as u64;
        let from_old = old.ticket("n1", "alice", 1, NOW + life);
        assert_eq!(check.check("n1", "alice", Some(&from_old), NOW), Ok(()));
        check.state().previous.as_mut().unwrap().1 = Instant::now();
        let later = old.ticket("n1", "alice", 2, NOW + life);
        assert!(check.check("n1", "alice", Some(&later), NOW).is_err());
        let from_new = new.ticket("n1", "alice", 1, NOW + life);
        assert_eq!(check.check("n1", "alice", Some(&from_new), NOW), Ok(()));
    }
}
