//! `mpmake` with real make, real compilers and real executors: third-party
//! Makefiles built byte-identically, the jobserver following the cluster as
//! nodes come and go, make's own options and exit status, and the summary.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use mexec_testkit::{bin, c_project, copy_tree, give_to_job_user, job_dir, Farm, GatedFarm};

fn mpmake(cwd: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(bin("mpmake"));
    command
        .current_dir(cwd)
        .arg("--json")
        .args(args)
        .env_remove("MEXEC_GATEKEEPER")
        .env_remove("MEXEC_NODES")
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS");
    command
}

/// The JSON summary: mpmake's last line on stderr.
fn json_summary(output: &Output) -> serde_json::Value {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or("");
    serde_json::from_str(last).unwrap_or_else(|_| panic!("no JSON summary in:\n{stderr}"))
}

fn assert_tokens_balanced(summary: &serde_json::Value) {
    let tokens = &summary["tokens"];
    assert!(tokens.is_object(), "no token account in {summary}");
    assert_eq!(
        tokens["minted"], tokens["accounted"],
        "tokens lost or duplicated: {tokens}"
    );
}

fn node_jobs(summary: &serde_json::Value) -> BTreeMap<String, u64> {
    summary["nodes"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v["jobs"].as_u64().unwrap()))
        .collect()
}

#[test]
fn gmp_builds_with_plain_mpmake_identically_to_plain_make() {
    let source = c_project("gmp-mpfr-sys-1.7.1", "gmp-6.3.0-c");
    let farm = Farm::start(3, 2);
    let dir = job_dir();
    let tree = dir.path().join("gmp");
    copy_tree(&source, &tree);
    give_to_job_user(&tree);
    let configure = Command::new("./configure")
        .args(["--disable-assembly", "--disable-shared"])
        .current_dir(&tree)
        .output()
        .unwrap();
    assert!(
        configure.status.success(),
        "{}",
        String::from_utf8_lossy(&configure.stdout)
    );
    give_to_job_user(&tree);

    let local_started = Instant::now();
    let local = Command::new("make")
        .arg("-j2")
        .current_dir(&tree)
        .env_remove("MAKEFLAGS")
        .output()
        .unwrap();
    assert!(
        local.status.success(),
        "{}",
        String::from_utf8_lossy(&local.stderr)
    );
    let reference = mexec_testkit::files_by_extension(&tree, &["o", "a"]);
    assert!(reference.len() > 400, "only {} objects", reference.len());
    let clean = Command::new("make")
        .arg("clean")
        .current_dir(&tree)
        .output()
        .unwrap();
    assert!(clean.status.success());

    let local_wall = local_started.elapsed();
    let mut command = mpmake(&tree, &[]);
    farm.aim(&mut command, &tree);
    let farm_started = Instant::now();
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("make -j2 took {local_wall:?}; mpmake on 3x2 loopback slots took {:?} (one 2-core machine: not a speed test)", farm_started.elapsed());
    let built = mexec_testkit::files_by_extension(&tree, &["o", "a"]);
    assert_eq!(
        reference.keys().collect::<Vec<_>>(),
        built.keys().collect::<Vec<_>>()
    );
    let differing: Vec<_> = reference
        .iter()
        .filter(|(name, bytes)| built[*name] != **bytes)
        .map(|(name, _)| name.clone())
        .collect();
    assert!(
        differing.is_empty(),
        "differ from plain make: {differing:?}"
    );

    let summary = json_summary(&output);
    eprintln!("gmp through mpmake: {}", summary);
    assert_tokens_balanced(&summary);
    let per_node = node_jobs(&summary);
    assert!(per_node.len() >= 3, "{per_node:?}");
    assert_eq!(
        per_node.values().sum::<u64>(),
        summary["jobs"].as_u64().unwrap()
    );
    assert!(summary["remote"].as_u64().unwrap() > 400);
    assert_eq!(summary["capacity"][0][1], 6);
}

#[test]
fn the_summary_counts_every_compiler_run_of_bzip2() {
    let source = c_project("bzip2-sys-0.1.13", "bzip2-1.0.8");
    let farm = Farm::start(3, 2);
    let dir = job_dir();
    let tree = dir.path().join("bzip2");
    copy_tree(&source, &tree);
    give_to_job_user(&tree);
    let mut command = mpmake(&tree, &["libbz2.a", "bzip2", "bzip2recover"]);
    farm.aim(&mut command, &tree);
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // make echoes each recipe; every line starting with the compiler ran
    // through mexec once.
    let compiler_runs = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.starts_with("gcc "))
        .count() as u64;
    let summary = json_summary(&output);
    assert_eq!(summary["jobs"].as_u64(), Some(compiler_runs), "{summary}");
    assert_eq!(node_jobs(&summary).values().sum::<u64>(), compiler_runs);
    assert_eq!(summary["remote"].as_u64(), Some(compiler_runs));
    assert_tokens_balanced(&summary);
}

