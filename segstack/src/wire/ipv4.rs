//! IPv4 header (RFC 791). Options are skipped on receive and never sent;
//! fragments are not reassembled (they parse as [`WireError::Unsupported`]).
//!
//! ```text
//!  0       4       8               16    19                       32
//! +-------+-------+---------------+-----+-------------------------+
//! |version|  IHL  |      TOS      |       total length            |
//! +-------+-------+---------------+-----+-------------------------+
//! |        identification         |flags|   fragment offset       |
//! +---------------+---------------+-----+-------------------------+
//! |      TTL      |   protocol    |      header checksum          |
//! +---------------+---------------+-------------------------------+
//! |                       source address                          |
//! |                     destination address                       |
//! |                 options (IHL > 5) ...                         |
//! +---------------------------------------------------------------+
//! ```

use std::net::Ipv4Addr;

use super::checksum::{self, be16, ip4};
use super::WireError;

/// Length of a header without options (the only kind emitted).
pub const HEADER_LEN: usize = 20;

/// Largest payload a datagram with a 20-byte header can carry.
pub const MAX_PAYLOAD_LEN: usize = 65535 - HEADER_LEN;

/// The "don't fragment" flag in the flags/fragment-offset word.
const FLAG_DF: u16 = 0x4000;
/// The "more fragments" flag.
const FLAG_MF: u16 = 0x2000;
/// The fragment offset bits.
const FRAG_OFFSET: u16 = 0x1fff;

/// IP protocol numbers.
pub mod protocol {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
}

/// A parsed IPv4 header (options are dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Repr {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Protocol of the payload (see [`protocol`]).
    pub protocol: u8,
    /// Time to live.
    pub ttl: u8,
    /// Type of service (DSCP and ECN).
    pub tos: u8,
    /// Identification.
    pub ident: u16,
    /// The "don't fragment" flag.
    pub dont_frag: bool,
    /// Length of the payload (total length minus header length).
    pub payload_len: usize,
}

impl Ipv4Repr {
    /// Parses the header at the start of `bytes` and returns it with the
    /// header length (options included): the payload is
    /// `bytes[header_len..header_len + repr.payload_len]`. `bytes` may be
    /// longer than the total length (Ethernet padding).
    ///
    /// # Errors
    /// - [`WireError::Truncated`]: `bytes` is shorter than the header or the
    ///   total length;
    /// - [`WireError::Malformed`]: version not 4, IHL below 5, or total
    ///   length below the header length;
    /// - [`WireError::Checksum`]: the header checksum does not verify;
    /// - [`WireError::Unsupported`]: a fragment (MF set or offset not 0).
    pub fn parse(bytes: &[u8]) -> Result<(Ipv4Repr, usize), WireError> {
        Ipv4Repr::parse_header(bytes, bytes.len())
    }

    /// Like [`Ipv4Repr::parse`], for a packet of `packet_len` bytes of which
    /// `bytes` holds at least the header (the rest stays where it is, e.g. in
    /// a segment): the total length is checked against `packet_len`.
    pub fn parse_header(bytes: &[u8], packet_len: usize) -> Result<(Ipv4Repr, usize), WireError> {
        if bytes.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if bytes[0] >> 4 != 4 {
            return Err(WireError::Malformed);
        }
        let header_len = usize::from(bytes[0] & 0x0f) * 4;
        if header_len < HEADER_LEN {
            return Err(WireError::Malformed);
        }
        let total_len = usize::from(be16(bytes, 2));
        if total_len < header_len {
            return Err(WireError::Malformed);
        }
        if packet_len < total_len {
            return Err(WireError::Truncated);
        }
        if bytes.len() < header_len {
            return Err(WireError::Truncated);
        }
        if checksum::fold(checksum::sum(0, &bytes[..header_len])) != 0xffff {
            return Err(WireError::Checksum);
        }
        let frag = be16(bytes, 6);
        if frag & FLAG_MF != 0 || frag & FRAG_OFFSET != 0 {
            return Err(WireError::Unsupported);
        }
        let repr = Ipv4Repr {
            src: ip4(bytes, 12),
            dst: ip4(bytes, 16),
            protocol: bytes[9],
            ttl: bytes[8],
            tos: bytes[1],
            ident: be16(bytes, 4),
            dont_frag: frag & FLAG_DF != 0,
            payload_len: total_len - header_len,
        };
        Ok((repr, header_len))
    }

