//! A failed job in a directory the job account cannot write gets a note
//! saying which account it ran as and why: the compiler's own "Permission
//! denied" does not say that the job was not running as the user who
//! started the build.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use mexec_proto::v1::{exit, Exit};

use super::account::Account;

/// The note for `exit` of a job that ran as `account` in `cwd`, when the
/// job failed and the account cannot write `cwd`.
pub fn note(account: Option<&Account>, cwd: &Path, exit: &Exit) -> Option<String> {
    let account = account?;
    let failed = !matches!(exit.status, Some(exit::Status::Code(0)));
    if !failed || !exit.error.is_empty() || writable(cwd, account) {
        return None;
    }
    Some(format!(
        "the job ran as `{}` (this node's job account, mexecd --user), which cannot write {}: \
         jobs do not run as the user who started them; make the tree writable by that \
         account (or its group), or give mexecd an account that can",
        account.name,
        cwd.display()
    ))
}

/// Whether `account` may create files in `dir`, by its mode bits.
fn writable(dir: &Path, account: &Account) -> bool {
    let Ok(meta) = dir.metadata() else {
        return true;
    };
    let bit = if meta.uid() == account.uid {
        0o200
    } else if meta.gid() == account.gid {
        0o020
    } else {
        0o002
    };
    meta.mode() & bit != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_failed_job_in_a_directory_the_account_cannot_write_gets_the_note() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().metadata().unwrap();
        let stranger = Account {
            name: "jobs".into(),
            uid: meta.uid() + 1,
            gid: meta.gid() + 1,
            home: "/".into(),
            groups: Vec::new(),
        };
        let failed = Exit {
            status: Some(exit::Status::Code(1)),
            ..Exit::default()
        };
        let note = note(Some(&stranger), dir.path(), &failed).unwrap();
        assert!(
            note.contains("ran as `jobs`") && note.contains("cannot write"),
            "{note}"
        );
        let fine = Exit {
            status: Some(exit::Status::Code(0)),
            ..Exit::default()
        };
        assert_eq!(super::note(Some(&stranger), dir.path(), &fine), None);
        assert_eq!(super::note(None, dir.path(), &failed), None);
    }
}
