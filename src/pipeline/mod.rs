//! The sans-IO packet pipeline: pure functions of (snapshot, packet, buffers) that
//! return a [`Verdict`].
//!
//! - [`inside`]: a packet read from the TUN device, bound for the overlay: route it,
//!   apply TTL and MTU rules, encapsulate it in place (VXLAN + Ethernet in the
//!   buffer's headroom).
//! - [`outside`]: a VXLAN datagram from a peer, bound for this host: validate the
//!   headers and the VNI, check the inner source against what the sender announced,
//!   and hand back the inner packet, still in place.
//!
//! ## Container networks
//!
//! Host policy routing sends every packet a container sends into the TUN, so the
//! pipeline is the one place that sees all of a network's traffic, also between two
//! containers on one host, and it is where isolation is enforced. A snapshot's
//! [`Network`](crate::snapshot::Network)s are IPv4 subnets with a VNI each; a packet
//! belongs to its source's network, else its destination's, else to none (then the
//! node's own VNI carries it, exactly as before networks existed). The rules, the
//! same on both paths ([`inside::isolated`]):
//!
//! - a packet never crosses from one network into another;
//! - an internal network's packets stay inside its subnet, both ways;
//! - between hosts, the VXLAN VNI is the packet's network's. The sender picks it by
//!   that rule and the receiver checks it by the same rule, so what one node sends
//!   the other accepts, a peer cannot smuggle a packet into a network under another
//!   network's VNI ([`DropReason::Isolated`]), nor claim a network's source under a
//!   VNI that is not that network's ([`DropReason::Spoofed`]).
//!
//! Packets the pipeline keeps on this host — to a local container, or from a
//! container to the world (egress, masqueraded by the host) — are handed back to the
//! host through the TUN ([`Verdict::ToHost`]), one router hop like forwarding. They
//! are dropped silently when isolated: an ICMP error would tell a container what lies
//! beyond its network.
//!
//! Nothing here touches a file descriptor, allocates, locks or panics on input, so the
//! pipeline can be unit-tested, benchmarked and fuzzed without a device, and the
//! worker loop (`dataplane::worker`) stays the only place that does I/O.

pub mod coalesce;
pub mod inside;
pub mod outside;
pub mod segment;

use crate::wire::{ether, vxlan};

/// Bytes tunloom prepends inside the UDP payload: VXLAN + inner Ethernet.
pub const ENCAP_LEN: usize = vxlan::HEADER_LEN + ether::HEADER_LEN;
/// Outer IPv4 + UDP headers the kernel adds around that.
pub const OUTER_V4_LEN: usize = 20 + 8;
/// Outer IPv6 + UDP headers.
pub const OUTER_V6_LEN: usize = 40 + 8;

/// What to do with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send `buf[start..start + len]` (a complete VXLAN payload) to peer `peer`'s data
    /// port; `hash` is the inner flow's hash, which picks the UDP source port.
    Forward {
        peer: u16,
        start: usize,
        len: usize,
        hash: u32,
    },
    /// Write `buf[start..start + len]` (the inner IP packet) to the TUN device.
    Deliver { start: usize, len: usize },
    /// Inside only: write `buf[start..start + len]` (the packet read from the TUN,
    /// TTL decremented, otherwise untouched) back to the TUN device for the host to
    /// deliver; a superpacket goes back whole, with its GSO metadata.
    ToHost { start: usize, len: usize, path: HostPath },
    /// Hand `buf[start..start + len]` (a packet for a gateway address) to the
    /// service thread.
    Service { start: usize, len: usize },
    /// The packet is dropped for `reason`, and `scratch[..len]` holds an ICMP error
    /// to write to the TUN device for its sender.
    Reply { len: usize, reason: DropReason },
    /// The packet is dropped for `reason`.
    Drop(DropReason),
}

/// Why the inside path hands a packet back to the host rather than to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPath {
    /// To a container on this host (its network's address, routed here): the host
    /// delivers it by the container's /32 route.
    Local,
    /// From a container to outside every overlay prefix: the host routes it out and
    /// masquerades it.
    Egress,
}

