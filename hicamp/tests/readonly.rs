//! fsck checks a file it cannot write (issue 12, item 10): a chmod 0444 file
//! and a file on a read-only mount (a tmpfs the test mounts and remounts
//! read-only; root only). Open for writing is refused with a clear error.

mod mounts;

use std::os::unix::fs::PermissionsExt;

use hicamp::{fsck, Config, Error, Memory};

fn make(p: &std::path::Path) {
    let m = Memory::create(
        p,
        Config {
            capacity_lines: 1 << 12,
            map_capacity: 64,
            ..Config::default()
        },
    )
    .unwrap();
    m.bind("x", m.segment(&[3u8; 5000]).unwrap()).unwrap();
}

#[test]
fn fsck_of_a_read_only_file() {
    // The other test forks `mount`: a child between its fork and its exec
    // holds a copy of every descriptor, this file's lock included, so the
    // two run one at a time (fsck then saw `InUse` about 1 run in 12).
    let _serial = mounts::serial();
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("m.hicamp");
    make(&p);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444)).unwrap();
    let r = fsck(&p).unwrap();
    assert!(r.is_consistent(), "{:?}", r.problems);
    assert_eq!((r.named, r.digests_verified), (1, 1));
}

#[test]
fn fsck_on_a_read_only_mount() {
    let _serial = mounts::serial();
    if testkit::require(mounts::root(), "root (mounts a tmpfs)") {
        return;
    }
    let mount = mounts::Mount::tmpfs("4m").unwrap();
    let p = mount.path().join("m.hicamp");
    make(&p);
    let before = std::fs::read(&p).unwrap();
    mount.remount_ro().unwrap();
    let r = fsck(&p).unwrap();
    assert!(r.is_consistent(), "{:?}", r.problems);
    assert_eq!((r.named, r.digests_verified), (1, 1));
    let e = Memory::open(&p).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert!(e.to_string().contains("Read-only"), "{e}");
    assert_eq!(std::fs::read(&p).unwrap(), before, "fsck wrote nothing");
}
