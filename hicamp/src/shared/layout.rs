//! The layout of a shared memory file: every byte of state the processes
//! share lives here, at offsets computed from the header's parameters (the
//! offsets are recomputed on open, never read from the file).
//!
//! ```text
//!   0        header (4 KiB): magic, parameters, stop word, global locks,
//!            fresh-slot counter, free-stack top
//!   procs    P x 64 B process slots: pid, start time, in-operation counter
//!   ledger   P x E x u32: root lines each attached process holds
//!   stripes  S x 256 B: robust lock word + a cache of up to 62 free slots
//!   index    S x B x u32: open-addressing tables of line ids, one per stripe
//!   meta     N x 16 B: count (bit 31 = interior), flags (owned) and
//!            content hash per line
//!   free     N x u32: the free stack of line slots
//!   names    M x 128 B: name -> (root, height, length), two versions + current
//!   conns    C x (2 rings): SPSC rings of snapshots, one per direction
//!   arena    N x line size, page aligned
//! ```

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8};

use super::SharedError;

pub(crate) const MAGIC: [u8; 8] = *b"HICSHM01";
/// 4: `Meta::flags` (owned, unindexed stream lines).
pub(crate) const VERSION: u32 = 4;
pub(crate) const HEADER: usize = 4096;
pub(crate) const PROC_SLOT: usize = 64;
pub(crate) const STRIPE: usize = 256;
/// Free slots one stripe keeps for itself (the rest of its 256 bytes).
pub(crate) const STRIPE_CACHE: usize = 62;
pub(crate) const META: usize = 16;
pub(crate) const NAME_ENTRY: usize = 128;
/// Longest name in the shared segment map.
pub const MAX_SHARED_NAME: usize = 80;
pub(crate) const RING_HEADER: usize = 192;
pub(crate) const RING_ENTRY: usize = 32;
pub(crate) const CONN_HEADER: usize = 64;

/// The header at offset 0. Parameters first (written once at create), then
/// the shared mutable words, each in its own cache line.
#[repr(C)]
pub(crate) struct Header {
    pub magic: [u8; 8],
    pub version: u32,
    /// 0 while `create` fills the file, 1 once it is usable.
    pub ready: AtomicU32,
    pub line_shift: u32,
    pub capacity: u32,
    pub stripes: u32,
    pub stripe_buckets: u32,
    pub procs: u32,
    pub ledger: u32,
    pub names: u32,
    pub conns: u32,
    pub ring_entries: u32,
    pub _pad0: u32,
    pub total: u64,
    pub _pad1: [u8; 8],
    /// Token (process slot + 1) of the process that stopped the world for a
    /// recovery or a check; 0 when the world runs.
    pub stop: AtomicU32,
    pub _pad2: [u8; 60],
    /// Lock over the free stack and the fresh-slot counter.
    pub alloc_lock: AtomicU32,
    /// Next never-used slot.
    pub next_fresh: AtomicU32,
    /// Entries on the free stack.
    pub free_top: AtomicU32,
    pub _pad3: [u8; 52],
    /// Lock over the names table.
    pub map_lock: AtomicU32,
    /// Completed recoveries (a statistic).
    pub recoveries: AtomicU64,
}

#[repr(C)]
pub(crate) struct ProcSlot {
    /// Owner pid; 0 = free.
    pub pid: AtomicU32,
    /// Operations of this process in progress (threads inside one).
    pub in_op: AtomicU32,
    /// Owner's start time (clock ticks since boot; 0 = unknown).
    pub start: AtomicU64,
}

#[repr(C)]
pub(crate) struct Stripe {
    pub lock: AtomicU32,
    pub ncache: AtomicU32,
    pub cache: [AtomicU32; STRIPE_CACHE],
}

#[repr(C)]
pub(crate) struct Meta {
    /// Bit 31: interior line; bits 0..31: references.
    pub count: AtomicU32,
    /// `OWNED` (bit 0): a stream line written without the index (see
    /// `Shm::build_owned`); its hash is unused. 0 on a free slot.
    pub flags: AtomicU32,
    pub hash: AtomicU64,
}

#[repr(C)]
pub(crate) struct Version {
    pub root: AtomicU32,
    pub height: AtomicU32,
    pub len: AtomicU64,
}

#[repr(C)]
pub(crate) struct NameEntry {
    /// 0 = free, 1 = bound.
    pub state: AtomicU32,
    /// Which of `v` is current.
    pub cur: AtomicU32,
    pub name_len: AtomicU32,
    pub _pad: u32,
    pub name: [AtomicU8; MAX_SHARED_NAME],
    pub v: [Version; 2],
}

