//! Segment DAGs: the canonical shape, building, copy-on-write rebuilding and
//! the cursor (HICAMP's iterator register).
//!
//! The shape of a segment of `len` bytes on lines of `B` bytes, fanout
//! `F = B / 4`, is fixed by `len` alone:
//!
//! ```text
//!   n = ceil(len / B) leaves       height h = smallest h with F^h >= n
//!
//!   h = 2, F = 4, n = 6:                   root
//!                                  /      |     \     \
//!                              I0        I1      0     0     <- all-zero subtree = line 0
//!                           / | | \    / |  \ \
//!                          D0 D1 D2 D3 D4 D5 0 0             <- last leaf zero-padded
//! ```
//!
//! A complete F-ary tree of height `h` with the leaves packed to the left and
//! every all-zero subtree (at any level) replaced by line 0. Leaves are
//! interned by content and interior lines by their child ids, so equal content
//! of equal length gives the same root whatever history of writes built it:
//! `(root, len)` is the identity of a segment, and equality is O(1).
//! (Length is part of the identity because bytes past the end are zero:
//! `b"a"` and `b"a\0"` share their root.)

use crate::error::{Error, Result};
use crate::id::LineId;
pub(crate) use crate::shape::{check_len, height_for, leaves_for, MAX_HEIGHT, MAX_SEGMENT_LEN};
use crate::store::{with_line, Store, WriteCounts};

/// The geometry of a segment and its root (a reference owned by whoever holds
/// the `Tree`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) struct Tree {
    pub root: LineId,
    pub height: u32,
    pub len: u64,
}

/// log2 of the fanout.
#[inline]
fn fanout_shift(store: &Store) -> u32 {
    store.shift() - 2
}

/// Builds the canonical DAG of `data` bottom-up, one level at a time.
pub(crate) fn build(store: &Store, data: &[u8]) -> Result<Tree> {
    check_len(data.len() as u64)?;
    if data.is_empty() {
        return Ok(Tree::default());
    }
    let fs = fanout_shift(store);
    let (root, height) = store.intern_tree(data, |n| height_for(n as u64, fs))?;
    Ok(Tree {
        root,
        height,
        len: data.len() as u64,
    })
}

/// The lines a read of leaves `first..=last` reaches, walking the DAG as a
/// cursor does: every interior line on the paths from the root, once each
/// (no descent into an all-zero subtree), and every non-zero leaf line.
/// Returns (interior lines, leaf lines).
pub(crate) fn read_visits(store: &Store, tree: &Tree, first: u64, last: u64) -> (u64, u64) {
    fn walk(
        store: &Store,
        fs: u32,
        node: LineId,
        level: u32,
        start: u64,
        range: (u64, u64),
        acc: &mut (u64, u64),
    ) {
        if node.is_zero() {
            return;
        }
        if level == 0 {
            acc.1 += 1;
            return;
        }
        acc.0 += 1;
        let span = 1u64 << (fs * (level - 1));
        let fanout = 1u64 << fs;
        let lo = range.0.saturating_sub(start) / span;
        let hi = ((range.1 - start) / span).min(fanout - 1);
        for j in lo..=hi {
            let child = store.child(node, j as usize);
            walk(store, fs, child, level - 1, start + j * span, range, acc);
        }
    }
    let n = leaves_for(tree.len, store.shift());
    if n == 0 || first > last || first >= n {
        return (0, 0);
    }
    let mut acc = (0, 0);
    let range = (first, last.min(n - 1));
    walk(
        store,
        fanout_shift(store),
        tree.root,
        tree.height,
        0,
        range,
        &mut acc,
    );
    acc
}

/// The leaf holding leaf index `i` (line 0 beyond the end or in zero subtrees).
pub(crate) fn leaf_at(store: &Store, tree: &Tree, i: u64) -> LineId {
    let fs = fanout_shift(store);
    let fmask = (1u64 << fs) - 1;
    if i >= leaves_for(tree.len, store.shift()) {
        return LineId::ZERO;
    }
    let mut node = tree.root;
    for l in (1..=tree.height).rev() {
        if node.is_zero() {
            return node;
        }
        node = store.child(node, ((i >> (fs * (l - 1))) & fmask) as usize);
    }
    node
}

struct Rebuild<'a> {
    store: &'a Store,
    fshift: u32,
    new_n: u64,
    old_n: u64,
}

