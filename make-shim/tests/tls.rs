//! `mpmake` on a cluster that uses mutual TLS: its own queries carry the
//! certificate, and so do the `mexec` processes make starts. Certificates
//! are made with `mexec-cert`, as the README does.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mexec_testkit::{bin, give_to_job_user, job_dir, wait_until, Executor, Gatekeeper};

fn cert(pki: &Path, args: &[&str]) {
    let output = Command::new(bin("mexec-cert"))
        .args(args)
        .arg("--dir")
        .arg(pki)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn tls_flags(pki: &Path, name: &str) -> Vec<String> {
    let file = |f: String| pki.join(f).to_string_lossy().into_owned();
    vec![
        "--tls-ca".into(),
        file("ca.pem".into()),
        "--tls-cert".into(),
        file(format!("{name}.pem")),
        "--tls-key".into(),
        file(format!("{name}-key.pem")),
    ]
}

#[test]
fn mpmake_builds_on_a_tls_cluster_and_without_a_certificate_cannot_see_it() {
    let pki = tempfile::tempdir().unwrap();
    cert(pki.path(), &["ca"]);
    cert(pki.path(), &["node", "gk"]);
    cert(pki.path(), &["node", "n1"]);
    cert(pki.path(), &["user", "alice"]);
    let gk_flags = tls_flags(pki.path(), "gk");
    let gatekeeper = Gatekeeper::start(&gk_flags.iter().map(String::as_str).collect::<Vec<_>>());
    let mut node_flags = tls_flags(pki.path(), "n1");
    node_flags.extend(["--gatekeeper".into(), gatekeeper.address()]);
    let _node = Executor::start(
        "n1",
        3,
        &node_flags.iter().map(String::as_str).collect::<Vec<_>>(),
    );

    let dir = job_dir();
    for i in 1..=3 {
        std::fs::write(
            dir.path().join(format!("f{i}.c")),
            format!("int f{i}(void){{return {i};}}\n"),
        )
        .unwrap();
    }
    std::fs::write(dir.path().join("Makefile"), "all: f1.o f2.o f3.o\n").unwrap();
    give_to_job_user(dir.path());
    let mpmake = |tls: bool, args: &[&str]| {
        let mut command = Command::new(bin("mpmake"));
        command
            .current_dir(dir.path())
            .args(["--gatekeeper", &gatekeeper.address()])
            .args(args)
            .env_remove("MEXEC_NODES")
            .env_remove("MEXEC_CONFIG")
            .env_remove("MAKEFLAGS")
            .env_remove("MFLAGS")
            .env("MEXEC_NO_LOCAL", "true");
        for var in ["MEXEC_TLS_CA", "MEXEC_TLS_CERT", "MEXEC_TLS_KEY"] {
            command.env_remove(var);
        }
        if tls {
            let flags = tls_flags(pki.path(), "alice");
            command.args(&flags);
        }
        command.output().unwrap()
    };
    assert!(
        wait_until(Duration::from_secs(10), || {
            String::from_utf8_lossy(&mpmake(true, &["--print-jobs"]).stdout).trim() == "3"
        }),
        "mpmake with a certificate did not see the node's 3 slots"
    );
    let output = mpmake(true, &["--summary"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    for i in 1..=3 {
        assert!(
            dir.path().join(format!("f{i}.o")).exists(),
            "f{i}.o: {stderr}"
        );
    }

    // Without a certificate the gatekeeper does not answer, nor do the
    // nodes: --print-jobs still prints a number (this machine's CPUs, for
    // `ninja -j`), and says why on stderr.
    let jobs = mpmake(false, &["--print-jobs"]);
    let stderr = String::from_utf8_lossy(&jobs.stderr);
    assert!(jobs.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&jobs.stdout).trim(),
        mexec_common::host::cpu_count().to_string(),
        "a client without a certificate saw the cluster: {stderr}"
    );
    assert!(
        stderr.contains("gatekeeper") && stderr.contains("sizing make for this machine's"),
        "{stderr}"
    );
}
