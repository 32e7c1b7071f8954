//! Many users: every job runs as the user who submitted it, proven by the
//! client certificate (mutual TLS) or by MUNGE, through a gatekeeper whose
//! executors each sit on a host of their own (network namespaces), with
//! real accounts made by `useradd` (`mexec-alice`, `mexec-bob`, private
//! directories of mode 700) and a real munged of the test's own.
//!
//! The two-user builds and the check that one user's job cannot get into
//! the other's home run with the homes on a real network file system: a
//! GlusterFS volume served by a host of its own (`testkit::netfs`), which
//! the build host and each executor host mount, the executors inside
//! their hosts' mount namespaces, so their jobs see the homes only through
//! the network. The other tests need no shared tree: theirs is
//! `MEXEC_USERS_TREE` when set, else a directory on the local disk.
//!
//! Skipped with a message where namespaces cannot be made (not root);
//! `.ci/run` sets MEXEC_REQUIRE_NETNS=1 so CI fails instead of skipping.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use mexec_common::connector::{Connector, Timeouts};
use mexec_common::token::Token;
use mexec_proto::v1::executor_client::ExecutorClient;
use mexec_proto::v1::{run_request, run_response, EnvVar, JobSpec, RunRequest};
use mexec_server::certs::{self, Issued, Kind, Validity};
use mexec_testkit::accounts::{self, Account, Tree};
use mexec_testkit::munged::Munged;
use mexec_testkit::netfs::NetFs;
use mexec_testkit::netns::Lan;
use mexec_testkit::{bin, c_project, copy_tree, wait_until, Executor, Gatekeeper};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const EXECUTOR_PORT: u16 = 7460;
const GATEKEEPER_PORT: u16 = 7461;
const ALICE: &str = "mexec-alice";
const BOB: &str = "mexec-bob";

/// How users prove who they are in one test's cluster.
enum Proof {
    /// Mutual TLS: the cluster CA, node certificates, user certificates.
    Tls { dir: tempfile::TempDir, ca: Issued },
    /// MUNGE, with the cluster token for everything else.
    Munge {
        munged: Munged,
        token: tempfile::TempDir,
    },
}

impl Proof {
    fn tls() -> Proof {
        let dir = tempfile::tempdir().unwrap();
        let ca = certs::new_ca("users test CA", Validity::days(1)).unwrap();
        ca.write(dir.path(), "ca").unwrap();
        Proof::Tls { dir, ca }
    }

    fn munge() -> Option<Proof> {
        let munged = Munged::start()?;
        let token = tempfile::tempdir().unwrap();
        write_token(&token.path().join("token"), None);
        Some(Proof::Munge { munged, token })
    }

    /// The flags a daemon named `name` at `ip` needs for this proof.
    fn daemon_flags(&self, name: &str, ip: &str) -> Vec<String> {
        match self {
            Proof::Tls { dir, ca } => {
                let hosts = [ip.to_owned(), "localhost".to_owned()];
                certs::issue(ca, Kind::Node, name, &hosts, Validity::days(1))
                    .unwrap()
                    .write(dir.path(), name)
                    .unwrap();
                let path = |f: String| dir.path().join(f).to_string_lossy().into_owned();
                vec![
                    "--tls-ca".into(),
                    path("ca.pem".into()),
                    "--tls-cert".into(),
                    path(format!("{name}.pem")),
                    "--tls-key".into(),
                    path(format!("{name}-key.pem")),
                ]
            }
            Proof::Munge { munged, token } => vec![
                "--munge".into(),
                "--munge-socket".into(),
                munged.socket().to_string_lossy().into_owned(),
                "--token-file".into(),
                token.path().join("token").to_string_lossy().into_owned(),
            ],
        }
    }

