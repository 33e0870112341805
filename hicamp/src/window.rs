//! Windows: a segment at a range of virtual addresses, read and written with
//! plain loads and stores.
//!
//! In HICAMP a program reaches a segment through ordinary memory accesses. A
//! [`Window`] gives the emulation the same: an anonymous mapping registered
//! with `userfaultfd` whose pages are filled on first touch from the
//! segment's lines, so unmodified code (`memchr`, a parser, a C library) runs
//! over a stored segment without a copy-out of the whole of it.
//!
//! ```text
//!   Window (mmap, uffd MISSING [+ WP])         handler thread (one per window)
//!   +-------+-------+-------+-------+           poll(uffd, stop eventfd)
//!   | page0 | page1 |  ...  | pageN |  fault -> read the page's lines from the
//!   +-------+-------+-------+-------+           Segment snapshot the window holds,
//!       ^ first touch: missing fault            UFFDIO_COPY (UFFDIO_ZEROPAGE for
//!       ^ first write (read-write): WP fault    all-zero pages of read-only windows),
//!         -> page marked dirty, unprotected     read-ahead on sequential faults;
//!         (async WP: resolved by the kernel,    optionally the next chunk is filled
//!          found by PAGEMAP_SCAN at commit)     by a second (read-ahead) thread
//! ```
//!
//! A page whose leaves are consecutive slots of the arena (a segment built
//! in order gets them: the store hands an intern batch's new lines one run
//! of slots, in input order) is copied straight from the arena, and a run
//! of such pages that continue each other in the arena is one
//! `UFFDIO_COPY`; other pages (lines deduplicated to older segments,
//! repeated lines, zero lines among others, a short tail) are gathered line
//! by line into a staging buffer first. Runs of all-zero pages are one
//! `UFFDIO_ZEROPAGE`. The kind of a page is told from its leaf ids alone.
//!
//! * A **read-only** window ([`Window::open`]) maps a [`Segment`]; the mapping is
//!   `PROT_READ`.
//! * A **read-write** window ([`Window::open_entry`]) maps a segment-map entry.
//!   Pages are copied in write-protected (`UFFDIO_COPY_MODE_WP`). Where the
//!   kernel has async write-protect (`UFFD_FEATURE_WP_ASYNC`, Linux 6.7) the
//!   first write to a page is resolved inside the kernel (a minor fault),
//!   and the commit finds the written pages with `PAGEMAP_SCAN`, which
//!   protects them again in the same call; elsewhere (or with
//!   [`WindowOptions::async_write_protect`] off) the first write raises a
//!   write-protect fault, and the handler marks the page dirty and removes
//!   the protection. [`Window::commit`] interns the dirty pages
//!   into a new version (copy-on-write up the DAG, through
//!   [`SegmentMut::write_at`](crate::SegmentMut::write_at)) and publishes it
//!   with the map's compare-and-swap: [`WindowError::Conflict`] if the entry
//!   changed since the window opened or last committed. [`Window::discard`]
//!   drops the changes. Snapshots taken before a commit never change: the
//!   window only ever writes its private mapping.
//!
//! # Safety
//!
//! This module is the only one of the feature with unsafe code; every block
//! carries a `// SAFETY:` comment. The window owns a [`Segment`] snapshot, so
//! the lines a fault reads stay alive as long as the handler can run; `Drop`
//! stops the handler thread (through an eventfd it polls with the uffd) and
//! the read-ahead thread, and joins both before unmapping. Safe code reaches the mapping only through
//! [`Window::as_slice`] and [`Window::as_mut_slice`], whose borrows end before
//! the window can be dropped, committed or discarded. The mapping is
//! `MADV_DONTFORK`: a forked child has no window (a touch is a SIGSEGV, never
//! silently zero pages).
//!
//! A fault the handler cannot serve (the kernel refuses a copy) must not leave
//! the faulting thread blocked forever nor hand it wrong bytes: the handler
//! makes the mapping `PROT_NONE`, wakes the waiters (who then take a SIGSEGV)
//! and reports the cause through [`Window::handler_error`].

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};
use userfaultfd::{Event, EventBuffer, FaultKind, IoctlFlags, ReadWrite, RegisterMode, Uffd};
use userfaultfd_sys as sys;

use crate::error::Error;
use crate::id::{LineId, SegmentId};
use crate::memory::Memory;
use crate::segment::Segment;

/// Longest window: 1 TiB (the page bitmaps then take 32 MiB each).
pub const MAX_WINDOW_LEN: u64 = 1 << 40;

/// Default read-ahead on sequential faults, in pages.
pub const DEFAULT_READ_AHEAD_PAGES: usize = 256;

/// Default run-ahead of the handler (see [`WindowOptions::run_ahead_chunks`]).
pub const DEFAULT_RUN_AHEAD_CHUNKS: usize = 0;

/// `_IO(USERFAULTFD_IOC, 0x00)` of linux/userfaultfd.h (`USERFAULTFD_IOC` is 0xAA):
/// asks `/dev/userfaultfd` for a new userfaultfd (Linux 6.1).
const USERFAULTFD_IOC_NEW: libc::c_ulong = 0xAA00;
/// `UFFD_USER_MODE_ONLY` of linux/userfaultfd.h: the userfaultfd handles user-mode
/// faults only (allowed to unprivileged users under `vm.unprivileged_userfaultfd = 0`).
const UFFD_USER_MODE_ONLY: libc::c_int = 1;

/// `UFFD_FEATURE_WP_ASYNC` of linux/userfaultfd.h (Linux 6.7): the kernel
/// resolves write-protect faults itself (no message to the handler), and
/// `PAGEMAP_SCAN` tells which pages were written.
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
/// `PAGEMAP_SCAN` of linux/fs.h: `_IOWR('f', 16, struct pm_scan_arg)`, on an
/// fd of /proc/self/pagemap (Linux 6.7).
const PAGEMAP_SCAN: libc::c_ulong = 0xC060_6610;
/// `PM_SCAN_WP_MATCHING`: write-protect the pages reported, atomically.
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// `PM_SCAN_CHECK_WPASYNC`: fail unless the range has async write-protect.
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
/// `PAGE_IS_WRITTEN`: written since it was last write-protected.
const PAGE_IS_WRITTEN: u64 = 1 << 1;
/// `PAGE_IS_PRESENT`: mapped.
const PAGE_IS_PRESENT: u64 = 1 << 3;
/// `PAGE_IS_SWAPPED`: swapped out.
const PAGE_IS_SWAPPED: u64 = 1 << 4;

/// `struct pm_scan_arg` of linux/fs.h.
#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `struct page_region` of linux/fs.h.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// What the fix is when userfaultfd cannot be opened.
const FIX_PERMISSION: &str = "run as root (or with CAP_SYS_PTRACE), or allow unprivileged \
     userfaultfd with `sysctl -w vm.unprivileged_userfaultfd=1`, or give this user read-write \
     access to /dev/userfaultfd (e.g. `chmod 0666 /dev/userfaultfd` or a udev rule for a group)";
const FIX_KERNEL: &str = "use a Linux kernel built with CONFIG_USERFAULTFD (4.11 or later)";
const FIX_WP: &str = "read-write windows need userfaultfd write-protect of anonymous memory: \
     Linux 5.7 or later built with CONFIG_HAVE_ARCH_USERFAULTFD_WP (x86_64, arm64 from 6.10)";

