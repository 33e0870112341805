//! The TX half shared by the ring backends (AF_PACKET, AF_XDP): the
//! emulated DMA gather of a frame's lines into a kernel-shared frame buffer,
//! with the transmit offloads done on the way (the checksum completed in
//! place; a GSO super-frame cut into wire segments, each gathered straight
//! into its own buffer, so no intermediate frame exists).

use crate::meta::{gso, VirtioNetHdr, F_NEEDS_CSUM};
use crate::offload::{self, Tso4Plan, TSO4_MAX_HDR};
use crate::port::{PortCopies, PortError, TxOutcome};

/// A backend's free TX frame buffers.
pub(crate) trait TxSlots {
    /// Buffers free right now (after reaping completions).
    fn free(&mut self) -> usize;
    /// The largest frame one buffer holds.
    fn capacity(&self) -> usize;
    /// The next free buffer, `len` bytes long (`len <= capacity`), to fill.
    fn next(&mut self, len: usize) -> Result<&mut [u8], PortError>;
    /// Hands the buffer [`TxSlots::next`] gave to the kernel (queued until
    /// the port's flush).
    fn commit(&mut self, len: usize);
    /// Whether the kernel takes a frame with its checksum left partial
    /// (virtio `F_NEEDS_CSUM`: the pseudo-header sum in the field), to be
    /// completed by it or taken as verified by a local peer, as a NIC's
    /// checksum offload: [`TxSlots::commit_partial`] then, and no checksum
    /// here.
    fn csum_offload(&self) -> bool {
        false
    }
    /// [`TxSlots::commit`] of a frame whose checksum at `csum_start +
    /// csum_offset` is left partial (only called where
    /// [`TxSlots::csum_offload`]).
    fn commit_partial(&mut self, len: usize, _csum_start: u16, _csum_offset: u16) {
        self.commit(len);
    }
}

/// Reads a gathered frame sequentially out of its chunks.
struct ChunkReader<'a, 'b> {
    chunks: &'a [&'b [u8]],
    idx: usize,
    off: usize,
}

impl ChunkReader<'_, '_> {
    /// Fills `out` with the next `out.len()` bytes (zeros past the end,
    /// which the callers' length checks rule out).
    fn copy_to(&mut self, out: &mut [u8]) {
        let mut at = 0;
        while at < out.len() {
            let Some(c) = self.chunks.get(self.idx) else {
                out[at..].fill(0);
                return;
            };
            let rest = &c[self.off..];
            let n = rest.len().min(out.len() - at);
            out[at..at + n].copy_from_slice(&rest[..n]);
            at += n;
            self.off += n;
            if self.off == c.len() {
                self.idx += 1;
                self.off = 0;
            }
        }
    }
}

