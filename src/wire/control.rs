//! The peer control protocol's message (UDP port 6783).
//!
//! Every node sends its full state to every peer once per hello interval: who it is,
//! where its data port is, and which overlay prefixes it announces (its routes and the
//! IPAM blocks it owns). State that does not fit one datagram is split into pages that
//! share one `seq`; a receiver applies a state only once it holds every page of it.
//! `state` names the version of the state carried (it changes only when the state
//! does), and `ack` tells the recipient which version of *its* state the sender has
//! applied — so a node can wait until its peers forward by a change it made.
//!
//! With a cluster secret, an HMAC-SHA256 over the whole message trails it; a receiver
//! with a secret drops anything unsigned or signed wrong, and one without a secret drops
//! signed messages (the two sides disagree, so neither may trust the other).
//!
//! ```text
//!  0      4   5    6     7    8     16      24    32     34      36         38   39       40       41      42    44
//! +------+---+----+-----+----+-----+-------+-----+------+-------+----------+----+--------+--------+-------+-----+
//! | TLPC |ver|kind|flags|rsvd| seq | state | ack | page | pages | dataport |fam |name_len|nick_len| count |rsvd |
//! +------+---+----+-----+----+-----+-------+-----+------+-------+----------+----+--------+--------+-------+-----+
//! | underlay address (4 or 16) | name | nickname | count x prefix entry | [HMAC-SHA256, 32 bytes]            |
//! +-------------------------------------------------------------------------------------------------------+
//!
//! prefix entry, version 2 (15 bytes + address):
//!  0        1        2       3              11           15
//! +--------+--------+-------+--------------+------------+------------------------------+
//! | family | length | flags | version (u64) | VNI (u32)  | address (4 or 16), host bits 0 |
//! +--------+--------+-------+--------------+------------+------------------------------+
//! prefix entry, version 1 (11 bytes + address): the same without the VNI.
//! flags: bit 0: the prefix is IPAM space the sender owns; other bits must be 0.
//! VNI: the VXLAN VNI traffic to the prefix travels under; 0: none (the node's
//! default, `dataplane.vni`); at most 2^24 - 1.
//! ```
//!
//! Versions: a node sends version 2 ([`VERSION`]). It parses version 1 too, as a
//! version 2 message whose every prefix has VNI 0, so a peer that runs an older
//! tunloom is understood; [`Repr::emit_as`] can still write version 1 (it has no room
//! for VNIs). Any other version is refused by [`Packet::new_checked`] with
//! [`Error::Version`] before anything past the version byte is read, so a newer
//! format — even one with another header — is told apart from garbage and counted
//! on its own. The HMAC covers the whole message, version byte included, in every
//! version.

use super::vxlan::MAX_VNI;
use super::{Error, Result};
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use hmac::{Hmac, KeyInit, Mac};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use sha2::Sha256;

pub const MAGIC: [u8; 4] = *b"TLPC";
/// The version this node sends.
pub const VERSION: u8 = 2;
/// The oldest version this node still parses (and can emit, see [`Repr::emit_as`]).
pub const MIN_VERSION: u8 = 1;
pub const HEADER_LEN: usize = 44;
pub const MAC_LEN: usize = 32;
pub const MAX_NAME_LEN: usize = 64;
/// Pages are sized to stay below a 1500-byte underlay MTU with IPv6 + UDP headers.
pub const MAX_MESSAGE_LEN: usize = 1400;
pub const FLAG_MAC: u8 = 0x01;

/// What a message says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// "I am here, and this is my state."
    Hello,
    /// "I am leaving": peers withdraw this node's routes at once instead of waiting
    /// for missed hellos.
    Bye,
}

impl Kind {
    fn to_u8(self) -> u8 {
        match self {
            Kind::Hello => 1,
            Kind::Bye => 2,
        }
    }
    fn from_u8(v: u8) -> Option<Kind> {
        match v {
            1 => Some(Kind::Hello),
            2 => Some(Kind::Bye),
            _ => None,
        }
    }
}

