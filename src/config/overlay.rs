//! `[overlay]`: what the host routes into the TUN device, announces, exposes, and
//! which gateway addresses tunloom answers itself.

use ipnet::IpNet;
use serde::Deserialize;
use std::net::IpAddr;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct OverlaySection {
    /// Prefixes the host routes into the TUN device.
    pub routes: Vec<IpNet>,
    /// Prefixes this node serves and announces to peers.
    pub announce: Vec<IpNet>,
    /// Addresses put on the TUN device (address/prefix-length), giving the host
    /// itself an address in the overlay. Each is announced as a /32 or /128.
    pub expose: Vec<IpNet>,
    /// Gateway addresses tunloom answers itself (ICMP echo) on its service thread.
    pub gateways: Vec<IpAddr>,
}
