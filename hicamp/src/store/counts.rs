//! Reference counts: one byte per slot, mapped beside the arena. Bit 7 is
//! the kind (set = interior), bit 6 the owned flag (`owned`), bits 0..6 the
//! count. Counts 1..[`ESC`] are exact; the count field at [`ESC`] (63) means
//! "`ESC` + extra", the extra kept in a volatile overflow table
//! ([`Overflow`], absent = 0). A line with an extra of `u32::MAX` is never
//! freed again (it leaks, never corrupts; the kernel's `refcount_t`).
//!
//! A count goes from 1 to 0 only under the line's shard lock, which is what
//! keeps the index and the counts in step; a lookup without the lock only
//! ever increments a count it sees above 0 ([`Store::inc_unless_zero`]). A
//! freed slot returns to the free bitmap after an epoch (see the store's
//! module documentation).
//!
//! The escape protocol. Below [`ESC`] a count moves by a compare-and-swap of
//! its byte, without any lock (c -> c + 1 may reach `ESC` with no entry: the
//! extra is then 0). At `ESC` every move takes the overflow shard of the id
//! (`Overflow::shard`) and re-reads the byte under it: an increment adds
//! to the extra; a decrement takes one off the extra (the entry goes at 0)
//! or, with no extra, stores `ESC - 1`. That store is the only way out of
//! `ESC`, and it happens under the overflow lock, so while a thread holds
//! that lock and sees `ESC` the byte stays at `ESC` (every other mover of an
//! `ESC` byte waits for the lock); a thread that finds the byte below `ESC`
//! under the lock lets go and retries its compare-and-swap. So the count
//! `byte + extra` is always exact, a count of 1 (the only one that can go to
//! 0) has no extra, and the 1 -> 0 rule is unchanged. The overflow lock is
//! a leaf: it is taken under a shard lock (a hit, a release) but nothing is
//! ever taken under it.
//!
//! For a memory file the count bytes are the file's `meta` section. Counts
//! are derived state, recounted from the committed roots on every open
//! (`recovery`), which rebuilds the extras with them (so a crash loses
//! nothing); a clean close also writes the extras to the file's extras
//! section (`persist::write_extras`), so that `fsck` checks every count of
//! a cleanly closed file exactly (byte + extra).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::Ordering::{self, *};

use crossbeam_utils::CachePadded;

use super::{kind_index, line_hash, Store, SHARDS};
use crate::id::{LineId, LineKind};
use crate::region::prefetch_ptr;
use crate::sync::{epoch, AtomicU8, Mutex};

/// Kind bit of a reference-count byte (set = interior line). The one
/// definition: the file format (`persist`) and `fsck` read the same bytes.
pub(crate) const INTERIOR_BIT: u8 = 1 << 7;
/// Owned bit of a reference-count byte: a line kept out of the index (see
/// `owned`). Only volatile memories hold owned lines, so a file's count
/// bytes never carry it.
pub(crate) const OWNED_BIT: u8 = 1 << 6;
pub(crate) const COUNT_MASK: u8 = OWNED_BIT - 1;
/// The count field's escape: `ESC` means `ESC` + the line's extra in the
/// overflow table. (Under loom: 2, so that two threads cross it.)
#[cfg(not(loom))]
pub(crate) const ESC: u8 = COUNT_MASK;
#[cfg(loom)]
pub(crate) const ESC: u8 = 2;
/// An extra at this value never moves again: the line is never freed.
const EXTRA_SATURATED: u32 = u32::MAX;
/// A release that frees at least this many lines pushes its deferred slots
/// to the epoch collector and advances the epoch (so that a large release's
/// slots come back at once); smaller ones leave them in the thread's bag.
const FLUSH_AFTER: usize = 64;
/// Lines whose last reference goes, freed together (hashed, sorted by shard,
/// one lock acquisition per shard).
const RELEASE_BATCH: usize = 2048;
/// How far ahead of its use a line or count byte is prefetched.
const PREFETCH_AHEAD: usize = 8;
/// How far ahead in the queue of a sweeping release an interior line is
/// prefetched before it is expanded ...
const LINE_AHEAD: usize = 8;
/// ... and its children's count bytes.
const COUNTS_AHEAD: usize = 4;
/// A release switches to the sweep (`release_sweep`) once it has freed this
/// many lines one batch at a time, and at least 1/[`SWEEP_RATIO`] of the
/// lines in use. (Under loom: after the first batch, so that the model
/// checks the sweep against a racing lookup.)
#[cfg(not(any(loom, test)))]
const SWEEP_AFTER: usize = 4096;
/// (Unit tests: small, so that small memories take the sweep often.)
#[cfg(all(test, not(loom)))]
const SWEEP_AFTER: usize = 16;
#[cfg(loom)]
const SWEEP_AFTER: usize = 1;
#[cfg(not(loom))]
const SWEEP_RATIO: u64 = 16;
#[cfg(loom)]
const SWEEP_RATIO: u64 = 1 << 20;

