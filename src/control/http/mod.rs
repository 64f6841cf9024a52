//! The HTTP server every face runs on: a readiness-based front (`mio`) that reads and
//! writes every connection without blocking, in front of a pool of handler threads
//! that only ever see complete requests.
//!
//! Why not `tiny_http`, which the design card names: it gives each connection a
//! thread for as long as the connection sends nothing, has no limit on header size
//! or count and no deadline on heads or bodies, and its accept thread dies on EMFILE —
//! a stuck script or 16 slow clients froze a listener. A patched copy would have to
//! change its reading, threading and accept loop, which is most of it. Here instead:
//!
//! - **One reactor thread per listener** accepts, reads request heads and bodies
//!   through the sans-IO [`parse::Parser`], and writes responses, never blocking on a
//!   client. A connection that is slow costs a buffer and a slot, not a thread.
//! - **Handler threads** take complete requests from a bounded queue, route them, and
//!   hand the response back; the reactor writes it. Routes a face marks as waiting on
//!   peers go to a second pool of their own, so they never hold up `/status`,
//!   `/health` or other writes.
//! - **Every limit has a name** ([`Limits`], `[api]` in the configuration): head
//!   size and field count (431), body size (413), deadlines for the head, the body, an
//!   idle keep-alive connection and for writing a response (408 or close),
//!   connections per listener and per client address (503), and a full queue (503).
//! - **Accept errors back off**: EMFILE, ENFILE and their kind pause accepting (one
//!   spare descriptor is spent to turn the next client away at once rather than leave
//!   it hanging), ECONNABORTED is skipped; the listener never stops.
//! - A connection's memory is bounded by the limits and returned when it closes;
//!   pipelined requests are read one at a time, after the previous answer is written.
//!
//! - **TLS** ([`serve_tls`], the management listener with `api.tls`): each
//!   connection carries a rustls `ServerConnection`, driven by the same reactor
//!   without blocking. The handshake is one more phase, bounded by the head
//!   deadline; every other bound holds as for plain HTTP (sizes count decrypted
//!   bytes; a connection over the limits still gets its 503, after a handshake, from
//!   a few slots kept for refusals). A client that speaks plain HTTP to it gets a
//!   plain 400 that says to use https. Plain listeners take none of this path: one
//!   branch on an empty `Option` per read and write.
//!
//! Long-lived responses (Server-Sent Events, later) fit the same reactor: a
//! connection that streams is one more state, fed from a queue, without a thread.
//! This module touches only the listener and connections it is given.

pub mod parse;

use super::router::{Request, Router};
use crate::telemetry::{BucketCounts, BucketHistogram};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use parse::{encode_response, HttpError, ParseLimits, Parsed, Parser, RawRequest};
use rustls::{ServerConfig, ServerConnection};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The listeners whose requests [`RequestTimes`] keeps, by the face name each is
/// served as.
pub const FACES: [&str; 4] = ["api", "weave", "libnetwork", "metrics"];
/// Status classes of [`RequestTimes`]: `2xx` holds every answer below 400 (the
/// faces send no redirects; "100 Continue" is not an answer).
pub const CODE_CLASSES: [&str; 3] = ["2xx", "4xx", "5xx"];

/// How long handlers took to answer, per face and status class: the duration the
/// request log line shows (routing, the gate and the handler; not reading the
/// request or writing the answer), in one lock-free [`BucketHistogram`] each. Every
/// handler thread of every listener records into the one instance the daemon
/// shares; the stats document and `/metrics` read it. Requests the server refuses
/// itself (408, 413, 431, a full queue's 503) reach no handler and are not here.
#[derive(Default)]
pub struct RequestTimes {
    by_face: [[BucketHistogram; CODE_CLASSES.len()]; FACES.len()],
}

impl RequestTimes {
    /// The index of `face` in [`FACES`], if it is kept.
    pub fn face(face: &str) -> Option<usize> {
        FACES.iter().position(|f| *f == face)
    }

    /// The index of `status`'s class in [`CODE_CLASSES`].
    pub fn class(status: u16) -> usize {
        match status {
            500.. => 2,
            400..=499 => 1,
            _ => 0,
        }
    }

