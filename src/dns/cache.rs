//! Upstream answers kept for their TTL, and the hostnames they taught.
//!
//! [`Cache`] holds whole answers, keyed by question (and by whether the client spoke
//! EDNS, since an answer with an OPT record must not go to one that did not). A hit
//! is served by copying the stored answer and patching it in place — the client's
//! id and the case of its question, each TTL lowered by the time it has been held —
//! so it allocates nothing. Only answers with a known lifetime are kept: positive
//! ones for their smallest TTL, negative ones for their SOA's (RFC 2308), at most
//! `max_ttl`. When full, expired entries go first, then those closest to expiry.
//!
//! [`Learned`] is what the API shows as the DNS cache: each hostname asked for, with
//! the addresses its last positive answer gave (through any CNAMEs) and when.

use super::msg::{self, walk, HEADER, RTYPE_A, RTYPE_AAAA, RTYPE_OPT, RTYPE_SOA};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

/// Key: flags, type, class, then the name.
const KEY_LEN: usize = 5 + super::zone::MAX_NAME;

/// What of a query, besides its question, decides which answers suit it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags {
    /// It spoke EDNS (the answer carries an OPT record).
    pub edns: bool,
    /// DNSSEC OK: signatures wanted.
    pub dnssec_ok: bool,
    /// Checking disabled: data that failed validation is wanted too.
    pub checking_disabled: bool,
}

/// A cache key, built on the stack: the question and the [`Flags`].
#[derive(Clone)]
pub struct Key {
    buf: [u8; KEY_LEN],
    len: usize,
}

