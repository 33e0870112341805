//! Releasing memory, and what the memory's metadata costs (64-byte lines).
//!
//! * Drop of a segment of unique lines (1 MiB and 256 MiB): every line dies,
//!   so every line's count, index slot and slot go back. Baseline from the
//!   same run: freeing a `Vec` of the same size (pages touched). Target for
//!   256 MiB: <= 0.1 s.
//! * The batch API: 256 segments of 4 KiB (unique lines) retired with one
//!   `Memory::release_segments` call, against dropping them one by one (each
//!   dying line then takes its shard lock on its own).
//! * Metadata per live line (counts + index at its allocated size + map +
//!   free lists, from `Stats`) after interning the working set of unique data
//!   (target <= 12 B), and the dedup ratio of two copies of a random file at
//!   64-byte lines against the 4 KiB page model (KSM,
//!   `hicamp_examples::experiments::pagededup`) on the same bytes (target >=
//!   1.7x). These are counts, not timings: printed in the summary.
//! * Index bytes per live line over 17 working sets from 1 MiB to 256 MiB
//!   (one segment, and 4 KiB segments), mean and max (target <= 5.3 B mean,
//!   <= 5.8 B max): also counts, printed last.
#![forbid(unsafe_code)]

use std::cell::OnceCell;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use hicamp::Segment;
use hicamp_benches::{
    measuring, memory_for, print_header, print_vs, random_bytes, range, size_label, subject,
    working_sets, Group, Profile, Target, KIB, LARGE, MIB,
};
use hicamp_examples::experiments::pagededup::PageDedup;

const LINE: usize = 64;
const SEED: u64 = 0x0d_0e11;
const SMALL_SEGS: usize = 256;
const SMALL_SEG: usize = 4 * KIB;

fn group_name(size: usize) -> String {
    format!("drop_{}", size_label(size))
}

fn benches(c: &mut Criterion) {
    for &size in working_sets() {
        let cell = OnceCell::new();
        let data = || cell.get_or_init(|| random_bytes(size, SEED)).as_slice();
        let mut g = Group::new(c, &group_name(size), Profile::for_bytes(size));
        g.throughput_bytes(size as u64);

        // Drop of a segment whose lines are all unique: each iteration interns
        // the data (untimed) and times the drop, which frees every line.
        g.bench(
            "hicamp_drop_unique",
            || {
                let mem = memory_for(size, LINE, 0);
                drop(mem.segment(data()).expect("intern")); // faults the arena in
                mem
            },
            |mem, iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let seg = mem.segment(black_box(data())).expect("intern");
                    let t = Instant::now();
                    drop(seg);
                    total += t.elapsed();
                    assert_eq!(mem.live_lines(), 0, "the drop frees every line");
                }
                total
            },
        );

        // Baseline: freeing a Vec of the same size whose pages were written.
        g.bench(
            "vec_free",
            || (),
            |_, iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let v = data().to_vec();
                    let t = Instant::now();
                    drop(black_box(v));
                    total += t.elapsed();
                }
                total
            },
        );
        g.finish();
    }

    // The batch API against one-by-one drops of the same segments.
    let bytes = SMALL_SEGS * SMALL_SEG;
    let data = random_bytes(bytes, SEED + 1);
    let segs = |mem: &hicamp::Memory| -> Vec<Segment> {
        data.chunks(SMALL_SEG)
            .map(|d| mem.segment(d).expect("intern"))
            .collect()
    };
    let mut g = Group::new(c, "release_batch", Profile::Small);
    g.throughput_bytes(bytes as u64);
    g.bench(
        "release_segments",
        || memory_for(bytes, LINE, 0),
        |mem, iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let s = segs(mem);
                let t = Instant::now();
                mem.release_segments(s);
                total += t.elapsed();
                assert_eq!(mem.live_lines(), 0);
            }
            total
        },
    );
    g.bench(
        "drop_one_by_one",
        || memory_for(bytes, LINE, 0),
        |mem, iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let s = segs(mem);
                let t = Instant::now();
                for seg in s {
                    drop(seg);
                }
                total += t.elapsed();
                assert_eq!(mem.live_lines(), 0);
            }
            total
        },
    );
    g.finish();
}

