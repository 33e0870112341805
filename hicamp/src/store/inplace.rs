//! In-place interning: a caller's reader (a `pread` of a file, a `read` of a
//! descriptor, any `FnMut(&mut [u8]) -> io::Result<usize>`) writes straight
//! into free line slots of the arena, and the lines are deduplicated where
//! they lie. The one copy of the bytes is the reader's (the kernel's, for a
//! file): hicamp copies none.
//!
//! ```text
//!   reserve a run of slots    read into it          hash + dedup in place
//!   [ s  s+1  s+2  s+3 ]  ->  [ A   B    A   0  ]  ->  A: new, indexed at s
//!     (take_run, or slots                               B: new, indexed at s+1
//!      taken one by one and                             A: hit, slot s+2 given back
//!      read run by run)                                 0: zero line, s+3 given back
//! ```
//!
//! Then the interior levels are built from the leaf ids as any segment build
//! does (`intern_interior_level`), so the root is the one `Memory::segment`
//! gives for the same bytes.
//!
//! The slot protocol is the store's: a slot taken from a free list or the
//! fresh range belongs to this thread until it is published. The reader
//! writes it while no index entry names it (no lock-free reader can reach it:
//! a freed slot returns to the free bitmap only after an epoch), a new line
//! is published by its index insert under the shard lock (a `Release` store
//! of the entry, as for a copied line), and a slot that is not published (a
//! duplicate, a zero line, a line the reader never reached) goes straight
//! back to the free bitmap: it was never reachable, so it needs no epoch.
//!
//! Nothing is pinned while the reader runs (a read may block for long; a pin
//! would hold back every thread's freed slots meanwhile): only the lock-free
//! probe of a chunk's lines is.
//!
//! A read that ends early (end of file, a file truncated meanwhile, an
//! error) or a memory that fills makes a shorter segment when some bytes
//! were read, and a typed error when none were; slots are returned on every
//! path (a guard gives them back if the reader panics).

use std::io::{self, IoSliceMut};
use std::sync::atomic::Ordering::*;

use super::counts::{kind_bit, INTERIOR_BIT};
use super::index::lines_eq;
use super::{is_zero, kind_index, line_hash, Store, WriteCounts, SHARDS};
use crate::config::Durability;
use crate::error::Error;
use crate::id::{LineId, LineKind};
use crate::sync::epoch::LOCK_FREE_HITS;

/// Bytes read (and slots reserved) per chunk: one reader call per chunk when
/// its slots are consecutive.
const CHUNK_BYTES: usize = 256 << 10;
/// Attempts to reclaim slots waiting for an epoch before a full memory stops
/// the read (as `intern_hashed` does: yields, then 1 ms sleeps).
const RECLAIM_TRIES: usize = 112;
/// Lock-free probes of a chunk before a chunk of misses stops probing.
const PROBE_SAMPLE: i32 = 64;
/// How far ahead of its compare a line's bucket is read (and its candidate prefetched).
const PROBE_AHEAD: usize = 8;

/// Why an in-place build stopped short of its length, or failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The reader failed (`EINTR` is retried, never reported).
    #[error("read failed: {0}")]
    Read(#[from] io::Error),
    /// The memory could not take the lines (it is full).
    #[error(transparent)]
    Memory(#[from] Error),
}

/// What an in-place build read and made, below the segment itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadCounts {
    /// Bytes the reader wrote into line slots (the segment's length).
    pub bytes: u64,
    /// Calls of the reader (one per run of consecutive slots, plus short
    /// reads and retried interruptions).
    pub reads: u64,
    /// Reader calls interrupted (`EINTR`) and retried.
    pub interrupted: u64,
    /// Bytes hicamp itself copied: always 0 on this path (the reader's copy
    /// is the only one), kept so that callers can count it like the others.
    pub copied_bytes: u64,
    /// What the leaf lines did (new, deduplicated, zero).
    pub lines: WriteCounts,
}

/// The leaves of an in-place build (owned references), and how it ended.
pub(crate) struct Filled {
    /// The root (owned) and height of the built tree, `(ZERO, 0)` when empty.
    pub root: LineId,
    pub height: u32,
    pub counts: ReadCounts,
    /// Why fewer than the asked bytes were read (`None`: all of them, or the
    /// end of the input).
    pub stopped: Option<ReadError>,
}

