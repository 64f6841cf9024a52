//! Management API latency under dataplane load: 16 clients, each on its own
//! keep-alive connection, ask `GET /api/v1/stats` of host a, first with the dataplane
//! idle, then while an iperf3 single stream saturates it (the `tunloom lab`
//! topology). Each phase runs twice: paced (every client 20 requests a second, as
//! dashboards and scrapers ask) for latency, and as fast as the clients can for
//! throughput. Prints requests, p50, p99 and max.
//!
//! Needs root, iproute2 and iperf3. `TUNLOOM_BENCH_DURATION` sets the seconds per
//! phase (default 10).
//!
//! The identity issue (12) adds a token to every request; its verification cost
//! belongs beside these figures once it exists.

use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tunloom_lab::testbed::{HostSpec, TwoHosts, OVERLAY};

const CLIENTS: usize = 16;

/// Runs the clients in namespace `ns` for `secs`, each waiting `gap` between the
/// starts of its requests (zero: none); every request's latency in µs.
fn clients(ns: &str, secs: u64, gap: Duration) -> Histogram<u64> {
    let stop = Arc::new(AtomicBool::new(false));
    // Authenticated, as every client of this API is: each request's token is verified.
    let bearer = format!(
        "Bearer {}",
        tunloom_lab::testbed::admin_token(ns).expect("an admin token (tunloom auth token mint)")
    );
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (ns, stop, bearer) = (ns.to_string(), stop.clone(), bearer.clone());
            std::thread::spawn(move || {
                tunloom_lab::netns::enter(&ns).expect("enter the namespace");
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .timeout_global(Some(Duration::from_secs(10)))
                    .build()
                    .into();
                let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    if now < next {
                        std::thread::sleep(next - now);
                    }
                    next += gap;
                    let t0 = Instant::now();
                    let mut r = agent
                        .get("http://127.0.0.1:6786/api/v1/stats")
                        .header("Authorization", &bearer)
                        .call()
                        .expect("GET /api/v1/stats");
                    let body = r.body_mut().read_to_vec().expect("a body");
                    assert!(body.len() > 100);
                    h.saturating_record(t0.elapsed().as_micros() as u64);
                }
                h
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    for t in threads {
        all.add(t.join().expect("client thread")).expect("same bounds");
    }
    all
}

fn report(phase: &str, h: &Histogram<u64>, secs: u64) {
    println!(
        "{phase:<40} {:>7} requests ({:>6.0}/s)  p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms",
        h.len(),
        h.len() as f64 / secs as f64,
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
}

fn main() {
    if let Err(e) = tunloom_lab::netns::available() {
        eprintln!("api bench: skipped, the bench {e}");
        return;
    }
    let secs: u64 = std::env::var("TUNLOOM_BENCH_DURATION")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_tunloom"));
    let mut h =
        TwoHosts::create("apibench", &exe, &HostSpec::default(), Arc::new(AtomicBool::new(false))).expect("namespaces");
    h.start(0).expect("host a");
    h.start(1).expect("host b");
    h.wait_peers("up", Duration::from_secs(20)).expect("peers up");
    let ns = h.ns(0).name.clone();
    println!("== GET /api/v1/stats, {CLIENTS} clients, {secs} s per phase ==");
    for (pace, gap) in [("20/s each", Duration::from_millis(50)), ("flat out", Duration::ZERO)] {
        report(&format!("{pace}, dataplane idle"), &clients(&ns, secs, gap), secs);
        let loaded = std::thread::scope(|s| {
            let iperf = s.spawn(|| h.iperf(0, OVERLAY[1], secs as u32 + 2, 1, false));
            // Let the stream reach full speed first.
            std::thread::sleep(Duration::from_secs(1));
            let hist = clients(&ns, secs, gap);
            let gbps = iperf
                .join()
                .expect("iperf3 thread")
                .ok()
                .and_then(|v| tunloom_lab::testbed::iperf_gbps(&v));
            (hist, gbps)
        });
        report(
            &format!("{pace}, iperf3 stream at {:.1} Gbit/s", loaded.1.unwrap_or(0.0)),
            &loaded.0,
            secs,
        );
    }
}
