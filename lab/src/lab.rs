//! `tunloom lab`: a two-host overlay in network namespaces ([`crate::testbed`]),
//! measured with ping and iperf3 side by side with the kernel's own VXLAN over the same
//! veth.
//!
//! ```text
//!  tunloom: tl0 198.19.1.1   ──VXLAN :4789──▶  tl0 198.19.2.1
//!  kernel:  vx0 198.19.129.1 ──VXLAN :4790──▶  vx0 198.19.129.2
//! ```
//!
//! Each figure is measured for tunloom and then at once for the kernel, so drift on a
//! shared machine hits both alike; the ratio is tunloom / kernel. Everything the lab
//! makes is removed by name or pid on success, failure and Ctrl-C.
//!
//! With [`LabOptions::containers`] both hosts also get a container network (`lab`,
//! 198.19.140.0/24, the same name and subnet on both, each host allocating from its
//! own half as Docker's `IPRange`) through the Container Station API, and one
//! container namespace each, attached to it. Container to container across the hosts
//! is then measured right after the host-to-host figures of the same kind:
//!
//! ```text
//!  ns …-ca eth0 198.19.140.2 ─veth─ host a ─tl0─VXLAN─▶ host b ─tl0─veth─ eth0 198.19.140.128 ns …-cb
//! ```

use crate::netns::Netns;
use crate::testbed::{api_request, iperf_gbps, ping_from, HostSpec, TwoHosts, OVERLAY, UNDERLAY};
use serde::Serialize;
use std::io;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct LabOptions {
    pub duration: u32,
    pub parallel: u32,
    pub workers: usize,
    /// Give each host its own half of the CPUs (as two machines would have).
    pub split_cpus: bool,
    pub offload: bool,
    pub pings: u32,
    /// `key = value` lines added to both daemons' `[dataplane]` section (for A/B
    /// measurements of a dataplane setting).
    pub dataplane: Vec<String>,
    /// Also measure container to container across the hosts, on a container network
    /// made through the Container Station API.
    pub containers: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("iperf3 is not installed: install it with `apt-get install -y iperf3` (or run scripts/setup)")]
    NoIperf,
    #[error("{0}")]
    Unavailable(String),
    #[error("interrupted")]
    Interrupted,
    #[error("{0}")]
    Failed(String),
}

impl From<io::Error> for LabError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::Interrupted {
            LabError::Interrupted
        } else {
            LabError::Failed(e.to_string())
        }
    }
}

/// The figures measured over one path.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq)]
pub struct Figures {
    pub rtt_p50_us: f64,
    pub rtt_p99_us: f64,
    pub tcp_gbps: f64,
    pub tcp_parallel_gbps: f64,
    pub tcp_reverse_gbps: f64,
    /// Received throughput of UDP with 1400-byte datagrams, sent as fast as iperf3
    /// can (`-u -b 0 -l 1400`).
    pub udp_1400_gbps: f64,
    /// Datagrams received per second (thousands) with 64-byte UDP datagrams.
    pub udp_64_kpps: f64,
    /// Ping RTT while the single-stream TCP run fills the path.
    pub rtt_loaded_p50_us: f64,
    pub rtt_loaded_p99_us: f64,
    /// CPU time the whole machine (both hosts, iperf3 included) spent per gigabyte
    /// delivered in the single-stream TCP run: busy ticks of `/proc/stat`.
    pub cpu_s_per_gb: f64,
}

/// What one single-stream TCP run measured, beside its throughput.
struct Loaded {
    gbps: f64,
    retransmits: u64,
    rtt: (f64, f64),
    cpu_s_per_gb: f64,
    /// CPU time of the tunloom daemons (`/proc/<pid>/stat`) per gigabyte.
    daemon_cpu_s_per_gb: f64,
}

/// `x / y` to three decimals; 0 when `y` is 0 (not measured).
fn ratio_of(x: f64, y: f64) -> f64 {
    if y > 0.0 {
        (x / y * 1000.0).round() / 1000.0
    } else {
        0.0
    }
}

impl Figures {
    fn ratio(a: &Figures, b: &Figures) -> Figures {
        let r = ratio_of;
        Figures {
            rtt_p50_us: r(a.rtt_p50_us, b.rtt_p50_us),
            rtt_p99_us: r(a.rtt_p99_us, b.rtt_p99_us),
            tcp_gbps: r(a.tcp_gbps, b.tcp_gbps),
            tcp_parallel_gbps: r(a.tcp_parallel_gbps, b.tcp_parallel_gbps),
            tcp_reverse_gbps: r(a.tcp_reverse_gbps, b.tcp_reverse_gbps),
            udp_1400_gbps: r(a.udp_1400_gbps, b.udp_1400_gbps),
            udp_64_kpps: r(a.udp_64_kpps, b.udp_64_kpps),
            rtt_loaded_p50_us: r(a.rtt_loaded_p50_us, b.rtt_loaded_p50_us),
            rtt_loaded_p99_us: r(a.rtt_loaded_p99_us, b.rtt_loaded_p99_us),
            cpu_s_per_gb: r(a.cpu_s_per_gb, b.cpu_s_per_gb),
        }
    }
}

