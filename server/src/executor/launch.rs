//! The fork and exec of a job's first process, done here rather than by
//! `std::process::Command` for one reason: on cgroup v2, `clone3` with
//! `CLONE_INTO_CGROUP` (Linux 5.7) starts the child inside its job cgroup.
//! A child that moves itself there after the fork (a write to
//! `cgroup.procs`) makes the kernel wait for an RCU grace period, up to
//! 20 ms on a busy node, on the path of every job.
//!
//! Where the child is born in its cgroup anyway (cgroup v1, where the
//! spawning thread sits in it, or no cgroup at all), it is started as
//! `posix_spawn` starts one: sharing the daemon's memory (`CLONE_VM`) with
//! the spawning thread paused until the exec (`CLONE_VFORK`). A fork
//! copies the page tables of the whole daemon and leaves every page of it
//! copy-on-write, which the daemon's threads then fault on; on a busy node
//! that was about half of the daemon's CPU per job.
//!
//! Everything the child needs is prepared before the fork (`Launch`),
//! because the child of a threaded daemon may not allocate or take locks:
//! between the fork and the exec it makes only system calls, and reports a
//! failure as an errno on a close-on-exec pipe, as `Command` does. A child
//! that shares the daemon's memory must also change its account by raw
//! system calls: glibc's `setuid` and friends signal every thread of what
//! they take to be their process, which would be the daemon's.

use std::cell::{RefCell, UnsafeCell};
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::OnceLock;

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sched::CloneFlags;
use nix::sys::mman::{self, MapFlags, ProtFlags};
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;

use super::account::Account;
use super::limits::Rlimits;
use super::priority::JobPriority;
use super::valid_job::ValidJob;

/// How a job's first process gets into its cgroup.
#[derive(Debug, Clone, Copy)]
pub enum Entry<'a> {
    /// No cgroup, or (cgroup v1) born in it: the forking thread is inside.
    Inherited,
    /// cgroup v2: cloned into the directory `dir`; where the kernel cannot
    /// do that, the child writes itself to `procs` (that cgroup's
    /// `cgroup.procs`) before exec.
    Into {
        dir: BorrowedFd<'a>,
        procs: BorrowedFd<'a>,
    },
}

/// A job's process, started: its pid (also its process group) and the
/// parent's ends of its pipes.
#[derive(Debug)]
pub struct Spawned {
    pub pid: u32,
    pub stdin: Option<OwnedFd>,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Everything the child needs, made before the fork.
#[derive(Debug)]
pub struct Launch {
    /// Owns every string the pointer arrays below point into.
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    program: Program,
    cwd: CString,
    forward_stdin: bool,
    /// The job's account: uid, gid and supplementary groups.
    ids: Option<(libc::uid_t, libc::gid_t, Vec<libc::gid_t>)>,
    umask: Mode,
    rlimits: Rlimits,
    priority: JobPriority,
}

// SAFETY: the pointers point into `_strings`, owned alongside them and
// never changed; they are only read, by the child.
unsafe impl Send for Launch {}
unsafe impl Sync for Launch {}

/// What the child execs.
#[derive(Debug)]
enum Program {
    /// The file the command policy opened and checked (`fexecve`);
    /// `script` when it starts with `#!`, so the descriptor must survive
    /// the exec for the interpreter to open it as /dev/fd/N.
    ByFd { fd: RawFd, script: bool },
    /// The paths to try in turn, as `execvp` searches the job's PATH;
    /// `sh_argv` runs a file the kernel cannot exec (ENOEXEC) with
    /// /bin/sh, as `execvp` does; its slot 1 is the path, set in the child.
    Search {
        paths: Vec<*const libc::c_char>,
        sh_argv: UnsafeCell<Vec<*const libc::c_char>>,
    },
}

/// The error of a string with a NUL byte, which no exec can take.
fn nul_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "nul byte in argument or variable",
    )
}

fn c_string(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| nul_error())
}

