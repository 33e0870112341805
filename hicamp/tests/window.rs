//! Windows: segments read and written through plain pointers (userfaultfd).
//!
//! Every test needs userfaultfd (root, CAP_SYS_PTRACE, an accessible
//! /dev/userfaultfd, or `vm.unprivileged_userfaultfd = 1`); without it the
//! test says why and skips (it fails under CI=true, through testkit::require).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use hicamp::{fsck, Config, Memory, SegmentId, Window, WindowError, WindowOptions};
use testkit::Rng;

/// The tests run one at a time: one of them measures the process's resident
/// memory.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// True when a window can be opened here (else the test skips, saying why).
fn uffd_ok(mem: &Memory, writable: bool) -> bool {
    let seg = mem.segment(b"probe").unwrap();
    let r = if writable {
        let id = mem.map().insert(seg).unwrap();
        let r = Window::open_entry(mem, id).map(drop);
        mem.map().delete(id).unwrap();
        r
    } else {
        Window::open(&seg).map(drop)
    };
    match r {
        Ok(()) => true,
        Err(e @ (WindowError::Unavailable { .. } | WindowError::NoWriteProtect { .. })) => {
            testkit::skip(format_args!("needs userfaultfd ({e})"));
            false
        }
        Err(e) => panic!("opening a window: {e}"),
    }
}

fn random_content(rng: &mut Rng, len: usize) -> Vec<u8> {
    // Runs of zeros (whole zero pages included), repeated lines and noise.
    let mut v = vec![0u8; len];
    let mut i = 0;
    while i < len {
        let run = (rng.below(9000) as usize + 1).min(len - i);
        match rng.below(4) {
            0 => {}
            1 => v[i..i + run].fill(b'x'),
            _ => v[i..i + run].iter_mut().for_each(|b| *b = rng.byte()),
        }
        i += run;
    }
    v
}

fn mem() -> Memory {
    Memory::new(Config {
        capacity_lines: 1 << 20,
        map_capacity: 1024,
        ..Config::default()
    })
    .unwrap()
}

#[test]
fn random_reads_equal_the_segment() {
    let _g = serial();
    let mem = mem();
    if !uffd_ok(&mem, false) {
        return;
    }
    let mut rng = Rng::new(19);
    for &len in &[0usize, 1, 4095, 4096, 4097, 200_000, 1 << 20] {
        let data = random_content(&mut rng, len);
        let seg = mem.segment(&data).unwrap();
        let w = Window::open(&seg).unwrap();
        assert_eq!(w.len(), len as u64);
        assert!(!w.is_writable());
        let s = w.as_slice();
        for _ in 0..300 {
            if len == 0 {
                break;
            }
            let off = rng.below(len as u64) as usize;
            let n = (rng.below(10_000) as usize).min(len - off);
            assert_eq!(
                &s[off..off + n],
                &data[off..off + n],
                "len {len} at {off}+{n}"
            );
        }
        assert_eq!(s, &data[..], "whole window of {len}");
        let st = w.stats();
        assert_eq!(
            st.pages_copied + st.zero_pages,
            st.filled_pages,
            "every fill counted once: {st:?}"
        );
        if len > 0 {
            assert!(st.missing_faults > 0);
        }
    }
}

#[test]
fn read_only_window_refuses_writes() {
    let _g = serial();
    let mem = mem();
    if !uffd_ok(&mem, false) {
        return;
    }
    let seg = mem.segment(&[1u8; 10_000]).unwrap();
    let mut w = Window::open(&seg).unwrap();
    assert_eq!(w.as_mut_slice().err(), Some(WindowError::ReadOnly));
    assert_eq!(w.commit(), Err(WindowError::ReadOnly));
    assert_eq!(w.as_slice(), &[1u8; 10_000][..]);
}

