//! The immutable view of the world the dataplane forwards by, and how it is published.
//!
//! The control side owns the model (peers, prefixes, settings), compiles it into a
//! [`Snapshot`] and publishes it through [`Published`]. Workers load the current
//! snapshot once per batch with a lock-free `arc-swap` load and record the generation
//! they saw; a writer that must not answer before the dataplane applies its change
//! waits, bounded, until every worker reports the new generation.
//!
//! Container networks are compiled into their own longest-prefix table apart from
//! the routes: a route says where an address is (this host, a peer), a network says
//! what the address may talk to and under which VNI, and a network's subnet spans
//! hosts while each host routes only its own block of it. The networks' VNIs are kept
//! sorted beside it so the outside path refuses a VNI nobody serves in one binary
//! search, before it parses the inner packet.
//!
//! A peer announces each prefix with the VNI of the network it belongs to (0: none).
//! Where that network is not one of this node's, the snapshot keeps the VNI beside
//! the route ([`Snapshot::peer_vni`]), so this node can still reach it under the
//! right VNI and accept its answers; where it is inside one of this node's networks,
//! the local network's VNI decides and the peer's is ignored (the peer table counts
//! and warns about a disagreement, once).

use crate::route::Table;
use crate::wire::ether;
use arc_swap::ArcSwap;
use crossbeam_utils::CachePadded;
use ipnet::{IpNet, Ipv4Net};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a destination prefix leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextHop {
    /// This host: the prefix is announced by this node and delivered through its TUN.
    Local,
    /// A peer, by index into [`Snapshot::peers`].
    Peer(u16),
    /// This node's service thread: a gateway address tunloom answers itself.
    Service,
}

/// What the dataplane knows about one peer that is up.
#[derive(Debug, Clone)]
pub struct PeerEntry {
    pub name: String,
    /// Where its VXLAN data port is.
    pub data_addr: SocketAddr,
    /// The MAC its frames come from and ours go to.
    pub mac: ether::Address,
    /// The prefixes it announced: the only inner sources accepted from it.
    pub allowed: Table<()>,
}

/// A container network as the dataplane sees it: which addresses belong to it, the
/// VNI its packets travel under between hosts, and whether it may reach anything
/// outside its subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub subnet: Ipv4Net,
    pub vni: u32,
    /// An internal network reaches, and is reached from, nothing but its own subnet.
    pub internal: bool,
}

/// Everything a worker needs to forward a packet, immutable once published.
#[derive(Clone)]
pub struct Snapshot {
    pub generation: u64,
    pub node_mac: ether::Address,
    pub vni: u32,
    /// The largest inner packet the overlay carries without fragmenting the outer one.
    pub mtu: u16,
    pub routes: Table<NextHop>,
    /// The routes without the service addresses: where a packet for a gateway
    /// address goes when it is not for a service tunloom runs there (an echo reply,
    /// a connection to another port) — the host that exposed that address, if any.
    pub beneath_service: Table<NextHop>,
    pub peers: Vec<PeerEntry>,
    /// Peers' underlay addresses, sorted, for the outside path's sender lookup.
    peer_by_addr: Vec<(IpAddr, u16)>,
    /// Source addresses for ICMP errors this node originates.
    pub router_v4: Option<Ipv4Addr>,
    pub router_v6: Option<Ipv6Addr>,
    /// The container networks, by index from `network_by_addr`.
    networks: Vec<Network>,
    network_by_addr: Table<u16>,
    /// The networks' VNIs, sorted and deduplicated, for the outside path's "is this a
    /// VNI this node serves" before it parses the inner packet.
    network_vnis: Vec<u32>,
    /// Peers' prefixes in networks this node does not hold, by the VNI they
    /// announced (non-zero), and those VNIs sorted and deduplicated.
    peer_vni_by_addr: Table<u32>,
    peer_vnis: Vec<u32>,
}

/// What every snapshot of a node carries unchanged: its MAC, its VNI, the overlay MTU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotBase {
    pub node_mac: ether::Address,
    pub vni: u32,
    pub mtu: u16,
}

