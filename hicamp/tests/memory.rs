//! Unit-level behaviour of the memory through its public API.

use hicamp::{Config, Error, LineId, LineKind, Memory};

fn mem(line_size: usize) -> Memory {
    Memory::new(Config {
        line_size,
        capacity_lines: 1 << 16,
        map_capacity: 1024,
        ..Config::default()
    })
    .unwrap()
}

/// Pseudo-random bytes (splitmix64): no two 16-byte lines repeat in practice.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    testkit::Rng::new(u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x1234_5678).bytes(len)
}

#[test]
fn bad_configs_are_refused() {
    for ls in [0, 8, 48, 8192] {
        let e = Memory::new(Config::with_line_size(ls)).unwrap_err();
        assert!(matches!(e, Error::BadConfig(_)), "{ls}: {e}");
    }
    let c = Config {
        capacity_lines: 0,
        ..Config::default()
    };
    assert!(matches!(Memory::new(c), Err(Error::BadConfig(_))));
}

#[test]
fn roundtrip_every_line_size() {
    for ls in [16, 32, 64, 128, 256, 512, 1024, 2048, 4096] {
        let m = mem(ls);
        for len in [0, 1, ls - 1, ls, ls + 1, 5 * ls + 3, 100_000] {
            let data = pattern(len, 3);
            let s = m.segment(&data).unwrap();
            assert_eq!(s.len(), len as u64);
            assert_eq!(s.to_vec(), data, "line size {ls}, len {len}");
            drop(s);
            assert_eq!(m.live_lines(), 0, "leak at line size {ls}, len {len}");
        }
    }
}

#[test]
fn duplicate_content_shares_lines() {
    let m = mem(64);
    let line = [9u8; 64];
    let data: Vec<u8> = line.iter().copied().cycle().take(64 * 100).collect();
    let s = m.segment(&data).unwrap();
    let st = m.stats();
    assert_eq!(st.leaf_lines, 1, "100 equal lines are one line");
    assert_eq!(st.leaf_dedup_hits, 99);
    assert_eq!(s.to_vec(), data);
    let t = m.segment(&data).unwrap();
    assert_eq!(s, t);
    assert_eq!(s.root(), t.root());
}

#[test]
fn zero_lines_cost_nothing() {
    let m = mem(64);
    let s = m.segment(&vec![0u8; 1 << 20]).unwrap();
    assert_eq!(s.root(), LineId::ZERO);
    assert_eq!(m.live_lines(), 0);
    assert_eq!(s.to_vec(), vec![0u8; 1 << 20]);
    let z = m.zeroed(1 << 20).unwrap();
    assert_eq!(s, z);
    let mut sparse = vec![0u8; 1 << 20];
    sparse[500_000] = 1;
    let s2 = m.segment(&sparse).unwrap();
    // one leaf plus one interior line per level
    assert_eq!(m.stats().leaf_lines, 1);
    assert_eq!(m.stats().interior_lines, u64::from(s2.height()));
}

#[test]
fn leaf_and_interior_never_alias() {
    let m = mem(16);
    // Leaf content that reads like an interior line over children 1..=4.
    let a = m.segment(&[1u8; 64]).unwrap();
    let root = a.root();
    assert_eq!(m.line_kind(root), LineKind::Interior);
    let mut fake = Vec::new();
    for _ in 0..4 {
        let leaf = m.segment(&[1u8; 16]).unwrap().root();
        fake.extend_from_slice(&leaf.get().to_le_bytes());
    }
    let b = m.segment(&fake).unwrap();
    assert_eq!(m.line_kind(b.root()), LineKind::Leaf);
    assert_ne!(b.root(), root);
    assert_eq!(a.to_vec(), vec![1u8; 64]);
    assert_eq!(b.to_vec(), fake);
}