/// What can go wrong with a window.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// userfaultfd cannot be used here (permission, kernel configuration).
    #[error("userfaultfd is unavailable: {reason}; fix: {fix}")]
    Unavailable {
        /// What the kernel said.
        reason: String,
        /// How to make it available.
        fix: &'static str,
    },
    /// The kernel has userfaultfd but not write-protect (read-write windows).
    #[error("userfaultfd write-protect is unavailable: {reason}; fix: {fix}")]
    NoWriteProtect {
        /// What the kernel said.
        reason: String,
        /// How to make it available.
        fix: &'static str,
    },
    /// A system call on the mapping failed.
    #[error("window: {op}: {message}")]
    Os {
        /// What was being done.
        op: &'static str,
        /// The operating system's message.
        message: String,
    },
    /// A write operation on a read-only window.
    #[error("the window is read-only (open a segment-map entry with Window::open_entry to write)")]
    ReadOnly,
    /// The window is longer than [`MAX_WINDOW_LEN`].
    #[error("window of {len} bytes exceeds the maximum of {max}")]
    TooLong {
        /// Length asked for.
        len: u64,
        /// The maximum.
        max: u64,
    },
    /// The map entry changed since the window opened (or last committed): the
    /// changes stay in the window, dirty; discard them or reopen.
    #[error(
        "window commit conflict on {id}: based on version {expected}, the entry is at {actual}"
    )]
    Conflict {
        /// The map entry.
        id: SegmentId,
        /// The version the window's pages are based on.
        expected: u64,
        /// The version found in the map.
        actual: u64,
    },
    /// The fault handler met an error it could not recover from (the mapping
    /// was made inaccessible).
    #[error("window fault handler failed: {0}")]
    Handler(String),
    /// An error of the memory.
    #[error(transparent)]
    Memory(#[from] Error),
}

fn os_err(op: &'static str) -> WindowError {
    WindowError::Os {
        op,
        message: std::io::Error::last_os_error().to_string(),
    }
}

/// Options of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowOptions {
    /// Pages filled ahead on sequential faults (0 or 1: none). On a missing
    /// fault at page `p` right after the previous fill, the handler fills up
    /// to this many pages from `p`, doubling from 16 fault after fault.
    pub read_ahead_pages: usize,
    /// Whether a second thread fills the next chunk of a sequential reader
    /// while the handler serves the current fault and the reader works. Off
    /// by default: benches/benches/window.rs compares both in one run, and on
    /// the 2-core machine this was written on (load average 7-11) it gave
    /// 1.01x and 1.16x (quick mode), 0.57x and 0.51x (full mode): it
    /// needs an idle core.
    pub background_read_ahead: bool,
    /// Read-write windows: use the kernel's async write-protect
    /// (`UFFD_FEATURE_WP_ASYNC` with `PAGEMAP_SCAN`, Linux 6.7) where it has
    /// it. A first write to a page then costs a minor fault inside the
    /// kernel instead of a round trip to the handler thread, and the
    /// commit reads the written pages from the page tables (protecting them
    /// again in the same call). Off: every first write raises a
    /// write-protect fault the handler serves. On by default.
    pub async_write_protect: bool,
    /// Chunks of `read_ahead_pages` past a sequential reader's last fault
    /// that the handler fills on its own while no fault waits (0: none,
    /// the default). The handler then does not sleep between a sequential
    /// reader's faults, and a reader that works on its pages can find the
    /// next ones there; the pages filled beyond what was read stay within
    /// this bound. benches/benches/window.rs compares it in one run: on the
    /// 2-core machine this was written on (load average 5-7.5) 4 chunks
    /// gave 0.94-1.09x on first touch and 0.95-1.16x on a cold xor (no idle
    /// core for the overlap).
    pub run_ahead_chunks: usize,
}

impl Default for WindowOptions {
    fn default() -> Self {
        WindowOptions {
            read_ahead_pages: DEFAULT_READ_AHEAD_PAGES,
            background_read_ahead: false,
            async_write_protect: true,
            run_ahead_chunks: DEFAULT_RUN_AHEAD_CHUNKS,
        }
    }
}

/// Counters of a window's fault handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowStats {
    /// Missing-page faults served.
    pub missing_faults: u64,
    /// Write-protect faults served (first writes to a page).
    pub wp_faults: u64,
    /// Pages filled by copy (`UFFDIO_COPY`).
    pub pages_copied: u64,
    /// Of the pages copied, those copied straight from the arena (their
    /// lines consecutive slots), with no gather into a staging page.
    pub direct_pages: u64,
    /// Pages filled with the shared zero page (`UFFDIO_ZEROPAGE`).
    pub zero_pages: u64,
    /// Of the pages filled, those filled ahead of a fault.
    pub read_ahead_pages: u64,
    /// Pages the window has filled and not discarded.
    pub filled_pages: u64,
    /// Pages written since the last commit or discard.
    pub dirty_pages: u64,
}

/// A bitmap over pages, shared by the handler and the window.
struct Bitmap(Box<[AtomicU64]>);

impl Bitmap {
    fn new(bits: usize) -> Bitmap {
        Bitmap((0..bits.div_ceil(64)).map(|_| AtomicU64::new(0)).collect())
    }
    fn set(&self, i: usize) {
        self.0[i / 64].fetch_or(1 << (i % 64), Ordering::AcqRel);
    }
    fn get(&self, i: usize) -> bool {
        self.0[i / 64].load(Ordering::Acquire) & (1 << (i % 64)) != 0
    }
    fn clear(&self, i: usize) {
        self.0[i / 64].fetch_and(!(1 << (i % 64)), Ordering::AcqRel);
    }
    fn count(&self) -> u64 {
        self.0
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum()
    }
    /// Clears the bitmap and returns the indices that were set, in order.
    fn take(&self) -> Vec<usize> {
        let mut out = Vec::new();
        for (wi, w) in self.0.iter().enumerate() {
            let mut bits = w.swap(0, Ordering::AcqRel);
            while bits != 0 {
                out.push(wi * 64 + bits.trailing_zeros() as usize);
                bits &= bits - 1;
            }
        }
        out
    }
}

/// Runs of consecutive indices (sorted input) as `start..end`.
fn runs(pages: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut out: Vec<std::ops::Range<usize>> = Vec::new();
    for &p in pages {
        match out.last_mut() {
            Some(r) if r.end == p => r.end += 1,
            _ => out.push(p..p + 1),
        }
    }
    out
}

#[derive(Default)]
struct Counters {
    missing: AtomicU64,
    wp: AtomicU64,
    copied: AtomicU64,
    zero: AtomicU64,
    direct: AtomicU64,
    ahead: AtomicU64,
}

/// Lines prefetched ahead of the copy in [`gather`].
const PREFETCH_AHEAD: usize = 32;

