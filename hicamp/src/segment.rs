//! Value-style handles in the spirit of `bytes`: [`Segment`] (immutable;
//! `Clone` is a snapshot, `Drop` a release), [`SegmentMut`] (copy-on-write
//! writes, freezes into a `Segment`) and [`Cursor`] (walks the DAG chunk by
//! chunk).

use std::fmt;
use std::sync::OnceLock;

use crate::dag::{self, Tree, Walker};
use crate::error::{Error, Result};
use crate::id::LineId;
use crate::memory::Memory;

/// Owns one reference to a tree root and accounts its logical bytes.
///
/// A tree whose root is an owned line (it holds owned lines, kept out of the
/// dedup index: see [`Memory::segment_owned`]) is not canonical: equal
/// content need not give an equal root. `canon` then caches, once asked
/// for, the canonical tree of the same bytes (one more reference, released
/// with the handle), so that `Hash` is stable and agrees with `==`.
struct Handle {
    mem: Memory,
    tree: Tree,
    canon: OnceLock<Option<Tree>>,
}

impl Handle {
    fn new(mem: Memory, tree: Tree) -> Handle {
        mem.inner.logical.add(tree.len as i64);
        Handle {
            mem,
            tree,
            canon: OnceLock::new(),
        }
    }

    /// Replaces the tree by `new` (an owned reference) and releases the old.
    fn replace(&mut self, new: Tree) {
        let old = std::mem::replace(&mut self.tree, new);
        self.mem.inner.logical.add(new.len as i64 - old.len as i64);
        self.drop_canon();
        self.mem.inner.store.release(old.root);
    }

    /// Releases the cached canonical tree, if any.
    fn drop_canon(&mut self) {
        if let Some(Some(c)) = self.canon.take() {
            self.mem.inner.store.release(c.root);
        }
    }

    /// Gives up the reference (and its logical bytes) without releasing it:
    /// the caller moves both elsewhere, e.g. into a map entry.
    fn into_tree(mut self) -> (Memory, Tree) {
        self.drop_canon();
        // What is left behind is the empty tree, whose drop releases nothing.
        let tree = std::mem::take(&mut self.tree);
        (self.mem.clone(), tree)
    }

    /// True when the tree holds no owned line (its root is not owned).
    #[inline]
    fn is_canonical(&self) -> bool {
        !self.mem.inner.store.is_owned(self.tree.root)
    }

    /// The canonical tree of this content: the tree itself when it is
    /// canonical, else a canonical copy interned once and kept (`None` when
    /// the memory had no room for it).
    fn canonical_tree(&self) -> Option<Tree> {
        if self.is_canonical() {
            return Some(self.tree);
        }
        *self.canon.get_or_init(|| {
            let store = &self.mem.inner.store;
            let mut v = vec![0u8; self.tree.len as usize];
            Walker::new(store, self.tree, 0).copy_to(&mut v);
            dag::build(store, &v).ok()
        })
    }

    /// True when both trees hold the same bytes (a walk of both).
    fn content_eq(&self, other: &Handle) -> bool {
        if self.tree.len != other.tree.len {
            return false;
        }
        let store = &self.mem.inner.store;
        let mut a = Walker::new(store, self.tree, 0);
        let mut b = Walker::new(&other.mem.inner.store, other.tree, 0);
        loop {
            let (ca, cb) = (a.chunk(), b.chunk());
            if ca.is_empty() || cb.is_empty() {
                return ca.is_empty() && cb.is_empty();
            }
            let n = ca.len().min(cb.len());
            if ca[..n] != cb[..n] {
                return false;
            }
            a.advance(n as u64);
            b.advance(n as u64);
        }
    }

    fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<usize> {
        if off > self.tree.len {
            return Err(Error::BadOffset {
                offset: off,
                len: buf.len() as u64,
                seg_len: self.tree.len,
            });
        }
        Ok(Walker::new(&self.mem.inner.store, self.tree, off).copy_to(buf))
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.drop_canon();
        self.mem.inner.logical.add(-(self.tree.len as i64));
        let store = &self.mem.inner.store;
        // The length in lines tells a mass release early (see
        // `Store::release_sized`).
        store.release_sized(self.tree.root, self.tree.len >> store.shift());
    }
}

