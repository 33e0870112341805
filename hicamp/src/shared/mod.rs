//! A HICAMP memory that several processes map at once.
//!
//! # The problem
//!
//! [`Memory`](crate::Memory) keeps its dedup index, its shard locks, its
//! epoch collector and its free lists in the heap of one process: a second
//! process that maps the same file sees the lines but none of the state that
//! says which slots are live, and a lock-free reader there is protected by
//! an epoch that lives in another address space. Local mode (two processes
//! on one host exchanging snapshots instead of bytes) needs all of that state
//! in the mapping itself, and needs it to survive a process killed at any
//! instruction.
//!
//! # Concepts
//!
//! * [`SharedMemory`]: a file (under `/dev/shm` or anywhere) holding the
//!   lines, a per-line count and content hash, a striped open-addressing
//!   dedup index, process-shared robust locks (futex words holding the
//!   owner's process slot), per-process ledgers, a names table and the
//!   connection rings (layout in `layout.rs`).
//! * [`SharedSegment`]: one reference to a segment (a DAG of lines exactly
//!   like the main memory's: leaves, then interior lines of `line_size / 4`
//!   child ids, height and zero subtrees as in `shape`), recorded in its
//!   process's **ledger** in the mapping. Equal content gives the equal root
//!   in every process (interned segments; not a connection's owned lines). [`SharedSegment::snapshot`] is one count increment and
//!   one ledger word.
//! * [`Conn`]: a connection of two SPSC rings of snapshots (root, height,
//!   length, offset, byte count) with futex wake-ups, FIN/RST/CLOSED flags in
//!   each direction and peer-death detection: what the shim's local mode puts
//!   under a TCP connection.
//!
//! # Locking and crash safety
//!
//! Every operation that changes a count or a root record runs *inside an
//! operation*: it increments its process slot's `in_op` word and checks the
//! `stop` word. The rule of counts is the main store's: a count goes from 1
//! to 0 only under its stripe's lock, in the same critical section as the
//! line leaving the index; lookups take the stripe lock; other increments
//! and decrements above 1 are lock-free CASes by someone holding a reference.
//!
//! A process can die anywhere, so nothing it did half-way is repaired in
//! place. Instead, **recovery stops the world and recomputes everything from
//! the roots**: a process that notices a dead one (on attach, on
//! [`SharedMemory::reclaim`], on a lock held by a dead owner, on a peer that
//! died) sets `stop`, waits for every live process to leave its operation
//! (a waiter inside an operation gives up and retries it), drops the dead
//! processes' ledgers and connection ends, and rebuilds counts, index and
//! free lists from the roots that remain: live ledgers, named segments and
//! the snapshots in live rings. Lines a dead process was building, lines it
//! held, slots it had taken: all reachable from no root, so all freed.
//! Recovery is idempotent, so a recovering process that dies is replaced by
//! the next one. The price: a death costs a walk of the whole memory, and a
//! process stopped (SIGSTOP) inside an operation holds up recovery.
//!
//! Liveness is pid + start time (`/proc/PID/stat`), so a reused pid is not
//! taken for the dead process; zombies count as dead. All processes must
//! share a pid namespace.
//!
//! A fsck of a memory no process uses is `SharedMemory::open(path)?.check()`:
//! the open reclaims what dead processes held, the check compares every
//! count with the references from the roots, every reachable line with the
//! index, and every other slot with the free lists.
//!
//! **Owned lines** (`Shm::build_owned`, the connections' stream bytes while
//! the reader keeps up: see `conn.rs`) bypass the index: their slots come
//! from the free stack (or fresh) under the allocator lock alone, carry the
//! `OWNED` flag and count 1, and are reachable only through references to
//! their root, so the count of one can reach 0 without a stripe lock (no
//! lookup can revive it) and the slot goes back to the free stack. Equal
//! content does not give equal roots for them. Recovery counts them from
//! the roots like any line (a dead process's owned slots, published or not,
//! are freed by the recount) and leaves them out of the index; the check
//! counts them apart (`SharedCheck::owned`).
//!
//! Slots: each stripe keeps up to 62 free slots for itself (taken under its
//! lock), refilled from a free stack and a fresh-slot counter under one
//! allocator lock; a stripe that finds those empty takes half of another
//! stripe's cache if that stripe's lock is free. So `CapacityExhausted` can
//! come while a few slots sit in caches of busy stripes.
//!
//! A handle inherited through `fork` is not the child's: its operations
//! return [`SharedError::Forked`], and its drop does nothing. The child opens
//! the memory again.
//!
//! # Example
//!
//! ```
//! use hicamp::shared::{SharedMemory, SharedOptions};
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("mem");
//! let mem = SharedMemory::create(&path, SharedOptions::default())?;
//! let a = mem.intern(b"hello, shared world")?;
//! let other = SharedMemory::open(&path)?;          // another process, in real use
//! let b = other.intern(b"hello, shared world")?;
//! assert_eq!(a.root(), b.root());                  // one copy, deduplicated
//! mem.bind("greeting", &a)?;
//! assert_eq!(other.lookup("greeting")?.unwrap().to_vec()?, b"hello, shared world");
//! # Ok::<(), hicamp::shared::SharedError>(())
//! ```

mod conn;
mod layout;
mod recovery;
mod sys;

use std::fs::OpenOptions as FileOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::Duration;

use crate::hash::xxh3_64_with_seed;

pub use conn::{set_adaptive_spin, Conn, ConnId, PollBits, DEDUP_BACKLOG};
pub use layout::MAX_SHARED_NAME;

/// The version of the shared memory's format: a memory of another version does not open.
/// Default paths carry it (see the shim's local mode), so that a memory left by an older
/// build is not in the way of a newer one.
pub const FORMAT_VERSION: u32 = layout::VERSION;
use layout::{Geometry, View, MAGIC, STRIPE_CACHE, VERSION};
pub use recovery::SharedCheck;

use crate::id::LineId;

/// Errors of the shared memory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SharedError {
    /// An I/O error on the memory file.
    #[error("{path}: {op}: {message}")]
    Io {
        /// The file.
        path: String,
        /// What was being done.
        op: &'static str,
        /// The operating system's message.
        message: String,
    },
    /// The file is not a shared memory of this format.
    #[error("{path}: not a hicamp shared memory (or another format version)")]
    NotShared {
        /// The file.
        path: String,
    },
    /// The file system has no room for the memory.
    #[error("{path}: no space left for {bytes} bytes")]
    NoSpace {
        /// The file.
        path: String,
        /// Bytes asked for.
        bytes: u64,
    },
    /// A creation parameter is not usable.
    #[error("bad parameter: {0}")]
    BadParameter(String),
    /// The mapping's content is inconsistent.
    #[error("shared memory corrupt: {0}")]
    Corrupt(String),
    /// Every line slot is in use (or the dedup index of a stripe is full).
    #[error("shared memory full: capacity {capacity} lines")]
    CapacityExhausted {
        /// Capacity in lines.
        capacity: u64,
    },
    /// Every process slot is taken by a live process.
    #[error("all {0} process slots are in use")]
    TooManyProcesses(u32),
    /// This process holds as many segment references as its ledger has room for.
    #[error("ledger full: a process holds at most {0} segment references")]
    LedgerFull(u32),
    /// Every entry of the names table is bound.
    #[error("names table full ({0} entries)")]
    NamesFull(u32),
    /// A name is empty or too long.
    #[error("bad segment name {0:?}: 1..=80 bytes expected")]
    BadName(String),
    /// Every connection is in use.
    #[error("all {0} connections are in use")]
    ConnsFull(u32),
    /// The connection id names no connection waiting for its second end.
    #[error("connection {0} is not waiting to be accepted")]
    NotAcceptable(u32),
    /// A range lies outside the segment.
    #[error("bad range: {offset} (+{len}) outside a segment of {seg_len} bytes")]
    BadRange {
        /// Start.
        offset: u64,
        /// Length.
        len: u64,
        /// Segment length.
        seg_len: u64,
    },
    /// The segment is too long.
    #[error("segment of {0} bytes is too long")]
    TooLong(u64),
    /// The peer reset the connection (closed with unread data, or died while
    /// this end was writing).
    #[error("connection reset by peer")]
    Reset,
    /// This end shut down its writing side, or closed.
    #[error("connection shut down for writing")]
    Shutdown,
    /// A non-blocking call would block.
    #[error("operation would block")]
    WouldBlock,
    /// The handle was inherited through `fork`: open the memory again.
    #[error("shared memory handle used in a forked child: open the memory again")]
    Forked,
}

