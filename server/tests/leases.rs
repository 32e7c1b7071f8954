//! Lease tickets against real `mexecd`, `mexec-gatekeeper` and `mexec`
//! processes: an executor that is a member of a gatekeeper's cluster runs
//! only jobs the gatekeeper leased for that node and user, once and in
//! time, so per-user limits cannot be skipped by sending jobs straight to
//! it; `--direct-jobs allow` and a gatekeeper outage let direct jobs in.

use std::pin::Pin;
use std::process::Output;
use std::time::{Duration, Instant};

use mexec_common::clock::now_ms;
use mexec_common::lease_ticket::{Secret, LIFE};
use mexec_common::refusal::Refusal;
use mexec_proto::v1::executor_client::ExecutorClient;
use mexec_proto::v1::gatekeeper_server::{Gatekeeper as GatekeeperApi, GatekeeperServer};
use mexec_proto::v1::{
    join_request, run_request, run_response, AcquireRequest, AcquireResponse, ClusterStatusReply,
    ClusterStatusRequest, JobSpec, JoinRequest, JoinResponse, LeaseTicket, RunRequest, RunResponse,
};
use mexec_testkit::{job_dir, run_pool, wait_until, Executor, GatedFarm};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// Three one-second jobs of `user` at once, through `command`.
fn three_sleeps(command: impl Fn() -> std::process::Command) -> (Vec<Output>, Duration) {
    let jobs = (0..3)
        .map(|_| {
            let mut c = command();
            c.env("MEXEC_SUBMIT_USER", "alice");
            c
        })
        .collect();
    let started = Instant::now();
    let outputs = run_pool(jobs, 3);
    (outputs, started.elapsed())
}

/// `mexec` with the farm given as `MEXEC_NODES`, no gatekeeper: a
/// one-second job that leaves a line in `ran` in `dir`.
fn direct(farm: &GatedFarm, node: &Executor, dir: &std::path::Path) -> std::process::Command {
    let job = "echo ran >> ran; sleep 1";
    let mut command = farm.mexec(dir, &["-n", "--no-local", "sh", "-c", job]);
    command
        .env_remove("MEXEC_GATEKEEPER")
        .env("MEXEC_NODES", format!("{}/3", node.node()));
    command
}

#[test]
fn a_user_limit_holds_for_jobs_sent_straight_to_a_member_node() {
    let farm = GatedFarm::start(&[3], &["--user-limit", "alice=1"]);
    let dir = job_dir();
    let (outputs, took) = three_sleeps(|| farm.mexec(dir.path(), &["-n", "sleep", "1"]));
    for output in &outputs {
        assert!(output.status.success(), "{output:?}");
    }
    // One at a time, as the limit says.
    assert!(took >= Duration::from_millis(2900), "{took:?}");

    let (outputs, _) = three_sleeps(|| direct(&farm, &farm.executors[0], dir.path()));
    for output in &outputs {
        assert!(!output.status.success(), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("only with a lease from gatekeeper"),
            "{stderr}"
        );
        assert!(stderr.contains("MEXEC_GATEKEEPER"), "{stderr}");
    }
    // Refused, not run.
    assert!(!dir.path().join("ran").exists());
}

#[test]
fn direct_jobs_allow_restores_direct_placement() {
    let farm = GatedFarm::start_with(
        &[3],
        &["--user-limit", "alice=1"],
        &["--direct-jobs", "allow"],
    );
    let dir = job_dir();
    let (outputs, took) = three_sleeps(|| direct(&farm, &farm.executors[0], dir.path()));
    for output in &outputs {
        assert!(output.status.success(), "{output:?}");
    }
    let ran = std::fs::read_to_string(dir.path().join("ran")).unwrap();
    assert_eq!(ran.lines().count(), 3);
    // Placed past the gatekeeper, so its limit does not hold.
    assert!(took < Duration::from_millis(2900), "{took:?}");
}

