//! The dedup table of one shard: buckets of one cache line, each holding 15
//! `u32` slots and an overflow count, at a load factor of up to 14/15.
//!
//! ```text
//!   bucket (64 bytes)  [ s0 s1 ... s14 | overflow ]
//!   slot (u32)         tag * S + line id, for S the memory's slot count   0 = empty
//!   home bucket        ((h >> 32) * buckets) >> 32     any bucket count, so growth is by 1.5x
//!   tag                ((bits 8..32 of h) * floor(2^32 / S)) >> 24, in 0..floor(2^32 / S)
//!   load               at most 14/15 (4.6 B per entry); 0.62 after a growth (6.9 B);
//!                      5/6 when sized for a known count (5.1 B: a reserve, recovery)
//! ```
//!
//! A slot is a mixed-radix number (see [`Buckets`]): the line id (below S)
//! and as many tag values of the hash as fit in the rest of the 32 bits, so
//! most non-matching slots are skipped without reading their line (a memory
//! of 9.0 M slots keeps 477 tag values, 8.9 bits; a bit field would keep 8).
//! A slot matches a tag when it lies in `tag * S ..= tag * S + S - 1`: one
//! subtraction and one unsigned compare per slot, four slots per SSE2
//! instruction. An entry lives in its home bucket or, when that is full, in the
//! first bucket after it with room; `overflow` counts the entries that probed
//! past a bucket, so a lookup stops at the first bucket whose count is 0 and
//! deletion needs no shifting (F14's scheme). The table stores no hash: growth
//! rehashes the lines themselves (the caller passes the hashes), which is
//! what lets a slot be 4 bytes. The index is not persisted (a file's index
//! is rebuilt when it is opened), so the encoding is free to change.
//!
//! The load: a lookup that misses reads buckets until one whose overflow
//! count is 0, which at a load `a` of random homes is (simulated, 20 K
//! buckets) 1.2 buckets at 0.75, 1.9 at 0.85, 2.5 at 7/8, 7.1 at 14/15; a
//! hit 1.03-1.36 buckets over the same loads (2.4-10% of entries away from
//! home). Averaged over the inserts that take a table from one growth to
//! the next (0.62 to 14/15), a miss reads 1.9 buckets (1.3 up to 7/8, the
//! old maximum); over the inserts that fill a table sized for a batch
//! (`buckets_for`, up to 5/6), 1.06. A rebuild (`Buckets::fill`) sorts the
//! entries by home bucket and writes each bucket once.
//!
//! Why 1.5x and not finer steps (measured: the release bench's sweep over 17
//! working sets of 1-256 MiB, and callgrind instructions per line of 16 MiB):
//! a segment of new lines reserves each shard's share at 5/6 (`buckets_for`),
//! so interning one segment gives 5.1-5.2 B per line at any growth step
//! (1.5x: mean 5.16, max 5.23 B; 1.25x: 5.13, 5.15). Finer steps pay off only
//! where tables grow insert by insert (4 KiB segments: 1.5x 5.60 / 6.50 B,
//! 1.33x 5.37 / 6.00 B, 1.25x 5.11 / 5.50 B), and there they cost: 1089,
//! 1263 and 1525 instructions per line (1093 with the old 7/8 and 1.5x),
//! growth rehashing every line about 2, 3 or 4 times.
//!
//! Readers without the shard lock (the lock-free hit path) walk the same
//! buckets, so every word is read and written atomically: a bucket is eight
//! `AtomicU64`, two slots each (slot `2k` in the low half of word `k`, the
//! overflow count in the high half of word 7), which keeps the 64-byte layout
//! and lets a reader take a whole bucket in eight plain loads (on x86_64, four
//! 16-byte loads in inline assembly, each 8-byte half read in one access:
//! `Bucket::load_sse2`), compared four slots per instruction. Only the holder
//! of the shard lock writes (load, change one half, store with `Release`), so
//! a word never needs a compare-and-swap; a reader loads with `Acquire`, so a
//! slot it sees comes with the line and count written before it was stored.
//! A reader may see a bucket mid-update (an entry moved by a removal, an
//! overflow count not yet raised): it can then miss an entry, never invent
//! one, and a miss falls back to the locked path, which is exact.
//!
//! The bucket array is a [`Buckets`] on the heap that the table owns through a
//! raw pointer (readers hold shared references into it while the lock holder
//! changes it through atomics, so it is never behind a `Box` or `&mut`).
//! Growth builds the new array aside and keeps the old one as *retired*; the
//! shard publishes the new one (`ShardCell::set_hint`) and only then hands the
//! retired array to the epoch collector, so no reader pinned after the switch
//! can reach it and the ones pinned before it keep it alive.

/// Slots per bucket.
pub(super) const BUCKET_SLOTS: usize = 15;

/// The maximum load (entries per slot, as a fraction): 14 of every 15
/// slots, 4.57 bytes per entry. A table grows before an insert would pass
/// it.
pub(super) const MAX_LOAD: (usize, usize) = (14, 15);

/// Growth adds this fraction of the buckets (1.5x), so a table that grew
/// is at 14/15 / 1.5 = 0.62 (6.9 bytes per entry) and its load stays
/// between that and [`MAX_LOAD`] until the next growth (see the module docs
/// for finer steps).
pub(super) const GROWTH: (usize, usize) = (1, 2);

/// The load a table is sized for when the number of entries coming is known
/// (`Table::buckets_for`: a batch of new lines that reserves its share, a
/// rebuild, recovery): 5/6, 5.1 bytes per entry, with room for the
/// estimate's error before [`MAX_LOAD`] forces a growth.
pub(super) const FILL_LOAD: (usize, usize) = (5, 6);

use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::region::HugePool;
use std::sync::atomic::Ordering::*;

/// One cache line of the table.
#[repr(C, align(64))]
#[derive(Default)]
pub(super) struct Bucket {
    /// Slot `s` is the low (`s` even) or high (`s` odd) half of word `s / 2`;
    /// slot 15 ([`OVERFLOW`]) counts the entries whose home bucket lies at or
    /// before this one and that live after it.
    words: [AtomicU64; 8],
}

/// The slot of a bucket that holds its overflow count.
const OVERFLOW: usize = BUCKET_SLOTS;
/// The slot bits of a mask over a bucket's words.
const SLOT_BITS: u32 = (1 << BUCKET_SLOTS) - 1;

const _: () = assert!(std::mem::size_of::<Bucket>() == 64);

impl Bucket {
    /// Slot `s` (`Acquire`: see the module docs).
    #[inline(always)]
    fn slot(&self, s: usize) -> u32 {
        (self.words[s / 2].load(Acquire) >> (32 * (s & 1))) as u32
    }

