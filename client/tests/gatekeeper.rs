//! The gatekeeper with real executors and real clients: membership, leases
//! weighted by slots, fair sharing between users, draining, restarts, the
//! bounded queue, and the fallback when the gatekeeper is down.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mexec_testkit::{bin, job_dir, run_pool, wait_until, GatedFarm as Cluster};

/// The two load tests run one at a time: each keeps both cores busy, and
/// the fairness test measures start times.
static LOAD_TEST: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn load_test() -> std::sync::MutexGuard<'static, ()> {
    LOAD_TEST.lock().unwrap_or_else(|p| p.into_inner())
}

fn joblog(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn per_node(entries: &[serde_json::Value]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for e in entries {
        *counts
            .entry(e["node"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    counts
}

#[test]
fn nodes_join_within_2s_and_dead_or_frozen_nodes_leave_within_5s() {
    let mut cluster = Cluster::start(&[2], &[]);
    let started = Instant::now();
    cluster.add("late", 2);
    assert!(wait_until(Duration::from_secs(2), || cluster
        .members()
        .contains_key("late")));
    eprintln!("joined after {:?}", started.elapsed());

    cluster.add("frozen", 2);
    assert!(wait_until(Duration::from_secs(5), || cluster
        .members()
        .len()
        == 3));

    let killed = Instant::now();
    cluster.executors[0].signal(libc::SIGKILL);
    assert!(wait_until(Duration::from_secs(5), || !cluster
        .members()
        .contains_key("n1")));
    eprintln!("killed node gone after {:?}", killed.elapsed());

    // A frozen node keeps its connection open but stops reporting.
    let frozen = Instant::now();
    cluster.executors[2].signal(libc::SIGSTOP);
    assert!(wait_until(Duration::from_secs(5), || !cluster
        .members()
        .contains_key("frozen")));
    eprintln!("frozen node gone after {:?}", frozen.elapsed());
    cluster.executors[2].signal(libc::SIGCONT);
    assert!(wait_until(Duration::from_secs(5), || cluster
        .members()
        .contains_key("frozen")));
}

#[test]
fn work_divides_by_slots_8_4_2() {
    let _alone = load_test();
    let cluster = Cluster::start(&[8, 4, 2], &[]);
    let dir = job_dir();
    let log = dir.path().join("jobs.jsonl");
    // Jobs long enough (0.25 s) that the clients keep every slot asked
    // for on a loaded machine: a slot left idle goes to whichever node
    // is emptiest, which is not a share by slots.
    let jobs = (0..560)
        .map(|_| {
            let mut c = cluster.mexec(dir.path(), &["-n", "sleep", "0.25"]);
            c.env("MEXEC_JOBLOG", &log);
            c
        })
        .collect();
    for output in run_pool(jobs, 28) {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let entries = joblog(&log);
    assert_eq!(entries.len(), 560);
    assert!(entries.iter().all(|e| e["placed"] == "remote"));
    let counts = per_node(&entries);
    eprintln!("jobs per node: {counts:?}");
    for (node, share) in [("n1", 4.0 / 7.0), ("n2", 2.0 / 7.0), ("n3", 1.0 / 7.0)] {
        let expected = 560.0 * share;
        let got = counts.get(node).copied().unwrap_or(0) as f64;
        assert!(
            (got - expected).abs() <= 0.15 * expected,
            "{node}: {got} jobs, expected {expected:.0} ± 15% ({counts:?})"
        );
    }
}

#[test]
fn three_users_share_equally_and_a_late_small_build_starts_at_once() {
    let _alone = load_test();
    let cluster = Cluster::start(&[4, 4, 4], &[]);
    let dir = job_dir();
    let log = dir.path().join("jobs.jsonl");
    let t0 = Instant::now();
    let users: Vec<_> = ["alice", "bob", "carol"]
        .iter()
        .map(|user| {
            let jobs: Vec<Command> = (0..200)
                .map(|_| {
                    let mut c = cluster.mexec(dir.path(), &["-n", "sleep", "0.1"]);
                    c.env("MEXEC_JOBLOG", &log).env("MEXEC_SUBMIT_USER", user);
                    c
                })
                .collect();
            std::thread::spawn(move || run_pool(jobs, 16))
        })
        .collect();

    // Midway, a fourth user submits ten jobs at once.
    std::thread::sleep(Duration::from_millis(2500));
    let starts = dir.path().join("dave-starts");
    let submitted = std::time::SystemTime::now();
    let dave: Vec<_> = (0..10)
        .map(|_| {
            cluster
                .mexec(
                    dir.path(),
                    &[
                        "-n",
                        "sh",
                        "-c",
                        "date +%s%N >> \"$1\"; exec sleep 0.1",
                        "sh",
                    ],
                )
                .arg(&starts)
                .env("MEXEC_SUBMIT_USER", "dave")
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in dave {
        assert!(child.wait().unwrap().success());
    }
    for user in users {
        for output in user.join().unwrap() {
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    eprintln!("all done after {:?}", t0.elapsed());

    let submitted_ns = submitted
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let latest_start = std::fs::read_to_string(&starts)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse::<u64>().unwrap())
        .max()
        .unwrap();
    let mut all: Vec<u64> = std::fs::read_to_string(&starts)
        .unwrap()
        .lines()
        .map(|l| (l.trim().parse::<u64>().unwrap() - submitted_ns) / 1_000_000)
        .collect();
    all.sort();
    eprintln!("dave start offsets ms: {all:?}");
    let waited = Duration::from_nanos(latest_start.saturating_sub(submitted_ns));
    eprintln!("dave's last job started {waited:?} after submission");
    // Counted in jobs rather than milliseconds, so a loaded machine does
    // not decide it: the three users keep 48 requests open for 12 slots,
    // so 36 of theirs are queued when dave submits. In arrival order
    // dave's last job would start after all 36; ahead of them, after at
    // most the jobs already leased plus one round of freed slots.
    let submitted_ms = submitted_ns / 1_000_000;
    let latest_start_ms = latest_start / 1_000_000;
    let overtaking = joblog(&log)
        .iter()
        .filter(|e| e["user"] != "dave")
        .filter_map(|e| {
            let finished = e["finished_unix_ms"].as_u64()?;
            // Each job sleeps 100 ms on the node, then reports back.
            let started = finished.saturating_sub(100);
            (started > submitted_ms && started < latest_start_ms).then_some(())
        })
        .count();
    eprintln!(
        "{overtaking} jobs of the others started between dave's submission and his last start"
    );
    assert!(
        overtaking <= 24,
        "{overtaking} queued jobs of other users started before dave's last one (waited {waited:?})"
    );

    let mut last: HashMap<String, u64> = HashMap::new();
    for e in joblog(&log) {
        let user = e["user"].as_str().unwrap().to_owned();
        let at = e["finished_unix_ms"].as_u64().unwrap();
        let entry = last.entry(user).or_default();
        *entry = (*entry).max(at);
    }
    let first_submit = submitted_ns / 1_000_000 - 2500;
    let spans: Vec<f64> = last.values().map(|at| (at - first_submit) as f64).collect();
    let (min, max) = spans
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), s| (lo.min(*s), hi.max(*s)));
    eprintln!(
        "last job per user after: {last:?} (spread {:.3})",
        max / min
    );
    assert_eq!(last.len(), 3);
    assert!(
        max / min <= 1.10,
        "users' last jobs finished {min} ms and {max} ms after the start"
    );
}

#[test]
fn a_draining_node_gets_nothing_new() {
    // The long job below is placed straight on n1, past the gatekeeper:
    // the nodes must allow direct jobs.
    let cluster = Cluster::start_with(&[2, 2], &[], &["--direct-jobs", "allow"]);
    let dir = job_dir();
    let log = dir.path().join("jobs.jsonl");
    // A long job, placed straight on n1, holds it while it drains.
    let long = Command::new(bin("mexec"))
        .current_dir(dir.path())
        .args(["-n", "sleep", "2"])
        .env_remove("MEXEC_GATEKEEPER")
        .env("MEXEC_NODES", cluster.executors[0].node())
        .env("MEXEC_STATE_DIR", cluster.state_dir.path())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || cluster.status()
        ["nodes"][0]["running"]
        == 1));
    cluster.executors[0].signal(libc::SIGTERM);
    assert!(wait_until(Duration::from_secs(5), || cluster
        .members()
        .get("n1")
        == Some(&true)));
    let jobs = (0..8)
        .map(|_| {
            let mut c = cluster.mexec(dir.path(), &["-n", "true"]);
            c.env("MEXEC_JOBLOG", &log);
            c
        })
        .collect();
    for output in run_pool(jobs, 8) {
        assert!(output.status.success());
    }
    assert_eq!(
        per_node(&joblog(&log)),
        HashMap::from([("n2".to_owned(), 8)])
    );
    assert!(long.wait_with_output().unwrap().status.success());
}

#[test]
fn jobs_survive_a_gatekeeper_restart_and_new_ones_are_placed_after_it() {
    let mut cluster = Cluster::start(&[2, 2], &[]);
    let dir = job_dir();
    let log = dir.path().join("jobs.jsonl");
    let running: Vec<_> = (0..3)
        .map(|_| {
            cluster
                .mexec(dir.path(), &["-n", "sh", "-c", "sleep 1.5; echo finished"])
                .env("MEXEC_JOBLOG", &log)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    assert!(wait_until(Duration::from_secs(10), || cluster
        .leased_jobs()
        == Some(3)));
    cluster.gatekeeper.restart();
    for child in running {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success());
        assert_eq!(output.stdout, b"finished\n");
    }
    assert!(wait_until(Duration::from_secs(5), || cluster
        .members()
        .len()
        == 2));
    let output = cluster
        .mexec(dir.path(), &["-n", "sh", "-c", "echo after"])
        .env("MEXEC_JOBLOG", &log)
        .output()
        .unwrap();
    assert_eq!(output.stdout, b"after\n");
    assert_eq!(
        output.stderr, b"",
        "placed through the new gatekeeper, silently"
    );
    let entries = joblog(&log);
    assert_eq!(entries.len(), 4);
    assert!(
        entries.iter().all(|e| e["placed"] == "remote"),
        "{entries:?}"
    );
}

#[test]
fn a_killed_node_is_dropped_and_its_work_runs_elsewhere() {
    let cluster = Cluster::start(&[1, 1], &[]);
    let dir = job_dir();
    let log = dir.path().join("jobs.jsonl");
    let children: Vec<_> = (0..6)
        .map(|_| {
            cluster
                .mexec(dir.path(), &["-n", "--retry", "sleep", "0.5"])
                .env("MEXEC_JOBLOG", &log)
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    assert!(wait_until(Duration::from_secs(10), || cluster.status()
        ["queued"]
        .as_u64()
        >= Some(2)));
    cluster.executors[0].signal(libc::SIGKILL);
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let entries = joblog(&log);
    assert_eq!(entries.len(), 6);
    let counts = per_node(&entries);
    assert!(counts.get("n2").copied().unwrap_or(0) >= 5, "{counts:?}");
    assert!(!cluster.members().contains_key("n1"));
}

#[test]
fn a_full_queue_is_refused_with_a_message() {
    let cluster = Cluster::start(&[1], &["--max-queued", "1"]);
    let dir = job_dir();
    let holder = cluster
        .mexec(dir.path(), &["-n", "sleep", "3"])
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || cluster
        .leased_jobs()
        == Some(1)));
    let waiter = cluster.mexec(dir.path(), &["-n", "true"]).spawn().unwrap();
    assert!(wait_until(Duration::from_secs(10), || cluster.status()
        ["queued"]
        == 1));
    // A raw lease request now meets a full queue.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = rt.block_on(async {
        use mexec_proto::v1::gatekeeper_client::GatekeeperClient;
        use mexec_proto::v1::{acquire_request, AcquireRequest, LeaseRequest};
        let mut client = GatekeeperClient::connect(format!("http://{}", cluster.gatekeeper.addr))
            .await
            .unwrap();
        let request = AcquireRequest {
            msg: Some(acquire_request::Msg::Request(LeaseRequest {
                user: "raw".into(),
                ..LeaseRequest::default()
            })),
        };
        client
            .acquire(tokio_stream::iter(vec![request]))
            .await
            .map(|_| ())
            .unwrap_err()
    });
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(
        status.message().contains("queue is full"),
        "{}",
        status.message()
    );
    for child in [holder, waiter] {
        assert!(child.wait_with_output().unwrap().status.success());
    }
}

#[test]
fn with_the_gatekeeper_down_clients_place_over_the_last_known_nodes() {
    let mut cluster = Cluster::start(&[2], &[]);
    let dir = job_dir();
    // One job through the gatekeeper teaches the client the member list.
    assert!(cluster
        .mexec(dir.path(), &["-n", "true"])
        .status()
        .unwrap()
        .success());
    cluster.gatekeeper.kill();
    let output = cluster
        .mexec(dir.path(), &["-n", "--no-local", "sh", "-c", "echo direct"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.stdout, b"direct\n");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("mexec: gatekeeper"), "{stderr}");
    assert!(
        stderr.contains("placing directly over 1 last known nodes"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1);
}

#[test]
fn status_through_the_gatekeeper_shows_nodes_users_and_jobs() {
    let cluster = Cluster::start(&[3, 2], &[]);
    let dir = job_dir();
    let child = cluster
        .mexec(dir.path(), &["-n", "sleep", "2"])
        .env("MEXEC_SUBMIT_USER", "erin")
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || cluster
        .leased_jobs()
        == Some(1)));
    let output = cluster.mexec(dir.path(), &["--status"]).output().unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains(" n1 ") && table.contains(" n2 "), "{table}");
    assert!(table.contains("erin"), "{table}");
    assert!(table.contains("sleep"), "{table}");
    let status = cluster.status();
    assert_eq!(status["users"][0]["user"], "erin");
    assert_eq!(status["users"][0]["running"], 1);
    assert_eq!(status["jobs"][0]["program"], "sleep");
    assert!(child.wait_with_output().unwrap().status.success());
}

#[test]
fn a_client_that_cannot_reach_the_leased_node_is_relayed() {
    let mut cluster = Cluster::start(&[], &[]);
    // Clients are told port 1, where nothing listens; the gatekeeper itself
    // reaches the node at the address its registration came from.
    cluster.add_with("hidden", 2, &["--advertise", "127.0.0.1:1"]);
    assert!(wait_until(Duration::from_secs(10), || cluster
        .members()
        .len()
        == 1));
    let dir = job_dir();
    let output = cluster
        .mexec(
            dir.path(),
            &[
                "-n",
                "--no-local",
                "--explain",
                "sh",
                "-c",
                "echo via relay",
            ],
        )
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.stdout, b"via relay\n");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("relaying through the gatekeeper"),
        "{stderr}"
    );
}