/// A null-terminated array of the strings' pointers.
fn pointers<'a>(strings: impl Iterator<Item = &'a CString>) -> Vec<*const libc::c_char> {
    let mut p: Vec<_> = strings.map(|s| s.as_ptr()).collect();
    p.push(std::ptr::null());
    p
}

impl Launch {
    /// The launch of `job` in a new process group, with `env`, as `run_as`
    /// when given, with `rlimits`, at `priority`.
    pub fn new(
        job: &ValidJob,
        env: &[(OsString, OsString)],
        run_as: Option<&Account>,
        rlimits: Rlimits,
        priority: JobPriority,
    ) -> io::Result<Launch> {
        let argv0 = match &job.program {
            Some(program) => program.argv0.as_bytes(),
            None => job.argv[0].as_bytes(),
        };
        let mut args = vec![c_string(argv0)?];
        for arg in &job.argv[1..] {
            args.push(c_string(arg.as_bytes())?);
        }
        let mut vars = Vec::with_capacity(env.len());
        for (name, value) in env {
            vars.push(c_string(
                &[name.as_bytes(), b"=", value.as_bytes()].concat(),
            )?);
        }
        let (argv, envp) = (pointers(args.iter()), pointers(vars.iter()));
        let mut strings = args;
        strings.extend(vars);
        let program = match &job.program {
            Some(program) => Program::ByFd {
                fd: program.fd.as_raw_fd(),
                script: program.script,
            },
            None => {
                let path = env.iter().rev().find(|(name, _)| name == "PATH");
                let searched = search_paths(
                    job.argv[0].as_bytes(),
                    path.map(|(_, value)| value.as_bytes()),
                )?;
                let sh = c_string(b"/bin/sh")?;
                let mut sh_argv = vec![sh.as_ptr(), std::ptr::null()];
                sh_argv.extend_from_slice(&argv[1..]);
                let paths = pointers(searched.iter());
                strings.push(sh);
                strings.extend(searched);
                Program::Search {
                    paths,
                    sh_argv: UnsafeCell::new(sh_argv),
                }
            }
        };
        Ok(Launch {
            _strings: strings,
            argv,
            envp,
            program,
            cwd: c_string(job.cwd.as_os_str().as_bytes())?,
            forward_stdin: job.spec.forward_stdin,
            ids: run_as.map(|account| (account.uid, account.gid, account.groups.clone())),
            umask: Mode::from_bits_truncate((job.spec.umask & 0o777) as _),
            rlimits,
            priority,
        })
    }

    /// Forks the job's process, entering its cgroup as `entry` says, and
    /// returns once it has exec'd (or with the reason it could not).
    pub fn spawn(&self, entry: Entry) -> io::Result<Spawned> {
        let stdin = match self.forward_stdin {
            true => Some(pipe()?),
            false => None,
        };
        let (stdout, stderr, report) = (pipe()?, pipe()?, pipe()?);
        let child_stdin = match &stdin {
            Some((read, _)) => read.as_raw_fd(),
            None => dev_null()?,
        };
        let ends = ChildEnds {
            stdin: child_stdin,
            stdout: stdout.1.as_raw_fd(),
            stderr: stderr.1.as_raw_fd(),
            report: report.1.as_raw_fd(),
        };
        let pid = self.fork(entry, &ends)?;
        // The parent keeps its ends only; closing the child's lets a read
        // of the report pipe end at the exec.
        let stdin = stdin.map(|(read, write)| {
            drop(read);
            write
        });
        let (stdout, stderr) = (stdout.0, stderr.0);
        drop(report.1);
        match read_report(&report.0) {
            None => Ok(Spawned {
                pid,
                stdin,
                stdout,
                stderr,
            }),
            Some(err) => {
                // It never exec'd: reap it here, nobody else will.
                let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
                Err(err)
            }
        }
    }

