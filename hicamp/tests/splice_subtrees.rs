//! Splices that take aligned source subtrees whole.
//!
//! Checked: any splice (random sources with zero runs and repeated lines,
//! offsets and lengths drawn often on subtree boundaries, every line size)
//! gives the segment that building its concatenated bytes from scratch gives
//! (same root: the DAG is canonical), the counts add up, and with every
//! handle dropped the memory holds no line (no reference leaked or lost).
//! And an aligned splice of N whole subtrees interns O(1) lines and takes one
//! reference per subtree, not one per leaf.

use hicamp::{Config, Memory, Piece, Segment, SegmentSlice, Stats};
use proptest::prelude::*;

fn mem(line_size: usize) -> Memory {
    Memory::new(Config {
        line_size,
        capacity_lines: 1 << 17,
        ..Config::default()
    })
    .unwrap()
}

/// Lines interned (created, found, or zero) so far.
fn interned(s: &Stats) -> u64 {
    s.leaf_lines_created
        + s.interior_lines_created
        + s.leaf_dedup_hits
        + s.interior_dedup_hits
        + s.zero_leaf_hits
        + s.zero_interior_hits
}

/// Source bytes: runs of random bytes, zeros and a repeated pattern.
fn source(max_runs: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((0u8..3, 1usize..6000, any::<u8>()), 0..max_runs).prop_map(|runs| {
        let mut v = Vec::new();
        for (kind, n, seed) in runs {
            match kind {
                0 => v.extend((0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)),
                1 => v.extend(std::iter::repeat_n(0u8, n)),
                _ => v.extend((0..n).map(|i| (i % 7) as u8 ^ seed)),
            }
        }
        v
    })
}

