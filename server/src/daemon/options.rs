//! The options every daemon takes, declared once: each role flattens
//! `DaemonFlags` into its flags (clap) and `DaemonFile` into its config
//! file (serde), and `DaemonSettings::resolve` merges them (a flag or
//! variable over the file over the default) and applies the safety rule:
//! no listening beyond loopback without authentication unless `insecure`.
//!
//! `--config` and `--listen` are shared flags whose variables differ by
//! role (`MEXECD_CONFIG` and `MEXEC_LISTEN` for `mexecd`,
//! `MEXEC_GATEKEEPER_CONFIG` and `MEXEC_GATEKEEPER_LISTEN` for the
//! gatekeeper), so each role's `Role` attaches its own with clap's
//! `mut_arg` (see `Role::config_flag`, `Role::listen_flag`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mexec_common::munge::{Munge, MungeError};
use mexec_common::telemetry::LogFormat;
use mexec_common::tls::{Tls, TlsError, TlsPaths};
use mexec_common::token::{Token, TokenError};
use serde::Deserialize;
use tokio::net::TcpListener;

use super::tls_accept::Handshake;
use crate::auth::Access;

/// Command-line flags both daemons take; each but `--insecure` also reads
/// a variable.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DaemonFlags {
    /// TOML config file (its variable and help come from the role).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address and port to listen on (its variable and default come from
    /// the role).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// File holding the cluster's shared token; requests must carry it.
    #[arg(long, env = "MEXEC_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Listen beyond loopback without authentication (anyone who reaches the
    /// port can use the daemon).
    #[arg(long)]
    pub insecure: bool,
    /// The cluster CA certificate (PEM); with --tls-cert and --tls-key,
    /// turns on mutual TLS.
    #[arg(long, env = "MEXEC_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// This daemon's node certificate (PEM), from `mexec-cert node`.
    #[arg(long, env = "MEXEC_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// This daemon's private key (PEM).
    #[arg(long, env = "MEXEC_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Users who may submit jobs here, comma-separated [default: all].
    #[arg(long, env = "MEXEC_ALLOWED_USERS", value_delimiter = ',')]
    pub allowed_users: Vec<String>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "MEXEC_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Seconds a caller has to send a stream's first message (for an
    /// executor, the job) [default: 10].
    #[arg(long, env = "MEXEC_START_TIMEOUT_SECS")]
    pub start_timeout_secs: Option<u64>,
    /// Users prove who they are with MUNGE: requests carry a credential
    /// from the client's munged, decoded here with this node's munged.
    #[arg(long, env = "MEXEC_MUNGE")]
    pub munge: bool,
    /// With --munge: munged's socket [default: libmunge's,
    /// /run/munge/munge.socket.2].
    #[arg(long, env = "MEXEC_MUNGE_SOCKET")]
    pub munge_socket: Option<PathBuf>,
    /// Who may vouch for another user (relay a user's job): node
    /// certificate names, or, with --munge, the account a MUNGE
    /// credential was made by; comma-separated [default: any node
    /// certificate, no MUNGE account; with --run-as-submitter, none].
    #[arg(long, env = "MEXEC_RELAY_FROM", value_delimiter = ',')]
    pub relay_from: Vec<String>,
}

/// The config-file keys both daemons take. Every one is optional.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DaemonFile {
    /// Address and port to listen on. Default: 127.0.0.1 and the role's port.
    pub listen: Option<SocketAddr>,
    /// File holding the shared token. Default: none (loopback only).
    pub token_file: Option<PathBuf>,
    /// Listen beyond loopback without authentication. Default: false.
    pub insecure: Option<bool>,
    /// Cluster CA certificate for mutual TLS. Default: none (no TLS).
    pub tls_ca: Option<PathBuf>,
    /// This daemon's certificate. Default: none.
    pub tls_cert: Option<PathBuf>,
    /// This daemon's private key. Default: none.
    pub tls_key: Option<PathBuf>,
    /// Users who may submit jobs here. Default: all.
    pub allowed_users: Option<Vec<String>>,
    /// "text" or "json". Default: "text".
    pub log_format: Option<LogFormat>,
    /// Seconds a caller has to send a stream's first message. Default: 10.
    pub start_timeout_secs: Option<u64>,
    /// Prove users with MUNGE credentials. Default: false.
    pub munge: Option<bool>,
    /// munged's socket. Default: libmunge's (/run/munge/munge.socket.2).
    pub munge_socket: Option<PathBuf>,
    /// Node certificate names, or MUNGE accounts, that may vouch for
    /// another user. Default: any node certificate (none with
    /// `run_as_submitter`).
    pub relay_from: Option<Vec<String>>,
}

