//! Stop-the-world recovery and checking: counts, index and free slots
//! recomputed from the roots (live ledgers, names, rings).

use std::sync::atomic::Ordering::*;
use std::time::Duration;

use super::{line_hash, sys, SharedError, SharedResult, Shm, COUNT, INTERIOR, OWNED, SATURATED};

/// What [`SharedMemory::check`](super::SharedMemory::check) found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SharedCheck {
    /// Slots ever used (ids `1..high_water`).
    pub high_water: u64,
    /// Lines reachable from a root.
    pub reachable: u64,
    /// Slots on the free stack or in a stripe's cache.
    pub free: u64,
    /// Slots neither reachable nor free: lost, or counted without a root.
    pub leaked: u64,
    /// Reachable lines whose count differs from their references, and
    /// unreachable ones with a nonzero count.
    pub count_mismatches: u64,
    /// Reachable lines the dedup index cannot find (owned stream lines,
    /// which are never indexed, excepted).
    pub unindexed: u64,
    /// Reachable owned lines: stream bytes written without the index.
    pub owned: u64,
    /// Slots listed free twice, or free and reachable at once.
    pub double_free: u64,
    /// Line ids out of range met in roots or interior lines.
    pub bad_ids: u64,
    /// Attached processes that are dead and not reclaimed yet (their
    /// ledgers were counted as roots).
    pub dead_processes: u64,
    /// Live attached processes (the checker included).
    pub live_processes: u64,
}

impl SharedCheck {
    /// True when nothing leaked and every count, index entry and free slot agrees.
    pub fn is_clean(&self) -> bool {
        self.leaked == 0
            && self.count_mismatches == 0
            && self.unindexed == 0
            && self.double_free == 0
            && self.bad_ids == 0
    }
}

impl Shm {
    /// Sets `stop` from `expect` (0, or a dead stopper's token) to ours.
    fn stop_world(&self, expect: u32) -> bool {
        self.v
            .header()
            .stop
            .compare_exchange(expect, self.token, SeqCst, SeqCst)
            .is_ok()
    }

