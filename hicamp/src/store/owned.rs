//! Owned lines: lines kept out of the dedup index, for received frames that
//! live only until the application copies them out (deduplicating them buys
//! nothing, yet each would pay hash, probe and insert, then rehash and
//! remove on release).
//!
//! An owned line takes a slot from the owned free stack (refilled from the
//! free slots of one shard at a time), gets count 1 with [`OWNED_BIT`] set
//! and its bytes copied in, and is **not** entered in the index: no hash, no
//! probe, no shard lock. Nothing can find it, so only holders of a reference
//! change its count, and its count reaches 0 with no lock: the last release
//! pushes the slot straight back on the owned stack (no epoch either: no
//! lock-free reader reaches a slot except through the index, and the index
//! never holds an owned line).
//!
//! The rule that keeps segments comparable: **every line above an owned line
//! is owned**. [`Store::build_owned`] builds the whole DAG of owned lines,
//! and an interior line that any other path creates (a slice, a splice, a
//! copy-on-write write over a DAG holding owned lines) is made owned when
//! one of its children is ([`Store::has_owned_child`], on the miss path of
//! `find_or_insert`). So an indexed line never has an owned child, a lookup
//! of an interior line over an owned child always misses, and a segment
//! holds an owned line exactly when its root is owned: `Segment` `==` and
//! `Hash` look at the root alone to know whether (root, len) is canonical.
//!
//! Only volatile memories make owned lines ([`Store::owned_enabled`]): a
//! file-backed memory's recovery and fsck know only canonical DAGs, so
//! there [`Store::build_owned`] is never called (the callers intern).

use std::sync::atomic::Ordering::*;

use super::counts::{kind_bit, COUNT_MASK, INTERIOR_BIT, OWNED_BIT};
use super::{is_zero, Store};
use crate::error::{Error, Result};
use crate::id::{LineId, LineKind};

thread_local! {
    /// Per-thread vectors of `build_owned` and `release_owned` (no
    /// allocation per frame): slot ids, and two levels of line ids.
    static SCRATCH: std::cell::Cell<Option<Box<Scratch>>> = const { std::cell::Cell::new(None) };
}

#[derive(Default)]
struct Scratch {
    ids: Vec<u32>,
    freed: Vec<u32>,
    level: Vec<LineId>,
    next: Vec<LineId>,
}

impl Scratch {
    fn take() -> Box<Scratch> {
        SCRATCH.with(|c| c.take()).unwrap_or_default()
    }

    fn put_back(mut self: Box<Self>) {
        // Keep a big frame's vectors from pinning memory for good.
        if self.ids.capacity() > 1 << 16 {
            *self = Scratch::default();
        }
        self.ids.clear();
        self.freed.clear();
        self.level.clear();
        self.next.clear();
        SCRATCH.with(|c| c.set(Some(self)));
    }
}

/// The owned free stack keeps at most this many slots; the rest go to the
/// free bitmap.
const STACK_MAX: usize = 1 << 14;
/// Slots an empty owned stack takes from a shard at once (beyond the need).
const REFILL: usize = 256;
/// Slots [`Store::owned_line`] takes from the owned stack at once (a TX
/// frame's header and interior lines: one lock for the frame).
pub(crate) const OWNED_BATCH: usize = 8;

impl Store {
    /// True when this memory may hold owned lines (a volatile memory).
    #[inline]
    pub(crate) fn owned_enabled(&self) -> bool {
        self.owned.enabled
    }

    /// True for an owned line (false for line 0).
    #[inline]
    pub(crate) fn is_owned(&self, id: LineId) -> bool {
        !id.is_zero() && self.meta.as_slice()[id.0 as usize].load(Relaxed) & OWNED_BIT != 0
    }

    /// True when some child of the interior line `line` is owned (the caller
    /// holds a reference to every child). Free when no owned line was ever
    /// made in this memory.
    #[inline]
    pub(super) fn has_owned_child(&self, line: &[u8]) -> bool {
        if !self.owned.used.load(Relaxed) {
            return false;
        }
        let meta = self.meta.as_slice();
        line.as_chunks::<4>().0.iter().any(|b| {
            let c = u32::from_le_bytes(*b);
            c != 0 && meta[c as usize].load(Relaxed) & OWNED_BIT != 0
        })
    }

