//! Making a fingerprint: the driver is asked for its version, its target
//! and the programs and files it would use, and all of them are hashed.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ring::digest::{Context, SHA256};

use super::{Fingerprint, Stamp};

/// The programs a driver runs, asked for with `-print-prog-name=`: what
/// compiles, assembles and links, and the LTO plugin and its helpers.
const PROGRAMS: [&str; 9] = [
    "cc1",
    "cc1plus",
    "cc1obj",
    "as",
    "collect2",
    "ld",
    "lto1",
    "lto-wrapper",
    "liblto_plugin.so",
];
/// Programs a driver finds on PATH when it names them bare.
const ON_PATH: [&str; 2] = ["as", "ld"];
/// A driver that takes longer than this to print its version is broken.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The account to ask the driver as (a daemon running as root never runs
/// a job's program as root, not even to ask its version).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// Why no fingerprint could be made.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot run {driver} {arg}: {source}")]
    Run {
        driver: String,
        arg: String,
        source: std::io::Error,
    },
    #[error("{driver} {arg} took longer than {PROBE_TIMEOUT:?}")]
    Timeout { driver: String, arg: String },
    #[error("{driver} {arg} failed ({status})")]
    Failed {
        driver: String,
        arg: String,
        status: std::process::ExitStatus,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// The executable `program` names, as a shell would find it: a path with
/// a slash from `cwd`, else the first match on `path_var`.
pub fn resolve_program(program: &OsStr, path_var: Option<&OsStr>, cwd: &Path) -> Option<PathBuf> {
    if Path::new(program).components().count() > 1 || program.as_encoded_bytes().contains(&b'/') {
        let path = cwd.join(program);
        return is_executable(&path).then_some(path);
    }
    std::env::split_paths(path_var?)
        .map(|dir| {
            if dir.as_os_str().is_empty() {
                cwd.join(program)
            } else {
                dir.join(program)
            }
        })
        .find(|candidate| is_executable(candidate))
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

/// The fingerprint of `driver` (found for `program`), asked with `env` as
/// its whole environment, as `run_as` when given.
pub fn compute(
    program: &str,
    driver: &Path,
    env: &[(OsString, OsString)],
    run_as: Option<RunAs>,
) -> Result<Fingerprint, ProbeError> {
    let probe = Probe {
        driver,
        env,
        run_as,
    };
    let version = match probe.ask("-dumpfullversion") {
        Ok(version) if !version.is_empty() => version,
        _ => probe.ask("-dumpversion")?,
    };
    let target = probe.ask("-dumpmachine")?;
    let mut files = vec![("driver".to_owned(), driver.to_owned())];
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_os_str());
    for name in PROGRAMS {
        let Ok(answer) = probe.ask(&format!("-print-prog-name={name}")) else {
            continue;
        };
        let found = Path::new(&answer);
        let path = if found.is_absolute() {
            Some(found.to_owned())
        } else if ON_PATH.contains(&answer.as_str()) {
            resolve_program(OsStr::new(&answer), path_var, Path::new("/"))
        } else {
            None
        };
        if let Some(path) = path.filter(|p| p.is_file()) {
            files.push((name.to_owned(), path));
        }
    }
    if let Ok(specs) = probe.ask("-print-file-name=specs") {
        let path = PathBuf::from(specs);
        if path.is_absolute() && path.is_file() {
            files.push(("specs".to_owned(), path));
        }
    }
    files.dedup_by(|a, b| a.1 == b.1);
    digest(program, driver, version, target, &files)
}

/// Hashes the files and stamps them: a stamp taken before the read, so a
/// file changed while it is read is read again next time.
fn digest(
    program: &str,
    driver: &Path,
    version: String,
    target: String,
    files: &[(String, PathBuf)],
) -> Result<Fingerprint, ProbeError> {
    let mut hash = Context::new(&SHA256);
    hash.update(b"mexec toolchain 1\n");
    for part in [&version, &target] {
        hash.update(part.as_bytes());
        hash.update(b"\n");
    }
    let mut stamps = Vec::with_capacity(files.len());
    for (role, path) in files {
        let read_error = |source| ProbeError::Read {
            path: path.display().to_string(),
            source,
        };
        stamps.push(Stamp::of(path).map_err(read_error)?);
        hash.update(role.as_bytes());
        hash.update(b"\n");
        hash_file(&mut hash, path).map_err(read_error)?;
    }
    let digest = hash
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Fingerprint {
        program: program.to_owned(),
        driver: driver.to_owned(),
        version,
        target,
        digest,
        files: stamps,
    })
}