    /// Sets slot `s` to `v`. Only the shard lock holder writes, so reading
    /// the word and storing it back loses no concurrent update.
    #[inline(always)]
    fn set_slot(&self, s: usize, v: u32) {
        let w = &self.words[s / 2];
        let shift = 32 * (s & 1);
        let old = w.load(Relaxed);
        let new = (old & !(0xffff_ffffu64 << shift)) | (u64::from(v) << shift);
        w.store(new, Release);
    }

    /// The bucket as four 16-byte vectors, for a reader without the lock.
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    #[inline(always)]
    fn load_sse2(&self) -> [std::arch::x86_64::__m128i; 4] {
        use std::arch::x86_64::__m128i;
        let p = self.words.as_ptr();
        let (a, b, c, d): (__m128i, __m128i, __m128i, __m128i);
        // SAFETY: `p` is the bucket's 64 bytes, 64-byte aligned and live
        // while `&self` is. The loads are in assembly, so they are the
        // machine's loads, not Rust's non-atomic ones: on x86_64 an aligned
        // 16-byte load reads each aligned 8-byte half in one access, as the
        // `AtomicU64` loads of `load` do, and every load has acquire order
        // in hardware (TSO); the fence below keeps the compiler from moving
        // later reads (the candidate line's) above them. The lock holder's
        // stores are atomic, so a concurrent update is seen per word, never
        // torn, exactly as with `load`.
        unsafe {
            std::arch::asm!(
                "movdqa {a}, xmmword ptr [{p}]",
                "movdqa {b}, xmmword ptr [{p} + 16]",
                "movdqa {c}, xmmword ptr [{p} + 32]",
                "movdqa {d}, xmmword ptr [{p} + 48]",
                p = in(reg) p,
                a = out(xmm_reg) a,
                b = out(xmm_reg) b,
                c = out(xmm_reg) c,
                d = out(xmm_reg) d,
                options(nostack, preserves_flags, readonly),
            );
        }
        std::sync::atomic::compiler_fence(Acquire);
        [a, b, c, d]
    }

    /// The sixteen words (slots and overflow count).
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    #[inline(always)]
    fn load(&self) -> [u64; 8] {
        std::array::from_fn(|k| self.words[k].load(Acquire))
    }
}

/// A bucket array and the slot encoding it uses: what a reader without the
/// lock needs to probe.
///
/// A slot holds `tag * range + id` (mixed radix): `range` is the id range of
/// the memory (ids `1..range`), `tag` one of `tags = floor(2^32 / range)`
/// values taken from the hash, so the tag field is as wide as the ids leave
/// room for, not a whole number of bits (9.0 M slots: 477 tags, 8.9 bits,
/// where a bit field kept 8). A slot matches the tag when `slot - tag *
/// range <= range - 1` (unsigned), and its id is that difference; only
/// sweeps and rebuilds, which see slots of every tag, need `slot % range`.
pub(super) struct Buckets {
    /// The id range (ids `1..range`), for rebuilds.
    range: u64,
    /// Tag values (`floor(2^32 / range)`, at least 1: 1 = no tag).
    tags: u32,
    /// `range - 1`, at most `u32::MAX`: the largest difference of a slot and
    /// its tag base.
    smax: u32,
    /// `u64::MAX / range + 1`, for `slot % range` by multiplication
    /// (Lemire's fastmod); unused (0) when `tags == 1` (a slot is its id).
    fastm: u64,
    /// `n` buckets: from the memory's huge-page pool when `pool` is set,
    /// else a boxed slice (`Box::into_raw`).
    ptr: NonNull<Bucket>,
    n: usize,
    pool: Option<Arc<HugePool>>,
}

// SAFETY: `Buckets` owns its array exclusively (a boxed slice, or an extent
// of the pool that only it frees) and is otherwise a `Box<[Bucket]>` of
// atomics: sending it, or sharing it between threads, is as safe as that.
unsafe impl Send for Buckets {}
// SAFETY: as above.
unsafe impl Sync for Buckets {}

impl Drop for Buckets {
    fn drop(&mut self) {
        match &self.pool {
            Some(pool) => pool.free(self.ptr.cast(), self.n * std::mem::size_of::<Bucket>()),
            // SAFETY: without a pool, `ptr`/`n` came from `Box::into_raw` of
            // a boxed slice of `n` buckets (`Buckets::new`), freed only here.
            None => drop(unsafe {
                Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                    self.ptr.as_ptr(),
                    self.n,
                ))
            }),
        }
    }
}

impl Buckets {
    /// `n` (at least 1) empty buckets, from `pool` when it has room, for
    /// line ids below `range` (at most 2^32).
    fn new(range: u64, n: usize, pool: Option<&Arc<HugePool>>) -> Buckets {
        debug_assert!((2..=1 << 32).contains(&range));
        let range = range.clamp(2, 1 << 32);
        let tags = ((1u64 << 32) / range) as u32;
        let smax = (range - 1) as u32;
        let fastm = if tags > 1 { u64::MAX / range + 1 } else { 0 };
        let n = n.max(1);
        let from_pool = pool.and_then(|pool| {
            let p = pool.alloc(n * std::mem::size_of::<Bucket>())?;
            Some((p.cast::<Bucket>(), Arc::clone(pool)))
        });
        let (ptr, pool) = match from_pool {
            Some((p, pool)) => (p, Some(pool)),
            None => {
                let b: Box<[Bucket]> = (0..n).map(|_| Bucket::default()).collect();
                let p = Box::into_raw(b).cast::<Bucket>();
                // (A boxed slice's pointer is never null.)
                (NonNull::new(p).unwrap_or(NonNull::dangling()), None)
            }
        };
        Buckets {
            range,
            tags,
            smax,
            fastm,
            ptr,
            n,
            pool,
        }
    }

    /// The buckets.
    #[inline(always)]
    fn b(&self) -> &[Bucket] {
        // SAFETY: `ptr` points at `n` initialised buckets (zeroed atomics:
        // a boxed slice, or a zeroed pool extent, see `HugePool::alloc`,
        // 64-byte aligned like every extent) that live as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.n) }
    }

    #[inline]
    fn n(&self) -> usize {
        self.n
    }

    /// The tag base of hash `h`: its tag (from bits 8..32 of `h`: bits
    /// 0..6 pick the shard, the high half the home bucket) times the range.
    #[inline(always)]
    fn tag(&self, h: u64) -> u32 {
        let x = u64::from((h >> 8) as u32 & 0xff_ffff);
        let t = ((x * u64::from(self.tags)) >> 24) as u32;
        t.wrapping_mul(self.smax.wrapping_add(1))
    }

