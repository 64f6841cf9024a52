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

use crate::testbed::{iperf_gbps, HostSpec, TwoHosts, OVERLAY, UNDERLAY};
use serde::Serialize;
use std::io;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

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

impl Figures {
    fn ratio(a: &Figures, b: &Figures) -> Figures {
        let r = |x: f64, y: f64| {
            if y > 0.0 {
                (x / y * 1000.0).round() / 1000.0
            } else {
                0.0
            }
        };
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
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tunloom: Figures,
    pub kernel_vxlan: Figures,
    pub ratio: Figures,
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
        s.push_str(&format!("tunloom drops during the run: {}\n", self.setup.tunloom_drops));
        s.push_str(&format!(
            "TCP retransmissions (1 stream, parallel, reverse): tunloom {:?}, kernel {:?}\n",
            self.setup.tunloom_retransmits, self.setup.kernel_retransmits
        ));
        s
    }
}

const KV: [&str; 2] = ["198.19.129.1", "198.19.129.2"];

fn rtts(hosts: &TwoHosts, dst: &str, count: u32) -> Result<(f64, f64), LabError> {
    let mut r = hosts.ping(0, dst, count, "0.005")?;
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

/// A single-stream TCP run with ping beside it, and the CPU time spent during it.
fn loaded(hosts: &TwoHosts, dst: &str, secs: u32) -> Result<Loaded, LabError> {
    // 100 pings a second, from 0.3 s after iperf3 starts (connected and sending) to
    // about 0.5 s before it ends.
    let pings = (secs * 100).saturating_sub(80).max(10);
    let daemons = || process_ticks(hosts.pid(0)) + process_ticks(hosts.pid(1));
    let (m0, d0) = (machine_busy_ticks(), daemons());
    let (run, rtt) = std::thread::scope(|s| {
        let pinger = s.spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            hosts.ping(0, dst, pings, "0.01")
        });
        let run = hosts.iperf(0, dst, secs, 1, false);
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
    let mut hosts = TwoHosts::create("lab", exe, &spec, stop)?;
    hosts.start(0)?;
    hosts.start(1)?;
    hosts.wait_peers("up", Duration::from_secs(20))?;
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
    (t.rtt_p50_us, t.rtt_p99_us) = rtts(&hosts, tl, o.pings)?;
    go_on(&hosts)?;
    (k.rtt_p50_us, k.rtt_p99_us) = rtts(&hosts, kv, o.pings)?;
    let mut retransmits = [[0u64; 3]; 2];
    let mut daemon_cpu = 0.0;
    for (dst, f, re) in [(tl, &mut t, 0usize), (kv, &mut k, 1)] {
        let l = loaded(&hosts, dst, o.duration)?;
        (f.tcp_gbps, retransmits[re][0]) = (l.gbps, l.retransmits);
        (f.rtt_loaded_p50_us, f.rtt_loaded_p99_us) = l.rtt;
        f.cpu_s_per_gb = l.cpu_s_per_gb;
        if re == 0 {
            daemon_cpu = l.daemon_cpu_s_per_gb;
        }
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
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