/// An immutable segment: a snapshot of some bytes in a [`Memory`].
///
/// `clone()` is a HICAMP snapshot: one reference-count increment, no byte
/// copied. Two segments of one memory are equal exactly when their contents
/// are, and comparing them is O(1) (root line and length) when both are
/// canonical; a segment of owned lines ([`Memory::segment_owned`]) compares
/// by content, and hashes by the root of a canonical copy made once.
pub struct Segment {
    h: Handle,
}

/// What a read of a byte range reaches in the DAG ([`Segment::read_cost`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadCost {
    /// Interior lines on the paths from the root (DAG nodes visited).
    pub interior_lines: u64,
    /// Stored leaf lines read (all-zero leaves are not stored, not read).
    pub leaf_lines: u64,
}

impl Segment {
    pub(crate) fn from_tree(mem: Memory, tree: Tree) -> Segment {
        Segment {
            h: Handle::new(mem, tree),
        }
    }

    pub(crate) fn tree(&self) -> Tree {
        self.h.tree
    }

    pub(crate) fn into_tree(self) -> (Memory, Tree) {
        self.h.into_tree()
    }

    /// Gives up this handle but not its reference: the root keeps it, and
    /// the memory's logical bytes keep counting the segment, until the
    /// memory itself goes. Unlike `std::mem::forget`, this does not keep the
    /// memory alive: dropping its last `Memory` still frees it all. For an
    /// account that must describe every snapshot ever taken (the shim's
    /// trace mode).
    pub fn hold_forever(self) {
        let _ = self.h.into_tree();
    }

    /// `k` more snapshots held as [`Segment::hold_forever`] holds them: the
    /// same counts as `k` times `self.clone().hold_forever()`, in one step
    /// of the root's count (a count past the byte's range takes one trip to
    /// the overflow table, not `k`).
    pub fn hold_snapshots(&self, k: u64) {
        let inner = &self.h.mem.inner;
        inner.store.acquire_many(self.h.tree.root, k);
        let bytes = self.h.tree.len.saturating_mul(k);
        inner.logical.add(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// The memory this segment lives in.
    pub fn memory(&self) -> &Memory {
        &self.h.mem
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.h.tree.len
    }

    /// True for the empty segment.
    pub fn is_empty(&self) -> bool {
        self.h.tree.len == 0
    }

    /// The root line of the DAG (line 0 for an all-zero or empty segment).
    pub fn root(&self) -> LineId {
        self.h.tree.root
    }

    /// Height of the DAG (0: the root is the only leaf).
    pub fn height(&self) -> u32 {
        self.h.tree.height
    }

    /// True when the DAG holds no owned line ([`Memory::segment_owned`]):
    /// then its root is the one root of its content, and `==` is O(1).
    pub fn is_canonical(&self) -> bool {
        self.h.is_canonical()
    }

    /// A canonical segment of the same bytes: a snapshot of this one when
    /// it is canonical, else a snapshot of its canonical copy (interned
    /// once and kept, the copy `Hash` uses).
    pub fn canonical(&self) -> Result<Segment> {
        if let Some(t) = self.h.canonical_tree() {
            self.h.mem.inner.store.acquire(t.root);
            return Ok(Segment {
                h: Handle::new(self.h.mem.clone(), t),
            });
        }
        // The memory had no room for the copy: intern again, for its error
        // (or its success, should room have come since).
        let v = self.to_vec();
        self.h.mem.segment(&v)
    }

    /// The lines a read of `len` bytes from `off` reaches (clamped to the
    /// segment), counted by walking the DAG the way a cursor does: the
    /// interior lines on the paths from the root, each once, and the stored
    /// (non-zero) leaf lines. All-zero subtrees are not entered, as a read
    /// does not enter them. This is the cost of the read in line accesses.
    pub fn read_cost(&self, off: u64, len: u64) -> ReadCost {
        let tree = self.h.tree;
        let end = off.saturating_add(len).min(tree.len);
        if off >= end {
            return ReadCost::default();
        }
        let store = &self.h.mem.inner.store;
        let shift = store.shift();
        let (interior, leaves) =
            crate::dag::read_visits(store, &tree, off >> shift, (end - 1) >> shift);
        ReadCost {
            interior_lines: interior,
            leaf_lines: leaves,
        }
    }

    /// Copies bytes from `off` into `buf`; returns how many (short at the end).
    pub fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<usize> {
        self.h.read_at(off, buf)
    }

    /// The whole content as a vector.
    pub fn to_vec(&self) -> Vec<u8> {
        // A zeroed allocation is fresh pages from the OS for large sizes, and
        // `copy_to_slice` copies runs of sibling leaves in one loop.
        let mut v = vec![0u8; self.len() as usize];
        let n = self.cursor().copy_to_slice(&mut v);
        debug_assert_eq!(n, v.len());
        v
    }

    /// A cursor at offset 0.
    pub fn cursor(&self) -> Cursor<'_> {
        Cursor {
            w: Walker::new(&self.h.mem.inner.store, self.h.tree, 0),
        }
    }

    /// A cursor at `off` (clamped to the end).
    pub fn cursor_at(&self, off: u64) -> Cursor<'_> {
        Cursor {
            w: Walker::new(&self.h.mem.inner.store, self.h.tree, off),
        }
    }

