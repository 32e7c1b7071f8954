//! Toolchain fingerprints: what decides a compiler's output on one machine,
//! so that a job goes only to nodes whose compiler would produce what the
//! client's would.
//!
//! A fingerprint covers the driver and the programs it runs (`cc1`,
//! `cc1plus`, `as`, `collect2`, `ld`, the LTO plugin and wrapper, the
//! specs file) by content, plus the driver's version and target. Making
//! one runs the driver a dozen times and reads some 60 MB, so it is kept
//! with the identity (`Stamp`) of every file it read and reused for as
//! long as none of them changed.
//!
//! Layout:
//! - `names`: which programs are compilers.
//! - `stamp`: a file's identity: path, device, inode, size, mtime.
//! - `probe`: asking a driver what it runs, and hashing it all.
//! - `matching`: whether a node's fingerprint matches the client's, and
//!   the one line that says how not.

mod matching;
mod names;
mod probe;
mod stamp;

use std::path::PathBuf;

use mexec_proto::v1::ToolchainFingerprint;
use serde::{Deserialize, Serialize};

pub use matching::{mismatch, Mismatch};
pub use names::is_compiler;
pub use probe::{compute, resolve_program, ProbeError, RunAs};
pub use stamp::Stamp;

/// The variable that turns the check off (`MEXEC_TOOLCHAIN=any`).
pub const CHECK_VARIABLE: &str = "MEXEC_TOOLCHAIN";

/// A compiler's fingerprint, with the identity of every file behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// The program as the job names it (argv[0]).
    pub program: String,
    /// The driver found for it.
    pub driver: PathBuf,
    /// `-dumpfullversion` (else `-dumpversion`).
    pub version: String,
    /// `-dumpmachine`.
    pub target: String,
    /// SHA-256 in hex over the version, the target and every file's content.
    pub digest: String,
    /// The files read, as they were when they were read.
    pub files: Vec<Stamp>,
}

impl Fingerprint {
    /// Whether every file is still the one that was read (a stat each).
    pub fn is_current(&self) -> bool {
        self.files.iter().all(Stamp::is_current)
    }

    /// The wire form, without the stamps.
    pub fn to_proto(&self) -> ToolchainFingerprint {
        ToolchainFingerprint {
            program: self.program.clone(),
            digest: self.digest.clone(),
            version: self.version.clone(),
            target: self.target.clone(),
            driver: self.driver.to_string_lossy().into_owned(),
        }
    }
}

/// A fingerprint for people: "12.2.0 x86_64-linux-gnu 3fa2c1d09b7e".
pub fn shown(fingerprint: &ToolchainFingerprint) -> String {
    let short = &fingerprint.digest[..fingerprint.digest.len().min(12)];
    format!("{} {} {short}", fingerprint.version, fingerprint.target)
}
