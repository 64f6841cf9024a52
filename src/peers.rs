//! Peers: who they are, whether they are up, what they announce, and the control
//! protocol thread that keeps all of that current (UDP port 6783).
//!
//! Once per hello interval the thread sends this node's full state, paged if large,
//! to every peer it knows: the static peers from the configuration and every peer
//! it has heard from. A peer's state counts only when all pages of one sequence
//! number have arrived and, with a cluster secret, every page was signed right. A peer
//! not heard for `dead_after` intervals is down and its routes are withdrawn; it is up
//! again with its next complete hello. A node that stops sends "bye", so its peers
//! withdraw at once.
//!
//! Every change that matters to forwarding (a peer up or down, its data address or
//! prefixes changed) compiles and publishes a new dataplane snapshot.

use crate::config::Settings;
use crate::route::Table;
use crate::snapshot::{canonical, PeerEntry, Published, Snapshot, SnapshotSpec};
use crate::wire::control::{self, Announce, Kind, Prefixes};
use crate::wire::{ether, Error as WireError};
use ipnet::IpNet;
use parking_lot::Mutex;
use serde::Serialize;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One peer as this node knows it.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Empty until its first hello arrives.
    pub name: String,
    pub nickname: String,
    pub control_addr: SocketAddr,
    pub data_addr: Option<SocketAddr>,
    pub prefixes: Vec<Announce>,
    pub up: bool,
    pub from_config: bool,
    pub last_seen: Option<Instant>,
    pub up_events: u64,
    pub down_events: u64,
    last_seq: u64,
    pending: Option<Pending>,
}

#[derive(Debug, Clone)]
struct Pending {
    seq: u64,
    pages: Vec<Option<Vec<Announce>>>,
}

impl Peer {
    fn new(control_addr: SocketAddr, from_config: bool) -> Peer {
        Peer {
            name: String::new(),
            nickname: String::new(),
            control_addr,
            data_addr: None,
            prefixes: Vec::new(),
            up: false,
            from_config,
            last_seen: None,
            up_events: 0,
            down_events: 0,
            last_seq: 0,
            pending: None,
        }
    }
}

/// Control-protocol counters.
#[derive(Default)]
pub struct ControlCounters {
    pub rx: AtomicU64,
    pub tx: AtomicU64,
    pub malformed: AtomicU64,
    pub unauthenticated: AtomicU64,
    pub replayed: AtomicU64,
    pub from_self: AtomicU64,
    pub peer_up: AtomicU64,
    pub peer_down: AtomicU64,
    pub send_errors: AtomicU64,
}

impl ControlCounters {
    pub fn to_json(&self) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "rx_messages": g(&self.rx),
            "tx_messages": g(&self.tx),
            "dropped_malformed": g(&self.malformed),
            "dropped_unauthenticated": g(&self.unauthenticated),
            "dropped_replayed": g(&self.replayed),
            "dropped_from_self": g(&self.from_self),
            "send_errors": g(&self.send_errors),
            "peer_up_events": g(&self.peer_up),
            "peer_down_events": g(&self.peer_down),
        })
    }
}

/// A peer as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerView {
    pub name: String,
    pub nickname: String,
    pub state: &'static str,
    pub control_address: SocketAddr,
    pub data_address: Option<SocketAddr>,
    pub last_seen_ms_ago: Option<u64>,
    pub prefixes: Vec<String>,
    pub static_peer: bool,
    pub up_events: u64,
    pub down_events: u64,
}