/// A small project of our own: a sub-make, targets that sleep a little so
/// the build lasts a few seconds, and one target that fails.
fn synthetic_project(dir: &Path, files: usize) {
    let sub = dir.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    let mut objects = Vec::new();
    for i in 0..files {
        std::fs::write(
            sub.join(format!("f{i}.c")),
            format!("int f{i}(void) {{ return {i}; }}\n"),
        )
        .unwrap();
        objects.push(format!("f{i}.o"));
    }
    std::fs::write(
        sub.join("Makefile"),
        format!(
            "PAUSE ?= 0.3\nall: {objs}\n%.o: %.c\n\tsleep $(PAUSE) && $(CC) $(CFLAGS) -c $< -o $@\nbroken:\n\tfalse\n",
            objs = objects.join(" ")
        ),
    )
    .unwrap();
    // A compiler that takes a while on the node, for tests that need jobs
    // to overlap there: a real compile of these files is a few
    // milliseconds, and a node whose jobs end that fast never looks busy.
    let slow_cc = dir.join("slowcc");
    std::fs::write(&slow_cc, "#!/bin/sh\nsleep 0.4\nexec /usr/bin/cc \"$@\"\n").unwrap();
    std::fs::set_permissions(
        &slow_cc,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(
        dir.join("Makefile"),
        "all:\n\t$(MAKE) -C sub all\nbroken:\n\t$(MAKE) -C sub broken\nclean:\n\trm -f sub/*.o\n",
    )
    .unwrap();
    give_to_job_user(dir);
}

#[test]
fn capacity_follows_nodes_joining_and_leaving_mid_build() {
    let mut farm = GatedFarm::start(&[2, 2], &[]);
    let dir = job_dir();
    synthetic_project(dir.path(), 60);
    // The slow compiler, with no pause before it, keeps every token's job
    // on a node, so six at once fill the first two nodes and must use the
    // third. With fast compiles the first two never look full, and on one
    // shared machine their scores come out about even with the new node's (each counts the
    // others' jobs as foreign load), so ties went to n1/n2.
    let slow_cc = format!("CC={}", dir.path().join("slowcc").display());
    let mut command = mpmake(
        dir.path(),
        &[
            "--poll-secs",
            "0.2",
            "--gatekeeper",
            &farm.gatekeeper.address(),
            &slow_cc,
            "PAUSE=0",
        ],
    );
    command.env("MEXEC_STATE_DIR", farm.state_dir.path());
    let start = Instant::now();
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    std::thread::sleep(Duration::from_millis(1500));
    let joined_at = start.elapsed().as_secs_f64();
    farm.add("n3", 2);
    std::thread::sleep(Duration::from_millis(2000));
    let left_at = start.elapsed().as_secs_f64();
    farm.executors[0].signal(libc::SIGTERM);

    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = json_summary(&output);
    eprintln!("capacity timeline: {}", summary["capacity"]);
    let timeline: Vec<(f64, u64)> = summary["capacity"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_f64().unwrap(), p[1].as_u64().unwrap()))
        .collect();
    assert_eq!(timeline[0].1, 4);
    let grew = timeline
        .iter()
        .find(|(_, slots)| *slots == 6)
        .expect("capacity grew to 6");
    // mpmake's clock starts at its own start, after the test's, so its
    // times read early by that start-up: the delay is checked, not the
    // order (the node did not exist before `joined_at`).
    assert!(
        grew.0 - joined_at < 3.0,
        "grew at {} s, node joined at {joined_at} s",
        grew.0
    );
    let shrank = timeline
        .iter()
        .find(|(t, slots)| *t > grew.0 && *slots == 4)
        .expect("capacity shrank back to 4");
    assert!(
        shrank.0 - left_at < 3.0,
        "shrank at {} s, node left at {left_at} s",
        shrank.0
    );
    assert_tokens_balanced(&summary);
    assert_eq!(summary["jobs"], 60);
    let per_node = node_jobs(&summary);
    assert!(
        per_node.contains_key("n3"),
        "the new node got work: {per_node:?}"
    );
}

