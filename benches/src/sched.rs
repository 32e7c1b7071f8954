//! Scheduling efficiency: many executors with mixed slots, thousands of
//! fixed-length sleep jobs from many concurrent clients, makespan against the
//! ideal (total work / total slots), for load-aware placement (direct and
//! through the gatekeeper) and for random and round-robin placement. Every
//! job is logged (`MEXEC_JOBLOG`) so the end of each run can be traced.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use mexec_testkit::{bin, job_dir, run_pool, wait_until, Executor, Gatekeeper};
use serde::{Deserialize, Serialize};

use crate::tail::{self, Tail};

#[derive(Debug, Serialize, Deserialize)]
pub struct SchedRun {
    pub nodes: usize,
    pub slots: u32,
    pub jobs: usize,
    pub job_secs: f64,
    pub policy: String,
    pub makespan_s: f64,
    pub ideal_s: f64,
    pub ratio: f64,
    /// What the end of the run was made of; absent in older results.
    #[serde(default)]
    pub tail: Option<Tail>,
}

/// Slot counts cycle through these, so nodes differ.
const SLOT_MIX: [u32; 3] = [1, 2, 4];

pub fn run(smoke: bool) -> Vec<SchedRun> {
    let sizes: &[usize] = if smoke { &[4] } else { &[4, 16, 64] };
    let (per_slot, job_secs) = if smoke { (3, 0.2) } else { (12, 1.0) };
    let mut runs = Vec::new();
    for &n in sizes {
        let gatekeeper = Gatekeeper::start(&[]);
        let gk = gatekeeper.address();
        let executors: Vec<Executor> = (0..n)
            .map(|i| {
                let slots = SLOT_MIX[i % SLOT_MIX.len()];
                Executor::start(
                    &format!("s{i}"),
                    slots,
                    // Members take direct jobs too: every placement is
                    // measured on the same executors.
                    &[
                        "--max-queued",
                        "100000",
                        "--gatekeeper",
                        &gk,
                        "--direct-jobs",
                        "allow",
                    ],
                )
            })
            .collect();
        let node_slots: HashMap<String, u32> = (0..n)
            .map(|i| (format!("s{i}"), SLOT_MIX[i % SLOT_MIX.len()]))
            .collect();
        let slots: u32 = node_slots.values().sum();
        // The node list gives each node's slots, as MEXEC_NODES does (and
        // as distcc's host list does with host/limit); random and
        // round-robin placement ignore it.
        let nodes = executors
            .iter()
            .enumerate()
            .map(|(i, e)| format!("{}/{}", e.node(), SLOT_MIX[i % SLOT_MIX.len()]))
            .collect::<Vec<_>>()
            .join(",");
        let settled = wait_until(Duration::from_secs(30), || gatekeeper_members(&gk) == n);
        assert!(settled, "executors did not all join the gatekeeper");
        let jobs = slots as usize * per_slot;
        let concurrency = slots as usize + slots as usize / 4 + 1;
        let ideal = jobs as f64 * job_secs / f64::from(slots);
        for policy in [
            "least-loaded, direct",
            "least-loaded, gatekeeper",
            "random",
            "round-robin",
        ] {
            let state = tempfile::tempdir().expect("state dir");
            let dir = job_dir();
            let joblog = state.path().join("jobs.jsonl");
            let commands: Vec<Command> = (0..jobs)
                .map(|_| {
                    let mut c = Command::new(bin("mexec"));
                    c.current_dir(dir.path())
                        // --no-local: a job the farm refused must fail the
                        // run, not run here and shorten the makespan.
                        .args(["-n", "--no-local", "sleep", &job_secs.to_string()])
                        .env("MEXEC_STATE_DIR", state.path())
                        .env("MEXEC_JOBLOG", &joblog)
                        .env_remove("MEXEC_CONFIG");
                    match policy {
                        "least-loaded, gatekeeper" => {
                            c.env("MEXEC_GATEKEEPER", &gk).env_remove("MEXEC_NODES");
                        }
                        _ => {
                            let p = match policy {
                                "random" => "random",
                                "round-robin" => "round-robin",
                                _ => "load",
                            };
                            c.env("MEXEC_NODES", &nodes)
                                .env("MEXEC_PLACEMENT", p)
                                .env_remove("MEXEC_GATEKEEPER");
                        }
                    }
                    c
                })
                .collect();
            let started = Instant::now();
            let outputs = run_pool(commands, concurrency);
            let makespan = started.elapsed().as_secs_f64();
            let failures: Vec<String> = (outputs.iter())
                .filter(|o| !o.status.success())
                .map(|o| format!("{}: {}", o.status, String::from_utf8_lossy(&o.stderr)))
                .collect();
            assert!(
                failures.is_empty(),
                "{} jobs failed under {policy}: {failures:?}",
                failures.len()
            );
            eprintln!("sched: {n} nodes, {slots} slots, {jobs} jobs, {policy}: {makespan:.2} s (ideal {ideal:.2} s)");
            let tail = tail::of_joblog(&joblog, job_secs, &node_slots);
            if let Some(t) = &tail {
                eprintln!("sched:   {t:?}");
            }
            runs.push(SchedRun {
                nodes: n,
                slots,
                jobs,
                job_secs,
                policy: policy.to_owned(),
                makespan_s: makespan,
                ideal_s: ideal,
                ratio: makespan / ideal,
                tail,
            });
        }
        drop(executors);
        drop(gatekeeper);
    }
    runs
}

/// How many members the gatekeeper reports.
pub fn gatekeeper_members(gk: &str) -> usize {
    gatekeeper_status(gk)["nodes"]
        .as_array()
        .map_or(0, Vec::len)
}

/// `mexec --status --json` against the gatekeeper (null when unreachable).
pub fn gatekeeper_status(gk: &str) -> serde_json::Value {
    Command::new(bin("mexec"))
        .args(["--status", "--json"])
        .env("MEXEC_GATEKEEPER", gk)
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice(&o.stdout).ok())
        .unwrap_or(serde_json::Value::Null)
}
