//! Footprint reports: what some data costs in a memory of one line size, and
//! its plain-text rendering.
//!
//! These are the shapes every footprint producer shares: `hicamp dedup`
//! (one [`LineSizeReport`] per line size), the `LD_PRELOAD` shim's trace
//! report ([`ShimReport`], which holds the same `line_sizes`) and the
//! `hicamp run` launcher that reads the shim's reports back. They live in the
//! memory crate, the one crate all of them depend on, so the shim needs
//! nothing above the memory. With the `serde` feature they are `Serialize`
//! and `Deserialize`; every field has a default, so a report written by an
//! older shim (or a hand-written test fixture) still reads.
//!
//! [`ZeroLineCounter`] counts the logical bytes lying in all-zero lines, which
//! the memory stores nowhere; [`LineSizeReport::from_stats`] needs that count
//! for its "excluding zero lines" ratio.

pub mod sampled;
mod shim;
mod zero;

use std::collections::BTreeMap;

pub use sampled::{LineSampler, PayloadFps, SizeEstimate};
pub use shim::{ConnReport, DedupEstimate, ShimReport, EXACT_METHOD};
pub use zero::{zero_line_bytes, ZeroLineCounter};

/// True when every byte is zero: the test that makes a line the all-zero line 0 (stored
/// nowhere). The same function the store uses, for measurements that must agree with it.
pub use crate::store::is_zero;

use crate::Stats;

/// Footprint of some data in one HICAMP memory of one line size.
///
/// Ratios are always finite numbers (JSON holds no NaN or infinity): with no
/// logical bytes both are 1.0 (nothing to deduplicate).
#[derive(Debug, Clone, PartialEq, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default)
)]
pub struct LineSizeReport {
    /// Line size, bytes.
    pub line_size: u64,
    /// Bytes referenced by the live segments (the data as it would be stored without dedup).
    pub logical_bytes: u64,
    /// Lines in use (leaf and interior) times the line size.
    pub physical_bytes: u64,
    /// Reference counts, dedup index, free lists and segment map.
    pub metadata_bytes: u64,
    /// `physical_bytes + metadata_bytes`: what the data really costs.
    pub footprint_bytes: u64,
    /// Logical bytes lying in all-zero lines (stored nowhere).
    pub zero_bytes: u64,
    /// `logical_bytes / footprint_bytes`.
    pub dedup_ratio: f64,
    /// `(logical_bytes - zero_bytes) / footprint_bytes`.
    pub dedup_ratio_excl_zero: f64,
    /// Leaf (data) lines in use.
    pub leaf_lines: u64,
    /// Interior (child-id) lines in use.
    pub interior_lines: u64,
    /// `leaf_dedup_hits + interior_dedup_hits`.
    pub dedup_hits: u64,
    /// Leaf writes that found an existing line.
    pub leaf_dedup_hits: u64,
    /// Interior writes that found an existing line.
    pub interior_dedup_hits: u64,
    /// Leaf writes of an all-zero line.
    pub zero_leaf_hits: u64,
    /// Interior writes whose children were all zero.
    pub zero_interior_hits: u64,
    /// Leaf lines ever created.
    pub leaf_lines_created: u64,
    /// Interior lines ever created.
    pub interior_lines_created: u64,
    /// Reference-count bytes (part of `metadata_bytes`).
    pub refcount_bytes: u64,
    /// Dedup-index bytes (part of `metadata_bytes`).
    pub index_bytes: u64,
    /// Segment-map bytes (part of `metadata_bytes`).
    pub map_bytes: u64,
    /// Free-list bytes (part of `metadata_bytes`).
    pub free_list_bytes: u64,
}

