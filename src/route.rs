//! Longest-prefix-match tables for IPv4 and IPv6.
//!
//! A table is built once from a list of prefixes and never mutated: the control side
//! compiles a new one into every snapshot, and workers only read it. That lets the
//! lookup structure be compact and branch-light rather than easy to update.
//!
//! The structure is a multibit trie with 8-bit strides (4 levels for IPv4, 16 for
//! IPv6) compressed the way Poptrie (Asai & Ohara, SIGCOMM 2015) does it: each node
//! keeps a 256-bit bitmap of which slots have a child and a 256-bit bitmap marking
//! where a run of identical leaves starts; children and leaves sit in two flat arrays,
//! found with a popcount. Prefixes are expanded within a node (leaf pushing), so a
//! lookup never backtracks: it descends while the slot has a child and returns the
//! leaf where it stops. Values are `u32` ids; 0 means "no route".

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use ipnet::IpNet;

/// An address type the trie can key on: its bits, most significant first.
pub trait Key: Copy + Eq + Ord + core::fmt::Debug {
    const BITS: u32;
    /// The `i`-th byte, counting from the most significant.
    fn byte(self, i: u32) -> u8;
    /// The address with all but the first `len` bits cleared.
    fn masked(self, len: u32) -> Self;
    /// The first `len` bits of `self`, the rest from `other`.
    fn splice(self, other: Self, len: u32) -> Self;
}

impl Key for u32 {
    const BITS: u32 = 32;
    #[inline]
    fn byte(self, i: u32) -> u8 {
        (self >> (24 - 8 * i)) as u8
    }
    #[inline]
    fn masked(self, len: u32) -> Self {
        if len == 0 {
            0
        } else {
            self & (u32::MAX << (32 - len))
        }
    }
    fn splice(self, other: Self, len: u32) -> Self {
        self.masked(len) | (other & !u32::MAX.masked(len))
    }
}

impl Key for u128 {
    const BITS: u32 = 128;
    #[inline]
    fn byte(self, i: u32) -> u8 {
        (self >> (120 - 8 * i)) as u8
    }
    #[inline]
    fn masked(self, len: u32) -> Self {
        if len == 0 {
            0
        } else {
            self & (u128::MAX << (128 - len))
        }
    }
    fn splice(self, other: Self, len: u32) -> Self {
        self.masked(len) | (other & !u128::MAX.masked(len))
    }
}

/// A 256-bit set used while building a node.
#[derive(Clone, Copy, Default)]
struct Bits256([u64; 4]);

impl Bits256 {
    fn get(&self, i: u8) -> bool {
        self.0[usize::from(i >> 6)] >> (i & 63) & 1 != 0
    }
    fn set(&mut self, i: u8) {
        self.0[usize::from(i >> 6)] |= 1 << (i & 63);
    }
}

/// A quarter of a node: 64 slots. Each word carries the base indices its popcounts
/// count from, so a lookup touches one 24-byte word per level.
#[derive(Clone, Copy, Default)]
struct Word {
    children: u64,
    leaf_starts: u64,
    child_base: u32,
    leaf_base: u32,
}

#[derive(Clone, Copy, Default)]
struct Node([Word; 4]);

impl Node {
    fn from_bits(children: Bits256, leaf_starts: Bits256, child_base: u32, leaf_base: u32) -> Node {
        let mut n = Node::default();
        let (mut c, mut l) = (child_base, leaf_base);
        for w in 0..4 {
            n.0[w] = Word {
                children: children.0[w],
                leaf_starts: leaf_starts.0[w],
                child_base: c,
                leaf_base: l,
            };
            c += children.0[w].count_ones();
            l += leaf_starts.0[w].count_ones();
        }
        n
    }
}

/// A longest-prefix-match table from keys of type `K` to `u32` ids (0 = no match).
#[derive(Clone)]
pub struct Lpm<K: Key> {
    nodes: Vec<Node>,
    leaves: Vec<u32>,
    prefixes: usize,
    _k: core::marker::PhantomData<K>,
}

