//! The report of `hicamp dedup` and its human rendering. The per-line-size part
//! ([`LineSizeReport`], its table) is the memory's own [`hicamp::footprint`], shared with the
//! `LD_PRELOAD` shim's report.

use std::fmt::Write as _;

use hicamp::footprint::{human_bytes, line_size_table, ratio, table, LineSizeReport};
use serde::Serialize;

use super::pagededup::PageDedupReport;

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
    /// Symbolic links below the operands, not followed (`--follow-links` follows them).
    pub links_not_followed: u64,
    /// Directories on other file systems than their operand's, not entered
    /// (`--cross-file-systems` enters them).
    pub other_file_systems: u64,
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
        if i.links_not_followed > 0 {
            notes.push(format!(
                "{} symbolic links not followed",
                i.links_not_followed
            ));
        }
        if i.other_file_systems > 0 {
            notes.push(format!(
                "{} directories on other file systems not entered",
                i.other_file_systems
            ));
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
            super::pagededup::KSM_METADATA_PER_PAGE
        );
        out.push_str(&page_baseline_table(&self.page_baseline));
        out
    }
}
