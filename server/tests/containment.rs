//! Containment against real `mexecd` processes (as root, running jobs as
//! the job account) and real clients: nothing a job starts outlives it,
//! whether it leaves its process group and session or the daemon dies,
//! and a job cannot fork without bound.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mexec_testkit::{is_root, job_dir, processes_with_arg, skip, wait_until, Executor};

/// `mexec --no-local -- ARGS` at `node`, run in `cwd`.
fn mexec(node: &Executor, cwd: &Path, args: &[&str]) -> Command {
    let mut command = node.mexec(cwd, &["--"]);
    command.args(args);
    command
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A sleep length no other test or process uses, so that the processes a
/// job left are found by it.
fn marker(n: u32) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{}.{nanos:09}", 1000 + n)
}

/// Containment needs the privilege to put jobs apart; these tests run as
/// root, as CI does.
fn privileged() -> bool {
    if !is_root() {
        skip("containment tests need root");
        return false;
    }
    true
}

fn none_left(marker: &str) -> bool {
    wait_until(Duration::from_secs(10), || {
        processes_with_arg(marker).is_empty()
    })
}

#[test]
fn processes_that_leave_the_jobs_group_and_session_end_with_the_job() {
    if !privileged() {
        return;
    }
    let node = Executor::start("n1", 2, &[]);
    let dir = job_dir();
    let (one, two) = (marker(1), marker(2));
    let script = format!(
        "exec 3>&1 >/dev/null 2>&1; setsid sh -c 'sleep {one}' & (setsid sleep {two} &) & \
         sleep 0.3; echo started >&3"
    );
    let output = mexec(&node, dir.path(), &["sh", "-c", &script])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("started"), "{}", text(&output));
    for marker in [&one, &two] {
        assert!(
            none_left(marker),
            "a process of the job outlived it: {:?}",
            processes_with_arg(marker)
        );
    }
}

#[test]
fn processes_that_left_the_jobs_group_end_when_the_daemon_is_killed() {
    if !privileged() {
        return;
    }
    let mut node = Executor::start("n1", 2, &[]);
    let dir = job_dir();
    let (one, two) = (marker(3), marker(4));
    let script = format!("setsid sh -c 'sleep {one}' & (setsid sleep {two} &) & sleep 1000");
    let mut client = mexec(&node, dir.path(), &["sh", "-c", &script])
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || {
            !processes_with_arg(&one).is_empty() && !processes_with_arg(&two).is_empty()
        }),
        "the job did not start its processes"
    );
    node.signal(9);
    node.wait_exit(Duration::from_secs(10))
        .expect("daemon gone");
    for marker in [&one, &two] {
        assert!(
            none_left(marker),
            "a process of the job outlived the daemon: {:?}",
            processes_with_arg(marker)
        );
    }
    let _ = client.kill();
    let _ = client.wait();
}

#[test]
fn a_left_over_process_cannot_watch_the_next_job() {
    if !privileged() {
        return;
    }
    let node = Executor::start("n1", 1, &[]);
    let dir = job_dir();
    let spy = marker(5);
    // The first job leaves a process that copies every environment it can
    // read from /proc; the second, run as the same account, holds a secret
    // in its own.
    let script = format!(
        "setsid sh -c 'while :; do cat /proc/[0-9]*/environ >> spied 2>/dev/null; sleep 0.05; done' \
         {spy} >/dev/null 2>&1 & echo started"
    );
    let first = mexec(&node, dir.path(), &["sh", "-c", &script])
        .output()
        .unwrap();
    assert!(first.status.success(), "{}", text(&first));
    let second = mexec(&node, dir.path(), &["sleep", "1"])
        .env("SECRET_TOKEN", "hunter2-secret")
        .output()
        .unwrap();
    assert!(second.status.success(), "{}", text(&second));
    let spied = std::fs::read(dir.path().join("spied")).unwrap_or_default();
    let left = processes_with_arg(&spy);
    assert!(left.is_empty(), "the first job's process ran on: {left:?}");
    assert!(
        !String::from_utf8_lossy(&spied).contains("hunter2-secret"),
        "the first job read the second job's secret"
    );
}