#[test]
fn with_the_gatekeeper_down_a_member_node_takes_direct_jobs() {
    let mut farm = GatedFarm::start(&[3], &[]);
    let dir = job_dir();
    let refused = direct(&farm, &farm.executors[0], dir.path())
        .output()
        .unwrap();
    assert!(!refused.status.success(), "{refused:?}");
    farm.gatekeeper.kill();
    // The node notices the closed membership stream at once.
    let node = &farm.executors[0];
    assert!(wait_until(Duration::from_secs(5), || node
        .log_text()
        .contains("membership stream ended")));
    let output = direct(&farm, node, dir.path()).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A gatekeeper played by the test: it hands joining nodes their key from
/// a secret the test knows, so the test can sign tickets of its own.
struct KnownKeyGatekeeper {
    secret: Secret,
}

#[tonic::async_trait]
impl GatekeeperApi for KnownKeyGatekeeper {
    type JoinStream = Boxed<JoinResponse>;
    type AcquireStream = Boxed<AcquireResponse>;
    type RunStream = Boxed<RunResponse>;

    async fn join(
        &self,
        request: Request<Streaming<JoinRequest>>,
    ) -> Result<Response<Self::JoinStream>, Status> {
        let mut inbound = request.into_inner();
        let Some(JoinRequest {
            msg: Some(join_request::Msg::Register(register)),
        }) = inbound.message().await?
        else {
            return Err(Status::invalid_argument("register first"));
        };
        let (tx, rx) = mpsc::channel(1);
        let reply = JoinResponse {
            heartbeat_ms: 500,
            lease_key: self.secret.node_key_bytes(&register.node).into(),
        };
        tx.send(Ok(reply)).await.unwrap();
        tokio::spawn(async move {
            while let Ok(Some(_)) = inbound.message().await {}
            drop(tx);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn acquire(
        &self,
        _: Request<Streaming<AcquireRequest>>,
    ) -> Result<Response<Self::AcquireStream>, Status> {
        Err(Status::unimplemented("no leases here"))
    }

    async fn run(
        &self,
        _: Request<Streaming<RunRequest>>,
    ) -> Result<Response<Self::RunStream>, Status> {
        Err(Status::unimplemented("no relay here"))
    }

    async fn cluster_status(
        &self,
        _: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusReply>, Status> {
        Err(Status::unimplemented("no status here"))
    }

    async fn usage(
        &self,
        _: Request<mexec_proto::v1::UsageRequest>,
    ) -> Result<Response<mexec_proto::v1::UsageReply>, Status> {
        Err(Status::unimplemented("no accounting here"))
    }
}

/// Runs `true` on `node` as `user` with `ticket`: `Ok` when it ran, else
/// the refusal.
async fn run_with(node: &str, user: &str, ticket: Option<LeaseTicket>) -> Result<(), Status> {
    let mut client = ExecutorClient::connect(format!("http://{node}"))
        .await
        .unwrap();
    let spec = JobSpec {
        argv: vec!["true".into()],
        cwd: std::env::temp_dir().to_string_lossy().into_owned().into(),
        job_id: "lease-test".into(),
        user: user.into(),
        lease: ticket,
        ..JobSpec::default()
    };
    let (tx, rx) = mpsc::channel(2);
    tx.send(RunRequest {
        msg: Some(run_request::Msg::Start(spec)),
    })
    .await
    .unwrap();
    let mut responses = client.run(ReceiverStream::new(rx)).await?.into_inner();
    while let Some(response) = responses.message().await? {
        if let Some(run_response::Msg::Exit(_)) = response.msg {
            return Ok(());
        }
    }
    panic!("the stream ended without an exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_fresh_unused_ticket_for_this_node_and_user_runs_a_job() {
    let secret = Secret::from_bytes(b"the test is the gatekeeper");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gatekeeper = listener.local_addr().unwrap().to_string();
    let server = GatekeeperServer::new(KnownKeyGatekeeper {
        secret: Secret::from_bytes(b"the test is the gatekeeper"),
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let executor = Executor::start("n1", 2, &["--gatekeeper", &gatekeeper]);
    assert!(wait_until(Duration::from_secs(10), || executor
        .log_text()
        .contains("joined the cluster")));
    let node = executor.node();
    let expires = now_ms() + LIFE.as_millis() as u64;
    let refused = |result: Result<(), Status>, why: &str| {
        let status = result.expect_err(why);
        assert_eq!(
            Refusal::of(&status),
            Some(Refusal::Lease),
            "{why}: {status:?}"
        );
        assert!(status.message().contains(why), "{status:?}");
    };

    let good = secret.ticket("n1", "alice", 1, expires);
    run_with(&node, "alice", Some(good.clone())).await.unwrap();
    refused(run_with(&node, "alice", Some(good)).await, "used already");
    refused(
        run_with(&node, "alice", None).await,
        "without a lease ticket",
    );
    let other_node = secret.ticket("n2", "alice", 2, expires);
    refused(
        run_with(&node, "alice", Some(other_node)).await,
        "for node n2",
    );
    let other_user = secret.ticket("n1", "bob", 3, expires);
    refused(
        run_with(&node, "alice", Some(other_user)).await,
        "for user bob",
    );
    let expired = secret.ticket("n1", "alice", 4, now_ms() - 60_000);
    refused(run_with(&node, "alice", Some(expired)).await, "expired");
    let forged = Secret::from_bytes(b"someone else").ticket("n1", "alice", 5, expires);
    refused(run_with(&node, "alice", Some(forged)).await, "not signed");
    let next = secret.ticket("n1", "alice", 6, expires);
    run_with(&node, "alice", Some(next)).await.unwrap();
}
