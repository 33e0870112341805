//! The sharded dedup index (open addressing, linear probing, backward-shift
//! delete) and the free lists of line slots.

use std::sync::atomic::Ordering::*;

use super::counts::{kind_bit, COUNT_MASK, INTERIOR_BIT, SATURATED};
use super::{kind_index, Store, SHARDS};
use crate::config::Durability;
use crate::id::{LineId, LineKind};
use crate::region::prefetch_ptr;
use crate::sync::{AtomicPtr, AtomicUsize, Mutex};

const FRESH_CHUNK: u64 = 16;
pub(super) const INITIAL_TABLE: usize = 8;

pub(super) struct Shard {
    /// `tag << 32 | id`; 0 is empty (id 0 never enters the index).
    pub(super) table: Vec<u64>,
    pub(super) len: usize,
    pub(super) free: Vec<u32>,
    pub(super) live: [u64; 2],
    pub(super) created: [u64; 2],
    pub(super) hits: [u64; 2],
    /// Lines created since the last persist barrier (durable memories only).
    pub(super) pending: Vec<u32>,
}

pub(super) struct ShardCell {
    pub(super) lock: Mutex<Shard>,
    /// Table base and mask for prefetching without the lock: only ever used as
    /// a hint, so a stale value is harmless.
    pub(super) hint_ptr: AtomicPtr<u64>,
    pub(super) hint_mask: AtomicUsize,
}

impl Shard {
    #[inline]
    fn mask(&self) -> usize {
        self.table.len() - 1
    }

    fn grow(&mut self, cell: &ShardCell) {
        let new_len = self.table.len() * 2;
        let mut table = vec![0u64; new_len];
        let mask = new_len - 1;
        for &s in self.table.iter().filter(|s| **s != 0) {
            let mut i = (s >> 32) as usize & mask;
            while table[i] != 0 {
                i = (i + 1) & mask;
            }
            table[i] = s;
        }
        self.table = table;
        cell.hint_ptr.store(self.table.as_mut_ptr(), Relaxed);
        cell.hint_mask.store(mask, Relaxed);
    }

    /// Removes the entry `tag << 32 | id` (backward-shift deletion).
    pub(super) fn remove(&mut self, tag: u32, id: u32) {
        let mask = self.mask();
        let want = (u64::from(tag) << 32) | u64::from(id);
        let mut i = tag as usize & mask;
        while self.table[i] != want {
            debug_assert!(self.table[i] != 0, "line {id} missing from its shard");
            if self.table[i] == 0 {
                return;
            }
            i = (i + 1) & mask;
        }
        let mut hole = i;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let s = self.table[j];
            if s == 0 {
                break;
            }
            let ideal = (s >> 32) as usize & mask;
            // Move `s` into the hole unless its ideal slot lies in (hole, j].
            if (j.wrapping_sub(ideal) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.table[hole] = s;
                hole = j;
            }
        }
        self.table[hole] = 0;
        self.len -= 1;
    }
}

impl Store {
    /// Takes a free slot for `shard` (lock order: shard, then global).
    pub(super) fn alloc_slot(&self, shard: &mut Shard) -> Option<u32> {
        if let Some(id) = shard.free.pop() {
            return Some(id);
        }
        // Small memories take few slots at a time (little reserved metadata);
        // busy shards take more (fewer trips to the shared lists).
        let chunk = if shard.created[0] + shard.created[1] < 1024 {
            FRESH_CHUNK
        } else {
            FRESH_CHUNK * 16
        };
        {
            let mut global = self.global_free.lock();
            if !global.is_empty() {
                let take = global.len().min(chunk as usize);
                let at = global.len() - take;
                shard.free.extend(global.drain(at..));
            }
        }
        if shard.free.is_empty() && self.next_fresh.load(Relaxed) < self.slots {
            let start = self.next_fresh.fetch_add(chunk, Relaxed);
            if start < self.slots {
                let end = (start + chunk).min(self.slots);
                shard.free.extend((start as u32..end as u32).rev());
            }
        }
        shard.free.pop()
    }

    /// Moves every shard's free list to the global list (used only when the
    /// memory is otherwise full).
    pub(super) fn drain_free_lists(&self) {
        for cell in self.shards.iter() {
            let mut shard = cell.lock.lock();
            if !shard.free.is_empty() {
                let mut global = self.global_free.lock();
                global.append(&mut shard.free);
            }
        }
    }

    #[inline]
    pub(super) fn prefetch_index(&self, h: u64) {
        let cell = &self.shards[h as usize & (SHARDS - 1)];
        let base = cell.hint_ptr.load(Relaxed);
        let mask = cell.hint_mask.load(Relaxed);
        prefetch_ptr(base.wrapping_add((h >> 32) as usize & mask));
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
        if (shard.len + 1) * 4 > shard.table.len() * 3 {
            shard.grow(cell);
        }
        let tag = (h >> 32) as u32;
        let mask = shard.mask();
        let meta = self.meta.as_slice();
        let kbit = kind_bit(kind);
        let mut i = tag as usize & mask;
        loop {
            let s = shard.table[i];
            if s == 0 {
                break;
            }
            if (s >> 32) as u32 == tag {
                let id = LineId(s as u32);
                let m = &meta[id.0 as usize];
                if m.load(Relaxed) & INTERIOR_BIT == kbit && self.line(id) == line {
                    let prev = m.fetch_add(1, Relaxed);
                    if prev & COUNT_MASK >= SATURATED {
                        m.store(kbit | SATURATED, Relaxed);
                    }
                    shard.hits[kind_index(kind)] += 1;
                    return Some((id, false));
                }
            }
            i = (i + 1) & mask;
        }
        let id = self.alloc_slot(shard)?;
        // SAFETY: `id` was just taken from a free list or the fresh range, so
        // this thread owns it exclusively; it is published below, under the lock.
        unsafe { self.arena.write(id, line) };
        meta[id as usize].store(kbit | 1, Relaxed);
        shard.table[i] = (u64::from(tag) << 32) | u64::from(id);
        shard.len += 1;
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
        if (shard.len + 1) * 4 > shard.table.len() * 3 {
            shard.grow(cell);
        }
        let tag = (h >> 32) as u32;
        let mask = shard.mask();
        let mut i = tag as usize & mask;
        let line = self.line(LineId(id));
        let meta = self.meta.as_slice();
        loop {
            let s = shard.table[i];
            if s == 0 {
                break;
            }
            let other = s as u32;
            if (s >> 32) as u32 == tag
                && meta[other as usize].load(Relaxed) & INTERIOR_BIT == kind_bit(kind)
                && self.line(LineId(other)) == line
            {
                return false;
            }
            i = (i + 1) & mask;
        }
        shard.table[i] = (u64::from(tag) << 32) | u64::from(id);
        shard.len += 1;
        true
    }
}
