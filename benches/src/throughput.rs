//! Gatekeeper throughput: lease round trips per second (acquire, grant,
//! release) from many concurrent clients against members with room to
//! spare, and end-to-end `true` jobs per second against process creation.
//! The CPU time the gatekeeper and the load generator each use during the
//! lease run is read from /proc, so the report can say which of the two,
//! sharing the machine's cores, bounds the rate.

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
    /// The lease run in detail; zero in results from before it was kept.
    #[serde(default)]
    pub placement_run: PlacementRun,
    pub placement_clients: usize,
    pub placement_connections: usize,
    pub mexec_true_per_s: f64,
    pub local_true_per_s: f64,
    pub e2e_concurrency: usize,
}

/// What one lease run counted and what it cost.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
pub struct PlacementRun {
    /// Lease round trips completed.
    pub placements: u64,
    pub wall_s: f64,
    /// CPU seconds (user + system) of the gatekeeper process.
    pub gatekeeper_cpu_s: f64,
    /// CPU seconds of this process, the load generator.
    pub generator_cpu_s: f64,
}

impl PlacementRun {
    /// Placements per CPU-second of the gatekeeper alone: the rate it
    /// would reach with a core to itself and a generator that keeps up.
    pub fn per_gatekeeper_cpu_s(&self) -> f64 {
        self.placements as f64 / self.gatekeeper_cpu_s
    }
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
    let placement_run = runtime.block_on(placements(
        format!("http://{}", gatekeeper.addr),
        gatekeeper.pid(),
        clients,
        connections,
        Duration::from_secs_f64(seconds),
    ));
    let placements_per_s = placement_run.placements as f64 / placement_run.wall_s;
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
        placement_run,
        placement_clients: clients,
        placement_connections: connections,
        mexec_true_per_s,
        local_true_per_s,
        e2e_concurrency: concurrency,
    }
}

/// Registers members with room for every client at once, then counts lease
/// round trips for `duration`, and the CPU time the gatekeeper (`gk_pid`)
/// and this process spent meanwhile.
async fn placements(
    uri: String,
    gk_pid: u32,
    clients: usize,
    connections: usize,
    duration: Duration,
) -> PlacementRun {
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
    let gatekeeper_cpu_before = cpu_seconds(&gk_pid.to_string());
    let generator_cpu_before = cpu_seconds("self");
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
    let wall_s = started.elapsed().as_secs_f64();
    let gatekeeper_cpu_s = cpu_seconds(&gk_pid.to_string()) - gatekeeper_cpu_before;
    let generator_cpu_s = cpu_seconds("self") - generator_cpu_before;
    for (_, _, heartbeat) in &members {
        heartbeat.abort();
    }
    drop(members);
    PlacementRun {
        placements: count.load(Ordering::Relaxed),
        wall_s,
        gatekeeper_cpu_s,
        generator_cpu_s,
    }
}

/// User + system CPU seconds of a process (`/proc/<pid>/stat`, all its
/// threads), 0 when it cannot be read.
pub fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name may hold spaces; the fields after it do not.
    let Some((_, after_name)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; after the name the
    // state (field 3) comes first, so they are at 11 and 12 here.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<f64>().ok()))
        .sum();
    // SAFETY: sysconf has no memory effects.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / per_second
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
