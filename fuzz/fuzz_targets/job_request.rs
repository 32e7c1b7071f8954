//! What an executor and the gatekeeper do with bytes from the network
//! before a job is admitted: decode the stream's messages, then check a
//! job against the request limits, its working directory and a command
//! policy. None of it may panic, whatever the bytes.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mexec_proto::v1::{run_request, AcquireRequest, JoinRequest, RunRequest};
use mexec_server::executor::{validate, CommandPolicy};
use mexec_server::request_limits::check_request;
use prost::Message;

fn policy() -> &'static CommandPolicy {
    static POLICY: OnceLock<CommandPolicy> = OnceLock::new();
    POLICY.get_or_init(|| {
        CommandPolicy::new(&["cc".into(), "gcc".into(), "/usr/bin/true".into()])
            .expect("a non-empty policy")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = RunRequest::decode(data) {
        if let Some(run_request::Msg::Start(spec)) = request.msg {
            let _ = check_request(&spec);
            if validate(&spec).is_ok() {
                let _ = policy().check(&spec);
            }
        }
    }
    let _ = JoinRequest::decode(data);
    let _ = AcquireRequest::decode(data);
});
