//! Interning: one line, or runs of lines in batches (hash and prefetch every
//! line, probe the index without the lock, then sort the misses by shard and
//! take each shard lock once).
//!
//! Two kinds of hit come out of the lock-free probe (see the store's module
//! documentation for why it is safe):
//!
//! * an *owned* hit ([`Status::Hit`]): the probe found the line and took a
//!   reference with "increment unless zero" (a zero count, a line being
//!   freed, makes it a miss for the locked path);
//! * a *borrowed* hit ([`Status::Borrowed`], segment builds only): no
//!   reference at all. The id is only good while the build's guard is
//!   pinned: the slot cannot be reused before it unpins, but the line may be
//!   dying. A borrowed child costs nothing when its parent is a hit too (the
//!   parent holds its own reference to it); when the parent is a miss, the
//!   child is made owned (increment unless zero) before the parent is
//!   created, and if that fails (the child died meanwhile) the build starts
//!   again on the locked path. The root, if borrowed, is made owned last.
//!
//! So a duplicate segment build writes no count at all except its root's,
//! and no interior line's children go through an acquire and a release.

use std::sync::atomic::Ordering::*;

use super::index::Slots;
use super::{is_zero, kind_index, line_hash, with_line, Store, WriteCounts, SHARDS};
use crate::error::{Error, Result};
use crate::id::{LineId, LineKind};
use crate::sync::epoch::{Guard, LOCK_FREE_HITS};

/// Lines hashed, prefetched and sorted by shard together.
const BATCH: usize = 4096;
/// How far ahead of its probe a line's candidates are prefetched.
const PREFETCH_AHEAD: usize = 8;
/// Attempts to reclaim slots waiting for an epoch before a full memory is
/// reported.
const RECLAIM_TRIES: usize = 112;
/// Runs of at most this many lines go one line at a time.
const SMALL_RUN: usize = 32;
/// How far ahead of its lock-free probe a line's home bucket is prefetched.
const BUCKET_AHEAD: usize = 16;
/// How far ahead of its locked insert a line's home bucket is prefetched.
const LOCKED_AHEAD: usize = 16;
/// Lines of a batch probed before a batch of misses stops probing.
const SAMPLE: usize = 64;
/// An interior level of at most this many bytes of lines is assembled on the
/// stack (a frame's or a message's tree: no allocation per level).
const SMALL_LEVEL_BYTES: usize = 512;
/// An interior level over at most this many children keeps their statuses on
/// the stack.
const SMALL_LEVEL_CHILDREN: usize = 64;
/// Interior lines of a level assembled and interned at a time.
const LEVEL_CHUNK: usize = BATCH;
/// `key` of a line that needs no locked lookup (zero, or found lock-free).
const SKIP: u8 = SHARDS as u8;

/// What happened to one line of a batch.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Status {
    /// Not processed (an error stopped the batch first), or a miss of the
    /// lock-free probe not yet decided.
    Pending,
    /// A new line (or the zero line): it consumed the caller's child references.
    Created,
    /// An existing line gained a reference.
    Hit,
    /// An existing line found without a reference (see the module docs).
    Borrowed,
}

impl Status {
    /// The caller owns a reference to the line.
    #[inline]
    fn owned(self) -> bool {
        matches!(self, Status::Created | Status::Hit)
    }
}

/// How a run of lines failed.
pub(crate) enum Fail {
    /// A real error (the memory is full).
    Error(Error),
    /// A borrowed child died before its parent could take a reference, or
    /// the memory filled while pinned: start again on the locked path.
    Retry,
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        Fail::Error(e)
    }
}

/// What a lock-free hit turns into.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// No lock-free probe (loom, or the locked rerun of a build).
    Off,
    /// Owned hits (increment unless zero); a full memory makes the run
    /// stop with [`Fail::Retry`] (the caller reruns unpinned).
    Own,
    /// Owned hits, for a caller that cannot rerun (its child references
    /// are consumed): a full memory is handled pinned.
    OwnFinal,
    /// Borrowed hits (segment builds).
    Borrow,
}

/// The level vectors of a tree build, kept per thread between builds of up
/// to [`SCRATCH_KEEP`] lines (a frame's or a message's build allocated four
/// vectors: a quarter of its instructions).
#[derive(Default)]
struct Scratch {
    level: Vec<LineId>,
    st: Vec<Status>,
    next: Vec<LineId>,
    nst: Vec<Status>,
}

/// Builds of at most this many lines reuse the thread's scratch vectors.
const SCRATCH_KEEP: usize = 4096;

thread_local! {
    static SCRATCH: std::cell::Cell<Option<Box<Scratch>>> = const { std::cell::Cell::new(None) };
}

impl Scratch {
    /// Empty vectors for a build of `lines` leaves (the thread's kept ones
    /// when the build is small).
    fn take(lines: usize) -> Box<Scratch> {
        let kept = if lines <= SCRATCH_KEEP {
            SCRATCH.try_with(|c| c.take()).ok().flatten()
        } else {
            None
        };
        let mut sc = kept.unwrap_or_default();
        sc.level.reserve(lines);
        sc.st.reserve(lines);
        sc.next.reserve(lines / 16 + 1);
        sc.nst.reserve(lines / 16 + 1);
        sc
    }

