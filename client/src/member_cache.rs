//! The member list last learned from a gatekeeper, kept beside the
//! placement state, for direct placement while the gatekeeper is down.

use std::path::PathBuf;

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

    fn read(&self) -> Option<CachedMembers> {
        serde_json::from_slice(&std::fs::read(&self.path).ok()?).ok()
    }

    /// Whether the list should be refreshed.
    pub fn is_stale(&self) -> bool {
        self.read()
            .map(|c| now_ms().saturating_sub(c.updated_ms) > MEMBERS_TTL_MS)
            .unwrap_or(true)
    }

    /// The cached members as a node list.
    pub fn nodes(&self) -> Vec<NodeAddr> {
        let Some(cached) = self.read() else {
            return Vec::new();
        };
        cached
            .members
            .iter()
            .filter_map(|m| {
                let mut addr: NodeAddr = m.address.parse().ok()?;
                addr.slots = Some(m.slots).filter(|s| *s > 0);
                Some(addr)
            })
            .collect()
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
            if std::fs::write(&tmp, text).is_ok() {
                let _ = std::fs::rename(&tmp, &self.path);
            }
        }
    }
}
