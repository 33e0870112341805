//! The line store: arena, reference counts, the sharded dedup index and the
//! free lists.
//!
//! ```text
//!            hash(kind, content) = h (xxh3, seeded by kind; bit 5 = kind)
//!   shard = h & 63      home bucket = ((h >> 32) * buckets) >> 32      tag = h >> 8
//!   +---------+---------+-----+   each shard: a table of 64-byte buckets, 15
//!   | shard 0 | shard 1 | ... |   atomic u32 slots (tag bits | line id) + an
//!   +---------+---------+-----+   overflow count each (see `table`), published
//!    leaves 0..32, interior 32..64  for lock-free readers; Mutex { the table's
//!                                   writer side, a local free list, counters }
//! ```
//!
//! A lookup compares the tag bits and then the full content: a hash never
//! decides equality. The kind is bit 5 of the hash, so a shard's table holds
//! lines of one kind, and a content match is a kind match. Line id 0 is the
//! all-zero line and never enters the index. Metadata per live line: 1 byte
//! of count (plus an overflow entry for the rare line referenced 63 times or
//! more), and 64/15 bytes per index slot at a load of 5/6 after a batch of
//! new lines reserved its share, between 0.62 and 14/15 in a table that grows
//! insert by insert (growth is 1.5x): about 5.1-6.9 bytes per line, plus one
//! bit per slot of free bitmap.
//!
//! Reference counts live in a mapped byte array beside the arena: bit 7 is
//! the kind (set = interior), bit 6 marks an owned line (`owned`), bits 0..6
//! the count; the count 63 is an escape to an overflow table that holds the
//! rest (`counts`: moves at the escape take that table's lock, the only way
//! out of it is a decrement under that lock). The rule that makes the
//! index and the counts agree: a count goes from 1 to 0 only under the shard
//! lock, and in the same critical section the line leaves the index. A
//! lookup under the lock increments a count it sees in the index (never 0
//! there); a lookup without the lock increments with "increment unless
//! zero" (a compare-and-swap from n > 0 to n + 1), and the 1 -> 0 step is a
//! read-modify-write of the same word, so exactly one of them sees the 1. So
//! no lookup revives a line that is being freed. Other increments happen
//! without the lock, which is sound because whoever increments already holds
//! a reference. A count whose extra reaches `u32::MAX` saturates: the line is
//! never freed again (a leak, never corruption), like the kernel's
//! `refcount_t`.
//!
//! Releases are batched (`release_all`, which `release` also ends in when a
//! count reaches its last reference): counts above one are decremented without
//! a lock; the lines at their last reference are hashed together (their lines
//! and index buckets prefetched), sorted by shard, and decided under one lock
//! acquisition per shard and batch; the children of the interior lines that
//! die form the next batch. A mass release (one that has freed a good share
//! of the lines in use, or a segment drop whose length says it will) goes
//! over to a *sweep* (`counts::release_sweep`): it takes every shard lock (in
//! shard order; no other code holds two), drops the rest of its references
//! depth first, marking each line that dies in a bitmap instead of hashing it
//! and removing it from its bucket, then sweeps each shard's table once for
//! the marked ids (`Table::sweep`: the overflow counts are recomputed from
//! the survivors that may be away from home, the only lines it hashes) and
//! returns the slots to the free bitmap 64 at a time after an epoch. The
//! 1 -> 0 rule below holds unchanged (all the locks are held); lookups meanwhile
//! refuse the dying lines (count 0) and wait for the locks, so a 256 MiB drop
//! holds up other threads' misses for its duration. Interning is batched the same way (hash and
//! prefetch a batch, probe every line without the lock, then sort the misses
//! by shard, one lock per shard, and under it prefetch the candidates' counts
//! and lines before comparing).
//!
//! Slots come from the shard's own short list (fresh slots and runs taken
//! from the bitmap), then a run of freed slots taken in ascending order from
//! the free bitmap (one bit per slot below the high-water mark; a shared
//! cursor makes the shards take consecutive runs), then fresh slots taken 16
//! (later 256) at a time from a bump counter. The bitmap is scanned when it
//! holds at least a run's worth of slots, or when the fresh range is used up.
//! Handing freed slots out in ascending runs is what keeps a warm memory as
//! fast as a fresh one: after a mass release, a free list in release order
//! handed out slots scattered over the whole arena, and the next intern's
//! line and count writes each touched a different page (3745 distinct 4 KiB
//! pages per 4096 allocations, against 130 with the bitmap). A freed slot
//! reaches the bitmap only after an epoch (below). When all of those are
//! empty the store returns the slots waiting for an epoch that it can, drains
//! the other shards' lists into the bitmap and retries once before it
//! reports `CapacityExhausted`. An intern batch of at least 8 new lines,
//! when fewer freed slots wait than it needs, takes one run of fresh slots
//! for them in input order (`take_run`), so that a segment built in order
//! has its leaves adjacent in the arena (a window copies them from there).
//!
//! # Lock-free hits under epochs
//!
//! A hit takes no lock: a duplicate line costs a hash, a probe of its home
//! bucket's tags, a compare and at most one increment; in a segment build,
//! not even that (borrowed hits, below). Readers search the index and
//! compare lines without the shard lock, which needs two guarantees, both
//! given by deferred reclamation with `crossbeam-epoch` (one collector per
//! store, `sync::epoch`):
//!
//! 1. **A table a reader walks is not freed under it.** Each shard publishes
//!    its bucket array through an atomic pointer (`ShardCell::published`);
//!    growth builds the new array aside, publishes it, and only then defers
//!    the old array's release to the collector. Slots are atomic (`table`):
//!    written only by the lock holder (`Release`), read with `Acquire`, so a
//!    reader that sees an entry sees the line and count written before it; a
//!    reader racing an update may miss an entry (and falls back to the locked
//!    path), never see one that was not there.
//! 2. **A line slot a reader compares is not rewritten under it.** A freed
//!    slot (count 0, removed from the index under the lock) goes back to the
//!    free bitmap only through an epoch-deferred function (`defer_free`), and
//!    a slot is written only when allocated. So from the moment a pinned
//!    reader loads an id from the index until it unpins, that slot holds the
//!    content it had when its entry was stored. (crossbeam's contract: an
//!    object unlinked before `defer` is unreachable to threads that pin
//!    after the deferred function could run; the index entry is the link.)
//!
//! The chosen design is "defer slot reuse", not "compare, then validate": a
//! validating reader (compare, CAS the count from n > 0 to n + 1, re-check
//! the slot) would still read bytes that a new owner may be writing at the
//! same time, a data race even when the re-check rejects the result, and it
//! could not borrow (a borrowed id has no count to validate against).
//!
//! A hit is then *pin, probe, compare*, and either *increment unless zero*
//! (an owned hit: `intern`, `intern_leaves`, `intern_interior_level`) or
//! nothing (a borrowed hit: `intern_tree`, the segment build). A borrowed id
//! holds no reference; it is good while the build stays pinned (its slot
//! cannot be reused) but the line may be dying. When its parent is a hit as
//! well, the parent holds its own reference to it and the child costs
//! nothing: an interior line whose children all hit makes no round trip of
//! counts (the locked path took a reference to each child and gave it back
//! when the parent turned out to exist). When the parent is a miss, each
//! borrowed child becomes owned (increment unless zero) before the parent is
//! created; if a child is at zero (it died meanwhile), or the memory is full
//! while the build is pinned, the build drops what it owns, unpins and runs
//! again on the locked path. The root, if borrowed, is made owned last the
//! same way. A zero count met by an owned hit is a line being freed: that
//! lookup falls back to the locked path, whose rules above are unchanged.
//!
//! What it costs: a build stays pinned from its first leaf to its root, so
//! slots freed meanwhile (by any thread) come back only after it. A release
//! that frees at least 64 lines pushes its deferred slots to the collector
//! and advances the epoch at once; smaller ones leave them in the thread's
//! local bag (at most 64 deferred releases; a full bag is handed over), which
//! the thread hands over the next time it frees 64 lines at once, or when the memory is nearly full
//! (the fresh range used up, or more than 1/32 of the slots waiting), or
//! when it exits. A full memory flushes this thread's bag, advances the
//! epoch and retries, waiting up to about 0.1 s (yields, then 1 ms sleeps)
//! while other threads' pins or bags hold slots back; slots held back longer
//! than that make a nearly full memory report `CapacityExhausted` a little
//! early, never corrupt it. A process that forks while another thread is
//! pinned leaves the child's epoch stuck (that thread does not exist there):
//! the child's frees then never return, as with any epoch scheme.
//!
//! Under `cfg(loom)` there is no lock-free reader: `sync::epoch` is a stub
//! whose `defer` runs at once (sound with no such readers), every hit goes
//! through the locked path, and `tests/loom_store.rs` model-checks that path
//! (crossbeam-epoch's thread-locals and atomics are outside loom's model).
//!
//! Memories mapped by several processes (the shim's local mode, when it
//! exists) would keep the locked path: shard locks as process-shared robust
//! mutexes in the region, repaired from the counts by the next locker when a
//! process dies holding one. A per-process epoch slot in the region would
//! also work, but a process that dies pinned would stall reclamation for
//! everyone until its death is detected. Every memory today is
//! process-local (anonymous, or a file opened by one process) and takes the
//! lock-free path.
//!
//! The store's modules, by job:
//!
//! * this module: the [`Store`] itself, line access and the counters;
//! * `index`: the sharded dedup index and the free lists of line slots;
//! * `table`: one shard's table (buckets, tags, overflow counts);
//! * `counts`: reference counts (acquire, release, reclamation);
//! * `intern`: interning single lines and batches of lines;
//! * `owned`: owned lines, kept out of the index (received frames; bit 6
//!   of the count byte; not to be confused with an "owned hit" above, a
//!   lookup that takes a reference);
//! * `durability`: the persist barrier (lines flushed before a root is
//!   published);
//! * `recovery`: the walk of a file's committed DAGs and the rebuild of the
//!   derived state from it.
//!
//! Dependencies go one way: the store uses `persist` (the file layout) and
//! `shape` (segment geometry); `dag` uses the store; nothing here uses `dag`.

