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

use mexec_common::munge::{Munge, MungeError};
use mexec_common::refusal::Refusal;
use mexec_common::tls::{peer_from_der, Peer};
use mexec_common::token::Token;
use nix::unistd::{Uid, User};
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
    munge: Option<Munge>,
    /// Who may vouch for another user; `None`: any node certificate.
    relay_from: Option<Arc<HashSet<String>>>,
    /// Whether a user's claim alone is refused (see `requiring_proof`).
    require_proof: bool,
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
            ..Access::default()
        }
    }

    /// Users may also prove who they are with MUNGE credentials decoded by
    /// `munge`; `relay_from` names who may vouch for another user. With
    /// MUNGE, a bare claim is no longer taken.
    pub fn with_proof(mut self, munge: Option<Munge>, relay_from: Option<Vec<String>>) -> Self {
        self.require_proof |= munge.is_some();
        self.munge = munge;
        self.relay_from = relay_from.map(|names| Arc::new(names.into_iter().collect()));
        self
    }

    /// Refuses users who only claim a name (token mode, no credential), and
    /// relays by anyone `relay_from` does not name: for a node that runs
    /// jobs as their submitters.
    pub fn requiring_proof(mut self) -> Self {
        self.require_proof = true;
        self.relay_from.get_or_insert_with(Default::default);
        self
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

    /// The user a job (or lease) is for: proven by the caller's user
    /// certificate or the MUNGE `credential`, vouched for by a relay this
    /// node trusts, or (where no proof is required) as `claimed`; then
    /// checked against the allow list.
    pub async fn identify(
        &self,
        caller: Option<&Caller>,
        claimed: &str,
        credential: &str,
    ) -> Result<Identity, IdentityError> {
        let identity = match (&self.munge, credential.is_empty()) {
            (Some(munge), false) => self.proven_by_munge(munge, credential).await?,
            _ => self.proven_by_caller(caller, claimed)?,
        };
        self.allow(&identity.user)?;
        Ok(identity)
    }

    async fn proven_by_munge(
        &self,
        munge: &Munge,
        credential: &str,
    ) -> Result<Identity, IdentityError> {
        let decoded = munge
            .decode_async(credential.to_owned())
            .await
            .map_err(IdentityError::Munge)?;
        let maker = User::from_uid(Uid::from_raw(decoded.uid))
            .ok()
            .flatten()
            .ok_or(IdentityError::UnknownUid(decoded.uid))?
            .name;
        match decoded.payload.strip_prefix(RELAY_PAYLOAD) {
            Some(user) if !user.is_empty() => {
                if !self.trusts_relay(&maker) {
                    return Err(IdentityError::UntrustedRelay(maker));
                }
                Ok(Identity {
                    user: String::from_utf8_lossy(user).into_owned(),
                    proof: Proof::Relayed(format!("MUNGE account {maker}")),
                })
            }
            _ => Ok(Identity {
                user: maker,
                proof: Proof::Munge,
            }),
        }
    }

    fn proven_by_caller(
        &self,
        caller: Option<&Caller>,
        claimed: &str,
    ) -> Result<Identity, IdentityError> {
        match caller {
            Some(Caller::Verified(Peer::User(name))) => Ok(Identity {
                user: name.clone(),
                proof: Proof::Certificate,
            }),
            // A node relays for a user it has itself verified.
            Some(Caller::Verified(Peer::Node(node))) if self.trusts_relay(node) => Ok(Identity {
                user: claimed.to_owned(),
                proof: Proof::Relayed(format!("node certificate {node}")),
            }),
            Some(Caller::Verified(Peer::Node(node))) => {
                Err(IdentityError::UntrustedRelay(node.clone()))
            }
            Some(Caller::Unverified) | None if self.require_proof => {
                Err(IdentityError::Unproven(claimed.to_owned()))
            }
            Some(Caller::Unverified) | None => Ok(Identity {
                user: claimed.to_owned(),
                proof: Proof::Claimed,
            }),
        }
    }

    fn trusts_relay(&self, name: &str) -> bool {
        self.relay_from
            .as_ref()
            .is_none_or(|trusted| trusted.contains(name))
    }

    /// The node named in refusals.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// What we are ("executor" or "gatekeeper"), in refusals.
    pub fn role(&self) -> &'static str {
        self.role
    }

    /// Whether TLS identities are in force (so a node must prove it is one).
    pub fn requires_certificates(&self) -> bool {
        self.tls
    }

    /// This node's munged, when users prove themselves with MUNGE.
    pub fn munge(&self) -> Option<&Munge> {
        self.munge.as_ref()
    }

    fn allow(&self, user: &str) -> Result<(), UserDenied> {
        match &self.allowed_users {
            Some(allowed) if !allowed.contains(user) => Err(UserDenied(user.to_owned())),
            _ => Ok(()),
        }
    }
}

