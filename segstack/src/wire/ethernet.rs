//! Ethernet II frame header (IEEE 802.3 with an EtherType).
//!
//! ```text
//!  0                 6                 12        14
//! +-----------------+-----------------+---------+---------------
//! | destination     | source          | type    | payload ...
//! +-----------------+-----------------+---------+---------------
//! ```

use std::fmt;

use super::WireError;

/// Length of the header.
pub const HEADER_LEN: usize = 14;

/// EtherType values.
pub mod ethertype {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// ARP.
    pub const ARP: u16 = 0x0806;
}

/// A 48-bit MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct EthernetAddress(pub [u8; 6]);

impl EthernetAddress {
    /// The broadcast address `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: EthernetAddress = EthernetAddress([0xff; 6]);

    /// The broadcast address `ff:ff:ff:ff:ff:ff`.
    pub const fn broadcast() -> EthernetAddress {
        EthernetAddress::BROADCAST
    }

    /// The address in the first 6 bytes of `b` (caller checked the bounds).
    pub(crate) fn read(b: &[u8]) -> EthernetAddress {
        let mut a = [0; 6];
        a.copy_from_slice(&b[..6]);
        EthernetAddress(a)
    }

    /// Its 6 bytes.
    pub const fn as_bytes(&self) -> &[u8; 6] {
        &self.0
    }

    /// Whether it is the broadcast address.
    pub fn is_broadcast(&self) -> bool {
        *self == EthernetAddress::BROADCAST
    }

    /// Whether it is a group address (I/G bit set; broadcast included).
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// Whether it is an individual address (I/G bit clear).
    pub fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }

    /// Whether it is locally administered (U/L bit set).
    pub fn is_local(&self) -> bool {
        self.0[0] & 0x02 != 0
    }
}

impl fmt::Display for EthernetAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for EthernetAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A parsed Ethernet II header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EthernetRepr {
    /// Destination address.
    pub dst: EthernetAddress,
    /// Source address.
    pub src: EthernetAddress,
    /// EtherType of the payload (see [`ethertype`]).
    pub ethertype: u16,
}

impl EthernetRepr {
    /// Parses the header at the start of `frame`; the payload is
    /// `frame[HEADER_LEN..]`.
    ///
    /// # Errors
    /// [`WireError::Truncated`] if `frame` is shorter than [`HEADER_LEN`].
    pub fn parse(frame: &[u8]) -> Result<EthernetRepr, WireError> {
        if frame.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(EthernetRepr {
            dst: EthernetAddress::read(&frame[0..6]),
            src: EthernetAddress::read(&frame[6..12]),
            ethertype: u16::from_be_bytes([frame[12], frame[13]]),
        })
    }

    /// Length of the header: [`HEADER_LEN`].
    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header into `buf[..HEADER_LEN]`.
    ///
    /// # Panics
    /// If `buf` is shorter than [`HEADER_LEN`].
    pub fn emit(&self, buf: &mut [u8]) {
        buf[0..6].copy_from_slice(&self.dst.0);
        buf[6..12].copy_from_slice(&self.src.0);
        buf[12..14].copy_from_slice(&self.ethertype.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn address_classes_and_display() {
        let b = EthernetAddress::broadcast();
        assert!(b.is_broadcast() && b.is_multicast() && !b.is_unicast());
        let u = EthernetAddress([0x02, 0, 0, 0xab, 0xcd, 0x01]);
        assert!(u.is_unicast() && u.is_local() && !u.is_broadcast());
        assert_eq!(u.to_string(), "02:00:00:ab:cd:01");
        assert!(EthernetAddress([0x01, 0x00, 0x5e, 0, 0, 1]).is_multicast());
    }

    #[test]
    fn short_frames_are_truncated() {
        for n in 0..HEADER_LEN {
            assert_eq!(
                EthernetRepr::parse(&[0; 20][..n]),
                Err(WireError::Truncated)
            );
        }
    }

    proptest! {
        #[test]
        fn round_trip(dst in any::<[u8; 6]>(), src in any::<[u8; 6]>(), ethertype in any::<u16>(),
                      tail in proptest::collection::vec(any::<u8>(), 0..50)) {
            let r = EthernetRepr { dst: EthernetAddress(dst), src: EthernetAddress(src), ethertype };
            let mut buf = vec![0; HEADER_LEN];
            r.emit(&mut buf);
            buf.extend_from_slice(&tail);
            prop_assert_eq!(EthernetRepr::parse(&buf), Ok(r));
        }

        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = EthernetRepr::parse(&data);
        }
    }
}
