//! Peers: who they are, whether they are up, what they announce, and the control
//! protocol that keeps all of that current (UDP port 6783).
//!
//! Once per hello interval the peers thread sends this node's full state, paged if
//! large, to every peer it knows: the static peers (from the configuration and from
//! `POST /connect`) and every peer it has heard from. A peer's state counts only when
//! all pages of one sequence number have arrived and, with a cluster secret, every
//! page was signed right. A peer not heard for `dead_after` intervals is down and its
//! routes are withdrawn; it is up again with its next complete hello. A node that stops
//! sends "bye", so its peers withdraw at once.
//!
//! Hellos carry state versions and acknowledgements: each node tells each peer which
//! version of that peer's state it forwards by. A node answers at once when a hello
//! changed what it forwards by (after the new snapshot is applied, so the answer's
//! acknowledgement is true) or shows the sender has not seen its latest state; so a
//! writer can wait until its peers forward by its change ([`Peers::wait`]).
//!
//! This module owns the peer table and what this node announces; the model
//! (`crate::model`) decides the announcements and compiles snapshots from both.

use crate::config::Settings;
use crate::route::Table;
use crate::snapshot::{canonical, PeerEntry};
use crate::wire::control::{self, Announce, Kind, Prefixes};
use crate::wire::{ether, Error as WireError};
use ipnet::IpNet;
use parking_lot::{Condvar, Mutex};
use serde::Serialize;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
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
    /// Listed by the configuration or `POST /connect`: hellos go to it even before it
    /// has said hello, and it stays in the table while down.
    pub target: bool,
    pub last_seen: Option<Instant>,
    pub up_events: u64,
    pub down_events: u64,
    /// The version of this node's state the peer says it forwards by.
    pub acked: u64,
    /// The version of the peer's state this node received last, and the one it
    /// forwards by (acknowledged in hellos).
    received_state: u64,
    applied_state: u64,
    last_seq: u64,
    pending: Option<Pending>,
}

#[derive(Debug, Clone)]
struct Pending {
    seq: u64,
    pages: Vec<Option<Vec<Announce>>>,
}

impl Peer {
    /// Up, with its latest state applied here, and forwarding by `my_state` there.
    pub fn settled(&self, my_state: u64) -> bool {
        self.up && self.applied_state == self.received_state && self.acked >= my_state
    }

    fn new(control_addr: SocketAddr, target: bool) -> Peer {
        Peer {
            name: String::new(),
            nickname: String::new(),
            control_addr,
            data_addr: None,
            prefixes: Vec::new(),
            up: false,
            target,
            last_seen: None,
            up_events: 0,
            down_events: 0,
            acked: 0,
            received_state: 0,
            applied_state: 0,
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
    pub blocks: Vec<String>,
    pub static_peer: bool,
    pub up_events: u64,
    pub down_events: u64,
}

/// What this node announces, and the version of that state.
struct Local {
    announced: Vec<Announce>,
    state: u64,
}

/// What handling one message asks of the caller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// What the dataplane forwards by changed: publish a snapshot, then
    /// [`Peers::applied`].
    pub changed: bool,
    /// Answer this peer at once (after publishing, when `changed`).
    pub reply: Option<SocketAddr>,
}

/// The peer table and this node's announcements.
pub struct Peers {
    settings: Arc<Settings>,
    table: Mutex<Vec<Peer>>,
    /// Signalled whenever a peer's state, acknowledgement or liveness changes.
    moved: Condvar,
    local: Mutex<Local>,
    pub counters: ControlCounters,
    seq: AtomicU64,
    sock: OnceLock<Arc<UdpSocket>>,
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl Peers {
    pub fn new(settings: Arc<Settings>) -> Peers {
        let table = settings.peers.iter().map(|a| Peer::new(*a, true)).collect();
        Peers {
            settings,
            table: Mutex::new(table),
            moved: Condvar::new(),
            local: Mutex::new(Local {
                announced: Vec::new(),
                state: now_micros(),
            }),
            counters: ControlCounters::default(),
            seq: AtomicU64::new(0),
            sock: OnceLock::new(),
        }
    }

    /// Sets what this node announces: `(prefix, is IPAM block)`. Unchanged entries
    /// keep their versions. Returns the state version (new if anything changed).
    pub fn set_announced(&self, list: &[(IpNet, bool)]) -> u64 {
        let mut local = self.local.lock();
        let now = now_micros().max(local.state + 1);
        let next: Vec<Announce> = list
            .iter()
            .map(|(p, block)| {
                let p = p.trunc();
                let version = local
                    .announced
                    .iter()
                    .find(|a| a.prefix == p && a.block == *block)
                    .map_or(now, |a| a.version);
                Announce {
                    prefix: p,
                    version,
                    block: *block,
                }
            })
            .collect();
        if next != local.announced {
            local.announced = next;
            local.state = now;
        }
        local.state
    }

    /// The version of this node's current state.
    pub fn state(&self) -> u64 {
        self.local.lock().state
    }

    pub fn announced(&self) -> Vec<Announce> {
        self.local.lock().announced.clone()
    }

    /// The peers that are up, as the snapshot needs them, with their prefixes.
    pub fn up_entries(&self) -> Vec<(PeerEntry, Vec<IpNet>)> {
        self.table
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
            .collect()
    }

    /// A copy of the peer table.
    pub fn snapshot(&self) -> Vec<Peer> {
        self.table.lock().clone()
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
                prefixes: p
                    .prefixes
                    .iter()
                    .filter(|a| !a.block)
                    .map(|a| a.prefix.to_string())
                    .collect(),
                blocks: p
                    .prefixes
                    .iter()
                    .filter(|a| a.block)
                    .map(|a| a.prefix.to_string())
                    .collect(),
                static_peer: p.target,
                up_events: p.up_events,
                down_events: p.down_events,
            })
            .collect()
    }

