//! Pieces that the daemons (`mexecd`, `mexec-gatekeeper`) and the client
//! (`mexec`) share, kept here so neither depends on the other.
//!
//! Layout:
//! - `network_fs`: whether a directory is on a network file system.
//! - `nodes`: the `host:port[/slots],...` node list of `MEXEC_NODES`.
//! - `token`: the shared-secret token: reading it, sending it, checking it.
//! - `tls`: mutual TLS: loading certificates, server and client configs,
//!   the peer's identity.
//! - `config_file`: reading a TOML config file with clear errors.
//! - `host`: this machine's name and CPU count.
//! - `clock`: milliseconds since the epoch, as state files and reports use.
//! - `connector`: the one way every binary opens a channel (TLS, token,
//!   timeouts).
//! - `farm_job`: the mark a node sets in each job's environment, so a
//!   `mexec` inside a job runs its command there.
//! - `farm`: where the farm is (nodes, gatekeeper, token, TLS, the client
//!   config file), as the programs that submit work read it.
//! - `dial`: opening a client's channel, and reading why a connection
//!   failed from the error's types (its cause, what it says about TLS).
//! - `load_query`: asking executors and the gatekeeper for their load.
//! - `refusal`: the kinds of refusal a daemon sends, carried in a status's
//!   metadata so clients never read English.
//! - `lease_ticket`: the gatekeeper's signed, short-lived permission for
//!   one job of one user on one node, and the keys that sign it.
//! - `munge`: MUNGE credentials through the node's munged (libmunge
//!   loaded at run time).
//! - `telemetry`: one `init_tracing()` for every binary.
//! - `toolchain`: compiler fingerprints, so jobs go only to nodes whose
//!   compiler would produce what the client's would.
//! - `properties`: a node's properties (os, arch, libc, CPU, memory,
//!   labels) and the requirements jobs make of them.
//! - `unmounted`: a node's mark that the shared tree is not mounted there.
//! - `version`: which versions work together, and the version every
//!   request carries.

pub mod clock;
pub mod config_file;
pub mod connector;
pub mod dial;
pub mod farm;
pub mod farm_job;
pub mod host;
pub mod lease_ticket;
pub mod load_query;
pub mod munge;
#[cfg(unix)]
pub mod network_fs;
pub mod nodes;
pub mod properties;
pub mod refusal;
pub mod telemetry;
pub mod tls;
pub mod token;
pub mod toolchain;
pub mod unmounted;
pub mod version;

/// The version every binary and load report carries.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
