//! `[ipam]`: the allocation range, this node's blocks of it, the default subnet.

use super::Invalid;
use ipnet::Ipv4Net;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IpamSection {
    /// The whole allocation range (Weave's default).
    pub range: Ipv4Net,
    /// Where `POST /ip/{id}` allocates; default: the range.
    pub default_subnet: Option<Ipv4Net>,
    /// The blocks of the range this node allocates from; default: the whole range
    /// (a single node). Nodes sharing a range list disjoint blocks.
    pub blocks: Vec<Ipv4Net>,
}

impl Default for IpamSection {
    fn default() -> Self {
        IpamSection {
            range: "10.32.0.0/12".parse().expect("static prefix"),
            default_subnet: None,
            blocks: Vec::new(),
        }
    }
}

/// `net` if it names a network: no bits set after the prefix (`10.32.0.5/12` is an
/// address, and taking it for `10.32.0.0/12` would be a guess).
pub fn network(key: &'static str, net: &ipnet::IpNet) -> Result<(), Invalid> {
    if *net != net.trunc() {
        return Err(Invalid::new(
            key,
            format!(
                "{net} has bits set after the network prefix (did you mean {}?)",
                net.trunc()
            ),
        ));
    }
    Ok(())
}

/// The IPAM section, validated: (range, default subnet, blocks).
pub struct Ipam {
    pub range: Ipv4Net,
    pub default_subnet: Ipv4Net,
    pub blocks: Vec<Ipv4Net>,
}

impl IpamSection {
    pub fn validate(&self) -> Result<Ipam, Invalid> {
        network("ipam.range", &ipnet::IpNet::V4(self.range))?;
        if let Some(d) = &self.default_subnet {
            network("ipam.default_subnet", &ipnet::IpNet::V4(*d))?;
        }
        for b in &self.blocks {
            network("ipam.blocks", &ipnet::IpNet::V4(*b))?;
        }
        if !(8..=30).contains(&self.range.prefix_len()) {
            return Err(Invalid::new(
                "ipam.range",
                format!("{} must be between a /8 and a /30", self.range),
            ));
        }
        let range = self.range.trunc();
        let default_subnet = self.default_subnet.map_or(range, |s| s.trunc());
        if !range.contains(&default_subnet) || default_subnet.prefix_len() > 30 {
            return Err(Invalid::new(
                "ipam.default_subnet",
                format!("{default_subnet} must be inside ipam.range {range} and at most a /30"),
            ));
        }
        let blocks: Vec<Ipv4Net> = if self.blocks.is_empty() {
            vec![range]
        } else {
            self.blocks.iter().map(Ipv4Net::trunc).collect()
        };
        if let Some(b) = blocks.iter().find(|b| !range.contains(*b)) {
            return Err(Invalid::new(
                "ipam.blocks",
                format!("{b} is not inside ipam.range {range}"),
            ));
        }
        Ok(Ipam {
            range,
            default_subnet,
            blocks,
        })
    }
}