/// Result alias of this module.
pub type SharedResult<T> = std::result::Result<T, SharedError>;

/// Why an operation stopped before its end.
pub(crate) enum Fail {
    /// The world is being stopped: leave the operation, wait, retry.
    Stop,
    /// A lock's owner (or the stopper) is dead: leave, recover, retry.
    Dead,
    /// A real error.
    E(SharedError),
}

impl From<SharedError> for Fail {
    fn from(e: SharedError) -> Fail {
        Fail::E(e)
    }
}

pub(crate) type R<T> = std::result::Result<T, Fail>;

/// Creation parameters of a [`SharedMemory`].
#[derive(Clone, Debug)]
pub struct SharedOptions {
    /// Line size in bytes (power of two, 16..=4096).
    pub line_size: usize,
    /// Line slots (slot 0 is the all-zero line and is never used).
    pub capacity_lines: u32,
    /// Lock stripes of the dedup index (power of two).
    pub stripes: u32,
    /// Processes attached at once.
    pub procs: u32,
    /// Segment references one process holds at once.
    pub ledger: u32,
    /// Entries of the names table.
    pub names: u32,
    /// Connections (two rings each).
    pub conns: u32,
    /// Entries of each ring (power of two).
    pub ring_entries: u32,
}

impl Default for SharedOptions {
    fn default() -> Self {
        SharedOptions {
            line_size: 64,
            capacity_lines: 1 << 16,
            stripes: 64,
            procs: 64,
            ledger: 4096,
            names: 256,
            conns: 64,
            ring_entries: 256,
        }
    }
}

impl SharedOptions {
    /// The settings of the libc shim's local mode (`hicamp run --mode
    /// local`): 4 KiB lines (a stream at 64-byte lines runs at a tenth of
    /// kernel TCP), 256 MiB of lines, 1024 connections, 1024 names (the
    /// listener and offer tables), 256 processes.
    pub fn transport() -> SharedOptions {
        SharedOptions {
            line_size: 4096,
            capacity_lines: 1 << 16,
            stripes: 64,
            procs: 256,
            ledger: 4096,
            names: 1024,
            conns: 1024,
            ring_entries: 256,
        }
    }

    fn geometry(&self) -> SharedResult<Geometry> {
        if !self.line_size.is_power_of_two() {
            return Err(SharedError::BadParameter(
                "line size must be a power of two".into(),
            ));
        }
        let shift = self.line_size.trailing_zeros();
        let stripes = self.stripes.max(1);
        let per = (4 * self.capacity_lines as u64)
            .div_ceil(stripes as u64)
            .max(16);
        let buckets = u32::try_from(per.next_power_of_two())
            .map_err(|_| SharedError::BadParameter("index too large".into()))?;
        Geometry::new(
            shift,
            self.capacity_lines,
            stripes,
            buckets,
            self.procs,
            self.ledger,
            self.names,
            self.conns,
            self.ring_entries,
        )
    }
}

const INTERIOR: u32 = 1 << 31;
/// `Meta::flags`: an owned (unindexed) line, see [`Shm::build_owned`].
pub(crate) const OWNED: u32 = 1;
const COUNT: u32 = INTERIOR - 1;
/// A count this high saturates: the line is never freed (a leak, never a
/// use after free), like the main store's.
const SATURATED: u32 = 1 << 30;
const WAITERS: u32 = 1 << 31;
const SEED_LEAF: u64 = 0x5eed_1eaf;
const SEED_INTERIOR: u64 = 0x5eed_1e7e;
/// How long a waiter sleeps before it checks the liveness of whoever it waits for.
const WAIT_SLICE: Duration = Duration::from_millis(5);

/// The hash of a line: of its bytes up to the last nonzero one (a line has
/// a fixed size, so that prefix names it). A short message's line is mostly
/// padding: [`Shm::build`] hashes only the message's bytes.
#[inline]
fn line_hash(interior: bool, data: &[u8]) -> u64 {
    prefix_hash(interior, trim_zeros(data))
}

#[inline]
fn prefix_hash(interior: bool, prefix: &[u8]) -> u64 {
    xxh3_64_with_seed(prefix, if interior { SEED_INTERIOR } else { SEED_LEAF })
}

/// `data` without its trailing zero bytes.
#[inline]
fn trim_zeros(data: &[u8]) -> &[u8] {
    let mut end = data.len();
    while end >= 8 {
        let w = u64::from_ne_bytes(data[end - 8..end].try_into().unwrap_or([1; 8]));
        if w != 0 {
            break;
        }
        end -= 8;
    }
    while end > 0 && data[end - 1] == 0 {
        end -= 1;
    }
    &data[..end]
}

/// Appends the non-zero child ids of an interior line (4-byte little-endian slots).
fn push_children(line: &[u8], out: &mut Vec<u32>) {
    for ch in line.chunks_exact(4) {
        let x = u32::from_le_bytes(ch.try_into().expect("4 bytes"));
        if x != 0 {
            out.push(x);
        }
    }
}

/// Sorts `(stripe, id)` pairs by stripe: a counting sort for long lists.
fn group_by_stripe(v: &mut Vec<(u32, u32)>, stripes: u32) {
    if v.len() <= 32 {
        v.sort_unstable_by_key(|x| x.0);
        return;
    }
    let mut start = vec![0usize; stripes as usize + 1];
    for x in v.iter() {
        start[x.0 as usize + 1] += 1;
    }
    for k in 0..stripes as usize {
        start[k + 1] += start[k];
    }
    let mut out = vec![(0u32, 0u32); v.len()];
    for &x in v.iter() {
        out[start[x.0 as usize]] = x;
        start[x.0 as usize] += 1;
    }
    *v = out;
}

/// One attachment of a process to a shared memory: the mapping, its process
/// slot and the free entries of its ledger.
pub(crate) struct Shm {
    _map: memmap2::MmapRaw,
    pub(crate) v: View,
    /// This attachment's process slot.
    pub(crate) me: u32,
    /// `me + 1`: the value this process writes into lock and stop words.
    pub(crate) token: u32,
    fork_gen: u64,
    ledger_free: parking_lot::Mutex<Vec<u32>>,
    path: String,
}

/// Leaves the operation when dropped.
pub(crate) struct OpGuard<'a>(&'a AtomicU32);

impl Drop for OpGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// Holds a robust lock word; unlocks when dropped.
pub(crate) struct LockGuard<'a>(&'a AtomicU32);

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        if self.0.swap(0, Release) & WAITERS != 0 {
            sys::futex_wake(self.0, 1);
        }
    }
}

fn io_err(path: &str, op: &'static str, e: std::io::Error) -> SharedError {
    SharedError::Io {
        path: path.to_string(),
        op,
        message: e.to_string(),
    }
}

