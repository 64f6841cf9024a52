//! One worker: a thread pinned to a core that owns one TUN queue, one receive socket
//! on the data port (in the SO_REUSEPORT group) and a few send sockets, and runs its
//! own `mio` event loop over them.
//!
//! Per readiness event the worker loads the published snapshot once, drains the TUN
//! queue (inside) and the receive socket (outside) up to a budget each, and writes
//! what it produced with batched system calls:
//!
//! - inside: each TUN read lands in a read arena behind `HEADROOM` bytes. A single
//!   packet is encapsulated in place; a superpacket (TSO/USO) is cut by
//!   [`segment::split`] into header blocks plus payload slices of the read arena.
//!   Datagrams are grouped into UDP GSO trains and sent with one `sendmmsg`.
//!   A packet handed back to the host (a container on this host, egress) is written
//!   straight back to the TUN queue, a superpacket whole behind its virtio-net header.
//! - outside: `recvmmsg` with UDP GRO; each datagram is decapsulated in place and
//!   [`Coalescer`] joins consecutive TCP segments into superpackets, each written with
//!   one `writev` (virtio-net header, head, later payloads).
//!
//! Payload bytes are therefore copied only by the kernel. Every buffer is allocated
//! before the loop starts; the loop allocates nothing and takes no lock per packet
//! (the shared histogram's lock is taken about once a second).

use super::batch::{segment_iovs, TxBatch, HDR_ARENA, MAX_SEGMENT_HEADER, MAX_SPLIT, READ_BUF, TX_IOVS, TX_MSGS};
use super::stats::{Counter, Tally, WorkerStats};
use super::HEADROOM;
use crate::pipeline::coalesce::{Coalescer, Range};
use crate::pipeline::segment::{self, Arena, Gso, Segment, L4};
use crate::pipeline::{inside, outside, DropReason, HostPath, Verdict, ENCAP_LEN};
use crate::service::ServiceQueues;
use crate::snapshot::{Published, Snapshot};
use crate::sys::{self, RecvBatch, SendScratch, TxIov};
use crate::telemetry::new_histogram;
use crate::wire::virtio::{self, GsoType};
use crossbeam_utils::CachePadded;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use std::io::{self, IoSlice};
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tun_rs::SyncDevice;

const TUN: Token = Token(0);
const UDP: Token = Token(1);
const WAKE: Token = Token(2);

/// The largest TUN read: a 64 KB superpacket and its virtio-net header.
const MAX_READ: usize = 65_536 + virtio::HEADER_LEN;
/// Messages per recvmmsg.
const RX_MSGS: usize = 32;
/// TUN writes (trains) and their payload pieces per receive batch.
const MAX_TRAINS: usize = 1024;
const MAX_PARTS: usize = 2048;
/// Reads (TUN) and receives (UDP) per readiness round before the other side's turn.
const BUDGET: usize = 64;
/// How long an idle worker sleeps before checking for shutdown.
const IDLE: Duration = Duration::from_millis(100);
/// How long after receiving from peers (packets it then delivers to this host) a
/// worker does not spin ([`Spin`]).
const DELIVERY_QUIET: Duration = Duration::from_millis(1);
/// How often the worker's histogram is merged into the shared one.
const HIST_EVERY: Duration = Duration::from_secs(1);

/// Everything a worker owns, handed over when it starts.
pub struct WorkerSetup {
    pub id: usize,
    pub cpu: Option<usize>,
    pub tun: SyncDevice,
    /// The TUN queue carries virtio-net headers (offload on).
    pub vnet: bool,
    /// Coalesce UDP datagrams into USO superpackets (the device took USO).
    pub coalesce_udp: bool,
    pub rx: UdpSocket,
    pub tx: Vec<UdpSocket>,
    pub udp_gso: bool,
    pub udp_gro: bool,
    pub published: Arc<Published>,
    pub stats: Arc<CachePadded<WorkerStats>>,
    pub shutdown: Arc<AtomicBool>,
    /// Where packets for gateway addresses go, when any are configured.
    pub service: Option<Arc<ServiceQueues>>,
    /// Keep polling without sleeping this long after the last packet.
    pub busy_poll: Duration,
    /// Read bytes after which the TX batch is sent.
    pub flush_bytes: usize,
    /// The longest adaptive spin after a batch ([`Spin`]); zero turns it off.
    pub adaptive_poll: Duration,
}

