//! Windows (a segment at virtual addresses, paged in through userfaultfd):
//!
//! * first-touch fault-in of a 64 MiB segment (one byte read per page, in
//!   order) through a new read-only window, with read-ahead by the fault handler
//!   (the default), with a second thread filling the next chunk meanwhile,
//!   and without read-ahead; baselines: memcpy of the same 64 MiB into a buffer whose pages
//!   are resident, and `Segment::to_vec` (the copy-out a window avoids);
//! * sequential read (xor of every byte) of a 64 MiB window, cold (a new
//!   window) and warm (pages resident); baseline: the cursor
//!   (`chunk`/`advance`) over the same segment, and the xor of a `Vec`;
//! * write + commit of 256 dirty pages (8 bytes written in each, through the
//!   pointer: one write-protect fault per page, then `commit`); baseline:
//!   `SegmentMut::write_at` of the same 8-byte writes.
//!
//! Target: sequential first-touch read >= 2 GB/s with read-ahead.
//!
//! After criterion's groups, interleaved rounds time every subject once per
//! round next to its baselines (see `rounds`); they add a segment whose
//! leaves are scattered (every page gathered), the handler's run-ahead, and
//! write + commit with write-protect faults instead of async write-protect.
//! `cargo bench --bench window -- rounds` runs only them; `WINDOW_ROUNDS=1,13`
//! only those subjects, `WINDOW_RA=pages` sets the read-ahead.
//!
//! On 64-byte lines. Under `cargo test --benches` the segments are 4 MiB and
//! every routine runs once.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use hicamp::{Memory, Segment, SegmentId, Window, WindowOptions};
use hicamp_benches::{
    median, memory_for, print_header, print_vs, random_bytes, run_mode, subject, time_loop,
    xor_bytes, Group, Profile, RunMode, Target, MIB,
};

const SEED: u64 = 0x3141_0019;
const TOUCH: &str = "window_first_touch";
const READ: &str = "window_seq_read";
const COMMIT: &str = "window_commit";
const DIRTY: usize = 256;
const PAGE: usize = 4096;

fn size() -> usize {
    if run_mode() == RunMode::Test {
        4 * MIB
    } else {
        64 * MIB
    }
}

/// Reads one byte of every page, in order.
fn touch_pages(b: &[u8]) -> u64 {
    b.iter().step_by(PAGE).map(|&x| u64::from(x)).sum()
}

/// XOR of a segment's bytes, walking it chunk by chunk.
fn cursor_xor(seg: &Segment) -> u64 {
    let mut cur = seg.cursor();
    let mut acc = 0;
    loop {
        let c = cur.chunk();
        if c.is_empty() {
            break;
        }
        acc ^= xor_bytes(c);
        cur.advance(c.len());
    }
    acc
}

/// Times `f` on a new window per iteration (the open and the drop are not timed).
fn per_new_window(
    seg: &Segment,
    opts: WindowOptions,
    iters: u64,
    mut f: impl FnMut(&[u8]) -> u64,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let w = Window::open_with(seg, opts).expect("window (needs userfaultfd)");
        let t = Instant::now();
        black_box(f(w.as_slice()));
        total += t.elapsed();
        drop(w);
    }
    total
}

