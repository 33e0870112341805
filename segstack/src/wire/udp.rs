//! UDP header (RFC 768).
//!
//! ```text
//!  0               16              32
//! +---------------+---------------+
//! |  source port  |   dest port   |
//! +---------------+---------------+
//! |    length     |   checksum    |
//! +---------------+---------------+
//! | data ...
//! ```
//!
//! The checksum covers a pseudo header, the header and the data (a chain of
//! segment lines): [`UdpRepr::parse`] does not verify it, [`verify`] does;
//! [`UdpRepr::emit`] computes it from the data's partial sum, and
//! [`fill_pseudo_checksum`] prepares a header for checksum offload.

use std::net::Ipv4Addr;

use super::checksum::{self, be16, Accumulator};
use super::ipv4::protocol;
use super::WireError;

/// Length of the header.
pub const HEADER_LEN: usize = 8;

/// Offset of the checksum field from the start of the header (the virtio
/// `csum_offset` of UDP).
pub const CHECKSUM_OFFSET: usize = 6;

/// A parsed UDP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UdpRepr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Length of header plus data.
    pub len: u16,
}

impl UdpRepr {
    /// Parses the header at the start of `bytes`; the data is
    /// `bytes[HEADER_LEN..len]` (bytes past `len` are padding). The checksum
    /// is **not** verified: see [`verify`].
    ///
    /// # Errors
    /// [`WireError::Truncated`] if `bytes` is shorter than the header or
    /// than the length field; [`WireError::Malformed`] if the length field is
    /// below [`HEADER_LEN`].
    pub fn parse(bytes: &[u8]) -> Result<UdpRepr, WireError> {
        UdpRepr::parse_header(bytes, bytes.len())
    }

    /// Like [`UdpRepr::parse`], for a datagram of `dgram_len` bytes of which
    /// `bytes` holds at least the header: the length field is checked
    /// against `dgram_len`.
    pub fn parse_header(bytes: &[u8], dgram_len: usize) -> Result<UdpRepr, WireError> {
        if bytes.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let len = be16(bytes, 4);
        if usize::from(len) < HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if usize::from(len) > dgram_len {
            return Err(WireError::Truncated);
        }
        Ok(UdpRepr {
            src_port: be16(bytes, 0),
            dst_port: be16(bytes, 2),
            len,
        })
    }

    /// Length of the header: [`HEADER_LEN`].
    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Length of the data.
    pub fn payload_len(&self) -> usize {
        usize::from(self.len).saturating_sub(HEADER_LEN)
    }

    /// Writes the header into `buf[..HEADER_LEN]` with the checksum over the
    /// pseudo header of `src`/`dst`, the header, and data whose partial sum
    /// is `payload_sum` (a [`checksum::sum`] or [`Accumulator::sum`]; `0` for
    /// no data). A computed checksum of 0 is sent as `0xffff`.
    ///
    /// # Panics
    /// If `buf` is shorter than [`HEADER_LEN`].
    pub fn emit(&self, buf: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, payload_sum: u64) {
        self.emit_header(buf);
        fill_checksum(buf, src, dst, payload_sum);
    }

    /// Writes the header into `buf[..HEADER_LEN]` with a zero checksum field
    /// ("no checksum"), to be completed by [`fill_checksum`] or
    /// [`fill_pseudo_checksum`].
    ///
    /// # Panics
    /// If `buf` is shorter than [`HEADER_LEN`].
    pub fn emit_header(&self, buf: &mut [u8]) {
        let b = &mut buf[..HEADER_LEN];
        b[0..2].copy_from_slice(&self.src_port.to_be_bytes());
        b[2..4].copy_from_slice(&self.dst_port.to_be_bytes());
        b[4..6].copy_from_slice(&self.len.to_be_bytes());
        b[6..8].copy_from_slice(&[0, 0]);
    }
}

/// Computes and stores the checksum of an emitted `header` (its length
/// field already set) whose data has the partial sum `payload_sum`.
///
/// # Panics
/// If `header` is shorter than [`HEADER_LEN`].
pub fn fill_checksum(header: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, payload_sum: u64) {
    let h = &mut header[..HEADER_LEN];
    let len = be16(h, 4);
    let sum = checksum::transport(
        h,
        CHECKSUM_OFFSET,
        (src, dst),
        protocol::UDP,
        u32::from(len),
        payload_sum,
    );
    let c = match sum {
        0 => 0xffff,
        c => c,
    };
    h[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 2].copy_from_slice(&c.to_be_bytes());
}

/// Stores in the checksum field of `header` the folded, **non-complemented**
/// pseudo-header sum for a datagram of `udp_len` bytes, as Linux does for
/// `CHECKSUM_PARTIAL`: the NIC then sums from the header (`csum_start`) to
/// the end and stores the complement at [`CHECKSUM_OFFSET`].
///
/// # Panics
/// If `header` is shorter than [`HEADER_LEN`].
pub fn fill_pseudo_checksum(header: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, udp_len: u16) {
    let len = u32::from(udp_len);
    checksum::put_pseudo(header, CHECKSUM_OFFSET, (src, dst), protocol::UDP, len);
}

