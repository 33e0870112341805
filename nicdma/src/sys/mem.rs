//! Memory shared with the kernel: `mmap`'d regions (AF_PACKET rings, AF_XDP
//! rings and UMEM) with bounds-checked accessors.
//!
//! The kernel writes into these regions concurrently with us, under ring
//! protocols: a producer index (or a status word) published with release
//! semantics hands a descriptor or a frame over. The accessors here give
//! atomics for those words and byte slices for the parts the protocol says
//! the caller owns at that moment; every offset is checked against the
//! region's length (out of range reads as `None`, never as a stray access).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;

/// One `mmap`'d region, unmapped on drop.
#[derive(Debug)]
pub struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the region is plain memory owned by this value (no thread-local
// state); moving the owner to another thread is fine. Shared access goes
// through atomics or through `&mut self`.
unsafe impl Send for Mmap {}

impl Mmap {
    /// Maps `len` bytes of `fd` at `offset`, shared and populated (a
    /// kernel ring: AF_PACKET's or one of AF_XDP's).
    pub fn shared_fd(fd: BorrowedFd<'_>, len: usize, offset: u64) -> io::Result<Mmap> {
        Self::map(
            len,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd.as_raw_fd(),
            offset,
        )
    }

    /// Maps `len` bytes of private anonymous memory, populated (AF_XDP's
    /// UMEM).
    pub fn anonymous(len: usize) -> io::Result<Mmap> {
        Self::map(
            len,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    }

    /// Maps `len` bytes (a multiple of 2 MiB) of private anonymous memory
    /// in huge pages, populated (netmap's extmem region: a ring object
    /// larger than a page must be physically contiguous). Fails where no
    /// huge pages are reserved.
    pub fn anonymous_huge(len: usize) -> io::Result<Mmap> {
        Self::map(
            len,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE | libc::MAP_HUGETLB,
            -1,
            0,
        )
    }

    fn map(len: usize, flags: libc::c_int, fd: RawFdOrNone, offset: u64) -> io::Result<Mmap> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"));
        }
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "mmap offset"))?;
        // SAFETY: a fresh mapping at an address the kernel chooses (no
        // existing memory is replaced); `fd` is either -1 (anonymous) or a
        // descriptor the caller borrows for the call. The result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave NULL"))?;
        Ok(Mmap { ptr, len })
    }

    /// The region's length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The region's address (for registering it with the kernel).
    pub fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// The address of byte `off` (callers check bounds first; computing it
    /// is safe either way).
    fn at(&self, off: usize) -> *mut u8 {
        self.ptr.as_ptr().wrapping_add(off)
    }

    fn in_bounds(&self, off: usize, len: usize) -> bool {
        off.checked_add(len).is_some_and(|end| end <= self.len)
    }

    /// The 32-bit word at `off` as an atomic (a ring's producer, consumer or
    /// flags word, or a frame's status); `None` out of bounds or misaligned.
    pub fn atomic_u32(&self, off: usize) -> Option<&AtomicU32> {
        if !self.in_bounds(off, 4) || !off.is_multiple_of(4) {
            return None;
        }
        let p = self.at(off).cast::<AtomicU32>();
        // SAFETY: in bounds and 4-aligned (the mapping is page-aligned); the
        // word lives as long as `self`, and every access to it, ours and the
        // kernel's, is atomic (the kernel uses READ_ONCE/smp_store_release).
        Some(unsafe { &*p })
    }

    /// Reads `N` bytes at `off` (a descriptor the kernel published before the
    /// acquire load of its producer index); `None` out of bounds.
    pub fn read<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        if !self.in_bounds(off, N) {
            return None;
        }
        let mut out = [0u8; N];
        // SAFETY: `off..off + N` is inside the mapping and `out` is a
        // distinct local of N bytes; the bytes were published to us by the
        // acquire load of the ring's producer index before this read.
        unsafe { std::ptr::copy_nonoverlapping(self.at(off), out.as_mut_ptr(), N) };
        Some(out)
    }

    /// Writes `bytes` at `off` (a descriptor or header we own until we
    /// publish it); `false` out of bounds.
    pub fn write(&mut self, off: usize, bytes: &[u8]) -> bool {
        if !self.in_bounds(off, bytes.len()) {
            return false;
        }
        // SAFETY: in bounds; `&mut self` excludes other user-space access,
        // and the ring protocol says the kernel does not touch these bytes
        // until we publish them. `bytes` cannot overlap the mapping's
        // exclusive borrow.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.at(off), bytes.len());
        }
        true
    }

    /// The bytes `off..off + len`, which the ring protocol says we own now
    /// (a received frame not yet given back); `None` out of bounds.
    pub fn slice(&self, off: usize, len: usize) -> Option<&[u8]> {
        if !self.in_bounds(off, len) {
            return None;
        }
        // SAFETY: in bounds, lives as long as `&self`; the kernel does not
        // write a frame it handed over until we give it back (which needs
        // `&mut self` or a later call).
        Some(unsafe { std::slice::from_raw_parts(self.at(off), len) })
    }

    /// The bytes `off..off + len` for writing (a TX frame we own);
    /// `None` out of bounds.
    pub fn slice_mut(&mut self, off: usize, len: usize) -> Option<&mut [u8]> {
        if !self.in_bounds(off, len) {
            return None;
        }
        // SAFETY: in bounds; the exclusive borrow of `self` excludes other
        // user-space access for the slice's lifetime, and the kernel does not
        // read a TX frame before we publish it.
        Some(unsafe { std::slice::from_raw_parts_mut(self.at(off), len) })
    }
}

type RawFdOrNone = libc::c_int;

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this value owns; no reference
        // into it outlives `self` (they all borrow it).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn bounds_are_checked() {
        let mut m = Mmap::anonymous(4096).unwrap();
        assert!(m.atomic_u32(4092).is_some());
        assert!(m.atomic_u32(4093).is_none());
        assert!(m.atomic_u32(4096).is_none());
        assert!(m.atomic_u32(usize::MAX - 1).is_none());
        m.atomic_u32(8).unwrap().store(7, Ordering::Release);
        assert_eq!(m.read::<4>(8), Some(7u32.to_ne_bytes()));
        assert!(m.write(4000, &[1; 96]));
        assert!(!m.write(4000, &[1; 97]));
        assert_eq!(m.slice(4000, 96).unwrap(), &[1; 96][..]);
        assert!(m.slice(usize::MAX, 2).is_none());
        assert!(m.slice_mut(4096, 1).is_none());
        assert!(Mmap::anonymous(0).is_err());
    }
}
