//! The content-defined chunking baseline: what backup and sync stores (restic, borg, casync)
//! achieve, FastCDC (the `fastcdc` crate's 2020 algorithm, normalization level 1) with a
//! minimum of a quarter and a maximum of four times the average chunk size, as casync sets them.
//!
//! Each item (file) is chunked from its own start. Distinct chunks are counted by a 64-bit
//! fingerprint of their bytes in an [`FpSet`] (sampled when over budget, as the line sets are).
//! The metadata model ([`CDC_REF_BYTES`], [`CDC_INDEX_BYTES`]): every chunk reference costs
//! one casync `.caidx` record (8-byte end offset + 32-byte chunk id), and every distinct chunk
//! one index entry in the chunk store (32-byte id + 8-byte location).

use fastcdc::v2020::{logarithm2, MASKS};

use super::fingerprint::{block_fp, Estimate, FpSet};

/// Average chunk sizes of the baseline.
pub const CDC_AVERAGES: [usize; 3] = [2 << 10, 8 << 10, 64 << 10];
/// Metadata per chunk reference (a casync `.caidx` record).
pub const CDC_REF_BYTES: u64 = 40;
/// Metadata per distinct chunk (a chunk-store index entry).
pub const CDC_INDEX_BYTES: u64 = 40;

/// What content-defined chunking at one average size achieves.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CdcReport {
    /// Average chunk size asked for.
    pub avg_size: u64,
    /// Minimum chunk size.
    pub min_size: u64,
    /// Maximum chunk size.
    pub max_size: u64,
    /// Bytes chunked.
    pub logical_bytes: u64,
    /// Chunks cut (references).
    pub chunks: u64,
    /// Distinct chunks (estimated when sampled).
    pub unique_chunks: u64,
    /// Bytes of the distinct chunks (estimated when sampled).
    pub physical_bytes: u64,
    /// `chunks * CDC_REF_BYTES + unique_chunks * CDC_INDEX_BYTES`.
    pub metadata_bytes: u64,
    /// `physical_bytes + metadata_bytes`.
    pub footprint_bytes: u64,
    /// `logical_bytes / footprint_bytes` (1.0 when empty).
    pub dedup_ratio: f64,
    /// The estimate of the distinct chunks (rate 1.0: exact).
    pub estimate: Estimate,
}

/// Streaming FastCDC over items fed in pieces.
#[derive(Debug)]
pub struct CdcCounter {
    min: usize,
    avg: usize,
    max: usize,
    /// FastCDC's masks for `avg` at normalization level 1 (small, large), as
    /// `fastcdc::v2020::FastCDC::new` sets them: [`cut`](Self::cut) cuts with them and the
    /// crate's gear tables ([`gear_cut`]), without the two tables a `FastCDC` copies for
    /// every buffer it is made for (a few per small file).
    masks: (u64, u64),
    /// Bytes of the current item not yet cut (always fewer than `max` between calls).
    carry: Vec<u8>,
    set: FpSet,
    logical: u64,
    chunks: u64,
    /// Bytes of the distinct sampled chunks, by the trailing zeros of their fingerprint's
    /// sampling bits (capped at 64): a chunk stays in the sample at level `l` exactly when
    /// that count is at least `l`, so the bytes still sampled after the set raised its level
    /// are the sum from `l` up (a single running total kept the bytes of chunks the set had
    /// dropped, and overstated the stored bytes past the budget).
    sampled_bytes: [u64; 65],
}

/// A gear table and its twin shifted left by one.
type GearTables = (Box<[u64; 256]>, Box<[u64; 256]>);

/// The `fastcdc` crate's gear tables, as its `FastCDC` uses them with seed 0.
fn gear_tables() -> &'static GearTables {
    static TABLES: std::sync::OnceLock<GearTables> = std::sync::OnceLock::new();
    TABLES.get_or_init(|| fastcdc::v2020::get_gear_with_seed(0))
}

/// The length of the first chunk of `src`: `fastcdc::v2020::cut_gear` (the same loop over
/// pairs of bytes, the same tables and masks, so the same cut points), written over slices
/// so that its inner loops need no bounds checks.
fn gear_cut(src: &[u8], min: usize, avg: usize, max: usize, mask_s: u64, mask_l: u64) -> usize {
    let (gear, gear_ls) = gear_tables();
    let (gear, gear_ls) = (&**gear, &**gear_ls);
    let mut remaining = src.len();
    if remaining <= min {
        return remaining;
    }
    let mut center = avg;
    if remaining > max {
        remaining = max;
    } else if remaining < center {
        center = remaining;
    }
    let mut index = min / 2;
    let mut hash: u64 = 0;
    for (mask, end) in [(mask_s, center / 2), (mask_l, remaining / 2)] {
        if index >= end {
            continue;
        }
        let mask_ls = mask << 1;
        for (i, pair) in src[index * 2..end * 2].chunks_exact(2).enumerate() {
            hash = (hash << 2).wrapping_add(gear_ls[pair[0] as usize]);
            if hash & mask_ls == 0 {
                return (index + i) * 2;
            }
            hash = hash.wrapping_add(gear[pair[1] as usize]);
            if hash & mask == 0 {
                return (index + i) * 2 + 1;
            }
        }
        index = end;
    }
    remaining
}

