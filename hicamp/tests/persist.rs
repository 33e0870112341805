//! Memory files: round trips, named segments, fsck, and bad files.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use hicamp::{fsck, Config, Durability, Error, Memory, OpenOptions};

fn cfg(durability: Durability) -> Config {
    Config {
        line_size: 64,
        capacity_lines: 1 << 14,
        map_capacity: 256,
        durability,
        pm_write_latency_ns: 0,
    }
}

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = testkit::Rng::new(seed);
    (0..len)
        .map(|i| {
            let x = rng.byte();
            // Some repeated and zero lines, like real data.
            if (i / 64) % 5 == 0 {
                0
            } else if (i / 64) % 7 == 0 {
                b'r'
            } else {
                x
            }
        })
        .collect()
}

fn tmp() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("mem.hicamp");
    (d, p)
}

#[test]
fn roundtrip_in_every_durability_mode() {
    for mode in [Durability::None, Durability::CacheLine, Durability::Msync] {
        let (_d, p) = tmp();
        let mut ids = Vec::new();
        {
            let m = Memory::create(&p, cfg(mode)).unwrap();
            assert!(m.recovery().is_none());
            for i in 0..20u64 {
                ids.push(m.map().create(&data(100 + 997 * i as usize, i)).unwrap());
            }
            m.map().write_at(ids[3], 10, b"persisted write").unwrap();
            let snap = m.map().snapshot(ids[4]).unwrap();
            ids.push(snap);
            m.map().delete(ids[5]).unwrap();
            // A handle that is never committed.
            let _volatile = m.segment(&data(5000, 99)).unwrap();
        }
        let r = fsck(&p).unwrap();
        assert!(r.is_consistent(), "{mode:?}: {:?}", r.problems);
        assert!(r.clean_close);
        let m = Memory::open(&p).unwrap();
        let rec = m.recovery().unwrap();
        assert!(rec.was_clean);
        assert_eq!(rec.refcounts_repaired, 0);
        assert_eq!(rec.orphans_reclaimed, 0, "a clean close leaves no orphan");
        for (i, &id) in ids.iter().enumerate() {
            if i == 5 {
                assert!(m.map().get(id).is_err());
                continue;
            }
            let mut want = data(100 + 997 * (i % 20), (i % 20) as u64);
            if i == 3 {
                want[10..25].copy_from_slice(b"persisted write");
            }
            if i == 20 {
                want = data(100 + 997 * 4, 4);
            }
            assert_eq!(
                m.map().get(id).unwrap().to_vec(),
                want,
                "{mode:?} entry {i}"
            );
        }
        // Dedup works across the restart: the index was rebuilt.
        let before = m.live_lines();
        let again = m.segment(&data(100 + 997 * 7, 7)).unwrap();
        assert_eq!(m.live_lines(), before);
        assert_eq!(again, m.map().get(ids[7]).unwrap());
    }
}

#[test]
fn named_segments_survive_restarts() {
    let (_d, p) = tmp();
    {
        let m = Memory::create(&p, cfg(Durability::Msync)).unwrap();
        m.bind("config", m.segment(b"v1").unwrap()).unwrap();
        m.bind("log", m.segment(&data(10_000, 1)).unwrap()).unwrap();
        m.bind("config", m.segment(b"v2").unwrap()).unwrap();
        assert!(matches!(m.bind("", m.empty()), Err(Error::BadName(_))));
    }
    {
        let m = Memory::open(&p).unwrap();
        let names: Vec<String> = m.names().unwrap().into_iter().map(|n| n.name).collect();
        assert_eq!(names, ["config", "log"]);
        assert_eq!(m.get_named("config").unwrap().unwrap().to_vec(), b"v2");
        assert_eq!(
            m.get_named("log").unwrap().unwrap().to_vec(),
            data(10_000, 1)
        );
        assert!(m.unbind("log").unwrap());
        assert!(!m.unbind("log").unwrap());
        assert_eq!(m.map().len(), 2, "directory + config");
    }
    let r = fsck(&p).unwrap();
    assert!(r.is_consistent(), "{:?}", r.problems);
    assert_eq!((r.named, r.digests_verified), (1, 1));
}

