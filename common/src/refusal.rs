//! Why a daemon said no, as data rather than as English.
//!
//! Every refusal a daemon sends is a gRPC status whose code keeps the
//! protocol's meaning (`RESOURCE_EXHAUSTED` for full, `UNAVAILABLE` for
//! draining, ...) and whose metadata names the kind of refusal under
//! `mexec-refusal`. Clients decide what to do next from the kind, never from
//! the message, so a reworded message cannot change their behaviour.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

/// The metadata key a refusal's kind travels under.
pub const METADATA_KEY: &str = "mexec-refusal";

/// The kinds of refusal, each with the gRPC code it is sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Every slot and queue place is taken: ask again later.
    Busy,
    /// The node is shutting down and takes no new jobs.
    Draining,
    /// The working directory does not exist on the node (the shared tree
    /// is not mounted there, or not yet visible).
    CwdMissing,
    /// The working directory exists but the job's account cannot use it.
    CwdDenied,
    /// No valid token or certificate.
    Unauthenticated,
    /// Authenticated, but not allowed: the allow list or the command policy.
    Denied,
    /// A request limit: too large, too many streams.
    Limit,
    /// The request itself is wrong: not a job, empty argv, bad field.
    Malformed,
    /// No job arrived within the start timeout.
    StartTimeout,
    /// The gatekeeper tried the nodes it had for a relayed job and none
    /// started it: the job did not run anywhere.
    NoNode,
    /// The node is a member of a gatekeeper's cluster and takes jobs only
    /// with a valid lease ticket from it: none came, or it was for another
    /// node or user, expired, used, or not signed with this node's key.
    Lease,
    /// The job's compiler fingerprints differently here than at the
    /// client: this node would not produce the same objects.
    Toolchain,
    /// The node lacks a property the job requires.
    UnmetRequirement,
    /// The peer's version is outside the compatibility rule
    /// (`common::version`); the message names both versions.
    Version,
    /// The client reached the other daemon (a gatekeeper's address given
    /// as a node, or the reverse); the message says which.
    WrongService,
    /// The TLS handshake failed (no client certificate, one from another
    /// CA or out of date, a client that refused the daemon's certificate,
    /// or no TLS at all): no request was read. On the wire only as the
    /// answer to a plain-text HTTP/2 client on a TLS port; otherwise it
    /// names the daemon's line on record.
    TlsHandshake,
}

impl Refusal {
    /// Every kind, for tests and exhaustive tables.
    pub const ALL: [Refusal; 16] = [
        Refusal::Busy,
        Refusal::Draining,
        Refusal::CwdMissing,
        Refusal::CwdDenied,
        Refusal::Unauthenticated,
        Refusal::Denied,
        Refusal::Limit,
        Refusal::Malformed,
        Refusal::StartTimeout,
        Refusal::NoNode,
        Refusal::Lease,
        Refusal::Toolchain,
        Refusal::UnmetRequirement,
        Refusal::Version,
        Refusal::WrongService,
        Refusal::TlsHandshake,
    ];

    /// The kind's name on the wire and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Busy => "busy",
            Refusal::Draining => "draining",
            Refusal::CwdMissing => "cwd-missing",
            Refusal::CwdDenied => "cwd-denied",
            Refusal::Unauthenticated => "unauthenticated",
            Refusal::Denied => "denied",
            Refusal::Limit => "limit",
            Refusal::Malformed => "malformed",
            Refusal::StartTimeout => "start-timeout",
            Refusal::NoNode => "no-node",
            Refusal::Lease => "lease",
            Refusal::Toolchain => "toolchain",
            Refusal::UnmetRequirement => "unmet-requirement",
            Refusal::Version => "version",
            Refusal::WrongService => "wrong-service",
            Refusal::TlsHandshake => "tls-handshake",
        }
    }

    /// The kind named `name`; `None` for a kind this version does not know
    /// (a newer peer), which the caller then treats by the status code.
    pub fn from_name(name: &str) -> Option<Refusal> {
        Refusal::ALL.into_iter().find(|kind| kind.as_str() == name)
    }

    /// The gRPC code this kind is sent with.
    pub fn code(self) -> Code {
        match self {
            Refusal::Busy => Code::ResourceExhausted,
            Refusal::Draining => Code::Unavailable,
            Refusal::CwdMissing | Refusal::CwdDenied => Code::FailedPrecondition,
            Refusal::Unauthenticated => Code::Unauthenticated,
            Refusal::Denied => Code::PermissionDenied,
            Refusal::Limit => Code::ResourceExhausted,
            Refusal::Malformed => Code::InvalidArgument,
            Refusal::StartTimeout => Code::DeadlineExceeded,
            Refusal::NoNode => Code::Unavailable,
            Refusal::Lease => Code::PermissionDenied,
            Refusal::Toolchain | Refusal::UnmetRequirement => Code::FailedPrecondition,
            Refusal::Version => Code::FailedPrecondition,
            Refusal::WrongService => Code::Unimplemented,
            Refusal::TlsHandshake => Code::Unauthenticated,
        }
    }

    /// The status a peer sends for this refusal, with `message` for people.
    pub fn status(self, message: impl Into<String>) -> Status {
        let mut status = Status::new(self.code(), message);
        status
            .metadata_mut()
            .insert(METADATA_KEY, MetadataValue::from_static(self.as_str()));
        status
    }

    /// The kind a received status carries, if it is a refusal.
    pub fn of(status: &Status) -> Option<Refusal> {
        let value = status.metadata().get(METADATA_KEY)?;
        Refusal::from_name(value.to_str().ok()?)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_a_status() {
        for kind in Refusal::ALL {
            let status = kind.status("node n1 says no");
            assert_eq!(Refusal::of(&status), Some(kind));
            assert_eq!(status.code(), kind.code());
            assert_eq!(Refusal::from_name(kind.as_str()), Some(kind));
        }
    }

    #[test]
    fn a_status_without_a_kind_or_with_an_unknown_one_is_none() {
        assert_eq!(Refusal::of(&Status::unavailable("draining")), None);
        let mut status = Status::unavailable("x");
        status
            .metadata_mut()
            .insert(METADATA_KEY, MetadataValue::from_static("from-the-future"));
        assert_eq!(Refusal::of(&status), None);
    }

    #[test]
    fn the_kind_survives_the_wire_encoding_of_a_status() {
        // What tonic sends: the status as HTTP headers, metadata included.
        let sent = Refusal::Draining.status("node n1 is draining");
        let mut headers = tonic::codegen::http::HeaderMap::new();
        sent.add_header(&mut headers).unwrap();
        let received = Status::from_header_map(&headers).unwrap();
        assert_eq!(Refusal::of(&received), Some(Refusal::Draining));
    }
}
