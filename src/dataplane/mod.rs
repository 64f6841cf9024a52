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

/// Bytes of headroom in front of every packet read from the TUN: room for VXLAN +
/// Ethernet (22) and alignment.
pub const HEADROOM: usize = 64;
