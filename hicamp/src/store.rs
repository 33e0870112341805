//! The line store: arena, reference counts, the sharded dedup index and the
//! free lists.
//!
//! ```text
//!            hash(kind, content) = h (xxh3, seeded by kind)
//!   shard = h & 63            tag = h >> 32         position = tag & mask
//!   +---------+---------+-----+   each shard: Mutex { open-addressing table of
//!   | shard 0 | shard 1 | ... |   u64 slots (tag << 32 | line id, 0 = empty),
//!   +---------+---------+-----+   linear probing, backward-shift delete;
//!                                  a local free list of line slots }
//! ```
//!
//! A lookup compares the tag and then the full content (and kind): a hash never
//! decides equality. Line id 0 is the all-zero line and never enters the index.
//!
//! Reference counts live in a mapped `u32` array beside the arena: bit 31 is
//! the kind (set = interior), bits 0..31 the count. The rule that makes the
//! index and the counts agree: a count goes from 1 to 0 only under the shard
//! lock, and in the same critical section the line leaves the index; a lookup
//! increments under that same lock. So no lookup can revive a line that is
//! being freed. Other increments happen without the lock, which is sound
//! because whoever increments already holds a reference. A count that reaches
//! 2^30 saturates: the line is never freed again (a leak, never corruption),
//! like the kernel's `refcount_t`.
//!
//! Slots come from the shard's own free list, then a global overflow list, then
//! fresh slots taken 16 at a time from a bump counter. When all of those are
//! empty the other shards' free lists are drained and the lookup is retried
//! once before the store reports `CapacityExhausted`.

use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::config::Durability;
use crate::error::{Error, Result};
use crate::id::{LineId, LineKind};
use crate::persist::{Analysis, Layout, UNREACHED};
use crate::region::{prefetch_ptr, store_fence, Arena, AtomicU32Array, Backing};

const SHARD_BITS: u32 = 6;
const SHARDS: usize = 1 << SHARD_BITS;
const INTERIOR_BIT: u32 = 1 << 31;
const COUNT_MASK: u32 = !INTERIOR_BIT;
const SATURATED: u32 = 1 << 30;
const FRESH_CHUNK: u64 = 16;
const LOCAL_FREE_MAX: usize = 4096;
const INITIAL_TABLE: usize = 8;
/// Lines hashed, prefetched and sorted by shard together.
const BATCH: usize = 4096;

/// What happened to one line of a batch.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Status {
    /// Not processed (an error stopped the batch first).
    Pending,
    /// A new line (or the zero line): it consumed the caller's child references.
    Created,
    /// An existing line gained a reference.
    Hit,
}

#[inline]
fn kind_bit(kind: LineKind) -> u32 {
    match kind {
        LineKind::Leaf => 0,
        LineKind::Interior => INTERIOR_BIT,
    }
}

#[inline]
fn kind_index(kind: LineKind) -> usize {
    match kind {
        LineKind::Leaf => 0,
        LineKind::Interior => 1,
    }
}

/// Content hash of a line; the kind seeds it so the domains are separate.
#[inline]
pub(crate) fn line_hash(kind: LineKind, line: &[u8]) -> u64 {
    xxh3_64_with_seed(line, kind_index(kind) as u64 + 0x9e37_79b9)
}

/// Runs `f` on a zeroed scratch line of `ls` bytes: on the stack for small
/// lines (no 4 KiB memset per call), on the heap for large ones.
#[inline]
pub(crate) fn with_line<R>(ls: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    if ls <= 128 {
        let mut b = [0u8; 128];
        f(&mut b[..ls])
    } else {
        f(&mut vec![0u8; ls])
    }
}

/// True when every byte is zero.
#[inline]
pub(crate) fn is_zero(line: &[u8]) -> bool {
    let (chunks, rest) = line.as_chunks::<8>();
    chunks.iter().fold(0u64, |a, c| a | u64::from_ne_bytes(*c)) == 0 && rest.iter().all(|b| *b == 0)
}

