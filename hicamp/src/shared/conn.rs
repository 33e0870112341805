//! Connections: two single-producer single-consumer rings of snapshots in
//! the mapping, one per direction, with futex wake-ups.
//!
//! ```text
//!   end A --- ring 0: [tail .. head) snapshots (root, height, len, off, n) ---> end B
//!   end A <-- ring 1 ------------------------------------------------------- end B
//! ```
//!
//! Each entry owns one reference to its root: `send` copies the caller's
//! bytes into lines once and publishes the root; `recv` copies out of the
//! lines once and releases the entry when it is used up.
//!
//! **Owned or deduplicated.** While the reader keeps up, a stream's bytes
//! live for microseconds: hashing and indexing them (about half the
//! writer's time at 4 KiB lines, the rest being the one copy) saves no
//! memory. So `send` writes *owned* lines (`Shm::build_owned`: slots from
//! the free stack, no hash, no index, no stripe lock), and the reader's
//! last release gives those slots straight back to the free stack, after
//! its copy-out (the entry's reference is dropped only then). Bytes that
//! *sit* are deduplicated: when [`DEDUP_BACKLOG`] bytes (256 KiB) or more
//! are unconsumed in the ring **and** the reader consumed nothing (the
//! ring's `rseq` did not move) while the writer sent the last 256 KiB, the
//! reader is stalled or absent, and `send` interns (hash + index,
//! deduplicated across processes and connections), as before. 256 KiB is
//! four 64 KiB messages, within which a reader that keeps up consumes;
//! what a stalled reader leaves undeduplicated is what was queued before
//! it stalled (at most the ring's 4 MiB, as for any unique bytes) and the
//! first 256 KiB plus one entry (at most 1 MiB) sent after. A writer faster
//! than an active reader keeps the ring full: deduplicating on the backlog
//! alone halved the stream (2.2-2.7 against 4.2-4.8 GB/s with owned lines
//! only, same runs), and on "no consumption since the previous send" still
//! interned a large share of the sends (the writer's profile showed as
//! much hashing as copying), while saving nothing: the reader frees those
//! bytes within
//! milliseconds. A memory without free-stack slots for an owned build
//! interns too. [`Conn::set_dedup_backlog`] changes the threshold per end
//! (0: always deduplicate, `u64::MAX`: never).
//! A reader with nothing to read sleeps on the ring's event word (`wseq`),
//! after an optional bounded spin ([`Conn::set_spin`], off by default); the
//! writer wakes it only when it says it sleeps (`reader_waiting`), so a busy
//! stream makes no system calls. The writer waits the same way on `rseq`
//! when the ring is full (entries, or 4 MiB of bytes in flight).
//!
//! Closing follows TCP: `shutdown_write` (and `close`) sends FIN, so the
//! reader gets the data then EOF; `close` with unread data sends RST, so the
//! reader gets [`SharedError::Reset`]; writing to a peer that closed gives
//! `Reset` (EPIPE). A peer that dies is closed for it by the recovery the
//! survivor starts after a sleep that found the peer's process gone: FIN, or
//! RST if it had unread data, as the kernel does for a killed process.
//! A connection whose second end never accepts stays allocated until it is
//! accepted and closed, or until the connecting process dies.

use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{sys, SharedError, SharedMemory, SharedResult, SharedSegment, Shm, NO_SLOT};

/// Names a connection in its shared memory: the connecting process passes it
/// to the accepting one (the shim sends it over the kernel connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId(pub u32);

const FIN: u32 = 1;
const RST: u32 = 2;
const CLOSED: u32 = 1;
const END_NONE: u32 = 0;
const END_OPEN: u32 = 1;
const END_CLOSED: u32 = 2;
/// Bytes in flight per direction before the writer waits.
pub(crate) const RING_BYTES: u64 = 4 << 20;
/// Default backlog from which `send` deduplicates ([`Conn::set_dedup_backlog`]).
pub const DEDUP_BACKLOG: u64 = 256 << 10;
/// Longest segment one `send` entry holds.
const MAX_ENTRY: usize = 1 << 20;
/// Sleep between liveness checks of the peer.
const PEER_CHECK: Duration = Duration::from_millis(50);
/// Default spin before sleeping: none. On a loaded machine (two cores shared
/// by many processes) a spinning waiter takes the core its peer needs: a
/// 10 us spin made the ping-pong 7x slower than sleeping at once.
const DEFAULT_SPIN: Duration = Duration::ZERO;

/// Upper bound of the adaptive spin in microseconds (0: off); see
/// [`set_adaptive_spin`].
static ADAPTIVE_MAX_US: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
/// The spin an adaptive waiter tries after its budget fell to zero, once
/// every [`PROBE_EVERY`] waits.
const PROBE_US: u32 = 4;
const PROBE_EVERY: u32 = 16;

/// Lets every connection end of this process whose fixed spin is zero spin
/// adaptively before it sleeps, up to `max`: the budget doubles after a spin
/// that saw the peer's data (a peer running on another core answers within
/// microseconds, where a futex sleep and wake-up costs tens of them on a
/// VM) and halves after one that did not (a loaded machine, where spinning
/// takes the core the peer needs), down to zero with a short probe every
/// 16 waits. `Duration::ZERO` turns it off (the default).
pub fn set_adaptive_spin(max: Duration) {
    ADAPTIVE_MAX_US.store(max.as_micros().min(u32::MAX as u128) as u32, Relaxed);
}

