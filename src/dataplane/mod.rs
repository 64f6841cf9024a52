//! The dataplane's I/O shell: the TUN device and UDP sockets it owns, and the worker
//! threads that move packets between them through the sans-IO [`crate::pipeline`].
//!
//! ```text
//!            TUN queue i ─read─▶ pipeline::inside ─▶ pipeline::segment ─▶ TxBatch ─sendmmsg (UDP GSO)─▶ peers
//!  worker i                     (route, encapsulate)  (TSO/USO split)    (GSO trains)     (tx port = flow hash)
//!            TUN queue i ◀─writev─ pipeline::coalesce ◀─ pipeline::outside ◀─recvmmsg (UDP GRO)─ data port
//!                              (GRO trains)           (validate, anti-spoof)              (SO_REUSEPORT)
//! ```
//!
//! tun-rs creates and clones the multi-queue device and enables its offloads; the
//! worker reads and writes the queues itself (the virtio-net header included) so
//! that payloads are copied only by the kernel — tun-rs's own split and coalesce
//! helpers copy each payload once more, which cost a quarter of the throughput.
//!
//! - [`device`]: creates the multi-queue TUN device and configures its link,
//!   addresses and routes; opens the data sockets.
//! - [`batch`]: the allocation-free batch structures a worker fills and drains.
//! - [`worker`]: the per-core event loop.

pub mod batch;
pub mod device;
pub mod stats;
pub mod worker;

use ipnet::IpNet;
use serde::Serialize;
use std::net::IpAddr;
use std::time::Duration;

/// Which offloads ended up active.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Offloads {
    pub tun_tso: bool,
    pub tun_uso: bool,
    pub udp_gso: bool,
    pub udp_gro: bool,
}

/// What the configuration decides for the dataplane.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Worker threads, one TUN queue and receive socket each.
    pub workers: usize,
    pub pin_workers: bool,
    /// The CPUs workers are pinned to, worker i to `cpus[i % len]`.
    pub cpus: Vec<usize>,
    pub tun_name: String,
    /// The overlay MTU: the inner packet size that fits the underlay MTU.
    pub mtu: u16,
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
    pub busy_poll: Duration,
    /// Packet bytes read from the TUN before the TX batch is sent: what a worker
    /// keeps hot in its cache between reading a packet and sending it.
    pub flush_bytes: usize,
    /// Attach the programs that keep a packet on the CPU it arrived on
    /// ([`device::steer`]).
    pub steer_by_cpu: bool,
    /// The longest spin after a batch before a worker sleeps (zero: none).
    pub adaptive_poll: Duration,
    /// Join received UDP datagrams of one flow into USO superpackets on the TUN
    /// write, where the device takes USO.
    pub coalesce_udp: bool,
    /// Routes into the TUN device.
    pub routes: Vec<IpNet>,
    /// Addresses put on the TUN device when it is created.
    pub expose: Vec<IpNet>,
}

/// Bytes of headroom in front of every packet read from the TUN: room for VXLAN +
/// Ethernet (22) and alignment.
pub const HEADROOM: usize = 64;
