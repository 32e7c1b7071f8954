//! A working directory that is not visible on this node yet: on a network
//! file system a directory just made on the build host (or by a job on
//! another node) can take a moment to appear here, or be hidden by a
//! cached "no such entry". So before a job is refused for a missing cwd,
//! the node revalidates the path and waits for it, up to a bound
//! (`cwd_wait_ms`, default `DEFAULT_CWD_WAIT`), and says how long it
//! waited when it still refuses.
//!
//! Revalidating: the deepest ancestor that exists is opened and read.
//! Opening a directory makes an NFS client check it against the server
//! (close-to-open), and a changed directory drops the negative entries
//! cached under it; reading it lists what the server has.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a node waits for a missing working directory by default:
/// longer than the attribute and entry caches of a network file system
/// in their default settings take to expire (GlusterFS 1 s; NFS
/// revalidates on open), short enough that a node without the tree at
/// all costs a job only this much.
pub const DEFAULT_CWD_WAIT: Duration = Duration::from_secs(2);

/// The first pause between checks; it doubles up to `MAX_PAUSE`.
const FIRST_PAUSE: Duration = Duration::from_millis(20);
const MAX_PAUSE: Duration = Duration::from_millis(250);

/// What the wait found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CwdWait {
    /// There at the first look (or not an absolute path: validation
    /// refuses that, with no wait).
    Present,
    /// Appeared after this long.
    Appeared(Duration),
    /// Still missing when the bound ran out, after this long.
    Missing(Duration),
}

/// Waits up to `bound` for the directory `cwd` (the job's bytes) to be
/// visible here. Each look runs on a blocking thread: a stat on a network
/// file system may hang while its server is away.
pub async fn until_visible(cwd: &[u8], bound: Duration) -> CwdWait {
    let path = PathBuf::from(OsStr::from_bytes(cwd));
    if !path.is_absolute() || look(&path, false).await {
        return CwdWait::Present;
    }
    let started = Instant::now();
    let mut pause = FIRST_PAUSE;
    loop {
        if look(&path, true).await {
            return CwdWait::Appeared(started.elapsed());
        }
        let left = bound.saturating_sub(started.elapsed());
        if left.is_zero() {
            return CwdWait::Missing(started.elapsed());
        }
        tokio::time::sleep(pause.min(left)).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Whether `path` is a directory here, revalidating its ancestors first
/// when `revalidate`.
async fn look(path: &Path, revalidate: bool) -> bool {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        if revalidate {
            revalidate_ancestors(&path);
        }
        path.is_dir()
    })
    .await
    .unwrap_or(false)
}

/// Opens and reads the deepest existing ancestor of `path`, and each one
/// below it that now exists, so a network file system asks its server.
fn revalidate_ancestors(path: &Path) {
    let mut ancestors: Vec<&Path> = path.ancestors().skip(1).collect();
    ancestors.reverse();
    let deepest = ancestors.iter().rposition(|dir| dir.is_dir()).unwrap_or(0);
    for dir in &ancestors[deepest..] {
        match std::fs::read_dir(dir) {
            Ok(entries) => entries.for_each(drop),
            Err(_) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_present_directory_is_not_waited_for_and_a_missing_one_is_bounded() {
        assert_eq!(
            until_visible(b"/tmp", Duration::ZERO).await,
            CwdWait::Present
        );
        assert_eq!(
            until_visible(b"tmp", Duration::ZERO).await,
            CwdWait::Present
        );
        let bound = Duration::from_millis(200);
        let started = Instant::now();
        let CwdWait::Missing(waited) = until_visible(b"/no/such/dir", bound).await else {
            panic!("a missing directory must be reported missing");
        };
        assert!(waited >= bound, "{waited:?}");
        assert!(started.elapsed() < bound + Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_directory_made_during_the_wait_is_found() {
        let base = tempfile::tempdir().unwrap();
        let late = base.path().join("a/b");
        let made = late.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            std::fs::create_dir_all(made).unwrap();
        });
        let found = until_visible(late.as_os_str().as_bytes(), Duration::from_secs(5)).await;
        assert!(matches!(found, CwdWait::Appeared(_)), "{found:?}");
    }
}
