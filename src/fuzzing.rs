//! Fuzz entry points: one function per parser, taking arbitrary bytes. The cargo-fuzz
//! targets in `fuzz/` call them, and the `corpus` tests replay every seed and every
//! past crash through them, so the regression guard needs no fuzzer. The module exists
//! only under `cfg(fuzzing)` (set by cargo-fuzz) and in `cargo test`.
//!
//! Each entry point asserts invariants, not only "no panic": a verdict's ranges stay
//! inside its buffer, an encapsulated packet is what the peer accepts, parse → emit →
//! parse is stable, ICMP errors and coalesced superpackets carry valid lengths and
//! checksums, API parsing answers 200 or a 4xx, never anything else. Nothing here
//! performs I/O.

use crate::config::Config;
use crate::control::router::Request;
use crate::pipeline::coalesce::{Coalescer, Range};
use crate::pipeline::segment::{self, Arena, Gso, L4};
use crate::pipeline::{inside, outside, HostPath, Verdict, ENCAP_LEN};
use crate::testkit::{pair_with_networks, HEADROOM};
use crate::wire::{checksum, control, icmp, virtio, vxlan};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

/// The two nodes of `testkit::pair_with_networks`: the prefixes of `pair` outside
/// every network, and three networks (one internal) across both nodes, so the
/// fuzzer reaches isolation, per-network VNIs and the hand-back to the host.
fn snapshots() -> &'static (crate::snapshot::Snapshot, crate::snapshot::Snapshot) {
    static P: OnceLock<(crate::snapshot::Snapshot, crate::snapshot::Snapshot)> = OnceLock::new();
    P.get_or_init(pair_with_networks)
}

/// Checks that `pkt` is a well-formed IPv4/IPv6 header with a length that matches
/// the packet. What follows the header (extension headers, transport) is the
/// receiver's to judge: tunloom forwards it as it came.
fn assert_ip(pkt: &[u8], what: &str) {
    let total = match pkt.first().map(|b| b >> 4) {
        Some(4) => etherparse::Ipv4HeaderSlice::from_slice(pkt)
            .map(|h| usize::from(h.total_len()))
            .ok(),
        Some(6) => etherparse::Ipv6HeaderSlice::from_slice(pkt)
            .map(|h| 40 + usize::from(h.payload_length()))
            .ok(),
        _ => None,
    };
    assert_eq!(total, Some(pkt.len()), "{what} is not a well-formed IP packet");
}

/// The source and destination addresses of an IPv4/IPv6 packet.
fn addresses(pkt: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match pkt.first()? >> 4 {
        4 => etherparse::Ipv4HeaderSlice::from_slice(pkt)
            .ok()
            .map(|h| (IpAddr::V4(h.source_addr()), IpAddr::V4(h.destination_addr()))),
        6 => etherparse::Ipv6HeaderSlice::from_slice(pkt)
            .ok()
            .map(|h| (IpAddr::V6(h.source_addr()), IpAddr::V6(h.destination_addr()))),
        _ => None,
    }
}

