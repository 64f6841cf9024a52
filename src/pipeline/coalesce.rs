//! Coalescing decapsulated TCP segments and UDP datagrams into superpackets for the
//! TUN device (GRO), without copying their payloads.
//!
//! Segments arrive in receive buffers, in order. A run of segments of one TCP flow
//! with contiguous sequence numbers and identical headers otherwise (the rules of
//! Linux's `tcp_gro_receive`) becomes one *train*: the first segment's headers, fixed
//! up to describe the whole run (lengths, IPv4 header checksum, the TCP checksum
//! left partial), then every segment's payload. The worker writes a train as one
//! `writev` — virtio-net header, head segment, later payloads — and the kernel sees
//! one large TCP packet. With UDP segmentation offload on the device (USO, Linux ≥
//! 6.2), a run of equal-sized datagrams of one UDP flow (the last may be shorter)
//! becomes one `GSO_UDP_L4` packet the same way; the kernel hands it whole to a socket
//! with UDP_GRO and splits it for any other. Anything else goes out as a train of
//! one, unchanged.
//!
//! A train's checksum is left partial, which the kernel trusts, so every segment's
//! own TCP or UDP checksum is verified before it joins or starts one (as the kernel's
//! GRO does); one that fails goes out alone and unchanged, for the kernel to drop.

use crate::wire::{checksum, virtio};

/// A byte range in one of the receive buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub buf: u32,
    pub start: u32,
    pub len: u32,
}

/// One write to the TUN device.
#[derive(Debug, Clone, Copy)]
pub struct Train {
    pub vnet: [u8; virtio::HEADER_LEN],
    /// The first segment: headers and payload.
    pub head: Range,
    /// Later segments' payloads: `parts[first..first + count]`.
    pub first: usize,
    pub count: usize,
    /// Bytes the kernel receives (without the virtio-net header).
    pub len: usize,
    /// PSH / FIN of later segments, carried over to the head.
    tail_flags: u8,
}

/// What the open train needs to judge the next segment.
#[derive(Debug, Clone, Copy)]
struct Open {
    v6: bool,
    l3: usize,
    l4: usize,
    /// Payload bytes of the head segment: the train's segment size.
    size: usize,
    next_seq: u32,
    total: usize,
    closed: bool,
    /// A UDP train (else TCP).
    udp: bool,
}

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const URG: u8 = 0x20;
const CWR: u8 = 0x80;
/// The most bytes one coalesced IP packet may carry.
const MAX_TOTAL: usize = 65_535;
/// The most segments one train joins (the kernel's GSO limit is 64 per packet).
pub const MAX_SEGMENTS: usize = 64;

/// Builds trains from segments; allocation-free once constructed.
pub struct Coalescer {
    pub trains: Vec<Train>,
    pub parts: Vec<Range>,
    open: Option<Open>,
    enabled: bool,
    udp: bool,
}

/// Header facts of a TCP segment or UDP datagram that may coalesce.
struct Seg {
    v6: bool,
    l3: usize,
    l4: usize,
    seq: u32,
    flags: u8,
    payload: usize,
}

fn tcp_segment(p: &[u8]) -> Option<Seg> {
    let (v6, l3) = match p.first()? >> 4 {
        4 if p.len() >= 20 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let frag = u16::from_be_bytes([p[6], p[7]]) & 0x3fff; // MF or offset
            if ihl != 20 || p[9] != 6 || frag != 0 {
                return None;
            }
            (false, 20)
        }
        6 if p.len() >= 40 && p[6] == 6 => (true, 40),
        _ => return None,
    };
    let t = p.get(l3..)?;
    if t.len() < 20 {
        return None;
    }
    let l4 = usize::from(t[12] >> 4) * 4;
    if l4 < 20 || t.len() < l4 {
        return None;
    }
    Some(Seg {
        v6,
        l3,
        l4,
        seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        flags: t[13],
        payload: p.len() - l3 - l4,
    })
}

