//! The load state that this user's client processes on this host share.
//!
//! make starts many `mexec` processes at once; each lives for one job. To
//! keep them from all choosing the same node, they share a small JSON file
//! under a lock: which node each running client holds (by pid) and the last
//! load report of each node. A client reserves its node in the same locked
//! step in which it chooses it, so 50 clients started together see each
//! other's choices. Entries of dead pids are dropped on every access.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use mexec_common::clock::now_ms;
use mexec_proto::v1::ToolchainFingerprint;
use serde::{Deserialize, Serialize};

use crate::os;

/// Reports older than this are not trusted for others' load.
pub const REPORT_TTL_MS: u64 = 10_000;
/// A node's report is refreshed when older than this.
pub const REFRESH_AFTER_MS: u64 = 2_000;
/// An unreachable node is skipped for this long.
pub const DOWN_FOR_MS: u64 = 3_000;
/// Nodes unused this long are forgotten.
const FORGET_AFTER_MS: u64 = 3_600_000;

/// The whole file.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct StateData {
    /// Per node, keyed by `host:port`.
    #[serde(default)]
    pub nodes: BTreeMap<String, NodeState>,
    /// The next turn, for round-robin placement.
    #[serde(default)]
    pub round_robin: usize,
}

/// What the clients know of one node.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct NodeState {
    /// Pids of clients whose job is on (or headed to) this node.
    #[serde(default)]
    pub reservations: Vec<u32>,
    /// The last load report, when one was fetched.
    #[serde(default)]
    pub report: Option<Snapshot>,
    /// Skip the node until this time (ms since the epoch).
    #[serde(default)]
    pub down_until_ms: u64,
    /// A client is fetching a report since this time.
    #[serde(default)]
    pub refresh_claimed_ms: u64,
    /// Last time anything touched this entry.
    #[serde(default)]
    pub touched_ms: u64,
    /// The compilers' fingerprints of the last load report, so that a
    /// compile skips a node known to have another compiler.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub toolchains: Vec<KnownToolchain>,
    /// The node's name, as its last load report gave it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The node's mark that the shared tree is not mounted there
    /// (`LoadReport.unmounted`); empty when it is.
    #[serde(default)]
    pub unmounted: String,
}

/// A node's fingerprint of one compiler, as its load report gave it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownToolchain {
    pub program: String,
    pub digest: String,
    pub version: String,
    pub target: String,
    pub driver: String,
}

impl From<&ToolchainFingerprint> for KnownToolchain {
    fn from(t: &ToolchainFingerprint) -> Self {
        KnownToolchain {
            program: t.program.clone(),
            digest: t.digest.clone(),
            version: t.version.clone(),
            target: t.target.clone(),
            driver: t.driver.clone(),
        }
    }
}

impl From<&KnownToolchain> for ToolchainFingerprint {
    fn from(t: &KnownToolchain) -> Self {
        ToolchainFingerprint {
            program: t.program.clone(),
            digest: t.digest.clone(),
            version: t.version.clone(),
            target: t.target.clone(),
            driver: t.driver.clone(),
        }
    }
}

/// The parts of a load report that placement uses.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
pub struct Snapshot {
    pub slots: u32,
    pub running: u32,
    pub queued: u32,
    pub foreign_load: f64,
    pub draining: bool,
    /// The slots a desktop node offers now (`None` for a node of the farm,
    /// and in state files written before desktops).
    #[serde(default)]
    pub offered: Option<u32>,
    /// When it was fetched (ms since the epoch).
    pub at_ms: u64,
    /// Our reservations when it was fetched: the report already counts them.
    pub ours_then: u32,
}

/// The agent's placement state, shared by its jobs instead of a file.
static MEMORY_STATE: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<StateData>>> =
    std::sync::OnceLock::new();
