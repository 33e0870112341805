//! ICMPv4 (RFC 792): echo request and reply, destination unreachable, and
//! the rest as opaque type/code pairs.
//!
//! ```text
//!  0       8       16              32
//! +-------+-------+---------------+
//! | type  | code  |   checksum    |
//! +-------+-------+---------------+
//! |  ident (echo) | seq_no (echo) |   (other types: "rest of header")
//! +---------------+---------------+
//! | data ...
//! ```
//!
//! The checksum covers the whole message, whose payload is usually a chain
//! of segment lines: [`IcmpRepr::parse`] reads the 8-byte header only and
//! does **not** verify it; the caller verifies with [`verify`] (header plus
//! payload chunks), and [`IcmpRepr::emit`] takes the payload's partial sum
//! (from a [`checksum::Accumulator`]).

use super::checksum::{self, be16, Accumulator};
use super::WireError;

/// Length of the header (type, code, checksum and 4 bytes of rest of
/// header).
pub const HEADER_LEN: usize = 8;

/// ICMP message types.
pub mod kind {
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 0;
    /// Destination unreachable.
    pub const DEST_UNREACHABLE: u8 = 3;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 8;
}

/// Destination-unreachable codes.
pub mod unreachable {
    /// Network unreachable.
    pub const NET: u8 = 0;
    /// Host unreachable.
    pub const HOST: u8 = 1;
    /// Protocol unreachable.
    pub const PROTOCOL: u8 = 2;
    /// Port unreachable.
    pub const PORT: u8 = 3;
    /// Fragmentation needed and DF set.
    pub const FRAG_NEEDED: u8 = 4;
}

/// A parsed ICMPv4 header.
///
/// Echo messages with a code other than 0 parse as [`IcmpRepr::Other`], so
/// that parsing and emitting round-trip; `Other` drops the 4 "rest of
/// header" bytes (and emits them as zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IcmpRepr {
    /// Echo request (type 8, code 0).
    EchoRequest {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq_no: u16,
    },
    /// Echo reply (type 0, code 0).
    EchoReply {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq_no: u16,
    },
    /// Destination unreachable (type 3); the payload is the offending IP
    /// header and the first 8 bytes of its payload.
    DestUnreachable {
        /// Reason (see [`unreachable`](mod@unreachable)).
        code: u8,
    },
    /// Any other message.
    Other {
        /// Type.
        kind: u8,
        /// Code.
        code: u8,
    },
}

impl IcmpRepr {
    /// Parses the 8-byte header at the start of `bytes` (the payload
    /// follows). The checksum is **not** verified: see [`verify`].
    ///
    /// # Errors
    /// [`WireError::Truncated`] if `bytes` is shorter than [`HEADER_LEN`].
    pub fn parse(bytes: &[u8]) -> Result<IcmpRepr, WireError> {
        if bytes.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let (t, code) = (bytes[0], bytes[1]);
        let (ident, seq_no) = (be16(bytes, 4), be16(bytes, 6));
        Ok(match (t, code) {
            (kind::ECHO_REQUEST, 0) => IcmpRepr::EchoRequest { ident, seq_no },
            (kind::ECHO_REPLY, 0) => IcmpRepr::EchoReply { ident, seq_no },
            (kind::DEST_UNREACHABLE, code) => IcmpRepr::DestUnreachable { code },
            (kind, code) => IcmpRepr::Other { kind, code },
        })
    }

    /// The message type.
    pub fn kind(&self) -> u8 {
        match *self {
            IcmpRepr::EchoRequest { .. } => kind::ECHO_REQUEST,
            IcmpRepr::EchoReply { .. } => kind::ECHO_REPLY,
            IcmpRepr::DestUnreachable { .. } => kind::DEST_UNREACHABLE,
            IcmpRepr::Other { kind, .. } => kind,
        }
    }

    /// The message code.
    pub fn code(&self) -> u8 {
        match *self {
            IcmpRepr::EchoRequest { .. } | IcmpRepr::EchoReply { .. } => 0,
            IcmpRepr::DestUnreachable { code } | IcmpRepr::Other { code, .. } => code,
        }
    }

