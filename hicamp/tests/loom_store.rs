//! loom runs the real store (`Memory` over `Store`, its shard locks, slot
//! lists and reference counts swapped for loom's by `src/sync.rs`) over every
//! interleaving of two threads that share one line: a last drop racing a
//! lookup of the same content, and snapshots (increments without the lock)
//! racing drops and lookups. Each thread checks every byte it reads while the
//! other interns new content (which would take a slot freed too early), and
//! at the end no line may be left.
//!
//! Under `cfg(loom)` the store has no lock-free readers (`src/sync.rs`:
//! crossbeam-epoch is outside loom's model, so the epoch is a stub whose
//! deferred functions run at once, and every hit takes the shard lock): what
//! is checked here is the locked path, which the lock-free path falls back
//! to. The lock-free path's own guarantees are tested deterministically by
//! the store's unit tests (a pinned reader keeps a freed slot; a dead
//! borrowed child makes a build retry) and under contention by
//! `tests/epoch_hits.rs`.
//!
//! Run: `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release -p hicamp
//! --test loom_store` (without `--cfg loom` this file is empty). `tests/loom_refcount.rs`
//! models the same protocol by hand, and runs in every `cargo test`.
#![cfg(loom)]

use hicamp::{Config, Memory};
use loom::thread;

const LINE: [u8; 16] = [7; 16];
/// Other content: interning it takes the slot `LINE` had if that was freed.
const OTHER: [u8; 16] = [9; 16];

fn memory() -> Memory {
    Memory::new(Config {
        line_size: 16,
        capacity_lines: 64,
        map_capacity: 2,
        ..Config::default()
    })
    .unwrap()
}

/// Runs `f` on a loom thread with a real stack (the model's own thread has a
/// small one, which `Memory::new` overflows), and waits for it.
fn big_stack(f: impl FnOnce() + Send + 'static) -> thread::JoinHandle<()> {
    thread::Builder::new().stack_size(STACK).spawn(f).unwrap()
}

const STACK: usize = 4 << 20;

fn no_line_left(mem: &Memory) {
    let s = mem.stats();
    assert_eq!(
        (s.leaf_lines, s.interior_lines),
        (0, 0),
        "a reference leaked"
    );
}

/// Explores `body` over every interleaving, on a fresh memory, and checks
/// that no line is left after it.
fn model(body: fn(&Memory)) {
    loom::model(on_fresh_memory(body));
}

/// `body` on a fresh memory (in a thread with a big stack), then the check
/// that no line is left: one execution of a model.
fn on_fresh_memory(body: fn(&Memory)) -> impl Fn() + Send + Sync + 'static {
    move || {
        big_stack(move || {
            let mem = memory();
            body(&mem);
            no_line_left(&mem);
        })
        .join()
        .unwrap();
    }
}

/// The last holder drops while another thread interns the same content.
#[test]
fn last_drop_races_a_lookup() {
    model(|mem| {
        let a = mem.segment(&LINE).unwrap();
        let m = mem.clone();
        let t = big_stack(move || {
            let b = m.segment(&LINE).unwrap();
            assert_eq!(b.to_vec(), LINE, "read a recycled line");
        });
        assert_eq!(a.to_vec(), LINE);
        drop(a);
        let o = mem.segment(&OTHER).unwrap();
        t.join().unwrap();
        drop(o);
    });
}

/// A snapshot (an increment without the lock) and its drops race the last
/// drop of another holder and a lookup.
#[test]
fn snapshots_race_drops_and_lookups() {
    model(|mem| {
        let a = mem.segment(&LINE).unwrap();
        let b = a.clone();
        let t = big_stack(move || {
            let snap = b.clone();
            drop(b);
            assert_eq!(snap.to_vec(), LINE, "read a recycled line");
        });
        drop(a);
        let c = mem.segment(&LINE).unwrap();
        assert_eq!(c.to_vec(), LINE);
        drop(c);
        let o = mem.segment(&OTHER).unwrap();
        t.join().unwrap();
        drop(o);
    });
}

