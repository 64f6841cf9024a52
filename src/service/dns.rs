//! The DNS server's sockets: UDP and TCP port 53 at every gateway address (smoltcp
//! sockets on the service interface), and the host's own UDP and TCP sockets to the
//! upstream servers. What to answer is [`crate::dns`]'s to decide; this file moves
//! bytes between the sockets and it, on the service thread only.
//!
//! Nothing here blocks and nothing waits unbounded: upstream sockets are
//! non-blocking and read only when the poll says they are ready; client TCP
//! connections are smoltcp sockets with one query in flight each (the next is read
//! once the answer is on its way), closed when idle and aborted when a close does
//! not finish. Queries go upstream from one of [`PORTS`] sockets per address family,
//! picked at random, so an answer must also hit the right port (RFC 5452).

use crate::dns::answer::{self, error_reply, fit_udp, Unusable, MAX_MESSAGE};
use crate::dns::cache::{Cache, Key};
use crate::dns::forward::{Forwarder, Refusal, Started, Step, Via, Waiter};
use crate::dns::zone::MAX_NAME;
use crate::dns::{msg, Dns, DnsEvent};
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
const TCP_CLIENTS: usize = 32;
/// Upstream TCP connections (for truncated answers) at once.
const TCP_UPSTREAMS: usize = 16;
/// A client TCP connection without a query this long is closed (RFC 7766 suggests
/// seconds); one whose close has not finished this much later is aborted.
const TCP_IDLE: Duration = Duration::from_secs(10);
const TCP_CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Datagrams read from one socket per pass, so one busy socket cannot starve the rest.
const RECV_BUDGET: usize = 256;
/// Upstream UDP sockets per address family, each on its own random port.
pub(super) const PORTS: usize = 16;

/// Tokens of the service thread's poll: 0 is the workers' waker, then the upstream
/// UDP sockets (IPv4, then IPv6), then upstream TCP connections.
const UDP_TOKENS: usize = 1;
const TCP_TOKENS: usize = UDP_TOKENS + 2 * PORTS;

/// Where an answer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// The last whole query read or answer written: trickling bytes do not count.
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

/// What an upstream message says it answers.
struct Reply {
    id: u16,
    tc: bool,
    /// The question's name in lower-case wire form.
    name: [u8; MAX_NAME],
    name_len: usize,
    qtype: u16,
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
    /// IPv4 sockets, then IPv6 ones (either half empty when no server needs it).
    up_udp: Vec<Option<UdpSocket>>,
    /// Upstream UDP sockets the poll said are readable and not yet read dry.
    ready: u64,
    up_tcp: Vec<Option<Upstream>>,
    fwd: Forwarder<Client>,
    cache: Cache,
    /// The answer being built, and a second buffer for cutting one down.
    out: Vec<u8>,
    fit: Vec<u8>,
    rx: Vec<u8>,
    steps: Vec<Step>,
    rotate: usize,
    /// The most this server puts in one UDP datagram (the overlay MTU's room), and
    /// so the EDNS size it offers.
    max_udp: u16,
    hist: Histogram<u64>,
    merged: Instant,
    /// A socket had more than one pass's budget: look again without sleeping.
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

fn len_prefix(b: &[u8]) -> Option<usize> {
    b.get(..2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
}

/// An upstream socket of one family, bound to an ephemeral (random) port.
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
        let meta = || vec![udp::PacketMetadata::EMPTY; 1024];
        let mut u = udp::Socket::new(
            udp::PacketBuffer::new(meta(), vec![0u8; 256 * 1024]),
            udp::PacketBuffer::new(meta(), vec![0u8; 512 * 1024]),
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
        let mut up_udp = Vec::with_capacity(2 * PORTS);
        for v6 in [false, true] {
            let needed = s.upstream.iter().any(|a| a.is_ipv6() == v6);
            for i in 0..PORTS {
                let token = Token(UDP_TOKENS + up_udp.len());
                let sock = needed.then(|| upstream_socket(&registry, v6, token));
                up_udp.push(match sock {
                    Some(Ok(sock)) => Some(sock),
                    Some(Err(e)) => {
                        if i == 0 {
                            log::error!("dns: no IPv{} upstream socket: {e}", if v6 { 6 } else { 4 });
                        }
                        None
                    }
                    None => None,
                });
            }
        }
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
            up_udp,
            ready: 0,
            up_tcp: (0..TCP_UPSTREAMS).map(|_| None).collect(),
            out: Vec::with_capacity(MAX_MESSAGE),
            fit: Vec::with_capacity(MAX_MESSAGE),
            rx: vec![0u8; MAX_MESSAGE],
            steps: Vec::with_capacity(64),
            rotate: 0,
            max_udp: mtu.saturating_sub(48).clamp(answer::PLAIN_UDP, MAX_MESSAGE) as u16,
            hist: new_histogram(),
            merged: now,
            more: false,
        }
    }