impl Rebuild<'_> {
    /// Builds the node at (`level`, `idx`) of the new tree. `old` is the node
    /// at the same place in the old tree (borrowed); `changes` are the new
    /// leaves under this node, sorted (borrowed). Returns an owned reference.
    fn node(&self, level: u32, idx: u64, old: LineId, changes: &[(u64, LineId)]) -> Result<LineId> {
        let span_shift = self.fshift * level;
        let start = idx << span_shift;
        if start >= self.new_n {
            return Ok(LineId::ZERO);
        }
        let end = start + (1u64 << span_shift);
        if changes.is_empty() && (end <= self.new_n || self.new_n >= self.old_n) {
            // Nothing under this node changes: share it.
            self.store.acquire(old);
            return Ok(old);
        }
        if level == 0 {
            debug_assert!(changes.len() == 1 && changes[0].0 == idx);
            let id = changes[0].1;
            self.store.acquire(id);
            return Ok(id);
        }
        let child_span = 1u64 << (span_shift - self.fshift);
        let mut kids = Vec::with_capacity(1 << self.fshift);
        let mut rest = changes;
        for j in 0..(1u64 << self.fshift) {
            let cidx = (idx << self.fshift) + j;
            let cstart = cidx * child_span;
            if cstart >= self.new_n {
                break;
            }
            let k = rest.partition_point(|c| c.0 < cstart + child_span);
            let (mine, tail) = rest.split_at(k);
            rest = tail;
            match self.node(level - 1, cidx, self.store.child(old, j as usize), mine) {
                Ok(c) => kids.push(c),
                Err(e) => {
                    self.store.release_all(&kids);
                    return Err(e);
                }
            }
        }
        self.store.intern_interior(&kids)
    }
}

/// The tree of `new_len` bytes whose leaves are those of `old`, except the
/// leaves in `changes` (sorted by index, unique, all below the new leaf
/// count; borrowed) and zeros past `new_len`. Shares every untouched subtree.
/// A partial last leaf must already be zero past `new_len` (the callers
/// ensure it by passing a rewritten leaf in `changes`).
fn rebuild(store: &Store, old: &Tree, new_len: u64, changes: &[(u64, LineId)]) -> Result<Tree> {
    check_len(new_len)?;
    let fshift = fanout_shift(store);
    let new_n = leaves_for(new_len, store.shift());
    if new_n == 0 {
        return Ok(Tree::default());
    }
    let new_h = height_for(new_n, fshift);
    let old_n = leaves_for(old.len, store.shift());
    // Bring the old tree to the new height: wrap a short root in left spines,
    // or descend the left spine of a tall one.
    let (top, old_n) = if old.height < new_h {
        store.acquire(old.root);
        let mut r = old.root;
        for _ in old.height..new_h {
            r = store.intern_interior(&[r])?;
        }
        (r, old_n)
    } else {
        let mut r = old.root;
        for _ in new_h..old.height {
            r = store.child(r, 0);
        }
        store.acquire(r);
        (r, old_n.min(1u64 << (fshift * new_h)))
    };
    let ctx = Rebuild {
        store,
        fshift,
        new_n,
        old_n,
    };
    let res = ctx.node(new_h, 0, top, changes);
    store.release(top);
    Ok(Tree {
        root: res?,
        height: new_h,
        len: new_len,
    })
}

/// Copy-on-write write of `data` at `off` (which may lie past the end: the
/// gap reads as zeros). Returns a new owned tree; `old` is untouched.
pub(crate) fn write_at(store: &Store, old: &Tree, off: u64, data: &[u8]) -> Result<Tree> {
    write_at_counted(store, old, off, data, &mut WriteCounts::default())
}

/// [`write_at`], adding what the new leaves did to `counts`.
pub(crate) fn write_at_counted(
    store: &Store,
    old: &Tree,
    off: u64,
    data: &[u8],
    counts: &mut WriteCounts,
) -> Result<Tree> {
    let end = off
        .checked_add(data.len() as u64)
        .filter(|e| *e <= MAX_SEGMENT_LEN)
        .ok_or(Error::TooLong {
            len: off.saturating_add(data.len() as u64),
            max: MAX_SEGMENT_LEN,
        })?;
    let new_len = old.len.max(end);
    if data.is_empty() {
        return rebuild(store, old, new_len, &[]);
    }
    let shift = store.shift();
    let ls = store.line_size() as u64;
    let first = off >> shift;
    let last = (end - 1) >> shift;
    let mut ids = Vec::with_capacity((last - first + 1) as usize);
    let res = (|| {
        let patch = |i: u64, ids: &mut Vec<LineId>, counts: &mut WriteCounts| -> Result<()> {
            let id = with_line(ls as usize, |line| {
                line.copy_from_slice(store.line(leaf_at(store, old, i)));
                let lstart = i << shift;
                let from = off.max(lstart);
                let to = end.min(lstart + ls);
                line[(from - lstart) as usize..(to - lstart) as usize]
                    .copy_from_slice(&data[(from - off) as usize..(to - off) as usize]);
                store.intern(crate::LineKind::Leaf, line)
            })?;
            counts.add(id.0, id.1);
            ids.push(id.0);
            Ok(())
        };
        // Leaves fully covered by `data` are interned straight from it.
        let full_first = off.div_ceil(ls);
        let full_end = end / ls; // exclusive
        if full_first >= full_end {
            for i in first..=last {
                patch(i, &mut ids, counts)?;
            }
        } else {
            if first < full_first {
                patch(first, &mut ids, counts)?;
            }
            let a = ((full_first << shift) - off) as usize;
            let b = ((full_end << shift) - off) as usize;
            store.intern_leaves(&data[a..b], &mut ids, counts)?;
            if full_end <= last {
                patch(last, &mut ids, counts)?;
            }
        }
        Ok(())
    })();
    if let Err(e) = res {
        store.release_all(&ids);
        return Err(e);
    }
    let changes: Vec<(u64, LineId)> = (first..).zip(ids.iter().copied()).collect();
    let t = rebuild(store, old, new_len, &changes);
    store.release_all(&ids);
    t
}

