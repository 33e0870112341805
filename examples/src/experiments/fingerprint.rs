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
//! alias). The expected number of false merges among `n` distinct lines is about
//! `n^2 / 2^64`, which [`expected_false_merges`] gives and the report states.
//!
//! # Bounded memory: distinct-count sampling
//!
//! A set has a budget in bytes. When growing would exceed it, the set raises its sampling level
//! `s`: it then keeps a fingerprint iff `s` of its bits are zero (probability `2^-s`), and drops
//! the entries that no longer qualify. The decision depends only on the fingerprint, so a
//! sampled line is counted at every occurrence or at none (a line is in the sample or it is
//! not, wherever it appears). The number of distinct lines is estimated as `k * 2^s` for `k`
//! sampled distinct lines; `k` is binomial, so the relative standard error is
//! `sqrt((1 - p) / k)` with `p = 2^-s`, and the report gives the 95% interval
//! (`1.96` standard errors).

use xxhash_rust::xxh3::xxh3_64_with_seed;

const LEAF_SEED: u64 = 0x6869_6361_6d70_4c46;
const INTERIOR_SEED: u64 = 0x6869_6361_6d70_494e;
const SHARD_BITS: u32 = 6;
const SHARDS: usize = 1 << SHARD_BITS;
/// Highest sampling level: keeps one line in 2^22.
pub const MAX_LEVEL: u32 = 22;
const INITIAL_TABLE: usize = 8;
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

/// A fingerprint of any block of bytes (pages, CDC chunks), never 0.
#[inline]
pub fn block_fp(block: &[u8]) -> u64 {
    leaf_fp(block)
}

/// Expected number of pairs of distinct lines that share a 64-bit fingerprint among `n`
/// distinct lines (each such pair is counted once instead of twice).
pub fn expected_false_merges(n: u64) -> f64 {
    let n = n as f64;
    n * (n - 1.0) / 2.0 / 2f64.powi(64)
}

/// Tables from this size up are mapped on their own and backed by transparent huge pages
/// where the kernel offers them: random probes into tables of gigabytes would miss the TLB on
/// every access with 4 KiB pages.
const HUGE_TABLE_BYTES: usize = 2 << 20;

/// The slots of a table (native-endian `u64`s in bytes).
#[derive(Debug)]
enum Slots {
    Heap(Vec<u8>),
    Map(memmap2::MmapMut),
}

impl Clone for Slots {
    fn clone(&self) -> Self {
        let mut t = Slots::zeroed(self.len());
        t.bytes_mut().copy_from_slice(self.bytes());
        t
    }
}

impl Slots {
    fn zeroed(n: usize) -> Self {
        let bytes = n * 8;
        if bytes >= HUGE_TABLE_BYTES {
            if let Ok(m) = memmap2::MmapMut::map_anon(bytes) {
                #[cfg(target_os = "linux")]
                let _ = m.advise(memmap2::Advice::HugePage);
                return Slots::Map(m);
            }
        }
        Slots::Heap(vec![0; bytes])
    }

    #[inline]
    fn bytes(&self) -> &[u8] {
        match self {
            Slots::Heap(v) => v,
            Slots::Map(m) => m,
        }
    }

