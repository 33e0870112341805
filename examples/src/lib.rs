//! The top floor: programs on HICAMP memory and its network stack. Nothing else in the
//! workspace depends on this crate.
//!
//! | module          | what it holds                                                        |
//! |-----------------|----------------------------------------------------------------------|
//! | [`cli`]         | the `hicamp` command line (`dedup`, `fsck`, `stat`, `run`)           |
//! | [`phttpd`]      | a PASTE-phttpd-like HTTP server on segstack, and its `phttpd` command |
//! | [`experiments`] | line-level dedup against page-level dedup (`hicamp dedup`)          |
//! | [`workload`]    | deterministic PASTE-style traffic: RPC, WAL, static objects, netmap  |
//! | [`run`]         | `hicamp run`: a command under the libc shim, reports merged          |
//! | [`report`], [`zero`] | the footprint report and the all-zero-line count             |
//!
//! The binaries in `src/bin/` only call [`cli::main`] and [`phttpd::cli::main`].
#![forbid(unsafe_code)]

pub mod cli;
pub mod experiments;
pub mod phttpd;
pub mod report;
pub mod run;
pub mod workload;
pub mod zero;

// The old paths, for the footprint-report code that is moving into hicamp (`report` names
// `crate::pagededup`; libc-shim calls `hicamp_examples::dedup::check_line_size`): drop them
// when it has moved.
#[doc(hidden)]
pub use experiments::{dedup, pagededup};