    /// Makes `addrs` hello targets. With `replace`, every other target is dropped
    /// (and with it, once it is not heard, its routes). Returns the targets added.
    pub fn set_targets(&self, addrs: &[SocketAddr], replace: bool) -> Vec<SocketAddr> {
        let mut table = self.table.lock();
        if replace {
            table.retain(|p| addrs.contains(&p.control_addr));
            for p in table.iter_mut() {
                p.target = true;
            }
        }
        let mut added = Vec::new();
        for a in addrs {
            match table.iter_mut().find(|p| p.control_addr == *a) {
                Some(p) => p.target = true,
                None => {
                    table.push(Peer::new(*a, true));
                    added.push(*a);
                }
            }
        }
        self.moved.notify_all();
        added
    }

    /// Removes the peer named `who` (a name, an address or address:port) from the
    /// table. Returns it, or None when there is no such peer.
    pub fn remove(&self, who: &str) -> Option<Peer> {
        let mut table = self.table.lock();
        let i = table.iter().position(|p| {
            p.name == who
                || p.control_addr.to_string() == who
                || p.control_addr.ip().to_string() == who
                || p.nickname == who && !who.is_empty()
        })?;
        let p = table.remove(i);
        self.moved.notify_all();
        Some(p)
    }

    /// Puts a removed peer back (its removal could not be stored), unless the
    /// table has one at that address again.
    pub fn put_back(&self, p: Peer) {
        let mut table = self.table.lock();
        if !table.iter().any(|q| q.control_addr == p.control_addr) {
            table.push(p);
            self.moved.notify_all();
        }
    }

