//! Each job in a cgroup of its own, so that everything it starts ends with
//! it. A process that calls `setsid` (or double-forks) leaves the job's
//! process group and session, so killing the group misses it; it cannot
//! leave its cgroup. At the job's end the daemon kills every process in the
//! cgroup and removes it; the group keeper does the same for all of them
//! when the daemon dies. The cgroup's `pids.max` is the job's process limit.
//!
//! The daemon makes one directory of its own, `mexecd-PID`, below its own
//! cgroup in the pids hierarchy (cgroup v1) or the unified one (v2, where
//! `pids.max` exists only if the pids controller can be enabled there), and
//! one `job-N` below that per job. Nothing the job runs may start outside
//! it, so the job's first process is in it before exec: on v1 it is born
//! there, forked by a spawner thread that waits inside the cgroup
//! (`spawner` says why); on v2 it joins by writing "0" (itself) to the
//! `cgroup.procs` the daemon opened for it. Without a writable cgroup
//! hierarchy (an unprivileged daemon, a container without one) jobs run as
//! before, contained by their process group only, and the daemon says so
//! at start.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::spawner::Spawners;

/// The daemon's directory of job cgroups.
#[derive(Debug)]
pub struct Cgroups {
    jobs: Arc<JobDirs>,
    /// On cgroup v1: the threads that fork jobs inside their cgroups.
    spawners: Option<Spawners>,
}

/// Where job cgroups are made, and how they are numbered.
#[derive(Debug)]
pub struct JobDirs {
    dir: PathBuf,
    /// Whether job cgroups have `pids.max`.
    limits_processes: bool,
    next: AtomicU64,
}

/// One job's cgroup: killed empty and removed when dropped.
#[derive(Debug)]
pub struct JobCgroup {
    dir: PathBuf,
    /// `cgroup.procs`, opened for the child to join by (v2).
    procs: Option<File>,
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

impl Cgroups {
    /// The daemon's directory of job cgroups, made now; `None` (and a
    /// warning) where no cgroup hierarchy is writable.
    pub fn create() -> Option<Cgroups> {
        let found = hierarchy().and_then(|(base, v2)| {
            // Numbered too: a test may run several executors in one process.
            static MADE: AtomicU64 = AtomicU64::new(0);
            let n = MADE.fetch_add(1, Ordering::Relaxed);
            let dir = base.join(format!("mexecd-{}-{n}", std::process::id()));
            std::fs::create_dir(&dir).ok()?;
            // v2 only: job cgroups get pids.max if the controller can be
            // enabled here, which needs it enabled in our own cgroup.
            let limits_processes =
                !v2 || std::fs::write(dir.join("cgroup.subtree_control"), "+pids").is_ok();
            let jobs = Arc::new(JobDirs {
                dir,
                limits_processes,
                next: AtomicU64::new(1),
            });
            let spawners = (!v2).then(|| Spawners::start(jobs.clone(), &base));
            Some(Cgroups { jobs, spawners })
        });
        match &found {
            Some(cgroups) if !cgroups.jobs.limits_processes => tracing::warn!(
                dir = %cgroups.jobs.dir.display(),
                "the pids controller is not available: no process limit for jobs"
            ),
            Some(_) => {}
            None => tracing::warn!(
                "no writable cgroup hierarchy: a job's processes that leave its process \
                 group may outlive it, and there is no process limit"
            ),
        }
        found
    }

    /// The directory the group keeper cleans up if the daemon dies.
    pub fn dir(&self) -> &Path {
        &self.jobs.dir
    }

    /// Spawns the command `prepare` makes inside a new, empty cgroup for a
    /// job that may have `max_processes` at once. `prepare` gets the
    /// descriptor its child must join by (v2), or `None` where the child
    /// is born in the cgroup (v1).
    pub async fn spawn(
        &self,
        max_processes: Option<u64>,
        prepare: impl FnOnce(Option<RawFd>) -> io::Result<Command>,
    ) -> io::Result<(Child, JobCgroup)> {
        match &self.spawners {
            Some(spawners) => spawners.spawn(max_processes, prepare(None)?).await,
            None => {
                let cgroup = self.jobs.for_job(max_processes)?;
                let child = prepare(cgroup.procs.as_ref().map(AsRawFd::as_raw_fd))?.spawn()?;
                Ok((child, cgroup))
            }
        }
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        // The spawner threads first: they leave their cgroups as they stop.
        drop(self.spawners.take());
        end_all(&self.jobs.dir);
    }
}

impl JobDirs {
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