/// Inside path: the input is a virtio-net header (10 bytes) and a packet from the
/// TUN device, as a worker reads them.
pub fn inside(data: &[u8]) {
    let (a, b) = snapshots();
    if data.len() < virtio::HEADER_LEN {
        return;
    }
    let (vh, pkt) = data.split_at(virtio::HEADER_LEN);
    let Ok(vh) = virtio::Repr::parse(vh) else { return };
    assert_eq!(virtio::Repr::parse(&vh.to_bytes()), Ok(vh), "virtio header round trip");
    let mut buf = vec![0u8; HEADROOM + pkt.len()];
    buf[HEADROOM..].copy_from_slice(pkt);
    let gso = match vh.gso_type {
        virtio::GsoType::None => {
            if vh.needs_csum {
                let _ = segment::complete_checksum(
                    &mut buf[HEADROOM..],
                    usize::from(vh.csum_start),
                    usize::from(vh.csum_offset),
                );
            }
            None
        }
        t => Some(Gso {
            l4: if t == virtio::GsoType::UdpL4 { L4::Udp } else { L4::Tcp },
            l3_len: usize::from(vh.csum_start),
            size: usize::from(vh.gso_size),
        }),
    };
    let mut scratch = vec![0u8; 1500];
    let len = pkt.len();
    match inside::process(a, &mut buf, HEADROOM, len, gso.as_ref(), &mut scratch) {
        Verdict::Forward {
            peer, start, len: n, ..
        } => {
            assert_eq!(start, HEADROOM - ENCAP_LEN, "encapsulation goes into the headroom");
            assert!(start + n <= buf.len(), "forwarded range inside the buffer");
            assert!(usize::from(peer) < a.peers.len());
            let d = &buf[start..start + n];
            let vx = vxlan::Packet::new_checked(d).expect("emitted VXLAN header");
            // The VNI is the packet's network's: the source's, else the destination's.
            let (src, dst) = addresses(&d[ENCAP_LEN..]).expect("an IPv4/IPv6 packet is forwarded");
            let vni = a.network(src).or(a.network(dst)).map_or(a.vni, |n| n.vni);
            assert_eq!(vxlan::Repr::parse(&vx), Ok(vxlan::Repr { vni }));
            let src = IpAddr::V4(Ipv4Addr::from(crate::testkit::A_UNDERLAY));
            match gso {
                None => {
                    // Larger than the MTU only as IPv4 that may be fragmented (the
                    // outer packet then is); DF set or IPv6 gets "too big" instead.
                    let inner = &d[ENCAP_LEN..];
                    assert!(
                        n - ENCAP_LEN <= usize::from(a.mtu) || (inner[0] >> 4 == 4 && inner[6] & 0x40 == 0),
                        "MTU enforced"
                    );
                    // What a forwards, b either delivers whole or drops for a reason
                    // of its own (b checks sources; a does not).
                    if let Verdict::Deliver { start, len } = outside::process(b, src, d) {
                        assert_eq!((start, len), (ENCAP_LEN, n - ENCAP_LEN));
                    }
                }
                Some(g) => {
                    let mut arena = Arena::new(256 * 1024);
                    let mut out = Vec::with_capacity(2048);
                    if let Ok(k) = segment::split(d, &g, &mut arena, &mut out) {
                        assert_eq!(k, out.len());
                        let mut payload = 0;
                        for s in &out {
                            assert!(s.payload_start + s.payload_len <= d.len());
                            assert!(s.payload_len <= g.size && s.payload_len > 0);
                            let mut seg = arena.bytes()[s.hdr_start..s.hdr_start + s.hdr_len].to_vec();
                            seg.extend_from_slice(&d[s.payload_start..s.payload_start + s.payload_len]);
                            assert!(seg.len() - ENCAP_LEN <= usize::from(a.mtu), "segments fit the MTU");
                            assert_ip(&seg[ENCAP_LEN..], "a segment");
                            payload += s.payload_len;
                        }
                        assert_eq!(
                            ENCAP_LEN + out[0].hdr_len - ENCAP_LEN + payload,
                            n,
                            "segments cover it all"
                        );
                    }
                }
            }
        }
        Verdict::Reply { len: n, .. } => {
            assert!(n <= scratch.len());
            assert_ip(&scratch[..n], "an ICMP error");
        }
        Verdict::ToHost { start, len: n, path } => {
            assert_eq!(start, HEADROOM, "handed back in place");
            assert!(n <= len, "handed-back range inside the packet");
            let back = &buf[start..start + n];
            let (src, dst) = addresses(back).expect("an IPv4/IPv6 packet goes back");
            let (sn, dn) = (a.network(src), a.network(dst));
            assert!(!inside::isolated(sn, dn), "an isolated packet went back to the host");
            match path {
                HostPath::Local => assert!(dn.is_some(), "back to a container outside every network"),
                HostPath::Egress => assert!(
                    sn.is_some_and(|n| !n.internal) && dn.is_none(),
                    "egress not from a network"
                ),
            }
            if gso.is_none() {
                assert_ip(back, "a packet handed back");
            }
        }
        Verdict::Drop(_) | Verdict::Service { .. } => {}
        Verdict::Deliver { .. } => panic!("inside never delivers"),
    }
}

