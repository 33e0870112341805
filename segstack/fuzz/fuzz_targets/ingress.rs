//! Fuzz target: a whole frame into an interface with a listener, a UDP socket
//! and an open connection (`segstack::iface::IngressFuzzer`). The first byte
//! picks the metadata flags; the rest is the frame.
#![no_main]

use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use segstack::iface::IngressFuzzer;

static FUZZER: OnceLock<Mutex<IngressFuzzer>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let f = FUZZER.get_or_init(|| Mutex::new(IngressFuzzer::new()));
    f.lock().unwrap_or_else(|e| e.into_inner()).run(data);
});
