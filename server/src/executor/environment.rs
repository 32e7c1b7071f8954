//! The environment a job starts with: the client's, complete, or (for a
//! client on another operating system) the node's defaults with what the
//! client named laid over them.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use mexec_proto::v1::JobSpec;

use super::account::Account;

/// PATH for jobs that start from the node's environment: the system's
/// programs, and nothing of the daemon's own start-up.
pub const NODE_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The variables `spec` runs with, for a job run as `run_as` (or as the
/// daemon's own account).
pub fn for_job(spec: &JobSpec, run_as: Option<&Account>) -> Vec<(OsString, OsString)> {
    let named = spec
        .env
        .iter()
        .map(|v| (bytes_os(&v.name), bytes_os(&v.value)));
    if !spec.node_environment {
        return named.collect();
    }
    let mut env: BTreeMap<OsString, OsString> = node_defaults(run_as).into_iter().collect();
    env.extend(named);
    env.into_iter().collect()
}

/// The job's PATH, as `for_job` would give it.
pub fn job_path(spec: &JobSpec) -> Option<OsString> {
    let sent = spec
        .env
        .iter()
        .rev()
        .find(|v| v.name.as_ref() == b"PATH")
        .map(|v| bytes_os(&v.value));
    match sent {
        Some(path) => Some(path),
        None if spec.node_environment => Some(NODE_PATH.into()),
        None => None,
    }
}

fn node_defaults(run_as: Option<&Account>) -> Vec<(OsString, OsString)> {
    let mut env = vec![
        ("PATH".into(), NODE_PATH.into()),
        ("SHELL".into(), "/bin/sh".into()),
    ];
    match run_as {
        Some(account) => {
            env.push(("HOME".into(), account.home.clone().into_os_string()));
            env.push(("USER".into(), account.name.clone().into()));
            env.push(("LOGNAME".into(), account.name.clone().into()));
        }
        // Not root: jobs run as the daemon's own account.
        None => {
            for name in ["HOME", "USER", "LOGNAME"] {
                if let Some(value) = std::env::var_os(name) {
                    env.push((name.into(), value));
                }
            }
        }
    }
    env
}

fn bytes_os(bytes: &[u8]) -> OsString {
    OsStr::from_bytes(bytes).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mexec_proto::v1::EnvVar;

    fn var(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.as_bytes().to_vec().into(),
            value: value.as_bytes().to_vec().into(),
        }
    }

    fn lookup<'a>(env: &'a [(OsString, OsString)], name: &str) -> Option<&'a OsStr> {
        env.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_os_str())
    }

    #[test]
    fn a_complete_environment_is_used_as_sent() {
        let spec = JobSpec {
            env: vec![var("PATH", "/opt/x"), var("A", "1")],
            ..JobSpec::default()
        };
        let env = for_job(&spec, None);
        assert_eq!(env.len(), 2);
        assert_eq!(lookup(&env, "PATH"), Some(OsStr::new("/opt/x")));
        assert_eq!(job_path(&spec), Some("/opt/x".into()));
        assert_eq!(job_path(&JobSpec::default()), None);
    }

    #[test]
    fn a_foreign_client_gets_the_node_defaults_under_its_variables() {
        let account = Account {
            name: "builder".into(),
            uid: 1000,
            gid: 1000,
            home: "/home/builder".into(),
        };
        let spec = JobSpec {
            env: vec![var("LANG", "C.UTF-8"), var("HOME", "/tmp/h")],
            node_environment: true,
            ..JobSpec::default()
        };
        let env = for_job(&spec, Some(&account));
        assert_eq!(lookup(&env, "PATH"), Some(OsStr::new(NODE_PATH)));
        assert_eq!(lookup(&env, "USER"), Some(OsStr::new("builder")));
        assert_eq!(lookup(&env, "LANG"), Some(OsStr::new("C.UTF-8")));
        // What the client named wins over the defaults.
        assert_eq!(lookup(&env, "HOME"), Some(OsStr::new("/tmp/h")));
        assert_eq!(env.iter().filter(|(k, _)| k == "HOME").count(), 1);
        assert_eq!(job_path(&spec), Some(NODE_PATH.into()));
    }
}