    /// Wakes every lock waiter and waits until no live process is inside an
    /// operation.
    fn quiesce(&self) {
        let v = &self.v;
        for s in 0..v.geo.stripes {
            sys::futex_wake(&v.stripe(s).lock, i32::MAX);
        }
        sys::futex_wake(&v.header().alloc_lock, i32::MAX);
        sys::futex_wake(&v.header().map_lock, i32::MAX);
        for i in 0..v.geo.procs {
            let s = v.proc_slot(i);
            let mut n = 0u64;
            loop {
                if s.pid.load(SeqCst) == 0 || s.in_op.load(SeqCst) == 0 {
                    break;
                }
                n += 1;
                // A live process leaves soon: it finishes, or gives up at its
                // next wait. Check its liveness now and then only.
                if n.is_multiple_of(64) && !self.slot_alive(i) {
                    break;
                }
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }

    fn start_world(&self) {
        let h = self.v.header();
        h.stop.store(0, SeqCst);
        sys::futex_wake(&h.stop, i32::MAX);
        for c in 0..self.v.geo.conns {
            for r in 0..2 {
                let ring = self.v.ring(c, r);
                ring.wseq.fetch_add(1, SeqCst);
                ring.rseq.fetch_add(1, SeqCst);
                sys::futex_wake(&ring.wseq, i32::MAX);
                sys::futex_wake(&ring.rseq, i32::MAX);
            }
        }
    }

    /// Recovery: stops the world (taking over from the dead stopper whose
    /// token is `expect`, or from a running world when 0), drops the dead
    /// processes' ledgers and connection ends, and rebuilds counts, index and
    /// free slots from the roots. Returns the dead processes reclaimed.
    pub(crate) fn recover(&self, expect: u32) -> SharedResult<u32> {
        Ok(self.recover_with(expect, false)?.unwrap_or(0))
    }

    /// [`recover`](Self::recover); with `inherited`, our own slot was taken
    /// over from a dead process: its ledger and connection ends are dropped
    /// as a dead process's are (our pid stays). `None` if another process
    /// ran the recovery instead.
    pub(crate) fn recover_with(&self, expect: u32, inherited: bool) -> SharedResult<Option<u32>> {
        self.check_fork()?;
        if !self.stop_world(expect) {
            // Someone else is at it: wait for them (or take over if they die).
            self.wait_world()?;
            return Ok(None);
        }
        self.quiesce();
        let v = &self.v;
        let dead: Vec<u32> = (0..v.geo.procs)
            .filter(|&i| v.proc_slot(i).pid.load(SeqCst) != 0 && !self.slot_alive(i))
            .collect();
        let mut dropped = dead.clone();
        if inherited {
            dropped.push(self.me);
        }
        for c in 0..v.geo.conns {
            self.recover_conn(c, &dropped);
        }
        for &i in &dropped {
            for k in 0..v.geo.ledger {
                v.ledger(i, k).store(0, Relaxed);
            }
        }
        for &i in &dead {
            let s = v.proc_slot(i);
            s.in_op.store(0, SeqCst);
            s.start.store(0, SeqCst);
            s.pid.store(0, SeqCst);
        }
        let (counts, _bad) = self.mark();
        let r = self.rebuild(&counts);
        v.header().recoveries.fetch_add(1, Relaxed);
        self.start_world();
        r.map(|()| Some(dead.len() as u32 + inherited as u32))
    }

    /// References to each line `0..high_water` from the roots: live (and,
    /// for a check, dead) processes' ledgers, bound names, and the snapshots
    /// in the rings of open connections. Also returns the bad ids met.
    fn mark(&self) -> (Vec<u32>, u64) {
        let v = &self.v;
        let next = v.header().next_fresh.load(SeqCst).min(v.geo.capacity) as usize;
        let mut counts = vec![0u32; next];
        let mut stack = Vec::new();
        let mut bad = 0u64;
        let mut add = |id: u32, counts: &mut Vec<u32>, stack: &mut Vec<u32>| {
            if id == 0 {
                return;
            }
            if id as usize >= next {
                bad += 1;
                return;
            }
            let c = &mut counts[id as usize];
            *c = c.saturating_add(1);
            if *c == 1 && v.meta(id).count.load(Relaxed) & INTERIOR != 0 {
                stack.push(id);
            }
        };
        for p in 0..v.geo.procs {
            if v.proc_slot(p).pid.load(SeqCst) == 0 {
                continue;
            }
            for k in 0..v.geo.ledger {
                add(v.ledger(p, k).load(Relaxed), &mut counts, &mut stack);
            }
        }
        for i in 0..v.geo.names {
            let e = v.name(i);
            if e.state.load(Relaxed) == 1 {
                let r = e.v[(e.cur.load(Relaxed) & 1) as usize].root.load(Relaxed);
                add(r, &mut counts, &mut stack);
            }
        }
        for c in 0..v.geo.conns {
            if v.conn(c).state.load(Relaxed) != 1 {
                continue;
            }
            for r in 0..2 {
                for id in self.ring_roots(c, r) {
                    add(id, &mut counts, &mut stack);
                }
            }
        }
        while let Some(id) = stack.pop() {
            // SAFETY: the world is stopped: no process writes any line, and
            // reachable lines are never free.
            let line = unsafe { v.line(id) };
            for ch in line.chunks_exact(4) {
                let x = u32::from_le_bytes(ch.try_into().expect("4 bytes"));
                add(x, &mut counts, &mut stack);
            }
        }
        (counts, bad)
    }

    /// Rewrites counts, index, free stack, stripe caches and lock words
    /// from `counts` (the world is stopped).
    fn rebuild(&self, counts: &[u32]) -> SharedResult<()> {
        let v = &self.v;
        let g = v.geo;
        for s in 0..g.stripes {
            for b in 0..g.stripe_buckets {
                v.bucket(s, b).store(0, Relaxed);
            }
            let st = v.stripe(s);
            st.ncache.store(0, Relaxed);
            st.lock.store(0, Relaxed);
        }
        let mut nfree = 0u32;
        let mut full = false;
        for id in (1..counts.len() as u32).rev() {
            let m = v.meta(id);
            let c = counts[id as usize];
            if c == 0 {
                m.count.store(0, Relaxed);
                m.flags.store(0, Relaxed);
                v.free_slot(nfree).store(id, Relaxed);
                nfree += 1;
                continue;
            }
            let kind = m.count.load(Relaxed) & INTERIOR;
            m.count.store(kind | c.min(SATURATED), Relaxed);
            if m.flags.load(Relaxed) & OWNED != 0 {
                // Owned lines stay out of the index.
                continue;
            }
            // SAFETY: the world is stopped and the line is reachable.
            let h = line_hash(kind != 0, unsafe { v.line(id) });
            m.hash.store(h, Relaxed);
            let (s, home) = self.stripe_of(h);
            let mask = g.stripe_buckets - 1;
            let mut b = home;
            let mut placed = false;
            for _ in 0..=mask {
                if v.bucket(s, b).load(Relaxed) == 0 {
                    v.bucket(s, b).store(id, Relaxed);
                    placed = true;
                    break;
                }
                b = (b + 1) & mask;
            }
            full |= !placed;
        }
        let h = v.header();
        h.free_top.store(nfree, Relaxed);
        h.alloc_lock.store(0, Relaxed);
        h.map_lock.store(0, Relaxed);
        std::sync::atomic::fence(SeqCst);
        if full {
            return Err(SharedError::Corrupt(
                "an index stripe overflowed while rebuilding".into(),
            ));
        }
        Ok(())
    }

    /// Stops the world, checks every count, index entry and free slot
    /// against the roots, then rebuilds (which also repairs what operations
    /// that gave up during the stop left behind).
    pub(crate) fn check(&self) -> SharedResult<SharedCheck> {
        self.check_fork()?;
        while !self.stop_world(0) {
            self.wait_world()?;
        }
        self.quiesce();
        let v = &self.v;
        let mut rep = SharedCheck::default();
        for p in 0..v.geo.procs {
            if v.proc_slot(p).pid.load(SeqCst) != 0 {
                if self.slot_alive(p) {
                    rep.live_processes += 1;
                } else {
                    rep.dead_processes += 1;
                }
            }
        }
        let (counts, bad) = self.mark();
        rep.bad_ids = bad;
        rep.high_water = counts.len() as u64;
        let mut free = vec![false; counts.len()];
        let mut mark_free = |id: u32, rep: &mut SharedCheck| {
            if id == 0 || id as usize >= counts.len() {
                rep.bad_ids += 1;
            } else if free[id as usize] || counts[id as usize] > 0 {
                rep.double_free += 1;
            } else {
                free[id as usize] = true;
                rep.free += 1;
            }
        };
        let top = v.header().free_top.load(SeqCst).min(v.geo.capacity);
        for i in 0..top {
            mark_free(v.free_slot(i).load(Relaxed), &mut rep);
        }
        for s in 0..v.geo.stripes {
            let st = v.stripe(s);
            let n = (st.ncache.load(Relaxed) as usize).min(st.cache.len());
            for x in &st.cache[..n] {
                mark_free(x.load(Relaxed), &mut rep);
            }
        }
        for id in 1..counts.len() as u32 {
            let c = counts[id as usize];
            let actual = v.meta(id).count.load(Relaxed);
            if c > 0 {
                rep.reachable += 1;
                let want = c.min(SATURATED);
                let have = actual & COUNT;
                if have != want && !(have >= SATURATED && want >= SATURATED) {
                    rep.count_mismatches += 1;
                }
                if v.meta(id).flags.load(Relaxed) & OWNED != 0 {
                    rep.owned += 1;
                    continue;
                }
                // SAFETY: the world is stopped and the line is reachable.
                let h = line_hash(actual & INTERIOR != 0, unsafe { v.line(id) });
                let (s, home) = self.stripe_of(h);
                let mask = v.geo.stripe_buckets - 1;
                let mut b = home;
                let mut found = false;
                for _ in 0..=mask {
                    let e = v.bucket(s, b).load(Relaxed);
                    if e == id {
                        found = true;
                        break;
                    }
                    if e == 0 {
                        break;
                    }
                    b = (b + 1) & mask;
                }
                if !found {
                    rep.unindexed += 1;
                }
            } else {
                if actual & COUNT != 0 || v.meta(id).flags.load(Relaxed) != 0 {
                    rep.count_mismatches += 1;
                }
                if !free[id as usize] {
                    rep.leaked += 1;
                }
            }
        }
        let r = self.rebuild(&counts);
        self.start_world();
        r.map(|()| rep)
    }
}