/// The parts of a snapshot the control side decides.
pub struct SnapshotSpec {
    pub node_mac: ether::Address,
    pub vni: u32,
    pub mtu: u16,
    pub local: Vec<IpNet>,
    /// Gateway addresses served by the service thread (host routes).
    pub service: Vec<IpNet>,
    /// Each peer that is up and the prefixes it announced, with their VNIs (0: none).
    pub peers: Vec<(PeerEntry, Vec<(IpNet, u32)>)>,
    pub router_v4: Option<Ipv4Addr>,
    pub router_v6: Option<Ipv6Addr>,
    /// Container networks (IPv4 subnets that do not overlap; the model refuses
    /// overlapping ones). Empty: no isolation, one VNI, as before networks existed.
    pub networks: Vec<Network>,
}

impl SnapshotSpec {
    /// A node that forwards nothing yet: no prefixes, no peers, no gateways.
    pub fn empty(base: SnapshotBase) -> SnapshotSpec {
        SnapshotSpec {
            node_mac: base.node_mac,
            vni: base.vni,
            mtu: base.mtu,
            local: Vec::new(),
            service: Vec::new(),
            peers: Vec::new(),
            router_v4: None,
            router_v6: None,
            networks: Vec::new(),
        }
    }
}

impl Snapshot {
    /// Whether `ip` is delivered to this host: a local prefix, or a gateway address
    /// this host also exposes (the service thread answers its services, the host the
    /// rest).
    pub fn is_local(&self, ip: IpAddr) -> bool {
        match self.routes.lookup(ip) {
            Some(NextHop::Local) => true,
            Some(NextHop::Service) => self.beneath_service.lookup(ip) == Some(&NextHop::Local),
            _ => false,
        }
    }

