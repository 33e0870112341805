//! Reference counts: one `u32` per slot, mapped beside the arena. Bit 31 is
//! the kind (set = interior), bits 0..31 the count; a count that reaches
//! [`SATURATED`] is never freed again. A count goes from 1 to 0 only under the
//! line's shard lock, which is what keeps the index and the counts in step
//! (see the store's module documentation).

use std::sync::atomic::Ordering::*;

use super::{kind_index, line_hash, Store, SHARDS};
use crate::id::{LineId, LineKind};

/// Kind bit of a reference-count word (set = interior line). The one
/// definition: the file format (`persist`) and `fsck` read the same words.
pub(crate) const INTERIOR_BIT: u32 = 1 << 31;
pub(super) const COUNT_MASK: u32 = !INTERIOR_BIT;
pub(super) const SATURATED: u32 = 1 << 30;
/// A shard's free list spills half of itself to the global list beyond this.
const LOCAL_FREE_MAX: usize = 4096;

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
    /// children and its slot.
    pub(crate) fn release(&self, id: LineId) {
        if id.is_zero() {
            return;
        }
        let mut stack = Vec::new();
        let mut cur = id.0;
        loop {
            self.release_one(cur, &mut stack);
            match stack.pop() {
                Some(next) => cur = next,
                None => break,
            }
        }
    }

    /// Releases each id of a list.
    pub(crate) fn release_all(&self, ids: &[LineId]) {
        for &id in ids {
            self.release(id);
        }
    }

    fn release_one(&self, id: u32, stack: &mut Vec<u32>) {
        let m = &self.meta.as_slice()[id as usize];
        let mut c = m.load(Relaxed);
        loop {
            let count = c & COUNT_MASK;
            debug_assert!(count != 0, "release of a free line L{id}");
            if count >= SATURATED || count == 0 {
                return;
            }
            if count == 1 {
                break;
            }
            match m.compare_exchange_weak(c, c - 1, Release, Relaxed) {
                Ok(_) => return,
                Err(now) => c = now,
            }
        }
        // Possibly the last reference: decide under the shard lock.
        let kind = if c & INTERIOR_BIT != 0 {
            LineKind::Interior
        } else {
            LineKind::Leaf
        };
        let line = self.line(LineId(id));
        let h = line_hash(kind, line);
        let cell = &self.shards[h as usize & (SHARDS - 1)];
        let mut shard = cell.lock.lock();
        let prev = m.fetch_sub(1, AcqRel);
        if prev & COUNT_MASK != 1 {
            return; // a lookup took a reference meanwhile
        }
        shard.remove((h >> 32) as u32, id);
        shard.live[kind_index(kind)] -= 1;
        if kind == LineKind::Interior {
            stack.extend(
                line.as_chunks::<4>()
                    .0
                    .iter()
                    .map(|b| u32::from_le_bytes(*b))
                    .filter(|c| *c != 0),
            );
        }
        m.store(0, Relaxed);
        shard.free.push(id);
        if shard.free.len() > LOCAL_FREE_MAX {
            let spill = shard.free.len() - LOCAL_FREE_MAX / 2;
            let mut global = self.global_free.lock();
            global.extend(shard.free.drain(..spill));
        }
    }
}