#[test]
fn a_second_opener_is_refused() {
    let (_d, p) = tmp();
    let _m = Memory::create(&p, cfg(Durability::None)).unwrap();
    assert!(matches!(Memory::open(&p), Err(Error::InUse { .. })));
    assert!(matches!(fsck(&p), Err(Error::InUse { .. })));
    assert!(matches!(
        Memory::create(&p, cfg(Durability::None)),
        Err(Error::Io { .. })
    ));
}

fn write_at(p: &Path, off: u64, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    f.write_all(bytes).unwrap();
}

/// Writes `bytes` at `off` of the header and of its copy.
fn write_header(p: &Path, off: u64, bytes: &[u8]) {
    write_at(p, off, bytes);
    write_at(p, 1024 + off, bytes);
}

fn valid_file() -> (tempfile::TempDir, PathBuf) {
    let (d, p) = tmp();
    let m = Memory::create(&p, cfg(Durability::None)).unwrap();
    for i in 0..8 {
        m.map().create(&data(3000, i)).unwrap();
    }
    m.bind("x", m.segment(b"named").unwrap()).unwrap();
    drop(m);
    (d, p)
}

#[test]
fn bad_files_get_typed_errors() {
    let (_d, dir) = tmp();
    let missing = dir.with_file_name("missing");
    assert!(matches!(Memory::open(&missing), Err(Error::Io { .. })));

    let (_d1, p) = valid_file();
    std::fs::write(&p, b"").unwrap();
    assert!(matches!(Memory::open(&p), Err(Error::Truncated { .. })));

    // The header has a copy at 1024 that restores it when only one is
    // damaged (tests/bitflip.rs): here both are.
    let (_d2, p) = valid_file();
    write_header(&p, 0, b"NOTHICAM");
    assert!(matches!(
        Memory::open(&p),
        Err(Error::NotAMemoryFile { .. })
    ));

    let (_d3, p) = valid_file();
    write_header(&p, 8, &99u32.to_le_bytes());
    assert!(matches!(
        Memory::open(&p),
        Err(Error::UnsupportedVersion { found: 99, .. })
    ));

    // A version-1 file (before reserved space): refused by name.
    let (_d3b, p) = valid_file();
    let mut head = std::fs::read(&p).unwrap()[..80].to_vec();
    head[8..12].copy_from_slice(&1u32.to_le_bytes());
    let sum = xxhash_rust::xxh3::xxh3_64(&head[..72]);
    head[72..80].copy_from_slice(&sum.to_le_bytes());
    write_at(&p, 0, &head);
    let e = Memory::open(&p).unwrap_err();
    assert!(matches!(e, Error::OldFormat { found: 1, .. }), "{e}");
    assert!(e.to_string().contains("re-create"), "{e}");

    let (_d4, p) = valid_file();
    write_header(&p, 16, &12345u64.to_le_bytes());
    assert!(matches!(Memory::open(&p), Err(Error::Corrupt { .. })));

    let (_d5, p) = valid_file();
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len - 4096)
        .unwrap();
    assert!(matches!(Memory::open(&p), Err(Error::Truncated { .. })));
}

/// Finds the map region: the header's map offset.
fn map_off(p: &Path) -> u64 {
    let b = std::fs::read(p).unwrap();
    u64::from_le_bytes(b[56..64].try_into().unwrap())
}

