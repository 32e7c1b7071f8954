//! Masquerade: a symlink named `gcc` (or cc, g++, ...) pointing at mexec,
//! in a directory first on PATH. We must run the *next* real program of that
//! name, never ourselves, and the job must not find our symlink either, or
//! it would call mexec again on the node.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

/// The real program behind a masquerade, and the PATH the job gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The real program, for messages.
    pub program: PathBuf,
    /// PATH without the directories whose `name` is mexec.
    pub path: OsString,
}

/// Why the real program was not found.
#[derive(Debug, thiserror::Error)]
#[error("started as `{name}`, but no other `{name}` than mexec itself is on PATH")]
pub struct NotFound {
    pub name: String,
}

/// Finds the first `name` on `path` that is not `self_exe`.
pub fn resolve(name: &OsStr, path: &OsStr, self_exe: &Path) -> Result<Resolved, NotFound> {
    let self_exe = self_exe
        .canonicalize()
        .unwrap_or_else(|_| self_exe.to_owned());
    let mut kept = Vec::new();
    let mut found = None;
    for dir in std::env::split_paths(path) {
        let candidate = dir.join(name);
        let is_self = candidate
            .canonicalize()
            .map(|real| real == self_exe)
            .unwrap_or(false);
        if is_self {
            continue;
        }
        if found.is_none() && is_executable(&candidate) {
            found = Some(candidate);
        }
        kept.push(dir);
    }
    let program = found.ok_or_else(|| NotFound {
        name: name.to_string_lossy().into_owned(),
    })?;
    let path = std::env::join_paths(kept).unwrap_or_default();
    Ok(Resolved { program, path })
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn skips_our_own_symlinks_and_strips_their_directories() {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let root = tempfile::tempdir().unwrap();
        let me = root.path().join("mexec");
        std::fs::write(&me, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&me, std::fs::Permissions::from_mode(0o755)).unwrap();
        let masq = root.path().join("masq");
        let real = root.path().join("real");
        std::fs::create_dir_all(&masq).unwrap();
        std::fs::create_dir_all(&real).unwrap();
        symlink(&me, masq.join("gcc")).unwrap();
        let gcc = real.join("gcc");
        std::fs::write(&gcc, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&gcc, std::fs::Permissions::from_mode(0o755)).unwrap();

        let path = std::env::join_paths([&masq, &real]).unwrap();
        let resolved = resolve(OsStr::new("gcc"), &path, &me).unwrap();
        assert_eq!(resolved.program, gcc);
        assert_eq!(resolved.path, std::env::join_paths([&real]).unwrap());

        let only_us = std::env::join_paths([&masq]).unwrap();
        let err = resolve(OsStr::new("gcc"), &only_us, &me).unwrap_err();
        assert!(err.to_string().contains("no other `gcc`"));
    }
}
