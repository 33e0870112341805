//! Footprint estimated within a memory budget: content-defined line sampling.
//!
//! When the payload a tracer sees no longer fits in real memories, the footprint a HICAMP
//! memory of one line size would have is estimated from fingerprints, without storing any line.
//!
//! # Method
//!
//! Each item (one payload: one segment) is cut into lines from its own offset 0, the last line
//! zero-padded, exactly as the memory cuts it. Every line gets a 64-bit fingerprint: an
//! all-zero line is 0 (line 0, stored nowhere); a leaf of the smallest line size is the xxh3 of
//! its bytes; a leaf of a larger line size `k` times bigger is a mix of the fingerprints of
//! its `k` sub-lines (so equal content gives equal fingerprints, up to collisions, and each
//! byte is hashed once whatever the number of line sizes); an interior line is a mix of its
//! `F = line_size / 4` children's fingerprints (zero-padded), in the canonical DAG shape
//! (`hicamp::dag`: a complete `F`-ary tree of the smallest height holding the leaves, all-zero
//! subtrees line 0). Leaves and interior lines carry a kind bit (bit 63) and different seeds.
//!
//! **Sampling.** At level `s` a line is counted iff the low `s` bits of its fingerprint are 0
//! (probability `2^-s`). The decision depends only on content, so a sampled line is seen at
//! every occurrence or at none: the sampled lines are a uniform sample of the *distinct* lines.
//! A table of the sampled fingerprints per line size holds them; when it would outgrow its
//! share of the budget the level goes up by one and the table keeps only what still
//! qualifies. The distinct lines are estimated as `k * 2^s` for `k` sampled distinct lines; `k`
//! is binomial, so the relative standard error is `sqrt((1 - p) / k)` with `p = 2^-s`, and the
//! report gives the 95% interval (1.96 standard errors). At level 0 (nothing dropped yet) the
//! count is exact up to fingerprint collisions (about `n^2 / 2^65` false merges among `n`
//! lines).
//!
//! **Cost floor.** Past [`FLOOR_AFTER`] bytes of one line size, while its table lookups have
//! been more than one per [`FLOOR_BYTES_PER_LOOKUP`] bytes, the level is at least
//! [`floor_level`] (about one sampled line per 2 KiB of payload), whatever room the table has:
//! a table lookup per line would cost a bulk transfer more than hashing does. (Distinct data
//! fills the table and raises the level by itself; the floor is for highly repetitive data
//! that is not repeated whole.) Traffic below it stays at level 0 until its table fills. A payload absorbed again while no level changed
//! (a tracer's cache of whole payloads) adds its counts only
//! ([`LineSampler::absorb_again`]): its sampled lines are in the table already.
//!
//! Logical bytes, zero-line bytes and the line writes are counted exactly; the footprint is
//! `distinct lines * line_size` plus the metadata of a memory holding that many lines
//! ([`memory_metadata`], the model of `hicamp::Stats`).
//!
//! The work is split for a tracer's hot path: [`PayloadFps::compute`] (hashing, no shared
//! state: any thread, no lock) and [`LineSampler::absorb`] (the table insertions of the few
//! sampled fingerprints, under the caller's lock).

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::LineSizeReport;
use crate::store::is_zero;

/// A prefetch hint for one cache line (for hash tables probed at random), re-exported for the
/// fingerprint sets of `hicamp dedup`, whose crate has no unsafe code.
pub use crate::region::prefetch_read;

/// The method's name, as reports give it.
pub const METHOD: &str = "content-defined line sampling";

/// Kind bit of an interior line's fingerprint.
const INTERIOR_BIT: u64 = 1 << 63;
const LEAF_SEED: u64 = 0x6869_6361_6d70_4c46;
const INTERIOR_SEED: u64 = 0x6869_6361_6d70_494e;
/// Highest sampling level (one line in 2^40).
pub const MAX_LEVEL: u32 = 40;
/// z for a two-sided 95% interval.
pub const Z95: f64 = 1.96;
/// Smallest table, slots.
const MIN_TABLE: usize = 1024;
/// Bytes of one line size after which its level is at least [`floor_level`].
pub const FLOOR_AFTER: u64 = 1 << 30;
/// The floor applies while a line size's lookups are more than one per this many bytes.
pub const FLOOR_BYTES_PER_LOOKUP: u64 = 512;

