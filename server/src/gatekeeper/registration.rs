//! What a `Register` (and the load reports after it) may say, and where a
//! registered node is reached. Everything a node sends is copied into
//! lease replies, status and logs, so every field is bounded; and the
//! addresses we and clients use come from the stream itself, so a
//! registration cannot steer jobs (and the token) to some other host or
//! make the gatekeeper probe ports on it.

use std::net::{IpAddr, SocketAddr};

use mexec_common::refusal::Refusal;
use mexec_proto::v1::{LoadReport, Register};
use tonic::Status;

use super::cluster::{Reach, Taken};

/// The longest node name: a DNS name, as `mexec-cert node` puts it in the
/// certificate.
pub const MAX_NAME_BYTES: usize = 253;
/// The longest advertised address and other text field a node sends.
pub const MAX_FIELD_BYTES: usize = 255;

/// Refuses a registration whose fields are empty, too long or not a name.
#[allow(clippy::result_large_err)] // tonic's Status
pub fn check_register(register: &Register) -> Result<(), Status> {
    let name = &register.node;
    if name.is_empty() {
        return Err(Refusal::Malformed.status("register: the node name is empty"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(Refusal::Malformed.status(format!(
            "register: the node name is {} bytes, over the limit of {MAX_NAME_BYTES}",
            name.len()
        )));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        return Err(Refusal::Malformed
            .status("register: a node name may hold only letters, digits, `-`, `.` and `_`"));
    }
    bounded("register: the address", &register.address)
}

/// Refuses a load report with an overlong text field.
#[allow(clippy::result_large_err)] // tonic's Status
pub fn check_report(report: &LoadReport) -> Result<(), Status> {
    bounded("load report: the node", &report.node)?;
    bounded("load report: the version", &report.version)?;
    bounded("load report: the os", &report.os)?;
    bounded("load report: the arch", &report.arch)
}

#[allow(clippy::result_large_err)] // tonic's Status
fn bounded(what: &str, text: &str) -> Result<(), Status> {
    if text.len() > MAX_FIELD_BYTES {
        return Err(Refusal::Malformed.status(format!(
            "{what} is {} bytes, over the limit of {MAX_FIELD_BYTES}",
            text.len()
        )));
    }
    Ok(())
}

/// Where a node that registered from `peer` is reached. The gatekeeper
/// always uses the stream's own address with the node's port. Clients use
/// the advertised address when it names the same host, or, under TLS, any
/// name (clients then check that the certificate there is the node's);
/// otherwise the stream's address too.
#[allow(clippy::result_large_err)] // tonic's Status
pub fn reach(register: &Register, peer: Option<SocketAddr>, tls: bool) -> Result<Reach, Status> {
    let port = u16::try_from(register.port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            Refusal::Malformed.status(format!(
                "register: port {} is not a port an executor listens on",
                register.port
            ))
        })?;
    let peer = peer.ok_or_else(|| {
        Refusal::Malformed.status("register: the address of the stream is unknown")
    })?;
    let from = peer.ip().to_canonical();
    let seen = SocketAddr::new(from, port).to_string();
    let advertised = register.address.as_str();
    let clients = if advertised.is_empty() {
        seen.clone()
    } else if tls || host_of(advertised) == Some(from) {
        advertised.to_owned()
    } else {
        return Err(Refusal::Denied.status(format!(
            "register: `{advertised}` is not the address this node registered from ({from}); \
             without TLS a node is reached only there"
        )));
    };
    Ok(Reach {
        clients,
        gatekeeper: seen,
    })
}

/// The host of `host:port` as an address, when it is one.
fn host_of(authority: &str) -> Option<IpAddr> {
    authority
        .parse::<SocketAddr>()
        .ok()
        .map(|a| a.ip().to_canonical())
}

/// The refusal of a registration under a live member's name from
/// another address.
pub fn name_taken(name: &str, taken: Taken) -> Status {
    Refusal::Denied.status(format!(
        "register: node `{name}` is a live member registered from {}; \
         a registration from {} cannot take its name",
        taken.held, taken.from
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(node: &str, address: &str, port: u32) -> Register {
        Register {
            node: node.into(),
            address: address.into(),
            port,
        }
    }

    #[test]
    fn names_and_fields_are_bounded() {
        assert!(check_register(&register("build-01.example.com", "", 1)).is_ok());
        let huge = "n".repeat(2 << 20);
        let refused = check_register(&register(&huge, "", 1)).unwrap_err();
        assert!(refused.message().contains("over the limit"), "{refused:?}");
        assert!(check_register(&register("a\nb", "", 1)).is_err());
        assert!(check_register(&register("n", &huge, 1)).is_err());
        let report = LoadReport {
            os: huge,
            ..LoadReport::default()
        };
        assert!(check_report(&report).is_err());
    }

    #[test]
    fn the_gatekeeper_reaches_the_address_the_stream_came_from() {
        let peer = Some("10.0.0.5:40000".parse().unwrap());
        let reach = reach(&register("n", "", 7460), peer, false).unwrap();
        assert_eq!(reach, Reach::same("10.0.0.5:7460"));
        let other_port = super::reach(&register("n", "10.0.0.5:1", 7460), peer, false).unwrap();
        assert_eq!(other_port.clients, "10.0.0.5:1");
        assert_eq!(other_port.gatekeeper, "10.0.0.5:7460");
        // Port 0 used to mean "use the address given": now it is refused.
        assert!(super::reach(&register("n", "10.9.9.9:22", 0), peer, false).is_err());
        let elsewhere = super::reach(&register("n", "10.9.9.9:22", 7460), peer, false);
        assert!(elsewhere.unwrap_err().message().contains("10.0.0.5"));
        let named = super::reach(&register("n", "build-01:7460", 7460), peer, true).unwrap();
        assert_eq!(named.clients, "build-01:7460");
        assert_eq!(named.gatekeeper, "10.0.0.5:7460");
    }
}
