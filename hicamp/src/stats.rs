//! Footprint statistics, with metadata counted honestly.

use crate::memory::Memory;

/// A snapshot of a memory's footprint and counters.
///
/// * `logical_bytes`: bytes referenced by live segment handles and map entries
///   (a snapshot counts again: that is what copying would have cost).
/// * `physical_bytes`: lines in use times the line size (leaf and interior).
/// * `metadata_bytes`: reference counts (1 byte per slot ever used, plus an
///   overflow table for counts above 63), the dedup
///   index (64 bytes per bucket of 15 slots, at its real allocated size), the free lists
///   and the touched part of the segment map. The arena's address-space
///   reservation is not counted: untouched pages use no memory.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Stats {
    /// Line size in bytes.
    pub line_size: u64,
    /// Capacity in lines.
    pub capacity_lines: u64,
    /// Bytes referenced by live handles and map entries.
    pub logical_bytes: u64,
    /// Leaf (data) lines in use.
    pub leaf_lines: u64,
    /// Interior (child-id) lines in use.
    pub interior_lines: u64,
    /// `(leaf_lines + interior_lines) * line_size`.
    pub physical_bytes: u64,
    /// Everything but line contents: see the type docs.
    pub metadata_bytes: u64,
    /// Reference-count bytes (part of `metadata_bytes`): one byte per slot
    /// ever used (up to the high-water mark), plus the overflow table of
    /// the counts above 63 (about 9 bytes per such line at the table's
    /// allocated size).
    pub refcount_bytes: u64,
    /// Dedup-index bytes (part of `metadata_bytes`).
    pub index_bytes: u64,
    /// Segment-map bytes (part of `metadata_bytes`).
    pub map_bytes: u64,
    /// Free-list bytes (part of `metadata_bytes`).
    pub free_list_bytes: u64,
    /// Live segment-map entries.
    pub map_entries: u64,
    /// Leaf lines ever created.
    pub leaf_lines_created: u64,
    /// Interior lines ever created.
    pub interior_lines_created: u64,
    /// Leaf writes that found an existing line.
    pub leaf_dedup_hits: u64,
    /// Interior writes that found an existing line.
    pub interior_dedup_hits: u64,
    /// Leaf writes of an all-zero line (stored nowhere).
    pub zero_leaf_hits: u64,
    /// Interior writes whose children were all zero (stored nowhere).
    pub zero_interior_hits: u64,
    /// Of `leaf_lines`, owned ones (kept out of the dedup index:
    /// [`Memory::segment_owned`]).
    pub owned_leaf_lines: u64,
    /// Of `interior_lines`, owned ones.
    pub owned_interior_lines: u64,
    /// Owned lines ever made (leaf and interior; not in `*_lines_created`).
    pub owned_lines_created: u64,
}

impl Stats {
    pub(crate) fn collect(mem: &Memory) -> Stats {
        let inner = &mem.inner;
        let c = inner.store.counters();
        let ls = inner.config.line_size as u64;
        let map_bytes = inner.map.bytes();
        let metadata = c.refcount_bytes + c.index_bytes + c.free_list_bytes + map_bytes;
        Stats {
            line_size: ls,
            capacity_lines: inner.config.capacity_lines,
            logical_bytes: inner.logical.sum().max(0) as u64,
            leaf_lines: c.live[0],
            interior_lines: c.live[1],
            physical_bytes: (c.live[0] + c.live[1]) * ls,
            metadata_bytes: metadata,
            refcount_bytes: c.refcount_bytes,
            index_bytes: c.index_bytes,
            map_bytes,
            free_list_bytes: c.free_list_bytes,
            map_entries: inner.map.live(),
            leaf_lines_created: c.created[0],
            interior_lines_created: c.created[1],
            leaf_dedup_hits: c.hits[0],
            interior_dedup_hits: c.hits[1],
            zero_leaf_hits: c.zero[0],
            zero_interior_hits: c.zero[1],
            owned_leaf_lines: c.owned[0],
            owned_interior_lines: c.owned[1],
            owned_lines_created: c.owned_created[0] + c.owned_created[1],
        }
    }

    /// Metadata bytes per live line, by structure (all 0 when no line is
    /// live): what each line costs beside its content.
    pub fn metadata_per_line(&self) -> MetadataPerLine {
        let live = self.live_lines();
        let per = |b: u64| {
            if live == 0 {
                0.0
            } else {
                b as f64 / live as f64
            }
        };
        MetadataPerLine {
            total: per(self.metadata_bytes),
            refcounts: per(self.refcount_bytes),
            index: per(self.index_bytes),
            map: per(self.map_bytes),
            free_lists: per(self.free_list_bytes),
        }
    }

    /// Lines in use.
    pub fn live_lines(&self) -> u64 {
        self.leaf_lines + self.interior_lines
    }

    /// Physical plus metadata bytes: what the data really costs.
    pub fn footprint_bytes(&self) -> u64 {
        self.physical_bytes + self.metadata_bytes
    }

    /// Logical bytes per footprint byte (metadata included). Above 1 the
    /// memory saves space; 0 for a memory that references nothing (its
    /// metadata still costs bytes).
    pub fn dedup_ratio(&self) -> f64 {
        ratio(self.logical_bytes, self.footprint_bytes())
    }

    /// The same ratio with the bytes of all-zero lines taken out of the
    /// logical side, as page-sharing studies report savings "excluding zero
    /// pages". `zero_bytes` is the logical bytes that lie in all-zero lines;
    /// [`Stats::zero_leaf_bytes_interned`] gives it for memories that were
    /// only filled, never trimmed.
    pub fn dedup_ratio_excl_zero(&self, zero_bytes: u64) -> f64 {
        ratio(
            self.logical_bytes.saturating_sub(zero_bytes),
            self.footprint_bytes(),
        )
    }

    /// Bytes of all-zero leaf lines written so far (an event count: exact for
    /// a memory that was only filled).
    pub fn zero_leaf_bytes_interned(&self) -> u64 {
        self.zero_leaf_hits * self.line_size
    }
}

/// Metadata bytes per live line, by structure ([`Stats::metadata_per_line`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MetadataPerLine {
    /// All metadata (the sum of the others).
    pub total: f64,
    /// Reference counts (1 byte per slot ever used, plus the overflow table).
    pub refcounts: f64,
    /// The dedup index at its allocated size.
    pub index: f64,
    /// The touched part of the segment map.
    pub map: f64,
    /// Free lists and the free bitmap.
    pub free_lists: f64,
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        if a == 0 {
            1.0
        } else {
            f64::INFINITY
        }
    } else {
        a as f64 / b as f64
    }
}

#[cfg(test)]
mod tests {
    use crate::{Config, Memory};

    #[test]
    fn metadata_per_line_adds_up() {
        let m = Memory::new(Config {
            line_size: 64,
            capacity_lines: 1 << 12,
            map_capacity: 4,
            ..Config::default()
        })
        .unwrap();
        assert_eq!(m.stats().metadata_per_line().total, 0.0);
        let data: Vec<u8> = (0..64 * 100u32).map(|i| (i * 7 / 3) as u8).collect();
        let _s = m.segment(&data).unwrap();
        let st = m.stats();
        let p = st.metadata_per_line();
        let live = st.live_lines() as f64;
        assert!((p.total * live - st.metadata_bytes as f64).abs() < 1e-6);
        let sum = p.refcounts + p.index + p.map + p.free_lists;
        assert!((p.total - sum).abs() < 1e-9, "{p:?}");
        assert!(p.refcounts >= 1.0 && p.index > 0.0, "{p:?}");
    }
}
