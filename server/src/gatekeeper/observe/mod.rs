//! What the gatekeeper shows of the farm: Prometheus metrics, the live
//! dashboard and per-user accounting. Executors report every job's start
//! and end on their membership streams (`ObservedJobStart`,
//! `ObservedJobEnd`), so jobs placed directly and relayed ones count as
//! well as leased ones.
//!
//! Layout:
//! - `live`: running and finished jobs, shares, the chart's history.
//! - `accounting`: the SQLite database behind `mexec --usage`.
//! - `snapshot`: the dashboard's picture, made once a second for every
//!   viewer.
//! - `dashboard`: the HTTP routes (page, assets, events, metrics).

pub mod accounting;
mod dashboard;
pub mod live;
mod snapshot;

use std::collections::HashMap;
use std::sync::Mutex;

use mexec_proto::v1::{ObservedJobEnd, ObservedJobStart};

use crate::metrics::{GatekeeperMetrics, LeaseResult};
use accounting::{Accounting, JobRow};
use live::Live;

pub use dashboard::{serve_http, serve_metrics};
pub use snapshot::publish;

/// Lease waits remembered until the leased job's start is reported.
const LEASE_WAITS_KEPT: usize = 65_536;

/// The gatekeeper's metrics, live picture and accounting.
#[derive(Debug)]
pub struct Observer {
    pub metrics: GatekeeperMetrics,
    pub accounting: Accounting,
    live: Mutex<Live>,
    lease_waits: Mutex<HashMap<u64, u64>>,
    snapshot: tokio::sync::watch::Sender<std::sync::Arc<String>>,
}

impl Observer {
    pub fn new(accounting: Accounting) -> Observer {
        Observer {
            metrics: GatekeeperMetrics::new(),
            accounting,
            live: Mutex::default(),
            lease_waits: Mutex::default(),
            snapshot: tokio::sync::watch::Sender::new(std::sync::Arc::new("{}".to_owned())),
        }
    }

    fn live<R>(&self, f: impl FnOnce(&mut Live) -> R) -> R {
        f(&mut self.live.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A lease request ended; a granted one comes with its lease id and
    /// the milliseconds it waited.
    pub fn lease(&self, result: LeaseResult, granted: Option<(u64, u64)>) {
        let waited = granted.map(|(_, ms)| ms as f64 / 1000.0);
        self.metrics.lease(result, waited);
        if let Some((lease_id, waited_ms)) = granted {
            let mut waits = self.lease_waits.lock().unwrap_or_else(|p| p.into_inner());
            if waits.len() >= LEASE_WAITS_KEPT {
                waits.clear();
            }
            waits.insert(lease_id, waited_ms);
        }
    }

    /// A node reported a job's start.
    pub fn job_started(&self, node: &str, start: &ObservedJobStart) {
        let lease_wait = (start.lease_id != 0)
            .then(|| {
                let mut waits = self.lease_waits.lock().unwrap_or_else(|p| p.into_inner());
                waits.remove(&start.lease_id)
            })
            .flatten()
            .unwrap_or(0);
        self.live(|live| live.started(node, start, lease_wait));
    }

    /// A node reported a job's end.
    pub fn job_ended(&self, node: &str, end: &ObservedJobEnd) {
        let now = mexec_common::clock::now_ms();
        let Some(done) = self.live(|live| live.ended(node, end, now)) else {
            return;
        };
        let slot_seconds = end.wall_us as f64 / 1e6;
        self.metrics.slot_time(&done.user, slot_seconds);
        self.accounting.record(JobRow {
            ended_unix_ms: now,
            user: done.user,
            build_id: done.build_id,
            node: done.node,
            program: done.program,
            outcome: done.outcome,
            status: done.status,
            slot_seconds,
            cpu_seconds: (end.user_us + end.system_us) as f64 / 1e6,
            queue_wait_seconds: done.queue_wait_ms as f64 / 1000.0,
        });
    }

    /// A node left the cluster.
    pub fn node_left(&self, node: &str) {
        self.live(|live| live.node_left(node));
    }
}
