//! Container networks end to end: two tunloom hosts from the testbed, workload
//! namespaces attached through the Container Station face, and an "outside"
//! namespace behind host a standing for the internet. Containers on one network
//! reach each other across hosts (ping, iperf3) and on one host (through the
//! pipeline); other networks are isolated; internal networks reach nothing outside;
//! ordinary ones are masqueraded behind the host; disconnect undoes everything;
//! restarts and a `kill -9` during 50 concurrent connects leave every acknowledged
//! attachment working and nothing leaked. Needs root (ignored without it unless
//! TUNLOOM_REQUIRE_NETNS=1).

mod common;

use common::Needs;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tunloom_lab::netns::{self, Netns};
use tunloom_lab::testbed::{api_request, HostSpec, TwoHosts};

const CS: &str = "/container-station/api/v1/networks";

fn cs(h: &TwoHosts, i: usize, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let (s, b) = api_request(
        &h.ns(i).name,
        6786,
        method,
        path,
        body.map(|b| b.to_string().into_bytes()),
        &[],
    )
    .unwrap();
    let v = serde_json::from_slice(&b).unwrap_or(Value::Null);
    (s, v)
}

/// Creates `name` on host `i` with `subnet` and this host's `range`.
fn network(h: &TwoHosts, i: usize, name: &str, subnet: &str, range: &str, internal: bool) {
    let mut config = json!({"Subnet": subnet});
    if !range.is_empty() {
        config["IPRange"] = json!(range);
    }
    let body = json!({"name": name, "internal": internal, "ipam": {"Config": [config]}});
    let (s, b) = cs(h, i, "POST", CS, Some(body));
    assert_eq!(s, 200, "creating {name} on host {i}: {b}\n{}", h.log(i));
}

fn connect(h: &TwoHosts, i: usize, net: &str, container: &str) -> (u16, Value) {
    cs(
        h,
        i,
        "POST",
        &format!("{CS}/{net}/connect"),
        Some(json!({"container": container})),
    )
}

/// The container's address on `net` as host `i` shows it.
fn address(h: &TwoHosts, i: usize, net: &str, container: &str) -> String {
    let (_, n) = cs(h, i, "GET", &format!("{CS}/{net}"), None);
    let a = n["Containers"][container]["IPv4Address"].as_str().unwrap_or_default();
    a.split('/').next().unwrap_or_default().to_string()
}

/// Whether `from` gets a ping reply from `dst` within `limit`.
fn pings(from: &Netns, dst: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if from
            .run("ping", &["-c", "1", "-W", "1", dst], Duration::from_secs(3))
            .is_ok()
        {
            return true;
        }
    }
    false
}

fn counter(h: &TwoHosts, i: usize, section: &str, key: &str) -> u64 {
    let s = h.stats(i).unwrap();
    s["total"][section][key].as_u64().unwrap_or(0)
}

/// tunloom's host ends (`tlc…`) in host `i`'s namespace.
fn host_ends(h: &TwoHosts, i: usize) -> Vec<String> {
    let out = h
        .ns(i)
        .run("ip", &["-o", "link", "show"], Duration::from_secs(5))
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with("tlc"))
        .collect()
}

fn rules(h: &TwoHosts, i: usize) -> Vec<String> {
    let out = h.ns(i).run("ip", &["rule", "show"], Duration::from_secs(5)).unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("6783") || l.contains("6784"))
        .map(str::to_string)
        .collect()
}

