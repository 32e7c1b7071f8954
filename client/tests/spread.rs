//! Many `mexec` processes started at once (as `make -j40` does) spread over
//! the nodes instead of all choosing the same one.

use std::collections::HashMap;
use std::process::Stdio;

use mexec_testkit::{job_dir, Farm};

#[test]
fn forty_concurrent_clients_use_all_three_nodes() {
    let farm = Farm::start(3, 4);
    let dir = job_dir();
    let log = dir.path().join("jobs.jsonl");
    let children: Vec<_> = (0..40)
        .map(|_| {
            farm.mexec(dir.path(), &["sleep", "0.3"])
                .env("MEXEC_JOBLOG", &log)
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for line in std::fs::read_to_string(&log).unwrap().lines() {
        let entry: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(entry["placed"], "remote", "{line}");
        *per_node
            .entry(entry["node"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(per_node.values().sum::<usize>(), 40);
    for node in ["n1", "n2", "n3"] {
        let jobs = per_node.get(node).copied().unwrap_or(0);
        assert!(jobs >= 10, "{node} ran {jobs} of 40 jobs: {per_node:?}");
    }
}

#[test]
fn a_full_farm_makes_jobs_wait_instead_of_running_locally() {
    // One slot and one queue place for eight jobs: most are refused at
    // first and must back off and come again, never run here.
    let mut farm = Farm::start(0, 1);
    farm.executors.push(mexec_testkit::Executor::start(
        "tiny",
        1,
        &["--max-queued", "1"],
    ));
    let dir = job_dir();
    let log = dir.path().join("jobs.jsonl");
    let children: Vec<_> = (0..8)
        .map(|_| {
            farm.mexec(dir.path(), &["--no-local", "sleep", "0.2"])
                .env("MEXEC_JOBLOG", &log)
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(output.stderr, b"");
    }
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(log.lines().count(), 8);
    assert!(
        log.lines()
            .all(|l| l.contains("\"node\":\"tiny\"") && l.contains("\"placed\":\"remote\"")),
        "{log}"
    );
}

#[test]
fn status_lists_reachable_and_unreachable_nodes() {
    let farm = Farm::start(2, 3);
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let nodes = format!("{},{dead}", farm.nodes());
    let dir = job_dir();
    let output = farm
        .mexec(dir.path(), &["--status"])
        .env("MEXEC_NODES", &nodes)
        .output()
        .unwrap();
    assert!(output.status.success());
    let table = String::from_utf8_lossy(&output.stdout);
    // The node table: a heading and a line a node, then (after a blank
    // line) the toolchains and properties section.
    let node_table = table.lines().take_while(|l| !l.is_empty()).count();
    assert_eq!(node_table, 4, "{table}");
    assert!(table.lines().next().unwrap().contains("SLOTS"));
    assert!(table.contains(" n1 ") && table.contains(" n2 "), "{table}");
    let dead_line = table
        .lines()
        .find(|l| l.starts_with(&dead.to_string()))
        .unwrap();
    assert!(dead_line.contains("unreachable"), "{dead_line}");

    let output = farm
        .mexec(dir.path(), &["--status", "--json"])
        .env("MEXEC_NODES", &nodes)
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let rows = status["nodes"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["slots"], 3);
    assert_eq!(rows[0]["reachable"], true);
    assert_eq!(rows[2]["reachable"], false);
}
