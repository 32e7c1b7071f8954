//! Refusals on record, against real `mexecd`, `mexec-gatekeeper` and
//! `mexec` processes: every kind of refusal is one warning in the daemon's
//! log naming the kind, the peer, the user and the node; a flood of them is
//! one line; a peer outside the version rule is refused with both
//! versions named, on both daemons; and a failed TLS handshake (no
//! certificate, another CA, no TLS at all) is on record with the peer and
//! why. `every_refusal_kind_has_a_record_test` holds every kind in
//! `Refusal::ALL` to a test here.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use mexec_common::connector::{AuthChannel, Connector};
use mexec_common::farm::CLIENT_TIMEOUTS;
use mexec_common::refusal::Refusal;
use mexec_common::token::Token;
use mexec_proto::v1::executor_client::ExecutorClient;
use mexec_proto::v1::gatekeeper_client::GatekeeperClient;
use mexec_proto::v1::{run_request, ClusterStatusRequest, JobSpec, RunRequest};
use mexec_testkit::pki::Pki;
use mexec_testkit::{bin, job_dir, wait_until, Executor, Gatekeeper};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

fn token_file(dir: &Path, name: &str, secret: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// The refusal lines of a JSON log.
fn refusals(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["message"] == "refused")
        .collect()
}

/// Waits for the refusal line of `kind` whose reason contains `reason`.
fn refusal_line(log: impl Fn() -> String, kind: &str, reason: &str) -> Value {
    let find = || {
        refusals(&log())
            .into_iter()
            .find(|l| l["kind"] == kind && l["reason"].as_str().unwrap_or("").contains(reason))
    };
    assert!(
        wait_until(Duration::from_secs(5), || find().is_some()),
        "no `{kind}` refusal with `{reason}` on record:\n{}",
        log()
    );
    find().unwrap()
}

fn mexec(node: &Executor, cwd: &Path, token: &Path, user: &str, args: &[&str]) -> Command {
    let mut command = node.mexec(cwd, &["--"]);
    command
        .args(args)
        .env("MEXEC_TOKEN_FILE", token)
        .env("MEXEC_SUBMIT_USER", user);
    command
}

fn job(argv: &[&str], cwd: &str) -> JobSpec {
    JobSpec {
        argv: argv.iter().map(|a| Bytes::from(a.to_string())).collect(),
        cwd: Bytes::from(cwd.to_owned()),
        umask: 0o022,
        job_id: "refused".into(),
        user: "alice".into(),
        ..JobSpec::default()
    }
}

/// Sends `spec` over `client` and returns the refusal.
async fn refused(mut client: ExecutorClient<AuthChannel>, spec: JobSpec) -> tonic::Status {
    let (tx, rx) = mpsc::channel(1);
    tx.send(RunRequest {
        msg: Some(run_request::Msg::Start(spec)),
    })
    .await
    .unwrap();
    let result = client.run(ReceiverStream::new(rx)).await;
    drop(tx);
    match result {
        Ok(mut stream) => stream.get_mut().message().await.expect_err("a refusal"),
        Err(status) => status,
    }
}

