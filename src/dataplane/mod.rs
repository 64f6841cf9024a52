//! The dataplane's I/O shell: the TUN device and UDP sockets it owns, and the worker
//! threads that move packets between them through the sans-IO [`crate::pipeline`].
//!
//! ```text
//!            TUN queue i ──recv_multiple (TSO split)──▶ pipeline::inside ──▶ TxBatch ──sendmmsg (UDP GSO)──▶ peers
//!  worker i                                                                                          (tx port = flow hash)
//!            TUN queue i ◀──send_multiple (GRO)── TunOut ◀── pipeline::outside ◀──recvmmsg (UDP GRO)── data port (SO_REUSEPORT)
//! ```
//!
//! - [`device`]: creates the multi-queue TUN device and configures its link,
//!   addresses and routes; opens the data sockets.
//! - [`batch`]: the allocation-free batch structures a worker fills and drains.
//! - [`worker`]: the per-core event loop.

pub mod batch;
pub mod device;
pub mod worker;

/// Bytes of headroom in front of every packet read from the TUN: room for VXLAN +
/// Ethernet (22) and alignment.
pub const HEADROOM: usize = 64;