/// Woken whenever a slot may have freed in the agent's placement state.
static SLOT_FREED: tokio::sync::Notify = tokio::sync::Notify::const_new();
/// Held while one job asks nodes of unknown size for their load.
static ASKING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The state file (in the agent: the agent's memory, which its jobs share
/// without a lock file).
#[derive(Debug, Clone)]
pub struct SharedState {
    path: PathBuf,
    memory: Option<std::sync::Arc<std::sync::Mutex<StateData>>>,
}

impl SharedState {
    /// The state file of this user (`MEXEC_STATE_DIR`, else the runtime
    /// directory, else a private directory in /tmp).
    pub fn for_this_user() -> Self {
        let dir = std::env::var_os("MEXEC_STATE_DIR")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("XDG_RUNTIME_DIR").map(|d| PathBuf::from(d).join("mexec")))
            .unwrap_or_else(|| std::env::temp_dir().join(format!("mexec-{}", os::user_name())));
        SharedState {
            path: dir.join("placement.json"),
            memory: MEMORY_STATE.get().cloned(),
        }
    }

    /// The directory of the state file (created private on first update).
    pub fn dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    /// A state file at `path`.
    pub fn at(path: PathBuf) -> Self {
        SharedState { path, memory: None }
    }

    /// Keeps this process's placement state in memory from now on (the
    /// agent, at start).
    pub fn keep_in_memory() {
        let _ = MEMORY_STATE.set(std::sync::Arc::default());
    }

    /// Wakes the jobs the agent holds for a slot.
    pub fn slot_freed() {
        SLOT_FREED.notify_waiters();
    }

    /// The wake-up of the jobs held for a slot.
    pub fn slot_freed_signal() -> tokio::sync::futures::Notified<'static> {
        SLOT_FREED.notified()
    }

    /// One job at a time asks the nodes nobody knows yet.
    pub async fn asking_nodes() -> tokio::sync::MutexGuard<'static, ()> {
        ASKING.lock().await
    }

    /// Whether the state is the agent's memory rather than a file.
    pub fn in_memory(&self) -> bool {
        self.memory.is_some()
    }

    /// Drops every reservation `holder` still has (the agent, after a job
    /// that ended in any way, a dropped one included).
    pub fn forget_holder(&self, holder: u32) {
        if let Some(memory) = &self.memory {
            if let Ok(mut data) = memory.lock() {
                for node in data.nodes.values_mut() {
                    node.reservations.retain(|h| *h != holder);
                }
            }
            SharedState::slot_freed();
        }
    }

    /// Runs `change` on the state under an exclusive lock and saves it.
    pub fn update<R>(&self, change: impl FnOnce(&mut StateData, u64) -> R) -> std::io::Result<R> {
        if let Some(memory) = &self.memory {
            // One process: the holders are its jobs, which give their
            // reservations back themselves (`forget_holder`).
            let mut data = memory
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?;
            let now = now_ms();
            forget_idle(&mut data, now);
            return Ok(change(&mut data, now));
        }
        let mut file = self.open()?;
        lock_with_deadline(&file)?;
        let mut text = Vec::new();
        file.read_to_end(&mut text)?;
        // A damaged file (a crash mid-write) is only lost hints: start over.
        let mut data: StateData = serde_json::from_slice(&text).unwrap_or_default();
        let now = now_ms();
        prune(&mut data, now);
        let result = change(&mut data, now);
        let text = serde_json::to_vec(&data).map_err(std::io::Error::other)?;
        file.seek(SeekFrom::Start(0))?;
        file.set_len(0)?;
        file.write_all(&text)?;
        Ok(result)
    }

    fn open(&self) -> std::io::Result<File> {
        if let Some(dir) = self.path.parent() {
            SharedState::create_private_dir(dir)?;
        }
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        let file = open_no_follow(&mut options, &self.path)?;
        check_private_file(&file, &self.path)?;
        Ok(file)
    }

    /// Reads a file that lives beside the state file, refusing one that
    /// is not ours alone (a link, another user's file, a file or directory
    /// others can write): what another local user planted must never
    /// steer our jobs.
    pub fn read_private(path: &Path) -> std::io::Result<Vec<u8>> {
        if let Some(dir) = path.parent() {
            check_private_dir(dir)?;
        }
        let mut options = OpenOptions::new();
        options.read(true);
        let mut file = open_no_follow(&mut options, path)?;
        check_private_file(&file, path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    /// Creates `dir` private to us, and refuses one that someone else owns
    /// or can write: in /tmp another user could otherwise plant it. For
    /// the state file and what lives beside it.
    #[cfg(unix)]
    pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        match std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
        {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        check_private_dir(dir)
    }

    /// Creates `dir`: elsewhere the state lives in the user's own
    /// temporary directory.
    #[cfg(not(unix))]
    pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)
    }
}

