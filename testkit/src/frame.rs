//! Ethernet, IPv4 and UDP frames for tests and benches that send to a kernel
//! peer: one builder instead of a copy per test file.
//!
//! ```
//! use testkit::frame::{udp_frame, UdpChecksum};
//! let f = udp_frame(
//!     ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]),
//!     ([10, 0, 0, 2], [10, 0, 0, 1]),
//!     (40000, 9),
//!     b"hello",
//!     UdpChecksum::Full,
//! );
//! assert_eq!(f.len(), 14 + 20 + 8 + 5);
//! assert_eq!(testkit::frame::checksum(&f[14..34]), 0); // the IPv4 header's
//! ```

/// The IPv4 protocol number of UDP.
pub const IP_UDP: u8 = 17;

/// How a UDP datagram's checksum field is filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpChecksum {
    /// 0: "no checksum" (RFC 768).
    Zero,
    /// The complete checksum (0 sent as `0xffff`).
    Full,
    /// Only the folded pseudo-header sum, for whoever completes it
    /// (checksum offload: `F_NEEDS_CSUM`, `CHECKSUM_PARTIAL`).
    Partial,
}

/// The one's-complement sum of `data` as big-endian 16-bit words, added to
/// `acc` (not folded).
pub fn sum(acc: u64, data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(2);
    let mut acc = acc;
    for w in &mut words {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds the carries of a sum into 16 bits (not complemented).
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(0, data))
}

/// An Ethernet II header, then `payload`.
pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An IPv4 header (no options, TTL 64) with a correct checksum, then
/// `payload`.
pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, id: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let c = checksum(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// A UDP datagram from `src` to `dst` (the addresses enter the checksum),
/// `ports` = (source, destination).
pub fn udp(
    src: [u8; 4],
    dst: [u8; 4],
    ports: (u16, u16),
    payload: &[u8],
    csum: UdpChecksum,
) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut u = Vec::with_capacity(len);
    u.extend_from_slice(&ports.0.to_be_bytes());
    u.extend_from_slice(&ports.1.to_be_bytes());
    u.extend_from_slice(&(len as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let pseudo = sum(sum(0, &src), &dst) + u64::from(IP_UDP) + len as u64;
    let c = match csum {
        UdpChecksum::Zero => 0,
        UdpChecksum::Partial => fold(pseudo),
        UdpChecksum::Full => match !fold(sum(pseudo, &u)) {
            0 => 0xffff,
            c => c,
        },
    };
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

/// An Ethernet frame carrying one UDP datagram in IPv4 (IP id 1):
/// `macs` = (destination, source), `ips` = (source, destination), `ports` =
/// (source, destination).
pub fn udp_frame(
    macs: ([u8; 6], [u8; 6]),
    ips: ([u8; 4], [u8; 4]),
    ports: (u16, u16),
    payload: &[u8],
    csum: UdpChecksum,
) -> Vec<u8> {
    let datagram = udp(ips.0, ips.1, ports, payload, csum);
    eth(
        macs.0,
        macs.1,
        0x0800,
        &ipv4(ips.0, ips.1, IP_UDP, 1, &datagram),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_checksum_verifies_and_partial_completes_to_it() {
        let (s, d) = ([10, 1, 2, 3], [10, 4, 5, 6]);
        let payload = b"odd-length payload";
        let full = udp(s, d, (1, 2), payload, UdpChecksum::Full);
        let pseudo = sum(sum(0, &s), &d) + u64::from(IP_UDP) + full.len() as u64;
        assert_eq!(!fold(sum(pseudo, &full)), 0, "a full checksum verifies");
        let mut partial = udp(s, d, (1, 2), payload, UdpChecksum::Partial);
        // Completing a partial checksum: the checksum over the datagram,
        // whose field holds the pseudo-header sum.
        let c = checksum(&partial);
        partial[6..8].copy_from_slice(&c.to_be_bytes());
        assert_eq!(partial, full);
        assert_eq!(udp(s, d, (1, 2), payload, UdpChecksum::Zero)[6..8], [0, 0]);
    }

    #[test]
    fn frame_layout() {
        let f = udp_frame(
            ([1; 6], [2; 6]),
            ([10, 0, 0, 2], [10, 0, 0, 1]),
            (7, 9),
            &[0x5a; 100],
            UdpChecksum::Zero,
        );
        assert_eq!(f.len(), 142);
        assert_eq!(&f[..12], &[[1u8; 6], [2u8; 6]].concat()[..]);
        assert_eq!(f[23], IP_UDP);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 128);
        assert_eq!(checksum(&f[14..34]), 0);
        assert_eq!(u16::from_be_bytes([f[38], f[39]]), 108);
    }
}
