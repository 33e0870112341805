//! TCP header (RFC 9293) with the MSS, window scale (RFC 7323), SACK-permitted
//! and timestamp (RFC 7323) options.
//!
//! ```text
//!  0               16              32
//! +---------------+---------------+
//! |  source port  |   dest port   |
//! +---------------+---------------+
//! |        sequence number        |
//! +-------------------------------+
//! |     acknowledgment number     |
//! +----+----+-----+---------------+
//! |doff|rsvd|flags|    window     |
//! +----+----+-----+---------------+
//! |   checksum    |  urgent ptr   |
//! +---------------+---------------+
//! | options (doff > 5) ...        |
//! +-------------------------------+
//! ```
//!
//! The checksum covers a pseudo header, the header and the payload (a chain
//! of segment lines): [`TcpRepr::parse`] does not verify it, [`verify`] does.
//! [`TcpRepr::emit`] writes the header with a zero checksum field, then
//! either [`fill_checksum`] completes it from the payload's partial sum, or
//! [`fill_pseudo_checksum`] prepares it for checksum offload.

use std::fmt;
use std::net::Ipv4Addr;

use super::checksum::{self, be16, be32, Accumulator};
use super::ipv4::protocol;
use super::WireError;

/// Length of a header without options.
pub const HEADER_LEN: usize = 20;

/// Length of the longest header [`TcpRepr::emit`] writes (every option).
pub const MAX_EMITTED_HEADER_LEN: usize = 40;

/// Offset of the checksum field from the start of the header (the virtio
/// `csum_offset` of TCP).
pub const CHECKSUM_OFFSET: usize = 16;

/// Largest window scale shift (RFC 7323 section 2.3): larger values are
/// treated as 14.
pub const MAX_WSCALE: u8 = 14;

/// TCP option kinds.
pub mod option {
    /// End of option list.
    pub const EOL: u8 = 0;
    /// No operation (padding).
    pub const NOP: u8 = 1;
    /// Maximum segment size (length 4).
    pub const MSS: u8 = 2;
    /// Window scale (length 3).
    pub const WSCALE: u8 = 3;
    /// SACK permitted (length 2).
    pub const SACK_PERMITTED: u8 = 4;
    /// SACK blocks (length 2 + 8n; skipped).
    pub const SACK: u8 = 5;
    /// Timestamps (length 10).
    pub const TIMESTAMP: u8 = 8;
}

/// TCP control bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    /// No more data from sender.
    pub const FIN: TcpFlags = TcpFlags(0x01);
    /// Synchronize sequence numbers.
    pub const SYN: TcpFlags = TcpFlags(0x02);
    /// Reset the connection.
    pub const RST: TcpFlags = TcpFlags(0x04);
    /// Push function.
    pub const PSH: TcpFlags = TcpFlags(0x08);
    /// The acknowledgment field is significant.
    pub const ACK: TcpFlags = TcpFlags(0x10);
    /// Urgent pointer field is significant.
    pub const URG: TcpFlags = TcpFlags(0x20);
    /// ECN-Echo (RFC 3168).
    pub const ECE: TcpFlags = TcpFlags(0x40);
    /// Congestion window reduced (RFC 3168).
    pub const CWR: TcpFlags = TcpFlags(0x80);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: TcpFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for TcpFlags {
    type Output = TcpFlags;
    fn bitor(self, rhs: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for TcpFlags {
    fn bitor_assign(&mut self, rhs: TcpFlags) {
        self.0 |= rhs.0;
    }
}

impl fmt::Debug for TcpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = ["FIN", "SYN", "RST", "PSH", "ACK", "URG"];
        let mut first = true;
        for (i, n) in names.iter().enumerate() {
            if self.0 & (1 << i) != 0 {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(n)?;
                first = false;
            }
        }
        if first {
            f.write_str("-")?;
        }
        Ok(())
    }
}

