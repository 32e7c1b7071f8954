//! One job's cgroup and the directory they are made in: made empty,
//! limited, and at the job's end every process in it killed and the cgroup
//! removed (`end`); the group keeper ends them all when the daemon dies
//! (`end_all`). Which hierarchy they are in, and how a job gets into its
//! own, is `cgroup`'s.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Where job cgroups are made, and how they are numbered.
#[derive(Debug)]
pub struct JobDirs {
    pub dir: PathBuf,
    /// Whether job cgroups have `pids.max`.
    pub limits_processes: bool,
    next: AtomicU64,
}

/// One job's cgroup: killed empty and removed when dropped.
#[derive(Debug)]
pub struct JobCgroup {
    dir: PathBuf,
    /// On v2: the directory, to clone the child into, and `cgroup.procs`,
    /// for the child to join by where the kernel cannot.
    pub entry: Option<(OwnedFd, File)>,
    /// On v1: shared with the spawner thread that forked the job from
    /// inside this cgroup, which removes it if the job ends first.
    handoff: Option<Arc<Handoff>>,
}

/// Who removes a v1 job cgroup: its spawner thread holds it until it has
/// moved on, so whichever of the job's end and the thread's leaving comes
/// last removes it.
#[derive(Debug, Default)]
pub struct Handoff {
    ended: AtomicBool,
    spawner_left: AtomicBool,
}

impl JobDirs {
    /// The directory `dir` (made already), whose job cgroups have
    /// `pids.max` when `limits_processes`.
    pub fn new(dir: PathBuf, limits_processes: bool) -> JobDirs {
        JobDirs {
            dir,
            limits_processes,
            next: AtomicU64::new(1),
        }
    }

    /// The directory of the next job's cgroup, made now and empty.
    pub fn make(&self) -> io::Result<PathBuf> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let dir = self.dir.join(format!("job-{n}"));
        std::fs::create_dir(&dir)?;
        Ok(dir)
    }

    /// Sets the process limit of the job cgroup `dir`, where there is one.
    pub fn limit_processes(&self, dir: &Path, max_processes: Option<u64>) -> io::Result<()> {
        match (max_processes, self.limits_processes) {
            (Some(max), true) => std::fs::write(dir.join("pids.max"), max.to_string()),
            _ => Ok(()),
        }
    }

    /// A new, empty v2 cgroup for a job that is cloned into it.
    pub fn for_job(&self, max_processes: Option<u64>) -> io::Result<JobCgroup> {
        let dir = self.make()?;
        let made = (|| {
            self.limit_processes(&dir, max_processes)?;
            let opened = OwnedFd::from(File::open(&dir)?);
            let procs = OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))?;
            io::Result::Ok((opened, procs))
        })();
        match made {
            Ok(entry) => Ok(JobCgroup {
                dir,
                entry: Some(entry),
                handoff: None,
            }),
            Err(err) => {
                let _ = std::fs::remove_dir(&dir);
                Err(err)
            }
        }
    }
}

impl JobCgroup {
    /// The cgroup `dir` a spawner thread forked the job in, shared with it
    /// by `handoff`.
    pub fn handed_off(dir: PathBuf, handoff: Arc<Handoff>) -> JobCgroup {
        JobCgroup {
            dir,
            entry: None,
            handoff: Some(handoff),
        }
    }

    /// Whether a fork of the job failed at the process limit.
    pub fn hit_process_limit(&self) -> bool {
        let events = std::fs::read_to_string(self.dir.join("pids.events")).unwrap_or_default();
        events
            .lines()
            .filter_map(|line| line.strip_prefix("max "))
            .any(|count| count.trim().parse::<u64>().is_ok_and(|n| n > 0))
    }
}

impl Drop for JobCgroup {
    fn drop(&mut self) {
        match &self.handoff {
            Some(handoff) => handoff.job_ended(&self.dir),
            None => end(&self.dir),
        }
    }
}

impl Handoff {
    /// The job is over: its processes are killed now; the cgroup is removed
    /// now if the spawner thread has left it, else by that thread.
    fn job_ended(&self, dir: &Path) {
        self.ended.store(true, Ordering::SeqCst);
        if self.spawner_left.load(Ordering::SeqCst) {
            end(dir);
        } else {
            kill_all(dir);
        }
    }

    /// The spawner thread has moved out of `dir`: it removes the cgroup if
    /// the job has ended (or never came).
    pub fn spawner_left(&self, dir: &Path) {
        self.spawner_left.store(true, Ordering::SeqCst);
        if self.ended.load(Ordering::SeqCst) {
            end(dir);
        }
    }

    /// Marks a cgroup no job was started in as ended.
    pub fn unused(&self) {
        self.ended.store(true, Ordering::SeqCst);
    }
}

/// How long ending a cgroup waits for its killed processes to go.
const END_WAIT: Duration = Duration::from_secs(2);

/// Kills every process in the cgroup `dir` until none is left (a fork
/// between reading the list and the kills is caught by the next round;
/// the process limit bounds the rounds), then removes it.
pub fn end(dir: &Path) {
    // cgroup.kill (v2, Linux 5.14) kills atomically, forks included. All
    // job cgroups of a daemon are in one hierarchy: whether it has the
    // file is asked once, not by a failing open per job on v1.
    static HAS_KILL_FILE: OnceLock<bool> = OnceLock::new();
    let kill_file = dir.join("cgroup.kill");
    if *HAS_KILL_FILE.get_or_init(|| kill_file.exists()) {
        let _ = std::fs::write(kill_file, "1");
    }
    let deadline = Instant::now() + END_WAIT;
    loop {
        let pids = kill_all(dir);
        // Removal succeeds once the last process has exited.
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(if pids.is_empty() { 5 } else { 1 }));
    }
}

/// Kills every process in the cgroup `dir` but the daemon, and returns
/// the pids it found. On v1 the daemon is listed while one of its spawner
/// threads waits in the cgroup; it is this process, or the parent of this
/// one in the group keeper, which ends the cgroups while the daemon exits.
fn kill_all(dir: &Path) -> Vec<i32> {
    let spared = [std::process::id() as i32, nix::unistd::getppid().as_raw()];
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    let pids: Vec<i32> = procs
        .lines()
        .filter_map(|l| l.parse().ok())
        .filter(|pid| !spared.contains(pid))
        .collect();
    for pid in &pids {
        // A process that has just exited gives ESRCH, which is fine.
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    pids
}

/// Ends every job cgroup below `dir`, then `dir` itself.
pub fn end_all(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                end(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
