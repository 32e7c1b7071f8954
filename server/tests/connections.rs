//! Connections that never speak, against a real `mexecd` with a low
//! descriptor limit: they are closed within the first-bytes deadline, the
//! caps keep them from taking the descriptors a job needs, and real jobs
//! run through it all.

use std::io::Read;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use mexec_testkit::{bin, job_dir, wait_until, Executor};

/// What the daemon promises: 10 s to send the first bytes.
const DEADLINE: Duration = Duration::from_secs(10);

fn mexec(node: &Executor, cwd: &Path, args: &[&str]) -> Command {
    let mut command = node.mexec(cwd, &["-n", "--"]);
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Jobs running on `node`, from its load report.
fn running(node: &Executor, cwd: &Path) -> u64 {
    let output = Command::new(bin("mexec"))
        .current_dir(cwd)
        .env("MEXEC_NODES", node.node())
        .env_remove("MEXEC_GATEKEEPER")
        .env_remove("MEXEC_CONFIG")
        .args(["--status", "--json"])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    status["nodes"][0]["running"].as_u64().unwrap_or(0)
}

fn check(output: &Output, stdout: &[u8]) {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.stdout, stdout);
}

#[test]
fn connections_that_never_speak_are_closed_and_jobs_still_run() {
    let mut limited = Command::new("prlimit");
    limited.arg("--nofile=256:256");
    // The flags after the program are mexecd's.
    limited.arg(bin("mexecd"));
    let node = Executor::start_with(limited, "fd-node", 2, &[]);
    let dir = job_dir();
    // A job that runs through the flood.
    let bystander = mexec(&node, dir.path(), &["sh", "-c", "sleep 3; echo survived"])
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || running(
        &node,
        dir.path()
    ) == 1));
    let started = Instant::now();
    let mut idle: Vec<TcpStream> = (0..500)
        .map(|_| TcpStream::connect(node.addr).unwrap())
        .collect();
    check(&bystander.wait_with_output().unwrap(), b"survived\n");

    // Every idle connection is closed by the daemon: at once past a cap,
    // else at the deadline.
    for stream in &mut idle {
        stream
            .set_read_timeout(Some(DEADLINE + Duration::from_secs(5)))
            .unwrap();
        // The daemon speaks first (its HTTP/2 settings): read to the end.
        let mut sink = Vec::new();
        match stream.read_to_end(&mut sink) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("an idle connection stayed open: {e}"),
        }
    }
    assert!(started.elapsed() < DEADLINE + Duration::from_secs(10));
    assert!(
        node.log_text().contains("connection cap reached"),
        "{}",
        node.log_text()
    );
    drop(idle);
    // And the node takes new work.
    check(
        &mexec(&node, dir.path(), &["sh", "-c", "echo after"])
            .output()
            .unwrap(),
        b"after\n",
    );
}
