//! Path mapping (`--map LOCAL=REMOTE`): the client's name of a tree and the
//! executors' name of the same tree, for clients that mount it elsewhere
//! (`S:\src\proj` on Windows, `/Volumes/src/proj` on a Mac) than the
//! executors do (`/export/src/proj`).
//!
//! A Windows prefix (`S:\src`, `S:/src`, `\\server\share`) matches without
//! regard to case or to which slash is used, and the rest of a mapped path
//! has its backslashes turned into slashes. A POSIX prefix matches byte for
//! byte. Either matches only whole components: `/src` maps `/src/a`, not
//! `/srcx`. The longest matching prefix wins.

use std::ffi::{OsStr, OsString};

/// One `LOCAL=REMOTE` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    local: Prefix,
    /// Where the executors have the tree: an absolute POSIX path, without
    /// a trailing slash (unless it is `/`).
    remote: String,
}

/// The client's side of a rule, in the form its syntax says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Prefix {
    /// `C:\dir` or `\\server\share\dir`: kept with `/` separators and
    /// without a trailing separator.
    Windows(String),
    /// `/dir`: bytes, without a trailing slash (unless it is `/`).
    Posix(Vec<u8>),
}

/// Why a `--map` value is not a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("`{0}` is not LOCAL=REMOTE")]
    NoEquals(String),
    #[error("`{0}`: LOCAL must be an absolute path (C:\\dir, \\\\server\\share or /dir)")]
    LocalNotAbsolute(String),
    #[error("`{0}`: REMOTE must be an absolute POSIX path (/dir)")]
    RemoteNotAbsolute(String),
}

impl std::str::FromStr for Rule {
    type Err = RuleError;

    fn from_str(text: &str) -> Result<Rule, RuleError> {
        let (local, remote) = text
            .split_once('=')
            .ok_or_else(|| RuleError::NoEquals(text.to_owned()))?;
        let local = if is_windows_absolute(local) {
            Prefix::Windows(trim_separators(&windows_form(local)).to_owned())
        } else if local.starts_with('/') {
            Prefix::Posix(trim_separators(local).as_bytes().to_vec())
        } else {
            return Err(RuleError::LocalNotAbsolute(text.to_owned()));
        };
        if !remote.starts_with('/') {
            return Err(RuleError::RemoteNotAbsolute(text.to_owned()));
        }
        Ok(Rule {
            local,
            remote: trim_separators(remote).to_owned(),
        })
    }
}

/// Whether `path` is an absolute Windows path: a drive (`C:\`, `C:/`) or a
/// UNC share (`\\server\share`).
pub fn is_windows_absolute(path: &str) -> bool {
    let b = path.as_bytes();
    (b.len() >= 3 && b[0].is_ascii_alphabetic() && b[1] == b':' && (b[2] == b'\\' || b[2] == b'/'))
        || path.starts_with(r"\\")
}

/// A Windows path as rules compare it: `/` separators and no verbatim
/// `\\?\` prefix (which Windows APIs may return). Letters are compared
/// without regard to ASCII case.
fn windows_form(path: &str) -> String {
    let path = match path.strip_prefix(r"\\?\") {
        Some(rest) => match rest.strip_prefix(r"UNC\") {
            Some(share) => format!(r"\\{share}"),
            None => rest.to_owned(),
        },
        None => path.to_owned(),
    };
    path.replace('\\', "/")
}

/// `path` without trailing separators, but `/` stays `/` and `c:/` `c:`.
fn trim_separators(path: &str) -> &str {
    let trimmed = path.trim_end_matches(['/', '\\']);
    if trimmed.is_empty() {
        &path[..1]
    } else {
        trimmed
    }
}

/// The rules of one client, longest local prefix first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathMap {
    rules: Vec<Rule>,
}

