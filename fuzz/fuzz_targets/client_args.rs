//! The client's parsing of what it is started with: the command line (all
//! four forms: options, command, `CC=mexec`, masquerade) and the node list
//! of `MEXEC_NODES`. None of it may panic, whatever the bytes.

#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use libfuzzer_sys::fuzz_target;
use mexec_client::invocation;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    if selector & 1 == 0 {
        // NUL separates arguments, as in /proc/PID/cmdline.
        let argv: Vec<OsString> = rest
            .split(|b| *b == 0)
            .map(|arg| OsString::from_vec(arg.to_vec()))
            .collect();
        if let Ok(parsed) = invocation::parse(argv.clone()) {
            let _ = invocation::is_repeatable_compile(&parsed.args);
            if let Some(first) = argv.first() {
                let _ = invocation::program_name(first);
            }
        }
    } else if let Ok(text) = std::str::from_utf8(rest) {
        let _ = mexec_common::nodes::parse_node_list(text);
    }
});
