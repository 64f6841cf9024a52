//! How the model's state is laid out in the store: one key prefix per kind of record,
//! and the text encoding of each key and value. The store knows none of this; the
//! model decides through [`Row`] and nothing else writes keys.
//!
//! | prefix | key | value |
//! |---|---|---|
//! | `meta/` | `range`, `default_subnet`, `domain`, `performance_mode` | the setting as text |
//! | `peers/` | a control address (`198.18.0.2:6783`) | empty |
//! | `allocations/` | an address (`10.32.0.2`) | `<prefix length> <container id>` |
//! | `blocks/` | an IPAM block taken over from a removed peer | empty |
//! | `yielded/` | an IPAM block given up to a peer that took it over | empty |
//! | `records/` | `<container id>\t<ip>\t<fqdn>` | empty |
//! | `exposed/` | an exposed address (`10.32.0.7/12`) | empty |
//! | `networks/` | a network id (64 hex digits) | the network as JSON |
//! | `endpoints/` | an endpoint id (64 hex digits) | the endpoint as JSON |
//!
//! The prefixes are the table names of the layout before revisions, so the store's
//! one-time migration of an old database lands exactly here.

use crate::store::{Compare, Entry, Op};
use ipnet::{IpNet, Ipv4Net};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// A DNS record: `fqdn` names `ip`, registered for `container`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Record {
    pub container: String,
    pub ip: IpAddr,
    pub fqdn: String,
}

impl crate::dns::Entry for Record {
    fn fqdn(&self) -> &str {
        &self.fqdn
    }
    fn ip(&self) -> IpAddr {
        self.ip
    }
}

/// Settings the state remembers across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meta {
    Range,
    DefaultSubnet,
    Domain,
    /// Performance mode as written through the management API (`true`/`false`).
    PerformanceMode,
}

impl Meta {
    fn name(self) -> &'static str {
        match self {
            Meta::Range => "range",
            Meta::DefaultSubnet => "default_subnet",
            Meta::Domain => "domain",
            Meta::PerformanceMode => "performance_mode",
        }
    }
}

/// One stored fact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Row {
    Meta(Meta, String),
    Peer(SocketAddr),
    Allocation {
        ip: Ipv4Addr,
        prefix: u8,
        container: String,
    },
    Block(Ipv4Net),
    Yielded(Ipv4Net),
    Record(Record),
    Exposed(IpNet),
    Network(Box<super::network::Network>),
    Endpoint(Box<super::network::Endpoint>),
}

/// Why a stored entry could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable entry {key:?} = {value:?}")]
pub struct Unreadable {
    pub key: String,
    pub value: String,
}

const META: &str = "meta/";
const PEERS: &str = "peers/";
const ALLOCATIONS: &str = "allocations/";
const BLOCKS: &str = "blocks/";
const YIELDED: &str = "yielded/";
const RECORDS: &str = "records/";
const EXPOSED: &str = "exposed/";
const NETWORKS: &str = "networks/";
const ENDPOINTS: &str = "endpoints/";

impl Row {
    /// The row's key.
    pub fn key(&self) -> String {
        match self {
            Row::Meta(m, _) => format!("{META}{}", m.name()),
            Row::Peer(a) => format!("{PEERS}{a}"),
            Row::Allocation { ip, .. } => format!("{ALLOCATIONS}{ip}"),
            Row::Block(b) => format!("{BLOCKS}{b}"),
            Row::Yielded(b) => format!("{YIELDED}{b}"),
            Row::Record(r) => format!("{RECORDS}{}\t{}\t{}", r.container, r.ip, r.fqdn),
            Row::Exposed(n) => format!("{EXPOSED}{n}"),
            Row::Network(n) => format!("{NETWORKS}{}", n.id),
            Row::Endpoint(e) => format!("{ENDPOINTS}{}", e.id),
        }
    }

    fn value(&self) -> String {
        match self {
            Row::Meta(_, v) => v.clone(),
            Row::Allocation { prefix, container, .. } => format!("{prefix} {container}"),
            // Maps are BTreeMaps, so the same value always encodes the same way
            // (`stored()` compares the text).
            Row::Network(n) => serde_json::to_string(n).unwrap_or_default(),
            Row::Endpoint(e) => serde_json::to_string(e).unwrap_or_default(),
            Row::Peer(_) | Row::Block(_) | Row::Yielded(_) | Row::Record(_) | Row::Exposed(_) => String::new(),
        }
    }

    /// Stores the row.
    pub fn put(&self) -> Op {
        Op::put(self.key(), self.value())
    }

    /// Removes the row.
    pub fn delete(&self) -> Op {
        Op::delete(self.key())
    }

    /// A condition that holds while no row with this key exists.
    pub fn absent(&self) -> Compare {
        Compare::Absent(self.key())
    }

    /// A condition that holds while this very row is stored.
    pub fn stored(&self) -> Compare {
        Compare::Value(self.key(), self.value())
    }

