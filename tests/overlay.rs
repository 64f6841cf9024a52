//! Two tunloom daemons in network namespaces: traffic both ways, a real TCP transfer,
//! a peer crash and return, and a storm of garbage at the data and control ports.
//! Needs root (ignored without it unless TUNLOOM_REQUIRE_NETNS=1).

mod common;

use common::Needs;

use rand::{Rng, SeedableRng};
use std::net::UdpSocket;
use std::time::{Duration, Instant};
use tunloom_lab::testbed::{HostSpec, TwoHosts, GATEWAY, OVERLAY};

fn drops(stats: &serde_json::Value, reason: &str) -> u64 {
    stats["total"]["drops"][reason].as_u64().unwrap_or(0)
}

fn total_drops(stats: &serde_json::Value) -> u64 {
    stats["total"]["drops_total"].as_u64().unwrap_or(0)
}

fn peer(stats: &serde_json::Value) -> serde_json::Value {
    stats["peers"][0].clone()
}

/// Host `i`'s stats once `done` holds for them, polled for at most 5 s (the last ones
/// read, when it never does, for the assertions to report).
fn stats_once(h: &TwoHosts, i: usize, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = h.stats(i).expect("the daemon answers");
        if done(&s) || Instant::now() >= deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pings until one reply comes back or `limit` passes.
fn reachable(h: &TwoHosts, from: usize, dst: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if !h.ping(from, dst, 1, "0.2").unwrap_or_default().is_empty() {
            return true;
        }
    }
    false
}