/// Refuses every config key that no struct of the file claimed.
///
/// serde's `deny_unknown_fields` cannot be combined with `flatten`, so a
/// role's file struct ends with `#[serde(flatten)] other: NoOtherKeys`:
/// the flattened structs before it take their keys first, and whatever is
/// left reaches this one, which fails the parse naming the key.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoOtherKeys;

impl<'de> Deserialize<'de> for NoOtherKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let rest = BTreeMap::<String, serde::de::IgnoredAny>::deserialize(deserializer)?;
        match rest.keys().next() {
            None => Ok(NoOtherKeys),
            Some(key) => Err(serde::de::Error::custom(format!("unknown field `{key}`"))),
        }
    }
}

/// What differs between the daemons in the shared options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Role {
    /// The variable that names the config file.
    pub config_env: &'static str,
    /// The example config file under `deploy/`.
    pub config_example: &'static str,
    /// The variable that gives the listen address.
    pub listen_env: &'static str,
    /// The port listened on when none is given (always on 127.0.0.1).
    pub default_port: u16,
    /// What anyone who reaches an unauthenticated daemon could do, to
    /// finish "anyone who can reach it could ...".
    pub exposes: &'static str,
}

impl Role {
    /// `--config` as this role takes it (for `#[command(mut_arg(...))]`).
    pub fn config_flag(self, arg: clap::Arg) -> clap::Arg {
        arg.env(self.config_env)
            .help(format!("TOML config file (see {})", self.config_example))
    }

    /// `--listen` as this role takes it (for `#[command(mut_arg(...))]`).
    pub fn listen_flag(self, arg: clap::Arg) -> clap::Arg {
        arg.env(self.listen_env).help(format!(
            "Address and port to listen on [default: 127.0.0.1:{}]",
            self.default_port
        ))
    }
}

/// The shared options, checked and resolved.
#[derive(Debug, Clone)]
pub struct DaemonSettings {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The shared token, when authentication is on.
    pub token: Option<Token>,
    /// Mutual TLS, when configured.
    pub tls: Option<Tls>,
    /// The TLS handshake of the gRPC port, from `tls`.
    pub handshake: Option<Handshake>,
    /// Users who may submit; `None` admits all.
    pub allowed_users: Option<Vec<String>>,
    /// Log format.
    pub log_format: LogFormat,
    /// How long a caller has to send a stream's first message.
    pub start_timeout: Duration,
    /// This node's munged, when users prove who they are with MUNGE.
    pub munge: Option<Munge>,
    /// Who may vouch for another user; `None`: any node certificate.
    pub relay_from: Option<Vec<String>>,
    role: Role,
}

/// Why the shared options were refused.
#[derive(Debug, thiserror::Error)]
pub enum DaemonSettingsError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot set up TLS: {0}")]
    TlsSetup(String),
    #[error("--munge: {0}")]
    Munge(#[from] MungeError),
    #[error(
        "refusing to listen on {listen} without authentication: anyone who can reach it could \
         {exposes}. Give --token-file FILE (the cluster's shared token), listen on 127.0.0.1, \
         or pass --insecure to accept the risk"
    )]
    OpenDoor {
        listen: SocketAddr,
        exposes: &'static str,
    },
}

/// Why a daemon could not start listening.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {listen}: {source}")]
pub struct BindError {
    listen: SocketAddr,
    source: std::io::Error,
}

