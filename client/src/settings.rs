//! Client settings: flags and `MEXEC_*` variables override the TOML config
//! file, which overrides the defaults.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use mexec_common::config_file::{self, ConfigFileError};
use mexec_common::nodes::{parse_node_list, NodeAddr, NodeParseError};
use mexec_common::tls::{Tls, TlsError, TlsPaths};
use mexec_common::token::{Token, TokenError};

use crate::path_map::{PathMap, Rule, RuleError};
use serde::Deserialize;

/// Flags of `mexec`; each also reads a `MEXEC_*` variable where it makes sense.
#[derive(Debug, Parser, Default)]
#[command(
    name = "mexec",
    version,
    // `--version` belongs to the compiler in the CC=mexec form.
    disable_version_flag = true,
    about = "Run a command on the least-loaded node of the mexec farm",
    after_help = "Forms: mexec [OPTIONS] -- CMD ARGS | mexec CMD ARGS | CC=mexec (runs $MEXEC_CC, \
                  else cc) | a symlink named cc, gcc, g++, c++, clang or clang++ to mexec"
)]
pub struct Flags {
    /// Client config file [default: ~/.config/mexec/config.toml when present].
    #[arg(long, env = "MEXEC_CONFIG")]
    pub config: Option<PathBuf>,
    /// Executors: host:port[/slots],...
    #[arg(long, env = "MEXEC_NODES")]
    pub nodes: Option<String>,
    /// File holding the cluster's shared token.
    #[arg(long, env = "MEXEC_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The cluster CA certificate (PEM), for mutual TLS.
    #[arg(long, env = "MEXEC_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Your user certificate (PEM), from `mexec-cert user`.
    #[arg(long, env = "MEXEC_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Your private key (PEM).
    #[arg(long, env = "MEXEC_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Gatekeeper to ask for placement (host:port).
    #[arg(long, env = "MEXEC_GATEKEEPER")]
    pub gatekeeper: Option<String>,
    /// Send the whole job through the gatekeeper (for clients outside the
    /// cluster, which cannot reach the executors).
    #[arg(long, env = "MEXEC_RELAY", value_parser = boolish())]
    pub relay: bool,
    /// Fail instead of running locally when no node can take the job.
    #[arg(long, env = "MEXEC_NO_LOCAL", value_parser = boolish())]
    pub no_local: bool,
    /// Retry on another node if the node is lost mid-job (compiles always are).
    #[arg(long, env = "MEXEC_RETRY", value_parser = boolish())]
    pub retry: bool,
    /// Do not forward standard input (the job reads /dev/null).
    #[arg(short = 'n', long = "no-stdin", env = "MEXEC_NO_STDIN", value_parser = boolish())]
    pub no_stdin: bool,
    /// Kill the job after this many seconds.
    #[arg(long, env = "MEXEC_TIMEOUT")]
    pub timeout: Option<u64>,
    /// Say on stderr where each job goes and why it moves.
    #[arg(long = "explain", env = "MEXEC_EXPLAIN", value_parser = boolish())]
    pub verbose: bool,
    /// How to choose among nodes without a gatekeeper: load (default),
    /// random or round-robin (the last two for comparisons).
    #[arg(long, env = "MEXEC_PLACEMENT")]
    pub placement: Option<crate::placement::Policy>,
    /// Append one JSON line per job to this file.
    #[arg(long, env = "MEXEC_JOBLOG")]
    pub joblog: Option<PathBuf>,
    /// Map a path prefix of this machine to the executors' name of the same
    /// tree: LOCAL=REMOTE, for example 'S:\src=/export/src' (repeatable;
    /// also MEXEC_MAP, rules separated by ';').
    #[arg(long = "map", value_name = "LOCAL=REMOTE")]
    pub map: Vec<String>,
    /// Send this variable (from here, or with this value) to the job
    /// (repeatable; also MEXEC_ENV, names separated by ',').
    #[arg(short = 'e', long = "env", value_name = "NAME[=VALUE]")]
    pub env: Vec<String>,
    /// Send this machine's whole environment even to executors on another
    /// operating system.
    #[arg(long, env = "MEXEC_FORWARD_ENV")]
    pub forward_env: bool,
    /// The executors' operating system, as Rust names it [default: linux].
    /// A client on another system sends only the variables it is told to,
    /// and needs a --map rule for its working directory.
    #[arg(long, env = "MEXEC_CLUSTER_OS", value_name = "OS")]
    pub cluster_os: Option<String>,
    /// Show the nodes and their load, then exit.
    #[arg(long)]
    pub status: bool,
    /// With --status: print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Print mexec's version.
    #[arg(long = "mexec-version", action = clap::ArgAction::Version)]
    pub mexec_version: (),
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_parser = clap::value_parser!(OsString))]
    pub command: Vec<OsString>,
}

/// On/off variables read as the `CC=mexec` form reads them (`from_env`):
/// 1, yes, on (and 0, no, off) as well as true and false.
fn boolish() -> clap::builder::BoolishValueParser {
    clap::builder::BoolishValueParser::new()
}