fn hash_file(hash: &mut Context, path: &Path) -> std::io::Result<()> {
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total: u64 = 0;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        hash.update(&buf[..n]);
    }
    // The length ends each file's part, so no two sets of files hash alike.
    hash.update(&total.to_le_bytes());
    Ok(())
}

/// Runs `command` as `run_as` (std clears the supplementary groups too).
#[cfg(unix)]
fn as_account(command: &mut Command, run_as: Option<RunAs>) {
    use std::os::unix::process::CommandExt;
    if let Some(run_as) = run_as {
        command.uid(run_as.uid).gid(run_as.gid);
    }
}

/// Only the daemons, which run on Unix, ask as another account.
#[cfg(not(unix))]
fn as_account(_command: &mut Command, _run_as: Option<RunAs>) {}

/// One driver, asked one question at a time.
struct Probe<'a> {
    driver: &'a Path,
    env: &'a [(OsString, OsString)],
    run_as: Option<RunAs>,
}

impl Probe<'_> {
    /// The driver's answer to `arg`, its first line trimmed.
    fn ask(&self, arg: &str) -> Result<String, ProbeError> {
        let shown = || self.driver.display().to_string();
        let mut command = Command::new(self.driver);
        command
            .arg(arg)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        as_account(&mut command, self.run_as);
        let mut child = command.spawn().map_err(|source| ProbeError::Run {
            driver: shown(),
            arg: arg.to_owned(),
            source,
        })?;
        let deadline = Instant::now() + PROBE_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(ProbeError::Timeout {
                        driver: shown(),
                        arg: arg.to_owned(),
                    });
                }
                Err(source) => {
                    return Err(ProbeError::Run {
                        driver: shown(),
                        arg: arg.to_owned(),
                        source,
                    })
                }
            }
        };
        if !status.success() {
            return Err(ProbeError::Failed {
                driver: shown(),
                arg: arg.to_owned(),
                status,
            });
        }
        let mut out = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            let _ = stdout.read_to_string(&mut out);
        }
        Ok(out.lines().next().unwrap_or("").trim().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Vec<(OsString, OsString)> {
        vec![("PATH".into(), std::env::var_os("PATH").unwrap_or_default())]
    }

    #[test]
    fn gcc_is_fingerprinted_by_what_it_runs_and_a_wrapper_differs() {
        let path = std::env::var_os("PATH");
        let gcc = resolve_program(OsStr::new("gcc"), path.as_deref(), Path::new("/"))
            .expect("gcc on PATH");
        let real = compute("gcc", &gcc, &env(), None).unwrap();
        assert!(
            !real.version.is_empty() && real.target.contains('-'),
            "{real:?}"
        );
        assert_eq!(real.digest.len(), 64);
        let roles = real.files.len();
        assert!(roles >= 3, "driver, cc1 and as at least: {:?}", real.files);
        assert!(
            real.files.iter().any(|s| s.path.ends_with("cc1")),
            "{real:?}"
        );
        assert!(real.is_current());
        // The same compiler again: the same digest.
        assert_eq!(
            compute("gcc", &gcc, &env(), None).unwrap().digest,
            real.digest
        );

        let dir = std::env::temp_dir().join(format!("mexec-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let wrapper = dir.join("gcc");
        std::fs::write(
            &wrapper,
            format!("#!/bin/sh\nexec {} -DODD \"$@\"\n", gcc.display()),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let odd = compute("gcc", &wrapper, &env(), None).unwrap();
        assert_eq!(
            (odd.version.as_str(), odd.target.as_str()),
            (real.version.as_str(), real.target.as_str())
        );
        assert_ne!(
            odd.digest, real.digest,
            "the wrapper is part of the toolchain"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_program_that_is_no_compiler_says_why() {
        let err = compute("true", Path::new("/no/such/gcc"), &env(), None).unwrap_err();
        assert!(err.to_string().contains("cannot run /no/such/gcc"), "{err}");
        let err = compute("false", Path::new("/bin/false"), &env(), None).unwrap_err();
        assert!(err.to_string().contains("failed"), "{err}");
    }

    #[test]
    fn programs_are_found_as_a_shell_finds_them() {
        let path = OsString::from("/no/such:/bin:/usr/bin");
        let sh = resolve_program(OsStr::new("sh"), Some(&path), Path::new("/")).unwrap();
        assert!(sh.ends_with("sh"));
        assert!(resolve_program(OsStr::new("no-such-prog"), Some(&path), Path::new("/")).is_none());
        assert_eq!(
            resolve_program(OsStr::new("bin/sh"), None, Path::new("/")),
            Some(PathBuf::from("/bin/sh"))
        );
    }
}
