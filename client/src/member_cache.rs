//! The member list last learned from a gatekeeper, kept beside the
//! placement state, for direct placement while the gatekeeper is down.

use std::io::Write;
use std::path::{Path, PathBuf};

use mexec_common::clock::now_ms;
use mexec_common::nodes::NodeAddr;
use mexec_proto::v1::Member;
use serde::{Deserialize, Serialize};

use crate::placement::SharedState;

/// A cached member list older than this is refreshed with the next lease.
const MEMBERS_TTL_MS: u64 = 30_000;

/// The cache file of one gatekeeper's members.
#[derive(Debug, Clone)]
pub struct MemberCache {
    path: PathBuf,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CachedMembers {
    updated_ms: u64,
    members: Vec<CachedMember>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CachedMember {
    node: String,
    address: String,
    slots: u32,
}

impl MemberCache {
    /// The cache file for `gatekeeper`.
    pub fn for_gatekeeper(gatekeeper: &NodeAddr) -> Self {
        let name = gatekeeper
            .authority()
            .replace(|c: char| !c.is_ascii_alphanumeric() && c != '.', "_");
        MemberCache {
            path: SharedState::for_this_user()
                .dir()
                .join(format!("members-{name}.json")),
        }
    }

    /// The list, if there is one we may trust: one that another local user
    /// could have planted or changed is refused with the reason.
    fn read(&self) -> Result<Option<CachedMembers>, String> {
        match SharedState::read_private(&self.path) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("member cache {} ignored: {e}", self.path.display())),
        }
    }

    /// Whether the list should be refreshed.
    pub fn is_stale(&self) -> bool {
        self.read()
            .ok()
            .flatten()
            .map(|c| now_ms().saturating_sub(c.updated_ms) > MEMBERS_TTL_MS)
            .unwrap_or(true)
    }

    /// The cached members as a node list (empty when there is none), or
    /// why the cache was refused.
    pub fn nodes(&self) -> Result<Vec<NodeAddr>, String> {
        let Some(cached) = self.read()? else {
            return Ok(Vec::new());
        };
        Ok(cached
            .members
            .iter()
            .filter_map(|m| {
                let mut addr: NodeAddr = m.address.parse().ok()?;
                addr.slots = Some(m.slots).filter(|s| *s > 0);
                Some(addr)
            })
            .collect())
    }

    /// Replaces the list with `members`.
    pub fn save(&self, members: &[Member]) {
        let cached = CachedMembers {
            updated_ms: now_ms(),
            members: members
                .iter()
                .map(|m| CachedMember {
                    node: m.node.clone(),
                    address: m.address.clone(),
                    slots: m.slots,
                })
                .collect(),
        };
        // Written whole to a temporary file and renamed, so a reader never
        // sees half a list. Only hints: failures are ignored.
        let tmp = self
            .path
            .with_extension(format!("tmp{}", std::process::id()));
        if let Some(dir) = self.path.parent() {
            if SharedState::create_private_dir(dir).is_err() {
                return;
            }
        }
        if let Ok(text) = serde_json::to_vec(&cached) {
            if write_new_private(&tmp, &text).is_ok() {
                let _ = std::fs::rename(&tmp, &self.path);
            } else {
                let _ = std::fs::remove_file(&tmp);
            }
        }
    }
}

/// Writes a new file only we can write, whatever the umask, so that the
/// next read accepts it; an existing file or link in its place is refused.
pub(crate) fn write_new_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(bytes)
}
