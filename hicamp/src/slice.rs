//! Slices: byte ranges of segment snapshots, the view type of this crate (as
//! `bytes::Bytes` is a view of its storage).
//!
//! A [`SegmentSlice`] names `len` bytes at offset `off` of a [`Segment`].
//! Cloning, slicing and splitting it take snapshots (one reference-count
//! increment) and never touch the bytes; the only copying operations are the
//! explicitly named ones ([`SegmentSlice::copy_to`], [`SegmentSlice::to_vec`]).
//! It is what [`Piece::Range`](crate::Piece::Range) splices, and what the
//! network stack calls a payload.

use std::fmt;

use crate::error::{Error, Result};
use crate::memory::Memory;
use crate::segment::Segment;

/// `len` bytes at offset `off` of a segment snapshot (always in bounds).
#[derive(Clone, PartialEq, Eq)]
pub struct SegmentSlice {
    seg: Segment,
    off: u64,
    len: usize,
}

impl SegmentSlice {
    /// The range `[off, off + len)` of `seg`.
    ///
    /// # Panics
    /// If the range does not lie inside the segment (a caller bug).
    pub fn new(seg: Segment, off: u64, len: usize) -> SegmentSlice {
        assert!(
            off.checked_add(len as u64)
                .is_some_and(|end| end <= seg.len()),
            "payload range {off}+{len} outside a segment of {} bytes",
            seg.len()
        );
        SegmentSlice { seg, off, len }
    }

    /// The range `[off, off + len)` of `seg`, or [`Error::BadOffset`] if it
    /// does not lie inside the segment.
    pub fn try_new(seg: Segment, off: u64, len: usize) -> Result<SegmentSlice> {
        if off
            .checked_add(len as u64)
            .is_none_or(|end| end > seg.len())
        {
            return Err(Error::BadOffset {
                offset: off,
                len: len as u64,
                seg_len: seg.len(),
            });
        }
        Ok(SegmentSlice { seg, off, len })
    }

    /// The whole of `seg`.
    pub fn from_segment(seg: Segment) -> SegmentSlice {
        let len = seg.len() as usize;
        SegmentSlice { seg, off: 0, len }
    }

    /// `data` interned into `mem` as a new segment (this copies `data` once,
    /// into lines: the byte API's one copy).
    pub fn from_bytes(mem: &Memory, data: &[u8]) -> Result<SegmentSlice> {
        Ok(SegmentSlice::from_segment(mem.segment(data)?))
    }

    /// An empty payload in `mem`.
    pub fn empty(mem: &Memory) -> SegmentSlice {
        SegmentSlice::from_segment(mem.empty())
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The segment the bytes live in.
    pub fn segment(&self) -> &Segment {
        &self.seg
    }

    /// Offset of the first byte in [`SegmentSlice::segment`].
    pub fn offset(&self) -> u64 {
        self.off
    }

    /// The sub-range `[start, end)` (a snapshot; no byte copied).
    ///
    /// # Panics
    /// If `start > end` or `end > self.len()`.
    pub fn slice(&self, start: usize, end: usize) -> SegmentSlice {
        assert!(
            start <= end && end <= self.len,
            "slice {start}..{end} of {}",
            self.len
        );
        SegmentSlice {
            seg: self.seg.clone(),
            off: self.off + start as u64,
            len: end - start,
        }
    }

    /// Drops the first `n` bytes.
    ///
    /// # Panics
    /// If `n > self.len()`.
    pub fn advance(&mut self, n: usize) {
        assert!(n <= self.len, "advance {n} past {}", self.len);
        self.off += n as u64;
        self.len -= n;
    }

    /// Splits off and returns the first `n` bytes; `self` keeps the rest.
    pub fn split_to(&mut self, n: usize) -> SegmentSlice {
        let head = self.slice(0, n);
        self.advance(n);
        head
    }

    /// Keeps only the first `n` bytes.
    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n);
    }

    /// The lines a read of these bytes reaches ([`Segment::read_cost`]).
    pub fn read_cost(&self) -> crate::segment::ReadCost {
        self.seg.read_cost(self.off, self.len as u64)
    }

    /// Copies up to `buf.len()` bytes into `buf`; returns how many (a copy:
    /// callers count it).
    pub fn copy_to(&self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.len);
        self.seg
            .read_at(self.off, &mut buf[..n])
            .expect("payload range is inside its segment")
    }

    /// The bytes as a vector (a copy).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0; self.len];
        self.copy_to(&mut v);
        v
    }

    /// The bytes as the memory holds them, one contiguous chunk at a time,
    /// in order (no copy): how checksums and the DMA read them.
    pub fn chunks(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut left = self.len;
        self.seg.cursor_at(self.off).map_while(move |c| {
            let n = c.len().min(left);
            left -= n;
            (n > 0).then(|| &c[..n])
        })
    }
}

impl fmt::Debug for SegmentSlice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SegmentSlice({}+{} of {:?})",
            self.off, self.len, self.seg
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_share_bytes() {
        let mem = Memory::new(crate::Config::default()).unwrap();
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let mut p = SegmentSlice::from_bytes(&mem, &data).unwrap();
        let s = p.slice(100, 300);
        assert_eq!(s.to_vec(), &data[100..300]);
        let head = p.split_to(10);
        assert_eq!(head.to_vec(), &data[..10]);
        assert_eq!(p.to_vec(), &data[10..]);
        assert_eq!(s.chunks().collect::<Vec<_>>().concat(), &data[100..300]);
        assert_eq!(p.slice(0, 0).chunks().count(), 0);
    }
}
