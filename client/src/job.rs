//! The job as this process would run it locally: argv, cwd, environment,
//! umask, and who and what build it belongs to; and the executors' view of
//! it (`remote_view`), which the protocol message carries.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use mexec_proto::v1::{EnvVar, JobSpec};

use crate::os;
use crate::remote_view::{RemoteView, ViewError};
use crate::settings::Settings;

/// A command to run, with everything that makes it behave as locally.
/// `argv`, `cwd` and `env` are this machine's (for a local run); `remote`
/// is what the executors get.
#[derive(Debug, Clone)]
pub struct Job {
    pub argv: Vec<OsString>,
    pub cwd: PathBuf,
    pub env: Vec<(OsString, OsString)>,
    pub umask: u32,
    pub job_id: String,
    pub user: String,
    pub client_host: String,
    pub build_id: String,
    pub timeout: Option<Duration>,
    /// Whether our stdin is forwarded to the job.
    pub forward_stdin: bool,
    /// Whether the job may run again elsewhere after its node is lost.
    pub repeatable: bool,
    /// argv, cwd and environment as sent to the executors.
    pub remote: RemoteView,
}

impl Job {
    /// A job for `argv` in this process's cwd, environment and umask, as
    /// `settings`' executors must see it.
    pub fn here(
        argv: Vec<OsString>,
        env: Vec<(OsString, OsString)>,
        settings: &Settings,
    ) -> Result<Job, JobError> {
        let cwd = std::env::current_dir().map_err(JobError::Cwd)?;
        let remote = RemoteView::new(&argv, &cwd, &env, settings)?;
        let client_host = mexec_common::host::name();
        let build_id = std::env::var("MEXEC_BUILD_ID")
            .unwrap_or_else(|_| format!("{client_host}:{}", os::build_scope()));
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        Ok(Job {
            job_id: format!("{client_host}-{}-{nanos:x}", std::process::id()),
            cwd,
            umask: os::current_umask(),
            // Claimed, not proven: trusted in token mode only, until mutual
            // TLS ties the user to a certificate.
            user: std::env::var("MEXEC_SUBMIT_USER").unwrap_or_else(|_| os::user_name()),
            client_host,
            build_id,
            argv,
            env,
            timeout: None,
            forward_stdin: false,
            repeatable: false,
            remote,
        })
    }

    /// argv[0], for messages.
    pub fn program(&self) -> String {
        self.argv
            .first()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The protocol message.
    pub fn spec(&self) -> JobSpec {
        JobSpec {
            argv: self.remote.argv.iter().map(|a| os_bytes(a)).collect(),
            cwd: os_bytes(&self.remote.cwd),
            env: self
                .remote
                .env
                .iter()
                .map(|(name, value)| EnvVar {
                    name: os_bytes(name),
                    value: os_bytes(value),
                })
                .collect(),
            umask: self.umask,
            job_id: self.job_id.clone(),
            user: self.user.clone(),
            client_host: self.client_host.clone(),
            build_id: self.build_id.clone(),
            timeout_ms: self.timeout.map(|t| t.as_millis() as u64).unwrap_or(0),
            forward_stdin: self.forward_stdin,
            node_environment: self.remote.node_environment,
            client_os: std::env::consts::OS.to_owned(),
        }
    }
}

/// Why a job could not be made.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("cannot read the current directory: {0}")]
    Cwd(std::io::Error),
    #[error(transparent)]
    View(#[from] ViewError),
}

/// The raw bytes of an OS string (on Unix, exactly what the kernel has; on
/// Windows UTF-8, which is what a mapped path is).
fn os_bytes(s: &std::ffi::OsStr) -> Bytes {
    Bytes::copy_from_slice(s.as_encoded_bytes())
}