#[test]
fn corrupt_entries_and_lines_are_detected() {
    // Both slots of entry 2 destroyed: strict open refuses; open salvages
    // the rest and names the entry lost; fsck reports it.
    let (_d, p) = valid_file();
    let off = map_off(&p) + 2 * 64;
    write_at(&p, off, &[0xAB; 64]);
    assert!(!fsck(&p).unwrap().is_consistent());
    let e = Memory::open_with(
        &p,
        OpenOptions {
            strict: true,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("map entry 2"), "{e}");
    let m = Memory::open(&p).unwrap();
    let d = m.damage().unwrap().clone();
    assert!(d.is_corrupt());
    assert_eq!(d.lost.len(), 1, "{d:?}");
    assert_eq!(d.lost[0].0, hicamp::SegmentId(2));
    assert!(m.map().get(hicamp::SegmentId(2)).is_err());
    for i in [1u32, 3, 4, 5, 6, 7, 8] {
        assert_eq!(
            m.map().get(hicamp::SegmentId(i)).unwrap().to_vec(),
            data(3000, u64::from(i) - 1)
        );
    }
    assert_eq!(m.get_named("x").unwrap().unwrap().to_vec(), b"named");
    drop(m);
    // The salvaged file is consistent, and opens clean.
    let r = fsck(&p).unwrap();
    assert!(r.is_consistent(), "{:?}", r.problems);
    assert!(Memory::open(&p).unwrap().damage().unwrap().is_clean());

    // One slot torn (the way a crash tears a write, in a file that was not
    // closed cleanly): the other one is used, and that is not corruption.
    let (_d, p) = valid_file();
    let m = Memory::open(&p).unwrap();
    let before = m.map().get(hicamp::SegmentId(2)).unwrap().to_vec();
    m.map().write_at(hicamp::SegmentId(2), 0, b"newer").unwrap();
    drop(m);
    write_at(&p, 2048, &0u64.to_le_bytes()); // as a crash leaves it
    let b = std::fs::read(&p).unwrap();
    let e2 = (map_off(&p) + 2 * 64) as usize;
    // Tear the newer slot (the one with the larger version).
    let v =
        |s: usize| u64::from_le_bytes(b[e2 + s * 32 + 16..e2 + s * 32 + 24].try_into().unwrap());
    let newer = if v(0) > v(1) { 0 } else { 1 };
    write_at(&p, (e2 + newer * 32 + 8) as u64, &[0xFF; 8]);
    let m = Memory::open(&p).unwrap();
    assert_eq!(m.map().get(hicamp::SegmentId(2)).unwrap().to_vec(), before);
    let d = m.damage().unwrap();
    assert!(!d.is_corrupt(), "{d:?}");
    assert_eq!(d.torn_writes.len(), 1);
    drop(m);
    assert!(fsck(&p).unwrap().is_consistent());

    // The same damage in a cleanly closed file is corruption.
    let (_d, p) = valid_file();
    let m = Memory::open(&p).unwrap();
    m.map().write_at(hicamp::SegmentId(2), 0, b"newer").unwrap();
    drop(m);
    write_at(&p, (e2 + newer * 32 + 8) as u64, &[0xFF; 8]);
    let r = fsck(&p).unwrap();
    assert!(!r.is_consistent());
    assert!(Memory::open_with(
        &p,
        OpenOptions {
            strict: true,
            ..Default::default()
        }
    )
    .is_err());
    let m = Memory::open(&p).unwrap();
    assert_eq!(m.damage().unwrap().slots_damaged.len(), 1);
}

#[test]
fn fsck_reports_orphans_and_bad_counts() {
    let (_d, p) = valid_file();
    // An orphan: a slot with a count that nothing reaches (as a crash leaves).
    let b = std::fs::read(&p).unwrap();
    let meta_off = u64::from_le_bytes(b[48..56].try_into().unwrap());
    write_at(&p, meta_off + 10_000, &[3]);
    let r = fsck(&p).unwrap();
    assert_eq!(r.orphans, 1);
    assert!(!r.is_consistent());
    // Open reclaims it; the file is then clean.
    let m = Memory::open(&p).unwrap();
    assert_eq!(m.recovery().unwrap().orphans_reclaimed, 1);
    drop(m);
    assert!(fsck(&p).unwrap().is_consistent());
    // A wrong count on a reachable line.
    let r0 = fsck(&p).unwrap();
    assert!(r0.leaf_lines > 0);
    write_at(&p, meta_off + 1, &[77]);
    let r = fsck(&p).unwrap();
    assert!(r.refcount_mismatches >= 1 || r.orphans >= 1, "{r:?}");
    assert!(!r.is_consistent());
}

#[test]
fn open_time_is_reported() {
    let (_d, p) = valid_file();
    let m = Memory::open(&p).unwrap();
    let r = m.recovery().unwrap();
    assert!(r.was_clean);
    assert_eq!(r.entries, 10, "directory, 8 segments, 1 named");
    assert!(r.live_lines > 0);
}

mod corruption {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        /// Random bytes of a valid file overwritten: open and fsck give a
        /// result or a typed error, never a panic; what opens can be read.
        #[test]
        fn random_corruption_never_panics(hits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..20), region in 0u8..4) {
            let (_d, p) = valid_file();
            let mut b = std::fs::read(&p).unwrap();
            let map = map_off(&p) as usize;
            let meta = u64::from_le_bytes(b[48..56].try_into().unwrap()) as usize;
            let (lo, hi) = match region {
                0 => (0, 4096),                       // header
                1 => (4096, 4096 + 64 * 1024),        // lines in use
                2 => (meta, meta + 4096),             // reference counts
                _ => (map, map + 64 * 16),            // map entries
            };
            for (i, v) in hits {
                b[lo + i.index(hi - lo)] = v;
            }
            std::fs::write(&p, &b).unwrap();
            let _ = fsck(&p);
            if let Ok(m) = Memory::open(&p) {
                for id in m.map().ids() {
                    let s = m.map().get(id).unwrap();
                    let v = s.to_vec();
                    prop_assert_eq!(v.len() as u64, s.len());
                    let _ = s.digest();
                }
                let _ = m.names();
                let _ = m.stats();
            }
        }
    }
}

