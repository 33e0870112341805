//! Fingerprint counting: what a HICAMP memory (or a page or chunk store) would hold, counted
//! without storing any line.
//!
//! # Why this is exact (up to fingerprint collisions)
//!
//! The footprint of a memory of one line size that holds a set of segments is fixed by the set
//! of distinct non-zero leaf lines and the set of distinct non-zero interior lines of the
//! segments' canonical DAGs: the DAG shape is a pure function of (content, length, line size)
//! (`hicamp::dag`), leaves are deduplicated by content and interior lines by their child ids.
//! Two interior lines are equal iff their children are the same lines, so an interior line can
//! stand as the hash of its children's fingerprints (zero children as 0, a partial last group
//! padded with zeros exactly as the memory pads it). [`LineCounter`] streams each item's leaves,
//! builds the interior levels on the fly (a complete `F`-ary tree, `F = line size / 4`, leaves
//! packed left, height the smallest `h` with `F^h >= leaves`) and puts every non-zero line's
//! 64-bit fingerprint in a [`FpSet`]. All-zero lines and all-zero subtrees are line 0 and are
//! never counted, as in the memory.
//!
//! Identity: two lines count as one when their 64-bit xxh3 fingerprints are equal (leaves and
//! interior lines are hashed with different seeds and carry a kind bit, so the kinds never
//! alias). A leaf of more than 16 bytes is fingerprinted by the fingerprints of its halves,
//! down to 16-byte pieces ([`line_fp`]), so that one pass gives every line size ([`Pyramid`]).
//! The expected number of false merges among `n` distinct fingerprints is about
//! `n^2 / 2^65`, which [`expected_false_merges`] gives and the report states, `n` counting
//! every node of the leaves' trees of halves ([`fingerprinted_nodes`]).
//!
//! # Bounded memory: distinct-count sampling
//!
//! A set has a budget in bytes. `hicamp dedup` sizes each set once from the input (every line
//! distinct), within its budget. When the table is full and growing would exceed the budget,
//! the set raises its sampling level `s`: it then keeps a fingerprint iff `s` of its bits are zero (probability `2^-s`), and drops
//! the entries that no longer qualify. The decision depends only on the fingerprint, so a
//! sampled line is counted at every occurrence or at none (a line is in the sample or it is
//! not, wherever it appears). The number of distinct lines is estimated as `k * 2^s` for `k`
//! sampled distinct lines; `k` is binomial, so the relative standard error is
//! `sqrt((1 - p) / k)` with `p = 2^-s`, and the report gives the 95% interval
//! (`1.96` standard errors).

use std::ops::Range;

use hicamp::hash::xxh3_64_with_seed;

const LEAF_SEED: u64 = 0x6869_6361_6d70_4c46;
const INTERIOR_SEED: u64 = 0x6869_6361_6d70_494e;
/// Highest sampling level: keeps one line in 2^22.
pub const MAX_LEVEL: u32 = 22;
const INITIAL_TABLE: usize = 1024;
/// Bytes per table slot.
pub const SLOT_BYTES: u64 = 8;
pub use hicamp::footprint::sampled::Z95;

/// Kind bit of a fingerprint: set for interior lines.
const INTERIOR_BIT: u64 = 1;

/// The fingerprint of a non-zero leaf line (never 0; kind bit clear).
#[inline]
pub fn leaf_fp(line: &[u8]) -> u64 {
    let h = xxh3_64_with_seed(line, LEAF_SEED) & !INTERIOR_BIT;
    if h == 0 {
        2
    } else {
        h
    }
}

/// The fingerprint of an interior line whose children's fingerprints are in `kids` (as
/// little-endian bytes, all `F` of them, zeros for zero children); never 0, kind bit set.
#[inline]
fn interior_fp(kids: &[u8]) -> u64 {
    xxh3_64_with_seed(kids, INTERIOR_SEED) | INTERIOR_BIT
}

/// A fingerprint of any block of bytes (CDC chunks), never 0.
#[inline]
pub fn block_fp(block: &[u8]) -> u64 {
    leaf_fp(block)
}

/// Lines of this size are fingerprinted by a hash of their bytes; larger power-of-two lines
/// by the fingerprints of their two halves ([`line_fp`]).
pub const PIECE: usize = 16;
const COMBINE_SEED: u64 = 0x6869_6361_6d70_4332;

/// The fingerprint of a `16 << level`-byte line whose halves have fingerprints `a` and `b`
/// (0 for an all-zero half): 0 when both are 0, else never 0 (kind bit clear).
#[inline]
fn combine(a: u64, b: u64, level: usize) -> u64 {
    if a | b == 0 {
        return 0;
    }
    let mut buf = [0u8; 16];
    buf[..8].copy_from_slice(&a.to_le_bytes());
    buf[8..].copy_from_slice(&b.to_le_bytes());
    let h = xxh3_64_with_seed(&buf, COMBINE_SEED.wrapping_add(level as u64)) & !INTERIOR_BIT;
    if h == 0 {
        2
    } else {
        h
    }
}

/// The fingerprint of a 16-byte piece (0 when all-zero).
#[inline]
fn piece_fp(piece: &[u8; PIECE]) -> u64 {
    if u128::from_ne_bytes(*piece) == 0 {
        0
    } else {
        leaf_fp(piece)
    }
}