/// Gathers the frame of `chunks` (with the offloads `vnet` asks for) into
/// `slots`: one buffer, or one per TSO segment. `Full` when there are not
/// enough free buffers (nothing is queued then).
pub(crate) fn place(
    vnet: &VirtioNetHdr,
    chunks: &[&[u8]],
    slots: &mut dyn TxSlots,
    copies: &mut PortCopies,
) -> Result<TxOutcome, PortError> {
    let len: usize = chunks.iter().map(|c| c.len()).sum();
    let cap = slots.capacity();
    if vnet.gso_type & !gso::ECN == gso::NONE {
        if len > cap {
            return Err(PortError::TooLarge { len, max: cap });
        }
        if slots.free() == 0 {
            return Ok(TxOutcome::Full);
        }
        let partial = vnet.flags & F_NEEDS_CSUM != 0 && slots.csum_offload();
        let buf = slots.next(len)?;
        ChunkReader {
            chunks,
            idx: 0,
            off: 0,
        }
        .copy_to(buf);
        if partial {
            let (start, off) = (vnet.csum_start, vnet.csum_offset);
            if usize::from(start) + usize::from(off) + 2 > len {
                return Err(PortError::BadOffload);
            }
            slots.commit_partial(len, start, off);
            copies.tx_frames += 1;
            copies.tx_gather_bytes += len as u64;
            copies.tx_csum_offloaded += 1;
            return Ok(TxOutcome::Sent);
        }
        match offload::apply_tx_in_place(vnet, buf) {
            Some(Ok(_)) => {}
            _ => return Err(PortError::BadOffload),
        }
        slots.commit(len);
        copies.tx_frames += 1;
        copies.tx_gather_bytes += len as u64;
        return Ok(TxOutcome::Sent);
    }
    if vnet.gso_type & !gso::ECN != gso::TCPV4 {
        return Err(PortError::BadOffload);
    }
    // The headers, read once; the payload then streams out of the chunks.
    let mut head = [0u8; TSO4_MAX_HDR];
    let hl = usize::from(vnet.hdr_len).min(TSO4_MAX_HDR).min(len);
    let mut rd = ChunkReader {
        chunks,
        idx: 0,
        off: 0,
    };
    rd.copy_to(&mut head[..hl]);
    let plan = Tso4Plan::new(vnet, &head[..hl], len).map_err(|_| PortError::BadOffload)?;
    if plan.segment_len(0) > cap {
        return Err(PortError::TooLarge {
            len: plan.segment_len(0),
            max: cap,
        });
    }
    let n = plan.segments();
    if slots.free() < n {
        return Ok(TxOutcome::Full);
    }
    // A kernel that completes checksums gets each segment's partial.
    let partial = slots.csum_offload();
    for i in 0..n {
        let seg_len = plan.segment_len(i);
        let buf = slots.next(seg_len)?;
        if partial {
            plan.write_partial(i, buf, |dst| rd.copy_to(dst));
            slots.commit_partial(seg_len, plan.csum_start(), 16);
            copies.tx_csum_offloaded += 1;
        } else {
            plan.write(i, buf, |dst| rd.copy_to(dst));
            slots.commit(seg_len);
        }
        copies.tx_frames += 1;
        copies.tx_gather_bytes += seg_len as u64;
    }
    copies.tx_tso_segments += n as u64;
    Ok(TxOutcome::Sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::{checksum, fold, sum};

    struct VecSlots {
        cap: usize,
        free: usize,
        cur: Vec<u8>,
        out: Vec<Vec<u8>>,
    }

    /// Slots of a kernel that completes checksums: each partial one is
    /// completed here, as the kernel would.
    struct OffloadSlots(VecSlots, usize);

    impl TxSlots for OffloadSlots {
        fn free(&mut self) -> usize {
            self.0.free()
        }
        fn capacity(&self) -> usize {
            self.0.capacity()
        }
        fn next(&mut self, len: usize) -> Result<&mut [u8], PortError> {
            self.0.next(len)
        }
        fn commit(&mut self, len: usize) {
            self.0.commit(len);
        }
        fn csum_offload(&self) -> bool {
            true
        }
        fn commit_partial(&mut self, len: usize, start: u16, off: u16) {
            let (start, at) = (usize::from(start), usize::from(start + off));
            let c = checksum(&self.0.cur[start..]);
            self.0.cur[at..at + 2].copy_from_slice(&c.to_be_bytes());
            self.1 += 1;
            self.0.commit(len);
        }
    }

    impl TxSlots for VecSlots {
        fn free(&mut self) -> usize {
            self.free
        }
        fn capacity(&self) -> usize {
            self.cap
        }
        fn next(&mut self, len: usize) -> Result<&mut [u8], PortError> {
            self.cur = vec![0xee; len];
            Ok(&mut self.cur)
        }
        fn commit(&mut self, len: usize) {
            assert_eq!(len, self.cur.len());
            self.free -= 1;
            self.out.push(std::mem::take(&mut self.cur));
        }
    }

    fn tcp_super_frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[23] = 6;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f[46] = 0x50;
        f[47] = 0x18;
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn tso_into_slots_matches_the_flat_segmentation() {
        let payload: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let f = tcp_super_frame(&payload);
        let vnet = VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: gso::TCPV4,
            gso_size: 1448,
            hdr_len: 54,
            csum_start: 34,
            csum_offset: 16,
            ..Default::default()
        };
        let (_, want) = offload::apply_tx(&vnet, f.clone()).unwrap();
        // Chunks of odd sizes, as lines split at a frame offset are.
        let chunks: Vec<&[u8]> = f.chunks(37).collect();
        let mut slots = VecSlots {
            cap: 1514,
            free: 2,
            cur: Vec::new(),
            out: Vec::new(),
        };
        let mut c = PortCopies::default();
        assert_eq!(
            place(&vnet, &chunks, &mut slots, &mut c).unwrap(),
            TxOutcome::Full,
            "4 segments, 2 buffers"
        );
        assert!(slots.out.is_empty());
        slots.free = 8;
        assert_eq!(
            place(&vnet, &chunks, &mut slots, &mut c).unwrap(),
            TxOutcome::Sent
        );
        assert_eq!(slots.out, want);
        assert_eq!(c.tx_tso_segments, 4);
        assert_eq!(c.tx_gather_bytes, want.iter().map(|s| s.len() as u64).sum());
        for s in &slots.out {
            let acc = sum(0, &s[26..34]) + 6 + (s.len() - 34) as u64;
            assert_eq!(checksum(&s[14..34]), 0);
            assert_eq!(!fold(sum(acc, &s[34..])), 0);
        }
    }

    #[test]
    fn partial_checksums_completed_by_the_kernel_match_the_port_s() {
        let payload: Vec<u8> = (0..5000u32).map(|i| (i * 13) as u8).collect();
        let mut f = tcp_super_frame(&payload);
        let vnet = VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: gso::TCPV4,
            gso_size: 1448,
            hdr_len: 54,
            csum_start: 34,
            csum_offset: 16,
            ..Default::default()
        };
        let (_, want) = offload::apply_tx(&vnet, f.clone()).unwrap();
        let mut slots = OffloadSlots(
            VecSlots {
                cap: 1514,
                free: 8,
                cur: Vec::new(),
                out: Vec::new(),
            },
            0,
        );
        let mut c = PortCopies::default();
        let chunks: Vec<&[u8]> = f.chunks(41).collect();
        assert_eq!(
            place(&vnet, &chunks, &mut slots, &mut c).unwrap(),
            TxOutcome::Sent
        );
        assert_eq!(slots.0.out, want, "TSO segments");
        assert_eq!((slots.1, c.tx_csum_offloaded), (4, 4));
        // A plain frame asking for its checksum: the pseudo-header sum in
        // the field, as the stack leaves it.
        f.truncate(54 + 100);
        f[16..18].copy_from_slice(&140u16.to_be_bytes());
        let acc = sum(0, &f[26..34]) + 6 + 120;
        f[50..52].copy_from_slice(&fold(acc).to_be_bytes());
        let plain = VirtioNetHdr {
            gso_type: gso::NONE,
            gso_size: 0,
            ..vnet
        };
        let (_, want) = offload::apply_tx(&plain, f.clone()).unwrap();
        let chunks: Vec<&[u8]> = f.chunks(41).collect();
        assert_eq!(
            place(&plain, &chunks, &mut slots, &mut c).unwrap(),
            TxOutcome::Sent
        );
        assert_eq!(slots.0.out.last(), want.last(), "plain frame");
        assert_eq!((slots.1, c.tx_csum_offloaded), (5, 5));
    }

    #[test]
    fn plain_frames_gather_and_too_large_ones_are_refused() {
        let f = tcp_super_frame(b"abc");
        let chunks: Vec<&[u8]> = f.chunks(5).collect();
        let mut slots = VecSlots {
            cap: 60,
            free: 1,
            cur: Vec::new(),
            out: Vec::new(),
        };
        let mut c = PortCopies::default();
        let vnet = VirtioNetHdr::default();
        assert_eq!(
            place(&vnet, &chunks, &mut slots, &mut c).unwrap(),
            TxOutcome::Sent
        );
        assert_eq!(slots.out[0], f);
        assert_eq!(
            place(&vnet, &chunks, &mut slots, &mut c).unwrap(),
            TxOutcome::Full
        );
        slots.cap = 10;
        slots.free = 1;
        assert!(matches!(
            place(&vnet, &chunks, &mut slots, &mut c),
            Err(PortError::TooLarge { len: 57, max: 10 })
        ));
    }
}
