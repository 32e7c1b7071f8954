//! Which members a request may be leased: those with every property it
//! requires, and whose compiler of its program is the client's (or not
//! fingerprinted yet: the node checks the job itself, refuses it on a
//! mismatch, and reports its fingerprint, so the next lease knows).

use mexec_common::properties;
use mexec_common::refusal::Refusal;
use mexec_common::toolchain::mismatch;
use mexec_proto::v1::{LoadReport, ToolchainFingerprint};
use tonic::Status;

/// What the node of a request must have.
#[derive(Debug, Clone, Default)]
pub struct Needs {
    /// The client's fingerprint of the job's compiler.
    pub toolchain: Option<ToolchainFingerprint>,
    /// Requirements, as the client wrote them.
    pub require: Vec<String>,
}

impl Needs {
    /// Whether a member reporting `report` may take the request.
    pub fn met_by(&self, node: &str, report: &LoadReport) -> bool {
        properties::unmet(&self.require, &report.properties).is_empty()
            && self
                .toolchain
                .as_ref()
                .is_none_or(|ours| mismatch(node, &report.toolchains, ours).is_none())
    }

    /// The refusal for a request no member may take, saying why; `None`
    /// when some member may, or there are no members at all (the request
    /// waits for nodes, as every request does).
    pub fn refusal<'a>(
        &self,
        members: impl Iterator<Item = (&'a str, &'a LoadReport)> + Clone,
    ) -> Option<Status> {
        let mut members = members.peekable();
        members.peek()?;
        if members
            .clone()
            .any(|(name, report)| self.met_by(name, report))
        {
            return None;
        }
        let unmet: Vec<String> = members
            .clone()
            .filter_map(|(name, report)| {
                let unmet = properties::unmet(&self.require, &report.properties);
                (!unmet.is_empty()).then(|| format!("{name} lacks {}", unmet.join(", ")))
            })
            .collect();
        if !unmet.is_empty() {
            return Some(Refusal::UnmetRequirement.status(format!(
                "no member meets the job's requirements ({})",
                unmet.join("; ")
            )));
        }
        let ours = self.toolchain.as_ref()?;
        let differing: Vec<String> = members
            .filter_map(|(name, report)| mismatch(name, &report.toolchains, ours))
            .map(|m| m.to_string())
            .collect();
        Some(Refusal::Toolchain.status(format!(
            "no member's {} is this client's ({})",
            ours.program,
            differing.join("; ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(digest: &str) -> ToolchainFingerprint {
        ToolchainFingerprint {
            program: "gcc".into(),
            digest: digest.into(),
            version: "12.2.0".into(),
            target: "x86_64-linux-gnu".into(),
            driver: "/usr/bin/gcc".into(),
        }
    }

    fn member(digest: Option<&str>, labels: &[&str]) -> LoadReport {
        LoadReport {
            toolchains: digest.map(fp).into_iter().collect(),
            properties: labels
                .iter()
                .map(|l| (format!("label.{l}"), String::new()))
                .collect(),
            ..LoadReport::default()
        }
    }

    #[test]
    fn only_fitting_members_are_leased_and_none_fitting_says_why() {
        let needs = Needs {
            toolchain: Some(fp("aaaa")),
            require: vec!["label:gpu".into()],
        };
        let (same, odd, unknown) = (
            member(Some("aaaa"), &["gpu"]),
            member(Some("bbbb"), &["gpu"]),
            member(None, &["gpu"]),
        );
        assert!(needs.met_by("n1", &same) && needs.met_by("n3", &unknown));
        assert!(!needs.met_by("n2", &odd));
        assert!(!needs.met_by("n4", &member(Some("aaaa"), &[])));

        assert!(needs
            .refusal([("n1", &same), ("n2", &odd)].into_iter())
            .is_none());
        assert!(
            needs.refusal(std::iter::empty()).is_none(),
            "no members: wait"
        );
        let status = needs.refusal([("n2", &odd)].into_iter()).unwrap();
        assert_eq!(Refusal::of(&status), Some(Refusal::Toolchain));
        assert!(
            status.message().contains("node n2: gcc is 12.2.0"),
            "{}",
            status.message()
        );
        let plain = member(Some("aaaa"), &[]);
        let status = needs.refusal([("n4", &plain)].into_iter()).unwrap();
        assert_eq!(Refusal::of(&status), Some(Refusal::UnmetRequirement));
        assert_eq!(
            status.message(),
            "no member meets the job's requirements (n4 lacks label:gpu)"
        );
    }
}
