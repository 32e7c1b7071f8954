//! What a failed call means: an answer the peer chose to give (a refusal,
//! by the kind it carries), or a connection that broke, which before the
//! node confirmed the start leaves open whether the job runs. Read from
//! the status's metadata, code and error types, never from its message.

use mexec_common::dial::{innermost, TlsSign};
use mexec_common::nodes::NodeAddr;
use mexec_common::refusal::Refusal;
use tonic::{Code, Status};

use crate::outcome::{NotStarted, Outcome};

/// Whether `status` is an answer the peer chose to give (busy, draining,
/// refused, not allowed) rather than a connection that broke (the peer
/// killed, restarting, unreachable mid-stream).
pub fn answered(status: &Status) -> bool {
    if Refusal::of(status).is_some() {
        return true;
    }
    // No kind: an older peer's answer, or none at all. These codes are
    // what tonic makes of a connection that broke under the call.
    !matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::Internal
            | Code::DeadlineExceeded
    )
}

/// Sorts an answer (`answered` is true) into busy or refused. `tls` says
/// whether this client connected with a certificate.
pub fn not_started(status: &Status, tls: bool) -> NotStarted {
    let cause = tls_sign(status, tls).explain(&cause(status));
    let busy = match Refusal::of(status) {
        // A stream limit passes as streams end, as a full node does.
        Some(kind) => matches!(kind, Refusal::Busy | Refusal::Limit),
        None => status.code() == Code::ResourceExhausted,
    };
    if busy {
        NotStarted::Busy(cause)
    } else {
        NotStarted::Refused(cause)
    }
}

/// The stream failed after the job was sent and before the node said it
/// started it. An answer the node chose to give (busy, draining, cwd
/// missing, not allowed) means it did not; a broken connection leaves it
/// unknown, because the node may have started the job and died before its
/// `Accepted` arrived. Unknown counts as lost, so a job that is not safe
/// to repeat is never run twice.
pub fn unconfirmed(status: &Status, node: &NodeAddr, tls: bool) -> Outcome {
    if answered(status) {
        return Outcome::NotStarted(not_started(status, tls));
    }
    let cause = cause(status);
    let sign = tls_sign(status, tls);
    // A kept channel connecting again (the agent's) and failing: nothing
    // was sent, as when a fresh connection fails.
    if never_connected(status) {
        return Outcome::NotStarted(NotStarted::Unreachable(sign.explain(&cause)));
    }
    // A TLS alert (our certificate refused after a TLS 1.3 handshake that
    // looked done to us), or a peer without TLS, comes before any request
    // reaches the node.
    if sign >= TlsSign::Refused {
        return Outcome::NotStarted(NotStarted::Refused(sign.explain(&cause)));
    }
    Outcome::Lost {
        node: node.authority(),
        reason: format!(
            "{cause}{} (before the node confirmed the start, so the job may have run)",
            sign.hint()
        ),
        stdin_consumed: false,
    }
}

/// Whether a call without TLS that failed this way may have reached
/// something other than a plain-text gRPC peer (a web server, a TLS
/// port), which `port_probe` can tell: no refusal kind, and either an
/// answer that is none of a daemon's or a connection dropped or garbled.
pub fn worth_probing(status: &Status, tls: bool) -> bool {
    if tls || Refusal::of(status).is_some() || never_connected(status) {
        return false;
    }
    answered(status) || TlsSign::of(status) >= TlsSign::Dropped
}

/// Whether the call failed while making its connection.
fn never_connected(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if err.is::<tonic::ConnectError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// The status for people: its message, and the innermost cause of a
/// transport failure ("transport error" alone says nothing; "received
/// fatal alert: UnknownCA" does).
pub fn cause(status: &Status) -> String {
    let message = if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        status.message().to_owned()
    };
    match innermost(status) {
        Some(inner) if inner != message => format!("{message}: {inner}"),
        _ => message,
    }
}

/// What the failure says about TLS: from its error types, and a node that
/// does not take this client's certificate.
fn tls_sign(status: &Status, tls: bool) -> TlsSign {
    let unauthenticated = match Refusal::of(status) {
        Some(kind) => kind == Refusal::Unauthenticated,
        None => status.code() == Code::Unauthenticated,
    };
    if tls && unauthenticated {
        TlsSign::Refused
    } else {
        TlsSign::of(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeAddr {
        "n1:7460".parse().unwrap()
    }

    #[test]
    fn refusals_are_sorted_by_their_kind_whatever_they_say() {
        for kind in Refusal::ALL {
            let status = kind.status("some words");
            assert!(answered(&status), "{kind}");
            let busy = matches!(not_started(&status, false), NotStarted::Busy(_));
            assert_eq!(
                busy,
                matches!(kind, Refusal::Busy | Refusal::Limit),
                "{kind}"
            );
        }
        // The words of a refusal change nothing.
        assert!(!answered(&Status::unavailable("node n1 is draining")));
    }

    #[test]
    fn without_a_kind_the_code_decides() {
        for code in [
            Code::Unavailable,
            Code::Unknown,
            Code::Cancelled,
            Code::Internal,
        ] {
            let outcome = unconfirmed(&Status::new(code, "transport error"), &node(), false);
            assert!(matches!(outcome, Outcome::Lost { .. }), "{code:?}");
        }
        let full = Status::resource_exhausted("full");
        assert!(matches!(not_started(&full, false), NotStarted::Busy(_)));
        let denied = Status::permission_denied("no");
        assert!(matches!(
            not_started(&denied, false),
            NotStarted::Refused(_)
        ));
    }

    #[test]
    fn a_node_that_will_not_take_our_certificate_gets_the_tls_hint() {
        let status = Refusal::Unauthenticated.status("the client certificate names no one");
        let NotStarted::Refused(cause) = not_started(&status, true) else {
            panic!("not a refusal");
        };
        assert!(cause.contains("(mutual TLS: "), "{cause}");
        let NotStarted::Refused(cause) = not_started(&status, false) else {
            panic!("not a refusal");
        };
        assert_eq!(cause, "the client certificate names no one");
    }
}
