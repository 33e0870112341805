//! Quick figures of the memory's speed rows (for profiling under perf or
//! callgrind; the criterion benches in `benches/` are the published figures).
//!
//! `cargo run --release -p hicamp --example speed -- [MiB] [what]`, where
//! `what` is one of `dup`, `unique`, `drop`, `scale`, `meta` or `all`, or
//! `fresh` (one intern into a fresh memory and its drop), or
//! `frames` (`reps * 1000` duplicate builds of one 1500-byte segment, for
//! instruction counts per build under callgrind).
//! Single-thread figures are on-CPU time of the thread (the machines are
//! shared); the scaling figures are wall time.

use std::time::Duration;

/// On-CPU time of this thread (from /proc/thread-self/schedstat), so that a
/// loaded machine's waits for a CPU are not counted.
struct Instant(u64);

impl Instant {
    fn now() -> Instant {
        let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
        Instant(
            s.split_whitespace()
                .next()
                .and_then(|x| x.parse().ok())
                .unwrap_or(0),
        )
    }
    fn elapsed(&self) -> Duration {
        Duration::from_nanos(Instant::now().0 - self.0)
    }
}

use hicamp::{Config, Memory};

fn random_bytes(len: usize, mut s: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    for w in v.chunks_exact_mut(8) {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        w.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    v
}

fn mem_for(bytes: usize) -> Memory {
    let leaves = (bytes / 64) as u64;
    Memory::new(Config {
        capacity_lines: 2 * (leaves + leaves / 15 + 64) + (1 << 16),
        map_capacity: 1 << 16,
        ..Config::default()
    })
    .expect("memory")
}

fn gbps(bytes: usize, s: f64) -> f64 {
    bytes as f64 / s / 1e9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mib: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(256);
    let what = args.get(2).map(String::as_str).unwrap_or("all");
    let reps: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(3);
    let size = mib << 20;
    let data = random_bytes(size, 7);
    let all = what == "all";
    if all || what == "dup" {
        let mem = mem_for(size);
        let keep = mem.segment(&data).expect("intern");
        let t: Vec<f64> = (0..reps)
            .map(|_| {
                let t = Instant::now();
                let s = mem.segment(&data).expect("intern");
                let e = t.elapsed().as_secs_f64();
                drop(s);
                e
            })
            .collect();
        println!("dup {mib} MiB: {:.2} GB/s", gbps(size, median(t)));
        drop(keep);
    }
    if all || what == "unique" || what == "drop" {
        let mem = mem_for(size);
        let t = Instant::now();
        let first = mem.segment(&data).expect("intern");
        let e = t.elapsed().as_secs_f64();
        println!("unique {mib} MiB, fresh memory: {:.2} GB/s", gbps(size, e));
        drop(first);
        let mut ti = Vec::new();
        let mut td = Vec::new();
        for _ in 0..reps {
            let t = Instant::now();
            let s = mem.segment(&data).expect("intern");
            ti.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            drop(s);
            td.push(t.elapsed().as_secs_f64());
            assert_eq!(mem.live_lines(), 0);
            if std::env::var_os("SPEED_INDEX").is_some() {
                println!("index bytes after drop: {}", mem.stats().index_bytes);
            }
        }
        println!("unique {mib} MiB: {:.2} GB/s", gbps(size, median(ti)));
        println!("drop {mib} MiB: {:.3} s", median(td));
        let t = Instant::now();
        let v = data.clone();
        let tc = t.elapsed().as_secs_f64();
        let t = Instant::now();
        drop(v);
        println!(
            "baseline: Vec clone {:.3} s, Vec free {:.4} s",
            tc,
            t.elapsed().as_secs_f64()
        );
    }
    if all || what == "scale" {
        let per = 8 << 20;
        let d: Vec<Vec<u8>> = (0..2).map(|t| random_bytes(per, 100 + t)).collect();
        for dup in [false, true] {
            let mem = mem_for(4 * per);
            let keep: Vec<_> = if dup {
                d.iter().map(|x| mem.segment(x).expect("intern")).collect()
            } else {
                Vec::new()
            };
            let mut r = [0.0; 2];
            for th in [1usize, 2] {
                let mut ts = Vec::new();
                for _ in 0..reps.max(5) {
                    let t = std::time::Instant::now();
                    let segs: Vec<_> = std::thread::scope(|s| {
                        let hs: Vec<_> = d[..th]
                            .iter()
                            .map(|x| s.spawn(|| mem.segment(x).expect("intern")))
                            .collect();
                        hs.into_iter().map(|h| h.join().expect("join")).collect()
                    });
                    ts.push(t.elapsed().as_secs_f64());
                    drop(segs);
                }
                r[th - 1] = gbps(th * per, median(ts));
            }
            println!(
                "scale {}: 1t {:.2} GB/s, 2t {:.2} GB/s, {:.2}x",
                if dup { "dup" } else { "unique" },
                r[0],
                r[1],
                r[1] / r[0]
            );
            drop(keep);
        }
    }
    if what == "fresh" {
        // One intern into a fresh memory (first-touch cost: page faults,
        // index growth), then its drop.
        let mem = mem_for(size);
        let t = Instant::now();
        let s = mem.segment(&data).expect("intern");
        let ti = t.elapsed().as_secs_f64();
        let t = Instant::now();
        drop(s);
        println!(
            "fresh {mib} MiB: intern {:.2} GB/s, drop {:.3} s",
            gbps(size, ti),
            t.elapsed().as_secs_f64()
        );
    }
    if what == "frames" {
        // Small segments (a 1500-byte frame), for instruction counts under
        // callgrind: `reps * 1000` duplicate builds of one frame.
        let mem = mem_for(1 << 20);
        let frame = &data[..1500];
        let keep = mem.segment(frame).expect("intern");
        for _ in 0..reps * 1000 {
            drop(std::hint::black_box(mem.segment(frame).expect("intern")));
        }
        drop(keep);
        println!("frames: {} duplicate builds", reps * 1000);
    }
    if all || what == "meta" {
        let mem = mem_for(size);
        let s = mem.segment(&data).expect("intern");
        let st = mem.stats();
        let live = st.live_lines() as f64;
        println!(
            "meta {mib} MiB: {:.2} B/line (counts {:.2}, index {:.2}, map {:.2}, free lists {:.2})",
            st.metadata_bytes as f64 / live,
            st.refcount_bytes as f64 / live,
            st.index_bytes as f64 / live,
            st.map_bytes as f64 / live,
            st.free_list_bytes as f64 / live
        );
        let s2 = mem.segment(&data).expect("intern");
        println!("two copies: {:.3}x", mem.stats().dedup_ratio());
        drop((s, s2));
    }
}
