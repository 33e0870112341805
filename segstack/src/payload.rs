//! Payloads: byte ranges of segment snapshots.
//!
//! A [`Payload`] names `len` bytes at offset `off` of a [`Segment`]. Cloning,
//! slicing and splitting it take snapshots (one reference-count increment) and
//! never touch the bytes; the only copying operations are the explicitly named
//! ones ([`Payload::copy_to`], [`Payload::to_vec`]), and the stack counts every
//! byte they move.

use std::fmt;

use hicamp::{Memory, Segment};

/// `len` bytes at offset `off` of a segment snapshot.
#[derive(Clone, PartialEq, Eq)]
pub struct Payload {
    seg: Segment,
    off: u64,
    len: usize,
}

impl Payload {
    /// The range `[off, off + len)` of `seg`.
    ///
    /// # Panics
    /// If the range does not lie inside the segment (a caller bug).
    pub fn new(seg: Segment, off: u64, len: usize) -> Payload {
        assert!(
            off.checked_add(len as u64)
                .is_some_and(|end| end <= seg.len()),
            "payload range {off}+{len} outside a segment of {} bytes",
            seg.len()
        );
        Payload { seg, off, len }
    }

    /// The whole of `seg`.
    pub fn from_segment(seg: Segment) -> Payload {
        let len = seg.len() as usize;
        Payload { seg, off: 0, len }
    }

    /// `data` interned into `mem` as a new segment (this copies `data` once,
    /// into lines: the byte API's one copy).
    pub fn from_bytes(mem: &Memory, data: &[u8]) -> hicamp::Result<Payload> {
        Ok(Payload::from_segment(mem.segment(data)?))
    }

    /// An empty payload in `mem`.
    pub fn empty(mem: &Memory) -> Payload {
        Payload::from_segment(mem.empty())
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

    /// Offset of the first byte in [`Payload::segment`].
    pub fn offset(&self) -> u64 {
        self.off
    }

    /// The sub-range `[start, end)` (a snapshot; no byte copied).
    ///
    /// # Panics
    /// If `start > end` or `end > self.len()`.
    pub fn slice(&self, start: usize, end: usize) -> Payload {
        assert!(
            start <= end && end <= self.len,
            "slice {start}..{end} of {}",
            self.len
        );
        Payload {
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
    pub fn split_to(&mut self, n: usize) -> Payload {
        let head = self.slice(0, n);
        self.advance(n);
        head
    }

    /// Keeps only the first `n` bytes.
    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n);
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

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({}+{} of {:?})", self.off, self.len, self.seg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_share_bytes() {
        let mem = Memory::new(hicamp::Config::default()).unwrap();
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let mut p = Payload::from_bytes(&mem, &data).unwrap();
        let s = p.slice(100, 300);
        assert_eq!(s.to_vec(), &data[100..300]);
        let head = p.split_to(10);
        assert_eq!(head.to_vec(), &data[..10]);
        assert_eq!(p.to_vec(), &data[10..]);
        assert_eq!(s.chunks().collect::<Vec<_>>().concat(), &data[100..300]);
        assert_eq!(p.slice(0, 0).chunks().count(), 0);
    }
}
