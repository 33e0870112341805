//! XXH3-64 with a seed: `xxhash-rust` as compiled (the x86-64 baseline, SSE2)
//! against `hicamp::hash` (AVX2 chosen at run time), same run, interleaved
//! rounds, medians. Sizes: 64 B to 4 KiB (the store's line sizes; 4 KiB is a
//! shared memory's line) and 64 KiB.
//!
//! ```text
//! cargo bench -p hicamp-benches --bench hash               # 21 rounds
//! cargo bench -p hicamp-benches --bench hash -- --quick    # 7 rounds
//! ```
//!
//! Under `cargo test` (`--bench` absent) one round runs and the two results are compared.
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::time::Instant;

use hicamp::hash::Path;
use hicamp_benches::{median, random_bytes};

const SIZES: [usize; 7] = [64, 128, 256, 512, 1024, 4096, 65536];
const SEED: u64 = 0x9e37_79b9;

/// Nanoseconds per hash of `data` over about 2 MiB of input, with `hash`
/// (generic, so each is inlined as at its call sites).
#[inline(never)]
fn ns_per_hash(hash: impl Fn(&[u8], u64) -> u64, data: &[u8], check: &mut u64) -> f64 {
    let iters = (2 << 20) / data.len().max(64);
    let t = Instant::now();
    let mut x = 0u64;
    for i in 0..iters {
        let h = hash(black_box(data), SEED ^ (i as u64 & 1));
        x = x.wrapping_add(h);
    }
    let ns = t.elapsed().as_nanos() as f64 / iters as f64;
    *check = check.wrapping_add(black_box(x));
    ns
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let measuring = args.iter().any(|a| a == "--bench");
    let rounds = if !measuring {
        1
    } else if args.iter().any(|a| a == "--quick") {
        7
    } else {
        21
    };
    if !Path::Avx2.available() {
        println!("hash: this CPU has no AVX2: hicamp::hash is xxhash-rust here");
    }
    println!("hash: xxh3_64_with_seed, xxhash-rust (SSE2) vs hicamp::hash (runtime AVX2), medians of {rounds} rounds");
    let data = random_bytes(*SIZES.iter().max().unwrap_or(&64) + 1, 7);
    for size in SIZES {
        // Off by one byte, as a trimmed line often is unaligned in length.
        let d = &data[1..1 + size];
        let (mut old, mut new) = (Vec::new(), Vec::new());
        let (mut a, mut b) = (0u64, 0u64);
        // Alternate which goes first, so neither always runs on a warmed-up core.
        for r in 0..rounds {
            if r % 2 == 1 {
                new.push(ns_per_hash(hicamp::hash::xxh3_64_with_seed, d, &mut b));
            }
            old.push(ns_per_hash(xxhash_rust::xxh3::xxh3_64_with_seed, d, &mut a));
            if r % 2 == 0 {
                new.push(ns_per_hash(hicamp::hash::xxh3_64_with_seed, d, &mut b));
            }
        }
        assert_eq!(a, b, "the two paths disagree at {size} B");
        let (o, n) = (median(&mut old), median(&mut new));
        println!(
            "hash {size:>6} B: xxhash-rust {o:9.1} ns ({:6.2} GB/s)  hicamp::hash {n:9.1} ns ({:6.2} GB/s)  speedup {:.2}x",
            size as f64 / o,
            size as f64 / n,
            o / n
        );
    }
}
