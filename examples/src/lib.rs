//! The top floor: programs on HICAMP memory and its network stack. Nothing else in the
//! workspace depends on this crate.
//!
//! | module          | what it holds                                                        |
//! |-----------------|----------------------------------------------------------------------|
//! | [`cli`]         | the `hicamp` command line (`dedup`, `fsck`, `stat`, `run` under the shim) |
//! | [`compare`]     | HICAMP against PASTE's buffer model and Linux (`hicamp compare`)     |
//! | [`phttpd`]      | a PASTE-phttpd-like HTTP server on segstack, and its `phttpd` command |
//! | [`experiments`] | line-level dedup against page-level dedup (`hicamp dedup`)          |
//! | [`workload`]    | deterministic PASTE-style traffic: RPC, WAL, static objects, netmap  |
//!
//! The footprint types (per line size, all-zero lines, the shim's report) live in
//! `hicamp::footprint`, so that the libc shim needs only the memory.
//!
//! The binaries in `src/bin/` only call [`cli::main`] and [`phttpd::cli::main`].
#![deny(unsafe_code)]

pub mod cli;
pub mod compare;
pub mod experiments;
pub mod phttpd;
pub mod workload;
