//! Gatekeeper throughput: lease round trips per second (acquire, grant,
//! release) from many concurrent clients against members with room to
//! spare, and end-to-end `true` jobs per second against process creation.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mexec_proto::v1::gatekeeper_client::GatekeeperClient;
use mexec_proto::v1::{
    acquire_request, acquire_response, join_request, AcquireRequest, JoinRequest, LeaseRequest,
    LoadReport, Register, Release,
};
use mexec_testkit::{job_dir, run_pool, Farm, Gatekeeper};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

#[derive(Debug, Serialize, Deserialize)]
pub struct Throughput {
    pub placements_per_s: f64,
    pub placement_clients: usize,
    pub placement_connections: usize,
    pub mexec_true_per_s: f64,
    pub local_true_per_s: f64,
    pub e2e_concurrency: usize,
}

pub fn run(smoke: bool) -> Throughput {
    let gatekeeper = Gatekeeper::start(&["--max-queued", "100000"]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (clients, connections) = (64, 8);
    let seconds = if smoke { 1.0 } else { 5.0 };
    let placements_per_s = runtime.block_on(placements(
        format!("http://{}", gatekeeper.addr),
        clients,
        connections,
        Duration::from_secs_f64(seconds),
    ));
    runtime.shutdown_background();
    drop(gatekeeper);

    let concurrency = 8;
    let jobs = if smoke { 40 } else { 600 };
    let farm = Farm::start(1, concurrency as u32);
    let dir = job_dir();
    let remote: Vec<Command> = (0..jobs)
        .map(|_| farm.mexec(dir.path(), &["-n", "--", "true"]))
        .collect();
    let started = Instant::now();
    let outputs = run_pool(remote, concurrency);
    let mexec_true_per_s = jobs as f64 / started.elapsed().as_secs_f64();
    assert!(outputs.iter().all(|o| o.status.success()));
    let local: Vec<Command> = (0..jobs).map(|_| Command::new("true")).collect();
    let started = Instant::now();
    run_pool(local, concurrency);
    let local_true_per_s = jobs as f64 / started.elapsed().as_secs_f64();
    Throughput {
        placements_per_s,
        placement_clients: clients,
        placement_connections: connections,
        mexec_true_per_s,
        local_true_per_s,
        e2e_concurrency: concurrency,
    }
}

/// Registers members with room for every client at once, then counts lease
/// round trips for `duration`.
async fn placements(uri: String, clients: usize, connections: usize, duration: Duration) -> f64 {
    let channel = Channel::from_shared(uri.clone())
        .expect("uri")
        .connect()
        .await
        .expect("connect to the gatekeeper");
    let mut members = Vec::new();
    for m in 0..4 {
        let (tx, rx) = mpsc::channel(4);
        let register = JoinRequest {
            msg: Some(join_request::Msg::Register(Register {
                node: format!("member{m}"),
                address: "127.0.0.1:1".into(),
                port: 1,
            })),
        };
        let load = JoinRequest {
            msg: Some(join_request::Msg::Load(LoadReport {
                node: format!("member{m}"),
                slots: 1_000_000,
                ..LoadReport::default()
            })),
        };
        tx.send(register).await.expect("queue register");
        tx.send(load).await.expect("queue load");
        let stream = GatekeeperClient::new(channel.clone())
            .join(ReceiverStream::new(rx))
            .await
            .expect("join")
            .into_inner();
        // Members must keep reporting, or the gatekeeper drops them as
        // silent after a few seconds.
        let heartbeat = tokio::spawn({
            let tx = tx.clone();
            let node = format!("member{m}");
            async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    let load = JoinRequest {
                        msg: Some(join_request::Msg::Load(LoadReport {
                            node: node.clone(),
                            slots: 1_000_000,
                            ..LoadReport::default()
                        })),
                    };
                    if tx.send(load).await.is_err() {
                        return;
                    }
                }
            }
        });
        members.push((tx, stream, heartbeat));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut channels = Vec::new();
    for _ in 0..connections {
        channels.push(
            Channel::from_shared(uri.clone())
                .expect("uri")
                .connect()
                .await
                .expect("connect"),
        );
    }
    let count = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let channel = channels[i % connections].clone();
            let count = count.clone();
            tokio::spawn(async move {
                let mut client = GatekeeperClient::new(channel);
                while Instant::now() < deadline {
                    // A round trip that hangs must not hang the benchmark.
                    let trip = tokio::time::timeout(
                        Duration::from_secs(5),
                        lease_round_trip(&mut client, i),
                    );
                    if let Ok(true) = trip.await {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    for (_, _, heartbeat) in &members {
        heartbeat.abort();
    }
    drop(members);
    count.load(Ordering::Relaxed) as f64 / elapsed
}

async fn lease_round_trip(client: &mut GatekeeperClient<Channel>, i: usize) -> bool {
    let (tx, rx) = mpsc::channel(2);
    let request = AcquireRequest {
        msg: Some(acquire_request::Msg::Request(LeaseRequest {
            user: format!("u{}", i % 8),
            build_id: format!("b{i}"),
            job_id: "bench".into(),
            ..LeaseRequest::default()
        })),
    };
    if tx.send(request).await.is_err() {
        return false;
    }
    let Ok(response) = client.acquire(ReceiverStream::new(rx)).await else {
        return false;
    };
    let mut stream = response.into_inner();
    loop {
        match stream.message().await {
            Ok(Some(m)) if matches!(m.msg, Some(acquire_response::Msg::Lease(_))) => break,
            Ok(Some(_)) => continue,
            _ => return false,
        }
    }
    let _ = tx
        .send(AcquireRequest {
            msg: Some(acquire_request::Msg::Release(Release {})),
        })
        .await;
    true
}