impl<K: Key> Lpm<K> {
    /// Builds a table. Later entries for the same prefix replace earlier ones; host
    /// bits beyond a prefix's length are ignored; lengths are clamped to `K::BITS`.
    pub fn build(entries: &[(K, u8, u32)]) -> Lpm<K> {
        let mut list: Vec<(K, u32, u32, usize)> = entries
            .iter()
            .enumerate()
            .map(|(i, &(k, len, v))| {
                let len = u32::from(len).min(K::BITS);
                (k.masked(len), len, v, i)
            })
            .collect();
        // Deduplicate: the last entry for a prefix wins.
        list.sort_by(|a, b| (a.0, a.1, b.3).cmp(&(b.0, b.1, a.3)));
        list.dedup_by(|later, first| later.0 == first.0 && later.1 == first.1);
        let prefixes = list.len();
        let mut entries: Vec<(K, u32, u32)> = list.into_iter().map(|(k, l, v, _)| (k, l, v)).collect();
        let mut t = Lpm {
            nodes: vec![Node::default()],
            leaves: Vec::new(),
            prefixes,
            _k: core::marker::PhantomData,
        };
        t.build_node(0, 0, &mut entries, 0);
        t.nodes.shrink_to_fit();
        t.leaves.shrink_to_fit();
        t
    }

    /// Fills node `idx` at byte depth `depth` from `entries` (all inside this node's
    /// span, all longer than `8 * depth` bits), `inherited` covering the rest.
    fn build_node(&mut self, idx: usize, depth: u32, entries: &mut [(K, u32, u32)], inherited: u32) {
        let lo = 8 * depth;
        let hi = lo + 8;
        let mut slot_val = [inherited; 256];
        // Shorter prefixes first so longer ones overwrite them.
        entries.sort_by_key(|e| (e.1 > hi, e.0.byte(depth), e.1));
        let split = entries.partition_point(|e| e.1 <= hi);
        let (here, deeper) = entries.split_at_mut(split);
        let mut by_len: Vec<&(K, u32, u32)> = here.iter().collect();
        by_len.sort_by_key(|e| e.1);
        for e in by_len {
            let first = usize::from(e.0.byte(depth));
            let span = 1usize << (hi - e.1);
            slot_val[first..first + span].fill(e.2);
        }
        // Children: groups of deeper entries sharing this node's byte.
        let mut children = Bits256::default();
        let mut leaf_starts = Bits256::default();
        let mut groups: Vec<(u8, usize, usize)> = Vec::new();
        let mut i = 0;
        while i < deeper.len() {
            let b = deeper[i].0.byte(depth);
            let mut j = i;
            while j < deeper.len() && deeper[j].0.byte(depth) == b {
                j += 1;
            }
            children.set(b);
            groups.push((b, i, j));
            i = j;
        }
        // Leaves: a run starts wherever the value differs from the previous
        // non-child slot; child slots extend the run before them.
        let leaf_base = self.leaves.len() as u32;
        let mut prev: Option<u32> = None;
        for s in 0..=255u8 {
            if children.get(s) {
                if prev.is_none() {
                    prev = Some(slot_val[usize::from(s)]);
                    leaf_starts.set(s);
                    self.leaves.push(slot_val[usize::from(s)]);
                }
                continue;
            }
            let v = slot_val[usize::from(s)];
            if prev != Some(v) {
                leaf_starts.set(s);
                self.leaves.push(v);
                prev = Some(v);
            }
        }
        let child_base = self.nodes.len() as u32;
        self.nodes.resize(self.nodes.len() + groups.len(), Node::default());
        self.nodes[idx] = Node::from_bits(children, leaf_starts, child_base, leaf_base);
        for (k, (b, i, j)) in groups.into_iter().enumerate() {
            let child = child_base as usize + k;
            self.build_node(child, depth + 1, &mut deeper[i..j], slot_val[usize::from(b)]);
        }
    }

