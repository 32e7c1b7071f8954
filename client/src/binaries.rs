//! mexec's two client binaries. On Linux `mexec` is a small front that
//! make starts for every job: it hands the job to the agent, and anything
//! else to `mexec-client` beside it, the whole client, which also serves as
//! the agent. Elsewhere `mexec` is the whole client itself.

use std::path::{Path, PathBuf};

/// The whole client's name, beside `mexec`.
pub const FULL_CLIENT: &str = "mexec-client";
/// The front's name.
pub const FRONT: &str = "mexec";

/// The `mexec` binary: this one, or the front beside the whole client.
pub fn front() -> PathBuf {
    let exe = running();
    match is_full_client(&exe) {
        true => exe.with_file_name(FRONT),
        false => exe,
    }
}

/// The whole client: this one, or the one beside the front.
pub fn full_client() -> PathBuf {
    let exe = running();
    match is_full_client(&exe) {
        true => exe,
        false => exe.with_file_name(FULL_CLIENT),
    }
}

/// This process's binary, read once (the front needs it three times a
/// job: its own path, and both binaries' identity).
fn running() -> PathBuf {
    static RUNNING: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    RUNNING
        .get_or_init(|| std::env::current_exe().unwrap_or_default())
        .clone()
}

fn is_full_client(exe: &Path) -> bool {
    exe.file_stem().is_some_and(|stem| stem == FULL_CLIENT)
}
