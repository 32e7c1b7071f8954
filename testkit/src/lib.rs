//! Helpers for tests that run the real thing: `mexecd` processes on
//! loopback ports, the `mexec` binary, job directories the job account can
//! write, and real third-party C projects fetched through crates.io.
//!
//! Layout (one file, small helpers):
//! - binaries: `bin`, built on demand.
//! - `Executor`: one `mexecd` process on `127.0.0.1:0`, killed on drop.
//! - `Farm`: several executors plus an isolated client state directory.
//! - job directories and file ownership for the job account.
//! - `c_project`: a vendored C source tree from the cargo registry.
//! - `wait_until`: polling with a deadline instead of sleeps.
//! - `netns`, `netfs`: hosts in network namespaces, and a real network
//!   file system (GlusterFS) between them.
//! - `wine`: Wine prefixes and MinGW builds for the Windows programs' tests.
//! - `owner`: a desktop owner's CPU-bound work, as another account.
//! - `accounts`: real user accounts (useradd) with private trees, and
//!   commands run as them.
//! - `munged`: a munged of the test's own (own key, own socket).
//! - `pki`: a cluster's certificates, made by the real `mexec-cert`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub mod accounts;
pub mod munged;
pub mod netfs;
pub mod netns;
pub mod owner;
pub mod pki;
pub mod wine;

/// The job account when tests run as root (executors refuse to run jobs as
/// root, as they should).
pub const JOB_USER: &str = "nobody";

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives in the workspace")
        .to_owned()
}

/// Path of a workspace binary (`mexecd`, `mexec`), building it if needed.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // Beside a binary (target/release/mexec-bench), or one level up from a
    // test (target/debug/deps/<test>).
    let exe_dir = exe.parent().expect("executable directory");
    if exe_dir.join(name).is_file() {
        return exe_dir.join(name);
    }
    let dir = exe_dir.parent().expect("target directory");
    let path = dir.join(name);
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--bin", name])
            .current_dir(workspace_root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build --bin {name} failed");
    }
    path
}

/// Says that a test skips and why, on stderr directly: libtest captures
/// `eprintln!` of passing tests, and a skip must not look like a pass.
pub fn skip(reason: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {reason}");
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// uid and gid of the job account.
pub fn job_account() -> (u32, u32) {
    use nix::unistd::{getgid, getuid, User};
    if !is_root() {
        return (getuid().as_raw(), getgid().as_raw());
    }
    let user = User::from_name(JOB_USER)
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("user {JOB_USER} is missing"));
    (user.uid.as_raw(), user.gid.as_raw())
}

/// Sends signal number `signal` to process `pid`.
fn send_signal(pid: u32, signal: i32) {
    use nix::sys::signal::{kill, Signal};
    let signal = Signal::try_from(signal).expect("a signal number this system has");
    // A process that is already gone is not an error here.
    let _ = kill(nix::unistd::Pid::from_raw(pid as i32), signal);
}

/// Flags that make `mexecd` run jobs as the job account when we are root.
pub fn job_user_args() -> Vec<String> {
    if is_root() {
        vec!["--user".into(), JOB_USER.into()]
    } else {
        Vec::new()
    }
}

/// Gives `path` and everything below it to the job account.
pub fn give_to_job_user(path: &Path) {
    if !is_root() {
        return;
    }
    let (uid, gid) = job_account();
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{gid}"))
        .arg(path)
        .status()
        .expect("run chown");
    assert!(status.success());
}

/// A fresh directory that jobs (running as the job account) can write.
pub fn job_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("mexec-test-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    give_to_job_user(dir.path());
    dir
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the parenthesised command name.
            let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
            !matches!(state.and_then(|s| s.chars().next()), Some('Z') | None)
        }
        Err(_) => false,
    }
}

/// Reads a daemon's first stdout line, `... listening on ADDR`, within 20 s.
/// On failure the daemon is killed and the line (maybe empty) returned.
/// What each daemon started here printed on stdout after its first line.
static ANNOUNCED: std::sync::Mutex<Option<HashMap<u32, Vec<String>>>> = std::sync::Mutex::new(None);