    /// Waits, at most `timeout`, until `done` holds for the peer table.
    pub fn wait(&self, timeout: Duration, mut done: impl FnMut(&[Peer]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut table = self.table.lock();
        loop {
            if done(&table) {
                return true;
            }
            if self.moved.wait_until(&mut table, deadline).timed_out() {
                return done(&table);
            }
        }
    }

    /// Encodes this node's state for a peer as pages into `out`.
    fn encode(&self, kind: Kind, ack: u64, out: &mut Vec<Vec<u8>>) {
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
        let local = self.local.lock();
        let base = control::Repr {
            kind,
            seq,
            state: local.state,
            ack,
            page: 0,
            pages: 1,
            data_port: s.config.dataplane.data_port,
            underlay,
            name: &s.node_name,
            nickname: &s.nickname,
            prefixes: Prefixes::Slice(&[]),
        };
        let all: &[Announce] = if kind == Kind::Hello { &local.announced } else { &[] };
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

    fn send(&self, sock: &UdpSocket, kind: Kind, to: SocketAddr, ack: u64) {
        let mut pages = Vec::new();
        self.encode(kind, ack, &mut pages);
        for p in &pages {
            match sock.send_to(p, to) {
                Ok(_) => {
                    self.counters.tx.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.counters.send_errors.fetch_add(1, Ordering::Relaxed);
                    log::debug!("control: send to {to}: {e}");
                }
            }
        }
    }

    /// Sends this node's state to every peer now (each with its acknowledgement).
    pub fn hello_all(&self) {
        if let Some(sock) = self.sock.get() {
            self.send_all(sock, Kind::Hello);
        }
    }

    /// Sends this node's state to `to` now.
    pub fn hello_to(&self, to: SocketAddr) {
        let Some(sock) = self.sock.get() else { return };
        let ack = self
            .table
            .lock()
            .iter()
            .find(|p| p.control_addr == to)
            .map_or(0, |p| p.applied_state);
        self.send(sock, Kind::Hello, to, ack);
    }

    fn send_all(&self, sock: &UdpSocket, kind: Kind) {
        let targets: Vec<(SocketAddr, u64)> = self
            .table
            .lock()
            .iter()
            .map(|p| (p.control_addr, p.applied_state))
            .collect();
        for (to, ack) in targets {
            self.send(sock, kind, to, ack);
        }
    }

    /// Handles one received datagram.
    pub fn handle(&self, bytes: &[u8], from: SocketAddr, now: Instant) -> Outcome {
        self.counters.rx.fetch_add(1, Ordering::Relaxed);
        let from = SocketAddr::new(canonical(from.ip()), from.port());
        let none = Outcome::default();
        let Ok(packet) = control::Packet::new_checked(bytes) else {
            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
            return none;
        };
        if let Err(e) = packet.verify(self.settings.secret.as_deref()) {
            debug_assert_eq!(e, WireError::Unauthenticated);
            self.counters.unauthenticated.fetch_add(1, Ordering::Relaxed);
            log::debug!("control: unauthenticated message from {from}");
            return none;
        }
        let Ok(msg) = control::Repr::parse(&packet) else {
            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
            return none;
        };
        if msg.name == self.settings.node_name {
            self.counters.from_self.fetch_add(1, Ordering::Relaxed);
            return none;
        }
        let my_state = self.local.lock().state;
        let mut table = self.table.lock();
        let idx = match table
            .iter()
            .position(|p| p.name == msg.name)
            .or_else(|| table.iter().position(|p| p.name.is_empty() && p.control_addr == from))
        {
            Some(i) => i,
            None => {
                if msg.kind == Kind::Bye {
                    return none;
                }
                table.push(Peer::new(from, false));
                table.len() - 1
            }
        };
        let peer = &mut table[idx];
        if msg.seq < peer.last_seq || (msg.seq == peer.last_seq && peer.pending.is_none()) {
            self.counters.replayed.fetch_add(1, Ordering::Relaxed);
            return none;
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
                self.down(peer, "said bye");
                self.moved.notify_all();
                return Outcome {
                    changed: true,
                    reply: None,
                };
            }
            return none;
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
            return none;
        };
        pending.pages[usize::from(msg.page)] = Some(msg.prefixes.iter().collect());
        if pending.pages.iter().any(Option::is_none) {
            return none;
        }
        let prefixes: Vec<Announce> = pending
            .pages
            .iter_mut()
            .flat_map(|p| p.take().unwrap_or_default())
            .collect();
        peer.pending = None;
        peer.last_seq = msg.seq;
        peer.last_seen = Some(now);
        peer.acked = peer.acked.max(msg.ack);
        peer.received_state = msg.state;
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
        if !changed {
            // Nothing the dataplane forwards by moved: the state is applied as is.
            peer.applied_state = peer.received_state;
        }
        let behind = msg.ack < my_state;
        let fresh = changed || peer.applied_state != peer.received_state;
        self.moved.notify_all();
        Outcome {
            changed,
            reply: (fresh || behind).then_some(from),
        }
    }

    /// Records that the dataplane now forwards by every state received so far (call
    /// after publishing the snapshot a changed [`Outcome`] asked for).
    pub fn applied(&self) {
        let mut table = self.table.lock();
        for p in table.iter_mut() {
            p.applied_state = p.received_state;
        }
        self.moved.notify_all();
    }

    /// Takes `p` down (its routes go with the next snapshot), counting and logging why.
    fn down(&self, p: &mut Peer, why: &str) {
        p.up = false;
        p.down_events += 1;
        self.counters.peer_down.fetch_add(1, Ordering::Relaxed);
        log::warn!(
            "control: peer {} ({}) {why}; its routes are withdrawn",
            p.name,
            p.nickname
        );
    }

    /// Marks peers not heard for too long as down. Returns whether any changed.
    pub fn expire(&self, now: Instant) -> bool {
        let c = &self.settings.config.control;
        let dead = Duration::from_millis(c.hello_interval_ms) * c.dead_after;
        let mut changed = false;
        for p in self.table.lock().iter_mut() {
            if p.up && p.last_seen.is_none_or(|t| now.duration_since(t) > dead) {
                self.down(p, &format!("missed {} hellos", c.dead_after));
                changed = true;
            }
        }
        if changed {
            self.moved.notify_all();
        }
        changed
    }

    /// Runs the control protocol on `sock` until `shutdown`, then says bye.
    /// `on_change` must publish a snapshot of the new state and return once the
    /// workers forward by it.
    pub fn run(&self, sock: UdpSocket, shutdown: &AtomicBool, on_change: &dyn Fn()) {
        let interval = Duration::from_millis(self.settings.config.control.hello_interval_ms);
        if let Err(e) = sock.set_read_timeout(Some(Duration::from_millis(20).min(interval))) {
            log::error!("control: cannot set socket timeout: {e}");
        }
        let sock = Arc::new(sock);
        let _ = self.sock.set(sock.clone());
        let mut buf = vec![0u8; 65_536];
        let mut next_hello = Instant::now();
        while !shutdown.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= next_hello {
                self.send_all(&sock, Kind::Hello);
                if self.expire(now) {
                    on_change();
                }
                next_hello = now + interval;
            }
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let out = self.handle(&buf[..n], from, Instant::now());
                    if out.changed {
                        on_change();
                        self.applied();
                    }
                    if let Some(to) = out.reply {
                        self.hello_to(to);
                    }
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => log::debug!("control: receive: {e}"),
            }
        }
        self.send_all(&sock, Kind::Bye);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn node(name: &str, announce: &str, secret: Option<&str>) -> Peers {
        let mut text = format!("[node]\nname = \"{name}\"\n[control]\nhello_interval_ms = 100\n");
        if let Some(s) = secret {
            text.push_str(&format!("secret = \"{s}\"\n"));
        }
        let p = Peers::new(Arc::new(Config::parse(&text, Path::new("t")).unwrap()));
        p.set_announced(&[(announce.parse().unwrap(), false)]);
        p
    }

