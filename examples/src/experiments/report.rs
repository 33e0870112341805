//! The report of `hicamp dedup` and its human rendering. The per-line-size part
//! ([`LineSizeReport`], its table) is the memory's own [`hicamp::footprint`], shared with the
//! `LD_PRELOAD` shim's report.

use std::fmt::Write as _;

use hicamp::footprint::{human_bytes, line_size_table, ratio, table, LineSizeReport};
use serde::Serialize;

use super::cdc::{CdcReport, CDC_INDEX_BYTES, CDC_REF_BYTES};
use super::dedup::{Method, MAX_NAMED};
use super::fingerprint::Estimate;
use super::pagededup::PageDedupReport;

/// What was ingested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InputReport {
    /// `"paths"` (files, directories, stdin, tar streams) or `"default_workload"`.
    pub source: String,
    /// One line saying what the input was.
    pub description: String,
    /// Files (or workload items, or tar members) ingested, each as one segment.
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
    /// The first `MAX_NAMED` (20) paths that were skipped or read only in part.
    pub unreadable: Vec<String>,
}

/// How sure the count of one line size is (fingerprint method).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LineEstimate {
    /// Line size, bytes.
    pub line_size: u64,
    /// Fraction of distinct lines sampled (1.0: every line counted).
    pub sample_rate: f64,
    /// Distinct lines in the sample.
    pub sampled_lines: u64,
    /// Half-width of the 95% interval of the line count (and so of `physical_bytes`),
    /// relative; 0 when not sampled.
    pub rel_err_95: f64,
    /// Expected pairs of distinct lines merged because their 64-bit fingerprints collide.
    pub expected_false_merges: f64,
}

/// How the run went (filled in by the command line tool).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RunInfo {
    /// Wall-clock seconds, walk included.
    pub elapsed_seconds: f64,
    /// Input bytes per second over the whole run.
    pub bytes_per_second: f64,
    /// Peak resident memory of the process (`VmHWM`), bytes; 0 where unknown.
    pub peak_rss_bytes: u64,
    /// Worker threads.
    pub threads: u64,
}

/// CPU time of the run by thread (from Linux's per-thread scheduler statistics): on a shared
/// machine the steadier figure than wall-clock time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuReport {
    /// Seconds the reading thread ran while reading (the walk before it excluded).
    pub reader_seconds: f64,
    /// Seconds each worker thread ran.
    pub worker_seconds: Vec<f64>,
    /// Seconds these threads were ready to run but waited for a CPU (other load).
    pub waiting_seconds: f64,
    /// CPU nanoseconds (reader and workers) per input byte.
    pub ns_per_byte: f64,
}

/// The whole report of `hicamp dedup`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DedupReport {
    /// How the line sizes were measured.
    pub method: Method,
    /// True when some count is a sampled estimate (see `line_estimates`, `page_estimate`,
    /// `cdc[].estimate`).
    pub sampled: bool,
    /// The memory budget of the fingerprint sets (fingerprint method).
    pub memory_budget_bytes: Option<u64>,
    /// Peak bytes of the fingerprint sets, summed over the sets (fingerprint method).
    pub set_peak_bytes: u64,
    /// What was ingested.
    pub input: InputReport,
    /// One entry per line size, ascending.
    pub line_sizes: Vec<LineSizeReport>,
    /// For the fingerprint method, one entry per line size: the sample and its error.
    pub line_estimates: Vec<LineEstimate>,
    /// The same data deduplicated at page granularity (the Linux KSM model).
    pub page_baseline: PageDedupReport,
    /// The estimate of the distinct pages (fingerprint method).
    pub page_estimate: Option<Estimate>,
    /// Content-defined chunking (FastCDC) at several average chunk sizes.
    pub cdc: Vec<CdcReport>,
    /// CPU time by thread, where the system tells it.
    pub cpu: Option<CpuReport>,
    /// Time and memory of the run.
    pub run: Option<RunInfo>,
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

fn err_cell(rel: Option<f64>) -> String {
    match rel {
        Some(r) if r > 0.0 => format!("±{:.2}%", r * 100.0),
        Some(_) => "exact".to_string(),
        None => "exact".to_string(),
    }
}