#[test]
fn snapshot_is_isolated_from_writes() {
    let m = mem(64);
    let data = pattern(10_000, 1);
    let s = m.segment(&data).unwrap();
    let snap = s.clone();
    assert_eq!(m.refcount(s.root()), 2);
    let mut w = s.into_mut();
    w.write_at(5000, b"xyz").unwrap();
    w.append(b"tail").unwrap();
    w.truncate(20).unwrap();
    assert_eq!(snap.to_vec(), data);
    assert_eq!(w.freeze().to_vec(), &data[..20]);
}

#[test]
fn write_copies_only_the_path() {
    let m = mem(64);
    let s = m.segment(&pattern(1 << 20, 5)).unwrap();
    let before = m.stats();
    let mut w = s.to_mut();
    w.write_at(12345, &[0xAA]).unwrap();
    let after = m.stats();
    let new_lines = after.live_lines() - before.live_lines();
    assert_eq!(
        new_lines,
        1 + u64::from(s.height()),
        "one leaf and its ancestors"
    );
}

#[test]
fn equal_content_equal_root_whatever_history() {
    let m = mem(32);
    let target = pattern(3000, 7);
    let direct = m.segment(&target).unwrap();
    // Built by appends of odd sizes.
    let mut a = m.builder();
    for c in target.chunks(37) {
        a.append(c).unwrap();
    }
    // Built by writing back to front into a longer zero segment, then cut.
    let mut b = m.zeroed(5000).unwrap().into_mut();
    for (i, c) in target.chunks(101).enumerate().rev() {
        b.write_at((i * 101) as u64, c).unwrap();
    }
    b.truncate(3000).unwrap();
    let (a, b) = (a.freeze(), b.freeze());
    assert_eq!(a, direct);
    assert_eq!(b, direct);
    assert_eq!(a.digest(), *blake3::hash(&target).as_bytes());
}

#[test]
fn digest_is_independent_of_memory_and_line_size() {
    let data = pattern(70_000, 9);
    let d1 = mem(16).segment(&data).unwrap().digest();
    let d2 = mem(4096).segment(&data).unwrap().digest();
    assert_eq!(d1, d2);
}

#[test]
fn read_at_and_cursor() {
    let m = mem(64);
    let data = pattern(1000, 2);
    let s = m.segment(&data).unwrap();
    let mut buf = [0u8; 100];
    assert_eq!(s.read_at(950, &mut buf).unwrap(), 50);
    assert_eq!(&buf[..50], &data[950..]);
    assert_eq!(s.read_at(1000, &mut buf).unwrap(), 0);
    assert!(matches!(
        s.read_at(1001, &mut buf),
        Err(Error::BadOffset { .. })
    ));
    let chunks: Vec<&[u8]> = s.cursor_at(10).collect();
    assert_eq!(chunks[0].len(), 54);
    assert!(chunks.iter().all(|c| c.len() <= 64));
    assert_eq!(chunks.concat(), &data[10..]);
    let mut out = Vec::new();
    std::io::copy(&mut s.cursor(), &mut out).unwrap();
    assert_eq!(out, data);
}

#[test]
fn capacity_exhaustion_is_an_error_and_leaks_nothing() {
    let m = Memory::new(Config {
        line_size: 64,
        capacity_lines: 100,
        map_capacity: 16,
        ..Config::default()
    })
    .unwrap();
    let keep = m.segment(&pattern(64 * 50, 1)).unwrap();
    let live = m.live_lines();
    let e = m.segment(&pattern(64 * 200, 2)).unwrap_err();
    assert_eq!(e, Error::CapacityExhausted { capacity: 100 });
    assert_eq!(
        m.live_lines(),
        live,
        "a failed create releases what it built"
    );
    let mut w = keep.to_mut();
    assert!(w.append(&pattern(64 * 200, 3)).is_err());
    assert_eq!(m.live_lines(), live);
    assert_eq!(w.freeze().to_vec(), keep.to_vec());
    drop(keep);
    assert_eq!(m.live_lines(), 0);
    // Everything freed is reusable: the memory can be filled again.
    let again = m.segment(&pattern(64 * 90, 4)).unwrap();
    assert_eq!(again.to_vec(), pattern(64 * 90, 4));
}

