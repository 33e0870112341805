//! A full file system is `Error::NoSpace`, never SIGBUS (issue 12, item 1):
//! memory files on an 8 MiB tmpfs and a 16 MiB loop-mounted ext4 are filled
//! until the file system refuses, in durability modes `None` and `Msync`;
//! the process goes on, and the file still opens and checks. Root only (the
//! test mounts its own file systems, under its own temporary directories, and
//! unmounts them however it ends).

mod mounts;

use std::path::Path;

use hicamp::{fsck, Config, Durability, Error, Memory};
use mounts::Mount;

fn cfg(durability: Durability) -> Config {
    Config {
        line_size: 64,
        // 64 MiB of arena and 4 MiB of map: far more than the file system.
        capacity_lines: 1 << 20,
        map_capacity: 1 << 16,
        durability,
        pm_write_latency_ns: 0,
    }
}

/// Fills a memory at `p` until the file system is full; returns the ids and
/// contents committed.
fn fill(p: &Path, mode: Durability) -> Vec<(hicamp::SegmentId, Vec<u8>)> {
    let m = Memory::create(p, cfg(mode)).expect("create on an empty file system");
    let mut rng = testkit::Rng::new(7);
    let mut kept = Vec::new();
    let mut err = None;
    for _ in 0..10_000 {
        let data = rng.bytes(32 << 10);
        match m.map().create(&data) {
            Ok(id) => kept.push((id, data)),
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let e = err.expect("the file system never filled up");
    assert!(matches!(e, Error::NoSpace { .. }), "{mode:?}: {e}");
    assert!(e.to_string().contains("no space left"), "{e}");
    assert!(
        kept.len() >= 20,
        "{mode:?}: only {} segments fit",
        kept.len()
    );
    // The memory still works: reads, deletes, and writes that reuse space.
    assert_eq!(m.map().get(kept[0].0).unwrap().to_vec(), kept[0].1);
    let (gone, _) = kept.pop().unwrap();
    m.map().delete(gone).unwrap();
    let small = m.map().create(b"fits in a freed line").unwrap();
    assert_eq!(
        m.map().get(small).unwrap().to_vec(),
        b"fits in a freed line"
    );
    m.map().delete(small).unwrap();
    // Named bindings fail cleanly too, or succeed.
    match m.bind(
        "late",
        m.segment(&rng.bytes(1 << 20)).unwrap_or_else(|_| m.empty()),
    ) {
        Ok(_) | Err(Error::NoSpace { .. }) => {}
        Err(e) => panic!("{mode:?}: bind on a full file system: {e}"),
    }
    kept
}

fn check_after(p: &Path, kept: &[(hicamp::SegmentId, Vec<u8>)]) {
    let r = fsck(p).expect("fsck of a file on a full file system");
    assert!(r.is_consistent(), "{:?}", r.problems);
    assert_eq!(r.unallocated_bytes, 0);
    let m = Memory::open(p).expect("open on a full file system");
    for (id, data) in kept {
        assert_eq!(&m.map().get(*id).unwrap().to_vec(), data);
    }
}

fn run(mount: &Mount) {
    for mode in [Durability::None, Durability::Msync] {
        let p = mount.path().join(format!("{mode:?}.hicamp"));
        let kept = fill(&p, mode);
        check_after(&p, &kept);
        std::fs::remove_file(&p).unwrap();
    }
}

#[test]
fn full_tmpfs_is_no_space_not_sigbus() {
    let _serial = mounts::serial();
    if testkit::require(mounts::root(), "root (mounts a tmpfs)") {
        return;
    }
    run(&Mount::tmpfs("8m").expect("mount tmpfs"));
}

#[test]
fn full_ext4_loop_mount_is_no_space_not_sigbus() {
    let _serial = mounts::serial();
    if testkit::require(mounts::root(), "root (mounts an ext4 image)")
        || testkit::require_program("mkfs.ext4", "-V")
    {
        return;
    }
    run(&Mount::ext4(16).expect("mount ext4"));
}

#[test]
fn create_on_a_full_file_system_is_no_space() {
    let _serial = mounts::serial();
    if testkit::require(mounts::root(), "root (mounts a tmpfs)") {
        return;
    }
    let mount = Mount::tmpfs("1m").expect("mount tmpfs");
    // Fill the file system with an ordinary file.
    let filler = mount.path().join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let _ = std::io::Write::write_all(&mut f, &vec![1u8; 2 << 20]);
    drop(f);
    let p = mount.path().join("m.hicamp");
    let e = Memory::create(&p, cfg(Durability::None)).unwrap_err();
    assert!(matches!(e, Error::NoSpace { .. }), "{e}");
    assert!(!p.exists(), "a failed create leaves no file");
    std::fs::remove_file(&filler).unwrap();
    // With room again, create works at the same path.
    drop(Memory::create(&p, cfg(Durability::None)).unwrap());
}

#[test]
fn a_sparse_copy_is_reported_and_reallocated() {
    let _serial = mounts::serial();
    if testkit::require(mounts::root(), "root (mounts a tmpfs)")
        || testkit::require_program("cp", "--version")
    {
        return;
    }
    let mount = Mount::tmpfs("16m").expect("mount tmpfs");
    let p = mount.path().join("m.hicamp");
    {
        let m = Memory::create(&p, cfg(Durability::None)).unwrap();
        // 4096 unique lines, then a named segment above them; the first
        // lines are freed, so their count pages are all zero.
        let a = m
            .map()
            .create(&testkit::Rng::new(1).bytes(4096 * 64))
            .unwrap();
        m.bind("x", m.segment(&[7u8; 100_000]).unwrap()).unwrap();
        m.map().delete(a).unwrap();
    }
    // A sparse copy: the zero pages inside the reserved ranges become holes.
    let q = mount.path().join("copy.hicamp");
    let st = std::process::Command::new("cp")
        .arg("--sparse=always")
        .arg(&p)
        .arg(&q)
        .status()
        .unwrap();
    assert!(st.success());
    let r = fsck(&q).unwrap();
    assert!(r.unallocated_bytes > 0, "{r:?}");
    assert!(!r.is_consistent());
    // Open allocates the holes again; the copy is then whole.
    let m = Memory::open(&q).unwrap();
    assert_eq!(
        m.get_named("x").unwrap().unwrap().to_vec(),
        vec![7u8; 100_000]
    );
    drop(m);
    let r = fsck(&q).unwrap();
    assert_eq!(r.unallocated_bytes, 0);
    assert!(r.is_consistent(), "{:?}", r.problems);
}
