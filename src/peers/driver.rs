//! The control protocol's I/O shell: [`Peers`] owns the peer [`Table`] behind a lock,
//! the UDP socket and the clock. Its thread ([`Peers::run`]) sleeps in a `mio` poll
//! until a datagram arrives, the next hello is due, or another thread changed the
//! table and kicked it; then it hands datagrams to the table, publishes snapshots the
//! table asks for, and sends what the table polls out.
//!
//! Other threads (the model, on behalf of API requests) change the table through
//! [`Peers::update`] and wait for the protocol to catch up with [`Peers::wait`]; they
//! never send a datagram themselves, so a slow or unreachable peer never holds up an
//! API thread beyond the wait it asked for.

use super::table::{Peer, Table, Time};
use super::ControlEvent;
use crate::telemetry::Counters;
use ipnet::{IpNet, Ipv4Net};
use mio::{Events, Interest, Poll, Token, Waker};
use parking_lot::{Condvar, Mutex};
use std::io;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SOCKET: Token = Token(0);
const WAKE: Token = Token(1);
/// The longest the thread sleeps without looking at the shutdown flag.
const MAX_SLEEP: Duration = Duration::from_millis(200);
/// Datagrams handled per pass before hellos and expiry get their turn.
const RECV_BUDGET: usize = 64;

impl Time {
    /// Now, from the system's clocks.
    pub fn now() -> Time {
        Time {
            at: Instant::now(),
            unix_us: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64),
        }
    }
}

/// The peer table, shared between the control thread and the model.
pub struct Peers {
    table: Mutex<Table>,
    /// Signalled whenever the table changes: a peer's state, acknowledgement or
    /// liveness, or targets.
    moved: Condvar,
    waker: OnceLock<Arc<Waker>>,
    counters: Arc<Counters<ControlEvent>>,
}

impl Peers {
    pub fn new(table: Table) -> Peers {
        let counters = table.counters().clone();
        Peers {
            table: Mutex::new(table),
            moved: Condvar::new(),
            waker: OnceLock::new(),
            counters,
        }
    }

    pub fn counters(&self) -> &Arc<Counters<ControlEvent>> {
        &self.counters
    }

    /// Reads the table.
    pub fn read<R>(&self, f: impl FnOnce(&Table) -> R) -> R {
        f(&self.table.lock())
    }

    /// Changes the table, wakes whoever waits for it, and lets the control thread
    /// send what the change made due.
    pub fn update<R>(&self, f: impl FnOnce(&mut Table) -> R) -> R {
        let r = f(&mut self.table.lock());
        self.moved.notify_all();
        self.kick();
        r
    }

    /// Sets this node's networks (see [`Table::set_networks`]) and what it
    /// announces (see [`Table::set_announced`]), versioned by the wall clock.
    /// Returns the state version.
    pub fn set_announced(&self, list: &[(IpNet, bool, u32)], networks: &[(Ipv4Net, u32)]) -> u64 {
        self.update(|t| {
            t.set_networks(networks);
            t.set_announced(list, Time::now())
        })
    }

    /// A copy of every peer.
    pub fn snapshot(&self) -> Vec<Peer> {
        self.read(|t| t.peers().to_vec())
    }

    /// Waits, at most `timeout`, until `done` holds for the peers.
    pub fn wait(&self, timeout: Duration, mut done: impl FnMut(&[Peer]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut table = self.table.lock();
        loop {
            if done(table.peers()) {
                return true;
            }
            if self.moved.wait_until(&mut table, deadline).timed_out() {
                return done(table.peers());
            }
        }
    }

    /// Wakes the control thread (it sends whatever is due, and sees shutdown).
    pub fn kick(&self) {
        if let Some(w) = self.waker.get() {
            // A failed wake only delays sending until the next timer.
            let _ = w.wake();
        }
    }

    /// Runs the control protocol on `sock` until `shutdown`, then says bye.
    /// `on_change` must publish a snapshot of the new state and return once the
    /// workers forward by it.
    pub fn run(&self, sock: UdpSocket, shutdown: &AtomicBool, on_change: &dyn Fn()) -> io::Result<()> {
        sock.set_nonblocking(true)?;
        let mut sock = mio::net::UdpSocket::from_std(sock);
        let mut poll = Poll::new()?;
        poll.registry().register(&mut sock, SOCKET, Interest::READABLE)?;
        let _ = self.waker.set(Arc::new(Waker::new(poll.registry(), WAKE)?));
        let mut events = Events::with_capacity(8);
        let mut buf = vec![0u8; 65_536];
        let mut more = false;
        let mut result = Ok(());
        while !shutdown.load(Ordering::Relaxed) {
            let now = Instant::now();
            // Datagrams left from the last pass: look again at once (the poll is
            // edge-triggered and would not say so).
            let sleep = if more {
                Duration::ZERO
            } else {
                self.read(|t| t.poll_timeout())
                    .map_or(Duration::ZERO, |t| t.saturating_duration_since(now))
                    .min(MAX_SLEEP)
            };
            if let Err(e) = poll.poll(&mut events, Some(sleep)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    result = Err(e);
                    break;
                }
            }
            // A bounded number per pass, so a flood never holds up hellos and expiry.
            more = false;
            for _ in 0..RECV_BUDGET {
                match sock.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        let out = self.update_quietly(|t| t.handle(&buf[..n], from, Instant::now()));
                        if out.changed {
                            on_change();
                            self.update_quietly(Table::applied);
                        }
                        more = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        more = false;
                        break;
                    }
                    Err(e) => {
                        // ICMP errors for earlier sends surface here; keep draining.
                        log::debug!("control: receive: {e}");
                        more = true;
                    }
                }
            }
            if self.update_quietly(|t| t.expire(Instant::now())) {
                on_change();
            }
            self.send_due(&sock);
        }
        self.update_quietly(|t| t.bye(Time::now()));
        self.send_due(&sock);
        result
    }

    /// [`Peers::update`] from the control thread itself: no kick needed.
    fn update_quietly<R>(&self, f: impl FnOnce(&mut Table) -> R) -> R {
        let r = f(&mut self.table.lock());
        self.moved.notify_all();
        r
    }

    fn send_due(&self, sock: &mio::net::UdpSocket) {
        loop {
            // The lock is released before sending.
            let next = self.table.lock().poll_transmit(Time::now());
            let Some(t) = next else { break };
            match sock.send_to(&t.payload, t.dst) {
                Ok(_) => self.counters.inc(ControlEvent::Tx),
                Err(e) => {
                    self.counters.inc(ControlEvent::SendErrors);
                    log::debug!("control: send to {}: {e}", t.dst);
                }
            }
        }
    }
}