fn diag(h: &TwoHosts, outside: &Netns) -> String {
    let mut t = String::new();
    for args in [
        vec!["-s", "link", "show", "tlout"],
        vec!["route", "get", "198.18.1.2", "from", "198.19.130.2", "iif", "tl0"],
        vec!["rule"],
        vec!["route", "show", "table", "all"],
    ] {
        let o = h.ns(0).command("ip", &args).output().unwrap();
        t += &format!(
            "\n$ ip {args:?}\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let o = h
        .ns(0)
        .command(
            "sh",
            &[
                "-c",
                "grep . /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv4/conf/*/rp_filter",
            ],
        )
        .output()
        .unwrap();
    t += &String::from_utf8_lossy(&o.stdout);
    let o = outside.command("ip", &["-s", "link", "show", "eth0"]).output().unwrap();
    t += &String::from_utf8_lossy(&o.stdout);
    t
}

fn containers_on_networks_across_hosts() {
    for p in ["ping", "iperf3", "nft"] {
        assert!(common::has(p) || p == "nft", "{p} is needed (scripts/setup)");
    }
    let pid = std::process::id();
    let spec = HostSpec {
        ipam_range: "198.19.0.0/17".into(),
        extra: "[networks]\npool = \"198.19.128.0/17\"\n".into(),
        ..HostSpec::default()
    };
    let mut h = TwoHosts::create("nw", &common::exe(), &spec, common::never()).unwrap();
    // The "internet": a namespace behind host a, which has no route back into the
    // overlay — only masqueraded traffic can be answered.
    let outside = Netns::create(&format!("tln-{pid}-out")).unwrap();
    netns::veth(h.ns(0), "tlout", "198.18.1.1/24", &outside, "eth0", "198.18.1.2/24").unwrap();
    for i in 0..2 {
        h.start(i).unwrap();
    }
    for i in 0..2 {
        h.wait_up(i, Duration::from_secs(10)).unwrap();
    }
    h.wait_peers("up", Duration::from_secs(10)).unwrap();

    // One network `app` on both hosts, each allocating from its half.
    network(&h, 0, "app", "198.19.130.0/24", "198.19.130.0/25", false);
    network(&h, 1, "app", "198.19.130.0/24", "198.19.130.128/25", false);
    network(&h, 0, "other", "198.19.131.0/24", "", false);
    network(&h, 0, "quiet", "198.19.132.0/24", "", true);
    let c = |n: &str| Netns::create(&format!("tln-{pid}-{n}")).unwrap();
    let (a1, a2, b1, o1, q1) = (c("a1"), c("a2"), c("b1"), c("o1"), c("q1"));
    for (i, net, ns) in [
        (0, "app", &a1),
        (0, "app", &a2),
        (1, "app", &b1),
        (0, "other", &o1),
        (0, "quiet", &q1),
    ] {
        let (s, b) = connect(&h, i, net, &ns.name);
        assert_eq!(s, 200, "connect {} to {net}: {b}\n{}", ns.name, h.log(i));
    }
    let ip_a1 = address(&h, 0, "app", &a1.name);
    let ip_a2 = address(&h, 0, "app", &a2.name);
    let ip_b1 = address(&h, 1, "app", &b1.name);
    assert_eq!((ip_a1.as_str(), ip_b1.as_str()), ("198.19.130.2", "198.19.130.128"));

    // Across hosts: ping and a real TCP transfer.
    assert!(
        pings(&a1, &ip_b1, Duration::from_secs(10)),
        "a1 → b1\n{}\n{}",
        h.log(0),
        h.log(1)
    );
    assert!(pings(&b1, &ip_a1, Duration::from_secs(5)), "b1 → a1");
    // Each host announces its range of `app` under app's VNI (control message
    // version 2), and the two agree.
    let (sa, sb) = (h.stats(0).unwrap(), h.stats(1).unwrap());
    let vni = sa["announced"]["vnis"]["198.19.130.0/25"].as_u64().unwrap_or(0);
    assert!(vni > 0, "{}", sa["announced"]);
    assert_eq!(sb["announced"]["vnis"]["198.19.130.128/25"].as_u64(), Some(vni));
    assert_eq!(
        sa["peers"][0]["vnis"]["198.19.130.128/25"].as_u64(),
        Some(vni),
        "{}",
        sa["peers"]
    );
    assert_eq!(
        sb["peers"][0]["vnis"]["198.19.130.0/25"].as_u64(),
        Some(vni),
        "{}",
        sb["peers"]
    );
    for s in [&sa, &sb] {
        assert_eq!(s["control"]["vni_conflicts"].as_u64(), Some(0));
        assert_eq!(s["control"]["dropped_unknown_version"].as_u64(), Some(0));
    }
    let server = b1
        .command("iperf3", &["-s", "-1", "-B", &ip_b1])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let server = tunloom_lab::testbed::Proc::new(server, "iperf3 server");
    std::thread::sleep(Duration::from_millis(300));
    let out = a1
        .run("iperf3", &["-c", &ip_b1, "-t", "2", "-J"], Duration::from_secs(20))
        .expect("iperf3 between containers on two hosts");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let bps = report["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0);
    assert!(bps > 1e6, "container to container across hosts moved data: {bps} bit/s");
    eprintln!("container → container across hosts: {:.2} Gbit/s", bps / 1e9);
    drop(server);

    // Same host, through the pipeline: the hand-back counter moves.
    let before = counter(&h, 0, "counters", "hairpin_delivered");
    assert!(pings(&a1, &ip_a2, Duration::from_secs(5)), "a1 → a2 on one host");
    assert!(
        counter(&h, 0, "counters", "hairpin_delivered") > before,
        "{}",
        h.stats(0).unwrap()
    );

    // Another network is isolated, and counted.
    let before = counter(&h, 0, "drops", "isolated");
    assert!(
        !pings(&o1, &ip_b1, Duration::from_secs(2)),
        "other → app must be dropped"
    );
    assert!(
        !pings(&o1, &ip_a1, Duration::from_secs(2)),
        "other → app on one host too"
    );
    assert!(counter(&h, 0, "drops", "isolated") > before);

    // Egress: app reaches the outside, masqueraded; the internal network does not.
    assert!(
        pings(&a1, "198.18.1.2", Duration::from_secs(5)),
        "egress from app\n{}\n{}\n{}",
        h.log(0),
        h.stats(0).unwrap()["total"],
        String::from_utf8_lossy(
            &h.ns(0)
                .run("nft", &["list", "ruleset"], Duration::from_secs(5))
                .unwrap()
                .stdout
        )
        .into_owned()
            + &diag(&h, &outside)
    );
    assert!(
        !pings(&q1, "198.18.1.2", Duration::from_secs(2)),
        "an internal network reaches nothing outside"
    );
    let seen = std::thread::scope(|s| {
        let out_name = outside.name.clone();
        let listener = s.spawn(move || -> String {
            netns::enter(&out_name).unwrap();
            let l = std::net::TcpListener::bind("198.18.1.2:7777").unwrap();
            l.set_nonblocking(false).unwrap();
            let (_, peer) = l.accept().unwrap();
            peer.ip().to_string()
        });
        std::thread::sleep(Duration::from_millis(200));
        let a1_name = a1.name.clone();
        s.spawn(move || {
            netns::enter(&a1_name).unwrap();
            let _ = std::net::TcpStream::connect_timeout(&"198.18.1.2:7777".parse().unwrap(), Duration::from_secs(5));
        })
        .join()
        .unwrap();
        listener.join().unwrap()
    });
    assert_eq!(seen, "198.18.1.1", "the outside sees the host's address");

    // A forged source goes nowhere: o1 (on `other`) sending as an `app` address.
    o1.run(
        "ip",
        &["addr", "add", "198.19.130.77/32", "dev", "eth0"],
        Duration::from_secs(5),
    )
    .unwrap();
    let echoes = || -> u64 {
        let snmp = a1.run("cat", &["/proc/net/snmp"], Duration::from_secs(5)).unwrap();
        let text = String::from_utf8_lossy(&snmp.stdout).into_owned();
        let icmp: Vec<&str> = text.lines().filter(|l| l.starts_with("Icmp:")).collect();
        let at = icmp[0].split_whitespace().position(|k| k == "InEchos").unwrap();
        icmp[1].split_whitespace().nth(at).unwrap().parse().unwrap()
    };
    let before = echoes();
    let _ = o1.run(
        "ping",
        &["-c", "3", "-i", "0.2", "-W", "1", "-I", "198.19.130.77", &ip_a1],
        Duration::from_secs(5),
    );
    assert_eq!(echoes(), before, "a forged source reaches no other network");
    // An address of the network no container holds: refused by the host, not looped
    // through the pipeline until the TTL runs out.
    let before = counter(&h, 0, "counters", "hairpin_delivered");
    let _ = a1.run("ping", &["-c", "1", "-W", "1", "198.19.130.99"], Duration::from_secs(3));
    let looped = counter(&h, 0, "counters", "hairpin_delivered") - before;
    assert!(looped <= 2, "a packet for a free address went round {looped} times");
    // tunloom's own namespace is no container.
    let daemon = h.pid(0).unwrap().to_string();
    let (s, b) = connect(&h, 0, "other", &daemon);
    assert_eq!(s, 400, "{b}");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("rewire the host"),
        "{b}"
    );

    // Disconnect removes the veth and frees the address.
    let a2_end = host_ends(&h, 0).len();
    let (s, _) = cs(
        &h,
        0,
        "POST",
        &format!("{CS}/app/disconnect"),
        Some(json!({"container": a2.name})),
    );
    assert_eq!(s, 200);
    assert_eq!(host_ends(&h, 0).len(), a2_end - 1);
    let links = a2.run("ip", &["-o", "link"], Duration::from_secs(5)).unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains("eth0"));
    let a3 = c("a3");
    assert_eq!(connect(&h, 0, "app", &a3.name).0, 200);
    assert_eq!(
        address(&h, 0, "app", &a3.name),
        ip_a2,
        "the freed address is handed out again"
    );

    // A restart keeps every attachment working; while tunloom is down nothing from a
    // container is forwarded around the pipeline.
    h.stop(0, false);
    assert!(
        !pings(&a1, "198.18.1.2", Duration::from_secs(2)),
        "no bypass while tunloom is down"
    );
    h.start(0).unwrap();
    h.wait_up(0, Duration::from_secs(10)).unwrap();
    h.wait_peers("up", Duration::from_secs(10)).unwrap();
    assert!(
        pings(&a1, &ip_b1, Duration::from_secs(10)),
        "a1 → b1 after a restart\n{}",
        h.log(0)
    );
    assert!(pings(&a3, &ip_a1, Duration::from_secs(5)), "a3 → a1 after a restart");

    // kill -9 during 50 concurrent connects: after the restart no leaked veth, rule or
    // route, and every acknowledged attachment works.
    let many: Vec<Netns> = (0..50).map(|k| c(&format!("m{k}"))).collect();
    let daemon = h.pid(0).expect("host a runs");
    let acked = std::thread::scope(|s| {
        let workers: Vec<_> = many
            .iter()
            .map(|ns| {
                let h = &h;
                // The daemon dies under some of these: no answer is no acknowledgement.
                s.spawn(move || {
                    let body = json!({"container": ns.name}).to_string().into_bytes();
                    api_request(
                        &h.ns(0).name,
                        6786,
                        "POST",
                        &format!("{CS}/app/connect"),
                        Some(body),
                        &[],
                    )
                    .is_ok_and(|(status, _)| status == 200)
                })
            })
            .collect();
        // Mid-way: each connect takes a few milliseconds, one after the other.
        std::thread::sleep(Duration::from_millis(40));
        netns::signal(daemon, netns::Signal::SIGKILL).unwrap();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or(false))
            .collect::<Vec<bool>>()
    });
    h.stop(0, true);
    let acked: Vec<&Netns> = many.iter().zip(&acked).filter(|(_, ok)| **ok).map(|(n, _)| n).collect();
    eprintln!("{} of 50 connects acknowledged before the kill", acked.len());
    h.start(0).unwrap();
    h.wait_up(0, Duration::from_secs(20)).unwrap();
    let (_, app) = cs(&h, 0, "GET", &format!("{CS}/app"), None);
    let attached = app["Containers"].as_object().unwrap().len();
    let mut ends = host_ends(&h, 0);
    ends.sort();
    // Every endpoint of this host (app, other, quiet) has exactly one host end.
    let total: usize = ["app", "other", "quiet"]
        .iter()
        .map(|n| {
            cs(&h, 0, "GET", &format!("{CS}/{n}"), None).1["Containers"]
                .as_object()
                .map_or(0, |m| m.len())
        })
        .sum();
    assert_eq!(
        ends.len(),
        total,
        "host ends {ends:?} vs {total} endpoints\n{}",
        h.log(0)
    );
    assert_eq!(rules(&h, 0).iter().filter(|r| r.contains("lookup 6783")).count(), total);
    assert!(attached >= acked.len() + 2, "every acknowledged attachment is stored");
    for ns in &acked {
        assert!(
            pings(ns, "198.19.130.1", Duration::from_secs(3)),
            "{} answers after the crash",
            ns.name
        );
    }
    // Containers whose connect was cut short have no half-made interface.
    for ns in many.iter().filter(|n| !acked.iter().any(|a| a.name == n.name)) {
        let listed = app["Containers"].get(ns.name.as_str()).is_some();
        let links = ns.run("ip", &["-o", "link"], Duration::from_secs(5)).unwrap();
        let has_eth = String::from_utf8_lossy(&links.stdout).contains("eth0");
        assert_eq!(listed, has_eth, "{}: stored {listed}, interface {has_eth}", ns.name);
    }
    h.stop(0, false);
    h.stop(1, false);
}

fn main() -> std::process::ExitCode {
    common::main(&[(
        "containers_on_networks_across_hosts",
        Needs::NetnsWith(&["ping", "iperf3", "nft"]),
        containers_on_networks_across_hosts,
    )])
}