/// The fingerprint of a leaf line, 0 when it is all zero.
///
/// A power-of-two line of more than [`PIECE`] bytes is fingerprinted as a tree: the
/// fingerprint of its two halves' fingerprints (`combine`), down to 16-byte pieces hashed
/// by [`leaf_fp`]. It is a function of the line's bytes like a hash of the whole line, but
/// one pass over the input ([`Pyramid`]) gives the fingerprints of every line size at once.
/// Any other line (and a 16-byte one) is hashed whole.
pub fn line_fp(line: &[u8]) -> u64 {
    let n = line.len();
    if n > PIECE && n.is_power_of_two() {
        let (lo, hi) = line.split_at(n / 2);
        combine(
            line_fp(lo),
            line_fp(hi),
            (n / PIECE).trailing_zeros() as usize,
        )
    } else if n == PIECE {
        piece_fp(line.try_into().expect("16 bytes"))
    } else if is_zero(line) {
        0
    } else {
        leaf_fp(line)
    }
}

/// Line sizes of a [`Pyramid`]: 16 B to 4096 B (every line size and the page).
pub const PYRAMID_LEVELS: usize = 9;

/// The leaf fingerprints ([`line_fp`]) of the lines of pieces of items at every line size
/// from 16 B to 4096 B, computed in one pass per piece: the 16-byte pieces are hashed and
/// each size is combined from the one below. A piece must start at a multiple of 4096 B
/// within its item; its last line at each size is zero-padded (as the memory pads an item's
/// last line).
#[derive(Debug, Default)]
pub struct Pyramid {
    levels: Vec<Vec<u64>>,
}

/// Where the fingerprints of one piece are in a [`Pyramid`].
#[derive(Debug, Clone, Copy, Default)]
pub struct PyramidSpan {
    start: [usize; PYRAMID_LEVELS],
    len: usize,
}

impl Pyramid {
    /// Forgets every piece (keeps the allocations).
    pub fn clear(&mut self) {
        for l in &mut self.levels {
            l.clear();
        }
    }

    /// Adds the fingerprints of the lines of `data`.
    pub fn append(&mut self, data: &[u8]) -> PyramidSpan {
        self.levels.resize_with(PYRAMID_LEVELS, Vec::new);
        let mut span = PyramidSpan {
            start: [0; PYRAMID_LEVELS],
            len: data.len(),
        };
        let l0 = &mut self.levels[0];
        span.start[0] = l0.len();
        let mut pieces = data.chunks_exact(PIECE);
        l0.extend((&mut pieces).map(|p| piece_fp(p.try_into().expect("16 bytes"))));
        let rest = pieces.remainder();
        if !rest.is_empty() {
            let mut p = [0u8; PIECE];
            p[..rest.len()].copy_from_slice(rest);
            l0.push(piece_fp(&p));
        }
        for k in 1..PYRAMID_LEVELS {
            let (below, this) = self.levels.split_at_mut(k);
            let (src, dst) = (&below[k - 1][span.start[k - 1]..], &mut this[0]);
            span.start[k] = dst.len();
            let mut pairs = src.chunks_exact(2);
            dst.extend((&mut pairs).map(|p| combine(p[0], p[1], k)));
            if let [last] = pairs.remainder() {
                dst.push(combine(*last, 0, k));
            }
        }
        span
    }

    /// The fingerprints of the `line_size` lines covering the piece of `span` (the last one
    /// zero-padded), or `None` for a size a pyramid does not hold.
    pub fn level(&self, span: &PyramidSpan, line_size: usize) -> Option<&[u64]> {
        if line_size < PIECE || !line_size.is_power_of_two() {
            return None;
        }
        let k = (line_size / PIECE).trailing_zeros() as usize;
        let l = self.levels.get(k)?;
        l.get(span.start[k]..span.start[k] + span.len.div_ceil(line_size))
    }
}

/// Expected number of pairs of distinct lines that share a 64-bit fingerprint among `n`
/// distinct lines (each such pair is counted once instead of twice).
pub fn expected_false_merges(n: u64) -> f64 {
    let n = n as f64;
    n * (n - 1.0) / 2.0 / 2f64.powi(64)
}

/// Distinct fingerprints a line size's count rests on, for [`expected_false_merges`]: its
/// distinct `interior` lines, and for each of its distinct `leaves` every node of the tree
/// of halves its fingerprint is built from ([`line_fp`]: `2 * line_size / 16 - 1` of them),
/// an upper bound of the distinct fingerprints that could collide.
pub fn fingerprinted_nodes(line_size: usize, leaves: u64, interior: u64) -> u64 {
    let per_leaf = if line_size > PIECE && line_size.is_power_of_two() {
        2 * (line_size / PIECE) as u64 - 1
    } else {
        1
    };
    interior.saturating_add(leaves.saturating_mul(per_leaf))
}

/// Tables from this size up are mapped on their own, aligned to 2 MiB and advised for
/// transparent huge pages where the kernel offers them: random probes into tables of
/// gigabytes would miss the TLB on nearly every access with 4 KiB pages.
const HUGE_TABLE_BYTES: usize = 2 << 20;