#[derive(Debug, Clone)]
enum Op {
    /// `n` units of new bytes (value `b`).
    Bytes(usize, u8),
    Zeros(usize),
    /// Source `which`, offset `a` units, length `b` units (clamped).
    Range(usize, usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..40, any::<u8>()).prop_map(|(n, b)| Op::Bytes(n, b)),
        (0usize..40).prop_map(Op::Zeros),
        (0usize..2, 0usize..200, 0usize..400).prop_map(|(w, a, b)| Op::Range(w, a, b)),
        (0usize..2, 0usize..200, 0usize..400).prop_map(|(w, a, b)| Op::Range(w, a, b)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn subtree_splices_are_canonical_and_balanced(
        ls_shift in 4u32..9,
        // Units: a byte, a line, an interior line's span, or two levels' span.
        unit_level in 0u32..4,
        jitter in 0usize..3,
        srcs in (source(12), source(12)),
        ops in prop::collection::vec(op(), 0..8),
    ) {
        let ls = 1usize << ls_shift;
        let f = ls / 4;
        let unit = match unit_level {
            0 => 1,
            1 => ls,
            2 => ls * f,
            _ => ls * f * f,
        }
        .min(4096);
        let m = mem(ls);
        let srcs = [srcs.0, srcs.1];
        let segs: Vec<Segment> = srcs.iter().map(|s| m.segment(s).unwrap()).collect();
        let mut want = Vec::new();
        let mut owned: Vec<Vec<u8>> = Vec::new();
        let mut slices: Vec<SegmentSlice> = Vec::new();
        // What each op becomes, resolved first (pieces borrow the vectors).
        enum P { B(usize), Z(u64), R(usize) }
        let mut plan = Vec::new();
        let mut range_bytes = 0u64;
        for op in &ops {
            match *op {
                Op::Bytes(n, b) => {
                    // An odd jitter makes some headers ragged.
                    let len = (n * unit / 4 + jitter * (n % 2)).min(1 << 16);
                    owned.push(vec![b | 1; len]);
                    want.extend_from_slice(owned.last().unwrap());
                    plan.push(P::B(owned.len() - 1));
                }
                Op::Zeros(n) => {
                    let len = (n * unit / 2).min(1 << 17);
                    want.extend(std::iter::repeat_n(0u8, len));
                    plan.push(P::Z(len as u64));
                }
                Op::Range(w, a, b) => {
                    let src = &srcs[w];
                    let off = (a * unit + jitter * (a % 3 / 2)).min(src.len());
                    let len = (b * unit).min(src.len() - off);
                    want.extend_from_slice(&src[off..off + len]);
                    range_bytes += len as u64;
                    slices.push(SegmentSlice::new(segs[w].clone(), off as u64, len));
                    plan.push(P::R(slices.len() - 1));
                }
            }
        }
        let pieces: Vec<Piece<'_>> = plan
            .iter()
            .map(|p| match *p {
                P::B(i) => Piece::Bytes(&owned[i]),
                P::Z(n) => Piece::Zeros(n),
                P::R(i) => Piece::Range(&slices[i]),
            })
            .collect();
        let (s, c) = m.splice(&pieces).unwrap();
        prop_assert_eq!(s.len(), want.len() as u64);
        let direct = m.segment(&want).unwrap();
        // Same root and length: canonical.
        prop_assert_eq!(s.root(), direct.root());
        prop_assert_eq!(&s, &direct);
        prop_assert!(s.to_vec() == want, "bytes differ");
        prop_assert_eq!(c.copied_bytes + c.shared_bytes, range_bytes);
        // A second splice of the same pieces dedups to the same segment.
        let (s2, _) = m.splice(&pieces).unwrap();
        prop_assert_eq!(&s2, &s);
        drop((s, s2, direct));
        drop(pieces);
        drop(slices);
        drop(segs);
        prop_assert_eq!(m.live_lines(), 0, "a reference leaked or was lost");
    }
}

/// An aligned splice of `n` whole level-2 subtrees behind a zero run of one
/// subtree: one reference per subtree, one interior line interned, whatever
/// `n` (the per-leaf path took `n * F^2` references and interned
/// `n * F + 1` interior lines).
#[test]
fn aligned_subtrees_cost_o_edge_not_o_leaves() {
    for ls in [64usize, 256] {
        let f = ls / 4;
        let span = ls * f * f; // bytes under a level-2 line
                               // (1 MiB under a level-2 line at 256-byte lines: a few of them.)
        let ns: &[usize] = if ls == 64 { &[1, 3, 7, 15] } else { &[1, 3] };
        for &n in ns {
            let m = mem(ls);
            let data: Vec<u8> = (0..(n + 1) * span)
                .map(|i| ((i / 4) as u32).wrapping_mul(2654435761).to_le_bytes()[i % 4] | 1)
                .collect();
            let src = m.segment(&data).unwrap();
            // The canonical roots of the subtrees the splice should take.
            let subs: Vec<Segment> = (1..=n)
                .map(|i| m.segment(&data[i * span..(i + 1) * span]).unwrap())
                .collect();
            let before: Vec<u32> = subs.iter().map(|s| m.refcount(s.root())).collect();
            let live = m.live_lines();
            let st = m.stats();
            let r = SegmentSlice::new(src.clone(), span as u64, n * span);
            let (s, c) = m
                .splice(&[Piece::Zeros(span as u64), Piece::Range(&r)])
                .unwrap();
            let interns = interned(&m.stats()) - interned(&st);
            assert_eq!(c.shared_subtrees, n as u64, "ls {ls} n {n}");
            assert_eq!(c.shared_lines, (n * f * f) as u64);
            assert_eq!(c.copied_bytes, 0);
            assert_eq!(c.assembled_lines, 0);
            // Only the root over (zero subtree, n subtrees).
            assert_eq!(interns, 1, "ls {ls} n {n}: lines interned");
            assert_eq!(m.live_lines() - live, 1);
            for (sub, b) in subs.iter().zip(&before) {
                assert_eq!(m.refcount(sub.root()), b + 1, "one reference per subtree");
            }
            let mut want = vec![0u8; span];
            want.extend_from_slice(&data[span..]);
            assert_eq!(s, m.segment(&want).unwrap());
            drop((s, r, subs, src));
            assert_eq!(m.live_lines(), 0);
        }
    }
}

/// The shape of a TSO frame: a header line, padding to an interior line's
/// span, then a payload range starting on a 1 KiB boundary of its source.
/// The interior lines under the payload are shared whole; only the edge is
/// built.
#[test]
fn frame_shaped_splice_shares_interior_lines() {
    let ls = 64usize;
    let f = ls / 4;
    let span = ls * f; // 1 KiB
    let m = mem(ls);
    let data: Vec<u8> = (0..1usize << 20).map(|i| (i % 253) as u8 + 1).collect();
    let src = m.segment(&data).unwrap();
    let hdr = [0x45u8; 54];
    let off = 37 * span;
    let len = 64 * span - 100; // ends inside a line: a ragged right edge
    let r = SegmentSlice::new(src.clone(), off as u64, len);
    let st = m.stats();
    let (s, c) = m
        .splice(&[
            Piece::Bytes(&hdr),
            Piece::Zeros((span - hdr.len()) as u64),
            Piece::Range(&r),
        ])
        .unwrap();
    let interns = interned(&m.stats()) - interned(&st);
    // 1022 whole leaves: 63 whole 1 KiB subtrees, 14 leaves, then the last
    // 28 bytes copied into a line of their own.
    assert_eq!(c.copied_bytes, 28);
    assert_eq!(c.shared_subtrees, 63);
    assert_eq!(c.shared_lines, 63 * 16 + 14);
    // Header leaf, tail leaf, interior lines: a few, not ~1000.
    assert!(interns < 16, "{interns} lines interned");
    let mut want = hdr.to_vec();
    want.resize(span, 0);
    want.extend_from_slice(&data[off..off + len]);
    assert_eq!(s, m.segment(&want).unwrap());
    drop((s, r, src));
    assert_eq!(m.live_lines(), 0);
}

/// A splice that runs out of lines after taking subtrees gives every
/// reference back: an error, and no line left once the handles are dropped.
#[test]
fn a_full_memory_mid_splice_leaks_nothing() {
    let ls = 64usize;
    let span = ls * (ls / 4); // 1 KiB
    let m = Memory::new(Config {
        line_size: ls,
        capacity_lines: 1 << 11,
        ..Config::default()
    })
    .unwrap();
    let data: Vec<u8> = (0..64 * span).map(|i| (i % 251) as u8 + 1).collect();
    let src = m.segment(&data).unwrap();
    let r = SegmentSlice::new(src.clone(), 0, 32 * span);
    // Unique bytes after the shared subtrees: more lines than are free.
    let fresh: Vec<u8> = (0..2048 * ls)
        .map(|i| ((i / 4) as u32).wrapping_mul(2654435761).to_le_bytes()[i % 4])
        .collect();
    let res = m.splice(&[Piece::Range(&r), Piece::Bytes(&fresh), Piece::Range(&r)]);
    assert!(res.is_err(), "the memory should be full");
    drop(res);
    drop((r, src));
    assert_eq!(m.live_lines(), 0);
}