    #[inline]
    pub fn record(&self, face: usize, status: u16, d: Duration) {
        if let Some(f) = self.by_face.get(face) {
            f[Self::class(status)].record(d);
        }
    }

    /// What face `face` (an index in [`FACES`]) recorded for class `class`.
    pub fn read(&self, face: usize, class: usize) -> BucketCounts {
        self.by_face[face][class].read()
    }
}

/// Every bound the server keeps, with the defaults of `[api]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections per listener (`api.max_connections`).
    pub max_connections: usize,
    /// Open connections per client address (`api.max_connections_per_client`).
    pub max_per_client: usize,
    /// From the first byte of a request to the end of its head (`api.header_timeout_ms`).
    pub head_timeout: Duration,
    /// From the end of the head to the end of the body (`api.body_timeout_ms`).
    pub body_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request
    /// (`api.idle_timeout_ms`).
    pub idle_timeout: Duration,
    /// How long a client may take to read a response (`api.write_timeout_ms`).
    pub write_timeout: Duration,
    /// Request line and headers (`api.max_header_bytes`).
    pub max_head: usize,
    /// Header fields (`api.max_headers`).
    pub max_headers: usize,
    /// Request body (2 MiB).
    pub max_body: usize,
    /// Handler threads, and requests waiting for one (`api.handler_threads`).
    pub handlers: usize,
    pub queue: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 512,
            max_per_client: 64,
            head_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            max_head: 16 << 10,
            max_headers: 64,
            max_body: 2 << 20,
            handlers: 16,
            queue: 256,
        }
    }
}

const LISTENER: Token = Token(usize::MAX - 1);
const WAKE: Token = Token(usize::MAX - 2);
/// Bytes read from a connection per call.
const READ_CHUNK: usize = 16 << 10;
/// The longest the reactor sleeps without looking at the shutdown flag.
const MAX_SLEEP: Duration = Duration::from_millis(100);

/// What a handler thread gets.
struct Job {
    slot: usize,
    generation: u64,
    req: Request,
    keep_alive: bool,
}

/// What comes back to the reactor.
struct Done {
    slot: usize,
    generation: u64,
    bytes: Vec<u8>,
    close: bool,
}

enum Phase {
    /// The TLS handshake is under way; `sniffed` once the first byte has been seen
    /// to be TLS, not plain HTTP.
    Handshake { sniffed: bool },
    /// Waiting for a request.
    Idle,
    /// Reading a request (head or body).
    Reading,
    /// A handler has the request.
    Handling,
    /// Writing `out[at..]`; then closing, or going on as `then` says.
    Writing {
        out: Vec<u8>,
        at: usize,
        close: bool,
        then: Next,
    },
    /// The answer is written and the write side shut: reading and discarding what
    /// the client still sends (at most `budget` bytes, until the deadline), so that
    /// closing does not reset the connection before the client has read the answer.
    Lingering { budget: usize },
}

/// Where a connection goes once an answer is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Wait for the next request.
    Idle,
    /// Go on reading the request the answer was for (after "100 Continue").
    Reading,
}

/// What a lingering close reads at most before it closes anyway: more than the
/// largest body, so a client that sends one it was refused still reads the refusal.
const LINGER_BYTES: usize = 8 << 20;
/// How long a lingering close waits at most.
const LINGER: Duration = Duration::from_secs(2);
/// Connections accepted per pass of the reactor, so that a flood of connects cannot
/// starve the connections already open.
const ACCEPT_BUDGET: usize = 64;
/// Connections a TLS listener takes beyond its limits only to answer them 503 after
/// the handshake (a plain listener writes its 503 at once); past these, a
/// connection over the limits is closed without an answer.
const REFUSING_MAX: usize = 32;

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    parser: Parser,
    phase: Phase,
    deadline: Instant,
    generation: u64,
    /// The TLS session, on a TLS listener.
    tls: Option<Box<ServerConnection>>,
    /// Why this connection is answered 503 once its TLS handshake is done (taken
    /// in over the limits, from [`REFUSING_MAX`]).
    refusal: Option<String>,
    refused: bool,
}