/// Opens `path`, never following a link planted in place of the file.
fn open_no_follow(options: &mut OpenOptions, path: &Path) -> std::io::Result<File> {
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(options, nix::fcntl::OFlag::O_NOFOLLOW.bits());
    options.open(path)
}

/// Refuses a directory that is not ours or that others can write.
#[cfg(unix)]
fn check_private_dir(dir: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    refuse_unless_private(&meta, meta.is_dir(), dir, "directory")
}

#[cfg(not(unix))]
fn check_private_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

/// Refuses an open file that is not a regular file of ours that only we
/// can write. Checked on the descriptor, so a rename after the check
/// changes nothing.
#[cfg(unix)]
fn check_private_file(file: &File, path: &Path) -> std::io::Result<()> {
    let meta = file.metadata()?;
    refuse_unless_private(&meta, meta.is_file(), path, "file")
}

#[cfg(not(unix))]
fn check_private_file(_file: &File, _path: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn refuse_unless_private(
    meta: &std::fs::Metadata,
    right_type: bool,
    path: &Path,
    what: &str,
) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    if !right_type || meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{} is not a {what} private to this user", path.display()),
        ));
    }
    Ok(())
}

/// How long a client waits for the state lock before placing without it.
/// A holder that stopped (SIGSTOP, a debugger) must not stall every build.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_millis(500);

fn lock_with_deadline(file: &File) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + LOCK_PATIENCE;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "placement state is locked by a stuck client",
                ))
            }
            Err(std::fs::TryLockError::Error(err)) => return Err(err),
        }
    }
}

fn prune(data: &mut StateData, now: u64) {
    for node in data.nodes.values_mut() {
        node.reservations.retain(|pid| os::process_alive(*pid));
    }
    forget_idle(data, now);
}

fn forget_idle(data: &mut StateData, now: u64) {
    data.nodes.retain(|_, node| {
        !node.reservations.is_empty() || now.saturating_sub(node.touched_ms) < FORGET_AFTER_MS
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_persist_and_dead_pids_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let state = SharedState::at(dir.path().join("sub").join("placement.json"));
        state
            .update(|d, now| {
                let n = d.nodes.entry("a:1".into()).or_default();
                n.reservations.push(std::process::id());
                // No process has pid 0x7fff_fff0 on a normal system.
                n.reservations.push(0x7fff_fff0);
                n.touched_ms = now;
            })
            .unwrap();
        let kept = state
            .update(|d, _| d.nodes["a:1"].reservations.clone())
            .unwrap();
        assert_eq!(kept, vec![std::process::id()]);
    }

    #[cfg(unix)]
    #[test]
    fn a_planted_link_or_shared_directory_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("victim");
        std::fs::write(&target, b"precious").unwrap();
        let state_dir = dir.path().join("state");
        std::fs::create_dir(&state_dir).unwrap();
        std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&target, state_dir.join("placement.json")).unwrap();
        let state = SharedState::at(state_dir.join("placement.json"));
        assert!(state.update(|_, _| ()).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");

        let open_dir = dir.path().join("open");
        std::fs::create_dir(&open_dir).unwrap();
        std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let state = SharedState::at(open_dir.join("placement.json"));
        assert!(state.update(|_, _| ()).is_err());
    }

    #[test]
    fn a_damaged_file_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("placement.json");
        std::fs::write(&path, b"{not json").unwrap();
        let state = SharedState::at(path);
        assert_eq!(state.update(|d, _| d.nodes.len()).unwrap(), 0);
    }
}