    /// Who vouches for relayed users: the gatekeeper's certificate, or the
    /// account it runs as (this test's: root).
    fn relay_from(&self) -> &'static str {
        match self {
            Proof::Tls { .. } => "gk",
            Proof::Munge { .. } => "root",
        }
    }

    /// Sets up `command` (a client run as `account`, or as root when
    /// `None`) to prove `cert_name` (TLS: the certificate's name; MUNGE:
    /// ignored, munged knows the uid), with its files in `dir`.
    fn client(
        &self,
        command: &mut Command,
        cert_name: &str,
        dir: &Path,
        account: Option<&Account>,
    ) {
        for var in [
            "MEXEC_TLS_CA",
            "MEXEC_TLS_CERT",
            "MEXEC_TLS_KEY",
            "MEXEC_TOKEN_FILE",
            "MEXEC_MUNGE",
            "MEXEC_MUNGE_SOCKET",
        ] {
            command.env_remove(var);
        }
        match self {
            Proof::Tls { dir: ca_dir, ca } => {
                let cert = dir.join(format!("{cert_name}.pem"));
                if !cert.exists() {
                    certs::issue(ca, Kind::User, cert_name, &[], Validity::days(1))
                        .unwrap()
                        .write(dir, cert_name)
                        .unwrap();
                    if let Some(account) = account {
                        account.give(&cert);
                        account.give(&dir.join(format!("{cert_name}-key.pem")));
                    }
                }
                command
                    .env("MEXEC_TLS_CA", ca_dir.path().join("ca.pem"))
                    .env("MEXEC_TLS_CERT", cert)
                    .env("MEXEC_TLS_KEY", dir.join(format!("{cert_name}-key.pem")));
            }
            Proof::Munge { munged, .. } => {
                let token = dir.join("token");
                if !token.exists() {
                    write_token(&token, account);
                }
                command
                    .env("MEXEC_MUNGE", "1")
                    .env("MEXEC_MUNGE_SOCKET", munged.socket())
                    .env("MEXEC_TOKEN_FILE", token);
            }
        }
    }
}

/// The cluster token, readable by `owner` alone (as the client requires).
fn write_token(path: &Path, owner: Option<&Account>) {
    std::fs::write(path, "users-test-token\n").unwrap();
    std::fs::set_permissions(path, PermissionsExt::from_mode(0o600)).unwrap();
    if let Some(owner) = owner {
        owner.give(path);
    }
}

/// Where the users' homes are.
#[derive(Clone, Copy, PartialEq)]
enum Homes {
    /// `Tree::new()`: the local disk, or `MEXEC_USERS_TREE`.
    Local,
    /// A GlusterFS volume that the build host and the gatekeeper's
    /// executors mount, each executor in its host's mount namespace.
    Network,
}

/// A gatekeeper on host 0 and executors `n1`, `n2` on hosts 1 and 2, each
/// running jobs as their submitters; host 3 has `n3`, a node of no
/// cluster, for direct jobs. With `Homes::Network`, a fifth host serves
/// the volume that hosts 1 and 2 mount.
/// Fields drop in order: executors, the file system, then the LAN.
struct Cluster {
    executors: Vec<Executor>,
    _gatekeeper: Gatekeeper,
    fs: Option<NetFs>,
    lan: Lan,
    proof: Proof,
}

impl Cluster {
    fn start(test: &str, proof: Proof, executor_extra: &[&str], homes: Homes) -> Option<Cluster> {
        let mut lan = Lan::create_or_skip(4, test)?;
        let fs = (homes == Homes::Network).then(|| {
            let fs = NetFs::start(&mut lan, &[1, 2]).expect("the network file system");
            println!(
                "{test}: GlusterFS server and mounts on the build host and hosts 1, 2 set up \
                 in {:.2} s",
                fs.setup_time.as_secs_f64()
            );
            fs
        });
        let ip = |h: usize| lan.hosts[h].ip.to_string();
        let mut gk_flags = proof.daemon_flags("gk", &ip(0));
        gk_flags.extend(["--log-format".into(), "json".into()]);
        let gk_flags: Vec<&str> = gk_flags.iter().map(String::as_str).collect();
        let gatekeeper = Gatekeeper::start_in(&lan, 0, GATEKEEPER_PORT, &gk_flags);
        let gatekeeper_address = lan.address(0, GATEKEEPER_PORT);
        let mut executors = Vec::new();
        for host in 1..=3 {
            let name = format!("n{host}");
            let listen = lan.address(host, EXECUTOR_PORT);
            let mut flags = proof.daemon_flags(&name, &ip(host));
            flags.extend(
                [
                    "--listen",
                    &listen,
                    "--run-as-submitter",
                    "--relay-from",
                    proof.relay_from(),
                    "--log-format",
                    "json",
                ]
                .map(str::to_owned),
            );
            if host < 3 {
                flags.extend(["--gatekeeper".to_owned(), gatekeeper_address.clone()]);
            }
            flags.extend(executor_extra.iter().map(|s| s.to_string()));
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            let command = match &fs {
                Some(fs) if host < 3 => fs.command(&lan, host, bin("mexecd")),
                _ => lan.command(host, bin("mexecd")),
            };
            executors.push(Executor::start_with(command, &name, 4, &flags));
        }
        let cluster = Cluster {
            executors,
            _gatekeeper: gatekeeper,
            fs,
            lan,
            proof,
        };
        let state = tempfile::tempdir().unwrap();
        assert!(
            wait_until(Duration::from_secs(15), || cluster.members(state.path())
                == 2),
            "executors did not join the gatekeeper; n1 log:\n{}",
            cluster.executors[0].log_text()
        );
        Some(cluster)
    }

