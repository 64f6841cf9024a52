//! Inside: a packet from the TUN device, bound for a peer.
//!
//! tunloom acts as one router hop between the host and the overlay: it decrements the
//! TTL / hop limit (answering "time exceeded" when it runs out), answers "destination
//! unreachable" when no peer announces the destination, and enforces the overlay MTU
//! with "fragmentation needed" / "packet too big", so TCP through the overlay learns
//! its path MTU. An IPv4 packet without DF that is too big is still sent; the kernel
//! fragments the outer datagram.
//!
//! With container networks, isolation is decided before routing, so a gateway
//! address, a local container and the world are refused alike. Two packets the host
//! sent into the TUN do not leave in VXLAN: one for a container on this host (the
//! route is local and the destination is in a network) and one from a network's
//! container to outside every overlay prefix (egress). Both go back to the host,
//! which has the routes (the container's /32, the uplink) and the masquerading rule
//! for them; the overlay MTU does not apply to them. A local destination outside
//! every network is still a hairpin: the host routed it here by mistake.

use super::segment::{self, Gso};
use super::{flow_hash, DropReason, HostPath, Verdict, ENCAP_LEN};
use crate::snapshot::{Network, NextHop, Snapshot};
use crate::wire::{checksum, ether, icmp, vxlan};
use core::net::IpAddr;

