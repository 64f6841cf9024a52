//! The control protocol as pure state: the peer table, what this node announces, and
//! what is due to be sent. It owns no socket and reads no clock: the caller hands in
//! each datagram with the time it arrived ([`Table::handle`]), asks what to send
//! ([`Table::poll_transmit`]) and when to ask again ([`Table::poll_timeout`]), and
//! tells it when the dataplane applied a change ([`Table::applied`]).
//!
//! Call order, per wake-up of the driver: `handle` each datagram (publishing a
//! snapshot and calling `applied` after each one whose [`Outcome`] says `changed`),
//! then `expire`, then `poll_transmit` until it returns `None`. Answers are encoded
//! only when polled, so an acknowledgement always says what is applied by then.

use super::codec;
use super::{Announce, Bounds, ControlEvent, Identity, Timing};
use crate::route::overlaps;
use crate::snapshot::canonical;
use crate::telemetry::Counters;
use crate::wire::control::{self, Kind};
use crate::wire::Error as WireError;
use ipnet::{IpNet, Ipv4Net};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

/// A moment as the table needs it: monotonic for liveness and timers, and wall-clock
/// microseconds for state versions and sequence numbers, which must keep growing
/// across restarts so peers never take a new message for a replay.
#[derive(Debug, Clone, Copy)]
pub struct Time {
    pub at: Instant,
    pub unix_us: u64,
}

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
    /// The control protocol version its last message came in, which this node
    /// answers in ([`control::VERSION`] until it is heard).
    pub speaks: u8,
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

    /// "up", "down" (heard from before) or "unknown" (never heard from).
    pub fn state_name(&self) -> &'static str {
        match (self.up, self.last_seen) {
            (true, _) => "up",
            (false, Some(_)) => "down",
            (false, None) => "unknown",
        }
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
            speaks: control::VERSION,
            received_state: 0,
            applied_state: 0,
            last_seq: 0,
            pending: None,
        }
    }
}

/// What handling one message asks of the caller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// What the dataplane forwards by changed: publish a snapshot, then
    /// [`Table::applied`].
    pub changed: bool,
    /// This peer is answered at once (queued; sent by the next `poll_transmit`).
    pub reply: Option<SocketAddr>,
}

/// A prefix a peer announces under a VNI other than the one this node's network
/// there has. The local network's VNI is the one used; see [`Table::set_networks`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VniConflict {
    pub peer: String,
    pub prefix: IpNet,
    /// The VNI the peer announced.
    pub theirs: u32,
    /// The VNI of this node's network the prefix overlaps.
    pub ours: u32,
}

/// One datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
}

/// The peer table and this node's announcements.
pub struct Table {
    id: Identity,
    timing: Timing,
    bounds: Bounds,
    peers: Vec<Peer>,
    announced: Vec<Announce>,
    /// This node's container networks: (subnet, VNI).
    networks: Vec<(Ipv4Net, u32)>,
    /// Peers' announcements that disagree with `networks`, each warned about once.
    conflicts: Vec<VniConflict>,
    /// Addresses already warned about for sending an unknown protocol version.
    version_warned: Vec<SocketAddr>,
    state: u64,
    seq: u64,
    counters: Arc<Counters<ControlEvent>>,
    /// Encoded pages waiting to be polled.
    queue: VecDeque<Transmit>,
    /// Peers to send this node's state to at once.
    urgent: Vec<SocketAddr>,
    /// When the next round of hellos is due; `None`: now.
    next_hello: Option<Instant>,
    /// Bye was said: nothing but what is queued goes out any more.
    closing: bool,
    pages: Vec<Vec<u8>>,
}

impl Table {
    /// A table that says hello to `targets` from the start; its first state version
    /// is `now.unix_us`.
    pub fn new(
        id: Identity,
        timing: Timing,
        bounds: Bounds,
        targets: &[SocketAddr],
        counters: Arc<Counters<ControlEvent>>,
        now: Time,
    ) -> Table {
        Table {
            id,
            timing,
            bounds,
            peers: targets.iter().map(|a| Peer::new(*a, true)).collect(),
            announced: Vec::new(),
            networks: Vec::new(),
            conflicts: Vec::new(),
            version_warned: Vec::new(),
            state: now.unix_us,
            seq: 0,
            counters,
            queue: VecDeque::new(),
            urgent: Vec::new(),
            next_hello: None,
            closing: false,
            pages: Vec::new(),
        }
    }

    pub fn identity(&self) -> &Identity {
        &self.id
    }

    pub fn bounds(&self) -> &Bounds {
        &self.bounds
    }

    pub fn counters(&self) -> &Arc<Counters<ControlEvent>> {
        &self.counters
    }

