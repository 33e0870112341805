//! Mapped regions: the one mapping that holds a memory, and typed views into
//! it (the line arena, arrays of atomics), plus cache-line flushing.
//!
//! This is the only module of the crate with `unsafe` code. A memory is one
//! `memmap2` mapping, anonymous or a shared file mapping, laid out by
//! [`crate::persist::Layout`]; every piece of state is addressed by an offset
//! into it.
//!
//! The arena hands out raw line slots. Its two `unsafe fn`s carry the line
//! protocol of the store: a slot is written exactly once, by the thread that
//! allocated it, before it is published (in the index under a shard lock, or in
//! a parent line); after that it is only read, until the last reference to it
//! is released and the slot goes back to a free list.

use std::fs::File;
use std::sync::atomic::{AtomicU64, AtomicU8};
use std::sync::Arc;

use memmap2::{MmapMut, MmapOptions, MmapRaw};

use crate::error::{Error, Result};
use crate::persist::Space;

#[cfg(not(loom))]
const _: () = assert!(
    std::mem::align_of::<u64>() == std::mem::align_of::<AtomicU64>()
        && std::mem::size_of::<u64>() == std::mem::size_of::<AtomicU64>()
);

#[cfg(not(loom))]
/// `n` zeroed `AtomicU64`s in memory from the zeroing allocator (calloc,
/// mmap for large sizes): the pages nobody writes are never touched.
pub(crate) fn zeroed_atomic_u64s(n: usize) -> Box<[AtomicU64]> {
    let v: Box<[u64]> = vec![0u64; n].into_boxed_slice();
    // SAFETY: AtomicU64 has the size, alignment (asserted above) and bit
    // validity of u64, so a boxed slice of one is a boxed slice of the other;
    // the allocation's layout is unchanged.
    unsafe { Box::from_raw(Box::into_raw(v) as *mut [AtomicU64]) }
}

/// Allocates `off..off + len` of `file` (posix_fallocate, mode 0: blocks are
/// reserved, the file length is unchanged when it already covers the range).
pub(crate) fn fallocate(file: &File, off: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain system call on a descriptor we own; no memory is passed.
    let rc =
        unsafe { libc::posix_fallocate(file.as_raw_fd(), off as libc::off_t, len as libc::off_t) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(rc))
    }
}

/// The end of the last extent of data of `file` in `start..end` (`start`
/// when there is none), by SEEK_DATA/SEEK_HOLE: holes and unwritten
/// (fallocated, never written) extents are not data.
pub(crate) fn last_data_end(file: &File, start: u64, end: u64) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let seek = |off: u64, whence: libc::c_int| -> std::io::Result<Option<u64>> {
        // SAFETY: lseek on a descriptor we own; the file offset it moves is
        // not used (every read and write is positional).
        let r = unsafe { libc::lseek(fd, off as libc::off_t, whence) };
        if r >= 0 {
            return Ok(Some(r as u64));
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(e),
        }
    };
    let mut last = start;
    let mut at = start;
    while at < end {
        let Some(data) = seek(at, libc::SEEK_DATA)? else {
            break;
        };
        if data >= end {
            break;
        }
        let hole = seek(data, libc::SEEK_HOLE)?.unwrap_or(end);
        last = hole.min(end);
        at = hole;
    }
    Ok(last)
}

/// Bytes an unprivileged writer can still allocate on `file`'s file system.
pub(crate) fn available_bytes(file: &File) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    // SAFETY: statvfs is plain old data, fully written by a successful call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a pointer to a live statvfs.
    if unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Renames `from` to `to` unless `to` exists (renameat2 RENAME_NOREPLACE;
/// link + unlink where the file system lacks it).
pub(crate) fn rename_noreplace(
    from: &std::path::Path,
    to: &std::path::Path,
) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let cs = |p: &std::path::Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
    };
    let (f, t) = (cs(from)?, cs(to)?);
    // SAFETY: both are NUL-terminated strings that live across the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOSYS) => {
            std::fs::hard_link(from, to)?;
            std::fs::remove_file(from)
        }
        _ => Err(e),
    }
}

