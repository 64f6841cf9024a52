//! Failed-login limiting per client: [`LIMIT`] failures within [`WINDOW_S`] block the
//! client for [`BLOCK_S`]; a successful login clears its record. A pure table: the
//! caller passes the time (unix seconds), so tests drive it.
//!
//! A client is its IPv4 address, or the /64 of its IPv6 address (one host commonly
//! holds a whole /64, so per-address buckets would not limit it). At most
//! [`MAX_CLIENTS`] clients are tracked; when full, a client with nothing recent is
//! forgotten first, then the one least recently failed.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};

/// Failures that block a client.
pub const LIMIT: usize = 20;
/// The window they are counted in.
pub const WINDOW_S: u64 = 60;
/// How long a blocked client stays blocked.
pub const BLOCK_S: u64 = 120;
/// Most clients tracked at once.
pub const MAX_CLIENTS: usize = 4096;

#[derive(Default)]
struct Bucket {
    /// Times of the failures within the window, oldest first (at most LIMIT).
    failures: VecDeque<u64>,
    blocked_until: u64,
    last: u64,
}

#[derive(Default)]
pub struct RateLimiter {
    clients: HashMap<IpAddr, Bucket>,
}

fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

impl RateLimiter {
    /// `Err(seconds to wait)` while `ip` is blocked.
    pub fn check(&self, ip: IpAddr, now: u64) -> Result<(), u64> {
        match self.clients.get(&client_key(ip)) {
            Some(b) if b.blocked_until > now => Err(b.blocked_until - now),
            _ => Ok(()),
        }
    }

    pub fn failure(&mut self, ip: IpAddr, now: u64) {
        let key = client_key(ip);
        if !self.clients.contains_key(&key) && self.clients.len() >= MAX_CLIENTS {
            self.evict(now);
        }
        let b = self.clients.entry(key).or_default();
        b.last = now;
        if b.blocked_until > now {
            return;
        }
        while b.failures.front().is_some_and(|t| now.saturating_sub(*t) >= WINDOW_S) {
            b.failures.pop_front();
        }
        b.failures.push_back(now);
        if b.failures.len() >= LIMIT {
            b.failures.clear();
            b.blocked_until = now + BLOCK_S;
        }
    }

    pub fn success(&mut self, ip: IpAddr) {
        self.clients.remove(&client_key(ip));
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    fn evict(&mut self, now: u64) {
        self.clients
            .retain(|_, b| b.blocked_until > now || b.failures.back().is_some_and(|t| now - t < WINDOW_S));
        if self.clients.len() >= MAX_CLIENTS {
            let oldest = self.clients.iter().min_by_key(|(_, b)| b.last).map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.clients.remove(&k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twenty_failures_block_for_two_minutes_then_clear() {
        let mut r = RateLimiter::default();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for i in 0..LIMIT as u64 {
            assert_eq!(r.check(ip, 1000 + i), Ok(()));
            r.failure(ip, 1000 + i);
        }
        assert_eq!(r.check(ip, 1020), Err(BLOCK_S - 1));
        assert_eq!(r.check("192.0.2.8".parse().unwrap(), 1020), Ok(()));
        assert!(r.check(ip, 1019 + BLOCK_S - 1).is_err());
        assert_eq!(r.check(ip, 1019 + BLOCK_S), Ok(()));
    }

    #[test]
    fn failures_spread_beyond_the_window_do_not_block() {
        let mut r = RateLimiter::default();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for i in 0..100u64 {
            r.failure(ip, i * 4);
            assert_eq!(r.check(ip, i * 4), Ok(()), "failure {i}");
        }
    }

    #[test]
    fn ipv6_clients_are_their_64_and_the_table_is_bounded() {
        let mut r = RateLimiter::default();
        for i in 0..LIMIT as u128 {
            r.failure(IpAddr::V6(Ipv6Addr::from((0x2001_0db8u128 << 96) | i)), 5);
        }
        assert!(r.check("2001:db8::ffff".parse().unwrap(), 6).is_err());
        for i in 0..(MAX_CLIENTS as u32 + 100) {
            r.failure(IpAddr::V4(i.into()), 10);
        }
        assert!(r.len() <= MAX_CLIENTS);
    }
}
