//! Mapped regions: the line arena and arrays of atomics.
//!
//! This is the only module of the crate with `unsafe` code. Every region is one
//! `memmap2` mapping (anonymous today, a file in the persistence issue), so all
//! state is addressable by offsets into mappings.
//!
//! The arena hands out raw line slots. Its two `unsafe fn`s carry the line
//! protocol of the store: a slot is written exactly once, by the thread that
//! allocated it, before it is published (in the index under a shard lock, or in
//! a parent line); after that it is only read, until the last reference to it
//! is released and the slot goes back to a free list.

use std::sync::atomic::{AtomicU32, AtomicU64};

use memmap2::{MmapMut, MmapOptions};

use crate::error::{Error, Result};

fn map_anon(bytes: usize) -> Result<MmapMut> {
    // A zero-length mapping is an error in mmap(2); keep one page at least.
    let len = bytes.max(4096);
    // MAP_NORESERVE: the arena is a reservation of address space; only the
    // pages that lines are written to take memory.
    MmapOptions::new()
        .len(len)
        .no_reserve_swap()
        .map_anon()
        .map_err(|e| Error::BadConfig(format!("cannot map {len} bytes: {e}")))
}

/// The line arena: `slots` lines of `line_size` bytes, zero-filled; slot 0 is
/// the all-zero line and is never written.
pub(crate) struct Arena {
    _map: MmapMut,
    base: *mut u8,
    shift: u32,
    slots: usize,
}

// SAFETY: the arena is a plain byte region; concurrent access is governed by
// the line protocol described in the module docs (each slot has one writer,
// before publication, and readers only after publication).
unsafe impl Send for Arena {}
// SAFETY: as above.
unsafe impl Sync for Arena {}

impl Arena {
    pub(crate) fn new(line_size: usize, slots: usize) -> Result<Arena> {
        debug_assert!(line_size.is_power_of_two());
        let mut map = map_anon(slots * line_size)?;
        let base = map.as_mut_ptr();
        Ok(Arena {
            _map: map,
            base,
            shift: line_size.trailing_zeros(),
            slots,
        })
    }

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
        line[data.len()..].fill(0);
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

/// A zero-initialised array of `AtomicU32` in its own mapping.
pub(crate) struct AtomicU32Array {
    _map: MmapMut,
    ptr: *const AtomicU32,
    len: usize,
}

// SAFETY: the array is only accessed through atomics.
unsafe impl Send for AtomicU32Array {}
// SAFETY: as above.
unsafe impl Sync for AtomicU32Array {}

impl AtomicU32Array {
    pub(crate) fn new(len: usize) -> Result<Self> {
        let mut map = map_anon(len * 4)?;
        let ptr = map.as_mut_ptr() as *const AtomicU32;
        Ok(AtomicU32Array {
            _map: map,
            ptr,
            len,
        })
    }

    pub(crate) fn as_slice(&self) -> &[AtomicU32] {
        // SAFETY: the mapping is page-aligned, zero-filled (a valid AtomicU32 is
        // any bit pattern), `len * 4` bytes long and lives as long as `self`;
        // AtomicU32 has the size and alignment of u32.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// A zero-initialised array of `AtomicU64` in its own mapping.
pub(crate) struct AtomicU64Array {
    _map: MmapMut,
    ptr: *const AtomicU64,
    len: usize,
}

// SAFETY: the array is only accessed through atomics.
unsafe impl Send for AtomicU64Array {}
// SAFETY: as above.
unsafe impl Sync for AtomicU64Array {}

impl AtomicU64Array {
    pub(crate) fn new(len: usize) -> Result<Self> {
        let mut map = map_anon(len * 8)?;
        let ptr = map.as_mut_ptr() as *const AtomicU64;
        Ok(AtomicU64Array {
            _map: map,
            ptr,
            len,
        })
    }

    pub(crate) fn as_slice(&self) -> &[AtomicU64] {
        // SAFETY: page-aligned, zero-filled, `len * 8` bytes, lives as long as
        // `self`; AtomicU64 has the size and alignment of u64.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}