mod field {
    use core::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const VERSION: usize = 4;
    pub const KIND: usize = 5;
    pub const FLAGS: usize = 6;
    pub const SEQ: Range<usize> = 8..16;
    pub const STATE: Range<usize> = 16..24;
    pub const ACK: Range<usize> = 24..32;
    pub const PAGE: Range<usize> = 32..34;
    pub const PAGES: Range<usize> = 34..36;
    pub const DATA_PORT: Range<usize> = 36..38;
    pub const FAMILY: usize = 38;
    pub const NAME_LEN: usize = 39;
    pub const NICK_LEN: usize = 40;
    pub const COUNT: usize = 41;
    pub const RESERVED: Range<usize> = 42..44;
}

/// Bytes of a prefix entry before its address, by message version: version 2 added
/// the VNI.
const fn entry_fixed(version: u8) -> usize {
    if version >= 2 {
        15
    } else {
        11
    }
}
/// Prefix entry flag: the prefix is IPAM space the sender owns.
pub const PREFIX_BLOCK: u8 = 0x01;

fn addr_len(family: u8) -> Result<usize> {
    match family {
        4 => Ok(4),
        6 => Ok(16),
        _ => Err(Error::Malformed("address family must be 4 or 6")),
    }
}

/// A view of a control message at the front of a buffer.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Checks magic, version and that every declared length fits the buffer exactly.
    /// An unknown version is [`Error::Version`], decided from the first five bytes
    /// alone.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check()?;
        Ok(p)
    }

    fn check(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        if b.len() <= field::VERSION {
            return Err(Error::Truncated);
        }
        if b[field::MAGIC] != MAGIC {
            return Err(Error::Malformed("bad magic"));
        }
        let version = b[field::VERSION];
        if !(MIN_VERSION..=VERSION).contains(&version) {
            return Err(Error::Version(version));
        }
        if b.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if b.len() != self.expected_len()? {
            return Err(if b.len() < self.expected_len()? {
                Error::Truncated
            } else {
                Error::Malformed("trailing bytes")
            });
        }
        Ok(())
    }

    /// The length the header's counts imply, walking the prefix entries' families.
    fn expected_len(&self) -> Result<usize> {
        let b = self.buffer.as_ref();
        let mut at = HEADER_LEN
            + addr_len(b[field::FAMILY])?
            + usize::from(b[field::NAME_LEN])
            + usize::from(b[field::NICK_LEN]);
        let fixed = entry_fixed(self.version());
        for _ in 0..b[field::COUNT] {
            let fam = *b.get(at).ok_or(Error::Truncated)?;
            at += fixed + addr_len(fam)?;
        }
        if self.has_mac() {
            at += MAC_LEN;
        }
        Ok(at)
    }

    /// The message's version (one this node parses, once checked).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION]
    }

    pub fn kind(&self) -> Option<Kind> {
        Kind::from_u8(self.buffer.as_ref()[field::KIND])
    }

    pub fn has_mac(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS] & FLAG_MAC != 0
    }

    fn u64_at(&self, r: core::ops::Range<usize>) -> u64 {
        let b = &self.buffer.as_ref()[r];
        u64::from_be_bytes(b.try_into().unwrap_or([0; 8]))
    }

    pub fn seq(&self) -> u64 {
        self.u64_at(field::SEQ)
    }

    fn u16_at(&self, r: core::ops::Range<usize>) -> u16 {
        let b = &self.buffer.as_ref()[r];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Checks the trailing HMAC against `secret`; see the module doc for the rules.
    pub fn verify(&self, secret: Option<&[u8]>) -> Result<()> {
        let b = self.buffer.as_ref();
        match (secret, self.has_mac()) {
            (None, false) => Ok(()),
            (Some(key), true) => {
                let (signed, tag) = b.split_at(b.len() - MAC_LEN);
                let mut mac = Hmac::<Sha256>::new_from_slice(key).map_err(|_| Error::Unauthenticated)?;
                mac.update(signed);
                mac.verify_slice(tag).map_err(|_| Error::Unauthenticated)
            }
            _ => Err(Error::Unauthenticated),
        }
    }
}

