//! Container attachment at scale: one tunloom daemon in a host namespace, one container
//! network, then N (1,000) container namespaces attached one after the other through
//! the Container Station API (`POST …/networks/bench/connect`), each request timed on
//! one keep-alive connection; the daemon's resident memory (`VmRSS`) before and after;
//! then every one detached (`…/disconnect`), timed the same way.
//!
//! Beside it, in the same run, the same attachment made by hand with the kernel's own
//! tools for M (100) of the namespaces, into a second host namespace: the veth pair
//! with its peer created in the container (`ip link add … type veth peer … netns …`),
//! address, `lo` and the link up, the default route via the gateway, the host end up
//! with its sysctls (`rp_filter`, `proxy_arp`, `proxy_delay`), its /32 in table 6784
//! and its rule into table 6783, and resolv.conf — what `src/host/attach.rs` does over
//! rtnetlink. Twice: one process per step (nine, as a shell script does it) and
//! batched (`ip -batch` per namespace and one `sysctl`: three processes). Detached by
//! hand the same two ways.
//!
//! ```text
//!  ns tl-batt-<pid>      tunloom, network bench 198.19.160.0/21   ─veth─ ns tl-batt-<pid>-c<i> (N)
//!  ns tl-batt-<pid>-k    by hand, 198.19.168.0/21 (no daemon)     ─veth─ ns tl-batt-<pid>-c<i> (M of them)
//! ```
//!
//! Run: `cargo bench --bench attach` (root, iproute2, nftables: scripts/setup).
//! TUNLOOM_BENCH_CONTAINERS=N (default 1000), TUNLOOM_BENCH_BY_HAND=M (default 100).
//! Every namespace it makes carries the prefix `tl-batt-<pid>-` and is deleted when
//! the bench ends, also when it fails, panics or is interrupted (Ctrl-C, SIGTERM: the
//! loops stop at the next container and unwind); those of a run that was killed
//! outright (its pid gone) are deleted by the next run.

use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tunloom_lab::netns::{self, Netns};
use tunloom_lab::testbed::{vm_rss_kib, OneHost};

const CS: &str = "/container-station/api/v1/networks";
const NETWORK: &str = "bench";
/// tunloom's network: room for 2,046 containers.
const SUBNET: &str = "198.19.160.0/21";
/// The by-hand attachments' addresses (in their own host namespace).
const HAND_BASE: Ipv4Addr = Ipv4Addr::new(198, 19, 168, 0);
const HAND_GATEWAY: &str = "198.19.168.1";

/// Set by SIGINT and SIGTERM; every loop checks it before its next container.
static STOP: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();

/// Unwinds (so every guard deletes what it made) once a signal asked to stop.
fn go_on() {
    if STOP.get().is_some_and(|s| s.load(Ordering::Relaxed)) {
        panic!("interrupted; deleting what the bench made");
    }
}

/// Deletes the namespaces of earlier runs that were killed outright
/// (`tl-batt-<pid>-…` whose pid no longer runs).
fn sweep_dead_runs() {
    let mut dead = Vec::new();
    for e in std::fs::read_dir("/run/netns").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("tl-batt-").and_then(|r| r.split('-').next()) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            dead.push(name);
        }
    }
    if !dead.is_empty() {
        eprintln!("attach bench: deleting {} namespaces of killed runs", dead.len());
        let _ = ip_batch(
            None,
            true,
            &dead.iter().map(|n| format!("netns del {n}")).collect::<Vec<_>>(),
        );
        for n in &dead {
            netns::remove_tunloom_etc(n);
        }
    }
}