/// UDP header facts of a datagram that may coalesce: an unfragmented IPv4 datagram
/// without options, or IPv6 without extension headers, whose UDP length matches.
fn udp_datagram(p: &[u8]) -> Option<Seg> {
    let (v6, l3) = match p.first()? >> 4 {
        4 if p.len() >= 20 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let frag = u16::from_be_bytes([p[6], p[7]]) & 0x3fff;
            if ihl != 20 || p[9] != 17 || frag != 0 {
                return None;
            }
            (false, 20)
        }
        6 if p.len() >= 40 && p[6] == 17 => (true, 40),
        _ => return None,
    };
    let u = p.get(l3..l3 + 8)?;
    if usize::from(u16::from_be_bytes([u[4], u[5]])) != p.len() - l3 {
        return None;
    }
    Some(Seg {
        v6,
        l3,
        l4: 8,
        seq: 0,
        flags: 0,
        payload: p.len() - l3 - 8,
    })
}

impl Coalescer {
    /// `enabled` coalesces TCP; `udp` (the device took USO) UDP as well.
    pub fn new(max_trains: usize, max_parts: usize, enabled: bool, udp: bool) -> Coalescer {
        Coalescer {
            trains: Vec::with_capacity(max_trains),
            parts: Vec::with_capacity(max_parts),
            open: None,
            enabled,
            udp: enabled && udp,
        }
    }

    /// Stops coalescing UDP (the device refused a UDP superpacket).
    pub fn disable_udp(&mut self) {
        self.udp = false;
    }

    pub fn is_full(&self) -> bool {
        self.trains.len() == self.trains.capacity() || self.parts.len() == self.parts.capacity()
    }

    pub fn clear(&mut self) {
        self.trains.clear();
        self.parts.clear();
        self.open = None;
    }

    /// Adds the packet at `r` (whose bytes are `pkt`). Returns false, adding nothing,
    /// when full: the caller must `finish`, write and `clear` first.
    #[must_use = "a packet that did not fit must be counted as dropped"]
    pub fn push(&mut self, r: Range, pkt: &[u8], bufs: &[impl AsRef<[u8]>]) -> bool {
        let seg = self.candidate(pkt);
        if let (Some(o), Some(t), Some((s, udp))) = (self.open, self.trains.last(), &seg) {
            if !o.closed && *udp == o.udp && self.parts.len() < self.parts.capacity() && t.count + 1 < MAX_SEGMENTS {
                let head = &bufs[t.head.buf as usize].as_ref()[t.head.start as usize..][..(o.l3 + o.l4)];
                let joins = if o.udp {
                    udp_continues(&o, head, pkt, s)
                } else {
                    continues(&o, head, pkt, s)
                };
                if joins {
                    self.add_part(r, s);
                    return true;
                }
            }
        }
        if self.trains.len() == self.trains.capacity() {
            return false;
        }
        self.trains.push(Train {
            vnet: virtio::Repr::NONE.to_bytes(),
            head: r,
            first: self.parts.len(),
            count: 0,
            len: pkt.len(),
            tail_flags: 0,
        });
        self.open = seg.map(|(s, udp)| Open {
            v6: s.v6,
            l3: s.l3,
            l4: s.l4,
            size: s.payload,
            next_seq: s.seq.wrapping_add(s.payload as u32),
            total: pkt.len(),
            closed: !udp && s.flags & (FIN | SYN | RST | PSH | URG) != 0,
            udp,
        });
        true
    }

    /// What `pkt` may be in a train — a TCP segment, or with USO a UDP datagram
    /// (`true`), with a payload and a right checksum — parsed and verified once.
    fn candidate(&self, pkt: &[u8]) -> Option<(Seg, bool)> {
        if !self.enabled {
            return None;
        }
        if let Some(s) = tcp_segment(pkt) {
            return (s.payload > 0 && checksum_ok(pkt, &s, 6)).then_some((s, false));
        }
        if !self.udp {
            return None;
        }
        udp_datagram(pkt)
            .filter(|s| s.payload > 0 && checksum_ok(pkt, s, 17))
            .map(|s| (s, true))
    }

