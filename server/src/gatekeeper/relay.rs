//! Relayed runs: a client outside the cluster sends the whole `Run` stream
//! here; we place the job through the fair queue, open the same stream to
//! the node, and relay both ways. A node that refuses before the job starts
//! costs a retry on another; once the job started, the node's fate is the
//! client's to see (it decides whether the job may run again).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use mexec_common::refusal::Refusal;
use mexec_proto::v1::executor_client::ExecutorClient;
use mexec_proto::v1::{run_request, run_response, JobSpec, RunRequest, RunResponse};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

use super::cluster::{Grant, Wanted};
use super::fit::Needs;
use super::shared::{queue_full, Shared};
use crate::auth::Caller;
use crate::daemon::StreamPlace;
use crate::metrics::LeaseResult;
use crate::refusal_log::{self, Who};
use crate::request_limits;

type Outbound = mpsc::Sender<Result<RunResponse, Status>>;

/// Nodes tried before a relayed job is given up as unplaceable.
const MAX_ATTEMPTS: usize = 3;

/// Reads the job, queues it, and starts relaying; refusals come back as the
/// call's status.
pub async fn start(
    shared: Arc<Shared>,
    (caller, peer): (Option<Caller>, Option<SocketAddr>),
    place: StreamPlace,
    mut inbound: Streaming<RunRequest>,
) -> Result<ReceiverStream<Result<RunResponse, Status>>, Status> {
    let first = shared.first_message(&mut inbound).await?;
    let Some(run_request::Msg::Start(mut spec)) = first.msg else {
        return Err(Refusal::Malformed
            .status("the first message of a Run stream must be the job (`start`)"));
    };
    if spec.argv.is_empty() {
        return Err(Refusal::Malformed.status("the job has an empty argv"));
    }
    request_limits::check_request(&spec)
        .map_err(|err| Refusal::Malformed.status(format!("gatekeeper: {err}")))?;
    // The executor trusts the user we name, so it must be the proven one.
    spec.user = shared
        .job_user(caller.as_ref(), &spec.user, &spec.munge_credential)
        .await?;
    // The client's credential is spent here; the node gets our own.
    spec.munge_credential.clear();
    let wanted = Wanted {
        user: spec.user.clone(),
        build_id: spec.build_id.clone(),
        job_id: spec.job_id.clone(),
        program: String::from_utf8_lossy(&spec.argv[0]).into_owned(),
        avoid: HashSet::new(),
        relayed: true,
        needs: Needs {
            toolchain: spec.toolchain.clone(),
            require: spec.require.clone(),
        },
        cwd: spec.cwd.to_vec(),
    };
    if let Some(refusal) = shared.with(|c| c.unplaceable(&wanted)) {
        shared.observe.lease(LeaseResult::refused, None);
        return Err(refusal);
    }
    let (id, grant) = shared.with(|c| c.enqueue(wanted.clone())).map_err(|full| {
        shared.observe.lease(LeaseResult::refused, None);
        queue_full(full)
    })?;
    shared.observe.metrics.relayed();
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        relay(shared, spec, wanted, (id, grant), inbound, (tx, peer)).await;
        drop(place);
    });
    Ok(ReceiverStream::new(rx))
}

enum Attempt {
    /// The job ran (or the client left): nothing more to do.
    Done,
    /// The node did not start the job.
    NotStarted(String),
}

async fn relay(
    shared: Arc<Shared>,
    spec: JobSpec,
    mut wanted: Wanted,
    (mut id, mut grant): (u64, oneshot::Receiver<Grant>),
    mut inbound: Streaming<RunRequest>,
    (out, peer): (Outbound, Option<SocketAddr>),
) {
    // Refusals sent on the stream, after the call was taken, go on record
    // here (those before it, by the service).
    let refuse = |status: Status| {
        let who = Who::Proven(&spec.user);
        refusal_log::status(shared.access.node(), peer, who, &status);
        status
    };
    let mut causes = Vec::new();
    for attempt in 1..=MAX_ATTEMPTS {
        let queued = |q| RunResponse {
            msg: Some(run_response::Msg::Queued(q)),
        };
        let Some(lease) = shared.wait_for_grant(id, grant, &out, queued).await else {
            return;
        };
        let result = run_on_node(&shared, &lease, &spec, &mut inbound, &out).await;
        shared.with(|c| c.release(lease.lease_id));
        match result {
            Attempt::Done => return,
            Attempt::NotStarted(cause) => {
                tracing::info!(job_id = %spec.job_id, node = %lease.node, %cause, "relayed job not started; placing again");
                causes.push(cause);
                wanted.avoid.insert(lease.node);
            }
        }
        if attempt == MAX_ATTEMPTS {
            break;
        }
        match shared.with(|c| c.enqueue(wanted.clone())) {
            Ok((next_id, next_grant)) => (id, grant) = (next_id, next_grant),
            Err(full) => {
                let _ = out.send(Err(refuse(queue_full(full)))).await;
                return;
            }
        }
    }
    // A refusal, not a broken stream: the client must not read it as a
    // job that may have run.
    let status = Refusal::NoNode.status(format!(
        "gatekeeper: no node could run the job ({})",
        causes.join("; ")
    ));
    let _ = out.send(Err(refuse(status))).await;
}

async fn run_on_node(
    shared: &Shared,
    lease: &Grant,
    spec: &JobSpec,
    inbound: &mut Streaming<RunRequest>,
    out: &Outbound,
) -> Attempt {
    match start_on_node(shared, lease, spec).await {
        Ok((to_node, from_node)) => relay_both_ways(lease, inbound, to_node, from_node, out).await,
        Err(cause) => Attempt::NotStarted(cause),
    }
}

