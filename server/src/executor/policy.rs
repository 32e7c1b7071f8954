//! The command policy: an optional list of the programs this node runs,
//! and what a job under it may not do to make an allowed program run
//! someone else's code.
//!
//! An entry with a slash is a path: it matches a job whose program
//! resolves (through the job's PATH, then symlinks) to the same file. An
//! entry without one is a name: it matches a program of that basename found
//! anywhere, which is convenient (`gcc`, `cc1`, `ld`) but lets a user who
//! can write the shared tree run a script named like an allowed program;
//! a policy meant to hold against that lists paths.
//!
//! The program is opened once, at admission, and the file checked is the
//! open one: the job later starts from that descriptor (`Program`), so a
//! symlink or file swapped while the job waits in the queue changes
//! nothing.
//!
//! A compiler runs what it is told to, so under a policy the options that
//! load code into it or run another program in its place are refused
//! (`refused_option`), and the variables that do the same are dropped
//! (`environment::CODE_LOADING`). That narrows what a node is for; it is not
//! a sandbox: an allowed program that interprets its input (a shell, make,
//! python) runs anything.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use mexec_proto::v1::JobSpec;
use nix::fcntl::OFlag;
use nix::sys::stat::{fstat, Mode, SFlag};

use super::error::JobError;

/// The allowed programs, as configured (`allowed_programs`).
#[derive(Debug, Clone, Default)]
pub struct CommandPolicy {
    names: Vec<Vec<u8>>,
    /// Path entries, compared by the file they name when a job is checked
    /// (an upgrade that replaces the file keeps it allowed).
    paths: Vec<PathBuf>,
    /// The configured list, for messages.
    shown: String,
}

/// The file a job under a policy starts from: opened and checked at
/// admission, started by descriptor.
#[derive(Debug)]
pub struct Program {
    /// Open on the checked file (close-on-exec).
    pub fd: OwnedFd,
    /// Where the file is, symlinks resolved: what the log shows as run.
    pub path: PathBuf,
    /// `argv[0]` for the job: a path in the real file's own directory, so
    /// that a compiler which finds its installation from `argv[0]` (gcc
    /// does, at run time) cannot be pointed into a directory the user
    /// controls; under the name the user gave when that directory has it
    /// as the same file (`clang++` must stay `clang++`).
    pub argv0: OsString,
    /// Whether the file starts with `#!`: the kernel then hands the
    /// interpreter a `/dev/fd` path to it, so the descriptor has to stay
    /// open across the exec.
    pub script: bool,
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
                policy.paths.push(PathBuf::from(entry));
            } else {
                policy.names.push(entry.as_bytes().to_vec());
            }
        }
        Some(policy)
    }

    /// The opened program of `spec`, when the policy allows it and no
    /// argument makes it load other code.
    pub fn check(&self, spec: &JobSpec) -> Result<Program, JobError> {
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
        // What is checked is the file now open, not the name: a swap after
        // this line changes nothing that runs.
        let (fd, script) = open_program(&resolved).ok_or_else(denied)?;
        let stat = fstat(&fd).map_err(|_| denied())?;
        let by_path = self.paths.iter().any(|path| {
            path.metadata()
                .is_ok_and(|m| m.dev() == stat.st_dev as u64 && m.ino() == stat.st_ino as u64)
        });
        let basename = resolved.file_name().map(|n| n.as_bytes()).unwrap_or(b"");
        let by_name = self.names.iter().any(|n| n.as_slice() == basename);
        if !(by_path || by_name) {
            return Err(denied());
        }
        if let Some(option) = refused_option(spec.argv[1..].iter().map(|a| a.as_ref())) {
            return Err(JobError::OptionDenied {
                program: shown,
                option,
            });
        }
        let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .or_else(|_| resolved.canonicalize())
            .unwrap_or_else(|_| resolved.clone());
        Ok(Program {
            argv0: job_argv0(&path, basename, (stat.st_dev as u64, stat.st_ino as u64)),
            fd,
            path,
            script,
        })
    }
}

/// Opens the program file without blocking (a FIFO put in its place must
/// not hang admission); `None` unless it is a regular file. Read access is
/// wanted only to see a `#!` line: an execute-only file opens as a path.
fn open_program(path: &Path) -> Option<(OwnedFd, bool)> {
    let flags = OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    let fd = nix::fcntl::open(path, flags | OFlag::O_RDONLY, Mode::empty())
        .or_else(|_| nix::fcntl::open(path, flags | OFlag::O_PATH, Mode::empty()))
        .ok()?;
    let stat = fstat(&fd).ok()?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return None;
    }
    let file = std::fs::File::from(fd);
    let mut head = [0u8; 2];
    let script = file.read_exact_at(&mut head, 0).is_ok() && head == *b"#!";
    Some((OwnedFd::from(file), script))
}

