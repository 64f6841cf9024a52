//! Queries on their way upstream: which client asked, under which id, of which
//! server, until when. It decides and does no I/O: the service thread sends what
//! it is told to and hands back what arrives.
//!
//! Each forwarded query gets a fresh random id (the client's is restored in the
//! answer), so an off-path sender has to guess it as well as the server and the
//! question. A query not answered within the timeout is asked of the next server;
//! when none is left the client gets SERVFAIL. At most `max_pending` queries are
//! outstanding: beyond that a query is refused at once rather than queued.

use super::zone::MAX_NAME;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How an upstream is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Udp,
    /// Its UDP answer was truncated: asked again over TCP.
    Tcp,
}

/// A query waiting for its answer; `C` says where the answer goes.
#[derive(Debug)]
pub struct Pending<C> {
    pub client: C,
    pub client_id: u16,
    /// The query as sent upstream (with our id).
    pub query: Vec<u8>,
    /// The question's name in lower-case wire form and its type, to check answers by.
    key: ([u8; MAX_NAME], u8),
    pub qtype: u16,
    /// The largest answer the client takes.
    pub limit: usize,
    /// Index of the server asked last, and how many have been asked.
    server: usize,
    tries: usize,
    pub via: Via,
    deadline: Instant,
    pub started: Instant,
}

impl<C> Pending<C> {
    /// The question's name in lower-case wire form.
    pub fn key(&self) -> &[u8] {
        &self.key.0[..usize::from(self.key.1)]
    }
}

/// What to do about an outstanding query.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send `id`'s query to this server.
    Send { id: u16, to: SocketAddr, via: Via },
    /// Every server was asked: answer `id`'s client with SERVFAIL.
    GiveUp { id: u16 },
}

/// Why a query was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NoUpstream,
    TooMany,
}

pub struct Forwarder<C> {
    servers: Vec<SocketAddr>,
    timeout: Duration,
    max_pending: usize,
    pending: HashMap<u16, Pending<C>>,
    /// Where the next query starts: servers are taken in turn, as a resolver's
    /// `rotate` option does, so one slow server does not take every first try.
    next_server: usize,
    /// Query buffers of finished queries, reused.
    spare: Vec<Vec<u8>>,
}

impl<C> Forwarder<C> {
    pub fn new(servers: Vec<SocketAddr>, timeout: Duration, max_pending: usize) -> Forwarder<C> {
        Forwarder {
            servers,
            timeout,
            max_pending,
            pending: HashMap::with_capacity(max_pending),
            next_server: 0,
            spare: Vec::with_capacity(max_pending),
        }
    }

    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    pub fn outstanding(&self) -> usize {
        self.pending.len()
    }

