//! Opening a channel for a submitting client, and reading why a connection
//! or a stream failed from the types in its error chain (never from its
//! English): the innermost cause, which is what a person needs ("Connection
//! refused"), and what the failure says about TLS.

use std::error::Error;
use std::io::ErrorKind;

use crate::connector::{AuthChannel, ConnectError, Connector};
use crate::nodes::NodeAddr;

/// Connects to `node`; a failure comes back as the line a person reads.
pub async fn dial(connector: &Connector, node: &NodeAddr) -> Result<AuthChannel, String> {
    dial_named(connector, node, None).await
}

/// Connects to `addr`; under TLS, when `name` is given, only to a peer
/// whose certificate names that node (the gatekeeper's lease says which
/// node is there, so an address a node advertised cannot lead elsewhere).
pub async fn dial_named(
    connector: &Connector,
    addr: &NodeAddr,
    name: Option<&str>,
) -> Result<AuthChannel, String> {
    connector
        .connect_to_node(&addr.authority(), name)
        .await
        .map_err(|err| describe(&err))
}

/// A failed connection, for people: the innermost cause, with a hint
/// where it looks like the two ends disagree about TLS.
pub fn describe(err: &ConnectError) -> String {
    match err {
        ConnectError::BadAddress { source, .. } => format!("bad address: {source}"),
        ConnectError::Transport(err) => {
            let cause = innermost(err).unwrap_or_else(|| err.to_string());
            TlsSign::of(err).explain(&cause)
        }
        ConnectError::Timeout(after) => format!("no answer within {after:?}"),
    }
}

/// The text of the innermost source of `err` ("received fatal alert:
/// UnknownCA" under "transport error"), or `None` when it has none.
pub fn innermost(err: &(dyn Error + 'static)) -> Option<String> {
    let mut source = err.source();
    let mut innermost = None;
    while let Some(inner) = source {
        innermost = Some(inner.to_string());
        source = inner.source();
    }
    innermost
}

/// What a failure says about TLS, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsSign {
    /// Nothing points at TLS.
    None,
    /// The peer dropped the connection (reset, broken pipe, closed under
    /// a request): what a TLS peer does to a client it will not take,
    /// among other reasons.
    Dropped,
    /// The HTTP/2 layer read a frame that is not one: what TLS records
    /// look like to a peer without TLS.
    Garbled,
    /// TLS itself failed: an alert, a certificate refused, a handshake or
    /// a session cut short. Nothing reached the peer's service.
    Refused,
    /// The peer answered our TLS hello with something that is not TLS:
    /// it speaks plain text (a node with a token or none, or another
    /// service). Nothing reached a mexec service.
    NotTls,
}

impl TlsSign {
    /// The strongest sign anywhere in `err`'s chain.
    pub fn of(err: &(dyn Error + 'static)) -> TlsSign {
        let mut sign = TlsSign::None;
        let mut source = Some(err);
        while let Some(current) = source {
            sign = sign.max(sign_of_one(current));
            source = current.source();
        }
        sign
    }

    /// `cause` for people: with the hint, or, where the sign says all
    /// there is to say, the sign's own words instead.
    pub fn explain(self, cause: &str) -> String {
        match self {
            TlsSign::NotTls => NOT_TLS.to_owned(),
            _ => format!("{cause}{}", self.hint()),
        }
    }

    /// The hint to add to a failure's cause.
    pub fn hint(self) -> &'static str {
        const SURE: &str = " (mutual TLS: the node and this client need certificates from the \
                            same cluster CA, valid now; see --tls-ca, --tls-cert, --tls-key)";
        const MAYBE: &str = " (the node dropped the connection: if it uses mutual TLS, this \
                             client needs a certificate from the same cluster CA, valid now; \
                             see --tls-ca, --tls-cert, --tls-key)";
        match self {
            TlsSign::Refused | TlsSign::Garbled => SURE,
            TlsSign::NotTls => " (it does not speak TLS)",
            TlsSign::Dropped => MAYBE,
            TlsSign::None => "",
        }
    }
}

/// What a TLS client is told when the peer answered in plain text.
const NOT_TLS: &str = "no TLS there: it answered this client's TLS hello in plain text (a node \
                       with a token or no authentication, or not a mexec port), and this client \
                       uses mutual TLS (MEXEC_TLS_CA, MEXEC_TLS_CERT, MEXEC_TLS_KEY or --tls-*): \
                       give the node --tls-ca, --tls-cert and --tls-key too, or leave them out \
                       here and give the node's token with MEXEC_TOKEN_FILE";

/// The sign of one rustls error: a record whose type is not TLS's means
/// the peer does not speak TLS at all.
fn sign_of_tls(err: &rustls::Error) -> TlsSign {
    match err {
        rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => {
            TlsSign::NotTls
        }
        _ => TlsSign::Refused,
    }
}