    /// Compiles a spec: local prefixes route to this host, each peer's announced
    /// prefixes to it. A prefix announced both locally and by a peer stays local, and
    /// between peers the one listed first keeps it, so a peer cannot take over this
    /// node's traffic by announcing its prefixes. A peer's prefix keeps the VNI it
    /// was announced with when it won its route and lies outside this node's
    /// networks.
    pub fn compile(generation: u64, spec: SnapshotSpec) -> Snapshot {
        // Each prefix's route and VNI: the first peer's, unless local, unless a gateway.
        let mut best: BTreeMap<IpNet, (NextHop, u32)> = BTreeMap::new();
        let mut peers = Vec::with_capacity(spec.peers.len());
        for (i, (peer, prefixes)) in spec.peers.into_iter().enumerate() {
            for (p, vni) in prefixes {
                best.entry(p.trunc()).or_insert((NextHop::Peer(i as u16), vni));
            }
            peers.push(peer);
        }
        best.extend(spec.local.iter().map(|p| (p.trunc(), (NextHop::Local, 0))));
        let beneath_service = Table::build(best.iter().map(|(p, (hop, _))| (*p, *hop)).collect());
        best.extend(spec.service.iter().map(|p| (p.trunc(), (NextHop::Service, 0))));
        let mut peer_by_addr: Vec<(IpAddr, u16)> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| (p.data_addr.ip(), i as u16))
            .collect();
        peer_by_addr.sort();
        // Indices fit u16: a host has far fewer networks than that, and a spec that
        // had more would only lose the ones past the limit.
        let networks: Vec<Network> = spec.networks.into_iter().take(usize::from(u16::MAX)).collect();
        let network_by_addr = Table::build(
            networks
                .iter()
                .enumerate()
                .map(|(i, n)| (IpNet::V4(n.subnet.trunc()), i as u16))
                .collect(),
        );
        let mut network_vnis: Vec<u32> = networks.iter().map(|n| n.vni).collect();
        network_vnis.sort_unstable();
        network_vnis.dedup();
        let peer_vni_entries: Vec<(IpNet, u32)> = best
            .iter()
            .filter(|(p, (hop, vni))| {
                matches!(hop, NextHop::Peer(_))
                    && *vni != 0
                    && !networks
                        .iter()
                        .any(|n| crate::route::overlaps(p, &IpNet::V4(n.subnet.trunc())))
            })
            .map(|(p, (_, vni))| (*p, *vni))
            .collect();
        let mut peer_vnis: Vec<u32> = peer_vni_entries.iter().map(|(_, v)| *v).collect();
        peer_vnis.sort_unstable();
        peer_vnis.dedup();
        let routes = best.into_iter().map(|(p, (hop, _))| (p, hop)).collect();
        Snapshot {
            generation,
            node_mac: spec.node_mac,
            vni: spec.vni,
            mtu: spec.mtu,
            routes: Table::build(routes),
            beneath_service,
            peers,
            peer_by_addr,
            router_v4: spec.router_v4,
            router_v6: spec.router_v6,
            networks,
            network_by_addr,
            network_vnis,
            peer_vni_by_addr: Table::build(peer_vni_entries),
            peer_vnis,
        }
    }

    /// The network `ip` belongs to (longest prefix; networks do not overlap). IPv6
    /// addresses belong to none: networks are IPv4 subnets.
    #[inline]
    pub fn network(&self, ip: IpAddr) -> Option<&Network> {
        match ip {
            IpAddr::V4(a) if !self.networks.is_empty() => {
                let i = self.network_by_addr.lookup_v4(a)?;
                self.networks.get(usize::from(*i))
            }
            _ => None,
        }
    }

    /// The container networks this snapshot was compiled with.
    pub fn networks(&self) -> &[Network] {
        &self.networks
    }

    /// Whether `vni` is one this node serves: the node's own, a network's, or one a
    /// peer announced for a network this node does not hold (its answers come back
    /// under it).
    #[inline]
    pub fn serves_vni(&self, vni: u32) -> bool {
        vni == self.vni || self.network_vnis.binary_search(&vni).is_ok() || self.peer_vnis.binary_search(&vni).is_ok()
    }

    /// The VNI a peer announced for the prefix `ip` is in, when that is a network
    /// this node does not hold (never one of this node's networks: there the local
    /// network's VNI decides).
    #[inline]
    pub fn peer_vni(&self, ip: IpAddr) -> Option<u32> {
        if self.peer_vnis.is_empty() {
            return None;
        }
        self.peer_vni_by_addr.lookup(ip).copied()
    }

    /// Whether `vni` is some network's.
    #[inline]
    pub fn is_network_vni(&self, vni: u32) -> bool {
        self.network_vnis.binary_search(&vni).is_ok()
    }

    /// The peer whose underlay address `addr` is, if any.
    #[inline]
    pub fn peer_by_underlay(&self, addr: IpAddr) -> Option<u16> {
        let addr = canonical(addr);
        self.peer_by_addr
            .binary_search_by(|(a, _)| a.cmp(&addr))
            .ok()
            .map(|i| self.peer_by_addr[i].1)
    }
}

/// IPv4-mapped IPv6 addresses (from dual-stack sockets) compare as IPv4.
pub fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

/// Returned when a worker has not applied a published snapshot in time.
#[derive(Debug, Clone, thiserror::Error)]
#[error("worker {worker} is behind: it has applied generation {seen}, not {wanted}")]
pub struct Behind {
    pub worker: usize,
    pub seen: u64,
    pub wanted: u64,
}

/// Something that interrupts a worker's wait for I/O so it loads a new snapshot.
pub trait Wake: Send + Sync {
    fn wake(&self);
}

impl Wake for mio::Waker {
    fn wake(&self) {
        // A failed wake only delays the worker until its poll timeout.
        let _ = mio::Waker::wake(self);
    }
}

/// The published snapshot, and what each worker has seen of it.
pub struct Published {
    current: ArcSwap<Snapshot>,
    seen: Box<[CachePadded<AtomicU64>]>,
    wakers: Mutex<Vec<Option<Arc<dyn Wake>>>>,
    /// Serialises publishers so generations only grow.
    publish_lock: Mutex<()>,
}

impl Published {
    pub fn new(initial: Snapshot, workers: usize) -> Published {
        Published {
            current: ArcSwap::from_pointee(initial),
            seen: (0..workers).map(|_| CachePadded::new(AtomicU64::new(0))).collect(),
            wakers: Mutex::new((0..workers).map(|_| None).collect()),
            publish_lock: Mutex::new(()),
        }
    }