impl PathMap {
    /// A map of `rules`; for equal prefixes the earlier rule wins.
    pub fn new(mut rules: Vec<Rule>) -> PathMap {
        rules.sort_by_key(|rule| std::cmp::Reverse(rule.local.len()));
        PathMap { rules }
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The executors' name of `path`, when a rule covers it.
    pub fn map_path(&self, path: &OsStr) -> Option<OsString> {
        let bytes = path.as_encoded_bytes();
        self.rules.iter().find_map(|rule| {
            let rest = rule.local.strip(bytes)?;
            let mut mapped = rule.remote.as_bytes().to_vec();
            let rest = rest.strip_prefix(b"/").unwrap_or(&rest);
            if !rest.is_empty() || bytes.ends_with(b"/") || bytes.ends_with(b"\\") {
                if !mapped.ends_with(b"/") {
                    mapped.push(b'/');
                }
                mapped.extend_from_slice(rest);
            }
            // SAFETY: UTF-8 text joined to the tail of `path`'s own encoded
            // bytes, cut at a character boundary (right after the prefix
            // matched, which ends a character or is a separator).
            Some(unsafe { OsString::from_encoded_bytes_unchecked(mapped) })
        })
    }

    /// An argument with its mapped path rewritten: the whole argument, the
    /// value of `--option=PATH`, or the value of a joined short option
    /// (`-IS:\src\include`). Anything else is left as it is.
    pub fn map_argument(&self, arg: &OsStr) -> OsString {
        if let Some(mapped) = self.map_path(arg) {
            return mapped;
        }
        let bytes = arg.as_encoded_bytes();
        let value_at = if bytes.starts_with(b"--") {
            bytes
                .iter()
                .position(|b| *b == b'=')
                .map(|equals| equals + 1)
        } else if bytes.len() > 2 && bytes[0] == b'-' && bytes[1].is_ascii_alphabetic() {
            Some(2)
        } else {
            None
        };
        let Some(at) = value_at else {
            return arg.to_owned();
        };
        let (option, value) = bytes.split_at(at);
        // SAFETY: both halves come from valid encoded bytes split right
        // after an ASCII byte, which is a boundary the encoding allows.
        let (option, value) = unsafe {
            (
                OsStr::from_encoded_bytes_unchecked(option),
                OsStr::from_encoded_bytes_unchecked(value),
            )
        };
        match self.map_path(value) {
            Some(mapped) => {
                let mut joined = option.to_owned();
                joined.push(mapped);
                joined
            }
            None => arg.to_owned(),
        }
    }
}

impl Prefix {
    fn len(&self) -> usize {
        match self {
            Prefix::Windows(p) => p.len(),
            Prefix::Posix(p) => p.len(),
        }
    }

