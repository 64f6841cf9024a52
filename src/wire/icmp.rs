//! Emitters for the ICMP and ICMPv6 errors the dataplane sends back to a sender.
//!
//! tunloom answers three situations the way a router does:
//! - a packet that does not fit the overlay's MTU: "fragmentation needed" (IPv4 with
//!   DF set, RFC 1191) or "packet too big" (IPv6, RFC 8201), so TCP through the
//!   overlay finds its MSS;
//! - a packet whose TTL / hop limit runs out here: "time exceeded";
//! - a packet with no route: "destination unreachable" (network / no route).
//!
//! [`emit`] writes a complete IP packet (IP header + ICMP header + as much of the
//! offending packet as the RFCs allow) into the caller's buffer and returns its length.
//! It refuses, with [`Error::Suppressed`], exactly the packets RFC 1122 §3.2.2 and RFC
//! 4443 §2.4 (e) say must not be answered, so the dataplane never feeds error storms.

use super::{Error, Result};
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use etherparse::{
    icmpv4, icmpv6, Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type, IpNumber, Ipv4Header, Ipv6FlowLabel,
    Ipv6Header, LaxIpSlice,
};

/// Which error to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The packet is larger than `mtu` and may not be fragmented.
    TooBig { mtu: u16 },
    /// TTL / hop limit reached zero.
    TimeExceeded,
    /// No route to the destination.
    Unreachable,
}

/// RFC 1812 4.3.2.3: an ICMPv4 error carries as much of the original as fits in 576
/// bytes, like Linux does.
pub const MAX_V4_ERROR_LEN: usize = 576;
/// RFC 4443 2.4 (c): an ICMPv6 error must not exceed the minimum IPv6 MTU.
pub const MAX_V6_ERROR_LEN: usize = 1280;
/// TTL / hop limit of errors tunloom originates.
pub const ERROR_TTL: u8 = 64;

const V4_HDR: usize = Ipv4Header::MIN_LEN;
const V6_HDR: usize = Ipv6Header::LEN;
const ICMP_HDR: usize = 8;

/// Writes the error `kind` answering the IP packet `orig`, sent from `src`, into
/// `out`. `src` must have the same family as `orig`. Returns the length written.
///
/// `orig` may be truncated; only its headers need to be present.
pub fn emit(orig: &[u8], kind: Kind, src: IpAddr, out: &mut [u8]) -> Result<usize> {
    let (ip, _) = LaxIpSlice::from_slice(orig).map_err(|_| Error::Malformed("not an IP packet"))?;
    match (ip, src) {
        (LaxIpSlice::Ipv4(v4), IpAddr::V4(src)) => {
            let h = v4.header();
            let dst = h.source_addr();
            let to = h.destination_addr();
            if !unicast_v4(dst) || to.is_broadcast() || to.is_multicast() {
                return Err(Error::Suppressed);
            }
            if h.fragments_offset().value() != 0 {
                return Err(Error::Suppressed);
            }
            let payload = v4.payload();
            if payload.ip_number == IpNumber::ICMP && is_icmpv4_error(payload.payload) {
                return Err(Error::Suppressed);
            }
            let quoted_len = (h.total_len() as usize)
                .min(orig.len())
                .min(MAX_V4_ERROR_LEN - V4_HDR - ICMP_HDR);
            emit_v4(&orig[..quoted_len], kind, src, dst, out)
        }
        (LaxIpSlice::Ipv6(v6), IpAddr::V6(src)) => {
            let h = v6.header();
            let dst = h.source_addr();
            let to = h.destination_addr();
            if dst.is_unspecified() || dst.is_multicast() {
                return Err(Error::Suppressed);
            }
            // Packet too big must reach multicast senders too (RFC 4443 2.4 (e.2)).
            if to.is_multicast() && !matches!(kind, Kind::TooBig { .. }) {
                return Err(Error::Suppressed);
            }
            let payload = v6.payload();
            if payload.ip_number == IpNumber::IPV6_ICMP && (payload.fragmented || is_icmpv6_error(payload.payload)) {
                return Err(Error::Suppressed);
            }
            let quoted_len = (V6_HDR + h.payload_length() as usize)
                .min(orig.len())
                .min(MAX_V6_ERROR_LEN - V6_HDR - ICMP_HDR);
            emit_v6(&orig[..quoted_len], kind, src, dst, out)
        }
        _ => Err(Error::Malformed("ICMP source family differs from packet")),
    }
}