#[inline]
pub(super) fn kind_bit(kind: LineKind) -> u8 {
    match kind {
        LineKind::Leaf => 0,
        LineKind::Interior => INTERIOR_BIT,
    }
}

/// The byte's count field for a count: exact below [`ESC`], `ESC` above
/// (what a file's clean close leaves, and what `fsck` expects).
pub(crate) fn encode_count(count: u64) -> u8 {
    count.min(u64::from(ESC)) as u8
}

/// What a move of a count byte does next ([`Store::step_count`]).
enum Step<T> {
    /// Finished, with this result.
    Done(T),
    /// Read the byte again (it moved under the overflow table's lock).
    Reload,
    /// Swap the byte read for this one; finished with the result if it was
    /// still that byte.
    Cas(u8, T),
}

/// Hashes a line id for the overflow table (one multiply: ids are distinct
/// integers, and the table uses the high bits for its tags).
#[derive(Default, Clone, Copy)]
pub(super) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, i: u32) {
        let x = u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = x ^ (x >> 29);
    }
}

type ExtraMap = HashMap<u32, u32, BuildHasherDefault<IdHasher>>;

/// Shards of the overflow table (by the low bits of the id).
const OVERFLOW_SHARDS: usize = 64;

/// The extras of the counts at [`ESC`]: line id -> extra (absent = 0),
/// sharded by id, each shard a mutex (the escape protocol in the module
/// documentation). Volatile: a file's extras are recounted on open.
pub(crate) struct Overflow {
    shards: Box<[CachePadded<Mutex<ExtraMap>>]>,
}

impl std::fmt::Debug for Overflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overflow").finish_non_exhaustive()
    }
}

impl Overflow {
    pub(crate) fn new() -> Overflow {
        Overflow {
            shards: (0..OVERFLOW_SHARDS)
                .map(|_| CachePadded::new(Mutex::new(ExtraMap::default())))
                .collect(),
        }
    }

    #[inline]
    fn shard(&self, id: u32) -> &Mutex<ExtraMap> {
        &self.shards[id as usize & (OVERFLOW_SHARDS - 1)]
    }

    /// Bytes the table takes (entries of 8 bytes and a control byte each, at
    /// the tables' allocated capacity; about, as `HashMap` does not say).
    pub(crate) fn bytes(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| {
                let cap = s.lock().capacity() as u64;
                if cap == 0 {
                    0
                } else {
                    // hashbrown: buckets = next power of two of 8/7 capacity.
                    let buckets = (cap * 8 / 7).next_power_of_two();
                    buckets * 9 + 16
                }
            })
            .sum()
    }

    /// Lines with an extra.
    pub(crate) fn entries(&self) -> u64 {
        self.shards.iter().map(|s| s.lock().len() as u64).sum()
    }

    /// Every `(id, extra)`, in ascending ids (a consistent snapshot when
    /// no count moves meanwhile: a clean close).
    pub(crate) fn pairs(&self) -> Vec<(u32, u32)> {
        let mut v: Vec<(u32, u32)> = self
            .shards
            .iter()
            .flat_map(|s| s.lock().iter().map(|(&k, &e)| (k, e)).collect::<Vec<_>>())
            .collect();
        v.sort_unstable();
        v
    }
}

impl Store {
    #[inline(always)]
    fn count_byte(&self, id: u32) -> &AtomicU8 {
        &self.meta.as_slice()[id as usize]
    }

    /// Reference count of a line (0 for the zero line and free slots), up
    /// to `u32::MAX`.
    pub(crate) fn refcount(&self, id: LineId) -> u32 {
        u32::try_from(self.refcount_exact(id.0)).unwrap_or(u32::MAX)
    }

    /// The exact count: the byte's, plus the extra at [`ESC`].
    pub(crate) fn refcount_exact(&self, id: u32) -> u64 {
        let m = self.count_byte(id);
        let c = m.load(Relaxed) & COUNT_MASK;
        if c < ESC {
            return u64::from(c);
        }
        let t = self.overflow.shard(id).lock();
        let c = m.load(Relaxed) & COUNT_MASK;
        if c < ESC {
            return u64::from(c);
        }
        u64::from(c) + u64::from(t.get(&id).copied().unwrap_or(0))
    }

