//! Starting a job's process and reaping it: its own process group, the
//! client's cwd, environment and umask, the configured account, pipes for
//! the three standard streams (the fork and exec are `launch`'s), and
//! `wait4` for its resource use.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::net::unix::pipe;

use super::account::Account;
use super::launch::{Launch, Spawned};
use super::limits::Rlimits;
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

/// The launch of `job` in a new process group, as its account
/// (`job.run_as`) when it has one, with `rlimits`, at `priority`: spawn it
/// (into the job's cgroup) on any thread, then hand what it started to
/// `started` on the runtime.
pub fn launch(job: &ValidJob, rlimits: Rlimits, priority: JobPriority) -> io::Result<Launch> {
    let run_as = job.run_as.as_ref();
    let env = super::environment::for_job(&job.spec, run_as, job.as_submitter);
    Launch::new(job, &env, run_as, rlimits, priority)
}

/// The job's process with its pipes made asynchronous: call on the
/// runtime. On failure the process is killed and reaped.
pub fn started(spawned: Spawned) -> io::Result<Started> {
    let pid = spawned.pid;
    let pipes = (|| {
        let stdin = spawned.stdin.map(pipe::Sender::from_owned_fd).transpose()?;
        let stdout = pipe::Receiver::from_owned_fd(spawned.stdout)?;
        let stderr = pipe::Receiver::from_owned_fd(spawned.stderr)?;
        io::Result::Ok((stdin, stdout, stderr))
    })();
    match pipes {
        // `reap` owns the exit status.
        Ok((stdin, stdout, stderr)) => Ok(Started {
            pid,
            stdin,
            stdout,
            stderr,
        }),
        Err(err) => {
            kill_group(pid);
            let _ = wait4(pid);
            Err(err)
        }
    }
}

/// Waits for `pid` to exit and collects its resource use (`wait4` is the
/// only call that gives one child's rusage). On Linux a pidfd says when
/// the child has exited, so the `wait4` after it does not block; elsewhere
/// it waits on the blocking pool, a thread per running job.
pub async fn reap(pid: u32) -> io::Result<Reaped> {
    #[cfg(target_os = "linux")]
    if let Some(exited) = pidfd(pid) {
        // Readable means exited: nothing to clear, the pidfd goes next.
        drop(exited.readable().await?);
        return wait4(pid);
    }
    tokio::task::spawn_blocking(move || wait4(pid))
        .await
        .map_err(io::Error::other)?
}

/// A pidfd for `pid`, readable once it has exited; `None` where the kernel
/// has none (before Linux 5.3). Through libc: nix has no pidfd_open.
#[cfg(target_os = "linux")]
fn pidfd(pid: u32) -> Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    use std::os::fd::FromRawFd;
    // SAFETY: a system call that returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a descriptor just made, owned by no one else.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: an OwnedFd stays open, and the same descriptor, while the
    // AsyncFd owns it.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .ok()
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
