//! `hicamp put` then `hicamp grep`: a search through a window on a stored segment.

use std::process::Command;

use hicamp::{Config, Memory, Window, WindowError};

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

/// Skips (or fails under CI=true) without userfaultfd.
fn uffd_ok() -> bool {
    let mem = Memory::with_defaults().unwrap();
    match Window::open(&mem.segment(b"probe").unwrap()) {
        Ok(_) => true,
        Err(e @ WindowError::Unavailable { .. }) => {
            testkit::skip(format_args!("needs userfaultfd ({e})"));
            false
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn grep_finds_every_offset_through_a_window() {
    if !uffd_ok() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("m.hicamp");
    // 3 MiB: zeros, noise and the needle at known offsets (one across a page boundary).
    let mut rng = testkit::Rng::new(42);
    let mut data = vec![0u8; 3 << 20];
    for b in data[1 << 20..2 << 20].iter_mut() {
        *b = b'a' + (rng.next_u64() % 20) as u8; // never 'z'
    }
    let offsets = [5usize, 4093, 1_000_000, 1_500_000, (3 << 20) - 9];
    for &o in &offsets {
        data[o..o + 9].copy_from_slice(b"zzneedlez");
    }
    {
        let mem = Memory::create(
            &file,
            Config {
                capacity_lines: 1 << 17,
                map_capacity: 64,
                ..Config::default()
            },
        )
        .unwrap();
        mem.bind("blob", mem.segment(&data).unwrap()).unwrap();
    }
    let f = file.to_str().unwrap();
    let (code, out, err) = hicamp(&["grep", f, "blob", "needle"]);
    assert_eq!(code, 0, "{err}");
    let got: Vec<usize> = out.lines().map(|l| l.parse().unwrap()).collect();
    let want: Vec<usize> = offsets.iter().map(|o| o + 2).collect();
    assert_eq!(got, want);
    assert!(err.contains("5 matches in 3145728 bytes"), "{err}");

    let (code, out, _) = hicamp(&["grep", "--count", f, "blob", "zz"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "5");
    let (code, out, _) = hicamp(&["-q", "grep", "-m", "2", f, "blob", "needle"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 2);
    let (code, out, _) = hicamp(&["-q", "grep", f, "blob", "absent!"]);
    assert_eq!((code, out.as_str()), (0, ""));

    // Errors: an unknown name, an empty pattern, a file that is not a memory.
    let (code, _, err) = hicamp(&["grep", f, "nope", "x"]);
    assert_eq!(code, 1);
    assert!(err.contains("no segment named \"nope\""), "{err}");
    let (code, _, err) = hicamp(&["grep", f, "blob", ""]);
    assert_eq!(code, 1);
    assert!(err.contains("empty"), "{err}");
    let junk = d.path().join("junk");
    std::fs::write(&junk, b"not a memory").unwrap();
    let (code, _, err) = hicamp(&["grep", junk.to_str().unwrap(), "blob", "x"]);
    assert_eq!(code, 1, "{err}");
}

#[test]
fn put_then_grep() {
    if !uffd_ok() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("p.hicamp");
    let input = d.path().join("in.txt");
    std::fs::write(&input, b"one two three two one").unwrap();
    let (f, i) = (file.to_str().unwrap(), input.to_str().unwrap());
    let (code, _, err) = hicamp(&["put", f, "t", i]);
    assert_eq!(code, 1, "no file without --create: {err}");
    let (code, _, err) = hicamp(&["put", "--create", f, "t", i]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = hicamp(&["grep", f, "t", "two"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "4\n14\n");
}