impl Key {
    /// The key of a question: `name` in lower-case wire form.
    pub fn new(flags: Flags, qtype: u16, qclass: u16, name: &[u8]) -> Option<Key> {
        let mut buf = [0u8; KEY_LEN];
        let len = 5 + name.len();
        if len > KEY_LEN {
            return None;
        }
        buf[0] = u8::from(flags.edns) | u8::from(flags.dnssec_ok) << 1 | u8::from(flags.checking_disabled) << 2;
        buf[1..3].copy_from_slice(&qtype.to_be_bytes());
        buf[3..5].copy_from_slice(&qclass.to_be_bytes());
        buf[5..len].copy_from_slice(name);
        Some(Key { buf, len })
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The question's name in lower-case wire form.
    pub fn name(&self) -> &[u8] {
        &self.buf[5..self.len]
    }

    pub fn qtype(&self) -> u16 {
        u16::from_be_bytes([self.buf[1], self.buf[2]])
    }

    pub fn edns(&self) -> bool {
        self.buf[0] & 1 != 0
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({:?})", self.as_slice())
    }
}

struct Cached {
    /// The answer without its OPT record (which belonged to the first client's
    /// exchange: cookies, padding); a bare one is added for EDNS clients.
    reply: Vec<u8>,
    /// Offsets of the TTL fields to lower when served.
    ttls: Vec<u16>,
    question_end: usize,
    stored: Instant,
    expires: Instant,
    /// Which insertion this is, to tell it from a later one under the same key in
    /// the eviction queue.
    stamp: u64,
}

/// Upstream answers by question, bounded in entries and in bytes.
pub struct Cache {
    map: HashMap<Box<[u8]>, Cached>,
    /// Keys in insertion order: the oldest go first when room is needed.
    order: VecDeque<(u64, Box<[u8]>)>,
    capacity: usize,
    max_bytes: usize,
    bytes: usize,
    stamp: u64,
    max_ttl: u32,
    scratch: Vec<u8>,
}

impl Cache {
    /// At most `capacity` answers in `capacity` KiB.
    pub fn new(capacity: usize, max_ttl: u32) -> Cache {
        Cache {
            map: HashMap::with_capacity(capacity.min(65_536)),
            order: VecDeque::new(),
            capacity,
            max_bytes: capacity.saturating_mul(1024),
            bytes: 0,
            stamp: 0,
            max_ttl,
            scratch: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Keeps `reply` (an upstream answer to the question `key`) if its lifetime is
    /// known; returns whether it was kept.
    pub fn insert(&mut self, key: &Key, reply: &[u8], now: Instant) -> bool {
        if self.capacity == 0 || reply.len() < HEADER || reply.len() > self.max_bytes {
            return false;
        }
        let rcode = reply[3] & 0x0f;
        let truncated = reply[2] & 0x02 != 0;
        if truncated || (rcode != 0 && rcode != 3) {
            return false;
        }
        let mut stripped = std::mem::take(&mut self.scratch);
        let kept = msg::without_opt(reply, &mut stripped) && self.keep(key, &stripped, now);
        self.scratch = stripped;
        kept
    }

    fn keep(&mut self, key: &Key, reply: &[u8], now: Instant) -> bool {
        let (mut answers, mut min_ttl, mut negative) = (0usize, u32::MAX, None::<u32>);
        let mut ttls = Vec::new();
        let Some(question_end) = walk(reply, |rr| {
            if rr.rtype == RTYPE_OPT {
                return;
            }
            ttls.push(rr.ttl_at as u16);
            // A TTL with the top bit set is to be read as 0 (RFC 2181 §8).
            let ttl = if rr.ttl > 0x7fff_ffff { 0 } else { rr.ttl };
            if rr.section == 1 {
                answers += 1;
                min_ttl = min_ttl.min(ttl);
            }
            if rr.section == 2 && rr.rtype == RTYPE_SOA && rr.rdata.len() >= 4 {
                let m = &rr.rdata[rr.rdata.len() - 4..];
                let minimum = u32::from_be_bytes([m[0], m[1], m[2], m[3]]);
                negative = Some(ttl.min(minimum));
            }
        }) else {
            return false;
        };
        let rcode = reply[3] & 0x0f;
        let ttl = match (rcode, answers) {
            (0, n) if n > 0 => min_ttl,
            _ => match negative {
                Some(t) => t,
                None => return false,
            },
        }
        .min(self.max_ttl);
        if ttl == 0 {
            return false;
        }
        if let Some(old) = self.map.remove(key.as_slice()) {
            self.bytes -= old.reply.len();
        }
        while !self.map.is_empty() && (self.map.len() >= self.capacity || self.bytes + reply.len() > self.max_bytes) {
            self.evict_oldest();
        }
        self.stamp += 1;
        self.bytes += reply.len();
        self.order.push_back((self.stamp, key.as_slice().into()));
        self.map.insert(
            key.as_slice().into(),
            Cached {
                reply: reply.to_vec(),
                ttls,
                question_end,
                stored: now,
                expires: now + Duration::from_secs(u64::from(ttl)),
                stamp: self.stamp,
            },
        );
        true
    }

    fn evict_oldest(&mut self) {
        while let Some((stamp, k)) = self.order.pop_front() {
            // Entries replaced or expired since leave stale marks behind: skipped.
            if self.map.get(&k).is_some_and(|c| c.stamp == stamp) {
                if let Some(c) = self.map.remove(&k) {
                    self.bytes -= c.reply.len();
                }
                return;
            }
        }
    }

    /// Answers `query` (the client's own bytes) from the cache into `out`, if the
    /// question `key` has a live entry; an EDNS client's answer offers `advertise`.
    pub fn serve(&mut self, key: &Key, query: &[u8], advertise: u16, now: Instant, out: &mut Vec<u8>) -> bool {
        let Some(c) = self.map.get(key.as_slice()) else {
            return false;
        };
        if c.expires <= now {
            if let Some(c) = self.map.remove(key.as_slice()) {
                self.bytes -= c.reply.len();
            }
            return false;
        }
        if query.len() < HEADER {
            return false;
        }
        out.clear();
        out.extend_from_slice(&c.reply);
        out[..2].copy_from_slice(&query[..2]);
        // The client's question as it asked it (resolvers that vary the case of
        // names, as a defence against spoofing, check it comes back unchanged).
        if msg::question_end(query) == Some(c.question_end) {
            out[HEADER..c.question_end].copy_from_slice(&query[HEADER..c.question_end]);
        }
        // Recursion desired and checking disabled are the client's to set.
        out[2] = (out[2] & !0x01) | (query[2] & 0x01);
        out[3] = (out[3] & !0x10) | (query[3] & 0x10);
        let held = now.duration_since(c.stored).as_secs().min(u64::from(u32::MAX)) as u32;
        for &at in &c.ttls {
            let at = usize::from(at);
            let t = u32::from_be_bytes([out[at], out[at + 1], out[at + 2], out[at + 3]]);
            out[at..at + 4].copy_from_slice(&t.saturating_sub(held).to_be_bytes());
        }
        if key.edns() {
            msg::push_opt(out, advertise);
        }
        true
    }
}

/// What the API shows of one hostname.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnedEntry {
    pub ips: Vec<IpAddr>,
    /// Unix seconds of the last answer.
    pub last_seen: u64,
}

/// Hostnames and the addresses upstream answers gave them, bounded.
pub struct Learned {
    /// By name in lower-case wire form.
    map: HashMap<Box<[u8]>, LearnedEntry>,
    capacity: usize,
}

impl Learned {
    pub fn new(capacity: usize) -> Learned {
        Learned {
            map: HashMap::new(),
            capacity,
        }
    }

