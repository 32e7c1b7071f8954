//! The member cache as an attacker on the same host would use it: a list
//! planted in the victim's state directory, pointing at the attacker's own
//! executor, must not steer the victim's jobs there while the gatekeeper
//! is down; and nodes given explicitly win over any cache.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

use mexec_testkit::{bin, is_root, job_account, job_dir, skip, Executor};

/// An address nothing listens on: the gatekeeper is down.
fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// Writes the cache file a client of `gatekeeper` reads, listing `fake`.
fn plant(state_dir: &Path, gatekeeper: &str, fake: &Executor) -> std::path::PathBuf {
    let name = gatekeeper.replace(|c: char| !c.is_ascii_alphanumeric() && c != '.', "_");
    let path = state_dir.join(format!("members-{name}.json"));
    let list = serde_json::json!({
        "updated_ms": 0,
        "members": [{"node": "fake", "address": fake.node(), "slots": 4}],
    });
    std::fs::write(&path, serde_json::to_vec(&list).unwrap()).unwrap();
    path
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn run(state_dir: &Path, gatekeeper: &str, nodes: Option<&str>) -> Output {
    let dir = job_dir();
    let mut command = Command::new(bin("mexec"));
    command
        .current_dir(dir.path())
        .args(["-n", "sh", "-c", "echo ran"])
        .env("MEXEC_GATEKEEPER", gatekeeper)
        .env("MEXEC_STATE_DIR", state_dir)
        .env_remove("MEXEC_NODES")
        .env_remove("MEXEC_CONFIG");
    if let Some(nodes) = nodes {
        command.env("MEXEC_NODES", nodes);
    }
    command.output().unwrap()
}

fn ran_jobs(executor: &Executor) -> usize {
    executor.log_text().matches("job finished").count()
}

#[test]
fn a_cache_planted_by_another_user_is_ignored() {
    if !is_root() {
        return skip("needs root to plant files as another user");
    }
    let fake = Executor::start("fake", 4, &[]);
    let gatekeeper = closed_port();
    let (uid, gid) = job_account();
    // The attacker made the directory first (as in /tmp, when the victim
    // has no runtime directory), and the list in it.
    let planted_dir = tempfile::tempdir().unwrap();
    let cache = plant(planted_dir.path(), &gatekeeper, &fake);
    chown(&cache, uid, gid);
    chown(planted_dir.path(), uid, gid);
    set_mode(planted_dir.path(), 0o755);
    let output = run(planted_dir.path(), &gatekeeper, None);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(output.stdout, b"ran\n");
    assert_eq!(ran_jobs(&fake), 0, "the job went to the planted executor");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("member cache"), "{stderr}");
    assert!(stderr.contains("ignored"), "{stderr}");

    // The victim's own directory, with a file someone else owns in it (or
    // one others may write): refused just the same.
    let own_dir = tempfile::tempdir().unwrap();
    set_mode(own_dir.path(), 0o700);
    let cache = plant(own_dir.path(), &gatekeeper, &fake);
    chown(&cache, uid, gid);
    let output = run(own_dir.path(), &gatekeeper, None);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(ran_jobs(&fake), 0, "the job went to the planted executor");
    chown(&cache, 0, 0);
    set_mode(&cache, 0o666);
    let output = run(own_dir.path(), &gatekeeper, None);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(ran_jobs(&fake), 0, "the job went to the planted executor");

    // The same file, ours and private, is used: the refusals above came
    // from the checks, not from a list that could never work.
    set_mode(&cache, 0o600);
    let output = run(own_dir.path(), &gatekeeper, None);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(ran_jobs(&fake), 1);
}

#[test]
fn nodes_given_explicitly_win_over_the_cache() {
    let fake = Executor::start("cached", 4, &[]);
    let real = Executor::start("real", 4, &[]);
    let gatekeeper = closed_port();
    let state_dir = tempfile::tempdir().unwrap();
    set_mode(state_dir.path(), 0o700);
    let cache = plant(state_dir.path(), &gatekeeper, &fake);
    set_mode(&cache, 0o600);
    let output = run(state_dir.path(), &gatekeeper, Some(&real.node()));
    assert!(output.status.success(), "{output:?}");
    assert_eq!(output.stdout, b"ran\n");
    assert_eq!(ran_jobs(&real), 1);
    assert_eq!(ran_jobs(&fake), 0, "the cache won over MEXEC_NODES");
}
