//! The job as the executors see it: paths through the `--map` rules, and
//! the environment a client may send to them.
//!
//! A client on the executors' own operating system sends its whole
//! environment, as the core design says. A client on another one (Windows,
//! or a FreeBSD desktop in front of Linux executors) sends only the
//! variables it is told to (`-e`), plus the few in `PORTABLE_VARIABLES`
//! that mean the same everywhere; the executor starts such a job from its
//! own defaults (PATH, HOME, ...). Its working directory must be mapped:
//! `Z:\src` run as is on Linux would be a job in the wrong place.

use std::ffi::{OsStr, OsString};
use std::path::Path;

use crate::settings::Settings;

/// Variables a client on another operating system sends when it has them:
/// locale, time zone and reproducible-build time, which mean the same on
/// every system.
pub const PORTABLE_VARIABLES: &[&str] = &[
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "TZ",
    "SOURCE_DATE_EPOCH",
];

/// argv, cwd and environment for the executors.
#[derive(Debug, Clone, Default)]
pub struct ExecutorView {
    pub argv: Vec<OsString>,
    /// The executors' path of the working directory.
    pub cwd: OsString,
    pub env: Vec<(OsString, OsString)>,
    /// Whether the executor starts the job from its own defaults, with
    /// `env` laid over them (a client on another operating system).
    pub node_environment: bool,
}

/// Why the job cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    #[error(
        "the working directory {cwd} has no --map rule; a client on {client_os} cannot give \
         executors on {cluster_os} its own paths. Add --map '{cwd}=PATH' (or MEXEC_MAP, or \
         `map` in the config file) with PATH where the executors have this directory"
    )]
    UnmappedCwd {
        cwd: String,
        client_os: String,
        cluster_os: String,
    },
}

impl ExecutorView {
    /// The view of a job for `settings`' executors: `argv` and `cwd`
    /// mapped, the environment chosen from `env` (ours).
    pub fn new(
        argv: &[OsString],
        cwd: &Path,
        env: &[(OsString, OsString)],
        settings: &Settings,
    ) -> Result<ExecutorView, ViewError> {
        let foreign = settings.foreign_client();
        let map = &settings.map;
        let cwd = match map.map_path(cwd.as_os_str()) {
            Some(mapped) => mapped,
            None if foreign => {
                return Err(ViewError::UnmappedCwd {
                    cwd: cwd.display().to_string(),
                    client_os: std::env::consts::OS.to_owned(),
                    cluster_os: settings.cluster_os.clone(),
                })
            }
            None => cwd.as_os_str().to_owned(),
        };
        let argv = if map.is_empty() {
            argv.to_vec()
        } else {
            argv.iter().map(|a| map.map_argument(a)).collect()
        };
        let whole = settings.forward_env || !foreign;
        let mut sent: Vec<(OsString, OsString)> = if whole {
            env.to_vec()
        } else {
            env.iter()
                .filter(|(name, _)| PORTABLE_VARIABLES.iter().any(|p| name == p))
                .cloned()
                .collect()
        };
        for request in &settings.named_env {
            if let Some((name, value)) = named_value(request, env) {
                let value = map.map_path(&value).unwrap_or(value);
                sent.retain(|(n, _)| *n != name);
                sent.push((name, value));
            }
        }
        Ok(ExecutorView {
            argv,
            cwd,
            env: sent,
            node_environment: !whole,
        })
    }
}

