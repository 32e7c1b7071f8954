//! The build host's agent: jobs go through it, a build survives it being
//! killed, a killed `mexec` still takes its remote job with it, and many
//! `mexec` processes at once are spread by slots with one queue on the
//! build host, so no job is sent to a node that has no free slot.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mexec_testkit::{job_dir, pid_alive, wait_until, Executor, Farm};

/// The job log's entries.
fn entries(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// The pid of the farm's agent, from its lock file.
fn agent_pid(farm: &Farm) -> Option<u32> {
    std::fs::read_dir(farm.state_dir.path())
        .ok()?
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".lock"))
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .filter_map(|text| text.trim().parse().ok())
        .find(|pid| pid_alive(*pid))
}

#[test]
fn jobs_go_through_the_agent_and_mexec_agent_0_goes_direct() {
    let farm = Farm::start(1, 2);
    let dir = job_dir();
    let log = dir.path().join("jobs.jsonl");
    for agent in ["1", "0"] {
        let output = farm
            .mexec(dir.path(), &["sh", "-c", "echo out; echo err >&2; exit 7"])
            .env("MEXEC_JOBLOG", &log)
            .env("MEXEC_AGENT", agent)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(7));
        assert_eq!(output.stdout, b"out\n");
        assert_eq!(output.stderr, b"err\n");
    }
    let routes: Vec<_> = entries(&log).iter().map(|e| e["route"].clone()).collect();
    assert_eq!(routes, ["agent", "MEXEC_AGENT=0"], "{routes:?}");
    assert!(agent_pid(&farm).is_some(), "no agent is running");
}

/// The agent makes each job from its `mexec`'s command line, variables
/// and directory, never its own: one agent, started by the first job, runs
/// the next ones with their own settings.
#[test]
fn one_agent_makes_each_job_from_its_own_mexec_environment_and_directory() {
    let farm = Farm::start(1, 2);
    let first = job_dir();
    let status = farm.mexec(first.path(), &["true"]).status().unwrap();
    assert!(status.success());
    let agent = agent_pid(&farm).expect("the first job started an agent");
    // A relative job log is the job's directory's, and a variable the
    // agent never had reaches the job.
    let second = job_dir();
    let output = farm
        .mexec(second.path(), &["sh", "-c", "echo $ONLY_HERE; pwd"])
        .env("MEXEC_JOBLOG", "jobs.jsonl")
        .env("ONLY_HERE", "from the second mexec")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        stdout,
        format!("from the second mexec\n{}\n", second.path().display())
    );
    let routes: Vec<_> = entries(&second.path().join("jobs.jsonl"))
        .iter()
        .map(|e| e["route"].clone())
        .collect();
    assert_eq!(routes, ["agent"]);
    // With options on its command line (parsed by clap in the agent),
    // the job still gets MEXEC_TIMEOUT=1 from its own environment.
    let started = Instant::now();
    let output = farm
        .mexec(second.path(), &["--retry", "--", "sleep", "5"])
        .env("MEXEC_TIMEOUT", "1")
        .output()
        .unwrap();
    assert!(!output.status.success(), "{output:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the timeout was not the job's"
    );
    // A bad variable of one job is that job's error, said as the whole
    // client says it; the agent goes on.
    let output = farm
        .mexec(second.path(), &["true"])
        .env("MEXEC_REQUIRE", "mem_mib>=lots")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(255), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("MEXEC_REQUIRE"),
        "{output:?}"
    );
    assert_eq!(
        agent_pid(&farm),
        Some(agent),
        "the same agent ran every job"
    );
}

