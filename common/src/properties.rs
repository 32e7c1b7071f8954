//! Node properties and the requirements jobs may make of them.
//!
//! An executor reports its properties as a map: `os`, `arch`, `libc`,
//! `libc_version`, `cpu_model`, `cpu_flags` (space-separated), `cores`,
//! `mem_mib`, and each of its labels as `label.KEY`. A job may require:
//!
//! - `KEY=VALUE`: the property has that value (`arch=aarch64`);
//! - `KEY>=NUMBER`: the property is a whole number at least that
//!   (`mem_mib>=16000`);
//! - `label:NAME` or `label:NAME=VALUE`: the node has that label (with
//!   that value);
//! - `cpu:FLAG`: the processor has that feature flag (`cpu:avx2`).

use std::collections::HashMap;

/// A node's properties, as the load report carries them.
pub type Properties = HashMap<String, String>;

/// The key prefix of labels.
pub const LABEL_PREFIX: &str = "label.";

/// One requirement of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals { key: String, value: String },
    AtLeast { key: String, number: u64 },
    Label { name: String, value: Option<String> },
    CpuFlag(String),
}

/// A requirement that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "requirement `{0}`: use KEY=VALUE, KEY>=NUMBER, label:NAME[=VALUE] or cpu:FLAG \
     (keys: os, arch, libc, libc_version, cpu_model, cores, mem_mib)"
)]
pub struct BadRequirement(pub String);

impl std::str::FromStr for Requirement {
    type Err = BadRequirement;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadRequirement(text.to_owned());
        let word = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        };
        if let Some(label) = text.strip_prefix("label:") {
            let (name, value) = match label.split_once('=') {
                Some((name, value)) => (name, Some(value.to_owned())),
                None => (label, None),
            };
            return word(name)
                .then(|| Requirement::Label {
                    name: name.to_owned(),
                    value,
                })
                .ok_or_else(bad);
        }
        if let Some(flag) = text.strip_prefix("cpu:") {
            return word(flag)
                .then(|| Requirement::CpuFlag(flag.to_owned()))
                .ok_or_else(bad);
        }
        if let Some((key, number)) = text.split_once(">=") {
            let number = number.trim().parse().map_err(|_| bad())?;
            return word(key)
                .then(|| Requirement::AtLeast {
                    key: key.to_owned(),
                    number,
                })
                .ok_or_else(bad);
        }
        match text.split_once('=') {
            Some((key, value)) if word(key) && !value.is_empty() => Ok(Requirement::Equals {
                key: key.to_owned(),
                value: value.to_owned(),
            }),
            _ => Err(bad()),
        }
    }
}

impl Requirement {
    /// Whether a node with `properties` meets this.
    pub fn met_by(&self, properties: &Properties) -> bool {
        match self {
            Requirement::Equals { key, value } => properties.get(key) == Some(value),
            Requirement::AtLeast { key, number } => properties
                .get(key)
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|have| have >= *number),
            Requirement::Label { name, value } => {
                match properties.get(&format!("{LABEL_PREFIX}{name}")) {
                    Some(have) => value.as_ref().is_none_or(|want| want == have),
                    None => false,
                }
            }
            Requirement::CpuFlag(flag) => properties
                .get("cpu_flags")
                .is_some_and(|flags| flags.split_whitespace().any(|f| f == flag)),
        }
    }
}

/// Parses every requirement, or says which one is wrong.
pub fn parse_all(texts: &[String]) -> Result<Vec<Requirement>, BadRequirement> {
    texts.iter().map(|t| t.parse()).collect()
}

/// The requirements of `texts` that `properties` does not meet, as
/// written; a requirement that does not parse is unmet.
pub fn unmet<'a>(texts: &'a [String], properties: &Properties) -> Vec<&'a str> {
    texts
        .iter()
        .filter(|t| !t.parse::<Requirement>().is_ok_and(|r| r.met_by(properties)))
        .map(String::as_str)
        .collect()
}

/// This machine's properties, with `labels` ("KEY=VALUE" or "KEY").
pub fn this_machine(labels: &[String]) -> Properties {
    let mut properties = Properties::new();
    let mut put = |key: &str, value: String| {
        properties.insert(key.to_owned(), value);
    };
    put("os", std::env::consts::OS.to_owned());
    put("arch", std::env::consts::ARCH.to_owned());
    let (libc, version) = libc_and_version();
    put("libc", libc.to_owned());
    if let Some(version) = version {
        put("libc_version", version);
    }
    put("cores", crate::host::cpu_count().to_string());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
    };
    if let Some(model) = field("model name") {
        put("cpu_model", model);
    }
    if let Some(flags) = field("flags").or_else(|| field("Features")) {
        put("cpu_flags", flags);
    }
    if let Some(kib) = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| mem_total_kib(&m))
    {
        put("mem_mib", (kib / 1024).to_string());
    }
    for label in labels {
        let (key, value) = label.split_once('=').unwrap_or((label, ""));
        put(&format!("{LABEL_PREFIX}{key}"), value.to_owned());
    }
    properties
}

/// A label as `--label` takes it: `KEY=VALUE` or `KEY`.
pub fn check_label(label: &str) -> Result<(), String> {
    let key = label.split_once('=').map_or(label, |(k, _)| k);
    let good = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if good {
        Ok(())
    } else {
        Err(format!(
            "label `{label}`: use KEY=VALUE or KEY, the key of letters, digits, `_`, `-`, `.`"
        ))
    }
}

fn mem_total_kib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn libc_and_version() -> (&'static str, Option<String>) {
    // SAFETY: glibc returns a pointer to a static, NUL-terminated string.
    let version = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) };
    ("glibc", Some(version.to_string_lossy().into_owned()))
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn libc_and_version() -> (&'static str, Option<String>) {
    if cfg!(target_env = "musl") {
        ("musl", None)
    } else {
        (std::env::consts::OS, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props() -> Properties {
        this_machine(&["gpu".into(), "rack=r7".into()])
    }

    #[test]
    fn requirements_parse_and_match_this_machine() {
        let p = props();
        let arch = std::env::consts::ARCH;
        for yes in [
            format!("arch={arch}"),
            "os=linux".into(),
            "label:gpu".into(),
            "label:rack=r7".into(),
            "cores>=1".into(),
            "mem_mib>=1".into(),
            "libc=glibc".into(),
        ] {
            let r: Requirement = yes.parse().unwrap();
            assert!(r.met_by(&p), "{yes}: {p:?}");
        }
        for no in [
            "arch=sparc",
            "label:wine",
            "label:rack=r8",
            "cores>=100000",
            "cpu:nosuchflag",
        ] {
            let r: Requirement = no.parse().unwrap();
            assert!(!r.met_by(&p), "{no}");
        }
        let texts = vec!["os=linux".to_owned(), "label:wine".to_owned()];
        assert_eq!(unmet(&texts, &p), ["label:wine"]);
    }

    #[test]
    fn a_bad_requirement_says_what_is_allowed() {
        for bad in [
            "arch",
            "=x",
            "arch=",
            "label:",
            "cpu:",
            "mem_mib>=lots",
            "a b=c",
        ] {
            let err = bad.parse::<Requirement>().unwrap_err();
            assert!(err.to_string().contains("use KEY=VALUE"), "{bad}: {err}");
        }
        assert!(check_label("gpu").is_ok() && check_label("rack=r7").is_ok());
        assert!(check_label("=x").is_err() && check_label("a b").is_err());
    }
}