    /// BLAKE3 of the bytes: equal content gives equal digests across memories
    /// and line sizes.
    pub fn digest(&self) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new();
        let mut c = self.cursor();
        loop {
            let chunk = c.chunk();
            if chunk.is_empty() {
                break;
            }
            hasher.update(chunk);
            c.advance(chunk.len());
        }
        *hasher.finalize().as_bytes()
    }

    /// A mutable segment starting from this one's content (O(1): the DAG is
    /// shared, and writes copy only the lines they change).
    pub fn to_mut(&self) -> SegmentMut {
        SegmentMut {
            h: Handle::new(self.h.mem.clone(), self.acquired()),
        }
    }

    /// Turns this handle into a mutable segment without a new reference.
    pub fn into_mut(self) -> SegmentMut {
        SegmentMut { h: self.h }
    }

    fn acquired(&self) -> Tree {
        self.h.mem.inner.store.acquire(self.h.tree.root);
        self.h.tree
    }

    /// True when `other` has the same bytes, whatever memory it lives in
    /// (O(1) within one memory, a digest comparison across memories).
    pub fn content_eq(&self, other: &Segment) -> bool {
        if self.h.mem.same(&other.h.mem) {
            return self == other;
        }
        self.len() == other.len() && self.digest() == other.digest()
    }
}

impl Clone for Segment {
    /// A snapshot: one reference-count increment.
    fn clone(&self) -> Segment {
        Segment {
            h: Handle::new(self.h.mem.clone(), self.acquired()),
        }
    }
}

impl PartialEq for Segment {
    /// Same memory and same bytes: the same root and length, or, when
    /// either side holds owned lines, the same content (a walk of both).
    fn eq(&self, other: &Segment) -> bool {
        if !self.h.mem.same(&other.h.mem) || self.len() != other.len() {
            return false;
        }
        if self.h.tree.root == other.h.tree.root {
            return true;
        }
        if self.h.is_canonical() && other.h.is_canonical() {
            return false;
        }
        self.h.content_eq(&other.h)
    }
}

impl Eq for Segment {}

impl std::hash::Hash for Segment {
    /// The canonical root and the length. A segment of owned lines interns
    /// a canonical copy the first time (kept in the handle). Should the
    /// memory have no room for it, the length alone is hashed, for that
    /// handle's life: a canonical segment of the same bytes then hashes
    /// differently (a known limit; `==` stays right).
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match self.h.canonical_tree() {
            Some(t) => t.root.hash(state),
            None => u64::MAX.hash(state),
        }
        self.h.tree.len.hash(state);
    }
}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment")
            .field("root", &self.h.tree.root)
            .field("height", &self.h.tree.height)
            .field("len", &self.h.tree.len)
            .finish()
    }
}

/// A mutable segment. Every write is copy-on-write of the changed leaves and
/// their ancestors only; snapshots taken earlier never change.
pub struct SegmentMut {
    h: Handle,
}

