//! What the node's load looks like: our counters plus the machine's own
//! load average and free memory, and on a desktop node what it offers now
//! and why.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use mexec_proto::v1::LoadReport;

use super::admission::Counts;
use super::owner_load::Offer;
use super::procfs;

/// Builds a load report from the admission counters and the machine; a
/// desktop node passes its offer.
pub fn report(node: &str, counts: Counts, desktop: Option<&Offer>) -> LoadReport {
    let MachineSample {
        load_avg_1m,
        mem_available_bytes,
        cores,
        ..
    } = machine();
    LoadReport {
        node: node.to_owned(),
        version: mexec_common::version::current_text(),
        slots: counts.slots,
        running: counts.running,
        queued: counts.queued,
        max_queued: counts.max_queued,
        cores,
        load_avg_1m,
        mem_available_bytes,
        foreign_load: foreign_load(load_avg_1m, counts.running),
        draining: counts.draining,
        os: std::env::consts::OS.to_owned(),
        arch: std::env::consts::ARCH.to_owned(),
        jobs_done: counts.jobs_done,
        desktop: desktop.is_some(),
        offered_slots: counts.offered,
        offer_reason: desktop.map(|d| d.reason.clone()).unwrap_or_default(),
        owner_load: desktop.map_or(0.0, |d| d.owner_load),
        reclaiming: desktop.is_some_and(|d| d.reclaiming),
        // The node's context adds what it knows beyond the load.
        toolchains: Vec::new(),
        properties: Default::default(),
        unmounted: String::new(),
    }
}

/// The machine's part of a report. Reports go out at every start and end
/// of a job (to each watching client and the gatekeeper), and reading
/// /proc and the cgroup files for it cost more than the rest of the report
/// together; so it is read at most every `SAMPLE_EVERY`. The kernel renews
/// the load average only every 5 s anyway.
#[derive(Debug, Clone, Copy)]
struct MachineSample {
    taken: Instant,
    load_avg_1m: f64,
    mem_available_bytes: u64,
    cores: u32,
}

const SAMPLE_EVERY: Duration = Duration::from_millis(250);

fn machine() -> MachineSample {
    static LAST: Mutex<Option<MachineSample>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(PoisonError::into_inner);
    match *last {
        Some(sample) if sample.taken.elapsed() < SAMPLE_EVERY => sample,
        _ => {
            let sample = MachineSample {
                taken: Instant::now(),
                load_avg_1m: procfs::load_average_1m().unwrap_or(0.0),
                mem_available_bytes: procfs::meminfo_bytes("MemAvailable").unwrap_or(0),
                cores: mexec_common::host::cpu_count(),
            };
            *last = Some(sample);
            sample
        }
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
            offered: 4,
            running: 1,
            queued: 2,
            max_queued: 4,
            jobs_done: 9,
            draining: true,
        };
        let r = report("n1", counts, None);
        assert_eq!((r.slots, r.running, r.queued, r.jobs_done), (4, 1, 2, 9));
        assert!(r.draining && r.cores >= 1 && r.mem_available_bytes > 0);
        assert_eq!(r.os, "linux");
        assert!(!r.desktop && r.offer_reason.is_empty());
        assert_eq!(r.offered_slots, 4);
    }

    #[test]
    fn a_desktop_report_says_what_it_offers_and_why() {
        let counts = Counts {
            slots: 4,
            offered: 1,
            running: 0,
            queued: 0,
            max_queued: 4,
            jobs_done: 0,
            draining: false,
        };
        let offer = Offer {
            owner_load: 2.6,
            slots: 1,
            reason: "owner load 2.6".into(),
            reclaiming: false,
        };
        let r = report("d1", counts, Some(&offer));
        assert!(r.desktop);
        assert_eq!((r.slots, r.offered_slots), (4, 1));
        assert_eq!(
            (r.offer_reason.as_str(), r.owner_load),
            ("owner load 2.6", 2.6)
        );
    }
}
