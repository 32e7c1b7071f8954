//! Desktop nodes in a gatekeeper's cluster, with real clients: while a
//! desk's owner is busy (CPU-bound processes of another account) its offer
//! falls to nothing and the gatekeeper places new jobs elsewhere; with
//! `--reclaim`, a long repeatable job running there is moved off it and the
//! build it belongs to succeeds.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mexec_testkit::owner::CpuHog;
use mexec_testkit::{bin, job_dir, wait_until, GatedFarm as Cluster};

/// Long enough for a loaded shared machine; the states come much sooner.
const STATE_WAIT: Duration = Duration::from_secs(60);

/// One test at a time: each one's busy processes are the other desks'
/// owner load.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The gatekeeper's view of node `name`.
fn node(cluster: &Cluster, name: &str) -> serde_json::Value {
    cluster.status()["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["node"] == name).cloned())
        .unwrap_or_default()
}

fn offered(cluster: &Cluster, name: &str) -> Option<u64> {
    node(cluster, name)["offered_slots"].as_u64()
}

fn joblog(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Runs `count` short jobs through the gatekeeper, two at a time, and
/// returns the nodes they ran on.
fn run_jobs(cluster: &Cluster, dir: &Path, count: usize) -> Vec<String> {
    let log = dir.join(format!("jobs-{}.log", rand_suffix()));
    let jobs = (0..count)
        .map(|_| {
            let mut c = cluster.mexec(dir, &["--no-local", "sh", "-c", "sleep 0.2"]);
            c.env("MEXEC_JOBLOG", &log);
            c
        })
        .collect();
    for output in mexec_testkit::run_pool(jobs, 2) {
        assert!(output.status.success(), "{output:?}");
    }
    joblog(&log)
        .iter()
        .map(|e| e["node"].as_str().unwrap().to_owned())
        .collect()
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[test]
fn a_busy_owners_desk_offers_nothing_and_new_jobs_go_elsewhere_until_it_is_idle() {
    let _serial = one_at_a_time();
    let mut cluster = Cluster::start(&[1], &[]);
    // Many slots for two cores, so that some are offered even while other
    // work on a shared machine takes most of a core.
    cluster.add_with("desk", 16, &["--desktop"]);
    let dir = job_dir();
    // Other work on the machine is an owner's load too: a shared machine
    // may keep some slots back, so "offers" here is "offers some".
    let offers = |cluster: &Cluster| offered(cluster, "desk").is_some_and(|n| n > 0);
    assert!(
        wait_until(STATE_WAIT, || offers(&cluster)),
        "{:?}",
        node(&cluster, "desk")
    );
    assert_eq!(node(&cluster, "desk")["desktop"], true);

    let hog = CpuHog::start(2 * cores());
    assert!(
        wait_until(STATE_WAIT, || offered(&cluster, "desk") == Some(0)),
        "{:?}",
        node(&cluster, "desk")
    );
    let why = node(&cluster, "desk")["offer_reason"].clone();
    assert!(why.as_str().unwrap().starts_with("owner load "), "{why}");
    let table = cluster.mexec(dir.path(), &["--status"]).output().unwrap();
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(table.contains("desktop: owner load "), "{table}");
    let placed = run_jobs(&cluster, dir.path(), 4);
    assert_eq!(placed, ["n1"; 4], "new work goes elsewhere meanwhile");

    hog.stop();
    assert!(
        wait_until(STATE_WAIT, || offers(&cluster)),
        "{:?}",
        node(&cluster, "desk")
    );
    // The desk's slots are offered again: it takes new work again.
    let placed = run_jobs(&cluster, dir.path(), 4);
    assert!(placed.iter().any(|n| n == "desk"), "{placed:?}");
}

#[test]
fn reclaim_moves_a_long_repeatable_job_off_a_desk_and_its_build_succeeds() {
    let _serial = one_at_a_time();
    let mut cluster = Cluster::start(&[], &[]);
    cluster.add_with(
        "desk",
        16,
        &["--desktop", "--reclaim", "--reclaim-after-ms", "300"],
    );
    let dir = job_dir();
    assert!(wait_until(STATE_WAIT, || offered(&cluster, "desk")
        .is_some_and(|n| n > 0)));
    let log = dir.path().join("build.log");
    // A build of two steps: a long repeatable one and one that needs it.
    // `-n`: a job that may read stdin is repeatable only without it.
    let makefile = format!(
        "all: done.txt\n\
         long.txt:\n\t{mexec} --retry -n --no-local sh -c 'sleep 6; echo long > long.txt'\n\
         done.txt: long.txt\n\t{mexec} --no-local sh -c 'cat long.txt > done.txt'\n",
        mexec = bin("mexec").display()
    );
    std::fs::write(dir.path().join("Makefile"), makefile).unwrap();
    mexec_testkit::give_to_job_user(dir.path());
    let mut make = Command::new("make");
    make.current_dir(dir.path())
        .env("MEXEC_GATEKEEPER", cluster.gatekeeper.address())
        .env("MEXEC_STATE_DIR", cluster.state_dir.path())
        .env("MEXEC_JOBLOG", &log)
        .env_remove("MEXEC_NODES")
        .env_remove("MEXEC_CONFIG");
    let build = make.spawn().unwrap();
    assert!(
        wait_until(STATE_WAIT, || cluster.status()["jobs"][0]["node"] == "desk"),
        "the long job did not start on the desk"
    );
    cluster.add("n1", 2);
    assert!(wait_until(STATE_WAIT, || cluster.members().len() == 2));

    let hog = CpuHog::start(2 * cores());
    assert!(
        wait_until(STATE_WAIT, || node(&cluster, "desk")["reclaiming"] == true),
        "{:?}",
        node(&cluster, "desk")
    );
    assert!(
        wait_until(STATE_WAIT, || node(&cluster, "desk")["running"] == 0),
        "the repeatable job was not given back: {:?}",
        node(&cluster, "desk")
    );
    let output = build.wait_with_output().unwrap();
    hog.stop();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("done.txt")).unwrap(),
        "long\n"
    );
    let entries = joblog(&log);
    let long = &entries[0];
    assert_eq!(long["node"], "n1", "{entries:?}");
    assert_eq!(long["retries"], 1, "{entries:?}");
    assert_eq!(long["exit_code"], 0, "{entries:?}");
}
