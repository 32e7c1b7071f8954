//! What the dashboard shows that the cluster's status does not: the jobs
//! running on each node (from the executors' job events, so direct and
//! relayed jobs too), the last finished ones, each user's share of slot
//! time over the last minutes, and 15 minutes of slots in use and queue
//! depth. Plain data; the observer holds it behind a lock.

use std::collections::{BTreeMap, HashMap, VecDeque};

use mexec_proto::v1::{ObservedJobEnd, ObservedJobStart};
use serde::Serialize;

/// Finished jobs kept for the dashboard.
pub const FINISHED_KEPT: usize = 300;
/// Running jobs kept per node at most (a node reporting starts without
/// ends must not grow the gatekeeper without bound).
const RUNNING_PER_NODE: usize = 4096;
/// The chart's span and resolution: 15 minutes, a point every 5 s.
pub const HISTORY_POINTS: usize = 180;
pub const HISTORY_EVERY_MS: u64 = 5000;
/// The window of each user's share.
pub const SHARE_WINDOW_MS: u64 = 5 * 60 * 1000;

/// A job running on a node.
#[derive(Debug, Clone, Serialize)]
pub struct RunningJob {
    pub node: String,
    pub job_id: String,
    pub user: String,
    pub build_id: String,
    pub program: String,
    pub args: String,
    pub started_unix_ms: u64,
    pub queue_wait_ms: u64,
}

/// A job that ended.
#[derive(Debug, Clone, Serialize)]
pub struct FinishedJob {
    pub node: String,
    pub user: String,
    pub build_id: String,
    pub program: String,
    pub args: String,
    pub outcome: String,
    pub status: i32,
    pub ended_unix_ms: u64,
    pub duration_ms: u64,
    pub cpu_ms: u64,
    pub queue_wait_ms: u64,
}

/// One point of the chart.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Point {
    pub at_unix_ms: u64,
    pub slots: u32,
    pub in_use: u32,
    pub queued: u32,
}

/// The live picture.
#[derive(Debug, Default)]
pub struct Live {
    running: BTreeMap<String, HashMap<String, RunningJob>>,
    finished: VecDeque<FinishedJob>,
    history: VecDeque<Point>,
}

impl Live {
    /// A job started on `node`; `lease_wait_ms` is what it waited at the
    /// gatekeeper before that (0 for direct jobs).
    pub fn started(&mut self, node: &str, start: &ObservedJobStart, lease_wait_ms: u64) {
        let jobs = self.running.entry(node.to_owned()).or_default();
        if jobs.len() >= RUNNING_PER_NODE {
            return;
        }
        jobs.insert(
            start.job_id.clone(),
            RunningJob {
                node: node.to_owned(),
                job_id: start.job_id.clone(),
                user: start.user.clone(),
                build_id: start.build_id.clone(),
                program: start.program.clone(),
                args: start.args.clone(),
                started_unix_ms: start.started_unix_ms,
                queue_wait_ms: start.queue_wait_us / 1000 + lease_wait_ms,
            },
        );
    }

    /// A job ended on `node`: the finished job, when its start was seen.
    pub fn ended(&mut self, node: &str, end: &ObservedJobEnd, now_ms: u64) -> Option<FinishedJob> {
        let job = self.running.get_mut(node)?.remove(&end.job_id)?;
        let finished = FinishedJob {
            node: job.node,
            user: job.user,
            build_id: job.build_id,
            program: job.program,
            args: job.args,
            outcome: end.outcome.clone(),
            status: end.status,
            ended_unix_ms: now_ms,
            duration_ms: end.wall_us / 1000,
            cpu_ms: (end.user_us + end.system_us) / 1000,
            queue_wait_ms: job.queue_wait_ms,
        };
        if self.finished.len() == FINISHED_KEPT {
            self.finished.pop_front();
        }
        self.finished.push_back(finished.clone());
        Some(finished)
    }

    /// A node left: what it ran is no longer known to run.
    pub fn node_left(&mut self, node: &str) {
        self.running.remove(node);
    }

