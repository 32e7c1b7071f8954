//! What both daemons (`mexecd` and `mexec-gatekeeper`) share on purpose:
//! the options every daemon takes, the way a daemon serves its gRPC
//! service, the per-peer stream cap and the signals that stop it. Each role
//! declares only its own options and its service; this module keeps the
//! two alike where they must be (the safety rule on open listeners, TLS,
//! keepalive, health).
//!
//! Layout:
//! - `options`: the shared flags and config keys, flattened into each
//!   role's, and their resolution (loopback unless authenticated).
//! - `connections`: accepting under caps per peer and in all, with a
//!   deadline for a connection's first bytes.
//! - `serve`: one `serve` for both daemons: TLS, access checks, HTTP/2
//!   keepalive, stream caps, health, graceful stop.
//! - `tls_accept`: the TLS handshake of the gRPC ports, every failure on
//!   record; `handshake_failure` says why one failed.
//! - `stream_limits`: the cap on streams one peer may hold open.
//! - `shutdown`: the signals that stop a daemon.

use std::pin::Pin;

use tokio_stream::Stream;

mod connections;
mod handshake_failure;
mod options;
mod serve;
pub mod shutdown;
mod stream_limits;
mod tls_accept;

pub use connections::{incoming, Conn};
#[cfg(test)]
pub use options::assert_flags;
pub use options::{
    non_empty, open_door, BindError, DaemonFile, DaemonFlags, DaemonSettings, DaemonSettingsError,
    NoOtherKeys, Role,
};
pub use serve::serve;
pub use stream_limits::{
    PeerStreams, StreamPlace, TooMany, DEFAULT_MAX_STREAMS_PER_PEER, MAX_STREAMS_PER_CONNECTION,
};
pub use tls_accept::{Handshake, Here};

/// A streaming answer, as the daemons' handlers return them.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send + 'static>>;
