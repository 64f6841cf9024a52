//! The DNS server's sockets: UDP and TCP port 53 at every gateway address (smoltcp
//! sockets on the service interface), and the host's own UDP and TCP sockets to the
//! upstream servers. What to answer is [`crate::dns`]'s to decide; this file moves
//! bytes between the sockets and it, on the service thread only.
//!
//! Nothing here blocks: upstream sockets are non-blocking and registered with the
//! service thread's poll, client TCP connections are smoltcp sockets serviced each
//! pass, and every buffer is bounded (a TCP client has one query in flight; its next
//! is read once the answer is on its way).

use crate::dns::answer::{self, error_reply, fit_udp, Unusable, MAX_MESSAGE};
use crate::dns::cache::{Cache, Key};
use crate::dns::forward::{Forwarder, Refusal, Step, Via};
use crate::dns::{Dns, DnsEvent};
use crate::telemetry::new_histogram;
use domain::base::iana::{Rcode, Rtype};
use domain::base::Message;
use hdrhistogram::Histogram;
use mio::net::{TcpStream, UdpSocket};
use mio::{Interest, Registry, Token};
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{IpAddress, IpEndpoint};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const PORT: u16 = 53;
/// Client TCP connections served at once.
const TCP_CLIENTS: usize = 8;
/// Upstream TCP connections (for truncated answers) at once.
const TCP_UPSTREAMS: usize = 16;
/// A client TCP connection idle this long is closed (RFC 7766 suggests seconds).
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Datagrams read from one socket per pass, so one busy socket cannot starve the rest.
const RECV_BUDGET: usize = 256;

pub(super) const UPSTREAM_V4: Token = Token(1);
pub(super) const UPSTREAM_V6: Token = Token(2);
const UPSTREAM_TCP: usize = 16;

/// Where an answer goes.
#[derive(Debug, Clone, Copy)]
enum Client {
    Udp {
        to: IpEndpoint,
        from: Option<IpAddress>,
    },
    /// Connection `slot` in its `generation` (a slot is reused by later clients).
    Tcp {
        slot: usize,
        generation: u32,
    },
}

/// A client's TCP connection.
struct Conn {
    handle: SocketHandle,
    generation: u32,
    /// A client is connected (the slot is not just listening).
    in_use: bool,
    /// Bytes read and not yet a whole message.
    inbox: Vec<u8>,
    /// Its query is upstream; nothing more is read until it is answered.
    waiting: bool,
    /// The answer being written (length prefix included), and how much is out.
    outbox: Vec<u8>,
    sent: usize,
    last_active: Instant,
}

/// A TCP connection to an upstream, for one query whose UDP answer was truncated.
struct Upstream {
    stream: TcpStream,
    id: u16,
    server: SocketAddr,
    outbox: Vec<u8>,
    sent: usize,
    inbox: Vec<u8>,
}

/// What handling a query came to.
enum Handled {
    /// The answer is in `out`.
    Now,
    /// Forwarded: answered when upstream answers.
    Later,
    /// Not answered.
    Nothing,
}

pub(super) struct DnsServer {
    dns: Arc<Dns>,
    /// The service thread's poll, for upstream TCP connections opened on the way.
    registry: Registry,
    udp: SocketHandle,
    conns: Vec<Conn>,
    up_v4: Option<UdpSocket>,
    up_v6: Option<UdpSocket>,
    up_tcp: Vec<Option<Upstream>>,
    fwd: Forwarder<Client>,
    cache: Cache,
    /// The answer being built, and a second buffer for cutting one down.
    out: Vec<u8>,
    fit: Vec<u8>,
    rx: Vec<u8>,
    steps: Vec<Step>,
    rotate: usize,
    /// The most this server puts in one UDP datagram (the overlay MTU's room).
    max_udp: usize,
    hist: Histogram<u64>,
    merged: Instant,
    /// A socket had more than one pass's budget: look again without sleeping
    /// (upstream sockets are edge-triggered and would not say so).
    more: bool,
}

