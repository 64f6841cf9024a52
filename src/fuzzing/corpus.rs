//! Replays every seed in `fuzz/corpus/<target>/` and every past crash in
//! `fuzz/regressions/<target>/` through the same entry points the fuzz targets call,
//! so the regression guard runs in `cargo test`, without a fuzzer or a nightly
//! toolchain. Compiled for `cargo test` only; it reads files under `fuzz/` and writes
//! them only in the ignored seed writer.
//!
//! The seeds are real packets and messages made here with etherparse and tunloom's own
//! emitters: `cargo test --lib fuzzing -- --ignored write_seed_corpus` rewrites
//! them (review the diff before committing).

use super::TARGETS;
use crate::pipeline::{inside, DropReason, Verdict, ENCAP_LEN};
use crate::testkit::{in_buf, pair_with_networks as pair, HEADROOM};
use crate::wire::{control, virtio};
use etherparse::PacketBuilder;
use std::path::{Path, PathBuf};

fn dir(kind: &str, target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target)
}

fn files(d: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(d)
        .map(|r| r.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    v.retain(|p| p.file_name().is_some_and(|n| n != "README.md" && n != ".gitkeep"));
    v.sort();
    v
}

#[test]
fn replay_every_seed_and_past_crash() {
    let mut total = 0;
    for (target, run) in TARGETS {
        let seeds = files(&dir("corpus", target));
        assert!(seeds.len() >= 5, "fuzz/corpus/{target} has {} seeds", seeds.len());
        for f in seeds.iter().chain(files(&dir("regressions", target)).iter()) {
            let data = std::fs::read(f).unwrap();
            let r = std::panic::catch_unwind(|| run(&data));
            assert!(r.is_ok(), "{target}: {} fails", f.display());
            total += 1;
        }
    }
    eprintln!("replayed {total} corpus and regression inputs");
}

/// The seeds reach the code they were made for: IPv6 and superpackets are forwarded
/// by a and delivered by b, and a stranger's datagram is not. Without this a change
/// to the fixture could leave the fuzzer starting from nothing but early drops.
#[test]
fn seeds_reach_the_paths_they_were_made_for() {
    use crate::pipeline::outside;
    let (a, b) = pair();
    for (name, data) in seeds_inside() {
        let (vh, pkt) = data.split_at(virtio::HEADER_LEN);
        let vh = virtio::Repr::parse(vh).unwrap();
        let net = name.starts_with("net-");
        if !(net || name.starts_with("ipv6-") || name.starts_with("tso-") || name.starts_with("uso-")) {
            continue;
        }
        let gso = (vh.gso_type != virtio::GsoType::None).then(|| crate::pipeline::segment::Gso {
            l4: if vh.gso_type == virtio::GsoType::UdpL4 {
                crate::pipeline::segment::L4::Udp
            } else {
                crate::pipeline::segment::L4::Tcp
            },
            l3_len: usize::from(vh.csum_start),
            size: usize::from(vh.gso_size),
        });
        let mut buf = in_buf(pkt);
        let mut scratch = vec![0u8; 1500];
        let v = inside::process(&a, &mut buf, HEADROOM, pkt.len(), gso.as_ref(), &mut scratch);
        let reached = match name {
            "net-isolated" | "net-internal-out" => v == Verdict::Drop(DropReason::Isolated),
            "net-local" | "net-egress" | "net-tso-local" => matches!(v, Verdict::ToHost { .. }),
            _ => matches!(v, Verdict::Forward { .. }),
        };
        assert!(reached, "inside seed {name}: {v:?}");
    }
    let a_addr = std::net::IpAddr::from(crate::testkit::A_UNDERLAY);
    for (name, data) in seeds_outside() {
        let raw = u16::from_be_bytes([data[0], data[1]]);
        let d = &data[2..2 + usize::from(raw & 0x7fff)];
        let v = outside::process(&b, a_addr, d);
        let delivered = matches!(v, Verdict::Deliver { .. });
        match name {
            "ipv6-udp" | "ipv6-tcp-run-coalesces" | "tcp-syn" | "icmp-echo" | "gro-buffer-max" | "net-blue" => {
                assert!(delivered, "outside seed {name}: {v:?}")
            }
            "net-wrong-vni" => assert_eq!(v, Verdict::Drop(DropReason::Spoofed), "{name}"),
            "net-isolated" => assert_eq!(v, Verdict::Drop(DropReason::Isolated), "{name}"),
            "unknown-peer" => {
                let stranger = std::net::IpAddr::from([198, 18, 0, 77]);
                assert!(!matches!(outside::process(&b, stranger, d), Verdict::Deliver { .. }))
            }
            _ => {}
        }
    }
    // The model seeds run against a real model: a container's life, a subnet that
    // fills up, and `weave hide` freeing an address for a claim.
    let seeds: std::collections::HashMap<_, _> = seeds_model().into_iter().collect();
    let statuses = |name: &str| -> Vec<u16> {
        super::model_answers(&seeds[name])
            .into_iter()
            .map(|(_, status, _)| status)
            .collect()
    };
    assert_eq!(statuses("container-life"), [200, 200, 200, 200, 200, 200, 204, 404]);
    assert_eq!(statuses("subnet-fills-up"), [200, 503, 200, 200, 204, 200]);
    assert_eq!(statuses("expose-hide-claim"), [200, 400, 204, 200, 400, 200]);
}

fn vnet(h: virtio::Repr, pkt: &[u8]) -> Vec<u8> {
    let mut v = h.to_bytes().to_vec();
    v.extend_from_slice(pkt);
    v
}

fn v4(src: [u8; 4], dst: [u8; 4]) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    PacketBuilder::ipv4(src, dst, 64)
}

fn build(b: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut v = Vec::new();
    b(&mut v);
    v
}