/// A connection's header: two ends (A = 0, B = 1); end A writes ring 0 and
/// reads ring 1, end B the other way round.
#[repr(C)]
pub(crate) struct ConnHeader {
    /// 0 = free, 1 = in use.
    pub state: AtomicU32,
    /// Two bits per end: 0 = not attached yet, 1 = attached, 2 = closed.
    pub ends: AtomicU32,
    /// Process slot + 1 of each end (0 = none).
    pub slot: [AtomicU32; 2],
}

/// One direction of a connection. The writer owns `head`, the reader `tail`
/// and `tail_off`; each side's words sit in their own cache line.
#[repr(C)]
pub(crate) struct RingHeader {
    pub head: AtomicU32,
    /// Bumped on every event the reader waits for (a publish, a writer
    /// flag): the reader's futex word.
    pub wseq: AtomicU32,
    /// Writer flags: `FIN` (no more data), `RST` (reset).
    pub wflags: AtomicU32,
    pub reader_waiting: AtomicU32,
    /// Readiness tokens the writer put into its descriptor for this ring
    /// (0 or 1; the shim's local mode: see `Conn::token_take`).
    pub tokens: AtomicU32,
    /// Filler bytes the writer put into its descriptor while the ring was full, not yet
    /// taken out by the reader (the shim's local mode: see `Conn::fillers_add`).
    pub filled: AtomicU32,
    /// Reasons the reader's process keeps tokens on (the shim's local mode: a thread that may
    /// be blocked in a kernel wait that can see the reader's descriptor, a fork, a nested
    /// epoll). At 0 the writer puts no token: see `Conn::pin`.
    pub pins: AtomicU32,
    pub _pad0: [u8; 36],
    pub tail: AtomicU32,
    /// Bumped on every event the writer waits for: its futex word.
    pub rseq: AtomicU32,
    /// Reader flags: `CLOSED`.
    pub rflags: AtomicU32,
    pub writer_waiting: AtomicU32,
    /// Bytes of the front entry already consumed.
    pub tail_off: AtomicU64,
    pub _pad1: [u8; 40],
    /// Bytes in the ring (published, not consumed): the writer's budget.
    pub bytes: AtomicU64,
    pub _pad2: [u8; 56],
}

#[repr(C)]
pub(crate) struct RingEntry {
    pub root: AtomicU32,
    pub height: AtomicU32,
    pub seg_len: AtomicU64,
    pub off: AtomicU64,
    pub len: AtomicU64,
}

const _: () = {
    assert!(std::mem::size_of::<Header>() <= HEADER);
    assert!(std::mem::size_of::<ProcSlot>() <= PROC_SLOT);
    assert!(std::mem::size_of::<Stripe>() == STRIPE);
    assert!(std::mem::size_of::<Meta>() == META);
    assert!(std::mem::size_of::<NameEntry>() == NAME_ENTRY);
    assert!(std::mem::size_of::<RingHeader>() == RING_HEADER);
    assert!(std::mem::size_of::<RingEntry>() == RING_ENTRY);
    assert!(std::mem::size_of::<ConnHeader>() <= CONN_HEADER);
};

/// Parameters of a shared memory and the offsets derived from them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub line_shift: u32,
    pub capacity: u32,
    pub stripes: u32,
    pub stripe_buckets: u32,
    pub procs: u32,
    pub ledger: u32,
    pub names: u32,
    pub conns: u32,
    pub ring_entries: u32,
    pub off_procs: usize,
    pub off_ledger: usize,
    pub off_stripes: usize,
    pub off_index: usize,
    pub off_meta: usize,
    pub off_free: usize,
    pub off_names: usize,
    pub off_conns: usize,
    pub conn_size: usize,
    pub off_arena: usize,
    pub total: usize,
}

fn align(x: usize, a: usize) -> usize {
    x.div_ceil(a) * a
}

