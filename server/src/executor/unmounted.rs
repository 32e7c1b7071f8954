//! A node on which the shared tree is not mounted, marked so: the top
//! directory of a refused job's working directory that is not there. The
//! mark travels in the load report (`LoadReport.unmounted`), so that
//! `mexec --status` and the gatekeeper show it and clients and the
//! gatekeeper send no more jobs under it here; it clears itself once the
//! directory is there (checked at each report).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The mark, if any.
#[derive(Debug, Default)]
pub struct Unmounted {
    missing: Mutex<Option<PathBuf>>,
}

impl Unmounted {
    /// Marks the node when a job was refused for its working directory
    /// `missing_cwd` (see `JobError::missing_cwd`).
    pub fn note(&self, missing_cwd: Option<&str>) {
        if let Some(cwd) = missing_cwd {
            let top = top_missing(Path::new(cwd));
            tracing::warn!(missing = %top.display(), "jobs refused here: the shared tree is not mounted (marked in the load report until it is)");
            *self.lock() = Some(top);
        }
    }

    /// The missing directory as text; empty, and the mark cleared, once it
    /// is there.
    pub fn current(&self) -> String {
        let mut missing = self.lock();
        match missing.as_ref() {
            Some(path) if path.is_dir() => {
                tracing::info!(mounted = %path.display(), "the shared tree is here again");
                *missing = None;
                String::new()
            }
            Some(path) => path.to_string_lossy().into_owned(),
            None => String::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<PathBuf>> {
        self.missing.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The first component of `cwd`, from the root down, that is not a
/// directory here: `/src/proj/sub` with no `/src/proj` is `/src/proj`.
pub fn top_missing(cwd: &Path) -> PathBuf {
    cwd.ancestors()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .find(|dir| !dir.is_dir())
        .unwrap_or(cwd)
        .to_path_buf()
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt;

    use mexec_common::unmounted::under;

    use super::*;

    #[test]
    fn the_mark_is_the_top_missing_directory_and_clears_when_it_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        let cwd = tree.join("proj/sub");
        let marks = Unmounted::default();
        marks.note(Some(&cwd.to_string_lossy()));
        assert_eq!(marks.current(), tree.to_string_lossy());
        assert!(under(cwd.as_os_str().as_bytes(), &marks.current()));
        assert!(!under(dir.path().as_os_str().as_bytes(), &marks.current()));
        std::fs::create_dir_all(&cwd).unwrap();
        assert_eq!(marks.current(), "");
        marks.note(None);
        assert_eq!(marks.current(), "");
    }
}
