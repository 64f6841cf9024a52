//! The VXLAN header (RFC 7348, section 5).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! The I flag must be set; the other flag bits and the reserved fields are written as
//! zero and ignored on receipt, as the RFC says, so extensions such as GBP that use
//! them still parse.

use super::{Error, Result};

/// Length of the VXLAN header.
pub const HEADER_LEN: usize = 8;
/// The "VNI is valid" flag.
pub const FLAG_I: u8 = 0x08;
/// The largest VNI (24 bits).
pub const MAX_VNI: u32 = 0x00ff_ffff;

mod field {
    use core::ops::Range;
    pub const FLAGS: usize = 0;
    pub const VNI: Range<usize> = 4..7;
}

/// A read/write view of a VXLAN header at the front of a buffer.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it; accessors may panic on a short buffer.
    /// Use it only on buffers this process sized itself.
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wraps untrusted bytes, checking there are enough for the header.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    pub fn vni(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VNI];
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }

    /// The bytes after the header: the inner Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Writes flags (I set) and VNI, zeroing every reserved bit.
    pub fn set_header(&mut self, vni: u32) {
        let b = self.buffer.as_mut();
        let v = vni.to_be_bytes();
        b[..HEADER_LEN].copy_from_slice(&[FLAG_I, 0, 0, 0, v[1], v[2], v[3], 0]);
    }
}

/// The value a VXLAN header carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub vni: u32,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        packet.check_len()?;
        if packet.flags() & FLAG_I == 0 {
            return Err(Error::Malformed("VXLAN I flag not set"));
        }
        Ok(Repr { vni: packet.vni() })
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_header(self.vni & MAX_VNI);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static HEADER_BYTES: [u8; 8] = [0x08, 0x00, 0x00, 0x00, 0x12, 0x34, 0x56, 0x00];

    #[test]
    fn test_deconstruct() {
        let p = Packet::new_checked(&HEADER_BYTES[..]).unwrap();
        assert_eq!(p.flags(), FLAG_I);
        assert_eq!(p.vni(), 0x123456);
        assert!(p.payload().is_empty());
    }

    #[test]
    fn test_construct() {
        let mut bytes = [0xffu8; 8];
        let mut p = Packet::new_unchecked(&mut bytes[..]);
        p.set_header(0x123456);
        assert_eq!(bytes, HEADER_BYTES);
    }

    #[test]
    fn test_parse() {
        let p = Packet::new_checked(&HEADER_BYTES[..]).unwrap();
        assert_eq!(Repr::parse(&p), Ok(Repr { vni: 0x123456 }));
    }

    #[test]
    fn test_emit() {
        let repr = Repr { vni: 0x123456 };
        let mut bytes = [0u8; 8];
        repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, HEADER_BYTES);
        assert_eq!(repr.buffer_len(), bytes.len());
    }

    #[test]
    fn reserved_bits_are_ignored_on_receipt() {
        // GBP-style flags and a non-zero last reserved byte still parse.
        let bytes = [0x88, 0x40, 0x12, 0x34, 0x00, 0x00, 0x2a, 0xff];
        let p = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(Repr::parse(&p), Ok(Repr { vni: 42 }));
    }

    #[test]
    fn missing_i_flag_is_rejected() {
        let bytes = [0x00, 0, 0, 0, 0, 0, 1, 0];
        let p = Packet::new_checked(&bytes[..]).unwrap();
        assert!(matches!(Repr::parse(&p), Err(Error::Malformed(_))));
    }

    #[test]
    fn short_buffers_are_truncated() {
        for n in 0..HEADER_LEN {
            assert_eq!(Packet::new_checked(&HEADER_BYTES[..n]).err(), Some(Error::Truncated));
        }
    }
}
