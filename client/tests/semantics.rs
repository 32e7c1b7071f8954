//! `mexec` behaves as the local command would: bytes, exit codes, stdin,
//! signals, and what happens when the client itself dies. Every test runs
//! the real `mexec` binary against real `mexecd` processes.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use mexec_testkit::{job_dir, pid_alive, wait_until, Farm};

fn local(args: &[&str], cwd: &std::path::Path) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .current_dir(cwd)
        .output()
        .unwrap()
}

#[test]
fn all_256_byte_values_arrive_identically_on_both_streams() {
    let farm = Farm::start(1, 2);
    let dir = job_dir();
    let format: String = (0u16..=255).map(|b| format!("\\{b:03o}")).collect();
    let args = [
        "sh",
        "-c",
        "printf \"$1\"; printf \"$1\" >&2",
        "sh",
        &format,
    ];
    let here = local(&args, dir.path());
    let remote = farm.mexec(dir.path(), &args).output().unwrap();
    assert_eq!(here.stdout.len(), 256);
    assert_eq!(remote.stdout, here.stdout);
    assert_eq!(remote.stderr, here.stderr);
    assert!(remote.status.success());
}

#[test]
fn non_utf8_arguments_and_environment_pass_as_bytes() {
    let farm = Farm::start(1, 2);
    let dir = job_dir();
    let arg = std::ffi::OsStr::from_bytes(b"caf\xe9-\xff\xfe");
    let value = std::ffi::OsStr::from_bytes(b"\xc3\x28 latin1 \xe9");
    let output = farm
        .mexec(
            dir.path(),
            &["sh", "-c", "printf '%s|%s' \"$1\" \"$WEIRD\"", "sh"],
        )
        .arg(arg)
        .env("WEIRD", value)
        .output()
        .unwrap();
    assert_eq!(output.stdout, b"caf\xe9-\xff\xfe|\xc3\x28 latin1 \xe9");
}

#[test]
fn exit_codes_and_deaths_by_signal_are_the_commands_own() {
    let farm = Farm::start(1, 4);
    let dir = job_dir();
    for (script, expected) in [
        ("exit 0", 0),
        ("exit 1", 1),
        ("exit 42", 42),
        ("kill -KILL $$", 137),
        ("kill -TERM $$", 143),
    ] {
        let status = farm
            .mexec(dir.path(), &["sh", "-c", script])
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(expected), "{script}");
    }
}