    /// Sets what this node announces: `(prefix, is IPAM block, VNI)`, VNI 0 for a
    /// prefix outside every network. Unchanged entries keep their versions. Returns
    /// the state version (new if anything changed).
    pub fn set_announced(&mut self, list: &[(IpNet, bool, u32)], now: Time) -> u64 {
        let version = now.unix_us.max(self.state + 1);
        let next: Vec<Announce> = list
            .iter()
            .map(|&(p, block, vni)| {
                let p = p.trunc();
                let v = self
                    .announced
                    .iter()
                    .find(|a| a.prefix == p && a.block == block && a.vni == vni)
                    .map_or(version, |a| a.version);
                Announce {
                    prefix: p,
                    version: v,
                    block,
                    vni,
                }
            })
            .collect();
        if next != self.announced {
            self.announced = next;
            self.state = version;
        }
        self.state
    }

    /// Sets this node's container networks, `(subnet, VNI)`, which peers'
    /// announcements are checked against: a peer that announces a prefix inside one
    /// under another non-zero VNI is in conflict with it, counted and warned about
    /// once; the snapshot keeps the local network's VNI there.
    pub fn set_networks(&mut self, networks: &[(Ipv4Net, u32)]) {
        if self.networks != networks {
            self.networks = networks.iter().map(|(n, v)| (n.trunc(), *v)).collect();
            self.check_conflicts();
        }
    }

    /// The announcements of peers that disagree with this node's networks now.
    pub fn conflicts(&self) -> &[VniConflict] {
        &self.conflicts
    }

    /// Recomputes the conflicts; counts and warns about each one not already known.
    fn check_conflicts(&mut self) {
        let mut now = Vec::new();
        for p in &self.peers {
            for a in p.prefixes.iter().filter(|a| a.vni != 0) {
                for &(net, ours) in &self.networks {
                    if ours != a.vni && overlaps(&a.prefix, &IpNet::V4(net)) {
                        now.push(VniConflict {
                            peer: p.name.clone(),
                            prefix: a.prefix,
                            theirs: a.vni,
                            ours,
                        });
                    }
                }
            }
        }
        for c in now.iter().filter(|c| !self.conflicts.contains(c)) {
            self.counters.inc(ControlEvent::VniConflict);
            log::warn!(
                "control: peer {} announces {} under VNI {}, but this node's network {} there has VNI {}; \
                 VNI {} is used (create the network with the same VNI on every host)",
                c.peer,
                c.prefix,
                c.theirs,
                self.networks
                    .iter()
                    .find(|(n, v)| *v == c.ours && overlaps(&c.prefix, &IpNet::V4(*n)))
                    .map_or_else(String::new, |(n, _)| n.to_string()),
                c.ours,
                c.ours
            );
        }
        self.conflicts = now;
    }

    /// The version of this node's current state.
    pub fn state(&self) -> u64 {
        self.state
    }

    pub fn announced(&self) -> &[Announce] {
        &self.announced
    }

    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// Makes `addrs` hello targets and says hello to each at once. With `replace`,
    /// every other peer is dropped (and with it, from the next snapshot, its routes).
    /// Returns the targets added.
    pub fn set_targets(&mut self, addrs: &[SocketAddr], replace: bool) -> Vec<SocketAddr> {
        if replace {
            self.peers.retain(|p| addrs.contains(&p.control_addr));
            self.release_memory();
            self.check_conflicts();
            for p in &mut self.peers {
                p.target = true;
            }
        }
        let mut added = Vec::new();
        for a in addrs {
            match self.peers.iter_mut().find(|p| p.control_addr == *a) {
                Some(p) => p.target = true,
                None => {
                    self.peers.push(Peer::new(*a, true));
                    added.push(*a);
                }
            }
            self.hello_now(Some(*a));
        }
        added
    }

    /// The peer named `who` (a name, an address, address:port or nickname).
    pub fn find(&self, who: &str) -> Option<&Peer> {
        self.position(who).map(|i| &self.peers[i])
    }

    fn position(&self, who: &str) -> Option<usize> {
        self.peers.iter().position(|p| {
            p.name == who
                || p.control_addr.to_string() == who
                || p.control_addr.ip().to_string() == who
                || p.nickname == who && !who.is_empty()
        })
    }

    /// Removes the peer named `who` (as [`Table::find`] names it).
    pub fn remove(&mut self, who: &str) -> Option<Peer> {
        let i = self.position(who)?;
        let p = self.peers.remove(i);
        self.release_memory();
        self.check_conflicts();
        Some(p)
    }

    /// Gives memory back once the table shrank well below what it held.
    fn release_memory(&mut self) {
        if self.peers.capacity() > 64 && self.peers.capacity() > 4 * self.peers.len() {
            self.peers.shrink_to_fit();
        }
    }

    /// Puts a removed peer back (its removal could not be stored), unless the table
    /// has one at that address again.
    pub fn put_back(&mut self, p: Peer) {
        if !self.peers.iter().any(|q| q.control_addr == p.control_addr) {
            self.peers.push(p);
        }
    }

