//! The farms the agent's jobs go to: each resolved (config file, token,
//! certificates) once for the flags that name it, and kept with its one
//! `Connector` while its config file stays the same file, unchanged.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use mexec_common::connector::Connector;
use mexec_common::farm::{Farm, FarmFlags, FileConfig};

use crate::origin::Origin;

/// Resolved farms, by the flags that named them.
#[derive(Debug, Default)]
pub struct Farms {
    known: Mutex<HashMap<String, Resolved>>,
}

/// One farm, as a job's `mexec` would have resolved it.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub farm: Farm,
    /// The config file, for the settings that are not the farm's.
    pub file: FileConfig,
    pub connector: Connector,
}

impl Farms {
    /// The farm `flags` name for a job started as `origin` says.
    pub fn get(&self, flags: FarmFlags, origin: &Origin) -> Result<Resolved, String> {
        let flags = as_the_job_sees_it(flags, origin);
        let key = format!("{flags:?} {}", stamp(flags.config.as_deref()));
        if let Some(known) = self.known.lock().ok().and_then(|k| k.get(&key).cloned()) {
            return Ok(known);
        }
        let (farm, file) = Farm::resolve(&flags).map_err(|err| err.to_string())?;
        let resolved = Resolved {
            connector: farm.connector().keep_connections(),
            farm,
            file,
        };
        if let Ok(mut known) = self.known.lock() {
            known.insert(key, resolved.clone());
        }
        Ok(resolved)
    }
}

/// The flags with their paths made absolute in the job's directory (the
/// agent runs in /), and the config file always named: the default one of
/// the job's environment when it exists, else an empty file, so that the
/// agent's own default cannot stand in.
fn as_the_job_sees_it(flags: FarmFlags, origin: &Origin) -> FarmFlags {
    let cwd = origin.cwd.as_deref().unwrap_or(Path::new("/"));
    let absolute = |path: Option<PathBuf>| path.map(|p| cwd.join(p));
    let config = flags
        .config
        .or_else(|| default_config(origin).filter(|path| path.exists()))
        .or_else(|| Some(PathBuf::from("/dev/null")));
    FarmFlags {
        config: absolute(config),
        token_file: absolute(flags.token_file),
        tls_ca: absolute(flags.tls_ca),
        tls_cert: absolute(flags.tls_cert),
        tls_key: absolute(flags.tls_key),
        munge_socket: absolute(flags.munge_socket),
        ..flags
    }
}

/// `mexec/config.toml` in the job's config directory, as
/// `mexec_common::farm::default_config_path` finds it for a process of
/// its own: `$XDG_CONFIG_HOME` when absolute, else `$HOME/.config`.
fn default_config(origin: &Origin) -> Option<PathBuf> {
    let xdg = origin
        .var("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute());
    let home = || {
        origin
            .var("HOME")
            .map(|home| PathBuf::from(home).join(".config"))
    };
    match xdg.or_else(home) {
        Some(dir) => Some(dir.join("mexec").join("config.toml")),
        None => mexec_common::farm::default_config_path(),
    }
}

/// Which version of the config file this is: a changed or replaced file
/// is resolved again.
fn stamp(config: Option<&Path>) -> String {
    config
        .and_then(|path| std::fs::metadata(path).ok())
        .map(|m| format!("{}:{}:{}.{}", m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
        .unwrap_or_default()
}