#[tokio::test]
async fn every_refusal_of_an_executor_is_on_its_record_once_per_flood() {
    let dir = job_dir();
    let secrets = tempfile::tempdir().unwrap();
    let token = token_file(secrets.path(), "token", "the-cluster-token");
    let wrong = token_file(secrets.path(), "wrong", "not-the-token");
    let node = Executor::start(
        "n1",
        2,
        &[
            "--log-format",
            "json",
            "--token-file",
            token.to_str().unwrap(),
            "--allowed-users",
            "alice",
            "--allowed-programs",
            "true,echo",
        ],
    );
    let log = || node.log_text();

    // A wrong token, thirty times: one line on record.
    for _ in 0..30 {
        let output = mexec(&node, dir.path(), &wrong, "alice", &["true"])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(255));
    }
    let line = refusal_line(log, "unauthenticated", "missing or wrong token");
    assert_eq!(line["node"], "n1");
    assert!(
        line["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{line}"
    );
    let floods = refusals(&log())
        .into_iter()
        .filter(|l| l["kind"] == "unauthenticated")
        .count();
    assert_eq!(floods, 1, "a flood is one line per window:\n{}", log());

    // The allow list, naming the claimed user.
    let output = mexec(&node, dir.path(), &token, "bob", &["true"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(255));
    let line = refusal_line(log, "denied", "user `bob` is not allowed");
    assert_eq!(
        (&line["user"], &line["proof"]),
        (&"bob".into(), &"claimed".into())
    );

    // The command policy (on another node: a second `denied` from this
    // peer within the window would only be counted).
    let policed = Executor::start(
        "n2",
        1,
        &[
            "--log-format",
            "json",
            "--token-file",
            token.to_str().unwrap(),
            "--allowed-programs",
            "true,echo",
        ],
    );
    let output = mexec(&policed, dir.path(), &token, "alice", &["sh", "-c", "true"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(255));
    let line = refusal_line(|| policed.log_text(), "denied", "command policy");
    assert_eq!(
        (&line["user"], &line["node"]),
        (&"alice".into(), &"n2".into())
    );

    // A request over a limit, and a working directory not there.
    let connector = Connector::new(
        None,
        Some(Token::from_file(&token).unwrap()),
        CLIENT_TIMEOUTS,
    );
    let client = ExecutorClient::new(connector.connect(&node.node()).await.unwrap());
    let cwd = dir.path().to_str().unwrap();
    let mut huge = job(&["echo"], cwd);
    huge.argv
        .extend((0..16).map(|_| Bytes::from(vec![b'a'; 64 * 1024])));
    let status = refused(client.clone(), huge).await;
    assert_eq!(Refusal::of(&status), Some(Refusal::Malformed), "{status:?}");
    refusal_line(log, "malformed", "too large");
    let status = refused(client.clone(), job(&["true"], "/no/such/tree/here")).await;
    assert_eq!(
        Refusal::of(&status),
        Some(Refusal::CwdMissing),
        "{status:?}"
    );
    let line = refusal_line(log, "cwd-missing", "/no/such/tree/here");
    assert_eq!(line["level"], "WARN");

    // A peer outside the version rule, refused naming both versions.
    let channel = Channel::from_shared(format!("http://{}", node.node()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(1);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    Token::from_file(&token)
        .unwrap()
        .attach(request.metadata_mut());
    request.metadata_mut().insert(
        mexec_common::version::METADATA_KEY,
        MetadataValue::from_static("7.0.0"),
    );
    drop(tx);
    let status = ExecutorClient::new(channel)
        .run(request)
        .await
        .expect_err("refused");
    assert_eq!(Refusal::of(&status), Some(Refusal::Version), "{status:?}");
    let ours = mexec_common::version::current().to_string();
    assert!(
        status.message().contains("the peer is mexec 7.0.0")
            && status
                .message()
                .contains(&format!("this executor is mexec {ours}")),
        "{status:?}"
    );
    refusal_line(log, "version", "the peer is mexec 7.0.0");
}

#[tokio::test]
async fn the_gatekeeper_puts_its_refusals_on_record_and_refuses_a_far_version() {
    let secrets = tempfile::tempdir().unwrap();
    let token = token_file(secrets.path(), "token", "the-cluster-token");
    let wrong = token_file(secrets.path(), "wrong", "not-the-token");
    let gatekeeper = Gatekeeper::start(&[
        "--log-format",
        "json",
        "--token-file",
        token.to_str().unwrap(),
    ]);
    let log = || gatekeeper.log_text();
    let dir = job_dir();
    let output = Command::new(bin("mexec"))
        .current_dir(dir.path())
        .env("MEXEC_GATEKEEPER", gatekeeper.address())
        .env("MEXEC_STATE_DIR", dir.path())
        .env("MEXEC_TOKEN_FILE", &wrong)
        .env_remove("MEXEC_NODES")
        .args(["--no-local", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(255));
    let line = refusal_line(log, "unauthenticated", "missing or wrong token");
    assert!(
        line["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{line}"
    );

    // An executor of a version two minors away cannot join.
    let far = far_version();
    let mut command = Command::new(bin("mexecd"));
    command.env(mexec_common::version::TEST_OVERRIDE_VAR, &far);
    let node = Executor::start_with(
        command,
        "n9",
        1,
        &[
            "--gatekeeper",
            &gatekeeper.address(),
            "--token-file",
            token.to_str().unwrap(),
        ],
    );
    let line = refusal_line(log, "version", &format!("the peer is mexec {far}"));
    assert!(
        line["reason"]
            .as_str()
            .unwrap()
            .contains("this gatekeeper is mexec"),
        "{line}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || node
            .log_text()
            .contains(&format!("the peer is mexec {far}"))),
        "the node does not say why it cannot join:\n{}",
        node.log_text()
    );
    let connector = Connector::new(
        None,
        Some(Token::from_file(&token).unwrap()),
        CLIENT_TIMEOUTS,
    );
    let mut client = GatekeeperClient::new(connector.connect(&gatekeeper.address()).await.unwrap());
    let members = client
        .cluster_status(ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes;
    assert!(members.is_empty(), "{members:?}");
}

/// A version outside the rule from ours: two minor versions on.
fn far_version() -> String {
    let ours = mexec_common::version::current();
    format!("{}.{}.0", ours.major, ours.minor + 2)
}

/// A TLS executor `n1` of `pki`'s cluster, logging JSON.
fn tls_node(pki: &Pki) -> Executor {
    let mut flags = vec!["--log-format".to_owned(), "json".to_owned()];
    flags.extend(pki.daemon_flags("n1"));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Executor::start("n1", 1, &flags)
}

/// `mexec true` at `node` with user `alice`'s certificate from `ca_dir`.
fn mexec_as_alice(pki: &Pki, node: &Executor, cwd: &Path, ca_dir: &str) -> Command {
    let mut command = node.mexec(cwd, &["true"]);
    pki.client_env(&mut command, ca_dir, "alice");
    command
}

/// The `tls-handshake` line on record, checked to name a loopback peer.
fn handshake_line(log: impl Fn() -> String, node: &str, reason: &str) -> Value {
    let line = refusal_line(log, "tls-handshake", reason);
    assert_eq!(line["node"], node, "{line}");
    assert_eq!(line["proof"], "none", "{line}");
    assert!(
        line["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{line}"
    );
    line
}

#[tokio::test]
async fn every_failed_tls_handshake_is_on_record_with_the_peer_and_why() {
    let pki = Pki::new(&["n1", "gk"], &["alice"]);
    let dir = job_dir();
    // Each case on a daemon of its own: the record holds one line per
    // kind and peer address in ten seconds.

    // A real TLS client that trusts the cluster CA but has no certificate.
    let node = tls_node(&pki);
    let ca = std::fs::read(pki.path("cluster/ca.pem")).unwrap();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .domain_name("n1");
    let endpoint = Channel::from_shared(format!("https://{}", node.node()))
        .unwrap()
        .tls_config(tls)
        .unwrap();
    if let Ok(channel) = endpoint.connect().await {
        // TLS 1.3: the server reads the (empty) certificate after the
        // client thinks the handshake done; the first call fails.
        let call = ExecutorClient::new(channel)
            .status(mexec_proto::v1::StatusRequest {})
            .await;
        assert!(call.is_err(), "served without a certificate: {call:?}");
    }
    handshake_line(|| node.log_text(), "n1", "the client sent no certificate");

    // `mexec` without TLS: one line naming the settings it lacks, and the
    // job reported as not run.
    let node = tls_node(&pki);
    let output = node.mexec(dir.path(), &["true"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(255), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("executor n1 takes only mutual TLS")
            && stderr.contains("MEXEC_TLS_CA")
            && !stderr.contains("may have run"),
        "{stderr}"
    );
    handshake_line(|| node.log_text(), "n1", "plain-text HTTP/2");

    // A certificate from another CA.
    let node = tls_node(&pki);
    let output = mexec_as_alice(&pki, &node, dir.path(), "stranger")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(255), "{output:?}");
    handshake_line(|| node.log_text(), "n1", "not signed by this cluster's CA");

    // A plain HTTP/1 request on the TLS port.
    let node = tls_node(&pki);
    let mut socket = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut socket, b"GET /metrics HTTP/1.1\r\nHost: n1\r\n\r\n")
        .await
        .unwrap();
    handshake_line(
        || node.log_text(),
        "n1",
        "plain-text HTTP/1 request (`GET /metrics HTTP/1.1`)",
    );

    // The cluster's own user still gets in.
    let output = mexec_as_alice(&pki, &node, dir.path(), "cluster")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");

    // The gatekeeper keeps the same record.
    let mut flags = vec!["--log-format".to_owned(), "json".to_owned()];
    flags.extend(pki.daemon_flags("gk"));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let gatekeeper = Gatekeeper::start(&flags);
    let output = Command::new(bin("mexec"))
        .current_dir(dir.path())
        .env("MEXEC_GATEKEEPER", gatekeeper.address())
        .env("MEXEC_STATE_DIR", dir.path())
        .env_remove("MEXEC_NODES")
        .args(["--no-local", "--", "true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("takes only mutual TLS"), "{stderr}");
    let line = refusal_line(
        || gatekeeper.log_text(),
        "tls-handshake",
        "plain-text HTTP/2",
    );
    assert!(
        line["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{line}"
    );
}

/// A plain channel to `node`, as a client without token or TLS.
async fn plain_client(node: &Executor) -> ExecutorClient<AuthChannel> {
    let connector = Connector::new(None, None, CLIENT_TIMEOUTS);
    ExecutorClient::new(connector.connect(&node.node()).await.unwrap())
}

/// Sends `spec` and checks the refusal's kind and its line on `node`'s
/// record, whose reason contains `reason`.
async fn refused_on_record(node: &Executor, spec: JobSpec, kind: Refusal, reason: &str) -> Value {
    let status = refused(plain_client(node).await, spec).await;
    assert_eq!(Refusal::of(&status), Some(kind), "{status:?}");
    let line = refusal_line(|| node.log_text(), kind.as_str(), reason);
    assert_eq!(line["node"], node.name.as_str(), "{line}");
    assert!(
        line["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{line}"
    );
    line
}

#[tokio::test]
async fn each_refusal_kind_of_an_executor_is_on_its_record() {
    let dir = job_dir();
    let cwd = dir.path().to_str().unwrap();
    let node = Executor::start("n1", 1, &["--log-format", "json", "--max-queued", "0"]);

    // A property the node lacks, and a compiler that is not the client's.
    let mut needs = job(&["true"], cwd);
    needs.require = vec!["label:no-such-label".into()];
    refused_on_record(
        &node,
        needs,
        Refusal::UnmetRequirement,
        "label:no-such-label",
    )
    .await;
    let mut compile = job(&["gcc", "--version"], cwd);
    compile.env = vec![mexec_proto::v1::EnvVar {
        name: "PATH".into(),
        value: "/usr/bin:/bin".into(),
    }];
    compile.toolchain = Some(mexec_proto::v1::ToolchainFingerprint {
        program: "gcc".into(),
        digest: "0".repeat(64),
        version: "0.0.1".into(),
        target: "x86_64-linux-gnu".into(),
        driver: "/usr/bin/gcc".into(),
    });
    refused_on_record(&node, compile, Refusal::Toolchain, "gcc").await;

    // The gatekeeper's service asked of an executor.
    let channel = Connector::new(None, None, CLIENT_TIMEOUTS)
        .connect(&node.node())
        .await
        .unwrap();
    let status = GatekeeperClient::new(channel)
        .cluster_status(ClusterStatusRequest {})
        .await
        .expect_err("an executor is no gatekeeper");
    assert_eq!(Refusal::of(&status), Some(Refusal::WrongService));
    refusal_line(
        || node.log_text(),
        "wrong-service",
        "is an executor, not a gatekeeper",
    );

    // A tree the job account may not enter (jobs run as another account
    // only under a root daemon).
    if mexec_testkit::is_root() {
        let private = tempfile::tempdir().unwrap();
        std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let spec = job(&["true"], private.path().to_str().unwrap());
        refused_on_record(&node, spec, Refusal::CwdDenied, "").await;
    }

    // Busy: the one slot taken, no queue.
    let (tx, rx) = mpsc::channel(4);
    tx.send(RunRequest {
        msg: Some(run_request::Msg::Start(job(&["sleep", "30"], cwd))),
    })
    .await
    .unwrap();
    let mut holder = plain_client(&node).await;
    let mut running = holder
        .run(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert!(
        running.message().await.unwrap().is_some(),
        "the job started"
    );
    refused_on_record(&node, job(&["true"], cwd), Refusal::Busy, "").await;

    // Draining: stopped with a job running, the node takes no new one.
    node.signal(libc::SIGTERM);
    let line = refused_on_record(&node, job(&["true"], cwd), Refusal::Draining, "").await;
    assert_eq!(line["user"], "alice", "{line}");
    drop((tx, running));

    // Streams that send nothing: two wait out the start timeout, the third
    // is over the per-peer cap.
    let quiet = Executor::start(
        "n2",
        1,
        &[
            "--log-format",
            "json",
            "--start-timeout-secs",
            "1",
            "--max-streams-per-peer",
            "2",
        ],
    );
    let client = plain_client(&quiet).await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut client = client.clone();
        streams.push(tokio::spawn(async move {
            let (tx, rx) = mpsc::channel::<RunRequest>(1);
            let result = client.run(ReceiverStream::new(rx)).await;
            drop(tx);
            match result {
                Ok(mut stream) => stream.get_mut().message().await.expect_err("a refusal"),
                Err(status) => status,
            }
        }));
    }
    for stream in streams {
        stream.await.unwrap();
    }
    refusal_line(|| quiet.log_text(), "limit", "too many open streams");
    refusal_line(|| quiet.log_text(), "start-timeout", "");
}

#[tokio::test]
async fn the_lease_and_no_node_refusals_are_on_record() {
    let json = ["--log-format", "json"];
    let mut farm = mexec_testkit::GatedFarm::start(&[], &json);
    for name in ["m1", "m2"] {
        farm.add_with(
            name,
            1,
            &["--log-format", "json", "--allowed-programs", "true"],
        );
    }
    assert!(wait_until(Duration::from_secs(10), || farm.members().len() == 2));
    let dir = job_dir();

    // A member takes no job without the gatekeeper's lease.
    let member = &farm.executors[0];
    let line = refused_on_record(
        member,
        job(&["true"], dir.path().to_str().unwrap()),
        Refusal::Lease,
        "",
    )
    .await;
    assert_eq!(line["user"], "alice", "{line}");

    // A relayed job every member refuses.
    let output = farm
        .mexec(
            dir.path(),
            &["--relay", "--no-local", "--", "sh", "-c", "true"],
        )
        .output()
        .unwrap();
    assert_ne!(output.status.code(), Some(0), "{output:?}");
    let line = refusal_line(|| farm.gatekeeper.log_text(), "no-node", "command policy");
    assert!(
        line["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{line}"
    );
}

/// Every kind has a test above that checks its line on record, or in
/// `every_failed_tls_handshake_is_on_record_with_the_peer_and_why`; a new
/// kind fails here until it gets one.
#[test]
fn every_refusal_kind_has_a_record_test() {
    let source = include_str!("refusal_log.rs");
    let tests = &source[..source
        .find("fn every_refusal_kind_has_a_record_test")
        .unwrap()];
    for kind in Refusal::ALL {
        // A line is looked for by its kind's name, or by the kind a
        // refusal was sent with (`refused_on_record`).
        let checked = [format!("\"{kind}\""), format!("Refusal::{kind:?},")];
        assert!(
            checked.iter().any(|c| tests.contains(c.as_str())),
            "no test checks the log line of refusal kind `{kind}`"
        );
    }
}
