//! Starting a job's process and reaping it: its own process group, the
//! client's cwd, environment and umask, the configured account, pipes for
//! the three standard streams, and `wait4` for its resource use.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::signal::{killpg, Signal};
use nix::sys::stat::Mode;
use nix::unistd::{setgid, setgroups, setuid, Gid, Pid, Uid};
use tokio::net::unix::pipe;

use super::account::Account;
use super::limits::Rlimits;
use super::policy::Program;
use super::priority::JobPriority;
use super::valid_job::ValidJob;

/// A started job process; its pid is also its process group id.
#[derive(Debug)]
pub struct Started {
    pub pid: u32,
    /// The write end of the job's stdin, when the client forwards stdin.
    pub stdin: Option<pipe::Sender>,
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
}

/// How a reaped process ended and what it cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    /// `Ok(code)` for a normal exit, `Err(signal)` for death by signal.
    pub status: Result<i32, i32>,
    pub user: Duration,
    pub system: Duration,
    pub max_rss_kib: u64,
}

/// Starts `job` in a new process group, as its account (`job.run_as`)
/// when it has one, with `rlimits`, at `priority`, in the cgroup whose
/// `cgroup.procs` is open as `cgroup`.
pub fn spawn(
    job: &ValidJob,
    rlimits: Rlimits,
    cgroup: Option<RawFd>,
    priority: JobPriority,
) -> io::Result<Started> {
    let run_as = job.run_as.as_ref();
    let env = super::environment::for_job(&job.spec, run_as, job.as_submitter);
    let by_fd = job
        .program
        .as_ref()
        .map(|program| ExecByFd::new(program, &job.argv, &env))
        .transpose()?;
    // Built before the fork: the child may not allocate.
    let switch = run_as
        .map(|account| Switch::new(account, &job.cwd))
        .transpose()?;
    let mut command = command(job, run_as, env);
    let umask = Mode::from_bits_truncate((job.spec.umask & 0o777) as _);
    // SAFETY: the closure runs between fork and exec, so it may only make
    // async-signal-safe calls: write, umask, setrlimit, prctl, setgroups,
    // setgid, setuid, chdir and the priority calls are plain system calls,
    // and their wrappers allocate nothing (`Switch` is built before).
    unsafe {
        command.pre_exec(move || {
            // First, so that nothing the job starts is outside its cgroup;
            // a job that cannot join it does not run.
            if let Some(procs) = cgroup {
                super::cgroup::join(procs)?;
            }
            nix::sys::stat::umask(umask);
            rlimits.apply()?;
            priority.apply();
            // After the calls above that need root; before the working
            // directory, which the account must be able to enter itself.
            if let Some(switch) = &switch {
                switch.apply()?;
            }
            // If the daemon dies hard (SIGKILL, OOM), the job's leader dies
            // with it rather than run on unwatched (its children are not
            // covered). PDEATHSIG fires when the spawning *thread* ends;
            // mexecd spawns from its single runtime thread, which lives as
            // long as the daemon. After the switch of account: a change of
            // credentials clears the parent-death signal.
            #[cfg(target_os = "linux")]
            let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
            close_inherited_on_exec();
            match &by_fd {
                Some(by_fd) => Err(by_fd.exec()),
                None => Ok(()),
            }
        });
    }
    let mut child = command.spawn()?;
    let pid = child.id();
    match pipes(&mut child) {
        // `child` is dropped without waiting: `reap` owns the exit status.
        Ok((stdin, stdout, stderr)) => Ok(Started {
            pid,
            stdin,
            stdout,
            stderr,
        }),
        Err(err) => {
            kill_group(pid);
            let _ = child.wait();
            Err(err)
        }
    }
}

