//! Fuzz target: `segstack::wire::fuzz::icmp` (parse, emit, re-parse).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = segstack::wire::fuzz::icmp(data);
});
