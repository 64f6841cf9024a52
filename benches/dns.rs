//! Queries per second for local names, from one `dnsperf` client in a workload
//! namespace: against tunloom's gateway address and, in the same run, against
//! dnsmasq serving the same 100 names from a hosts file on the host side of the same
//! veth (the kernel's own UDP path, no TUN). Runs alternate, three of each; prints
//! every run, the means and tunloom / dnsmasq.
//!
//! ```text
//!  ns …-w: dnsperf 198.19.200.2 ──veth── 198.19.200.1 dnsmasq   (ns …-bdns)
//!                                         └─ tl0 → tunloom, gateway 198.19.1.254
//! ```
//!
//! Run: `cargo bench --bench dns` (root, dnsperf and dnsmasq: scripts/setup;
//! TUNLOOM_BENCH_DURATION=s per dnsperf run, default 10).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tunloom_lab::netns::{self, Netns};
use tunloom_lab::testbed::{weave_request, OneHost, Proc};

const NAMES: usize = 100;
const GATEWAY: &str = "198.19.1.254";
const DNSMASQ: &str = "198.19.200.1";

/// What one dnsperf run measured.
struct Run {
    qps: f64,
    latency_us: f64,
    lost: u64,
}

fn dnsperf(w: &Netns, server: &str, queries: &Path, secs: u64) -> Run {
    let child = w
        .command(
            "dnsperf",
            &[
                "-s",
                server,
                "-d",
                &queries.display().to_string(),
                "-l",
                &secs.to_string(),
                "-c",
                "1",
                "-T",
                "1",
                "-t",
                "2",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dnsperf runs");
    let out = netns::wait_limited(child, Duration::from_secs(secs + 30)).expect("dnsperf finishes");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let Some(qps) = field("Queries per second:") else {
        panic!(
            "no result from dnsperf against {server}:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    Run {
        qps,
        latency_us: field("Average Latency (s):").unwrap_or(0.0) * 1e6,
        lost: field("Queries lost:").unwrap_or(0.0) as u64,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks what is here; nothing to list.
    }
    if let Err(why) = netns::available() {
        eprintln!("dns bench skipped: {why}");
        return;
    }
    for prog in ["dnsperf", "dnsmasq"] {
        if std::process::Command::new(prog).arg("--version").output().is_err() {
            eprintln!("dns bench skipped: needs {prog} (scripts/setup installs it)");
            return;
        }
    }
    let secs: u64 = std::env::var("TUNLOOM_BENCH_DURATION")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let config = format!(
        "[node]\nname = \"bdns\"\n[overlay]\ngateways = [\"{GATEWAY}\"]\n[ipam]\nrange = \"198.19.0.0/16\"\n[dns]\nupstream = []\n"
    );
    let mut host = OneHost::create("bdns", Path::new(env!("CARGO_BIN_EXE_tunloom")), &config).expect("a host");
    let w = Netns::create(&format!("tl-bdns-{}-w", std::process::id())).expect("a workload namespace");
    netns::behind(&host.ns, "tlw", &format!("{DNSMASQ}/24"), &w, "eth0", "198.19.200.2/24").expect("a veth");
    host.start().expect("tunloom starts");

    let mut hosts = String::new();
    let mut queries = String::new();
    for i in 1..=NAMES {
        let (name, ip) = (format!("name{i}.weave.local"), format!("198.19.64.{i}"));
        let (status, body) = weave_request(
            &host.ns.name,
            "PUT",
            &format!("/name/c{i}/{ip}"),
            Some(&format!("fqdn={name}")),
        )
        .expect("the Weave API answers");
        assert_eq!(status, 200, "{body}");
        hosts.push_str(&format!("{ip} {name}\n"));
        queries.push_str(&format!("{name} A\n"));
    }
    let dir = host.dir.0.clone();
    std::fs::write(dir.join("names.hosts"), hosts).unwrap();
    let query_file = dir.join("queries.txt");
    std::fs::write(&query_file, queries).unwrap();
    let dnsmasq = host
        .ns
        .command(
            "dnsmasq",
            &[
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--user=root",
                &format!("--pid-file={}", dir.join("dnsmasq.pid").display()),
                &format!("--listen-address={DNSMASQ}"),
                "--bind-interfaces",
                &format!("--addn-hosts={}", dir.join("names.hosts").display()),
                "--local=/weave.local/",
                "--local-ttl=1",
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq starts");
    let _dnsmasq = Proc::new(dnsmasq, "dnsmasq");
    // Both answer before anything is measured.
    let deadline = Instant::now() + Duration::from_secs(10);
    for server in [GATEWAY, DNSMASQ] {
        while dnsperf(&w, server, &query_file, 1).qps < 100.0 {
            assert!(Instant::now() < deadline, "{server} does not answer");
        }
    }

    let mut results: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
    println!("== dns: local names, one dnsperf client (-c 1, 100 outstanding), {secs} s per run ==");
    println!(
        "{:<10} {:>12} {:>14} {:>8}",
        "server", "queries/s", "avg latency", "lost"
    );
    for _ in 0..3 {
        for (i, (label, server)) in [("tunloom", GATEWAY), ("dnsmasq", DNSMASQ)].into_iter().enumerate() {
            let r = dnsperf(&w, server, &query_file, secs);
            println!("{label:<10} {:>12.0} {:>11.0} µs {:>8}", r.qps, r.latency_us, r.lost);
            results[i].push(r);
        }
    }
    let mean = |v: &[Run]| v.iter().map(|r| r.qps).sum::<f64>() / v.len() as f64;
    let (t, d) = (mean(&results[0]), mean(&results[1]));
    println!(
        "mean       tunloom {t:.0} q/s, dnsmasq {d:.0} q/s, tunloom / dnsmasq = {:.2}",
        t / d
    );
    let (_, body) =
        tunloom_lab::testbed::api_request(&host.ns.name, 6786, "GET", "/api/v1/stats", None, &[]).unwrap_or_default();
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
        println!(
            "tunloom's own view: answer latency p50 {} µs, p99 {} µs (service thread, receipt to reply)",
            v["dns"]["latency"]["p50_us"], v["dns"]["latency"]["p99_us"]
        );
    }
    host.stop(false);
}
