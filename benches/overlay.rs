//! End-to-end: iperf3 and ping through two tunloom daemons in network namespaces and,
//! in the same run, through the kernel's own VXLAN over the same veth, with offloads
//! on and off. Prints tunloom / kernel ratios. Needs root, iperf3 and ping.
//!
//! Run: `cargo bench --bench overlay` (TUNLOOM_BENCH_DURATION=s per iperf3 run,
//! default 10).

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tunloom_lab::lab::{self, LabOptions};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks what is here; nothing to list.
    }
    if let Err(why) = tunloom_lab::netns::available() {
        eprintln!("overlay bench skipped: {why}");
        return;
    }
    let duration = std::env::var("TUNLOOM_BENCH_DURATION")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let exe = Path::new(env!("CARGO_BIN_EXE_tunloom"));
    for offload in [true, false] {
        let o = LabOptions {
            duration,
            parallel: 4,
            workers: 0,
            split_cpus: true,
            offload,
            pings: 200,
            dataplane: Vec::new(),
            containers: false,
        };
        match lab::run(&o, exe, Arc::new(AtomicBool::new(false))) {
            Ok(r) => {
                println!("== overlay, offloads {} ==", if offload { "on" } else { "off" });
                print!("{}", r.table());
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            }
            Err(e) => {
                eprintln!("overlay bench failed: {e}");
                std::process::exit(1);
            }
        }
    }
}
