//! The daemons' HTTP listeners (`/metrics`, and the gatekeeper's
//! dashboard): read-only views served with axum on the hyper and tokio
//! stack tonic stands on, under the same rule as the gRPC listeners:
//! loopback only unless TLS or the token protects them. Under mutual TLS
//! the listener speaks HTTPS and wants a certificate from the cluster CA
//! (a browser presents a user certificate); in token mode every request
//! carries the token (`Authorization: Bearer`, or `?token=` for a browser);
//! `--http-insecure` serves plain HTTP beyond loopback anyway, and warns.
//! Nothing served here changes the farm: every route is a GET.
//!
//! Layout:
//! - `options`: the flags and config keys, and the access rule.
//! - `listener`: serving a router under that rule, plain or over TLS.

mod listener;
mod options;

pub use listener::{bind, serve};
pub use options::{WebAccess, WebError, WebFile, WebFlags, WebListen};
