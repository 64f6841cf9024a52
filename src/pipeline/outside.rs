//! Outside: a VXLAN datagram from the underlay, bound for this host.
//!
//! A datagram is accepted only from a peer that is up, with the I flag set, a VNI
//! this node serves, an inner Ethernet frame addressed to this node (or broadcast),
//! and an inner IPv4/IPv6 packet that is well formed, comes from inside the prefixes
//! that peer announced (anti-spoofing), carries the VNI of its network (see the
//! module docs of [`crate::pipeline`]) without crossing networks, and goes to a
//! prefix this node serves. Anything else is dropped with its reason; nothing is ever
//! forwarded on to a third node.
//!
//! An unknown VNI is refused before the inner packet is parsed (the cheap check that
//! stops a stray VXLAN sender); which network's VNI a packet may carry needs its
//! addresses, so that is checked after the sender's prefixes, and the flow memo keys
//! on the VNI too, so a train under one VNI never vouches for a datagram under another.

use super::{inside, DropReason, Verdict, ENCAP_LEN};
use crate::snapshot::Snapshot;
use crate::wire::{ether, vxlan};
use core::net::IpAddr;

/// The last flow the outside path accepted, so the datagrams of one GRO train (all
/// from one sender, almost always of one inner flow) skip the sender, anti-spoofing
/// and route lookups after the first. Tied to a snapshot generation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memo {
    generation: u64,
    /// Underlay source, peer, VNI, inner source and destination.
    flow: Option<(IpAddr, u16, u32, IpAddr, IpAddr)>,
    hits: u64,
}

impl Memo {
    /// Datagrams accepted from the memo rather than by lookups.
    pub fn hits(&self) -> u64 {
        self.hits
    }
}

/// Processes one VXLAN datagram (UDP payload) received from underlay address `src`.
/// On `Deliver`, the inner packet is `dgram[start..start + len]`.
pub fn process(snap: &Snapshot, src: IpAddr, dgram: &[u8]) -> Verdict {
    process_memo(snap, src, dgram, &mut Memo::default())
}

/// [`process`], remembering the last accepted flow in `memo` between calls.
pub fn process_memo(snap: &Snapshot, src: IpAddr, dgram: &[u8], memo: &mut Memo) -> Verdict {
    if memo.generation != snap.generation {
        *memo = Memo {
            generation: snap.generation,
            flow: None,
            hits: memo.hits,
        };
    }
    let peer_idx = match memo.flow {
        Some((s, p, _, _, _)) if s == src => Some(p),
        _ => snap.peer_by_underlay(src),
    };
    let Some(peer) = peer_idx.and_then(|i| snap.peers.get(usize::from(i))) else {
        return Verdict::Drop(DropReason::UnknownPeer);
    };
    let Ok(vx) = vxlan::Packet::new_checked(dgram) else {
        return Verdict::Drop(DropReason::BadVxlan);
    };
    let vni = match vxlan::Repr::parse(&vx) {
        Ok(r) if snap.serves_vni(r.vni) => r.vni,
        Ok(_) => return Verdict::Drop(DropReason::UnknownVni),
        Err(_) => return Verdict::Drop(DropReason::BadVxlan),
    };
    let Ok(eth) = ether::Frame::new_checked(vx.payload()) else {
        return Verdict::Drop(DropReason::BadEthernet);
    };
    let dst_mac = eth.destination();
    if dst_mac != snap.node_mac && !dst_mac.is_broadcast() {
        return Verdict::Drop(DropReason::BadEthernet);
    }
    let inner = eth.payload();
    let (len, src_ip, dst_ip) = match eth.ethertype() {
        ether::ethertype::IPV4 => {
            let Ok(h) = etherparse::Ipv4HeaderSlice::from_slice(inner) else {
                return Verdict::Drop(DropReason::BadInner);
            };
            let total = usize::from(h.total_len());
            if total < h.slice().len() || total > inner.len() || h.ttl() == 0 {
                return Verdict::Drop(DropReason::BadInner);
            }
            (total, IpAddr::V4(h.source_addr()), IpAddr::V4(h.destination_addr()))
        }
        ether::ethertype::IPV6 => {
            let Ok(h) = etherparse::Ipv6HeaderSlice::from_slice(inner) else {
                return Verdict::Drop(DropReason::BadInner);
            };
            let total = 40 + usize::from(h.payload_length());
            if h.payload_length() == 0 || total > inner.len() || h.hop_limit() == 0 {
                return Verdict::Drop(DropReason::BadInner);
            }
            (total, IpAddr::V6(h.source_addr()), IpAddr::V6(h.destination_addr()))
        }
        _ => return Verdict::Drop(DropReason::NotIp),
    };
    let peer_idx = peer_idx.unwrap_or_default();
    if memo.flow == Some((src, peer_idx, vni, src_ip, dst_ip)) {
        memo.hits += 1;
        return Verdict::Deliver { start: ENCAP_LEN, len };
    }
    if peer.allowed.lookup(src_ip).is_none() {
        return Verdict::Drop(DropReason::Spoofed);
    }
    if let Some(reason) = network_check(snap, vni, src_ip, dst_ip) {
        return Verdict::Drop(reason);
    }
    if !snap.is_local(dst_ip) {
        return Verdict::Drop(DropReason::NotLocal);
    }
    memo.flow = Some((src, peer_idx, vni, src_ip, dst_ip));
    // Ethernet padding after the IP packet, if a peer added any, is left behind.
    Verdict::Deliver { start: ENCAP_LEN, len }
}

