//! The sendfile segment cache of the stack process: a range of a regular file that
//! [`super::ops`]'s in-place `sendfile` read into a segment is kept as a snapshot, so that the
//! next `sendfile` of the same range of the same, unchanged file queues the snapshot again: no
//! `pread`, no interning, no byte copied.
//!
//! ```text
//!   fstat(in)  ->  file (dev, inode)  --version (size, mtime ns, ctime ns) equal?--
//!                    ranges (offset, length) -> Segment snapshot         | no: every range
//!                                                                        | of the file dropped
//! ```
//!
//! * **Key.** A file is its `(st_dev, st_ino)`, its version `(st_size, mtime ns, ctime ns)`
//!   from the `fstat` each `sendfile` makes anyway; a range is `(offset, length asked)` (the
//!   snapshot may be shorter: the file ends inside the range). A version that no longer
//!   matches drops every range of that file (counted in `invalidated`).
//! * **Bounds.** At most [`MAX_ENTRIES`] ranges and a byte budget (sum of the snapshots'
//!   lengths: an upper bound of the memory they hold, since their lines may be shared), least
//!   recently used first out. Dropping a snapshot releases its lines. A range longer than
//!   [`MAX_RANGE`] is not cached.
//! * **Staleness.** A write changes the file's ctime (and mtime) to the kernel's clock at that
//!   moment, at the file system's timestamp granularity. A file whose ctime is within
//!   [`SETTLE_NS`] of the clock when it is read is not cached (the "racy" case of git's index:
//!   a write in the same clock tick as the read could leave the version unchanged), so every
//!   later write moves the ctime past the cached one on file systems with a granularity finer
//!   than that. What the key cannot see: writes through a shared `mmap` (the kernel updates
//!   the times when the page is first written after write-back, not at each store), a file
//!   system whose timestamps are coarser than [`SETTLE_NS`] (FAT: 2 s), a remote file changed
//!   on another host with a skewed clock, and a clock set back. For those,
//!   `HICAMP_SENDFILE_CACHE=0` turns the cache off (`HICAMP_SENDFILE_CACHE=<MiB>` sets the
//!   byte budget; default [`DEFAULT_MIB`] MiB).
//! * **Memory.** A build that finds the stack's memory full empties the cache and retries
//!   once ([`FileCache::clear`]), so the cache never turns into `ENOBUFS`.
//!
//! The cache lives beside the stack (used under the stack's lock, after it: never the other
//! way); a forked child never uses it (its sendfile crosses the control channel).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, OnceLock};

use hicamp::Segment;

/// Most ranges held.
pub(super) const MAX_ENTRIES: usize = 4096;
/// Default byte budget, MiB.
pub(super) const DEFAULT_MIB: u64 = 64;
/// Longest range cached (longer ones are streamed: they would push out many small ones).
pub(super) const MAX_RANGE: u64 = 1 << 20;
/// A file changed less than this before it is read is not cached (see the module docs).
pub(super) const SETTLE_NS: i64 = 1_000_000_000;

/// A file's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct FileId {
    pub dev: u64,
    pub ino: u64,
}

/// What must be unchanged for a snapshot to be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Version {
    pub size: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

/// The key and version of `st`.
pub(super) fn of_stat(st: &libc::stat) -> (FileId, Version) {
    let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
    (
        FileId {
            dev: st.st_dev,
            ino: st.st_ino,
        },
        Version {
            size: st.st_size,
            mtime_ns: ns(st.st_mtime, st.st_mtime_nsec),
            ctime_ns: ns(st.st_ctime, st.st_ctime_nsec),
        },
    )
}

/// What the cache did (in the report as `sendfile_cache`).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub(super) struct Stats {
    /// Lookups that found the range: sent as a snapshot.
    pub hits: u64,
    /// Bytes sent from snapshots (neither read nor interned).
    pub hit_bytes: u64,
    /// Lookups that did not.
    pub misses: u64,
    /// Bytes in-place sendfile read from files (`pread` into line slots).
    pub read_bytes: u64,
    /// `pread` calls of in-place sendfile.
    pub read_calls: u64,
    /// Bytes copied to queue a forked child's range at the line phase of the header before
    /// it (once per cached range; in `payload_bytes_copied_below_socket_api`).
    pub phased_copy_bytes: u64,
    /// Ranges kept.
    pub inserted: u64,
    /// Ranges not kept: the file had changed too recently ([`SETTLE_NS`]).
    pub racy: u64,
    /// Ranges dropped because their file changed.
    pub invalidated: u64,
    /// Ranges dropped for room (entries or bytes), or when the memory was full.
    pub evicted: u64,
    /// Ranges held now, and the bytes of their snapshots.
    pub entries: u64,
    pub bytes: u64,
    /// The byte budget (0: the cache is off).
    pub budget_bytes: u64,
}

