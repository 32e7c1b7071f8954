//! Clients whose paths or operating system differ from the executors':
//! path mapping (`--map`) with a working directory that exists on the node
//! only under its mapped name, and what a client on another operating
//! system sends (`MEXEC_CLUSTER_OS` makes this Linux client one).

use std::path::{Path, PathBuf};
use std::process::Command;

use mexec_testkit::{job_dir, Executor, Farm};

/// A tree with the desktop's name of a project and the executors' name of
/// the same project: `desktop/proj` and `export/proj`, with an input file
/// only in the latter (the executors' copy).
struct Tree {
    root: tempfile::TempDir,
}

impl Tree {
    fn new() -> Tree {
        let root = job_dir();
        for side in ["desktop/proj", "export/proj"] {
            std::fs::create_dir_all(root.path().join(side)).unwrap();
        }
        std::fs::write(root.path().join("export/proj/input.txt"), "on the export\n").unwrap();
        mexec_testkit::give_to_job_user(root.path());
        Tree { root }
    }

    fn desktop(&self) -> PathBuf {
        self.root.path().join("desktop")
    }

    fn export(&self) -> PathBuf {
        self.root.path().join("export")
    }

    fn rule(&self) -> String {
        format!("{}={}", self.desktop().display(), self.export().display())
    }
}

/// A node on which `hidden` does not exist: it runs in a mount namespace
/// where an empty tmpfs covers it. None where that needs privileges we lack.
fn node_without(hidden: &Path) -> Option<Executor> {
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
        .arg(mexec_testkit::bin("mexecd"));
    Some(Executor::start_with(wrapped, "exported", 2, &[]))
}

#[test]
fn a_cwd_that_exists_on_the_node_only_under_its_mapped_name_runs_there() {
    let tree = Tree::new();
    let Some(node) = node_without(&tree.desktop()) else {
        return;
    };
    let mut farm = Farm::start(0, 1);
    farm.executors.push(node);
    let cwd = tree.desktop().join("proj");
    let input = cwd.join("input.txt");
    let script = "pwd; cat \"$1\"; echo made > out";

    // Without a rule the node cannot enter the directory: the control.
    let output = farm
        .mexec(&cwd, &["--no-local", "sh", "-c", script])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&output.stderr).contains("does not exist"));

    let rule = tree.rule();
    let output = farm
        .mexec(&cwd, &["--no-local", "--map", &rule, "--"])
        .args(["sh", "-c", script, "sh"])
        .arg(&input)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let expected = format!("{}\non the export\n", tree.export().join("proj").display());
    assert_eq!(String::from_utf8_lossy(&output.stdout), expected);
    assert!(tree.export().join("proj/out").is_file());
    assert!(!cwd.join("out").exists());

    // The same rule from the environment, as CC=mexec forms read it.
    let output = farm
        .mexec(&cwd, &["--no-local", "sh", "-c", "pwd"])
        .env("MEXEC_MAP", format!("/nowhere=/x;{rule}"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("{}\n", tree.export().join("proj").display())
    );
}

#[test]
fn a_client_on_another_system_needs_its_cwd_mapped() {
    let farm = Farm::start(1, 2);
    let tree = Tree::new();
    let cwd = tree.desktop().join("proj");
    let output = farm
        .mexec(&cwd, &["--no-local", "true"])
        .env("MEXEC_CLUSTER_OS", "plan9")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(255));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("mexec: the working directory"),
        "{stderr}"
    );
    assert!(stderr.contains(&cwd.display().to_string()), "{stderr}");
    assert!(stderr.contains("--map"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn a_client_on_another_system_sends_only_named_and_portable_variables() {
    let farm = Farm::start(1, 2);
    let tree = Tree::new();
    let cwd = tree.desktop().join("proj");
    let rule = tree.rule();
    let script = "printf '%s\\n' \"${CLIENT_ONLY-unset}|$NAMED|$GIVEN|$LANG|$PATH|$SHELL\"; pwd";
    let run = |extra: &[&str]| {
        let output = farm
            .mexec(&cwd, &["--no-local", "--map", &rule, "-e", "NAMED"])
            .args(["-e", "GIVEN=S:\\not-mapped"])
            .args(extra)
            .args(["--", "sh", "-c", script])
            .env("MEXEC_CLUSTER_OS", "plan9")
            .env("CLIENT_ONLY", "1")
            .env("NAMED", "named value")
            .env("LANG", "C.UTF-8")
            .env("PATH", "/client/bin:/usr/bin:/bin")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let proj = tree.export().join("proj");
    assert_eq!(
        run(&[]),
        format!(
            "unset|named value|S:\\not-mapped|C.UTF-8|/usr/local/bin:/usr/bin:/bin|/bin/sh\n{}\n",
            proj.display()
        )
    );
    // --forward-env sends everything, as a client on the same system does.
    assert_eq!(
        run(&["--forward-env"]),
        format!(
            "1|named value|S:\\not-mapped|C.UTF-8|/client/bin:/usr/bin:/bin|{}\n{}\n",
            std::env::var("SHELL").unwrap_or_default(),
            proj.display()
        )
    );
}
