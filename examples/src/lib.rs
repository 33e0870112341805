//! Shared code of the `hicamp` command-line tool and the experiments.
#![forbid(unsafe_code)]

pub mod pagededup;
pub mod workload;
pub mod dedup;
pub mod report;
pub mod zero;
