//! Experiments: how much memory data needs on line-deduplicated memory.
//!
//! - [`dedup`]: `hicamp dedup` ingests files (or the [`crate::workload`]) into one memory per
//!   line size and into the page baseline, and reports the footprints.
//! - [`pagededup`]: the baseline, deduplication of whole pages (the Linux KSM model).
//! - [`report`]: the dedup report: inputs, the page baseline, and the per-line-size table
//!   (whose rows are `hicamp::footprint::LineSizeReport`).

pub mod dedup;
pub mod pagededup;
pub mod report;
