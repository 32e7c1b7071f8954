//! The account jobs run as.

use nix::unistd::{geteuid, User};

/// A local account, as jobs need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Login name.
    pub name: String,
    /// Numeric user id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory, for jobs that start from the node's environment.
    pub home: std::path::PathBuf,
}

/// Why an account could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("no such user `{0}` on this node")]
    Unknown(String),
    #[error("user `{0}` is root; jobs never run as root")]
    Root(String),
}

/// Looks `name` up in the password database.
pub fn lookup(name: &str) -> Result<Account, AccountError> {
    // A name with a NUL byte is no name: nix answers `None` for it.
    let user = match User::from_name(name) {
        Ok(Some(user)) => user,
        Ok(None) | Err(_) => return Err(AccountError::Unknown(name.to_owned())),
    };
    if user.uid.is_root() {
        return Err(AccountError::Root(name.to_owned()));
    }
    Ok(Account {
        name: user.name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        home: user.dir,
    })
}

/// Whether this process runs with root's effective user id.
pub fn running_as_root() -> bool {
    geteuid().is_root()
}

/// The name of the effective user, for logs and messages.
pub fn current_user_name() -> String {
    std::env::var("USER").unwrap_or_else(|_| format!("uid {}", geteuid()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_refused_and_unknown_names_are_errors() {
        assert!(matches!(lookup("root"), Err(AccountError::Root(_))));
        assert!(matches!(
            lookup("no-such-user-mexec"),
            Err(AccountError::Unknown(_))
        ));
        assert!(matches!(lookup("a\0b"), Err(AccountError::Unknown(_))));
    }

    #[test]
    fn nobody_resolves() {
        let nobody = lookup("nobody").unwrap();
        assert_ne!(nobody.uid, 0);
        assert_eq!(nobody.name, "nobody");
    }
}