/// Open (recovery) time of a memory file holding 1 GiB of line data. Run by
/// hand: `cargo test --release -p hicamp --test persist -- --ignored --nocapture`.
#[test]
#[ignore]
fn open_time_of_a_1gib_file() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("big.hicamp");
    let total = 1usize << 30;
    let t = std::time::Instant::now();
    {
        let m = Memory::create(
            &p,
            Config {
                line_size: 64,
                capacity_lines: (total / 64) as u64 + (total / 64 / 15) as u64 + 4096,
                map_capacity: 4096,
                durability: Durability::None,
                pm_write_latency_ns: 0,
            },
        )
        .unwrap();
        for i in 0..64u64 {
            m.map().create(&data_unique(total / 64, i)).unwrap();
        }
        m.sync().unwrap();
    }
    let build = t.elapsed();
    let t = std::time::Instant::now();
    let m = Memory::open(&p).unwrap();
    let open = t.elapsed();
    let r = m.recovery().unwrap();
    eprintln!(
        "1 GiB file: built in {:.2} s; open {:.3} s (recovery walk + index rebuild {:.3} s) for {} live lines, {} entries",
        build.as_secs_f64(),
        open.as_secs_f64(),
        r.micros as f64 / 1e6,
        r.live_lines,
        r.entries
    );
    assert!(r.live_lines >= (total / 64) as u64);
}

fn data_unique(len: usize, seed: u64) -> Vec<u8> {
    testkit::Rng::new(seed).bytes(len)
}

#[test]
fn an_empty_memory_file_reopens() {
    let (_d, p) = tmp();
    drop(Memory::create(&p, cfg(Durability::None)).unwrap());
    let m = Memory::open(&p).unwrap();
    let r = m.recovery().unwrap();
    assert_eq!((r.entries, r.live_lines, r.orphans_reclaimed), (1, 0, 0));
    drop(m);
    assert!(fsck(&p).unwrap().is_consistent());
}

