//! Unix: umask, process liveness, terminals, signals, identities.

use std::io::IsTerminal;
use std::process::ExitStatus;

use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::sys::stat::{umask, Mode};
use nix::unistd::{self, Pid};

/// The signals a client forwards to the remote job.
pub const FORWARDED_SIGNALS: [i32; 4] = [
    Signal::SIGINT as i32,
    Signal::SIGTERM as i32,
    Signal::SIGHUP as i32,
    Signal::SIGQUIT as i32,
];

/// What the standard library's start-up does that mexec relies on, for a
/// binary with a C `main` of its own (which skips that start-up): SIGPIPE
/// ignored, so that a write to a closed pipe is an EPIPE error to handle,
/// not a death; and a closed standard descriptor reopened on /dev/null, so
/// that no socket of ours takes its number (and is passed on as the job's
/// output). Call it first, before any thread starts.
pub fn start_up() {
    // SAFETY: sets the disposition of one signal, before any thread starts.
    unsafe {
        let _ = signal::signal(Signal::SIGPIPE, signal::SigHandler::SigIgn);
    }
    for fd in 0..3 {
        // SAFETY: only asks after the descriptor number; closes nothing.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let closed = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD) == Err(Errno::EBADF);
        if closed {
            // The lowest free number is this one; kept open for good.
            if let Ok(null) = std::fs::File::options()
                .read(true)
                .write(true)
                .open("/dev/null")
            {
                let _ = std::os::fd::IntoRawFd::into_raw_fd(null);
            }
        }
    }
}

/// This process's umask. Must be called before any other thread starts:
/// reading it means setting it and putting it back, and no one may see
/// the interim value.
pub fn current_umask() -> u32 {
    let old = umask(Mode::from_bits_truncate(0o022));
    umask(old);
    old.bits() as u32
}

/// Whether a process with this pid exists.
pub fn process_alive(pid: u32) -> bool {
    // Signal 0 only checks for existence and permission: a process of
    // another user exists too.
    matches!(
        signal::kill(Pid::from_raw(pid as i32), None),
        Ok(()) | Err(Errno::EPERM)
    )
}

/// Sends `signal` to process `pid`.
pub fn send_signal(pid: u32, signal: i32) {
    if let Ok(signal) = Signal::try_from(signal) {
        let _ = signal::kill(Pid::from_raw(pid as i32), signal);
    }
}

/// Whether standard input is a terminal (then it is not forwarded).
pub fn stdin_is_terminal() -> bool {
    std::io::stdin().is_terminal()
}

/// Whether standard input is /dev/null: then there is nothing to forward
/// (the job gets /dev/null on the node too), and no reader thread to
/// start for it, as make's jobs often have.
pub fn stdin_is_null() -> bool {
    use nix::sys::stat::{fstat, stat, SFlag};
    let (Ok(ours), Ok(null)) = (fstat(std::io::stdin()), stat("/dev/null")) else {
        return false;
    };
    let is_char = |mode| SFlag::from_bits_truncate(mode) & SFlag::S_IFMT == SFlag::S_IFCHR;
    is_char(ours.st_mode) && is_char(null.st_mode) && ours.st_rdev == null.st_rdev
}

/// Whether stdout is a console that takes only text (never on Unix: a
/// terminal takes any bytes).
pub fn stdout_is_text_console() -> bool {
    false
}

/// Whether stderr is a console that takes only text (never on Unix).
pub fn stderr_is_text_console() -> bool {
    false
}

/// What tells one build from another on this host: the process group we
/// run in, which make and all its children share; under Ninja, which
/// gives every command a process group of its own, the Ninja process above
/// us (`ninja`).
pub fn build_scope() -> String {
    let group = unistd::getpgrp().as_raw();
    match super::ninja::ninja_above_group(group as u32) {
        Some((pid, started)) => format!("ninja-{pid}-{started}"),
        None => group.to_string(),
    }
}

/// The submitting user's name: `$USER` (or `$LOGNAME`) when set, else the
/// password database. The name only orders the fair queue and is a claim
/// either way (certificates will prove it), so the environment is as good
/// a source as the database, and it spares every compile an NSS look-up.
pub fn user_name() -> String {
    if let Some(name) = ["USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|n| !n.is_empty()))
    {
        return name;
    }
    let uid = unistd::getuid();
    match unistd::User::from_uid(uid) {
        Ok(Some(user)) => user.name,
        _ => std::env::var("USER").unwrap_or_else(|_| format!("uid{uid}")),
    }
}

/// The exit code a shell would report for a local child's status.
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => crate::EXIT_MEXEC_FAILURE,
    }
}

/// A stream of the forwarded signals, as their numbers.
pub struct SignalStream {
    streams: Vec<(i32, tokio::signal::unix::Signal)>,
    /// In the agent: the signals the job's `mexec` received.
    relayed: Option<tokio::sync::mpsc::UnboundedReceiver<i32>>,
}

impl std::fmt::Debug for SignalStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalStream").finish_non_exhaustive()
    }
}

impl SignalStream {
    /// Installs handlers for `FORWARDED_SIGNALS`; from now on they no longer
    /// kill this process but arrive here.
    pub fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        if let Some(relayed) = crate::job_hooks::relayed_signals() {
            return Ok(SignalStream {
                streams: Vec::new(),
                relayed: Some(relayed),
            });
        }
        let streams = FORWARDED_SIGNALS
            .iter()
            .map(|&n| Ok((n, signal(SignalKind::from_raw(n))?)))
            .collect::<std::io::Result<_>>()?;
        Ok(SignalStream {
            streams,
            relayed: None,
        })
    }

    /// The next signal received.
    pub async fn next(&mut self) -> i32 {
        // Polled in place: this sits in every select loop of a running
        // job, so it must not allocate per call.
        std::future::poll_fn(|cx| {
            for (n, stream) in self.streams.iter_mut() {
                if stream.poll_recv(cx).is_ready() {
                    return std::task::Poll::Ready(*n);
                }
            }
            // A closed relay (the `mexec` gone) sends nothing more; the
            // agent drops the job then.
            if let Some(relayed) = self.relayed.as_mut() {
                if let std::task::Poll::Ready(Some(n)) = relayed.poll_recv(cx) {
                    return std::task::Poll::Ready(n);
                }
            }
            std::task::Poll::Pending
        })
        .await
    }
}
