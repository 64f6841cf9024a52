//! `tunloom lab`, the main job, end to end but short: both paths measured (and, with
//! `--containers`, container to container across the hosts), the JSON document
//! complete, and nothing left behind — after a run and after Ctrl-C.
//! Needs root, iperf3 and ping (ignored without root unless TUNLOOM_REQUIRE_NETNS=1).

mod common;

use common::Needs;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Namespaces and temporary directories a lab run with this pid would leave.
fn leftovers(pid: u32) -> Vec<String> {
    let mut left = Vec::new();
    let prefix = format!("tl-lab-{pid}-");
    for e in std::fs::read_dir("/run/netns").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) {
            left.push(name);
        }
    }
    let dir = std::env::temp_dir().join(format!("tunloom-lab-{pid}"));
    if dir.exists() {
        left.push(dir.display().to_string());
    }
    // What tunloom writes for an attached container (`--containers`).
    for e in std::fs::read_dir("/etc/netns").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) {
            left.push(e.path().display().to_string());
        }
    }
    left
}

/// Processes whose command line mentions `needle` (the lab's daemons name their
/// configuration in its directory).
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(needle) {
            found.push(pid);
        }
    }
    found
}

/// Whether process `pid` runs in the network namespace `ns` (as `ip netns add` made
/// it): the namespace's inode is what `/proc/<pid>/ns/net` names.
fn in_netns(pid: u32, ns: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(want) = std::fs::metadata(format!("/run/netns/{ns}")) else {
        return false;
    };
    std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .is_ok_and(|l| l.to_string_lossy() == format!("net:[{}]", want.ino()))
}

fn lab_measures_both_paths_and_cleans_up() {
    let child = Command::new(common::exe())
        .args([
            "lab",
            "--duration",
            "1",
            "--parallel",
            "2",
            "--pings",
            "20",
            "--dataplane",
            "tx_ports=2",
            "--containers",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = tunloom_lab::netns::wait_limited(child, Duration::from_secs(180)).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {err}"));
    for path in ["tunloom", "kernel_vxlan", "ratio"] {
        for key in [
            "rtt_p50_us",
            "rtt_p99_us",
            "tcp_gbps",
            "tcp_parallel_gbps",
            "tcp_reverse_gbps",
            "udp_1400_gbps",
            "udp_64_kpps",
            "rtt_loaded_p50_us",
            "rtt_loaded_p99_us",
            "cpu_s_per_gb",
        ] {
            let x = v[path][key].as_f64().unwrap_or(0.0);
            assert!(x > 0.0, "{path}.{key} = {}", v[path][key]);
        }
    }
    let t = &v["tunloom"];
    assert!(t["rtt_p50_us"].as_f64() <= t["rtt_p99_us"].as_f64(), "{t}");
    let ratio = v["ratio"]["tcp_gbps"].as_f64().unwrap();
    let want = t["tcp_gbps"].as_f64().unwrap() / v["kernel_vxlan"]["tcp_gbps"].as_f64().unwrap();
    assert!(
        (ratio - want).abs() < 0.01,
        "ratio {ratio} is not tunloom / kernel ({want})"
    );
    // --containers: container to container across the hosts, beside both paths.
    let c = &v["containers"];
    for key in [
        "rtt_p50_us",
        "rtt_p99_us",
        "tcp_gbps",
        "rtt_loaded_p50_us",
        "cpu_s_per_gb",
    ] {
        assert!(c[key].as_f64() > Some(0.0), "containers.{key} = {}", c[key]);
    }
    for against in ["vs_kernel_vxlan", "vs_tunloom_hosts"] {
        for key in ["tcp_gbps", "rtt_p50_us"] {
            assert!(c[against][key].as_f64() > Some(0.0), "containers.{against}.{key}: {c}");
        }
    }
    assert_eq!(v["setup"]["pings"], 20);
    assert_eq!(v["setup"]["dataplane"], serde_json::json!(["tx_ports = 2"]));
    assert!(
        v["setup"]["tunloom_daemon_cpu_s_per_gb"].as_f64() > Some(0.0),
        "{}",
        v["setup"]
    );
    assert_eq!(leftovers(pid), Vec::<String>::new(), "left behind after a run");
}

fn ctrl_c_stops_the_lab_and_removes_everything() {
    let child = Command::new(common::exe())
        .args(["lab", "--duration", "5"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Interrupt once both daemons run.
    let dir = std::env::temp_dir().join(format!("tunloom-lab-{pid}"));
    let needle = dir.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while processes_mentioning(&needle).len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(processes_mentioning(&needle).len() >= 2, "both daemons started");
    // ... and once it measures: its ping or iperf3 runs in its namespace a, aimed at
    // host b's overlay address.
    let measuring = || {
        let ns = format!("tl-lab-{pid}-a");
        processes_mentioning("198.19.2.1").into_iter().any(|p| in_netns(p, &ns))
    };
    while !measuring() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(measuring(), "the lab measures");
    tunloom_lab::netns::signal(pid, tunloom_lab::netns::Signal::SIGINT).unwrap();
    let out = tunloom_lab::netns::wait_limited(child, Duration::from_secs(60)).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert_eq!(leftovers(pid), Vec::<String>::new(), "left behind after Ctrl-C");
    assert_eq!(processes_mentioning(&needle), Vec::<u32>::new(), "daemons left running");
}

/// The testbed's configurations are ones tunloom accepts, each host pointing at the
/// other (no root needed).
fn testbed_configs_point_each_host_at_the_other() {
    use tunloom_lab::testbed::{host_config, HostSpec};
    let a = host_config(0, &HostSpec::default());
    assert!(a.contains("bind = \"198.18.0.1\"") && a.contains("address = \"198.18.0.2\""));
    let s = tunloom::config::Config::parse(&a, std::path::Path::new("a.toml")).unwrap();
    assert_eq!(s.node.name, "tb-a");
}

fn main() -> std::process::ExitCode {
    common::main(&[
        (
            "lab_measures_both_paths_and_cleans_up",
            Needs::NetnsWith(&["ping", "iperf3"]),
            lab_measures_both_paths_and_cleans_up,
        ),
        (
            "ctrl_c_stops_the_lab_and_removes_everything",
            Needs::NetnsWith(&["ping", "iperf3"]),
            ctrl_c_stops_the_lab_and_removes_everything,
        ),
        (
            "testbed_configs_point_each_host_at_the_other",
            Needs::Nothing,
            testbed_configs_point_each_host_at_the_other,
        ),
    ])
}
