//! Reference counts across the escape: a count byte holds counts up to 62
//! exactly, and 63 means "63 + an extra" kept in the store's overflow table
//! (`src/store/counts.rs`). These tests take lines far past it and back:
//! one thread, many threads, and memory files (clean close, crash image,
//! and fsck of a damaged count byte).

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use hicamp::{fsck, Config, Durability, Error, LineId, Memory, Segment};

/// The escape value of the count byte (the file format's).
const ESC: u32 = 63;

fn config(map_capacity: u32) -> Config {
    Config {
        line_size: 64,
        capacity_lines: 1 << 14,
        map_capacity,
        durability: Durability::CacheLine,
        pm_write_latency_ns: 0,
    }
}

/// Line `k` of distinct non-zero lines.
fn line(k: u32) -> Vec<u8> {
    let mut l = vec![0u8; 64];
    l[..4].copy_from_slice(&(k + 1).to_le_bytes());
    l[8..16].copy_from_slice(
        &u64::from(k)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .to_le_bytes(),
    );
    l[63] = 0x5a;
    l
}

/// The common line every "pair" segment ends with.
fn common() -> Vec<u8> {
    line(1_000_000)
}

/// A two-line segment: a line of its own, then the common one (so that each
/// pair's root is a distinct interior line holding one reference to it).
fn pair(k: u32) -> Vec<u8> {
    let mut d = line(k);
    d.extend_from_slice(&common());
    d
}

/// The id of a line's content (a one-line segment's root is its leaf); the
/// handle is dropped, so the count is left as it was.
fn id_of(mem: &Memory, data: &[u8]) -> LineId {
    mem.segment(data).unwrap().root()
}

/// A line referenced 1000 times and more (handle copies, lookups, distinct
/// parents) keeps an exact count at every step down, and is freed at 0.
#[test]
fn a_line_referenced_1000_times_is_freed_at_zero() {
    let mem = Memory::new(config(4)).unwrap();
    let c = common();
    let first = mem.segment(&c).unwrap();
    let id = first.root();
    assert_eq!(mem.refcount(id), 1);
    // Increments of a held line (no lock), across the escape.
    let copies: Vec<Segment> = (0..1000).map(|_| first.clone()).collect();
    assert_eq!(mem.refcount(id), 1001);
    // Lookups that hit it (the index paths).
    let found: Vec<Segment> = (0..500).map(|_| mem.segment(&c).unwrap()).collect();
    assert!(found.iter().all(|s| s.root() == id));
    assert_eq!(mem.refcount(id), 1501);
    // Distinct parents, each holding one reference.
    let pairs: Vec<Segment> = (0..300).map(|k| mem.segment(&pair(k)).unwrap()).collect();
    assert_eq!(mem.refcount(id), 1801);
    assert_eq!(mem.stats().leaf_lines, 301);
    // Down again, checking on the way (through the escape at 63).
    let mut copies = copies;
    while let Some(s) = copies.pop() {
        drop(s);
        if copies.len().is_multiple_of(97) {
            assert_eq!(mem.refcount(id) as usize, 801 + copies.len());
        }
    }
    mem.release_segments(found);
    assert_eq!(mem.refcount(id), 301);
    let mut pairs = pairs;
    for left in (0..300u32).rev() {
        pairs.pop();
        assert_eq!(mem.refcount(id), 1 + left, "after dropping to {left} pairs");
    }
    assert_eq!(mem.refcount(id), 1);
    drop(first);
    assert_eq!(mem.live_lines(), 0, "the line was not freed");
    assert_eq!(mem.refcount(id), 0);
    // And again from scratch: the slot and the count are reusable.
    let again = mem.segment(&c).unwrap();
    let more: Vec<Segment> = (0..200).map(|_| again.clone()).collect();
    assert_eq!(mem.refcount(again.root()), 201);
    drop((again, more));
    assert_eq!(mem.live_lines(), 0);
}

