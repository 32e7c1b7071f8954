//! mpmake waits for make whatever happens: Ctrl-C from the terminal reaches
//! make directly (same process group), so mpmake ignores SIGINT and SIGQUIT
//! once make runs; SIGTERM and SIGHUP sent to mpmake alone are passed on.

use std::sync::atomic::{AtomicI32, Ordering};

static MAKE_PID: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(signal: libc::c_int) {
    let pid = MAKE_PID.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// Call right after make started (so make itself keeps default handlers).
pub fn forward_to(make_pid: u32) {
    MAKE_PID.store(make_pid as i32, Ordering::Relaxed);
    // SAFETY: installs plain handlers; `forward` only reads an atomic and
    // calls kill, both async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, forward as *const () as libc::sighandler_t);
        libc::signal(libc::SIGHUP, forward as *const () as libc::sighandler_t);
    }
}
