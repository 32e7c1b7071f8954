//! `mexec-gatekeeper` settings: flags and `MEXEC_*` variables override the
//! TOML file, which overrides the defaults.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use mexec_common::config_file::{self, ConfigFileError};
use mexec_common::telemetry::LogFormat;
use mexec_common::tls::{Tls, TlsError, TlsPaths};
use mexec_common::token::{Token, TokenError};
use serde::Deserialize;

use super::cluster::Limits;

/// The port a gatekeeper listens on when none is given.
pub const DEFAULT_PORT: u16 = 7461;

/// Command-line flags of `mexec-gatekeeper`.
#[derive(Debug, Parser, Default)]
#[command(
    name = "mexec-gatekeeper",
    version,
    about = "mexec gatekeeper: cluster membership, fair queueing, placement leases, relayed jobs"
)]
pub struct Flags {
    /// TOML config file (see deploy/mexec-gatekeeper.toml).
    #[arg(long, env = "MEXEC_GATEKEEPER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address and port to listen on [default: 127.0.0.1:7461].
    #[arg(long, env = "MEXEC_GATEKEEPER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// File holding the cluster's shared token.
    #[arg(long, env = "MEXEC_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Listen beyond loopback without authentication.
    #[arg(long)]
    pub insecure: bool,
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
    /// Log format: text or json [default: text].
    #[arg(long, env = "MEXEC_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// The cluster CA certificate (PEM); with --tls-cert and --tls-key,
    /// turns on mutual TLS.
    #[arg(long, env = "MEXEC_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// The gatekeeper's node certificate (PEM), from `mexec-cert node`.
    #[arg(long, env = "MEXEC_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The gatekeeper's private key (PEM).
    #[arg(long, env = "MEXEC_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Users who may submit, comma-separated [default: all].
    #[arg(long, env = "MEXEC_ALLOWED_USERS", value_delimiter = ',')]
    pub allowed_users: Vec<String>,
    /// Seconds a caller has to send a stream's first message [default: 10].
    #[arg(long, env = "MEXEC_START_TIMEOUT_SECS")]
    pub start_timeout_secs: Option<u64>,
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

/// The TOML config file of `mexec-gatekeeper`. Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Address and port to listen on. Default: "127.0.0.1:7461".
    pub listen: Option<SocketAddr>,
    /// File holding the shared token. Default: none (loopback only).
    pub token_file: Option<PathBuf>,
    /// Listen beyond loopback without authentication. Default: false.
    pub insecure: Option<bool>,
    /// Requests that may wait for a slot. Default: 10000.
    pub max_queued: Option<u32>,
    /// The most slots one user may hold at once; 0 is no limit. Default: 0.
    pub default_user_limit: Option<u32>,
    /// Per-user limits, `{ alice = 16 }`. Default: none.
    pub user_limits: Option<HashMap<String, u32>>,
    /// Seconds for past slot use to count half as much. Default: 2.
    pub usage_half_life_secs: Option<f64>,
    /// "text" or "json". Default: "text".
    pub log_format: Option<LogFormat>,
    /// Cluster CA certificate for mutual TLS. Default: none (no TLS).
    pub tls_ca: Option<PathBuf>,
    /// The gatekeeper's certificate. Default: none.
    pub tls_cert: Option<PathBuf>,
    /// The gatekeeper's private key. Default: none.
    pub tls_key: Option<PathBuf>,
    /// Users who may submit. Default: all.
    pub allowed_users: Option<Vec<String>>,
    /// Seconds a caller has to send a stream's first message. Default: 10.
    pub start_timeout_secs: Option<u64>,
}

/// Everything a gatekeeper needs, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub token: Option<Token>,
    pub limits: Limits,
    pub log_format: LogFormat,
    /// Mutual TLS, when configured.
    pub tls: Option<Tls>,
    /// Users who may submit; `None` admits all.
    pub allowed_users: Option<Vec<String>>,
    /// How long a caller has to send a stream's first message.
    pub start_timeout: std::time::Duration,
}

/// Why the settings were refused.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    ConfigFile(#[from] ConfigFileError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(
        "refusing to listen on {0} without authentication: anyone who can reach it could submit \
         jobs to the cluster. Give --token-file FILE, listen on 127.0.0.1, or pass --insecure"
    )]
    OpenDoor(SocketAddr),
}

impl Settings {
    /// Whether the gatekeeper listens beyond loopback without authentication.
    pub fn is_insecure(&self) -> bool {
        crate::config::open_door(self.listen, self.token.as_ref(), self.tls.as_ref())
    }

    /// Merges flags, the config file and defaults, then checks safety rules.
    pub fn resolve(flags: Flags) -> Result<Settings, SettingsError> {
        let file: FileConfig = config_file::load_or_default(flags.config.as_deref(), None)?;
        let listen = flags
            .listen
            .or(file.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)));
        let token = flags
            .token_file
            .or(file.token_file)
            .map(|path| Token::from_file(&path))
            .transpose()?;
        let tls = TlsPaths {
            ca: flags.tls_ca,
            cert: flags.tls_cert,
            key: flags.tls_key,
        }
        .or(TlsPaths {
            ca: file.tls_ca,
            cert: file.tls_cert,
            key: file.tls_key,
        })
        .load()?;
        let insecure = flags.insecure || file.insecure.unwrap_or(false);
        if crate::config::open_door(listen, token.as_ref(), tls.as_ref()) && !insecure {
            return Err(SettingsError::OpenDoor(listen));
        }
        let mut user_limits = file.user_limits.unwrap_or_default();
        user_limits.extend(flags.user_limits);
        Ok(Settings {
            listen,
            token,
            limits: Limits {
                max_queued: flags.max_queued.or(file.max_queued).unwrap_or(10_000),
                default_user_limit: flags
                    .default_user_limit
                    .or(file.default_user_limit)
                    .unwrap_or(0),
                user_limits,
                usage_half_life: std::time::Duration::from_secs_f64(
                    flags
                        .usage_half_life_secs
                        .or(file.usage_half_life_secs)
                        .unwrap_or(2.0)
                        .max(0.001),
                ),
            },
            log_format: flags.log_format.or(file.log_format).unwrap_or_default(),
            tls,
            start_timeout: std::time::Duration::from_secs(
                flags
                    .start_timeout_secs
                    .or(file.start_timeout_secs)
                    .unwrap_or(10)
                    .max(1),
            ),
            allowed_users: Some(flags.allowed_users)
                .filter(|users| !users.is_empty())
                .or(file.allowed_users),
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
        assert!(s.listen.ip().is_loopback());
        assert_eq!(s.listen.port(), DEFAULT_PORT);
        assert_eq!(s.limits.max_queued, 10_000);
        assert_eq!(s.limits.user_limits["alice"], 3);
        assert_eq!(
            parse_user_limit("bob"),
            Err("`bob`: expected USER=N".into())
        );
    }

    #[test]
    fn open_listen_needs_a_token_or_insecure() {
        let err = Settings::resolve(Flags {
            listen: Some("0.0.0.0:7461".parse().unwrap()),
            ..Flags::default()
        })
        .unwrap_err();
        assert!(matches!(err, SettingsError::OpenDoor(_)));
    }
}