#[test]
fn sequential_read_uses_read_ahead() {
    let _g = serial();
    let mem = mem();
    if !uffd_ok(&mem, false) {
        return;
    }
    let mut rng = Rng::new(7);
    let data: Vec<u8> = (0..4 << 20).map(|_| rng.byte()).collect();
    let seg = mem.segment(&data).unwrap();
    let w = Window::open(&seg).unwrap();
    let sum: u64 = w.as_slice().iter().map(|&b| u64::from(b)).sum();
    assert_eq!(sum, data.iter().map(|&b| u64::from(b)).sum::<u64>());
    let st = w.stats();
    assert_eq!(st.filled_pages, 1024);
    assert!(
        st.missing_faults < 1024 / 8,
        "sequential faults read ahead: {st:?}"
    );
    let off = WindowOptions {
        read_ahead_pages: 0,
        ..WindowOptions::default()
    };
    let w = Window::open_with(&seg, off).unwrap();
    assert_eq!(w.as_slice(), &data[..]);
    let st = w.stats();
    assert_eq!(st.read_ahead_pages, 0, "no read-ahead: {st:?}");
    assert_eq!(st.filled_pages, 1024, "{st:?}");
    // A read-ahead shorter than the first step (16 pages).
    let w = Window::open_with(
        &seg,
        WindowOptions {
            read_ahead_pages: 8,
            ..WindowOptions::default()
        },
    )
    .unwrap();
    assert_eq!(w.as_slice(), &data[..]);
    assert!(w.stats().read_ahead_pages > 0);
    // Run-ahead: same bytes; a reader that stops early leaves at most the
    // run-ahead (and one read-ahead chunk) filled past its last page.
    let run = WindowOptions {
        read_ahead_pages: 16,
        run_ahead_chunks: 3,
        ..WindowOptions::default()
    };
    let w = Window::open_with(&seg, run).unwrap();
    assert_eq!(w.as_slice(), &data[..]);
    assert_eq!(w.stats().filled_pages, 1024);
    let w = Window::open_with(&seg, run).unwrap();
    let first: u64 = w.as_slice()[..40 * 4096]
        .iter()
        .step_by(4096)
        .map(|&b| u64::from(b))
        .sum();
    assert_eq!(
        first,
        data[..40 * 4096]
            .iter()
            .step_by(4096)
            .map(|&b| u64::from(b))
            .sum::<u64>()
    );
    let st = w.stats();
    assert!(st.filled_pages >= 40, "{st:?}");
    assert!(
        st.filled_pages <= 40 + 3 * 16 + 16,
        "bounded run-ahead: {st:?}"
    );
    // The read-ahead thread: same bytes, fewer faults than pages.
    let bg = WindowOptions {
        background_read_ahead: true,
        ..WindowOptions::default()
    };
    for _ in 0..5 {
        let w = Window::open_with(&seg, bg).unwrap();
        assert_eq!(w.as_slice(), &data[..]);
        let st = w.stats();
        assert_eq!(st.filled_pages, 1024, "{st:?}");
        assert!(st.missing_faults < 1024 / 8, "{st:?}");
    }
}

/// A segment built in order from new bytes has its leaves in consecutive
/// arena slots, and the window copies its pages straight from the arena.
#[test]
fn pages_of_new_data_are_copied_straight_from_the_arena() {
    let _g = serial();
    let mem = mem();
    if !uffd_ok(&mem, false) {
        return;
    }
    let mut rng = Rng::new(23);
    let data: Vec<u8> = (0..1 << 20).map(|_| rng.byte()).collect();
    let seg = mem.segment(&data).unwrap();
    let w = Window::open(&seg).unwrap();
    assert_eq!(w.as_slice(), &data[..]);
    let st = w.stats();
    assert_eq!(st.pages_copied, 256, "{st:?}");
    assert_eq!(st.direct_pages, 256, "leaves in input order: {st:?}");
}