/// Container to container across the hosts (`--containers`): one namespace per host
/// on one container network, measured as the host-to-host figures of the same name.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq)]
pub struct Containers {
    pub rtt_p50_us: f64,
    pub rtt_p99_us: f64,
    /// One TCP stream, with 100 pings a second beside it (as `tunloom.tcp_gbps`).
    pub tcp_gbps: f64,
    pub rtt_loaded_p50_us: f64,
    pub rtt_loaded_p99_us: f64,
    /// Busy CPU time of the whole machine per gigabyte of the single stream.
    pub cpu_s_per_gb: f64,
    pub tcp_retransmits: u64,
    /// Containers / the kernel's VXLAN between the hosts.
    pub vs_kernel_vxlan: PathRatio,
    /// Containers / tunloom host to host (what the veth and the policy routing add).
    pub vs_tunloom_hosts: PathRatio,
}

/// Ratios of the container figures against one host-to-host path.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq)]
pub struct PathRatio {
    pub rtt_p50_us: f64,
    pub tcp_gbps: f64,
    pub rtt_loaded_p50_us: f64,
    pub cpu_s_per_gb: f64,
}

impl PathRatio {
    fn of(c: &Containers, f: &Figures) -> PathRatio {
        PathRatio {
            rtt_p50_us: ratio_of(c.rtt_p50_us, f.rtt_p50_us),
            tcp_gbps: ratio_of(c.tcp_gbps, f.tcp_gbps),
            rtt_loaded_p50_us: ratio_of(c.rtt_loaded_p50_us, f.rtt_loaded_p50_us),
            cpu_s_per_gb: ratio_of(c.cpu_s_per_gb, f.cpu_s_per_gb),
        }
    }
}

