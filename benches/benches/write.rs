//! A one-line write (64 bytes, line-aligned and unaligned) into a snapshotted
//! 1 MiB segment, 64-byte lines: `SegmentMut::write_at` on `seg.to_mut()`
//! while `seg` stays alive, so copy-on-write really copies the leaf (two when
//! unaligned) and its path to the root. Also the segment map's `write_at`.
//!
//! Baselines from the same run: copying the whole 1 MiB and then writing 64
//! bytes (what a copy-based snapshot costs), and a plain 64-byte write into a
//! `Vec`.
//!
//! Target: a copy-on-write of one line < 2 us.
//!
//! Also a 255-byte HTTP reply header made a new segment (`Memory::segment`, as a stack-mode
//! `send` does; and through a builder's `append`), and its first 100 bytes as owned lines (as
//! the NIC deposits a received frame), against copying the header into a new `Vec`.
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use hicamp::SegmentMut;
use hicamp_benches::{
    memory_for, print_header, print_vs, random_bytes, splitmix64, subject, time_loop, Group,
    Profile, Target, MIB,
};

const SIZE: usize = MIB;
const LINE: usize = 64;
const SEED: u64 = 0x3717_0003;
const GROUP: &str = "write_1MiB";
/// Offset of an unaligned write within its line: it spans two leaves.
const UNALIGNED: u64 = 13;
/// At most this many `SegmentMut`s are alive at once (bounds the memory a
/// long batch uses).
const CHUNK: u64 = 1 << 15;
/// Lines the writes may hold at once: CHUNK writes of at most two leaves and
/// two paths (height 4 for 1 MiB on 64-byte lines).
const EXTRA_LINES: u64 = CHUNK * 12;

/// Pseudo-random line-aligned offsets spread over the segment.
fn offsets() -> Vec<u64> {
    let mut s = SEED;
    let lines = (SIZE / LINE) as u64;
    // The last line is left out so that an unaligned write stays inside.
    (0..4096)
        .map(|_| (splitmix64(&mut s) % (lines - 1)) * LINE as u64)
        .collect()
}

/// A 64-byte line whose first 8 bytes are `n`: each write brings content the
/// memory does not hold yet, so it is never a dedup hit.
#[inline]
fn line(base: &[u8; LINE], n: u64) -> [u8; LINE] {
    let mut l = *base;
    l[..8].copy_from_slice(&n.to_le_bytes());
    l
}

/// Times `iters` copy-on-write writes, each into its own `to_mut()` of `seg`
/// (made before the clock starts); the written versions are dropped after the
/// clock stops, at most `CHUNK` at a time.
fn cow_writes(
    seg: &hicamp::Segment,
    offs: &[u64],
    base: &[u8; LINE],
    counter: &mut u64,
    shift: u64,
    iters: u64,
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(CHUNK);
        left -= n;
        let mut muts: Vec<SegmentMut> = (0..n).map(|_| seg.to_mut()).collect();
        let t = Instant::now();
        for m in muts.iter_mut() {
            *counter += 1;
            let off = offs[(*counter % offs.len() as u64) as usize] + shift;
            m.write_at(off, &line(base, *counter)).expect("write");
        }
        total += t.elapsed();
        drop(black_box(muts));
    }
    total
}

fn benches(c: &mut Criterion) {
    let data = random_bytes(SIZE, SEED);
    let offs = offsets();
    let mut base = [0u8; LINE];
    base.copy_from_slice(&random_bytes(LINE, SEED ^ 1));
    let mut g = Group::new(c, GROUP, Profile::Small);

    for (id, shift) in [("cow_write_aligned", 0), ("cow_write_unaligned", UNALIGNED)] {
        g.bench(
            id,
            || {
                let mem = memory_for(SIZE, LINE, EXTRA_LINES);
                let seg = mem.segment(&data).expect("intern");
                // The copy-on-write leaves the snapshot untouched and copies
                // only the path: a handful of lines per write.
                let mut m = seg.to_mut();
                let before = mem.live_lines();
                m.write_at(offs[0] + shift, &line(&base, u64::MAX))
                    .expect("write");
                let added = mem.live_lines() - before;
                assert!((1..=12).contains(&added), "{added} lines for one write");
                drop(m);
                assert_eq!(seg.to_vec(), data, "the snapshot never changes");
                (seg, 0u64)
            },
            |(seg, counter), iters| cow_writes(seg, &offs, &base, counter, shift, iters),
        );
    }

    // The segment map's copy-on-write write: the entry is a snapshot of the
    // original (which another entry keeps alive). In the steady state each
    // write also releases the path of the previous version, inside the timing.
    g.bench(
        "map_write_at",
        || {
            let mem = memory_for(SIZE, LINE, EXTRA_LINES);
            let orig = mem.map().create(&data).expect("create");
            let id = mem.map().snapshot(orig).expect("snapshot");
            (mem, id, 0u64)
        },
        |(mem, id, counter), iters| {
            let map = mem.map();
            time_loop(iters, || {
                *counter += 1;
                let off = offs[(*counter % offs.len() as u64) as usize];
                map.write_at(*id, off, &line(&base, *counter))
                    .expect("write")
            })
        },
    );

    // Baseline: what a copy-based snapshot costs: copy 1 MiB (into a buffer
    // allocated beforehand, which favours the baseline), then write 64 bytes.
    g.bench(
        "copy_then_write",
        || (vec![0u8; SIZE], 0u64),
        |(dst, counter), iters| {
            time_loop(iters, || {
                *counter += 1;
                let off = offs[(*counter % offs.len() as u64) as usize] as usize;
                dst.copy_from_slice(black_box(&data));
                dst[off..off + LINE].copy_from_slice(&line(&base, *counter));
                black_box(dst.as_ptr());
            })
        },
    );

    // Baseline: a plain 64-byte write into a Vec.
    g.bench(
        "vec_write",
        || (data.clone(), 0u64),
        |(v, counter), iters| {
            time_loop(iters, || {
                *counter += 1;
                let off = offs[(*counter % offs.len() as u64) as usize] as usize;
                v[off..off + LINE].copy_from_slice(&line(&base, *counter));
                black_box(v.as_ptr());
            })
        },
    );
    g.finish();
    small_writes(c);
}

