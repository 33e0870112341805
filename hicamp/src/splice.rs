//! Splicing: a new segment made of pieces of others, sharing their lines.
//!
//! This is how a network stack puts headers in front of an application's
//! payload without copying it ("Rethinking Network Stack Design with Memory
//! Snapshots", figure 3): the new segment's leaves
//! are the source segment's own leaf lines wherever a whole source line lands
//! on a whole line of the result, so the payload costs one reference-count
//! increment per line and no byte. Only lines that mix pieces (headers and the
//! first payload bytes, or a source range that is not line-aligned with its
//! place in the result) are assembled by copying, and [`SpliceCounts`] says
//! exactly how many source bytes that copied.

use crate::dag::{self, Tree, Walker, MAX_HEIGHT};
use crate::error::{Error, Result};
use crate::id::{LineId, LineKind};
use crate::memory::Memory;
use crate::segment::Segment;
use crate::slice::SegmentSlice;
use crate::store::{Store, WriteCounts};

/// One piece of a spliced segment, in order.
#[derive(Debug, Clone, Copy)]
pub enum Piece<'a> {
    /// These bytes (new data, e.g. headers).
    Bytes(&'a [u8]),
    /// This many zero bytes.
    Zeros(u64),
    /// A slice of a segment of the same memory.
    Range(&'a SegmentSlice),
}

impl<'a> From<&'a SegmentSlice> for Piece<'a> {
    fn from(s: &'a SegmentSlice) -> Piece<'a> {
        Piece::Range(s)
    }
}

impl Piece<'_> {
    fn len(&self) -> u64 {
        match *self {
            Piece::Bytes(b) => b.len() as u64,
            Piece::Zeros(n) => n,
            Piece::Range(s) => s.len() as u64,
        }
    }
}

/// What a splice shared and what it copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpliceCounts {
    /// Source leaf lines reused as they are (no byte copied): one reference
    /// each, or none when under a shared subtree.
    pub shared_lines: u64,
    /// Bytes of [`Piece::Range`]s carried by shared lines.
    pub shared_bytes: u64,
    /// Bytes of [`Piece::Range`]s copied into assembled lines.
    pub copied_bytes: u64,
    /// Lines assembled from bytes (then interned, so they may dedup).
    pub assembled_lines: u64,
    /// Interior lines of a source taken whole (one reference on each, none
    /// on the leaves under it, which `shared_lines` counts).
    pub shared_subtrees: u64,
}

/// The line being assembled: on the stack for lines of up to 128 bytes (no
/// allocation per splice: a received frame, a protocol message).
enum LineBuf {
    Stack([u8; 128], usize),
    Heap(Vec<u8>),
}

impl LineBuf {
    fn new(ls: usize) -> LineBuf {
        if ls <= 128 {
            LineBuf::Stack([0; 128], ls)
        } else {
            LineBuf::Heap(vec![0; ls])
        }
    }
}

impl std::ops::Deref for LineBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            LineBuf::Stack(b, n) => &b[..*n],
            LineBuf::Heap(v) => v,
        }
    }
}

impl std::ops::DerefMut for LineBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            LineBuf::Stack(b, n) => &mut b[..*n],
            LineBuf::Heap(v) => v,
        }
    }
}

/// Whole input lines from this many on are interned as one batch.
const BATCH_LINES: usize = 2;

/// Assembles the result: whole source subtrees where they land aligned on
/// the result's own subtrees, leaves elsewhere. Owns every reference in
/// `leaves` and `upper`.
///
/// The result's nodes are kept per level, not yet under a parent: `leaves`
/// are nodes of height 0 and `upper[k - 1]` nodes of height `k`, and every
/// node of a higher level precedes, in the result, every node of a lower one.
/// Since a node of height `k` spans `F^k` leaves, the nodes of the levels
/// above `j` end on a multiple of `F^(j + 1)` leaves: the nodes of level `j`
/// start on a boundary of their parents, and grouping them `F` at a time
/// (the last group zero-padded, at the end) gives the canonical parents.
struct Builder<'a> {
    store: &'a Store,
    /// log2 of the fanout.
    fs: u32,
    leaves: Vec<LineId>,
    upper: Vec<Vec<LineId>>,
    /// Leaves under the nodes of `upper`.
    done: u64,
    buf: LineBuf,
    fill: usize,
    counts: SpliceCounts,
    /// Assembled lines, and interior lines over an owned line, are made
    /// owned ([`Memory::splice_owned`]): no hash, no index.
    owned: bool,
    /// Owned slots taken and not yet used (`Store::owned_line`).
    spare: Vec<u32>,
    /// Owned lines made, by kind.
    made: [u64; 2],
}

