//! Desktop nodes: what farm compiles cost the owner of the machine they run
//! on. An "owner" workload (CPU-bound, one process per core, run as another
//! account, its work units counted) runs alone, then while a stream of
//! compiles runs on a `mexecd --desktop` node, on a plain `mexecd`, on
//! `distccd` and on icecream's remote daemon at their default priorities
//! (both nice 5). Variants are interleaved round by round; each figure is
//! the median over the rounds, as a ratio to the owner alone in the same
//! run. The machine's load average is recorded around every measurement.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mexec_testkit::owner::OWNER_UID;
use mexec_testkit::{bin, job_dir, Executor};
use serde::{Deserialize, Serialize};

use crate::icecream::Icecream;
use crate::peers::Distccd;

/// The owner's throughput with farm work of one kind beside it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OwnerRun {
    pub variant: String,
    /// Work units per second, median over the rounds.
    pub units_per_s: f64,
    /// Against the owner alone.
    pub ratio: f64,
    /// Farm compiles finished while the owner ran, summed over the rounds.
    pub compiles: usize,
    /// The 1-minute load average before and after each round's measurement.
    pub load: Vec<(f64, f64)>,
}

/// The whole section.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Desktop {
    pub owner_processes: usize,
    pub seconds: f64,
    pub rounds: usize,
    pub runs: Vec<OwnerRun>,
    /// Peers left out, and why.
    pub missing: Vec<String>,
}

const OWNER_C: &str = r#"#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}
int main(int argc, char **argv) {
    double end = now() + atof(argv[1]);
    volatile unsigned long x = 1;
    unsigned long units = 0;
    while (now() < end) {
        for (int i = 0; i < 200000; i++) x = x * 6364136223846793005UL + 1442695040888963407UL;
        units++;
    }
    printf("%lu\n", units);
    return 0;
}
"#;

/// A C file that takes gcc -O2 a second or so.
fn write_compile_work(dir: &Path) {
    let mut text = String::from("#include <string.h>\n");
    for i in 0..120 {
        text.push_str(&format!(
            "int f{i}(int *a, int n) {{ int s = {i}; for (int k = 0; k < n; k++) {{ s += a[k] * (k ^ {i}); if (s > 1000) s -= a[(k * 7) % n]; }} memset(a, s & 1, n); return s; }}\n"
        ));
    }
    std::fs::write(dir.join("work.c"), text).expect("write work.c");
}

/// Runs the owner for `secs` and returns its work units per second.
fn owner(program: &Path, processes: usize, secs: f64) -> f64 {
    let children: Vec<_> = (0..processes)
        .map(|_| {
            let mut command = Command::new(program);
            command.arg(secs.to_string()).stdout(Stdio::piped());
            if mexec_testkit::is_root() {
                command.uid(OWNER_UID).gid(OWNER_UID);
            }
            command.spawn().expect("start the owner")
        })
        .collect();
    let units: u64 = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().expect("owner output");
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<u64>()
                .unwrap_or(0)
        })
        .sum();
    units as f64 / secs
}

/// How many clients compile at once beside the owner.
pub const COMPILE_CLIENTS: usize = 2;

/// Clients compiling in a loop (as `make -j2` would) until stopped.
struct CompileStream {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CompileStream {
    fn start(make: Arc<dyn Fn(usize) -> Command + Send + Sync>) -> CompileStream {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let threads = (0..COMPILE_CLIENTS)
            .map(|t| {
                let (stop, done, make) = (stop.clone(), done.clone(), make.clone());
                std::thread::spawn(move || {
                    let mut n = 0;
                    while !stop.load(Ordering::Acquire) {
                        let status = make(t * 100_000 + n)
                            .stdin(Stdio::null())
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status();
                        if status.is_ok_and(|s| s.success()) && !stop.load(Ordering::Acquire) {
                            done.fetch_add(1, Ordering::AcqRel);
                        }
                        n += 1;
                    }
                })
            })
            .collect();
        CompileStream {
            stop,
            done,
            threads,
        }
    }

