//! Real accounts for the tests of jobs that run as their submitter:
//! created with `useradd` when missing (uid 1000 or above, a home of mode
//! 700), a private directory of each in the tree the test builds in, and
//! commands that run as the account, as a user's own shell would.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use nix::unistd::User;

/// One account of this machine.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// Tests in one binary run at once; two useradds of one name must not.
static USERADD: Mutex<()> = Mutex::new(());

/// The account `name`, created first when missing (needs root), with a
/// private home.
pub fn ensure(name: &str) -> Account {
    let _one_at_a_time = USERADD.lock().unwrap_or_else(|p| p.into_inner());
    if lookup(name).is_none() {
        let output = Command::new("useradd")
            .args(["--create-home", "--user-group", "--shell", "/bin/sh"])
            .arg(name)
            .output()
            .expect("run useradd");
        // 9: the name was taken meanwhile (another test binary).
        assert!(
            output.status.success() || output.status.code() == Some(9),
            "useradd {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let account = lookup(name).unwrap_or_else(|| panic!("no account {name} after useradd"));
    assert!(account.uid >= 1000, "{name} has uid {}", account.uid);
    std::fs::create_dir_all(&account.home).unwrap();
    std::os::unix::fs::chown(&account.home, Some(account.uid), Some(account.gid)).unwrap();
    std::fs::set_permissions(&account.home, PermissionsExt::from_mode(0o700)).unwrap();
    account
}

fn lookup(name: &str) -> Option<Account> {
    let user = User::from_name(name).ok().flatten()?;
    Some(Account {
        name: user.name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        home: user.dir,
    })
}

impl Account {
    /// `program` run as this account, with its HOME, USER and LOGNAME, as
    /// a login of it would start it.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        command
            .uid(self.uid)
            .gid(self.gid)
            .env("HOME", &self.home)
            .env("USER", &self.name)
            .env("LOGNAME", &self.name);
        command
    }

    /// Gives `path` and everything below it to this account.
    pub fn give(&self, path: &Path) {
        let status = Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", self.uid, self.gid))
            .arg(path)
            .status()
            .expect("run chown");
        assert!(status.success(), "chown {}", path.display());
    }
}

/// The tree the users build in: `MEXEC_USERS_TREE` when set (a network
/// file system's export, say), else a fresh directory on the local disk.
/// Each user gets a private directory in it.
#[derive(Debug)]
pub struct Tree {
    root: PathBuf,
    _made: Option<tempfile::TempDir>,
}

impl Tree {
    pub fn new() -> Tree {
        match std::env::var_os("MEXEC_USERS_TREE") {
            Some(root) => Tree::at(Path::new(&root)),
            None => {
                let made = tempfile::Builder::new()
                    .prefix("mexec-users-")
                    .tempdir_in("/tmp")
                    .expect("a tree");
                let mut tree = Tree::at(made.path());
                tree._made = Some(made);
                tree
            }
        }
    }

    /// The tree at `root`, which outlives it (a network file system's
    /// mount, say), open to everyone to look into as `/home` is.
    pub fn at(root: &Path) -> Tree {
        std::fs::set_permissions(root, PermissionsExt::from_mode(0o755)).unwrap();
        Tree {
            root: root.to_owned(),
            _made: None,
        }
    }

    /// A fresh directory of `account`'s own in the tree, mode 700, as a
    /// home directory is.
    pub fn private_dir(&self, account: &Account, label: &str) -> PathBuf {
        let dir = self.root.join(format!("{}-{label}", account.name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(account.uid), Some(account.gid)).unwrap();
        std::fs::set_permissions(&dir, PermissionsExt::from_mode(0o700)).unwrap();
        dir
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}
