//! Fuzz target: `segstack::wire::fuzz::udp` (parse, emit, re-parse).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = segstack::wire::fuzz::udp(data);
});
