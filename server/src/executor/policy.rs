//! The command policy: an optional list of the programs this node runs.
//!
//! An entry with a slash is a path: it matches a job whose program
//! resolves (through the job's PATH, then symlinks) to the same file. An
//! entry without one is a name: it matches a program of that basename found
//! anywhere, which is convenient (`gcc`, `cc1`, `ld`) but lets a user who
//! can write the shared tree run a script named like an allowed program;
//! a policy meant to hold against that lists paths. Either way the job is
//! started from the path that was checked, not searched for again.
//!
//! A compiler runs what it is told to (plugins, `-wrapper`, specs), so the
//! policy narrows what a node is for; it is not a sandbox.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use mexec_proto::v1::JobSpec;

use super::error::JobError;

/// The allowed programs, as configured (`allowed_programs`).
#[derive(Debug, Clone, Default)]
pub struct CommandPolicy {
    names: Vec<Vec<u8>>,
    /// Each path entry with its canonical form (symlinks resolved).
    paths: Vec<(PathBuf, PathBuf)>,
    /// The configured list, for messages.
    shown: String,
}

impl CommandPolicy {
    /// A policy from `allowed_programs`; `None` when every program may run.
    pub fn new(entries: &[String]) -> Option<CommandPolicy> {
        if entries.is_empty() {
            return None;
        }
        let mut policy = CommandPolicy {
            shown: entries.join(", "),
            ..CommandPolicy::default()
        };
        for entry in entries {
            if entry.contains('/') {
                let path = PathBuf::from(entry);
                let canonical = path.canonicalize().unwrap_or_else(|_| path.clone());
                policy.paths.push((path, canonical));
            } else {
                policy.names.push(entry.as_bytes().to_vec());
            }
        }
        Some(policy)
    }

    /// The path to start `spec`'s program from, when the policy allows it.
    pub fn check(&self, spec: &JobSpec) -> Result<PathBuf, JobError> {
        let program = &spec.argv[0];
        let shown = String::from_utf8_lossy(program).into_owned();
        let cwd = Path::new(OsStr::from_bytes(&spec.cwd));
        let path_var = spec
            .env
            .iter()
            .find(|v| v.name.as_ref() == b"PATH")
            .map(|v| v.value.as_ref());
        let denied = || JobError::ProgramDenied {
            program: shown.clone(),
            policy: self.shown.clone(),
        };
        let resolved = resolve(program, path_var, cwd).ok_or_else(denied)?;
        let canonical = resolved.canonicalize().unwrap_or_else(|_| resolved.clone());
        let by_path = self
            .paths
            .iter()
            .any(|(path, real)| *path == resolved || *real == canonical);
        let basename = resolved.file_name().map(|n| n.as_bytes()).unwrap_or(b"");
        let by_name = self.names.iter().any(|n| n.as_slice() == basename);
        if by_path || by_name {
            Ok(resolved)
        } else {
            Err(denied())
        }
    }
}

/// Where `program` is, as execvp would find it: relative to `cwd` when it
/// holds a slash, else the first executable file in `path`.
fn resolve(program: &[u8], path: Option<&[u8]>, cwd: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let name = OsStr::from_bytes(program);
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains(&b'/') {
        let candidate = cwd.join(name);
        return executable(&candidate).then_some(candidate);
    }
    path.unwrap_or(b"/usr/bin:/bin")
        .split(|b| *b == b':')
        .map(|dir| {
            let dir = if dir.is_empty() { b"." as &[u8] } else { dir };
            cwd.join(OsStr::from_bytes(dir)).join(name)
        })
        .find(|candidate| executable(candidate))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mexec_proto::v1::EnvVar;

    fn spec(program: &str) -> JobSpec {
        JobSpec {
            argv: vec![program.as_bytes().to_vec().into()],
            cwd: "/".into(),
            env: vec![EnvVar {
                name: "PATH".into(),
                value: "/usr/bin:/bin".into(),
            }],
            ..JobSpec::default()
        }
    }

    #[test]
    fn names_and_paths_allow_and_everything_else_is_denied() {
        assert!(CommandPolicy::new(&[]).is_none());
        let policy = CommandPolicy::new(&["true".into(), "/bin/echo".into()]).unwrap();
        assert!(policy.check(&spec("true")).is_ok());
        assert!(policy.check(&spec("echo")).is_ok(), "found on PATH");
        assert!(policy.check(&spec("/usr/bin/echo")).is_ok(), "same file");
        let err = policy.check(&spec("sh")).unwrap_err().to_string();
        assert!(
            err.contains("`sh`") && err.contains("true, /bin/echo"),
            "{err}"
        );
        assert!(policy.check(&spec("no-such-program")).is_err());
    }
}