    /// The id of the longest prefix containing `key`, or 0.
    #[inline]
    pub fn lookup(&self, key: K) -> u32 {
        let mut idx = 0usize;
        let mut depth = 0u32;
        loop {
            // A well-formed trie never indexes out of bounds; `get` keeps a bug from
            // becoming a panic on the packet path.
            let Some(n) = self.nodes.get(idx) else {
                return 0;
            };
            let s = key.byte(depth);
            let w = &n.0[usize::from(s >> 6)];
            let bit = u32::from(s & 63);
            if w.children >> bit & 1 != 0 {
                let below = w.children & ((1u64 << bit) - 1);
                idx = (w.child_base + below.count_ones()) as usize;
                depth += 1;
                continue;
            }
            // The run containing slot s started at the last start at or below it;
            // slot 0 always starts a run, so this never underflows in a valid node.
            let upto = w.leaf_starts & (u64::MAX >> (63 - bit));
            let li = (w.leaf_base + upto.count_ones()).wrapping_sub(1);
            return self.leaves.get(li as usize).copied().unwrap_or(0);
        }
    }

    /// Number of distinct prefixes in the table.
    pub fn len(&self) -> usize {
        self.prefixes
    }

    pub fn is_empty(&self) -> bool {
        self.prefixes == 0
    }

    /// Heap bytes the table holds.
    pub fn memory_bytes(&self) -> usize {
        self.nodes.len() * core::mem::size_of::<Node>() + self.leaves.len() * 4
    }
}

/// A table for both families, mapping prefixes to values of type `V`.
#[derive(Clone)]
pub struct Table<V> {
    v4: Lpm<u32>,
    v6: Lpm<u128>,
    values: Vec<V>,
}

impl<V> core::fmt::Debug for Table<V> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Table")
            .field("v4_prefixes", &self.v4.len())
            .field("v6_prefixes", &self.v6.len())
            .finish()
    }
}

/// Whether two prefixes share an address.
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Table::build(Vec::new())
    }
}