#[test]
fn a_job_that_forks_without_bound_is_stopped_and_the_node_keeps_working() {
    if !privileged() {
        return;
    }
    let node = Executor::start("n1", 2, &[]);
    let dir = job_dir();
    let bomb = marker(6);
    let script = format!("for i in $(seq 500); do sleep {bomb} & done");
    let output = mexec(&node, dir.path(), &["sh", "-c", &script])
        .output()
        .unwrap();
    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        none_left(&bomb),
        "the job's processes outlived it: {} left",
        processes_with_arg(&bomb).len()
    );
    let next = mexec(&node, dir.path(), &["echo", "still here"])
        .output()
        .unwrap();
    assert!(next.status.success(), "{}", text(&next));
    assert!(text(&next).contains("still here"), "{}", text(&next));
}

/// The line of the /proc/self/cgroup a job printed for the v1 pids
/// hierarchy (`pids`) or for the unified one.
fn cgroup_line(printed: &str, pids: bool) -> Option<&str> {
    printed.lines().find(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers) = (parts.next(), parts.next().unwrap_or(""));
        if pids {
            controllers.split(',').any(|c| c == "pids")
        } else {
            controllers.is_empty()
        }
    })
}

/// Each way of putting a job's first process into its cgroup: on cgroup v1
/// (a spawner thread that waits in the fresh cgroup), and on the unified
/// hierarchy (clone3 into it), which `MEXEC_CGROUP=unified` picks on a
/// host that has both. The job is in its own `job-N` cgroup from its first
/// instruction, and what it leaves behind ends with it.
#[test]
fn jobs_start_inside_their_own_cgroup_in_either_hierarchy() {
    if !privileged() {
        return;
    }
    let has_unified = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(" - cgroup2 ");
    let has_pids_v1 = std::fs::read_to_string("/proc/self/cgroup")
        .unwrap()
        .lines()
        .any(|l| {
            l.split(':')
                .nth(1)
                .is_some_and(|c| c.split(',').any(|c| c == "pids"))
        });
    for (hierarchy, pids) in [("v1", true), ("unified", false)] {
        if (pids && !has_pids_v1) || (!pids && !has_unified) {
            eprintln!("no {hierarchy} cgroup hierarchy here: that way is not tried");
            continue;
        }
        let mut command = Command::new(mexec_testkit::bin("mexecd"));
        command.env("MEXEC_CGROUP", hierarchy);
        let node = Executor::start_with(command, "n1", 2, &[]);
        let dir = job_dir();
        let left = marker(7);
        let script =
            format!("cat /proc/self/cgroup; exec >/dev/null 2>&1; setsid sleep {left} & sleep 0.2");
        let mut seen = Vec::new();
        for _ in 0..3 {
            let output = mexec(&node, dir.path(), &["sh", "-c", &script])
                .output()
                .unwrap();
            assert!(output.status.success(), "{}", text(&output));
            let printed = text(&output);
            let line = cgroup_line(&printed, pids)
                .unwrap_or_else(|| panic!("{hierarchy}: no cgroup line in {printed}"))
                .to_owned();
            assert!(
                line.contains("/mexecd-") && line.rsplit('/').next().unwrap().starts_with("job-"),
                "{hierarchy}: the job ran outside a job cgroup: {line}"
            );
            seen.push(line);
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 3, "{hierarchy}: jobs shared a cgroup: {seen:?}");
        assert!(
            none_left(&left),
            "{hierarchy}: a process of the job outlived it: {:?}",
            processes_with_arg(&left)
        );
        println!("{hierarchy}: each job in a cgroup of its own: {seen:?}");
    }
}
