//! `mexec-gatekeeper` settings: flags and `MEXEC_*` variables override the
//! TOML file, which overrides the defaults. The options every daemon takes
//! come from `daemon` (flattened into the flags and the file); the
//! gatekeeper adds its queue and fair-share limits.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use mexec_common::config_file::{self, ConfigFileError};
use serde::Deserialize;

use super::cluster::Limits;
use crate::daemon::{
    DaemonFile, DaemonFlags, DaemonSettings, DaemonSettingsError, NoOtherKeys, Role,
};
use crate::web::{WebError, WebFile, WebFlags, WebListen};

/// The port a gatekeeper listens on when none is given.
pub const DEFAULT_PORT: u16 = 7461;

/// What sets `mexec-gatekeeper` apart among the daemons.
const ROLE: Role = Role {
    config_env: "MEXEC_GATEKEEPER_CONFIG",
    config_example: "deploy/mexec-gatekeeper.toml",
    listen_env: "MEXEC_GATEKEEPER_LISTEN",
    default_port: DEFAULT_PORT,
    exposes: "submit jobs to the cluster",
};

/// Command-line flags of `mexec-gatekeeper`.
#[derive(Debug, Parser, Default)]
#[command(
    name = "mexec-gatekeeper",
    version,
    about = "mexec gatekeeper: cluster membership, fair queueing, placement leases, relayed jobs",
    mut_arg("config", |arg| ROLE.config_flag(arg)),
    mut_arg("listen", |arg| ROLE.listen_flag(arg)),
)]
pub struct Flags {
    #[command(flatten)]
    pub daemon: DaemonFlags,
    /// Requests that may wait for a slot before new ones are refused [default: 10000].
    #[arg(long, env = "MEXEC_GATEKEEPER_MAX_QUEUED")]
    pub max_queued: Option<u32>,
    /// The most slots one user may hold at once [default: no limit].
    #[arg(long)]
    pub default_user_limit: Option<u32>,
    /// Seconds for past slot use to count half as much in fair sharing [default: 2].
    #[arg(long)]
    pub usage_half_life_secs: Option<f64>,
    /// A per-user limit, USER=N (repeatable).
    #[arg(long = "user-limit", value_parser = parse_user_limit)]
    pub user_limits: Vec<(String, u32)>,
    #[command(flatten)]
    pub web: WebFlags,
    /// Serve the live dashboard and /metrics at http://ADDR:PORT/ [default: off].
    #[arg(long, env = "MEXEC_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// The accounting database (SQLite), kept across restarts [default: in
    /// memory, lost at a restart].
    #[arg(long, env = "MEXEC_ACCOUNTING_DB")]
    pub accounting_db: Option<PathBuf>,
}