impl Shm {
    fn create(path: &Path, opts: &SharedOptions) -> SharedResult<Shm> {
        let geo = opts.geometry()?;
        let ps = path.display().to_string();
        let file = FileOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| io_err(&ps, "create", e))?;
        // Reserve every block now: a tmpfs that runs out later would raise
        // SIGBUS on a page fault instead of returning an error.
        {
            use std::os::fd::AsRawFd;
            // SAFETY: fd is open for writing; posix_fallocate only extends it.
            let r = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, geo.total as libc::off_t) };
            if r == libc::ENOSPC {
                let _ = std::fs::remove_file(path);
                return Err(SharedError::NoSpace {
                    path: ps,
                    bytes: geo.total as u64,
                });
            } else if r != 0 {
                file.set_len(geo.total as u64)
                    .map_err(|e| io_err(&ps, "set_len", e))?;
            }
        }
        let map = memmap2::MmapOptions::new()
            .len(geo.total)
            .map_raw(&file)
            .map_err(|e| io_err(&ps, "mmap", e))?;
        let base = map.as_mut_ptr();
        let header = layout::Header {
            magic: MAGIC,
            version: VERSION,
            ready: AtomicU32::new(0),
            line_shift: geo.line_shift,
            capacity: geo.capacity,
            stripes: geo.stripes,
            stripe_buckets: geo.stripe_buckets,
            procs: geo.procs,
            ledger: geo.ledger,
            names: geo.names,
            conns: geo.conns,
            ring_entries: geo.ring_entries,
            _pad0: 0,
            total: geo.total as u64,
            _pad1: [0; 8],
            stop: AtomicU32::new(0),
            _pad2: [0; 60],
            alloc_lock: AtomicU32::new(0),
            next_fresh: AtomicU32::new(1),
            free_top: AtomicU32::new(0),
            _pad3: [0; 52],
            map_lock: AtomicU32::new(0),
            recoveries: std::sync::atomic::AtomicU64::new(0),
        };
        // SAFETY: the file was just created (create_new), is at least HEADER
        // bytes, page aligned, and not ready: no other process reads the
        // header until `ready` is 1, published below with Release.
        unsafe { (base as *mut layout::Header).write(header) };
        let v = View { base, geo };
        v.header().ready.store(1, Release);
        Shm::attach(map, v, ps)
    }

    fn open(path: &Path) -> SharedResult<Shm> {
        let ps = path.display().to_string();
        let file = FileOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| io_err(&ps, "open", e))?;
        let len = file.metadata().map_err(|e| io_err(&ps, "stat", e))?.len();
        let not = || SharedError::NotShared { path: ps.clone() };
        if len < layout::HEADER as u64 {
            return Err(not());
        }
        let map = memmap2::MmapOptions::new()
            .len(len as usize)
            .map_raw(&file)
            .map_err(|e| io_err(&ps, "mmap", e))?;
        let base = map.as_mut_ptr();
        // SAFETY: the mapping is at least HEADER bytes; Header is plain data
        // and atomics; its parameters are read only after `ready` (Acquire).
        let h = unsafe { &*(base as *const layout::Header) };
        if h.magic != MAGIC || h.version != VERSION {
            return Err(not());
        }
        let mut tries = 0;
        while h.ready.load(Acquire) != 1 {
            tries += 1;
            if tries > 1000 {
                return Err(SharedError::Corrupt(format!(
                    "{ps}: never finished its creation"
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let geo = Geometry::new(
            h.line_shift,
            h.capacity,
            h.stripes,
            h.stripe_buckets,
            h.procs,
            h.ledger,
            h.names,
            h.conns,
            h.ring_entries,
        )
        .map_err(|_| not())?;
        if geo.total as u64 != h.total || len < h.total {
            return Err(SharedError::Corrupt(format!(
                "{ps}: {len} bytes, its header says {}",
                h.total
            )));
        }
        Shm::attach(map, View { base, geo }, ps)
    }

    /// Claims a free process slot, then reclaims the dead ones it can see.
    fn attach(map: memmap2::MmapRaw, v: View, path: String) -> SharedResult<Shm> {
        let pid = std::process::id();
        let start = sys::own_start_time();
        let claim = |v: &View| {
            (0..v.geo.procs).find(|&i| {
                let s = v.proc_slot(i);
                if s.pid.compare_exchange(0, pid, AcqRel, Relaxed).is_ok() {
                    s.start.store(start, Relaxed);
                    s.in_op.store(0, SeqCst);
                    true
                } else {
                    false
                }
            })
        };
        // No free slot: take over one whose process is dead, and drop what
        // it held in a recovery of our own before anything else.
        let steal = |v: &View| {
            (0..v.geo.procs).find(|&i| {
                let s = v.proc_slot(i);
                let (p, st) = (s.pid.load(Acquire), s.start.load(Acquire));
                if p == 0 || sys::alive(p, st) {
                    return false;
                }
                if s.pid.compare_exchange(p, pid, AcqRel, Relaxed).is_ok() {
                    s.start.store(start, Relaxed);
                    s.in_op.store(0, SeqCst);
                    true
                } else {
                    false
                }
            })
        };
        let (me, inherited) = match claim(&v) {
            Some(i) => (i, false),
            None => match steal(&v) {
                Some(i) => (i, true),
                None => return Err(SharedError::TooManyProcesses(v.geo.procs)),
            },
        };
        let ledger = v.geo.ledger;
        let shm = Shm {
            _map: map,
            v,
            me,
            token: me + 1,
            fork_gen: sys::fork_generation(),
            ledger_free: parking_lot::Mutex::new((0..ledger).rev().collect()),
            path,
        };
        if inherited {
            while shm.recover_with(0, true)?.is_none() {}
        }
        shm.reclaim()?;
        Ok(shm)
    }

    fn check_fork(&self) -> SharedResult<()> {
        if sys::fork_generation() != self.fork_gen {
            return Err(SharedError::Forked);
        }
        Ok(())
    }

    #[inline]
    pub(crate) fn stopped(&self) -> bool {
        self.v.header().stop.load(SeqCst) != 0
    }

    /// True while process slot `slot` is owned by a live process.
    pub(crate) fn slot_alive(&self, slot: u32) -> bool {
        if slot >= self.v.geo.procs {
            return false;
        }
        let s = self.v.proc_slot(slot);
        sys::alive(s.pid.load(Acquire), s.start.load(Acquire))
    }

    /// Enters an operation (see the module docs), waiting out a stopped world.
    fn enter(&self) -> SharedResult<OpGuard<'_>> {
        self.check_fork()?;
        let in_op = &self.v.proc_slot(self.me).in_op;
        loop {
            in_op.fetch_add(1, SeqCst);
            if !self.stopped() {
                return Ok(OpGuard(in_op));
            }
            in_op.fetch_sub(1, SeqCst);
            self.wait_world()?;
        }
    }

    /// Waits while the world is stopped; takes over from a dead stopper.
    pub(crate) fn wait_world(&self) -> SharedResult<()> {
        let stop = &self.v.header().stop;
        loop {
            let s = stop.load(SeqCst);
            if s == 0 {
                return Ok(());
            }
            sys::futex_wait(stop, s, WAIT_SLICE);
            if stop.load(SeqCst) == s && s != self.token && !self.slot_alive(s - 1) {
                self.recover(s)?;
            }
        }
    }

    /// Runs `f` as an operation; a stopped world or a dead lock owner makes
    /// it leave, recover or wait, and run `f` again from the start (so `f`
    /// must be restartable: what it did before the failure is either undone
    /// by the recovery's recount or checked by `f` itself).
    pub(crate) fn run<T>(&self, mut f: impl FnMut() -> R<T>) -> SharedResult<T> {
        loop {
            let r = {
                let _op = self.enter()?;
                f()
            };
            match r {
                Ok(v) => return Ok(v),
                Err(Fail::E(e)) => return Err(e),
                Err(Fail::Stop) => self.wait_world()?,
                Err(Fail::Dead) => {
                    self.recover(0)?;
                }
            }
        }
    }

    /// Takes a robust lock word.
    pub(crate) fn lock<'a>(&self, w: &'a AtomicU32) -> R<LockGuard<'a>> {
        if w.compare_exchange(0, self.token, Acquire, Relaxed).is_ok() {
            return Ok(LockGuard(w));
        }
        let mut spins = 0u32;
        loop {
            let v = w.load(Relaxed);
            if v == 0 {
                if w.compare_exchange(0, self.token | WAITERS, Acquire, Relaxed)
                    .is_ok()
                {
                    return Ok(LockGuard(w));
                }
                continue;
            }
            if spins < 100 {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            if v & WAITERS == 0
                && w.compare_exchange(v, v | WAITERS, Relaxed, Relaxed)
                    .is_err()
            {
                continue;
            }
            if self.stopped() {
                return Err(Fail::Stop);
            }
            sys::futex_wait(w, v | WAITERS, WAIT_SLICE);
            if self.stopped() {
                return Err(Fail::Stop);
            }
            if w.load(Relaxed) == v | WAITERS {
                let owner = (v & !WAITERS).wrapping_sub(1);
                // Another thread of this process (owner == me) is alive.
                if owner != self.me && !self.slot_alive(owner) {
                    return Err(Fail::Dead);
                }
            }
        }
    }

    #[inline]
    fn stripe_of(&self, h: u64) -> (u32, u32) {
        let g = &self.v.geo;
        (
            (h as u32) & (g.stripes - 1),
            ((h >> 32) as u32) & (g.stripe_buckets - 1),
        )
    }

    pub(crate) fn check_line(&self, id: u32) -> SharedResult<()> {
        if id >= self.v.geo.capacity {
            return Err(SharedError::Corrupt(format!("line id {id} out of range")));
        }
        Ok(())
    }

    /// Takes a free slot for stripe `s`, whose lock the caller holds.
    fn alloc(&self, s: u32) -> R<u32> {
        let st = self.v.stripe(s);
        let n = st.ncache.load(Relaxed);
        if n > 0 && n as usize <= STRIPE_CACHE {
            st.ncache.store(n - 1, Relaxed);
            return Ok(st.cache[n as usize - 1].load(Relaxed));
        }
        let h = self.v.header();
        let _g = self.lock(&h.alloc_lock)?;
        let top = h.free_top.load(Relaxed).min(self.v.geo.capacity);
        let fresh = self
            .v
            .geo
            .capacity
            .saturating_sub(h.next_fresh.load(Relaxed));
        // Take a batch, but no more than a fair share of what is left, so
        // that a small memory is not emptied into a few stripes' caches.
        let want = ((top + fresh) / self.v.geo.stripes).clamp(1, (STRIPE_CACHE / 2 + 1) as u32);
        let mut got = Vec::with_capacity(want as usize);
        let take = top.min(want);
        for i in 0..take {
            got.push(self.v.free_slot(top - 1 - i).load(Relaxed));
        }
        h.free_top.store(top - take, Relaxed);
        if got.is_empty() {
            let f = h.next_fresh.load(Relaxed);
            let k = fresh.min(want);
            if k > 0 {
                h.next_fresh.store(f + k, Relaxed);
                got.extend((f..f + k).rev());
            }
        }
        if got.is_empty() {
            // Everything left sits in other stripes' caches: take half of one
            // whose lock is free (try-lock only: we hold our own stripe's).
            for t in (0..self.v.geo.stripes).filter(|&t| t != s) {
                let other = self.v.stripe(t);
                if other
                    .lock
                    .compare_exchange(0, self.token, Acquire, Relaxed)
                    .is_err()
                {
                    continue;
                }
                let _og = LockGuard(&other.lock);
                let m = (other.ncache.load(Relaxed) as usize).min(STRIPE_CACHE);
                if m == 0 {
                    continue;
                }
                let keep = m / 2;
                for i in keep..m {
                    got.push(other.cache[i].load(Relaxed));
                }
                other.ncache.store(keep as u32, Relaxed);
                break;
            }
        }
        if got.is_empty() {
            return Err(Fail::E(SharedError::CapacityExhausted {
                capacity: self.v.geo.capacity as u64,
            }));
        }
        let id = got.pop().expect("got is not empty");
        for &x in &got {
            self.check_line(x)?;
        }
        self.check_line(id)?;
        for (i, &x) in got.iter().enumerate() {
            st.cache[i].store(x, Relaxed);
        }
        st.ncache.store(got.len() as u32, Relaxed);
        Ok(id)
    }

    /// Gives slot `id` back; the caller holds stripe `s`'s lock. A full
    /// stripe cache moves half of itself to the free stack under one
    /// allocator lock.
    fn free(&self, s: u32, id: u32) -> R<()> {
        let st = self.v.stripe(s);
        let n = (st.ncache.load(Relaxed) as usize).min(STRIPE_CACHE);
        if n < STRIPE_CACHE {
            st.cache[n].store(id, Relaxed);
            st.ncache.store(n as u32 + 1, Relaxed);
            return Ok(());
        }
        let h = self.v.header();
        let _g = self.lock(&h.alloc_lock)?;
        let keep = STRIPE_CACHE / 2;
        let top = h.free_top.load(Relaxed);
        let moved = (n - keep) as u32 + 1;
        if top
            .checked_add(moved)
            .is_none_or(|t| t > self.v.geo.capacity)
        {
            return Err(Fail::E(SharedError::Corrupt("free stack overflow".into())));
        }
        for (k, i) in (keep..n).enumerate() {
            self.v
                .free_slot(top + k as u32)
                .store(st.cache[i].load(Relaxed), Relaxed);
        }
        self.v.free_slot(top + moved - 1).store(id, Relaxed);
        h.free_top.store(top + moved, Relaxed);
        st.ncache.store(keep as u32, Relaxed);
        Ok(())
    }

    /// Takes `k` free slots for owned lines, under the allocator lock only
    /// (no stripe): the free stack first, then fresh slots. `Ok(None)` when
    /// fewer than `k` are there (the rest sit in stripe caches, or nothing
    /// is left): the caller interns instead, which can use those.
    fn alloc_owned(&self, k: usize, out: &mut Vec<u32>) -> R<bool> {
        let h = self.v.header();
        let cap = self.v.geo.capacity;
        let _g = self.lock(&h.alloc_lock)?;
        let top = h.free_top.load(Relaxed).min(cap);
        let fresh_next = h.next_fresh.load(Relaxed).min(cap);
        let fresh = cap - fresh_next;
        if (top as u64 + fresh as u64) < k as u64 {
            return Ok(false);
        }
        let take = top.min(k as u32);
        out.clear();
        for i in 0..take {
            let x = self.v.free_slot(top - 1 - i).load(Relaxed);
            if x == 0 || x >= cap {
                return Err(Fail::E(SharedError::Corrupt(format!(
                    "free stack holds line id {x}"
                ))));
            }
            out.push(x);
        }
        let more = k as u32 - take;
        out.extend(fresh_next..fresh_next + more);
        h.free_top.store(top - take, Relaxed);
        h.next_fresh.store(fresh_next + more, Relaxed);
        Ok(true)
    }

    /// Gives owned slots back (their counts are 0 and their flags cleared):
    /// onto the free stack, under the allocator lock once.
    fn free_owned(&self, ids: &[u32]) -> R<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let h = self.v.header();
        let _g = self.lock(&h.alloc_lock)?;
        let top = h.free_top.load(Relaxed);
        if top
            .checked_add(ids.len() as u32)
            .is_none_or(|t| t > self.v.geo.capacity)
        {
            return Err(Fail::E(SharedError::Corrupt("free stack overflow".into())));
        }
        for (k, &id) in ids.iter().enumerate() {
            self.v.free_slot(top + k as u32).store(id, Relaxed);
        }
        h.free_top.store(top + ids.len() as u32, Relaxed);
        Ok(())
    }

    /// Builds the DAG of `data` from **owned** lines: slots taken under the
    /// allocator lock alone, written once (the one copy), with a count of 1
    /// and the `OWNED` flag, and no hash, no index entry, no stripe lock.
    /// Such a line is reachable only through the references to its root
    /// (so nothing can find it to add a reference at 0), and its last
    /// release gives its slot straight back to the free stack. For stream
    /// bytes that the reader copies out and releases microseconds later,
    /// where deduplication would cost more than it saves (see `conn.rs`).
    /// `Ok(None)`: not enough slots outside the stripe caches (intern instead).
    pub(crate) fn build_owned(&self, data: &[u8]) -> R<Option<(u32, u32)>> {
        if data.is_empty() {
            return Ok(Some((0, 0)));
        }
        if data.len() as u64 > crate::shape::MAX_SEGMENT_LEN {
            return Err(Fail::E(SharedError::TooLong(data.len() as u64)));
        }
        let l = self.v.geo.line_size();
        let fshift = self.v.geo.line_shift - 2;
        let fan = l / 4;
        let n = data.len().div_ceil(l);
        let height = crate::shape::height_for(n as u64, fshift);
        let mut total = n;
        let mut w = n;
        for _ in 0..height {
            w = w.div_ceil(fan);
            total += w;
        }
        let mut ids = Vec::with_capacity(total);
        if !self.alloc_owned(total, &mut ids)? {
            return Ok(None);
        }
        for (i, chunk) in data.chunks(l).enumerate() {
            let id = ids[i];
            // SAFETY: `id` was just taken from the free stack (or fresh)
            // under the allocator lock: no one else holds or can find it
            // until the caller publishes the root.
            unsafe { self.v.write_line_prefix(id, chunk) };
            let m = self.v.meta(id);
            m.flags.store(OWNED, Relaxed);
            m.count.store(1, Release);
        }
        let mut level = 0..n;
        let mut next_id = n;
        let mut pad = vec![0u8; l];
        for _ in 0..height {
            let start = next_id;
            for group in ids[level.clone()].chunks(fan) {
                pad.fill(0);
                for (i, &x) in group.iter().enumerate() {
                    pad[i * 4..i * 4 + 4].copy_from_slice(&x.to_le_bytes());
                }
                let id = ids[next_id];
                // SAFETY: as for the leaves above.
                unsafe { self.v.write_line(id, &pad) };
                let m = self.v.meta(id);
                m.flags.store(OWNED, Relaxed);
                m.count.store(INTERIOR | 1, Release);
                next_id += 1;
            }
            level = start..next_id;
        }
        debug_assert_eq!(next_id, total);
        debug_assert_eq!(level.len(), 1);
        Ok(Some((ids[level.start], height)))
    }

    /// Interns one line: returns it with one more reference, and whether it
    /// already existed.
    fn intern_line(&self, interior: bool, data: &[u8]) -> R<(u32, bool)> {
        self.intern_hashed(interior, data, line_hash(interior, data))
    }

    /// Prefetches the home bucket of hash `h` (stage 1 of a batch).
    #[inline]
    fn prefetch_home(&self, h: u64) {
        let (s, home) = self.stripe_of(h);
        crate::region::prefetch_ptr(self.v.bucket(s, home));
    }

    /// Prefetches the count/hash word and the line of the id in the home
    /// bucket of `h`, if any (stage 2: the bucket was prefetched earlier).
    #[inline]
    fn prefetch_candidate(&self, h: u64) {
        let (s, home) = self.stripe_of(h);
        let id = self.v.bucket(s, home).load(Relaxed);
        if id != 0 && id < self.v.geo.capacity {
            crate::region::prefetch_ptr(self.v.meta(id));
        }
    }

    /// [`intern_line`](Self::intern_line) with its hash computed already.
    fn intern_hashed(&self, interior: bool, data: &[u8], h: u64) -> R<(u32, bool)> {
        let (s, home) = self.stripe_of(h);
        let _g = self.lock(&self.v.stripe(s).lock)?;
        self.intern_locked(s, home, interior, data, h)
    }

    /// The body of [`intern_hashed`](Self::intern_hashed): stripe `s`'s lock
    /// is held by the caller.
    fn intern_locked(
        &self,
        s: u32,
        home: u32,
        interior: bool,
        data: &[u8],
        h: u64,
    ) -> R<(u32, bool)> {
        let mask = self.v.geo.stripe_buckets - 1;
        let kind = if interior { INTERIOR } else { 0 };
        let mut b = home;
        for _ in 0..=mask {
            let id = self.v.bucket(s, b).load(Relaxed);
            if id == 0 {
                let id = self.alloc(s)?;
                // SAFETY: `id` was just taken from the free structures under
                // this stripe's lock (and the allocator's): no one else holds
                // or can find it until it enters the index below.
                unsafe { self.v.write_line(id, data) };
                let m = self.v.meta(id);
                m.hash.store(h, Relaxed);
                m.count.store(kind | 1, Release);
                self.v.bucket(s, b).store(id, Release);
                return Ok((id, false));
            }
            self.check_line(id)?;
            let m = self.v.meta(id);
            let c = m.count.load(Relaxed);
            if m.hash.load(Relaxed) == h && c & INTERIOR == kind && {
                // SAFETY: `id` is in the index and we hold its stripe's lock,
                // so its count cannot reach 0 and its slot cannot be rewritten.
                let line = unsafe { self.v.line(id) };
                line == data
            } {
                if c & COUNT < SATURATED {
                    m.count.fetch_add(1, Relaxed);
                }
                return Ok((id, true));
            }
            b = (b + 1) & mask;
        }
        Err(Fail::E(SharedError::CapacityExhausted {
            capacity: self.v.geo.capacity as u64,
        }))
    }

    /// Stripe and home bucket of an indexed line, from its stored hash.
    fn place_of(&self, id: u32) -> (u32, u32) {
        self.stripe_of(self.v.meta(id).hash.load(Relaxed))
    }

    /// Removes `id` from stripe `s` (lock held), keeping the linear-probe
    /// invariant by shifting the entries behind it back.
    fn unindex(&self, s: u32, home: u32, id: u32) -> R<()> {
        let mask = self.v.geo.stripe_buckets - 1;
        let mut i = home;
        let mut found = false;
        for _ in 0..=mask {
            let e = self.v.bucket(s, i).load(Relaxed);
            if e == id {
                found = true;
                break;
            }
            if e == 0 {
                break;
            }
            i = (i + 1) & mask;
        }
        if !found {
            return Err(Fail::E(SharedError::Corrupt(format!(
                "line {id} missing from its index stripe"
            ))));
        }
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let e = self.v.bucket(s, j).load(Relaxed);
            if e == 0 {
                break;
            }
            self.check_line(e)?;
            let k = self.place_of(e).1;
            let stays = if i <= j {
                i < k && k <= j
            } else {
                i < k || k <= j
            };
            if stays {
                continue;
            }
            self.v.bucket(s, i).store(e, Relaxed);
            i = j;
        }
        self.v.bucket(s, i).store(0, Relaxed);
        Ok(())
    }

    /// Adds one reference to a line the caller already holds one of.
    pub(crate) fn inc(&self, id: u32) -> SharedResult<()> {
        if id == 0 {
            return Ok(());
        }
        self.check_line(id)?;
        let m = self.v.meta(id);
        let mut c = m.count.load(Relaxed);
        loop {
            let n = c & COUNT;
            if n == 0 {
                return Err(SharedError::Corrupt(format!("increment of free line {id}")));
            }
            if n >= SATURATED {
                return Ok(());
            }
            match m.count.compare_exchange_weak(c, c + 1, Relaxed, Relaxed) {
                Ok(_) => return Ok(()),
                Err(x) => c = x,
            }
        }
    }

    /// Drops one reference to each of `ids`, freeing lines (and releasing
    /// their children) at zero. Works a level at a time: counts above one
    /// drop without a lock; the lines at their last reference are grouped
    /// by stripe, and each stripe's lock is taken once per level.
    pub(crate) fn release(&self, ids: &[u32]) -> R<()> {
        let mut round: Vec<u32> = ids.iter().copied().filter(|&x| x != 0).collect();
        let mut last: Vec<(u32, u32)> = Vec::new();
        let mut next: Vec<u32> = Vec::new();
        let mut freed: Vec<u32> = Vec::new();
        while !round.is_empty() {
            for &id in &round {
                if id < self.v.geo.capacity {
                    crate::region::prefetch_ptr(self.v.meta(id));
                }
            }
            last.clear();
            for &id in &round {
                self.check_line(id)?;
                let m = self.v.meta(id);
                let mut c = m.count.load(Acquire);
                loop {
                    let n = c & COUNT;
                    if n == 0 {
                        return Err(Fail::E(SharedError::Corrupt(format!(
                            "release of free line {id}"
                        ))));
                    }
                    if n >= SATURATED {
                        break;
                    }
                    // An owned line is in no index: nothing can find it to add
                    // a reference at 0, so its last one drops without a lock.
                    let owned = m.flags.load(Relaxed) & OWNED != 0;
                    if n == 1 && !owned {
                        let (s, home) = self.place_of(id);
                        crate::region::prefetch_ptr(self.v.bucket(s, home));
                        last.push((s, id));
                        break;
                    }
                    match m.count.compare_exchange_weak(c, c - 1, AcqRel, Acquire) {
                        Ok(_) => {
                            if n == 1 {
                                if c & INTERIOR != 0 {
                                    // SAFETY: the last reference is gone: the
                                    // line is ours alone until its slot is freed.
                                    push_children(unsafe { self.v.line(id) }, &mut next);
                                }
                                m.count.store(0, Relaxed);
                                m.flags.store(0, Relaxed);
                                freed.push(id);
                            }
                            break;
                        }
                        Err(x) => c = x,
                    }
                }
            }
            group_by_stripe(&mut last, self.v.geo.stripes);
            let mut i = 0;
            while i < last.len() {
                let s = last[i].0;
                let _g = self.lock(&self.v.stripe(s).lock)?;
                while i < last.len() && last[i].0 == s {
                    let id = last[i].1;
                    i += 1;
                    let m = self.v.meta(id);
                    let c = m.count.fetch_sub(1, AcqRel);
                    if c & COUNT != 1 {
                        continue;
                    }
                    self.unindex(s, self.place_of(id).1, id)?;
                    if c & INTERIOR != 0 {
                        // SAFETY: the line is out of the index with count 0
                        // under its stripe's lock: no one else can reach it;
                        // its slot is not free yet.
                        push_children(unsafe { self.v.line(id) }, &mut next);
                    }
                    m.count.store(0, Relaxed);
                    self.free(s, id)?;
                }
            }
            std::mem::swap(&mut round, &mut next);
            next.clear();
        }
        self.free_owned(&freed)
    }

    /// Builds the DAG of `data`: its root with one reference, and its height.
    pub(crate) fn build(&self, data: &[u8]) -> R<(u32, u32)> {
        if data.is_empty() {
            return Ok((0, 0));
        }
        if data.len() as u64 > crate::shape::MAX_SEGMENT_LEN {
            return Err(Fail::E(SharedError::TooLong(data.len() as u64)));
        }
        let l = self.v.geo.line_size();
        let fshift = self.v.geo.line_shift - 2;
        let fan = l / 4;
        let n = data.len().div_ceil(l);
        let mut level: Vec<u32> = Vec::with_capacity(n);
        debug_assert!(n > 0);
        let mut pad = vec![0u8; l];
        let tail = data.len() % l;
        if tail != 0 {
            pad[..tail].copy_from_slice(&data[data.len() - tail..]);
        }
        let line_at = |i: usize| -> &[u8] {
            if i == n - 1 && tail != 0 {
                &pad
            } else {
                &data[i * l..(i + 1) * l]
            }
        };
        // Hash every leaf first (0 = the zero line), so that the index
        // buckets, then the candidates' words, are prefetched ahead of use:
        // on a large memory each probe is otherwise a cache miss.
        let hashes: Vec<Option<u64>> = (0..n)
            .map(|i| {
                if i == n - 1 && tail != 0 {
                    // The padded last line: only the message's bytes can be nonzero.
                    let t = trim_zeros(&data[data.len() - tail..]);
                    return (!t.is_empty()).then(|| prefix_hash(false, t));
                }
                let line = line_at(i);
                (!line.iter().all(|&b| b == 0)).then(|| line_hash(false, line))
            })
            .collect();
        // Group the leaves by stripe (a counting sort), so that each stripe's
        // lock is taken once per segment rather than once per line.
        let nstripes = self.v.geo.stripes as usize;
        let stripe = |h: u64| self.stripe_of(h).0 as usize;
        let mut start = vec![0u32; nstripes + 1];
        for h in hashes.iter().flatten() {
            start[stripe(*h) + 1] += 1;
        }
        for k in 0..nstripes {
            start[k + 1] += start[k];
        }
        let mut order = vec![0u32; start[nstripes] as usize];
        for (i, h) in hashes.iter().enumerate() {
            if let Some(h) = h {
                let k = stripe(*h);
                order[start[k] as usize] = i as u32;
                start[k] += 1;
            }
        }
        level.resize(n, 0);
        const AHEAD: usize = 8;
        let hash_of = |j: usize| hashes[order[j] as usize].expect("ordered leaves are non-zero");
        for j in 0..order.len().min(AHEAD) {
            self.prefetch_home(hash_of(j));
        }
        let mut j = 0;
        while j < order.len() {
            let s = stripe(hash_of(j)) as u32;
            let _g = self.lock(&self.v.stripe(s).lock)?;
            while j < order.len() && stripe(hash_of(j)) as u32 == s {
                if j + AHEAD < order.len() {
                    self.prefetch_home(hash_of(j + AHEAD));
                }
                if j + AHEAD / 2 < order.len() {
                    self.prefetch_candidate(hash_of(j + AHEAD / 2));
                }
                let i = order[j] as usize;
                let h = hash_of(j);
                match self.intern_locked(s, self.stripe_of(h).1, false, line_at(i), h) {
                    Ok((id, _)) => level[i] = id,
                    Err(Fail::E(e)) => {
                        drop(_g);
                        let _ = self.release(&level);
                        return Err(Fail::E(e));
                    }
                    Err(f) => return Err(f),
                }
                j += 1;
            }
        }
        let height = crate::shape::height_for(level.len() as u64, fshift);
        for _ in 0..height {
            let mut next = Vec::with_capacity(level.len().div_ceil(fan));
            for (g, group) in level.chunks(fan).enumerate() {
                if group.iter().all(|&x| x == 0) {
                    next.push(0);
                    continue;
                }
                pad.fill(0);
                for (i, &x) in group.iter().enumerate() {
                    pad[i * 4..i * 4 + 4].copy_from_slice(&x.to_le_bytes());
                }
                match self.intern_line(true, &pad) {
                    Ok((id, hit)) => {
                        next.push(id);
                        if hit {
                            // The existing line holds its own references to
                            // these children: give ours back.
                            self.release(group)?;
                        }
                    }
                    Err(Fail::E(e)) => {
                        let _ = self.release(&next);
                        let _ = self.release(&level[g * fan..]);
                        return Err(Fail::E(e));
                    }
                    Err(f) => return Err(f),
                }
            }
            level = next;
        }
        Ok((level[0], height))
    }

    /// Copies bytes `off..off + buf.len()` of the segment (root, height) into
    /// `buf`. The caller holds a reference to the root.
    pub(crate) fn read(
        &self,
        root: u32,
        height: u32,
        off: u64,
        buf: &mut [u8],
    ) -> SharedResult<()> {
        self.read_node(root, height, 0, off, buf)
    }

    fn read_node(
        &self,
        node: u32,
        level: u32,
        base: u64,
        off: u64,
        buf: &mut [u8],
    ) -> SharedResult<()> {
        if buf.is_empty() {
            return Ok(());
        }
        if node == 0 {
            buf.fill(0);
            return Ok(());
        }
        self.check_line(node)?;
        // SAFETY: the caller holds a reference to the root, which holds one
        // to every line below it: none of them is freed or rewritten.
        let line = unsafe { self.v.line(node) };
        let shift = self.v.geo.line_shift;
        if level == 0 {
            let at = (off - base) as usize;
            if at + buf.len() > line.len() {
                return Err(SharedError::Corrupt("leaf range".into()));
            }
            buf.copy_from_slice(&line[at..at + buf.len()]);
            return Ok(());
        }
        if (self.v.meta(node).count.load(Relaxed) & INTERIOR) == 0 {
            return Err(SharedError::Corrupt(format!("line {node} is not interior")));
        }
        let cshift = shift + (shift - 2) * (level - 1);
        if cshift >= 64 {
            return Err(SharedError::Corrupt("DAG too tall".into()));
        }
        let child_span = 1u64 << cshift;
        let mut pos = off;
        let mut done = 0usize;
        while done < buf.len() {
            let i = ((pos - base) >> cshift) as usize;
            if i * 4 >= line.len() {
                return Err(SharedError::Corrupt("range beyond an interior line".into()));
            }
            let child = u32::from_le_bytes(line[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
            let cbase = base + ((i as u64) << cshift);
            let n = ((cbase + child_span - pos) as usize).min(buf.len() - done);
            self.read_node(child, level - 1, cbase, pos, &mut buf[done..done + n])?;
            done += n;
            pos += n as u64;
        }
        Ok(())
    }

    fn ledger_take(&self) -> SharedResult<u32> {
        self.ledger_free
            .lock()
            .pop()
            .ok_or(SharedError::LedgerFull(self.v.geo.ledger))
    }

    fn ledger_give(&self, i: u32) {
        self.ledger_free.lock().push(i);
    }

    /// Records `root` (whose reference the caller owns) in ledger entry `slot`.
    fn ledger_set(&self, slot: u32, root: u32) {
        self.v.ledger(self.me, slot).store(root, Release);
    }

    /// Runs a recovery if some attached process is dead; returns how many
    /// dead processes it reclaimed.
    pub(crate) fn reclaim(&self) -> SharedResult<u32> {
        self.check_fork()?;
        let dead = (0..self.v.geo.procs).any(|i| {
            i != self.me && self.v.proc_slot(i).pid.load(Acquire) != 0 && !self.slot_alive(i)
        });
        if !dead {
            return Ok(0);
        }
        self.recover(0)
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        if sys::fork_generation() != self.fork_gen {
            return;
        }
        // Every segment and connection holds an Arc of this attachment, so
        // the ledger is empty here; release leftovers defensively.
        let mut left = Vec::new();
        for i in 0..self.v.geo.ledger {
            let r = self.v.ledger(self.me, i).load(Acquire);
            if r != 0 {
                left.push((i, r));
            }
        }
        if !left.is_empty() {
            let _ = self.run(|| {
                for &(i, r) in &left {
                    if self.v.ledger(self.me, i).swap(0, AcqRel) == r {
                        self.release(&[r])?;
                    }
                }
                Ok(())
            });
        }
        let s = self.v.proc_slot(self.me);
        s.start.store(0, Relaxed);
        s.pid.store(0, Release);
    }
}

/// A HICAMP memory mapped by several processes. See the module docs.
#[derive(Clone)]
pub struct SharedMemory {
    pub(crate) shm: Arc<Shm>,
}

impl std::fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedMemory({}, slot {})", self.shm.path, self.shm.me)
    }
}