    /// The tree the users' homes go in: on the volume when there is one.
    fn tree(&self) -> Tree {
        match &self.fs {
            Some(fs) => Tree::at(&fs.path()),
            None => Tree::new(),
        }
    }

    /// With homes on the volume: `user`'s home, as executor hosts 1 and 2
    /// see it in their mount namespaces, is on their GlusterFS mount,
    /// the user's, mode 700.
    fn check_home_on_executors(&self, user: &User) {
        let Some(fs) = &self.fs else {
            return;
        };
        for host in [1, 2] {
            let script = format!(
                "findmnt -n -o FSTYPE --target '{d}'; stat -c '%U %a' '{d}'",
                d = user.dir.display()
            );
            let output = fs.run_on(&self.lan, host, &script);
            ok(&output, "findmnt and stat on an executor host");
            let seen = text(&output.stdout);
            assert_eq!(
                seen,
                format!("fuse.glusterfs\n{} 700\n", user.account.name),
                "{} as host {host} sees it",
                user.dir.display()
            );
            println!(
                "host {host} sees {}: {}",
                user.dir.display(),
                seen.trim().replace('\n', ", ")
            );
        }
    }

    fn gatekeeper_address(&self) -> String {
        self.lan.address(0, GATEKEEPER_PORT)
    }

    fn members(&self, state: &Path) -> usize {
        let mut command = Command::new(bin("mexec"));
        self.proof.client(&mut command, "probe", state, None);
        let output = command
            .args(["--status", "--json"])
            .env("MEXEC_GATEKEEPER", self.gatekeeper_address())
            .env("MEXEC_STATE_DIR", state)
            .env_remove("MEXEC_NODES")
            .env_remove("MEXEC_CONFIG")
            .output()
            .unwrap();
        let status: serde_json::Value =
            serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
        status["nodes"].as_array().map_or(0, Vec::len)
    }

    /// `mexec` run by `account` (root when `None`) through the gatekeeper,
    /// never locally, proving `cert_name`, in `cwd`, with its state and
    /// credentials in `home`.
    fn mexec(
        &self,
        account: Option<&Account>,
        cert_name: &str,
        home: &Path,
        cwd: &Path,
    ) -> Command {
        let mut command = match account {
            Some(account) => account.command(bin("mexec")),
            None => Command::new(bin("mexec")),
        };
        self.aim(&mut command, cert_name, home, account);
        command.current_dir(cwd).arg("--no-local").arg("--");
        command
    }

    fn aim(&self, command: &mut Command, cert_name: &str, home: &Path, account: Option<&Account>) {
        self.proof.client(command, cert_name, home, account);
        command
            .env("MEXEC_GATEKEEPER", self.gatekeeper_address())
            .env("MEXEC_STATE_DIR", home.join("state"))
            .env("MEXEC_NO_LOCAL", "1")
            .env_remove("MEXEC_NODES")
            .env_remove("MEXEC_CONFIG")
            .env_remove("MEXEC_RELAY")
            .env_remove("MEXEC_SUBMIT_USER");
    }