/// The mapping behind a memory.
pub(crate) struct Backing {
    map: MmapRaw,
    base: *mut u8,
    len: usize,
    /// The file, for a persistent memory (kept open: it holds the lock).
    file: Option<File>,
    /// The file behind a private copy ([`Backing::file_copy`]): kept open
    /// only for its shared lock; nothing is ever written to it.
    _held: Option<File>,
    /// The file's reserved space (see `persist::Space`).
    space: Option<Space>,
    /// Free line slots set aside for unbinding (see `store::keep_reserve`).
    line_reserve: parking_lot::Mutex<Vec<u32>>,
}

// SAFETY: the mapping is plain memory; every access goes through the views
// below, whose own contracts govern concurrency.
unsafe impl Send for Backing {}
// SAFETY: as above.
unsafe impl Sync for Backing {}

impl Backing {
    /// An anonymous, zero-filled mapping of `len` bytes (MAP_NORESERVE: only
    /// the pages written take memory).
    pub(crate) fn anon(len: usize) -> Result<Arc<Backing>> {
        let len = len.max(4096);
        let map: MmapMut = MmapOptions::new()
            .len(len)
            .no_reserve_swap()
            .map_anon()
            .map_err(|e| Error::BadConfig(format!("cannot map {len} bytes: {e}")))?;
        Ok(Backing::over(MmapRaw::from(map), len, None, None, None))
    }

    fn over(
        map: MmapRaw,
        len: usize,
        file: Option<File>,
        held: Option<File>,
        space: Option<Space>,
    ) -> Arc<Backing> {
        Arc::new(Backing {
            base: map.as_mut_ptr(),
            map,
            len,
            file,
            _held: held,
            space,
            line_reserve: parking_lot::Mutex::new(Vec::new()),
        })
    }

    /// A shared mapping of the whole of `file` (whose length the caller
    /// checked). Only its reserved space (`space`) is ever touched.
    pub(crate) fn file(file: File, len: usize, space: Space) -> std::io::Result<Arc<Backing>> {
        let map = MmapOptions::new().len(len).map_raw(&file)?;
        Ok(Backing::over(map, len, Some(file), None, Some(space)))
    }

    /// A private, copy-on-write mapping of the whole of `file` (opened
    /// read-only, its length checked by the caller): pages are read from the
    /// file as they are touched, and what the memory writes (recovery's
    /// counts, the index) stays in this process. It behaves as an anonymous
    /// memory: nothing is synced or written back, and no reservation touches
    /// the file (`space` only tells how much of it is reserved).
    pub(crate) fn file_copy(file: File, len: usize, space: Space) -> std::io::Result<Arc<Backing>> {
        // SAFETY: a private mapping: our writes never reach the file. The
        // file may change under it only by a writer, which the shared lock
        // `file` holds (kept open in `_held`) excludes; and the caller
        // checked that the file is at least `len` bytes, so no page of the
        // mapping lies past its end.
        let map = unsafe { MmapOptions::new().len(len).map_copy(&file)? };
        Ok(Backing::over(
            MmapRaw::from(map),
            len,
            None,
            Some(file),
            Some(space),
        ))
    }