impl Containers {
    /// Fills in the ratios against tunloom host to host (`t`) and the kernel (`k`).
    fn with_ratios(mut self, t: &Figures, k: &Figures) -> Containers {
        self.vs_tunloom_hosts = PathRatio::of(&self, t);
        self.vs_kernel_vxlan = PathRatio::of(&self, k);
        self
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    pub duration_s: u32,
    pub parallel: u32,
    pub workers: usize,
    pub offload: bool,
    pub pings: u32,
    pub cpus: usize,
    pub kernel: String,
    /// Packets tunloom dropped during the run, by reason (only non-zero reasons).
    pub tunloom_drops: serde_json::Value,
    /// TCP retransmissions in the single-stream, parallel and reverse runs.
    pub tunloom_retransmits: [u64; 3],
    pub kernel_retransmits: [u64; 3],
    /// CPU time of the two tunloom daemons themselves per gigabyte in the
    /// single-stream TCP run (the rest of `cpu_s_per_gb` is iperf3 and the kernel).
    pub tunloom_daemon_cpu_s_per_gb: f64,
    /// Dataplane settings given with `--dataplane`.
    pub dataplane: Vec<String>,
    /// The CPUs of host a and host b between which [`handoff_rtt`] was measured.
    pub handoff_cpus: [usize; 2],
    /// [`handoff_rtt`] between those CPUs (p50, p99, µs): what two wake-ups across
    /// the hosts' CPUs cost here, the floor under tunloom's RTT with a CPU per host.
    pub handoff_rtt_us: [f64; 2],
    /// The same between two threads on host a's CPU (p50, p99, µs), for contrast.
    pub same_cpu_handoff_rtt_us: [f64; 2],
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tunloom: Figures,
    pub kernel_vxlan: Figures,
    pub ratio: Figures,
    /// Only with `--containers`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub containers: Option<Containers>,
    pub setup: Setup,
}

impl Report {
    /// The human-readable table.
    pub fn table(&self) -> String {
        type Row = (&'static str, fn(&Figures) -> f64);
        let rows: [Row; 10] = [
            ("ping RTT p50 (us)", |f| f.rtt_p50_us),
            ("ping RTT p99 (us)", |f| f.rtt_p99_us),
            ("TCP, 1 stream (Gbit/s)", |f| f.tcp_gbps),
            ("TCP, parallel (Gbit/s)", |f| f.tcp_parallel_gbps),
            ("TCP, reverse (Gbit/s)", |f| f.tcp_reverse_gbps),
            ("ping p50 under load (us)", |f| f.rtt_loaded_p50_us),
            ("ping p99 under load (us)", |f| f.rtt_loaded_p99_us),
            ("CPU s per GB (1 stream)", |f| f.cpu_s_per_gb),
            ("UDP 1400 B (Gbit/s)", |f| f.udp_1400_gbps),
            ("UDP 64 B (kpackets/s)", |f| f.udp_64_kpps),
        ];
        let mut s = format!(
            "{:<26}{:>12}{:>16}{:>10}\n",
            "figure", "tunloom", "kernel VXLAN", "ratio"
        );
        for (name, get) in rows {
            s.push_str(&format!(
                "{:<26}{:>12.2}{:>16.2}{:>10.3}\n",
                name.replace("parallel", &format!("{} streams", self.setup.parallel)),
                get(&self.tunloom),
                get(&self.kernel_vxlan),
                get(&self.ratio)
            ));
        }
        if let Some(c) = &self.containers {
            s.push_str(&self.containers_table(c));
        }
        s.push_str(&format!(
            "\n{} s per iperf3 run, {} pings, {} tunloom worker(s), offloads {}, {} CPU(s), kernel {}\n",
            self.setup.duration_s,
            self.setup.pings,
            self.setup.workers,
            if self.setup.offload { "on" } else { "off" },
            self.setup.cpus,
            self.setup.kernel
        ));
        if !self.setup.dataplane.is_empty() {
            s.push_str(&format!("dataplane settings: {}\n", self.setup.dataplane.join(", ")));
        }
        s.push_str(&format!(
            "CPU s per GB of the tunloom daemons themselves (1 stream): {:.2}\n",
            self.setup.tunloom_daemon_cpu_s_per_gb
        ));
        s.push_str(&format!(
            "wake-up round trip between CPUs {} and {} (two sleeping threads; the floor under tunloom's RTT with a CPU per host): p50 {:.0} us, p99 {:.0} us; on one CPU: p50 {:.0} us\n",
            self.setup.handoff_cpus[0],
            self.setup.handoff_cpus[1],
            self.setup.handoff_rtt_us[0],
            self.setup.handoff_rtt_us[1],
            self.setup.same_cpu_handoff_rtt_us[0]
        ));
        s.push_str(&format!("tunloom drops during the run: {}\n", self.setup.tunloom_drops));
        s.push_str(&format!(
            "TCP retransmissions (1 stream, parallel, reverse): tunloom {:?}, kernel {:?}\n",
            self.setup.tunloom_retransmits, self.setup.kernel_retransmits
        ));
        s
    }

    /// The container rows beside the host-to-host paths.
    fn containers_table(&self, c: &Containers) -> String {
        type Row = (&'static str, fn(&Containers) -> f64, fn(&Figures) -> f64);
        let rows: [Row; 5] = [
            ("ping RTT p50 (us)", |c| c.rtt_p50_us, |f| f.rtt_p50_us),
            ("ping RTT p99 (us)", |c| c.rtt_p99_us, |f| f.rtt_p99_us),
            ("TCP, 1 stream (Gbit/s)", |c| c.tcp_gbps, |f| f.tcp_gbps),
            (
                "ping p50 under load (us)",
                |c| c.rtt_loaded_p50_us,
                |f| f.rtt_loaded_p50_us,
            ),
            ("CPU s per GB (1 stream)", |c| c.cpu_s_per_gb, |f| f.cpu_s_per_gb),
        ];
        let mut s = format!(
            "\ncontainer to container across the hosts (network {NETWORK}, {SUBNET}):\n{:<26}{:>12}{:>10}{:>14}{:>11}{:>10}\n",
            "figure", "containers", "tunloom", "kernel VXLAN", "/tunloom", "/kernel"
        );
        for (name, own, path) in rows {
            let (t, k) = (path(&self.tunloom), path(&self.kernel_vxlan));
            s.push_str(&format!(
                "{name:<26}{:>12.2}{t:>10.2}{k:>14.2}{:>11.3}{:>10.3}\n",
                own(c),
                ratio_of(own(c), t),
                ratio_of(own(c), k)
            ));
        }
        s.push_str(&format!(
            "TCP retransmissions (containers, 1 stream): {}\n",
            c.tcp_retransmits
        ));
        s
    }
}

const KV: [&str; 2] = ["198.19.129.1", "198.19.129.2"];

/// RTT p50 and p99 (µs) of `count` pings from `from` (host a or a container).
fn rtts(hosts: &TwoHosts, from: &Netns, dst: &str, count: u32) -> Result<(f64, f64), LabError> {
    let mut r = ping_from(from, dst, count, "0.005")?;
    go_on(hosts)?;
    if r.len() < (count as usize) / 2 {
        return Err(LabError::Failed(format!(
            "ping {dst}: only {} of {count} replies",
            r.len()
        )));
    }
    r.sort_by(f64::total_cmp);
    Ok((percentile(&r, 0.50), percentile(&r, 0.99)))
}

/// What handing work from one CPU to a sleeping thread on another costs on this
/// machine, the floor under any dataplane that runs each host's packets on that
/// host's CPUs: the round trip (µs, p50 and p99) of one byte between two threads
/// pinned to `cpus`, over a pair of sockets, each waiting asleep for the other, after
/// `gap` of quiet as between two pings. A ping through tunloom crosses between the
/// hosts' CPUs at least twice, like this round trip; the kernel's VXLAN stays on the
/// sender's CPU.
pub fn handoff_rtt(cpus: [usize; 2], rounds: u32, gap: Duration) -> io::Result<(f64, f64)> {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    fn pin(cpu: usize) -> io::Result<()> {
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu).map_err(io::Error::from)?;
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).map_err(io::Error::from)
    }
    let (mut near, mut far) = UnixStream::pair()?;
    // A stuck peer must not hang the lab: every wait is bounded.
    for s in [&near, &far] {
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
    }
    std::thread::scope(|s| {
        let echo = s.spawn(move || -> io::Result<()> {
            pin(cpus[1])?;
            let mut b = [0u8; 1];
            for _ in 0..rounds {
                far.read_exact(&mut b)?;
                far.write_all(&b)?;
            }
            Ok(())
        });
        // Its own thread, so that the lab's affinity (inherited by everything it
        // starts afterwards) stays as it was. Returning drops `near`, which ends the
        // echo thread's wait whatever happened here.
        let mine = s.spawn(move || -> io::Result<(f64, f64)> {
            pin(cpus[0])?;
            let mut times = Vec::with_capacity(rounds as usize);
            let mut b = [0u8; 1];
            for _ in 0..rounds {
                std::thread::sleep(gap);
                let t0 = Instant::now();
                near.write_all(&b)?;
                near.read_exact(&mut b)?;
                times.push(t0.elapsed().as_secs_f64() * 1e6);
            }
            times.sort_by(f64::total_cmp);
            Ok((percentile(&times, 0.50), percentile(&times, 0.99)))
        });
        let panicked = || io::Error::other("a handoff thread panicked");
        let mine = mine.join().unwrap_or_else(|_| Err(panicked()));
        let echoed = echo.join().unwrap_or_else(|_| Err(panicked()));
        mine.and_then(|r| echoed.map(|()| r))
    })
}

/// Throughput (Gbit/s) and TCP retransmissions of one iperf3 run.
fn gbps(hosts: &TwoHosts, dst: &str, secs: u32, parallel: u32, reverse: bool) -> Result<(f64, u64), LabError> {
    let v = hosts.iperf(0, dst, secs, parallel, reverse)?;
    let g = iperf_gbps(&v).ok_or_else(|| LabError::Failed(format!("iperf3 to {dst} gave no throughput")))?;
    Ok((g, v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0)))
}