fn two_hosts_forward_survive_a_crash_and_shrug_off_garbage() {
    assert!(common::has("ping"), "ping is needed (apt-get install -y iputils-ping)");
    assert!(common::has("iperf3"), "iperf3 is needed (apt-get install -y iperf3)");
    // Both hosts sign their control messages: peering below proves it works.
    let spec = HostSpec {
        gateways: true,
        secret: Some("overlay-test-secret".into()),
        ..HostSpec::default()
    };
    let mut h = TwoHosts::create("it", &common::exe(), &spec, common::never()).unwrap();
    h.start(0).unwrap();
    h.start(1).unwrap();
    h.wait_peers("up", Duration::from_secs(15)).unwrap();

    // Ping both ways over the overlay.
    let ab = h.ping(0, OVERLAY[1], 5, "0.05").unwrap();
    let ba = h.ping(1, OVERLAY[0], 5, "0.05").unwrap();
    assert_eq!(
        (ab.len(), ba.len()),
        (5, 5),
        "ping a->b {ab:?}, b->a {ba:?}\n{}",
        h.log(0)
    );

    // Each host's gateway address is answered by its own tunloom (service thread).
    let got = h.ping(0, GATEWAY[0], 3, "0.05").unwrap().len();
    assert_eq!(got, 3, "{:#}", h.stats(0).unwrap());
    assert_eq!(h.ping(1, GATEWAY[1], 3, "0.05").unwrap().len(), 3, "{}", h.log(1));
    let svc = &h.stats(0).unwrap()["service"];
    assert!(
        svc["handled"].as_u64().unwrap() >= 3 && svc["replies"].as_u64().unwrap() >= 3,
        "{svc}"
    );

    // A 3-second TCP transfer moves data, all of it through tunloom.
    let before = h.stats(1).unwrap();
    let r = h.iperf(0, OVERLAY[1], 3, 1, false).unwrap();
    let moved = r["end"]["sum_received"]["bytes"].as_u64().unwrap();
    assert!(moved > 10_000_000, "iperf3 moved only {moved} bytes");
    // A worker adds a batch to its counters just after writing it to the TUN, which
    // may be after iperf3 has read it: wait (bounded) for the last batch's tally.
    let bytes = |s: &serde_json::Value| s["total"]["counters"]["delivered_bytes"].as_u64().unwrap_or(0);
    let base = bytes(&before);
    let after = stats_once(&h, 1, |s| bytes(s) - base >= moved);
    let delivered = bytes(&after) - base;
    assert!(
        delivered >= moved,
        "b delivered {delivered} bytes for {moved} received by iperf3"
    );

    // Crash b: a withdraws b's routes after 3 missed hellos and counts it.
    h.stop(1, true);
    h.wait_peers("down", Duration::from_secs(5)).unwrap();
    let s = h.stats(0).unwrap();
    assert_eq!(peer(&s)["state"], "down");
    assert_eq!(peer(&s)["down_events"], 1);
    assert_eq!(s["control"]["peer_down_events"], 1);
    let no_route = drops(&s, "no_route");
    assert!(h.ping(0, OVERLAY[1], 2, "0.1").unwrap().is_empty());
    let s = h.stats(0).unwrap();
    assert!(
        drops(&s, "no_route") >= no_route + 2,
        "pings to a withdrawn prefix count as no_route"
    );
    assert!(
        s["total"]["counters"]["icmp_errors"].as_u64().unwrap() >= 2,
        "senders get unreachable"
    );

    // b comes back: traffic flows again.
    h.start(1).unwrap();
    h.wait_peers("up", Duration::from_secs(15)).unwrap();
    assert!(reachable(&h, 0, OVERLAY[1], Duration::from_secs(5)), "{}", h.log(0));
    assert_eq!(peer(&h.stats(0).unwrap())["up_events"], 2);

    // 10,000 random and truncated datagrams at a's data and control ports, sent
    // from b's namespace (so the data port sees them from a known peer).
    let before = h.stats(0).unwrap();
    let b_ns = h.b.name.clone();
    let sent = std::thread::spawn(move || {
        tunloom_lab::netns::enter(&b_ns).unwrap();
        let sock = UdpSocket::bind("198.18.0.2:0").unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut valid = vec![0x08u8, 0, 0, 0, 0, 0, 1, 0];
        valid.extend_from_slice(&[0u8; 14]);
        valid.extend_from_slice(&tunloom::testkit::udp4([198, 19, 2, 9], [198, 19, 1, 1], 64, 40));
        let mut n = 0;
        for i in 0..10_000 {
            let dgram: Vec<u8> = match i % 3 {
                0 => (0..rng.random_range(0..1500)).map(|_| rng.random()).collect(),
                1 => valid[..rng.random_range(0..valid.len())].to_vec(),
                _ => {
                    let mut v = valid.clone();
                    let at = rng.random_range(0..v.len());
                    v[at] = rng.random();
                    v
                }
            };
            let port = if i % 2 == 0 { 4789 } else { 6783 };
            if sock.send_to(&dgram, ("198.18.0.1", port)).is_ok() {
                n += 1;
            }
            if i % 500 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        n
    })
    .join()
    .unwrap();
    assert_eq!(sent, 10_000);
    let malformed = |s: &serde_json::Value| s["control"]["dropped_malformed"].as_u64().unwrap_or(0);
    let after = stats_once(&h, 0, |s| {
        total_drops(s) - total_drops(&before) > 3000 && malformed(s) - malformed(&before) > 3000
    });
    assert_eq!(after["node"]["name"], "tb-a");
    let data_drops = total_drops(&after) - total_drops(&before);
    let c = &after["control"];
    let control_drops =
        c["dropped_malformed"].as_u64().unwrap() - before["control"]["dropped_malformed"].as_u64().unwrap();
    assert!(
        data_drops > 3000,
        "data-port garbage counted as drops: {data_drops}\n{:#}",
        after["total"]["drops"]
    );
    assert!(control_drops > 3000, "control-port garbage counted: {control_drops}");
    assert_eq!(peer(&after)["state"], "up", "garbage does not take the peer down");
    assert!(
        reachable(&h, 0, OVERLAY[1], Duration::from_secs(3)),
        "still forwards after the storm"
    );
    assert!(reachable(&h, 1, OVERLAY[0], Duration::from_secs(3)), "both ways");

    // Well-formed VXLAN from an underlay address that is no peer: all dropped as
    // unknown_peer, none delivered.
    h.b.ip(&["addr", "add", "198.18.0.3/24", "dev", "tlvb"]).unwrap();
    let before = h.stats(0).unwrap();
    let b_ns = h.b.name.clone();
    std::thread::spawn(move || {
        tunloom_lab::netns::enter(&b_ns).unwrap();
        let sock = UdpSocket::bind("198.18.0.3:0").unwrap();
        let mut v = vec![0x08u8, 0, 0, 0, 0, 0, 1, 0];
        v.extend_from_slice(&[0u8; 14]);
        v.extend_from_slice(&tunloom::testkit::udp4([198, 19, 2, 9], [198, 19, 1, 1], 64, 40));
        for i in 0..1000 {
            sock.send_to(&v, ("198.18.0.1", 4789)).unwrap();
            if i % 100 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    })
    .join()
    .unwrap();
    let d = |s: &serde_json::Value, k: &str| s["total"]["drops"][k].as_u64().unwrap_or(0);
    let after = stats_once(&h, 0, |s| d(s, "unknown_peer") - d(&before, "unknown_peer") >= 900);
    let strangers = d(&after, "unknown_peer") - d(&before, "unknown_peer");
    assert!(
        strangers >= 900,
        "datagrams from a stranger counted: {strangers} of 1000"
    );
    let delivered = |s: &serde_json::Value| s["total"]["counters"]["delivered_packets"].as_u64().unwrap_or(0);
    assert!(
        delivered(&after) - delivered(&before) < 50,
        "nothing of theirs delivered"
    );

    // Well-formed hellos that claim to be a new peer, unsigned or signed with the
    // wrong key: dropped, counted, and never trusted.
    let before = h.stats(0).unwrap();
    let b_ns = h.b.name.clone();
    std::thread::spawn(move || {
        use tunloom::wire::control;
        tunloom_lab::netns::enter(&b_ns).unwrap();
        let sock = UdpSocket::bind("198.18.0.2:0").unwrap();
        let ann = [control::Announce {
            prefix: "198.19.1.0/24".parse().unwrap(),
            version: 1,
            block: false,
            vni: 0,
        }];
        let forged = control::Repr {
            kind: control::Kind::Hello,
            seq: 1,
            state: 1,
            ack: 0,
            page: 0,
            pages: 1,
            data_port: 4789,
            underlay: "198.18.0.2".parse().unwrap(),
            name: "6e:1f:a5:66:66:66",
            nickname: "forger",
            prefixes: control::Prefixes::Slice(&ann),
        };
        for key in [None, Some(&b"not-the-secret"[..])] {
            let mut buf = vec![0u8; forged.buffer_len(key.is_some())];
            forged.emit(&mut buf, key).unwrap();
            for _ in 0..50 {
                sock.send_to(&buf, ("198.18.0.1", 6783)).unwrap();
            }
        }
    })
    .join()
    .unwrap();
    let unauthenticated = |s: &serde_json::Value| s["control"]["dropped_unauthenticated"].as_u64().unwrap();
    let after = stats_once(&h, 0, |s| unauthenticated(s) - unauthenticated(&before) >= 100);
    let counted = unauthenticated(&after) - unauthenticated(&before);
    assert_eq!(counted, 100, "{:#}", after["control"]);
    let peers = after["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 1, "the forger is no peer: {peers:#?}");
    assert_eq!(peers[0]["state"], "up");
    assert!(
        reachable(&h, 0, OVERLAY[1], Duration::from_secs(3)),
        "and a still forwards"
    );
}

/// With two workers per host, host a attaches both steering programs; host b runs
/// without CAP_BPF and CAP_SYS_ADMIN, so the kernel refuses its TUN program: it says
/// so and falls back to hashing, and TCP still flows both ways.
fn steering_by_cpu_and_its_fallback() {
    assert!(common::has("setpriv"), "setpriv is needed (util-linux)");
    let cpus = tunloom_lab::netns::allowed_cpus();
    assert!(cpus.len() >= 2, "this test needs two CPUs, has {cpus:?}");
    // Worker i on a CPU whose number modulo 2 is i, as steering needs.
    let even = *cpus.iter().find(|c| *c % 2 == 0).expect("an even CPU");
    let odd = *cpus.iter().find(|c| *c % 2 == 1).expect("an odd CPU");
    let restricted = ["setpriv", "--bounding-set", "-bpf,-sys_admin", "--"].map(String::from);
    let spec = HostSpec {
        workers: 2,
        cpus: [vec![even, odd], vec![even, odd]],
        dataplane: "steering = \"cpu\"".into(),
        wrappers: [Vec::new(), restricted.to_vec()],
        ..HostSpec::default()
    };
    let mut h = TwoHosts::create("steer", &common::exe(), &spec, common::never()).unwrap();
    h.start(0).unwrap();
    h.start(1).unwrap();
    h.wait_peers("up", Duration::from_secs(20)).unwrap();
    let steering = |i: usize| h.stats(i).unwrap()["dataplane"]["steering"].clone();
    let a = steering(0);
    assert_eq!(
        (a["tun"].as_str(), a["socket"].as_str()),
        (Some("cpu"), Some("cpu")),
        "{a}"
    );
    assert!(a.get("notes").is_none(), "{a}");
    let b = steering(1);
    // Where unprivileged BPF is allowed, the program loads without the capabilities.
    let bpf_needs_caps =
        std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled").is_ok_and(|v| v.trim() != "0");
    if bpf_needs_caps {
        assert_eq!(
            (b["tun"].as_str(), b["socket"].as_str()),
            (Some("hash"), Some("cpu")),
            "{b}"
        );
        let note = b["notes"][0].as_str().unwrap_or_default();
        assert!(note.contains("refused the TUN steering program"), "{b}");
        assert!(h.log(1).contains("steering:"), "the fallback is logged:\n{}", h.log(1));
    } else {
        eprintln!("unprivileged BPF is allowed here: host b's TUN program loads too");
        assert_eq!(b["socket"].as_str(), Some("cpu"), "{b}");
    }
    for reverse in [false, true] {
        let r = h.iperf(0, OVERLAY[1], 2, 2, reverse).unwrap();
        let got = r["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
        assert!(got > 10_000_000, "reverse {reverse}: only {got} bytes");
    }
    let drops = h.stats(1).unwrap()["total"]["drops"].clone();
    assert_eq!(drops["malformed"].as_u64().unwrap_or(0), 0, "{drops}");
}

fn main() -> std::process::ExitCode {
    common::main(&[
        (
            "two_hosts_forward_survive_a_crash_and_shrug_off_garbage",
            Needs::NetnsWith(&["ping", "iperf3"]),
            two_hosts_forward_survive_a_crash_and_shrug_off_garbage,
        ),
        (
            "steering_by_cpu_and_its_fallback",
            Needs::NetnsWith(&["iperf3", "setpriv"]),
            steering_by_cpu_and_its_fallback,
        ),
    ])
}
