//! `Segment::read_cost`: the lines a read reaches, against counts worked out
//! from the canonical DAG's shape.

use hicamp::{Config, Memory};

fn mem() -> Memory {
    Memory::new(Config {
        line_size: 64,
        capacity_lines: 1 << 16,
        ..Config::default()
    })
    .unwrap()
}

/// Lines of 64 bytes, each distinct and non-zero.
fn unique(lines: usize) -> Vec<u8> {
    (0..lines * 8)
        .flat_map(|i| (i as u64 + 1).to_le_bytes())
        .collect()
}

#[test]
fn whole_reads_reach_every_line_once() {
    let m = mem();
    // Fanout 16 at 64-byte lines: 1, 16, 17, 256, 1000 leaves.
    for (leaves, interior) in [
        (1u64, 0u64),
        (16, 1),
        (17, 3),
        (256, 17),
        (1000, 63 + 4 + 1),
    ] {
        let s = m.segment(&unique(leaves as usize)).unwrap();
        let c = s.read_cost(0, s.len());
        assert_eq!(c.leaf_lines, leaves, "{leaves} leaves");
        assert_eq!(c.interior_lines, interior, "{leaves} leaves");
    }
}

#[test]
fn a_read_within_a_line_walks_one_path() {
    let m = mem();
    let s = m.segment(&unique(1000)).unwrap();
    let c = s.read_cost(64 * 500 + 3, 10);
    assert_eq!((c.interior_lines, c.leaf_lines), (u64::from(s.height()), 1));
    // Two adjacent leaves under one parent: one path, two leaves.
    let c = s.read_cost(64 * 16 + 60, 10);
    assert_eq!((c.interior_lines, c.leaf_lines), (u64::from(s.height()), 2));
    // Past the end, or empty: nothing.
    assert_eq!(s.read_cost(s.len(), 10), hicamp::ReadCost::default());
    assert_eq!(s.read_cost(0, 0), hicamp::ReadCost::default());
    // Clamped to the end.
    assert_eq!(s.read_cost(s.len() - 1, 1 << 40).leaf_lines, 1);
}

#[test]
fn zero_runs_are_not_entered() {
    let m = mem();
    let mut data = unique(16);
    data.extend_from_slice(&vec![0u8; 64 * 256]);
    data.extend_from_slice(&unique(16));
    let s = m.segment(&data).unwrap();
    // 288 leaves: height 3 (root, 2 children at level 2, 18 at level 1).
    let c = s.read_cost(0, s.len());
    assert_eq!(c.leaf_lines, 32);
    // Root, level-2 nodes covering the data (2), level-1 nodes with data (2:
    // the first and the last; the sixteen zero ones are not entered).
    assert_eq!(c.interior_lines, 1 + 2 + 2);
    let z = m.segment(&vec![0u8; 64 * 300]).unwrap();
    assert_eq!(z.read_cost(0, z.len()), hicamp::ReadCost::default());
}
