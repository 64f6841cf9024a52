//! The virtio-net header (`struct virtio_net_hdr`, 10 bytes) that precedes every
//! packet on a TUN device opened with IFF_VNET_HDR.
//!
//! On reads it tells whether the kernel handed over a superpacket to be segmented
//! (GSO, with the segment size) and whether a checksum is left partial; on writes it
//! lets tunloom hand the kernel a coalesced superpacket (GRO) with a partial checksum.
//! Multi-byte fields are little-endian (virtio 1.0; tunloom sets no TUNSETVNETBE).

use super::{Error, Result};

pub const HEADER_LEN: usize = 10;

/// `flags`: the checksum from `csum_start` on is partial and must be completed.
pub const F_NEEDS_CSUM: u8 = 1;

/// What the packet is, for segmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsoType {
    None,
    TcpV4,
    TcpV6,
    /// UDP segmentation (USO), either family.
    UdpL4,
}

impl GsoType {
    fn from_u8(v: u8) -> Result<GsoType> {
        // The ECN bit (0x80) only says the superpacket may carry CWR; segmentation
        // handles CWR per segment, so the bit is accepted and otherwise ignored.
        match v & !0x80 {
            0 => Ok(GsoType::None),
            1 => Ok(GsoType::TcpV4),
            4 => Ok(GsoType::TcpV6),
            5 => Ok(GsoType::UdpL4),
            _ => Err(Error::Malformed("unknown virtio GSO type")),
        }
    }
    fn to_u8(self) -> u8 {
        match self {
            GsoType::None => 0,
            GsoType::TcpV4 => 1,
            GsoType::TcpV6 => 4,
            GsoType::UdpL4 => 5,
        }
    }
}

/// The value of a virtio-net header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub needs_csum: bool,
    pub gso_type: GsoType,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl Repr {
    /// A header that says "one complete packet".
    pub const NONE: Repr = Repr {
        needs_csum: false,
        gso_type: GsoType::None,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    pub fn parse(b: &[u8]) -> Result<Repr> {
        if b.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Ok(Repr {
            needs_csum: b[0] & F_NEEDS_CSUM != 0,
            gso_type: GsoType::from_u8(b[1])?,
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    pub fn emit(&self, b: &mut [u8]) -> Result<()> {
        if b.len() < HEADER_LEN {
            return Err(Error::Exhausted);
        }
        b[0] = if self.needs_csum { F_NEEDS_CSUM } else { 0 };
        b[1] = self.gso_type.to_u8();
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        Ok(())
    }

    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        // HEADER_LEN bytes always fit.
        let _ = self.emit(&mut b);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A TCPv4 superpacket: NEEDS_CSUM, TCPV4, hdr_len 52, gso_size 1398,
    // csum_start 20, csum_offset 16.
    static BYTES: [u8; 10] = [0x01, 0x01, 52, 0, 0x76, 0x05, 20, 0, 16, 0];
    const REPR: Repr = Repr {
        needs_csum: true,
        gso_type: GsoType::TcpV4,
        hdr_len: 52,
        gso_size: 1398,
        csum_start: 20,
        csum_offset: 16,
    };

    #[test]
    fn test_parse() {
        assert_eq!(Repr::parse(&BYTES), Ok(REPR));
    }

    #[test]
    fn test_emit() {
        assert_eq!(REPR.to_bytes(), BYTES);
        assert_eq!(Repr::NONE.to_bytes(), [0; 10]);
    }

    #[test]
    fn ecn_bit_is_accepted_and_unknown_types_are_not() {
        let mut b = BYTES;
        b[1] = 0x81;
        assert_eq!(Repr::parse(&b).unwrap().gso_type, GsoType::TcpV4);
        b[1] = 3;
        assert!(Repr::parse(&b).is_err());
        assert_eq!(Repr::parse(&b[..9]), Err(Error::Truncated));
    }
}
