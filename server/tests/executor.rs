//! The executor against a real `mexecd` process on a loopback port, spoken
//! to over the raw gRPC protocol: what any client, not just `mexec`, gets.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use mexec_proto::v1::executor_client::ExecutorClient;
use mexec_proto::v1::{
    exit, run_request, run_response, EnvVar, Exit, JobSpec, RunRequest, RunResponse, Signal,
    StatusRequest, StdinEof, WatchLoadRequest,
};
use mexec_testkit::{job_dir, wait_until, Executor};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

fn spec(argv: &[&str], cwd: &Path) -> JobSpec {
    JobSpec {
        argv: argv
            .iter()
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect(),
        cwd: Bytes::copy_from_slice(cwd.as_os_str().as_encoded_bytes()),
        env: vec![EnvVar {
            name: Bytes::from_static(b"PATH"),
            value: Bytes::from_static(b"/usr/local/bin:/usr/bin:/bin"),
        }],
        umask: 0o022,
        job_id: "test-job".into(),
        user: "tester".into(),
        client_host: "test-host".into(),
        build_id: "test-build".into(),
        timeout_ms: 0,
        forward_stdin: false,
        ..JobSpec::default()
    }
}

async fn client(executor: &Executor) -> ExecutorClient<tonic::transport::Channel> {
    ExecutorClient::connect(format!("http://{}", executor.addr))
        .await
        .expect("connect to mexecd")
}

/// Starts a Run stream; returns the sender for further requests.
async fn start(
    executor: &Executor,
    spec: JobSpec,
) -> (
    mpsc::Sender<RunRequest>,
    Result<Streaming<RunResponse>, Status>,
) {
    let (tx, rx) = mpsc::channel(16);
    tx.send(RunRequest {
        msg: Some(run_request::Msg::Start(spec)),
    })
    .await
    .unwrap();
    let response = client(executor)
        .await
        .run(ReceiverStream::new(rx))
        .await
        .map(|r| r.into_inner());
    (tx, response)
}

#[derive(Debug, Default)]
struct Collected {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    pid: Option<u32>,
    queued: bool,
    exit: Option<Exit>,
}

async fn collect(mut stream: Streaming<RunResponse>) -> Collected {
    let mut c = Collected::default();
    while let Some(message) = stream.message().await.expect("stream error") {
        match message.msg.expect("empty message") {
            run_response::Msg::Queued(_) => c.queued = true,
            run_response::Msg::Accepted(a) => c.pid = Some(a.pid),
            run_response::Msg::Stdout(b) => c.stdout.extend_from_slice(&b),
            run_response::Msg::Stderr(b) => c.stderr.extend_from_slice(&b),
            run_response::Msg::Exit(e) => c.exit = Some(e),
        }
    }
    c
}

