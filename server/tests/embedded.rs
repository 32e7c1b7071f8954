//! Each daemon run inside the test process, as a library: started on a task
//! with an already-bound `127.0.0.1:0` listener and an explicit shutdown,
//! used through a real tonic client, stopped, and joined. No binary is
//! started for the daemon itself and no "listening on" line is read.
//!
//! The executor's group keeper is the built `mexecd` in keeper mode, as in
//! production; only the daemon runs in-process. Its jobs are spawned from
//! the test's single runtime thread, which outlives them, so their
//! PDEATHSIG (tied to the spawning thread) does not fire early.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use mexec_proto::v1::executor_client::ExecutorClient;
use mexec_proto::v1::gatekeeper_client::GatekeeperClient;
use mexec_proto::v1::{
    acquire_request, acquire_response, exit, join_request, run_request, run_response,
    AcquireRequest, EnvVar, JobSpec, JoinRequest, Lease, LeaseRequest, LeaseTicket, LoadReport,
    Register, Release, RunRequest,
};
use mexec_server::{executor, gatekeeper};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// How long a stopped daemon may take to return: its drain has nothing to
/// wait for, so this is only a bound for a hung test.
const STOP_WITHIN: Duration = Duration::from_secs(10);

type Daemon = JoinHandle<Result<(), tonic::transport::Error>>;

/// A daemon on a task: its address, its stop signal and its task.
struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: Daemon,
}

impl Running {
    async fn start<F>(run: impl FnOnce(TcpListener, StopSignal) -> F) -> Running
    where
        F: Future<Output = Result<(), tonic::transport::Error>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(listener, StopSignal(stopped)));
        Running { addr, stop, task }
    }

    /// Sends the shutdown and waits for the daemon to return `Ok`.
    async fn stop(self) {
        self.stop.send(()).unwrap();
        let result = tokio::time::timeout(STOP_WITHIN, self.task)
            .await
            .expect("the daemon returns after its shutdown")
            .expect("the daemon's task did not panic");
        assert!(result.is_ok(), "the daemon failed: {result:?}");
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }
}

/// The shutdown future a daemon is given.
struct StopSignal(oneshot::Receiver<()>);

impl StopSignal {
    async fn wait(self) {
        let _ = self.0.await;
    }
}

fn executor_settings(name: &str, gatekeeper: Option<SocketAddr>) -> executor::Settings {
    let flags = executor::Flags {
        name: Some(name.into()),
        slots: Some(1),
        // Run as root (as CI does), the executor needs an account for jobs.
        user: mexec_testkit::is_root().then(|| mexec_testkit::JOB_USER.to_owned()),
        gatekeeper: gatekeeper.map(|addr| addr.to_string()),
        ..executor::Flags::default()
    };
    executor::Settings::resolve(flags).unwrap()
}

async fn start_executor(name: &str, gatekeeper: Option<SocketAddr>) -> Running {
    let settings = executor_settings(name, gatekeeper);
    let watchers = executor::Watchers::start(&mexec_testkit::bin("mexecd"));
    assert!(watchers.groups.is_some(), "the group keeper started");
    Running::start(|listener, stop| executor::run(listener, settings, watchers, stop.wait())).await
}

async fn start_gatekeeper() -> Running {
    let settings = gatekeeper::Settings::resolve(gatekeeper::Flags::default()).unwrap();
    Running::start(|listener, stop| gatekeeper::run(listener, settings, stop.wait())).await
}

/// A shell script as a job in `cwd`, with the system's PATH.
fn script(script: &str, cwd: &std::path::Path) -> JobSpec {
    let bytes = |text: &str| Bytes::copy_from_slice(text.as_bytes());
    JobSpec {
        argv: ["sh", "-c", script].map(bytes).to_vec(),
        cwd: bytes(cwd.to_str().expect("a UTF-8 temporary directory")),
        env: vec![EnvVar {
            name: bytes("PATH"),
            value: bytes("/usr/bin:/bin"),
        }],
        umask: 0o022,
        job_id: "embedded-job".into(),
        user: "tester".into(),
        ..JobSpec::default()
    }
}