struct Shard {
    /// `tag << 32 | id`; 0 is empty (id 0 never enters the index).
    table: Vec<u64>,
    len: usize,
    free: Vec<u32>,
    live: [u64; 2],
    created: [u64; 2],
    hits: [u64; 2],
    /// Lines created since the last persist barrier (durable memories only).
    pending: Vec<u32>,
}

struct ShardCell {
    lock: Mutex<Shard>,
    /// Table base and mask for prefetching without the lock: only ever used as
    /// a hint, so a stale value is harmless.
    hint_ptr: AtomicPtr<u64>,
    hint_mask: AtomicUsize,
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
    fn remove(&mut self, tag: u32, id: u32) {
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

/// What the leaf lines of one write did: new lines stored, existing lines
/// found (deduplicated) and all-zero lines (stored nowhere).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteCounts {
    /// Lines created.
    pub new_lines: u64,
    /// Lines that already existed and gained a reference.
    pub dedup_hits: u64,
    /// All-zero lines (line 0).
    pub zero_lines: u64,
}

impl WriteCounts {
    #[inline]
    pub(crate) fn add(&mut self, id: LineId, created: bool) {
        if id.is_zero() {
            self.zero_lines += 1;
        } else if created {
            self.new_lines += 1;
        } else {
            self.dedup_hits += 1;
        }
    }

    /// Lines written in all.
    pub fn lines(&self) -> u64 {
        self.new_lines + self.dedup_hits + self.zero_lines
    }
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

/// Counters of the store, summed over shards.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StoreCounters {
    pub live: [u64; 2],
    pub created: [u64; 2],
    pub hits: [u64; 2],
    pub zero: [u64; 2],
    pub index_bytes: u64,
    pub free_list_bytes: u64,
    pub refcount_bytes: u64,
    pub high_water: u64,
}

pub(crate) struct Store {
    arena: Arena,
    meta: AtomicU32Array,
    shift: u32,
    slots: u64,
    next_fresh: AtomicU64,
    shards: Box<[CachePadded<ShardCell>]>,
    global_free: Mutex<Vec<u32>>,
    zero: [AtomicU64; 2],
    durability: Durability,
    pm_latency_ns: u32,
    /// Serialises persist barriers, so that a commit never passes lines that a
    /// concurrent barrier took but has not finished flushing.
    flush_lock: Mutex<()>,
}

/// The child ids of an interior line, read straight from the arena (for the
/// single-threaded recovery walk and fsck, which hold no references).
pub(crate) fn children_of(arena: &Arena, id: u32) -> impl Iterator<Item = u32> + '_ {
    // SAFETY: callers run before the memory is shared (open) or on a mapping no
    // other thread of this process writes (fsck), and `id` was range-checked.
    let line = unsafe { arena.line(id) };
    line.as_chunks::<4>()
        .0
        .iter()
        .map(|b| u32::from_le_bytes(*b))
        .filter(|c| *c != 0)
}

