//! Frames per second through the NIC model on the sim backend: the driver
//! prepares a batch of 32 TX segments and rings one doorbell, A's DMA reads
//! them through the memory and puts them on the wire, B's DMA deposits them
//! into RX segments (line dedup happens here), B's driver harvests them.
//! 64-byte and 1500-byte frames.
//!
//! Baseline from the same run: the same frames moved as plain `Vec<u8>`
//! copies through an mpsc channel (copy in, send, receive, copy out).
//!
//! Profiling: `NIC_PROFILE=<frame bytes>:<batches>` runs only the segment
//! path (64 warm-up batches, then the given number) and prints ns/frame.
//! Every phase of a batch (prepare, doorbell, TX DMA, reap, refill, RX DMA,
//! harvest) is its own non-inlined function, so that
//! `valgrind --tool=callgrind` (instruction counts, immune to the noise of
//! a shared machine; run with 0 and with N batches and take the difference)
//! or `perf record -g` attribute every instruction to a phase.
#![forbid(unsafe_code)]

use std::sync::mpsc;
use std::time::Instant;

use criterion::Criterion;
use hicamp::{Config, Memory, Segment};
use hicamp_benches::{print_header, print_vs, random_bytes, subject, Group, Profile};
use nicdma::sim::{LinkConfig, SimNet, SimPort};
use nicdma::{tx_segment, Nic, NicConfig, VirtioNetHdr};

const BATCH: usize = 32;

struct Rig {
    a: Nic<SimPort>,
    b: Nic<SimPort>,
    frames: Vec<Segment>,
    out: Vec<Segment>,
    next: usize,
    _mem: Memory,
}

fn rig(size: usize) -> Rig {
    let (_net, pa, pb) = SimNet::pair(1, LinkConfig::default()).expect("sim");
    let mem = Memory::new(Config {
        capacity_lines: 1 << 20,
        map_capacity: 1 << 14,
        ..Config::default()
    })
    .expect("memory");
    let cfg = NicConfig::default();
    let a = Nic::new(&mem, pa, cfg).expect("nic");
    let b = Nic::new(&mem, pb, cfg).expect("nic");
    // 256 distinct frames (headers differ, payload random) so that dedup
    // does not make the test trivially cheap.
    let frames = (0..256u64)
        .map(|i| {
            let mut f = random_bytes(size, 0x91c + i);
            f[..12].copy_from_slice(&[2, 0, 0, 0, 0, 0xb, 2, 0, 0, 0, 0, 0xa]);
            tx_segment(&mem, VirtioNetHdr::default(), 64, &f).expect("segment")
        })
        .collect();
    Rig {
        a,
        b,
        frames,
        out: Vec::with_capacity(BATCH),
        next: 0,
        _mem: mem,
    }
}

// The phases of a batch, each its own function so that a profiler
// (callgrind, perf) attributes every instruction to one of them.

/// Driver A: snapshots of a batch into free TX slots.
#[inline(never)]
fn phase_prepare(r: &mut Rig) {
    for _ in 0..BATCH {
        let s = &r.frames[r.next % r.frames.len()];
        r.next += 1;
        r.a.tx_prepare(s).expect("prepare");
    }
}

/// Driver A: one doorbell for the batch.
#[inline(never)]
fn phase_doorbell(r: &mut Rig) {
    r.a.tx_doorbell().expect("doorbell");
}

/// Device A: DMA reads of the TX segments, onto the wire.
#[inline(never)]
fn phase_dma_tx(r: &mut Rig) {
    r.a.dma().expect("dma");
}

/// Driver A: completions.
#[inline(never)]
fn phase_reap(r: &mut Rig) {
    r.a.tx_reap().expect("reap");
    r.a.ack();
}

/// Driver B: RX slots posted.
#[inline(never)]
fn phase_refill(r: &mut Rig) {
    r.b.rx_refill().expect("refill");
}

/// Device B: frames off the wire, deposited into RX segments.
#[inline(never)]
fn phase_dma_rx(r: &mut Rig) {
    r.b.dma().expect("dma");
}

/// Driver B: snapshots of the RX segments for the stack.
#[inline(never)]
fn phase_harvest(r: &mut Rig) {
    // The last batch's segments are retired together, as segstack's
    // interface does with each poll's frames (one batched release of the
    // lines that die, not one per frame).
    r._mem.release_segments(r.out.drain(..));
    let n = r.b.rx_harvest(&mut r.out, BATCH as u32).expect("harvest");
    assert_eq!(n as usize, BATCH);
    r.b.ack();
}

/// One batch end to end.
fn batch(r: &mut Rig) {
    phase_prepare(r);
    phase_doorbell(r);
    phase_dma_tx(r);
    phase_reap(r);
    phase_refill(r);
    phase_dma_rx(r);
    phase_harvest(r);
}

fn benches(c: &mut Criterion) {
    let mut g = Group::new(c, "nic_sim", Profile::Small);
    for size in [64usize, 1500] {
        g.bench(
            &format!("segments_{size}B"),
            || rig(size),
            |r, iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    batch(r);
                }
                t.elapsed()
            },
        );
        g.bench(
            &format!("vec_channel_{size}B"),
            || {
                let frames: Vec<Vec<u8>> =
                    (0..256u64).map(|i| random_bytes(size, 0x91c + i)).collect();
                let (tx, rx) = mpsc::channel::<Vec<u8>>();
                (frames, tx, rx, vec![0u8; size], 0usize)
            },
            |(frames, tx, rx, sink, next), iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    for _ in 0..BATCH {
                        tx.send(frames[*next % frames.len()].clone()).expect("send");
                        *next += 1;
                    }
                    for _ in 0..BATCH {
                        let f = rx.recv().expect("recv");
                        sink.copy_from_slice(&f);
                    }
                }
                std::hint::black_box(&sink);
                t.elapsed()
            },
        );
    }
    g.finish();

    print_header(&format!(
        "NIC model on the sim backend (batches of {BATCH} frames; per batch)"
    ));
    for size in [64usize, 1500] {
        let seg = subject(
            format!("segments {size} B"),
            format!("nic_sim/segments_{size}B"),
            None,
        );
        let vec = subject(
            format!("Vec channel {size} B"),
            format!("nic_sim/vec_channel_{size}B"),
            None,
        );
        print_vs(&seg, &vec, None);
        if let (Some(s), Some(v)) = (
            hicamp_benches::median_ns(&seg.key),
            hicamp_benches::median_ns(&vec.key),
        ) {
            println!(
                "  {size} B frames: segments {:.0} frames/s, Vec channel {:.0} frames/s",
                BATCH as f64 * 1e9 / s,
                BATCH as f64 * 1e9 / v
            );
        }
    }
}

/// `NIC_PROFILE=<size>:<batches>`: run only the segment path, for a profiler
/// (callgrind's instruction counts per frame, `perf record`), and exit.
fn profile(spec: &str) {
    let (size, batches) = spec
        .split_once(':')
        .and_then(|(s, b)| Some((s.parse::<usize>().ok()?, b.parse::<u64>().ok()?)))
        .expect("NIC_PROFILE=<frame bytes>:<batches>");
    let mut r = rig(size);
    // Warm up: every ring slot and every frame used once.
    for _ in 0..64 {
        batch(&mut r);
    }
    let t = Instant::now();
    for _ in 0..batches {
        batch(&mut r);
    }
    let ns = t.elapsed().as_nanos() as f64 / (batches as f64 * BATCH as f64);
    println!("{size} B: {batches} batches, {ns:.0} ns/frame");
}

fn main() {
    if let Ok(spec) = std::env::var("NIC_PROFILE") {
        profile(&spec);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
}