    /// What follows this prefix in `path` (with `/` separators for a
    /// Windows prefix), when the prefix covers whole components of it.
    fn strip(&self, path: &[u8]) -> Option<Vec<u8>> {
        match self {
            Prefix::Windows(prefix) => {
                let path = windows_form(std::str::from_utf8(path).ok()?);
                let head = path.get(..prefix.len())?;
                let rest = &path.as_bytes()[prefix.len()..];
                (head.eq_ignore_ascii_case(prefix) && covers_components(prefix.as_bytes(), rest))
                    .then(|| rest.to_vec())
            }
            Prefix::Posix(prefix) => {
                let rest = path.strip_prefix(prefix.as_slice())?;
                covers_components(prefix, rest).then(|| rest.to_vec())
            }
        }
    }
}

/// A prefix covers whole components when the rest is empty or starts a
/// new component (or the prefix itself ends with a separator: `/`).
fn covers_components(prefix: &[u8], rest: &[u8]) -> bool {
    rest.is_empty() || rest.starts_with(b"/") || prefix.ends_with(b"/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(rules: &[&str]) -> PathMap {
        PathMap::new(rules.iter().map(|r| r.parse().unwrap()).collect())
    }

    #[cfg(unix)]
    #[test]
    fn posix_names_that_are_not_utf8_map_byte_for_byte() {
        use std::os::unix::ffi::{OsStrExt, OsStringExt};
        let m = map(&["/src=/export/src"]);
        let path = OsStr::from_bytes(b"/src/caf\xe9/a.c");
        assert_eq!(
            m.map_path(path).unwrap().into_vec(),
            b"/export/src/caf\xe9/a.c"
        );
    }

    fn mapped(map: &PathMap, path: &str) -> Option<String> {
        map.map_path(OsStr::new(path))
            .map(|p| p.into_string().unwrap())
    }

    #[test]
    fn windows_drive_paths_map_to_posix_paths() {
        let m = map(&[r"S:\src\proj=/export/src/proj"]);
        assert_eq!(
            mapped(&m, r"S:\src\proj\lib\a.c").as_deref(),
            Some("/export/src/proj/lib/a.c")
        );
        assert_eq!(
            mapped(&m, r"S:\src\proj").as_deref(),
            Some("/export/src/proj")
        );
        // A trailing separator is kept, as a slash.
        assert_eq!(
            mapped(&m, r"S:\src\proj\").as_deref(),
            Some("/export/src/proj/")
        );
        // Drive letters and names are not case-sensitive, slashes either way.
        assert_eq!(
            mapped(&m, "s:/SRC/Proj/Lib/A.c").as_deref(),
            Some("/export/src/proj/Lib/A.c")
        );
        // The verbatim form Windows APIs may return.
        assert_eq!(
            mapped(&m, r"\\?\S:\src\proj\x").as_deref(),
            Some("/export/src/proj/x")
        );
        // Whole components only; other drives untouched.
        assert_eq!(mapped(&m, r"S:\src\project\x"), None);
        assert_eq!(mapped(&m, r"T:\src\proj\x"), None);
    }

    #[test]
    fn a_whole_drive_and_unc_shares_map() {
        let m = map(&[r"Z:\=/", r"\\files\src=/export/src"]);
        assert_eq!(mapped(&m, r"Z:\tmp\job").as_deref(), Some("/tmp/job"));
        assert_eq!(mapped(&m, r"Z:\").as_deref(), Some("/"));
        assert_eq!(
            mapped(&m, r"\\FILES\src\proj\a.c").as_deref(),
            Some("/export/src/proj/a.c")
        );
        assert_eq!(
            mapped(&m, r"\\?\UNC\files\src\proj").as_deref(),
            Some("/export/src/proj")
        );
    }

    #[test]
    fn posix_paths_map_byte_for_byte() {
        let m = map(&["/Volumes/src/proj=/export/src/proj"]);
        assert_eq!(
            mapped(&m, "/Volumes/src/proj/a b/c.c").as_deref(),
            Some("/export/src/proj/a b/c.c")
        );
        assert_eq!(
            mapped(&m, "/Volumes/src/proj").as_deref(),
            Some("/export/src/proj")
        );
        assert_eq!(mapped(&m, "/volumes/src/proj/x"), None, "case matters");
        assert_eq!(mapped(&m, "/Volumes/src/projx"), None);
        // Backslashes are ordinary bytes in POSIX names.
        assert_eq!(
            mapped(&m, r"/Volumes/src/proj/a\b").as_deref(),
            Some(r"/export/src/proj/a\b")
        );
    }

    #[test]
    fn the_longest_prefix_wins() {
        let m = map(&["/src=/a", "/src/deep=/b"]);
        assert_eq!(mapped(&m, "/src/deep/x").as_deref(), Some("/b/x"));
        assert_eq!(mapped(&m, "/src/other").as_deref(), Some("/a/other"));
    }

    #[test]
    fn arguments_with_mapped_paths_are_rewritten() {
        let m = map(&[r"S:\src=/export/src"]);
        let arg = |a: &str| m.map_argument(OsStr::new(a)).into_string().unwrap();
        assert_eq!(arg(r"S:\src\a.c"), "/export/src/a.c");
        assert_eq!(arg(r"-IS:\src\include"), "-I/export/src/include");
        assert_eq!(arg(r"--output=S:\src\out"), "--output=/export/src/out");
        assert_eq!(arg("-c"), "-c");
        assert_eq!(arg("-O2"), "-O2");
        assert_eq!(arg(r"C:\elsewhere\a.c"), r"C:\elsewhere\a.c");
        assert_eq!(arg("plain"), "plain");
    }

    #[test]
    fn bad_rules_are_refused_with_the_reason() {
        assert!(matches!(
            "S:\\src".parse::<Rule>(),
            Err(RuleError::NoEquals(_))
        ));
        assert!(matches!(
            "src=/export".parse::<Rule>(),
            Err(RuleError::LocalNotAbsolute(_))
        ));
        assert!(matches!(
            r"S:\src=T:\x".parse::<Rule>(),
            Err(RuleError::RemoteNotAbsolute(_))
        ));
    }
}