/// Serves `router` over `state` on `listener` with `limits` until `shutdown` is set,
/// logging each request as `face` and timing it into `times` (when `face` is one of
/// [`FACES`]). The calling thread runs the reactor.
pub fn serve<S: Send + Sync + 'static>(
    face: &'static str,
    listener: std::net::TcpListener,
    router: Router<S>,
    state: Arc<S>,
    limits: Limits,
    times: Arc<RequestTimes>,
    shutdown: Arc<AtomicBool>,
) -> io::Result<()> {
    run(face, listener, None, router, state, limits, times, shutdown)
}

/// [`serve`] over TLS with `tls`: HTTP/1.1 inside, every bound the same.
#[allow(clippy::too_many_arguments)]
pub fn serve_tls<S: Send + Sync + 'static>(
    face: &'static str,
    listener: std::net::TcpListener,
    tls: Arc<ServerConfig>,
    router: Router<S>,
    state: Arc<S>,
    limits: Limits,
    times: Arc<RequestTimes>,
    shutdown: Arc<AtomicBool>,
) -> io::Result<()> {
    run(face, listener, Some(tls), router, state, limits, times, shutdown)
}

#[allow(clippy::too_many_arguments)]
fn run<S: Send + Sync + 'static>(
    face: &'static str,
    listener: std::net::TcpListener,
    tls: Option<Arc<ServerConfig>>,
    router: Router<S>,
    state: Arc<S>,
    limits: Limits,
    times: Arc<RequestTimes>,
    shutdown: Arc<AtomicBool>,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut listener = TcpListener::from_std(listener);
    let mut poll = Poll::new()?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
    let router = Arc::new(router);
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<Done>();
    let lanes = [
        Lane::start(face, "", &router, &state, &times, &done_tx, &waker, limits)?,
        Lane::start(face, "slow-", &router, &state, &times, &done_tx, &waker, limits)?,
    ];
    let mut r = Reactor {
        face,
        limits,
        conns: Vec::new(),
        free: Vec::new(),
        per_client: HashMap::new(),
        next_generation: 0,
        paused_until: None,
        backoff: Duration::from_millis(50),
        spare: spare_fd(),
        last_accept_error: None,
        tls,
        refusing: 0,
    };
    let mut events = Events::with_capacity(256);
    while !shutdown.load(Ordering::Relaxed) {
        let now = Instant::now();
        let sleep = r
            .next_deadline()
            .map_or(MAX_SLEEP, |d| d.saturating_duration_since(now))
            .min(MAX_SLEEP);
        if let Err(e) = poll.poll(&mut events, Some(sleep)) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        let mut accept = r.paused_until.is_some_and(|t| Instant::now() >= t);
        for ev in events.iter() {
            match ev.token() {
                LISTENER => accept = true,
                WAKE => {}
                Token(slot) => r.ready(poll.registry(), slot, &router, &lanes),
            }
        }
        while let Ok(d) = done_rx.try_recv() {
            r.answered(poll.registry(), d, &router, &lanes);
        }
        if accept {
            r.accept(&listener, poll.registry(), &router, &lanes);
        }
        r.expire(poll.registry(), &router, &lanes);
    }
    Ok(())
}

/// One pool of handler threads and its queue.
struct Lane {
    jobs: Sender<Job>,
}

impl Lane {
    #[allow(clippy::too_many_arguments)]
    fn start<S: Send + Sync + 'static>(
        face: &'static str,
        kind: &'static str,
        router: &Arc<Router<S>>,
        state: &Arc<S>,
        times: &Arc<RequestTimes>,
        done: &Sender<Done>,
        waker: &Arc<Waker>,
        limits: Limits,
    ) -> io::Result<Lane> {
        let (jobs, rx) = crossbeam_channel::bounded::<Job>(limits.queue);
        let timed = RequestTimes::face(face);
        for i in 0..limits.handlers.max(1) {
            let (rx, router, state, done, waker): (Receiver<Job>, _, _, _, _) =
                (rx.clone(), router.clone(), state.clone(), done.clone(), waker.clone());
            let times = times.clone();
            std::thread::Builder::new()
                .name(format!("tl-{face}-{kind}{i}"))
                .spawn(move || {
                    // Ends when the reactor drops its sender (shutdown).
                    while let Ok(job) = rx.recv() {
                        let d = handle(face, &router, &state, job, timed.map(|f| (&*times, f)));
                        if done.send(d).is_err() {
                            return;
                        }
                        let _ = waker.wake();
                    }
                })?;
        }
        Ok(Lane { jobs })
    }
}

