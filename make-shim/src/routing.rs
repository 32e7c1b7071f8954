//! Sending make's compilers through `mexec`: a masquerade directory of
//! symlinks (`cc`, `gcc`, `g++`, `c++`, `clang`, `clang++`, and the user's
//! own compiler names) first on PATH, so whatever compiler the Makefile
//! names goes to the farm. A compiler given by path (`CC=/opt/gcc/bin/gcc`)
//! cannot be caught on PATH; that variable becomes `mexec /opt/...`.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use crate::args;

/// Compiler names routed by default.
pub const COMPILERS: &[&str] = &["cc", "gcc", "g++", "c++", "clang", "clang++"];
/// Variables naming compilers, in make arguments and the environment.
const COMPILER_VARIABLES: &[&str] = &["CC", "CXX"];

/// Everything make needs to route through mexec.
#[derive(Debug)]
pub struct Routing {
    _dir: tempfile::TempDir,
    /// The masquerade directory.
    pub masquerade: PathBuf,
    /// Where the clients log their jobs.
    pub joblog: PathBuf,
    /// make's arguments, compiler variables rewritten where needed.
    pub make_args: Vec<OsString>,
    /// Environment to set for make.
    pub env: Vec<(OsString, OsString)>,
}

/// Builds the masquerade directory and the environment.
pub fn prepare(mexec: &Path, make_args: &[OsString], build_id: &str) -> std::io::Result<Routing> {
    let dir = tempfile::Builder::new().prefix("mpmake-").tempdir()?;
    let masquerade = dir.path().join("bin");
    std::fs::create_dir(&masquerade)?;
    let mut names: Vec<String> = COMPILERS.iter().map(|s| s.to_string()).collect();
    let mut env = Vec::new();
    let mut routed_args = Vec::with_capacity(make_args.len());
    for arg in make_args {
        match args::variable(arg) {
            Some((name, value)) if COMPILER_VARIABLES.contains(&name) => {
                match route(mexec, value, &mut names) {
                    Some(rewritten) => {
                        routed_args.push(OsString::from(format!("{name}={rewritten}")))
                    }
                    None => routed_args.push(arg.clone()),
                }
            }
            _ => routed_args.push(arg.clone()),
        }
    }
    for variable in COMPILER_VARIABLES {
        if let Ok(value) = std::env::var(variable) {
            if let Some(rewritten) = route(mexec, &value, &mut names) {
                env.push((OsString::from(variable), OsString::from(rewritten)));
            }
        }
    }
    names.sort();
    names.dedup();
    for name in &names {
        std::os::unix::fs::symlink(mexec, masquerade.join(name))?;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut search = vec![masquerade.clone()];
    search.extend(std::env::split_paths(&path));
    env.push((
        "PATH".into(),
        std::env::join_paths(search).map_err(std::io::Error::other)?,
    ));
    let joblog = dir.path().join("jobs.jsonl");
    env.push(("MEXEC_JOBLOG".into(), joblog.clone().into_os_string()));
    env.push(("MEXEC_BUILD_ID".into(), build_id.into()));
    Ok(Routing {
        _dir: dir,
        masquerade,
        joblog,
        make_args: routed_args,
        env,
    })
}

/// A compiler by name gets a symlink (and the variable stays); one by path
/// is rewritten to run through mexec.
fn route(mexec: &Path, value: &str, names: &mut Vec<String>) -> Option<String> {
    let program = value.split_whitespace().next()?;
    if program.contains('/') {
        return Some(format!("{} {value}", mexec.display()));
    }
    if Path::new(program).file_name() == Some(OsStr::new("mexec")) {
        return None;
    }
    names.push(program.to_owned());
    None
}

/// The `mexec` binary: beside `mpmake`, else on PATH.
pub fn find_mexec() -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()?
        .parent()
        .map(|d| d.join("mexec"))
        .filter(|p| p.is_file());
    beside.or_else(|| {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|d| d.join("mexec"))
            .find(|p| p.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_get_links_and_paths_get_rewritten() {
        let mexec = Path::new("/opt/mexec/bin/mexec");
        let args: Vec<OsString> = ["all", "CC=gcc-12", "CXX=/usr/bin/g++ -m32", "CFLAGS=-O2"]
            .iter()
            .map(OsString::from)
            .collect();
        let routing = prepare(mexec, &args, "host:1").unwrap();
        assert_eq!(routing.make_args[1], "CC=gcc-12");
        assert_eq!(
            routing.make_args[2],
            "CXX=/opt/mexec/bin/mexec /usr/bin/g++ -m32"
        );
        assert_eq!(routing.make_args[3], "CFLAGS=-O2");
        for name in ["gcc-12", "cc", "clang++"] {
            let link = routing.masquerade.join(name);
            assert_eq!(std::fs::read_link(&link).unwrap(), mexec, "{name}");
        }
        let path = &routing.env.iter().find(|(k, _)| k == "PATH").unwrap().1;
        assert!(path
            .to_string_lossy()
            .starts_with(&*routing.masquerade.to_string_lossy()));
    }
}
