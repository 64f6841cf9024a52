//! `tunloom lab`: a two-host overlay in network namespaces, measured with ping and
//! iperf3, side by side with the kernel's own VXLAN over the same veth.
//!
//! ```text
//!  ns tl-lab-<pid>-a                                   ns tl-lab-<pid>-b
//!  tunloom: tl0 198.19.1.1 ──VXLAN :4789──┐    ┌──── tunloom: tl0 198.19.2.1
//!  kernel:  vx0 198.19.129.1 ─VXLAN :4790─┤veth├──── kernel:  vx0 198.19.129.2
//!                          tlva 198.18.0.1└────┘tlvb 198.18.0.2
//! ```
//!
//! Each figure is measured for tunloom and then at once for the kernel, so drift on a
//! shared machine hits both alike; the ratio is tunloom / kernel. Everything the lab
//! makes (namespaces, and with them every device; processes it started; its temporary
//! directory) is removed by name or pid on success, failure and Ctrl-C.

use crate::netns::{self, Netns};
use serde::Serialize;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct LabOptions {
    pub duration: u32,
    pub parallel: u32,
    pub workers: usize,
    pub offload: bool,
    pub pings: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("iperf3 is not installed: install it with `apt-get install -y iperf3` (or run scripts/setup)")]
    NoIperf,
    #[error("the lab {0}")]
    Unavailable(String),
    #[error("interrupted")]
    Interrupted,
    #[error("{0}")]
    Failed(String),
}

impl From<io::Error> for LabError {
    fn from(e: io::Error) -> Self {
        LabError::Failed(e.to_string())
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
        let rows: [Row; 5] = [
            ("ping RTT p50 (us)", |f| f.rtt_p50_us),
            ("ping RTT p99 (us)", |f| f.rtt_p99_us),
            ("TCP, 1 stream (Gbit/s)", |f| f.tcp_gbps),
            ("TCP, parallel (Gbit/s)", |f| f.tcp_parallel_gbps),
            ("TCP, reverse (Gbit/s)", |f| f.tcp_reverse_gbps),
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
        s.push_str(&format!(
            "tunloom drops during the run: {}\n",
            self.setup.tunloom_drops
        ));
        s
    }
}

const TL_A: &str = "198.19.1.1";
const TL_B: &str = "198.19.2.1";
const KV_A: &str = "198.19.129.1";
const KV_B: &str = "198.19.129.2";

/// A process the lab started; terminated (then killed) by pid when dropped.
struct Proc {
    child: Child,
    what: String,
}

impl Proc {
    fn stop(&mut self, grace: Duration) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = crate::sys::signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        log::warn!("lab: {} did not stop in {grace:?}; killed", self.what);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// The lab's temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Lab {
    // Field order is drop order: processes stop before namespaces go.
    daemons: Vec<Proc>,
    a: Netns,
    b: Netns,
    dir: TempDir,
    stop: Arc<AtomicBool>,
}

fn node_config(
    name: &str,
    underlay: &str,
    peer: &str,
    prefix: &str,
    addr: &str,
    o: &LabOptions,
) -> String {
    format!(
        r#"# written by tunloom lab
[node]
name = "{name}"
[dataplane]
workers = {workers}
bind = "{underlay}"
offload = {off}
udp_gso = {off}
udp_gro = {off}
[overlay]
routes = ["198.19.0.0/17"]
announce = ["{prefix}"]
expose = ["{addr}/32"]
[control]
hello_interval_ms = 200
[[peers]]
address = "{peer}"
"#,
        workers = o.workers,
        off = o.offload,
    )
}

/// Fetches `/api/v1/stats` from the daemon in namespace `ns`.
pub fn daemon_stats(ns: &str) -> io::Result<serde_json::Value> {
    let ns = ns.to_string();
    std::thread::spawn(move || -> io::Result<serde_json::Value> {
        crate::sys::enter_netns(&ns)?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(3)))
            .build()
            .into();
        agent
            .get("http://127.0.0.1:6786/api/v1/stats")
            .call()
            .map_err(io::Error::other)?
            .body_mut()
            .read_json::<serde_json::Value>()
            .map_err(io::Error::other)
    })
    .join()
    .map_err(|_| io::Error::other("stats thread panicked"))?
}

impl Lab {
    fn check(&self) -> Result<(), LabError> {
        if self.stop.load(Ordering::Relaxed) {
            Err(LabError::Interrupted)
        } else {
            Ok(())
        }
    }