fn sign_of_one(err: &(dyn Error + 'static)) -> TlsSign {
    if let Some(tls) = err.downcast_ref::<rustls::Error>() {
        return sign_of_tls(tls);
    }
    if let Some(io) = err.downcast_ref::<std::io::Error>() {
        return sign_of_io(io);
    }
    if let Some(h2) = err.downcast_ref::<h2::Error>() {
        // An I/O failure under HTTP/2 (a TLS alert read mid-stream) is
        // kept inside the h2 error, which has no `source`.
        if let Some(io) = h2.get_io() {
            return sign_of_io(io);
        }
        return match h2.reason() {
            Some(h2::Reason::PROTOCOL_ERROR | h2::Reason::FRAME_SIZE_ERROR) => TlsSign::Garbled,
            _ => TlsSign::None,
        };
    }
    match err.downcast_ref::<hyper::Error>() {
        // The connection closed while our request was on it.
        Some(hyper) if hyper.is_canceled() => TlsSign::Dropped,
        _ => TlsSign::None,
    }
}

fn sign_of_io(io: &std::io::Error) -> TlsSign {
    // rustls's errors reach us inside an I/O error, whose `source` skips
    // them: look inside.
    if let Some(tls) = io
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return sign_of_tls(tls);
    }
    match io.kind() {
        // Only the TLS layer reports a connection that ended early this
        // way (a handshake cut off, no close_notify); HTTP/2 reports a
        // broken pipe. And only the TLS layer reports bad data as an I/O
        // error: an alert read mid-stream reaches us as InvalidData whose
        // inner error is the alert's text, not a `rustls::Error`.
        ErrorKind::UnexpectedEof | ErrorKind::InvalidData => TlsSign::Refused,
        ErrorKind::BrokenPipe | ErrorKind::ConnectionReset => TlsSign::Dropped,
        _ => TlsSign::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapped(&'static str, Box<dyn Error + Send + Sync>);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Wrapped {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.1)
        }
    }

    fn io(kind: ErrorKind, inner: impl Into<Box<dyn Error + Send + Sync>>) -> Wrapped {
        Wrapped(
            "transport error",
            Box::new(std::io::Error::new(kind, inner)),
        )
    }

    #[test]
    fn tls_errors_inside_io_errors_are_refusals() {
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA);
        let err = io(ErrorKind::InvalidData, alert);
        assert_eq!(TlsSign::of(&err), TlsSign::Refused);
        assert_eq!(
            innermost(&err).as_deref(),
            Some("received fatal alert: UnknownCA")
        );
        let eof = io(ErrorKind::UnexpectedEof, "tls handshake eof");
        assert_eq!(TlsSign::of(&eof), TlsSign::Refused);
        // As hyper hands on an alert read mid-stream: its text only.
        let text = io(ErrorKind::InvalidData, "received fatal alert: UnknownCA");
        assert_eq!(TlsSign::of(&text), TlsSign::Refused);
        assert!(TlsSign::Refused.hint().starts_with(" (mutual TLS: "));
    }

    #[test]
    fn a_plain_text_answer_to_our_hello_says_the_peer_has_no_tls() {
        let plain = rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType);
        let err = io(ErrorKind::InvalidData, plain);
        assert_eq!(TlsSign::of(&err), TlsSign::NotTls);
        let text = TlsSign::NotTls.explain("received corrupt message of type InvalidContentType");
        assert!(text.starts_with("no TLS there: "), "{text}");
        assert!(text.contains("MEXEC_TOKEN_FILE"), "{text}");
    }

    #[test]
    fn dropped_connections_and_garbled_frames_are_signs_too() {
        let reset = io(ErrorKind::ConnectionReset, "reset");
        assert_eq!(TlsSign::of(&reset), TlsSign::Dropped);
        assert!(TlsSign::Dropped.hint().contains("dropped the connection"));
        let garbled = Wrapped(
            "http2 error",
            Box::new(h2::Error::from(h2::Reason::FRAME_SIZE_ERROR)),
        );
        assert_eq!(TlsSign::of(&garbled), TlsSign::Garbled);
        let refused = io(ErrorKind::ConnectionRefused, "Connection refused");
        assert_eq!(TlsSign::of(&refused), TlsSign::None);
        assert_eq!(TlsSign::None.hint(), "");
    }

    #[tokio::test]
    async fn a_refused_connection_is_described_by_its_innermost_cause() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let node: NodeAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let connector = crate::farm::Farm::default().connector();
        let cause = dial(&connector, &node).await.unwrap_err();
        assert!(!cause.contains("transport error"), "{cause}");
        assert!(!cause.contains("mutual TLS"), "{cause}");
    }
}
