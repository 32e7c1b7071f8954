//! The signals the front forwards to the job, and SIGCHLD for a job run
//! here: blocked, and read from a signalfd in the front's one poll loop
//! (no handler, no thread).

use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::os::FORWARDED_SIGNALS;

/// The blocked signals, readable as they arrive.
pub struct Signals {
    fd: SignalFd,
    before: SigSet,
}

impl Signals {
    /// Blocks the forwarded signals and SIGCHLD, and opens their signalfd.
    pub fn block() -> nix::Result<Signals> {
        let mut mask = SigSet::empty();
        for signo in FORWARDED_SIGNALS {
            mask.add(Signal::try_from(signo)?);
        }
        mask.add(Signal::SIGCHLD);
        let mut before = SigSet::empty();
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), Some(&mut before))?;
        let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
        Ok(Signals { fd, before })
    }

    /// The next signal that arrived, if any.
    pub fn next(&self) -> Option<i32> {
        self.fd
            .read_signal()
            .ok()
            .flatten()
            .map(|info| info.ssi_signo as i32)
    }

    /// Unblocks what `block` blocked (a signal still pending is delivered).
    pub fn restore(&self) {
        let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&self.before), None);
    }
}

impl AsFd for Signals {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