async fn next_accepted(stream: &mut Streaming<RunResponse>) -> (bool, u32) {
    let mut queued = false;
    loop {
        match stream.message().await.unwrap().unwrap().msg.unwrap() {
            run_response::Msg::Queued(_) => queued = true,
            run_response::Msg::Accepted(a) => return (queued, a.pid),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Reads a job's stream to the end, pausing after each stdout chunk;
/// returns the stdout byte count and the exit.
async fn read_stdout_slowly(
    mut stream: Streaming<RunResponse>,
    pause: Duration,
) -> (usize, Option<Exit>) {
    let mut total = 0usize;
    let mut exit = None;
    while let Some(message) = stream.message().await.unwrap() {
        match message.msg.unwrap() {
            run_response::Msg::Stdout(b) => {
                total += b.len();
                tokio::time::sleep(pause).await;
            }
            run_response::Msg::Exit(e) => exit = Some(e),
            _ => {}
        }
    }
    (total, exit)
}

fn code(exit: &Option<Exit>) -> Option<exit::Status> {
    exit.as_ref().and_then(|e| e.status)
}

#[tokio::test]
async fn runs_in_cwd_with_env_umask_and_stdin_and_reports_usage() {
    let node = Executor::start("env-node", 2, &[]);
    let dir = job_dir();
    let mut job = spec(
        &[
            "sh",
            "-c",
            "pwd; umask; echo \"$FOO\"; id -u; cat; echo oops >&2; exit 3",
        ],
        dir.path(),
    );
    job.umask = 0o027;
    job.forward_stdin = true;
    job.env.push(EnvVar {
        name: Bytes::from_static(b"FOO"),
        value: Bytes::from_static(b"bar\xff"),
    });
    let (tx, response) = start(&node, job).await;
    tx.send(RunRequest {
        msg: Some(run_request::Msg::Stdin(Bytes::from_static(b"from stdin\n"))),
    })
    .await
    .unwrap();
    tx.send(RunRequest {
        msg: Some(run_request::Msg::StdinEof(StdinEof {})),
    })
    .await
    .unwrap();
    let c = collect(response.unwrap()).await;
    let (job_uid, _) = mexec_testkit::job_account();
    let expected = format!(
        "{}\n0027\nbar\u{fffd}\n{job_uid}\nfrom stdin\n",
        dir.path().display()
    );
    // The environment value's 0xff byte arrives as a byte, not as UTF-8.
    let mut expected = expected.into_bytes();
    let at = expected
        .windows(3)
        .position(|w| w == "\u{fffd}".as_bytes())
        .unwrap();
    expected.splice(at..at + 3, [0xff]);
    assert_eq!(c.stdout, expected);
    assert_eq!(c.stderr, b"oops\n");
    assert!(c.pid.is_some());
    let exit = c.exit.unwrap();
    assert_eq!(exit.status, Some(exit::Status::Code(3)));
    assert!(exit.wall_us > 0 && exit.max_rss_kib > 0, "{exit:?}");
}

#[tokio::test]
async fn slow_reader_bounds_daemon_memory_for_100_mb() {
    let node = Executor::start("slow-node", 1, &[]);
    let dir = job_dir();
    let baseline = node.peak_rss_kib();
    let (_tx, response) = start(
        &node,
        spec(&["head", "-c", "100000000", "/dev/zero"], dir.path()),
    )
    .await;
    // Read far slower than head writes.
    let (total, exit) = read_stdout_slowly(response.unwrap(), Duration::from_micros(1500)).await;
    assert_eq!(total, 100_000_000);
    assert_eq!(code(&exit), Some(exit::Status::Code(0)));
    let peak = node.peak_rss_kib();
    eprintln!("mexecd peak RSS {peak} KiB, {baseline} KiB before the job");
    // Without back-pressure the daemon would hold most of the 100 MB.
    assert!(
        peak < baseline + 40 * 1024,
        "daemon peak RSS {peak} KiB (baseline {baseline} KiB)"
    );
}

#[tokio::test]
async fn full_node_queues_then_refuses_and_a_leaving_client_frees_its_slot() {
    let node = Executor::start("full-node", 1, &["--max-queued", "1"]);
    let dir = job_dir();
    let (tx_a, a) = start(&node, spec(&["sleep", "60"], dir.path())).await;
    let mut a = a.unwrap();
    let (_, a_pid) = next_accepted(&mut a).await;

    let (_tx_b, b) = start(&node, spec(&["echo", "b ran"], dir.path())).await;
    let mut b = b.unwrap();
    let first = b.message().await.unwrap().unwrap().msg.unwrap();
    assert!(matches!(first, run_response::Msg::Queued(_)), "{first:?}");

    let (_tx_c, c) = start(&node, spec(&["true"], dir.path())).await;
    let refused = c.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("node full-node is full"),
        "{}",
        refused.message()
    );

    // The first client vanishes: its job is killed and b gets the slot.
    drop(a);
    drop(tx_a);
    let b = collect(b).await;
    assert_eq!(b.stdout, b"b ran\n");
    assert!(wait_until(Duration::from_secs(5), || {
        !mexec_testkit::pid_alive(a_pid)
    }));
}

#[tokio::test]
async fn missing_cwd_and_unknown_command_are_clear_errors() {
    let node = Executor::start("err-node", 1, &[]);
    let dir = job_dir();
    let missing = dir.path().join("not-mounted-here");
    let (_tx, response) = start(&node, spec(&["true"], &missing)).await;
    let status = response.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("node err-node"),
        "{}",
        status.message()
    );
    assert!(status.message().contains(&missing.display().to_string()));

    let (_tx, response) = start(&node, spec(&["no-such-command-mexec"], dir.path())).await;
    let c = collect(response.unwrap()).await;
    let exit = c.exit.unwrap();
    assert_eq!(exit.status, Some(exit::Status::Code(127)));
    assert_eq!(exit.error, "command not found: no-such-command-mexec");

    let (_tx, response) = start(&node, spec(&[], dir.path())).await;
    assert_eq!(response.unwrap_err().code(), Code::InvalidArgument);
}

#[tokio::test]
async fn signals_and_timeouts_kill_the_process_group() {
    let node = Executor::start("sig-node", 2, &[]);
    let dir = job_dir();
    let (tx, response) = start(&node, spec(&["sleep", "60"], dir.path())).await;
    let mut stream = response.unwrap();
    next_accepted(&mut stream).await;
    tx.send(RunRequest {
        msg: Some(run_request::Msg::Signal(Signal { signo: 15 })),
    })
    .await
    .unwrap();
    assert_eq!(
        code(&collect(stream).await.exit),
        Some(exit::Status::Signal(15))
    );

    let mut job = spec(&["sleep", "60"], dir.path());
    job.timeout_ms = 200;
    let (_tx, response) = start(&node, job).await;
    let exit = collect(response.unwrap()).await.exit.unwrap();
    assert_eq!(exit.status, Some(exit::Status::Signal(9)));
    assert!(exit.error.contains("timeout"), "{}", exit.error);
}

#[tokio::test]
async fn load_reports_follow_admission() {
    let node = Executor::start("load-node", 3, &[]);
    let dir = job_dir();
    let mut c = client(&node).await;
    let report = c.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (report.node.as_str(), report.slots, report.running),
        ("load-node", 3, 0)
    );
    assert_eq!(report.version, env!("CARGO_PKG_VERSION"));
    assert!(report.cores >= 1 && !report.draining && report.os == "linux");

    let mut watch = c
        .watch_load(WatchLoadRequest {
            interval_ms: 60_000,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().running, 0);
    let (_tx, response) = start(&node, spec(&["sleep", "60"], dir.path())).await;
    let _job = response.unwrap();
    // The change is pushed without waiting for the 60 s interval.
    let update = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("a pushed update")
        .unwrap()
        .unwrap();
    assert_eq!(update.running, 1);

    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Channel::from_shared(format!("http://{}", node.addr))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let answer = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn sigterm_drains_running_jobs_and_refuses_new_ones() {
    let mut node = Executor::start("drain-node", 2, &[]);
    let dir = job_dir();
    let (_tx, response) = start(
        &node,
        spec(&["sh", "-c", "sleep 1; echo finished"], dir.path()),
    )
    .await;
    let mut running = response.unwrap();
    next_accepted(&mut running).await;
    node.signal(libc::SIGTERM);
    assert!(wait_until(Duration::from_secs(5), || {
        let report = futures_lite_status(&node);
        report.map(|r| r.draining).unwrap_or(false)
    }));
    let (_tx2, refused) = start(&node, spec(&["true"], dir.path())).await;
    let refused = refused.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(
        refused.message().contains("draining"),
        "{}",
        refused.message()
    );
    let done = collect(running).await;
    assert_eq!(done.stdout, b"finished\n");
    assert_eq!(code(&done.exit), Some(exit::Status::Code(0)));
    let status = node
        .wait_exit(Duration::from_secs(10))
        .expect("mexecd exits after draining");
    assert!(status.success(), "{status:?}");
}

/// A blocking status query from a synchronous polling closure.
fn futures_lite_status(node: &Executor) -> Option<mexec_proto::v1::LoadReport> {
    let addr = node.addr;
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async move {
            let mut c = ExecutorClient::connect(format!("http://{addr}"))
                .await
                .ok()?;
            c.status(StatusRequest {})
                .await
                .ok()
                .map(|r| r.into_inner())
        })
    })
    .join()
    .ok()
    .flatten()
}