/// The command for `job`: its argv, environment, cwd and account, in a
/// process group of its own, with its standard streams piped.
fn command(job: &ValidJob, run_as: Option<&Account>, env: Vec<(OsString, OsString)>) -> Command {
    // With a checked program, the child execs it by descriptor from
    // `pre_exec` (`ExecByFd`) and never reaches the exec Command would do.
    let mut command = match &job.program {
        Some(program) => Command::new(&program.path),
        None => Command::new(&job.argv[0]),
    };
    command.args(&job.argv[1..]).env_clear().envs(env);
    // Run as an account, the child enters the directory only once it is
    // that account (`Switch`): entered as root, a directory the account may
    // not reach (inside another user's private home) would be open to it.
    if run_as.is_none() {
        command.current_dir(&job.cwd);
    }
    command
        // The job leads its own group, so signals and kills reach everything
        // it starts, and nothing of the daemon's.
        .process_group(0)
        .stdin(if job.spec.forward_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Becoming the job's account in the forked child: its groups, gid and
/// uid, then its working directory, all built before the fork.
struct Switch {
    groups: Vec<Gid>,
    gid: Gid,
    uid: Uid,
    cwd: CString,
}

impl Switch {
    fn new(account: &Account, cwd: &Path) -> io::Result<Switch> {
        Ok(Switch {
            groups: account.groups.iter().copied().map(Gid::from_raw).collect(),
            gid: Gid::from_raw(account.gid),
            uid: Uid::from_raw(account.uid),
            cwd: CString::new(cwd.as_os_str().as_bytes())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "nul byte in cwd"))?,
        })
    }

    /// In the child: drops root for good (groups first, uid last, since
    /// each needs the privilege the next gives up), then enters the
    /// working directory as the account. Allocates nothing.
    fn apply(&self) -> io::Result<()> {
        setgroups(&self.groups)?;
        setgid(self.gid)?;
        setuid(self.uid)?;
        nix::unistd::chdir(self.cwd.as_c_str())?;
        Ok(())
    }
}

/// The exec of a program the command policy opened: its descriptor, and
/// argv and envp as C arrays, built before the fork because the child may
/// not allocate.
struct ExecByFd {
    fd: RawFd,
    script: bool,
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

// SAFETY: the pointers point into `_strings`, owned alongside them and
// never changed; the child only reads them.
unsafe impl Send for ExecByFd {}
unsafe impl Sync for ExecByFd {}

impl ExecByFd {
    fn new(program: &Program, argv: &[OsString], env: &[(OsString, OsString)]) -> io::Result<Self> {
        let c = |bytes: Vec<u8>| {
            CString::new(bytes).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "nul byte in argument or variable",
                )
            })
        };
        let mut args = vec![c(program.argv0.as_bytes().to_vec())?];
        for arg in &argv[1..] {
            args.push(c(arg.as_bytes().to_vec())?);
        }
        let mut vars = Vec::with_capacity(env.len());
        for (name, value) in env {
            vars.push(c([name.as_bytes(), b"=", value.as_bytes()].concat())?);
        }
        let pointers = |strings: &[CString]| {
            let mut p: Vec<_> = strings.iter().map(|s| s.as_ptr()).collect();
            p.push(std::ptr::null());
            p
        };
        let (argv, envp) = (pointers(&args), pointers(&vars));
        args.extend(vars);
        Ok(ExecByFd {
            fd: program.fd.as_raw_fd(),
            script: program.script,
            _strings: args,
            argv,
            envp,
        })
    }

    /// In the forked child: execs the program; returns only the error.
    fn exec(&self) -> io::Error {
        // SAFETY: `fd` stays open until the spawn returns (the job owns it).
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        if self.script {
            // The interpreter opens the script as /dev/fd/N after the exec.
            if let Err(err) = fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty())) {
                return err.into();
            }
        }
        // Through libc: nix's fexecve builds its arrays, which allocates,
        // and a forked child of a threaded daemon must not.
        // SAFETY: both arrays are null-terminated and point at C strings
        // that outlive the call.
        unsafe { libc::fexecve(self.fd, self.argv.as_ptr(), self.envp.as_ptr()) };
        io::Error::last_os_error()
    }
}

/// Marks every descriptor above the standard three close-on-exec, so the
/// job inherits none of the daemon's (a library's socket, a descriptor the
/// daemon itself inherited). Marked, not closed: the pipe on which the
/// child reports a failed exec must stay open until the exec.
fn close_inherited_on_exec() {
    // Through libc: nix has no close_range. CLOSE_RANGE_CLOEXEC needs
    // Linux 5.11; before that each descriptor is marked in turn.
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range only changes descriptor flags.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if rc == 0 {
        return;
    }
    for raw in 3..FALLBACK_FDS {
        // SAFETY: fcntl on a descriptor that is not open fails with EBADF
        // and does nothing else.
        let fd = unsafe { BorrowedFd::borrow_raw(raw) };
        let _ = fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    }
}