/// The lowest level of a line size past [`FLOOR_AFTER`] bytes: `log2(2048 / line_size)`, so
/// that about one leaf in 2 KiB of payload is looked up.
pub fn floor_level(line_size: usize) -> u32 {
    (2048 / line_size.max(1)).max(1).ilog2()
}

/// Fingerprints of one payload at every line size, and its exact counts.
#[derive(Debug, Default, Clone)]
pub struct PayloadFps {
    /// Per line size: the sampled fingerprints and the exact counts.
    sizes: Vec<SizeFps>,
    /// Scratch: the current level's fingerprints and the parents.
    level: Vec<u64>,
    next: Vec<u64>,
}

#[derive(Debug, Default, Clone)]
struct SizeFps {
    sampled: Vec<u64>,
    counts: Counts,
}

/// Exact counts of one line size.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Items (payloads, segments).
    pub items: u64,
    /// Bytes.
    pub logical_bytes: u64,
    /// Real bytes lying in all-zero lines.
    pub zero_bytes: u64,
    /// Non-zero leaf writes.
    pub leaf_writes: u64,
    /// All-zero leaf writes.
    pub zero_leaves: u64,
    /// Non-zero interior writes.
    pub interior_writes: u64,
    /// All-zero interior writes.
    pub zero_interior: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.items += o.items;
        self.logical_bytes += o.logical_bytes;
        self.zero_bytes += o.zero_bytes;
        self.leaf_writes += o.leaf_writes;
        self.zero_leaves += o.zero_leaves;
        self.interior_writes += o.interior_writes;
        self.zero_interior += o.zero_interior;
    }
}

#[inline]
fn nonzero(h: u64) -> u64 {
    if h == 0 {
        1 << 62
    } else {
        h
    }
}

/// The fingerprint of a leaf of the smallest line size (`line` is whole or the zero-padded
/// last line), 0 for an all-zero line.
#[inline]
fn leaf0(line: &[u8], pad: &mut [u8]) -> u64 {
    // Most lines of real payload have a non-zero first word: no need to scan them for zeros.
    let first_nonzero = line.len() >= 8 && line[..8] != [0; 8];
    if !first_nonzero && is_zero(line) {
        return 0;
    }
    let h = if line.len() == pad.len() {
        xxh3_64_with_seed(line, LEAF_SEED)
    } else {
        pad.fill(0);
        pad[..line.len()].copy_from_slice(line);
        xxh3_64_with_seed(pad, LEAF_SEED)
    };
    nonzero(h & !INTERIOR_BIT)
}