/// `NAME=VALUE` as given, or `NAME` with our value (none when we have no
/// such variable: then the job does not get it, as with `env`).
fn named_value(request: &OsStr, env: &[(OsString, OsString)]) -> Option<(OsString, OsString)> {
    let text = request.to_string_lossy();
    if let Some((name, value)) = text.split_once('=') {
        return Some((name.into(), value.into()));
    }
    env.iter()
        .rev()
        .find(|(name, _)| {
            // Windows names are not case-sensitive (`Path`, `PATH`).
            if cfg!(windows) {
                name.eq_ignore_ascii_case(request)
            } else {
                name == request
            }
        })
        .map(|(_, value)| (request.to_owned(), value.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path_map::PathMap;

    fn os(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    fn settings(cluster_os: &str, map: &[&str], named: &[&str]) -> Settings {
        Settings {
            cluster_os: cluster_os.to_owned(),
            map: PathMap::new(map.iter().map(|r| r.parse().unwrap()).collect()),
            named_env: os(named),
            ..Settings::default()
        }
    }

    const HERE: &str = std::env::consts::OS;
    const ELSEWHERE: &str = "plan9";

    #[test]
    fn a_client_on_the_executors_system_sends_everything_as_is() {
        let ours = env(&[("PATH", "/usr/bin"), ("CFLAGS", "-O2")]);
        let view = ExecutorView::new(
            &os(&["cc", "-c", "/src/a.c"]),
            Path::new("/src"),
            &ours,
            &settings(HERE, &[], &[]),
        )
        .unwrap();
        assert_eq!(view.cwd, "/src");
        assert_eq!(view.argv, os(&["cc", "-c", "/src/a.c"]));
        assert_eq!(view.env, ours);
        assert!(!view.node_environment);
    }

    #[test]
    fn without_cluster_os_the_executors_are_linux() {
        assert_eq!(
            Settings::default().foreign_client(),
            std::env::consts::OS != "linux"
        );
        assert!(!settings("Linux", &[], &[]).foreign_client() || HERE != "linux");
    }

    #[test]
    fn a_foreign_client_sends_only_portable_and_named_variables() {
        let ours = env(&[
            ("PATH", r"C:\Windows"),
            ("LANG", "de_DE.UTF-8"),
            ("CFLAGS", "-O2"),
            ("SECRET", "x"),
        ]);
        let view = ExecutorView::new(
            &os(&["cc"]),
            Path::new("/w/proj"),
            &ours,
            &settings(
                ELSEWHERE,
                &["/w=/export"],
                &["CFLAGS", "OUT=/w/out", "UNSET"],
            ),
        )
        .unwrap();
        assert!(view.node_environment);
        assert_eq!(
            view.env,
            env(&[
                ("LANG", "de_DE.UTF-8"),
                ("CFLAGS", "-O2"),
                ("OUT", "/export/out")
            ])
        );
        assert_eq!(view.cwd, "/export/proj");
    }

    #[test]
    fn forward_env_sends_everything_from_a_foreign_client() {
        let ours = env(&[("PATH", "/opt/bin"), ("CFLAGS", "-O2")]);
        let mut s = settings(ELSEWHERE, &["/w=/export"], &["CFLAGS=-O0"]);
        s.forward_env = true;
        let view = ExecutorView::new(&os(&["cc"]), Path::new("/w"), &ours, &s).unwrap();
        assert!(!view.node_environment);
        assert_eq!(view.env, env(&[("PATH", "/opt/bin"), ("CFLAGS", "-O0")]));
    }

    #[test]
    fn an_unmapped_cwd_from_a_foreign_client_is_an_error() {
        let err = ExecutorView::new(
            &os(&["make"]),
            Path::new("/home/me/proj"),
            &[],
            &settings(ELSEWHERE, &["/w=/export"], &[]),
        )
        .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("/home/me/proj"), "{message}");
        assert!(message.contains("--map"), "{message}");
        // The same directory from a client on the executors' system is fine.
        assert!(ExecutorView::new(
            &os(&["make"]),
            Path::new("/home/me/proj"),
            &[],
            &settings(HERE, &["/w=/export"], &[]),
        )
        .is_ok());
    }

    #[test]
    fn mapped_arguments_are_rewritten() {
        let view = ExecutorView::new(
            &os(&["/w/tools/gen", "-I/w/include", "--out=/w/o", "/elsewhere"]),
            Path::new("/w"),
            &[],
            &settings(HERE, &["/w=/export/w"], &[]),
        )
        .unwrap();
        assert_eq!(
            view.argv,
            os(&[
                "/export/w/tools/gen",
                "-I/export/w/include",
                "--out=/export/w/o",
                "/elsewhere"
            ])
        );
    }
}