/// Slots taken and not yet published: given back on drop.
struct Held<'a> {
    store: &'a Store,
    ids: Vec<u32>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.store.give_back(&self.ids);
        self.ids.clear();
    }
}

/// Owned leaf references: released on drop unless taken.
struct Leaves<'a> {
    store: &'a Store,
    ids: Vec<LineId>,
}

impl Drop for Leaves<'_> {
    fn drop(&mut self) {
        self.store.release_all(&self.ids);
    }
}

/// Where the fallback slot allocation starts (spreads callers over shards).
static NEXT_SHARD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Store {
    /// Builds the canonical tree of up to `len` bytes that `read` writes
    /// straight into line slots (see the module docs). `len` must be a valid
    /// segment length (checked by the caller). Returns the owned root, or an
    /// error when not a byte could be read or the memory could not hold
    /// what was.
    pub(crate) fn intern_tree_from(
        &self,
        len: u64,
        read: &mut dyn FnMut(&mut [IoSliceMut<'_>]) -> io::Result<usize>,
        height: impl Fn(usize) -> u32,
    ) -> Result<Filled, ReadError> {
        let ls = self.line_size();
        let mut counts = ReadCounts::default();
        let mut leaves = Leaves {
            store: self,
            ids: Vec::with_capacity((len.min(1 << 30) as usize).div_ceil(ls)),
        };
        let mut stopped = None;
        let mut eof = false;
        while counts.bytes < len && !eof && stopped.is_none() {
            let want = (len - counts.bytes).min(CHUNK_BYTES.max(ls) as u64) as usize;
            let (got, end) = self.fill_chunk(want, read, &mut leaves.ids, &mut counts);
            counts.bytes += got as u64;
            match end {
                ChunkEnd::More => {}
                ChunkEnd::Eof => eof = true,
                ChunkEnd::Stop(e) => stopped = Some(e),
            }
        }
        if leaves.ids.is_empty() {
            return match stopped {
                Some(e) => Err(e),
                None => Ok(Filled {
                    root: LineId::ZERO,
                    height: 0,
                    counts,
                    stopped: None,
                }),
            };
        }
        let h = height(leaves.ids.len());
        let mut level = std::mem::take(&mut leaves.ids);
        drop(leaves);
        let mut next = Vec::with_capacity(level.len().div_ceil(self.fanout()));
        for _ in 0..h {
            next.clear();
            // Consumes `level`'s references, on error too.
            self.intern_interior_level(&level, &mut next)?;
            std::mem::swap(&mut level, &mut next);
        }
        debug_assert_eq!(level.len(), 1);
        Ok(Filled {
            root: level[0],
            height: h,
            counts,
            stopped,
        })
    }

    /// Reads up to `want` bytes into slots and interns them in place,
    /// appending one owned leaf id per line to `out`. Returns the bytes read
    /// and whether to go on.
    fn fill_chunk(
        &self,
        want: usize,
        read: &mut dyn FnMut(&mut [IoSliceMut<'_>]) -> io::Result<usize>,
        out: &mut Vec<LineId>,
        counts: &mut ReadCounts,
    ) -> (usize, ChunkEnd) {
        let ls = self.line_size();
        let lines = want.div_ceil(ls);
        let mut held = Held {
            store: self,
            ids: Vec::with_capacity(lines),
        };
        match self.take_run(lines) {
            Some(start) => held.ids.extend(start..start + lines as u32),
            None => {
                #[cfg(all(test, not(loom)))]
                tests::FALLBACKS.with(|c| c.set(c.get() + 1));
                if let Err(e) = self.take_slots(lines, &mut held.ids) {
                    return (0, ChunkEnd::Stop(e.into()));
                }
                held.ids.sort_unstable();
            }
        }
        let room = (held.ids.len() * ls).min(want);
        // One buffer per run of consecutive slots, all handed to the reader at once (a
        // vectored reader fills them in one call; a plain one reads the first run per call).
        let mut bufs: Vec<IoSliceMut<'_>> = Vec::new();
        let mut i = 0;
        let mut planned = 0;
        while i < held.ids.len() && planned < room {
            let mut k = 1;
            while i + k < held.ids.len() && held.ids[i + k] == held.ids[i] + k as u32 {
                k += 1;
            }
            let len = (k * ls).min(room - planned);
            let p = self.arena.slot_ptr(held.ids[i]);
            // SAFETY: slots `ids[i]..ids[i] + k` are consecutive (checked above), in the
            // arena (they came from the free lists or the fresh range), and this thread owns
            // them exclusively: taken, not published, so no index entry, parent or reader can
            // reach them. The runs are disjoint (each slot is in `ids` once), so the buffers
            // do not overlap, and they are dropped before the slots are published or given
            // back (below). `len <= k * ls`.
            let buf = unsafe { std::slice::from_raw_parts_mut(p, len) };
            bufs.push(IoSliceMut::new(buf));
            planned += len;
            i += k;
        }
        let mut got = 0;
        let mut end = ChunkEnd::More;
        let mut rest: &mut [IoSliceMut<'_>] = &mut bufs;
        while got < room {
            counts.reads += 1;
            match read(rest) {
                Ok(0) => {
                    end = ChunkEnd::Eof;
                    break;
                }
                Ok(n) if n <= room - got => {
                    got += n;
                    IoSliceMut::advance_slices(&mut rest, n);
                }
                Ok(_) => {
                    let e = io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the reader reported more bytes than its buffers hold",
                    );
                    end = ChunkEnd::Stop(e.into());
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => counts.interrupted += 1,
                Err(e) => {
                    end = ChunkEnd::Stop(e.into());
                    break;
                }
            }
        }
        drop(bufs);
        if matches!(end, ChunkEnd::More) && got < want {
            // Fewer slots than asked: the memory is nearly full.
            end = ChunkEnd::Stop(self.arena().backing().exhausted(self.capacity()).into());
        }
        let used = got.div_ceil(ls);
        if got % ls != 0 {
            // The last line is zero-padded, as every segment's is (a reused
            // slot still holds its old content).
            let id = held.ids[used - 1];
            let p = self.arena.slot_ptr(id);
            // SAFETY: as above: slot `id` is this thread's, unpublished.
            let line = unsafe { std::slice::from_raw_parts_mut(p, ls) };
            line[got % ls..].fill(0);
        }
        let unused = held.ids.split_off(used);
        self.give_back(&unused);
        self.dedup_in_place(&held.ids, out, &mut counts.lines);
        // Every slot is now published or given back.
        held.ids.clear();
        (got, end)
    }

    /// Takes up to `n` free slots one by one (the fallback when no fresh run
    /// is to be had: freed slots wait to be reused), at least one unless the
    /// memory is full.
    fn take_slots(&self, n: usize, ids: &mut Vec<u32>) -> Result<(), Error> {
        let first = NEXT_SHARD.fetch_add(1, Relaxed);
        for t in 0..RECLAIM_TRIES {
            let cell = &self.shards[(first + t) % SHARDS];
            {
                let mut shard = cell.lock.lock();
                // Freed slots in bulk (ascending runs from the free bitmap), then one by one
                // (the fresh range).
                let short = n.saturating_sub(shard.free.len());
                if short > 0 && self.free_count.load(Relaxed) as i64 > 0 {
                    self.take_freed(&mut shard, short);
                }
                let keep = shard.free.len().saturating_sub(n);
                ids.extend(shard.free.drain(keep..).rev());
                while ids.len() < n {
                    match self.alloc_slot(&mut shard) {
                        Some(id) => ids.push(id),
                        None => break,
                    }
                }
            }
            if !ids.is_empty() {
                return Ok(());
            }
            self.drain_free_lists();
            if t > 0 && self.limbo.load(Relaxed) == 0 {
                break;
            }
            if t > 1 && t < 16 {
                std::thread::yield_now();
            } else if t >= 16 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        Err(self.arena().backing().exhausted(self.capacity()))
    }

    /// Returns slots that were never published to the free bitmap (no
    /// reader can have seen them, so no epoch is needed).
    fn give_back(&self, ids: &[u32]) {
        if ids.is_empty() {
            return;
        }
        self.free_slots(ids.iter().copied());
        self.free_count.fetch_add(ids.len() as u64, Relaxed);
    }

    /// Interns the filled slots `ids` (one leaf line each, in order) where
    /// they lie: a zero line and a duplicate give their slot back, a new
    /// line is indexed in its slot. Appends one owned id per slot to `out`.
    fn dedup_in_place(&self, ids: &[u32], out: &mut Vec<LineId>, counts: &mut WriteCounts) {
        let kind = LineKind::Leaf;
        let ki = kind_index(kind);
        let start = out.len();
        out.resize(start + ids.len(), LineId::ZERO);
        let zero_h = self.zero_hash[ki];
        let n = ids.len();
        let mut back = Vec::new();
        // Hash every line, prefetching the home bucket of each non-zero one.
        let mut hashes = Vec::with_capacity(n);
        let mut zero = vec![false; n];
        for (j, &id) in ids.iter().enumerate() {
            let line = self.line(LineId(id));
            let h = line_hash(kind, line);
            if h == zero_h && is_zero(line) {
                zero[j] = true;
            } else {
                self.prefetch_index(h);
            }
            hashes.push(h);
        }
        // Probe without the lock; a chunk whose first `PROBE_SAMPLE` probes are nearly all
        // misses (new data) stops probing: its lines would pay the lookup twice.
        let mut misses: Vec<u32> = Vec::with_capacity(n);
        let (mut zeros, mut pinned) = (0u64, 0u64);
        let guard = LOCK_FREE_HITS.then(|| self.epochs.pin());
        // The 64 shards' published tables, read once for the chunk.
        let tabs = guard.as_ref().map(|g| self.published_tables(g));
        let tab = |h: u64| tabs.as_ref().map(|t| t[h as usize & (SHARDS - 1)]);
        let (mut probed, mut found) = (0, 0);
        // Pipelined as `intern_batches` does: line `j + PROBE_AHEAD`'s bucket is read (and its
        // first candidate's line prefetched) while line `j` is compared.
        let mut first = [(0u32, false); 2 * PROBE_AHEAD];
        for i in 0..n + PROBE_AHEAD {
            if let Some(g) = guard.as_ref().filter(|_| probed >= 0 && i < n && !zero[i]) {
                if let Some(&h) = hashes.get(i + PROBE_AHEAD) {
                    self.prefetch_index(h);
                }
                if let Some(t) = tab(hashes[i]) {
                    let c = t.first_candidate(hashes[i]);
                    if c.0 != 0 {
                        self.prefetch_pinned(c.0, g);
                    }
                    first[i % (2 * PROBE_AHEAD)] = c;
                }
            }
            let Some(j) = i.checked_sub(PROBE_AHEAD) else {
                continue;
            };
            let id = ids[j];
            if zero[j] {
                zeros += 1;
                back.push(id);
                continue;
            }
            if let Some(g) = guard.as_ref().filter(|_| probed >= 0) {
                probed += 1;
                let line = self.line(LineId(id));
                let h = hashes[j];
                let (cand, more) = first[j % (2 * PROBE_AHEAD)];
                let hit = if cand != 0 && self.eq_pinned(cand, line, g) {
                    Some(cand)
                } else if more {
                    tab(h).and_then(|t| t.find_pinned(h, |x| self.eq_pinned(x, line, g)))
                } else {
                    None
                };
                if let Some(hit) = hit {
                    if self.inc_unless_zero(hit) {
                        out[start + j] = LineId(hit);
                        pinned += 1;
                        found += 1;
                        back.push(id);
                        continue;
                    }
                }
                if probed == PROBE_SAMPLE && found * 8 < PROBE_SAMPLE {
                    probed = -1;
                }
            }
            misses.push(j as u32);
        }
        drop(guard);
        // Counting sort of the misses by shard, in input order within a shard (so that of
        // equal lines in the chunk the first is indexed): one lock per shard.
        let shard_of = |j: u32| hashes[j as usize] as usize & (SHARDS - 1);
        let mut at = [0usize; SHARDS + 1];
        for &j in &misses {
            at[shard_of(j) + 1] += 1;
        }
        for k in 1..=SHARDS {
            at[k] += at[k - 1];
        }
        let mut sorted = vec![0u32; misses.len()];
        for &j in &misses {
            let k = &mut at[shard_of(j)];
            sorted[*k] = j;
            *k += 1;
        }
        let misses = sorted;
        let meta = self.meta.as_slice();
        let kbit = kind_bit(kind);
        let (mut created, mut hits) = (0u64, 0u64);
        let mut k = 0;
        while k < misses.len() {
            let sh = shard_of(misses[k]);
            let end = misses[k..]
                .iter()
                .position(|&j| shard_of(j) != sh)
                .map_or(misses.len(), |e| k + e);
            let cell = &self.shards[sh];
            let mut shard = cell.lock.lock();
            while k < end {
                let j = misses[k] as usize;
                let (id, h) = (ids[j], hashes[j]);
                let line = self.line(LineId(id));
                if shard.table.full() {
                    self.grow(cell, &mut shard);
                }
                let found = shard.table.find(h, |c| {
                    meta[c as usize].load(Relaxed) & INTERIOR_BIT == kbit
                        && lines_eq(self.line(LineId(c)), line)
                });
                if let Some(c) = found {
                    self.increment(c);
                    shard.hits[ki] += 1;
                    out[start + j] = LineId(c);
                    hits += 1;
                    back.push(id);
                } else {
                    // The line is already in its slot: only its count and
                    // its index entry (the publication) are written.
                    meta[id as usize].store(kbit | 1, Relaxed);
                    shard.table.insert(h, id);
                    shard.live[ki] += 1;
                    shard.created[ki] += 1;
                    if self.durability != Durability::None {
                        shard.pending.push(id);
                    }
                    out[start + j] = LineId(id);
                    created += 1;
                }
                k += 1;
            }
        }
        self.give_back(&back);
        if zeros != 0 {
            self.zero[ki].fetch_add(zeros, Relaxed);
        }
        if pinned != 0 {
            self.pinned_hits[ki].fetch_add(pinned, Relaxed);
        }
        counts.new_lines += created;
        counts.dedup_hits += hits + pinned;
        counts.zero_lines += zeros;
    }

    /// Slots below the high-water mark that are neither live, nor free, nor
    /// waiting for an epoch: 0 unless a slot leaked (tests). Not exact while
    /// other threads allocate or free.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn unaccounted_slots(&self) -> i64 {
        let c = self.counters();
        let mut listed = 0u64;
        for cell in self.shards.iter() {
            listed += cell.lock.lock().free.len() as u64;
        }
        let reserve = self.arena.backing().line_reserve().len() as u64;
        c.high_water as i64
            - 1
            - (c.live[0] + c.live[1]) as i64
            - self.free_count.load(Relaxed) as i64
            - self.limbo.load(Relaxed) as i64
            - listed as i64
            - self.owned_stack_len() as i64
            - reserve as i64
    }
}

/// How a chunk ended.
enum ChunkEnd {
    /// Every byte asked for was read.
    More,
    /// The reader reported the end of its input.
    Eof,
    /// The reader failed or the memory filled.
    Stop(ReadError),
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::io;

    use proptest::prelude::*;

    use super::ReadError;
    use crate::{Config, Memory};

    thread_local! {
        /// Chunks that took their slots one by one (no fresh run).
        pub(super) static FALLBACKS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    fn memory(lines: u64, line_size: usize) -> Memory {
        Memory::new(Config {
            line_size,
            capacity_lines: lines,
            map_capacity: 2,
            ..Config::default()
        })
        .unwrap()
    }

    /// Content of `len` bytes from a pool of a few distinct lines and zero
    /// lines (so duplicates and zero subtrees occur), with a random tail.
    fn content(seed: u64, len: usize, ls: usize) -> Vec<u8> {
        let mut r = testkit::Rng::new(seed);
        let pool: Vec<Vec<u8>> = (0..4).map(|_| r.bytes(ls)).collect();
        let mut v = Vec::with_capacity(len + ls);
        while v.len() < len {
            match r.below(8) {
                0 | 1 => v.extend(std::iter::repeat_n(0u8, ls * (1 + r.index(40)))),
                2..=4 => v.extend_from_slice(&pool[r.index(pool.len())]),
                _ => v.extend(r.bytes(ls)),
            }
        }
        v.truncate(len);
        v
    }

    /// A reader over `data` that returns short counts and interruptions,
    /// and fails with `fail` at call `fail_at`.
    fn reader(
        data: &[u8],
        seed: u64,
        fail_at: Option<(u64, io::ErrorKind)>,
    ) -> impl FnMut(&mut [u8]) -> io::Result<usize> + '_ {
        let mut r = testkit::Rng::new(seed);
        let mut pos = 0;
        let mut calls = 0u64;
        move |buf: &mut [u8]| {
            calls += 1;
            if let Some((at, kind)) = fail_at {
                if calls >= at {
                    return Err(io::Error::from(kind));
                }
            }
            if r.one_in(5) {
                return Err(io::Error::from(io::ErrorKind::Interrupted));
            }
            let n = if r.one_in(3) {
                r.index(buf.len() + 1)
            } else {
                buf.len()
            }
            .min(data.len() - pos);
            if n == 0 && !buf.is_empty() && pos < data.len() {
                // A zero count means end of input: give at least one byte.
                buf[0] = data[pos];
                pos += 1;
                return Ok(1);
            }
            buf[..n].copy_from_slice(&data[pos..pos + n]);
            pos += n;
            Ok(n)
        }
    }

    /// A vectored reader over `data`: fills the buffers in order, sometimes short, sometimes
    /// interrupted.
    fn vreader(
        data: &[u8],
        seed: u64,
    ) -> impl FnMut(&mut [io::IoSliceMut<'_>]) -> io::Result<usize> + '_ {
        let mut r = testkit::Rng::new(seed);
        let mut pos = 0;
        move |bufs: &mut [io::IoSliceMut<'_>]| {
            if r.one_in(6) {
                return Err(io::Error::from(io::ErrorKind::Interrupted));
            }
            let total: usize = bufs.iter().map(|b| b.len()).sum();
            let mut limit = if r.one_in(3) {
                1 + r.index(total.max(1))
            } else {
                total
            };
            let mut n = 0;
            for b in bufs.iter_mut() {
                let k = b.len().min(limit).min(data.len() - pos);
                b[..k].copy_from_slice(&data[pos..pos + k]);
                pos += k;
                n += k;
                limit -= k;
                if k < b.len() {
                    break;
                }
            }
            Ok(n)
        }
    }

    /// A vectored reader fills the scattered runs of reused slots in one call per chunk.
    #[test]
    fn a_vectored_reader_fills_every_run_of_a_chunk_at_once() {
        let m = memory(1 << 14, 64);
        let mut r = testkit::Rng::new(31);
        let junk = r.bytes(400_000);
        let s = m.segment(&junk).unwrap();
        drop(s);
        let data = content(32, 200_000, 64);
        FALLBACKS.with(|c| c.set(0));
        let mut calls = 0u64;
        let mut pos = 0;
        let got = m
            .segment_from_vectored_reader(data.len() as u64, |bufs| {
                calls += 1;
                let mut n = 0;
                for b in bufs.iter_mut() {
                    let k = b.len().min(data.len() - pos);
                    b[..k].copy_from_slice(&data[pos..pos + k]);
                    pos += k;
                    n += k;
                }
                Ok(n)
            })
            .unwrap();
        assert!(FALLBACKS.with(|c| c.get()) > 0, "no scattered slots");
        assert_eq!(got.segment, m.segment(&data).unwrap());
        // One call per 256 KiB chunk: 200 000 bytes are one chunk.
        assert_eq!((calls, got.counts.reads), (1, 1));
        drop(got);
        assert_eq!(m.live_lines(), 0);
        no_leak(&m);
        // Short and interrupted vectored reads still build the same segment.
        let data = content(33, 300_000, 64);
        let got = m
            .segment_from_vectored_reader(data.len() as u64, vreader(&data, 34))
            .unwrap();
        assert_eq!(got.segment, m.segment(&data).unwrap());
        drop(got);
        no_leak(&m);
    }

    #[track_caller]
    fn no_leak(m: &Memory) {
        assert_eq!(m.inner.store.unaccounted_slots(), 0, "a slot leaked");
    }

    #[test]
    fn in_place_equals_segment_and_copies_nothing() {
        let m = memory(1 << 16, 64);
        let data = content(1, 300_000, 64);
        let r = m
            .segment_from_reader(data.len() as u64, reader(&data, 2, None))
            .unwrap();
        assert!(r.stopped.is_none());
        assert_eq!(r.counts.copied_bytes, 0);
        assert_eq!(r.counts.bytes, data.len() as u64);
        let s = m.segment(&data).unwrap();
        assert_eq!(r.segment, s);
        assert_eq!(r.segment.to_vec(), data);
        let c = r.counts.lines;
        assert!(
            c.zero_lines > 0 && c.dedup_hits > 0 && c.new_lines > 0,
            "{c:?}"
        );
        drop((r, s));
        assert_eq!(m.live_lines(), 0);
        no_leak(&m);
    }

    /// End of input before `len`: a shorter segment of what was there.
    #[test]
    fn end_of_input_makes_a_shorter_segment() {
        let m = memory(1 << 12, 64);
        let data = content(3, 10_001, 64);
        let r = m
            .segment_from_reader(1 << 20, reader(&data, 4, None))
            .unwrap();
        assert!(r.stopped.is_none());
        assert_eq!(r.segment.len(), data.len() as u64);
        assert_eq!(r.segment, m.segment(&data).unwrap());
        let empty = m.segment_from_reader(100, |_: &mut [u8]| Ok(0)).unwrap();
        assert!(empty.segment.is_empty());
        drop((r, empty));
        no_leak(&m);
    }

    /// A read error before any byte is an error; after some, a shorter
    /// segment that says why.
    #[test]
    fn read_errors_return_every_slot() {
        let m = memory(1 << 14, 64);
        let data = content(5, 600_000, 64);
        let e = m
            .segment_from_reader(1000, reader(&data, 6, Some((1, io::ErrorKind::Other))))
            .unwrap_err();
        assert!(matches!(e, ReadError::Read(_)), "{e}");
        no_leak(&m);
        let r = m
            .segment_from_reader(
                data.len() as u64,
                reader(&data, 6, Some((4, io::ErrorKind::Other))),
            )
            .unwrap();
        assert!(matches!(r.stopped, Some(ReadError::Read(_))));
        let n = r.segment.len() as usize;
        assert!(n > 0 && n < data.len());
        assert_eq!(r.segment.to_vec(), data[..n]);
        drop(r);
        assert_eq!(m.live_lines(), 0);
        no_leak(&m);
    }

    /// A memory that fills: a shorter segment, or an error when nothing
    /// fit; never a leaked slot.
    #[test]
    fn a_full_memory_stops_the_read() {
        let m = memory(2000, 64);
        let mut r = testkit::Rng::new(9);
        let data = r.bytes(500_000);
        match m.segment_from_reader(data.len() as u64, reader(&data, 10, None)) {
            Ok(r) => {
                assert!(matches!(
                    r.stopped,
                    Some(ReadError::Memory(crate::Error::CapacityExhausted { .. }))
                ));
                let n = r.segment.len() as usize;
                assert_eq!(r.segment.to_vec(), data[..n]);
            }
            Err(e) => assert!(matches!(e, ReadError::Memory(_)), "{e}"),
        }
        assert_eq!(m.live_lines(), 0);
        no_leak(&m);
        // Held full: nothing fits.
        let mut held = Vec::new();
        for k in 0u32.. {
            let mut l = [0u8; 64];
            l[..4].copy_from_slice(&k.to_le_bytes());
            match m.segment(&l) {
                Ok(s) => held.push(s),
                Err(_) => break,
            }
        }
        let e = m
            .segment_from_reader(4096, reader(&data, 11, None))
            .unwrap_err();
        assert!(matches!(e, ReadError::Memory(_)), "{e}");
        drop(held);
        no_leak(&m);
    }

    /// Slots reused after a release (no fresh run: slots one by one, read
    /// run by run) give the same segments.
    #[test]
    fn reused_slots_give_the_same_segments() {
        let m = memory(1 << 14, 64);
        let mut r = testkit::Rng::new(12);
        let junk = r.bytes(400_000);
        let s = m.segment(&junk).unwrap();
        drop(s);
        let data = content(13, 200_000, 64);
        FALLBACKS.with(|c| c.set(0));
        let got = m
            .segment_from_reader(data.len() as u64, reader(&data, 14, None))
            .unwrap();
        assert!(
            FALLBACKS.with(|c| c.get()) > 0,
            "every chunk had a fresh run"
        );
        assert_eq!(got.segment, m.segment(&data).unwrap());
        drop(got);
        assert_eq!(m.live_lines(), 0);
        no_leak(&m);
    }

    /// A memory file: lines read in place are persisted like copied ones
    /// (the persist barrier flushes them), and fsck finds the file consistent
    /// after reads that ended early.
    #[test]
    fn a_memory_file_stays_consistent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.hicamp");
        let data = content(21, 600_000, 64);
        {
            let m = Memory::create(
                &path,
                Config {
                    line_size: 64,
                    capacity_lines: 1 << 14,
                    map_capacity: 16,
                    ..Config::default()
                },
            )
            .unwrap();
            let r = m
                .segment_from_reader(data.len() as u64, reader(&data, 22, None))
                .unwrap();
            m.bind("whole", r.segment).unwrap();
            let cut = m
                .segment_from_reader(
                    data.len() as u64,
                    reader(&data, 23, Some((3, io::ErrorKind::Other))),
                )
                .unwrap();
            assert!(cut.stopped.is_some());
            m.bind("cut", cut.segment).unwrap();
            let _ = m.segment_from_reader(1000, reader(&data, 24, Some((1, io::ErrorKind::Other))));
            m.sync().unwrap();
        }
        let report = crate::fsck(&path).unwrap();
        assert!(report.is_consistent(), "{:?}", report.problems);
        let m = Memory::open(&path).unwrap();
        let id = m.lookup("whole").unwrap().expect("bound");
        assert_eq!(m.map().get(id).unwrap().to_vec(), data);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Same root and length as `Memory::segment` of the same bytes, for
        /// random contents with repeats and zero lines, line sizes, reader
        /// behaviour and failures injected at each step; no slot leaks.
        #[test]
        fn in_place_matches_segment(
            seed in any::<u64>(),
            len in 0usize..70_000,
            ls_shift in 4u32..9,
            fail in proptest::option::of((1u64..40, 0u8..3)),
            capacity in prop_oneof![Just(1u64 << 14), 64u64..3000],
        ) {
            let ls = 1usize << ls_shift;
            let m = memory(capacity, ls);
            let data = content(seed, len, ls);
            let fail = fail.map(|(at, k)| (at, match k {
                0 => io::ErrorKind::Other,
                1 => io::ErrorKind::UnexpectedEof,
                _ => io::ErrorKind::WouldBlock,
            }));
            match m.segment_from_reader(len as u64, reader(&data, seed ^ 1, fail)) {
                Ok(r) => {
                    let n = r.segment.len() as usize;
                    prop_assert!(n <= len);
                    if r.stopped.is_none() {
                        prop_assert_eq!(n, len);
                    }
                    prop_assert_eq!(r.counts.bytes as usize, n);
                    prop_assert_eq!(r.counts.copied_bytes, 0);
                    prop_assert!(r.segment.to_vec() == data[..n]);
                    if let Ok(s) = m.segment(&data[..n]) {
                        prop_assert_eq!(&s, &r.segment);
                    }
                }
                Err(ReadError::Read(_)) => prop_assert!(fail.is_some()),
                Err(ReadError::Memory(_)) => prop_assert!(capacity < 1 << 14),
            }
            prop_assert_eq!(m.live_lines(), 0);
            prop_assert_eq!(m.inner.store.unaccounted_slots(), 0);
        }
    }
}