/// Occupancy figures of a shared memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SharedStats {
    /// Line size in bytes.
    pub line_size: usize,
    /// Line slots.
    pub capacity_lines: u64,
    /// Slots ever used (the high-water mark).
    pub high_water: u64,
    /// Slots on the free stack (stripe caches not counted).
    pub free_stack: u64,
    /// Attached live processes.
    pub processes: u64,
    /// Recoveries run since creation.
    pub recoveries: u64,
    /// Bytes of the mapping.
    pub mapping_bytes: u64,
}

impl SharedMemory {
    /// Creates a new shared memory file at `path` (it must not exist) and
    /// attaches to it.
    pub fn create(path: impl AsRef<Path>, opts: SharedOptions) -> SharedResult<SharedMemory> {
        Ok(SharedMemory {
            shm: Arc::new(Shm::create(path.as_ref(), &opts)?),
        })
    }

    /// Attaches to an existing shared memory, reclaiming what dead
    /// processes held.
    pub fn open(path: impl AsRef<Path>) -> SharedResult<SharedMemory> {
        Ok(SharedMemory {
            shm: Arc::new(Shm::open(path.as_ref())?),
        })
    }

    /// Line size in bytes.
    pub fn line_size(&self) -> usize {
        self.shm.v.geo.line_size()
    }