    /// Counts an owned interior line made by `find_or_insert` (over an owned
    /// child).
    pub(super) fn note_owned(&self, kind: LineKind, n: u64) {
        let k = super::kind_index(kind);
        self.owned.created[k].fetch_add(n, Relaxed);
    }

    /// Takes `n` free slots for owned lines into `ids`: from the owned stack,
    /// then from a shard's free slots. False (nothing taken) when the memory
    /// has not that many.
    fn alloc_owned(&self, n: usize, ids: &mut Vec<u32>) -> bool {
        {
            let mut st = self.owned.free.lock();
            let k = st.len().min(n);
            let at = st.len() - k;
            ids.extend(st.drain(at..).rev());
        }
        if ids.len() == n {
            return true;
        }
        let want = n - ids.len();
        let mut extra = Vec::with_capacity(REFILL);
        for attempt in 0..2 {
            {
                let i = self.owned.next_shard.fetch_add(1, Relaxed) % self.shards.len();
                let mut shard = self.shards[i].lock.lock();
                while ids.len() < n {
                    match self.alloc_slot(&mut shard) {
                        Some(id) => ids.push(id),
                        None => break,
                    }
                }
                if ids.len() == n {
                    // Stock up for the next frames (a small memory keeps
                    // its slots where every path finds them).
                    let stock = REFILL.max(want).min((self.slots / 256) as usize);
                    while extra.len() < stock {
                        match self.alloc_slot(&mut shard) {
                            Some(id) => extra.push(id),
                            None => break,
                        }
                    }
                }
            }
            if ids.len() == n {
                self.give_back_owned(&extra);
                return true;
            }
            if attempt == 0 {
                // Nearly full: every free list back to the bitmap, and the
                // slots waiting for an epoch that can come back.
                self.drain_free_lists();
            }
        }
        self.give_back_owned(ids);
        ids.clear();
        false
    }

    /// Returns free slots (count 0) to the owned stack, the overflow to the
    /// free bitmap.
    fn give_back_owned(&self, ids: &[u32]) {
        if ids.is_empty() {
            return;
        }
        let mut st = self.owned.free.lock();
        let room = STACK_MAX.saturating_sub(st.len()).min(ids.len());
        st.extend_from_slice(&ids[..room]);
        drop(st);
        if room < ids.len() {
            let rest = &ids[room..];
            self.free_slots(rest.iter().copied());
            self.free_count.fetch_add(rest.len() as u64, Relaxed);
        }
    }

    /// Moves the owned stack to the free bitmap (a full memory drains every
    /// free list).
    pub(super) fn drain_owned(&self) {
        let ids: Vec<u32> = std::mem::take(&mut *self.owned.free.lock());
        let n = ids.len() as u64;
        self.free_slots(ids);
        self.free_count.fetch_add(n, Relaxed);
    }