/// The slots of a table (native-endian `u64`s in bytes).
#[derive(Debug)]
enum Slots {
    Heap(Vec<u8>),
    /// A mapping, and the byte range of the slots in it (starting at a 2 MiB boundary).
    Map(memmap2::MmapMut, Range<usize>),
}

impl Slots {
    /// A zeroed table of `n` slots, or `None` when the system refuses the mapping of a large
    /// one (the caller then makes do with a smaller table).
    fn try_zeroed(n: usize) -> Option<Self> {
        let bytes = n.checked_mul(8)?;
        if bytes >= HUGE_TABLE_BYTES {
            // Map 2 MiB more than needed, so that the slots can start at a huge-page boundary
            // (the pages of the slack are never touched, so never resident).
            let m = memmap2::MmapMut::map_anon(bytes.checked_add(HUGE_TABLE_BYTES)?).ok()?;
            #[cfg(target_os = "linux")]
            let _ = m.advise(memmap2::Advice::HugePage);
            let start =
                (m.as_ptr() as usize).next_multiple_of(HUGE_TABLE_BYTES) - m.as_ptr() as usize;
            return Some(Slots::Map(m, start..start + bytes));
        }
        Some(Slots::Heap(vec![0; bytes]))
    }

    #[inline]
    fn bytes(&self) -> &[u8] {
        match self {
            Slots::Heap(v) => v,
            Slots::Map(m, r) => &m[r.clone()],
        }
    }

    #[inline]
    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Slots::Heap(v) => v,
            Slots::Map(m, r) => &mut m[r.clone()],
        }
    }

    #[inline]
    fn get(&self, i: usize) -> u64 {
        let b = self.bytes();
        u64::from_ne_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
    }

    #[inline]
    fn set(&mut self, i: usize, v: u64) {
        self.bytes_mut()[i * 8..i * 8 + 8].copy_from_slice(&v.to_ne_bytes());
    }

    fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.bytes()
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")))
    }
}

/// The sampling level a table of `cap` slots starts at when it may meet at most
/// `max_entries` distinct fingerprints: one below the lowest level at which all of them would
/// fit (0 when they fit unsampled).
///
/// Sampling is a function of the fingerprints only, so a set ends at the lowest level `s`
/// whose sample of the whole input fits (`D_s <= T`), whatever level it started at, as long
/// as it started at or below `s`; starting higher loses nothing then, and skips the inserts
/// of the levels below (at `--memory 1G` on /usr/lib, three quarters of all inserts). With
/// `max_entries` fitting at level `p`, the set ends at `p` or `p - 1` whenever at least about
/// half the lines it may meet are distinct (`D > max_entries / 2`): exactly as if it had
/// started at 0. Inputs with fewer distinct lines may end one level or more higher than a set
/// starting at 0 would, with a sample rate (and interval) the report states as always.
pub fn start_level(max_entries: u64, cap: usize) -> u32 {
    let fit = (cap as u64).saturating_mul(4) / 5;
    let mut p = 0;
    while p < MAX_LEVEL && (max_entries >> p) > fit {
        p += 1;
    }
    p.saturating_sub(1)
}

/// A table is full past this load (4/5).
fn full_at(len: usize, cap: usize) -> bool {
    (len + 1) * 5 > cap * 4
}

/// Slots for at most `entries` fingerprints without passing the full load.
pub fn slots_for(entries: u64) -> u64 {
    (entries.saturating_mul(5) / 4).saturating_add(8)
}

/// Fingerprints a set looks ahead of the one it inserts, prefetching their home slots so that
/// the cache misses of several inserts overlap.
const PREFETCH_AHEAD: usize = 16;

/// A set of fingerprints in a memory budget, sampled by fingerprint when the budget is reached
/// (see the module documentation).
///
/// One open-addressing table with linear probing; the home slot of a fingerprint is its top
/// bits scaled to the table, so the table is ordered by fingerprint (up to the probing runs)
/// and growing it is one sequential pass. A set told the most fingerprints it can get
/// ([`FpSet::with_max_entries`], as `hicamp dedup` does from the input's size) is sized for
/// them once and never grows; otherwise it doubles when 4/5 full. When the budget forbids the
/// size it needs, the set raises its sampling level and drops, in place, the entries that no
/// longer qualify.
#[derive(Debug)]
pub struct FpSet {
    table: Slots,
    /// Slots.
    cap: usize,
    /// Entries.
    len: usize,
    level: u32,
    budget: u64,
    peak_bytes: u64,
    /// Distinct sampled fingerprints by kind (leaf, interior).
    counts: [u64; 2],
}

impl FpSet {
    /// An empty set that grows as needed and keeps its table within `budget` bytes (at least a
    /// minimal table).
    pub fn new(budget: u64) -> Self {
        Self::with_slots(budget, INITIAL_TABLE as u64)
    }

    /// An empty set sized once for `max_entries` distinct fingerprints (at a load of at most
    /// 4/5, so it never grows), or for what `budget` allows if that is less.
    pub fn with_max_entries(budget: u64, max_entries: u64) -> Self {
        let slots = slots_for(max_entries).min(budget / SLOT_BYTES);
        Self::with_slots(budget, slots)
    }