fn parse_user_limit(text: &str) -> Result<(String, u32), String> {
    let (user, limit) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}`: expected USER=N"))?;
    let limit = limit
        .parse()
        .map_err(|_| format!("`{text}`: the limit is not a number"))?;
    Ok((user.to_owned(), limit))
}

/// The TOML config file of `mexec-gatekeeper`. Every field is optional;
/// the shared keys (listen, token_file, insecure, tls_ca, tls_cert,
/// tls_key, allowed_users, log_format, start_timeout_secs) are in `daemon`.
#[derive(Debug, Default, Deserialize)]
pub struct FileConfig {
    #[serde(flatten)]
    pub daemon: DaemonFile,
    /// Requests that may wait for a slot. Default: 10000.
    pub max_queued: Option<u32>,
    /// The most slots one user may hold at once; 0 is no limit. Default: 0.
    pub default_user_limit: Option<u32>,
    /// Per-user limits, `{ alice = 16 }`. Default: none.
    pub user_limits: Option<HashMap<String, u32>>,
    /// Seconds for past slot use to count half as much. Default: 2.
    pub usage_half_life_secs: Option<f64>,
    #[serde(flatten)]
    pub web: WebFile,
    /// Where to serve the dashboard and `/metrics`. Default: nowhere.
    pub http_listen: Option<SocketAddr>,
    /// The accounting database. Default: in memory.
    pub accounting_db: Option<PathBuf>,
    /// Any other key is refused.
    #[serde(flatten)]
    _other: NoOtherKeys,
}

/// Everything a gatekeeper needs, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    /// What every daemon has: listen address, authentication, log format.
    pub daemon: DaemonSettings,
    /// The queue bound and the fair-share limits.
    pub limits: Limits,
    /// Where to serve `/metrics` alone, if anywhere.
    pub metrics: Option<WebListen>,
    /// Where to serve the dashboard and `/metrics`, if anywhere.
    pub http: Option<WebListen>,
    /// The accounting database; `None` keeps it in memory.
    pub accounting_db: Option<PathBuf>,
}

/// Why the settings were refused.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    ConfigFile(#[from] ConfigFileError),
    #[error(transparent)]
    Daemon(#[from] DaemonSettingsError),
    #[error(transparent)]
    Web(#[from] WebError),
}

impl Settings {
    /// Merges flags, the config file and defaults, then checks safety rules.
    pub fn resolve(flags: Flags) -> Result<Settings, SettingsError> {
        let file: FileConfig = config_file::load_or_default(flags.daemon.config.as_deref(), None)?;
        let daemon = DaemonSettings::resolve(flags.daemon, file.daemon, ROLE)?;
        let insecure = flags.web.insecure(&file.web);
        let metrics = flags.web.metrics_listen.or(file.web.metrics_listen);
        let metrics = WebListen::resolve(metrics, &daemon, insecure)?;
        let http = WebListen::resolve(flags.http_listen.or(file.http_listen), &daemon, insecure)?;
        let mut user_limits = file.user_limits.unwrap_or_default();
        user_limits.extend(flags.user_limits);
        let half_life = flags
            .usage_half_life_secs
            .or(file.usage_half_life_secs)
            .unwrap_or(2.0);
        Ok(Settings {
            daemon,
            metrics,
            http,
            accounting_db: flags.accounting_db.or(file.accounting_db),
            limits: Limits {
                max_queued: flags.max_queued.or(file.max_queued).unwrap_or(10_000),
                default_user_limit: flags
                    .default_user_limit
                    .or(file.default_user_limit)
                    .unwrap_or(0),
                user_limits,
                usage_half_life: std::time::Duration::from_secs_f64(half_life.max(0.001)),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_user_limits() {
        let s = Settings::resolve(Flags {
            user_limits: vec![("alice".into(), 3)],
            ..Flags::default()
        })
        .unwrap();
        assert!(s.daemon.listen.ip().is_loopback());
        assert_eq!(s.daemon.listen.port(), DEFAULT_PORT);
        assert_eq!(s.limits.max_queued, 10_000);
        assert_eq!(s.limits.user_limits["alice"], 3);
        assert_eq!(
            parse_user_limit("bob"),
            Err("`bob`: expected USER=N".into())
        );
    }

    #[test]
    fn open_listen_needs_a_token_or_insecure() {
        let mut flags = Flags::default();
        flags.daemon.listen = Some("0.0.0.0:7461".parse().unwrap());
        let err = Settings::resolve(flags).unwrap_err();
        assert!(matches!(
            err,
            SettingsError::Daemon(DaemonSettingsError::OpenDoor { .. })
        ));
        assert!(
            err.to_string().contains("could submit jobs to the cluster"),
            "{err}"
        );
    }

    /// The flags, variables and keys are an interface: scripts and unit
    /// files name them. This holds them to the README's table.
    #[test]
    fn every_flag_variable_and_key_keeps_its_name() {
        use clap::CommandFactory;
        crate::daemon::assert_flags(
            Flags::command(),
            &[
                "config MEXEC_GATEKEEPER_CONFIG",
                "listen MEXEC_GATEKEEPER_LISTEN",
                "token-file MEXEC_TOKEN_FILE",
                "insecure",
                "max-queued MEXEC_GATEKEEPER_MAX_QUEUED",
                "default-user-limit",
                "usage-half-life-secs",
                "user-limit",
                "log-format MEXEC_LOG_FORMAT",
                "tls-ca MEXEC_TLS_CA",
                "tls-cert MEXEC_TLS_CERT",
                "tls-key MEXEC_TLS_KEY",
                "allowed-users MEXEC_ALLOWED_USERS",
                "start-timeout-secs MEXEC_START_TIMEOUT_SECS",
                "munge MEXEC_MUNGE",
                "munge-socket MEXEC_MUNGE_SOCKET",
                "relay-from MEXEC_RELAY_FROM",
                "metrics-listen MEXEC_METRICS_LISTEN",
                "http-insecure",
                "http-listen MEXEC_HTTP_LISTEN",
                "accounting-db MEXEC_ACCOUNTING_DB",
            ],
        );

        let every_key = "listen = \"127.0.0.1:1\"\ntoken_file = \"/t\"\ninsecure = false\n\
            max_queued = 1\ndefault_user_limit = 0\nuser_limits = { a = 1 }\n\
            usage_half_life_secs = 2\nlog_format = \"text\"\ntls_ca = \"/a\"\n\
            tls_cert = \"/b\"\ntls_key = \"/c\"\nallowed_users = [\"a\"]\n\
            start_timeout_secs = 1\nmetrics_listen = \"127.0.0.1:2\"\nhttp_listen = \"127.0.0.1:3\"\n\
            accounting_db = \"/a.db\"\nhttp_insecure = false\n";
        let file: FileConfig =
            config_file::parse(std::path::Path::new("gk.toml"), every_key).unwrap();
        assert_eq!(file.usage_half_life_secs, Some(2.0));
        assert_eq!(file.daemon.allowed_users, Some(vec!["a".to_owned()]));
        let misspelt =
            config_file::parse::<FileConfig>(std::path::Path::new("gk.toml"), "max_queue = 1\n");
        assert!(misspelt.unwrap_err().to_string().contains("max_queue"));
    }
}
