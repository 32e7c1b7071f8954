//! The build-host agent side by side: `true` and a small compile locally,
//! through the agent, directly (`MEXEC_AGENT=0`), and (the compile) through
//! distcc and icecream, interleaved run by run; with the CPU each job cost
//! on the build host (the `mexec` process from wait4, the agent from
//! /proc) and on the executor (`mexecd` from /proc), and `true` jobs per
//! second 8 at once.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mexec_testkit::{give_to_job_user, job_dir, run_pool, Farm};
use serde::{Deserialize, Serialize};

use crate::icecream::Icecream;
use crate::peers::{peer_compiles, write_small_c, Distccd, Make};
use crate::stats::Timing;
use crate::throughput::cpu_seconds;

/// One way of running a job, measured.
#[derive(Debug, Serialize, Deserialize)]
pub struct Row {
    pub name: String,
    pub timing: Timing,
    /// Median minus the local variant's median, in ms.
    pub added_ms: f64,
    /// CPU per job, in ms: the client process (with what it waited for),
    /// the agent, and the executor daemon (not the job itself).
    pub client_cpu_ms: f64,
    pub agent_cpu_ms: f64,
    pub executor_cpu_ms: f64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AgentBench {
    pub true_cmd: Vec<Row>,
    pub compile: Vec<Row>,
    /// `true` jobs per second 8 at once: local, through the agent, direct.
    pub parallel_true_per_s: Vec<(String, f64)>,
    pub icecream: String,
}

const WARM_UP: usize = 5;
const PARALLEL: usize = 8;

pub fn run(smoke: bool, runs: usize) -> AgentBench {
    let farm = Farm::start(1, 2);
    let dir = job_dir();
    write_small_c(dir.path());
    give_to_job_user(dir.path());
    let distccd = Distccd::start(2);
    let icecream = Icecream::start(2);
    let mexec = |agent: &'static str, args: &'static [&'static str], out: &'static str| {
        let (farm, dir) = (&farm, dir.path());
        Box::new(move |i: usize| {
            let mut c = farm.mexec(dir, args);
            c.env("MEXEC_AGENT", agent);
            if !out.is_empty() {
                c.arg(format!("{out}{}.o", i % 4));
            }
            c
        }) as Make<'_>
    };
    let true_cmd = measure(
        &farm,
        runs,
        vec![
            ("local", Box::new(|_| Command::new("true"))),
            ("mexec via agent", mexec("1", &["--", "true"], "")),
            (
                "mexec direct (MEXEC_AGENT=0)",
                mexec("0", &["--", "true"], ""),
            ),
        ],
    );
    const COMPILE: &[&str] = &["gcc", "-O2", "-c", "small.c", "-o"];
    let dir_path = dir.path();
    let mut variants: Vec<(&str, Make<'_>)> = vec![
        (
            "local",
            Box::new(move |i: usize| {
                let mut c = Command::new("gcc");
                c.args(&COMPILE[1..])
                    .arg(format!("l{}.o", i % 4))
                    .current_dir(dir_path);
                c
            }),
        ),
        ("mexec via agent", mexec("1", COMPILE, "a")),
        ("mexec direct (MEXEC_AGENT=0)", mexec("0", COMPILE, "m")),
    ];
    variants.extend(peer_compiles(
        distccd.as_ref(),
        icecream.as_ref().ok(),
        dir_path,
        COMPILE,
    ));
    let compile = measure(&farm, runs, variants);
    let jobs = if smoke { 40 } else { 1000 };
    let parallel = |name: &str, make: &dyn Fn() -> Command| {
        let started = Instant::now();
        let outputs = run_pool((0..jobs).map(|_| make()).collect(), PARALLEL);
        assert!(outputs.iter().all(|o| o.status.success()), "{name} failed");
        (
            name.to_owned(),
            jobs as f64 / started.elapsed().as_secs_f64(),
        )
    };
    let parallel_true_per_s = vec![
        parallel("local", &|| Command::new("true")),
        parallel("mexec via agent", &|| mexec("1", &["--", "true"], "")(0)),
        parallel("mexec direct (MEXEC_AGENT=0)", &|| {
            mexec("0", &["--", "true"], "")(0)
        }),
    ];
    AgentBench {
        true_cmd,
        compile,
        parallel_true_per_s,
        icecream: match &icecream {
            Ok(farm) => format!(
                "{} compiles ran on icecream's remote daemon",
                farm.remote_jobs()
            ),
            Err(why) => format!("not measured: {why}"),
        },
    }
}

/// CPU seconds so far: this process's waited-for children, the agent,
/// the executor.
fn cpu_now(farm: &Farm) -> [f64; 3] {
    // SAFETY: getrusage writes only the struct it is given.
    let children = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        secs(usage.ru_utime) + secs(usage.ru_stime)
    };
    let agent = agent_pid(farm).map_or(0.0, |pid| cpu_seconds(&pid.to_string()));
    let executor = cpu_seconds(&farm.executors[0].pid().to_string());
    [children, agent, executor]
}

/// The farm's agent, from its lock file.
fn agent_pid(farm: &Farm) -> Option<u32> {
    std::fs::read_dir(farm.state_dir.path())
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".lock"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok())
        .next()
}

/// Runs each variant `runs` times, round-robin after a warm-up, and
/// charges the CPU used during each run to its variant.
fn measure(farm: &Farm, runs: usize, variants: Vec<(&str, Make<'_>)>) -> Vec<Row> {
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); variants.len()];
    let mut cpu = vec![[0.0f64; 3]; variants.len()];
    for round in 0..runs + WARM_UP {
        for (v, (name, make)) in variants.iter().enumerate() {
            let mut command = make(round);
            command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let before = cpu_now(farm);
            let started = Instant::now();
            let status = command.status().expect("run a variant");
            let took = started.elapsed();
            assert!(status.success(), "{name} failed");
            if round >= WARM_UP {
                let after = cpu_now(farm);
                samples[v].push(took);
                for k in 0..3 {
                    cpu[v][k] += after[k] - before[k];
                }
            }
        }
    }
    let local = Timing::of(&samples[0]).median_ms;
    let per_job_ms = |total: f64| total * 1000.0 / runs as f64;
    variants
        .iter()
        .zip(samples.iter().zip(cpu))
        .map(|((name, _), (s, cpu))| {
            let timing = Timing::of(s);
            Row {
                name: name.to_string(),
                added_ms: timing.median_ms - local,
                timing,
                client_cpu_ms: per_job_ms(cpu[0]),
                agent_cpu_ms: per_job_ms(cpu[1]),
                executor_cpu_ms: per_job_ms(cpu[2]),
            }
        })
        .collect()
}
