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
//!
//! [`TxDesc`] is the other form of a TX slot: the same metadata, the
//! headers inline and snapshots of the payload, no segment built
//! ([`TxFrame`] is either).

use hicamp::{Cursor, Memory, Piece, Segment, SegmentSlice, SpliceCounts};

use crate::meta::{DmaMeta, MetaError, VirtioNetHdr, META_LEN};

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

/// The device's read of a ring segment: its metadata, and a cursor at the
/// frame's first byte (one cursor walks the metadata's line, then the
/// frame's). [`DmaMeta::parse`] checked that the frame lies within the
/// segment.
pub fn open_frame(seg: &Segment) -> Result<(DmaMeta, Cursor<'_>), MetaError> {
    let mut c = seg.cursor();
    let first = c.chunk();
    let meta = if first.len() >= META_LEN {
        DmaMeta::parse(&first[..META_LEN], seg.len())
    } else {
        DmaMeta::read(seg)
    }?;
    c.advance(usize::from(meta.frame_off));
    Ok((meta, c))
}

/// The frame bytes of a ring segment (for tests and tools; copies).
pub fn frame_bytes(seg: &Segment) -> Option<(DmaMeta, Vec<u8>)> {
    let meta = DmaMeta::read(seg).ok()?;
    let mut frame = vec![0u8; meta.frame_len as usize];
    seg.read_at(u64::from(meta.frame_off), &mut frame).ok()?;
    Some((meta, frame))
}

/// The most header bytes a [`TxDesc`] carries inline: Ethernet, IPv4 and
/// TCP with their largest options (14 + 60 + 60), rounded up.
pub const INLINE_MAX: usize = 136;

/// Why a [`TxDesc`] could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DescError {
    /// More header bytes than a descriptor carries inline.
    #[error("{0} header bytes exceed the {INLINE_MAX} a TX descriptor carries inline")]
    HeadersTooLong(usize),
    /// The frame is longer than the metadata's 32-bit length says.
    #[error("a frame of {0} bytes is too long for its metadata")]
    TooLong(u64),
    /// A payload slice lives in another memory than the NIC's.
    #[error("a payload slice lives in another memory")]
    ForeignPayload,
}

/// The payload snapshots of a [`TxDesc`]: up to two in the descriptor
/// itself (no allocation per frame), more on the heap.
#[derive(Clone, PartialEq, Eq)]
enum Slices {
    Zero,
    One(SegmentSlice),
    Two([SegmentSlice; 2]),
    Many(Box<[SegmentSlice]>),
}

/// A TX descriptor with inline headers: the second form of a TX ring slot,
/// beside a frame segment.
///
/// As an mlx5 send WQE carries a frame's L2-L4 headers inline and points
/// at its payload buffers, the descriptor carries the slot's metadata (a
/// [`DmaMeta`]: offloads, status, frame length), the header bytes, and
/// snapshots ([`SegmentSlice`]s: one reference each, no byte touched) of
/// the payload's segments. The device gathers the headers and the payload's
/// lines straight into the port's gather list; no frame segment is built,
/// and nothing is released at completion but the payload references.
///
/// ```text
///  TX slot (a segment id of the ring)
///   +-- DmaMeta (vnet, status, frame_len)   the slot's metadata
///   +-- headers, inline (<= INLINE_MAX)     Ethernet + IP + L4
///   +-- payload snapshots ----------------> lines of the sender's segments
/// ```
///
/// The frame on the wire is the one [`build`] would make of the same
/// headers and payload (a frame segment with the headers spliced in front of
/// the payload's lines).
#[derive(Clone, PartialEq, Eq)]
pub struct TxDesc {
    meta: DmaMeta,
    hdr_len: u8,
    hdrs: [u8; INLINE_MAX],
    payload: Slices,
}

impl TxDesc {
    /// A descriptor for the frame `hdrs` then the `payload` slices, with
    /// `vnet`'s offloads; its status reads `PENDING` until the device
    /// reports an error.
    pub fn new(
        vnet: VirtioNetHdr,
        hdrs: &[u8],
        payload: &[SegmentSlice],
    ) -> Result<TxDesc, DescError> {
        if hdrs.len() > INLINE_MAX {
            return Err(DescError::HeadersTooLong(hdrs.len()));
        }
        let plen: u64 = payload.iter().map(|p| p.len() as u64).sum();
        let len = hdrs.len() as u64 + plen;
        let frame_len = u32::try_from(len).map_err(|_| DescError::TooLong(len))?;
        let mut h = [0u8; INLINE_MAX];
        h[..hdrs.len()].copy_from_slice(hdrs);
        let payload = match payload {
            [] => Slices::Zero,
            [a] => Slices::One(a.clone()),
            [a, b] => Slices::Two([a.clone(), b.clone()]),
            many => Slices::Many(many.into()),
        };
        Ok(TxDesc {
            meta: DmaMeta {
                vnet,
                ..DmaMeta::frame(0, frame_len)
            },
            hdr_len: hdrs.len() as u8,
            hdrs: h,
            payload,
        })
    }

