//! Whether a node's compiler is the client's, and the line that says how
//! it is not.

use mexec_proto::v1::ToolchainFingerprint;

use super::shown;

/// A node whose compiler of the job's name is not the client's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub node: String,
    pub program: String,
    /// The node's fingerprint.
    pub theirs: ToolchainFingerprint,
    /// The client's.
    pub ours: ToolchainFingerprint,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "node {}: {} is {} ({}), here {} ({})",
            self.node,
            self.program,
            shown(&self.theirs),
            self.theirs.driver,
            shown(&self.ours),
            self.ours.driver,
        )
    }
}

/// How `node`'s compiler differs from `ours`, from the fingerprints the
/// node reported; `None` when it is the same or the node has not
/// fingerprinted that program yet (the node itself then checks the job).
pub fn mismatch(
    node: &str,
    reported: &[ToolchainFingerprint],
    ours: &ToolchainFingerprint,
) -> Option<Mismatch> {
    let theirs = reported.iter().find(|t| t.program == ours.program)?;
    (theirs.digest != ours.digest).then(|| Mismatch {
        node: node.to_owned(),
        program: ours.program.clone(),
        theirs: theirs.clone(),
        ours: ours.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(program: &str, digest: &str) -> ToolchainFingerprint {
        ToolchainFingerprint {
            program: program.into(),
            digest: digest.into(),
            version: "12.2.0".into(),
            target: "x86_64-linux-gnu".into(),
            driver: "/usr/bin/gcc".into(),
        }
    }

    #[test]
    fn only_a_known_and_different_fingerprint_is_a_mismatch() {
        let ours = fp("gcc", "aaaaaaaaaaaaaaaa");
        assert_eq!(mismatch("n1", &[], &ours), None);
        assert_eq!(mismatch("n1", &[fp("cc", "bb")], &ours), None);
        assert_eq!(
            mismatch("n1", &[fp("gcc", "aaaaaaaaaaaaaaaa")], &ours),
            None
        );
        let found = mismatch("n1", &[fp("gcc", "bbbbbbbbbbbbbbbb")], &ours).unwrap();
        assert_eq!(
            found.to_string(),
            "node n1: gcc is 12.2.0 x86_64-linux-gnu bbbbbbbbbbbb (/usr/bin/gcc), \
             here 12.2.0 x86_64-linux-gnu aaaaaaaaaaaa (/usr/bin/gcc)"
        );
    }
}