impl LineSizeReport {
    /// The report of a memory's statistics; `zero_bytes` is the logical bytes lying in all-zero
    /// lines (see [`ZeroLineCounter`]).
    pub fn from_stats(stats: &Stats, zero_bytes: u64) -> Self {
        let empty = stats.logical_bytes == 0;
        let finite = |r: f64| {
            if empty {
                1.0
            } else if r.is_finite() {
                r
            } else {
                // Unreachable in practice (metadata is never 0 bytes); JSON cannot hold infinity.
                f64::MAX
            }
        };
        LineSizeReport {
            line_size: stats.line_size,
            logical_bytes: stats.logical_bytes,
            physical_bytes: stats.physical_bytes,
            metadata_bytes: stats.metadata_bytes,
            footprint_bytes: stats.footprint_bytes(),
            zero_bytes,
            dedup_ratio: finite(stats.dedup_ratio()),
            dedup_ratio_excl_zero: finite(stats.dedup_ratio_excl_zero(zero_bytes)),
            leaf_lines: stats.leaf_lines,
            interior_lines: stats.interior_lines,
            dedup_hits: stats.leaf_dedup_hits + stats.interior_dedup_hits,
            leaf_dedup_hits: stats.leaf_dedup_hits,
            interior_dedup_hits: stats.interior_dedup_hits,
            zero_leaf_hits: stats.zero_leaf_hits,
            zero_interior_hits: stats.zero_interior_hits,
            leaf_lines_created: stats.leaf_lines_created,
            interior_lines_created: stats.interior_lines_created,
            refcount_bytes: stats.refcount_bytes,
            index_bytes: stats.index_bytes,
            map_bytes: stats.map_bytes,
            free_list_bytes: stats.free_list_bytes,
        }
    }

    /// Sums reports of separate memories per line size (ascending), for what the memories hold
    /// together (no dedup across them). The ratios are recomputed from the sums; a line size
    /// without logical bytes or footprint keeps ratios of 1.0.
    pub fn sum_by_line_size<'a>(
        reports: impl IntoIterator<Item = &'a LineSizeReport>,
    ) -> Vec<LineSizeReport> {
        let mut by_size: BTreeMap<u64, LineSizeReport> = BTreeMap::new();
        for l in reports {
            let e = by_size
                .entry(l.line_size)
                .or_insert_with(|| LineSizeReport {
                    line_size: l.line_size,
                    dedup_ratio: 1.0,
                    dedup_ratio_excl_zero: 1.0,
                    ..LineSizeReport::default()
                });
            e.logical_bytes += l.logical_bytes;
            e.physical_bytes += l.physical_bytes;
            e.metadata_bytes += l.metadata_bytes;
            e.footprint_bytes += l.footprint_bytes;
            e.zero_bytes += l.zero_bytes;
            e.leaf_lines += l.leaf_lines;
            e.interior_lines += l.interior_lines;
            e.dedup_hits += l.dedup_hits;
            e.leaf_dedup_hits += l.leaf_dedup_hits;
            e.interior_dedup_hits += l.interior_dedup_hits;
            e.zero_leaf_hits += l.zero_leaf_hits;
            e.zero_interior_hits += l.zero_interior_hits;
            e.leaf_lines_created += l.leaf_lines_created;
            e.interior_lines_created += l.interior_lines_created;
            e.refcount_bytes += l.refcount_bytes;
            e.index_bytes += l.index_bytes;
            e.map_bytes += l.map_bytes;
            e.free_list_bytes += l.free_list_bytes;
        }
        by_size
            .into_values()
            .map(|mut e| {
                if e.logical_bytes > 0 && e.footprint_bytes > 0 {
                    e.dedup_ratio = e.logical_bytes as f64 / e.footprint_bytes as f64;
                    e.dedup_ratio_excl_zero = e.logical_bytes.saturating_sub(e.zero_bytes) as f64
                        / e.footprint_bytes as f64;
                }
                e
            })
            .collect()
    }
}

/// `1536` -> `"1.5 KiB"`; bytes below 1 KiB are printed exactly.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    let digits = if v >= 100.0 { 1 } else { 2 };
    format!("{v:.digits$} {}", UNITS[unit])
}

