//! `Memory::create` is atomic (issue 12, item 7): a create killed at any
//! point leaves no file at the target (at most a temporary, which the next
//! create at that path removes), and the path can then be created or opened.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use hicamp::{fsck, Config, Durability, Memory};

fn cfg() -> Config {
    Config {
        line_size: 64,
        capacity_lines: 1 << 16,
        map_capacity: 1 << 12,
        durability: Durability::Msync,
        pm_write_latency_ns: 0,
    }
}

/// The child: creates, closes and removes a memory file at
/// `HICAMP_CREATE_FILE` over and over until killed (or once, when a fail
/// point is set). A no-op when run as an ordinary test.
#[test]
fn create_child() {
    let Ok(file) = std::env::var("HICAMP_CREATE_FILE") else {
        return;
    };
    loop {
        let m = Memory::create(&file, cfg()).unwrap();
        m.bind("x", m.segment(b"content").unwrap()).unwrap();
        drop(m);
        std::fs::remove_file(&file).unwrap();
    }
}

/// The tests fork: run them one at a time (a child holds, until it execs,
/// the descriptors another test just closed, and with them a file's lock).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// After a dead create: the target is absent or a whole memory file; a
/// create (after removing a whole file) works and leaves only the target.
fn check_after_kill(dir: &Path, file: &Path) {
    if file.exists() {
        let m = Memory::open(file).expect("a file at the target is whole");
        assert!(!m.map().is_empty());
        drop(m);
        assert!(fsck(file).unwrap().is_consistent());
        std::fs::remove_file(file).unwrap();
    }
    let m = Memory::create(file, cfg()).expect("create after a killed create");
    drop(m);
    assert_eq!(entries(dir), ["mem.hicamp"], "leftover temporaries removed");
    drop(Memory::open(file).unwrap());
    std::fs::remove_file(file).unwrap();
}

fn child(file: &Path) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["create_child", "--exact", "--nocapture", "--test-threads=1"])
        .env("HICAMP_CREATE_FILE", file)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

#[test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "create's fail points exist only in builds with debug assertions"
)]
fn a_create_killed_at_each_step_leaves_no_target() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mem.hicamp");
    for step in 1..=3 {
        // Killed (abort) at the step.
        let st = child(&file)
            .env("HICAMP_CREATE_FAIL_AT", step.to_string())
            .env("HICAMP_CREATE_FAIL_ABORT", "1")
            .status()
            .unwrap();
        assert!(!st.success());
        assert!(!file.exists(), "step {step}: no file at the target");
        assert_eq!(entries(dir.path()).len(), 1, "step {step}: the temporary");
        check_after_kill(dir.path(), &file);
        // Failing (an error) at the step: nothing is left at all.
        let st = child(&file)
            .env("HICAMP_CREATE_FAIL_AT", step.to_string())
            .status()
            .unwrap();
        assert!(!st.success());
        assert!(
            entries(dir.path()).is_empty(),
            "step {step}: {:?}",
            entries(dir.path())
        );
    }
}

#[test]
fn a_create_killed_at_random_times_leaves_no_broken_target() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mem.hicamp");
    let mut rng = testkit::Rng::new(0xC4EA7E);
    for _ in 0..30 {
        let mut c = child(&file).spawn().unwrap();
        std::thread::sleep(Duration::from_micros(rng.below(30_000)));
        let _ = c.kill();
        c.wait().unwrap();
        check_after_kill(dir.path(), &file);
    }
}

#[test]
fn create_refuses_an_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mem.hicamp");
    std::fs::write(&file, b"someone else's").unwrap();
    assert!(Memory::create(&file, cfg()).is_err());
    assert_eq!(std::fs::read(&file).unwrap(), b"someone else's");
    assert_eq!(entries(dir.path()), ["mem.hicamp"]);
}
