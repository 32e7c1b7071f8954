//! Generated bindings of the mexec protocol, package `mexec.v1`.
//!
//! Layout:
//! - `v1`: messages and the `Executor` and `Gatekeeper` services' clients
//!   and servers, generated from `proto/mexec/v1/*.proto` at build time.

#![allow(missing_debug_implementations)]

// A `RunRequest` holds its job once per stream, next to small stdin and
// signal messages: boxing the job would buy nothing.
#[allow(clippy::large_enum_variant)]
pub mod v1 {
    tonic::include_proto!("mexec.v1");
}