    /// Interns `data` as a segment: its lines are deduplicated against every
    /// line of the memory, whichever process wrote it.
    pub fn intern(&self, data: &[u8]) -> SharedResult<SharedSegment> {
        let shm = &self.shm;
        shm.check_fork()?;
        let slot = shm.ledger_take()?;
        let r = shm.run(|| {
            let (root, height) = shm.build(data)?;
            if root != 0 {
                shm.ledger_set(slot, root);
            }
            Ok((root, height))
        });
        match r {
            Ok((root, height)) => Ok(self.segment(root, height, data.len() as u64, slot)),
            Err(e) => {
                shm.ledger_give(slot);
                Err(e)
            }
        }
    }

    fn segment(&self, root: u32, height: u32, len: u64, slot: u32) -> SharedSegment {
        let slot = if root == 0 {
            self.shm.ledger_give(slot);
            NO_SLOT
        } else {
            slot
        };
        SharedSegment {
            shm: self.shm.clone(),
            root,
            height,
            len,
            slot,
        }
    }

    fn check_name(name: &str) -> SharedResult<()> {
        if name.is_empty() || name.len() > MAX_SHARED_NAME {
            return Err(SharedError::BadName(name.to_string()));
        }
        Ok(())
    }

    fn find_name(&self, name: &str) -> Option<u32> {
        let v = &self.shm.v;
        (0..v.geo.names).find(|&i| {
            let e = v.name(i);
            e.state.load(Acquire) == 1
                && e.name_len.load(Relaxed) as usize == name.len()
                && name
                    .bytes()
                    .zip(e.name.iter())
                    .all(|(a, b)| b.load(Relaxed) == a)
        })
    }