/// `argv[0]` for a program whose real file is `path` (with `id`, its
/// device and inode), asked for as `name`.
fn job_argv0(path: &Path, name: &[u8], id: (u64, u64)) -> OsString {
    if let Some(dir) = path.parent() {
        let named = dir.join(OsStr::from_bytes(name));
        let same = named.metadata().is_ok_and(|m| (m.dev(), m.ino()) == id);
        if same && !name.is_empty() {
            return named.into_os_string();
        }
    }
    path.as_os_str().to_owned()
}

/// The first argument that would make a compiler (or linker) load code or
/// run a program other than the one checked, or read arguments nobody
/// checked; `None` when there is none.
///
/// Refused: `-fplugin`/`-fpass-plugin` (compiler plugins), `-load` and
/// `-plugin` (clang's and ld's plugin loading, also reached through
/// `-Xclang`, `-mllvm`, `-Xlinker` or `-Wl,`), `-wrapper` (runs the
/// compiler's subprocesses under another program), `-specs` (spec files
/// rewrite which programs the driver runs), `-B`/`--prefix` (where the
/// driver finds `cc1`, `as`, `ld`), `-fuse-ld=` and `--ld-path=` with a
/// path (a linker of the user's choosing), and `@file` response files:
/// they can hold any of these, and checking one here would race with the
/// compiler reading it later, so they are refused rather than expanded.
/// `--sysroot` and `-isysroot` are allowed: they move where headers,
/// libraries and start files are found, which changes the output, not what
/// runs on the node.
pub fn refused_option<'a>(mut args: impl Iterator<Item = &'a [u8]>) -> Option<String> {
    while let Some(arg) = args.next() {
        let pieces: Vec<&[u8]> = match arg {
            // Handed on to another tool: check what is handed on.
            b"-Xclang" | b"-Xlinker" | b"-Xassembler" | b"-Xpreprocessor" | b"-mllvm" => {
                args.next().into_iter().collect()
            }
            _ if [&b"-Wl,"[..], b"-Wa,", b"-Wp,"]
                .iter()
                .any(|p| arg.starts_with(p)) =>
            {
                arg[4..].split(|b| *b == b',').collect()
            }
            _ => vec![arg],
        };
        for piece in pieces {
            if loads_code(piece) {
                return Some(String::from_utf8_lossy(piece).into_owned());
            }
        }
    }
    None
}

fn loads_code(arg: &[u8]) -> bool {
    const PREFIXES: &[&[u8]] = &[
        b"-fplugin",
        b"-fpass-plugin",
        b"-load",
        b"-plugin",
        b"--plugin",
        b"-specs",
        b"--specs",
        b"-B",
        b"--prefix",
        b"--ld-path",
    ];
    let user_linker = arg.starts_with(b"-fuse-ld=") && arg.contains(&b'/');
    arg == b"-wrapper"
        || arg == b"--wrapper"
        || (arg.len() > 1 && arg[0] == b'@')
        || user_linker
        || PREFIXES.iter().any(|p| arg.starts_with(p))
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

    fn refused(args: &[&str]) -> Option<String> {
        refused_option(args.iter().map(|a| a.as_bytes()))
    }

    #[test]
    fn options_that_load_code_are_refused_by_name() {
        assert_eq!(refused(&["-O2", "-c", "x.c", "-o", "x.o"]), None);
        assert_eq!(refused(&["--sysroot=/opt/sr", "-isysroot", "/x"]), None);
        assert_eq!(refused(&["-fuse-ld=lld", "-Wl,--as-needed,-O1"]), None);
        for (args, option) in [
            (&["-fplugin=./evil.so"][..], "-fplugin=./evil.so"),
            (&["-fplugin", "evil"], "-fplugin"),
            (&["-wrapper", "sh,-c"], "-wrapper"),
            (&["-specs=evil.specs"], "-specs=evil.specs"),
            (&["-B/tmp/evil"], "-B/tmp/evil"),
            (&["-B", "/tmp/evil"], "-B"),
            (&["-Xclang", "-load", "-Xclang", "x.so"], "-load"),
            (&["-Wl,-O1,-plugin,/tmp/x.so"], "-plugin"),
            (&["-Xlinker", "--plugin=/tmp/x.so"], "--plugin=/tmp/x.so"),
            (&["-fuse-ld=/tmp/ld"], "-fuse-ld=/tmp/ld"),
            (&["-c", "@args.rsp"], "@args.rsp"),
        ] {
            assert_eq!(refused(args).as_deref(), Some(option), "{args:?}");
        }
    }

    #[test]
    fn a_refused_option_is_a_denial_naming_it() {
        let policy = CommandPolicy::new(&["true".into()]).unwrap();
        let mut job = spec("true");
        job.argv.push("-fplugin=/tmp/evil.so".into());
        let err = policy.check(&job).unwrap_err();
        assert!(
            err.to_string()
                .contains("option `-fplugin=/tmp/evil.so` of `true`"),
            "{err}"
        );
        let status = err.into_status("n1");
        assert_eq!(
            mexec_common::refusal::Refusal::of(&status),
            Some(mexec_common::refusal::Refusal::Denied)
        );
    }
}