    /// The free line slots set aside for unbinding (see
    /// `store::keep_reserve`).
    pub(crate) fn line_reserve(&self) -> parking_lot::MutexGuard<'_, Vec<u32>> {
        self.line_reserve.lock()
    }

    /// The file of a persistent memory.
    pub(crate) fn file_handle(&self) -> Option<&File> {
        self.file.as_ref()
    }

    /// The reserved space of a persistent memory.
    pub(crate) fn space(&self) -> Option<&Space> {
        self.space.as_ref()
    }

    /// Makes line slots `0..end` safe to touch (a no-op for an anonymous
    /// mapping); `Error::NoSpace` when the file system is full.
    pub(crate) fn reserve_slots(&self, end: u64) -> Result<()> {
        match (&self.space, &self.file) {
            (Some(s), Some(f)) => s.reserve_slots(self, f, end),
            _ => Ok(()),
        }
    }

    /// Makes map entries `0..end` safe to touch (see `reserve_slots`).
    pub(crate) fn reserve_entries(&self, end: u64) -> Result<()> {
        match (&self.space, &self.file) {
            (Some(s), Some(f)) => s.reserve_entries(self, f, end),
            _ => Ok(()),
        }
    }

    /// The error for "no free line slot": `NoSpace` when the file system
    /// refused the last reservation, else `CapacityExhausted`.
    pub(crate) fn exhausted(&self, capacity: u64) -> Error {
        match &self.space {
            Some(s) if s.failed() => Error::NoSpace {
                path: s.path().to_string(),
                bytes: 0,
            },
            _ => Error::CapacityExhausted { capacity },
        }
    }

    pub(crate) fn is_file(&self) -> bool {
        self.file.is_some()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// A copy of `len` bytes at `off` (for headers: no reference into the
    /// mapping escapes).
    pub(crate) fn read_bytes(&self, off: usize, len: usize) -> Vec<u8> {
        assert!(off + len <= self.len, "read outside the mapping");
        let mut v = vec![0u8; len];
        // SAFETY: in bounds (checked above); the header region is written only
        // through `write_bytes` by the thread that owns the memory's lifecycle
        // (create, open, close), never concurrently with this read.
        let src = unsafe { std::slice::from_raw_parts(self.base.wrapping_add(off), len) };
        v.copy_from_slice(src);
        v
    }

    /// Writes bytes at `off` (headers only; see `read_bytes`).
    pub(crate) fn write_bytes(&self, off: usize, data: &[u8]) {
        assert!(off + data.len() <= self.len, "write outside the mapping");
        // SAFETY: in bounds; header bytes are written only during create,
        // open and close, when no other thread uses them.
        let dst =
            unsafe { std::slice::from_raw_parts_mut(self.base.wrapping_add(off), data.len()) };
        dst.copy_from_slice(data);
    }

    /// Forces `off..off + len` to the file (msync, MS_SYNC).
    pub(crate) fn msync(&self, off: usize, len: usize) -> std::io::Result<()> {
        if self.file.is_none() || len == 0 {
            return Ok(());
        }
        let start = off & !4095;
        let end = (off + len).min(self.len);
        self.map.flush_range(start, end - start)
    }

    /// Writes back the cache lines of `off..off + len` (clwb, clflushopt or
    /// clflush, whichever the CPU has). Order with [`store_fence`].
    pub(crate) fn flush_cache_lines(&self, off: usize, len: usize) {
        let end = (off + len).min(self.len);
        let mut p = off & !63;
        while p < end {
            flush_line(self.base.wrapping_add(p));
            p += 64;
        }
    }

    /// A view of `slots` lines of `line_size` bytes at `off`.
    pub(crate) fn arena(self: &Arc<Self>, off: usize, line_size: usize, slots: usize) -> Arena {
        assert!(off.is_multiple_of(4096) && off + slots * line_size <= self.len);
        Arena {
            base: self.base.wrapping_add(off),
            off,
            shift: line_size.trailing_zeros(),
            slots,
            backing: Arc::clone(self),
        }
    }

    /// A view of `len` `AtomicU8`s at `off` (the reference-count bytes).
    pub(crate) fn u8s(self: &Arc<Self>, off: usize, len: usize) -> AtomicU8Array {
        assert!(off.is_multiple_of(4096) && off + len <= self.len);
        AtomicU8Array {
            ptr: self.base.wrapping_add(off) as *const AtomicU8,
            len,
            _backing: Arc::clone(self),
        }
    }

    /// A view of `len` `AtomicU64`s at `off`.
    pub(crate) fn u64s(self: &Arc<Self>, off: usize, len: usize) -> AtomicU64Array {
        assert!(off.is_multiple_of(4096) && off + len * 8 <= self.len);
        AtomicU64Array {
            ptr: self.base.wrapping_add(off) as *const AtomicU64,
            len,
            _backing: Arc::clone(self),
        }
    }
}

/// Which cache-line write-back instruction this CPU has.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
pub(crate) enum FlushInsn {
    Clwb,
    Clflushopt,
    Clflush,
    None,
}

pub(crate) fn flush_insn() -> FlushInsn {
    use std::sync::OnceLock;
    static INSN: OnceLock<FlushInsn> = OnceLock::new();
    *INSN.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let ebx = std::arch::x86_64::__cpuid_count(7, 0).ebx;
            if ebx & (1 << 24) != 0 {
                FlushInsn::Clwb
            } else if ebx & (1 << 23) != 0 {
                FlushInsn::Clflushopt
            } else {
                FlushInsn::Clflush
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        FlushInsn::None
    })
}

