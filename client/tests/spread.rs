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
