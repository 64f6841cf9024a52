//! `[dataplane]`: the TUN device, the data sockets, the workers and their offloads.

use super::{Env, Invalid};
use crate::dataplane::Settings;
use crate::pipeline::{ENCAP_LEN, OUTER_V4_LEN, OUTER_V6_LEN};
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// The most queues a Linux TUN device has (MAX_TAP_QUEUES).
pub const MAX_QUEUES: usize = 256;

fn is_broadcast(a: IpAddr) -> bool {
    matches!(a, IpAddr::V4(v4) if v4.is_broadcast())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataplaneSection {
    pub workers: usize,
    pub pin_workers: bool,
    pub cpus: Vec<usize>,
    pub tun_name: String,
    pub underlay_mtu: u16,
    pub data_port: u16,
    pub vni: u32,
    pub bind: IpAddr,
    pub advertise: Option<IpAddr>,
    pub offload: bool,
    pub udp_gso: bool,
    pub udp_gro: bool,
    pub tun_gso_max_size: u32,
    pub tx_ports: usize,
    pub socket_buffer: usize,
    pub tun_txqueuelen: u32,
    pub busy_poll_us: u64,
    pub flush_bytes: usize,
    pub steering: String,
    pub adaptive_poll_us: u64,
    pub coalesce_udp: bool,
}

impl Default for DataplaneSection {
    fn default() -> Self {
        DataplaneSection {
            workers: 0,
            pin_workers: true,
            cpus: Vec::new(),
            tun_name: "tl0".into(),
            underlay_mtu: 1500,
            data_port: 4789,
            vni: 1,
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            advertise: None,
            offload: true,
            udp_gso: true,
            udp_gro: true,
            tun_gso_max_size: 60_000,
            tx_ports: 4,
            socket_buffer: 8 << 20,
            tun_txqueuelen: 1000,
            busy_poll_us: 0,
            flush_bytes: 256 << 10,
            steering: "hash".into(),
            adaptive_poll_us: 0,
            coalesce_udp: true,
        }
    }
}

impl DataplaneSection {
    /// The dataplane's settings; routes and exposed addresses come from the overlay
    /// and IPAM sections and are filled in by the caller.
    pub fn validate(&self, env: &dyn Env) -> Result<Settings, Invalid> {
        if !crate::names::valid_ifname(&self.tun_name) {
            return Err(Invalid::new(
                "dataplane.tun_name",
                format!(
                    "{:?} is not a valid interface name (1 to 15 letters, digits, '-', '_' or '.')",
                    self.tun_name
                ),
            ));
        }
        if env.is_other_interface(&self.tun_name) {
            return Err(Invalid::new(
                "dataplane.tun_name",
                format!(
                    "{:?} is an existing interface that is not a TUN device; tunloom creates a device of its own",
                    self.tun_name
                ),
            ));
        }
        Invalid::within("dataplane.vni", self.vni, 1, crate::wire::vxlan::MAX_VNI)?;
        let outer = if self.bind.is_ipv6() || self.advertise.is_some_and(|a| a.is_ipv6()) {
            OUTER_V6_LEN
        } else {
            OUTER_V4_LEN
        };
        let overhead = outer + ENCAP_LEN;
        if usize::from(self.underlay_mtu) < 1280 + overhead || self.underlay_mtu > 9216 {
            return Err(Invalid::new(
                "dataplane.underlay_mtu",
                format!(
                    "{} must leave room for a 1280-byte inner packet plus {overhead} bytes of headers, and be at most 9216",
                    self.underlay_mtu
                ),
            ));
        }
        if self.data_port == 0 {
            return Err(Invalid::new("dataplane.data_port", "must not be 0".into()));
        }
        Invalid::within("dataplane.tx_ports", self.tx_ports, 1, 64)?;
        if self.workers > MAX_QUEUES {
            return Err(Invalid::new(
                "dataplane.workers",
                format!(
                    "{} workers is more than a TUN device has queues ({MAX_QUEUES})",
                    self.workers
                ),
            ));
        }
        Invalid::within("dataplane.socket_buffer", self.socket_buffer, 4096, 1 << 30)?;
        Invalid::within("dataplane.tun_txqueuelen", self.tun_txqueuelen, 1, 1_000_000)?;
        for (key, a) in [
            ("dataplane.bind", Some(self.bind)),
            ("dataplane.advertise", self.advertise),
        ] {
            if let Some(a) = a.filter(|a| a.is_multicast() || is_broadcast(*a)) {
                return Err(Invalid::new(key, format!("{a} is a multicast or broadcast address")));
            }
        }
        if self.advertise.is_some_and(|a| a.is_unspecified()) {
            return Err(Invalid::new(
                "dataplane.advertise",
                "must be an address peers can send to (leave it out to use the hello's source)".into(),
            ));
        }
        Invalid::within("dataplane.tun_gso_max_size", self.tun_gso_max_size, 1280, 65_536)?;
        let allowed = env.allowed_cpus();
        if let Some(c) = self.cpus.iter().find(|c| !allowed.contains(c)) {
            return Err(Invalid::new(
                "dataplane.cpus",
                format!("CPU {c} is not one this process may run on ({allowed:?})"),
            ));
        }
        if self.busy_poll_us > 1_000_000 {
            return Err(Invalid::new(
                "dataplane.busy_poll_us",
                format!("{} is more than one second", self.busy_poll_us),
            ));
        }
        Invalid::within("dataplane.flush_bytes", self.flush_bytes, 16 << 10, 16 << 20)?;
        Invalid::within("dataplane.adaptive_poll_us", self.adaptive_poll_us, 0, 10_000)?;
        let steer_by_cpu = match self.steering.as_str() {
            "cpu" => true,
            "hash" => false,
            other => {
                return Err(Invalid::new(
                    "dataplane.steering",
                    format!("{other:?} is neither \"cpu\" nor \"hash\""),
                ))
            }
        };
        let cpus = if self.cpus.is_empty() {
            allowed
        } else {
            self.cpus.clone()
        };
        Ok(Settings {
            workers: if self.workers == 0 {
                cpus.len().max(1)
            } else {
                self.workers
            },
            pin_workers: self.pin_workers,
            cpus,
            tun_name: self.tun_name.clone(),
            mtu: self.underlay_mtu - overhead as u16,
            data_port: self.data_port,
            vni: self.vni,
            bind: self.bind,
            advertise: self.advertise,
            offload: self.offload,
            udp_gso: self.udp_gso,
            udp_gro: self.udp_gro,
            tun_gso_max_size: self.tun_gso_max_size,
            tx_ports: self.tx_ports,
            socket_buffer: self.socket_buffer,
            tun_txqueuelen: self.tun_txqueuelen,
            busy_poll: Duration::from_micros(self.busy_poll_us),
            flush_bytes: self.flush_bytes,
            steer_by_cpu,
            adaptive_poll: Duration::from_micros(self.adaptive_poll_us),
            coalesce_udp: self.coalesce_udp,
            routes: Vec::new(),
            expose: Vec::new(),
        })
    }
}