/// Outside path: the input is a run of datagrams, each behind a 2-byte length (the
/// low 15 bits; the top bit set means it comes from an address that is no peer,
/// otherwise from peer a), as one GRO receive buffer holds them; delivered packets
/// are coalesced as a worker coalesces them.
pub fn outside(data: &[u8]) {
    let (_, b) = snapshots();
    let peer = IpAddr::V4(Ipv4Addr::from(crate::testkit::A_UNDERLAY));
    let stranger = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 77));
    let mut bufs = vec![data.to_vec()];
    let mut ranges = Vec::new();
    let mut memo = outside::Memo::default();
    let mut at = 0;
    while at + 2 <= data.len() {
        let raw = u16::from_be_bytes([data[at], data[at + 1]]);
        let n = usize::from(raw & 0x7fff);
        let src = if raw & 0x8000 != 0 { stranger } else { peer };
        let d0 = at + 2;
        let d1 = (d0 + n).min(data.len());
        let d = &data[d0..d1];
        let v = outside::process_memo(b, src, d, &mut memo);
        assert_eq!(v, outside::process(b, src, d), "the memo changes no verdict");
        if src == stranger {
            assert!(!matches!(v, Verdict::Deliver { .. }), "delivered from an unknown peer");
        }
        if let Verdict::Deliver { start, len } = v {
            assert!(start + len <= d.len(), "delivered range inside the datagram");
            assert_ip(&d[start..start + len], "a delivered packet");
            ranges.push(Range {
                buf: 0,
                start: (d0 + start) as u32,
                len: len as u32,
            });
        }
        at = d1;
    }
    let mut co = Coalescer::new(64, 256, true, true);
    for r in &ranges {
        let p = bufs[0][r.start as usize..(r.start + r.len) as usize].to_vec();
        if !co.push(*r, &p, &bufs) {
            break;
        }
    }
    co.finish(&mut bufs);
    for t in &co.trains {
        let h = t.head;
        let mut whole = bufs[0][h.start as usize..(h.start + h.len) as usize].to_vec();
        for r in &co.parts[t.first..t.first + t.count] {
            whole.extend_from_slice(&bufs[0][r.start as usize..(r.start + r.len) as usize]);
        }
        assert_eq!(whole.len(), t.len, "train length");
        let vh = virtio::Repr::parse(&t.vnet).expect("train virtio header");
        if t.count > 0 {
            assert_ip(&whole, "a coalesced superpacket");
            let l3 = usize::from(vh.csum_start);
            let proto = if vh.gso_type == virtio::GsoType::UdpL4 { 17 } else { 6 };
            // The partial checksum completes to a valid one over the whole train.
            let mut full = whole.clone();
            segment::complete_checksum(&mut full, l3, usize::from(vh.csum_offset)).expect("checksum field inside");
            let sum = checksum::pseudo_header(&full, proto, full.len() - l3) + checksum::sum(&full[l3..]);
            assert_eq!(checksum::fold(sum), 0xffff, "coalesced TCP or UDP checksum");
        } else {
            assert_eq!(vh, virtio::Repr::NONE);
        }
    }
}

/// Peer control messages: parse, check signatures with and without a key, and
/// parse → emit → parse stability, then hand the bytes to a peer table.
pub fn control(data: &[u8]) {
    const KEY: &[u8] = b"fuzzing-secret";
    let from = "198.18.0.9:6783".parse().expect("static");
    let now = std::time::Instant::now();
    let Ok(p) = control::Packet::new_checked(data) else {
        peers(false).handle(data, from, now);
        return;
    };
    let _ = p.verify(None);
    let _ = p.verify(Some(KEY));
    if let Ok(r) = control::Repr::parse(&p) {
        for key in [None, Some(KEY)] {
            let mut buf = vec![0u8; r.buffer_len(key.is_some())];
            let n = r.emit(&mut buf, key).expect("a parsed message can be emitted");
            assert_eq!(n, buf.len());
            let p2 = control::Packet::new_checked(&buf[..]).expect("emitted message checks");
            assert_eq!(p2.verify(key), Ok(()), "own signature verifies");
            let r2 = control::Repr::parse(&p2).expect("emitted message parses");
            assert_eq!(r2, r, "parse -> emit -> parse is stable");
        }
    }
    peers(false).handle(data, from, now);
    // With a cluster secret, a message that does not carry its signature changes
    // nothing.
    let mut signed = peers(true);
    signed.handle(data, from, now);
    if p.verify(Some(KEY)).is_err() {
        assert!(signed.peers().is_empty(), "an unauthenticated message was trusted");
    }
}

/// A fresh peer table per input, so a long run does not accumulate peers; with
/// `secret`, one whose cluster secret is the control target's key.
fn peers(secret: bool) -> crate::peers::Table {
    use crate::peers::{table::Time, Identity, Table, Timing};
    let id = Identity {
        name: "fuzz".into(),
        nickname: "fuzz".into(),
        underlay: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        data_port: 4789,
        secret: secret.then(|| b"fuzzing-secret".to_vec()),
    };
    let timing = Timing {
        hello_interval: std::time::Duration::from_secs(1),
        dead_after: 3,
    };
    let now = Time {
        at: std::time::Instant::now(),
        unix_us: 1,
    };
    let bounds = crate::peers::Bounds {
        max_peers: 64,
        overlay: vec!["10.32.0.0/12".parse().expect("static prefix")],
    };
    Table::new(id, timing, bounds, &[], std::sync::Arc::default(), now)
}