/// Addresses in `testkit::pair_with_networks`: blue containers on a (two) and b, a
/// red one on b, an internal green one on a, and the world.
const BLUE_A: [u8; 4] = [198, 19, 16, 5];
const BLUE_A2: [u8; 4] = [198, 19, 16, 9];
const BLUE_B: [u8; 4] = [198, 19, 17, 7];
const RED_B: [u8; 4] = [198, 19, 49, 7];
const GREEN_A: [u8; 4] = [198, 19, 32, 5];
const WORLD: [u8; 4] = [93, 184, 216, 34];

/// fd00:1::5 at node a and fd00:2::7 at node b (see `testkit::pair`).
const A6: [u8; 16] = [0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
const B6: [u8; 16] = [0xfd, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];

fn v6(src: [u8; 16], dst: [u8; 16]) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    PacketBuilder::ipv6(src, dst, 64)
}

fn seeds_inside() -> Vec<(&'static str, Vec<u8>)> {
    let none = virtio::Repr::NONE;
    let a = [198, 19, 1, 5];
    let b = [198, 19, 2, 7];
    let udp = build(|v| v4(a, b).udp(5000, 53).write(v, b"query").unwrap());
    let syn = build(|v| v4(a, b).tcp(40000, 5201, 1, 64240).syn().write(v, &[]).unwrap());
    let echo = build(|v| v4(a, b).icmpv4_echo_request(1, 1).write(v, b"ping").unwrap());
    let udp6 = build(|v| v6(A6, B6).udp(1, 2).write(v, b"six").unwrap());
    let syn6 = build(|v| v6(A6, B6).tcp(40000, 5201, 1, 64240).syn().write(v, &[]).unwrap());
    let tso6 = build(|v| {
        v6(A6, B6)
            .tcp(40000, 5201, 1000, 512)
            .ack(1)
            .write(v, &[5u8; 20_000])
            .unwrap()
    });
    let uso6 = build(|v| v6(A6, B6).udp(4000, 4001).write(v, &[4u8; 5000]).unwrap());
    // IPv6 with a hop-by-hop extension header before UDP.
    let mut ext = udp6.clone();
    ext[6] = 0; // next header: hop-by-hop
    let mut hbh = vec![17u8, 0, 1, 4, 0, 0, 0, 0];
    hbh.extend_from_slice(&ext[40..]);
    ext.truncate(40);
    ext.extend_from_slice(&hbh);
    let plen = (ext.len() - 40) as u16;
    ext[4..6].copy_from_slice(&plen.to_be_bytes());
    let ttl1 = build(|v| PacketBuilder::ipv4(a, b, 1).udp(1, 2).write(v, b"x").unwrap());
    let big_df = build(|v| v4(a, b).udp(1, 2).write(v, &[0u8; 1472]).unwrap());
    let unroutable = build(|v| v4(a, [198, 19, 99, 1]).udp(1, 2).write(v, b"x").unwrap());
    let mcast = build(|v| v4(a, [224, 0, 0, 251]).udp(5353, 5353).write(v, b"mdns").unwrap());
    let tso = build(|v| {
        v4(a, b)
            .tcp(40000, 5201, 1000, 512)
            .ack(1)
            .write(v, &[7u8; 20_000])
            .unwrap()
    });
    let tso_max = build(|v| {
        v4(a, b)
            .tcp(40000, 5201, 1000, 512)
            .ack(1)
            .write(v, &[9u8; 65_000])
            .unwrap()
    });
    let uso = build(|v| v4(a, b).udp(4000, 4001).write(v, &[3u8; 5000]).unwrap());
    // Container networks (testkit::networks): blue across hosts, blue to red, the
    // internal green to the world, blue to a container on this host, blue egress.
    let net = |src, dst| build(|v| v4(src, dst).udp(5000, 6000).write(v, b"net").unwrap());
    let net_across = net(BLUE_A, BLUE_B);
    let net_isolated = net(BLUE_A, RED_B);
    let net_internal = net(GREEN_A, WORLD);
    let net_local = net(BLUE_A, BLUE_A2);
    let net_egress = net(BLUE_A, WORLD);
    let net_tso_local = build(|v| {
        v4(BLUE_A, BLUE_A2)
            .tcp(40000, 5201, 1000, 512)
            .ack(1)
            .write(v, &[8u8; 20_000])
            .unwrap()
    });
    let tcp = |size: u16, t| virtio::Repr {
        needs_csum: true,
        gso_type: t,
        hdr_len: 40,
        gso_size: size,
        csum_start: 20,
        csum_offset: 16,
    };
    let csum = virtio::Repr {
        needs_csum: true,
        csum_start: 20,
        csum_offset: 6,
        ..none
    };
    vec![
        ("udp", vnet(none, &udp)),
        ("tcp-syn", vnet(none, &syn)),
        ("icmp-echo", vnet(none, &echo)),
        ("ipv6-udp", vnet(none, &udp6)),
        ("ipv6-tcp-syn", vnet(none, &syn6)),
        (
            "tso-tcpv6",
            vnet(
                virtio::Repr {
                    hdr_len: 60,
                    csum_start: 40,
                    ..tcp(1378, virtio::GsoType::TcpV6)
                },
                &tso6,
            ),
        ),
        (
            "uso-udpv6",
            vnet(
                virtio::Repr {
                    hdr_len: 48,
                    gso_size: 1380,
                    csum_start: 40,
                    csum_offset: 6,
                    ..tcp(0, virtio::GsoType::UdpL4)
                },
                &uso6,
            ),
        ),
        ("ipv6-hop-by-hop", vnet(none, &ext)),
        ("ttl-1", vnet(none, &ttl1)),
        ("too-big-df", vnet(none, &big_df)),
        ("no-route", vnet(none, &unroutable)),
        ("multicast", vnet(none, &mcast)),
        ("needs-csum-udp", vnet(csum, &udp)),
        ("tso-tcpv4", vnet(tcp(1398, virtio::GsoType::TcpV4), &tso)),
        ("net-across", vnet(none, &net_across)),
        ("net-isolated", vnet(none, &net_isolated)),
        ("net-internal-out", vnet(none, &net_internal)),
        ("net-local", vnet(none, &net_local)),
        ("net-egress", vnet(none, &net_egress)),
        ("net-tso-local", vnet(tcp(1448, virtio::GsoType::TcpV4), &net_tso_local)),
        ("tso-max", vnet(tcp(1398, virtio::GsoType::TcpV4), &tso_max)),
        (
            "uso-udp",
            vnet(
                virtio::Repr {
                    hdr_len: 28,
                    gso_size: 1400,
                    csum_offset: 6,
                    gso_type: virtio::GsoType::UdpL4,
                    ..tcp(0, virtio::GsoType::UdpL4)
                },
                &uso,
            ),
        ),
        ("truncated-ipv4", vnet(none, &udp[..12])),
        ("not-ip", vnet(none, &[0x55; 40])),
    ]
}