    /// Sets the count of a line nobody else can reach yet, in a store whose
    /// overflow table has no entry for it (a rebuild before the memory is
    /// shared): its byte, and its extra above [`ESC`] (only those take the
    /// overflow lock).
    pub(super) fn set_count(&self, id: u32, flags: u8, count: u64) {
        let c = encode_count(count);
        self.count_byte(id).store(flags | c, Relaxed);
        if count > u64::from(ESC) {
            let extra = (count - u64::from(ESC)).min(u64::from(EXTRA_SATURATED)) as u32;
            self.overflow.shard(id).lock().insert(id, extra);
        }
    }

    /// Kind of a live line.
    pub(crate) fn kind(&self, id: LineId) -> LineKind {
        if self.count_byte(id.0).load(Relaxed) & INTERIOR_BIT != 0 {
            LineKind::Interior
        } else {
            LineKind::Leaf
        }
    }

    /// Takes one off a count at [`ESC`] (never its last: an escaped count is
    /// above 1): off the extra, or, with none, the byte down to `ESC - 1`
    /// (the only move out of `ESC`, always under this lock). False when the
    /// byte has left `ESC` meanwhile (the caller retries).
    #[cold]
    fn overflow_dec(&self, id: u32) -> bool {
        let mut t = self.overflow.shard(id).lock();
        let m = self.count_byte(id);
        let c = m.load(Relaxed);
        if c & COUNT_MASK != ESC {
            return false;
        }
        match t.get_mut(&id) {
            Some(e) if *e == EXTRA_SATURATED => {}
            Some(e) => {
                *e -= 1;
                if *e == 0 {
                    t.remove(&id);
                }
            }
            // Release, as every decrement: this thread's reads of the line
            // come before a later 1 -> 0 step (an acquire read-modify-write
            // of the same byte).
            None => m.store(c - 1, Release),
        }
        true
    }

    /// Adds one to a count the caller knows is above 0 (it holds a
    /// reference, or the line is in the index and the shard lock is held).
    #[inline(always)]
    pub(super) fn increment(&self, id: u32) {
        self.step_count(id, Relaxed, |c| {
            debug_assert!(c & COUNT_MASK != 0, "increment of a free line L{id}");
            if c & COUNT_MASK >= ESC {
                self.escaped(self.overflow_add(id, c, 1), ())
            } else {
                Step::Cas(c + 1, ())
            }
        })
    }

    /// The one loop every move of a count byte runs: `decide` sees the byte
    /// and says what to do ([`Step`]); a `Cas` that loses a race asks again
    /// with the byte it lost to, with `order` on success.
    #[inline(always)]
    fn step_count<T>(&self, id: u32, order: Ordering, mut decide: impl FnMut(u8) -> Step<T>) -> T {
        let m = self.count_byte(id);
        let mut c = m.load(Relaxed);
        loop {
            match decide(c) {
                Step::Done(t) => return t,
                Step::Reload => c = m.load(Relaxed),
                Step::Cas(next, t) => match m.compare_exchange_weak(c, next, order, Relaxed) {
                    Ok(_) => return t,
                    Err(now) => c = now,
                },
            }
        }
    }

    /// The step after a move in the overflow table (the byte is at `ESC`):
    /// done with `t` when it moved there, else (the byte left `ESC` under the
    /// table's lock meanwhile) read the byte again.
    #[inline(always)]
    fn escaped<T>(&self, moved: bool, t: T) -> Step<T> {
        if moved {
            Step::Done(t)
        } else {
            Step::Reload
        }
    }

    /// Takes `k` more references to a line the caller already holds: one
    /// compare-and-swap while the count stays within the byte, else one
    /// trip to the overflow table ([`Store::overflow_add`]).
    pub(crate) fn acquire_many(&self, id: LineId, k: u64) {
        if id.is_zero() || k == 0 {
            return;
        }
        self.step_count(id.0, Relaxed, |c| {
            let n = u64::from(c & COUNT_MASK);
            debug_assert!(n != 0, "acquire_many of a free line {id:?}");
            if n + k <= u64::from(ESC) {
                // Reaching ESC with no extra is what `increment` does too.
                Step::Cas(c + k as u8, ())
            } else {
                self.escaped(self.overflow_add(id.0, c, k), ())
            }
        })
    }