/// The peer table and what this node announces; the model the snapshot is
/// compiled from.
pub struct Peers {
    settings: Arc<Settings>,
    published: Arc<Published>,
    table: Mutex<Vec<Peer>>,
    announced: Vec<Announce>,
    pub counters: ControlCounters,
    seq: AtomicU64,
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl Peers {
    pub fn new(settings: Arc<Settings>, published: Arc<Published>) -> Peers {
        let version = now_micros();
        let announced = settings
            .announced
            .iter()
            .map(|p| Announce { prefix: *p, version })
            .collect();
        let table = settings.peers.iter().map(|a| Peer::new(*a, true)).collect();
        Peers {
            settings,
            published,
            table: Mutex::new(table),
            announced,
            counters: ControlCounters::default(),
            seq: AtomicU64::new(0),
        }
    }

    /// The snapshot spec for the current peer table.
    pub fn spec(&self) -> SnapshotSpec {
        let s = &self.settings;
        let peers = self
            .table
            .lock()
            .iter()
            .filter(|p| p.up)
            .filter_map(|p| {
                let data_addr = p.data_addr?;
                let prefixes: Vec<IpNet> = p.prefixes.iter().map(|a| a.prefix).collect();
                Some((
                    PeerEntry {
                        name: p.name.clone(),
                        data_addr,
                        mac: ether::Address::for_node(&p.name),
                        allowed: Table::build(prefixes.iter().map(|n| (*n, ())).collect()),
                    },
                    prefixes,
                ))
            })
            .collect();
        let first = |v6: bool| {
            s.config
                .overlay
                .expose
                .iter()
                .map(|n| n.addr())
                .find(|a| a.is_ipv6() == v6)
        };
        SnapshotSpec {
            node_mac: s.node_mac,
            vni: s.config.dataplane.vni,
            mtu: s.mtu,
            local: s.announced.clone(),
            service: s.config.overlay.gateways.iter().map(|a| IpNet::from(*a)).collect(),
            peers,
            router_v4: first(false).and_then(|a| match a {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            }),
            router_v6: first(true).and_then(|a| match a {
                IpAddr::V6(a) => Some(a),
                IpAddr::V4(_) => None,
            }),
        }
    }

    /// Compiles and publishes a snapshot of the current state; returns its generation.
    pub fn republish(&self) -> u64 {
        let spec = self.spec();
        self.published.publish(|g| Snapshot::compile(g, spec))
    }

    pub fn views(&self) -> Vec<PeerView> {
        let now = Instant::now();
        self.table
            .lock()
            .iter()
            .map(|p| PeerView {
                name: p.name.clone(),
                nickname: p.nickname.clone(),
                state: match (p.up, p.last_seen) {
                    (true, _) => "up",
                    (false, Some(_)) => "down",
                    (false, None) => "unknown",
                },
                control_address: p.control_addr,
                data_address: p.data_addr,
                last_seen_ms_ago: p.last_seen.map(|t| now.duration_since(t).as_millis() as u64),
                prefixes: p.prefixes.iter().map(|a| a.prefix.to_string()).collect(),
                static_peer: p.from_config,
                up_events: p.up_events,
                down_events: p.down_events,
            })
            .collect()
    }

    /// Encodes this node's state as pages into `out`, one Vec per page.
    fn encode(&self, kind: Kind, out: &mut Vec<Vec<u8>>) {
        out.clear();
        let s = &self.settings;
        let seq = {
            let now = now_micros();
            let prev = self.seq.load(Ordering::Relaxed);
            let next = now.max(prev + 1);
            self.seq.store(next, Ordering::Relaxed);
            next
        };
        let underlay = s
            .config
            .dataplane
            .advertise
            .unwrap_or(if s.config.dataplane.bind.is_ipv6() {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
            });
        let base = control::Repr {
            kind,
            seq,
            page: 0,
            pages: 1,
            data_port: s.config.dataplane.data_port,
            underlay,
            name: &s.node_name,
            nickname: &s.nickname,
            prefixes: Prefixes::Slice(&[]),
        };
        let all: &[Announce] = if kind == Kind::Hello { &self.announced } else { &[] };
        let per = base.prefixes_per_page(s.secret.is_some()).max(1);
        let chunks: Vec<&[Announce]> = if all.is_empty() {
            vec![&[][..]]
        } else {
            all.chunks(per).collect()
        };
        let pages = chunks.len().min(usize::from(u16::MAX)) as u16;
        for (i, chunk) in chunks.into_iter().enumerate().take(usize::from(pages)) {
            let r = control::Repr {
                page: i as u16,
                pages,
                prefixes: Prefixes::Slice(chunk),
                ..base
            };
            let mut buf = vec![0u8; r.buffer_len(s.secret.is_some())];
            match r.emit(&mut buf, s.secret.as_deref()) {
                Ok(n) => {
                    buf.truncate(n);
                    out.push(buf);
                }
                Err(e) => log::error!("cannot encode control message: {e}"),
            }
        }
    }

    fn send_all(&self, sock: &UdpSocket, kind: Kind, pages: &mut Vec<Vec<u8>>) {
        self.encode(kind, pages);
        let targets: Vec<SocketAddr> = self.table.lock().iter().map(|p| p.control_addr).collect();
        for t in targets {
            for p in pages.iter() {
                match sock.send_to(p, t) {
                    Ok(_) => {
                        self.counters.tx.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        self.counters.send_errors.fetch_add(1, Ordering::Relaxed);
                        log::debug!("control: send to {t}: {e}");
                    }
                }
            }
        }
    }

    /// Handles one received datagram. Returns whether the forwarding state changed.
    pub fn handle(&self, bytes: &[u8], from: SocketAddr, now: Instant) -> bool {
        self.counters.rx.fetch_add(1, Ordering::Relaxed);
        let from = SocketAddr::new(canonical(from.ip()), from.port());
        let packet = match control::Packet::new_checked(bytes) {
            Ok(p) => p,
            Err(_) => {
                self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                return false;
            }
        };
        if let Err(e) = packet.verify(self.settings.secret.as_deref()) {
            debug_assert_eq!(e, WireError::Unauthenticated);
            self.counters.unauthenticated.fetch_add(1, Ordering::Relaxed);
            log::debug!("control: unauthenticated message from {from}");
            return false;
        }
        let Ok(msg) = control::Repr::parse(&packet) else {
            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        if msg.name == self.settings.node_name {
            self.counters.from_self.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let mut table = self.table.lock();
        let idx = match table
            .iter()
            .position(|p| p.name == msg.name)
            .or_else(|| table.iter().position(|p| p.name.is_empty() && p.control_addr == from))
        {
            Some(i) => i,
            None => {
                if msg.kind == Kind::Bye {
                    return false;
                }
                table.push(Peer::new(from, false));
                table.len() - 1
            }
        };
        let peer = &mut table[idx];
        if msg.seq < peer.last_seq || (msg.seq == peer.last_seq && peer.pending.is_none()) {
            self.counters.replayed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if peer.name.is_empty() {
            log::info!("control: peer {} ({}) at {from} says hello", msg.name, msg.nickname);
        }
        peer.name = msg.name.to_string();
        peer.nickname = msg.nickname.to_string();
        peer.control_addr = from;
        if msg.kind == Kind::Bye {
            peer.last_seq = msg.seq;
            peer.pending = None;
            if peer.up {
                peer.up = false;
                peer.down_events += 1;
                self.counters.peer_down.fetch_add(1, Ordering::Relaxed);
                log::info!("control: peer {} left; its routes are withdrawn", peer.name);
                return true;
            }
            return false;
        }
        // Collect this page; apply the state once every page of the sequence is here.
        let pages = usize::from(msg.pages);
        if peer
            .pending
            .as_ref()
            .is_none_or(|p| p.seq != msg.seq || p.pages.len() != pages)
        {
            peer.pending = Some(Pending {
                seq: msg.seq,
                pages: vec![None; pages],
            });
        }
        let Some(pending) = peer.pending.as_mut() else {
            return false;
        };
        pending.pages[usize::from(msg.page)] = Some(msg.prefixes.iter().collect());
        if pending.pages.iter().any(Option::is_none) {
            return false;
        }
        let prefixes: Vec<Announce> = pending
            .pages
            .iter_mut()
            .flat_map(|p| p.take().unwrap_or_default())
            .collect();
        peer.pending = None;
        peer.last_seq = msg.seq;
        peer.last_seen = Some(now);
        let ip = if msg.underlay.is_unspecified() {
            from.ip()
        } else {
            canonical(msg.underlay)
        };
        let data_addr = Some(SocketAddr::new(ip, msg.data_port));
        let mut changed = peer.data_addr != data_addr || peer.prefixes != prefixes;
        peer.data_addr = data_addr;
        peer.prefixes = prefixes;
        if !peer.up {
            peer.up = true;
            peer.up_events += 1;
            self.counters.peer_up.fetch_add(1, Ordering::Relaxed);
            log::info!(
                "control: peer {} ({}) is up, data at {ip}:{}, announcing {} prefixes",
                peer.name,
                peer.nickname,
                msg.data_port,
                peer.prefixes.len()
            );
            changed = true;
        }
        changed
    }

    /// Marks peers not heard for too long as down. Returns whether any changed.
    pub fn expire(&self, now: Instant) -> bool {
        let c = &self.settings.config.control;
        let dead = Duration::from_millis(c.hello_interval_ms) * c.dead_after;
        let mut changed = false;
        for p in self.table.lock().iter_mut() {
            if p.up && p.last_seen.is_none_or(|t| now.duration_since(t) > dead) {
                p.up = false;
                p.down_events += 1;
                self.counters.peer_down.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "control: peer {} ({}) missed {} hellos; its routes are withdrawn",
                    p.name,
                    p.nickname,
                    c.dead_after
                );
                changed = true;
            }
        }
        changed
    }

    /// Runs the control protocol on `sock` until `shutdown`, then says bye.
    pub fn run(&self, sock: UdpSocket, shutdown: &AtomicBool) {
        let interval = Duration::from_millis(self.settings.config.control.hello_interval_ms);
        if let Err(e) = sock.set_read_timeout(Some(Duration::from_millis(20).min(interval))) {
            log::error!("control: cannot set socket timeout: {e}");
        }
        let mut buf = vec![0u8; 65_536];
        let mut pages = Vec::new();
        let mut next_hello = Instant::now();
        while !shutdown.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= next_hello {
                self.send_all(&sock, Kind::Hello, &mut pages);
                if self.expire(now) {
                    self.republish();
                }
                next_hello = now + interval;
            }
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    if self.handle(&buf[..n], from, Instant::now()) {
                        self.republish();
                    }
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => log::debug!("control: receive: {e}"),
            }
        }
        self.send_all(&sock, Kind::Bye, &mut pages);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn node(name: &str, announce: &str, secret: Option<&str>) -> Peers {
        let mut text = format!(
            "[node]\nname = \"{name}\"\n[overlay]\nannounce = [\"{announce}\"]\n[control]\nhello_interval_ms = 100\n"
        );
        if let Some(s) = secret {
            text.push_str(&format!("secret = \"{s}\"\n"));
        }
        let s = Arc::new(Config::parse(&text, Path::new("t")).unwrap());
        let published = Arc::new(Published::new(
            Snapshot::compile(
                0,
                Peers::new(
                    s.clone(),
                    Arc::new(Published::new(Snapshot::compile(0, empty_spec()), 1)),
                )
                .spec(),
            ),
            1,
        ));
        Peers::new(s, published)
    }

    fn empty_spec() -> SnapshotSpec {
        SnapshotSpec {
            node_mac: ether::Address::for_node("x"),
            vni: 1,
            mtu: 1450,
            local: vec![],
            service: vec![],
            peers: vec![],
            router_v4: None,
            router_v6: None,
        }
    }

    fn hello(from: &Peers, kind: Kind) -> Vec<Vec<u8>> {
        let mut pages = Vec::new();
        from.encode(kind, &mut pages);
        pages
    }

    const A: &str = "198.18.0.1:6783";

    #[test]
    fn hello_brings_a_peer_up_with_its_prefixes_and_silence_takes_it_down() {
        let a = node("a", "198.19.1.0/24", None);
        let b = node("b", "198.19.2.0/24", None);
        let t0 = Instant::now();
        for p in hello(&a, Kind::Hello) {
            assert!(b.handle(&p, A.parse().unwrap(), t0));
        }
        let v = b.views();
        assert_eq!(v.len(), 1);
        assert_eq!((v[0].name.as_str(), v[0].state), ("a", "up"));
        assert_eq!(v[0].data_address, Some("198.18.0.1:4789".parse().unwrap()));
        assert_eq!(v[0].prefixes, vec!["198.19.1.0/24"]);
        let spec = b.spec();
        assert_eq!(spec.peers.len(), 1);
        // The same state again changes nothing; an old sequence is a replay.
        let again = hello(&a, Kind::Hello);
        assert!(!b.handle(&again[0], A.parse().unwrap(), t0));
        let old = hello(&a, Kind::Hello);
        b.handle(&hello(&a, Kind::Hello)[0], A.parse().unwrap(), t0);
        assert!(!b.handle(&old[0], A.parse().unwrap(), t0));
        assert!(b.counters.replayed.load(Ordering::Relaxed) >= 1);
        // 3 missed hellos of 100 ms: down.
        assert!(!b.expire(t0 + Duration::from_millis(250)));
        assert!(b.expire(t0 + Duration::from_millis(301)));
        assert_eq!(b.views()[0].state, "down");
        assert!(b.spec().peers.is_empty());
        // Back with its next hello.
        assert!(b.handle(
            &hello(&a, Kind::Hello)[0],
            A.parse().unwrap(),
            t0 + Duration::from_secs(1)
        ));
        assert_eq!(b.views()[0].up_events, 2);
    }

    #[test]
    fn bye_withdraws_at_once() {
        let a = node("a", "198.19.1.0/24", None);
        let b = node("b", "198.19.2.0/24", None);
        let now = Instant::now();
        b.handle(&hello(&a, Kind::Hello)[0], A.parse().unwrap(), now);
        assert!(b.handle(&hello(&a, Kind::Bye)[0], A.parse().unwrap(), now));
        assert_eq!(b.views()[0].state, "down");
    }

    #[test]
    fn secrets_must_match_and_garbage_is_counted() {
        let a = node("a", "198.19.1.0/24", Some("secret-one"));
        let b = node("b", "198.19.2.0/24", Some("secret-two"));
        let c = node("c", "198.19.3.0/24", None);
        let now = Instant::now();
        assert!(!b.handle(&hello(&a, Kind::Hello)[0], A.parse().unwrap(), now));
        assert!(!b.handle(&hello(&c, Kind::Hello)[0], A.parse().unwrap(), now));
        assert!(!c.handle(&hello(&a, Kind::Hello)[0], A.parse().unwrap(), now));
        assert_eq!(b.counters.unauthenticated.load(Ordering::Relaxed), 2);
        assert!(b.views().is_empty());
        assert!(!b.handle(b"TLPC garbage", A.parse().unwrap(), now));
        assert_eq!(b.counters.malformed.load(Ordering::Relaxed), 1);
        // Its own hello, reflected back, is ignored.
        assert!(!b.handle(&hello(&b, Kind::Hello)[0], A.parse().unwrap(), now));
        assert_eq!(b.counters.from_self.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn large_states_are_paged_and_applied_only_when_complete() {
        let text = {
            let nets: Vec<String> = (0..200).map(|i| format!("\"fd00:{i:x}::/64\"")).collect();
            format!("[node]\nname = \"big\"\n[overlay]\nannounce = [{}]\n", nets.join(","))
        };
        let s = Arc::new(Config::parse(&text, Path::new("t")).unwrap());
        let big = Peers::new(s, Arc::new(Published::new(Snapshot::compile(0, empty_spec()), 1)));
        let b = node("b", "198.19.2.0/24", None);
        let pages = hello(&big, Kind::Hello);
        assert!(pages.len() > 1);
        assert!(pages.iter().all(|p| p.len() <= control::MAX_MESSAGE_LEN));
        let now = Instant::now();
        for p in &pages[..pages.len() - 1] {
            assert!(!b.handle(p, A.parse().unwrap(), now));
        }
        assert!(b.spec().peers.is_empty());
        assert!(b.handle(pages.last().unwrap(), A.parse().unwrap(), now));
        assert_eq!(b.views()[0].prefixes.len(), 200);
    }
}
