//! `hicamp fsck` and `hicamp stat` on a memory file that filled its file
//! system (an 8 MiB tmpfs, a 16 MiB loop-mounted ext4), on a sparse copy on
//! a full file system, and on a short file: a report or a clear error, never
//! SIGBUS (rc 135). Root only (the test mounts its own file systems).

#[path = "../../hicamp/tests/mounts/mod.rs"]
mod mounts;

use std::path::Path;
use std::process::Command;

use hicamp::{Config, Durability, Error, Memory};

fn fill(p: &Path, mode: Durability) {
    let m = Memory::create(
        p,
        Config {
            line_size: 64,
            capacity_lines: 1 << 20,
            map_capacity: 1 << 16,
            durability: mode,
            pm_write_latency_ns: 0,
        },
    )
    .unwrap();
    let mut rng = testkit::Rng::new(3);
    m.bind("first", m.segment(b"named before the disk filled").unwrap())
        .unwrap();
    loop {
        match m.map().create(&rng.bytes(32 << 10)) {
            Ok(_) => {}
            Err(Error::NoSpace { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
}

/// Runs `hicamp ARGS`; returns (exit code, stdout, stderr), failing on a signal.
fn hicamp(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hicamp"))
        .args(args)
        .output()
        .unwrap();
    let code = out.status.code().unwrap_or_else(|| {
        panic!(
            "hicamp {args:?} died by a signal: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_ne!(code, 135);
    (
        code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check(mount: &mounts::Mount) {
    for mode in [Durability::None, Durability::Msync] {
        let p = mount.path().join(format!("{mode:?}.hicamp"));
        fill(&p, mode);
        let (code, out, err) = hicamp(&["fsck".as_ref(), p.as_os_str()]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("consistent"), "{out}");
        let (code, out, err) = hicamp(&["stat".as_ref(), p.as_os_str()]);
        assert_eq!(code, 0, "{out}{err}");
        // A sparse copy on the full file system: reported by fsck; stat
        // (read-only) reads it, stat --repair (which must fill its holes)
        // fails with a clear error.
        let q = mount.path().join("sparse-copy.hicamp");
        let copied = Command::new("cp")
            .arg("--sparse=always")
            .arg(&p)
            .arg(&q)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !copied {
            let _ = std::fs::remove_file(&q);
        } else {
            let (code, out, err) = hicamp(&["fsck".as_ref(), q.as_os_str()]);
            assert!(code == 3 || code == 0, "{out}{err}");
            let (code, out, err) = hicamp(&["stat".as_ref(), q.as_os_str()]);
            assert_eq!(code, 0, "{out}{err}");
            let (code, out, err) = hicamp(&["stat".as_ref(), "--repair".as_ref(), q.as_os_str()]);
            assert!(
                code == 0 || err.contains("no space left"),
                "{code}: {out}{err}"
            );
            std::fs::remove_file(&q).unwrap();
        }
        // A short file: a clear error.
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(1 << 20).unwrap();
        drop(f);
        for cmd in ["fsck", "stat"] {
            let (code, out, err) = hicamp(&[cmd.as_ref(), p.as_os_str()]);
            assert_eq!(code, 1, "{cmd}: {out}{err}");
            assert!(err.contains("truncated"), "{cmd}: {err}");
        }
        std::fs::remove_file(&p).unwrap();
    }
}

#[test]
fn fsck_and_stat_on_a_full_tmpfs() {
    let _serial = mounts::serial();
    if testkit::require(mounts::root(), "root (mounts a tmpfs)") {
        return;
    }
    check(&mounts::Mount::tmpfs("8m").unwrap());
}

#[test]
fn fsck_and_stat_on_a_full_ext4() {
    let _serial = mounts::serial();
    if testkit::require(mounts::root(), "root (mounts an ext4 image)")
        || testkit::require_program("mkfs.ext4", "-V")
    {
        return;
    }
    check(&mounts::Mount::ext4(16).unwrap());
}