#[deny(unsafe_code)]
mod counts;
#[deny(unsafe_code)]
mod durability;
mod index;
mod inplace;
#[deny(unsafe_code)]
mod intern;
mod owned;
mod recovery;
mod table;

use std::sync::atomic::Ordering::*;
use std::sync::Arc;

use crossbeam_utils::CachePadded;

use crate::config::Durability;
use crate::hash::xxh3_64_with_seed;
use crate::id::{LineId, LineKind};
use crate::persist::Layout;
use crate::region::{Arena, Backing};
use crate::sync::epoch::Epochs;
use crate::sync::{count_array, AtomicPtr, AtomicU64, AtomicUsize, CountArray, Mutex};

pub(crate) use counts::{encode_count, ESC, INTERIOR_BIT};
use index::{Shard, ShardCell};
pub use inplace::{ReadCounts, ReadError};
pub(crate) use recovery::{analyze, using_reserve, Analysis, EntryState, UNREACHED};
use table::Table;

const SHARD_BITS: u32 = 6;
const SHARDS: usize = 1 << SHARD_BITS;

#[inline]
fn kind_index(kind: LineKind) -> usize {
    match kind {
        LineKind::Leaf => 0,
        LineKind::Interior => 1,
    }
}

/// Bit of a line's hash that is its kind, so that the shard (`h & 63`)
/// holds one kind only: leaves in shards 0..32, interior lines in 32..64.
const KIND_HASH_BIT: u64 = 1 << (SHARD_BITS - 1);

