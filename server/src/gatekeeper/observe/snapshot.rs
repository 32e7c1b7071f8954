//! The dashboard's picture: made once a second from the cluster's status
//! and the live view, as one JSON text that every viewer's event stream
//! sends (so ten open dashboards cost what one does).

use std::sync::Arc;
use std::time::Duration;

use mexec_proto::v1::{NodeStatus, UserStatus};
use serde::Serialize;

use super::live::{FinishedJob, Point, RunningJob};
use super::Observer;
use crate::gatekeeper::shared::Shared;

/// How often the picture is made.
const EVERY: Duration = Duration::from_secs(1);
/// How often the accounting summary is asked for.
const USAGE_EVERY: u32 = 10;

#[derive(Serialize)]
struct Snapshot<'a> {
    version: &'a str,
    now_unix_ms: u64,
    nodes: Vec<NodeView>,
    users: Vec<UserView>,
    running: Vec<RunningJob>,
    finished: Vec<FinishedJob>,
    history: Vec<Point>,
    queued: u32,
    usage: &'a [UsageView],
}

#[derive(Serialize)]
struct NodeView {
    name: String,
    address: String,
    slots: u32,
    offered: u32,
    running: u32,
    queued: u32,
    load: f64,
    foreign_load: f64,
    mem_available_mib: u64,
    draining: bool,
    version: String,
    desktop: bool,
    offer_reason: String,
}

#[derive(Serialize)]
struct UserView {
    user: String,
    running: u32,
    queued: u32,
    share: f64,
}

#[derive(Serialize, Clone)]
struct UsageView {
    user: String,
    jobs: u64,
    slot_seconds: f64,
    cpu_seconds: f64,
    queue_wait_seconds: f64,
}

/// Makes the picture every `EVERY` until the task is aborted.
pub async fn publish(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(EVERY);
    let mut usage: Vec<UsageView> = Vec::new();
    let observer = &shared.observe;
    for round in 0u32.. {
        tick.tick().await;
        if round % USAGE_EVERY == 0 {
            usage = last_hour(observer).await;
        }
        let (nodes, users, queued) = shared.with(|c| {
            let (nodes, users, _) = c.status();
            (nodes, users, c.queued())
        });
        let text = picture(observer, &nodes, &users, queued, &usage);
        observer.snapshot.send_replace(Arc::new(text));
    }
}

async fn last_hour(observer: &Observer) -> Vec<UsageView> {
    let mut rows: Vec<UsageView> = observer
        .accounting
        .usage()
        .await
        .into_iter()
        .filter(|r| r.window == "hour" && r.build_id.is_empty())
        .map(|r| UsageView {
            user: r.user,
            jobs: r.jobs,
            slot_seconds: r.slot_seconds,
            cpu_seconds: r.cpu_seconds,
            queue_wait_seconds: r.queue_wait_seconds,
        })
        .collect();
    rows.sort_by(|a, b| b.slot_seconds.total_cmp(&a.slot_seconds));
    rows
}

fn picture(
    observer: &Observer,
    nodes: &[NodeStatus],
    users: &[UserStatus],
    queued: u32,
    usage: &[UsageView],
) -> String {
    let now = mexec_common::clock::now_ms();
    let node_views: Vec<NodeView> = nodes.iter().map(node_view).collect();
    let (slots, in_use) = node_views
        .iter()
        .fold((0, 0), |(s, u), n| (s + n.offered, u + n.running));
    observer.live(|live| {
        live.sample(Point {
            at_unix_ms: now,
            slots,
            in_use,
            queued,
        });
        let shares = live.shares(now);
        let running = live.running();
        let mut user_views: Vec<UserView> = users
            .iter()
            .map(|u| UserView {
                user: u.user.clone(),
                running: u.running,
                queued: u.queued,
                share: shares.get(&u.user).copied().unwrap_or(0.0),
            })
            .collect();
        // Users whose jobs were placed directly hold no lease: they show
        // with their running jobs and share.
        for (user, share) in &shares {
            if !user_views.iter().any(|v| &v.user == user) {
                let running = running.iter().filter(|j| &j.user == user).count() as u32;
                user_views.push(UserView {
                    user: user.clone(),
                    running,
                    queued: 0,
                    share: *share,
                });
            }
        }
        for view in &mut user_views {
            let seen = running.iter().filter(|j| j.user == view.user).count() as u32;
            view.running = view.running.max(seen);
        }
        user_views.sort_by(|a, b| a.user.cmp(&b.user));
        let snapshot = Snapshot {
            version: mexec_common::VERSION,
            now_unix_ms: now,
            nodes: node_views,
            users: user_views,
            running,
            finished: live.finished(),
            history: live.history(),
            queued,
            usage,
        };
        serde_json::to_string(&snapshot).unwrap_or_else(|_| "{}".to_owned())
    })
}

fn node_view(node: &NodeStatus) -> NodeView {
    let load = node.load.clone().unwrap_or_default();
    NodeView {
        name: load.node.clone(),
        address: node.address.clone(),
        slots: load.slots,
        offered: mexec_common::load_query::offered_slots(&load),
        running: load.running,
        queued: load.queued,
        load: load.load_avg_1m,
        foreign_load: load.foreign_load,
        mem_available_mib: load.mem_available_bytes >> 20,
        draining: load.draining,
        version: load.version.clone(),
        desktop: load.desktop,
        offer_reason: load.offer_reason.clone(),
    }
}