    /// The id of a used slot of any tag (`slot % range`).
    #[inline(always)]
    fn id_of(&self, v: u32) -> u32 {
        if self.fastm == 0 {
            return v;
        }
        let low = self.fastm.wrapping_mul(u64::from(v));
        ((u128::from(low) * u128::from(self.range)) >> 64) as u32
    }

    /// True when `id` can be stored (below the range).
    fn holds(&self, id: u32) -> bool {
        u64::from(id) < self.range
    }

    /// Bit `s` set when slot `s` of bucket `b` is used and lies in
    /// `base..=base + smax` (has the tag whose base is `base`, for `smax` the
    /// table's; equals `base`, for `smax` 0); and bit `s` set when slot `s`
    /// is empty. `LOCKED`: the
    /// caller is the table's writer side (see [`Table`]), so nothing writes
    /// the bucket meanwhile and it is read with plain loads.
    #[inline(always)]
    fn masks<const LOCKED: bool>(&self, b: usize, base: u32, smax: u32) -> (u32, u32) {
        #[cfg(all(target_arch = "x86_64", not(miri)))]
        {
            // The vector loads serve both sides (see `load_sse2`).
            let v = self.b()[b].load_sse2();
            // SAFETY: SSE2 is part of the x86_64 baseline, so every x86_64
            // CPU has the feature `masks_packed` is compiled for.
            unsafe { masks_packed(&v, base, smax) }
        }
        #[cfg(not(all(target_arch = "x86_64", not(miri))))]
        {
            let w = if LOCKED {
                // SAFETY: only the table's writer side writes buckets, and
                // the caller is it (`LOCKED`), so this read races with no
                // write (lock-free readers only read); `[AtomicU64; 8]` has
                // the layout of `[u64; 8]`.
                unsafe { std::ptr::read(self.b()[b].words.as_ptr().cast::<[u64; 8]>()) }
            } else {
                self.b()[b].load()
            };
            let (mut hit, mut empty) = (0u32, 0u32);
            for s in 0..BUCKET_SLOTS {
                let v = (w[s / 2] >> (32 * (s & 1))) as u32;
                hit |= u32::from(v.wrapping_sub(base) <= smax && v != 0) << s;
                empty |= u32::from(v == 0) << s;
            }
            (hit, empty)
        }
    }

    /// Bit `s` set when slot `s` of bucket `b` holds exactly `v` (non-zero;
    /// writer side).
    #[inline(always)]
    fn hits_locked(&self, b: usize, v: u32) -> u32 {
        self.masks::<true>(b, v, 0).0
    }

    /// Bit `s` set when slot `s` of bucket `b` is empty (writer side).
    #[inline(always)]
    fn empties(&self, b: usize) -> u32 {
        self.masks::<true>(b, 0, 0).1
    }

    /// Bit `s` set when slot `s` of bucket `b` is used and has the tag
    /// whose base is `tag`.
    #[inline(always)]
    fn matches<const LOCKED: bool>(&self, b: usize, tag: u32) -> u32 {
        self.masks::<LOCKED>(b, tag, self.smax).0
    }

    /// The id in slot value `v` if it has the tag whose base is `tag`, else
    /// 0. A reader without the lock re-reads a slot after its bucket matched
    /// (it may have changed since): an id returned is that of an entry with
    /// this tag (below the range, so inside the arena), never the
    /// difference of some other entry and the base.
    #[inline(always)]
    fn id_in(&self, v: u32, tag: u32) -> u32 {
        let d = v.wrapping_sub(tag);
        if d <= self.smax {
            d
        } else {
            0
        }
    }

    /// Prefetches the home bucket of `h` (a hint: any address is harmless).
    #[inline(always)]
    pub(super) fn prefetch_home(&self, h: u64) {
        crate::region::prefetch_ptr(self.ptr.as_ptr().wrapping_add(Table::home_of(h, self.n())));
    }

    /// For a reader without the lock: bit `s` set when slot `s` of bucket
    /// `b` is used and has the tag of `h`, and the bucket's overflow count,
    /// from one read of the bucket (four 16-byte loads on x86_64, then one
    /// compare per four slots and a single mask extraction).
    #[inline(always)]
    fn probe_bucket(&self, b: usize, h: u64) -> (u32, u32) {
        let tag = self.tag(h);
        #[cfg(all(target_arch = "x86_64", not(miri)))]
        {
            let v = self.b()[b].load_sse2();
            // SAFETY: SSE2 is part of the x86_64 baseline (see `masks`).
            unsafe { probe_sse2(&v, tag, self.smax) }
        }
        #[cfg(not(all(target_arch = "x86_64", not(miri))))]
        {
            let w = self.b()[b].load();
            let (mut hit, _) = self.masks::<false>(b, tag, self.smax);
            hit &= SLOT_BITS;
            (hit, (w[7] >> 32) as u32)
        }
    }

    /// The first step of a lookup, for a pipelined probe: the first id of the
    /// home bucket of `h` whose tag matches (0 if none), and whether the
    /// lookup could have any other candidate (a second tag match, or entries
    /// that overflowed past the home bucket).
    #[inline(always)]
    pub(super) fn first_candidate(&self, h: u64) -> (u32, bool) {
        let b = Table::home_of(h, self.n());
        let (m, overflow) = self.probe_bucket(b, h);
        if m == 0 {
            if overflow != 0 {
                // The entry, if any, was displaced past its home: the walk
                // (`find_pinned`, a few lines later in a pipelined caller)
                // reads the next bucket, so fetch it now. At the loads the
                // index is held at (5/6 after a reserve, up to 14/15) this
                // is a few percent of the hits, each a cache miss of its
                // own otherwise.
                crate::region::prefetch_ptr(self.ptr.as_ptr().wrapping_add((b + 1) % self.n()));
            }
            return (0, overflow != 0);
        }
        // The slot is read again: it may have changed since the bucket was
        // compared (then the caller compares another line, or finds 0 and
        // takes the general walk): any id read is an entry of the table.
        let id = self.id_in(self.b()[b].slot(m.trailing_zeros() as usize), self.tag(h));
        (id, m & (m - 1) != 0 || overflow != 0 || id == 0)
    }

    /// [`Buckets::find`] for a reader without the lock, with the home
    /// bucket compared from one read of its words: most lookups end there.
    /// Entries that overflowed past the home bucket take the general walk.
    #[inline]
    pub(super) fn find_pinned(&self, h: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        let b = Table::home_of(h, self.n());
        let (mut m, overflow) = self.probe_bucket(b, h);
        let tag = self.tag(h);
        while m != 0 {
            let s = m.trailing_zeros() as usize;
            m &= m - 1;
            let id = self.id_in(self.b()[b].slot(s), tag);
            if id != 0 && eq(id) {
                return Some(id);
            }
        }
        if overflow == 0 {
            return None;
        }
        self.find::<false>(h, eq)
    }

