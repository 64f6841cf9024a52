//! Fixtures shared by unit tests, benchmarks, integration tests and fuzz targets: a
//! pair of nodes' snapshots joined by an imaginary underlay, packet builders, and a
//! model with no dataplane behind it. Not part of tunloom's interface; nothing in
//! the daemon uses it.

use crate::route::Table;
use crate::snapshot::{Network, PeerEntry, Snapshot, SnapshotSpec};
use crate::wire::ether;
use etherparse::PacketBuilder;
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};

/// Headroom the fixtures leave in front of a packet.
pub const HEADROOM: usize = 64;
/// Node a's underlay address (node b's is 198.18.0.2).
pub const A_UNDERLAY: [u8; 4] = [198, 18, 0, 1];

/// Two nodes' snapshots: "a" (198.19.1.0/24 and fd00:1::/64 at 198.18.0.1) and
/// "b" (198.19.2.0/24 and fd00:2::/64 at 198.18.0.2), each with the other as peer 0,
/// VNI 42, overlay MTU 1450.
pub fn pair() -> (Snapshot, Snapshot) {
    let (a, b) = pair_specs();
    (Snapshot::compile(1, a), Snapshot::compile(1, b))
}

/// The specs [`pair`] compiles, for tests that change them first.
pub fn pair_specs() -> (SnapshotSpec, SnapshotSpec) {
    let mk = |me: &str, mine: &[&str], other: &str, theirs: &[&str], their_ip: [u8; 4], router: [u8; 4]| {
        let theirs: Vec<IpNet> = theirs.iter().map(|p| p.parse().expect("fixture prefix")).collect();
        SnapshotSpec {
            node_mac: ether::Address::for_node(me),
            vni: 42,
            mtu: 1450,
            local: mine.iter().map(|p| p.parse().expect("fixture prefix")).collect(),
            service: Vec::new(),
            peers: vec![(
                PeerEntry {
                    name: other.into(),
                    data_addr: SocketAddr::new(IpAddr::V4(their_ip.into()), 4789),
                    mac: ether::Address::for_node(other),
                    allowed: Table::build(theirs.iter().map(|p| (*p, ())).collect()),
                },
                theirs.into_iter().map(|p| (p, 0)).collect(),
            )],
            router_v4: Some(router.into()),
            router_v6: None,
            networks: Vec::new(),
        }
    };
    (
        mk(
            "a",
            &["198.19.1.0/24", "fd00:1::/64"],
            "b",
            &["198.19.2.0/24", "fd00:2::/64"],
            [198, 18, 0, 2],
            [198, 19, 1, 1],
        ),
        mk(
            "b",
            &["198.19.2.0/24", "fd00:2::/64"],
            "a",
            &["198.19.1.0/24", "fd00:1::/64"],
            A_UNDERLAY,
            [198, 19, 2, 1],
        ),
    )
}

/// The container networks of [`pair_with_networks`]: "blue" 198.19.16.0/20 (VNI 7),
/// "green" 198.19.32.0/20 (VNI 8, internal) and "red" 198.19.48.0/20 (VNI 9). Node a
/// holds the first /24 of each, node b the second.
pub fn networks() -> Vec<Network> {
    let net = |subnet: &str, vni, internal| Network {
        subnet: subnet.parse().expect("fixture subnet"),
        vni,
        internal,
    };
    vec![
        net("198.19.16.0/20", 7, false),
        net("198.19.32.0/20", 8, true),
        net("198.19.48.0/20", 9, false),
    ]
}

/// [`pair`] with [`networks`]: each node also serves its /24 of every network and
/// announces it to the other. The prefixes of [`pair`] stay outside every network,
/// on the nodes' VNI 42, so what [`pair`] forwards this pair forwards alike.
pub fn pair_with_networks() -> (Snapshot, Snapshot) {
    let (mut a, mut b) = pair_specs();
    let p = |s: &str| -> IpNet { s.parse().expect("fixture prefix") };
    let a_nets = [p("198.19.16.0/24"), p("198.19.32.0/24"), p("198.19.48.0/24")];
    let b_nets = [p("198.19.17.0/24"), p("198.19.33.0/24"), p("198.19.49.0/24")];
    for (spec, mine, theirs) in [(&mut a, &a_nets, &b_nets), (&mut b, &b_nets, &a_nets)] {
        spec.local.extend_from_slice(mine);
        let (peer, announced) = &mut spec.peers[0];
        // Announced under the networks' VNIs, as a peer does; both nodes hold the
        // networks, so their own VNIs decide.
        announced.extend(theirs.iter().zip([7, 8, 9]).map(|(p, vni)| (*p, vni)));
        peer.allowed = Table::build(announced.iter().map(|(p, _)| (*p, ())).collect());
        spec.networks = networks();
    }
    (Snapshot::compile(1, a), Snapshot::compile(1, b))
}

/// An IPv4/UDP packet with `payload` bytes.
pub fn udp4(src: [u8; 4], dst: [u8; 4], ttl: u8, payload: usize) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ipv4(src, dst, ttl)
        .udp(5000, 6000)
        .write(&mut v, &vec![7u8; payload])
        .expect("writing to a Vec cannot fail");
    v
}