    /// [`FpSet::with_max_entries`], starting at the sampling level below the one at which
    /// `max_entries` distinct fingerprints would fit the table (see
    /// [`start_level`]): the inserts of the lower levels, which would all be dropped when
    /// the input has at least about half that many distinct fingerprints, are not made.
    pub fn with_max_entries_presampled(budget: u64, max_entries: u64) -> Self {
        let mut set = Self::with_max_entries(budget, max_entries);
        set.level = start_level(max_entries, set.cap);
        set
    }

    fn with_slots(budget: u64, slots: u64) -> Self {
        let mut cap = usize::try_from(slots)
            .unwrap_or(usize::MAX / 16)
            .max(INITIAL_TABLE);
        // A table the system will not map is halved until it will (a small one always is).
        let table = loop {
            match Slots::try_zeroed(cap) {
                Some(t) => break t,
                None => cap = (cap / 2).max(INITIAL_TABLE),
            }
        };
        let bytes = cap as u64 * SLOT_BYTES;
        FpSet {
            table,
            cap,
            len: 0,
            level: 0,
            budget,
            peak_bytes: bytes,
            counts: [0; 2],
        }
    }

    /// The sampling level: one fingerprint in `2^level` is kept.
    pub fn level(&self) -> u32 {
        self.level
    }

    /// The sampling rate, `2^-level`.
    pub fn rate(&self) -> f64 {
        0.5f64.powi(self.level as i32)
    }

    /// Bytes held by the table now, and at most so far.
    pub fn bytes(&self) -> (u64, u64) {
        (self.cap as u64 * SLOT_BYTES, self.peak_bytes)
    }

    /// True when `fp` is in the sample at the current level.
    #[inline]
    pub fn accepts(&self, fp: u64) -> bool {
        (fp >> 1) & ((1u64 << self.level) - 1) == 0
    }

    /// Distinct sampled fingerprints: (leaves, interior).
    pub fn sampled(&self) -> (u64, u64) {
        (self.counts[0], self.counts[1])
    }

    /// The home slot of `fp`: its top bits scaled to the table.
    #[inline]
    fn home(&self, fp: u64) -> usize {
        ((u128::from(fp) * self.cap as u128) >> 64) as usize
    }

    /// Puts `fp` at the first free slot from its home unless it is there already; the table
    /// has a free slot. True when it was not there.
    #[inline]
    fn place(&mut self, fp: u64) -> bool {
        let mut i = self.home(fp);
        loop {
            let e = self.table.get(i);
            if e == fp {
                return false;
            }
            if e == 0 {
                self.table.set(i, fp);
                self.len += 1;
                return true;
            }
            i += 1;
            if i == self.cap {
                i = 0;
            }
        }
    }

    /// Adds a fingerprint (non-zero). True when it is in the sample and was not there yet.
    #[inline]
    pub fn insert(&mut self, fp: u64) -> bool {
        debug_assert!(fp != 0);
        if !self.accepts(fp) {
            return false;
        }
        if full_at(self.len, self.cap) {
            self.make_room();
            if !self.accepts(fp) {
                return false;
            }
        }
        let new = self.place(fp);
        if new {
            self.counts[(fp & INTERIOR_BIT) as usize] += 1;
        }
        new
    }

    /// Inserts a batch, prefetching the home slots of the fingerprints a few places ahead so
    /// that their cache misses overlap.
    pub fn insert_batch(&mut self, fps: &[u64]) {
        for &fp in fps.iter().take(PREFETCH_AHEAD) {
            self.prefetch(fp);
        }
        for (i, &fp) in fps.iter().enumerate() {
            if let Some(&ahead) = fps.get(i + PREFETCH_AHEAD) {
                self.prefetch(ahead);
            }
            self.insert(fp);
        }
    }

    #[inline]
    fn prefetch(&self, fp: u64) {
        let i = self.home(fp);
        hicamp::footprint::sampled::prefetch_read(&self.table.bytes()[i * 8]);
    }

    /// Makes room for one more entry: doubles the table when the budget allows the old and
    /// the new table at once, else raises the sampling level (at the highest level the table
    /// grows regardless).
    #[cold]
    fn make_room(&mut self) {
        while full_at(self.len, self.cap) {
            let bytes = self.cap as u64 * SLOT_BYTES;
            let may_grow = bytes * 3 <= self.budget || self.level >= MAX_LEVEL;
            // Past MAX_LEVEL only when the system refuses a bigger table (the level can go
            // up to 62, where no fingerprint qualifies any more).
            if !(may_grow && self.grow(self.cap * 2)) && self.level < 62 {
                self.raise_level();
            }
        }
    }

    /// Rebuilds the table at `cap` slots (one pass over the old table in slot order, which is
    /// about fingerprint order, so the new table is written about sequentially).
    /// False (and nothing changed) when the system refuses the new table.
    fn grow(&mut self, cap: usize) -> bool {
        let Some(new) = Slots::try_zeroed(cap) else {
            return false;
        };
        let old = std::mem::replace(&mut self.table, new);
        let old_bytes = self.cap as u64 * SLOT_BYTES;
        self.cap = cap;
        self.len = 0;
        for e in old.iter().filter(|&e| e != 0) {
            self.place(e);
        }
        let bytes = cap as u64 * SLOT_BYTES;
        self.peak_bytes = self.peak_bytes.max(bytes + old_bytes);
        true
    }

