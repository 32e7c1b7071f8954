//! Threads that fork jobs from inside the jobs' cgroups, on cgroup v1.
//!
//! Moving a process into a cgroup (a write to `cgroup.procs` or `tasks`)
//! takes the kernel's cgroup threadgroup lock for writing, which waits for
//! an RCU grace period: about 1 ms on an idle machine and 5 to 20 ms on a
//! busy one, measured here, where the job's first process used to move
//! itself into its cgroup before exec. A child is born in the cgroups of
//! the thread that forks it, and cgroup v1 places threads one by one. So
//! each spawner thread moves itself into a fresh, empty job cgroup ahead of
//! time, waits there for a job, forks it, and then moves on to the next
//! fresh cgroup: the job never waits for a move. (cgroup v2 places whole
//! processes, so there a child still joins by `cgroup.procs`.)
//!
//! While a thread is in a job's cgroup it counts towards the cgroup's
//! `pids.max`, which is one higher until the thread has left. A job that
//! ends before its thread has left leaves the removal of its cgroup to the
//! thread (`Handoff`).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Mutex};

use super::job_cgroup::{Handoff, JobCgroup, JobDirs};
use super::launch::{Entry, Launch, Spawned};

/// How many threads wait, each in a fresh cgroup: as many jobs may start
/// at once without waiting for a move. More start after a grace period.
const THREADS: usize = 4;

/// The spawner threads; stopped (each back in the daemon's own cgroup)
/// when dropped.
#[derive(Debug)]
pub struct Spawners {
    ready: Mutex<mpsc::Receiver<Ready>>,
    threads: Vec<JoinHandle<()>>,
}

/// A thread waiting inside the fresh cgroup `dir` for the job to fork.
#[derive(Debug)]
struct Ready {
    dir: PathBuf,
    handoff: Arc<Handoff>,
    task: std::sync::mpsc::SyncSender<Task>,
}

/// A job to spawn, with its process limit, and where the child goes.
#[derive(Debug)]
struct Task {
    launch: Launch,
    max_processes: Option<u64>,
    reply: oneshot::Sender<io::Result<Spawned>>,
}

impl Spawners {
    /// Starts the threads; `home` is the cgroup they leave to when they
    /// stop (the daemon's own, in the same hierarchy as `jobs`).
    pub fn start(jobs: Arc<JobDirs>, home: &Path) -> Spawners {
        let (ready_tx, ready_rx) = mpsc::channel(THREADS);
        let threads = (0..THREADS)
            .filter_map(|n| {
                let (jobs, ready, home) = (jobs.clone(), ready_tx.clone(), home.to_owned());
                std::thread::Builder::new()
                    .name(format!("spawner-{n}"))
                    .spawn(move || serve(&jobs, &ready, &home))
                    .map_err(|err| tracing::warn!(%err, "cannot start a spawner thread"))
                    .ok()
            })
            .collect();
        Spawners {
            ready: Mutex::new(ready_rx),
            threads,
        }
    }

    /// Spawns `launch` inside a fresh job cgroup with `max_processes` as
    /// its limit: the child and its cgroup.
    pub async fn spawn(
        &self,
        max_processes: Option<u64>,
        launch: Launch,
    ) -> io::Result<(Spawned, JobCgroup)> {
        let ready = self.ready.lock().await.recv().await.ok_or_else(|| {
            io::Error::other("no spawner thread is left to start jobs in their cgroups")
        })?;
        // From here on the cgroup is the job's: dropped (a cancelled start,
        // a failed spawn) it is ended like any job's.
        let cgroup = JobCgroup::handed_off(ready.dir, ready.handoff);
        let (reply, child) = oneshot::channel();
        let task = Task {
            launch,
            max_processes,
            reply,
        };
        ready
            .task
            .send(task)
            .map_err(|_| io::Error::other("the spawner thread has stopped"))?;
        let child = child
            .await
            .map_err(|_| io::Error::other("the spawner thread has stopped"))??;
        Ok((child, cgroup))
    }
}