/// Ticks of `/proc/stat` and `/proc/<pid>/stat` per second: USER_HZ, which Linux
/// fixes at 100 for what it shows userspace.
const TICKS: f64 = 100.0;

/// Busy ticks of the whole machine so far: user, nice, system, irq and softirq (not
/// idle, iowait, or steal — time the hypervisor gave to others).
fn machine_busy_ticks() -> u64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    [0, 1, 2, 5, 6]
        .iter()
        .map(|&i| fields.get(i).copied().unwrap_or(0))
        .sum()
}

/// User plus system ticks of process `pid` (all its threads) so far.
fn process_ticks(pid: Option<u32>) -> u64 {
    let Some(pid) = pid else { return 0 };
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces; the fields after it are fixed: utime and
    // stime are the 12th and 13th after the closing parenthesis.
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
}

/// A single-stream TCP run from `client` to `dst` in `server` (host a to host b, or
/// container to container) with ping beside it, and the CPU time spent during it.
fn loaded(hosts: &TwoHosts, client: &Netns, server: &Netns, dst: &str, secs: u32) -> Result<Loaded, LabError> {
    // 100 pings a second, from 0.3 s after iperf3 starts (connected and sending) to
    // about 0.5 s before it ends.
    let pings = (secs * 100).saturating_sub(80).max(10);
    let daemons = || process_ticks(hosts.pid(0)) + process_ticks(hosts.pid(1));
    let (m0, d0) = (machine_busy_ticks(), daemons());
    let (run, rtt) = std::thread::scope(|s| {
        let pinger = s.spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            ping_from(client, dst, pings, "0.01")
        });
        let run = crate::testbed::iperf_between(client, server, dst, secs, &["-P", "1"], hosts.stop_flag());
        (run, pinger.join())
    });
    let (m1, d1) = (machine_busy_ticks(), daemons());
    let v = run?;
    let mut rtt = rtt.map_err(|_| LabError::Failed("the ping thread panicked".into()))??;
    rtt.sort_by(f64::total_cmp);
    let gbps = iperf_gbps(&v).ok_or_else(|| LabError::Failed(format!("iperf3 to {dst} gave no throughput")))?;
    let gb = v["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0) / 1e9;
    let per_gb = |ticks: u64| {
        if gb > 0.0 {
            (ticks as f64 / TICKS / gb * 1000.0).round() / 1000.0
        } else {
            0.0
        }
    };
    Ok(Loaded {
        gbps,
        retransmits: v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
        rtt: (percentile(&rtt, 0.50), percentile(&rtt, 0.99)),
        cpu_s_per_gb: per_gb(m1.saturating_sub(m0)),
        daemon_cpu_s_per_gb: per_gb(d1.saturating_sub(d0)),
    })
}