    /// Keeps the vectors (emptied) for the thread's next build, unless they
    /// are large.
    fn put_back(mut self: Box<Self>) {
        if self.level.capacity().max(self.next.capacity()) <= SCRATCH_KEEP {
            self.level.clear();
            self.st.clear();
            self.next.clear();
            self.nst.clear();
            let _ = SCRATCH.try_with(|c| c.set(Some(self)));
        }
    }
}

impl Store {
    /// Interns one full, non-zero line whose hash is `h` on the locked path.
    /// Returns the line and whether it was created (false: an existing line
    /// gained a reference).
    fn intern_hashed(&self, kind: LineKind, h: u64, line: &[u8]) -> Result<(LineId, bool)> {
        let cell = &self.shards[h as usize & (SHARDS - 1)];
        {
            let mut shard = cell.lock.lock();
            if let Some(r) = self.find_or_insert(cell, &mut shard, kind, h, line) {
                return Ok(r);
            }
        }
        // Full: return what waits for an epoch and retry. Slots that other
        // threads freed may still wait for them (a pin of theirs, perhaps
        // preempted, or their local bag): while any slot waits, give them a
        // moment: a few yields, then sleeps of 1 ms, about 0.1 s in all.
        for t in 0..RECLAIM_TRIES {
            self.drain_free_lists();
            let mut shard = cell.lock.lock();
            if let Some(r) = self.find_or_insert(cell, &mut shard, kind, h, line) {
                return Ok(r);
            }
            drop(shard);
            if self.limbo.load(Relaxed) == 0 {
                break;
            }
            if t < 16 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        Err(self.arena().backing().exhausted(self.capacity()))
    }

    /// Interns one full line (any content); the caller owns the returned
    /// reference. A duplicate costs a hash, a lock-free probe and one
    /// increment.
    pub(crate) fn intern(&self, kind: LineKind, line: &[u8]) -> Result<(LineId, bool)> {
        debug_assert_eq!(line.len(), self.line_size());
        if is_zero(line) {
            self.zero[kind_index(kind)].fetch_add(1, Relaxed);
            return Ok((LineId::ZERO, false));
        }
        let h = line_hash(kind, line);
        if LOCK_FREE_HITS {
            let guard = self.epochs.pin();
            if let Some(id) = self.find_pinned(h, line, &guard) {
                if self.inc_unless_zero(id) {
                    self.pinned_hits[kind_index(kind)].fetch_add(1, Relaxed);
                    return Ok((LineId(id), false));
                }
            }
        }
        self.intern_hashed(kind, h, line)
    }

    /// Interns `lines` (a whole number of full lines), appending one id per
    /// line to `out` and one [`Status`] per line to `status`. With a guard
    /// the index is probed without the lock first (`probe`); `prepare(i)`
    /// runs on each line `i` of the call that the probe missed, before any
    /// lock is taken, and returning false stops the run with
    /// [`Fail::Retry`].
    ///
    /// Lines go in batches of [`BATCH`]: hash every line (prefetching its
    /// index slot), probe, sort the misses by shard, and take each shard lock
    /// once for all of its lines. On error every owned line of this call is
    /// released again; `status` then tells which lines had been done (an
    /// interior caller needs it to give back the child references of the
    /// groups that did not consume theirs).
    #[allow(clippy::too_many_arguments)]
    fn intern_run(
        &self,
        kind: LineKind,
        lines: &[u8],
        out: &mut Vec<LineId>,
        status: &mut Vec<Status>,
        guard: Option<&Guard>,
        probe: Probe,
        prepare: Option<&mut dyn FnMut(usize) -> bool>,
    ) -> std::result::Result<(), Fail> {
        // Small runs (a write of a few lines) get small batch arrays: the
        // arrays are initialised on every call.
        if lines.len() >> self.shift <= SMALL_RUN {
            self.intern_small(kind, lines, out, status, guard, probe, prepare)
        } else if lines.len() >> self.shift <= 64 {
            self.intern_batches::<64>(kind, lines, out, status, guard, probe, prepare)
        } else if lines.len() >> self.shift <= 1024 {
            // A received 64 KiB GSO frame: batch arrays of 1024 lines, not
            // 4096 (their zeroing was 8% of a bulk receive).
            self.intern_batches::<1024>(kind, lines, out, status, guard, probe, prepare)
        } else {
            self.intern_batches::<BATCH>(kind, lines, out, status, guard, probe, prepare)
        }
    }

    // Never inlined: each size keeps its batch arrays in its own frame. Inlined into
    // `intern_run`, the 4096-line arrays made its frame 62 KiB, whose stack probe (a write
    // per page) and cache misses every call paid, a 4-line write included: 700 ns of a
    // 255-byte segment's 840.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn intern_batches<const B: usize>(
        &self,
        kind: LineKind,
        lines: &[u8],
        out: &mut Vec<LineId>,
        status: &mut Vec<Status>,
        guard: Option<&Guard>,
        probe: Probe,
        mut prepare: Option<&mut dyn FnMut(usize) -> bool>,
    ) -> std::result::Result<(), Fail> {
        let ls = self.line_size();
        debug_assert_eq!(lines.len() % ls, 0);
        let n = lines.len() >> self.shift;
        let start = out.len();
        out.resize(start + n, LineId::ZERO);
        let sstart = status.len();
        status.resize(sstart + n, Status::Pending);
        let probe = match guard {
            Some(g) if LOCK_FREE_HITS && probe != Probe::Off => Some((g, probe)),
            _ => None,
        };
        // A zero line is told by its hash first (one compare per line, not
        // a scan of its bytes), then checked.
        let zero_h = self.zero_hash[kind_index(kind)];
        let mut hashes = [0u64; B];
        let mut key = [SKIP; B];
        let mut order = [0u16; B];
        let mut walk = [0u16; B];
        let mut first = [(0u32, false); B];
        let mut slot = [0u32; B];
        let mut ids = [0u32; B];
        let mut counts = [0u16; SHARDS + 1];
        let mut zeros = 0u64;
        let mut pinned_hits = 0u64;
        let mut base = 0;
        let mut result = Ok(());
        // Whether the last batch was probed to its end (mostly hits): this
        // batch's home buckets are then prefetched a few lines ahead of the
        // probe, not all while hashing (see the probe loop). A batch of
        // misses keeps the prefetch while hashing, where it overlaps the
        // hashing (the locked path reads the buckets much later).
        let mut hits_ahead = false;
        'batches: while base < n {
            let m = B.min(n - base);
            let group = &lines[base * ls..(base + m) * ls];
            // The shards' published tables, read once per batch (a lookup
            // then loads no shard cell).
            let tabs = probe.map(|(g, _)| self.published_tables(g));
            // The lines whose home bucket is prefetched while hashing: the
            // probe's sample, after a batch of misses (the probe prefetches
            // the rest [`BUCKET_AHEAD`] lines ahead, the locked inserts
            // [`LOCKED_AHEAD`] lines ahead: a whole batch's buckets,
            // prefetched here, had left the cache by their turn, and the
            // prefetches queued behind each other).
            let pre = if tabs.is_some() && !hits_ahead {
                SAMPLE.min(m)
            } else {
                0
            };
            for (j, line) in group.chunks_exact(ls).enumerate() {
                let h = line_hash(kind, line);
                if h == zero_h && is_zero(line) {
                    zeros += 1;
                    status[sstart + base + j] = Status::Created;
                    key[j] = SKIP;
                } else {
                    if j < pre {
                        if let Some(t) = &tabs {
                            t[h as usize & (SHARDS - 1)].prefetch_home(h);
                        }
                    }
                    hashes[j] = h;
                    key[j] = (h as usize & (SHARDS - 1)) as u8;
                }
            }
            if let (Some((g, mode)), Some(tabs)) = (probe, &tabs) {
                // Pipelined: the home bucket of line `j + PREFETCH_AHEAD` is
                // read (prefetched earlier) and its first candidate's line
                // prefetched while line `j` is compared. A batch whose
                // first `SAMPLE` lines are nearly all misses (new data) stops
                // probing: its lines would pay the lookup twice.
                let tab = |h: u64| tabs[h as usize & (SHARDS - 1)];
                let first_of = |h: u64| {
                    let c = tab(h).first_candidate(h);
                    if c.0 != 0 {
                        self.prefetch_pinned(c.0, g);
                    }
                    c
                };
                let mut probe_end = m;
                let mut batch_hits = 0;
                let ahead = hits_ahead;
                if ahead {
                    // After a batch of hits, the home bucket is prefetched
                    // [`BUCKET_AHEAD`] lines before it is read: a whole
                    // batch's buckets, prefetched while hashing, no longer
                    // fit in L1 when their turn came (a third of a duplicate
                    // line's time went waiting on them).
                    for (&h, &k) in hashes[..m].iter().zip(&key[..m]).take(BUCKET_AHEAD) {
                        if k != SKIP {
                            tab(h).prefetch_home(h);
                        }
                    }
                }
                for j in 0..PREFETCH_AHEAD.min(m) {
                    if key[j] != SKIP {
                        first[j] = first_of(hashes[j]);
                    }
                }
                let mut j = 0;
                while j < probe_end {
                    let a = j + BUCKET_AHEAD;
                    if a >= pre && a < probe_end && key[a] != SKIP {
                        tab(hashes[a]).prefetch_home(hashes[a]);
                    }
                    let c = j + PREFETCH_AHEAD;
                    if c < probe_end && key[c] != SKIP {
                        first[c] = first_of(hashes[c]);
                    }
                    if j + 1 == SAMPLE && batch_hits * 8 < SAMPLE {
                        probe_end = j + 1;
                    }
                    if key[j] != SKIP {
                        let h = hashes[j];
                        let line = &group[j * ls..(j + 1) * ls];
                        let (id, more) = first[j];
                        let found = if id != 0 && self.eq_pinned(id, line, g) {
                            Some(id)
                        } else if more {
                            tab(h).find_pinned(h, |x| self.eq_pinned(x, line, g))
                        } else {
                            None
                        };
                        if let Some(id) = found {
                            let st = match mode {
                                Probe::Borrow => Some(Status::Borrowed),
                                _ if self.inc_unless_zero(id) => Some(Status::Hit),
                                _ => None, // dying: the locked path decides
                            };
                            if let Some(st) = st {
                                out[start + base + j] = LineId(id);
                                status[sstart + base + j] = st;
                                key[j] = SKIP;
                                batch_hits += 1;
                            }
                        }
                    }
                    j += 1;
                }
                pinned_hits += batch_hits as u64;
                hits_ahead = probe_end == m;
                if key[..m].iter().all(|&k| k == SKIP) {
                    base += m; // every line found (or zero): nothing to lock
                    continue;
                }
                if let Some(p) = prepare.as_mut() {
                    for (j, &k) in key[..m].iter().enumerate() {
                        if k != SKIP && !p(base + j) {
                            result = Err(Fail::Retry);
                            break 'batches;
                        }
                    }
                }
            }
            // Counting sort of the misses by shard (the others last).
            counts.fill(0);
            for &k in &key[..m] {
                counts[k as usize] += 1;
            }
            let mut at = 0u16;
            for c in counts.iter_mut() {
                let k = *c;
                *c = at;
                at += k;
            }
            for (j, &k) in key[..m].iter().enumerate() {
                let k = k as usize;
                order[counts[k] as usize] = j as u16;
                counts[k] += 1;
            }
            let misses = m - (counts[SHARDS] - counts[SHARDS - 1]) as usize;
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
            // The walk order, rotated to start at `i0`, in `walk` (one pass,
            // not an index computation at every step).
            walk[..misses - i0].copy_from_slice(&order[i0..misses]);
            walk[misses - i0..misses].copy_from_slice(&order[..i0]);
            let at = |k: usize| walk[k] as usize;
            // The misses of the batch take their slots at once
            // (`take_batch`): a run of fresh slots in input order, so the
            // leaves of a segment built in order lie adjacent in the arena
            // (a window copies such pages straight from it), or the lowest
            // freed slots in insert order (one ascending write stream).
            // Each slot goes onto its shard's list just before the
            // line's insert pops it; a line that turns out a duplicate leaves
            // its slot there for the shard's next insert. (With its slot
            // pushed, `find_or_insert` cannot fail for want of one, so the
            // loop below does not break with slots of the run unpushed.)
            let slots = self.take_batch(misses, &mut ids);
            match slots {
                Some(Slots::InputOrder) => {
                    let mut next = ids[..misses].iter();
                    for (s, &k) in slot[..m].iter_mut().zip(&key[..m]) {
                        if k != SKIP {
                            *s = next.next().copied().unwrap_or(0);
                        }
                    }
                }
                Some(Slots::WalkOrder) => {
                    for (k, &id) in ids[..misses].iter().enumerate() {
                        slot[at(k)] = id;
                    }
                }
                None => {}
            }
            let run = slots.is_some();
            // A batch of nearly all new lines with more batches to come (a
            // segment of new data): each shard makes room for its share of
            // the new lines of the whole run at once, so the index grows
            // once, while nearly empty, not by 1.5x every few inserts (which
            // rehashed every line about twice over).
            let reserve = if misses * 8 >= m * 7 && n - base > m {
                ((n - base) * misses / m).div_ceil(SHARDS / 2)
            } else {
                0
            };
            // The inserts' home buckets, [`LOCKED_AHEAD`] lines ahead in
            // the walk (through the shards' hints: a table grown meanwhile
            // publishes a new one).
            let prefetch_bucket = |k: usize| {
                if k < misses {
                    self.prefetch_index(hashes[at(k)]);
                }
            };
            for k in 0..LOCKED_AHEAD {
                prefetch_bucket(k);
            }
            let mut k = 0;
            while k < misses {
                let sh = key[at(k)] as usize;
                let cell = &self.shards[sh];
                let mut shard = cell.lock.lock();
                if reserve != 0 {
                    self.reserve(cell, &mut shard, reserve);
                }
                // The run's end in the walk, from the shard's end in `order`
                // (the walk is `order` rotated by `i0`).
                let end = counts[sh] as usize;
                let run_end = if end > i0 {
                    end - i0
                } else {
                    end + misses - i0
                };
                debug_assert!((k..run_end).all(|x| key[at(x)] as usize == sh));
                debug_assert!(run_end == misses || key[at(run_end)] as usize != sh);
                match slots {
                    // The slots the run's inserts will write: a fresh run's
                    // (input order) are spread over the batch's range, and
                    // no hardware prefetcher follows them.
                    Some(Slots::InputOrder) => {
                        for kk in k..run_end {
                            self.prefetch_slot(slot[at(kk)]);
                        }
                    }
                    // One ascending stream: the hardware prefetcher's.
                    Some(Slots::WalkOrder) => {}
                    None => self.prefetch_run(&shard, run_end - k),
                }
                // A run of new leaves with their slots taken and room in the
                // table (the common case of new data): no free-list round
                // trip, no growth check and no failure path per line.
                if run
                    && kind == LineKind::Leaf
                    && shard.table.fits(shard.table.len() + (run_end - k))
                {
                    let mut created = 0;
                    while k < run_end {
                        prefetch_bucket(k + LOCKED_AHEAD);
                        let j = at(k);
                        let line = &group[j * ls..(j + 1) * ls];
                        let (id, new) =
                            self.find_or_insert_into(&mut shard, kind, hashes[j], line, slot[j]);
                        out[start + base + j] = LineId(id);
                        status[sstart + base + j] = if new { Status::Created } else { Status::Hit };
                        created += u64::from(new);
                        k += 1;
                    }
                    shard.live[kind_index(kind)] += created;
                    shard.created[kind_index(kind)] += created;
                    continue;
                }
                while k < misses && key[at(k)] as usize == sh {
                    prefetch_bucket(k + LOCKED_AHEAD);
                    let j = at(k);
                    let line = &group[j * ls..(j + 1) * ls];
                    if run {
                        shard.free.push(slot[j]);
                    }
                    let r = match self.find_or_insert(cell, &mut shard, kind, hashes[j], line) {
                        Some(r) => Ok(r),
                        None if matches!(probe, Some((_, Probe::Borrow | Probe::Own))) => {
                            // Full while pinned: slots this thread's own pin
                            // holds back cannot return; the caller reruns
                            // unpinned.
                            result = Err(Fail::Retry);
                            break 'batches;
                        }
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
                            result = Err(e.into());
                            break 'batches;
                        }
                    }
                    k += 1;
                }
            }
            base += m;
        }
        self.end_run(
            kind,
            (start, sstart),
            out,
            status,
            (zeros, pinned_hits),
            result,
        )
    }

    /// The end of a run: counters, and on error the release of every owned
    /// line of the run (`from`: where the run's ids and statuses start).
    fn end_run(
        &self,
        kind: LineKind,
        (start, sstart): (usize, usize),
        out: &mut Vec<LineId>,
        status: &[Status],
        (zeros, pinned_hits): (u64, u64),
        result: std::result::Result<(), Fail>,
    ) -> std::result::Result<(), Fail> {
        if zeros != 0 {
            self.zero[kind_index(kind)].fetch_add(zeros, Relaxed);
        }
        if pinned_hits != 0 {
            self.pinned_hits[kind_index(kind)].fetch_add(pinned_hits, Relaxed);
        }
        if result.is_err() {
            self.release_run(out, status, (start, sstart));
        }
        result
    }

    /// Gives back the owned lines of a run that failed (its ids from
    /// `out[start..]`, their statuses from `status[sstart..]`) and takes its
    /// ids out of `out`.
    fn release_run(
        &self,
        out: &mut Vec<LineId>,
        status: &[Status],
        (start, sstart): (usize, usize),
    ) {
        let owned: Vec<LineId> = out[start..]
            .iter()
            .zip(&status[sstart..])
            .filter(|(_, st)| st.owned())
            .map(|(id, _)| *id)
            .collect();
        out.truncate(start);
        self.release_all(&owned);
    }

    /// [`Store::intern_run`] for a few lines: one at a time, with none of
    /// the batch arrays (whose set-up dominated small segment builds).
    #[allow(clippy::too_many_arguments)]
    fn intern_small(
        &self,
        kind: LineKind,
        lines: &[u8],
        out: &mut Vec<LineId>,
        status: &mut Vec<Status>,
        guard: Option<&Guard>,
        probe: Probe,
        mut prepare: Option<&mut dyn FnMut(usize) -> bool>,
    ) -> std::result::Result<(), Fail> {
        let ls = self.line_size();
        let n = lines.len() >> self.shift;
        let start = out.len();
        out.resize(start + n, LineId::ZERO);
        let sstart = status.len();
        status.resize(sstart + n, Status::Pending);
        let probe = match guard {
            Some(g) if LOCK_FREE_HITS && probe != Probe::Off => Some((g, probe)),
            _ => None,
        };
        let (mut zeros, mut pinned_hits) = (0, 0);
        let mut result = Ok(());
        let zero_h = self.zero_hash[kind_index(kind)];
        for (j, line) in lines.chunks_exact(ls).enumerate() {
            let h = line_hash(kind, line);
            if h == zero_h && is_zero(line) {
                zeros += 1;
                status[sstart + j] = Status::Created;
                continue;
            }
            if let Some((g, mode)) = probe {
                if let Some(id) = self.find_pinned(h, line, g) {
                    let st = match mode {
                        Probe::Borrow => Some(Status::Borrowed),
                        _ if self.inc_unless_zero(id) => Some(Status::Hit),
                        _ => None, // dying: the locked path decides
                    };
                    if let Some(st) = st {
                        out[start + j] = LineId(id);
                        status[sstart + j] = st;
                        pinned_hits += 1;
                        continue;
                    }
                }
                if prepare.as_mut().is_some_and(|p| !p(j)) {
                    result = Err(Fail::Retry);
                    break;
                }
            }
            let cell = &self.shards[h as usize & (SHARDS - 1)];
            let mut shard = cell.lock.lock();
            let r = match self.find_or_insert(cell, &mut shard, kind, h, line) {
                Some(r) => Ok(r),
                None if matches!(probe, Some((_, Probe::Borrow | Probe::Own))) => {
                    result = Err(Fail::Retry);
                    break;
                }
                None => {
                    drop(shard);
                    self.intern_hashed(kind, h, line)
                }
            };
            match r {
                Ok((id, created)) => {
                    out[start + j] = id;
                    status[sstart + j] = if created {
                        Status::Created
                    } else {
                        Status::Hit
                    };
                }
                Err(e) => {
                    result = Err(e.into());
                    break;
                }
            }
        }
        self.end_run(
            kind,
            (start, sstart),
            out,
            status,
            (zeros, pinned_hits),
            result,
        )
    }

    /// Interns `data` as leaf lines (the last one zero-padded), appending
    /// one id and one status per line. On error nothing of this call stays
    /// referenced.
    fn leaves_run(
        &self,
        data: &[u8],
        out: &mut Vec<LineId>,
        status: &mut Vec<Status>,
        guard: Option<&Guard>,
        probe: Probe,
    ) -> std::result::Result<(), Fail> {
        let ls = self.line_size();
        let full = data.len() / ls * ls;
        let start = out.len();
        let sstart = status.len();
        self.intern_run(
            LineKind::Leaf,
            &data[..full],
            out,
            status,
            guard,
            probe,
            None,
        )?;
        if full < data.len() {
            let r = with_line(ls, |buf| {
                buf[..data.len() - full].copy_from_slice(&data[full..]);
                self.intern_run(LineKind::Leaf, buf, out, status, guard, probe, None)
            });
            if let Err(e) = r {
                self.release_run(out, status, (start, sstart));
                status.truncate(sstart);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Interns `data` as leaf lines (the last one zero-padded), appending one
    /// id per line to `out`. On error nothing of this call stays referenced.
    pub(crate) fn intern_leaves(
        &self,
        data: &[u8],
        out: &mut Vec<LineId>,
        counts: &mut WriteCounts,
    ) -> Result<()> {
        let start = out.len();
        // Sized once (the full lines and the tail line would grow it twice).
        let mut status = Vec::with_capacity(data.len().div_ceil(self.line_size()));
        let r = if LOCK_FREE_HITS {
            let guard = self.epochs.pin();
            self.leaves_run(data, out, &mut status, Some(&guard), Probe::Own)
        } else {
            Err(Fail::Retry)
        };
        let r = match r {
            Err(Fail::Retry) => {
                status.clear();
                self.leaves_run(data, out, &mut status, None, Probe::Off)
            }
            r => r,
        };
        match r {
            Ok(()) => {
                for (id, st) in out[start..].iter().zip(&status) {
                    counts.add(*id, *st == Status::Created);
                }
                Ok(())
            }
            Err(Fail::Error(e)) => Err(e),
            Err(Fail::Retry) => unreachable!("the locked path does not retry"),
        }
    }

    /// One level of interior lines over `children` (grouped `fanout` at a
    /// time, the last group zero-padded), whose statuses are `cst` (owned or
    /// borrowed). Consumes the caller's owned child references on success
    /// and on error alike; on success `cst` is stale.
    fn interior_run(
        &self,
        children: &[LineId],
        cst: &mut [Status],
        out: &mut Vec<LineId>,
        status: &mut Vec<Status>,
        guard: Option<&Guard>,
        probe: Probe,
    ) -> std::result::Result<(), Fail> {
        let f = self.fanout();
        let groups = children.len().div_ceil(f);
        // The level's lines, assembled [`LEVEL_CHUNK`] at a time into one
        // buffer: on the stack for a small level (a frame's or a message's
        // tree: no allocation per build), else one heap buffer reused for
        // every chunk (a whole level's lines, 1/16 of the data, were a fresh
        // allocation and page faults on every large build).
        let mut stack = [0u8; SMALL_LEVEL_BYTES];
        let mut heap;
        let chunk_groups = groups.min(LEVEL_CHUNK);
        let buf: &mut [u8] = if chunk_groups << self.shift <= SMALL_LEVEL_BYTES {
            &mut stack[..chunk_groups << self.shift]
        } else {
            heap = vec![0u8; chunk_groups << self.shift];
            &mut heap
        };
        let sstart = status.len();
        let start = out.len();
        let mut res = Ok(());
        for g0 in (0..groups).step_by(LEVEL_CHUNK) {
            let ng = (groups - g0).min(LEVEL_CHUNK);
            let kids = &children[g0 * f..((g0 + ng) * f).min(children.len())];
            let bytes = &mut buf[..ng << self.shift];
            bytes.fill(0);
            for (b, c) in bytes.chunks_exact_mut(4).zip(kids) {
                b.copy_from_slice(&c.0.to_le_bytes());
            }
            // A group the probe missed will create its line on the locked
            // path (or find it there): it needs a reference to every child
            // first.
            let mut prepare = |g: usize| {
                let g = g0 + g;
                let range = g * f..((g + 1) * f).min(children.len());
                for (c, st) in children[range.clone()].iter().zip(&mut cst[range]) {
                    if *st == Status::Borrowed {
                        if !self.inc_unless_zero(c.0) {
                            return false;
                        }
                        *st = Status::Hit;
                    }
                }
                true
            };
            res = self.intern_run(
                LineKind::Interior,
                bytes,
                out,
                status,
                guard,
                probe,
                Some(&mut prepare),
            );
            if res.is_err() {
                // As the failed chunk's own call did for its lines: the
                // owned lines of the earlier chunks are released too (a
                // created line's release gives back its children).
                self.release_run(out, status, (start, sstart));
                break;
            }
        }
        // Groups that did not create their line (found it, or were never
        // done) still own their owned child references: give them back.
        // A created group's line consumed them (on error it was released
        // with this call's lines, and its children with it).
        // Gathered on the stack and released in batches of 64 (a level of
        // hits gives back every child: no vector grown per level).
        let mut back = [LineId::ZERO; 64];
        let mut nb = 0;
        // A level of borrowed children (a duplicate build) has nothing to
        // give back: one pass over the statuses instead of one per group.
        let none_owned = !cst.iter().any(|st| st.owned());
        for g in (0..groups).filter(|_| !none_owned) {
            if status.get(sstart + g) != Some(&Status::Created) {
                let range = g * f..((g + 1) * f).min(children.len());
                for (c, st) in children[range.clone()].iter().zip(&cst[range]) {
                    if st.owned() {
                        if nb == back.len() {
                            self.release_all(&back);
                            nb = 0;
                        }
                        back[nb] = *c;
                        nb += 1;
                    }
                }
            }
        }
        if nb > 0 {
            self.release_all(&back[..nb]);
        }
        res
    }

    /// Interns one level of interior lines over `children` (grouped `fanout`
    /// at a time, the last group zero-padded). Consumes the caller's reference
    /// to every child, on success and on error alike.
    pub(crate) fn intern_interior_level(
        &self,
        children: &[LineId],
        out: &mut Vec<LineId>,
    ) -> Result<()> {
        // Statuses on the stack for a small level (no allocation per build).
        let mut stack = [Status::Hit; SMALL_LEVEL_CHILDREN];
        let mut heap;
        let cst: &mut [Status] = if children.len() <= SMALL_LEVEL_CHILDREN {
            &mut stack[..children.len()]
        } else {
            heap = vec![Status::Hit; children.len()];
            &mut heap
        };
        let mut status = Vec::with_capacity(children.len().div_ceil(self.fanout()));
        let r = if LOCK_FREE_HITS {
            let guard = self.epochs.pin();
            self.interior_run(
                children,
                cst,
                out,
                &mut status,
                Some(&guard),
                Probe::OwnFinal,
            )
        } else {
            self.interior_run(children, cst, out, &mut status, None, Probe::Off)
        };
        match r {
            Ok(()) => Ok(()),
            Err(Fail::Error(e)) => Err(e),
            Err(Fail::Retry) => unreachable!("no borrowed child, and a full memory is an error"),
        }
    }

    /// Builds the canonical DAG of `data` (non-empty) bottom-up: the leaves,
    /// then `height(leaves)` interior levels. Returns the root (a reference
    /// the caller owns) and the height. Duplicate lines are borrowed (see the
    /// module docs); a build that cannot finish that way (a borrowed line
    /// died, or the memory filled while pinned) runs again on the locked path.
    pub(crate) fn intern_tree(
        &self,
        data: &[u8],
        height: impl Fn(usize) -> u32,
    ) -> Result<(LineId, u32)> {
        if LOCK_FREE_HITS {
            let guard = self.epochs.pin();
            match self.tree_pass(data, &height, Some(&guard), Probe::Borrow) {
                Ok(r) => return Ok(r),
                Err(Fail::Error(e)) => return Err(e),
                Err(Fail::Retry) => {}
            }
        }
        match self.tree_pass(data, &height, None, Probe::Off) {
            Ok(r) => Ok(r),
            Err(Fail::Error(e)) => Err(e),
            Err(Fail::Retry) => unreachable!("the locked path does not retry"),
        }
    }

    fn tree_pass(
        &self,
        data: &[u8],
        height: &impl Fn(usize) -> u32,
        guard: Option<&Guard>,
        probe: Probe,
    ) -> std::result::Result<(LineId, u32), Fail> {
        let ls = self.line_size();
        let lines = data.len().div_ceil(ls);
        let mut sc = Scratch::take(lines);
        let r = self.tree_levels(data, height, guard, probe, &mut sc);
        sc.put_back();
        r
    }

    fn tree_levels(
        &self,
        data: &[u8],
        height: &impl Fn(usize) -> u32,
        guard: Option<&Guard>,
        probe: Probe,
        sc: &mut Box<Scratch>,
    ) -> std::result::Result<(LineId, u32), Fail> {
        let Scratch {
            level,
            st,
            next,
            nst,
        } = &mut **sc;
        self.leaves_run(data, level, st, guard, probe)?;
        let h = height(level.len());
        for _ in 0..h {
            next.clear();
            nst.clear();
            self.interior_run(level, st, next, nst, guard, probe)?;
            std::mem::swap(level, next);
            std::mem::swap(st, nst);
        }
        debug_assert_eq!(level.len(), 1);
        let root = level[0];
        if st[0] == Status::Borrowed && !self.inc_unless_zero(root.0) {
            return Err(Fail::Retry);
        }
        Ok((root, h))
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
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::{Fail, Probe, Status};
    use crate::id::LineKind;
    use crate::store::line_hash;
    use crate::{Config, Memory};

    /// An interior level of more than one chunk (`LEVEL_CHUNK` lines) that
    /// runs out of slots in its second chunk: the build fails with nothing
    /// left alive (the first chunk's lines and every leaf are released), and
    /// the same data builds once there is room, equal to its bytes.
    #[test]
    fn a_level_that_fails_in_a_later_chunk_leaks_nothing() {
        let groups = super::LEVEL_CHUNK + 300;
        let leaves = groups * 16;
        let data = testkit::Rng::new(5).bytes(leaves * 64);
        // Room for the leaves and the first chunk of the level, not all of it.
        let m = Memory::new(Config {
            line_size: 64,
            capacity_lines: (leaves + super::LEVEL_CHUNK + 100) as u64,
            map_capacity: 2,
            ..Config::default()
        })
        .expect("memory");
        let e = m.segment(&data).expect_err("too large");
        assert!(matches!(e, crate::Error::CapacityExhausted { .. }), "{e:?}");
        assert_eq!(m.live_lines(), 0, "a failed build releases what it built");
        let half = m.segment(&data[..leaves * 32]).expect("half fits");
        assert_eq!(half.to_vec(), &data[..leaves * 32]);
        drop(half);
        assert_eq!(m.live_lines(), 0);
        let big = Memory::new(Config {
            line_size: 64,
            capacity_lines: (2 * leaves) as u64,
            map_capacity: 2,
            ..Config::default()
        })
        .expect("memory");
        let s = big.segment(&data).expect("fits");
        assert_eq!(s.to_vec(), data);
        let (mut lines, mut level) = (leaves, leaves);
        while level > 1 {
            level = level.div_ceil(16);
            lines += level;
        }
        assert_eq!(big.live_lines(), lines as u64);
    }

    /// A segment of new lines larger than a batch reserves each shard's
    /// share of the index up front: every line is found again afterwards,
    /// a second intern creates nothing, and the index is sized for what
    /// arrived (about 5/6 full), not for more.
    #[test]
    fn a_large_new_segment_reserves_the_index_once() {
        let m = Memory::new(Config {
            line_size: 64,
            capacity_lines: 1 << 16,
            map_capacity: 2,
            ..Config::default()
        })
        .unwrap();
        let data = testkit::Rng::new(0x9e37_79b9_7f4a_7c15).bytes(20_000 * 64);
        let s = m.segment(&data).unwrap();
        let live = m.live_lines();
        assert!(live > 20_000);
        let index = m.stats().index_bytes as f64 / live as f64;
        assert!(index < 6.5, "index {index:.2} B per line");
        let again = m.segment(&data).unwrap();
        assert_eq!(m.live_lines(), live, "a duplicate created a line");
        assert_eq!(again.to_vec(), data);
        let store = &m.inner.store;
        for line in data.chunks_exact(64) {
            let h = line_hash(LineKind::Leaf, line);
            let guard = store.epochs.pin();
            assert!(store.find_pinned(h, line, &guard).is_some());
        }
        drop((s, again));
        assert_eq!(m.live_lines(), 0);
    }

    /// A borrowed child that dies before its parent is created stops the
    /// level with `Retry`, and the level still consumes the owned children.
    #[test]
    fn a_dead_borrowed_child_makes_the_build_retry() {
        let m = Memory::new(Config {
            line_size: 64,
            capacity_lines: 256,
            map_capacity: 2,
            ..Config::default()
        })
        .unwrap();
        let store = &m.inner.store;
        let (a, b) = ([1u8; 64], [2u8; 64]);
        let (ia, _) = store.intern(LineKind::Leaf, &a).unwrap();
        let (ib, _) = store.intern(LineKind::Leaf, &b).unwrap();
        let guard = store.epochs.pin();
        assert_eq!(
            store.find_pinned(line_hash(LineKind::Leaf, &a), &a, &guard),
            Some(ia.0)
        );
        store.release(ia); // the borrowed child dies
        let mut cst = [Status::Borrowed, Status::Hit];
        let (mut out, mut st) = (Vec::new(), Vec::new());
        let r = store.interior_run(
            &[ia, ib],
            &mut cst,
            &mut out,
            &mut st,
            Some(&guard),
            Probe::Borrow,
        );
        assert!(matches!(r, Err(Fail::Retry)));
        assert!(out.is_empty());
        drop(guard);
        assert_eq!(m.live_lines(), 0, "the owned child was not given back");
        // The same build through the public path succeeds (and reruns
        // nothing here: no line is dying).
        let s = m.segment(&[a, b].concat()).unwrap();
        assert_eq!(s.to_vec(), [a, b].concat());
    }
}