    /// The slot's metadata (`frame_off` is 0: the frame starts with the
    /// inline headers).
    pub fn meta(&self) -> &DmaMeta {
        &self.meta
    }

    /// The completion status ([`crate::meta::status`]).
    pub fn status(&self) -> u16 {
        self.meta.status
    }

    /// Sets the completion status (the device's report).
    pub fn set_status(&mut self, st: u16) {
        self.meta.status = st;
    }

    /// The inline header bytes.
    pub fn headers(&self) -> &[u8] {
        &self.hdrs[..usize::from(self.hdr_len)]
    }

    /// The inline header bytes, mutably (a neighbour's resolved address
    /// patched into a waiting frame).
    pub fn headers_mut(&mut self) -> &mut [u8] {
        &mut self.hdrs[..usize::from(self.hdr_len)]
    }

    /// The payload snapshots, in order.
    pub fn payload(&self) -> &[SegmentSlice] {
        match &self.payload {
            Slices::Zero => &[],
            Slices::One(a) => std::slice::from_ref(a),
            Slices::Two(a) => a,
            Slices::Many(v) => v,
        }
    }

    /// Takes the descriptor whole, for a device that reads it later (a
    /// writer thread), and leaves in its place the same metadata and headers
    /// without the payload's references: what the slot still needs until it
    /// is reaped (its status).
    pub fn take(&mut self) -> TxDesc {
        let hollow = TxDesc {
            meta: self.meta,
            hdr_len: self.hdr_len,
            hdrs: self.hdrs,
            payload: Slices::Zero,
        };
        std::mem::replace(self, hollow)
    }

    /// The frame's length in bytes (headers and payload).
    pub fn frame_len(&self) -> usize {
        self.meta.frame_len as usize
    }

    /// Appends the frame to `out` as chunks, in order: the inline headers,
    /// then the payload's lines as the memory holds them (runs of sibling
    /// lines read from their parent line at once). Returns how many of the
    /// chunks are payload lines read through the memory.
    pub fn gather<'a>(&'a self, out: &mut Vec<&'a [u8]>) -> usize {
        if self.hdr_len > 0 {
            out.push(self.headers());
        }
        let before = out.len();
        for p in self.payload() {
            if !p.is_empty() {
                p.segment().cursor_at(p.offset()).gather(p.len(), out);
            }
        }
        out.len() - before
    }

    /// Whether every payload slice lives in `mem`.
    pub fn in_memory(&self, mem: &Memory) -> bool {
        self.payload()
            .iter()
            .all(|p| p.segment().memory().same(mem))
    }

    /// The frame as a ring segment ([`build_lines`]: `owned` frame lines or
    /// interned ones), for whatever needs the frame as a segment.
    pub fn to_segment(&self, mem: &Memory, owned: bool) -> Result<Segment, hicamp::Error> {
        let phase = self.payload().first().map_or(0, |p| p.offset() as usize);
        let off = aligned_frame_off(mem.line_size(), usize::from(self.hdr_len), phase);
        Ok(build_lines(
            mem,
            owned,
            self.meta.vnet,
            off,
            self.headers(),
            self.payload(),
        )?
        .0)
    }

    /// The frame's bytes (for tests and tools; copies).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.frame_len());
        v.extend_from_slice(self.headers());
        for p in self.payload() {
            v.extend(p.chunks().flatten());
        }
        v
    }
}

impl std::fmt::Debug for TxDesc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxDesc")
            .field("meta", &self.meta)
            .field("hdr_len", &self.hdr_len)
            .field("payload", &self.payload())
            .finish()
    }
}

/// What a TX slot is given: a frame segment (metadata at offset 0, the
/// frame at `frame_off`) or a descriptor with inline headers.
// A descriptor is large (about 320 bytes: the headers and two payload
// slices inline) by design: a queued frame costs no allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxFrame {
    /// A ring segment ([`build`]).
    Segment(Segment),
    /// A descriptor with inline headers and payload snapshots.
    Inline(TxDesc),
}

impl TxFrame {
    /// The frame's bytes (for tests and tools; copies).
    pub fn frame_bytes(&self) -> Option<(DmaMeta, Vec<u8>)> {
        match self {
            TxFrame::Segment(s) => frame_bytes(s),
            TxFrame::Inline(d) => Some((d.meta, d.to_vec())),
        }
    }
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
