//! Toolchains and requirements across hosts: three executors on hosts of
//! their own (network namespaces), behind a gatekeeper and reachable
//! directly, one of which (n3) runs another "gcc": in its own mount
//! namespace, the project's `tools/` has a gcc that adds `-DODD`, so its
//! objects differ. Builds with `CC=mexec` must produce the objects of a
//! local build and place no compile on n3, until its compiler is replaced
//! by the right one under the running daemon; then it gets compiles again.
//!
//! Skipped with a message where namespaces cannot be made (not root);
//! `.ci/run` sets MEXEC_REQUIRE_NETNS=1 so CI fails instead of skipping.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use mexec_testkit::netns::Lan;
use mexec_testkit::{
    bin, files_by_extension, give_to_job_user, job_dir, wait_until, Executor, Gatekeeper,
};

const EXECUTOR_PORT: u16 = 7460;
const GATEKEEPER_PORT: u16 = 7461;
const UNITS: usize = 12;
/// The odd host.
const ODD: usize = 3;

/// The path of the real gcc.
fn real_gcc() -> String {
    let out = Command::new("sh")
        .args(["-c", "command -v gcc"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A gcc wrapper: a short pause (so compiles overlap and every node gets
/// some), then the real gcc with `extra` flags.
fn wrapper(extra: &str) -> String {
    format!("#!/bin/sh\nsleep 0.2\nexec {} {extra} \"$@\"\n", real_gcc())
}

fn write_executable(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    Command::new("chmod").arg("755").arg(&tmp).status().unwrap();
    // Renamed into place, as a package upgrade does.
    std::fs::rename(&tmp, path).unwrap();
}

/// A C project whose objects show whether ODD was defined, its `tools/gcc`
/// (first on PATH), and `odd-tools/gcc`, which n3 sees in its place.
struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn generate() -> Project {
        let dir = job_dir();
        let root = dir.path();
        let mut main = String::from("#include <stdio.h>\n");
        for i in 0..UNITS {
            let source = format!(
                "#ifdef ODD\nint odd_{i} = 1;\n#endif\nint unit{i}(int x) {{ return x * {i} + 1; }}\n"
            );
            std::fs::write(root.join(format!("u{i}.c")), source).unwrap();
            main.push_str(&format!("int unit{i}(int);\n"));
        }
        main.push_str("int main(void) {\n    long sum = 0;\n");
        for i in 0..UNITS {
            main.push_str(&format!("    sum += unit{i}(3);\n"));
        }
        main.push_str("    printf(\"%ld\\n\", sum);\n    return 0;\n}\n");
        std::fs::write(root.join("main.c"), main).unwrap();
        let objects: Vec<String> = (0..UNITS).map(|i| format!("u{i}.o")).collect();
        let makefile = format!(
            "OBJS = main.o {}\nprog: $(OBJS)\n\t$(CC) -o $@ $(OBJS)\n%.o: %.c\n\t$(CC) -O2 -c $< -o $@\n",
            objects.join(" ")
        );
        std::fs::write(root.join("Makefile"), makefile).unwrap();
        for dir in ["tools", "odd-tools"] {
            std::fs::create_dir(root.join(dir)).unwrap();
        }
        write_executable(&root.join("tools/gcc"), &wrapper(""));
        write_executable(&root.join("odd-tools/gcc"), &wrapper("-DODD"));
        give_to_job_user(root);
        Project { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn path_var(&self) -> String {
        format!(
            "{}:{}",
            self.path().join("tools").display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    fn clean(&self) {
        for entry in std::fs::read_dir(self.path()).unwrap().flatten() {
            let path = entry.path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.ends_with(".o") || name == "prog" || name.ends_with(".jsonl") {
                std::fs::remove_file(path).unwrap();
            }
        }
    }

    /// The objects of a plain local build with the right gcc.
    fn local_objects(&self) -> std::collections::BTreeMap<String, Vec<u8>> {
        let reference = tempfile::tempdir().unwrap();
        let local = reference.path().join("local");
        mexec_testkit::copy_tree(self.path(), &local);
        let plain = Command::new("make")
            .arg("-C")
            .arg(&local)
            .args(["-j2", "CC=gcc"])
            .env("PATH", self.path_var())
            .output()
            .unwrap();
        assert!(plain.status.success(), "{plain:?}");
        files_by_extension(&local, &["o"])
    }

    fn joblog(&self, name: &str) -> PathBuf {
        self.path().join(format!("{name}.jsonl"))
    }

    fn jobs(&self, name: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.joblog(name))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a joblog line"))
            .collect()
    }
}

/// Host 0 runs the gatekeeper, hosts 1..=3 executors; n3 is the odd one.
struct Farm {
    lan: Lan,
    _gatekeeper: Gatekeeper,
    _executors: Vec<Executor>,
    state_dir: tempfile::TempDir,
}

impl Farm {
    fn start(test: &str, project: &Project) -> Option<Farm> {
        let lan = Lan::create_or_skip(4, test)?;
        let gatekeeper = Gatekeeper::start_in(&lan, 0, GATEKEEPER_PORT, &["--insecure"]);
        let gk = lan.address(0, GATEKEEPER_PORT);
        let mut executors = Vec::new();
        for host in 1..=3 {
            let listen = lan.address(host, EXECUTOR_PORT);
            let flags = [
                "--listen",
                &listen,
                "--insecure",
                "--gatekeeper",
                &gk,
                "--direct-jobs",
                "allow",
            ];
            let command = if host == ODD {
                // Its own mount namespace, where tools/ is odd-tools/.
                let mut command = lan.command(host, "unshare");
                let tools = project.path().join("tools");
                let odd = project.path().join("odd-tools");
                command
                    .args(["-m", "--propagation", "private", "sh", "-c"])
                    .arg(format!(
                        "mount --bind {} {} && exec \"$0\" \"$@\"",
                        odd.display(),
                        tools.display()
                    ));
                command.arg(bin("mexecd"));
                command
            } else {
                lan.command(host, bin("mexecd"))
            };
            executors.push(Executor::start_with(
                command,
                &format!("n{host}"),
                2,
                &flags,
            ));
        }
        let farm = Farm {
            lan,
            _gatekeeper: gatekeeper,
            _executors: executors,
            state_dir: tempfile::tempdir().unwrap(),
        };
        assert!(
            wait_until(Duration::from_secs(10), || farm.status(true)["nodes"]
                .as_array()
                .is_some_and(|n| n.len() == 3)),
            "executors did not join"
        );
        Some(farm)
    }

    fn nodes(&self) -> String {
        (1..=3)
            .map(|h| self.lan.address(h, EXECUTOR_PORT))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Aims `command` at the farm, through the gatekeeper or directly.
    fn aim(&self, command: &mut Command, project: &Project, gated: bool) {
        command
            .current_dir(project.path())
            .env("PATH", project.path_var())
            .env("MEXEC_STATE_DIR", self.state_dir.path())
            .env_remove("MEXEC_CONFIG")
            .env_remove("MEXEC_TOOLCHAIN")
            .env_remove("MEXEC_REQUIRE");
        if gated {
            command
                .env("MEXEC_GATEKEEPER", self.lan.address(0, GATEKEEPER_PORT))
                .env_remove("MEXEC_NODES");
        } else {
            command
                .env("MEXEC_NODES", self.nodes())
                .env_remove("MEXEC_GATEKEEPER");
        }
    }

    fn mexec(&self, project: &Project, gated: bool, args: &[&str]) -> Command {
        let mut command = Command::new(bin("mexec"));
        self.aim(&mut command, project, gated);
        command.args(args);
        command
    }

    fn status(&self, gated: bool) -> serde_json::Value {
        self.status_in(
            &Project {
                dir: tempfile::tempdir().unwrap(),
            },
            gated,
        )
    }

    /// `--status --json` with the PATH of `project`, whose gcc it compares.
    fn status_in(&self, project: &Project, gated: bool) -> serde_json::Value {
        let out = self
            .mexec(project, gated, &["--status", "--json"])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// `make -j6 CC=mexec` with the joblog `name`, nothing run locally.
    fn build(&self, project: &Project, gated: bool, name: &str) -> Output {
        project.clean();
        let mut make = Command::new("make");
        self.aim(&mut make, project, gated);
        make.arg("-j6")
            .arg(format!("CC={}", bin("mexec").display()))
            .env("MEXEC_CC", "gcc")
            .env("MEXEC_NO_LOCAL", "1")
            .env("MEXEC_JOBLOG", project.joblog(name));
        let out = make.output().unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The digest n3 and n1 report for gcc, from the gatekeeper.
    fn gcc_digests(&self) -> (String, String) {
        let status = self.status(true);
        let digest = |node: &str| {
            status["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|n| n["node"] == node)
                .and_then(|n| n["toolchains"]["gcc"]["digest"].as_str())
                .unwrap_or("")
                .to_owned()
        };
        (digest("n3"), digest("n1"))
    }
}

fn nodes_of(jobs: &[serde_json::Value]) -> HashMap<String, usize> {
    let mut count = HashMap::new();
    for job in jobs {
        *count
            .entry(job["node"].as_str().unwrap_or("").to_owned())
            .or_default() += 1;
    }
    count
}

#[test]
fn compiles_go_only_to_nodes_with_our_compiler_until_the_odd_one_is_replaced() {
    let project = Project::generate();
    let Some(farm) = Farm::start("toolchain", &project) else {
        return;
    };
    let reference = project.local_objects();
    assert_eq!(reference.len(), UNITS + 1);

    for (gated, name) in [(true, "gated"), (false, "direct")] {
        farm.build(&project, gated, name);
        assert_eq!(
            files_by_extension(project.path(), &["o"]),
            reference,
            "{name}: objects differ from a local build"
        );
        let jobs = project.jobs(name);
        let placed = nodes_of(&jobs);
        println!("{name} build: jobs per node {placed:?}");
        assert_eq!(jobs.len(), UNITS + 2, "{jobs:?}");
        assert!(jobs.iter().all(|j| j["placed"] == "remote"), "{jobs:?}");
        assert!(
            !placed.contains_key("n3"),
            "a job went to the odd node: {jobs:?}"
        );
    }
    let (odd, good) = farm.gcc_digests();
    assert!(
        !odd.is_empty() && !good.is_empty() && odd != good,
        "{odd} {good}"
    );
    // --status marks the odd node, in the table and in JSON, both ways.
    let table = farm.mexec(&project, true, &["--status"]).output().unwrap();
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    println!("{table}");
    let line = |node: &str| {
        table
            .lines()
            .find(|l| l.starts_with(node) && l.contains(" gcc "))
            .unwrap_or_else(|| panic!("no gcc line for {node}:\n{table}"))
            .to_owned()
    };
    assert!(line("n3 ").contains("DIFFERS: here "), "{table}");
    assert!(line("n1 ").ends_with("same as here"), "{table}");
    let direct = farm.status_in(&project, false);
    let same = |node: &str| {
        // One schema with or without a gatekeeper: the nodes are a list
        // under "nodes".
        direct["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["node"] == node)
            .map(|n| n["toolchains"]["gcc"]["same_as_client"].clone())
    };
    assert_eq!(
        same("n3"),
        Some(serde_json::Value::Bool(false)),
        "{direct:#}"
    );
    assert_eq!(
        same("n1"),
        Some(serde_json::Value::Bool(true)),
        "{direct:#}"
    );
    assert!(
        direct["nodes"][0]["properties"]["arch"].is_string(),
        "{direct:#}"
    );

    // Only the odd node, directly: the compile runs here, saying why.
    let odd_only = farm.lan.address(ODD, EXECUTOR_PORT);
    let alone = |extra: &[&str]| {
        let mut command = farm.mexec(&project, false, extra);
        command
            .env("MEXEC_NODES", &odd_only)
            .args(["gcc", "-O2", "-c", "u1.c", "-o", "alone.o"]);
        command.output().unwrap()
    };
    let out = alone(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("odd node alone: {stderr}");
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("node n3: gcc is ")
            && stderr.contains(", here ")
            && stderr.contains("running gcc locally"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(project.path().join("alone.o")).unwrap(),
        reference["u1.o"]
    );
    let out = alone(&["--no-local"]);
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running it locally (--no-local)"));
    // With the check off, the odd node runs it, and its object shows it.
    let mut any = farm.mexec(&project, false, &["--no-local"]);
    any.env("MEXEC_NODES", &odd_only)
        .env("MEXEC_TOOLCHAIN", "any")
        .args(["gcc", "-O2", "-c", "u1.c", "-o", "any.o"]);
    assert!(any.status().unwrap().success());
    assert_ne!(
        std::fs::read(project.path().join("any.o")).unwrap(),
        reference["u1.o"],
        "n3's gcc must really differ"
    );

    // The odd compiler replaced by the right one, the daemon left running.
    write_executable(&project.path().join("odd-tools/gcc"), &wrapper(""));
    assert!(
        wait_until(Duration::from_secs(10), || {
            let (odd, good) = farm.gcc_digests();
            odd == good && !odd.is_empty()
        }),
        "n3 did not report its new compiler: {:?}",
        farm.gcc_digests()
    );
    for (gated, name) in [(true, "gated-after"), (false, "direct-after")] {
        farm.build(&project, gated, name);
        assert_eq!(
            files_by_extension(project.path(), &["o"]),
            reference,
            "{name}"
        );
        let placed = nodes_of(&project.jobs(name));
        println!("{name} build: jobs per node {placed:?}");
        assert!(
            placed.get("n3").copied().unwrap_or(0) > 0,
            "{name}: {placed:?}"
        );
    }
}

/// Where `count` runs of `mexec ARGS -- true` went, by node; all must
/// succeed.
fn placements(
    mut command: impl FnMut() -> Command,
    count: usize,
    log: &Path,
) -> HashMap<String, usize> {
    let _ = std::fs::remove_file(log);
    for _ in 0..count {
        let out = command().env("MEXEC_JOBLOG", log).output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let jobs: Vec<serde_json::Value> = std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    nodes_of(&jobs)
}

#[test]
fn require_places_only_on_nodes_with_the_property_and_an_unmet_one_is_an_error() {
    let mut farm = mexec_testkit::GatedFarm::start(&[], &[]);
    for (name, label) in [("n1", "gpu"), ("n2", "rack=r2"), ("n3", "rack=r3")] {
        farm.add_with(name, 2, &["--label", label, "--direct-jobs", "allow"]);
    }
    assert!(wait_until(Duration::from_secs(10), || farm.members().len() == 3));
    let nodes: String = farm
        .executors
        .iter()
        .map(Executor::node)
        .collect::<Vec<_>>()
        .join(",");
    let dir = job_dir();
    let log = dir.path().join("jobs.jsonl");
    let gated = |args: &[&str]| {
        let mut command = farm.mexec(dir.path(), args);
        command.env_remove("MEXEC_REQUIRE");
        command
    };
    let direct = |args: &[&str]| {
        let mut command = gated(args);
        command
            .env("MEXEC_NODES", &nodes)
            .env_remove("MEXEC_GATEKEEPER");
        command
    };
    for (way, run) in [
        ("gated", &gated as &dyn Fn(&[&str]) -> Command),
        ("direct", &direct),
    ] {
        let on = placements(
            || run(&["--no-local", "--require", "label:gpu", "--", "true"]),
            6,
            &log,
        );
        println!("{way} --require label:gpu: {on:?}");
        assert_eq!(on, HashMap::from([("n1".to_owned(), 6)]), "{way}");
        let on = placements(
            || {
                let mut c = run(&["--no-local", "--", "true"]);
                c.env("MEXEC_REQUIRE", "label:rack=r2, os=linux");
                c
            },
            4,
            &log,
        );
        println!("{way} MEXEC_REQUIRE=label:rack=r2,os=linux: {on:?}");
        assert_eq!(on, HashMap::from([("n2".to_owned(), 4)]), "{way}");

        // No node has it: an error, and never a local run (this machine is
        // not known to have it either).
        let out = run(&["--require", "label:wine", "--", "touch", "ran-here"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("{way} --require label:wine: {stderr}");
        assert_eq!(out.status.code(), Some(255), "{way}: {stderr}");
        assert!(stderr.contains("lack"), "{way}: {stderr}");
        assert!(stderr.contains("label:wine"), "{way}: {stderr}");
        assert!(
            stderr.contains("not running it locally: it requires label:wine"),
            "{way}: {stderr}"
        );
        assert!(!dir.path().join("ran-here").exists(), "{way}");
    }
    let out = gated(&["--require", "arch", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&out.stderr).contains("requirement `arch`: use KEY=VALUE"));
}
