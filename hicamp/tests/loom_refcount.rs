//! A loom model of the reference-count / index / free-list protocol of
//! `store/` (`counts.rs`, `index.rs`), explored over every interleaving (and relaxed-memory outcome)
//! of a few threads:
//!
//! * a count goes from 1 to 0 only under the shard lock, which also removes
//!   the line from the index and frees its slot, in one critical section;
//! * a lookup finds and increments under that same lock;
//! * other increments (snapshots) happen without the lock, by a thread that
//!   already holds a reference; decrements above 1 are a CAS without the lock.
//!
//! Checked: a thread holding a reference never sees the slot recycled, a slot
//! is freed exactly once per life, and at the end nothing is left.
//!
//! The model mirrors the protocol by hand, so it runs in every `cargo test`;
//! `tests/loom_store.rs` runs the real `Store` under loom (`--cfg loom`, which
//! swaps the store's primitives for loom's in `src/sync.rs`).

use loom::sync::atomic::{AtomicU32, Ordering::*};
use loom::sync::{Arc, Mutex};
use loom::thread;

const LINE: u32 = 7;
const FREED: u32 = 0;

struct Index {
    present: bool,
    free_slots: u32,
    frees: u32,
    inserts: u32,
}

struct Line {
    count: AtomicU32,
    /// The slot's content: `LINE` while live, `FREED` once recycled.
    content: AtomicU32,
    shard: Mutex<Index>,
}

impl Line {
    /// One line, present, with `refs` references held by the caller.
    fn live(refs: u32) -> Arc<Line> {
        Arc::new(Line {
            count: AtomicU32::new(refs),
            content: AtomicU32::new(LINE),
            shard: Mutex::new(Index {
                present: true,
                free_slots: 0,
                frees: 0,
                inserts: 1,
            }),
        })
    }

    /// `Store::find_or_insert` under the shard lock.
    fn lookup_or_insert(&self) {
        let mut ix = self.shard.lock().unwrap();
        if ix.present {
            let prev = self.count.fetch_add(1, Relaxed);
            assert!(prev >= 1, "an indexed line must have a count");
        } else {
            assert_eq!(ix.free_slots, 1, "the slot is free to reuse");
            ix.free_slots -= 1;
            self.content.store(LINE, Relaxed);
            self.count.store(1, Relaxed);
            ix.present = true;
            ix.inserts += 1;
        }
    }

    /// `Store::acquire`: the caller already holds a reference.
    fn acquire(&self) {
        let prev = self.count.fetch_add(1, Relaxed);
        assert!(prev >= 1, "acquire without a reference");
    }

    /// `Store::release_one`.
    fn release(&self) {
        let mut c = self.count.load(Relaxed);
        loop {
            assert!(c != 0, "release of a free line");
            if c == 1 {
                break;
            }
            match self.count.compare_exchange_weak(c, c - 1, Release, Relaxed) {
                Ok(_) => return,
                Err(now) => c = now,
            }
        }
        let mut ix = self.shard.lock().unwrap();
        let prev = self.count.fetch_sub(1, AcqRel);
        if prev != 1 {
            return; // a lookup took a reference meanwhile
        }
        ix.present = false;
        self.content.store(FREED, Relaxed);
        ix.free_slots += 1;
        ix.frees += 1;
    }

    /// A reader walking the line while holding a reference.
    fn read(&self) {
        assert_eq!(self.content.load(Relaxed), LINE, "read a recycled line");
    }

    fn check_end(&self) {
        let ix = self.shard.lock().unwrap();
        assert_eq!(self.count.load(Relaxed), 0, "a reference leaked");
        assert!(!ix.present);
        assert_eq!(ix.free_slots, 1, "the slot is free exactly once");
        assert_eq!(ix.frees, ix.inserts, "one free per life");
    }
}

/// The last holder drops while another thread looks the same content up.
#[test]
fn last_drop_races_a_lookup() {
    loom::model(|| {
        let l = Line::live(1);
        let a = {
            let l = l.clone();
            thread::spawn(move || {
                l.read();
                l.release();
            })
        };
        let b = {
            let l = l.clone();
            thread::spawn(move || {
                l.lookup_or_insert();
                l.read();
                l.release();
            })
        };
        a.join().unwrap();
        b.join().unwrap();
        l.check_end();
    });
}

/// Snapshots (increments without the lock) race the last drop of another
/// holder and a lookup.
#[test]
fn snapshots_race_drops_and_lookups() {
    loom::model(|| {
        let l = Line::live(2);
        let a = {
            let l = l.clone();
            thread::spawn(move || {
                l.acquire(); // snapshot of the reference it holds
                l.read();
                l.release();
                l.read();
                l.release();
            })
        };
        let b = {
            let l = l.clone();
            thread::spawn(move || {
                l.read();
                l.release();
                l.lookup_or_insert();
                l.release();
            })
        };
        a.join().unwrap();
        b.join().unwrap();
        l.check_end();
    });
}
