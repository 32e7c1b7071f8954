//! How an attempt ended. Whether the job *started* decides what the retry
//! loop may do next, so the types keep the two apart: a job that did not
//! start may go anywhere, one that started may run again only when it is
//! safe to repeat.

use mexec_proto::v1::Exit;

/// Why a node (or the gatekeeper) did not start the job, or give a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotStarted {
    /// Every slot and queue place is taken: wait and ask again.
    Busy(String),
    /// No connection (refused, timed out, reset).
    Unreachable(String),
    /// It answered no (draining, cwd missing, bad token...).
    Refused(String),
}

/// How an attempt on one node ended.
#[derive(Debug)]
pub enum Outcome {
    /// The job ran and ended; `exit` is its status.
    Finished { node: String, exit: Exit },
    /// The job never started there.
    NotStarted(NotStarted),
    /// The job started, then the node or the connection was lost.
    /// `stdin_consumed` says whether any of our stdin went to it, which
    /// could not be sent again.
    Lost {
        node: String,
        reason: String,
        stdin_consumed: bool,
    },
    /// The user insisted with signals; the job was abandoned.
    Abandoned { signal: i32 },
}
