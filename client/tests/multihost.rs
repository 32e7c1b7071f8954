//! The farm across hosts that come and go: each executor and the
//! gatekeeper on a host of its own (a network namespace with its own
//! address), the build on the build host, and mid-build a host killed,
//! cut off, drained, added, or the gatekeeper restarted. The promise under
//! test: running builds do not notice, beyond a short delay, and every job
//! ends exactly once.
//!
//! Skipped with a message where namespaces cannot be made (not root);
//! `.ci/run` sets MEXEC_REQUIRE_NETNS=1 so CI fails instead of skipping.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mexec_testkit::netns::Lan;
use mexec_testkit::{bin, files_by_extension, job_dir, wait_until, Executor, Gatekeeper};

const EXECUTOR_PORT: u16 = 7460;
const GATEKEEPER_PORT: u16 = 7461;
/// The documented bound (docs/architecture.md) within which a client
/// notices that the node running its job went silent: HTTP/2 keepalive,
/// a ping every 2 s answered within 4 s.
const SILENT_NODE_BOUND: Duration = Duration::from_secs(6);
/// What a retried compile may take on top: the lost attempt's own start,
/// the retry, and a loaded two-core machine.
const RETRY_SLACK: Duration = Duration::from_secs(6);
/// Each compile of the generated project sleeps this long first, so
/// several are always in flight when a host goes.
const COMPILE_DELAY: &str = "0.3";

/// Host 0 runs the gatekeeper (when there is one), hosts 1.. executors.
struct Farm {
    lan: Lan,
    gatekeeper: Option<Gatekeeper>,
    executors: BTreeMap<usize, Executor>,
    slots: u32,
    state_dir: tempfile::TempDir,
}

impl Farm {
    /// `hosts` executor hosts of `slots` slots, behind a gatekeeper when
    /// `gated`; None when namespaces cannot be made here.
    fn start(test: &str, hosts: usize, slots: u32, gated: bool) -> Option<Farm> {
        let lan = Lan::create_or_skip(hosts + 1, test)?;
        let gatekeeper =
            gated.then(|| Gatekeeper::start_in(&lan, 0, GATEKEEPER_PORT, &["--insecure"]));
        let mut farm = Farm {
            lan,
            gatekeeper,
            executors: BTreeMap::new(),
            slots,
            state_dir: tempfile::tempdir().unwrap(),
        };
        for host in 1..=hosts {
            farm.start_executor(host);
        }
        if gated {
            assert!(
                wait_until(Duration::from_secs(10), || farm.members().len() == hosts),
                "executors did not join: {:?} {:?}",
                farm.members(),
                farm.mexec(Path::new("/tmp"), &["--status"]).output()
            );
        }
        Some(farm)
    }

    fn gatekeeper_address(&self) -> String {
        self.lan.address(0, GATEKEEPER_PORT)
    }

    /// Starts (or restarts) the executor of host `host`, named `n<host>`.
    fn start_executor(&mut self, host: usize) {
        self.start_executor_as(host, None);
    }

    /// Like `start_executor`, running as mexec `version` when given (the
    /// "new" binary of a rolling upgrade: this build under another version).
    fn start_executor_as(&mut self, host: usize, version: Option<&str>) {
        let listen = self.lan.address(host, EXECUTOR_PORT);
        let gatekeeper = self.gatekeeper_address();
        let mut flags = vec!["--listen", &listen, "--insecure"];
        if self.gatekeeper.is_some() {
            flags.extend(["--gatekeeper", &gatekeeper]);
        }
        let mut command = self.lan.command(host, bin("mexecd"));
        if let Some(version) = version {
            command.env(mexec_common::version::TEST_OVERRIDE_VAR, version);
        }
        let executor = Executor::start_with(command, &format!("n{host}"), self.slots, &flags);
        self.executors.insert(host, executor);
    }

    /// Adds a host with an executor and returns its index.
    fn add_host(&mut self) -> usize {
        let host = self.lan.add_host().expect("add a host");
        self.start_executor(host);
        host
    }

    /// The whole host dies at once: the daemon and every job it started
    /// (they share its network namespace), as when a machine loses power.
    fn power_off(&mut self, host: usize) {
        self.lan.kill_everything_on(host);
        if let Some(mut executor) = self.executors.remove(&host) {
            executor.wait_exit(Duration::from_secs(5));
        }
    }