    /// Halves the sample (one more level) and drops, in place, the entries that no longer
    /// qualify.
    ///
    /// The slots are visited once, in order, starting just after a free slot (so no probing
    /// run crosses the start): each entry is taken out and, if it stays, put back at the first
    /// free slot from its home. That slot is at or before the one it was taken from (which is
    /// free now), and every slot between its home and it is taken, so lookups find it; the
    /// slots freed later all lie past the entries already put back.
    fn raise_level(&mut self) {
        self.level += 1;
        let level = self.level;
        let keep = move |fp: u64| (fp >> 1) & ((1u64 << level) - 1) == 0;
        let start = (0..self.cap)
            .find(|&i| self.table.get(i) == 0)
            .expect("a table below full load has a free slot");
        self.len = 0;
        self.counts = [0; 2];
        // Slots start+1, ..., cap-1, 0, ..., start, without a division per slot (which
        // was most of the pass's time).
        let order = (start + 1..self.cap).chain(0..=start);
        for p in order {
            let e = self.table.get(p);
            if e == 0 {
                continue;
            }
            self.table.set(p, 0);
            if keep(e) {
                self.place(e);
                self.counts[(e & INTERIOR_BIT) as usize] += 1;
            }
        }
    }
}

/// The estimate of a number of distinct things from a sample.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Estimate {
    /// Sampled distinct things.
    pub sampled: u64,
    /// Sampling rate (1.0: exact count).
    pub rate: f64,
    /// `sampled / rate`.
    pub value: u64,
    /// Half-width of the 95% interval relative to `value` (0 when exact).
    pub rel_err_95: f64,
}

