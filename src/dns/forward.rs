//! Queries on their way upstream: which clients asked, under which id, of which
//! server, until when. It decides and does no I/O: the service thread sends what
//! it is told to and hands back what arrives.
//!
//! Each forwarded query gets a fresh random id (each client's own is restored in its
//! answer), so an off-path sender has to guess it as well as the server, the source
//! port the service thread picked and the question. A question already on its way
//! is not asked again: later clients wait for the same answer (up to
//! [`MAX_WAITERS`]), so flooding one question does not multiply the chances of a
//! spoofed answer. A query not answered within the timeout is asked of the next
//! server; when none is left the clients get SERVFAIL. At most `max_pending`
//! queries are outstanding: beyond that a query is refused at once, not queued.

use super::cache::Key;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::Hasher;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Clients that wait for one upstream answer at most.
pub const MAX_WAITERS: usize = 8;

/// How an upstream is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Udp,
    /// Its UDP answer was truncated: asked again over TCP.
    Tcp,
}

/// A client waiting for an answer: where it goes, under which id, in how many bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiter<C> {
    pub client: C,
    pub id: u16,
    pub limit: usize,
    pub started: Instant,
}

/// A query waiting for its answer.
#[derive(Debug)]
pub struct Pending<C> {
    pub waiters: [Option<Waiter<C>>; MAX_WAITERS],
    /// The query as sent upstream (with our id).
    pub query: Vec<u8>,
    /// Its question and flags, to check answers by and to cache them under.
    pub key: Key,
    /// Index of the server asked last, and how many have been asked.
    server: usize,
    tries: usize,
    pub via: Via,
    /// Which of the service thread's upstream sockets it went out of (UDP).
    pub socket: usize,
    deadline: Instant,
}

/// What became of a query to forward.
#[derive(Debug, PartialEq, Eq)]
pub enum Started {
    /// Send the query of `id` to `to` over UDP.
    Send { id: u16, to: SocketAddr },
    /// The same question is on its way: the client waits for that answer.
    Joined,
}

/// What to do about an outstanding query.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send `id`'s query to this server over UDP.
    Send { id: u16, to: SocketAddr },
    /// Every server was asked: answer `id`'s clients with SERVFAIL.
    GiveUp { id: u16 },
}

/// Why a query was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NoUpstream,
    TooMany,
}

fn question_hash(key: &Key) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(key.as_slice());
    h.finish()
}

pub struct Forwarder<C> {
    servers: Vec<SocketAddr>,
    timeout: Duration,
    max_pending: usize,
    pending: HashMap<u16, Pending<C>>,
    /// The outstanding query of each question (by hash; a collision only means a
    /// second query is sent).
    by_question: HashMap<u64, u16>,
    /// Where the next query starts: servers are taken in turn, as a resolver's
    /// `rotate` option does, so one slow server does not take every first try.
    next_server: usize,
    /// No query times out before this (it may be early: then a scan finds nothing).
    soonest: Option<Instant>,
    /// Query buffers of finished queries, reused.
    spare: Vec<Vec<u8>>,
}

impl<C: Copy + PartialEq> Forwarder<C> {
    pub fn new(servers: Vec<SocketAddr>, timeout: Duration, max_pending: usize) -> Forwarder<C> {
        Forwarder {
            servers,
            timeout,
            max_pending,
            pending: HashMap::with_capacity(max_pending),
            by_question: HashMap::with_capacity(max_pending),
            next_server: 0,
            soonest: None,
            spare: Vec::with_capacity(max_pending),
        }
    }

    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    pub fn outstanding(&self) -> usize {
        self.pending.len()
    }

    fn due(&mut self, at: Instant) {
        self.soonest = Some(self.soonest.map_or(at, |s| s.min(at)));
    }

    /// Takes `query` (whose question and flags are `key`) for `waiter`: joins the
    /// same question on its way, or says where to send it.
    pub fn start(
        &mut self,
        waiter: Waiter<C>,
        query: &[u8],
        key: &Key,
        now: Instant,
        mut random: impl FnMut() -> u16,
    ) -> Result<Started, Refusal> {
        if self.servers.is_empty() {
            return Err(Refusal::NoUpstream);
        }
        let hash = question_hash(key);
        if let Some(p) = self.by_question.get(&hash).and_then(|id| self.pending.get_mut(id)) {
            if p.key.as_slice() == key.as_slice() {
                if let Some(slot) = p.waiters.iter_mut().find(|w| w.is_none()) {
                    *slot = Some(waiter);
                    return Ok(Started::Joined);
                }
            }
        }
        if self.pending.len() >= self.max_pending || query.len() < 12 {
            return Err(Refusal::TooMany);
        }
        let id = loop {
            let id = random();
            if !self.pending.contains_key(&id) {
                break id;
            }
        };
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(query);
        buf[..2].copy_from_slice(&id.to_be_bytes());
        let server = self.next_server % self.servers.len();
        self.next_server = self.next_server.wrapping_add(1);
        let mut waiters = [None; MAX_WAITERS];
        waiters[0] = Some(waiter);
        let deadline = now + self.timeout;
        self.pending.insert(
            id,
            Pending {
                waiters,
                query: buf,
                key: key.clone(),
                server,
                tries: 1,
                via: Via::Udp,
                socket: 0,
                deadline,
            },
        );
        self.by_question.insert(hash, id);
        self.due(deadline);
        Ok(Started::Send {
            id,
            to: self.servers[server],
        })
    }