#[test]
fn stdin_is_forwarded_unless_told_not_to() {
    let farm = Farm::start(1, 2);
    let dir = job_dir();
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut child = farm
        .mexec(dir.path(), &["cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let to_send = data.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&to_send));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(output.status.success());
    assert_eq!(output.stdout.len(), data.len());
    assert!(output.stdout == data);

    let mut child = farm
        .mexec(dir.path(), &["-n", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"not forwarded")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.stdout, b"");
}

/// A job that leaves a background process in its group (see testkit).
fn start_group_job(farm: &Farm, dir: &std::path::Path) -> (std::process::Child, u32, u32) {
    mexec_testkit::start_group_job(farm.mexec(dir, &["-n"]), dir)
}

#[test]
fn ctrl_c_reaches_the_remote_group_and_nothing_is_left_behind() {
    let farm = Farm::start(1, 2);
    let dir = job_dir();
    let (mut child, sh, bg) = start_group_job(&farm, dir.path());
    assert!(pid_alive(sh) && pid_alive(bg));
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    // The background sleep ignores SIGINT (as in any non-interactive
    // shell); the executor still removes it with the job's group.
    assert!(wait_until(Duration::from_secs(10), || !pid_alive(sh) && !pid_alive(bg)));
}

#[test]
fn sigterm_and_sighup_are_forwarded() {
    let farm = Farm::start(1, 2);
    let dir = job_dir();
    for (signal, code) in [(libc::SIGTERM, 143), (libc::SIGHUP, 129)] {
        let _ = std::fs::remove_file(dir.path().join("sh.pid"));
        let _ = std::fs::remove_file(dir.path().join("bg.pid"));
        let (mut child, sh, _) = start_group_job(&farm, dir.path());
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(child.id() as i32, signal) };
        assert_eq!(child.wait().unwrap().code(), Some(code));
        assert!(wait_until(Duration::from_secs(10), || !pid_alive(sh)));
    }
}

#[test]
fn a_killed_client_takes_its_remote_job_with_it() {
    let farm = Farm::start(1, 2);
    let dir = job_dir();
    let (mut child, sh, bg) = start_group_job(&farm, dir.path());
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(wait_until(Duration::from_secs(15), || !pid_alive(sh) && !pid_alive(bg)));
}

#[test]
fn a_script_without_an_interpreter_line_runs_with_sh_as_execvp_runs_it() {
    use std::os::unix::fs::PermissionsExt;
    let farm = Farm::start(1, 2);
    let dir = job_dir();
    let script = dir.path().join("plain-script");
    std::fs::write(&script, "echo \"sh ran $0 with $1\"\nexit 3\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Through the PATH search and by a path, as the two ways a job names
    // its program.
    for (program, path) in [("plain-script", Some(dir.path())), ("./plain-script", None)] {
        let mut remote = farm.mexec(dir.path(), &[program, "arg1"]);
        if let Some(path) = path {
            remote.env("PATH", format!("{}:/usr/bin:/bin", path.display()));
        }
        let remote = remote.output().unwrap();
        // env(1) execs by execvp, as make's commands are run.
        let mut here = Command::new("/usr/bin/env");
        if let Some(path) = path {
            here.env("PATH", format!("{}:/usr/bin:/bin", path.display()));
        }
        let here = here
            .args([program, "arg1"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert_eq!(here.status.code(), Some(3), "{here:?}");
        assert_eq!(remote.status.code(), here.status.code(), "{remote:?}");
        assert_eq!(remote.stdout, here.stdout);
        assert!(
            String::from_utf8_lossy(&remote.stdout).contains("with arg1"),
            "{remote:?}"
        );
    }
}

#[test]
fn unknown_commands_exit_127_with_the_node_named() {
    let farm = Farm::start(1, 2);
    let dir = job_dir();
    let output = farm
        .mexec(dir.path(), &["no-such-command-mexec", "x"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(127));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("mexec: node "), "{stderr}");
    assert!(
        stderr.contains("command not found: no-such-command-mexec"),
        "{stderr}"
    );
}

#[test]
fn an_idle_open_stdin_does_not_keep_mexec_alive_after_the_job() {
    let farm = Farm::start(1, 2);
    let dir = job_dir();
    let mut child = farm
        .mexec(dir.path(), &["true"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    // stdin stays open and silent, as under ssh or a CI runner.
    let _stdin = child.stdin.take();
    let mut status = None;
    assert!(wait_until(Duration::from_secs(10), || {
        status = child.try_wait().unwrap();
        status.is_some()
    }));
    assert!(status.unwrap().success());
}

#[test]
fn ctrl_c_while_waiting_for_a_slot_leaves_without_running_the_job() {
    let mut farm = Farm::start(0, 1);
    farm.executors.push(mexec_testkit::Executor::start(
        "one-slot",
        1,
        &["--max-queued", "4"],
    ));
    let dir = job_dir();
    // The wait in a node's queue: without the agent (which holds such a
    // job on the build host instead; tests/agent.rs has that case).
    let blocker = farm
        .mexec(dir.path(), &["-n", "sleep", "30"])
        .env("MEXEC_AGENT", "0")
        .spawn()
        .unwrap();
    let mut blocker = KillOnDrop(blocker);
    // The only slot is taken before the second job asks.
    let running = || status_field(&farm, "running") == Some(1);
    assert!(wait_until(Duration::from_secs(10), running));
    let mut waiting = farm
        .mexec(dir.path(), &["-n", "sh", "-c", "touch ran"])
        .env("MEXEC_AGENT", "0")
        .spawn()
        .unwrap();
    let queued = || status_field(&farm, "queued") == Some(1);
    assert!(wait_until(Duration::from_secs(10), queued));
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(waiting.id() as i32, libc::SIGINT) };
    assert_eq!(waiting.wait().unwrap().code(), Some(130));
    blocker.0.kill().unwrap();
    let _ = blocker.0.wait();
    assert!(!dir.path().join("ran").exists());
}

struct KillOnDrop(std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn status_field(farm: &Farm, field: &str) -> Option<u64> {
    let dir = job_dir();
    let output = farm
        .mexec(dir.path(), &["--status", "--json"])
        .output()
        .ok()?;
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    rows["nodes"][0][field].as_u64()
}

#[test]
fn in_the_cc_form_version_probes_reach_the_compiler() {
    let farm = Farm::start(1, 2);
    let dir = job_dir();
    let output = farm
        .mexec(dir.path(), &["--version"])
        .env("MEXEC_CC", "gcc")
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("gcc"), "{text}");
    let output = farm
        .mexec(dir.path(), &["--mexec-version"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("mexec {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_job_dies_with_its_executor_even_when_the_executor_is_sigkilled() {
    // The daemon cannot clean up after SIGKILL; its group keeper does, so
    // no part of the job (not only the leader) runs on unwatched and
    // writes output while the job is rerun elsewhere.
    let farm = Farm::start(1, 2);
    let dir = job_dir();
    let (mut child, sh, bg) = start_group_job(&farm, dir.path());
    assert!(pid_alive(sh) && pid_alive(bg));
    farm.executors[0].signal(libc::SIGKILL);
    assert!(
        wait_until(Duration::from_secs(5), || !pid_alive(sh) && !pid_alive(bg)),
        "left running: shell {} background {}",
        pid_alive(sh),
        pid_alive(bg)
    );
    let _ = child.wait();
}