/// A ratio as the tables print it (three decimals).
pub fn ratio(r: f64) -> String {
    format!("{r:.3}")
}

/// A plain-text table: the first row is the header; columns are right-aligned except the first.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            let pad = widths[c] - cell.chars().count();
            if c == 0 {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            } else {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
        if i == 0 {
            let total = widths.iter().sum::<usize>() + 2 * cols.saturating_sub(1);
            out.push_str(&"-".repeat(total));
            out.push('\n');
        }
    }
    out
}

/// The per-line-size table (one row per report).
pub fn line_size_table(reports: &[LineSizeReport]) -> String {
    let mut rows = vec![[
        "line",
        "logical",
        "physical",
        "metadata",
        "footprint",
        "zero",
        "ratio",
        "excl. zero",
        "leaf lines",
        "interior",
        "dedup hits",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect::<Vec<_>>()];
    for r in reports {
        rows.push(vec![
            format!("{} B", r.line_size),
            human_bytes(r.logical_bytes),
            human_bytes(r.physical_bytes),
            human_bytes(r.metadata_bytes),
            human_bytes(r.footprint_bytes),
            human_bytes(r.zero_bytes),
            ratio(r.dedup_ratio),
            ratio(r.dedup_ratio_excl_zero),
            r.leaf_lines.to_string(),
            r.interior_lines.to_string(),
            r.dedup_hits.to_string(),
        ]);
    }
    table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Memory};

    fn small_config() -> Config {
        Config {
            line_size: 64,
            capacity_lines: 1 << 16,
            map_capacity: 16,
            ..Config::default()
        }
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(38 << 20), "38.00 MiB");
        assert_eq!(human_bytes(300 << 30), "300.0 GiB");
    }

    #[test]
    fn empty_memory_ratios_are_one() {
        let mem = Memory::new(small_config()).unwrap();
        let r = LineSizeReport::from_stats(&mem.stats(), 0);
        assert_eq!(r.logical_bytes, 0);
        assert_eq!(r.dedup_ratio, 1.0);
        assert_eq!(r.dedup_ratio_excl_zero, 1.0);
        #[cfg(feature = "serde")]
        assert!(serde_json::to_string(&r)
            .unwrap()
            .contains("\"dedup_ratio\":1.0"));
    }

    #[test]
    fn report_mirrors_stats() {
        let mem = Memory::new(small_config()).unwrap();
        let mut data = vec![5u8; 64 * 10];
        data.extend_from_slice(&[0; 64 * 6]);
        let _a = mem.segment(&data).unwrap();
        let _b = mem.segment(&data).unwrap();
        let s = mem.stats();
        let r = LineSizeReport::from_stats(&s, 2 * 64 * 6);
        assert_eq!(r.logical_bytes, 2 * 1024);
        assert_eq!(r.footprint_bytes, s.physical_bytes + s.metadata_bytes);
        assert_eq!(r.dedup_ratio, s.dedup_ratio());
        assert_eq!(r.dedup_ratio_excl_zero, s.dedup_ratio_excl_zero(768));
        assert_eq!(r.leaf_lines, 1, "ten equal lines and six zero lines");
        let text = line_size_table(&[r]);
        assert!(text.lines().count() == 3, "{text}");
        assert!(text.starts_with("line"), "{text}");
    }

    #[test]
    fn sums_per_line_size() {
        let a = LineSizeReport {
            line_size: 64,
            logical_bytes: 100,
            footprint_bytes: 50,
            zero_bytes: 20,
            ..LineSizeReport::default()
        };
        let b = LineSizeReport {
            line_size: 16,
            ..LineSizeReport::default()
        };
        let s = LineSizeReport::sum_by_line_size([&a, &b, &a]);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].line_size, s[0].dedup_ratio), (16, 1.0));
        assert_eq!(s[1].logical_bytes, 200);
        assert_eq!(s[1].dedup_ratio, 2.0);
        assert_eq!(s[1].dedup_ratio_excl_zero, 1.6);
    }
}
