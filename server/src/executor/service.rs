//! The `Executor` gRPC service: thin handlers that unwrap the request, call
//! the job and load code, and turn our errors into statuses in one place.

use std::sync::Arc;
use std::time::Duration;

use mexec_proto::v1::executor_server::Executor;
use mexec_proto::v1::{
    run_request, LoadReport, RunRequest, RunResponse, StatusRequest, WatchLoadRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::cwd_wait::{self, CwdWait};
use super::error::JobError;
use super::valid_job::ValidJob;
use super::{fit, job, JobAccounts, NodeContext};
use crate::auth::Caller;
use crate::daemon::{ResponseStream, StreamPlace};
use crate::refusal_log::{self, Who};

/// The service object tonic calls.
#[derive(Debug, Clone)]
pub struct ExecutorService {
    ctx: Arc<NodeContext>,
}

impl ExecutorService {
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        ExecutorService { ctx }
    }

    /// A place for one more stream from `peer`, or the refusal.
    #[allow(clippy::result_large_err)] // tonic's Status
    fn enter(&self, peer: Option<std::net::SocketAddr>) -> Result<StreamPlace, Status> {
        self.ctx.streams.enter(peer).map_err(|too_many| {
            JobError::TooManyStreams {
                peer: too_many.peer,
                limit: too_many.limit,
            }
            .into_status(&self.ctx.name)
        })
    }
}

#[tonic::async_trait]
impl Executor for ExecutorService {
    type RunStream = ResponseStream<RunResponse>;
    type WatchLoadStream = ResponseStream<LoadReport>;

    async fn run(
        &self,
        request: Request<Streaming<RunRequest>>,
    ) -> Result<Response<Self::RunStream>, Status> {
        let caller = Caller::of(&request);
        let peer = request.remote_addr();
        let mut claimed = String::new();
        let started = match self.enter(peer) {
            Ok(place) => start_job(
                self.ctx.clone(),
                caller.clone(),
                place,
                request,
                &mut claimed,
            )
            .await
            .map_err(|err| {
                self.ctx.observe.refused();
                err.into_status(&self.ctx.name)
            }),
            Err(refused) => Err(refused),
        };
        let stream = started.inspect_err(|refused| {
            let who = Who::of(caller.as_ref().and_then(Caller::peer), &claimed);
            refusal_log::status(&self.ctx.name, peer, who, refused)
        })?;
        Ok(Response::new(Box::pin(stream)))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<LoadReport>, Status> {
        Ok(Response::new(self.ctx.load_report()))
    }

    async fn watch_load(
        &self,
        request: Request<WatchLoadRequest>,
    ) -> Result<Response<Self::WatchLoadStream>, Status> {
        let peer = request.remote_addr();
        let place = self.enter(peer).inspect_err(|refused| {
            refusal_log::status(&self.ctx.name, peer, Who::Unknown, refused)
        })?;
        let interval = match request.into_inner().interval_ms {
            0 => Duration::from_secs(1),
            ms => Duration::from_millis(u64::from(ms).max(50)),
        };
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(watch_load(self.ctx.clone(), interval, tx, place));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Reads the job from the stream, validates and admits it, and starts the
/// task that runs it. Refusals come back before any output; `claimed`
/// gets the user the job names, for the refusal log.
async fn start_job(
    ctx: Arc<NodeContext>,
    caller: Option<Caller>,
    place: StreamPlace,
    request: Request<Streaming<RunRequest>>,
    claimed: &mut String,
) -> Result<ReceiverStream<Result<RunResponse, Status>>, JobError> {
    let peer = request.remote_addr();
    let mut inbound = request.into_inner();
    // A stream that never sends its job must not hold a place for ever.
    let first = tokio::time::timeout(ctx.start_timeout, inbound.message())
        .await
        .map_err(|_| JobError::StartTimeout(ctx.start_timeout))?
        .map_err(|status| JobError::reading_job(&status))?
        .ok_or(JobError::NoRequest)?;
    let Some(run_request::Msg::Start(mut spec)) = first.msg else {
        return Err(JobError::NoStart);
    };
    claimed.clone_from(&spec.user);
    // The certificate, not the client's claim, says whose job this is.
    let identity = ctx
        .access
        .identify(caller.as_ref(), &spec.user, &spec.munge_credential)
        .await
        .map_err(JobError::Identity)?;
    spec.user = identity.user;
    // A member node runs only what its gatekeeper leased, for that user.
    let now = mexec_common::clock::now_ms();
    ctx.lease
        .check(&ctx.name, &spec.user, spec.lease.as_ref(), now)
        .map_err(JobError::Lease)?;
    // Whose account it runs as, settled before anything runs: an unknown
    // user, root or a system uid is refused here.
    // NSS may ask a directory server (LDAP, NIS): off the runtime's threads.
    // The other modes know their account already.
    let run_as = match &ctx.run_as {
        JobAccounts::Submitter { .. } => {
            let (accounts, user) = (ctx.run_as.clone(), spec.user.clone());
            tokio::task::spawn_blocking(move || accounts.for_user(&user))
                .await
                .map_err(|_| JobError::NoRequest)??
        }
        accounts => accounts.for_user(&spec.user)?,
    };
    let wait = cwd_wait::until_visible(&spec.cwd, ctx.cwd_wait).await;
    let mut valid = ValidJob::new(spec, ctx.policy.as_ref())
        .map_err(|err| match (err, wait) {
            (JobError::CwdMissing { path, .. }, CwdWait::Missing(waited)) => {
                JobError::CwdMissing { path, waited }
            }
            (err, _) => err,
        })
        .inspect_err(|err| ctx.unmounted.note(err.missing_cwd()))?;
    valid.peer = peer;
    valid.as_submitter = matches!(ctx.run_as, JobAccounts::Submitter { .. });
    valid.run_as = run_as;
    if let CwdWait::Appeared(after) = wait {
        tracing::info!(
            job = %valid.spec.job_id,
            cwd = %valid.shown_cwd(),
            waited_ms = after.as_millis() as u64,
            "working directory appeared after a wait"
        );
    }
    fit::check(&ctx, &valid).await?;
    let ticket = ctx.admission.admit()?;
    let (tx, rx) = mpsc::channel(job::OUTPUT_QUEUE);
    tokio::spawn(async move {
        job::run(ctx, valid, ticket, inbound, tx).await;
        drop(place);
    });
    Ok(ReceiverStream::new(rx))
}

async fn watch_load(
    ctx: Arc<NodeContext>,
    interval: Duration,
    tx: mpsc::Sender<Result<LoadReport, Status>>,
    _place: StreamPlace,
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
