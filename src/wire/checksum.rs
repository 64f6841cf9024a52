//! The Internet checksum (RFC 1071): whole sums, pseudo-headers, and the incremental
//! update of RFC 1624.
//!
//! [`sum`] is the dataplane's hot loop when it splits TCP superpackets (one pass over
//! every payload byte), so it adds 32-bit words into four 64-bit accumulators, which
//! compilers turn into wide vector adds; carries are folded only at the end.

/// Ones'-complement sum of `data` as 16-bit big-endian words (an odd last byte is
/// padded with zero), folded to at most 17 bits.
///
/// The loop adds native-endian 32-bit words into 64-bit lanes without byte swaps:
/// the ones'-complement sum is byte-order independent (RFC 1071 §2(B)), so the folded
/// little-endian sum is the big-endian one with its two bytes swapped.
#[inline]
pub fn sum(data: &[u8]) -> u64 {
    let mut acc = [0u64; 8];
    let mut chunks = data.chunks_exact(32);
    for c in &mut chunks {
        for (i, a) in acc.iter_mut().enumerate() {
            *a += u64::from(u32::from_ne_bytes([c[4 * i], c[4 * i + 1], c[4 * i + 2], c[4 * i + 3]]));
        }
    }
    let mut total: u64 = acc.iter().sum();
    let rest = chunks.remainder();
    let mut words = rest.chunks_exact(2);
    for w in &mut words {
        total += u64::from(u16::from_ne_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        total += u64::from(u16::from_ne_bytes([*last, 0]));
    }
    u64::from(u16::from_be_bytes(fold(total).to_ne_bytes()))
}

/// Folds a sum to 16 bits (not complemented).
#[inline]
pub fn fold(mut s: u64) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The pseudo-header sum for a transport header of `len` bytes and protocol
/// `proto`, between the addresses of the IPv4 or IPv6 header `ip` (IPv4 addresses at
/// bytes 12..20, IPv6 at 8..40).
#[inline]
pub fn pseudo_header(ip: &[u8], proto: u8, len: usize) -> u64 {
    let addrs = if ip[0] >> 4 == 6 { &ip[8..40] } else { &ip[12..20] };
    sum(addrs) + u64::from(proto) + len as u64
}

/// Updates a stored checksum `old_csum` after a 16-bit word of the covered data
/// changed from `old` to `new` (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
pub fn update_word(old_csum: u16, old: u16, new: u16) -> u16 {
    !fold(u64::from(!old_csum) + u64::from(!old) + u64::from(new))
}

/// The checksum of `data` alone, as stored in a header (ones' complement of the sum).
pub fn of(data: &[u8]) -> u16 {
    !fold(sum(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    // An IPv4 header: 45 00 00 73 00 00 40 00 40 11 [b8 61] c0 a8 00 01 c0 a8 00 c7
    static HDR: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
        0x00, 0xc7,
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
    fn matches_etherparse_on_every_length_and_alignment() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for start in 0..4 {
            for len in 0..200 {
                let d = &data[start..start + len];
                let want = etherparse::checksum::Sum16BitWords::new()
                    .add_slice(d)
                    .ones_complement()
                    .to_be();
                assert_eq!(of(d), want, "start {start} len {len}");
            }
        }
    }

    #[test]
    fn incremental_update_matches_recompute() {
        let mut h = HDR;
        let old = u16::from_be_bytes([h[8], h[9]]);
        h[8] -= 1;
        let new = u16::from_be_bytes([h[8], h[9]]);
        let upd = update_word(0xb861, old, new);
        h[10] = 0;
        h[11] = 0;
        assert_eq!(upd, of(&h));
    }
}