/// The address in the line that daemon `pid` printed after its first one
/// containing `what ` and then `on SCHEME://ADDR` (`mexecd n1 metrics on
/// http://127.0.0.1:4711/metrics`), waiting up to 10 s for it.
pub fn announced(pid: u32, what: &str) -> Option<SocketAddr> {
    let mut found = None;
    wait_until(Duration::from_secs(10), || {
        let announced = ANNOUNCED.lock().unwrap_or_else(|p| p.into_inner());
        found = announced
            .as_ref()
            .and_then(|all| all.get(&pid))
            .and_then(|lines| lines.iter().find(|l| l.contains(&format!("{what} on "))))
            .and_then(|line| line.split("://").nth(1))
            .and_then(|rest| rest.split('/').next())
            .and_then(|addr| addr.parse().ok());
        found.is_some()
    });
    found
}

fn listening_address(child: &mut Child) -> Result<SocketAddr, String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        // The daemon may announce more (its HTTP listeners): keep them for
        // `announced`, and keep the pipe open so its prints do not fail.
        for line in reader.lines() {
            let Ok(line) = line else { break };
            ANNOUNCED
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert_with(HashMap::new)
                .entry(pid)
                .or_default()
                .push(line);
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
    match line
        .trim()
        .rsplit_once("listening on ")
        .and_then(|(_, a)| a.parse().ok())
    {
        Some(addr) => Ok(addr),
        None => {
            let _ = child.kill();
            Err(line)
        }
    }
}

/// Files below `dir` whose extension is one of `extensions`, by path
/// relative to `dir`, with their bytes: a build's outputs, to compare.
pub fn files_by_extension(
    dir: &Path,
    extensions: &[&str],
) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut found = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| extensions.contains(&e))
            {
                let name = path
                    .strip_prefix(dir)
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                found.insert(name, std::fs::read(&path).unwrap_or_default());
            }
        }
    }
    found
}

