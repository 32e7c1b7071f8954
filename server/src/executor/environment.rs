//! The environment a job starts with: the client's, complete, or (for a
//! client on another operating system) the node's defaults with what the
//! client named laid over them; and always the mark of a farm job.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use mexec_common::farm_job;
use mexec_proto::v1::JobSpec;

use super::account::Account;

/// PATH for jobs that start from the node's environment: the system's
/// programs, and nothing of the daemon's own start-up.
pub const NODE_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The variables `spec` runs with, for a job run as `run_as` (or as the
/// daemon's own account). A job run as its `submitter`'s own account gets
/// that account's HOME, USER and LOGNAME, as a login would. Every job
/// gets `MEXEC_FARM_JOB`, its id, so a `mexec` it starts runs here.
pub fn for_job(
    spec: &JobSpec,
    run_as: Option<&Account>,
    submitter: bool,
) -> Vec<(OsString, OsString)> {
    let named = spec
        .env
        .iter()
        .map(|v| (bytes_os(&v.name), bytes_os(&v.value)));
    let mut env: Vec<(OsString, OsString)> = if spec.node_environment {
        let mut merged: BTreeMap<OsString, OsString> = node_defaults(run_as).into_iter().collect();
        merged.extend(named);
        merged.into_iter().collect()
    } else {
        named.collect()
    };
    if let (Some(account), true) = (run_as, submitter) {
        env.retain(|(name, _)| !LOGIN_NAMES.iter().any(|login| name == login));
        env.extend(login_variables(account));
    }
    env.retain(|(name, _)| name != farm_job::VARIABLE);
    env.push((farm_job::VARIABLE.into(), spec.job_id.clone().into()));
    env
}

/// What a login sets from the account.
const LOGIN_NAMES: [&str; 3] = ["HOME", "USER", "LOGNAME"];

fn login_variables(account: &Account) -> [(OsString, OsString); 3] {
    [
        ("HOME".into(), account.home.clone().into_os_string()),
        ("USER".into(), account.name.clone().into()),
        ("LOGNAME".into(), account.name.clone().into()),
    ]
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

/// Variables dropped from a job's environment under a command policy,
/// because each makes an allowed program load or run code of the user's
/// choosing; an entry ending in `_` is a prefix.
pub const CODE_LOADING: &[&str] = &[
    // The dynamic loader (glibc, musl): libraries preloaded or searched
    // first, and audit modules, all run inside the allowed program.
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "LD_AUDIT",
    "LD_ORIGIN_PATH",
    "LD_PROFILE",
    // glibc tunables (the loader parses them; CVE-2023-4911), iconv
    // modules (gcc's -finput-charset loads them) and locale files.
    "GLIBC_TUNABLES",
    "GCONV_PATH",
    "LOCPATH",
    // Where gcc looks for cc1, as, ld, collect2 and the LTO plugin.
    "GCC_EXEC_PREFIX",
    "COMPILER_PATH",
    // Libraries and start files the driver links, and collect2's state.
    "LIBRARY_PATH",
    "COLLECT_",
    // Options read from the environment, past the argument check: gcc
    // reruns itself with these; clang and clang-cl add these.
    "GCC_COMPARE_DEBUG",
    "CCC_OVERRIDE_OPTIONS",
    "CL",
    "_CL_",
    // ccache runs this before the compiler, or another compiler.
    "CCACHE_PREFIX",
    "CCACHE_COMPILER",
    "CCACHE_PATH",
    // A shell (a wrapper script among the allowed programs) sources these,
    // and bash imports functions from these.
    "BASH_ENV",
    "ENV",
    "BASH_FUNC_",
];

/// Whether `name` is one of `CODE_LOADING`.
pub fn loads_code(name: &[u8]) -> bool {
    CODE_LOADING.iter().any(|entry| {
        let entry = entry.as_bytes();
        if entry.ends_with(b"_") {
            name.starts_with(entry)
        } else {
            name == entry
        }
    })
}

/// Under a command policy: the variables of `CODE_LOADING` dropped, and
/// PATH the node's, because a compiler driver finds `as` and `ld` (and gcc
/// its own installation) through PATH, which the policy does not check.
pub fn under_policy(spec: &mut JobSpec) {
    spec.env
        .retain(|v| !loads_code(&v.name) && v.name.as_ref() != b"PATH");
    spec.env.push(mexec_proto::v1::EnvVar {
        name: "PATH".into(),
        value: NODE_PATH.into(),
    });
}

fn node_defaults(run_as: Option<&Account>) -> Vec<(OsString, OsString)> {
    let mut env = vec![
        ("PATH".into(), NODE_PATH.into()),
        ("SHELL".into(), "/bin/sh".into()),
    ];
    match run_as {
        Some(account) => env.extend(login_variables(account)),
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
        let env = for_job(&spec, None, false);
        assert_eq!(env.len(), 3);
        assert_eq!(lookup(&env, "PATH"), Some(OsStr::new("/opt/x")));
        assert_eq!(job_path(&spec), Some("/opt/x".into()));
        assert_eq!(job_path(&JobSpec::default()), None);
    }

    #[test]
    fn every_job_is_marked_with_its_own_id_over_any_mark_sent() {
        let spec = JobSpec {
            job_id: "outer-7".into(),
            env: vec![var(farm_job::VARIABLE, "planted"), var("A", "1")],
            ..JobSpec::default()
        };
        for node_environment in [false, true] {
            let spec = JobSpec {
                node_environment,
                ..spec.clone()
            };
            let env = for_job(&spec, None, false);
            assert_eq!(farm_job::outer_job(&env), Some(OsStr::new("outer-7")));
            let marks = env.iter().filter(|(k, _)| k == farm_job::VARIABLE);
            assert_eq!(marks.count(), 1);
        }
    }

    #[test]
    fn a_foreign_client_gets_the_node_defaults_under_its_variables() {
        let account = Account {
            name: "builder".into(),
            uid: 1000,
            gid: 1000,
            home: "/home/builder".into(),
            groups: vec![1000],
        };
        let spec = JobSpec {
            env: vec![var("LANG", "C.UTF-8"), var("HOME", "/tmp/h")],
            node_environment: true,
            ..JobSpec::default()
        };
        let env = for_job(&spec, Some(&account), false);
        assert_eq!(lookup(&env, "PATH"), Some(OsStr::new(NODE_PATH)));
        assert_eq!(lookup(&env, "USER"), Some(OsStr::new("builder")));
        assert_eq!(lookup(&env, "LANG"), Some(OsStr::new("C.UTF-8")));
        // What the client named wins over the defaults.
        assert_eq!(lookup(&env, "HOME"), Some(OsStr::new("/tmp/h")));
        assert_eq!(env.iter().filter(|(k, _)| k == "HOME").count(), 1);
        assert_eq!(job_path(&spec), Some(NODE_PATH.into()));
        // Run as the submitter, the account's own values win.
        let env = for_job(&spec, Some(&account), true);
        assert_eq!(lookup(&env, "HOME"), Some(OsStr::new("/home/builder")));
        assert_eq!(env.iter().filter(|(k, _)| k == "HOME").count(), 1);
        assert_eq!(lookup(&env, "LOGNAME"), Some(OsStr::new("builder")));
    }

    #[test]
    fn under_a_policy_code_loading_variables_go_and_path_is_the_nodes() {
        let mut spec = JobSpec {
            env: vec![
                var("LD_PRELOAD", "/tmp/evil.so"),
                var("LD_LIBRARY_PATH", "/tmp"),
                var("GCC_EXEC_PREFIX", "/tmp/evil/"),
                var("COMPILER_PATH", "/tmp/evil"),
                var("COLLECT_GCC", "/tmp/evil/gcc"),
                var("BASH_FUNC_ls%%", "() { evil; }"),
                var("PATH", "/tmp/evil:/usr/bin"),
                var("LANG", "C.UTF-8"),
                var("LD_RUN_PATH", "/opt/lib"),
            ],
            ..JobSpec::default()
        };
        under_policy(&mut spec);
        let env = for_job(&spec, None, false);
        let names: Vec<_> = env.iter().map(|(k, _)| k.to_string_lossy()).collect();
        assert_eq!(names, ["LANG", "LD_RUN_PATH", "PATH", farm_job::VARIABLE]);
        assert_eq!(lookup(&env, "PATH"), Some(OsStr::new(NODE_PATH)));
    }
}