/// A 64-bit finaliser (murmur3's fmix64): every input bit reaches every output bit.
#[inline]
fn fmix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The fingerprint of a group of fingerprints (missing ones, past the end, are zeros), 0 when
/// all are zero: the sum over the non-zero children of a mix of (child, position), finalised
/// with the seed. Zero children add nothing, so the zero padding needs no work.
#[inline]
fn group(fps: &[u64], seed: u64, kind: u64) -> u64 {
    let mut acc = 0u64;
    let mut any = false;
    for (i, &f) in fps.iter().enumerate() {
        if f != 0 {
            any = true;
            acc = acc.wrapping_add(fmix(f ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        }
    }
    if !any {
        return 0;
    }
    nonzero((fmix(acc ^ seed) & !INTERIOR_BIT) | kind)
}

impl PayloadFps {
    /// Frees the scratch buffers (for a copy kept in a cache: what [`LineSampler::absorb`]
    /// reads stays).
    pub fn without_scratch(&self) -> PayloadFps {
        PayloadFps {
            sizes: self.sizes.clone(),
            level: Vec::new(),
            next: Vec::new(),
        }
    }

    /// Bytes this holds (for a cache's budget).
    pub fn heap_bytes(&self) -> usize {
        self.sizes
            .iter()
            .map(|s| s.sampled.capacity() * 8 + 64)
            .sum::<usize>()
            + (self.level.capacity() + self.next.capacity()) * 8
    }

    /// Hashes one payload at every line size (`line_sizes` ascending powers of two), keeping
    /// the fingerprints that the sampling levels `levels` (one per line size) accept.
    pub fn compute(&mut self, data: &[u8], line_sizes: &[usize], levels: &[u32]) {
        self.sizes.resize_with(line_sizes.len(), SizeFps::default);
        for s in &mut self.sizes {
            s.sampled.clear();
            s.counts = Counts::default();
        }
        let Some(&l0) = line_sizes.first() else {
            return;
        };
        if data.is_empty() {
            for s in &mut self.sizes {
                s.counts.items = 1;
            }
            return;
        }
        // Leaves of the smallest line size.
        self.level.clear();
        let mut pad = [0u8; crate::MAX_LINE_SIZE];
        let pad = &mut pad[..l0.min(crate::MAX_LINE_SIZE)];
        for line in data.chunks(l0) {
            self.level.push(leaf0(line, pad));
        }
        let mut leaves = std::mem::take(&mut self.level);
        let mut prev_ls = l0;
        for (i, &ls) in line_sizes.iter().enumerate() {
            if i > 0 {
                // Leaves of this line size from the previous one's.
                let k = ls / prev_ls;
                let seed = LEAF_SEED ^ (ls as u64);
                self.next.clear();
                for g in leaves.chunks(k) {
                    let f = group(g, seed, 0);
                    self.next.push(f);
                }
                std::mem::swap(&mut leaves, &mut self.next);
                prev_ls = ls;
            }
            let mask = (1u64 << levels.get(i).copied().unwrap_or(0).min(MAX_LEVEL)) - 1;
            let out = &mut self.sizes[i];
            let c = &mut out.counts;
            c.items = 1;
            c.logical_bytes = data.len() as u64;
            for (j, &f) in leaves.iter().enumerate() {
                if f == 0 {
                    c.zero_leaves += 1;
                    c.zero_bytes += (data.len() - j * ls).min(ls) as u64;
                } else {
                    c.leaf_writes += 1;
                    if f & mask == 0 {
                        out.sampled.push(f);
                    }
                }
            }
            // The interior levels of the canonical DAG.
            let fanout = (ls / 4).max(2);
            let seed = INTERIOR_SEED ^ (ls as u64);
            self.level.clear();
            self.level.extend_from_slice(&leaves);
            while self.level.len() > 1 {
                self.next.clear();
                for g in self.level.chunks(fanout) {
                    let f = group(g, seed, INTERIOR_BIT);
                    if f == 0 {
                        c.zero_interior += 1;
                    } else {
                        c.interior_writes += 1;
                        if f & mask == 0 {
                            out.sampled.push(f);
                        }
                    }
                    self.next.push(f);
                }
                std::mem::swap(&mut self.level, &mut self.next);
            }
        }
        self.level = leaves;
    }
}

/// The sampled fingerprints of one line size.
#[derive(Debug, Clone)]
struct SizeSet {
    line_size: usize,
    level: u32,
    /// Open addressing, linear probing; 0 is an empty slot.
    table: Vec<u64>,
    len: usize,
    /// Sampled distinct (leaf, interior) lines.
    kinds: [u64; 2],
    counts: Counts,
    /// Fingerprints looked up in the table.
    lookups: u64,
}

impl SizeSet {
    /// True when the cost floor applies (see the module's documentation).
    fn below_floor(&self) -> bool {
        self.counts.logical_bytes > FLOOR_AFTER
            && self.lookups * FLOOR_BYTES_PER_LOOKUP > self.counts.logical_bytes
            && self.level < floor_level(self.line_size)
    }

    fn home(&self, fp: u64) -> usize {
        // The low bits are the sampling bits (zero in every entry): place by the high ones.
        (fp.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20) as usize & (self.table.len() - 1)
    }

    fn insert(&mut self, fp: u64) -> bool {
        let mask = self.table.len() - 1;
        let mut i = self.home(fp);
        loop {
            let e = self.table[i];
            if e == fp {
                return false;
            }
            if e == 0 {
                self.table[i] = fp;
                self.len += 1;
                self.kinds[usize::from(fp & INTERIOR_BIT != 0)] += 1;
                return true;
            }
            i = (i + 1) & mask;
        }
    }

    fn rebuild(&mut self, slots: usize) {
        let mask = (1u64 << self.level) - 1;
        let old = std::mem::replace(&mut self.table, vec![0; slots]);
        self.len = 0;
        self.kinds = [0; 2];
        for fp in old {
            if fp != 0 && fp & mask == 0 {
                self.insert(fp);
            }
        }
    }
}

/// The sampled fingerprint sets of every line size, within a byte budget.
#[derive(Debug, Clone)]
pub struct LineSampler {
    sizes: Vec<SizeSet>,
    /// Most slots one table may have (its rebuild holds two tables at once).
    max_slots: usize,
    /// Bumped whenever a level rises (entries leave a table only then).
    version: u64,
}

impl LineSampler {
    /// Sets for `line_sizes` (ascending powers of two) whose tables stay within `budget` bytes
    /// together (peaks included).
    pub fn new(line_sizes: &[usize], budget: u64) -> Self {
        let per = budget / line_sizes.len().max(1) as u64;
        // A rebuild holds the old and the new table: half the share each.
        let slots = (per / 2 / 8).max(MIN_TABLE as u64);
        let max_slots = 1usize << (63 - slots.leading_zeros());
        LineSampler {
            sizes: line_sizes
                .iter()
                .map(|&ls| SizeSet {
                    line_size: ls,
                    level: 0,
                    table: vec![0; MIN_TABLE.min(max_slots)],
                    len: 0,
                    kinds: [0; 2],
                    counts: Counts::default(),
                    lookups: 0,
                })
                .collect(),
            max_slots,
            version: 0,
        }
    }

    /// Changes whenever a level rises: a payload absorbed at version `v` has all its sampled
    /// lines in the tables while the version is still `v`.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Adds the counts of a payload absorbed before at the current [`version`](Self::version)
    /// (its sampled lines are in the tables already). Returns false, doing nothing, when the
    /// version changed since: absorb it whole then.
    pub fn absorb_again(&mut self, p: &PayloadFps, version: u64) -> bool {
        if version != self.version || self.sizes.iter().any(SizeSet::below_floor) {
            return false;
        }
        for (set, f) in self.sizes.iter_mut().zip(&p.sizes) {
            set.counts.add(&f.counts);
        }
        true
    }

    /// The sampling level of each line size (the argument of [`PayloadFps::compute`]).
    pub fn levels(&self) -> impl Iterator<Item = u32> + '_ {
        self.sizes.iter().map(|s| s.level)
    }

    /// Bytes of the tables now.
    pub fn table_bytes(&self) -> u64 {
        self.sizes.iter().map(|s| s.table.len() as u64 * 8).sum()
    }

    /// Adds one payload's fingerprints (computed at levels no lower than the current ones).
    pub fn absorb(&mut self, p: &PayloadFps) {
        for (set, f) in self.sizes.iter_mut().zip(&p.sizes) {
            set.counts.add(&f.counts);
            set.lookups += f.sampled.len() as u64;
            if set.below_floor() {
                set.level = floor_level(set.line_size);
                self.version += 1;
                let slots = set.table.len();
                set.rebuild(slots);
            }
            for &fp in &f.sampled {
                let mask = (1u64 << set.level) - 1;
                if fp & mask != 0 {
                    continue; // sampled at a level since raised
                }
                if (set.len + 1) * 4 > set.table.len() * 3 {
                    if set.table.len() < self.max_slots {
                        let slots = set.table.len() * 2;
                        set.rebuild(slots);
                    } else {
                        while (set.len + 1) * 4 > set.table.len() * 3 && set.level < MAX_LEVEL {
                            set.level += 1;
                            self.version += 1;
                            let slots = set.table.len();
                            set.rebuild(slots);
                        }
                        if fp & ((1u64 << set.level) - 1) != 0 {
                            continue;
                        }
                        if (set.len + 1) * 4 > set.table.len() * 3 {
                            continue; // at the last level and full: the estimate stays
                        }
                    }
                }
                set.insert(fp);
            }
        }
    }

    /// The estimate of every line size.
    pub fn estimates(&self) -> Vec<SizeEstimate> {
        self.sizes
            .iter()
            .map(|s| {
                let rate = 1.0 / (1u64 << s.level) as f64;
                let est = |k: u64| (k as f64 / rate).round() as u64;
                let k = s.kinds[0] + s.kinds[1];
                let rel_err_95 = if s.level == 0 {
                    0.0
                } else if k == 0 {
                    1.0
                } else {
                    Z95 * ((1.0 - rate) / k as f64).sqrt()
                };
                SizeEstimate {
                    line_size: s.line_size as u64,
                    level: s.level,
                    sample_rate: rate,
                    sampled_leaf_lines: s.kinds[0],
                    sampled_interior_lines: s.kinds[1],
                    leaf_lines: est(s.kinds[0]),
                    interior_lines: est(s.kinds[1]),
                    rel_err_95,
                    counts: s.counts,
                }
            })
            .collect()
    }
}

/// The estimate for one line size.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default)
)]
pub struct SizeEstimate {
    /// Line size, bytes.
    pub line_size: u64,
    /// Sampling level `s`: one line in `2^s` is counted.
    pub level: u32,
    /// `2^-level`.
    pub sample_rate: f64,
    /// Distinct non-zero leaves sampled.
    pub sampled_leaf_lines: u64,
    /// Distinct non-zero interior lines sampled.
    pub sampled_interior_lines: u64,
    /// Estimated distinct leaves.
    pub leaf_lines: u64,
    /// Estimated distinct interior lines.
    pub interior_lines: u64,
    /// Half-width of the 95% interval of the distinct lines, relative (0: exact up to
    /// fingerprint collisions).
    pub rel_err_95: f64,
    /// The exact counts.
    #[cfg_attr(feature = "serde", serde(skip))]
    pub counts: Counts,
}