/// Runs one request through the router on a handler thread, and times it into
/// `times` (the face's index there) with the duration the log line shows.
fn handle<S>(face: &str, router: &Router<S>, state: &S, job: Job, times: Option<(&RequestTimes, usize)>) -> Done {
    let t0 = Instant::now();
    let req = &job.req;
    let resp =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| router.dispatch(state, req))).unwrap_or_else(|_| {
            log::error!("{face}: handler for {} {} panicked", req.method, req.path);
            router.error(500, "internal error (a bug in tunloom); the daemon log has the details")
        });
    let took = t0.elapsed();
    if let Some((times, f)) = times {
        times.record(f, resp.status, took);
    }
    log::info!(
        "{face}: {} {} {} {} {:.1}ms",
        req.remote.map_or_else(|| "-".to_string(), |a| a.to_string()),
        req.method,
        req.path,
        resp.status,
        took.as_secs_f64() * 1000.0
    );
    let close = !job.keep_alive;
    let bytes = encode_response(
        resp.status,
        resp.content_type,
        &resp.headers,
        &resp.body,
        req.method == "HEAD",
        close,
    );
    Done {
        slot: job.slot,
        generation: job.generation,
        bytes,
        close,
    }
}

/// A descriptor held in reserve: when the process runs out, closing it lets one
/// waiting client be accepted and turned away at once.
fn spare_fd() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

struct Reactor {
    face: &'static str,
    limits: Limits,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    per_client: HashMap<IpAddr, usize>,
    next_generation: u64,
    /// Accepting is paused (out of descriptors) until then.
    paused_until: Option<Instant>,
    backoff: Duration,
    spare: Option<std::fs::File>,
    last_accept_error: Option<Instant>,
    /// The TLS configuration, on a TLS listener.
    tls: Option<Arc<ServerConfig>>,
    /// Connections taken in only to be refused after their handshake.
    refusing: usize,
}

impl Reactor {
    fn open(&self) -> usize {
        self.conns.len() - self.free.len()
    }

    fn next_deadline(&self) -> Option<Instant> {
        let conns = self
            .conns
            .iter()
            .flatten()
            .filter(|c| !matches!(c.phase, Phase::Handling));
        conns.map(|c| c.deadline).chain(self.paused_until).min()
    }