fn count_rcode(dns: &Dns, rcode: Rcode) {
    dns.counters.inc(match rcode {
        Rcode::NOERROR => DnsEvent::Noerror,
        Rcode::NXDOMAIN => DnsEvent::Nxdomain,
        Rcode::SERVFAIL => DnsEvent::Servfail,
        Rcode::FORMERR => DnsEvent::Formerr,
        Rcode::NOTIMP => DnsEvent::Notimp,
        Rcode::REFUSED => DnsEvent::Refused,
        _ => DnsEvent::OtherRcode,
    });
}

fn count_qtype(dns: &Dns, qtype: Rtype) {
    dns.counters.inc(match qtype {
        Rtype::A => DnsEvent::QueriesA,
        Rtype::AAAA => DnsEvent::QueriesAaaa,
        Rtype::PTR => DnsEvent::QueriesPtr,
        _ => DnsEvent::QueriesOther,
    });
}

/// An upstream socket of one family, bound to an ephemeral port.
fn upstream_socket(registry: &Registry, v6: bool, token: Token) -> io::Result<UdpSocket> {
    let any: SocketAddr = if v6 { "[::]:0" } else { "0.0.0.0:0" }.parse().expect("static address");
    let mut s = UdpSocket::bind(any)?;
    registry.register(&mut s, token, Interest::READABLE)?;
    Ok(s)
}

impl DnsServer {
    /// Adds the server's sockets to `sockets` and opens the upstream sockets the
    /// configured servers need.
    pub(super) fn new(dns: Arc<Dns>, sockets: &mut SocketSet<'static>, registry: Registry, mtu: usize) -> DnsServer {
        let meta = || vec![udp::PacketMetadata::EMPTY; 256];
        let mut u = udp::Socket::new(
            udp::PacketBuffer::new(meta(), vec![0u8; 256 * 1024]),
            udp::PacketBuffer::new(meta(), vec![0u8; 256 * 1024]),
        );
        u.bind(PORT).expect("binding a fresh smoltcp socket to a non-zero port");
        let udp = sockets.add(u);
        let now = Instant::now();
        let conns = (0..TCP_CLIENTS)
            .map(|_| {
                let mut t = tcp::Socket::new(
                    tcp::SocketBuffer::new(vec![0u8; 4096]),
                    tcp::SocketBuffer::new(vec![0u8; 16 * 1024]),
                );
                // Data not acknowledged for this long: the client is gone.
                t.set_timeout(Some(smoltcp::time::Duration::from_secs(TCP_IDLE.as_secs())));
                t.listen(PORT).expect("listening on a fresh socket");
                Conn {
                    handle: sockets.add(t),
                    generation: 0,
                    in_use: false,
                    inbox: Vec::with_capacity(512),
                    waiting: false,
                    outbox: Vec::with_capacity(2 + 4096),
                    sent: 0,
                    last_active: now,
                }
            })
            .collect();
        let s = &dns.settings;
        let open = |v6: bool, token| {
            if !s.upstream.iter().any(|a| a.is_ipv6() == v6) {
                return None;
            }
            upstream_socket(&registry, v6, token)
                .map_err(|e| log::error!("dns: no IPv{} upstream socket: {e}", if v6 { 6 } else { 4 }))
                .ok()
        };
        let (up_v4, up_v6) = (open(false, UPSTREAM_V4), open(true, UPSTREAM_V6));
        if s.upstream.is_empty() {
            log::warn!(
                "dns: no upstream servers (dns.upstream, /etc/resolv.conf): names outside {} are refused",
                s.domain
            );
        }
        DnsServer {
            fwd: Forwarder::new(s.upstream.clone(), s.timeout, s.max_pending),
            cache: Cache::new(s.cache_size, s.cache_max_ttl),
            dns,
            registry,
            udp,
            conns,
            up_v4,
            up_v6,
            up_tcp: (0..TCP_UPSTREAMS).map(|_| None).collect(),
            out: Vec::with_capacity(MAX_MESSAGE),
            fit: Vec::with_capacity(MAX_MESSAGE),
            rx: vec![0u8; MAX_MESSAGE],
            steps: Vec::with_capacity(64),
            rotate: 0,
            max_udp: mtu.saturating_sub(48).max(answer::PLAIN_UDP),
            hist: new_histogram(),
            merged: now,
            more: false,
        }
    }