/// `mexec` without `mexec-client` beside it cannot run anything: it says
/// which file is missing, whatever the agent setting.
#[test]
fn a_front_without_its_whole_client_says_which_file_is_missing() {
    let lonely = tempfile::tempdir().unwrap();
    let front = lonely.path().join("mexec");
    std::fs::copy(mexec_testkit::bin("mexec"), &front).unwrap();
    let dir = job_dir();
    for agent in ["1", "0"] {
        let output = Command::new(&front)
            .current_dir(dir.path())
            .env("MEXEC_AGENT", agent)
            .env("MEXEC_STATE_DIR", dir.path())
            .env("MEXEC_NODES", "127.0.0.1:1")
            .args(["--", "true"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(255), "{stderr}");
        let missing = lonely.path().join("mexec-client");
        assert!(
            stderr.contains(&format!(
                "cannot run the whole client {}",
                missing.display()
            )),
            "{stderr}"
        );
    }
}

/// An agent that stops answering in the middle of a job (here stopped
/// with SIGSTOP) is taken for hung once it has been silent for longer
/// than allowed: its `mexec` kills it, which ends the job on the node, and
/// runs the job again directly.
#[test]
fn an_agent_silent_mid_job_is_killed_and_the_job_runs_again() {
    let farm = Farm::start(1, 2);
    let dir = job_dir();
    assert!(farm
        .mexec(dir.path(), &["true"])
        .status()
        .unwrap()
        .success());
    let agent = agent_pid(&farm).expect("an agent");
    let log = dir.path().join("jobs.jsonl");
    let started = Instant::now();
    let child = farm
        .mexec(
            dir.path(),
            &["--retry", "--", "sh", "-c", "sleep 1; echo done"],
        )
        .env("MEXEC_AGENT_SILENCE_SECS", "2")
        .env("MEXEC_JOBLOG", &log)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(agent as i32, libc::SIGSTOP) };
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        output.stdout, b"done\n",
        "the job ran once to the end: {stderr}"
    );
    assert!(
        stderr.contains("said nothing for 2s; killed it"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(wait_until(Duration::from_secs(5), || !pid_alive(agent)));
    let routes: Vec<_> = entries(&log).iter().map(|e| e["route"].clone()).collect();
    assert_eq!(routes, ["the agent was lost during the job; ran it again"]);
}

#[test]
fn a_build_survives_its_agent_killed_with_sigkill() {
    let farm = Farm::start(2, 4);
    let dir = job_dir();
    let files = 24;
    let mut makefile = String::from("all: prog\n");
    let objects: Vec<String> = (0..files).map(|i| format!("f{i}.o")).collect();
    for i in 0..files {
        std::fs::write(
            dir.path().join(format!("f{i}.c")),
            format!("int f{i}(void) {{ return {i}; }}\n"),
        )
        .unwrap();
    }
    let calls: Vec<String> = (0..files).map(|i| format!("f{i}()")).collect();
    let decls: String = (0..files).map(|i| format!("int f{i}(void);\n")).collect();
    std::fs::write(
        dir.path().join("main.c"),
        format!(
            "{decls}int main(void) {{ return ({}) == {} ? 0 : 1; }}\n",
            calls.join(" + "),
            (0..files).sum::<usize>()
        ),
    )
    .unwrap();
    makefile.push_str(&format!(
        "prog: main.o {}\n\t$(CC) -o $@ $^\n%.o: %.c\n\t$(CC) -c $< -o $@\n",
        objects.join(" ")
    ));
    std::fs::write(dir.path().join("Makefile"), makefile).unwrap();
    // A compiler that takes a while, so that the agent dies mid-build; its
    // name says "compiler", so its jobs may run again.
    let slow = dir.path().join("slow-gcc");
    std::fs::write(&slow, "#!/bin/sh\nsleep 0.3\nexec cc \"$@\"\n").unwrap();
    std::fs::set_permissions(&slow, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    mexec_testkit::give_to_job_user(dir.path());
    let log = dir.path().join("jobs.jsonl");
    let mut make = Command::new("make");
    farm.aim(&mut make, dir.path());
    let make = make
        .args(["-j8", "CC=mexec"])
        .env("PATH", path_with_mexec())
        .env("MEXEC_CC", &slow)
        .env("MEXEC_JOBLOG", &log)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut agent = None;
    assert!(wait_until(Duration::from_secs(20), || {
        agent = agent_pid(&farm);
        agent.is_some()
    }));
    // Let some jobs start through it.
    std::thread::sleep(Duration::from_millis(400));
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(agent.unwrap() as i32, libc::SIGKILL) };
    let output = make.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "make failed:\n{stderr}");
    let status = Command::new(dir.path().join("prog")).status().unwrap();
    assert!(status.success());
    let log = entries(&log);
    let rerun = log
        .iter()
        .filter(|e| e["route"] == "the agent was lost during the job; ran it again")
        .count();
    assert!(rerun > 0, "no job was under the killed agent: {log:?}");
    // One entry per job (the compiles, main.o, the link): a rerun job's
    // entry is its rerun's.
    assert_eq!(log.len(), files + 2, "{log:?}");
}

/// PATH with the directory of the `mexec` under test first.
fn path_with_mexec() -> std::ffi::OsString {
    let bin = mexec_testkit::bin("mexec");
    let mut dirs = vec![bin.parent().unwrap().to_owned()];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).unwrap()
}

#[test]
fn a_sigkilled_mexec_takes_its_remote_job_with_it_through_the_agent() {
    let farm = Farm::start(1, 2);
    let dir = job_dir();
    let log = dir.path().join("jobs.jsonl");
    let mut command = farm.mexec(dir.path(), &["-n"]);
    command.env("MEXEC_JOBLOG", &log);
    // The agent is there before the job, and the job goes through it.
    assert!(farm
        .mexec(dir.path(), &["true"])
        .env("MEXEC_JOBLOG", &log)
        .status()
        .unwrap()
        .success());
    assert_eq!(entries(&log)[0]["route"], "agent");
    let agent = agent_pid(&farm).expect("an agent");
    let (mut child, sh, bg) = mexec_testkit::start_group_job(command, dir.path());
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = Instant::now();
    // At once: the closed socket resets the job's stream, not the 10 s
    // keepalive of a silent client.
    assert!(
        wait_until(Duration::from_secs(3), || !pid_alive(sh) && !pid_alive(bg)),
        "the remote job outlived its mexec"
    );
    eprintln!("remote job gone {:?} after its mexec", killed.elapsed());
    assert!(pid_alive(agent), "the agent died with the mexec");
}

