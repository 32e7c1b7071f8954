//! A job as admission leaves it: checked once (argv, sizes, working
//! directory, command policy) and decoded once into what starting it needs,
//! so nothing after admission checks or decodes the request again.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mexec_proto::v1::JobSpec;

use super::account::Account;
use super::environment;
use super::error::JobError;
use super::policy::{CommandPolicy, Program};
use crate::request_limits;

/// A job that passed every check made before admission.
#[derive(Debug)]
pub struct ValidJob {
    /// The request as sent: ids and names for the log, environment, umask.
    pub spec: JobSpec,
    /// argv as the system takes it; never empty, `argv[0]` never empty.
    pub argv: Vec<OsString>,
    /// The working directory, absolute, a directory at admission.
    pub cwd: PathBuf,
    /// The file to start, opened and checked when a command policy is set
    /// (so what runs is what was checked); otherwise `argv[0]` is searched
    /// for on the job's PATH as the job starts, as a shell would.
    pub program: Option<Program>,
    /// `argv[0]` as text, for messages and the log.
    pub argv0: String,
    /// The account the job runs as; `None` for the daemon's own. Looked up
    /// (with its groups) at admission, so the spawn only applies it.
    pub run_as: Option<Account>,
    /// Whether `run_as` is the submitter's own account: then HOME, USER
    /// and LOGNAME are the account's, whatever the client sent.
    pub as_submitter: bool,
    /// Where the request came from, for the refusal log.
    pub peer: Option<std::net::SocketAddr>,
}

impl ValidJob {
    /// Checks `spec` (see `validate`) and, under a command policy, resolves
    /// its program.
    pub fn new(mut spec: JobSpec, policy: Option<&CommandPolicy>) -> Result<ValidJob, JobError> {
        validate(&spec)?;
        let program = policy.map(|policy| policy.check(&spec)).transpose()?;
        if program.is_some() {
            environment::under_policy(&mut spec);
        }
        let argv: Vec<OsString> = spec
            .argv
            .iter()
            .map(|arg| OsStr::from_bytes(arg).to_owned())
            .collect();
        Ok(ValidJob {
            argv0: String::from_utf8_lossy(&spec.argv[0]).into_owned(),
            cwd: PathBuf::from(OsStr::from_bytes(&spec.cwd)),
            argv,
            program,
            spec,
            run_as: None,
            as_submitter: false,
            peer: None,
        })
    }

    /// The working directory as text, for messages.
    pub fn shown_cwd(&self) -> String {
        self.cwd.to_string_lossy().into_owned()
    }

    /// The client's timeout, when it asked for one.
    pub fn timeout(&self) -> Option<Duration> {
        (self.spec.timeout_ms > 0).then(|| Duration::from_millis(self.spec.timeout_ms))
    }
}

/// Checks a job before it is admitted: a program, sizes within the request
/// limits, and an absolute working directory that exists here.
pub fn validate(spec: &JobSpec) -> Result<(), JobError> {
    if spec.argv.is_empty() || spec.argv[0].is_empty() {
        return Err(JobError::EmptyArgv);
    }
    request_limits::check_request(spec)?;
    let cwd = Path::new(OsStr::from_bytes(&spec.cwd));
    let shown = String::from_utf8_lossy(&spec.cwd).into_owned();
    if !cwd.is_absolute() {
        return Err(JobError::RelativeCwd(shown));
    }
    if !cwd.is_dir() {
        return Err(JobError::CwdMissing {
            path: shown,
            waited: Duration::ZERO,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(argv: &[&str], cwd: &str) -> JobSpec {
        JobSpec {
            argv: argv.iter().map(|a| a.as_bytes().to_vec().into()).collect(),
            cwd: cwd.as_bytes().to_vec().into(),
            timeout_ms: 1500,
            ..JobSpec::default()
        }
    }

    #[test]
    fn a_valid_job_is_decoded_once_and_a_bad_one_says_why() {
        let job = ValidJob::new(spec(&["true", "x"], "/tmp"), None).unwrap();
        assert_eq!(job.argv, [OsString::from("true"), OsString::from("x")]);
        assert_eq!(
            (job.argv0.as_str(), job.cwd.as_path()),
            ("true", Path::new("/tmp"))
        );
        assert_eq!(job.timeout(), Some(Duration::from_millis(1500)));
        assert!(job.program.is_none());

        let err = |s| ValidJob::new(s, None).unwrap_err();
        assert_eq!(err(spec(&[], "/tmp")), JobError::EmptyArgv);
        assert_eq!(err(spec(&[""], "/tmp")), JobError::EmptyArgv);
        assert_eq!(
            err(spec(&["true"], "tmp")),
            JobError::RelativeCwd("tmp".into())
        );
        assert_eq!(
            err(spec(&["true"], "/no/such/dir")),
            JobError::CwdMissing {
                path: "/no/such/dir".into(),
                waited: Duration::ZERO
            }
        );
    }

    #[test]
    fn under_a_policy_the_program_is_resolved_at_admission() {
        let policy = CommandPolicy::new(&["true".into()]).unwrap();
        let mut allowed = spec(&["true"], "/");
        allowed.env = vec![mexec_proto::v1::EnvVar {
            name: "PATH".into(),
            value: "/usr/bin:/bin".into(),
        }];
        let job = ValidJob::new(allowed, Some(&policy)).unwrap();
        let program = job.program.as_ref().unwrap();
        assert!(program.path.ends_with("true"), "{program:?}");
        assert!(program.argv0.to_string_lossy().ends_with("/true"));
        let denied = ValidJob::new(spec(&["sh"], "/"), Some(&policy)).unwrap_err();
        assert!(matches!(denied, JobError::ProgramDenied { .. }));
    }
}