    /// Slots on the owned stack (tests).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn owned_stack_len(&self) -> usize {
        self.owned.free.lock().len()
    }

    /// Builds the canonical-shaped DAG of `data` (non-empty) from owned
    /// lines: the same leaves (all-zero ones are line 0), the same interior
    /// levels (`height(leaves)` of them, all-zero groups are line 0) as
    /// `intern_tree`, but every stored line owned. Returns the root (a
    /// reference the caller owns) and the height.
    pub(crate) fn build_owned(
        &self,
        data: &[u8],
        height: impl Fn(usize) -> u32,
    ) -> Result<(LineId, u32)> {
        debug_assert!(self.owned.enabled && !data.is_empty());
        if !self.owned.used.load(Relaxed) {
            self.owned.used.store(true, Relaxed);
        }
        let ls = self.line_size();
        let fan = self.fanout();
        let n = data.len().div_ceil(ls);
        let h = height(n);
        // Slots for every line there could be (zero ones are given back).
        let mut total = n;
        let mut w = n;
        for _ in 0..h {
            w = w.div_ceil(fan);
            total += w;
        }
        let mut sc = Scratch::take();
        let r = self.build_owned_in(data, h, total, &mut sc);
        sc.put_back();
        r
    }

    fn build_owned_in(
        &self,
        data: &[u8],
        h: u32,
        total: usize,
        sc: &mut Scratch,
    ) -> Result<(LineId, u32)> {
        let ls = self.line_size();
        let fan = self.fanout();
        let Scratch {
            ids, level, next, ..
        } = sc;
        if !self.alloc_owned(total, ids) {
            return Err(Error::CapacityExhausted {
                capacity: self.capacity(),
            });
        }
        let meta = self.meta.as_slice();
        let mut used = 0;
        let mut made = [0u64; 2];
        let leaf = kind_bit(LineKind::Leaf) | OWNED_BIT | 1;
        // 64-byte lines (the default) go through a loop of fixed-size
        // copies and zero tests; other sizes and a short last line through
        // the general one.
        let rest = if ls == 64 {
            let (lines, rest) = data.as_chunks::<64>();
            for line in lines {
                if is_zero(line) {
                    level.push(LineId::ZERO);
                    continue;
                }
                let id = ids[used];
                used += 1;
                // SAFETY: `id` was just taken from the free slots, so this
                // thread owns it exclusively (64 bytes at `slot_ptr`, one
                // line); nothing can reach it (it is never in the index)
                // until the caller hands out the root.
                unsafe {
                    std::ptr::copy_nonoverlapping(line.as_ptr(), self.arena.slot_ptr(id), 64);
                }
                meta[id as usize].store(leaf, Relaxed);
                level.push(LineId(id));
            }
            rest
        } else {
            data
        };
        for chunk in rest.chunks(ls) {
            if is_zero(chunk) {
                level.push(LineId::ZERO);
                continue;
            }
            let id = ids[used];
            used += 1;
            // SAFETY: as above.
            unsafe { self.arena.write(id, chunk) };
            meta[id as usize].store(leaf, Relaxed);
            level.push(LineId(id));
        }
        made[0] = used as u64;
        for _ in 0..h {
            next.clear();
            for group in level.chunks(fan) {
                if group.iter().all(|c| c.is_zero()) {
                    next.push(LineId::ZERO);
                    continue;
                }
                let id = ids[used];
                used += 1;
                super::with_line(ls, |buf| {
                    for (b, c) in buf.chunks_exact_mut(4).zip(group) {
                        b.copy_from_slice(&c.0.to_le_bytes());
                    }
                    // SAFETY: as for the leaves above.
                    unsafe { self.arena.write(id, buf) };
                });
                meta[id as usize].store(INTERIOR_BIT | OWNED_BIT | 1, Relaxed);
                made[1] += 1;
                next.push(LineId(id));
            }
            std::mem::swap(level, next);
        }
        debug_assert_eq!(level.len(), 1);
        self.give_back_owned(&ids[used..]);
        for (k, m) in made.iter().enumerate() {
            if *m > 0 {
                self.owned.created[k].fetch_add(*m, Relaxed);
            }
        }
        Ok((level[0], h))
    }

    /// One owned line of `kind` holding `line` (a whole line; for an
    /// interior line, child ids whose references it takes over), its slot
    /// from `spare` (refilled from the owned stack [`OWNED_BATCH`] at a
    /// time; the caller gives what is left back with
    /// [`Store::give_back_spare`]). An all-zero line is line 0. Counts the
    /// line into `made` (by kind; the caller passes it to
    /// [`Store::note_owned`]). On error (the memory is full) nothing is
    /// taken: the caller still owns the children's references.
    pub(crate) fn owned_line(
        &self,
        kind: LineKind,
        line: &[u8],
        spare: &mut Vec<u32>,
        made: &mut [u64; 2],
    ) -> Result<LineId> {
        debug_assert!(self.owned.enabled && line.len() == self.line_size());
        if is_zero(line) {
            return Ok(LineId::ZERO);
        }
        if spare.is_empty() && !self.alloc_owned(OWNED_BATCH, spare) && !self.alloc_owned(1, spare)
        {
            return Err(Error::CapacityExhausted {
                capacity: self.capacity(),
            });
        }
        if !self.owned.used.load(Relaxed) {
            self.owned.used.store(true, Relaxed);
        }
        let id = spare.pop().expect("refilled");
        // SAFETY: `id` was taken from the free slots (the owned stack or a
        // shard's), so this thread owns it exclusively; nothing can reach it
        // (it is never in the index) until the caller hands out the root.
        unsafe { self.arena.write(id, line) };
        self.meta.as_slice()[id as usize].store(kind_bit(kind) | OWNED_BIT | 1, Relaxed);
        made[super::kind_index(kind)] += 1;
        Ok(LineId(id))
    }

    /// Gives the slots [`Store::owned_line`] did not use back to the owned
    /// stack, and counts the lines it made.
    pub(crate) fn give_back_spare(&self, spare: &mut Vec<u32>, made: &mut [u64; 2]) {
        self.give_back_owned(spare);
        spare.clear();
        for (k, m) in made.iter_mut().enumerate() {
            if *m > 0 {
                self.owned.created[k].fetch_add(*m, Relaxed);
                *m = 0;
            }
        }
    }

    /// Frees the owned lines of `stack`, each at its last reference (count
    /// 1, held by this thread), and what dies below them: owned children
    /// whose last reference goes are freed here, and the references to
    /// indexed children go through [`Store::release_all`].
    pub(super) fn release_owned(&self, roots: &[u32]) {
        let mut sc = Scratch::take();
        self.release_owned_in(roots, &mut sc);
        sc.put_back();
    }

    fn release_owned_in(&self, roots: &[u32], sc: &mut Scratch) {
        let meta = self.meta.as_slice();
        let Scratch {
            ids: stack,
            freed,
            level: indexed,
            ..
        } = sc;
        stack.extend_from_slice(roots);
        let mut died = [0u64; 2];
        while let Some(id) = stack.pop() {
            // Acquire: the other holders' last reads of the line (their
            // decrements are `Release`) come before its reuse. A load and a
            // store, not a swap: at count 1 this thread holds the only
            // reference and an owned line is in no index, so nothing else
            // writes the byte now (x86's `xchg` drained the store buffer on
            // every line: 63% of this function's samples in a bulk receive).
            let prev = meta[id as usize].load(Acquire);
            meta[id as usize].store(0, Relaxed);
            debug_assert!(
                prev & OWNED_BIT != 0 && prev & COUNT_MASK == 1,
                "owned release of L{id} at {prev:#x}"
            );
            if prev & INTERIOR_BIT != 0 {
                died[1] += 1;
                for b in self.line(LineId(id)).as_chunks::<4>().0 {
                    let c = u32::from_le_bytes(*b);
                    if c == 0 {
                        continue;
                    }
                    if meta[c as usize].load(Relaxed) & OWNED_BIT != 0 {
                        if self.dec_unless_last(c) {
                            stack.push(c);
                        }
                    } else {
                        indexed.push(LineId(c));
                    }
                }
            } else {
                died[0] += 1;
            }
            freed.push(id);
        }
        for (k, d) in died.iter().enumerate() {
            if *d > 0 {
                self.owned.released[k].fetch_add(*d, Release);
            }
        }
        self.give_back_owned(freed);
        if !indexed.is_empty() {
            self.release_all(indexed);
        }
    }
}