/// Adaptive polling: after a batch, the worker checks its sources again, yielding
/// the CPU between checks, for up to `cur` before it sleeps in epoll. A packet found
/// that way costs no wake-up (on a VM an interrupt and a VM exit each), and yielding
/// lets the threads it waits for — the sender on the same core — run meanwhile.
///
/// `cur` follows the gaps between the end of a batch that left nothing to do and
/// the next work, found spinning or after sleeping: a gap up to `max` grows it to
/// half as much again as that gap (a request's answer that comes back in 100 µs is
/// then caught), and `PATIENCE` gaps in a row longer than `max` halve it, down to
/// `MIN` (traffic that comes in bursts far apart is not worth spinning for). A
/// worker with no traffic is never woken, so it never spins.
struct Spin {
    cur: Duration,
    max: Duration,
    long_gaps: u32,
}

impl Spin {
    const MIN: Duration = Duration::from_micros(4);
    const PATIENCE: u32 = 4;

    fn new(max: Duration) -> Spin {
        Spin {
            cur: Spin::MIN.min(max),
            max,
            long_gaps: 0,
        }
    }

    fn observe(&mut self, gap: Duration) {
        if gap <= self.max {
            self.long_gaps = 0;
            self.cur = self.cur.max(gap + gap / 2).min(self.max);
        } else {
            self.long_gaps += 1;
            if self.long_gaps >= Spin::PATIENCE {
                self.long_gaps = 0;
                self.cur = (self.cur / 2).max(Spin::MIN.min(self.max));
            }
        }
    }
}

struct Worker {
    id: usize,
    vnet: bool,
    tun: SyncDevice,
    rx: UdpSocket,
    tx: Vec<UdpSocket>,
    stats: Arc<CachePadded<WorkerStats>>,
    tally: Tally,
    // Inside path.
    read: Vec<u8>,
    read_used: usize,
    hdrs: Arena,
    segs: Vec<Segment>,
    icmp: Vec<u8>,
    txb: TxBatch,
    send_scratch: SendScratch,
    // Outside path.
    rxb: RecvBatch,
    gro: Coalescer,
    memo: outside::Memo,
    /// The data socket's drop count last reported (SO_RXQ_OVFL).
    rx_dropped: u32,
    service: Option<Arc<ServiceQueues>>,
}