/// The group of a small write into a new segment.
const SMALL_GROUP: &str = "small_write";

/// A 255-byte HTTP reply header, made a segment and dropped, as a stack-mode `send` of it
/// does (its lines are held elsewhere too, so every line is a dedup hit); the baseline copies
/// it into a new `Vec`.
fn small_writes(c: &mut Criterion) {
    let hdr: Vec<u8> = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\n\
        Date: Tue, 01 Dec 2026 00:20:03 GMT\r\nContent-Type: application/octet-stream\r\n\
        Content-Length: 4096\r\nLast-Modified: Tue, 01 Dec 2026 00:00:03 GMT\r\n\
        Connection: keep-alive\r\nETag: \"6929e7a3-1000\"\r\nAccept-Ranges: bytes\r\n\r\n"
        .to_vec();
    // A memory that holds the header's lines already.
    let holding = || {
        let mem = memory_for(SIZE, LINE, EXTRA_LINES);
        let held = mem.segment(&hdr).expect("segment");
        (mem, held)
    };
    let mut g = Group::new(c, SMALL_GROUP, Profile::Small);
    g.bench("segment", holding, |(mem, _), iters| {
        time_loop(iters, || {
            drop(mem.segment(black_box(&hdr)).expect("segment"))
        })
    });
    g.bench("builder_append", holding, |(mem, _), iters| {
        time_loop(iters, || {
            let mut b = mem.builder();
            b.append(black_box(&hdr)).expect("append");
            drop(b.snapshot());
        })
    });
    // A received frame's build: owned lines (not interned), as the NIC deposits a frame.
    g.bench(
        "segment_owned",
        || memory_for(SIZE, LINE, EXTRA_LINES),
        |mem, iters| {
            time_loop(iters, || {
                drop(mem.segment_owned(black_box(&hdr[..100])).expect("owned"))
            })
        },
    );
    g.bench(
        "vec_copy",
        || (),
        |(), iters| time_loop(iters, || drop(black_box(black_box(&hdr).to_vec()))),
    );
    g.finish();
}

fn summary() {
    print_header("write summary (one 64-byte write into a snapshotted 1 MiB segment)");
    let s = |label: &str, id: &str| subject(label, format!("{GROUP}/{id}"), None);
    let copy = s("copy 1MiB + write", "copy_then_write");
    let vec = s("Vec write", "vec_write");
    for (label, id) in [
        ("cow write aligned", "cow_write_aligned"),
        ("cow write unaligned", "cow_write_unaligned"),
        ("map write_at aligned", "map_write_at"),
    ] {
        let x = s(label, id);
        print_vs(&x, &copy, Some(Target::MaxNs(2000.0)));
        print_vs(&x, &vec, None);
    }
    print_header("small write summary (a 255-byte HTTP header made a segment, lines held)");
    let s = |label: &str, id: &str| subject(label, format!("{SMALL_GROUP}/{id}"), None);
    let vec = s("Vec copy", "vec_copy");
    print_vs(&s("Memory::segment", "segment"), &vec, None);
    print_vs(&s("builder + append", "builder_append"), &vec, None);
    print_vs(
        &s(
            "Memory::segment_owned, 100 B (a frame's receive)",
            "segment_owned",
        ),
        &vec,
        None,
    );
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
    summary();
}
