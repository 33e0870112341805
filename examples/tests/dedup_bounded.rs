//! The bounded (fingerprint) method of `hicamp dedup` against the exact HICAMP memories, its
//! sampled estimate against known redundancy, and its memory bound.

use std::io::Write;
use std::process::{Command, Stdio};

use hicamp_examples::experiments::dedup::{ingest, IngestOptions, InputSet, Method};
use hicamp_examples::experiments::report::DedupReport;
use hicamp_examples::workload::Item;
use indicatif::ProgressBar;
use proptest::prelude::*;
use serde_json::Value;

fn run(items: &[Vec<u8>], method: Method, line_sizes: &[usize], budget: u64) -> DedupReport {
    let input = InputSet::from_workload(
        items
            .iter()
            .enumerate()
            .map(|(i, d)| Item {
                name: format!("item{i}"),
                data: d.clone(),
            })
            .collect(),
        "test".into(),
    );
    let opts = IngestOptions {
        line_sizes: line_sizes.to_vec(),
        threads: 2,
        method,
        memory_budget: budget,
        cdc: false,
        ..IngestOptions::default()
    };
    ingest(&input, &opts, &ProgressBar::hidden(), &mut |w| {
        panic!("{w}")
    })
    .unwrap()
}

/// Items built from a small alphabet of blocks (so that lines repeat), zero runs and odd
/// lengths (partial last lines).
fn items_strategy() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let block = prop_oneof![
        3 => (0u8..6).prop_map(|b| vec![b.wrapping_mul(37); 48]),
        1 => Just(vec![0u8; 100]),
        2 => proptest::collection::vec(any::<u8>(), 1..300),
    ];
    proptest::collection::vec(proptest::collection::vec(block, 0..60), 1..6).prop_map(|items| {
        items
            .into_iter()
            .map(|blocks| blocks.concat())
            .collect::<Vec<_>>()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// What the fingerprints count is what the memory stores: the same lines, the same
    /// logical and zero bytes, the same pages; the metadata model within a few percent.
    #[test]
    fn fingerprints_agree_with_exact_memory(items in items_strategy()) {
        let sizes = [16, 32, 64, 256, 4096];
        let exact = run(&items, Method::Exact, &sizes, u64::MAX);
        let fp = run(&items, Method::Fingerprint, &sizes, 1 << 30);
        prop_assert!(!fp.sampled);
        for (e, f) in exact.line_sizes.iter().zip(&fp.line_sizes) {
            prop_assert_eq!(e.line_size, f.line_size);
            prop_assert_eq!(e.logical_bytes, f.logical_bytes);
            prop_assert_eq!(e.zero_bytes, f.zero_bytes);
            prop_assert_eq!(e.leaf_lines, f.leaf_lines, "line size {}", e.line_size);
            prop_assert_eq!(e.interior_lines, f.interior_lines, "line size {}", e.line_size);
            prop_assert_eq!(e.physical_bytes, f.physical_bytes);
            prop_assert_eq!(e.map_bytes, f.map_bytes);
            let (a, b) = (e.metadata_bytes as f64, f.metadata_bytes as f64);
            prop_assert!((a - b).abs() <= 0.3 * a + 8192.0, "metadata {} vs {}", a, b);
        }
        let (e, f) = (&exact.page_baseline, &fp.page_baseline);
        prop_assert_eq!(e, f);
    }
}

/// Deterministic pseudo-random bytes.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

/// Data with known redundancy: 150 000 distinct 64-byte lines, each stored three times in
/// three items. Under a budget that forces sampling, the estimate of the distinct leaves is
/// within its stated 95% interval, and the interior lines agree with the unsampled count.
#[test]
fn sampled_estimate_is_within_its_stated_error() {
    let distinct = 150_000;
    let base = noise(7, distinct * 64);
    let mut shuffled = Vec::with_capacity(base.len());
    for i in 0..distinct {
        let j = (i * 7919) % distinct;
        shuffled.extend_from_slice(&base[j * 64..j * 64 + 64]);
    }
    let items = vec![base.clone(), shuffled, base];
    let full = run(&items, Method::Fingerprint, &[64], 1 << 30);
    assert!(!full.sampled);
    assert_eq!(full.line_sizes[0].leaf_lines, distinct as u64);
    // A budget below the fixed overhead leaves each set its minimum (1 MiB): ~98 000 slots.
    let small = run(&items, Method::Fingerprint, &[64], 1 << 20);
    assert!(small.sampled, "the budget forces sampling");
    let e = small.line_estimates[0];
    assert!(e.sample_rate < 1.0 && e.rel_err_95 > 0.0, "{e:?}");
    let l = &small.line_sizes[0];
    let want = (distinct as u64 + full.line_sizes[0].interior_lines) as f64;
    let got = (l.leaf_lines + l.interior_lines) as f64;
    let err = (got - want).abs() / want;
    assert!(
        err <= e.rel_err_95,
        "relative error {err} > stated {}",
        e.rel_err_95
    );
    let leaf_err = (l.leaf_lines as f64 - distinct as f64).abs() / distinct as f64;
    assert!(leaf_err <= 3.0 * e.rel_err_95, "leaf error {leaf_err}");
    // Counts that are not distinct counts stay exact.
    assert_eq!(l.logical_bytes, full.line_sizes[0].logical_bytes);
    assert_eq!(l.zero_bytes, full.line_sizes[0].zero_bytes);
    assert!(small.set_peak_bytes <= 3 << 20, "{}", small.set_peak_bytes);
}

/// 1 GiB of generated data (through standard input) stays under the memory budget, and the
/// report says the result is a sampled estimate.
#[test]
fn one_gib_stays_under_the_budget() {
    const TOTAL: usize = 1 << 30;
    let budget: u64 = 160 << 20;
    let mut child = Command::new(env!("CARGO_BIN_EXE_hicamp"))
        .args([
            "dedup",
            "--json",
            "-q",
            "--line-sizes",
            "16,4096",
            "--memory",
            &budget.to_string(),
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        // Half unique data, a quarter repeats of it, a quarter zeros: 4 MiB at a time.
        let block = 4 << 20;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut buf = vec![0u8; block];
        let mut first = Vec::new();
        for i in 0..TOTAL / block {
            match i % 4 {
                0 | 1 => {
                    for w in buf.chunks_exact_mut(8) {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        w.copy_from_slice(&x.to_le_bytes());
                    }
                    if first.is_empty() {
                        first = buf.clone();
                    }
                    stdin.write_all(&buf).unwrap();
                }
                2 => stdin.write_all(&first).unwrap(),
                _ => stdin.write_all(&vec![0u8; block]).unwrap(),
            }
        }
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["input"]["bytes"].as_u64(), Some(TOTAL as u64));
    assert_eq!(v["sampled"], Value::Bool(true), "{}", v["line_estimates"]);
    let rss = v["run"]["peak_rss_bytes"].as_u64().unwrap();
    assert!(rss > 0, "peak RSS is reported");
    assert!(rss <= budget, "peak RSS {rss} over the budget {budget}");
    let e = &v["line_estimates"][0];
    assert!(e["sample_rate"].as_f64().unwrap() < 1.0, "{e}");
}
