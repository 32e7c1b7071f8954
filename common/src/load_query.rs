//! Asking the farm how loaded it is: one executor's `Status`, all of them
//! at once, or the gatekeeper's `ClusterStatus`. `mexec --status`, the
//! client's placement and `mpmake`'s capacity all ask this way.

use std::time::Duration;

use mexec_proto::v1::executor_client::ExecutorClient;
use mexec_proto::v1::gatekeeper_client::GatekeeperClient;
use mexec_proto::v1::{ClusterStatusReply, ClusterStatusRequest, LoadReport, StatusRequest};
use tonic::Request;

use crate::connector::Connector;
use crate::dial::dial;
use crate::nodes::NodeAddr;

/// How long the gatekeeper may take over the whole cluster's status.
const CLUSTER_STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// The slots a node offers now: all of them on a node of the farm (and
/// from executors too old to send the field), fewer on a desktop node whose
/// owner is busy.
pub fn offered_slots(report: &LoadReport) -> u32 {
    if report.desktop {
        report.offered_slots.min(report.slots)
    } else {
        report.slots
    }
}

/// Why a node gave no load report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoReport {
    /// Why, for people.
    pub message: String,
    /// Whether a mexec daemon said it (a refusal, with its kind), rather
    /// than the connection or something else at the address.
    pub refused: bool,
}

impl std::fmt::Display for NoReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Asks `node` for its load; the answer may take as long as a connection.
pub async fn node_load(connector: &Connector, node: &NodeAddr) -> Result<LoadReport, NoReport> {
    let channel = dial(connector, node).await.map_err(|message| NoReport {
        message,
        refused: false,
    })?;
    let mut request = Request::new(StatusRequest {});
    request.set_timeout(connector.timeouts().connect);
    ExecutorClient::new(channel)
        .status(request)
        .await
        .map(|r| r.into_inner())
        .map_err(|s| NoReport {
            message: s.message().to_owned(),
            refused: crate::refusal::Refusal::of(&s).is_some(),
        })
}

/// Asks every node at once; the answers come in the order of `nodes`.
pub async fn node_loads(
    connector: &Connector,
    nodes: &[NodeAddr],
) -> Vec<Result<LoadReport, NoReport>> {
    let queries: Vec<_> = nodes
        .iter()
        .map(|node| {
            let (connector, node) = (connector.clone(), node.clone());
            tokio::spawn(async move { node_load(&connector, &node).await })
        })
        .collect();
    let mut answers = Vec::with_capacity(queries.len());
    for query in queries {
        answers.push(query.await.expect("a status query panicked"));
    }
    answers
}

/// Asks `gatekeeper` for the cluster's status.
pub async fn cluster_status(
    connector: &Connector,
    gatekeeper: &NodeAddr,
) -> Result<ClusterStatusReply, String> {
    let channel = dial(connector, gatekeeper).await?;
    let mut request = Request::new(ClusterStatusRequest {});
    request.set_timeout(CLUSTER_STATUS_TIMEOUT);
    GatekeeperClient::new(channel)
        .cluster_status(request)
        .await
        .map(|r| r.into_inner())
        .map_err(|s| s.message().to_owned())
}
