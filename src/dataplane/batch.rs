//! The TX batch a worker fills while it processes packets and drains with
//! `sendmmsg`: iovecs pointing into the worker's own buffers, grouped into UDP GSO
//! trains per destination and source port. All storage is allocated once, when the
//! worker starts; it is owned by one worker and touches no shared state. The system
//! calls themselves are in `sys`.

use crate::pipeline::segment::Segment;
use crate::pipeline::ENCAP_LEN;
use crate::sys::{TxIov, TxMsg, MAX_GSO_PAYLOAD, MAX_GSO_SEGMENTS};

/// The most segments one superpacket is split into: the capacity of a worker's
/// segment list, so `segment::split` refuses a superpacket that would make more.
pub const MAX_SPLIT: usize = 256;
/// The largest header block of one segment: VXLAN + Ethernet, IPv4 with options,
/// TCP with options.
pub const MAX_SEGMENT_HEADER: usize = ENCAP_LEN + 60 + 60;
/// Datagram pieces and messages a TX batch holds between flushes.
pub const TX_IOVS: usize = 2048;
pub const TX_MSGS: usize = 512;
/// Header bytes a TX batch holds between flushes.
pub const HDR_ARENA: usize = 1024 * 144;

// A batch with room for one read holds a whole split superpacket — every segment
// two pieces, each its own message in the worst case — and its header blocks, so no
// segment is ever left without room.
const _: () = assert!(TX_IOVS >= 2 * MAX_SPLIT && TX_MSGS >= MAX_SPLIT);
const _: () = assert!(HDR_ARENA >= MAX_SPLIT * MAX_SEGMENT_HEADER);

/// Which buffer a datagram piece points into: the read arena, or the header arena.
pub const READ_BUF: u32 = 0;
pub const HDR_BUF: u32 = 1;

/// A segment as two pieces: its header block, then its payload (which starts
/// `base` bytes into the read arena plus the segment's own offset).
pub fn segment_iovs(s: &Segment, base: usize) -> [TxIov; 2] {
    [
        TxIov {
            buf: HDR_BUF,
            start: s.hdr_start as u32,
            len: s.hdr_len as u32,
        },
        TxIov {
            buf: READ_BUF,
            start: (base + s.payload_start) as u32,
            len: s.payload_len as u32,
        },
    ]
}
use std::net::SocketAddr;

/// Datagrams waiting to be sent, grouped into GSO trains.
///
/// A datagram is one or two pieces (header block and payload, or a whole packet in
/// place). Consecutive datagrams to the same destination from the same socket form
/// one message while they have the train's datagram size; a shorter one ends the
/// train (the kernel allows only the last segment to be short). Trains stay within the
/// UDP GSO limits: 64 segments and 65,507 bytes.
pub struct TxBatch {
    pub iovs: Vec<TxIov>,
    pub msgs: Vec<TxMsg>,
    /// Which of the worker's send sockets each message goes out on.
    pub socks: Vec<u8>,
    /// Datagrams in each message.
    pub dgrams: Vec<u16>,
    /// Datagram size of the open message.
    size: usize,
    msg_bytes: usize,
    closed: bool,
    gso: bool,
}

impl TxBatch {
    pub fn new(max_msgs: usize, max_iovs: usize, gso: bool) -> TxBatch {
        TxBatch {
            iovs: Vec::with_capacity(max_iovs),
            msgs: Vec::with_capacity(max_msgs),
            socks: Vec::with_capacity(max_msgs),
            dgrams: Vec::with_capacity(max_msgs),
            size: 0,
            msg_bytes: 0,
            closed: false,
            gso,
        }
    }

