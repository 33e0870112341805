//! phttpd's request-head parser (RFC 9112 rules): never panics, agrees
//! with itself when fed in pieces, and accepts only what the rules allow.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hicamp_examples::phttpd::http::fuzz_one(data);
});
