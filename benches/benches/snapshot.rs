//! Snapshot of a 1 MiB segment, 64-byte lines: `Segment::clone` (one
//! reference-count increment) and the segment map's `snapshot` + `delete`.
//!
//! Baseline from the same run: memcpy of 1 MiB into a preallocated `Vec`
//! (what a copy-based snapshot costs at the very least).
//!
//! Target: a snapshot >= 1000x faster than the copy.
#![forbid(unsafe_code)]

use std::hint::black_box;

use criterion::Criterion;
use hicamp_benches::{
    memory_for, print_header, print_vs, random_bytes, subject, time_loop, time_loop_keep, Group,
    Profile, Target, MIB,
};

const SIZE: usize = MIB;
const LINE: usize = 64;
const SEED: u64 = 0x5a9_0002;
const GROUP: &str = "snapshot_1MiB";

fn benches(c: &mut Criterion) {
    let data = random_bytes(SIZE, SEED);
    let mut g = Group::new(c, GROUP, Profile::Small);

    // The clones are kept and dropped after the timing (criterion's
    // `iter_with_large_drop`): this is the snapshot alone.
    g.bench(
        "segment_clone",
        || {
            let mem = memory_for(SIZE, LINE, 0);
            mem.segment(&data).expect("intern")
        },
        |seg, iters| time_loop_keep(iters, || seg.clone()),
    );

    // Snapshot and release: clone + drop, both timed.
    g.bench(
        "segment_clone_drop",
        || {
            let mem = memory_for(SIZE, LINE, 0);
            mem.segment(&data).expect("intern")
        },
        |seg, iters| time_loop(iters, || drop(black_box(seg.clone()))),
    );

    // The segment map: a new entry sharing the DAG, then its deletion (both
    // timed: keeping millions of entries alive would only measure the map's
    // capacity).
    g.bench(
        "map_snapshot_delete",
        || {
            let mem = memory_for(SIZE, LINE, 0);
            let id = mem.map().create(&data).expect("create");
            (mem, id)
        },
        |(mem, id), iters| {
            let map = mem.map();
            time_loop(iters, || {
                let snap = map.snapshot(black_box(*id)).expect("snapshot");
                map.delete(snap).expect("delete");
            })
        },
    );

    // Baseline: copying the bytes into a preallocated buffer.
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
    g.finish();
}

fn summary() {
    print_header("snapshot summary (1 MiB segment, 64-byte lines)");
    let s = |label: &str, id: &str| subject(label, format!("{GROUP}/{id}"), None);
    let memcpy = subject("memcpy 1MiB", format!("{GROUP}/memcpy"), Some(SIZE as u64));
    print_vs(
        &s("Segment::clone", "segment_clone"),
        &memcpy,
        Some(Target::MinRatio(1000.0)),
    );
    print_vs(
        &s("Segment::clone + drop", "segment_clone_drop"),
        &memcpy,
        Some(Target::MinRatio(1000.0)),
    );
    print_vs(
        &s("map snapshot + delete", "map_snapshot_delete"),
        &memcpy,
        Some(Target::MinRatio(1000.0)),
    );
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
    summary();
}