    pub fn set_gso(&mut self, gso: bool) {
        self.gso = gso;
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// Whether `dgrams` datagrams of up to `parts` pieces each still fit, however
    /// they group into messages.
    pub fn has_room(&self, dgrams: usize, parts: usize) -> bool {
        self.iovs.len() + dgrams * parts <= self.iovs.capacity() && self.msgs.len() + dgrams <= self.msgs.capacity()
    }

    /// Whether whatever one TUN read produces still fits: a single datagram, or a
    /// superpacket split into up to [`MAX_SPLIT`] segments of two pieces each.
    pub fn has_room_for_a_read(&self) -> bool {
        self.has_room(MAX_SPLIT, 2)
    }

    pub fn clear(&mut self) {
        self.iovs.clear();
        self.msgs.clear();
        self.socks.clear();
        self.dgrams.clear();
        self.msg_bytes = 0;
        self.closed = false;
    }

    /// Queues one datagram made of `parts` for `dst` on socket `sock`. Returns
    /// false, queuing nothing, when there is no room.
    #[must_use = "a datagram that did not fit must be counted as dropped"]
    pub fn push(&mut self, parts: &[TxIov], dst: SocketAddr, sock: u8) -> bool {
        if !self.has_room(1, parts.len()) {
            return false;
        }
        let len: usize = parts.iter().map(|p| p.len as usize).sum();
        let first = self.iovs.len() as u32;
        self.iovs.extend_from_slice(parts);
        if let (Some(m), Some(&s), Some(n)) = (self.msgs.last_mut(), self.socks.last(), self.dgrams.last_mut()) {
            let fits = self.gso
                && !self.closed
                && m.dst == dst
                && s == sock
                && len <= self.size
                && usize::from(*n) < MAX_GSO_SEGMENTS
                && self.msg_bytes + len <= MAX_GSO_PAYLOAD;
            if fits {
                m.count += parts.len() as u32;
                m.segment = self.size as u16;
                *n += 1;
                self.msg_bytes += len;
                self.closed = len < self.size;
                return true;
            }
        }
        self.msgs.push(TxMsg {
            dst,
            segment: 0,
            first,
            count: parts.len() as u32,
        });
        self.socks.push(sock);
        self.dgrams.push(1);
        self.size = len.min(usize::from(u16::MAX));
        self.msg_bytes = len;
        self.closed = false;
        true
    }

    /// Bytes of message `i`.
    pub fn msg_len(&self, i: usize) -> usize {
        let m = &self.msgs[i];
        self.iovs[m.first as usize..(m.first + m.count) as usize]
            .iter()
            .map(|s| s.len as usize)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dst(n: u8) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, n], 4789))
    }

    fn two(len: u32) -> [TxIov; 2] {
        [
            TxIov {
                buf: 1,
                start: 0,
                len: 74,
            },
            TxIov {
                buf: 0,
                start: 0,
                len: len - 74,
            },
        ]
    }

    #[test]
    fn equal_datagrams_to_one_peer_form_one_train_ended_by_a_short_one() {
        let mut b = TxBatch::new(16, 64, true);
        for _ in 0..3 {
            assert!(b.push(&two(1472), dst(2), 0));
        }
        assert!(b.push(&two(600), dst(2), 0));
        assert!(b.push(&two(1472), dst(2), 0)); // after the short tail: new train
        assert_eq!(b.msgs.len(), 2);
        assert_eq!((b.msgs[0].segment, b.msgs[0].count, b.dgrams[0]), (1472, 8, 4));
        assert_eq!((b.msgs[1].first, b.msgs[1].count, b.msgs[1].segment), (8, 2, 0));
        assert_eq!(b.msg_len(0), 3 * 1472 + 600);
    }

    #[test]
    fn trains_split_by_peer_socket_size_and_limits() {
        let mut b = TxBatch::new(200, 400, true);
        let one = |len| [TxIov { buf: 0, start: 0, len }];
        assert!(b.push(&one(1000), dst(2), 0));
        assert!(b.push(&one(1000), dst(3), 0)); // other peer
        assert!(b.push(&one(1000), dst(3), 1)); // other socket
        assert!(b.push(&one(1200), dst(3), 1)); // larger than the train's size
        assert_eq!(b.msgs.len(), 4);
        b.clear();
        for _ in 0..100 {
            assert!(b.push(&one(1472), dst(2), 0));
        }
        // 65,507 / 1472 = 44 datagrams per train.
        assert_eq!(b.dgrams, vec![44, 44, 12]);
        assert!((0..b.msgs.len()).all(|i| b.msg_len(i) <= MAX_GSO_PAYLOAD));
        b.clear();
        for _ in 0..100 {
            assert!(b.push(&one(100), dst(2), 0));
        }
        assert_eq!(usize::from(b.dgrams[0]), MAX_GSO_SEGMENTS);
    }

    /// Whatever the batch holds, while it says it has room for a read, a superpacket
    /// split into the most segments there can be fits whole: no segment vanishes.
    #[test]
    fn room_for_a_read_is_room_for_a_whole_split_superpacket() {
        let one = [TxIov {
            buf: 0,
            start: 0,
            len: 100,
        }];
        for gso in [true, false] {
            // Mixes of in-place datagrams (one piece) and superpacket segments (two),
            // to one peer (trains) and alternating peers (a message each).
            for singles in [0, 100, 700, 1400, 1900] {
                let mut b = TxBatch::new(TX_MSGS, TX_IOVS, gso);
                for i in 0..singles {
                    if !b.has_room_for_a_read() {
                        break;
                    }
                    assert!(b.push(&one, dst(2 + (i % 2) as u8), 0));
                }
                let mut rounds = 0;
                while b.has_room_for_a_read() {
                    for k in 0..MAX_SPLIT {
                        let to = if rounds % 2 == 0 {
                            dst(2)
                        } else {
                            dst(3 + (k % 2) as u8)
                        };
                        assert!(
                            b.push(&two(1472), to, 0),
                            "segment {k} of a superpacket lost (gso {gso}, {singles} singles, round {rounds})"
                        );
                    }
                    rounds += 1;
                }
                assert!(rounds > 0 || singles > 0, "an empty batch has room");
            }
        }
    }

    #[test]
    fn without_gso_every_datagram_is_its_own_message_and_full_batches_refuse() {
        let mut b = TxBatch::new(2, 8, false);
        let one = [TxIov {
            buf: 0,
            start: 0,
            len: 1000,
        }];
        assert!(b.push(&one, dst(2), 0));
        assert!(b.push(&one, dst(2), 0));
        assert!(!b.push(&one, dst(2), 0));
        assert_eq!(b.msgs.len(), 2);
        assert!(b.msgs.iter().all(|m| m.segment == 0));
    }
}