/// `writer_waiting` values: the writer sleeps until the ring is half empty,
/// or until any entry is consumed.
const WAIT_HALF: u32 = 1;
const WAIT_ANY: u32 = 2;

/// True when ring `g` holds at most half its entries and half its bytes.
fn half_empty(shm: &Shm, g: &super::layout::RingHeader) -> bool {
    let used = g.head.load(Acquire).wrapping_sub(g.tail.load(Acquire));
    used <= shm.v.geo.ring_entries / 2 && g.bytes.load(Acquire) <= RING_BYTES / 2
}

/// After a consume: wakes a sleeping writer if what it waits for happened.
fn wake_writer(shm: &Shm, g: &super::layout::RingHeader) {
    let w = g.writer_waiting.load(SeqCst);
    if w == WAIT_ANY || (w == WAIT_HALF && half_empty(shm, g)) {
        sys::futex_wake(&g.rseq, 1);
    }
}

fn end_bits(ends: u32, e: u32) -> u32 {
    (ends >> (2 * e)) & 3
}

fn with_end(ends: u32, e: u32, bits: u32) -> u32 {
    (ends & !(3 << (2 * e))) | (bits << (2 * e))
}

/// One end of a connection. Dropping it closes it.
///
/// Each ring has one producer and one consumer: at most one thread may be
/// in `send`/`send_segment` and one in `recv`/`recv_segment` on an end at a
/// time (a caller with more threads, like the shim, serializes them).
pub struct Conn {
    shm: Arc<Shm>,
    c: u32,
    end: u32,
    nonblocking: bool,
    spin: Duration,
    /// The adaptive spin's budget in microseconds, and waits since it fell
    /// to zero.
    adapt_us: std::sync::atomic::AtomicU32,
    adapt_waits: std::sync::atomic::AtomicU32,
    closed: bool,
    /// Unconsumed bytes in the outgoing ring from which `send` interns
    /// (deduplicates) instead of writing owned lines.
    dedup_backlog: u64,
    /// The outgoing ring's `rseq` at the previous `send` (the reader
    /// consumed since when it differs).
    seen_rseq: std::sync::atomic::AtomicU32,
    /// Bytes sent since `rseq` was last seen to move.
    idle_run: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Conn({}, end {})", self.c, self.end)
    }
}

/// One look at an end's readiness ([`Conn::poll_bits`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PollBits {
    /// Bytes queued to read.
    pub data: bool,
    /// The peer shut down its writing side (EOF after the data).
    pub fin: bool,
    /// The peer reset the connection.
    pub rst: bool,
    /// `send` would not block.
    pub writable: bool,
    /// The peer closed its end (our writes fail).
    pub peer_closed: bool,
    /// This end shut down its writing side.
    pub write_shut: bool,
    /// Bumped by every event of the incoming ring (a publish, FIN, RST).
    pub in_seq: u32,
    /// Bumped by every event of the outgoing ring (a consume, the peer's close).
    pub out_seq: u32,
}

enum RState {
    Data,
    Eof,
    Reset,
    Empty,
}

enum WState {
    Space,
    Full,
    Shutdown,
    Reset,
}

impl SharedMemory {
    /// Opens a connection as its first end; give [`Conn::id`] to the peer,
    /// which calls [`accept`](Self::accept).
    pub fn connect(&self) -> SharedResult<Conn> {
        let shm = &self.shm;
        let v = &shm.v;
        let c = shm.run(|| {
            for c in 0..v.geo.conns {
                let h = v.conn(c);
                if h.state.compare_exchange(0, 1, AcqRel, Relaxed).is_ok() {
                    for r in 0..2 {
                        reset_ring(shm, c, r);
                    }
                    h.slot[0].store(shm.token, Relaxed);
                    h.slot[1].store(0, Relaxed);
                    h.ends.store(with_end(0, 0, END_OPEN), Release);
                    return Ok(c);
                }
            }
            Err(SharedError::ConnsFull(v.geo.conns).into())
        })?;
        Ok(Conn::new(shm.clone(), c, 0))
    }

    /// Attaches as the second end of connection `id`.
    pub fn accept(&self, id: ConnId) -> SharedResult<Conn> {
        let shm = &self.shm;
        let v = &shm.v;
        if id.0 >= v.geo.conns {
            return Err(SharedError::NotAcceptable(id.0));
        }
        let h = v.conn(id.0);
        shm.run(|| {
            if h.state.load(Acquire) != 1 {
                return Err(SharedError::NotAcceptable(id.0).into());
            }
            let e = h.ends.load(Acquire);
            if end_bits(e, 1) != END_NONE || end_bits(e, 0) == END_NONE {
                return Err(SharedError::NotAcceptable(id.0).into());
            }
            if h.ends
                .compare_exchange(e, with_end(e, 1, END_OPEN), AcqRel, Relaxed)
                .is_err()
            {
                return Err(SharedError::NotAcceptable(id.0).into());
            }
            h.slot[1].store(shm.token, Release);
            Ok(())
        })?;
        Ok(Conn::new(shm.clone(), id.0, 1))
    }
}

