//! Shared helpers of the benchmarks.
#![forbid(unsafe_code)]