    /// Adds `k` to a count whose byte was `c` and which `k` takes past
    /// [`ESC`] (every increment of an escaped count, `k` = 1 included):
    /// under the overflow lock, a byte below `ESC` moves up to `ESC` (the
    /// rest goes to the extra) and a byte at `ESC` adds `k` to its extra.
    /// False when the byte is no longer `c` (the caller reads it again).
    /// Moving up to `ESC` under the lock keeps the protocol: a reader that
    /// sees `ESC` takes the lock and so sees the extra too.
    #[cold]
    fn overflow_add(&self, id: u32, c: u8, k: u64) -> bool {
        let mut t = self.overflow.shard(id).lock();
        let m = self.count_byte(id);
        let n = u64::from(c & COUNT_MASK);
        let add = if n >= u64::from(ESC) {
            if m.load(Relaxed) != c {
                return false;
            }
            k
        } else {
            let up = (c & !COUNT_MASK) | ESC;
            if m.compare_exchange(c, up, Relaxed, Relaxed).is_err() {
                return false;
            }
            n + k - u64::from(ESC)
        };
        let e = t.entry(id).or_insert(0);
        *e = u32::try_from(u64::from(*e).saturating_add(add)).unwrap_or(EXTRA_SATURATED);
        true
    }

    /// Takes one more reference to a line the caller already holds.
    #[inline]
    pub(crate) fn acquire(&self, id: LineId) {
        if id.is_zero() {
            return;
        }
        self.increment(id.0);
    }

    /// Drops one reference; a line whose count reaches zero releases its
    /// children and its slot (through the batched path of
    /// [`Store::release_all`]).
    pub(crate) fn release(&self, id: LineId) {
        self.release_sized(id, 0);
    }