/// Threads take and drop references to one hot line (copies without the
/// lock, lookups with and without it), each holding up to 100 at once, so
/// that the count crosses the escape both ways over and over: the final
/// count is exact and the line is freed with its last reference.
#[test]
fn threads_crossing_the_escape_leave_an_exact_count() {
    let mem = Memory::new(config(4)).unwrap();
    let c = common();
    let hot = mem.segment(&c).unwrap();
    let id = hot.root();
    std::thread::scope(|s| {
        for t in 0..4u32 {
            let (mem, hot, c) = (&mem, &hot, &c);
            s.spawn(move || {
                let mut held = Vec::new();
                for i in 0..3000u32 {
                    match (i + t) % 4 {
                        0 | 1 => held.push(hot.clone()),
                        2 => held.push(mem.segment(c).unwrap()),
                        _ => held.push(mem.segment(&pair(t * 10_000 + i % 50)).unwrap()),
                    }
                    if held.len() >= 100 {
                        let keep = (i as usize * 7) % 40;
                        held.truncate(keep);
                    }
                }
                drop(held);
            });
        }
    });
    assert_eq!(mem.refcount(id), 1);
    assert_eq!(mem.live_lines(), 1);
    drop(hot);
    assert_eq!(mem.live_lines(), 0);
}

/// `hold_snapshots(k)` leaves the counts `k` clones held forever would, from
/// every side of the escape (a byte that stays below it, one that reaches it
/// exactly, one that crosses it, one already past it), and the logical bytes
/// count each; the counts come back down exactly as the real handles go.
#[test]
fn held_snapshots_count_as_clones_across_the_escape() {
    for start in [1u32, 30, 62, 63, 64, 70] {
        for k in [1u64, 2, 33, 62, 63, 64, 500] {
            let mem = Memory::new(config(4)).unwrap();
            let c = common();
            let seg = mem.segment(&c).unwrap();
            let id = seg.root();
            let clones: Vec<Segment> = (1..start).map(|_| seg.clone()).collect();
            seg.hold_snapshots(k);
            let want = u64::from(start) + k;
            assert_eq!(u64::from(mem.refcount(id)), want, "start {start}, k {k}");
            assert_eq!(mem.stats().logical_bytes, want * 64, "start {start}, k {k}");
            drop(clones);
            assert_eq!(u64::from(mem.refcount(id)), 1 + k, "start {start}, k {k}");
            seg.hold_forever();
            assert_eq!(u64::from(mem.refcount(id)), 1 + k, "start {start}, k {k}");
            assert_eq!(mem.stats().logical_bytes, (1 + k) * 64);
            assert_eq!(mem.live_lines(), 1);
        }
    }
}

/// Threads hold snapshots in bulk while others take and drop references to
/// the same line across the escape: the final count is the bulk total.
#[test]
fn held_snapshots_racing_clones_leave_an_exact_count() {
    let mem = Memory::new(config(4)).unwrap();
    let c = common();
    let hot = mem.segment(&c).unwrap();
    let id = hot.root();
    let ks = [1u64, 7, 40, 63, 100];
    std::thread::scope(|s| {
        for t in 0..4usize {
            let hot = &hot;
            s.spawn(move || {
                let mut held = Vec::new();
                for i in 0..2000usize {
                    if t % 2 == 0 {
                        hot.hold_snapshots(ks[(i + t) % ks.len()]);
                    } else {
                        held.push(hot.clone());
                        if held.len() >= 90 {
                            held.truncate(i % 30);
                        }
                    }
                }
            });
        }
    });
    let per_thread: u64 = (0..2000usize).map(|i| ks[i % ks.len()]).sum();
    assert_eq!(u64::from(mem.refcount(id)), 1 + 2 * per_thread);
}

/// Segments held forever do not keep their memory alive: a memory file
/// whose handles were all held forever is closed when its last `Memory`
/// goes, and opens again (a handle kept by `std::mem::forget` would keep it
/// open: `InUse`).
#[test]
fn held_segments_let_their_memory_go() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("held.hicamp");
    let mem = Memory::create(&p, config(4)).unwrap();
    let seg = mem.segment(&pair(1)).unwrap();
    seg.hold_snapshots(100);
    seg.hold_forever();
    mem.segment(&pair(2)).unwrap().hold_forever();
    drop(mem);
    let again = Memory::open(&p).unwrap();
    // Nothing was bound, so the recount frees every held line.
    assert_eq!(again.live_lines(), 0);
}

