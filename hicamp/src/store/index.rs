//! The sharded dedup index (one [`Table`] per shard, under the shard lock)
//! and the free lists of line slots.

use std::sync::atomic::Ordering::*;

use super::counts::{kind_bit, COUNT_MASK, INTERIOR_BIT, SATURATED};
use super::table::{Bucket, Table};
use super::{kind_index, line_hash, Store, SHARDS};
use crate::config::Durability;
use crate::id::{LineId, LineKind};
use crate::region::prefetch_ptr;
use crossbeam_utils::CachePadded;

use crate::sync::{AtomicPtr, AtomicUsize, Mutex};

const FRESH_CHUNK: u64 = 16;
/// How far ahead of its use a line is prefetched when a table grows.
const PREFETCH_AHEAD: usize = 8;

pub(super) struct Shard {
    /// The dedup table (see `table`).
    pub(super) table: Table,
    pub(super) free: Vec<u32>,
    pub(super) live: [u64; 2],
    pub(super) created: [u64; 2],
    pub(super) hits: [u64; 2],
    /// Lines created since the last persist barrier (durable memories only).
    pub(super) pending: Vec<u32>,
}

pub(super) struct ShardCell {
    /// Table base and bucket count for prefetching without the lock: only
    /// ever used as a hint, so a stale value is harmless. They sit on their
    /// own cache line, apart from the lock: every hashed line reads them,
    /// and a lock word beside them would bounce that line between threads.
    pub(super) hint_ptr: AtomicPtr<Bucket>,
    pub(super) hint_len: AtomicUsize,
    pub(super) lock: CachePadded<Mutex<Shard>>,
}

impl ShardCell {
    /// Publishes the table's current base and size as the prefetch hint.
    pub(super) fn set_hint(&self, table: &Table) {
        let (p, n) = table.hint();
        self.hint_ptr.store(p.cast_mut(), Relaxed);
        self.hint_len.store(n, Relaxed);
    }
}

impl Store {
    /// Takes a free slot for `shard` (lock order: shard, then the bitmap
    /// cursor): the shard's own list first, then a run of freed slots taken
    /// from the free bitmap in ascending order (when enough are free, or the
    /// fresh range is used up), then fresh slots from the bump counter.
    ///
    /// The bitmap is what keeps a warm memory as fast as a fresh one: the
    /// slots of a mass release are handed out again in ascending runs, so
    /// the next intern writes the arena and the counts a few pages at a time
    /// (as a fresh memory does), not at random across the whole arena.
    pub(super) fn alloc_slot(&self, shard: &mut Shard) -> Option<u32> {
        if let Some(id) = shard.free.pop() {
            return Some(id);
        }
        // Small memories take few slots at a time (little reserved metadata);
        // busy shards take more (fewer trips to the shared state).
        let chunk = if shard.created[0] + shard.created[1] < 1024 {
            FRESH_CHUNK
        } else {
            FRESH_CHUNK * 16
        };
        let fresh_left = self.next_fresh.load(Relaxed) < self.slots;
        let freed = self.free_count.load(Relaxed) as i64;
        if freed >= chunk as i64 || (!fresh_left && freed > 0) {
            self.take_freed(shard, chunk as usize);
        }
        if shard.free.is_empty() {
            // Fresh slots whose file space is reserved (`recovery::take_fresh`).
            if let Some((start, end)) = self.take_fresh(chunk) {
                shard.free.extend((start as u32..end as u32).rev());
            }
        }
        shard.free.pop()
    }

    /// Moves at least `want` freed slots (or all there are) from the free
    /// bitmap to the shard's list, scanning on from the shared cursor so
    /// that the shards take consecutive runs; the list pops them in
    /// ascending order.
    fn take_freed(&self, shard: &mut Shard, want: usize) {
        let words = &self.free_bits[..];
        let mut cursor = self.free_cursor.lock();
        let at = shard.free.len();
        let mut w = *cursor;
        for _ in 0..words.len() {
            if w >= words.len() {
                w = 0;
            }
            if words[w].load(Relaxed) != 0 {
                // Acquire: pairs with the release in `free_slot`, so the
                // freeing thread's last reads of the line come before our
                // rewrite of it.
                let mut bits = words[w].swap(0, Acquire);
                while bits != 0 {
                    shard.free.push((w as u32) << 6 | bits.trailing_zeros());
                    bits &= bits - 1;
                }
            }
            w += 1;
            if shard.free.len() - at >= want {
                break;
            }
        }
        *cursor = w;
        drop(cursor);
        let took = shard.free.len() - at;
        self.free_count.fetch_sub(took as u64, Relaxed);
        shard.free[at..].reverse();
    }

    /// Marks a slot free in the bitmap (its count word is already zero);
    /// the caller adds the number of slots it marked to `free_count`.
    #[inline]
    pub(super) fn free_slot(&self, id: u32) {
        // Release: see `take_freed`.
        self.free_bits[(id >> 6) as usize].fetch_or(1 << (id & 63), Release);
    }