    /// Binds `name` to a snapshot of `seg` (replacing an earlier binding).
    /// The binding outlives the processes; [`unbind`](Self::unbind) drops it.
    pub fn bind(&self, name: &str, seg: &SharedSegment) -> SharedResult<()> {
        Self::check_name(name)?;
        self.same(seg)?;
        let shm = &self.shm;
        let mut committed = false;
        shm.run(|| {
            if committed {
                return Ok(());
            }
            let old = {
                let _g = shm.lock(&shm.v.header().map_lock)?;
                let (e, old) = match self.find_name(name) {
                    Some(i) => {
                        let e = shm.v.name(i);
                        let cur = e.cur.load(Relaxed) & 1;
                        (e, Some((cur, e.v[cur as usize].root.load(Relaxed))))
                    }
                    None => {
                        let i = (0..shm.v.geo.names)
                            .find(|&i| shm.v.name(i).state.load(Relaxed) == 0)
                            .ok_or(SharedError::NamesFull(shm.v.geo.names))?;
                        let e = shm.v.name(i);
                        for (k, b) in name.bytes().enumerate() {
                            e.name[k].store(b, Relaxed);
                        }
                        e.name_len.store(name.len() as u32, Relaxed);
                        (e, None)
                    }
                };
                shm.inc(seg.root)?;
                let next = old.map_or(0, |(c, _)| 1 - c);
                let v = &e.v[next as usize];
                v.root.store(seg.root, Relaxed);
                v.height.store(seg.height, Relaxed);
                v.len.store(seg.len, Relaxed);
                e.cur.store(next, Release);
                e.state.store(1, Release);
                committed = true;
                old.map(|(_, r)| r)
            };
            if let Some(r) = old {
                shm.release(&[r])?;
            }
            Ok(())
        })
    }

