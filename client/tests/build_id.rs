//! How builds are told apart for fair sharing, without `MEXEC_BUILD_ID`:
//! the jobs of one real `ninja` run (which starts each command in a
//! process group of its own) share one build id, another run gets
//! another, and make's jobs share make's process group. Read from the
//! real executor's record of each job.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use mexec_testkit::{bin, job_dir, Executor};

/// The build ids of the jobs `node` finished, one per job.
fn build_ids(node: &Executor) -> Vec<String> {
    node.log_text()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["message"] == "job finished")
        .map(|line| line["build_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Runs `tool` (`ninja` or `make`) with `-j4` in `dir`, whose jobs are
/// `mexec` at `node`.
fn build(tool: &str, dir: &Path, node: &Executor) {
    let output = Command::new(tool)
        .arg("-j4")
        .current_dir(dir)
        .env("MEXEC", bin("mexec"))
        .env("MEXEC_NODES", node.node())
        .env("MEXEC_STATE_DIR", dir)
        .env_remove("MEXEC_GATEKEEPER")
        .env_remove("MEXEC_BUILD_ID")
        .output()
        .unwrap();
    assert!(output.status.success(), "{tool}: {output:?}");
}

#[test]
fn a_ninja_build_is_one_build_without_mexec_build_id() {
    let node = Executor::start("n1", 4, &["--log-format", "json"]);
    let dir = job_dir();
    let mut ninja = String::from("rule remote\n  command = $$MEXEC --no-local -- touch $out\n");
    for i in 0..4 {
        ninja.push_str(&format!("build out{i}: remote\n"));
    }
    std::fs::write(dir.path().join("build.ninja"), &ninja).unwrap();
    mexec_testkit::give_to_job_user(dir.path());
    build("ninja", dir.path(), &node);
    let first: BTreeSet<String> = build_ids(&node).into_iter().collect();
    assert_eq!(first.len(), 1, "one ninja run, one build: {first:?}");
    let id = first.iter().next().unwrap();
    assert!(id.contains(":ninja-"), "{id}");

    // The next run is another build.
    for i in 0..4 {
        std::fs::remove_file(dir.path().join(format!("out{i}"))).unwrap();
    }
    build("ninja", dir.path(), &node);
    let ids = build_ids(&node);
    let all: BTreeSet<&String> = ids.iter().collect();
    assert_eq!((ids.len(), all.len()), (8, 2), "{ids:?}");

    // make's jobs share make's process group, as before.
    let mut makefile = String::from("all:");
    for i in 0..4 {
        makefile.push_str(&format!(" m{i}"));
    }
    makefile.push('\n');
    for i in 0..4 {
        makefile.push_str(&format!("m{i}:\n\t$(MEXEC) --no-local -- touch $@\n"));
    }
    std::fs::write(dir.path().join("Makefile"), makefile).unwrap();
    build("make", dir.path(), &node);
    let ids = build_ids(&node);
    let made: BTreeSet<&String> = ids[8..].iter().collect();
    assert_eq!(made.len(), 1, "{ids:?}");
    assert!(!made.iter().next().unwrap().contains("ninja"), "{ids:?}");
}