    /// A new, empty cgroup for a job that joins it by `cgroup.procs`.
    fn for_job(&self, max_processes: Option<u64>) -> io::Result<JobCgroup> {
        let dir = self.make()?;
        let made = (|| {
            self.limit_processes(&dir, max_processes)?;
            OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))
        })();
        match made {
            Ok(procs) => Ok(JobCgroup {
                dir,
                procs: Some(procs),
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
            procs: None,
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

/// In the forked child, before exec: moves the calling process into the
/// cgroup whose `cgroup.procs` is open as `procs`. Only a write(2), so it
/// is async-signal-safe.
pub fn join(procs: RawFd) -> io::Result<()> {
    // SAFETY: the descriptor stays open until the spawn returns (the
    // JobCgroup outlives it); writing "0" names the writer itself.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(procs) };
    nix::unistd::write(fd, b"0")?;
    Ok(())
}

/// How long ending a cgroup waits for its killed processes to go.
const END_WAIT: Duration = Duration::from_secs(2);

/// Kills every process in the cgroup `dir` until none is left (a fork
/// between reading the list and the kills is caught by the next round;
/// the process limit bounds the rounds), then removes it.
pub fn end(dir: &Path) {
    // cgroup.kill (v2, Linux 5.14) kills atomically, forks included.
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
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

/// Where job cgroups go: below our own cgroup in the v1 pids hierarchy,
/// else in the v2 unified one; with whether it is v2. Only a hierarchy we
/// may write to counts.
fn hierarchy() -> Option<(PathBuf, bool)> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let v1 = mount_of(&mountinfo, |fs, options| {
        fs == "cgroup" && options.split(',').any(|o| o == "pids")
    })
    .and_then(|mount| {
        Some((
            mount,
            own_path(&own, |c| c.split(',').any(|c| c == "pids"))?,
        ))
    });
    let v2 = mount_of(&mountinfo, |fs, _| fs == "cgroup2")
        .and_then(|mount| Some((mount, own_path(&own, |c| c.is_empty())?)));
    [(v1, false), (v2, true)]
        .into_iter()
        .find_map(|(found, is_v2)| {
            let ((mount_point, mount_root), own) = found?;
            let relative = Path::new(&own).strip_prefix(&mount_root).ok()?;
            let base = mount_point.join(relative);
            writable(&base).then_some((base, is_v2))
        })
}

/// The mount point and mounted root of the first mount in `mountinfo`
/// whose file system type and super options `wanted` accepts.
fn mount_of(mountinfo: &str, wanted: impl Fn(&str, &str) -> bool) -> Option<(PathBuf, String)> {
    mountinfo.lines().find_map(|line| {
        // "ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER"
        let (before, after) = line.split_once(" - ")?;
        let fields: Vec<&str> = before.split(' ').collect();
        let after: Vec<&str> = after.split(' ').collect();
        let (fs, super_options) = (*after.first()?, *after.get(2)?);
        if !wanted(fs, super_options) {
            return None;
        }
        Some((PathBuf::from(fields.get(4)?), fields.get(3)?.to_string()))
    })
}

/// Our cgroup in the hierarchy whose controller list `wanted` accepts,
/// from /proc/self/cgroup ("ID:CONTROLLERS:PATH").
fn own_path(cgroup: &str, wanted: impl Fn(&str) -> bool) -> Option<String> {
    cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        wanted(controllers).then(|| path.to_owned())
    })
}

/// Whether we may make cgroups in `dir`: by trying.
fn writable(dir: &Path) -> bool {
    let probe = dir.join(format!("mexecd-probe-{}", std::process::id()));
    let made = std::fs::create_dir(&probe).is_ok();
    if made {
        let _ = std::fs::remove_dir(&probe);
    }
    made
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_and_own_cgroups_are_found() {
        let mountinfo = "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
            39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n\
            41 31 0:38 /kube /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        let pids = mount_of(mountinfo, |fs, o| fs == "cgroup" && o.contains("pids"));
        assert_eq!(pids, Some(("/sys/fs/cgroup/pids".into(), "/".into())));
        let v2 = mount_of(mountinfo, |fs, _| fs == "cgroup2");
        assert_eq!(v2, Some(("/sys/fs/cgroup/unified".into(), "/kube".into())));
        let own = "8:pids:/a/b\n4:cpu,cpuacct:/c\n0::/kube/d\n";
        assert_eq!(own_path(own, |c| c == "pids"), Some("/a/b".into()));
        assert_eq!(own_path(own, str::is_empty), Some("/kube/d".into()));
    }
}
