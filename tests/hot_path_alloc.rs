//! Proof that the hot path allocates nothing: a counting global allocator records
//! allocations per thread.
//!
//! 1. The sans-IO pipeline in steady state (inside, outside, superpacket split,
//!    coalescing, TX batching, ICMP errors): zero allocations on this thread.
//! 2. The real worker threads of a daemon running in this process, in a network
//!    namespace, while ping and iperf3 traffic flows through them both ways: zero
//!    allocations on those threads after warm-up. (Needs root.)
//! 3. The service thread's DNS server: local answers of every kind, and upstream
//!    answers served from the cache, allocate nothing once warm. (A forwarded query
//!    whose answer enters the cache allocates that entry; see the README.)

mod common;

use common::Needs;

use etherparse::PacketBuilder;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::Duration;
use tunloom::dataplane::batch::{segment_iovs, TxBatch};
use tunloom::pipeline::coalesce::Coalescer;
use tunloom::pipeline::segment::{self, Arena, Gso, L4};
use tunloom::pipeline::{inside, outside, DropReason, Verdict, ENCAP_LEN};
use tunloom::testkit::{in_buf, laid_out, pair_with_networks, tcp4, udp4, HEADROOM};

const SLOTS: usize = 1024;
static TIDS: [AtomicI32; SLOTS] = [const { AtomicI32::new(0) }; SLOTS];
static COUNTS: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];

