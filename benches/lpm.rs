//! Longest-prefix-match lookup cost with 100 and 100,000 random prefixes, IPv4 and
//! IPv6, looking up random addresses (a mix of covered and uncovered ones).
//!
//! Run: `cargo bench --bench lpm`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr};
use tunloom::route::Table;

fn v4_table(n: usize, rng: &mut StdRng) -> (Table<u32>, Vec<Ipv4Addr>) {
    let mut entries = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(4096);
    for i in 0..n {
        let addr: u32 = rng.random();
        let len: u8 = rng.random_range(8..=32);
        entries.push((
            ipnet::IpNet::V4(ipnet::Ipv4Net::new(Ipv4Addr::from(addr), len).unwrap().trunc()),
            i as u32,
        ));
        if keys.len() < 2048 {
            keys.push(Ipv4Addr::from(addr));
        }
    }
    while keys.len() < 4096 {
        keys.push(Ipv4Addr::from(rng.random::<u32>()));
    }
    (Table::build(entries), keys)
}

fn v6_table(n: usize, rng: &mut StdRng) -> (Table<u32>, Vec<Ipv6Addr>) {
    let mut entries = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(4096);
    for i in 0..n {
        // Realistic IPv6 routes: /32 to /64 out of 2000::/3, some host routes.
        let addr: u128 = (rng.random::<u128>() >> 3) | (1u128 << 125);
        let len: u8 = if rng.random_bool(0.1) {
            128
        } else {
            rng.random_range(32..=64)
        };
        entries.push((
            ipnet::IpNet::V6(ipnet::Ipv6Net::new(Ipv6Addr::from(addr), len).unwrap().trunc()),
            i as u32,
        ));
        if keys.len() < 2048 {
            keys.push(Ipv6Addr::from(addr));
        }
    }
    while keys.len() < 4096 {
        keys.push(Ipv6Addr::from(rng.random::<u128>()));
    }
    (Table::build(entries), keys)
}

fn bench(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(7);
    let mut g = c.benchmark_group("lpm");
    g.throughput(Throughput::Elements(1));
    for n in [100usize, 100_000] {
        let (t, keys) = v4_table(n, &mut rng);
        eprintln!("lpm: {n} IPv4 prefixes take {} KiB", t.memory_bytes() / 1024);
        let mut i = 0usize;
        g.bench_with_input(BenchmarkId::new("v4", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) & 4095;
                black_box(t.lookup_v4(keys[i]))
            })
        });
        let (t, keys) = v6_table(n, &mut rng);
        eprintln!("lpm: {n} IPv6 prefixes take {} KiB", t.memory_bytes() / 1024);
        g.bench_with_input(BenchmarkId::new("v6", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) & 4095;
                black_box(t.lookup_v6(keys[i]))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