/// Runs a worker until `shutdown` is set. Returns an error only for a failure that
/// stops the worker (a TUN queue or socket that can no longer be used).
pub fn run(setup: WorkerSetup) -> io::Result<()> {
    // The CPU the worker runs on, or -1 when it is not pinned (the stats show it;
    // steering by CPU assumes it).
    let mut pinned = -1;
    if let Some(cpu) = setup.cpu {
        match sys::pin_to_cpu(cpu) {
            Ok(()) => pinned = cpu as i32,
            Err(e) => log::warn!("worker {}: cannot pin to CPU {cpu}: {e}", setup.id),
        }
    }
    setup.stats.tid.store(sys::thread_id(), Ordering::Relaxed);
    setup.stats.cpu.store(pinned, Ordering::Relaxed);
    if setup.udp_gro {
        if let Err(e) = sys::enable_udp_gro(&setup.rx) {
            log::warn!(
                "worker {}: UDP_GRO unavailable ({e}); receiving one datagram per buffer",
                setup.id
            );
        }
    }
    if let Err(e) = sys::enable_rxq_ovfl(&setup.rx) {
        log::warn!(
            "worker {}: SO_RXQ_OVFL unavailable ({e}); receive-buffer drops go uncounted",
            setup.id
        );
    }
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut SourceFd(&setup.tun.as_raw_fd()), TUN, Interest::READABLE)?;
    poll.registry()
        .register(&mut SourceFd(&setup.rx.as_raw_fd()), UDP, Interest::READABLE)?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
    setup.published.set_waker(setup.id, waker);

    let mut w = Worker {
        id: setup.id,
        vnet: setup.vnet,
        tun: setup.tun,
        rx: setup.rx,
        tx: setup.tx,
        stats: setup.stats,
        tally: Tally::default(),
        // The read arena: a flush happens before a read could overflow it, so its
        // size sets how many bytes a batch holds.
        read: vec![0u8; setup.flush_bytes + HEADROOM + MAX_READ + 64],
        read_used: 0,
        hdrs: Arena::new(HDR_ARENA),
        segs: Vec::with_capacity(MAX_SPLIT),
        icmp: vec![0u8; 1500],
        txb: TxBatch::new(TX_MSGS, TX_IOVS, setup.udp_gso),
        send_scratch: SendScratch::new(TX_MSGS, TX_IOVS),
        rxb: RecvBatch::new(RX_MSGS, 65_536),
        gro: Coalescer::new(MAX_TRAINS, MAX_PARTS, setup.vnet, setup.coalesce_udp),
        memo: outside::Memo::default(),
        rx_dropped: 0,
        service: setup.service,
    };
    let published = setup.published;
    let mut events = Events::with_capacity(16);
    let mut hist = new_histogram();
    let mut last_hist = Instant::now();
    let mut last_work = Instant::now();
    let busy_poll = setup.busy_poll;
    let mut adaptive = (!setup.adaptive_poll.is_zero()).then(|| Spin::new(setup.adaptive_poll));
    // Drain anything that arrived before registration.
    let (mut tun_ready, mut udp_ready) = (true, true);
    // The waker fired during an adaptive spin: service replies wait.
    let mut woken = false;
    // The end of the last batch after which no source was ready (adaptive polling).
    let mut idle_since: Option<Instant> = None;
    // The end of the last batch that received datagrams from peers, which are
    // delivered to this host (dropped ones count too: rare, and harmless here).
    let mut last_delivery = Instant::now();
    while !setup.shutdown.load(Ordering::Relaxed) {
        // Sleeping costs a wake-up when the next packet comes; with busy polling
        // configured, poll without sleeping for a while after traffic.
        let spin = !busy_poll.is_zero() && last_work.elapsed() < busy_poll;
        let timeout = if tun_ready || udp_ready || spin || woken {
            Duration::ZERO
        } else {
            IDLE
        };
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in events.iter() {
            match ev.token() {
                TUN => tun_ready = true,
                UDP => udp_ready = true,
                _ => {}
            }
        }
        let snap = published.load();
        published.mark_seen(w.id, snap.generation);
        w.service_replies();
        woken = false;
        if tun_ready || udp_ready {
            let t0 = Instant::now();
            if let (Some(spin), Some(since)) = (adaptive.as_mut(), idle_since.take()) {
                spin.observe(t0.duration_since(since));
            }
            if tun_ready {
                tun_ready = w.inside(&snap)?;
            }
            if udp_ready {
                udp_ready = w.outside(&snap);
            }
            let t1 = Instant::now();
            hist.saturating_record(t1.duration_since(t0).as_nanos() as u64);
            w.tally.add(Counter::Batches, 1);
            if w.tally.counters[Counter::OutsidePackets as usize] > 0 {
                last_delivery = t1;
            }
            w.stats.flush(&mut w.tally);
            last_work = t1;
            if t1.duration_since(last_hist) >= HIST_EVERY {
                w.stats.merge_histogram(&mut hist);
                last_hist = t1;
            }
            // A worker that has received for this host lately spins not at all: the
            // readers it feeds (a receiving iperf3, a sender's TCP taking ACKs) run on
            // the same cores, and a spin takes the CPU from them — measured, it cost
            // UDP throughput by a third and single-stream TCP a tenth. What is left is
            // a worker that only sends, whose answer (a ping's reply) comes back soon.
            let quiet = t1.duration_since(last_delivery) >= DELIVERY_QUIET;
            if let Some(spin) = adaptive.as_mut().filter(|_| !tun_ready && !udp_ready && quiet) {
                idle_since = Some(t1);
                let ready = [&mut tun_ready, &mut udp_ready, &mut woken];
                let found = spin_for_work(&mut poll, &mut events, spin.cur, ready)?;
                w.tally
                    .add(if found { Counter::SpinHits } else { Counter::SpinMisses }, 1);
            }
        } else if last_hist.elapsed() >= HIST_EVERY {
            w.stats.merge_histogram(&mut hist);
            last_hist = Instant::now();
        }
    }
    w.stats.merge_histogram(&mut hist);
    Ok(())
}