    fn accept<S>(&mut self, listener: &TcpListener, reg: &mio::Registry, router: &Router<S>, lanes: &[Lane; 2]) {
        if self.paused_until.is_some_and(|t| Instant::now() < t) {
            return;
        }
        self.paused_until = None;
        for _ in 0..ACCEPT_BUDGET {
            match listener.accept() {
                Ok((stream, peer)) => {
                    self.backoff = Duration::from_millis(50);
                    if self.spare.is_none() {
                        self.spare = spare_fd();
                    }
                    self.admit(stream, peer, reg, router, lanes);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if one_connections_error(&e) => {}
                Err(e) => {
                    // Out of descriptors or memory: turn one waiting client away with
                    // the spare descriptor, then pause, doubling up to 1 s, and retry.
                    if self
                        .last_accept_error
                        .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
                    {
                        log::warn!(
                            "{}: cannot accept ({e}); {} connections open, retrying in {:?}",
                            self.face,
                            self.open(),
                            self.backoff
                        );
                        self.last_accept_error = Some(Instant::now());
                    }
                    if self.spare.take().is_some() {
                        if let Ok((s, _)) = listener.accept() {
                            drop(s);
                        }
                        self.spare = spare_fd();
                    }
                    self.paused_until = Some(Instant::now() + self.backoff);
                    self.backoff = (self.backoff * 2).min(Duration::from_secs(1));
                    return;
                }
            }
        }
        // The budget ran out with more perhaps waiting (the listener is
        // edge-triggered and will not say so again): look again at once.
        self.paused_until = Some(Instant::now());
    }

    /// Takes an accepted connection in, or turns it away with a 503 when the
    /// listener or its client has as many as it may.
    fn admit<S>(
        &mut self,
        mut stream: TcpStream,
        peer: SocketAddr,
        reg: &mio::Registry,
        router: &Router<S>,
        lanes: &[Lane; 2],
    ) {
        let ip = peer.ip();
        let from_client = self.per_client.get(&ip).copied().unwrap_or(0);
        let refuse = if self.open() >= self.limits.max_connections {
            Some(format!(
                "this listener has {} connections open, its limit; try again shortly",
                self.limits.max_connections
            ))
        } else if from_client >= self.limits.max_per_client {
            Some(format!(
                "{ip} has {} connections open, the limit per client; close some first",
                self.limits.max_per_client
            ))
        } else {
            None
        };
        let refusal = match (refuse, &self.tls) {
            (None, _) => None,
            // TLS: the 503 can only be said inside a session, after a handshake.
            (Some(message), Some(_)) if self.refusing < REFUSING_MAX => {
                log::warn!("{}: {peer} refused: {message}", self.face);
                Some(message)
            }
            (Some(message), Some(_)) => {
                log::warn!("{}: {peer} closed unanswered: {message}", self.face);
                return;
            }
            (Some(message), None) => {
                log::warn!("{}: {peer} refused: {message}", self.face);
                let r = router.error(503, &message);
                // Best effort: the socket buffer of a fresh connection takes it. Reading
                // what already arrived keeps the close from resetting the answer away.
                let _ = stream.write(&encode_response(503, r.content_type, &r.headers, &r.body, false, true));
                let _ = stream.shutdown(std::net::Shutdown::Write);
                let mut sink = [0u8; 4096];
                while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
                return;
            }
        };
        let tls = match &self.tls {
            None => None,
            Some(config) => match ServerConnection::new(config.clone()) {
                Ok(t) => Some(Box::new(t)),
                Err(e) => {
                    log::warn!("{}: cannot start TLS for {peer}: {e}", self.face);
                    return;
                }
            },
        };
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        if let Err(e) = reg.register(&mut stream, Token(slot), Interest::READABLE | Interest::WRITABLE) {
            log::warn!("{}: cannot watch a connection from {peer}: {e}", self.face);
            self.free.push(slot);
            return;
        }
        let _ = stream.set_nodelay(true);
        *self.per_client.entry(ip).or_default() += 1;
        self.next_generation += 1;
        let refused = refusal.is_some();
        self.refusing += usize::from(refused);
        // The handshake is bounded like a request head.
        let (phase, deadline) = if tls.is_some() {
            (
                Phase::Handshake { sniffed: false },
                Instant::now() + self.limits.head_timeout,
            )
        } else {
            (Phase::Idle, Instant::now() + self.limits.idle_timeout)
        };
        self.conns[slot] = Some(Conn {
            stream,
            peer,
            parser: Parser::new(ParseLimits {
                max_head: self.limits.max_head,
                max_headers: self.limits.max_headers,
                max_body: self.limits.max_body,
            }),
            phase,
            deadline,
            generation: self.next_generation,
            tls,
            refusal,
            refused,
        });
        // Data may have arrived with the connection.
        self.ready(reg, slot, router, lanes);
    }

    fn close(&mut self, reg: &mio::Registry, slot: usize) {
        if let Some(mut c) = self.conns.get_mut(slot).and_then(Option::take) {
            let _ = reg.deregister(&mut c.stream);
            self.refusing -= usize::from(c.refused);
            let ip = c.peer.ip();
            if let Some(n) = self.per_client.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.per_client.remove(&ip);
                }
            }
            self.free.push(slot);
        }
    }

    /// A connection is readable or writable: make all the progress it allows.
    fn ready<S>(&mut self, reg: &mio::Registry, slot: usize, router: &Router<S>, lanes: &[Lane; 2]) {
        let limits = self.limits;
        let face = self.face;
        let Some(c) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        // A panic here would be a bug; it costs this connection, never the listener.
        let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            progress(c, slot, limits, face, router, lanes)
        }))
        .unwrap_or_else(|_| {
            log::error!("{face}: a bug while serving a connection; it is closed");
            Step::Close
        });
        if step == Step::Close {
            self.close(reg, slot);
        }
    }

    fn answered<S>(&mut self, reg: &mio::Registry, d: Done, router: &Router<S>, lanes: &[Lane; 2]) {
        let limits = self.limits;
        let Some(c) = self.conns.get_mut(d.slot).and_then(Option::as_mut) else {
            return;
        };
        if c.generation != d.generation || !matches!(c.phase, Phase::Handling) {
            return;
        }
        c.phase = Phase::Writing {
            out: d.bytes,
            at: 0,
            close: d.close,
            then: Next::Idle,
        };
        c.deadline = Instant::now() + limits.write_timeout;
        self.ready(reg, d.slot, router, lanes);
    }

    /// Ends what overran its deadline: a request under way gets a 408 (written like
    /// any answer, then a lingering close), anything else is closed.
    fn expire<S>(&mut self, reg: &mio::Registry, router: &Router<S>, lanes: &[Lane; 2]) {
        let now = Instant::now();
        let late: Vec<usize> = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (i, c)))
            .filter(|(_, c)| !matches!(c.phase, Phase::Handling) && c.deadline <= now)
            .map(|(i, _)| i)
            .collect();
        for slot in late {
            let Some(c) = self.conns[slot].as_mut() else { continue };
            if matches!(c.phase, Phase::Reading) {
                let what = if c.parser.in_body() { "body" } else { "head" };
                log::info!("{}: {} timed out sending the request {what}", self.face, c.peer);
                let e = HttpError {
                    status: 408,
                    message: format!("the request {what} did not arrive in time"),
                };
                answer_and_close(c, &e, router, self.limits);
                self.ready(reg, slot, router, lanes);
            } else {
                if matches!(c.phase, Phase::Handshake { .. }) {
                    log::info!("{}: {} timed out in the TLS handshake", self.face, c.peer);
                }
                self.close(reg, slot);
            }
        }
    }
}