/// A MUNGE credential of ours saying we relay for `user`; empty without
/// MUNGE (then our node certificate vouches).
async fn vouch(shared: &Shared, user: &str) -> Result<String, String> {
    let Some(munge) = shared.access.munge() else {
        return Ok(String::new());
    };
    let payload = [crate::auth::RELAY_PAYLOAD, user.as_bytes()].concat();
    munge
        .encode_async(payload)
        .await
        .map_err(|err| format!("gatekeeper: cannot vouch for {user}: {err}"))
}

/// Opens the job's stream to the leased node and sends it the job; the
/// error is why the node did not take it.
async fn start_on_node(
    shared: &Shared,
    lease: &Grant,
    spec: &JobSpec,
) -> Result<(mpsc::Sender<RunRequest>, Streaming<RunResponse>), String> {
    // The address is often the one the node's stream came from, which its
    // certificate need not list; its name it always does.
    let channel = shared
        .nodes
        .connect_to_node(&lease.reach.gatekeeper, Some(&lease.node))
        .await
        .map_err(|err| unreachable(lease, &err))?;
    let (to_node, requests) = mpsc::channel(8);
    // Our own ticket for this node: whatever the client sent is not ours
    // to pass on. With MUNGE, our own fresh credential vouches for the user
    // we proved (the client's was spent on us, and could have expired in
    // the queue).
    let spec = JobSpec {
        lease: Some(shared.ticket(lease, &spec.user)),
        munge_credential: vouch(shared, &spec.user).await?,
        ..spec.clone()
    };
    let _ = to_node
        .send(RunRequest {
            msg: Some(run_request::Msg::Start(spec)),
        })
        .await;
    let from_node = ExecutorClient::new(channel)
        .run(ReceiverStream::new(requests))
        .await
        .map_err(|status| match Refusal::of(&status) {
            Some(_) => status.message().to_owned(),
            None => unreachable(lease, &status),
        })?
        .into_inner();
    Ok((to_node, from_node))
}

/// Why a node could not be reached, as the client hears it: one text
/// whatever happened (a closed port, a port where something else
/// listens, a timeout), so relaying tells nobody what listens where. The
/// cause is logged here for the operator.
fn unreachable(lease: &Grant, cause: &dyn std::fmt::Display) -> String {
    tracing::warn!(node = %lease.node, address = %lease.reach.gatekeeper, %cause, "node unreachable for a relayed job");
    format!("node {} unreachable", lease.node)
}

/// Relays the client's stdin and signals to the node and the node's
/// answers to the client, until the job's exit, or either side leaves.
async fn relay_both_ways(
    lease: &Grant,
    inbound: &mut Streaming<RunRequest>,
    to_node: mpsc::Sender<RunRequest>,
    mut from_node: Streaming<RunResponse>,
    out: &Outbound,
) -> Attempt {
    let mut accepted = false;
    let mut client_open = true;
    loop {
        tokio::select! {
            message = inbound.message(), if client_open => match message {
                Ok(Some(message)) => {
                    if to_node.send(message).await.is_err() {
                        client_open = false;
                    }
                }
                // Half-closed: the client sends nothing more; the job goes on.
                Ok(None) => client_open = false,
                // The client is gone: dropping the node's stream kills the job.
                Err(_) => return Attempt::Done,
            },
            message = from_node.message() => match message {
                Ok(Some(response)) => {
                    let last = matches!(response.msg, Some(run_response::Msg::Exit(_)));
                    accepted |= matches!(response.msg, Some(run_response::Msg::Accepted(_)));
                    if out.send(Ok(response)).await.is_err() || last {
                        return Attempt::Done;
                    }
                }
                Ok(None) if !accepted => {
                    return Attempt::NotStarted(unreachable(lease, &"closed the stream"))
                }
                Ok(None) => {
                    let status = Status::unavailable(format!(
                        "node {} closed the job's stream without an exit status",
                        lease.node
                    ));
                    let _ = out.send(Err(status)).await;
                    return Attempt::Done;
                }
                Err(status) if !accepted && status.code() != Code::Cancelled => {
                    return Attempt::NotStarted(match Refusal::of(&status) {
                        Some(_) => status.message().to_owned(),
                        None => unreachable(lease, &status),
                    })
                }
                Err(status) => {
                    let _ = out.send(Err(passed_on(&lease.node, &status))).await;
                    return Attempt::Done;
                }
            },
            _ = out.closed() => return Attempt::Done,
        }
    }
}

/// A node's status as the client gets it: the node named, and a refusal
/// still of its kind, so the client decides on the kind, not the text.
fn passed_on(node: &str, status: &Status) -> Status {
    let message = format!("node {node}: {}", status.message());
    match Refusal::of(status) {
        Some(kind) => kind.status(message),
        None => Status::new(status.code(), message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passed_on_status_names_the_node_and_keeps_its_kind() {
        let refused = Refusal::Draining.status("node n1 is draining and takes no new jobs");
        let passed = passed_on("n1", &refused);
        assert_eq!(passed.code(), refused.code());
        assert_eq!(Refusal::of(&passed), Some(Refusal::Draining));
        assert!(
            passed.message().starts_with("node n1: "),
            "{}",
            passed.message()
        );
        let lost = passed_on("n2", &Status::unavailable("shut down"));
        assert_eq!((lost.code(), Refusal::of(&lost)), (Code::Unavailable, None));
    }
}
