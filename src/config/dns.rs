//! `[dns]`: the domain workload names live in, how they are answered, and where
//! every other name is asked.

use super::{Env, Invalid};
use crate::dns::Settings;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSection {
    /// The domain workload names live in.
    pub domain: String,
    /// TTL of the domain's answers, seconds (1, as WeaveDNS: moves are seen at once).
    pub ttl: u32,
    /// Servers asked for names outside the domain, as "address" (port 53) or
    /// "address:port" ("[v6]:port"); default: the host's /etc/resolv.conf.
    pub upstream: Option<Vec<String>>,
    /// How long one upstream has to answer before the next is asked.
    pub timeout_ms: u64,
    /// Upstream answers cached at most (0: none).
    pub cache_size: usize,
    /// Longest an upstream answer is cached, seconds.
    pub cache_max_ttl: u32,
    /// Queries outstanding upstream at most; more are refused at once.
    pub max_pending: usize,
}

impl Default for DnsSection {
    fn default() -> Self {
        let d = Settings::default();
        DnsSection {
            domain: d.domain,
            ttl: d.ttl,
            upstream: None,
            timeout_ms: d.timeout.as_millis() as u64,
            cache_size: d.cache_size,
            cache_max_ttl: d.cache_max_ttl,
            max_pending: d.max_pending,
        }
    }
}

/// A week: the longest TTL this server hands out or keeps.
const MAX_TTL: u32 = 604_800;

/// An upstream server as configured: an address (port 53) or a socket address.
fn upstream(s: &str) -> Result<SocketAddr, Invalid> {
    s.parse::<SocketAddr>()
        .or_else(|_| s.parse::<IpAddr>().map(|a| SocketAddr::new(a, 53)))
        .ok()
        .filter(|a| a.port() != 0 && !a.ip().is_unspecified() && !a.ip().is_multicast())
        .ok_or_else(|| {
            Invalid::new(
                "dns.upstream",
                format!("{s:?} is not a server address (\"192.0.2.53\", \"192.0.2.53:5353\", \"[2001:db8::53]:53\")"),
            )
        })
}

/// The `nameserver` lines of resolv.conf text, in order.
pub fn nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()).flatten()
        })
        // A scoped IPv6 address ("fe80::1%eth0") names an interface: not usable here.
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .filter(|a| !a.is_unspecified())
        .map(|a| SocketAddr::new(a, 53))
        .collect()
}

impl DnsSection {
    pub fn validate(&self, env: &dyn Env) -> Result<Settings, Invalid> {
        let domain = crate::names::normalize_fqdn(&self.domain)
            .ok_or_else(|| Invalid::new("dns.domain", format!("{:?} is not a valid domain name", self.domain)))?;
        Invalid::within("dns.ttl", self.ttl, 0, MAX_TTL)?;
        Invalid::within("dns.cache_max_ttl", self.cache_max_ttl, 0, MAX_TTL)?;
        Invalid::within("dns.timeout_ms", self.timeout_ms, 100, 60_000)?;
        Invalid::within("dns.cache_size", self.cache_size, 0, 1_000_000)?;
        Invalid::within("dns.max_pending", self.max_pending, 1, 16_384)?;
        let upstream = match &self.upstream {
            Some(list) => {
                if list.len() > 8 {
                    return Err(Invalid::new(
                        "dns.upstream",
                        format!("{} servers; at most 8", list.len()),
                    ));
                }
                list.iter().map(|s| upstream(s)).collect::<Result<Vec<_>, _>>()?
            }
            None => {
                let mut found = nameservers(&env.resolv_conf());
                found.truncate(8);
                found
            }
        };
        Ok(Settings {
            domain,
            ttl: self.ttl,
            upstream,
            timeout: Duration::from_millis(self.timeout_ms),
            cache_size: self.cache_size,
            cache_max_ttl: self.cache_max_ttl,
            max_pending: self.max_pending,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_take_a_port_or_default_to_53() {
        assert_eq!(upstream("192.0.2.53").unwrap(), "192.0.2.53:53".parse().unwrap());
        assert_eq!(upstream("192.0.2.53:5353").unwrap(), "192.0.2.53:5353".parse().unwrap());
        assert_eq!(
            upstream("[2001:db8::53]:53").unwrap(),
            "[2001:db8::53]:53".parse().unwrap()
        );
        assert_eq!(upstream("2001:db8::53").unwrap(), "[2001:db8::53]:53".parse().unwrap());
        for bad in [
            "",
            "dns.google",
            "0.0.0.0",
            "192.0.2.53:0",
            "224.0.0.1",
            "192.0.2.53:99999",
        ] {
            assert!(upstream(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn resolv_conf_nameservers_are_read_in_order() {
        let text = "# comment\nsearch example.com\nnameserver 192.0.2.1\nnameserver  2001:db8::1\n\
                    nameserver fe80::1%eth0\nnameserver\noptions rotate\nnameserver 127.0.0.53\n";
        let want: Vec<SocketAddr> = ["192.0.2.1:53", "[2001:db8::1]:53", "127.0.0.53:53"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(nameservers(text), want);
    }
}