    /// Sends this node's state to `to` (every peer: `None`) with the next poll.
    pub fn hello_now(&mut self, to: Option<SocketAddr>) {
        match to {
            Some(a) if !self.urgent.contains(&a) => self.urgent.push(a),
            Some(_) => {}
            None => self.next_hello = None,
        }
    }

    /// Handles one received datagram.
    pub fn handle(&mut self, bytes: &[u8], from: SocketAddr, now: Instant) -> Outcome {
        self.counters.inc(ControlEvent::Rx);
        let from = SocketAddr::new(canonical(from.ip()), from.port());
        let none = Outcome::default();
        let packet = match control::Packet::new_checked(bytes) {
            Ok(p) => p,
            Err(WireError::Version(v)) => {
                self.counters.inc(ControlEvent::UnknownVersion);
                self.warn_version(from, v);
                return none;
            }
            Err(_) => {
                self.counters.inc(ControlEvent::Malformed);
                return none;
            }
        };
        if let Err(e) = packet.verify(self.id.secret.as_deref()) {
            debug_assert_eq!(e, WireError::Unauthenticated);
            self.counters.inc(ControlEvent::Unauthenticated);
            log::debug!("control: unauthenticated message from {from}");
            return none;
        }
        let Ok(msg) = control::Repr::parse(&packet) else {
            self.counters.inc(ControlEvent::Malformed);
            return none;
        };
        if msg.name == self.id.name {
            self.counters.inc(ControlEvent::FromSelf);
            return none;
        }
        let my_state = self.state;
        let idx = match self.peers.iter().position(|p| p.name == msg.name).or_else(|| {
            self.peers
                .iter()
                .position(|p| p.name.is_empty() && p.control_addr == from)
        }) {
            Some(i) => i,
            None => {
                if msg.kind == Kind::Bye {
                    return none;
                }
                if self.peers.len() >= self.bounds.max_peers {
                    self.counters.inc(ControlEvent::PeerLimit);
                    log::debug!(
                        "control: {} at {from} not taken in: control.max_peers reached",
                        msg.name
                    );
                    return none;
                }
                self.peers.push(Peer::new(from, false));
                self.peers.len() - 1
            }
        };
        // The data address this hello names, as peers will send to it.
        let data_ip: IpAddr = if msg.underlay.is_unspecified() {
            from.ip()
        } else {
            canonical(msg.underlay)
        };
        if self.bounds.in_overlay(data_ip) || self.bounds.in_overlay(from.ip()) {
            self.counters.inc(ControlEvent::BadAddress);
            log::debug!(
                "control: {} names data address {data_ip} (from {from}), inside the overlay",
                msg.name
            );
            if self.peers[idx].name.is_empty() && !self.peers[idx].target {
                self.peers.remove(idx);
            }
            return none;
        }
        let counters = self.counters.clone();
        let peer = &mut self.peers[idx];
        if msg.seq < peer.last_seq || (msg.seq == peer.last_seq && peer.pending.is_none()) {
            counters.inc(ControlEvent::Replayed);
            return none;
        }
        if peer.name.is_empty() {
            log::info!("control: peer {} ({}) at {from} says hello", msg.name, msg.nickname);
        }
        peer.name = msg.name.to_string();
        peer.nickname = msg.nickname.to_string();
        peer.control_addr = from;
        if peer.speaks != packet.version() {
            log::info!(
                "control: peer {} ({}) speaks version {}; answering in it",
                peer.name,
                peer.nickname,
                packet.version()
            );
            peer.speaks = packet.version();
        }
        if msg.kind == Kind::Bye {
            peer.last_seq = msg.seq;
            peer.pending = None;
            if peer.up {
                down(peer, &counters, "said bye");
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
        let ip = data_ip;
        let data_addr = Some(SocketAddr::new(ip, msg.data_port));
        let prefixes_moved = peer.prefixes != prefixes;
        let mut changed = peer.data_addr != data_addr || prefixes_moved;
        peer.data_addr = data_addr;
        peer.prefixes = prefixes;
        if !peer.up {
            peer.up = true;
            peer.up_events += 1;
            counters.inc(ControlEvent::PeerUp);
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
        if prefixes_moved {
            self.check_conflicts();
        }
        let reply = (fresh || behind).then_some(from);
        if let Some(a) = reply {
            self.hello_now(Some(a));
        }
        Outcome { changed, reply }
    }

    /// Records that the dataplane now forwards by every state received so far (call
    /// after publishing the snapshot a changed [`Outcome`] asked for).
    pub fn applied(&mut self) {
        for p in &mut self.peers {
            p.applied_state = p.received_state;
        }
    }

    /// Marks peers not heard for `dead_after` hello intervals as down. Returns
    /// whether any went down (their routes go with the next snapshot).
    pub fn expire(&mut self, now: Instant) -> bool {
        let dead = self.timing.hello_interval * self.timing.dead_after;
        let mut changed = false;
        for p in &mut self.peers {
            if p.up && p.last_seen.is_none_or(|t| now.duration_since(t) > dead) {
                let why = format!("missed {} hellos", self.timing.dead_after);
                down(p, &self.counters, &why);
                changed = true;
            }
        }
        changed
    }

    /// The next datagram to send, if any is due at `now`.
    pub fn poll_transmit(&mut self, now: Time) -> Option<Transmit> {
        if self.queue.is_empty() && !self.closing {
            if self.next_hello.is_none_or(|t| now.at >= t) {
                self.next_hello = Some(now.at + self.timing.hello_interval);
                self.urgent.clear();
                for i in 0..self.peers.len() {
                    self.queue_state(Kind::Hello, i, now);
                }
            } else if let Some(to) = self.urgent.pop() {
                match self.peers.iter().position(|p| p.control_addr == to) {
                    Some(i) => self.queue_state(Kind::Hello, i, now),
                    None => log::debug!("control: no peer at {to} to answer"),
                }
            }
        }
        self.queue.pop_front()
    }

    /// When `poll_transmit` has something new to send.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.queue.is_empty() || (!self.urgent.is_empty() && !self.closing) {
            return None;
        }
        self.next_hello
    }

    /// Queues a "bye" to every peer (the node is stopping); nothing else is sent
    /// after it.
    pub fn bye(&mut self, now: Time) {
        self.urgent.clear();
        self.closing = true;
        for i in 0..self.peers.len() {
            self.queue_state(Kind::Bye, i, now);
        }
    }

    /// Warns, once per address (for as many addresses as the table takes peers),
    /// that `from` sent a version this node does not speak.
    fn warn_version(&mut self, from: SocketAddr, version: u8) {
        if self.version_warned.contains(&from) || self.version_warned.len() >= self.bounds.max_peers {
            log::debug!("control: message in unknown version {version} from {from}");
            return;
        }
        self.version_warned.push(from);
        log::warn!(
            "control: {from} speaks control protocol version {version}; this node speaks {} to {} \
             (counted as dropped_unknown_version; upgrade this node to peer with it)",
            control::MIN_VERSION,
            control::VERSION
        );
    }

    /// Encodes this node's state for peer `i` and queues its pages.
    fn queue_state(&mut self, kind: Kind, i: usize, now: Time) {
        self.seq = now.unix_us.max(self.seq + 1);
        let (to, ack) = (self.peers[i].control_addr, self.peers[i].applied_state);
        codec::encode(
            &self.id,
            self.peers[i].speaks,
            kind,
            self.seq,
            self.state,
            ack,
            &self.announced,
            &mut self.pages,
        );
        for p in self.pages.drain(..) {
            self.queue.push_back(Transmit { dst: to, payload: p });
        }
    }
}

/// Takes `p` down (its routes go with the next snapshot), counting and logging why.
fn down(p: &mut Peer, counters: &Counters<ControlEvent>, why: &str) {
    p.up = false;
    p.down_events += 1;
    counters.inc(ControlEvent::PeerDown);
    log::warn!(
        "control: peer {} ({}) {why}; its routes are withdrawn",
        p.name,
        p.nickname
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::time::Duration;

    const A: &str = "198.18.0.1:6783";
    const B: &str = "198.18.0.2:6783";

    fn id(name: &str, secret: Option<&str>) -> Identity {
        Identity {
            name: name.into(),
            nickname: format!("{name}-nick"),
            underlay: "0.0.0.0".parse().unwrap(),
            data_port: 4789,
            secret: secret.map(|s| s.as_bytes().to_vec()),
        }
    }

    fn timing() -> Timing {
        Timing {
            hello_interval: Duration::from_millis(100),
            dead_after: 3,
        }
    }

    fn bounds() -> Bounds {
        Bounds {
            max_peers: 8,
            overlay: vec!["198.19.0.0/16".parse().unwrap(), "10.32.0.0/12".parse().unwrap()],
        }
    }

    fn at(t0: Instant, ms: u64) -> Time {
        Time {
            at: t0 + Duration::from_millis(ms),
            unix_us: 1_700_000_000_000_000 + ms * 1000,
        }
    }

    fn node(name: &str, announce: &str, secret: Option<&str>, t0: Instant) -> Table {
        let mut t = Table::new(id(name, secret), timing(), bounds(), &[], Arc::default(), at(t0, 0));
        t.set_announced(&[(announce.parse().unwrap(), false, 0)], at(t0, 0));
        t
    }

    /// This table's hello pages to a peer at `to`, as it would send them.
    fn hello(from: &mut Table, kind: Kind, t0: Instant) -> Vec<Vec<u8>> {
        let mut pages = Vec::new();
        from.seq = at(t0, 0).unix_us.max(from.seq + 1);
        codec::encode(
            &from.id,
            control::VERSION,
            kind,
            from.seq,
            from.state,
            0,
            &from.announced,
            &mut pages,
        );
        pages
    }

    #[test]
    fn hello_brings_a_peer_up_with_its_prefixes_and_silence_takes_it_down() {
        let t0 = Instant::now();
        let mut a = node("a", "198.19.1.0/24", None, t0);
        let mut b = node("b", "198.19.2.0/24", None, t0);
        for p in hello(&mut a, Kind::Hello, t0) {
            let out = b.handle(&p, A.parse().unwrap(), t0);
            assert!(out.changed);
            assert_eq!(out.reply, Some(A.parse().unwrap()), "a new peer is answered at once");
        }
        b.applied();
        let v = b.peers();
        assert_eq!(v.len(), 1);
        assert_eq!((v[0].name.as_str(), v[0].state_name()), ("a", "up"));
        assert_eq!(v[0].data_addr, Some("198.18.0.1:4789".parse().unwrap()));
        assert_eq!(
            v[0].prefixes.iter().map(|p| p.prefix.to_string()).collect::<Vec<_>>(),
            vec!["198.19.1.0/24"]
        );
        // The same state again changes nothing; an old sequence is a replay.
        let again = hello(&mut a, Kind::Hello, t0);
        assert!(!b.handle(&again[0], A.parse().unwrap(), t0).changed);
        let old = hello(&mut a, Kind::Hello, t0);
        let newer = hello(&mut a, Kind::Hello, t0);
        b.handle(&newer[0], A.parse().unwrap(), t0);
        assert_eq!(b.handle(&old[0], A.parse().unwrap(), t0), Outcome::default());
        assert!(b.counters().get(ControlEvent::Replayed) >= 1);
        // 3 missed hellos of 100 ms: down.
        assert!(!b.expire(t0 + Duration::from_millis(250)));
        assert!(b.expire(t0 + Duration::from_millis(301)));
        assert_eq!(b.peers()[0].state_name(), "down");
        // Back with its next hello.
        let p = hello(&mut a, Kind::Hello, t0);
        assert!(b.handle(&p[0], A.parse().unwrap(), t0 + Duration::from_secs(1)).changed);
        assert_eq!(b.peers()[0].up_events, 2);
    }

    #[test]
    fn acknowledgements_follow_applied_state() {
        let t0 = Instant::now();
        let mut a = node("a", "198.19.1.0/24", None, t0);
        let mut b = node("b", "198.19.2.0/24", None, t0);
        let b_addr: SocketAddr = B.parse().unwrap();
        // a hears b; a's ack for b is 0 until a has applied b's state.
        assert!(a.handle(&hello(&mut b, Kind::Hello, t0)[0], b_addr, t0).changed);
        assert_eq!(a.peers[0].applied_state, 0);
        a.applied();
        assert_eq!(a.peers[0].applied_state, b.state());
        // a's answer, polled now, acknowledges b's state.
        let tx = a.poll_transmit(at(t0, 1)).unwrap();
        assert_eq!(tx.dst, b_addr);
        let out = b.handle(&tx.payload, A.parse().unwrap(), t0);
        b.applied();
        assert_eq!(b.peers()[0].acked, b.state());
        assert!(out.reply.is_some(), "first contact is answered");
        // b changes its announcements: a new state that a has not acknowledged.
        let s2 = b.set_announced(
            &[
                ("198.19.2.0/24".parse().unwrap(), false, 0),
                ("198.19.9.9/32".parse().unwrap(), false, 0),
            ],
            at(t0, 5),
        );
        assert!(s2 > b.peers()[0].acked);
        // Unchanged announcements keep the state.
        assert_eq!(
            b.set_announced(
                &[
                    ("198.19.2.0/24".parse().unwrap(), false, 0),
                    ("198.19.9.9/32".parse().unwrap(), false, 0)
                ],
                at(t0, 9)
            ),
            s2
        );
    }

    #[test]
    fn targets_replace_and_remove() {
        let t0 = Instant::now();
        let mut b = node("b", "198.19.2.0/24", None, t0);
        let x: SocketAddr = "198.18.0.7:6783".parse().unwrap();
        let y: SocketAddr = "198.18.0.8:6783".parse().unwrap();
        assert_eq!(b.set_targets(&[x], false), vec![x]);
        assert_eq!(b.set_targets(&[x, y], false), vec![y]);
        assert_eq!(b.peers().len(), 2);
        b.set_targets(&[y], true);
        assert_eq!(b.peers().iter().map(|p| p.control_addr).collect::<Vec<_>>(), vec![y]);
        assert!(b.remove("198.18.0.8").is_some());
        assert!(b.remove("198.18.0.8").is_none());
    }

    #[test]
    fn secrets_must_match_and_garbage_is_counted() {
        let t0 = Instant::now();
        let mut a = node("a", "198.19.1.0/24", Some("secret-one"), t0);
        let mut b = node("b", "198.19.2.0/24", Some("secret-two"), t0);
        let mut c = node("c", "198.19.3.0/24", None, t0);
        let from = A.parse().unwrap();
        assert!(!b.handle(&hello(&mut a, Kind::Hello, t0)[0], from, t0).changed);
        assert!(!b.handle(&hello(&mut c, Kind::Hello, t0)[0], from, t0).changed);
        assert!(!c.handle(&hello(&mut a, Kind::Hello, t0)[0], from, t0).changed);
        assert_eq!(b.counters().get(ControlEvent::Unauthenticated), 2);
        assert!(b.peers().is_empty());
        assert_eq!(b.handle(b"TLPC\x02garbage", from, t0), Outcome::default());
        assert_eq!(b.counters().get(ControlEvent::Malformed), 1);
        // Its own hello, reflected back, is ignored.
        let own = hello(&mut b, Kind::Hello, t0);
        assert_eq!(b.handle(&own[0], from, t0), Outcome::default());
        assert_eq!(b.counters().get(ControlEvent::FromSelf), 1);
    }

    #[test]
    fn a_version_1_peer_is_understood_and_answered_in_version_1() {
        let t0 = Instant::now();
        let mut a = Table::new(id("a", None), timing(), bounds(), &[], Arc::default(), at(t0, 0));
        a.set_announced(&[("198.19.16.0/24".parse().unwrap(), false, 7)], at(t0, 0));
        let mut b = node("b", "198.19.2.0/24", None, t0);
        // a as an older tunloom sends it: version 1, no VNIs.
        a.seq += 1;
        let mut v1 = Vec::new();
        codec::encode(&a.id, 1, Kind::Hello, a.seq, a.state, 0, &a.announced, &mut v1);
        assert_eq!(v1[0][4], 1);
        assert!(b.handle(&v1[0], A.parse().unwrap(), t0).changed);
        b.applied();
        let p = &b.peers()[0];
        assert_eq!((p.state_name(), p.speaks), ("up", 1));
        assert_eq!(
            p.prefixes
                .iter()
                .map(|a| (a.prefix.to_string(), a.vni))
                .collect::<Vec<_>>(),
            vec![("198.19.16.0/24".to_string(), 0)]
        );
        // b answers in version 1, which the old peer parses.
        let tx = b.poll_transmit(at(t0, 1)).unwrap();
        assert_eq!(tx.payload[4], 1);
        assert!(control::Packet::new_checked(&tx.payload[..]).is_ok());
        // Upgraded, a speaks version 2: its VNI arrives, and b answers in version 2.
        let v2 = hello(&mut a, Kind::Hello, t0);
        assert!(b.handle(&v2[0], A.parse().unwrap(), t0).changed, "the VNI is news");
        b.applied();
        assert_eq!(b.peers()[0].speaks, 2);
        assert_eq!(b.peers()[0].prefixes[0].vni, 7);
        b.hello_now(None);
        assert_eq!(b.poll_transmit(at(t0, 2)).unwrap().payload[4], 2);
    }

    #[test]
    fn unknown_versions_are_counted_apart_from_garbage() {
        let t0 = Instant::now();
        let mut a = node("a", "198.19.1.0/24", None, t0);
        let mut b = node("b", "198.19.2.0/24", None, t0);
        let mut p = hello(&mut a, Kind::Hello, t0).remove(0);
        p[4] = 3;
        for _ in 0..3 {
            assert_eq!(b.handle(&p, A.parse().unwrap(), t0), Outcome::default());
        }
        assert_eq!(b.counters().get(ControlEvent::UnknownVersion), 3);
        assert_eq!(b.counters().get(ControlEvent::Malformed), 0);
        assert_eq!(b.version_warned.len(), 1, "warned once for the address");
        assert!(b.peers().is_empty());
    }

    #[test]
    fn vnis_travel_with_prefixes_and_conflicts_are_warned_once() {
        let t0 = Instant::now();
        let mut a = Table::new(id("a", None), timing(), bounds(), &[], Arc::default(), at(t0, 0));
        a.set_announced(
            &[
                ("198.19.16.0/24".parse().unwrap(), false, 7),
                ("198.19.1.0/24".parse().unwrap(), false, 0),
            ],
            at(t0, 0),
        );
        let mut b = node("b", "198.19.2.0/24", None, t0);
        // b holds the same network's subnet, under VNI 9.
        b.set_networks(&[("198.19.16.0/20".parse().unwrap(), 9)]);
        assert!(
            b.handle(&hello(&mut a, Kind::Hello, t0)[0], A.parse().unwrap(), t0)
                .changed
        );
        b.applied();
        let got = super::super::announced_vnis(&b.peers()[0].prefixes);
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            vec![("198.19.16.0/24".to_string(), 7)]
        );
        let conflict = VniConflict {
            peer: "a".into(),
            prefix: "198.19.16.0/24".parse().unwrap(),
            theirs: 7,
            ours: 9,
        };
        assert_eq!(b.conflicts(), std::slice::from_ref(&conflict));
        assert_eq!(b.counters().get(ControlEvent::VniConflict), 1);
        // The same state again, or another change of a's, is not a new conflict.
        b.handle(&hello(&mut a, Kind::Hello, t0)[0], A.parse().unwrap(), t0);
        a.set_announced(
            &[
                ("198.19.16.0/24".parse().unwrap(), false, 7),
                ("198.19.3.0/24".parse().unwrap(), false, 0),
            ],
            at(t0, 1),
        );
        assert!(
            b.handle(&hello(&mut a, Kind::Hello, t0)[0], A.parse().unwrap(), t0)
                .changed
        );
        assert_eq!(b.counters().get(ControlEvent::VniConflict), 1);
        // Resolved when the networks agree; warned again if they part once more.
        b.set_networks(&[("198.19.16.0/20".parse().unwrap(), 7)]);
        assert!(b.conflicts().is_empty());
        b.set_networks(&[("198.19.16.0/20".parse().unwrap(), 9)]);
        assert_eq!(b.conflicts(), &[conflict]);
        assert_eq!(b.counters().get(ControlEvent::VniConflict), 2);
        // Gone with the peer.
        assert!(b.remove("a").is_some());
        assert!(b.conflicts().is_empty());
        // A VNI change of this node's own prefix is a new state.
        let s1 = b.state();
        let s2 = b.set_announced(&[("198.19.2.0/24".parse().unwrap(), false, 5)], at(t0, 7));
        assert!(s2 > s1);
        assert_eq!(b.announced()[0].vni, 5);
    }

    #[test]
    fn data_addresses_inside_the_overlay_and_peers_past_the_limit_are_refused() {
        let t0 = Instant::now();
        let mut a = node("a", "198.19.1.0/24", None, t0);
        let mut b = node("b", "198.19.2.0/24", None, t0);
        // A hello that came through the tunnel itself (its source is an overlay
        // address), or that names one as its data address.
        let pages = hello(&mut a, Kind::Hello, t0);
        assert_eq!(
            b.handle(&pages[0], "198.19.1.1:6783".parse().unwrap(), t0),
            Outcome::default()
        );
        a.id.underlay = "10.32.0.9".parse().unwrap();
        let pages = hello(&mut a, Kind::Hello, t0);
        assert_eq!(b.handle(&pages[0], A.parse().unwrap(), t0), Outcome::default());
        assert_eq!(b.counters().get(ControlEvent::BadAddress), 2);
        assert!(b.peers().is_empty(), "no trace of it");
        // The table takes at most max_peers (8) peers; the rest are counted.
        for i in 0..10u8 {
            let mut p = node(&format!("p{i}"), "198.19.3.0/24", None, t0);
            let pages = hello(&mut p, Kind::Hello, t0);
            b.handle(&pages[0], SocketAddr::from(([198, 18, 1, i], 6783)), t0);
        }
        assert_eq!(b.peers().len(), 8);
        assert_eq!(b.counters().get(ControlEvent::PeerLimit), 2);
    }

    #[test]
    fn large_states_are_paged_and_applied_only_when_complete() {
        let t0 = Instant::now();
        let mut big = Table::new(id("big", None), timing(), bounds(), &[], Arc::default(), at(t0, 0));
        let nets: Vec<(IpNet, bool, u32)> = (0..200u32)
            .map(|i| (format!("fd00:{i:x}::/64").parse().unwrap(), i % 2 == 0, i))
            .collect();
        big.set_announced(&nets, at(t0, 0));
        let mut b = node("b", "198.19.2.0/24", None, t0);
        let pages = hello(&mut big, Kind::Hello, t0);
        assert!(pages.len() > 1);
        assert!(pages.iter().all(|p| p.len() <= control::MAX_MESSAGE_LEN));
        for p in &pages[..pages.len() - 1] {
            assert!(!b.handle(p, A.parse().unwrap(), t0).changed);
        }
        assert!(b.peers()[0].prefixes.is_empty() && !b.peers()[0].up);
        assert!(b.handle(pages.last().unwrap(), A.parse().unwrap(), t0).changed);
        let (prefixes, blocks) = super::super::split_announced(&b.peers()[0].prefixes);
        assert_eq!((prefixes.len(), blocks.len()), (100, 100));
    }

    /// Two tables joined by an in-memory network, driven with injected time: each
    /// tick delivers what was sent (unless the link is cut) and polls both.
    struct Pair {
        t0: Instant,
        now_ms: u64,
        nodes: [Table; 2],
        addrs: [SocketAddr; 2],
        link_up: bool,
        /// Snapshots each node "published" (changed outcomes and expiries).
        published: [u32; 2],
    }

    impl Pair {
        fn new() -> Pair {
            let t0 = Instant::now();
            let addrs: [SocketAddr; 2] = [A.parse().unwrap(), B.parse().unwrap()];
            let mk = |name: &str, peer: SocketAddr| {
                let mut t = Table::new(
                    id(name, Some("shared-secret")),
                    timing(),
                    bounds(),
                    &[peer],
                    Arc::default(),
                    at(t0, 0),
                );
                t.set_announced(
                    &[(format!("198.19.{}.0/24", name.len()).parse().unwrap(), false, 0)],
                    at(t0, 0),
                );
                t
            };
            Pair {
                t0,
                now_ms: 0,
                nodes: [mk("a", addrs[1]), mk("bb", addrs[0])],
                addrs,
                link_up: true,
                published: [0, 0],
            }
        }

        /// Advances time by `ms` and runs every node's poll loop until quiet.
        fn tick(&mut self, ms: u64) {
            self.now_ms += ms;
            let now = at(self.t0, self.now_ms);
            for _ in 0..100 {
                let mut moved = false;
                for i in 0..2 {
                    if self.nodes[i].expire(now.at) {
                        self.published[i] += 1;
                    }
                    while let Some(t) = self.nodes[i].poll_transmit(now) {
                        moved = true;
                        let j = self.addrs.iter().position(|a| *a == t.dst).unwrap();
                        if self.link_up {
                            let out = self.nodes[j].handle(&t.payload, self.addrs[i], now.at);
                            if out.changed {
                                self.published[j] += 1;
                                self.nodes[j].applied();
                            }
                        }
                    }
                }
                if !moved {
                    return;
                }
            }
            panic!("the two tables never went quiet");
        }

        fn view(&self, i: usize) -> HashMap<String, (&'static str, Vec<String>)> {
            self.nodes[i]
                .peers()
                .iter()
                .map(|p| {
                    let prefixes = p.prefixes.iter().map(|a| a.prefix.to_string()).collect();
                    (p.name.clone(), (p.state_name(), prefixes))
                })
                .collect()
        }
    }

    #[test]
    fn two_tables_meet_announce_miss_hellos_and_say_bye_without_a_socket() {
        let mut n = Pair::new();
        // Hello: each side's first poll reaches the other; both are up and settled.
        n.tick(0);
        assert_eq!(n.view(0)["bb"], ("up", vec!["198.19.2.0/24".to_string()]));
        assert_eq!(n.view(1)["a"], ("up", vec!["198.19.1.0/24".to_string()]));
        let (sa, sb) = (n.nodes[0].state(), n.nodes[1].state());
        assert!(n.nodes[0].peers()[0].settled(sa) && n.nodes[1].peers()[0].settled(sb));
        // Announce: a new prefix on a reaches b with a's next hello round, and b's
        // acknowledgement comes back at once.
        let s2 = n.nodes[0].set_announced(
            &[
                ("198.19.1.0/24".parse().unwrap(), false, 0),
                ("198.19.77.1/32".parse().unwrap(), false, 0),
            ],
            at(n.t0, 50),
        );
        n.nodes[0].hello_now(None);
        n.tick(50);
        assert_eq!(n.view(1)["a"].1, vec!["198.19.1.0/24", "198.19.77.1/32"]);
        assert!(n.nodes[0].peers()[0].settled(s2), "b acknowledged a's new state");
        // Steady hellos keep both up.
        for _ in 0..10 {
            n.tick(100);
        }
        assert_eq!((n.view(0)["bb"].0, n.view(1)["a"].0), ("up", "up"));
        // Cut the link: after 3 missed hellos (300 ms) each takes the other down.
        n.link_up = false;
        let published = n.published;
        n.tick(100);
        n.tick(100);
        n.tick(100);
        assert_eq!(n.view(0)["bb"].0, "up", "not yet after 300 ms");
        n.tick(50);
        assert_eq!((n.view(0)["bb"].0, n.view(1)["a"].0), ("down", "down"));
        assert_eq!(n.published, [published[0] + 1, published[1] + 1], "each withdrew once");
        // The link heals: the next hellos bring both back.
        n.link_up = true;
        n.tick(100);
        assert_eq!((n.view(0)["bb"].0, n.view(1)["a"].0), ("up", "up"));
        assert_eq!(n.nodes[1].peers()[0].up_events, 2);
        // Bye: b withdraws a at once, without waiting for hellos to stop; a change on
        // a after it (an API write racing the shutdown) sends nothing more.
        n.nodes[0].bye(at(n.t0, n.now_ms));
        n.nodes[0].hello_now(None);
        n.nodes[0].set_targets(&[B.parse().unwrap()], false);
        n.tick(1);
        assert_eq!(n.view(1)["a"].0, "down");
        n.tick(200);
        assert_eq!(n.view(1)["a"].0, "down", "no hello after the bye");
        assert_eq!(n.nodes[1].counters().get(ControlEvent::PeerDown), 2);
    }
}
