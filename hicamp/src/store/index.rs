//! The sharded dedup index (one [`Table`] per shard: written under the
//! shard lock, read by pinned lock-free lookups through the published bucket
//! array) and the free lists of line slots, which freed slots reach only
//! after an epoch (see the store's module documentation).

use std::sync::atomic::Ordering::*;

use super::counts::{kind_bit, INTERIOR_BIT, OWNED_BIT};
use super::table::{Bucket, Buckets, Table};
use super::{kind_index, line_hash, Store, SHARDS};
use crate::config::Durability;
use crate::id::{LineId, LineKind};
use crate::region::{prefetch_ptr, HugePool};
use crossbeam_utils::CachePadded;

use crate::sync::{epoch, AtomicPtr, AtomicUsize, Mutex};

const FRESH_CHUNK: u64 = 16;
/// Shortest batch of misses that takes its slots as one run (`take_run`).
const RUN_MIN: usize = 8;
/// How far ahead of its use a line is prefetched when a table grows.
const PREFETCH_AHEAD: usize = 8;

pub(super) struct Shard {
    /// The kind of line this shard indexes (bit 5 of the hash picks it).
    pub(super) kind: LineKind,
    /// The dedup table (see `table`).
    pub(super) table: Table,
    pub(super) free: Vec<u32>,
    pub(super) live: [u64; 2],
    pub(super) created: [u64; 2],
    pub(super) hits: [u64; 2],
    /// Lines created since the last persist barrier (durable memories only).
    pub(super) pending: Vec<u32>,
    /// The entries the last reservation that grew the table made room for
    /// (`Store::reserve`): what of it the table does not hold yet is
    /// another run's, still coming.
    pub(super) reserved: usize,
}

pub(super) struct ShardCell {
    /// Table base and bucket count for prefetching without the lock: only
    /// ever used as a hint, so a stale value is harmless. They sit on their
    /// own cache line, apart from the lock: every hashed line reads them,
    /// and a lock word beside them would bounce that line between threads.
    pub(super) hint_ptr: AtomicPtr<Bucket>,
    pub(super) hint_len: AtomicUsize,
    /// The table's current bucket array, for lock-free readers (pinned;
    /// see [`Store::find_pinned`]). Replaced only under the lock, by
    /// [`ShardCell::set_hint`], which defers the release of the old array.
    pub(super) published: std::sync::atomic::AtomicPtr<Buckets>,
    /// The store's collector (for the arrays `set_hint` retires).
    pub(super) epochs: epoch::Epochs,
    pub(super) lock: CachePadded<Mutex<Shard>>,
}

impl ShardCell {
    /// Publishes the table's current bucket array (for lock-free readers,
    /// and its base and size as the prefetch hint), then hands the arrays it
    /// replaced to the epoch collector. Called under the shard lock after
    /// every `Table::rebuild`.
    pub(super) fn set_hint(&self, table: &Table) {
        let (p, n) = table.hint();
        self.hint_ptr.store(p.cast_mut(), Relaxed);
        self.hint_len.store(n, Relaxed);
        // Release: a reader that loads the pointer sees the array's entries.
        self.published.store(table.published(), Release);
        let retired = table.take_retired();
        if !retired.is_empty() {
            let guard = self.epochs.pin();
            for r in retired {
                guard.defer(move || {
                    // SAFETY: `r` is no longer published (the store above
                    // replaced it, before this `defer`), so only readers
                    // pinned before now can hold it, and the collector runs
                    // this after all of them unpinned. Under `cfg(loom)` it
                    // runs at once: there are no lock-free readers there.
                    unsafe { r.free() }
                });
            }
        }
    }
}

/// Memories of at least this many line slots keep their index tables in a
/// [`HugePool`] (transparent huge pages); smaller ones on the heap.
const POOL_MIN_SLOTS: u64 = 1 << 20;