    /// The first id in the probe sequence of `h` for which `eq` holds
    /// (`LOCKED`: called by the writer side, see [`Table`]). Without
    /// the shard lock this may miss an entry that a concurrent update moves,
    /// never return one that is not in the table.
    #[inline]
    pub(super) fn find<const LOCKED: bool>(
        &self,
        h: u64,
        mut eq: impl FnMut(u32) -> bool,
    ) -> Option<u32> {
        let n = self.n();
        let tag = self.tag(h);
        let mut b = Table::home_of(h, n);
        for _ in 0..n {
            let mut m = self.matches::<LOCKED>(b, tag);
            while m != 0 {
                let s = m.trailing_zeros() as usize;
                m &= m - 1;
                let id = self.id_in(self.b()[b].slot(s), tag);
                if id != 0 && eq(id) {
                    return Some(id);
                }
            }
            if self.b()[b].slot(OVERFLOW) == 0 {
                return None;
            }
            b = if b + 1 == n { 0 } else { b + 1 };
        }
        None
    }

    /// The writer side's lookup before an insert: the first id in the probe
    /// sequence of `h` for which `eq` holds, or else where an insert of `h`
    /// goes (see [`Place`]), so that a miss reads each bucket once (see
    /// [`Buckets::insert_at`]).
    #[inline(always)]
    fn find_or_place(&self, h: u64, mut eq: impl FnMut(u32) -> bool) -> Result<u32, Place> {
        let n = self.n();
        let tag = self.tag(h);
        let home = Table::home_of(h, n);
        let mut b = home;
        let mut at = None;
        for _ in 0..n {
            let (mut m, empty) = self.masks::<true>(b, tag, self.smax);
            while m != 0 {
                let s = m.trailing_zeros() as usize;
                m &= m - 1;
                let id = self.id_in(self.b()[b].slot(s), tag);
                if id != 0 && eq(id) {
                    return Ok(id);
                }
            }
            if at.is_none() && empty != 0 {
                at = Some((b, empty.trailing_zeros() as usize));
            }
            if self.b()[b].slot(OVERFLOW) == 0 {
                break;
            }
            b = if b + 1 == n { 0 } else { b + 1 };
        }
        Err(Place { home, tag, at })
    }

    /// Adds `id` under hash `h` at `place`, from [`Buckets::find_or_place`]
    /// with no change to the table since (the lock holder): the buckets from
    /// the home one up to the place were all full, so each counts one more
    /// entry past it, as [`Buckets::insert`] would have done.
    #[inline(always)]
    fn insert_at(&self, h: u64, id: u32, place: Place) {
        let Some((b, s)) = place.at else {
            return self.insert(h, id);
        };
        debug_assert_eq!(self.b()[b].slot(s), 0);
        self.b()[b].set_slot(s, place.tag + id);
        let n = self.n();
        let mut p = place.home;
        while p != b {
            let o = self.b()[p].slot(OVERFLOW);
            self.b()[p].set_slot(OVERFLOW, o + 1);
            p = if p + 1 == n { 0 } else { p + 1 };
        }
    }

    /// Fills this array, empty and not yet published, with `ids` and their
    /// `hashes` (fewer entries than slots), as inserting them one by one
    /// would place them in home order: the entries are sorted by home bucket
    /// (one counting pass), then the buckets are written in order, each
    /// taking up to 15 of the entries whose home is at or before it that are
    /// not placed yet; those left over are its overflow count. Each bucket
    /// is written once, eight word stores, instead of a probe and a
    /// read-modify-write per entry. (Entries left over at the last bucket
    /// wrap around to the first ones, as an insert would.) Plain stores: the
    /// array reaches readers only through the `Release` store that publishes
    /// it.
    fn fill(&self, ids: &[u32], hashes: &[u64]) {
        debug_assert_eq!(ids.len(), hashes.len());
        debug_assert!(ids.len() < self.n() * BUCKET_SLOTS);
        let n = self.n();
        // `end[b]`: after the scatter, the end of the entries of home <= b.
        let mut end = vec![0u32; n];
        for &h in hashes {
            end[Table::home_of(h, n)] += 1;
        }
        let mut at = 0u32;
        for e in end.iter_mut() {
            let c = *e;
            *e = at;
            at += c;
        }
        let mut vals = vec![0u32; ids.len()];
        for (&id, &h) in ids.iter().zip(hashes) {
            let e = &mut end[Table::home_of(h, n)];
            vals[*e as usize] = self.tag(h) + id;
            *e += 1;
        }
        let mut q = 0usize;
        for (b, bucket) in self.b().iter().enumerate() {
            let e = end[b] as usize;
            let take = (e - q).min(BUCKET_SLOTS);
            let mut w = [0u64; 8];
            for (k, &v) in vals[q..q + take].iter().enumerate() {
                w[k / 2] |= u64::from(v) << (32 * (k & 1));
            }
            q += take;
            w[OVERFLOW / 2] |= ((e - q) as u64) << 32;
            for (word, &x) in bucket.words.iter().zip(&w) {
                if x != 0 {
                    word.store(x, Relaxed);
                }
            }
        }
        // Wrapped entries: their count is already in the overflow counts up
        // to the last bucket; they go on from the first.
        for &v in &vals[q..] {
            self.insert_from(0, v);
        }
    }

    /// Adds `id` under hash `h` (the lock holder; a free slot exists).
    fn insert(&self, h: u64, id: u32) {
        self.insert_from(Table::home_of(h, self.n()), self.tag(h) + id);
    }

    /// Stores slot value `v` in the first bucket from `b` on with room,
    /// counting it in the overflow count of each full bucket it passes (the
    /// lock holder; a free slot exists).
    fn insert_from(&self, mut b: usize, v: u32) {
        let n = self.n();
        loop {
            let empty = self.empties(b);
            if empty != 0 {
                self.b()[b].set_slot(empty.trailing_zeros() as usize, v);
                return;
            }
            let o = self.b()[b].slot(OVERFLOW);
            self.b()[b].set_slot(OVERFLOW, o + 1);
            b = if b + 1 == n { 0 } else { b + 1 };
        }
    }