fn unicast_v4(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_broadcast() || a.is_multicast())
}

fn is_icmpv4_error(icmp: &[u8]) -> bool {
    // Destination unreachable, source quench, redirect, time exceeded, parameter problem.
    matches!(icmp.first(), Some(3 | 4 | 5 | 11 | 12))
}

fn is_icmpv6_error(icmp: &[u8]) -> bool {
    // Types 0..=127 are errors (RFC 4443 2.1); a truncated header counts as one.
    icmp.first().is_none_or(|t| *t < 128)
}

fn emit_v4(quoted: &[u8], kind: Kind, src: Ipv4Addr, dst: Ipv4Addr, out: &mut [u8]) -> Result<usize> {
    let total = V4_HDR + ICMP_HDR + quoted.len();
    if out.len() < total {
        return Err(Error::Exhausted);
    }
    let icmp_type = match kind {
        Kind::TooBig { mtu } => {
            Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu })
        }
        Kind::TimeExceeded => Icmpv4Type::TimeExceeded(icmpv4::TimeExceededCode::TtlExceededInTransit),
        Kind::Unreachable => Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Network),
    };
    let mut ip = Ipv4Header::new(
        (ICMP_HDR + quoted.len()) as u16,
        ERROR_TTL,
        IpNumber::ICMP,
        src.octets(),
        dst.octets(),
    )
    .map_err(|_| Error::Exhausted)?;
    ip.dont_fragment = false;
    ip.header_checksum = ip.calc_header_checksum();
    let icmp = Icmpv4Header::with_checksum(icmp_type, quoted);
    out[..V4_HDR].copy_from_slice(&ip.to_bytes());
    out[V4_HDR..V4_HDR + ICMP_HDR].copy_from_slice(&icmp.to_bytes());
    out[V4_HDR + ICMP_HDR..total].copy_from_slice(quoted);
    Ok(total)
}