/// Index shards of a HICAMP memory (the store's).
const MEMORY_INDEX_SHARDS: u64 = 64;

/// The metadata a HICAMP memory holding `lines` lines would report (the model of
/// `hicamp::Stats`): reference counts at 1 byte per slot (`lines + 1`: slot 0 is the zero
/// line; the overflow table of counts above 63 is left out, as a few lines at most have
/// one), the dedup index as 64 shard tables of 64-byte buckets of 15 slots at the load a
/// table sits at on average between its growths (0.78: it grows by 1.5x at 14/15), at
/// least one bucket each, the free lists at one slot batch per shard. Returns (refcount,
/// index, free list) bytes.
pub fn memory_metadata(lines: u64) -> (u64, u64, u64) {
    let refcount = lines + 1;
    let per_shard = lines.div_ceil(MEMORY_INDEX_SHARDS);
    // ceil(per_shard / (15 * 0.78)), in integers.
    let buckets = (per_shard * 100).div_ceil(15 * 78).max(1);
    let index = MEMORY_INDEX_SHARDS * buckets * 64;
    let batch = if per_shard >= 1024 { 256 } else { 16 };
    (refcount, index, MEMORY_INDEX_SHARDS * batch * 4)
}

impl SizeEstimate {
    /// The estimated footprint, in the shape of a memory's report.
    pub fn line_size_report(&self) -> LineSizeReport {
        let c = &self.counts;
        let lines = self.leaf_lines + self.interior_lines;
        let (refcount, index, free) = memory_metadata(lines);
        let physical = lines * self.line_size;
        let metadata = refcount + index + free;
        let footprint = physical + metadata;
        let ratio = |n: u64| {
            if c.logical_bytes == 0 || footprint == 0 {
                1.0
            } else {
                n as f64 / footprint as f64
            }
        };
        LineSizeReport {
            line_size: self.line_size,
            logical_bytes: c.logical_bytes,
            physical_bytes: physical,
            metadata_bytes: metadata,
            footprint_bytes: footprint,
            zero_bytes: c.zero_bytes,
            dedup_ratio: ratio(c.logical_bytes),
            dedup_ratio_excl_zero: ratio(c.logical_bytes.saturating_sub(c.zero_bytes)),
            leaf_lines: self.leaf_lines,
            interior_lines: self.interior_lines,
            dedup_hits: c.leaf_writes.saturating_sub(self.leaf_lines)
                + c.interior_writes.saturating_sub(self.interior_lines),
            leaf_dedup_hits: c.leaf_writes.saturating_sub(self.leaf_lines),
            interior_dedup_hits: c.interior_writes.saturating_sub(self.interior_lines),
            zero_leaf_hits: c.zero_leaves,
            zero_interior_hits: c.zero_interior,
            leaf_lines_created: self.leaf_lines,
            interior_lines_created: self.interior_lines,
            refcount_bytes: refcount,
            index_bytes: index,
            map_bytes: 0,
            free_list_bytes: free,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Memory};

    fn feed(s: &mut LineSampler, items: &[Vec<u8>], sizes: &[usize]) {
        let mut p = PayloadFps::default();
        for it in items {
            let levels: Vec<u32> = s.levels().collect();
            p.compute(it, sizes, &levels);
            s.absorb(&p);
        }
    }

    fn items(seed: u64, n: usize) -> Vec<Vec<u8>> {
        let mut rng = testkit::Rng::new(seed);
        let pool: Vec<Vec<u8>> = (0..8)
            .map(|_| (0..rng.index(3000) + 1).map(|_| rng.byte()).collect())
            .collect();
        (0..n)
            .map(|_| {
                let mut v = pool[rng.index(pool.len())].clone();
                if rng.one_in(3) {
                    v.extend(std::iter::repeat_n(0u8, rng.index(700)));
                }
                if rng.one_in(2) {
                    let i = rng.index(v.len());
                    v[i] = v[i].wrapping_add(1);
                }
                v
            })
            .collect()
    }

    /// At level 0 (a budget that holds everything) the counts are the memory's own.
    #[test]
    fn unsampled_matches_the_memory() {
        let sizes = [64usize, 256, 1024];
        let its = items(7, 300);
        let mut s = LineSampler::new(&sizes, 64 << 20);
        feed(&mut s, &its, &sizes);
        for (e, &ls) in s.estimates().iter().zip(&sizes) {
            assert_eq!(e.level, 0);
            let mem = Memory::new(Config {
                line_size: ls,
                capacity_lines: 1 << 20,
                map_capacity: 2,
                ..Config::default()
            })
            .unwrap();
            let segs: Vec<_> = its.iter().map(|i| mem.segment(i).unwrap()).collect();
            let st = mem.stats();
            let zero: u64 = its
                .iter()
                .map(|i| crate::footprint::zero_line_bytes(i, ls))
                .sum();
            let r = e.line_size_report();
            assert_eq!(r.logical_bytes, st.logical_bytes, "line size {ls}");
            assert_eq!(r.zero_bytes, zero, "line size {ls}");
            assert_eq!(r.leaf_lines, st.leaf_lines, "line size {ls}");
            assert_eq!(r.interior_lines, st.interior_lines, "line size {ls}");
            assert_eq!(r.physical_bytes, st.physical_bytes, "line size {ls}");
            assert_eq!(e.rel_err_95, 0.0);
            drop(segs);
        }
    }

    /// Past the budget the level rises, the tables stay within it, and the estimate of many
    /// distinct lines lands within its stated interval (a fixed seed: deterministic).
    #[test]
    fn sampled_estimate_within_its_bound() {
        let sizes = [64usize, 4096];
        let mut rng = testkit::Rng::new(11);
        let budget = 64 << 10;
        let mut s = LineSampler::new(&sizes, budget);
        let mut p = PayloadFps::default();
        let n_items = 400;
        let mut distinct_leaves = 0u64;
        for _ in 0..n_items {
            let v: Vec<u8> = (0..8192).map(|_| rng.byte()).collect();
            distinct_leaves += 8192 / 64;
            let levels: Vec<u32> = s.levels().collect();
            p.compute(&v, &sizes, &levels);
            s.absorb(&p);
            // Every item twice: duplicates change nothing.
            let levels: Vec<u32> = s.levels().collect();
            p.compute(&v, &sizes, &levels);
            s.absorb(&p);
            assert!(s.table_bytes() <= budget);
        }
        let e = &s.estimates()[0];
        assert!(e.level > 0, "{e:?}");
        let err = (e.leaf_lines as f64 - distinct_leaves as f64).abs() / distinct_leaves as f64;
        assert!(err <= e.rel_err_95.max(0.01), "{e:?} err {err}");
        assert_eq!(e.counts.logical_bytes, 2 * n_items * 8192);
        assert_eq!(e.counts.leaf_writes, 2 * distinct_leaves);
    }

    #[test]
    fn floor_levels() {
        assert_eq!(floor_level(64), 5);
        assert_eq!(floor_level(256), 3);
        assert_eq!(floor_level(2048), 0);
        assert_eq!(floor_level(4096), 0);
    }

    #[test]
    fn zero_lines_are_exact_and_empty_items_count() {
        let sizes = [64usize, 256];
        let mut s = LineSampler::new(&sizes, 1 << 20);
        let mut data = vec![0u8; 300];
        data[70] = 1;
        feed(&mut s, &[data.clone(), Vec::new()], &sizes);
        let e = s.estimates();
        assert_eq!(
            e[0].counts.zero_bytes,
            crate::footprint::zero_line_bytes(&data, 64)
        );
        assert_eq!(
            e[1].counts.zero_bytes,
            crate::footprint::zero_line_bytes(&data, 256)
        );
        assert_eq!(e[0].counts.items, 2);
        // Absorbed again at the same version: counts only.
        let mut p = PayloadFps::default();
        let levels: Vec<u32> = s.levels().collect();
        p.compute(&data, &sizes, &levels);
        let v = s.version();
        assert!(s.absorb_again(&p, v));
        assert_eq!(s.estimates()[0].counts.items, 3);
        assert!(!s.absorb_again(&p, v + 1));
    }
}