/// The bucket of [`CdcCounter::sampled_bytes`] a fingerprint's chunk counts in.
fn sample_depth(fp: u64) -> usize {
    ((fp >> 1).trailing_zeros() as usize).min(64)
}

impl CdcCounter {
    /// A chunker for `avg`-byte chunks whose set stays within `budget` bytes.
    pub fn new(avg: usize, budget: u64) -> Self {
        Self::with_set(avg, FpSet::new(budget))
    }

    /// [`CdcCounter::new`] with a set sized once for the most chunks items of `lens` bytes can
    /// be cut into (one per minimum chunk size, and one per item).
    pub fn with_lens(avg: usize, budget: u64, lens: impl Iterator<Item = u64>) -> Self {
        let min = (avg / 4) as u64;
        let max_chunks = lens.map(|l| l.div_ceil(min) + 1).sum();
        Self::with_set(avg, FpSet::with_max_entries(budget, max_chunks))
    }

    fn with_set(avg: usize, set: FpSet) -> Self {
        let bits = logarithm2(avg as u32) as usize;
        CdcCounter {
            min: avg / 4,
            avg,
            max: avg * 4,
            masks: (MASKS[bits + 1], MASKS[bits - 1]),
            carry: Vec::with_capacity(avg * 8),
            set,
            logical: 0,
            chunks: 0,
            sampled_bytes: [0; 65],
        }
    }

    /// The average chunk size.
    pub fn avg(&self) -> usize {
        self.avg
    }

    /// Adds the next bytes of the current item.
    ///
    /// Only the bytes that cannot be cut yet are copied: the carry of the last call, with
    /// enough of `data` that the cuts pass the carried bytes, is cut first; the rest is cut in
    /// place. A cut depends only on the `max` bytes from its start, so the chunks are those of
    /// the item cut whole.
    pub fn feed(&mut self, mut data: &[u8]) {
        self.logical += data.len() as u64;
        if !self.carry.is_empty() {
            let old = self.carry.len();
            let take = data.len().min(2 * self.max);
            let mut carry = std::mem::take(&mut self.carry);
            carry.extend_from_slice(&data[..take]);
            let done = self.cut(&carry, false);
            if take == data.len() {
                carry.drain(..done);
                self.carry = carry;
                return;
            }
            // `old < max` and `2 * max` more bytes: the cuts went past the carried bytes.
            debug_assert!(done >= old);
            data = &data[done - old..];
            carry.clear();
            self.carry = carry;
        }
        let done = self.cut(data, false);
        self.carry.extend_from_slice(&data[done..]);
    }

    /// Adds the last bytes of the current item and ends it ([`feed`](Self::feed) and
    /// [`finish_item`](Self::finish_item), without copying an item fed whole).
    pub fn feed_last(&mut self, data: &[u8]) {
        if self.carry.is_empty() {
            self.logical += data.len() as u64;
            self.cut(data, true);
        } else {
            self.feed(data);
            self.finish_item();
        }
    }

    /// Ends the current item: the rest is cut.
    pub fn finish_item(&mut self) {
        let carry = std::mem::take(&mut self.carry);
        self.cut(&carry, true);
        self.carry = carry;
        self.carry.clear();
    }

    /// Cuts chunks off the front of `buf` while the cut cannot depend on bytes still to come
    /// (more than `max` bytes left, or the item's end). Returns the bytes consumed.
    fn cut(&mut self, buf: &[u8], last: bool) -> usize {
        if buf.is_empty() {
            return 0;
        }
        let (mask_s, mask_l) = self.masks;
        let mut pos = 0;
        while pos < buf.len() {
            let remaining = buf.len() - pos;
            if !last && remaining <= self.max {
                break;
            }
            let len = gear_cut(&buf[pos..], self.min, self.avg, self.max, mask_s, mask_l);
            let end = pos + len;
            let chunk = &buf[pos..end];
            self.chunks += 1;
            let fp = block_fp(chunk);
            if self.set.insert(fp) {
                self.sampled_bytes[sample_depth(fp)] += chunk.len() as u64;
            }
            pos = end;
        }
        pos
    }