    #[inline]
    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Slots::Heap(v) => v,
            Slots::Map(m) => m,
        }
    }

    #[inline]
    fn len(&self) -> usize {
        self.bytes().len() / 8
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

#[derive(Debug, Clone)]
struct Shard {
    table: Slots,
    len: usize,
    /// `table.len()`.
    cap: usize,
}

/// A shard's table is full past this load (4/5); it is rebuilt at twice its entries (load
/// 1/2), so the tables stay between 1/2 and 4/5 full: 10 to 16 bytes per fingerprint.
fn full_at(len: usize, cap: usize) -> bool {
    (len + 1) * 5 > cap * 4
}

/// Slots of a table rebuilt for `len` entries.
fn cap_for(len: usize) -> usize {
    (2 * (len + 1)).next_multiple_of(8).max(INITIAL_TABLE)
}

impl Shard {
    fn with_len(len: usize) -> Self {
        let cap = cap_for(len);
        Shard {
            table: Slots::zeroed(cap),
            len: 0,
            cap,
        }
    }

    /// The home slot of `fp`: its bits below the shard bits scaled to the table, so that the
    /// order of the entries in the table follows their fingerprints and growing a table is one
    /// sequential pass over the old and the new table.
    #[inline]
    fn home(&self, fp: u64) -> usize {
        ((u128::from(fp << SHARD_BITS) * self.cap as u128) >> 64) as usize
    }

    /// Inserts into a table with room. True when `fp` was not there.
    #[inline]
    fn insert(&mut self, fp: u64) -> bool {
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

    fn full(&self) -> bool {
        full_at(self.len, self.cap)
    }

    /// Rebuilds the table for its entries that `keep`, sized for them.
    fn rebuild(&mut self, keep: impl Fn(u64) -> bool, extra: usize) {
        let old = std::mem::replace(&mut self.table, Slots::Heap(Vec::new()));
        let n = old.iter().filter(|&e| e != 0 && keep(e)).count();
        *self = Shard::with_len(n + extra);
        for e in old.iter() {
            if e != 0 && keep(e) {
                self.insert(e);
            }
        }
    }
}

/// A set of fingerprints in a memory budget, sampled by fingerprint when the budget is reached
/// (see the module documentation).
#[derive(Debug, Clone)]
pub struct FpSet {
    shards: Vec<Shard>,
    level: u32,
    budget: u64,
    bytes: u64,
    peak_bytes: u64,
    /// Distinct sampled fingerprints by kind (leaf, interior).
    counts: [u64; 2],
}

impl FpSet {
    /// An empty set that keeps its tables within `budget` bytes (at least a minimal table per
    /// shard).
    pub fn new(budget: u64) -> Self {
        let shards = (0..SHARDS).map(|_| Shard::with_len(0)).collect();
        let bytes = (SHARDS * INITIAL_TABLE) as u64 * SLOT_BYTES;
        FpSet {
            shards,
            level: 0,
            budget,
            bytes,
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

    /// Bytes held by the tables now, and at most so far.
    pub fn bytes(&self) -> (u64, u64) {
        (self.bytes, self.peak_bytes)
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

    /// Adds a fingerprint (non-zero). True when it is in the sample and was not there yet.
    #[inline]
    pub fn insert(&mut self, fp: u64) -> bool {
        debug_assert!(fp != 0);
        if !self.accepts(fp) {
            return false;
        }
        let s = (fp >> (64 - SHARD_BITS)) as usize;
        if self.shards[s].full() {
            let grow = cap_for(self.shards[s].len + 1) as u64 * SLOT_BYTES;
            if self.bytes + grow > self.budget && self.level < MAX_LEVEL {
                self.raise_level();
                if !self.accepts(fp) {
                    return false;
                }
            }
            let shard = &mut self.shards[s];
            if shard.full() {
                let before = shard.table.len() as u64;
                shard.rebuild(|_| true, 1);
                self.bytes =
                    self.bytes - before * SLOT_BYTES + shard.table.len() as u64 * SLOT_BYTES;
                self.peak_bytes = self.peak_bytes.max(self.bytes + before * SLOT_BYTES);
            }
        }
        let new = self.shards[s].insert(fp);
        if new {
            self.counts[(fp & INTERIOR_BIT) as usize] += 1;
        }
        new
    }

    /// Inserts a batch. The first slot of each of a group of fingerprints is loaded first, with
    /// no branch between the loads, so that their cache misses overlap; the inserts then find
    /// the slots in the cache.
    pub fn insert_batch(&mut self, fps: &[u64]) {
        const GROUP: usize = 16;
        for group in fps.chunks(GROUP) {
            let mut acc = 0u64;
            for &fp in group {
                let sh = &self.shards[(fp >> (64 - SHARD_BITS)) as usize];
                acc = acc.wrapping_add(sh.table.get(sh.home(fp)));
            }
            std::hint::black_box(acc);
            for &fp in group {
                self.insert(fp);
            }
        }
    }

    /// Halves the sample (one more level) and rebuilds the tables for what stays.
    fn raise_level(&mut self) {
        self.level += 1;
        let level = self.level;
        let keep = move |fp: u64| (fp >> 1) & ((1u64 << level) - 1) == 0;
        self.bytes = 0;
        self.counts = [0; 2];
        for sh in &mut self.shards {
            sh.rebuild(keep, 0);
            self.bytes += sh.table.len() as u64 * SLOT_BYTES;
            for e in sh.table.iter().filter(|&e| e != 0) {
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
            set: FpSet::new(budget),
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
        self.flush();
    }

    #[inline]
    fn leaf(&mut self, line: &[u8], real: usize) {
        self.leaves_in_item += 1;
        let fp = if is_zero(line) {
            self.c.zero_leaves += 1;
            self.c.zero_bytes += real as u64;
            0
        } else {
            self.c.leaf_writes += 1;
            let fp = leaf_fp(line);
            self.push(fp);
            fp
        };
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
        let kids = std::mem::take(&mut self.levels[level]);
        let fp = if kids.iter().all(|&k| k == 0) {
            self.c.zero_interior += 1;
            0
        } else {
            self.c.interior_writes += 1;
            self.scratch.fill(0);
            for (d, k) in self.scratch.chunks_exact_mut(8).zip(&kids) {
                d.copy_from_slice(&k.to_le_bytes());
            }
            let fp = interior_fp(&self.scratch);
            self.push(fp);
            fp
        };
        let mut kids = kids;
        kids.clear();
        self.levels[level] = kids;
        self.child(level + 1, fp);
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

    #[test]
    fn metadata_model_matches_known_sizes() {
        // 6 452 831 lines at 16 B: 64 shards of 262 144 slots (measured on a real memory).
        let (r, i, f) = memory_metadata(6_452_831);
        assert_eq!(r, 4 * 6_452_832);
        assert_eq!(i, 134_217_728);
        assert_eq!(f, 65_536);
    }
}
