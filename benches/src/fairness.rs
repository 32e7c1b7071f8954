//! Fairness: U users each run the same sleep-job "build" at once on one
//! cluster, through the gatekeeper; time per user against U, and the spread
//! between the slowest and the fastest user.

use std::collections::HashMap;
use std::process::Command;
use std::time::Instant;

use mexec_testkit::{job_dir, run_pool, GatedFarm};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub struct FairnessRun {
    pub users: usize,
    pub jobs_per_user: usize,
    pub job_secs: f64,
    pub slots: u32,
    /// Seconds from the common start to each user's last job's end.
    pub per_user_s: Vec<f64>,
    pub spread: f64,
    /// What equal sharing predicts: users * jobs * secs / slots.
    pub ideal_s: f64,
}

pub fn run(smoke: bool) -> Vec<FairnessRun> {
    let user_counts: &[usize] = if smoke { &[1, 2] } else { &[1, 2, 6, 12] };
    let (jobs_per_user, job_secs, per_user_concurrency) =
        if smoke { (6, 0.1, 4) } else { (48, 0.25, 12) };
    let farm = GatedFarm::start(&[4, 4, 4], &[]);
    let slots = 12;
    let mut runs = Vec::new();
    for &users in user_counts {
        let dir = job_dir();
        let started = Instant::now();
        let threads: Vec<_> = (0..users)
            .map(|u| {
                let commands: Vec<Command> = (0..jobs_per_user)
                    .map(|_| {
                        let mut c = farm.mexec(dir.path(), &["-n", "sleep", &job_secs.to_string()]);
                        // Fresh names each round: the gatekeeper remembers a
                        // user's recent use, and the previous round's users
                        // would start behind.
                        c.env("MEXEC_SUBMIT_USER", format!("r{users}-user{u}"))
                            .env("MEXEC_BUILD_ID", format!("r{users}-build{u}"));
                        c
                    })
                    .collect();
                std::thread::spawn(move || {
                    let outputs = run_pool(commands, per_user_concurrency);
                    let ok = outputs.iter().all(|o| o.status.success());
                    (Instant::now(), ok)
                })
            })
            .collect();
        let mut per_user = Vec::new();
        let mut by_user = HashMap::new();
        for (u, t) in threads.into_iter().enumerate() {
            let (ended, ok) = t.join().expect("user thread");
            assert!(ok, "user{u}'s jobs failed");
            let secs = ended.duration_since(started).as_secs_f64();
            per_user.push(secs);
            by_user.insert(u, secs);
        }
        let min = per_user.iter().copied().fold(f64::MAX, f64::min);
        let max = per_user.iter().copied().fold(0.0, f64::max);
        let ideal = users as f64 * jobs_per_user as f64 * job_secs / f64::from(slots);
        eprintln!(
            "fairness: {users} users: {per_user:.2?} s (spread {:.3})",
            max / min
        );
        runs.push(FairnessRun {
            users,
            jobs_per_user,
            job_secs,
            slots,
            per_user_s: per_user,
            spread: max / min,
            ideal_s: ideal,
        });
    }
    runs
}
