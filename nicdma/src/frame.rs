//! Building and reading ring segments: the one place that knows where the
//! metadata, the headroom and the frame go.
//!
//! ```text
//!  0          META_LEN              frame_off        frame_off + hdrs   end
//!  | DmaMeta  | headroom (zeros)    | headers         | payload lines ...  |
//!                                   '---------- frame_len ---------------'
//! ```
//!
//! [`build`] splices the payload's own lines behind the headers
//! ([`hicamp::Memory::splice`]); [`aligned_frame_off`] picks the headroom so
//! that the payload keeps its offset within a line, which makes every whole
//! payload line shared rather than copied.

use hicamp::{Memory, Piece, Segment, SegmentSlice, SpliceCounts};

use crate::meta::{DmaMeta, VirtioNetHdr, META_LEN};

/// The frame offset at which `hdr_len` bytes of headers put the first
/// payload byte at `payload_phase` within a line of `line_size` bytes (the
/// smallest such offset that leaves room for the metadata).
pub fn aligned_frame_off(line_size: usize, hdr_len: usize, payload_phase: usize) -> u16 {
    let ls = line_size;
    let want = payload_phase % ls;
    // The payload starts at x >= META_LEN + hdr_len, x ≡ want (mod ls).
    let min = META_LEN + hdr_len;
    let x = min + (want + ls - min % ls) % ls;
    (x - hdr_len) as u16
}

/// A ring segment: metadata (`vnet`, `frame_off`, the frame's length), zero
/// headroom up to `frame_off` (at least [`META_LEN`]), `hdrs`, then the
/// `payload` slices, whose whole lines are shared where they line up.
pub fn build(
    mem: &Memory,
    vnet: VirtioNetHdr,
    frame_off: u16,
    hdrs: &[u8],
    payload: &[SegmentSlice],
) -> Result<(Segment, SpliceCounts), hicamp::Error> {
    build_lines(mem, false, vnet, frame_off, hdrs, payload)
}

/// [`build`], with the frame's own lines (the metadata line, the headroom
/// and header lines, the interior lines above them) owned when `owned`
/// ([`Memory::splice_owned`]: kept out of the dedup index, given straight
/// back by the last release), interned otherwise; the payload's lines and
/// subtrees are referenced as they are either way.
pub fn build_lines(
    mem: &Memory,
    owned: bool,
    vnet: VirtioNetHdr,
    frame_off: u16,
    hdrs: &[u8],
    payload: &[SegmentSlice],
) -> Result<(Segment, SpliceCounts), hicamp::Error> {
    let splice = |pieces: &[Piece]| {
        if owned {
            mem.splice_owned(pieces)
        } else {
            mem.splice(pieces)
        }
    };
    let frame_off = frame_off.max(META_LEN as u16);
    let plen: usize = payload.iter().map(SegmentSlice::len).sum();
    let meta = DmaMeta {
        vnet,
        ..DmaMeta::frame(frame_off, (hdrs.len() + plen) as u32)
    }
    .to_bytes();
    let m = Piece::Bytes(&meta);
    let z = Piece::Zeros(u64::from(frame_off) - META_LEN as u64);
    let h = Piece::Bytes(hdrs);
    // The common shapes (a frame of up to two payload slices) on the stack:
    // no allocation per frame.
    match payload {
        [] => splice(&[m, z, h]),
        [a] => splice(&[m, z, h, Piece::Range(a)]),
        [a, b] => splice(&[m, z, h, Piece::Range(a), Piece::Range(b)]),
        _ => {
            let mut pieces = Vec::with_capacity(3 + payload.len());
            pieces.extend([m, z, h]);
            pieces.extend(payload.iter().map(Piece::Range));
            splice(&pieces)
        }
    }
}

/// [`build`] with the whole frame given as bytes.
pub fn tx_segment(
    mem: &Memory,
    vnet: VirtioNetHdr,
    frame_off: u16,
    frame: &[u8],
) -> Result<Segment, hicamp::Error> {
    Ok(build(mem, vnet, frame_off, frame, &[])?.0)
}

/// The frame bytes of a ring segment (for tests and tools; copies).
pub fn frame_bytes(seg: &Segment) -> Option<(DmaMeta, Vec<u8>)> {
    let meta = DmaMeta::read(seg).ok()?;
    let mut frame = vec![0u8; meta.frame_len as usize];
    seg.read_at(u64::from(meta.frame_off), &mut frame).ok()?;
    Some((meta, frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_keeps_its_line_phase() {
        for (ls, hdr, phase) in [(64, 54, 0), (64, 66, 10), (128, 14, 127), (64, 0, 0)] {
            let off = usize::from(aligned_frame_off(ls, hdr, phase));
            assert!(off >= META_LEN);
            assert_eq!((off + hdr) % ls, phase % ls);
            assert!(off + hdr < META_LEN + hdr + ls);
        }
        // Ethernet + IPv4 + TCP with timestamps (66 bytes) on 64-byte lines.
        assert_eq!(aligned_frame_off(64, 66, 0), 62);
    }

    #[test]
    fn build_shares_aligned_payload_and_reads_back() {
        let mem = Memory::new(hicamp::Config::default()).unwrap();
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 1) as u8).collect();
        let app = SegmentSlice::from_bytes(&mem, &data).unwrap();
        let hdrs = [0xaau8; 54];
        let off = aligned_frame_off(mem.line_size(), hdrs.len(), 0);
        let (seg, counts) = build(&mem, VirtioNetHdr::default(), off, &hdrs, &[app]).unwrap();
        assert_eq!(counts.copied_bytes, 0);
        let (meta, frame) = frame_bytes(&seg).unwrap();
        assert_eq!(meta.frame_off, off);
        assert_eq!(&frame[..54], &hdrs);
        assert_eq!(&frame[54..], &data[..]);
        // The same frame given as bytes is the same segment.
        assert_eq!(
            tx_segment(&mem, VirtioNetHdr::default(), off, &frame).unwrap(),
            seg
        );
    }
}