/// A parsed TCP header (without its payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpRepr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number (meaningful with ACK).
    pub ack: u32,
    /// Control bits.
    pub flags: TcpFlags,
    /// The raw (unscaled) window field.
    pub window: u16,
    /// Urgent pointer (ignored by the stack).
    pub urgent: u16,
    /// MSS option (SYN only).
    pub mss: Option<u16>,
    /// Window scale option: the shift count (SYN only).
    pub wscale: Option<u8>,
    /// SACK-permitted option (SYN only).
    pub sack_permitted: bool,
    /// Timestamps option: (TSval, TSecr).
    pub timestamp: Option<(u32, u32)>,
}

impl TcpRepr {
    /// Parses the header at the start of `bytes` and returns it with the
    /// header length (the data offset in bytes): the payload is
    /// `bytes[header_len..]`. The checksum is **not** verified: see
    /// [`verify`].
    ///
    /// Options: MSS, window scale (a shift above [`MAX_WSCALE`] is clamped to
    /// it), SACK-permitted and timestamps are parsed; SACK blocks and unknown
    /// kinds are skipped by their length; the list ends at EOL or at the
    /// data offset. All 8 flag bits are kept (ECE and CWR included).
    ///
    /// # Errors
    /// [`WireError::Truncated`] if `bytes` is shorter than 20 bytes or the
    /// data offset; [`WireError::Malformed`] if the data offset is below 5 or
    /// an option's length is wrong (below 2, past the options, or not the
    /// fixed length of a known kind).
    pub fn parse(bytes: &[u8]) -> Result<(TcpRepr, usize), WireError> {
        if bytes.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let header_len = usize::from(bytes[12] >> 4) * 4;
        if header_len < HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if header_len > bytes.len() {
            return Err(WireError::Truncated);
        }
        let mut repr = TcpRepr {
            src_port: be16(bytes, 0),
            dst_port: be16(bytes, 2),
            seq: be32(bytes, 4),
            ack: be32(bytes, 8),
            flags: TcpFlags(bytes[13]),
            window: be16(bytes, 14),
            urgent: be16(bytes, 18),
            ..TcpRepr::default()
        };
        let mut opts = &bytes[HEADER_LEN..header_len];
        while let Some((&kind, rest)) = opts.split_first() {
            match kind {
                option::EOL => break,
                option::NOP => {
                    opts = rest;
                    continue;
                }
                _ => {}
            }
            let len = usize::from(*rest.first().ok_or(WireError::Malformed)?);
            if len < 2 || len > opts.len() {
                return Err(WireError::Malformed);
            }
            let (opt, rest) = opts.split_at(len);
            let body = &opt[2..];
            match (kind, len) {
                (option::MSS, 4) => repr.mss = Some(be16(body, 0)),
                (option::WSCALE, 3) => repr.wscale = Some(body[0].min(MAX_WSCALE)),
                (option::SACK_PERMITTED, 2) => repr.sack_permitted = true,
                (option::TIMESTAMP, 10) => repr.timestamp = Some((be32(body, 0), be32(body, 4))),
                (option::MSS | option::WSCALE | option::SACK_PERMITTED | option::TIMESTAMP, _) => {
                    return Err(WireError::Malformed)
                }
                _ => {} // SACK blocks and unknown kinds
            }
            opts = rest;
        }
        Ok((repr, header_len))
    }

    /// Length of the header [`TcpRepr::emit`] writes: 20 bytes plus the
    /// options, each group padded to 4 bytes (at most
    /// [`MAX_EMITTED_HEADER_LEN`]).
    pub fn header_len(&self) -> usize {
        let mut n = HEADER_LEN;
        if self.mss.is_some() {
            n += 4;
        }
        if self.timestamp.is_some() || self.sack_permitted {
            n += if self.timestamp.is_some() { 12 } else { 4 };
        }
        if self.wscale.is_some() {
            n += 4;
        }
        n
    }