impl Geometry {
    /// Computes the offsets, checking every parameter.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        line_shift: u32,
        capacity: u32,
        stripes: u32,
        stripe_buckets: u32,
        procs: u32,
        ledger: u32,
        names: u32,
        conns: u32,
        ring_entries: u32,
    ) -> Result<Geometry, SharedError> {
        let bad = |what: &str| Err(SharedError::BadParameter(what.to_string()));
        if !(4..=12).contains(&line_shift) {
            return bad("line size must be a power of two in 16..=4096");
        }
        if !(2..=(1 << 30)).contains(&capacity) {
            return bad("capacity must be 2..=2^30 lines");
        }
        if !stripes.is_power_of_two() || stripes > 4096 {
            return bad("stripes must be a power of two <= 4096");
        }
        if !stripe_buckets.is_power_of_two() || (stripes as u64 * stripe_buckets as u64) > 1 << 32 {
            return bad("index buckets per stripe must be a power of two");
        }
        if procs == 0 || procs > 0xFFFF {
            return bad("process slots must be 1..=65535");
        }
        if ledger == 0 || ledger > 1 << 24 {
            return bad("ledger entries per process must be 1..=2^24");
        }
        if names > 1 << 20 || conns > 1 << 20 {
            return bad("too many names or connections");
        }
        if !ring_entries.is_power_of_two() || !(2..=1 << 20).contains(&ring_entries) {
            return bad("ring entries must be a power of two in 2..=2^20");
        }
        let off_procs = HEADER;
        let off_ledger = align(off_procs + procs as usize * PROC_SLOT, 64);
        let off_stripes = align(off_ledger + procs as usize * ledger as usize * 4, 64);
        let off_index = align(off_stripes + stripes as usize * STRIPE, 64);
        let off_meta = align(
            off_index + stripes as usize * stripe_buckets as usize * 4,
            64,
        );
        let off_free = align(off_meta + capacity as usize * META, 64);
        let off_names = align(off_free + capacity as usize * 4, 64);
        let off_conns = align(off_names + names as usize * NAME_ENTRY, 64);
        let conn_size = CONN_HEADER + 2 * (RING_HEADER + ring_entries as usize * RING_ENTRY);
        let off_arena = align(off_conns + conns as usize * conn_size, 4096);
        let total = off_arena + ((capacity as usize) << line_shift);
        Ok(Geometry {
            line_shift,
            capacity,
            stripes,
            stripe_buckets,
            procs,
            ledger,
            names,
            conns,
            ring_entries,
            off_procs,
            off_ledger,
            off_stripes,
            off_index,
            off_meta,
            off_free,
            off_names,
            off_conns,
            conn_size,
            off_arena,
            total,
        })
    }

    pub fn line_size(&self) -> usize {
        1 << self.line_shift
    }
}

/// The mapping: a base pointer and its geometry. Every accessor takes an
/// index its caller has checked against the geometry (line ids read from
/// the mapping are checked by `Shm::check_line` first).
pub(crate) struct View {
    pub base: *mut u8,
    pub geo: Geometry,
}

// SAFETY: the mapping is shared memory accessed only through atomics, and
// through line bytes that the protocol (counts, stripe locks) keeps immutable
// while anyone can read them; the pointer stays valid as long as the owner
// of the mapping (`Shm`) lives.
unsafe impl Send for View {}
// SAFETY: as above.
unsafe impl Sync for View {}

impl View {
    /// # Safety
    /// `off + size_of::<T>()` lies inside the mapping, `off` is aligned for T,
    /// and T is made of atomics (or bytes written once before publication).
    #[inline]
    unsafe fn at<T>(&self, off: usize) -> &T {
        debug_assert!(off + std::mem::size_of::<T>() <= self.geo.total);
        debug_assert!(off.is_multiple_of(std::mem::align_of::<T>()));
        // SAFETY: off is inside the mapping (the caller's contract).
        let p = unsafe { self.base.add(off) } as *const T;
        // SAFETY: p is in bounds, aligned, and T is atomics (the contract).
        unsafe { &*p }
    }

    #[inline]
    pub fn header(&self) -> &Header {
        // SAFETY: the header is at 0 and the mapping is at least HEADER long.
        unsafe { self.at(0) }
    }

    #[inline]
    pub fn proc_slot(&self, i: u32) -> &ProcSlot {
        assert!(i < self.geo.procs);
        // SAFETY: i < procs, inside the procs area; 64-byte aligned.
        unsafe { self.at(self.geo.off_procs + i as usize * PROC_SLOT) }
    }

    #[inline]
    pub fn ledger(&self, proc: u32, i: u32) -> &AtomicU32 {
        assert!(proc < self.geo.procs && i < self.geo.ledger);
        let k = proc as usize * self.geo.ledger as usize + i as usize;
        // SAFETY: k < procs * ledger, inside the ledger area; 4-byte aligned.
        unsafe { self.at(self.geo.off_ledger + k * 4) }
    }

    #[inline]
    pub fn stripe(&self, s: u32) -> &Stripe {
        assert!(s < self.geo.stripes);
        // SAFETY: s < stripes, inside the stripes area; 64-byte aligned.
        unsafe { self.at(self.geo.off_stripes + s as usize * STRIPE) }
    }

