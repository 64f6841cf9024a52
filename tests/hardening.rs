//! Hostile and careless clients against a real daemon in network namespaces: slow and
//! never-reading connections, descriptor exhaustion, endless header lines, ids that
//! decode alike, damaged state files, API calls that would cut the overlay, too many
//! peers, kill -9 under writing clients, and a flood of garbage datagrams. Each case
//! first reproduced the failure it guards against; each runs in its own namespace,
//! bounded in time. Needs root (ignored without it unless TUNLOOM_REQUIRE_NETNS=1).

mod common;

use common::Needs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tunloom_lab::netns::{self, Netns};
use tunloom_lab::testbed::{HostSpec, OneHost, Proc, TempDir, TwoHosts, OVERLAY};

/// A TCP connection to 127.0.0.1:`port` from source address 127.0.0.`from`.
fn connect_from(from: u8, port: u16) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::from((Ipv4Addr::new(127, 0, 0, from), 0)).into())?;
    sock.connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)).into(), Duration::from_secs(2))?;
    Ok(sock.into())
}

/// One request on a fresh connection: status and how long the answer took.
fn timed(port: u16, request: &str) -> (u16, Duration) {
    let t0 = Instant::now();
    let Ok(mut c) = connect_from(1, port) else {
        return (0, t0.elapsed());
    };
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(request.as_bytes()).unwrap();
    let mut buf = [0u8; 64];
    let n = c.read(&mut buf).unwrap_or(0);
    let status = std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|s| s.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, t0.elapsed())
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99).div_ceil(100).saturating_sub(1)]
}

/// 200 connections that send a head a byte at a time, announce a body that never
/// comes, or pipeline requests and never read, held for 30 s from ten addresses,
/// while 100 ordinary requests all succeed, quickly.
fn slow_and_never_reading_clients_do_not_freeze_a_listener() {
    let mut h = OneHost::create("slow", &common::exe(), "[node]\nname = \"slow\"\n").unwrap();
    h.start().unwrap();
    let ns = h.ns.name.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let held = Arc::new(AtomicUsize::new(0));
    let (s, hd) = (stop.clone(), held.clone());
    let attackers = std::thread::spawn(move || {
        netns::enter(&ns).unwrap();
        let open = |i: usize| -> Option<TcpStream> {
            let mut c = connect_from(2 + (i % 10) as u8, 6786).ok()?;
            let first: Vec<u8> = match i % 3 {
                0 => b"GET /health HTTP/1.1\r\nX-Slow: ".to_vec(),
                1 => b"POST /api/v1/stats HTTP/1.1\r\nContent-Length: 100000\r\n\r\n".to_vec(),
                // Large answers (60 KB each), cheap to make: 3 MB that no one reads.
                _ => b"GET /api/v1/openapi.json HTTP/1.1\r\n\r\n".repeat(50),
            };
            c.write_all(&first).ok()?;
            c.set_nonblocking(true).ok()?;
            Some(c)
        };
        let mut conns: Vec<Option<TcpStream>> = (0..200).map(open).collect();
        hd.store(conns.iter().flatten().count(), Ordering::Relaxed);
        let t0 = Instant::now();
        while !s.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(35) {
            std::thread::sleep(Duration::from_millis(500));
            for (i, c) in conns.iter_mut().enumerate() {
                // Slow ones trickle a byte; any the server closed come back.
                let alive = match c {
                    Some(conn) if i % 3 < 2 => conn.write(b"a").is_ok(),
                    Some(_) => true,
                    None => false,
                };
                if !alive {
                    *c = open(i);
                }
            }
            hd.store(conns.iter().flatten().count(), Ordering::Relaxed);
        }
    });
    // Measure once the attackers are in place.
    let deadline = Instant::now() + Duration::from_secs(10);
    while held.load(Ordering::Relaxed) < 190 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut lat = Vec::new();
    let mut held_seen = usize::MAX;
    for _ in 0..100 {
        let (status, t) = common::in_ns(&h.ns.name, || timed(6786, "GET /health HTTP/1.1\r\n\r\n"));
        assert_eq!(status, 200, "{}", h.log());
        lat.push(t);
        held_seen = held_seen.min(held.load(Ordering::Relaxed));
        std::thread::sleep(Duration::from_millis(290));
    }
    stop.store(true, Ordering::Relaxed);
    attackers.join().unwrap();
    assert!(held_seen >= 190, "the attackers held their connections: {held_seen}");
    let p = p99(lat);
    assert!(p < Duration::from_millis(100), "p99 {p:?}");
    eprintln!("100 requests beside 200 slow clients: p99 {p:?}");
}