#[test]
fn a_gatekeeper_with_a_token_serves_only_requests_that_carry_it() {
    let dir = job_dir();
    let token = dir.path().join("token");
    std::fs::write(&token, "gk-secret\n").unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let token_arg = token.to_str().unwrap();
    let gatekeeper = mexec_testkit::Gatekeeper::start(&["--token-file", token_arg]);
    let mut cluster = Cluster {
        gatekeeper,
        executors: Vec::new(),
        state_dir: tempfile::tempdir().unwrap(),
    };
    cluster.add_with("n1", 2, &["--token-file", token_arg]);
    let with_token = |args: &[&str]| {
        let mut c = cluster.mexec(dir.path(), args);
        c.env("MEXEC_TOKEN_FILE", &token);
        c
    };
    assert!(wait_until(Duration::from_secs(10), || {
        let out = with_token(&["--status", "--json"]).output().unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .map(|v| v["nodes"].as_array().is_some_and(|n| n.len() == 1))
            .unwrap_or(false)
    }));
    let output = with_token(&["-n", "--no-local", "sh", "-c", "echo ok"])
        .output()
        .unwrap();
    assert_eq!(output.stdout, b"ok\n");

    let output = cluster
        .mexec(dir.path(), &["-n", "--no-local", "true"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(255));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("missing or wrong token"), "{stderr}");
}