/// How many descriptors the fallback of `close_inherited_on_exec` covers:
/// the default open-files limit of a job.
const FALLBACK_FDS: RawFd = 4096;

type Pipes = (Option<pipe::Sender>, pipe::Receiver, pipe::Receiver);

/// The child's pipes, made asynchronous.
fn pipes(child: &mut Child) -> io::Result<Pipes> {
    let stdin = child
        .stdin
        .take()
        .map(|s| pipe::Sender::from_owned_fd(OwnedFd::from(s)))
        .transpose()?;
    let stdout = pipe::Receiver::from_owned_fd(OwnedFd::from(
        child.stdout.take().expect("stdout is piped"),
    ))?;
    let stderr = pipe::Receiver::from_owned_fd(OwnedFd::from(
        child.stderr.take().expect("stderr is piped"),
    ))?;
    Ok((stdin, stdout, stderr))
}

/// Waits for `pid` to exit and collects its resource use. Runs on the
/// blocking pool because `wait4` is the only call that gives one child's
/// rusage.
pub async fn reap(pid: u32) -> io::Result<Reaped> {
    tokio::task::spawn_blocking(move || wait4(pid))
        .await
        .map_err(io::Error::other)?
}

/// `wait4` through libc: nix wraps `waitpid`, which gives no resource use.
fn wait4(pid: u32) -> io::Result<Reaped> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data; zeroed is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: status and usage are valid for writes.
        let rc = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
        if rc >= 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    let status = if libc::WIFSIGNALED(status) {
        Err(libc::WTERMSIG(status))
    } else {
        Ok(libc::WEXITSTATUS(status))
    };
    Ok(Reaped {
        status,
        user: timeval(usage.ru_utime),
        system: timeval(usage.ru_stime),
        max_rss_kib: usage.ru_maxrss.max(0) as u64,
    })
}

fn timeval(tv: libc::timeval) -> Duration {
    Duration::from_secs(tv.tv_sec.max(0) as u64) + Duration::from_micros(tv.tv_usec.max(0) as u64)
}

/// Whether `program` names an existing file, directly when it holds a
/// slash, else in one of the directories of `path` (as execvp searches).
pub fn program_exists(program: &[u8], path: Option<&[u8]>, cwd: &Path) -> bool {
    let name = OsStr::from_bytes(program);
    if program.contains(&b'/') {
        return cwd.join(name).exists();
    }
    let path = path.unwrap_or(b"/usr/bin:/bin");
    path.split(|b| *b == b':').any(|dir| {
        let dir = if dir.is_empty() { b"." as &[u8] } else { dir };
        cwd.join(OsStr::from_bytes(dir)).join(name).is_file()
    })
}

/// Whether `account` may enter `dir`: search permission on it and every
/// ancestor, judged from mode bits for its uid and groups. ACLs are not
/// consulted; this explains a failure after the fact, it does not grant
/// anything.
pub fn can_enter(dir: &Path, account: &Account) -> bool {
    use std::os::unix::fs::MetadataExt;
    dir.ancestors().all(|d| match d.metadata() {
        Ok(meta) => {
            let bit = if meta.uid() == account.uid {
                0o100
            } else if meta.gid() == account.gid || account.groups.contains(&meta.gid()) {
                0o010
            } else {
                0o001
            };
            meta.mode() & bit != 0
        }
        Err(_) => false,
    })
}

/// Kills the whole process group `pgid`. A group that is already gone is
/// not an error.
pub fn kill_group(pgid: u32) {
    let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
}

/// Sends signal number `signal` (as a client asked) to the whole process
/// group `pgid`. A group that is already gone is not an error.
pub fn signal_group(pgid: u32, signal: i32) {
    // Through libc: nix's `Signal` has no real-time signals, and a client
    // may forward any signal number its system has.
    // SAFETY: kill has no memory effects; a negative pid names the group.
    unsafe {
        libc::kill(-(pgid as libc::pid_t), signal);
    }
}

/// Whether `signal` is one a client may ask us to deliver.
pub fn is_deliverable(signal: i32) -> bool {
    (1..=64).contains(&signal)
}