/// `n` pair segments bound by name (`p0`, `p1`, ...), and the id of the
/// common line (count `n` once the handles are gone).
fn bind_pairs(mem: &Memory, n: u32) -> LineId {
    for k in 0..n {
        mem.bind(&format!("p{k}"), mem.segment(&pair(k)).unwrap())
            .unwrap();
    }
    id_of(mem, &common())
}

fn write_at(p: &Path, off: u64, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    f.write_all(bytes).unwrap();
}

fn meta_off(p: &Path) -> u64 {
    let b = std::fs::read(p).unwrap();
    u64::from_le_bytes(b[48..56].try_into().unwrap())
}

/// A file whose counts are above the escape: a clean close and reopen, and
/// a crash image (the file copied while open), both give the exact counts
/// (recounted from the roots), and the counts go down to freeing from there.
#[test]
fn a_file_keeps_counts_above_the_escape() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("esc.hicamp");
    let crash = d.path().join("crash.hicamp");
    let id;
    {
        let m = Memory::create(&p, config(512)).unwrap();
        id = bind_pairs(&m, 200);
        assert_eq!(m.refcount(id), 200);
        // A crash image: the file as a killed process would leave it.
        std::fs::copy(&p, &crash).unwrap();
    }
    let r = fsck(&p).unwrap();
    assert!(r.is_consistent(), "{:?}", r.problems);
    let r = fsck(&crash).unwrap();
    assert!(!r.clean_close);
    for (path, clean) in [(&p, true), (&crash, false)] {
        {
            let m = Memory::open(path).unwrap();
            assert_eq!(m.recovery().unwrap().was_clean, clean);
            assert_eq!(m.refcount(id), 200, "clean {clean}");
            for k in 0..150 {
                assert!(m.unbind(&format!("p{k}")).unwrap());
            }
            assert_eq!(m.refcount(id), 50, "clean {clean}");
        }
        let r = fsck(path).unwrap();
        assert!(r.is_consistent(), "clean {clean}: {:?}", r.problems);
        let m = Memory::open(path).unwrap();
        assert_eq!(m.refcount(id), 50, "clean {clean}");
        let live = m.live_lines();
        for k in 150..200 {
            assert!(m.unbind(&format!("p{k}")).unwrap());
        }
        assert_eq!(m.refcount(id), 0, "clean {clean}: the common line lives on");
        assert!(m.live_lines() < live - 50);
    }
}

/// A count byte on the wrong side of the escape: below it on a line with
/// more references (its extra then names a line below the escape), or at
/// it on a line with fewer, is a mismatch; a reopen repairs both.
#[test]
fn fsck_catches_a_wrong_count_byte_at_the_escape() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("bad.hicamp");
    let (id, single) = {
        let m = Memory::create(&p, config(512)).unwrap();
        let id = bind_pairs(&m, 100);
        // The first pair's own line: one reference.
        let single = id_of(&m, &line(0));
        assert_eq!((m.refcount(id), m.refcount(single)), (100, 1));
        (id, single)
    };
    assert!(fsck(&p).unwrap().is_consistent());
    let off = meta_off(&p);
    let byte = |id: LineId| off + u64::from(id.get());
    // The common line's byte: 63 (100 references).
    let b = std::fs::read(&p).unwrap();
    assert_eq!(u32::from(b[byte(id) as usize] & 0x3f), ESC);
    // Below the escape with 100 references.
    write_at(&p, byte(id), &[62]);
    let r = fsck(&p).unwrap();
    assert_eq!(r.refcount_mismatches, 1, "{:?}", r.problems);
    assert!(r
        .problems
        .iter()
        .any(|s| s.contains("stored count 62 + extra 37, 100")));
    write_at(&p, byte(id), &[ESC as u8]);
    assert!(fsck(&p).unwrap().is_consistent());
    // At the escape with one reference.
    write_at(&p, byte(single), &[ESC as u8]);
    let r = fsck(&p).unwrap();
    assert_eq!(r.refcount_mismatches, 1, "{:?}", r.problems);
    assert!(r.problems.iter().any(|s| s.contains("stored count 63, 1 ")));
    {
        let m = Memory::open(&p).unwrap();
        assert_eq!(m.recovery().unwrap().refcounts_repaired, 1);
        assert_eq!((m.refcount(id), m.refcount(single)), (100, 1));
    }
    assert!(fsck(&p).unwrap().is_consistent());
}

