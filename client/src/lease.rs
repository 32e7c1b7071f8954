//! Placement leases from the gatekeeper: a slot on a node, held while the
//! lease's stream is open.

use mexec_common::connector::Connector;
use mexec_common::dial::dial;
use mexec_common::nodes::NodeAddr;
use mexec_proto::v1::gatekeeper_client::GatekeeperClient;
use mexec_proto::v1::{
    acquire_request, acquire_response, AcquireRequest, AcquireResponse, LeaseRequest, LeaseTicket,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Streaming};

use crate::failed_call;
use crate::job::Job;
use crate::member_cache::MemberCache;
use crate::outcome::NotStarted;

/// A granted slot; dropping it releases the slot.
#[derive(Debug)]
pub struct Lease {
    /// The node's name.
    pub node: String,
    /// Where to reach its executor.
    pub addr: NodeAddr,
    /// What the node checks before it runs the job; sent with it.
    pub ticket: Option<Box<LeaseTicket>>,
    _requests: mpsc::Sender<AcquireRequest>,
    _responses: Streaming<AcquireResponse>,
}

/// Asks `gatekeeper` for a slot for `job`, avoiding the named nodes. The
/// member list comes along when our cached copy is stale.
pub async fn acquire(
    connector: &Connector,
    gatekeeper: &NodeAddr,
    job: &Job,
    avoid: &[String],
) -> Result<Lease, NotStarted> {
    let channel = dial(connector, gatekeeper)
        .await
        .map_err(NotStarted::Unreachable)?;
    let tls = connector.tls().is_some();
    let munge_credential = connector
        .credential()
        .await
        .map_err(|err| NotStarted::Refused(err.to_string()))?;
    let cache = MemberCache::for_gatekeeper(gatekeeper);
    let (requests, stream) = mpsc::channel(1);
    let _ = requests.try_send(AcquireRequest {
        msg: Some(acquire_request::Msg::Request(LeaseRequest {
            user: job.user.clone(),
            build_id: job.build_id.clone(),
            job_id: job.job_id.clone(),
            client_host: job.client_host.clone(),
            program: job.program(),
            avoid: avoid.to_vec(),
            want_nodes: cache.is_stale(),
            munge_credential,
            toolchain: job.toolchain.clone(),
            require: job.require.clone(),
            cwd: job.executor_cwd().into(),
        })),
    });
    let opened = GatekeeperClient::new(channel)
        .acquire(Request::new(ReceiverStream::new(stream)))
        .await;
    let mut responses = match opened {
        Ok(responses) => responses.into_inner(),
        Err(status) => return Err(sorted(&status, tls, gatekeeper).await),
    };
    loop {
        let message = match responses.message().await {
            Ok(message) => message,
            Err(status) => return Err(sorted(&status, tls, gatekeeper).await),
        };
        match message.and_then(|m| m.msg) {
            Some(acquire_response::Msg::Queued(_)) => continue,
            Some(acquire_response::Msg::Lease(lease)) => {
                if !lease.members.is_empty() {
                    cache.save(&lease.members);
                }
                let addr = lease.address.parse().map_err(|e| {
                    NotStarted::Refused(format!("the gatekeeper gave a bad address: {e}"))
                })?;
                return Ok(Lease {
                    node: lease.node,
                    addr,
                    ticket: lease.ticket.map(Box::new),
                    _requests: requests,
                    _responses: responses,
                });
            }
            None => {
                return Err(NotStarted::Unreachable(
                    "the gatekeeper closed the lease stream".into(),
                ))
            }
        }
    }
}

/// `sort`, except that a call without TLS that failed as something other
/// than a gatekeeper would make it fail asks the address what it is
/// (`port_probe`), and says so: still unreachable, so the job is placed
/// without the gatekeeper.
async fn sorted(status: &tonic::Status, tls: bool, gatekeeper: &NodeAddr) -> NotStarted {
    if failed_call::worth_probing(status, tls) {
        if let Some(speaks) = crate::port_probe::probe(&gatekeeper.authority()).await {
            return NotStarted::Unreachable(speaks.explain(&gatekeeper.authority()));
        }
    }
    sort(status, tls)
}

/// Sorts a failed lease request. Only an answer the gatekeeper chose to
/// give is a refusal; a broken stream (the gatekeeper killed or
/// restarting while we waited in its queue) counts as unreachable, so the
/// job is placed without it instead of failing.
fn sort(status: &tonic::Status, tls: bool) -> NotStarted {
    if !failed_call::answered(status) {
        return NotStarted::Unreachable(format!("the gatekeeper went away: {}", status.message()));
    }
    failed_call::not_started(status, tls)
}
