//! A desktop's "owner" for tests and benchmarks: CPU-bound processes that
//! are not the executor's (started here, as another account when we are
//! root), killed on drop.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

/// The account the owner's work runs as when tests run as root: not the
/// job account's processes' parent, and not root.
pub const OWNER_UID: u32 = 65534;

/// `count` busy loops, each a `sh` spinning on the CPU.
#[derive(Debug)]
pub struct CpuHog {
    children: Vec<Child>,
}

impl CpuHog {
    /// Starts `count` spinning processes.
    pub fn start(count: usize) -> CpuHog {
        let children = (0..count)
            .map(|_| {
                let mut command = Command::new("sh");
                command
                    .args(["-c", "while :; do :; done"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null());
                if crate::is_root() {
                    command.uid(OWNER_UID).gid(OWNER_UID);
                }
                command.spawn().expect("start a busy loop")
            })
            .collect();
        CpuHog { children }
    }

    /// Stops the loops.
    pub fn stop(self) {}
}

impl Drop for CpuHog {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
