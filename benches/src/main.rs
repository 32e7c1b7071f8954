//! `mexec-bench`: every comparison side by side in one run, results as
//! JSON and as BENCHMARKS.md. `benches/run.sh` is the documented way in.
//!
//! Layout:
//! - `overhead`, `build`, `sched`, `fairness`, `throughput`, `footprint`:
//!   one section each, as in the benchmark issue.
//! - `desktop`: what farm compiles on a desktop cost its owner, against a
//!   plain node, distcc and icecream.
//! - `peers`: distccd on loopback, the machine's description.
//! - `icecream`: an icecream scheduler and daemon on hosts of their own.
//! - `stats`: medians and percentiles.
//! - `tail`: what the end of a scheduling run is made of, from the job log.
//! - `report`: BENCHMARKS.md.

mod agent;
mod agent_report;
mod build;
mod desktop;
mod fairness;
mod footprint;
mod icecream;
mod overhead;
mod peers;
mod report;
mod sched;
mod stats;
mod tail;
mod throughput;

use std::path::PathBuf;

use clap::Parser;
use serde::{Deserialize, Serialize};

#[derive(Debug, Parser)]
#[command(
    name = "mexec-bench",
    about = "Benchmarks: local vs mexec vs distcc, side by side"
)]
struct Cli {
    /// Tiny sizes: checks that the harness works, measures nothing useful.
    #[arg(long)]
    smoke: bool,
    /// Sections to run (default: all): overhead, build, sched, fairness,
    /// throughput, footprint, desktop.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where to write the JSON results.
    #[arg(long, default_value = "benches/results.json")]
    json: PathBuf,
    /// Where to write the report.
    #[arg(long, default_value = "BENCHMARKS.md")]
    report: PathBuf,
    /// The overhead section also measures a farm with metrics, the
    /// dashboard and accounting on (`--metrics-listen`, `--http-listen`,
    /// `--accounting-db`), side by side with the plain one.
    #[arg(long)]
    observed: bool,
    /// Runs of each variant in the overhead section.
    #[arg(long, default_value_t = 200)]
    runs: usize,
    /// Interleaved rounds of the real build.
    #[arg(long, default_value_t = 3)]
    build_rounds: usize,
    /// A file whose text is appended to the report as notes.
    #[arg(long)]
    notes: Option<PathBuf>,
    /// Measure nothing: rewrite the report from earlier JSON results (and
    /// the current notes).
    #[arg(long)]
    from_json: Option<PathBuf>,
}

/// Everything measured.
#[derive(Debug, Serialize, Deserialize)]
pub struct Results {
    pub command: String,
    pub date: String,
    pub machine: String,
    pub smoke: bool,
    pub overhead: Option<overhead::Overhead>,
    pub build: Option<build::Build>,
    pub sched: Option<Vec<sched::SchedRun>>,
    pub fairness: Option<Vec<fairness::FairnessRun>>,
    pub throughput: Option<throughput::Throughput>,
    pub footprint: Option<footprint::Footprint>,
    pub desktop: Option<desktop::Desktop>,
    /// The build-host agent against the direct client and the peers.
    #[serde(default)]
    pub agent: Option<agent::AgentBench>,
    pub notes: String,
}

fn main() {
    let cli = Cli::parse();
    let wanted = |name: &str| cli.only.is_empty() || cli.only.iter().any(|s| s == name);
    let runs = if cli.smoke { 10 } else { cli.runs };
    let rounds = if cli.smoke { 1 } else { cli.build_rounds };
    let section = |name: &str| eprintln!("== {name}");
    let notes = cli
        .notes
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    if let Some(path) = &cli.from_json {
        let text = std::fs::read_to_string(path).expect("read the JSON results");
        let mut results: Results = serde_json::from_str(&text).expect("parse the JSON results");
        results.notes = notes;
        std::fs::write(&cli.report, report::markdown(&results)).expect("write the report");
        eprintln!("rewrote {} from {}", cli.report.display(), path.display());
        return;
    }
    let mut results = Results {
        command: std::env::var("MEXEC_BENCH_COMMAND")
            .unwrap_or_else(|_| std::env::args().collect::<Vec<_>>().join(" ")),
        date: date(),
        machine: peers::machine(),
        smoke: cli.smoke,
        overhead: None,
        build: None,
        sched: None,
        fairness: None,
        throughput: None,
        footprint: None,
        desktop: None,
        agent: None,
        notes,
    };
    if wanted("overhead") {
        section("overhead");
        results.overhead = Some(overhead::run(runs, cli.observed));
    }
    if wanted("build") {
        section("build");
        results.build = Some(build::run(cli.smoke, rounds));
    }
    if wanted("sched") {
        section("sched");
        results.sched = Some(sched::run(cli.smoke));
    }
    if wanted("fairness") {
        section("fairness");
        results.fairness = Some(fairness::run(cli.smoke));
    }
    if wanted("throughput") {
        section("throughput");
        results.throughput = Some(throughput::run(cli.smoke));
    }
    if wanted("footprint") {
        section("footprint");
        results.footprint = Some(footprint::run(cli.smoke));
    }
    if wanted("agent") {
        section("agent");
        results.agent = Some(agent::run(cli.smoke, runs));
    }
    if wanted("desktop") {
        section("desktop");
        results.desktop = Some(desktop::run(cli.smoke));
    }
    // A partial run (--only) updates its sections of the earlier results
    // and keeps the others; each section is still one side-by-side run.
    if !cli.only.is_empty() {
        if let Some(old) = std::fs::read_to_string(&cli.json)
            .ok()
            .and_then(|t| serde_json::from_str::<Results>(&t).ok())
        {
            results.command = format!("{}; then {}", old.command, results.command);
            results.date = format!("{}; {}", old.date, results.date);
            results.overhead = results.overhead.or(old.overhead);
            results.build = results.build.or(old.build);
            results.sched = results.sched.or(old.sched);
            results.fairness = results.fairness.or(old.fairness);
            results.throughput = results.throughput.or(old.throughput);
            results.footprint = results.footprint.or(old.footprint);
            results.desktop = results.desktop.or(old.desktop);
            results.agent = results.agent.or(old.agent);
        }
    }
    let json = serde_json::to_string_pretty(&results).expect("results serialize");
    if let Some(dir) = cli.json.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&cli.json, json).expect("write the JSON results");
    std::fs::write(&cli.report, report::markdown(&results)).expect("write the report");
    eprintln!("wrote {} and {}", cli.json.display(), cli.report.display());
}

fn date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