/// Starts `jobs` `mexec --explain` processes at once against `farm`, each
/// running `sleep`, and returns the node each ran on. Every job must have
/// gone to exactly one node: sent to a node without a free slot, it would
/// be refused (`--max-queued 0`) and tried again, which `--explain` shows.
fn run_at_once(farm: &Farm, jobs: usize, sleep: &str) -> HashMap<String, usize> {
    let dir = job_dir();
    let log = dir.path().join("jobs.jsonl");
    let children: Vec<_> = (0..jobs)
        .map(|_| {
            farm.mexec(dir.path(), &["--explain", "--no-local", "sleep", sleep])
                .env("MEXEC_JOBLOG", &log)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        let attempts = stderr
            .lines()
            .filter(|l| l.contains("running sleep on"))
            .count();
        assert_eq!(attempts, 1, "a job placed more than once:\n{stderr}");
    }
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for entry in entries(&log) {
        assert_eq!(entry["placed"], "remote", "{entry}");
        assert_eq!(entry["route"], "agent", "{entry}");
        *per_node
            .entry(entry["node"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(per_node.values().sum::<usize>(), jobs);
    per_node
}

/// A farm of `count` executors with `slots` slots each and no queue.
fn farm_without_queues(count: usize, slots: u32) -> Farm {
    let mut farm = Farm::start(0, 1);
    for i in 1..=count {
        farm.executors.push(Executor::start(
            &format!("n{i}"),
            slots,
            &["--max-queued", "0"],
        ));
    }
    farm
}

#[test]
fn forty_at_once_on_three_nodes_wait_on_the_build_host_and_spread_by_slots() {
    let farm = farm_without_queues(3, 4);
    let per_node = run_at_once(&farm, 40, "0.3");
    for node in ["n1", "n2", "n3"] {
        let jobs = per_node.get(node).copied().unwrap_or(0);
        assert!(jobs >= 10, "{node} ran {jobs} of 40: {per_node:?}");
    }
}

#[test]
fn two_hundred_at_once_on_sixty_four_nodes_spread_by_slots() {
    let farm = farm_without_queues(64, 4);
    // Each job went to a node with a free slot (`run_at_once` checks), and
    // they spread over the farm rather than piling onto the first nodes.
    let per_node = run_at_once(&farm, 200, "0.5");
    assert!(per_node.len() >= 50, "only {} nodes used", per_node.len());
}

#[test]
fn a_hung_agent_costs_a_job_its_wait_only_and_is_replaced() {
    let farm = Farm::start(1, 2);
    let dir = job_dir();
    let log = dir.path().join("jobs.jsonl");
    let job = |args: &[&str]| {
        farm.mexec(dir.path(), args)
            .env("MEXEC_JOBLOG", &log)
            .output()
            .unwrap()
    };
    assert!(job(&["true"]).status.success());
    let hung = agent_pid(&farm).expect("an agent");
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(hung as i32, libc::SIGSTOP) };
    let started = Instant::now();
    let output = job(&["sh", "-c", "echo through"]);
    let waited = started.elapsed();
    assert!(output.status.success());
    assert_eq!(output.stdout, b"through\n");
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    eprintln!("the job behind a hung agent took {waited:?}");
    // The next job gets a fresh agent.
    assert!(job(&["true"]).status.success());
    let routes: Vec<_> = entries(&log).iter().map(|e| e["route"].clone()).collect();
    assert_eq!(
        routes,
        ["agent", "the agent did not answer in 2s", "agent"],
        "{routes:?}"
    );
    let fresh = agent_pid(&farm).expect("a fresh agent");
    assert_ne!(fresh, hung);
    // Woken, the old agent has no socket any more and leaves.
    // SAFETY: as above.
    unsafe { libc::kill(hung as i32, libc::SIGCONT) };
    assert!(wait_until(Duration::from_secs(10), || !pid_alive(hung)));
}

#[test]
fn ctrl_c_while_the_agent_holds_the_job_leaves_without_running_it() {
    let farm = farm_without_queues(1, 1);
    let dir = job_dir();
    let mut blocker = farm
        .mexec(dir.path(), &["-n", "sleep", "30"])
        .spawn()
        .unwrap();
    let blocker_started = || {
        let out = farm
            .mexec(dir.path(), &["--status", "--json"])
            .output()
            .unwrap();
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        rows["nodes"][0]["running"].as_u64() == Some(1)
    };
    assert!(wait_until(Duration::from_secs(10), blocker_started));
    let mut waiting = farm
        .mexec(dir.path(), &["-n", "sh", "-c", "touch ran"])
        .spawn()
        .unwrap();
    // Held on the build host: the node has no queue, and the job waits.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        waiting.try_wait().unwrap().is_none(),
        "the job did not wait"
    );
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(waiting.id() as i32, libc::SIGINT) };
    assert_eq!(waiting.wait().unwrap().code(), Some(130));
    blocker.kill().unwrap();
    let _ = blocker.wait();
    std::thread::sleep(Duration::from_millis(300));
    assert!(!dir.path().join("ran").exists());
}
