//! Open and fsck cost memory in proportion to what a file holds, not to the
//! capacity its header claims (issue 12, item 6); a header whose regions do
//! not fit the file is refused at once.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use hicamp::{fsck, Config, Durability, Error, Memory};

/// The tests here run one at a time: each spawns children, and a child between its fork and
/// its exec holds a copy of every descriptor of this process, the other test's locked memory
/// file included (its open or fsck then saw `InUse`, about 1 run in 10 under load).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn huge() -> Config {
    Config {
        line_size: 16,
        capacity_lines: u64::from(u32::MAX) - 1,
        map_capacity: u32::MAX - 1,
        durability: Durability::None,
        pm_write_latency_ns: 0,
    }
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The child: opens (or fscks) `HICAMP_CAP_FILE` and prints the growth of
/// its peak RSS in KiB. A no-op when run as an ordinary test.
#[test]
fn capacity_child() {
    let Ok(file) = std::env::var("HICAMP_CAP_FILE") else {
        return;
    };
    let before = vm_hwm_kib();
    if std::env::var("HICAMP_CAP_FSCK").is_ok() {
        let r = fsck(&file).unwrap();
        assert!(r.is_consistent(), "{:?}", r.problems);
    } else {
        let m = Memory::open(&file).unwrap();
        if std::env::var("HICAMP_CAP_EMPTY").is_err() {
            assert_eq!(
                m.get_named("x").unwrap().unwrap().to_vec(),
                vec![5u8; 100_000]
            );
        }
    }
    println!("HWM_DELTA_KIB={}", vm_hwm_kib() - before);
}

fn child_delta(file: &Path, fsck: bool) -> u64 {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "capacity_child",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("HICAMP_CAP_FILE", file);
    if fsck {
        c.env("HICAMP_CAP_FSCK", "1");
    }
    let out = c.output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{s}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.lines()
        .find_map(|l| l.split("HWM_DELTA_KIB=").nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no figure in {s}"))
}

#[test]
fn a_maximum_capacity_file_with_little_data_opens_in_little_memory() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("huge.hicamp");
    {
        let m = match Memory::create(&p, huge()) {
            Ok(m) => m,
            // A file system that cannot hold a sparse file this long.
            Err(e @ Error::Io { .. }) if e.to_string().contains("set length") => {
                testkit::skip(format!("sparse file of the maximum length: {e}"));
                return;
            }
            Err(e) => panic!("{e}"),
        };
        m.bind("x", m.segment(&[5u8; 100_000]).unwrap()).unwrap();
    }
    // Tens of GiB of capacity, about 100 KiB of data: open and fsck stay
    // within a few tens of MiB (the dedup index, the free bitmap's touched
    // words, the code's own heap).
    for fsck in [false, true] {
        let kib = child_delta(&p, fsck);
        eprintln!("peak RSS growth (fsck {fsck}): {kib} KiB");
        assert!(kib < 48 << 10, "fsck {fsck}: {kib} KiB");
    }
}

#[test]
fn a_header_claiming_more_than_the_file_holds_is_refused_quickly() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    // A small valid file...
    let small = d.path().join("small.hicamp");
    {
        let m = Memory::create(
            &small,
            Config {
                line_size: 16,
                capacity_lines: 1 << 12,
                map_capacity: 64,
                ..Config::default()
            },
        )
        .unwrap();
        m.bind("x", m.segment(&[1u8; 1000]).unwrap()).unwrap();
    }
    // ...given the header of a maximum-capacity file.
    let big = d.path().join("big.hicamp");
    drop(Memory::create(&big, huge()).unwrap());
    let mut bytes = std::fs::read(&small).unwrap();
    let head = {
        use std::io::Read;
        let mut h = vec![0u8; 4096];
        std::fs::File::open(&big)
            .unwrap()
            .read_exact(&mut h)
            .unwrap();
        h
    };
    bytes[..4096].copy_from_slice(&head);
    let bomb = d.path().join("bomb.hicamp");
    std::fs::write(&bomb, &bytes).unwrap();
    let t = Instant::now();
    let e = Memory::open(&bomb).unwrap_err();
    assert!(matches!(e, Error::Truncated { .. }), "{e}");
    assert!(e.to_string().contains("truncated"), "{e}");
    assert!(matches!(fsck(&bomb), Err(Error::Truncated { .. })));
    eprintln!("refused in {:?}: {e}", t.elapsed());

    // The same header on a sparse file of the full length, whose reserved
    // words claim everything: the claims are trimmed to the data the file
    // holds (SEEK_DATA), so open and fsck neither walk nor allocate them.
    let bomb = big;
    let mut h = head.clone();
    let word = |which: u64, v: u32| -> u64 {
        let check =
            xxhash_rust::xxh3::xxh3_64_with_seed(&v.to_le_bytes(), 0x5ace_0000 + which) as u32;
        u64::from(v) | (u64::from(check) << 32)
    };
    h[2056..2064].copy_from_slice(&word(0, u32::MAX).to_le_bytes());
    h[2064..2072].copy_from_slice(&word(1, u32::MAX - 1).to_le_bytes());
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&bomb).unwrap();
        f.write_all_at(&h, 0).unwrap();
    }
    let r = fsck(&bomb).unwrap();
    assert!(r.reserved_bytes < 1 << 20, "{r:?}");
    for fsck in [false, true] {
        let kib = child_delta_empty(&bomb, fsck);
        assert!(kib < 48 << 10, "fsck {fsck}: {kib} KiB");
    }
    let m = Memory::open(&bomb).unwrap();
    assert_eq!(m.map().len(), 1);
    drop(m);
    use std::os::unix::fs::MetadataExt;
    assert!(std::fs::metadata(&bomb).unwrap().blocks() * 512 < 16 << 20);
}

fn child_delta_empty(file: &Path, fsck: bool) -> u64 {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "capacity_child",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("HICAMP_CAP_FILE", file)
    .env("HICAMP_CAP_EMPTY", "1");
    if fsck {
        c.env("HICAMP_CAP_FSCK", "1");
    }
    let out = c.output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{s}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.lines()
        .find_map(|l| l.split("HWM_DELTA_KIB=").nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no figure in {s}"))
}