/// Processes the packet at `buf[off..off + len]`. On `Forward`, the VXLAN payload was
/// written in place starting `ENCAP_LEN` bytes before `off`; on `Reply`, the ICMP error
/// is in `scratch`.
///
/// With `gso`, the packet is a superpacket to be cut into segments of `gso.size`
/// payload bytes ([`segment::split`] does that to the forwarded bytes): routing and
/// TTL apply to all of them at once, the MTU to each segment.
pub fn process(
    snap: &Snapshot,
    buf: &mut [u8],
    off: usize,
    len: usize,
    gso: Option<&Gso>,
    scratch: &mut [u8],
) -> Verdict {
    let Some(end) = off.checked_add(len).filter(|e| *e <= buf.len()) else {
        return Verdict::Drop(DropReason::Malformed);
    };
    let pkt = &mut buf[off..end];
    let Some(mut hdr) = Header::parse(pkt, gso.is_some()) else {
        return Verdict::Drop(DropReason::Malformed);
    };
    let wire_len = match gso {
        None => hdr.total,
        Some(g) => match segment::l4_len(pkt, g) {
            Ok(l4) if g.size > 0 => g.l3_len + l4 + g.size.min(hdr.total.saturating_sub(g.l3_len + l4)),
            _ => return Verdict::Drop(DropReason::Malformed),
        },
    };
    if gso.is_some() {
        hdr.dont_fragment = true;
    }
    let pkt = &mut pkt[..hdr.total];
    // The overlay carries unicast only; the host's own multicast (IPv6 router
    // solicitations, MLD reports on tl0) ends here, without an ICMP error.
    let multicast = match hdr.dst {
        IpAddr::V4(a) => a.is_multicast() || a.is_broadcast(),
        IpAddr::V6(a) => a.is_multicast(),
    };
    if multicast {
        return Verdict::Drop(DropReason::Multicast);
    }
    // Isolation comes before routing, so a gateway address, a local container or the
    // world are refused alike when the packet may not reach them.
    let (sn, dn) = (snap.network(hdr.src), snap.network(hdr.dst));
    if isolated(sn, dn) {
        return Verdict::Drop(DropReason::Isolated);
    }
    // A destination in a network only a peer holds, under that network's VNI.
    let peer_vni = if dn.is_none() { snap.peer_vni(hdr.dst) } else { None };
    if let (Some(s), Some(v)) = (sn, peer_vni) {
        if s.vni != v {
            // From one of this node's networks into another network.
            return Verdict::Drop(DropReason::Isolated);
        }
    }
    let route = match snap.routes.lookup(hdr.dst) {
        // A gateway address is shared: tunloom answers echo requests and DNS there,
        // and whatever else is for it goes to the peer whose host has that address
        // (weave expose of the default gateway) — never back to this host, which
        // would route it into the TUN again; here the service thread has the rest.
        Some(NextHop::Service) if !for_service(pkt, &hdr) => match snap.beneath_service.lookup(hdr.dst) {
            Some(NextHop::Peer(p)) => Some(&NextHop::Peer(*p)),
            _ => Some(&NextHop::Service),
        },
        r => r,
    };
    let peer = match route {
        Some(NextHop::Peer(p)) => *p,
        // The packet ends at this node (a gateway address): no TTL or MTU rules.
        Some(NextHop::Service) if gso.is_none() => {
            return Verdict::Service {
                start: off,
                len: hdr.total,
            }
        }
        Some(NextHop::Service) => return Verdict::Drop(DropReason::Malformed),
        // A container on this host: back to the host, which delivers it to the veth.
        Some(NextHop::Local) if dn.is_some() => return to_host(snap, pkt, &hdr, off, HostPath::Local, scratch),
        Some(NextHop::Local) => return reply(snap, pkt, &hdr, icmp::Kind::Unreachable, DropReason::Hairpin, scratch),
        // A container's packet for the world (an internal network's never gets here).
        None if sn.is_some() && dn.is_none() => return to_host(snap, pkt, &hdr, off, HostPath::Egress, scratch),
        None => return reply(snap, pkt, &hdr, icmp::Kind::Unreachable, DropReason::NoRoute, scratch),
    };
    let Some(peer_entry) = snap.peers.get(usize::from(peer)) else {
        return Verdict::Drop(DropReason::NoRoute);
    };
    if hdr.ttl <= 1 {
        return reply(
            snap,
            pkt,
            &hdr,
            icmp::Kind::TimeExceeded,
            DropReason::TtlExpired,
            scratch,
        );
    }
    if wire_len > usize::from(snap.mtu) && (hdr.v6 || hdr.dont_fragment) {
        let kind = icmp::Kind::TooBig { mtu: snap.mtu };
        return reply(snap, pkt, &hdr, kind, DropReason::TooBig, scratch);
    }
    let hash = flow_hash(pkt);
    decrement_ttl(pkt, hdr.v6);
    if off < ENCAP_LEN {
        return Verdict::Drop(DropReason::NoHeadroom);
    }
    let start = off - ENCAP_LEN;
    let encap = &mut buf[start..off];
    // The packet's network: the source's, else the destination's (equal when both
    // are set, or the packet was isolated above), so a peer expects the VNI it sees;
    // for a destination in a network this node does not hold, the VNI its peer
    // announced for it.
    let vni = match sn.or(dn) {
        Some(n) => n.vni,
        None => peer_vni.unwrap_or(snap.vni),
    };
    vxlan::Packet::new_unchecked(&mut encap[..vxlan::HEADER_LEN]).set_header(vni);
    ether::Repr {
        src: snap.node_mac,
        dst: peer_entry.mac,
        ethertype: if hdr.v6 {
            ether::ethertype::IPV6
        } else {
            ether::ethertype::IPV4
        },
    }
    .emit(&mut ether::Frame::new_unchecked(&mut encap[vxlan::HEADER_LEN..]));
    Verdict::Forward {
        peer,
        start,
        len: ENCAP_LEN + hdr.total,
        hash,
    }
}

/// Whether a packet from network `sn` to network `dn` (`None`: outside every
/// network) must not pass: it crosses from one network into another, or into or out
/// of an internal network. Shared by both directions. Networks do not overlap, so
/// two are the same exactly when they are equal.
#[inline]
pub fn isolated(sn: Option<&Network>, dn: Option<&Network>) -> bool {
    match (sn, dn) {
        (Some(s), Some(d)) => s != d,
        (Some(n), None) | (None, Some(n)) => n.internal,
        (None, None) => false,
    }
}

/// The packet goes back to the host. It is one router hop like forwarding (TTL
/// decremented, "time exceeded" when it runs out) but the overlay MTU does not apply:
/// the packet never leaves this host inside VXLAN, and what the host does with it
/// next (a veth, an uplink) has its own MTU and its own ICMP errors.
fn to_host(snap: &Snapshot, pkt: &mut [u8], hdr: &Header, off: usize, path: HostPath, scratch: &mut [u8]) -> Verdict {
    if hdr.ttl <= 1 {
        return reply(
            snap,
            pkt,
            hdr,
            icmp::Kind::TimeExceeded,
            DropReason::TtlExpired,
            scratch,
        );
    }
    decrement_ttl(pkt, hdr.v6);
    Verdict::ToHost {
        start: off,
        len: hdr.total,
        path,
    }
}