impl<V> Table<V> {
    /// Builds a table; for a prefix given twice, the later value wins.
    pub fn build(entries: Vec<(IpNet, V)>) -> Table<V> {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        let mut values = Vec::with_capacity(entries.len());
        for (net, v) in entries {
            values.push(v);
            let id = values.len() as u32;
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), n.prefix_len(), id)),
                IpNet::V6(n) => v6.push((u128::from(n.network()), n.prefix_len(), id)),
            }
        }
        Table {
            v4: Lpm::build(&v4),
            v6: Lpm::build(&v6),
            values,
        }
    }

    #[inline]
    fn value(&self, id: u32) -> Option<&V> {
        if id == 0 {
            None
        } else {
            self.values.get(id as usize - 1)
        }
    }

    #[inline]
    pub fn lookup_v4(&self, a: Ipv4Addr) -> Option<&V> {
        self.value(self.v4.lookup(u32::from(a)))
    }

    #[inline]
    pub fn lookup_v6(&self, a: Ipv6Addr) -> Option<&V> {
        self.value(self.v6.lookup(u128::from(a)))
    }

    #[inline]
    pub fn lookup(&self, a: IpAddr) -> Option<&V> {
        match a {
            IpAddr::V4(a) => self.lookup_v4(a),
            IpAddr::V6(a) => self.lookup_v6(a),
        }
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn memory_bytes(&self) -> usize {
        self.v4.memory_bytes() + self.v6.memory_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// The obviously correct answer: scan every prefix, keep the longest match, the
    /// later one on a tie.
    fn oracle<K: Key>(entries: &[(K, u8, u32)], key: K) -> u32 {
        let mut best: Option<(u32, u32)> = None;
        for &(k, len, v) in entries {
            let len = u32::from(len).min(K::BITS);
            if key.masked(len) == k.masked(len) && best.is_none_or(|(bl, _)| len >= bl) {
                best = Some((len, v));
            }
        }
        best.map_or(0, |b| b.1)
    }

    fn check_random<K: Key>(seed: u64, n: usize, gen: impl Fn(&mut StdRng) -> K, lens: &[u8]) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut entries = Vec::new();
        for i in 0..n {
            // Derive some prefixes from earlier ones so they nest and overlap.
            let k = if i > 0 && rng.random_bool(0.4) {
                let (base, _, _): (K, u8, u32) = entries[rng.random_range(0..entries.len())];
                let keep = u32::from(lens[rng.random_range(0..lens.len())]).min(K::BITS);
                base.splice(gen(&mut rng), keep)
            } else {
                gen(&mut rng)
            };
            let len = lens[rng.random_range(0..lens.len())];
            entries.push((k, len, (i as u32) + 1));
        }
        let t = Lpm::build(&entries);
        for _ in 0..20_000 {
            let key = if rng.random_bool(0.5) {
                let (k, len, _) = entries[rng.random_range(0..entries.len())];
                // A key inside (or just beside) a known prefix.
                let noise = gen(&mut rng);
                let l = u32::from(len).min(K::BITS);
                if rng.random_bool(0.9) {
                    k.splice(noise, l)
                } else {
                    // Just outside: flip the prefix's last bit.
                    k.splice(noise, l.saturating_sub(1))
                }
            } else {
                gen(&mut rng)
            };
            assert_eq!(t.lookup(key), oracle(&entries, key), "key {key:?} seed {seed}");
        }
    }

    #[test]
    fn empty_table_matches_nothing() {
        let t = Lpm::<u32>::build(&[]);
        assert_eq!(t.lookup(0), 0);
        assert_eq!(t.lookup(u32::MAX), 0);
        assert!(t.is_empty());
    }

    #[test]
    fn default_route_and_host_routes() {
        let e = [
            (0u32, 0u8, 1u32),
            (u32::from(Ipv4Addr::new(10, 0, 0, 0)), 8, 2),
            (u32::from(Ipv4Addr::new(10, 1, 2, 3)), 32, 3),
            (u32::from(Ipv4Addr::new(255, 255, 255, 255)), 32, 4),
        ];
        let t = Lpm::build(&e);
        assert_eq!(t.lookup(u32::from(Ipv4Addr::new(192, 168, 0, 1))), 1);
        assert_eq!(t.lookup(u32::from(Ipv4Addr::new(10, 9, 9, 9))), 2);
        assert_eq!(t.lookup(u32::from(Ipv4Addr::new(10, 1, 2, 3))), 3);
        assert_eq!(t.lookup(u32::from(Ipv4Addr::new(10, 1, 2, 4))), 2);
        assert_eq!(t.lookup(u32::MAX), 4);
        assert_eq!(t.lookup(u32::MAX - 1), 1);
    }

    #[test]
    fn later_duplicate_wins_and_host_bits_are_ignored() {
        let e = [(0x0a00_0001u32, 8u8, 1u32), (0x0a00_0000, 8, 2)];
        let t = Lpm::build(&e);
        assert_eq!(t.lookup(0x0a7f_0000), 2);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn random_v4_tables_match_the_oracle() {
        let lens: Vec<u8> = (0..=32).collect();
        for seed in 0..6 {
            check_random::<u32>(seed, 300, |r| r.random(), &lens);
        }
        // Dense, short prefixes in a small space stress leaf runs and slot 255.
        check_random::<u32>(
            99,
            500,
            |r| r.random::<u32>() | 0xff00_0000,
            &[1, 4, 7, 8, 9, 15, 16, 24],
        );
    }

    #[test]
    fn random_v6_tables_match_the_oracle() {
        let lens: Vec<u8> = vec![0, 1, 8, 16, 31, 32, 48, 56, 63, 64, 65, 96, 112, 127, 128];
        for seed in 0..4 {
            check_random::<u128>(seed, 200, |r| r.random(), &lens);
        }
    }

    #[test]
    fn table_maps_both_families() {
        let t = Table::build(vec![
            ("198.19.0.0/16".parse().unwrap(), "overlay"),
            ("198.19.2.0/24".parse().unwrap(), "peer-b"),
            ("fd00::/8".parse().unwrap(), "v6"),
        ]);
        assert_eq!(t.lookup("198.19.2.9".parse().unwrap()), Some(&"peer-b"));
        assert_eq!(t.lookup("198.19.3.9".parse().unwrap()), Some(&"overlay"));
        assert_eq!(t.lookup("10.0.0.1".parse().unwrap()), None);
        assert_eq!(t.lookup("fd12::1".parse().unwrap()), Some(&"v6"));
        assert_eq!(t.lookup("fe80::1".parse().unwrap()), None);
        assert_eq!(t.len(), 3);
    }
}
