//! After a job: make stats the job's outputs as soon as we exit. On a
//! network file system, reading the directory renews this host's cached
//! entries and times of the files the node just wrote (a stale time would
//! make make skip what depends on them). On a local disk there is nothing
//! to renew.

use std::path::Path;

/// Renews this host's view of `cwd` where it may be on a network file
/// system.
pub fn directory(cwd: &Path) {
    if may_be_shared(cwd) {
        if let Ok(entries) = std::fs::read_dir(cwd) {
            entries.for_each(drop);
        }
    }
}

/// Whether `cwd` may be on a network file system (always, where that
/// cannot be told).
fn may_be_shared(cwd: &Path) -> bool {
    #[cfg(unix)]
    return mexec_common::network_fs::may_be_network(cwd);
    #[cfg(not(unix))]
    {
        let _ = cwd;
        true
    }
}