    /// Adds the payload of segment or datagram `s` at `r` to the open train.
    fn add_part(&mut self, r: Range, s: &Seg) {
        let off = (s.l3 + s.l4) as u32;
        self.parts.push(Range {
            buf: r.buf,
            start: r.start + off,
            len: r.len - off,
        });
        let t = self.trains.last_mut().expect("open train exists");
        t.count += 1;
        t.len += s.payload;
        t.tail_flags |= s.flags & (PSH | FIN);
        let o = self.open.as_mut().expect("an open train");
        o.next_seq = o.next_seq.wrapping_add(s.payload as u32);
        o.total += s.payload;
        o.closed = s.payload < o.size || s.flags & (PSH | FIN) != 0;
    }

    /// Rewrites the head of every train of two or more segments to describe the
    /// whole train, and writes its virtio-net header.
    pub fn finish(&mut self, bufs: &mut [impl AsMut<[u8]>]) {
        for t in self.trains.iter_mut().filter(|t| t.count > 0) {
            let Some(buf) = bufs.get_mut(t.head.buf as usize) else {
                continue;
            };
            let Some(p) = buf
                .as_mut()
                .get_mut(t.head.start as usize..(t.head.start + t.head.len) as usize)
            else {
                continue;
            };
            let (s, udp) = match tcp_segment(p) {
                Some(s) => (s, false),
                None => match udp_datagram(p) {
                    Some(s) => (s, true),
                    None => continue,
                },
            };
            let l4_total = t.len - s.l3;
            if s.v6 {
                p[4..6].copy_from_slice(&(l4_total as u16).to_be_bytes());
            } else {
                p[2..4].copy_from_slice(&(t.len as u16).to_be_bytes());
                p[10..12].copy_from_slice(&[0, 0]);
                let c = checksum::of(&p[..20]);
                p[10..12].copy_from_slice(&c.to_be_bytes());
            }
            // The L4 checksum is left partial (pseudo-header only): the kernel
            // completes it per segment, or trusts it as offloaded.
            let (proto, csum_at, gso_type) = if udp {
                p[s.l3 + 4..s.l3 + 6].copy_from_slice(&(l4_total as u16).to_be_bytes());
                (17, 6, virtio::GsoType::UdpL4)
            } else {
                p[s.l3 + 13] |= t.tail_flags;
                let g = if s.v6 {
                    virtio::GsoType::TcpV6
                } else {
                    virtio::GsoType::TcpV4
                };
                (6, 16, g)
            };
            let partial = checksum::fold(checksum::pseudo_header(p, proto, l4_total));
            p[s.l3 + csum_at..s.l3 + csum_at + 2].copy_from_slice(&partial.to_be_bytes());
            t.vnet = virtio::Repr {
                needs_csum: true,
                gso_type,
                hdr_len: (s.l3 + s.l4) as u16,
                gso_size: s.payload as u16,
                csum_start: s.l3 as u16,
                csum_offset: csum_at as u16,
            }
            .to_bytes();
        }
    }
}

/// Whether the TCP or UDP checksum of packet `p` (transport header at `s.l3`) is
/// right. An IPv4 UDP datagram without one (0) passes: the train gets one.
fn checksum_ok(p: &[u8], s: &Seg, proto: u8) -> bool {
    let l4 = &p[s.l3..];
    if proto == 17 && !s.v6 && l4[6..8] == [0, 0] {
        return true;
    }
    checksum::fold(checksum::pseudo_header(p, proto, l4.len()) + checksum::sum(l4)) == 0xffff
}

