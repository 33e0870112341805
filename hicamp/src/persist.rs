//! Memory files: layout, header, and the map-entry slots. The recovery walk
//! over a file's committed DAGs is the store's (`store::recovery`).
//!
//! ```text
//!  offset 0        header page: magic, format version, config, region
//!                  offsets, checksum; at 2048 the state word (clean close)
//!  arena_off       line arena: (capacity + 1) lines, slot 0 = the zero line
//!  meta_off        reference counts: one u32 per slot (bit 31 = interior)
//!  map_off         segment map: 64 bytes per entry = two 32-byte slots
//!                  { w0 = root | height << 32 | live << 40, len, version,
//!                    checksum }, the newer valid one is current
//! ```
//!
//! Only the map entries are the truth. Reference counts, the dedup index and
//! the free lists are derived state: on every open they are rebuilt from the
//! committed roots (a walk of every DAG reachable from a live entry, each line
//! visited once), which reclaims lines orphaned by a crash (written but never
//! committed, or freed but not yet recycled) and needs no log. The dedup index
//! is not persisted: rebuilding it costs one hash per live line, which the
//! walk has to read anyway.
//!
//! A map entry is updated by writing the slot that is not current, so a write
//! torn by a crash leaves the previous version valid (checksums tell which).

use std::fs::{File, OpenOptions};
use std::path::Path;

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::config::{Config, Durability};
use crate::error::{Error, Result};
use crate::id::LineId;
use crate::region::Backing;

/// The file magic.
pub const MAGIC: [u8; 8] = *b"HICAMPMF";
/// Format version written by this build (and the newest it reads).
pub const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 80;
const STATE_OFF: usize = 2048;
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
    pub len: u64,
}

impl Layout {
    pub(crate) fn for_config(c: &Config) -> Layout {
        let slots = c.capacity_lines + 1;
        let arena_off = 4096;
        let meta_off = arena_off + round_page(slots * c.line_size as u64);
        let map_off = meta_off + round_page(slots * 4);
        let len = map_off + round_page(u64::from(c.map_capacity) * ENTRY_WORDS as u64 * 8);
        Layout {
            slots,
            arena_off,
            meta_off,
            map_off,
            len,
        }
    }
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

fn io_err(path: &Path, op: &'static str, e: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        op,
        message: e.to_string(),
    }
}

/// Creates a new memory file (refusing to overwrite one) and maps it.
pub(crate) fn create_file(path: &Path, c: &Config) -> Result<(std::sync::Arc<Backing>, Layout)> {
    c.validate()?;
    let layout = Layout::for_config(c);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| io_err(path, "create", e))?;
    lock(&file, path)?;
    file.set_len(layout.len)
        .map_err(|e| io_err(path, "set length", e))?;
    let backing = Backing::file(file, layout.len as usize).map_err(|e| io_err(path, "map", e))?;
    backing.write_bytes(0, &encode_header(c, &layout));
    backing
        .msync(0, 4096)
        .map_err(|e| io_err(path, "sync header", e))?;
    Ok((backing, layout))
}

fn lock(file: &File, path: &Path) -> Result<()> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::InUse {
            path: path.display().to_string(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io_err(path, "lock", e)),
    }
}

/// Opens and maps an existing memory file, checking its header. With
/// `exclusive`, takes the file lock (a writer); without, a shared lock.
pub(crate) fn open_file(
    path: &Path,
    exclusive: bool,
) -> Result<(std::sync::Arc<Backing>, Config, Layout)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| io_err(path, "open", e))?;
    if exclusive {
        lock(&file, path)?;
    } else {
        match file.try_lock_shared() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::InUse {
                    path: path.display().to_string(),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(path, "lock", e)),
        }
    }
    let file_len = file.metadata().map_err(|e| io_err(path, "stat", e))?.len();
    let name = path.display().to_string();
    let mut head = vec![0u8; HEADER_LEN.min(file_len as usize)];
    {
        use std::io::Read;
        (&file)
            .read_exact(&mut head)
            .map_err(|e| io_err(path, "read header", e))?;
    }
    let (config, layout) = decode_header(&name, &head, file_len)?;
    let backing = Backing::file(file, layout.len as usize).map_err(|e| io_err(path, "map", e))?;
    Ok((backing, config, layout))
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

/// The current slot of an entry: `Ok(None)` for an entry never written,
/// `Ok(Some((slot, w0, len, version)))` otherwise.
pub(crate) fn current_slot(
    words: &[std::sync::atomic::AtomicU64],
    index: u32,
) -> std::result::Result<Option<(u8, u64, u64, u64)>, String> {
    use std::sync::atomic::Ordering::Relaxed;
    let base = index as usize * ENTRY_WORDS;
    let mut best: Option<(u8, u64, u64, u64)> = None;
    let mut any_written = false;
    for s in 0..2u8 {
        let w = &words[base + s as usize * 4..base + s as usize * 4 + 4];
        let (w0, w1, w2, w3) = (
            w[0].load(Relaxed),
            w[1].load(Relaxed),
            w[2].load(Relaxed),
            w[3].load(Relaxed),
        );
        if w0 | w1 | w2 | w3 != 0 {
            any_written = true;
        }
        if w3 == slot_checksum(index, w0, w1, w2) && best.is_none_or(|b| w2 > b.3) {
            best = Some((s, w0, w1, w2));
        }
    }
    match best {
        Some(b) => Ok(Some(b)),
        None if any_written => Err(format!("map entry {index}: no valid slot")),
        None => Ok(None),
    }
}
