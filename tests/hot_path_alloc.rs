//! Proof that the hot path allocates nothing: a counting global allocator records
//! allocations per thread.
//!
//! 1. The sans-IO pipeline in steady state (inside, outside, superpacket split,
//!    coalescing, TX batching, ICMP errors): zero allocations on this thread.
//! 2. The real worker threads of a daemon running in this process, in a network
//!    namespace, while ping and iperf3 traffic flows through them both ways: zero
//!    allocations on those threads after warm-up. (Needs root.)

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
use tunloom::pipeline::{inside, outside, Verdict, ENCAP_LEN};
use tunloom::testkit::{in_buf, laid_out, pair, tcp4, udp4, HEADROOM};

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
    let (a, b) = pair();
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
    let mut arena = Arena::new(64 * 1024);
    let mut seg_out = Vec::with_capacity(64);
    let mut co = Coalescer::new(64, 128, true);
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
/// TCP both ways, pings over the overlay, to the gateway (service thread) and to an
/// address with no route (ICMP errors from the workers).
fn live_workers(tag: &str, offload: bool) {
    assert!(common::has("iperf3") && common::has("ping"), "needs iperf3 and ping");
    use tunloom_lab::testbed::{HostSpec, TwoHosts, GATEWAY, OVERLAY};
    let spec = HostSpec {
        offload,
        gateways: true,
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
    let tids: Vec<i32> = daemon.workers().iter().map(|w| w.tid.load(Ordering::Relaxed)).collect();
    assert!(tids.iter().all(|t| *t > 0));
    let traffic = |secs| {
        assert_eq!(h.ping(0, OVERLAY[1], 20, "0.01").unwrap().len(), 20);
        assert_eq!(h.ping(0, GATEWAY[0], 10, "0.01").unwrap().len(), 10);
        // No replies, only "unreachable" errors made by the workers.
        // (198.19.30.1: routed into tl0, in no peer's prefix or block.)
        assert_eq!(h.ping(0, "198.19.30.1", 10, "0.01").unwrap().len(), 0);
        h.iperf(0, OVERLAY[1], secs, 2, false).unwrap();
        h.iperf(0, OVERLAY[1], secs, 1, true).unwrap();
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

fn main() -> std::process::ExitCode {
    common::main(&[
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
