//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! Whole sums go through etherparse's `Sum16BitWords`; this module adds the in-place
//! update the dataplane needs when it rewrites one 16-bit word of a header.

/// Updates a stored checksum `old_csum` after a 16-bit word of the covered data
/// changed from `old` to `new` (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
pub fn update_word(old_csum: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!old_csum) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The checksum of `data` alone, as stored in a header (ones' complement of the sum).
pub fn of(data: &[u8]) -> u16 {
    etherparse::checksum::Sum16BitWords::new()
        .add_slice(data)
        .ones_complement()
        .to_be()
}

#[cfg(test)]
mod tests {
    use super::*;

    // An IPv4 header from RFC 1071 practice: 45 00 00 73 00 00 40 00 40 11 [b8 61] c0 a8 00 01 c0 a8 00 c7
    static HDR: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    #[test]
    fn whole_sum_of_valid_header_is_zero() {
        assert_eq!(of(&HDR), 0);
        let mut h = HDR;
        h[10] = 0;
        h[11] = 0;
        assert_eq!(of(&h), 0xb861);
    }

    #[test]
    fn incremental_update_matches_recompute() {
        let mut h = HDR;
        // TTL 0x40 -> 0x3f in the word (ttl, proto).
        let old = u16::from_be_bytes([h[8], h[9]]);
        h[8] -= 1;
        let new = u16::from_be_bytes([h[8], h[9]]);
        let upd = update_word(0xb861, old, new);
        h[10] = 0;
        h[11] = 0;
        assert_eq!(upd, of(&h));
    }
}
