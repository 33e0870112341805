//! Concurrency stress: several threads create, snapshot, write, read, send and
//! drop segments whose contents come from a small set, so that lines are
//! shared across threads and last-reference drops race with lookups that
//! revive the same content; other threads hammer shared map entries with
//! writes, compare-and-swap commits and snapshots. Every read is checked
//! against a model; at the end nothing may be left.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use hicamp::{Config, Error, Memory, Segment, SegmentId};
use testkit::Rng;

/// Content from a small family: lines repeat within and across threads.
fn content(kind: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i / 64) as u64 % 3 + kind * 7) as u8)
        .collect()
}

/// Self-checking content for shared map entries: every 8-byte word is `tag`.
fn tagged(tag: u64, words: usize) -> Vec<u8> {
    tag.to_le_bytes().repeat(words)
}

fn check_tagged(v: &[u8]) -> bool {
    v.len().is_multiple_of(8) && v.chunks_exact(8).all(|w| w == &v[..8])
}

fn duration() -> Duration {
    Duration::from_millis(
        std::env::var("HICAMP_STRESS_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1500),
    )
}

#[test]
fn threads_share_lines_and_entries_safely() {
    let mem = Memory::new(Config {
        line_size: 64,
        capacity_lines: 1 << 18,
        map_capacity: 1024,
        ..Config::default()
    })
    .unwrap();
    let shared: Vec<SegmentId> = (0..4)
        .map(|i| mem.map().create(&tagged(i, 200)).unwrap())
        .collect();
    let threads = 4;
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..threads)
        .map(|_| mpsc::channel::<(Segment, Vec<u8>)>())
        .unzip();
    let end = Instant::now() + duration();
    let ops = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|sc| {
        for (t, rx) in rxs.into_iter().enumerate() {
            let mem = mem.clone();
            let txs = txs.clone();
            let shared = &shared;
            let ops = &ops;
            sc.spawn(move || {
                let mut rng = Rng::new(0x1234_5678 + t as u64 * 0x9E37);
                let mut pool: Vec<(Segment, Vec<u8>)> = Vec::new();
                let mut n = 0u64;
                while Instant::now() < end {
                    n += 1;
                    while let Ok((s, m)) = rx.try_recv() {
                        assert_eq!(s.to_vec(), m, "a segment changed in transit");
                        pool.push((s, m));
                    }
                    match rng.below(12) {
                        0 | 1 => {
                            let m = content(rng.below(4), rng.below(3000) as usize);
                            pool.push((mem.segment(&m).unwrap(), m));
                        }
                        2 if !pool.is_empty() => {
                            let i = rng.below(pool.len() as u64) as usize;
                            let snap = (pool[i].0.clone(), pool[i].1.clone());
                            pool.push(snap);
                        }
                        3 if !pool.is_empty() => {
                            let i = rng.below(pool.len() as u64) as usize;
                            let (s, mut m) = (pool[i].0.clone(), pool[i].1.clone());
                            let mut w = s.to_mut();
                            let off = rng.below(m.len() as u64 + 100) as usize;
                            let d = content(rng.below(4), rng.below(200) as usize);
                            w.write_at(off as u64, &d).unwrap();
                            if m.len() < off + d.len() {
                                m.resize(off + d.len(), 0);
                            }
                            m[off..off + d.len()].copy_from_slice(&d);
                            let new = w.freeze();
                            assert_eq!(s.to_vec(), pool[i].1, "a snapshot changed");
                            pool.push((new, m));
                        }
                        4 if !pool.is_empty() => {
                            let i = rng.below(pool.len() as u64) as usize;
                            assert_eq!(pool[i].0.to_vec(), pool[i].1);
                            let _ = pool[i].0.digest();
                        }
                        5 if !pool.is_empty() => {
                            let i = rng.below(pool.len() as u64) as usize;
                            let to = rng.below(threads as u64) as usize;
                            let item = pool.swap_remove(i);
                            let _ = txs[to].send(item);
                        }
                        6 | 7 if !pool.is_empty() => {
                            let i = rng.below(pool.len() as u64) as usize;
                            pool.swap_remove(i);
                        }
                        8 => {
                            let id = shared[rng.below(4) as usize];
                            let v = mem.map().get(id).unwrap().to_vec();
                            assert!(check_tagged(&v), "a torn shared entry");
                        }
                        9 => {
                            let id = shared[rng.below(4) as usize];
                            let tag = rng.below(8);
                            mem.map().write_at(id, 0, &tagged(tag, 200)).unwrap();
                        }
                        10 => {
                            let id = shared[rng.below(4) as usize];
                            let (s, v) = mem.map().get_versioned(id).unwrap();
                            let new = mem.segment(&tagged(rng.below(8), 200)).unwrap();
                            match mem.map().commit(id, v, new) {
                                Ok(_) | Err(Error::Conflict { .. }) => {}
                                Err(e) => panic!("{e}"),
                            }
                            assert!(check_tagged(&s.to_vec()));
                        }
                        _ => {
                            let id = shared[rng.below(4) as usize];
                            if let Ok(snap) = mem.map().snapshot(id) {
                                let v = mem.map().get(snap).unwrap().to_vec();
                                assert!(check_tagged(&v));
                                mem.map().delete(snap).unwrap();
                            }
                        }
                    }
                    if pool.len() > 64 {
                        pool.truncate(32);
                    }
                }
                drop(txs);
                // Drain what others sent before leaving.
                ops.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                drop(pool);
                while let Ok((s, m)) = rx.recv_timeout(Duration::from_millis(50)) {
                    assert_eq!(s.to_vec(), m);
                }
            });
        }
        drop(txs);
    });
    for id in shared {
        mem.map().delete(id).unwrap();
    }
    assert_eq!(mem.map().len(), 1, "only the directory");
    let st = mem.stats();
    assert_eq!(st.live_lines(), 0, "every line released");
    assert_eq!(st.logical_bytes, 0);
    eprintln!(
        "{} operations by {threads} threads; {} dedup hits",
        ops.into_inner(),
        st.leaf_dedup_hits + st.interior_dedup_hits
    );
}