fn count(var: &str, default: usize) -> usize {
    std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// Runs `ip [-n ns] -batch -` with `lines` on its standard input.
fn ip_batch(ns: Option<&str>, force: bool, lines: &[String]) -> io::Result<()> {
    let mut c = Command::new("ip");
    if let Some(ns) = ns {
        c.args(["-n", ns]);
    }
    if force {
        c.arg("-force");
    }
    let mut child = c
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut input = child.stdin.take().expect("piped");
    for l in lines {
        writeln!(input, "{l}")?;
    }
    drop(input);
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip -batch ({}…) failed: {}",
            lines.first().map_or("", String::as_str),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Runs one command to completion, failing with its stderr.
fn run(prog: &str, args: &[&str]) -> io::Result<()> {
    let out = Command::new(prog).args(args).stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{prog} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The container namespaces, made with `ip -batch` (`netns add`) and deleted the same
/// way when this drops — after success, failure or a panic — with whatever tunloom
/// wrote for them under /etc/netns.
struct Containers {
    names: Vec<String>,
}

impl Containers {
    fn create(prefix: &str, n: usize) -> io::Result<Containers> {
        let c = Containers {
            names: (0..n).map(|i| format!("{prefix}c{i}")).collect(),
        };
        // Names are known before any exists, so a failure half-way still deletes
        // those made.
        ip_batch(
            None,
            false,
            &c.names.iter().map(|n| format!("netns add {n}")).collect::<Vec<_>>(),
        )?;
        Ok(c)
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        let existing: Vec<String> = self
            .names
            .iter()
            .filter(|n| Path::new("/run/netns").join(n).exists())
            .map(|n| format!("netns del {n}"))
            .collect();
        if !existing.is_empty() {
            if let Err(e) = ip_batch(None, true, &existing) {
                eprintln!("warning: deleting the bench's container namespaces: {e}");
            }
        }
        for n in &self.names {
            netns::remove_tunloom_etc(n);
            // The by-hand path's resolv.conf.
            let dir = Path::new("/etc/netns").join(n);
            let _ = std::fs::remove_file(dir.join("resolv.conf"));
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Mean, p50, p99 and max of a set of durations, in milliseconds.
struct Summary {
    n: usize,
    mean: f64,
    p50: f64,
    p99: f64,
    max: f64,
}

fn summary(d: &[Duration]) -> Summary {
    let mut ms: Vec<f64> = d.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if ms.is_empty() {
            0.0
        } else {
            ms[((ms.len() - 1) as f64 * q).round() as usize]
        }
    };
    Summary {
        n: ms.len(),
        mean: if ms.is_empty() {
            0.0
        } else {
            ms.iter().sum::<f64>() / ms.len() as f64
        },
        p50: at(0.5),
        p99: at(0.99),
        max: at(1.0),
    }
}

fn row(what: &str, d: &[Duration]) -> Summary {
    let s = summary(d);
    println!(
        "{what:<44}{:>6}{:>10.2}{:>10.2}{:>10.2}{:>10.2}",
        s.n, s.mean, s.p50, s.p99, s.max
    );
    s
}

/// Connects (or disconnects) each container in turn through the Container Station
/// API of the daemon in `host`, from one thread in its namespace on one keep-alive
/// connection; the time of each request.
fn through_api(host: &str, names: &[String], action: &str) -> Vec<Duration> {
    let host = host.to_string();
    let names = names.to_vec();
    let action = action.to_string();
    std::thread::spawn(move || {
        netns::enter(&host).expect("enter the host namespace");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .http_status_as_error(false)
            .build()
            .into();
        let url = format!("http://127.0.0.1:6786{CS}/{NETWORK}/{action}");
        names
            .iter()
            .map(|name| {
                go_on();
                let body = serde_json::json!({ "container": name }).to_string();
                let t0 = Instant::now();
                let mut r = agent
                    .post(&url)
                    .header("Content-Type", "application/json")
                    .send(body.as_bytes())
                    .unwrap_or_else(|e| panic!("{action} {name}: {e}"));
                let text = r.body_mut().read_to_string().unwrap_or_default();
                let took = t0.elapsed();
                assert_eq!(r.status().as_u16(), 200, "{action} {name}: {text}");
                took
            })
            .collect()
    })
    .join()
    .expect("the API client thread")
}

/// One by-hand attachment's names and addresses.
struct Hand<'a> {
    host: &'a str,
    container: &'a str,
    link: String,
    address: String,
}

impl Hand<'_> {
    /// The `ip` commands of an attachment: in the host namespace, then in the
    /// container's.
    fn attach_lines(&self) -> (Vec<String>, Vec<String>) {
        let (link, c) = (&self.link, self.container);
        let host = vec![
            format!(
                "link add {link} mtu 1450 type veth peer name eth0 address {} mtu 1450 netns {c}",
                self.mac()
            ),
            format!("link set {link} up"),
            format!("route add {}/32 dev {link} table 6784", self.address),
            format!("rule add iif {link} lookup 6783 priority 100"),
        ];
        let inside = vec![
            format!("addr add {}/21 dev eth0", self.address),
            "link set lo up".to_string(),
            "link set eth0 up".to_string(),
            format!("route add default via {HAND_GATEWAY}"),
        ];
        (host, inside)
    }

    /// `02:42:` and the IPv4 address, as tunloom gives the container's end.
    fn mac(&self) -> String {
        let o = self.address.parse::<Ipv4Addr>().map_or([0; 4], |a| a.octets());
        format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
    }

    fn sysctl_args(&self) -> Vec<String> {
        let link = &self.link;
        vec![
            format!("net.ipv4.conf.{link}.rp_filter=0"),
            format!("net.ipv4.conf.{link}.proxy_arp=1"),
            format!("net.ipv4.neigh.{link}.proxy_delay=0"),
        ]
    }

    fn sysctl(&self) -> io::Result<()> {
        let args = self.sysctl_args();
        let mut all = vec!["netns", "exec", self.host, "sysctl", "-qw"];
        all.extend(args.iter().map(String::as_str));
        run("ip", &all)
    }

    fn resolv(&self) -> io::Result<()> {
        let dir = Path::new("/etc/netns").join(self.container);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("resolv.conf"), format!("nameserver {HAND_GATEWAY}\n"))
    }

    fn unresolv(&self) {
        let dir = Path::new("/etc/netns").join(self.container);
        let _ = std::fs::remove_file(dir.join("resolv.conf"));
        let _ = std::fs::remove_dir(dir);
    }

    /// One `ip` process per step, as a shell script does it.
    fn attach_per_step(&self) -> io::Result<()> {
        let (host, inside) = self.attach_lines();
        let (h, c) = (host.split_at(2), inside);
        // Link first, then the container's side, then the host end's sysctls, route
        // and rule (the order src/host/attach.rs follows).
        for l in h.0 {
            ip_words(self.host, l)?;
        }
        for l in &c {
            ip_words(self.container, l)?;
        }
        self.sysctl()?;
        for l in h.1 {
            ip_words(self.host, l)?;
        }
        self.resolv()
    }

    /// Batched: `ip -batch` in each namespace and one `sysctl`.
    fn attach_batched(&self) -> io::Result<()> {
        let (host, inside) = self.attach_lines();
        ip_batch(Some(self.host), false, &host)?;
        ip_batch(Some(self.container), false, &inside)?;
        self.sysctl()?;
        self.resolv()
    }

    fn detach_lines(&self) -> Vec<String> {
        vec![
            format!("rule del iif {} lookup 6783 priority 100", self.link),
            // The route and the container's end go with the pair.
            format!("link del {}", self.link),
        ]
    }

    fn detach_per_step(&self) -> io::Result<()> {
        for l in self.detach_lines() {
            ip_words(self.host, &l)?;
        }
        self.unresolv();
        Ok(())
    }

    fn detach_batched(&self) -> io::Result<()> {
        ip_batch(Some(self.host), false, &self.detach_lines())?;
        self.unresolv();
        Ok(())
    }
}

/// `ip -n <ns> <line split at spaces>`.
fn ip_words(ns: &str, line: &str) -> io::Result<()> {
    let mut args = vec!["-n", ns];
    args.extend(line.split(' '));
    netns::ip(&args)
}

fn timed(n: usize, mut f: impl FnMut(usize) -> io::Result<()>) -> Vec<Duration> {
    (0..n)
        .map(|i| {
            go_on();
            let t0 = Instant::now();
            f(i).unwrap_or_else(|e| panic!("by hand, container {i}: {e}"));
            t0.elapsed()
        })
        .collect()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks what is here; nothing to list.
    }
    if let Err(why) = netns::available() {
        eprintln!("attach bench skipped: {why}");
        return;
    }
    for prog in ["nft", "sysctl", "ping"] {
        if Command::new(prog).arg("--version").output().is_err() {
            eprintln!("attach bench skipped: needs {prog} (scripts/setup installs it)");
            return;
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).expect("a signal handler");
    }
    let _ = STOP.set(stop);
    sweep_dead_runs();
    let n = count("TUNLOOM_BENCH_CONTAINERS", 1000).clamp(1, 2000);
    let m = count("TUNLOOM_BENCH_BY_HAND", 100).clamp(1, n.min(1000));
    let pid = std::process::id();
    let config = "[node]\nname = \"batt\"\n[ipam]\nrange = \"198.19.0.0/17\"\n[networks]\npool = \"198.19.128.0/17\"\n";
    let started = Instant::now();
    let mut host = OneHost::create("batt", Path::new(env!("CARGO_BIN_EXE_tunloom")), config).expect("a host");
    host.start().expect("tunloom starts");
    let daemon = host.pid().expect("the daemon runs");
    let body = serde_json::json!({"name": NETWORK, "ipam": {"Config": [{"Subnet": SUBNET}]}});
    let (status, text) = host
        .api("POST", CS, Some(body.to_string().into_bytes()))
        .expect("the API answers");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&text));

    let t0 = Instant::now();
    let containers = Containers::create(&format!("tl-batt-{pid}-"), n).expect("container namespaces");
    let made = t0.elapsed();
    let hand_host = Netns::create(&format!("tl-batt-{pid}-k")).expect("the by-hand host namespace");
    hand_host
        .run("sysctl", &["-qw", "net.ipv4.ip_forward=1"], Duration::from_secs(5))
        .expect("ip_forward");

    // Let the daemon settle (its first hellos, the network's snapshot) before the
    // baseline of its memory.
    std::thread::sleep(Duration::from_millis(500));
    let rss_before = vm_rss_kib(daemon).expect("VmRSS");
    let connect = through_api(&host.ns.name, &containers.names, "connect");
    let rss_after = vm_rss_kib(daemon).expect("VmRSS");
    // The attachments are real: the first and the last container reach their gateway
    // (tunloom answers it).
    for name in [&containers.names[0], &containers.names[n - 1]] {
        let deadline = Instant::now() + Duration::from_secs(5);
        let reached = || {
            Command::new("ip")
                .args(["netns", "exec", name, "ping", "-c", "1", "-W", "1", "198.19.160.1"])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        while !reached() {
            assert!(
                Instant::now() < deadline,
                "{name} does not reach its gateway\n{}",
                host.log()
            );
        }
    }
    let disconnect = through_api(&host.ns.name, &containers.names, "disconnect");
    let rss_detached = vm_rss_kib(daemon).expect("VmRSS");

    let hands: Vec<Hand> = containers.names[..m]
        .iter()
        .enumerate()
        .map(|(i, c)| Hand {
            host: &hand_host.name,
            container: c,
            link: format!("tlk{i}"),
            address: Ipv4Addr::from(u32::from(HAND_BASE) + 2 + i as u32).to_string(),
        })
        .collect();
    let hand_step = timed(m, |i| hands[i].attach_per_step());
    let hand_step_off = timed(m, |i| hands[i].detach_per_step());
    let hand_batch = timed(m, |i| hands[i].attach_batched());
    let hand_batch_off = timed(m, |i| hands[i].detach_batched());

    println!(
        "== attach: {n} containers through the Container Station API, one after the other; {m} by hand with iproute2 =="
    );
    println!(
        "{:<44}{:>6}{:>10}{:>10}{:>10}{:>10}",
        "path (ms per container)", "n", "mean", "p50", "p99", "max"
    );
    let all = row("tunloom connect", &connect);
    let first = row(&format!("tunloom connect, first {m}"), &connect[..m]);
    row(&format!("tunloom connect, last {m}"), &connect[n - m..]);
    let step = row("iproute2, one process per step (9)", &hand_step);
    let batch = row("iproute2, batched (3 processes)", &hand_batch);
    let off = row("tunloom disconnect", &disconnect);
    let step_off = row("iproute2 detach, one process per step (2)", &hand_step_off);
    let batch_off = row("iproute2 detach, batched (1 process)", &hand_batch_off);
    println!(
        "tunloom / iproute2 (mean): attach {:.2} per step, {:.2} batched (first {m}: {:.2}, {:.2}); detach {:.2} per step, {:.2} batched",
        all.mean / step.mean,
        all.mean / batch.mean,
        first.mean / step.mean,
        first.mean / batch.mean,
        off.mean / step_off.mean,
        off.mean / batch_off.mean
    );
    let per = |a: u64, b: u64| (a as f64 - b as f64) * 1024.0 / n as f64;
    println!(
        "daemon VmRSS: {rss_before} KiB before, {rss_after} KiB with {n} attachments ({:+.0} bytes per attachment), {rss_detached} KiB after detaching all",
        per(rss_after, rss_before)
    );
    println!(
        "{n} namespaces made with ip -batch in {:.1} s; whole bench {:.0} s; {} CPU(s)",
        made.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        tunloom_lab::netns::allowed_cpus().len()
    );
    drop(hands);
    host.stop(false);
    drop(hand_host);
    drop(containers);
}