impl Estimate {
    /// The estimate from `sampled` distinct things kept at `rate`.
    pub fn new(sampled: u64, rate: f64) -> Self {
        let value = (sampled as f64 / rate).round() as u64;
        let rel_err_95 = if rate >= 1.0 {
            0.0
        } else if sampled == 0 {
            1.0
        } else {
            Z95 * ((1.0 - rate) / sampled as f64).sqrt()
        };
        Estimate {
            sampled,
            rate,
            value,
            rel_err_95,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The metadata model

/// The metadata model of a HICAMP memory holding a number of lines (one model, the shim's
/// and this tool's).
pub use hicamp::footprint::sampled::memory_metadata;

// ---------------------------------------------------------------------------------------------
// Streaming counters

/// What a [`LineCounter`] counted.
#[derive(Debug, Clone, Default)]
pub struct LineCounts {
    /// Line (or page) size.
    pub line_size: u64,
    /// Bytes fed.
    pub logical_bytes: u64,
    /// Logical bytes in all-zero lines (their real bytes, as [`hicamp::footprint::ZeroLineCounter`]).
    pub zero_bytes: u64,
    /// Non-zero leaf writes.
    pub leaf_writes: u64,
    /// All-zero leaf writes.
    pub zero_leaves: u64,
    /// Non-zero interior writes.
    pub interior_writes: u64,
    /// All-zero interior writes.
    pub zero_interior: u64,
    /// Distinct leaves.
    pub leaves: Estimate,
    /// Distinct interior lines.
    pub interior: Estimate,
    /// Distinct lines of both kinds.
    pub lines: Estimate,
    /// Peak bytes of the fingerprint tables.
    pub set_peak_bytes: u64,
}

impl Default for Estimate {
    fn default() -> Self {
        Estimate::new(0, 1.0)
    }
}

/// Streams items through the canonical DAG of one line size (or, with `tree == false`, through
/// fixed blocks only, for the page baseline) and counts distinct lines by fingerprint.
#[derive(Debug)]
pub struct LineCounter {
    ls: usize,
    fanout: usize,
    tree: bool,
    /// Bytes of the current item's incomplete line.
    partial: Vec<u8>,
    /// `levels[l]`: fingerprints at level `l` not yet grouped into a parent (fewer than `F`).
    levels: Vec<Vec<u64>>,
    leaves_in_item: u64,
    batch: Vec<u64>,
    scratch: Vec<u8>,
    set: FpSet,
    c: LineCounts,
}

const BATCH: usize = 512;

impl LineCounter {
    /// A counter for lines of `line_size` bytes (a power of two from 16 for trees; any size
    /// without), keeping its set within `budget` bytes.
    pub fn new(line_size: usize, tree: bool, budget: u64) -> Self {
        Self::with_set(line_size, tree, FpSet::new(budget))
    }

    /// [`LineCounter::new`] with a set sized once for at most `max_lines` distinct lines
    /// (see [`max_lines`]).
    pub fn with_max_lines(line_size: usize, tree: bool, budget: u64, max_lines: u64) -> Self {
        Self::with_set(
            line_size,
            tree,
            FpSet::with_max_entries_presampled(budget, max_lines),
        )
    }

    fn with_set(line_size: usize, tree: bool, set: FpSet) -> Self {
        let fanout = (line_size / 4).max(2);
        LineCounter {
            ls: line_size,
            fanout,
            tree,
            partial: Vec::with_capacity(line_size),
            levels: Vec::new(),
            leaves_in_item: 0,
            batch: Vec::with_capacity(BATCH),
            scratch: vec![0; fanout * 8],
            set,
            c: LineCounts {
                line_size: line_size as u64,
                ..LineCounts::default()
            },
        }
    }

    /// The line size.
    pub fn line_size(&self) -> usize {
        self.ls
    }

    /// Adds the next bytes of the current item.
    pub fn feed(&mut self, mut data: &[u8]) {
        self.c.logical_bytes += data.len() as u64;
        if !self.partial.is_empty() {
            let take = (self.ls - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() < self.ls {
                return;
            }
            let line = std::mem::take(&mut self.partial);
            self.leaf(&line, self.ls);
            self.partial = line;
            self.partial.clear();
        }
        let mut lines = data.chunks_exact(self.ls);
        for line in &mut lines {
            self.leaf(line, self.ls);
        }
        self.partial.extend_from_slice(lines.remainder());
    }

    /// Ends the current item: the last partial line is zero-padded, and the DAG's right edge is
    /// closed up to the root.
    pub fn finish_item(&mut self) {
        if !self.partial.is_empty() {
            let real = self.partial.len();
            let mut line = std::mem::take(&mut self.partial);
            line.resize(self.ls, 0);
            self.leaf(&line, real);
            line.clear();
            self.partial = line;
        }
        if self.tree {
            let h = height_for(self.leaves_in_item, self.fanout as u64);
            for l in 0..h as usize {
                if self.levels.len() > l && !self.levels[l].is_empty() {
                    self.group(l);
                }
            }
            for lv in &mut self.levels {
                lv.clear();
            }
        }
        self.leaves_in_item = 0;
    }

    /// True when the bytes fed of the current item end at a line boundary, so that
    /// [`feed_fps`](Self::feed_fps) may be used.
    pub fn at_line_boundary(&self) -> bool {
        self.partial.is_empty()
    }

    /// Adds the next whole lines of the current item by their leaf fingerprints
    /// ([`line_fp`], as a [`Pyramid`] gives them), `line_size` bytes each. The bytes fed so
    /// far must end at a line boundary ([`at_line_boundary`](Self::at_line_boundary)).
    pub fn feed_fps(&mut self, fps: &[u64]) {
        debug_assert!(self.partial.is_empty());
        self.c.logical_bytes += (fps.len() * self.ls) as u64;
        self.leaves_in_item += fps.len() as u64;
        let mut zero = 0u64;
        for &fp in fps {
            if fp == 0 {
                zero += 1;
            } else {
                self.push(fp);
            }
        }
        self.c.zero_leaves += zero;
        self.c.zero_bytes += zero * self.ls as u64;
        self.c.leaf_writes += fps.len() as u64 - zero;
        if !self.tree {
            return;
        }
        // Complete the pending group of leaves, then group whole runs of `F` leaves straight
        // from `fps`; the rest waits for the next call.
        let f = self.fanout;
        let mut rest = fps;
        if self.levels.is_empty() {
            self.levels.push(Vec::with_capacity(f));
        }
        if !self.levels[0].is_empty() {
            let take = (f - self.levels[0].len()).min(rest.len());
            self.levels[0].extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.levels[0].len() == f {
                self.group(0);
            }
        }
        let mut groups = rest.chunks_exact(f);
        for kids in &mut groups {
            let fp = self.parent(kids);
            self.child(1, fp);
        }
        self.levels[0].extend_from_slice(groups.remainder());
    }

    #[inline]
    fn leaf(&mut self, line: &[u8], real: usize) {
        self.add_leaf(line_fp(line), real);
    }

    /// Adds a leaf of fingerprint `fp` (0: all zero) holding `real` bytes of the item.
    #[inline]
    fn add_leaf(&mut self, fp: u64, real: usize) {
        self.leaves_in_item += 1;
        if fp == 0 {
            self.c.zero_leaves += 1;
            self.c.zero_bytes += real as u64;
        } else {
            self.c.leaf_writes += 1;
            self.push(fp);
        }
        if self.tree {
            self.child(0, fp);
        }
    }

    #[inline]
    fn push(&mut self, fp: u64) {
        if self.set.accepts(fp) {
            self.batch.push(fp);
            if self.batch.len() == BATCH {
                self.flush();
            }
        }
    }

    fn flush(&mut self) {
        if !self.batch.is_empty() {
            self.set.insert_batch(&self.batch);
            self.batch.clear();
        }
    }

    /// Adds a line at `level` to the right edge; groups it with its siblings when complete.
    #[inline]
    fn child(&mut self, level: usize, fp: u64) {
        if self.levels.len() <= level {
            self.levels
                .resize_with(level + 1, || Vec::with_capacity(self.fanout));
        }
        self.levels[level].push(fp);
        if self.levels[level].len() == self.fanout {
            self.group(level);
        }
    }

    /// Makes the parent of the lines pending at `level` (zero-padded to `F` children).
    fn group(&mut self, level: usize) {
        let mut kids = std::mem::take(&mut self.levels[level]);
        let fp = self.parent(&kids);
        kids.clear();
        self.levels[level] = kids;
        self.child(level + 1, fp);
    }

    /// Counts the interior line whose children are `kids` (at most `F`; zero-padded to `F`)
    /// and returns its fingerprint (0 when every child is 0).
    #[inline]
    fn parent(&mut self, kids: &[u64]) -> u64 {
        if kids.iter().all(|&k| k == 0) {
            self.c.zero_interior += 1;
            return 0;
        }
        self.c.interior_writes += 1;
        let n = kids.len() * 8;
        for (d, k) in self.scratch[..n].chunks_exact_mut(8).zip(kids) {
            d.copy_from_slice(&k.to_le_bytes());
        }
        self.scratch[n..].fill(0);
        let fp = interior_fp(&self.scratch);
        self.push(fp);
        fp
    }

    /// The counts so far (call after [`finish_item`](Self::finish_item)).
    pub fn counts(&mut self) -> LineCounts {
        self.flush();
        let rate = self.set.rate();
        let (l, i) = self.set.sampled();
        let mut c = self.c.clone();
        c.leaves = Estimate::new(l, rate);
        c.interior = Estimate::new(i, rate);
        c.lines = Estimate::new(l + i, rate);
        c.set_peak_bytes = self.set.bytes().1;
        c
    }
}

/// The most non-zero lines (leaves and, with `tree`, interior lines of the canonical DAGs) a
/// [`LineCounter`] of `line_size` can meet in items of `lens` bytes: an upper bound of its
/// distinct lines.
pub fn max_lines(line_size: usize, tree: bool, lens: impl Iterator<Item = u64>) -> u64 {
    let ls = line_size as u64;
    let fanout = (ls / 4).max(2);
    let mut lines: u64 = 0;
    for len in lens {
        let leaves = len.div_ceil(ls);
        lines = lines.saturating_add(leaves);
        if tree {
            let mut level = leaves;
            while level > 1 {
                level = level.div_ceil(fanout);
                lines = lines.saturating_add(level);
            }
        }
    }
    lines
}

/// Height of the canonical DAG over `n` leaves with fanout `f` (`hicamp::shape::height_for`).
pub fn height_for(n: u64, f: u64) -> u32 {
    let mut h = 0;
    let mut span: u64 = 1;
    while span < n {
        span = span.saturating_mul(f);
        h += 1;
    }
    h
}

/// True when every byte is zero (hicamp's own test, so the counts agree with the memory).
pub use hicamp::footprint::is_zero;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heights() {
        assert_eq!(height_for(0, 4), 0);
        assert_eq!(height_for(1, 4), 0);
        assert_eq!(height_for(4, 4), 1);
        assert_eq!(height_for(5, 4), 2);
        assert_eq!(height_for(16, 4), 2);
        assert_eq!(height_for(17, 4), 3);
    }

    #[test]
    fn set_counts_and_samples() {
        let mut s = FpSet::new(u64::MAX);
        for i in 1..=10_000u64 {
            assert!(s.insert(leaf_fp(&i.to_le_bytes())));
            assert!(!s.insert(leaf_fp(&i.to_le_bytes())));
        }
        assert_eq!(s.sampled(), (10_000, 0));
        let mut small = FpSet::new(64 << 10);
        for i in 1..=200_000u64 {
            small.insert(leaf_fp(&i.to_le_bytes()));
        }
        assert!(small.level() > 0);
        assert!(small.bytes().0 <= 64 << 10);
        let e = Estimate::new(small.sampled().0, small.rate());
        let err = (e.value as f64 - 200_000.0).abs() / 200_000.0;
        assert!(err <= e.rel_err_95 * 1.5, "{e:?} err {err}");
    }

    /// Raising the level in place keeps exactly the entries that qualify, each findable.
    #[test]
    fn level_raise_in_place_keeps_what_qualifies() {
        let fps: Vec<u64> = (1..=30_000u64).map(|i| leaf_fp(&i.to_le_bytes())).collect();
        // A table that cannot grow (budget = its size) and cannot hold them all.
        let mut s = FpSet::with_max_entries(16 << 10, 1 << 20);
        assert_eq!(s.level(), 0);
        assert_eq!(s.bytes().0, 16 << 10);
        for &fp in &fps {
            s.insert(fp);
        }
        assert!(s.level() > 0);
        assert_eq!(s.bytes(), (16 << 10, 16 << 10), "never grew");
        let want: Vec<u64> = fps.iter().copied().filter(|&f| s.accepts(f)).collect();
        assert_eq!(s.sampled().0, want.len() as u64);
        for &fp in &want {
            assert!(!s.insert(fp), "a kept entry is still found");
        }
        assert_eq!(s.sampled().0, want.len() as u64);
    }

    /// A set sized for its entries never grows; one that is not grows and says so in its peak.
    #[test]
    fn presized_sets_do_not_grow() {
        let fps: Vec<u64> = (1..=50_000u64).map(|i| leaf_fp(&i.to_le_bytes())).collect();
        let mut sized = FpSet::with_max_entries(u64::MAX, fps.len() as u64);
        sized.insert_batch(&fps);
        sized.insert_batch(&fps);
        assert_eq!(sized.sampled(), (50_000, 0));
        assert_eq!(sized.bytes().0, sized.bytes().1);
        let mut grown = FpSet::new(u64::MAX);
        grown.insert_batch(&fps);
        assert_eq!(grown.sampled(), (50_000, 0));
        assert!(grown.bytes().1 > grown.bytes().0);
    }

    /// A set asked for more slots than the system can map makes do with a table it can.
    #[test]
    fn unmappable_table_is_halved_not_fatal() {
        let mut s = FpSet::with_max_entries(u64::MAX, 1 << 61);
        let (bytes, _) = s.bytes();
        assert!(bytes >= INITIAL_TABLE as u64 * SLOT_BYTES && bytes < 1 << 62);
        // A few inserts only: each may touch a 2 MiB page of the (large) table.
        for i in 1..=8u64 {
            assert!(s.insert(leaf_fp(&i.to_le_bytes())));
        }
        assert_eq!(s.sampled(), (8, 0));
    }

    /// The pyramid gives, at every size, the fingerprints `line_fp` gives each line cut from
    /// the block and zero-padded; zero lines are 0 and no other line is.
    #[test]
    fn pyramid_matches_line_fps() {
        let mut data = testkit::Rng::new(7).bytes(3 * 4096 + 100);
        data[4096..4096 + 2048].fill(0); // zero lines up to 2 KiB
        data[100..116].fill(0); // a zero 16-byte piece inside a non-zero line
        fn check(p: &Pyramid, span: &PyramidSpan, block: &[u8]) {
            let len = block.len();
            for k in 0..PYRAMID_LEVELS {
                let ls = PIECE << k;
                let fps = p.level(span, ls).expect("computed");
                assert_eq!(fps.len(), len.div_ceil(ls), "len {len} size {ls}");
                for (i, &fp) in fps.iter().enumerate() {
                    let mut line = block[i * ls..((i + 1) * ls).min(len)].to_vec();
                    line.resize(ls, 0);
                    assert_eq!(fp, line_fp(&line), "len {len} size {ls} line {i}");
                    assert_eq!(fp == 0, is_zero(&line));
                }
            }
        }
        let mut p = Pyramid::default();
        let lens = [data.len(), 4096, 4095, 17, 16, 1, 0, 4096 + 2048];
        // One piece per pyramid, then all of them in one.
        for &len in &lens {
            p.clear();
            let span = p.append(&data[..len]);
            check(&p, &span, &data[..len]);
        }
        p.clear();
        let spans: Vec<PyramidSpan> = lens.iter().map(|&len| p.append(&data[..len])).collect();
        for (&len, span) in lens.iter().zip(&spans) {
            check(&p, span, &data[..len]);
        }
        let span = p.append(&data);
        assert!(p.level(&span, 8192).is_none() && p.level(&span, 24).is_none());
        // Halves swapped are a different line.
        let a = [1u8; 16];
        let b = [2u8; 16];
        assert_ne!(line_fp(&[a, b].concat()), line_fp(&[b, a].concat()));
        assert_ne!(
            line_fp(&[a, [0; 16]].concat()),
            line_fp(&[[0; 16], a].concat())
        );
    }

    /// A presampled set ends at the level and with the sample of a set that starts at 0,
    /// when at least half the fingerprints it was told of are distinct.
    #[test]
    fn presampled_set_ends_as_an_unsampled_start() {
        let max = 100_000u64;
        for distinct in [max, max * 3 / 4, max / 2 + 2_000] {
            let fps: Vec<u64> = (0..max)
                .map(|i| leaf_fp(&(i % distinct + 1).to_le_bytes()))
                .collect();
            let mut from0 = FpSet::with_max_entries(64 << 10, max);
            let mut pre = FpSet::with_max_entries_presampled(64 << 10, max);
            assert!(pre.level() > 0 && from0.level() == 0);
            from0.insert_batch(&fps);
            pre.insert_batch(&fps);
            assert_eq!(pre.level(), from0.level(), "distinct {distinct}");
            assert_eq!(pre.sampled(), from0.sampled(), "distinct {distinct}");
        }
        assert_eq!(start_level(1000, 10_000), 0);
        assert_eq!(start_level(8000, 10_000), 0);
        assert_eq!(start_level(8001, 10_000), 0);
        assert_eq!(start_level(16_001, 10_000), 0);
        assert_eq!(start_level(16_002, 10_000), 1);
        assert_eq!(start_level(64_008, 10_000), 3);
    }

    #[test]
    fn metadata_model_matches_a_real_memory() {
        // 2^17 random 64-byte lines in one segment: the model's counts and free lists
        // exactly, its index within 15% of the real tables' (which sit anywhere between
        // their growths).
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let data: Vec<u8> = (0..(64usize << 17))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mem = hicamp::Memory::new(hicamp::Config {
            line_size: 64,
            capacity_lines: 1 << 19,
            ..hicamp::Config::default()
        })
        .unwrap();
        let _seg = mem.segment(&data).unwrap();
        let s = mem.stats();
        let (r, i, _) = memory_metadata(s.live_lines());
        assert_eq!(r, s.live_lines() + 1);
        let (real, model) = (s.index_bytes as f64, i as f64);
        assert!(
            (real - model).abs() <= 0.15 * real,
            "index {real} vs model {model}"
        );
    }
}
