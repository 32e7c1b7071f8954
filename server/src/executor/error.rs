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
        "working directory {0} does not exist here (is the shared file system mounted on this node?)"
    )]
    CwdMissing(String),
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
    UserDenied(#[from] crate::auth::UserDenied),
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
            JobError::UserDenied(_)
            | JobError::ProgramDenied { .. }
            | JobError::OptionDenied { .. } => Refusal::Denied,
            JobError::TooManyStreams { .. } => Refusal::Limit,
            JobError::NoRequest => return None,
            JobError::CwdMissing(_) => Refusal::CwdMissing,
            JobError::CwdDenied { .. } => Refusal::CwdDenied,
            JobError::Draining => Refusal::Draining,
            JobError::Full { .. } => Refusal::Busy,
            JobError::Lease(_) => Refusal::Lease,
        })
    }

    /// The working directory, when that is what is missing here.
    pub fn missing_cwd(&self) -> Option<&str> {
        match self {
            JobError::CwdMissing(cwd) => Some(cwd),
            _ => None,
        }
    }

    /// The status a client sees, naming `node`.
    pub fn into_status(self, node: &str) -> Status {
        let message = match self {
            JobError::Draining | JobError::Full { .. } | JobError::TooManyStreams { .. } => {
                format!("node {node} {self}")
            }
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
        let s = JobError::CwdMissing("/src/x".into()).into_status("n2");
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert!(s.message().starts_with("node n2: working directory /src/x"));
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
