//! What the end of a scheduling run is made of, from the clients' job log
//! (`MEXEC_JOBLOG`: node, wall time and end time of every job).
//!
//! For a sleep job of known length the log pins down three instants: the
//! client asked for it (end − wall time), the node started it (end − job
//! length) and it ended. Between the first two the job waited: in a node's
//! queue (direct placement) or in the gatekeeper's (gatekeeper placement),
//! plus the client's own start-up. Sweeping over the run then shows when
//! the last moment with every slot busy was, and how much slot time was
//! lost after it to jobs that were waiting while slots stood free — a job
//! queued behind a busy node while another node idles.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// A wait longer than this is counted as queueing, not client start-up.
const QUEUED_AFTER_S: f64 = 0.1;
/// Resolution of the sweep.
const STEP_S: f64 = 0.01;

/// One job's three instants, in seconds from the run's first request.
#[derive(Debug, Clone)]
struct Job {
    node: String,
    asked: f64,
    started: f64,
    ended: f64,
}

/// The end of one run, summarised.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tail {
    /// From the first request to the last job's end.
    pub span_s: f64,
    /// The last instant at which every slot was busy.
    pub full_until_s: f64,
    /// `span_s − full_until_s`: the run's tail.
    pub tail_s: f64,
    /// Jobs that started on a node after `full_until_s`.
    pub jobs_started_in_tail: usize,
    /// Of those, the ones that had waited more than 0.1 s.
    pub jobs_waited_in_tail: usize,
    /// Slot-seconds during which a waiting job and a free slot coexisted
    /// (the smaller of the two counts, integrated over the whole run).
    pub lost_slot_s: f64,
    /// The same, after `full_until_s` only.
    pub lost_slot_s_in_tail: f64,
    /// The last job to end: its node, how long it waited, when it started.
    pub last_node: String,
    pub last_wait_s: f64,
    pub last_started_s: f64,
    /// How many jobs ran on the last job's node after `full_until_s`, and
    /// how many slots were idle (on average) during the tail.
    pub last_node_jobs_in_tail: usize,
    pub mean_idle_slots_in_tail: f64,
    /// Jobs each node ran per slot, fewest and most: equal when placement
    /// follows the slots, spread when it ignores them (as random does).
    #[serde(default)]
    pub jobs_per_slot_min: f64,
    #[serde(default)]
    pub jobs_per_slot_max: f64,
}

/// Reads the job log at `path` (sleep jobs of `job_s` seconds on nodes
/// with `slots` each) and summarises its tail; None when it has no remote
/// jobs.
pub fn of_joblog(path: &Path, job_s: f64, slots: &HashMap<String, u32>) -> Option<Tail> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut jobs: Vec<Job> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["placed"] == "remote")
        .filter_map(|v| {
            let ended = v["finished_unix_ms"].as_f64()? / 1000.0;
            let wall = v["wall_ms"].as_f64()? / 1000.0;
            Some(Job {
                node: v["node"].as_str()?.to_owned(),
                asked: ended - wall,
                started: ended - job_s,
                ended,
            })
        })
        .collect();
    let origin = jobs.iter().map(|j| j.asked).reduce(f64::min)?;
    for job in &mut jobs {
        job.asked -= origin;
        job.started -= origin;
        job.ended -= origin;
    }
    Some(summarise(&jobs, slots))
}