#[test]
fn too_long_is_an_error() {
    let m = mem(64);
    let mut w = m.builder();
    assert!(matches!(
        w.write_at(u64::MAX - 2, b"abc"),
        Err(Error::TooLong { .. })
    ));
    assert!(matches!(m.zeroed(u64::MAX), Err(Error::TooLong { .. })));
    // A huge sparse segment is fine and costs no line.
    let z = m.zeroed(hicamp::MAX_SEGMENT_LEN).unwrap();
    let mut w = z.into_mut();
    w.write_at(hicamp::MAX_SEGMENT_LEN - 1, b"!").unwrap();
    let mut b = [0u8; 2];
    assert_eq!(w.read_at(hicamp::MAX_SEGMENT_LEN - 2, &mut b).unwrap(), 2);
    assert_eq!(b, [0, b'!']);
}

#[test]
fn segment_map_operations() {
    let m = mem(64);
    let map = m.map();
    let id = map.create(b"hello world").unwrap();
    let e = map.entry(id).unwrap();
    assert_eq!((e.len, e.version), (11, 0));
    let snap = map.snapshot(id).unwrap();
    assert_eq!(
        m.refcount(e.root),
        2,
        "a snapshot is one reference increment"
    );
    assert_eq!(map.write_at(id, 6, b"HICAMP").unwrap(), 1);
    assert_eq!(map.get(id).unwrap().to_vec(), b"hello HICAMP");
    assert_eq!(map.get(snap).unwrap().to_vec(), b"hello world");
    map.append(id, b"!").unwrap();
    map.truncate(id, 5).unwrap();
    assert!(map.truncate(id, 50).is_err());
    map.resize(id, 8).unwrap();
    assert_eq!(map.get(id).unwrap().to_vec(), b"hello\0\0\0");
    let (seg, v) = map.get_versioned(id).unwrap();
    assert_eq!(v, 4);
    let mut w = seg.to_mut();
    assert_eq!(w.root(), seg.root());
    w.write_at(0, b"J").unwrap();
    // Another writer moves the version first.
    map.append(id, b"x").unwrap();
    let e = map.commit(id, v, w.snapshot()).unwrap_err();
    assert_eq!(
        e,
        Error::Conflict {
            id,
            expected: v,
            actual: v + 1
        }
    );
    assert_eq!(map.commit(id, v + 1, w.freeze()).unwrap(), v + 2);
    assert_eq!(map.get(id).unwrap().to_vec(), b"Jello\0\0\0");
    map.delete(id).unwrap();
    assert!(matches!(map.get(id), Err(Error::NoSuchSegment(_))));
    assert!(matches!(map.delete(id), Err(Error::NoSuchSegment(_))));
    // A reused id never matches a stale version.
    let id2 = map.create(b"new").unwrap();
    assert_eq!(id2, id);
    assert!(map.entry(id2).unwrap().version > v + 2);
    map.delete(id2).unwrap();
    map.delete(snap).unwrap();
    drop(seg);
    assert_eq!(m.live_lines(), 0);
    assert_eq!(m.stats().logical_bytes, 0);
    assert!(matches!(
        map.get(hicamp::SegmentId(99_999)),
        Err(Error::NoSuchSegment(_))
    ));
}

#[test]
fn map_full_and_ranges() {
    let m = Memory::new(Config {
        map_capacity: 8,
        ..Config::default()
    })
    .unwrap();
    // Entry 0 is the directory of names; 7 entries are left.
    assert_eq!(m.map().len(), 1);
    let r = m.map().reserve_range(5).unwrap();
    assert_eq!(r.start.get(), 1);
    assert_eq!(r.end.get() - r.start.get(), 5);
    assert_eq!(m.map().get(r.start).unwrap().len(), 0);
    assert!(matches!(
        m.map().reserve_range(3),
        Err(Error::MapFull { .. })
    ));
    m.map().create(b"a").unwrap();
    m.map().create(b"b").unwrap();
    assert!(matches!(m.map().create(b"c"), Err(Error::MapFull { .. })));
}