/// Verifies the checksum of a datagram from `src` to `dst` given as its
/// header (the first [`HEADER_LEN`] bytes or more, as parsed) followed by
/// the rest of its `len` bytes in chunks. A zero checksum field means the
/// sender computed none and verifies.
///
/// # Errors
/// [`WireError::Truncated`] if `header` is shorter than [`HEADER_LEN`];
/// [`WireError::Checksum`] if the checksum does not verify.
pub fn verify<'a>(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    header: &'a [u8],
    payload: impl IntoIterator<Item = &'a [u8]>,
) -> Result<(), WireError> {
    if header.len() < HEADER_LEN {
        return Err(WireError::Truncated);
    }
    if be16(header, CHECKSUM_OFFSET) == 0 {
        return Ok(());
    }
    let len = be16(header, 4);
    let mut acc = Accumulator::with_sum(checksum::pseudo_header(
        src,
        dst,
        protocol::UDP,
        u32::from(len),
    ));
    acc.add_chunks(std::iter::once(header).chain(payload));
    checksum::verified(&acc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    #[test]
    fn known_checksum() {
        // DNS query 10.0.0.1:53000 -> 10.0.0.2:53, "abc" payload, checked
        // against the RFC 1071 definition over the concatenated bytes.
        let payload = b"abc";
        let r = UdpRepr {
            src_port: 53000,
            dst_port: 53,
            len: 11,
        };
        let mut h = [0; 8];
        r.emit(&mut h, SRC, DST, checksum::sum(0, payload));
        let mut all = Vec::new();
        all.extend_from_slice(&SRC.octets());
        all.extend_from_slice(&DST.octets());
        all.extend_from_slice(&[0, 17, 0, 11]);
        all.extend_from_slice(&h);
        all.extend_from_slice(payload);
        assert_eq!(checksum::fold(checksum::sum(0, &all)), 0xffff);
        assert_eq!(verify(SRC, DST, &h, [&payload[..]]), Ok(()));
        assert_eq!(
            verify(SRC, DST, &h, [&b"abd"[..]]),
            Err(WireError::Checksum)
        );
    }

    #[test]
    fn errors() {
        let mut h = [0, 1, 0, 2, 0, 9, 0, 0];
        assert_eq!(UdpRepr::parse(&h), Err(WireError::Truncated));
        assert_eq!(UdpRepr::parse(&h[..7]), Err(WireError::Truncated));
        h[5] = 7;
        assert_eq!(UdpRepr::parse(&h), Err(WireError::Malformed));
        h[5] = 8;
        assert_eq!(UdpRepr::parse(&h).unwrap().payload_len(), 0);
        // A zero checksum is "none".
        assert_eq!(verify(SRC, DST, &h, []), Ok(()));
    }

    #[test]
    fn offload_completion_gives_the_software_checksum() {
        let payload = b"hello, offload";
        let r = UdpRepr {
            src_port: 1,
            dst_port: 2,
            len: (HEADER_LEN + payload.len()) as u16,
        };
        let mut sw = [0; 8];
        r.emit(&mut sw, SRC, DST, checksum::sum(0, payload));
        let mut hw = [0; 8];
        r.emit_header(&mut hw);
        fill_pseudo_checksum(&mut hw, SRC, DST, r.len);
        // The NIC: sum from csum_start to the end, store the complement.
        let mut acc = Accumulator::new();
        acc.add(&hw);
        acc.add(payload);
        let c = acc.checksum();
        hw[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 2].copy_from_slice(&c.to_be_bytes());
        assert_eq!(hw, sw);
    }

    proptest! {
        #[test]
        fn round_trip_and_verify(src_port in any::<u16>(), dst_port in any::<u16>(),
                                 payload in proptest::collection::vec(any::<u8>(), 0..200),
                                 pad in 0usize..20, s in any::<u32>(), d in any::<u32>()) {
            let (s, d) = (Ipv4Addr::from(s), Ipv4Addr::from(d));
            let r = UdpRepr { src_port, dst_port, len: (HEADER_LEN + payload.len()) as u16 };
            let mut buf = vec![0; HEADER_LEN];
            r.emit(&mut buf, s, d, checksum::sum(0, &payload));
            prop_assert_ne!(be16(&buf, 6), 0);
            buf.extend_from_slice(&payload);
            buf.resize(buf.len() + pad, 0);
            prop_assert_eq!(UdpRepr::parse(&buf), Ok(r));
            let (k, end) = (HEADER_LEN + payload.len() / 3, usize::from(r.len));
            prop_assert_eq!(verify(s, d, &buf[..k], [&buf[k..end]]), Ok(()));
        }

        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = UdpRepr::parse(&data);
        }
    }
}
