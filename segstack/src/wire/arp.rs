//! ARP (RFC 826) for IPv4 over Ethernet, the only combination handled.
//!
//! ```text
//!  0        2        4    5    6        8            14       18           24       28
//! +--------+--------+----+----+--------+------------+--------+------------+--------+
//! | htype  | ptype  |hlen|plen| oper   | sender hw  | sndr ip| target hw  | tgt ip |
//! | 1      | 0x0800 | 6  | 4  |        |            |        |            |        |
//! +--------+--------+----+----+--------+------------+--------+------------+--------+
//! ```

use std::net::Ipv4Addr;

use super::checksum::{be16, ip4};
use super::ethernet::{ethertype, EthernetAddress};
use super::WireError;

/// Length of an Ethernet/IPv4 ARP packet.
pub const LEN: usize = 28;

/// Hardware type Ethernet.
pub const HTYPE_ETHERNET: u16 = 1;

/// ARP operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArpOp {
    /// Request (1).
    Request,
    /// Reply (2).
    Reply,
    /// Any other operation code (never 1 or 2).
    Other(u16),
}

impl From<u16> for ArpOp {
    fn from(v: u16) -> ArpOp {
        match v {
            1 => ArpOp::Request,
            2 => ArpOp::Reply,
            v => ArpOp::Other(v),
        }
    }
}

impl From<ArpOp> for u16 {
    fn from(op: ArpOp) -> u16 {
        match op {
            ArpOp::Request => 1,
            ArpOp::Reply => 2,
            ArpOp::Other(v) => v,
        }
    }
}

/// A parsed Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArpRepr {
    /// Operation.
    pub op: ArpOp,
    /// Sender hardware address.
    pub sender_hw: EthernetAddress,
    /// Sender protocol address.
    pub sender_ip: Ipv4Addr,
    /// Target hardware address (zero in a request).
    pub target_hw: EthernetAddress,
    /// Target protocol address.
    pub target_ip: Ipv4Addr,
}

impl ArpRepr {
    /// Parses the ARP packet at the start of `bytes` (trailing bytes, such as
    /// Ethernet padding, are ignored).
    ///
    /// # Errors
    /// [`WireError::Truncated`] if shorter than its fields;
    /// [`WireError::Unsupported`] if it is not Ethernet (htype 1) / IPv4
    /// (ptype 0x0800); [`WireError::Malformed`] if it is, but its address
    /// lengths are not 6 and 4.
    pub fn parse(bytes: &[u8]) -> Result<ArpRepr, WireError> {
        if bytes.len() < 8 {
            return Err(WireError::Truncated);
        }
        if be16(bytes, 0) != HTYPE_ETHERNET || be16(bytes, 2) != ethertype::IPV4 {
            return Err(WireError::Unsupported);
        }
        if bytes[4] != 6 || bytes[5] != 4 {
            return Err(WireError::Malformed);
        }
        if bytes.len() < LEN {
            return Err(WireError::Truncated);
        }
        Ok(ArpRepr {
            op: ArpOp::from(be16(bytes, 6)),
            sender_hw: EthernetAddress::read(&bytes[8..14]),
            sender_ip: ip4(bytes, 14),
            target_hw: EthernetAddress::read(&bytes[18..24]),
            target_ip: ip4(bytes, 24),
        })
    }

    /// Length of the packet: [`LEN`].
    pub const fn buffer_len(&self) -> usize {
        LEN
    }

    /// Writes the packet into `buf[..LEN]`.
    ///
    /// # Panics
    /// If `buf` is shorter than [`LEN`].
    pub fn emit(&self, buf: &mut [u8]) {
        buf[0..2].copy_from_slice(&HTYPE_ETHERNET.to_be_bytes());
        buf[2..4].copy_from_slice(&ethertype::IPV4.to_be_bytes());
        buf[4] = 6;
        buf[5] = 4;
        buf[6..8].copy_from_slice(&u16::from(self.op).to_be_bytes());
        buf[8..14].copy_from_slice(&self.sender_hw.0);
        buf[14..18].copy_from_slice(&self.sender_ip.octets());
        buf[18..24].copy_from_slice(&self.target_hw.0);
        buf[24..28].copy_from_slice(&self.target_ip.octets());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A request captured from Linux: who has 10.0.0.2? tell 10.0.0.1.
    const REQUEST: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 10, 0,
        0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 2,
    ];

    #[test]
    fn parses_a_request() {
        let r = ArpRepr::parse(&REQUEST).unwrap();
        assert_eq!(r.op, ArpOp::Request);
        assert_eq!(
            r.sender_hw,
            EthernetAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x56])
        );
        assert_eq!(r.sender_ip, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(r.target_ip, Ipv4Addr::new(10, 0, 0, 2));
        let mut out = [0; LEN];
        r.emit(&mut out);
        assert_eq!(out, REQUEST);
    }

    #[test]
    fn rejects_other_formats() {
        let mut p = REQUEST;
        p[1] = 6; // IEEE 802 hardware
        assert_eq!(ArpRepr::parse(&p), Err(WireError::Unsupported));
        let mut p = REQUEST;
        p[2] = 0x86; // IPv6
        assert_eq!(ArpRepr::parse(&p), Err(WireError::Unsupported));
        let mut p = REQUEST;
        p[4] = 8;
        assert_eq!(ArpRepr::parse(&p), Err(WireError::Malformed));
        let mut p = REQUEST;
        p[5] = 16;
        assert_eq!(ArpRepr::parse(&p), Err(WireError::Malformed));
        assert_eq!(ArpRepr::parse(&REQUEST[..27]), Err(WireError::Truncated));
        assert_eq!(ArpRepr::parse(&REQUEST[..5]), Err(WireError::Truncated));
    }

    proptest! {
        #[test]
        fn round_trip(op in any::<u16>(), sh in any::<[u8; 6]>(), si in any::<u32>(),
                      th in any::<[u8; 6]>(), ti in any::<u32>()) {
            let r = ArpRepr {
                op: ArpOp::from(op),
                sender_hw: EthernetAddress(sh),
                sender_ip: Ipv4Addr::from(si),
                target_hw: EthernetAddress(th),
                target_ip: Ipv4Addr::from(ti),
            };
            let mut buf = [0; LEN + 18];
            r.emit(&mut buf);
            prop_assert_eq!(ArpRepr::parse(&buf), Ok(r));
        }

        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = ArpRepr::parse(&data);
        }
    }
}