    /// Forks (by `clone3` into the cgroup for `Entry::Into`, falling back
    /// to a fork that joins by `cgroup.procs` where the kernel has no such
    /// clone) and runs the child's part, which never returns.
    fn fork(&self, entry: Entry, ends: &ChildEnds) -> io::Result<u32> {
        match entry {
            Entry::Inherited => self.spawn_sharing(ends, None),
            Entry::Into { dir, procs } => match clone_into(dir) {
                // SAFETY: in the child, which runs only system calls on
                // data prepared before the fork, and exits or execs.
                Ok(0) => unsafe { self.child(ends, None) },
                Ok(pid) => Ok(pid as u32),
                Err(err) if clone_into_unsupported(&err) => {
                    self.spawn_sharing(ends, Some(procs.as_raw_fd()))
                }
                Err(err) => Err(err),
            },
        }
    }

    /// Starts the child in the daemon's memory, on a stack of its own,
    /// with this thread paused until it has exec'd or exited.
    fn spawn_sharing(&self, ends: &ChildEnds, join: Option<RawFd>) -> io::Result<u32> {
        CHILD_STACK.with(|stack| {
            let mut stack = stack.borrow_mut();
            if stack.is_none() {
                *stack = Some(ChildStack::new()?);
            }
            let stack = stack.as_mut().expect("made above");
            // SAFETY: the child only runs `Launch::child`: system calls on
            // data that lives until this call returns, which is after the
            // exec (CLONE_VFORK). Its stack is this thread's, unused until
            // then, with a guard page below.
            let pid = unsafe {
                nix::sched::clone(
                    Box::new(|| self.child(ends, join)),
                    stack.as_mut(),
                    CloneFlags::CLONE_VM | CloneFlags::CLONE_VFORK,
                    Some(libc::SIGCHLD),
                )
            }?;
            Ok(pid.as_raw() as u32)
        })
    }

    /// The child's part: set up, exec, or report why not and exit.
    ///
    /// # Safety
    /// Only in the freshly forked child.
    unsafe fn child(&self, ends: &ChildEnds, join: Option<RawFd>) -> ! {
        let err = self.set_up(ends, join).err().unwrap_or_else(|| self.exec());
        let errno = err.raw_os_error().unwrap_or(libc::EINVAL);
        let bytes = errno.to_ne_bytes();
        // SAFETY: a write of a local buffer, then _exit; nothing else runs.
        unsafe {
            libc::write(ends.report, bytes.as_ptr().cast(), bytes.len());
            libc::_exit(127)
        }
    }

