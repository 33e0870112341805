//! The Internet checksum: nicdma's (one implementation for the workspace),
//! re-exported where the wire formats use it.

use std::net::Ipv4Addr;

use super::WireError;

pub use nicdma::checksum::{checksum, checksum_chunks, fold, pseudo_header, sum, Accumulator};

/// Reads the big-endian `u16` at `at` (caller checked the bounds).
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Reads the big-endian `u32` at `at` (caller checked the bounds).
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads the IPv4 address at `at` (caller checked the bounds).
pub(crate) fn ip4(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

/// `Ok` when the message added to `acc` (checksum field included) verifies,
/// else [`WireError::Checksum`].
pub(crate) fn verified(acc: &Accumulator) -> Result<(), WireError> {
    if acc.verifies() {
        Ok(())
    } else {
        Err(WireError::Checksum)
    }
}

/// Stores at `at` in `header` the folded, non-complemented sum of the
/// pseudo header (`CHECKSUM_PARTIAL`: the NIC completes it).
pub(crate) fn put_pseudo(
    header: &mut [u8],
    at: usize,
    (src, dst): (Ipv4Addr, Ipv4Addr),
    protocol: u8,
    len: u32,
) {
    let c = fold(pseudo_header(src, dst, protocol, len));
    header[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// The checksum of a transport header `h` whose checksum field at `at` is
/// zeroed first, over the pseudo header and a payload of partial sum
/// `payload_sum`; the field is left zero.
pub(crate) fn transport(
    h: &mut [u8],
    at: usize,
    (src, dst): (Ipv4Addr, Ipv4Addr),
    protocol: u8,
    len: u32,
    payload_sum: u64,
) -> u16 {
    h[at..at + 2].copy_from_slice(&[0, 0]);
    !fold(sum(pseudo_header(src, dst, protocol, len) + payload_sum, h))
}