/// Logical bytes stay exact when handles are made on one thread and
/// dropped on another, by more threads than there are per-thread stripes
/// (the rest share a locked one), over waves of threads that exit and hand
/// their stripes to the next wave.
#[test]
fn logical_bytes_stay_exact_across_threads_and_their_exits() {
    let mem = Memory::new(Config::default()).unwrap();
    let base = mem.segment(&content(1, 1000)).unwrap();
    let len = base.len();
    for wave in 0..3u64 {
        let threads = 48;
        let (tx, rx) = mpsc::channel::<Vec<Segment>>();
        let start = std::sync::Barrier::new(threads);
        std::thread::scope(|s| {
            for t in 0..threads {
                let tx = tx.clone();
                let (base, start) = (&base, &start);
                s.spawn(move || {
                    // All at once, a churn of handles made and dropped.
                    start.wait();
                    for _ in 0..20_000 {
                        drop(std::hint::black_box(base.clone()));
                    }
                    // Then 100 handles, passed on.
                    let v: Vec<Segment> = (0..100).map(|_| base.clone()).collect();
                    tx.send(v).unwrap();
                    // And drops some made elsewhere (or its own).
                    if t % 2 == 1 {
                        drop(base.clone());
                    }
                });
            }
            drop(tx);
            let mut held: Vec<Vec<Segment>> = rx.iter().collect();
            assert_eq!(held.len(), threads);
            assert_eq!(
                mem.stats().logical_bytes,
                len * (1 + 100 * threads as u64),
                "wave {wave}: every handle counted once"
            );
            // Dropped on other threads than the ones that made them.
            for chunk in held.chunks_mut(8) {
                let chunk: Vec<Vec<Segment>> = chunk.iter_mut().map(std::mem::take).collect();
                s.spawn(move || drop(chunk));
            }
        });
        assert_eq!(
            mem.stats().logical_bytes,
            len,
            "wave {wave}: back to one handle"
        );
    }
    drop(base);
    assert_eq!(mem.stats().logical_bytes, 0);
}