/// The payload of a MUNGE credential by which a relay (the gatekeeper)
/// vouches for a user: this prefix, then the user's name.
pub const RELAY_PAYLOAD: &[u8] = b"mexec-relay-user:";

/// Who a request is for, and how that is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub proof: Proof,
}

/// How a user's name was established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// The client's user certificate.
    Certificate,
    /// A MUNGE credential the client's munged made for its uid.
    Munge,
    /// A relay this node trusts (named) vouched for the user.
    Relayed(String),
    /// The client said so (token mode, or no authentication).
    Claimed,
}

/// Why a request's user was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("{0}")]
    Denied(#[from] UserDenied),
    #[error(
        "user `{0}` is only claimed, not proven: give a user certificate \
         (mutual TLS, --tls-cert) or a MUNGE credential (--munge)"
    )]
    Unproven(String),
    #[error("{0}; the job was refused")]
    Munge(MungeError),
    #[error("the MUNGE credential is for uid {0}, which has no account here")]
    UnknownUid(u32),
    #[error(
        "`{0}` may not vouch for another user here (not in relay_from / --relay-from); \
         the job was refused"
    )]
    UntrustedRelay(String),
}

impl IdentityError {
    /// The refusal: denied for a known caller not allowed (the allow list,
    /// a relay not trusted), unauthenticated for a missing, false or reused
    /// proof.
    pub fn refusal(&self) -> Refusal {
        match self {
            IdentityError::Denied(_)
            | IdentityError::UnknownUid(_)
            | IdentityError::UntrustedRelay(_) => Refusal::Denied,
            IdentityError::Unproven(_) | IdentityError::Munge(_) => Refusal::Unauthenticated,
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

    async fn user(
        access: &Access,
        caller: Option<&Caller>,
        claimed: &str,
    ) -> Result<String, IdentityError> {
        access.identify(caller, claimed, "").await.map(|id| id.user)
    }

    #[tokio::test]
    async fn certificates_override_claims_and_the_allow_list_applies_to_the_result() {
        let access = Access::new(None, true, Some(vec!["alice".into()]));
        let alice = Caller::Verified(Peer::User("alice".into()));
        assert_eq!(user(&access, Some(&alice), "root").await.unwrap(), "alice");
        let relay = Caller::Verified(Peer::Node("gk".into()));
        assert_eq!(user(&access, Some(&relay), "alice").await.unwrap(), "alice");
        assert_eq!(
            user(&access, Some(&relay), "mallory").await,
            Err(IdentityError::Denied(UserDenied("mallory".into())))
        );
        let open = Access::new(None, false, None);
        assert_eq!(user(&open, None, "bob").await.unwrap(), "bob");
    }

    #[tokio::test]
    async fn requiring_proof_refuses_claims_and_relays_not_named() {
        let access = Access::new(None, true, None)
            .with_proof(None, Some(vec!["gk".into()]))
            .requiring_proof();
        let gk = Caller::Verified(Peer::Node("gk".into()));
        let other = Caller::Verified(Peer::Node("n2".into()));
        let relayed = access.identify(Some(&gk), "alice", "").await.unwrap();
        assert_eq!(relayed.proof, Proof::Relayed("node certificate gk".into()));
        let err = user(&access, Some(&other), "alice").await.unwrap_err();
        assert_eq!(err, IdentityError::UntrustedRelay("n2".into()));
        assert_eq!(err.refusal(), Refusal::Denied);
        let err = user(&access, Some(&Caller::Unverified), "alice")
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("only claimed, not proven"),
            "{err}"
        );
        // Without a list, requiring proof trusts no relay at all.
        let strict = Access::new(None, true, None).requiring_proof();
        assert!(user(&strict, Some(&gk), "alice").await.is_err());
    }
}
