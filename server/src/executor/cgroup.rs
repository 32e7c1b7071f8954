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
//! one `job-N` below that per job. The child joins its cgroup before exec by
//! writing "0" (itself) to the `cgroup.procs` the daemon opened for it, so
//! not even its first fork escapes. Without a writable cgroup hierarchy
//! (an unprivileged daemon, a container without one) jobs run as before,
//! contained by their process group only, and the daemon says so at start.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The daemon's directory of job cgroups.
#[derive(Debug)]
pub struct Cgroups {
    dir: PathBuf,
    /// Whether job cgroups have `pids.max`.
    limits_processes: bool,
    next: AtomicU64,
}

/// One job's cgroup: killed empty and removed when dropped.
#[derive(Debug)]
pub struct JobCgroup {
    dir: PathBuf,
    /// `cgroup.procs`, opened for the child to join by.
    procs: File,
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
            Some(Cgroups {
                dir,
                limits_processes,
                next: AtomicU64::new(1),
            })
        });
        match &found {
            Some(cgroups) if !cgroups.limits_processes => tracing::warn!(
                dir = %cgroups.dir.display(),
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
        &self.dir
    }

    /// A new, empty cgroup for a job that may have `max_processes` at once.
    pub fn for_job(&self, max_processes: Option<u64>) -> io::Result<JobCgroup> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let dir = self.dir.join(format!("job-{n}"));
        std::fs::create_dir(&dir)?;
        let made = (|| {
            if let (Some(max), true) = (max_processes, self.limits_processes) {
                std::fs::write(dir.join("pids.max"), max.to_string())?;
            }
            OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))
        })();
        match made {
            Ok(procs) => Ok(JobCgroup { dir, procs }),
            Err(err) => {
                let _ = std::fs::remove_dir(&dir);
                Err(err)
            }
        }
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        end_all(&self.dir);
    }
}

impl JobCgroup {
    /// The descriptor the child joins by (see `join`).
    pub fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
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
        end(&self.dir);
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
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        let pids: Vec<i32> = procs.lines().filter_map(|l| l.parse().ok()).collect();
        for pid in &pids {
            // A process that has just exited gives ESRCH, which is fine.
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        // Removal succeeds once the last process has exited.
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(if pids.is_empty() { 5 } else { 1 }));
    }
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
