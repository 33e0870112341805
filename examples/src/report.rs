//! The shape of a dedup / footprint report, shared by `hicamp dedup` and every other producer
//! (the `LD_PRELOAD` trace report reuses [`LineSizeReport`] as is), and its human rendering.

use std::fmt::Write as _;

use serde::Serialize;

use crate::pagededup::PageDedupReport;

/// Footprint of some data in one HICAMP memory of one line size.
///
/// Ratios are always finite numbers (JSON holds no NaN or infinity): with no logical bytes
/// both are 1.0 (nothing to deduplicate), the convention of [`PageDedupReport`].
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    /// lines (see [`crate::zero`]).
    pub fn from_stats(stats: &hicamp::Stats, zero_bytes: u64) -> Self {
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
}

/// What was ingested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InputReport {
    /// `"paths"` (files and directories) or `"default_workload"`.
    pub source: String,
    /// One line saying what the input was.
    pub description: String,
    /// Files (or workload items) ingested, each as one segment.
    pub files: u64,
    /// Bytes ingested.
    pub bytes: u64,
    /// Files and directories that could not be read, or were not regular files (each reported
    /// on stderr).
    pub skipped: u64,
    /// Files whose reading failed part way: the bytes read before the error are ingested.
    pub partial: u64,
    /// Paths that named a file or directory already ingested (hard links, symbolic links,
    /// repeated operands), ingested once only.
    pub duplicates: u64,
}

/// The whole report of `hicamp dedup`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DedupReport {
    /// What was ingested.
    pub input: InputReport,
    /// One entry per line size, ascending.
    pub line_sizes: Vec<LineSizeReport>,
    /// The same data deduplicated at page granularity (the Linux KSM model).
    pub page_baseline: PageDedupReport,
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

/// A plain-text table: the first row is the header; columns are right-aligned except the first.
fn table(rows: &[Vec<String>]) -> String {
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

fn ratio(r: f64) -> String {
    format!("{r:.3}")
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

/// The page-baseline table (one row).
pub fn page_baseline_table(p: &PageDedupReport) -> String {
    let rows = vec![
        [
            "page",
            "logical",
            "physical",
            "metadata",
            "footprint",
            "ratio",
            "excl. zero",
            "pages",
            "unique",
            "zero pages",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>(),
        vec![
            format!("{} B", p.page_size),
            human_bytes(p.logical_bytes),
            human_bytes(p.physical_bytes),
            human_bytes(p.metadata_bytes),
            human_bytes(p.physical_bytes + p.metadata_bytes),
            ratio(p.dedup_ratio),
            ratio(p.dedup_ratio_excl_zero),
            p.pages.to_string(),
            p.unique_pages.to_string(),
            p.zero_pages.to_string(),
        ],
    ];
    table(&rows)
}

impl DedupReport {
    /// The human-readable report: input, line-size table, page baseline.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let i = &self.input;
        let _ = writeln!(out, "input: {}", i.description);
        let mut notes = Vec::new();
        if i.skipped > 0 {
            notes.push(format!("{} skipped", i.skipped));
        }
        if i.partial > 0 {
            notes.push(format!("{} read only in part", i.partial));
        }
        if i.duplicates > 0 {
            notes.push(format!("{} duplicate paths ingested once", i.duplicates));
        }
        if !notes.is_empty() {
            let _ = writeln!(out, "       ({})", notes.join(", "));
        }
        let _ = writeln!(
            out,
            "\nHICAMP line-level dedup (footprint = physical lines + metadata; \
             ratio = logical / footprint; excl. zero = without bytes in all-zero lines):\n"
        );
        out.push_str(&line_size_table(&self.line_sizes));
        let _ = writeln!(
            out,
            "\nBaseline: {} B page dedup, Linux KSM model (zero pages free, {} B metadata per page):\n",
            self.page_baseline.page_size,
            crate::pagededup::KSM_METADATA_PER_PAGE
        );
        out.push_str(&page_baseline_table(&self.page_baseline));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_config() -> hicamp::Config {
        hicamp::Config {
            line_size: 64,
            capacity_lines: 1 << 16,
            map_capacity: 16,
            ..hicamp::Config::default()
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
        let mem = hicamp::Memory::new(small_config()).unwrap();
        let r = LineSizeReport::from_stats(&mem.stats(), 0);
        assert_eq!(r.logical_bytes, 0);
        assert_eq!(r.dedup_ratio, 1.0);
        assert_eq!(r.dedup_ratio_excl_zero, 1.0);
        assert!(serde_json::to_string(&r)
            .unwrap()
            .contains("\"dedup_ratio\":1.0"));
    }

    #[test]
    fn report_mirrors_stats() {
        let mem = hicamp::Memory::new(small_config()).unwrap();
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
}
