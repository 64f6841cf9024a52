//! The Ethernet II header tunloom puts inside VXLAN, and node MAC addresses.
//!
//! tunloom is a layer-3 overlay, but VXLAN carries Ethernet frames, so every packet it
//! encapsulates gets a synthesised header: source = this node's MAC, destination = the
//! peer's MAC. A node's MAC is its name when the name is written as a MAC (as Weave Net
//! names peers), otherwise it is derived from the name by hashing, so every node can
//! compute every other node's MAC from the names exchanged in hellos.

use super::{Error, Result};
use core::fmt;
use sha2::{Digest, Sha256};

/// Length of the Ethernet II header (no 802.1Q tag).
pub const HEADER_LEN: usize = 14;

/// EtherType values tunloom handles.
pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const IPV6: u16 = 0x86dd;
}

/// A 48-bit MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Address(pub [u8; 6]);

impl Address {
    pub const BROADCAST: Address = Address([0xff; 6]);

    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// The MAC a node uses: its name when that parses as a unicast MAC, otherwise the
    /// first six bytes of SHA-256(name) as a locally administered unicast address.
    pub fn for_node(name: &str) -> Address {
        if let Ok(a) = name.parse::<Address>() {
            if !a.is_multicast() {
                return a;
            }
        }
        let digest = Sha256::digest(name.as_bytes());
        let mut b = [0u8; 6];
        b.copy_from_slice(&digest[..6]);
        b[0] = (b[0] & 0xfe) | 0x02;
        Address(b)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl core::str::FromStr for Address {
    type Err = Error;
    fn from_str(s: &str) -> Result<Address> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let part = parts.next().ok_or(Error::Malformed("MAC needs six octets"))?;
            if part.len() != 2 {
                return Err(Error::Malformed("MAC octet must be two hex digits"));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| Error::Malformed("MAC octet must be hex"))?;
        }
        if parts.next().is_some() {
            return Err(Error::Malformed("MAC has more than six octets"));
        }
        Ok(Address(out))
    }
}

mod field {
    use core::ops::Range;
    pub const DESTINATION: Range<usize> = 0..6;
    pub const SOURCE: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
}

/// A read/write view of an Ethernet II frame.
#[derive(Debug, Clone)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Frame { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        let f = Self::new_unchecked(buffer);
        f.check_len()?;
        Ok(f)
    }

    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    pub fn destination(&self) -> Address {
        let mut a = [0u8; 6];
        a.copy_from_slice(&self.buffer.as_ref()[field::DESTINATION]);
        Address(a)
    }

    pub fn source(&self) -> Address {
        let mut a = [0u8; 6];
        a.copy_from_slice(&self.buffer.as_ref()[field::SOURCE]);
        Address(a)
    }

    pub fn ethertype(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::ETHERTYPE];
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    pub fn set_destination(&mut self, a: Address) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&a.0);
    }

    pub fn set_source(&mut self, a: Address) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&a.0);
    }

    pub fn set_ethertype(&mut self, t: u16) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&t.to_be_bytes());
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

/// The value of an Ethernet II header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src: Address,
    pub dst: Address,
    pub ethertype: u16,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(frame: &Frame<T>) -> Result<Repr> {
        frame.check_len()?;
        Ok(Repr {
            src: frame.source(),
            dst: frame.destination(),
            ethertype: frame.ethertype(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut Frame<T>) {
        frame.set_destination(self.dst);
        frame.set_source(self.src);
        frame.set_ethertype(self.ethertype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static FRAME_BYTES: [u8; 18] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, // dst
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // src
        0x08, 0x00, // IPv4
        0x45, 0x00, 0x00, 0x14,
    ];

    fn repr() -> Repr {
        Repr {
            src: Address([2, 0, 0, 0, 0, 1]),
            dst: Address([2, 0, 0, 0, 0, 2]),
            ethertype: ethertype::IPV4,
        }
    }

    #[test]
    fn test_deconstruct() {
        let f = Frame::new_checked(&FRAME_BYTES[..]).unwrap();
        assert_eq!(f.destination(), Address([2, 0, 0, 0, 0, 2]));
        assert_eq!(f.source(), Address([2, 0, 0, 0, 0, 1]));
        assert_eq!(f.ethertype(), ethertype::IPV4);
        assert_eq!(f.payload(), &[0x45, 0x00, 0x00, 0x14]);
    }

    #[test]
    fn test_construct() {
        let mut bytes = [0u8; 18];
        bytes[14..].copy_from_slice(&[0x45, 0x00, 0x00, 0x14]);
        let mut f = Frame::new_unchecked(&mut bytes[..]);
        f.set_destination(Address([2, 0, 0, 0, 0, 2]));
        f.set_source(Address([2, 0, 0, 0, 0, 1]));
        f.set_ethertype(ethertype::IPV4);
        assert_eq!(bytes, FRAME_BYTES);
    }

    #[test]
    fn test_parse_and_emit_mirror() {
        let f = Frame::new_checked(&FRAME_BYTES[..]).unwrap();
        assert_eq!(Repr::parse(&f), Ok(repr()));
        let mut bytes = [0u8; 18];
        bytes[14..].copy_from_slice(&FRAME_BYTES[14..]);
        repr().emit(&mut Frame::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, FRAME_BYTES);
    }

    #[test]
    fn truncated() {
        assert_eq!(Frame::new_checked(&FRAME_BYTES[..13]).err(), Some(Error::Truncated));
    }

    #[test]
    fn node_mac_is_name_when_name_is_a_mac() {
        assert_eq!(
            Address::for_node("6e:1f:a5:00:00:01"),
            Address([0x6e, 0x1f, 0xa5, 0, 0, 1])
        );
    }

    #[test]
    fn node_mac_from_other_names_is_stable_local_unicast() {
        let a = Address::for_node("host-a");
        assert_eq!(a, Address::for_node("host-a"));
        assert_ne!(a, Address::for_node("host-b"));
        assert_eq!(a.0[0] & 0x03, 0x02, "locally administered, unicast");
        // A multicast "name" is not usable as a unicast MAC: it gets hashed.
        assert!(!Address::for_node("01:00:5e:00:00:01").is_multicast());
    }

    #[test]
    fn mac_text_round_trip() {
        let a = Address([0xde, 0xad, 0xbe, 0xef, 0x00, 0x01]);
        assert_eq!(a.to_string().parse::<Address>(), Ok(a));
        assert!("de:ad:be:ef:00".parse::<Address>().is_err());
        assert!("de:ad:be:ef:00:01:02".parse::<Address>().is_err());
        assert!("zz:ad:be:ef:00:01".parse::<Address>().is_err());
    }
}
