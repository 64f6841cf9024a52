//! Splitting a TUN superpacket (TSO / USO) into the segments that go on the wire,
//! without copying its payload.
//!
//! With offloads on, the kernel hands the TUN device TCP (or UDP) superpackets of up
//! to 64 KB: one IP and transport header, then many segments' worth of payload, with
//! the segment size in the virtio-net header. For each segment this module writes a
//! header block — VXLAN + Ethernet (copied from the encapsulation the inside path
//! wrote), the IP header with its length, ID and checksum fixed, the TCP header with
//! its sequence number, flags and checksum fixed (or the UDP header with length and
//! checksum) — into a header arena, and names the segment's payload by its range in
//! the superpacket. The worker then sends each segment as two iovecs (header block,
//! payload slice), so payload bytes are copied only by the kernel's `sendmsg`.

use super::ENCAP_LEN;
use crate::wire::checksum;
use crate::wire::{Error, Result};

/// Transport protocol of a superpacket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Tcp,
    Udp,
}

/// How a superpacket is to be split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gso {
    pub l4: L4,
    /// Bytes of IP header (with IPv6 extension headers): where the transport header
    /// starts (the virtio-net header's `csum_start`).
    pub l3_len: usize,
    /// Payload bytes per segment (the virtio-net header's `gso_size`).
    pub size: usize,
}

/// One segment: a header block in the arena and a payload range in the superpacket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub hdr_start: usize,
    pub hdr_len: usize,
    pub payload_start: usize,
    pub payload_len: usize,
}

/// Fixed-capacity storage for header blocks, reset once per batch.
pub struct Arena {
    buf: Vec<u8>,
    used: usize,
}

impl Arena {
    pub fn new(capacity: usize) -> Arena {
        Arena {
            buf: vec![0u8; capacity],
            used: 0,
        }
    }