/// Accept errors that concern one connection only (it went away, or its network
/// did): the next accept may well succeed.
fn one_connections_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    ) || matches!(
        e.raw_os_error(),
        Some(libc::EPROTO | libc::ENETDOWN | libc::ENOPROTOOPT | libc::EHOSTDOWN | libc::ENONET)
            | Some(libc::EHOSTUNREACH | libc::EOPNOTSUPP | libc::ENETUNREACH | libc::EPERM)
    )
}

#[derive(Debug, PartialEq, Eq)]
enum Step {
    Open,
    Close,
}

/// Reads, parses, dispatches and writes as far as the connection allows without
/// waiting.
fn progress<S>(c: &mut Conn, slot: usize, limits: Limits, face: &str, router: &Router<S>, lanes: &[Lane; 2]) -> Step {
    loop {
        match &mut c.phase {
            Phase::Handshake { sniffed } => {
                if !*sniffed {
                    match sniff(&c.stream) {
                        Ok(Sniff::Tls) => *sniffed = true,
                        Ok(Sniff::PlainHttp) => {
                            // Answered in plain text, which is what it can read.
                            log::info!("{face}: {} sent plain HTTP to the TLS listener", c.peer);
                            c.tls = None;
                            let e = HttpError {
                                status: 400,
                                message: "this listener speaks TLS only (api.tls): use https://".into(),
                            };
                            answer_and_close(c, &e, router, limits);
                            continue;
                        }
                        Ok(Sniff::Wait) => return Step::Open,
                        Err(_) => return Step::Close,
                    }
                }
                let Some(tls) = c.tls.as_deref_mut() else {
                    return Step::Close;
                };
                match handshake(tls, &mut c.stream) {
                    Ok(true) => {}
                    Ok(false) => return Step::Open,
                    Err(e) => {
                        if e.kind() != io::ErrorKind::UnexpectedEof {
                            log::info!("{face}: {} TLS handshake failed: {e}", c.peer);
                        }
                        return Step::Close;
                    }
                }
                match c.refusal.take() {
                    Some(message) => {
                        let e = HttpError { status: 503, message };
                        answer_and_close(c, &e, router, limits);
                    }
                    None => {
                        c.phase = Phase::Idle;
                        c.deadline = Instant::now() + limits.idle_timeout;
                    }
                }
            }
            Phase::Handling => return Step::Open,
            Phase::Writing { out, at, close, then } => {
                while *at < out.len() {
                    match write_to(&mut c.stream, &mut c.tls, &out[*at..]) {
                        Ok(0) => return Step::Close,
                        Ok(n) => *at += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Open,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return Step::Close,
                    }
                }
                if let Some(tls) = c.tls.as_deref_mut() {
                    // What the session still holds goes out first (and, before a
                    // close, the close_notify alert).
                    if *close {
                        tls.send_close_notify();
                    }
                    match flush_tls(tls, &mut c.stream) {
                        Ok(true) => {}
                        Ok(false) => return Step::Open,
                        Err(_) => return Step::Close,
                    }
                }
                if *close {
                    let _ = c.stream.shutdown(std::net::Shutdown::Write);
                    c.phase = Phase::Lingering { budget: LINGER_BYTES };
                    c.deadline = Instant::now() + LINGER;
                    continue;
                }
                if *then == Next::Reading {
                    // Back to the body the "100 Continue" asked for.
                    c.phase = Phase::Reading;
                    c.deadline = Instant::now() + limits.body_timeout;
                    continue;
                }
                c.phase = Phase::Idle;
                c.deadline = Instant::now() + limits.idle_timeout;
            }
            Phase::Lingering { budget } => {
                let mut sink = [0u8; 8192];
                loop {
                    match c.stream.read(&mut sink) {
                        Ok(0) => return Step::Close,
                        Ok(n) if n >= *budget => return Step::Close,
                        Ok(n) => *budget -= n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Open,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return Step::Close,
                    }
                }
            }
            Phase::Idle | Phase::Reading => {
                // What is buffered first (a pipelined request), then the socket.
                let in_body = c.parser.in_body();
                let polled = c.parser.poll();
                if !in_body && c.parser.in_body() {
                    // The head just completed: the body gets its own deadline.
                    c.deadline = Instant::now() + limits.body_timeout;
                }
                match polled {
                    Ok(Some(Parsed::Continue)) => {
                        c.phase = Phase::Writing {
                            out: b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(),
                            at: 0,
                            close: false,
                            then: Next::Reading,
                        };
                        continue;
                    }
                    Ok(Some(Parsed::Request(raw))) => {
                        dispatch(c, slot, raw, limits, router, lanes);
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        log::info!("{face}: {} refused with {}: {}", c.peer, e.status, e.message);
                        answer_and_close(c, &e, router, limits);
                        continue;
                    }
                }
                if c.parser.started() && matches!(c.phase, Phase::Idle) {
                    c.phase = Phase::Reading;
                    c.deadline = Instant::now() + limits.head_timeout;
                }
                let room = c.parser.room().min(READ_CHUNK);
                if room == 0 {
                    // The parser has all it may take and made no progress: nothing
                    // more to read for this request.
                    return Step::Open;
                }
                let buf = &mut c.parser.buffer;
                let len = buf.len();
                buf.resize(len + room, 0);
                match read_from(&mut c.stream, &mut c.tls, &mut buf[len..]) {
                    Ok(0) => {
                        buf.truncate(len);
                        return Step::Close;
                    }
                    Ok(n) => {
                        buf.truncate(len + n);
                        if matches!(c.phase, Phase::Idle) {
                            c.phase = Phase::Reading;
                            c.deadline = Instant::now() + limits.head_timeout;
                        }
                    }
                    Err(e) => {
                        buf.truncate(len);
                        match e.kind() {
                            io::ErrorKind::WouldBlock => return Step::Open,
                            io::ErrorKind::Interrupted => {}
                            _ => return Step::Close,
                        }
                    }
                }
            }
        }
    }
}