fn summarise(jobs: &[Job], node_slots: &HashMap<String, u32>) -> Tail {
    let slots = f64::from(node_slots.values().sum::<u32>());
    let per_slot: Vec<f64> = node_slots
        .iter()
        .map(|(node, &n)| {
            jobs.iter().filter(|j| &j.node == node).count() as f64 / f64::from(n.max(1))
        })
        .collect();
    let span = jobs.iter().map(|j| j.ended).fold(0.0, f64::max);
    let steps = (span / STEP_S).ceil() as usize;
    let at = |i: usize| i as f64 * STEP_S;
    let running = |t: f64| {
        jobs.iter()
            .filter(|j| j.started <= t && t < j.ended)
            .count() as f64
    };
    let waiting = |t: f64| {
        jobs.iter()
            .filter(|j| j.asked + QUEUED_AFTER_S <= t && t < j.started)
            .count() as f64
    };
    let full_until = (0..steps)
        .rev()
        .map(at)
        .find(|&t| running(t) >= slots)
        .unwrap_or(0.0);
    let mut lost = 0.0;
    let mut lost_in_tail = 0.0;
    let mut idle_in_tail = 0.0;
    for t in (0..steps).map(at) {
        let free = (slots - running(t)).max(0.0);
        let loss = waiting(t).min(free) * STEP_S;
        lost += loss;
        if t > full_until {
            lost_in_tail += loss;
            idle_in_tail += free * STEP_S;
        }
    }
    let tail_s = span - full_until;
    let in_tail: Vec<&Job> = jobs.iter().filter(|j| j.started > full_until).collect();
    let last = jobs
        .iter()
        .max_by(|a, b| a.ended.total_cmp(&b.ended))
        .expect("at least one job");
    Tail {
        span_s: span,
        full_until_s: full_until,
        tail_s,
        jobs_started_in_tail: in_tail.len(),
        jobs_waited_in_tail: in_tail
            .iter()
            .filter(|j| j.started - j.asked > QUEUED_AFTER_S)
            .count(),
        lost_slot_s: lost,
        lost_slot_s_in_tail: lost_in_tail,
        last_node: last.node.clone(),
        last_wait_s: last.started - last.asked,
        last_started_s: last.started,
        last_node_jobs_in_tail: in_tail.iter().filter(|j| j.node == last.node).count(),
        mean_idle_slots_in_tail: if tail_s > 0.0 {
            idle_in_tail / tail_s
        } else {
            0.0
        },
        jobs_per_slot_min: per_slot.iter().copied().fold(f64::INFINITY, f64::min),
        jobs_per_slot_max: per_slot.iter().copied().fold(0.0, f64::max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(node: &str, asked: f64, started: f64) -> Job {
        Job {
            node: node.into(),
            asked,
            started,
            ended: started + 1.0,
        }
    }

    #[test]
    fn a_job_queued_behind_a_busy_node_while_another_idles_is_lost_time() {
        // Two one-slot nodes. a runs 0–1 and 1–2 (the second job queued
        // from 0); b runs 0–1 and then idles.
        let jobs = [job("a", 0.0, 0.0), job("b", 0.0, 0.0), job("a", 0.0, 1.0)];
        let tail = summarise(&jobs, &one_slot_each(&["a", "b"]));
        assert!((tail.full_until_s - 0.99).abs() < 0.02, "{tail:?}");
        assert!((tail.tail_s - 1.0).abs() < 0.02, "{tail:?}");
        assert_eq!(tail.jobs_started_in_tail, 1);
        assert_eq!(tail.jobs_waited_in_tail, 1);
        // It waited 0.1–1.0 while both slots were busy: nothing lost.
        assert!(tail.lost_slot_s < 0.02, "{tail:?}");
        assert_eq!(tail.last_node, "a");
        assert!(
            (tail.mean_idle_slots_in_tail - 1.0).abs() < 0.05,
            "{tail:?}"
        );
        assert_eq!((tail.jobs_per_slot_min, tail.jobs_per_slot_max), (1.0, 2.0));
    }

    fn one_slot_each(nodes: &[&str]) -> HashMap<String, u32> {
        nodes.iter().map(|n| (n.to_string(), 1)).collect()
    }

    #[test]
    fn waiting_while_a_slot_is_free_counts() {
        // One two-slot node: the second job waits 0–0.5 though a slot is free.
        let jobs = [job("a", 0.0, 0.0), job("a", 0.0, 0.5)];
        let tail = summarise(&jobs, &HashMap::from([("a".to_string(), 2)]));
        assert!((tail.lost_slot_s - 0.4).abs() < 0.03, "{tail:?}");
    }
}