    /// [`Store::release`] of the root of a DAG of about `lines` lines (a
    /// segment's length in lines): when the root dies and the DAG is a good
    /// share of the memory, the release goes over to the sweep
    /// (`release_sweep`) as soon as a 256th of it has died, rather
    /// than after a sixteenth of the memory.
    pub(crate) fn release_sized(&self, id: LineId, lines: u64) {
        if !id.is_zero() && self.dec_unless_last(id.0) {
            if self.is_owned(id) {
                self.release_owned(&[id.0]);
            } else {
                self.release_last(vec![id.0], lines);
            }
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
        let mut owned = Vec::new();
        for (j, id) in ids.iter().enumerate() {
            if let Some(next) = ids.get(j + PREFETCH_AHEAD) {
                prefetch_ptr(meta.as_ptr().wrapping_add(next.0 as usize));
            }
            if !id.is_zero() && self.dec_unless_last(id.0) {
                if self.is_owned(*id) {
                    owned.push(id.0);
                } else {
                    last.push(id.0);
                }
            }
        }
        if !owned.is_empty() {
            self.release_owned(&owned);
        }
        if !last.is_empty() {
            self.release_last(last, 0);
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
        self.step_count(id, Relaxed, |c| match c & COUNT_MASK {
            0 => Step::Done(false),
            // Above 1: the line cannot die while its byte is at `ESC`.
            count if count >= ESC => self.escaped(self.overflow_add(id, c, 1), true),
            _ => Step::Cas(c + 1, true),
        })
    }

    /// Drops one reference unless it is the last; true when it is the last
    /// (the count is left at 1, the caller finishes under the shard lock).
    #[inline]
    pub(super) fn dec_unless_last(&self, id: u32) -> bool {
        self.step_count(id, Release, |c| {
            let count = c & COUNT_MASK;
            debug_assert!(count != 0, "release of a free line L{id}");
            match count {
                0 => Step::Done(false),
                1 => Step::Done(true),
                _ if count >= ESC => self.escaped(self.overflow_dec(id), false),
                _ => Step::Cas(c - 1, false),
            }
        })
    }

    /// Drops one reference, under the line's shard lock (or all of them);
    /// `Some(the byte before)` when it was the last: the byte is then 0 (the
    /// 1 -> 0 step, acquire-release: this thread's reads of the line come
    /// before a later releaser's 1 -> 0, and the one that frees sees every
    /// earlier releaser's reads done).
    #[inline]
    fn dec_locked(&self, id: u32) -> Option<u8> {
        self.step_count(id, AcqRel, |c| {
            let count = c & COUNT_MASK;
            debug_assert!(count != 0, "release of a free line L{id}");
            match count {
                0 => Step::Done(None),
                _ if count >= ESC => self.escaped(self.overflow_dec(id), None),
                1 => Step::Cas(0, Some(c)),
                _ => Step::Cas(c - 1, None),
            }
        })
    }

    /// Finishes the release of `last`: lines whose count this thread saw at 1
    /// while owning that one reference. Works in batches of [`RELEASE_BATCH`]
    /// taken off the end of the pending list (so the list stays short: about
    /// one batch per DAG level); the children of every freed interior line
    /// join the pending list and lose their reference in a later batch.
    fn release_last(&self, last: Vec<u32>, expect: u64) {
        let meta = self.meta.as_slice();
        // `pending`: references still to drop; `cand`: lines at their last
        // reference, to decide under the shard lock.
        let mut pending: Vec<u32> = Vec::new();
        let mut cand = last;
        let mut hashes: Vec<u64> = Vec::new();
        let mut order: Vec<u32> = Vec::new();
        let guard = self.epochs.pin();
        let mut freed = Vec::new();
        let mut swept = 0;
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
                // An indexed line never has an owned child (see `owned`);
                // should one turn up, it is freed without the index.
                if self.owned.used.load(Relaxed) {
                    let owned: Vec<u32> = cand
                        .iter()
                        .copied()
                        .filter(|&c| self.is_owned(LineId(c)))
                        .collect();
                    if !owned.is_empty() {
                        debug_assert!(false, "an indexed line has owned children");
                        cand.retain(|&c| !self.is_owned(LineId(c)));
                        self.release_owned(&owned);
                    }
                }
                continue;
            }
            for chunk in cand.chunks(RELEASE_BATCH) {
                self.free_batch(chunk, &mut pending, &mut hashes, &mut order, &mut freed);
            }
            cand.clear();
            if !pending.is_empty() && self.sweep_worthwhile(freed.len() as u64, expect) {
                // A mass release: the rest goes without hashing (see
                // `release_sweep`); `pending` holds only references to drop.
                swept = self.release_sweep(std::mem::take(&mut pending), &guard);
                break;
            }
        }
        // One deferred function for the whole release (a collection step
        // takes a bounded number of them).
        let freed_n = freed.len() + swept;
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
                let Some(prev) = self.dec_locked(id) else {
                    continue; // a lookup took a reference meanwhile
                };
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
                freed.push(id);
            }
        }
    }

    /// True when a release that has freed `freed` lines so far, of a DAG
    /// of about `expect` lines (0: unknown), should free the rest by
    /// sweeping: enough of it has died (a 256th of `expect`, at least
    /// [`SWEEP_AFTER`] lines), and it is a good share (1/[`SWEEP_RATIO`]) of
    /// the lines in use. A sweep reads every shard's whole table (about 20-40
    /// instructions per entry) and a dying line then costs about 70, against
    /// about 330 freed one batch at a time. Without a size (`expect` 0) a
    /// sweep that finds little more to free costs at most about twice what
    /// the release had cost; with one, the switch comes on the evidence of
    /// a 256th of the DAG dying, and a DAG whose rest is shared would make
    /// that sweep mostly wasted (a known trade-off).
    fn sweep_worthwhile(&self, freed: u64, expect: u64) -> bool {
        let expect = expect.max(freed);
        if freed < (SWEEP_AFTER as u64).max(expect / 256) {
            return false;
        }
        let high = self.next_fresh.load(Relaxed).min(self.slots) as i64;
        // Slots that hold no line: free in the bitmap or waiting for an epoch
        // (the shards' short lists are left out: this is an estimate).
        let idle = self.free_count.load(Relaxed) as i64 + self.limbo.load(Relaxed) as i64;
        let in_use = (high - idle).max(0) as u64;
        expect * SWEEP_RATIO >= in_use
    }

    /// Drops the references of `pending` and frees every line that dies
    /// (and its descendants), holding every shard lock for the walk,
    /// without hashing a dying line: it is marked in a bitmap, and each
    /// shard's table is then swept once for the marked ids
    /// ([`Table::sweep`](super::table::Table::sweep)) and its lock let go.
    /// Returns the lines freed. A dying line's slot (count 0) is read until
    /// the end: it returns to the free bitmap only through the epoch-deferred
    /// function of the caller's pin, so nothing rewrites it meanwhile.
    ///
    /// The rule of the module holds: a count goes from 1 to 0 only under its
    /// shard's lock (here, all of them), and the line leaves the index in the
    /// same critical section. Meanwhile a lookup without the lock may find a
    /// dying line (count 0) and refuses it ("increment unless zero"), then
    /// waits for the lock; lookups with the lock wait. The locks are taken in
    /// shard order, and no other code holds two shard locks, so no deadlock.
    /// The freed slots return to the free bitmap after an epoch, a word of
    /// 64 slots at a time.
    fn release_sweep(&self, pending: Vec<u32>, guard: &epoch::Guard) -> usize {
        #[cfg(all(test, not(loom)))]
        tests::SWEEPS.with(|c| c.set(c.get() + 1));
        let meta = self.meta.as_slice();
        let shards: Vec<_> = self.shards.iter().map(|c| c.lock.lock()).collect();
        // Zeroed by the allocator: only the pages of dying ids are touched.
        let mut dead = vec![0u64; self.slots.div_ceil(64) as usize];
        let (mut lo, mut hi) = (usize::MAX, 0usize);
        let mut mark = |id: u32| {
            let w = (id >> 6) as usize;
            dead[w] |= 1 << (id & 63);
            lo = lo.min(w);
            hi = hi.max(w);
        };
        // Drops one reference; `Some(count byte before)` when the line died.
        let drop_ref = |id: u32| -> Option<u8> { self.dec_locked(id) };
        // Breadth first: `expand` is a queue of dying interior lines whose
        // children are still to release (`head` is its front); a child loses
        // its reference at once, and only the interior ones that die are
        // queued (a leaf's line is never read). A queue, not a stack, so
        // that the lines next in turn are known well ahead: the line
        // [`LINE_AHEAD`] places on is prefetched, and the count words of the
        // children of the one [`COUNTS_AHEAD`] places on (its line came in
        // meanwhile). A segment's children have ids scattered over the
        // shards' slot runs, so their count words miss the cache.
        let mut expand: Vec<u32> = Vec::new();
        // Indexed lines that died, by kind, and owned ones (not in any
        // table: their slots return with the rest, their counts apart).
        let mut died = [0u64; 2];
        let mut owned_died = [0u64; 2];
        let mut release = |id: u32, expand: &mut Vec<u32>| {
            if let Some(prev) = drop_ref(id) {
                let k = usize::from(prev & INTERIOR_BIT != 0);
                if prev & OWNED_BIT != 0 {
                    owned_died[k] += 1;
                } else {
                    died[k] += 1;
                }
                mark(id);
                if k == 1 {
                    expand.push(id);
                }
            }
        };
        for id in pending {
            release(id, &mut expand);
        }
        let mut head = 0;
        while head < expand.len() {
            let id = expand[head];
            head += 1;
            if let Some(&next) = expand.get(head + LINE_AHEAD) {
                prefetch_ptr(self.line(LineId(next)).as_ptr());
            }
            if let Some(&next) = expand.get(head + COUNTS_AHEAD) {
                for b in self.line(LineId(next)).as_chunks::<4>().0 {
                    prefetch_ptr(meta.as_ptr().wrapping_add(u32::from_le_bytes(*b) as usize));
                }
            }
            for b in self.line(LineId(id)).as_chunks::<4>().0 {
                let c = u32::from_le_bytes(*b);
                if c != 0 {
                    release(c, &mut expand);
                }
            }
            // Keep the queue to what is still to come.
            if head >= 1 << 16 && head * 2 >= expand.len() {
                expand.drain(..head);
                head = 0;
            }
        }
        for (k, d) in owned_died.iter().enumerate() {
            if *d > 0 {
                self.owned.released[k].fetch_add(*d, Release);
            }
        }
        let n = died[0] + died[1] + owned_died[0] + owned_died[1];
        if n == 0 {
            return 0;
        }
        let mut removed = [0u64; 2];
        let marked = &dead[lo..=hi];
        let is_dead = |id: u32| {
            marked
                .get(((id >> 6) as usize).wrapping_sub(lo))
                .is_some_and(|w| w >> (id & 63) & 1 != 0)
        };
        // Each shard is unlocked as soon as it is swept.
        for mut shard in shards {
            let kind = shard.kind;
            let r = shard
                .table
                .sweep(is_dead, |id| line_hash(kind, self.line(LineId(id))))
                as u64;
            shard.live[kind_index(kind)] -= r;
            removed[kind_index(kind)] += r;
        }
        // Lines kept out of the index (equal to an indexed one, from a
        // non-canonical file) died too: they count in some shard of their
        // kind (rare: the shards are locked again one at a time).
        for k in 0..2 {
            let mut left = died[k].saturating_sub(removed[k]);
            for cell in self.shards.iter() {
                if left == 0 {
                    break;
                }
                let mut shard = cell.lock.lock();
                let t = left.min(shard.live[k]);
                shard.live[k] -= t;
                left -= t;
            }
        }
        self.defer_free_bits(dead, lo..=hi, n, guard);
        n as usize
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use crate::{Config, Memory, Segment};
    use proptest::prelude::*;
    use std::cell::Cell;
    use std::collections::HashMap;

    thread_local! {
        /// Sweeps run by this thread (`Store::release_sweep`).
        pub(super) static SWEEPS: Cell<usize> = const { Cell::new(0) };
    }

    fn sweeps() -> usize {
        SWEEPS.with(Cell::get)
    }

    fn memory(lines: u64) -> Memory {
        Memory::new(Config {
            line_size: 64,
            capacity_lines: lines,
            map_capacity: 4,
            ..Config::default()
        })
        .unwrap()
    }

    /// Line `k` of a pool of distinct non-zero lines.
    fn pool_line(k: u32) -> [u8; 64] {
        let mut l = [0u8; 64];
        l[..4].copy_from_slice(&(k + 1).to_le_bytes());
        l[8..16].copy_from_slice(
            &u64::from(k)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .to_le_bytes(),
        );
        l
    }

    fn content(start: u32, len: u32, stride: u32, pool: u32) -> Vec<u8> {
        (0..len)
            .flat_map(|i| pool_line((start + i * stride) % pool))
            .collect()
    }

    /// A mass release takes the sweep; the lines it shares with a segment
    /// that stays keep their counts and index entries (interning that
    /// segment again creates nothing), and the slots come back.
    #[test]
    fn a_mass_release_sweeps_and_keeps_the_shared_lines() {
        let mem = memory(1 << 16);
        let a_data = content(0, 8192, 1, 1 << 20);
        let b_data = content(4096, 8192, 1, 1 << 20);
        let a = mem.segment(&a_data).unwrap();
        let b = mem.segment(&b_data).unwrap();
        let live = mem.live_lines();
        let before = sweeps();
        drop(a);
        assert!(sweeps() > before, "the drop did not sweep");
        let left = mem.live_lines();
        assert!(left < live && left > 8192, "{left} of {live} lines left");
        assert_eq!(b.to_vec(), b_data);
        let b2 = mem.segment(&b_data).unwrap();
        assert!(b2 == b, "the survivor is not found again");
        assert_eq!(mem.live_lines(), left, "a survivor left the index");
        // Every freed slot comes back: fill and free the memory twice over.
        drop((b, b2));
        assert_eq!(mem.live_lines(), 0);
        for round in 0..2 {
            let d = content(round * 100_000, 60_000, 1, 1 << 20);
            let s = mem.segment(&d).unwrap();
            assert_eq!(s.to_vec(), d);
        }
        assert_eq!(mem.live_lines(), 0);
    }

    /// Sweeping releases in one thread race lookups and drops of shared
    /// lines in another (lock-free hits refuse a dying line and wait for
    /// the locks); every read is right and nothing is left.
    #[test]
    fn sweeps_race_lookups_of_shared_lines() {
        let mem = memory(1 << 15);
        let big = content(0, 6000, 1, 1 << 20);
        let small = content(3000, 600, 5, 1 << 20);
        std::thread::scope(|s| {
            let m = &mem;
            let t = s.spawn(move || {
                for _ in 0..40 {
                    let x = m.segment(&big).unwrap();
                    assert_eq!(x.len(), big.len() as u64);
                    drop(x);
                }
                sweeps()
            });
            for _ in 0..400 {
                let y = m.segment(&small).unwrap();
                assert_eq!(y.to_vec(), small, "read a recycled line");
            }
            assert!(t.join().unwrap() > 0, "no sweep ran");
        });
        assert_eq!(mem.live_lines(), 0);
    }

    /// A file memory in every durability mode: sweeping releases of
    /// unbound segments that share lines with a bound one, then fsck finds
    /// the file consistent and a reopen reads the bound segment back.
    #[test]
    fn sweeps_leave_a_memory_file_consistent() {
        use crate::Durability;
        for mode in [Durability::None, Durability::CacheLine, Durability::Msync] {
            let d = tempfile::tempdir().unwrap();
            let p = d.path().join("mem.hicamp");
            let keep = content(0, 3000, 1, 1 << 20);
            {
                let m = Memory::create(
                    &p,
                    Config {
                        line_size: 64,
                        capacity_lines: 1 << 15,
                        map_capacity: 64,
                        durability: mode,
                        pm_write_latency_ns: 0,
                    },
                )
                .unwrap();
                m.bind("keep", m.segment(&keep).unwrap()).unwrap();
                let before = sweeps();
                for round in 0..3 {
                    let big = content(1500 + round * 10_000, 6000, 1, 1 << 20);
                    m.bind("tmp", m.segment(&big).unwrap()).unwrap();
                    assert!(m.unbind("tmp").unwrap());
                    drop(m.segment(&big).unwrap());
                }
                assert!(sweeps() > before, "{mode:?}: no sweep ran");
            }
            let r = crate::fsck(&p).unwrap();
            assert!(r.is_consistent(), "{mode:?}: {:?}", r.problems);
            let m = Memory::open(&p).unwrap();
            assert_eq!(m.get_named("keep").unwrap().unwrap().to_vec(), keep);
        }
    }

    /// A count far past the escape has one overflow entry, which goes when
    /// the count comes back below it; the counts of a line at the escape
    /// with no extra (63 exactly) step down through the byte.
    #[test]
    fn the_overflow_entry_lives_only_above_the_escape() {
        let mem = memory(1 << 10);
        let s = mem.segment(&pool_line(1)).unwrap();
        let id = s.root();
        let store = &mem.inner.store;
        let esc = usize::from(super::ESC);
        let mut copies: Vec<Segment> = (1..esc).map(|_| s.clone()).collect();
        assert_eq!(store.refcount(id), u32::from(super::ESC));
        assert_eq!(store.counters().overflow_lines, 0, "63 needs no entry");
        copies.extend((0..500).map(|_| s.clone()));
        assert_eq!(store.counters().overflow_lines, 1);
        assert_eq!(store.overflow.pairs(), vec![(id.0, 500)]);
        copies.truncate(esc - 1);
        assert_eq!(store.counters().overflow_lines, 0, "the entry stayed");
        assert_eq!(store.refcount(id), u32::from(super::ESC));
        copies.pop();
        assert_eq!(store.refcount(id), u32::from(super::ESC) - 1);
        drop(copies);
        assert_eq!(store.refcount(id), 1);
        drop(s);
        assert_eq!(mem.live_lines(), 0);
        // Metadata: a byte per slot used, and the table's bytes.
        let c = store.counters();
        assert!(c.refcount_bytes >= c.high_water, "{c:?}");
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Key, first pool line, lines, stride.
        Insert(u8, u32, u32, u32),
        Remove(u8),
        Lookup(u8),
        Snapshot(u8),
        DropSnapshots,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..6, 0u32..400, 1u32..400, 1u32..4)
                .prop_map(|(k, a, n, s)| Op::Insert(k, a, n, s)),
            3 => (0u8..6).prop_map(Op::Remove),
            3 => (0u8..6).prop_map(Op::Lookup),
            1 => (0u8..6).prop_map(Op::Snapshot),
            1 => Just(Op::DropSnapshots),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Segments against a HashMap model, over random interleavings of
        /// inserts, lookups and removes of overlapping content (lines
        /// shared between keys): small thresholds make most releases
        /// sweep. A lookup re-interns a key's content: it must find every
        /// line (the same root, no line created), so a survivor that a
        /// sweep dropped from the index shows.
        #[test]
        fn segments_match_model_across_sweeps(ops in proptest::collection::vec(op(), 1..60)) {
            let mem = memory(1 << 13);
            let mut model: HashMap<u8, (Vec<u8>, Segment)> = HashMap::new();
            let mut snaps: Vec<(Vec<u8>, Segment)> = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(k, a, n, s) => {
                        let d = content(a, n, s, 700);
                        let seg = mem.segment(&d).unwrap();
                        model.insert(k, (d, seg));
                    }
                    Op::Remove(k) => {
                        model.remove(&k);
                    }
                    Op::Lookup(k) => {
                        if let Some((d, seg)) = model.get(&k) {
                            let live = mem.live_lines();
                            let again = mem.segment(d).unwrap();
                            prop_assert!(&again == seg, "content not found again");
                            prop_assert_eq!(mem.live_lines(), live);
                        }
                    }
                    Op::Snapshot(k) => {
                        if let Some((d, seg)) = model.get(&k) {
                            snaps.push((d.clone(), seg.clone()));
                        }
                    }
                    Op::DropSnapshots => snaps.clear(),
                }
                for (d, seg) in model.values().chain(snaps.iter()) {
                    prop_assert_eq!(&seg.to_vec(), d);
                }
            }
            // Every live line is in the index: re-interning all creates none.
            let live = mem.live_lines();
            let again: Vec<Segment> = model.values().map(|(d, _)| mem.segment(d).unwrap()).collect();
            prop_assert_eq!(mem.live_lines(), live);
            drop(again);
            drop(snaps);
            drop(model);
            prop_assert_eq!(mem.live_lines(), 0);
        }
    }
}
