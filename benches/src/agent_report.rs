//! The agent section of BENCHMARKS.md: every row side by side, and the
//! targets of the agent's issue beside what was measured.

use std::fmt::Write;

use crate::agent::{AgentBench, Row};

fn mark(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**missed**"
    }
}

fn rows_table(md: &mut String, rows: &[Row]) {
    let _ = writeln!(
        md,
        "| variant | median | p99 | added | client CPU/job | agent CPU/job | executor CPU/job |\n\
         |---|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {:.2} ms | {:.2} ms | {:+.2} ms | {:.3} ms | {:.3} ms | {:.3} ms |",
            r.name,
            r.timing.median_ms,
            r.timing.p99_ms,
            r.added_ms,
            r.client_cpu_ms,
            r.agent_cpu_ms,
            r.executor_cpu_ms
        );
    }
    md.push('\n');
}

fn find<'a>(rows: &'a [Row], name: &str) -> Option<&'a Row> {
    rows.iter().find(|r| r.name == name)
}

/// Appends the section.
pub fn section(md: &mut String, a: &AgentBench) {
    let _ = writeln!(md, "## The build-host agent\n");
    let _ = writeln!(
        md,
        "`true` and a small compile, locally, through the agent, directly \
         (`MEXEC_AGENT=0`) and (the compile) through distcc and icecream, interleaved. \
         CPU per job: the client process and what it waited for (wait4's rusage), the \
         agent and `mexecd` (utime + stime from /proc, the job itself not included). \
         icecream: {}.\n",
        a.icecream
    );
    let _ = writeln!(md, "`true`:\n");
    rows_table(md, &a.true_cmd);
    let _ = writeln!(md, "Small compile:\n");
    rows_table(md, &a.compile);
    let _ = writeln!(md, "`true` jobs per second, {} at once:\n", 8);
    let local_rate = a.parallel_true_per_s.first().map_or(1.0, |(_, r)| *r);
    for (name, rate) in &a.parallel_true_per_s {
        let _ = writeln!(
            md,
            "- {name}: {rate:.0}/s ({:.0} % of local)",
            100.0 * rate / local_rate
        );
    }
    md.push('\n');
    targets(md, a, local_rate);
}

fn targets(md: &mut String, a: &AgentBench, local_rate: f64) {
    let (Some(agent), Some(local)) = (
        find(&a.true_cmd, "mexec via agent"),
        find(&a.true_cmd, "local"),
    ) else {
        return;
    };
    let host = agent.client_cpu_ms + agent.agent_cpu_ms;
    let whole = host + agent.executor_cpu_ms - local.client_cpu_ms;
    let _ = writeln!(
        md,
        "| target (through the agent) | measured | |\n|---|---:|---|"
    );
    let mut row = |what: &str, value: String, met: bool| {
        let _ = writeln!(md, "| {what} | {value} | {} |", mark(met));
    };
    row(
        "`mexec -- true` adds ≤ 1.0 ms",
        format!("{:+.2} ms", agent.added_ms),
        agent.added_ms <= 1.0,
    );
    row(
        "build-host CPU per job (mexec + agent) ≤ 0.5 ms",
        format!("{host:.3} ms"),
        host <= 0.5,
    );
    row(
        "whole-machine CPU per `true` job beyond local ≤ 0.9 ms",
        format!("{whole:.3} ms"),
        whole <= 0.9,
    );
    row(
        "executor CPU per job ≤ 0.4 ms",
        format!("{:.3} ms", agent.executor_cpu_ms),
        agent.executor_cpu_ms <= 0.4,
    );
    if let (Some(c), Some(l)) = (
        find(&a.compile, "mexec via agent"),
        find(&a.compile, "local"),
    ) {
        let ratio = c.timing.median_ms / l.timing.median_ms;
        row(
            "small compile, mexec / local ≤ 1.05",
            format!("{ratio:.3}"),
            ratio <= 1.05,
        );
    }
    if let Some((_, rate)) = a.parallel_true_per_s.get(1) {
        let share = rate / local_rate;
        row(
            "`true` jobs per second 8 at once ≥ 40 % of local",
            format!("{:.0} %", share * 100.0),
            share >= 0.40,
        );
    }
    let _ = writeln!(
        md,
        "\nThe other rows of the table (GMP at equal `-j`, the 64-node makespan, lease round \
         trips per gatekeeper CPU-second) are the build, scheduling and throughput sections \
         of the same run.\n"
    );
}