/// The tree of `old` cut or zero-extended to `new_len` bytes.
pub(crate) fn resize(store: &Store, old: &Tree, new_len: u64) -> Result<Tree> {
    if new_len >= old.len {
        return rebuild(store, old, new_len, &[]);
    }
    let shift = store.shift();
    let ls = store.line_size();
    let tail = (new_len & (ls as u64 - 1)) as usize;
    if tail == 0 {
        return rebuild(store, old, new_len, &[]);
    }
    // The new last leaf keeps its first `tail` bytes and zeros after them.
    let i = new_len >> shift;
    let (id, _) = with_line(ls, |buf| {
        buf[..tail].copy_from_slice(&store.line(leaf_at(store, old, i))[..tail]);
        store.intern(crate::LineKind::Leaf, buf)
    })?;
    let t = rebuild(store, old, new_len, &[(i, id)]);
    store.release(id);
    t
}

/// Walks a DAG leaf by leaf, yielding contiguous chunks of bytes without
/// flattening the segment: HICAMP's iterator register. It keeps the path from
/// the root to the current leaf, so stepping to the next leaf usually reads a
/// single child id.
pub(crate) struct Walker<'a> {
    store: &'a Store,
    tree: Tree,
    /// Byte offset of the next byte to yield.
    pos: u64,
    /// `path[l]` is the node at level `l` above the current leaf (`path[0]`).
    path: [LineId; MAX_HEIGHT + 1],
}

impl<'a> Walker<'a> {
    pub(crate) fn new(store: &'a Store, tree: Tree, pos: u64) -> Self {
        let mut w = Walker {
            store,
            tree,
            pos: pos.min(tree.len),
            path: [LineId::ZERO; MAX_HEIGHT + 1],
        };
        w.descend_from(tree.height as usize, w.pos >> store.shift());
        w
    }

    /// Refills `path[..top]` for leaf `i` from `path[top]` (or the root).
    #[inline]
    fn descend_from(&mut self, top: usize, i: u64) {
        let fs = self.store.shift() - 2;
        let fmask = (1u64 << fs) - 1;
        if top == self.tree.height as usize {
            self.path[top] = self.tree.root;
        }
        for l in (1..=top).rev() {
            let j = (i >> (fs * (l as u32 - 1))) & fmask;
            self.path[l - 1] = self.store.child(self.path[l], j as usize);
        }
    }

    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// The leaf line under the current position (borrowed).
    pub(crate) fn leaf(&self) -> LineId {
        self.path[0]
    }

    /// The node `level` lines above the current leaf (borrowed; `level` at
    /// most the height): the subtree whose span holds the current position.
    pub(crate) fn node(&self, level: u32) -> LineId {
        debug_assert!(level <= self.tree.height);
        self.path[level as usize]
    }

    /// The height of the walked tree.
    pub(crate) fn height(&self) -> u32 {
        self.tree.height
    }

    pub(crate) fn remaining(&self) -> u64 {
        self.tree.len - self.pos
    }

