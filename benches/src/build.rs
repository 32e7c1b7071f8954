//! A real build at equal parallelism: GMP (about 500 objects, its own
//! autotools Makefiles) with plain make, with CC=mexec on one and on three
//! executors, with mpmake, with distcc and with icecream, runs interleaved.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use mexec_testkit::{bin, c_project, copy_tree, give_to_job_user, job_dir, Farm};
use serde::{Deserialize, Serialize};

use crate::icecream::Icecream;
use crate::peers::Distccd;
use crate::stats::median;

#[derive(Debug, Serialize, Deserialize)]
pub struct BuildVariant {
    pub name: String,
    pub seconds: Vec<f64>,
    pub median_s: f64,
    pub ratio: f64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Build {
    pub project: String,
    pub objects: usize,
    pub parallelism: u32,
    pub variants: Vec<BuildVariant>,
    /// How icecream fared: how many compiles its remote daemon ran, or why
    /// it could not run.
    #[serde(default)]
    pub icecream: Option<String>,
}

pub fn run(smoke: bool, rounds: usize) -> Build {
    let parallelism = 3;
    let dir = job_dir();
    let (project, tree) = if smoke {
        let tree = dir.path().join("bzip2");
        copy_tree(&c_project("bzip2-sys-0.1.13", "bzip2-1.0.8"), &tree);
        ("bzip2 1.0.8 (libbz2.a bzip2)".to_owned(), tree)
    } else {
        let tree = dir.path().join("gmp");
        copy_tree(&c_project("gmp-mpfr-sys-1.7.1", "gmp-6.3.0-c"), &tree);
        let status = Command::new("./configure")
            .args(["--disable-assembly", "--disable-shared"])
            .current_dir(&tree)
            .stdout(Stdio::null())
            .status()
            .expect("run GMP's configure");
        assert!(status.success(), "GMP's configure failed");
        (
            "GMP 6.3.0 (--disable-assembly --disable-shared)".to_owned(),
            tree,
        )
    };
    give_to_job_user(&tree);
    let targets: &[&str] = if smoke { &["libbz2.a", "bzip2"] } else { &[] };

    let one = Farm::start(1, parallelism);
    let three = Farm::start(3, 1);
    let distccd = Distccd::start(parallelism);
    let icecream = Icecream::start(parallelism);
    if let Err(why) = &icecream {
        eprintln!("build: icecream not measured: {why}");
    }
    let mexec = bin("mexec");
    let mpmake = bin("mpmake");
    let j = format!("-j{parallelism}");
    let cc_mexec = format!("CC={} gcc", mexec.display());

    let mut names = vec![
        "local make",
        "CC=mexec, 1 executor",
        "CC=mexec, 3 executors",
        "mpmake, 3 executors",
    ];
    if distccd.is_some() {
        names.push("distcc");
    }
    if icecream.is_ok() {
        names.push("icecream");
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut objects = 0;
    for _ in 0..rounds {
        for (v, name) in names.iter().enumerate() {
            clean(&tree);
            let mut command = match *name {
                "local make" => make(&tree, &[&j], targets),
                "CC=mexec, 1 executor" => {
                    let mut c = make(&tree, &[&j, &cc_mexec], targets);
                    one.aim(&mut c, &tree);
                    c
                }
                "CC=mexec, 3 executors" => {
                    let mut c = make(&tree, &[&j, &cc_mexec], targets);
                    three.aim(&mut c, &tree);
                    c
                }
                "mpmake, 3 executors" => {
                    let mut c = Command::new(&mpmake);
                    c.current_dir(&tree).args(targets).env_remove("MAKEFLAGS");
                    three.aim(&mut c, &tree);
                    c
                }
                "icecream" => make(&tree, &[&j, "CC=icecc gcc"], targets),
                _ => {
                    let mut c = make(&tree, &[&j, "CC=distcc gcc"], targets);
                    if let Some(d) = &distccd {
                        d.aim(&mut c, parallelism);
                    }
                    c
                }
            };
            let started = Instant::now();
            let output = command.output().expect("run the build");
            let took = started.elapsed();
            assert!(
                output.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            samples[v].push(took.as_secs_f64());
            objects = mexec_testkit::files_by_extension(&tree, &["o"]).len();
        }
    }
    clean(&tree);
    let local = median(&samples[0]);
    let variants = names
        .iter()
        .zip(samples)
        .map(|(name, seconds)| {
            let m = median(&seconds);
            BuildVariant {
                name: name.to_string(),
                median_s: m,
                ratio: m / local,
                seconds,
            }
        })
        .collect();
    let icecream = Some(match &icecream {
        Ok(farm) => format!(
            "the remote icecream daemon ran {} compiles over {rounds} builds (and one warm-up)",
            farm.remote_jobs()
        ),
        Err(why) => format!("not measured: {why}"),
    });
    Build {
        project,
        objects,
        parallelism,
        variants,
        icecream,
    }
}

fn make(tree: &Path, args: &[&str], targets: &[&str]) -> Command {
    let mut c = Command::new("make");
    c.current_dir(tree)
        .args(args)
        .args(targets)
        .env_remove("MAKEFLAGS");
    c
}

fn clean(tree: &Path) {
    let _ = Command::new("make")
        .arg("clean")
        .current_dir(tree)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
