//! What the node's load looks like: our counters plus the machine's own
//! load average and free memory.

use mexec_proto::v1::LoadReport;

use super::admission::Counts;

/// Builds a load report from the admission counters and the machine.
pub fn report(node: &str, counts: Counts) -> LoadReport {
    let load_avg_1m = load_average();
    LoadReport {
        node: node.to_owned(),
        version: mexec_common::VERSION.to_owned(),
        slots: counts.slots,
        running: counts.running,
        queued: counts.queued,
        max_queued: counts.max_queued,
        cores: cores(),
        load_avg_1m,
        mem_available_bytes: mem_available_bytes(),
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

fn cores() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

fn load_average() -> f64 {
    let mut avg = [0f64; 3];
    // SAFETY: the array has room for the three values asked for.
    let n = unsafe { libc::getloadavg(avg.as_mut_ptr(), 3) };
    if n >= 1 {
        avg[0]
    } else {
        0.0
    }
}

fn mem_available_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| parse_mem_available(&text))
        .unwrap_or(0)
}

fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
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
    fn mem_available_is_read_in_bytes() {
        let text = "MemTotal: 100 kB\nMemAvailable:    2048 kB\n";
        assert_eq!(parse_mem_available(text), Some(2048 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
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
