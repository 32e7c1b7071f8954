//! Relayed submission (`mexec --relay`, for clients outside the cluster):
//! the gatekeeper places the job and relays it, with the same semantics as a
//! direct run: bytes, exit codes, stdin, signals, a killed client.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use mexec_testkit::{job_dir, pid_alive, wait_until, GatedFarm};

fn relayed(farm: &GatedFarm, cwd: &std::path::Path, args: &[&str]) -> Command {
    let mut command = farm.mexec(cwd, &["--relay", "--no-local"]);
    command.args(args);
    command
}

#[test]
fn relayed_output_bytes_and_exit_codes_match_a_local_run() {
    let farm = GatedFarm::start(&[2], &[]);
    let dir = job_dir();
    let format: String = (0u16..=255).map(|b| format!("\\{b:03o}")).collect();
    let args = [
        "sh",
        "-c",
        "printf \"$1\"; printf \"$1\" >&2",
        "sh",
        &format,
    ];
    let here = Command::new("sh")
        .args(&args[1..])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let there = relayed(&farm, dir.path(), &args).output().unwrap();
    assert_eq!(there.stdout.len(), 256);
    assert_eq!(there.stdout, here.stdout);
    assert_eq!(there.stderr, here.stderr);

    for (script, expected) in [
        ("exit 0", 0),
        ("exit 1", 1),
        ("exit 42", 42),
        ("kill -KILL $$", 137),
        ("kill -TERM $$", 143),
    ] {
        let status = relayed(&farm, dir.path(), &["sh", "-c", script])
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(expected), "{script}");
    }
    assert_eq!(farm.leased_jobs(), Some(0), "leases released");
}

#[test]
fn relayed_stdin_is_forwarded() {
    let farm = GatedFarm::start(&[2], &[]);
    let dir = job_dir();
    let data: Vec<u8> = (0..500_000u32).map(|i| (i % 253) as u8).collect();
    let mut child = relayed(&farm, dir.path(), &["cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&sent));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(output.status.success());
    assert!(output.stdout == data);
}

/// A job that leaves a background process in its group (see testkit).
fn start_group_job(farm: &GatedFarm, dir: &std::path::Path) -> (std::process::Child, u32, u32) {
    mexec_testkit::start_group_job(relayed(farm, dir, &["-n"]), dir)
}

#[test]
fn relayed_ctrl_c_reaches_the_remote_group() {
    let farm = GatedFarm::start(&[2], &[]);
    let dir = job_dir();
    let (mut child, sh, bg) = start_group_job(&farm, dir.path());
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(child.wait().unwrap().code(), Some(130));
    assert!(wait_until(Duration::from_secs(10), || !pid_alive(sh) && !pid_alive(bg)));
}

#[test]
fn a_killed_relay_client_takes_its_job_with_it() {
    let farm = GatedFarm::start(&[2], &[]);
    let dir = job_dir();
    let (mut child, sh, bg) = start_group_job(&farm, dir.path());
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(wait_until(Duration::from_secs(15), || !pid_alive(sh) && !pid_alive(bg)));
    assert!(wait_until(Duration::from_secs(5), || farm.leased_jobs() == Some(0)));
}

#[test]
fn a_relayed_compile_matches_a_local_one() {
    let farm = GatedFarm::start(&[1, 1], &[]);
    let dir = job_dir();
    std::fs::write(
        dir.path().join("hello.c"),
        "#include <stdio.h>\nint main(void) { puts(\"hi\"); return 0; }\n",
    )
    .unwrap();
    mexec_testkit::give_to_job_user(dir.path());
    assert!(Command::new("gcc")
        .args(["-O2", "-c", "hello.c", "-o", "local.o"])
        .current_dir(dir.path())
        .status()
        .unwrap()
        .success());
    let status = relayed(
        &farm,
        dir.path(),
        &["gcc", "-O2", "-c", "hello.c", "-o", "relayed.o"],
    )
    .status()
    .unwrap();
    assert!(status.success());
    assert_eq!(
        std::fs::read(dir.path().join("local.o")).unwrap(),
        std::fs::read(dir.path().join("relayed.o")).unwrap()
    );
}

#[test]
fn a_relayed_job_no_node_will_start_runs_locally_and_is_never_called_possibly_run() {
    let mut farm = GatedFarm::start(&[], &[]);
    farm.add_with("n1", 1, &["--allowed-programs", "true"]);
    farm.add_with("n2", 1, &["--allowed-programs", "true"]);
    assert!(wait_until(Duration::from_secs(10), || farm.members().len() == 2));
    let dir = job_dir();
    let output = farm
        .mexec(dir.path(), &["--relay", "--", "sh", "-c", "echo here"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(output.stdout, b"here\n", "ran locally");
    assert!(stderr.contains("no node could run the job"), "{stderr}");
    assert!(stderr.contains("running sh locally"), "{stderr}");
    assert!(!stderr.contains("may have run"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line says why: {stderr}");

    let refused = farm
        .mexec(
            dir.path(),
            &["--relay", "--no-local", "--", "sh", "-c", "echo here"],
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(255), "{stderr}");
    assert!(refused.stdout.is_empty(), "nothing ran: {stderr}");
    assert!(!stderr.contains("may have run"), "{stderr}");
}