thread_local! {
    static SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The counter slot of the calling thread (claimed on first use).
fn slot() -> Option<usize> {
    SLOT.try_with(|s| {
        if s.get() == usize::MAX {
            let tid = tunloom::sys::thread_id();
            let start = tid as usize % SLOTS;
            for k in 0..SLOTS {
                let i = (start + k) % SLOTS;
                if TIDS[i]
                    .compare_exchange(0, tid, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                    || TIDS[i].load(Ordering::Acquire) == tid
                {
                    s.set(i);
                    break;
                }
            }
        }
        s.get()
    })
    .ok()
    .filter(|s| *s != usize::MAX)
}

/// Allocations so far by the thread with kernel id `tid`.
fn allocations_of(tid: i32) -> u64 {
    TIDS.iter()
        .position(|t| t.load(Ordering::Acquire) == tid)
        .map_or(0, |i| COUNTS[i].load(Ordering::Acquire))
}

struct Counting;

// SAFETY: delegates every call to the system allocator unchanged; the bookkeeping
// touches only atomics and a const-initialised thread-local, neither of which
// allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if let Some(i) = slot() {
            COUNTS[i].fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        if let Some(i) = slot() {
            COUNTS[i].fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn mine() -> u64 {
    allocations_of(tunloom::sys::thread_id())
}

fn the_pipeline_allocates_nothing_per_packet() {
    // With container networks: the packets outside them take the paths they take
    // without networks, those inside them the network lookups and rules.
    let (a, b) = pair_with_networks();
    let peer_src = "198.18.0.1".parse().unwrap();
    let dst: SocketAddr = "198.18.0.2:4789".parse().unwrap();
    let pkt = udp4([198, 19, 1, 5], [198, 19, 2, 7], 64, 1000);
    let unroutable = udp4([198, 19, 1, 5], [198, 19, 99, 7], 64, 100);
    let mut sp = vec![0u8; ENCAP_LEN];
    sp.extend_from_slice(&tcp4(1, 20_000));
    // USO: one UDP superpacket; and the IPv6 paths (TSO split included).
    let mut usp = vec![0u8; ENCAP_LEN];
    usp.extend_from_slice(&udp4([198, 19, 1, 5], [198, 19, 2, 7], 64, 5000));
    let (a6, b6) = (
        [0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5],
        [0xfd, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7],
    );
    let mut pkt6 = Vec::new();
    PacketBuilder::ipv6(a6, b6, 64)
        .udp(1, 2)
        .write(&mut pkt6, &[6u8; 1000])
        .unwrap();
    let mut sp6 = vec![0u8; ENCAP_LEN];
    PacketBuilder::ipv6(a6, b6, 64)
        .tcp(40000, 5201, 1, 512)
        .ack(1)
        .write(&mut sp6, &[5u8; 20_000])
        .unwrap();
    let segs: Vec<Vec<u8>> = (0..10u32).map(|i| tcp4(1 + i * 1000, 1000)).collect();
    let (rx, ranges) = laid_out(&segs, 0);
    let mut rx_bufs = vec![rx];
    // Every buffer exists before the loop, as in a worker.
    let mut buf = in_buf(&pkt);
    let mut buf2 = in_buf(&unroutable);
    let mut buf6 = in_buf(&pkt6);
    let mut memo = outside::Memo::default();
    let mut scratch = vec![0u8; 1500];
    // Network traffic: blue across hosts, blue to red (isolated), blue to a blue
    // container on this host, blue to the world (egress).
    let net_pkts = [
        udp4([198, 19, 16, 5], [198, 19, 17, 7], 64, 500),
        udp4([198, 19, 16, 5], [198, 19, 49, 7], 64, 500),
        udp4([198, 19, 16, 5], [198, 19, 16, 9], 64, 500),
        udp4([198, 19, 16, 5], [93, 184, 216, 34], 64, 500),
    ];
    let mut net_bufs: Vec<Vec<u8>> = net_pkts.iter().map(|p| in_buf(p)).collect();
    let mut arena = Arena::new(64 * 1024);
    let mut seg_out = Vec::with_capacity(64);
    let mut co = Coalescer::new(64, 128, true, true);
    let mut tx = TxBatch::new(64, 256, true);
    let gso = Gso {
        l4: L4::Tcp,
        l3_len: 20,
        size: 1398,
    };
    let uso = Gso {
        l4: L4::Udp,
        l3_len: 20,
        size: 1400,
    };
    let tso6 = Gso {
        l4: L4::Tcp,
        l3_len: 40,
        size: 1378,
    };

    let before = mine();
    for round in 0..1000 {
        buf[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(&pkt);
        let v = inside::process(&a, &mut buf, HEADROOM, pkt.len(), None, &mut scratch);
        let Verdict::Forward { start, len, .. } = v else {
            panic!("{v:?}")
        };
        assert!(matches!(
            outside::process(&b, peer_src, &buf[start..start + len]),
            Verdict::Deliver { .. }
        ));
        // What the worker runs: the flow memo's path.
        assert!(matches!(
            outside::process_memo(&b, peer_src, &buf[start..start + len], &mut memo),
            Verdict::Deliver { .. }
        ));
        buf6[HEADROOM..HEADROOM + pkt6.len()].copy_from_slice(&pkt6);
        let v = inside::process(&a, &mut buf6, HEADROOM, pkt6.len(), None, &mut scratch);
        let Verdict::Forward { start, len, .. } = v else {
            panic!("{v:?}")
        };
        assert!(matches!(
            outside::process_memo(&b, peer_src, &buf6[start..start + len], &mut memo),
            Verdict::Deliver { .. }
        ));
        for (i, (p, nb)) in net_pkts.iter().zip(net_bufs.iter_mut()).enumerate() {
            nb[HEADROOM..HEADROOM + p.len()].copy_from_slice(p);
            let v = inside::process(&a, nb, HEADROOM, p.len(), None, &mut scratch);
            match (i, v) {
                (0, Verdict::Forward { start, len, .. }) => {
                    let d = &mut nb[start..start + len];
                    assert!(matches!(
                        outside::process_memo(&b, peer_src, d, &mut memo),
                        Verdict::Deliver { .. }
                    ));
                    // The same datagram under red's VNI: a spoofed source.
                    d[6] = 9;
                    assert!(matches!(
                        outside::process_memo(&b, peer_src, d, &mut memo),
                        Verdict::Drop(DropReason::Spoofed)
                    ));
                }
                (1, Verdict::Drop(DropReason::Isolated)) | (2 | 3, Verdict::ToHost { .. }) => {}
                (i, v) => panic!("network packet {i}: {v:?}"),
            }
        }
        buf2[HEADROOM..HEADROOM + unroutable.len()].copy_from_slice(&unroutable);
        let v = inside::process(&a, &mut buf2, HEADROOM, unroutable.len(), None, &mut scratch);
        assert!(matches!(v, Verdict::Reply { .. }), "{v:?}");
        arena.clear();
        seg_out.clear();
        let n = segment::split(&sp, &gso, &mut arena, &mut seg_out).unwrap();
        tx.clear();
        for s in &seg_out[..n] {
            assert!(tx.push(&segment_iovs(s, 0), dst, (round % 4) as u8));
        }
        for (superpacket, how) in [(&usp, &uso), (&sp6, &tso6)] {
            arena.clear();
            seg_out.clear();
            let n = segment::split(superpacket, how, &mut arena, &mut seg_out).unwrap();
            assert!(n > 3, "split into {n}");
        }
        co.clear();
        for r in &ranges {
            let p = &rx_bufs[0][r.start as usize..(r.start + r.len) as usize];
            assert!(co.push(*r, p, &rx_bufs));
        }
        co.finish(&mut rx_bufs);
        if round == 0 {
            // Coalescing rewrote the head in place; restore for the next round.
            rx_bufs[0][..segs[0].len()].copy_from_slice(&segs[0]);
        }
    }
    assert_eq!(mine() - before, 0, "allocations on the packet path");
}

fn worker_threads_allocate_nothing_while_forwarding() {
    live_workers("alloc", true);
}

fn worker_threads_allocate_nothing_with_offloads_off() {
    live_workers("allocnooff", false);
}

/// Host a's daemon runs in this process, so the counting allocator sees its workers:
/// TCP and UDP both ways, pings over the overlay, to the gateway (service thread) and
/// to an address with no route (ICMP errors from the workers). One worker per CPU,
/// steered by CPU, with adaptive polling and UDP coalescing on.
fn live_workers(tag: &str, offload: bool) {
    assert!(common::has("iperf3") && common::has("ping"), "needs iperf3 and ping");
    use tunloom_lab::testbed::{HostSpec, TwoHosts, GATEWAY, OVERLAY};
    let spec = HostSpec {
        offload,
        gateways: true,
        dataplane: "steering = \"cpu\"\nadaptive_poll_us = 200\ncoalesce_udp = true".into(),
        ..HostSpec::default()
    };
    let mut h = TwoHosts::create(tag, &common::exe(), &spec, common::never()).unwrap();
    // Host a runs in this process (so this allocator sees its workers), b as a process.
    let settings = tunloom::config::Config::load(&h.config_path(0)).unwrap();
    let (ns, state) = (h.a.name.clone(), h.dir.0.join("state-a"));
    let daemon = std::thread::spawn(move || {
        tunloom_lab::netns::enter(&ns).unwrap();
        tunloom::app::Daemon::start(settings, &state).unwrap()
    })
    .join()
    .unwrap();
    h.start(1).unwrap();
    h.wait_peers("up", Duration::from_secs(15)).unwrap();
    // A worker records its thread id when it first runs, which on a busy machine may
    // be a moment after the daemon started it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let tids = loop {
        let tids: Vec<i32> = daemon.workers().iter().map(|w| w.tid.load(Ordering::Relaxed)).collect();
        if tids.iter().all(|t| *t > 0) || std::time::Instant::now() > deadline {
            break tids;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(tids.iter().all(|t| *t > 0), "{tids:?}");
    let traffic = |secs| {
        assert_eq!(h.ping(0, OVERLAY[1], 20, "0.01").unwrap().len(), 20);
        assert_eq!(h.ping(0, GATEWAY[0], 10, "0.01").unwrap().len(), 10);
        // No replies, only "unreachable" errors made by the workers.
        // (198.19.30.1: routed into tl0, in no peer's prefix or block.)
        assert_eq!(h.ping(0, "198.19.30.1", 10, "0.01").unwrap().len(), 0);
        h.iperf(0, OVERLAY[1], secs, 2, false).unwrap();
        h.iperf(0, OVERLAY[1], secs, 1, true).unwrap();
        h.iperf_udp(0, OVERLAY[1], secs, 1400).unwrap();
        h.iperf_udp(1, OVERLAY[0], secs, 1400).unwrap();
    };
    traffic(1); // warm-up: first-use allocations (thread-locals, lazy tables)
    let before: Vec<u64> = tids.iter().map(|t| allocations_of(*t)).collect();
    // The allocator does see these threads: each allocated its buffers at start.
    assert!(before.iter().all(|n| *n > 0), "allocator sees the workers: {before:?}");
    let total = |name: &str| daemon.workers().iter().map(|w| w.snapshot().get(name)).sum::<u64>();
    let (forwarded_before, errors_before) = (total("forwarded_packets"), total("icmp_errors"));
    traffic(2);
    let after: Vec<u64> = tids.iter().map(|t| allocations_of(*t)).collect();
    let forwarded = total("forwarded_packets") - forwarded_before;
    assert!(
        forwarded > 10_000,
        "traffic went through the workers: {forwarded} packets"
    );
    assert!(
        total("icmp_errors") - errors_before >= 10,
        "the workers answered with ICMP errors"
    );
    assert_eq!(
        before, after,
        "worker allocations (per worker, before vs after) while forwarding {forwarded} packets"
    );
    daemon.stop().unwrap();
}

/// A UDP DNS query for `name` from 198.19.1.5 to the gateway, as a worker hands it
/// over.
fn dns_packet(name: &str, qtype: domain::base::iana::Rtype, edns: bool) -> Vec<u8> {
    use domain::base::{MessageBuilder, Name};
    use std::str::FromStr;
    let mut b = MessageBuilder::new_vec();
    b.header_mut().set_id(0x4242);
    b.header_mut().set_rd(true);
    let mut q = b.question();
    q.push((Name::<Vec<u8>>::from_str(name).unwrap(), qtype)).unwrap();
    let mut add = q.additional();
    if edns {
        add.opt(|o| {
            o.set_udp_payload_size(1232);
            Ok(())
        })
        .unwrap();
    }
    let mut pkt = Vec::new();
    PacketBuilder::ipv4([198, 19, 1, 5], [198, 19, 1, 254], 64)
        .udp(40000, 53)
        .write(&mut pkt, &add.finish())
        .unwrap();
    pkt
}

fn the_dns_server_answers_without_allocating() {
    use domain::base::iana::Rtype;
    use std::sync::Arc;
    use tunloom::service::{Service, ServiceQueues};
    // A stand-in upstream on loopback, answered by this thread.
    let upstream = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    upstream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let settings = tunloom::dns::Settings {
        upstream: vec![upstream.local_addr().unwrap()],
        ..tunloom::dns::Settings::default()
    };
    let dns = Arc::new(tunloom::dns::Dns::new(settings));
    let mut records = Vec::new();
    for i in 1..=40u8 {
        records.push(tunloom::model::Record {
            container: "c".into(),
            ip: std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 19, 66, i)),
            fqdn: if i <= 3 {
                "web.weave.local."
            } else {
                "many.weave.local."
            }
            .into(),
        });
    }
    dns.publish(&records);
    let q = Arc::new(ServiceQueues::new(1, 64, 1500));
    let mut svc = Service::new(q.clone(), dns.clone(), &["198.19.1.254".parse().unwrap()], 1450).unwrap();
    let queries = [
        dns_packet("web.weave.local", Rtype::A, false),
        dns_packet("WEB.weave.local", Rtype::AAAA, true),
        dns_packet("nope.weave.local", Rtype::A, false),
        dns_packet("2.66.19.198.in-addr.arpa", Rtype::PTR, true),
        dns_packet("many.weave.local", Rtype::A, false),
        dns_packet("many.weave.local", Rtype::A, true),
        dns_packet("www.example.com", Rtype::A, false),
    ];
    let mut events = mio::Events::with_capacity(64);
    let mut ask = |pkt: &[u8]| -> usize {
        assert!(q.submit(0, pkt));
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        loop {
            svc.step(&mut events);
            if let Some(r) = q.take_reply(0) {
                let n = r.len;
                q.recycle(r.buf);
                return n;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no answer: {:?}",
                dns.counters.snapshot()
            );
        }
    };
    // The first forwarded query goes upstream once; its answer is cached for 300 s.
    let forwarded = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let mut buf = [0u8; 512];
            let (n, from) = upstream.recv_from(&mut buf).unwrap();
            let req = domain::base::Message::from_slice(&buf[..n]).unwrap();
            let mut b = domain::base::MessageBuilder::new_vec()
                .start_answer(req, domain::base::iana::Rcode::NOERROR)
                .unwrap();
            b.push((
                <domain::base::Name<Vec<u8>> as std::str::FromStr>::from_str("www.example.com.").unwrap(),
                300,
                domain::rdata::A::new("203.0.113.20".parse().unwrap()),
            ))
            .unwrap();
            upstream.send_to(&b.finish(), from).unwrap();
        });
        let n = ask(&queries[6]);
        h.join().unwrap();
        n
    });
    assert!(forwarded > 28, "an answer came back");
    for _ in 0..50 {
        for pkt in &queries {
            ask(pkt);
        }
    }
    let before = mine();
    for _ in 0..500 {
        for pkt in &queries {
            ask(pkt);
        }
    }
    let allocated = mine() - before;
    let c = dns.counters.snapshot();
    assert!(c["cache_hits"] >= 500 && c["local"] >= 3000, "{c:?}");
    assert_eq!(
        allocated, 0,
        "allocations for 3500 queries: local answers of every kind and cache hits"
    );
}

fn main() -> std::process::ExitCode {
    common::main(&[
        (
            "the_dns_server_answers_without_allocating",
            Needs::Nothing,
            the_dns_server_answers_without_allocating,
        ),
        (
            "the_pipeline_allocates_nothing_per_packet",
            Needs::Nothing,
            the_pipeline_allocates_nothing_per_packet,
        ),
        (
            "worker_threads_allocate_nothing_while_forwarding",
            Needs::NetnsWith(&["ping", "iperf3"]),
            worker_threads_allocate_nothing_while_forwarding,
        ),
        (
            "worker_threads_allocate_nothing_with_offloads_off",
            Needs::NetnsWith(&["ping", "iperf3"]),
            worker_threads_allocate_nothing_with_offloads_off,
        ),
    ])
}
