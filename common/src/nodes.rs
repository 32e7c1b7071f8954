//! The node list: `host:port[/slots],...`, as in `MEXEC_NODES`.

use std::fmt;
use std::str::FromStr;

/// One executor as a client names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct NodeAddr {
    /// Host name or IP address (IPv6 in brackets, as in a URL).
    pub host: String,
    /// TCP port of the executor.
    pub port: u16,
    /// Slots the user expects there; the live load report wins when known.
    pub slots: Option<u32>,
}

/// Why a node list entry could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NodeParseError {
    #[error("node `{0}`: expected host:port or host:port/slots")]
    Shape(String),
    #[error("node `{0}`: the port is not a number from 1 to 65535")]
    Port(String),
    #[error("node `{0}`: the slot count is not a positive number")]
    Slots(String),
}

impl NodeAddr {
    /// The `http://host:port` URI a gRPC channel connects to.
    pub fn uri(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    /// `host:port`, the name used in messages.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)?;
        if let Some(slots) = self.slots {
            write!(f, "/{slots}")?;
        }
        Ok(())
    }
}

impl FromStr for NodeAddr {
    type Err = NodeParseError;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        let entry = entry.trim();
        let (hostport, slots) = match entry.rsplit_once('/') {
            Some((hp, s)) => {
                let slots = s
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| NodeParseError::Slots(entry.to_owned()))?;
                (hp, Some(slots))
            }
            None => (entry, None),
        };
        let (host, port) = hostport
            .rsplit_once(':')
            .ok_or_else(|| NodeParseError::Shape(entry.to_owned()))?;
        if host.is_empty() || (host.contains(':') && !host.starts_with('[')) {
            return Err(NodeParseError::Shape(entry.to_owned()));
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| NodeParseError::Port(entry.to_owned()))?;
        Ok(NodeAddr {
            host: host.to_owned(),
            port,
            slots,
        })
    }
}

impl TryFrom<String> for NodeAddr {
    type Error = NodeParseError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

/// Parses a comma-separated node list; empty entries are skipped.
pub fn parse_node_list(list: &str) -> Result<Vec<NodeAddr>, NodeParseError> {
    list.split(',')
        .filter(|entry| !entry.trim().is_empty())
        .map(str::parse)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_ports_and_slots() {
        let nodes = parse_node_list("a:1, 10.0.0.2:7000/8,,[::1]:9/2").unwrap();
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[0].authority(), "a:1");
        assert_eq!(nodes[0].slots, None);
        assert_eq!(nodes[1].slots, Some(8));
        assert_eq!(nodes[2].host, "[::1]");
        assert_eq!(nodes[2].uri(), "http://[::1]:9");
        assert_eq!(nodes[1].to_string(), "10.0.0.2:7000/8");
    }

    #[test]
    fn rejects_malformed_entries_with_the_entry_named() {
        assert_eq!(parse_node_list("a"), Err(NodeParseError::Shape("a".into())));
        assert_eq!(
            parse_node_list("a:0"),
            Err(NodeParseError::Port("a:0".into()))
        );
        assert_eq!(
            parse_node_list("a:70000"),
            Err(NodeParseError::Port("a:70000".into()))
        );
        assert_eq!(
            parse_node_list("a:1/0"),
            Err(NodeParseError::Slots("a:1/0".into()))
        );
        assert_eq!(
            parse_node_list("::1:5"),
            Err(NodeParseError::Shape("::1:5".into()))
        );
    }
}