    pub fn workers(&self) -> usize {
        self.seen.len()
    }

    /// Registers how to interrupt worker `i`'s wait.
    pub fn set_waker(&self, i: usize, w: Arc<dyn Wake>) {
        if let Some(slot) = self.wakers.lock().get_mut(i) {
            *slot = Some(w);
        }
    }

    /// The current snapshot. Workers call this once per batch.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The generation worker `i` last reported.
    pub fn seen(&self, i: usize) -> u64 {
        self.seen.get(i).map_or(0, |s| s.load(Ordering::Acquire))
    }

    /// Worker `i` records the generation it forwards with.
    #[inline]
    pub fn mark_seen(&self, i: usize, generation: u64) {
        if let Some(s) = self.seen.get(i) {
            if s.load(Ordering::Relaxed) != generation {
                s.store(generation, Ordering::Release);
            }
        }
    }

    /// Interrupts worker `i`'s wait for I/O.
    pub fn wake(&self, i: usize) {
        if let Some(Some(w)) = self.wakers.lock().get(i) {
            w.wake();
        }
    }

    /// Publishes the snapshot `build` makes from the next generation number, wakes
    /// every worker and returns that generation.
    pub fn publish(&self, build: impl FnOnce(u64) -> Snapshot) -> u64 {
        let _g = self.publish_lock.lock();
        let generation = self.current.load().generation + 1;
        let snap = build(generation);
        debug_assert_eq!(snap.generation, generation);
        self.current.store(Arc::new(snap));
        for w in self.wakers.lock().iter().flatten() {
            w.wake();
        }
        generation
    }