/// ICMP error emission on arbitrary input: the first byte picks the kind and the
/// source family, the rest is the offending packet.
pub fn icmp(data: &[u8]) {
    let Some((&sel, pkt)) = data.split_first() else { return };
    let kind = match sel % 3 {
        0 => icmp::Kind::TooBig {
            mtu: 1280 + u16::from(sel),
        },
        1 => icmp::Kind::TimeExceeded,
        _ => icmp::Kind::Unreachable,
    };
    let src = if sel & 0x80 == 0 {
        IpAddr::V4(Ipv4Addr::new(198, 19, 0, 1))
    } else {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1))
    };
    let mut out = vec![0u8; 1500];
    if let Ok(n) = icmp::emit(pkt, kind, src, &mut out) {
        assert!(n <= icmp::MAX_V6_ERROR_LEN, "error within the RFC limits");
        let ip = etherparse::IpSlice::from_slice(&out[..n]).expect("emitted error parses");
        assert_eq!(ip.source_addr(), src);
        let payload = ip.payload().payload;
        match ip {
            etherparse::IpSlice::Ipv4(v4) => {
                assert!(n <= icmp::MAX_V4_ERROR_LEN);
                let h = v4.header();
                assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum());
                assert_eq!(checksum::of(payload), 0, "ICMP checksum");
            }
            etherparse::IpSlice::Ipv6(v6) => {
                let h = v6.header();
                let s = checksum::pseudo_header(&out[..40], 58, payload.len()) + checksum::sum(payload);
                assert_eq!(checksum::fold(s), 0xffff, "ICMPv6 checksum from {}", h.source_addr());
            }
        }
    }
}

/// The Weave face's path, query and form parsing: method, path, content type and
/// body separated by newlines. Answers must be 200 or a 4xx.
pub fn weave(data: &[u8]) {
    static R: OnceLock<crate::control::router::Router<()>> = OnceLock::new();
    let router = R.get_or_init(crate::control::weave::parse_router);
    // A target the server cannot decode is its 400, before any face sees it.
    let Ok(req) = weave_request(data) else { return };
    let resp = router.dispatch(&(), &req);
    assert!(
        resp.status == 200 || (400..500).contains(&resp.status),
        "{} {}: status {}",
        req.method,
        req.path,
        resp.status
    );
}

/// The Weave face as it runs, against a fresh model (range 10.32.0.0/20, store in
/// memory, a recording host, no TUN): requests as the `weave` target reads them,
/// separated by 0x1e. `/connect` only parses (it would resolve names and wait for
/// peers). Every answer
/// is a success, a 4xx, or the 503 of a full subnet — never a 500 or a panic.
pub fn model(data: &[u8]) {
    for (what, status, body) in model_answers(data) {
        assert!(status < 500 || status == 503, "{what}: status {status} {body}");
    }
}

/// Each request of a `model` input with the status and body it was answered: the
/// Weave face over a fresh model on the in-memory store, with a recording host.
fn model_answers(data: &[u8]) -> Vec<(String, u16, String)> {
    use crate::control::weave::{offline_router, Weave};
    static R: OnceLock<crate::control::router::Router<Weave>> = OnceLock::new();
    let router = R.get_or_init(offline_router);
    let mut settings = crate::testkit::model_settings("10.32.0.0/20");
    settings.sync_timeout = std::time::Duration::from_millis(100);
    let (model, _host) = crate::testkit::model_on(settings, crate::store::memory::MemoryStore::default(), 0)
        .expect("a fresh model opens");
    let face = Weave {
        model: std::sync::Arc::new(model),
        control_port: 6783,
        node_name: "fuzz".into(),
        nickname: "fuzz".into(),
        signed: false,
    };
    data.split(|b| *b == 0x1e)
        .take(32)
        .map(|one| {
            let Ok(req) = weave_request(one) else {
                return ("an undecodable target".into(), 400, String::new());
            };
            let resp = router.dispatch(&face, &req);
            let what = format!("{} {}", req.method, req.path);
            (what, resp.status, String::from_utf8_lossy(&resp.body).into_owned())
        })
        .collect()
}

