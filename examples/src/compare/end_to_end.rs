//! `--end-to-end`: each server serving the kernel's `wrk` over the same virtual link (root).

use super::Run;

/// The end-to-end runs. Needs root (a TAP device in a namespace) and `wrk`.
pub fn run_all(_connections: &[usize]) -> Result<Vec<Run>, String> {
    Err("--end-to-end is not implemented yet".into())
}