#[test]
fn foreign_segments_are_refused() {
    let (a, b) = (mem(64), mem(64));
    let s = b.segment(b"x").unwrap();
    assert_eq!(a.map().insert(s.clone()), Err(Error::ForeignSegment));
    assert!(s.content_eq(&a.segment(b"x").unwrap()));
}

#[test]
fn stats_account_logical_and_metadata() {
    let m = mem(64);
    let data = pattern(64 * 1000, 4);
    let s = m.segment(&data).unwrap();
    let t = s.clone();
    let st = m.stats();
    assert_eq!(st.logical_bytes, 2 * data.len() as u64);
    assert_eq!(st.leaf_lines, 1000);
    assert_eq!(
        st.metadata_bytes,
        st.refcount_bytes + st.index_bytes + st.map_bytes + st.free_list_bytes
    );
    assert!(
        st.index_bytes >= 4 * st.live_lines(),
        "index slots (4 bytes each) are counted"
    );
    assert!(
        st.refcount_bytes >= st.live_lines(),
        "refcounts (a byte each) are counted"
    );
    let r = st.dedup_ratio();
    let expect = st.logical_bytes as f64 / (st.physical_bytes + st.metadata_bytes) as f64;
    assert!((r - expect).abs() < 1e-12 && r > 0.5 && r < 2.0, "{r}");
    drop((s, t));
    assert_eq!(m.stats().logical_bytes, 0);
}

#[test]
fn concurrent_use_from_many_threads() {
    let m = mem(64);
    std::thread::scope(|sc| {
        for t in 0..4u8 {
            let m = m.clone();
            sc.spawn(move || {
                for i in 0..200usize {
                    let data = pattern(64 * (1 + i % 37), t % 2 + (i % 5) as u8);
                    let s = m.segment(&data).unwrap();
                    let snap = s.clone();
                    let mut w = s.into_mut();
                    w.write_at((i * 7) as u64, &[t; 9]).unwrap();
                    assert_eq!(snap.to_vec(), data);
                    drop(w.freeze());
                }
            });
        }
    });
    assert_eq!(m.live_lines(), 0);
}

#[test]
fn memory_and_handles_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Memory>();
    check::<hicamp::Segment>();
    check::<hicamp::SegmentMut>();
}

