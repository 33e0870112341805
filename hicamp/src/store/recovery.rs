//! Recovery: the walk of every DAG reachable from a file's committed map
//! entries, and the rebuild of the derived state (reference counts, index,
//! free lists, counters) from what the walk found.
//!
//! Only the map entries are the truth; everything else is rebuilt here on
//! every open, which reclaims the lines a crash orphaned and needs no log.

use std::sync::atomic::Ordering::*;

use super::counts::{kind_bit, COUNT_MASK, SATURATED};
use super::{children_of, kind_index, line_hash, Store, SHARDS};
use crate::error::{Error, Result};
use crate::id::{LineId, LineKind};
use crate::persist::{current_slot, RootEntry, LIVE_BIT};
use crate::region::{Arena, AtomicU64Array};
use crate::shape::{height_for, leaves_for, MAX_HEIGHT, MAX_SEGMENT_LEN};

/// What a walk of every committed DAG found.
#[derive(Debug, Default)]
pub(crate) struct Analysis {
    /// Live entries (index, root, height, len).
    pub entries: Vec<RootEntry>,
    /// References to each slot from committed roots and interior lines.
    pub counts: Vec<u32>,
    /// Height of each reached line, `UNREACHED` otherwise.
    pub heights: Vec<u8>,
    /// Lines reached (slot 0, the zero line, never is).
    pub live: u64,
    pub max_id: u32,
}

pub(crate) const UNREACHED: u8 = u8::MAX;

/// Walks every DAG reachable from a committed entry and counts references.
/// Checks that ids are in range, heights agree with lengths, and no line is
/// reached at two heights (which also rules out cycles). Reads only.
///
/// Only the reserved part of the file is read: map entries `0..entries` and
/// line slots `0..slots` (nothing beyond was ever written), so the walk's
/// structures are sized by what the file holds, not by its capacity.
pub(crate) fn analyze(
    path: &str,
    arena: &Arena,
    map_words: &AtomicU64Array,
    map_capacity: u32,
    slots: usize,
    fanout_shift: u32,
) -> Result<Analysis> {
    let corrupt = |what: String| Error::Corrupt {
        path: path.to_string(),
        what,
    };
    let slots = slots.max(1).min(arena.slots());
    let mut a = Analysis {
        counts: vec![0; slots],
        heights: vec![UNREACHED; slots],
        ..Analysis::default()
    };
    let words = map_words.as_slice();
    let mut stack: Vec<(u32, u32)> = Vec::new();
    let line_shift = fanout_shift + 2;
    for index in 0..map_capacity {
        let Some((slot, w0, len, version)) = current_slot(words, index).map_err(corrupt)? else {
            continue;
        };
        if w0 & LIVE_BIT == 0 {
            continue;
        }
        let root = w0 as u32;
        let height = ((w0 >> 32) & 0xff) as u32;
        if len > MAX_SEGMENT_LEN || height as usize > MAX_HEIGHT {
            return Err(corrupt(format!(
                "map entry {index}: length {len} or height {height} out of range"
            )));
        }
        if height != height_for(leaves_for(len, line_shift), fanout_shift) {
            return Err(corrupt(format!(
                "map entry {index}: height {height} does not fit length {len}"
            )));
        }
        if root as usize >= slots {
            return Err(corrupt(format!(
                "map entry {index}: root L{root} out of range"
            )));
        }
        a.entries.push(RootEntry {
            index,
            root: LineId(root),
            height,
            len,
            version,
            slot,
        });
        stack.push((root, height));
        while let Some((id, h)) = stack.pop() {
            if id == 0 {
                continue;
            }
            let i = id as usize;
            if a.heights[i] == UNREACHED {
                a.heights[i] = h as u8;
                a.live += 1;
                a.max_id = a.max_id.max(id);
                if h > 0 {
                    // SAFETY: `id < slots` (checked when it was pushed); the
                    // memory is not shared yet (open) or its mapping is read
                    // by this thread alone (fsck), so nothing writes the line.
                    for c in unsafe { children_of(arena, id) } {
                        if c as usize >= slots {
                            return Err(corrupt(format!("line L{id} has child L{c} out of range")));
                        }
                        stack.push((c, h - 1));
                    }
                }
            } else if u32::from(a.heights[i]) != h {
                return Err(corrupt(format!(
                    "line L{id} is reached at heights {} and {h}",
                    a.heights[i]
                )));
            }
            a.counts[i] = a.counts[i].saturating_add(1);
        }
    }
    Ok(a)
}

