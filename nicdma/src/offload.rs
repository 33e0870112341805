//! Transmit offloads done in software, as a NIC does them in hardware: the
//! checksum (`F_NEEDS_CSUM`: sum from `csum_start` to the end, the pseudo-
//! header sum already in the checksum field, as Linux and virtio leave it) and
//! TCP segmentation (`gso_type` TCPV4: cut the payload after `hdr_len` into
//! `gso_size` pieces, each with the headers repeated and fixed up: IPv4 total
//! length, id and header checksum; TCP sequence number, flags and checksum).
//!
//! Ports that put flattened frames on a wire (the sim backend) apply these;
//! the TAP backend hands the metadata to the kernel instead.

use crate::checksum::{checksum, fold, sum};
use crate::meta::{gso, VirtioNetHdr, F_DATA_VALID, F_NEEDS_CSUM};

/// Why offloads could not be applied (the frame is then dropped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// The checksum fields point outside the frame.
    #[error("checksum offsets outside the frame")]
    BadChecksumOffsets,
    /// The frame is not the Ethernet/IPv4/TCP the GSO type says.
    #[error("GSO frame is not Ethernet/IPv4/TCP with hdr_len {0}")]
    BadGsoFrame(u16),
    /// A GSO type this model does not segment.
    #[error("unsupported GSO type {0}")]
    UnsupportedGso(u8),
}