    /// Length of the emitted header: [`HEADER_LEN`].
    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Header plus payload length.
    pub const fn total_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// Writes a 20-byte header with a correct checksum into
    /// `buf[..HEADER_LEN]`.
    ///
    /// # Panics
    /// If `buf` is shorter than [`HEADER_LEN`] or `payload_len` exceeds
    /// [`MAX_PAYLOAD_LEN`].
    pub fn emit(&self, buf: &mut [u8]) {
        assert!(
            self.payload_len <= MAX_PAYLOAD_LEN,
            "IPv4 payload of {} bytes",
            self.payload_len
        );
        let b = &mut buf[..HEADER_LEN];
        b[0] = 0x45;
        b[1] = self.tos;
        b[2..4].copy_from_slice(&(self.total_len() as u16).to_be_bytes());
        b[4..6].copy_from_slice(&self.ident.to_be_bytes());
        let frag = if self.dont_frag { FLAG_DF } else { 0 };
        b[6..8].copy_from_slice(&frag.to_be_bytes());
        b[8] = self.ttl;
        b[9] = self.protocol;
        b[10..12].copy_from_slice(&[0, 0]);
        b[12..16].copy_from_slice(&self.src.octets());
        b[16..20].copy_from_slice(&self.dst.octets());
        let c = checksum::checksum(b);
        b[10..12].copy_from_slice(&c.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A UDP datagram header from Linux (checksum b861), 0x73 bytes long.
    const HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    fn packet() -> Vec<u8> {
        let mut p = HEADER.to_vec();
        p.resize(0x73, 0xaa);
        p
    }

    fn with_checksum(mut h: Vec<u8>) -> Vec<u8> {
        let hl = usize::from(h[0] & 0xf) * 4;
        h[10..12].copy_from_slice(&[0, 0]);
        let c = checksum::checksum(&h[..hl]);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }

    #[test]
    fn parses_a_real_header() {
        let (r, hl) = Ipv4Repr::parse(&packet()).unwrap();
        assert_eq!(hl, 20);
        assert_eq!(r.src, Ipv4Addr::new(192, 168, 0, 1));
        assert_eq!(r.dst, Ipv4Addr::new(192, 168, 0, 199));
        assert_eq!(r.protocol, protocol::UDP);
        assert_eq!((r.ttl, r.tos, r.ident, r.dont_frag), (64, 0, 0, true));
        assert_eq!(r.payload_len, 0x73 - 20);
        let mut out = [0; 20];
        r.emit(&mut out);
        assert_eq!(out, HEADER);
    }

    #[test]
    fn padding_is_allowed_and_options_skipped() {
        let mut p = packet();
        p.extend_from_slice(&[0; 10]);
        assert_eq!(Ipv4Repr::parse(&p).unwrap().0.payload_len, 0x73 - 20);
        // IHL 6: one 4-byte option word (NOP NOP NOP EOL).
        let mut p = HEADER.to_vec();
        p[0] = 0x46;
        p.extend_from_slice(&[1, 1, 1, 0]);
        p.resize(0x73, 0);
        let p = with_checksum(p);
        let (r, hl) = Ipv4Repr::parse(&p).unwrap();
        assert_eq!((hl, r.payload_len), (24, 0x73 - 24));
    }

    #[test]
    fn errors() {
        let p = packet();
        assert_eq!(Ipv4Repr::parse(&p[..19]), Err(WireError::Truncated));
        assert_eq!(Ipv4Repr::parse(&p[..0x72]), Err(WireError::Truncated));
        let mut q = p.clone();
        q[0] = 0x65;
        assert_eq!(Ipv4Repr::parse(&q), Err(WireError::Malformed));
        let mut q = p.clone();
        q[0] = 0x44;
        assert_eq!(Ipv4Repr::parse(&q), Err(WireError::Malformed));
        let mut q = p.clone();
        q[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(Ipv4Repr::parse(&q), Err(WireError::Malformed));
        let mut q = p.clone();
        q[8] = 63;
        assert_eq!(Ipv4Repr::parse(&q), Err(WireError::Checksum));
        let mut q = p.clone();
        q[6] = 0x20; // MF
        assert_eq!(
            Ipv4Repr::parse(&with_checksum(q)),
            Err(WireError::Unsupported)
        );
        let mut q = p;
        q[6..8].copy_from_slice(&[0x40, 0x01]); // DF, offset 8
        assert_eq!(
            Ipv4Repr::parse(&with_checksum(q)),
            Err(WireError::Unsupported)
        );
    }

    prop_compose! {
        /// Any header this module can emit.
        pub fn repr()(src in any::<u32>(), dst in any::<u32>(), protocol in any::<u8>(),
                      ttl in any::<u8>(), tos in any::<u8>(), ident in any::<u16>(),
                      dont_frag in any::<bool>(), payload_len in 0..=MAX_PAYLOAD_LEN) -> Ipv4Repr {
            Ipv4Repr { src: src.into(), dst: dst.into(), protocol, ttl, tos, ident, dont_frag, payload_len }
        }
    }

    proptest! {
        #[test]
        fn round_trip(r in repr(), pad in 0usize..30) {
            let mut buf = vec![0; r.total_len() + pad];
            r.emit(&mut buf);
            prop_assert_eq!(Ipv4Repr::parse(&buf), Ok((r, HEADER_LEN)));
        }

        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = Ipv4Repr::parse(&data);
        }

        #[test]
        fn parse_never_panics_on_checksummed_headers(
            mut data in proptest::collection::vec(any::<u8>(), 20..100),
        ) {
            data[0] = 0x40 | (data[0] & 0xf);
            let hl = (usize::from(data[0] & 0xf) * 4).clamp(20, data.len() & !3);
            data[10..12].copy_from_slice(&[0, 0]);
            let c = checksum::checksum(&data[..hl]);
            data[10..12].copy_from_slice(&c.to_be_bytes());
            if let Ok((r, hl)) = Ipv4Repr::parse(&data) {
                prop_assert!(hl + r.payload_len <= data.len());
            }
        }
    }
}