/// With the descriptor limit at 1024, 1,800 idle connections run the daemon out of
/// descriptors; the listeners back off instead of dying, and answer again once the
/// connections close.
fn running_out_of_descriptors_does_not_kill_a_listener() {
    let ns = Netns::create(&format!("tl-fd-{}", std::process::id())).unwrap();
    let dir = TempDir::new(&format!("tunloom-fd-{}", std::process::id())).unwrap();
    let cfg = dir.0.join("t.toml");
    std::fs::write(&cfg, "[node]\nname = \"fd\"\n").unwrap();
    let log = dir.0.join("log");
    let logf = std::fs::File::create(&log).unwrap();
    let child = ns
        .command("prlimit", &["--nofile=1024"])
        .arg(common::exe())
        .args(["run", "-c"])
        .arg(&cfg)
        .arg("--state-dir")
        .arg(dir.0.join("state"))
        .stdout(logf.try_clone().unwrap())
        .stderr(logf)
        .spawn()
        .unwrap();
    let mut p = Proc::new(child, "tunloom under prlimit");
    let ask = |port: u16, req: &'static str| common::in_ns(&ns.name, move || timed(port, req).0);
    let deadline = Instant::now() + Duration::from_secs(15);
    while ask(6786, "GET /health HTTP/1.1\r\n\r\n") != 200 {
        assert!(Instant::now() < deadline, "{}", std::fs::read_to_string(&log).unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    // This process needs more descriptors than the daemon has.
    let raised = std::process::Command::new("prlimit")
        .args(["--pid", &std::process::id().to_string(), "--nofile=8192:8192"])
        .status()
        .unwrap();
    assert!(raised.success());
    let name = ns.name.clone();
    let conns: Vec<TcpStream> = common::in_ns(&name, || {
        (0..1800)
            .filter_map(|i| connect_from(2 + (i / 40) as u8, if i % 2 == 0 { 6784 } else { 6786 }).ok())
            .collect()
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(p.exited().is_none(), "the daemon is alive");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("cannot accept"),
        "exhaustion was reached and said: {text}"
    );
    drop(conns);
    let deadline = Instant::now() + Duration::from_secs(5);
    while ask(6784, "GET /status HTTP/1.1\r\n\r\n") != 200 || ask(6786, "GET /health HTTP/1.1\r\n\r\n") != 200 {
        assert!(Instant::now() < deadline, "both listeners answer again");
        std::thread::sleep(Duration::from_millis(100));
    }
    p.stop(Duration::from_secs(5));
}

/// Four header lines of 256 MiB that never end: each gets a 431 after 16 KiB, and
/// the daemon's memory is what it was.
fn a_header_line_that_never_ends_is_a_431_and_costs_no_memory() {
    let mut h = OneHost::create("hdr", &common::exe(), "[node]\nname = \"hdr\"\n").unwrap();
    h.start().unwrap();
    let pid = h.pid().unwrap();
    for _ in 0..3 {
        common::in_ns(&h.ns.name, || timed(6786, "GET /api/v1/stats HTTP/1.1\r\n\r\n"));
    }
    let before = rss_kib(pid);
    let statuses: Vec<u16> = (0..4)
        .map(|i| {
            let ns = h.ns.name.clone();
            std::thread::spawn(move || {
                netns::enter(&ns).unwrap();
                let c = connect_from(2 + i, 6786).unwrap();
                let mut w = c.try_clone().unwrap();
                let writer = std::thread::spawn(move || {
                    let chunk = vec![b'a'; 1 << 20];
                    let _ = w.write_all(b"GET /health HTTP/1.1\r\nX-Endless: ");
                    for _ in 0..256 {
                        if w.write_all(&chunk).is_err() {
                            break;
                        }
                    }
                });
                let mut r = c;
                r.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut head = [0u8; 12];
                let status = match r.read_exact(&mut head) {
                    Ok(()) => String::from_utf8_lossy(&head[9..12]).parse().unwrap_or(0),
                    Err(_) => 0,
                };
                drop(r);
                writer.join().unwrap();
                status
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert_eq!(statuses, [431; 4]);
    std::thread::sleep(Duration::from_millis(300));
    let after = rss_kib(pid);
    assert!(
        after <= before + before / 10,
        "RSS {before} KiB before, {after} KiB after"
    );
    assert_eq!(
        common::in_ns(&h.ns.name, || timed(6786, "GET /health HTTP/1.1\r\n\r\n")).0,
        200
    );
}

/// Ids that do not decode to UTF-8 are refused, so two of them never name one
/// container; damaged or empty state files stop the start with one clear line;
/// `state check` and `state backup` work, the latter while the daemon runs.
fn strict_ids_and_state_that_fails_safe() {
    let mut h = OneHost::create("state", &common::exe(), "[node]\nname = \"state\"\n").unwrap();
    h.start().unwrap();
    for id in ["%FF", "%FE"] {
        let (status, body) = h.weave("POST", &format!("/ip/{id}"), None).unwrap();
        assert_eq!(status, 400, "{body}");
        assert!(body.contains(id), "{body}");
    }
    assert_eq!(h.weave("POST", "/ip/c1", None).unwrap().0, 200);
    // A consistent copy while the daemon runs.
    let backup = h.dir.0.join("backup");
    // (In the daemon's namespace: that is where its API listens.)
    let out =
        h.ns.command(common::exe().to_str().unwrap(), &["state", "backup"])
            .arg(&backup)
            .arg("--state-dir")
            .arg(h.state_dir())
            .output()
            .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let refused = std::process::Command::new(common::exe())
        .args(["state", "check", "--state-dir"])
        .arg(h.state_dir())
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("stop it first"));
    h.stop(false);
    let check = |dir: &std::path::Path| {
        std::process::Command::new(common::exe())
            .args(["state", "check", "--state-dir"])
            .arg(dir)
            .output()
            .unwrap()
    };
    for dir in [h.state_dir(), backup.clone()] {
        let out = check(&dir);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("integrity OK"));
    }
    // The backup is a state directory tunloom runs on, with the allocation in it.
    let db = h.state_dir().join("state.redb");
    std::fs::copy(backup.join("state.redb"), &db).unwrap();
    h.start().unwrap();
    assert_eq!(h.weave("GET", "/ip/c1", None).unwrap(), (200, "10.32.0.2/12".into()));
    h.stop(false);
    // Damaged: truncated, zeroed in the middle, empty. Each: exit 1, one line that
    // names the file and says what to do; never a panic.
    let good = std::fs::read(&db).unwrap();
    let mut header = good.clone();
    header[..4096].fill(0);
    let garbage: Vec<u8> = (0..good.len()).map(|i| (i * 7919 % 251) as u8).collect();
    for (what, bytes) in [
        ("truncated", good[..good.len() / 3].to_vec()),
        ("header zeroed", header),
        ("garbage", garbage),
        ("empty", vec![]),
    ] {
        std::fs::write(&db, &bytes).unwrap();
        let out =
            h.ns.command(common::exe().to_str().unwrap(), &["run", "-c"])
                .arg(h.config_path())
                .arg("--state-dir")
                .arg(h.state_dir())
                .env("RUST_LOG", "off")
                .output()
                .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert!(
            err.contains("state.redb") && err.contains("restore it from a backup") && !err.contains("panicked"),
            "{what}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{what}: one line: {err}");
        assert_eq!(check(&h.state_dir()).status.code(), Some(1), "{what}");
    }
    std::fs::write(&db, &good).unwrap();
}

/// API calls that would cut the overlay are refused with the reason, and the overlay
/// keeps forwarding; a peer that is up cannot be removed; the peer table is bounded;
/// a flood of 100,000 garbage datagrams changes nothing.
fn the_overlay_cannot_be_cut_by_its_own_api() {
    let spec = HostSpec {
        control: "max_peers = 64\nsync_timeout_ms = 300\n".into(),
        ..HostSpec::default()
    };
    let mut h = TwoHosts::create("cut", &common::exe(), &spec, common::never()).unwrap();
    h.start(0).unwrap();
    h.start(1).unwrap();
    h.wait_peers("up", Duration::from_secs(15)).unwrap();
    let cases = [
        ("/expose/198.18.0.2/32", "underlay address of peer"),
        ("/expose/0.0.0.0/0", "default route"),
        ("/expose/255.255.255.255/32", "broadcast"),
        ("/expose/127.0.0.2/8", "loopback"),
        ("/expose/224.0.0.1/32", "multicast"),
        ("/expose/198.19.5.1/8", "not inside the overlay"),
        ("/expose/10.99.0.1/32", "not inside the overlay"),
    ];
    for (path, why) in cases {
        let (status, body) = h.weave(0, "POST", path, None).unwrap();
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains(why), "{path}: {body}");
    }
    for (peer, why) in [
        ("198.19.2.1", "inside the overlay"),
        ("198.18.0.1", "this node itself"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.9", "multicast"),
        ("198.18.0.2:0", "port 0"),
    ] {
        let (status, body) = h.weave(0, "POST", "/connect", Some(&format!("peer={peer}"))).unwrap();
        assert_eq!(status, 400, "{peer}: {body}");
        assert!(body.contains(why), "{peer}: {body}");
    }
    assert!(!h.ping(0, OVERLAY[1], 3, "0.05").unwrap().is_empty(), "still forwards");
    // More peers than control.max_peers: refused, in one request or added up.
    let many: Vec<String> = (0..65).map(|i| format!("peer=198.18.1.{i}")).collect();
    let (status, body) = h.weave(0, "POST", "/connect", Some(&many.join("&"))).unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("max_peers"), "{body}");
    // A peer that is silent holds no one up: /status stays fast while 32 connects
    // to it wait.
    let slow: Vec<_> = (0..32)
        .map(|i| {
            let ns = h.a.name.clone();
            std::thread::spawn(move || {
                tunloom_lab::testbed::weave_request(&ns, "POST", "/connect", Some(&format!("peer=198.18.2.{i}")))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    let lat: Vec<Duration> = (0..20)
        .map(|_| {
            let t0 = Instant::now();
            assert_eq!(h.weave(0, "GET", "/status", None).unwrap().0, 200);
            t0.elapsed()
        })
        .collect();
    for t in slow {
        assert_eq!(t.join().unwrap().unwrap().0, 200);
    }
    let p = p99(lat);
    assert!(
        p < Duration::from_millis(100),
        "/status p99 {p:?} beside 32 waiting connects"
    );
    assert_eq!(
        h.weave(0, "POST", "/connect", Some("peer=198.18.0.2&replace=true"))
            .unwrap()
            .0,
        200
    );
    let s = h.stats(0).unwrap();
    assert_eq!(s["peers"].as_array().unwrap().len(), 1, "back to one peer");
    // 100,000 garbage datagrams at a's data and control ports, from b.
    let b_ns = h.b.name.clone();
    common::in_ns(&b_ns, || {
        let sock = UdpSocket::bind("198.18.0.2:0").unwrap();
        let mut x = 7u64;
        for i in 0..100_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 200) as usize;
            let d: Vec<u8> = (0..len).map(|k| (x >> (k % 8)) as u8).collect();
            let _ = sock.send_to(&d, ("198.18.0.1", if i % 2 == 0 { 4789 } else { 6783 }));
            if i % 1000 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // Zero-length datagrams are counted too.
        for _ in 0..10 {
            let _ = sock.send_to(&[], ("198.18.0.1", 4789));
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let s = h.stats(0).unwrap();
    assert_eq!(s["peers"][0]["state"], "up", "garbage does not take the peer down");
    assert!(
        !h.ping(0, OVERLAY[1], 3, "0.05").unwrap().is_empty(),
        "and a still forwards"
    );
    // A peer that is up is not removed (its space would be handed out twice).
    let (status, body) = h.weave(0, "DELETE", "/peer/tb-b", None).unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("tb-b is up"), "{body}");
    h.stop(1, true);
    h.wait_peers("down", Duration::from_secs(5)).unwrap();
    let (status, body) = h.weave(0, "DELETE", "/peer/tb-b", None).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("IPs taken over from tb-b"), "{body}");
}

/// 20 times: 8 clients allocate as fast as they can, the daemon is killed with
/// SIGKILL at a random moment, and after a restart every acknowledged allocation is
/// there and no address is held twice.
fn kill_9_twenty_times_under_writing_clients_loses_nothing() {
    let mut h = OneHost::create("k9", &common::exe(), "[node]\nname = \"k9\"\n").unwrap();
    let mut acked: Vec<(String, String)> = Vec::new();
    let mut x = 0x9e3779b97f4a7c15u64;
    for round in 0..20 {
        h.start().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let (ns, stop) = (h.ns.name.clone(), stop.clone());
                std::thread::spawn(move || {
                    netns::enter(&ns).unwrap();
                    let mut got = Vec::new();
                    for i in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let id = format!("r{round}-w{w}-{i}");
                        match tunloom_lab::testbed::weave_request(&ns, "POST", &format!("/ip/{id}"), None) {
                            Ok((200, addr)) => got.push((id, addr)),
                            _ => break,
                        }
                    }
                    got
                })
            })
            .collect();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        std::thread::sleep(Duration::from_millis(100 + x % 400));
        h.stop(true);
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            acked.extend(w.join().unwrap());
        }
    }
    h.start().unwrap();
    let mut seen = std::collections::HashSet::new();
    for (id, addr) in &acked {
        assert_eq!(
            h.weave("GET", &format!("/ip/{id}"), None).unwrap(),
            (200, addr.clone()),
            "{id}"
        );
        assert!(seen.insert(addr.clone()), "{addr} held twice");
    }
    assert!(acked.len() > 100, "the clients wrote: {}", acked.len());
    eprintln!("20 kill -9 rounds: {} acknowledged allocations, all there", acked.len());
}

fn main() -> std::process::ExitCode {
    common::main(&[
        (
            "slow_and_never_reading_clients_do_not_freeze_a_listener",
            Needs::Netns,
            slow_and_never_reading_clients_do_not_freeze_a_listener,
        ),
        (
            "running_out_of_descriptors_does_not_kill_a_listener",
            Needs::NetnsWith(&["prlimit"]),
            running_out_of_descriptors_does_not_kill_a_listener,
        ),
        (
            "a_header_line_that_never_ends_is_a_431_and_costs_no_memory",
            Needs::Netns,
            a_header_line_that_never_ends_is_a_431_and_costs_no_memory,
        ),
        (
            "strict_ids_and_state_that_fails_safe",
            Needs::Netns,
            strict_ids_and_state_that_fails_safe,
        ),
        (
            "the_overlay_cannot_be_cut_by_its_own_api",
            Needs::NetnsWith(&["ping"]),
            the_overlay_cannot_be_cut_by_its_own_api,
        ),
        (
            "kill_9_twenty_times_under_writing_clients_loses_nothing",
            Needs::Netns,
            kill_9_twenty_times_under_writing_clients_loses_nothing,
        ),
    ])
}
