//! The benchmark harness still works: a smoke run of every section at tiny
//! sizes writes a report with every table. Nothing here is a timing check.

use std::process::Command;

#[test]
fn a_smoke_run_writes_every_section() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("results.json");
    let report = dir.path().join("BENCHMARKS.md");
    let output = Command::new(env!("CARGO_BIN_EXE_mexec-bench"))
        .arg("--smoke")
        .arg("--json")
        .arg(&json)
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&report).unwrap();
    for heading in [
        "## 1. Per-job overhead",
        "## 2. A real build at equal parallelism",
        "## 3. Scheduling efficiency",
        "## 4. Fairness",
        "## 5. Gatekeeper throughput",
        "## 6. Footprint",
    ] {
        assert!(text.contains(heading), "missing {heading}:\n{text}");
    }
    // icecream is either measured or the report says why not; the
    // gatekeeper's CPU per lease and the tail traces are reported.
    for line in [
        "icecream: ",
        "per gatekeeper CPU-second",
        "What the end of each run is made of",
        "Toolchain check, mexec direct: ",
        "Toolchain check, mexec via gatekeeper: ",
        "The client's fingerprint of gcc from a warm cache: ",
    ] {
        assert!(text.contains(line), "missing {line:?}:\n{text}");
    }
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(results["smoke"], true);
    assert!(results["throughput"]["placements_per_s"].as_f64().unwrap() > 0.0);
}