    /// Removes every entry whose id `dead` holds, in one pass over the
    /// buckets (the lock holder), and returns how many. No hash of a removed
    /// entry is needed: the overflow counts are recomputed from the
    /// survivors that may live past their home bucket (those in a bucket
    /// whose predecessor's count is non-zero: an entry away from home passed
    /// that bucket), which `rehash` hashes; every other survivor is at home.
    ///
    /// Readers without the lock see slots cleared one by one (they may miss
    /// a dying entry, never invent one), and every overflow count on a
    /// survivor's probe path stays at least 1 throughout (the old and the new
    /// count both include it), so no survivor is hidden.
    fn sweep(
        &self,
        mut dead: impl FnMut(u32) -> bool,
        mut rehash: impl FnMut(u32) -> u64,
    ) -> usize {
        let n = self.n();
        let mut removed = 0;
        // Survivors that may be away from home: (bucket, id).
        let mut away: Vec<(u32, u32)> = Vec::new();
        let mut any_overflow = false;
        let mut prev_over = self.b()[n - 1].slot(OVERFLOW);
        for b in 0..n {
            let bucket = &self.b()[b];
            // SAFETY: as in `masks::<true>`: the caller is the writer side.
            let w = unsafe { std::ptr::read(bucket.words.as_ptr().cast::<[u64; 8]>()) };
            let over = (w[7] >> 32) as u32;
            any_overflow |= over != 0;
            #[cfg(target_arch = "x86_64")]
            // SAFETY: SSE2 is part of the x86_64 baseline (see `masks`).
            let empty = unsafe { empties_sse2(&w) };
            #[cfg(not(target_arch = "x86_64"))]
            let empty = self.empties(b);
            let mut used = !empty & SLOT_BITS;
            let mut clear = 0u32;
            while used != 0 {
                let s = used.trailing_zeros() as usize;
                used &= used - 1;
                let id = self.id_of((w[s / 2] >> (32 * (s & 1))) as u32);
                if dead(id) {
                    clear |= 1 << s;
                } else if prev_over != 0 {
                    away.push((b as u32, id));
                }
            }
            if clear != 0 {
                removed += clear.count_ones() as usize;
                for (k, &word) in w.iter().enumerate() {
                    let c = (clear >> (2 * k)) & 3;
                    if c != 0 {
                        let keep = !((u64::from(c & 1) * 0xffff_ffff)
                            | (u64::from(c >> 1) * (0xffff_ffff << 32)));
                        bucket.words[k].store(word & keep, Release);
                    }
                }
            }
            prev_over = over;
        }
        if !any_overflow || removed == 0 {
            return removed;
        }
        let mut over = vec![0u32; n];
        for (b, id) in away {
            let home = Table::home_of(rehash(id), n);
            let mut p = home;
            while p != b as usize {
                over[p] += 1;
                p = if p + 1 == n { 0 } else { p + 1 };
            }
        }
        for (b, &o) in over.iter().enumerate() {
            if self.b()[b].slot(OVERFLOW) != o {
                self.b()[b].set_slot(OVERFLOW, o);
            }
        }
        removed
    }

    /// Removes `id`, inserted under hash `h` (the lock holder); false when
    /// absent.
    fn remove(&self, h: u64, id: u32) -> bool {
        let n = self.n();
        let v = self.tag(h) + id;
        let home = Table::home_of(h, n);
        let mut b = home;
        for _ in 0..n {
            let hit = self.hits_locked(b, v);
            if hit != 0 {
                self.b()[b].set_slot(hit.trailing_zeros() as usize, 0);
                let mut p = home;
                while p != b {
                    let o = self.b()[p].slot(OVERFLOW);
                    self.b()[p].set_slot(OVERFLOW, o - 1);
                    p = if p + 1 == n { 0 } else { p + 1 };
                }
                return true;
            }
            if self.b()[b].slot(OVERFLOW) == 0 {
                break;
            }
            b = if b + 1 == n { 0 } else { b + 1 };
        }
        false
    }
}

/// Where an insert goes, from a lookup that missed
/// ([`Table::find_or_place`]): the home bucket, the tag field, and the first
/// bucket of the walk with an empty slot and that slot (`None` when the walk
/// ended before one: the insert walks on).
#[derive(Clone, Copy, Debug)]
pub(super) struct Place {
    home: usize,
    tag: u32,
    at: Option<(usize, usize)>,
}

/// A bucket array replaced by growth, waiting to be handed to the epoch
/// collector once the new one is published.
pub(super) struct Retired(NonNull<Buckets>);

// SAFETY: a `Retired` owns its array exclusively (it came from
// `Box::into_raw`), and `Buckets` is plain atomics and a box: it may be freed
// from any thread.
unsafe impl Send for Retired {}