    /// The bytes from the current position to the end of the current leaf
    /// (empty at the end of the segment).
    #[inline]
    pub(crate) fn chunk(&self) -> &'a [u8] {
        if self.pos >= self.tree.len {
            return &[];
        }
        let mask = self.store.line_size() as u64 - 1;
        let within = (self.pos & mask) as usize;
        let leaf_end = ((self.pos | mask) + 1).min(self.tree.len);
        let line = self.store.line(self.path[0]);
        &line[within..within + (leaf_end - self.pos) as usize]
    }

    /// Moves the position forward by `n` bytes (clamped to the end).
    #[inline]
    pub(crate) fn advance(&mut self, n: u64) {
        let shift = self.store.shift();
        let old_leaf = self.pos >> shift;
        self.pos = self.pos.saturating_add(n).min(self.tree.len);
        let leaf = self.pos >> shift;
        if leaf == old_leaf || self.pos >= self.tree.len {
            return;
        }
        if leaf == old_leaf + 1 {
            // The common step: climb only as far as the carry goes.
            let fs = shift - 2;
            let fmask = (1u64 << fs) - 1;
            let mut top = 1;
            while top < self.tree.height as usize && (leaf >> (fs * (top as u32 - 1))) & fmask == 0
            {
                top += 1;
            }
            self.descend_from(top, leaf);
        } else {
            self.descend_from(self.tree.height as usize, leaf);
        }
    }

    /// From a line boundary: the run of whole sibling leaves from the current
    /// one to the end of their bottom interior line, at most `max` leaves,
    /// as the parent's child-id bytes (4 per leaf; `None`: the parent is the
    /// zero line, so every leaf of the run is line 0) and the run's length.
    /// `None` when the position is not on a line boundary, the tree has no
    /// interior level, or fewer than 2 whole leaves follow.
    #[inline]
    pub(crate) fn leaf_run(&self, max: u64) -> Option<(Option<&'a [u8]>, usize)> {
        let shift = self.store.shift();
        let fmask = (1u64 << (shift - 2)) - 1;
        if self.pos & ((1u64 << shift) - 1) != 0 || self.tree.height == 0 {
            return None;
        }
        let j0 = (self.pos >> shift) & fmask;
        let n = max
            .min((self.tree.len - self.pos) >> shift)
            .min(fmask + 1 - j0) as usize;
        if n < 2 {
            return None;
        }
        let parent = self.path[1];
        if parent.is_zero() {
            return Some((None, n));
        }
        let kids = &self.store.line(parent)[(j0 as usize) * 4..(j0 as usize + n) * 4];
        Some((Some(kids), n))
    }

    /// Appends the chunks of the next `len` bytes (fewer at the end of the
    /// segment) to `out`, at most one line each, and moves past them: a
    /// gather list. From a line boundary, a run of whole sibling leaves is
    /// read straight from their parent's child ids (no step leaf by leaf).
    /// Returns the bytes gathered.
    pub(crate) fn gather(&mut self, len: u64, out: &mut Vec<&'a [u8]>) -> u64 {
        let shift = self.store.shift();
        let ls = 1u64 << shift;
        let end = self.pos.saturating_add(len).min(self.tree.len);
        let start = self.pos;
        while self.pos < end {
            if let Some((kids, n)) = self.leaf_run((end - self.pos) >> shift) {
                match kids {
                    Some(kids) => out.extend(
                        kids.as_chunks::<4>()
                            .0
                            .iter()
                            .map(|k| self.store.line(LineId(u32::from_le_bytes(*k)))),
                    ),
                    None => {
                        let zero = self.store.line(LineId::ZERO);
                        out.extend((0..n).map(|_| zero));
                    }
                }
                self.advance(n as u64 * ls);
                continue;
            }
            let c = self.chunk();
            if c.is_empty() {
                break;
            }
            let take = (c.len() as u64).min(end - self.pos) as usize;
            out.push(&c[..take]);
            self.advance(take as u64);
        }
        self.pos - start
    }

    /// Copies bytes into `buf` until it is full or the segment ends.
    pub(crate) fn copy_to(&mut self, buf: &mut [u8]) -> usize {
        let shift = self.store.shift();
        let ls = 1usize << shift;
        let fmask = (1u64 << (shift - 2)) - 1;
        let mut done = 0;
        while done < buf.len() {
            // Fast path: from a line boundary, copy the run of whole sibling
            // leaves under the current bottom interior line in one loop.
            if self.pos & (ls as u64 - 1) == 0 && self.tree.height >= 1 {
                let j0 = (self.pos >> shift) & fmask;
                let whole = ((buf.len() - done) >> shift)
                    .min(((self.tree.len - self.pos) >> shift) as usize)
                    .min((fmask + 1 - j0) as usize);
                if whole >= 2 {
                    let parent = self.path[1];
                    let dst = &mut buf[done..done + (whole << shift)];
                    if parent.is_zero() {
                        dst.fill(0);
                    } else {
                        let kids = &self.store.line(parent)[(j0 as usize) * 4..];
                        for (d, k) in dst.chunks_exact_mut(ls).zip(kids.as_chunks::<4>().0) {
                            d.copy_from_slice(self.store.line(LineId(u32::from_le_bytes(*k))));
                        }
                    }
                    done += whole << shift;
                    self.advance((whole << shift) as u64);
                    continue;
                }
            }
            let c = self.chunk();
            if c.is_empty() {
                break;
            }
            let n = c.len().min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&c[..n]);
            done += n;
            self.advance(n as u64);
        }
        done
    }
}