/// The cache's maps: keyed by inode numbers and file offsets (not chosen by a peer), hashed by
/// a multiply-rotate per word instead of SipHash (two lookups per `sendfile`: SipHash was 0.2%
/// of a one-process nginx's samples).
type Map<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<WordHash>>;

/// [`Map`]'s hasher: each word folded in with a rotate and a multiplication by a large odd
/// constant.
#[derive(Default)]
pub(super) struct WordHash(u64);

impl std::hash::Hasher for WordHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write_i64(&mut self, i: i64) {
        self.write_u64(i as u64);
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
}

/// A range: (offset, length asked, line phase of its snapshot).
type Range = (i64, u64, u32);

struct File {
    version: Version,
    /// range -> (snapshot, its LRU tick).
    ranges: Map<Range, (Segment, u64)>,
    /// The phase of the range kept last ([`FileCache::get_at`]).
    last_phase: u32,
}

/// The cache (see the module docs).
pub(super) struct FileCache {
    files: Map<FileId, File>,
    /// LRU order: tick -> range.
    lru: BTreeMap<u64, (FileId, Range)>,
    tick: u64,
    budget: u64,
    max_entries: usize,
    pub stats: Stats,
}

impl FileCache {
    pub(super) fn new(budget: u64, max_entries: usize) -> FileCache {
        FileCache {
            files: Map::default(),
            lru: BTreeMap::new(),
            tick: 0,
            budget,
            max_entries,
            stats: Stats {
                budget_bytes: budget,
                ..Stats::default()
            },
        }
    }

    /// False when the budget is 0.
    pub(super) fn enabled(&self) -> bool {
        self.budget > 0
    }

    /// A snapshot of `len` bytes at `off` of `file` at `version`, or `None` (counted as a miss
    /// when the cache is on). A file whose version differs loses every range.
    #[cfg(test)]
    pub(super) fn get(
        &mut self,
        file: FileId,
        version: Version,
        off: i64,
        len: u64,
    ) -> Option<Segment> {
        self.get_at(file, version, (off, len, 0))
            .map(|(seg, _)| seg)
    }

    /// [`FileCache::get`] of a range whose snapshot starts at a line phase: its bytes begin
    /// at offset `range.2` of the snapshot (zeros before them), so that they keep their line
    /// phase behind the bytes queued before them on the socket (see [`super::ops`]). Returns
    /// the snapshot and the phase it was kept at: when the range is not kept at `range.2`
    /// but at the phase it was kept at last (or at 0), that snapshot serves (the frame then
    /// assembles the line where the two meet) rather than a read of the file. Whether a
    /// header is still queued when its body's sendfile comes is a matter of timing (the
    /// stack thread's tick may have sent it), so the asked phase moves between 0 and the
    /// header's.
    pub(super) fn get_at(
        &mut self,
        file: FileId,
        version: Version,
        range: Range,
    ) -> Option<(Segment, u32)> {
        if !self.enabled() {
            return None;
        }
        let stale = self.files.get(&file).is_some_and(|f| f.version != version);
        if stale {
            self.drop_file(file);
        }
        self.tick += 1;
        let tick = self.tick;
        let Some(f) = self.files.get_mut(&file) else {
            self.stats.misses += 1;
            return None;
        };
        let other = if range.2 == 0 { f.last_phase } else { 0 };
        let range = if f.ranges.contains_key(&range) {
            range
        } else {
            (range.0, range.1, other)
        };
        let Some((seg, t)) = f.ranges.get_mut(&range) else {
            self.stats.misses += 1;
            return None;
        };
        self.lru.remove(t);
        *t = tick;
        self.lru.insert(tick, (file, range));
        self.stats.hits += 1;
        Some((seg.clone(), range.2))
    }

    /// Keeps `seg` (the bytes of `len` asked at `off`) for `file` at `version`, read when the
    /// clock said `now_ns` (realtime). Not kept: the cache is off, the range is too long or
    /// longer than the budget, or the file changed less than [`SETTLE_NS`] before `now_ns`.
    #[cfg(test)]
    pub(super) fn put(
        &mut self,
        file: FileId,
        version: Version,
        off: i64,
        len: u64,
        seg: &Segment,
        now_ns: i64,
    ) {
        self.put_at(file, version, (off, len, 0), seg, now_ns);
    }