/// Checks the worker's sources without sleeping, yielding the CPU between checks,
/// until one is ready or `limit` has passed; `ready` is set for the TUN queue, the
/// data socket and the waker. Returns whether one became ready.
fn spin_for_work(poll: &mut Poll, events: &mut Events, limit: Duration, ready: [&mut bool; 3]) -> io::Result<bool> {
    let [tun_ready, udp_ready, woken] = ready;
    let start = Instant::now();
    loop {
        sys::yield_cpu();
        match poll.poll(events, Some(Duration::ZERO)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        for ev in events.iter() {
            match ev.token() {
                TUN => *tun_ready = true,
                UDP => *udp_ready = true,
                _ => *woken = true,
            }
        }
        if *tun_ready || *udp_ready || *woken {
            return Ok(true);
        }
        if start.elapsed() >= limit {
            return Ok(false);
        }
    }
}

impl Worker {
    /// Drains the TUN queue up to the budget. Returns whether more may be waiting.
    fn inside(&mut self, snap: &Snapshot) -> io::Result<bool> {
        for _ in 0..BUDGET {
            // Flush first unless whatever this read produces fits: the packet in the
            // read arena, its segments in the batch, their headers in the arena.
            let fits = self.read_used + HEADROOM + MAX_READ <= self.read.len()
                && self.txb.has_room_for_a_read()
                && self.hdrs.remaining() >= MAX_SPLIT * MAX_SEGMENT_HEADER;
            if !fits {
                self.flush_tx();
            }
            // The packet lands at `base + HEADROOM`; a virtio-net header just before it.
            let base = self.read_used;
            let pkt_at = base + HEADROOM;
            let read_at = if self.vnet { pkt_at - virtio::HEADER_LEN } else { pkt_at };
            let n = match self.tun.recv(&mut self.read[read_at..read_at + MAX_READ]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.flush_tx();
                    return Ok(false);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.tally.add(Counter::TunReads, 1);
            if n < pkt_at - read_at {
                self.tally.drop(DropReason::Malformed, 1);
                continue;
            }
            let len = n - (pkt_at - read_at);
            // Reserve the bytes: segments and in-place datagrams point into them
            // until the next flush.
            self.read_used = (pkt_at + len + 63) & !63;
            let vh = if self.vnet {
                match virtio::Repr::parse(&self.read[read_at..pkt_at]) {
                    Ok(h) => h,
                    Err(_) => {
                        self.tally.drop(DropReason::Malformed, 1);
                        continue;
                    }
                }
            } else {
                virtio::Repr::NONE
            };
            self.inside_packet(snap, base, len, &vh);
        }
        self.flush_tx();
        Ok(true)
    }

    /// One read: a packet or superpacket at `read[base + HEADROOM..][..len]`.
    fn inside_packet(&mut self, snap: &Snapshot, base: usize, len: usize, vh: &virtio::Repr) {
        let pkt_at = base + HEADROOM;
        let gso = match vh.gso_type {
            GsoType::None => {
                if vh.needs_csum
                    && segment::complete_checksum(
                        &mut self.read[pkt_at..pkt_at + len],
                        usize::from(vh.csum_start),
                        usize::from(vh.csum_offset),
                    )
                    .is_err()
                {
                    self.tally.drop(DropReason::Malformed, 1);
                    return;
                }
                None
            }
            GsoType::TcpV4 | GsoType::TcpV6 | GsoType::UdpL4 => Some(Gso {
                l4: if vh.gso_type == GsoType::UdpL4 {
                    L4::Udp
                } else {
                    L4::Tcp
                },
                l3_len: usize::from(vh.csum_start),
                size: usize::from(vh.gso_size),
            }),
        };
        // A superpacket handed back to the host goes with the header it came with.
        let mut vnet_in = [0u8; virtio::HEADER_LEN];
        if gso.is_some() {
            vnet_in.copy_from_slice(&self.read[pkt_at - virtio::HEADER_LEN..pkt_at]);
        }
        let buf = &mut self.read[base..pkt_at + len];
        let verdict = inside::process(snap, buf, HEADROOM, len, gso.as_ref(), &mut self.icmp);
        match verdict {
            Verdict::Forward {
                peer,
                start,
                len: dlen,
                hash,
            } => {
                let Some(p) = snap.peers.get(usize::from(peer)) else {
                    self.tally.drop(DropReason::NoRoute, 1);
                    return;
                };
                let dst = p.data_addr;
                let sock = (hash as usize % self.tx.len()) as u8;
                let start = base + start;
                match gso {
                    None => {
                        self.tally.add(Counter::InsidePackets, 1);
                        self.tally.add(Counter::InsideBytes, len as u64);
                        let one = [TxIov {
                            buf: READ_BUF,
                            start: start as u32,
                            len: dlen as u32,
                        }];
                        if !self.txb.push(&one, dst, sock) {
                            self.tally.drop(DropReason::BatchFull, 1);
                        }
                    }
                    Some(g) => {
                        self.segs.clear();
                        let r = segment::split(&self.read[start..start + dlen], &g, &mut self.hdrs, &mut self.segs);
                        match r {
                            Ok(_) => {}
                            // More segments than a batch takes (a segment size under
                            // 256 bytes): the room was checked for the most there can be.
                            Err(crate::wire::Error::Exhausted) => {
                                self.tally.drop(DropReason::TooManySegments, 1);
                                return;
                            }
                            Err(_) => {
                                self.tally.drop(DropReason::Malformed, 1);
                                return;
                            }
                        }
                        for s in &self.segs {
                            self.tally.add(Counter::InsidePackets, 1);
                            self.tally
                                .add(Counter::InsideBytes, (s.hdr_len - ENCAP_LEN + s.payload_len) as u64);
                            if !self.txb.push(&segment_iovs(s, start), dst, sock) {
                                self.tally.drop(DropReason::BatchFull, 1);
                            }
                        }
                    }
                }
            }
            Verdict::Reply { len: n, reason } => {
                self.tally.add(Counter::InsidePackets, 1);
                self.tally.add(Counter::InsideBytes, len as u64);
                self.tally.drop(reason, 1);
                self.tally.add(Counter::IcmpErrors, 1);
                write_one(&self.tun, self.vnet, &self.icmp[..n], &mut self.tally);
            }
            Verdict::Drop(reason) => {
                self.tally.add(Counter::InsidePackets, 1);
                self.tally.add(Counter::InsideBytes, len as u64);
                self.tally.drop(reason, 1);
            }
            Verdict::Service { start, len: n } => {
                self.tally.add(Counter::InsidePackets, 1);
                self.tally.add(Counter::InsideBytes, len as u64);
                let pkt = &self.read[base + start..base + start + n];
                match &self.service {
                    Some(q) if q.submit(self.id, pkt) => self.tally.add(Counter::ServicePackets, 1),
                    _ => self.tally.drop(DropReason::ServiceBusy, 1),
                }
            }
            Verdict::ToHost { start, len: n, path } => {
                self.hand_back(base + start, n, gso.as_ref(), vnet_in, path);
            }
            Verdict::Deliver { .. } => self.tally.drop(DropReason::Malformed, 1),
        }
    }

    /// Writes a packet the inside path hands back to the host (a container on this
    /// host, or egress) to the TUN queue, at `read[at..at + len]`.
    ///
    /// A superpacket is written whole, behind the virtio-net header it was read
    /// with: the host delivers a GSO packet to a veth (or segments it for an uplink)
    /// as it would have without tunloom in the path, so two containers on one host
    /// exchange 64 KB per write instead of per-segment writes. Only the TTL changed,
    /// which no transport checksum covers, so the partial checksum the header
    /// describes is still right. `hdr_len` is set to the headers' real length (the
    /// kernel's may span the whole packet). Should the device refuse it, the
    /// superpacket is cut into complete packets (full checksums) and written one by one.
    fn hand_back(
        &mut self,
        at: usize,
        len: usize,
        gso: Option<&Gso>,
        vnet_in: [u8; virtio::HEADER_LEN],
        path: HostPath,
    ) {
        let pkt = &self.read[at..at + len];
        let (packets, vnet) = hand_back_header(pkt, gso, vnet_in);
        self.tally.add(Counter::InsidePackets, packets);
        self.tally.add(Counter::InsideBytes, len as u64);
        self.tally.add(
            match path {
                HostPath::Local => Counter::HairpinDelivered,
                HostPath::Egress => Counter::EgressPackets,
            },
            packets,
        );
        let head = if self.vnet { &vnet[..] } else { &[][..] };
        self.tally.add(Counter::TunWrites, 1);
        match sys::write_vectored(&self.tun, &[IoSlice::new(head), IoSlice::new(pkt)]) {
            Ok(_) => {
                self.tally.add(Counter::DeliveredPackets, packets);
                self.tally.add(Counter::DeliveredBytes, len as u64);
            }
            Err(e) => match gso {
                Some(g) if at >= ENCAP_LEN => {
                    log::debug!(
                        "worker {}: TUN refused a superpacket back to the host ({e}); splitting it",
                        self.id
                    );
                    self.hand_back_split(at, len, g);
                }
                _ => self.tally.drop(DropReason::TunWrite, packets),
            },
        }
    }

    /// Writes a superpacket at `read[at..at + len]` as separate complete packets.
    /// [`segment::split`] expects the encapsulation in front; the bytes before the
    /// packet stand in for it and are skipped in each header block.
    fn hand_back_split(&mut self, at: usize, len: usize, g: &Gso) {
        self.segs.clear();
        let dgram = &self.read[at - ENCAP_LEN..at + len];
        if segment::split(dgram, g, &mut self.hdrs, &mut self.segs).is_err() {
            self.tally.drop(DropReason::TunWrite, 1);
            return;
        }
        let none = virtio::Repr::NONE.to_bytes();
        let head = if self.vnet { &none[..] } else { &[][..] };
        for s in &self.segs {
            let h = &self.hdrs.bytes()[s.hdr_start + ENCAP_LEN..s.hdr_start + s.hdr_len];
            let p = &dgram[s.payload_start..s.payload_start + s.payload_len];
            self.tally.add(Counter::TunWrites, 1);
            match sys::write_vectored(&self.tun, &[IoSlice::new(head), IoSlice::new(h), IoSlice::new(p)]) {
                Ok(_) => {
                    self.tally.add(Counter::DeliveredPackets, 1);
                    self.tally.add(Counter::DeliveredBytes, (h.len() + p.len()) as u64);
                }
                Err(_) => self.tally.drop(DropReason::TunWrite, 1),
            }
        }
    }

    /// Writes the service thread's replies for this worker to the TUN queue.
    fn service_replies(&mut self) {
        let Some(q) = &self.service else { return };
        while let Some(p) = q.take_reply(self.id) {
            write_one(&self.tun, self.vnet, &p.buf[..p.len], &mut self.tally);
            q.recycle(p.buf);
        }
    }

    /// Sends everything queued and frees the read and header arenas.
    fn flush_tx(&mut self) {
        // Indexed by READ_BUF and HDR_BUF.
        let bufs: [&[u8]; 2] = [&self.read, self.hdrs.bytes()];
        let mut i = 0;
        while i < self.txb.msgs.len() {
            let sock = self.txb.socks[i];
            let mut j = i + 1;
            while j < self.txb.msgs.len() && self.txb.socks[j] == sock {
                j += 1;
            }
            let (sent, err) = sys::send_batch(
                &self.tx[usize::from(sock)],
                &bufs,
                &self.txb.iovs,
                &self.txb.msgs[i..j],
                &mut self.send_scratch,
            );
            self.tally.add(Counter::UdpSendCalls, 1);
            for k in i..i + sent {
                account_sent(&self.txb, k, &mut self.tally);
            }
            if let Some(e) = err {
                let failed = i + sent;
                let gso_refused = self.txb.dgrams[failed] > 1
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EIO) | Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)
                    );
                if gso_refused {
                    log::warn!(
                        "worker {}: the kernel refused a UDP GSO send ({e}); turning GSO off",
                        self.id
                    );
                    self.txb.set_gso(false);
                    for k in failed..j {
                        send_one_by_one(
                            &self.txb,
                            k,
                            &self.tx[usize::from(sock)],
                            &bufs,
                            &mut self.send_scratch,
                            &mut self.tally,
                        );
                    }
                } else {
                    for k in failed..j {
                        self.tally.drop(DropReason::UdpSend, u64::from(self.txb.dgrams[k]));
                    }
                    if e.kind() != io::ErrorKind::WouldBlock {
                        log::debug!("worker {}: UDP send failed: {e}", self.id);
                    }
                }
            }
            i = j;
        }
        self.txb.clear();
        self.hdrs.clear();
        self.read_used = 0;
    }

    /// Drains the data socket up to the budget. Returns whether more may be waiting.
    fn outside(&mut self, snap: &Snapshot) -> bool {
        for _ in 0..BUDGET {
            let n = match self.rxb.recv(&self.rx) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) => {
                    // ICMP errors for earlier sends surface here (ECONNREFUSED etc.).
                    log::debug!("worker {}: UDP receive: {e}", self.id);
                    continue;
                }
            };
            self.tally.add(Counter::UdpRecvCalls, 1);
            for m in 0..n {
                let meta = self.rxb.get(m).1;
                if let Some(d) = meta.dropped.filter(|d| *d != self.rx_dropped) {
                    self.tally
                        .drop(DropReason::RxBufferFull, u64::from(d.wrapping_sub(self.rx_dropped)));
                    self.rx_dropped = d;
                }
                if meta.truncated {
                    self.tally.drop(DropReason::RxTruncated, 1);
                    continue;
                }
                let total = self.rxb.get(m).0.len();
                if total == 0 {
                    // An empty datagram: no VXLAN header, counted like any malformed one.
                    self.tally.add(Counter::OutsidePackets, 1);
                    self.tally.drop(DropReason::Malformed, 1);
                    continue;
                }
                let seg = meta.segment.map_or(total, usize::from).max(1);
                let src = crate::snapshot::canonical(meta.src.ip());
                let mut at = 0;
                while at < total {
                    let end = (at + seg).min(total);
                    self.tally.add(Counter::OutsidePackets, 1);
                    self.tally.add(Counter::OutsideBytes, (end - at) as u64);
                    match outside::process_memo(snap, src, &self.rxb.get(m).0[at..end], &mut self.memo) {
                        Verdict::Deliver { start, len } => {
                            if self.gro.is_full() {
                                self.write_trains();
                            }
                            let r = Range {
                                buf: m as u32,
                                start: (at + start) as u32,
                                len: len as u32,
                            };
                            let pkt = &self.rxb.get(m).0[at + start..at + start + len];
                            if !self.gro.push(r, pkt, self.rxb.buffers()) {
                                self.tally.drop(DropReason::BatchFull, 1);
                            }
                        }
                        Verdict::Drop(r) => self.tally.drop(r, 1),
                        _ => self.tally.drop(DropReason::Malformed, 1),
                    }
                    at = end;
                }
            }
            self.write_trains();
        }
        true
    }

    /// Writes every train to the TUN queue, one `writev` each.
    fn write_trains(&mut self) {
        self.gro.finish(self.rxb.buffers_mut());
        let bufs = self.rxb.buffers();
        let mut iov = [IoSlice::new(&[]); crate::pipeline::coalesce::MAX_SEGMENTS + 1];
        let mut udp_refused = false;
        for t in &self.gro.trains {
            let slice = |r: &Range| &bufs[r.buf as usize][r.start as usize..(r.start + r.len) as usize];
            let mut k = 0;
            if self.vnet {
                iov[k] = IoSlice::new(&t.vnet);
                k += 1;
            }
            iov[k] = IoSlice::new(slice(&t.head));
            k += 1;
            for r in &self.gro.parts[t.first..t.first + t.count] {
                iov[k] = IoSlice::new(slice(r));
                k += 1;
            }
            self.tally.add(Counter::TunWrites, 1);
            match sys::write_vectored(&self.tun, &iov[..k]) {
                Ok(_) => {
                    self.tally.add(Counter::DeliveredPackets, 1 + t.count as u64);
                    self.tally.add(Counter::DeliveredBytes, t.len as u64);
                }
                Err(e) => {
                    self.tally.drop(DropReason::TunWrite, 1 + t.count as u64);
                    // A kernel that took USO on the device but refuses the packets:
                    // stop making them, as the send side does for UDP GSO.
                    let udp_train = virtio::Repr::parse(&t.vnet).is_ok_and(|r| r.gso_type == GsoType::UdpL4);
                    if udp_train && e.raw_os_error() == Some(libc::EINVAL) {
                        log::warn!(
                            "worker {}: the TUN device refused a UDP superpacket ({e}); coalescing UDP turned off",
                            self.id
                        );
                        udp_refused = true;
                    } else {
                        log::debug!("worker {}: TUN write failed: {e}", self.id);
                    }
                }
            }
        }
        self.gro.clear();
        if udp_refused {
            self.gro.disable_udp();
        }
    }
}