    /// The report so far (after [`finish_item`](Self::finish_item)).
    pub fn report(&self) -> CdcReport {
        let rate = self.set.rate();
        let est = Estimate::new(self.set.sampled().0, rate);
        let level = (self.set.level() as usize).min(64);
        let sampled: u64 = self.sampled_bytes[level..].iter().sum();
        let physical = (sampled as f64 / rate).round() as u64;
        let metadata = self.chunks * CDC_REF_BYTES + est.value * CDC_INDEX_BYTES;
        let footprint = physical + metadata;
        CdcReport {
            avg_size: self.avg as u64,
            min_size: self.min as u64,
            max_size: self.max as u64,
            logical_bytes: self.logical,
            chunks: self.chunks,
            unique_chunks: est.value,
            physical_bytes: physical,
            metadata_bytes: metadata,
            footprint_bytes: footprint,
            dedup_ratio: if footprint == 0 {
                1.0
            } else {
                self.logical as f64 / footprint as f64
            },
            estimate: est,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastcdc::v2020::FastCDC;

    /// Deterministic pseudo-random bytes (testkit's PRNG).
    fn noise(seed: u64, n: usize) -> Vec<u8> {
        testkit::Rng::new(seed).bytes(n)
    }

    #[test]
    fn chunking_does_not_depend_on_feeding() {
        let data = noise(3, 300_000);
        let mut whole = CdcCounter::new(2048, u64::MAX);
        whole.feed(&data);
        whole.finish_item();
        let mut parts = CdcCounter::new(2048, u64::MAX);
        for p in data.chunks(7_777) {
            parts.feed(p);
        }
        parts.finish_item();
        assert_eq!(whole.report(), parts.report());
        // Pieces smaller and larger than twice the maximum chunk, in turn (the carry is cut
        // with part of the next piece, or with all of it).
        let mut mixed = CdcCounter::new(2048, u64::MAX);
        let mut rest = &data[..];
        for n in [3usize, 40_000, 100, 16_384, 9_000, 70_001, 1]
            .iter()
            .cycle()
        {
            let (p, r) = rest.split_at((*n).min(rest.len()));
            mixed.feed(p);
            rest = r;
            if rest.is_empty() {
                break;
            }
        }
        mixed.finish_item();
        assert_eq!(whole.report(), mixed.report());
        // The last piece fed with the end of the item, whole or after a carry.
        let mut last = CdcCounter::new(2048, u64::MAX);
        last.feed_last(&data);
        assert_eq!(whole.report(), last.report());
        let mut last = CdcCounter::new(2048, u64::MAX);
        last.feed(&data[..5_000]);
        last.feed_last(&data[5_000..]);
        assert_eq!(whole.report(), last.report());
        let direct = FastCDC::new(&data, 512, 2048, 8192).count() as u64;
        assert_eq!(whole.report().chunks, direct);
    }

    /// Past its budget the set samples; the stored bytes are estimated from the chunks still
    /// in the sample, so they stay near the exact figure (and never above the logical bytes
    /// for data that is all distinct).
    #[test]
    fn sampled_bytes_follow_the_sample() {
        let data = noise(9, 4 << 20);
        let mut exact = CdcCounter::new(2048, u64::MAX);
        // Room for a few hundred fingerprints: the level rises several times.
        let mut sampled = CdcCounter::new(2048, 8 << 10);
        for c in [&mut exact, &mut sampled] {
            for _ in 0..2 {
                c.feed(&data);
                c.finish_item();
            }
        }
        let (e, s) = (exact.report(), sampled.report());
        assert_eq!(e.physical_bytes, 4 << 20);
        assert!(s.estimate.rate <= 0.25, "not sampled: {:?}", s.estimate);
        let err = (s.physical_bytes as f64 / e.physical_bytes as f64 - 1.0).abs();
        assert!(
            err < 3.0 * s.estimate.rel_err_95.max(0.05),
            "stored {} estimated {} ({:?})",
            e.physical_bytes,
            s.physical_bytes,
            s.estimate
        );
    }

    /// The chunks are the `fastcdc` crate's (its iterator over the whole item), at every
    /// average size, on random and on low-entropy data.
    #[test]
    fn chunks_are_the_crates() {
        let mut data = noise(11, 1 << 20);
        data.extend(std::iter::repeat_n(0u8, 300_000));
        data.extend((0..400_000u32).map(|i| (i % 251) as u8));
        data.extend(noise(12, 200_000));
        for avg in CDC_AVERAGES {
            let (min, max) = (avg / 4, avg * 4);
            let mut c = CdcCounter::new(avg, u64::MAX);
            for p in data.chunks(1 << 18) {
                c.feed(p);
            }
            c.finish_item();
            let mut seen = std::collections::HashSet::new();
            let (mut chunks, mut physical) = (0u64, 0u64);
            for ch in FastCDC::new(&data, min as u32, avg as u32, max as u32) {
                chunks += 1;
                let bytes = &data[ch.offset..ch.offset + ch.length];
                if seen.insert(block_fp(bytes)) {
                    physical += bytes.len() as u64;
                }
            }
            let r = c.report();
            assert_eq!(
                (r.chunks, r.unique_chunks, r.physical_bytes),
                (chunks, seen.len() as u64, physical),
                "avg {avg}"
            );
        }
    }

    #[test]
    fn repeated_item_dedups() {
        let data = noise(5, 100_000);
        let mut c = CdcCounter::new(2048, u64::MAX);
        for _ in 0..3 {
            c.feed(&data);
            c.finish_item();
        }
        let r = c.report();
        assert_eq!(r.logical_bytes, 300_000);
        assert_eq!(r.physical_bytes, 100_000);
        assert_eq!(r.unique_chunks * 3, r.chunks);
    }
}