impl SharedMemory {
    /// Takes over end `end` of connection `id` in this process: a forked
    /// child that inherited it, or the parent again. Only one process may
    /// use an end at a time; the last to adopt it owns it (its death closes
    /// the end, its [`Conn::close`] sends FIN).
    pub fn adopt(&self, id: ConnId, end: u32) -> SharedResult<Conn> {
        let shm = &self.shm;
        if id.0 >= shm.v.geo.conns || end > 1 {
            return Err(SharedError::NotAcceptable(id.0));
        }
        let h = shm.v.conn(id.0);
        shm.run(|| {
            if h.state.load(Acquire) != 1 || end_bits(h.ends.load(Acquire), end) != END_OPEN {
                return Err(SharedError::NotAcceptable(id.0).into());
            }
            h.slot[end as usize].store(shm.token, Release);
            Ok(())
        })?;
        Ok(Conn::new(shm.clone(), id.0, end))
    }
}

fn reset_ring(shm: &Shm, c: u32, r: u32) {
    let g = shm.v.ring(c, r);
    g.head.store(0, Relaxed);
    g.tail.store(0, Relaxed);
    g.tail_off.store(0, Relaxed);
    g.bytes.store(0, Relaxed);
    g.wflags.store(0, Relaxed);
    g.rflags.store(0, Relaxed);
    g.reader_waiting.store(0, Relaxed);
    g.writer_waiting.store(0, Relaxed);
    g.tokens.store(0, Relaxed);
    g.filled.store(0, Relaxed);
    g.pins.store(0, Relaxed);
}

impl Shm {
    /// Roots held by ring `r` of connection `c` (its published, unconsumed
    /// entries).
    pub(crate) fn ring_roots(&self, c: u32, r: u32) -> Vec<u32> {
        let g = self.v.ring(c, r);
        let t = g.tail.load(Acquire);
        let h = g.head.load(Acquire);
        let n = h.wrapping_sub(t);
        if n > self.v.geo.ring_entries {
            return Vec::new();
        }
        (0..n)
            .map(|i| self.v.entry(c, r, t.wrapping_add(i)).root.load(Relaxed))
            .collect()
    }

    /// Recovery's part for connection `c`: closes the ends owned by dead
    /// processes, frees the connection once no live end remains (the world
    /// is stopped; the recount that follows drops the freed entries).
    pub(crate) fn recover_conn(&self, c: u32, dead: &[u32]) {
        let v = &self.v;
        let h = v.conn(c);
        if h.state.load(SeqCst) != 1 {
            return;
        }
        let mut ends = h.ends.load(SeqCst);
        let mut connector_died = false;
        for e in 0..2u32 {
            let s = h.slot[e as usize].load(SeqCst);
            if s == 0 || !dead.contains(&(s - 1)) || end_bits(ends, e) != END_OPEN {
                continue;
            }
            let wr = v.ring(c, e);
            let rr = v.ring(c, 1 - e);
            let unread = rr.head.load(SeqCst) != rr.tail.load(SeqCst);
            wr.wflags
                .fetch_or(if unread { FIN | RST } else { FIN }, SeqCst);
            rr.rflags.fetch_or(CLOSED, SeqCst);
            h.slot[e as usize].store(0, SeqCst);
            ends = with_end(ends, e, END_CLOSED);
            connector_died |= e == 0;
        }
        let (a, b) = (end_bits(ends, 0), end_bits(ends, 1));
        // Free when no end can use it any more: both closed, none attached
        // (the connector died inside `connect`), or the connector died before
        // anyone accepted. A connector that closed normally before the accept
        // leaves its data (and FIN) for the acceptor.
        let waiting_accept = a == END_CLOSED && b == END_NONE && !connector_died;
        if a != END_OPEN && b != END_OPEN && !waiting_accept {
            for r in 0..2 {
                reset_ring(self, c, r);
            }
            h.slot[0].store(0, SeqCst);
            h.slot[1].store(0, SeqCst);
            h.ends.store(0, SeqCst);
            h.state.store(0, SeqCst);
        } else {
            h.ends.store(ends, SeqCst);
        }
    }
}