/// Collects into `s.leaves` the ids of the leaves of `src` that hold bytes
/// `off..off + len` (clipped to the segment; `off` a multiple of the line
/// size); returns how many bytes of the segment that is.
///
/// The interior lines right above the leaves are found (the levels above
/// them are few and stay cached) and prefetched, and the leaf ids read from
/// them.
fn leaf_ids(src: &Segment, off: u64, len: usize, s: &mut Ids) -> usize {
    let store = &src.memory().inner.store;
    let tree = src.tree();
    let shift = store.shift();
    let ls = 1usize << shift;
    let end = off.saturating_add(len as u64).min(tree.len);
    s.leaves.clear();
    if off >= end {
        return 0;
    }
    let total = (end - off) as usize;
    let n = total.div_ceil(ls) as u64;
    let first = off >> shift;
    if tree.height == 0 {
        s.leaves.push(tree.root);
    } else {
        let fs = shift - 2;
        let mask = (1u64 << fs) - 1;
        let (k0, k1) = (first >> fs, (first + n - 1) >> fs);
        s.nodes.clear();
        for k in k0..=k1 {
            let mut node = tree.root;
            for l in (2..=tree.height).rev() {
                node = store.child(node, ((k >> (fs * (l - 2))) & mask) as usize);
            }
            crate::region::prefetch_ptr(store.line(node).as_ptr());
            s.nodes.push(node);
        }
        for i in first..first + n {
            let node = s.nodes[((i >> fs) - k0) as usize];
            s.leaves.push(store.child(node, (i & mask) as usize));
        }
    }
    total
}

/// Copies the lines `ids` into `buf` (the last one cut to what `buf` holds
/// after the others; bytes past the lines are left as they are).
///
/// The leaves of a segment built piecemeal lie scattered over the arena,
/// and a copy that waits for one line at a time runs at the memory latency,
/// not its bandwidth: each line is copied while the one [`PREFETCH_AHEAD`]
/// places later is prefetched.
fn copy_lines(src: &Segment, ids: &[LineId], buf: &mut [u8]) {
    let store = &src.memory().inner.store;
    let ls = 1usize << store.shift();
    for id in ids.iter().take(PREFETCH_AHEAD) {
        crate::region::prefetch_ptr(store.line(*id).as_ptr());
    }
    for (i, id) in ids.iter().enumerate() {
        if let Some(next) = ids.get(i + PREFETCH_AHEAD) {
            crate::region::prefetch_ptr(store.line(*next).as_ptr());
        }
        let at = i * ls;
        if at >= buf.len() {
            break;
        }
        let take = ls.min(buf.len() - at);
        buf[at..at + take].copy_from_slice(&store.line(*id)[..take]);
    }
}

/// How a page of a fill is filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PageFill {
    /// All its leaves are the zero line (read-only windows: `UFFDIO_ZEROPAGE`).
    Zero,
    /// Its leaves are consecutive slots of the arena, a whole page of them:
    /// copied straight from the arena.
    Direct,
    /// Gathered line by line into the staging buffer, then copied.
    Gather,
}

/// Line ids of one fill: the interior lines above the leaves, the leaves.
#[derive(Default)]
struct Ids {
    nodes: Vec<LineId>,
    leaves: Vec<LineId>,
}

/// What the window and its handler thread share.
struct Shared {
    uffd: Uffd,
    /// Start of the mapping (an address: the mapping is owned by the window).
    base: usize,
    /// Length of the mapping (whole pages, at least one).
    map_len: usize,
    page: usize,
    /// Line size of the memory.
    line_size: usize,
    /// Bytes of the segment visible through the window.
    len: u64,
    writable: bool,
    /// Read-write windows on a kernel with async write-protect: writes
    /// raise no message, and `scan_written` finds the written pages (an
    /// fd of /proc/self/pagemap). `None`: write-protect faults reach the
    /// handler, which marks the page dirty.
    pagemap: Option<OwnedFd>,
    read_ahead: usize,
    background: bool,
    run_ahead: usize,
    /// The version the pages are filled from. Holding it keeps its lines alive.
    source: Mutex<Segment>,
    filled: Bitmap,
    dirty: Bitmap,
    counters: Counters,
    failed: Mutex<Option<String>>,
    /// The chunk the read-ahead thread is asked to fill next.
    ahead: Mutex<AheadRequest>,
    ahead_cv: Condvar,
}

/// A request to the read-ahead thread.
#[derive(Default)]
struct AheadRequest {
    /// (first page, pages); a newer request replaces one not yet taken.
    next: Option<(usize, usize)>,
    stop: bool,
}

impl Shared {
    fn pages(&self) -> usize {
        self.map_len / self.page
    }

    fn addr(&self, page: usize) -> usize {
        self.base + page * self.page
    }

    /// `UFFDIO_COPY` of `len` bytes from `src` to `dst`, going past pages that
    /// are already there (a fill raced with another one) and waking their
    /// waiters.
    fn copy(&self, dst: usize, src: &[u8], wp: bool) -> Result<(), String> {
        let mut done = 0usize;
        let mut stalls = 0u32;
        let mode = if wp { sys::UFFDIO_COPY_MODE_WP } else { 0 };
        while done < src.len() {
            let mut c = sys::uffdio_copy {
                dst: (dst + done) as u64,
                src: src[done..].as_ptr() as u64,
                len: (src.len() - done) as u64,
                mode,
                copy: 0,
            };
            // SAFETY: UFFDIO_COPY reads `len` bytes from `src` (a live slice of that
            // length) and writes only pages of our registered mapping, which
            // lives until the handler thread has been joined; the struct is a
            // valid `uffdio_copy` the kernel fills in.
            let r = unsafe {
                libc::ioctl(
                    self.uffd.as_raw_fd(),
                    sys::UFFDIO_COPY as _,
                    &mut c as *mut sys::uffdio_copy,
                )
            };
            if r == 0 {
                return Ok(());
            }
            let errno = std::io::Error::last_os_error();
            match errno.raw_os_error() {
                Some(libc::EAGAIN) if c.copy > 0 => done += c.copy as usize,
                Some(libc::EAGAIN) if stalls < 10_000 => {
                    // The mapping is changing (fork, mremap): retry.
                    stalls += 1;
                    std::thread::yield_now();
                }
                Some(libc::EEXIST) => {
                    // The page is there already: wake whoever waits on it.
                    let at = dst + done;
                    self.uffd
                        .wake(at as *mut libc::c_void, self.page)
                        .map_err(|e| format!("UFFDIO_WAKE: {e}"))?;
                    done += self.page;
                }
                _ => {
                    return Err(format!(
                        "UFFDIO_COPY at +{}: {errno}",
                        dst + done - self.base
                    ))
                }
            }
        }
        Ok(())
    }

    /// Maps the zero page at `pages` (read-only windows only), page by page
    /// when a ranged call meets a page already there.
    fn zero(&self, pages: std::ops::Range<usize>) -> Result<(), String> {
        let start = self.addr(pages.start);
        let len = pages.len() * self.page;
        // SAFETY: the range lies in our registered mapping, which outlives the
        // handler; UFFDIO_ZEROPAGE only installs zero pages where none is.
        if unsafe { self.uffd.zeropage(start as *mut libc::c_void, len, true) }.is_ok() {
            return Ok(());
        }
        for p in pages {
            let at = self.addr(p);
            // SAFETY: as above, one page.
            match unsafe { self.uffd.zeropage(at as *mut libc::c_void, self.page, true) } {
                Ok(_) => {}
                Err(userfaultfd::Error::ZeropageFailed(e)) if e as i32 == libc::EEXIST => {
                    self.uffd
                        .wake(at as *mut libc::c_void, self.page)
                        .map_err(|e| format!("UFFDIO_WAKE: {e}"))?;
                }
                Err(e) => return Err(format!("UFFDIO_ZEROPAGE at +{}: {e}", at - self.base)),
            }
        }
        Ok(())
    }

