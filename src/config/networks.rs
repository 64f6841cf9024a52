//! `[networks]` and `[egress]`: where container networks get their subnets, how many
//! a node holds, and whether their traffic out of the host is masqueraded.

use super::Invalid;
use crate::model::NetworkSettings;
use ipnet::Ipv4Net;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworksSection {
    /// Where a network created without a subnet gets one.
    pub pool: Ipv4Net,
    /// The prefix length the pool is carved into.
    pub prefix: u8,
    /// The most networks this node holds.
    pub max: usize,
}

impl Default for NetworksSection {
    fn default() -> Self {
        let d = NetworkSettings::default();
        NetworksSection {
            pool: d.pool,
            prefix: d.prefix,
            max: d.max,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressSection {
    /// Masquerade what non-internal networks send out of the host (nftables).
    pub masquerade: bool,
}

impl Default for EgressSection {
    fn default() -> Self {
        EgressSection { masquerade: true }
    }
}

/// Both sections, validated against the IPAM range (the pool must not overlap it).
pub fn validate(n: &NetworksSection, e: &EgressSection, range: Ipv4Net) -> Result<NetworkSettings, Invalid> {
    super::ipam::network("networks.pool", &ipnet::IpNet::V4(n.pool))?;
    if !(8..=30).contains(&n.prefix) || n.prefix < n.pool.prefix_len() {
        return Err(Invalid::new(
            "networks.prefix",
            format!(
                "{} must be from the pool's own length ({}) to 30",
                n.prefix,
                n.pool.prefix_len()
            ),
        ));
    }
    if n.pool.contains(&range.network()) || range.contains(&n.pool.network()) {
        return Err(Invalid::new(
            "networks.pool",
            format!("{} overlaps ipam.range {range}, the default network's", n.pool),
        ));
    }
    Invalid::within("networks.max", n.max, 1, 4096)?;
    Ok(NetworkSettings {
        pool: n.pool,
        prefix: n.prefix,
        max: n.max,
        masquerade: e.masquerade,
    })
}