    /// Notes the addresses of a positive answer `reply` to a question for `name`
    /// (lower-case wire form). An answer without addresses teaches nothing.
    pub fn learn(&mut self, name: &[u8], reply: &[u8], unix_secs: u64) {
        if self.capacity == 0 || reply.len() < HEADER || reply[3] & 0x0f != 0 {
            return;
        }
        let mut ips = [None::<IpAddr>; 16];
        let mut n = 0;
        walk(reply, |rr| {
            let ip = match (rr.section, rr.rtype, rr.rdata.len()) {
                (1, RTYPE_A, 4) => IpAddr::V4(Ipv4Addr::new(rr.rdata[0], rr.rdata[1], rr.rdata[2], rr.rdata[3])),
                (1, RTYPE_AAAA, 16) => {
                    let mut b = [0u8; 16];
                    b.copy_from_slice(rr.rdata);
                    IpAddr::V6(Ipv6Addr::from(b))
                }
                _ => return,
            };
            if n < ips.len() && !ips[..n].contains(&Some(ip)) {
                ips[n] = Some(ip);
                n += 1;
            }
        });
        if n == 0 {
            return;
        }
        let fresh = ips[..n].iter().flatten();
        if let Some(e) = self.map.get_mut(name) {
            e.ips.clear();
            e.ips.extend(fresh);
            e.last_seen = unix_secs;
            return;
        }
        if self.map.len() >= self.capacity {
            if let Some(k) = self.map.iter().min_by_key(|(_, e)| e.last_seen).map(|(k, _)| k.clone()) {
                self.map.remove(&k);
            }
        }
        self.map.insert(
            name.into(),
            LearnedEntry {
                ips: fresh.copied().collect(),
                last_seen: unix_secs,
            },
        );
    }