#[tokio::test]
async fn a_token_is_required_when_configured() {
    let dir = job_dir();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "cluster-secret\n").unwrap();
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let node = Executor::start(
        "tok-node",
        1,
        &["--token-file", token_file.to_str().unwrap()],
    );
    let (_tx, response) = start(&node, spec(&["true"], dir.path())).await;
    assert_eq!(response.unwrap_err().code(), Code::Unauthenticated);

    let (tx, rx) = mpsc::channel(1);
    tx.send(RunRequest {
        msg: Some(run_request::Msg::Start(spec(&["echo", "ok"], dir.path()))),
    })
    .await
    .unwrap();
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("authorization", "Bearer cluster-secret".parse().unwrap());
    let stream = client(&node).await.run(request).await.unwrap().into_inner();
    assert_eq!(collect(stream).await.stdout, b"ok\n");
}

#[test]
fn open_listen_without_auth_is_refused_and_insecure_warns() {
    let output = std::process::Command::new(mexec_testkit::bin("mexecd"))
        .args(["--listen", "0.0.0.0:0", "--name", "open"])
        .args(mexec_testkit::job_user_args())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0 without authentication"),
        "{stderr}"
    );

    let node = Executor::start_with(
        std::process::Command::new(mexec_testkit::bin("mexecd")),
        "insecure",
        1,
        &["--insecure", "--listen", "0.0.0.0:0"],
    );
    assert!(node.log_text().contains("INSECURE"), "{}", node.log_text());
}

#[test]
fn root_daemon_needs_a_job_account() {
    if !mexec_testkit::is_root() {
        eprintln!("skipped: needs root to start mexecd as root");
        return;
    }
    let output = std::process::Command::new(mexec_testkit::bin("mexecd"))
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("jobs never run as root"), "{stderr}");
}

