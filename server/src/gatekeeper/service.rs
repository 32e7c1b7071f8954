//! The `Gatekeeper` gRPC service: membership streams, lease streams, relayed
//! runs and status, each a thin handler over `Cluster`.

use std::net::SocketAddr;
use std::sync::Arc;

use mexec_common::refusal::Refusal;
use mexec_common::tls::Peer;
use mexec_proto::v1::gatekeeper_server::Gatekeeper;
use mexec_proto::v1::{
    acquire_request, acquire_response, join_request, AcquireRequest, AcquireResponse,
    ClusterStatusReply, ClusterStatusRequest, JoinRequest, JoinResponse, Lease, LeaseRequest,
    RunRequest, RunResponse, UsageReply, UsageRequest,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::cluster::{Grant, Reach, Wanted, HEARTBEAT};
use super::fit::Needs;
use super::registration;
use super::relay;
use super::shared::{queue_full, Shared};
use crate::auth::Caller;
use crate::daemon::{ResponseStream, StreamPlace};
use crate::metrics::LeaseResult;
use crate::refusal_log::{self, Who};

/// The service object tonic calls.
#[derive(Debug, Clone)]
pub struct GatekeeperService {
    shared: Arc<Shared>,
}

impl GatekeeperService {
    pub fn new(shared: Arc<Shared>) -> Self {
        GatekeeperService { shared }
    }

    #[allow(clippy::result_large_err)] // tonic's Status
    fn enter(&self, peer: Option<SocketAddr>) -> Result<StreamPlace, Status> {
        self.shared.streams.enter(peer).map_err(|too_many| {
            Refusal::Limit.status(format!(
                "gatekeeper: too many open streams from {} ({}); try again later",
                too_many.peer, too_many.limit
            ))
        })
    }

    /// With certificates, only a node may join, and only under its own name.
    #[allow(clippy::result_large_err)] // tonic's Status
    fn check_node(&self, caller: Option<&Caller>, name: &str) -> Result<(), Status> {
        if !self.shared.access.requires_certificates() {
            return Ok(());
        }
        match caller {
            Some(Caller::Verified(Peer::Node(cert_name))) if cert_name == name => Ok(()),
            Some(Caller::Verified(Peer::Node(cert_name))) => Err(Refusal::Denied.status(format!(
                "gatekeeper: node certificate `{cert_name}` cannot register as `{name}`"
            ))),
            _ => Err(Refusal::Denied.status(
                "gatekeeper: only a node certificate (mexec-cert node) may join the cluster",
            )),
        }
    }

    /// Puts a refusal of a stream from `peer` on record.
    fn on_record(&self, peer: Option<SocketAddr>, caller: Option<&Caller>, refused: &Status) {
        let node = self.shared.access.node();
        let proven = caller.and_then(Caller::peer);
        refusal_log::status(node, peer, Who::of(proven, ""), refused);
    }

    async fn joined(
        &self,
        request: Request<Streaming<JoinRequest>>,
    ) -> Result<Response<ResponseStream<JoinResponse>>, Status> {
        let peer = request.remote_addr();
        let caller = Caller::of(&request);
        let place = self.enter(peer)?;
        let mut inbound = request.into_inner();
        let first = self.shared.first_message(&mut inbound).await?;
        let Some(join_request::Msg::Register(register)) = first.msg else {
            return Err(
                Refusal::Malformed.status("the first message of a Join stream must be `register`")
            );
        };
        registration::check_register(&register)?;
        self.check_node(caller.as_ref(), &register.node)?;
        let tls = self.shared.access.requires_certificates();
        let reach = registration::reach(&register, peer, tls)?;
        if let Some(taken) = self
            .shared
            .with(|c| c.held_elsewhere(&register.node, &reach))
        {
            return Err(registration::name_taken(&register.node, taken));
        }
        let (tx, rx) = mpsc::channel(1);
        let _ = tx
            .send(Ok(JoinResponse {
                heartbeat_ms: HEARTBEAT.as_millis() as u32,
                // The node checks our lease tickets with it. The stream is
                // one the node opened to us: under TLS it checked our
                // certificate, and only a node certificate gets here.
                lease_key: self
                    .shared
                    .lease_secret
                    .node_key_bytes(&register.node)
                    .into(),
            }))
            .await;
        let shared = self.shared.clone();
        tokio::spawn(async move {
            membership(shared, register.node, reach, inbound, tx).await;
            drop(place);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn acquired(
        &self,
        request: Request<Streaming<AcquireRequest>>,
    ) -> Result<Response<ResponseStream<AcquireResponse>>, Status> {
        let caller = Caller::of(&request);
        let place = self.enter(request.remote_addr())?;
        let mut inbound = request.into_inner();
        let first = self.shared.first_message(&mut inbound).await?;
        let Some(acquire_request::Msg::Request(mut lease_request)) = first.msg else {
            return Err(Refusal::Malformed
                .status("the first message of an Acquire stream must be `request`"));
        };
        // Fair shares and per-user limits go by the certificate's user.
        lease_request.user = self
            .shared
            .job_user(
                caller.as_ref(),
                &lease_request.user,
                &lease_request.munge_credential,
            )
            .await?;
        let wanted = wanted(&lease_request, false);
        if let Some(refusal) = self.shared.with(|c| c.unplaceable(&wanted)) {
            self.shared.observe.lease(LeaseResult::refused, None);
            return Err(refusal);
        }
        let (id, grant) = self.shared.with(|c| c.enqueue(wanted)).map_err(|full| {
            self.shared.observe.lease(LeaseResult::refused, None);
            queue_full(full)
        })?;
        let (tx, rx) = mpsc::channel(2);
        let shared = self.shared.clone();
        // Boxed: the lease's state (its request stream's decoder among it)
        // is kilobytes, which would otherwise be copied into the task.
        tokio::spawn(Box::pin(async move {
            hold_lease(shared, id, grant, lease_request, inbound, tx).await;
            drop(place);
        }));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn relayed(
        &self,
        request: Request<Streaming<RunRequest>>,
    ) -> Result<Response<ResponseStream<RunResponse>>, Status> {
        let (caller, peer) = (Caller::of(&request), request.remote_addr());
        let place = self.enter(peer)?;
        let stream = relay::start(
            self.shared.clone(),
            (caller, peer),
            place,
            request.into_inner(),
        )
        .await?;
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Turns a lease request into the queue's terms.
fn wanted(request: &LeaseRequest, relayed: bool) -> Wanted {
    Wanted {
        user: request.user.clone(),
        build_id: request.build_id.clone(),
        job_id: request.job_id.clone(),
        program: request.program.clone(),
        avoid: request.avoid.iter().cloned().collect(),
        relayed,
        needs: Needs {
            toolchain: request.toolchain.clone(),
            require: request.require.clone(),
        },
        cwd: request.cwd.to_vec(),
    }
}

#[tonic::async_trait]
impl Gatekeeper for GatekeeperService {
    type JoinStream = ResponseStream<JoinResponse>;
    type AcquireStream = ResponseStream<AcquireResponse>;
    type RunStream = ResponseStream<RunResponse>;

    async fn join(
        &self,
        request: Request<Streaming<JoinRequest>>,
    ) -> Result<Response<Self::JoinStream>, Status> {
        let (peer, caller) = (request.remote_addr(), Caller::of(&request));
        let joined = self.joined(request).await;
        joined.inspect_err(|refused| self.on_record(peer, caller.as_ref(), refused))
    }

    async fn acquire(
        &self,
        request: Request<Streaming<AcquireRequest>>,
    ) -> Result<Response<Self::AcquireStream>, Status> {
        let (peer, caller) = (request.remote_addr(), Caller::of(&request));
        // Boxed, so that tonic moves a pointer, not the request's state,
        // for every lease.
        let acquired = Box::pin(self.acquired(request)).await;
        acquired.inspect_err(|refused| self.on_record(peer, caller.as_ref(), refused))
    }

    async fn run(
        &self,
        request: Request<Streaming<RunRequest>>,
    ) -> Result<Response<Self::RunStream>, Status> {
        let (peer, caller) = (request.remote_addr(), Caller::of(&request));
        let relayed = self.relayed(request).await;
        relayed.inspect_err(|refused| self.on_record(peer, caller.as_ref(), refused))
    }

    async fn cluster_status(
        &self,
        _: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusReply>, Status> {
        let reply = self.shared.with(|c| {
            let (nodes, users, jobs) = c.status();
            ClusterStatusReply {
                nodes,
                users,
                jobs,
                queued: c.queued(),
                max_queued: c.max_queued(),
                version: mexec_common::version::current_text(),
            }
        });
        Ok(Response::new(reply))
    }

    async fn usage(&self, _: Request<UsageRequest>) -> Result<Response<UsageReply>, Status> {
        let rows = self.shared.observe.accounting.usage().await;
        Ok(Response::new(UsageReply { rows }))
    }
}

async fn membership(
    shared: Arc<Shared>,
    name: String,
    reach: Reach,
    mut inbound: Streaming<JoinRequest>,
    tx: mpsc::Sender<Result<JoinResponse, Status>>,
) {
    let conn = shared.with(|c| c.new_conn());
    let mut joined = false;
    loop {
        match inbound.message().await {
            Ok(Some(JoinRequest {
                msg: Some(join_request::Msg::Load(report)),
            })) => {
                if let Err(refused) = registration::check_report(&report) {
                    let _ = tx.send(Err(refused)).await;
                    break;
                }
                let taken = if joined {
                    shared.with(|c| c.report(&name, &reach, conn, report))
                } else {
                    tracing::info!(node = %name, address = %reach.clients, slots = report.slots, "node joined");
                    joined = true;
                    shared.with(|c| c.join(&name, reach.clone(), conn, report))
                };
                // Another host registered the name between our check and
                // now, or while we were dropped for silence.
                if let Err(taken) = taken {
                    let _ = tx.send(Err(registration::name_taken(&name, taken))).await;
                    break;
                }
            }
            Ok(Some(JoinRequest {
                msg: Some(join_request::Msg::JobStarted(start)),
            })) if joined => shared.observe.job_started(&name, &start),
            Ok(Some(JoinRequest {
                msg: Some(join_request::Msg::JobEnded(end)),
            })) if joined => shared.observe.job_ended(&name, &end),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    if shared.with(|c| c.leave(&name, conn)) {
        shared.observe.node_left(&name);
        tracing::info!(node = %name, "node left");
    }
    drop(tx);
}

async fn hold_lease(
    shared: Arc<Shared>,
    id: u64,
    grant: oneshot::Receiver<Grant>,
    request: LeaseRequest,
    mut inbound: Streaming<AcquireRequest>,
    tx: mpsc::Sender<Result<AcquireResponse, Status>>,
) {
    let response = |msg| AcquireResponse { msg: Some(msg) };
    let Some(grant) = shared
        .wait_for_grant(id, grant, &tx, |q| {
            response(acquire_response::Msg::Queued(q))
        })
        .await
    else {
        return;
    };
    let members = if request.want_nodes {
        shared.with(|c| c.members())
    } else {
        Vec::new()
    };
    let lease = Lease {
        lease_id: grant.lease_id.to_string(),
        node: grant.node.clone(),
        address: grant.reach.clients.clone(),
        members,
        ticket: Some(shared.ticket(&grant, &request.user)),
    };
    let _ = tx
        .send(Ok(response(acquire_response::Msg::Lease(lease))))
        .await;
    // The lease lasts until the client releases it or its stream ends; a
    // client that vanished is noticed by HTTP/2 keepalive.
    loop {
        match inbound.message().await {
            Ok(Some(AcquireRequest {
                msg: Some(acquire_request::Msg::Release(_)),
            }))
            | Ok(None)
            | Err(_) => break,
            Ok(Some(_)) => {}
        }
    }
    shared.with(|c| c.release(grant.lease_id));
}
