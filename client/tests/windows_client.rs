//! The Windows client for real: `mexec.exe` (built for
//! x86_64-pc-windows-gnu by scripts/test.sh) run under Wine submits through
//! a gatekeeper on loopback to Linux executors, as a Windows desktop
//! outside the cluster would: bytes on both streams, exit code, stdin, a
//! cwd mapped from a `Z:\` path, an unmapped one refused, Ctrl-C forwarded
//! as SIGINT; then leased and direct placement, and `--status`. Skipped,
//! with a message, where Wine, MinGW or the Windows build is missing. The
//! first start of the Wine prefix takes most of the test's time.

use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};

use mexec_testkit::wine::{windows_bin, Wine};
use mexec_testkit::{job_dir, GatedFarm};

/// Runs `mexec.exe` under `wine` in `cwd` with `args`, feeding `stdin`.
fn run_windows_client(
    wine: &Wine,
    exe: &Path,
    farm: &GatedFarm,
    cwd: &Path,
    args: &[&str],
    stdin: &[u8],
) -> Output {
    let mut command = wine.command(exe);
    command
        .current_dir(cwd)
        .args(["--gatekeeper", &farm.gatekeeper.address(), "--relay"])
        .args(args)
        .env("MEXEC_STATE_DIR", farm.state_dir.path())
        .env("CLIENT_ONLY", "from the desktop")
        .env_remove("MEXEC_NODES")
        .env_remove("MEXEC_CONFIG")
        .env_remove("MEXEC_MAP")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("start wine");
    let mut pipe = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || pipe.write_all(&data));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    output
}

/// The Windows name Wine gives a Unix path (its drive Z: is `/`).
fn wine_name(path: &Path) -> String {
    format!("Z:{}", path.display()).replace('/', "\\")
}

#[test]
fn the_windows_client_under_wine_runs_a_relayed_job_on_linux_executors() {
    let Some(exe) = windows_bin("mexec") else {
        return;
    };
    let Some(wine) = Wine::start() else {
        return;
    };
    // The test also places directly on the member node (below), which a
    // member node takes only when it allows direct jobs.
    let farm = GatedFarm::start_with(&[2], &[], &["--direct-jobs", "allow"]);
    let tree = job_dir();
    let desktop = tree.path().join("desktop");
    let export = tree.path().join("export");
    std::fs::create_dir_all(desktop.join("proj")).unwrap();
    std::fs::create_dir_all(export.join("proj")).unwrap();
    mexec_testkit::give_to_job_user(tree.path());
    let cwd = desktop.join("proj");
    let rule = format!("{}={}", wine_name(&desktop), export.display());

    // Every byte value on both streams, stdin through, the job's own exit
    // code, the cwd under its mapped name, and none of the desktop's
    // environment but what was named.
    let bytes: String = (0u16..=255).map(|b| format!("\\{b:03o}")).collect();
    let script = "cat; pwd; printf \"$1\"; printf \"$1\" >&2; \
                  printf '%s|%s|%s' \"${CLIENT_ONLY-unset}\" \"$NAMED\" \"$PATH\" >&2; exit 42";
    let output = run_windows_client(
        &wine,
        &exe,
        &farm,
        &cwd,
        &[
            "--no-local",
            "--map",
            &rule,
            "-e",
            "NAMED=given",
            "--",
            "sh",
            "-c",
            script,
            "sh",
            &bytes,
        ],
        b"stdin from the desktop\n",
    );
    let all_bytes: Vec<u8> = (0u8..=255).collect();
    let mut expected_out = b"stdin from the desktop\n".to_vec();
    expected_out.extend_from_slice(format!("{}\n", export.join("proj").display()).as_bytes());
    expected_out.extend_from_slice(&all_bytes);
    let mut expected_err = all_bytes.clone();
    expected_err.extend_from_slice(b"unset|given|/usr/local/bin:/usr/bin:/bin");
    assert_eq!(
        output.status.code(),
        Some(42),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.stdout, expected_out);
    assert_eq!(output.stderr, expected_err);
    assert_eq!(farm.leased_jobs(), Some(0), "leases released");

    // A Windows cwd without a rule is refused here, before any node runs
    // anything in the wrong place.
    let output = run_windows_client(
        &wine,
        &exe,
        &farm,
        &cwd,
        &["--no-local", "--", "sh", "-c", "touch ran-anyway"],
        b"",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(255), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the working directory {} has no --map rule",
            wine_name(&cwd)
        )),
        "{stderr}"
    );
    assert!(!cwd.join("ran-anyway").exists());
    assert!(!export.join("proj/ran-anyway").exists());

    // Ctrl-C: Wine turns SIGINT to the Windows process into a console
    // Ctrl-C event, which the client forwards to the job as SIGINT.
    let out_file = tree.path().join("interrupted.out");
    let mut command = wine.command(&exe);
    command
        .current_dir(&cwd)
        .args(["--gatekeeper", &farm.gatekeeper.address(), "--relay"])
        .args(["--no-local", "-n", "--map", &rule, "--", "sh", "-c"])
        .arg("trap 'echo interrupted; exit 5' INT; echo started; while :; do sleep 0.1; done")
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(Stdio::null());
    let mut child = command.spawn().unwrap();
    let started = || std::fs::read_to_string(&out_file).unwrap_or_default() == "started\n";
    assert!(
        mexec_testkit::wait_until(std::time::Duration::from_secs(60), started),
        "the job did not start"
    );
    // SAFETY: kill has no memory effects; the pid is our running child's.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(5));
    assert_eq!(
        std::fs::read_to_string(&out_file).unwrap(),
        "started\ninterrupted\n"
    );

    // The other two ways to place: a lease from the gatekeeper and a
    // direct run (the client's own placement state, with Windows' file
    // locks and process checks), since loopback reaches the executors.
    let node = farm.executors[0].node();
    for placement in [
        vec!["--gatekeeper", farm.gatekeeper.address().as_str()],
        vec!["--nodes", node.as_str()],
    ] {
        let mut command = wine.command(&exe);
        command
            .current_dir(&cwd)
            .args(&placement)
            .args(["--no-local", "-n", "--map", &rule, "--", "sh", "-c"])
            .arg("pwd; exit 3")
            .env("MEXEC_STATE_DIR", farm.state_dir.path());
        let output = command.output().unwrap();
        assert_eq!(output.status.code(), Some(3), "{placement:?}: {output:?}");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            format!("{}\n", export.join("proj").display()),
            "{placement:?}"
        );
    }

    // `mexec --status` from Windows.
    let mut command = wine.command(&exe);
    command
        .current_dir(tree.path())
        .args(["--gatekeeper", &farm.gatekeeper.address()])
        .args(["--status", "--json"]);
    let output = command.output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(status.to_string().contains("\"n1\""), "{status}");
}