/// Whether the IP headers of `head` and `p` (of `l3` bytes) are the same but for
/// what differs between packets of one flow (lengths, IPv4 id and checksum).
fn same_ip(v6: bool, l3: usize, head: &[u8], p: &[u8]) -> bool {
    let (h_ip, p_ip) = (&head[..l3], &p[..l3]);
    if v6 {
        // Version, traffic class, flow label; next header, hop limit; addresses.
        h_ip[..4] == p_ip[..4] && h_ip[6..40] == p_ip[6..40]
    } else {
        // Version/IHL, TOS; flags (DF); TTL, protocol; addresses.
        h_ip[..2] == p_ip[..2]
            && h_ip[6] & 0xe0 == p_ip[6] & 0xe0
            && h_ip[8..10] == p_ip[8..10]
            && h_ip[12..20] == p_ip[12..20]
    }
}

/// Whether datagram `p` continues the UDP train whose head headers are `head`:
/// same flow, and no longer than the train's datagram size.
fn udp_continues(o: &Open, head: &[u8], p: &[u8], s: &Seg) -> bool {
    s.v6 == o.v6
        && s.l3 == o.l3
        && s.payload > 0
        && s.payload <= o.size
        && o.total + s.payload <= MAX_TOTAL
        && same_ip(o.v6, o.l3, head, p)
        && head[o.l3..o.l3 + 4] == p[o.l3..o.l3 + 4]
}

