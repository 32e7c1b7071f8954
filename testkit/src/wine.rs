//! Wine and MinGW for the tests of Windows programs: the Windows `mexec.exe`
//! as a client, and Windows tools run on Linux executors.
//!
//! Each `Wine` has a prefix of its own in a temp directory (Wine refuses a
//! prefix its user does not own, so root needs its own), booted once,
//! since the first start takes seconds. Wine before 9.0 lacks
//! `bcryptprimitives.dll`, which programs built by current Rust import for
//! random numbers; where the prefix has none, a small stand-in built with
//! MinGW (`ProcessPrng` over `BCryptGenRandom`) goes into its system32.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long the first start of a prefix may take (it is seconds on an idle
/// machine, much more on a busy one).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// The MinGW-w64 C compiler for 64-bit Windows.
pub const MINGW_CC: &str = "x86_64-w64-mingw32-gcc";

const PROCESS_PRNG_SOURCE: &str = r#"
#include <windows.h>
#include <bcrypt.h>
__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    return BCryptGenRandom(NULL, data, (ULONG)len, BCRYPT_USE_SYSTEM_PREFERRED_RNG) == 0;
}
"#;

/// A booted Wine prefix of our own.
#[derive(Debug)]
pub struct Wine {
    prefix: tempfile::TempDir,
}

impl Wine {
    /// A booted prefix; None, after printing why, where Wine or MinGW is
    /// missing (the caller then skips).
    pub fn start() -> Option<Wine> {
        if !available() {
            return None;
        }
        let prefix = tempfile::Builder::new()
            .prefix("mexec-wine-")
            .tempdir()
            .expect("wine prefix dir");
        let wine = Wine { prefix };
        let mut boot = wine.command("wineboot");
        boot.arg("--init")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        assert!(
            run_with_timeout(boot, BOOT_TIMEOUT),
            "wineboot --init did not finish within {BOOT_TIMEOUT:?}"
        );
        wine.settle();
        wine.supply_process_prng();
        Some(wine)
    }

    /// `wine PROGRAM` in this prefix, with Wine's own diagnostics off so a
    /// program's stderr is its own.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("wine");
        command.arg(program);
        self.configure(&mut command);
        command
    }

    /// Points `command` (wine, or a client that runs wine) at this prefix.
    pub fn configure(&self, command: &mut Command) {
        command.envs(environment(self.prefix.path()));
    }

    /// The prefix directory.
    pub fn prefix(&self) -> &Path {
        self.prefix.path()
    }

    /// Waits until this prefix's wineserver has exited (it has then saved
    /// the registry).
    fn settle(&self) {
        let mut wait = Command::new("wineserver");
        wait.arg("-w");
        self.configure(&mut wait);
        let _ = run_with_timeout(wait, Duration::from_secs(60));
    }

    fn supply_process_prng(&self) {
        let system32 = self.prefix().join("drive_c/windows/system32");
        let dll = system32.join("bcryptprimitives.dll");
        if dll.exists() {
            return;
        }
        let source = self.prefix().join("process_prng.c");
        std::fs::write(&source, PROCESS_PRNG_SOURCE).unwrap();
        let built = Command::new(MINGW_CC)
            .args(["-shared", "-O2", "-o"])
            .arg(&dll)
            .arg(&source)
            .arg("-lbcrypt")
            .status()
            .expect("run mingw gcc");
        assert!(
            built.success(),
            "building the bcryptprimitives stand-in failed"
        );
    }
}

impl Drop for Wine {
    fn drop(&mut self) {
        let mut kill = Command::new("wineserver");
        kill.arg("-k");
        self.configure(&mut kill);
        let _ = kill.stderr(Stdio::null()).status();
    }
}

/// Whether Wine and MinGW are installed; prints why not (the caller then
/// skips).
pub fn available() -> bool {
    if !runs("wine", &["--version"]) {
        crate::skip("wine does not run here (Debian: apt-get install wine wine64)");
        return false;
    }
    if !runs(MINGW_CC, &["--version"]) {
        crate::skip(&format!(
            "{MINGW_CC} is not installed (Debian: apt-get install gcc-mingw-w64-x86-64)"
        ));
        return false;
    }
    true
}

/// The variables that point Wine at `prefix`, quiet and without the
/// installers for .NET and HTML support that a first start offers.
pub fn environment(prefix: &Path) -> [(&'static str, std::ffi::OsString); 3] {
    [
        ("WINEPREFIX", prefix.as_os_str().to_owned()),
        ("WINEDEBUG", "-all".into()),
        ("WINEDLLOVERRIDES", "mscoree,mshtml=".into()),
    ]
}

/// Builds a Windows console program from C `source` into `exe`.
pub fn build_windows_program(source: &str, exe: &Path) {
    let c_file = exe.with_extension("c");
    std::fs::write(&c_file, source).unwrap();
    let status = Command::new(MINGW_CC)
        .args(["-O2", "-o"])
        .arg(exe)
        .arg(&c_file)
        .status()
        .expect("run mingw gcc");
    assert!(
        status.success(),
        "{MINGW_CC} failed on {}",
        c_file.display()
    );
}

/// A workspace binary built for Windows (`scripts/test.sh` builds
/// `mexec.exe`), or None, after printing how to build it.
pub fn windows_bin(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test> -> target/
    let target = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("target directory");
    let path = target.join(format!("x86_64-pc-windows-gnu/debug/{name}.exe"));
    if path.is_file() {
        return Some(path);
    }
    crate::skip(&format!(
        "{} is not built (cargo build -p mexec-client --bin {name} --target x86_64-pc-windows-gnu)",
        path.display()
    ));
    None
}

fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs `command`, killing it after `timeout`; whether it succeeded.
fn run_with_timeout(mut command: Command, timeout: Duration) -> bool {
    let Ok(mut child) = command.spawn() else {
        return false;
    };
    let mut status = None;
    crate::wait_until(timeout, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    match status {
        Some(status) => status.success(),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            false
        }
    }
}