    /// Length of the header: [`HEADER_LEN`].
    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header into `buf[..HEADER_LEN]`, with the checksum of the
    /// header and a payload whose partial sum is `payload_sum` (a
    /// [`checksum::sum`] or [`Accumulator::sum`] of the payload bytes; `0`
    /// for no payload).
    ///
    /// # Panics
    /// If `buf` is shorter than [`HEADER_LEN`].
    pub fn emit(&self, buf: &mut [u8], payload_sum: u64) {
        let b = &mut buf[..HEADER_LEN];
        b[0] = self.kind();
        b[1] = self.code();
        b[2..4].copy_from_slice(&[0, 0]);
        let (ident, seq_no) = match *self {
            IcmpRepr::EchoRequest { ident, seq_no } | IcmpRepr::EchoReply { ident, seq_no } => {
                (ident, seq_no)
            }
            _ => (0, 0),
        };
        b[4..6].copy_from_slice(&ident.to_be_bytes());
        b[6..8].copy_from_slice(&seq_no.to_be_bytes());
        let c = !checksum::fold(checksum::sum(payload_sum, b));
        b[2..4].copy_from_slice(&c.to_be_bytes());
    }
}

/// Verifies the checksum of a message given as its header bytes (the first
/// [`HEADER_LEN`] bytes or more) followed by the payload in chunks of any
/// lengths.
///
/// # Errors
/// [`WireError::Checksum`] if it does not verify.
pub fn verify<'a>(
    header: &'a [u8],
    payload: impl IntoIterator<Item = &'a [u8]>,
) -> Result<(), WireError> {
    let mut acc = Accumulator::new();
    acc.add_chunks(std::iter::once(header).chain(payload));
    checksum::verified(&acc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `ping` from Linux: echo request id 0x1c46 seq 1 with 8 bytes of data.
    const PING: [u8; 16] = [
        0x08, 0x00, 0x00, 0x00, 0x1c, 0x46, 0x00, 0x01, 1, 2, 3, 4, 5, 6, 7, 8,
    ];

    fn checksummed(mut m: Vec<u8>) -> Vec<u8> {
        m[2..4].copy_from_slice(&[0, 0]);
        let c = checksum::checksum(&m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        m
    }

    #[test]
    fn echo_request() {
        let m = checksummed(PING.to_vec());
        let r = IcmpRepr::parse(&m).unwrap();
        assert_eq!(
            r,
            IcmpRepr::EchoRequest {
                ident: 0x1c46,
                seq_no: 1
            }
        );
        assert_eq!(verify(&m[..8], [&m[8..11], &m[11..]]), Ok(()));
        let mut out = [0; 8];
        r.emit(&mut out, checksum::sum(0, &m[8..]));
        assert_eq!(out, m[..8]);
        let mut bad = m.clone();
        bad[12] ^= 1;
        assert_eq!(verify(&bad[..8], [&bad[8..]]), Err(WireError::Checksum));
        assert_eq!(IcmpRepr::parse(&m[..7]), Err(WireError::Truncated));
    }

    #[test]
    fn kinds() {
        let mut m = PING;
        m[1] = 1;
        assert_eq!(
            IcmpRepr::parse(&m),
            Ok(IcmpRepr::Other { kind: 8, code: 1 })
        );
        m[0] = 3;
        m[1] = 3;
        assert_eq!(
            IcmpRepr::parse(&m),
            Ok(IcmpRepr::DestUnreachable { code: 3 })
        );
        m[0] = 11;
        m[1] = 0;
        assert_eq!(
            IcmpRepr::parse(&m),
            Ok(IcmpRepr::Other { kind: 11, code: 0 })
        );
    }

    fn repr() -> impl Strategy<Value = IcmpRepr> {
        prop_oneof![
            (any::<u16>(), any::<u16>())
                .prop_map(|(ident, seq_no)| IcmpRepr::EchoRequest { ident, seq_no }),
            (any::<u16>(), any::<u16>())
                .prop_map(|(ident, seq_no)| IcmpRepr::EchoReply { ident, seq_no }),
            any::<u8>().prop_map(|code| IcmpRepr::DestUnreachable { code }),
            (any::<u8>(), any::<u8>())
                .prop_map(|(kind, code)| IcmpRepr::Other { kind, code })
                .prop_filter("canonical", |r| IcmpRepr::parse(&{
                    let mut b = [0; 8];
                    b[0] = r.kind();
                    b[1] = r.code();
                    b
                }) == Ok(*r)),
        ]
    }

    proptest! {
        #[test]
        fn round_trip_and_verify(r in repr(), payload in proptest::collection::vec(any::<u8>(), 0..100),
                                 cut in any::<prop::sample::Index>()) {
            let mut buf = vec![0; HEADER_LEN];
            r.emit(&mut buf, checksum::sum(0, &payload));
            prop_assert_eq!(IcmpRepr::parse(&buf), Ok(r));
            let cut = cut.index(payload.len() + 1);
            prop_assert_eq!(verify(&buf, [&payload[..cut], &payload[cut..]]), Ok(()));
        }

        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = IcmpRepr::parse(&data);
        }
    }
}
