//! The `Executor` gRPC service: thin handlers that unwrap the request, call
//! the job and load code, and turn our errors into statuses in one place.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use mexec_proto::v1::executor_server::Executor;
use mexec_proto::v1::{
    run_request, LoadReport, RunRequest, RunResponse, StatusRequest, WatchLoadRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::error::JobError;
use super::{job, NodeContext};

/// How long a client may take to send the job after opening the stream.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The service object tonic calls.
#[derive(Debug, Clone)]
pub struct ExecutorService {
    ctx: Arc<NodeContext>,
}

impl ExecutorService {
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        ExecutorService { ctx }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Executor for ExecutorService {
    type RunStream = BoxStream<RunResponse>;
    type WatchLoadStream = BoxStream<LoadReport>;

    async fn run(
        &self,
        request: Request<Streaming<RunRequest>>,
    ) -> Result<Response<Self::RunStream>, Status> {
        let stream = start_job(self.ctx.clone(), request.into_inner())
            .await
            .map_err(|err| err.into_status(&self.ctx.name))?;
        Ok(Response::new(Box::pin(stream)))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<LoadReport>, Status> {
        Ok(Response::new(self.ctx.load_report()))
    }

    async fn watch_load(
        &self,
        request: Request<WatchLoadRequest>,
    ) -> Result<Response<Self::WatchLoadStream>, Status> {
        let interval = match request.into_inner().interval_ms {
            0 => Duration::from_secs(1),
            ms => Duration::from_millis(u64::from(ms).max(50)),
        };
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(watch_load(self.ctx.clone(), interval, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Reads the job from the stream, validates and admits it, and starts the
/// task that runs it. Refusals come back before any output.
async fn start_job(
    ctx: Arc<NodeContext>,
    mut inbound: Streaming<RunRequest>,
) -> Result<ReceiverStream<Result<RunResponse, Status>>, JobError> {
    let first = tokio::time::timeout(START_TIMEOUT, inbound.message())
        .await
        .map_err(|_| JobError::NoRequest)?
        .map_err(|_| JobError::NoRequest)?
        .ok_or(JobError::NoRequest)?;
    let Some(run_request::Msg::Start(spec)) = first.msg else {
        return Err(JobError::NoStart);
    };
    job::validate(&spec)?;
    let ticket = ctx.admission.admit()?;
    let (tx, rx) = mpsc::channel(job::OUTPUT_QUEUE);
    tokio::spawn(job::run(ctx, spec, ticket, inbound, tx));
    Ok(ReceiverStream::new(rx))
}

async fn watch_load(
    ctx: Arc<NodeContext>,
    interval: Duration,
    tx: mpsc::Sender<Result<LoadReport, Status>>,
) {
    let mut changes = ctx.admission.subscribe();
    loop {
        if tx.send(Ok(ctx.load_report())).await.is_err() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            changed = changes.changed() => if changed.is_err() { return },
            _ = tx.closed() => return,
        }
    }
}