/// Both container-network faces (Container Station's and libnetwork's) over one
/// fresh model on the in-memory store, with a recording host on which the
/// namespaces `c1`, `c2` and `c3` exist: requests as the `weave` target reads them,
/// separated by 0x1e, each to the face its path belongs to. Every answer is a
/// success or a 4xx — a 500 only for a network that ran out of addresses.
pub fn networks(data: &[u8]) {
    use crate::control::container_station::{self, ContainerStation};
    use crate::control::libnetwork::{self, Libnetwork};
    static CS: OnceLock<crate::control::router::Router<ContainerStation>> = OnceLock::new();
    static LN: OnceLock<crate::control::router::Router<Libnetwork>> = OnceLock::new();
    let cs = CS.get_or_init(container_station::router);
    let ln = LN.get_or_init(libnetwork::router);
    let mut settings = crate::testkit::model_settings("10.32.0.0/20");
    settings.sync_timeout = std::time::Duration::from_millis(100);
    let (model, host) = crate::testkit::model_on(settings, crate::store::memory::MemoryStore::default(), 0)
        .expect("a fresh model opens");
    for c in ["c1", "c2", "c3"] {
        host.set_namespace(std::path::Path::new(&format!("/run/netns/{c}")), true);
    }
    let model = std::sync::Arc::new(model);
    let cs_face = ContainerStation { model: model.clone() };
    let ln_face = Libnetwork { model };
    for one in data.split(|b| *b == 0x1e).take(32) {
        let Ok(req) = weave_request(one) else { continue };
        let resp = if req.path.starts_with("/container-station/") || req.path.starts_with("/api/") {
            cs.dispatch(&cs_face, &req)
        } else {
            ln.dispatch(&ln_face, &req)
        };
        let body = String::from_utf8_lossy(&resp.body);
        assert!(
            resp.status < 500 || body.contains("no free address"),
            "{} {}: status {} {body}",
            req.method,
            req.path,
            resp.status
        );
    }
}

/// One request for the Weave targets: method, URL, content type and body, separated
/// by newlines (a method it does not know is picked from the first byte).
fn weave_request(data: &[u8]) -> Result<Request, String> {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(4, '\n');
    let first = parts.next().unwrap_or("");
    let method = match first {
        "GET" | "POST" | "PUT" | "DELETE" | "PATCH" | "HEAD" => first,
        _ => match first.bytes().next().map(|b| b % 5) {
            Some(0) => "GET",
            Some(1) => "POST",
            Some(2) => "PUT",
            Some(3) => "DELETE",
            _ => "PATCH",
        },
    };
    let url = parts.next().unwrap_or("/");
    let ctype = parts.next().unwrap_or("");
    let body = parts.next().unwrap_or("").as_bytes().to_vec();
    let headers = if ctype.is_empty() {
        vec![]
    } else {
        vec![("Content-Type".into(), ctype.into())]
    };
    // As the server would see it: a target that is no path is a path all the same.
    let target = if url.starts_with('/') {
        url.to_string()
    } else {
        format!("/{url}")
    };
    Request::from_raw(method.into(), &target, headers, body, None)
}

/// The configuration file: any text either validates or is a clear error naming the
/// file; a valid one has a sane overlay MTU. The machine is a fixed fake, so no input
/// makes validation read a file.
pub fn config(data: &[u8]) {
    struct Fixed;
    impl crate::config::Env for Fixed {
        fn hostname(&self) -> String {
            "fuzz-host".into()
        }
        fn allowed_cpus(&self) -> Vec<usize> {
            vec![0, 1]
        }
        fn read_secret(&self, path: &std::path::Path) -> Result<Vec<u8>, String> {
            match path.to_str() {
                Some(p) if p.len() >= 8 => Ok(p.as_bytes().to_vec()),
                _ => Err(format!("cannot read {}", path.display())),
            }
        }
        fn is_other_interface(&self, name: &str) -> bool {
            name == "lo"
        }
        fn resolv_conf(&self) -> String {
            "nameserver 192.0.2.1\n".into()
        }
    }
    let text = String::from_utf8_lossy(data);
    match Config::parse_in(&text, std::path::Path::new("fuzz.toml"), &Fixed) {
        Ok(s) => {
            assert!(
                s.dataplane.mtu >= 1280,
                "overlay MTU {} below IPv6 minimum",
                s.dataplane.mtu
            );
            assert!(!s.node.name.is_empty());
            assert!(s.model.blocks.iter().all(|b| s.model.range.contains(b)));
            assert!(s.dataplane.workers >= 1 && !s.dataplane.cpus.is_empty());
        }
        Err(e) => assert!(e.to_string().contains("fuzz.toml"), "{e}"),
    }
}