#[test]
fn make_options_targets_variables_and_exit_status_pass_through() {
    let farm = Farm::start(2, 2);
    let dir = job_dir();
    synthetic_project(dir.path(), 4);
    // -k with a failing target: make's status (2) is mpmake's.
    let mut command = mpmake(dir.path(), &["-k", "broken", "all"]);
    farm.aim(&mut command, dir.path());
    let output = command.output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    // -k kept going: the objects were built anyway.
    assert!(dir.path().join("sub/f3.o").exists());
    let summary = json_summary(&output);
    assert_eq!(summary["exit_code"], 2);
    assert_tokens_balanced(&summary);

    // -C, a variable, and an explicit -j (which mpmake then leaves alone).
    let mut command = mpmake(
        dir.path(),
        &["-C", "sub", "-j3", "CFLAGS=-DFROM_MPMAKE", "f0.o", "-B"],
    );
    farm.aim(&mut command, dir.path());
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("-DFROM_MPMAKE"));
    let summary = json_summary(&output);
    assert!(
        summary["tokens"].is_null(),
        "with -j3 make runs its own jobserver"
    );
    assert_eq!(summary["remote"], 1);
}

#[test]
fn print_jobs_reports_the_live_capacity() {
    let farm = GatedFarm::start(&[3, 5], &[]);
    let dir = job_dir();
    let output = mpmake(
        dir.path(),
        &["--print-jobs", "--gatekeeper", &farm.gatekeeper.address()],
    )
    .output()
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "8");
    let direct = Farm::start(2, 3);
    let mut command = mpmake(dir.path(), &["--print-jobs"]);
    direct.aim(&mut command, dir.path());
    let output = command.output().unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "6");
}