/// Runs a job that writes to both streams and exits 3, with the lease's
/// ticket when it has one; checks all of it.
async fn run_a_job(channel: Channel, node: &str, ticket: Option<LeaseTicket>) {
    let dir = mexec_testkit::job_dir();
    let job = JobSpec {
        lease: ticket,
        ..script("echo out; echo err >&2; exit 3", dir.path())
    };
    let (tx, rx) = mpsc::channel(4);
    tx.send(RunRequest {
        msg: Some(run_request::Msg::Start(job)),
    })
    .await
    .unwrap();
    let mut stream = ExecutorClient::new(channel)
        .run(ReceiverStream::new(rx))
        .await
        .expect("the job is admitted")
        .into_inner();
    let (mut stdout, mut stderr, mut accepted, mut end) = (Vec::new(), Vec::new(), None, None);
    while let Some(message) = stream.message().await.expect("no stream error") {
        match message.msg.expect("a message") {
            run_response::Msg::Accepted(a) => accepted = Some(a.node),
            run_response::Msg::Stdout(b) => stdout.extend_from_slice(&b),
            run_response::Msg::Stderr(b) => stderr.extend_from_slice(&b),
            run_response::Msg::Exit(e) => end = e.status,
            run_response::Msg::Queued(_) => {}
        }
    }
    assert_eq!(accepted.as_deref(), Some(node));
    assert_eq!(
        (stdout.as_slice(), stderr.as_slice()),
        (&b"out\n"[..], &b"err\n"[..])
    );
    assert_eq!(end, Some(exit::Status::Code(3)));
}

/// Takes a lease (waiting in the queue if the cluster has no free slot
/// yet), then gives it back.
async fn take_a_lease(channel: Channel) -> Lease {
    let (tx, rx) = mpsc::channel(2);
    tx.send(AcquireRequest {
        msg: Some(acquire_request::Msg::Request(LeaseRequest {
            user: "tester".into(),
            build_id: "embedded-build".into(),
            job_id: "embedded-job".into(),
            program: "cc".into(),
            ..LeaseRequest::default()
        })),
    })
    .await
    .unwrap();
    let mut stream = GatekeeperClient::new(channel)
        .acquire(ReceiverStream::new(rx))
        .await
        .expect("the request is taken")
        .into_inner();
    let lease = loop {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a lease within 10 s")
            .expect("no stream error")
            .expect("the stream stays open");
        match message.msg.expect("a message") {
            acquire_response::Msg::Lease(lease) => break lease,
            acquire_response::Msg::Queued(_) => continue,
        }
    };
    tx.send(AcquireRequest {
        msg: Some(acquire_request::Msg::Release(Release {})),
    })
    .await
    .unwrap();
    lease
}

#[tokio::test]
async fn an_executor_runs_in_process_a_real_job_and_stops_on_shutdown() {
    let node = start_executor("embedded-node", None).await;
    run_a_job(node.channel().await, "embedded-node", None).await;
    node.stop().await;
}

#[tokio::test]
async fn a_gatekeeper_runs_in_process_grants_a_real_lease_and_stops_on_shutdown() {
    let gk = start_gatekeeper().await;
    // A member, joined over the real protocol: it registers and reports.
    let (member, reports) = mpsc::channel(4);
    member
        .send(JoinRequest {
            msg: Some(join_request::Msg::Register(Register {
                node: "n1".into(),
                address: "127.0.0.1:7460".into(),
                port: 7460,
            })),
        })
        .await
        .unwrap();
    let report = LoadReport {
        node: "n1".into(),
        slots: 2,
        ..LoadReport::default()
    };
    member
        .send(JoinRequest {
            msg: Some(join_request::Msg::Load(report)),
        })
        .await
        .unwrap();
    let mut replies = GatekeeperClient::new(gk.channel().await)
        .join(ReceiverStream::new(reports))
        .await
        .expect("the node may join")
        .into_inner();
    let reply = replies.message().await.unwrap().expect("a join reply");
    assert_eq!(
        reply.heartbeat_ms, 500,
        "the gatekeeper asks for its heartbeat"
    );

    let lease = take_a_lease(gk.channel().await).await;
    assert_eq!(
        (lease.node.as_str(), lease.address.as_str()),
        ("n1", "127.0.0.1:7460")
    );
    drop((member, replies));
    gk.stop().await;
}

#[tokio::test]
async fn an_executor_joins_a_gatekeeper_in_the_same_process_and_runs_the_leased_job() {
    let gk = start_gatekeeper().await;
    let node = start_executor("joined-node", Some(gk.addr)).await;
    let lease = take_a_lease(gk.channel().await).await;
    assert_eq!(lease.node, "joined-node");
    assert_eq!(lease.address, node.addr.to_string());
    // A member node runs the job with the lease's ticket, as a client sends it.
    run_a_job(node.channel().await, "joined-node", lease.ticket).await;
    node.stop().await;
    gk.stop().await;
}
