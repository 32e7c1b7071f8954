//! Where the farm is, as the programs that submit work (`mexec`, `mpmake`)
//! read it: the executors, the gatekeeper, the token and TLS, from flags
//! and `MEXEC_*` variables over the client config file; and the one
//! `Connector` those programs open every channel with.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config_file::{self, ConfigFileError};
use crate::connector::{Connector, Timeouts};
use crate::munge::{Munge, MungeError};
use crate::nodes::{parse_node_list, NodeAddr, NodeParseError};
use crate::tls::{Tls, TlsError, TlsPaths};
use crate::token::{Token, TokenError};

/// The timeouts of a submitting client. A node that does not answer a
/// connection within 3 s counts as down; the node running a job that goes
/// silent is noticed within 6 s (ping every 2 s, 4 s to answer);
/// docs/architecture.md lists the bounds.
pub const CLIENT_TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(3),
    keepalive_interval: Duration::from_secs(2),
    keepalive_timeout: Duration::from_secs(4),
};

/// The farm's location as given on the command line or in `MEXEC_*`
/// variables; `None` leaves it to the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FarmFlags {
    /// The config file; else the default path, when that file exists.
    pub config: Option<PathBuf>,
    /// Executors, `host:port[/slots],...`.
    pub nodes: Option<String>,
    /// The gatekeeper, `host:port`.
    pub gatekeeper: Option<String>,
    pub token_file: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Prove who we are with a MUNGE credential on every job and lease.
    pub munge: bool,
    /// munged's socket, when not libmunge's default.
    pub munge_socket: Option<PathBuf>,
}

/// The client's TOML config file (`mexec` and `mpmake` read the same one).
/// Every field is optional.
#[derive(Debug, Default, Clone, Deserialize)]
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
    /// Prove who you are with MUNGE. Default: false.
    pub munge: Option<bool>,
    /// munged's socket. Default: libmunge's (/run/munge/munge.socket.2).
    pub munge_socket: Option<PathBuf>,
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
    /// Requirements every job makes of its node ("arch=x86_64",
    /// "label:gpu"), after those of `--require` and MEXEC_REQUIRE.
    /// Default: none.
    pub require: Option<Vec<String>>,
    /// "check": compiles go only to nodes whose compiler fingerprints as
    /// ours; "any": no check (MEXEC_TOOLCHAIN overrides). Default: "check".
    pub toolchain: Option<String>,
}

/// Where the farm is, resolved.
#[derive(Debug, Clone, Default)]
pub struct Farm {
    pub nodes: Vec<NodeAddr>,
    pub gatekeeper: Option<NodeAddr>,
    pub token: Option<Token>,
    /// Mutual TLS, when configured.
    pub tls: Option<Tls>,
    /// The local munged, when we prove who we are with MUNGE.
    pub munge: Option<Munge>,
}

/// Why the farm's settings could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FarmError {
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
    #[error("--munge / MEXEC_MUNGE: {0}")]
    Munge(#[from] MungeError),
}

impl Farm {
    /// Reads the config file and lays `flags` over it; the file comes back
    /// too, for the settings of the program's own.
    pub fn resolve(flags: &FarmFlags) -> Result<(Farm, FileConfig), FarmError> {
        let default_path = default_config_path();
        let mut file: FileConfig =
            config_file::load_or_default(flags.config.as_deref(), default_path.as_deref())?;
        let nodes = match &flags.nodes {
            Some(list) => parse_node_list(list)?,
            None => file.nodes.take().unwrap_or_default(),
        };
        let token = flags
            .token_file
            .clone()
            .filter(|path| !path.as_os_str().is_empty())
            .or(file.token_file.take())
            .map(|path| Token::from_file(&path))
            .transpose()?;
        let tls = TlsPaths {
            ca: flags.tls_ca.clone(),
            cert: flags.tls_cert.clone(),
            key: flags.tls_key.clone(),
        }
        .or(TlsPaths {
            ca: file.tls_ca.take(),
            cert: file.tls_cert.take(),
            key: file.tls_key.take(),
        })
        .load()?;
        // An empty setting (`MEXEC_GATEKEEPER=`) means unset, as in a shell.
        let gatekeeper = match flags.gatekeeper.as_deref().filter(|a| !a.trim().is_empty()) {
            Some(addr) => Some(addr.parse().map_err(FarmError::Gatekeeper)?),
            None => file.gatekeeper.take(),
        };
        let munge = match flags.munge || file.munge.unwrap_or(false) {
            true => Some(Munge::new(
                flags
                    .munge_socket
                    .clone()
                    .or(file.munge_socket.take())
                    .as_deref(),
            )?),
            false => None,
        };
        let farm = Farm {
            nodes,
            gatekeeper,
            token,
            tls,
            munge,
        };
        Ok((farm, file))
    }

    /// The connector every channel of a submitting client goes through.
    pub fn connector(&self) -> Connector {
        Connector::new(self.tls.clone(), self.token.clone(), CLIENT_TIMEOUTS)
            .with_munge(self.munge.clone())
    }
}

/// `mexec/config.toml` in the user's config directory: on Linux and the
/// BSDs `$XDG_CONFIG_HOME`, else `~/.config`; on Windows the roaming
/// application data folder.
pub fn default_config_path() -> Option<PathBuf> {
    Some(dirs::config_dir()?.join("mexec").join("config.toml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_the_file_is_handed_back() {
        let dir = std::env::temp_dir().join(format!("mexec-farm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(
            &path,
            "nodes = [\"a:1\", \"b:2/4\"]\ngatekeeper = \"g:3\"\ncc = \"gcc\"\n",
        )
        .unwrap();
        let from_file = FarmFlags {
            config: Some(path.clone()),
            ..FarmFlags::default()
        };
        let (farm, file) = Farm::resolve(&from_file).unwrap();
        assert_eq!(farm.nodes.len(), 2);
        assert_eq!(farm.gatekeeper.unwrap().authority(), "g:3");
        assert_eq!(file.cc.as_deref(), Some("gcc"));

        let flagged = FarmFlags {
            nodes: Some("c:5".into()),
            gatekeeper: Some("h:6".into()),
            ..from_file
        };
        let (farm, _) = Farm::resolve(&flagged).unwrap();
        assert_eq!(farm.nodes[0].authority(), "c:5");
        assert_eq!(farm.gatekeeper.unwrap().authority(), "h:6");

        // `MEXEC_GATEKEEPER=` (empty) is no gatekeeper, not a bad one.
        let empty = FarmFlags {
            gatekeeper: Some(" ".into()),
            nodes: Some("c:5".into()),
            config: flagged.config.clone(),
            ..FarmFlags::default()
        };
        assert!(Farm::resolve(&empty)
            .unwrap()
            .0
            .gatekeeper
            .is_some_and(|g| g.authority() == "g:3"));
        let bad = FarmFlags {
            gatekeeper: Some("no port".into()),
            ..flagged
        };
        let err = Farm::resolve(&bad).unwrap_err().to_string();
        assert!(
            err.starts_with("MEXEC_GATEKEEPER / --gatekeeper: "),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