/// Whether segment `p` continues the train whose head headers are `head`.
fn continues(o: &Open, head: &[u8], p: &[u8], s: &Seg) -> bool {
    if s.v6 != o.v6 || s.l3 != o.l3 || s.l4 != o.l4 || s.payload == 0 || s.payload > o.size {
        return false;
    }
    if s.seq != o.next_seq || o.total + s.payload > MAX_TOTAL {
        return false;
    }
    if s.flags & (SYN | RST | URG | CWR) != 0 {
        return false;
    }
    if !same_ip(o.v6, o.l3, head, p) {
        return false;
    }
    let (h, t) = (&head[o.l3..o.l3 + o.l4], &p[o.l3..o.l3 + o.l4]);
    // Ports, ack; data offset, flags other than PSH/FIN, window; options.
    h[..4] == t[..4]
        && h[8..12] == t[8..12]
        && h[12] == t[12]
        && h[13] & !(PSH | FIN) == t[13] & !(PSH | FIN)
        && h[14..16] == t[14..16]
        && h[20..] == t[20..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn seg(seq: u32, payload: usize, psh: bool) -> Vec<u8> {
        let mut v = Vec::new();
        let b = PacketBuilder::ipv4([198, 19, 1, 1], [198, 19, 2, 1], 63)
            .tcp(40000, 5201, seq, 512)
            .ack(9);
        let b = if psh { b.psh() } else { b };
        b.write(&mut v, &vec![(seq % 200) as u8; payload]).unwrap();
        v
    }

    /// Lays packets out in one buffer and pushes them.
    fn run(pkts: &[Vec<u8>], enabled: bool) -> (Coalescer, Vec<Vec<u8>>) {
        let (buf, ranges) = crate::testkit::laid_out(pkts, 0);
        let mut bufs = vec![buf];
        let mut c = Coalescer::new(16, 64, enabled, enabled);
        for (r, p) in ranges.iter().zip(pkts) {
            assert!(c.push(*r, p, &bufs));
        }
        c.finish(&mut bufs);
        (c, bufs)
    }

    fn assemble(c: &Coalescer, bufs: &[Vec<u8>], t: &Train) -> Vec<u8> {
        let h = t.head;
        let mut v = bufs[h.buf as usize][h.start as usize..(h.start + h.len) as usize].to_vec();
        for r in &c.parts[t.first..t.first + t.count] {
            v.extend_from_slice(&bufs[r.buf as usize][r.start as usize..(r.start + r.len) as usize]);
        }
        v
    }

    #[test]
    fn contiguous_segments_become_one_superpacket() {
        let pkts = [seg(1000, 1000, false), seg(2000, 1000, false), seg(3000, 400, true)];
        let (c, bufs) = run(&pkts, true);
        assert_eq!(c.trains.len(), 1);
        let t = c.trains[0];
        assert_eq!((t.count, t.len), (2, 40 + 2400));
        let v = virtio::Repr::parse(&t.vnet).unwrap();
        assert_eq!(
            v,
            virtio::Repr {
                needs_csum: true,
                gso_type: virtio::GsoType::TcpV4,
                hdr_len: 40,
                gso_size: 1000,
                csum_start: 20,
                csum_offset: 16
            }
        );
        let whole = assemble(&c, &bufs, &t);
        assert_eq!(whole.len(), t.len);
        let ip = etherparse::Ipv4HeaderSlice::from_slice(&whole).unwrap();
        assert_eq!(usize::from(ip.total_len()), whole.len());
        assert_eq!(ip.header_checksum(), ip.to_header().calc_header_checksum());
        // The partial checksum plus the data sums to a valid TCP checksum.
        let mut full = whole.clone();
        crate::pipeline::segment::complete_checksum(&mut full, 20, 16).unwrap();
        let tcp = etherparse::TcpSlice::from_slice(&full[20..]).unwrap();
        assert!(tcp.psh(), "the last segment's PSH is the train's");
        assert_eq!(
            tcp.checksum(),
            tcp.calc_checksum_ipv4([198, 19, 1, 1], [198, 19, 2, 1]).unwrap()
        );
        let payload: Vec<u8> = pkts.iter().flat_map(|p| p[40..].to_vec()).collect();
        assert_eq!(&whole[40..], &payload[..]);
    }

    #[test]
    fn gaps_flags_and_other_flows_start_new_trains() {
        let mut other_flow = seg(2000, 1000, false);
        other_flow[22] = 0x99; // other source port
        let mut ecn = seg(3000, 1000, false);
        ecn[33] |= CWR;
        let pkts = [
            seg(1000, 1000, false),
            seg(2500, 1000, false), // gap
            other_flow,
            ecn,
            seg(9000, 1000, true), // PSH: closes its train
            seg(10000, 1000, false),
        ];
        let (c, _) = run(&pkts, true);
        assert_eq!(c.trains.len(), 6);
        assert!(c.trains.iter().all(|t| t.count == 0 && t.vnet == [0; 10]));
    }

    #[test]
    fn a_longer_segment_ends_the_train_and_disabled_never_coalesces() {
        let (c, _) = run(&[seg(0, 500, false), seg(500, 1000, false)], true);
        assert_eq!(c.trains.len(), 2);
        let (c, _) = run(&[seg(0, 1000, false), seg(1000, 1000, false)], false);
        assert_eq!(c.trains.len(), 2);
        let (c, _) = run(&[seg(0, 1000, false), seg(1000, 1000, false)], true);
        assert_eq!(c.trains.len(), 1);
    }

    fn dgram(src_port: u16, payload: usize, fill: u8) -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ipv4([198, 19, 1, 1], [198, 19, 2, 1], 63)
            .udp(src_port, 5201)
            .write(&mut v, &vec![fill; payload])
            .unwrap();
        v
    }

    #[test]
    fn datagrams_of_one_flow_become_one_udp_superpacket() {
        let pkts = [dgram(4000, 1000, 1), dgram(4000, 1000, 2), dgram(4000, 300, 3)];
        let (c, bufs) = run(&pkts, true);
        assert_eq!(c.trains.len(), 1);
        let t = c.trains[0];
        assert_eq!((t.count, t.len), (2, 28 + 2300));
        let v = virtio::Repr::parse(&t.vnet).unwrap();
        assert_eq!(
            v,
            virtio::Repr {
                needs_csum: true,
                gso_type: virtio::GsoType::UdpL4,
                hdr_len: 28,
                gso_size: 1000,
                csum_start: 20,
                csum_offset: 6
            }
        );
        let mut whole = assemble(&c, &bufs, &t);
        let ip = etherparse::Ipv4HeaderSlice::from_slice(&whole).unwrap();
        assert_eq!(usize::from(ip.total_len()), whole.len());
        assert_eq!(ip.header_checksum(), ip.to_header().calc_header_checksum());
        crate::pipeline::segment::complete_checksum(&mut whole, 20, 6).unwrap();
        let udp = etherparse::UdpSlice::from_slice(&whole[20..]).unwrap();
        assert_eq!(usize::from(udp.length()), 2308);
        let payload: Vec<u8> = pkts.iter().flat_map(|p| p[28..].to_vec()).collect();
        assert_eq!(udp.payload(), &payload[..]);
        let hdr = udp.to_header();
        let want = hdr
            .calc_checksum_ipv4_raw([198, 19, 1, 1], [198, 19, 2, 1], udp.payload())
            .unwrap();
        assert_eq!(udp.checksum(), want);
    }

    #[test]
    fn other_udp_flows_longer_datagrams_and_a_short_one_end_a_train() {
        let pkts = [
            dgram(4000, 500, 1),
            dgram(4001, 500, 1), // other flow
            dgram(4001, 800, 1), // longer than the train's size
            dgram(4001, 100, 1), // shorter: joins, and closes
            dgram(4001, 100, 1), // after a short one: new train
        ];
        let (c, _) = run(&pkts, true);
        let counts: Vec<usize> = c.trains.iter().map(|t| t.count).collect();
        assert_eq!(counts, [0, 0, 1, 0]);
        // Without USO nothing joins; a lying UDP length never does.
        let (c, _) = run(&[dgram(1, 500, 1), dgram(1, 500, 1)], false);
        assert_eq!(c.trains.len(), 2);
        let mut liar = dgram(1, 500, 1);
        liar[25] ^= 1;
        let (c, _) = run(&[dgram(1, 500, 1), liar], true);
        assert_eq!(c.trains.len(), 2);
    }

    #[test]
    fn a_segment_with_a_wrong_checksum_goes_out_alone_and_unchanged() {
        let mut bad_udp = dgram(1, 500, 1);
        bad_udp[40] ^= 0xff; // payload byte: the checksum no longer matches
        let mut bad_tcp = seg(2000, 1000, false);
        bad_tcp[100] ^= 0xff;
        for pkts in [
            vec![dgram(1, 500, 1), bad_udp.clone(), dgram(1, 500, 1)],
            vec![bad_udp.clone(), dgram(1, 500, 1)],
            vec![seg(1000, 1000, false), bad_tcp.clone(), seg(3000, 1000, false)],
        ] {
            let (c, bufs) = run(&pkts, true);
            let bad = c
                .trains
                .iter()
                .find(|t| assemble(&c, &bufs, t) == bad_udp || assemble(&c, &bufs, t) == bad_tcp)
                .expect("the bad one is written as it came");
            assert_eq!((bad.count, bad.vnet), (0, [0; 10]));
        }
        // An IPv4 datagram without a checksum (0) joins; the train gets one.
        let mut none = dgram(1, 500, 1);
        none[26..28].copy_from_slice(&[0, 0]);
        let (c, _) = run(&[dgram(1, 500, 1), none], true);
        assert_eq!(c.trains.len(), 1);
    }

    #[test]
    fn full_coalescer_refuses() {
        let bufs = vec![seg(0, 10, false)];
        let mut c = Coalescer::new(1, 1, true, true);
        let r = Range {
            buf: 0,
            start: 0,
            len: bufs[0].len() as u32,
        };
        assert!(c.push(r, &bufs[0], &bufs));
        let mut udp = Vec::new();
        PacketBuilder::ipv4([1, 1, 1, 1], [2, 2, 2, 2], 9)
            .udp(1, 2)
            .write(&mut udp, &[0])
            .unwrap();
        assert!(!c.push(r, &udp, &bufs));
    }
}
