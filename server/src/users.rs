//! The account jobs run as.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;

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
    let c_name = CString::new(name).map_err(|_| AccountError::Unknown(name.to_owned()))?;
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0u8; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer refers to a live buffer of the stated size, and
    // getpwnam_r writes only into them.
    let rc = unsafe {
        libc::getpwnam_r(
            c_name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return Err(AccountError::Unknown(name.to_owned()));
    }
    if pwd.pw_uid == 0 {
        return Err(AccountError::Root(name.to_owned()));
    }
    // SAFETY: on success pw_name points at a NUL-terminated string in buf.
    let name = unsafe { CStr::from_ptr(pwd.pw_name) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: as pw_name, pw_dir is a NUL-terminated string in buf.
    let home = unsafe { CStr::from_ptr(pwd.pw_dir) };
    let home = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(home.to_bytes()));
    Ok(Account {
        name,
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
        home,
    })
}

/// Whether this process runs with root's effective user id.
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The name of the effective user, for logs and messages.
pub fn current_user_name() -> String {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    std::env::var("USER").unwrap_or_else(|_| format!("uid {uid}"))
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
