//! Per-job overhead: `true` and a small compile, locally, through mexec
//! directly and through the gatekeeper, and (the compile) through distcc
//! and icecream, interleaved run by run.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mexec_testkit::{give_to_job_user, job_dir, Farm, GatedFarm};
use serde::{Deserialize, Serialize};

use crate::icecream::Icecream;
use crate::peers::{peer_compiles, write_small_c, Distccd, Make};
use crate::stats::Timing;

#[derive(Debug, Serialize, Deserialize)]
pub struct Variant {
    pub name: String,
    pub timing: Timing,
    /// Median over the local run's median.
    pub ratio: f64,
    /// Median minus the local median, in ms.
    pub added_ms: f64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Overhead {
    pub true_cmd: Vec<Variant>,
    pub compile: Vec<Variant>,
    /// How icecream fared: how many compiles its remote daemon ran, or why
    /// it could not run.
    #[serde(default)]
    pub icecream: Option<String>,
    /// The client's fingerprint of gcc from a warm cache, in microseconds
    /// per job (median of in-process lookups): the toolchain check's own
    /// cost, beside the compile variants with it off (`MEXEC_TOOLCHAIN=any`).
    #[serde(default)]
    pub fingerprint_warm_us: Option<f64>,
}

/// `observed`: also a gatekeeper farm with metrics, the dashboard and
/// accounting on (`--observed`), measured beside the plain one.
pub fn run(runs: usize, observed: bool) -> Overhead {
    let farm = Farm::start(1, 2);
    let gated = GatedFarm::start(&[2], &[]);
    let accounting = tempfile::tempdir().expect("accounting dir");
    let db = accounting.path().join("accounting.db");
    let watched = observed.then(|| {
        GatedFarm::start_with(
            &[2],
            &[
                "--http-listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--accounting-db",
                db.to_str().expect("a UTF-8 path"),
            ],
            &["--metrics-listen", "127.0.0.1:0"],
        )
    });
    let distccd = Distccd::start(2);
    let dir = job_dir();
    let icecream = Icecream::start(2);
    if let Err(why) = &icecream {
        eprintln!("overhead: icecream not measured: {why}");
    }
    write_small_c(dir.path());
    give_to_job_user(dir.path());

    let local_true = |_: usize| Command::new("true");
    let direct_true = |_: usize| {
        let mut c = farm.mexec(dir.path(), &["--", "true"]);
        c.stdin(Stdio::null());
        c
    };
    let gated_true = |_: usize| {
        let mut c = gated.mexec(dir.path(), &["--", "true"]);
        c.stdin(Stdio::null());
        c
    };
    let watched_true = |_: usize| {
        let farm = watched.as_ref().expect("only with --observed");
        let mut c = farm.mexec(dir.path(), &["--", "true"]);
        c.stdin(Stdio::null());
        c
    };
    let mut variants: Vec<(&str, Make<'_>)> = vec![
        ("local", Box::new(local_true)),
        ("mexec direct", Box::new(direct_true)),
        ("mexec via gatekeeper", Box::new(gated_true)),
    ];
    if observed {
        variants.push((
            "mexec via gatekeeper, metrics + dashboard + accounting on",
            Box::new(watched_true),
        ));
    }
    let true_cmd = measure(runs, variants);

    let compile_args = ["gcc", "-O2", "-c", "small.c", "-o"];
    let local = |i: usize| {
        let mut c = Command::new("gcc");
        c.args(&compile_args[1..])
            .arg(format!("l{}.o", i % 4))
            .current_dir(dir.path());
        c
    };
    // The toolchain check is on unless MEXEC_TOOLCHAIN=any: each way to
    // the farm with it on and off, side by side.
    let check = |mut c: Command, on: bool| {
        if on {
            c.env_remove(TOOLCHAIN);
        } else {
            c.env(TOOLCHAIN, "any");
        }
        c
    };
    let (farm_ref, gated_ref, path) = (&farm, &gated, dir.path());
    let direct = |on: bool| {
        move |i: usize| {
            let mut c = check(farm_ref.mexec(path, &compile_args), on);
            c.arg(format!("m{}{}.o", u8::from(on), i % 4));
            c
        }
    };
    let gated_compile = |on: bool| {
        move |i: usize| {
            let mut c = check(gated_ref.mexec(path, &compile_args), on);
            c.arg(format!("g{}{}.o", u8::from(on), i % 4));
            c
        }
    };
    let mut variants: Vec<(&str, Make<'_>)> = vec![
        ("local", Box::new(local)),
        ("mexec direct", Box::new(direct(true))),
        ("mexec direct, MEXEC_TOOLCHAIN=any", Box::new(direct(false))),
        ("mexec via gatekeeper", Box::new(gated_compile(true))),
        (
            "mexec via gatekeeper, MEXEC_TOOLCHAIN=any",
            Box::new(gated_compile(false)),
        ),
    ];
    let dir_path = dir.path();
    variants.extend(peer_compiles(
        distccd.as_ref(),
        icecream.as_ref().ok(),
        dir_path,
        &compile_args,
    ));
    let compile = measure(runs, variants);
    let icecream = Some(match &icecream {
        Ok(farm) => format!(
            "{} of the {} icecream compiles (warm-up included) ran on the remote daemon",
            farm.remote_jobs(),
            runs + WARM_UP_ROUNDS + 1
        ),
        Err(why) => format!("not measured: {why}"),
    });
    Overhead {
        true_cmd,
        compile,
        icecream,
        fingerprint_warm_us: fingerprint_warm_us(dir.path(), runs),
    }
}

const TOOLCHAIN: &str = mexec_common::toolchain::CHECK_VARIABLE;

/// The median of `runs` warm-cache fingerprints of gcc, in microseconds:
/// what the check costs a job whose compiler did not change (a PATH
/// lookup, the cache file, a stat of each file behind the fingerprint).
fn fingerprint_warm_us(dir: &std::path::Path, runs: usize) -> Option<f64> {
    let env: Vec<_> = std::env::vars_os().collect();
    let gcc = std::ffi::OsStr::new("gcc");
    mexec_client::toolchain_cache::fingerprint(gcc, &env, dir)?;
    let samples: Vec<Duration> = (0..runs.max(10))
        .map(|_| {
            let started = Instant::now();
            let made = mexec_client::toolchain_cache::fingerprint(gcc, &env, dir);
            let took = started.elapsed();
            assert!(made.is_some(), "gcc stopped answering");
            took
        })
        .collect();
    Some(Timing::of(&samples).median_ms * 1000.0)
}

/// Untimed rounds before the measured ones.
const WARM_UP_ROUNDS: usize = 5;

/// Runs each variant `runs` times, round-robin, after a warm-up round.
fn measure(runs: usize, variants: Vec<(&str, Make<'_>)>) -> Vec<Variant> {
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(runs); variants.len()];
    for round in 0..runs + WARM_UP_ROUNDS {
        for (v, (_, make)) in variants.iter().enumerate() {
            let mut command = make(round);
            command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let started = Instant::now();
            let status = command.status().expect("run a variant");
            let took = started.elapsed();
            assert!(status.success(), "{} failed", variants[v].0);
            if round >= WARM_UP_ROUNDS {
                samples[v].push(took);
            }
        }
    }
    let local = Timing::of(&samples[0]).median_ms;
    variants
        .iter()
        .zip(samples)
        .map(|((name, _), s)| {
            let timing = Timing::of(&s);
            Variant {
                name: name.to_string(),
                ratio: timing.median_ms / local,
                added_ms: timing.median_ms - local,
                timing,
            }
        })
        .collect()
}