/// One `mexecd` process.
#[derive(Debug)]
pub struct Executor {
    child: Child,
    pub addr: SocketAddr,
    pub name: String,
    pub log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl Executor {
    /// Starts `mexecd --listen 127.0.0.1:0 --name NAME --slots SLOTS` plus
    /// `extra` flags, and waits until it listens.
    pub fn start(name: &str, slots: u32, extra: &[&str]) -> Executor {
        Self::start_with(Command::new(bin("mexecd")), name, slots, extra)
    }

    /// Like `start`, with a prepared command (for example one wrapped in
    /// `unshare`), to which the mexecd flags are appended.
    pub fn start_with(mut command: Command, name: &str, slots: u32, extra: &[&str]) -> Executor {
        let log_dir = tempfile::tempdir().expect("log dir");
        let log = log_dir.path().join(format!("{name}.log"));
        if !extra.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        command
            .args(["--name", name])
            .args(["--slots", &slots.to_string()])
            // A daemon that runs each job as its submitter takes no --user.
            .args(if extra.contains(&"--run-as-submitter") {
                Vec::new()
            } else {
                job_user_args()
            })
            .args(extra)
            .env("MEXEC_LOG", "info")
            .env_remove("MEXEC_NODES")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"));
        let mut child = command.spawn().expect("start mexecd");
        let addr = listening_address(&mut child).unwrap_or_else(|line| {
            panic!(
                "mexecd {name} did not start: {line:?}; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        Executor {
            child,
            addr,
            name: name.to_owned(),
            log,
            _log_dir: log_dir,
        }
    }

    /// `host:port` for `MEXEC_NODES`.
    pub fn node(&self) -> String {
        self.addr.to_string()
    }

    /// `mexec --no-local ARGS` aimed at this executor alone, run in `cwd`
    /// (which also holds the client's placement state).
    pub fn mexec(&self, cwd: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(bin("mexec"));
        command
            .current_dir(cwd)
            .env("MEXEC_NODES", self.node())
            .env("MEXEC_STATE_DIR", cwd)
            .env_remove("MEXEC_GATEKEEPER")
            .env_remove("MEXEC_CONFIG")
            .env_remove("MEXEC_TOKEN_FILE")
            .arg("--no-local")
            .args(args);
        command
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, signal: i32) {
        send_signal(self.child.id(), signal);
    }

    /// Waits up to `timeout` for the daemon to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's peak resident memory so far, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// The daemon's resident memory now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Several executors and a client state directory of their own.
#[derive(Debug)]
pub struct Farm {
    pub executors: Vec<Executor>,
    pub state_dir: tempfile::TempDir,
}

impl Farm {
    /// `count` executors named n1, n2, ... with `slots` slots each.
    pub fn start(count: usize, slots: u32) -> Farm {
        let executors = (1..=count)
            .map(|i| Executor::start(&format!("n{i}"), slots, &[]))
            .collect();
        Farm {
            executors,
            state_dir: tempfile::tempdir().expect("state dir"),
        }
    }

    /// The `MEXEC_NODES` value.
    pub fn nodes(&self) -> String {
        self.executors
            .iter()
            .map(Executor::node)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A `mexec` command aimed at this farm, with `args`, in `cwd`.
    pub fn mexec(&self, cwd: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(bin("mexec"));
        self.aim(&mut command, cwd);
        command.args(args);
        command
    }

    /// Points any command (make, a masquerade symlink) at this farm.
    pub fn aim(&self, command: &mut Command, cwd: &Path) {
        command
            .current_dir(cwd)
            .env("MEXEC_NODES", self.nodes())
            .env("MEXEC_STATE_DIR", self.state_dir.path())
            .env_remove("MEXEC_CONFIG")
            .env_remove("MEXEC_NO_LOCAL");
    }
}

/// A vendored third-party C project from the cargo registry (fetched on
/// first use): `crate_prefix` like "bzip2-sys-0.1.13", `subdir` the tree
/// inside it that has the Makefile.
pub fn c_project(crate_prefix: &str, subdir: &str) -> PathBuf {
    if let Some(found) = find_in_registry(crate_prefix, subdir) {
        return found;
    }
    let manifest = workspace_root().join("testkit/fixtures/c-projects/Cargo.toml");
    let status = Command::new(env!("CARGO"))
        .arg("fetch")
        .arg("--manifest-path")
        .arg(&manifest)
        .status()
        .expect("run cargo fetch");
    assert!(status.success(), "cargo fetch of the C projects failed");
    find_in_registry(crate_prefix, subdir)
        .unwrap_or_else(|| panic!("{crate_prefix}/{subdir} not in the cargo registry after fetch"))
}

fn find_in_registry(crate_prefix: &str, subdir: &str) -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let src = home.join("registry").join("src");
    for index in std::fs::read_dir(src).ok()?.flatten() {
        for krate in std::fs::read_dir(index.path()).ok()?.flatten() {
            let name = krate.file_name().to_string_lossy().into_owned();
            let tree = krate.path().join(subdir);
            if name.starts_with(crate_prefix) && tree.is_dir() {
                return Some(tree);
            }
        }
    }
    None
}

/// Copies the tree at `from` to `to` (which must not exist), with `cp -a`.
pub fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(
        status.success(),
        "cp -a {} {} failed",
        from.display(),
        to.display()
    );
}

/// One `mexec-gatekeeper` process, killed on drop.
#[derive(Debug)]
pub struct Gatekeeper {
    child: Child,
    pub addr: SocketAddr,
    extra: Vec<String>,
    /// What runs the binary: empty, or `ip netns exec NS` for one in a
    /// network namespace.
    launcher: Vec<std::ffi::OsString>,
    /// Its stderr, every start appended.
    log: PathBuf,
    _log_dir: std::sync::Arc<tempfile::TempDir>,
}

impl Gatekeeper {
    /// Starts a gatekeeper on a free loopback port with `extra` flags.
    pub fn start(extra: &[&str]) -> Gatekeeper {
        Self::start_on(
            Vec::new(),
            "127.0.0.1:0".parse().unwrap(),
            extra.iter().map(|s| s.to_string()).collect(),
        )
    }

    /// Starts a gatekeeper listening on `listen` (a wildcard address, say,
    /// so that peers can come from several loopback addresses).
    pub fn start_listening(listen: SocketAddr, extra: &[&str]) -> Gatekeeper {
        Self::start_on(
            Vec::new(),
            listen,
            extra.iter().map(|s| s.to_string()).collect(),
        )
    }

    /// Starts a gatekeeper on host `host` of `lan`, listening on `port`.
    pub fn start_in(lan: &netns::Lan, host: usize, port: u16, extra: &[&str]) -> Gatekeeper {
        Self::start_in_with(lan, host, port, extra, &[])
    }

    /// Like `start_in`, with `env` (`NAME=value`) set for the gatekeeper
    /// and each restart of it.
    pub fn start_in_with(
        lan: &netns::Lan,
        host: usize,
        port: u16,
        extra: &[&str],
        env: &[&str],
    ) -> Gatekeeper {
        let launcher = ["ip", "netns", "exec", &lan.hosts[host].namespace, "env"]
            .iter()
            .chain(env)
            .map(Into::into)
            .collect();
        let listen = lan.address(host, port).parse().expect("host address");
        Self::start_on(
            launcher,
            listen,
            extra.iter().map(|s| s.to_string()).collect(),
        )
    }

    fn start_on(
        launcher: Vec<std::ffi::OsString>,
        listen: SocketAddr,
        extra: Vec<String>,
    ) -> Gatekeeper {
        let log_dir = std::sync::Arc::new(tempfile::tempdir().expect("log dir"));
        Self::start_logged(launcher, listen, extra, log_dir)
    }

    fn start_logged(
        launcher: Vec<std::ffi::OsString>,
        listen: SocketAddr,
        extra: Vec<String>,
        log_dir: std::sync::Arc<tempfile::TempDir>,
    ) -> Gatekeeper {
        let log = log_dir.path().join("gatekeeper.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let mut command = match launcher.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(bin("mexec-gatekeeper"));
                command
            }
            None => Command::new(bin("mexec-gatekeeper")),
        };
        command
            .arg("--listen")
            .arg(listen.to_string())
            .args(&extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file);
        let mut child = command.spawn().expect("start mexec-gatekeeper");
        let addr = listening_address(&mut child)
            .unwrap_or_else(|line| panic!("mexec-gatekeeper did not start: {line:?}"));
        Gatekeeper {
            child,
            addr,
            extra,
            launcher,
            log,
            _log_dir: log_dir,
        }
    }

    /// The gatekeeper's log so far (of every start).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the gatekeeper (SIGKILL) and starts a new one on the same port.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.launcher.is_empty() {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                // The port is free again once the old process is gone.
                if std::net::TcpListener::bind(self.addr).is_ok() || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Assigning drops the old handle, whose process is already reaped.
        *self = Self::start_logged(
            self.launcher.clone(),
            self.addr,
            self.extra.clone(),
            self._log_dir.clone(),
        );
    }

    /// The gatekeeper's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the gatekeeper for good.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `host:port` for `MEXEC_GATEKEEPER` and `mexecd --gatekeeper`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Gatekeeper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gatekeeper with executors that joined it, and a client state
/// directory of their own.
#[derive(Debug)]
pub struct GatedFarm {
    pub gatekeeper: Gatekeeper,
    pub executors: Vec<Executor>,
    pub state_dir: tempfile::TempDir,
}

impl GatedFarm {
    pub fn start(slots: &[u32], gatekeeper_flags: &[&str]) -> GatedFarm {
        GatedFarm::start_with(slots, gatekeeper_flags, &[])
    }

    /// Like `start`, with `executor_flags` for every executor.
    pub fn start_with(
        slots: &[u32],
        gatekeeper_flags: &[&str],
        executor_flags: &[&str],
    ) -> GatedFarm {
        let gatekeeper = Gatekeeper::start(gatekeeper_flags);
        let mut cluster = GatedFarm {
            gatekeeper,
            executors: Vec::new(),
            state_dir: tempfile::tempdir().unwrap(),
        };
        for (i, s) in slots.iter().enumerate() {
            cluster.add_with(&format!("n{}", i + 1), *s, executor_flags);
        }
        let count = slots.len();
        assert!(
            wait_until(Duration::from_secs(10), || cluster.members().len() == count),
            "executors did not join"
        );
        cluster
    }

    /// Starts one more executor that joins the gatekeeper.
    pub fn add(&mut self, name: &str, slots: u32) {
        self.add_with(name, slots, &[]);
    }

    /// Like `add`, with more `mexecd` flags.
    pub fn add_with(&mut self, name: &str, slots: u32, extra: &[&str]) {
        let gk = self.gatekeeper.address();
        let mut flags = vec!["--gatekeeper", &gk];
        flags.extend_from_slice(extra);
        self.executors.push(Executor::start(name, slots, &flags));
    }

    pub fn mexec(&self, cwd: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(bin("mexec"));
        command
            .current_dir(cwd)
            .args(args)
            .env("MEXEC_GATEKEEPER", self.gatekeeper.address())
            .env("MEXEC_STATE_DIR", self.state_dir.path())
            .env_remove("MEXEC_NODES")
            .env_remove("MEXEC_CONFIG");
        command
    }

    pub fn status(&self) -> serde_json::Value {
        let dir = std::env::temp_dir();
        let output = self.mexec(&dir, &["--status", "--json"]).output().unwrap();
        serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// Jobs holding a lease now (None when the gatekeeper does not answer).
    pub fn leased_jobs(&self) -> Option<usize> {
        self.status()["jobs"].as_array().map(Vec::len)
    }

    /// Names of the members, with their draining flag.
    pub fn members(&self) -> HashMap<String, bool> {
        let status = self.status();
        status["nodes"]
            .as_array()
            .map(|nodes| {
                nodes
                    .iter()
                    .map(|n| {
                        (
                            n["node"].as_str().unwrap_or("").to_owned(),
                            n["draining"].as_bool().unwrap_or(false),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Runs `jobs`, at most `concurrency` at a time (as make -jN would), and
/// returns their outputs in the order they were started.
pub fn run_pool(jobs: Vec<Command>, concurrency: usize) -> Vec<std::process::Output> {
    let mut pending = jobs.into_iter();
    let mut running: Vec<(usize, Child)> = Vec::new();
    let mut done: Vec<(usize, std::process::Output)> = Vec::new();
    let mut next = 0;
    loop {
        while running.len() < concurrency.max(1) {
            let Some(mut command) = pending.next() else {
                break;
            };
            let child = command
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start a job");
            running.push((next, child));
            next += 1;
        }
        if running.is_empty() {
            done.sort_by_key(|(i, _)| *i);
            return done.into_iter().map(|(_, o)| o).collect();
        }
        // Reap whichever finished first, so the pool refills at once.
        let finished = running
            .iter_mut()
            .position(|(_, c)| matches!(c.try_wait(), Ok(Some(_))));
        match finished {
            Some(at) => {
                let (i, child) = running.swap_remove(at);
                done.push((i, child.wait_with_output().expect("job output")));
            }
            None => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// Resident memory of a process now, in KiB (0 when it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Starts `command` (a `mexec` aimed at a farm, with `-n`), appending a job
/// that leaves a background process in its group and writes both pids into
/// `dir`; waits for the pids and returns them (shell, background).
pub fn start_group_job(mut command: Command, dir: &Path) -> (Child, u32, u32) {
    let script = "sleep 300 & echo $! > bg.pid; echo $$ > sh.pid; wait";
    let child = command
        .args(["sh", "-c", script])
        .stdout(Stdio::null())
        .spawn()
        .expect("start the job");
    let read = |name: &str| -> Option<u32> {
        std::fs::read_to_string(dir.join(name))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    assert!(
        wait_until(Duration::from_secs(20), || read("bg.pid").is_some()
            && read("sh.pid").is_some()),
        "the job did not start"
    );
    (child, read("sh.pid").unwrap(), read("bg.pid").unwrap())
}

/// The processes whose command line holds `word` as one argument: what a
/// job left behind, found by a marker it was started with.
pub fn processes_with_arg(word: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|line| line.split(|b| *b == 0).any(|arg| arg == word.as_bytes()))
        })
        .filter(|pid| pid_alive(*pid))
        .collect()
}