/// The HTTP front's request parser on a byte stream: the first byte picks how the
/// rest is cut into reads. The parser never takes more than it offers room for,
/// answers refusals with a status from its short list, and hands out requests whose
/// bodies stay within the limit.
pub fn http(data: &[u8]) {
    use crate::control::http::parse::{ParseLimits, Parsed, Parser};
    let Some((&sel, stream)) = data.split_first() else {
        return;
    };
    let limits = ParseLimits {
        max_head: 512,
        max_headers: 16,
        max_body: 1024,
    };
    let mut p = Parser::new(limits);
    let step = usize::from(sel % 64) + 1;
    let mut at = 0;
    loop {
        let room = p.room();
        let take = step.min(room).min(stream.len() - at);
        p.buffer.extend_from_slice(&stream[at..at + take]);
        at += take;
        loop {
            match p.poll() {
                Ok(Some(Parsed::Request(r))) => {
                    assert!(r.body.len() <= limits.max_body, "body over the limit");
                    assert!(!r.method.is_empty(), "a request without a method");
                }
                Ok(Some(Parsed::Continue)) => {}
                Ok(None) => break,
                Err(e) => {
                    assert!(
                        [400, 413, 431, 501, 505].contains(&e.status),
                        "status {} for {}",
                        e.status,
                        e.message
                    );
                    return;
                }
            }
        }
        assert!(
            p.buffer.len() <= limits.max_head + limits.max_body + limits.max_head + 2,
            "bounded buffer"
        );
        if take == 0 {
            return;
        }
    }
}

/// A fuzz entry point.
pub type Target = fn(&[u8]);

/// Every entry point by the name of its fuzz target and corpus directory.
/// The DNS server's two ways in. The first byte picks one and a limit:
///
/// - even: a query from a workload. It is answered from a fixed zone, refused with a
///   code, or ignored; an answer parses, echoes the id, has QR set, and never exceeds
///   the limit it was built for; one cut down for plain UDP still parses.
/// - odd: an upstream's answer. It is checked as the server checks one, offered to
///   the cache and to the learned hostnames; a cached answer is served back with the
///   client's id and its own records.
pub fn dns(data: &[u8]) {
    use crate::dns::answer::{self, Unusable};
    use crate::dns::cache::{Cache, Key, Learned};
    use domain::base::Message;
    use std::time::{Duration, Instant};
    static ZONE: OnceLock<crate::dns::Zone> = OnceLock::new();
    let Some((&sel, msg)) = data.split_first() else {
        return;
    };
    let zone = ZONE.get_or_init(|| {
        let mut recs = vec![
            crate::model::Record {
                container: "c".into(),
                ip: "198.19.64.5".parse().unwrap(),
                fqdn: "web.weave.local.".into(),
            },
            crate::model::Record {
                container: "c".into(),
                ip: "fd00::5".parse().unwrap(),
                fqdn: "web.weave.local.".into(),
            },
        ];
        for i in 1..=40u8 {
            recs.push(crate::model::Record {
                container: "m".into(),
                ip: IpAddr::V4(Ipv4Addr::new(198, 19, 66, i)),
                fqdn: "many.weave.local.".into(),
            });
        }
        crate::dns::Zone::build("weave.local.", 1, 1, &recs)
    });
    let mut out = Vec::new();
    if sel % 2 == 0 {
        let ours = 512 + usize::from(sel / 2) * 16;
        let q = match answer::parse(msg, 1232, &mut out) {
            Ok(q) => q,
            Err(Unusable::Ignored(_)) => return,
            Err(Unusable::Refused(_) | Unusable::BadVersion) => {
                let m = Message::from_slice(&out).expect("an error reply parses");
                assert!(m.header().qr(), "an error reply is a response");
                assert_eq!(&out[..2], &msg[..2], "an error reply echoes the id");
                return;
            }
        };
        let limit = q.udp_limit(ours);
        assert!((answer::PLAIN_UDP..=ours.max(answer::PLAIN_UDP)).contains(&limit));
        if let Some(a) = answer::answer_local(zone, &q, limit, 1232, usize::from(sel), &mut out) {
            let m = Message::from_slice(&out).expect("an answer parses");
            assert!(m.header().qr() && m.header().id() == q.id, "answer header");
            assert_eq!(m.header().rcode(), a.rcode);
            assert!(out.len() <= limit, "{} bytes for a limit of {limit}", out.len());
            assert_eq!(a.truncated, m.header().tc());
            let mut cut = Vec::new();
            answer::fit_udp(&out, answer::PLAIN_UDP, 1232, &mut cut);
            assert!(cut.len() <= out.len() && Message::from_slice(&cut).is_ok(), "cut down");
        }
        return;
    }
    // As the server does: an answer whose records do not all parse goes no further.
    if !crate::dns::msg::well_formed(msg) {
        return;
    }
    let now = Instant::now();
    let mut cache = Cache::new(4, 3600);
    let flags = crate::dns::cache::Flags {
        edns: sel & 2 != 0,
        ..Default::default()
    };
    let key = Key::new(flags, 1, 1, b"\x03www\x07example\x03com\x00").unwrap();
    let mut learned = Learned::new(4);
    learned.learn(b"\x03www\x07example\x03com\x00", msg, 1);
    assert!(learned.len() <= 1);
    let _ = learned.entries();
    if cache.insert(&key, msg, now) {
        // Served back to a client whose query is the answer's own first bytes.
        let mut query = msg.to_vec();
        query[..2].copy_from_slice(&[0xbe, 0xef]);
        let later = now + Duration::from_secs(u64::from(sel / 4));
        if cache.serve(&key, &query, 1232, later, &mut out) {
            // Its own OPT record gone, a bare one added for an EDNS client.
            assert!(out.len() <= msg.len() + 11, "a cached answer is the answer");
            assert_eq!(&out[..2], &[0xbe, 0xef], "and takes the client's id");
        }
    }
}