    /// A snapshot of the segment bound to `name`.
    pub fn lookup(&self, name: &str) -> SharedResult<Option<SharedSegment>> {
        Self::check_name(name)?;
        let shm = &self.shm;
        let slot = shm.ledger_take()?;
        let r = shm.run(|| {
            let _g = shm.lock(&shm.v.header().map_lock)?;
            let Some(i) = self.find_name(name) else {
                return Ok(None);
            };
            let e = shm.v.name(i);
            let v = &e.v[(e.cur.load(Acquire) & 1) as usize];
            let (root, height, len) = (
                v.root.load(Relaxed),
                v.height.load(Relaxed),
                v.len.load(Relaxed),
            );
            shm.inc(root)?;
            if root != 0 {
                shm.ledger_set(slot, root);
            }
            Ok(Some((root, height, len)))
        });
        match r {
            Ok(Some((root, height, len))) => Ok(Some(self.segment(root, height, len, slot))),
            Ok(None) => {
                shm.ledger_give(slot);
                Ok(None)
            }
            Err(e) => {
                shm.ledger_give(slot);
                Err(e)
            }
        }
    }

    /// Removes the binding of `name`; false if it was not bound.
    pub fn unbind(&self, name: &str) -> SharedResult<bool> {
        Self::check_name(name)?;
        let shm = &self.shm;
        let mut removed = None;
        shm.run(|| {
            if removed.is_none() {
                let _g = shm.lock(&shm.v.header().map_lock)?;
                let Some(i) = self.find_name(name) else {
                    return Ok(());
                };
                let e = shm.v.name(i);
                let root = e.v[(e.cur.load(Relaxed) & 1) as usize].root.load(Relaxed);
                e.state.store(0, Release);
                removed = Some(root);
                drop(_g);
                shm.release(&[root])?;
            }
            Ok(())
        })?;
        Ok(removed.is_some())
    }

