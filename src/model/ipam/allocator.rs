//! The address allocator: the allocation range, the blocks of it this node owns, and
//! the addresses allocated to containers, keyed by container id.
//!
//! The range (IPv4, Weave's default 10.32.0.0/12) is carved into blocks owned by nodes;
//! a node allocates only from its own blocks. Allocation is by container id and
//! subnet: the same id gets the same address back in a subnet, a subnet's network,
//! gateway (first usable) and broadcast addresses are never handed out, and a claim
//! for a specific address says why it cannot have it.
//!
//! Storage is dense so a fully allocated /12 stays small and fast: a bitmap of free
//! addresses with a summary of non-empty words (finding a free address scans at most a
//! few hundred words), an owner table of one `u32` per address, container slots, and a
//! hash table of slot numbers so each container id is stored once.

use crate::names::valid_container_id;
use hashbrown::{DefaultHashBuilder, HashTable};
use ipnet::Ipv4Net;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::Ipv4Addr;

/// Why an IPAM operation could not be done; the text is what API clients read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("{0} is outside the allocation range {1}")]
    OutsideRange(String, Ipv4Net),
    #[error("{0} is the {1} address of {2} and is never handed out")]
    Reserved(Ipv4Addr, &'static str, Ipv4Net),
    #[error("{0} is already allocated to container {1}")]
    Taken(Ipv4Addr, String),
    #[error("{0} is not in address space this node owns ({1})")]
    NotOwned(Ipv4Addr, String),
    #[error("no free address left in {0} on this node")]
    Full(Ipv4Net),
    #[error("subnet {0} is too small to allocate from (at most /30)")]
    TooSmall(Ipv4Net),
    #[error("{}", crate::names::CONTAINER_ID_RULE)]
    BadId,
}

/// One allocated address: offset in the range and the prefix length of its subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Alloc {
    offset: u32,
    prefix: u8,
}

/// A container's addresses; almost always exactly one.
#[derive(Debug, Clone)]
enum Addrs {
    One(Alloc),
    Many(Vec<Alloc>),
}

impl Addrs {
    fn as_slice(&self) -> &[Alloc] {
        match self {
            Addrs::One(a) => std::slice::from_ref(a),
            Addrs::Many(v) => v,
        }
    }

    fn push(&mut self, a: Alloc) {
        match self {
            Addrs::One(first) => *self = Addrs::Many(vec![*first, a]),
            Addrs::Many(v) => v.push(a),
        }
    }
}

#[derive(Debug)]
struct Slot {
    id: Box<str>,
    addrs: Addrs,
}

/// A bitmap of free addresses with a summary bit per word ("this word has a free bit").
#[derive(Clone)]
struct Bitmap {
    words: Vec<u64>,
    summary: Vec<u64>,
}

impl Bitmap {
    fn new(bits: usize) -> Bitmap {
        let words = bits.div_ceil(64);
        Bitmap {
            words: vec![0; words],
            summary: vec![0; words.div_ceil(64)],
        }
    }

    fn get(&self, i: u32) -> bool {
        self.words[(i / 64) as usize] >> (i % 64) & 1 != 0
    }

    fn set(&mut self, i: u32) {
        let w = (i / 64) as usize;
        self.words[w] |= 1 << (i % 64);
        self.summary[w / 64] |= 1 << (w % 64);
    }

    fn clear(&mut self, i: u32) {
        let w = (i / 64) as usize;
        self.words[w] &= !(1 << (i % 64));
        if self.words[w] == 0 {
            self.summary[w / 64] &= !(1 << (w % 64));
        }
    }