/// The owned-line state of a store.
pub(crate) struct Owned {
    /// Owned lines may be made (a volatile memory).
    pub(super) enabled: bool,
    /// An owned line was made once (until then no interior line checks
    /// its children).
    pub(super) used: std::sync::atomic::AtomicBool,
    /// Free slots kept for owned lines (a stack: the slots of the frames
    /// just released, still in the cache, come back first).
    pub(super) free: crate::sync::Mutex<Vec<u32>>,
    /// The shard the next refill takes its slots from.
    pub(super) next_shard: crate::sync::AtomicUsize,
    /// Owned lines made, by kind.
    pub(super) created: [crossbeam_utils::CachePadded<crate::sync::AtomicU64>; 2],
    /// Owned lines freed, by kind. The live ones are the difference (see
    /// [`Owned::live`]): a frame's build then moves one counter per kind,
    /// not two (they were a quarter of a 64-byte frame's build).
    pub(super) released: [crossbeam_utils::CachePadded<crate::sync::AtomicU64>; 2],
}

impl Owned {
    pub(super) fn new(enabled: bool) -> Owned {
        use crate::sync::AtomicU64;
        use crossbeam_utils::CachePadded;
        Owned {
            enabled,
            used: std::sync::atomic::AtomicBool::new(false),
            free: crate::sync::Mutex::new(Vec::new()),
            next_shard: crate::sync::AtomicUsize::new(0),
            created: [
                CachePadded::new(AtomicU64::new(0)),
                CachePadded::new(AtomicU64::new(0)),
            ],
            released: [
                CachePadded::new(AtomicU64::new(0)),
                CachePadded::new(AtomicU64::new(0)),
            ],
        }
    }