    fn start(o: &LabOptions, exe: &Path, stop: Arc<AtomicBool>) -> Result<Lab, LabError> {
        let pid = std::process::id();
        let dir = TempDir(std::env::temp_dir().join(format!("tunloom-lab-{pid}")));
        std::fs::create_dir_all(&dir.0)?;
        let a = Netns::create(&format!("tl-lab-{pid}-a"))?;
        let b = Netns::create(&format!("tl-lab-{pid}-b"))?;
        netns::veth(&a, "tlva", "198.18.0.1/24", &b, "tlvb", "198.18.0.2/24")?;
        let mut lab = Lab {
            daemons: Vec::new(),
            a,
            b,
            dir,
            stop,
        };
        for (ns, name, under, peer, prefix, addr) in [
            (
                &lab.a,
                "lab-a",
                "198.18.0.1",
                "198.18.0.2",
                "198.19.1.0/24",
                TL_A,
            ),
            (
                &lab.b,
                "lab-b",
                "198.18.0.2",
                "198.18.0.1",
                "198.19.2.0/24",
                TL_B,
            ),
        ] {
            let cfg = lab.dir.0.join(format!("{name}.toml"));
            std::fs::write(&cfg, node_config(name, under, peer, prefix, addr, o))?;
            let log = std::fs::File::create(lab.dir.0.join(format!("{name}.log")))?;
            let state = lab.dir.0.join(name);
            let child = ns
                .command(
                    exe.to_str().unwrap_or("tunloom"),
                    &[
                        "run",
                        "-c",
                        cfg.to_str().unwrap_or(""),
                        "--state-dir",
                        state.to_str().unwrap_or(""),
                    ],
                )
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| LabError::Failed(format!("cannot start {}: {e}", exe.display())))?;
            lab.daemons.push(Proc {
                child,
                what: format!("tunloom {name}"),
            });
        }
        lab.wait_peers_up()?;
        // The kernel's VXLAN between the same namespaces, over the same veth.
        for (ns, local, remote, dev, addr) in [
            (&lab.a, "198.18.0.1", "198.18.0.2", "tlva", KV_A),
            (&lab.b, "198.18.0.2", "198.18.0.1", "tlvb", KV_B),
        ] {
            ns.ip(&[
                "link", "add", "vx0", "type", "vxlan", "id", "4242", "local", local, "remote",
                remote, "dstport", "4790", "dev", dev,
            ])?;
            ns.ip(&["link", "set", "vx0", "mtu", "1450"])?;
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "vx0"])?;
            ns.ip(&["link", "set", "vx0", "up"])?;
        }
        Ok(lab)
    }

    fn daemon_log(&self, name: &str) -> String {
        let text =
            std::fs::read_to_string(self.dir.0.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn wait_peers_up(&mut self) -> Result<(), LabError> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            self.check()?;
            for (d, name) in self.daemons.iter_mut().zip(["lab-a", "lab-b"]) {
                if let Ok(Some(status)) = d.child.try_wait() {
                    let log = std::fs::read_to_string(self.dir.0.join(format!("{name}.log")))
                        .unwrap_or_default();
                    return Err(LabError::Failed(format!(
                        "tunloom {name} exited ({status}):\n{log}"
                    )));
                }
            }
            let up = |ns: &Netns| {
                daemon_stats(&ns.name).ok().is_some_and(|s| {
                    s["peers"]
                        .as_array()
                        .is_some_and(|p| p.iter().any(|p| p["state"] == "up"))
                })
            };
            if up(&self.a) && up(&self.b) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(LabError::Failed(format!(
                    "the two tunloom daemons did not see each other within 20 s\n--- lab-a log:\n{}\n--- lab-b log:\n{}",
                    self.daemon_log("lab-a"),
                    self.daemon_log("lab-b")
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn ping(&self, dst: &str, count: u32) -> Result<(f64, f64), LabError> {
        self.check()?;
        let n = count.to_string();
        let out = self.a.run(
            "ping",
            &["-n", "-c", &n, "-i", "0.005", "-W", "1", dst],
            Duration::from_secs(60),
        )?;
        let mut rtts = parse_ping(&String::from_utf8_lossy(&out.stdout));
        if rtts.len() < (count as usize) / 2 {
            return Err(LabError::Failed(format!(
                "ping {dst}: only {} of {count} replies",
                rtts.len()
            )));
        }
        rtts.sort_by(f64::total_cmp);
        Ok((percentile(&rtts, 0.50), percentile(&rtts, 0.99)))
    }

    fn iperf(&self, dst: &str, secs: u32, parallel: u32, reverse: bool) -> Result<f64, LabError> {
        self.check()?;
        let mut server = Proc {
            child: self
                .b
                .command("iperf3", &["-s", "-1", "-B", dst, "-p", "5201"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
            what: "iperf3 server".into(),
        };
        let t = secs.to_string();
        let p = parallel.to_string();
        let mut args = vec![
            "-c",
            dst,
            "-p",
            "5201",
            "-t",
            &t,
            "-P",
            &p,
            "-J",
            "--connect-timeout",
            "2000",
        ];
        if reverse {
            args.push("-R");
        }
        let limit = Duration::from_secs(u64::from(secs) + 20);
        let mut last = String::new();
        for _attempt in 0..10 {
            self.check()?;
            match self.a.run("iperf3", &args, limit) {
                Ok(out) => {
                    let text = String::from_utf8_lossy(&out.stdout);
                    if let Some(gbps) = parse_iperf(&text) {
                        server.stop(Duration::from_secs(3));
                        return Ok(gbps);
                    }
                    // iperf3 -J reports "unable to connect" with exit status 0.
                    last = serde_json::from_str::<serde_json::Value>(&text)
                        .ok()
                        .and_then(|v| v["error"].as_str().map(str::to_string))
                        .unwrap_or_else(|| text.chars().take(300).collect());
                }
                Err(e) => last = e.to_string(),
            }
            // The server may not be listening yet.
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(LabError::Failed(format!("iperf3 to {dst} failed: {last}")))
    }
}

/// RTTs in microseconds from ping's per-reply lines (`time=0.052 ms`).
pub fn parse_ping(out: &str) -> Vec<f64> {
    out.lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next())
        .filter_map(|t| t.parse::<f64>().ok())
        .map(|ms| ms * 1000.0)
        .collect()
}

/// Received throughput in Gbit/s from iperf3's `-J` output.
pub fn parse_iperf(json: &str) -> Option<f64> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let bps = v["end"]["sum_received"]["bits_per_second"].as_f64()?;
    Some((bps / 1e9 * 1000.0).round() / 1000.0)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    (sorted[i.min(sorted.len() - 1)] * 10.0).round() / 10.0
}

/// Runs the whole lab. `exe` is the tunloom binary to start in each namespace.
pub fn run(o: &LabOptions, exe: &Path, stop: Arc<AtomicBool>) -> Result<Report, LabError> {
    if std::process::Command::new("iperf3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        return Err(LabError::NoIperf);
    }
    netns::available().map_err(LabError::Unavailable)?;
    if std::process::Command::new("ping")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        return Err(LabError::Failed(
            "ping is not installed: `apt-get install -y iputils-ping`".into(),
        ));
    }
    let lab = Lab::start(o, exe, stop)?;
    let mut t = Figures::default();
    let mut k = Figures::default();
    // Warm both paths (ARP on the kernel VXLAN, peers' first packets) before timing.
    let _ = lab.ping(TL_B, 5);
    let _ = lab.ping(KV_B, 5);
    (t.rtt_p50_us, t.rtt_p99_us) = lab.ping(TL_B, o.pings)?;
    (k.rtt_p50_us, k.rtt_p99_us) = lab.ping(KV_B, o.pings)?;
    t.tcp_gbps = lab.iperf(TL_B, o.duration, 1, false)?;
    k.tcp_gbps = lab.iperf(KV_B, o.duration, 1, false)?;
    t.tcp_parallel_gbps = lab.iperf(TL_B, o.duration, o.parallel, false)?;
    k.tcp_parallel_gbps = lab.iperf(KV_B, o.duration, o.parallel, false)?;
    t.tcp_reverse_gbps = lab.iperf(TL_B, o.duration, 1, true)?;
    k.tcp_reverse_gbps = lab.iperf(KV_B, o.duration, 1, true)?;
    let mut drops = serde_json::Map::new();
    for ns in [&lab.a, &lab.b] {
        if let Ok(s) = daemon_stats(&ns.name) {
            if let Some(d) = s["total"]["drops"].as_object() {
                for (reason, n) in d {
                    let n = n.as_u64().unwrap_or(0);
                    if n > 0 {
                        let e = drops.entry(reason.clone()).or_insert(serde_json::json!(0));
                        *e = serde_json::json!(e.as_u64().unwrap_or(0) + n);
                    }
                }
            }
        }
    }
    let workers = daemon_stats(&lab.a.name)
        .ok()
        .and_then(|s| s["dataplane"]["workers"].as_u64())
        .unwrap_or(o.workers as u64) as usize;
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
            cpus: crate::sys::allowed_cpus().len(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            tunloom_drops: serde_json::Value::Object(drops),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_lines_are_read_in_microseconds() {
        let out = "PING 198.19.2.1 (198.19.2.1) 56(84) bytes of data.\n64 bytes from 198.19.2.1: icmp_seq=1 ttl=63 time=0.052 ms\n64 bytes from 198.19.2.1: icmp_seq=2 ttl=63 time=1.10 ms\n\n--- 198.19.2.1 ping statistics ---\nrtt min/avg/max/mdev = 0.052/0.576/1.100/0.524 ms\n";
        assert_eq!(parse_ping(out), vec![52.0, 1100.0]);
    }

    #[test]
    fn iperf_json_is_read_in_gbps() {
        let j = r#"{"end":{"sum_received":{"bits_per_second":5234000000.0}}}"#;
        assert_eq!(parse_iperf(j), Some(5.234));
        assert_eq!(parse_iperf("{}"), None);
        assert_eq!(parse_iperf("garbage"), None);
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
        assert_eq!(
            (r.rtt_p50_us, r.tcp_gbps, r.tcp_reverse_gbps),
            (2.0, 0.5, 0.0)
        );
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.5), 3.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
