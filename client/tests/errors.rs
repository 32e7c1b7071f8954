//! Errors and logs that say what to do, against real `mexec`, `mexecd`
//! and `mexec-gatekeeper` processes: each test asserts that the text names
//! the cause.

use std::process::Command;
use std::time::Duration;

use mexec_testkit::pki::Pki;
use mexec_testkit::{bin, job_dir, wait_until, Executor, Gatekeeper};

#[test]
fn an_empty_mexec_gatekeeper_means_unset() {
    let node = Executor::start("n1", 1, &[]);
    let dir = job_dir();
    let output = node
        .mexec(dir.path(), &["echo", "placed"])
        .env("MEXEC_GATEKEEPER", "")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.stdout, b"placed\n", "{stderr}");
    assert!(!stderr.contains("MEXEC_GATEKEEPER"), "{stderr}");
}

#[test]
fn daemon_logs_have_no_colour_codes_and_limits_in_words() {
    let node = Executor::start("n1", 1, &[]);
    let logged = || node.log_text().contains("executor started");
    assert!(
        wait_until(Duration::from_secs(5), logged),
        "{}",
        node.log_text()
    );
    let log = node.log_text();
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file: {log:?}"
    );
    let started = log
        .lines()
        .find(|l| l.contains("executor started"))
        .unwrap();
    assert!(
        started.contains("wall 24h") && started.contains("output 1 GiB"),
        "{started}"
    );
    assert!(!started.contains("JobLimits {"), "{started}");
}