    /// The query `id` as it goes upstream.
    pub fn query(&self, id: u16) -> Option<&[u8]> {
        self.pending.get(&id).map(|p| &p.query[..])
    }

    /// Whom query `id` is asking now, and how.
    pub fn asking(&self, id: u16) -> Option<(SocketAddr, Via)> {
        self.pending.get(&id).map(|p| (self.servers[p.server], p.via))
    }

    /// Notes which socket query `id` went out of.
    pub fn sent_from(&mut self, id: u16, socket: usize) {
        if let Some(p) = self.pending.get_mut(&id) {
            p.socket = socket;
        }
    }

    /// Whether an answer for `id` to the question `name` (lower-case wire form),
    /// `qtype` may come from `from` on `socket` (for UDP): the server last asked,
    /// over the way and to the port it was asked from.
    pub fn expects(&self, id: u16, from: SocketAddr, via: Via, socket: usize, name: &[u8], qtype: u16) -> bool {
        self.pending.get(&id).is_some_and(|p| {
            self.servers[p.server] == from
                && p.via == via
                && (via == Via::Tcp || p.socket == socket)
                && p.key.name() == name
                && p.key.qtype() == qtype
        })
    }

    /// The upstream's UDP answer for `id` was truncated: ask the same server over
    /// TCP, with a fresh timeout; returns the server.
    pub fn retry_over_tcp(&mut self, id: u16, now: Instant) -> Option<SocketAddr> {
        let p = self.pending.get_mut(&id)?;
        p.via = Via::Tcp;
        p.deadline = now + self.timeout;
        let (to, at) = (self.servers[p.server], p.deadline);
        self.due(at);
        Some(to)
    }

    /// The server asked for `id` failed outright (a refused connection, no route):
    /// move on at the next [`Forwarder::expire`] instead of waiting for the timeout.
    pub fn fail(&mut self, id: u16, now: Instant) {
        if let Some(p) = self.pending.get_mut(&id) {
            p.deadline = now;
            self.due(now);
        }
    }

    /// Ends query `id` (answered, or given up); its buffer goes back with
    /// [`Forwarder::recycle`].
    pub fn finish(&mut self, id: u16) -> Option<Pending<C>> {
        let p = self.pending.remove(&id)?;
        let hash = question_hash(&p.key);
        if self.by_question.get(&hash) == Some(&id) {
            self.by_question.remove(&hash);
        }
        Some(p)
    }

    pub fn recycle(&mut self, buf: Vec<u8>) {
        if self.spare.len() < self.max_pending {
            self.spare.push(buf);
        }
    }

    /// What is due at `now`: queries that timed out go to the next server, or are
    /// given up when each server has been asked. Steps are appended to `steps`.
    pub fn expire(&mut self, now: Instant, steps: &mut Vec<Step>) {
        if self.soonest.is_none_or(|s| now < s) {
            return;
        }
        let n = self.servers.len();
        let mut soonest = None::<Instant>;
        for (&id, p) in self.pending.iter_mut() {
            if now >= p.deadline {
                if p.tries >= n {
                    steps.push(Step::GiveUp { id });
                    continue;
                }
                p.server = (p.server + 1) % n;
                p.tries += 1;
                p.via = Via::Udp;
                p.deadline = now + self.timeout;
                steps.push(Step::Send {
                    id,
                    to: self.servers[p.server],
                });
            }
            soonest = Some(soonest.map_or(p.deadline, |s| s.min(p.deadline)));
        }
        self.soonest = soonest;
    }