impl Flags {
    /// The flags the `MEXEC_*` variables give, as clap would read them with
    /// no command-line options (booleans: 1/true/yes/on, else off).
    pub fn from_env(var: impl Fn(&str) -> Option<OsString>) -> Result<Flags, String> {
        let text = |name: &str| var(name).map(|v| v.to_string_lossy().into_owned());
        let path = |name: &str| var(name).map(PathBuf::from);
        let flag = |name: &str| {
            text(name).is_some_and(|v| {
                matches!(
                    v.to_ascii_lowercase().as_str(),
                    "1" | "true" | "yes" | "on" | "y"
                )
            })
        };
        let timeout = match text("MEXEC_TIMEOUT") {
            Some(v) => Some(
                v.parse()
                    .map_err(|_| format!("MEXEC_TIMEOUT: `{v}` is not a number of seconds"))?,
            ),
            None => None,
        };
        let placement = match text("MEXEC_PLACEMENT") {
            Some(v) => Some(v.parse().map_err(|e| format!("MEXEC_PLACEMENT: {e}"))?),
            None => None,
        };
        Ok(Flags {
            config: path("MEXEC_CONFIG"),
            nodes: text("MEXEC_NODES"),
            token_file: path("MEXEC_TOKEN_FILE"),
            tls_ca: path("MEXEC_TLS_CA"),
            tls_cert: path("MEXEC_TLS_CERT"),
            tls_key: path("MEXEC_TLS_KEY"),
            gatekeeper: text("MEXEC_GATEKEEPER"),
            relay: flag("MEXEC_RELAY"),
            no_local: flag("MEXEC_NO_LOCAL"),
            retry: flag("MEXEC_RETRY"),
            no_stdin: flag("MEXEC_NO_STDIN"),
            timeout,
            verbose: flag("MEXEC_EXPLAIN"),
            placement,
            joblog: path("MEXEC_JOBLOG"),
            forward_env: flag("MEXEC_FORWARD_ENV"),
            cluster_os: text("MEXEC_CLUSTER_OS"),
            ..Flags::default()
        })
    }
}

/// The client's TOML config file. Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Executors, as "host:port[/slots]". Default: none (jobs run locally).
    pub nodes: Option<Vec<NodeAddr>>,
    /// File holding the cluster's shared token. Default: none.
    pub token_file: Option<PathBuf>,
    /// Cluster CA certificate for mutual TLS. Default: none (no TLS).
    pub tls_ca: Option<PathBuf>,
    /// Your user certificate. Default: none.
    pub tls_cert: Option<PathBuf>,
    /// Your private key. Default: none.
    pub tls_key: Option<PathBuf>,
    /// Gatekeeper, "host:port". Default: none (place over `nodes`).
    pub gatekeeper: Option<NodeAddr>,
    /// Send whole jobs through the gatekeeper. Default: false.
    pub relay: Option<bool>,
    /// Fail instead of running locally. Default: false.
    pub no_local: Option<bool>,
    /// Retry any job whose node is lost mid-job. Default: false (compiles only).
    pub retry: Option<bool>,
    /// The compiler `CC=mexec` runs. Default: $MEXEC_CC, else "cc".
    pub cc: Option<String>,
    /// Kill jobs after this many seconds. Default: no limit.
    pub timeout_secs: Option<u64>,
    /// Say where each job goes and why it moves. Default: false.
    pub explain: Option<bool>,
    /// Path mapping rules, "LOCAL=REMOTE", added after those of `--map`
    /// and MEXEC_MAP. Default: none.
    pub map: Option<Vec<String>>,
    /// Variables sent to the job, "NAME" or "NAME=VALUE", added after those
    /// of `-e` and MEXEC_ENV. Default: none.
    pub env: Option<Vec<String>>,
    /// Send the whole environment even to executors on another operating
    /// system. Default: false.
    pub forward_env: Option<bool>,
    /// The executors' operating system. Default: "linux".
    pub cluster_os: Option<String>,
}

/// Everything the client needs, resolved.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub nodes: Vec<NodeAddr>,
    pub gatekeeper: Option<NodeAddr>,
    pub relay: bool,
    pub token: Option<Token>,
    /// Mutual TLS, when configured (also installed for every channel, see
    /// `remote::use_tls`).
    pub tls: Option<Tls>,
    pub no_local: bool,
    pub retry: bool,
    pub forward_stdin: bool,
    pub timeout: Option<Duration>,
    pub verbose: bool,
    pub joblog: Option<PathBuf>,
    /// Node choice without a gatekeeper.
    pub placement: crate::placement::Policy,
    /// The compiler for `CC=mexec`, split on white space.
    pub cc: Vec<OsString>,
    /// Local path prefixes and the executors' names for them.
    pub map: PathMap,
    /// Variables the job gets by name: `NAME` (our value) or `NAME=VALUE`.
    pub named_env: Vec<OsString>,
    /// Send the whole environment even to another operating system.
    pub forward_env: bool,
    /// The executors' operating system (Rust's names: "linux", ...;
    /// empty means `DEFAULT_CLUSTER_OS`).
    pub cluster_os: String,
}

