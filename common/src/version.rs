//! Which versions of the client, the executor and the gatekeeper work
//! together, and the version every request carries.
//!
//! The rule (docs/operations.md says it for operators): versions are
//! `MAJOR.MINOR.PATCH`; two peers work together when they have the same
//! major version and their minor versions are at most one apart. So a farm
//! upgrades one minor version at a time, node by node, with every mix of old
//! and new in between; a new major version is a stop-the-farm upgrade. A
//! peer outside the rule is refused before any request is read, with both
//! versions named (refusal kind `version`), never left to fail on a message
//! it cannot decode. A request without a version comes from a peer older
//! than this rule (0.1.0 and before) and is taken as 0.1.0.
//!
//! Every request carries the sender's version in metadata under
//! `mexec-version` (the `Connector`'s interceptor puts it there), so the
//! rule covers clients, a gatekeeper relaying to an executor and an
//! executor joining a gatekeeper alike.

use std::sync::OnceLock;

use tonic::metadata::{MetadataMap, MetadataValue};

/// The metadata key the sender's version travels under.
pub const METADATA_KEY: &str = "mexec-version";
/// What a request without a version is taken to come from.
pub const UNVERSIONED: Version = Version {
    major: 0,
    minor: 1,
    patch: 0,
};
/// Tests only: run a binary as if it were this version (a rolling upgrade
/// test starts "new" daemons from the same build).
pub const TEST_OVERRIDE_VAR: &str = "MEXEC_TEST_VERSION";

/// A parsed `MAJOR.MINOR.PATCH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl std::str::FromStr for Version {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        // A pre-release or build suffix (`-rc1`, `+abc`) does not change
        // the line.
        let core = text.split(['-', '+']).next().unwrap_or_default();
        let parts: Vec<u64> = core
            .split('.')
            .map(|p| p.parse::<u64>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("`{text}` is not a version (MAJOR.MINOR.PATCH)"))?;
        match parts[..] {
            [major, minor, patch] => Ok(Version {
                major,
                minor,
                patch,
            }),
            _ => Err(format!("`{text}` is not a version (MAJOR.MINOR.PATCH)")),
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl Version {
    /// Whether a peer of version `other` works with us (the rule above).
    pub fn works_with(self, other: Version) -> bool {
        self.major == other.major && self.minor.abs_diff(other.minor) <= 1
    }
}

/// This binary's version: the package's, or the test override.
pub fn current() -> Version {
    static CURRENT: OnceLock<Version> = OnceLock::new();
    *CURRENT.get_or_init(|| {
        std::env::var(TEST_OVERRIDE_VAR)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| crate::VERSION.parse().unwrap_or(UNVERSIONED))
    })
}

/// This binary's version as text, for load reports and status.
pub fn current_text() -> String {
    current().to_string()
}

/// Puts our version on an outgoing request.
pub fn attach(metadata: &mut MetadataMap) {
    if let Ok(value) = MetadataValue::try_from(current_text()) {
        metadata.insert(METADATA_KEY, value);
    }
}

/// A peer outside the rule: what it said it is, and what we are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "version mismatch: the peer is mexec {peer}, this {role} is mexec {ours}; versions work \
     together only with the same major version and minor versions at most one apart \
     (upgrade one minor version at a time: see docs/operations.md)"
)]
pub struct Mismatch {
    pub peer: String,
    pub ours: Version,
    pub role: &'static str,
}

/// Checks the version a request carries against ours; `role` names us
/// in the refusal ("executor", "gatekeeper").
pub fn check(metadata: &MetadataMap, role: &'static str) -> Result<(), Mismatch> {
    let ours = current();
    let Some(value) = metadata.get(METADATA_KEY) else {
        return match ours.works_with(UNVERSIONED) {
            true => Ok(()),
            false => Err(Mismatch {
                peer: format!("{UNVERSIONED} or older (it sent no version)"),
                ours,
                role,
            }),
        };
    };
    let text = value.to_str().unwrap_or("(not text)");
    match text.parse::<Version>() {
        Ok(peer) if ours.works_with(peer) => Ok(()),
        _ => Err(Mismatch {
            peer: text.chars().take(64).collect(),
            ours,
            role,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        text.parse().unwrap()
    }

    #[test]
    fn one_minor_apart_works_and_more_or_another_major_does_not() {
        assert!(v("0.1.0").works_with(v("0.1.9")));
        assert!(v("0.1.0").works_with(v("0.2.0")));
        assert!(v("0.2.3").works_with(v("0.1.0")));
        assert!(!v("0.1.0").works_with(v("0.3.0")));
        assert!(!v("1.0.0").works_with(v("0.9.0")));
        assert!(v("2.4.0-rc1").works_with(v("2.5.1+abc")));
        assert!("1.2".parse::<Version>().is_err());
        assert!("x.y.z".parse::<Version>().is_err());
    }

    #[test]
    fn a_request_carries_our_version_and_a_far_one_is_refused_naming_both() {
        let mut metadata = MetadataMap::new();
        attach(&mut metadata);
        assert_eq!(check(&metadata, "executor"), Ok(()));
        metadata.insert(METADATA_KEY, MetadataValue::from_static("9.0.0"));
        let refused = check(&metadata, "executor").unwrap_err().to_string();
        assert!(refused.contains("peer is mexec 9.0.0"), "{refused}");
        assert!(
            refused.contains(&format!("this executor is mexec {}", current())),
            "{refused}"
        );
        metadata.insert(METADATA_KEY, MetadataValue::from_static("banana"));
        assert!(check(&metadata, "gatekeeper").is_err());
        // A peer from before the rule is taken as 0.1.0.
        assert_eq!(
            check(&MetadataMap::new(), "executor").is_ok(),
            current().works_with(UNVERSIONED)
        );
    }
}
