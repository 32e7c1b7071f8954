//! Why a job was refused before it started, and how that reads as a gRPC
//! status. Every message names the node, because the client runs many.

use mexec_common::refusal::Refusal;
use tonic::Status;

use super::admission::Refusal as AdmissionRefusal;
use super::unmounted::top_missing;

/// A job refused before its process exists.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JobError {
    #[error("the first message of a Run stream must be the job (`start`)")]
    NoStart,
    #[error("the client closed the stream before sending the job")]
    NoRequest,
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("the job has an empty argv")]
    EmptyArgv,
    #[error("working directory {0} is not an absolute path")]
    RelativeCwd(String),
    #[error(
        "working directory {path} does not exist here{} (is the shared file system mounted \
         on this node?)",
        waited_note(waited)
    )]
    CwdMissing {
        path: String,
        /// How long the node waited for it to appear (`cwd_wait_ms`).
        waited: std::time::Duration,
    },
    #[error("working directory {path} is not accessible to the job account {user} here")]
    CwdDenied { path: String, user: String },
    #[error("is draining and takes no new jobs")]
    Draining,
    #[error("is full ({running} jobs running, {queued} queued)")]
    Full { running: u32, queued: u32 },
    #[error("no job arrived within {0:?} of opening the stream")]
    StartTimeout(std::time::Duration),
    #[error(transparent)]
    TooLarge(#[from] crate::request_limits::TooLarge),
    #[error("{0}")]
    Identity(crate::auth::IdentityError),
    #[error("{0}")]
    NoAccount(#[from] super::account::AccountError),
    #[error(
        "program `{program}` is not allowed by this node's command policy \
         (allowed_programs: {policy})"
    )]
    ProgramDenied { program: String, policy: String },
    #[error(
        "option `{option}` of `{program}` is refused by this node's command policy: \
         it makes the program load or run code the policy did not check"
    )]
    OptionDenied { program: String, option: String },
    #[error("has too many open streams from {peer} ({limit}); try again later")]
    TooManyStreams { peer: String, limit: usize },
    #[error("{0}")]
    Lease(String),
    #[error("lacks what the job requires: {0}")]
    Unmet(String),
    #[error("{0}")]
    Toolchain(String),
}

impl From<AdmissionRefusal> for JobError {
    fn from(refusal: AdmissionRefusal) -> Self {
        match refusal {
            AdmissionRefusal::Draining => JobError::Draining,
            AdmissionRefusal::Full { running, queued } => JobError::Full { running, queued },
        }
    }
}

impl JobError {
    /// What a failure to read the job's message means: a request that does
    /// not decode (not protobuf, bad UTF-8 in a text field, over the size
    /// limit) is malformed, and says why; anything else is a client that
    /// went away.
    pub fn reading_job(status: &Status) -> JobError {
        let undecodable = status.code() == tonic::Code::OutOfRange
            || (status.code() == tonic::Code::Internal && status.message().contains("decode"));
        if undecodable {
            JobError::Malformed(status.message().to_owned())
        } else {
            JobError::NoRequest
        }
    }

    /// The kind of refusal clients act on; `None` for a stream the client
    /// itself abandoned, which nobody reads.
    fn refusal(&self) -> Option<Refusal> {
        Some(match self {
            JobError::NoStart
            | JobError::Malformed(_)
            | JobError::EmptyArgv
            | JobError::RelativeCwd(_)
            | JobError::TooLarge(_) => Refusal::Malformed,
            JobError::StartTimeout(_) => Refusal::StartTimeout,
            JobError::Identity(identity) => identity.refusal(),
            JobError::NoAccount(_)
            | JobError::ProgramDenied { .. }
            | JobError::OptionDenied { .. } => Refusal::Denied,
            JobError::TooManyStreams { .. } => Refusal::Limit,
            JobError::NoRequest => return None,
            JobError::CwdMissing { .. } => Refusal::CwdMissing,
            JobError::CwdDenied { .. } => Refusal::CwdDenied,
            JobError::Draining => Refusal::Draining,
            JobError::Full { .. } => Refusal::Busy,
            JobError::Lease(_) => Refusal::Lease,
            JobError::Unmet(_) => Refusal::UnmetRequirement,
            JobError::Toolchain(_) => Refusal::Toolchain,
        })
    }

    /// The working directory, when that is what is missing here.
    pub fn missing_cwd(&self) -> Option<&str> {
        match self {
            JobError::CwdMissing { path, .. } => Some(path),
            _ => None,
        }
    }

    /// The status a client sees, naming `node`.
    pub fn into_status(self, node: &str) -> Status {
        let message = match self {
            JobError::Draining
            | JobError::Full { .. }
            | JobError::TooManyStreams { .. }
            | JobError::Unmet(_) => format!("node {node} {self}"),
            // The mismatch names the node itself.
            JobError::Toolchain(_) => self.to_string(),
            _ => format!("node {node}: {self}"),
        };
        let unmounted = self.missing_cwd().map(|cwd| top_missing(cwd.as_ref()));
        let mut status = match self.refusal() {
            Some(refusal) => refusal.status(message),
            None => Status::cancelled(message),
        };
        if let Some(top) = unmounted {
            mexec_common::unmounted::attach(&mut status, &top.to_string_lossy());
        }
        status
    }
}

/// ", after waiting 2.0 s for it to appear", when the node waited.
fn waited_note(waited: &std::time::Duration) -> String {
    if waited.is_zero() {
        String::new()
    } else {
        format!(
            " after waiting {:.1} s for it to appear (cwd_wait_ms)",
            waited.as_secs_f64()
        )
    }
}

/// How a job the node killed on shutting down ends: not the command's
/// outcome, and no refusal either (the job had started), so a status error
/// lets the client rerun a repeatable job elsewhere instead of reporting
/// SIGKILL.
pub fn shut_down(node: &str) -> Status {
    Status::unavailable(format!("node {node} shut down before the job finished"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_name_the_node_and_carry_the_right_code_and_kind() {
        use tonic::Code;
        let missing = |waited| JobError::CwdMissing {
            path: "/src/x".into(),
            waited,
        };
        let s = missing(std::time::Duration::ZERO).into_status("n2");
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(Refusal::of(&s), Some(Refusal::CwdMissing));
        assert_eq!(
            s.message(),
            "node n2: working directory /src/x does not exist here (is the shared file \
             system mounted on this node?)"
        );
        let s = missing(std::time::Duration::from_millis(2500)).into_status("n2");
        assert_eq!(
            s.message(),
            "node n2: working directory /src/x does not exist here after waiting 2.5 s for it \
             to appear (cwd_wait_ms) (is the shared file system mounted on this node?)"
        );
        let s = JobError::from(AdmissionRefusal::Full {
            running: 4,
            queued: 4,
        })
        .into_status("n1");
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.message(), "node n1 is full (4 jobs running, 4 queued)");
        assert_eq!(Refusal::of(&s), Some(Refusal::Busy));
        let s = JobError::Draining.into_status("n");
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(Refusal::of(&s), Some(Refusal::Draining));
    }
}
