//! A peer as a person writes it: `198.18.0.2`, `198.18.0.2:7000`, `[fd00::2]:7000`,
//! or a host name with an optional port. One parser for the configuration file and
//! for `POST /connect`; host names are resolved only when asked ([`PeerAddr::resolve`]).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// A peer's control address, or a host name still to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAddr {
    Addr(SocketAddr),
    Host(String, u16),
}

/// Why a peer address could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerAddrError {
    #[error("invalid peer address {0:?}")]
    Invalid(String),
    #[error("peer {0} does not resolve")]
    Unresolved(String),
}

impl PeerAddr {
    /// Parses `v`, giving `default_port` to an address or name without one.
    pub fn parse(v: &str, default_port: u16) -> Result<PeerAddr, PeerAddrError> {
        if let Ok(a) = v.parse::<SocketAddr>() {
            return Ok(PeerAddr::Addr(a));
        }
        if let Ok(ip) = v.parse::<IpAddr>() {
            return Ok(PeerAddr::Addr(SocketAddr::new(ip, default_port)));
        }
        let invalid = || PeerAddrError::Invalid(v.to_string());
        // A host name: letters, digits, dots and hyphens only, optionally with a port.
        let (host, port) = match v.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| invalid())?),
            None => (v, default_port),
        };
        let valid = !host.is_empty()
            && host.len() <= 253
            && host.bytes().any(|b| b.is_ascii_alphabetic())
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        if !valid {
            return Err(invalid());
        }
        Ok(PeerAddr::Host(host.to_ascii_lowercase(), port))
    }

    /// The address; host names are resolved here (a DNS lookup).
    pub fn resolve(&self) -> Result<SocketAddr, PeerAddrError> {
        match self {
            PeerAddr::Addr(a) => Ok(*a),
            PeerAddr::Host(h, port) => (h.as_str(), *port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| PeerAddrError::Unresolved(h.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_with_and_without_ports() {
        let a = |s: &str| Ok(PeerAddr::Addr(s.parse().unwrap()));
        assert_eq!(PeerAddr::parse("10.0.1.5", 6783), a("10.0.1.5:6783"));
        assert_eq!(PeerAddr::parse("10.0.1.5:7000", 6783), a("10.0.1.5:7000"));
        assert_eq!(PeerAddr::parse("[fd00::1]:7000", 6783), a("[fd00::1]:7000"));
        assert_eq!(PeerAddr::parse("fd00::1", 6783), a("[fd00::1]:6783"));
        assert_eq!(
            PeerAddr::parse("Node-B.lan:7000", 6783),
            Ok(PeerAddr::Host("node-b.lan".into(), 7000))
        );
        assert_eq!(
            PeerAddr::parse("localhost", 6783).unwrap().resolve().unwrap().port(),
            6783
        );
        assert!(PeerAddr::parse("not an address!", 6783).is_err());
        assert!(PeerAddr::parse("host:notaport", 6783).is_err());
        assert!(PeerAddr::parse("", 6783).is_err());
    }
}