    /// Adds a chart point, at most one per `HISTORY_EVERY_MS`.
    pub fn sample(&mut self, point: Point) {
        if let Some(last) = self.history.back() {
            if point.at_unix_ms < last.at_unix_ms + HISTORY_EVERY_MS {
                return;
            }
        }
        if self.history.len() == HISTORY_POINTS {
            self.history.pop_front();
        }
        self.history.push_back(point);
    }

    /// Running jobs, oldest first.
    pub fn running(&self) -> Vec<RunningJob> {
        let mut jobs: Vec<RunningJob> = self
            .running
            .values()
            .flat_map(|jobs| jobs.values().cloned())
            .collect();
        jobs.sort_by_key(|j| j.started_unix_ms);
        jobs
    }

    /// Finished jobs, newest first.
    pub fn finished(&self) -> Vec<FinishedJob> {
        self.finished.iter().rev().cloned().collect()
    }

    pub fn history(&self) -> Vec<Point> {
        self.history.iter().copied().collect()
    }

    /// Each user's share of the slot time used over the last
    /// `SHARE_WINDOW_MS` (finished jobs within it and running ones so
    /// far), from 0 to 1.
    pub fn shares(&self, now_ms: u64) -> BTreeMap<String, f64> {
        let since = now_ms.saturating_sub(SHARE_WINDOW_MS);
        let mut used: BTreeMap<String, f64> = BTreeMap::new();
        for job in self.finished.iter().filter(|j| j.ended_unix_ms >= since) {
            let start = job.ended_unix_ms.saturating_sub(job.duration_ms).max(since);
            *used.entry(job.user.clone()).or_default() +=
                job.ended_unix_ms.saturating_sub(start) as f64;
        }
        for job in self.running.values().flat_map(|jobs| jobs.values()) {
            let start = job.started_unix_ms.max(since);
            *used.entry(job.user.clone()).or_default() += now_ms.saturating_sub(start) as f64;
        }
        let total: f64 = used.values().sum();
        if total > 0.0 {
            used.values_mut().for_each(|v| *v /= total);
        }
        used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(id: &str, user: &str, at: u64) -> ObservedJobStart {
        ObservedJobStart {
            job_id: id.into(),
            user: user.into(),
            program: "cc".into(),
            started_unix_ms: at,
            queue_wait_us: 2000,
            ..ObservedJobStart::default()
        }
    }

    #[test]
    fn a_job_runs_then_finishes_and_shares_follow_slot_time() {
        let mut live = Live::default();
        live.started("n1", &start("j1", "alice", 1_000_000), 5);
        live.started("n2", &start("j2", "bob", 1_000_000), 0);
        assert_eq!(live.running().len(), 2);
        let end = ObservedJobEnd {
            job_id: "j1".into(),
            outcome: "exit_zero".into(),
            wall_us: 3_000_000,
            ..ObservedJobEnd::default()
        };
        let done = live.ended("n1", &end, 1_003_000).unwrap();
        assert_eq!((done.duration_ms, done.queue_wait_ms), (3000, 7));
        assert_eq!(live.running().len(), 1);
        // alice 3 s finished, bob 3 s running so far.
        let shares = live.shares(1_003_000);
        assert!((shares["alice"] - 0.5).abs() < 1e-9, "{shares:?}");
        // An end without a start (the gatekeeper restarted) is ignored.
        assert!(live.ended("n1", &end, 1_004_000).is_none());
        live.node_left("n2");
        assert!(live.running().is_empty());
    }

    #[test]
    fn the_chart_keeps_fifteen_minutes_at_five_second_points() {
        let mut live = Live::default();
        for i in 0..1000u64 {
            live.sample(Point {
                at_unix_ms: i * 1000,
                slots: 4,
                in_use: 1,
                queued: 0,
            });
        }
        let history = live.history();
        assert_eq!(history.len(), HISTORY_POINTS);
        assert_eq!(
            history[1].at_unix_ms - history[0].at_unix_ms,
            HISTORY_EVERY_MS
        );
    }
}
