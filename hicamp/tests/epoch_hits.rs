//! The lock-free hit path under contention: threads build the same
//! multi-level segments (every line a candidate for a borrowed hit) while
//! other threads drop their last references to them, and intern fresh
//! content into the slots those drops free. A borrowed line revived after
//! its slot was reused, or a table read after it was freed, shows up as a
//! wrong read or a leaked or double-freed line.

use hicamp::{Config, Memory};
use testkit::Rng;

/// Content of family `k`: 64-byte lines that repeat across families, so
/// that leaves and interior lines are shared between segments.
fn content(k: u64, lines: usize) -> Vec<u8> {
    (0..lines * 64)
        .map(|i| ((i / 64) as u64 % 5 + k * 3 + (i % 64) as u64) as u8)
        .collect()
}

#[test]
fn builds_race_last_drops_and_slot_reuse() {
    // Small enough that freed slots are reused quickly and tables grow.
    let mem = Memory::new(Config {
        line_size: 64,
        capacity_lines: 1 << 14,
        map_capacity: 4,
        ..Config::default()
    })
    .unwrap();
    let families: Vec<Vec<u8>> = (0..6).map(|k| content(k, 40 + 37 * k as usize)).collect();
    std::thread::scope(|sc| {
        for t in 0..3u64 {
            let mem = &mem;
            let families = &families;
            sc.spawn(move || {
                let mut rng = Rng::new(0xe90c + t);
                let mut held = Vec::new();
                for round in 0..3000 {
                    let k = rng.below(families.len() as u64) as usize;
                    let s = mem.segment(&families[k]).unwrap();
                    assert_eq!(s.to_vec(), families[k], "thread {t} round {round}");
                    held.push((k, s));
                    if held.len() > 3 || rng.below(2) == 0 {
                        let (k, s) = held.swap_remove(rng.below(held.len() as u64) as usize);
                        assert_eq!(s.to_vec(), families[k]);
                        drop(s);
                    }
                    // Fresh content takes the slots the drops free.
                    if rng.below(4) == 0 {
                        let fresh: Vec<u8> = (0..64 * 20).map(|_| rng.below(256) as u8).collect();
                        let f = mem.segment(&fresh).unwrap();
                        assert_eq!(f.to_vec(), fresh);
                    }
                }
            });
        }
    });
    assert_eq!(mem.live_lines(), 0, "a reference leaked");
    let s = mem.stats();
    assert!(s.leaf_dedup_hits > 0 && s.interior_dedup_hits > 0);
}