/// Pages of every kind in one window: new lines (adjacent slots), pages and
/// runs of lines deduplicated to an older segment's (adjacent there, or
/// shifted by a line), pages mixing both, zero pages, pages with a few zero
/// lines, pages of one repeated line, and a short tail. Read-only and
/// read-write windows, with and without read-ahead, read the segment's
/// bytes; a commit gives SegmentMut's root.
#[test]
fn pages_of_adjacent_deduplicated_zero_and_shared_lines() {
    let _g = serial();
    let mem = mem();
    if !uffd_ok(&mem, true) {
        return;
    }
    const P: usize = 4096;
    let mut rng = Rng::new(29);
    let old: Vec<u8> = (0..16 * P).map(|_| rng.byte()).collect();
    let old_seg = mem.segment(&old).unwrap();
    let mut data = Vec::new();
    let mut noise = |n: usize| -> Vec<u8> { (0..n).map(|_| rng.byte()).collect() };
    data.extend(noise(3 * P)); // new, adjacent
    data.extend_from_slice(&old[2 * P..5 * P]); // old pages, adjacent in the old run
    data.extend(noise(P)); // new
    data.extend_from_slice(&old[7 * P + 64..8 * P + 64]); // old lines, shifted by one
    data.extend_from_slice(&old[9 * P..9 * P + P / 2]); // half old ...
    data.extend(noise(P / 2)); // ... half new
    data.extend(vec![0u8; 2 * P]); // zero pages
    let mut holes = noise(P); // new lines with zero lines among them
    holes[640..1280].fill(0);
    holes[P - 64..].fill(0);
    data.extend(holes);
    data.extend(vec![0xa5u8; P]); // one line repeated
    data.extend_from_slice(&old[12 * P..13 * P]); // old again
    data.extend(noise(P)); // new
    data.extend(noise(1000)); // a short tail
    let seg = mem.segment(&data).unwrap();
    assert_eq!(seg.to_vec(), data);
    let pages = data.len().div_ceil(P) as u64;
    for ra in [0, 3, 16, 256] {
        let opts = WindowOptions {
            read_ahead_pages: ra,
            ..WindowOptions::default()
        };
        let w = Window::open_with(&seg, opts).unwrap();
        assert_eq!(w.as_slice(), &data[..], "read-ahead {ra}");
        let st = w.stats();
        assert_eq!(st.filled_pages, pages, "{st:?}");
        assert_eq!(st.zero_pages, 2, "{st:?}");
        assert_eq!(st.pages_copied + st.zero_pages, pages, "{st:?}");
        // Direct: the 3 new pages at the start, the 3 + 1 + 1 old ones, the
        // shifted one; the 2 later new pages too unless the slots of the
        // batch went out of order (old lines found under the lock keep the
        // slots they were given).
        assert!((8..=10).contains(&st.direct_pages), "{st:?}");
        // Random order too.
        let w = Window::open_with(&seg, opts).unwrap();
        let s = w.as_slice();
        let mut order: Vec<usize> = (0..pages as usize).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for p in order {
            let end = ((p + 1) * P).min(data.len());
            assert_eq!(
                &s[p * P..end],
                &data[p * P..end],
                "page {p}, read-ahead {ra}"
            );
        }
    }
    // Read-write: zero pages are copied (a write must fault), same bytes;
    // writes on every kind of page commit to SegmentMut's root.
    let id = mem.map().insert(seg.clone()).unwrap();
    let mut w = Window::open_entry(&mem, id).unwrap();
    assert_eq!(w.as_slice(), &data[..]);
    assert_eq!(w.stats().zero_pages, 0);
    let mut m = seg.to_mut();
    let s = w.as_mut_slice().unwrap();
    for p in 0..pages as usize {
        let at = p * P + (p * 97) % P.min(data.len() - p * P);
        s[at] ^= 0x5a;
        m.write_at(at as u64, &[data[at] ^ 0x5a]).unwrap();
    }
    drop(old_seg);
    w.commit().unwrap();
    assert_eq!(mem.map().get(id).unwrap(), m.freeze());
}

#[test]
fn windows_on_two_snapshots_see_their_own_versions() {
    let _g = serial();
    let mem = mem();
    if !uffd_ok(&mem, false) {
        return;
    }
    let v1 = mem.segment(&[b'a'; 50_000]).unwrap();
    let mut m = v1.to_mut();
    m.write_at(20_000, b"version two").unwrap();
    let v2 = m.freeze();
    let w1 = Window::open(&v1).unwrap();
    let w2 = Window::open(&v2).unwrap();
    assert_eq!(&w1.as_slice()[20_000..20_011], b"aaaaaaaaaaa");
    assert_eq!(&w2.as_slice()[20_000..20_011], b"version two");
    assert_eq!(w1.as_slice(), &v1.to_vec()[..]);
    assert_eq!(w2.as_slice(), &v2.to_vec()[..]);
    // The window holds its own snapshot: dropping the handles changes nothing.
    let expect = v2.to_vec();
    drop((v1, v2));
    assert_eq!(w2.as_slice(), &expect[..]);
}