    /// Live owned lines of kind `k`, and those made. The freed count is read first (acquire,
    /// against the release of every free): every line is made before it is freed, so the
    /// made count read after it is never smaller.
    pub(super) fn live(&self, k: usize) -> (u64, u64) {
        let released = self.released[k].load(Acquire);
        let created = self.created[k].load(Relaxed);
        (created.saturating_sub(released), created)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::collections::hash_map::DefaultHasher;
    use std::hash::{Hash, Hasher};

    use proptest::prelude::*;

    use crate::{Config, Memory, Piece, Segment, SegmentSlice};

    fn memory(lines: u64) -> Memory {
        Memory::new(Config {
            line_size: 64,
            capacity_lines: lines,
            map_capacity: 16,
            ..Config::default()
        })
        .unwrap()
    }

    fn hash_of(s: &Segment) -> u64 {
        let mut h = DefaultHasher::new();
        s.hash(&mut h);
        h.finish()
    }

    /// Every line of the memory is accounted for, and nothing is live.
    fn empty_and_whole(mem: &Memory) {
        assert_eq!(mem.live_lines(), 0);
        let st = mem.stats();
        assert_eq!((st.owned_leaf_lines, st.owned_interior_lines), (0, 0));
        assert_eq!(mem.inner.store.unaccounted_slots(), 0);
    }

    /// Bytes from a pool of a few distinct lines (and zero lines), so that
    /// equal content turns up often.
    fn bytes(seed: &[u8], len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len);
        let mut i = 0;
        while v.len() < len {
            let k = seed[i % seed.len()];
            i += 1;
            let b = if k.is_multiple_of(5) { 0 } else { k };
            let n = (len - v.len()).min(64);
            v.extend(std::iter::repeat_n(b, n));
        }
        v
    }