/// The pool for the index tables of a memory of `slots` line slots (`None`:
/// the heap). It has room for the tables of every slot at the lowest load
/// after a growth (14/15 / 1.5 = 0.62: 64/15 / 0.62 = 6.9 bytes per entry)
/// twice over (13.7, rounded up to 14 bytes per slot), for the arrays
/// replaced by growth that wait for an epoch and for fragmentation; tables
/// that do not fit go to the heap.
pub(super) fn pool_for(slots: u64) -> Option<std::sync::Arc<HugePool>> {
    if cfg!(loom) || slots < POOL_MIN_SLOTS {
        return None;
    }
    let len = usize::try_from(slots.checked_mul(14)?).ok()?;
    let len = (len + (4 << 20)).checked_next_multiple_of(2 << 20)?;
    HugePool::new(len).map(std::sync::Arc::new)
}

/// How an intern batch hands out the slots of [`Store::take_batch`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Slots {
    /// To the batch's misses in input order.
    InputOrder,
    /// In the order of the locked inserts (shard by shard).
    WalkOrder,
}

/// Line equality, inlined for 64-byte lines (eight word compares folded
/// into one test, no call to `memcmp`).
#[inline(always)]
pub(super) fn lines_eq(a: &[u8], b: &[u8]) -> bool {
    if let (Ok(a), Ok(b)) = (<&[u8; 64]>::try_from(a), <&[u8; 64]>::try_from(b)) {
        let (a, b) = (a.as_chunks::<8>().0, b.as_chunks::<8>().0);
        let mut d = 0u64;
        for k in 0..8 {
            d |= u64::from_ne_bytes(a[k]) ^ u64::from_ne_bytes(b[k]);
        }
        d == 0
    } else {
        a == b
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
    #[inline]
    pub(super) fn alloc_slot(&self, shard: &mut Shard) -> Option<u32> {
        if let Some(id) = shard.free.pop() {
            return Some(id);
        }
        self.alloc_slot_refill(shard)
    }

    /// [`Store::alloc_slot`] when the shard's list is empty.
    #[inline(never)]
    fn alloc_slot_refill(&self, shard: &mut Shard) -> Option<u32> {
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

    /// Slots for the `n` misses of one intern batch, in ascending order in
    /// `out[..n]`. Freed slots come first, taken in ascending order from the
    /// free bitmap (`take_freed_run`), then a run of consecutive fresh slots
    /// (`take_run`). `None` (the batch takes slots one by one from
    /// `alloc_slot`) for a short batch, or when neither can give all `n`
    /// (what a partial take got goes to a shard's list).
    ///
    /// How the batch hands them out ([`Slots`]): a fresh run in input order,
    /// so that a segment built in order has its leaves in consecutive slots
    /// (a window copies such pages straight from the arena); freed slots in
    /// the order the inserts run (shard by shard), so that the batch writes
    /// the arena and the counts as one ascending stream each. (A warm
    /// memory's batch wrote 32 streams of freed slots, one per leaf shard,
    /// each on its own pages; freed slots in input order were written in
    /// random order over the batch's range: 30% slower, each write a miss
    /// that no hardware prefetcher follows.)
    pub(super) fn take_batch(&self, n: usize, out: &mut [u32]) -> Option<Slots> {
        if n < RUN_MIN {
            return None;
        }
        if self.free_count.load(Relaxed) >= n as u64 {
            return self.take_freed_run(n, out).then_some(Slots::WalkOrder);
        }
        let start = self.take_run(n)?;
        for (k, s) in out[..n].iter_mut().enumerate() {
            *s = start + k as u32;
        }
        Some(Slots::InputOrder)
    }

    /// A run of `n` consecutive fresh slots (for an intern batch, or an
    /// in-place read). `None` (the caller takes slots one by one) for a
    /// short batch, when freed slots are waiting to be reused, or when the
    /// fresh range cannot give the whole run (a partial one, from a race or
    /// a failed file reservation, goes to a shard's list, not lost).
    pub(super) fn take_run(&self, n: usize) -> Option<u32> {
        if n < RUN_MIN
            || self.free_count.load(Relaxed) >= n as u64
            || self.next_fresh.load(Relaxed) + n as u64 > self.slots
        {
            // (Near the end of the fresh range slots go one by one; the
            // line reserve is never taken for a run.)
            return None;
        }
        let (start, end) = self.take_fresh(n as u64)?;
        if end - start == n as u64 {
            return Some(start as u32);
        }
        let mut shard = self.shards[0].lock.lock();
        shard.free.extend((start as u32..end as u32).rev());
        None
    }

    /// [`Store::take_batch`] from the free bitmap: the next `n` freed slots
    /// from the shared cursor (or from `free_hint`, as `take_freed` scans),
    /// in ascending order; a word is taken only in part when fewer of its
    /// slots are needed (only the holder of the cursor clears bits, so the
    /// bits seen set stay set until it does).
    fn take_freed_run(&self, n: usize, out: &mut [u32]) -> bool {
        let words = &self.free_bits[..];
        let mut cursor = self.free_cursor.lock();
        let hint = self.free_hint.swap(u64::MAX, Relaxed);
        let mut w = (*cursor).min(usize::try_from(hint).unwrap_or(usize::MAX));
        let mut got = 0;
        for _ in 0..words.len() {
            if w >= words.len() {
                w = 0;
            }
            let mut bits = words[w].load(Relaxed);
            if bits != 0 {
                let need = n - got;
                if bits.count_ones() as usize > need {
                    // The lowest `need` set bits.
                    let mut take = 0u64;
                    for _ in 0..need {
                        take |= bits & bits.wrapping_neg();
                        bits &= bits - 1;
                    }
                    bits = take;
                }
                // Acquire: as in `take_freed`.
                words[w].fetch_and(!bits, Acquire);
                while bits != 0 {
                    out[got] = (w as u32) << 6 | bits.trailing_zeros();
                    got += 1;
                    bits &= bits - 1;
                }
                if got == n {
                    break; // (the word may hold more: the cursor stays on it)
                }
            }
            w += 1;
        }
        *cursor = w;
        drop(cursor);
        self.free_count.fetch_sub(got as u64, Relaxed);
        if got == n {
            return true;
        }
        // Fewer than counted (frees in flight): to a shard's list.
        let mut shard = self.shards[0].lock.lock();
        shard.free.extend(out[..got].iter().rev());
        false
    }

    /// Moves at least `want` freed slots (or all there are) from the free
    /// bitmap to the shard's list, scanning on from the shared cursor (or
    /// from the lowest word freed since the last scan, `free_hint`, when that
    /// is behind it) so that the shards take consecutive runs; the list pops
    /// them in ascending order.
    pub(super) fn take_freed(&self, shard: &mut Shard, want: usize) {
        let words = &self.free_bits[..];
        let mut cursor = self.free_cursor.lock();
        let at = shard.free.len();
        // From the lowest word freed since the last scan when that is behind
        // the cursor (a slot freed during this scan lowers the hint again).
        let hint = self.free_hint.swap(u64::MAX, Relaxed);
        let mut w = (*cursor).min(usize::try_from(hint).unwrap_or(usize::MAX));
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

    /// Marks slots free in the bitmap (their count words are already zero)
    /// and lowers `free_hint` once for all of them; the caller adds the
    /// number of slots it marked to `free_count`.
    pub(super) fn free_slots(&self, ids: impl IntoIterator<Item = u32>) {
        let mut low = u32::MAX;
        // Ids of one bitmap word in a row (a frame's or a run's slots) are
        // set with one locked OR (one per id was 80% of a bulk receive's
        // return of owned slots).
        let (mut word, mut bits) = (u32::MAX, 0u64);
        for id in ids {
            if id >> 6 != word {
                if bits != 0 {
                    // Release: see `take_freed`.
                    self.free_bits[word as usize].fetch_or(bits, Release);
                }
                (word, bits) = (id >> 6, 0);
                low = low.min(word);
            }
            bits |= 1 << (id & 63);
        }
        if bits != 0 {
            self.free_bits[word as usize].fetch_or(bits, Release);
        }
        if low != u32::MAX {
            self.free_hint.fetch_min(u64::from(low), Relaxed);
        }
    }

    /// Moves every shard's free list to the free bitmap, and returns the
    /// slots waiting for an epoch that can be returned (used only when the
    /// memory is otherwise full).
    pub(super) fn drain_free_lists(&self) {
        self.reclaim();
        self.drain_owned();
        for cell in self.shards.iter() {
            let mut shard = cell.lock.lock();
            let n = shard.free.len();
            self.free_slots(shard.free.drain(..));
            self.free_count.fetch_add(n as u64, Relaxed);
        }
    }

    /// Returns the freed slots still waiting for an epoch, as far as this
    /// thread can: it pushes its own deferred functions to the collector and
    /// advances the epoch, which succeeds when no other thread is pinned in an
    /// older one. Slots deferred by other threads that have not pinned since
    /// stay in their local bags until they do (at most 64 deferred batches
    /// per thread; a thread that exits hands its bag over).
    pub(super) fn reclaim(&self) {
        for _ in 0..64 {
            if self.limbo.load(Relaxed) == 0 {
                break;
            }
            self.epochs.pin().flush();
        }
    }

    /// Hands the slots of `ids` (freed: count 0, out of the index) back to
    /// the free bitmap once no lock-free reader can still compare them (see
    /// the module docs): after every thread pinned now has unpinned.
    pub(super) fn defer_free(&self, ids: Vec<u32>, guard: &epoch::Guard) {
        if ids.is_empty() {
            return;
        }
        let n = ids.len() as u64;
        self.limbo.fetch_add(n, Relaxed);
        let bits = self.free_bits.clone();
        let count = self.free_count.clone();
        let limbo = self.limbo.clone();
        let hint = self.free_hint.clone();
        guard.defer(move || {
            let mut low = u32::MAX;
            for id in ids {
                // Release: see `take_freed`.
                bits[(id >> 6) as usize].fetch_or(1 << (id & 63), Release);
                low = low.min(id >> 6);
            }
            hint.fetch_min(u64::from(low), Relaxed);
            count.fetch_add(n, Relaxed);
            limbo.fetch_sub(n, Relaxed);
        });
    }

    /// [`Store::defer_free`] for the `n` slots whose bits are set in the
    /// words `words` of `bits` (a bitmap over every slot): the bitmap's words
    /// are or-ed into the free bitmap, 64 slots at a time.
    pub(super) fn defer_free_bits(
        &self,
        bits: Vec<u64>,
        words: std::ops::RangeInclusive<usize>,
        n: u64,
        guard: &epoch::Guard,
    ) {
        if n == 0 {
            return;
        }
        self.limbo.fetch_add(n, Relaxed);
        let free = self.free_bits.clone();
        let count = self.free_count.clone();
        let limbo = self.limbo.clone();
        let hint = self.free_hint.clone();
        guard.defer(move || {
            let mut low = None;
            for w in words {
                if bits[w] != 0 {
                    // Release: see `take_freed`.
                    free[w].fetch_or(bits[w], Release);
                    low = low.or(Some(w));
                }
            }
            if let Some(w) = low {
                hint.fetch_min(w as u64, Relaxed);
            }
            count.fetch_add(n, Relaxed);
            limbo.fetch_sub(n, Relaxed);
        });
    }

    /// The line in slot `id`, read without a reference by a pinned reader.
    ///
    /// The slot cannot be rewritten while `_guard` lives: a slot is written
    /// only when allocated, a freed slot is allocated only after its
    /// epoch-deferred return to the free bitmap ran (`defer_free`), which
    /// waits for this guard; and a slot's entry reaches the index (with a
    /// `Release` store, loaded here with `Acquire`) only after its content
    /// was written.
    #[inline]
    fn line_pinned(&self, id: u32, _guard: &epoch::Guard) -> &[u8] {
        debug_assert!((id as u64) < self.slots);
        // SAFETY: `id` came from an index entry, so `id < slots`; the slot is
        // not written while the guard lives (above).
        unsafe { self.arena.line(id) }
    }

    /// Looks a full line up without the shard lock and without taking a
    /// reference: a pinned reader walks the published bucket array and
    /// compares candidates. A hit is a line with this content and kind that
    /// was in the index at some point during the pin (the table of a shard
    /// holds one kind: see [`super::line_hash`]); it may be dying (count 0),
    /// which the caller handles. `None` also when a concurrent update hid
    /// the entry: the locked path decides then.
    #[inline]
    pub(super) fn find_pinned(&self, h: u64, line: &[u8], guard: &epoch::Guard) -> Option<u32> {
        let cell = &self.shards[h as usize & (SHARDS - 1)];
        let p = cell.published.load(Acquire);
        // SAFETY: `published` always points at a live array: set from the
        // table before the store is shared, and replaced only by `set_hint`,
        // which defers the old array's release past every guard pinned before
        // the replacement, this one included.
        let t = unsafe { &*p };
        t.find_pinned(h, |id| lines_eq(self.line_pinned(id, guard), line))
    }

    /// Every shard's published bucket array, read once for a batch of
    /// pinned lookups (a lookup then costs no load of its shard's cell). An
    /// array replaced meanwhile stays readable while `_guard` lives (its
    /// release is deferred past it) and its entries were in the index during
    /// the pin; it may lack newer ones, which then miss to the locked path.
    #[inline]
    pub(super) fn published_tables<'g>(
        &'g self,
        _guard: &'g epoch::Guard,
    ) -> [&'g Buckets; SHARDS] {
        std::array::from_fn(|s| {
            let p = self.shards[s].published.load(Acquire);
            // SAFETY: as in `find_pinned`: `published` points at a live
            // array whose release waits for this guard.
            unsafe { &*p }
        })
    }

    /// The line in slot `id` (an entry of a published array) compared with
    /// `line`, for a pinned reader (see `line_pinned`).
    #[inline(always)]
    pub(super) fn eq_pinned(&self, id: u32, line: &[u8], guard: &epoch::Guard) -> bool {
        lines_eq(self.line_pinned(id, guard), line)
    }

    /// Prefetches the line in slot `id` (an entry of a published array),
    /// for a pinned reader.
    #[inline(always)]
    pub(super) fn prefetch_pinned(&self, id: u32, guard: &epoch::Guard) {
        prefetch_ptr(self.line_pinned(id, guard).as_ptr());
    }

    #[inline]
    pub(super) fn prefetch_index(&self, h: u64) {
        let cell = &self.shards[h as usize & (SHARDS - 1)];
        let base = cell.hint_ptr.load(Relaxed);
        let n = cell.hint_len.load(Relaxed);
        // The home bucket and the next: a miss reads on past its home bucket
        // in 6% of the lookups that fill a table to 5/6 (a reserve; 29% near
        // the end, more up to the maximum of 14/15), and that bucket was a
        // cache miss of its own (on-CPU time of a warm 256 MiB unique
        // intern, medians of 7 alternated runs: 0.206 s with the home bucket
        // alone, 0.196 s with both; 0.187 s at the old 3/4 fill).
        let home = base.wrapping_add(Table::home_of(h, n));
        prefetch_ptr(home);
        prefetch_ptr(home.wrapping_add(1));
    }

    /// Before a run of `n` lookups in one shard (lock held), most of them
    /// new lines (the lock-free probe found the duplicates): prefetches the
    /// count words and lines of the slots the free list will hand out next,
    /// so that the misses of the whole run overlap. (The home buckets were
    /// prefetched while hashing.)
    pub(super) fn prefetch_run(&self, shard: &Shard, n: usize) {
        let meta = self.meta.as_slice();
        for &id in shard.free.iter().rev().take(n) {
            prefetch_ptr(meta.as_ptr().wrapping_add(id as usize));
            prefetch_ptr(self.line(LineId(id)).as_ptr());
        }
    }

    /// Prefetches the count word and the line of slot `id` (about to be
    /// written by an insert).
    #[inline(always)]
    pub(super) fn prefetch_slot(&self, id: u32) {
        prefetch_ptr(self.meta.as_slice().as_ptr().wrapping_add(id as usize));
        prefetch_ptr(self.line(LineId(id)).as_ptr());
    }

    /// Grows a shard's table by 1.5x (`Table::grown`), rehashing its lines
    /// (they are live and the shard lock is held, so their content is
    /// stable).
    ///
    /// The lines are read in bucket order, each prefetched
    /// [`PREFETCH_AHEAD`] lines before it is hashed, and their new homes
    /// come in about that order too (a home is monotone in the hash, so
    /// `Table::rebuild` fills the new array front to back). Reading them in
    /// about ascending id order instead (a counting pass by the id's high
    /// bits) cost 36 instructions per entry and was no faster: on-CPU time of
    /// 256 MiB interned as 4 KiB segments, medians of three alternated runs,
    /// 1.49 s in bucket order, 1.60 s sorted.
    #[cold]
    #[inline(never)]
    pub(super) fn grow(&self, cell: &ShardCell, shard: &mut Shard) {
        let n = shard.table.grown();
        self.grow_to(cell, shard, n);
    }

    /// Makes room in a shard's table for `extra` more entries at once (one
    /// rebuild to a load of 5/6, `Table::buckets_for`, instead of a growth
    /// by 1.5x every few inserts), when a batch of new lines says that many
    /// are coming. The estimate is capped at twice a fair share of the
    /// slots.
    ///
    /// Each run reserves for itself, so two threads interning new data at
    /// once would overrun each other's reservations, and each overrun would
    /// rebuild the table for one run's want again (a cold 2-thread intern
    /// of 2 x 8 MiB rehashed 490 K entries in 400 rebuilds, 1.8 times its
    /// lines, where one thread rehashes 19 K). A reservation that does not
    /// fit therefore keeps what the table does not hold yet of the last one
    /// (up to its own size: the other run's remainder, as far as it can
    /// tell), so both runs get room in one rebuild. A reservation whose
    /// lines came and went (a dropped segment) is mostly stale: tables never
    /// shrink, so it still fits a run of its size, and a larger run that
    /// does not fit gets at most its own size again.
    pub(super) fn reserve(&self, cell: &ShardCell, shard: &mut Shard, extra: usize) {
        let cap = (self.slots as usize / (SHARDS / 2)).saturating_mul(2);
        let len = shard.table.len();
        let extra = extra.min(cap);
        let want = len + extra;
        if !shard.table.fits(want) {
            let outstanding = shard.reserved.saturating_sub(len).min(extra);
            shard.reserved = want + outstanding;
            self.grow_to(cell, shard, Table::buckets_for(shard.reserved));
        }
    }

    #[cold]
    #[inline(never)]
    fn grow_to(&self, cell: &ShardCell, shard: &mut Shard, buckets: usize) {
        let ids = shard.table.ids();
        let kind = shard.kind;
        let mut hashes = Vec::with_capacity(ids.len());
        for (j, &id) in ids.iter().enumerate() {
            if let Some(&next) = ids.get(j + PREFETCH_AHEAD) {
                prefetch_ptr(self.line(LineId(next)).as_ptr());
            }
            hashes.push(line_hash(kind, self.line(LineId(id))));
        }
        shard.table.rebuild(buckets, &ids, &hashes);
        cell.set_hint(&shard.table);
    }

    /// Looks a full line up under its shard lock, inserting it when absent.
    /// `None` means no free slot could be found without draining.
    #[inline(always)]
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
        // The shard's table holds lines of `kind` only (the kind is a bit of
        // the hash that picks the shard), so a content match is a kind match:
        // no count word is read for a candidate (with 8 tag bits, about one
        // unique line in 25 meets a candidate whose tag matches, and each
        // such read was a cache miss at large working sets).
        debug_assert_eq!(shard.kind, kind);
        let found = shard
            .table
            .find_or_place(h, |id| lines_eq(self.line(LineId(id)), line));
        let place = match found {
            Ok(id) => {
                self.increment(id);
                shard.hits[kind_index(kind)] += 1;
                return Some((LineId(id), false));
            }
            Err(place) => place,
        };
        let id = self.alloc_slot(shard)?;
        // SAFETY: `id` was just taken from a free list or the fresh range, so
        // this thread owns it exclusively; it is published below, under the lock.
        unsafe { self.arena.write(id, line) };
        if kind == LineKind::Interior && self.has_owned_child(line) {
            // Above an owned line: owned too, out of the index (`owned`).
            meta[id as usize].store(kbit | OWNED_BIT | 1, Relaxed);
            self.note_owned(kind, 1);
            return Some((LineId(id), true));
        }
        meta[id as usize].store(kbit | 1, Relaxed);
        shard.table.insert_at(h, id, place);
        shard.live[kind_index(kind)] += 1;
        shard.created[kind_index(kind)] += 1;
        if self.durability != Durability::None {
            shard.pending.push(id);
        }
        Some((LineId(id), true))
    }

    /// [`Store::find_or_insert`] of a leaf into a shard whose table has room
    /// (the caller checked [`Table::fits`]), with the slot `id` taken for it
    /// (back to the shard's list when the line turns out to exist). Returns
    /// the line and whether it was created; the caller counts the created
    /// lines into the shard's `live` and `created`.
    #[inline(always)]
    pub(super) fn find_or_insert_into(
        &self,
        shard: &mut Shard,
        kind: LineKind,
        h: u64,
        line: &[u8],
        id: u32,
    ) -> (u32, bool) {
        debug_assert!(kind == LineKind::Leaf && !shard.table.full());
        debug_assert_eq!(shard.kind, kind);
        let meta = self.meta.as_slice();
        let found = shard
            .table
            .find_or_place(h, |x| lines_eq(self.line(LineId(x)), line));
        match found {
            Ok(x) => {
                self.increment(x);
                shard.hits[kind_index(kind)] += 1;
                shard.free.push(id);
                (x, false)
            }
            Err(place) => {
                // SAFETY: `id` was taken for this insert (`take_batch`), so
                // this thread owns it exclusively; it is published below,
                // under the lock.
                unsafe { self.arena.write(id, line) };
                meta[id as usize].store(kind_bit(kind) | 1, Relaxed);
                shard.table.insert_at(h, id, place);
                if self.durability != Durability::None {
                    shard.pending.push(id);
                }
                (id, true)
            }
        }
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

#[cfg(all(test, not(loom)))]
mod tests {
    use crate::id::LineKind;
    use crate::store::{line_hash, WriteCounts};
    use crate::{Config, Memory};

    fn random_lines(lines: usize, seed: u64) -> Vec<u8> {
        testkit::Rng::new(seed).bytes(lines * 64)
    }

    /// After a mass release, each intern batch of new lines takes the
    /// lowest freed slots (one ascending range when every slot is free),
    /// not a run per shard, and the whole run reuses exactly the freed ones.
    #[test]
    fn a_warm_batch_takes_the_lowest_freed_slots() {
        let m = Memory::new(Config {
            line_size: 64,
            capacity_lines: 1 << 16,
            map_capacity: 2,
            ..Config::default()
        })
        .unwrap();
        let store = &m.inner.store;
        let mut c = WriteCounts::default();
        let mut first = Vec::new();
        store
            .intern_leaves(&random_lines(3 * 4096 + 100, 1), &mut first, &mut c)
            .unwrap();
        store.release_all(&first);
        assert_eq!(m.live_lines(), 0);
        store.reclaim();
        assert_eq!(store.limbo.load(std::sync::atomic::Ordering::Relaxed), 0);
        let mut again = Vec::new();
        store
            .intern_leaves(&random_lines(3 * 4096 + 100, 2), &mut again, &mut c)
            .unwrap();
        assert_eq!(m.live_lines(), again.len() as u64);
        for batch in again.chunks(4096) {
            let mut s: Vec<u32> = batch.iter().map(|i| i.0).collect();
            s.sort_unstable();
            assert!(
                s.windows(2).all(|w| w[1] == w[0] + 1),
                "a batch's slots are not one range: {:?}..{:?}",
                s.first(),
                s.last()
            );
        }
        let sorted = |v: &[crate::id::LineId]| {
            let mut s: Vec<u32> = v.iter().map(|i| i.0).collect();
            s.sort_unstable();
            s
        };
        assert_eq!(
            sorted(&again),
            sorted(&first),
            "the freed slots were reused"
        );
        store.release_all(&again);
        assert_eq!(m.live_lines(), 0);
    }

    /// A large memory keeps its index tables in the huge-page pool; they
    /// grow, sweep and find lines there, over an intern, a drop and an
    /// intern of other data.
    #[test]
    fn a_large_memory_indexes_in_the_pool() {
        let m = Memory::new(Config {
            line_size: 64,
            capacity_lines: 1 << 20,
            map_capacity: 2,
            ..Config::default()
        })
        .unwrap();
        let store = &m.inner.store;
        for seed in [1, 2] {
            let data = random_lines(20_000, seed);
            let s = m.segment(&data).unwrap();
            assert!(store.shards.iter().all(|c| c.lock.lock().table.in_pool()));
            let again = m.segment(&data).unwrap();
            assert_eq!(again, s);
            assert_eq!(again.to_vec(), data);
            drop((s, again));
            assert_eq!(m.live_lines(), 0);
        }
    }

    fn leaf(k: u32) -> [u8; 64] {
        let mut l = [0u8; 64];
        l[..4].copy_from_slice(&k.to_le_bytes());
        l
    }

    /// A pinned reader that found a line keeps its slot: after the line's
    /// last release the slot is not handed out again (the memory fills up
    /// around it), its content stays, and "increment unless zero" refuses to
    /// revive it; once the reader unpins, the slot comes back.
    #[test]
    fn a_pinned_reader_keeps_a_freed_slot() {
        let m = Memory::new(Config {
            line_size: 64,
            capacity_lines: 64,
            map_capacity: 2,
            ..Config::default()
        })
        .unwrap();
        let store = &m.inner.store;
        let line = [7u8; 64];
        let (id, created) = store.intern(LineKind::Leaf, &line).unwrap();
        assert!(created);
        let h = line_hash(LineKind::Leaf, &line);
        let guard = store.epochs.pin();
        assert_eq!(store.find_pinned(h, &line, &guard), Some(id.0));
        store.release(id);
        assert_eq!(store.refcount(id), 0);
        let mut held = Vec::new();
        for k in 1..1000 {
            match store.intern(LineKind::Leaf, &leaf(k)) {
                Ok((x, _)) => {
                    assert_ne!(x, id, "a freed slot was reused under a pinned reader");
                    held.push(x);
                }
                Err(_) => break,
            }
        }
        assert!(
            held.len() > 8 && held.len() < 1000,
            "the memory never filled"
        );
        assert_eq!(store.line_pinned(id.0, &guard), &line[..]);
        assert!(!store.inc_unless_zero(id.0));
        assert_eq!(store.find_pinned(h, &line, &guard), None);
        drop(guard);
        // Unpinned, the slot comes back (the store reclaims when full).
        let (x, _) = store.intern(LineKind::Leaf, &leaf(5000)).unwrap();
        assert_eq!(x, id);
        held.push(x);
        store.release_all(&held);
        assert_eq!(m.live_lines(), 0);
    }
}