fn benches(c: &mut Criterion) {
    let size = size();
    let data = random_bytes(size, SEED);
    let mem = memory_for(size, 64, 1 << 20);
    let seg = mem.segment(&data).expect("intern");
    let no_ra = WindowOptions {
        read_ahead_pages: 0,
        ..WindowOptions::default()
    };
    let ra = WindowOptions::default();
    let ra_two_threads = WindowOptions {
        background_read_ahead: true,
        ..WindowOptions::default()
    };

    let mut g = Group::new(c, TOUCH, Profile::for_bytes(size));
    g.throughput_bytes(size as u64);
    g.bench(
        "window_read_ahead",
        || (),
        |_, iters| per_new_window(&seg, ra, iters, touch_pages),
    );
    g.bench(
        "window_read_ahead_two_threads",
        || (),
        |_, iters| per_new_window(&seg, ra_two_threads, iters, touch_pages),
    );
    g.bench(
        "window_no_read_ahead",
        || (),
        |_, iters| per_new_window(&seg, no_ra, iters, touch_pages),
    );
    g.bench(
        "memcpy",
        || vec![1u8; size],
        |dst, iters| {
            time_loop(iters, || {
                dst.copy_from_slice(black_box(&data));
                black_box(dst.as_ptr());
            })
        },
    );
    g.bench(
        "segment_to_vec",
        || (),
        |_, iters| time_loop(iters, || black_box(&seg).to_vec()),
    );
    g.finish();

    let mut g = Group::new(c, READ, Profile::for_bytes(size));
    g.throughput_bytes(size as u64);
    g.bench(
        "window_cold_xor",
        || (),
        |_, iters| per_new_window(&seg, ra, iters, xor_bytes),
    );
    g.bench(
        "window_warm_xor",
        || {
            let w = Window::open(&seg).expect("window (needs userfaultfd)");
            assert_eq!(xor_bytes(w.as_slice()), xor_bytes(&data));
            w
        },
        |w, iters| time_loop(iters, || xor_bytes(black_box(w.as_slice()))),
    );
    g.bench(
        "cursor_xor",
        || (),
        |_, iters| time_loop(iters, || cursor_xor(black_box(&seg))),
    );
    g.bench(
        "vec_xor",
        || (),
        |_, iters| time_loop(iters, || xor_bytes(black_box(&data))),
    );
    g.finish();

    // Write + commit: DIRTY random distinct pages, 8 bytes each.
    let pages = {
        let mut s = SEED;
        let mut v: Vec<usize> = Vec::new();
        while v.len() < DIRTY {
            let p = (hicamp_benches::splitmix64(&mut s) % (size / PAGE) as u64) as usize;
            if !v.contains(&p) {
                v.push(p);
            }
        }
        v
    };
    let id: SegmentId = mem.map().insert(seg.clone()).expect("map entry");
    let mut g = Group::new(c, COMMIT, Profile::Small);
    g.bench(
        "window_write_commit",
        || Window::open_entry(&mem, id).expect("window (needs userfaultfd)"),
        |w, iters| {
            // Fault the pages in first, so that the timing holds the
            // write-protect faults and the commit only.
            let _ = touch_pages(w.as_slice());
            let mut total = Duration::ZERO;
            for i in 0..iters {
                let t = Instant::now();
                let s = w.as_mut_slice().expect("writable");
                for &p in &pages {
                    s[p * PAGE + 100..p * PAGE + 108]
                        .copy_from_slice(&(i ^ p as u64).to_le_bytes());
                }
                w.commit().expect("commit");
                total += t.elapsed();
            }
            total
        },
    );
    g.bench(
        "segment_mut_write_at",
        || seg.to_mut(),
        |m, iters| {
            let t = Instant::now();
            for i in 0..iters {
                for &p in &pages {
                    m.write_at((p * PAGE + 100) as u64, &(i ^ p as u64).to_le_bytes())
                        .expect("write_at");
                }
            }
            t.elapsed()
        },
    );
    g.finish();
    check_commit_matches(&mem, id, &pages);
    rounds(&seg, &data, &mem, &pages);
}

/// The window's commit and SegmentMut agree (checked once, outside the timing).
fn check_commit_matches(mem: &Memory, id: SegmentId, pages: &[usize]) {
    let base = mem.map().get(id).expect("entry");
    let mut m = base.to_mut();
    let mut w = Window::open_entry(mem, id).expect("window");
    let s = w.as_mut_slice().expect("writable");
    for &p in pages {
        s[p * PAGE..p * PAGE + 8].copy_from_slice(b"checked!");
        m.write_at((p * PAGE) as u64, b"checked!")
            .expect("write_at");
    }
    w.commit().expect("commit");
    assert_eq!(mem.map().get(id).expect("entry"), m.freeze());
}

