//! Each daemon answers for the other's service too, with a refusal that
//! says which service the client reached and which setting it wants
//! (kind `wrong-service`), instead of a bare `Unimplemented`: a client
//! given a gatekeeper's address as a node, or an executor's as the
//! gatekeeper, is told so in one line.

use mexec_common::refusal::Refusal;
use mexec_proto::v1::executor_server::Executor;
use mexec_proto::v1::gatekeeper_server::Gatekeeper;
use mexec_proto::v1::{
    AcquireRequest, AcquireResponse, ClusterStatusReply, ClusterStatusRequest, JoinRequest,
    JoinResponse, LoadReport, RunRequest, RunResponse, StatusRequest, UsageReply, UsageRequest,
    WatchLoadRequest,
};
use tonic::{Request, Response, Status, Streaming};

use crate::daemon::ResponseStream;
use crate::refusal_log::{self, Who};

/// Served by an executor in place of the gatekeeper's service.
#[derive(Debug, Clone)]
pub struct NotAGatekeeper {
    /// The node's name.
    pub node: String,
}

/// Served by the gatekeeper in place of the executor's service.
#[derive(Debug, Clone, Default)]
pub struct NotAnExecutor {
    /// The gatekeeper's host, for the refusal log.
    pub node: String,
}

/// The address the client reached, as it used it.
fn reached<T>(request: &Request<T>) -> String {
    request
        .local_addr()
        .map_or_else(|| "this address".to_owned(), |a| a.to_string())
}

/// Puts the refusal on record and returns it.
fn on_record<T>(node: &str, request: &Request<T>, refused: Status) -> Status {
    refusal_log::status(node, request.remote_addr(), Who::Unknown, &refused);
    refused
}

impl NotAGatekeeper {
    fn refuse<T>(&self, request: &Request<T>) -> Status {
        let at = reached(request);
        let refused = Refusal::WrongService.status(format!(
            "{at}: node {} is an executor, not a gatekeeper: give executors in MEXEC_NODES \
             (MEXEC_NODES={at}) and the gatekeeper's address in MEXEC_GATEKEEPER",
            self.node
        ));
        on_record(&self.node, request, refused)
    }
}

impl NotAnExecutor {
    fn refuse<T>(&self, request: &Request<T>) -> Status {
        let at = reached(request);
        let refused = Refusal::WrongService.status(format!(
            "{at} is a gatekeeper, not an executor: set MEXEC_GATEKEEPER={at} (and leave it \
             out of MEXEC_NODES)"
        ));
        on_record(&self.node, request, refused)
    }
}

#[tonic::async_trait]
impl Gatekeeper for NotAGatekeeper {
    type JoinStream = ResponseStream<JoinResponse>;
    type AcquireStream = ResponseStream<AcquireResponse>;
    type RunStream = ResponseStream<RunResponse>;

    async fn join(
        &self,
        request: Request<Streaming<JoinRequest>>,
    ) -> Result<Response<Self::JoinStream>, Status> {
        Err(self.refuse(&request))
    }

    async fn acquire(
        &self,
        request: Request<Streaming<AcquireRequest>>,
    ) -> Result<Response<Self::AcquireStream>, Status> {
        Err(self.refuse(&request))
    }

    async fn run(
        &self,
        request: Request<Streaming<RunRequest>>,
    ) -> Result<Response<Self::RunStream>, Status> {
        Err(self.refuse(&request))
    }

    async fn cluster_status(
        &self,
        request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusReply>, Status> {
        Err(self.refuse(&request))
    }

    async fn usage(&self, request: Request<UsageRequest>) -> Result<Response<UsageReply>, Status> {
        Err(self.refuse(&request))
    }
}

#[tonic::async_trait]
impl Executor for NotAnExecutor {
    type RunStream = ResponseStream<RunResponse>;
    type WatchLoadStream = ResponseStream<LoadReport>;

    async fn run(
        &self,
        request: Request<Streaming<RunRequest>>,
    ) -> Result<Response<Self::RunStream>, Status> {
        Err(self.refuse(&request))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<LoadReport>, Status> {
        Err(self.refuse(&request))
    }

    async fn watch_load(
        &self,
        request: Request<WatchLoadRequest>,
    ) -> Result<Response<Self::WatchLoadStream>, Status> {
        Err(self.refuse(&request))
    }
}
