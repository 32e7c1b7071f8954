//! The compiler forms (`CC=mexec`, `mexec gcc`, a masquerade symlink) on a
//! real C file, and a real third-party project built with its own Makefile.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use mexec_testkit::{c_project, copy_tree, give_to_job_user, job_dir, Farm};

const HELLO: &str = "#include <stdio.h>\nint main(void) { puts(\"hello\"); return 0; }\n";

fn placed(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!(
                "{}:{}",
                v["placed"].as_str().unwrap(),
                v["node"].as_str().unwrap()
            )
        })
        .collect()
}

fn compile_locally(dir: &Path, out: &str) -> Vec<u8> {
    let status = Command::new("gcc")
        .args(["-O2", "-c", "hello.c", "-o", out])
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read(dir.join(out)).unwrap()
}

#[test]
fn cc_form_mexec_gcc_form_and_masquerade_compile_remotely() {
    let farm = Farm::start(1, 2);
    let dir = job_dir();
    std::fs::write(dir.path().join("hello.c"), HELLO).unwrap();
    give_to_job_user(dir.path());
    let log = dir.path().join("jobs.jsonl");
    let reference = compile_locally(dir.path(), "local.o");

    // CC=mexec: the first argument is an option, so mexec runs $MEXEC_CC.
    let status = farm
        .mexec(dir.path(), &["-O2", "-c", "hello.c", "-o", "cc-form.o"])
        .env("MEXEC_CC", "gcc")
        .env("MEXEC_JOBLOG", &log)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        std::fs::read(dir.path().join("cc-form.o")).unwrap(),
        reference
    );

    let status = farm
        .mexec(
            dir.path(),
            &["gcc", "-O2", "-c", "hello.c", "-o", "gcc-form.o"],
        )
        .env("MEXEC_JOBLOG", &log)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        std::fs::read(dir.path().join("gcc-form.o")).unwrap(),
        reference
    );

    // Masquerade: a directory of symlinks first on PATH.
    let masq = dir.path().join("masq");
    std::fs::create_dir(&masq).unwrap();
    std::os::unix::fs::symlink(mexec_testkit::bin("mexec"), masq.join("gcc")).unwrap();
    let path = format!("{}:{}", masq.display(), std::env::var("PATH").unwrap());
    let mut gcc = Command::new("gcc");
    farm.aim(&mut gcc, dir.path());
    let status = gcc
        .args(["-O2", "-c", "hello.c", "-o", "masq.o"])
        .env("PATH", &path)
        .env("MEXEC_JOBLOG", &log)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(std::fs::read(dir.path().join("masq.o")).unwrap(), reference);

    assert_eq!(placed(&log), vec!["remote:n1"; 3]);
}

fn make(dir: &Path, args: &[&str], farm: Option<&Farm>) {
    let mut command = Command::new("make");
    if let Some(farm) = farm {
        farm.aim(&mut command, dir);
    }
    let output = command.args(args).current_dir(dir).output().unwrap();
    assert!(
        output.status.success(),
        "make {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn bzip2_builds_with_make_j8_cc_mexec_and_matches_a_local_build() {
    let source = c_project("bzip2-sys-0.1.13", "bzip2-1.0.8");
    let farm = Farm::start(3, 2);
    let dir = job_dir();
    let tree = dir.path().join("bzip2");
    copy_tree(&source, &tree);
    give_to_job_user(&tree);
    let log = dir.path().join("jobs.jsonl");

    // Same directory for both builds: debug info records the path.
    make(&tree, &["-j8", "CC=gcc"], None);
    let local = mexec_testkit::files_by_extension(&tree, &["o"]);
    assert!(local.len() >= 9, "{:?}", local.keys());
    make(&tree, &["clean"], None);

    let mut command = Command::new("make");
    farm.aim(&mut command, &tree);
    let cc = format!("CC={}", mexec_testkit::bin("mexec").display());
    let output = command
        .args(["-j8", &cc])
        .env("MEXEC_CC", "gcc")
        .env("MEXEC_JOBLOG", &log)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let remote = mexec_testkit::files_by_extension(&tree, &["o"]);
    assert_eq!(
        local.keys().collect::<Vec<_>>(),
        remote.keys().collect::<Vec<_>>()
    );
    for (name, bytes) in &local {
        assert!(
            remote[name] == *bytes,
            "{name} differs from the local build"
        );
    }
    let jobs = placed(&log);
    assert!(jobs.iter().all(|p| p.starts_with("remote:")), "{jobs:?}");
    let nodes: HashSet<_> = jobs.iter().collect();
    assert!(nodes.len() >= 2, "jobs went to {nodes:?}");
}

#[test]
fn the_example_client_config_under_deploy_parses() {
    let path = mexec_testkit::workspace_root().join("deploy/mexec.toml");
    let config: mexec_client::settings::FileConfig =
        mexec_common::config_file::load(&path).expect("deploy/mexec.toml parses");
    assert_eq!(config.nodes.map(|n| n.len()), Some(3));
    assert_eq!(config.cc.as_deref(), Some("gcc"));
    let rules = config.map.expect("the example has map rules");
    assert_eq!(rules.len(), 2);
    for rule in rules {
        rule.parse::<mexec_client::path_map::Rule>()
            .unwrap_or_else(|e| panic!("{rule}: {e}"));
    }
}
