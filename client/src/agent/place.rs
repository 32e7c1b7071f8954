//! Where the agent lives: a socket and a lock file in this user's private
//! state directory (`MEXEC_STATE_DIR`, else `$XDG_RUNTIME_DIR/mexec`, else
//! a 0700 directory in /tmp, the same one the placement state uses), named
//! after the `mexec` binary and the host (its name and network namespace),
//! so that two builds of `mexec` on one host (two checkouts, an upgrade)
//! never talk to each other's agent, nor two hosts that share the
//! directory.

use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::placement::SharedState;

/// The agent's files for this user and this binary.
#[derive(Debug, Clone)]
pub struct Place {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub lock: PathBuf,
    /// This binary's identity, which the agent checks on every job.
    pub build: String,
}

impl Place {
    /// The place of this user's agent for the running binary.
    pub fn for_this_build() -> std::io::Result<Place> {
        let build = build_identity()?;
        let mut hasher = std::hash::DefaultHasher::new();
        build.hash(&mut hasher);
        // One agent per host: a state directory on a shared file system,
        // or network namespaces on one kernel (hosts of their own to the
        // network), must not lead a `mexec` to another host's agent,
        // which reaches the farm from there.
        std::fs::read_link("/proc/self/ns/net")
            .unwrap_or_default()
            .hash(&mut hasher);
        mexec_common::host::name().hash(&mut hasher);
        let name = format!("agent-{:016x}", hasher.finish());
        let dir = SharedState::for_this_user().dir();
        Ok(Place {
            socket: dir.join(format!("{name}.sock")),
            lock: dir.join(format!("{name}.lock")),
            dir,
            build,
        })
    }
}

/// The front and the whole client, each as device, inode, size and
/// modification time: a rebuilt or upgraded `mexec` is another build, and
/// both binaries compute the same identity.
pub fn build_identity() -> std::io::Result<String> {
    let of = |path: std::path::PathBuf| -> std::io::Result<String> {
        let meta = std::fs::metadata(path)?;
        Ok(format!(
            "{}:{}:{}:{}.{}",
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec()
        ))
    };
    Ok(format!(
        "{}/{}",
        of(crate::binaries::front())?,
        of(crate::binaries::full_client())?
    ))
}