    fn hello(from: &Peers, kind: Kind) -> Vec<Vec<u8>> {
        let mut pages = Vec::new();
        from.encode(kind, 0, &mut pages);
        pages
    }

    const A: &str = "198.18.0.1:6783";

    #[test]
    fn hello_brings_a_peer_up_with_its_prefixes_and_silence_takes_it_down() {
        let a = node("a", "198.19.1.0/24", None);
        let b = node("b", "198.19.2.0/24", None);
        let t0 = Instant::now();
        for p in hello(&a, Kind::Hello) {
            let out = b.handle(&p, A.parse().unwrap(), t0);
            assert!(out.changed);
            assert_eq!(out.reply, Some(A.parse().unwrap()), "a new peer is answered at once");
        }
        b.applied();
        let v = b.views();
        assert_eq!(v.len(), 1);
        assert_eq!((v[0].name.as_str(), v[0].state), ("a", "up"));
        assert_eq!(v[0].data_address, Some("198.18.0.1:4789".parse().unwrap()));
        assert_eq!(v[0].prefixes, vec!["198.19.1.0/24"]);
        assert_eq!(b.up_entries().len(), 1);
        // The same state again changes nothing; an old sequence is a replay.
        let again = hello(&a, Kind::Hello);
        assert!(!b.handle(&again[0], A.parse().unwrap(), t0).changed);
        let old = hello(&a, Kind::Hello);
        b.handle(&hello(&a, Kind::Hello)[0], A.parse().unwrap(), t0);
        assert_eq!(b.handle(&old[0], A.parse().unwrap(), t0), Outcome::default());
        assert!(b.counters.replayed.load(Ordering::Relaxed) >= 1);
        // 3 missed hellos of 100 ms: down.
        assert!(!b.expire(t0 + Duration::from_millis(250)));
        assert!(b.expire(t0 + Duration::from_millis(301)));
        assert_eq!(b.views()[0].state, "down");
        assert!(b.up_entries().is_empty());
        // Back with its next hello.
        assert!(
            b.handle(
                &hello(&a, Kind::Hello)[0],
                A.parse().unwrap(),
                t0 + Duration::from_secs(1)
            )
            .changed
        );
        assert_eq!(b.views()[0].up_events, 2);
    }