#[test]
fn the_example_config_under_deploy_parses() {
    let path = mexec_testkit::workspace_root().join("deploy/mexecd.toml");
    let config: mexec_server::executor::config::FileConfig =
        mexec_common::config_file::load(&path).expect("deploy/mexecd.toml parses");
    assert_eq!(config.slots, Some(8));
    // The example is the set-up for many users: each job as its submitter.
    assert_eq!(config.user, None);
    assert_eq!(config.run_as_submitter, Some(true));
    assert_eq!(config.min_uid, Some(1000));
}

#[tokio::test]
async fn a_slow_reader_gets_every_byte_after_the_job_has_exited() {
    let node = Executor::start("tail-node", 1, &[]);
    let dir = job_dir();
    let (_tx, response) = start(
        &node,
        spec(&["head", "-c", "4000000", "/dev/zero"], dir.path()),
    )
    .await;
    // Read slowly enough that draining outlasts the job by seconds.
    let (total, exit) = read_stdout_slowly(response.unwrap(), Duration::from_millis(60)).await;
    assert_eq!(total, 4_000_000);
    assert_eq!(code(&exit), Some(exit::Status::Code(0)));
}

#[tokio::test]
async fn a_signal_gets_through_behind_stdin_the_job_does_not_read() {
    let node = Executor::start("hol-node", 1, &[]);
    let dir = job_dir();
    let mut job = spec(&["sleep", "60"], dir.path());
    job.forward_stdin = true;
    let (tx, response) = start(&node, job).await;
    let mut stream = response.unwrap();
    next_accepted(&mut stream).await;
    let feeder = tx.clone();
    tokio::spawn(async move {
        for _ in 0..32 {
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let message = RunRequest {
                msg: Some(run_request::Msg::Stdin(chunk)),
            };
            if feeder.send(message).await.is_err() {
                return;
            }
        }
        let _ = feeder
            .send(RunRequest {
                msg: Some(run_request::Msg::Signal(Signal { signo: 15 })),
            })
            .await;
    });
    let done = tokio::time::timeout(Duration::from_secs(20), collect(stream))
        .await
        .expect("the signal behind 2 MiB of unread stdin arrives");
    assert_eq!(code(&done.exit), Some(exit::Status::Signal(15)));
}

#[tokio::test]
async fn a_job_killed_by_shutdown_ends_with_unavailable_so_clients_can_retry() {
    let mut node = Executor::start("grace-node", 1, &["--grace-secs", "1"]);
    let dir = job_dir();
    let (_tx, response) = start(&node, spec(&["sleep", "60"], dir.path())).await;
    let mut stream = response.unwrap();
    next_accepted(&mut stream).await;
    node.signal(libc::SIGTERM);
    let end = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    let status = end.expect_err("a status, not an exit");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status
            .message()
            .contains("shut down before the job finished"),
        "{}",
        status.message()
    );
    assert!(node.wait_exit(Duration::from_secs(10)).is_some());
}

#[tokio::test]
async fn a_cwd_the_job_account_cannot_enter_is_refused_before_start() {
    if !mexec_testkit::is_root() {
        eprintln!(
            "skipped: needs root (jobs run as {})",
            mexec_testkit::JOB_USER
        );
        return;
    }
    let node = Executor::start("perm-node", 1, &[]);
    let private = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        private.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let (_tx, response) = start(&node, spec(&["true"], private.path())).await;
    let result = collect_or_status(response).await;
    let status = match result {
        Err(status) => status,
        Ok(c) => panic!(
            "not refused: {:?} {:?}",
            c.exit,
            std::fs::metadata(private.path())
                .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
        ),
    };
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status
            .message()
            .contains("not accessible to the job account nobody"),
        "{}",
        status.message()
    );
}

async fn collect_or_status(
    response: Result<Streaming<RunResponse>, Status>,
) -> Result<Collected, Status> {
    let mut stream = response?;
    let mut c = Collected::default();
    while let Some(message) = stream.message().await? {
        if let Some(run_response::Msg::Exit(e)) = message.msg {
            c.exit = Some(e);
        }
    }
    Ok(c)
}

#[test]
fn the_example_gatekeeper_config_under_deploy_parses() {
    let path = mexec_testkit::workspace_root().join("deploy/mexec-gatekeeper.toml");
    let config: mexec_server::gatekeeper::config::FileConfig =
        mexec_common::config_file::load(&path).expect("deploy/mexec-gatekeeper.toml parses");
    assert_eq!(config.max_queued, Some(20000));
    assert_eq!(config.user_limits.unwrap()["nightly"], 16);
}