impl Drop for Spawners {
    fn drop(&mut self) {
        // Closing the channel drops the waiting threads' tasks senders,
        // which wakes them to leave.
        self.ready.get_mut().close();
        while self.ready.get_mut().try_recv().is_ok() {}
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// One spawner thread: moves into a fresh cgroup, waits there for a job,
/// forks it, and moves on, until the pool stops. It never ends while the
/// pool lives: the jobs it forked die with it (their parent-death signal).
fn serve(jobs: &JobDirs, ready: &mpsc::Sender<Ready>, home: &Path) {
    let mut inside: Option<Inside> = None;
    loop {
        let next = match enter_fresh(jobs) {
            Ok(dir) => dir,
            Err(_) if ready.is_closed() => break,
            Err(err) => {
                tracing::warn!(%err, "a spawner thread cannot enter a new job cgroup; retrying");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        // Out of the last job's cgroup now: its limit is the job's alone.
        if let Some(last) = inside.take() {
            last.left(jobs);
        }
        let handoff = Arc::new(Handoff::default());
        let (task_tx, task_rx) = std::sync::mpsc::sync_channel(1);
        let offered = Ready {
            dir: next.clone(),
            handoff: handoff.clone(),
            task: task_tx,
        };
        let mut here = Inside {
            dir: next,
            handoff,
            max_processes: None,
        };
        if ready.blocking_send(offered).is_err() {
            here.handoff.unused();
            inside = Some(here);
            break;
        }
        match task_rx.recv() {
            Ok(task) => here.max_processes = fork(jobs, &here.dir, task),
            // Taken but not used (a start cancelled before it sent the
            // job), or the pool is stopping.
            Err(_) => here.handoff.unused(),
        }
        inside = Some(here);
        if ready.is_closed() {
            break;
        }
    }
    let _ = move_thread(home);
    if let Some(last) = inside {
        last.left(jobs);
    }
}

/// The job cgroup a spawner thread is in.
struct Inside {
    dir: PathBuf,
    handoff: Arc<Handoff>,
    /// The job's own process limit, set one higher while the thread is in.
    max_processes: Option<u64>,
}

impl Inside {
    /// After the thread has left: the job's own limit, and the cgroup
    /// removed if the job is already over.
    fn left(self, jobs: &JobDirs) {
        if self.max_processes.is_some() {
            let _ = jobs.limit_processes(&self.dir, self.max_processes);
        }
        self.handoff.spawner_left(&self.dir);
    }
}

/// Spawns the task's job from inside the cgroup `dir`, where this
/// thread is, and hands the child over; returns the job's process limit.
fn fork(jobs: &JobDirs, dir: &Path, task: Task) -> Option<u64> {
    // One more than the job's limit while this thread is counted too.
    let limited = jobs.limit_processes(dir, task.max_processes.map(|max| max + 1));
    let Task {
        launch,
        reply,
        max_processes,
    } = task;
    let spawned = limited.and_then(|()| launch.spawn(Entry::Inherited));
    if let Err(Ok(orphan)) = reply.send(spawned) {
        // Nobody waits for it (the start was cancelled): it must not run
        // unwatched.
        super::process::kill_group(orphan.pid);
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(orphan.pid as i32), None);
    }
    max_processes
}

/// Makes a fresh job cgroup and moves this thread into it.
fn enter_fresh(jobs: &JobDirs) -> io::Result<PathBuf> {
    let dir = jobs.make()?;
    match move_thread(&dir) {
        Ok(()) => Ok(dir),
        Err(err) => {
            let _ = std::fs::remove_dir(&dir);
            Err(err)
        }
    }
}

/// Moves the calling thread (not its process) into the v1 cgroup `dir`.
fn move_thread(dir: &Path) -> io::Result<()> {
    std::fs::write(dir.join("tasks"), nix::unistd::gettid().to_string())
}