    /// Fills pages `first..first + n` from `src`; `wp` copies them in
    /// write-protected.
    ///
    /// Each page is classified by its leaf ids (no scan of its bytes): all
    /// zero lines (read-only windows map the shared zero page, one
    /// `UFFDIO_ZEROPAGE` per run of them), a whole page of consecutive
    /// arena slots (copied straight from the arena, one `UFFDIO_COPY` per
    /// run of pages that continue each other in the arena: a segment built
    /// in order is laid out so), or anything else (gathered line by line
    /// into the staging buffer, one `UFFDIO_COPY` per run of such pages).
    fn fill(
        &self,
        src: &Segment,
        scratch: &mut Scratch,
        first: usize,
        n: usize,
        wp: bool,
    ) -> Result<(), String> {
        let off = (first * self.page) as u64;
        let got = leaf_ids(src, off, n * self.page, &mut scratch.ids);
        let leaves = &scratch.ids.leaves;
        let lpp = self.page / self.line_size;
        let page_leaves = |i: usize| {
            let a = (i * lpp).min(leaves.len());
            let b = ((i + 1) * lpp).min(leaves.len());
            &leaves[a..b]
        };
        let kind = |i: usize| {
            let l = page_leaves(i);
            if !self.writable && l.iter().all(|id| id.is_zero()) {
                // (A shared zero page would take a write without a
                // write-protect fault: writable windows copy zeros.)
                PageFill::Zero
            } else if l.len() == lpp
                && !l[0].is_zero()
                && l.windows(2).all(|w| w[1].0 == w[0].0.wrapping_add(1))
            {
                PageFill::Direct
            } else {
                PageFill::Gather
            }
        };
        // Counted (and marked filled) before the copies wake the faulting
        // threads, so that a thread that saw its page sees it counted.
        for p in first..first + n {
            self.filled.set(p);
        }
        let store = &src.memory().inner.store;
        let mut i = 0;
        while i < n {
            let k = kind(i);
            let mut j = i + 1;
            while j < n
                && kind(j) == k
                && (k != PageFill::Direct
                    || page_leaves(j)[0].0 == page_leaves(j - 1)[lpp - 1].0.wrapping_add(1))
            {
                j += 1;
            }
            let pages = (j - i) as u64;
            match k {
                PageFill::Zero => {
                    self.counters.zero.fetch_add(pages, Ordering::Relaxed);
                    self.zero(first + i..first + j)?;
                }
                PageFill::Direct => {
                    self.counters.copied.fetch_add(pages, Ordering::Relaxed);
                    self.counters.direct.fetch_add(pages, Ordering::Relaxed);
                    let l0 = page_leaves(i)[0];
                    let last = page_leaves(j - 1)[lpp - 1];
                    let start = store.line(l0).as_ptr();
                    let len = (j - i) * self.page;
                    // The run's lines are consecutive slots; check that they
                    // are one span of memory too before copying them as one.
                    if store.line(last).as_ptr() as usize != start as usize + len - self.line_size {
                        return Err("window: arena slots are not contiguous".into());
                    }
                    // SAFETY: `start..start + len` is the bytes of the
                    // consecutive arena slots `l0..=last` (checked just
                    // above to be one span): leaves of `src`, which the
                    // caller holds, so they stay allocated and are never
                    // written while we read them.
                    let bytes = unsafe { std::slice::from_raw_parts(start, len) };
                    self.copy(self.addr(first + i), bytes, wp)?;
                }
                PageFill::Gather => {
                    self.counters.copied.fetch_add(pages, Ordering::Relaxed);
                    let buf = &mut scratch.buf[..(j - i) * self.page];
                    let from = i * lpp;
                    let to = (j * lpp).min(leaves.len());
                    // Bytes of the segment in these pages (the rest is zero).
                    let bytes = got.saturating_sub(i * self.page).min(buf.len());
                    copy_lines(src, &leaves[from..to], &mut buf[..bytes]);
                    buf[bytes..].fill(0);
                    self.copy(self.addr(first + i), buf, wp)?;
                }
            }
            i = j;
        }
        Ok(())
    }

    /// Fills up to `n` pages from `q` ahead of the reader (stopping at the
    /// first page already there). Holds the source lock throughout, so that a
    /// commit (which swaps the source) or a discard (which unmaps pages)
    /// cannot interleave with a fill no faulting thread is waiting for.
    fn fill_ahead(&self, scratch: &mut Scratch, q: usize, n: usize) -> Result<(), String> {
        let src = self.source.lock();
        let mut m = 0;
        while m < n && q + m < self.pages() && !self.filled.get(q + m) {
            m += 1;
        }
        if m == 0 {
            return Ok(());
        }
        self.counters.ahead.fetch_add(m as u64, Ordering::Relaxed);
        self.fill(&src, scratch, q, m, self.writable)
    }

    /// The read-ahead thread: fills the chunks the fault handler asks for,
    /// in parallel with it (and with the reader).
    fn run_ahead(&self, mut scratch: Scratch) {
        loop {
            let (q, n) = {
                let mut r = self.ahead.lock();
                loop {
                    if r.stop {
                        return;
                    }
                    if let Some(x) = r.next.take() {
                        break x;
                    }
                    self.ahead_cv.wait(&mut r);
                }
            };
            if self.failed.lock().is_some() {
                continue;
            }
            if let Err(e) = self.fill_ahead(&mut scratch, q, n) {
                self.fail(e);
            }
        }
    }

    /// With async write-protect: marks dirty the pages written since they
    /// were last protected (`PAGEMAP_SCAN`), protecting them again when
    /// `protect` (so that the next write shows). A no-op otherwise (the
    /// handler marks pages dirty as their write-protect faults come).
    fn scan_written(&self, protect: bool) -> Result<(), WindowError> {
        let Some(pm) = &self.pagemap else {
            return Ok(());
        };
        let mut regions = [PageRegion::default(); 64];
        let end = (self.base + self.map_len) as u64;
        let mut start = self.base as u64;
        while start < end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                flags: PM_SCAN_CHECK_WPASYNC | if protect { PM_SCAN_WP_MATCHING } else { 0 },
                start,
                end,
                vec: regions.as_mut_ptr() as u64,
                vec_len: regions.len() as u64,
                // Written and there (an unpopulated page counts as
                // written: it is not write-protected).
                category_mask: PAGE_IS_WRITTEN,
                category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                return_mask: PAGE_IS_WRITTEN,
                ..PmScanArg::default()
            };
            // SAFETY: PAGEMAP_SCAN reads and writes one `pm_scan_arg` (`arg`,
            // of the kernel's layout) and writes at most `vec_len` regions
            // to `vec` (`regions`, that long); it only reads page tables of
            // our own mapping and, with PM_SCAN_WP_MATCHING, write-protects
            // pages of it (which only makes later writes set the flag again).
            let r = unsafe { libc::ioctl(pm.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) };
            if r < 0 {
                return Err(os_err("PAGEMAP_SCAN"));
            }
            for reg in &regions[..r as usize] {
                let a = (reg.start as usize - self.base) / self.page;
                let b = (reg.end as usize - self.base).div_ceil(self.page);
                for p in a..b.min(self.pages()) {
                    self.dirty.set(p);
                }
            }
            if arg.walk_end <= start {
                break;
            }
            start = arg.walk_end;
        }
        Ok(())
    }

    /// Makes the mapping inaccessible and wakes every waiter: a fault that
    /// cannot be served ends in SIGSEGV, never in wrong bytes or a hang.
    fn fail(&self, why: String) {
        let mut f = self.failed.lock();
        if f.is_none() {
            *f = Some(why);
        }
        // SAFETY: the range is our own mapping; PROT_NONE only removes access.
        unsafe {
            libc::mprotect(
                self.base as *mut libc::c_void,
                self.map_len,
                libc::PROT_NONE,
            )
        };
        let _ = self.uffd.wake(self.base as *mut libc::c_void, self.map_len);
    }
}

