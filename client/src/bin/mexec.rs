//! `mexec`: run one command on the farm, as if it ran here. On Linux this
//! is the small front (the crate's `front`), which hands the job to the
//! agent or becomes `mexec-client`; elsewhere it is the whole client.

// On Linux, `mexec` starts through a C `main` of its own: the standard
// library's start-up finds the main thread's stack by reading and parsing
// /proc/self/maps (glibc's pthread_getattr_np), a tenth of the client's
// CPU per job in a profile, for a guard-page message on stack overflow.
// What else that start-up does that mexec relies on is `os::start_up`.
#![cfg_attr(all(target_os = "linux", not(test)), no_main)]

#[cfg(all(target_os = "linux", not(test)))]
#[unsafe(no_mangle)]
extern "C" fn main(
    _argc: std::ffi::c_int,
    _argv: *const *const std::ffi::c_char,
) -> std::ffi::c_int {
    mexec_client::os::start_up();
    std::process::exit(mexec_client::front::main());
}

#[cfg(all(target_os = "linux", test))]
fn main() {
    std::process::exit(mexec_client::front::main());
}

#[cfg(not(target_os = "linux"))]
fn main() {
    std::process::exit(mexec_client::cli::main());
}