/// UDP as fast as the sender goes: received Gbit/s and thousands of datagrams a second.
fn udp(hosts: &TwoHosts, dst: &str, secs: u32, len: u32) -> Result<(f64, f64), LabError> {
    let v = hosts.iperf_udp(0, dst, secs, len)?;
    let r = &v["end"]["sum_received"];
    let got = r["packets"].as_f64().unwrap_or(0.0) - r["lost_packets"].as_f64().unwrap_or(0.0);
    let seconds = r["seconds"].as_f64().unwrap_or(0.0);
    let kpps = if seconds > 0.0 {
        (got.max(0.0) / seconds / 1e3 * 10.0).round() / 10.0
    } else {
        0.0
    };
    Ok((iperf_gbps(&v).unwrap_or(0.0), kpps))
}

/// Ctrl-C is seen between steps; what the lab made is removed when its `TwoHosts`
/// drops.
fn go_on(hosts: &TwoHosts) -> Result<(), LabError> {
    if hosts.interrupted() {
        Err(LabError::Interrupted)
    } else {
        Ok(())
    }
}

/// The container network `--containers` makes on both hosts.
const NETWORK: &str = "lab";
const SUBNET: &str = "198.19.140.0/24";
/// Each host allocates from its own half (Docker's `IPRange`).
const RANGE: [&str; 2] = ["198.19.140.0/25", "198.19.140.128/25"];
const CS: &str = "/container-station/api/v1/networks";

/// One container namespace per host, attached to [`NETWORK`]; deleted on drop (which
/// takes its veth, and so the attachment's host end, with it).
struct Attached {
    ns: [Netns; 2],
    /// Their addresses on the network.
    addr: [String; 2],
}

/// A Container Station request to host `i` that must answer 200; its JSON body.
fn station(
    hosts: &TwoHosts,
    i: usize,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value, LabError> {
    let (status, bytes) = api_request(
        &hosts.ns(i).name,
        6786,
        method,
        path,
        body.map(|b| b.to_string().into_bytes()),
        &[("Content-Type", "application/json")],
    )?;
    if status != 200 {
        return Err(LabError::Failed(format!(
            "{method} {path} on host {i}: HTTP {status}: {}\n{}",
            String::from_utf8_lossy(&bytes),
            hosts.log(i)
        )));
    }
    serde_json::from_slice(&bytes).map_err(|e| LabError::Failed(format!("{method} {path}: {e}")))
}

/// Makes [`NETWORK`] on both hosts, one container namespace per host attached to it,
/// and waits until the first container reaches the second.
fn attach_containers(hosts: &TwoHosts) -> Result<Attached, LabError> {
    let pid = std::process::id();
    let ns = [
        Netns::create(&format!("tl-lab-{pid}-ca"))?,
        Netns::create(&format!("tl-lab-{pid}-cb"))?,
    ];
    let mut addr = [String::new(), String::new()];
    for i in 0..2 {
        let config = serde_json::json!({"Subnet": SUBNET, "IPRange": RANGE[i]});
        station(
            hosts,
            i,
            "POST",
            CS,
            Some(serde_json::json!({"name": NETWORK, "ipam": {"Config": [config]}})),
        )?;
        station(
            hosts,
            i,
            "POST",
            &format!("{CS}/{NETWORK}/connect"),
            Some(serde_json::json!({"container": ns[i].name})),
        )?;
        let net = station(hosts, i, "GET", &format!("{CS}/{NETWORK}"), None)?;
        addr[i] = container_address(&net, &ns[i].name)
            .ok_or_else(|| LabError::Failed(format!("{} has no address on {NETWORK}: {net}", ns[i].name)))?;
    }
    // Host b's range reaches host a with its next hello.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ping_from(&ns[0], &addr[1], 1, "0.2")?.is_empty() {
        go_on(hosts)?;
        if Instant::now() > deadline {
            return Err(LabError::Failed(format!(
                "container {} does not reach {} on host b\n--- a:\n{}\n--- b:\n{}",
                ns[0].name,
                addr[1],
                hosts.log(0),
                hosts.log(1)
            )));
        }
    }
    Ok(Attached { ns, addr })
}

