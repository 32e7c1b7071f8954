//! `mexecd`'s metrics. The gauges are read from the node's load report at
//! each scrape (`refresh`), the counters and the histogram as jobs end.

use std::sync::atomic::AtomicU64;

use mexec_proto::v1::LoadReport;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// How a job ended, as `mexec_jobs_total` counts it. The variants are
/// written as the label values are (the derive encodes their names).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    /// Exit status 0.
    exit_zero,
    /// Any other exit status (127 for a command not found included).
    exit_nonzero,
    /// Killed by a signal it was not killed for by the node.
    signal,
    /// Killed by the node for a limit or the client's timeout.
    limit,
    /// Refused before it ran (full, draining, policy, lease, bad request).
    refused,
    /// Ended without a status of its own: the client left, the node shut
    /// down, the process was lost track of.
    lost,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::exit_zero,
        Outcome::exit_nonzero,
        Outcome::signal,
        Outcome::limit,
        Outcome::refused,
        Outcome::lost,
    ];

    /// The name, as on the wire (`ObservedJobEnd.outcome`).
    pub fn name(self) -> &'static str {
        match self {
            Outcome::exit_zero => "exit_zero",
            Outcome::exit_nonzero => "exit_nonzero",
            Outcome::signal => "signal",
            Outcome::limit => "limit",
            Outcome::refused => "refused",
            Outcome::lost => "lost",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: Outcome,
}

/// Every metric of one executor.
#[derive(Debug)]
pub struct ExecutorMetrics {
    registry: Registry,
    slots: Gauge,
    running: Gauge,
    queued: Gauge,
    foreign_load: Gauge<f64, AtomicU64>,
    draining: Gauge,
    jobs: Family<OutcomeLabel, Counter>,
    duration: Histogram,
    output: Counter,
}

impl Default for ExecutorMetrics {
    fn default() -> Self {
        ExecutorMetrics::new()
    }
}

impl ExecutorMetrics {
    pub fn new() -> ExecutorMetrics {
        let mut m = ExecutorMetrics {
            registry: Registry::default(),
            slots: Gauge::default(),
            running: Gauge::default(),
            queued: Gauge::default(),
            foreign_load: Gauge::default(),
            draining: Gauge::default(),
            jobs: Family::default(),
            duration: Histogram::new(super::seconds_buckets()),
            output: Counter::default(),
        };
        // Every outcome is present from the start, so a rate over a
        // counter that first appears mid-range is never lost.
        for outcome in Outcome::ALL {
            let _ = m.jobs.get_or_create(&OutcomeLabel { outcome });
        }
        let registry = &mut m.registry;
        registry.register(
            "mexec_slots",
            "Job slots this node offers now (fewer than it has on a busy desktop)",
            m.slots.clone(),
        );
        registry.register(
            "mexec_jobs_running",
            "Jobs running on this node",
            m.running.clone(),
        );
        registry.register(
            "mexec_jobs_queued",
            "Jobs admitted and waiting for a slot on this node",
            m.queued.clone(),
        );
        registry.register(
            "mexec_foreign_load",
            "Load average of this node that is not mexec's jobs (runnable processes)",
            m.foreign_load.clone(),
        );
        registry.register(
            "mexec_draining",
            "1 while this node drains (takes no new jobs), else 0",
            m.draining.clone(),
        );
        registry.register(
            "mexec_jobs",
            "Jobs ended on this node, by outcome (exit_zero, exit_nonzero, signal, limit, refused, lost)",
            m.jobs.clone(),
        );
        registry.register_with_unit(
            "mexec_job_duration",
            "Wall-clock time of the jobs that ran on this node, from start to exit",
            Unit::Seconds,
            m.duration.clone(),
        );
        registry.register_with_unit(
            "mexec_output",
            "stdout plus stderr bytes the jobs on this node wrote",
            Unit::Bytes,
            m.output.clone(),
        );
        m
    }

    /// Counts a job that ended (or was refused).
    pub fn job_ended(&self, outcome: Outcome, ran_secs: Option<f64>, output_bytes: u64) {
        self.jobs.get_or_create(&OutcomeLabel { outcome }).inc();
        if let Some(secs) = ran_secs {
            self.duration.observe(secs);
        }
        self.output.inc_by(output_bytes);
    }

    /// The exposition, with the gauges from `load`.
    pub fn encode(&self, load: &LoadReport) -> String {
        self.slots
            .set(i64::from(mexec_common::load_query::offered_slots(load)));
        self.running.set(i64::from(load.running));
        self.queued.set(i64::from(load.queued));
        self.foreign_load.set(load.foreign_load);
        self.draining.set(i64::from(load.draining));
        super::encode(&self.registry)
    }
}