impl Retired {
    /// Frees the array.
    ///
    /// # Safety
    /// No thread can still read it: it is no longer published, and every
    /// reader that could have loaded it has unpinned (the caller runs this
    /// from an epoch-deferred function), or there never were such readers.
    pub(super) unsafe fn free(self) {
        // SAFETY: from `Box::into_raw` (`Table::with_pool`/`rebuild`), freed once
        // (`self` is consumed); no reader is left by the caller's contract.
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

/// One shard's table (see the module docs): the writer side of the
/// buckets. It lives in its shard's `Mutex`, so holding `&Table` or `&mut
/// Table` means holding the lock (or owning a table not yet shared), and the
/// only writes to its buckets are made through `&mut Table`: a `&Table` may
/// read them with plain loads (`Buckets::masks::<true>`).
pub(super) struct Table {
    /// The current array, from `Box::into_raw`; freed by `Drop`, or retired
    /// by `rebuild`.
    cur: NonNull<Buckets>,
    len: usize,
    /// Arrays replaced since the last publication (see `ShardCell::set_hint`).
    retired: std::cell::Cell<Vec<Retired>>,
    /// Where the arrays come from, for a large memory (see [`HugePool`]).
    pool: Option<Arc<HugePool>>,
}

// SAFETY: the table owns its arrays (`cur`, `retired`) exclusively; other
// threads only read the published array through shared references and
// atomics, which `Buckets` (atomics and a box) allows from any thread.
unsafe impl Send for Table {}

impl Drop for Table {
    fn drop(&mut self) {
        // SAFETY: the table is dropped with its store: no lock-free reader
        // (they borrow the store) is left; `cur` came from `Box::into_raw`.
        drop(unsafe { Box::from_raw(self.cur.as_ptr()) });
        for r in self.retired.take() {
            // SAFETY: as above, and a retired array is freed only here or by
            // the one deferred function its publication schedules.
            unsafe { r.free() };
        }
    }
}

impl Table {
    /// An empty table of `buckets` buckets for line ids below `range`.
    /// Its arrays come from `pool` while it has room (the heap otherwise).
    pub(super) fn with_pool(range: u64, buckets: usize, pool: Option<Arc<HugePool>>) -> Table {
        let b = Buckets::new(range, buckets, pool.as_ref());
        Table {
            cur: NonNull::from(Box::leak(Box::new(b))),
            len: 0,
            retired: Default::default(),
            pool,
        }
    }

    /// The current bucket array.
    #[inline]
    pub(super) fn shared(&self) -> &Buckets {
        // SAFETY: `cur` is live while the table owns it: it is freed only by
        // `Drop` or, once retired, by a deferred function after `self` has
        // moved on to a new array.
        unsafe { self.cur.as_ref() }
    }

    /// The current array, for publication to lock-free readers.
    pub(super) fn published(&self) -> *mut Buckets {
        self.cur.as_ptr()
    }

    /// The arrays replaced since the last call (the caller publishes the
    /// current one first, then defers their release).
    pub(super) fn take_retired(&self) -> Vec<Retired> {
        self.retired.take()
    }

    /// Buckets needed to hold `n` entries at a load of [`FILL_LOAD`].
    pub(super) fn buckets_for(n: usize) -> usize {
        (n * FILL_LOAD.1)
            .div_ceil(BUCKET_SLOTS * FILL_LOAD.0)
            .max(1)
    }

    /// Home bucket of hash `h` among `n` buckets.
    #[inline]
    pub(super) fn home_of(h: u64, n: usize) -> usize {
        (((h >> 32) * n as u64) >> 32) as usize
    }

    /// True when the current array lies in the table's pool.
    #[cfg(test)]
    pub(super) fn in_pool(&self) -> bool {
        let b = self.shared();
        b.pool
            .as_ref()
            .is_some_and(|p| p.holds(b.ptr.as_ptr().cast()))
    }

    /// Entries.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Allocated bytes.
    pub(super) fn bytes(&self) -> usize {
        self.shared().n() * std::mem::size_of::<Bucket>()
    }

    /// Base of the bucket array and the bucket count (for prefetch hints).
    pub(super) fn hint(&self) -> (*const Bucket, usize) {
        let b = self.shared();
        (b.ptr.as_ptr().cast_const(), b.n())
    }

    /// True when one more entry would pass the maximum load
    /// ([`MAX_LOAD`]).
    #[inline]
    pub(super) fn full(&self) -> bool {
        !self.fits(self.len + 1)
    }

    /// True when `n` entries fit under the maximum load ([`MAX_LOAD`]).
    #[inline]
    pub(super) fn fits(&self, n: usize) -> bool {
        n * MAX_LOAD.1 <= self.shared().n() * BUCKET_SLOTS * MAX_LOAD.0
    }

    /// The bucket count after the next growth ([`GROWTH`]).
    pub(super) fn grown(&self) -> usize {
        let n = self.shared().n();
        n + n * GROWTH.0 / GROWTH.1 + 1
    }

    /// The first id in the probe sequence of `h` for which `eq` holds.
    #[inline]
    pub(super) fn find(&self, h: u64, eq: impl FnMut(u32) -> bool) -> Option<u32> {
        self.shared().find::<true>(h, eq)
    }

    /// See [`Buckets::find_or_place`].
    #[inline(always)]
    pub(super) fn find_or_place(&self, h: u64, eq: impl FnMut(u32) -> bool) -> Result<u32, Place> {
        self.shared().find_or_place(h, eq)
    }

    /// Adds `id` under hash `h` where [`Table::find_or_place`] said (with
    /// no change to the table since). The caller grew the table first when
    /// [`Table::full`], and knows `id` is absent.
    #[inline(always)]
    pub(super) fn insert_at(&mut self, h: u64, id: u32, place: Place) {
        debug_assert!(id != 0 && self.shared().holds(id));
        debug_assert!(self.len < self.shared().n() * BUCKET_SLOTS);
        self.shared().insert_at(h, id, place);
        self.len += 1;
    }

    /// Adds `id` under hash `h`. The caller grows the table first when
    /// [`Table::full`] (so a free slot exists) and knows `id` is absent.
    pub(super) fn insert(&mut self, h: u64, id: u32) {
        debug_assert!(id != 0 && self.shared().holds(id));
        debug_assert!(self.len < self.shared().n() * BUCKET_SLOTS);
        self.shared().insert(h, id);
        self.len += 1;
    }

    /// Removes `id`, which was inserted under hash `h`; false when absent.
    pub(super) fn remove(&mut self, h: u64, id: u32) -> bool {
        let r = self.shared().remove(h, id);
        self.len -= usize::from(r);
        r
    }

    /// Removes every entry whose id `dead` holds (see [`Buckets::sweep`];
    /// `rehash` gives a surviving entry's hash); returns how many.
    pub(super) fn sweep(
        &mut self,
        dead: impl FnMut(u32) -> bool,
        rehash: impl FnMut(u32) -> u64,
    ) -> usize {
        let r = self.shared().sweep(dead, rehash);
        self.len -= r;
        r
    }

    /// Every id in the table, in bucket order.
    pub(super) fn ids(&self) -> Vec<u32> {
        let t = self.shared();
        let mut v = Vec::with_capacity(self.len);
        for bucket in t.b() {
            // SAFETY: as in `masks::<true>`: `&self` is the writer side.
            let w = unsafe { std::ptr::read(bucket.words.as_ptr().cast::<[u64; 8]>()) };
            #[cfg(target_arch = "x86_64")]
            // SAFETY: SSE2 is part of the x86_64 baseline (see `masks`).
            let empty = unsafe { empties_sse2(&w) };
            #[cfg(not(target_arch = "x86_64"))]
            let empty = (0..BUCKET_SLOTS).fold(0u32, |m, s| {
                m | u32::from((w[s / 2] >> (32 * (s & 1))) as u32 == 0) << s
            });
            let mut used = !empty & SLOT_BITS;
            while used != 0 {
                let s = used.trailing_zeros() as usize;
                used &= used - 1;
                v.push(t.id_of((w[s / 2] >> (32 * (s & 1))) as u32));
            }
        }
        v
    }

    /// Rebuilds the table with `buckets` buckets from `ids` (every entry) and
    /// their `hashes`. The old array is retired (see the module docs).
    pub(super) fn rebuild(&mut self, buckets: usize, ids: &[u32], hashes: &[u64]) {
        debug_assert_eq!(ids.len(), hashes.len());
        let t = Buckets::new(
            self.shared().range,
            buckets.max(Self::buckets_for(ids.len())),
            self.pool.as_ref(),
        );
        t.fill(ids, hashes);
        let old = std::mem::replace(&mut self.cur, NonNull::from(Box::leak(Box::new(t))));
        let mut r = self.retired.take();
        r.push(Retired(old));
        self.retired.set(r);
        self.len = ids.len();
    }
}

/// For each slot `s` of the bucket `v` (slots 0..15): bit `s` of the first
/// mask when the slot is used and lies in `base..=base + smax`, bit `s` of
/// the second when it is empty (the four compares packed into one byte mask).
#[cfg(all(target_arch = "x86_64", not(miri)))]
#[target_feature(enable = "sse2")]
#[inline]
fn masks_packed(v: &[std::arch::x86_64::__m128i; 4], base: u32, smax: u32) -> (u32, u32) {
    use std::arch::x86_64::*;
    let z = _mm_setzero_si128();
    let zs = [
        _mm_cmpeq_epi32(v[0], z),
        _mm_cmpeq_epi32(v[1], z),
        _mm_cmpeq_epi32(v[2], z),
        _mm_cmpeq_epi32(v[3], z),
    ];
    let out = outside(v, base, smax);
    let miss = |q: usize| _mm_or_si128(zs[q], out[q]);
    let pack = |a: __m128i, b: __m128i, c: __m128i, d: __m128i| {
        _mm_movemask_epi8(_mm_packs_epi16(
            _mm_packs_epi32(a, b),
            _mm_packs_epi32(c, d),
        )) as u32
    };
    (
        !pack(miss(0), miss(1), miss(2), miss(3)) & SLOT_BITS,
        pack(zs[0], zs[1], zs[2], zs[3]) & SLOT_BITS,
    )
}

/// Per 32-bit lane of the bucket `v`: all ones when the lane's value minus
/// `base` (wrapping) is above `smax` (unsigned: SSE2 compares signed
/// lanes, so both sides are biased by 2^31; the difference's bias is folded
/// into the base: adding 2^31 is subtracting it).
#[cfg(all(target_arch = "x86_64", not(miri)))]
#[target_feature(enable = "sse2")]
#[inline]
fn outside(
    v: &[std::arch::x86_64::__m128i; 4],
    base: u32,
    smax: u32,
) -> [std::arch::x86_64::__m128i; 4] {
    use std::arch::x86_64::*;
    let b = _mm_set1_epi32(base.wrapping_sub(0x8000_0000) as i32);
    let lim = _mm_set1_epi32((smax ^ 0x8000_0000) as i32);
    std::array::from_fn(|q| _mm_cmpgt_epi32(_mm_sub_epi32(v[q], b), lim))
}

/// Bit `s` set when slot `s` of the bucket `v` is used and lies in
/// `base..=base + smax` (slots 0..15), and the overflow count (word 15). The
/// four compares are packed into one byte mask; the test for an empty slot
/// is needed only when `base` is 0 (an empty slot, 0, is below any other).
#[cfg(all(target_arch = "x86_64", not(miri)))]
#[target_feature(enable = "sse2")]
#[inline]
fn probe_sse2(v: &[std::arch::x86_64::__m128i; 4], base: u32, smax: u32) -> (u32, u32) {
    use std::arch::x86_64::*;
    let mut e = outside(v, base, smax);
    if base == 0 {
        let z = _mm_setzero_si128();
        for (e, &x) in e.iter_mut().zip(v) {
            *e = _mm_or_si128(_mm_cmpeq_epi32(x, z), *e);
        }
    }
    let lo = _mm_packs_epi32(e[0], e[1]);
    let hi = _mm_packs_epi32(e[2], e[3]);
    let m = !(_mm_movemask_epi8(_mm_packs_epi16(lo, hi)) as u32) & SLOT_BITS;
    let overflow = _mm_cvtsi128_si32(_mm_shuffle_epi32::<0xff>(v[3])) as u32;
    (m, overflow)
}

/// Bit `s` set when word `s` of `w` (sixteen `u32`, two per `u64`) is zero.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn empties_sse2(w: &[u64; 8]) -> u32 {
    use std::arch::x86_64::*;
    let z = _mm_setzero_si128();
    let mut empty = 0u32;
    for q in 0..4 {
        let v = _mm_set_epi64x(w[2 * q + 1] as i64, w[2 * q] as i64);
        empty |= (_mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(v, z))) as u32) << (4 * q);
    }
    empty
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// A hash with few distinct values, so that tags and homes collide a lot.
    fn h_of(key: u32, spread: u32) -> u64 {
        let x = u64::from(key % spread).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        x ^ (x >> 29)
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u32),
        /// Insert through `find_or_place` and `insert_at` (the store's path).
        Place(u32),
        Remove(u32),
        Find(u32),
        Grow,
        /// Removes every key `k` with `k % m == r` in one sweep.
        Sweep(u32, u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => (1u32..300).prop_map(Op::Insert),
            3 => (1u32..300).prop_map(Op::Place),
            3 => (1u32..300).prop_map(Op::Remove),
            3 => (1u32..300).prop_map(Op::Find),
            1 => Just(Op::Grow),
            2 => (1u32..8, 0u32..8).prop_map(|(m, r)| Op::Sweep(m, r % m)),
        ]
    }

    /// The mixed-radix slot: every tag base plus every id decodes back (by
    /// difference and by `id_of`), a slot of another tag is never taken for
    /// an id, and the tag values cover `0..tags`.
    #[test]
    fn slots_encode_tag_and_id() {
        let mut rng = testkit::Rng::new(11);
        for range in [2u64, 3, 300, 512, 70_000, 9_019_500, (1 << 31) + 1, 1 << 32] {
            let b = Buckets::new(range, 1, None);
            assert_eq!(u64::from(b.tags), (1u64 << 32) / range);
            let mut seen = std::collections::HashSet::new();
            for _ in 0..2000 {
                let h = rng.next_u64();
                let tag = b.tag(h);
                assert_eq!(u64::from(tag) % range, 0);
                seen.insert(u64::from(tag) / range);
                let id = (rng.next_u64() % (range - 1)) as u32 + 1;
                let v = tag + id;
                assert_eq!(b.id_in(v, tag), id);
                assert_eq!(b.id_of(v), id);
                assert_eq!(u64::from(b.id_of(v)), u64::from(v) % range);
                let other = b.tag(rng.next_u64());
                if other != tag {
                    assert_eq!(b.id_in(v, other), 0);
                }
            }
            assert!(seen.iter().all(|&t| t < u64::from(b.tags)));
            if b.tags >= 400 {
                assert!(seen.len() >= 350, "{range}: {} tags seen", seen.len());
            }
        }
    }

    /// Inserting one entry at a time with growth when full: right after each
    /// growth the load is at least 0.61 (14/15 / 1.5, less the rounding of
    /// a small table) and never above 14/15; at the maximum load (just
    /// before a growth) every entry is found, through the locked and the
    /// lock-free paths, and after it the overflow counts are exact.
    #[test]
    fn growth_keeps_the_load_within_bounds() {
        let mut rng = testkit::Rng::new(5);
        let range = 1u64 << 24;
        let mut t = Table::with_pool(range, 1, None);
        let mut keys: Vec<(u32, u64)> = Vec::new();
        let mut growths = 0;
        let mut checked = 0;
        for k in 1..60_000u32 {
            let h = rng.next_u64();
            if t.full() {
                let n = t.shared().n();
                let load = t.len() as f64 / (n * BUCKET_SLOTS) as f64;
                assert!(load <= 14.0 / 15.0 + 1e-9, "load {load} over 14/15");
                if n >= 64 {
                    // At the maximum load: every entry is found.
                    assert!(load > 14.0 / 15.0 - 1.0 / n as f64, "full at {load}");
                    for &(key, kh) in &keys {
                        assert_eq!(t.find(kh, |id| id == key), Some(key));
                        assert_eq!(t.shared().find_pinned(kh, |id| id == key), Some(key));
                    }
                    checked += 1;
                }
                let ids = t.ids();
                let by_id: HashMap<u32, u64> = keys.iter().copied().collect();
                let hs: Vec<u64> = ids.iter().map(|i| by_id[i]).collect();
                t.rebuild(t.grown(), &ids, &hs);
                for r in t.take_retired() {
                    // SAFETY: no reader but this test.
                    unsafe { r.free() };
                }
                growths += 1;
                let m = t.shared().n();
                assert!(m * 2 >= n * 3, "grew {n} -> {m} buckets");
                let after = t.len() as f64 / (m * BUCKET_SLOTS) as f64;
                if n >= 64 {
                    assert!(after >= 0.61, "load {after} after growing {n} -> {m}");
                }
                assert!(after <= 14.0 / 15.0);
                // The rebuild's overflow counts are exact.
                let mut want = vec![0u32; m];
                for &(key, kh) in &keys {
                    let v = t.shared().tag(kh) + key;
                    let mut b = Table::home_of(kh, m);
                    while !(0..BUCKET_SLOTS).any(|s| t.shared().b()[b].slot(s) == v) {
                        want[b] += 1;
                        b = (b + 1) % m;
                    }
                }
                let got: Vec<u32> = t.shared().b().iter().map(|b| b.slot(OVERFLOW)).collect();
                assert_eq!(got, want);
            }
            t.insert(h, k);
            keys.push((k, h));
        }
        assert!(
            growths >= 15 && checked >= 8,
            "{growths} growths, {checked} checked"
        );
        // A table sized for a known count (`buckets_for`) holds it at 5/6.
        let n = Table::buckets_for(keys.len());
        let load = keys.len() as f64 / (n * BUCKET_SLOTS) as f64;
        assert!((0.83..=5.0 / 6.0).contains(&load), "{load}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Against a HashMap model: ids are keys (as line contents are in the
        /// store); `spread` folds them onto few hashes; small id widths leave
        /// many tag bits, 32-bit ids none.
        #[test]
        fn table_matches_model(
            ops in proptest::collection::vec(op(), 1..250),
            spread in 1u32..64,
            range in prop_oneof![Just(300u64), Just(512), Just(70_000), Just(1 << 32)],
            pooled in any::<bool>(),
        ) {
            // A pool of 16 buckets: the small tables come from it (and
            // reuse the extents of the ones growth replaced), larger ones
            // from the heap.
            let pool = pooled.then(|| Arc::new(HugePool::new(16 * 64).expect("map")));
            let mut t = Table::with_pool(range, 1, pool);
            let mut model: HashMap<u32, u64> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(k) => {
                        let h = h_of(k, spread);
                        let found = t.find(h, |id| id == k);
                        prop_assert_eq!(found.is_some(), model.contains_key(&k));
                        if found.is_none() {
                            if t.full() {
                                let ids = t.ids();
                                let hs: Vec<u64> = ids.iter().map(|&i| model[&i]).collect();
                                t.rebuild(t.grown(), &ids, &hs);
                            }
                            t.insert(h, k);
                            model.insert(k, h);
                        }
                    }
                    Op::Place(k) => {
                        let h = h_of(k, spread);
                        if t.full() {
                            let ids = t.ids();
                            let hs: Vec<u64> = ids.iter().map(|&i| model[&i]).collect();
                            t.rebuild(t.grown(), &ids, &hs);
                        }
                        match t.find_or_place(h, |id| id == k) {
                            Ok(id) => {
                                prop_assert_eq!(id, k);
                                prop_assert!(model.contains_key(&k));
                            }
                            Err(place) => {
                                prop_assert!(!model.contains_key(&k));
                                t.insert_at(h, k, place);
                                model.insert(k, h);
                            }
                        }
                    }
                    Op::Remove(k) => {
                        let h = h_of(k, spread);
                        prop_assert_eq!(t.remove(h, k), model.remove(&k).is_some());
                    }
                    Op::Find(k) => {
                        let h = h_of(k, spread);
                        prop_assert_eq!(t.find(h, |id| id == k), model.get(&k).map(|_| k));
                        // The lock-free reader's paths agree.
                        let b = t.shared();
                        prop_assert_eq!(b.find_pinned(h, |id| id == k), model.get(&k).map(|_| k));
                        let (first, more) = b.first_candidate(h);
                        if model.contains_key(&k) {
                            prop_assert!(first == k || more);
                        } else {
                            prop_assert!(first != k);
                        }
                    }
                    Op::Grow => {
                        let ids = t.ids();
                        let hs: Vec<u64> = ids.iter().map(|&i| model[&i]).collect();
                        t.rebuild(t.grown(), &ids, &hs);
                        for r in t.take_retired() {
                            // SAFETY: no reader but this test, which holds
                            // no reference into the replaced array.
                            unsafe { r.free() };
                        }
                    }
                    Op::Sweep(m, r) => {
                        let want = model.keys().filter(|&&k| k % m == r).count();
                        let got = t.sweep(|id| id % m == r, |id| model[&id]);
                        prop_assert_eq!(got, want);
                        model.retain(|&k, _| k % m != r);
                    }
                }
                prop_assert_eq!(t.len(), model.len());
                let mut ids = t.ids();
                ids.sort_unstable();
                let mut keys: Vec<u32> = model.keys().copied().collect();
                keys.sort_unstable();
                prop_assert_eq!(ids, keys);
                prop_assert!(t.len() <= t.shared().n() * BUCKET_SLOTS);
                // The overflow counts are exactly the entries probing past.
                let n = t.shared().n();
                let mut want = vec![0u32; n];
                for (&k, &h) in &model {
                    let home = Table::home_of(h, n);
                    let v = t.shared().tag(h) + k;
                    let mut b = home;
                    while !(0..BUCKET_SLOTS).any(|s| t.shared().b()[b].slot(s) == v) {
                        want[b] += 1;
                        b = (b + 1) % n;
                    }
                }
                let got: Vec<u32> = t.shared().b().iter().map(|b| b.slot(OVERFLOW)).collect();
                prop_assert_eq!(got, want);
            }
        }
    }
}
