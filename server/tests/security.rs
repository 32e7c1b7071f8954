//! Security against real `mexecd`, `mexec-gatekeeper` and `mexec`
//! processes on loopback: mutual TLS with certificates made here (one from
//! another CA, one expired), identity from the certificate, allow lists,
//! the command policy, job limits, and hostile requests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use bytes::Bytes;
use mexec_proto::v1::executor_client::ExecutorClient;
use mexec_proto::v1::{run_request, EnvVar, JobSpec, RunRequest};
use mexec_server::certs::{self, Kind, Validity};
use mexec_testkit::{bin, job_dir, wait_until, Executor, Gatekeeper};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// A cluster CA with node and user certificates, and a stranger's CA.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = certs::new_ca("test cluster CA", Validity::days(1)).unwrap();
        ca.write(dir.path(), "ca").unwrap();
        let hosts = ["127.0.0.1".to_owned(), "localhost".to_owned()];
        for node in ["n1", "n2", "gk"] {
            let cert = certs::issue(&ca, Kind::Node, node, &hosts, Validity::days(1)).unwrap();
            cert.write(dir.path(), node).unwrap();
        }
        for user in ["alice", "bob"] {
            let cert = certs::issue(&ca, Kind::User, user, &[], Validity::days(1)).unwrap();
            cert.write(dir.path(), user).unwrap();
        }
        let long_ago = Validity {
            not_before: time::OffsetDateTime::now_utc() - time::Duration::days(30),
            not_after: time::OffsetDateTime::now_utc() - time::Duration::days(1),
        };
        certs::issue(&ca, Kind::User, "alice", &[], long_ago)
            .unwrap()
            .write(dir.path(), "expired")
            .unwrap();
        let stranger = certs::new_ca("someone else's CA", Validity::days(1)).unwrap();
        certs::issue(&stranger, Kind::User, "alice", &[], Validity::days(1))
            .unwrap()
            .write(dir.path(), "stranger")
            .unwrap();
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    /// `--tls-*` flags for a daemon with the certificate of `node`.
    fn daemon_flags(&self, node: &str) -> Vec<String> {
        vec![
            "--tls-ca".into(),
            self.path("ca.pem"),
            "--tls-cert".into(),
            self.path(&format!("{node}.pem")),
            "--tls-key".into(),
            self.path(&format!("{node}-key.pem")),
        ]
    }

    /// Points a `mexec` command at the CA with the certificate `stem`.
    fn client_env(&self, command: &mut Command, stem: &str) {
        command
            .env("MEXEC_TLS_CA", self.path("ca.pem"))
            .env("MEXEC_TLS_CERT", self.path(&format!("{stem}.pem")))
            .env("MEXEC_TLS_KEY", self.path(&format!("{stem}-key.pem")));
    }
}

fn start_node(name: &str, extra: &[String]) -> Executor {
    let mut flags: Vec<&str> = vec!["--log-format", "json"];
    flags.extend(extra.iter().map(String::as_str));
    Executor::start(name, 2, &flags)
}