    /// Everything before the exec, in the order `Command` does it, then the
    /// daemon's own steps.
    fn set_up(&self, ends: &ChildEnds, join: Option<RawFd>) -> io::Result<()> {
        // The daemon's blocked signals and ignored SIGPIPE are not the job's.
        // SAFETY: plain system calls on local data.
        unsafe {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
        // First, so that nothing the job starts is outside its cgroup; a
        // job that cannot join it does not run.
        if let Some(procs) = join {
            // Writing "0" names the writer itself; only a write(2).
            // SAFETY: the cgroup keeps the descriptor open until the spawn
            // returns.
            let procs = unsafe { BorrowedFd::borrow_raw(procs) };
            nix::unistd::write(procs, b"0")?;
        }
        for (from, to) in [(ends.stdin, 0), (ends.stdout, 1), (ends.stderr, 2)] {
            // SAFETY: dup2 only changes the descriptor table.
            if unsafe { libc::dup2(from, to) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // The job leads its own group, so signals and kills reach
        // everything it starts, and nothing of the daemon's.
        nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))?;
        // Still as root: any limit may be set.
        nix::sys::stat::umask(self.umask);
        self.rlimits.apply()?;
        self.priority.apply();
        if let Some((uid, gid, groups)) = &self.ids {
            // The account's groups replace root's; groups first, uid last,
            // since each needs the privilege the next gives up.
            // Raw system calls: they change this process only (see the
            // top of the file).
            // SAFETY: plain system calls on data made before the fork.
            unsafe {
                if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0
                    || libc::syscall(libc::SYS_setresgid, *gid, *gid, *gid) != 0
                    || libc::syscall(libc::SYS_setresuid, *uid, *uid, *uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        // As the account: entered as root, a directory the account may not
        // reach (inside another user's private home) would be open to it.
        // SAFETY: a C string that outlives the call.
        if unsafe { libc::chdir(self.cwd.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // If the daemon dies hard (SIGKILL, OOM), the job's leader dies
        // with it rather than run on unwatched (its children are not
        // covered). PDEATHSIG fires when the forking *thread* ends: the
        // runtime thread or a spawner thread, both as long-lived as the
        // executor. Set after the change of account, which clears it.
        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
        close_inherited_on_exec();
        Ok(())
    }

    /// Execs the program; returns only the error.
    fn exec(&self) -> io::Error {
        match &self.program {
            Program::ByFd { fd, script } => {
                // SAFETY: the job owns the descriptor until the spawn returns.
                let borrowed = unsafe { BorrowedFd::borrow_raw(*fd) };
                if *script {
                    if let Err(err) = fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::empty())) {
                        return err.into();
                    }
                }
                // SAFETY: both arrays are null-terminated and point at C
                // strings that outlive the call.
                unsafe { libc::fexecve(*fd, self.argv.as_ptr(), self.envp.as_ptr()) };
                io::Error::last_os_error()
            }
            Program::Search { paths, sh_argv } => self.exec_search(paths, sh_argv),
        }
    }

    /// `execvp`'s search, over paths made before the fork: the first
    /// that execs wins; EACCES is kept if nothing does, as `execvp` keeps it.
    fn exec_search(
        &self,
        paths: &[*const libc::c_char],
        sh_argv: &UnsafeCell<Vec<*const libc::c_char>>,
    ) -> io::Error {
        let mut denied = false;
        let mut last = libc::ENOENT;
        for &path in paths.iter().take_while(|p| !p.is_null()) {
            // SAFETY: null-terminated arrays of C strings that outlive the
            // call.
            unsafe { libc::execve(path, self.argv.as_ptr(), self.envp.as_ptr()) };
            let errno = io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::ENOENT);
            match errno {
                libc::EACCES => denied = true,
                libc::ENOEXEC => {
                    // SAFETY: slot 1 was left for the path; nothing else
                    // reads the array while the spawning thread waits for
                    // this exec. A plain store, no allocation.
                    unsafe {
                        let slots = (*sh_argv.get()).as_mut_ptr();
                        *slots.add(1) = path;
                        libc::execve(*slots, slots, self.envp.as_ptr());
                    }
                    return io::Error::last_os_error();
                }
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
                other => return io::Error::from_raw_os_error(other),
            }
            last = errno;
        }
        io::Error::from_raw_os_error(if denied { libc::EACCES } else { last })
    }
}

/// The child's ends of its pipes, and the pipe it reports a failure on.
#[derive(Debug)]
struct ChildEnds {
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    report: RawFd,
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(OFlag::O_CLOEXEC)?)
}

/// The paths `execvp` would try for `program` on `path` (its default when
/// the job has no PATH): the program itself when it names a file by a
/// slash; relative entries are taken from the job's directory after the
/// chdir, as `execvp` would.
fn search_paths(program: &[u8], path: Option<&[u8]>) -> io::Result<Vec<CString>> {
    if program.contains(&b'/') {
        return Ok(vec![c_string(program)?]);
    }
    path.unwrap_or(b"/bin:/usr/bin")
        .split(|b| *b == b':')
        .map(|dir| {
            let dir = if dir.is_empty() { b"." as &[u8] } else { dir };
            let joined = Path::new(OsStr::from_bytes(dir)).join(OsStr::from_bytes(program));
            c_string(joined.as_os_str().as_bytes())
        })
        .collect()
}

/// The errno the child reported, or `None` once the report pipe closed
/// empty at the exec.
fn read_report(report: &OwnedFd) -> Option<io::Error> {
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(report.as_fd(), &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(err) => return Some(err.into()),
        }
    }
    (got == buf.len()).then(|| io::Error::from_raw_os_error(i32::from_ne_bytes(buf)))
}

thread_local! {
    /// The stack of the children this thread starts: one at a time, since
    /// the thread waits for each to exec.
    static CHILD_STACK: RefCell<Option<ChildStack>> = const { RefCell::new(None) };
}

/// A child's stack: mapped memory with a guard page at its low end, so
/// that an overflow faults instead of writing over the daemon's heap.
#[derive(Debug)]
struct ChildStack {
    base: NonNull<libc::c_void>,
}

/// Enough for `Launch::child`'s few frames, debug builds included.
const CHILD_STACK_BYTES: usize = 256 * 1024;
const GUARD_BYTES: usize = 4096;

impl ChildStack {
    fn new() -> io::Result<ChildStack> {
        let length = NonZeroUsize::new(CHILD_STACK_BYTES).expect("not zero");
        // SAFETY: a new private mapping, owned by the returned value.
        let base = unsafe {
            mman::mmap_anonymous(
                None,
                length,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_STACK,
            )
        }?;
        let stack = ChildStack { base };
        // SAFETY: the lowest page of the mapping just made.
        unsafe { mman::mprotect(stack.base, GUARD_BYTES, ProtFlags::PROT_NONE) }?;
        Ok(stack)
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: the mapping above the guard page, readable and writable,
        // borrowed mutably through `self`.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.base.as_ptr().cast::<u8>().add(GUARD_BYTES),
                CHILD_STACK_BYTES - GUARD_BYTES,
            )
        }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the mapping `new` made, no longer borrowed.
        let _ = unsafe { mman::munmap(self.base, CHILD_STACK_BYTES) };
    }
}

