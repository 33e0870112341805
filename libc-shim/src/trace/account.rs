//! One process's account: the counters the hooks bump, the pending payload buffer, the
//! interning thread, and the report built from all of them.

use std::path::PathBuf;
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize,
    Ordering::AcqRel, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hicamp::footprint::{sampled, DedupEstimate, LineSampler, PayloadFps, EXACT_METHOD};
use parking_lot::{Condvar, Mutex};

use super::interner::{Interner, Pending};
use super::{Call, CALL_NAMES, N_CALLS};
use crate::config::Config;
use crate::fdtable::{Conn, Origin};
use crate::report::{conn_report, ConnReport, ShimReport};
use crate::{guard, sys};

/// The interning thread wakes at least this often.
const TICK: Duration = Duration::from_millis(100);
/// Pending bytes that wake the interning thread early.
const WAKE_BYTES: usize = 1 << 20;
/// At exit (or a terminating signal) the interning gets this long to finish; then the estimate
/// stands in (the report says so).
const EXIT_GRACE: Duration = Duration::from_millis(80);
/// Payloads from this size on are looked up whole in the fingerprint cache.
const FPS_CACHE_MIN: usize = 1024;
/// Payloads in the fingerprint cache at most.
const FPS_CACHE_ENTRIES: usize = 256;
/// Line sizes the account's sampler handles at most (their levels are mirrored in atomics).
const MAX_SIZES: usize = 16;

/// A thread's payloads smaller than [`FPS_CACHE_MIN`] are remembered whole (per thread) so
/// that a repeat costs one hash and a compare: its counts are merged into the sampler later.
const SMALL_ENTRIES: usize = 1024;
/// Bytes of one thread's small-payload cache at most (payloads and fingerprints).
const SMALL_BYTES: usize = 256 << 10;
/// A thread hands its payload batch to the pending buffer from this size on.
const LOCAL_BATCH: usize = 64 << 10;

/// Ids of accounts (a thread's state belongs to one).
static ACCOUNT_IDS: AtomicU64 = AtomicU64::new(1);

/// A small payload a thread saw, and its repeats not yet merged into the sampler.
#[derive(Debug)]
struct SmallEntry {
    fps: PayloadFps,
    /// The sampler's version when `fps` went in.
    version: u64,
    bytes: Box<[u8]>,
    repeats: u64,
    /// Where the payload is in the thread's batch (`gen`: the batch it is in).
    slot: usize,
    gen: u64,
}

/// One thread's part of the account: taken by its own thread on each capture (uncontended),
/// and by the interning thread or a report to drain it.
#[derive(Debug, Default)]
pub(super) struct Local {
    /// Payload for the interning thread, handed to the pending buffer in batches.
    batch: Pending,
    /// Bumped whenever `batch` is emptied (the small entries' slots are then stale).
    batch_gen: u64,
    /// Payloads (repeats too) in `batch`.
    batch_calls: u64,
    small: std::collections::HashMap<u64, SmallEntry>,
    small_bytes: usize,
    /// Scratch fingerprints.
    fps: PayloadFps,
}