    /// The names bound in the memory.
    pub fn names(&self) -> Vec<String> {
        let v = &self.shm.v;
        (0..v.geo.names)
            .filter(|&i| v.name(i).state.load(Acquire) == 1)
            .map(|i| {
                let e = v.name(i);
                let n = (e.name_len.load(Relaxed) as usize).min(MAX_SHARED_NAME);
                let b: Vec<u8> = e.name[..n].iter().map(|x| x.load(Relaxed)).collect();
                String::from_utf8_lossy(&b).into_owned()
            })
            .collect()
    }

    /// Reclaims what dead processes held (a stop-the-world recovery, if any
    /// attached process is dead); returns how many were reclaimed.
    pub fn reclaim(&self) -> SharedResult<u32> {
        self.shm.reclaim()
    }

    /// Stops the world and checks every count against the references from
    /// the roots (names, ledgers, rings), the index and the free slots.
    pub fn check(&self) -> SharedResult<SharedCheck> {
        self.shm.check()
    }

    /// Test support: takes every lock of the memory inside an operation and
    /// never returns, so that a test can kill the process holding them and
    /// check that the others recover; `held` runs once they are held. Not
    /// for use outside tests.
    #[doc(hidden)]
    pub fn test_hold_locks_forever(&self, held: impl FnOnce()) -> ! {
        let shm = &self.shm;
        let _op = shm.enter().expect("enter");
        let h = shm.v.header();
        let mut guards = Vec::new();
        for s in 0..shm.v.geo.stripes {
            guards.push(shm.lock(&shm.v.stripe(s).lock).ok().expect("stripe lock"));
        }
        guards.push(shm.lock(&h.alloc_lock).ok().expect("alloc lock"));
        guards.push(shm.lock(&h.map_lock).ok().expect("map lock"));
        held();
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }

    /// Test support: adds a reference to `seg`'s root that no root records
    /// (a leak, for tests that show [`check`](Self::check) finds one).
    #[doc(hidden)]
    pub fn test_leak_reference(&self, seg: &SharedSegment) -> SharedResult<()> {
        self.shm.run(|| Ok(self.shm.inc(seg.root)?))
    }

    /// Occupancy figures.
    pub fn stats(&self) -> SharedStats {
        let v = &self.shm.v;
        let h = v.header();
        SharedStats {
            line_size: v.geo.line_size(),
            capacity_lines: v.geo.capacity as u64,
            high_water: h.next_fresh.load(Relaxed) as u64,
            free_stack: h.free_top.load(Relaxed) as u64,
            processes: (0..v.geo.procs)
                .filter(|&i| v.proc_slot(i).pid.load(Relaxed) != 0)
                .count() as u64,
            recoveries: h.recoveries.load(Relaxed),
            mapping_bytes: v.geo.total as u64,
        }
    }

    fn same(&self, seg: &SharedSegment) -> SharedResult<()> {
        if !Arc::ptr_eq(&self.shm, &seg.shm) {
            return Err(SharedError::BadParameter(
                "segment of another attachment".into(),
            ));
        }
        Ok(())
    }
}

/// The start time of process `pid` (clock ticks since boot, from
/// `/proc/PID/stat`), if it exists and is not a zombie.
pub fn process_start_time(pid: u32) -> Option<u64> {
    sys::start_time(pid)
}

/// True while process `pid` that started at `start` lives (not a zombie,
/// not a reused pid).
pub fn process_alive(pid: u32, start: u64) -> bool {
    sys::alive(pid, start)
}

const NO_SLOT: u32 = u32::MAX;

/// One reference to a segment of a [`SharedMemory`], recorded in this
/// process's ledger in the mapping. Dropping it releases the reference.
pub struct SharedSegment {
    shm: Arc<Shm>,
    root: u32,
    height: u32,
    len: u64,
    slot: u32,
}

impl std::fmt::Debug for SharedSegment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SharedSegment(root L{}, height {}, {} bytes)",
            self.root, self.height, self.len
        )
    }
}

impl SharedSegment {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for the empty segment.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The root line: equal content (and length) gives the equal root in
    /// every process.
    pub fn root(&self) -> LineId {
        LineId(self.root)
    }

    /// Height of the DAG.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// An O(1) snapshot: one count increment and one ledger entry.
    pub fn snapshot(&self) -> SharedResult<SharedSegment> {
        let shm = &self.shm;
        shm.check_fork()?;
        if self.root == 0 {
            return Ok(SharedSegment {
                shm: shm.clone(),
                root: 0,
                height: self.height,
                len: self.len,
                slot: NO_SLOT,
            });
        }
        let slot = shm.ledger_take()?;
        let r = shm.run(|| {
            shm.inc(self.root)?;
            shm.ledger_set(slot, self.root);
            Ok(())
        });
        if let Err(e) = r {
            shm.ledger_give(slot);
            return Err(e);
        }
        Ok(SharedSegment {
            shm: shm.clone(),
            root: self.root,
            height: self.height,
            len: self.len,
            slot,
        })
    }

    /// Copies `buf.len()` bytes from offset `off`.
    pub fn read_at(&self, off: u64, buf: &mut [u8]) -> SharedResult<()> {
        self.shm.check_fork()?;
        let n = buf.len() as u64;
        if off.checked_add(n).is_none_or(|e| e > self.len) {
            return Err(SharedError::BadRange {
                offset: off,
                len: n,
                seg_len: self.len,
            });
        }
        self.shm.read(self.root, self.height, off, buf)
    }

    /// The whole content.
    pub fn to_vec(&self) -> SharedResult<Vec<u8>> {
        let n = usize::try_from(self.len).map_err(|_| SharedError::TooLong(self.len))?;
        let mut v = vec![0u8; n];
        self.read_at(0, &mut v)?;
        Ok(v)
    }

    pub(crate) fn parts(&self) -> (u32, u32, u64) {
        (self.root, self.height, self.len)
    }
}

impl PartialEq for SharedSegment {
    /// Equal content: one comparison of roots and lengths.
    fn eq(&self, o: &SharedSegment) -> bool {
        self.root == o.root && self.len == o.len && self.shm.path == o.shm.path
    }
}

impl Drop for SharedSegment {
    fn drop(&mut self) {
        if self.slot == NO_SLOT || sys::fork_generation() != self.shm.fork_gen {
            return;
        }
        let shm = &self.shm;
        let (slot, root) = (self.slot, self.root);
        let mut cleared = false;
        let _ = shm.run(|| {
            if cleared {
                // A recovery ran after the ledger entry was cleared: it
                // recounted without this reference.
                return Ok(());
            }
            shm.v.ledger(shm.me, slot).store(0, Release);
            cleared = true;
            shm.release(&[root])
        });
        shm.ledger_give(slot);
    }
}