    fn nodes(&self) -> String {
        self.executors
            .keys()
            .map(|&h| self.lan.address(h, EXECUTOR_PORT))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Aims `command` at the farm: through the gatekeeper, or directly
    /// over the executors, never running anything on the build host.
    fn aim(&self, command: &mut Command, cwd: &Path) {
        command
            .current_dir(cwd)
            .env("MEXEC_STATE_DIR", self.state_dir.path())
            .env("MEXEC_NO_LOCAL", "1")
            .env_remove("MEXEC_CONFIG");
        if self.gatekeeper.is_some() {
            command
                .env("MEXEC_GATEKEEPER", self.gatekeeper_address())
                .env_remove("MEXEC_NODES");
        } else {
            command
                .env("MEXEC_NODES", self.nodes())
                .env_remove("MEXEC_GATEKEEPER");
        }
    }

    fn mexec(&self, cwd: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(bin("mexec"));
        self.aim(&mut command, cwd);
        command.args(args);
        command
    }

    fn status(&self) -> serde_json::Value {
        let output = self
            .mexec(Path::new("/tmp"), &["--status", "--json"])
            .output()
            .unwrap();
        serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// Jobs running on host `host` now, asked of its executor directly.
    fn running_on(&self, host: usize) -> u64 {
        let output = Command::new(bin("mexec"))
            .args(["--status", "--json"])
            .env("MEXEC_NODES", self.lan.address(host, EXECUTOR_PORT))
            .env_remove("MEXEC_GATEKEEPER")
            .env_remove("MEXEC_CONFIG")
            .output()
            .unwrap();
        let status: serde_json::Value =
            serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
        let nodes = status.get("nodes").unwrap_or(&status);
        nodes[0]["running"].as_u64().unwrap_or(0)
    }

    /// Waits until host `host` has finished a few jobs of the build and is
    /// running one now, so losing the host strands work.
    fn wait_for_work_on(&self, host: usize, project: &Project) {
        let node = format!("n{host}");
        assert!(
            wait_until(Duration::from_secs(60), || project.jobs_on(&node) >= 3
                && self.running_on(host) > 0),
            "{node} got no work"
        );
    }

    fn members(&self) -> Vec<String> {
        self.status()["nodes"]
            .as_array()
            .map(|nodes| {
                nodes
                    .iter()
                    .filter_map(|n| n["node"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A C project of `units` files, each compiled by a `gcc` that sleeps
/// first and prints one warning naming its unit (so a doubled or lost
/// stderr shows), and a program that sums what they return.
struct Project {
    dir: tempfile::TempDir,
    units: usize,
}

impl Project {
    fn generate(units: usize) -> Project {
        let dir = job_dir();
        let root = dir.path();
        let mut main = String::new();
        for i in 0..units {
            let source = format!(
                "#warning \"unit {i} compiled\"\nint unit{i}(int x) {{ return x * {i} + 1; }}\n"
            );
            std::fs::write(root.join(format!("u{i}.c")), source).unwrap();
            main.push_str(&format!("int unit{i}(int);\n"));
        }
        main.push_str("#include <stdio.h>\nint main(void) {\n    long sum = 0;\n");
        for i in 0..units {
            main.push_str(&format!("    sum += unit{i}(3);\n"));
        }
        main.push_str("    printf(\"%ld\\n\", sum);\n    return 0;\n}\n");
        std::fs::write(root.join("main.c"), main).unwrap();
        let objects: Vec<String> = (0..units).map(|i| format!("u{i}.o")).collect();
        let makefile = format!(
            "OBJS = main.o {}\nprog: $(OBJS)\n\t$(CC) -o $@ $(OBJS)\n%.o: %.c\n\t$(CC) -O2 -c $< -o $@\n",
            objects.join(" ")
        );
        std::fs::write(root.join("Makefile"), makefile).unwrap();
        let gcc = String::from_utf8(
            Command::new("sh")
                .args(["-c", "command -v gcc"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let tools = root.join("tools");
        std::fs::create_dir(&tools).unwrap();
        // Named gcc, so mexec knows a compile and may repeat it.
        let wrapper = tools.join("gcc");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nsleep {COMPILE_DELAY}\nexec {} \"$@\"\n",
                gcc.trim()
            ),
        )
        .unwrap();
        Command::new("chmod")
            .arg("755")
            .arg(&wrapper)
            .status()
            .unwrap();
        mexec_testkit::give_to_job_user(root);
        Project { dir, units }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn joblog(&self) -> PathBuf {
        self.path().join("jobs.jsonl")
    }

    /// Starts `make -j<jobs> CC=mexec` on the farm.
    fn start_build(&self, farm: &Farm, jobs: usize) -> std::process::Child {
        let mut make = Command::new("make");
        farm.aim(&mut make, self.path());
        make.arg(format!("-j{jobs}"))
            .arg(format!("CC={}", bin("mexec").display()))
            .env("MEXEC_CC", self.path().join("tools/gcc"))
            .env("MEXEC_JOBLOG", self.joblog())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start make")
    }

    fn jobs(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.joblog())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a joblog line"))
            .collect()
    }

    fn jobs_on(&self, node: &str) -> usize {
        self.jobs().iter().filter(|j| j["node"] == node).count()
    }

    /// Checks the finished build: make succeeded, each compile ended
    /// exactly once with status 0 and its warning appears exactly once,
    /// the objects are byte for byte those of a plain local build, and
    /// the program runs.
    fn check(&self, build: Output) -> Vec<serde_json::Value> {
        let stderr = String::from_utf8_lossy(&build.stderr);
        assert!(build.status.success(), "the build failed: {stderr}");
        for i in 0..self.units {
            let warning = format!("warning: #warning \"unit {i} compiled\"");
            assert_eq!(
                stderr.matches(&warning).count(),
                1,
                "unit {i}'s warning must appear exactly once: {stderr}"
            );
        }
        let jobs = self.jobs();
        assert_eq!(
            jobs.len(),
            self.units + 2,
            "one joblog entry per job: {jobs:?}"
        );
        assert!(
            jobs.iter()
                .all(|j| j["exit_code"] == 0 && j["placed"] == "remote"),
            "{jobs:?}"
        );

        // The same sources built by plain make and gcc, here.
        let reference = tempfile::tempdir().unwrap();
        let local = reference.path().join("local");
        mexec_testkit::copy_tree(self.path(), &local);
        for entry in std::fs::read_dir(&local).unwrap().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "o") || path.ends_with("prog") {
                std::fs::remove_file(path).unwrap();
            }
        }
        let plain = Command::new("make")
            .arg("-C")
            .arg(&local)
            .args(["-j2", "CC=gcc"])
            .output()
            .unwrap();
        assert!(
            plain.status.success(),
            "{}",
            String::from_utf8_lossy(&plain.stderr)
        );
        assert_eq!(
            files_by_extension(self.path(), &["o"]),
            files_by_extension(&local, &["o"]),
            "objects built on the farm differ from a local build"
        );
        let run = Command::new(self.path().join("prog")).output().unwrap();
        let expected: i64 = (0..self.units as i64).map(|i| 3 * i + 1).sum();
        assert_eq!(
            String::from_utf8_lossy(&run.stdout).trim(),
            expected.to_string()
        );
        jobs
    }
}

fn retried(jobs: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    jobs.iter()
        .filter(|j| j["retries"].as_u64().unwrap_or(0) > 0)
        .collect()
}

#[test]
fn a_host_killed_mid_build_does_not_fail_the_build() {
    let Some(mut farm) = Farm::start("a_host_killed_mid_build", 3, 2, false) else {
        return;
    };
    let project = Project::generate(90);
    let build = project.start_build(&farm, 6);
    farm.wait_for_work_on(1, &project);
    farm.power_off(1);
    let jobs = project.check(build.wait_with_output().unwrap());
    let retried = retried(&jobs);
    assert!(
        !retried.is_empty(),
        "the jobs in flight on n1 must have run again elsewhere"
    );
    eprintln!(
        "{} compiles were lost with n1 and ran again elsewhere",
        retried.len()
    );
}

#[test]
fn a_host_cut_off_mid_build_has_its_jobs_replaced_within_the_bound() {
    let Some(farm) = Farm::start("a_host_cut_off_mid_build", 3, 2, true) else {
        return;
    };
    let project = Project::generate(90);
    let build = project.start_build(&farm, 6);
    farm.wait_for_work_on(1, &project);
    farm.lan.cut(1);
    let cut_at = Instant::now();
    let jobs = project.check(build.wait_with_output().unwrap());
    let retried = retried(&jobs);
    assert!(
        !retried.is_empty(),
        "the jobs in flight on n1 must have run again elsewhere"
    );
    let longest = retried
        .iter()
        .filter_map(|j| j["wall_ms"].as_u64())
        .max()
        .unwrap();
    eprintln!(
        "{} compiles were stranded on n1; the slowest finished {longest} ms after it started \
         (bound {SILENT_NODE_BOUND:?} + {RETRY_SLACK:?}); build ended {:?} after the cut",
        retried.len(),
        cut_at.elapsed()
    );
    assert!(
        Duration::from_millis(longest) <= SILENT_NODE_BOUND + RETRY_SLACK,
        "a stranded compile took {longest} ms"
    );

    // Back on the network, the host rejoins and gets work again.
    farm.lan.mend(1);
    assert!(
        wait_until(Duration::from_secs(20), || farm
            .members()
            .contains(&"n1".to_owned())),
        "n1 did not rejoin: {:?}",
        farm.members()
    );
    let log = project.path().join("after.jsonl");
    let batch: Vec<Command> = (0..24)
        .map(|_| {
            let mut c = farm.mexec(project.path(), &["sh", "-c", "sleep 0.2"]);
            c.env("MEXEC_JOBLOG", &log);
            c
        })
        .collect();
    let outputs = mexec_testkit::run_pool(batch, 6);
    assert!(outputs.iter().all(|o| o.status.success()));
    let after = std::fs::read_to_string(&log).unwrap();
    assert!(
        after.contains("\"node\":\"n1\""),
        "n1 got nothing after rejoining: {after}"
    );
}

#[test]
fn a_host_drained_and_a_host_added_mid_build_go_unnoticed() {
    let Some(mut farm) = Farm::start("a_host_drained_and_a_host_added", 3, 2, true) else {
        return;
    };
    let project = Project::generate(90);
    let build = project.start_build(&farm, 6);
    farm.wait_for_work_on(1, &project);
    let drained = farm.executors.get(&1).unwrap();
    drained.signal(libc::SIGTERM);
    let added = farm.add_host();
    let jobs = project.check(build.wait_with_output().unwrap());
    assert!(retried(&jobs).is_empty(), "a drain loses nothing: {jobs:?}");
    assert!(
        project.jobs_on(&format!("n{added}")) > 0,
        "the new host got no work"
    );
    let status = farm
        .executors
        .get_mut(&1)
        .unwrap()
        .wait_exit(Duration::from_secs(40));
    assert!(
        status.is_some_and(|s| s.success()),
        "the drained executor did not exit cleanly: {status:?}"
    );
}

#[test]
fn the_gatekeeper_killed_and_restarted_mid_build_does_not_fail_it() {
    let Some(mut farm) = Farm::start("the_gatekeeper_killed_and_restarted", 3, 2, true) else {
        return;
    };
    let project = Project::generate(90);
    let build = project.start_build(&farm, 6);
    assert!(
        wait_until(Duration::from_secs(60), || project.jobs().len() >= 10),
        "the build did not start"
    );
    let gatekeeper = farm.gatekeeper.as_mut().unwrap();
    gatekeeper.kill();
    std::thread::sleep(Duration::from_secs(1));
    gatekeeper.restart();
    assert!(
        wait_until(Duration::from_secs(10), || farm.members().len() == 3),
        "the executors did not rejoin the new gatekeeper: {:?}",
        farm.members()
    );
    project.check(build.wait_with_output().unwrap());
}

/// The version a rolling upgrade moves to: the next minor version.
fn next_version() -> String {
    let ours = mexec_common::version::current();
    format!("{}.{}.0", ours.major, ours.minor + 1)
}

/// The upgrade procedure of docs/operations.md under a running build:
/// each executor drained, stopped and started as the next version, one
/// at a time, then the gatekeeper. The build succeeds, no job fails or
/// runs twice, and the farm ends on the new version.
#[test]
fn a_rolling_upgrade_under_a_running_build_loses_no_job() {
    let Some(mut farm) = Farm::start("a_rolling_upgrade", 3, 2, true) else {
        return;
    };
    let new = next_version();
    let project = Project::generate(240);
    let mut build = project.start_build(&farm, 6);
    for host in 1..=3 {
        farm.wait_for_work_on(host, &project);
        let old = farm.executors.get_mut(&host).unwrap();
        old.signal(libc::SIGTERM);
        let drained = old.wait_exit(Duration::from_secs(40));
        assert!(drained.is_some_and(|s| s.success()), "n{host}: {drained:?}");
        farm.start_executor_as(host, Some(&new));
        assert!(
            wait_until(Duration::from_secs(20), || farm.status()["nodes"]
                .as_array()
                .is_some_and(|nodes| nodes
                    .iter()
                    .any(|n| n["node"] == format!("n{host}").as_str()
                        && n["version"] == new.as_str()))),
            "n{host} did not rejoin as {new}: {:#}",
            farm.status()
        );
    }
    assert!(
        build.try_wait().unwrap().is_none(),
        "the build ended before the gatekeeper's turn: make it longer"
    );
    let listen = farm.gatekeeper_address();
    let version = format!("{}={new}", mexec_common::version::TEST_OVERRIDE_VAR);
    let gatekeeper = farm.gatekeeper.as_mut().unwrap();
    gatekeeper.kill();
    *gatekeeper = Gatekeeper::start_in_with(
        &farm.lan,
        0,
        GATEKEEPER_PORT,
        &["--insecure"],
        &[version.as_str()],
    );
    assert_eq!(farm.gatekeeper_address(), listen);
    assert!(
        wait_until(Duration::from_secs(20), || farm.members().len() == 3),
        "the executors did not join the new gatekeeper: {:#}",
        farm.status()
    );
    let jobs = project.check(build.wait_with_output().unwrap());
    let status = farm.status();
    assert_eq!(status["version"], new.as_str(), "{status:#}");
    eprintln!(
        "rolling upgrade to {new}: {} jobs, {} of them run again elsewhere",
        jobs.len(),
        retried(&jobs).len()
    );
}

#[test]
fn a_lost_client_returns_its_lease_and_its_queued_request_is_dropped() {
    // Hosts: 0 gatekeeper, 1 a one-slot executor, 2 and 3 clients.
    let Some(mut farm) = Farm::start("a_lost_client_returns_its_lease", 1, 1, true) else {
        return;
    };
    let holder = farm.lan.add_host().unwrap();
    let waiter = farm.lan.add_host().unwrap();
    let dir = job_dir();
    let client_on = |host: usize, args: &[&str]| {
        let mut command = farm.lan.command(host, bin("mexec"));
        farm.aim(&mut command, dir.path());
        command
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command.spawn().unwrap()
    };
    let mut holding = client_on(holder, &["sh", "-c", "sleep 120"]);
    assert!(wait_until(Duration::from_secs(10), || farm.status()
        ["jobs"]
        .as_array()
        .map(Vec::len)
        == Some(1)));
    let mut waiting = client_on(waiter, &["true"]);
    assert!(wait_until(Duration::from_secs(10), || farm.status()
        ["queued"]
        == 1));

    farm.lan.cut(holder);
    farm.lan.cut(waiter);
    let cut_at = Instant::now();
    // The gatekeeper pings every 5 s and gives up after 5 more.
    assert!(
        wait_until(Duration::from_secs(15), || {
            let status = farm.status();
            status["queued"] == 0 && status["jobs"].as_array().map(Vec::len) == Some(0)
        }),
        "lease or queued request kept: {}",
        farm.status()
    );
    eprintln!(
        "lease returned and queue emptied {:?} after the clients were cut off",
        cut_at.elapsed()
    );
    // The executor kills the orphaned job too, so its slot serves again.
    let output = farm.mexec(dir.path(), &["echo", "next"]).output().unwrap();
    assert_eq!(
        output.stdout,
        b"next\n",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        cut_at.elapsed() < Duration::from_secs(30),
        "the orphaned job held its slot for {:?}",
        cut_at.elapsed()
    );
    for client in [&mut holding, &mut waiting] {
        let _ = client.kill();
        let _ = client.wait();
    }
}

/// How many short jobs the soak runs: 10,000 unless MEXEC_SOAK_JOBS says.
fn soak_jobs() -> usize {
    std::env::var("MEXEC_SOAK_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// Memory of the gatekeeper and of one executor that is never killed,
/// sampled as the soak goes: (jobs done, gatekeeper KiB, executor KiB).
type MemorySample = (usize, u64, u64);

/// Each job's exit code and standard output, by job number.
/// Each job's exit code, stdout and stderr, by its number.
type Ledger = HashMap<usize, (i32, Vec<u8>, String)>;

#[test]
fn soak_every_job_ends_once_while_hosts_die_and_return() {
    let Some(farm) = Farm::start("soak", 3, 4, true) else {
        return;
    };
    let total = soak_jobs();
    let dir = job_dir();
    let log = dir.path().join("jobs.jsonl");
    let gatekeeper_pid = farm.gatekeeper.as_ref().unwrap().pid();
    let steady_pid = farm.executors[&3].pid();
    let client_env: Vec<(String, String)> = vec![
        ("MEXEC_GATEKEEPER".into(), farm.gatekeeper_address()),
        (
            "MEXEC_STATE_DIR".into(),
            farm.state_dir.path().display().to_string(),
        ),
        ("MEXEC_NO_LOCAL".into(), "1".into()),
        ("MEXEC_JOBLOG".into(), log.display().to_string()),
    ];
    let farm = Arc::new(Mutex::new(farm));
    let done = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));

    // Hosts 1 and 2 take turns dying and coming back; host 3 stays, so
    // its memory can be watched.
    let churn = {
        let (farm, done) = (Arc::clone(&farm), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut kills = 0;
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(2));
                let host = 1 + kills % 2;
                farm.lock().unwrap().power_off(host);
                std::thread::sleep(Duration::from_millis(500));
                farm.lock().unwrap().start_executor(host);
                kills += 1;
            }
            kills
        })
    };
    let sampler = {
        let (done, next) = (Arc::clone(&done), Arc::clone(&next));
        std::thread::spawn(move || {
            let mut samples: Vec<MemorySample> = Vec::new();
            while !done.load(Ordering::Relaxed) {
                samples.push((
                    next.load(Ordering::Relaxed).min(total),
                    mexec_testkit::rss_kib(gatekeeper_pid),
                    mexec_testkit::rss_kib(steady_pid),
                ));
                std::thread::sleep(Duration::from_millis(500));
            }
            samples
        })
    };

    // Twelve clients at a time, as make -j12 would start them.
    let ledger: Arc<Mutex<Ledger>> = Arc::default();
    let started = Instant::now();
    let clients: Vec<_> = (0..12)
        .map(|_| {
            let (next, ledger, client_env) =
                (Arc::clone(&next), Arc::clone(&ledger), client_env.clone());
            let cwd = dir.path().to_owned();
            std::thread::spawn(move || loop {
                let id = next.fetch_add(1, Ordering::Relaxed);
                if id >= total {
                    return;
                }
                let output = Command::new(bin("mexec"))
                    .current_dir(&cwd)
                    .envs(client_env.iter().map(|(k, v)| (k, v)))
                    .env_remove("MEXEC_NODES")
                    .env_remove("MEXEC_CONFIG")
                    .args([
                        "--retry",
                        "--",
                        "sh",
                        "-c",
                        &format!("sleep 0.02; echo {id}"),
                    ])
                    .stdin(Stdio::null())
                    .output()
                    .unwrap();
                let code = output.status.code().unwrap_or(-1);
                let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
                let earlier = ledger
                    .lock()
                    .unwrap()
                    .insert(id, (code, output.stdout, stderr));
                assert!(earlier.is_none(), "job {id} ran twice");
            })
        })
        .collect();
    for client in clients {
        client.join().expect("a client thread panicked");
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let kills = churn.join().unwrap();
    let mut samples = sampler.join().unwrap();
    samples.push((
        total,
        mexec_testkit::rss_kib(gatekeeper_pid),
        mexec_testkit::rss_kib(steady_pid),
    ));

    // The ledger: every job ended once, with status 0 and its own output
    // exactly once, and the client logged it once.
    let ledger = ledger.lock().unwrap();
    assert_eq!(ledger.len(), total);
    let wrong: Vec<_> = ledger
        .iter()
        .filter(|(id, (code, stdout, _))| *code != 0 || *stdout != format!("{id}\n").into_bytes())
        .take(10)
        .collect();
    assert!(
        wrong.is_empty(),
        "jobs with a wrong status or output: {wrong:?}"
    );
    let entries: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), total, "one joblog entry per job");
    let retries: u64 = entries.iter().map(|e| e["retries"].as_u64().unwrap()).sum();
    eprintln!(
        "soak: {total} jobs in {elapsed:?}, {kills} host kills, {retries} retries; memory \
         (jobs done, gatekeeper KiB, steady executor KiB): {samples:?}"
    );
    assert!(kills >= 2, "the soak was too short to kill hosts");

    // Memory is flat: after the first tenth of the jobs (caches warm,
    // connection pools full) neither daemon grows by more than 8 MiB.
    let warm = samples
        .iter()
        .find(|s| s.0 >= total / 10)
        .copied()
        .unwrap_or(samples[0]);
    let peak = |pick: fn(&MemorySample) -> u64| samples.iter().map(pick).max().unwrap();
    assert!(
        peak(|s| s.1) <= warm.1 + 8 * 1024,
        "the gatekeeper grew: {samples:?}"
    );
    assert!(
        peak(|s| s.2) <= warm.2 + 8 * 1024,
        "the steady executor grew: {samples:?}"
    );
}

/// `deploy/netns-farm.sh`, which users run to try a farm of namespaced
/// hosts, brought down by drop even when the test fails.
struct ScriptFarm {
    env: Vec<(String, String)>,
}

impl ScriptFarm {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(mexec_testkit::workspace_root().join("deploy/netns-farm.sh"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run deploy/netns-farm.sh")
    }

    fn members(&self, client: &[(String, String)]) -> usize {
        let output = Command::new(bin("mexec"))
            .args(["--status", "--json"])
            .envs(client.iter().map(|(k, v)| (k, v)))
            .env_remove("MEXEC_NODES")
            .output()
            .unwrap();
        let status: serde_json::Value =
            serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
        status["nodes"].as_array().map(Vec::len).unwrap_or(0)
    }
}

impl Drop for ScriptFarm {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
    }
}

#[test]
fn the_netns_farm_script_brings_a_farm_up_and_removes_it() {
    // The script needs what the harness needs; its own failure would say
    // less about why.
    if Lan::create_or_skip(0, "the_netns_farm_script").is_none() {
        return;
    }
    let pid = std::process::id();
    let name = format!("mxs{}", pid % 100_000);
    let farm = ScriptFarm {
        env: vec![
            ("FARM_NAME".into(), name.clone()),
            ("FARM_SUBNET".into(), format!("10.99.{}", pid % 250)),
            ("JOB_USER".into(), mexec_testkit::JOB_USER.into()),
            (
                "MEXEC_BIN_DIR".into(),
                bin("mexecd").parent().unwrap().display().to_string(),
            ),
        ],
    };
    let up = farm.run(&["up", "2"]);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    // The last line is `export A=... B=...`, what a user pastes.
    let stdout = String::from_utf8_lossy(&up.stdout).into_owned();
    let exports = stdout
        .lines()
        .last()
        .unwrap()
        .strip_prefix("export ")
        .unwrap();
    let client: Vec<(String, String)> = exports
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert!(wait_until(Duration::from_secs(10), || farm
        .members(&client)
        == 2));

    let dir = job_dir();
    let output = Command::new(bin("mexec"))
        .current_dir(dir.path())
        .envs(client.iter().map(|(k, v)| (k, v)))
        .env_remove("MEXEC_NODES")
        .args(["--no-local", "--", "sh", "-c", "echo ran on the farm"])
        .output()
        .unwrap();
    assert_eq!(
        output.stdout,
        b"ran on the farm\n",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    assert!(farm.run(&["cut", "1"]).status.success());
    assert!(wait_until(Duration::from_secs(10), || farm
        .members(&client)
        == 1));
    assert!(farm.run(&["mend", "1"]).status.success());
    assert!(wait_until(Duration::from_secs(20), || farm
        .members(&client)
        == 2));

    assert!(farm.run(&["down"]).status.success());
    let namespaces = String::from_utf8(
        Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let links = String::from_utf8(
        Command::new("ip")
            .args(["-o", "link", "show"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(!namespaces.contains(&name), "namespaces left: {namespaces}");
    assert!(!links.contains(&name), "links left: {links}");
    assert!(!Path::new(&format!("/run/{name}-netns")).exists());
}