/// What the first byte of a connection to a TLS listener says.
enum Sniff {
    /// A TLS handshake record.
    Tls,
    /// An upper-case letter, as a request line starts: plain HTTP.
    PlainHttp,
    /// Nothing yet.
    Wait,
}

fn sniff(stream: &TcpStream) -> io::Result<Sniff> {
    let mut first = [0u8; 1];
    match stream.peek(&mut first) {
        Ok(0) => Err(io::ErrorKind::UnexpectedEof.into()),
        Ok(_) if first[0].is_ascii_uppercase() => Ok(Sniff::PlainHttp),
        // Anything else is for rustls to judge (and refuse with an alert).
        Ok(_) => Ok(Sniff::Tls),
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => Ok(Sniff::Wait),
        Err(e) => Err(e),
    }
}

/// Drives a TLS handshake as far as the socket allows: `Ok(true)` once it is
/// complete (and what it had to send is sent), `Ok(false)` to wait for readiness.
fn handshake(tls: &mut ServerConnection, stream: &mut TcpStream) -> io::Result<bool> {
    loop {
        if !flush_tls(tls, stream)? {
            return Ok(false);
        }
        if !tls.is_handshaking() {
            return Ok(true);
        }
        match tls.read_tls(stream) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => process(tls, stream)?,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Decrypts what `read_tls` took; on a protocol error the alert rustls queued is
/// sent (best effort) before the error is returned.
fn process(tls: &mut ServerConnection, stream: &mut TcpStream) -> io::Result<()> {
    if let Err(e) = tls.process_new_packets() {
        let _ = tls.write_tls(stream);
        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
    }
    Ok(())
}

/// Writes what the TLS session holds: `Ok(true)` when nothing is left.
fn flush_tls(tls: &mut ServerConnection, stream: &mut TcpStream) -> io::Result<bool> {
    while tls.wants_write() {
        match tls.write_tls(stream) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Reads request bytes: from the socket, or decrypted from the TLS session.
/// `Ok(0)` is the end of the stream (for TLS, close_notify or the TCP end).
fn read_from(stream: &mut TcpStream, tls: &mut Option<Box<ServerConnection>>, buf: &mut [u8]) -> io::Result<usize> {
    let Some(tls) = tls.as_deref_mut() else {
        return stream.read(buf);
    };
    loop {
        match tls.reader().read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        // Anything the session must say (a key update, tickets) goes first.
        flush_tls(tls, stream)?;
        match tls.read_tls(stream)? {
            0 => return Ok(0),
            _ => process(tls, stream)?,
        }
    }
}

/// Writes response bytes: to the socket, or encrypted through the TLS session
/// (which takes up to its buffer limit and sends as much as the socket takes; the
/// rest goes with [`flush_tls`]).
fn write_to(stream: &mut TcpStream, tls: &mut Option<Box<ServerConnection>>, buf: &[u8]) -> io::Result<usize> {
    let Some(tls) = tls.as_deref_mut() else {
        return stream.write(buf);
    };
    if !flush_tls(tls, stream)? {
        return Err(io::ErrorKind::WouldBlock.into());
    }
    let n = tls.writer().write(buf)?;
    flush_tls(tls, stream)?;
    if n == 0 {
        return Err(io::ErrorKind::WouldBlock.into());
    }
    Ok(n)
}

/// Answers with `e` in the face's style and closes after it.
fn answer_and_close<S>(c: &mut Conn, e: &HttpError, router: &Router<S>, limits: Limits) {
    let r = router.error(e.status, &e.message);
    c.phase = Phase::Writing {
        out: encode_response(e.status, r.content_type, &r.headers, &r.body, false, true),
        at: 0,
        close: true,
        then: Next::Idle,
    };
    c.deadline = Instant::now() + limits.write_timeout;
}

/// Hands a complete request to a handler thread, or answers 503 at once when its
/// queue is full.
fn dispatch<S>(c: &mut Conn, slot: usize, raw: RawRequest, limits: Limits, router: &Router<S>, lanes: &[Lane; 2]) {
    let head_only = raw.method.eq_ignore_ascii_case("HEAD");
    let keep_alive = raw.keep_alive;
    let refuse = |c: &mut Conn, status: u16, message: &str| {
        let r = router.error(status, message);
        c.phase = Phase::Writing {
            out: encode_response(status, r.content_type, &r.headers, &r.body, head_only, !keep_alive),
            at: 0,
            close: !keep_alive,
            then: Next::Idle,
        };
        c.deadline = Instant::now() + limits.write_timeout;
    };
    let req = match Request::from_raw(raw.method, &raw.target, raw.headers, raw.body, Some(c.peer)) {
        Ok(r) => r,
        Err(message) => return refuse(c, 400, &message),
    };
    let lane = &lanes[usize::from(router.is_slow(&req))];
    let job = Job {
        slot,
        generation: c.generation,
        req,
        keep_alive,
    };
    match lane.jobs.try_send(job) {
        Ok(()) => c.phase = Phase::Handling,
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
            refuse(c, 503, "every request handler is busy; try again shortly")
        }
    }
}

#[cfg(test)]
mod tests;