/// Whether a packet for a gateway address is for a service tunloom runs there: an
/// ICMP echo request or DNS (UDP or TCP port 53). A packet whose transport header
/// cannot be read is left to the service thread, which drops what it cannot use.
fn for_service(pkt: &[u8], hdr: &Header) -> bool {
    let (proto, l4) = if hdr.v6 {
        (pkt.get(6).copied(), pkt.get(40..))
    } else {
        let ihl = usize::from(pkt.first().map_or(0, |b| b & 0x0f)) * 4;
        (pkt.get(9).copied(), pkt.get(ihl..))
    };
    let (Some(proto), Some(l4)) = (proto, l4) else {
        return true;
    };
    match proto {
        1 => l4.first() == Some(&8),
        58 => l4.first() == Some(&128),
        6 | 17 => l4.get(2..4).is_none_or(|p| p == [0, 53]),
        // IPv6 extension headers hide the transport: the service thread decides.
        0 | 43 | 44 | 60 => hdr.v6,
        _ => false,
    }
}

/// The few header fields the inside path decides on.
struct Header {
    v6: bool,
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
    total: usize,
    dont_fragment: bool,
}

impl Header {
    /// With `whole`, the packet's length is `pkt.len()` whatever its length fields say
    /// (a superpacket's may not fit 16 bits).
    fn parse(pkt: &[u8], whole: bool) -> Option<Header> {
        match pkt.first()? >> 4 {
            4 => {
                let h = etherparse::Ipv4HeaderSlice::from_slice(pkt).ok()?;
                let total = if whole { pkt.len() } else { usize::from(h.total_len()) };
                if total < h.slice().len() || total > pkt.len() {
                    return None;
                }
                Some(Header {
                    v6: false,
                    src: IpAddr::V4(h.source_addr()),
                    dst: IpAddr::V4(h.destination_addr()),
                    ttl: h.ttl(),
                    total,
                    dont_fragment: h.dont_fragment(),
                })
            }
            6 => {
                let h = etherparse::Ipv6HeaderSlice::from_slice(pkt).ok()?;
                let total = if whole {
                    pkt.len()
                } else {
                    40 + usize::from(h.payload_length())
                };
                // Payload length 0 means a jumbogram, which no overlay link carries.
                if (h.payload_length() == 0 && !whole) || total > pkt.len() || total < 40 {
                    return None;
                }
                Some(Header {
                    v6: true,
                    src: IpAddr::V6(h.source_addr()),
                    dst: IpAddr::V6(h.destination_addr()),
                    ttl: h.hop_limit(),
                    total,
                    dont_fragment: true,
                })
            }
            _ => None,
        }
    }
}

fn decrement_ttl(pkt: &mut [u8], v6: bool) {
    if v6 {
        pkt[7] -= 1;
    } else {
        let old = u16::from_be_bytes([pkt[8], pkt[9]]);
        pkt[8] -= 1;
        let new = u16::from_be_bytes([pkt[8], pkt[9]]);
        let csum = checksum::update_word(u16::from_be_bytes([pkt[10], pkt[11]]), old, new);
        pkt[10..12].copy_from_slice(&csum.to_be_bytes());
    }
}