/// Optimistic transactions: every thread reads a counter segment, increments
/// it in a private copy-on-write version and commits with compare-and-swap,
/// retrying on conflict. No increment may be lost.
#[test]
fn concurrent_commits_lose_no_update() {
    let m = mem(64);
    let id = m.map().create(&0u64.to_le_bytes().repeat(64)).unwrap();
    let threads = 4;
    let per = 300;
    let conflicts = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|sc| {
        for _ in 0..threads {
            sc.spawn(|| {
                for _ in 0..per {
                    loop {
                        let (seg, v) = m.map().get_versioned(id).unwrap();
                        let mut b = [0u8; 8];
                        seg.read_at(8 * 37, &mut b).unwrap();
                        let mut w = seg.to_mut();
                        w.write_at(8 * 37, &(u64::from_le_bytes(b) + 1).to_le_bytes())
                            .unwrap();
                        match m.map().commit(id, v, w.freeze()) {
                            Ok(_) => break,
                            Err(Error::Conflict { .. }) => {
                                conflicts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            });
        }
    });
    let mut b = [0u8; 8];
    m.map().read_at(id, 8 * 37, &mut b).unwrap();
    assert_eq!(u64::from_le_bytes(b), (threads * per) as u64);
    assert_eq!(m.map().entry(id).unwrap().version, (threads * per) as u64);
    m.map().delete(id).unwrap();
    assert_eq!(m.live_lines(), 0);
}

#[test]
fn counted_writes_report_new_dedup_and_zero_lines() {
    let m = mem(64);
    let mut a = m.builder();
    let mut data = vec![5u8; 64 * 3];
    data.extend_from_slice(&[0u8; 64]);
    data.extend_from_slice(&[6u8; 10]);
    let c = a.write_at_counted(0, &data).unwrap();
    assert_eq!(
        (c.new_lines, c.dedup_hits, c.zero_lines),
        (2, 2, 1),
        "5s: 1 new + 2 hits; 6s: new; zeros"
    );
    let mut b = m.builder();
    let c = b.write_at_counted(64, &data).unwrap();
    assert_eq!(c.new_lines, 0);
    assert_eq!(c.dedup_hits, 4);
    assert_eq!(c.lines(), 5);
}

#[test]
fn replace_publishes_whatever_the_version() {
    let m = mem(64);
    let id = m.map().create(b"one").unwrap();
    m.map().append(id, b"!").unwrap();
    let v = m.map().replace(id, m.segment(b"two").unwrap()).unwrap();
    assert_eq!(v, 2);
    assert_eq!(m.map().get(id).unwrap().to_vec(), b"two");
    let other = mem(64);
    assert_eq!(
        m.map().replace(id, other.segment(b"x").unwrap()),
        Err(Error::ForeignSegment)
    );
}

#[test]
fn a_mass_release_is_reused() {
    // 400000 leaves (and their interior lines) take 427000 of the 2^20
    // slots; five rounds of other data of that size fit only because the
    // freed slots are reused (the free bitmap). The high-water mark may
    // grow by what the 64 shards hold on their own short lists (256 each)
    // plus one run each, no more.
    let m = Memory::new(Config {
        line_size: 64,
        capacity_lines: 1 << 20,
        map_capacity: 16,
        ..Config::default()
    })
    .unwrap();
    let first = m.segment(&pattern(64 * 400_000, 5)).unwrap();
    drop(first);
    assert_eq!(m.live_lines(), 0);
    let high = m.stats().refcount_bytes / 4;
    for seed in 6..10 {
        let data = pattern(64 * 400_000, seed);
        let s = m.segment(&data).unwrap();
        assert_eq!(s.to_vec(), data);
        let now = m.stats().refcount_bytes / 4;
        assert!(now <= high + 64 * 512, "high-water {now} after {high}");
        drop(s);
        assert_eq!(m.live_lines(), 0);
    }
}

/// `Cursor::gather` lists the same bytes as reading them, from any offset,
/// for any length, over zero runs and segment ends, with chunks of at most
/// one line that never cross a line boundary.
#[test]
fn cursor_gather_matches_the_bytes() {
    for ls in [16usize, 64] {
        let m = mem(ls);
        let mut data: Vec<u8> = (0..5000u32).map(|i| (i * 7 + 3) as u8).collect();
        // A run of zero lines (a zero subtree) in the middle.
        data[1024..3072].fill(0);
        let s = m.segment(&data).unwrap();
        for off in [0usize, 1, 63, 64, 100, 1000, 4990] {
            for len in [0usize, 1, 64, 129, 1500, 4096, 10_000] {
                let mut c = s.cursor();
                c.advance(off);
                let mut out = Vec::new();
                let n = c.gather(len, &mut out);
                let want = &data[off..(off + len).min(data.len())];
                assert_eq!(n, want.len(), "ls {ls} off {off} len {len}");
                assert_eq!(out.concat(), want, "ls {ls} off {off} len {len}");
                assert_eq!(c.position() as usize, off + n);
                let mut at = off;
                for ch in &out {
                    assert!(!ch.is_empty() && ch.len() <= ls);
                    assert!(at / ls == (at + ch.len() - 1) / ls, "one line per chunk");
                    at += ch.len();
                }
            }
        }
    }
}