    /// Reads a stored entry back.
    pub fn decode(e: &Entry) -> Result<Row, Unreadable> {
        let bad = || Unreadable {
            key: e.key.clone(),
            value: e.value.clone(),
        };
        let k = e.key.as_str();
        let row = if let Some(name) = k.strip_prefix(META) {
            let m = [Meta::Range, Meta::DefaultSubnet, Meta::Domain, Meta::PerformanceMode]
                .into_iter()
                .find(|m| m.name() == name)
                .ok_or_else(bad)?;
            Row::Meta(m, e.value.clone())
        } else if let Some(a) = k.strip_prefix(PEERS) {
            Row::Peer(a.parse().map_err(|_| bad())?)
        } else if let Some(a) = k.strip_prefix(ALLOCATIONS) {
            let (len, id) = e.value.split_once(' ').ok_or_else(bad)?;
            Row::Allocation {
                ip: a.parse().map_err(|_| bad())?,
                prefix: len.parse().map_err(|_| bad())?,
                container: id.to_string(),
            }
        } else if let Some(b) = k.strip_prefix(BLOCKS) {
            Row::Block(b.parse().map_err(|_| bad())?)
        } else if let Some(b) = k.strip_prefix(YIELDED) {
            Row::Yielded(b.parse().map_err(|_| bad())?)
        } else if let Some(r) = k.strip_prefix(RECORDS) {
            let mut f = r.splitn(3, '\t');
            let (container, ip, fqdn) = (f.next(), f.next(), f.next());
            Row::Record(Record {
                container: container.ok_or_else(bad)?.to_string(),
                ip: ip.and_then(|ip| ip.parse().ok()).ok_or_else(bad)?,
                fqdn: fqdn.ok_or_else(bad)?.to_string(),
            })
        } else if let Some(n) = k.strip_prefix(EXPOSED) {
            Row::Exposed(n.parse().map_err(|_| bad())?)
        } else if let Some(id) = k.strip_prefix(NETWORKS) {
            let n: super::network::Network = serde_json::from_str(&e.value).map_err(|_| bad())?;
            if n.id != id {
                return Err(bad());
            }
            Row::Network(Box::new(n))
        } else if let Some(id) = k.strip_prefix(ENDPOINTS) {
            let ep: super::network::Endpoint = serde_json::from_str(&e.value).map_err(|_| bad())?;
            if ep.id != id {
                return Err(bad());
            }
            Row::Endpoint(Box::new(ep))
        } else {
            return Err(bad());
        };
        Ok(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_reads_back_as_written() {
        let rows = [
            Row::Meta(Meta::Domain, "weave.local.".into()),
            Row::Peer("198.18.0.2:6783".parse().unwrap()),
            Row::Allocation {
                ip: "10.32.0.2".parse().unwrap(),
                prefix: 12,
                container: "c 1 with spaces is not allowed but survives".into(),
            },
            Row::Block("10.40.0.0/13".parse().unwrap()),
            Row::Yielded("10.44.0.0/14".parse().unwrap()),
            Row::Record(Record {
                container: "c1".into(),
                ip: "fd00::1".parse().unwrap(),
                fqdn: "a.weave.local.".into(),
            }),
            Row::Exposed("10.32.0.7/12".parse().unwrap()),
            Row::Network(Box::new(super::super::network::Network {
                id: "ab".repeat(32),
                name: "app".into(),
                driver: "tunloom".into(),
                subnet: "10.48.0.0/24".parse().unwrap(),
                gateway: "10.48.0.1".parse().unwrap(),
                ip_range: Some("10.48.0.128/25".parse().unwrap()),
                vni: 5000,
                internal: true,
                labels: [("a".to_string(), "b".to_string())].into(),
                options: Default::default(),
                created_ns: 1,
            })),
            Row::Endpoint(Box::new(super::super::network::Endpoint {
                id: "cd".repeat(32),
                network: "ab".repeat(32),
                name: "c1".into(),
                address: "10.48.0.130".parse().unwrap(),
                mac: [2, 0x42, 10, 48, 0, 130],
                exposed_ports: vec![(6, 80)],
                joined: Some(super::super::network::Joined {
                    container: "c1".into(),
                    netns: "/run/netns/c1".into(),
                    netns_name: Some("c1".into()),
                    ifname: None,
                    ns_id: Some((4, 4026532289)),
                }),
            })),
        ];
        for r in rows {
            let Op::Put { key, value } = r.put() else { panic!() };
            let e = Entry {
                key,
                value,
                revision: 1,
            };
            assert_eq!(Row::decode(&e), Ok(r));
        }
        for (k, v) in [
            ("meta/color", "red"),
            ("allocations/10.32.0.2", "x"),
            ("nope/1", ""),
            ("networks/x", "{}"),
        ] {
            let e = Entry {
                key: k.into(),
                value: v.into(),
                revision: 1,
            };
            assert!(Row::decode(&e).is_err(), "{k}");
        }
    }
}