/// The handler's buffers: the pages being filled, the leaf ids of a fill.
struct Scratch {
    buf: Vec<u8>,
    ids: Ids,
}

/// The handler thread's own state.
struct Handler {
    shared: Arc<Shared>,
    stop: RawFd,
    scratch: Scratch,
    last_fault: usize,
    last_end: usize,
    ahead: usize,
}

impl Handler {
    fn run(mut self) {
        let mut events = EventBuffer::new(64);
        let mut failed = false;
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.shared.uffd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.stop,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let ahead = if failed { None } else { self.run_ahead_next() };
            let timeout = if ahead.is_some() { 0 } else { -1 };
            // SAFETY: `fds` is a valid array of two pollfd for the call.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
            if r == 0 {
                // No fault waits: fill the next chunk of the sequential reader.
                if let Some((q, n)) = ahead {
                    if let Err(e) = self.shared.fill_ahead(&mut self.scratch, q, n) {
                        self.shared.fail(e);
                        failed = true;
                    }
                    self.last_end = q + n;
                }
                continue;
            }
            if r < 0 {
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                self.shared
                    .fail(format!("poll: {}", std::io::Error::last_os_error()));
                return;
            }
            if fds[1].revents != 0 {
                return;
            }
            if fds[0].revents == 0 {
                continue;
            }
            let batch: Vec<Event> = match self.shared.uffd.read_events(&mut events) {
                Ok(it) => it.filter_map(|e| e.ok()).collect(),
                Err(e) => {
                    self.shared.fail(format!("reading userfaultfd events: {e}"));
                    failed = true;
                    continue;
                }
            };
            if failed {
                // The mapping is inaccessible: whoever still waits takes a
                // SIGSEGV once woken.
                let sh = &self.shared;
                let _ = sh.uffd.wake(sh.base as *mut libc::c_void, sh.map_len);
                continue;
            }
            if batch.is_empty() {
                continue;
            }
            let src = self.shared.source.lock().clone();
            for ev in batch {
                if let Event::Pagefault { kind, rw, addr } = ev {
                    if let Err(e) = self.serve(&src, kind, rw, addr as usize) {
                        self.shared.fail(e);
                        failed = true;
                        break;
                    }
                }
            }
        }
    }

    /// The chunk to fill next ahead of a sequential reader, if any: from the
    /// end of the last fill, up to `run_ahead` chunks past the last fault.
    fn run_ahead_next(&self) -> Option<(usize, usize)> {
        let sh = &self.shared;
        if sh.run_ahead == 0 || self.ahead <= 1 || self.last_fault == usize::MAX {
            return None;
        }
        let limit = self
            .last_fault
            .saturating_add(sh.run_ahead * sh.read_ahead)
            .min(sh.pages());
        let q = self.last_end;
        let mut n = 0;
        while n < self.ahead && q + n < limit && !sh.filled.get(q + n) {
            n += 1;
        }
        (n > 0).then_some((q, n))
    }

    fn serve(
        &mut self,
        src: &Segment,
        kind: FaultKind,
        rw: ReadWrite,
        addr: usize,
    ) -> Result<(), String> {
        let sh = Arc::clone(&self.shared);
        if addr < sh.base || addr >= sh.base + sh.map_len {
            return Err(format!("fault at {addr:#x} outside the window"));
        }
        let p = (addr - sh.base) / sh.page;
        if kind == FaultKind::WriteProtected {
            sh.counters.wp.fetch_add(1, Ordering::Relaxed);
            sh.dirty.set(p);
            return sh
                .uffd
                .remove_write_protection(sh.addr(p) as *mut libc::c_void, sh.page, true)
                .map_err(|e| format!("UFFDIO_WRITEPROTECT (clear) at +{}: {e}", p * sh.page));
        }
        sh.counters.missing.fetch_add(1, Ordering::Relaxed);
        if sh.filled.get(p) {
            // Filled since the fault was raised (ahead of it): wake the
            // thread. (Filled is marked before the copy; if the read-ahead
            // thread's copy is still under way, the thread faults again.)
            if p > self.last_fault && p < self.last_end {
                self.last_fault = p;
            }
            return sh
                .uffd
                .wake(sh.addr(p) as *mut libc::c_void, sh.page)
                .map_err(|e| format!("UFFDIO_WAKE at +{}: {e}", p * sh.page));
        }
        // Sequential: right after the last fault, or inside (or at the end
        // of) the span filled or asked for after it.
        let sequential = p.wrapping_sub(self.last_fault).wrapping_sub(1)
            < self.last_end.wrapping_sub(self.last_fault);
        self.ahead = if sequential && sh.read_ahead > 1 {
            (self.ahead * 2).max(16).min(sh.read_ahead)
        } else {
            1
        };
        let mut n = 1;
        while n < self.ahead && p + n < sh.pages() && !sh.filled.get(p + n) {
            n += 1;
        }
        sh.counters.ahead.fetch_add(n as u64 - 1, Ordering::Relaxed);
        let buf = &mut self.scratch;
        let res = if sh.writable && rw == ReadWrite::Write {
            // A first write to a missing page: dirty at once, copied in
            // writable (one fault instead of two).
            sh.dirty.set(p);
            sh.fill(src, buf, p, 1, false).and_then(|()| {
                if n > 1 {
                    sh.fill(src, buf, p + 1, n - 1, true)
                } else {
                    Ok(())
                }
            })
        } else {
            sh.fill(src, buf, p, n, sh.writable)
        };
        self.last_fault = p;
        self.last_end = p + n;
        // A sequential reader gets the next chunk filled by the read-ahead
        // thread, while it works on this one.
        if sh.background && sequential && n > 1 && p + n < sh.pages() {
            sh.ahead.lock().next = Some((p + n, n));
            sh.ahead_cv.notify_one();
            self.last_end = (p + 2 * n).min(sh.pages());
        }
        res
    }
}

/// A segment, or a segment-map entry, at a range of virtual addresses: see
/// the [module documentation](self).
///
/// ```no_run
/// use hicamp::{Memory, Window};
///
/// let mem = Memory::with_defaults()?;
/// let seg = mem.segment(b"needle in a haystack")?;
/// let w = Window::open(&seg)?;                   // nothing copied yet
/// assert_eq!(memchr_like(w.as_slice()), Some(0));  // pages fault in on touch
/// # fn memchr_like(b: &[u8]) -> Option<usize> { b.iter().position(|&c| c == b'n') }
/// # Ok::<(), hicamp::WindowError>(())
/// ```
pub struct Window {
    shared: Arc<Shared>,
    stop: OwnedFd,
    thread: Option<JoinHandle<()>>,
    ahead_thread: Option<JoinHandle<()>>,
    /// The memory (for read-write windows: the map entry and the version the
    /// pages are based on).
    mem: Memory,
    entry: Option<(SegmentId, u64)>,
    user_mode_only: bool,
}

impl std::fmt::Debug for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Window")
            .field("addr", &(self.shared.base as *const u8))
            .field("len", &self.shared.len)
            .field("writable", &self.shared.writable)
            .field("entry", &self.entry)
            .finish_non_exhaustive()
    }
}

