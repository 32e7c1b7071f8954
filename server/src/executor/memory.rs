//! The memory limit: one watcher for the whole node sums the resident
//! memory of each job's processes ten times a second and tells a job when it
//! is over its limit; nothing is read while no job is watched.
//!
//! A job's processes are its leader and the leader's descendants, found
//! through /proc/PID/task/TID/children: the cost follows the job's few
//! processes, not the node's many (a full /proc scan every 100 ms cost the
//! daemon about 5% of a core in a debug build). Where the kernel lacks those
//! files, every process of the job's process group is summed from a /proc
//! scan instead. A process that daemonizes (and so leaves the tree) escapes
//! the sum; the address-space rlimit, when configured, still bounds it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

use super::procfs;

/// How often memory is measured. A job growing faster than its limit per
/// interval can overshoot by that much before it is killed.
const INTERVAL: Duration = Duration::from_millis(100);

struct Watched {
    limit: u64,
    over: oneshot::Sender<u64>,
}

/// The node's memory watcher.
#[derive(Default)]
pub struct MemoryWatch {
    jobs: Mutex<HashMap<u32, Watched>>,
    wake: Notify,
}

impl std::fmt::Debug for MemoryWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryWatch").finish_non_exhaustive()
    }
}

/// A job's registration; dropping it stops the watching.
#[derive(Debug)]
pub struct Watch {
    watcher: Arc<MemoryWatch>,
    pgid: u32,
    /// Resolves with the limit when the group's memory went over it.
    pub over: oneshot::Receiver<u64>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.watcher.lock().remove(&self.pgid);
    }
}

impl MemoryWatch {
    /// A watcher with its scanning task started.
    pub fn start() -> Arc<MemoryWatch> {
        let watcher = Arc::new(MemoryWatch::default());
        tokio::spawn(scan_forever(watcher.clone()));
        watcher
    }

    /// Watches process group `pgid` against `limit` bytes.
    pub fn watch(self: &Arc<Self>, pgid: u32, limit: u64) -> Watch {
        let (over, rx) = oneshot::channel();
        self.lock().insert(pgid, Watched { limit, over });
        self.wake.notify_one();
        Watch {
            watcher: self.clone(),
            pgid,
            over: rx,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Watched>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn scan_forever(watcher: Arc<MemoryWatch>) {
    loop {
        if watcher.lock().is_empty() {
            let woken = watcher.wake.notified();
            // Registered between the check and here: the permit stored by
            // notify_one wakes us at once.
            woken.await;
            continue;
        }
        tokio::time::sleep(INTERVAL).await;
        let groups: Vec<u32> = watcher.lock().keys().copied().collect();
        let usage = tokio::task::spawn_blocking(move || job_rss(&groups))
            .await
            .unwrap_or_default();
        let mut jobs = watcher.lock();
        for (pgid, bytes) in usage {
            if jobs.get(&pgid).is_some_and(|w| bytes > w.limit) {
                if let Some(watched) = jobs.remove(&pgid) {
                    let _ = watched.over.send(watched.limit);
                }
            }
        }
    }
}

/// Resident bytes of each job, by its leader's pid (= its group id).
fn job_rss(leaders: &[u32]) -> HashMap<u32, u64> {
    static CHILDREN_FILES: OnceLock<bool> = OnceLock::new();
    if !*CHILDREN_FILES.get_or_init(procfs::lists_children) {
        return group_rss(leaders);
    }
    let page = procfs::page_size();
    leaders
        .iter()
        .map(|leader| (*leader, tree_pages(*leader) * page))
        .collect()
}

/// Resident pages of `leader` and all its descendants.
fn tree_pages(leader: u32) -> u64 {
    let mut total = 0;
    let mut seen = HashSet::new();
    let mut todo = vec![leader];
    while let Some(pid) = todo.pop() {
        if !seen.insert(pid) {
            continue;
        }
        total += procfs::resident_pages(pid).unwrap_or(0);
        todo.extend(procfs::children(pid));
    }
    total
}

/// Resident bytes of each of `groups`, summed over their processes.
fn group_rss(groups: &[u32]) -> HashMap<u32, u64> {
    let page = procfs::page_size();
    let mut usage: HashMap<u32, u64> = groups.iter().map(|g| (*g, 0)).collect();
    for pid in procfs::pids() {
        if let Some((pgrp, rss_pages)) = procfs::group_and_resident_pages(pid) {
            if let Some(total) = usage.get_mut(&pgrp) {
                *total += rss_pages * page;
            }
        }
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_counts_its_children() {
        let own = tree_pages(std::process::id());
        assert!(own > 0);
        // A child that touches 64 MiB raises the tree's total by about that.
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                "import sys,time\nb=b'x'*(64<<20)\nprint(1,flush=True)\ntime.sleep(30)",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let with_child = tree_pages(std::process::id());
        child.kill().unwrap();
        child.wait().unwrap();
        let grown = (with_child - own.min(with_child)) * procfs::page_size();
        assert!(grown >= 60 << 20, "grew by {grown} bytes");
    }
}
