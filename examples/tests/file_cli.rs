//! `hicamp fsck` and `hicamp stat` on real memory files.

use std::process::Command;

use hicamp::{Config, Durability, Memory};

fn hicamp(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hicamp"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn make_file(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("m.hicamp");
    let m = Memory::create(
        &p,
        Config {
            capacity_lines: 1 << 12,
            map_capacity: 64,
            durability: Durability::Msync,
            ..Config::default()
        },
    )
    .unwrap();
    m.bind("a", m.segment(&[7u8; 5000]).unwrap()).unwrap();
    m.map().create(b"unnamed").unwrap();
    p
}

#[test]
fn fsck_and_stat_of_a_clean_file() {
    let d = tempfile::tempdir().unwrap();
    let p = make_file(d.path());
    let ps = p.to_str().unwrap();
    let (code, out, err) = hicamp(&["fsck", ps]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("consistent"));
    let (code, out, _) = hicamp(&["fsck", "--json", ps]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["consistent"], true);
    assert_eq!(v["named"], 1);
    assert_eq!(v["digests_verified"], 1);
    assert_eq!(v["entries"], 3);
    let (code, out, _) = hicamp(&["stat", "--json", ps]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    // 5000 + 7 bytes of data and the 51-byte directory record of "a" (with
    // its bind-time version and 4-byte check).
    assert_eq!(v["logical_bytes"], 5000 + 7 + 51);
    assert_eq!(v["named_segments"], 1);
    assert_eq!(v["recovery"]["was_clean"], true);
    let (code, out, _) = hicamp(&["stat", ps]);
    assert_eq!(code, 0);
    assert!(out.contains("line size 64 B"), "{out}");
}

#[test]
fn fsck_finds_an_orphan_and_exits_3() {
    let d = tempfile::tempdir().unwrap();
    let p = make_file(d.path());
    let mut b = std::fs::read(&p).unwrap();
    let meta = u64::from_le_bytes(b[48..56].try_into().unwrap()) as usize;
    // One count byte per slot.
    b[meta + 4000] = 2;
    std::fs::write(&p, &b).unwrap();
    let (code, out, _) = hicamp(&["fsck", p.to_str().unwrap()]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("orphan"), "{out}");
    assert!(out.contains("INCONSISTENT"));
    // stat reports the orphan an open reclaims, and leaves the file as it
    // was (byte for byte); stat --repair keeps the recovery, and fsck is then
    // clean.
    let before = std::fs::read(&p).unwrap();
    let (code, out, _) = hicamp(&["stat", "--json", p.to_str().unwrap()]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        v["recovery"]["orphans_reclaimed"].as_u64().unwrap() >= 1,
        "{out}"
    );
    assert!(
        std::fs::read(&p).unwrap() == before,
        "stat changed the file"
    );
    assert_eq!(hicamp(&["fsck", p.to_str().unwrap()]).0, 3);
    assert_eq!(hicamp(&["stat", "--repair", p.to_str().unwrap()]).0, 0);
    assert_eq!(hicamp(&["fsck", p.to_str().unwrap()]).0, 0);
}

#[test]
fn bad_files_give_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("nope");
    let (code, _, err) = hicamp(&["fsck", missing.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("hicamp: error:") && err.contains("open"),
        "{err}"
    );
    let foreign = d.path().join("foreign");
    std::fs::write(&foreign, vec![b'x'; 10_000]).unwrap();
    let (code, _, err) = hicamp(&["stat", foreign.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("not a hicamp memory file"), "{err}");
    assert!(!err.contains("panicked"));
}