    /// Writes the header into `buf[..self.header_len()]` with a zero
    /// checksum field (see [`fill_checksum`] and [`fill_pseudo_checksum`]).
    ///
    /// Options are laid out as Linux lays them out (`tcp_options_write`):
    /// MSS; then SACK-permitted and timestamps together (`4,2,8,10`), or
    /// timestamps alone (`NOP,NOP,8,10`), or SACK-permitted alone
    /// (`NOP,NOP,4,2`); then window scale (`NOP,3,3`).
    ///
    /// # Panics
    /// If `buf` is shorter than `self.header_len()`.
    pub fn emit(&self, buf: &mut [u8]) {
        let header_len = self.header_len();
        let b = &mut buf[..header_len];
        b[0..2].copy_from_slice(&self.src_port.to_be_bytes());
        b[2..4].copy_from_slice(&self.dst_port.to_be_bytes());
        b[4..8].copy_from_slice(&self.seq.to_be_bytes());
        b[8..12].copy_from_slice(&self.ack.to_be_bytes());
        b[12] = ((header_len / 4) as u8) << 4;
        b[13] = self.flags.0;
        b[14..16].copy_from_slice(&self.window.to_be_bytes());
        b[16..18].copy_from_slice(&[0, 0]);
        b[18..20].copy_from_slice(&self.urgent.to_be_bytes());
        let mut o = &mut b[HEADER_LEN..];
        if let Some(mss) = self.mss {
            let [hi, lo] = mss.to_be_bytes();
            o[..4].copy_from_slice(&[option::MSS, 4, hi, lo]);
            o = &mut o[4..];
        }
        match (self.sack_permitted, self.timestamp) {
            (sack, Some((val, ecr))) => {
                if sack {
                    o[..2].copy_from_slice(&[option::SACK_PERMITTED, 2]);
                } else {
                    o[..2].copy_from_slice(&[option::NOP, option::NOP]);
                }
                o[2..4].copy_from_slice(&[option::TIMESTAMP, 10]);
                o[4..8].copy_from_slice(&val.to_be_bytes());
                o[8..12].copy_from_slice(&ecr.to_be_bytes());
                o = &mut o[12..];
            }
            (true, None) => {
                o[..4].copy_from_slice(&[option::NOP, option::NOP, option::SACK_PERMITTED, 2]);
                o = &mut o[4..];
            }
            (false, None) => {}
        }
        if let Some(shift) = self.wscale {
            o[..4].copy_from_slice(&[option::NOP, option::WSCALE, 3, shift]);
        }
    }
}

/// Computes and stores the checksum of an emitted TCP `header` (exactly its
/// data-offset bytes, or more: only the data offset is summed) for a
/// segment from `src` to `dst` of `tcp_len` bytes (header plus payload)
/// whose payload has the partial sum `payload_sum` (a [`checksum::sum`] or
/// [`Accumulator::sum`] of the payload; `0` for none).
///
/// # Panics
/// If `header` is shorter than 20 bytes or its data offset.
pub fn fill_checksum(
    header: &mut [u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    payload_sum: u64,
    tcp_len: u32,
) {
    let header_len = usize::from(header[12] >> 4) * 4;
    let h = &mut header[..header_len.max(HEADER_LEN)];
    let c = checksum::transport(
        h,
        CHECKSUM_OFFSET,
        (src, dst),
        protocol::TCP,
        tcp_len,
        payload_sum,
    );
    h[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 2].copy_from_slice(&c.to_be_bytes());
}

/// Stores in the checksum field of `header` the folded, **non-complemented**
/// pseudo-header sum for a segment of `tcp_len` bytes (header plus payload;
/// for TSO, the whole unsegmented payload), as Linux does for
/// `CHECKSUM_PARTIAL`: the NIC then sums from the TCP header (`csum_start`)
/// to the end and stores the complement at [`CHECKSUM_OFFSET`].
///
/// # Panics
/// If `header` is shorter than 18 bytes.
pub fn fill_pseudo_checksum(header: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, tcp_len: u32) {
    checksum::put_pseudo(header, CHECKSUM_OFFSET, (src, dst), protocol::TCP, tcp_len);
}

/// Verifies the checksum of a segment from `src` to `dst` given as its
/// header bytes followed by the payload in chunks of any lengths (the TCP
/// length is the total of their lengths).
///
/// # Errors
/// [`WireError::Checksum`] if it does not verify.
pub fn verify<'a>(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    header: &'a [u8],
    payload: impl IntoIterator<Item = &'a [u8]>,
) -> Result<(), WireError> {
    let mut acc = Accumulator::new();
    let len = acc.add_chunks(std::iter::once(header).chain(payload));
    // The pseudo header's length field is 32 bits wide.
    let len = u32::try_from(len).map_err(|_| WireError::Malformed)?;
    acc.add_sum(checksum::pseudo_header(src, dst, protocol::TCP, len));
    checksum::verified(&acc)
}

