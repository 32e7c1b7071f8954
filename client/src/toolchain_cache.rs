//! The client's fingerprint of a job's compiler, kept between jobs in the
//! user's private state directory (beside the placement state, checked the
//! same way: a file another user could have planted is not read), one file
//! per program and driver. A job whose compiler did not change costs a
//! PATH lookup, one small file read and a stat of each file behind the
//! fingerprint; anything changed (an upgrade, another compiler first on
//! PATH) is fingerprinted again.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use mexec_common::toolchain::{self, Fingerprint};
use mexec_proto::v1::ToolchainFingerprint;

use crate::member_cache::write_new_private;
use crate::placement::SharedState;

/// Our fingerprint of `program` as `env` and `cwd` find it, from the cache
/// when it is still current; `None` when it is no compiler we can ask
/// (the job then goes without the check).
pub fn fingerprint(
    program: &OsStr,
    env: &[(OsString, OsString)],
    cwd: &Path,
) -> Option<ToolchainFingerprint> {
    let path_var = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_os_str());
    let driver = toolchain::resolve_program(program, path_var, cwd)?;
    let name = program.to_string_lossy();
    let file = cache_file(&SharedState::for_this_user(), &name, &driver);
    if let Some(cached) = read(&file) {
        if cached.driver == driver && cached.program == name && cached.is_current() {
            return Some(cached.to_proto());
        }
    }
    let made = toolchain::compute(&name, &driver, env, None).ok()?;
    save(&file, &made);
    Some(made.to_proto())
}

/// The cache file of `program` found as `driver`.
fn cache_file(state: &SharedState, program: &str, driver: &Path) -> PathBuf {
    use std::hash::{Hash, Hasher};
    // Only a file name: a hash that changes with the Rust version costs one
    // fingerprint, and the file says which program and driver it is for.
    let mut hasher = std::hash::DefaultHasher::new();
    (program, driver).hash(&mut hasher);
    state
        .dir()
        .join(format!("toolchain-{:016x}.json", hasher.finish()))
}

fn read(file: &Path) -> Option<Fingerprint> {
    let bytes = SharedState::read_private(file).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Written whole and renamed into place; only a hint, so failures are
/// ignored (the next job fingerprints again).
fn save(file: &Path, fingerprint: &Fingerprint) {
    let Some(dir) = file.parent() else { return };
    if SharedState::create_private_dir(dir).is_err() {
        return;
    }
    let Ok(text) = serde_json::to_vec(fingerprint) else {
        return;
    };
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    if write_new_private(&tmp, &text).is_ok() {
        let _ = std::fs::rename(&tmp, file);
    } else {
        let _ = std::fs::remove_file(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_fingerprint_is_used_while_current_and_remade_when_not() {
        let dir = tempfile::tempdir().unwrap();
        let state = SharedState::at(dir.path().join("state").join("placement.json"));
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let gcc = bin.join("gcc");
        let real = toolchain::resolve_program(
            OsStr::new("gcc"),
            std::env::var_os("PATH").as_deref(),
            Path::new("/"),
        )
        .unwrap();
        std::os::unix::fs::symlink(&real, &gcc).unwrap();
        let env = vec![("PATH".into(), OsString::from(&bin))];
        let file = cache_file(&state, "gcc", &gcc);
        assert!(read(&file).is_none());
        let made = toolchain::compute("gcc", &gcc, &env, None).unwrap();
        save(&file, &made);
        let cached = read(&file).expect("saved");
        assert_eq!(cached, made);
        assert!(cached.is_current());
        // A file others could have written is not trusted: it could claim
        // any fingerprint and steer our compiles.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(read(&file).is_none(), "a writable cache file was read");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read(&file).is_some());
        // Another compiler in its place: the cached one is no longer current.
        std::fs::remove_file(&gcc).unwrap();
        std::fs::write(&gcc, "#!/bin/sh\nexec gcc -O3 \"$@\"\n").unwrap();
        assert!(!cached.is_current());
    }
}
