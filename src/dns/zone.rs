//! The published view of the names tunloom answers for: built by the model from its
//! records after every change to them, read by the service thread per query without
//! a lock. Lookups take a name in lower-case wire form (see [`wire_key`]), so a query
//! is looked up without building a string.

use super::msg::labels;
use domain::base::name::{Name, ToLabelIter};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// The longest domain name in wire form.
pub const MAX_NAME: usize = 255;

/// A name record as the model keeps it: `fqdn` (absolute, lower case) at `ip`.
pub trait Entry {
    fn fqdn(&self) -> &str;
    fn ip(&self) -> IpAddr;
}

/// The names of the domain and their addresses, immutable once built.
#[derive(Debug)]
pub struct Zone {
    /// The domain in lower-case wire form.
    domain: Vec<u8>,
    domain_name: Name<Vec<u8>>,
    /// Responsible-person mailbox for the SOA of negative answers.
    hostmaster: Name<Vec<u8>>,
    ttl: u32,
    /// Lower-case wire name → its addresses, in the model's record order.
    forward: HashMap<Box<[u8]>, Vec<IpAddr>>,
    /// Names between a record's and the domain that have no records themselves
    /// (`b.weave.local.` of `a.b.weave.local.`): they exist, so NODATA, not
    /// NXDOMAIN (RFC 8020).
    between: HashSet<Box<[u8]>>,
    /// Address → the names registered for it.
    reverse: HashMap<IpAddr, Vec<Name<Vec<u8>>>>,
    records: usize,
    serial: u32,
}

/// What the zone knows of a name.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// A name of the domain with these addresses (empty for the domain itself).
    Found(&'a [IpAddr]),
    /// A reverse name of a registered address.
    Reverse(&'a [Name<Vec<u8>>]),
    /// In the domain, but no such name.
    NoName,
    /// Not ours: forwarded.
    Elsewhere,
}

impl Zone {
    /// `domain` is absolute and lower case (as configuration validation leaves it).
    /// Only records of names in the domain are answered: a name registered outside
    /// it (`github.com.`) must not take that name over for every workload; it stays
    /// stored, as Weave keeps it, and unanswered. `serial` changes whenever the
    /// records do.
    pub fn build<'a, E: Entry + 'a>(
        domain: &str,
        ttl: u32,
        serial: u32,
        records: impl IntoIterator<Item = &'a E>,
    ) -> Zone {
        let domain_name = Name::<Vec<u8>>::from_str(domain).unwrap_or_else(|_| Name::root_vec());
        let hostmaster =
            Name::<Vec<u8>>::from_str(&format!("hostmaster.{domain}")).unwrap_or_else(|_| domain_name.clone());
        let mut zone = Zone {
            domain: lower_wire(&domain_name),
            domain_name,
            hostmaster,
            ttl,
            forward: HashMap::new(),
            between: HashSet::new(),
            reverse: HashMap::new(),
            records: 0,
            serial,
        };
        for r in records {
            let Ok(name) = Name::<Vec<u8>>::from_str(r.fqdn()) else {
                continue;
            };
            let key = lower_wire(&name);
            if key == zone.domain || !within(&key, &zone.domain) {
                continue;
            }
            for (at, _) in labels(&key).skip(1) {
                if key[at..] == zone.domain[..] {
                    break;
                }
                zone.between.insert(key[at..].into());
            }
            let ips = zone.forward.entry(key.into_boxed_slice()).or_default();
            if ips.contains(&r.ip()) {
                continue;
            }
            ips.push(r.ip());
            zone.reverse.entry(r.ip()).or_default().push(name);
            zone.records += 1;
        }
        zone
    }

    /// An empty zone for `domain`.
    pub fn empty(domain: &str, ttl: u32) -> Zone {
        Zone::build::<NoEntry>(domain, ttl, 0, [])
    }

    /// What the zone says of `key`, a name in lower-case wire form.
    pub fn lookup(&self, key: &[u8]) -> Lookup<'_> {
        if let Some(ips) = self.forward.get(key) {
            return Lookup::Found(ips);
        }
        if key == self.domain.as_slice() || self.between.contains(key) {
            return Lookup::Found(&[]);
        }
        if let Some(names) = reverse_addr(key).and_then(|a| self.reverse.get(&a)) {
            return Lookup::Reverse(names);
        }
        if within(key, &self.domain) {
            Lookup::NoName
        } else {
            Lookup::Elsewhere
        }
    }

    /// Whether `key` is the domain itself.
    pub fn is_apex(&self, key: &[u8]) -> bool {
        key == self.domain.as_slice()
    }

    pub fn domain(&self) -> &Name<Vec<u8>> {
        &self.domain_name
    }

    pub fn hostmaster(&self) -> &Name<Vec<u8>> {
        &self.hostmaster
    }

    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// How many (name, address) records the zone answers.
    pub fn records(&self) -> usize {
        self.records
    }
}

/// Never instantiated: the record type of an empty zone.
enum NoEntry {}

impl Entry for NoEntry {
    fn fqdn(&self) -> &str {
        match *self {}
    }
    fn ip(&self) -> IpAddr {
        match *self {}
    }
}

