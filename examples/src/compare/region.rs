//! The one memory region of the PASTE model: anonymous memory (DRAM) or a shared mapping of a
//! file (PASTE's persistent-memory file on a DAX file system; here a file, preferably on tmpfs),
//! with the durability modes of a hicamp memory ([`hicamp::Durability`]) and the emulated
//! persistent-memory write latency spun once per fence.
//!
//! The only `unsafe` of the compare module: mapping the file (memmap2's `map_mut`).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hicamp::Durability;
use memmap2::{MmapMut, MmapOptions};

/// Cache-line size the flush counts use.
pub const CACHE_LINE: usize = 64;

/// Flush and fence counts of a region.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PersistCounts {
    /// Cache lines written back (clwb/clflushopt/clflush), or covered by an msync.
    pub flushed_lines: u64,
    /// Store fences (sfence) — one per barrier.
    pub fences: u64,
    /// msync calls (mode [`Durability::Msync`]).
    pub msyncs: u64,
}

/// A region of `len` bytes.
#[derive(Debug)]
pub struct Region {
    map: MmapMut,
    path: Option<PathBuf>,
    durability: Durability,
    pm_latency: Duration,
    /// What the region's flushes and fences did.
    pub counts: PersistCounts,
}

impl Region {
    /// Anonymous memory: a DRAM region. Flushes still run (and count) when `durability` is not
    /// [`Durability::None`], as PASTE's DRAM runs flush too.
    pub fn anon(len: usize, durability: Durability, pm_latency_ns: u32) -> io::Result<Region> {
        Ok(Region {
            map: MmapMut::map_anon(len)?,
            path: None,
            durability,
            pm_latency: Duration::from_nanos(u64::from(pm_latency_ns)),
            counts: PersistCounts::default(),
        })
    }

    /// A new file of `len` bytes at `path`, written with zeros first (so that its blocks are
    /// allocated: a full file system fails here with an error, never later with SIGBUS), and
    /// mapped shared. An existing file is opened and mapped as it is (its length must be `len`).
    pub fn file(
        path: &Path,
        len: usize,
        durability: Durability,
        pm_latency_ns: u32,
    ) -> io::Result<Region> {
        let exists = path.exists();
        let mut f: File = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        if exists {
            let have = f.metadata()?.len();
            if have != len as u64 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {have} bytes, expected {len}", path.display()),
                ));
            }
        } else {
            let zeros = vec![0u8; 1 << 20];
            let mut left = len;
            while left > 0 {
                let n = left.min(zeros.len());
                f.write_all(&zeros[..n])?;
                left -= n;
            }
            f.sync_all()?;
        }
        // SAFETY: the file was created (or checked to be `len` bytes) by this process in its
        // own run directory, its blocks are allocated, and nothing truncates it while it is
        // mapped: every access stays within the mapping's `len` bytes.
        #[allow(unsafe_code)]
        let map = unsafe { MmapOptions::new().len(len).map_mut(&f)? };
        Ok(Region {
            map,
            path: Some(path.to_path_buf()),
            durability,
            pm_latency: Duration::from_nanos(u64::from(pm_latency_ns)),
            counts: PersistCounts::default(),
        })
    }

    /// The file, if the region is one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True for an empty region.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The bytes, writable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.map
    }

    /// Writes back `off..off + len` per the durability mode (cache-line write-backs, or an
    /// msync of its pages) and counts the cache lines covered.
    pub fn flush(&mut self, off: usize, len: usize) -> io::Result<()> {
        let end = (off + len).min(self.map.len());
        if end <= off {
            return Ok(());
        }
        match self.durability {
            Durability::None => {}
            Durability::CacheLine => {
                self.counts.flushed_lines += hicamp::flush_cache_lines_of(&self.map[off..end]);
            }
            Durability::Msync => {
                let start = off & !4095;
                self.map.flush_range(start, end - start)?;
                self.counts.msyncs += 1;
                self.counts.flushed_lines += lines_covering(off, end - off);
            }
        }
        Ok(())
    }

    /// The barrier: one store fence and the emulated persistent-memory latency.
    pub fn fence(&mut self) {
        if self.durability == Durability::None {
            return;
        }
        hicamp::persist_fence();
        self.counts.fences += 1;
        spin(self.pm_latency);
    }
}

/// Cache lines that `off..off + len` touches.
pub fn lines_covering(off: usize, len: usize) -> u64 {
    if len == 0 {
        return 0;
    }
    ((off + len - 1) / CACHE_LINE - off / CACHE_LINE + 1) as u64
}

/// Busy-waits `d` (the emulated persistent-memory write latency, as PASTE's `-e` does).
pub fn spin(d: Duration) {
    if d.is_zero() {
        return;
    }
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}