/// Content hash of a line; the kind seeds it so the domains are separate,
/// and is bit 5 of it, so that a shard's table holds lines of one kind and a
/// lookup that matches content has matched the kind too (the lock-free path
/// never reads the count word to check it).
#[inline(always)]
pub(crate) fn line_hash(kind: LineKind, line: &[u8]) -> u64 {
    let h = match <&[u8; 64]>::try_from(line) {
        Ok(l) => xxh3_64b(l, &XXH3_KEYS[kind_index(kind)]),
        Err(_) => xxh3_64_with_seed(line, kind_index(kind) as u64 + HASH_SEED),
    };
    (h & !KIND_HASH_BIT) | (kind_index(kind) as u64 * KIND_HASH_BIT)
}

/// The seed of a leaf's hash (an interior line's is one more).
const HASH_SEED: u64 = 0x9e37_79b9;

/// The first 64 bytes of XXH3's default secret, as little-endian words.
const XXH3_SECRET: [u64; 8] = [
    0xbe4b_a423_396c_feb8,
    0x1cad_21f7_2c81_017c,
    0xdb97_9083_e96d_d4de,
    0x1f67_b3b7_a4a4_4072,
    0x78e5_c0cc_4ee6_79cb,
    0x2172_ffcc_7dd0_5a82,
    0x8e24_43f7_7446_08b8,
    0x4c26_3a81_e690_35e0,
];

/// The secret words of a seed: `secret + seed` for the low word of each
/// 16-byte pair, `secret - seed` for the high one (XXH3's `mix16B`).
const fn xxh3_keys(seed: u64) -> [u64; 8] {
    let mut k = [0u64; 8];
    let mut i = 0;
    while i < 8 {
        k[i] = if i % 2 == 0 {
            XXH3_SECRET[i].wrapping_add(seed)
        } else {
            XXH3_SECRET[i].wrapping_sub(seed)
        };
        i += 1;
    }
    k
}