/// The table of every scheme side by side: HICAMP lines, fixed pages, CDC chunks.
pub fn comparison_table(r: &DedupReport) -> String {
    let mut rows = vec![[
        "scheme",
        "unit",
        "stored",
        "metadata",
        "footprint",
        "ratio",
        "units",
        "distinct",
        "95% interval",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect::<Vec<_>>()];
    for (i, l) in r.line_sizes.iter().enumerate() {
        let e = r.line_estimates.get(i);
        rows.push(vec![
            "HICAMP lines".into(),
            format!("{} B", l.line_size),
            human_bytes(l.physical_bytes),
            human_bytes(l.metadata_bytes),
            human_bytes(l.footprint_bytes),
            ratio(l.dedup_ratio),
            (l.leaf_lines + l.leaf_dedup_hits + l.zero_leaf_hits).to_string(),
            (l.leaf_lines + l.interior_lines).to_string(),
            err_cell(e.map(|e| e.rel_err_95)),
        ]);
    }
    let p = &r.page_baseline;
    rows.push(vec![
        "pages (KSM)".into(),
        format!("{} B", p.page_size),
        human_bytes(p.physical_bytes),
        human_bytes(p.metadata_bytes),
        human_bytes(p.physical_bytes + p.metadata_bytes),
        ratio(p.dedup_ratio),
        p.pages.to_string(),
        p.unique_pages.to_string(),
        err_cell(r.page_estimate.map(|e| e.rel_err_95)),
    ]);
    for c in &r.cdc {
        rows.push(vec![
            "CDC (FastCDC)".into(),
            format!("avg {}", human_bytes(c.avg_size)),
            human_bytes(c.physical_bytes),
            human_bytes(c.metadata_bytes),
            human_bytes(c.footprint_bytes),
            ratio(c.dedup_ratio),
            c.chunks.to_string(),
            c.unique_chunks.to_string(),
            err_cell(Some(c.estimate.rel_err_95)),
        ]);
    }
    table(&rows)
}

impl DedupReport {
    /// The human-readable report: input, line-size table, baselines, the comparison.
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
        if !i.unreadable.is_empty() {
            let more = (i.skipped + i.partial).saturating_sub(i.unreadable.len() as u64);
            let _ = writeln!(
                out,
                "unreadable: {}{}",
                i.unreadable
                    .iter()
                    .map(|n| format!("'{n}'"))
                    .collect::<Vec<_>>()
                    .join(", "),
                if more > 0 {
                    format!(" and {more} more (the first {MAX_NAMED} are named)")
                } else {
                    String::new()
                }
            );
        }
        let _ = match self.method {
            Method::Exact => writeln!(
                out,
                "method: exact (one HICAMP memory per line size; lines compared byte for byte)"
            ),
            Method::Fingerprint => writeln!(
                out,
                "method: fingerprints (each line, interior line, page and chunk counted by a \
                 64-bit xxh3 fingerprint; metadata modelled as hicamp::Stats counts it){}",
                match self.memory_budget_bytes {
                    Some(b) => format!("; memory budget {}", human_bytes(b)),
                    None => String::new(),
                }
            ),
        };
        if self.sampled {
            let _ = writeln!(
                out,
                "SAMPLED ESTIMATE: the budget was reached; distinct lines are sampled by \
                 fingerprint (a line is counted at every occurrence or at none); rates and 95% \
                 intervals below"
            );
        }
        let _ = writeln!(
            out,
            "\nHICAMP line-level dedup (footprint = physical lines + metadata; \
             ratio = logical / footprint; excl. zero = without bytes in all-zero lines):\n"
        );
        out.push_str(&line_size_table(&self.line_sizes));
        if self.sampled {
            let mut rows = vec![["line", "sample rate", "sampled lines", "95% interval"]
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()];
            for e in &self.line_estimates {
                rows.push(vec![
                    format!("{} B", e.line_size),
                    format!("1/{:.0}", 1.0 / e.sample_rate),
                    e.sampled_lines.to_string(),
                    err_cell(Some(e.rel_err_95)),
                ]);
            }
            out.push('\n');
            out.push_str(&table(&rows));
        }
        let _ = writeln!(
            out,
            "\nBaseline: {} B page dedup, Linux KSM model (zero pages free, {} B metadata per page):\n",
            self.page_baseline.page_size,
            super::pagededup::KSM_METADATA_PER_PAGE
        );
        out.push_str(&page_baseline_table(&self.page_baseline));
        if !self.cdc.is_empty() {
            let _ = writeln!(
                out,
                "\nAll schemes on the same data (CDC = FastCDC 2020, min avg/4, max 4 avg, as \
                 restic/borg/casync chunk; CDC metadata {CDC_REF_BYTES} B per chunk reference + \
                 {CDC_INDEX_BYTES} B per distinct chunk; units = lines written, pages or chunks):\n"
            );
            out.push_str(&comparison_table(self));
        }
        if let Some(c) = &self.cpu {
            let workers: Vec<String> = c.worker_seconds.iter().map(|s| format!("{s:.2}")).collect();
            let _ = writeln!(
                out,
                "\nCPU: workers {} s, reader {:.2} s ({:.1} ns per input byte); {:.2} s \
                 waiting for a CPU (other load)",
                workers.join(" + "),
                c.reader_seconds,
                c.ns_per_byte,
                c.waiting_seconds
            );
        }
        out
    }
}
