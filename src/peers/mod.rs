//! Peers: who they are, whether they are up, what they announce, and the control
//! protocol that keeps all of that current (UDP port 6783).
//!
//! Once per hello interval this node sends its full state, paged if large, to every
//! peer it knows: the static peers (from the configuration and `POST /connect`) and
//! every peer it has heard from. A peer's state counts only when all pages of one
//! sequence number have arrived and, with a cluster secret, every page was signed
//! right. A peer not heard for `dead_after` intervals is down and its routes are
//! withdrawn; it is up again with its next complete hello. A node that stops sends
//! "bye", so its peers withdraw at once.
//!
//! Hellos carry state versions and acknowledgements: each node tells each peer which
//! version of that peer's state it forwards by. A node answers at once when a hello
//! changed what it forwards by (after the new snapshot is applied, so the answer's
//! acknowledgement is true) or shows the sender has not seen its latest state; so a
//! writer can wait until its peers forward by its change ([`Peers::wait`]).
//!
//! The split follows quinn's endpoint: [`table::Table`] is the protocol as pure state
//! (`handle` a datagram, `expire`, `poll_transmit` what to send, all at a time it is
//! given); [`codec`] turns this node's state into signed pages; [`driver::Peers`]
//! owns the socket and the clock, runs the loop and lets the model wait for changes.
//! The model decides what this node announces and compiles snapshots from the table.

pub mod addr;
pub mod codec;
pub mod driver;
pub mod table;

pub use crate::wire::control::Announce;
pub use addr::{PeerAddr, PeerAddrError};
pub use driver::Peers;
pub use table::{Outcome, Peer, Table, Transmit, VniConflict};

use crate::telemetry::counted_enum;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

counted_enum! {
    /// What the control protocol counts.
    ControlEvent {
        Rx => "rx_messages", "Control datagrams received.";
        Tx => "tx_messages", "Control datagrams sent.";
        Malformed => "dropped_malformed", "Received datagrams that are no control message.";
        Unauthenticated => "dropped_unauthenticated", "Messages without the right cluster-secret signature.";
        Replayed => "dropped_replayed", "Messages older than one already applied.";
        FromSelf => "dropped_from_self", "This node's own messages, reflected back.";
        SendErrors => "send_errors", "Control datagrams the kernel refused to send.";
        PeerUp => "peer_up_events", "Peers that came up.";
        PeerDown => "peer_down_events", "Peers that went down.";
        BadAddress => "dropped_bad_address", "Hellos naming a data address inside the overlay (it would route the tunnel into itself).";
        PeerLimit => "dropped_peer_limit", "Hellos from new peers while the table holds control.max_peers.";
        UnknownVersion => "dropped_unknown_version", "Messages in a control protocol version this node does not speak (from a newer tunloom).";
        VniConflict => "vni_conflicts", "Prefixes a peer announced under another VNI than this node's network there (the local network's VNI is used).";
    }
}

/// Who this node is on the control protocol.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub nickname: String,
    /// The underlay address peers send data to; unspecified: the address hellos
    /// come from.
    pub underlay: IpAddr,
    pub data_port: u16,
    /// The cluster secret that signs every message, if any.
    pub secret: Option<Vec<u8>>,
}

/// How often hellos go out, and how many may be missed before a peer is down.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub hello_interval: Duration,
    pub dead_after: u32,
}

/// What the peer table accepts.
#[derive(Debug, Clone)]
pub struct Bounds {
    /// The most peers in the table (`control.max_peers`).
    pub max_peers: usize,
    /// The overlay's prefixes: no peer's data address may lie inside them, or
    /// traffic to it would be routed into the tunnel it is meant to carry.
    pub overlay: Vec<ipnet::IpNet>,
}

impl Bounds {
    /// Whether `ip` is inside the overlay.
    pub fn in_overlay(&self, ip: IpAddr) -> bool {
        self.overlay.iter().any(|n| n.contains(&ip))
    }
}

/// The control protocol's part of the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub identity: Identity,
    pub timing: Timing,
    /// The control port, also the default port of peer addresses.
    pub port: u16,
    /// The address the control socket binds.
    pub bind: IpAddr,
    /// Peers to say hello to from the start.
    pub static_peers: Vec<SocketAddr>,
    pub bounds: Bounds,
}

/// `announced` as API views show it: (prefixes, IPAM blocks).
pub fn split_announced(announced: &[Announce]) -> (Vec<String>, Vec<String>) {
    let (blocks, prefixes): (Vec<&Announce>, Vec<&Announce>) = announced.iter().partition(|a| a.block);
    let text = |v: Vec<&Announce>| v.iter().map(|a| a.prefix.to_string()).collect();
    (text(prefixes), text(blocks))
}

/// The VNIs of `announced`, by prefix, for those that carry one (non-zero).
pub fn announced_vnis(announced: &[Announce]) -> std::collections::BTreeMap<String, u32> {
    announced
        .iter()
        .filter(|a| a.vni != 0)
        .map(|a| (a.prefix.to_string(), a.vni))
        .collect()
}