    #[inline]
    pub fn bucket(&self, s: u32, b: u32) -> &AtomicU32 {
        assert!(s < self.geo.stripes && b < self.geo.stripe_buckets);
        let k = s as usize * self.geo.stripe_buckets as usize + b as usize;
        // SAFETY: inside the index area; 4-byte aligned.
        unsafe { self.at(self.geo.off_index + k * 4) }
    }

    #[inline]
    pub fn meta(&self, id: u32) -> &Meta {
        assert!(id < self.geo.capacity);
        // SAFETY: id < capacity, inside the meta area; 16-byte aligned.
        unsafe { self.at(self.geo.off_meta + id as usize * META) }
    }

    #[inline]
    pub fn free_slot(&self, i: u32) -> &AtomicU32 {
        assert!(i < self.geo.capacity);
        // SAFETY: i < capacity, inside the free-stack area.
        unsafe { self.at(self.geo.off_free + i as usize * 4) }
    }

    #[inline]
    pub fn name(&self, i: u32) -> &NameEntry {
        assert!(i < self.geo.names);
        // SAFETY: i < names, inside the names area; 64-byte aligned.
        unsafe { self.at(self.geo.off_names + i as usize * NAME_ENTRY) }
    }

    #[inline]
    pub fn conn(&self, c: u32) -> &ConnHeader {
        assert!(c < self.geo.conns);
        // SAFETY: c < conns, inside the conns area; 64-byte aligned.
        unsafe { self.at(self.geo.off_conns + c as usize * self.geo.conn_size) }
    }

    fn ring_off(&self, c: u32, r: u32) -> usize {
        assert!(c < self.geo.conns && r < 2);
        self.geo.off_conns
            + c as usize * self.geo.conn_size
            + CONN_HEADER
            + r as usize * (RING_HEADER + self.geo.ring_entries as usize * RING_ENTRY)
    }

    #[inline]
    pub fn ring(&self, c: u32, r: u32) -> &RingHeader {
        // SAFETY: inside connection c's block; 64-byte aligned.
        unsafe { self.at(self.ring_off(c, r)) }
    }

    #[inline]
    pub fn entry(&self, c: u32, r: u32, i: u32) -> &RingEntry {
        let i = i & (self.geo.ring_entries - 1);
        // SAFETY: i < ring_entries, inside ring r of connection c.
        unsafe { self.at(self.ring_off(c, r) + RING_HEADER + i as usize * RING_ENTRY) }
    }

    /// The bytes of line `id`.
    ///
    /// # Safety
    /// The caller holds a reference to the line (so it is not freed and
    /// rewritten meanwhile), or holds its stripe lock with the line in the
    /// index, or has the world stopped.
    #[inline]
    pub unsafe fn line(&self, id: u32) -> &[u8] {
        assert!(id < self.geo.capacity);
        let l = self.geo.line_size();
        // SAFETY: id < capacity: the line lies inside the arena.
        let p = unsafe { self.base.add(self.geo.off_arena + id as usize * l) };
        // SAFETY: l bytes at p are mapped; immutability while the slice
        // lives is the caller's contract.
        unsafe { std::slice::from_raw_parts(p, l) }
    }

    /// Writes `data` (at most a line) at the start of a freshly allocated
    /// line; the rest of the line keeps whatever it held (an owned stream
    /// line: nothing reads past its segment's length).
    ///
    /// # Safety
    /// As [`write_line`](Self::write_line): slot `id` is the caller's alone.
    #[inline]
    pub unsafe fn write_line_prefix(&self, id: u32, data: &[u8]) {
        assert!(id < self.geo.capacity && data.len() <= self.geo.line_size());
        let l = self.geo.line_size();
        // SAFETY: id < capacity: the line lies inside the arena.
        let p = unsafe { self.base.add(self.geo.off_arena + id as usize * l) };
        // SAFETY: data.len() <= l bytes of the line, mapped and ours alone (the
        // caller's contract); `data` is the caller's buffer, not in the arena's slot.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) }
    }

    /// Writes a freshly allocated line.
    ///
    /// # Safety
    /// Slot `id` was just taken from the free structures by the caller and
    /// is reachable by no one else until the caller publishes it.
    #[inline]
    pub unsafe fn write_line(&self, id: u32, data: &[u8]) {
        assert!(id < self.geo.capacity && data.len() == self.geo.line_size());
        // SAFETY: id < capacity: the line lies inside the arena.
        let p = unsafe { self.base.add(self.geo.off_arena + id as usize * data.len()) };
        // SAFETY: the line is mapped and ours alone (the caller's contract);
        // `data` is a separate heap or stack buffer.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) }
    }
}
