//! The mexec daemons as a library, so tests can start them in-process on an
//! already-bound listener; the binaries only parse flags and call `run`.
//!
//! Layout:
//! - `config`: `mexecd` settings from flags, `MEXEC_*` variables and TOML,
//!   and the safety checks on them (loopback unless authenticated, never
//!   run jobs as root).
//! - `executor`: the `Executor` gRPC service and everything a job needs.
//! - `gatekeeper`: membership, fair queueing, leases and relayed runs.
//! - `auth`: who may call (token, certificate, allow list) and for whom a
//!   job runs.
//! - `certs`: issuing the cluster CA, node and user certificates.
//! - `streams`: the cap on streams one peer may hold open.
//! - `users`: looking up the account jobs run as.
//! - `shutdown`: the signals that stop a daemon.

pub mod auth;
pub mod certs;
pub mod config;
pub mod executor;
pub mod gatekeeper;
pub mod shutdown;
pub mod streams;
pub mod users;