/// Opens a userfaultfd (O_CLOEXEC | O_NONBLOCK): through /dev/userfaultfd,
/// else the system call, else the system call for user-mode faults only.
/// Returns the descriptor and whether it is user-mode only.
fn open_uffd() -> Result<(OwnedFd, bool), WindowError> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    let dev_err = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/userfaultfd")
    {
        Ok(dev) => {
            // SAFETY: USERFAULTFD_IOC_NEW takes an int argument and returns a new fd.
            let fd = unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW as _, flags) };
            if fd >= 0 {
                // SAFETY: `fd` is a fresh descriptor we own.
                return Ok((unsafe { OwnedFd::from_raw_fd(fd) }, false));
            }
            Some(format!(
                "/dev/userfaultfd: USERFAULTFD_IOC_NEW: {}",
                std::io::Error::last_os_error()
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => Some(format!("/dev/userfaultfd: {e}")),
    };
    let syscall = |flags: libc::c_int| {
        // SAFETY: userfaultfd(2) takes an int of flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
        if fd >= 0 {
            // SAFETY: `fd` is a fresh descriptor we own.
            Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    let first = match syscall(flags) {
        Ok(fd) => return Ok((fd, false)),
        Err(e) => e,
    };
    if first.raw_os_error() == Some(libc::ENOSYS) {
        return Err(WindowError::Unavailable {
            reason: format!("userfaultfd(2): {first}"),
            fix: FIX_KERNEL,
        });
    }
    if let Ok(fd) = syscall(flags | UFFD_USER_MODE_ONLY) {
        return Ok((fd, true));
    }
    let reason = match dev_err {
        Some(d) => format!("{d}; userfaultfd(2): {first}"),
        None => format!("userfaultfd(2): {first}"),
    };
    Err(WindowError::Unavailable {
        reason,
        fix: FIX_PERMISSION,
    })
}

/// The UFFDIO_API handshake, asking for write-protect faults when `wp`
/// (resolved by the kernel without a message when `async_wp`).
fn handshake(fd: &OwnedFd, wp: bool, async_wp: bool) -> Result<(), WindowError> {
    let want = match (wp, async_wp) {
        (false, _) => 0,
        (true, false) => sys::UFFD_FEATURE_PAGEFAULT_FLAG_WP,
        (true, true) => sys::UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_ASYNC,
    };
    let mut api = sys::uffdio_api {
        api: sys::UFFD_API,
        features: want,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes one `uffdio_api`, which `api` is.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            sys::UFFDIO_API as _,
            &mut api as *mut sys::uffdio_api,
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        return Err(if wp {
            WindowError::NoWriteProtect {
                reason: format!("UFFDIO_API with UFFD_FEATURE_PAGEFAULT_FLAG_WP: {e}"),
                fix: FIX_WP,
            }
        } else {
            WindowError::Unavailable {
                reason: format!("UFFDIO_API: {e}"),
                fix: FIX_KERNEL,
            }
        });
    }
    if api.features & want != want {
        return Err(WindowError::NoWriteProtect {
            reason: "the kernel does not offer UFFD_FEATURE_PAGEFAULT_FLAG_WP".into(),
            fix: FIX_WP,
        });
    }
    Ok(())
}

/// True when `PAGEMAP_SCAN` works on `base..base + len` with async
/// write-protect (the range is registered, nothing in it is mapped yet).
fn scan_works(pm: &OwnedFd, base: usize, len: usize) -> bool {
    let mut region = PageRegion::default();
    let mut arg = PmScanArg {
        size: std::mem::size_of::<PmScanArg>() as u64,
        flags: PM_SCAN_CHECK_WPASYNC,
        start: base as u64,
        end: (base + len) as u64,
        vec: &mut region as *mut PageRegion as u64,
        vec_len: 1,
        category_mask: PAGE_IS_WRITTEN,
        return_mask: PAGE_IS_WRITTEN,
        ..PmScanArg::default()
    };
    // SAFETY: PAGEMAP_SCAN reads and writes `arg` (the kernel's layout) and
    // writes at most one region to `region`; it only reads page tables.
    unsafe { libc::ioctl(pm.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) >= 0 }
}

/// Page size of the system.
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

impl Window {
    /// A read-only window on `seg` (a snapshot of it: later changes to other
    /// handles do not show).
    pub fn open(seg: &Segment) -> Result<Window, WindowError> {
        Window::open_with(seg, WindowOptions::default())
    }

    /// [`Window::open`] with options.
    pub fn open_with(seg: &Segment, opts: WindowOptions) -> Result<Window, WindowError> {
        Window::new(seg.memory().clone(), seg.clone(), None, opts)
    }

    /// A read-write window on map entry `id` of `mem`, based on its current
    /// version: see [`Window::commit`].
    pub fn open_entry(mem: &Memory, id: SegmentId) -> Result<Window, WindowError> {
        Window::open_entry_with(mem, id, WindowOptions::default())
    }

    /// [`Window::open_entry`] with options.
    pub fn open_entry_with(
        mem: &Memory,
        id: SegmentId,
        opts: WindowOptions,
    ) -> Result<Window, WindowError> {
        let (seg, version) = mem.map().get_versioned(id)?;
        Window::new(mem.clone(), seg, Some((id, version)), opts)
    }

    fn new(
        mem: Memory,
        seg: Segment,
        entry: Option<(SegmentId, u64)>,
        opts: WindowOptions,
    ) -> Result<Window, WindowError> {
        Window::create(mem, seg, entry, opts, opts.async_write_protect)
    }

    fn create(
        mem: Memory,
        seg: Segment,
        entry: Option<(SegmentId, u64)>,
        opts: WindowOptions,
        allow_async: bool,
    ) -> Result<Window, WindowError> {
        let len = seg.len();
        if len > MAX_WINDOW_LEN {
            return Err(WindowError::TooLong {
                len,
                max: MAX_WINDOW_LEN,
            });
        }
        let writable = entry.is_some();
        let page = page_size();
        let map_len = (len as usize).div_ceil(page).max(1) * page;
        // Read-write windows: async write-protect where the kernel has it
        // (a write costs a minor fault in the kernel, not a round trip to
        // the handler thread), else write-protect faults.
        let pagemap = if writable && allow_async {
            std::fs::File::open("/proc/self/pagemap")
                .ok()
                .map(OwnedFd::from)
        } else {
            None
        };
        let (fd, user_mode_only, pagemap) = match pagemap {
            Some(pm) => {
                let (fd, umo) = open_uffd()?;
                if handshake(&fd, true, true).is_ok() {
                    (fd, umo, Some(pm))
                } else {
                    let (fd, umo) = open_uffd()?;
                    handshake(&fd, writable, false)?;
                    (fd, umo, None)
                }
            }
            None => {
                let (fd, umo) = open_uffd()?;
                handshake(&fd, writable, false)?;
                (fd, umo, None)
            }
        };
        // SAFETY: `fd` is a userfaultfd we own; Uffd takes it over and closes it.
        let uffd = unsafe { Uffd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(fd)) };
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a new private anonymous mapping at an address the kernel
        // chooses; it aliases nothing.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(os_err("mmap"));
        }
        let unmap = |e: WindowError| {
            // SAFETY: `base..base + map_len` is the mapping made above, not
            // yet shared with anything.
            unsafe { libc::munmap(base, map_len) };
            e
        };
        // Not inherited by fork: a child touching it gets SIGSEGV, not zeros.
        // No transparent huge pages: faults are served page by page.
        for advice in [libc::MADV_DONTFORK, libc::MADV_NOHUGEPAGE] {
            // SAFETY: advice on our own fresh mapping; it changes no content.
            if unsafe { libc::madvise(base, map_len, advice) } != 0 && advice == libc::MADV_DONTFORK
            {
                return Err(unmap(os_err("madvise(MADV_DONTFORK)")));
            }
        }
        let mode = if writable {
            RegisterMode::MISSING | RegisterMode::WRITE_PROTECT
        } else {
            RegisterMode::MISSING
        };
        let ioctls = match uffd.register_with_mode(base, map_len, mode) {
            Ok(i) => i,
            Err(e) => {
                let reason = format!("UFFDIO_REGISTER: {e}");
                return Err(unmap(if writable {
                    WindowError::NoWriteProtect {
                        reason,
                        fix: FIX_WP,
                    }
                } else {
                    WindowError::Unavailable {
                        reason,
                        fix: FIX_KERNEL,
                    }
                }));
            }
        };
        let need = if writable {
            IoctlFlags::COPY | IoctlFlags::WRITE_PROTECT | IoctlFlags::WAKE
        } else {
            IoctlFlags::COPY | IoctlFlags::ZEROPAGE | IoctlFlags::WAKE
        };
        if !ioctls.contains(need) {
            let reason = format!("the registered range offers {ioctls:?}, not {need:?}");
            return Err(unmap(if writable {
                WindowError::NoWriteProtect {
                    reason,
                    fix: FIX_WP,
                }
            } else {
                WindowError::Unavailable {
                    reason,
                    fix: FIX_KERNEL,
                }
            }));
        }
        if let Some(pm) = &pagemap {
            if !scan_works(pm, base as usize, map_len) {
                // Async write-protect but no PAGEMAP_SCAN to read it back:
                // start over with write-protect faults.
                drop(unmap(WindowError::ReadOnly));
                drop(uffd);
                return Window::create(mem, seg, entry, opts, false);
            }
        }
        // SAFETY: eventfd(2) returns a new descriptor or -1.
        let stop = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if stop < 0 {
            return Err(unmap(os_err("eventfd")));
        }
        // SAFETY: `stop` is a fresh descriptor we own.
        let stop = unsafe { OwnedFd::from_raw_fd(stop) };
        let pages = map_len / page;
        let read_ahead = opts.read_ahead_pages.max(1);
        let shared = Arc::new(Shared {
            uffd,
            base: base as usize,
            map_len,
            page,
            line_size: mem.line_size(),
            len,
            writable,
            pagemap,
            read_ahead,
            background: opts.background_read_ahead && read_ahead > 1,
            run_ahead: if opts.background_read_ahead || read_ahead <= 1 {
                0
            } else {
                opts.run_ahead_chunks
            },
            source: Mutex::new(seg),
            filled: Bitmap::new(pages),
            dirty: Bitmap::new(pages),
            counters: Counters::default(),
            failed: Mutex::new(None),
            ahead: Mutex::new(AheadRequest::default()),
            ahead_cv: Condvar::new(),
        });
        let scratch = || Scratch {
            buf: vec![0u8; read_ahead.min(pages) * page],
            ids: Ids::default(),
        };
        let handler = Handler {
            shared: Arc::clone(&shared),
            stop: stop.as_raw_fd(),
            scratch: scratch(),
            last_fault: usize::MAX,
            last_end: usize::MAX,
            ahead: 1,
        };
        let ahead_thread = if shared.background {
            let sh = Arc::clone(&shared);
            let scratch = scratch();
            Some(
                std::thread::Builder::new()
                    .name("hicamp-window-ra".into())
                    .spawn(move || sh.run_ahead(scratch))
                    .map_err(|e| {
                        unmap(WindowError::Os {
                            op: "spawn the read-ahead thread",
                            message: e.to_string(),
                        })
                    })?,
            )
        } else {
            None
        };
        let thread = std::thread::Builder::new()
            .name("hicamp-window".into())
            .spawn(move || handler.run())
            .map_err(|e| {
                shared.ahead.lock().stop = true;
                shared.ahead_cv.notify_all();
                unmap(WindowError::Os {
                    op: "spawn the fault handler",
                    message: e.to_string(),
                })
            })?;
        Ok(Window {
            shared,
            stop,
            thread: Some(thread),
            ahead_thread,
            mem,
            entry,
            user_mode_only,
        })
    }

    /// Length in bytes (of the segment when the window opened).
    pub fn len(&self) -> u64 {
        self.shared.len
    }

    /// True for a window on an empty segment.
    pub fn is_empty(&self) -> bool {
        self.shared.len == 0
    }

    /// True for a read-write window (on a map entry).
    pub fn is_writable(&self) -> bool {
        self.shared.writable
    }

    /// The map entry and the version the window's pages are based on (read-write windows).
    pub fn entry(&self) -> Option<(SegmentId, u64)> {
        self.entry
    }

    /// The memory the window maps from.
    pub fn memory(&self) -> &Memory {
        &self.mem
    }

    /// True when the kernel only lets this window's userfaultfd serve
    /// user-mode faults (an unprivileged process under
    /// `vm.unprivileged_userfaultfd = 0`): a system call given a pointer into
    /// a page not yet touched (`write(fd, ptr, n)`) then fails with EFAULT.
    /// Touch the pages first, or see [`WindowError::Unavailable`]'s fix.
    pub fn user_mode_only(&self) -> bool {
        self.user_mode_only
    }

    /// The first byte of the window. Valid for [`Window::len`] bytes while the
    /// window lives; reading it through raw pointers from several threads is
    /// fine, but a raw write into a read-write window must not race with
    /// [`Window::commit`] or [`Window::discard`].
    pub fn as_ptr(&self) -> *const u8 {
        self.shared.base as *const u8
    }

    /// True for a read-write window whose writes are tracked by the
    /// kernel's async write-protect (see
    /// [`WindowOptions::async_write_protect`]).
    pub fn async_write_protect(&self) -> bool {
        self.shared.pagemap.is_some()
    }

    /// The window's bytes. Pages fault in as they are touched.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `base..base + len` lies in our mapping (len <= map_len), which
        // lives as long as `self`. Every page reads as the segment's bytes once
        // touched (a read of a missing page blocks until the handler filled
        // it, and the handler only fills missing pages), so the bytes behind
        // the slice do not change while it is borrowed: a write needs
        // `as_mut_slice` (&mut self), as do commit and discard.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.shared.len as usize) }
    }

    /// The window's bytes, writable (read-write windows). Writes are tracked
    /// per page and published by [`Window::commit`].
    pub fn as_mut_slice(&mut self) -> Result<&mut [u8], WindowError> {
        if !self.shared.writable {
            return Err(WindowError::ReadOnly);
        }
        // SAFETY: as in `as_slice`; the mapping is PROT_READ | PROT_WRITE for a
        // writable window, and `&mut self` makes this the only borrow.
        Ok(unsafe {
            std::slice::from_raw_parts_mut(self.shared.base as *mut u8, self.shared.len as usize)
        })
    }

    /// The segment the untouched pages are filled from: the version the
    /// window opened on, or last committed.
    pub fn base(&self) -> Segment {
        self.shared.source.lock().clone()
    }

    /// The fault handler's counters.
    pub fn stats(&self) -> WindowStats {
        // (With async write-protect the written pages are only known from
        // the page tables; a failed scan leaves the count short.)
        let _ = self.shared.scan_written(false);
        let c = &self.shared.counters;
        WindowStats {
            missing_faults: c.missing.load(Ordering::Relaxed),
            wp_faults: c.wp.load(Ordering::Relaxed),
            pages_copied: c.copied.load(Ordering::Relaxed),
            direct_pages: c.direct.load(Ordering::Relaxed),
            zero_pages: c.zero.load(Ordering::Relaxed),
            read_ahead_pages: c.ahead.load(Ordering::Relaxed),
            filled_pages: self.shared.filled.count(),
            dirty_pages: self.shared.dirty.count(),
        }
    }

    /// Pages of the window resident in memory, as the kernel reports them
    /// (mincore(2); a page mapped to the shared zero page counts).
    pub fn resident_pages(&self) -> Result<u64, WindowError> {
        let mut vec = vec![0u8; self.shared.pages()];
        // SAFETY: mincore reads our mapping's page tables and writes one byte
        // per page of `base..base + map_len` into `vec`, which has that many.
        let r = unsafe {
            libc::mincore(
                self.shared.base as *mut libc::c_void,
                self.shared.map_len,
                vec.as_mut_ptr(),
            )
        };
        if r != 0 {
            return Err(os_err("mincore"));
        }
        Ok(vec.iter().filter(|b| **b & 1 != 0).count() as u64)
    }

    /// What the fault handler failed on, if it did (the mapping is then
    /// inaccessible).
    pub fn handler_error(&self) -> Option<String> {
        self.shared.failed.lock().clone()
    }

    fn check_handler(&self) -> Result<(), WindowError> {
        match self.handler_error() {
            Some(e) => Err(WindowError::Handler(e)),
            None => Ok(()),
        }
    }

    /// The base segment with the dirty pages' bytes written over it. Each
    /// dirty page is compared with the base line by line, and only the runs
    /// of changed lines are written (the result is the same canonical DAG as
    /// writing whole pages, for a fraction of the interning).
    fn build(&self, dirty: &[usize]) -> Result<Segment, WindowError> {
        let sh = &self.shared;
        let src = sh.source.lock().clone();
        let ls = src.memory().line_size();
        let mut m = src.to_mut();
        let bytes = self.as_slice();
        let store = &src.memory().inner.store;
        let mut ids = Ids::default();
        for &p in dirty {
            let from = p * sh.page;
            let to = ((p + 1) * sh.page).min(sh.len as usize);
            if from >= to {
                continue;
            }
            let cur = &bytes[from..to];
            // Compared with the base's lines in place (no copy of the page).
            leaf_ids(&src, from as u64, to - from, &mut ids);
            let same = |i: usize| {
                let e = (i + ls).min(cur.len());
                match ids.leaves.get(i / ls) {
                    Some(id) => cur[i..e] == store.line(*id)[..e - i],
                    None => cur[i..e].iter().all(|&b| b == 0),
                }
            };
            let mut i = 0;
            while i < cur.len() {
                if same(i) {
                    i += ls;
                    continue;
                }
                let start = i;
                while i < cur.len() && !same(i) {
                    i += ls;
                }
                let end = i.min(cur.len());
                m.write_at((from + start) as u64, &cur[start..end])?;
            }
        }
        Ok(m.freeze())
    }

    /// The window's current content as a segment (an O(dirty pages) build
    /// over the base version; nothing is published and the pages stay dirty).
    pub fn snapshot(&mut self) -> Result<Segment, WindowError> {
        self.check_handler()?;
        self.shared.scan_written(false)?;
        let dirty: Vec<usize> = (0..self.shared.pages())
            .filter(|&p| self.shared.dirty.get(p))
            .collect();
        self.build(&dirty)
    }

    /// Publishes the dirty pages as a new version of the map entry: their
    /// lines are interned (unchanged lines deduplicate to the ones they were),
    /// copy-on-write goes up the DAG, and the entry is updated by
    /// compare-and-swap against the version the window is based on. Returns
    /// the new version; with nothing dirty, the current one. On
    /// [`WindowError::Conflict`] nothing is published and the pages stay
    /// dirty. After a commit the window is based on the new version, and the
    /// next write to a page dirties it again.
    pub fn commit(&mut self) -> Result<u64, WindowError> {
        let Some((id, version)) = self.entry else {
            return Err(WindowError::ReadOnly);
        };
        self.check_handler()?;
        let sh = Arc::clone(&self.shared);
        // Async write-protect: the written pages are protected again by the
        // scan that finds them.
        sh.scan_written(true)?;
        let dirty = sh.dirty.take();
        if dirty.is_empty() {
            return Ok(version);
        }
        // Protect the pages again first: a later write faults and re-dirties.
        let restore = |e: WindowError| {
            for &p in &dirty {
                sh.dirty.set(p);
            }
            e
        };
        for r in runs(&dirty) {
            if sh.pagemap.is_some() {
                break;
            }
            if let Err(e) = sh
                .uffd
                .write_protect(sh.addr(r.start) as *mut libc::c_void, r.len() * sh.page)
            {
                return Err(restore(WindowError::Os {
                    op: "UFFDIO_WRITEPROTECT",
                    message: e.to_string(),
                }));
            }
        }
        let seg = self.build(&dirty).map_err(restore)?;
        match self.mem.map().commit(id, version, seg.clone()) {
            Ok(v) => {
                *sh.source.lock() = seg;
                self.entry = Some((id, v));
                Ok(v)
            }
            Err(Error::Conflict {
                id,
                expected,
                actual,
            }) => Err(restore(WindowError::Conflict {
                id,
                expected,
                actual,
            })),
            Err(e) => Err(restore(e.into())),
        }
    }

    /// Drops the changes since the last commit: the dirty pages are unmapped
    /// and read the base version again on their next touch.
    pub fn discard(&mut self) -> Result<(), WindowError> {
        if !self.shared.writable {
            return Ok(());
        }
        self.check_handler()?;
        let sh = &self.shared;
        sh.scan_written(false)?;
        // No background fill while pages go (see `Handler::fill_ahead`).
        let _source = sh.source.lock();
        let dirty = sh.dirty.take();
        for r in runs(&dirty) {
            // SAFETY: the range lies in our private anonymous mapping and no
            // borrow of its bytes is live (`&mut self`); MADV_DONTNEED drops
            // the pages, and the next touch faults them in from the base.
            let rc = unsafe {
                libc::madvise(
                    sh.addr(r.start) as *mut libc::c_void,
                    r.len() * sh.page,
                    libc::MADV_DONTNEED,
                )
            };
            if rc != 0 {
                let e = os_err("madvise(MADV_DONTNEED)");
                for &p in &dirty {
                    sh.dirty.set(p);
                }
                return Err(e);
            }
            for p in r {
                sh.filled.clear(p);
            }
        }
        Ok(())
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // Stop the handler first: once joined, nothing reads the segment or
        // touches the mapping.
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd.
        unsafe {
            libc::write(
                self.stop.as_raw_fd(),
                &one as *const u64 as *const libc::c_void,
                8,
            )
        };
        self.shared.ahead.lock().stop = true;
        self.shared.ahead_cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(t) = self.ahead_thread.take() {
            let _ = t.join();
        }
        // SAFETY: the mapping is ours; no borrow of it outlives `self`, and the
        // handler and the read-ahead thread, its only other users, have been
        // joined.
        unsafe { libc::munmap(self.shared.base as *mut libc::c_void, self.shared.map_len) };
    }
}