/// The bytes of a line, for the same single-threaded callers.
pub(crate) fn line_of(arena: &Arena, id: u32) -> &[u8] {
    // SAFETY: as in `children_of`.
    unsafe { arena.line(id) }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("line_size", &self.line_size())
            .field("slots", &self.slots)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// A store over the arena and reference counts of `backing`.
    pub(crate) fn new(
        backing: &std::sync::Arc<Backing>,
        layout: &Layout,
        config: &crate::Config,
    ) -> Store {
        let slots = layout.slots;
        let arena = backing.arena(layout.arena_off as usize, config.line_size, slots as usize);
        let meta = backing.u32s(layout.meta_off as usize, slots as usize);
        let shards = (0..SHARDS)
            .map(|_| {
                let mut shard = Shard {
                    table: vec![0; INITIAL_TABLE],
                    len: 0,
                    free: Vec::new(),
                    live: [0; 2],
                    created: [0; 2],
                    hits: [0; 2],
                    pending: Vec::new(),
                };
                let cell = ShardCell {
                    hint_ptr: AtomicPtr::new(shard.table.as_mut_ptr()),
                    hint_mask: AtomicUsize::new(INITIAL_TABLE - 1),
                    lock: Mutex::new(shard),
                };
                CachePadded::new(cell)
            })
            .collect();
        Store {
            arena,
            meta,
            shift: config.line_size.trailing_zeros(),
            slots,
            next_fresh: AtomicU64::new(1),
            shards,
            global_free: Mutex::new(Vec::new()),
            zero: [AtomicU64::new(0), AtomicU64::new(0)],
            durability: if backing.is_file() {
                config.durability
            } else {
                Durability::None
            },
            pm_latency_ns: config.pm_write_latency_ns,
            flush_lock: Mutex::new(()),
        }
    }

    /// Rebuilds the derived state (reference counts, index, free lists,
    /// counters) from a walk of the committed roots, in one pass over the
    /// slots. Runs before the memory is shared.
    pub(crate) fn rebuild(&self, a: &Analysis) -> RebuildReport {
        let meta = self.meta.as_slice();
        let mut r = RebuildReport::default();
        let high = u64::from(a.max_id) + 1;
        // Size every shard's table for its share of the live lines up front, so
        // that the rebuild never rehashes.
        let per_shard = (a.live as usize / SHARDS * 4 / 3 + 16).next_power_of_two();
        for cell in self.shards.iter() {
            let mut shard = cell.lock.lock();
            debug_assert_eq!(shard.len, 0, "rebuild runs on a fresh store");
            if shard.table.len() < per_shard {
                shard.table = vec![0; per_shard];
                cell.hint_ptr.store(shard.table.as_mut_ptr(), Relaxed);
                cell.hint_mask.store(per_shard - 1, Relaxed);
            }
        }
        let mut free = Vec::new();
        for (id, m) in meta.iter().enumerate().skip(1) {
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
        free.reverse();
        *self.global_free.lock() = free;
        self.next_fresh.store(high, Relaxed);
        r
    }

    /// Adds an existing line to the index; false when an equal line is already
    /// there (a non-canonical file), in which case the line stays out of it.
    fn index_insert_existing(
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

    /// Makes every line created so far durable (per the durability mode) before
    /// the caller publishes a root that refers to them.
    pub(crate) fn persist_barrier(&self) -> std::io::Result<()> {
        if self.durability == Durability::None {
            return Ok(());
        }
        let _g = self.flush_lock.lock();
        let mut ids = Vec::new();
        for cell in self.shards.iter() {
            ids.append(&mut cell.lock.lock().pending);
        }
        let backing = self.arena.backing();
        match self.durability {
            Durability::None => {}
            Durability::CacheLine => {
                for &id in &ids {
                    backing.flush_cache_lines(self.arena.offset_of(id), self.line_size());
                }
                store_fence();
            }
            Durability::Msync => {
                let mut pages: Vec<usize> = ids
                    .iter()
                    .map(|&id| self.arena.offset_of(id) / 4096)
                    .collect();
                pages.sort_unstable();
                pages.dedup();
                let mut i = 0;
                while i < pages.len() {
                    let mut j = i + 1;
                    while j < pages.len() && pages[j] == pages[j - 1] + 1 {
                        j += 1;
                    }
                    // Lines never straddle pages (both are aligned, lines are
                    // at most a page), so whole page runs cover them.
                    backing.msync(pages[i] * 4096, (pages[j - 1] + 1 - pages[i]) * 4096)?;
                    i = j;
                }
            }
        }
        self.pm_delay();
        Ok(())
    }

    /// Spins for the emulated persistent-memory write latency.
    pub(crate) fn pm_delay(&self) {
        if self.pm_latency_ns > 0 {
            let t = std::time::Instant::now();
            let d = std::time::Duration::from_nanos(u64::from(self.pm_latency_ns));
            while t.elapsed() < d {
                std::hint::spin_loop();
            }
        }
    }

    pub(crate) fn arena(&self) -> &Arena {
        &self.arena
    }

    #[inline]
    pub(crate) fn line_size(&self) -> usize {
        1 << self.shift
    }

    #[inline]
    pub(crate) fn shift(&self) -> u32 {
        self.shift
    }

    /// Child ids per interior line.
    #[inline]
    pub(crate) fn fanout(&self) -> usize {
        self.line_size() / 4
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.slots - 1
    }

    /// The bytes of a line the caller holds a reference to (or the zero line).
    #[inline]
    pub(crate) fn line(&self, id: LineId) -> &[u8] {
        // SAFETY: ids reach here only from DAGs the caller holds a reference to
        // (directly or through an ancestor), so the slot is live and immutable;
        // slot 0 is never written.
        unsafe { self.arena.line(id.0) }
    }

    /// Child `j` of an interior line.
    #[inline]
    pub(crate) fn child(&self, id: LineId, j: usize) -> LineId {
        if id.is_zero() {
            return LineId::ZERO;
        }
        let b = &self.line(id)[j * 4..j * 4 + 4];
        LineId(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

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

    /// Takes a free slot for `shard` (lock order: shard, then global).
    fn alloc_slot(&self, shard: &mut Shard) -> Option<u32> {
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
    fn drain_free_lists(&self) {
        for cell in self.shards.iter() {
            let mut shard = cell.lock.lock();
            if !shard.free.is_empty() {
                let mut global = self.global_free.lock();
                global.append(&mut shard.free);
            }
        }
    }

    #[inline]
    fn prefetch_index(&self, h: u64) {
        let cell = &self.shards[h as usize & (SHARDS - 1)];
        let base = cell.hint_ptr.load(Relaxed);
        let mask = cell.hint_mask.load(Relaxed);
        prefetch_ptr(base.wrapping_add((h >> 32) as usize & mask));
    }

    /// Looks a full line up under its shard lock, inserting it when absent.
    /// `None` means no free slot could be found without draining.
    fn find_or_insert(
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

    /// Interns one full, non-zero line whose hash is `h`. Returns the line and
    /// whether it was created (false: an existing line gained a reference).
    fn intern_hashed(&self, kind: LineKind, h: u64, line: &[u8]) -> Result<(LineId, bool)> {
        let cell = &self.shards[h as usize & (SHARDS - 1)];
        {
            let mut shard = cell.lock.lock();
            if let Some(r) = self.find_or_insert(cell, &mut shard, kind, h, line) {
                return Ok(r);
            }
        }
        self.drain_free_lists();
        let mut shard = cell.lock.lock();
        self.find_or_insert(cell, &mut shard, kind, h, line)
            .ok_or(Error::CapacityExhausted {
                capacity: self.capacity(),
            })
    }

    /// Interns one full line (any content); the caller owns the returned
    /// reference.
    pub(crate) fn intern(&self, kind: LineKind, line: &[u8]) -> Result<(LineId, bool)> {
        debug_assert_eq!(line.len(), self.line_size());
        if is_zero(line) {
            self.zero[kind_index(kind)].fetch_add(1, Relaxed);
            return Ok((LineId::ZERO, false));
        }
        self.intern_hashed(kind, line_hash(kind, line), line)
    }

    /// Interns `lines` (a whole number of full lines), appending one id per
    /// line to `out` and one [`Status`] per line to `status`.
    ///
    /// Lines go in batches of [`BATCH`]: hash every line (prefetching its
    /// index slot), sort the batch by shard, and take each shard lock once for
    /// all of its lines. On error every line of this call is released again;
    /// `status` then tells which lines had been done (an interior caller needs
    /// it to give back the child references of the groups that did not
    /// consume theirs).
    fn intern_run(
        &self,
        kind: LineKind,
        lines: &[u8],
        out: &mut Vec<LineId>,
        status: &mut Vec<Status>,
    ) -> Result<()> {
        // Small runs (a write of a few lines) get small batch arrays: the
        // arrays are initialised on every call.
        if lines.len() >> self.shift <= 64 {
            self.intern_batches::<64>(kind, lines, out, status)
        } else {
            self.intern_batches::<BATCH>(kind, lines, out, status)
        }
    }

    fn intern_batches<const B: usize>(
        &self,
        kind: LineKind,
        lines: &[u8],
        out: &mut Vec<LineId>,
        status: &mut Vec<Status>,
    ) -> Result<()> {
        let ls = self.line_size();
        debug_assert_eq!(lines.len() % ls, 0);
        let n = lines.len() >> self.shift;
        let start = out.len();
        out.resize(start + n, LineId::ZERO);
        let sstart = status.len();
        status.resize(sstart + n, Status::Pending);
        let mut hashes = [0u64; B];
        let mut order = [0u16; B];
        let mut counts = [0u16; SHARDS + 1];
        let mut zeros = 0u64;
        let mut base = 0;
        let mut result = Ok(());
        'batches: while base < n {
            let m = B.min(n - base);
            let group = &lines[base * ls..(base + m) * ls];
            counts.fill(0);
            for (j, line) in group.chunks_exact(ls).enumerate() {
                if is_zero(line) {
                    zeros += 1;
                    status[sstart + base + j] = Status::Created;
                    hashes[j] = u64::MAX; // no shard: sorted past the end
                    counts[SHARDS] += 1;
                } else {
                    let h = line_hash(kind, line);
                    self.prefetch_index(h);
                    hashes[j] = h;
                    counts[h as usize & (SHARDS - 1)] += 1;
                }
            }
            // Counting sort of the batch by shard (zero lines last).
            let mut at = 0u16;
            for c in counts.iter_mut() {
                let k = *c;
                *c = at;
                at += k;
            }
            for j in 0..m {
                let sh = if hashes[j] == u64::MAX && is_zero(&group[j * ls..(j + 1) * ls]) {
                    SHARDS
                } else {
                    hashes[j] as usize & (SHARDS - 1)
                };
                order[counts[sh] as usize] = j as u16;
                counts[sh] += 1;
            }
            let nonzero = m - (counts[SHARDS] - counts[SHARDS - 1]) as usize;
            // Start the walk at a shard picked by the batch's own content, so
            // that threads interning different data at once do not queue on
            // the same locks in lockstep, and the same input always gives the
            // same slot allocation order (footprint figures stay
            // deterministic).
            let rot = (hashes[0] ^ hashes[m - 1].rotate_left(17)) as usize & (SHARDS - 1);
            let i0 = if rot == 0 {
                0
            } else {
                counts[rot - 1] as usize
            };
            let at = |k: usize| order[(i0 + k) % nonzero.max(1)] as usize;
            let mut k = 0;
            while k < nonzero {
                let sh = hashes[at(k)] as usize & (SHARDS - 1);
                let cell = &self.shards[sh];
                let mut shard = cell.lock.lock();
                while k < nonzero && hashes[at(k)] as usize & (SHARDS - 1) == sh {
                    let j = at(k);
                    let line = &group[j * ls..(j + 1) * ls];
                    let r = match self.find_or_insert(cell, &mut shard, kind, hashes[j], line) {
                        Some(r) => Ok(r),
                        None => {
                            drop(shard);
                            let r = self.intern_hashed(kind, hashes[j], line);
                            shard = cell.lock.lock();
                            r
                        }
                    };
                    match r {
                        Ok((id, created)) => {
                            out[start + base + j] = id;
                            status[sstart + base + j] = if created {
                                Status::Created
                            } else {
                                Status::Hit
                            };
                        }
                        Err(e) => {
                            result = Err(e);
                            break 'batches;
                        }
                    }
                    k += 1;
                }
            }
            base += m;
        }
        self.zero[kind_index(kind)].fetch_add(zeros, Relaxed);
        if result.is_err() {
            for id in out.drain(start..) {
                self.release(id);
            }
        }
        result
    }

    /// Interns `data` as leaf lines (the last one zero-padded), appending one
    /// id per line to `out`. On error nothing of this call stays referenced.
    pub(crate) fn intern_leaves(
        &self,
        data: &[u8],
        out: &mut Vec<LineId>,
        counts: &mut WriteCounts,
    ) -> Result<()> {
        let ls = self.line_size();
        let full = data.len() / ls * ls;
        let start = out.len();
        let mut status = Vec::new();
        self.intern_run(LineKind::Leaf, &data[..full], out, &mut status)?;
        for (id, st) in out[start..].iter().zip(&status) {
            counts.add(*id, *st == Status::Created);
        }
        if full < data.len() {
            let interned = with_line(ls, |buf| {
                buf[..data.len() - full].copy_from_slice(&data[full..]);
                self.intern(LineKind::Leaf, buf)
            });
            match interned {
                Ok((id, created)) => {
                    counts.add(id, created);
                    out.push(id)
                }
                Err(e) => {
                    for id in out.drain(start..) {
                        self.release(id);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Interns one level of interior lines over `children` (grouped `fanout`
    /// at a time, the last group zero-padded). Consumes the caller's reference
    /// to every child, on success and on error alike.
    pub(crate) fn intern_interior_level(
        &self,
        children: &[LineId],
        out: &mut Vec<LineId>,
    ) -> Result<()> {
        let f = self.fanout();
        let groups = children.len().div_ceil(f);
        let mut bytes = vec![0u8; groups << self.shift];
        for (b, c) in bytes.chunks_exact_mut(4).zip(children) {
            b.copy_from_slice(&c.0.to_le_bytes());
        }
        let mut status = Vec::with_capacity(groups);
        let res = self.intern_run(LineKind::Interior, &bytes, out, &mut status);
        // Groups that found an existing line, or were never done, still own
        // their child references: give them back.
        for (g, st) in status.iter().enumerate() {
            if *st != Status::Created {
                self.release_all(&children[g * f..((g + 1) * f).min(children.len())]);
            }
        }
        res
    }

    /// Interns one interior line over `children` (at most `fanout`, the rest
    /// zero). Consumes the caller's reference to every child.
    pub(crate) fn intern_interior(&self, children: &[LineId]) -> Result<LineId> {
        debug_assert!(children.len() <= self.fanout());
        let interned = with_line(self.line_size(), |buf| {
            for (b, c) in buf.chunks_exact_mut(4).zip(children) {
                b.copy_from_slice(&c.0.to_le_bytes());
            }
            self.intern(LineKind::Interior, buf)
        });
        match interned {
            Ok((id, true)) => Ok(id),
            Ok((id, false)) => {
                self.release_all(children);
                Ok(id)
            }
            Err(e) => {
                self.release_all(children);
                Err(e)
            }
        }
    }

    pub(crate) fn counters(&self) -> StoreCounters {
        let mut c = StoreCounters::default();
        for cell in self.shards.iter() {
            let s = cell.lock.lock();
            for k in 0..2 {
                c.live[k] += s.live[k];
                c.created[k] += s.created[k];
                c.hits[k] += s.hits[k];
            }
            c.index_bytes += (s.table.capacity() * 8) as u64;
            c.free_list_bytes += ((s.free.capacity() + s.pending.capacity()) * 4) as u64;
        }
        c.free_list_bytes += (self.global_free.lock().capacity() * 4) as u64;
        c.zero = [self.zero[0].load(Relaxed), self.zero[1].load(Relaxed)];
        c.high_water = self.next_fresh.load(Relaxed).min(self.slots);
        c.refcount_bytes = c.high_water * 4;
        c
    }
}
