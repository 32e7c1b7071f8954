//! icecream (`icecc`) as a peer: an `icecc-scheduler` and one `iceccd`
//! that takes the jobs, each on a host of its own (network namespaces on a
//! bridge, `testkit::netns`), and a submitting `iceccd` that takes none on
//! the build host, where `icecc` runs.
//!
//! Two things make this work on one machine:
//! - icecream never counts a job on the submitter's own daemon as remote,
//!   so the compiling daemon needs an address of its own;
//! - `iceccd` reads the whole machine's `/proc/stat` and reports itself
//!   full (the scheduler then holds every job) when the machine is under
//!   10 % idle, not counting its own jobs. Here every other variant, and
//!   anything else on the machine, counts as foreign load, so the remote
//!   daemon runs in a mount namespace that shows it a frozen copy of
//!   `/proc/stat`, as an otherwise idle remote host would look. The same
//!   namespace gives it a private `/run/icecc` for its socket and pid file.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mexec_testkit::netns::Lan;

/// The scheduler's host on the LAN.
const SCHEDULER_HOST: usize = 0;
/// The compiling daemon's host.
const REMOTE_HOST: usize = 1;
/// Its node name, as the scheduler logs it.
const REMOTE_NAME: &str = "bench-remote";

/// A running icecream farm; everything is stopped on drop.
#[derive(Debug)]
pub struct Icecream {
    // Dropped first: the submitting daemon lives outside the LAN.
    submitter: Child,
    lan: Lan,
    dir: tempfile::TempDir,
}

impl Icecream {
    /// Starts a farm whose one remote daemon runs `slots` jobs at once, and
    /// compiles one file through it so that the compiler environment is
    /// built and installed before anything is timed. Err says why icecream
    /// cannot run here.
    pub fn start(slots: u32) -> Result<Icecream, String> {
        Self::start_with(slots, Some(0))
    }

    /// Like `start`, with the remote daemon's jobs at `nice` (`None`: the
    /// daemon's default, 5).
    pub fn start_with(slots: u32, nice: Option<u32>) -> Result<Icecream, String> {
        for program in ["icecc", "iceccd", "icecc-scheduler", "unshare"] {
            if !on_path(program) {
                return Err(format!("{program} is not installed"));
            }
        }
        let lan = Lan::create(2)?;
        let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        // The daemons drop root for the `icecc` account; it must be able to
        // write their logs and environment caches here.
        set_mode(dir.path(), 0o1777)?;
        let frozen_stat = dir.path().join("stat");
        std::fs::copy("/proc/stat", &frozen_stat).map_err(|e| format!("copy /proc/stat: {e}"))?;
        let scheduler_ip = lan.hosts[SCHEDULER_HOST].ip.to_string();

        spawn_quiet(
            lan.command(SCHEDULER_HOST, "icecc-scheduler")
                .args(["-n", "mexec-bench", "-vvv", "-l"])
                .arg(dir.path().join("scheduler.log")),
        )?;
        let remote = format!(
            "mount -t tmpfs tmpfs /run/icecc && mount --bind {stat} /proc/stat && \
             exec iceccd -n mexec-bench -s {scheduler_ip} -N {REMOTE_NAME} -m {slots} \
             {nice} -b {envs} -l {log}",
            nice = nice.map(|n| format!("--nice {n}")).unwrap_or_default(),
            stat = frozen_stat.display(),
            envs = dir.path().join("remote-envs").display(),
            log = dir.path().join("remote.log").display(),
        );
        std::fs::create_dir_all("/run/icecc").map_err(|e| format!("/run/icecc: {e}"))?;
        spawn_quiet(
            lan.command(REMOTE_HOST, "unshare")
                .args(["-m", "sh", "-c", &remote]),
        )?;
        // The submitter takes no jobs (-m 0) and accepts none from others,
        // so every compile goes to the remote host.
        let submitter = spawn_quiet(
            Command::new("iceccd")
                .args(["-n", "mexec-bench", "-s", &scheduler_ip])
                .args(["-N", "bench-submitter", "-m", "0", "--no-remote"])
                .arg("-b")
                .arg(dir.path().join("local-envs"))
                .arg("-l")
                .arg(dir.path().join("submitter.log")),
        )?;
        let farm = Icecream {
            submitter,
            lan,
            dir,
        };
        farm.warm_up()?;
        Ok(farm)
    }

    /// A command that compiles through icecream: `icecc gcc ARGS`.
    pub fn compile(&self, cwd: &Path, args: &[&str]) -> Command {
        let mut command = Command::new("icecc");
        command.arg("gcc").args(args).current_dir(cwd);
        command
    }

    /// How many jobs the remote daemon has finished, from the scheduler's
    /// log: the proof that icecream compiled remotely, not locally.
    pub fn remote_jobs(&self) -> usize {
        let log =
            std::fs::read_to_string(self.dir.path().join("scheduler.log")).unwrap_or_default();
        let server = format!("server={REMOTE_NAME}");
        log.lines()
            .filter(|l| l.contains(" END ") && l.contains("status=0") && l.contains(&server))
            .count()
    }

    /// Waits for both daemons to log in, then compiles one file, which
    /// makes the submitter build its compiler environment (about 10 s) and
    /// ship it to the remote daemon.
    fn warm_up(&self) -> Result<(), String> {
        let log = self.dir.path().join("scheduler.log");
        let logged_in = mexec_testkit::wait_until(Duration::from_secs(30), || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.contains(&format!("login {REMOTE_NAME}")) && text.contains("login bench-submitter")
        });
        if !logged_in {
            return Err(format!(
                "the daemons did not log in to the scheduler within 30 s (host {})",
                self.lan.hosts[SCHEDULER_HOST].ip
            ));
        }
        let work = self.dir.path().join("warm-up");
        std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
        std::fs::write(work.join("w.c"), "int warm_up(int x) { return x + 1; }\n")
            .map_err(|e| format!("write w.c: {e}"))?;
        let started = Instant::now();
        let output = self
            .compile(&work, &["-c", "w.c", "-o", "w.o"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run icecc: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "icecc gcc -c failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        if self.remote_jobs() == 0 {
            return Err(format!(
                "icecc compiled the warm-up file locally, not on {REMOTE_NAME} (took {:.1} s)",
                started.elapsed().as_secs_f64()
            ));
        }
        Ok(())
    }
}

impl Drop for Icecream {
    fn drop(&mut self) {
        let _ = self.submitter.kill();
        let _ = self.submitter.wait();
        // The scheduler and the remote daemon die with the LAN.
    }
}

fn spawn_quiet(command: &mut Command) -> Result<Child, String> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("start {:?}: {e}", command.get_program()))
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir: PathBuf| dir.join(program).is_file())
    })
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", path.display()))
}