/// A batched release (`Memory::release_segments`: counts above one drop
/// without the lock, the dying interior line and then its leaves are freed in
/// batches sorted by shard) races a lookup of one of its leaves, and a
/// snapshot's drop: the lookup either revives the leaf under its shard lock
/// or makes a new one, never a recycled slot.
#[test]
fn batched_release_races_a_lookup() {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(|| {
        big_stack(|| {
            let mem = memory();
            let mut two = LINE.to_vec();
            two.extend_from_slice(&OTHER);
            let s = mem.segment(&two).unwrap();
            let snap = s.clone();
            let m = mem.clone();
            let t = big_stack(move || {
                let leaf = m.segment(&LINE).unwrap();
                assert_eq!(leaf.to_vec(), LINE, "read a recycled line");
                drop(leaf);
            });
            mem.release_segments([s, snap]);
            let o = mem.segment(&[3u8; 16]).unwrap();
            t.join().unwrap();
            drop(o);
            no_line_left(&mem);
        })
        .join()
        .unwrap();
    });
}

/// An owned segment (its line out of the index, its count reaching 0
/// without a lock) loses its two handles in two threads, while one of them
/// interns the same content canonically (a new, indexed line: equal by
/// content) and the other interns new content (which would take a slot
/// given back too early): every read is right and nothing is left.
#[test]
fn owned_drops_race_lookups() {
    model(owned_race);
}

fn owned_race(mem: &Memory) {
    {
        let a = mem.segment_owned(&LINE).unwrap();
        let b = a.clone();
        let t = big_stack(move || {
            let c = b.memory().segment(&LINE).unwrap();
            assert!(c == b, "owned and canonical views differ");
            drop(b);
            assert_eq!(c.to_vec(), LINE, "read a recycled line");
        });
        drop(a);
        let o = mem.segment(&OTHER).unwrap();
        assert_eq!(o.to_vec(), OTHER);
        t.join().unwrap();
        drop(o);
    }
}

/// Explores `body` with a bound on preemptions (for the longer models).
fn model_bounded(body: fn(&Memory)) {
    bounded(on_fresh_memory(body));
}

/// Explores `f` over the interleavings of at most 3 preemptions.
fn bounded(f: impl Fn() + Send + Sync + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(f);
}

/// Under loom the count byte escapes at 2 (`counts::ESC`): copies of a
/// handle (increments without the lock) and their drops in two threads
/// take the count across the escape both ways (into the overflow table and
/// back out, under its lock) while the other holder's drop and a lookup
/// race them; every read is right and the line dies with its last
/// reference.
#[test]
fn copies_cross_the_escape_racing_drops() {
    model_bounded(|mem| {
        let a = mem.segment(&LINE).unwrap();
        let b = a.clone();
        let t = big_stack(move || {
            let snap = b.clone();
            drop(b);
            assert_eq!(snap.to_vec(), LINE, "read a recycled line");
            drop(snap);
        });
        let c = a.clone();
        drop(a);
        let d = mem.segment(&LINE).unwrap();
        drop(c);
        assert_eq!(d.to_vec(), LINE);
        drop(d);
        let o = mem.segment(&OTHER).unwrap();
        t.join().unwrap();
        drop(o);
    });
}

/// Two lookups (increments under the shard lock) take the count past the
/// escape while its last other holder drops it: the drop sees either its
/// last reference (and frees under the shard lock, where a count at the
/// escape takes its extra off instead) or an escaped count; the lookups
/// never get a freed line.
#[test]
fn lookups_cross_the_escape_racing_the_last_drop() {
    model_bounded(|mem| {
        let a = mem.segment(&LINE).unwrap();
        let m = mem.clone();
        let t = big_stack(move || {
            let b1 = m.segment(&LINE).unwrap();
            let b2 = m.segment(&LINE).unwrap();
            assert!(b1 == b2);
            drop(b1);
            assert_eq!(b2.to_vec(), LINE, "read a recycled line");
        });
        drop(a);
        let o = mem.segment(&OTHER).unwrap();
        t.join().unwrap();
        drop(o);
    });
}

/// A bulk hold (`Segment::hold_snapshots`: one move of the count past the
/// escape, under the overflow lock) races a copy and two drops that take
/// the same count into the escape and back out without it: the count ends
/// exactly at the holder's reference plus the held ones.
#[test]
fn bulk_holds_cross_the_escape_racing_copies() {
    // Not `model_bounded`: the held references stay, so lines are left by design.
    bounded(|| {
        big_stack(|| {
            let mem = memory();
            let a = mem.segment(&LINE).unwrap();
            let id = a.root();
            let b = a.clone();
            let t = big_stack(move || {
                let c = b.clone();
                drop(b);
                assert_eq!(c.to_vec(), LINE);
                drop(c);
            });
            a.hold_snapshots(2);
            t.join().unwrap();
            assert_eq!(mem.refcount(id), 3);
            a.hold_forever();
            assert_eq!(mem.refcount(id), 3);
        })
        .join()
        .unwrap();
    });
}
