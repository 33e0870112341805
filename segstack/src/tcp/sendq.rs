//! The send buffer, which is also the retransmission queue.
//!
//! It holds the application's payload snapshots in order, each tagged with
//! the send offset (see [`super::seq`]) of its first byte. Acknowledged bytes
//! are dropped from the front; a segment (first transmission or
//! retransmission) is a list of slices of the held payloads, so no byte is
//! ever copied after it was queued.

use std::collections::VecDeque;

use crate::Payload;

/// Queued payload chunks from the first unacknowledged byte on.
#[derive(Debug)]
pub(crate) struct SendQueue {
    /// `(offset of the first byte, payload)`, contiguous and in order.
    chunks: VecDeque<(u64, Payload)>,
    /// Offset of the first byte held (the first unacknowledged data byte).
    start: u64,
    /// Offset just past the last byte held.
    end: u64,
}

impl SendQueue {
    /// An empty queue whose first byte will have offset `start`.
    pub(crate) fn new(start: u64) -> SendQueue {
        SendQueue {
            chunks: VecDeque::new(),
            start,
            end: start,
        }
    }

    /// Bytes held.
    pub(crate) fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    /// Offset just past the last byte.
    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    /// Appends `p` (not empty).
    pub(crate) fn push(&mut self, p: Payload) {
        if p.is_empty() {
            return;
        }
        let n = p.len() as u64;
        self.chunks.push_back((self.end, p));
        self.end += n;
    }

    /// The last chunk, for a writer that extends it in place.
    pub(crate) fn last_mut(&mut self) -> Option<&mut Payload> {
        self.chunks.back_mut().map(|(_, p)| p)
    }

    /// Grows the byte count after [`SendQueue::last_mut`] extended the last
    /// chunk by `n` bytes.
    pub(crate) fn grew(&mut self, n: usize) {
        self.end += n as u64;
    }

    /// Drops every byte before offset `off`. Returns whether the last chunk
    /// was dropped whole.
    pub(crate) fn ack_to(&mut self, off: u64) -> bool {
        let off = off.min(self.end);
        if off <= self.start {
            return false;
        }
        let mut last_dropped = false;
        while let Some((s, p)) = self.chunks.front_mut() {
            let e = *s + p.len() as u64;
            if e <= off {
                self.chunks.pop_front();
                last_dropped = self.chunks.is_empty();
            } else {
                if *s < off {
                    p.advance((off - *s) as usize);
                    *s = off;
                }
                break;
            }
        }
        self.start = off;
        last_dropped
    }

    /// Index of the chunk holding offset `off` (`start <= off < end`).
    fn index_of(&self, off: u64) -> usize {
        self.chunks
            .partition_point(|(s, _)| *s <= off)
            .saturating_sub(1)
    }

    /// The slices covering `[off, off + len)`.
    #[cfg(test)]
    pub(crate) fn slices(&self, off: u64, len: usize) -> Vec<Payload> {
        let mut out = Vec::new();
        self.slices_into(off, len, &mut out);
        out
    }

    /// Appends the slices covering `[off, off + len)` to `out` (a scratch
    /// vector the caller reuses, so emitting a segment allocates nothing).
    pub(crate) fn slices_into(&self, off: u64, len: usize, out: &mut Vec<Payload>) {
        if len == 0 || off < self.start || off + len as u64 > self.end {
            return;
        }
        let mut pos = off;
        let end = off + len as u64;
        for (s, p) in self.chunks.range(self.index_of(off)..) {
            if pos >= end {
                break;
            }
            let from = (pos - s) as usize;
            let to = ((end - s) as usize).min(p.len());
            out.push(p.slice(from, to));
            pos = s + to as u64;
        }
    }

    /// The line phase (offset in its segment modulo `line`) of the byte at
    /// `off`, and the offset where its chunk starts.
    fn phase_at(&self, off: u64, line: usize) -> (usize, u64) {
        match self.chunks.get(self.index_of(off)) {
            Some((s, p)) => (((p.offset() + (off - s)) % line as u64) as usize, *s),
            None => (0, off),
        }
    }

    /// Shapes a segment of `len` bytes at `off` so that its payload can be
    /// put behind line-aligned headers without copying:
    ///
    /// - it stops before a chunk whose line phase does not continue the
    ///   segment's (concatenating them would shift every line of the later
    ///   chunk), once it holds at least `min` bytes;
    /// - its end is pulled back to a line boundary of its segment, so that
    ///   the next segment starts line-aligned, when that keeps at least `min`
    ///   bytes.
    ///
    /// Returns the new length (never 0 for `len > 0`).
    pub(crate) fn shape(&self, off: u64, len: usize, line: usize, min: usize) -> usize {
        if line <= 1 || len == 0 || off < self.start || off + len as u64 > self.end {
            return len;
        }
        let end = off + len as u64;
        let first_phase = self.phase_at(off, line).0;
        let mut taken = 0usize;
        let mut pos = off;
        for (s, p) in self.chunks.range(self.index_of(off)..) {
            if pos >= end {
                break;
            }
            let from = pos - s;
            let phase = ((p.offset() + from) % line as u64) as usize;
            if taken > 0 && phase != (first_phase + taken) % line && taken >= min {
                return taken;
            }
            let to = (end - s).min(p.len() as u64);
            taken += (to - from) as usize;
            pos = s + to;
        }
        self.shape_end(off, len, line, min)
    }

