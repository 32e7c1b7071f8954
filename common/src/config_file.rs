//! Reading a TOML config file into a typed struct, with errors that name the
//! file and the offending key.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
}

/// Reads and parses `path`.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// Parses `text`, naming `path` in errors.
pub fn parse<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigFileError> {
    toml::from_str(text).map_err(|source| ConfigFileError::Parse {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

/// Loads `explicit` when given; otherwise `default_path` when it exists;
/// otherwise the type's defaults.
pub fn load_or_default<T: DeserializeOwned + Default>(
    explicit: Option<&Path>,
    default_path: Option<&Path>,
) -> Result<T, ConfigFileError> {
    match (explicit, default_path) {
        (Some(path), _) => load(path),
        (None, Some(path)) if path.exists() => load(path),
        _ => Ok(T::default()),
    }
}