impl DaemonSettings {
    /// Merges `flags` over `file` over the defaults of `role`, then checks
    /// the safety rule.
    pub fn resolve(
        flags: DaemonFlags,
        file: DaemonFile,
        role: Role,
    ) -> Result<DaemonSettings, DaemonSettingsError> {
        let listen = flags
            .listen
            .or(file.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], role.default_port)));
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
        let handshake = tls
            .as_ref()
            .map(Handshake::new)
            .transpose()
            .map_err(DaemonSettingsError::TlsSetup)?;
        let insecure = flags.insecure || file.insecure.unwrap_or(false);
        if open_door(listen, token.as_ref(), tls.as_ref()) && !insecure {
            return Err(DaemonSettingsError::OpenDoor {
                listen,
                exposes: role.exposes,
            });
        }
        let start_timeout_secs = flags.start_timeout_secs.or(file.start_timeout_secs);
        let munge = match flags.munge || file.munge.unwrap_or(false) {
            true => Some(Munge::new(
                flags.munge_socket.or(file.munge_socket).as_deref(),
            )?),
            false => None,
        };
        Ok(DaemonSettings {
            listen,
            token,
            tls,
            handshake,
            allowed_users: non_empty(flags.allowed_users).or(file.allowed_users),
            log_format: flags.log_format.or(file.log_format).unwrap_or_default(),
            start_timeout: Duration::from_secs(start_timeout_secs.unwrap_or(10).max(1)),
            munge,
            relay_from: non_empty(flags.relay_from).or(file.relay_from),
            role,
        })
    }

    /// Whether the daemon listens beyond loopback without authentication.
    pub fn is_insecure(&self) -> bool {
        open_door(self.listen, self.token.as_ref(), self.tls.as_ref())
    }

    /// How callers are authenticated, for the start-up log.
    pub fn auth_mode(&self) -> &'static str {
        match (&self.tls, &self.token, &self.munge) {
            (Some(_), Some(_), None) => "mutual TLS and token",
            (Some(_), None, None) => "mutual TLS",
            (None, Some(_), None) => "token",
            (None, None, None) => "none",
            (Some(_), _, Some(_)) => "mutual TLS and MUNGE",
            (None, Some(_), Some(_)) => "token and MUNGE",
            (None, None, Some(_)) => "MUNGE",
        }
    }

    /// Whether a user's identity can be proven here (a client certificate
    /// or a MUNGE credential), not merely claimed.
    pub fn proves_users(&self) -> bool {
        self.tls.is_some() || self.munge.is_some()
    }

    /// The checks in front of every call, from these settings.
    pub fn access(&self) -> Access {
        Access::new(
            self.token.clone(),
            self.tls.is_some(),
            self.allowed_users.clone(),
        )
        .with_proof(self.munge.clone(), self.relay_from.clone())
    }

    /// Binds the listen address, warning first when the daemon is an open
    /// door (which `resolve` allowed only with `insecure`).
    pub async fn bind(&self) -> Result<TcpListener, BindError> {
        if self.is_insecure() {
            tracing::warn!(
                listen = %self.listen,
                "INSECURE: listening beyond loopback without authentication; anyone who can \
                 reach this port can {}",
                self.role.exposes
            );
        }
        TcpListener::bind(self.listen)
            .await
            .map_err(|source| BindError {
                listen: self.listen,
                source,
            })
    }
}

/// Whether a daemon would serve anyone who reaches it.
pub fn open_door(listen: SocketAddr, token: Option<&Token>, tls: Option<&Tls>) -> bool {
    tls.is_none() && mexec_common::token::open_door(listen, token)
}

/// A list flag given as nothing (`--allowed-users ""`) is no list.
pub fn non_empty(list: Vec<String>) -> Option<Vec<String>> {
    let list: Vec<String> = list.into_iter().filter(|s| !s.is_empty()).collect();
    (!list.is_empty()).then_some(list)
}