#[test]
fn concurrent_readers_of_one_window() {
    let _g = serial();
    let mem = mem();
    if !uffd_ok(&mem, false) {
        return;
    }
    let mut rng = Rng::new(3);
    let data = random_content(&mut rng, 3 << 20);
    let seg = mem.segment(&data).unwrap();
    let w = Window::open(&seg).unwrap();
    std::thread::scope(|s| {
        for t in 0..6u64 {
            let (w, data) = (&w, &data);
            s.spawn(move || {
                let mut rng = Rng::new(100 + t);
                let bytes = w.as_slice();
                for _ in 0..2000 {
                    let off = rng.below(data.len() as u64) as usize;
                    let n = (rng.below(3000) as usize).min(data.len() - off);
                    assert_eq!(&bytes[off..off + n], &data[off..off + n]);
                }
                if t % 2 == 0 {
                    assert_eq!(bytes, &data[..]);
                }
            });
        }
    });
    assert!(w.handler_error().is_none());
}

/// Applies random writes through a window and through `SegmentMut`; returns
/// the writes.
fn random_writes(rng: &mut Rng, len: usize, count: usize) -> Vec<(usize, Vec<u8>)> {
    (0..count)
        .map(|_| {
            let off = rng.below(len as u64) as usize;
            let n = (rng.below(6000) as usize + 1).min(len - off);
            let bytes = match rng.below(3) {
                0 => vec![0u8; n],
                _ => (0..n).map(|_| rng.byte()).collect(),
            };
            (off, bytes)
        })
        .collect()
}

#[test]
fn writes_then_commit_give_the_root_of_segment_mut() {
    let _g = serial();
    let mem = mem();
    if !uffd_ok(&mem, true) {
        return;
    }
    let mut rng = Rng::new(0x19);
    // Async write-protect (where the kernel has it) and write-protect faults.
    for round in 0..12 {
        let opts = WindowOptions {
            async_write_protect: round < 6,
            ..WindowOptions::default()
        };
        let round = round % 6;
        let len = [4096usize, 10_000, 300_000, 1 << 20, 5, 77_777][round];
        let data = random_content(&mut rng, len);
        let orig = mem.segment(&data).unwrap();
        let id = mem.map().insert(orig.clone()).unwrap();
        let v0 = mem.map().entry(id).unwrap().version;
        let count = 1 + rng.below(40) as usize;
        let writes = random_writes(&mut rng, len, count);

        let mut expect = orig.to_mut();
        for (off, b) in &writes {
            expect.write_at(*off as u64, b).unwrap();
        }
        let expect = expect.freeze();

        let mut w = Window::open_entry_with(&mem, id, opts).unwrap();
        assert_eq!(w.entry(), Some((id, v0)));
        if !opts.async_write_protect {
            assert!(!w.async_write_protect());
        }
        {
            let s = w.as_mut_slice().unwrap();
            for (off, b) in &writes {
                s[*off..*off + b.len()].copy_from_slice(b);
            }
        }
        let st = w.stats();
        assert!(st.dirty_pages > 0, "{st:?}");
        if w.async_write_protect() {
            assert_eq!(st.wp_faults, 0, "no message per write: {st:?}");
        }
        assert_eq!(w.snapshot().unwrap(), expect, "round {round}: snapshot");
        let v1 = w.commit().unwrap();
        assert_eq!(v1, v0 + 1);
        let e = mem.map().entry(id).unwrap();
        assert_eq!(
            e.root,
            expect.root(),
            "round {round}: same root as SegmentMut"
        );
        assert_eq!(e.len, expect.len());
        assert_eq!(mem.map().get(id).unwrap(), expect);
        // The snapshot taken before the commit never changed.
        assert_eq!(orig.to_vec(), data);
        assert_eq!(w.stats().dirty_pages, 0);
        // A second round of writes on the new base.
        w.as_mut_slice().unwrap()[0] ^= 0xff;
        let v2 = w.commit().unwrap();
        assert_eq!(v2, v1 + 1);
        let mut x = expect.to_vec();
        x[0] ^= 0xff;
        assert_eq!(mem.map().get(id).unwrap().to_vec(), x);
        // Nothing dirty: commit is a no-op.
        assert_eq!(w.commit().unwrap(), v2);
        drop(w);
        mem.map().delete(id).unwrap();
    }
}

#[test]
fn commit_conflict_and_discard() {
    let _g = serial();
    let mem = mem();
    if !uffd_ok(&mem, true) {
        return;
    }
    for async_wp in [true, false] {
        conflict_and_discard(&mem, async_wp);
    }
}

