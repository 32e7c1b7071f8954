//! The account jobs run as: the one `--user` names, or, with
//! `--run-as-submitter`, each job's proven submitter, looked up through NSS
//! on this node with the supplementary groups `initgroups` would give.

use std::ffi::CString;

use nix::unistd::{geteuid, getgrouplist, Gid, User};

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
    /// Every group the account is in, the primary one included, as
    /// `getgrouplist` gives them (what a login's `initgroups` sets).
    pub groups: Vec<u32>,
}

/// Why an account could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("no such user `{0}` on this node; nothing was run")]
    Unknown(String),
    #[error("user `{0}` is root; jobs never run as root; nothing was run")]
    Root(String),
    #[error(
        "user `{user}` has uid {uid} on this node, below min_uid {min_uid} (system \
         accounts never run jobs); nothing was run"
    )]
    BelowMinUid {
        user: String,
        uid: u32,
        min_uid: u32,
    },
    #[error("cannot read the groups of user `{user}` on this node: {errno}; nothing was run")]
    Groups {
        user: String,
        errno: nix::errno::Errno,
    },
}

/// The lowest uid a submitter's job runs as unless `--min-uid` says
/// otherwise: below it are the system's own accounts (Debian's rule).
pub const DEFAULT_MIN_UID: u32 = 1000;

/// The account of a job's proven submitter `name`: never root, never a uid
/// under `min_uid`, with its groups read now, before any fork.
pub fn for_submitter(name: &str, min_uid: u32) -> Result<Account, AccountError> {
    let account = lookup(name)?;
    if account.uid < min_uid {
        return Err(AccountError::BelowMinUid {
            user: account.name,
            uid: account.uid,
            min_uid,
        });
    }
    Ok(account)
}

/// Whose account jobs run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobAccounts {
    /// The daemon's own (it is not root).
    Own,
    /// Every job runs as this one (`--user`).
    One(Account),
    /// Each job runs as its proven submitter (`--run-as-submitter`), whose
    /// uid must be at least `min_uid`.
    Submitter { min_uid: u32 },
}

impl JobAccounts {
    /// The account a job of `user` runs as; `None` for the daemon's own.
    pub fn for_user(&self, user: &str) -> Result<Option<Account>, AccountError> {
        match self {
            JobAccounts::Own => Ok(None),
            JobAccounts::One(account) => Ok(Some(account.clone())),
            JobAccounts::Submitter { min_uid } => for_submitter(user, *min_uid).map(Some),
        }
    }

    /// For the start-up log.
    pub fn describe(&self) -> String {
        match self {
            JobAccounts::Own => "(self)".to_owned(),
            JobAccounts::One(account) => account.name.clone(),
            JobAccounts::Submitter { min_uid } => format!("(each submitter, uid >= {min_uid})"),
        }
    }
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
    let groups = groups_of(&user)?;
    Ok(Account {
        name: user.name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        home: user.dir,
        groups,
    })
}

/// The groups `initgroups` would give `user`: its primary group and every
/// group of the group database that lists it.
fn groups_of(user: &User) -> Result<Vec<u32>, AccountError> {
    let failed = |errno| AccountError::Groups {
        user: user.name.clone(),
        errno,
    };
    // The name came from the password database, which holds no NUL bytes.
    let name = CString::new(user.name.as_bytes()).map_err(|_| failed(nix::errno::Errno::EINVAL))?;
    let groups = getgrouplist(&name, user.gid).map_err(failed)?;
    Ok(groups.into_iter().map(Gid::as_raw).collect())
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
    fn nobody_resolves_with_its_primary_group() {
        let nobody = lookup("nobody").unwrap();
        assert_ne!(nobody.uid, 0);
        assert_eq!(nobody.name, "nobody");
        assert!(nobody.groups.contains(&nobody.gid), "{:?}", nobody.groups);
    }

    #[test]
    fn submitters_below_min_uid_are_refused() {
        // bin is uid 2 on Debian; nobody is 65534.
        let err = for_submitter("bin", DEFAULT_MIN_UID).unwrap_err();
        assert!(
            matches!(err, AccountError::BelowMinUid { uid: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("below min_uid 1000"), "{err}");
        assert!(for_submitter("nobody", DEFAULT_MIN_UID).is_ok());
        assert!(matches!(
            for_submitter("root", 0),
            Err(AccountError::Root(_))
        ));
    }
}