/// The extras section of a cleanly closed file: fsck checks byte + extra
/// exactly, and catches a wrong extra (with a valid checksum), a damaged
/// section, and an extra for a line below the escape.
#[test]
fn fsck_catches_a_wrong_extra() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("extra.hicamp");
    let id = {
        let m = Memory::create(&p, config(512)).unwrap();
        let id = bind_pairs(&m, 100);
        assert_eq!(m.refcount(id), 100);
        id
    };
    assert!(fsck(&p).unwrap().is_consistent());
    let b = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(b[2072..2080].try_into().unwrap());
    assert_eq!(n, 1, "one line above the escape");
    // The section follows the map (512 entries of 64 bytes).
    let map_off = u64::from_le_bytes(b[56..64].try_into().unwrap());
    let extra_off = map_off + 512 * 64;
    let at = extra_off as usize;
    assert_eq!(b[at..at + 4], id.get().to_le_bytes());
    assert_eq!(
        u32::from_le_bytes(b[at + 4..at + 8].try_into().unwrap()),
        100 - ESC
    );
    let write_pairs = |pairs: &[(u32, u32)]| {
        let bytes: Vec<u8> = pairs
            .iter()
            .flat_map(|(i, e)| i.to_le_bytes().into_iter().chain(e.to_le_bytes()))
            .collect();
        write_at(&p, extra_off, &bytes);
        let n = pairs.len() as u64;
        let sum = xxhash_rust::xxh3::xxh3_64_with_seed(&bytes, 0xe5c0_0000 + n);
        let mut w = n.to_le_bytes().to_vec();
        w.extend_from_slice(&sum.to_le_bytes());
        write_at(&p, 2072, &w);
    };
    // A wrong extra.
    write_pairs(&[(id.get(), 100 - ESC + 1)]);
    let r = fsck(&p).unwrap();
    assert_eq!(r.refcount_mismatches, 1, "{:?}", r.problems);
    assert!(
        r.problems
            .iter()
            .any(|s| s.contains("stored count 63 + extra 38, 100 references")),
        "{:?}",
        r.problems
    );
    // No extra at all.
    write_pairs(&[]);
    let r = fsck(&p).unwrap();
    assert_eq!(r.refcount_mismatches, 1, "{:?}", r.problems);
    // An extra for a line below the escape (the first pair's own line).
    let single = {
        // Read the id without changing the file: a read-only open.
        let m = Memory::open_with(
            &p,
            hicamp::OpenOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap();
        id_of(&m, &line(0))
    };
    write_pairs(&[
        (single.get().min(id.get()), 5),
        (single.get().max(id.get()), 37),
    ]);
    let r = fsck(&p).unwrap();
    assert_eq!(r.refcount_mismatches, 1, "{:?}", r.problems);
    // A damaged section.
    write_pairs(&[(id.get(), 37)]);
    assert!(fsck(&p).unwrap().is_consistent());
    write_at(&p, extra_off + 4, &[99]);
    let r = fsck(&p).unwrap();
    assert!(
        r.problems.iter().any(|s| s.contains("checksum")),
        "{:?}",
        r.problems
    );
    // An open recounts (the section is never read) and a close rewrites it.
    {
        let m = Memory::open(&p).unwrap();
        assert_eq!(m.refcount(id), 100);
    }
    assert!(fsck(&p).unwrap().is_consistent());
}

/// A file of format version 2 (4-byte counts) is refused by name, never
/// read with the wrong count width.
#[test]
fn a_version_2_file_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("v2.hicamp");
    drop(Memory::create(&p, config(16)).unwrap());
    let b = std::fs::read(&p).unwrap();
    for off in [0u64, 1024] {
        let mut head = b[off as usize..off as usize + 80].to_vec();
        head[8..12].copy_from_slice(&2u32.to_le_bytes());
        let sum = xxhash_rust::xxh3::xxh3_64(&head[..72]);
        head[72..80].copy_from_slice(&sum.to_le_bytes());
        write_at(&p, off, &head);
    }
    let e = Memory::open(&p).unwrap_err();
    assert!(matches!(e, Error::OldFormat { found: 2, .. }), "{e}");
    assert!(fsck(&p).is_err());
}
