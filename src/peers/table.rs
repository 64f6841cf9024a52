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
use crate::snapshot::canonical;
use crate::telemetry::Counters;
use crate::wire::control::{self, Kind};
use crate::wire::Error as WireError;
use ipnet::IpNet;
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

    /// Sets what this node announces: `(prefix, is IPAM block)`. Unchanged entries
    /// keep their versions. Returns the state version (new if anything changed).
    pub fn set_announced(&mut self, list: &[(IpNet, bool)], now: Time) -> u64 {
        let version = now.unix_us.max(self.state + 1);
        let next: Vec<Announce> = list
            .iter()
            .map(|(p, block)| {
                let p = p.trunc();
                let v = self
                    .announced
                    .iter()
                    .find(|a| a.prefix == p && a.block == *block)
                    .map_or(version, |a| a.version);
                Announce {
                    prefix: p,
                    version: v,
                    block: *block,
                }
            })
            .collect();
        if next != self.announced {
            self.announced = next;
            self.state = version;
        }
        self.state
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
        let Ok(packet) = control::Packet::new_checked(bytes) else {
            self.counters.inc(ControlEvent::Malformed);
            return none;
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
        let mut changed = peer.data_addr != data_addr || peer.prefixes != prefixes;
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

    /// Encodes this node's state for peer `i` and queues its pages.
    fn queue_state(&mut self, kind: Kind, i: usize, now: Time) {
        self.seq = now.unix_us.max(self.seq + 1);
        let (to, ack) = (self.peers[i].control_addr, self.peers[i].applied_state);
        codec::encode(
            &self.id,
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
        t.set_announced(&[(announce.parse().unwrap(), false)], at(t0, 0));
        t
    }

    /// This table's hello pages to a peer at `to`, as it would send them.
    fn hello(from: &mut Table, kind: Kind, t0: Instant) -> Vec<Vec<u8>> {
        let mut pages = Vec::new();
        from.seq = at(t0, 0).unix_us.max(from.seq + 1);
        codec::encode(&from.id, kind, from.seq, from.state, 0, &from.announced, &mut pages);
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
                ("198.19.2.0/24".parse().unwrap(), false),
                ("198.19.9.9/32".parse().unwrap(), false),
            ],
            at(t0, 5),
        );
        assert!(s2 > b.peers()[0].acked);
        // Unchanged announcements keep the state.
        assert_eq!(
            b.set_announced(
                &[
                    ("198.19.2.0/24".parse().unwrap(), false),
                    ("198.19.9.9/32".parse().unwrap(), false)
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
        assert_eq!(b.handle(b"TLPC garbage", from, t0), Outcome::default());
        assert_eq!(b.counters().get(ControlEvent::Malformed), 1);
        // Its own hello, reflected back, is ignored.
        let own = hello(&mut b, Kind::Hello, t0);
        assert_eq!(b.handle(&own[0], from, t0), Outcome::default());
        assert_eq!(b.counters().get(ControlEvent::FromSelf), 1);
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
        let nets: Vec<(IpNet, bool)> = (0..200u32)
            .map(|i| (format!("fd00:{i:x}::/64").parse().unwrap(), i % 2 == 0))
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
                    &[(format!("198.19.{}.0/24", name.len()).parse().unwrap(), false)],
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
                ("198.19.1.0/24".parse().unwrap(), false),
                ("198.19.77.1/32".parse().unwrap(), false),
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