fn conflict_and_discard(mem: &Memory, async_wp: bool) {
    let mem = mem.clone();
    let data = vec![b'q'; 40_000];
    let id = mem.map().create(&data).unwrap();
    let bg = WindowOptions {
        background_read_ahead: true,
        async_write_protect: async_wp,
        ..WindowOptions::default()
    };
    let mut w = Window::open_entry_with(&mem, id, bg).unwrap();
    let (_, v0) = w.entry().unwrap();
    w.as_mut_slice().unwrap()[100..105].copy_from_slice(b"mine!");
    // Someone else commits first.
    let theirs = mem.map().write_at(id, 30_000, b"theirs").unwrap();
    match w.commit() {
        Err(WindowError::Conflict {
            id: cid,
            expected,
            actual,
        }) => {
            assert_eq!((cid, expected, actual), (id, v0, theirs));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    // The change is still there and still dirty.
    assert_eq!(&w.as_slice()[100..105], b"mine!");
    assert!(w.stats().dirty_pages >= 1);
    w.discard().unwrap();
    assert_eq!(w.stats().dirty_pages, 0);
    assert_eq!(
        &w.as_slice()[100..105],
        b"qqqqq",
        "discard reads the base again"
    );
    assert_eq!(w.as_slice(), &data[..]);
    assert_eq!(
        mem.map()
            .get(id)
            .unwrap()
            .read_at(30_000, &mut [0; 6])
            .unwrap(),
        6
    );
    // Reopen on the new version: commit succeeds.
    drop(w);
    let mut w = Window::open_entry(&mem, id).unwrap();
    w.as_mut_slice().unwrap()[100..105].copy_from_slice(b"mine!");
    assert_eq!(w.commit().unwrap(), theirs + 1);
    let got = mem.map().get(id).unwrap().to_vec();
    assert_eq!(&got[100..105], b"mine!");
    assert_eq!(&got[30_000..30_006], b"theirs");
}

/// VmRSS of this process, in bytes.
fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[test]
fn sparse_gib_window_costs_the_pages_touched() {
    let _g = serial();
    let mem = Memory::new(Config {
        capacity_lines: 1 << 18,
        map_capacity: 64,
        ..Config::default()
    })
    .unwrap();
    if !uffd_ok(&mem, false) {
        return;
    }
    const GIB: u64 = 1 << 30;
    const PAGES: usize = 256; // 1 MiB
    let mut rng = Rng::new(1 << 30);
    // Data on 256 pages at least 4 pages apart, all through the GiB.
    let mut pages: Vec<u64> = (0..PAGES as u64)
        .map(|i| i * (GIB / 4096 / PAGES as u64) + rng.below(64))
        .collect();
    let mut m = mem.zeroed(GIB).unwrap().into_mut();
    let mut want = Vec::new();
    for &p in &pages {
        let b: Vec<u8> = (0..4096).map(|_| rng.byte() | 1).collect();
        m.write_at(p * 4096, &b).unwrap();
        want.push(b);
    }
    let seg = m.freeze();
    // Touch them in random order (no read-ahead: never sequential).
    let mut order: Vec<usize> = (0..PAGES).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let w = Window::open(&seg).unwrap();
    let before = rss();
    for &i in &order {
        let p = pages[i] as usize;
        assert_eq!(&w.as_slice()[p * 4096..(p + 1) * 4096], &want[i][..]);
    }
    let grown = rss().saturating_sub(before);
    let resident = w.resident_pages().unwrap();
    let st = w.stats();
    eprintln!(
        "1 GiB window, 1 MiB touched: VmRSS +{} KiB, {resident} resident pages, {st:?}",
        grown / 1024
    );
    assert_eq!(st.filled_pages, PAGES as u64, "{st:?}");
    assert_eq!(resident, PAGES as u64);
    assert!(
        (900 << 10..=3 << 20).contains(&grown),
        "touching 1 MiB grew VmRSS by {grown} bytes"
    );
    // A touch of a zero page maps the shared zero page (no memory).
    pages.sort();
    let before = rss();
    let mut sum = 0u64;
    for k in 0..256u64 {
        let p = (k * 1009 + 3) as usize;
        if pages.binary_search(&(p as u64)).is_err() {
            sum += u64::from(w.as_slice()[p * 4096 + 7]);
        }
    }
    assert_eq!(sum, 0);
    let grown = rss().saturating_sub(before);
    assert!(grown < 512 << 10, "zero pages took {grown} bytes");
    assert!(w.stats().zero_pages > 0);
}

// ---------------------------------------------------------------------------
// Crash between writes and commit.

fn crash_config() -> Config {
    Config {
        line_size: 64,
        capacity_lines: 1 << 16,
        map_capacity: 64,
        ..Config::default()
    }
}

/// The child: writes through a window on the entry (committing once when
/// HICAMP_WINDOW_COMMIT_FIRST is set), says so on stdout, and waits to be
/// killed. A no-op when run as an ordinary test.
#[test]
fn window_crash_child() {
    let Ok(file) = std::env::var("HICAMP_WINDOW_CRASH_FILE") else {
        return;
    };
    let mem = Memory::open(&file).unwrap();
    let id = SegmentId(
        std::env::var("HICAMP_WINDOW_CRASH_ID")
            .unwrap()
            .parse()
            .unwrap(),
    );
    let mut w = Window::open_entry(&mem, id).unwrap();
    if std::env::var("HICAMP_WINDOW_COMMIT_FIRST").is_ok() {
        w.as_mut_slice().unwrap()[..9].copy_from_slice(b"committed");
        w.commit().unwrap();
    }
    let s = w.as_mut_slice().unwrap();
    let mut rng = Rng::new(5);
    for _ in 0..500 {
        let off = rng.below(s.len() as u64 - 16) as usize;
        s[off..off + 16].copy_from_slice(b"NEVER COMMITTED!");
    }
    println!("WINDOW-WRITTEN");
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

fn crash_round(dir: &Path, commit_first: bool) {
    let file = dir.join(if commit_first { "b.hicamp" } else { "a.hicamp" });
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    // A plain map entry (a named one would keep its bind-time digest, which
    // fsck checks).
    let id = {
        let mem = Memory::create(&file, crash_config()).unwrap();
        if !uffd_ok(&mem, true) {
            return;
        }
        mem.map().create(&data).unwrap()
    };
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args([
        "window_crash_child",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("HICAMP_WINDOW_CRASH_FILE", &file)
    .env("HICAMP_WINDOW_CRASH_ID", id.get().to_string())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if commit_first {
        cmd.env("HICAMP_WINDOW_COMMIT_FIRST", "1");
    }
    let mut child = cmd.spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        let n = std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        if n == 0 || line.trim_end().ends_with("WINDOW-WRITTEN") {
            break;
        }
    }
    assert!(
        line.trim_end().ends_with("WINDOW-WRITTEN"),
        "the child did not get to its writes: {line:?}"
    );
    child.kill().unwrap(); // SIGKILL, before any commit of those writes
    child.wait().unwrap();

    let mem = Memory::open(&file).unwrap();
    let got = mem.map().get(id).unwrap().to_vec();
    let mut want = data.clone();
    if commit_first {
        want[..9].copy_from_slice(b"committed");
    }
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the committed version changed");
    drop(mem);
    let report = fsck(&file).unwrap();
    assert!(report.is_consistent(), "{:?}", report.problems);
}

#[test]
fn crash_between_writes_and_commit_keeps_the_committed_version() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    crash_round(dir.path(), false);
    crash_round(dir.path(), true);
}

#[test]
fn windows_of_a_map_entry_need_a_live_entry() {
    let _g = serial();
    let mem = mem();
    assert!(matches!(
        Window::open_entry(&mem, SegmentId(999)),
        Err(WindowError::Memory(hicamp::Error::NoSuchSegment(_)))
    ));
}

#[test]
fn reads_on_every_line_size() {
    let _g = serial();
    for ls in [16usize, 256, 4096] {
        let mem = Memory::new(Config {
            line_size: ls,
            capacity_lines: (4 << 20) / ls as u64 * 2 + (1 << 16),
            map_capacity: 16,
            ..Config::default()
        })
        .unwrap();
        if !uffd_ok(&mem, false) {
            return;
        }
        let mut rng = Rng::new(ls as u64);
        let data = random_content(&mut rng, (1 << 20) + 1234);
        let seg = mem.segment(&data).unwrap();
        let w = Window::open(&seg).unwrap();
        assert_eq!(w.as_slice(), &data[..], "line size {ls}");
    }
}

#[test]
fn concurrent_writers_then_commit() {
    let _g = serial();
    let mem = mem();
    if !uffd_ok(&mem, true) {
        return;
    }
    let mut rng = Rng::new(77);
    let data = random_content(&mut rng, 2 << 20);
    let id = mem.map().create(&data).unwrap();
    let mut w = Window::open_entry(&mem, id).unwrap();
    let mut want = data.clone();
    let part = data.len() / 4;
    // Each thread writes its quarter (safe: disjoint &mut chunks of the window).
    std::thread::scope(|s| {
        for (t, chunk) in w.as_mut_slice().unwrap().chunks_mut(part).enumerate() {
            s.spawn(move || {
                let mut rng = Rng::new(500 + t as u64);
                for _ in 0..300 {
                    let off = rng.below(chunk.len() as u64 - 64) as usize;
                    chunk[off..off + 64].fill(t as u8 + 1);
                }
            });
        }
    });
    for t in 0..4usize {
        let mut rng = Rng::new(500 + t as u64);
        let chunk = &mut want[t * part..(t + 1) * part];
        for _ in 0..300 {
            let off = rng.below(chunk.len() as u64 - 64) as usize;
            chunk[off..off + 64].fill(t as u8 + 1);
        }
    }
    assert_eq!(w.as_slice(), &want[..]);
    w.commit().unwrap();
    assert_eq!(mem.map().get(id).unwrap(), mem.segment(&want).unwrap());
}

/// The child of `unprivileged_process_gets_user_mode_only_or_the_fix`: run as
/// nobody. A no-op when run as an ordinary test.
#[test]
fn window_unprivileged_child() {
    if std::env::var("HICAMP_WINDOW_UNPRIV").is_err() {
        return;
    }
    let mem = mem();
    let data: Vec<u8> = (0..3 * 4096).map(|i| (i % 13) as u8 + 1).collect();
    let seg = mem.segment(&data).unwrap();
    match Window::open(&seg) {
        Ok(w) => {
            // A system call handed an untouched page: EFAULT when the
            // userfaultfd only serves user-mode faults.
            use std::io::Write;
            let sys = tempfile::tempfile().unwrap().write(&w.as_slice()[8192..]);
            assert_eq!(w.as_slice(), &data[..]);
            println!(
                "UNPRIV-OK user_mode_only={} syscall_on_untouched={}",
                w.user_mode_only(),
                match sys {
                    Ok(_) => "ok".to_string(),
                    Err(e) => e.raw_os_error().unwrap_or(0).to_string(),
                }
            );
        }
        Err(e) => println!("UNPRIV-ERR {e}"),
    }
}

#[test]
fn unprivileged_process_gets_user_mode_only_or_the_fix() {
    use std::os::unix::process::CommandExt;
    let _g = serial();
    if !uffd_ok(&mem(), false) {
        return;
    }
    if !testkit::is_root() {
        testkit::skip("needs root (to run a child as nobody)");
        return;
    }
    let sysctl = std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
        .unwrap_or_default()
        .trim()
        .to_string();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "window_unprivileged_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HICAMP_WINDOW_UNPRIV", "1")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child: {stdout}{stderr}");
    eprintln!("vm.unprivileged_userfaultfd = {sysctl:?}: {stdout}");
    if let Some(i) = stdout.find("UNPRIV-ERR ") {
        // Only acceptable where even user-mode-only userfaultfd is refused,
        // and then the message names the fix.
        let msg = &stdout[i..];
        assert_eq!(sysctl, "0", "{msg}");
        assert!(msg.contains("vm.unprivileged_userfaultfd=1"), "{msg}");
        assert!(msg.contains("/dev/userfaultfd"), "{msg}");
    } else if sysctl == "1" {
        assert!(
            stdout.contains("UNPRIV-OK user_mode_only=false"),
            "{stdout}"
        );
    } else {
        // Linux >= 5.11: user-mode faults only; a system call on an untouched
        // page fails with EFAULT (14) instead of blocking or reading zeros.
        assert!(
            stdout.contains("UNPRIV-OK user_mode_only=true syscall_on_untouched=14"),
            "{stdout}"
        );
    }
}