fn reply(
    snap: &Snapshot,
    pkt: &[u8],
    hdr: &Header,
    kind: icmp::Kind,
    reason: DropReason,
    scratch: &mut [u8],
) -> Verdict {
    // Without a configured router address, errors come from the address the sender
    // was trying to reach; the kernel accepts them either way.
    let src = match hdr.dst {
        IpAddr::V4(d) => IpAddr::V4(snap.router_v4.unwrap_or(d)),
        IpAddr::V6(d) => IpAddr::V6(snap.router_v6.unwrap_or(d)),
    };
    match icmp::emit(pkt, kind, src, scratch) {
        Ok(len) => Verdict::Reply { len, reason },
        Err(_) => Verdict::Drop(reason),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::pipeline::{outside, HostPath};
    use etherparse::{IpSlice, PacketBuilder};
    use std::net::Ipv6Addr;

    pub use crate::testkit::{in_buf, pair, udp4, HEADROOM};

    /// A gateway address that both nodes serve and node b also exposes (weave
    /// expose of the default gateway): echo requests and DNS are the service's on
    /// either node; anything else for it goes to b, and b takes it as its own.
    #[test]
    fn a_shared_gateway_serves_echo_and_dns_and_leaves_the_rest_to_who_exposed_it() {
        let (mut sa, mut sb) = crate::testkit::pair_specs();
        let gw: ipnet::IpNet = "198.19.2.1/32".parse().unwrap();
        sa.service.push(gw);
        sb.service.push(gw);
        let (a, b) = (Snapshot::compile(1, sa), Snapshot::compile(1, sb));
        let mut scratch = [0u8; 1500];
        let mut verdict = |snap: &Snapshot, pkt: &[u8]| {
            let mut buf = in_buf(pkt);
            process(snap, &mut buf, HEADROOM, pkt.len(), None, &mut scratch)
        };
        let echo = |ty: u8| {
            let mut v = Vec::new();
            PacketBuilder::ipv4([198, 19, 1, 5], [198, 19, 2, 1], 64)
                .icmpv4_raw(ty, 0, [0, 1, 0, 1])
                .write(&mut v, &[1, 2, 3])
                .unwrap();
            v
        };
        let udp = |port: u16| {
            let mut v = Vec::new();
            PacketBuilder::ipv4([198, 19, 1, 5], [198, 19, 2, 1], 64)
                .udp(40000, port)
                .write(&mut v, &[0; 20])
                .unwrap();
            v
        };
        assert!(
            matches!(verdict(&a, &echo(8)), Verdict::Service { .. }),
            "an echo request"
        );
        assert!(matches!(verdict(&a, &udp(53)), Verdict::Service { .. }), "DNS");
        // An echo reply or another port: to b, which exposed the address.
        for pkt in [echo(0), udp(8080)] {
            let mut buf = in_buf(&pkt);
            let v = process(&a, &mut buf, HEADROOM, pkt.len(), None, &mut scratch);
            let Verdict::Forward {
                peer: 0, start, len, ..
            } = v
            else {
                panic!("{v:?}")
            };
            let d = buf[start..start + len].to_vec();
            assert!(b.is_local("198.19.2.1".parse().unwrap()));
            assert!(
                matches!(
                    outside::process(&b, crate::testkit::A_UNDERLAY.into(), &d),
                    Verdict::Deliver { .. }
                ),
                "b delivers what is for the address it exposed"
            );
        }
        assert!(!a.is_local("198.19.2.1".parse().unwrap()));
    }

    #[test]
    fn forwards_and_encapsulates_in_place() {
        let (a, _) = pair();
        let pkt = udp4([198, 19, 1, 5], [198, 19, 2, 7], 64, 100);
        let mut buf = in_buf(&pkt);
        let mut scratch = [0u8; 1500];
        let v = process(&a, &mut buf, HEADROOM, pkt.len(), None, &mut scratch);
        let Verdict::Forward { peer, start, len, .. } = v else {
            panic!("{v:?}")
        };
        assert_eq!((peer, start, len), (0, HEADROOM - ENCAP_LEN, pkt.len() + ENCAP_LEN));
        let out = &buf[start..start + len];
        // VXLAN: I flag, VNI 42.
        assert_eq!(&out[..8], &[0x08, 0, 0, 0, 0, 0, 42, 0]);
        let eth = ether::Frame::new_checked(&out[8..]).unwrap();
        assert_eq!(eth.destination(), ether::Address::for_node("b"));
        assert_eq!(eth.source(), ether::Address::for_node("a"));
        assert_eq!(eth.ethertype(), ether::ethertype::IPV4);
        // TTL decremented, checksum still valid.
        let inner = IpSlice::from_slice(eth.payload()).unwrap();
        let h = inner.ipv4().unwrap().header();
        assert_eq!(h.ttl(), 63);
        assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum());
    }

    #[test]
    fn inside_then_outside_delivers_the_same_packet() {
        let (a, b) = pair();
        let pkt = udp4([198, 19, 1, 5], [198, 19, 2, 7], 64, 1000);
        let mut buf = in_buf(&pkt);
        let mut scratch = [0u8; 1500];
        let Verdict::Forward { start, len, .. } = process(&a, &mut buf, HEADROOM, pkt.len(), None, &mut scratch) else {
            panic!()
        };
        let dgram = &buf[start..start + len];
        let v = outside::process(&b, "198.18.0.1".parse().unwrap(), dgram);
        let Verdict::Deliver { start: s, len: l } = v else {
            panic!("{v:?}")
        };
        let inner = &dgram[s..s + l];
        assert_eq!(inner.len(), pkt.len());
        assert_eq!(inner[8], 63);
        assert_eq!(&inner[12..], &pkt[12..]);
    }

    #[test]
    fn no_route_and_hairpin_answer_unreachable() {
        let (a, _) = pair();
        let mut scratch = [0u8; 1500];
        for (dst, reason) in [
            ([198, 19, 9, 9], DropReason::NoRoute),
            ([198, 19, 1, 9], DropReason::Hairpin),
        ] {
            let pkt = udp4([198, 19, 1, 5], dst, 64, 10);
            let mut buf = in_buf(&pkt);
            let v = process(&a, &mut buf, HEADROOM, pkt.len(), None, &mut scratch);
            let Verdict::Reply { len, reason: r } = v else {
                panic!("{v:?}")
            };
            assert_eq!(r, reason);
            let ip = IpSlice::from_slice(&scratch[..len]).unwrap();
            assert_eq!(ip.destination_addr(), IpAddr::V4([198, 19, 1, 5].into()));
            assert_eq!(ip.source_addr(), IpAddr::V4([198, 19, 1, 1].into()));
            assert_eq!(ip.payload().payload[0], 3, "destination unreachable");
        }
    }

    #[test]
    fn gateway_addresses_go_to_the_service_thread() {
        let (a, _) = pair();
        let mut spec_a = crate::testkit::pair_specs().0;
        spec_a.service = vec!["198.19.1.254/32".parse().unwrap()];
        let a_gw = Snapshot::compile(2, spec_a);
        let pkt = udp4([198, 19, 1, 5], [198, 19, 1, 254], 1, 10);
        let mut buf = in_buf(&pkt);
        let mut scratch = [0u8; 1500];
        let v = process(&a_gw, &mut buf, HEADROOM, pkt.len(), None, &mut scratch);
        assert_eq!(
            v,
            Verdict::Service {
                start: HEADROOM,
                len: pkt.len()
            },
            "TTL 1 is fine: it ends here"
        );
        assert_eq!(&buf[HEADROOM..HEADROOM + pkt.len()], &pkt[..], "untouched");
        // Without the gateway, the same address is local: a hairpin.
        let v = process(&a, &mut buf, HEADROOM, pkt.len(), None, &mut scratch);
        assert!(matches!(
            v,
            Verdict::Reply {
                reason: DropReason::Hairpin,
                ..
            }
        ));
    }

    #[test]
    fn multicast_and_broadcast_stay_home() {
        let (a, _) = pair();
        let mut scratch = [0u8; 1500];
        for dst in [[224, 0, 0, 251], [255, 255, 255, 255]] {
            let pkt = udp4([198, 19, 1, 5], dst, 64, 10);
            let mut buf = in_buf(&pkt);
            let v = process(&a, &mut buf, HEADROOM, pkt.len(), None, &mut scratch);
            assert_eq!(v, Verdict::Drop(DropReason::Multicast));
        }
    }

    #[test]
    fn ttl_one_answers_time_exceeded() {
        let (a, _) = pair();
        let pkt = udp4([198, 19, 1, 5], [198, 19, 2, 7], 1, 10);
        let mut buf = in_buf(&pkt);
        let mut scratch = [0u8; 1500];
        let v = process(&a, &mut buf, HEADROOM, pkt.len(), None, &mut scratch);
        let Verdict::Reply { len, reason } = v else {
            panic!("{v:?}")
        };
        assert_eq!(reason, DropReason::TtlExpired);
        assert_eq!(scratch[20], 11);
        assert!(len > 28);
    }

    #[test]
    fn too_big_with_df_answers_frag_needed_and_without_df_is_sent() {
        let (a, _) = pair();
        let mut scratch = [0u8; 1500];
        let pkt = udp4([198, 19, 1, 5], [198, 19, 2, 7], 64, 1472);
        assert_eq!(pkt.len(), 1500);
        let mut buf = in_buf(&pkt);
        let v = process(&a, &mut buf, HEADROOM, pkt.len(), None, &mut scratch);
        let Verdict::Reply { reason, .. } = v else {
            panic!("{v:?}")
        };
        assert_eq!(reason, DropReason::TooBig);
        assert_eq!(&scratch[20..22], &[3, 4]);
        assert_eq!(&scratch[26..28], &1450u16.to_be_bytes());
        // Clear DF: forwarded.
        let mut nodf = pkt.clone();
        nodf[6] &= !0x40;
        let c = {
            nodf[10] = 0;
            nodf[11] = 0;
            checksum::of(&nodf[..20])
        };
        nodf[10..12].copy_from_slice(&c.to_be_bytes());
        let mut buf = in_buf(&nodf);
        assert!(matches!(
            process(&a, &mut buf, HEADROOM, nodf.len(), None, &mut scratch),
            Verdict::Forward { .. }
        ));
    }

    #[test]
    fn superpackets_route_once_and_check_the_mtu_per_segment() {
        let (a, b) = pair();
        let mut sp = Vec::new();
        PacketBuilder::ipv4([198, 19, 1, 5], [198, 19, 2, 7], 64)
            .tcp(1, 2, 100, 1000)
            .write(&mut sp, &vec![5u8; 20_000])
            .unwrap();
        let mut buf = in_buf(&sp);
        let mut scratch = [0u8; 1500];
        let gso = Gso {
            l4: segment::L4::Tcp,
            l3_len: 20,
            size: 1398,
        };
        let v = process(&a, &mut buf, HEADROOM, sp.len(), Some(&gso), &mut scratch);
        let Verdict::Forward { start, len, .. } = v else {
            panic!("{v:?}")
        };
        assert_eq!(len, ENCAP_LEN + sp.len());
        let mut arena = segment::Arena::new(8192);
        let mut segs = Vec::with_capacity(64);
        let n = segment::split(&buf[start..start + len], &gso, &mut arena, &mut segs).unwrap();
        assert_eq!(n, 15);
        // Each segment, reassembled, passes the outside path at the peer.
        for s in &segs {
            let mut d = arena.bytes()[s.hdr_start..s.hdr_start + s.hdr_len].to_vec();
            d.extend_from_slice(&buf[start + s.payload_start..start + s.payload_start + s.payload_len]);
            assert!(d.len() - ENCAP_LEN <= 1450);
            let v = crate::pipeline::outside::process(&b, "198.18.0.1".parse().unwrap(), &d);
            assert!(matches!(v, Verdict::Deliver { .. }), "{v:?}");
        }
        // A segment size that does not fit the overlay MTU is refused with an ICMP error.
        let mut buf = in_buf(&sp);
        let big = Gso { size: 1420, ..gso };
        let v = process(&a, &mut buf, HEADROOM, sp.len(), Some(&big), &mut scratch);
        assert!(
            matches!(
                v,
                Verdict::Reply {
                    reason: DropReason::TooBig,
                    ..
                }
            ),
            "{v:?}"
        );
    }

    #[test]
    fn malformed_and_out_of_range_input_is_dropped() {
        let (a, _) = pair();
        let mut scratch = [0u8; 1500];
        let pkt = udp4([198, 19, 1, 5], [198, 19, 2, 7], 64, 10);
        for n in 0..pkt.len() {
            let mut buf = in_buf(&pkt[..n]);
            assert_eq!(
                process(&a, &mut buf, HEADROOM, n, None, &mut scratch),
                Verdict::Drop(DropReason::Malformed),
                "len {n}"
            );
        }
        let mut buf = in_buf(&pkt);
        assert_eq!(
            process(&a, &mut buf, HEADROOM, 10_000, None, &mut scratch),
            Verdict::Drop(DropReason::Malformed)
        );
        let mut tight = pkt.clone();
        assert_eq!(
            process(&a, &mut tight, 0, pkt.len(), None, &mut scratch),
            Verdict::Drop(DropReason::NoHeadroom)
        );
    }

    #[test]
    fn ipv6_too_big_answers_packet_too_big() {
        let (a, _) = pair();
        let mut v = Vec::new();
        PacketBuilder::ipv6(
            "fd00:1::5".parse::<Ipv6Addr>().unwrap().octets(),
            "fd00:3::7".parse::<Ipv6Addr>().unwrap().octets(),
            64,
        )
        .udp(1, 2)
        .write(&mut v, &[0u8; 10])
        .unwrap();
        let mut buf = in_buf(&v);
        let mut scratch = [0u8; 1500];
        // No route for fd00:3::/64 at node a: unreachable from the destination address.
        let r = process(&a, &mut buf, HEADROOM, v.len(), None, &mut scratch);
        let Verdict::Reply { len, reason } = r else {
            panic!("{r:?}")
        };
        assert_eq!(reason, DropReason::NoRoute);
        let ip = IpSlice::from_slice(&scratch[..len]).unwrap();
        assert_eq!(ip.source_addr(), "fd00:3::7".parse::<IpAddr>().unwrap());
    }

    /// Networks (see `testkit::pair_with_networks`): blue 198.19.16.0/20 VNI 7, green
    /// 198.19.32.0/20 VNI 8 internal, red 198.19.48.0/20 VNI 9; a holds x.x.16/32/48.0/24.
    fn run(snap: &Snapshot, src: [u8; 4], dst: [u8; 4], ttl: u8) -> (Verdict, Vec<u8>) {
        let pkt = udp4(src, dst, ttl, 10);
        let mut buf = in_buf(&pkt);
        let mut scratch = [0u8; 1500];
        let v = process(snap, &mut buf, HEADROOM, pkt.len(), None, &mut scratch);
        (v, buf)
    }

    fn vni_of(v: Verdict, buf: &[u8]) -> u32 {
        let Verdict::Forward { start, .. } = v else {
            panic!("{v:?}")
        };
        vxlan::Repr::parse(&vxlan::Packet::new_checked(&buf[start..]).unwrap())
            .unwrap()
            .vni
    }

    #[test]
    fn a_network_crosses_hosts_under_its_vni() {
        let (a, _) = crate::testkit::pair_with_networks();
        let (v, buf) = run(&a, [198, 19, 16, 5], [198, 19, 17, 7], 64);
        assert_eq!(vni_of(v, &buf), 7);
        let (v, buf) = run(&a, [198, 19, 32, 5], [198, 19, 33, 7], 64);
        assert_eq!(vni_of(v, &buf), 8, "internal, within its subnet");
        // From outside every network (the host) to a network: the destination's VNI.
        let (v, buf) = run(&a, [198, 19, 1, 5], [198, 19, 49, 7], 64);
        assert_eq!(vni_of(v, &buf), 9);
        // Outside every network: the node's VNI, as without networks.
        let (v, buf) = run(&a, [198, 19, 1, 5], [198, 19, 2, 7], 64);
        assert_eq!(vni_of(v, &buf), 42);
    }

    #[test]
    fn packets_between_networks_and_across_internal_ones_are_isolated() {
        let (a, _) = crate::testkit::pair_with_networks();
        for (src, dst, why) in [
            ([198, 19, 16, 5], [198, 19, 49, 7], "blue to red on the other host"),
            ([198, 19, 16, 5], [198, 19, 48, 9], "blue to red on this host"),
            ([198, 19, 16, 5], [198, 19, 33, 7], "blue to green (internal)"),
            ([198, 19, 32, 5], [8, 8, 8, 8], "internal to the world"),
            (
                [198, 19, 32, 5],
                [198, 19, 1, 9],
                "internal to a local prefix outside networks",
            ),
            (
                [198, 19, 32, 5],
                [198, 19, 2, 7],
                "internal to a peer's prefix outside networks",
            ),
            ([198, 19, 32, 5], [198, 19, 9, 9], "internal to no route"),
            ([8, 8, 8, 8], [198, 19, 32, 9], "the world to internal"),
            ([198, 19, 1, 5], [198, 19, 33, 7], "the host to internal"),
        ] {
            let (v, _) = run(&a, src, dst, 64);
            assert_eq!(v, Verdict::Drop(DropReason::Isolated), "{why}");
        }
        // A gateway address of another network is refused too, before the service thread.
        let mut spec = crate::testkit::pair_specs().0;
        spec.local.push("198.19.16.0/24".parse().unwrap());
        spec.service = vec!["198.19.48.1/32".parse().unwrap()];
        spec.networks = crate::testkit::networks();
        let gw = Snapshot::compile(2, spec);
        assert_eq!(
            run(&gw, [198, 19, 16, 5], [198, 19, 48, 1], 64).0,
            Verdict::Drop(DropReason::Isolated)
        );
        assert!(matches!(
            run(&gw, [198, 19, 48, 5], [198, 19, 48, 1], 64).0,
            Verdict::Service { .. }
        ));
    }

    #[test]
    fn local_containers_go_back_to_the_host() {
        let (a, _) = crate::testkit::pair_with_networks();
        for src in [[198, 19, 16, 5], [8, 8, 8, 8], [198, 19, 1, 5]] {
            // A container on this host, from its own network, from the world (a reply
            // to masqueraded traffic) or from the host.
            let pkt = udp4(src, [198, 19, 16, 9], 64, 10);
            let (v, buf) = run(&a, src, [198, 19, 16, 9], 64);
            assert_eq!(
                v,
                Verdict::ToHost {
                    start: HEADROOM,
                    len: pkt.len(),
                    path: HostPath::Local
                }
            );
            let h = IpSlice::from_slice(&buf[HEADROOM..HEADROOM + pkt.len()]).unwrap();
            let h = h.ipv4().unwrap().header();
            assert_eq!(h.ttl(), 63);
            assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum());
            assert_eq!(&buf[HEADROOM + 12..HEADROOM + pkt.len()], &pkt[12..]);
        }
        // Internal networks too, within their subnet.
        assert!(matches!(
            run(&a, [198, 19, 32, 5], [198, 19, 32, 9], 64).0,
            Verdict::ToHost {
                path: HostPath::Local,
                ..
            }
        ));
        // A hop like any other: TTL 1 runs out here.
        assert!(matches!(
            run(&a, [198, 19, 16, 5], [198, 19, 16, 9], 1).0,
            Verdict::Reply {
                reason: DropReason::TtlExpired,
                ..
            }
        ));
        // A local destination outside every network is still a hairpin.
        assert!(matches!(
            run(&a, [198, 19, 16, 5], [198, 19, 1, 9], 64).0,
            Verdict::Reply {
                reason: DropReason::Hairpin,
                ..
            }
        ));
    }

    #[test]
    fn a_networks_traffic_to_the_world_is_egress() {
        let (a, _) = crate::testkit::pair_with_networks();
        let (v, buf) = run(&a, [198, 19, 16, 5], [93, 184, 216, 34], 64);
        let Verdict::ToHost {
            start,
            len,
            path: HostPath::Egress,
        } = v
        else {
            panic!("{v:?}")
        };
        assert_eq!(buf[start + 8], 63, "TTL decremented");
        assert_eq!(len, 38);
        assert!(matches!(
            run(&a, [198, 19, 16, 5], [93, 184, 216, 34], 1).0,
            Verdict::Reply {
                reason: DropReason::TtlExpired,
                ..
            }
        ));
        // From outside every network: no route, as without networks.
        assert!(matches!(
            run(&a, [198, 19, 1, 5], [93, 184, 216, 34], 64).0,
            Verdict::Reply {
                reason: DropReason::NoRoute,
                ..
            }
        ));
        // A network's own address nobody announces is not egress either.
        assert!(matches!(
            run(&a, [198, 19, 16, 5], [198, 19, 20, 1], 64).0,
            Verdict::Reply {
                reason: DropReason::NoRoute,
                ..
            }
        ));
    }

    #[test]
    fn superpackets_go_back_to_the_host_whole() {
        let (a, _) = crate::testkit::pair_with_networks();
        for dst in [[198, 19, 16, 9], [93, 184, 216, 34]] {
            let mut sp = Vec::new();
            PacketBuilder::ipv4([198, 19, 16, 5], dst, 64)
                .tcp(1, 2, 100, 1000)
                .write(&mut sp, &vec![5u8; 20_000])
                .unwrap();
            let mut buf = in_buf(&sp);
            let mut scratch = [0u8; 1500];
            let gso = Gso {
                l4: segment::L4::Tcp,
                l3_len: 20,
                size: 1448,
            };
            let v = process(&a, &mut buf, HEADROOM, sp.len(), Some(&gso), &mut scratch);
            let Verdict::ToHost { start, len, .. } = v else {
                panic!("{v:?}")
            };
            // Not cut and not held to the overlay MTU: the host segments it if it must.
            assert_eq!((start, len), (HEADROOM, sp.len()));
            assert_eq!(buf[start + 8], 63);
        }
    }
}