/// `name` in lower-case wire form, written into `buf`; `None` only if it does not
/// fit (a parsed name always does).
pub fn wire_key<'b, N: ToLabelIter + ?Sized>(name: &N, buf: &'b mut [u8; MAX_NAME]) -> Option<&'b [u8]> {
    let mut n = 0;
    for label in name.iter_labels() {
        let l = label.as_slice();
        let end = n + 1 + l.len();
        if end > buf.len() {
            return None;
        }
        buf[n] = l.len() as u8;
        for (d, s) in buf[n + 1..end].iter_mut().zip(l) {
            *d = s.to_ascii_lowercase();
        }
        n = end;
    }
    Some(&buf[..n])
}

fn lower_wire(name: &Name<Vec<u8>>) -> Vec<u8> {
    let mut buf = [0u8; MAX_NAME];
    wire_key(name, &mut buf).map(<[u8]>::to_vec).unwrap_or_default()
}

/// Whether wire name `key` is `domain` or below it.
fn within(key: &[u8], domain: &[u8]) -> bool {
    key == domain || labels(key).any(|(at, _)| &key[at..] == domain)
}

/// The address a reverse name (`4.3.2.1.in-addr.arpa.`, `…ip6.arpa.`) stands for.
pub fn reverse_addr(key: &[u8]) -> Option<IpAddr> {
    let mut parts = [&[][..]; 34];
    let mut n = 0;
    for (_, l) in labels(key) {
        *parts.get_mut(n)? = l;
        n += 1;
    }
    match &parts[..n] {
        [d, c, b, a, in_addr, arpa] if *in_addr == b"in-addr" && *arpa == b"arpa" => {
            let octet = |s: &[u8]| {
                let ok = !s.is_empty() && s.len() <= 3 && (s.len() == 1 || s[0] != b'0');
                ok.then(|| std::str::from_utf8(s).ok()?.parse::<u8>().ok()).flatten()
            };
            Some(IpAddr::V4(Ipv4Addr::new(octet(a)?, octet(b)?, octet(c)?, octet(d)?)))
        }
        [nibbles @ .., ip6, arpa] if nibbles.len() == 32 && *ip6 == b"ip6" && *arpa == b"arpa" => {
            let mut v = 0u128;
            for (i, l) in nibbles.iter().enumerate() {
                let [c] = l else { return None };
                let d = (*c as char).to_digit(16)?;
                v |= u128::from(d) << (4 * i);
            }
            Some(IpAddr::V6(Ipv6Addr::from(v)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct R(&'static str, &'static str);
    impl Entry for R {
        fn fqdn(&self) -> &str {
            self.0
        }
        fn ip(&self) -> IpAddr {
            self.1.parse().unwrap()
        }
    }

    fn key(s: &str) -> Vec<u8> {
        let mut buf = [0u8; MAX_NAME];
        wire_key(&Name::<Vec<u8>>::from_str(s).unwrap(), &mut buf)
            .unwrap()
            .to_vec()
    }

    #[test]
    fn names_addresses_and_reverse_names_are_found_case_blind() {
        let recs = [
            R("web.weave.local.", "198.19.1.5"),
            R("web.weave.local.", "198.19.1.6"),
            R("web.weave.local.", "198.19.1.5"),
            R("db.weave.local.", "fd00::1"),
            R("github.com.", "198.19.1.9"),
            R("a.b.weave.local.", "198.19.1.10"),
        ];
        let z = Zone::build("weave.local.", 1, 7, &recs);
        assert_eq!(z.records(), 4);
        assert_eq!(
            z.lookup(&key("b.weave.local.")),
            Lookup::Found(&[]),
            "an empty non-terminal exists"
        );
        let ips: Vec<IpAddr> = ["198.19.1.5", "198.19.1.6"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(z.lookup(&key("WEB.Weave.LOCAL.")), Lookup::Found(&ips));
        assert_eq!(z.lookup(&key("weave.local.")), Lookup::Found(&[]));
        assert_eq!(z.lookup(&key("nope.weave.local.")), Lookup::NoName);
        assert_eq!(z.lookup(&key("a.b.nope.weave.local.")), Lookup::NoName);
        assert_eq!(
            z.lookup(&key("github.com.")),
            Lookup::Elsewhere,
            "outside the domain: never ours"
        );
        assert_eq!(z.lookup(&key("example.com.")), Lookup::Elsewhere);
        assert_eq!(z.lookup(&key("xweave.local.")), Lookup::Elsewhere);
        match z.lookup(&key("5.1.19.198.in-addr.arpa.")) {
            Lookup::Reverse(n) => assert_eq!(n[0].to_string(), "web.weave.local"),
            other => panic!("{other:?}"),
        }
        let v6 = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.";
        assert!(matches!(z.lookup(&key(v6)), Lookup::Reverse(_)));
        assert_eq!(z.lookup(&key("9.1.19.198.in-addr.arpa.")), Lookup::Elsewhere);
    }

    #[test]
    fn reverse_names_parse_strictly() {
        assert_eq!(
            reverse_addr(&key("4.3.2.1.in-addr.arpa.")),
            Some("1.2.3.4".parse().unwrap())
        );
        for bad in [
            "04.3.2.1.in-addr.arpa.",
            "256.3.2.1.in-addr.arpa.",
            "3.2.1.in-addr.arpa.",
            "a.3.2.1.in-addr.arpa.",
        ] {
            assert_eq!(reverse_addr(&key(bad)), None, "{bad}");
        }
        assert_eq!(reverse_addr(&key("x.ip6.arpa.")), None);
    }
}