/// The kid of the fuzz identity's keyset (the corpus signs with another key under
/// it, so inputs reach the signature check).
pub const TOKEN_KID: &str = "fuzz-kid";

/// One identity per process, on a state directory of its own with a known kid.
fn token_identity() -> &'static crate::auth::Identity {
    static ID: OnceLock<crate::auth::Identity> = OnceLock::new();
    ID.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tunloom-fuzz-token-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        crate::auth::keys::KeySet::load_or_create_with(&dir, 0, [0x42; 32], TOKEN_KID).expect("fuzz keyset");
        crate::auth::Identity::open(&dir, crate::auth::Settings::default()).expect("fuzz identity")
    })
}

/// Tokens: arbitrary bytes as a bearer token, a refresh token, a duration and a
/// role. Nothing arbitrary verifies or refreshes (a forger would need the key), and
/// nothing panics.
pub fn token(data: &[u8]) {
    let id = token_identity();
    let text = String::from_utf8_lossy(data);
    match id.verify(&text) {
        Ok(c) => panic!("an arbitrary token verified: {c:?}"),
        Err(e) => assert!(e.status() == 401, "verify answered {} ({e})", e.status()),
    }
    assert!(id.refresh(&text).is_err(), "an arbitrary refresh token was accepted");
    if let Ok(d) = crate::auth::parse_duration(&text) {
        assert!(d.as_secs() <= 999_999_999_999 * 86400);
    }
    if let Ok(r) = text.parse::<crate::auth::Role>() {
        assert_eq!(r.as_str(), text, "a role is its name");
    }
}

/// The identity routes' state: the model (Weka's cluster call reads it) and one
/// identity per process, on a state directory of its own, whose clock the target
/// moves an hour on per input, so a rate-limit block from one input has lapsed by
/// the next and tokens minted for an input live through it.
struct IdentityFace {
    model: std::sync::Arc<crate::model::Model>,
    identity: std::sync::Arc<crate::auth::Identity>,
}

impl crate::control::identity::HasIdentity for IdentityFace {
    fn identity(&self) -> &std::sync::Arc<crate::auth::Identity> {
        &self.identity
    }
    fn tls(&self) -> bool {
        false
    }
}

impl AsRef<crate::model::Model> for IdentityFace {
    fn as_ref(&self) -> &crate::model::Model {
        &self.model
    }
}

/// The `admin` password of the `identity` target's identity (its seeds log in).
pub const IDENTITY_PASSWORD: &str = "fuzz-admin-password";

static IDENTITY_CLOCK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1_770_000_000);

fn identity_face() -> &'static (crate::control::router::Router<IdentityFace>, IdentityFace) {
    use crate::control::router::{ErrorStyle, Router};
    use std::sync::atomic::Ordering;
    static F: OnceLock<(Router<IdentityFace>, IdentityFace)> = OnceLock::new();
    F.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tunloom-fuzz-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("fuzz state directory");
        let password = dir.join("password");
        std::fs::write(&password, IDENTITY_PASSWORD).expect("fuzz admin password");
        let settings = crate::auth::Settings {
            admin_password_file: Some(password),
            ..crate::auth::Settings::default()
        };
        let clock: crate::auth::Clock = std::sync::Arc::new(|| IDENTITY_CLOCK.load(Ordering::Relaxed));
        let identity = crate::auth::Identity::open_with_clock(&dir, settings, clock).expect("fuzz identity");
        let mut settings = crate::testkit::model_settings("10.32.0.0/20");
        settings.sync_timeout = std::time::Duration::from_millis(100);
        let (model, _host) = crate::testkit::model_on(settings, crate::store::memory::MemoryStore::default(), 0)
            .expect("a fresh model opens");
        let mut r = Router::new(ErrorStyle::Json, crate::control::identity::token_gate());
        crate::control::identity::mount(&mut r);
        let face = IdentityFace {
            model: std::sync::Arc::new(model),
            identity: std::sync::Arc::new(identity),
        };
        (r, face)
    })
}

