//! Frames per second through the NIC model on the sim backend: the driver
//! prepares a batch of 32 TX segments and rings one doorbell, A's DMA reads
//! them through the memory and puts them on the wire, B's DMA deposits them
//! into RX segments (line dedup happens here), B's driver harvests them.
//! 64-byte and 1500-byte frames.
//!
//! Baseline from the same run: the same frames moved as plain `Vec<u8>`
//! copies through an mpsc channel (copy in, send, receive, copy out).
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

/// One batch end to end.
fn batch(r: &mut Rig) {
    for _ in 0..BATCH {
        let s = &r.frames[r.next % r.frames.len()];
        r.next += 1;
        r.a.tx_prepare(s).expect("prepare");
    }
    r.a.tx_doorbell().expect("doorbell");
    r.a.dma().expect("dma");
    r.a.tx_reap().expect("reap");
    r.a.ack();
    r.b.rx_refill().expect("refill");
    r.b.dma().expect("dma");
    r.out.clear();
    let n = r.b.rx_harvest(&mut r.out, BATCH as u32).expect("harvest");
    assert_eq!(n as usize, BATCH);
    r.b.ack();
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

fn main() {
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
}