    /// [`FileCache::put`] of a snapshot whose bytes start at line phase `range.2`.
    pub(super) fn put_at(
        &mut self,
        file: FileId,
        version: Version,
        range: Range,
        seg: &Segment,
        now_ns: i64,
    ) {
        if !self.enabled() || range.1 > MAX_RANGE || seg.len() > self.budget {
            return;
        }
        if version.ctime_ns.max(version.mtime_ns) > now_ns.saturating_sub(SETTLE_NS) {
            self.stats.racy += 1;
            return;
        }
        if self.files.get(&file).is_some_and(|f| f.version != version) {
            self.drop_file(file);
        }
        self.tick += 1;
        let tick = self.tick;
        let f = self.files.entry(file).or_insert_with(|| File {
            version,
            ranges: Map::default(),
            last_phase: 0,
        });
        f.last_phase = range.2;
        if let Some((old, t)) = f.ranges.insert(range, (seg.clone(), tick)) {
            self.lru.remove(&t);
            self.stats.bytes -= old.len();
            self.stats.entries -= 1;
        }
        self.lru.insert(tick, (file, range));
        self.stats.bytes += seg.len();
        self.stats.entries += 1;
        self.stats.inserted += 1;
        while self.stats.bytes > self.budget || self.stats.entries as usize > self.max_entries {
            let Some((_, (fid, r))) = self.lru.pop_first() else {
                break;
            };
            self.remove(fid, r);
            self.stats.evicted += 1;
        }
    }

    /// Drops every snapshot (the memory is full); returns how many.
    pub(super) fn clear(&mut self) -> u64 {
        let n = self.stats.entries;
        self.files.clear();
        self.lru.clear();
        self.stats.evicted += n;
        self.stats.entries = 0;
        self.stats.bytes = 0;
        n
    }

    fn remove(&mut self, file: FileId, range: Range) {
        let Some(f) = self.files.get_mut(&file) else {
            return;
        };
        if let Some((seg, _)) = f.ranges.remove(&range) {
            self.stats.bytes -= seg.len();
            self.stats.entries -= 1;
        }
        if f.ranges.is_empty() {
            self.files.remove(&file);
        }
    }

    fn drop_file(&mut self, file: FileId) {
        if let Some(f) = self.files.remove(&file) {
            for (_, (seg, t)) in f.ranges {
                self.lru.remove(&t);
                self.stats.bytes -= seg.len();
                self.stats.entries -= 1;
                self.stats.invalidated += 1;
            }
        }
    }
}

/// The byte budget from `HICAMP_SENDFILE_CACHE`: `0` (or `off`) turns the cache off, a number
/// is MiB; unset or unreadable: [`DEFAULT_MIB`].
fn budget_from_env() -> u64 {
    let v = std::env::var("HICAMP_SENDFILE_CACHE").unwrap_or_default();
    let v = v.trim();
    if v == "off" || v == "no" {
        return 0;
    }
    v.parse::<u64>()
        .unwrap_or(DEFAULT_MIB)
        .saturating_mul(1 << 20)
}

/// The process's cache.
pub(super) fn cache() -> MutexGuard<'static, FileCache> {
    static CACHE: OnceLock<Mutex<FileCache>> = OnceLock::new();
    CACHE
        .get_or_init(|| Mutex::new(FileCache::new(budget_from_env(), MAX_ENTRIES)))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// The clock a file's times are taken from (realtime), ns.
pub(super) fn now_ns() -> i64 {
    // SAFETY: an all-zero timespec is valid for clock_gettime to overwrite.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec.saturating_mul(1_000_000_000) + ts.tv_nsec
}