    /// Every hostname (as text, without the final dot) with what it was last seen as.
    pub fn entries(&self) -> Vec<(String, LearnedEntry)> {
        let mut v: Vec<(String, LearnedEntry)> = self.map.iter().map(|(k, e)| (hostname(k), e.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// A wire name as text, without the final dot; bytes that are not letters, digits,
/// `-` or `_` are escaped as `\DDD` (RFC 1035's presentation form).
fn hostname(wire: &[u8]) -> String {
    let mut s = String::new();
    for (_, label) in msg::labels(wire) {
        if !s.is_empty() {
            s.push('.');
        }
        for &b in label {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                s.push(char::from(b));
            } else {
                s.push_str(&format!("\\{b:03}"));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::msg::question_end;
    use domain::base::iana::{Class, Rcode, Rtype};
    use domain::base::message_builder::MessageBuilder;
    use domain::base::name::Name;
    use domain::base::record::Ttl;
    use domain::base::Serial;
    use domain::rdata::{Cname, Soa, A};
    use std::str::FromStr;

    fn name(s: &str) -> Name<Vec<u8>> {
        Name::from_str(s).unwrap()
    }

    fn key_of(s: &str) -> Vec<u8> {
        let mut b = [0u8; 255];
        super::super::zone::wire_key(&name(s), &mut b).unwrap().to_vec()
    }

    /// An upstream answer: `www.example.com` → CNAME → two addresses, TTLs 300/60.
    fn answer(id: u16, qname: &str) -> Vec<u8> {
        let mut b = MessageBuilder::new_vec();
        b.header_mut().set_id(id);
        b.header_mut().set_qr(true);
        let mut q = b.question();
        q.push((name(qname), Rtype::A)).unwrap();
        let mut a = q.answer();
        let target = name("edge.example.net");
        a.push((name(qname), Class::IN, Ttl::from_secs(300), Cname::new(target.clone())))
            .unwrap();
        a.push((
            target.clone(),
            Class::IN,
            Ttl::from_secs(60),
            A::new("203.0.113.20".parse().unwrap()),
        ))
        .unwrap();
        a.push((
            target,
            Class::IN,
            Ttl::from_secs(60),
            A::new("203.0.113.21".parse().unwrap()),
        ))
        .unwrap();
        a.finish()
    }

    fn nxdomain(qname: &str, soa_ttl: u32, minimum: u32) -> Vec<u8> {
        let mut b = MessageBuilder::new_vec();
        b.header_mut().set_qr(true);
        b.header_mut().set_rcode(Rcode::NXDOMAIN);
        let mut q = b.question();
        q.push((name(qname), Rtype::A)).unwrap();
        let mut auth = q.answer().authority();
        let z = name("example.com");
        let soa = Soa::new(
            z.clone(),
            z.clone(),
            Serial(1),
            Ttl::HOUR,
            Ttl::HOUR,
            Ttl::DAY,
            Ttl::from_secs(minimum),
        );
        auth.push((z, Class::IN, Ttl::from_secs(soa_ttl), soa)).unwrap();
        auth.finish()
    }

    fn ttls(reply: &[u8]) -> Vec<u32> {
        let mut v = Vec::new();
        walk(reply, |rr| v.push(rr.ttl)).unwrap();
        v
    }

    #[test]
    fn answers_are_served_with_the_clients_id_and_case_and_aged_ttls() {
        let mut c = Cache::new(8, 3600);
        let t0 = Instant::now();
        let k = Key::new(Flags::default(), 1, 1, &key_of("www.example.com")).unwrap();
        assert!(c.insert(&k, &answer(7, "www.example.com"), t0));
        let query = answer(0x4242, "WwW.ExAmPlE.cOm");
        let mut out = Vec::new();
        assert!(c.serve(
            &k,
            &query[..question_end(&query).unwrap()],
            1232,
            t0 + Duration::from_secs(10),
            &mut out
        ));
        assert_eq!(&out[..2], &[0x42, 0x42]);
        assert_eq!(
            &out[12..question_end(&out).unwrap()],
            &query[12..question_end(&query).unwrap()]
        );
        assert_eq!(ttls(&out), [290, 50, 50]);
        // Expired after the smallest TTL.
        assert!(!c.serve(&k, &query, 1232, t0 + Duration::from_secs(60), &mut out));
        assert!(c.is_empty());
    }

    #[test]
    fn negative_answers_live_by_their_soa_and_others_are_not_kept() {
        let mut c = Cache::new(8, 3600);
        let t0 = Instant::now();
        let k = Key::new(Flags::default(), 1, 1, &key_of("nope.example.com")).unwrap();
        assert!(c.insert(&k, &nxdomain("nope.example.com", 900, 30), t0));
        let q = answer(1, "nope.example.com");
        let mut out = Vec::new();
        assert!(c.serve(&k, &q, 1232, t0 + Duration::from_secs(29), &mut out));
        assert!(!c.serve(&k, &q, 1232, t0 + Duration::from_secs(30), &mut out));
        let mut servfail = answer(1, "x.example.com");
        servfail[3] = 2;
        assert!(!c.insert(&k, &servfail, t0));
        let mut tc = answer(1, "x.example.com");
        tc[2] |= 2;
        assert!(!c.insert(&k, &tc, t0));
        assert!(!c.insert(&k, &[0u8; 40], t0), "garbage");
    }

    #[test]
    fn a_full_cache_makes_room() {
        let mut c = Cache::new(2, 3600);
        let t0 = Instant::now();
        for (i, n) in ["a.example.com", "b.example.com", "c.example.com"].iter().enumerate() {
            let k = Key::new(Flags::default(), 1, 1, &key_of(n)).unwrap();
            assert!(c.insert(&k, &answer(1, n), t0 + Duration::from_secs(i as u64)));
        }
        assert_eq!(c.len(), 2);
        let k = Key::new(Flags::default(), 1, 1, &key_of("a.example.com")).unwrap();
        assert!(
            !c.serve(&k, &answer(1, "a.example.com"), 1232, t0, &mut Vec::new()),
            "the soonest to expire went"
        );
    }

    #[test]
    fn hostnames_learn_the_addresses_behind_their_cnames() {
        let mut l = Learned::new(2);
        l.learn(&key_of("www.example.com"), &answer(1, "www.example.com"), 1_760_000_000);
        l.learn(
            &key_of("nope.example.com"),
            &nxdomain("nope.example.com", 1, 1),
            1_760_000_001,
        );
        let e = l.entries();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].0, "www.example.com");
        assert_eq!(
            e[0].1.ips,
            [
                "203.0.113.20".parse::<IpAddr>().unwrap(),
                "203.0.113.21".parse().unwrap()
            ]
        );
        assert_eq!(e[0].1.last_seen, 1_760_000_000);
        l.learn(&key_of("b.example.com"), &answer(1, "b.example.com"), 1_760_000_002);
        l.learn(&key_of("c.example.com"), &answer(1, "c.example.com"), 1_760_000_003);
        let names: Vec<String> = l.entries().into_iter().map(|e| e.0).collect();
        assert_eq!(
            names,
            ["b.example.com", "c.example.com"],
            "the least recently seen went"
        );
        assert_eq!(hostname(b"\x03a\x00b\x03com\x00"), "a\\000b.com");
    }
}
