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

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::job_cgroup::{end_all, JobCgroup, JobDirs};
use super::launch::{Entry, Launch, Spawned};
use super::spawner::Spawners;

/// The daemon's directory of job cgroups.
#[derive(Debug)]
pub struct Cgroups {
    jobs: Arc<JobDirs>,
    /// On cgroup v1: the threads that fork jobs inside their cgroups.
    spawners: Option<Spawners>,
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
            let jobs = Arc::new(JobDirs::new(dir, limits_processes));
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

    /// Spawns `launch` inside a new, empty cgroup for a job that may have
    /// `max_processes` at once.
    pub async fn spawn(
        &self,
        max_processes: Option<u64>,
        launch: Launch,
    ) -> io::Result<(Spawned, JobCgroup)> {
        match &self.spawners {
            Some(spawners) => spawners.spawn(max_processes, launch).await,
            None => {
                let cgroup = self.jobs.for_job(max_processes)?;
                let (dir, procs) = cgroup.entry.as_ref().expect("a v2 cgroup has its entry");
                let entry = Entry::Into {
                    dir: dir.as_fd(),
                    procs: procs.as_fd(),
                };
                Ok((launch.spawn(entry)?, cgroup))
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

/// Names the hierarchy to prefer on a host that has both (see `hierarchy`).
const PREFER_UNIFIED_ENV: &str = "MEXEC_CGROUP";

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
    // Where both are mounted (a hybrid host) the v1 pids hierarchy has the
    // process limit; `MEXEC_CGROUP=unified` picks the unified one, so that
    // the v2 path can be tried on such a host.
    let mut order = [(v1, false), (v2, true)];
    if std::env::var_os(PREFER_UNIFIED_ENV).is_some_and(|v| v == "unified") {
        order.reverse();
    }
    order.into_iter().find_map(|(found, is_v2)| {
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
