//! `hicamp fsck` and `hicamp stat` report damage: a flipped bit in the
//! segment map is named by fsck (exit 3), reported by stat and corrected by stat --repair
//! (whose open salvages), after which fsck finds the file consistent.

use std::process::Command;

use hicamp::{Config, Memory};

fn hicamp(args: &[&std::ffi::OsStr]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hicamp"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().expect("no signal"),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn fsck_and_stat_name_a_flipped_map_bit() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("m.hicamp");
    {
        let m = Memory::create(
            &p,
            Config {
                capacity_lines: 1 << 12,
                map_capacity: 64,
                ..Config::default()
            },
        )
        .unwrap();
        m.bind("doc", m.segment(b"some named bytes").unwrap())
            .unwrap();
    }
    let mut b = std::fs::read(&p).unwrap();
    let map = u64::from_le_bytes(b[56..64].try_into().unwrap()) as usize;
    b[map + 64 + 3] ^= 0x10; // entry 1, slot 0
    std::fs::write(&p, &b).unwrap();
    let (code, out) = hicamp(&["fsck".as_ref(), p.as_os_str()]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("map entry 1: a flipped bit"), "{out}");
    // stat reports the damage without changing the file; stat --repair
    // corrects it.
    for repair in [false, true] {
        let mut args: Vec<&std::ffi::OsStr> = vec!["stat".as_ref()];
        if repair {
            args.push("--repair".as_ref());
        }
        args.push(p.as_os_str());
        let (code, out) = hicamp(&args);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("damage: map entry 1: a flipped bit"), "{out}");
        let (code, out) = hicamp(&["fsck".as_ref(), p.as_os_str()]);
        assert_eq!(code, if repair { 0 } else { 3 }, "{out}");
    }
}