    /// Waits until every worker has seen `generation`, at most `timeout`.
    pub fn wait_applied(&self, generation: u64, timeout: Duration) -> Result<(), Behind> {
        let deadline = Instant::now() + timeout;
        loop {
            let behind = self
                .seen
                .iter()
                .enumerate()
                .find(|(_, s)| s.load(Ordering::Acquire) < generation);
            match behind {
                None => return Ok(()),
                Some((worker, s)) if Instant::now() >= deadline => {
                    return Err(Behind {
                        worker,
                        seen: s.load(Ordering::Acquire),
                        wanted: generation,
                    })
                }
                Some(_) => std::thread::sleep(Duration::from_micros(200)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str, ip: [u8; 4]) -> PeerEntry {
        PeerEntry {
            name: name.into(),
            data_addr: SocketAddr::new(IpAddr::V4(ip.into()), 4789),
            mac: ether::Address::for_node(name),
            allowed: Table::default(),
        }
    }

    /// Prefixes announced without a VNI.
    fn pfx(list: &[&str]) -> Vec<(IpNet, u32)> {
        list.iter().map(|p| (p.parse().unwrap(), 0)).collect()
    }

    fn spec(peers: Vec<(PeerEntry, Vec<(IpNet, u32)>)>) -> SnapshotSpec {
        SnapshotSpec {
            local: vec!["198.19.1.0/24".parse().unwrap()],
            peers,
            ..SnapshotSpec::empty(SnapshotBase {
                node_mac: ether::Address::for_node("me"),
                vni: 1,
                mtu: 1450,
            })
        }
    }

    #[test]
    fn local_prefixes_win_over_peers_and_first_peer_wins_ties() {
        let s = Snapshot::compile(
            1,
            spec(vec![
                (peer("b", [198, 18, 0, 2]), pfx(&["198.19.2.0/24", "198.19.1.0/24"])),
                (peer("c", [198, 18, 0, 3]), pfx(&["198.19.2.0/24", "198.19.3.0/24"])),
            ]),
        );
        let r = |a: &str| s.routes.lookup(a.parse().unwrap()).copied();
        assert_eq!(r("198.19.1.9"), Some(NextHop::Local));
        assert_eq!(r("198.19.2.9"), Some(NextHop::Peer(0)));
        assert_eq!(r("198.19.3.9"), Some(NextHop::Peer(1)));
        assert_eq!(r("198.19.4.9"), None);
        assert_eq!(s.peer_by_underlay("198.18.0.3".parse().unwrap()), Some(1));
        assert_eq!(s.peer_by_underlay("::ffff:198.18.0.2".parse().unwrap()), Some(0));
        assert_eq!(s.peer_by_underlay("198.18.0.9".parse().unwrap()), None);
    }

    #[test]
    fn a_peers_vni_goes_with_the_route_it_won_outside_local_networks() {
        let with = |list: &[(&str, u32)]| -> Vec<(IpNet, u32)> {
            list.iter().map(|(p, v)| (p.parse().unwrap(), *v)).collect()
        };
        let s = Snapshot::compile(
            1,
            SnapshotSpec {
                networks: vec![Network {
                    subnet: "198.19.16.0/20".parse().unwrap(),
                    vni: 7,
                    internal: false,
                }],
                ..spec(vec![
                    (
                        peer("b", [198, 18, 0, 2]),
                        with(&[("198.19.2.0/24", 0), ("198.19.1.0/24", 5), ("198.19.17.0/24", 9)]),
                    ),
                    (
                        peer("c", [198, 18, 0, 3]),
                        with(&[("198.19.2.0/24", 6), ("198.19.3.0/24", 8), ("198.19.4.0/24", 8)]),
                    ),
                ])
            },
        );
        let v = |a: &str| s.peer_vni(a.parse().unwrap());
        assert_eq!(v("198.19.2.9"), None, "b's route won, and b announced no VNI");
        assert_eq!(v("198.19.1.9"), None, "a local prefix");
        assert_eq!(v("198.19.17.9"), None, "inside this node's network: its VNI decides");
        assert_eq!((v("198.19.3.9"), v("198.19.4.9")), (Some(8), Some(8)));
        assert!(s.serves_vni(8) && !s.serves_vni(5) && !s.serves_vni(6) && !s.serves_vni(9));
        assert_eq!(
            s.routes.lookup("198.19.17.9".parse().unwrap()),
            Some(&NextHop::Peer(0)),
            "the route stays"
        );
        // Without any VNI, nothing is looked up.
        let plain = Snapshot::compile(1, spec(vec![(peer("b", [198, 18, 0, 2]), pfx(&["198.19.2.0/24"]))]));
        assert!(plain.peer_vnis.is_empty());
    }

    #[test]
    fn networks_are_found_by_address_and_vni() {
        let net = |s: &str, vni, internal| Network {
            subnet: s.parse().unwrap(),
            vni,
            internal,
        };
        let s = Snapshot::compile(
            1,
            SnapshotSpec {
                // Host bits in a subnet are ignored.
                networks: vec![net("198.19.16.0/20", 7, false), net("198.19.32.9/20", 8, true)],
                ..spec(vec![])
            },
        );
        let n = |a: &str| s.network(a.parse().unwrap()).copied();
        assert_eq!(n("198.19.17.3"), Some(s.networks()[0]));
        assert_eq!(n("198.19.47.255").map(|n| (n.vni, n.internal)), Some((8, true)));
        assert_eq!(n("198.19.48.0"), None);
        assert_eq!(n("198.19.1.9"), None, "a local prefix outside every network");
        assert_eq!(n("fd00::1"), None);
        assert!(s.serves_vni(1) && s.serves_vni(7) && s.serves_vni(8) && !s.serves_vni(9));
        assert!(!s.is_network_vni(1) && s.is_network_vni(8));
        let empty = Snapshot::compile(1, spec(vec![]));
        assert_eq!(empty.network("198.19.17.3".parse().unwrap()), None);
        assert!(empty.serves_vni(1) && !empty.serves_vni(7));
    }

    #[test]
    fn publish_wait_and_behind() {
        let p = Published::new(Snapshot::compile(0, spec(vec![])), 2);
        let g = p.publish(|g| Snapshot::compile(g, spec(vec![])));
        assert_eq!(g, 1);
        p.mark_seen(0, g);
        let err = p.wait_applied(g, Duration::from_millis(5)).unwrap_err();
        assert_eq!((err.worker, err.seen, err.wanted), (1, 0, 1));
        p.mark_seen(1, g);
        p.wait_applied(g, Duration::from_millis(5)).unwrap();
    }
}
