//! A munged of the test's own: its own key, socket, log and seed files in
//! a directory of its own, never the system's daemon. `--force` because
//! the test runs as root in a world-readable /tmp, which munged's
//! directory checks would otherwise refuse.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running munged, stopped on drop.
#[derive(Debug)]
pub struct Munged {
    child: Child,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

/// Where Debian's munge package puts the daemon.
const MUNGED: &str = "/usr/sbin/munged";

impl Munged {
    /// Starts one; `None` (with a message) where munge is not installed.
    pub fn start() -> Option<Munged> {
        if !Path::new(MUNGED).exists() {
            // CI's scripts/test.sh installs munge, so there a skip is a failure.
            if std::env::var("MEXEC_REQUIRE_NETNS").as_deref() == Ok("1") {
                panic!("munged is not installed (Debian package munge); MEXEC_REQUIRE_NETNS=1");
            }
            crate::skip("munged is not installed (Debian package munge)");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("mexec-munged-")
            .tempdir_in("/tmp")
            .expect("munged dir");
        // Users' clients must reach the socket inside.
        std::fs::set_permissions(dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
        let key = dir.path().join("munge.key");
        let mut bytes = vec![0u8; 1024];
        {
            use std::io::Read;
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut bytes))
                .expect("read /dev/urandom");
        }
        std::fs::write(&key, &bytes).unwrap();
        std::fs::set_permissions(&key, PermissionsExt::from_mode(0o600)).unwrap();
        let socket = dir.path().join("munge.socket");
        let path = |name: &str| format!("{}", dir.path().join(name).display());
        let child = Command::new(MUNGED)
            .args(["--foreground", "--force"])
            .arg(format!("--key-file={}", key.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}", path("munged.pid")))
            .arg(format!("--log-file={}", path("munged.log")))
            .arg(format!("--seed-file={}", path("munged.seed")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start munged");
        let munged = Munged { child, socket, dir };
        assert!(
            crate::wait_until(Duration::from_secs(10), || munged.socket.exists()),
            "munged made no socket; log:\n{}",
            munged.log()
        );
        Some(munged)
    }

    /// The socket, for `--munge-socket`.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// What munged logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("munged.log")).unwrap_or_default()
    }
}

impl Drop for Munged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
