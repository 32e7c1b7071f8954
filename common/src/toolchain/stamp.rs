//! A file's identity as the cache keys it: path, device, inode, size and
//! modification time. A file replaced (a package upgrade renames a new one
//! into place) or rewritten in place changes at least one of them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What a file was when it was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
}

impl Stamp {
    /// The identity of `path` now, following links (a link retargeted
    /// names another inode).
    pub fn of(path: &Path) -> std::io::Result<Stamp> {
        let meta = std::fs::metadata(path)?;
        let (dev, ino) = identity(&meta);
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i128);
        Ok(Stamp {
            path: path.to_owned(),
            dev,
            ino,
            size: meta.len(),
            mtime_ns,
        })
    }

    /// Whether the file at the path is still this one.
    pub fn is_current(&self) -> bool {
        Stamp::of(&self.path).is_ok_and(|now| now == *self)
    }
}

#[cfg(unix)]
fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn identity(_meta: &std::fs::Metadata) -> (u64, u64) {
    (0, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_replaced_or_rewritten_is_no_longer_current() {
        let dir = std::env::temp_dir().join(format!("mexec-stamp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("cc1");
        std::fs::write(&file, b"one").unwrap();
        let stamp = Stamp::of(&file).unwrap();
        assert!(stamp.is_current());
        // Same size, new inode: what an upgrade's rename does.
        let new = dir.join("cc1.new");
        std::fs::write(&new, b"two").unwrap();
        std::fs::rename(&new, &file).unwrap();
        assert!(!stamp.is_current());
        let stamp = Stamp::of(&file).unwrap();
        std::fs::write(&file, b"three").unwrap();
        assert!(!stamp.is_current());
        std::fs::remove_file(&file).unwrap();
        assert!(!stamp.is_current());
        let _ = std::fs::remove_dir(&dir);
    }
}