    /// The first set bit in `lo..=hi`.
    fn first_in(&self, lo: u32, hi: u32) -> Option<u32> {
        if lo > hi {
            return None;
        }
        let (wlo, whi) = ((lo / 64) as usize, (hi / 64) as usize);
        let mask_from = |bit: u32| u64::MAX << bit;
        let mask_to = |bit: u32| u64::MAX >> (63 - bit);
        let first = self.words[wlo] & mask_from(lo % 64) & if wlo == whi { mask_to(hi % 64) } else { u64::MAX };
        if first != 0 {
            return Some(wlo as u32 * 64 + first.trailing_zeros());
        }
        if wlo == whi {
            return None;
        }
        // Words strictly between, found through the summary.
        let mut w = wlo + 1;
        while w < whi {
            let sw = self.summary[w / 64] >> (w % 64);
            if sw == 0 {
                w = (w / 64 + 1) * 64;
                continue;
            }
            w += sw.trailing_zeros() as usize;
            if w >= whi {
                break;
            }
            return Some(w as u32 * 64 + self.words[w].trailing_zeros());
        }
        let last = self.words[whi] & mask_to(hi % 64);
        (last != 0).then(|| whi as u32 * 64 + last.trailing_zeros())
    }
}

/// Counts for status pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpamCounts {
    pub range_num_ips: u64,
    pub owned_num_ips: u64,
    pub allocated: u64,
    pub containers: u64,
}

/// The allocator.
pub struct Ipam {
    range: Ipv4Net,
    base: u32,
    size: u32,
    owned: Vec<Ipv4Net>,
    free: Bitmap,
    owner: Vec<u32>,
    slots: Vec<Option<Slot>>,
    free_slots: Vec<u32>,
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    cursors: HashMap<Ipv4Net, u32>,
    allocated: u64,
}

