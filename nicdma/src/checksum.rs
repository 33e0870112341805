//! The Internet checksum (RFC 1071), the one implementation of the
//! workspace (the software offloads, segstack's wire formats and the tools
//! use it): the ones' complement of the ones'
//! complement sum of the data taken as big-endian 16-bit words.
//!
//! Sums are kept as a `u64` *partial sum* (carries not yet folded) so that
//! pieces can be added in any order and folded once at the end:
//!
//! ```
//! use nicdma::checksum::{self, Accumulator};
//!
//! let data = b"\x45\x00\x00\x1c\x00\x00\x40\x00\x40\x11";
//! let mut acc = Accumulator::new();
//! acc.add(&data[..3]); // chunks may have odd lengths
//! acc.add(&data[3..]);
//! assert_eq!(acc.checksum(), checksum::checksum(data));
//! ```
//!
//! A partial sum computed over bytes that start at an even offset of the
//! message can be added to the sum of the rest of the message as is; this is
//! how headers are checksummed over a payload given as a sum of segment
//! lines.

use std::net::Ipv4Addr;

/// Adds `data` (taken as big-endian 16-bit words, an odd last byte padded
/// with a zero byte) to the partial sum `acc`.
///
/// The result is a partial sum: fold it with [`fold`]. The `u64` cannot
/// overflow for any message shorter than 2^32 times 4 GiB.
pub fn sum(acc: u64, data: &[u8]) -> u64 {
    let mut acc = acc;
    // 32-bit words: 2^32 = 2^16 * 2^16 and 2^16 = 1 (mod 2^16 - 1), so a sum
    // of big-endian u32 words folds to the sum of the u16 words.
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        acc += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [b] = pairs.remainder() {
        acc += u64::from(*b) << 8;
    }
    acc
}

/// The Internet checksum of a message given in chunks of any length (the
/// lines of a segment, or headers then payload): the same as [`checksum`]
/// over their concatenation.
pub fn checksum_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> u16 {
    let mut acc = Accumulator::new();
    acc.add_chunks(chunks);
    acc.checksum()
}

/// Folds the carries of a partial sum into 16 bits (not complemented).
pub fn fold(acc: u64) -> u16 {
    let mut acc = acc;
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The Internet checksum of `data` (the complemented folded sum): the value
/// to store in a checksum field that was zero while summing.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(0, data))
}

/// The partial sum of the IPv4 pseudo header of a TCP or UDP segment
/// (RFC 9293 section 3.1, RFC 768): source and destination addresses, the
/// protocol number and the transport length (header plus data).
pub fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: u32) -> u64 {
    let s = src.octets();
    let d = dst.octets();
    u64::from(u32::from_be_bytes(s))
        + u64::from(u32::from_be_bytes(d))
        + u64::from(protocol)
        + u64::from(len)
}

/// A running checksum over data that arrives in chunks of any length (the
/// lines of a segment), giving the same result as one [`sum`] over the
/// concatenation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Accumulator {
    acc: u64,
    /// Whether an odd number of bytes has been added: the next byte is then
    /// the low byte of a word whose high byte was already added.
    odd: bool,
}

impl Accumulator {
    /// An empty accumulator.
    pub fn new() -> Accumulator {
        Accumulator::default()
    }

    /// An accumulator that starts from the partial sum `acc` (of an even
    /// number of bytes, or of a pseudo header).
    pub fn with_sum(acc: u64) -> Accumulator {
        Accumulator { acc, odd: false }
    }

    /// Adds the next `data` bytes of the message.
    pub fn add(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let data = match (self.odd, data.split_first()) {
            (true, Some((first, rest))) => {
                self.acc += u64::from(*first);
                self.odd = false;
                rest
            }
            _ => data,
        };
        self.acc = sum(self.acc, data);
        self.odd = data.len() % 2 == 1;
    }

    /// Adds the next bytes of the message given in chunks of any length;
    /// returns how many bytes they were.
    pub fn add_chunks<'a>(&mut self, chunks: impl IntoIterator<Item = &'a [u8]>) -> u64 {
        chunks.into_iter().fold(0, |n, c| {
            self.add(c);
            n + c.len() as u64
        })
    }

    /// Adds a partial sum of other bytes (e.g. a pseudo header). The sum must
    /// be of bytes aligned on a word (it is added as is, whatever the parity
    /// of the bytes added so far).
    pub fn add_sum(&mut self, partial: u64) {
        self.acc += partial;
    }

    /// Whether an odd number of bytes has been added.
    pub fn is_odd(&self) -> bool {
        self.odd
    }

    /// The partial sum so far (not folded).
    pub fn sum(&self) -> u64 {
        self.acc
    }

    /// The folded sum (not complemented).
    pub fn fold(&self) -> u16 {
        fold(self.acc)
    }

    /// The checksum (complemented folded sum).
    pub fn checksum(&self) -> u16 {
        !self.fold()
    }

    /// Whether the data added (a message including its checksum field, and
    /// its pseudo header if any) verifies: its folded sum is `0xffff`.
    pub fn verifies(&self) -> bool {
        self.fold() == 0xffff
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The RFC 1071 definition, word by word.
    fn model(data: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        for c in data.chunks(2) {
            let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
            acc += u32::from(w);
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(0, &d)), 0xddf2);
        assert_eq!(checksum(&d), !0xddf2);
    }

    #[test]
    fn ipv4_header_checksum() {
        // A real header: checksum b861 over 45 00 00 73 00 00 40 00 40 11
        // 00 00 c0 a8 00 01 c0 a8 00 c7.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0xb861);
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        let mut a = Accumulator::new();
        a.add(&h);
        assert!(a.verifies());
    }

    #[test]
    fn pseudo_header_is_the_sum_of_its_bytes() {
        let (s, d) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(192, 168, 7, 9));
        let mut b = Vec::new();
        b.extend_from_slice(&s.octets());
        b.extend_from_slice(&d.octets());
        b.extend_from_slice(&[0, 6]);
        b.extend_from_slice(&1234u16.to_be_bytes());
        assert_eq!(fold(pseudo_header(s, d, 6, 1234)), fold(sum(0, &b)));
    }

    proptest! {
        #[test]
        fn sum_matches_model(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(fold(sum(0, &data)), model(&data));
        }

        #[test]
        fn accumulator_over_any_chunking_equals_one_shot(
            data in proptest::collection::vec(any::<u8>(), 0..400),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(data.len() + 1)).collect();
            cuts.sort_unstable();
            let cuts_copy = cuts.clone();
            let mut a = Accumulator::new();
            let mut at = 0;
            for c in cuts.into_iter().chain(std::iter::once(data.len())) {
                a.add(&data[at..c]);
                at = c;
            }
            prop_assert_eq!(a.fold(), fold(sum(0, &data)));
            prop_assert_eq!(a.checksum(), checksum(&data));
            let mut pieces = Vec::new();
            let mut at = 0;
            for c in cuts_copy.into_iter().chain(std::iter::once(data.len())) {
                pieces.push(&data[at..c]);
                at = c;
            }
            prop_assert_eq!(checksum_chunks(pieces), checksum(&data));
            prop_assert_eq!(a.is_odd(), data.len() % 2 == 1);
        }
    }
}