    /// A frame spliced with owned lines (`splice_owned`): metadata, zero
    /// headroom and headers in owned lines, the payload's aligned lines
    /// and subtrees shared (not copied, still indexed), unaligned parts
    /// copied into owned lines; equal to `splice` of the same pieces, and
    /// every slot back after the drops.
    #[test]
    fn splice_owned_frames_share_the_payload_and_free() {
        let mem = memory(1 << 14);
        let small = bytes(&[3, 7, 11, 13], 200);
        let page: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 1) as u8).collect();
        let big: Vec<u8> = (0..40_000u32).map(|i| (i * 13 + 5) as u8 | 1).collect();
        let meta = [9u8; 32];
        let hdrs: Vec<u8> = (0..240u8).map(|i| i | 0x80).collect();
        for payload in [&small, &page, &big] {
            let src = mem.segment(payload).unwrap();
            let live = mem.live_lines();
            // Unaligned (copied), line-aligned (leaves shared) and, at 752
            // zeros, subtree-aligned (whole subtrees of the payload shared).
            for (zeros, from) in [(0u64, 0usize), (40, 3), (48, 0), (112, 64), (752, 0)] {
                let sl = SegmentSlice::new(src.clone(), from as u64, payload.len() - from);
                let pieces = [
                    Piece::Bytes(&meta),
                    Piece::Zeros(zeros),
                    Piece::Bytes(&hdrs),
                    Piece::Range(&sl),
                ];
                let (o, oc) = mem.splice_owned(&pieces).unwrap();
                let (c, cc) = mem.splice(&pieces).unwrap();
                assert_eq!(o.to_vec(), c.to_vec());
                assert!(o == c && !o.is_canonical() && c.is_canonical());
                assert_eq!(o.height(), c.height());
                assert_eq!(hash_of(&o), hash_of(&c));
                assert_eq!(
                    (oc.shared_bytes, oc.copied_bytes),
                    (cc.shared_bytes, cc.copied_bytes)
                );
                let st = mem.stats();
                assert!(st.owned_leaf_lines >= 1, "{st:?}");
                let aligned = (32 + zeros + 240) % 64 == from as u64 % 64;
                assert_eq!(oc.copied_bytes == 0, aligned, "{oc:?}");
                if zeros == 752 && payload.len() >= 2048 {
                    assert!(oc.shared_subtrees > 0, "{oc:?}");
                }
                drop(c);
                // Every line the owned frame's interior references is
                // either owned or was indexed before (the payload's).
                drop(o);
                assert_eq!(mem.live_lines(), live);
                let st = mem.stats();
                assert_eq!((st.owned_leaf_lines, st.owned_interior_lines), (0, 0));
            }
            drop(src);
            empty_and_whole(&mem);
        }
        // Bytes and zeros only (an ACK, an ARP reply): the flat path.
        let (o, _) = mem
            .splice_owned(&[
                Piece::Bytes(&meta),
                Piece::Zeros(10),
                Piece::Bytes(&hdrs[..54]),
            ])
            .unwrap();
        let (c, _) = mem
            .splice(&[
                Piece::Bytes(&meta),
                Piece::Zeros(10),
                Piece::Bytes(&hdrs[..54]),
            ])
            .unwrap();
        assert!(o == c && !o.is_canonical());
        drop((o, c));
        empty_and_whole(&mem);
    }

    /// An owned segment: the same bytes, the same shape, owned lines that
    /// leave the index alone, and every slot back after the drop.
    #[test]
    fn an_owned_segment_reads_back_and_frees() {
        let mem = memory(1 << 12);
        let data: Vec<u8> = (0..5000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 1)
            .collect();
        let canon = mem.segment(&data).unwrap();
        let live = mem.live_lines();
        let o = mem.segment_owned(&data).unwrap();
        assert!(!o.is_canonical() && canon.is_canonical());
        assert_eq!(o.to_vec(), data);
        assert_eq!(o.height(), canon.height());
        assert_ne!(o.root(), canon.root());
        assert_eq!(mem.live_lines(), 2 * live);
        let st = mem.stats();
        assert_eq!(
            st.owned_leaf_lines + st.owned_interior_lines,
            live,
            "{st:?}"
        );
        assert!(o == canon);
        assert!(canon == o, "== is symmetric");
        assert_eq!(hash_of(&o), hash_of(&canon));
        // The canonical copy behind the hash is the existing segment's.
        assert_eq!(mem.live_lines(), 2 * live);
        drop(canon);
        assert_eq!(o.to_vec(), data);
        drop(o);
        empty_and_whole(&mem);
        // The slots come back from the owned stack: fill the memory twice.
        for round in 0..3u8 {
            let segs: Vec<Segment> = (0..30u32)
                .map(|i| {
                    let d: Vec<u8> = (0..6000u32)
                        .map(|j| (j ^ i ^ u32::from(round)) as u8 | 1)
                        .collect();
                    mem.segment_owned(&d).unwrap()
                })
                .collect();
            drop(segs);
            empty_and_whole(&mem);
        }
    }

    /// Every line size: the same bytes and shape as the canonical build
    /// (zero lines included), and nothing left.
    #[test]
    fn owned_segments_at_every_line_size() {
        for ls in [16usize, 32, 64, 128, 4096] {
            let mem = Memory::new(Config {
                line_size: ls,
                capacity_lines: 1 << 12,
                map_capacity: 4,
                ..Config::default()
            })
            .unwrap();
            for len in [1usize, ls - 1, ls, 3 * ls + 5, 40 * ls] {
                let mut d: Vec<u8> = (0..len as u32).map(|i| (i % 251) as u8 | 1).collect();
                // A zero line in the middle.
                if len > 2 * ls {
                    d[ls..2 * ls].fill(0);
                }
                let o = mem.segment_owned(&d).unwrap();
                let c = mem.segment(&d).unwrap();
                assert_eq!(o.to_vec(), d, "ls {ls} len {len}");
                assert_eq!(o.height(), c.height(), "ls {ls} len {len}");
                assert!(o == c, "ls {ls} len {len}");
            }
            empty_and_whole(&mem);
        }
    }

    /// A file-backed memory makes canonical segments.
    #[test]
    fn a_file_memory_makes_no_owned_lines() {
        let d = tempfile::tempdir().unwrap();
        let m = Memory::create(
            d.path().join("m.hicamp"),
            Config {
                line_size: 64,
                capacity_lines: 1 << 10,
                map_capacity: 4,
                ..Config::default()
            },
        )
        .unwrap();
        assert!(!m.owned_lines_enabled());
        let s = m.segment_owned(&[3u8; 500]).unwrap();
        assert!(s.is_canonical());
        assert!(s == m.segment(&[3u8; 500]).unwrap());
    }

    /// A splice over an owned segment (headers in front, a sub-range of
    /// its payload) is owned above the shared lines, equal to the
    /// canonical segment of its bytes, and interning that content again
    /// finds only canonical lines.
    #[test]
    fn splices_of_owned_segments_stay_owned_above_them() {
        let mem = memory(1 << 12);
        let data: Vec<u8> = (0..3000u32).map(|i| (i * 13 + 5) as u8).collect();
        let o = mem.segment_owned(&data).unwrap();
        let payload = SegmentSlice::new(o.clone(), 128, 2048);
        let (sp, _) = mem
            .splice(&[Piece::Bytes(&[9u8; 64]), Piece::Range(&payload)])
            .unwrap();
        assert!(!sp.is_canonical());
        let mut want = vec![9u8; 64];
        want.extend_from_slice(&data[128..128 + 2048]);
        assert_eq!(sp.to_vec(), want);
        let c = mem.segment(&want).unwrap();
        assert!(c.is_canonical() && sp == c);
        assert_eq!(hash_of(&sp), hash_of(&c));
        // A copy-on-write write keeps it right.
        let mut w = sp.to_mut();
        w.write_at(70, b"hello").unwrap();
        want[70..75].copy_from_slice(b"hello");
        let w = w.freeze();
        assert_eq!(w.to_vec(), want);
        assert!(w == mem.segment(&want).unwrap());
        drop((o, payload, sp, c, w));
        empty_and_whole(&mem);
    }

    #[derive(Debug, Clone)]
    enum Make {
        Canonical,
        Owned,
        /// A splice of (bytes, a range of an earlier segment, bytes).
        Splice(usize, u16, u16, u8),
        /// A copy-on-write write into an earlier segment.
        Write(usize, u16, u8),
    }

    fn make() -> impl Strategy<Value = Make> {
        prop_oneof![
            Just(Make::Canonical),
            Just(Make::Owned),
            (any::<usize>(), any::<u16>(), any::<u16>(), any::<u8>())
                .prop_map(|(i, a, b, c)| Make::Splice(i, a, b, c)),
            (any::<usize>(), any::<u16>(), any::<u8>()).prop_map(|(i, a, b)| Make::Write(i, a, b)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Against a model of plain bytes, whatever mix of owned and
        /// canonical lines: equal bytes <=> equal segments, equal bytes =>
        /// equal hashes, reads match, and everything is freed at the end.
        #[test]
        fn equality_and_hash_follow_the_bytes(
            specs in proptest::collection::vec(
                (proptest::collection::vec(1u8..12, 1..8), 0usize..700, make()),
                1..24,
            ),
        ) {
            let mem = memory(1 << 13);
            let mut segs: Vec<(Vec<u8>, Segment)> = Vec::new();
            for (seed, len, how) in specs {
                let d = bytes(&seed, len);
                let made = match how {
                    Make::Canonical => (d.clone(), mem.segment(&d).unwrap()),
                    Make::Owned => (d.clone(), mem.segment_owned(&d).unwrap()),
                    Make::Splice(i, a, b, c) if !segs.is_empty() => {
                        let (src, s) = &segs[i % segs.len()];
                        let a = usize::from(a) % (src.len() + 1);
                        let b = usize::from(b) % (src.len() - a + 1);
                        let r = SegmentSlice::new(s.clone(), a as u64, b);
                        let head = &d[..d.len().min(usize::from(c) % 130)];
                        let (sp, _) = mem
                            .splice(&[Piece::Bytes(head), Piece::Range(&r), Piece::Bytes(&d)])
                            .unwrap();
                        let mut want = head.to_vec();
                        want.extend_from_slice(&src[a..a + b]);
                        want.extend_from_slice(&d);
                        (want, sp)
                    }
                    Make::Write(i, a, c) if !segs.is_empty() => {
                        let (src, s) = &segs[i % segs.len()];
                        let a = usize::from(a) % (src.len() + 1);
                        let mut w = s.to_mut();
                        let patch = vec![c; 70];
                        w.write_at(a as u64, &patch).unwrap();
                        let mut want = src.clone();
                        want.resize(want.len().max(a + 70), 0);
                        want[a..a + 70].copy_from_slice(&patch);
                        (want, w.freeze())
                    }
                    _ => (d.clone(), mem.segment_owned(&d).unwrap()),
                };
                prop_assert_eq!(&made.1.to_vec(), &made.0);
                segs.push(made);
            }
            for (da, a) in &segs {
                for (db, b) in &segs {
                    prop_assert_eq!(a == b, da == db);
                    if da == db {
                        prop_assert_eq!(hash_of(a), hash_of(b));
                    }
                }
                // A canonical copy is canonical and equal.
                let c = a.canonical().unwrap();
                prop_assert!(c.is_canonical() && &c == a);
            }
            drop(segs);
            assert_eq!(mem.live_lines(), 0);
            prop_assert_eq!(mem.inner.store.unaccounted_slots(), 0);
        }
    }
}