    fn finish(self) -> usize {
        self.stop.store(true, Ordering::Release);
        for t in self.threads {
            let _ = t.join();
        }
        self.done.load(Ordering::Acquire)
    }
}

fn load_avg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

type Maker = Arc<dyn Fn(usize) -> Command + Send + Sync>;

/// One variant's rounds: owner units per second, compiles finished, and
/// the load average around each.
#[derive(Debug, Clone, Default)]
struct Rounds {
    units: Vec<f64>,
    compiles: usize,
    load: Vec<(f64, f64)>,
}

/// The compile command of each variant.
fn makers(
    dir: &Path,
    desk: &Executor,
    plain: &Executor,
    distccd: Option<&Distccd>,
    icecream: Option<&Icecream>,
) -> Vec<(String, Option<Maker>)> {
    let mexec = bin("mexec");
    let on = |node: String| -> Maker {
        let (mexec, dir) = (mexec.clone(), dir.to_owned());
        Arc::new(move |n| {
            let mut c = Command::new(&mexec);
            c.current_dir(&dir)
                .args(["--no-local", "gcc", "-O2", "-c", "work.c", "-o"])
                .arg(format!("o{n}.o"))
                .env("MEXEC_NODES", format!("{node}/2"))
                .env(
                    "MEXEC_STATE_DIR",
                    dir.join(format!("state-{}", node.replace(':', "_"))),
                )
                .env_remove("MEXEC_GATEKEEPER")
                .env_remove("MEXEC_CONFIG");
            c
        })
    };
    let mut variants: Vec<(String, Option<Maker>)> = vec![
        ("owner alone".into(), None),
        ("mexecd --desktop".into(), Some(on(desk.node()))),
        ("mexecd (plain node)".into(), Some(on(plain.node()))),
    ];
    if let Some(d) = distccd {
        let (port, client, dir) = (d.port, d.dir.path().join("client"), dir.to_owned());
        variants.push((
            "distccd (default nice 5)".into(),
            Some(Arc::new(move |n| {
                let mut c = Command::new("distcc");
                c.current_dir(&dir)
                    .args(["gcc", "-O2", "-c", "work.c", "-o"])
                    .arg(format!("d{n}.o"))
                    .env("DISTCC_HOSTS", format!("127.0.0.1:{port}/2"))
                    .env("DISTCC_DIR", &client)
                    .env("DISTCC_FALLBACK", "0");
                c
            })),
        ));
    }
    if icecream.is_some() {
        let dir = dir.to_owned();
        variants.push((
            "icecream iceccd (default nice 5)".into(),
            Some(Arc::new(move |n| {
                let mut c = Command::new("icecc");
                c.current_dir(&dir)
                    .args(["gcc", "-O2", "-c", "work.c", "-o"])
                    .arg(format!("i{n}.o"));
                c
            })),
        ));
    }
    variants
}

/// Client-side work (distcc's preprocessing, the clients themselves) would
/// run on the build host, not on the desk: here, where both are one
/// machine, it runs at idle priority so that only the daemons' jobs meet
/// the owner.
fn as_if_elsewhere(command: &mut Command) {
    // SAFETY: plain system calls on the calling process, between fork and
    // exec; nothing is allocated.
    unsafe {
        command.pre_exec(|| {
            let param = libc::sched_param { sched_priority: 0 };
            libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
            Ok(())
        });
    }
}

/// Measures every variant, interleaved for `rounds` rounds.
pub fn run(smoke: bool) -> Desktop {
    let (secs, rounds) = if smoke { (2.0, 1) } else { (6.0, 5) };
    let processes = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dir = job_dir();
    let program = build_owner(dir.path());
    write_compile_work(dir.path());
    mexec_testkit::give_to_job_user(dir.path());
    let desk = Executor::start("desk", 2, &["--desktop"]);
    let plain = Executor::start("plain", 2, &[]);
    let mut missing = Vec::new();
    let distccd = Distccd::start(2);
    if distccd.is_none() {
        missing.push("distcc: distccd is not installed or did not start".to_owned());
    }
    let icecream = Icecream::start_with(2, None)
        .map_err(|why| missing.push(format!("icecream: {why}")))
        .ok();
    let variants = makers(
        dir.path(),
        &desk,
        &plain,
        distccd.as_ref(),
        icecream.as_ref(),
    );
    let mut measured = vec![Rounds::default(); variants.len()];
    for round in 0..rounds {
        for (i, (name, maker)) in variants.iter().enumerate() {
            eprintln!("desktop: round {} of {rounds}: {name}", round + 1);
            let stream = maker.clone().map(|make| {
                CompileStream::start(Arc::new(move |n| {
                    let mut c = make(n);
                    as_if_elsewhere(&mut c);
                    c
                }))
            });
            if stream.is_some() {
                // Compiles in flight, and a desk's offer settled, first.
                std::thread::sleep(Duration::from_secs(2));
            }
            let before = load_avg();
            let units = owner(&program, processes, secs);
            let after = load_avg();
            let compiles = stream.map_or(0, CompileStream::finish);
            let m = &mut measured[i];
            m.units.push(units);
            m.compiles += compiles;
            m.load.push((before, after));
        }
    }
    let alone = crate::stats::median(&measured[0].units);
    let runs = variants
        .iter()
        .zip(measured)
        .map(|((name, _), m)| {
            let units_per_s = crate::stats::median(&m.units);
            OwnerRun {
                variant: name.clone(),
                units_per_s,
                ratio: units_per_s / alone.max(1e-9),
                compiles: m.compiles,
                load: m.load,
            }
        })
        .collect();
    Desktop {
        owner_processes: processes,
        seconds: secs,
        rounds,
        runs,
        missing,
    }
}

/// Compiles the owner's program into `dir`.
fn build_owner(dir: &Path) -> PathBuf {
    std::fs::write(dir.join("owner.c"), OWNER_C).expect("write owner.c");
    let program = dir.join("owner");
    let status = Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(&program)
        .arg(dir.join("owner.c"))
        .status()
        .expect("run gcc");
    assert!(status.success(), "gcc owner.c failed");
    program
}