    /// When the next query may time out, if any is outstanding.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.soonest.filter(|_| !self.pending.is_empty())
    }

    /// Takes `client` off every query it waits for (a TCP client that closed its
    /// connection). The queries go on: their answers still fill the cache.
    pub fn forget(&mut self, client: C) {
        for p in self.pending.values_mut() {
            for w in p.waiters.iter_mut() {
                if w.is_some_and(|w| w.client == client) {
                    *w = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::cache::Flags;

    fn fwd(n: usize) -> Forwarder<&'static str> {
        let servers = (0..n)
            .map(|i| SocketAddr::from(([198, 18, 9, i as u8 + 1], 53)))
            .collect();
        Forwarder::new(servers, Duration::from_secs(2), 2)
    }

    const Q: [u8; 14] = [0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];

    fn key(name: &[u8]) -> Key {
        Key::new(Flags::default(), 1, 1, name).unwrap()
    }

    fn waiter(client: &'static str, id: u16) -> Waiter<&'static str> {
        Waiter {
            client,
            id,
            limit: 512,
            started: Instant::now(),
        }
    }

    #[test]
    fn ids_are_remapped_and_answers_checked_against_server_and_question() {
        let mut f = fwd(2);
        let now = Instant::now();
        let step = f
            .start(waiter("c1", 0xabcd), &Q, &key(b"\x01a\x00"), now, || 7)
            .unwrap();
        let to = SocketAddr::from(([198, 18, 9, 1], 53));
        assert_eq!(step, Started::Send { id: 7, to });
        assert_eq!(&f.query(7).unwrap()[..2], &[0, 7]);
        f.sent_from(7, 3);
        assert!(f.expects(7, to, Via::Udp, 3, b"\x01a\x00", 1));
        assert!(!f.expects(7, to, Via::Udp, 2, b"\x01a\x00", 1), "another port");
        assert!(!f.expects(7, SocketAddr::from(([198, 18, 9, 2], 53)), Via::Udp, 3, b"\x01a\x00", 1));
        assert!(!f.expects(7, to, Via::Udp, 3, b"\x01b\x00", 1));
        assert!(!f.expects(7, to, Via::Tcp, 3, b"\x01a\x00", 1));
        assert_eq!(f.asking(7), Some((to, Via::Udp)));
        let p = f.finish(7).unwrap();
        assert_eq!(p.waiters[0].map(|w| (w.client, w.id)), Some(("c1", 0xabcd)));
    }

    #[test]
    fn the_same_question_is_asked_once() {
        let mut f = fwd(1);
        let now = Instant::now();
        let mut ids = [3u16, 4].into_iter();
        let mut next = || ids.next().unwrap();
        assert!(matches!(
            f.start(waiter("a", 1), &Q, &key(b"\x00"), now, &mut next),
            Ok(Started::Send { id: 3, .. })
        ));
        for i in 1..MAX_WAITERS {
            assert_eq!(
                f.start(waiter("b", i as u16), &Q, &key(b"\x00"), now, &mut next),
                Ok(Started::Joined)
            );
        }
        // Full: another query goes out.
        assert!(matches!(
            f.start(waiter("c", 9), &Q, &key(b"\x00"), now, &mut next),
            Ok(Started::Send { id: 4, .. })
        ));
        f.forget("a");
        let p = f.finish(3).unwrap();
        assert_eq!(p.waiters.iter().flatten().count(), MAX_WAITERS - 1);
    }

    #[test]
    fn a_silent_server_is_replaced_then_given_up() {
        let mut f = fwd(2);
        let t0 = Instant::now();
        f.start(waiter("c", 1), &Q, &key(b"\x00"), t0, || 9).unwrap();
        let mut steps = Vec::new();
        f.expire(t0 + Duration::from_secs(1), &mut steps);
        assert!(steps.is_empty());
        assert_eq!(f.next_deadline(), Some(t0 + Duration::from_secs(2)));
        f.expire(t0 + Duration::from_secs(2), &mut steps);
        let to = SocketAddr::from(([198, 18, 9, 2], 53));
        assert_eq!(steps, [Step::Send { id: 9, to }]);
        steps.clear();
        f.expire(t0 + Duration::from_secs(4), &mut steps);
        assert_eq!(steps, [Step::GiveUp { id: 9 }]);
    }

    #[test]
    fn outstanding_queries_are_bounded_and_ids_unique() {
        let mut f = fwd(1);
        let now = Instant::now();
        let mut ids = [5u16, 5, 6].into_iter();
        f.start(waiter("a", 1), &Q, &key(b"\x01a\x00"), now, || ids.next().unwrap())
            .unwrap();
        assert_eq!(
            f.start(waiter("b", 1), &Q, &key(b"\x01b\x00"), now, || ids.next().unwrap()),
            Ok(Started::Send {
                id: 6,
                to: f.servers()[0]
            })
        );
        assert_eq!(
            f.start(waiter("c", 1), &Q, &key(b"\x01c\x00"), now, || 1),
            Err(Refusal::TooMany)
        );
        let mut none: Forwarder<()> = Forwarder::new(Vec::new(), Duration::from_secs(1), 4);
        let w = Waiter {
            client: (),
            id: 1,
            limit: 512,
            started: now,
        };
        assert_eq!(none.start(w, &Q, &key(b"\x00"), now, || 1), Err(Refusal::NoUpstream));
    }
}