#[inline]
fn flush_line(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    match flush_insn() {
        // SAFETY: clwb only writes a cache line back; `p` lies in our mapping.
        FlushInsn::Clwb => unsafe {
            std::arch::asm!("clwb [{0}]", in(reg) p, options(nostack, preserves_flags));
        },
        // SAFETY: as above (clflushopt also evicts the line).
        FlushInsn::Clflushopt => unsafe {
            std::arch::asm!("clflushopt [{0}]", in(reg) p, options(nostack, preserves_flags));
        },
        // SAFETY: as above; clflush is in every x86_64 CPU.
        FlushInsn::Clflush => unsafe { std::arch::x86_64::_mm_clflush(p) },
        FlushInsn::None => {}
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Writes back the CPU cache lines that cover `buf` (clwb, clflushopt or
/// clflush, whichever the CPU has; nothing off x86-64) and returns how many
/// 64-byte lines that was. For buffers outside a memory (the PASTE model of
/// `hicamp compare`); order with [`persist_fence`].
pub fn flush_cache_lines_of(buf: &[u8]) -> u64 {
    if buf.is_empty() {
        return 0;
    }
    let start = buf.as_ptr() as usize;
    let end = start + buf.len();
    let mut p = start & !63;
    let mut n = 0;
    while p < end {
        // The line at `p` holds at least one byte of `buf`.
        flush_line(buf.as_ptr().wrapping_add(p.max(start) - start));
        p += 64;
        n += 1;
    }
    n
}

/// Orders earlier cache-line write-backs before later stores (sfence), as
/// the memory's persist barrier does.
pub fn persist_fence() {
    store_fence();
}

/// The cache-line write-back instruction [`flush_cache_lines_of`] uses on
/// this CPU: `"clwb"`, `"clflushopt"`, `"clflush"` or `"none"`.
pub fn flush_instruction() -> &'static str {
    match flush_insn() {
        FlushInsn::Clwb => "clwb",
        FlushInsn::Clflushopt => "clflushopt",
        FlushInsn::Clflush => "clflush",
        FlushInsn::None => "none",
    }
}

/// Orders earlier cache-line write-backs before later stores (sfence).
#[inline]
pub(crate) fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: sfence has no memory-safety preconditions.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
    #[cfg(not(target_arch = "x86_64"))]
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}

/// The line arena: `slots` lines of `line_size` bytes; slot 0 is the all-zero
/// line and is never written.
pub(crate) struct Arena {
    base: *mut u8,
    off: usize,
    shift: u32,
    slots: usize,
    backing: Arc<Backing>,
}

// SAFETY: the arena is a plain byte region; concurrent access is governed by
// the line protocol described in the module docs (each slot has one writer,
// before publication, and readers only after publication).
unsafe impl Send for Arena {}
// SAFETY: as above.
unsafe impl Sync for Arena {}

impl Arena {
    /// The bytes of a line.
    ///
    /// # Safety
    /// `slot < slots`, and the slot must not be written while the returned
    /// slice lives: the caller holds a reference to the line (or the shard lock
    /// under which it is published), or owns the unpublished slot.
    #[inline]
    pub(crate) unsafe fn line(&self, slot: u32) -> &[u8] {
        debug_assert!((slot as usize) < self.slots);
        let p = self.base.wrapping_add((slot as usize) << self.shift);
        // SAFETY: `p` is in bounds by the caller's contract; the mapping lives
        // as long as `self`; no concurrent writer by the line protocol.
        unsafe { std::slice::from_raw_parts(p, 1 << self.shift) }
    }

    /// Writes a line's content (zero-padded when `data` is short).
    ///
    /// # Safety
    /// `0 < slot < slots`, and the caller exclusively owns the slot: it was just
    /// taken from a free list or the fresh range and is not yet published.
    #[inline]
    pub(crate) unsafe fn write(&self, slot: u32, data: &[u8]) {
        let ls = 1usize << self.shift;
        debug_assert!(slot != 0 && (slot as usize) < self.slots && data.len() <= ls);
        let dst = self.base.wrapping_add((slot as usize) << self.shift);
        // SAFETY: `dst..dst + ls` is in bounds and exclusively owned by the
        // caller's contract; `data` is never the arena slot itself.
        let line = unsafe { std::slice::from_raw_parts_mut(dst, ls) };
        line[..data.len()].copy_from_slice(data);
        if data.len() < ls {
            // (A zero-length fill is still a call to `memset`: a full line,
            // the common case, skips it.)
            line[data.len()..].fill(0);
        }
    }

    /// The address of a slot, for a caller that fills slots it owns in place
    /// (`store::inplace`: a reader writes them); writing through it is bound
    /// by [`Arena::write`]'s contract, for every slot written.
    #[inline]
    pub(crate) fn slot_ptr(&self, slot: u32) -> *mut u8 {
        debug_assert!(slot != 0 && (slot as usize) < self.slots);
        self.base.wrapping_add((slot as usize) << self.shift)
    }

    /// Number of slots (including slot 0).
    pub(crate) fn slots(&self) -> usize {
        self.slots
    }

    /// Offset of a slot in the backing mapping.
    pub(crate) fn offset_of(&self, slot: u32) -> usize {
        self.off + ((slot as usize) << self.shift)
    }

    pub(crate) fn backing(&self) -> &Arc<Backing> {
        &self.backing
    }
}

/// Hints the CPU to fetch the cache line at `p`. A prefetch never faults and
/// has no effect on program semantics, whatever `p` is.
#[inline(always)]
pub(crate) fn prefetch_ptr<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is a hint; it does not access memory architecturally and
    // cannot fault, for any address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// An array of `AtomicU8` inside a backing mapping.
pub(crate) struct AtomicU8Array {
    ptr: *const AtomicU8,
    len: usize,
    _backing: Arc<Backing>,
}

// SAFETY: the array is only accessed through atomics.
unsafe impl Send for AtomicU8Array {}
// SAFETY: as above.
unsafe impl Sync for AtomicU8Array {}

impl AtomicU8Array {
    pub(crate) fn as_slice(&self) -> &[AtomicU8] {
        // SAFETY: the range is inside the mapping (checked at construction)
        // and lives as long as `self` holds the backing; any bit pattern is
        // a valid AtomicU8, which has the layout of u8.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// An array of `AtomicU64` inside a backing mapping.
pub(crate) struct AtomicU64Array {
    ptr: *const AtomicU64,
    len: usize,
    _backing: Arc<Backing>,
}

// SAFETY: the array is only accessed through atomics.
unsafe impl Send for AtomicU64Array {}
// SAFETY: as above.
unsafe impl Sync for AtomicU64Array {}

impl AtomicU64Array {
    pub(crate) fn backing(&self) -> &Arc<Backing> {
        &self._backing
    }

    pub(crate) fn as_slice(&self) -> &[AtomicU64] {
        // SAFETY: inside the mapping, 4096-aligned, alive as long as `self`;
        // any bit pattern is a valid AtomicU64 (layout of u64).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// Asks the CPU to bring the cache line holding `x` into its caches, so that a later access
/// to it does not wait for memory (a hint only: no effect on what the program computes).
/// Callers with many independent random accesses (hash-table inserts) prefetch a few ahead.
#[inline(always)]
pub fn prefetch_read<T: ?Sized>(x: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch has no architectural effect and cannot fault; the address comes
    // from a live reference. (SSE, which it needs, is in every x86_64 CPU.)
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            (x as *const T).cast::<i8>(),
        )
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

/// A pool of zeroed memory for a memory's index tables: one anonymous
/// mapping (reserved, not committed) that asks for transparent huge pages,
/// carved into extents by first fit.
///
/// The index of a large memory is read at random, one bucket per interned
/// line; in 64 heap allocations of a few hundred KiB each it sat on 4 KiB
/// pages, and nearly every lookup took a TLB miss (a two-level page walk in a
/// VM). Packed into one mapping, the tables lie on a few dozen 2 MiB pages.
/// Freed extents are reused by later tables (coalesced with their
/// neighbours); their pages stay committed.
pub(crate) struct HugePool {
    map: MmapRaw,
    /// Free extents (offset, length), in ascending order of offset.
    free: std::sync::Mutex<Vec<(usize, usize)>>,
}

/// Extents of a [`HugePool`] are multiples of this (and so aligned to it).
pub(crate) const POOL_ALIGN: usize = 64;

impl HugePool {
    /// A pool of `len` bytes (rounded up to [`POOL_ALIGN`]; a multiple of
    /// 2 MiB is what huge pages can cover), or `None` when it cannot be
    /// mapped.
    pub(crate) fn new(len: usize) -> Option<HugePool> {
        let len = len.max(1).checked_next_multiple_of(POOL_ALIGN)?;
        let map = MmapOptions::new()
            .len(len)
            .no_reserve_swap()
            .map_anon()
            .ok()?;
        // A hint (see `Backing::anon`): without THP the pool still works.
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        Some(HugePool {
            map: MmapRaw::from(map),
            free: std::sync::Mutex::new(vec![(0, len)]),
        })
    }

    /// `len` zeroed bytes (a multiple of [`POOL_ALIGN`], non-zero) that the
    /// caller owns until it passes them to [`HugePool::free`]; `None` when
    /// no free extent is large enough.
    pub(crate) fn alloc(&self, len: usize) -> Option<std::ptr::NonNull<u8>> {
        debug_assert!(len > 0 && len.is_multiple_of(POOL_ALIGN));
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let k = free.iter().position(|&(_, l)| l >= len)?;
        let (off, l) = free[k];
        if l == len {
            free.remove(k);
        } else {
            free[k] = (off + len, l - len);
        }
        drop(free);
        let p = self.map.as_mut_ptr().wrapping_add(off);
        // SAFETY: `off..off + len` lies in the mapping (every extent does)
        // and was free, so nothing else reads or writes it: this thread owns
        // it now. Freed extents held old tables: zero them (a never-used
        // extent is zero already; writing it faults its pages in, which the
        // caller's inserts would do anyway).
        unsafe { std::ptr::write_bytes(p, 0, len) };
        std::ptr::NonNull::new(p)
    }

    /// Returns an extent from [`HugePool::alloc`] of `len` bytes at `p`.
    pub(crate) fn free(&self, p: std::ptr::NonNull<u8>, len: usize) {
        let off = (p.as_ptr() as usize).wrapping_sub(self.map.as_mut_ptr() as usize);
        debug_assert!(off + len <= self.map.len());
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let k = free.partition_point(|&(o, _)| o < off);
        debug_assert!(k == free.len() || off + len <= free[k].0);
        let merge_next = k < free.len() && off + len == free[k].0;
        let merge_prev = k > 0 && free[k - 1].0 + free[k - 1].1 == off;
        match (merge_prev, merge_next) {
            (true, true) => {
                free[k - 1].1 += len + free[k].1;
                free.remove(k);
            }
            (true, false) => free[k - 1].1 += len,
            (false, true) => free[k] = (off, len + free[k].1),
            (false, false) => free.insert(k, (off, len)),
        }
    }

    /// True when `p` lies in the pool.
    #[cfg(test)]
    pub(crate) fn holds(&self, p: *const u8) -> bool {
        let base = self.map.as_mut_ptr() as usize;
        (base..base + self.map.len()).contains(&(p as usize))
    }

    /// The free extents (offset, length).
    #[cfg(test)]
    fn free_extents(&self) -> Vec<(usize, usize)> {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(all(test, not(loom)))]
mod pool_tests {
    use super::{HugePool, POOL_ALIGN};

    /// First fit, exhaustion, coalescing of freed neighbours on both sides,
    /// and a reused extent comes back zeroed.
    #[test]
    fn pool_allocates_frees_and_coalesces() {
        let a = POOL_ALIGN;
        let pool = HugePool::new(8 * a).expect("map");
        let p: Vec<_> = (0..4).map(|_| pool.alloc(2 * a).expect("room")).collect();
        assert!(p.iter().all(|x| pool.holds(x.as_ptr())));
        assert!(pool.alloc(a).is_none(), "the pool is full");
        // SAFETY: `p[1]` is an extent of `2 * a` bytes this test owns.
        unsafe { std::ptr::write_bytes(p[1].as_ptr(), 0xab, 2 * a) };
        pool.free(p[1], 2 * a);
        pool.free(p[3], 2 * a);
        assert_eq!(pool.free_extents(), vec![(2 * a, 2 * a), (6 * a, 2 * a)]);
        assert!(pool.alloc(3 * a).is_none(), "no extent of 3 units is free");
        pool.free(p[2], 2 * a); // joins both neighbours
        assert_eq!(pool.free_extents(), vec![(2 * a, 6 * a)]);
        let q = pool.alloc(a).expect("room");
        assert_eq!(q, p[1], "first fit");
        // SAFETY: `q` is an extent of `a` bytes this test owns.
        let bytes = unsafe { std::slice::from_raw_parts(q.as_ptr(), a) };
        assert!(bytes.iter().all(|&b| b == 0), "a reused extent is zeroed");
        pool.free(q, a);
        pool.free(p[0], 2 * a); // joins the extent after it
        assert_eq!(pool.free_extents(), vec![(0, 8 * a)]);
    }
}
