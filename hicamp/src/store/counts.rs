//! Reference counts: one `u32` per slot, mapped beside the arena. Bit 31 is
//! the kind (set = interior), bits 0..31 the count; a count that reaches
//! [`SATURATED`] is never freed again. A count goes from 1 to 0 only under the
//! line's shard lock, which is what keeps the index and the counts in step;
//! a lookup without the lock only ever increments a count it sees above 0
//! ([`Store::inc_unless_zero`]). A freed slot returns to the free bitmap
//! after an epoch (see the store's module documentation).

use std::sync::atomic::Ordering::*;

use super::{kind_index, line_hash, Store, SHARDS};
use crate::id::{LineId, LineKind};
use crate::region::prefetch_ptr;

/// Kind bit of a reference-count word (set = interior line). The one
/// definition: the file format (`persist`) and `fsck` read the same words.
pub(crate) const INTERIOR_BIT: u32 = 1 << 31;
pub(super) const COUNT_MASK: u32 = !INTERIOR_BIT;
pub(super) const SATURATED: u32 = 1 << 30;
/// A release that frees at least this many lines pushes its deferred slots
/// to the epoch collector and advances the epoch (so that a large release's
/// slots come back at once); smaller ones leave them in the thread's bag.
const FLUSH_AFTER: usize = 64;
/// Lines whose last reference goes, freed together (hashed, sorted by shard,
/// one lock acquisition per shard).
const RELEASE_BATCH: usize = 2048;
/// How far ahead of its use a line or count word is prefetched.
const PREFETCH_AHEAD: usize = 8;

#[inline]
pub(super) fn kind_bit(kind: LineKind) -> u32 {
    match kind {
        LineKind::Leaf => 0,
        LineKind::Interior => INTERIOR_BIT,
    }
}

impl Store {
    /// Reference count of a line (0 for the zero line and free slots).
    pub(crate) fn refcount(&self, id: LineId) -> u32 {
        self.meta.as_slice()[id.0 as usize].load(Relaxed) & COUNT_MASK
    }

    /// Kind of a live line.
    pub(crate) fn kind(&self, id: LineId) -> LineKind {
        if self.meta.as_slice()[id.0 as usize].load(Relaxed) & INTERIOR_BIT != 0 {
            LineKind::Interior
        } else {
            LineKind::Leaf
        }
    }

    /// Takes one more reference to a line the caller already holds.
    #[inline]
    pub(crate) fn acquire(&self, id: LineId) {
        if id.is_zero() {
            return;
        }
        let m = &self.meta.as_slice()[id.0 as usize];
        let prev = m.fetch_add(1, Relaxed);
        debug_assert!(prev & COUNT_MASK != 0, "acquire of a free line {id}");
        if prev & COUNT_MASK >= SATURATED {
            m.store((prev & INTERIOR_BIT) | SATURATED, Relaxed);
        }
    }

    /// Drops one reference; a line whose count reaches zero releases its
    /// children and its slot (through the batched path of
    /// [`Store::release_all`]).
    pub(crate) fn release(&self, id: LineId) {
        if !id.is_zero() && self.dec_unless_last(id.0) {
            self.release_last(vec![id.0]);
        }
    }

    /// Drops one reference to each line of a list (a line listed twice loses
    /// two). The releases are batched: the counts that stay above zero are
    /// decremented without any lock, and the lines whose last reference goes
    /// are hashed together (prefetching their index slots), sorted by shard
    /// and freed under one lock acquisition per shard and batch, level after
    /// level of their DAGs.
    pub(crate) fn release_all(&self, ids: &[LineId]) {
        let meta = self.meta.as_slice();
        let mut last = Vec::new();
        for (j, id) in ids.iter().enumerate() {
            if let Some(next) = ids.get(j + PREFETCH_AHEAD) {
                prefetch_ptr(meta.as_ptr().wrapping_add(next.0 as usize));
            }
            if !id.is_zero() && self.dec_unless_last(id.0) {
                last.push(id.0);
            }
        }
        if !last.is_empty() {
            self.release_last(last);
        }
    }

    /// Takes a reference to a line found without one (by a pinned reader),
    /// unless its count is zero: a line being freed, or freed and waiting
    /// for its epoch, which must not be revived. The 1 -> 0 step happens
    /// under the shard lock (`free_batch`), and both are read-modify-writes
    /// of the same word, so exactly one of this increment and that step sees
    /// the count at 1: either the line stays (the free sees 2 and backs off)
    /// or this returns false.
    #[inline]
    pub(super) fn inc_unless_zero(&self, id: u32) -> bool {
        let m = &self.meta.as_slice()[id as usize];
        let mut c = m.load(Relaxed);
        loop {
            let count = c & COUNT_MASK;
            if count == 0 {
                return false;
            }
            if count >= SATURATED {
                return true;
            }
            match m.compare_exchange_weak(c, c + 1, Relaxed, Relaxed) {
                Ok(_) => return true,
                Err(now) => c = now,
            }
        }
    }

    /// Drops one reference unless it is the last; true when it is the last
    /// (the count is left at 1, the caller finishes under the shard lock).
    #[inline]
    fn dec_unless_last(&self, id: u32) -> bool {
        let m = &self.meta.as_slice()[id as usize];
        let mut c = m.load(Relaxed);
        loop {
            let count = c & COUNT_MASK;
            debug_assert!(count != 0, "release of a free line L{id}");
            if count >= SATURATED || count == 0 {
                return false;
            }
            if count == 1 {
                return true;
            }
            match m.compare_exchange_weak(c, c - 1, Release, Relaxed) {
                Ok(_) => return false,
                Err(now) => c = now,
            }
        }
    }