impl SegmentMut {
    pub(crate) fn from_tree(mem: Memory, tree: Tree) -> SegmentMut {
        SegmentMut {
            h: Handle::new(mem, tree),
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.h.tree.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.h.tree.len == 0
    }

    /// The current root line.
    pub fn root(&self) -> LineId {
        self.h.tree.root
    }

    /// Writes `data` at `off`. Writing past the end extends the segment and
    /// the gap reads as zeros.
    pub fn write_at(&mut self, off: u64, data: &[u8]) -> Result<()> {
        let t = dag::write_at(&self.h.mem.inner.store, &self.h.tree, off, data)?;
        self.h.replace(t);
        Ok(())
    }

    /// [`SegmentMut::write_at`], returning what the written leaf lines did
    /// (new, deduplicated, zero): a NIC model counts receive-side dedup so.
    pub fn write_at_counted(&mut self, off: u64, data: &[u8]) -> Result<crate::WriteCounts> {
        let mut counts = crate::WriteCounts::default();
        let t = dag::write_at_counted(
            &self.h.mem.inner.store,
            &self.h.tree,
            off,
            data,
            &mut counts,
        )?;
        self.h.replace(t);
        Ok(counts)
    }

    /// Appends `data` at the end.
    pub fn append(&mut self, data: &[u8]) -> Result<()> {
        self.write_at(self.len(), data)
    }

    /// Cuts the segment to `len` bytes (no-op when it is not longer).
    pub fn truncate(&mut self, len: u64) -> Result<()> {
        if len < self.len() {
            self.resize(len)?;
        }
        Ok(())
    }

    /// Sets the length: cut, or extended with zeros (which cost no lines).
    pub fn resize(&mut self, len: u64) -> Result<()> {
        if len == self.len() {
            return Ok(());
        }
        let t = dag::resize(&self.h.mem.inner.store, &self.h.tree, len)?;
        self.h.replace(t);
        Ok(())
    }

    /// Copies bytes from `off` into `buf`; returns how many.
    pub fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<usize> {
        self.h.read_at(off, buf)
    }

    /// An immutable snapshot of the current content (O(1)); this segment
    /// stays writable.
    pub fn snapshot(&self) -> Segment {
        self.h.mem.inner.store.acquire(self.h.tree.root);
        Segment::from_tree(self.h.mem.clone(), self.h.tree)
    }

    /// Ends the mutable phase.
    pub fn freeze(self) -> Segment {
        Segment { h: self.h }
    }
}

impl fmt::Debug for SegmentMut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentMut")
            .field("root", &self.h.tree.root)
            .field("height", &self.h.tree.height)
            .field("len", &self.h.tree.len)
            .finish()
    }
}

/// Walks a segment's DAG and yields contiguous chunks (at most one line each)
/// without flattening the segment. Shaped like `bytes::Buf`: `chunk`,
/// `advance`, `remaining`, `copy_to_slice`; it is also an `Iterator` over
/// chunks and implements `std::io::Read`.
pub struct Cursor<'a> {
    w: Walker<'a>,
}

impl<'a> Cursor<'a> {
    /// Bytes from the position to the end of the current line.
    #[inline]
    pub fn chunk(&self) -> &'a [u8] {
        self.w.chunk()
    }

    /// Moves forward by `n` bytes (clamped to the end).
    #[inline]
    pub fn advance(&mut self, n: usize) {
        self.w.advance(n as u64);
    }

    /// Bytes left.
    #[inline]
    pub fn remaining(&self) -> u64 {
        self.w.remaining()
    }

    /// Current offset.
    #[inline]
    pub fn position(&self) -> u64 {
        self.w.pos()
    }

    /// Copies until `buf` is full or the segment ends; returns the count.
    #[inline]
    pub fn copy_to_slice(&mut self, buf: &mut [u8]) -> usize {
        self.w.copy_to(buf)
    }

    /// Appends the next `len` bytes (fewer at the end) to `out` as chunks of
    /// at most one line each, and moves past them: a DMA gather list. Runs
    /// of whole sibling lines are read from their parent line at once.
    /// Returns the bytes gathered.
    #[inline]
    pub fn gather(&mut self, len: usize, out: &mut Vec<&'a [u8]>) -> usize {
        self.w.gather(len as u64, out) as usize
    }
}

impl<'a> Iterator for Cursor<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        let c = self.w.chunk();
        if c.is_empty() {
            return None;
        }
        self.w.advance(c.len() as u64);
        Some(c)
    }
}

impl std::io::Read for Cursor<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        Ok(self.w.copy_to(buf))
    }
}

impl fmt::Debug for Cursor<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cursor")
            .field("position", &self.w.pos())
            .field("remaining", &self.w.remaining())
            .finish()
    }
}
