//! What the node's load looks like: our counters plus the machine's own
//! load average and free memory.

use mexec_proto::v1::LoadReport;

use super::admission::Counts;
use super::procfs;

/// Builds a load report from the admission counters and the machine.
pub fn report(node: &str, counts: Counts) -> LoadReport {
    let load_avg_1m = procfs::load_average_1m().unwrap_or(0.0);
    LoadReport {
        node: node.to_owned(),
        version: mexec_common::VERSION.to_owned(),
        slots: counts.slots,
        running: counts.running,
        queued: counts.queued,
        max_queued: counts.max_queued,
        cores: mexec_common::host::cpu_count(),
        load_avg_1m,
        mem_available_bytes: procfs::meminfo_bytes("MemAvailable").unwrap_or(0),
        foreign_load: foreign_load(load_avg_1m, counts.running),
        draining: counts.draining,
        os: std::env::consts::OS.to_owned(),
        arch: std::env::consts::ARCH.to_owned(),
        jobs_done: counts.jobs_done,
    }
}

/// Load that is not ours: the load average minus our running jobs. The
/// average lags by a minute, so this is an estimate, never below zero.
pub fn foreign_load(load_avg_1m: f64, running: u32) -> f64 {
    (load_avg_1m - f64::from(running)).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_load_subtracts_our_jobs_and_stays_non_negative() {
        assert_eq!(foreign_load(3.5, 2), 1.5);
        assert_eq!(foreign_load(1.0, 4), 0.0);
    }

    #[test]
    fn a_report_carries_the_counters() {
        let counts = Counts {
            slots: 4,
            running: 1,
            queued: 2,
            max_queued: 4,
            jobs_done: 9,
            draining: true,
        };
        let r = report("n1", counts);
        assert_eq!((r.slots, r.running, r.queued, r.jobs_done), (4, 1, 2, 9));
        assert!(r.draining && r.cores >= 1 && r.mem_available_bytes > 0);
        assert_eq!(r.os, "linux");
    }
}
