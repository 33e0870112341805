//! Shared code of the `hicamp` command-line tool and the experiments.
#![forbid(unsafe_code)]

pub mod dedup;
pub mod pagededup;
pub mod phttpd;
pub mod report;
pub mod run;
pub mod workload;