/// The virtio-net header a packet handed back to the host is written with, and how
/// many packets it counts as (a superpacket: its segments). A single packet's
/// checksum was completed when it was read, so it goes as one complete packet; a
/// superpacket keeps the header it was read with (GSO type with its ECN bit, segment
/// size, partial checksum) but `hdr_len`, which is set to its headers' length.
fn hand_back_header(
    pkt: &[u8],
    gso: Option<&Gso>,
    vnet_in: [u8; virtio::HEADER_LEN],
) -> (u64, [u8; virtio::HEADER_LEN]) {
    match gso {
        None => (1, virtio::Repr::NONE.to_bytes()),
        Some(g) => {
            let hdr = g.l3_len + segment::l4_len(pkt, g).unwrap_or(0);
            let mut v = vnet_in;
            v[2..4].copy_from_slice(&(hdr as u16).to_le_bytes());
            let packets = pkt.len().saturating_sub(hdr).div_ceil(g.size.max(1)).max(1);
            (packets as u64, v)
        }
    }
}

/// Writes one whole packet to the TUN queue (behind an empty virtio-net header when
/// the queue carries them), counting it delivered or dropped.
fn write_one(tun: &SyncDevice, vnet: bool, pkt: &[u8], tally: &mut Tally) {
    let none = [0u8; virtio::HEADER_LEN];
    let head = if vnet { &none[..] } else { &[][..] };
    match sys::write_vectored(tun, &[IoSlice::new(head), IoSlice::new(pkt)]) {
        Ok(_) => {
            tally.add(Counter::DeliveredPackets, 1);
            tally.add(Counter::DeliveredBytes, pkt.len() as u64);
        }
        Err(_) => tally.drop(DropReason::TunWrite, 1),
    }
}