    /// When the server next has something to do without being woken.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        if self.more {
            return Some(Instant::now());
        }
        let idle = self
            .conns
            .iter()
            .filter(|c| c.in_use)
            .map(|c| c.last_active + TCP_IDLE)
            .min();
        [
            self.fwd.next_deadline(),
            idle,
            Some(self.merged + Duration::from_secs(1)),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// One pass: queries from clients, answers from upstream, timeouts.
    pub(super) fn run(&mut self, sockets: &mut SocketSet<'static>) {
        let now = Instant::now();
        self.more = false;
        self.serve_udp(sockets, now);
        self.serve_tcp(sockets, now);
        self.upstream_udp(sockets, now);
        self.upstream_tcp(sockets, now);
        self.expire(sockets, now);
        if now >= self.merged + Duration::from_secs(1) {
            self.merged = now;
            self.dns.merge_latency(&mut self.hist);
            self.dns.set_gauges(self.cache.len(), self.fwd.outstanding());
        }
    }

    fn record(&mut self, since: Instant) {
        let _ = self.hist.record(since.elapsed().as_nanos().max(1) as u64);
    }

    fn serve_udp(&mut self, sockets: &mut SocketSet<'static>, now: Instant) {
        for i in 0..=RECV_BUDGET {
            let s = sockets.get_mut::<udp::Socket>(self.udp);
            if i == RECV_BUDGET {
                self.more |= s.can_recv();
                return;
            }
            let Ok((n, meta)) = s.recv_slice(&mut self.rx) else {
                return;
            };
            let client = Client::Udp {
                to: meta.endpoint,
                from: meta.local_address,
            };
            let query = std::mem::take(&mut self.rx);
            let handled = self.handle(&query[..n], client, now);
            self.rx = query;
            if let Handled::Now = handled {
                self.send_udp(sockets, meta.endpoint, meta.local_address);
                self.record(now);
            }
        }
    }

    fn send_udp(&mut self, sockets: &mut SocketSet<'static>, to: IpEndpoint, from: Option<IpAddress>) {
        let mut meta = udp::UdpMetadata::from(to);
        meta.local_address = from;
        let s = sockets.get_mut::<udp::Socket>(self.udp);
        if s.send_slice(&self.out, meta).is_err() {
            self.dns.counters.inc(DnsEvent::DroppedSend);
        }
    }

    /// Answers `query` from the zone or the cache into `out`, or forwards it.
    fn handle(&mut self, query: &[u8], client: Client, now: Instant) -> Handled {
        let dns = &*self.dns;
        let tcp = matches!(client, Client::Tcp { .. });
        let q = match answer::parse(query, &mut self.out) {
            Ok(q) => q,
            Err(Unusable::Ignored(why)) => {
                dns.counters.inc(match why {
                    answer::Ignored::Short => DnsEvent::DroppedShort,
                    answer::Ignored::Response => DnsEvent::DroppedResponse,
                });
                return Handled::Nothing;
            }
            Err(Unusable::Refused(rcode)) => {
                if rcode == Rcode::NOERROR {
                    dns.counters.inc(DnsEvent::Badvers);
                } else {
                    count_rcode(dns, rcode);
                }
                return Handled::Now;
            }
        };
        count_qtype(dns, q.qtype);
        if tcp {
            dns.counters.inc(DnsEvent::QueriesTcp);
        }
        let limit = if tcp { MAX_MESSAGE } else { q.udp_limit(self.max_udp) };
        if let Some(a) = answer::answer_local(&dns.zone(), &q, limit, self.rotate, &mut self.out) {
            self.rotate = self.rotate.wrapping_add(1);
            dns.counters.inc(DnsEvent::Local);
            count_rcode(dns, a.rcode);
            if a.truncated {
                dns.counters.inc(DnsEvent::Truncated);
            }
            return Handled::Now;
        }
        let key = Key::new(q.edns.is_some(), q.qtype.to_int(), q.qclass.to_int(), q.key());
        if let Some(key) = &key {
            if self.cache.serve(key, query, now, &mut self.fit) {
                dns.counters.inc(DnsEvent::CacheHits);
                Self::fit_into(dns, &self.fit, limit, &mut self.out);
                return Handled::Now;
            }
        }
        match self
            .fwd
            .start(client, query, q.key(), q.qtype.to_int(), limit, now, rand::random)
        {
            Ok(Step::Send { id, to, .. }) => {
                dns.counters.inc(DnsEvent::Forwarded);
                self.send_upstream(id, to);
                Handled::Later
            }
            Ok(Step::GiveUp { .. }) | Err(Refusal::NoUpstream | Refusal::TooMany) => {
                error_reply(q.msg, Rcode::REFUSED, &mut self.out);
                count_rcode(dns, Rcode::REFUSED);
                Handled::Now
            }
        }
    }

    /// `reply` into `out`, cut to `limit` (TC set) if longer; counts its code.
    fn fit_into(dns: &Dns, reply: &[u8], limit: usize, out: &mut Vec<u8>) {
        if fit_udp(reply, limit, out) {
            dns.counters.inc(DnsEvent::Truncated);
        }
        count_rcode(
            dns,
            Rcode::checked_from_int(reply.get(3).map_or(2, |b| b & 0x0f)).unwrap_or(Rcode::SERVFAIL),
        );
    }

    fn send_upstream(&mut self, id: u16, to: SocketAddr) {
        let Some(query) = self.fwd.query(id) else { return };
        let sock = if to.is_ipv6() { &self.up_v6 } else { &self.up_v4 };
        let sent = sock.as_ref().map(|s| s.send_to(query, to));
        if !matches!(sent, Some(Ok(_))) {
            // No socket, or the host refused the datagram (no route): the next
            // server is asked at once.
            self.fwd.fail(id, Instant::now());
        }
    }

    fn upstream_udp(&mut self, sockets: &mut SocketSet<'static>, now: Instant) {
        for v6 in [false, true] {
            for i in 0..=RECV_BUDGET {
                if i == RECV_BUDGET {
                    self.more = true;
                    break;
                }
                let sock = if v6 { &self.up_v6 } else { &self.up_v4 };
                let Some(Ok((n, from))) = sock.as_ref().map(|s| s.recv_from(&mut self.rx)) else {
                    break;
                };
                let reply = std::mem::take(&mut self.rx);
                self.answered(sockets, &reply[..n], from, Via::Udp, now);
                self.rx = reply;
            }
        }
    }

    /// An upstream answer: checked against what was asked, cached, delivered.
    fn answered(&mut self, sockets: &mut SocketSet<'static>, reply: &[u8], from: SocketAddr, via: Via, now: Instant) {
        let dns = self.dns.clone();
        let Some((id, tc, key)) = Self::identify(reply) else {
            dns.counters.inc(DnsEvent::DroppedUnexpected);
            return;
        };
        if !self.fwd.expects(id, from, via, &key.0[..key.1], key.2) {
            dns.counters.inc(DnsEvent::DroppedUnexpected);
            return;
        }
        if tc && via == Via::Udp {
            if let Some(Step::Send { to, .. }) = self.fwd.retry_over_tcp(id, now) {
                dns.counters.inc(DnsEvent::UpstreamTcp);
                self.connect(id, to, now);
            }
            return;
        }
        let Some(p) = self.fwd.finish(id) else { return };
        if let Ok(q) = answer::parse(&p.query, &mut self.fit) {
            if let Some(k) = Key::new(q.edns.is_some(), q.qtype.to_int(), q.qclass.to_int(), q.key()) {
                self.cache.insert(&k, reply, now);
            }
            if q.qtype == Rtype::A || q.qtype == Rtype::AAAA {
                let unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                dns.learned().lock().learn(q.key(), reply, unix);
            }
        }
        self.fit.clear();
        self.fit.extend_from_slice(reply);
        self.fit[..2].copy_from_slice(&p.client_id.to_be_bytes());
        let limit = p.limit;
        Self::fit_into(&dns, &self.fit, limit, &mut self.out);
        self.deliver(sockets, p.client);
        self.record(p.started);
        self.fwd.recycle(p.query);
    }

    /// An upstream message's id, TC bit and question (lower-case wire name, type),
    /// if it is a response with one question.
    #[allow(clippy::type_complexity)]
    fn identify(reply: &[u8]) -> Option<(u16, bool, ([u8; 255], usize, u16))> {
        let msg = Message::from_slice(reply).ok()?;
        let h = msg.header();
        if !h.qr() {
            return None;
        }
        let q = msg.sole_question().ok()?;
        let mut buf = [0u8; 255];
        let len = crate::dns::zone::wire_key(q.qname(), &mut buf)?.len();
        Some((h.id(), h.tc(), (buf, len, q.qtype().to_int())))
    }

    /// Sends `out` to `client`.
    fn deliver(&mut self, sockets: &mut SocketSet<'static>, client: Client) {
        match client {
            Client::Udp { to, from } => self.send_udp(sockets, to, from),
            Client::Tcp { slot, generation } => {
                if let Some(c) = self.conns.get_mut(slot).filter(|c| c.generation == generation) {
                    c.waiting = false;
                    Self::frame(&mut c.outbox, &self.out);
                    c.sent = 0;
                }
            }
        }
    }

    /// `msg` with TCP's two-byte length before it.
    fn frame(outbox: &mut Vec<u8>, msg: &[u8]) {
        outbox.clear();
        outbox.extend_from_slice(&(msg.len().min(MAX_MESSAGE) as u16).to_be_bytes());
        outbox.extend_from_slice(&msg[..msg.len().min(MAX_MESSAGE)]);
    }

    fn serve_tcp(&mut self, sockets: &mut SocketSet<'static>, now: Instant) {
        for slot in 0..self.conns.len() {
            let handle = self.conns[slot].handle;
            let s = sockets.get_mut::<tcp::Socket>(handle);
            let c = &mut self.conns[slot];
            if !s.is_open() {
                // Closed by either side or reset: the slot listens for the next client.
                if c.in_use {
                    c.in_use = false;
                    c.inbox.clear();
                    c.outbox.clear();
                    c.sent = 0;
                    if std::mem::take(&mut c.waiting) {
                        let g = c.generation;
                        self.fwd.forget(
                            |cl| matches!(*cl, Client::Tcp { slot: o, generation } if o == slot && generation == g),
                        );
                    }
                }
                let _ = s.listen(PORT);
                continue;
            }
            if !s.is_active() {
                continue;
            }
            if !c.in_use {
                c.in_use = true;
                c.generation = c.generation.wrapping_add(1);
                c.last_active = now;
            }
            // Answers written and the next queries read, a few per pass.
            for _ in 0..16 {
                let s = sockets.get_mut::<tcp::Socket>(handle);
                let c = &mut self.conns[slot];
                if c.sent < c.outbox.len() {
                    match s.send_slice(&c.outbox[c.sent..]) {
                        Ok(n) if n > 0 => {
                            c.sent += n;
                            c.last_active = now;
                        }
                        _ => {}
                    }
                }
                if c.sent < c.outbox.len() || c.waiting {
                    break;
                }
                c.outbox.clear();
                c.sent = 0;
                if s.can_recv() {
                    let room = (2 + MAX_MESSAGE).saturating_sub(c.inbox.len());
                    let inbox = &mut c.inbox;
                    let _ = s.recv(|b| {
                        let n = b.len().min(room);
                        inbox.extend_from_slice(&b[..n]);
                        (n, ())
                    });
                    c.last_active = now;
                }
                let Some(len) = c.inbox.get(..2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]]))) else {
                    break;
                };
                if c.inbox.len() < 2 + len {
                    break;
                }
                let generation = c.generation;
                let query = std::mem::take(&mut c.inbox);
                let handled = self.handle(&query[2..2 + len], Client::Tcp { slot, generation }, now);
                let c = &mut self.conns[slot];
                c.inbox = query;
                c.inbox.drain(..2 + len);
                match handled {
                    Handled::Now => {
                        Self::frame(&mut c.outbox, &self.out);
                        self.record(now);
                    }
                    Handled::Later => c.waiting = true,
                    Handled::Nothing => {}
                }
            }
            let s = sockets.get_mut::<tcp::Socket>(handle);
            let c = &self.conns[slot];
            let quiet = c.sent >= c.outbox.len() && !c.waiting;
            // The client is done sending (and has its answers), or has said nothing
            // for too long. (A handshake still under way is left to smoltcp.)
            let finished = s.state() == tcp::State::CloseWait;
            let silent = now.duration_since(c.last_active);
            let idle = s.state() == tcp::State::Established && silent >= TCP_IDLE;
            if quiet && (finished || idle) {
                s.close();
            } else if silent >= 2 * TCP_IDLE {
                // Closing and the client never finishes (no FIN, no ACK): the slot
                // is not held forever.
                s.abort();
            }
        }
    }

    /// Opens a TCP connection to `to` for query `id`.
    fn connect(&mut self, id: u16, to: SocketAddr, now: Instant) {
        let Some(slot) = self.up_tcp.iter().position(Option::is_none) else {
            self.dns.counters.inc(DnsEvent::DroppedTcp);
            self.fwd.fail(id, now);
            return;
        };
        let Some(query) = self.fwd.query(id) else { return };
        let mut outbox = Vec::with_capacity(2 + query.len());
        Self::frame(&mut outbox, query);
        let opened = TcpStream::connect(to).and_then(|mut stream| {
            self.registry.register(
                &mut stream,
                Token(UPSTREAM_TCP + slot),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(stream)
        });
        match opened {
            Ok(stream) => {
                self.up_tcp[slot] = Some(Upstream {
                    stream,
                    id,
                    server: to,
                    outbox,
                    sent: 0,
                    inbox: Vec::new(),
                });
            }
            Err(_) => self.fwd.fail(id, now),
        }
    }

    fn upstream_tcp(&mut self, sockets: &mut SocketSet<'static>, now: Instant) {
        for slot in 0..self.up_tcp.len() {
            let Some(u) = self.up_tcp[slot].as_mut() else { continue };
            // The query was given up or moved on to another server meanwhile.
            let mut done = self.fwd.via(u.id) != Some(Via::Tcp);
            let mut failed = false;
            while !done && u.sent < u.outbox.len() {
                match u.stream.write(&u.outbox[u.sent..]) {
                    Ok(n) if n > 0 => u.sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::NotConnected => break,
                    _ => failed = true,
                }
                if failed {
                    break;
                }
            }
            while !done && !failed {
                match u.stream.read(&mut self.rx) {
                    Ok(0) => failed = true,
                    Ok(n) => {
                        u.inbox.extend_from_slice(&self.rx[..n]);
                        if u.inbox.len() > 2 + MAX_MESSAGE {
                            failed = true;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::NotConnected => break,
                    Err(_) => failed = true,
                }
                let complete = u
                    .inbox
                    .get(..2)
                    .is_some_and(|b| u.inbox.len() >= 2 + usize::from(u16::from_be_bytes([b[0], b[1]])));
                if complete {
                    done = true;
                    failed = false;
                }
            }
            if !done && !failed {
                continue;
            }
            let Some(mut u) = self.up_tcp[slot].take() else {
                continue;
            };
            let _ = self.registry.deregister(&mut u.stream);
            let len = u
                .inbox
                .get(..2)
                .map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
            if failed || u.inbox.len() < 2 + len {
                self.fwd.fail(u.id, now);
            } else if self.fwd.via(u.id) == Some(Via::Tcp) {
                self.answered(sockets, &u.inbox[2..2 + len], u.server, Via::Tcp, now);
            }
        }
    }

    /// Queries whose server did not answer in time: asked of the next one, or
    /// answered SERVFAIL.
    fn expire(&mut self, sockets: &mut SocketSet<'static>, now: Instant) {
        let mut steps = std::mem::take(&mut self.steps);
        steps.clear();
        self.fwd.expire(now, &mut steps);
        for step in steps.drain(..) {
            match step {
                Step::Send { id, to, .. } => {
                    self.dns.counters.inc(DnsEvent::UpstreamRetries);
                    self.send_upstream(id, to);
                }
                Step::GiveUp { id } => {
                    let Some(p) = self.fwd.finish(id) else { continue };
                    let Ok(msg) = Message::from_slice(&p.query[..]) else {
                        continue;
                    };
                    error_reply(msg, Rcode::SERVFAIL, &mut self.out);
                    self.out[..2].copy_from_slice(&p.client_id.to_be_bytes());
                    self.dns.counters.inc(DnsEvent::UpstreamTimeouts);
                    count_rcode(&self.dns, Rcode::SERVFAIL);
                    self.deliver(sockets, p.client);
                    self.record(p.started);
                    self.fwd.recycle(p.query);
                }
            }
        }
        self.steps = steps;
    }
}