/// The map's reserved space grows in chunks of 1024 entries, never past the
/// header's capacity: a capacity that is not a multiple of the chunk (here
/// the page-rounded map region holds more entries than the header allows)
/// fills and reopens.
#[test]
fn a_full_map_of_odd_capacity_reopens() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("odd.hicamp");
    let cap = 2048 + 22;
    {
        let m = Memory::create(
            &p,
            Config {
                line_size: 64,
                capacity_lines: 1 << 14,
                map_capacity: cap,
                ..Config::default()
            },
        )
        .unwrap();
        let map = m.map();
        let mut made = 0;
        while map.create(b"entry").is_ok() {
            made += 1;
            assert!(made <= cap, "more entries than the capacity");
        }
        assert!(made > 2048, "only {made} entries");
        m.sync().unwrap();
    }
    let m = Memory::open(&p).expect("reopen a full map of odd capacity");
    assert!(m.map().len() > 2048);
}

/// A named entry written through the map after it was bound is a change,
/// not damage: open (strict too) and fsck accept it, and count it; a named
/// entry whose bytes changed under an unchanged version is still a mismatch.
#[test]
fn a_named_entry_written_after_bind_is_not_damage() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("named.hicamp");
    {
        let m = Memory::create(
            &p,
            Config {
                capacity_lines: 1 << 14,
                map_capacity: 64,
                ..Config::default()
            },
        )
        .unwrap();
        let id = m.bind("log", m.segment(&[7u8; 3000]).unwrap()).unwrap();
        m.bind("fixed", m.segment(&[9u8; 500]).unwrap()).unwrap();
        m.map().write_at(id, 100, b"written after bind").unwrap();
        m.map().append(id, b"and appended").unwrap();
        m.sync().unwrap();
    }
    let m = Memory::open_with(
        &p,
        OpenOptions {
            strict: true,
            ..Default::default()
        },
    )
    .expect("strict open");
    let dmg = m.damage().cloned().unwrap_or_default();
    assert!(!dmg.is_corrupt(), "{dmg:?}");
    assert_eq!(dmg.changed_since_bind, 1, "{dmg:?}");
    assert_eq!(dmg.digests_verified, 1, "{dmg:?}");
    let seg = m.get_named("log").unwrap().unwrap();
    let mut b = [0u8; 18];
    seg.read_at(100, &mut b).unwrap();
    assert_eq!(&b, b"written after bind");
    drop((seg, m));
    let r = fsck(&p).unwrap();
    assert!(r.is_consistent(), "{:?}", r.problems);
}

#[test]
fn a_read_only_open_never_writes_the_file() {
    let (_d, p) = tmp();
    let bytes = data(20_000, 11);
    {
        let m = Memory::create(&p, cfg(Durability::Msync)).unwrap();
        m.bind("a", m.segment(&bytes).unwrap()).unwrap();
    }
    let before = std::fs::read(&p).unwrap();
    let ro = OpenOptions {
        read_only: true,
        ..Default::default()
    };
    {
        let m = Memory::open_with(&p, ro).unwrap();
        assert_eq!(m.get_named("a").unwrap().unwrap().to_vec(), bytes);
        // Two read-only opens at once (shared locks).
        let m2 = Memory::open_with(&p, ro).unwrap();
        assert_eq!(
            m2.get_named("a").unwrap().unwrap().len(),
            bytes.len() as u64
        );
        // Changes stay in this process.
        m.bind("b", m.segment(b"private").unwrap()).unwrap();
        m.unbind("a").unwrap();
        m.sync().unwrap();
    }
    assert!(
        std::fs::read(&p).unwrap() == before,
        "a read-only open changed the file"
    );
    // A writer excludes read-only opens, and the other way round.
    {
        let _w = Memory::open(&p).unwrap();
        assert!(matches!(
            Memory::open_with(&p, ro),
            Err(Error::InUse { .. })
        ));
    }
    let r = Memory::open_with(&p, ro).unwrap();
    assert!(matches!(Memory::open(&p), Err(Error::InUse { .. })));
    drop(r);
    let m = Memory::open(&p).unwrap();
    assert_eq!(m.get_named("a").unwrap().unwrap().to_vec(), bytes);
    assert!(m.get_named("b").unwrap().is_none());
}