/// The report's `sendfile_cache` object.
pub(super) fn report() -> serde_json::Value {
    serde_json::to_value(cache().stats).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hicamp::{Config, Memory};

    fn mem() -> Memory {
        Memory::new(Config {
            capacity_lines: 1 << 12,
            ..Config::default()
        })
        .unwrap()
    }

    const F: FileId = FileId { dev: 1, ino: 2 };
    const V: Version = Version {
        size: 100,
        mtime_ns: 5,
        ctime_ns: 5,
    };
    const NOW: i64 = 10 * SETTLE_NS;

    #[test]
    fn a_kept_range_is_served_until_its_file_changes() {
        let m = mem();
        let mut c = FileCache::new(1 << 20, 8);
        let s = m.segment(&[7u8; 100]).unwrap();
        assert!(c.get(F, V, 0, 4096).is_none());
        c.put(F, V, 0, 4096, &s, NOW);
        assert_eq!(c.get(F, V, 0, 4096), Some(s.clone()));
        assert!(c.get(F, V, 0, 100).is_none(), "another length");
        assert!(c.get(F, V, 1, 4096).is_none(), "another offset");
        // Another phase: the snapshot kept at phase 0 serves, with its phase.
        assert_eq!(c.get_at(F, V, (0, 4096, 48)), Some((s.clone(), 0)));
        let t = m.segment(&[8u8; 148]).unwrap();
        c.put_at(F, V, (0, 4096, 48), &t, NOW);
        assert_eq!(c.get_at(F, V, (0, 4096, 48)), Some((t.clone(), 48)));
        assert_eq!(c.get_at(F, V, (0, 4096, 0)), Some((s.clone(), 0)));
        // A phase kept neither exactly nor last: phase 0's.
        assert_eq!(c.get_at(F, V, (0, 4096, 16)), Some((s.clone(), 0)));
        for v in [
            Version { size: 101, ..V },
            Version { mtime_ns: 6, ..V },
            Version { ctime_ns: 6, ..V },
        ] {
            c.put(F, V, 0, 4096, &s, NOW);
            assert!(c.get(F, v, 0, 4096).is_none(), "{v:?}");
            assert!(c.get(F, V, 0, 4096).is_none(), "dropped, {v:?}");
        }
        assert_eq!(c.stats.invalidated, 4);
        assert_eq!((c.stats.entries, c.stats.bytes), (0, 0));
        assert_eq!(c.stats.hits, 5);
    }

    #[test]
    fn a_recently_changed_file_is_not_kept() {
        let m = mem();
        let mut c = FileCache::new(1 << 20, 8);
        let s = m.segment(b"x").unwrap();
        let recent = Version {
            ctime_ns: NOW - SETTLE_NS / 2,
            ..V
        };
        c.put(F, recent, 0, 1, &s, NOW);
        assert!(c.get(F, recent, 0, 1).is_none());
        assert_eq!(c.stats.racy, 1);
    }

    #[test]
    fn bounds_evict_the_least_recently_used_and_release_the_lines() {
        let m = mem();
        let mut c = FileCache::new(1000, 3);
        let segs: Vec<Segment> = (0..5u8)
            .map(|k| m.segment(&[k + 1; 300]).unwrap())
            .collect();
        for (k, s) in segs.iter().enumerate().take(3) {
            c.put(F, V, k as i64, 300, s, NOW);
        }
        // Touch range 0: range 1 is now the oldest.
        assert!(c.get(F, V, 0, 300).is_some());
        c.put(F, V, 3, 300, &segs[3], NOW);
        assert!(c.get(F, V, 1, 300).is_none(), "range 1 evicted");
        assert!(c.get(F, V, 0, 300).is_some());
        assert_eq!(c.stats.entries, 3);
        assert!(c.stats.bytes <= 1000);
        // Over the byte budget: a 4th range of 300 pushes one out.
        c.put(F, V, 4, 300, &segs[4], NOW);
        assert_eq!(c.stats.entries, 3);
        assert_eq!(c.stats.evicted, 2);
        drop(segs);
        assert!(m.live_lines() > 0);
        c.clear();
        assert_eq!(m.live_lines(), 0, "the cache held the only references");
    }

    /// A memory too full for a read: the process's cache is emptied (its snapshots held the
    /// lines) and the read succeeds on the second try.
    #[test]
    fn a_full_memory_empties_the_cache_and_the_read_is_retried() {
        use std::os::fd::AsRawFd;
        let m = Memory::new(Config {
            capacity_lines: 1 << 10,
            ..Config::default()
        })
        .unwrap();
        // Distinct lines (no dedup between them): an xorshift stream.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut bytes = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        };
        // Snapshots in the process's cache holding most of the memory.
        let held = m.segment(&bytes(64 * 800)).unwrap();
        cache().put(FileId { dev: 9, ino: 9 }, V, 0, held.len(), &held, NOW);
        drop(held);
        assert_eq!(cache().stats.entries, 1);
        let data = bytes(64 * 400);
        let path = std::env::temp_dir().join(format!("hicamp-sfcache-{}", std::process::id()));
        std::fs::write(&path, &data).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        let got = super::super::ops::read_range(&m, f.as_raw_fd(), 0, data.len());
        std::fs::remove_file(&path).unwrap();
        let got = got.expect("read after the cache was emptied");
        assert!(got.stopped.is_none(), "{:?}", got.stopped);
        assert_eq!(got.segment.to_vec(), data);
        assert_eq!(cache().stats.entries, 0);
    }

    #[test]
    fn off_keeps_nothing() {
        let m = mem();
        let mut c = FileCache::new(0, 8);
        let s = m.segment(b"x").unwrap();
        c.put(F, V, 0, 1, &s, NOW);
        assert!(c.get(F, V, 0, 1).is_none());
        assert_eq!(c.stats.misses, 0);
    }
}