/// The keys of the two kinds' seeds.
const XXH3_KEYS: [[u64; 8]; 2] = [xxh3_keys(HASH_SEED), xxh3_keys(HASH_SEED + 1)];

/// `xxh3_64_with_seed` of exactly 64 bytes (its 17..=128-byte path, with the
/// length's branches and the seed's key words folded away): the same value,
/// about half the instructions of the general call.
#[inline(always)]
fn xxh3_64b(line: &[u8; 64], keys: &[u64; 8]) -> u64 {
    const PRIME64_1: u64 = 0x9e37_79b1_85eb_ca87;
    let w = line.as_chunks::<8>().0;
    let word = |i: usize| u64::from_le_bytes(w[i]);
    let mix = |i: usize, s: usize| {
        let p = u128::from(word(i) ^ keys[s]) * u128::from(word(i + 1) ^ keys[s + 1]);
        (p as u64) ^ ((p >> 64) as u64)
    };
    let acc = 64u64
        .wrapping_mul(PRIME64_1)
        .wrapping_add(mix(2, 4))
        .wrapping_add(mix(4, 6))
        .wrapping_add(mix(0, 0))
        .wrapping_add(mix(6, 2));
    let mut h = acc ^ (acc >> 37);
    h = h.wrapping_mul(0x1656_6791_9e37_79f9);
    h ^ (h >> 32)
}

#[cfg(test)]
mod hash_tests {
    use super::*;

    /// The 64-byte hash is XXH3's, for both kinds.
    #[test]
    fn xxh3_64b_is_xxh3() {
        let mut x = 0x1234_5678_9abc_def1u64;
        for _ in 0..2000 {
            let mut l = [0u8; 64];
            for b in l.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            for (k, keys) in XXH3_KEYS.iter().enumerate() {
                let want = xxh3_64_with_seed(&l, HASH_SEED + k as u64);
                assert_eq!(xxh3_64b(&l, keys), want);
            }
        }
    }
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
pub fn is_zero(line: &[u8]) -> bool {
    let (chunks, rest) = line.as_chunks::<8>();
    chunks.iter().fold(0u64, |a, c| a | u64::from_ne_bytes(*c)) == 0 && rest.iter().all(|b| *b == 0)
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
    /// Live owned lines (also counted in `live`), by kind.
    pub owned: [u64; 2],
    /// Owned lines made, by kind.
    pub owned_created: [u64; 2],
    /// Lines whose count is above `counts::ESC` (with an overflow entry).
    pub overflow_lines: u64,
}

pub(crate) struct Store {
    arena: Arena,
    meta: CountArray,
    shift: u32,
    slots: u64,
    next_fresh: AtomicU64,
    shards: Box<[CachePadded<ShardCell>]>,
    /// One bit per slot, set = free (beyond the shards' short local lists);
    /// taken in ascending runs from `free_cursor` (see `index`).
    /// Shared with the epoch-deferred functions that return freed slots,
    /// which may run after the store is gone.
    free_bits: Arc<Box<[AtomicU64]>>,
    /// Slots marked in `free_bits` (transiently off by a batch in flight:
    /// read it as signed).
    free_count: Arc<AtomicU64>,
    /// Freed slots waiting for an epoch before they return to `free_bits`.
    limbo: Arc<AtomicU64>,
    /// Dedup hits of the lock-free path, by kind (added once per call).
    pinned_hits: [CachePadded<AtomicU64>; 2],
    /// The store's epoch collector (see `sync::epoch`).
    epochs: Epochs,
    /// The word of `free_bits` the next scan starts at.
    free_cursor: Mutex<usize>,
    /// The lowest word of `free_bits` a slot was returned to since the last
    /// scan (`u64::MAX`: none): a scan starts there when it is behind the
    /// cursor. Lines that die soon after they were made (received frames,
    /// a stream) free slots just behind the cursor; without the hint every
    /// scan walked the whole bitmap from the cursor round to them.
    free_hint: Arc<AtomicU64>,
    zero: [AtomicU64; 2],
    /// The hash of the all-zero line, by kind (a batch tells zero lines by
    /// their hash, then checks the bytes).
    zero_hash: [u64; 2],
    durability: Durability,
    pm_latency_ns: u32,
    /// Serialises persist barriers, so that a commit never passes lines that a
    /// concurrent barrier took but has not finished flushing.
    flush_lock: Mutex<()>,
    /// Owned (unindexed) lines: see `owned`.
    owned: owned::Owned,
    /// The extras of counts at `counts::ESC` (see `counts`).
    overflow: counts::Overflow,
    /// Where the backing's regions are (a file's extras section).
    layout: Layout,
}

/// The child ids of an interior line, read straight from the arena (for the
/// single-threaded recovery walk and fsck, which hold no references).
///
/// # Safety
/// `id < arena.slots()`, and no thread writes slot `id` while the iterator
/// lives: the caller runs before the memory is shared (open), or on a mapping
/// that no other thread of this process writes (fsck).
pub(crate) unsafe fn children_of(arena: &Arena, id: u32) -> impl Iterator<Item = u32> + '_ {
    // SAFETY: the caller's contract is `Arena::line`'s.
    let line = unsafe { arena.line(id) };
    line.as_chunks::<4>()
        .0
        .iter()
        .map(|b| u32::from_le_bytes(*b))
        .filter(|c| *c != 0)
}

