//! Membership: with `--gatekeeper`, the executor registers and then streams
//! its load (on every admission change, and at least every heartbeat, at
//! the interval the gatekeeper asks for in its reply). A broken stream is
//! retried with back-off, so executors re-register on their own after a
//! gatekeeper restart; running jobs are not touched by any of it. The
//! gatekeeper's first reply carries the key lease tickets are checked with.

use std::sync::Arc;
use std::time::Duration;

use mexec_common::connector::{Connector, Timeouts};
use mexec_proto::v1::gatekeeper_client::GatekeeperClient;
use mexec_proto::v1::{join_request, JoinRequest, JoinResponse, Register};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::NodeContext;

/// How often the load is sent when nothing changes, until the gatekeeper
/// says (and when it asks for nothing).
const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(500);
/// The heartbeats a gatekeeper may ask for: faster would spend the node's
/// CPU on reports, slower would let a frozen node hold leases for long.
const HEARTBEAT_RANGE: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(5));
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// A gatekeeper that vanished (its host cut off, the process frozen) is
/// noticed within 6 s, and the executor reconnects.
pub const TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(2),
    keepalive_interval: Duration::from_secs(2),
    keepalive_timeout: Duration::from_secs(4),
};

/// Where and how to join.
#[derive(Debug, Clone)]
pub struct JoinConfig {
    /// The gatekeeper's `host:port`.
    pub gatekeeper: String,
    /// What clients should connect to; empty lets the gatekeeper derive it.
    pub advertise: String,
    /// Our listening port.
    pub port: u16,
    /// Our TLS set-up and token, with `TIMEOUTS`.
    pub connector: Connector,
}

/// Keeps this node a member until the task is aborted.
pub async fn stay_joined(ctx: Arc<NodeContext>, config: JoinConfig) {
    let mut backoff = RETRY_FIRST;
    loop {
        let joined = join_once(&ctx, &config).await;
        // Until we join again, clients place directly (`lease_check`).
        ctx.lease.left();
        match joined {
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
    let channel = config
        .connector
        .connect(&config.gatekeeper)
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
    let mut responses = GatekeeperClient::new(channel)
        .join(ReceiverStream::new(rx))
        .await
        .map_err(|s| s.message().to_owned())?
        .into_inner();
    tracing::info!(gatekeeper = %config.gatekeeper, "joined the cluster");
    let mut heartbeat = DEFAULT_HEARTBEAT;
    let mut changes = ctx.admission.subscribe();
    let mut events = ctx.observe.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(heartbeat) => {}
            event = events.recv() => match event {
                Ok(event) => {
                    if tx.send(JoinRequest { msg: Some(event) }).await.is_err() {
                        return Ok(());
                    }
                    continue;
                }
                // Events dropped for a slow stream are lost to the
                // dashboard only; the load report follows.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            changed = changes.changed() => if changed.is_err() { return Ok(()) },
            message = responses.message() => match message {
                Ok(Some(reply)) => {
                    heartbeat = asked_heartbeat(&reply);
                    if !reply.lease_key.is_empty() && !ctx.lease.joined(&reply.lease_key) {
                        tracing::warn!(gatekeeper = %config.gatekeeper, "the gatekeeper's lease key is not a key; jobs need no lease");
                    }
                    continue;
                }
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

/// The heartbeat a gatekeeper's reply asks for, within `HEARTBEAT_RANGE`.
fn asked_heartbeat(reply: &JoinResponse) -> Duration {
    match reply.heartbeat_ms {
        0 => DEFAULT_HEARTBEAT,
        ms => Duration::from_millis(u64::from(ms)).clamp(HEARTBEAT_RANGE.0, HEARTBEAT_RANGE.1),
    }
}

fn load(ctx: &NodeContext) -> JoinRequest {
    JoinRequest {
        msg: Some(join_request::Msg::Load(ctx.load_report())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gatekeepers_heartbeat_is_used_within_bounds() {
        let asked = |ms| {
            asked_heartbeat(&JoinResponse {
                heartbeat_ms: ms,
                ..JoinResponse::default()
            })
        };
        assert_eq!(asked(0), DEFAULT_HEARTBEAT);
        assert_eq!(asked(250), Duration::from_millis(250));
        assert_eq!(asked(1), HEARTBEAT_RANGE.0);
        assert_eq!(asked(u32::MAX), HEARTBEAT_RANGE.1);
    }
}