impl Builder<'_> {
    /// Leaves of the result so far (a partly filled `buf` not counted).
    fn pos(&self) -> u64 {
        self.done + self.leaves.len() as u64
    }

    /// Puts the nodes of level `j` under parents of level `j + 1` (a whole
    /// number of groups unless this is the end of the result).
    fn carry(&mut self, j: usize) -> Result<()> {
        let n = if j == 0 {
            self.leaves.len()
        } else {
            self.upper.get(j - 1).map_or(0, Vec::len)
        };
        if n == 0 {
            return Ok(());
        }
        if j == 0 {
            self.done += n as u64;
        }
        if self.upper.len() <= j {
            self.upper.resize_with(j + 1, Vec::new);
        }
        let mut from = if j == 0 {
            std::mem::take(&mut self.leaves)
        } else {
            std::mem::take(&mut self.upper[j - 1])
        };
        // Consumes the references in `from`, on success and on error.
        let r = if self.owned && from.iter().any(|&c| self.store.is_owned(c)) {
            self.owned_level(&from, j)
        } else if from.len() <= self.store.fanout() {
            // One parent (a frame's header subtree, its top lines): one
            // intern, no level vectors.
            self.store
                .intern_interior(&from)
                .map(|id| self.upper[j].push(id))
        } else {
            self.store.intern_interior_level(&from, &mut self.upper[j])
        };
        from.clear();
        self.put_back(j, from);
        r
    }

    /// The parents of `from` (level `j`) into `upper[j]`: owned over a
    /// group holding an owned line, interned over the others (a payload's
    /// own subtree stays canonical and is found). Consumes the references
    /// in `from`, on success and on error.
    fn owned_level(&mut self, from: &[LineId], j: usize) -> Result<()> {
        let fan = self.store.fanout();
        let ls = self.buf.len();
        for (g, group) in from.chunks(fan).enumerate() {
            let r = if group.iter().any(|&c| self.store.is_owned(c)) {
                crate::store::with_line(ls, |buf| {
                    for (b, c) in buf.chunks_exact_mut(4).zip(group) {
                        b.copy_from_slice(&c.0.to_le_bytes());
                    }
                    self.store
                        .owned_line(LineKind::Interior, buf, &mut self.spare, &mut self.made)
                })
                .inspect_err(|_| self.store.release_all(group))
            } else {
                self.store.intern_interior(group)
            };
            match r {
                Ok(id) => self.upper[j].push(id),
                Err(e) => {
                    self.store
                        .release_all(&from[((g + 1) * fan).min(from.len())..]);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn put_back(&mut self, j: usize, v: Vec<LineId>) {
        if j == 0 {
            self.leaves = v;
        } else {
            self.upper[j - 1] = v;
        }
    }

    /// Appends `id` (an owned reference), a node of height `k >= 1`, at a
    /// result position on a multiple of `F^k` leaves with no partial line.
    fn subtree(&mut self, k: u32, id: LineId) -> Result<()> {
        debug_assert!(k >= 1 && self.fill == 0);
        debug_assert!(self.pos().is_multiple_of(1 << (self.fs * k)));
        for j in 0..k as usize {
            if let Err(e) = self.carry(j) {
                self.store.release(id);
                return Err(e);
            }
        }
        if self.upper.len() < k as usize {
            self.upper.resize_with(k as usize, Vec::new);
        }
        self.upper[k as usize - 1].push(id);
        self.done += 1 << (self.fs * k);
        Ok(())
    }

    /// The largest `k` (at most `max_k`) such that the result position and
    /// source leaf `src` are multiples of `F^k` leaves and `F^k <= avail`.
    fn aligned_level(&self, src: u64, avail: u64, max_k: u32) -> u32 {
        if self.fill != 0 {
            return 0;
        }
        let both = src | self.pos();
        let mut k = 0;
        while k < max_k {
            let sh = self.fs * (k + 1);
            if sh >= 63 || both & ((1u64 << sh) - 1) != 0 || (1u64 << sh) > avail {
                break;
            }
            k += 1;
        }
        k
    }

    /// The root over the nodes built, for a result of `n` leaves (at least
    /// one, `buf` flushed).
    fn finish(&mut self, n: u64) -> Result<(LineId, u32)> {
        debug_assert_eq!(self.pos(), n);
        let h = dag::height_for(n, self.fs);
        for j in 0..h as usize {
            self.carry(j)?;
        }
        let top = if h == 0 {
            &mut self.leaves
        } else {
            &mut self.upper[h as usize - 1]
        };
        debug_assert_eq!(top.len(), 1);
        Ok((top.pop().expect("one root"), h))
    }

    fn flush(&mut self) -> Result<()> {
        let id = if self.owned {
            self.store
                .owned_line(LineKind::Leaf, &self.buf, &mut self.spare, &mut self.made)?
        } else {
            self.store.intern(LineKind::Leaf, &self.buf)?.0
        };
        self.leaves.push(id);
        self.buf.fill(0);
        self.fill = 0;
        self.counts.assembled_lines += 1;
        Ok(())
    }

    fn bytes(&mut self, mut data: &[u8], from_range: bool) -> Result<()> {
        let ls = self.buf.len();
        while !data.is_empty() {
            if self.fill == 0 && data.len() >= BATCH_LINES * ls && !self.owned {
                // Whole lines straight from the input, interned as one batch
                // (hashes and index probes pipelined, misses locked once per
                // shard) instead of one `intern` per line.
                let k = data.len() / ls * ls;
                let start = self.leaves.len();
                let mut wc = WriteCounts::default();
                if let Err(e) = self
                    .store
                    .intern_leaves(&data[..k], &mut self.leaves, &mut wc)
                {
                    // Nothing of the failed batch stays referenced.
                    self.leaves.truncate(start);
                    return Err(e);
                }
                self.counts.assembled_lines += (k / ls) as u64;
                if from_range {
                    self.counts.copied_bytes += k as u64;
                }
                data = &data[k..];
                continue;
            }
            let n = data.len().min(self.buf.len() - self.fill);
            self.buf[self.fill..self.fill + n].copy_from_slice(&data[..n]);
            self.fill += n;
            data = &data[n..];
            if from_range {
                self.counts.copied_bytes += n as u64;
            }
            if self.fill == self.buf.len() {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn zeros(&mut self, mut n: u64) -> Result<()> {
        let ls = self.buf.len() as u64;
        while n > 0 {
            if self.fill == 0 && n >= ls {
                // An aligned run of whole zero subtrees is line 0 at its
                // level (no leaf pushed for each).
                let k = self.aligned_level(0, n / ls, MAX_HEIGHT as u32);
                if k >= 1 {
                    self.subtree(k, LineId::ZERO)?;
                    n -= ls << (self.fs * k);
                    continue;
                }
                self.leaves.push(LineId::ZERO);
                n -= ls;
                continue;
            }
            let k = n.min(ls - self.fill as u64) as usize;
            // The buffer past `fill` is already zero.
            self.fill += k;
            n -= k as u64;
            if self.fill == self.buf.len() {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// `last`: nothing follows this piece, so a source line that ends the
    /// source segment (zero-padded, like the result's last line) is reusable.
    fn range(&mut self, seg: &Segment, off: u64, len: u64, last: bool) -> Result<()> {
        let ls = self.buf.len() as u64;
        let shift = ls.trailing_zeros();
        let mut w = Walker::new(self.store, seg.tree(), off);
        let end = off + len;
        let to_end = last && end == seg.len();
        while w.pos() < end {
            let left = end - w.pos();
            let whole = left >= ls || to_end;
            // Whole source leaves left (the source's zero-padded last one
            // counts when the result ends with it too).
            let avail = if to_end {
                left.div_ceil(ls)
            } else {
                left >> shift
            };
            if self.fill == 0 && w.pos().is_multiple_of(ls) && avail >> self.fs != 0 {
                // A whole source subtree landing on a whole subtree of the
                // result: one reference on its root, whatever its size.
                let k = self.aligned_level(w.pos() >> shift, avail, w.height());
                if k >= 1 {
                    let id = w.node(k);
                    self.store.acquire(id);
                    self.subtree(k, id)?;
                    let n = (ls << (self.fs * k)).min(left);
                    self.counts.shared_subtrees += 1;
                    self.counts.shared_lines += 1 << (self.fs * k);
                    self.counts.shared_bytes += n;
                    w.advance(n);
                    continue;
                }
            }
            if self.fill == 0 && left >= 2 * ls {
                // A run of whole sibling leaves under one interior line: their
                // ids straight from the parent, no walk leaf by leaf.
                if let Some((kids, n)) = w.leaf_run(left / ls) {
                    match kids {
                        Some(kids) => {
                            for k in kids.as_chunks::<4>().0 {
                                let id = LineId(u32::from_le_bytes(*k));
                                self.store.acquire(id);
                                self.leaves.push(id);
                            }
                        }
                        None => self.leaves.extend((0..n).map(|_| LineId::ZERO)),
                    }
                    self.counts.shared_lines += n as u64;
                    self.counts.shared_bytes += n as u64 * ls;
                    w.advance(n as u64 * ls);
                    continue;
                }
            }
            if self.fill == 0 && w.pos().is_multiple_of(ls) && whole {
                let id = w.leaf();
                self.store.acquire(id);
                self.leaves.push(id);
                let n = left.min(ls);
                self.counts.shared_lines += 1;
                self.counts.shared_bytes += n;
                if n < ls {
                    // The result ends inside this line: account it as filled.
                    self.fill = 0;
                }
                w.advance(n);
                continue;
            }
            let c = w.chunk();
            let n = (c.len() as u64).min(left).min(ls - self.fill as u64) as usize;
            self.bytes(&c[..n], true)?;
            w.advance(n as u64);
        }
        Ok(())
    }
}

impl Drop for Builder<'_> {
    fn drop(&mut self) {
        // Counted before any of them can be released below.
        self.store.give_back_spare(&mut self.spare, &mut self.made);
        SPARE.set(Some(std::mem::take(&mut self.spare)));
        self.store.release_all(&self.leaves);
        self.leaves.clear();
        for l in &mut self.upper {
            self.store.release_all(l);
            l.clear();
        }
        // The (empty) vectors go back for this thread's next splice, unless
        // a huge splice grew them.
        if self.leaves.capacity() <= KEEP_LEAVES {
            let levels = (
                std::mem::take(&mut self.leaves),
                std::mem::take(&mut self.upper),
            );
            LEVELS.set(Some(levels));
        }
    }
}

/// Level vectors of up to this many leaves are kept for the next splice.
const KEEP_LEAVES: usize = 1 << 14;

/// Level vectors (see [`Builder`]) kept between splices: no allocation per
/// frame on a thread that builds frames.
type Levels = (Vec<LineId>, Vec<Vec<LineId>>);

thread_local! {
    static LEVELS: std::cell::Cell<Option<Levels>> = const { std::cell::Cell::new(None) };
    /// The spare owned slots vector of [`Builder`] (empty between splices).
    static SPARE: std::cell::Cell<Option<Vec<u32>>> = const { std::cell::Cell::new(None) };
}

/// A splice of bytes and zeros only (a received frame: its metadata line,
/// padding and the frame's bytes) of at most this many bytes is built from
/// one flat copy, as `Memory::segment` builds: duplicate lines are borrowed
/// (no count touched) instead of each taking a reference that its parent,
/// when it exists too, gives back.
const FLAT_MAX: u64 = 1 << 20;
/// ... and of more than this many lines (a splice of a few lines costs less
/// interned line by line than through the batch of a tree build).
const FLAT_MIN_LINES: u64 = 4;
/// Flat copies of at most this many bytes are on the stack.
const FLAT_STACK: usize = 2048;

/// Copies `pieces` (`Bytes` and `Zeros` only) into `flat` (zeroed, their
/// length).
fn fill_flat(pieces: &[Piece<'_>], flat: &mut [u8]) {
    let mut at = 0;
    for p in pieces {
        match *p {
            Piece::Bytes(d) => flat[at..at + d.len()].copy_from_slice(d),
            // Already zero.
            Piece::Zeros(_) => {}
            Piece::Range(_) => unreachable!("fill_flat takes no ranges"),
        }
        at += p.len() as usize;
    }
}

/// The lines that [`Builder`] assembles for `pieces` (no `Range` among
/// them): every line but those it skips as whole lines of a `Zeros` piece.
fn assembled_lines(pieces: &[Piece<'_>], ls: u64) -> u64 {
    let (mut fill, mut lines) = (0u64, 0u64);
    for p in pieces {
        let mut n = p.len();
        let zeros = matches!(p, Piece::Zeros(_));
        while n > 0 {
            if fill == 0 && n >= ls && (zeros || n >= BATCH_LINES as u64 * ls) {
                let k = n / ls;
                if !zeros {
                    lines += k;
                }
                n -= k * ls;
                continue;
            }
            let k = n.min(ls - fill);
            fill += k;
            n -= k;
            if fill == ls {
                lines += 1;
                fill = 0;
            }
        }
    }
    lines + u64::from(fill > 0)
}

impl Memory {
    /// [`Memory::splice`] of `Bytes` and `Zeros` pieces only (`total`
    /// bytes, at most [`FLAT_MAX`]): one flat copy built as a segment.
    fn splice_flat(&self, pieces: &[Piece<'_>], total: usize) -> Result<(Segment, SpliceCounts)> {
        let mut stack = [0u8; FLAT_STACK];
        let mut heap;
        let flat: &mut [u8] = if total <= FLAT_STACK {
            &mut stack[..total]
        } else {
            heap = vec![0u8; total];
            &mut heap
        };
        fill_flat(pieces, flat);
        let store = &self.inner.store;
        let tree = dag::build(store, flat)?;
        let counts = SpliceCounts {
            assembled_lines: assembled_lines(pieces, store.line_size() as u64),
            ..SpliceCounts::default()
        };
        Ok((Segment::from_tree(self.clone(), tree), counts))
    }

    /// The length of a splice of `pieces`, checked: every slice is of this
    /// memory (a slice is in bounds by construction), and the total fits a
    /// segment.
    fn splice_len(&self, pieces: &[Piece<'_>]) -> Result<u64> {
        let mut total: u64 = 0;
        for p in pieces {
            if let Piece::Range(s) = *p {
                if !s.segment().memory().same(self) {
                    return Err(Error::ForeignSegment);
                }
            }
            total = total.saturating_add(p.len());
        }
        dag::check_len(total)?;
        Ok(total)
    }

    /// A new segment holding `pieces` one after another.
    ///
    /// Whole lines of [`Piece::Range`]s that fall on whole lines of the result
    /// are shared, not copied: splice a payload at an offset congruent to its
    /// source offset modulo the line size and its bytes stay where they are.
    /// Equal content gives the equal segment however it was spliced.
    pub fn splice(&self, pieces: &[Piece<'_>]) -> Result<(Segment, SpliceCounts)> {
        let total = self.splice_len(pieces)?;
        let flat = total > FLAT_MIN_LINES << self.inner.store.shift() && total <= FLAT_MAX;
        if flat && !pieces.iter().any(|p| matches!(p, Piece::Range(_))) {
            return self.splice_flat(pieces, total as usize);
        }
        self.splice_built(pieces, total, false)
    }

    /// [`Memory::splice`] whose own lines are **owned** (see
    /// [`Memory::segment_owned`]): the lines assembled from `Bytes`, `Zeros`
    /// and the copied parts of `Range`s, and every interior line above one
    /// of them, are kept out of the dedup index (no hash, no lookup; the
    /// last release gives the slot straight back). The whole lines and
    /// subtrees shared from `Range`s stay what they are (one more reference
    /// each), and so do interior lines over shared lines only. For a TX
    /// frame: headers and headroom in lines of its own, the payload
    /// referenced. The result equals `splice` of the same pieces. A memory
    /// without owned lines (file-backed) splices as `splice`.
    pub fn splice_owned(&self, pieces: &[Piece<'_>]) -> Result<(Segment, SpliceCounts)> {
        if !self.owned_lines_enabled() {
            return self.splice(pieces);
        }
        let total = self.splice_len(pieces)?;
        if total > 0 && total <= FLAT_MAX && !pieces.iter().any(|p| matches!(p, Piece::Range(_))) {
            let mut stack = [0u8; FLAT_STACK];
            let mut heap;
            let flat: &mut [u8] = if total as usize <= FLAT_STACK {
                &mut stack[..total as usize]
            } else {
                heap = vec![0u8; total as usize];
                &mut heap
            };
            fill_flat(pieces, flat);
            let seg = self.segment_owned(flat)?;
            let counts = SpliceCounts {
                assembled_lines: assembled_lines(pieces, self.line_size() as u64),
                ..SpliceCounts::default()
            };
            return Ok((seg, counts));
        }
        self.splice_built(pieces, total, true)
    }

    /// [`Memory::splice`] leaf by leaf (`total`: the pieces' length, checked),
    /// its own lines `owned` or interned.
    fn splice_built(
        &self,
        pieces: &[Piece<'_>],
        total: u64,
        owned: bool,
    ) -> Result<(Segment, SpliceCounts)> {
        let store = &self.inner.store;
        let (leaves, upper) = LEVELS.take().unwrap_or_default();
        let mut b = Builder {
            store,
            fs: store.shift() - 2,
            leaves,
            upper,
            done: 0,
            buf: LineBuf::new(store.line_size()),
            fill: 0,
            counts: SpliceCounts::default(),
            owned,
            spare: SPARE.take().unwrap_or_default(),
            made: [0; 2],
        };
        // Index of the last piece with any bytes.
        let last = pieces.iter().rposition(|p| p.len() > 0);
        for (i, p) in pieces.iter().enumerate() {
            match *p {
                Piece::Bytes(d) => b.bytes(d, false)?,
                Piece::Zeros(n) => b.zeros(n)?,
                Piece::Range(s) => {
                    b.range(s.segment(), s.offset(), s.len() as u64, Some(i) == last)?
                }
            }
        }
        if b.fill > 0 {
            b.flush()?;
        }
        let tree = if total == 0 {
            Tree::default()
        } else {
            let (root, height) = b.finish(dag::leaves_for(total, store.shift()))?;
            Tree {
                root,
                height,
                len: total,
            }
        };
        let counts = b.counts;
        Ok((Segment::from_tree(self.clone(), tree), counts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    fn mem(line_size: usize) -> Memory {
        Memory::new(Config {
            line_size,
            capacity_lines: 1 << 16,
            ..Config::default()
        })
        .unwrap()
    }

    #[test]
    fn aligned_payload_is_shared_not_copied() {
        let m = mem(64);
        let payload: Vec<u8> = (0..4096u32).map(|i| (i * 31 + 7) as u8).collect();
        let app = m.segment(&payload).unwrap();
        let live = m.live_lines();
        let hdr = [0xabu8; 128];
        let range = SegmentSlice::new(app.clone(), 1024, 2048);
        let (s, c) = m
            .splice(&[Piece::Bytes(&hdr), Piece::Range(&range)])
            .unwrap();
        assert_eq!(c.copied_bytes, 0);
        assert_eq!(c.shared_lines, 32);
        let mut want = hdr.to_vec();
        want.extend_from_slice(&payload[1024..3072]);
        assert_eq!(s.to_vec(), want);
        // Canonical: the same bytes built directly give the same segment.
        assert_eq!(s, m.segment(&want).unwrap());
        // New lines: one header line (its two halves dedup) and the interior
        // lines over 34 leaves (3 + a root at fanout 16).
        assert_eq!(m.live_lines() - live, 5);
        drop(s);
        drop(range);
        drop(app);
        assert_eq!(m.live_lines(), 0);
    }

    #[test]
    fn misaligned_pieces_copy_and_count() {
        let m = mem(64);
        let payload: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let app = m.segment(&payload).unwrap();
        let range = SegmentSlice::new(app.clone(), 10, 990);
        let (s, c) = m
            .splice(&[
                Piece::Bytes(b"hdr"),
                Piece::Range(&range),
                Piece::Zeros(100),
            ])
            .unwrap();
        let mut want = b"hdr".to_vec();
        want.extend_from_slice(&payload[10..]);
        want.extend_from_slice(&[0; 100]);
        assert_eq!(s.to_vec(), want);
        assert_eq!(s, m.segment(&want).unwrap());
        // 3 + 10 = 13 ≡ 13 (mod 64) and 10 ≡ 10: not congruent, all copied.
        assert_eq!(c.copied_bytes, 990);
        assert_eq!(c.shared_lines, 0);
    }

    #[test]
    fn tail_line_of_source_is_shared_when_last() {
        let m = mem(64);
        let payload: Vec<u8> = (0..1000u32).map(|i| (i % 13 + 1) as u8).collect();
        let app = m.segment(&payload).unwrap();
        let hdr = [1u8; 64];
        let range = SegmentSlice::new(app.clone(), 0, 1000);
        let (s, c) = m
            .splice(&[Piece::Bytes(&hdr), Piece::Range(&range)])
            .unwrap();
        assert_eq!(c.copied_bytes, 0);
        assert_eq!(c.shared_lines, 16);
        let mut want = hdr.to_vec();
        want.extend_from_slice(&payload);
        assert_eq!(s, m.segment(&want).unwrap());
    }

    #[test]
    fn bad_ranges_are_errors() {
        let m = mem(64);
        let other = mem(64);
        let a = m.segment(b"abc").unwrap();
        let b = other.segment(b"abc").unwrap();
        let r = SegmentSlice::try_new(a.clone(), 2, 2);
        assert!(matches!(r, Err(Error::BadOffset { .. })));
        let foreign = SegmentSlice::new(b.clone(), 0, 1);
        let r = m.splice(&[Piece::Range(&foreign)]);
        assert!(matches!(r, Err(Error::ForeignSegment)));
        assert_eq!(m.splice(&[]).unwrap().0.len(), 0);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// Any splice equals building the concatenated bytes directly, and
        /// copies no more than the bytes it could not share.
        #[test]
        fn splice_matches_concatenation(
            ls_shift in 4u32..8,
            src in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000),
            ops in proptest::collection::vec((0u8..3, 0usize..3000, 0usize..700), 0..6),
        ) {
            let m = mem(1 << ls_shift);
            let seg = m.segment(&src).unwrap();
            let mut want = Vec::new();
            let mut owned: Vec<Vec<u8>> = Vec::new();
            for (kind, a, b) in &ops {
                if *kind == 0 {
                    owned.push(vec![(*a % 255) as u8 + 1; *b % 200]);
                }
            }
            let mut ranges: Vec<SegmentSlice> = Vec::new();
            for (kind, a, b) in &ops {
                if *kind == 2 {
                    let off = (*a).min(src.len());
                    let len = (*b).min(src.len() - off);
                    ranges.push(SegmentSlice::new(seg.clone(), off as u64, len));
                }
            }
            let mut pieces = Vec::new();
            let mut oi = 0;
            let mut ri = 0;
            let mut range_bytes = 0u64;
            for (kind, a, b) in &ops {
                match kind {
                    0 => {
                        want.extend_from_slice(&owned[oi]);
                        pieces.push(Piece::Bytes(&owned[oi]));
                        oi += 1;
                    }
                    1 => {
                        want.extend(std::iter::repeat_n(0u8, *b));
                        pieces.push(Piece::Zeros(*b as u64));
                    }
                    _ => {
                        let off = (*a).min(src.len());
                        let len = (*b).min(src.len() - off);
                        want.extend_from_slice(&src[off..off + len]);
                        range_bytes += len as u64;
                        pieces.push(Piece::Range(&ranges[ri]));
                        ri += 1;
                    }
                }
            }
            let (s, c) = m.splice(&pieces).unwrap();
            proptest::prop_assert_eq!(s.to_vec(), want.clone());
            proptest::prop_assert_eq!(&s, &m.segment(&want).unwrap());
            proptest::prop_assert_eq!(c.copied_bytes + c.shared_bytes, range_bytes);
            drop(s);
            drop(pieces);
            drop(ranges);
            drop(seg);
            proptest::prop_assert_eq!(m.live_lines(), 0);
        }

        /// A splice of bytes and zeros built from a flat copy gives the
        /// segment and the counts of the leaf-by-leaf build.
        #[test]
        fn flat_splice_matches_the_leaf_build(
            ls_shift in 4u32..8,
            ops in proptest::collection::vec((proptest::prelude::any::<bool>(), 0usize..300, 0u8..3), 0..8),
        ) {
            let m = mem(1 << ls_shift);
            let owned: Vec<Vec<u8>> = ops
                .iter()
                .map(|(_, n, v)| vec![*v; *n])
                .collect();
            let pieces: Vec<Piece<'_>> = ops
                .iter()
                .zip(&owned)
                .map(|((bytes, n, _), o)| if *bytes { Piece::Bytes(o) } else { Piece::Zeros(*n as u64) })
                .collect();
            let total = pieces.iter().map(Piece::len).sum::<u64>();
            let (a, ca) = m.splice_flat(&pieces, total as usize).unwrap();
            let (b, cb) = m.splice_built(&pieces, total, false).unwrap();
            proptest::prop_assert_eq!(&a, &b);
            proptest::prop_assert_eq!(ca, cb);
            drop((a, b));
            proptest::prop_assert_eq!(m.live_lines(), 0);
        }
    }
}
