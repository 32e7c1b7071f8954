//! The gatekeeper's metrics. The cluster's gauges are set from its status
//! at each scrape (`encode`); the counters and the histogram as leases are
//! granted and jobs end.

use std::sync::atomic::AtomicU64;

use mexec_proto::v1::{NodeStatus, UserStatus};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// A member's state, as `mexec_nodes` counts them (variants written as
/// the label values are).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum NodeState {
    /// Taking jobs.
    up,
    /// Draining: no new jobs.
    draining,
}

/// How a lease request ended, as `mexec_leases_total` counts them.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum LeaseResult {
    /// A slot was granted.
    granted,
    /// The client left while it waited.
    cancelled,
    /// Refused: the queue was full.
    refused,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: NodeState,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: LeaseResult,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UserLabel {
    user: String,
}

/// Every metric of the gatekeeper.
#[derive(Debug)]
pub struct GatekeeperMetrics {
    registry: Registry,
    nodes: Family<StateLabel, Gauge>,
    slots: Gauge,
    running: Gauge,
    queue_depth: Family<UserLabel, Gauge>,
    lease_wait: Histogram,
    leases: Family<ResultLabel, Counter>,
    relayed: Counter,
    slot_seconds: Family<UserLabel, Counter<f64, AtomicU64>>,
}

impl Default for GatekeeperMetrics {
    fn default() -> Self {
        GatekeeperMetrics::new()
    }
}

impl GatekeeperMetrics {
    pub fn new() -> GatekeeperMetrics {
        let mut registry = Registry::default();
        let nodes = Family::<StateLabel, Gauge>::default();
        let slots = Gauge::default();
        let running = Gauge::default();
        let queue_depth = Family::<UserLabel, Gauge>::default();
        let lease_wait = Histogram::new(super::seconds_buckets());
        let leases = Family::<ResultLabel, Counter>::default();
        let relayed = Counter::default();
        let slot_seconds = Family::<UserLabel, Counter<f64, AtomicU64>>::default();
        registry.register(
            "mexec_nodes",
            "Member nodes, by state (up, draining)",
            nodes.clone(),
        );
        registry.register(
            "mexec_cluster_slots",
            "Job slots the member nodes offer now, in all",
            slots.clone(),
        );
        registry.register(
            "mexec_cluster_jobs_running",
            "Jobs running on the member nodes, as they report them",
            running.clone(),
        );
        registry.register(
            "mexec_queue_depth",
            "Lease and relay requests waiting in the fair queue, by user",
            queue_depth.clone(),
        );
        registry.register_with_unit(
            "mexec_lease_wait",
            "Time from a lease request to its grant",
            Unit::Seconds,
            lease_wait.clone(),
        );
        registry.register(
            "mexec_leases",
            "Lease requests ended, by result (granted, cancelled, refused)",
            leases.clone(),
        );
        registry.register(
            "mexec_relayed_jobs",
            "Jobs relayed through the gatekeeper for clients outside the cluster",
            relayed.clone(),
        );
        registry.register_with_unit(
            "mexec_user_slot",
            "Slot time used by the jobs of each user that ended on the member nodes",
            Unit::Seconds,
            slot_seconds.clone(),
        );
        GatekeeperMetrics {
            registry,
            nodes,
            slots,
            running,
            queue_depth,
            lease_wait,
            leases,
            relayed,
            slot_seconds,
        }
    }

    /// A lease request ended; `waited_secs` from request to grant.
    pub fn lease(&self, result: LeaseResult, waited_secs: Option<f64>) {
        self.leases.get_or_create(&ResultLabel { result }).inc();
        if let Some(secs) = waited_secs {
            self.lease_wait.observe(secs);
        }
    }

    /// A relayed job was accepted for placement.
    pub fn relayed(&self) {
        self.relayed.inc();
    }

    /// A job of `user` ended after holding its slot `secs`.
    pub fn slot_time(&self, user: &str, secs: f64) {
        let label = UserLabel {
            user: user.to_owned(),
        };
        self.slot_seconds.get_or_create(&label).inc_by(secs);
    }

    /// The exposition, with the gauges from the cluster's status.
    pub fn encode(&self, nodes: &[NodeStatus], users: &[UserStatus]) -> String {
        let (mut up, mut draining, mut slots, mut running) = (0, 0, 0, 0);
        for load in nodes.iter().filter_map(|n| n.load.as_ref()) {
            if load.draining {
                draining += 1;
            } else {
                up += 1;
            }
            slots += i64::from(mexec_common::load_query::offered_slots(load));
            running += i64::from(load.running);
        }
        for (state, count) in [(NodeState::up, up), (NodeState::draining, draining)] {
            self.nodes.get_or_create(&StateLabel { state }).set(count);
        }
        self.slots.set(slots);
        self.running.set(running);
        // Users with nothing queued leave the family, so it stays bounded
        // by the users active now.
        self.queue_depth.clear();
        for user in users.iter().filter(|u| u.queued > 0) {
            let label = UserLabel {
                user: user.user.clone(),
            };
            self.queue_depth
                .get_or_create(&label)
                .set(i64::from(user.queued));
        }
        super::encode(&self.registry)
    }
}
