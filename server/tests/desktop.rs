//! A desktop node (`mexecd --desktop`) against a real owner: CPU-bound
//! processes of another account, which are not the executor's. The offer
//! falls to nothing under the owner's load and comes back after it; jobs
//! run at idle priority; the executor's own jobs are not the owner's load.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use mexec_proto::v1::executor_client::ExecutorClient;
use mexec_proto::v1::{
    run_request, run_response, EnvVar, JobSpec, LoadReport, RunRequest, RunResponse, StatusRequest,
};
use mexec_testkit::owner::CpuHog;
use mexec_testkit::{job_dir, wait_until, Executor};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

/// Long enough for a loaded shared machine; the states come much sooner.
const STATE_WAIT: Duration = Duration::from_secs(60);

/// One test at a time: each one's busy processes are the other desks'
/// owner load.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn spec(script: &str, cwd: &Path) -> JobSpec {
    JobSpec {
        argv: ["sh", "-c", script]
            .iter()
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect(),
        cwd: Bytes::copy_from_slice(cwd.as_os_str().as_encoded_bytes()),
        env: vec![EnvVar {
            name: Bytes::from_static(b"PATH"),
            value: Bytes::from_static(b"/usr/local/bin:/usr/bin:/bin"),
        }],
        umask: 0o022,
        job_id: "desktop-test".into(),
        user: "tester".into(),
        ..JobSpec::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn status(executor: &Executor) -> LoadReport {
    ExecutorClient::connect(format!("http://{}", executor.addr))
        .await
        .unwrap()
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

fn status_now(executor: &Executor) -> LoadReport {
    runtime().block_on(status(executor))
}

/// Starts `spec`; the stream, or the refusal.
async fn run(
    executor: &Executor,
    spec: JobSpec,
) -> (
    mpsc::Sender<RunRequest>,
    Result<Streaming<RunResponse>, Status>,
) {
    let (tx, rx) = mpsc::channel(4);
    tx.send(RunRequest {
        msg: Some(run_request::Msg::Start(spec)),
    })
    .await
    .unwrap();
    let response = ExecutorClient::connect(format!("http://{}", executor.addr))
        .await
        .unwrap()
        .run(ReceiverStream::new(rx))
        .await
        .map(|r| r.into_inner());
    (tx, response)
}

/// The job's stdout, once it has ended.
async fn stdout_of(mut stream: Streaming<RunResponse>) -> String {
    let mut out = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        if let Some(run_response::Msg::Stdout(b)) = message.msg {
            out.extend_from_slice(&b);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[test]
fn the_offer_falls_to_nothing_under_the_owners_load_and_comes_back() {
    let _serial = one_at_a_time();
    let desk = Executor::start("desk", 2, &["--desktop"]);
    let dir = job_dir();
    let first = status_now(&desk);
    assert!(first.desktop, "{first:?}");
    // Other work on the machine is an owner's load too: a shared machine
    // may keep a slot back, so "offers" here is "offers some".
    assert!(
        wait_until(STATE_WAIT, || status_now(&desk).offered_slots > 0),
        "the idle desk never offered a slot: {:?}",
        status_now(&desk)
    );

    let hog = CpuHog::start(2 * cores());
    assert!(
        wait_until(STATE_WAIT, || status_now(&desk).offered_slots == 0),
        "the offer did not fall: {:?}",
        status_now(&desk)
    );
    let busy = status_now(&desk);
    assert!(busy.offer_reason.starts_with("owner load "), "{busy:?}");
    assert!(busy.owner_load >= 1.0, "{busy:?}");
    // While the owner needs the machine, nothing is admitted, and the
    // refusal is the one clients route around.
    let rt = runtime();
    let (_tx, refused) = rt.block_on(run(&desk, spec("true", dir.path())));
    let refused = refused.expect_err("admitted on a desk whose owner is busy");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");

    hog.stop();
    assert!(
        wait_until(STATE_WAIT, || status_now(&desk).offered_slots > 0),
        "the offer did not come back: {:?}",
        status_now(&desk)
    );
    let back = status_now(&desk);
    assert!(back.owner_load < busy.owner_load, "{back:?}");
}

#[test]
fn jobs_on_a_desktop_run_at_idle_cpu_and_io_priority() {
    let _serial = one_at_a_time();
    let desk = Executor::start("desk", 1, &["--desktop"]);
    let plain = Executor::start("farm", 1, &[]);
    let dir = job_dir();
    let rt = runtime();
    let script = "cat /proc/self/stat; ionice -p $$ 2>/dev/null || echo no-ionice";
    let fields = |executor: &Executor| {
        assert!(wait_until(STATE_WAIT, || status_now(executor)
            .offered_slots
            > 0));
        let (_tx, stream) = rt.block_on(run(executor, spec(script, dir.path())));
        let out = rt.block_on(stdout_of(stream.unwrap()));
        let stat = out.lines().next().unwrap().to_owned();
        let after_name: Vec<String> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        // nice is field 19 of the stat line, the policy field 41.
        let io = out.lines().nth(1).unwrap_or("").trim().to_owned();
        (after_name[16].clone(), after_name[38].clone(), io)
    };
    let (nice, policy, io) = fields(&desk);
    assert_eq!(
        (nice.as_str(), policy.as_str()),
        ("19", "5"),
        "SCHED_IDLE is 5"
    );
    assert!(io == "idle" || io == "no-ionice", "{io}");
    let (nice, policy, io) = fields(&plain);
    assert_eq!((nice.as_str(), policy.as_str()), ("0", "0"));
    assert!(io != "idle", "{io}");
}

#[test]
fn the_executors_own_jobs_are_not_the_owners_load() {
    let _serial = one_at_a_time();
    // Eight slots, so that four are offered even on a shared machine.
    let desk = Executor::start("desk", 8, &["--desktop"]);
    let dir = job_dir();
    let rt = runtime();
    assert!(wait_until(STATE_WAIT, || status_now(&desk).offered_slots >= 4));
    let mut jobs = Vec::new();
    for _ in 0..4 {
        let (tx, stream) = rt.block_on(run(&desk, spec("while :; do :; done", dir.path())));
        jobs.push((tx, stream.expect("admitted")));
    }
    assert!(wait_until(STATE_WAIT, || status_now(&desk).running == 4));
    // Two smoothing periods and more: four spinning jobs counted as the
    // owner's would be a load of four at least.
    std::thread::sleep(Duration::from_secs(3));
    let report = status_now(&desk);
    assert_eq!(report.running, 4);
    assert!(report.owner_load < 3.5, "our jobs were counted: {report:?}");
    drop(jobs);
    assert!(wait_until(STATE_WAIT, || status_now(&desk).running == 0));
}

#[test]
fn the_example_desktop_config_under_deploy_parses() {
    let path = mexec_testkit::workspace_root().join("deploy/mexecd-desktop.toml");
    let config: mexec_server::executor::config::FileConfig =
        mexec_common::config_file::load(&path).expect("deploy/mexecd-desktop.toml parses");
    assert_eq!((config.desktop, config.reclaim), (Some(true), Some(true)));
    assert_eq!(config.reclaim_after_ms, Some(1000));
}