/// The network rules for a datagram carrying `vni` from inner `src` to `dst`: the
/// VNI must be the packet's network's (the source's, else the destination's), the
/// node's own when it is in none, and the packet must not cross networks. A source
/// in a network only a peer holds is in that network, by the VNI the peer announced
/// for it. The sending node encapsulates by the same rule, so what one node sends
/// the other accepts, and a peer cannot use a VNI to carry a packet into another
/// network.
fn network_check(snap: &Snapshot, vni: u32, src: IpAddr, dst: IpAddr) -> Option<DropReason> {
    let (sn, dn) = (snap.network(src), snap.network(dst));
    if sn.is_some_and(|n| n.vni != vni) {
        // The source claims an address of a network the VNI does not belong to.
        return Some(DropReason::Spoofed);
    }
    if inside::isolated(sn, dn) {
        return Some(DropReason::Isolated);
    }
    let peer_net = if sn.is_none() { snap.peer_vni(src) } else { None };
    let expected = match (sn, peer_net, dn) {
        (Some(n), _, _) => n.vni,
        // From a peer's network into another one of this node's.
        (None, Some(v), Some(d)) if v != d.vni => return Some(DropReason::Isolated),
        (None, Some(v), _) => v,
        (None, None, d) => d.map_or(snap.vni, |n| n.vni),
    };
    if vni == expected {
        None
    } else if dn.is_some() && snap.is_network_vni(vni) {
        // Another network's packet for this one.
        Some(DropReason::Isolated)
    } else {
        Some(DropReason::UnknownVni)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::inside::{self, tests::*};

    fn encapsulated(from: &Snapshot, pkt: &[u8]) -> Vec<u8> {
        let mut buf = in_buf(pkt);
        let mut scratch = [0u8; 1500];
        match inside::process(from, &mut buf, HEADROOM, pkt.len(), None, &mut scratch) {
            Verdict::Forward { start, len, .. } => buf[start..start + len].to_vec(),
            v => panic!("{v:?}"),
        }
    }

    fn a_ip() -> IpAddr {
        "198.18.0.1".parse().unwrap()
    }

    #[test]
    fn rejects_unknown_senders() {
        let (a, b) = pair();
        let d = encapsulated(&a, &udp4([198, 19, 1, 5], [198, 19, 2, 7], 64, 10));
        assert_eq!(
            process(&b, "198.18.0.77".parse().unwrap(), &d),
            Verdict::Drop(DropReason::UnknownPeer)
        );
    }

    #[test]
    fn rejects_spoofed_sources_and_foreign_destinations() {
        let (a, b) = pair();
        // Node a forwards for 198.19.2.0/24 whatever the source; b checks it.
        let spoofed = encapsulated(&a, &udp4([198, 19, 7, 5], [198, 19, 2, 7], 64, 10));
        assert_eq!(process(&b, a_ip(), &spoofed), Verdict::Drop(DropReason::Spoofed));
        // A destination b does not serve: rewrite the inner destination after encap.
        let mut d = encapsulated(&a, &udp4([198, 19, 1, 5], [198, 19, 2, 7], 64, 10));
        d[ENCAP_LEN + 18] = 3; // 198.19.3.7
        assert_eq!(process(&b, a_ip(), &d), Verdict::Drop(DropReason::NotLocal));
    }

    #[test]
    fn rejects_bad_headers_by_reason() {
        let (a, b) = pair();
        let good = encapsulated(&a, &udp4([198, 19, 1, 5], [198, 19, 2, 7], 64, 10));
        assert!(matches!(process(&b, a_ip(), &good), Verdict::Deliver { .. }));
        let cases: [(usize, u8, DropReason); 5] = [
            (0, 0x00, DropReason::BadVxlan),    // I flag cleared
            (6, 43, DropReason::UnknownVni),    // VNI 43
            (8, 0x12, DropReason::BadEthernet), // another node's MAC
            (21, 0x08, DropReason::NotIp),      // EtherType 0x0808
            (22, 0x55, DropReason::BadInner),   // IP version 5
        ];
        for (at, val, want) in cases {
            let mut d = good.clone();
            d[at] = val;
            assert_eq!(process(&b, a_ip(), &d), Verdict::Drop(want), "byte {at}");
        }
        for n in 0..good.len() {
            let v = process(&b, a_ip(), &good[..n]);
            assert!(matches!(v, Verdict::Drop(_)), "len {n}: {v:?}");
        }
    }

    #[test]
    fn the_memo_gives_the_same_verdicts() {
        let (a, b) = pair();
        let good = encapsulated(&a, &udp4([198, 19, 1, 5], [198, 19, 2, 7], 64, 10));
        let spoofed = encapsulated(&a, &udp4([198, 19, 7, 5], [198, 19, 2, 7], 64, 10));
        let mut memo = Memo::default();
        for d in [&good, &good, &spoofed, &good, &spoofed] {
            assert_eq!(process_memo(&b, a_ip(), d, &mut memo), process(&b, a_ip(), d));
        }
        // The second `good` and the one after `spoofed` (which does not replace the
        // accepted flow) came from the memo.
        assert_eq!(memo.hits(), 2);
        // A new snapshot without the peer: the memo must not keep accepting.
        let mut b2 = b.clone();
        b2.generation += 1;
        b2.peers.clear();
        assert_eq!(
            process_memo(&b2, a_ip(), &good, &mut memo),
            Verdict::Drop(DropReason::UnknownPeer)
        );
    }

    #[test]
    fn broadcast_mac_and_trailing_padding_are_accepted() {
        let (a, b) = pair();
        let mut d = encapsulated(&a, &udp4([198, 19, 1, 5], [198, 19, 2, 7], 64, 2));
        d[8..14].copy_from_slice(&[0xff; 6]);
        let n = d.len();
        d.extend_from_slice(&[0u8; 16]);
        assert_eq!(
            process(&b, a_ip(), &d),
            Verdict::Deliver {
                start: ENCAP_LEN,
                len: n - ENCAP_LEN
            }
        );
    }

    /// A datagram from node a carrying `src` → `dst` under `vni`, built by hand so
    /// it can carry what a's inside path would refuse to send.
    fn dgram(src: [u8; 4], dst: [u8; 4], vni: u32) -> Vec<u8> {
        let mut d = vec![0u8; ENCAP_LEN];
        vxlan::Packet::new_unchecked(&mut d[..vxlan::HEADER_LEN]).set_header(vni);
        ether::Repr {
            src: ether::Address::for_node("a"),
            dst: ether::Address::for_node("b"),
            ethertype: ether::ethertype::IPV4,
        }
        .emit(&mut ether::Frame::new_unchecked(&mut d[vxlan::HEADER_LEN..]));
        d.extend_from_slice(&udp4(src, dst, 64, 10));
        d
    }

    #[test]
    fn networks_cross_hosts_under_their_vni_only() {
        let (a, b) = crate::testkit::pair_with_networks();
        // What a sends, b takes: within a network, from the host into one, outside.
        for (src, dst) in [
            ([198, 19, 16, 5], [198, 19, 17, 7]),
            ([198, 19, 32, 5], [198, 19, 33, 7]),
            ([198, 19, 1, 5], [198, 19, 17, 7]),
            ([198, 19, 1, 5], [198, 19, 2, 7]),
            ([198, 19, 16, 5], [198, 19, 2, 7]),
        ] {
            let d = encapsulated(&a, &udp4(src, dst, 64, 10));
            assert!(
                matches!(process(&b, a_ip(), &d), Verdict::Deliver { .. }),
                "{src:?} -> {dst:?}"
            );
        }
        let blue_vni = |d: &[u8]| d[4..7] == [0, 0, 7];
        assert!(blue_vni(&encapsulated(
            &a,
            &udp4([198, 19, 16, 5], [198, 19, 17, 7], 64, 10)
        )));
        type Case = ([u8; 4], [u8; 4], u32, DropReason, &'static str);
        let cases: [Case; 10] = [
            // The source's network is not the VNI's.
            (
                [198, 19, 16, 5],
                [198, 19, 17, 7],
                9,
                DropReason::Spoofed,
                "blue under red's VNI",
            ),
            (
                [198, 19, 16, 5],
                [198, 19, 17, 7],
                42,
                DropReason::Spoofed,
                "blue under the node's VNI",
            ),
            // Into another network.
            (
                [198, 19, 16, 5],
                [198, 19, 49, 7],
                7,
                DropReason::Isolated,
                "blue to red",
            ),
            (
                [198, 19, 1, 5],
                [198, 19, 17, 7],
                9,
                DropReason::Isolated,
                "red's VNI into blue",
            ),
            (
                [198, 19, 1, 5],
                [198, 19, 33, 7],
                8,
                DropReason::Isolated,
                "into internal",
            ),
            (
                [198, 19, 32, 5],
                [198, 19, 2, 7],
                8,
                DropReason::Isolated,
                "out of internal",
            ),
            // A VNI nobody serves, or the wrong one where no network decides.
            (
                [198, 19, 16, 5],
                [198, 19, 17, 7],
                1234,
                DropReason::UnknownVni,
                "unknown VNI",
            ),
            (
                [198, 19, 1, 5],
                [198, 19, 17, 7],
                42,
                DropReason::UnknownVni,
                "the node's VNI into blue",
            ),
            (
                [198, 19, 1, 5],
                [198, 19, 2, 7],
                7,
                DropReason::UnknownVni,
                "blue's VNI outside networks",
            ),
            // The existing checks still come first.
            (
                [198, 19, 7, 5],
                [198, 19, 17, 7],
                7,
                DropReason::Spoofed,
                "not announced by a",
            ),
        ];
        for (src, dst, vni, want, why) in cases {
            assert_eq!(process(&b, a_ip(), &dgram(src, dst, vni)), Verdict::Drop(want), "{why}");
        }
        // A network address b does not hold is not local, whatever the network.
        assert_eq!(
            process(&b, a_ip(), &dgram([198, 19, 16, 5], [198, 19, 16, 7], 7)),
            Verdict::Drop(DropReason::NotLocal)
        );
        // Without networks, a network's VNI is unknown.
        let (_, plain) = pair();
        assert_eq!(
            process(&plain, a_ip(), &dgram([198, 19, 1, 5], [198, 19, 2, 7], 7)),
            Verdict::Drop(DropReason::UnknownVni)
        );
    }

    /// Node a holds `a_nets` (with its first /24 of each local); node b holds
    /// [`crate::testkit::networks`] and announces its /24 of each to a under `vnis`
    /// (blue, green, red), as a version 2 peer does with their VNIs.
    fn only_b_holds(a_nets: &[(&str, u32)], vnis: [u32; 3]) -> (Snapshot, Snapshot) {
        use crate::route::Table;
        use crate::snapshot::{Network, SnapshotSpec};
        use ipnet::IpNet;
        let (mut a, mut b): (SnapshotSpec, SnapshotSpec) = crate::testkit::pair_specs();
        let theirs = ["198.19.17.0/24", "198.19.33.0/24", "198.19.49.0/24"];
        let (peer, announced) = &mut a.peers[0];
        announced.extend(theirs.iter().zip(vnis).map(|(p, v)| (p.parse().unwrap(), v)));
        peer.allowed = Table::build(announced.iter().map(|(p, _)| (*p, ())).collect());
        for (subnet, vni) in a_nets {
            let n: ipnet::Ipv4Net = subnet.parse().unwrap();
            a.networks.push(Network {
                subnet: n,
                vni: *vni,
                internal: false,
            });
            a.local.push(IpNet::V4(ipnet::Ipv4Net::new(n.network(), 24).unwrap()));
            // b routes a's part of it to a, under a's VNI.
            let (_, to_a) = &mut b.peers[0];
            to_a.push((IpNet::V4(ipnet::Ipv4Net::new(n.network(), 24).unwrap()), *vni));
        }
        let to_a = b.peers[0].1.clone();
        b.peers[0].0.allowed = Table::build(to_a.iter().map(|(p, _)| (*p, ())).collect());
        b.local.extend(theirs.iter().map(|p| p.parse::<IpNet>().unwrap()));
        b.networks = crate::testkit::networks();
        (Snapshot::compile(1, a), Snapshot::compile(1, b))
    }

    /// A datagram from node b to node a, built by hand.
    fn dgram_from_b(src: [u8; 4], dst: [u8; 4], vni: u32) -> Vec<u8> {
        let mut d = dgram(src, dst, vni);
        ether::Repr {
            src: ether::Address::for_node("b"),
            dst: ether::Address::for_node("a"),
            ethertype: ether::ethertype::IPV4,
        }
        .emit(&mut ether::Frame::new_unchecked(&mut d[vxlan::HEADER_LEN..]));
        d
    }

    fn b_ip() -> IpAddr {
        "198.18.0.2".parse().unwrap()
    }

    #[test]
    fn a_network_only_a_peer_holds_is_reached_under_the_vni_it_announced() {
        let (a, b) = only_b_holds(&[], [7, 8, 9]);
        assert_eq!(a.peer_vni("198.19.17.7".parse().unwrap()), Some(7));
        assert_eq!(
            a.peer_vni("198.19.2.7".parse().unwrap()),
            None,
            "announced without a VNI"
        );
        assert!(a.serves_vni(7) && a.serves_vni(9) && !a.serves_vni(1234));
        // From a's host into blue on b: blue's VNI, which b takes.
        let d = encapsulated(&a, &udp4([198, 19, 1, 5], [198, 19, 17, 7], 64, 10));
        assert_eq!(&d[4..7], &[0, 0, 7]);
        assert!(matches!(process(&b, a_ip(), &d), Verdict::Deliver { .. }));
        // Outside networks, still a's own VNI.
        let d = encapsulated(&a, &udp4([198, 19, 1, 5], [198, 19, 2, 7], 64, 10));
        assert_eq!(&d[4..7], &[0, 0, 42]);
        // The answer comes back under blue's VNI, and a takes it.
        let back = encapsulated(&b, &udp4([198, 19, 17, 7], [198, 19, 1, 5], 64, 10));
        assert_eq!(&back[4..7], &[0, 0, 7]);
        assert!(matches!(process(&a, b_ip(), &back), Verdict::Deliver { .. }));
        // Green is internal on b (a cannot know): b refuses what a sends into it.
        let d = encapsulated(&a, &udp4([198, 19, 1, 5], [198, 19, 33, 7], 64, 10));
        assert_eq!(&d[4..7], &[0, 0, 8]);
        assert_eq!(process(&b, a_ip(), &d), Verdict::Drop(DropReason::Isolated));
        // A blue source under another VNI, or red's under blue's, is refused at a.
        for (src, vni, want) in [
            ([198, 19, 17, 7], 42, DropReason::UnknownVni),
            ([198, 19, 17, 7], 9, DropReason::UnknownVni),
            ([198, 19, 2, 7], 7, DropReason::UnknownVni),
        ] {
            let d = dgram_from_b(src, [198, 19, 1, 5], vni);
            assert_eq!(process(&a, b_ip(), &d), Verdict::Drop(want), "{src:?} under {vni}");
        }
        // Before VNIs were announced (a version 1 peer), a sent the node's VNI and b
        // refused it.
        let (old_a, _) = only_b_holds(&[], [0, 0, 0]);
        let d = encapsulated(&old_a, &udp4([198, 19, 1, 5], [198, 19, 17, 7], 64, 10));
        assert_eq!(&d[4..7], &[0, 0, 42]);
        assert_eq!(process(&b, a_ip(), &d), Verdict::Drop(DropReason::UnknownVni));
    }

    #[test]
    fn a_peers_network_is_isolated_from_this_nodes_and_the_local_vni_wins() {
        // a holds "violet" 198.19.64.0/20 (VNI 11), which b does not.
        let (a, b) = only_b_holds(&[("198.19.64.0/20", 11)], [7, 8, 9]);
        let mut scratch = [0u8; 1500];
        let pkt = udp4([198, 19, 64, 5], [198, 19, 17, 7], 64, 10);
        let mut buf = in_buf(&pkt);
        assert_eq!(
            inside::process(&a, &mut buf, HEADROOM, pkt.len(), None, &mut scratch),
            Verdict::Drop(DropReason::Isolated),
            "violet to b's blue"
        );
        // b sends violet's way under the VNI a announced for it; a takes it only
        // from outside networks, not from blue.
        let d = encapsulated(&b, &udp4([198, 19, 2, 7], [198, 19, 64, 5], 64, 10));
        assert_eq!(&d[4..7], &[0, 0, 11]);
        assert!(matches!(process(&a, b_ip(), &d), Verdict::Deliver { .. }));
        let d = dgram_from_b([198, 19, 17, 7], [198, 19, 64, 5], 7);
        assert_eq!(process(&a, b_ip(), &d), Verdict::Drop(DropReason::Isolated));
        // a holds blue too, under VNI 12 (the hosts disagree): a's own VNI is used, and
        // b's is not taken for blue's addresses.
        let (a, _) = only_b_holds(&[("198.19.16.0/20", 12)], [7, 8, 9]);
        assert_eq!(a.peer_vni("198.19.17.7".parse().unwrap()), None);
        assert_eq!(a.peer_vni("198.19.49.7".parse().unwrap()), Some(9));
        let d = encapsulated(&a, &udp4([198, 19, 1, 5], [198, 19, 17, 7], 64, 10));
        assert_eq!(&d[4..7], &[0, 0, 12]);
        assert!(!a.serves_vni(7));
    }

    #[test]
    fn the_memo_keys_on_the_vni() {
        let (_, b) = crate::testkit::pair_with_networks();
        let good = dgram([198, 19, 16, 5], [198, 19, 17, 7], 7);
        let other = dgram([198, 19, 16, 5], [198, 19, 17, 7], 9);
        let mut memo = Memo::default();
        for d in [&good, &other, &good, &good, &other] {
            assert_eq!(process_memo(&b, a_ip(), d, &mut memo), process(&b, a_ip(), d));
        }
        assert_eq!(memo.hits(), 2);
    }
}
