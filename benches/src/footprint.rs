//! Footprint: the client's start-up time and peak memory, and the memory of
//! the executors and the gatekeeper with 64 nodes and 1,000 queued jobs.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mexec_proto::v1::gatekeeper_client::GatekeeperClient;
use mexec_proto::v1::{acquire_request, AcquireRequest, LeaseRequest};
use mexec_testkit::{bin, job_dir, rss_kib, wait_until, Executor, Farm, Gatekeeper};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::stats::Timing;

#[derive(Debug, Serialize, Deserialize)]
pub struct Footprint {
    pub client_startup: Timing,
    pub client_peak_rss_kib: u64,
    pub nodes: usize,
    pub queued: usize,
    pub gatekeeper_rss_kib: u64,
    pub executor_rss_kib_max: u64,
    pub executor_rss_kib_mean: u64,
}

pub fn run(smoke: bool) -> Footprint {
    let runs = if smoke { 10 } else { 100 };
    let mexec = bin("mexec");
    let samples: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            let status = Command::new(&mexec)
                .arg("--mexec-version")
                .stdout(Stdio::null())
                .status()
                .expect("run mexec");
            assert!(status.success());
            started.elapsed()
        })
        .collect();
    let client_startup = Timing::of(&samples);

    let farm = Farm::start(1, 2);
    let dir = job_dir();
    let mut child = farm
        .mexec(dir.path(), &["-n", "--", "true"])
        .spawn()
        .expect("run mexec");
    let client_peak_rss_kib = peak_rss_of(&mut child);

    let (nodes, queued) = if smoke { (4, 50) } else { (64, 1000) };
    let gatekeeper = Gatekeeper::start(&["--max-queued", "100000"]);
    let gk = gatekeeper.address();
    let executors: Vec<Executor> = (0..nodes)
        .map(|i| Executor::start(&format!("f{i}"), 1, &["--gatekeeper", &gk]))
        .collect();
    assert!(wait_until(
        Duration::from_secs(30),
        || crate::sched::gatekeeper_members(&gk) == nodes
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let held = runtime.block_on(fill(format!("http://{gk}"), nodes + queued));
    assert!(wait_until(Duration::from_secs(30), || queued_now(&gk) >= queued));
    let gatekeeper_rss_kib = rss_kib(gatekeeper.pid());
    let rss: Vec<u64> = executors.iter().map(Executor::rss_kib).collect();
    drop(held);
    runtime.shutdown_background();
    Footprint {
        client_startup,
        client_peak_rss_kib,
        nodes,
        queued,
        gatekeeper_rss_kib,
        executor_rss_kib_max: rss.iter().copied().max().unwrap_or(0),
        executor_rss_kib_mean: rss.iter().sum::<u64>() / rss.len().max(1) as u64,
    }
}

/// Opens `count` lease requests and keeps them open (granted or waiting).
async fn fill(uri: String, count: usize) -> Vec<impl Sized> {
    // Daemons take at most 256 streams on one connection (the server's
    // MAX_STREAMS_PER_CONNECTION); a request past that would wait for a
    // stream, not queue at the gatekeeper.
    let per_connection = 128;
    let mut channels = Vec::new();
    for _ in 0..count.div_ceil(per_connection) {
        channels.push(
            tonic::transport::Channel::from_shared(uri.clone())
                .expect("uri")
                .connect()
                .await
                .expect("connect"),
        );
    }
    let mut held = Vec::new();
    for i in 0..count {
        let channel = &channels[i / per_connection];
        let (tx, rx) = mpsc::channel(1);
        let _ = tx
            .send(AcquireRequest {
                msg: Some(acquire_request::Msg::Request(LeaseRequest {
                    user: format!("u{}", i % 10),
                    build_id: "footprint".into(),
                    job_id: format!("j{i}"),
                    program: "cc".into(),
                    ..LeaseRequest::default()
                })),
            })
            .await;
        let stream = GatekeeperClient::new(channel.clone())
            .acquire(ReceiverStream::new(rx))
            .await
            .map(|r| r.into_inner());
        held.push((tx, stream));
    }
    held
}

fn queued_now(gk: &str) -> usize {
    crate::sched::gatekeeper_status(gk)["queued"]
        .as_u64()
        .unwrap_or(0) as usize
}

/// Waits for `child` and returns its peak resident memory (KiB).
fn peak_rss_of(child: &mut std::process::Child) -> u64 {
    let mut status = 0;
    // SAFETY: rusage is plain data and wait4 only writes into it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pid is our own unreaped child.
    let rc = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert!(rc > 0, "wait4 failed");
    let exit = std::process::ExitStatus::from_raw(status);
    assert!(exit.success(), "mexec -- true failed");
    usage.ru_maxrss as u64
}