/// The gateway address of `subnet`: its first usable address.
pub fn gateway(subnet: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// The addresses of `subnet` that are never handed out, with their names.
fn reserved(subnet: &Ipv4Net) -> [(u32, &'static str); 3] {
    [
        (u32::from(subnet.network()), "network"),
        (u32::from(gateway(subnet)), "gateway"),
        (u32::from(subnet.broadcast()), "broadcast"),
    ]
}

impl Ipam {
    /// An allocator over `range` (a /8 to a /30), owning `owned` (blocks inside it).
    pub fn new(range: Ipv4Net, owned: &[Ipv4Net]) -> Result<Ipam, IpamError> {
        let range = range.trunc();
        if !(8..=30).contains(&range.prefix_len()) {
            return Err(IpamError::TooSmall(range));
        }
        let size = 1u32 << (32 - range.prefix_len());
        let mut ipam = Ipam {
            range,
            base: u32::from(range.network()),
            size,
            owned: Vec::new(),
            free: Bitmap::new(size as usize),
            owner: vec![0; size as usize],
            slots: Vec::new(),
            free_slots: Vec::new(),
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            cursors: HashMap::new(),
            allocated: 0,
        };
        for b in owned {
            ipam.add_owned(*b)?;
        }
        Ok(ipam)
    }

    pub fn range(&self) -> Ipv4Net {
        self.range
    }

    pub fn owned(&self) -> &[Ipv4Net] {
        &self.owned
    }

    /// Makes `block` this node's to allocate from.
    pub fn add_owned(&mut self, block: Ipv4Net) -> Result<(), IpamError> {
        let block = block.trunc();
        if !self.range.contains(&block) {
            return Err(IpamError::OutsideRange(block.to_string(), self.range));
        }
        if self.owned.iter().any(|o| o.contains(&block)) {
            return Ok(());
        }
        self.owned.retain(|o| !block.contains(o));
        self.owned.push(block);
        self.owned.sort();
        let start = u32::from(block.network()) - self.base;
        let end = u32::from(block.broadcast()) - self.base;
        for off in start..=end {
            if self.owner[off as usize] == 0 {
                self.free.set(off);
            }
        }
        Ok(())
    }

    /// Stops allocating from `block` (an owned block, or part of one): its free
    /// addresses are no longer handed out; addresses allocated in it stay held.
    /// Returns whether anything was owned there.
    pub fn remove_owned(&mut self, block: Ipv4Net) -> bool {
        let block = block.trunc();
        let old = std::mem::take(&mut self.owned);
        let mut kept = Vec::new();
        for o in &old {
            if block.contains(o) {
                continue;
            }
            if !o.contains(&block) {
                kept.push(*o);
                continue;
            }
            // `o` holds `block`: keep the halves of `o`, down to `block`'s size, that
            // do not hold it.
            let mut cur = *o;
            while cur.prefix_len() < block.prefix_len() {
                let Ok(mut halves) = cur.subnets(cur.prefix_len() + 1) else {
                    break;
                };
                let (Some(a), Some(b)) = (halves.next(), halves.next()) else {
                    break;
                };
                let (keep, next) = if a.contains(&block) { (b, a) } else { (a, b) };
                kept.push(keep);
                cur = next;
            }
        }
        kept.sort();
        let changed = kept != old;
        self.owned = kept;
        if self.range.contains(&block) {
            let start = u32::from(block.network()) - self.base;
            let end = u32::from(block.broadcast()) - self.base;
            for off in start..=end {
                if self.free.get(off) {
                    self.free.clear(off);
                }
            }
        }
        changed
    }

    fn owns(&self, a: Ipv4Addr) -> bool {
        self.owned.iter().any(|o| o.contains(&a))
    }

    fn hash(&self, id: &str) -> u64 {
        self.hasher.hash_one(id)
    }

    fn slot_of(&self, id: &str) -> Option<u32> {
        let h = self.hash(id);
        self.index
            .find(h, |s| {
                self.slots[*s as usize].as_ref().is_some_and(|slot| &*slot.id == id)
            })
            .copied()
    }

    fn new_slot(&mut self, id: &str, a: Alloc) -> u32 {
        let slot = Slot {
            id: id.into(),
            addrs: Addrs::One(a),
        };
        let s = match self.free_slots.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(slot);
                s
            }
            None => {
                self.slots.push(Some(slot));
                (self.slots.len() - 1) as u32
            }
        };
        let h = self.hash(id);
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index.insert_unique(h, s, |x| {
            hasher.hash_one(slots[*x as usize].as_ref().map_or("", |slot| &*slot.id))
        });
        s
    }

    fn take(&mut self, id: &str, a: Alloc) {
        self.free.clear(a.offset);
        self.allocated += 1;
        let s = match self.slot_of(id) {
            Some(s) => {
                if let Some(slot) = self.slots[s as usize].as_mut() {
                    slot.addrs.push(a);
                }
                s
            }
            None => self.new_slot(id, a),
        };
        self.owner[a.offset as usize] = s + 1;
    }

    fn addr(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.base + offset)
    }

    fn check_subnet(&self, subnet: Ipv4Net) -> Result<Ipv4Net, IpamError> {
        let subnet = subnet.trunc();
        if !self.range.contains(&subnet) {
            return Err(IpamError::OutsideRange(subnet.to_string(), self.range));
        }
        if subnet.prefix_len() > 30 {
            return Err(IpamError::TooSmall(subnet));
        }
        Ok(subnet)
    }

    /// Allocates an address for `id` in `subnet`, or returns the one it already has
    /// there. The flag says whether the address is new.
    pub fn allocate(&mut self, id: &str, subnet: Ipv4Net) -> Result<(Ipv4Addr, bool), IpamError> {
        if !valid_container_id(id) {
            return Err(IpamError::BadId);
        }
        let subnet = self.check_subnet(subnet)?;
        if let Some(a) = self.lookup(id).into_iter().find(|(a, _)| subnet.contains(a)) {
            return Ok((a.0, false));
        }
        let lo = u32::from(subnet.network()) - self.base;
        let hi = u32::from(subnet.broadcast()) - self.base;
        let skip = reserved(&subnet).map(|(a, _)| a - self.base);
        let start = self
            .cursors
            .get(&subnet)
            .copied()
            .filter(|c| (lo..=hi).contains(c))
            .unwrap_or(lo);
        let mut found = None;
        // From the cursor to the end, then from the start; reserved addresses are
        // stepped over (they stay free for other subnets they may belong to).
        'search: for (from, to) in [(start, hi), (lo, start.saturating_sub(1).max(lo))] {
            let mut at = from;
            while let Some(off) = self.free.first_in(at, to) {
                if !skip.contains(&off) {
                    found = Some(off);
                    break 'search;
                }
                if off == to {
                    break;
                }
                at = off + 1;
            }
        }
        let off = found.ok_or(IpamError::Full(subnet))?;
        self.take(
            id,
            Alloc {
                offset: off,
                prefix: subnet.prefix_len(),
            },
        );
        self.cursors.insert(subnet, if off == hi { lo } else { off + 1 });
        Ok((self.addr(off), true))
    }

    /// Claims `cidr`'s address for `id` (its prefix length names the subnet). The
    /// flag says whether the claim is new (false: `id` already held it).
    pub fn claim(&mut self, id: &str, cidr: Ipv4Net) -> Result<bool, IpamError> {
        if !valid_container_id(id) {
            return Err(IpamError::BadId);
        }
        let a = cidr.addr();
        if !self.range.contains(&a) {
            return Err(IpamError::OutsideRange(a.to_string(), self.range));
        }
        let subnet = self.check_subnet(cidr.trunc())?;
        if let Some((_, what)) = reserved(&subnet).into_iter().find(|(r, _)| *r == u32::from(a)) {
            return Err(IpamError::Reserved(a, what, subnet));
        }
        let off = u32::from(a) - self.base;
        match self.owner[off as usize] {
            0 => {}
            s => {
                let holder = self.slots[(s - 1) as usize].as_ref().map_or("", |slot| &*slot.id);
                return if holder == id {
                    Ok(false)
                } else {
                    Err(IpamError::Taken(a, holder.to_string()))
                };
            }
        }
        if !self.owns(a) {
            let owned: Vec<String> = self.owned.iter().map(ToString::to_string).collect();
            return Err(IpamError::NotOwned(a, owned.join(", ")));
        }
        self.take(
            id,
            Alloc {
                offset: off,
                prefix: subnet.prefix_len(),
            },
        );
        Ok(true)
    }

    /// Puts a stored allocation back (at start). Conflicts are reported, not applied.
    pub fn restore(&mut self, id: &str, a: Ipv4Addr, prefix: u8) -> Result<(), IpamError> {
        if !self.range.contains(&a) {
            return Err(IpamError::OutsideRange(a.to_string(), self.range));
        }
        let off = u32::from(a) - self.base;
        if let s @ 1.. = self.owner[off as usize] {
            let holder = self.slots[(s - 1) as usize].as_ref().map_or("", |slot| &*slot.id);
            return Err(IpamError::Taken(a, holder.to_string()));
        }
        self.take(id, Alloc { offset: off, prefix });
        Ok(())
    }

    /// Releases every address `id` holds; returns them (empty: it held none).
    pub fn release(&mut self, id: &str) -> Vec<(Ipv4Addr, u8)> {
        let Some(s) = self.slot_of(id) else { return Vec::new() };
        let h = self.hash(id);
        if let Ok(e) = self.index.find_entry(h, |x| *x == s) {
            e.remove();
        }
        let Some(slot) = self.slots[s as usize].take() else {
            return Vec::new();
        };
        self.free_slots.push(s);
        let mut out = Vec::with_capacity(slot.addrs.as_slice().len());
        for a in slot.addrs.as_slice() {
            self.owner[a.offset as usize] = 0;
            self.allocated -= 1;
            let addr = self.addr(a.offset);
            if self.owns(addr) {
                self.free.set(a.offset);
            }
            out.push((addr, a.prefix));
        }
        out
    }

    /// Releases `a` if `id` holds it; returns whether it did.
    pub fn release_one(&mut self, id: &str, a: Ipv4Addr) -> bool {
        let Some(s) = self.slot_of(id) else { return false };
        if self.holder(a) != Some(id) {
            return false;
        }
        let off = u32::from(a) - self.base;
        let Some(slot) = self.slots[s as usize].as_mut() else {
            return false;
        };
        let rest: Vec<Alloc> = slot
            .addrs
            .as_slice()
            .iter()
            .copied()
            .filter(|x| x.offset != off)
            .collect();
        if rest.is_empty() {
            return !self.release(id).is_empty();
        }
        slot.addrs = if rest.len() == 1 {
            Addrs::One(rest[0])
        } else {
            Addrs::Many(rest)
        };
        self.owner[off as usize] = 0;
        self.allocated -= 1;
        if self.owns(a) {
            self.free.set(off);
        }
        true
    }

    /// The addresses `id` holds, with their subnets' prefix lengths.
    pub fn lookup(&self, id: &str) -> Vec<(Ipv4Addr, u8)> {
        self.slot_of(id)
            .and_then(|s| self.slots[s as usize].as_ref())
            .map(|slot| {
                slot.addrs
                    .as_slice()
                    .iter()
                    .map(|a| (self.addr(a.offset), a.prefix))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Who holds `a`, if anyone.
    pub fn holder(&self, a: Ipv4Addr) -> Option<&str> {
        if !self.range.contains(&a) {
            return None;
        }
        match self.owner[(u32::from(a) - self.base) as usize] {
            0 => None,
            s => self.slots[(s - 1) as usize].as_ref().map(|slot| &*slot.id),
        }
    }

    /// Every allocation, as (address, prefix length, container id).
    pub fn allocations(&self) -> impl Iterator<Item = (Ipv4Addr, u8, &str)> {
        self.slots.iter().flatten().flat_map(move |slot| {
            slot.addrs
                .as_slice()
                .iter()
                .map(move |a| (self.addr(a.offset), a.prefix, &*slot.id))
        })
    }

    pub fn counts(&self) -> IpamCounts {
        IpamCounts {
            range_num_ips: u64::from(self.size),
            owned_num_ips: self.owned.iter().map(|o| 1u64 << (32 - o.prefix_len())).sum(),
            allocated: self.allocated,
            containers: self.index.len() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn a_block_given_up_hands_out_nothing_more_and_keeps_what_it_holds() {
        let range: Ipv4Net = "10.32.0.0/12".parse().unwrap();
        let mut ipam = Ipam::new(range, &[range]).unwrap();
        ipam.claim("c1", "10.40.0.9/12".parse().unwrap()).unwrap();
        assert!(ipam.remove_owned("10.40.0.0/13".parse().unwrap()));
        assert_eq!(ipam.owned(), &["10.32.0.0/13".parse::<Ipv4Net>().unwrap()]);
        assert!(matches!(
            ipam.claim("c2", "10.40.0.10/12".parse().unwrap()),
            Err(IpamError::NotOwned(..))
        ));
        assert!(matches!(
            ipam.allocate("c2", "10.40.0.0/16".parse().unwrap()),
            Err(IpamError::Full(_))
        ));
        assert_eq!(ipam.lookup("c1"), vec![("10.40.0.9".parse().unwrap(), 12)], "kept");
        assert!(ipam.release_one("c1", "10.40.0.9".parse().unwrap()));
        assert!(
            ipam.allocate("c3", "10.40.0.0/16".parse().unwrap()).is_err(),
            "not freed into it"
        );
        // A small piece of a block: the rest of the block stays.
        assert!(ipam.remove_owned("10.32.0.0/24".parse().unwrap()));
        assert_eq!(ipam.counts().owned_num_ips, (1 << 19) - 256);
        assert!(
            !ipam.remove_owned("10.40.0.0/13".parse().unwrap()),
            "nothing left there"
        );
    }

    #[test]
    fn allocation_is_idempotent_per_container_and_subnet() {
        let mut i = Ipam::new(net("10.32.0.0/12"), &[net("10.32.0.0/12")]).unwrap();
        let (a, new) = i.allocate("c1", net("10.32.0.0/12")).unwrap();
        assert!(new);
        assert_eq!(a, Ipv4Addr::new(10, 32, 0, 2), "network and gateway are skipped");
        assert_eq!(i.allocate("c1", net("10.32.0.0/12")).unwrap(), (a, false));
        let (b, _) = i.allocate("c2", net("10.32.0.0/12")).unwrap();
        assert_eq!(b, Ipv4Addr::new(10, 32, 0, 3));
        // A second subnet gives c1 a second address.
        let (c, _) = i.allocate("c1", net("10.40.0.0/16")).unwrap();
        assert_eq!(c, Ipv4Addr::new(10, 40, 0, 2));
        assert_eq!(i.lookup("c1"), vec![(a, 12), (c, 16)]);
        assert_eq!(i.counts().allocated, 3);
        assert_eq!(i.counts().containers, 2);
    }

    #[test]
    fn claims_say_why_they_fail() {
        let mut i = Ipam::new(net("10.32.0.0/12"), &[net("10.32.0.0/13")]).unwrap();
        assert_eq!(i.claim("c1", net("10.32.0.5/12")), Ok(true));
        assert_eq!(i.claim("c1", net("10.32.0.5/12")), Ok(false));
        assert_eq!(
            i.claim("c2", net("10.32.0.5/12")),
            Err(IpamError::Taken(Ipv4Addr::new(10, 32, 0, 5), "c1".into()))
        );
        assert!(matches!(
            i.claim("c2", net("10.99.0.5/12")),
            Err(IpamError::OutsideRange(..))
        ));
        assert!(matches!(
            i.claim("c2", net("10.32.0.1/12")),
            Err(IpamError::Reserved(_, "gateway", _))
        ));
        assert!(matches!(
            i.claim("c2", net("10.32.0.0/12")),
            Err(IpamError::Reserved(_, "network", _))
        ));
        assert!(matches!(
            i.claim("c2", net("10.47.255.255/12")),
            Err(IpamError::Reserved(_, "broadcast", _))
        ));
        assert!(matches!(
            i.claim("c2", net("10.41.0.9/12")),
            Err(IpamError::NotOwned(..))
        ));
        assert_eq!(i.claim("bad id", net("10.32.0.9/12")), Err(IpamError::BadId));
        assert!(i.allocate("c3", net("10.64.0.0/16")).is_err(), "outside the range");
        assert!(matches!(
            i.allocate("c3", net("10.32.0.0/31")),
            Err(IpamError::TooSmall(_))
        ));
        // The allocator steps over the claimed address.
        for _ in 0..5 {
            let (a, _) = i
                .allocate(&format!("x{}", i.counts().allocated), net("10.32.0.0/12"))
                .unwrap();
            assert_ne!(a, Ipv4Addr::new(10, 32, 0, 5));
        }
    }

    #[test]
    fn release_frees_everything_a_container_holds() {
        let mut i = Ipam::new(net("10.32.0.0/24"), &[net("10.32.0.0/24")]).unwrap();
        let (a, _) = i.allocate("c1", net("10.32.0.0/24")).unwrap();
        i.allocate("c1", net("10.32.0.128/25")).unwrap();
        assert_eq!(i.release("c1").len(), 2);
        assert!(i.release("c1").is_empty());
        assert!(i.lookup("c1").is_empty());
        assert_eq!(i.holder(a), None);
        assert_eq!(i.counts().allocated, 0);
        // The slot is reused.
        i.allocate("c2", net("10.32.0.0/24")).unwrap();
        assert_eq!(i.counts().containers, 1);
    }

    #[test]
    fn one_address_can_be_released_alone() {
        let mut i = Ipam::new(net("10.32.0.0/24"), &[net("10.32.0.0/24")]).unwrap();
        i.claim("c", net("10.32.0.9/24")).unwrap();
        i.claim("c", net("10.32.0.10/24")).unwrap();
        assert!(!i.release_one("c", Ipv4Addr::new(10, 32, 0, 11)));
        assert!(!i.release_one("d", Ipv4Addr::new(10, 32, 0, 9)));
        assert!(i.release_one("c", Ipv4Addr::new(10, 32, 0, 9)));
        assert_eq!(i.lookup("c"), vec![(Ipv4Addr::new(10, 32, 0, 10), 24)]);
        assert!(i.release_one("c", Ipv4Addr::new(10, 32, 0, 10)));
        assert!(i.lookup("c").is_empty());
        assert_eq!(i.counts().allocated, 0);
        assert_eq!(i.claim("e", net("10.32.0.9/24")), Ok(true), "free again");
    }

    #[test]
    fn a_full_subnet_is_full_and_every_address_is_used_once() {
        let mut i = Ipam::new(net("10.32.0.0/22"), &[net("10.32.0.0/22")]).unwrap();
        let mut seen = std::collections::HashSet::new();
        loop {
            match i.allocate(&format!("c{}", seen.len()), net("10.32.0.0/22")) {
                Ok((a, true)) => assert!(seen.insert(a), "{a} twice"),
                Ok(_) => unreachable!(),
                Err(e) => {
                    assert_eq!(e, IpamError::Full(net("10.32.0.0/22")));
                    break;
                }
            }
        }
        assert_eq!(seen.len(), 1024 - 3);
        for r in [0u32, 1, 1023] {
            assert!(!seen.contains(&Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 32, 0, 0)) + r)));
        }
    }

    #[test]
    fn only_owned_blocks_are_handed_out_and_taking_over_adds_space() {
        let mut i = Ipam::new(net("10.32.0.0/12"), &[net("10.40.0.0/13")]).unwrap();
        let (a, _) = i.allocate("c1", net("10.32.0.0/12")).unwrap();
        assert_eq!(
            a,
            Ipv4Addr::new(10, 40, 0, 0),
            "first owned address (not reserved in the /12)"
        );
        assert!(matches!(i.allocate("c2", net("10.32.0.0/16")), Err(IpamError::Full(_))));
        i.add_owned(net("10.32.0.0/16")).unwrap();
        assert_eq!(
            i.allocate("c2", net("10.32.0.0/16")).unwrap().0,
            Ipv4Addr::new(10, 32, 0, 2)
        );
        assert_eq!(i.counts().owned_num_ips, (1 << 19) + (1 << 16));
        assert!(i.add_owned(net("11.0.0.0/16")).is_err());
    }

    #[test]
    fn random_operations_keep_the_bitmap_and_tables_consistent() {
        let mut rng = StdRng::seed_from_u64(3);
        let subnet = net("10.32.0.0/20");
        let mut i = Ipam::new(net("10.32.0.0/20"), &[net("10.32.0.0/21"), net("10.32.12.0/22")]).unwrap();
        let mut held: HashMap<String, Ipv4Addr> = HashMap::new();
        for step in 0..20_000 {
            let id = format!("c{}", rng.random_range(0..3000));
            if rng.random_bool(0.6) {
                match i.allocate(&id, subnet) {
                    Ok((a, new)) => {
                        assert_eq!(new, !held.contains_key(&id), "step {step}");
                        assert_eq!(*held.entry(id.clone()).or_insert(a), a);
                        assert_eq!(i.holder(a), Some(id.as_str()));
                    }
                    Err(IpamError::Full(_)) => assert_eq!(held.len() as u64, i.counts().owned_num_ips - 3),
                    Err(e) => panic!("{e}"),
                }
            } else {
                let r = i.release(&id);
                assert_eq!(r.len(), usize::from(held.remove(&id).is_some()));
            }
        }
        assert_eq!(i.counts().allocated, held.len() as u64);
        let mut addrs: Vec<Ipv4Addr> = i.allocations().map(|(a, _, _)| a).collect();
        addrs.sort();
        addrs.dedup();
        assert_eq!(addrs.len(), held.len(), "no address held twice");
    }

    #[test]
    fn bitmap_search_matches_a_scan() {
        let mut rng = StdRng::seed_from_u64(9);
        let bits = 64 * 64 * 3 + 17;
        let mut b = Bitmap::new(bits);
        let mut plain = vec![false; bits];
        for _ in 0..300 {
            let i = rng.random_range(0..bits as u32);
            b.set(i);
            plain[i as usize] = true;
        }
        for _ in 0..100 {
            let i = rng.random_range(0..bits as u32);
            b.clear(i);
            plain[i as usize] = false;
        }
        for _ in 0..5000 {
            let lo = rng.random_range(0..bits as u32);
            let hi = rng.random_range(lo..bits as u32);
            let want = (lo..=hi).find(|i| plain[*i as usize]);
            assert_eq!(b.first_in(lo, hi), want, "{lo}..={hi}");
            assert_eq!(b.get(lo), plain[lo as usize]);
        }
    }
}