/// The identity routes that answer without credentials (their paths' segments).
const IDENTITY_PUBLIC: [&str; 5] = [
    "api/v2/login",
    "api/v2/login/refresh",
    "api/v1/auth/token-login",
    "api/v1/auth/logout",
    "container-station/api/v1/login",
];

/// The identity routes' JSON bodies (Weka's login and refresh, token-login, service
/// accounts and their tokens, Container Station's login) through the real
/// management routes and token gate: requests as the `networks` target reads them,
/// separated by 0x1e, except that the method line may name credentials after a
/// space — `admin` or `readonly` (a bearer token of that role), `cookie` (the admin
/// token as the session cookie) — and that `$ADMIN`, `$READONLY`, `$REFRESH` (the
/// last refresh token answered) and `$SA` (the last service account created) in the
/// URL or body are replaced. Every answer is below 500, and no request without
/// credentials gets a 2xx from a route that needs them, nor a readonly token from a
/// write.
pub fn identity(data: &[u8]) {
    identity_answers(data);
}

/// Each request of an `identity` input (with its credentials) and its status, the
/// invariants asserted on the way.
fn identity_answers(data: &[u8]) -> Vec<(String, u16)> {
    use crate::auth::Role;
    use std::sync::atomic::Ordering;
    // One input at a time: the identity and its clock are the process's, and an
    // input run beside another (cargo test runs tests in parallel) would see the clock
    // move an hour under its tokens.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let (router, face) = identity_face();
    IDENTITY_CLOCK.fetch_add(3600, Ordering::Relaxed);
    let id = &face.identity;
    let admin = id.mint("fuzz-admin", Role::Admin, None).expect("mint");
    let readonly = id.mint("fuzz-reader", Role::Readonly, None).expect("mint");
    let (mut refresh, mut sa) = (String::new(), String::new());
    let mut answers = Vec::new();
    for one in data.split(|b| *b == 0x1e).take(16) {
        let text = String::from_utf8_lossy(one);
        let (first, rest) = text.split_once('\n').unwrap_or((&text, ""));
        let (method, cred) = first.split_once(' ').unwrap_or((first, ""));
        let text = format!("{method}\n{rest}")
            .replace("$ADMIN", &admin)
            .replace("$READONLY", &readonly)
            .replace("$REFRESH", &refresh)
            .replace("$SA", &sa);
        let Ok(mut req) = weave_request(text.as_bytes()) else {
            continue;
        };
        let credentials = match cred {
            "admin" => Some(("Authorization", format!("Bearer {admin}"))),
            "readonly" => Some(("Authorization", format!("Bearer {readonly}"))),
            "cookie" => Some(("Cookie", format!("neuwerk_auth={admin}"))),
            _ => None,
        };
        let anonymous = credentials.is_none();
        req.headers
            .extend(credentials.map(|(name, value)| (name.to_string(), value)));
        let resp = router.dispatch(face, &req);
        let body = String::from_utf8_lossy(&resp.body);
        let what = format!("{} {} ({cred:?})", req.method, req.path);
        assert!(resp.status < 500, "{what}: status {} {body}", resp.status);
        // The path's segments as the router decodes them.
        let segs: Vec<String> = req
            .path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| crate::control::router::percent_decode(s).unwrap_or_default())
            .collect();
        let public = req.method == "POST" && IDENTITY_PUBLIC.contains(&segs.join("/").as_str());
        if (200..300).contains(&resp.status) && !public {
            assert!(!anonymous, "{what}: {} without credentials", resp.status);
            assert!(
                cred != "readonly" || matches!(req.method.as_str(), "GET" | "HEAD"),
                "{what}: a readonly token wrote ({})",
                resp.status
            );
        }
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&resp.body) {
            if let Some(t) = v["data"]["refresh_token"].as_str() {
                refresh = t.to_string();
            }
            if req.method == "POST" && segs == ["api", "v1", "service-accounts"] {
                if let Some(i) = v["id"].as_str() {
                    sa = i.to_string();
                }
            }
        }
        answers.push((what, resp.status));
    }
    answers
}

pub const TARGETS: &[(&str, Target)] = &[
    ("inside", inside),
    ("outside", outside),
    ("control", control),
    ("icmp", icmp),
    ("weave", weave),
    ("model", model),
    ("config", config),
    ("http", http),
    ("dns", dns),
    ("networks", networks),
    ("token", token),
    ("identity", identity),
];

#[cfg(test)]
mod corpus;