crate::telemetry::counted_enum! {
    /// Why the dataplane dropped a packet. Indexes the per-worker drop counters.
    DropReason {
        Malformed => "malformed", "Inside: not a well-formed IPv4/IPv6 packet.";
        Multicast => "multicast", "Inside: a multicast or broadcast destination (the overlay carries unicast).";
        NoRoute => "no_route", "Inside: no overlay route for the destination.";
        Hairpin => "hairpin", "Inside: the destination is local, yet the host sent it into the TUN.";
        TtlExpired => "ttl_expired", "Inside: TTL / hop limit ran out here.";
        TooBig => "too_big", "Inside: larger than the overlay MTU and may not be fragmented.";
        NoHeadroom => "no_headroom", "Inside: the buffer leaves no room to encapsulate (a bug, counted not crashed).";
        UnknownPeer => "unknown_peer", "Outside: the datagram's source is not a peer that is up.";
        BadVxlan => "bad_vxlan", "Outside: truncated VXLAN header or I flag not set.";
        UnknownVni => "unknown_vni", "Outside: a VNI this node does not serve.";
        BadEthernet => "bad_ethernet", "Outside: truncated inner Ethernet header, or not addressed to this node.";
        NotIp => "not_ip", "Outside: inner EtherType is neither IPv4 nor IPv6.";
        BadInner => "bad_inner", "Outside: the inner IP packet is malformed or truncated.";
        Spoofed => "spoofed", "Outside: the inner source is not inside the sender's announced prefixes.";
        NotLocal => "not_local", "Outside: the inner destination is not served by this node.";
        TunWrite => "tun_write", "I/O: the TUN device refused the write.";
        UdpSend => "udp_send", "I/O: the UDP send failed (no buffer space, unreachable peer).";
        RxTruncated => "rx_truncated", "I/O: a datagram larger than the receive buffer.";
        RxBufferFull => "rx_buffer_full", "I/O: datagrams the kernel dropped because a data socket's receive buffer was full (SO_RXQ_OVFL).";
        ServiceBusy => "service_busy", "Service: the service thread's queue or buffer pool was full.";
        TooManySegments => "too_many_segments", "Inside: a superpacket would split into more segments than a batch holds (segment size under 256 bytes).";
        BatchFull => "batch_full", "I/O: a batch had no room left for a packet (a bug, counted not crashed).";
        Isolated => "isolated", "Inside/outside: a packet between two different networks, or into or out of an internal network's subnet.";
    }
}

/// A fast, deterministic hash of an inner packet's flow (addresses, protocol and,
/// for unfragmented TCP/UDP, ports). It keeps one flow on one UDP source port, so the
/// receiver's SO_REUSEPORT group keeps the flow on one worker and in order.
#[inline]
pub fn flow_hash(pkt: &[u8]) -> u32 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    #[inline]
    fn mix(h: u64, w: u64) -> u64 {
        (h.rotate_left(5) ^ w).wrapping_mul(K)
    }
    let mut h = 0u64;
    match pkt.first().map(|b| b >> 4) {
        Some(4) if pkt.len() >= 20 => {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            let proto = pkt[9];
            h = mix(h, u64::from(u32::from_be_bytes([pkt[12], pkt[13], pkt[14], pkt[15]])));
            h = mix(h, u64::from(u32::from_be_bytes([pkt[16], pkt[17], pkt[18], pkt[19]])));
            h = mix(h, u64::from(proto));
            let first_fragment = u16::from_be_bytes([pkt[6], pkt[7]]) & 0x1fff == 0;
            if first_fragment && matches!(proto, 6 | 17) && pkt.len() >= ihl + 4 {
                h = mix(
                    h,
                    u64::from(u32::from_be_bytes([pkt[ihl], pkt[ihl + 1], pkt[ihl + 2], pkt[ihl + 3]])),
                );
            }
        }
        Some(6) if pkt.len() >= 40 => {
            for chunk in pkt[8..40].chunks_exact(8) {
                let mut w = [0u8; 8];
                w.copy_from_slice(chunk);
                h = mix(h, u64::from_ne_bytes(w));
            }
            let next = pkt[6];
            h = mix(h, u64::from(next));
            if matches!(next, 6 | 17) && pkt.len() >= 44 {
                h = mix(h, u64::from(u32::from_be_bytes([pkt[40], pkt[41], pkt[42], pkt[43]])));
            } else {
                // Extension headers: the flow label stands in for the ports.
                h = mix(h, u64::from(u32::from_be_bytes([0, pkt[1] & 0x0f, pkt[2], pkt[3]])));
            }
        }
        _ => {}
    }
    (h ^ (h >> 32)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reason_names_are_unique_snake_case() {
        let mut names: Vec<&str> = DropReason::ALL.iter().map(|r| r.name()).collect();
        assert!(names
            .iter()
            .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }

    #[test]
    fn flow_hash_separates_flows_and_keeps_one_flow_stable() {
        let mut a = [0u8; 40];
        a[0] = 0x45;
        a[9] = 6;
        a[12..20].copy_from_slice(&[198, 19, 1, 5, 198, 19, 2, 7]);
        a[20..24].copy_from_slice(&[0x9c, 0x40, 0x14, 0x51]);
        let mut b = a;
        b[21] = 0x41; // other source port
        let mut c = a;
        c[30] = 0xff; // payload differs, same flow
        assert_ne!(flow_hash(&a), flow_hash(&b));
        assert_eq!(flow_hash(&a), flow_hash(&c));
        assert_eq!(flow_hash(&[]), flow_hash(&[0x45]));
    }
}