impl Conn {
    fn new(shm: Arc<Shm>, c: u32, end: u32) -> Conn {
        Conn {
            shm,
            c,
            end,
            nonblocking: false,
            spin: DEFAULT_SPIN,
            adapt_us: std::sync::atomic::AtomicU32::new(PROBE_US),
            adapt_waits: std::sync::atomic::AtomicU32::new(0),
            closed: false,
            dedup_backlog: DEDUP_BACKLOG,
            seen_rseq: std::sync::atomic::AtomicU32::new(0),
            idle_run: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Sets the backlog (unconsumed bytes in this end's outgoing ring) from
    /// which `send` deduplicates: below it, `send` writes owned lines (no
    /// hash, no index); at or above it, it interns if the reader consumed
    /// nothing during the last `bytes` of sends. 0: always intern;
    /// `u64::MAX`: never. Default [`DEDUP_BACKLOG`].
    pub fn set_dedup_backlog(&mut self, bytes: u64) {
        self.dedup_backlog = bytes;
    }

    /// The connection's id, for [`SharedMemory::accept`].
    pub fn id(&self) -> ConnId {
        ConnId(self.c)
    }

    /// Makes `send`/`recv` return [`SharedError::WouldBlock`] instead of waiting.
    pub fn set_nonblocking(&mut self, on: bool) {
        self.nonblocking = on;
    }

    /// How long a waiting call spins before it sleeps on the futex
    /// (default zero: it sleeps at once).
    pub fn set_spin(&mut self, spin: Duration) {
        self.spin = spin;
    }

    fn wring(&self) -> &super::layout::RingHeader {
        self.shm.v.ring(self.c, self.end)
    }

    fn rring(&self) -> &super::layout::RingHeader {
        self.shm.v.ring(self.c, 1 - self.end)
    }

    fn rstate(&self) -> RState {
        let r = self.rring();
        let f = r.wflags.load(Acquire);
        if f & RST != 0 {
            return RState::Reset;
        }
        if r.head.load(Acquire) != r.tail.load(Relaxed) {
            return RState::Data;
        }
        if f & FIN != 0 {
            return RState::Eof;
        }
        RState::Empty
    }

    fn wstate(&self) -> WState {
        let w = self.wring();
        if w.wflags.load(Relaxed) & FIN != 0 {
            return WState::Shutdown;
        }
        if w.rflags.load(Acquire) & CLOSED != 0 {
            return WState::Reset;
        }
        let used = w.head.load(Relaxed).wrapping_sub(w.tail.load(Acquire));
        if used < self.shm.v.geo.ring_entries && w.bytes.load(Acquire) < RING_BYTES {
            WState::Space
        } else {
            WState::Full
        }
    }

    /// True when `recv` would not block: data, EOF or a reset.
    pub fn readable(&self) -> bool {
        !matches!(self.rstate(), RState::Empty)
    }

    /// True when `send` would not block (room, or an error to report).
    pub fn writable(&self) -> bool {
        !matches!(self.wstate(), WState::Full)
    }

    /// True if the peer's process slot holds a dead process.
    fn peer_dead(&self) -> bool {
        let s = self.shm.v.conn(self.c).slot[1 - self.end as usize].load(Acquire);
        s != 0 && !self.shm.slot_alive(s - 1)
    }

    /// The spin before a sleep: the fixed one if set, else the adaptive
    /// budget (true: adaptive).
    fn spin_budget(&self) -> (Duration, bool) {
        if !self.spin.is_zero() {
            return (self.spin, false);
        }
        let max = ADAPTIVE_MAX_US.load(Relaxed);
        if max == 0 {
            return (Duration::ZERO, false);
        }
        let mut us = self.adapt_us.load(Relaxed).min(max);
        if us == 0
            && self
                .adapt_waits
                .fetch_add(1, Relaxed)
                .is_multiple_of(PROBE_EVERY)
        {
            us = PROBE_US.min(max);
        }
        (Duration::from_micros(u64::from(us)), true)
    }

    /// Adapts the spin budget to what the last spin saw.
    fn spin_outcome(&self, adaptive: bool, won: bool) {
        if !adaptive {
            return;
        }
        let max = ADAPTIVE_MAX_US.load(Relaxed);
        let us = self.adapt_us.load(Relaxed);
        let next = if won {
            us.saturating_mul(2).clamp(PROBE_US, max.max(PROBE_US))
        } else if us < 2 * PROBE_US {
            0
        } else {
            us / 2
        };
        self.adapt_us.store(next, Relaxed);
    }

    /// Spins for the budget of [`Self::spin_budget`] until `ready()`; true
    /// when it saw it.
    fn spin_until(&self, ready: &impl Fn() -> bool) -> bool {
        let (spin, adaptive) = self.spin_budget();
        if spin.is_zero() {
            return false;
        }
        // Poll, yielding the core between polls: a peer on the same core
        // runs at once, and a peer on another core is seen without a futex
        // round trip.
        let t0 = Instant::now();
        loop {
            for _ in 0..32 {
                std::hint::spin_loop();
                if ready() {
                    self.spin_outcome(adaptive, true);
                    return true;
                }
            }
            std::thread::yield_now();
            if ready() {
                self.spin_outcome(adaptive, true);
                return true;
            }
            if t0.elapsed() >= spin {
                self.spin_outcome(adaptive, false);
                return false;
            }
        }
    }

    /// Waits on `seq` until `ready()`; spins first (see [`Self::spin_budget`]).
    fn wait(
        &self,
        seq: &std::sync::atomic::AtomicU32,
        waiting: &std::sync::atomic::AtomicU32,
        flag: u32,
        nb: bool,
        ready: impl Fn() -> bool,
    ) -> SharedResult<()> {
        if ready() {
            return Ok(());
        }
        if nb {
            return Err(SharedError::WouldBlock);
        }
        if self.spin_until(&ready) {
            return Ok(());
        }
        let mut slept = Duration::ZERO;
        loop {
            let s = seq.load(SeqCst);
            waiting.store(flag, SeqCst);
            if ready() {
                waiting.store(0, SeqCst);
                return Ok(());
            }
            let t0 = Instant::now();
            sys::futex_wait(seq, s, PEER_CHECK);
            waiting.store(0, SeqCst);
            if ready() {
                return Ok(());
            }
            slept += t0.elapsed();
            if slept >= PEER_CHECK {
                slept = Duration::ZERO;
                if self.peer_dead() {
                    self.shm.reclaim()?;
                }
            }
        }
    }

    fn wait_readable(&self, nb: bool) -> SharedResult<()> {
        let r = self.rring();
        self.wait(&r.wseq, &r.reader_waiting, 1, nb, || self.readable())
    }

    fn wait_writable(&self, nb: bool) -> SharedResult<()> {
        if self.writable() {
            return Ok(());
        }
        // A full ring: sleep until it is half empty (the reader wakes us
        // then, not at every entry it consumes), or until an error.
        let w = self.wring();
        self.wait(&w.rseq, &w.writer_waiting, WAIT_HALF, nb, || {
            match self.wstate() {
                WState::Full => false,
                WState::Space => half_empty(&self.shm, w),
                _ => true,
            }
        })
    }

    /// Entries of ours the reader has not consumed.
    fn in_flight(&self) -> u32 {
        let w = self.wring();
        w.head.load(Relaxed).wrapping_sub(w.tail.load(Acquire))
    }

    /// Waits until the reader consumes an entry of ours (or closes).
    fn wait_consumed(&self) -> SharedResult<()> {
        let w = self.wring();
        let t = w.tail.load(Acquire);
        self.wait(&w.rseq, &w.writer_waiting, WAIT_ANY, false, || {
            w.tail.load(Acquire) != t || !matches!(self.wstate(), WState::Space | WState::Full)
        })
    }

    fn check_open(&self) -> SharedResult<()> {
        self.shm.check_fork()?;
        if self.closed {
            return Err(SharedError::Shutdown);
        }
        Ok(())
    }

    /// Publishes one entry (the caller owns the root's reference, which
    /// passes to the ring); inside an operation.
    fn publish(&self, root: u32, height: u32, seg_len: u64, off: u64, n: u64) {
        let w = self.wring();
        let h = w.head.load(Relaxed);
        let e = self.shm.v.entry(self.c, self.end, h);
        e.root.store(root, Relaxed);
        e.height.store(height, Relaxed);
        e.seg_len.store(seg_len, Relaxed);
        e.off.store(off, Relaxed);
        e.len.store(n, Relaxed);
        w.bytes.fetch_add(n, Release);
        w.head.store(h.wrapping_add(1), SeqCst);
        w.wseq.fetch_add(1, SeqCst);
        if w.reader_waiting.load(SeqCst) != 0 {
            sys::futex_wake(&w.wseq, 1);
        }
    }

    fn ready_to_write(&self, nb: bool) -> SharedResult<()> {
        self.wait_writable(nb)?;
        match self.wstate() {
            WState::Space => Ok(()),
            WState::Shutdown => Err(SharedError::Shutdown),
            WState::Reset => Err(SharedError::Reset),
            WState::Full => Err(SharedError::WouldBlock),
        }
    }

    /// Sends `data`: copied once into lines of the shared memory
    /// (deduplicated), and its snapshot published. Blocks until all is
    /// queued (non-blocking: queues what fits and returns its length, or
    /// `WouldBlock`). An error after some bytes were queued returns the
    /// count; the next call reports the error.
    pub fn send(&self, data: &[u8]) -> SharedResult<usize> {
        self.send_nb(data, self.nonblocking)
    }

    /// [`send`](Self::send), non-blocking when `nb` whatever the end's mode.
    pub fn send_nb(&self, data: &[u8], nb: bool) -> SharedResult<usize> {
        self.check_open()?;
        let mut sent = 0;
        while sent < data.len() {
            if let Err(e) = self.ready_to_write(nb) {
                return if sent > 0 { Ok(sent) } else { Err(e) };
            }
            let n = (data.len() - sent).min(MAX_ENTRY);
            let chunk = &data[sent..sent + n];
            let shm = &self.shm;
            let tail_before = self.wring().tail.load(Acquire);
            // Owned lines while the reader keeps up; interned (deduplicated)
            // ones once a backlog sits in the ring and the reader consumed
            // nothing during as many bytes of our sends (see the module docs).
            let owned = {
                let w = self.wring();
                let seq = w.rseq.load(Acquire);
                if self.seen_rseq.swap(seq, Relaxed) != seq {
                    self.idle_run.store(0, Relaxed);
                }
                let t = self.dedup_backlog;
                let run = self.idle_run.fetch_add(n as u64, Relaxed);
                !(t == 0 || (w.bytes.load(Acquire) >= t && run >= t))
            };
            let r = shm.run(|| {
                let built = if owned { shm.build_owned(chunk)? } else { None };
                let (root, height) = match built {
                    Some(x) => x,
                    None => shm.build(chunk)?,
                };
                self.publish(root, height, n as u64, 0, n as u64);
                Ok(())
            });
            match r {
                Ok(()) => sent += n,
                // The memory is full: like a full socket buffer, wait until
                // the reader consumes something of ours, if anything of ours
                // is in flight; otherwise report it.
                Err(SharedError::CapacityExhausted { .. })
                    if !nb
                        && (self.in_flight() > 0
                            || self.wring().tail.load(Acquire) != tail_before) =>
                {
                    // (Entries consumed since the build began freed lines:
                    // retry at once; entries still in flight: wait for them.)
                    if self.in_flight() > 0 {
                        self.wait_consumed()?;
                    }
                }
                Err(e) => return if sent > 0 { Ok(sent) } else { Err(e) },
            }
        }
        Ok(sent)
    }

    /// Sends bytes `off..off + n` of `seg` without copying: one count
    /// increment and one ring entry.
    pub fn send_segment(&self, seg: &SharedSegment, off: u64, n: u64) -> SharedResult<()> {
        self.check_open()?;
        if !Arc::ptr_eq(&seg.shm, &self.shm) {
            return Err(SharedError::BadParameter(
                "segment of another attachment".into(),
            ));
        }
        let (root, height, len) = seg.parts();
        if off.checked_add(n).is_none_or(|e| e > len) {
            return Err(SharedError::BadRange {
                offset: off,
                len: n,
                seg_len: len,
            });
        }
        if n == 0 {
            return Ok(());
        }
        self.ready_to_write(self.nonblocking)?;
        let shm = &self.shm;
        shm.run(|| {
            shm.inc(root)?;
            self.publish(root, height, len, off, n);
            Ok(())
        })
    }

    fn entry_of(&self, t: u32) -> SharedResult<(u32, u32, u64, u64, u64)> {
        let e = self.shm.v.entry(self.c, 1 - self.end, t);
        let x = (
            e.root.load(Relaxed),
            e.height.load(Relaxed),
            e.seg_len.load(Relaxed),
            e.off.load(Relaxed),
            e.len.load(Relaxed),
        );
        if x.3.checked_add(x.4).is_none_or(|end| end > x.2) {
            return Err(SharedError::Corrupt("ring entry range".into()));
        }
        Ok(x)
    }

    /// Commits consumption up to `t`/`off` (`bytes` consumed) and releases
    /// the used-up roots.
    fn consume(&self, t: u32, off: u64, bytes: u64, dead: &[u32]) -> SharedResult<()> {
        let r = self.rring();
        let shm = &self.shm;
        let mut committed = false;
        shm.run(|| {
            if committed {
                return Ok(());
            }
            r.tail_off.store(off, Relaxed);
            r.bytes.fetch_sub(bytes, Release);
            r.tail.store(t, SeqCst);
            r.rseq.fetch_add(1, SeqCst);
            wake_writer(&self.shm, r);
            committed = true;
            shm.release(dead)
        })
    }

    /// Receives into `buf`: copies what is queued (one copy, out of the
    /// lines), blocking while nothing is. 0 is EOF.
    pub fn recv(&self, buf: &mut [u8]) -> SharedResult<usize> {
        self.recv_nb(buf, self.nonblocking, false)
    }

    /// [`recv`](Self::recv), non-blocking when `nb`; `peek` leaves the
    /// bytes queued (`MSG_PEEK`).
    pub fn recv_nb(&self, buf: &mut [u8], nb: bool, peek: bool) -> SharedResult<usize> {
        self.check_open()?;
        if buf.is_empty() {
            return Ok(0);
        }
        self.wait_readable(nb)?;
        match self.rstate() {
            RState::Reset => return Err(SharedError::Reset),
            RState::Eof => return Ok(0),
            RState::Empty => return Err(SharedError::WouldBlock),
            RState::Data => {}
        }
        let r = self.rring();
        let mut t = r.tail.load(Relaxed);
        let h = r.head.load(Acquire);
        let mut off = r.tail_off.load(Relaxed);
        let mut done = 0usize;
        let mut consumed = 0u64;
        let mut dead = Vec::new();
        while done < buf.len() && t != h {
            let (root, height, _len, eoff, elen) = self.entry_of(t)?;
            let n = ((elen - off.min(elen)) as usize).min(buf.len() - done);
            self.shm
                .read(root, height, eoff + off, &mut buf[done..done + n])?;
            done += n;
            off += n as u64;
            if off >= elen {
                dead.push(root);
                consumed += elen;
                t = t.wrapping_add(1);
                off = 0;
            }
        }
        if !peek {
            self.consume(t, off, consumed, &dead)?;
        }
        Ok(done)
    }

    /// Receives the front entry as a snapshot without copying:
    /// (segment, offset, length). `None` is EOF.
    pub fn recv_segment(&self) -> SharedResult<Option<(SharedSegment, u64, u64)>> {
        self.check_open()?;
        self.wait_readable(self.nonblocking)?;
        match self.rstate() {
            RState::Reset => return Err(SharedError::Reset),
            RState::Eof => return Ok(None),
            RState::Empty => return Err(SharedError::WouldBlock),
            RState::Data => {}
        }
        let shm = &self.shm;
        let r = self.rring();
        let t = r.tail.load(Relaxed);
        let off = r.tail_off.load(Relaxed);
        let (root, height, len, eoff, elen) = self.entry_of(t)?;
        let slot = if root == 0 {
            NO_SLOT
        } else {
            shm.ledger_take()?
        };
        shm.run(|| {
            if root != 0 {
                shm.ledger_set(slot, root);
            }
            r.tail_off.store(0, Relaxed);
            r.bytes.fetch_sub(elen, Release);
            r.tail.store(t.wrapping_add(1), SeqCst);
            r.rseq.fetch_add(1, SeqCst);
            wake_writer(&self.shm, r);
            Ok(())
        })?;
        let seg = SharedSegment {
            shm: shm.clone(),
            root,
            height,
            len,
            slot,
        };
        Ok(Some((seg, eoff + off, elen - off.min(elen))))
    }

    /// Waits (blocking, whatever the end's mode) until `send` can queue
    /// something, or has an error to report.
    pub fn wait_send_room(&self) -> SharedResult<()> {
        self.check_open()?;
        self.wait_writable(false)
    }

    /// Closes the peer's end on its behalf, as if it had closed it (FIN, or
    /// RST if it left bytes unread): for a peer whose every descriptor is
    /// gone while its process lives on (the shim's local mode, after a fork
    /// shared the connection). Nothing if the peer's end is not open.
    pub fn close_vanished_peer(&self) -> SharedResult<()> {
        self.check_open()?;
        let shm = &self.shm;
        let (c, e) = (self.c, 1 - self.end);
        let h = shm.v.conn(c);
        shm.run(|| {
            let ends = h.ends.load(SeqCst);
            if end_bits(ends, e) != END_OPEN {
                return Ok(());
            }
            let wr = shm.v.ring(c, e);
            let rr = shm.v.ring(c, 1 - e);
            let unread = rr.head.load(SeqCst) != rr.tail.load(SeqCst);
            wr.wflags
                .fetch_or(if unread { FIN | RST } else { FIN }, SeqCst);
            wr.wseq.fetch_add(1, SeqCst);
            sys::futex_wake(&wr.wseq, i32::MAX);
            rr.rflags.fetch_or(CLOSED, SeqCst);
            rr.rseq.fetch_add(1, SeqCst);
            sys::futex_wake(&rr.rseq, i32::MAX);
            if h.ends
                .compare_exchange(ends, with_end(ends, e, END_CLOSED), SeqCst, SeqCst)
                .is_ok()
            {
                h.slot[e as usize].store(0, SeqCst);
            }
            Ok(())
        })
    }

    /// Which end this is (0: the connecting end, 1: the accepting end).
    pub fn end(&self) -> u32 {
        self.end
    }

    /// True once the second end has attached (or attached and closed).
    pub fn peer_attached(&self) -> bool {
        let e = self.shm.v.conn(self.c).ends.load(Acquire);
        end_bits(e, 1 - self.end) != END_NONE
    }

    /// True while this process is the one recorded as this end's owner
    /// (after a fork, the process that last [adopted](SharedMemory::adopt) it).
    pub fn owned(&self) -> bool {
        self.shm.check_fork().is_ok()
            && self.shm.v.conn(self.c).slot[self.end as usize].load(Acquire) == self.shm.token
    }

    /// Forgets this handle without closing the end (another process owns it now).
    pub fn disown(mut self) {
        self.closed = true;
    }

    /// Bytes queued for this end to read.
    pub fn pending(&self) -> u64 {
        let r = self.rring();
        r.bytes
            .load(Acquire)
            .saturating_sub(r.tail_off.load(Relaxed))
    }

    /// If the peer's process is dead, reclaims what it held (which closes its
    /// end: FIN, or RST if it had unread data) and returns true.
    pub fn check_peer(&self) -> SharedResult<bool> {
        self.shm.check_fork()?;
        if self.peer_dead() {
            self.shm.reclaim()?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Readiness tokens, writer's side: after publishing, true when the
    /// caller must put one token byte into its descriptor (the peer's
    /// descriptor becomes readable). At most one token is outstanding per
    /// direction.
    ///
    /// The protocol (both words sequentially consistent): the writer
    /// publishes, then takes the token word 0 -> 1. The reader, finding the
    /// ring empty, takes it 1 -> 0, looks at the ring again and either reads
    /// its one byte (still empty) or gives the token back (data came). If the
    /// writer took it in between, there are two bytes for one token: the
    /// reader reads one. So a byte stays in the descriptor whenever data is
    /// queued, and none stays when the ring is empty.
    ///
    /// A reader asleep in [`wait_readable_once`](Self::wait_readable_once)
    /// that will drain everything queued (the ring's bytes fit the room it
    /// announced) needs no token: the futex wakes it and it leaves the ring
    /// empty. The writer's publish comes before its look at `reader_waiting`
    /// and the reader clears it before it looks at the ring, so a skipped
    /// publish is always one the reader sees.
    pub fn token_take(&self) -> bool {
        let w = self.wring();
        if w.pins.load(SeqCst) == 0 {
            return false;
        }
        let room = w.reader_waiting.load(SeqCst);
        if room != 0 && w.bytes.load(SeqCst) <= u64::from(room) {
            return false;
        }
        w.tokens.load(SeqCst) == 0 && w.tokens.compare_exchange(0, 1, SeqCst, SeqCst).is_ok()
    }

    /// Readiness tokens, reader's side: keeps them on for this end's incoming
    /// ring until the matching [`unpin`](Self::unpin). While no pin is held
    /// the writer puts no token (see [`token_take`](Self::token_take)): the
    /// reader's process looks at the ring itself. A thread about to block in
    /// a kernel wait that can see the reader's descriptor pins, then looks
    /// at the ring again ([`readable`](Self::readable)): the writer publishes
    /// before it looks at the pins, and both are sequentially consistent, so
    /// either the reader sees the data or the writer puts the token.
    pub fn pin(&self) {
        self.rring().pins.fetch_add(1, SeqCst);
    }

    /// Drops a pin taken by [`pin`](Self::pin).
    pub fn unpin(&self) {
        let _ = self
            .rring()
            .pins
            .fetch_update(SeqCst, SeqCst, |p| p.checked_sub(1));
    }

    /// True while a token byte is owed or outstanding for this end's
    /// incoming ring (see [`token_take`](Self::token_take)).
    pub fn token_held(&self) -> bool {
        self.rring().tokens.load(SeqCst) != 0
    }

    /// Readiness tokens, reader's side: takes the outstanding token back
    /// whatever the ring holds; true when the caller must read its byte. For
    /// a reader whose only kernel waits are its own edge-triggered ones: with
    /// bytes queued and the token out, the next publish would write no new
    /// byte (no new edge).
    pub fn token_reset(&self) -> bool {
        self.rring()
            .tokens
            .compare_exchange(1, 0, SeqCst, SeqCst)
            .is_ok()
    }

    /// The readiness of this end in one look, for `epoll`/`poll` emulation.
    pub fn poll_bits(&self) -> PollBits {
        let r = self.rring();
        let w = self.wring();
        let in_seq = r.wseq.load(SeqCst);
        let out_seq = w.rseq.load(SeqCst);
        let f = r.wflags.load(Acquire);
        PollBits {
            data: r.head.load(Acquire) != r.tail.load(Relaxed),
            fin: f & FIN != 0,
            rst: f & RST != 0,
            writable: self.writable(),
            peer_closed: w.rflags.load(Acquire) & CLOSED != 0,
            write_shut: w.wflags.load(Relaxed) & FIN != 0,
            in_seq,
            out_seq,
        }
    }

    /// Spins with this end's adaptive budget (see [`set_adaptive_spin`])
    /// until `ready()`; true when it saw it. For a caller that waits on
    /// several ends at once (the shim's `epoll_wait`).
    pub fn spin_until_ready(&self, ready: &impl Fn() -> bool) -> bool {
        self.spin_until(ready)
    }

    /// Sleeps on the ring's futex until something is readable or `timeout`
    /// passes, announcing `room` (the bytes the caller will take: see
    /// [`token_take`](Self::token_take)); true when readable.
    pub fn wait_readable_once(&self, room: u32, timeout: Duration) -> SharedResult<bool> {
        self.check_open()?;
        if self.readable() || self.spin_until(&|| self.readable()) {
            return Ok(true);
        }
        let r = self.rring();
        let s = r.wseq.load(SeqCst);
        r.reader_waiting.store(room.max(1), SeqCst);
        if !self.readable() {
            sys::futex_wait(&r.wseq, s, timeout);
        }
        r.reader_waiting.store(0, SeqCst);
        std::sync::atomic::fence(SeqCst);
        Ok(self.readable())
    }

    /// Writability, writer's side: the caller put `n` filler bytes into its
    /// descriptor (the ring is full: its descriptor stops polling writable
    /// once its send buffer is full). Called after the bytes are written;
    /// the reader takes them out with [`fillers_take`](Self::fillers_take)
    /// after it consumes, which makes the writer's descriptor writable again.
    /// Only the byte count matters: together with the token bytes it is what
    /// the reader's descriptor holds.
    pub fn fillers_add(&self, n: u32) {
        if n != 0 {
            self.wring().filled.fetch_add(n, SeqCst);
        }
    }

    /// Writability, reader's side: the filler bytes the caller must read out
    /// of its descriptor now (0 almost always: one load).
    pub fn fillers_take(&self) -> u32 {
        let r = self.rring();
        if r.filled.load(SeqCst) == 0 {
            return 0;
        }
        r.filled.swap(0, SeqCst)
    }

    /// Readiness tokens, reader's side: true when the caller must read one
    /// token byte out of its descriptor (see [`token_take`](Self::token_take)).
    pub fn token_release(&self) -> bool {
        let r = self.rring();
        let empty = || r.head.load(SeqCst) == r.tail.load(SeqCst);
        if r.tokens.load(SeqCst) != 1 || !empty() {
            return false;
        }
        if r.tokens.compare_exchange(1, 0, SeqCst, SeqCst).is_err() {
            return false;
        }
        if empty() {
            return true;
        }
        // Data came: keep the byte for it (or, if the writer already put a
        // second one, read one of the two).
        r.tokens.compare_exchange(0, 1, SeqCst, SeqCst).is_err()
    }

    /// Shuts down the writing side: the peer reads what is queued, then EOF.
    pub fn shutdown_write(&self) -> SharedResult<()> {
        self.check_open()?;
        let w = self.wring();
        self.shm.run(|| {
            w.wflags.fetch_or(FIN, SeqCst);
            w.wseq.fetch_add(1, SeqCst);
            sys::futex_wake(&w.wseq, i32::MAX);
            Ok(())
        })
    }

    /// Closes this end (as dropping it does): FIN, or RST if data sent to us
    /// is unread; the connection is freed when both ends are closed.
    pub fn close(mut self) -> SharedResult<()> {
        self.close_inner()
    }

    fn close_inner(&mut self) -> SharedResult<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        self.shm.check_fork()?;
        let shm = &self.shm;
        let (c, end) = (self.c, self.end);
        let h = shm.v.conn(c);
        let mut dead: Vec<u32> = Vec::new();
        let mut committed = false;
        shm.run(|| {
            if committed {
                return Ok(());
            }
            let wr = shm.v.ring(c, end);
            let rr = shm.v.ring(c, 1 - end);
            dead = shm.ring_roots(c, 1 - end);
            let unread = !dead.is_empty();
            rr.tail.store(rr.head.load(Acquire), SeqCst);
            rr.tail_off.store(0, Relaxed);
            rr.bytes.store(0, Relaxed);
            rr.rflags.fetch_or(CLOSED, SeqCst);
            rr.rseq.fetch_add(1, SeqCst);
            sys::futex_wake(&rr.rseq, i32::MAX);
            wr.wflags
                .fetch_or(if unread { FIN | RST } else { FIN }, SeqCst);
            wr.wseq.fetch_add(1, SeqCst);
            sys::futex_wake(&wr.wseq, i32::MAX);
            h.slot[end as usize].store(0, SeqCst);
            let mut e = h.ends.load(Acquire);
            loop {
                let ne = with_end(e, end, END_CLOSED);
                match h.ends.compare_exchange(e, ne, AcqRel, Acquire) {
                    Ok(_) => {
                        if end_bits(ne, 1 - end) == END_CLOSED {
                            dead.extend(shm.ring_roots(c, end));
                            for r in 0..2 {
                                reset_ring(shm, c, r);
                            }
                            h.ends.store(0, Release);
                            h.state.store(0, Release);
                        }
                        break;
                    }
                    Err(x) => e = x,
                }
            }
            committed = true;
            shm.release(&dead)
        })
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let _ = self.close_inner();
    }
}