/// `mexec --no-local -- ARGS` at `nodes`, run in `cwd`.
fn mexec(nodes: &str, cwd: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(bin("mexec"));
    command
        .current_dir(cwd)
        .env("MEXEC_NODES", nodes)
        .env("MEXEC_STATE_DIR", cwd)
        .env_remove("MEXEC_GATEKEEPER")
        .env_remove("MEXEC_CONFIG")
        .env_remove("MEXEC_TLS_CA")
        .env_remove("MEXEC_TLS_CERT")
        .env_remove("MEXEC_TLS_KEY")
        .env_remove("MEXEC_TOKEN_FILE")
        .args(["--no-local", "--"])
        .args(args);
    command
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn jobs_run(node: &Executor) -> usize {
    node.log_text().matches("job finished").count()
}

#[test]
fn tls_refuses_no_certificate_another_ca_and_an_expired_one() {
    let pki = Pki::new();
    let node = start_node("n1", &pki.daemon_flags("n1"));
    let dir = job_dir();

    let plain = mexec(&node.node(), dir.path(), &["true"]).output().unwrap();
    assert_eq!(plain.status.code(), Some(255), "{}", stderr(&plain));
    assert!(stderr(&plain).contains("mutual TLS"), "{}", stderr(&plain));

    for stem in ["stranger", "expired"] {
        let mut command = mexec(&node.node(), dir.path(), &["true"]);
        pki.client_env(&mut command, stem);
        let output = command.output().unwrap();
        assert_eq!(
            output.status.code(),
            Some(255),
            "{stem}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains("mutual TLS"),
            "{stem}: {}",
            stderr(&output)
        );
    }
    assert_eq!(jobs_run(&node), 0, "a refused client ran a job");

    let mut command = mexec(&node.node(), dir.path(), &["echo", "hello"]);
    pki.client_env(&mut command, "alice");
    let output = command.output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(output.stdout, b"hello\n");
    assert_eq!(jobs_run(&node), 1);
}

#[test]
fn the_job_user_comes_from_the_certificate_not_the_claim() {
    let pki = Pki::new();
    let node = start_node("n1", &pki.daemon_flags("n1"));
    let dir = job_dir();
    let mut command = mexec(&node.node(), dir.path(), &["true"]);
    pki.client_env(&mut command, "alice");
    command.env("MEXEC_SUBMIT_USER", "bob");
    let output = command.output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let log = node.log_text();
    assert!(log.contains(r#""user":"alice""#), "{log}");
    assert!(!log.contains(r#""user":"bob""#), "{log}");
}

#[test]
fn users_off_the_allow_list_are_refused_by_executor_and_gatekeeper() {
    let pki = Pki::new();
    let mut flags = pki.daemon_flags("n1");
    flags.extend(["--allowed-users".into(), "alice".into()]);
    let node = start_node("n1", &flags);
    let dir = job_dir();

    let mut command = mexec(&node.node(), dir.path(), &["true"]);
    pki.client_env(&mut command, "bob");
    let output = command.output().unwrap();
    assert_eq!(output.status.code(), Some(255));
    assert!(
        stderr(&output).contains("user `bob` is not allowed here"),
        "{}",
        stderr(&output)
    );
    let mut command = mexec(&node.node(), dir.path(), &["true"]);
    pki.client_env(&mut command, "alice");
    assert_eq!(command.output().unwrap().status.code(), Some(0));

    // The gatekeeper's own list, for relayed jobs from outside the cluster.
    let mut gk_flags: Vec<String> = pki.daemon_flags("gk");
    gk_flags.extend(["--allowed-users".into(), "alice".into()]);
    let gk_flags: Vec<&str> = gk_flags.iter().map(String::as_str).collect();
    let gatekeeper = Gatekeeper::start(&gk_flags);
    let mut flags = pki.daemon_flags("n2");
    flags.extend(["--gatekeeper".into(), gatekeeper.address()]);
    let member = start_node("n2", &flags);
    let relayed = |user: &str| {
        let mut command = mexec("", dir.path(), &["echo", "relayed"]);
        command
            .env_remove("MEXEC_NODES")
            .env("MEXEC_GATEKEEPER", gatekeeper.address())
            .env("MEXEC_RELAY", "true");
        pki.client_env(&mut command, user);
        command.output().unwrap()
    };
    assert!(
        wait_until(Duration::from_secs(10), || relayed("alice").status.code()
            == Some(0)),
        "the node did not join over TLS: {}",
        member.log_text()
    );
    let output = relayed("bob");
    assert_eq!(output.status.code(), Some(255));
    assert!(
        stderr(&output).contains("user `bob` is not allowed here"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_program_outside_the_command_policy_is_refused_with_the_policy_named() {
    let node = start_node(
        "n1",
        &["--allowed-programs".into(), "true,/bin/echo".into()],
    );
    let dir = job_dir();
    let output = mexec(&node.node(), dir.path(), &["sh", "-c", "echo pwned"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(255));
    assert!(output.stdout.is_empty());
    let err = stderr(&output);
    assert!(
        err.contains("program `sh` is not allowed by this node's command policy")
            && err.contains("true, /bin/echo"),
        "{err}"
    );
    let output = mexec(&node.node(), dir.path(), &["echo", "fine"])
        .output()
        .unwrap();
    assert_eq!(output.stdout, b"fine\n", "{}", stderr(&output));
}

#[test]
fn jobs_over_their_memory_time_cpu_or_output_limit_are_killed_and_named() {
    let limits = |extra: &[&str]| {
        let mut flags = vec!["--max-memory-mib", "64", "--max-output-mib", "1"];
        flags.extend_from_slice(extra);
        flags.into_iter().map(String::from).collect::<Vec<_>>()
    };
    // The CPU limit needs a wall-clock limit it cannot hit first on a
    // busy machine; the wall-clock case a short one.
    let node = start_node("n1", &limits(&["--max-cpu-secs", "1"]));
    let hasty = start_node("n2", &limits(&["--max-wall-secs", "2"]));
    let dir = job_dir();
    let cases: [(&Executor, &[&str], &str, Option<i32>); 4] = [
        // Grows by 8 MiB every 20 ms, touching every page.
        (
            &node,
            &[
                "python3",
                "-c",
                "import time\nb=[]\nwhile True:\n b.append(b'x'*(8<<20))\n time.sleep(0.02)",
            ],
            "memory limit of 64 MiB exceeded",
            Some(128 + 9),
        ),
        (
            &hasty,
            &["sleep", "30"],
            "wall-clock time limit of 2s exceeded",
            Some(128 + 9),
        ),
        (
            &node,
            &["sh", "-c", "while :; do :; done"],
            "CPU time limit of 1s exceeded",
            None,
        ),
        (
            &node,
            &["yes"],
            "output limit of 1048576 bytes exceeded",
            // SIGPIPE or SIGKILL, whichever reaches it first.
            None,
        ),
    ];
    for (executor, argv, message, code) in cases {
        let output = mexec(&executor.node(), dir.path(), argv).output().unwrap();
        let err = stderr(&output);
        assert!(err.contains(message), "{argv:?}: {err}");
        assert_ne!(output.status.code(), Some(0), "{argv:?}");
        if code.is_some() {
            assert_eq!(output.status.code(), code, "{argv:?}: killed by SIGKILL");
        }
    }
    // A job within its limits is untouched.
    let output = mexec(&node.node(), dir.path(), &["echo", "ok"])
        .output()
        .unwrap();
    assert_eq!(output.stdout, b"ok\n", "{}", stderr(&output));
}

#[test]
fn a_root_daemon_with_tls_runs_jobs_as_the_configured_user() {
    if !mexec_testkit::is_root() {
        eprintln!("skipped: needs root to start mexecd as root");
        return;
    }
    let pki = Pki::new();
    // Executor::start adds `--user nobody` when run as root.
    let node = start_node("n1", &pki.daemon_flags("n1"));
    let dir = job_dir();
    let mut command = mexec(
        &node.node(),
        dir.path(),
        &["sh", "-c", "id -u; id -g; id -G"],
    );
    pki.client_env(&mut command, "alice");
    let output = command.output().unwrap();
    let (uid, gid) = mexec_testkit::job_account();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("{uid}\n{gid}\n{gid}\n"),
        "no root uid, gid or supplementary group: {}",
        stderr(&output)
    );
}

fn spec(argv: Vec<Bytes>, env: Vec<EnvVar>, cwd: &Path) -> JobSpec {
    JobSpec {
        argv,
        cwd: Bytes::copy_from_slice(cwd.as_os_str().as_encoded_bytes()),
        env,
        umask: 0o022,
        job_id: "hostile".into(),
        user: "tester".into(),
        ..JobSpec::default()
    }
}

async fn refusal(node: &Executor, spec: Option<JobSpec>) -> tonic::Status {
    let mut client = ExecutorClient::connect(format!("http://{}", node.addr))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(1);
    if let Some(spec) = spec {
        tx.send(RunRequest {
            msg: Some(run_request::Msg::Start(spec)),
        })
        .await
        .unwrap();
    }
    let result = client.run(ReceiverStream::new(rx)).await;
    drop(tx);
    match result {
        Ok(mut stream) => stream.get_mut().message().await.expect_err("a refusal"),
        Err(status) => status,
    }
}

#[tokio::test]
async fn hostile_requests_get_clear_errors_and_other_jobs_go_on() {
    let node = start_node(
        "n1",
        &["--start-timeout-secs", "1", "--max-streams-per-peer", "8"].map(String::from),
    );
    let dir = job_dir();
    // A job that runs through all of it.
    let bystander = mexec(
        &node.node(),
        dir.path(),
        &["sh", "-c", "sleep 3; echo survived"],
    )
    .spawn_output();

    let megabyte: Vec<Bytes> = std::iter::once(Bytes::from_static(b"echo"))
        .chain((0..16).map(|_| Bytes::from(vec![b'a'; 64 * 1024])))
        .collect();
    let status = refusal(&node, Some(spec(megabyte, Vec::new(), dir.path()))).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("the job is too large: argv (bytes)"),
        "{status:?}"
    );

    let crowd: Vec<EnvVar> = (0..10_000)
        .map(|i| EnvVar {
            name: Bytes::from(format!("VAR{i}")),
            value: Bytes::from_static(b"x"),
        })
        .collect();
    let status = refusal(
        &node,
        Some(spec(vec![Bytes::from_static(b"true")], crowd, dir.path())),
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("the environment (entries) is 10000, over the limit of 4096"),
        "{status:?}"
    );

    let status = refusal(&node, None).await;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("no job arrived within 1s"),
        "{status:?}"
    );

    // The real client says the same for a megabyte of arguments.
    let big_arg = "a".repeat(64 * 1024);
    let mut args = vec!["echo"];
    args.extend(std::iter::repeat_n(big_arg.as_str(), 16));
    let output = mexec(&node.node(), dir.path(), &args).output().unwrap();
    assert_eq!(output.status.code(), Some(255));
    assert!(stderr(&output).contains("too large"), "{}", stderr(&output));

    let output = bystander.wait();
    assert_eq!(output.stdout, b"survived\n", "{}", stderr(&output));
}

#[tokio::test]
async fn streams_beyond_the_per_peer_cap_are_refused() {
    let node = start_node(
        "n1",
        &["--start-timeout-secs", "3", "--max-streams-per-peer", "2"].map(String::from),
    );
    let client = ExecutorClient::connect(format!("http://{}", node.addr))
        .await
        .unwrap();
    // Three streams that say nothing, from one peer allowed two: one is
    // refused at once, the other two wait for their jobs until the start
    // timeout.
    let mut streams = Vec::new();
    for _ in 0..3 {
        let (tx, rx) = mpsc::channel::<RunRequest>(1);
        let mut client = client.clone();
        streams.push(tokio::spawn(async move {
            let result = client.run(ReceiverStream::new(rx)).await;
            drop(tx);
            match result {
                Ok(mut stream) => stream.get_mut().message().await.expect_err("a refusal"),
                Err(status) => status,
            }
        }));
    }
    let mut codes = Vec::new();
    for stream in streams {
        let status = stream.await.unwrap();
        if status.code() == Code::ResourceExhausted {
            assert!(
                status
                    .message()
                    .contains("too many open streams from 127.0.0.1 (2)"),
                "{status:?}"
            );
        }
        codes.push(status.code());
    }
    codes.sort_by_key(|c| *c as i32);
    assert_eq!(
        codes,
        [
            Code::DeadlineExceeded,
            Code::DeadlineExceeded,
            Code::ResourceExhausted
        ]
    );
}

#[test]
fn mexec_cert_makes_a_cluster_that_works() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().to_string_lossy().into_owned();
    let run = |args: &[&str]| {
        let output = Command::new(bin("mexec-cert")).args(args).output().unwrap();
        assert!(output.status.success(), "{args:?}: {}", stderr(&output));
    };
    run(&["ca", "--dir", &pki]);
    run(&["node", "n1", "--dir", &pki]);
    run(&["user", "carol", "--dir", &pki]);
    let again = Command::new(bin("mexec-cert"))
        .args(["ca", "--dir", &pki])
        .output()
        .unwrap();
    assert!(!again.status.success(), "a CA must not be replaced");
    let path = |f: &str| -> PathBuf { dir.path().join(f) };
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path("carol-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "keys are private");
    let flags: Vec<String> = vec![
        "--tls-ca".into(),
        pki.clone() + "/ca.pem",
        "--tls-cert".into(),
        pki.clone() + "/n1.pem",
        "--tls-key".into(),
        pki.clone() + "/n1-key.pem",
    ];
    let node = start_node("n1", &flags);
    let jobs = job_dir();
    let mut command = mexec(&node.node(), jobs.path(), &["echo", "via mexec-cert"]);
    command
        .env("MEXEC_TLS_CA", path("ca.pem"))
        .env("MEXEC_TLS_CERT", path("carol.pem"))
        .env("MEXEC_TLS_KEY", path("carol-key.pem"));
    let output = command.output().unwrap();
    assert_eq!(output.stdout, b"via mexec-cert\n", "{}", stderr(&output));
    assert!(node.log_text().contains(r#""user":"carol""#));
}

/// A child whose output is collected at the end.
trait SpawnOutput {
    fn spawn_output(&mut self) -> Running;
}

struct Running(std::process::Child);

impl Running {
    fn wait(self) -> Output {
        self.0.wait_with_output().unwrap()
    }
}

impl SpawnOutput for Command {
    fn spawn_output(&mut self) -> Running {
        Running(
            self.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        )
    }
}

/// Opens a Join stream to `gatekeeper` with the certificate `stem`,
/// registering as `node`; returns the refusal, if any.
async fn join_as(
    pki: &Pki,
    gatekeeper: &Gatekeeper,
    stem: &str,
    node: &str,
) -> Option<tonic::Status> {
    use mexec_common::tls::TlsPaths;
    use mexec_proto::v1::gatekeeper_client::GatekeeperClient;
    use mexec_proto::v1::{join_request, JoinRequest, Register};
    let tls = TlsPaths {
        ca: Some(pki.path("ca.pem").into()),
        cert: Some(pki.path(&format!("{stem}.pem")).into()),
        key: Some(pki.path(&format!("{stem}-key.pem")).into()),
    }
    .load()
    .unwrap()
    .unwrap();
    let channel = mexec_common::tls::endpoint(&gatekeeper.address(), Some(&tls))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(2);
    tx.send(JoinRequest {
        msg: Some(join_request::Msg::Register(Register {
            node: node.into(),
            address: "127.0.0.1:1".into(),
            port: 1,
        })),
    })
    .await
    .unwrap();
    let result = GatekeeperClient::new(channel)
        .join(ReceiverStream::new(rx))
        .await;
    drop(tx);
    result.err()
}

#[tokio::test]
async fn only_a_node_certificate_joins_and_only_under_its_own_name() {
    let pki = Pki::new();
    let flags = pki.daemon_flags("gk");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let gatekeeper = Gatekeeper::start(&flags);

    let user = join_as(&pki, &gatekeeper, "alice", "alice")
        .await
        .expect("refused");
    assert_eq!(user.code(), Code::PermissionDenied);
    assert!(
        user.message().contains("only a node certificate"),
        "{user:?}"
    );

    let impostor = join_as(&pki, &gatekeeper, "n1", "n2")
        .await
        .expect("refused");
    assert_eq!(impostor.code(), Code::PermissionDenied);
    assert!(
        impostor.message().contains("`n1` cannot register as `n2`"),
        "{impostor:?}"
    );

    assert!(join_as(&pki, &gatekeeper, "n1", "n1").await.is_none());
}

#[test]
fn gatekeeper_user_limits_go_by_the_certificate_not_the_claim() {
    let pki = Pki::new();
    let mut flags = pki.daemon_flags("gk");
    flags.extend(["--user-limit".into(), "alice=1".into()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let gatekeeper = Gatekeeper::start(&flags);
    let mut node_flags = pki.daemon_flags("n1");
    node_flags.extend(["--gatekeeper".into(), gatekeeper.address()]);
    let _node = Executor::start(
        "n1",
        4,
        &node_flags.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let dir = job_dir();
    let submit = |claim: &str| {
        // Two of these at once would find the lock taken and exit 9.
        let mut command = mexec(
            "",
            dir.path(),
            &["sh", "-c", "mkdir lock || exit 9; sleep 0.5; rmdir lock"],
        );
        command
            .env_remove("MEXEC_NODES")
            .env("MEXEC_GATEKEEPER", gatekeeper.address())
            .env("MEXEC_SUBMIT_USER", claim);
        pki.client_env(&mut command, "alice");
        command.spawn_output()
    };
    assert!(
        wait_until(Duration::from_secs(10), || {
            let mut probe = mexec("", dir.path(), &["true"]);
            probe
                .env_remove("MEXEC_NODES")
                .env("MEXEC_GATEKEEPER", gatekeeper.address());
            pki.client_env(&mut probe, "alice");
            probe.output().unwrap().status.success()
        }),
        "the node did not join"
    );
    // Each claims to be someone else; the certificate says alice, who may
    // hold one slot: the jobs run one after another.
    let jobs: Vec<Running> = ["x1", "x2", "x3"].into_iter().map(submit).collect();
    for job in jobs {
        let output = job.wait();
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    }
}

#[tokio::test]
async fn a_gatekeeper_stream_that_sends_nothing_is_closed_with_a_clear_error() {
    use mexec_proto::v1::gatekeeper_client::GatekeeperClient;
    let gatekeeper = Gatekeeper::start(&["--start-timeout-secs", "1"]);
    let mut client = GatekeeperClient::connect(format!("http://{}", gatekeeper.address()))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel::<RunRequest>(1);
    let status = match client.run(ReceiverStream::new(rx)).await {
        Ok(mut stream) => stream.get_mut().message().await.expect_err("a refusal"),
        Err(status) => status,
    };
    drop(tx);
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("nothing arrived within 1s"),
        "{status:?}"
    );
}

/// Starts `spec` on `node` and returns its response stream.
async fn start_job(
    node: &Executor,
    spec: JobSpec,
) -> tonic::Streaming<mexec_proto::v1::RunResponse> {
    let mut client = ExecutorClient::connect(format!("http://{}", node.addr))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(1);
    tx.send(RunRequest {
        msg: Some(run_request::Msg::Start(spec)),
    })
    .await
    .unwrap();
    // Keep the stream open (no stdin is forwarded): the job's end closes it.
    tokio::spawn(async move {
        tx.closed().await;
    });
    client
        .run(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner()
}

/// A job's stdout and exit code, read to the end of its stream.
async fn collect(
    mut stream: tonic::Streaming<mexec_proto::v1::RunResponse>,
) -> (Vec<u8>, Option<mexec_proto::v1::exit::Status>) {
    use mexec_proto::v1::run_response::Msg;
    let mut stdout = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        match message.msg {
            Some(Msg::Stdout(bytes)) => stdout.extend_from_slice(&bytes),
            Some(Msg::Exit(exit)) => return (stdout, exit.status),
            _ => {}
        }
    }
    (stdout, None)
}

fn path_env() -> Vec<EnvVar> {
    vec![EnvVar {
        name: "PATH".into(),
        value: "/usr/bin:/bin".into(),
    }]
}

#[tokio::test]
async fn a_program_swapped_while_its_job_is_queued_is_not_what_runs() {
    let node = Executor::start(
        "n1",
        1,
        &[
            "--log-format",
            "json",
            "--allowed-programs",
            "/usr/bin/gcc,sleep",
        ],
    );
    let dir = job_dir();
    let link = dir.path().join("gcc");
    std::os::unix::fs::symlink("/usr/bin/gcc", &link).unwrap();
    let argv = |args: &[&str]| args.iter().map(|a| Bytes::from(a.to_string())).collect();
    // The one slot is busy, so the next job waits in the queue.
    let busy = start_job(&node, spec(argv(&["sleep", "2"]), path_env(), dir.path())).await;
    let mut queued = start_job(
        &node,
        spec(argv(&["./gcc", "--version"]), path_env(), dir.path()),
    )
    .await;
    let first = queued.message().await.unwrap().unwrap().msg;
    assert!(
        matches!(first, Some(mexec_proto::v1::run_response::Msg::Queued(_))),
        "{first:?}"
    );
    // Checked as gcc; now the name points at a shell.
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("/bin/sh", &link).unwrap();

    let (stdout, status) = collect(queued).await;
    let text = String::from_utf8_lossy(&stdout);
    assert!(
        text.contains("Free Software Foundation"),
        "not gcc: {text:?}"
    );
    assert_eq!(status, Some(mexec_proto::v1::exit::Status::Code(0)));
    collect(busy).await;
    let log = node.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("./gcc"))
        .expect("a log line");
    assert!(line.contains(r#""program":"/usr/bin/"#), "{line}");
}

#[tokio::test]
async fn under_a_policy_loader_variables_are_dropped_and_plugins_refused() {
    let node = start_node(
        "n1",
        &["--allowed-programs".into(), "/usr/bin/env,gcc".into()],
    );
    let dir = job_dir();
    let mut env = path_env();
    for (name, value) in [
        ("LD_PRELOAD", "/tmp/evil.so"),
        ("GCC_EXEC_PREFIX", "/tmp/evil/"),
        ("LANG", "C"),
    ] {
        env.push(EnvVar {
            name: name.into(),
            value: value.into(),
        });
    }
    let job = spec(vec![Bytes::from_static(b"env")], env.clone(), dir.path());
    let (stdout, status) = collect(start_job(&node, job).await).await;
    let text = String::from_utf8_lossy(&stdout);
    assert_eq!(
        status,
        Some(mexec_proto::v1::exit::Status::Code(0)),
        "{text}"
    );
    assert!(text.contains("LANG=C\n"), "{text}");
    assert!(
        !text.contains("LD_PRELOAD") && !text.contains("GCC_EXEC_PREFIX"),
        "{text}"
    );

    let plugin = ["gcc", "-fplugin=/tmp/evil.so", "-c", "x.c"]
        .map(|a| Bytes::from(a.to_owned()))
        .to_vec();
    let status = refusal(&node, Some(spec(plugin, env, dir.path()))).await;
    assert_eq!(
        mexec_common::refusal::Refusal::of(&status),
        Some(mexec_common::refusal::Refusal::Denied),
        "{status:?}"
    );
    assert!(
        status
            .message()
            .contains("option `-fplugin=/tmp/evil.so` of `gcc`"),
        "{status:?}"
    );
}

/// A first message whose `start` field holds whatever bytes a test wants.
#[derive(Clone, PartialEq, prost::Message)]
struct RawStart {
    #[prost(bytes = "vec", tag = "1")]
    start: Vec<u8>,
}

async fn refusal_of_raw(node: &Executor, start: Vec<u8>) -> tonic::Status {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", node.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<RawStart, mexec_proto::v1::RunResponse>::default();
    let (tx, rx) = mpsc::channel(1);
    tx.send(RawStart { start }).await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/mexec.v1.Executor/Run");
    let result = grpc
        .streaming(tonic::Request::new(ReceiverStream::new(rx)), path, codec)
        .await;
    drop(tx);
    match result {
        Ok(mut stream) => stream.get_mut().message().await.expect_err("a refusal"),
        Err(status) => status,
    }
}

#[tokio::test]
async fn garbage_bad_utf8_and_oversize_requests_are_malformed_with_the_reason() {
    let node = start_node("n1", &[]);
    // A job id (JobSpec field 5) that is not UTF-8.
    let bad_utf8 = vec![0x2a, 0x01, 0xff];
    let garbage = vec![0xff; 8];
    let oversize = vec![b'a'; 3 << 20];
    for (what, start, reason) in [
        ("bad UTF-8", bad_utf8, "UTF-8"),
        ("garbage", garbage, "decode"),
        ("oversize", oversize, "too large"),
    ] {
        let status = refusal_of_raw(&node, start).await;
        assert_eq!(
            mexec_common::refusal::Refusal::of(&status),
            Some(mexec_common::refusal::Refusal::Malformed),
            "{what}: {status:?}"
        );
        assert!(
            status.message().contains("malformed request") && status.message().contains(reason),
            "{what}: {status:?}"
        );
    }
}

#[tokio::test]
async fn a_newline_in_a_logged_field_cannot_forge_a_log_line() {
    // The text format, where a raw newline would start a line of its own.
    let node = Executor::start("n1", 1, &["--log-format", "text"]);
    let dir = job_dir();
    let mut job = spec(vec![Bytes::from_static(b"true")], path_env(), dir.path());
    job.job_id = "j1\nFORGED job finished user=root".into();
    job.client_host = "h\x1b[2K".into();
    collect(start_job(&node, job).await).await;
    let log = node.log_text();
    assert!(log.contains(r"j1\nFORGED"), "{log}");
    assert!(log.contains(r"h\u{1b}[2K"), "{log}");
    assert!(!log.lines().any(|l| l.starts_with("FORGED")), "{log}");
}

#[test]
fn a_job_inherits_no_descriptor_of_the_daemon() {
    use std::os::unix::process::CommandExt;
    let mut daemon = Command::new(bin("mexecd"));
    // The daemon starts holding descriptor 9 without close-on-exec, as
    // one inherited from whoever started it would be.
    // SAFETY: dup2 is async-signal-safe.
    unsafe {
        daemon.pre_exec(|| {
            if libc::dup2(2, 9) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let node = Executor::start_with(daemon, "n1", 1, &[]);
    let dir = job_dir();
    let output = mexec(&node.node(), dir.path(), &["ls", "/proc/self/fd"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let fds: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    // 0-2 are the job's streams, 3 the directory ls is reading.
    assert_eq!(fds, ["0", "1", "2", "3"], "{fds:?}");
}
