//! A cluster's certificates made by the real `mexec-cert`: the cluster CA
//! with node and user certificates under `cluster/`, and a stranger's CA
//! (same name, other key) with its own users under `stranger/`.

use std::path::PathBuf;
use std::process::Command;

use crate::bin;

/// The certificates, in a directory removed on drop.
#[derive(Debug)]
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// The cluster CA with a node certificate for each of `nodes` and a
    /// user certificate for each of `users`; the stranger's CA with the
    /// same users.
    pub fn new(nodes: &[&str], users: &[&str]) -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().expect("pki dir"),
        };
        pki.cert(&["ca"], "cluster");
        pki.cert(&["ca"], "stranger");
        for node in nodes {
            pki.cert(&["node", node], "cluster");
        }
        for user in users {
            pki.cert(&["user", user], "cluster");
            pki.cert(&["user", user], "stranger");
        }
        pki
    }

    fn cert(&self, args: &[&str], sub: &str) {
        let output = Command::new(bin("mexec-cert"))
            .args(args)
            .arg("--dir")
            .arg(self.dir.path().join(sub))
            .output()
            .expect("run mexec-cert");
        assert!(output.status.success(), "mexec-cert {args:?}: {output:?}");
    }

    /// A file under the directory, as `cluster/ca.pem`.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// `--tls-ca`, `--tls-cert`, `--tls-key` for a daemon with `node`'s
    /// certificate.
    pub fn daemon_flags(&self, node: &str) -> Vec<String> {
        let mut flags = Vec::new();
        for (flag, file) in [
            ("--tls-ca", "cluster/ca.pem".to_owned()),
            ("--tls-cert", format!("cluster/{node}.pem")),
            ("--tls-key", format!("cluster/{node}-key.pem")),
        ] {
            flags.push(flag.to_owned());
            flags.push(self.path(&file).to_string_lossy().into_owned());
        }
        flags
    }

    /// Gives a `mexec` command the cluster CA and `user`'s certificate
    /// from `ca_dir` (`cluster` or `stranger`).
    pub fn client_env(&self, command: &mut Command, ca_dir: &str, user: &str) {
        command
            .env("MEXEC_TLS_CA", self.path("cluster/ca.pem"))
            .env("MEXEC_TLS_CERT", self.path(&format!("{ca_dir}/{user}.pem")))
            .env(
                "MEXEC_TLS_KEY",
                self.path(&format!("{ca_dir}/{user}-key.pem")),
            );
    }
}