    pub fn clear(&mut self) {
        self.used = 0;
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.used
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    fn alloc(&mut self, n: usize) -> Option<(usize, &mut [u8])> {
        let start = self.used;
        let end = start.checked_add(n).filter(|e| *e <= self.buf.len())?;
        self.used = end;
        Some((start, &mut self.buf[start..end]))
    }
}

/// The transport header length of a superpacket, read from the packet (the virtio
/// `hdr_len` cannot be trusted: for forwarded packets it may cover the whole packet).
pub fn l4_len(pkt: &[u8], gso: &Gso) -> Result<usize> {
    match gso.l4 {
        L4::Udp => Ok(8),
        L4::Tcp => {
            let off = *pkt.get(gso.l3_len + 12).ok_or(Error::Truncated)?;
            let n = usize::from(off >> 4) * 4;
            if !(20..=60).contains(&n) {
                return Err(Error::Malformed("TCP data offset out of range"));
            }
            Ok(n)
        }
    }
}

/// Splits `dgram` — the encapsulation header (`ENCAP_LEN` bytes) followed by the
/// superpacket — into segments, appending header blocks to `arena` and segment
/// descriptors to `out` (whose spare capacity bounds the segment count). Payload
/// ranges are offsets into `dgram`.
pub fn split(dgram: &[u8], gso: &Gso, arena: &mut Arena, out: &mut Vec<Segment>) -> Result<usize> {
    let pkt = dgram.get(ENCAP_LEN..).ok_or(Error::Truncated)?;
    let v6 = match pkt.first().map(|b| b >> 4) {
        Some(4) => false,
        Some(6) => true,
        _ => return Err(Error::Malformed("not IPv4/IPv6")),
    };
    // IPv6 superpackets with extension headers are not split (the kernel does not
    // build them for a TUN device); the next header must be the transport itself.
    let (l3_ok, proto_at) = if v6 {
        (gso.l3_len == 40, 6)
    } else {
        (gso.l3_len >= 20 && gso.l3_len == usize::from(pkt[0] & 0x0f) * 4, 9)
    };
    if !l3_ok || pkt.len() <= gso.l3_len {
        return Err(Error::Malformed("csum_start does not match the IP header"));
    }
    let want_proto = if gso.l4 == L4::Tcp { 6 } else { 17 };
    if pkt[proto_at] != want_proto {
        return Err(Error::Malformed("transport protocol differs from the GSO type"));
    }
    if gso.size == 0 {
        return Err(Error::Malformed("zero segment size"));
    }
    let l4 = l4_len(pkt, gso)?;
    let hdr = gso.l3_len + l4;
    if pkt.len() <= hdr {
        return Err(Error::Truncated);
    }
    let payload = pkt.len() - hdr;
    let n = payload.div_ceil(gso.size);
    if n > out.capacity() - out.len() || n * (ENCAP_LEN + hdr) > arena.remaining() {
        return Err(Error::Exhausted);
    }
    let proto = if gso.l4 == L4::Tcp { 6 } else { 17 };
    let (seq0, flags0) = if gso.l4 == L4::Tcp {
        let t = &pkt[gso.l3_len..];
        (u32::from_be_bytes([t[4], t[5], t[6], t[7]]), t[13])
    } else {
        (0, 0)
    };
    let id0 = u16::from_be_bytes([pkt[4], pkt[5]]);
    for i in 0..n {
        let p_start = hdr + i * gso.size;
        let p_len = gso.size.min(pkt.len() - p_start);
        let Some((h_start, h)) = arena.alloc(ENCAP_LEN + hdr) else {
            return Err(Error::Exhausted);
        };
        h[..ENCAP_LEN + hdr].copy_from_slice(&dgram[..ENCAP_LEN + hdr]);
        let ip = &mut h[ENCAP_LEN..];
        let l4_total = l4 + p_len;
        if v6 {
            let plen = (gso.l3_len - 40 + l4_total) as u16;
            ip[4..6].copy_from_slice(&plen.to_be_bytes());
        } else {
            ip[2..4].copy_from_slice(&((gso.l3_len + l4_total) as u16).to_be_bytes());
            ip[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
            ip[10..12].copy_from_slice(&[0, 0]);
            let c = checksum::of(&ip[..gso.l3_len]);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
        }
        let (ip_hdr, t) = ip.split_at_mut(gso.l3_len);
        let csum_at = if gso.l4 == L4::Tcp {
            t[4..8].copy_from_slice(&seq0.wrapping_add((i * gso.size) as u32).to_be_bytes());
            let mut flags = flags0;
            if i + 1 < n {
                flags &= !(0x01 | 0x08); // FIN, PSH only on the last segment
            }
            if i > 0 {
                flags &= !0x80; // CWR only on the first
            }
            t[13] = flags;
            16
        } else {
            t[4..6].copy_from_slice(&(l4_total as u16).to_be_bytes());
            6
        };
        t[csum_at..csum_at + 2].copy_from_slice(&[0, 0]);
        let s = checksum::pseudo_header(ip_hdr, proto, l4_total)
            + checksum::sum(&t[..l4])
            + checksum::sum(&pkt[p_start..p_start + p_len]);
        let mut c = !checksum::fold(s);
        if gso.l4 == L4::Udp && c == 0 {
            c = 0xffff;
        }
        t[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
        out.push(Segment {
            hdr_start: h_start,
            hdr_len: ENCAP_LEN + hdr,
            payload_start: ENCAP_LEN + p_start,
            payload_len: p_len,
        });
    }
    Ok(n)
}

/// Completes a partial checksum (virtio `NEEDS_CSUM` on a single packet): the sum
/// from `start` to the end goes, complemented, to `start + offset`.
pub fn complete_checksum(pkt: &mut [u8], start: usize, offset: usize) -> Result<()> {
    let at = start.checked_add(offset).ok_or(Error::Malformed("checksum offset"))?;
    if at + 2 > pkt.len() || start > pkt.len() {
        return Err(Error::Malformed("checksum field outside the packet"));
    }
    // The field holds the pseudo-header sum the kernel left; it is summed as data.
    let c = !checksum::fold(checksum::sum(&pkt[start..]));
    pkt[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{IpSlice, PacketBuilder, TcpSlice, UdpSlice};

    /// A TCP superpacket as the kernel hands it over: headers, then `payload` bytes,
    /// with a partial checksum (pseudo-header only) and FIN|PSH|CWR|ACK set.
    pub fn tcp_super(v6: bool, payload: usize) -> Vec<u8> {
        let data: Vec<u8> = (0..payload).map(|i| (i % 251) as u8).collect();
        let b = if v6 {
            PacketBuilder::ipv6([0xfd; 16], [0xfe; 16], 64)
        } else {
            PacketBuilder::ipv4([198, 19, 1, 1], [198, 19, 2, 1], 64)
        };
        let mut v = Vec::new();
        b.tcp(40000, 5201, 1000, 512)
            .ack(77)
            .psh()
            .fin()
            .cwr()
            .write(&mut v, &data)
            .unwrap();
        v
    }

    fn dgram(pkt: &[u8]) -> Vec<u8> {
        let mut d = vec![0xeeu8; ENCAP_LEN];
        d.extend_from_slice(pkt);
        d
    }

    fn rebuild(d: &[u8], arena: &Arena, s: &Segment) -> Vec<u8> {
        let mut v = arena.bytes()[s.hdr_start..s.hdr_start + s.hdr_len].to_vec();
        v.extend_from_slice(&d[s.payload_start..s.payload_start + s.payload_len]);
        v
    }

    #[test]
    fn tcp_superpackets_split_into_valid_segments() {
        for v6 in [false, true] {
            let pkt = tcp_super(v6, 4000);
            let d = dgram(&pkt);
            let l3 = if v6 { 40 } else { 20 };
            let gso = Gso {
                l4: L4::Tcp,
                l3_len: l3,
                size: 1400,
            };
            let mut arena = Arena::new(4096);
            let mut out = Vec::with_capacity(8);
            assert_eq!(split(&d, &gso, &mut arena, &mut out), Ok(3));
            let mut seen = Vec::new();
            for (i, s) in out.iter().enumerate() {
                let seg = rebuild(&d, &arena, s);
                assert_eq!(&seg[..ENCAP_LEN], &[0xee; ENCAP_LEN]);
                let ip = IpSlice::from_slice(&seg[ENCAP_LEN..]).unwrap();
                let tcp = TcpSlice::from_slice(ip.payload().payload).unwrap();
                assert_eq!(tcp.sequence_number(), 1000 + 1400 * i as u32);
                assert_eq!(tcp.fin(), i == 2, "FIN only last");
                assert_eq!(tcp.psh(), i == 2, "PSH only last");
                assert_eq!(tcp.cwr(), i == 0, "CWR only first");
                let want = if v6 {
                    tcp.calc_checksum_ipv6(
                        ip.ipv6().unwrap().header().source(),
                        ip.ipv6().unwrap().header().destination(),
                    )
                } else {
                    let h = ip.ipv4().unwrap().header();
                    assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum());
                    assert_eq!(h.identification(), i as u16);
                    tcp.calc_checksum_ipv4(h.source(), h.destination())
                };
                assert_eq!(tcp.checksum(), want.unwrap());
                seen.extend_from_slice(tcp.payload());
            }
            assert_eq!(seen, pkt[l3 + 20..].to_vec());
            assert_eq!(out[2].payload_len, 1200);
        }
    }

    #[test]
    fn udp_superpackets_split_into_valid_datagrams() {
        let data: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let mut pkt = Vec::new();
        PacketBuilder::ipv4([198, 19, 1, 1], [198, 19, 2, 1], 64)
            .udp(1, 2)
            .write(&mut pkt, &data)
            .unwrap();
        let d = dgram(&pkt);
        let gso = Gso {
            l4: L4::Udp,
            l3_len: 20,
            size: 1000,
        };
        let mut arena = Arena::new(4096);
        let mut out = Vec::with_capacity(8);
        assert_eq!(split(&d, &gso, &mut arena, &mut out), Ok(3));
        for s in &out {
            let seg = rebuild(&d, &arena, s);
            let ip = IpSlice::from_slice(&seg[ENCAP_LEN..]).unwrap();
            let udp = UdpSlice::from_slice(ip.payload().payload).unwrap();
            assert_eq!(udp.length(), 1008);
            let h = ip.ipv4().unwrap().header();
            assert_eq!(
                udp.checksum(),
                udp.to_header()
                    .calc_checksum_ipv4(&h.to_header(), udp.payload())
                    .unwrap()
            );
        }
    }

    #[test]
    fn bad_parameters_are_errors_not_panics() {
        let pkt = tcp_super(false, 3000);
        let d = dgram(&pkt);
        let mut arena = Arena::new(4096);
        let mut out = Vec::with_capacity(2);
        let g = |l3, size| Gso {
            l4: L4::Tcp,
            l3_len: l3,
            size,
        };
        assert!(split(&d, &g(20, 0), &mut arena, &mut out).is_err());
        assert!(split(&d, &g(24, 1400), &mut arena, &mut out).is_err());
        assert_eq!(split(&d, &g(20, 100), &mut arena, &mut out), Err(Error::Exhausted));
        assert!(split(&d[..ENCAP_LEN + 30], &g(20, 100), &mut arena, &mut out).is_err());
        assert!(split(&d[..3], &g(20, 100), &mut arena, &mut out).is_err());
        let mut small = Arena::new(100);
        let mut out = Vec::with_capacity(8);
        assert_eq!(split(&d, &g(20, 1400), &mut small, &mut out), Err(Error::Exhausted));
    }

    #[test]
    fn partial_checksums_are_completed() {
        let mut p = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1, 2)
            .write(&mut p, b"hello")
            .unwrap();
        let good = p.clone();
        // Replace the checksum with the pseudo-header sum, as the kernel leaves it.
        let ps = checksum::fold(checksum::pseudo_header(&p, 17, p.len() - 20));
        p[26..28].copy_from_slice(&ps.to_be_bytes());
        complete_checksum(&mut p, 20, 6).unwrap();
        assert_eq!(p, good);
        assert!(complete_checksum(&mut p, 20, 100).is_err());
        assert!(complete_checksum(&mut p, usize::MAX, 1).is_err());
    }
}
