//! Wire formats: zero-copy views and small value types for every header tunloom
//! reads or writes.
//!
//! IPv4, IPv6, UDP, TCP and ICMP are read through etherparse's `*Slice` types. The
//! formats etherparse lacks have their own view (`Packet<T: AsRef<[u8]>>`, with a private
//! `field` module of byte ranges) and value (`Repr` with `parse` / `emit` /
//! `buffer_len`), in the manner of smoltcp:
//!
//! - [`vxlan`]: the 8-byte VXLAN header (RFC 7348);
//! - [`ether`]: the inner Ethernet II header tunloom synthesises, and node MACs;
//! - [`control`]: the peer control protocol's hello message (UDP 6783);
//! - [`icmp`]: emitters for the ICMP / ICMPv6 errors the dataplane sends back.
//!
//! This module touches no file descriptor, allocates nothing, and never panics on
//! input: every view checks lengths in `new_checked` before any accessor runs.

pub mod checksum;
pub mod control;
pub mod ether;
pub mod icmp;
pub mod virtio;
pub mod vxlan;

/// Why bytes could not be read as a header. Small and `Copy` so the hot path can
/// return it without cost; the dataplane maps it to a `DropReason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The buffer ends before the header (or a length it declares) does.
    #[error("truncated")]
    Truncated,
    /// A field holds a value the format does not allow.
    #[error("malformed: {0}")]
    Malformed(&'static str),
    /// The output buffer is too small for what was to be emitted.
    #[error("output buffer too small")]
    Exhausted,
    /// A versioned format (the peer control message) in a version this build does
    /// not speak: from a newer tunloom, or garbage that happens to carry the magic.
    #[error("unsupported version {0}")]
    Version(u8),
    /// The message's authentication code is missing or wrong.
    #[error("authentication failed")]
    Unauthenticated,
    /// An ICMP error must not be sent in answer to this packet (RFC 1122 3.2.2,
    /// RFC 4443 2.4 (e)): it is itself an ICMP error, a non-first fragment, or
    /// addressed to or from a multicast or broadcast address.
    #[error("no ICMP error may answer this packet")]
    Suppressed,
}

pub type Result<T> = core::result::Result<T, Error>;
