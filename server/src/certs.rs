//! Issuing the cluster's certificates (`mexec-cert`): one CA, node
//! certificates for executors and the gatekeeper, user certificates for
//! people. What tells a node from a user is the extended key usage (see
//! `mexec_common::tls`); the common name is the node's or user's name.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An executor or gatekeeper: serves, and connects to other nodes.
    Node,
    /// A person running `mexec`: connects only.
    User,
}

/// A certificate and its private key, PEM encoded.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Why a certificate could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot generate the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} already exists; remove it first (a CA is not replaced by accident)")]
    Exists(PathBuf),
    #[error(
        "{0} already exists (or is a symlink); remove it first: a key is only written into a new file"
    )]
    WouldOverwrite(PathBuf),
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clocks differ a little) for `days` days.
    pub fn days(days: i64) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(days),
        }
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "mexec");
    dn
}

/// A new self-signed cluster CA.
pub fn new_ca(common_name: &str, validity: Validity) -> Result<Issued, CertError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name);
    // The CA signs leaf certificates only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    let cert = params.self_signed(&key)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A node or user certificate for `common_name`, signed by `ca`. `hosts`
/// are the names and addresses clients use to reach a node, besides its
/// name (ignored for users).
pub fn issue(
    ca: &Issued,
    kind: Kind,
    common_name: &str,
    hosts: &[String],
    validity: Validity,
) -> Result<Issued, CertError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = match kind {
        Kind::Node => {
            // The node's name is always in: the gatekeeper checks a node
            // by its name when it relays to it.
            let mut names = vec![common_name.to_owned()];
            names.extend(hosts.iter().filter(|h| *h != common_name).cloned());
            CertificateParams::new(names)?
        }
        Kind::User => CertificateParams::default(),
    };
    params.distinguished_name = name(common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = match kind {
        Kind::Node => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Kind::User => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Where a certificate named `stem` lives in `dir`: `stem.pem` and
/// `stem-key.pem`.
pub fn paths(dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}-key.pem")),
    )
}

impl Issued {
    /// Reads `stem.pem` and `stem-key.pem` from `dir`.
    pub fn read(dir: &Path, stem: &str) -> Result<Issued, CertError> {
        let (cert, key) = paths(dir, stem);
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| CertError::Read {
                path: path.to_owned(),
                source,
            })
        };
        Ok(Issued {
            cert_pem: read(&cert)?,
            key_pem: read(&key)?,
        })
    }

    /// Writes `stem.pem` and `stem-key.pem` (mode 0600) into `dir` as new
    /// files; an existing file or symlink of either name is an error, so
    /// nothing is overwritten. Returns their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), CertError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let (cert, key) = paths(dir, stem);
        let write = |path: &Path, text: &str, mode: u32| {
            let wrap = |source: std::io::Error| match source.kind() {
                std::io::ErrorKind::AlreadyExists => CertError::WouldOverwrite(path.to_owned()),
                _ => CertError::Write {
                    path: path.to_owned(),
                    source,
                },
            };
            std::fs::create_dir_all(dir).map_err(wrap)?;
            // A new file only, never through a symlink: an existing file
            // would keep its own mode (a key left readable by others), and
            // a planted link would send the key wherever it points.
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .mode(mode)
                .open(path)
                .and_then(|mut f| f.write_all(text.as_bytes()))
                .map_err(wrap)
        };
        // Both names free first, so a refusal leaves no half-written pair;
        // `create_new` still catches one that appears in between.
        for path in [&cert, &key] {
            if path.symlink_metadata().is_ok() {
                return Err(CertError::WouldOverwrite(path.clone()));
            }
        }
        write(&cert, &self.cert_pem, 0o644)?;
        write(&key, &self.key_pem, 0o600)?;
        Ok((cert, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mexec_common::tls::{peer_from_der, Peer};

    fn der(pem: &str) -> Vec<u8> {
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        block.contents
    }

    #[test]
    fn nodes_and_users_are_told_apart_by_their_certificates() {
        let ca = new_ca("test CA", Validity::days(1)).unwrap();
        let node = issue(
            &ca,
            Kind::Node,
            "n1",
            &["127.0.0.1".into()],
            Validity::days(1),
        )
        .unwrap();
        let user = issue(&ca, Kind::User, "alice", &[], Validity::days(1)).unwrap();
        assert_eq!(
            peer_from_der(&der(&node.cert_pem)),
            Some(Peer::Node("n1".into()))
        );
        assert_eq!(
            peer_from_der(&der(&user.cert_pem)),
            Some(Peer::User("alice".into()))
        );
    }

    #[test]
    fn keys_go_only_into_new_files_never_through_a_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca("test CA", Validity::days(1)).unwrap();
        // A key file left readable by others, and a link planted where a
        // key will go: neither is written into.
        let open_key = dir.path().join("n1-key.pem");
        std::fs::write(&open_key, "old").unwrap();
        std::fs::set_permissions(&open_key, PermissionsExt::from_mode(0o644)).unwrap();
        let err = ca.write(dir.path(), "n1").unwrap_err();
        assert!(matches!(err, CertError::WouldOverwrite(_)), "{err}");
        let elsewhere = dir.path().join("elsewhere");
        std::os::unix::fs::symlink(&elsewhere, dir.path().join("n2-key.pem")).unwrap();
        let err = ca.write(dir.path(), "n2").unwrap_err();
        assert!(matches!(err, CertError::WouldOverwrite(_)), "{err}");
        assert!(!elsewhere.exists(), "the key went through the link");

        let (_, key) = ca.write(dir.path(), "n3").unwrap();
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
