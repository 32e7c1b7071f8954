//! A node on which the shared tree is not mounted (a real `mexecd` in a
//! mount namespace where a tmpfs hides the job's tree) refuses the first
//! job, is marked so in `mexec --status` (direct and in the gatekeeper's
//! view), gets no more jobs under that tree from clients or the
//! gatekeeper, and is used again once the tree is there.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mexec_testkit::{bin, job_dir, wait_until, Executor, Farm, GatedFarm};

/// `mexecd` in a mount namespace of its own where `hidden` is an empty
/// tmpfs; `None` where no mount namespace can be made.
fn node_without(hidden: &Path, name: &str, extra: &[&str]) -> Option<Executor> {
    let probe = Command::new("unshare").args(["--mount", "true"]).status();
    if !probe.map(|s| s.success()).unwrap_or(false) {
        mexec_testkit::skip("cannot create a mount namespace here (needs root and unshare)");
        return None;
    }
    let mut wrapped = Command::new("unshare");
    wrapped
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs tmpfs \"$0\" && exec \"$@\"")
        .arg(hidden)
        .arg(bin("mexecd"));
    Some(Executor::start_with(wrapped, name, 2, extra))
}

/// Makes `dir` inside the node's mount namespace: the tree "is mounted".
fn mount_there(node: &Executor, dir: &Path) {
    let status = Command::new("nsenter")
        .args([
            "--mount",
            "--target",
            &node.pid().to_string(),
            "mkdir",
            "-p",
        ])
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success());
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn work_tree() -> (tempfile::TempDir, std::path::PathBuf) {
    let tree = job_dir();
    let work = tree.path().join("work");
    std::fs::create_dir(&work).unwrap();
    mexec_testkit::give_to_job_user(&work);
    (tree, work)
}

#[test]
fn a_node_without_the_tree_is_skipped_after_its_first_refusal() {
    let (tree, work) = work_tree();
    let Some(hidden) = node_without(tree.path(), "bare", &[]) else {
        return;
    };
    let mut farm = Farm::start(1, 2);
    let bare = hidden.node();
    farm.executors.push(hidden);

    // The first job sent there is refused, naming the cause.
    let output = farm.executors[1]
        .mexec(&work, &["true"])
        .env("MEXEC_STATE_DIR", farm.state_dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(255));
    assert!(
        stderr(&output).contains("does not exist here"),
        "{}",
        stderr(&output)
    );

    // The status says so.
    let status = farm.mexec(&work, &["--status"]).output().unwrap();
    let table = String::from_utf8_lossy(&status.stdout);
    let line = table.lines().find(|l| l.starts_with(&bare)).unwrap();
    assert!(
        line.contains(&format!("not mounted: {}", work.display())),
        "{table}"
    );
    let json = farm.mexec(&work, &["--status", "--json"]).output().unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let row = rows["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["address"] == bare.as_str())
        .unwrap();
    assert_eq!(row["unmounted"], work.display().to_string());

    // Every later job goes to the node that has the tree.
    for _ in 0..8 {
        let output = farm.mexec(&work, &["--explain", "true"]).output().unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        assert!(!stderr(&output).contains(&bare), "{}", stderr(&output));
    }

    // Once the tree is there, the mark clears at the node's next report.
    mount_there(&farm.executors[1], &work);
    assert!(wait_until(Duration::from_secs(10), || {
        let status = farm.mexec(&work, &["--status"]).output().unwrap();
        let table = String::from_utf8_lossy(&status.stdout).into_owned();
        !table.contains("not mounted")
    }));
}

#[test]
fn the_gatekeeper_shows_a_node_without_the_tree_and_leases_no_job_there() {
    let (tree, work) = work_tree();
    let mut farm = GatedFarm::start(&[2], &[]);
    let gk = farm.gatekeeper.address();
    let Some(hidden) = node_without(
        tree.path(),
        "bare",
        &["--gatekeeper", &gk, "--direct-jobs", "allow"],
    ) else {
        return;
    };
    farm.executors.push(hidden);
    assert!(wait_until(Duration::from_secs(10), || farm.members().len() == 2));

    // Its first refusal (a job sent to it directly) marks it.
    let output = farm.executors[1].mexec(&work, &["true"]).output().unwrap();
    assert_eq!(output.status.code(), Some(255), "{}", stderr(&output));
    let marked = || {
        farm.status()["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["node"] == "bare" && n["unmounted"] == work.display().to_string())
    };
    assert!(
        wait_until(Duration::from_secs(10), marked),
        "{:#}",
        farm.status()
    );
    let table = farm.mexec(&work, &["--status"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&table.stdout).contains("not mounted"),
        "{}",
        String::from_utf8_lossy(&table.stdout)
    );

    for _ in 0..8 {
        let output = farm
            .mexec(&work, &["--no-local", "--explain", "true"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        assert!(!stderr(&output).contains("on bare"), "{}", stderr(&output));
    }
}