    /// Pulls the end of a segment of `len` bytes at `off` back to a
    /// multiple of `grain` in its chunk's segment (not before the chunk's
    /// start), when that keeps at least `min` bytes (or `len`, if less);
    /// a segment that ends the data keeps its length.
    ///
    /// With `grain` the span of a leaf line, the next segment starts
    /// line-aligned; with the span of an interior line (a subtree of
    /// leaves), a large segment ends on a subtree boundary of its payload's
    /// segment, so that the next one starts on one: spliced behind headers
    /// that end on a subtree boundary too, its interior lines are the
    /// payload's own (deduplicated, not rebuilt).
    pub(crate) fn shape_end(&self, off: u64, len: usize, grain: usize, min: usize) -> usize {
        let end = off + len as u64;
        if grain <= 1 || len == 0 || off < self.start || end >= self.end {
            return len;
        }
        let (phase, chunk_start) = self.phase_at(end, grain);
        if phase == 0 {
            return len;
        }
        let mut cut = end - phase as u64;
        // A boundary in an earlier chunk counts when it is one there too
        // (chunks that continue one segment, as a sender's successive
        // partial takes do); else the chunk's start is the cut.
        if cut < chunk_start && (cut <= off || self.phase_at(cut, grain).0 != 0) {
            cut = chunk_start;
        }
        if cut > off && (cut - off) as usize >= min.min(len) {
            (cut - off) as usize
        } else {
            len
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hicamp::{Config, Memory};

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn slices_and_acks() {
        let mem = Memory::new(Config::default()).unwrap();
        let a = bytes(1000, 1);
        let b = bytes(500, 2);
        let mut q = SendQueue::new(1);
        q.push(Payload::from_bytes(&mem, &a).unwrap());
        q.push(Payload::from_bytes(&mem, &b).unwrap());
        assert_eq!(q.len(), 1500);
        let s = q.slices(901, 200);
        assert_eq!(s.len(), 2);
        let got: Vec<u8> = s.iter().flat_map(|p| p.to_vec()).collect();
        assert_eq!(got, [&a[900..], &b[..100]].concat());
        assert!(!q.ack_to(951));
        assert_eq!(q.len(), 550);
        let got: Vec<u8> = q.slices(951, 550).iter().flat_map(|p| p.to_vec()).collect();
        assert_eq!(got, [&a[950..], &b[..]].concat());
        assert!(q.ack_to(2000));
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn shaping_keeps_lines_aligned() {
        let mem = Memory::new(Config::default()).unwrap();
        let mut q = SendQueue::new(1);
        // chunks of 1000 bytes (not a line multiple), each at offset 0
        for i in 0..4 {
            q.push(Payload::from_bytes(&mem, &bytes(1000, i)).unwrap());
        }
        // a 1408 segment from the start stops at the chunk boundary
        assert_eq!(q.shape(1, 1408, 64, 704), 1000);
        // below `min`, it concatenates and aligns the end in the 2nd chunk
        assert_eq!(q.shape(1, 1408, 64, 1200), 1408 - 408 % 64);
        // a segment from mid-chunk at phase 16 ends aligned
        let mut q2 = SendQueue::new(1);
        q2.push(Payload::from_bytes(&mem, &bytes(10_000, 9)).unwrap());
        assert_eq!(q2.shape(17, 1408, 64, 704), 1408 - 16);
        assert_eq!(q2.shape(1, 1408, 64, 704), 1408);
        // at the end of the data nothing changes
        assert_eq!(q2.shape(10_001 - 100, 100, 64, 50), 100);
    }

    #[test]
    fn large_segments_end_on_subtree_boundaries() {
        let mem = Memory::new(Config::default()).unwrap();
        let mut q = SendQueue::new(1);
        // one payload at offset 100 of its segment
        let seg = Payload::from_bytes(&mem, &bytes(300_000, 3)).unwrap();
        q.push(seg.slice(100, seg.len()));
        // a 65160-byte segment from offset 1 (payload offset 100) ends at
        // the last 1 KiB boundary of the segment before 65260
        assert_eq!(q.shape_end(1, 65_160, 1024, 32_580), 64_512 - 100);
        // already on a boundary: unchanged
        assert_eq!(q.shape_end(1 + 924, 64_512, 1024, 32_256), 64_512);
        // the cut would keep less than `min`: unchanged
        assert_eq!(q.shape_end(1, 1_000, 1024, 1_000), 1_000);
        // the end of the data: unchanged
        assert_eq!(q.shape_end(1, 299_900, 1024, 1), 299_900);
        // a cut never goes before the start of the chunk holding the end
        let mut q3 = SendQueue::new(1);
        q3.push(Payload::from_bytes(&mem, &bytes(5_000, 1)).unwrap());
        q3.push(Payload::from_bytes(&mem, &bytes(5_000, 2)).unwrap());
        assert_eq!(q3.shape_end(1, 5_500, 1024, 100), 5_000);
        // chunks that continue one segment: the boundary in the earlier
        // chunk is a boundary of the segment
        let whole = Payload::from_bytes(&mem, &bytes(300_000, 4)).unwrap();
        let mut q4 = SendQueue::new(1);
        q4.push(whole.slice(0, 64_000));
        q4.push(whole.slice(64_000, 64_064));
        q4.push(whole.slice(64_064, 200_000));
        assert_eq!(q4.shape_end(1, 65_160, 1024, 32_580), 64_512);
        assert_eq!(q4.shape_end(1, 64_100, 1024, 32_000), 63_488);
        // ... but not in a chunk of another segment (or another phase)
        let mut q5 = SendQueue::new(1);
        q5.push(whole.slice(0, 64_000));
        q5.push(whole.slice(64_032, 200_000));
        assert_eq!(q5.shape_end(1, 64_100, 1024, 32_000), 64_000);
    }
}