#[test]
fn a_mexec_inside_a_farm_job_runs_its_command_there_in_the_jobs_slot() {
    // One slot, held by the outer job: placing the inner command would
    // wait for that slot for ever.
    let cluster = Cluster::start(&[1], &[]);
    let dir = job_dir();
    let log = dir.path().join("jobs.jsonl");
    let script = format!(
        "echo outer $MEXEC_FARM_JOB; {} --explain -n sh -c 'echo inner $MEXEC_FARM_JOB'",
        bin("mexec").display()
    );
    let mut outer = cluster.mexec(dir.path(), &["-n", "sh", "-c", &script]);
    outer
        .env("MEXEC_JOBLOG", &log)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = outer.spawn().unwrap();
    let ended = wait_until(Duration::from_secs(30), || {
        child.try_wait().unwrap().is_some()
    });
    if !ended {
        let _ = child.kill();
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(ended, "the nested mexec waited for a slot: {stderr}");
    assert!(output.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let outer_id = lines[0].strip_prefix("outer ").unwrap();
    assert!(!outer_id.is_empty(), "the job had no mark: {stdout}");
    assert_eq!(lines[1], format!("inner {outer_id}"), "{stdout}");
    assert!(
        stderr.contains(&format!("inside farm job {outer_id}: running sh here")),
        "{stderr}"
    );
    let mut placed: Vec<(String, String)> = joblog(&log)
        .iter()
        .map(|e| {
            (
                e["node"].as_str().unwrap().into(),
                e["placed"].as_str().unwrap().into(),
            )
        })
        .collect();
    placed.sort();
    assert_eq!(
        placed,
        [
            ("local".into(), "local".into()),
            ("n1".into(), "remote".into())
        ]
    );
}