    #[test]
    fn acknowledgements_follow_applied_state() {
        let a = node("a", "198.19.1.0/24", None);
        let b = node("b", "198.19.2.0/24", None);
        let b_addr: SocketAddr = "198.18.0.2:6783".parse().unwrap();
        let now = Instant::now();
        // a hears b; a's ack for b is 0 until a has applied b's state.
        assert!(a.handle(&hello(&b, Kind::Hello)[0], b_addr, now).changed);
        let ack_before = a.table.lock()[0].applied_state;
        assert_eq!(ack_before, 0);
        a.applied();
        assert_eq!(a.table.lock()[0].applied_state, b.state());
        // b hears a hello from a that acknowledges b's state.
        let mut pages = Vec::new();
        a.encode(Kind::Hello, b.state(), &mut pages);
        let out = b.handle(&pages[0], A.parse().unwrap(), now);
        b.applied();
        assert_eq!(b.snapshot()[0].acked, b.state());
        assert!(b.wait(Duration::from_millis(10), |t| t.iter().all(|p| p.acked >= b.state())));
        assert!(out.reply.is_some(), "first contact is answered");
        // b changes its announcements: a new state that a has not acknowledged.
        let s2 = b.set_announced(&[
            ("198.19.2.0/24".parse().unwrap(), false),
            ("198.19.9.9/32".parse().unwrap(), false),
        ]);
        assert!(s2 > b.snapshot()[0].acked);
        assert!(!b.wait(Duration::from_millis(10), |t| t.iter().all(|p| p.acked >= s2)));
        // Unchanged announcements keep the state.
        assert_eq!(
            b.set_announced(&[
                ("198.19.2.0/24".parse().unwrap(), false),
                ("198.19.9.9/32".parse().unwrap(), false)
            ]),
            s2
        );
    }

    #[test]
    fn bye_withdraws_at_once() {
        let a = node("a", "198.19.1.0/24", None);
        let b = node("b", "198.19.2.0/24", None);
        let now = Instant::now();
        b.handle(&hello(&a, Kind::Hello)[0], A.parse().unwrap(), now);
        assert!(b.handle(&hello(&a, Kind::Bye)[0], A.parse().unwrap(), now).changed);
        assert_eq!(b.views()[0].state, "down");
    }

    #[test]
    fn targets_replace_and_remove() {
        let b = node("b", "198.19.2.0/24", None);
        let x: SocketAddr = "198.18.0.7:6783".parse().unwrap();
        let y: SocketAddr = "198.18.0.8:6783".parse().unwrap();
        assert_eq!(b.set_targets(&[x], false), vec![x]);
        assert_eq!(b.set_targets(&[x, y], false), vec![y]);
        assert_eq!(b.snapshot().len(), 2);
        b.set_targets(&[y], true);
        assert_eq!(b.snapshot().iter().map(|p| p.control_addr).collect::<Vec<_>>(), vec![y]);
        assert!(b.remove("198.18.0.8").is_some());
        assert!(b.remove("198.18.0.8").is_none());
    }

    #[test]
    fn secrets_must_match_and_garbage_is_counted() {
        let a = node("a", "198.19.1.0/24", Some("secret-one"));
        let b = node("b", "198.19.2.0/24", Some("secret-two"));
        let c = node("c", "198.19.3.0/24", None);
        let now = Instant::now();
        assert!(!b.handle(&hello(&a, Kind::Hello)[0], A.parse().unwrap(), now).changed);
        assert!(!b.handle(&hello(&c, Kind::Hello)[0], A.parse().unwrap(), now).changed);
        assert!(!c.handle(&hello(&a, Kind::Hello)[0], A.parse().unwrap(), now).changed);
        assert_eq!(b.counters.unauthenticated.load(Ordering::Relaxed), 2);
        assert!(b.views().is_empty());
        assert_eq!(b.handle(b"TLPC garbage", A.parse().unwrap(), now), Outcome::default());
        assert_eq!(b.counters.malformed.load(Ordering::Relaxed), 1);
        // Its own hello, reflected back, is ignored.
        assert_eq!(
            b.handle(&hello(&b, Kind::Hello)[0], A.parse().unwrap(), now),
            Outcome::default()
        );
        assert_eq!(b.counters.from_self.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn large_states_are_paged_and_applied_only_when_complete() {
        let big = Peers::new(Arc::new(
            Config::parse("[node]\nname = \"big\"\n", Path::new("t")).unwrap(),
        ));
        let nets: Vec<(IpNet, bool)> = (0..200u32)
            .map(|i| (format!("fd00:{i:x}::/64").parse().unwrap(), i % 2 == 0))
            .collect();
        big.set_announced(&nets);
        let b = node("b", "198.19.2.0/24", None);
        let pages = hello(&big, Kind::Hello);
        assert!(pages.len() > 1);
        assert!(pages.iter().all(|p| p.len() <= control::MAX_MESSAGE_LEN));
        let now = Instant::now();
        for p in &pages[..pages.len() - 1] {
            assert!(!b.handle(p, A.parse().unwrap(), now).changed);
        }
        assert!(b.up_entries().is_empty());
        assert!(b.handle(pages.last().unwrap(), A.parse().unwrap(), now).changed);
        assert_eq!(b.views()[0].prefixes.len(), 100);
        assert_eq!(b.views()[0].blocks.len(), 100);
    }
}