/// Holds a daemon's flags to `expected`, one "flag VARIABLE" (or "flag"
/// for one without a variable) each, as the README's tables list them.
#[cfg(test)]
pub fn assert_flags(command: clap::Command, expected: &[&str]) {
    let mut found: Vec<String> = command
        .get_arguments()
        .filter_map(|arg| {
            let long = arg.get_long()?;
            Some(match arg.get_env() {
                Some(env) => format!("{long} {}", env.to_string_lossy()),
                None => long.to_owned(),
            })
        })
        .filter(|flag| flag != "help" && flag != "version")
        .collect();
    found.sort();
    let mut expected: Vec<&str> = expected.to_vec();
    expected.sort();
    assert_eq!(found, expected);
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLE: Role = Role {
        config_env: "TEST_CONFIG",
        config_example: "deploy/test.toml",
        listen_env: "TEST_LISTEN",
        default_port: 7000,
        exposes: "do anything",
    };

    #[test]
    fn a_role_names_its_own_config_and_listen_variables() {
        #[derive(Debug, clap::Parser)]
        #[command(
            mut_arg("config", |arg| ROLE.config_flag(arg)),
            mut_arg("listen", |arg| ROLE.listen_flag(arg)),
        )]
        struct Flags {
            #[command(flatten)]
            daemon: DaemonFlags,
        }
        assert_flags(
            <Flags as clap::CommandFactory>::command(),
            &[
                "config TEST_CONFIG",
                "listen TEST_LISTEN",
                "token-file MEXEC_TOKEN_FILE",
                "insecure",
                "tls-ca MEXEC_TLS_CA",
                "tls-cert MEXEC_TLS_CERT",
                "tls-key MEXEC_TLS_KEY",
                "allowed-users MEXEC_ALLOWED_USERS",
                "log-format MEXEC_LOG_FORMAT",
                "start-timeout-secs MEXEC_START_TIMEOUT_SECS",
                "munge MEXEC_MUNGE",
                "munge-socket MEXEC_MUNGE_SOCKET",
                "relay-from MEXEC_RELAY_FROM",
            ],
        );
        let parsed = <Flags as clap::Parser>::parse_from(["t", "--listen", "127.0.0.1:5"]);
        assert_eq!(
            parsed.daemon.listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 5)))
        );
    }

    #[derive(Debug, Deserialize)]
    struct File {
        #[serde(flatten)]
        daemon: DaemonFile,
        own: Option<u32>,
        #[serde(flatten)]
        _other: NoOtherKeys,
    }

    #[test]
    fn flattened_keys_parse_and_a_key_nobody_claims_is_refused() {
        let parse = |text: &str| {
            mexec_common::config_file::parse::<File>(std::path::Path::new("d.toml"), text)
        };
        let file = parse("listen = \"127.0.0.1:9\"\nown = 3\nstart_timeout_secs = 2\n").unwrap();
        assert_eq!(file.own, Some(3));
        assert_eq!(file.daemon.start_timeout_secs, Some(2));
        let settings = DaemonSettings::resolve(DaemonFlags::default(), file.daemon, ROLE).unwrap();
        assert_eq!(settings.listen.port(), 9);
        assert_eq!(settings.start_timeout, Duration::from_secs(2));

        let err = parse("own = 3\nlisten_on = 1\n").unwrap_err();
        assert!(
            err.to_string().contains("unknown field `listen_on`"),
            "{err}"
        );
    }

    #[test]
    fn defaults_are_loopback_on_the_role_port_and_open_doors_need_insecure() {
        let settings =
            DaemonSettings::resolve(DaemonFlags::default(), DaemonFile::default(), ROLE).unwrap();
        assert_eq!(settings.listen, SocketAddr::from(([127, 0, 0, 1], 7000)));
        assert!(!settings.is_insecure());
        assert_eq!(settings.auth_mode(), "none");
        assert_eq!(settings.allowed_users, None);

        let open = DaemonFlags {
            listen: Some("0.0.0.0:7000".parse().unwrap()),
            ..DaemonFlags::default()
        };
        let err = DaemonSettings::resolve(open.clone(), DaemonFile::default(), ROLE).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "refusing to listen on 0.0.0.0:7000 without authentication: anyone who can \
                 reach it could do anything. Give --token-file FILE"
            ),
            "{err}"
        );
        let insecure = DaemonFile {
            insecure: Some(true),
            ..DaemonFile::default()
        };
        assert!(DaemonSettings::resolve(open, insecure, ROLE)
            .unwrap()
            .is_insecure());
    }

    #[test]
    fn a_flag_list_wins_over_the_file_unless_it_is_empty() {
        let file = DaemonFile {
            allowed_users: Some(vec!["bob".into()]),
            ..DaemonFile::default()
        };
        let flags = DaemonFlags {
            allowed_users: vec!["alice".into()],
            ..DaemonFlags::default()
        };
        let s = DaemonSettings::resolve(flags, file.clone(), ROLE).unwrap();
        assert_eq!(s.allowed_users, Some(vec!["alice".to_owned()]));
        let flags = DaemonFlags {
            allowed_users: vec![String::new()],
            ..DaemonFlags::default()
        };
        let s = DaemonSettings::resolve(flags, file, ROLE).unwrap();
        assert_eq!(s.allowed_users, Some(vec!["bob".to_owned()]));
    }
}