    /// Finishes the release of `last`: lines whose count this thread saw at 1
    /// while owning that one reference. Works in batches of [`RELEASE_BATCH`]
    /// taken off the end of the pending list (so the list stays short: about
    /// one batch per DAG level); the children of every freed interior line
    /// join the pending list and lose their reference in a later batch.
    fn release_last(&self, last: Vec<u32>) {
        let meta = self.meta.as_slice();
        // `pending`: references still to drop; `cand`: lines at their last
        // reference, to decide under the shard lock.
        let mut pending: Vec<u32> = Vec::new();
        let mut cand = last;
        let mut hashes: Vec<u64> = Vec::new();
        let mut order: Vec<u32> = Vec::new();
        let guard = self.epochs.pin();
        let mut freed = Vec::new();
        loop {
            if cand.is_empty() {
                if pending.is_empty() {
                    break;
                }
                let at = pending.len().saturating_sub(RELEASE_BATCH);
                for j in at..pending.len() {
                    if let Some(&next) = pending.get(j + PREFETCH_AHEAD) {
                        prefetch_ptr(meta.as_ptr().wrapping_add(next as usize));
                    }
                    let id = pending[j];
                    if self.dec_unless_last(id) {
                        cand.push(id);
                    }
                }
                pending.truncate(at);
                continue;
            }
            for chunk in cand.chunks(RELEASE_BATCH) {
                self.free_batch(chunk, &mut pending, &mut hashes, &mut order, &mut freed);
            }
            cand.clear();
        }
        // One deferred function for the whole release (a collection step
        // takes a bounded number of them).
        let freed_n = freed.len();
        self.defer_free(freed, &guard);
        drop(guard);
        // Near capacity (the fresh range used up, or many slots waiting)
        // every freed slot counts.
        let near_full = self.next_fresh.load(Relaxed) >= self.slots
            || self.limbo.load(Relaxed) > self.slots / 32;
        if freed_n >= FLUSH_AFTER || (freed_n > 0 && near_full) {
            // Two advances of the epoch retire this release's bag when no
            // other thread is pinned; a third collects it.
            for _ in 0..3 {
                self.epochs.pin().flush();
            }
        }
    }

    /// Frees the lines of `batch` whose last reference this thread owns,
    /// unless a lookup took a new reference meanwhile; the children of each
    /// freed interior line go to `pending`, and the freed slots to `freed`
    /// (they return to the free bitmap after an epoch: `defer_free`).
    fn free_batch(
        &self,
        batch: &[u32],
        pending: &mut Vec<u32>,
        hashes: &mut Vec<u64>,
        order: &mut Vec<u32>,
        freed: &mut Vec<u32>,
    ) {
        let meta = self.meta.as_slice();
        let mut counts = [0u32; SHARDS];
        // Hash every line of the batch (prefetching lines ahead and index slots).
        hashes.clear();
        for j in 0..batch.len() {
            if let Some(&next) = batch.get(j + PREFETCH_AHEAD) {
                prefetch_ptr(self.line(LineId(next)).as_ptr());
                prefetch_ptr(meta.as_ptr().wrapping_add(next as usize));
            }
            let id = batch[j];
            let h = line_hash(self.kind(LineId(id)), self.line(LineId(id)));
            self.prefetch_index(h);
            counts[h as usize & (SHARDS - 1)] += 1;
            hashes.push(h);
        }
        // Counting sort by shard.
        let mut at = 0;
        for c in counts.iter_mut() {
            let k = *c;
            *c = at;
            at += k;
        }
        order.clear();
        order.resize(batch.len(), 0);
        // Each shard gets its lines in reverse order, so that its short free
        // list (a stack) hands the slots out again in the order they were
        // first allocated. (Most freed slots go to the free bitmap, which
        // hands them out in ascending runs; see `Store::alloc_slot`.)
        for (j, h) in hashes.iter().enumerate().rev() {
            let sh = *h as usize & (SHARDS - 1);
            order[counts[sh] as usize] = j as u32;
            counts[sh] += 1;
        }
        let mut k = 0;
        while k < order.len() {
            let sh = hashes[order[k] as usize] as usize & (SHARDS - 1);
            let mut shard = self.shards[sh].lock.lock();
            while k < order.len() && hashes[order[k] as usize] as usize & (SHARDS - 1) == sh {
                let j = order[k] as usize;
                k += 1;
                let id = batch[j];
                let m = &meta[id as usize];
                let prev = m.fetch_sub(1, AcqRel);
                if prev & COUNT_MASK != 1 {
                    continue; // a lookup took a reference meanwhile
                }
                let kind = if prev & INTERIOR_BIT != 0 {
                    LineKind::Interior
                } else {
                    LineKind::Leaf
                };
                let removed = shard.table.remove(hashes[j], id);
                debug_assert!(removed, "line L{id} missing from its shard");
                shard.live[kind_index(kind)] -= 1;
                if kind == LineKind::Interior {
                    pending.extend(
                        self.line(LineId(id))
                            .as_chunks::<4>()
                            .0
                            .iter()
                            .map(|b| u32::from_le_bytes(*b))
                            .filter(|c| *c != 0),
                    );
                }
                m.store(0, Relaxed);
                freed.push(id);
            }
        }
    }
}
