//! `mexec-client`: the whole client, beside the `mexec` front (see the
//! crate's `cli` and `front`).

#![cfg_attr(all(target_os = "linux", not(test)), no_main)]

#[cfg(all(target_os = "linux", not(test)))]
#[unsafe(no_mangle)]
extern "C" fn main(
    _argc: std::ffi::c_int,
    _argv: *const *const std::ffi::c_char,
) -> std::ffi::c_int {
    mexec_client::os::start_up();
    std::process::exit(mexec_client::cli::main());
}

#[cfg(any(not(target_os = "linux"), test))]
fn main() {
    std::process::exit(mexec_client::cli::main());
}
