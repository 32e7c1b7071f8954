//! What the executor tells about its jobs: the metrics it serves at
//! `/metrics`, and each job's start and end, which the membership stream
//! carries to the gatekeeper (for its dashboard and accounting) so that
//! jobs placed directly show there as well as leased and relayed ones.

use std::time::Duration;

use mexec_proto::v1::{exit, join_request, Exit, ObservedJobEnd, ObservedJobStart};
use tokio::sync::broadcast;

pub use crate::metrics::{ExecutorMetrics, Outcome};

use super::valid_job::ValidJob;

/// Events that may wait for a slow membership stream; past that the
/// oldest are dropped (the dashboard misses them, jobs are not slowed).
const EVENT_QUEUE: usize = 1024;
/// How much of a job's arguments the gatekeeper is shown.
const ARGS_SHOWN: usize = 200;

/// The node's metrics and job events.
#[derive(Debug)]
pub struct Observer {
    pub metrics: ExecutorMetrics,
    events: broadcast::Sender<join_request::Msg>,
}

impl Default for Observer {
    fn default() -> Self {
        Observer::new()
    }
}

impl Observer {
    pub fn new() -> Observer {
        Observer {
            metrics: ExecutorMetrics::new(),
            events: broadcast::channel(EVENT_QUEUE).0,
        }
    }

    /// The job events from now on, for one membership stream.
    pub fn subscribe(&self) -> broadcast::Receiver<join_request::Msg> {
        self.events.subscribe()
    }

    /// A job was refused before it ran.
    pub fn refused(&self) {
        self.metrics.job_ended(Outcome::refused, None, 0);
    }

    /// A job got its slot after waiting `queue_wait`, and starts.
    pub fn started(&self, job: &ValidJob, queue_wait: Duration) {
        let spec = &job.spec;
        let start = ObservedJobStart {
            job_id: spec.job_id.clone(),
            user: spec.user.clone(),
            build_id: spec.build_id.clone(),
            client_host: spec.client_host.clone(),
            program: job.argv0.clone(),
            args: shortened_args(&spec.argv),
            queue_wait_us: queue_wait.as_micros() as u64,
            lease_id: spec.lease.as_ref().map_or(0, |t| t.lease_id),
            started_unix_ms: mexec_common::clock::now_ms(),
        };
        // No receiver (not joined) is fine: nobody is told.
        let _ = self.events.send(join_request::Msg::JobStarted(start));
    }

    /// A started job ended as `outcome`; `exit` is what the client got.
    pub fn ended(&self, job: &ValidJob, outcome: Outcome, exit: Option<&Exit>, output_bytes: u64) {
        let exit = exit.cloned().unwrap_or_default();
        let ran = Duration::from_micros(exit.wall_us).as_secs_f64();
        self.metrics.job_ended(outcome, Some(ran), output_bytes);
        let status = match exit.status {
            Some(exit::Status::Code(code)) => code,
            Some(exit::Status::Signal(signal)) => 128 + signal,
            None => -1,
        };
        let end = ObservedJobEnd {
            job_id: job.spec.job_id.clone(),
            outcome: outcome.name().to_owned(),
            status,
            wall_us: exit.wall_us,
            user_us: exit.user_us,
            system_us: exit.system_us,
            output_bytes,
        };
        let _ = self.events.send(join_request::Msg::JobEnded(end));
    }
}

/// Serves `/metrics` on `listener` until the task is aborted.
pub async fn serve_metrics(
    ctx: std::sync::Arc<super::NodeContext>,
    listener: tokio::net::TcpListener,
    access: crate::web::WebAccess,
) {
    let here = crate::daemon::Here {
        node: ctx.name.as_str().into(),
        role: "executor",
    };
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || async move {
            let text = ctx.observe.metrics.encode(&ctx.load_report());
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    crate::metrics::CONTENT_TYPE,
                )],
                text,
            )
        }),
    );
    let served = crate::web::serve((listener, here), access, router, std::future::pending());
    if let Err(err) = served.await {
        tracing::error!(%err, "metrics listener stopped");
    }
}

/// The arguments after argv[0], space-separated, cut at `ARGS_SHOWN` bytes
/// (on a character boundary, with `…` when cut).
fn shortened_args(argv: &[bytes::Bytes]) -> String {
    let joined = argv
        .iter()
        .skip(1)
        .map(|arg| String::from_utf8_lossy(arg))
        .collect::<Vec<_>>()
        .join(" ");
    if joined.len() <= ARGS_SHOWN {
        return joined;
    }
    let mut cut = ARGS_SHOWN;
    while !joined.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &joined[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_argument_lists_are_cut_on_a_character_boundary() {
        let argv: Vec<bytes::Bytes> = ["gcc", "-c", &"é".repeat(300)]
            .iter()
            .map(|a| bytes::Bytes::from(a.to_string()))
            .collect();
        let shown = shortened_args(&argv);
        assert!(shown.starts_with("-c éé"));
        assert!(shown.ends_with('…'));
        assert!(shown.len() <= ARGS_SHOWN + '…'.len_utf8());
        assert_eq!(shortened_args(&argv[..2]), "-c");
    }
}