/// Encapsulates `pkt` at node a, as node b receives it.
fn from_a(pkt: &[u8]) -> Vec<u8> {
    let (a, _) = pair();
    let mut buf = in_buf(pkt);
    let mut scratch = vec![0u8; 1500];
    match inside::process(&a, &mut buf, HEADROOM, pkt.len(), None, &mut scratch) {
        Verdict::Forward { start, len, .. } => buf[start..start + len].to_vec(),
        v => panic!("fixture not forwarded: {v:?}"),
    }
}

/// Datagrams from peer a, framed as the `outside` target reads them.
fn framed(dgrams: &[Vec<u8>]) -> Vec<u8> {
    let mut v = Vec::new();
    for d in dgrams {
        v.extend_from_slice(&(d.len() as u16).to_be_bytes());
        v.extend_from_slice(d);
    }
    v
}

/// The same, from an address that is no peer (the length's top bit).
fn framed_from_stranger(d: &[u8]) -> Vec<u8> {
    let mut v = (d.len() as u16 | 0x8000).to_be_bytes().to_vec();
    v.extend_from_slice(d);
    v
}

/// `count` in-order segments of one TCP flow with `size` bytes each, as a sends them.
fn tcp_run(
    ip: impl Fn() -> etherparse::PacketBuilderStep<etherparse::IpHeaders>,
    count: u32,
    size: u32,
) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            from_a(&build(|v| {
                ip().tcp(40000, 5201, 1 + i * size, 512)
                    .ack(9)
                    .write(v, &vec![i as u8; size as usize])
                    .unwrap()
            }))
        })
        .collect()
}

fn seeds_outside() -> Vec<(&'static str, Vec<u8>)> {
    let a = [198, 19, 1, 5];
    let b = [198, 19, 2, 7];
    let udp = from_a(&build(|v| v4(a, b).udp(5000, 53).write(v, b"query").unwrap()));
    let segs = tcp_run(|| v4(a, b), 3, 1000);
    let spoofed = from_a(&build(|v| v4([10, 0, 0, 1], b).udp(1, 2).write(v, b"x").unwrap()));
    let mut bad_flags = udp.clone();
    bad_flags[0] = 0;
    let mut bad_vni = udp.clone();
    bad_vni[6] = 99;
    let mut bad_mac = udp.clone();
    bad_mac[8] ^= 0x10;
    let mut arp = udp.clone();
    arp[20..22].copy_from_slice(&[0x08, 0x06]);
    let mut padded = udp.clone();
    padded.extend_from_slice(&[0u8; 18]);
    let udp6 = from_a(&build(|v| v6(A6, B6).udp(5000, 53).write(v, b"query").unwrap()));
    let segs6 = tcp_run(|| v6(A6, B6), 3, 1000);
    let syn = from_a(&build(|v| {
        v4(a, b).tcp(40000, 5201, 1, 64240).syn().write(v, &[]).unwrap()
    }));
    let echo = from_a(&build(|v| {
        v4(a, b).icmpv4_echo_request(1, 1).write(v, b"ping").unwrap()
    }));
    // A full GRO buffer: 45 MTU-sized segments of one flow, about 64 KB.
    let full = tcp_run(|| v4(a, b), 45, 1398);
    // Datagrams of one UDP flow, the last one shorter: one USO train.
    let udp_run = |ip: &dyn Fn() -> etherparse::PacketBuilderStep<etherparse::IpHeaders>| {
        [1000usize, 1000, 400]
            .iter()
            .map(|&n| from_a(&build(|v| ip().udp(5000, 443).write(v, &vec![n as u8; n]).unwrap())))
            .collect::<Vec<_>>()
    };
    let udps = udp_run(&|| v4(a, b));
    let net_blue = from_a(&build(|v| v4(BLUE_A, BLUE_B).udp(5000, 6000).write(v, b"net").unwrap()));
    let mut net_wrong_vni = net_blue.clone();
    net_wrong_vni[6] = 9; // red's VNI on a blue source
    let mut net_isolated = from_a(&build(|v| v4(a, BLUE_B).udp(5000, 6000).write(v, b"net").unwrap()));
    net_isolated[6] = 9; // red's VNI into blue
    let udps6 = udp_run(&|| v6(A6, B6));
    vec![
        ("udp", framed(std::slice::from_ref(&udp))),
        ("tcp-run-coalesces", framed(&segs)),
        ("tcp-gap", framed(&[segs[0].clone(), segs[2].clone()])),
        ("spoofed", framed(&[spoofed])),
        ("vxlan-no-i-flag", framed(&[bad_flags])),
        ("wrong-vni", framed(&[bad_vni])),
        ("wrong-mac", framed(&[bad_mac])),
        ("arp", framed(&[arp])),
        ("ethernet-padding", framed(&[padded])),
        (
            "truncated",
            framed(&[udp[..ENCAP_LEN + 10].to_vec(), udp[..5].to_vec()]),
        ),
        ("mixed", framed(&[segs[0].clone(), udp.clone(), segs[1].clone()])),
        ("ipv6-udp", framed(&[udp6])),
        ("ipv6-tcp-run-coalesces", framed(&segs6)),
        ("tcp-syn", framed(&[syn])),
        ("icmp-echo", framed(&[echo])),
        ("gro-buffer-max", framed(&full)),
        ("udp-run-coalesces", framed(&udps)),
        ("ipv6-udp-run-coalesces", framed(&udps6)),
        ("unknown-peer", framed_from_stranger(&udp)),
        ("net-blue", framed(&[net_blue])),
        ("net-wrong-vni", framed(&[net_wrong_vni])),
        ("net-isolated", framed(&[net_isolated])),
    ]
}