    /// Jobs the executors logged as finished, run as `user`.
    fn jobs_run_as(&self, user: &str) -> usize {
        let needle = format!("\"run_as\":\"{user}\"");
        self.executors
            .iter()
            .map(|e| {
                e.log_text()
                    .lines()
                    .filter(|l| l.contains("job finished") && l.contains(&needle))
                    .count()
            })
            .sum()
    }

    fn finished_jobs(&self) -> usize {
        self.executors
            .iter()
            .map(|e| e.log_text().matches("job finished").count())
            .sum()
    }
}

/// A user of the test: the account, a private directory (mode 700) in the
/// tree for its build, and one outside the tree for credentials and state.
struct User {
    account: Account,
    dir: PathBuf,
    home: PathBuf,
}

impl User {
    fn new(name: &str, tree: &Tree, label: &str) -> User {
        let account = accounts::ensure(name);
        let dir = tree.private_dir(&account, label);
        let home = account.home.join(format!("mexec-test-{label}"));
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(&home).unwrap();
        account.give(&home);
        User { account, dir, home }
    }
}

/// What a finished build left: each object's bytes, mode and owner.
type Objects = BTreeMap<String, (Vec<u8>, u32, u32)>;

fn objects(dir: &Path) -> Objects {
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "o") {
            let meta = entry.metadata().unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            found.insert(
                name,
                (
                    std::fs::read(&path).unwrap(),
                    meta.mode() & 0o7777,
                    meta.uid(),
                ),
            );
        }
    }
    found
}

/// bzip2 (its own Makefile, nine C files) copied into `user`'s directory.
fn bzip2_tree(user: &User) -> PathBuf {
    let tree = user.dir.join("bzip2");
    copy_tree(&c_project("bzip2-sys-0.1.13", "bzip2-1.0.8"), &tree);
    user.account.give(&tree);
    tree
}

/// `make` of bzip2's library and program in `tree`, as `user`, under
/// umask 027 (so that the client's umask shows in every object's mode),
/// with `cc` as the compiler.
fn make(user: &User, tree: &Path, cc: &str) -> Command {
    let mut command = user.account.command("sh");
    command.current_dir(tree).args([
        "-c",
        &format!("umask 027; exec make -j4 CC='{cc}' libbz2.a bzip2"),
    ]);
    command
}