fn account_sent(txb: &TxBatch, k: usize, tally: &mut Tally) {
    let n = u64::from(txb.dgrams[k]);
    let bytes = txb.msg_len(k) as u64 - ENCAP_LEN as u64 * n;
    tally.add(Counter::ForwardedPackets, n);
    tally.add(Counter::ForwardedBytes, bytes);
    if n > 1 {
        tally.add(Counter::GsoTrains, 1);
    }
}

/// Sends message `k` as separate datagrams (after the kernel refused GSO).
fn send_one_by_one(
    txb: &TxBatch,
    k: usize,
    sock: &UdpSocket,
    bufs: &[&[u8]; 2],
    scratch: &mut SendScratch,
    tally: &mut Tally,
) {
    let m = txb.msgs[k];
    let per = (m.count / u32::from(txb.dgrams[k]).max(1)).max(1);
    let mut first = m.first;
    while first < m.first + m.count {
        let count = per.min(m.first + m.count - first);
        let one = [sys::TxMsg {
            dst: m.dst,
            segment: 0,
            first,
            count,
        }];
        let (sent, _) = sys::send_batch(sock, bufs, &txb.iovs, &one, scratch);
        tally.add(Counter::UdpSendCalls, 1);
        if sent == 1 {
            let bytes: u32 = txb.iovs[first as usize..(first + count) as usize]
                .iter()
                .map(|v| v.len)
                .sum();
            tally.add(Counter::ForwardedPackets, 1);
            tally.add(Counter::ForwardedBytes, u64::from(bytes) - ENCAP_LEN as u64);
        } else {
            tally.drop(DropReason::UdpSend, 1);
        }
        first += count;
    }
}