/// `a < b` in sequence space (RFC 9293 section 3.4: modulo 2^32, for
/// numbers less than 2^31 apart).
pub fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// `a <= b` in sequence space.
pub fn seq_le(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) <= 0
}

/// `a > b` in sequence space.
pub fn seq_gt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// `a >= b` in sequence space.
pub fn seq_ge(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) >= 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    /// A SYN from Linux 6.x: 10.0.0.1:41234 -> 10.0.0.2:80, seq 0x01020304,
    /// win 64240, [mss 1460,sackOK,TS val 1 ecr 0,nop,wscale 7].
    const LINUX_SYN: [u8; 40] = [
        0xa1, 0x12, 0x00, 0x50, 0x01, 0x02, 0x03, 0x04, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x02, 0xfa,
        0xf0, 0x00, 0x00, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0x00, 0x00,
        0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x01, 0x03, 0x03, 0x07,
    ];

    #[test]
    fn linux_syn_options() {
        let (r, hl) = TcpRepr::parse(&LINUX_SYN).unwrap();
        assert_eq!(hl, 40);
        assert_eq!(r.flags, TcpFlags::SYN);
        assert_eq!(
            (r.src_port, r.dst_port, r.seq, r.window),
            (41234, 80, 0x01020304, 64240)
        );
        assert_eq!(r.mss, Some(1460));
        assert_eq!(r.wscale, Some(7));
        assert!(r.sack_permitted);
        assert_eq!(r.timestamp, Some((1, 0)));
        assert_eq!(r.header_len(), 40);
        let mut out = [0; 40];
        r.emit(&mut out);
        assert_eq!(out, LINUX_SYN);
    }

    #[test]
    fn option_edge_cases() {
        let mut h = LINUX_SYN;
        h[39] = 15; // shift 15 is clamped to 14
        assert_eq!(TcpRepr::parse(&h).unwrap().0.wscale, Some(14));
        let mut h = LINUX_SYN;
        h[21] = 5; // MSS of length 5
        assert_eq!(TcpRepr::parse(&h), Err(WireError::Malformed));
        let mut h = LINUX_SYN;
        h[37] = 1; // length 1
        assert_eq!(TcpRepr::parse(&h), Err(WireError::Malformed));
        let mut h = LINUX_SYN;
        h[38] = 4; // wscale length runs past the options
        assert_eq!(TcpRepr::parse(&h), Err(WireError::Malformed));
        let mut h = LINUX_SYN;
        h[39] = 3;
        h[36] = 3; // a kind with no room for its length byte
        h[37] = 1;
        h[38] = 1;
        h[39] = 3;
        assert_eq!(TcpRepr::parse(&h), Err(WireError::Malformed));
        let mut h = LINUX_SYN;
        h[24] = 0; // EOL ends the list: no TS, no wscale
        let r = TcpRepr::parse(&h).unwrap().0;
        assert_eq!((r.mss, r.timestamp, r.wscale), (Some(1460), None, None));
        let mut h = LINUX_SYN;
        h[24..26].copy_from_slice(&[99, 2]); // unknown: skipped
        let r = TcpRepr::parse(&h).unwrap().0;
        assert!(!r.sack_permitted && r.wscale == Some(7) && r.timestamp == Some((1, 0)));
        let mut h = LINUX_SYN;
        h[12] = 0x40;
        assert_eq!(TcpRepr::parse(&h), Err(WireError::Malformed));
        h[12] = 0xf0;
        assert_eq!(TcpRepr::parse(&h), Err(WireError::Truncated));
        assert_eq!(TcpRepr::parse(&LINUX_SYN[..19]), Err(WireError::Truncated));
    }

    #[test]
    fn checksum_software_and_offload_agree() {
        let payload = b"GET / HTTP/1.1\r\n\r\n!";
        let r = TcpRepr {
            src_port: 1234,
            dst_port: 80,
            seq: 7,
            ack: 9,
            flags: TcpFlags::ACK | TcpFlags::PSH,
            window: 512,
            timestamp: Some((5, 6)),
            ..TcpRepr::default()
        };
        let hl = r.header_len();
        let tcp_len = (hl + payload.len()) as u32;
        let mut sw = vec![0; hl];
        r.emit(&mut sw);
        fill_checksum(&mut sw, SRC, DST, checksum::sum(0, payload), tcp_len);
        assert_eq!(
            verify(SRC, DST, &sw, [&payload[..5], &payload[5..]]),
            Ok(())
        );
        assert_eq!(
            verify(SRC, DST, &sw, [&payload[..5]]),
            Err(WireError::Checksum)
        );
        let mut hw = vec![0; hl];
        r.emit(&mut hw);
        fill_pseudo_checksum(&mut hw, SRC, DST, tcp_len);
        let mut acc = Accumulator::new();
        acc.add(&hw);
        acc.add(payload);
        let c = acc.checksum();
        hw[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 2].copy_from_slice(&c.to_be_bytes());
        assert_eq!(hw, sw);
    }

    #[test]
    fn sequence_comparisons_wrap() {
        assert!(seq_lt(0xffff_fff0, 0x10) && seq_gt(0x10, 0xffff_fff0));
        assert!(seq_le(5, 5) && seq_ge(5, 5) && !seq_lt(5, 5) && !seq_gt(5, 5));
        assert!(seq_lt(1, 2) && !seq_lt(2, 1));
    }

    /// Any header `emit` can write.
    pub(crate) fn repr() -> impl Strategy<Value = TcpRepr> {
        (
            (
                any::<u16>(),
                any::<u16>(),
                any::<u32>(),
                any::<u32>(),
                any::<u8>(),
            ),
            (
                any::<u16>(),
                any::<u16>(),
                proptest::option::of(any::<u16>()),
            ),
            (proptest::option::of(0..=MAX_WSCALE), any::<bool>()),
            proptest::option::of(any::<(u32, u32)>()),
        )
            .prop_map(
                |(
                    (src_port, dst_port, seq, ack, flags),
                    (window, urgent, mss),
                    (wscale, sack_permitted),
                    timestamp,
                )| {
                    TcpRepr {
                        src_port,
                        dst_port,
                        seq,
                        ack,
                        flags: TcpFlags(flags),
                        window,
                        urgent,
                        mss,
                        wscale,
                        sack_permitted,
                        timestamp,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn round_trip(r in repr(), payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let hl = r.header_len();
            prop_assert!(hl % 4 == 0 && hl <= MAX_EMITTED_HEADER_LEN);
            let mut buf = vec![0xee; hl];
            r.emit(&mut buf);
            fill_checksum(&mut buf, SRC, DST, checksum::sum(0, &payload), (hl + payload.len()) as u32);
            prop_assert_eq!(verify(SRC, DST, &buf, [&payload[..]]), Ok(()));
            buf.extend_from_slice(&payload);
            prop_assert_eq!(TcpRepr::parse(&buf), Ok((r, hl)));
        }

        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = TcpRepr::parse(&data);
        }

        #[test]
        fn parse_never_panics_on_option_soup(
            mut data in proptest::collection::vec(any::<u8>(), 20..80),
            small in proptest::collection::vec(0u8..12, 0..60),
        ) {
            // Options made of small kinds and lengths reach every branch.
            let n = small.len().min(data.len() - 20);
            data[20..20 + n].copy_from_slice(&small[..n]);
            data[12] = (((data.len() / 4) as u8).min(15)) << 4;
            if let Ok((r, hl)) = TcpRepr::parse(&data) {
                prop_assert!(hl <= data.len());
                prop_assert!(r.wscale.unwrap_or(0) <= MAX_WSCALE);
            }
        }

        #[test]
        fn seq_order_is_consistent(a in any::<u32>(), d in 1u32..0x8000_0000) {
            let b = a.wrapping_add(d);
            prop_assert!(seq_lt(a, b) && seq_le(a, b) && seq_gt(b, a) && seq_ge(b, a));
            prop_assert!(!seq_lt(b, a) && !seq_ge(a, b));
        }
    }
}