fn emit_v6(quoted: &[u8], kind: Kind, src: Ipv6Addr, dst: Ipv6Addr, out: &mut [u8]) -> Result<usize> {
    let total = V6_HDR + ICMP_HDR + quoted.len();
    if out.len() < total {
        return Err(Error::Exhausted);
    }
    let icmp_type = match kind {
        Kind::TooBig { mtu } => Icmpv6Type::PacketTooBig { mtu: u32::from(mtu) },
        Kind::TimeExceeded => Icmpv6Type::TimeExceeded(icmpv6::TimeExceededCode::HopLimitExceeded),
        Kind::Unreachable => Icmpv6Type::DestinationUnreachable(icmpv6::DestUnreachableCode::NoRoute),
    };
    let ip = Ipv6Header {
        traffic_class: 0,
        flow_label: Ipv6FlowLabel::ZERO,
        payload_length: (ICMP_HDR + quoted.len()) as u16,
        next_header: IpNumber::IPV6_ICMP,
        hop_limit: ERROR_TTL,
        source: src.octets(),
        destination: dst.octets(),
    };
    let icmp =
        Icmpv6Header::with_checksum(icmp_type, src.octets(), dst.octets(), quoted).map_err(|_| Error::Exhausted)?;
    out[..V6_HDR].copy_from_slice(&ip.to_bytes());
    out[V6_HDR..V6_HDR + ICMP_HDR].copy_from_slice(&icmp.to_bytes());
    out[V6_HDR + ICMP_HDR..total].copy_from_slice(quoted);
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{Icmpv4Slice, Icmpv6Slice, IpSlice, PacketBuilder};

    fn tcp_v4(len: usize, df: bool) -> Vec<u8> {
        let payload = vec![0xabu8; len - 40];
        let b = PacketBuilder::ipv4([198, 19, 1, 5], [198, 19, 2, 7], 64).tcp(40000, 5201, 1, 1000);
        let mut v = Vec::new();
        b.write(&mut v, &payload).unwrap();
        if !df {
            v[6] &= !0x40;
            let c = {
                v[10] = 0;
                v[11] = 0;
                crate::wire::checksum::of(&v[..20])
            };
            v[10..12].copy_from_slice(&c.to_be_bytes());
        }
        v
    }

    fn tcp_v6(len: usize) -> Vec<u8> {
        let payload = vec![0xcdu8; len - 60];
        let b = PacketBuilder::ipv6(
            "fd00::5".parse::<Ipv6Addr>().unwrap().octets(),
            "fd00:1::7".parse::<Ipv6Addr>().unwrap().octets(),
            64,
        )
        .tcp(40000, 5201, 1, 1000);
        let mut v = Vec::new();
        b.write(&mut v, &payload).unwrap();
        v
    }

    /// A fragmentation-needed answer to a 1500-byte TCP segment, byte for byte.
    #[test]
    fn test_emit_frag_needed_fixture() {
        let orig = tcp_v4(1500, true);
        let mut out = [0u8; 1600];
        let n = emit(
            &orig,
            Kind::TooBig { mtu: 1450 },
            IpAddr::V4([198, 19, 1, 1].into()),
            &mut out,
        )
        .unwrap();
        assert_eq!(n, MAX_V4_ERROR_LEN);
        // IPv4 header: no DF, TTL 64, ICMP, 198.19.1.1 -> 198.19.1.5.
        assert_eq!(&out[..4], &[0x45, 0x00, 0x02, 0x40]);
        assert_eq!(&out[6..10], &[0x00, 0x00, 64, 1]);
        assert_eq!(&out[12..20], &[198, 19, 1, 1, 198, 19, 1, 5]);
        assert_eq!(crate::wire::checksum::of(&out[..20]), 0);
        // ICMP type 3 code 4, unused 0, next-hop MTU 1450 (0x05aa).
        assert_eq!(&out[20..22], &[3, 4]);
        assert_eq!(&out[24..28], &[0, 0, 0x05, 0xaa]);
        assert_eq!(crate::wire::checksum::of(&out[20..n]), 0);
        assert_eq!(&out[28..n], &orig[..n - 28]);
    }

    #[test]
    fn test_parse_of_emitted_errors() {
        let orig = tcp_v4(1500, true);
        let mut out = [0u8; 1600];
        for (kind, want) in [
            (Kind::TooBig { mtu: 1450 }, (3u8, 4u8)),
            (Kind::TimeExceeded, (11, 0)),
            (Kind::Unreachable, (3, 0)),
        ] {
            let n = emit(&orig, kind, IpAddr::V4([198, 19, 1, 1].into()), &mut out).unwrap();
            let ip = IpSlice::from_slice(&out[..n]).unwrap();
            assert_eq!(ip.payload_ip_number(), IpNumber::ICMP);
            let icmp = Icmpv4Slice::from_slice(ip.payload().payload).unwrap();
            assert_eq!((icmp.type_u8(), icmp.code_u8()), want);
            assert_eq!(icmp.checksum(), icmp.icmp_type().calc_checksum(icmp.payload()));
        }
    }

    #[test]
    fn test_emit_packet_too_big_v6() {
        let orig = tcp_v6(1500);
        let mut out = [0u8; 1600];
        let src: Ipv6Addr = "fd00::1".parse().unwrap();
        let n = emit(&orig, Kind::TooBig { mtu: 1430 }, IpAddr::V6(src), &mut out).unwrap();
        assert_eq!(n, MAX_V6_ERROR_LEN);
        let ip = IpSlice::from_slice(&out[..n]).unwrap();
        assert_eq!(ip.source_addr(), IpAddr::V6(src));
        assert_eq!(ip.destination_addr(), "fd00::5".parse::<IpAddr>().unwrap());
        let icmp = Icmpv6Slice::from_slice(ip.payload().payload).unwrap();
        assert_eq!(icmp.icmp_type(), Icmpv6Type::PacketTooBig { mtu: 1430 });
        let want = icmp
            .icmp_type()
            .calc_checksum(
                src.octets(),
                "fd00::5".parse::<Ipv6Addr>().unwrap().octets(),
                icmp.payload(),
            )
            .unwrap();
        assert_eq!(icmp.checksum(), want);
        assert_eq!(icmp.payload(), &orig[..n - 48]);
    }

    #[test]
    fn short_packets_quote_only_what_they_have() {
        let orig = tcp_v4(60, true);
        let mut out = [0u8; 200];
        let n = emit(&orig, Kind::TimeExceeded, IpAddr::V4([10, 0, 0, 1].into()), &mut out).unwrap();
        assert_eq!(n, 28 + 60);
        // A truncated original (headers only) still works.
        let n = emit(
            &orig[..28],
            Kind::TimeExceeded,
            IpAddr::V4([10, 0, 0, 1].into()),
            &mut out,
        )
        .unwrap();
        assert_eq!(n, 28 + 28);
    }

    #[test]
    fn errors_are_not_answered_with_errors() {
        let orig = tcp_v4(1500, true);
        let mut err = [0u8; 1600];
        let n = emit(
            &orig,
            Kind::TooBig { mtu: 1400 },
            IpAddr::V4([198, 19, 1, 1].into()),
            &mut err,
        )
        .unwrap();
        let mut out = [0u8; 1600];
        assert_eq!(
            emit(
                &err[..n],
                Kind::TimeExceeded,
                IpAddr::V4([198, 19, 1, 9].into()),
                &mut out
            ),
            Err(Error::Suppressed)
        );
        let orig6 = tcp_v6(1500);
        let n = emit(
            &orig6,
            Kind::TimeExceeded,
            IpAddr::V6("fd00::1".parse().unwrap()),
            &mut err,
        )
        .unwrap();
        assert_eq!(
            emit(
                &err[..n],
                Kind::TimeExceeded,
                IpAddr::V6("fd00::2".parse().unwrap()),
                &mut out
            ),
            Err(Error::Suppressed)
        );
    }

    #[test]
    fn broadcast_multicast_and_fragments_are_not_answered() {
        let mut out = [0u8; 1600];
        let src = IpAddr::V4([10, 0, 0, 1].into());
        let mut bcast = tcp_v4(100, true);
        bcast[16..20].copy_from_slice(&[255, 255, 255, 255]);
        assert_eq!(emit(&bcast, Kind::Unreachable, src, &mut out), Err(Error::Suppressed));
        let mut mcast_src = tcp_v4(100, true);
        mcast_src[12..16].copy_from_slice(&[224, 0, 0, 1]);
        assert_eq!(
            emit(&mcast_src, Kind::Unreachable, src, &mut out),
            Err(Error::Suppressed)
        );
        let mut frag = tcp_v4(100, false);
        frag[6] = 0x00;
        frag[7] = 0x10; // offset 16 * 8
        assert_eq!(emit(&frag, Kind::TimeExceeded, src, &mut out), Err(Error::Suppressed));
    }

    #[test]
    fn family_mismatch_garbage_and_small_output_are_errors() {
        let orig = tcp_v4(100, true);
        let mut out = [0u8; 1600];
        assert!(matches!(
            emit(&orig, Kind::Unreachable, IpAddr::V6(Ipv6Addr::LOCALHOST), &mut out),
            Err(Error::Malformed(_))
        ));
        assert!(emit(
            &[0x45, 0, 0],
            Kind::Unreachable,
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            &mut out
        )
        .is_err());
        assert!(emit(&[], Kind::Unreachable, IpAddr::V4(Ipv4Addr::LOCALHOST), &mut out).is_err());
        let mut small = [0u8; 40];
        assert_eq!(
            emit(&orig, Kind::Unreachable, IpAddr::V4([10, 0, 0, 1].into()), &mut small),
            Err(Error::Exhausted)
        );
    }
}
