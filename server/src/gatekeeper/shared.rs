//! What every gatekeeper handler shares (the cluster, the access checks,
//! the connector to the nodes), and the steps that lease and relayed-run
//! handlers have in common: the stream's first message, the proven user,
//! and waiting in the fair queue for a grant.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mexec_common::clock;
use mexec_common::connector::Connector;
use mexec_common::lease_ticket::{self, Secret};
use mexec_common::refusal::Refusal;
use mexec_proto::v1::{LeaseTicket, Queued};
use tokio::sync::{mpsc, oneshot};
use tonic::{Status, Streaming};

use super::cluster::{Cluster, Grant, QueueFull};
use super::observe::Observer;
use crate::auth::{Access, Caller};
use crate::daemon::PeerStreams;
use crate::metrics::LeaseResult;

/// What every handler shares.
#[derive(Debug)]
pub struct Shared {
    pub cluster: Mutex<Cluster>,
    /// Opens relayed runs on the nodes, with our node certificate and the
    /// cluster token.
    pub nodes: Connector,
    /// Who may call, and as which user.
    pub access: Access,
    /// Open streams per peer address.
    pub streams: Arc<PeerStreams>,
    /// How long a caller has to send a stream's first message.
    pub start_timeout: Duration,
    /// Signs lease tickets; drawn at each start, so a restart voids the
    /// old tickets with the old leases.
    pub lease_secret: Secret,
    /// Metrics, the dashboard's picture and accounting.
    pub observe: Observer,
}

impl Shared {
    /// Runs `f` on the cluster under its lock.
    pub fn with<R>(&self, f: impl FnOnce(&mut Cluster) -> R) -> R {
        let mut cluster = self.cluster.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut cluster)
    }

    /// The user a job or lease is for, proven (certificate, MUNGE
    /// `credential`, a trusted relay) where this gatekeeper requires it, and
    /// checked against the allow list. Fair shares and per-user limits go by
    /// this name, never by a bare claim.
    pub async fn job_user(
        &self,
        caller: Option<&Caller>,
        claimed: &str,
        credential: &str,
    ) -> Result<String, Status> {
        self.access
            .identify(caller, claimed, credential)
            .await
            .map(|identity| identity.user)
            .map_err(|err| err.refusal().status(format!("gatekeeper: {err}")))
    }

    /// The ticket a job of `user` needs to run on the node of `grant`.
    pub fn ticket(&self, grant: &Grant, user: &str) -> LeaseTicket {
        let expires = clock::now_ms() + lease_ticket::LIFE.as_millis() as u64;
        self.lease_secret
            .ticket(&grant.node, user, grant.lease_id, expires)
    }

    /// The first message of a stream, which must come within the start
    /// timeout.
    pub async fn first_message<T>(&self, inbound: &mut Streaming<T>) -> Result<T, Status> {
        match tokio::time::timeout(self.start_timeout, inbound.message()).await {
            Err(_) => Err(Refusal::StartTimeout.status(format!(
                "gatekeeper: nothing arrived within {:?} of opening the stream",
                self.start_timeout
            ))),
            // A client that left before saying anything reads no answer.
            Ok(message) => message?.ok_or_else(|| {
                Status::cancelled("the client closed the stream before its first message")
            }),
        }
    }

    /// Waits for a grant; answers `Queued` first when there is none at
    /// once. `None` when the client left while waiting.
    pub async fn wait_for_grant<T>(
        &self,
        id: u64,
        mut grant: oneshot::Receiver<Grant>,
        out: &mpsc::Sender<Result<T, Status>>,
        queued: impl FnOnce(Queued) -> T,
    ) -> Option<Grant> {
        let asked = std::time::Instant::now();
        let granted = |grant: Grant| {
            let waited = asked.elapsed().as_millis() as u64;
            self.observe
                .lease(LeaseResult::granted, Some((grant.lease_id, waited)));
            grant
        };
        if let Ok(grant) = grant.try_recv() {
            return Some(granted(grant));
        }
        let waiting = Queued {
            node: "gatekeeper".into(),
            queued: self.with(|c| c.queued()),
        };
        let _ = out.send(Ok(queued(waiting))).await;
        tokio::select! {
            grant = &mut grant => grant.ok().map(granted),
            _ = out.closed() => {
                self.with(|c| c.cancel(id));
                self.observe.lease(LeaseResult::cancelled, None);
                None
            }
        }
    }
}

/// The status a client gets when the queue is full.
pub fn queue_full(full: QueueFull) -> Status {
    Refusal::Busy.status(format!(
        "the gatekeeper's queue is full ({} requests waiting); try again later or raise --max-queued",
        full.queued
    ))
}