fn summary() {
    print_header("window summary (64 MiB segment on 64 B lines; 256 dirty pages)");
    let b = Some(size() as u64);
    let s = |g: &str, label: &str, id: &str| subject(label, format!("{g}/{id}"), b);
    let memcpy = s(TOUCH, "memcpy of the same pages", "memcpy");
    let to_vec = s(TOUCH, "Segment::to_vec", "segment_to_vec");
    let ra = s(
        TOUCH,
        "first touch, read-ahead (default: by the handler)",
        "window_read_ahead",
    );
    print_vs(&ra, &memcpy, Some(Target::MinGbps(2.0)));
    print_vs(&ra, &to_vec, None);
    let two = s(
        TOUCH,
        "first touch, read-ahead + read-ahead thread",
        "window_read_ahead_two_threads",
    );
    print_vs(&two, &memcpy, None);
    print_vs(&two, &ra, None);
    let no_ra = s(TOUCH, "first touch, no read-ahead", "window_no_read_ahead");
    print_vs(&no_ra, &memcpy, None);
    print_vs(&no_ra, &ra, None);
    let cursor = s(READ, "cursor chunk/advance xor", "cursor_xor");
    let vec_xor = s(READ, "Vec xor", "vec_xor");
    for (label, id) in [
        ("window xor, cold (first touch)", "window_cold_xor"),
        ("window xor, warm", "window_warm_xor"),
    ] {
        let x = s(READ, label, id);
        print_vs(&x, &cursor, None);
        print_vs(&x, &vec_xor, None);
    }
    let c = |label: &str, id: &str| subject(label, format!("{COMMIT}/{id}"), None);
    print_vs(
        &c("window: 256 page writes + commit", "window_write_commit"),
        &c("SegmentMut::write_at x256", "segment_mut_write_at"),
        None,
    );
}

