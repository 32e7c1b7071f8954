//! The shared-secret token: a small trusted cluster's authentication.
//!
//! The client sends it as `authorization: Bearer <token>` metadata; the
//! daemons compare it in constant time so its bytes cannot be guessed from
//! response times.

use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq;
use tonic::metadata::{MetadataMap, MetadataValue};

/// The metadata key the token travels under.
pub const METADATA_KEY: &str = "authorization";

/// Whether a daemon listening on `listen` with `token` would serve anyone
/// who reaches it: beyond loopback and without authentication.
pub fn open_door(listen: std::net::SocketAddr, token: Option<&Token>) -> bool {
    !listen.ip().is_loopback() && token.is_none()
}

/// A token read from a token file.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.write_str("Token(..)")
    }
}

/// Why a token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    // The cause is in the message, not a `source`: an error chain printed
    // whole (`{:#}`) would say it twice.
    #[error("cannot read token file {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("token file {0} is empty or holds characters other than printable ASCII")]
    Invalid(PathBuf),
    #[error(
        "token file {path} is open to others (mode {mode:o}, owner uid {owner}): \
         anyone who can read it can run jobs; make it yours and `chmod 600` it"
    )]
    TooOpen {
        path: PathBuf,
        mode: u32,
        owner: u32,
    },
}

/// Refuses a token file that others may read or write, or that belongs to
/// someone other than us or root.
#[cfg(unix)]
fn check_private(path: &Path, meta: &std::fs::Metadata) -> Result<(), TokenError> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    if meta.mode() & 0o077 != 0 || (meta.uid() != me && meta.uid() != 0) {
        return Err(TokenError::TooOpen {
            path: path.to_owned(),
            mode: meta.mode() & 0o7777,
            owner: meta.uid(),
        });
    }
    Ok(())
}

/// Windows has no mode bits: a token file's access is its ACL's, which
/// the user's profile directory already keeps private.
#[cfg(not(unix))]
fn check_private(_path: &Path, _meta: &std::fs::Metadata) -> Result<(), TokenError> {
    Ok(())
}

impl Token {
    /// Reads the first line of `path`; surrounding white space is dropped.
    /// As ssh does with a private key, a file that others may read or
    /// write, or that belongs to someone other than us or root, is refused:
    /// the token is the whole of the authentication.
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        use std::io::Read;
        let read = |cause| TokenError::Read {
            path: path.to_owned(),
            cause,
        };
        // The checks are of the file opened, not of the name.
        let mut file = std::fs::File::open(path).map_err(read)?;
        let meta = file.metadata().map_err(read)?;
        check_private(path, &meta)?;
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(read)?;
        let token = text.lines().next().unwrap_or("").trim().to_owned();
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::Invalid(path.to_owned()));
        }
        Ok(Token(token))
    }

    /// Adds the token to outgoing request metadata.
    pub fn attach(&self, metadata: &mut MetadataMap) {
        let value = format!("Bearer {}", self.0);
        // Validated as printable ASCII when read, so this cannot fail.
        if let Ok(value) = MetadataValue::try_from(value) {
            metadata.insert(METADATA_KEY, value);
        }
    }

    /// Whether incoming request metadata carries this token.
    pub fn admits(&self, metadata: &MetadataMap) -> bool {
        let Some(sent) = metadata.get(METADATA_KEY) else {
            return false;
        };
        let sent = sent.as_bytes();
        let Some(sent) = sent.strip_prefix(b"Bearer ") else {
            return false;
        };
        sent.ct_eq(self.0.as_bytes()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_in_file(text: &str) -> Result<Token, TokenError> {
        let dir = std::env::temp_dir().join(format!("mexec-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("t{}", text.len()));
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        Token::from_file(&path)
    }

    #[test]
    fn a_token_admits_itself_and_nothing_else() {
        let token = token_in_file("s3cret\n").unwrap();
        let mut md = MetadataMap::new();
        assert!(!token.admits(&md));
        token.attach(&mut md);
        assert!(token.admits(&md));
        let other = token_in_file("s3cret-other").unwrap();
        assert!(!other.admits(&md));
        md.insert(METADATA_KEY, "s3cret".parse().unwrap());
        assert!(!token.admits(&md), "the Bearer prefix is required");
    }

    #[test]
    fn empty_or_missing_token_files_are_errors() {
        assert!(matches!(token_in_file(" \n"), Err(TokenError::Invalid(_))));
        assert!(matches!(
            Token::from_file(Path::new("/nonexistent/mexec-token")),
            Err(TokenError::Read { .. })
        ));
        assert!(format!("{:?}", token_in_file("abc").unwrap()).contains(".."));
    }

    #[test]
    fn a_token_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("mexec-token-open-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        for mode in [0o644, 0o640, 0o602] {
            std::fs::set_permissions(&path, PermissionsExt::from_mode(mode)).unwrap();
            let err = Token::from_file(&path).unwrap_err();
            assert!(matches!(err, TokenError::TooOpen { .. }), "{mode:o}: {err}");
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
        std::fs::set_permissions(&path, PermissionsExt::from_mode(0o400)).unwrap();
        assert!(Token::from_file(&path).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