fn summary() {
    print_header("release and metadata (64-byte lines)");
    for &size in working_sets() {
        let g = group_name(size);
        let l = size_label(size);
        let b = Some(size as u64);
        let drop = subject(
            format!("drop unique {l}"),
            format!("{g}/hicamp_drop_unique"),
            b,
        );
        let free = subject(format!("Vec free {l}"), format!("{g}/vec_free"), b);
        let target = (size == LARGE).then_some(Target::MaxNs(1e8));
        print_vs(&drop, &free, target);
    }
    let b = Some((SMALL_SEGS * SMALL_SEG) as u64);
    let batch = subject(
        "release_segments of 256 x 4 KiB",
        "release_batch/release_segments",
        b,
    );
    let one = subject(
        "drop one by one of 256 x 4 KiB",
        "release_batch/drop_one_by_one",
        b,
    );
    print_vs(&batch, &one, None);
    if !measuring() {
        return;
    }
    for &size in working_sets() {
        let data = random_bytes(size, SEED);
        let mem = memory_for(2 * size, LINE, 0);
        let a = mem.segment(&data).expect("intern");
        let s = mem.stats();
        let live = s.live_lines() as f64;
        let per = s.metadata_bytes as f64 / live;
        println!(
            "metadata per live line, {} unique: {per:.2} B (counts {:.2}, index {:.2}, map {:.2}, \
             free lists {:.2}) ; target <= 12 B: {}",
            size_label(size),
            s.refcount_bytes as f64 / live,
            s.index_bytes as f64 / live,
            s.map_bytes as f64 / live,
            s.free_list_bytes as f64 / live,
            if per <= 12.0 { "MET" } else { "NOT MET" }
        );
        let b2 = mem.segment(&data).expect("intern");
        let ratio = mem.stats().dedup_ratio();
        let mut pages = PageDedup::new(4 * KIB);
        pages.add(&data);
        pages.add(&data);
        let page_ratio = pages.report().dedup_ratio;
        println!(
            "two copies of a random {} file: {ratio:.3}x at 64 B lines (metadata included) ; \
             4 KiB page model (KSM): {page_ratio:.3}x ; target >= 1.7x: {}",
            size_label(size),
            if ratio >= 1.7 { "MET" } else { "NOT MET" }
        );
        drop((a, b2));
    }
    index_sweep();
}

/// Two copies of a random file over working sets from 1 MiB to 256 MiB (17
/// sizes, a factor of sqrt 2 apart), each interned into a fresh memory as
/// one segment per copy (the store reserves each shard's share of the index
/// up front) and as 4 KiB segments (the tables grow step by step): the
/// index bytes per live line after the first copy, and the dedup ratio
/// after the second (metadata included), against the 4 KiB page model of
/// the same two copies; the target is the ratio's, >= 1.7x.
/// Prefixes of one random buffer.
fn index_sweep() {
    let sizes: Vec<usize> = (0..17)
        .map(|k| ((MIB as f64) * 2f64.powf(f64::from(k) / 2.0)) as usize / LINE * LINE)
        .collect();
    let data = random_bytes(sizes[sizes.len() - 1], SEED + 2);
    let two_copies = |segs: &dyn Fn(&hicamp::Memory, &[u8]) -> Vec<Segment>, size: usize| {
        let mem = memory_for(2 * size, LINE, 0);
        let first = segs(&mem, &data[..size]);
        let s = mem.stats();
        let index = s.index_bytes as f64 / s.live_lines() as f64;
        let second = segs(&mem, &data[..size]);
        let ratio = mem.stats().dedup_ratio();
        drop((first, second));
        (index, ratio)
    };
    let one = |mem: &hicamp::Memory, d: &[u8]| vec![mem.segment(d).expect("intern")];
    let small = |mem: &hicamp::Memory, d: &[u8]| {
        d.chunks(SMALL_SEG)
            .map(|c| mem.segment(c).expect("intern"))
            .collect()
    };
    let pages: Vec<f64> = sizes
        .iter()
        .map(|&size| {
            let mut p = PageDedup::new(4 * KIB);
            p.add(&data[..size]);
            p.add(&data[..size]);
            p.report().dedup_ratio
        })
        .collect();
    let (pmin, pmax) = range(&pages);
    for (name, f) in [
        (
            "one segment per copy",
            &one as &dyn Fn(&hicamp::Memory, &[u8]) -> Vec<Segment>,
        ),
        ("4 KiB segments", &small),
    ] {
        let r: Vec<(f64, f64)> = sizes.iter().map(|&size| two_copies(f, size)).collect();
        let mean = |v: &dyn Fn(&(f64, f64)) -> f64| r.iter().map(v).sum::<f64>() / r.len() as f64;
        let (imean, rmean) = (mean(&|x| x.0), mean(&|x| x.1));
        let imax = r.iter().map(|x| x.0).fold(0.0, f64::max);
        let rmin = r.iter().map(|x| x.1).fold(f64::INFINITY, f64::min);
        let list: Vec<String> = r.iter().map(|x| format!("{:.3}", x.1)).collect();
        println!(
            "two copies of a random file, 1-256 MiB ({} sizes, {name}): ratio mean {rmean:.3}x, \
             min {rmin:.3}x [{}] (index per live line mean {imean:.2} B, max {imax:.2} B) ; \
             4 KiB page model (KSM): {pmin:.3}-{pmax:.3}x ; target >= 1.7x at every size: {}",
            sizes.len(),
            list.join(" "),
            if rmin >= 1.7 { "MET" } else { "NOT MET" }
        );
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
    summary();
}
