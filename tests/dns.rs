//! DNS at the gateway address, asked with `dig` from a workload namespace behind a
//! tunloom host, with a real upstream (dnsmasq) in an "outside" namespace:
//!
//! ```text
//!  ns …-w (workload)          ns …-dns (host: tunloom, tl0)           ns …-o (outside)
//!  198.19.200.2 ──veth── 198.19.200.1   gateway 198.19.1.254   198.18.100.1 ──veth── 198.18.100.2 dnsmasq
//! ```
//!
//! Needs root, dig and dnsmasq (ignored without them unless TUNLOOM_REQUIRE_NETNS=1).

mod common;

use common::Needs;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tunloom_lab::netns::{self, Netns};
use tunloom_lab::testbed::{OneHost, Proc};

const GATEWAY: &str = "198.19.1.254";
const UPSTREAM: &str = "198.18.100.2";
/// An address of the outside namespace where no server listens: a silent upstream.
const SILENT: &str = "198.18.100.3";

/// The host, its workload and outside namespaces, and dnsmasq.
struct Bed {
    // Drop order: dnsmasq and the daemon stop before their namespaces go.
    _dnsmasq: Proc,
    host: OneHost,
    w: Netns,
    _o: Netns,
}

fn config(tag: &str, upstream: &str) -> String {
    format!(
        "[node]\nname = \"{tag}\"\n[overlay]\ngateways = [\"{GATEWAY}\"]\n[ipam]\nrange = \"198.19.0.0/16\"\n\
         [dns]\nupstream = [\"{upstream}\"]\ntimeout_ms = 1000\n"
    )
}

