//! The mexec daemons as a library, so tests can start them in-process on an
//! already-bound listener; the binaries only parse flags and call `run`.
//!
//! Layout:
//! - `executor`: `mexecd`: its settings, the `Executor` gRPC service and
//!   everything a job needs.
//! - `gatekeeper`: `mexec-gatekeeper`: its settings, membership, fair
//!   queueing, leases and relayed runs.
//! - `daemon`: what both daemons share: the common options and their
//!   safety rule, one `serve`, the per-peer stream cap, the stop signals.
//! - `request_limits`: the sizes of a job request, checked by both roles.
//! - `auth`: who may call (token, certificate, allow list) and for whom a
//!   job runs.
//! - `wrong_service`: each daemon's answer for the other's service.
//! - `refusal_log`: every refusal on record, rate-limited.
//! - `certs`: issuing the cluster CA, node and user certificates.
//! - `metrics`: the Prometheus metrics of both daemons.
//! - `web`: the daemons' HTTP listeners (metrics, the dashboard) and
//!   their access rule.

pub mod auth;
pub mod certs;
pub mod daemon;
pub mod executor;
pub mod gatekeeper;
pub mod metrics;
pub mod refusal_log;
pub mod request_limits;
pub mod web;
pub mod wrong_service;
