//! What `mexec --status` says of each node's compilers and properties: its
//! fingerprints, marked where they differ from this client's compiler of
//! the same name (as this shell's PATH finds it), and its properties.

use std::collections::{BTreeMap, HashMap};

use mexec_common::properties::LABEL_PREFIX;
use mexec_common::toolchain::shown;
use mexec_proto::v1::{LoadReport, ToolchainFingerprint};
use serde_json::{json, Value};

use crate::toolchain_cache;

/// This client's fingerprints, made once per program name.
#[derive(Debug, Default)]
pub struct Ours {
    made: HashMap<String, Option<ToolchainFingerprint>>,
}

impl Ours {
    fn of(&mut self, program: &str) -> Option<&ToolchainFingerprint> {
        self.made
            .entry(program.to_owned())
            .or_insert_with(|| {
                let env: Vec<_> = std::env::vars_os().collect();
                let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
                toolchain_cache::fingerprint(program.as_ref(), &env, &cwd)
            })
            .as_ref()
    }
}

/// A node's toolchains as JSON, by program: digest, version, target,
/// driver, and `same_as_client` (null when this client has no such
/// program); and its properties.
pub fn node_json(report: &LoadReport, ours: &mut Ours) -> (Value, Value) {
    let toolchains: serde_json::Map<String, Value> = report
        .toolchains
        .iter()
        .map(|t| {
            let same = ours.of(&t.program).map(|o| o.digest == t.digest);
            let entry = json!({
                "digest": t.digest, "version": t.version, "target": t.target,
                "driver": t.driver, "same_as_client": same,
            });
            (t.program.clone(), entry)
        })
        .collect();
    let properties: BTreeMap<&String, &String> = report.properties.iter().collect();
    (Value::Object(toolchains), json!(properties))
}

/// The text section under the load table: one line per node's compiler,
/// marked DIFFERS where it is not ours, and one of its properties.
pub fn section(reports: &[LoadReport], ours: &mut Ours) -> String {
    let mut text = String::new();
    for report in reports {
        for t in &report.toolchains {
            let mark = match ours.of(&t.program) {
                Some(o) if o.digest == t.digest => "same as here".to_owned(),
                Some(o) => format!("DIFFERS: here {}", shown(o)),
                None => "not found here".to_owned(),
            };
            text.push_str(&format!(
                "{:<14} {:<10} {:<40} {mark}\n",
                report.node,
                t.program,
                shown(t)
            ));
        }
    }
    for report in reports.iter().filter(|r| !r.properties.is_empty()) {
        text.push_str(&format!(
            "{:<14} {}\n",
            report.node,
            properties_line(report)
        ));
    }
    if text.is_empty() {
        return text;
    }
    format!("\nNODE           TOOLCHAINS AND PROPERTIES\n{text}")
}

/// "arch=x86_64 os=linux libc=glibc 2.36 cores=8 mem_mib=31000 labels: gpu rack=r7".
fn properties_line(report: &LoadReport) -> String {
    let sorted: BTreeMap<&String, &String> = report.properties.iter().collect();
    let mut plain = Vec::new();
    let mut labels = Vec::new();
    for (key, value) in sorted {
        if let Some(label) = key.strip_prefix(LABEL_PREFIX) {
            labels.push(if value.is_empty() {
                label.to_owned()
            } else {
                format!("{label}={value}")
            });
        } else if key != "cpu_flags" {
            plain.push(format!("{key}={value}"));
        }
    }
    if !labels.is_empty() {
        plain.push(format!("labels: {}", labels.join(" ")));
    }
    plain.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_whose_compiler_is_not_ours_is_marked() {
        let mut ours = Ours::default();
        ours.made.insert(
            "gcc".into(),
            Some(ToolchainFingerprint {
                program: "gcc".into(),
                digest: "a".repeat(64),
                version: "12.2.0".into(),
                target: "x86_64-linux-gnu".into(),
                driver: "/usr/bin/gcc".into(),
            }),
        );
        let node = |name: &str, digest: &str| LoadReport {
            node: name.into(),
            toolchains: vec![ToolchainFingerprint {
                program: "gcc".into(),
                digest: digest.repeat(64),
                version: "12.2.0".into(),
                target: "x86_64-linux-gnu".into(),
                driver: "/usr/bin/gcc".into(),
            }],
            properties: [("arch", "x86_64"), ("label.gpu", "")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ..LoadReport::default()
        };
        let text = section(&[node("n1", "a"), node("n3", "b")], &mut ours);
        assert!(
            text.contains("n1             gcc        12.2.0 x86_64-linux-gnu aaaaaaaaaaaa"),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("n1 ") && l.ends_with("same as here")),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("n3 ") && l.contains("DIFFERS: here 12.2.0")),
            "{text}"
        );
        assert!(
            text.contains("n3             arch=x86_64 labels: gpu"),
            "{text}"
        );
        let (toolchains, properties) = node_json(&node("n3", "b"), &mut ours);
        assert_eq!(toolchains["gcc"]["same_as_client"], false);
        assert_eq!(properties["label.gpu"], "");
    }
}