/// One announced prefix and the version its owner gave it (bumped on every change,
/// so a receiver can tell a re-announcement from a new one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announce {
    pub prefix: IpNet,
    pub version: u64,
    /// The prefix is IPAM space the announcing node owns (besides being routed to it).
    pub block: bool,
    /// The VNI traffic to the prefix travels under (its network's); 0: none, the
    /// node's default. Version 1 messages carry none, so theirs read as 0.
    pub vni: u32,
}

impl Announce {
    fn wire_len(&self, version: u8) -> usize {
        entry_fixed(version)
            + match self.prefix {
                IpNet::V4(_) => 4,
                IpNet::V6(_) => 16,
            }
    }
}

/// Where a repr's prefixes live: validated bytes of a parsed message, or a slice the
/// sender owns.
#[derive(Debug, Clone, Copy)]
pub enum Prefixes<'a> {
    Wire { bytes: &'a [u8], count: u8, version: u8 },
    Slice(&'a [Announce]),
}

impl<'a> Prefixes<'a> {
    pub fn len(&self) -> usize {
        match self {
            Prefixes::Wire { count, .. } => usize::from(*count),
            Prefixes::Slice(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> PrefixIter<'a> {
        match *self {
            Prefixes::Wire { bytes, count, version } => PrefixIter::Wire {
                bytes,
                left: count,
                version,
            },
            Prefixes::Slice(s) => PrefixIter::Slice(s.iter()),
        }
    }
}

impl PartialEq for Prefixes<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

pub enum PrefixIter<'a> {
    Wire { bytes: &'a [u8], left: u8, version: u8 },
    Slice(core::slice::Iter<'a, Announce>),
}

impl Iterator for PrefixIter<'_> {
    type Item = Announce;
    fn next(&mut self) -> Option<Announce> {
        match self {
            PrefixIter::Slice(it) => it.next().copied(),
            PrefixIter::Wire { bytes, left, version } => {
                if *left == 0 {
                    return None;
                }
                // Entries were validated by `Repr::parse`; a failure here means the
                // bytes did not come from it, and iteration simply stops.
                let (a, n) = read_prefix(bytes, *version).ok()?;
                *bytes = &bytes[n..];
                *left -= 1;
                Some(a)
            }
        }
    }
}

/// Reads the prefix entry at the front of `b`, laid out as `version` lays it out.
fn read_prefix(b: &[u8], version: u8) -> Result<(Announce, usize)> {
    let fam = *b.first().ok_or(Error::Truncated)?;
    let alen = addr_len(fam)?;
    let fixed = entry_fixed(version);
    let n = fixed + alen;
    if b.len() < n {
        return Err(Error::Truncated);
    }
    let len = b[1];
    let flags = b[2];
    if flags & !PREFIX_BLOCK != 0 {
        return Err(Error::Malformed("unknown prefix flags"));
    }
    let prefix_version = u64::from_be_bytes(b[3..11].try_into().map_err(|_| Error::Truncated)?);
    let vni = if version >= 2 {
        u32::from_be_bytes(b[11..15].try_into().map_err(|_| Error::Truncated)?)
    } else {
        0
    };
    if vni > MAX_VNI {
        return Err(Error::Malformed("VNI above 24 bits"));
    }
    let prefix = if fam == 4 {
        let a = Ipv4Addr::from(<[u8; 4]>::try_from(&b[fixed..fixed + 4]).map_err(|_| Error::Truncated)?);
        IpNet::V4(Ipv4Net::new(a, len).map_err(|_| Error::Malformed("IPv4 prefix length > 32"))?)
    } else {
        let a = Ipv6Addr::from(<[u8; 16]>::try_from(&b[fixed..fixed + 16]).map_err(|_| Error::Truncated)?);
        IpNet::V6(Ipv6Net::new(a, len).map_err(|_| Error::Malformed("IPv6 prefix length > 128"))?)
    };
    if prefix.trunc() != prefix {
        return Err(Error::Malformed("prefix has host bits set"));
    }
    Ok((
        Announce {
            prefix,
            version: prefix_version,
            block: flags & PREFIX_BLOCK != 0,
            vni,
        },
        n,
    ))
}

/// The value of a control message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Repr<'a> {
    pub kind: Kind,
    pub seq: u64,
    /// Version of the sender's state this message carries.
    pub state: u64,
    /// Version of the recipient's state the sender has applied (0: none yet).
    pub ack: u64,
    pub page: u16,
    pub pages: u16,
    pub data_port: u16,
    pub underlay: IpAddr,
    pub name: &'a str,
    pub nickname: &'a str,
    pub prefixes: Prefixes<'a>,
}

impl<'a> Repr<'a> {
    /// Parses a checked packet. Authentication is separate: call
    /// [`Packet::verify`] first.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &'a Packet<&'a T>) -> Result<Repr<'a>> {
        packet.check()?;
        let b = packet.buffer.as_ref();
        let kind = packet.kind().ok_or(Error::Malformed("unknown message kind"))?;
        let page = packet.u16_at(field::PAGE);
        let pages = packet.u16_at(field::PAGES);
        if pages == 0 || page >= pages {
            return Err(Error::Malformed("page out of range"));
        }
        let fam = b[field::FAMILY];
        let mut at = HEADER_LEN;
        let underlay = if fam == 4 {
            let a: [u8; 4] = b[at..at + 4].try_into().map_err(|_| Error::Truncated)?;
            at += 4;
            IpAddr::V4(a.into())
        } else {
            let a: [u8; 16] = b[at..at + 16].try_into().map_err(|_| Error::Truncated)?;
            at += 16;
            IpAddr::V6(a.into())
        };
        let name_len = usize::from(b[field::NAME_LEN]);
        let nick_len = usize::from(b[field::NICK_LEN]);
        if name_len == 0 || name_len > MAX_NAME_LEN || nick_len > MAX_NAME_LEN {
            return Err(Error::Malformed("name length out of range"));
        }
        let name = core::str::from_utf8(&b[at..at + name_len]).map_err(|_| Error::Malformed("name is not UTF-8"))?;
        at += name_len;
        let nickname =
            core::str::from_utf8(&b[at..at + nick_len]).map_err(|_| Error::Malformed("nickname is not UTF-8"))?;
        at += nick_len;
        let count = b[field::COUNT];
        let version = packet.version();
        let start = at;
        for _ in 0..count {
            let (_, n) = read_prefix(&b[at..], version)?;
            at += n;
        }
        Ok(Repr {
            kind,
            seq: packet.seq(),
            state: packet.u64_at(field::STATE),
            ack: packet.u64_at(field::ACK),
            page,
            pages,
            data_port: packet.u16_at(field::DATA_PORT),
            underlay,
            name,
            nickname,
            prefixes: Prefixes::Wire {
                bytes: &b[start..at],
                count,
                version,
            },
        })
    }

    /// Bytes this message takes as [`VERSION`], with `signed` saying whether an
    /// HMAC trails it.
    pub fn buffer_len(&self, signed: bool) -> usize {
        self.buffer_len_as(VERSION, signed)
    }

    /// Bytes this message takes as `version`.
    pub fn buffer_len_as(&self, version: u8, signed: bool) -> usize {
        HEADER_LEN
            + if self.underlay.is_ipv4() { 4 } else { 16 }
            + self.name.len()
            + self.nickname.len()
            + self.prefixes.iter().map(|a| a.wire_len(version)).sum::<usize>()
            + if signed { MAC_LEN } else { 0 }
    }

    /// Writes the message into `buf` as [`VERSION`], signing it when `secret` is
    /// given. Returns the length written.
    pub fn emit(&self, buf: &mut [u8], secret: Option<&[u8]>) -> Result<usize> {
        self.emit_as(VERSION, buf, secret)
    }

    /// [`Repr::emit`] as `version` (from [`MIN_VERSION`] to [`VERSION`]). Version 1
    /// has no room for VNIs: they are left out.
    pub fn emit_as(&self, version: u8, buf: &mut [u8], secret: Option<&[u8]>) -> Result<usize> {
        if !(MIN_VERSION..=VERSION).contains(&version) {
            return Err(Error::Version(version));
        }
        if self.prefixes.iter().any(|a| a.vni > MAX_VNI) {
            return Err(Error::Malformed("VNI above 24 bits"));
        }
        if self.name.is_empty()
            || self.name.len() > MAX_NAME_LEN
            || self.nickname.len() > MAX_NAME_LEN
            || self.prefixes.len() > usize::from(u8::MAX)
            || self.pages == 0
            || self.page >= self.pages
        {
            return Err(Error::Malformed("message fields out of range"));
        }
        let total = self.buffer_len_as(version, secret.is_some());
        if buf.len() < total {
            return Err(Error::Exhausted);
        }
        let b = &mut buf[..total];
        b[field::MAGIC].copy_from_slice(&MAGIC);
        b[field::VERSION] = version;
        b[field::KIND] = self.kind.to_u8();
        b[field::FLAGS] = if secret.is_some() { FLAG_MAC } else { 0 };
        b[7] = 0;
        b[field::SEQ].copy_from_slice(&self.seq.to_be_bytes());
        b[field::STATE].copy_from_slice(&self.state.to_be_bytes());
        b[field::ACK].copy_from_slice(&self.ack.to_be_bytes());
        b[field::PAGE].copy_from_slice(&self.page.to_be_bytes());
        b[field::PAGES].copy_from_slice(&self.pages.to_be_bytes());
        b[field::DATA_PORT].copy_from_slice(&self.data_port.to_be_bytes());
        b[field::NAME_LEN] = self.name.len() as u8;
        b[field::NICK_LEN] = self.nickname.len() as u8;
        b[field::COUNT] = self.prefixes.len() as u8;
        b[field::RESERVED].fill(0);
        let mut at = HEADER_LEN;
        match self.underlay {
            IpAddr::V4(a) => {
                b[field::FAMILY] = 4;
                b[at..at + 4].copy_from_slice(&a.octets());
                at += 4;
            }
            IpAddr::V6(a) => {
                b[field::FAMILY] = 6;
                b[at..at + 16].copy_from_slice(&a.octets());
                at += 16;
            }
        }
        b[at..at + self.name.len()].copy_from_slice(self.name.as_bytes());
        at += self.name.len();
        b[at..at + self.nickname.len()].copy_from_slice(self.nickname.as_bytes());
        at += self.nickname.len();
        let fixed = entry_fixed(version);
        for a in self.prefixes.iter() {
            let p = a.prefix.trunc();
            b[at + 1] = p.prefix_len();
            b[at + 2] = if a.block { PREFIX_BLOCK } else { 0 };
            b[at + 3..at + 11].copy_from_slice(&a.version.to_be_bytes());
            if version >= 2 {
                b[at + 11..at + 15].copy_from_slice(&a.vni.to_be_bytes());
            }
            let addr_at = at + fixed;
            match p {
                IpNet::V4(n) => {
                    b[at] = 4;
                    b[addr_at..addr_at + 4].copy_from_slice(&n.network().octets());
                }
                IpNet::V6(n) => {
                    b[at] = 6;
                    b[addr_at..addr_at + 16].copy_from_slice(&n.network().octets());
                }
            }
            at += a.wire_len(version);
        }
        if let Some(key) = secret {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).map_err(|_| Error::Unauthenticated)?;
            mac.update(&b[..at]);
            b[at..at + MAC_LEN].copy_from_slice(&mac.finalize().into_bytes());
        }
        Ok(total)
    }

    /// How many prefix entries fit in one [`VERSION`] page beside the fixed part,
    /// counting every entry as IPv6 (the larger kind): 15 + 16 bytes each.
    pub fn prefixes_per_page(&self, signed: bool) -> usize {
        let fixed = Repr {
            prefixes: Prefixes::Slice(&[]),
            ..*self
        }
        .buffer_len(signed);
        (MAX_MESSAGE_LEN.saturating_sub(fixed) / (entry_fixed(VERSION) + 16)).min(usize::from(u8::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANN: [Announce; 2] = [
        Announce {
            prefix: IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(198, 19, 1, 0), 24)),
            version: 7,
            block: true,
            vni: 0x1234,
        },
        Announce {
            prefix: IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, 0), 64)),
            version: 1,
            block: false,
            vni: 0,
        },
    ];

    /// [`ANN`] as a version 1 message reads it: no VNIs.
    const ANN_V1: [Announce; 2] = [Announce { vni: 0, ..ANN[0] }, ANN[1]];

    fn repr() -> Repr<'static> {
        Repr {
            kind: Kind::Hello,
            seq: 0x0102030405060708,
            state: 10,
            ack: 5,
            page: 0,
            pages: 1,
            data_port: 4789,
            underlay: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
            name: "ab",
            nickname: "h",
            prefixes: Prefixes::Slice(&ANN),
        }
    }

    #[rustfmt::skip]
    static BYTES: [u8; 101] = [
        b'T', b'L', b'P', b'C', 2, 1, 0, 0,
        1, 2, 3, 4, 5, 6, 7, 8,          // seq
        0, 0, 0, 0, 0, 0, 0, 10,         // state
        0, 0, 0, 0, 0, 0, 0, 5,          // ack
        0, 0, 0, 1, 0x12, 0xb5, 4, 2, 1, 2, 0, 0,
        198, 18, 0, 1,
        b'a', b'b', b'h',
        // 198.19.1.0/24, IPAM block, version 7, VNI 0x1234
        4, 24, 1, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0x12, 0x34, 198, 19, 1, 0,
        // fd00:0:0:1::/64, version 1, no VNI
        6, 64, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0,
        0xfd, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    /// The same message as an older tunloom sends it (version 1: no VNIs).
    #[rustfmt::skip]
    static BYTES_V1: [u8; 93] = [
        b'T', b'L', b'P', b'C', 1, 1, 0, 0,
        1, 2, 3, 4, 5, 6, 7, 8,          // seq
        0, 0, 0, 0, 0, 0, 0, 10,         // state
        0, 0, 0, 0, 0, 0, 0, 5,          // ack
        0, 0, 0, 1, 0x12, 0xb5, 4, 2, 1, 2, 0, 0,
        198, 18, 0, 1,
        b'a', b'b', b'h',
        4, 24, 1, 0, 0, 0, 0, 0, 0, 0, 7, 198, 19, 1, 0,
        6, 64, 0, 0, 0, 0, 0, 0, 0, 0, 1,
        0xfd, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    #[test]
    fn test_emit() {
        let mut buf = [0u8; 128];
        let n = repr().emit(&mut buf, None).unwrap();
        assert_eq!(&buf[..n], &BYTES[..]);
        assert_eq!(repr().buffer_len(false), n);
    }

    #[test]
    fn test_parse() {
        let p = Packet::new_checked(&BYTES[..]).unwrap();
        assert_eq!(p.version(), 2);
        p.verify(None).unwrap();
        assert_eq!(Repr::parse(&p).unwrap(), repr());
        let got: Vec<Announce> = Repr::parse(&p).unwrap().prefixes.iter().collect();
        assert_eq!(got, ANN);
    }

    #[test]
    fn version_1_parses_with_vni_0_and_can_still_be_written() {
        let p = Packet::new_checked(&BYTES_V1[..]).unwrap();
        assert_eq!(p.version(), 1);
        let r = Repr::parse(&p).unwrap();
        let got: Vec<Announce> = r.prefixes.iter().collect();
        assert_eq!(got, ANN_V1);
        assert_eq!(
            r,
            Repr {
                prefixes: Prefixes::Slice(&ANN_V1),
                ..repr()
            }
        );
        // Written as version 1, the VNIs are left out; read back, they are 0.
        let mut buf = [0u8; 128];
        let n = repr().emit_as(1, &mut buf, None).unwrap();
        assert_eq!(&buf[..n], &BYTES_V1[..]);
        assert_eq!(repr().buffer_len_as(1, false), n);
        // A version 1 message re-emitted by this node is version 2, same values.
        let n = r.emit(&mut buf, None).unwrap();
        let again = Packet::new_checked(&buf[..n]).unwrap();
        assert_eq!((again.version(), Repr::parse(&again).unwrap()), (2, r));
        // Signed as version 1: the HMAC covers it as it did.
        let n = repr().emit_as(1, &mut buf, Some(b"k")).unwrap();
        assert_eq!(Packet::new_checked(&buf[..n]).unwrap().verify(Some(b"k")), Ok(()));
    }

    #[test]
    fn unknown_versions_are_refused_by_the_version_byte_alone() {
        for v in [0u8, 3, 0xff] {
            let mut b = BYTES;
            b[4] = v;
            assert_eq!(Packet::new_checked(&b[..]).err(), Some(Error::Version(v)));
            // A newer format may be laid out otherwise: five bytes are enough to tell.
            assert_eq!(Packet::new_checked(&b[..5]).err(), Some(Error::Version(v)));
        }
        assert_eq!(Packet::new_checked(&BYTES[..4]).err(), Some(Error::Truncated));
        let mut buf = [0u8; 128];
        assert_eq!(repr().emit_as(3, &mut buf, None), Err(Error::Version(3)));
        assert_eq!(repr().emit_as(0, &mut buf, None), Err(Error::Version(0)));
    }

    #[test]
    fn signed_round_trip_and_rules() {
        let mut buf = [0u8; 256];
        let n = repr().emit(&mut buf, Some(b"s3cret")).unwrap();
        assert_eq!(n, BYTES.len() + MAC_LEN);
        let p = Packet::new_checked(&buf[..n]).unwrap();
        assert_eq!(p.verify(Some(b"s3cret")), Ok(()));
        assert_eq!(p.verify(Some(b"other")), Err(Error::Unauthenticated));
        assert_eq!(p.verify(None), Err(Error::Unauthenticated));
        assert_eq!(Repr::parse(&p).unwrap(), repr());
        // Unsigned message at a node with a secret.
        let p = Packet::new_checked(&BYTES[..]).unwrap();
        assert_eq!(p.verify(Some(b"s3cret")), Err(Error::Unauthenticated));
        // Any flipped bit breaks the signature: the version byte and a VNI too.
        for i in [0usize, 4, 9, 30, 40, 65, n - 1] {
            let mut t = buf;
            t[i] ^= 0x01;
            if let Ok(p) = Packet::new_checked(&t[..n]) {
                assert_eq!(p.verify(Some(b"s3cret")), Err(Error::Unauthenticated), "byte {i}");
            }
        }
    }

    #[test]
    fn every_truncation_is_rejected() {
        for bytes in [&BYTES[..], &BYTES_V1[..]] {
            for n in 0..bytes.len() {
                assert!(Packet::new_checked(&bytes[..n]).is_err(), "len {n}");
            }
            let mut long = bytes.to_vec();
            long.push(0);
            assert_eq!(
                Packet::new_checked(&long[..]).err(),
                Some(Error::Malformed("trailing bytes"))
            );
        }
        // A version 1 message relabelled as version 2 (or back) does not fit.
        let mut b = BYTES_V1;
        b[4] = 2;
        assert!(Packet::new_checked(&b[..]).is_err());
        let mut b = BYTES;
        b[4] = 1;
        assert!(Packet::new_checked(&b[..]).is_err());
    }

    #[test]
    fn bad_fields_are_rejected() {
        let mut b = BYTES;
        b[0] = b'X';
        assert!(Packet::new_checked(&b[..]).is_err());
        let mut b = BYTES;
        b[5] = 9; // kind
        assert!(Repr::parse(&Packet::new_checked(&b[..]).unwrap()).is_err());
        let mut b = BYTES;
        b[32..34].copy_from_slice(&[0, 1]); // page 1 of 1
        assert!(Repr::parse(&Packet::new_checked(&b[..]).unwrap()).is_err());
        let mut b = BYTES;
        b[52] = 33; // IPv4 prefix length 33
        assert!(Repr::parse(&Packet::new_checked(&b[..]).unwrap()).is_err());
        let mut b = BYTES;
        b[53] = 0x80; // unknown prefix flag
        assert!(Repr::parse(&Packet::new_checked(&b[..]).unwrap()).is_err());
        let mut b = BYTES;
        b[62] = 1; // VNI 0x01001234: above 24 bits
        assert_eq!(
            Repr::parse(&Packet::new_checked(&b[..]).unwrap()).err(),
            Some(Error::Malformed("VNI above 24 bits"))
        );
        let mut b = BYTES;
        b[69] = 1; // host bit set in 198.19.1.0/24
        assert!(Repr::parse(&Packet::new_checked(&b[..]).unwrap()).is_err());
        let mut b = BYTES_V1;
        b[65] = 1; // the same in version 1
        assert!(Repr::parse(&Packet::new_checked(&b[..]).unwrap()).is_err());
        let mut b = BYTES;
        b[48] = 0xff; // name not UTF-8
        assert!(Repr::parse(&Packet::new_checked(&b[..]).unwrap()).is_err());
        let mut b = BYTES;
        b[38] = 5; // family
        assert!(Packet::new_checked(&b[..]).is_err());
    }

    #[test]
    fn emit_refuses_out_of_range_and_small_buffers() {
        let mut buf = [0u8; 16];
        assert_eq!(repr().emit(&mut buf, None), Err(Error::Exhausted));
        let mut buf = [0u8; 256];
        let r = Repr { name: "", ..repr() };
        assert!(r.emit(&mut buf, None).is_err());
        let r = Repr { page: 1, ..repr() };
        assert!(r.emit(&mut buf, None).is_err());
        let big = [Announce {
            vni: MAX_VNI + 1,
            ..ANN[0]
        }];
        let r = Repr {
            prefixes: Prefixes::Slice(&big),
            ..repr()
        };
        assert_eq!(r.emit(&mut buf, None), Err(Error::Malformed("VNI above 24 bits")));
    }

    #[test]
    fn a_full_page_fits_the_limit() {
        let many: Vec<Announce> = (0..255u32)
            .map(|i| Announce {
                prefix: IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::from(u128::from(i) << 64), 64)),
                version: 1,
                block: false,
                vni: MAX_VNI - i,
            })
            .collect();
        let r = Repr {
            name: &"n".repeat(64),
            nickname: &"k".repeat(64),
            underlay: IpAddr::V6(Ipv6Addr::LOCALHOST),
            ..repr()
        };
        // 44 + 16 + 64 + 64 + 32 = 220 fixed bytes; (1400 - 220) / 31 = 38 entries.
        let per = r.prefixes_per_page(true);
        assert_eq!(per, 38);
        let page = Repr {
            prefixes: Prefixes::Slice(&many[..per]),
            ..r
        };
        assert!(page.buffer_len(true) <= MAX_MESSAGE_LEN);
        let over = Repr {
            prefixes: Prefixes::Slice(&many[..per + 1]),
            ..r
        };
        assert!(over.buffer_len(true) > MAX_MESSAGE_LEN, "the bound is tight");
        let mut buf = vec![0u8; MAX_MESSAGE_LEN];
        let n = page.emit(&mut buf, Some(b"k")).unwrap();
        let p = Packet::new_checked(&buf[..n]).unwrap();
        let got: Vec<Announce> = Repr::parse(&p).unwrap().prefixes.iter().collect();
        assert_eq!(got, many[..per]);
    }
}
