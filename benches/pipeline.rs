//! Per-packet cost of the sans-IO pipeline, without devices: `inside` (route,
//! TTL, encapsulate), `outside` (validate, anti-spoof, decapsulate), splitting a TCP
//! superpacket, coalescing segments, and the checksum loop under both.
//!
//! Run: `cargo bench --bench pipeline`

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use tunloom::pipeline::coalesce::Coalescer;
use tunloom::pipeline::segment::{self, Arena, Gso, L4};
use tunloom::pipeline::{inside, outside, Verdict, ENCAP_LEN};
use tunloom::testkit::{in_buf, laid_out, pair, tcp4, udp4, HEADROOM};
use tunloom::wire::checksum;

const SIZES: [usize; 3] = [64, 512, 1400];

fn bench_inside(c: &mut Criterion) {
    let (a, _) = pair();
    let mut g = c.benchmark_group("inside");
    g.throughput(Throughput::Elements(1));
    for size in SIZES {
        let pkt = udp4([198, 19, 1, 5], [198, 19, 2, 7], 64, size - 28);
        let mut scratch = vec![0u8; 1500];
        g.bench_with_input(BenchmarkId::from_parameter(size), &pkt, |b, pkt| {
            b.iter_batched_ref(
                || in_buf(pkt),
                |buf| {
                    let v = inside::process(&a, buf, HEADROOM, pkt.len(), None, &mut scratch);
                    debug_assert!(matches!(v, Verdict::Forward { .. }));
                    black_box(v)
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn encapsulated(pkt: &[u8]) -> Vec<u8> {
    let (a, _) = pair();
    let mut buf = in_buf(pkt);
    let mut scratch = vec![0u8; 1500];
    match inside::process(&a, &mut buf, HEADROOM, pkt.len(), None, &mut scratch) {
        Verdict::Forward { start, len, .. } => buf[start..start + len].to_vec(),
        v => panic!("fixture did not forward: {v:?}"),
    }
}

fn bench_outside(c: &mut Criterion) {
    let (_, b) = pair();
    let src = "198.18.0.1".parse().unwrap();
    let mut g = c.benchmark_group("outside");
    g.throughput(Throughput::Elements(1));
    for size in SIZES {
        let dgram = encapsulated(&udp4([198, 19, 1, 5], [198, 19, 2, 7], 64, size - 28));
        g.bench_with_input(BenchmarkId::from_parameter(size), &dgram, |bch, d| {
            bch.iter(|| {
                let v = outside::process(&b, src, black_box(d));
                debug_assert!(matches!(v, Verdict::Deliver { .. }));
                black_box(v)
            })
        });
        // The worker's case: datagrams of one GRO train share a flow.
        let mut memo = outside::Memo::default();
        g.bench_with_input(BenchmarkId::new("same_flow", size), &dgram, |bch, d| {
            bch.iter(|| black_box(outside::process_memo(&b, src, black_box(d), &mut memo)))
        });
    }
    g.finish();
}

fn bench_segment(c: &mut Criterion) {
    // A 60,000-byte TCP superpacket cut at MSS 1398 (overlay MTU 1450): 43 segments.
    let mut sp = tcp4(1, 60_000 - 40);
    let mut dgram = vec![0u8; ENCAP_LEN];
    dgram.append(&mut sp);
    let gso = Gso {
        l4: L4::Tcp,
        l3_len: 20,
        size: 1398,
    };
    let mut arena = Arena::new(64 * 1024);
    let mut out = Vec::with_capacity(64);
    let n = segment::split(&dgram, &gso, &mut arena, &mut out).unwrap() as u64;
    let mut g = c.benchmark_group("segment");
    g.throughput(Throughput::Elements(n));
    g.bench_function("tcp_60000_mss1398", |b| {
        b.iter(|| {
            arena.clear();
            out.clear();
            black_box(segment::split(black_box(&dgram), &gso, &mut arena, &mut out))
        })
    });
    g.finish();
}

fn bench_coalesce(c: &mut Criterion) {
    let mut g = c.benchmark_group("coalesce");
    // 43 consecutive 1398-byte segments of one flow, laid out as a GRO receive
    // buffer lays them out (each behind its 22 bytes of VXLAN + Ethernet).
    let segs: Vec<Vec<u8>> = (0..43u32).map(|i| tcp4(1 + i * 1398, 1398)).collect();
    // 46 datagrams of 1400 bytes of one UDP flow (what `iperf3 -u -l 1400` sends):
    // one GSO_UDP_L4 write with USO, 46 writes of one without.
    let dgrams: Vec<Vec<u8>> = (0..46)
        .map(|_| udp4([198, 19, 1, 5], [198, 19, 2, 7], 64, 1400))
        .collect();
    for (name, pkts, uso) in [
        ("43x1398", &segs, true),
        ("udp_46x1400", &dgrams, true),
        ("udp_46x1400_uso_off", &dgrams, false),
    ] {
        let (buf, ranges) = laid_out(pkts, ENCAP_LEN);
        let pristine = vec![buf];
        let mut co = Coalescer::new(64, 128, true, uso);
        g.throughput(Throughput::Elements(ranges.len() as u64));
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || pristine.clone(),
                |bufs| {
                    co.clear();
                    for r in &ranges {
                        let p = &bufs[0][r.start as usize..(r.start + r.len) as usize];
                        assert!(co.push(*r, p, bufs), "every packet fits");
                    }
                    co.finish(bufs);
                    black_box(co.trains.len())
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn bench_checksum(c: &mut Criterion) {
    let data: Vec<u8> = (0..1400u32).map(|i| i as u8).collect();
    let mut g = c.benchmark_group("checksum");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("sum_1400", |b| b.iter(|| black_box(checksum::sum(black_box(&data)))));
    g.finish();
}

criterion_group!(
    benches,
    bench_inside,
    bench_outside,
    bench_segment,
    bench_coalesce,
    bench_checksum
);
criterion_main!(benches);
