//! `mpmake`: runs GNU make with a jobserver sized to the live cluster, the
//! compilers routed through `mexec`, a live status line and a summary.
//!
//! Layout:
//! - `args`: mpmake's own options apart from make's; `-j` and `CC=` in them.
//! - `capacity`: the cluster's slots, measured once and then followed.
//! - `tokens`: the jobserver's token pool, resized with the cluster.
//! - `routing`: the masquerade directory and environment that send
//!   compilers through `mexec`.
//! - `progress`: the live status line.
//! - `summary`: where the jobs ran, from the job log.
//! - `signals`: passing SIGTERM and SIGHUP on to make.

pub mod args;
pub mod capacity;
pub mod progress;
pub mod routing;
pub mod signals;
pub mod summary;
pub mod tokens;