fn complete_checksum(vnet: &VirtioNetHdr, f: &mut [u8]) -> Result<(), OffloadError> {
    let start = vnet.csum_start as usize;
    let at = start + vnet.csum_offset as usize;
    if at + 2 > f.len() {
        return Err(OffloadError::BadChecksumOffsets);
    }
    // The field holds the pseudo-header sum: include it, then store.
    let c = checksum(&f[start..]);
    f[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Applies the offloads `vnet` asks for to `frame`, returning the frames to
/// put on the wire (one, or the GSO segments) and the metadata they carry
/// (checksums valid, no GSO).
pub fn apply_tx(
    vnet: &VirtioNetHdr,
    frame: Vec<u8>,
) -> Result<(VirtioNetHdr, Vec<Vec<u8>>), OffloadError> {
    let out_hdr = VirtioNetHdr {
        flags: if vnet.flags & F_NEEDS_CSUM != 0 {
            F_DATA_VALID
        } else {
            vnet.flags & F_DATA_VALID
        },
        ..VirtioNetHdr::default()
    };
    match vnet.gso_type & !gso::ECN {
        gso::NONE => {
            let mut f = frame;
            if vnet.flags & F_NEEDS_CSUM != 0 {
                complete_checksum(vnet, &mut f)?;
            }
            Ok((out_hdr, vec![f]))
        }
        gso::TCPV4 => Ok((out_hdr, tso4(vnet, &frame)?)),
        other => Err(OffloadError::UnsupportedGso(other)),
    }
}

/// [`apply_tx`] for a frame that needs no segmentation, in place: completes
/// the checksum if asked and returns the header the receiver sees. `None`
/// when the frame asks for segmentation (use [`apply_tx`]).
pub fn apply_tx_in_place(
    vnet: &VirtioNetHdr,
    frame: &mut [u8],
) -> Option<Result<VirtioNetHdr, OffloadError>> {
    if vnet.gso_type & !gso::ECN != gso::NONE {
        return None;
    }
    let out_hdr = VirtioNetHdr {
        flags: if vnet.flags & F_NEEDS_CSUM != 0 {
            F_DATA_VALID
        } else {
            vnet.flags & F_DATA_VALID
        },
        ..VirtioNetHdr::default()
    };
    if vnet.flags & F_NEEDS_CSUM != 0 {
        if let Err(e) = complete_checksum(vnet, frame) {
            return Some(Err(e));
        }
    }
    Some(Ok(out_hdr))
}

/// The longest header block a TCPv4 GSO frame can have: Ethernet, IPv4 and
/// TCP with all options.
pub const TSO4_MAX_HDR: usize = 14 + 60 + 60;

/// TCPv4 segmentation of one GSO super-frame, planned from its headers, for
/// ports that write each wire segment straight into a kernel-shared buffer
/// (no intermediate frame): [`Tso4Plan::write`] puts the headers, fixed up,
/// in front of the payload piece the caller copies in.
#[derive(Debug, Clone)]
pub struct Tso4Plan {
    hdr: [u8; TSO4_MAX_HDR],
    hdr_len: usize,
    ihl: usize,
    tcp_len: usize,
    mss: usize,
    payload_len: usize,
    n: usize,
    seq0: u32,
    id0: u16,
    flags0: u8,
}

impl Tso4Plan {
    /// Plans the segments of a frame of `frame_len` bytes whose first bytes
    /// are `head` (at least the headers: `vnet.hdr_len`).
    pub fn new(
        vnet: &VirtioNetHdr,
        head: &[u8],
        frame_len: usize,
    ) -> Result<Tso4Plan, OffloadError> {
        let bad = || OffloadError::BadGsoFrame(vnet.hdr_len);
        let f = head;
        let hdr_len = vnet.hdr_len as usize;
        if f.len() < 14 + 20 + 20 || f[12..14] != [0x08, 0x00] || f[14] >> 4 != 4 {
            return Err(bad());
        }
        let ihl = usize::from(f[14] & 0x0f) * 4;
        let l4 = 14 + ihl;
        if ihl < 20 || f.len() < l4 + 20 || f[14 + 9] != 6 {
            return Err(bad());
        }
        let tcp_len = usize::from(f[l4 + 12] >> 4) * 4;
        if tcp_len < 20 || hdr_len != l4 + tcp_len || hdr_len > f.len() || hdr_len > frame_len {
            return Err(bad());
        }
        let mss = usize::from(vnet.gso_size);
        if mss == 0 {
            return Err(bad());
        }
        let mut hdr = [0u8; TSO4_MAX_HDR];
        hdr[..hdr_len].copy_from_slice(&f[..hdr_len]);
        let payload_len = frame_len - hdr_len;
        Ok(Tso4Plan {
            hdr,
            hdr_len,
            ihl,
            tcp_len,
            mss,
            payload_len,
            n: payload_len.div_ceil(mss).max(1),
            seq0: u32::from_be_bytes(f[l4 + 4..l4 + 8].try_into().expect("4")),
            id0: u16::from_be_bytes([f[18], f[19]]),
            flags0: f[l4 + 13],
        })
    }

    /// The header bytes (Ethernet, IPv4, TCP).
    pub fn hdr_len(&self) -> usize {
        self.hdr_len
    }

    /// How many wire segments.
    pub fn segments(&self) -> usize {
        self.n
    }

    /// The payload bytes of segment `i`.
    pub fn piece_len(&self, i: usize) -> usize {
        let a = (i * self.mss).min(self.payload_len);
        let b = ((i + 1) * self.mss).min(self.payload_len);
        b - a
    }

    /// The bytes of segment `i` on the wire.
    pub fn segment_len(&self, i: usize) -> usize {
        self.hdr_len + self.piece_len(i)
    }

    /// Writes segment `i` into `s` (exactly [`Tso4Plan::segment_len`]
    /// bytes): the headers, then `fill` copies the payload piece into the
    /// rest; then lengths, id, sequence number, flags and both checksums are
    /// fixed up.
    pub fn write(&self, i: usize, s: &mut [u8], fill: impl FnOnce(&mut [u8])) {
        self.write_with(i, s, fill, false);
    }

    /// [`Tso4Plan::write`], but the TCP checksum is left partial (the
    /// pseudo-header sum, as `F_NEEDS_CSUM` has it) for a port whose kernel
    /// completes it, at [`Tso4Plan::csum_start`] + 16.
    pub fn write_partial(&self, i: usize, s: &mut [u8], fill: impl FnOnce(&mut [u8])) {
        self.write_with(i, s, fill, true);
    }

    /// Where each segment's TCP header (the checksummed part) starts.
    pub fn csum_start(&self) -> u16 {
        (14 + self.ihl) as u16
    }

    fn write_with(&self, i: usize, s: &mut [u8], fill: impl FnOnce(&mut [u8]), partial: bool) {
        let (hdr_len, ihl, tcp_len) = (self.hdr_len, self.ihl, self.tcp_len);
        let l4 = 14 + ihl;
        let piece = self.piece_len(i);
        debug_assert_eq!(s.len(), hdr_len + piece);
        s[..hdr_len].copy_from_slice(&self.hdr[..hdr_len]);
        fill(&mut s[hdr_len..]);
        // IPv4: total length, id, header checksum.
        let total = (ihl + tcp_len + piece) as u16;
        s[16..18].copy_from_slice(&total.to_be_bytes());
        s[18..20].copy_from_slice(&self.id0.wrapping_add(i as u16).to_be_bytes());
        s[24..26].copy_from_slice(&[0, 0]);
        let hc = checksum(&s[14..l4]);
        s[24..26].copy_from_slice(&hc.to_be_bytes());
        // TCP: sequence number, flags (CWR on the first only; FIN and PSH on
        // the last only), checksum over the pseudo-header and segment.
        let seq = self.seq0.wrapping_add((i * self.mss) as u32);
        s[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
        let mut fl = self.flags0;
        if i > 0 {
            fl &= !0x80; // CWR
        }
        if i + 1 < self.n {
            fl &= !(0x01 | 0x08); // FIN, PSH
        }
        s[l4 + 13] = fl;
        s[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
        let mut acc = sum(0, &s[26..34]); // source and destination address
        acc += 6 + (tcp_len + piece) as u64;
        let tc = if partial {
            fold(acc)
        } else {
            !fold(sum(acc, &s[l4..]))
        };
        s[l4 + 16..l4 + 18].copy_from_slice(&tc.to_be_bytes());
    }
}

fn tso4(vnet: &VirtioNetHdr, f: &[u8]) -> Result<Vec<Vec<u8>>, OffloadError> {
    let plan = Tso4Plan::new(vnet, &f[..f.len().min(TSO4_MAX_HDR)], f.len())?;
    let payload = &f[plan.hdr_len()..];
    let mut at = 0;
    let mut out = Vec::with_capacity(plan.segments());
    for i in 0..plan.segments() {
        let mut s = vec![0u8; plan.segment_len(i)];
        let n = plan.piece_len(i);
        plan.write(i, &mut s, |dst| dst.copy_from_slice(&payload[at..at + n]));
        at += n;
        out.push(s);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet/IPv4/TCP frame with `payload`, checksums correct.
    fn tcp_frame(payload: &[u8], seq: u32, flags: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        let total = (40 + payload.len()) as u16;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f[18..20].copy_from_slice(&77u16.to_be_bytes());
        f[22] = 64;
        f[23] = 6;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f[34..36].copy_from_slice(&1234u16.to_be_bytes());
        f[36..38].copy_from_slice(&80u16.to_be_bytes());
        f[38..42].copy_from_slice(&seq.to_be_bytes());
        f[46] = 0x50;
        f[47] = flags;
        f.extend_from_slice(payload);
        let hc = checksum(&f[14..34]);
        f[24..26].copy_from_slice(&hc.to_be_bytes());
        let mut acc = sum(0, &f[26..34]) + 6 + (20 + payload.len()) as u64;
        acc = sum(acc, &f[34..]);
        f[50..52].copy_from_slice(&(!fold(acc)).to_be_bytes());
        f
    }

    fn tcp_ok(f: &[u8]) -> bool {
        let acc = sum(0, &f[26..34]) + 6 + (f.len() - 34) as u64;
        checksum(&f[14..34]) == 0 && !fold(sum(acc, &f[34..])) == 0
    }

    #[test]
    fn checksum_completion_matches_a_full_checksum() {
        let want = tcp_frame(b"hello offload", 5, 0x18);
        assert!(tcp_ok(&want));
        // What Linux hands a NIC: the pseudo-header sum in the field.
        let mut partial = want.clone();
        let pseudo = sum(0, &partial[26..34]) + 6 + (partial.len() - 34) as u64;
        partial[50..52].copy_from_slice(&fold(pseudo).to_be_bytes());
        let vnet = VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 16,
            ..Default::default()
        };
        let (h, out) = apply_tx(&vnet, partial).unwrap();
        assert_eq!(out, vec![want]);
        assert_eq!(h.flags, F_DATA_VALID);
        let bad = VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 60,
            csum_offset: 16,
            ..Default::default()
        };
        assert_eq!(
            apply_tx(&bad, tcp_frame(b"x", 0, 0)),
            Err(OffloadError::BadChecksumOffsets)
        );
    }

    #[test]
    fn tso_cuts_and_fixes_every_segment() {
        let payload: Vec<u8> = (0..3500u32).map(|i| i as u8).collect();
        let big = tcp_frame(&payload, 1000, 0x18 | 0x01 | 0x80); // PSH, FIN, CWR
        let vnet = VirtioNetHdr {
            gso_type: gso::TCPV4,
            gso_size: 1448,
            hdr_len: 54,
            ..Default::default()
        };
        let (_, segs) = apply_tx(&vnet, big).unwrap();
        assert_eq!(segs.len(), 3);
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert!(tcp_ok(s), "segment {i} checksums");
            let seq = u32::from_be_bytes(s[38..42].try_into().unwrap());
            assert_eq!(seq, 1000 + 1448 * i as u32);
            assert_eq!(u16::from_be_bytes([s[16], s[17]]) as usize, s.len() - 14);
            assert_eq!(u16::from_be_bytes([s[18], s[19]]), 77 + i as u16);
            let fl = s[47];
            assert_eq!(fl & 0x80 != 0, i == 0, "CWR on the first only");
            assert_eq!(fl & 0x09 != 0, i == 2, "FIN/PSH on the last only");
            joined.extend_from_slice(&s[54..]);
        }
        assert_eq!(joined, payload);
        let wrong = VirtioNetHdr {
            hdr_len: 40,
            ..vnet
        };
        assert!(apply_tx(&wrong, tcp_frame(b"abc", 0, 0)).is_err());
        let udp = VirtioNetHdr {
            gso_type: gso::UDP,
            ..vnet
        };
        assert_eq!(
            apply_tx(&udp, tcp_frame(b"abc", 0, 0)),
            Err(OffloadError::UnsupportedGso(gso::UDP))
        );
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary frames and offload requests never panic; segments never
        /// exceed the headers plus one MSS.
        #[test]
        fn apply_tx_never_panics(
            frame in prop::collection::vec(any::<u8>(), 0..3000),
            flags in any::<u8>(), gso_type in any::<u8>(), hdr_len in 0u16..200,
            gso_size in 0u16..2000, csum_start in 0u16..3000, csum_offset in 0u16..64,
            tcp in any::<bool>(),
        ) {
            let mut f = frame;
            if tcp && f.len() >= 54 {
                // Often make it look like Ethernet/IPv4/TCP so TSO runs deep.
                f[12] = 8; f[13] = 0; f[14] = 0x45; f[23] = 6; f[46] = 0x50;
            }
            let vnet = VirtioNetHdr { flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers: 0 };
            if let Ok((_, segs)) = apply_tx(&vnet, f) {
                if gso_type & !gso::ECN == gso::TCPV4 {
                    for s in &segs {
                        prop_assert!(s.len() <= hdr_len as usize + gso_size as usize);
                    }
                }
            }
        }
    }
}
