//! IPAM on a full /12, and durable allocation through the model and redb.
//!
//! - `fill`: allocating every address of 10.32.0.0/12 (1,048,573 after the network,
//!   gateway and broadcast addresses) to as many containers with 64-character ids;
//!   prints allocations/s and the memory the full table takes (counted by a global
//!   allocator).
//! - `ipam/*` (criterion): release + allocate, and lookups, on that full /12.
//! - `durable`: allocations/s through `Model::allocate` with the redb store (every
//!   answer after its commit is on disk), from 1 and from 32 threads: group commit at
//!   work.
//!
//! Run: `cargo bench --bench ipam`

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tunloom::model::ipam::Ipam;

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Docker-style 64-character container ids, made before anything is timed.
fn ids() -> Vec<String> {
    (0..1u32 << 20).map(|i| format!("{i:064x}")).collect()
}

fn full(ids: &[String]) -> Ipam {
    let range = "10.32.0.0/12".parse().unwrap();
    let mut ipam = Ipam::new(range, &[range]).unwrap();
    let mut i = 0;
    while ipam.allocate(&ids[i], range).is_ok() {
        i += 1;
    }
    ipam
}

fn fill_report(ids: &[String]) {
    let before = LIVE.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let ipam = full(ids);
    let secs = t0.elapsed().as_secs_f64();
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    let n = ipam.counts().allocated;
    println!(
        "fill: {n} allocations in {secs:.2} s = {:.2} M allocations/s; a full /12 with 64-character ids takes {:.1} MiB",
        n as f64 / secs / 1e6,
        bytes as f64 / (1 << 20) as f64
    );
}

fn bench_full(c: &mut Criterion) {
    let range = "10.32.0.0/12".parse().unwrap();
    let ids = ids();
    let mut ipam = full(&ids);
    let mut g = c.benchmark_group("ipam");
    g.throughput(Throughput::Elements(1));
    let mut k = 0u32;
    g.bench_function("release_then_allocate_on_full_12", |b| {
        b.iter(|| {
            k = (k + 7919) % 1_000_000;
            let freed = ipam.release(&ids[k as usize]);
            black_box(freed);
            black_box(ipam.allocate(&ids[k as usize], range).unwrap());
        })
    });
    g.bench_function("lookup_on_full_12", |b| {
        b.iter(|| {
            k = (k + 7919) % 1_000_000;
            black_box(ipam.lookup(&ids[k as usize]))
        })
    });
    g.finish();
}

fn durable_report() {
    use tunloom::store::redb::RedbStore;
    use tunloom::store::CommitEvent;
    for threads in [1usize, 32] {
        let dir = std::env::temp_dir().join(format!("tunloom-bench-ipam-{}-{threads}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let settings = tunloom::testkit::model_settings("10.32.0.0/12");
        let (model, _) = tunloom::testkit::model_on(settings, RedbStore::open(&dir).unwrap(), 0).unwrap();
        let model = Arc::new(model);
        let per = 2000 / threads;
        let t0 = Instant::now();
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let m = model.clone();
                std::thread::spawn(move || {
                    for i in 0..per {
                        m.allocate(&format!("t{t}-{i}"), None, false).unwrap();
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        let secs = t0.elapsed().as_secs_f64();
        let transactions = model.commits().get(CommitEvent::Transactions);
        println!(
            "durable: {} allocations from {threads} thread(s) in {secs:.2} s = {:.0} allocations/s ({} transactions)",
            per * threads,
            (per * threads) as f64 / secs,
            transactions
        );
        drop(model);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

criterion_group!(benches, bench_full);

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    fill_report(&ids());
    durable_report();
    benches();
    Criterion::default().configure_from_args().final_summary();
}

#[allow(dead_code)]
fn unused(_: BenchmarkId) {}