/// The machine's load average (1, 5, 15 minutes), as /proc/loadavg gives it.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Interleaved rounds: each round times every subject and its baseline once,
/// one after the other (the order rotating round by round), so that a change
/// of the machine's load hits them alike; the figures are the medians of the
/// rounds, and the ratios the medians of each round's own ratio. This is the
/// figure to quote on a shared machine (criterion runs each subject's samples
/// in one block, minutes apart from its baseline's).
///
/// Run these alone with `cargo bench --bench window -- rounds` (a filter
/// that matches no criterion benchmark).
fn rounds(seg: &Segment, data: &[u8], mem: &Memory, pages: &[usize]) {
    let size = data.len();
    let n = match run_mode() {
        RunMode::Measure => 21,
        RunMode::Quick => 7,
        _ => 1,
    };
    // A segment of the same size whose leaves lie scattered over the arena
    // (its lines were first interned in a random order): every page takes
    // the gather path, as every page did before slots were allocated in
    // input order.
    let mem2 = memory_for(size, 64, 1 << 20);
    let scattered = {
        let data2 = random_bytes(size, SEED ^ 0x5ca7);
        let lines = size / 64;
        let mut perm: Vec<u32> = (0..lines as u32).collect();
        let mut st = SEED;
        for i in (1..lines).rev() {
            let j = (hicamp_benches::splitmix64(&mut st) % (i as u64 + 1)) as usize;
            perm.swap(i, j);
        }
        let mut shuffled = vec![0u8; size];
        for (k, &l) in perm.iter().enumerate() {
            let l = l as usize;
            shuffled[k * 64..(k + 1) * 64].copy_from_slice(&data2[l * 64..(l + 1) * 64]);
        }
        let first = mem2.segment(&shuffled).expect("intern");
        let seg2 = mem2.segment(&data2).expect("intern");
        drop(first);
        seg2
    };
    let load_before = load();
    // WINDOW_RA=pages: the read-ahead of the read-ahead subjects.
    let ra = WindowOptions {
        read_ahead_pages: std::env::var("WINDOW_RA")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(hicamp::DEFAULT_READ_AHEAD_PAGES),
        ..WindowOptions::default()
    };
    let two = WindowOptions {
        background_read_ahead: true,
        ..ra
    };
    let no_ra = WindowOptions {
        read_ahead_pages: 0,
        ..WindowOptions::default()
    };
    let mut dst = vec![1u8; size];
    let id: SegmentId = mem.map().insert(seg.clone()).expect("map entry");
    let mut w = Window::open_entry(mem, id).expect("window (needs userfaultfd)");
    let _ = touch_pages(w.as_slice());
    let id2: SegmentId = mem.map().insert(seg.clone()).expect("map entry");
    let sync_wp = WindowOptions {
        async_write_protect: false,
        ..WindowOptions::default()
    };
    let mut w2 = Window::open_entry_with(mem, id2, sync_wp).expect("window (needs userfaultfd)");
    let _ = touch_pages(w2.as_slice());
    let async_wp = w.async_write_protect();
    let mut m = seg.to_mut();
    const COMMITS: u64 = 8;
    let id3: SegmentId = mem.map().insert(seg.clone()).expect("map entry");
    let run_ahead = WindowOptions {
        run_ahead_chunks: 4,
        ..ra
    };
    let subjects: [&str; 14] = [
        "memcpy",
        "first touch, read-ahead",
        "first touch, read-ahead + thread",
        "first touch, no read-ahead",
        "xor, cold window",
        "xor, cursor",
        "xor, Vec",
        "256 page writes + commit",
        "SegmentMut::write_at x256",
        "256 page writes + commit, WP faults",
        "write_at x256 + freeze + map commit",
        "first touch, read-ahead + run-ahead 4",
        "xor, cold window, run-ahead 4",
        "first touch, read-ahead, scattered",
    ];
    // WINDOW_ROUNDS=1,3 times only those subjects (to profile one).
    let only: Option<Vec<usize>> = std::env::var("WINDOW_ROUNDS")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect());
    let mut t = vec![Vec::new(); subjects.len()];
    let mut direct = 0;
    let mut scattered_direct = 0;
    let mut copied = 0;
    for r in 0..n {
        for k in 0..subjects.len() {
            let s = (k + r) % subjects.len();
            if only.as_ref().is_some_and(|o| !o.contains(&s)) {
                continue;
            }
            let time = |f: &mut dyn FnMut()| {
                let t0 = Instant::now();
                f();
                t0.elapsed().as_secs_f64()
            };
            let win = |opts: WindowOptions, f: fn(&[u8]) -> u64| {
                let w = Window::open_with(seg, opts).expect("window (needs userfaultfd)");
                let t0 = Instant::now();
                black_box(f(w.as_slice()));
                let e = t0.elapsed().as_secs_f64();
                (e, w.stats())
            };
            let e = match s {
                0 => time(&mut || {
                    dst.copy_from_slice(black_box(data));
                    black_box(dst.as_ptr());
                }),
                1 => {
                    let (e, st) = win(ra, touch_pages);
                    direct += st.direct_pages;
                    copied += st.pages_copied;
                    e
                }
                2 => win(two, touch_pages).0,
                3 => win(no_ra, touch_pages).0,
                4 => win(ra, xor_bytes).0,
                5 => time(&mut || {
                    black_box(cursor_xor(black_box(seg)));
                }),
                6 => time(&mut || {
                    black_box(xor_bytes(black_box(data)));
                }),
                7 | 9 => {
                    let w = if s == 7 { &mut w } else { &mut w2 };
                    let e = time(&mut || {
                        for i in 0..COMMITS {
                            let s = w.as_mut_slice().expect("writable");
                            let v = (r as u64 * COMMITS + i) ^ 0x5a5a;
                            for &p in pages {
                                s[p * PAGE + 100..p * PAGE + 108]
                                    .copy_from_slice(&(v ^ p as u64).to_le_bytes());
                            }
                            w.commit().expect("commit");
                        }
                    });
                    e / COMMITS as f64
                }
                11 => win(run_ahead, touch_pages).0,
                13 => {
                    let w = Window::open_with(&scattered, ra).expect("window (needs userfaultfd)");
                    let t0 = Instant::now();
                    black_box(touch_pages(w.as_slice()));
                    let e = t0.elapsed().as_secs_f64();
                    scattered_direct += w.stats().direct_pages;
                    e
                }
                12 => win(run_ahead, xor_bytes).0,
                10 => {
                    let e = time(&mut || {
                        for i in 0..COMMITS {
                            let (base, version) = mem.map().get_versioned(id3).expect("entry");
                            let mut m = base.to_mut();
                            let v = (r as u64 * COMMITS + i) ^ 0x5a5a;
                            for &p in pages {
                                m.write_at((p * PAGE + 100) as u64, &(v ^ p as u64).to_le_bytes())
                                    .expect("write_at");
                            }
                            mem.map().commit(id3, version, m.freeze()).expect("commit");
                        }
                    });
                    e / COMMITS as f64
                }
                _ => {
                    let e = time(&mut || {
                        for i in 0..COMMITS {
                            let v = (r as u64 * COMMITS + i) ^ 0x5a5a;
                            for &p in pages {
                                m.write_at((p * PAGE + 100) as u64, &(v ^ p as u64).to_le_bytes())
                                    .expect("write_at");
                            }
                        }
                    });
                    e / COMMITS as f64
                }
            };
            t[s].push(e);
        }
    }
    drop((w, w2));
    if !hicamp_benches::measuring() {
        return;
    }
    println!();
    println!(
        "=== window interleaved rounds ({n} rounds, 64 B lines, {} MiB; load average {load_before} before, {} after) ===",
        size / MIB,
        load()
    );
    println!(
        "pages copied straight from the arena (read-ahead window): {direct} of {copied}; \
         writes tracked by {}",
        if async_wp {
            "async write-protect + PAGEMAP_SCAN"
        } else {
            "write-protect faults (no async write-protect here)"
        }
    );
    let gbps = |secs: f64| size as f64 / secs / 1e9;
    let ratio = |a: usize, b: usize| {
        let mut v: Vec<f64> = t[a].iter().zip(&t[b]).map(|(x, y)| y / x).collect();
        median(&mut v)
    };
    for (s, name) in subjects.iter().enumerate() {
        if t[s].is_empty() {
            continue;
        }
        let med = median(&mut t[s].clone());
        let mut line = if (7..=10).contains(&s) {
            format!("{name:<36} median {:>9.1} us", med * 1e6)
        } else {
            format!(
                "{name:<36} median {:>7.2} ms  {:>6.2} GB/s",
                med * 1e3,
                gbps(med)
            )
        };
        match s {
            1..=4 | 11..=13 => line += &format!("  {:.3}x memcpy", ratio(s, 0)),
            5 => line += &format!("  {:.3}x memcpy", ratio(s, 0)),
            7 | 9 => {
                line += &format!(
                    "  {:.3}x SegmentMut::write_at, {:.3}x write_at + freeze + commit",
                    ratio(s, 8),
                    ratio(s, 10)
                )
            }
            _ => {}
        }
        if s == 4 || s == 12 {
            line += &format!(", {:.3}x cursor", ratio(s, 5));
        }
        if s == 13 {
            line += &format!(
                " (direct pages: {scattered_direct}); direct copies {:.3}x this",
                ratio(1, 13)
            );
        }
        if s == 11 || s == 12 {
            let without = if s == 11 { 1 } else { 4 };
            line += &format!(", {:.3}x without run-ahead", ratio(s, without));
        }
        if s == 1 {
            let ok = gbps(med) >= 2.0;
            line += if ok {
                "  [target >= 2 GB/s: met]"
            } else {
                "  [target >= 2 GB/s: NOT met]"
            };
        }
        println!("{line}");
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
    summary();
}