    /// Moves every shard's free list to the free bitmap (used only when the
    /// memory is otherwise full).
    pub(super) fn drain_free_lists(&self) {
        for cell in self.shards.iter() {
            let mut shard = cell.lock.lock();
            let n = shard.free.len();
            for id in shard.free.drain(..) {
                self.free_slot(id);
            }
            self.free_count.fetch_add(n as u64, Relaxed);
        }
    }

    #[inline]
    pub(super) fn prefetch_index(&self, h: u64) {
        let cell = &self.shards[h as usize & (SHARDS - 1)];
        let base = cell.hint_ptr.load(Relaxed);
        let n = cell.hint_len.load(Relaxed);
        prefetch_ptr(base.wrapping_add(Table::home_of(h, n)));
    }

    /// Before a run of lookups in one shard (lock held): prefetches the
    /// count word and the line of every tag-matching candidate, and, for the
    /// lookups that have none (likely new lines), the slots the free list
    /// will hand out next, so that the misses of the whole run overlap.
    pub(super) fn prefetch_run(&self, shard: &Shard, hashes: impl Iterator<Item = u64>) {
        let meta = self.meta.as_slice();
        let mut misses = 0;
        for h in hashes {
            let n = shard.table.candidates(h, |id| {
                prefetch_ptr(meta.as_ptr().wrapping_add(id as usize));
                prefetch_ptr(self.line(LineId(id)).as_ptr());
            });
            misses += usize::from(n == 0);
        }
        for &id in shard.free.iter().rev().take(misses) {
            prefetch_ptr(meta.as_ptr().wrapping_add(id as usize));
            prefetch_ptr(self.line(LineId(id)).as_ptr());
        }
    }

    /// Grows a shard's table by 1.5x, rehashing its lines (they are live and
    /// the shard lock is held, so their content is stable).
    pub(super) fn grow(&self, cell: &ShardCell, shard: &mut Shard) {
        // In ascending id order the lines are read in runs (a shard's slots
        // come in runs), not at random over the arena.
        let mut ids = shard.table.ids();
        ids.sort_unstable();
        let mut hashes = Vec::with_capacity(ids.len());
        let meta = self.meta.as_slice();
        for (j, &id) in ids.iter().enumerate() {
            if let Some(&next) = ids.get(j + PREFETCH_AHEAD) {
                prefetch_ptr(self.line(LineId(next)).as_ptr());
                prefetch_ptr(meta.as_ptr().wrapping_add(next as usize));
            }
            hashes.push(line_hash(self.kind(LineId(id)), self.line(LineId(id))));
        }
        let n = shard.table.grown();
        shard.table.rebuild(n, &ids, &hashes);
        cell.set_hint(&shard.table);
    }

    /// Looks a full line up under its shard lock, inserting it when absent.
    /// `None` means no free slot could be found without draining.
    pub(super) fn find_or_insert(
        &self,
        cell: &ShardCell,
        shard: &mut Shard,
        kind: LineKind,
        h: u64,
        line: &[u8],
    ) -> Option<(LineId, bool)> {
        if shard.table.full() {
            self.grow(cell, shard);
        }
        let meta = self.meta.as_slice();
        let kbit = kind_bit(kind);
        let found = shard.table.find(h, |id| {
            meta[id as usize].load(Relaxed) & INTERIOR_BIT == kbit && self.line(LineId(id)) == line
        });
        if let Some(id) = found {
            let m = &meta[id as usize];
            let prev = m.fetch_add(1, Relaxed);
            if prev & COUNT_MASK >= SATURATED {
                m.store(kbit | SATURATED, Relaxed);
            }
            shard.hits[kind_index(kind)] += 1;
            return Some((LineId(id), false));
        }
        let id = self.alloc_slot(shard)?;
        // SAFETY: `id` was just taken from a free list or the fresh range, so
        // this thread owns it exclusively; it is published below, under the lock.
        unsafe { self.arena.write(id, line) };
        meta[id as usize].store(kbit | 1, Relaxed);
        shard.table.insert(h, id);
        shard.live[kind_index(kind)] += 1;
        shard.created[kind_index(kind)] += 1;
        if self.durability != Durability::None {
            shard.pending.push(id);
        }
        Some((LineId(id), true))
    }

    /// Adds an existing line to the index; false when an equal line is already
    /// there (a non-canonical file), in which case the line stays out of it.
    pub(super) fn index_insert_existing(
        &self,
        cell: &ShardCell,
        shard: &mut Shard,
        kind: LineKind,
        h: u64,
        id: u32,
    ) -> bool {
        if shard.table.full() {
            self.grow(cell, shard);
        }
        let line = self.line(LineId(id));
        let meta = self.meta.as_slice();
        let kbit = kind_bit(kind);
        let dup = shard.table.find(h, |other| {
            meta[other as usize].load(Relaxed) & INTERIOR_BIT == kbit
                && self.line(LineId(other)) == line
        });
        if dup.is_some() {
            return false;
        }
        shard.table.insert(h, id);
        true
    }
}
