//! Prometheus metrics of both daemons, with the official
//! `prometheus-client`: each role's metrics in one struct that owns its
//! registry, encoded in the Prometheus text format (0.0.4) on a scrape.
//! Label sets stay bounded: outcomes, results, node states and user
//! names, never job ids or commands.
//!
//! Layout:
//! - `executor`: `mexecd`'s slots, jobs and output.
//! - `gatekeeper`: the cluster's nodes, queue, leases and users' slot time.

mod executor;
mod gatekeeper;

pub use executor::{ExecutorMetrics, Outcome};
pub use gatekeeper::{GatekeeperMetrics, LeaseResult};

use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;

/// The `Content-Type` of what `encode` returns.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Job durations and waits, in seconds: 1 ms to about 1.2 h.
fn seconds_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.5, 18)
}

/// `registry` in the Prometheus text format.
fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_text::encode(&mut text, registry);
    text
}
