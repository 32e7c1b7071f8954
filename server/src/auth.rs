//! Who may call the daemons, and for whom a job runs.
//!
//! `Access::check` runs in front of every RPC: with a token configured the
//! request must carry it; with TLS the handshake has already verified the
//! client's certificate against the cluster CA, and here its name becomes
//! the request's `Caller`. `Access::job_user` then decides the user a job
//! runs for: the certificate's name for users (whatever the client
//! claims), the claim when a node relays a user's job or in token mode,
//! and in every case checked against the allow list.

use std::collections::HashSet;
use std::sync::Arc;

use mexec_common::refusal::Refusal;
use mexec_common::tls::{peer_from_der, Peer};
use mexec_common::token::Token;
use tonic::{Request, Status};

use crate::refusal_log::{self, Who};

/// Who is calling, as the handlers see it (a request extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Proven by a certificate from the cluster CA.
    Verified(Peer),
    /// Token mode or loopback: what the client says is all we know.
    Unverified,
}

impl Caller {
    /// The certificate's identity, when one was verified.
    pub fn peer(&self) -> Option<&Peer> {
        match self {
            Caller::Verified(peer) => Some(peer),
            Caller::Unverified => None,
        }
    }

    /// The caller `Access::check` recorded on `request`.
    pub fn of<T>(request: &Request<T>) -> Option<Caller> {
        request.extensions().get::<Caller>().cloned()
    }
}

/// A user refused by the allow list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("user `{0}` is not allowed here (not in allowed_users)")]
pub struct UserDenied(pub String);

/// The checks in front of every RPC of one daemon.
#[derive(Debug, Clone, Default)]
pub struct Access {
    token: Option<Token>,
    tls: bool,
    allowed_users: Option<Arc<HashSet<String>>>,
    /// The node (or gatekeeper) named in the refusal log.
    node: Arc<str>,
    /// What we are, in a version refusal.
    role: &'static str,
}

impl Access {
    /// `tls` says whether connections carry verified client certificates;
    /// `allowed_users` of `None` admits every user.
    pub fn new(token: Option<Token>, tls: bool, allowed_users: Option<Vec<String>>) -> Self {
        Access {
            token,
            tls,
            allowed_users: allowed_users.map(|users| Arc::new(users.into_iter().collect())),
            node: Arc::from(""),
            role: "daemon",
        }
    }

    /// Names `node` (and our `role`, "executor" or "gatekeeper") in the
    /// refusals and their log lines.
    pub fn at_node(mut self, node: &str, role: &'static str) -> Self {
        self.node = Arc::from(node);
        self.role = role;
        self
    }

    /// Admits or refuses one request, putting a refusal on record.
    #[allow(clippy::result_large_err)] // tonic's interceptor signature
    pub fn check(&self, request: Request<()>) -> Result<Request<()>, Status> {
        let peer = request.remote_addr();
        let proven = request
            .peer_certs()
            .and_then(|chain| chain.first().and_then(|leaf| peer_from_der(leaf)));
        self.admit(request).inspect_err(|refused| {
            refusal_log::status(&self.node, peer, Who::of(proven.as_ref(), ""), refused)
        })
    }

    /// Admits or refuses one request, and records its `Caller`.
    #[allow(clippy::result_large_err)] // tonic's interceptor signature
    fn admit(&self, mut request: Request<()>) -> Result<Request<()>, Status> {
        mexec_common::version::check(request.metadata(), self.role)
            .map_err(|mismatch| Refusal::Version.status(mismatch.to_string()))?;
        if let Some(token) = &self.token {
            if !token.admits(request.metadata()) {
                return Err(Refusal::Unauthenticated.status(
                    "missing or wrong token: give the cluster's token with --token-file or MEXEC_TOKEN_FILE",
                ));
            }
        }
        let caller = if self.tls {
            let peer = request
                .peer_certs()
                .and_then(|chain| chain.first().and_then(|leaf| peer_from_der(leaf)))
                .ok_or_else(|| {
                    Refusal::Unauthenticated.status(
                        "the client certificate names no one (no common name); issue it with mexec-cert",
                    )
                })?;
            if let Peer::User(name) = &peer {
                self.allow(name)
                    .map_err(|denied| Refusal::Denied.status(denied.to_string()))?;
            }
            Caller::Verified(peer)
        } else {
            Caller::Unverified
        };
        request.extensions_mut().insert(caller);
        Ok(request)
    }

    /// The user a job runs for, given what the client `claimed`.
    pub fn job_user(&self, caller: Option<&Caller>, claimed: &str) -> Result<String, UserDenied> {
        let user = match caller {
            Some(Caller::Verified(Peer::User(name))) => name.clone(),
            // A node relays for a user it has itself verified.
            Some(Caller::Verified(Peer::Node(_))) | Some(Caller::Unverified) | None => {
                claimed.to_owned()
            }
        };
        self.allow(&user)?;
        Ok(user)
    }

    /// The node named in refusals.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Whether TLS identities are in force (so a node must prove it is one).
    pub fn requires_certificates(&self) -> bool {
        self.tls
    }

    fn allow(&self, user: &str) -> Result<(), UserDenied> {
        match &self.allowed_users {
            Some(allowed) if !allowed.contains(user) => Err(UserDenied(user.to_owned())),
            _ => Ok(()),
        }
    }
}

/// As an interceptor, `Access` stands in front of a whole service.
impl tonic::service::Interceptor for Access {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_override_claims_and_the_allow_list_applies_to_the_result() {
        let access = Access::new(None, true, Some(vec!["alice".into()]));
        let alice = Caller::Verified(Peer::User("alice".into()));
        assert_eq!(access.job_user(Some(&alice), "root").unwrap(), "alice");
        let relay = Caller::Verified(Peer::Node("gk".into()));
        assert_eq!(access.job_user(Some(&relay), "alice").unwrap(), "alice");
        assert_eq!(
            access.job_user(Some(&relay), "mallory"),
            Err(UserDenied("mallory".into()))
        );
        let open = Access::new(None, false, None);
        assert_eq!(open.job_user(None, "bob").unwrap(), "bob");
    }
}
