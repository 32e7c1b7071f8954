//! Client settings: flags and `MEXEC_*` variables override the TOML config
//! file, which overrides the defaults.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// The config file, which `mpmake` reads too.
pub use mexec_common::farm::FileConfig;
use mexec_common::farm::{Farm, FarmError};
use mexec_common::properties::{self, BadRequirement};
use mexec_common::toolchain;

use crate::flags::Flags;
use crate::origin::Origin;
use crate::path_map::{PathMap, Rule, RuleError};
use crate::placement::Policy;

/// Everything the client needs, resolved.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// The nodes, the gatekeeper, the token and TLS.
    pub farm: Farm,
    pub relay: bool,
    pub no_local: bool,
    pub retry: bool,
    pub forward_stdin: bool,
    pub timeout: Option<Duration>,
    pub verbose: bool,
    pub joblog: Option<PathBuf>,
    /// Node choice without a gatekeeper.
    pub placement: Policy,
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
    /// What every job requires of its node, as written (checked).
    pub require: Vec<String>,
    /// Whether compiles go only to nodes with our compiler (false with
    /// `MEXEC_TOOLCHAIN=any`).
    pub check_toolchain: bool,
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
    Farm(#[from] FarmError),
    #[error("--map / MEXEC_MAP / map: {0}")]
    Map(#[from] RuleError),
    #[error("--require / MEXEC_REQUIRE / require: {0}")]
    Require(#[from] BadRequirement),
    #[error("MEXEC_TOOLCHAIN / toolchain: `{0}` is neither `check` nor `any`")]
    Toolchain(String),
}

impl Settings {
    /// Merges `flags` with the config file and defaults, the variables
    /// read from `origin`'s environment.
    pub fn resolve(flags: &Flags, origin: &Origin) -> Result<Settings, SettingsError> {
        let (farm, file) = Farm::resolve(&flags.farm())?;
        Settings::with_farm(flags, origin, farm, file)
    }

    /// The settings, with the farm and the config file already resolved
    /// (the agent keeps them between jobs).
    pub fn with_farm(
        flags: &Flags,
        origin: &Origin,
        farm: Farm,
        file: FileConfig,
    ) -> Result<Settings, SettingsError> {
        let var = |name: &str| origin.var_text(name);
        let cc = origin
            .var("MEXEC_CC")
            .map(|cc| cc.to_string_lossy().into_owned())
            .or(file.cc)
            .unwrap_or_else(|| "cc".to_owned());
        let timeout = flags.timeout.or(file.timeout_secs).filter(|s| *s > 0);
        Ok(Settings {
            farm,
            relay: flags.relay || file.relay.unwrap_or(false),
            no_local: flags.no_local || file.no_local.unwrap_or(false),
            retry: flags.retry || file.retry.unwrap_or(false),
            forward_stdin: !flags.no_stdin,
            timeout: timeout.map(Duration::from_secs),
            verbose: flags.verbose || file.explain.unwrap_or(false),
            joblog: flags.joblog.clone(),
            placement: flags.placement.unwrap_or_default(),
            cc: cc.split_whitespace().map(OsString::from).collect(),
            map: path_map(flags, var("MEXEC_MAP"), file.map.unwrap_or_default())?,
            named_env: named_env(flags, var("MEXEC_ENV"), file.env.unwrap_or_default()),
            forward_env: flags.forward_env || file.forward_env.unwrap_or(false),
            cluster_os: flags
                .cluster_os
                .clone()
                .or(file.cluster_os)
                .unwrap_or_else(|| DEFAULT_CLUSTER_OS.to_owned()),
            require: requirements(
                flags,
                var("MEXEC_REQUIRE"),
                file.require.unwrap_or_default(),
            )?,
            check_toolchain: check_toolchain(var(toolchain::CHECK_VARIABLE), file.toolchain)?,
        })
    }
}

/// The requirements of `--require`, then MEXEC_REQUIRE (','-separated),
/// then the config file; each must parse.
fn requirements(
    flags: &Flags,
    from_env: Option<String>,
    from_file: Vec<String>,
) -> Result<Vec<String>, BadRequirement> {
    let from_env = from_env.unwrap_or_default();
    let all: Vec<String> = flags
        .require
        .iter()
        .map(|r| r.trim().to_owned())
        .chain(from_env.split(',').map(|r| r.trim().to_owned()))
        .chain(from_file)
        .filter(|r| !r.is_empty())
        .collect();
    properties::parse_all(&all)?;
    Ok(all)
}

/// MEXEC_TOOLCHAIN over the config file: `check` (the default) or `any`.
fn check_toolchain(
    from_env: Option<String>,
    from_file: Option<String>,
) -> Result<bool, SettingsError> {
    let value = from_env.or(from_file);
    match value.as_deref().map(str::trim) {
        None | Some("") | Some("check") => Ok(true),
        Some("any") => Ok(false),
        Some(other) => Err(SettingsError::Toolchain(other.to_owned())),
    }
}

/// The rules of `--map`, then MEXEC_MAP (';'-separated: Windows paths
/// have colons), then the config file. For equal prefixes the first wins.
fn path_map(
    flags: &Flags,
    from_env: Option<String>,
    from_file: Vec<String>,
) -> Result<PathMap, RuleError> {
    let from_env = from_env.unwrap_or_default();
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
fn named_env(flags: &Flags, from_env: Option<String>, from_file: Vec<String>) -> Vec<OsString> {
    let from_env = from_env.unwrap_or_default();
    flags
        .env
        .iter()
        .map(String::as_str)
        .chain(from_env.split(',').map(str::trim).filter(|n| !n.is_empty()))
        .chain(from_file.iter().map(String::as_str))
        .map(OsString::from)
        .collect()
}
