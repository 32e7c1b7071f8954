//! `mexec-cert`: makes the cluster CA and issues node and user
//! certificates for mutual TLS.
//!
//! ```text
//! mexec-cert ca   --dir /etc/mexec/pki
//! mexec-cert node build-01 --dir /etc/mexec/pki --host build-01 --host 10.0.0.11
//! mexec-cert user alice    --dir /etc/mexec/pki
//! ```

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mexec_server::certs::{self, Issued, Kind, Validity};

#[derive(Debug, Parser)]
#[command(
    name = "mexec-cert",
    version,
    about = "Make the mexec cluster CA and issue node and user certificates"
)]
struct Cli {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// Create the cluster CA: DIR/ca.pem (give to every node and user) and
    /// DIR/ca-key.pem (keep secret; only needed to issue certificates).
    Ca {
        /// Directory for the CA's files.
        #[arg(long)]
        dir: PathBuf,
        /// Days the CA is valid.
        #[arg(long, default_value_t = 3650)]
        days: i64,
    },
    /// Issue a node certificate (executor or gatekeeper): DIR/NAME.pem and
    /// DIR/NAME-key.pem. The name is the node's --name.
    Node {
        name: String,
        /// Directory holding the CA; the certificate is written there too
        /// unless --out is given.
        #[arg(long)]
        dir: PathBuf,
        /// A host name or IP address clients use to reach the node
        /// (repeatable; the node name is always included) [default:
        /// localhost and 127.0.0.1].
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Where to write the certificate and key.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 825)]
        days: i64,
    },
    /// Issue a user certificate: DIR/NAME.pem and DIR/NAME-key.pem. The
    /// name is the user jobs are accounted to and checked against allow lists.
    User {
        name: String,
        /// Directory holding the CA.
        #[arg(long)]
        dir: PathBuf,
        /// Where to write the certificate and key.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
}

fn main() {
    if let Err(err) = real_main() {
        eprintln!("mexec-cert: {err:#}");
        std::process::exit(2);
    }
}

fn real_main() -> anyhow::Result<()> {
    match Cli::parse().what {
        What::Ca { dir, days } => {
            let (cert, _) = certs::paths(&dir, "ca");
            if cert.exists() {
                return Err(certs::CertError::Exists(cert).into());
            }
            let ca = certs::new_ca("mexec cluster CA", Validity::days(days))?;
            let (cert, key) = ca.write(&dir, "ca")?;
            println!("{}\n{}", cert.display(), key.display());
        }
        What::Node {
            name,
            dir,
            mut hosts,
            out,
            days,
        } => {
            if hosts.is_empty() {
                hosts = vec!["localhost".into(), "127.0.0.1".into()];
            }
            issue_into(&dir, out, Kind::Node, &name, &hosts, days)?;
        }
        What::User {
            name,
            dir,
            out,
            days,
        } => issue_into(&dir, out, Kind::User, &name, &[], days)?,
    }
    Ok(())
}

fn issue_into(
    dir: &std::path::Path,
    out: Option<PathBuf>,
    kind: Kind,
    name: &str,
    hosts: &[String],
    days: i64,
) -> anyhow::Result<()> {
    let ca = Issued::read(dir, "ca").context("run `mexec-cert ca --dir DIR` first")?;
    let issued = certs::issue(&ca, kind, name, hosts, Validity::days(days))?;
    let (cert, key) = issued.write(out.as_deref().unwrap_or(dir), name)?;
    println!("{}\n{}", cert.display(), key.display());
    Ok(())
}