#[test]
fn print_jobs_always_prints_a_number_and_says_where_it_came_from() {
    let mut farm = GatedFarm::start(&[3, 5], &[]);
    let dir = job_dir();
    // A job through the gatekeeper leaves its member list in the cache.
    let job = farm
        .mexec(dir.path(), &["--no-local", "true"])
        .output()
        .unwrap();
    assert!(
        job.status.success(),
        "{}",
        String::from_utf8_lossy(&job.stderr)
    );
    let print_jobs = |farm: &GatedFarm| {
        let mut command = mpmake(dir.path(), &["--print-jobs"]);
        command
            .env("MEXEC_GATEKEEPER", farm.gatekeeper.address())
            .env("MEXEC_STATE_DIR", farm.state_dir.path());
        let output = command.output().unwrap();
        assert!(output.status.success());
        (
            String::from_utf8_lossy(&output.stdout).trim().to_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    farm.gatekeeper.kill();
    let (jobs, said) = print_jobs(&farm);
    assert_eq!(jobs, "8", "{said}");
    assert!(
        said.contains("unreachable") && said.contains("sizing for the 2 members it last listed"),
        "{said}"
    );
    // Every node down too: this machine's CPUs, and it says so.
    farm.executors.clear();
    let (jobs, said) = print_jobs(&farm);
    assert_eq!(
        jobs,
        std::thread::available_parallelism()
            .unwrap()
            .get()
            .to_string(),
        "{said}"
    );
    assert!(said.contains("sizing make for this machine's"), "{said}");
}

fn cmake_build(
    farm: &Farm,
    source: &Path,
    build: &Path,
    generator: &str,
    launcher: &str,
    env: &[(&str, &Path)],
) -> Output {
    let mut configure = Command::new("cmake");
    configure
        .arg("-S")
        .arg(source)
        .arg("-B")
        .arg(build)
        .args(["-G", generator, "-DCMAKE_BUILD_TYPE=Release"])
        .arg(format!("-DCMAKE_C_COMPILER_LAUNCHER={launcher}"))
        .env_remove("MAKEFLAGS");
    let output = configure.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    give_to_job_user(build);
    let mut command = Command::new("cmake");
    farm.aim(&mut command, build);
    command
        .arg("--build")
        .arg(build)
        .args(["-j", "4"])
        .env_remove("MAKEFLAGS");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}

fn cmake_available() -> bool {
    let found = Command::new("cmake").arg("--version").output().is_ok()
        && Command::new("ninja").arg("--version").output().is_ok()
        && Command::new("ccache").arg("--version").output().is_ok();
    if !found {
        eprintln!("skipped: cmake, ninja-build and ccache are needed (.ci/run installs them)");
    }
    found
}

#[test]
fn cmake_launcher_builds_lz4_with_make_and_ninja_generators() {
    if !cmake_available() {
        return;
    }
    let farm = Farm::start(2, 2);
    let dir = job_dir();
    let tree = dir.path().join("lz4");
    copy_tree(&c_project("lz4-sys-1.11.1", "liblz4"), &tree);
    give_to_job_user(&tree);
    let mexec = bin("mexec");
    for (generator, build) in [("Unix Makefiles", "build-make"), ("Ninja", "build-ninja")] {
        let build = dir.path().join(build);
        let log = dir
            .path()
            .join(format!("{}.jsonl", generator.replace(' ', "-")));
        let output = cmake_build(
            &farm,
            &tree.join("build/cmake"),
            &build,
            generator,
            mexec.to_str().unwrap(),
            &[("MEXEC_JOBLOG", &log)],
        );
        assert!(
            output.status.success(),
            "{generator}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let jobs = std::fs::read_to_string(&log).unwrap();
        let remote = jobs
            .lines()
            .filter(|l| l.contains("\"placed\":\"remote\""))
            .count();
        assert!(remote >= 10, "{generator}: {remote} remote jobs");
        let lz4 = build.join("lz4");
        let version = Command::new(&lz4).arg("--version").output().unwrap();
        assert!(version.status.success(), "{generator}: the built lz4 runs");
    }
}

#[test]
fn ccache_in_front_keeps_hits_local_and_sends_misses_to_the_farm() {
    if !cmake_available() {
        return;
    }
    let farm = Farm::start(2, 2);
    let dir = job_dir();
    let tree = dir.path().join("lz4");
    copy_tree(&c_project("lz4-sys-1.11.1", "liblz4"), &tree);
    give_to_job_user(&tree);
    let cache = dir.path().join("ccache");
    let log = dir.path().join("jobs.jsonl");
    let mexec = bin("mexec");
    let env = [
        ("CCACHE_DIR", cache.as_path()),
        ("CCACHE_PREFIX", mexec.as_path()),
        ("MEXEC_JOBLOG", log.as_path()),
    ];
    let first = cmake_build(
        &farm,
        &tree.join("build/cmake"),
        &dir.path().join("b1"),
        "Ninja",
        "ccache",
        &env,
    );
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let misses = std::fs::read_to_string(&log).unwrap().lines().count();
    assert!(
        misses >= 10,
        "first build sent {misses} compiles to the farm"
    );

    // A fresh build tree, same sources and cache: all hits, nothing remote.
    let zeroed = Command::new("ccache")
        .arg("-z")
        .env("CCACHE_DIR", &cache)
        .status()
        .unwrap();
    assert!(zeroed.success());
    let second = cmake_build(
        &farm,
        &tree.join("build/cmake"),
        &dir.path().join("b2"),
        "Ninja",
        "ccache",
        &env,
    );
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let after = std::fs::read_to_string(&log).unwrap().lines().count();
    assert_eq!(after, misses, "the rebuild ran nothing remotely");
    let stats = Command::new("ccache")
        .arg("--print-stats")
        .env("CCACHE_DIR", &cache)
        .output()
        .unwrap();
    let stats = String::from_utf8_lossy(&stats.stdout);
    let counter = |name: &str| -> u64 {
        stats
            .lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix('\t')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    let hits = counter("direct_cache_hit") + counter("preprocessed_cache_hit");
    assert_eq!(
        counter("cache_miss"),
        0,
        "the rebuild missed the cache:\n{stats}"
    );
    assert!(
        hits >= misses as u64,
        "{hits} hits for {misses} compiles:\n{stats}"
    );
}

#[test]
fn a_batch_of_commands_runs_in_parallel_over_the_farm_with_xargs() {
    let farm = Farm::start(3, 2);
    let dir = job_dir();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    give_to_job_user(&out);
    let log = dir.path().join("jobs.jsonl");
    // The documented pattern: one mexec per item, -P for parallelism, -n so
    // no job eats the list xargs reads.
    let script = format!(
        "seq 1 30 | xargs -P 6 -I{{}} {} -n -- sh -c 'echo item {{}} > out/{{}}.txt'",
        bin("mexec").display()
    );
    let mut command = Command::new("sh");
    farm.aim(&mut command, dir.path());
    let status = command
        .args(["-c", &script])
        .env("MEXEC_JOBLOG", &log)
        .status()
        .unwrap();
    assert!(status.success());
    for i in 1..=30 {
        assert_eq!(
            std::fs::read_to_string(out.join(format!("{i}.txt"))).unwrap(),
            format!("item {i}\n")
        );
    }
    let nodes: HashSet<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["node"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(nodes.len() >= 2, "{nodes:?}");
}
