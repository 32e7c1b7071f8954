//! `mexec`: run one command on the farm, as if it ran here. On Linux this
//! is the small front (the crate's `front`), which hands the job to the
//! agent or becomes `mexec-client`; elsewhere it is the whole client.

// A C `main` of its own on Linux: `mexec_client::c_main` says why.
#![cfg_attr(all(target_os = "linux", not(test)), no_main)]

#[cfg(target_os = "linux")]
mexec_client::c_main!(mexec_client::front::main);

#[cfg(all(target_os = "linux", test))]
fn main() {
    std::process::exit(mexec_client::front::main());
}

#[cfg(not(target_os = "linux"))]
fn main() {
    std::process::exit(mexec_client::cli::main());
}