    /// Takes `query` (from a client that used `client_id`) for forwarding; returns
    /// the first step. `key` is its question's name in lower-case wire form.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &mut self,
        client: C,
        query: &[u8],
        key: &[u8],
        qtype: u16,
        limit: usize,
        now: Instant,
        mut random: impl FnMut() -> u16,
    ) -> Result<Step, Refusal> {
        if self.servers.is_empty() {
            return Err(Refusal::NoUpstream);
        }
        if self.pending.len() >= self.max_pending || query.len() < 12 || key.len() > MAX_NAME {
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
        let client_id = u16::from_be_bytes([query[0], query[1]]);
        buf[..2].copy_from_slice(&id.to_be_bytes());
        let mut k = [0u8; MAX_NAME];
        k[..key.len()].copy_from_slice(key);
        let server = self.next_server % self.servers.len();
        self.next_server = self.next_server.wrapping_add(1);
        self.pending.insert(
            id,
            Pending {
                client,
                client_id,
                query: buf,
                key: (k, key.len() as u8),
                qtype,
                limit,
                server,
                tries: 1,
                via: Via::Udp,
                deadline: now + self.timeout,
                started: now,
            },
        );
        Ok(Step::Send {
            id,
            to: self.servers[server],
            via: Via::Udp,
        })
    }

    /// The query `id` as it goes upstream.
    pub fn query(&self, id: u16) -> Option<&[u8]> {
        self.pending.get(&id).map(|p| &p.query[..])
    }

    /// Whether an answer for `id` with this question may come from `from`: the
    /// server last asked, over the way it was asked.
    pub fn expects(&self, id: u16, from: SocketAddr, via: Via, key: &[u8], qtype: u16) -> bool {
        self.pending
            .get(&id)
            .is_some_and(|p| self.servers[p.server] == from && p.via == via && p.key() == key && p.qtype == qtype)
    }

    /// The upstream's UDP answer for `id` was truncated: ask the same server over
    /// TCP, with a fresh timeout.
    pub fn retry_over_tcp(&mut self, id: u16, now: Instant) -> Option<Step> {
        let p = self.pending.get_mut(&id)?;
        p.via = Via::Tcp;
        p.deadline = now + self.timeout;
        Some(Step::Send {
            id,
            to: self.servers[p.server],
            via: Via::Tcp,
        })
    }

    /// How query `id` is being asked, if it is outstanding.
    pub fn via(&self, id: u16) -> Option<Via> {
        self.pending.get(&id).map(|p| p.via)
    }

    /// The server asked for `id` failed outright (a refused connection): move on at
    /// the next [`Forwarder::expire`] instead of waiting for the timeout.
    pub fn fail(&mut self, id: u16, now: Instant) {
        if let Some(p) = self.pending.get_mut(&id) {
            p.deadline = now;
        }
    }

    /// Ends query `id` (answered, or given up); its buffer goes back with
    /// [`Forwarder::recycle`].
    pub fn finish(&mut self, id: u16) -> Option<Pending<C>> {
        self.pending.remove(&id)
    }

    pub fn recycle(&mut self, buf: Vec<u8>) {
        if self.spare.len() < self.max_pending {
            self.spare.push(buf);
        }
    }

    /// What is due at `now`: queries that timed out go to the next server, or are
    /// given up when each server has been asked. Steps are appended to `steps`.
    pub fn expire(&mut self, now: Instant, steps: &mut Vec<Step>) {
        let n = self.servers.len();
        for (&id, p) in self.pending.iter_mut() {
            if now < p.deadline {
                continue;
            }
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
                via: Via::Udp,
            });
        }
    }

    /// When the next query times out, if any is outstanding.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.deadline).min()
    }

    /// Every outstanding query of the clients `gone` matches, ended (a TCP client
    /// that closed its connection).
    pub fn forget(&mut self, gone: impl Fn(&C) -> bool) {
        self.pending.retain(|_, p| !gone(&p.client));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(n: usize) -> Forwarder<&'static str> {
        let servers = (0..n)
            .map(|i| SocketAddr::from(([198, 18, 9, i as u8 + 1], 53)))
            .collect();
        Forwarder::new(servers, Duration::from_secs(2), 2)
    }

    const Q: [u8; 14] = [0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];

    #[test]
    fn ids_are_remapped_and_answers_checked_against_server_and_question() {
        let mut f = fwd(2);
        let now = Instant::now();
        let step = f.start("c1", &Q, b"\x01a\x00", 1, 512, now, || 7).unwrap();
        let to = SocketAddr::from(([198, 18, 9, 1], 53));
        assert_eq!(
            step,
            Step::Send {
                id: 7,
                to,
                via: Via::Udp
            }
        );
        assert_eq!(&f.query(7).unwrap()[..2], &[0, 7]);
        assert!(f.expects(7, to, Via::Udp, b"\x01a\x00", 1));
        assert!(!f.expects(7, SocketAddr::from(([198, 18, 9, 2], 53)), Via::Udp, b"\x01a\x00", 1));
        assert!(!f.expects(7, to, Via::Udp, b"\x01b\x00", 1));
        assert!(!f.expects(7, to, Via::Tcp, b"\x01a\x00", 1));
        let p = f.finish(7).unwrap();
        assert_eq!((p.client, p.client_id), ("c1", 0xabcd));
    }

    #[test]
    fn a_silent_server_is_replaced_then_given_up() {
        let mut f = fwd(2);
        let t0 = Instant::now();
        f.start("c", &Q, b"\x00", 1, 512, t0, || 9).unwrap();
        let mut steps = Vec::new();
        f.expire(t0 + Duration::from_secs(1), &mut steps);
        assert!(steps.is_empty());
        f.expire(t0 + Duration::from_secs(2), &mut steps);
        assert_eq!(
            steps,
            [Step::Send {
                id: 9,
                to: SocketAddr::from(([198, 18, 9, 2], 53)),
                via: Via::Udp
            }]
        );
        steps.clear();
        f.expire(t0 + Duration::from_secs(4), &mut steps);
        assert_eq!(steps, [Step::GiveUp { id: 9 }]);
    }

    #[test]
    fn outstanding_queries_are_bounded_and_ids_unique() {
        let mut f = fwd(1);
        let now = Instant::now();
        let mut ids = [5u16, 5, 6].into_iter();
        f.start("a", &Q, b"\x00", 1, 512, now, || ids.next().unwrap()).unwrap();
        assert_eq!(
            f.start("b", &Q, b"\x00", 1, 512, now, || ids.next().unwrap()),
            Ok(Step::Send {
                id: 6,
                to: f.servers()[0],
                via: Via::Udp
            })
        );
        assert_eq!(f.start("c", &Q, b"\x00", 1, 512, now, || 1), Err(Refusal::TooMany));
        f.forget(|c| *c == "a");
        assert_eq!(f.outstanding(), 1);
        let none: Forwarder<()> = Forwarder::new(Vec::new(), Duration::from_secs(1), 4);
        let mut none = none;
        assert_eq!(none.start((), &Q, b"\x00", 1, 512, now, || 1), Err(Refusal::NoUpstream));
    }
}