/// `struct clone_args` of clone3(2), up to `cgroup` (Linux 5.7).
#[repr(C)]
#[derive(Debug, Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// A fork whose child starts in the cgroup v2 directory `dir`. Through a
/// raw system call: neither libc nor nix wraps clone3.
fn clone_into(dir: BorrowedFd) -> io::Result<libc::pid_t> {
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: dir.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: without CLONE_VM the child gets a copy of the address space,
    // as with fork; it only runs `Launch::child`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match rc {
        -1 => Err(io::Error::last_os_error()),
        pid => Ok(pid as libc::pid_t),
    }
}

/// Whether clone3 failed because this kernel lacks it or its cgroup
/// argument (before 5.3 and 5.7), rather than for a reason a fork shares.
fn clone_into_unsupported(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ENOSYS | libc::E2BIG | libc::EINVAL | libc::EOPNOTSUPP)
    )
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

/// /dev/null, opened once for the daemon's life (close-on-exec): a job
/// that gets no stdin has it as its descriptor 0, with no open per job.
fn dev_null() -> io::Result<RawFd> {
    static NULL: OnceLock<std::fs::File> = OnceLock::new();
    if let Some(null) = NULL.get() {
        return Ok(null.as_raw_fd());
    }
    let null = std::fs::File::open("/dev/null")?;
    Ok(NULL.get_or_init(|| null).as_raw_fd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_search_follows_execvp() {
        let found = |program: &str, path: Option<&str>| -> Vec<String> {
            search_paths(program.as_bytes(), path.map(str::as_bytes))
                .unwrap()
                .into_iter()
                .map(|c| c.into_string().unwrap())
                .collect()
        };
        assert_eq!(found("./x", Some("/bin")), ["./x"]);
        assert_eq!(found("cc", Some("/a::b")), ["/a/cc", "./cc", "b/cc"]);
        assert_eq!(found("cc", None), ["/bin/cc", "/usr/bin/cc"]);
        assert!(search_paths(b"c\0c", None).is_err());
    }
}
