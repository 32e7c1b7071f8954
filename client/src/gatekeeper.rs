//! Talking to the gatekeeper: placement leases, the cached member list for
//! when the gatekeeper is down, and the cluster status.

use std::path::PathBuf;
use std::time::Duration;

use mexec_common::nodes::NodeAddr;
use mexec_common::token::Token;
use mexec_proto::v1::gatekeeper_client::GatekeeperClient;
use mexec_proto::v1::{
    acquire_request, acquire_response, AcquireRequest, AcquireResponse, ClusterStatusReply,
    ClusterStatusRequest, LeaseRequest, Member,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Streaming};

use crate::job::Job;
use crate::placement::shared_state::{now_ms, SharedState};
use crate::remote::{self, NotStarted};

/// A cached member list older than this is refreshed with the next lease.
const MEMBERS_TTL_MS: u64 = 30_000;

/// A granted slot; dropping it releases the slot.
#[derive(Debug)]
pub struct Lease {
    /// The node's name.
    pub node: String,
    /// Where to reach its executor.
    pub addr: NodeAddr,
    _requests: mpsc::Sender<AcquireRequest>,
    _responses: Streaming<AcquireResponse>,
}

/// Why no lease came.
#[derive(Debug)]
pub enum NoLease {
    /// The gatekeeper cannot be reached.
    Unreachable(String),
    /// Its queue is full: ask again later.
    Busy(String),
    /// It said no (a bad token, a malformed request...).
    Refused(String),
}

/// Asks `gatekeeper` for a slot for `job`, avoiding the named nodes.
pub async fn acquire(
    gatekeeper: &NodeAddr,
    token: Option<&Token>,
    job: &Job,
    avoid: &[String],
) -> Result<Lease, NoLease> {
    let channel = remote::connect(gatekeeper)
        .await
        .map_err(NoLease::Unreachable)?;
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
        })),
    });
    let mut request = Request::new(ReceiverStream::new(stream));
    if let Some(token) = token {
        token.attach(request.metadata_mut());
    }
    let mut responses = GatekeeperClient::new(channel)
        .acquire(request)
        .await
        .map_err(|status| sort(&status))?
        .into_inner();
    loop {
        let message = responses.message().await.map_err(|status| sort(&status))?;
        match message.and_then(|m| m.msg) {
            Some(acquire_response::Msg::Queued(_)) => continue,
            Some(acquire_response::Msg::Lease(lease)) => {
                if !lease.members.is_empty() {
                    cache.save(&lease.members);
                }
                let addr = lease.address.parse().map_err(|e| {
                    NoLease::Refused(format!("the gatekeeper gave a bad address: {e}"))
                })?;
                return Ok(Lease {
                    node: lease.node,
                    addr,
                    _requests: requests,
                    _responses: responses,
                });
            }
            None => {
                return Err(NoLease::Unreachable(
                    "the gatekeeper closed the lease stream".into(),
                ))
            }
        }
    }
}

/// Sorts a failed lease request. Only an answer the gatekeeper chose to
/// give is a refusal; a broken stream (the gatekeeper killed or
/// restarting while we waited in its queue) counts as unreachable, so the
/// job is placed without it instead of failing.
fn sort(status: &tonic::Status) -> NoLease {
    if !remote::answered(status) {
        return NoLease::Unreachable(format!("the gatekeeper went away: {}", status.message()));
    }
    match remote::classify(status) {
        NotStarted::Busy(cause) => NoLease::Busy(cause),
        NotStarted::Unreachable(cause) => NoLease::Unreachable(cause),
        NotStarted::Refused(cause) => NoLease::Refused(cause),
    }
}

/// Asks `gatekeeper` for the cluster's status.
pub async fn cluster_status(
    gatekeeper: &NodeAddr,
    token: Option<&Token>,
) -> Result<ClusterStatusReply, String> {
    let channel = remote::connect(gatekeeper).await?;
    let mut request = Request::new(ClusterStatusRequest {});
    request.set_timeout(Duration::from_secs(5));
    if let Some(token) = token {
        token.attach(request.metadata_mut());
    }
    GatekeeperClient::new(channel)
        .cluster_status(request)
        .await
        .map(|r| r.into_inner())
        .map_err(|s| s.message().to_owned())
}

/// The member list last learned from a gatekeeper, kept beside the
/// placement state, for direct placement while the gatekeeper is down.
#[derive(Debug, Clone)]
pub struct MemberCache {
    path: PathBuf,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CachedMembers {
    updated_ms: u64,
    members: Vec<CachedMember>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CachedMember {
    node: String,
    address: String,
    slots: u32,
}

impl MemberCache {
    /// The cache file for `gatekeeper`.
    pub fn for_gatekeeper(gatekeeper: &NodeAddr) -> Self {
        let name = gatekeeper
            .authority()
            .replace(|c: char| !c.is_ascii_alphanumeric() && c != '.', "_");
        MemberCache {
            path: SharedState::for_this_user()
                .dir()
                .join(format!("members-{name}.json")),
        }
    }

    fn read(&self) -> Option<CachedMembers> {
        serde_json::from_slice(&std::fs::read(&self.path).ok()?).ok()
    }

    /// Whether the list should be refreshed.
    pub fn is_stale(&self) -> bool {
        self.read()
            .map(|c| now_ms().saturating_sub(c.updated_ms) > MEMBERS_TTL_MS)
            .unwrap_or(true)
    }

    /// The cached members as a node list.
    pub fn nodes(&self) -> Vec<NodeAddr> {
        let Some(cached) = self.read() else {
            return Vec::new();
        };
        cached
            .members
            .iter()
            .filter_map(|m| {
                let mut addr: NodeAddr = m.address.parse().ok()?;
                addr.slots = Some(m.slots).filter(|s| *s > 0);
                Some(addr)
            })
            .collect()
    }

    fn save(&self, members: &[Member]) {
        let cached = CachedMembers {
            updated_ms: now_ms(),
            members: members
                .iter()
                .map(|m| CachedMember {
                    node: m.node.clone(),
                    address: m.address.clone(),
                    slots: m.slots,
                })
                .collect(),
        };
        // Written whole to a temporary file and renamed, so a reader never
        // sees half a list. Only hints: failures are ignored.
        let tmp = self
            .path
            .with_extension(format!("tmp{}", std::process::id()));
        if let Some(dir) = self.path.parent() {
            if crate::placement::shared_state::create_private_dir(dir).is_err() {
                return;
            }
        }
        if let Ok(text) = serde_json::to_vec(&cached) {
            if std::fs::write(&tmp, text).is_ok() {
                let _ = std::fs::rename(&tmp, &self.path);
            }
        }
    }
}