#[cfg(test)]
mod tests {
    use super::{hand_back_header, Gso, Spin, L4};
    use crate::wire::virtio;
    use std::time::Duration;

    #[test]
    fn a_superpacket_goes_back_with_the_header_it_came_with() {
        let mut sp = Vec::new();
        etherparse::PacketBuilder::ipv4([198, 19, 16, 5], [198, 19, 16, 9], 63)
            .tcp(1, 2, 100, 1000)
            .write(&mut sp, &[5u8; 10_000])
            .unwrap();
        // As the kernel hands it over: ECN bit set, hdr_len spanning the packet.
        let mut read = virtio::Repr {
            needs_csum: true,
            gso_type: virtio::GsoType::TcpV4,
            hdr_len: sp.len() as u16,
            gso_size: 1448,
            csum_start: 20,
            csum_offset: 16,
        }
        .to_bytes();
        read[1] |= 0x80;
        let gso = Gso {
            l4: L4::Tcp,
            l3_len: 20,
            size: 1448,
        };
        let (n, back) = hand_back_header(&sp, Some(&gso), read);
        assert_eq!(n, 7, "10000 bytes in segments of 1448");
        let mut want = read;
        want[2..4].copy_from_slice(&40u16.to_le_bytes());
        assert_eq!(back, want, "only hdr_len changes");
        let (n, back) = hand_back_header(&sp, None, read);
        assert_eq!((n, back), (1, [0; virtio::HEADER_LEN]));
    }

    #[test]
    fn the_spin_follows_short_gaps_and_shrinks_after_long_ones() {
        let us = Duration::from_micros;
        let mut s = Spin::new(us(200));
        assert_eq!(s.cur, Spin::MIN);
        // An answer 100 µs after each request: the spin grows to catch it.
        s.observe(us(100));
        assert_eq!(s.cur, us(150));
        // Shorter gaps do not shrink it, nor do long ones between short ones (a
        // ping's reply, then the wait for the next ping).
        for _ in 0..10 {
            s.observe(us(20));
            s.observe(us(5000));
        }
        assert_eq!(s.cur, us(150));
        // Never past the maximum.
        s.observe(us(190));
        assert_eq!(s.cur, us(200));
        // Four long gaps in a row halve it, down to the floor.
        for _ in 0..4 {
            s.observe(us(5000));
        }
        assert_eq!(s.cur, us(100));
        for _ in 0..100 {
            s.observe(us(5000));
        }
        assert_eq!(s.cur, Spin::MIN);
        // A maximum below the floor is the floor.
        let mut tiny = Spin::new(us(2));
        tiny.observe(us(1));
        assert_eq!(tiny.cur, us(2));
    }
}