/// An IPv4/TCP segment from 198.19.1.5:40000 to 198.19.2.7:5201 with `payload`
/// bytes at sequence `seq`.
pub fn tcp4(seq: u32, payload: usize) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ipv4([198, 19, 1, 5], [198, 19, 2, 7], 64)
        .tcp(40000, 5201, seq, 1024)
        .ack(1)
        .write(&mut v, &vec![(seq % 251) as u8; payload])
        .expect("writing to a Vec cannot fail");
    v
}

/// Packets one after another in one buffer, each `gap` bytes after the previous one
/// (a GRO receive buffer holds them behind their encapsulation), with the ranges a
/// worker pushes to the coalescer.
pub fn laid_out(pkts: &[Vec<u8>], gap: usize) -> (Vec<u8>, Vec<crate::pipeline::coalesce::Range>) {
    let mut buf = Vec::new();
    let mut ranges = Vec::with_capacity(pkts.len());
    for p in pkts {
        buf.resize(buf.len() + gap, 0);
        ranges.push(crate::pipeline::coalesce::Range {
            buf: 0,
            start: buf.len() as u32,
            len: p.len() as u32,
        });
        buf.extend_from_slice(p);
    }
    (buf, ranges)
}

/// `pkt` in a fresh buffer behind `HEADROOM` bytes.
pub fn in_buf(pkt: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; HEADROOM + pkt.len() + 16];
    b[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(pkt);
    b
}

/// Model settings for a node that owns all of `range` (default subnet: the range),
/// as an empty configuration would give: VNI 1, overlay MTU 1450, domain
/// weave.local., peers waited for at most 3 s, workers at most 2 s.
/// A DNS query for `name` (id 0x1234, recursion desired), with an OPT record
/// offering `edns` bytes when given.
pub fn dns_query(name: &str, qtype: domain::base::iana::Rtype, edns: Option<u16>) -> Vec<u8> {
    use domain::base::{MessageBuilder, Name};
    use std::str::FromStr;
    let mut b = MessageBuilder::new_vec();
    b.header_mut().set_id(0x1234);
    b.header_mut().set_rd(true);
    let mut q = b.question();
    q.push((Name::<Vec<u8>>::from_str(name).expect("a valid name"), qtype))
        .expect("a question fits");
    let mut add = q.additional();
    if let Some(size) = edns {
        add.opt(|o| {
            o.set_udp_payload_size(size);
            Ok(())
        })
        .expect("an OPT record fits");
    }
    add.finish()
}

pub fn model_settings(range: &str) -> crate::model::Settings {
    let range: ipnet::Ipv4Net = range.parse().expect("fixture range");
    crate::model::Settings {
        range,
        default_subnet: range,
        blocks: vec![range],
        overlay: vec![ipnet::IpNet::V4(range)],
        domain: "weave.local.".into(),
        announce: Vec::new(),
        expose: Vec::new(),
        gateways: Vec::new(),
        snapshot: crate::snapshot::SnapshotBase {
            node_mac: ether::Address::for_node("m"),
            vni: 1,
            mtu: 1450,
        },
        sync_timeout: std::time::Duration::from_secs(3),
        apply_timeout: std::time::Duration::from_secs(2),
        max_peers: 1024,
        networks: crate::model::NetworkSettings::default(),
    }
}

/// A model named "m" on `store` with no dataplane: its snapshots go to `workers`
/// workers that never apply them (0: none to wait for), its host changes and
/// liveness questions to the returned recorder, and no peer thread runs (peers are
/// added to the table, never said hello to).
pub fn model_on<S: crate::store::Store>(
    settings: crate::model::Settings,
    store: S,
    workers: usize,
) -> Result<(crate::model::Model, std::sync::Arc<crate::host::Recorder>), crate::model::OpenError> {
    use crate::peers::{driver::Peers, table::Time, Identity, Table, Timing};
    use std::sync::Arc;
    let identity = Identity {
        name: "m".into(),
        nickname: "m".into(),
        underlay: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        data_port: 4789,
        secret: None,
    };
    let timing = Timing {
        hello_interval: std::time::Duration::from_secs(1),
        dead_after: 3,
    };
    let bounds = crate::peers::Bounds {
        max_peers: 1024,
        overlay: settings.overlay.clone(),
    };
    let table = Table::new(identity, timing, bounds, &[], Arc::default(), Time::now());
    let peers = Arc::new(Peers::new(table));
    let published = Arc::new(crate::snapshot::Published::new(
        Snapshot::compile(0, SnapshotSpec::empty(settings.snapshot)),
        workers,
    ));
    let host = Arc::new(crate::host::Recorder::default());
    let dns = Arc::new(crate::dns::Dns::new(crate::dns::Settings {
        domain: settings.domain.clone(),
        ..crate::dns::Settings::default()
    }));
    let model = crate::model::Model::open(crate::model::Parts {
        dns,
        settings,
        published,
        peers,
        store,
        kernel: host.clone(),
        liveness: host.clone(),
        commits: Arc::default(),
    })?;
    Ok((model, host))
}

/// A directory under the system's temporary directory, removed with everything in it
/// when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// A fresh, empty directory named after `tag` and this process.
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("tunloom-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("creating a temporary directory");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