    /// The poll said `token` is ready.
    pub(super) fn ready(&mut self, token: Token) {
        if let Some(i) = token.0.checked_sub(UDP_TOKENS).filter(|i| *i < 2 * PORTS) {
            self.ready |= 1 << i;
        }
    }

    /// When the server next has something to do without being woken.
    pub(super) fn next_deadline(&self, sockets: &SocketSet<'static>) -> Option<Instant> {
        if self.more {
            return Some(Instant::now());
        }
        let conns = self.conns.iter().filter(|c| c.in_use && !c.waiting).map(|c| {
            let s = sockets.get::<tcp::Socket>(c.handle);
            let quiet = c.sent >= c.outbox.len();
            if quiet && s.state() == tcp::State::Established {
                c.last_active + TCP_IDLE
            } else {
                c.last_active + TCP_IDLE + TCP_CLOSE_GRACE
            }
        });
        [
            self.fwd.next_deadline(),
            conns.min(),
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
        let q = match answer::parse(query, self.max_udp, &mut self.out) {
            Ok(q) => q,
            Err(Unusable::Ignored(why)) => {
                dns.counters.inc(match why {
                    answer::Ignored::Short => DnsEvent::DroppedShort,
                    answer::Ignored::Response => DnsEvent::DroppedResponse,
                });
                return Handled::Nothing;
            }
            Err(Unusable::Refused(rcode)) => {
                count_rcode(dns, rcode);
                return Handled::Now;
            }
            Err(Unusable::BadVersion) => {
                dns.counters.inc(DnsEvent::Badvers);
                return Handled::Now;
            }
        };
        count_qtype(dns, q.qtype);
        if tcp {
            dns.counters.inc(DnsEvent::QueriesTcp);
        }
        let limit = if tcp {
            MAX_MESSAGE
        } else {
            q.udp_limit(usize::from(self.max_udp))
        };
        let zone = dns.zone();
        if let Some(a) = answer::answer_local(&zone, &q, limit, self.max_udp, self.rotate, &mut self.out) {
            self.rotate = self.rotate.wrapping_add(1);
            dns.counters.inc(DnsEvent::Local);
            count_rcode(dns, a.rcode);
            if a.truncated {
                dns.counters.inc(DnsEvent::Truncated);
            }
            return Handled::Now;
        }
        let Some(key) = Key::new(q.flags, q.qtype.to_int(), q.qclass.to_int(), q.key()) else {
            error_reply(q.msg, Rcode::FORMERR, self.max_udp, &mut self.out);
            count_rcode(dns, Rcode::FORMERR);
            return Handled::Now;
        };
        if self.cache.serve(&key, query, self.max_udp, now, &mut self.fit) {
            dns.counters.inc(DnsEvent::CacheHits);
            Self::fit_into(dns, &self.fit, limit, self.max_udp, &mut self.out);
            return Handled::Now;
        }
        let waiter = Waiter {
            client,
            id: q.id,
            limit,
            started: now,
        };
        match self.fwd.start(waiter, query, &key, now, rand::random) {
            Ok(Started::Send { id, to }) => {
                dns.counters.inc(DnsEvent::Forwarded);
                self.send_upstream(id, to, now);
                Handled::Later
            }
            Ok(Started::Joined) => Handled::Later,
            Err(Refusal::NoUpstream | Refusal::TooMany) => {
                error_reply(q.msg, Rcode::REFUSED, self.max_udp, &mut self.out);
                count_rcode(dns, Rcode::REFUSED);
                Handled::Now
            }
        }
    }

    /// `reply` into `out`, cut to `limit` (TC set) if longer; counts its code.
    fn fit_into(dns: &Dns, reply: &[u8], limit: usize, advertise: u16, out: &mut Vec<u8>) {
        if fit_udp(reply, limit, advertise, out) {
            dns.counters.inc(DnsEvent::Truncated);
        }
        let rcode = reply.get(3).and_then(|b| Rcode::checked_from_int(b & 0x0f));
        count_rcode(dns, rcode.unwrap_or(Rcode::SERVFAIL));
    }

    /// Sends query `id` to `to` from one of its family's sockets, at random.
    fn send_upstream(&mut self, id: u16, to: SocketAddr, now: Instant) {
        let base = if to.is_ipv6() { PORTS } else { 0 };
        let socket = base + usize::from(rand::random::<u8>()) % PORTS;
        let max = self.max_udp;
        let Some(query) = self.fwd.query(id) else { return };
        // Asking for more than this server can pass on in one datagram would only
        // fetch answers to cut down.
        self.fit.clear();
        self.fit.extend_from_slice(query);
        msg::clamp_edns(&mut self.fit, max);
        let sent = self.up_udp[socket].as_ref().map(|s| s.send_to(&self.fit, to));
        self.fwd.sent_from(id, socket);
        if !matches!(sent, Some(Ok(_))) {
            // No socket, or the host refused the datagram (no route): the next
            // server is asked at once.
            self.fwd.fail(id, now);
        }
    }

    fn upstream_udp(&mut self, sockets: &mut SocketSet<'static>, now: Instant) {
        while self.ready != 0 {
            let i = self.ready.trailing_zeros() as usize;
            self.ready &= !(1 << i);
            for n in 0..=RECV_BUDGET {
                if n == RECV_BUDGET {
                    // Not read dry: still ready, and the next pass comes at once.
                    self.ready |= 1 << i;
                    self.more = true;
                    break;
                }
                let Some(Ok((len, from))) = self.up_udp[i].as_ref().map(|s| s.recv_from(&mut self.rx)) else {
                    break;
                };
                let reply = std::mem::take(&mut self.rx);
                self.answered(sockets, &reply[..len], from, Via::Udp, i, now);
                self.rx = reply;
            }
        }
    }

    /// An upstream answer: checked against what was asked, cached, delivered.
    fn answered(
        &mut self,
        sockets: &mut SocketSet<'static>,
        reply: &[u8],
        from: SocketAddr,
        via: Via,
        socket: usize,
        now: Instant,
    ) {
        let dns = self.dns.clone();
        let Some(Reply {
            id,
            tc,
            name,
            name_len,
            qtype,
        }) = Self::identify(reply)
        else {
            dns.counters.inc(DnsEvent::DroppedUnexpected);
            return;
        };
        if !self.fwd.expects(id, from, via, socket, &name[..name_len], qtype) {
            dns.counters.inc(DnsEvent::DroppedUnexpected);
            return;
        }
        if !msg::well_formed(reply) {
            dns.counters.inc(DnsEvent::UpstreamMalformed);
            self.give_up(sockets, id);
            return;
        }
        if tc && via == Via::Udp {
            if let Some(to) = self.fwd.retry_over_tcp(id, now) {
                dns.counters.inc(DnsEvent::UpstreamTcp);
                if self.connect(id, to) {
                    return;
                }
            }
            // No connection to be had: the truncated answer goes to the clients,
            // which ask again over TCP themselves.
        }
        let Some(p) = self.fwd.finish(id) else { return };
        // What a query without "recursion desired" got may be partial (a CNAME
        // without its target): not for clients that want the whole answer.
        if p.query.get(2).is_some_and(|b| b & 0x01 != 0) {
            self.cache.insert(&p.key, reply, now);
        }
        if p.key.qtype() == Rtype::A.to_int() || p.key.qtype() == Rtype::AAAA.to_int() {
            let unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            dns.learned().lock().learn(p.key.name(), reply, unix);
        }
        for w in p.waiters.iter().flatten() {
            self.fit.clear();
            self.fit.extend_from_slice(reply);
            self.fit[..2].copy_from_slice(&w.id.to_be_bytes());
            Self::fit_into(&dns, &self.fit, w.limit, self.max_udp, &mut self.out);
            self.deliver(sockets, w.client);
            self.record(w.started);
        }
        self.fwd.recycle(p.query);
    }

    /// An upstream message's id, TC bit and question, if it is a response with one
    /// question.
    fn identify(reply: &[u8]) -> Option<Reply> {
        let msg = Message::from_slice(reply).ok()?;
        let h = msg.header();
        if !h.qr() {
            return None;
        }
        let q = msg.sole_question().ok()?;
        let mut name = [0u8; MAX_NAME];
        let name_len = crate::dns::zone::wire_key(q.qname(), &mut name)?.len();
        Some(Reply {
            id: h.id(),
            tc: h.tc(),
            name,
            name_len,
            qtype: q.qtype().to_int(),
        })
    }

    /// Sends `out` to `client` (a TCP client's at once, as far as its window goes).
    fn deliver(&mut self, sockets: &mut SocketSet<'static>, client: Client) {
        match client {
            Client::Udp { to, from } => self.send_udp(sockets, to, from),
            Client::Tcp { slot, generation } => {
                let Some(c) = self
                    .conns
                    .get_mut(slot)
                    .filter(|c| c.in_use && c.generation == generation)
                else {
                    return;
                };
                c.waiting = false;
                Self::frame(&mut c.outbox, &self.out);
                c.sent = 0;
                Self::flush(c, sockets, Instant::now());
            }
        }
    }

    /// `msg` with TCP's two-byte length before it.
    fn frame(outbox: &mut Vec<u8>, msg: &[u8]) {
        let msg = &msg[..msg.len().min(MAX_MESSAGE)];
        outbox.clear();
        outbox.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        outbox.extend_from_slice(msg);
    }

    /// Writes as much of `c`'s answer as the socket takes.
    fn flush(c: &mut Conn, sockets: &mut SocketSet<'static>, now: Instant) {
        if c.sent >= c.outbox.len() {
            return;
        }
        let s = sockets.get_mut::<tcp::Socket>(c.handle);
        if let Ok(n) = s.send_slice(&c.outbox[c.sent..]) {
            c.sent += n;
        }
        if c.sent >= c.outbox.len() {
            c.outbox.clear();
            c.sent = 0;
            c.last_active = now;
        }
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
                        let generation = c.generation;
                        self.fwd.forget(Client::Tcp { slot, generation });
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
            let mut budget = 16;
            loop {
                let c = &mut self.conns[slot];
                Self::flush(c, sockets, now);
                if !c.outbox.is_empty() || c.waiting {
                    break;
                }
                if budget == 0 {
                    self.more = true;
                    break;
                }
                budget -= 1;
                let s = sockets.get_mut::<tcp::Socket>(handle);
                if s.can_recv() {
                    let room = (2 + MAX_MESSAGE).saturating_sub(c.inbox.len());
                    let inbox = &mut c.inbox;
                    let _ = s.recv(|b| {
                        let n = b.len().min(room);
                        inbox.extend_from_slice(&b[..n]);
                        (n, ())
                    });
                }
                let Some(len) = len_prefix(&c.inbox).filter(|len| c.inbox.len() >= 2 + len) else {
                    break;
                };
                c.last_active = now;
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
            if c.waiting {
                continue; // the forwarder's timeout bounds it
            }
            let quiet = c.outbox.is_empty();
            let silent = now.duration_since(c.last_active);
            let established = s.state() == tcp::State::Established;
            // The client is done sending and has its answers, or has asked nothing
            // for too long; a close that does not finish (no FIN, no ACK, a window
            // that stays shut) is cut short.
            if quiet && (s.state() == tcp::State::CloseWait || (established && silent >= TCP_IDLE)) {
                s.close();
            } else if silent >= TCP_IDLE + TCP_CLOSE_GRACE {
                s.abort();
            }
        }
    }

    /// Opens a TCP connection to `to` for query `id`; false if none can be had.
    fn connect(&mut self, id: u16, to: SocketAddr) -> bool {
        let Some(slot) = self.up_tcp.iter().position(Option::is_none) else {
            self.dns.counters.inc(DnsEvent::DroppedTcp);
            return false;
        };
        let Some(query) = self.fwd.query(id) else { return false };
        let mut outbox = Vec::with_capacity(2 + query.len());
        Self::frame(&mut outbox, query);
        let registry = &self.registry;
        let opened = TcpStream::connect(to).and_then(|mut stream| {
            registry.register(
                &mut stream,
                Token(TCP_TOKENS + slot),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(stream)
        });
        let Ok(stream) = opened else { return false };
        self.up_tcp[slot] = Some(Upstream {
            stream,
            id,
            server: to,
            outbox,
            sent: 0,
            inbox: Vec::new(),
        });
        true
    }

    fn upstream_tcp(&mut self, sockets: &mut SocketSet<'static>, now: Instant) {
        for slot in 0..self.up_tcp.len() {
            let Some(u) = self.up_tcp[slot].as_mut() else { continue };
            // Still this connection's query? It may have been given up or moved on
            // to another server over UDP (and its id even reused) meanwhile.
            let ours = self.fwd.asking(u.id) == Some((u.server, Via::Tcp));
            let mut failed = false;
            while ours && u.sent < u.outbox.len() {
                match u.stream.write(&u.outbox[u.sent..]) {
                    Ok(n) if n > 0 => u.sent += n,
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected) => break,
                    _ => {
                        failed = true;
                        break;
                    }
                }
            }
            let mut complete = false;
            while ours && !failed && !complete {
                match u.stream.read(&mut self.rx) {
                    Ok(0) => failed = true,
                    Ok(n) => u.inbox.extend_from_slice(&self.rx[..n]),
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected) => break,
                    Err(_) => failed = true,
                }
                complete = len_prefix(&u.inbox).is_some_and(|len| u.inbox.len() >= 2 + len);
                failed &= !complete;
            }
            if ours && !failed && !complete {
                continue;
            }
            let Some(mut u) = self.up_tcp[slot].take() else {
                continue;
            };
            let _ = self.registry.deregister(&mut u.stream);
            if !ours {
                continue;
            }
            match len_prefix(&u.inbox).filter(|_| complete) {
                Some(len) => self.answered(sockets, &u.inbox[2..2 + len], u.server, Via::Tcp, 0, now),
                None => self.fwd.fail(u.id, now),
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
                Step::Send { id, to } => {
                    self.dns.counters.inc(DnsEvent::UpstreamRetries);
                    self.send_upstream(id, to, now);
                }
                Step::GiveUp { id } => {
                    // Answers go out no faster than the socket takes them: the
                    // rest stay due and are given up in the next pass.
                    if !sockets.get::<udp::Socket>(self.udp).can_send() {
                        self.more = true;
                        continue;
                    }
                    self.dns.counters.inc(DnsEvent::UpstreamTimeouts);
                    self.give_up(sockets, id);
                }
            }
        }
        self.steps = steps;
    }

    /// Ends query `id` with SERVFAIL to each of its clients.
    fn give_up(&mut self, sockets: &mut SocketSet<'static>, id: u16) {
        let Some(p) = self.fwd.finish(id) else { return };
        if let Ok(msg) = Message::from_slice(&p.query[..]) {
            for w in p.waiters.iter().flatten() {
                error_reply(msg, Rcode::SERVFAIL, self.max_udp, &mut self.out);
                self.out[..2].copy_from_slice(&w.id.to_be_bytes());
                count_rcode(&self.dns, Rcode::SERVFAIL);
                self.deliver(sockets, w.client);
                self.record(w.started);
            }
        }
        self.fwd.recycle(p.query);
    }
}
