//! The job's working directory on a network file system, around the job:
//! what another node (or the build host) just wrote there must be seen by
//! the job, and what the job wrote must be on the server before its exit
//! is reported, since the next job, or make on the build host, reads it
//! from elsewhere as soon as the exit arrives.
//!
//! - `refresh` before the job: reads the directory, so the node's client
//!   asks the server for its entries. A FUSE client (GlusterFS) that reads
//!   it with READDIRPLUS replaces entries whose file was deleted and made
//!   again elsewhere (a cached entry would give "Stale file handle") and
//!   renews their attributes; an NFS client revalidates the directory.
//! - also before the job, a name this node saw in the directory after an
//!   earlier job and the server no longer has is opened until it stops
//!   giving ESTALE (its cached entry times out), up to `STALE_WAIT`: a
//!   job that makes the file again would otherwise fail to create it.
//! - `remember` after the job: the names in the directory, for that.
//! - `write_back` after the job, when the node is set to
//!   (`write_back_outputs`): each file of the directory changed since
//!   the job started is fsynced (a client with write-behind, GlusterFS's
//!   default `flush-behind`, may still hold its last writes after close),
//!   then the file system is synced (`syncfs`: NFS's dirty pages).
//!
//! Only the working directory is covered, where a build's outputs usually
//! are; an output elsewhere (`-o ../x.o`) is left to the file system.
//! Errors are ignored: this only hastens what the file system does anyway.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::unix::io::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// At most this many changed files are fsynced after one job: a job that
/// wrote more is not a compile, and its files reach the server anyway.
const MAX_SYNCED: usize = 1024;

/// Working directories whose names are remembered, at most: past that
/// the memory starts again (it only hastens what the caches do anyway).
const MAX_REMEMBERED_DIRS: usize = 256;
/// How long a name that the server no longer has may stay "stale" here.
const STALE_WAIT: Duration = Duration::from_secs(2);

/// The names this node saw in each working directory after its jobs, so
/// that a name gone since (deleted on another host) can be checked before
/// the next job: a cached entry for it would make a job that creates the
/// file again fail with "Stale file handle".
#[derive(Debug, Default)]
pub struct SeenNames(Mutex<HashMap<PathBuf, HashSet<OsString>>>);

impl SeenNames {
    fn take(&self, cwd: &Path) -> HashSet<OsString> {
        self.lock().remove(cwd).unwrap_or_default()
    }

    fn put(&self, cwd: &Path, names: HashSet<OsString>) {
        let mut map = self.lock();
        if map.len() >= MAX_REMEMBERED_DIRS {
            map.clear();
        }
        map.insert(cwd.to_owned(), names);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, HashSet<OsString>>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What `refresh` found.
#[derive(Debug, Default, Clone, Copy)]
pub struct Refreshed {
    /// Whether `cwd` may be on a network file system; if not, nothing was
    /// read and there is nothing to `remember`.
    pub shared: bool,
    /// Names that were stale here.
    pub stale: usize,
}

/// On a network file system: reads `cwd`'s entries so this node's client
/// revalidates them, and waits (up to `STALE_WAIT`) for each name seen
/// here before but gone from the server to stop being stale.
pub async fn refresh(cwd: &Path, seen: &Arc<SeenNames>) -> Refreshed {
    let cwd = cwd.to_owned();
    let seen = seen.clone();
    tokio::task::spawn_blocking(move || {
        if !mexec_common::network_fs::may_be_network(&cwd) {
            return Refreshed::default();
        }
        let now = names_in(&cwd);
        let gone: Vec<OsString> = seen.take(&cwd).difference(&now).cloned().collect();
        let stale = gone
            .iter()
            .filter(|name| wait_while_stale(&cwd.join(name)))
            .count();
        Refreshed {
            shared: true,
            stale,
        }
    })
    .await
    .unwrap_or_default()
}

/// Remembers the names in `cwd` after a job.
pub async fn remember(cwd: &Path, seen: &Arc<SeenNames>) {
    let cwd = cwd.to_owned();
    let seen = seen.clone();
    let _ = tokio::task::spawn_blocking(move || {
        let names = names_in(&cwd);
        seen.put(&cwd, names);
    })
    .await;
}

fn names_in(dir: &Path) -> HashSet<OsString> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name())
        .collect()
}

/// Opens `path` until it is no longer "stale" here; true if it was.
fn wait_while_stale(path: &Path) -> bool {
    let started = Instant::now();
    let stale =
        || matches!(std::fs::File::open(path), Err(e) if e.raw_os_error() == Some(libc_estale()));
    if !stale() {
        return false;
    }
    while started.elapsed() < STALE_WAIT && stale() {
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

fn libc_estale() -> i32 {
    nix::errno::Errno::ESTALE as i32
}

/// What `write_back` did, for the log.
#[derive(Debug, Default, Clone, Copy)]
pub struct WriteBack {
    /// Files fsynced.
    pub files: usize,
    /// How long it took.
    pub took: Duration,
}

/// File times lag the clock read at the job's start: the kernel stamps
/// them from a coarse clock (a few milliseconds behind), and a network
/// file system may stamp them with another machine's clock. Files changed
/// this long before the start count as the job's too.
const TIME_SLACK: Duration = Duration::from_secs(2);

/// Fsyncs the files in `cwd` changed since `since`, then syncs the file
/// system, so they are on the server when the job's exit is reported.
pub async fn write_back(cwd: &Path, since: SystemTime) -> WriteBack {
    let since = since - TIME_SLACK;
    let cwd: PathBuf = cwd.to_owned();
    tokio::task::spawn_blocking(move || write_back_now(&cwd, since))
        .await
        .unwrap_or_default()
}

fn write_back_now(cwd: &Path, since: SystemTime) -> WriteBack {
    let started = Instant::now();
    let mut files = 0;
    let changed = std::fs::read_dir(cwd)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| {
            entry
                .metadata()
                .is_ok_and(|m| m.is_file() && m.modified().is_ok_and(|modified| modified >= since))
        })
        .take(MAX_SYNCED);
    for entry in changed {
        if let Ok(file) = std::fs::File::open(entry.path()) {
            if file.sync_all().is_ok() {
                files += 1;
            }
        }
    }
    if let Ok(dir) = std::fs::File::open(cwd) {
        let _ = nix::unistd::syncfs(dir.as_fd());
    }
    WriteBack {
        files,
        took: started.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_files_changed_since_the_start_are_synced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("old"), b"x").unwrap();
        let since = SystemTime::now() + Duration::from_secs(3600);
        assert_eq!(write_back(dir.path(), since).await.files, 0);
        let since = SystemTime::now() - Duration::from_secs(3600);
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert_eq!(write_back(dir.path(), since).await.files, 1);
        let seen = Arc::new(SeenNames::default());
        remember(dir.path(), &seen).await;
        std::fs::remove_file(dir.path().join("old")).unwrap();
        let local = refresh(dir.path(), &seen).await;
        assert!(!local.shared, "a temporary directory is on a local disk");
        assert_eq!(local.stale, 0, "a name gone is not stale locally");
        // A directory that cannot be looked at counts as shared.
        let missing = refresh(Path::new("/no/such/dir"), &seen).await;
        assert!(missing.shared);
        assert_eq!(missing.stale, 0);
    }
}
