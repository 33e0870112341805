//! Memory files: layout, header, and the map-entry slots. The recovery walk
//! over a file's committed DAGs is the store's (`store::recovery`).
//!
//! ```text
//!  offset 0        header page: magic, format version, config, region
//!                  offsets, checksum; at 1024 a copy of all that (a damaged
//!                  header is restored from it); at 2048 the state word
//!                  (clean close)
//!  arena_off       line arena: (capacity + 1) lines, slot 0 = the zero line
//!  meta_off        reference counts: one byte per slot (bit 7 = interior,
//!                  bits 0..6 = min(count, 63); bit 6, owned, is never set
//!                  in a file)
//!  map_off         segment map: 64 bytes per entry = two 32-byte slots
//!                  { w0 = root | height << 32 | live << 40, len, version,
//!                    checksum }, the newer valid one is current
//!  extra_off       count extras: (line id u32, extra u32) pairs, ascending
//!                  ids, for the lines whose count is 63 + extra (extra > 0);
//!                  written by a clean close only, their number and checksum
//!                  in the header page at 2072 (room for
//!                  min(slots, (slots * fanout + map capacity) / 64 + 1)
//!                  pairs: each such line has 64 references or more; the
//!                  pages are allocated when written)
//! ```
//!
//! Only the map entries are the truth. Reference counts, the dedup index and
//! the free lists are derived state: on every open they are rebuilt from the
//! committed roots (a walk of every DAG reachable from a live entry, each line
//! visited once), which reclaims lines orphaned by a crash (written but never
//! committed, or freed but not yet recycled) and needs no log. The dedup index
//! is not persisted: rebuilding it costs one hash per live line, which the
//! walk has to read anyway. The counts above 63 keep their rest in the
//! store's volatile overflow table (`store::counts`), which the same walk
//! rebuilds; a clean close writes it to the extras section, so that `fsck`
//! of a cleanly closed file checks every count exactly (byte + extra).
//! Nothing reads the section on open: after a crash it is stale, and the
//! state word says so.
//!
//! A map entry is updated by writing the slot that is not current, so a write
//! torn by a crash leaves the previous version valid (checksums tell which).

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};

use parking_lot::Mutex;

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::config::{Config, Durability};
use crate::error::{Error, Result};
use crate::id::LineId;
use crate::region::Backing;

/// The file magic.
pub const MAGIC: [u8; 8] = *b"HICAMPMF";
/// Format version written by this build (and the newest it reads).
///
/// Version 2 added the reserved-space words (the file is allocated as it
/// fills, never written where it is sparse) and single-bit repair of map
/// slots; version 3 made the reference counts one byte per slot (they were
/// a `u32`: the count region and every offset after it moved). Files of
/// earlier versions are refused with a clear error
/// ([`Error::OldFormat`]).
pub const FORMAT_VERSION: u32 = 3;
/// Bytes of reference count per slot.
pub(crate) const COUNT_BYTES: u64 = 1;
const HEADER_LEN: usize = 80;
/// The header's copy. Written at create, and on every read-write open that
/// finds it missing (files of earlier builds) or different; a header that
/// fails its checks is restored from it.
const BACKUP_OFF: usize = 1024;
const STATE_OFF: usize = 2048;
/// The two reserved-space words (line slots, map entries).
const SPACE_OFF: usize = 2056;
/// The extras section's words: pairs written, and their checksum.
const EXTRAS_OFF: usize = 2072;
/// Seed of the extras' checksum (xxh3 of the pairs' bytes, seeded with
/// this plus the number of pairs).
pub const EXTRAS_SEED: u64 = 0xe5c0_0000;
/// Words per map entry (two slots of four).
pub(crate) const ENTRY_WORDS: usize = 8;
pub(crate) const LIVE_BIT: u64 = 1 << 40;

fn round_page(n: u64) -> u64 {
    n.div_ceil(4096) * 4096
}

/// Where each region lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub slots: u64,
    pub arena_off: u64,
    pub meta_off: u64,
    pub map_off: u64,
    pub extra_off: u64,
    /// Pairs the extras section holds at most.
    pub extra_cap: u64,
    pub len: u64,
}

impl Layout {
    pub(crate) fn for_config(c: &Config) -> Layout {
        let slots = c.capacity_lines + 1;
        let arena_off = 4096;
        let meta_off = arena_off + round_page(slots * c.line_size as u64);
        let map_off = meta_off + round_page(slots * COUNT_BYTES);
        let extra_off = map_off + round_page(u64::from(c.map_capacity) * ENTRY_WORDS as u64 * 8);
        // A line with an extra has at least 64 references, from interior
        // lines (a fanout each) and map entries (one each).
        let fanout = c.line_size as u64 / 4;
        let extra_cap = slots.min((slots * fanout + u64::from(c.map_capacity)) / 64 + 1);
        let len = extra_off + round_page(extra_cap * 8);
        Layout {
            slots,
            arena_off,
            meta_off,
            map_off,
            extra_off,
            extra_cap,
            len,
        }
    }
}