#[test]
fn a_client_at_the_wrong_service_is_told_which_service_it_reached() {
    let node = Executor::start("n1", 1, &[]);
    let gatekeeper = Gatekeeper::start(&[]);
    let dir = job_dir();
    // The gatekeeper's address given as a node.
    let output = Command::new(bin("mexec"))
        .current_dir(dir.path())
        .env("MEXEC_NODES", gatekeeper.address())
        .env("MEXEC_STATE_DIR", dir.path())
        .env_remove("MEXEC_GATEKEEPER")
        .args(["--no-local", "true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(255));
    assert!(
        stderr.contains("is a gatekeeper, not an executor")
            && stderr.contains(&format!("MEXEC_GATEKEEPER={}", gatekeeper.address())),
        "{stderr}"
    );
    let status = Command::new(bin("mexec"))
        .env("MEXEC_NODES", gatekeeper.address())
        .env("MEXEC_STATE_DIR", dir.path())
        .env_remove("MEXEC_GATEKEEPER")
        .arg("--status")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(
        table.contains("is a gatekeeper, not an executor"),
        "{table}"
    );
    // An executor's address given as the gatekeeper.
    let output = Command::new(bin("mexec"))
        .current_dir(dir.path())
        .env("MEXEC_GATEKEEPER", node.node())
        .env("MEXEC_STATE_DIR", dir.path())
        .env_remove("MEXEC_NODES")
        .args(["--no-local", "true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("node n1 is an executor, not a gatekeeper")
            && stderr.contains(&format!("MEXEC_NODES={}", node.node())),
        "{stderr}"
    );
}

#[test]
fn a_job_denied_by_the_tree_says_which_account_it_ran_as() {
    if !mexec_testkit::is_root() {
        mexec_testkit::skip("jobs run as another account only under a root daemon");
        return;
    }
    let node = Executor::start("n1", 1, &[]);
    // A tree only root may write, as a user's checkout is to the job account.
    let tree = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        tree.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let output = node
        .mexec(tree.path(), &["sh", "-c", "echo x > out.o"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0), "{stderr}");
    let account = mexec_testkit::job_user_args().last().cloned().unwrap();
    assert!(
        stderr.contains(&format!("the job ran as `{account}`"))
            && stderr.contains(&format!("cannot write {}", tree.path().display())),
        "{stderr}"
    );
}

#[test]
fn status_json_has_one_schema_with_or_without_a_gatekeeper() {
    let gatekeeper = Gatekeeper::start(&[]);
    let node = Executor::start("n1", 2, &["--gatekeeper", &gatekeeper.address()]);
    let dir = job_dir();
    let status = |var: &str, value: &str| {
        let output = Command::new(bin("mexec"))
            .env_remove("MEXEC_NODES")
            .env_remove("MEXEC_GATEKEEPER")
            .env(var, value)
            .env("MEXEC_STATE_DIR", dir.path())
            .args(["--status", "--json"])
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
    };
    let keys = |value: &serde_json::Value| {
        let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    let gated = || status("MEXEC_GATEKEEPER", &gatekeeper.address());
    assert!(wait_until(Duration::from_secs(10), || gated()["nodes"]
        .as_array()
        .is_some_and(|n| n.len() == 1)));
    let (gated, direct) = (gated(), status("MEXEC_NODES", &node.node()));
    assert_eq!(keys(&gated), keys(&direct), "{gated:#}\n{direct:#}");
    assert_eq!(
        keys(&gated["nodes"][0]),
        keys(&direct["nodes"][0]),
        "{gated:#}\n{direct:#}"
    );
    assert_eq!(gated["nodes"][0]["slots"], direct["nodes"][0]["slots"]);
    assert_eq!(direct["gatekeeper"], serde_json::Value::Null);
    assert_eq!(gated["gatekeeper"], gatekeeper.address().as_str());
}

#[test]
fn a_missing_token_file_is_named_once_with_its_path() {
    let dir = job_dir();
    let missing = dir.path().join("no-such-token");
    let mexec = Command::new(bin("mexec"))
        .env("MEXEC_NODES", "127.0.0.1:1")
        .env("MEXEC_TOKEN_FILE", &missing)
        .env("MEXEC_STATE_DIR", dir.path())
        .env_remove("MEXEC_GATEKEEPER")
        .args(["--no-local", "true"])
        .output()
        .unwrap();
    let mexecd = Command::new(bin("mexecd"))
        .arg("--token-file")
        .arg(&missing)
        .args(mexec_testkit::job_user_args())
        .output()
        .unwrap();
    for output in [mexec, mexecd] {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(&format!("cannot read token file {}", missing.display())),
            "{stderr}"
        );
        assert_eq!(stderr.matches("No such file").count(), 1, "{stderr}");
    }
}

#[test]
fn the_job_log_records_queue_wait_run_time_and_the_target() {
    let node = Executor::start("n1", 1, &[]);
    let dir = job_dir();
    std::fs::write(dir.path().join("a.c"), "int a(void) { return 1; }\n").unwrap();
    let joblog = dir.path().join("jobs.jsonl");
    // The one slot is taken for a second: the compile waits for it.
    let mut holder = node.mexec(dir.path(), &["sleep", "1"]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let output = node
        .mexec(dir.path(), &["gcc", "-c", "a.c", "-o", "a.o"])
        .env("MEXEC_JOBLOG", &joblog)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    holder.wait().unwrap();
    let text = std::fs::read_to_string(&joblog).unwrap();
    let entry: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(entry["target"], "a.o", "{entry}");
    let (wall, wait, run) = (
        entry["wall_ms"].as_u64().unwrap(),
        entry["wait_ms"].as_u64().unwrap(),
        entry["run_ms"].as_u64().unwrap(),
    );
    assert_eq!(wall, wait + run, "{entry}");
    assert!(wait >= 400, "the compile waited for the slot: {entry}");
}

#[test]
fn explain_says_why_the_job_went_where_it_went() {
    let node = Executor::start("n1", 1, &[]);
    let dir = job_dir();
    let output = node
        .mexec(dir.path(), &["--explain", "true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "running true on {}: the least busy per slot",
            node.node()
        )),
        "{stderr}"
    );
    let gatekeeper = Gatekeeper::start(&[]);
    let member = Executor::start("m1", 1, &["--gatekeeper", &gatekeeper.address()]);
    let leased = || {
        let output = Command::new(bin("mexec"))
            .current_dir(dir.path())
            .env("MEXEC_GATEKEEPER", gatekeeper.address())
            .env("MEXEC_STATE_DIR", dir.path())
            .env_remove("MEXEC_NODES")
            .args(["--no-local", "--explain", "true"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    assert!(
        wait_until(Duration::from_secs(10), || leased()
            .contains("running true on m1 (")),
        "{}",
        member.log_text()
    );
    assert!(
        leased().contains("leased by the gatekeeper"),
        "{}",
        leased()
    );
}

/// The one line of `mexec --no-local true` at `nodes`, which must fail
/// without running anything; `setup` adds settings to the command.
fn refused_line(nodes: &str, setup: impl FnOnce(&mut Command)) -> String {
    let dir = job_dir();
    let mut command = Command::new(bin("mexec"));
    command
        .current_dir(dir.path())
        .env("MEXEC_NODES", nodes)
        .env("MEXEC_STATE_DIR", dir.path())
        .env_remove("MEXEC_GATEKEEPER")
        .env_remove("MEXEC_TOKEN_FILE")
        .args(["--no-local", "--", "true"]);
    setup(&mut command);
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(255), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!stderr.contains("may have run"), "{stderr}");
    stderr
}

#[test]
fn a_client_without_tls_at_a_tls_port_is_told_the_settings_it_lacks() {
    let pki = Pki::new(&["n1"], &["alice"]);
    let flags = pki.daemon_flags("n1");
    let mut web = vec!["--metrics-listen", "127.0.0.1:0"];
    web.extend(flags.iter().map(String::as_str));
    let node = Executor::start("n1", 1, &web);
    let line = refused_line(&node.node(), |_| {});
    assert!(
        line.contains("executor n1 takes only mutual TLS, and this client connected without TLS")
            && line.contains("MEXEC_TLS_CA, MEXEC_TLS_CERT, MEXEC_TLS_KEY"),
        "{line}"
    );
    // A TLS port that is not a mexec gRPC port (the node's HTTPS metrics
    // listener) cannot answer in gRPC: the client asks what it is.
    let metrics = mexec_testkit::announced(node.pid(), "metrics").expect("metrics address");
    let line = refused_line(&metrics.to_string(), |_| {});
    assert!(
        line.contains(&format!(
            "{metrics} takes TLS, and this client connects without it"
        )) && line.contains("MEXEC_TLS_CERT"),
        "{line}"
    );
    // With the certificate, the same node runs the job.
    let dir = job_dir();
    let mut command = node.mexec(dir.path(), &["echo", "in"]);
    pki.client_env(&mut command, "cluster", "alice");
    let output = command.output().unwrap();
    assert_eq!(output.stdout, b"in\n", "{output:?}");
}

#[test]
fn a_tls_client_at_a_node_without_tls_is_told_so() {
    let pki = Pki::new(&[], &["alice"]);
    let dir = job_dir();
    let token = dir.path().join("token");
    std::fs::write(&token, "the-token\n").unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let node = Executor::start("n1", 1, &["--token-file", token.to_str().unwrap()]);
    let line = refused_line(&node.node(), |command| {
        pki.client_env(command, "cluster", "alice");
        command.env("MEXEC_TOKEN_FILE", &token);
    });
    assert!(
        line.contains("no TLS there: it answered this client's TLS hello in plain text")
            && line.contains("MEXEC_TOKEN_FILE")
            && line.contains("--tls-ca"),
        "{line}"
    );
    // The node has it on record too.
    let logged = || {
        node.log_text().lines().any(|l| {
            l.contains("kind=\"tls-handshake\"") && l.contains("a TLS client on this port")
        })
    };
    assert!(
        wait_until(Duration::from_secs(5), logged),
        "{}",
        node.log_text()
    );
}

#[test]
fn a_client_at_a_plain_http_port_is_told_it_is_not_grpc() {
    // A real HTTP/1 server: Python's.
    let mut server = Command::new("python3")
        .args(["-m", "http.server", "0", "--bind", "127.0.0.1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    let mut stdout = std::io::BufReader::new(server.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut stdout, &mut banner).unwrap();
    // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
    let port = banner.split_whitespace().nth(5).unwrap().to_owned();
    let address = format!("127.0.0.1:{port}");
    let line = refused_line(&address, |_| {});
    // The same address as the gatekeeper.
    let dir = job_dir();
    let gated = Command::new(bin("mexec"))
        .current_dir(dir.path())
        .env("MEXEC_GATEKEEPER", &address)
        .env("MEXEC_STATE_DIR", dir.path())
        .env_remove("MEXEC_NODES")
        .args(["--no-local", "--", "true"])
        .output()
        .unwrap();
    let status = Command::new(bin("mexec"))
        .env("MEXEC_NODES", &address)
        .env("MEXEC_STATE_DIR", dir.path())
        .env_remove("MEXEC_GATEKEEPER")
        .arg("--status")
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        line.contains(&format!(
            "{address} is not a mexec daemon's gRPC port: it answers plain HTTP/1 (`HTTP/1."
        )) && line.contains("--listen address in MEXEC_NODES"),
        "{line}"
    );
    let stderr = String::from_utf8_lossy(&gated.stderr);
    assert!(
        stderr.contains(&format!(
            "gatekeeper {address} unreachable ({address} is not a mexec daemon's gRPC port"
        )),
        "{stderr}"
    );
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(
        table.contains("unreachable: ") && table.contains("is not a mexec daemon's gRPC port"),
        "{table}"
    );
    // A daemon's own metrics port, given as a node.
    let node = Executor::start("n1", 1, &["--metrics-listen", "127.0.0.1:0"]);
    let metrics = mexec_testkit::announced(node.pid(), "metrics").expect("metrics address");
    let line = refused_line(&metrics.to_string(), |_| {});
    assert!(
        line.contains("is not a mexec daemon's gRPC port") && line.contains("HTTP/1.1 404"),
        "{line}"
    );
}