fn seeds_control() -> Vec<(&'static str, Vec<u8>)> {
    let ann = [
        control::Announce {
            prefix: "198.19.1.0/24".parse().unwrap(),
            version: 3,
            block: false,
            vni: 0x00ab_cdef,
        },
        control::Announce {
            prefix: "198.19.64.0/19".parse().unwrap(),
            version: 3,
            block: true,
            vni: 0,
        },
        control::Announce {
            prefix: "fd00:1::/64".parse().unwrap(),
            version: 1,
            block: false,
            vni: 7,
        },
    ];
    let r = control::Repr {
        kind: control::Kind::Hello,
        seq: 1_700_000_000_000_000,
        state: 5,
        ack: 4,
        page: 0,
        pages: 1,
        data_port: 4789,
        underlay: "198.18.0.1".parse().unwrap(),
        name: "6e:1f:a5:00:00:01",
        nickname: "gw-a",
        prefixes: control::Prefixes::Slice(&ann),
    };
    let emit = |r: &control::Repr, key: Option<&[u8]>| {
        let mut b = vec![0u8; r.buffer_len(key.is_some())];
        r.emit(&mut b, key).unwrap();
        b
    };
    let hello = emit(&r, None);
    let signed = emit(&r, Some(b"fuzzing-secret"));
    let bye = emit(
        &control::Repr {
            kind: control::Kind::Bye,
            prefixes: control::Prefixes::Slice(&[]),
            ..r
        },
        None,
    );
    let page2 = emit(
        &control::Repr {
            page: 1,
            pages: 2,
            underlay: "::".parse().unwrap(),
            ..r
        },
        None,
    );
    let mut bad_magic = hello.clone();
    bad_magic[0] = b'X';
    let mut bad_family = hello.clone();
    bad_family[38] = 5;
    // As an older tunloom sends it: version 1, no VNIs.
    let emit_v1 = |r: &control::Repr, key: Option<&[u8]>| {
        let mut b = vec![0u8; r.buffer_len_as(1, key.is_some())];
        r.emit_as(1, &mut b, key).unwrap();
        b
    };
    let mut future = hello.clone();
    future[4] = control::VERSION + 1;
    vec![
        ("hello", hello.clone()),
        ("hello-v1", emit_v1(&r, None)),
        ("hello-v1-signed", emit_v1(&r, Some(b"fuzzing-secret"))),
        ("unknown-version", future),
        ("hello-signed", signed),
        ("bye", bye),
        ("page-2-of-2-ipv6-underlay", page2),
        ("truncated", hello[..50].to_vec()),
        ("bad-magic", bad_magic),
        ("bad-family", bad_family),
    ]
}

fn seeds_icmp() -> Vec<(&'static str, Vec<u8>)> {
    let a = [198, 19, 1, 5];
    let b = [198, 19, 2, 7];
    let with = |sel: u8, pkt: Vec<u8>| {
        let mut v = vec![sel];
        v.extend(pkt);
        v
    };
    let tcp = build(|v| v4(a, b).tcp(1, 2, 3, 4).write(v, &[1u8; 1400]).unwrap());
    let v6 = build(|v| {
        PacketBuilder::ipv6([0xfd, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 5], [0xfd; 16], 64)
            .udp(1, 2)
            .write(v, &[2u8; 1400])
            .unwrap()
    });
    let err = build(|v| {
        v4(a, b)
            .icmpv4(etherparse::Icmpv4Type::TimeExceeded(
                etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit,
            ))
            .write(v, &tcp[..28])
            .unwrap()
    });
    let mut frag = tcp.clone();
    frag[6] = 0;
    frag[7] = 0x20;
    vec![
        ("frag-needed-tcp", with(0, tcp.clone())),
        ("time-exceeded-tcp", with(1, tcp.clone())),
        ("unreachable-headers-only", with(2, tcp[..28].to_vec())),
        ("packet-too-big-v6", with(0x81, v6)),
        ("error-about-an-error", with(1, err)),
        ("non-first-fragment", with(2, frag)),
    ]
}

fn seeds_weave() -> Vec<(&'static str, Vec<u8>)> {
    let form = "application/x-www-form-urlencoded";
    let req = weave_req;
    vec![
        ("status", req("GET", "/status", "", "")),
        ("allocate", req("POST", "/ip/abc123def456", "", "")),
        (
            "allocate-check-alive",
            req("POST", "/ip/abc123?check-alive=true", "", ""),
        ),
        ("allocate-in-subnet", req("POST", "/ip/abc/10.32.0.0/12", "", "")),
        ("claim", req("PUT", "/ip/abc/10.32.0.5/12", form, "check-alive=false")),
        ("release", req("DELETE", "/ip/abc", "", "")),
        (
            "connect",
            req(
                "POST",
                "/connect",
                form,
                "peer=10.0.1.5&peer=10.0.1.6:7000&replace=false",
            ),
        ),
        ("connect-host", req("POST", "/connect", form, "peer=node-b.example")),
        ("expose", req("POST", "/expose/10.32.0.1/12", "", "")),
        ("expose-escaped", req("POST", "/expose/10.32.0.1%2F12", "", "")),
        ("remove-peer", req("DELETE", "/peer/8a:3d:c1:f9:a2:b7", "", "")),
        (
            "name",
            req("PUT", "/name/abc/10.32.0.2", form, "fqdn=myapp.weave.local."),
        ),
        ("name-delete", req("DELETE", "/name/abc/10.32.0.2", "", "")),
        (
            "json-body",
            req("POST", "/connect", "application/json", "{\"peer\":\"x\"}"),
        ),
        ("bad-percent", req("PUT", "/name/%zz/%C0%AF", form, "fqdn=%")),
    ]
}

