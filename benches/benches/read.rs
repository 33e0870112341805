//! Sequential read of a 1 MiB segment through its cursor: `copy_to_slice`,
//! `chunk()`/`advance()` xor-ing the bytes, the cursor as an `Iterator`, and
//! `to_vec`, on 64-byte lines; then `copy_to_slice` on lines of 16, 64, 256
//! and 4096 bytes.
//!
//! Baselines from the same run: memcpy of 1 MiB (preallocated destination),
//! the same xor over a contiguous `Vec` (in one pass and 64 bytes at a time), and `Vec::to_vec` (allocation + copy)
//! for `to_vec`.
//!
//! Target: cursor read >= 0.5x memcpy throughput.
#![forbid(unsafe_code)]

use std::hint::black_box;

use criterion::Criterion;
use hicamp::Segment;
use hicamp_benches::{
    memory_for, print_header, print_vs, random_bytes, subject, time_loop, xor_bytes, Group,
    Profile, Target, MIB,
};

const SIZE: usize = MIB;
const SEED: u64 = 0x4ead_0004;
const GROUP: &str = "read_1MiB";
const GROUP_LS: &str = "read_1MiB_line_size";
const LINE_SIZES: [usize; 4] = [16, 64, 256, 4096];

/// A segment of `data` on `line_size`-byte lines (in its own memory).
fn segment(data: &[u8], line_size: usize) -> Segment {
    memory_for(data.len(), line_size, 0)
        .segment(data)
        .expect("intern")
}

/// XOR of a segment's bytes, walking it chunk by chunk.
fn cursor_xor(seg: &Segment) -> u64 {
    let mut cur = seg.cursor();
    let mut acc = 0;
    loop {
        let c = cur.chunk();
        if c.is_empty() {
            break;
        }
        acc ^= xor_bytes(c);
        cur.advance(c.len());
    }
    acc
}

fn benches(c: &mut Criterion) {
    let data = random_bytes(SIZE, SEED);
    let mut g = Group::new(c, GROUP, Profile::Small);
    g.throughput_bytes(SIZE as u64);

    g.bench(
        "cursor_copy_to_slice",
        || {
            let seg = segment(&data, 64);
            let mut buf = vec![0u8; SIZE];
            assert_eq!(seg.cursor().copy_to_slice(&mut buf), SIZE);
            assert_eq!(buf, data);
            (seg, buf)
        },
        |(seg, buf), iters| {
            time_loop(iters, || {
                let n = seg.cursor().copy_to_slice(black_box(buf));
                black_box(buf.as_ptr());
                n
            })
        },
    );

    g.bench(
        "cursor_chunk_advance_xor",
        || {
            let seg = segment(&data, 64);
            assert_eq!(cursor_xor(&seg), xor_bytes(&data));
            seg
        },
        |seg, iters| time_loop(iters, || cursor_xor(black_box(seg))),
    );

    g.bench(
        "cursor_iter_xor",
        || segment(&data, 64),
        |seg, iters| {
            time_loop(iters, || {
                black_box(&*seg)
                    .cursor()
                    .fold(0u64, |acc, chunk| acc ^ xor_bytes(chunk))
            })
        },
    );

    // Allocates and zero-fills 1 MiB, then copies; the Vec is dropped inside
    // the timing (as is the baseline's).
    g.bench(
        "to_vec",
        || segment(&data, 64),
        |seg, iters| time_loop(iters, || black_box(&*seg).to_vec()),
    );

    // Baseline: memcpy into a preallocated buffer.
    g.bench(
        "memcpy",
        || vec![0u8; SIZE],
        |dst, iters| {
            time_loop(iters, || {
                dst.copy_from_slice(black_box(&data));
                black_box(dst.as_ptr());
            })
        },
    );

    // Baseline: the same xor over the contiguous bytes.
    g.bench(
        "vec_xor",
        || (),
        |_, iters| time_loop(iters, || xor_bytes(black_box(&data))),
    );

    // Baseline: the same xor over the contiguous bytes, 64 at a time (the
    // per-chunk work of the cursor loops without the cursor).
    g.bench(
        "vec_xor_64B_chunks",
        || (),
        |_, iters| {
            time_loop(iters, || {
                black_box(&data)
                    .chunks(64)
                    .fold(0u64, |acc, chunk| acc ^ xor_bytes(chunk))
            })
        },
    );

    // Baseline of `to_vec`: allocation + copy of a contiguous slice.
    g.bench(
        "vec_to_vec",
        || (),
        |_, iters| time_loop(iters, || black_box(&data).to_vec()),
    );
    g.finish();

    let mut g = Group::new(c, GROUP_LS, Profile::Small);
    g.throughput_bytes(SIZE as u64);
    for ls in LINE_SIZES {
        g.bench(
            &format!("cursor_copy_to_slice/{ls}"),
            || (segment(&data, ls), vec![0u8; SIZE]),
            |(seg, buf), iters| {
                time_loop(iters, || {
                    let n = seg.cursor().copy_to_slice(black_box(buf));
                    black_box(buf.as_ptr());
                    n
                })
            },
        );
    }
    g.finish();
}

fn summary() {
    print_header("read summary (sequential read of a 1 MiB segment)");
    let b = Some(SIZE as u64);
    let s = |label: &str, id: &str| subject(label, format!("{GROUP}/{id}"), b);
    let memcpy = s("memcpy 1MiB", "memcpy");
    let vec_xor = s("Vec xor", "vec_xor");
    let vec_xor_chunks = s("Vec xor in 64 B chunks", "vec_xor_64B_chunks");
    print_vs(
        &s("cursor copy_to_slice (64 B lines)", "cursor_copy_to_slice"),
        &memcpy,
        Some(Target::MinRatio(0.5)),
    );
    for (label, id) in [
        (
            "cursor chunk/advance xor (64 B lines)",
            "cursor_chunk_advance_xor",
        ),
        ("cursor Iterator xor (64 B lines)", "cursor_iter_xor"),
    ] {
        let x = s(label, id);
        print_vs(&x, &memcpy, Some(Target::MinRatio(0.5)));
        print_vs(&x, &vec_xor, None);
        print_vs(&x, &vec_xor_chunks, None);
    }
    let to_vec = s("Segment::to_vec (64 B lines)", "to_vec");
    print_vs(&to_vec, &s("Vec::to_vec", "vec_to_vec"), None);
    print_vs(&to_vec, &memcpy, None);
    for ls in LINE_SIZES {
        let x = subject(
            format!("cursor copy_to_slice ({ls} B lines)"),
            format!("{GROUP_LS}/cursor_copy_to_slice/{ls}"),
            b,
        );
        print_vs(&x, &memcpy, Some(Target::MinRatio(0.5)));
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
    summary();
}
