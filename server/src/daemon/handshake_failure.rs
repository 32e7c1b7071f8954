//! Why a TLS handshake on a daemon's port failed, in words for the
//! refusal log: read from the first bytes the peer sent and from the
//! rustls error's variant, never from its text.

use std::io;

use rustls::{AlertDescription, CertificateError};

/// The connection preface every HTTP/2 client starts with: from a
/// client without TLS, it arrives as plain text.
pub const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The first byte of a TLS record that carries a handshake message: a
/// TLS client's ClientHello starts with it.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// The methods a plain HTTP/1 request may start with.
const HTTP1_METHODS: [&str; 9] = [
    "GET ", "HEAD ", "POST ", "PUT ", "DELETE ", "OPTIONS ", "CONNECT ", "PATCH ", "TRACE ",
];

/// What a connection's first bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opening {
    /// A TLS handshake record.
    Tls,
    /// The HTTP/2 preface in plain text: a gRPC client without TLS.
    PlainHttp2,
    /// A plain HTTP/1 request; its request line.
    PlainHttp1(String),
    /// Anything else; the first bytes in hex.
    Other(String),
}

/// Reads the first bytes a peer sent (at least one).
pub fn opening(first: &[u8]) -> Opening {
    if first.first() == Some(&TLS_HANDSHAKE_RECORD) {
        return Opening::Tls;
    }
    // The preface may arrive in pieces; three bytes of it are plenty.
    if first.len() >= 3 && HTTP2_PREFACE.starts_with(&first[..first.len().min(HTTP2_PREFACE.len())])
    {
        return Opening::PlainHttp2;
    }
    let text = String::from_utf8_lossy(first);
    if HTTP1_METHODS.iter().any(|m| text.starts_with(m)) {
        let line = text.split(['\r', '\n']).next().unwrap_or_default();
        return Opening::PlainHttp1(line.to_owned());
    }
    let hex: Vec<String> = first.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Opening::Other(hex.join(" "))
}

/// What the first bytes say, when they are not TLS.
pub fn not_tls(opening: &Opening) -> Option<String> {
    match opening {
        Opening::Tls => None,
        Opening::PlainHttp2 => Some(
            "a client without TLS (plain-text HTTP/2) on this TLS port: it lacks --tls-ca, \
             --tls-cert and --tls-key"
                .to_owned(),
        ),
        Opening::PlainHttp1(line) => Some(format!(
            "a plain-text HTTP/1 request (`{line}`) on this TLS port, which speaks gRPC"
        )),
        Opening::Other(hex) => Some(format!("not TLS: the first bytes were {hex}")),
    }
}

/// Why the handshake that started with `first` ended in `err`.
pub fn reason(err: &io::Error, first: &[u8]) -> String {
    if let Some(plain) = not_tls(&opening(first)) {
        return plain;
    }
    let Some(tls) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return match err.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => {
                "the client closed the connection during the TLS handshake".to_owned()
            }
            io::ErrorKind::TimedOut => format!("the TLS handshake stalled: {err}"),
            _ => format!("the TLS handshake failed: {err}"),
        };
    };
    match tls {
        rustls::Error::NoCertificatesPresented => "the client sent no certificate (it needs \
             one from the cluster CA: `mexec-cert user NAME`, then --tls-cert and --tls-key)"
            .to_owned(),
        rustls::Error::InvalidCertificate(cert) => client_certificate(cert),
        rustls::Error::AlertReceived(alert) => alert_from_client(*alert),
        rustls::Error::NoApplicationProtocol => {
            "the client does not offer HTTP/2 (ALPN h2), which gRPC needs".to_owned()
        }
        rustls::Error::PeerIncompatible(why) => {
            format!("the client's TLS is incompatible with this daemon's: {why:?}")
        }
        other => format!("the TLS handshake failed: {other}"),
    }
}

/// Why the client's certificate was refused.
fn client_certificate(err: &CertificateError) -> String {
    let why = match err {
        // Another CA of the same name (every `mexec-cert ca` has one)
        // fails the signature rather than the issuer.
        CertificateError::UnknownIssuer | CertificateError::BadSignature => {
            "is not signed by this cluster's CA (another CA, or self-signed)"
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "has expired (make a new one with `mexec-cert user NAME`)"
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "is not valid yet (is this host's clock right?)"
        }
        CertificateError::Revoked => "is revoked",
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "is not for clients (its extended key usage lacks clientAuth)"
        }
        CertificateError::BadEncoding => "is damaged",
        _ => return format!("the client's certificate was refused: {err}"),
    };
    format!("the client's certificate {why}")
}

/// Why a client ended the handshake with an alert.
fn alert_from_client(alert: AlertDescription) -> String {
    match alert {
        AlertDescription::UnknownCA
        | AlertDescription::BadCertificate
        | AlertDescription::CertificateUnknown
        | AlertDescription::CertificateExpired => format!(
            "the client refused this daemon's certificate (alert {alert:?}): it trusts \
             another CA, or the certificate does not name the address it dialled"
        ),
        _ => format!("the client ended the TLS handshake (alert {alert:?})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls_err(err: rustls::Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, err)
    }

    const HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x00, 0xf4];

    #[test]
    fn first_bytes_tell_tls_plain_http2_and_http1_apart() {
        assert_eq!(opening(HELLO), Opening::Tls);
        assert_eq!(opening(HTTP2_PREFACE), Opening::PlainHttp2);
        assert_eq!(opening(b"PRI * HT"), Opening::PlainHttp2);
        assert_eq!(
            opening(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Opening::PlainHttp1("GET /metrics HTTP/1.1".into())
        );
        assert_eq!(opening(b"\x00\x01"), Opening::Other("00 01".into()));
    }

    #[test]
    fn each_failure_is_named_by_its_kind() {
        let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "eof");
        let cases = [
            (
                tls_err(rustls::Error::NoCertificatesPresented),
                HELLO,
                "sent no certificate",
            ),
            (
                tls_err(rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer,
                )),
                HELLO,
                "not signed by this cluster's CA",
            ),
            (
                tls_err(rustls::Error::InvalidCertificate(CertificateError::Expired)),
                HELLO,
                "has expired",
            ),
            (
                tls_err(rustls::Error::AlertReceived(AlertDescription::UnknownCA)),
                HELLO,
                "refused this daemon's certificate (alert UnknownCA)",
            ),
            (eof, HELLO, "closed the connection during the TLS handshake"),
            (
                tls_err(rustls::Error::General("x".into())),
                b"GET / HTTP/1.0\r\n",
                "plain-text HTTP/1 request (`GET / HTTP/1.0`)",
            ),
        ];
        for (err, first, expected) in cases {
            let reason = reason(&err, first);
            assert!(reason.contains(expected), "{reason}");
        }
    }
}
