//! The summary at the end of a build: jobs per node, remote / local /
//! retried / failed counts, wall time, and the CPU time used on the farm,
//! all from the clients' job log.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::tokens::TokenAccount;

/// One node's part.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NodeShare {
    pub jobs: usize,
    pub cpu_secs: f64,
}

/// The whole build.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Jobs per node ("local" for those run here).
    pub nodes: BTreeMap<String, NodeShare>,
    /// Jobs that went through mexec.
    pub jobs: usize,
    pub remote: usize,
    pub local: usize,
    /// Jobs that had to run again after losing their node.
    pub retried: usize,
    pub failed: usize,
    pub wall_secs: f64,
    /// CPU time (user + system) the build used on the farm.
    pub farm_cpu_secs: f64,
    /// Capacity as it changed: (seconds since start, slots).
    pub capacity: Vec<(f64, u32)>,
    /// Jobserver tokens (absent when the user gave -j).
    pub tokens: Option<TokenAccount>,
    /// make's exit status.
    pub exit_code: i32,
}

impl Summary {
    /// Reads the job log.
    pub fn from_joblog(path: &Path) -> Summary {
        let mut summary = Summary::default();
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for line in text.lines() {
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            summary.jobs += 1;
            if entry["retries"].as_u64().unwrap_or(0) > 0 {
                summary.retried += 1;
            }
            let cpu = entry["cpu_ms"].as_u64().unwrap_or(0) as f64 / 1000.0;
            match entry["placed"].as_str() {
                Some("remote") => {
                    summary.remote += 1;
                    summary.farm_cpu_secs += cpu;
                    let node = entry["node"].as_str().unwrap_or("?").to_owned();
                    let share = summary.nodes.entry(node).or_default();
                    share.jobs += 1;
                    share.cpu_secs += cpu;
                }
                Some("local") => {
                    summary.local += 1;
                    summary.nodes.entry("local".into()).or_default().jobs += 1;
                }
                _ => summary.failed += 1,
            }
        }
        summary
    }

    /// Adds what the job log does not know.
    pub fn finish(mut self, wall: Duration, exit_code: i32) -> Summary {
        self.wall_secs = wall.as_secs_f64();
        self.exit_code = exit_code;
        self
    }

    /// The table a person reads.
    pub fn table(&self) -> String {
        let mut text = format!("{:<16} {:>6} {:>9}\n", "NODE", "JOBS", "CPU(s)");
        for (node, share) in &self.nodes {
            text.push_str(&format!(
                "{node:<16} {:>6} {:>9.1}\n",
                share.jobs, share.cpu_secs
            ));
        }
        text.push_str(&format!(
            "mpmake: {} jobs: {} remote, {} local, {} retried, {} failed; wall {:.1} s; farm CPU {:.1} s",
            self.jobs, self.remote, self.local, self.retried, self.failed, self.wall_secs, self.farm_cpu_secs
        ));
        if let (Some(first), Some(last)) = (self.capacity.first(), self.capacity.last()) {
            if first.1 == last.1 {
                text.push_str(&format!("; capacity {}", first.1));
            } else {
                text.push_str(&format!("; capacity {} -> {}", first.1, last.1));
            }
        }
        text.push('\n');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_from_the_job_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("jobs.jsonl");
        let lines = [
            r#"{"placed":"remote","node":"n1","cpu_ms":1500,"retries":0}"#,
            r#"{"placed":"remote","node":"n2","cpu_ms":500,"retries":1}"#,
            r#"{"placed":"remote","node":"n1","cpu_ms":0,"retries":0}"#,
            r#"{"placed":"local","node":"local","cpu_ms":0,"retries":0}"#,
            r#"{"placed":"failed","node":"n3","cpu_ms":0,"retries":0}"#,
            "not json",
        ];
        std::fs::write(&log, lines.join("\n")).unwrap();
        let s = Summary::from_joblog(&log).finish(Duration::from_secs(2), 0);
        assert_eq!(
            (s.jobs, s.remote, s.local, s.retried, s.failed),
            (5, 3, 1, 1, 1)
        );
        assert_eq!(
            s.nodes["n1"],
            NodeShare {
                jobs: 2,
                cpu_secs: 1.5
            }
        );
        assert_eq!(s.nodes["local"].jobs, 1);
        assert_eq!(s.farm_cpu_secs, 2.0);
        assert!(s
            .table()
            .contains("5 jobs: 3 remote, 1 local, 1 retried, 1 failed"));
    }
}