thread_local! {
    /// This thread's state, with the id of the account it belongs to.
    static LOCAL: std::cell::RefCell<Option<(u64, Arc<Mutex<Local>>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Fingerprints of recent large payloads.
#[derive(Debug, Default)]
pub(super) struct FpsCache {
    map: std::collections::HashMap<(usize, u64), CacheEntry>,
    bytes: u64,
}

/// A cached payload: its fingerprints, the sampler version they were absorbed at, its bytes.
type CacheEntry = (Arc<PayloadFps>, u64, Arc<[u8]>);

/// The cache's key of a payload: the xxh3 of up to three 1 KiB pieces (start, middle, end),
/// cheap whatever the length; equal bytes are checked on a hit (a compare is faster than
/// hashing it all).
fn probe_key(data: &[u8]) -> u64 {
    const PIECE: usize = 1024;
    if data.len() <= 3 * PIECE {
        return xxhash_rust::xxh3::xxh3_64(data);
    }
    let mid = data.len() / 2 - PIECE / 2;
    let mut h = xxhash_rust::xxh3::xxh3_64(&data[..PIECE]);
    h ^= xxhash_rust::xxh3::xxh3_64_with_seed(&data[mid..mid + PIECE], 1).rotate_left(21);
    h ^ xxhash_rust::xxh3::xxh3_64_with_seed(&data[data.len() - PIECE..], 2).rotate_left(42)
}

/// How one process's budget is shared.
#[derive(Debug, Clone, Copy)]
pub(super) struct Shares {
    /// The whole budget.
    pub(super) budget: u64,
    /// Sample tables of the estimate, all line sizes together.
    pub(super) sampler: u64,
    /// One pending buffer (there are two: the one filling and the one being interned).
    pub(super) pending: usize,
    /// The memories and the payload cache.
    pub(super) memories: u64,
}

impl Shares {
    pub(super) fn of(budget: u64) -> Shares {
        let sampler = budget / 4;
        let pending = (budget / 16).min(64 << 20);
        Shares {
            budget,
            sampler,
            pending: pending as usize,
            memories: budget - sampler - 2 * pending,
        }
    }
}
/// Connections listed in a report (the totals count every one).
pub const MAX_CONNS: usize = 4096;

/// One process's account (a forked child gets a new one).
#[derive(Debug)]
pub struct Account {
    pub(super) id: u64,
    /// Every thread's state (drained by the interning thread and by reports).
    pub(super) locals: Mutex<Vec<Arc<Mutex<Local>>>>,
    pub(super) pid: i32,
    pub(super) started: Instant,
    pub(super) started_unix_ms: u64,
    pub(super) next_conn: AtomicU64,
    pub(super) conns: Mutex<Vec<Arc<Conn>>>,
    pub(super) conns_total: AtomicU64,
    pub(super) sockets_new: AtomicU64,
    pub(super) calls: [AtomicU64; N_CALLS],
    pub(super) sent_bytes: AtomicU64,
    pub(super) received_bytes: AtomicU64,
    pub(super) send_calls: AtomicU64,
    pub(super) recv_calls: AtomicU64,
    pub(super) send_errors: AtomicU64,
    pub(super) recv_errors: AtomicU64,
    pub(super) captured_sent: AtomicU64,
    pub(super) captured_received: AtomicU64,
    pub(super) uncaptured: AtomicU64,
    pub(super) sendfile_bytes: AtomicU64,
    pub(super) splice_bytes: AtomicU64,
    pub(super) pending: Mutex<Pending>,
    pub(super) pending_len: AtomicUsize,
    pub(super) woken: AtomicBool,
    pub(super) wake: Condvar,
    pub(super) interner: Mutex<Interner>,
    pub(super) shares: Shares,
    /// The estimate's fingerprint tables (every payload goes through them).
    pub(super) sampler: Mutex<LineSampler>,
    /// The sampler's levels, read without its lock by the hot path.
    pub(super) levels: [AtomicU32; MAX_SIZES],
    /// Spare fingerprint buffers for the hot path.
    pub(super) fps_pool: Mutex<Vec<PayloadFps>>,
    /// The fingerprints of recent large payloads, by length and a hash of three pieces, with
    /// their bytes (compared on a hit): a payload sent or received again (a bulk sender's
    /// buffer, a static page) is fingerprinted once, not line by line (the fingerprints are a
    /// function of the bytes). Within an eighth of the sample tables' share of the budget.
    pub(super) fps_cache: Mutex<FpsCache>,
    /// The memories still hold every payload: the report is exact.
    pub(super) exact: AtomicBool,
    /// Why the memories were given up.
    pub(super) exact_stop: Mutex<Option<String>>,
    /// The interner's payload, byte and snapshot-hit counts after its last batch (a report
    /// that cannot wait for the memories reads these).
    pub(super) interned: [AtomicU64; 3],
    /// A final report is being written: interning must end by this instant (nanoseconds after
    /// `started`; 0: no hurry).
    pub(super) hurry_until: AtomicU64,
    /// 0: no interning thread yet; 1: running; 2: could not be started (interning inline).
    pub(super) bg: AtomicU8,
    pub(super) report_path: Mutex<Option<PathBuf>>,
    /// The report files, opened before the process gave up root (`setuid`): written through
    /// these descriptors, since the unprivileged user may not create files there.
    pub(super) held: Mutex<Option<(sys::HeldFile, sys::HeldFile)>>,
    pub(super) finished: AtomicBool,
}

pub(super) static ACCOUNT: AtomicPtr<Account> = AtomicPtr::new(std::ptr::null_mut());
/// A report was asked for by a signal.
pub(super) static SIGNALLED: AtomicBool = AtomicBool::new(false);
/// A terminating signal (SIGTERM, SIGINT) arrived: its number; the interning thread writes the
/// final report while the handler waits for [`TERM_DONE`].
pub(super) static TERMINATING: AtomicI32 = AtomicI32::new(0);
/// The final report for [`TERMINATING`] is written (or there was nothing to write).
pub static TERM_DONE: AtomicBool = AtomicBool::new(false);

impl Account {
    pub(super) fn new() -> Account {
        Account {
            id: ACCOUNT_IDS.fetch_add(1, Relaxed),
            locals: Mutex::new(Vec::new()),
            pid: sys::getpid(),
            started: Instant::now(),
            started_unix_ms: sys::unix_millis(),
            next_conn: AtomicU64::new(1),
            conns: Mutex::new(Vec::new()),
            conns_total: AtomicU64::new(0),
            sockets_new: AtomicU64::new(0),
            calls: std::array::from_fn(|_| AtomicU64::new(0)),
            sent_bytes: AtomicU64::new(0),
            received_bytes: AtomicU64::new(0),
            send_calls: AtomicU64::new(0),
            recv_calls: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            recv_errors: AtomicU64::new(0),
            captured_sent: AtomicU64::new(0),
            captured_received: AtomicU64::new(0),
            uncaptured: AtomicU64::new(0),
            sendfile_bytes: AtomicU64::new(0),
            splice_bytes: AtomicU64::new(0),
            pending: Mutex::new(Pending::default()),
            pending_len: AtomicUsize::new(0),
            woken: AtomicBool::new(false),
            wake: Condvar::new(),
            interner: Mutex::new(Interner::default()),
            shares: Shares::of(Config::get().budget),
            sampler: Mutex::new(LineSampler::new(
                &Config::get().line_sizes,
                // An eighth of the share is the fingerprint cache's.
                Shares::of(Config::get().budget).sampler / 8 * 7,
            )),
            levels: std::array::from_fn(|_| AtomicU32::new(0)),
            fps_pool: Mutex::new(Vec::new()),
            fps_cache: Mutex::new(FpsCache::default()),
            exact: AtomicBool::new(true),
            exact_stop: Mutex::new(None),
            interned: std::array::from_fn(|_| AtomicU64::new(0)),
            hurry_until: AtomicU64::new(0),
            bg: AtomicU8::new(0),
            report_path: Mutex::new(None),
            held: Mutex::new(None),
            finished: AtomicBool::new(false),
        }
    }

    /// A new connection account, listed in the report (up to [`MAX_CONNS`]).
    pub fn new_conn(
        &self,
        family: crate::fdtable::Family,
        ty: crate::fdtable::SockType,
        origin: Origin,
        fd: i32,
    ) -> Arc<Conn> {
        let c = Arc::new(Conn::new(
            self.next_conn.fetch_add(1, Relaxed),
            family,
            ty,
            origin,
            fd,
        ));
        self.sockets_new.fetch_add(1, Relaxed);
        self.register(&c);
        c
    }

    pub(super) fn register(&self, c: &Arc<Conn>) {
        self.conns_total.fetch_add(1, Relaxed);
        let mut l = self.conns.lock();
        if l.len() < MAX_CONNS {
            l.push(c.clone());
        }
    }

    /// Counts one call of an interposed function.
    #[inline]
    pub fn count(&self, call: Call) {
        self.calls[call as usize].fetch_add(1, Relaxed);
    }

    pub(super) fn has_activity(&self) -> bool {
        self.sockets_new.load(Relaxed) > 0
            || self.send_calls.load(Relaxed) > 0
            || self.recv_calls.load(Relaxed) > 0
    }

    /// One captured payload: `direct` in place, or what `copy` appends (exactly `n` bytes).
    /// Its lines are fingerprinted for the estimate (always: the estimate must see all the
    /// payload); while the memories are exact it is also copied to the pending buffer for the
    /// interning thread, unless that buffer is full (the thread is behind): then the memories
    /// are given up and the estimate reports.
    pub(super) fn capture(&self, n: usize, direct: Option<&[u8]>, copy: impl FnOnce(&mut Vec<u8>)) {
        let gathered;
        let data: &[u8] = match direct {
            Some(d) => d,
            None => {
                let mut v = Vec::with_capacity(n);
                copy(&mut v);
                gathered = v;
                &gathered
            }
        };
        if data.len() < FPS_CACHE_MIN && self.with_local(|l| self.capture_small(l, data)) {
            return;
        }
        let sizes = &Config::get().line_sizes;
        let k = sizes.len().min(MAX_SIZES);
        let mut levels = [0u32; MAX_SIZES];
        for (l, a) in levels.iter_mut().zip(&self.levels[..k]) {
            *l = a.load(Relaxed);
        }
        let key = (data.len() >= FPS_CACHE_MIN).then(|| (data.len(), probe_key(data)));
        // A candidate with the same length and probe is a hit only if its bytes are equal.
        let cached = key
            .and_then(|k| self.fps_cache.lock().map.get(&k).cloned())
            .filter(|(_, _, bytes)| **bytes == *data)
            .map(|(fps, v, _)| (fps, v));
        // Returns the sampler's version after the payload went in.
        let absorb = |fps: &PayloadFps, again: Option<u64>| {
            let mut s = self.sampler.lock();
            if !again.is_some_and(|v| s.absorb_again(fps, v)) {
                s.absorb(fps);
                for (a, l) in self.levels.iter().zip(s.levels()) {
                    a.store(l, Relaxed);
                }
            }
            s.version()
        };
        if let (Some((fps, v)), Some(k)) = (cached, key) {
            // Fingerprinted at levels no higher than now: absorb drops what no longer
            // qualifies; at the same version only the counts change.
            let now = absorb(&fps, Some(v));
            if now != v {
                if let Some(e) = self.fps_cache.lock().map.get_mut(&k) {
                    e.1 = now;
                }
            }
        } else {
            let mut fps = self.fps_pool.lock().pop().unwrap_or_default();
            fps.compute(data, &sizes[..k], &levels[..k]);
            let version = absorb(&fps, None);
            if let Some(k) = key {
                let keep = Arc::new(fps.without_scratch());
                let copy: Arc<[u8]> = Arc::from(data);
                let mut c = self.fps_cache.lock();
                let bytes = (keep.heap_bytes() + copy.len()) as u64;
                if c.map.len() >= FPS_CACHE_ENTRIES || c.bytes + bytes > self.shares.sampler / 8 {
                    c.map.clear();
                    c.bytes = 0;
                }
                c.bytes += bytes;
                c.map.insert(k, (keep, version, copy));
            }
            let mut pool = self.fps_pool.lock();
            if pool.len() < 8 {
                pool.push(fps);
            }
        }
        if !self.exact.load(Relaxed) {
            return;
        }
        let mut p = self.pending.lock();
        if p.bytes.len() + data.len() > self.shares.pending {
            let behind = p.bytes.len();
            drop(p);
            self.stop_exact(format!(
                "the interning thread fell behind by {} (the pending buffer's share of the \
                 budget)",
                hicamp::footprint::human_bytes(behind as u64)
            ));
            return;
        }
        p.push(data);
        self.pending_len.store(p.bytes.len(), Relaxed);
    }

    /// Runs `f` on this thread's state (made and registered on first use). False when the
    /// thread has none to give (its thread-locals are gone, or a nested call).
    fn with_local(&self, f: impl FnOnce(&mut Local)) -> bool {
        LOCAL
            .try_with(|cell| {
                let Ok(mut slot) = cell.try_borrow_mut() else {
                    return false;
                };
                if slot.as_ref().is_none_or(|(id, _)| *id != self.id) {
                    let l = Arc::new(Mutex::new(Local::default()));
                    self.locals.lock().push(l.clone());
                    *slot = Some((self.id, l));
                }
                let Some((_, l)) = slot.as_ref() else {
                    return false;
                };
                f(&mut l.lock());
                true
            })
            .unwrap_or(false)
    }

    /// A small payload on this thread: a repeat of one it saw is counted (merged into the
    /// sampler later: the same counts as absorbing it again); a new one is fingerprinted and
    /// absorbed now. While exact, the bytes join the thread's batch for the interning thread.
    fn capture_small(&self, l: &mut Local, data: &[u8]) {
        let key = xxhash_rust::xxh3::xxh3_64(data);
        let exact = self.exact.load(Relaxed);
        if !exact && !l.batch.lens.is_empty() {
            l.batch = Pending::default();
            l.batch_gen += 1;
        }
        match l.small.get_mut(&key) {
            Some(e) if *e.bytes == *data => {
                e.repeats += 1;
                if exact {
                    if e.gen == l.batch_gen && e.slot < l.batch.reps.len() {
                        l.batch.reps[e.slot] += 1;
                    } else {
                        e.slot = l.batch.lens.len();
                        e.gen = l.batch_gen;
                        l.batch.push(data);
                    }
                }
            }
            _ => {
                let sizes = &Config::get().line_sizes;
                let k = sizes.len().min(MAX_SIZES);
                let mut levels = [0u32; MAX_SIZES];
                for (lv, a) in levels.iter_mut().zip(&self.levels[..k]) {
                    *lv = a.load(Relaxed);
                }
                l.fps.compute(data, &sizes[..k], &levels[..k]);
                let version = {
                    let mut s = self.sampler.lock();
                    s.absorb(&l.fps);
                    self.publish_levels(&s);
                    if l.small.len() >= SMALL_ENTRIES || l.small_bytes >= SMALL_BYTES {
                        merge_repeats(l, &mut s);
                        self.publish_levels(&s);
                        l.small.clear();
                        l.small_bytes = 0;
                    }
                    s.version()
                };
                let fps = l.fps.without_scratch();
                l.small_bytes += fps.heap_bytes() + data.len() + 64;
                // A key taken by other bytes: that entry's repeats are merged first.
                if let Some(mut old) = l.small.remove(&key) {
                    if old.repeats > 0 {
                        let mut s = self.sampler.lock();
                        merge_one(&mut old, &mut s);
                        self.publish_levels(&s);
                    }
                }
                let slot = l.batch.lens.len();
                if exact {
                    l.batch.push(data);
                }
                l.small.insert(
                    key,
                    SmallEntry {
                        fps,
                        version,
                        bytes: data.into(),
                        repeats: 0,
                        slot,
                        gen: l.batch_gen,
                    },
                );
            }
        }
        // A batch of repeats is handed over too (after 64 Ki calls at most), so that the
        // interning thread keeps up with the bytes it stands for.
        if l.batch.bytes.len() >= LOCAL_BATCH || l.batch_calls >= 1 << 16 {
            self.hand_over(l);
        } else {
            l.batch_calls += 1;
        }
    }

    /// Mirrors the sampler's levels for the hot path.
    fn publish_levels(&self, s: &LineSampler) {
        for (a, lv) in self.levels.iter().zip(s.levels()) {
            a.store(lv, Relaxed);
        }
    }

    /// Moves a thread's batch to the pending buffer (giving up the memories when that is
    /// full: the interning thread is behind).
    fn hand_over(&self, l: &mut Local) {
        if l.batch.lens.is_empty() {
            return;
        }
        l.batch_gen += 1;
        l.batch_calls = 0;
        if !self.exact.load(Relaxed) {
            l.batch = Pending::default();
            return;
        }
        let mut p = self.pending.lock();
        if p.bytes.len() + l.batch.bytes.len() > self.shares.pending {
            let behind = p.bytes.len();
            drop(p);
            l.batch = Pending::default();
            self.stop_exact(format!(
                "the interning thread fell behind by {} (the pending buffer's share of the \
                 budget)",
                hicamp::footprint::human_bytes(behind as u64)
            ));
            return;
        }
        if p.lens.is_empty() && p.bytes.capacity() <= l.batch.bytes.capacity() {
            std::mem::swap(&mut *p, &mut l.batch);
            l.batch.clear();
        } else {
            p.append(&mut l.batch);
        }
        self.pending_len.store(p.bytes.len(), Relaxed);
    }

    /// Merges every thread's repeats into the sampler and its batch into the pending buffer:
    /// after this the shared state holds all the payload captured so far.
    pub(super) fn drain_locals(&self) {
        let locals: Vec<Arc<Mutex<Local>>> = self.locals.lock().clone();
        for l in &locals {
            self.drain_one(&mut l.lock());
        }
        drop(locals);
        // The states of threads that ended (only this list holds them now, so nothing can
        // add to them): drained once more and let go.
        self.locals.lock().retain(|l| {
            if Arc::strong_count(l) > 1 {
                return true;
            }
            self.drain_one(&mut l.lock());
            false
        });
    }

    fn drain_one(&self, l: &mut Local) {
        if l.small.values().any(|e| e.repeats > 0) {
            let mut s = self.sampler.lock();
            merge_repeats(l, &mut s);
            self.publish_levels(&s);
        }
        self.hand_over(l);
    }

    /// Gives up the exact memories (the first reason stays); the interning thread frees them.
    pub(super) fn stop_exact(&self, reason: String) {
        if self.exact.swap(false, AcqRel) {
            *self.exact_stop.lock() = Some(reason);
            if !self.woken.swap(true, Relaxed) {
                self.wake.notify_one();
            }
        }
    }

    /// After a capture, with no lock held: start or wake the interning thread (the application
    /// never waits for it).
    pub(super) fn after_capture(&'static self) {
        let len = self.pending_len.load(Relaxed);
        match self.bg.load(Acquire) {
            1 => {}
            // Started even when nothing is to be interned: it writes the report on SIGTERM.
            0 => self.start_thread(),
            _ => {
                if len >= WAKE_BYTES || (!self.exact.load(Relaxed) && len > 0) {
                    self.flush(None);
                }
                return;
            }
        }
        if len >= WAKE_BYTES && !self.woken.swap(true, Relaxed) {
            self.wake.notify_one();
        }
    }

    /// True when this process's interning thread runs (it writes the report on SIGTERM).
    pub(crate) fn thread_running(&self) -> bool {
        self.bg.load(Acquire) == 1 && self.pid == sys::getpid()
    }

    fn start_thread(&'static self) {
        if self.bg.compare_exchange(0, 1, AcqRel, Acquire).is_err() {
            return;
        }
        let spawned = sys::spawn_quiet("hicamp-shim", Some(256 << 10), move || self.thread_main());
        if let Err(e) = spawned {
            self.bg.store(2, Release);
            sys::diag(&format!(
                "cannot start the interning thread ({e}); interning in the application's threads"
            ));
        }
    }

    fn thread_main(&'static self) {
        guard::enter_forever();
        // Interning runs when a CPU would otherwise idle: the application's threads first.
        sys::set_idle_priority();
        let interval = Config::get().interval;
        let mut next_report = interval.map(|d| Instant::now() + d);
        loop {
            {
                let mut p = self.pending.lock();
                if p.bytes.len() < WAKE_BYTES
                    && !SIGNALLED.load(Relaxed)
                    && TERMINATING.load(Relaxed) == 0
                {
                    self.wake.wait_for(&mut p, TICK);
                }
                self.woken.store(false, Relaxed);
            }
            let term = TERMINATING.load(Relaxed);
            if term != 0 {
                let _ = guard::shielded(|| {
                    if !self.finished.swap(true, Relaxed) && self.has_activity() {
                        let name = if term == libc::SIGINT {
                            "SIGINT"
                        } else {
                            "SIGTERM"
                        };
                        self.report(name, true);
                    }
                });
                TERM_DONE.store(true, Release);
                return;
            }
            if self.finished.load(Relaxed) {
                return;
            }
            let _ = guard::shielded(|| {
                self.flush(None);
                let now = Instant::now();
                let periodic = next_report.is_some_and(|t| now >= t);
                if periodic {
                    next_report = interval.map(|d| now + d);
                }
                if SIGNALLED.swap(false, Relaxed) {
                    self.report("signal", false);
                } else if periodic {
                    self.report("periodic", false);
                }
            });
        }
    }

    /// Nanoseconds since the account started.
    fn now_ns(&self) -> u64 {
        self.started
            .elapsed()
            .as_nanos()
            .min(u128::from(u64::MAX - 1)) as u64
    }

    /// Interns everything pending; with a `deadline` (a final report), gives up the memories
    /// if that cannot be done by then. Once the memories are given up, frees them and the
    /// pending buffers.
    fn flush(&self, deadline: Option<Instant>) {
        self.drain_locals();
        if deadline.is_some() && !self.exact.load(Acquire) {
            // A final report of an estimate: nothing to intern, nothing to wait for.
            drop(std::mem::take(&mut *self.pending.lock()));
            self.pending_len.store(0, Relaxed);
            return;
        }
        let mut it = match deadline {
            None => self.interner.lock(),
            Some(d) => match self.interner.try_lock_until(d) {
                Some(g) => g,
                None => {
                    self.stop_exact(
                        "exit came while the interning thread was busy (at most 100 ms are \
                         spent on it)"
                            .into(),
                    );
                    drop(std::mem::take(&mut *self.pending.lock()));
                    self.pending_len.store(0, Relaxed);
                    return;
                }
            },
        };
        if !self.exact.load(Acquire) {
            drop(std::mem::take(&mut *self.pending.lock()));
            self.pending_len.store(0, Relaxed);
            // At exit the memories go with the process (unmapping them takes time).
            if deadline.is_none() {
                let mems = it.drop_all();
                drop(it);
                drop(mems);
            }
            return;
        }
        let mut batch = std::mem::take(&mut it.spare);
        {
            let mut p = self.pending.lock();
            std::mem::swap(&mut *p, &mut batch);
            self.pending_len.store(p.bytes.len(), Relaxed);
        }
        // Interning goes on while the memories are exact and a final report's deadline (if
        // any) has not passed.
        let hurry = || {
            let h = self.hurry_until.load(Relaxed);
            self.exact.load(Relaxed) && (h == 0 || self.now_ns() < h)
        };
        let r = it.ingest(
            &batch.bytes,
            &batch.lens,
            &batch.reps,
            self.shares.memories,
            &hurry,
        );
        for (a, v) in self
            .interned
            .iter()
            .zip([it.payloads, it.bytes, it.snapshot_hits])
        {
            a.store(v, Relaxed);
        }
        batch.clear();
        match r {
            Ok(()) => {
                if batch.bytes.capacity() <= self.shares.pending {
                    it.spare = batch;
                }
            }
            Err(stop) => {
                self.stop_exact(stop.reason);
                drop(std::mem::take(&mut *self.pending.lock()));
                self.pending_len.store(0, Relaxed);
                if deadline.is_none() {
                    let mems = it.drop_all();
                    drop(it);
                    drop(mems);
                }
            }
        }
    }

    /// Builds the report.
    fn build(&self, reason: &str, final_report: bool, deadline: Option<Instant>) -> ShimReport {
        let cfg = Config::get();
        // The interning thread may hold the memories past a final report's deadline (then it
        // gives them up at that deadline): the wait is bounded.
        // Exact: the report needs the memories; a final report waits for them until its
        // deadline (the interning thread stops there). Estimated: they give only their errors,
        // not worth waiting for (the interned counts are atomics).
        let it = match deadline {
            _ if !self.exact.load(Acquire) => self.interner.try_lock(),
            Some(d) => self.interner.try_lock_until(d + Duration::from_millis(5)),
            None => Some(self.interner.lock()),
        };
        if it.is_none() && self.exact.load(Acquire) {
            self.stop_exact("the memories could not be read in time for the report".into());
        }
        let mut conns: Vec<ConnReport> = self
            .conns
            .lock()
            .iter()
            .filter(|c| {
                c.sent.load(Relaxed) + c.received.load(Relaxed) > 0
                    || c.origin == Origin::Accept
                    || c.connected.load(Relaxed)
            })
            .filter(|c| !c.listening.load(Relaxed))
            .map(|c| conn_report(c))
            .collect();
        conns.sort_by_key(|c| c.id);
        let total = self.conns_total.load(Relaxed);
        let (line_sizes, dedup_method, dedup_estimate) = if self.exact.load(Acquire) {
            let ls = it.as_ref().map(|i| i.line_sizes()).unwrap_or_default();
            (ls, EXACT_METHOD.to_string(), None)
        } else {
            let per_line_size = self.sampler.lock().estimates();
            let reason = self
                .exact_stop
                .lock()
                .clone()
                .unwrap_or_else(|| "the memories were given up".into());
            (
                per_line_size.iter().map(|e| e.line_size_report()).collect(),
                sampled::METHOD.to_string(),
                Some(DedupEstimate {
                    method: sampled::METHOD.to_string(),
                    reason,
                    per_line_size,
                }),
            )
        };
        ShimReport {
            tool: "hicamp libc-shim".to_string(),
            mode: "trace".to_string(),
            run_id: cfg.run_id.clone(),
            pid: self.pid,
            ppid: sys::getppid(),
            program: sys::cmdline(),
            reason: reason.to_string(),
            final_report,
            started_unix_ms: self.started_unix_ms,
            duration_secs: self.started.elapsed().as_secs_f64(),
            sent_bytes: self.sent_bytes.load(Relaxed),
            received_bytes: self.received_bytes.load(Relaxed),
            send_calls: self.send_calls.load(Relaxed),
            recv_calls: self.recv_calls.load(Relaxed),
            send_errors: self.send_errors.load(Relaxed),
            recv_errors: self.recv_errors.load(Relaxed),
            captured_sent_bytes: self.captured_sent.load(Relaxed),
            captured_received_bytes: self.captured_received.load(Relaxed),
            uncaptured_bytes: self.uncaptured.load(Relaxed),
            sendfile_bytes: self.sendfile_bytes.load(Relaxed),
            splice_bytes: self.splice_bytes.load(Relaxed),
            copy_avoided_bytes: self.captured_sent.load(Relaxed)
                + self.captured_received.load(Relaxed),
            payloads_interned: self.interned[0].load(Relaxed),
            payload_bytes_interned: self.interned[1].load(Relaxed),
            payload_snapshot_hits: self.interned[2].load(Relaxed),
            sockets_traced: total,
            connections_omitted: total.saturating_sub(MAX_CONNS as u64),
            calls: CALL_NAMES
                .iter()
                .zip(&self.calls)
                .filter_map(|(n, c)| {
                    let v = c.load(Relaxed);
                    (v > 0).then(|| (n.to_string(), v))
                })
                .collect(),
            connections: conns,
            line_sizes,
            intern_errors: it.as_ref().map(|i| i.errors()).unwrap_or_default(),
            dedup_method,
            dedup_estimate,
            budget_bytes: self.shares.budget,
            // Captured and not in the memories when the report was built (past the budget,
            // behind, or still pending).
            payload_bytes_not_interned: (self.captured_sent.load(Relaxed)
                + self.captured_received.load(Relaxed))
            .saturating_sub(self.interned[1].load(Relaxed)),
        }
    }

    /// Interns what is pending and writes the report (files when a prefix is set, else the
    /// summary on stderr for a final report).
    pub(super) fn report(&self, reason: &str, final_report: bool) {
        let deadline = final_report.then(|| Instant::now() + EXIT_GRACE);
        if deadline.is_some() {
            // Interning gets a bounded time; past it the estimate reports.
            self.hurry_until
                .store(self.now_ns() + EXIT_GRACE.as_nanos() as u64, Relaxed);
        }
        self.flush(deadline);
        let r = self.build(reason, final_report, deadline);
        if !self.finished.load(Relaxed) {
            // The process goes on (a failed exec): no more hurry.
            self.hurry_until.store(0, Relaxed);
        }
        let text = r.to_text();
        let Some(prefix) = &Config::get().report else {
            // No report prefix: the summary goes to a file of its own, never to a descriptor
            // (fd 2 may be the application's socket); a terminal on fd 2 is told its name.
            if final_report {
                let p = sys::tmp_dir().join(format!("hicamp-shim.{}.txt", self.pid));
                match sys::replace(&p, text.as_bytes()) {
                    Ok(()) if sys::stderr_is_terminal() => {
                        let line =
                            format!("hicamp-shim[{}]: summary in {}\n", self.pid, p.display());
                        let _ = sys::write_all(2, line.as_bytes());
                    }
                    Ok(()) => {}
                    Err(e) => sys::diag(&format!("cannot write {}: {e}", p.display())),
                }
            }
            return;
        };
        let json = match serde_json::to_vec_pretty(&r) {
            Ok(mut j) => {
                j.push(b'\n');
                j
            }
            Err(e) => {
                sys::diag(&format!("cannot encode the report: {e}"));
                return;
            }
        };
        if let Some((j, t)) = self.held.lock().as_ref() {
            match j.rewrite(&json) {
                Ok(()) => {
                    let _ = t.rewrite(text.as_bytes());
                    return;
                }
                Err(e) => sys::diag(&format!("cannot write the held report: {e}")),
            }
        }
        let mut path = self.report_path.lock();
        if path.is_none() {
            *path = claim_report_path(prefix, self.pid);
        }
        let Some(p) = path.as_ref() else { return };
        if let Err(e) = sys::replace(p, &json) {
            sys::diag(&format!("cannot write the report {}: {e}", p.display()));
            return;
        }
        if let Err(e) = sys::replace(&p.with_extension("txt"), text.as_bytes()) {
            sys::diag(&format!("cannot write the summary: {e}"));
        }
    }
}

impl Account {
    /// The process is about to give up root for another user: claim the report files now and
    /// keep them open, so that the report can be written whatever the directory's permissions
    /// say to that user.
    pub(super) fn hold_report_files(&self) {
        let Some(prefix) = &Config::get().report else {
            return;
        };
        let mut held = self.held.lock();
        if held.is_some() {
            return;
        }
        let mut path = self.report_path.lock();
        if path.is_none() {
            *path = claim_report_path(prefix, self.pid);
        }
        let Some(p) = path.as_ref() else { return };
        match (
            sys::HeldFile::open(p),
            sys::HeldFile::open(&p.with_extension("txt")),
        ) {
            (Ok(j), Ok(t)) => *held = Some((j, t)),
            (Err(e), _) | (_, Err(e)) => {
                sys::diag(&format!(
                    "cannot open the report {} ahead: {e}",
                    p.display()
                ));
            }
        }
    }
}

/// Absorbs one entry's pending repeats: counts only while the sampler's version is the one the
/// entry went in at (its sampled lines are in the tables), else it is absorbed whole once.
fn merge_one(e: &mut SmallEntry, s: &mut LineSampler) {
    while e.repeats > 0 {
        if !s.absorb_again(&e.fps, e.version) {
            s.absorb(&e.fps);
            e.version = s.version();
        }
        e.repeats -= 1;
    }
}

fn merge_repeats(l: &mut Local, s: &mut LineSampler) {
    for e in l.small.values_mut() {
        merge_one(e, s);
    }
}

/// Picks `PREFIX.PID.json`, or `PREFIX.PID.K.json` when an earlier image of this process (before
/// an exec) took it, creating the file so that no other image takes it.
fn claim_report_path(prefix: &std::path::Path, pid: i32) -> Option<PathBuf> {
    for k in 0..1000 {
        let mut name = prefix.as_os_str().to_owned();
        if k == 0 {
            name.push(format!(".{pid}.json"));
        } else {
            name.push(format!(".{pid}.{k}.json"));
        }
        let p = PathBuf::from(name);
        match sys::create_new(&p, b"") {
            Ok(true) => return Some(p),
            Ok(false) => continue,
            Err(e) => {
                sys::diag(&format!("cannot create the report {}: {e}", p.display()));
                return None;
            }
        }
    }
    sys::diag("cannot find a free report file name");
    None
}

/// This process's account (created on first use).
pub fn account() -> &'static Account {
    let p = ACCOUNT.load(Acquire);
    if !p.is_null() {
        // SAFETY: a non-null ACCOUNT points to a leaked `Box<Account>`, never freed.
        return unsafe { &*p };
    }
    let fresh = Box::into_raw(Box::new(Account::new()));
    match ACCOUNT.compare_exchange(std::ptr::null_mut(), fresh, AcqRel, Acquire) {
        // SAFETY: `fresh` was just leaked and is now published, never freed.
        Ok(_) => unsafe { &*fresh },
        Err(existing) => {
            // SAFETY: `fresh` was never published: this thread owns it.
            drop(unsafe { Box::from_raw(fresh) });
            // SAFETY: as above, a published account is never freed.
            unsafe { &*existing }
        }
    }
}

pub(super) fn current() -> Option<&'static Account> {
    let p = ACCOUNT.load(Acquire);
    // SAFETY: a non-null ACCOUNT points to a leaked `Box<Account>`, never freed.
    (!p.is_null()).then(|| unsafe { &*p })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shares never add up to more than the budget, for the smallest budget too.
    #[test]
    fn shares_fit_the_budget() {
        for budget in [crate::config::MIN_BUDGET, 32 << 20, 256 << 20, 64 << 30] {
            let s = Shares::of(budget);
            assert!(
                s.sampler + 2 * s.pending as u64 + s.memories <= budget,
                "{s:?}"
            );
            assert!(s.memories >= budget / 2, "{s:?}");
            assert!(s.pending as u64 <= 64 << 20);
        }
    }

    /// A cached payload with the same key but other bytes is fingerprinted anew; an equal one
    /// counts as it would have: the sampler ends as if every payload had been hashed.
    #[test]
    fn the_fingerprint_cache_changes_no_count() {
        let acct = Account::new();
        let a: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut c = a.clone();
        c[3_000] ^= 0x55;
        assert_eq!(probe_key(&a), probe_key(&c));
        for d in [&a, &c, &c, &a] {
            acct.capture(d.len(), Some(d), |_| {});
        }
        let sizes = &Config::get().line_sizes;
        let mut s = LineSampler::new(sizes, 1 << 30);
        let mut p = PayloadFps::default();
        for d in [&a, &c, &c, &a] {
            p.compute(d, sizes, &vec![0; sizes.len()]);
            s.absorb(&p);
        }
        acct.drain_locals();
        assert_eq!(acct.sampler.lock().estimates(), s.estimates());
        assert_eq!(acct.pending.lock().lens.len(), 4);
    }

    /// Small payloads go through this thread's state: repeats merged later end with the counts
    /// of absorbing every payload; every payload reaches the pending buffer once drained.
    #[test]
    fn small_repeats_merged_later_change_no_count() {
        let acct = Account::new();
        let payloads: Vec<Vec<u8>> = (0..600u32)
            .map(|i| {
                let k = if i % 3 == 0 { i } else { i % 7 };
                format!(
                    "*2\r\n$3\r\nGET\r\n$9\r\nkey:{k:05}\r\n{}",
                    "x".repeat((k % 90) as usize)
                )
                .into_bytes()
            })
            .collect();
        for d in &payloads {
            acct.capture(d.len(), Some(d), |_| {});
        }
        acct.drain_locals();
        let sizes = &Config::get().line_sizes;
        let mut s = LineSampler::new(sizes, Shares::of(Config::get().budget).sampler / 8 * 7);
        let mut p = PayloadFps::default();
        for d in &payloads {
            let levels: Vec<u32> = s.levels().collect();
            p.compute(d, sizes, &levels);
            s.absorb(&p);
        }
        let (a, b) = (acct.sampler.lock().estimates(), s.estimates());
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(
                x.line_size_report().logical_bytes,
                y.line_size_report().logical_bytes
            );
            assert_eq!(x.line_size_report(), y.line_size_report());
        }
        // Each distinct payload once, with its count: the same bytes in all.
        let pending = acct.pending.lock();
        assert_eq!(pending.reps.iter().sum::<u64>(), payloads.len() as u64);
        let mut off = 0;
        let mut total = 0;
        for (&n, &r) in pending.lens.iter().zip(&pending.reps) {
            let p = &pending.bytes[off..off + n];
            assert_eq!(
                payloads.iter().filter(|q| q.as_slice() == p).count() as u64,
                r
            );
            off += n;
            total += n as u64 * r;
        }
        assert_eq!(total, payloads.iter().map(|p| p.len() as u64).sum::<u64>());
    }

    /// The state of a thread that ended is drained and let go (a thread-per-connection server
    /// does not pile them up), its payload counted.
    #[test]
    fn an_ended_thread_state_is_drained_and_dropped() {
        let acct: &'static Account = Box::leak(Box::new(Account::new()));
        for _ in 0..3 {
            std::thread::spawn(move || {
                for _ in 0..10 {
                    acct.capture(5, Some(b"+OK\r\n"), |_| {});
                }
            })
            .join()
            .unwrap();
        }
        assert_eq!(acct.locals.lock().len(), 3);
        acct.drain_locals();
        assert!(acct.locals.lock().is_empty());
        let e = acct.sampler.lock().estimates();
        assert_eq!(e[0].line_size_report().logical_bytes, 150);
        assert_eq!(acct.pending.lock().reps.iter().sum::<u64>(), 30);
    }

    #[test]
    fn probe_key_sees_length_and_pieces() {
        let a = vec![7u8; 10_000];
        let mut b = a.clone();
        assert_eq!(probe_key(&a), probe_key(&b));
        b[9_999] = 8;
        assert_ne!(probe_key(&a), probe_key(&b));
        // A change between the pieces is not seen by the key: the cache compares bytes.
        let mut c = a.clone();
        c[3_000] = 9;
        assert_eq!(probe_key(&a), probe_key(&c));
    }
}