/// Writes the count extras (`(id, extra)` pairs, ascending ids) to the
/// extras section of a memory file and its words to the header page, after
/// allocating the section's pages. A clean close does this before it marks
/// the file clean; an error (the file system is full) leaves it unclean.
pub(crate) fn write_extras(b: &Backing, l: &Layout, pairs: &[(u32, u32)]) -> Result<()> {
    let n = pairs.len() as u64;
    let (Some(space), Some(file)) = (b.space(), b.file_handle()) else {
        return Ok(());
    };
    if n > l.extra_cap {
        // Cannot happen (see `Layout::extra_cap`): refuse rather than spill.
        return Err(Error::Corrupt {
            path: space.path().to_string(),
            what: format!("{n} count extras exceed the section's {}", l.extra_cap),
        });
    }
    let bytes: Vec<u8> = pairs
        .iter()
        .flat_map(|(id, e)| id.to_le_bytes().into_iter().chain(e.to_le_bytes()))
        .collect();
    space.allocate_new(file, l.extra_off, bytes.len() as u64)?;
    b.write_bytes(l.extra_off as usize, &bytes);
    let mut words = [0u8; 16];
    words[..8].copy_from_slice(&n.to_le_bytes());
    words[8..].copy_from_slice(&xxh3_64_with_seed(&bytes, EXTRAS_SEED + n).to_le_bytes());
    b.write_bytes(EXTRAS_OFF, &words);
    Ok(())
}

/// Reads the extras section of a cleanly closed file (`page`: its header
/// page): the pairs, or what is wrong with them.
pub(crate) fn read_extras(
    file: &File,
    page: &[u8],
    l: &Layout,
) -> std::result::Result<Vec<(u32, u32)>, String> {
    use std::os::unix::fs::FileExt;
    let n = get_u64(page, EXTRAS_OFF);
    if n > l.extra_cap {
        return Err(format!(
            "the count extras claim {n} pairs, the section holds {}",
            l.extra_cap
        ));
    }
    let mut bytes = vec![0u8; n as usize * 8];
    file.read_exact_at(&mut bytes, l.extra_off)
        .map_err(|e| format!("the count extras cannot be read: {e}"))?;
    if xxh3_64_with_seed(&bytes, EXTRAS_SEED + n) != get_u64(page, EXTRAS_OFF + 8) {
        return Err("the count extras fail their checksum".into());
    }
    let pairs: Vec<(u32, u32)> = bytes
        .as_chunks::<8>()
        .0
        .iter()
        .map(|p| (get_u32(p, 0), get_u32(p, 4)))
        .collect();
    if pairs.windows(2).any(|w| w[0].0 >= w[1].0) || pairs.iter().any(|p| p.1 == 0) {
        return Err("the count extras are not in order, or hold a zero".into());
    }
    Ok(pairs)
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}
fn get_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}
fn get_u64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

pub(crate) fn encode_header(c: &Config, l: &Layout) -> Vec<u8> {
    let mut b = vec![0u8; HEADER_LEN];
    b[0..8].copy_from_slice(&MAGIC);
    put_u32(&mut b, 8, FORMAT_VERSION);
    put_u32(&mut b, 12, c.line_size as u32);
    put_u64(&mut b, 16, c.capacity_lines);
    put_u32(&mut b, 24, c.map_capacity);
    put_u32(&mut b, 28, c.durability.code());
    put_u32(&mut b, 32, c.pm_write_latency_ns);
    put_u64(&mut b, 40, l.arena_off);
    put_u64(&mut b, 48, l.meta_off);
    put_u64(&mut b, 56, l.map_off);
    put_u64(&mut b, 64, l.len);
    let sum = xxh3_64(&b[..72]);
    put_u64(&mut b, 72, sum);
    b
}

