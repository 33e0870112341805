//! Fuzz target: `segstack::wire::fuzz::ipv4` (parse, emit, re-parse).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = segstack::wire::fuzz::ipv4(data);
});
