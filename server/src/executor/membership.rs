//! Membership: with `--gatekeeper`, the executor registers and then streams
//! its load (on every admission change, and at least every heartbeat). A
//! broken stream is retried with back-off, so executors re-register on their
//! own after a gatekeeper restart; running jobs are not touched by any of it.

use std::sync::Arc;
use std::time::Duration;

use mexec_common::tls::Tls;
use mexec_common::token::Token;
use mexec_proto::v1::gatekeeper_client::GatekeeperClient;
use mexec_proto::v1::{join_request, JoinRequest, Register};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::NodeContext;

/// How often the load is sent when nothing changes.
const HEARTBEAT: Duration = Duration::from_millis(500);
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// Where and how to join.
#[derive(Debug, Clone)]
pub struct JoinConfig {
    /// The gatekeeper's `host:port`.
    pub gatekeeper: String,
    /// What clients should connect to; empty lets the gatekeeper derive it.
    pub advertise: String,
    /// Our listening port.
    pub port: u16,
    pub token: Option<Token>,
    /// Our node certificate, when the cluster uses mutual TLS.
    pub tls: Option<Tls>,
}

/// Keeps this node a member until the task is aborted.
pub async fn stay_joined(ctx: Arc<NodeContext>, config: JoinConfig) {
    let mut backoff = RETRY_FIRST;
    loop {
        match join_once(&ctx, &config).await {
            Ok(()) => backoff = RETRY_FIRST,
            Err(cause) => {
                tracing::warn!(gatekeeper = %config.gatekeeper, %cause, "not joined; retrying");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RETRY_MAX);
    }
}

/// One membership stream, until it breaks. `Ok` means it was established.
async fn join_once(ctx: &NodeContext, config: &JoinConfig) -> Result<(), String> {
    let channel = mexec_common::tls::endpoint(&config.gatekeeper, config.tls.as_ref())
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(2))
        .keep_alive_timeout(Duration::from_secs(4))
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel(4);
    let register = JoinRequest {
        msg: Some(join_request::Msg::Register(Register {
            node: ctx.name.clone(),
            address: config.advertise.clone(),
            port: u32::from(config.port),
        })),
    };
    let _ = tx.send(register).await;
    let _ = tx.send(load(ctx)).await;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token) = &config.token {
        token.attach(request.metadata_mut());
    }
    let mut responses = GatekeeperClient::new(channel)
        .join(request)
        .await
        .map_err(|s| s.message().to_owned())?
        .into_inner();
    tracing::info!(gatekeeper = %config.gatekeeper, "joined the cluster");
    let mut changes = ctx.admission.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(HEARTBEAT) => {}
            changed = changes.changed() => if changed.is_err() { return Ok(()) },
            message = responses.message() => match message {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => {
                    tracing::warn!(gatekeeper = %config.gatekeeper, "membership stream ended");
                    return Ok(());
                }
            },
        }
        if tx.send(load(ctx)).await.is_err() {
            return Ok(());
        }
    }
}

fn load(ctx: &NodeContext) -> JoinRequest {
    JoinRequest {
        msg: Some(join_request::Msg::Load(ctx.load_report())),
    }
}
