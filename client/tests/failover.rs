//! Nodes that are down, refuse, or vanish mid-job: the job goes elsewhere,
//! runs locally, or fails with one clear `mexec:` line, as DESIGN.md says.

use std::process::Command;
use std::time::Duration;

use mexec_testkit::{job_dir, wait_until, Executor, Farm};

/// An address on which nothing listens (bound, then closed).
fn dead_node() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

fn joblog_nodes(path: &std::path::Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                v["node"].as_str().unwrap().to_owned(),
                v["placed"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn a_node_down_before_the_job_costs_a_retry_on_another() {
    let farm = Farm::start(1, 2);
    let dir = job_dir();
    let log = dir.path().join("jobs.jsonl");
    let nodes = format!("{},{},{}", dead_node(), dead_node(), farm.nodes());
    for _ in 0..4 {
        let output = farm
            .mexec(dir.path(), &["sh", "-c", "echo ran"])
            .env("MEXEC_NODES", &nodes)
            .env("MEXEC_JOBLOG", &log)
            .output()
            .unwrap();
        assert_eq!(output.stdout, b"ran\n");
        assert_eq!(output.stderr, b"", "a retry elsewhere is silent");
    }
    let placed = joblog_nodes(&log);
    assert_eq!(placed.len(), 4);
    assert!(
        placed
            .iter()
            .all(|(node, how)| node == "n1" && how == "remote"),
        "{placed:?}"
    );
}

#[test]
fn with_every_node_down_the_job_runs_locally_or_fails_with_no_local() {
    let farm = Farm::start(0, 1);
    let dir = job_dir();
    let nodes = format!("{},{}", dead_node(), dead_node());
    let output = farm
        .mexec(dir.path(), &["sh", "-c", "echo local; exit 42"])
        .env("MEXEC_NODES", &nodes)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(42));
    assert_eq!(output.stdout, b"local\n");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("mexec: no node could run the job ("),
        "{stderr}"
    );
    assert!(
        stderr.contains("unreachable") && stderr.contains("running sh locally"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let output = farm
        .mexec(dir.path(), &["--no-local", "sh", "-c", "echo local"])
        .env("MEXEC_NODES", &nodes)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(255));
    assert_eq!(output.stdout, b"");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("not running it locally (--no-local)"),
        "{stderr}"
    );
    // The variable reads the same with options (clap) and in the CC form
    // (read by hand): 1 and yes count as on in both.
    for (value, args) in [
        ("1", &["--explain", "--", "sh", "-c", "echo local"][..]),
        ("yes", &["sh", "-c", "echo local"][..]),
    ] {
        let output = farm
            .mexec(dir.path(), args)
            .env("MEXEC_NODES", &nodes)
            .env("MEXEC_NO_LOCAL", value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(255),
            "MEXEC_NO_LOCAL={value}: {stderr}"
        );
        assert!(stderr.contains("not running it locally"), "{stderr}");
    }
}

#[test]
fn a_working_directory_missing_on_the_node_is_named() {
    // The node runs in a mount namespace where a tmpfs hides the job's
    // tree: as on a node where the shared file system is not mounted.
    let probe = Command::new("unshare").args(["--mount", "true"]).status();
    if !probe.map(|s| s.success()).unwrap_or(false) {
        eprintln!("skipped: cannot create a mount namespace here (needs root and unshare)");
        return;
    }
    let tree = job_dir();
    let work = tree.path().join("work");
    std::fs::create_dir(&work).unwrap();
    mexec_testkit::give_to_job_user(&work);
    let mut wrapped = Command::new("unshare");
    wrapped
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs tmpfs \"$0\" && exec \"$@\"")
        .arg(tree.path())
        .arg(mexec_testkit::bin("mexecd"));
    let node = Executor::start_with(wrapped, "unmounted", 2, &[]);
    let mut farm = Farm::start(0, 1);
    farm.executors.push(node);

    let output = farm.mexec(&work, &["--no-local", "true"]).output().unwrap();
    assert_eq!(output.status.code(), Some(255));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("node unmounted: working directory"),
        "{stderr}"
    );
    assert!(stderr.contains(&work.display().to_string()), "{stderr}");
    assert!(stderr.contains("does not exist here"), "{stderr}");

    let output = farm
        .mexec(&work, &["sh", "-c", "echo fallback"])
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(output.stdout, b"fallback\n");
}