/// What a rebuild found and repaired.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RebuildReport {
    /// Unreachable slots that held a count: reclaimed.
    pub orphans: u64,
    /// Reachable lines whose stored count was wrong: repaired.
    pub repaired: u64,
    /// Reachable lines equal to another one (kept out of the index).
    pub duplicates: u64,
}

impl Store {
    /// Rebuilds the derived state (reference counts, index, free lists,
    /// counters) from a walk of the committed roots, in one pass over the
    /// slots. Runs before the memory is shared.
    pub(crate) fn rebuild(&self, a: &Analysis) -> RebuildReport {
        let meta = self.meta.as_slice();
        let mut r = RebuildReport::default();
        let high = u64::from(a.max_id) + 1;
        // Size every shard's table for its share of the live lines up front, so
        // that the rebuild never rehashes.
        let per_shard = super::Table::buckets_for(a.live as usize / SHARDS + 16);
        for cell in self.shards.iter() {
            let mut shard = cell.lock.lock();
            debug_assert_eq!(shard.table.len(), 0, "rebuild runs on a fresh store");
            shard.table.rebuild(per_shard, &[], &[]);
            cell.set_hint(&shard.table);
        }
        let mut free = Vec::new();
        // Slots past the walk's (the reserved ones) were never written.
        for (id, m) in meta.iter().enumerate().take(a.heights.len()).skip(1) {
            let h = a.heights[id];
            let stored = m.load(Relaxed);
            if h == UNREACHED {
                if stored != 0 {
                    r.orphans += 1;
                    m.store(0, Relaxed);
                }
                if (id as u64) < high {
                    free.push(id as u32);
                }
                continue;
            }
            let kind = if h > 0 {
                LineKind::Interior
            } else {
                LineKind::Leaf
            };
            let count = a.counts[id].min(SATURATED);
            if stored & COUNT_MASK != a.counts[id] {
                r.repaired += 1;
            }
            m.store(kind_bit(kind) | count, Relaxed);
            let line = self.line(LineId(id as u32));
            let hash = line_hash(kind, line);
            let cell = &self.shards[hash as usize & (SHARDS - 1)];
            let mut shard = cell.lock.lock();
            shard.live[kind_index(kind)] += 1;
            shard.created[kind_index(kind)] += 1;
            if !self.index_insert_existing(cell, &mut shard, kind, hash, id as u32) {
                r.duplicates += 1;
            }
        }
        for &id in &free {
            self.free_slot(id);
        }
        self.free_count.store(free.len() as u64, Relaxed);
        self.next_fresh.store(high, Relaxed);
        r
    }
}

impl Store {
    /// Takes up to `chunk` fresh slots (`start..end`) from the bump counter,
    /// after making sure the file has space for them (their arena and count
    /// pages are allocated): a slot is never handed out whose page the file
    /// system could refuse. `None` when the capacity is used up, or when the
    /// file system is full (the backing then reports `NoSpace`).
    pub(super) fn take_fresh(&self, chunk: u64) -> Option<(u64, u64)> {
        let backing = self.arena.backing();
        let mut start = self.next_fresh.load(Relaxed);
        loop {
            if start >= self.slots {
                return None;
            }
            let mut end = (start + chunk).min(self.slots);
            if backing.reserve_slots(end).is_err() {
                end = start + 1;
                backing.reserve_slots(end).ok()?;
            }
            match self
                .next_fresh
                .compare_exchange_weak(start, end, Relaxed, Relaxed)
            {
                Ok(_) => return Some((start, end)),
                Err(s) => start = s,
            }
        }
    }
}