/// The bytes of a line, for the same single-threaded callers.
///
/// # Safety
/// As for [`children_of`]: `id < arena.slots()`, and no thread writes slot
/// `id` while the returned slice lives.
pub(crate) unsafe fn line_of(arena: &Arena, id: u32) -> &[u8] {
    // SAFETY: the caller's contract is `Arena::line`'s.
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
        let meta = count_array(backing, layout.meta_off as usize, slots as usize);
        // Index slots hold `tag * slots + id` (see `table::Buckets`).
        let epochs = Epochs::new();
        let pool = index::pool_for(slots);
        let shards = (0..SHARDS)
            .map(|i| {
                let shard = Shard {
                    kind: if i as u64 & KIND_HASH_BIT != 0 {
                        LineKind::Interior
                    } else {
                        LineKind::Leaf
                    },
                    table: Table::with_pool(slots, 1, pool.clone()),
                    free: Vec::new(),
                    live: [0; 2],
                    created: [0; 2],
                    hits: [0; 2],
                    pending: Vec::new(),
                    reserved: 0,
                };
                let cell = ShardCell {
                    hint_ptr: AtomicPtr::new(std::ptr::null_mut()),
                    hint_len: AtomicUsize::new(0),
                    published: std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()),
                    epochs: epochs.clone(),
                    lock: CachePadded::new(Mutex::new(shard)),
                };
                cell.set_hint(&cell.lock.lock().table);
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
            // Zeroed by the allocator: pages no slot reaches are never touched.
            free_bits: Arc::new(crate::sync::zeroed_u64s(slots.div_ceil(64) as usize)),
            free_count: Arc::new(AtomicU64::new(0)),
            limbo: Arc::new(AtomicU64::new(0)),
            epochs,
            pinned_hits: [
                CachePadded::new(AtomicU64::new(0)),
                CachePadded::new(AtomicU64::new(0)),
            ],
            free_cursor: Mutex::new(0),
            free_hint: Arc::new(AtomicU64::new(u64::MAX)),
            zero: [AtomicU64::new(0), AtomicU64::new(0)],
            zero_hash: with_line(config.line_size, |z| {
                [
                    line_hash(LineKind::Leaf, z),
                    line_hash(LineKind::Interior, z),
                ]
            }),
            durability: if backing.is_file() {
                config.durability
            } else {
                Durability::None
            },
            pm_latency_ns: config.pm_write_latency_ns,
            flush_lock: Mutex::new(()),
            owned: owned::Owned::new(!backing.is_file()),
            overflow: counts::Overflow::new(),
            layout: *layout,
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

    pub(crate) fn counters(&self) -> StoreCounters {
        let mut c = StoreCounters::default();
        for cell in self.shards.iter() {
            let s = cell.lock.lock();
            for k in 0..2 {
                c.live[k] += s.live[k];
                c.created[k] += s.created[k];
                c.hits[k] += s.hits[k];
            }
            c.index_bytes += s.table.bytes() as u64;
            c.free_list_bytes += ((s.free.capacity() + s.pending.capacity()) * 4) as u64;
        }
        for k in 0..2 {
            c.hits[k] += self.pinned_hits[k].load(Relaxed);
            (c.owned[k], c.owned_created[k]) = self.owned.live(k);
            c.live[k] += c.owned[k];
        }
        c.free_list_bytes += (self.owned.free.lock().capacity() * 4) as u64;
        c.zero = [self.zero[0].load(Relaxed), self.zero[1].load(Relaxed)];
        c.high_water = self.next_fresh.load(Relaxed).min(self.slots);
        // The bitmap's pages beyond the high-water mark are never touched.
        c.free_list_bytes += c.high_water.div_ceil(64) * 8;
        // One count byte per slot ever used, and the overflow table.
        c.refcount_bytes = c.high_water + self.overflow.bytes();
        c.overflow_lines = self.overflow.entries();
        c
    }
}