fn ok(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Both users build bzip2 at the same time through the gatekeeper (alice
/// leased, bob relayed when `bob_relays`, and the other way round when
/// not), and each build must match the same user's plain local build:
/// the same objects, byte for byte, owned by the user, with the same mode.
fn two_users_build_at_once(
    cluster: &Cluster,
    tree: &Tree,
    label: &str,
    bob_relays: bool,
) -> Vec<(User, Objects)> {
    let users = [User::new(ALICE, tree, label), User::new(BOB, tree, label)];
    for user in &users {
        cluster.check_home_on_executors(user);
    }
    let mut local = Vec::new();
    for user in &users {
        let dir = bzip2_tree(user);
        ok(&make(user, &dir, "gcc").output().unwrap(), "local make");
        local.push(objects(&dir));
        ok(
            &user
                .account
                .command("make")
                .current_dir(&dir)
                .arg("clean")
                .output()
                .unwrap(),
            "make clean",
        );
    }
    let mexec = bin("mexec").display().to_string();
    let builds: Vec<_> = users
        .iter()
        .map(|user| {
            let dir = user.dir.join("bzip2");
            let mut command = make(user, &dir, &mexec);
            cluster.aim(
                &mut command,
                &user.account.name,
                &user.home,
                Some(&user.account),
            );
            let relays = (user.account.name == BOB) == bob_relays;
            if relays {
                command.env("MEXEC_RELAY", "1");
            }
            command
                .env("MEXEC_CC", "gcc")
                .env("MEXEC_JOBLOG", user.home.join("jobs.jsonl"));
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
            (relays, command.spawn().unwrap())
        })
        .collect();
    let outputs: Vec<_> = builds
        .into_iter()
        .map(|(relays, child)| (relays, child.wait_with_output().unwrap()))
        .collect();
    let mut logged = Vec::new();
    for ((user, local), (relays, output)) in users.iter().zip(&local).zip(&outputs) {
        ok(
            output,
            &format!("{}'s build through mexec", user.account.name),
        );
        let remote = objects(&user.dir.join("bzip2"));
        assert_eq!(
            remote.keys().collect::<Vec<_>>(),
            local.keys().collect::<Vec<_>>()
        );
        assert!(local.len() >= 8, "{:?}", local.keys());
        for (name, (bytes, mode, uid)) in &remote {
            let (local_bytes, local_mode, local_uid) = &local[name];
            assert_eq!(
                *uid, user.account.uid,
                "{name} of {} is not theirs",
                user.account.name
            );
            assert_eq!(uid, local_uid);
            assert_eq!(
                mode, local_mode,
                "{name}: mode {mode:o}, locally {local_mode:o}"
            );
            assert!(
                bytes == local_bytes,
                "{name} of {} differs from the local build",
                user.account.name
            );
        }
        let joblog = std::fs::read_to_string(user.home.join("jobs.jsonl")).unwrap();
        let jobs: Vec<serde_json::Value> = joblog
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let mut nodes = BTreeMap::<&str, usize>::new();
        for node in jobs.iter().filter_map(|j| j["node"].as_str()) {
            *nodes.entry(node).or_default() += 1;
        }
        assert!(jobs.iter().all(|j| j["placed"] == "remote"), "{joblog}");
        logged.push(jobs.len());
        let mode = local.values().next().map(|(_, m, _)| *m).unwrap_or(0);
        println!(
            "{}: {} jobs ({}), per node {nodes:?}; {} objects owned by uid {} with mode {mode:o} \
             (umask 027), byte for byte the local build's",
            user.account.name,
            jobs.len(),
            if *relays { "relayed" } else { "leased" },
            remote.len(),
            user.account.uid,
        );
    }
    for (user, logged) in users.iter().zip(logged) {
        let ran = cluster.jobs_run_as(&user.account.name);
        assert_eq!(
            ran, logged,
            "jobs the executors ran as {}",
            user.account.name
        );
        println!(
            "executors ran {ran} jobs as {} (its client logged {logged})",
            user.account.name
        );
    }
    users.into_iter().zip(local).collect()
}

/// `user` builds again with `mpmake --munge` (which passes MUNGE on to the
/// `mexec` it starts): the same objects as the local build, the user's.
fn mpmake_rebuild(cluster: &Cluster, user: &User, local: &Objects) {
    let dir = user.dir.join("bzip2");
    let clean = user
        .account
        .command("make")
        .current_dir(&dir)
        .arg("clean")
        .output()
        .unwrap();
    ok(&clean, "make clean");
    let before = cluster.jobs_run_as(&user.account.name);
    let mut command = user.account.command("sh");
    command.current_dir(&dir).args([
        "-c",
        &format!(
            "umask 027; exec {} --munge --quiet libbz2.a bzip2",
            bin("mpmake").display()
        ),
    ]);
    cluster.aim(
        &mut command,
        &user.account.name,
        &user.home,
        Some(&user.account),
    );
    // Only the flag turns MUNGE on here.
    command.env_remove("MEXEC_MUNGE");
    ok(&command.output().unwrap(), "mpmake --munge");
    let remote = objects(&dir);
    assert_eq!(
        &remote, local,
        "mpmake's objects differ from the local build's"
    );
    let ran = cluster.jobs_run_as(&user.account.name) - before;
    assert!(
        ran >= local.len(),
        "{ran} jobs ran as {}",
        user.account.name
    );
    println!(
        "mpmake --munge as {}: {ran} jobs ran as the user; {} objects as the local build's",
        user.account.name,
        remote.len()
    );
}

/// Alice's job cannot read or write in Bob's private directory: the same
/// refusal as the same commands run by Alice locally.
fn no_way_into_the_other_home(cluster: &Cluster, tree: &Tree, label: &str) {
    let alice = User::new(ALICE, tree, &format!("{label}-peek"));
    let bob = User::new(BOB, tree, &format!("{label}-peek"));
    let secret = bob.dir.join("secret");
    std::fs::write(&secret, "bob's\n").unwrap();
    bob.account.give(&secret);
    let script = format!(
        "cat {s}; echo read=$?; touch {d}/planted; echo write=$?; id -un",
        s = secret.display(),
        d = bob.dir.display()
    );
    let local = alice
        .account
        .command("sh")
        .current_dir(&alice.dir)
        .args(["-c", &script])
        .output()
        .unwrap();
    let remote = cluster
        .mexec(Some(&alice.account), ALICE, &alice.home, &alice.dir)
        .args(["sh", "-c", &script])
        .output()
        .unwrap();
    ok(&remote, "alice's peek");
    assert_eq!(text(&remote.stdout), text(&local.stdout));
    assert_eq!(text(&remote.stdout), format!("read=1\nwrite=1\n{ALICE}\n"));
    assert!(
        text(&remote.stderr).contains("Permission denied"),
        "{}",
        text(&remote.stderr)
    );
    assert!(!bob.dir.join("planted").exists());
    println!(
        "alice's job in bob's private directory: {:?}, stderr {:?} (locally: {:?})",
        text(&remote.stdout),
        text(&remote.stderr).trim(),
        text(&local.stdout)
    );
}

/// Jobs that must not run: each is refused with a message naming the user
/// and the node, and its marker file is never made.
fn refused_before_running(
    cluster: &Cluster,
    command: &mut Command,
    marker: &Path,
    user: &str,
    why: &str,
) {
    let before = cluster.finished_jobs();
    let output = command
        .args(["touch", &marker.to_string_lossy()])
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "ran for {user}: {stderr}");
    assert!(
        stderr.contains(user) && stderr.contains(why),
        "{user}: {stderr}"
    );
    assert!(!marker.exists(), "the job of {user} ran");
    assert_eq!(
        cluster.finished_jobs(),
        before,
        "a job of {user} was started"
    );
    println!("{user}: refused, nothing run: {}", stderr.trim());
}

/// A directory anyone may write, for markers of jobs that must not run.
fn open_dir(tree: &Tree, label: &str) -> PathBuf {
    let dir = tree.root().join(format!("markers-{label}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, PermissionsExt::from_mode(0o1777)).unwrap();
    dir
}

#[test]
fn two_users_build_as_themselves_under_mutual_tls() {
    let Some(cluster) = Cluster::start(
        "two_users_build_as_themselves_under_mutual_tls",
        Proof::tls(),
        &[],
        Homes::Network,
    ) else {
        return;
    };
    let tree = cluster.tree();
    two_users_build_at_once(&cluster, &tree, "tls", true);
    no_way_into_the_other_home(&cluster, &tree, "tls");
}

#[test]
fn under_mutual_tls_a_claim_is_not_a_proof() {
    let test = "under_mutual_tls_a_claim_is_not_a_proof";
    let Some(cluster) = Cluster::start(test, Proof::tls(), &[], Homes::Local) else {
        return;
    };
    let tree = Tree::new();
    let alice = User::new(ALICE, &tree, "claim");
    let bob = User::new(BOB, &tree, "claim");
    // Alice claims to be Bob: her certificate says who she is.
    let output = cluster
        .mexec(Some(&alice.account), ALICE, &alice.home, &alice.dir)
        .env("MEXEC_SUBMIT_USER", BOB)
        .args(["id", "-un"])
        .output()
        .unwrap();
    ok(&output, "alice claiming bob");
    assert_eq!(text(&output.stdout), format!("{ALICE}\n"));
    println!(
        "alice's certificate claiming {BOB}: ran as {}",
        text(&output.stdout).trim()
    );
    // Her job has her groups, supplementary ones included, as a login does.
    let status = Command::new("groupadd")
        .args(["-f", "mexec-builders"])
        .status()
        .unwrap();
    assert!(status.success());
    let status = Command::new("usermod")
        .args(["-aG", "mexec-builders", ALICE])
        .status()
        .unwrap();
    assert!(status.success());
    let groups = cluster
        .mexec(Some(&alice.account), ALICE, &alice.home, &alice.dir)
        .args(["id", "-G"])
        .output()
        .unwrap();
    ok(&groups, "id -G");
    let login = Command::new("id").args(["-G", ALICE]).output().unwrap();
    assert_eq!(text(&groups.stdout), text(&login.stdout));
    assert!(text(&groups.stdout).split_whitespace().count() >= 2);
    println!(
        "alice's job's groups: {} (id -G {ALICE}: {})",
        text(&groups.stdout).trim(),
        text(&login.stdout).trim()
    );
    // A node's certificate, not among those that may relay, claiming Bob.
    let markers = open_dir(&tree, "claim");
    let n2 = cluster.executors[1].name.clone();
    let mut command = cluster.mexec(None, "n1-impostor", &bob.home, &markers);
    if let Proof::Tls { dir, .. } = &cluster.proof {
        command
            .env("MEXEC_TLS_CERT", dir.path().join(format!("{n2}.pem")))
            .env("MEXEC_TLS_KEY", dir.path().join(format!("{n2}-key.pem")));
    }
    command.env("MEXEC_SUBMIT_USER", BOB);
    refused_before_running(
        &cluster,
        &mut command,
        &markers.join("relayed"),
        "n2",
        "may not vouch",
    );
}

#[test]
fn unknown_root_and_system_users_are_refused_and_nothing_runs() {
    let test = "unknown_root_and_system_users_are_refused_and_nothing_runs";
    let Some(cluster) = Cluster::start(test, Proof::tls(), &["--min-uid", "1000"], Homes::Local)
    else {
        return;
    };
    let tree = Tree::new();
    let markers = open_dir(&tree, "refused");
    let home = tempfile::tempdir().unwrap();
    for (user, why) in [
        (
            "mexec-nobody-here",
            "no such user `mexec-nobody-here` on this node",
        ),
        ("root", "jobs never run as root"),
        ("bin", "below min_uid 1000"),
    ] {
        let mut command = cluster.mexec(None, user, home.path(), &markers);
        refused_before_running(&cluster, &mut command, &markers.join(user), user, why);
        let output = cluster
            .mexec(None, user, home.path(), &markers)
            .arg("true")
            .output()
            .unwrap();
        assert!(
            text(&output.stderr).contains("node n"),
            "{}",
            text(&output.stderr)
        );
    }
}

#[test]
fn two_users_build_as_themselves_with_munge() {
    let test = "two_users_build_as_themselves_with_munge";
    let Some(proof) = Proof::munge() else {
        return;
    };
    let Some(cluster) = Cluster::start(test, proof, &[], Homes::Network) else {
        return;
    };
    let tree = cluster.tree();
    let built = two_users_build_at_once(&cluster, &tree, "munge", false);
    let (alice, local) = &built[0];
    mpmake_rebuild(&cluster, alice, local);
    no_way_into_the_other_home(&cluster, &tree, "munge");
}

#[test]
fn with_munge_claims_root_and_replayed_credentials_are_refused() {
    let test = "with_munge_claims_root_and_replayed_credentials_are_refused";
    let Some(proof) = Proof::munge() else {
        return;
    };
    let Some(cluster) = Cluster::start(test, proof, &[], Homes::Local) else {
        return;
    };
    let tree = Tree::new();
    let alice = User::new(ALICE, &tree, "replay");
    let markers = open_dir(&tree, "munge-refused");
    // No credential: Bob's name only claimed.
    let mut claim = cluster.mexec(Some(&alice.account), ALICE, &alice.home, &markers);
    claim.env("MEXEC_MUNGE", "0").env("MEXEC_SUBMIT_USER", BOB);
    refused_before_running(
        &cluster,
        &mut claim,
        &markers.join("claimed"),
        BOB,
        "only claimed, not proven",
    );
    // Root's own credential.
    let root_home = tempfile::tempdir().unwrap();
    let mut root = cluster.mexec(None, "root", root_home.path(), &markers);
    refused_before_running(
        &cluster,
        &mut root,
        &markers.join("root"),
        "root",
        "jobs never run as root",
    );

    // One credential of Alice's, sent twice to n3 (a node of no cluster).
    let Proof::Munge { munged, token } = &cluster.proof else {
        unreachable!()
    };
    let credential = alice
        .account
        .command("munge")
        .args(["--socket", &munged.socket().to_string_lossy(), "--no-input"])
        .output()
        .unwrap();
    ok(&credential, "munge --no-input");
    let credential = text(&credential.stdout).trim().to_owned();
    let token = Token::from_file(&token.path().join("token")).unwrap();
    let n3 = cluster.lan.address(3, EXECUTOR_PORT);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let first = alice.dir.join("first");
    let second = alice.dir.join("second");
    let once = runtime.block_on(run_raw(&n3, &token, &credential, &alice.dir, &first));
    assert_eq!(once, Ok(0), "the first use of the credential");
    assert!(first.exists());
    assert_eq!(std::fs::metadata(&first).unwrap().uid(), alice.account.uid);
    let again = runtime.block_on(run_raw(&n3, &token, &credential, &alice.dir, &second));
    let refusal = again.expect_err("a replayed credential must be refused");
    assert!(refusal.contains("Replayed credential"), "{refusal}");
    assert!(!second.exists(), "the replayed job ran");
    println!("alice's credential: first use ran (exit 0, marker owned by uid {}); replay refused: {refusal}", alice.account.uid);
}

/// Runs `touch marker` in `cwd` on the executor at `node` with the MUNGE
/// `credential`: the exit code, or the refusal's message.
async fn run_raw(
    node: &str,
    token: &Token,
    credential: &str,
    cwd: &Path,
    marker: &Path,
) -> Result<i32, String> {
    let timeouts = Timeouts {
        connect: Duration::from_secs(5),
        keepalive_interval: Duration::from_secs(2),
        keepalive_timeout: Duration::from_secs(4),
    };
    let channel = Connector::new(None, Some(token.clone()), timeouts)
        .connect(node)
        .await
        .map_err(|e| e.to_string())?;
    let spec = JobSpec {
        argv: vec![
            "touch".into(),
            marker.to_string_lossy().into_owned().into_bytes().into(),
        ],
        cwd: cwd.to_string_lossy().into_owned().into_bytes().into(),
        env: vec![EnvVar {
            name: "PATH".into(),
            value: "/usr/bin:/bin".into(),
        }],
        umask: 0o022,
        job_id: "replay".into(),
        user: ALICE.into(),
        munge_credential: credential.to_owned(),
        ..JobSpec::default()
    };
    let (tx, rx) = mpsc::channel(1);
    tx.send(RunRequest {
        msg: Some(run_request::Msg::Start(spec)),
    })
    .await
    .unwrap();
    let mut stream = ExecutorClient::new(channel)
        .run(ReceiverStream::new(rx))
        .await
        .map_err(|s| s.message().to_owned())?
        .into_inner();
    loop {
        match stream.message().await {
            Ok(Some(message)) => {
                if let Some(run_response::Msg::Exit(exit)) = message.msg {
                    drop(tx);
                    return match exit.status {
                        Some(mexec_proto::v1::exit::Status::Code(code)) => Ok(code),
                        other => Err(format!("{other:?}")),
                    };
                }
            }
            Ok(None) => return Err("the stream ended without an exit".into()),
            Err(status) => return Err(status.message().to_owned()),
        }
    }
}

#[test]
fn run_as_submitter_with_only_a_token_or_with_user_does_not_start() {
    if !mexec_testkit::is_root() {
        mexec_testkit::skip("run_as_submitter_...: mexecd refuses it without root first");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    write_token(&token, None);
    let start = |args: &[&str]| {
        let output = Command::new(bin("mexecd"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap();
        assert!(!output.status.success(), "mexecd {args:?} started");
        text(&output.stderr)
    };
    let token_only = start(&[
        "--run-as-submitter",
        "--token-file",
        &token.to_string_lossy(),
    ]);
    assert!(
        token_only.contains("configure mutual TLS (--tls-ca") && token_only.contains("or --munge"),
        "{token_only}"
    );
    let both = start(&["--run-as-submitter", "--user", "nobody"]);
    assert!(both.contains("cannot be used with"), "{both}");
    let neither = start(&[]);
    assert!(neither.contains("give --run-as-submitter"), "{neither}");
    println!("token only: {}", token_only.trim());
    println!(
        "--user with --run-as-submitter: {}",
        both.lines().next().unwrap_or("")
    );
    println!("as root with neither: {}", neither.trim());
}
