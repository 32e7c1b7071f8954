//! Windows: the same services as the Unix module, from the Win32 API.
//!
//! Windows has no umask, no process groups and no POSIX signals. Console
//! control events stand in for the signals (Ctrl-C and Ctrl-Break become
//! SIGINT, closing the console SIGHUP); the
//! numbers on the wire are POSIX ones, so the Linux job gets what a Unix
//! client's job would.

use std::io::IsTerminal;
use std::process::ExitStatus;

use windows_sys::Win32::Foundation::{CloseHandle, ERROR_ACCESS_DENIED, STILL_ACTIVE};
use windows_sys::Win32::System::Threading::{
    GetExitCodeProcess, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION,
};

const SIGHUP: i32 = 1;
const SIGINT: i32 = 2;

/// The umask a job from Windows gets: Windows has none, and 022 is what a
/// Unix account starts with.
pub fn current_umask() -> u32 {
    0o022
}

/// Whether a process with this pid exists.
pub fn process_alive(pid: u32) -> bool {
    // SAFETY: OpenProcess takes no pointers; a null handle means failure.
    let handle = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
    if handle.is_null() {
        // Someone else's process exists but may not be opened.
        return std::io::Error::last_os_error().raw_os_error() == Some(ERROR_ACCESS_DENIED as i32);
    }
    let mut code = 0u32;
    // SAFETY: the handle is open and `code` outlives the call.
    let ok = unsafe { GetExitCodeProcess(handle, &mut code) };
    // SAFETY: the handle is ours and closed once.
    unsafe { CloseHandle(handle) };
    ok != 0 && code == STILL_ACTIVE as u32
}

/// Local children share our console, so Ctrl-C and Ctrl-Break already
/// reached them; there is nothing to forward.
pub fn send_signal(_pid: u32, _signal: i32) {}

/// Whether standard input is a console (then it is not forwarded).
pub fn stdin_is_terminal() -> bool {
    std::io::stdin().is_terminal()
}

/// Whether standard input is the null device (not told apart on
/// Windows: it is forwarded, and reads as empty).
pub fn stdin_is_null() -> bool {
    false
}

/// Whether stdout is a console, which takes only UTF-8 text (the
/// standard library refuses other bytes there).
pub fn stdout_is_text_console() -> bool {
    std::io::stdout().is_terminal()
}

/// Whether stderr is a console, which takes only UTF-8 text.
pub fn stderr_is_text_console() -> bool {
    std::io::stderr().is_terminal()
}

/// What tells one build from another on this host. Windows has no process
/// groups; the parent process is the nearest thing a build shares (make,
/// or the shell make starts each command in, runs every `mexec`).
pub fn build_scope() -> u32 {
    parent_pid().unwrap_or(0)
}

fn parent_pid() -> Option<u32> {
    use windows_sys::Win32::Foundation::INVALID_HANDLE_VALUE;
    use windows_sys::Win32::System::Diagnostics::ToolHelp::{
        CreateToolhelp32Snapshot, Process32FirstW, Process32NextW, PROCESSENTRY32W,
        TH32CS_SNAPPROCESS,
    };
    let me = std::process::id();
    // SAFETY: takes no pointers; the handle is checked and closed below.
    let snapshot = unsafe { CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS, 0) };
    if snapshot == INVALID_HANDLE_VALUE {
        return None;
    }
    // SAFETY: PROCESSENTRY32W is plain data; dwSize is set as the API asks.
    let mut entry: PROCESSENTRY32W = unsafe { std::mem::zeroed() };
    entry.dwSize = std::mem::size_of::<PROCESSENTRY32W>() as u32;
    let mut found = None;
    // SAFETY: the snapshot is open and `entry` is a valid, sized buffer.
    let mut more = unsafe { Process32FirstW(snapshot, &mut entry) } != 0;
    while more {
        if entry.th32ProcessID == me {
            found = Some(entry.th32ParentProcessID);
            break;
        }
        // SAFETY: as above.
        more = unsafe { Process32NextW(snapshot, &mut entry) } != 0;
    }
    // SAFETY: the snapshot is ours and closed once.
    unsafe { CloseHandle(snapshot) };
    found
}

/// The submitting user's name: `%USERNAME%` (or `$USER` under a Unix-like
/// shell). Like on Unix it is a claim that only orders the fair queue.
pub fn user_name() -> String {
    ["USERNAME", "USER"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|n| !n.is_empty()))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The exit code of a local child (Windows always has one).
pub fn exit_code(status: ExitStatus) -> i32 {
    status.code().unwrap_or(crate::EXIT_MEXEC_FAILURE)
}

/// Console control events, as the POSIX signals they stand for.
pub struct SignalStream {
    ctrl_c: tokio::signal::windows::CtrlC,
    ctrl_break: tokio::signal::windows::CtrlBreak,
    ctrl_close: tokio::signal::windows::CtrlClose,
}

impl std::fmt::Debug for SignalStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalStream").finish_non_exhaustive()
    }
}

impl SignalStream {
    /// Installs console control handlers; from now on these events no
    /// longer end this process but arrive here.
    pub fn install() -> std::io::Result<Self> {
        use tokio::signal::windows as console;
        Ok(SignalStream {
            ctrl_c: console::ctrl_c()?,
            ctrl_break: console::ctrl_break()?,
            ctrl_close: console::ctrl_close()?,
        })
    }

    /// The next event, as a POSIX signal number.
    pub async fn next(&mut self) -> i32 {
        std::future::poll_fn(|cx| {
            if self.ctrl_c.poll_recv(cx).is_ready() || self.ctrl_break.poll_recv(cx).is_ready() {
                return std::task::Poll::Ready(SIGINT);
            }
            if self.ctrl_close.poll_recv(cx).is_ready() {
                return std::task::Poll::Ready(SIGHUP);
            }
            std::task::Poll::Pending
        })
        .await
    }
}
