//! Lease tickets: the gatekeeper's permission for one job of one user on one
//! node, signed so that the node can check it without asking anyone.
//!
//! The gatekeeper draws a `Secret` at each start and gives each node that
//! joins its own `NodeKey` (an HMAC of the node's name under the secret), so
//! a node's key signs tickets for that node only: a node that is taken over
//! cannot forge tickets for the others. A ticket is an HMAC-SHA256 over the
//! node, the user, the lease id and the expiry, each length-prefixed so that
//! no two field lists sign the same bytes.

use std::time::Duration;

use mexec_proto::v1::LeaseTicket;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// How long a ticket is good for after its grant: long enough for a client
/// to dial the node, short enough that a ticket seen on the wire is soon
/// worthless.
pub const LIFE: Duration = Duration::from_secs(30);
/// The bytes of a secret and of a node key.
pub const KEY_BYTES: usize = 32;

/// Separates node keys from tickets signed under the same construction.
const NODE_KEY_CONTEXT: &[u8] = b"mexec node lease key v1\0";
const TICKET_CONTEXT: &[u8] = b"mexec lease ticket v1\0";

/// The gatekeeper's secret, new at each start.
pub struct Secret(hmac::Key);

impl Secret {
    /// A fresh random secret.
    pub fn generate() -> Secret {
        let mut bytes = [0u8; KEY_BYTES];
        // The system's random source failing is no state to run a
        // gatekeeper in: without it, tickets would be guessable.
        SystemRandom::new()
            .fill(&mut bytes)
            .expect("the system random number generator failed");
        Secret::from_bytes(&bytes)
    }

    /// The secret of these bytes (tests that play the gatekeeper).
    pub fn from_bytes(bytes: &[u8]) -> Secret {
        Secret(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    /// The key node `node` checks its tickets with, as sent to it.
    pub fn node_key_bytes(&self, node: &str) -> Vec<u8> {
        let mut message = NODE_KEY_CONTEXT.to_vec();
        message.extend_from_slice(node.as_bytes());
        hmac::sign(&self.0, &message).as_ref().to_vec()
    }

    /// A ticket for one job of `user` on `node`, good until `expires_unix_ms`.
    pub fn ticket(
        &self,
        node: &str,
        user: &str,
        lease_id: u64,
        expires_unix_ms: u64,
    ) -> LeaseTicket {
        let key = NodeKey::new(&self.node_key_bytes(node)).expect("an HMAC-SHA256 is a key");
        key.sign(node, user, lease_id, expires_unix_ms)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// One node's key: signs and checks the tickets for that node.
#[derive(Clone)]
pub struct NodeKey {
    key: hmac::Key,
    /// To tell a new gatekeeper's key from the one we have.
    bytes: Vec<u8>,
}

impl NodeKey {
    /// The key of these bytes; `None` unless they are `KEY_BYTES` long.
    pub fn new(bytes: &[u8]) -> Option<NodeKey> {
        (bytes.len() == KEY_BYTES).then(|| NodeKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
            bytes: bytes.to_vec(),
        })
    }

    /// Whether this is the key of these bytes.
    pub fn is(&self, bytes: &[u8]) -> bool {
        self.bytes == bytes
    }

    /// The ticket for these fields.
    pub fn sign(&self, node: &str, user: &str, lease_id: u64, expires_unix_ms: u64) -> LeaseTicket {
        let tag = hmac::sign(&self.key, &signed(node, user, lease_id, expires_unix_ms));
        LeaseTicket {
            node: node.to_owned(),
            user: user.to_owned(),
            lease_id,
            expires_unix_ms,
            mac: tag.as_ref().to_vec().into(),
        }
    }

    /// Whether `ticket` was signed with this key (in constant time).
    pub fn verify(&self, ticket: &LeaseTicket) -> bool {
        let message = signed(
            &ticket.node,
            &ticket.user,
            ticket.lease_id,
            ticket.expires_unix_ms,
        );
        hmac::verify(&self.key, &message, &ticket.mac).is_ok()
    }
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeKey(..)")
    }
}

/// The bytes a ticket's MAC covers.
fn signed(node: &str, user: &str, lease_id: u64, expires_unix_ms: u64) -> Vec<u8> {
    let mut message = TICKET_CONTEXT.to_vec();
    for field in [node.as_bytes(), user.as_bytes()] {
        message.extend_from_slice(&(field.len() as u64).to_be_bytes());
        message.extend_from_slice(field);
    }
    message.extend_from_slice(&lease_id.to_be_bytes());
    message.extend_from_slice(&expires_unix_ms.to_be_bytes());
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_checks_only_under_its_nodes_key_and_unchanged() {
        let secret = Secret::from_bytes(b"test secret");
        let n1 = NodeKey::new(&secret.node_key_bytes("n1")).unwrap();
        let n2 = NodeKey::new(&secret.node_key_bytes("n2")).unwrap();
        let ticket = secret.ticket("n1", "alice", 7, 1_000);
        assert!(n1.verify(&ticket));
        assert!(!n2.verify(&ticket));
        let mut other_user = ticket.clone();
        other_user.user = "bob".into();
        assert!(!n1.verify(&other_user));
        let mut later = ticket.clone();
        later.expires_unix_ms += 1;
        assert!(!n1.verify(&later));
        // Length prefixes: moving a byte from the node to the user changes
        // what is signed.
        assert_ne!(signed("ab", "c", 1, 1), signed("a", "bc", 1, 1));
        let other = Secret::from_bytes(b"another gatekeeper");
        assert!(!NodeKey::new(&other.node_key_bytes("n1"))
            .unwrap()
            .verify(&ticket));
        assert!(NodeKey::new(b"short").is_none());
    }
}
