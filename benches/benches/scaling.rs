//! Intern throughput with 1 and 2 threads into one shared memory (64-byte
//! lines), on unique and on duplicate data. Each thread interns its own
//! 8 MiB per iteration; the time is the wall time from the start of the first
//! thread to the end of the last, segments are dropped outside the timing.
//!
//! Baseline from the same run: the same work on 1 thread. Target: at least
//! 1.7x the 1-thread throughput with 2 threads (this machine has 2 cores).
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use criterion::Criterion;
use hicamp::{Memory, Segment};
use hicamp_benches::{memory_for, print_header, random_bytes, subject, Group, Profile, MIB};

const PER_THREAD: usize = 8 * MIB;
const LINE: usize = 64;

/// Interns `data[t]` on thread `t`, all at once; returns the wall time and
/// the segments (to be dropped by the caller, outside the timing).
fn parallel_intern(mem: &Memory, data: &[Vec<u8>]) -> (Duration, Vec<Segment>) {
    let start = Instant::now();
    let segs = std::thread::scope(|s| {
        let hs: Vec<_> = data
            .iter()
            .map(|d| s.spawn(move || mem.segment(d).expect("intern")))
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("thread"))
            .collect::<Vec<_>>()
    });
    (start.elapsed(), segs)
}

fn benches(c: &mut Criterion) {
    let data: Vec<Vec<u8>> = (0..2)
        .map(|t| random_bytes(PER_THREAD, 0x5ca1e + t))
        .collect();
    let mut g = Group::new(c, "scaling", Profile::Small);
    for threads in [1usize, 2] {
        let bytes = (threads * PER_THREAD) as u64;
        g.throughput_bytes(bytes);
        // Unique: the memory holds none of the data, so every line is new; the
        // segments are dropped after each timing, which frees every line again.
        g.bench(
            &format!("unique_{threads}t"),
            || memory_for(2 * PER_THREAD, LINE, 0),
            |mem, iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (d, segs) = parallel_intern(mem, &data[..threads]);
                    total += d;
                    drop(segs);
                }
                total
            },
        );
        // Duplicate: the data is already present, every line is a dedup hit.
        g.bench(
            &format!("duplicate_{threads}t"),
            || {
                let mem = memory_for(2 * PER_THREAD, LINE, 0);
                let keep: Vec<Segment> = data
                    .iter()
                    .map(|d| mem.segment(d).expect("intern"))
                    .collect();
                (mem, keep)
            },
            |(mem, _keep), iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (d, segs) = parallel_intern(mem, &data[..threads]);
                    total += d;
                    drop(segs);
                }
                total
            },
        );
    }
    g.finish();

    print_header("intern scaling (1 vs 2 threads, one shared memory, 8 MiB per thread)");
    for kind in ["unique", "duplicate"] {
        let one = subject(
            format!("{kind} 1 thread"),
            format!("scaling/{kind}_1t"),
            Some(PER_THREAD as u64),
        );
        let two = subject(
            format!("{kind} 2 threads"),
            format!("scaling/{kind}_2t"),
            Some(2 * PER_THREAD as u64),
        );
        // Throughput ratio: per-iteration times compared per byte.
        print_scaling(&two, &one);
    }
}

/// Prints the 2-thread throughput over the 1-thread throughput.
fn print_scaling(two: &hicamp_benches::Subject, one: &hicamp_benches::Subject) {
    match (
        hicamp_benches::median_ns(&two.key),
        hicamp_benches::median_ns(&one.key),
    ) {
        (Some(t2), Some(t1)) => {
            let g2 = two.bytes.unwrap_or(0) as f64 / t2;
            let g1 = one.bytes.unwrap_or(0) as f64 / t1;
            let s = g2 / g1;
            println!(
                "{}: {:.2} GB/s ; {}: {:.2} GB/s ; scaling {:.2}x ; target >= 1.70x: {}",
                two.label,
                g2,
                one.label,
                g1,
                s,
                if s >= 1.7 { "MET" } else { "NOT MET" }
            );
        }
        _ => println!("{}: not measured in this run", two.label),
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
}