/// Starts `mexec --retry sh -c SCRIPT` on `farm`; SCRIPT appends its pid
/// to `attempts` first. Returns the client and the executor running the
/// first attempt (the job's parent).
fn start_retry_job<'f>(
    farm: &'f Farm,
    dir: &std::path::Path,
    script: &str,
) -> (std::process::Child, &'f Executor) {
    let child = farm
        .mexec(dir, &["--retry", "sh", "-c", script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let attempts = dir.join("attempts");
    // The file exists from the shell's open, before the pid is written:
    // wait for a whole line.
    let first_pid = || {
        std::fs::read_to_string(&attempts)
            .ok()
            .filter(|text| text.ends_with('\n'))
            .and_then(|text| text.trim().parse::<u32>().ok())
    };
    assert!(wait_until(Duration::from_secs(20), || first_pid().is_some()));
    let parent = parent_pid(first_pid().unwrap()).expect("job's parent");
    let node = farm
        .executors
        .iter()
        .find(|e| e.pid() == parent)
        .expect("the job runs under one of the executors");
    (child, node)
}

#[test]
fn a_repeatable_job_whose_node_dies_is_rerun_elsewhere_with_one_output() {
    let farm = Farm::start(2, 2);
    let dir = job_dir();
    let script = "echo attempt; echo $$ >> attempts; sleep 3; echo done";
    // The executor is the job's parent: kill that node hard.
    let (child, victim) = start_retry_job(&farm, dir.path(), script);
    victim.signal(libc::SIGKILL);
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The first attempt's output was held back and dropped.
    assert_eq!(output.stdout, b"attempt\ndone\n");
    let runs = std::fs::read_to_string(dir.path().join("attempts")).unwrap();
    assert_eq!(runs.lines().count(), 2, "{runs}");
}

#[test]
fn a_frozen_node_is_given_up_within_the_keepalive_bound() {
    // A stopped process keeps its sockets open and its kernel still
    // acknowledges packets: only the unanswered HTTP/2 pings tell.
    let farm = Farm::start(2, 2);
    let dir = job_dir();
    let script = "echo $$ >> attempts; sleep 2; echo done";
    let (child, frozen) = start_retry_job(&farm, dir.path(), script);
    frozen.signal(libc::SIGSTOP);
    let stopped_at = std::time::Instant::now();
    let output = child.wait_with_output().unwrap();
    let took = stopped_at.elapsed();
    frozen.signal(libc::SIGCONT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(output.stdout, b"done\n");
    // The bound is 6 s of silence, then the 2 s job again elsewhere.
    eprintln!("the frozen node was given up and the job rerun in {took:?}");
    assert!(took < Duration::from_secs(20), "took {took:?}: {stderr}");
}

#[test]
fn a_job_that_is_not_repeatable_fails_when_its_node_dies() {
    let farm = Farm::start(1, 2);
    let dir = job_dir();
    let child = farm
        .mexec(dir.path(), &["sh", "-c", "echo $$ > pid; sleep 30"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid_file = dir.path().join("pid");
    assert!(wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&pid_file)
            .map(|s| s.ends_with('\n'))
            .unwrap_or(false)
    }));
    farm.executors[0].signal(libc::SIGKILL);
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(255));
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Named n1, or by its address when the node died before its
    // confirmation of the start arrived (the job may have run either way).
    assert!(stderr.contains("was lost while running sh"), "{stderr}");
    assert!(stderr.contains("--retry"), "{stderr}");
}

fn parent_pid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn nodes_can_come_from_the_config_file() {
    let farm = Farm::start(1, 2);
    let dir = job_dir();
    let config = dir.path().join("mexec.toml");
    std::fs::write(
        &config,
        format!("nodes = [\"{}\"]\nno_local = true\n", farm.nodes()),
    )
    .unwrap();
    let output = farm
        .mexec(dir.path(), &["sh", "-c", "echo from-config"])
        .env_remove("MEXEC_NODES")
        .env("MEXEC_CONFIG", &config)
        .output()
        .unwrap();
    assert_eq!(output.stdout, b"from-config\n");

    std::fs::write(&config, "nodez = []\n").unwrap();
    let output = farm
        .mexec(dir.path(), &["true"])
        .env_remove("MEXEC_NODES")
        .env("MEXEC_CONFIG", &config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(255));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("mexec: config file") && stderr.contains("nodez"),
        "{stderr}"
    );
}

/// A node that takes a job and dies before saying it started it: accepts
/// the connection, reads the request, and closes without an answer.
fn node_that_dies_with_the_request() -> String {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = [0u8; 4096];
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            // The HTTP/2 preface, settings, headers and the job itself.
            let mut got = 0;
            while got < 200 {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
            drop(stream);
        }
    });
    address
}

#[test]
fn a_job_whose_start_is_unconfirmed_is_not_run_twice_unless_repeatable() {
    let farm = Farm::start(1, 2);
    let dir = job_dir();
    let silent = node_that_dies_with_the_request();
    // Not repeatable: it may have started, so it is neither rerun on
    // another node nor run here.
    let output = farm
        .mexec(dir.path(), &["sh", "-c", "echo ran"])
        .env("MEXEC_NODES", &silent)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(255), "{stderr}");
    assert_eq!(output.stdout, b"", "{stderr}");
    assert!(stderr.contains("may have run"), "{stderr}");

    // Repeatable: run again on a node that works.
    let output = farm
        .mexec(dir.path(), &["--retry", "sh", "-c", "echo ran"])
        .env("MEXEC_NODES", format!("{silent},{}", farm.nodes()))
        .env("MEXEC_PLACEMENT", "round-robin")
        .output()
        .unwrap();
    assert_eq!(
        output.stdout,
        b"ran\n",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success());
}