/// The executors' operating system unless told otherwise.
pub const DEFAULT_CLUSTER_OS: &str = "linux";

impl Settings {
    /// Whether this client runs on another operating system than the
    /// executors: then its environment is not sent whole and its working
    /// directory must be mapped.
    pub fn foreign_client(&self) -> bool {
        let cluster_os = match self.cluster_os.as_str() {
            "" => DEFAULT_CLUSTER_OS,
            named => named,
        };
        !cluster_os.eq_ignore_ascii_case(std::env::consts::OS)
    }
}

/// Why the settings could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    ConfigFile(#[from] ConfigFileError),
    #[error("MEXEC_NODES / --nodes: {0}")]
    Nodes(#[from] NodeParseError),
    #[error("MEXEC_GATEKEEPER / --gatekeeper: {0}")]
    Gatekeeper(NodeParseError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("--map / MEXEC_MAP / map: {0}")]
    Map(#[from] RuleError),
}

impl Settings {
    /// Merges `flags` with the config file and defaults.
    pub fn resolve(flags: &Flags) -> Result<Settings, SettingsError> {
        let default_path = default_config_path();
        let file: FileConfig =
            config_file::load_or_default(flags.config.as_deref(), default_path.as_deref())?;
        let nodes = match &flags.nodes {
            Some(list) => parse_node_list(list)?,
            None => file.nodes.unwrap_or_default(),
        };
        let token = flags
            .token_file
            .clone()
            .or(file.token_file)
            .map(|path| Token::from_file(&path))
            .transpose()?;
        let tls = TlsPaths {
            ca: flags.tls_ca.clone(),
            cert: flags.tls_cert.clone(),
            key: flags.tls_key.clone(),
        }
        .or(TlsPaths {
            ca: file.tls_ca,
            cert: file.tls_cert,
            key: file.tls_key,
        })
        .load()?;
        if let Some(tls) = &tls {
            crate::remote::use_tls(tls.clone());
        }
        let cc = std::env::var_os("MEXEC_CC")
            .map(|cc| cc.to_string_lossy().into_owned())
            .or(file.cc)
            .unwrap_or_else(|| "cc".to_owned());
        let timeout = flags.timeout.or(file.timeout_secs).filter(|s| *s > 0);
        let gatekeeper = match &flags.gatekeeper {
            Some(addr) => Some(addr.parse().map_err(SettingsError::Gatekeeper)?),
            None => file.gatekeeper,
        };
        Ok(Settings {
            nodes,
            gatekeeper,
            relay: flags.relay || file.relay.unwrap_or(false),
            token,
            tls,
            no_local: flags.no_local || file.no_local.unwrap_or(false),
            retry: flags.retry || file.retry.unwrap_or(false),
            forward_stdin: !flags.no_stdin,
            timeout: timeout.map(Duration::from_secs),
            verbose: flags.verbose || file.explain.unwrap_or(false),
            joblog: flags.joblog.clone(),
            placement: flags.placement.unwrap_or_default(),
            cc: cc.split_whitespace().map(OsString::from).collect(),
            map: path_map(flags, file.map.unwrap_or_default())?,
            named_env: named_env(flags, file.env.unwrap_or_default()),
            forward_env: flags.forward_env || file.forward_env.unwrap_or(false),
            cluster_os: flags
                .cluster_os
                .clone()
                .or(file.cluster_os)
                .unwrap_or_else(|| DEFAULT_CLUSTER_OS.to_owned()),
        })
    }
}

/// The rules of `--map`, then MEXEC_MAP (';'-separated: Windows paths
/// have colons), then the config file. For equal prefixes the first wins.
fn path_map(flags: &Flags, from_file: Vec<String>) -> Result<PathMap, RuleError> {
    let from_env = std::env::var("MEXEC_MAP").unwrap_or_default();
    let rules = flags
        .map
        .iter()
        .map(String::as_str)
        .chain(from_env.split(';').map(str::trim).filter(|r| !r.is_empty()))
        .chain(from_file.iter().map(String::as_str))
        .map(str::parse::<Rule>)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PathMap::new(rules))
}

/// The variables of `-e`, then MEXEC_ENV (names, ','-separated), then the
/// config file; a later `NAME=VALUE` overrides an earlier one.
fn named_env(flags: &Flags, from_file: Vec<String>) -> Vec<OsString> {
    let from_env = std::env::var("MEXEC_ENV").unwrap_or_default();
    flags
        .env
        .iter()
        .map(String::as_str)
        .chain(from_env.split(',').map(str::trim).filter(|n| !n.is_empty()))
        .chain(from_file.iter().map(String::as_str))
        .map(OsString::from)
        .collect()
}

fn default_config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("mexec").join("config.toml"))
}