/// Parses and checks a header against the file length.
pub(crate) fn decode_header(path: &str, b: &[u8], file_len: u64) -> Result<(Config, Layout)> {
    let corrupt = |what: String| Error::Corrupt {
        path: path.to_string(),
        what,
    };
    if b.len() < HEADER_LEN {
        return Err(Error::Truncated {
            path: path.into(),
            expected: 4096,
            actual: file_len,
        });
    }
    if b[0..8] != MAGIC {
        return Err(Error::NotAMemoryFile { path: path.into() });
    }
    let version = get_u32(b, 8);
    if version > FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            path: path.into(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if (1..FORMAT_VERSION).contains(&version) && get_u64(b, 72) == xxh3_64(&b[..72]) {
        return Err(Error::OldFormat {
            path: path.into(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if version == 0 || get_u64(b, 72) != xxh3_64(&b[..72]) {
        return Err(corrupt("header checksum mismatch".into()));
    }
    let config = Config {
        line_size: get_u32(b, 12) as usize,
        capacity_lines: get_u64(b, 16),
        map_capacity: get_u32(b, 24),
        durability: Durability::from_code(get_u32(b, 28))
            .ok_or_else(|| corrupt(format!("unknown durability mode {}", get_u32(b, 28))))?,
        pm_write_latency_ns: get_u32(b, 32),
    };
    config
        .validate()
        .map_err(|e| corrupt(format!("header config: {e}")))?;
    let layout = Layout::for_config(&config);
    let stored = Layout {
        slots: layout.slots,
        arena_off: get_u64(b, 40),
        meta_off: get_u64(b, 48),
        map_off: get_u64(b, 56),
        len: get_u64(b, 64),
        ..layout
    };
    if stored != layout {
        return Err(corrupt("region offsets do not match the config".into()));
    }
    if file_len < layout.len {
        return Err(Error::Truncated {
            path: path.into(),
            expected: layout.len,
            actual: file_len,
        });
    }
    Ok((config, layout))
}

/// The state word: 1 when the file was closed cleanly.
pub(crate) fn write_state(b: &Backing, clean: bool) -> std::io::Result<()> {
    b.write_bytes(STATE_OFF, &u64::from(clean).to_le_bytes());
    b.msync(STATE_OFF, 8)
}

pub(crate) fn read_clean(b: &Backing) -> bool {
    b.read_bytes(STATE_OFF, 8) == 1u64.to_le_bytes()
}

pub(crate) fn io_err(path: &Path, op: &'static str, e: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        op,
        message: e.to_string(),
    }
}

/// A reservation failure: ENOSPC (and EDQUOT, EFBIG) become [`Error::NoSpace`].
fn space_err(path: &str, bytes: u64, e: std::io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => Error::NoSpace {
            path: path.to_string(),
            bytes,
        },
        _ => Error::Io {
            path: path.to_string(),
            op: "reserve file space",
            message: e.to_string(),
        },
    }
}

// ---------------------------------------------------------------------------
// Reserved space.
//
// The file is as long as its layout (so every offset is mapped), but only the
// space reserved with fallocate is ever touched: the header page, the arena
// and count pages of slots `0..slots`, and the map pages of entries
// `0..entries`. The two high-water marks are words of the header page (each
// with its own check bits, written with one store), raised only after the
// space under them is allocated, and never lowered. A write to a page the file
// system has no block for would kill the process with SIGBUS when the file
// system is full; with every touched page reserved first, running out of
// space is an `Error::NoSpace` from the operation that needed it.
// ---------------------------------------------------------------------------

fn space_word(which: u64, v: u32) -> u64 {
    let check = xxh3_64_with_seed(&v.to_le_bytes(), 0x5ace_0000 + which) as u32;
    u64::from(v) | (u64::from(check) << 32)
}

fn parse_space_word(which: u64, w: u64) -> Option<u32> {
    let v = w as u32;
    (space_word(which, v) == w).then_some(v)
}

/// The reserved high-water marks of a file: line slots (arena and counts) and
/// map entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Reserved {
    pub slots: u64,
    pub entries: u64,
}

impl Reserved {
    /// The byte ranges of the file these marks cover (page-rounded).
    pub(crate) fn ranges(&self, l: &Layout, line_size: u64) -> [(u64, u64); 4] {
        [
            (0, 4096),
            (l.arena_off, round_page(self.slots * line_size)),
            (l.meta_off, round_page(self.slots * COUNT_BYTES)),
            (l.map_off, round_page(self.entries * ENTRY_WORDS as u64 * 8)),
        ]
    }

    /// Bytes the reserved ranges take.
    pub(crate) fn bytes(&self, l: &Layout, line_size: u64) -> u64 {
        self.ranges(l, line_size).iter().map(|r| r.1).sum()
    }
}

/// Reads and checks the high-water marks from the header page.
pub(crate) fn decode_reserved(path: &str, page: &[u8], c: &Config, l: &Layout) -> Result<Reserved> {
    let corrupt = |what: String| Error::Corrupt {
        path: path.to_string(),
        what,
    };
    // A damaged word (a flipped bit) claims the whole region instead: the
    // claim is trimmed to the data the file holds anyway (`read_checked`).
    let slots = parse_space_word(0, get_u64(page, SPACE_OFF)).map_or(l.slots, u64::from);
    let entries = parse_space_word(1, get_u64(page, SPACE_OFF + 8))
        .map_or(u64::from(c.map_capacity), u64::from);
    let r = Reserved { slots, entries };
    if r.slots > l.slots || r.entries > u64::from(c.map_capacity) {
        return Err(corrupt(format!(
            "reserved space ({} slots, {} entries) exceeds the capacity ({} slots, {} entries)",
            r.slots, r.entries, l.slots, c.map_capacity
        )));
    }
    Ok(r)
}

/// The reserved space of an open file, and how it grows.
pub(crate) struct Space {
    path: String,
    layout: Layout,
    line_size: u64,
    /// The map's capacity in entries (the header's; the map region is
    /// rounded up to whole pages, which may hold more).
    map_capacity: u64,
    durability: Durability,
    slots: AtomicU64,
    entries: AtomicU64,
    grow: Mutex<()>,
    /// The last reservation failed for lack of space.
    failed: AtomicBool,
}

impl Space {
    pub(crate) fn new(path: &str, c: &Config, layout: Layout, r: Reserved) -> Space {
        Space {
            path: path.to_string(),
            layout,
            line_size: c.line_size as u64,
            map_capacity: u64::from(c.map_capacity),
            durability: c.durability,
            slots: AtomicU64::new(r.slots),
            entries: AtomicU64::new(r.entries),
            grow: Mutex::new(()),
            failed: AtomicBool::new(false),
        }
    }

    pub(crate) fn reserved(&self) -> Reserved {
        Reserved {
            slots: self.slots.load(Acquire),
            entries: self.entries.load(Acquire),
        }
    }

    pub(crate) fn failed(&self) -> bool {
        self.failed.load(Relaxed)
    }

    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    /// Allocates the pages of `off..off + len` (page-rounded).
    fn allocate(&self, file: &File, off: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let start = off & !4095;
        let end = round_page(off + len);
        crate::region::fallocate(file, start, end - start).map_err(|e| {
            self.failed.store(true, Relaxed);
            space_err(&self.path, end - start, e)
        })
    }

    /// [`Space::allocate`] of space the file never had: refused (`NoSpace`)
    /// when it would dig into the blocks the file system keeps for root
    /// (`statvfs`'s `f_bavail`). A process running as root could take them,
    /// and a 16 MiB ext4 filled that way killed it with SIGBUS on a store
    /// into fallocated pages (the file system had nothing left for its own
    /// use: `tests/nospace.rs`, once the count bytes shrank and more lines
    /// fit before the first refusal).
    pub(crate) fn allocate_new(&self, file: &File, off: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let bytes = round_page(off + len) - (off & !4095);
        if let Ok(avail) = crate::region::available_bytes(file) {
            if avail < bytes {
                self.failed.store(true, Relaxed);
                return Err(Error::NoSpace {
                    path: self.path.clone(),
                    bytes,
                });
            }
        }
        self.allocate(file, off, len)
    }

    /// Allocates every reserved range again (a no-op where the blocks exist;
    /// fills the holes of a sparse copy, or fails with `NoSpace`).
    pub(crate) fn reallocate(&self, file: &File) -> Result<()> {
        for (off, len) in self.reserved().ranges(&self.layout, self.line_size) {
            self.allocate(file, off, len)?;
        }
        Ok(())
    }

    pub(crate) fn publish(&self, b: &Backing, which: usize, v: u64) {
        let off = SPACE_OFF + which * 8;
        b.write_bytes(off, &space_word(which as u64, v as u32).to_le_bytes());
        match self.durability {
            Durability::None => {}
            Durability::CacheLine => {
                b.flush_cache_lines(off, 8);
                crate::region::store_fence();
            }
            Durability::Msync => {
                // An error here is the file system's; the next msync of a
                // commit reports it.
                let _ = b.msync(off, 8);
            }
        }
    }

    /// Makes line slots `0..end` usable: their arena and count pages are
    /// allocated (in chunks of about 1 MiB of lines, or an eighth of what is
    /// reserved, whichever is more; exactly what is needed when the file
    /// system cannot give a chunk).
    pub(crate) fn reserve_slots(&self, b: &Backing, file: &File, end: u64) -> Result<()> {
        if end <= self.slots.load(Acquire) {
            return Ok(());
        }
        let _g = self.grow.lock();
        let cur = self.slots.load(Acquire);
        if end <= cur {
            return Ok(());
        }
        let per_mib = (1 << 20) / self.line_size;
        let want = end.max(cur + cur / 8).div_ceil(per_mib) * per_mib;
        let l = self.layout;
        let ls = self.line_size;
        let try_to = |to: u64| -> Result<()> {
            self.allocate_new(file, l.arena_off + cur * ls, (to - cur) * ls)?;
            self.allocate_new(
                file,
                l.meta_off + cur * COUNT_BYTES,
                (to - cur) * COUNT_BYTES,
            )
        };
        let mut to = want.min(l.slots);
        if try_to(to).is_err() {
            to = end.min(l.slots);
            try_to(to)?;
        }
        self.failed.store(false, Relaxed);
        self.publish(b, 0, to);
        self.slots.store(to, Release);
        Ok(())
    }

    /// Makes map entries `0..end` usable (chunks of 1024 entries).
    pub(crate) fn reserve_entries(&self, b: &Backing, file: &File, end: u64) -> Result<()> {
        if end <= self.entries.load(Acquire) {
            return Ok(());
        }
        let _g = self.grow.lock();
        let cur = self.entries.load(Acquire);
        if end <= cur {
            return Ok(());
        }
        // Never past the header's capacity: open refuses a file whose
        // reserved mark claims more (the page rounding of the map region
        // would otherwise let a chunk reach past it).
        let cap = self.map_capacity.min(self.layout_entries());
        let eb = ENTRY_WORDS as u64 * 8;
        let mut to = end.div_ceil(1024).saturating_mul(1024).min(cap);
        let off = self.layout.map_off + cur * eb;
        if self.allocate_new(file, off, (to - cur) * eb).is_err() {
            to = end.min(cap);
            self.allocate_new(file, off, (to - cur) * eb)?;
        }
        self.failed.store(false, Relaxed);
        self.publish(b, 1, to);
        self.entries.store(to, Release);
        Ok(())
    }

    fn layout_entries(&self) -> u64 {
        (self.layout.extra_off - self.layout.map_off) / (ENTRY_WORDS as u64 * 8)
    }
}

/// The temporary name a create builds the file under (same directory).
fn temp_name(path: &Path) -> Result<(std::path::PathBuf, String)> {
    let file = path
        .file_name()
        .ok_or_else(|| Error::Io {
            path: path.display().to_string(),
            op: "create",
            message: "not a file name".into(),
        })?
        .to_string_lossy()
        .into_owned();
    let prefix = format!(".{file}.creating.");
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let name = format!("{prefix}{}.{nonce:x}", std::process::id());
    Ok((path.with_file_name(name), prefix))
}

/// Removes temporaries of earlier creates at `path` that died: a temporary
/// whose lock nobody holds.
fn clean_stale_temps(path: &Path, prefix: &str) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in rd.flatten() {
        if !e.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        if let Ok(f) = OpenOptions::new().read(true).open(e.path()) {
            if f.try_lock().is_ok() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// A file being created: built under a temporary name, renamed into place by
/// [`Creating::finish`]; dropped unfinished, the temporary is removed.
pub(crate) struct Creating {
    pub temp: std::path::PathBuf,
    pub target: std::path::PathBuf,
    done: bool,
}

impl Drop for Creating {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Test hook, in builds with debug assertions only (the test profile; never in
/// a release build): `HICAMP_CREATE_FAIL_AT=<step>` makes create fail at that
/// step (1: after the temporary exists, 2: after its header is written, 3:
/// before the rename), as a kill there would stop it.
fn fail_point(step: u32, path: &Path) -> Result<()> {
    if !cfg!(debug_assertions) {
        return Ok(());
    }
    if std::env::var("HICAMP_CREATE_FAIL_AT")
        .ok()
        .and_then(|v| v.parse().ok())
        == Some(step)
    {
        if std::env::var_os("HICAMP_CREATE_FAIL_ABORT").is_some() {
            std::process::abort();
        }
        return Err(Error::Io {
            path: path.display().to_string(),
            op: "create",
            message: format!("injected failure at step {step}"),
        });
    }
    Ok(())
}

impl Creating {
    /// Syncs the new file and renames it to the target (never replacing a
    /// file there), then syncs the directory.
    pub(crate) fn finish(mut self, b: &Backing) -> Result<()> {
        let t = &self.target;
        b.msync(0, 4096).map_err(|e| io_err(t, "sync", e))?;
        if let Some(f) = b.file_handle() {
            f.sync_all().map_err(|e| io_err(t, "sync", e))?;
        }
        fail_point(3, t)?;
        crate::region::rename_noreplace(&self.temp, t).map_err(|e| io_err(t, "create", e))?;
        self.done = true;
        let dir = match t.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// Creates a new memory file under a temporary name (refusing if `path`
/// exists) and maps it; [`Creating::finish`] puts it in place.
pub(crate) fn create_file(
    path: &Path,
    c: &Config,
) -> Result<(std::sync::Arc<Backing>, Layout, Creating)> {
    c.validate()?;
    let layout = Layout::for_config(c);
    if std::fs::symlink_metadata(path).is_ok() {
        return Err(io_err(
            path,
            "create",
            std::io::Error::from_raw_os_error(libc::EEXIST),
        ));
    }
    let (temp, prefix) = temp_name(path)?;
    clean_stale_temps(path, &prefix);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&temp)
        .map_err(|e| io_err(path, "create", e))?;
    let creating = Creating {
        temp,
        target: path.to_path_buf(),
        done: false,
    };
    lock(&file, path)?;
    fail_point(1, path)?;
    file.set_len(layout.len)
        .map_err(|e| io_err(path, "set length", e))?;
    let name = path.display().to_string();
    crate::region::fallocate(&file, 0, 4096).map_err(|e| space_err(&name, 4096, e))?;
    let space = Space::new(&name, c, layout, Reserved::default());
    let backing =
        Backing::file(file, layout.len as usize, space).map_err(|e| io_err(path, "map", e))?;
    let header = encode_header(c, &layout);
    backing.write_bytes(0, &header);
    backing.write_bytes(BACKUP_OFF, &header);
    backing.write_bytes(SPACE_OFF, &space_word(0, 0).to_le_bytes());
    backing.write_bytes(SPACE_OFF + 8, &space_word(1, 0).to_le_bytes());
    backing
        .msync(0, 4096)
        .map_err(|e| io_err(path, "sync header", e))?;
    fail_point(2, path)?;
    Ok((backing, layout, creating))
}

fn lock(file: &File, path: &Path) -> Result<()> {
    try_lock_for(path, || file.try_lock())
}

/// How long a lock held by another open file description is waited for before the file is
/// reported in use. A process that forks holds a copy of every descriptor until its child
/// execs (or exits), the lock of a memory it just closed included: such a holder lets go
/// within milliseconds, a real user of the file does not.
const LOCK_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

/// Takes a lock with `try_lock`, retrying a contended one for [`LOCK_GRACE`].
fn try_lock_for(
    path: &Path,
    try_lock: impl Fn() -> std::result::Result<(), std::fs::TryLockError>,
) -> Result<()> {
    let start = std::time::Instant::now();
    loop {
        match try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if start.elapsed() < LOCK_GRACE => {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::InUse {
                    path: path.display().to_string(),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(path, "lock", e)),
        }
    }
}

/// What [`read_checked`] found about a file before mapping anything.
pub(crate) struct Checked {
    pub file: File,
    pub config: Config,
    pub layout: Layout,
    pub reserved: Reserved,
    /// The marks as the header states them (`reserved` is trimmed to data).
    pub claimed: Reserved,
    /// Bytes of the reserved ranges the file system holds no block for
    /// (a sparse copy), from `st_blocks`.
    pub unallocated: u64,
    /// The header failed its checks and its copy was used.
    pub header_restored: bool,
    /// The header's copy is missing or differs from the header (a file of
    /// an earlier build, or a damaged copy): a read-write open rewrites it.
    pub backup_stale: bool,
}

/// Opens a memory file and checks its header, reserved space and length
/// against each other, reading with `pread` only (nothing is mapped, so a
/// short or sparse file cannot fault). With `write`, opens it read-write and
/// takes the exclusive lock; otherwise read-only with a shared lock.
pub(crate) fn read_checked(path: &Path, write: bool) -> Result<Checked> {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map_err(|e| io_err(path, "open", e))?;
    if write {
        lock(&file, path)?;
    } else {
        try_lock_for(path, || file.try_lock_shared())?;
    }
    let meta = file.metadata().map_err(|e| io_err(path, "stat", e))?;
    if !meta.is_file() {
        return Err(Error::NotAMemoryFile {
            path: path.display().to_string(),
        });
    }
    let file_len = meta.len();
    let name = path.display().to_string();
    let mut page = vec![0u8; 4096.min(file_len as usize)];
    file.read_exact_at(&mut page, 0)
        .map_err(|e| io_err(path, "read header", e))?;
    let (config, layout, header_restored) = match decode_header(&name, &page, file_len) {
        Ok((c, l)) => (c, l, false),
        // A header damaged in place (a flipped bit fails the checksum, or
        // the magic) is restored from its copy, when the copy is whole.
        // A flip in the version field reads as a newer format: a copy that
        // decodes as this format says which it was.
        Err(
            e @ (Error::Corrupt { .. }
            | Error::NotAMemoryFile { .. }
            | Error::UnsupportedVersion { .. }),
        ) => {
            match page
                .get(BACKUP_OFF..)
                .map(|b| decode_header(&name, b, file_len))
            {
                Some(Ok((c, l))) => (c, l, true),
                _ => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    let backup_stale = page.get(..HEADER_LEN) != page.get(BACKUP_OFF..BACKUP_OFF + HEADER_LEN);
    let claimed = decode_reserved(&name, &page, &config, &layout)?;
    // Trim the marks to the data the file holds: past the last byte of data
    // of a region, nothing was ever written (a crash or a sparse copy can
    // leave reserved space unwritten, and a hostile header can claim any
    // amount); what follows is sized by this, not by the claim.
    let ls = config.line_size as u64;
    let data_end = |off: u64, len: u64| {
        crate::region::last_data_end(&file, off, off + len).map_err(|e| io_err(path, "seek", e))
    };
    let arena_end = data_end(layout.arena_off, claimed.slots * ls)?;
    let map_bytes = claimed.entries * ENTRY_WORDS as u64 * 8;
    let map_end = data_end(layout.map_off, map_bytes)?;
    let reserved = Reserved {
        slots: claimed
            .slots
            .min((arena_end - layout.arena_off).div_ceil(ls)),
        entries: claimed
            .entries
            .min((map_end - layout.map_off).div_ceil(ENTRY_WORDS as u64 * 8)),
    };
    let need = reserved.bytes(&layout, ls);
    let unallocated = need.saturating_sub(meta.blocks() * 512);
    Ok(Checked {
        file,
        config,
        layout,
        reserved,
        claimed,
        unallocated,
        header_restored,
        backup_stale,
    })
}

/// Opens and maps an existing memory file for writing, after the checks of
/// [`read_checked`]; allocates the reserved ranges again (filling the holes
/// of a sparse copy, or failing with `NoSpace`) before any page is touched.
pub(crate) fn open_file(path: &Path) -> Result<Opened> {
    let c = read_checked(path, true)?;
    let name = path.display().to_string();
    let space = Space::new(&name, &c.config, c.layout, c.reserved);
    if c.unallocated > 0 {
        // Holes to fill: refuse at once when the file system cannot hold them
        // (rather than fill it on the way to failing).
        let avail =
            crate::region::available_bytes(&c.file).map_err(|e| io_err(path, "statvfs", e))?;
        if c.unallocated > avail {
            return Err(Error::NoSpace {
                path: name,
                bytes: c.unallocated,
            });
        }
    }
    space.reallocate(&c.file)?;
    let backing =
        Backing::file(c.file, c.layout.len as usize, space).map_err(|e| io_err(path, "map", e))?;
    if c.reserved != c.claimed {
        let s = backing.space().expect("a file backing has its space");
        s.publish(&backing, 0, c.reserved.slots);
        s.publish(&backing, 1, c.reserved.entries);
    }
    Ok(Opened {
        backing,
        config: c.config,
        layout: c.layout,
        header_restored: c.header_restored,
        header_rewrite: c.header_restored || c.backup_stale,
    })
}

/// Opens a memory file read-only, as a private copy-on-write mapping (see
/// `Backing::file_copy`): what an open does (recovery, repairs) happens in
/// this process only, and the file is never written.
pub(crate) fn open_copy(path: &Path) -> Result<Opened> {
    let c = read_checked(path, false)?;
    let name = path.display().to_string();
    let space = Space::new(&name, &c.config, c.layout, c.reserved);
    let backing = Backing::file_copy(c.file, c.layout.len as usize, space)
        .map_err(|e| io_err(path, "map", e))?;
    Ok(Opened {
        backing,
        config: c.config,
        layout: c.layout,
        header_restored: c.header_restored,
        header_rewrite: false,
    })
}

/// A memory file opened for writing by [`open_file`] (or read-only by
/// [`open_copy`]).
pub(crate) struct Opened {
    pub backing: std::sync::Arc<Backing>,
    pub config: Config,
    pub layout: Layout,
    /// The header failed its checks and its copy was used.
    pub header_restored: bool,
    /// The header or its copy is to be rewritten ([`rewrite_header`]) once
    /// the open goes ahead.
    pub header_rewrite: bool,
}

/// Writes the header and its copy from the checked config (the header page
/// is reserved space, allocated at create) and syncs them.
pub(crate) fn rewrite_header(path: &Path, o: &Opened) -> Result<()> {
    let header = encode_header(&o.config, &o.layout);
    o.backing.write_bytes(0, &header);
    o.backing.write_bytes(BACKUP_OFF, &header);
    o.backing
        .msync(0, 4096)
        .map_err(|e| io_err(path, "sync header", e))
}

/// Reads a memory file's reserved ranges into an anonymous mapping (for
/// fsck: read-only, and immune to a file that shrinks or runs out of space).
pub(crate) fn read_file(path: &Path) -> Result<(std::sync::Arc<Backing>, Checked)> {
    use std::os::unix::fs::FileExt;
    let c = read_checked(path, false)?;
    let backing = Backing::anon(c.layout.len as usize)?;
    let mut buf = vec![0u8; 1 << 20];
    for (off, len) in c.reserved.ranges(&c.layout, c.config.line_size as u64) {
        let mut at = off;
        let end = (off + len).min(c.layout.len);
        while at < end {
            let n = (end - at).min(buf.len() as u64) as usize;
            let got = c
                .file
                .read_at(&mut buf[..n], at)
                .map_err(|e| io_err(path, "read", e))?;
            if got == 0 {
                return Err(Error::Truncated {
                    path: path.display().to_string(),
                    expected: end,
                    actual: at,
                });
            }
            if !crate::store::is_zero(&buf[..got]) {
                backing.write_bytes(at as usize, &buf[..got]);
            }
            at += got as u64;
        }
    }
    Ok((backing, c))
}
/// One committed map entry found in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RootEntry {
    pub index: u32,
    pub root: LineId,
    pub height: u32,
    pub len: u64,
    pub version: u64,
    /// Which slot (0 or 1) is current.
    pub slot: u8,
}

pub(crate) fn slot_checksum(index: u32, w0: u64, w1: u64, w2: u64) -> u64 {
    let mut b = [0u8; 24];
    b[0..8].copy_from_slice(&w0.to_le_bytes());
    b[8..16].copy_from_slice(&w1.to_le_bytes());
    b[16..24].copy_from_slice(&w2.to_le_bytes());
    // Never 0, so an all-zero slot is never valid.
    xxh3_64_with_seed(&b, u64::from(index)) | 1
}

/// One slot of a map entry as read from the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotRead {
    /// All zero: never written.
    Empty,
    /// The checksum verifies.
    Valid([u64; 4]),
    /// One flipped bit, corrected (the words as they were written; all zero
    /// for a never-written slot with one bit set).
    Repaired([u64; 4]),
    /// Neither valid nor one bit from valid: a torn write, or worse damage.
    Invalid,
}

/// Reads a slot, correcting a single flipped bit: a 64-bit checksum over 192
/// bits of payload tells each of the 256 single-bit errors apart from a valid
/// slot (a torn write differs from any valid slot in many bits, except with
/// negligible probability, and then only when it equals the slot's previous
/// content).
pub(crate) fn read_slot(index: u32, w: [u64; 4]) -> SlotRead {
    if w == [0; 4] {
        return SlotRead::Empty;
    }
    let sum = slot_checksum(index, w[0], w[1], w[2]);
    if w[3] == sum {
        return SlotRead::Valid(w);
    }
    if w.iter().map(|x| x.count_ones()).sum::<u32>() == 1 {
        return SlotRead::Repaired([0; 4]);
    }
    if (w[3] ^ sum).count_ones() == 1 {
        return SlotRead::Repaired([w[0], w[1], w[2], sum]);
    }
    for word in 0..3 {
        for bit in 0..64 {
            let mut x = w;
            x[word] ^= 1 << bit;
            if x[3] == slot_checksum(index, x[0], x[1], x[2]) {
                return SlotRead::Repaired(x);
            }
        }
    }
    SlotRead::Invalid
}

/// What the two slots of an entry say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryRead {
    /// The current slot (the valid or repaired one with the larger version)
    /// and its words; `None` when no slot is (the entry was never written,
    /// or is lost when `invalid` is set).
    pub current: Option<(u8, [u64; 4])>,
    /// Slots corrected by one bit, with their corrected words.
    pub repaired: [Option<[u64; 4]>; 2],
    /// Slots that are invalid.
    pub invalid: [bool; 2],
}

pub(crate) fn read_entry(words: &[std::sync::atomic::AtomicU64], index: u32) -> EntryRead {
    use std::sync::atomic::Ordering::Relaxed;
    let base = index as usize * ENTRY_WORDS;
    let mut e = EntryRead {
        current: None,
        repaired: [None; 2],
        invalid: [false; 2],
    };
    for s in 0..2usize {
        let w: [u64; 4] = std::array::from_fn(|k| words[base + s * 4 + k].load(Relaxed));
        let good = match read_slot(index, w) {
            SlotRead::Empty => None,
            SlotRead::Valid(w) => Some(w),
            SlotRead::Repaired(w) => {
                e.repaired[s] = Some(w);
                (w != [0; 4]).then_some(w)
            }
            SlotRead::Invalid => {
                e.invalid[s] = true;
                None
            }
        };
        if let Some(w) = good {
            if e.current.is_none_or(|(_, c)| w[2] > c[2]) {
                e.current = Some((s as u8, w));
            }
        }
    }
    e
}
