//! `mexec-client`: the whole client, beside the `mexec` front (see the
//! crate's `cli` and `front`).

#![cfg_attr(all(target_os = "linux", not(test)), no_main)]

// The agent runs in this binary and allocates for every message of every
// job; the front, started per job, keeps glibc's allocator.
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mexec_client::c_main!(mexec_client::cli::main);

#[cfg(any(not(target_os = "linux"), test))]
fn main() {
    std::process::exit(mexec_client::cli::main());
}