/// A container's address (without its prefix length) from a Container Station
/// network document (`Containers.<name>.IPv4Address`, "198.19.140.2/24").
fn container_address(network: &serde_json::Value, container: &str) -> Option<String> {
    let a = network["Containers"][container]["IPv4Address"].as_str()?;
    let ip = a.split('/').next()?;
    ip.parse::<std::net::Ipv4Addr>().ok().map(|ip| ip.to_string())
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    (sorted[i.min(sorted.len() - 1)] * 10.0).round() / 10.0
}

fn present(prog: &str, arg: &str) -> bool {
    std::process::Command::new(prog)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Runs the whole lab. `exe` is the tunloom binary to start in each namespace.
pub fn run(o: &LabOptions, exe: &Path, stop: Arc<AtomicBool>) -> Result<Report, LabError> {
    if !present("iperf3", "--version") {
        return Err(LabError::NoIperf);
    }
    if !present("ping", "-V") {
        return Err(LabError::Unavailable(
            "ping is not installed: install it with `apt-get install -y iputils-ping`".into(),
        ));
    }
    crate::netns::available().map_err(|e| LabError::Unavailable(format!("the lab {e}")))?;
    let spec = HostSpec {
        workers: o.workers,
        cpus: if o.split_cpus {
            let all = crate::netns::allowed_cpus();
            let half = all.len().div_ceil(2);
            [all[..half].to_vec(), all[all.len() - half..].to_vec()]
        } else {
            [Vec::new(), Vec::new()]
        },
        offload: o.offload,
        dataplane: o.dataplane.join("\n"),
        ..HostSpec::default()
    };
    let spec = if o.containers {
        // Container networks come from a pool beside the Weave range, which must not
        // overlap it: the range keeps the lower half (both hosts' blocks are in it).
        HostSpec {
            ipam_range: "198.19.0.0/17".into(),
            extra: "[networks]\npool = \"198.19.128.0/17\"\n".into(),
            ..spec
        }
    } else {
        spec
    };
    let mut hosts = TwoHosts::create("lab", exe, &spec, stop)?;
    hosts.start(0)?;
    hosts.start(1)?;
    hosts.wait_peers("up", Duration::from_secs(20))?;
    go_on(&hosts)?;
    // Declared after the hosts, so dropped (namespaces deleted) before them.
    let containers = if o.containers {
        Some(attach_containers(&hosts)?)
    } else {
        None
    };
    go_on(&hosts)?;
    // The kernel's VXLAN between the same namespaces, over the same veth.
    for (i, dev) in [(0usize, "tlva"), (1, "tlvb")] {
        let ns = hosts.ns(i);
        ns.ip(&[
            "link",
            "add",
            "vx0",
            "type",
            "vxlan",
            "id",
            "4242",
            "local",
            UNDERLAY[i],
            "remote",
            UNDERLAY[1 - i],
            "dstport",
            "4790",
            "dev",
            dev,
        ])?;
        ns.ip(&["link", "set", "vx0", "mtu", "1450"])?;
        ns.ip(&["addr", "add", &format!("{}/24", KV[i]), "dev", "vx0"])?;
        ns.ip(&["link", "set", "vx0", "up"])?;
    }
    let (tl, kv) = (OVERLAY[1], KV[1]);
    let mut t = Figures::default();
    let mut k = Figures::default();
    // Warm both paths (ARP on the kernel VXLAN, first packets) before timing.
    let _ = hosts.ping(0, tl, 5, "0.01");
    let _ = hosts.ping(0, kv, 5, "0.01");
    go_on(&hosts)?;
    (t.rtt_p50_us, t.rtt_p99_us) = rtts(&hosts, hosts.ns(0), tl, o.pings)?;
    go_on(&hosts)?;
    (k.rtt_p50_us, k.rtt_p99_us) = rtts(&hosts, hosts.ns(0), kv, o.pings)?;
    let all = crate::netns::allowed_cpus();
    let handoff_cpus = match &spec.cpus {
        [a, b] if !a.is_empty() && !b.is_empty() => [a[0], b[0]],
        _ => [all.first().copied().unwrap_or(0), all.last().copied().unwrap_or(0)],
    };
    let gap = Duration::from_millis(5);
    let handoff = handoff_rtt(handoff_cpus, 200, gap)?;
    let same_cpu = handoff_rtt([handoff_cpus[0]; 2], 200, gap)?;
    let mut c = Containers::default();
    if let Some(ct) = &containers {
        go_on(&hosts)?;
        (c.rtt_p50_us, c.rtt_p99_us) = rtts(&hosts, &ct.ns[0], &ct.addr[1], o.pings)?;
    }
    let mut retransmits = [[0u64; 3]; 2];
    let mut daemon_cpu = 0.0;
    for (dst, f, re) in [(tl, &mut t, 0usize), (kv, &mut k, 1)] {
        let l = loaded(&hosts, hosts.ns(0), hosts.ns(1), dst, o.duration)?;
        (f.tcp_gbps, retransmits[re][0]) = (l.gbps, l.retransmits);
        (f.rtt_loaded_p50_us, f.rtt_loaded_p99_us) = l.rtt;
        f.cpu_s_per_gb = l.cpu_s_per_gb;
        if re == 0 {
            daemon_cpu = l.daemon_cpu_s_per_gb;
        }
        go_on(&hosts)?;
    }
    if let Some(ct) = &containers {
        let l = loaded(&hosts, &ct.ns[0], &ct.ns[1], &ct.addr[1], o.duration)?;
        (c.tcp_gbps, c.tcp_retransmits, c.cpu_s_per_gb) = (l.gbps, l.retransmits, l.cpu_s_per_gb);
        (c.rtt_loaded_p50_us, c.rtt_loaded_p99_us) = l.rtt;
        go_on(&hosts)?;
    }
    (t.tcp_parallel_gbps, retransmits[0][1]) = gbps(&hosts, tl, o.duration, o.parallel, false)?;
    (k.tcp_parallel_gbps, retransmits[1][1]) = gbps(&hosts, kv, o.duration, o.parallel, false)?;
    (t.tcp_reverse_gbps, retransmits[0][2]) = gbps(&hosts, tl, o.duration, 1, true)?;
    (k.tcp_reverse_gbps, retransmits[1][2]) = gbps(&hosts, kv, o.duration, 1, true)?;
    go_on(&hosts)?;
    (t.udp_1400_gbps, _) = udp(&hosts, tl, o.duration, 1400)?;
    (k.udp_1400_gbps, _) = udp(&hosts, kv, o.duration, 1400)?;
    go_on(&hosts)?;
    (_, t.udp_64_kpps) = udp(&hosts, tl, o.duration, 64)?;
    (_, k.udp_64_kpps) = udp(&hosts, kv, o.duration, 64)?;
    go_on(&hosts)?;
    let mut drops = serde_json::Map::new();
    let mut workers = o.workers;
    for i in 0..2 {
        if let Ok(s) = hosts.stats(i) {
            workers = s["dataplane"]["workers"].as_u64().map_or(workers, |w| w as usize);
            for (reason, n) in s["total"]["drops"].as_object().into_iter().flatten() {
                let n = n.as_u64().unwrap_or(0);
                if n > 0 {
                    let e = drops.entry(reason.clone()).or_insert(serde_json::json!(0));
                    *e = serde_json::json!(e.as_u64().unwrap_or(0) + n);
                }
            }
        }
    }
    Ok(Report {
        ratio: Figures::ratio(&t, &k),
        containers: containers.is_some().then(|| c.with_ratios(&t, &k)),
        tunloom: t,
        kernel_vxlan: k,
        setup: Setup {
            duration_s: o.duration,
            parallel: o.parallel,
            workers,
            offload: o.offload,
            pings: o.pings,
            cpus: crate::netns::allowed_cpus().len(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            tunloom_drops: serde_json::Value::Object(drops),
            tunloom_retransmits: retransmits[0],
            kernel_retransmits: retransmits[1],
            tunloom_daemon_cpu_s_per_gb: daemon_cpu,
            dataplane: o.dataplane.clone(),
            handoff_cpus,
            handoff_rtt_us: [handoff.0, handoff.1],
            same_cpu_handoff_rtt_us: [same_cpu.0, same_cpu.1],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handoff_round_trips_are_timed_on_the_given_cpus() {
        let cpus = crate::netns::allowed_cpus();
        let pair = [cpus[0], cpus[cpus.len() - 1]];
        let (p50, p99) = handoff_rtt(pair, 20, Duration::from_millis(1)).unwrap();
        assert!(p50 > 0.0 && p99 >= p50, "{p50} {p99}");
        // The caller's own affinity is left alone.
        assert_eq!(crate::netns::allowed_cpus(), cpus);
        // A CPU that does not exist is an error, not a hang.
        assert!(handoff_rtt([cpus[0], 100_000], 5, Duration::ZERO).is_err());
    }

    #[test]
    fn ratios_and_percentiles() {
        let t = Figures {
            rtt_p50_us: 60.0,
            tcp_gbps: 6.0,
            ..Default::default()
        };
        let k = Figures {
            rtt_p50_us: 30.0,
            tcp_gbps: 12.0,
            ..Default::default()
        };
        let r = Figures::ratio(&t, &k);
        assert_eq!((r.rtt_p50_us, r.tcp_gbps, r.tcp_reverse_gbps), (2.0, 0.5, 0.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.5), 3.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn container_addresses_are_read_from_the_network_document() {
        let net = serde_json::json!({"Name": "lab", "Containers": {
            "tl-lab-1-ca": {"Name": "tl-lab-1-ca", "IPv4Address": "198.19.140.2/24"},
            "odd": {"IPv4Address": "not-an-address/24"}
        }});
        assert_eq!(container_address(&net, "tl-lab-1-ca").as_deref(), Some("198.19.140.2"));
        assert_eq!(container_address(&net, "odd"), None);
        assert_eq!(container_address(&net, "absent"), None);
        assert_eq!(container_address(&serde_json::json!({}), "x"), None);
    }

    fn report(containers: Option<Containers>) -> Report {
        let t = Figures {
            rtt_p50_us: 200.0,
            tcp_gbps: 6.0,
            cpu_s_per_gb: 2.0,
            ..Default::default()
        };
        let k = Figures {
            rtt_p50_us: 25.0,
            tcp_gbps: 10.0,
            cpu_s_per_gb: 1.0,
            ..Default::default()
        };
        Report {
            ratio: Figures::ratio(&t, &k),
            containers: containers.map(|c| c.with_ratios(&t, &k)),
            tunloom: t,
            kernel_vxlan: k,
            setup: Setup {
                duration_s: 1,
                parallel: 2,
                workers: 1,
                offload: true,
                pings: 20,
                cpus: 2,
                kernel: "6.18".into(),
                tunloom_drops: serde_json::json!({}),
                tunloom_retransmits: [0; 3],
                kernel_retransmits: [0; 3],
                tunloom_daemon_cpu_s_per_gb: 1.3,
                dataplane: Vec::new(),
                handoff_cpus: [0, 1],
                handoff_rtt_us: [90.0, 120.0],
                same_cpu_handoff_rtt_us: [10.0, 15.0],
            },
        }
    }

    #[test]
    fn container_figures_sit_beside_both_paths_in_table_and_json() {
        let c = Containers {
            rtt_p50_us: 250.0,
            tcp_gbps: 4.5,
            cpu_s_per_gb: 2.5,
            tcp_retransmits: 7,
            ..Default::default()
        };
        let r = report(Some(c));
        let got = r.containers.unwrap();
        assert_eq!(
            (got.vs_tunloom_hosts.tcp_gbps, got.vs_kernel_vxlan.tcp_gbps),
            (0.75, 0.45)
        );
        assert_eq!(
            (got.vs_tunloom_hosts.rtt_p50_us, got.vs_kernel_vxlan.rtt_p50_us),
            (1.25, 10.0)
        );
        assert_eq!(got.vs_kernel_vxlan.rtt_loaded_p50_us, 0.0, "not measured: no ratio");
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["containers"]["tcp_gbps"], 4.5);
        assert_eq!(j["containers"]["rtt_p50_us"], 250.0);
        assert_eq!(j["containers"]["vs_kernel_vxlan"]["tcp_gbps"], 0.45);
        assert_eq!(j["containers"]["vs_tunloom_hosts"]["cpu_s_per_gb"], 1.25);
        let table = r.table();
        assert!(
            table.contains("container to container across the hosts (network lab, 198.19.140.0/24)"),
            "{table}"
        );
        let tcp = table
            .lines()
            .filter(|l| l.starts_with("TCP, 1 stream (Gbit/s)"))
            .nth(1)
            .expect("a container TCP row");
        let cells: Vec<&str> = tcp.split_whitespace().collect();
        assert_eq!(
            &cells[cells.len() - 5..],
            ["4.50", "6.00", "10.00", "0.750", "0.450"],
            "{tcp}"
        );
        assert!(
            table.contains("TCP retransmissions (containers, 1 stream): 7"),
            "{table}"
        );

        let plain = report(None);
        assert!(serde_json::to_value(&plain).unwrap().get("containers").is_none());
        assert!(!plain.table().contains("container"));
    }
}
