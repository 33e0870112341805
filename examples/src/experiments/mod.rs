//! Experiments: how much memory data needs on line-deduplicated memory.
//!
//! - [`dedup`]: `hicamp dedup` measures files (or the [`crate::workload`]) at every line size,
//!   against the page and CDC baselines, and reports the footprints.
//! - [`input`]: what is read: the walk of files and directories, stdin, tar streams, the
//!   built-in workload.
//! - [`fingerprint`]: the bounded-memory measurement: canonical DAGs counted by fingerprints,
//!   sampled by fingerprint past a memory budget.
//! - [`pagededup`]: the baseline, deduplication of whole pages (the Linux KSM model).
//! - [`cdc`]: the baseline of backup stores, FastCDC content-defined chunks.
//! - [`report`]: the dedup report: inputs, the baselines, and the per-line-size table
//!   (whose rows are `hicamp::footprint::LineSizeReport`).

pub mod cdc;
pub mod dedup;
pub mod fingerprint;
pub mod input;
pub mod pagededup;
pub mod report;