fn seeds_networks() -> Vec<(&'static str, Vec<u8>)> {
    let json = "application/json";
    let seq = |reqs: &[Vec<u8>]| reqs.join(&0x1e);
    let cs = "/container-station/api/v1/networks";
    vec![
        (
            "cs-life",
            seq(&[
                weave_req(
                    "POST",
                    cs,
                    json,
                    r#"{"name": "doc_test_network", "check_duplicate": true}"#,
                ),
                weave_req(
                    "POST",
                    cs,
                    json,
                    r#"{"name": "doc_test_network", "check_duplicate": true}"#,
                ),
                weave_req(
                    "POST",
                    &format!("{cs}/doc_test_network/connect"),
                    json,
                    r#"{"container": "c1"}"#,
                ),
                weave_req("GET", &format!("{cs}/doc_test_network/inspect"), "", ""),
                weave_req(
                    "POST",
                    &format!("{cs}/doc_test_network/disconnect"),
                    json,
                    r#"{"container": "c1"}"#,
                ),
                weave_req("DELETE", &format!("{cs}/doc_test_network"), "", ""),
                weave_req("DELETE", &format!("{cs}/"), "", ""),
            ]),
        ),
        (
            "cs-ipam",
            seq(&[
                weave_req(
                    "POST",
                    "/api/v1/networks",
                    json,
                    r#"{"name": "n", "internal": "true", "ipam": {"Config": [{"Subnet": "10.50.0.0/30", "Gateway": "10.50.0.2", "IPRange": "10.50.0.0/31"}]}, "options": {"com.docker.network.driver.overlay.vxlanid_list": "5000"}}"#,
                ),
                weave_req(
                    "POST",
                    "/api/v1/networks/n/connect",
                    json,
                    r#"{"container": "c2", "EndpointConfig": {"IPAMConfig": {"IPv4Address": "10.50.0.1"}}}"#,
                ),
                weave_req("POST", "/api/v1/networks/n/connect", json, r#"{"container": "c3"}"#),
                weave_req("GET", "/api/v1/networks", "", ""),
            ]),
        ),
        (
            "libnetwork-life",
            seq(&[
                weave_req(
                    "POST",
                    "/networks",
                    json,
                    r#"{"name": "foo", "network_type": "", "options": {}}"#,
                ),
                weave_req("GET", "/networks?name=foo", "", ""),
                weave_req(
                    "POST",
                    "/networks/foo/endpoints",
                    json,
                    r#"{"name": "baz", "exposed_ports": [{"proto": 6, "port": 8080}], "port_mapping": null}"#,
                ),
                weave_req(
                    "POST",
                    "/networks/foo/endpoints/baz/containers",
                    json,
                    r#"{"container_id": "c1"}"#,
                ),
                weave_req("GET", "/networks/foo/endpoints?partial-id=a", "", ""),
                weave_req("DELETE", "/networks/foo/endpoints/baz/containers/c1", "", ""),
                weave_req("DELETE", "/networks/foo/endpoints/baz", "", ""),
                weave_req("DELETE", "/networks/foo", "", ""),
                weave_req("GET", "/services", "", ""),
            ]),
        ),
        ("bad-json", weave_req("POST", cs, json, "{\"name\": ")),
        (
            "libnetwork-bad",
            seq(&[
                weave_req(
                    "POST",
                    "/networks",
                    json,
                    r#"{"name": "a", "options": {"subnet": "10.51.0.0/24", "internal": "yes"}}"#,
                ),
                weave_req("GET", "/networks?name=a&partial-id=b", "", ""),
                weave_req("POST", "/networks/nope/endpoints", json, r#"{"name": ""}"#),
            ]),
        ),
    ]
}

/// Request streams for the identity routes (see `fuzzing::identity` for the
/// credentials after the method and the `$` placeholders).
fn seeds_identity() -> Vec<(&'static str, Vec<u8>)> {
    let json = "application/json";
    let seq = |reqs: &[Vec<u8>]| reqs.join(&0x1e);
    let pw = super::IDENTITY_PASSWORD;
    let login = format!(r#"{{"username": "admin", "password": "{pw}", "org": "Root"}}"#);
    vec![
        (
            "weka-login-refresh",
            seq(&[
                weave_req("POST", "/api/v2/login", json, &login),
                weave_req("GET", "/api/v2/cluster", "", ""),
                weave_req(
                    "POST",
                    "/api/v2/login/refresh",
                    json,
                    r#"{"refresh_token": "$REFRESH"}"#,
                ),
                weave_req(
                    "POST",
                    "/api/v2/login/refresh",
                    json,
                    r#"{"refresh_token": "$REFRESH"}"#,
                ),
                weave_req("GET admin", "/api/v2/cluster", "", ""),
                weave_req(
                    "POST",
                    "/api/v2/login",
                    json,
                    r#"{"username": "admin", "password": "wrong"}"#,
                ),
                weave_req("POST", "/api/v2/login", json, r#"{"username": 7, "password": null}"#),
            ]),
        ),
        (
            "token-login",
            seq(&[
                weave_req(
                    "POST",
                    "/api/v1/auth/token-login",
                    json,
                    r#"{"token": "Bearer $READONLY"}"#,
                ),
                weave_req("POST", "/api/v1/auth/token-login", json, r#"{"token": "not.a.jwt"}"#),
                weave_req("GET readonly", "/api/v1/auth/whoami", "", ""),
                weave_req("GET", "/api/v1/auth/whoami", "", ""),
                weave_req("GET cookie", "/api/v1/auth/whoami?token=$ADMIN", "", ""),
                weave_req("POST cookie", "/api/v1/auth/logout", "", ""),
                weave_req("GET cookie", "/api/v1/auth/whoami", "", ""),
            ]),
        ),
        (
            "service-accounts",
            seq(&[
                weave_req(
                    "POST admin",
                    "/api/v1/service-accounts",
                    json,
                    r#"{"name": "ci", "description": "pipelines", "role": "readonly"}"#,
                ),
                weave_req(
                    "PUT admin",
                    "/api/v1/service-accounts/$SA",
                    json,
                    r#"{"description": "nightly", "role": "admin"}"#,
                ),
                weave_req(
                    "POST admin",
                    "/api/v1/service-accounts/$SA/tokens",
                    json,
                    r#"{"name": "deploy", "ttl": "30m", "role": "readonly"}"#,
                ),
                weave_req(
                    "POST admin",
                    "/api/v1/service-accounts/$SA/tokens",
                    json,
                    r#"{"name": "both", "ttl": "1h", "eternal": true}"#,
                ),
                weave_req("GET readonly", "/api/v1/service-accounts/$SA/tokens", "", ""),
                weave_req(
                    "POST readonly",
                    "/api/v1/service-accounts",
                    json,
                    r#"{"name": "sneaky"}"#,
                ),
                weave_req("POST", "/api/v1/service-accounts", json, r#"{"name": "anon"}"#),
                weave_req("DELETE admin", "/api/v1/service-accounts/$SA", "", ""),
            ]),
        ),
        (
            "account-bodies",
            seq(&[
                weave_req(
                    "POST admin",
                    "/api/v1/service-accounts",
                    json,
                    r#"{"name": "", "role": "root"}"#,
                ),
                weave_req(
                    "POST admin",
                    "/api/v1/service-accounts",
                    json,
                    r#"["not", "an", "object"]"#,
                ),
                weave_req("PUT admin", "/api/v1/service-accounts/nope", json, r#"{"name": 1}"#),
                weave_req(
                    "POST admin",
                    "/api/v1/service-accounts/nope/tokens",
                    json,
                    r#"{"ttl": "forever", "eternal": "yes"}"#,
                ),
                weave_req("DELETE admin", "/api/v1/service-accounts/nope/tokens/none", "", ""),
            ]),
        ),
        (
            "container-station-login",
            seq(&[
                weave_req("POST", "/container-station/api/v1/login", json, &login),
                weave_req(
                    "POST",
                    "/container-station/api/v1/login",
                    json,
                    r#"{"username": "admin", "password": ""}"#,
                ),
                weave_req("POST", "/container-station/api/v1/login", "text/plain", "{"),
            ]),
        ),
        (
            "no-credentials",
            seq(&[
                weave_req("GET", "/api/v1/service-accounts", "", ""),
                weave_req("DELETE", "/api/v1/service-accounts/x/tokens/y", "", ""),
                weave_req("GET", "/api/v2/%63luster", "", ""),
                weave_req("POST", "/api/v2/login/", json, "{}"),
            ]),
        ),
    ]
}

/// One request as the Weave targets read it.
fn weave_req(method: &str, url: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!("{method}\n{url}\n{content_type}\n{body}").into_bytes()
}

fn seeds_model() -> Vec<(&'static str, Vec<u8>)> {
    let form = "application/x-www-form-urlencoded";
    let seq = |reqs: &[Vec<u8>]| reqs.join(&0x1e);
    let get = |url: &str| weave_req("GET", url, "", "");
    let post = |url: &str| weave_req("POST", url, "", "");
    let put = |url: &str| weave_req("PUT", url, "", "");
    let delete = |url: &str| weave_req("DELETE", url, "", "");
    vec![
        (
            "container-life",
            seq(&[
                get("/status"),
                post("/ip/c1"),
                post("/ip/c1"),
                get("/ip/c1"),
                weave_req("PUT", "/name/c1/10.32.0.2", form, "fqdn=c1.weave.local."),
                weave_req("DELETE", "/name/c1/10.32.0.2", "", ""),
                delete("/ip/c1"),
                get("/ip/c1"),
            ]),
        ),
        (
            "subnet-fills-up",
            seq(&[
                post("/ip/a/10.32.1.0/30"),
                post("/ip/b/10.32.1.0/30"),
                post("/ip/a/10.32.2.0/24"),
                get("/ip/a"),
                delete("/ip/a"),
                post("/ip/b/10.32.1.0/30"),
            ]),
        ),
        (
            "claims-at-the-edges",
            seq(&[
                put("/ip/a/10.32.0.0/20"),
                put("/ip/a/10.32.0.1/20"),
                put("/ip/a/10.32.15.255/20"),
                put("/ip/a/10.32.15.254/20"),
                put("/ip/b/10.32.15.254/20"),
                put("/ip/b/10.33.0.5/20"),
                put("/ip/b/10.32.3.7/30"),
            ]),
        ),
        (
            "expose-hide-claim",
            seq(&[
                post("/expose/10.32.0.100/20"),
                put("/ip/a/10.32.0.100/20"),
                delete("/ip/weave:expose"),
                put("/ip/a/10.32.0.100/20"),
                post("/expose/10.32.0.100/20"),
                get("/status"),
            ]),
        ),
        (
            "peers-and-info",
            seq(&[
                weave_req("POST", "/connect", form, "peer=198.18.0.9&replace=true"),
                delete("/peer/198.18.0.9"),
                get("/ipinfo/defaultsubnet"),
                get("/domain"),
                post("/ip/c?check-alive=true"),
            ]),
        ),
    ]
}

fn seeds_config() -> Vec<(&'static str, Vec<u8>)> {
    let shipped = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tunloom.toml")).unwrap();
    vec![
        ("shipped-example", shipped),
        ("empty", Vec::new()),
        (
            "two-hosts",
            b"[node]\nname = \"gw-a\"\n[ipam]\nblocks = [\"10.32.0.0/13\"]\n[overlay]\nexpose = [\"10.32.0.100/12\"]\n[[peers]]\naddress = \"198.18.0.2\"\n".to_vec(),
        ),
        ("bad-vni", b"[dataplane]\nvni = 0\n".to_vec()),
        ("unknown-key", b"[dataplane]\nwrokers = 2\n".to_vec()),
        ("bad-toml", b"[dataplane\nworkers = ".to_vec()),
        ("ipv6-underlay", b"[dataplane]\nbind = \"::\"\nunderlay_mtu = 1350\n".to_vec()),
    ]
}

#[test]
#[ignore = "rewrites fuzz/corpus; run by hand"]
fn write_seed_corpus() {
    type Seeds = Vec<(&'static str, Vec<u8>)>;
    let all: Vec<(&str, Seeds)> = vec![
        ("inside", seeds_inside()),
        ("outside", seeds_outside()),
        ("control", seeds_control()),
        ("icmp", seeds_icmp()),
        ("weave", seeds_weave()),
        ("networks", seeds_networks()),
        ("model", seeds_model()),
        ("config", seeds_config()),
        ("http", seeds_http()),
        ("dns", seeds_dns()),
        ("token", seeds_token()),
        ("identity", seeds_identity()),
    ];
    for (target, seeds) in all {
        let d = dir("corpus", target);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        for (name, bytes) in seeds {
            std::fs::write(d.join(name), bytes).unwrap();
        }
    }
}

/// Request streams for the HTTP parser: the first byte picks the read size.
fn seeds_http() -> Vec<(&'static str, Vec<u8>)> {
    let with = |sel: u8, s: &[u8]| {
        let mut v = vec![sel];
        v.extend_from_slice(s);
        v
    };
    vec![
        ("get", with(63, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")),
        (
            "pipelined",
            with(
                3,
                b"GET /ip/c1 HTTP/1.1\r\n\r\nPOST /ip/c1 HTTP/1.1\r\nContent-Length: 16\r\n\r\ncheck-alive=true",
            ),
        ),
        (
            "chunked",
            with(
                7,
                b"PUT /name/c1/10.32.0.2 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4;e=1\r\nfqdn\r\n2\r\n=a\r\n0\r\nT: 1\r\n\r\n",
            ),
        ),
        (
            "expect-continue",
            with(
                63,
                b"POST /connect HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 14\r\n\r\npeer=198.18.0.2",
            ),
        ),
        ("http2-preface", with(63, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")),
        ("http10", with(1, b"\r\nGET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")),
        ("too-long", with(60, &[b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 600]].concat())),
        ("too-large", with(63, b"POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n")),
        (
            "two-lengths",
            with(63, b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
        ),
    ]
}

/// DNS queries (even first byte) and upstream answers (odd first byte), made with
/// `domain`'s builder: every query type the server answers itself, EDNS and plain,
/// and answers with CNAME chains, negative answers with an SOA, and truncation.
fn seeds_dns() -> Vec<(&'static str, Vec<u8>)> {
    use domain::base::iana::{Class, Opcode, Rcode, Rtype};
    use domain::base::{MessageBuilder, Name, Serial, Ttl};
    use domain::rdata::{Aaaa, Cname, Soa, A};
    use std::str::FromStr;
    let name = |s: &str| Name::<Vec<u8>>::from_str(s).unwrap();
    let with = |sel: u8, m: Vec<u8>| {
        let mut v = vec![sel];
        v.extend(m);
        v
    };
    let query = crate::testkit::dns_query;
    let answer = |n: &str, rcode: Rcode, tc: bool| {
        let mut b = MessageBuilder::new_vec();
        b.header_mut().set_id(7);
        b.header_mut().set_qr(true);
        b.header_mut().set_tc(tc);
        b.header_mut().set_rcode(rcode);
        let mut q = b.question();
        q.push((name(n), Rtype::A)).unwrap();
        let mut a = q.answer();
        if rcode == Rcode::NOERROR {
            let edge = name("edge.example.net");
            a.push((name(n), Class::IN, Ttl::from_secs(300), Cname::new(edge.clone())))
                .unwrap();
            a.push((
                edge.clone(),
                Class::IN,
                Ttl::from_secs(60),
                A::new("203.0.113.20".parse().unwrap()),
            ))
            .unwrap();
            a.push((
                edge,
                Class::IN,
                Ttl::from_secs(60),
                Aaaa::new("2001:db8::20".parse().unwrap()),
            ))
            .unwrap();
        }
        let mut auth = a.authority();
        if rcode == Rcode::NXDOMAIN {
            let z = name("example.com");
            let soa = Soa::new(
                z.clone(),
                z.clone(),
                Serial(1),
                Ttl::HOUR,
                Ttl::HOUR,
                Ttl::DAY,
                Ttl::from_secs(30),
            );
            auth.push((z, Class::IN, Ttl::from_secs(900), soa)).unwrap();
        }
        auth.finish()
    };
    let mut notify = query("web.weave.local", Rtype::A, None);
    let mut h = domain::base::Header::new();
    h.set_opcode(Opcode::NOTIFY);
    notify[2] = h.as_slice()[0];
    let mut v1 = query("web.weave.local", Rtype::A, Some(1232));
    let n = v1.len();
    v1[n - 11 + 6] = 1;
    vec![
        ("a-local", with(0, query("web.weave.local", Rtype::A, None))),
        (
            "aaaa-local-edns",
            with(2, query("WEB.weave.local", Rtype::AAAA, Some(4096))),
        ),
        ("any-local", with(4, query("web.weave.local", Rtype::ANY, None))),
        (
            "ptr-local",
            with(6, query("5.64.19.198.in-addr.arpa", Rtype::PTR, None)),
        ),
        (
            "ptr-v6",
            with(
                8,
                query(
                    "5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa",
                    Rtype::PTR,
                    Some(1232),
                ),
            ),
        ),
        ("nxdomain", with(10, query("nope.weave.local", Rtype::A, None))),
        ("many-truncated", with(0, query("many.weave.local", Rtype::A, None))),
        ("many-edns", with(40, query("many.weave.local", Rtype::A, Some(1232)))),
        ("forwarded", with(12, query("www.example.com", Rtype::A, None))),
        ("notify", with(14, notify)),
        ("badvers", with(16, v1)),
        (
            "upstream-answer",
            with(1, answer("www.example.com", Rcode::NOERROR, false)),
        ),
        (
            "upstream-answer-edns-key",
            with(3, answer("www.example.com", Rcode::NOERROR, false)),
        ),
        (
            "upstream-nxdomain",
            with(5, answer("nope.example.com", Rcode::NXDOMAIN, false)),
        ),
        (
            "upstream-truncated",
            with(7, answer("www.example.com", Rcode::NOERROR, true)),
        ),
        (
            "upstream-servfail",
            with(9, answer("www.example.com", Rcode::SERVFAIL, false)),
        ),
    ]
}

/// Tokens under the fuzz identity's kid signed by another key, the classic forgeries
/// (`alg: none`, HS256 with the public key as secret), refresh tokens and durations.
fn seeds_token() -> Vec<(&'static str, Vec<u8>)> {
    use crate::auth::keys::KeySet;
    use crate::auth::{Claims, Role};
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let dir = crate::testkit::TempDir::new("token-seeds");
    let other = KeySet::load_or_create_with(&dir.0, 0, [0x07; 32], super::TOKEN_KID).unwrap();
    let claims = |sa: Option<&str>, exp: Option<u64>| Claims {
        iss: "tunloom".into(),
        aud: "tunloom-api".into(),
        sub: "admin".into(),
        iat: 1_770_000_000,
        exp,
        jti: "0f8c6f1e-5b6a-4c1d-9f1e-2a3b4c5d6e7f".into(),
        roles: vec![Role::Admin.as_str().into()],
        sa_id: sa.map(Into::into),
    };
    let signed = |c: &Claims| {
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some(super::TOKEN_KID.into());
        h.typ = Some("JWT".into());
        jsonwebtoken::encode(&h, c, other.signing_key()).unwrap().into_bytes()
    };
    let user = signed(&claims(None, Some(4_000_000_000)));
    let text = String::from_utf8(user.clone()).unwrap();
    let parts: Vec<&str> = text.split('.').collect();
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some(super::TOKEN_KID.into());
    let hs256 = jsonwebtoken::encode(&hs, &claims(None, None), &EncodingKey::from_secret(&[0x42; 32]))
        .unwrap()
        .into_bytes();
    // {"alg":"none","typ":"JWT","kid":"fuzz-kid"}
    let none = format!(
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIiwia2lkIjoiZnV6ei1raWQifQ.{}.",
        parts[1]
    );
    vec![
        ("foreign-signature-user", user.clone()),
        (
            "foreign-signature-eternal-sa",
            signed(&claims(Some("5d1f0e6a-0000-4000-8000-000000000001"), None)),
        ),
        ("alg-none", none.into_bytes()),
        ("hs256", hs256),
        ("no-signature", format!("{}.{}.", parts[0], parts[1]).into_bytes()),
        (
            "refresh-shaped",
            format!("0f8c6f1e-5b6a-4c1d-9f1e-2a3b4c5d6e7f.{}", "ab".repeat(32)).into_bytes(),
        ),
        ("garbage", b"\x00\xff not a token".to_vec()),
        ("duration-30m", b"30m".to_vec()),
        ("duration-seconds", b"3600".to_vec()),
        ("role-readonly", b"readonly".to_vec()),
    ]
}

/// The token seeds get as far as they were made to: the foreign signatures to the
/// signature check, the forgeries to the algorithm check.
#[test]
fn token_seeds_reach_the_signature_check() {
    let id = super::token_identity();
    let why = |name: &str| {
        let seeds: std::collections::HashMap<_, _> = seeds_token().into_iter().collect();
        id.verify(std::str::from_utf8(&seeds[name]).unwrap())
            .unwrap_err()
            .to_string()
    };
    assert_eq!(why("foreign-signature-user"), "invalid jwt signature");
    assert_eq!(why("foreign-signature-eternal-sa"), "invalid jwt signature");
    assert_eq!(why("hs256"), "unsupported jwt algorithm");
    assert_eq!(why("no-signature"), "invalid jwt signature");
}

/// The identity seeds get where they were made to: a login with the password and a
/// refresh with its token succeed (each with the token the last one answered), an account is made, updated, given a token and
/// deleted, and the refusals are the ones the routes give.
#[test]
fn identity_seeds_reach_the_handlers() {
    let seeds: std::collections::HashMap<_, _> = seeds_identity().into_iter().collect();
    let statuses = |name: &str| -> Vec<u16> {
        super::identity_answers(&seeds[name])
            .into_iter()
            .map(|(_, s)| s)
            .collect()
    };
    assert_eq!(statuses("weka-login-refresh"), [200, 401, 200, 200, 200, 401, 400]);
    assert_eq!(statuses("token-login"), [200, 401, 200, 401, 401, 204, 401]);
    assert_eq!(statuses("service-accounts"), [200, 200, 200, 400, 200, 403, 401, 204]);
    assert_eq!(statuses("container-station-login")[0], 200);
}