fn bed(tag: &str, upstream: &str) -> Bed {
    let mut host = OneHost::create(tag, &common::exe(), &config(tag, upstream)).unwrap();
    let pid = std::process::id();
    let w = Netns::create(&format!("tl-{tag}-{pid}-w")).unwrap();
    let o = Netns::create(&format!("tl-{tag}-{pid}-o")).unwrap();
    netns::behind(&host.ns, "tlw", "198.19.200.1/24", &w, "eth0", "198.19.200.2/24").unwrap();
    netns::veth(&host.ns, "tlo", "198.18.100.1/24", &o, "eth0", "198.18.100.2/24").unwrap();
    o.ip(&["addr", "add", "198.18.100.3/24", "dev", "eth0"]).unwrap();
    // The outside zone: one name, and one with more addresses than 512 bytes hold.
    let hosts = host.dir.0.join("outside.hosts");
    let mut text = String::from("198.18.100.80 www.outside.test\n");
    for i in 1..=60 {
        text.push_str(&format!("198.18.101.{i} big.outside.test\n"));
    }
    std::fs::write(&hosts, text).unwrap();
    let dnsmasq = o
        .command(
            "dnsmasq",
            &[
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--user=root",
                &format!("--pid-file={}", host.dir.0.join("dnsmasq.pid").display()),
                &format!("--listen-address={UPSTREAM}"),
                "--bind-interfaces",
                &format!("--addn-hosts={}", hosts.display()),
                "--local-ttl=60",
                "--neg-ttl=30",
                "--local=/outside.test/",
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let dnsmasq = Proc::new(dnsmasq, "dnsmasq");
    host.start().unwrap();
    let b = Bed {
        _dnsmasq: dnsmasq,
        host,
        w,
        _o: o,
    };
    // dnsmasq answers before the tests lean on it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while dig_in(&b.host.ns.name, UPSTREAM, &["www.outside.test"]).status != "NOERROR" {
        assert!(Instant::now() < deadline, "dnsmasq did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    b
}

/// What dig said.
#[derive(Debug, Default)]
struct Dig {
    status: String,
    flags: String,
    /// (TTL, type, data) of each answer record.
    answers: Vec<(u32, String, String)>,
    authority: usize,
    text: String,
}

/// dig in namespace `ns` against `server`, one try of at most 4 s.
fn dig_in(ns: &str, server: &str, args: &[&str]) -> Dig {
    let child = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "dig", &format!("@{server}"), "+time=4", "+tries=1"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = netns::wait_limited(child, Duration::from_secs(15)).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut d = Dig::default();
    let mut section = "";
    for line in text.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            d.status = rest.split(',').next().unwrap_or("").to_string();
        }
        if let Some(rest) = line.strip_prefix(";; flags: ") {
            d.flags = rest.split(';').next().unwrap_or("").to_string();
        }
        if let Some(s) = line.strip_prefix(";; ").and_then(|l| l.strip_suffix(" SECTION:")) {
            section = if s == "ANSWER" {
                "answer"
            } else if s == "AUTHORITY" {
                "authority"
            } else {
                ""
            };
            continue;
        }
        if line.is_empty() || line.starts_with(';') {
            if line.is_empty() {
                section = "";
            }
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        match section {
            "answer" if f.len() >= 5 => {
                d.answers
                    .push((f[1].parse().unwrap_or(u32::MAX), f[3].to_string(), f[4..].join(" ")))
            }
            "authority" => d.authority += 1,
            _ => {}
        }
    }
    d.text = text;
    d
}

impl Bed {
    /// dig from the workload against the gateway.
    fn dig(&self, args: &[&str]) -> Dig {
        dig_in(&self.w.name, GATEWAY, args)
    }

    fn weave(&self, method: &str, path: &str, form: Option<&str>) -> u16 {
        self.host.weave(method, path, form).unwrap().0
    }

    fn dns_stats(&self) -> serde_json::Value {
        let (status, body) = self.host.api("GET", "/api/v1/stats", None).unwrap();
        assert_eq!(status, 200);
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["dns"].clone()
    }
}

fn data(d: &Dig) -> Vec<&str> {
    d.answers.iter().map(|(_, _, v)| v.as_str()).collect()
}

/// A, AAAA, PTR, NXDOMAIN and NODATA, rotation, TCP, truncation, the status page.
fn workload_names_resolve_at_the_gateway() {
    let b = bed("dnsl", UPSTREAM);
    for ip in ["198.19.64.5", "198.19.64.6", "198.19.64.7"] {
        assert_eq!(
            b.weave("PUT", &format!("/name/web/{ip}"), Some("fqdn=web.weave.local.")),
            200
        );
    }
    assert_eq!(
        b.weave("PUT", "/name/db/198.19.64.9", Some("fqdn=db.weave.local.")),
        200
    );

    let a = b.dig(&["web.weave.local", "A"]);
    assert_eq!(a.status, "NOERROR", "{}", a.text);
    assert!(a.flags.split(' ').any(|f| f == "aa"), "authoritative: {}", a.text);
    let mut got = data(&a);
    got.sort();
    assert_eq!(got, ["198.19.64.5", "198.19.64.6", "198.19.64.7"]);
    // Rotated per query: the first answer is not always the same one.
    let firsts: std::collections::BTreeSet<String> = (0..6)
        .map(|_| b.dig(&["web.weave.local"]).answers[0].2.clone())
        .collect();
    assert!(firsts.len() > 1, "answers rotate: always {firsts:?}");
    // Case does not matter; the TTL is the configured one.
    let mixed = b.dig(&["WeB.WEAVE.local"]);
    assert_eq!(mixed.answers.len(), 3, "{}", mixed.text);
    assert!(mixed.answers.iter().all(|a| a.0 == 1), "TTL 1: {}", mixed.text);

    let ptr = b.dig(&["-x", "198.19.64.9"]);
    assert_eq!(
        (ptr.status.as_str(), data(&ptr)),
        ("NOERROR", vec!["db.weave.local."]),
        "{}",
        ptr.text
    );

    let nx = b.dig(&["nope.weave.local"]);
    assert_eq!(
        (nx.status.as_str(), nx.answers.len(), nx.authority),
        ("NXDOMAIN", 0, 1),
        "{}",
        nx.text
    );
    // A known name asked for a type it lacks: NOERROR and no answer, never NXDOMAIN.
    let nodata = b.dig(&["db.weave.local", "AAAA"]);
    assert_eq!(
        (nodata.status.as_str(), nodata.answers.len()),
        ("NOERROR", 0),
        "{}",
        nodata.text
    );

    let tcp = b.dig(&["+tcp", "web.weave.local"]);
    assert_eq!((tcp.status.as_str(), tcp.answers.len()), ("NOERROR", 3), "{}", tcp.text);

    // 40 addresses do not fit 512 bytes: TC over UDP, dig asks again over TCP.
    for i in 1..=40 {
        assert_eq!(
            b.weave(
                "PUT",
                &format!("/name/many/198.19.66.{i}"),
                Some("fqdn=many.weave.local.")
            ),
            200
        );
    }
    let big = b.dig(&["+noedns", "many.weave.local"]);
    assert!(big.text.contains("Truncated, retrying in TCP mode"), "{}", big.text);
    assert_eq!(
        (big.status.as_str(), big.answers.len()),
        ("NOERROR", 40),
        "{}",
        big.text
    );
    // With EDNS the whole answer fits one datagram.
    let edns = b.dig(&["+bufsize=1232", "many.weave.local"]);
    assert!(!edns.text.contains("Truncated"), "{}", edns.text);
    assert_eq!(edns.answers.len(), 40);

    let (status, body) = b.host.weave("GET", "/status", None).unwrap();
    assert!(status == 200 || status == 503, "{status}");
    let st: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(st["dns"]["domain"], "weave.local.");
    assert_eq!(st["dns"]["upstream"], serde_json::json!([UPSTREAM]));
    assert_eq!(st["dns"]["entries"], 44);
    assert_eq!(st["dns"]["ttl"], 1);

    let s = b.dns_stats();
    assert!(s["queries_a"].as_u64().unwrap() >= 12, "{s}");
    assert!(s["queries_ptr"].as_u64().unwrap() >= 1, "{s}");
    assert!(s["queries_tcp"].as_u64().unwrap() >= 2, "{s}");
    assert!(s["nxdomain"].as_u64().unwrap() >= 1, "{s}");
    assert!(s["truncated"].as_u64().unwrap() >= 1, "{s}");
    assert!(s["latency"]["p99_us"].as_f64().is_some(), "{s}");
}

/// Registered, answered, deregistered, gone: each step asked at once, no sleep.
fn a_name_answers_as_soon_as_it_is_registered_and_is_gone_once_deleted() {
    let b = bed("dnsr", UPSTREAM);
    for i in 1..=20 {
        let (ip, name) = (format!("198.19.65.{i}"), format!("app{i}.weave.local"));
        assert_eq!(
            b.weave("PUT", &format!("/name/c{i}/{ip}"), Some(&format!("fqdn={name}"))),
            200
        );
        let d = b.dig(&[&name]);
        assert_eq!(
            (d.status.as_str(), data(&d)),
            ("NOERROR", vec![ip.as_str()]),
            "round {i}: {}",
            d.text
        );
        assert_eq!(b.weave("DELETE", &format!("/name/c{i}/{ip}"), None), 200);
        let d = b.dig(&[&name]);
        assert_eq!(d.status, "NXDOMAIN", "round {i} after delete: {}", d.text);
    }
    // Records survive a crash: registered, kill -9, answered by the new process.
    assert_eq!(
        b.weave("PUT", "/name/keep/198.19.65.99", Some("fqdn=keep.weave.local")),
        200
    );
    let mut b = b;
    b.host.stop(true);
    b.host.start().unwrap();
    let d = b.dig(&["keep.weave.local"]);
    assert_eq!(data(&d), ["198.19.65.99"], "{}", d.text);
}

/// Names outside the domain go to dnsmasq; answers are cached and learned; a
/// truncated upstream answer is fetched again over TCP.
fn other_names_are_forwarded_cached_and_learned() {
    let b = bed("dnsf", UPSTREAM);
    let d = b.dig(&["www.outside.test"]);
    assert_eq!(
        (d.status.as_str(), data(&d)),
        ("NOERROR", vec!["198.18.100.80"]),
        "{}",
        d.text
    );
    assert!(d.flags.split(' ').any(|f| f == "ra"), "{}", d.text);
    let again = b.dig(&["WWW.outside.TEST"]);
    assert_eq!(data(&again), ["198.18.100.80"]);
    assert!(
        again.text.contains("WWW.outside.TEST."),
        "the question comes back as asked: {}",
        again.text
    );
    let nx = b.dig(&["nothing.outside.test"]);
    assert_eq!(nx.status, "NXDOMAIN", "{}", nx.text);

    // dnsmasq truncates 60 addresses for a client without EDNS; tunloom asks it
    // again over TCP, then tells dig to do the same.
    let big = b.dig(&["+noedns", "big.outside.test"]);
    assert!(big.text.contains("Truncated, retrying in TCP mode"), "{}", big.text);
    assert_eq!(
        (big.status.as_str(), big.answers.len()),
        ("NOERROR", 60),
        "{}",
        big.text
    );

    let s = b.dns_stats();
    assert!(s["forwarded"].as_u64().unwrap() >= 3, "{s}");
    assert!(
        s["cache_hits"].as_u64().unwrap() >= 1,
        "the second query came from the cache: {s}"
    );
    assert!(s["upstream_tcp"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["upstream_timeouts"], 0, "{s}");

    let (status, body) = b.host.api("GET", "/api/v1/dns-cache", None).unwrap();
    assert_eq!(status, 200);
    let cache: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let entries = cache["entries"].as_array().unwrap();
    let www = entries
        .iter()
        .find(|e| e["hostname"] == "www.outside.test")
        .expect("learned");
    assert_eq!(www["ips"], serde_json::json!(["198.18.100.80"]));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(www["last_seen"].as_u64().unwrap()) < 60, "{www}");
    assert!(
        !entries.iter().any(|e| e["hostname"] == "nothing.outside.test"),
        "no addresses, nothing learned"
    );
}

/// An upstream that never answers: SERVFAIL once the timeout passes, and local
/// names are answered at once meanwhile.
fn a_silent_upstream_is_servfail_in_time_and_local_names_still_answer() {
    let b = bed("dnss", SILENT);
    assert_eq!(
        b.weave("PUT", "/name/web/198.19.64.5", Some("fqdn=web.weave.local")),
        200
    );
    let (w, started) = (b.w.name.clone(), Instant::now());
    let slow = std::thread::spawn(move || (dig_in(&w, GATEWAY, &["www.outside.test"]), started.elapsed()));
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    let local = b.dig(&["web.weave.local"]);
    let local_took = t.elapsed();
    let (d, took) = slow.join().unwrap();
    assert_eq!(data(&local), ["198.19.64.5"], "{}", local.text);
    assert!(
        local_took < Duration::from_millis(900),
        "a local name waits for nothing: {local_took:?}"
    );
    assert_eq!(d.status, "SERVFAIL", "{}", d.text);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "SERVFAIL after the 1 s timeout: {took:?}"
    );
    let s = b.dns_stats();
    assert!(s["upstream_timeouts"].as_u64().unwrap() >= 1, "{s}");
    assert!(s["servfail"].as_u64().unwrap() >= 1, "{s}");
}

/// A query for `name` (type A, RD set) with id `id`.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Thousands of queries one after another, and TCP clients that trickle bytes into
/// every connection slot: the server keeps answering, and TCP comes back once the
/// trickling connections are closed as idle.
fn many_queries_and_trickling_tcp_clients_leave_the_server_answering() {
    let b = bed("dnsm", UPSTREAM);
    assert_eq!(
        b.weave("PUT", "/name/web/198.19.64.5", Some("fqdn=web.weave.local")),
        200
    );
    // Each query answered, in order: a buffer lost per query would stop this
    // after about a thousand.
    let answered = common::in_ns(&b.w.name, || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut buf = [0u8; 512];
        (0..3000u16)
            .filter(|i| {
                s.send_to(&query(*i, "web.weave.local"), (GATEWAY, 53)).unwrap();
                matches!(s.recv(&mut buf), Ok(n) if n > 12 && buf[..2] == i.to_be_bytes())
            })
            .count()
    });
    assert_eq!(answered, 3000);
    // 40 connections that send a length and then a byte at a time: more than the
    // slots there are.
    let (w, stop) = (
        b.w.name.clone(),
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
    );
    let stop2 = stop.clone();
    let trickle = std::thread::spawn(move || {
        netns::enter(&w).unwrap();
        let mut conns: Vec<std::net::TcpStream> = (0..40)
            .filter_map(|_| {
                std::net::TcpStream::connect_timeout(
                    &(GATEWAY.parse::<std::net::IpAddr>().unwrap(), 53).into(),
                    Duration::from_secs(1),
                )
                .ok()
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
            for c in &mut conns {
                let _ = std::io::Write::write_all(c, &[0x01]);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    // UDP is unaffected meanwhile.
    assert_eq!(data(&b.dig(&["web.weave.local"])), ["198.19.64.5"]);
    // TCP is back within the idle limit (10 s) and a little.
    let t0 = Instant::now();
    loop {
        let d = b.dig(&["+tcp", "+time=1", "web.weave.local"]);
        if data(&d) == ["198.19.64.5"] {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "TCP never came back: {}",
            d.text
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    trickle.join().unwrap();
}

/// An upstream whose answer names a record by a compression pointer to itself: the
/// client gets SERVFAIL, and nothing of it is cached or learned.
fn a_malformed_upstream_answer_is_servfail_and_not_cached() {
    let b = bed("dnsx", "198.18.100.4");
    b._o.ip(&["addr", "add", "198.18.100.4/24", "dev", "eth0"]).unwrap();
    let o = b._o.name.clone();
    let fake = std::thread::spawn(move || {
        netns::enter(&o).unwrap();
        let s = std::net::UdpSocket::bind("198.18.100.4:53").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 512];
        let mut served = 0;
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            // The question back, then an answer whose owner points at itself.
            let mut r = buf[..n].to_vec();
            r[2] |= 0x80;
            r[7] = 1;
            let at = r.len() as u16;
            r.extend_from_slice(&(0xc000 | at).to_be_bytes());
            r.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 18, 1, 1]);
            s.send_to(&r, from).unwrap();
            served += 1;
        }
        served
    });
    for _ in 0..2 {
        let d = b.dig(&["+noedns", "loop.example"]);
        assert_eq!(d.status, "SERVFAIL", "{}", d.text);
    }
    let s = b.dns_stats();
    assert_eq!(s["upstream_malformed"], 2, "both asked upstream, none cached: {s}");
    assert_eq!(s["cache_hits"], 0, "{s}");
    let (_, body) = b.host.api("GET", "/api/v1/dns-cache", None).unwrap();
    assert!(
        !String::from_utf8_lossy(&body).contains("loop.example"),
        "nothing learned"
    );
    assert_eq!(fake.join().unwrap(), 2);
}

fn main() -> std::process::ExitCode {
    const NEEDS: Needs = Needs::NetnsWith(&["dig", "dnsmasq"]);
    common::main(&[
        (
            "workload_names_resolve_at_the_gateway",
            NEEDS,
            workload_names_resolve_at_the_gateway,
        ),
        (
            "a_name_answers_as_soon_as_it_is_registered_and_is_gone_once_deleted",
            NEEDS,
            a_name_answers_as_soon_as_it_is_registered_and_is_gone_once_deleted,
        ),
        (
            "other_names_are_forwarded_cached_and_learned",
            NEEDS,
            other_names_are_forwarded_cached_and_learned,
        ),
        (
            "a_silent_upstream_is_servfail_in_time_and_local_names_still_answer",
            NEEDS,
            a_silent_upstream_is_servfail_in_time_and_local_names_still_answer,
        ),
        (
            "many_queries_and_trickling_tcp_clients_leave_the_server_answering",
            NEEDS,
            many_queries_and_trickling_tcp_clients_leave_the_server_answering,
        ),
        (
            "a_malformed_upstream_answer_is_servfail_and_not_cached",
            NEEDS,
            a_malformed_upstream_answer_is_servfail_and_not_cached,
        ),
    ])
}
