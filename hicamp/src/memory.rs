//! The memory: a line store, a segment map and the accounting, shared by every
//! handle through one `Arc`.

use std::cell::Cell;
use std::sync::atomic::{compiler_fence, AtomicBool, AtomicI64, Ordering::*};
use std::sync::Arc;

use crossbeam_utils::CachePadded;

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::dag::{self, Tree};
use crate::directory;
use crate::error::{Error, Result};
use crate::id::SegmentId;
use crate::map::MapTable;
use crate::persist::{self, Layout};
use crate::region::Backing;
use crate::segment::{Segment, SegmentMut};
use crate::stats::Stats;
use crate::store::{self, Store};

/// Stripes a thread can own: its adds are a load and a store (one writer),
/// not a locked read-modify-write. A segment handle adds to its memory's
/// logical bytes when made and when dropped, and that locked add was a
/// third of a `Segment::clone` (perf annotate of the RPC bench).
const OWNED_STRIPES: usize = 32;
/// The stripe of threads that own none (more threads than stripes, or a
/// thread whose claim was already dropped at its exit), and of a signal
/// handler that interrupts its thread's own add: locked adds.
const SHARED_STRIPE: usize = OWNED_STRIPES;

/// Which stripes a live thread owns (the same index in every memory).
static STRIPE_TAKEN: [AtomicBool; OWNED_STRIPES] =
    [const { AtomicBool::new(false) }; OWNED_STRIPES];

/// A thread's claim on a stripe, given back when the thread exits.
struct StripeClaim {
    index: usize,
    /// Set while this thread's load-and-store add is under way: a signal
    /// handler that runs on the thread meanwhile (and makes or drops a
    /// handle: `write` on a stack socket is async-signal-safe) sees it and
    /// adds to the shared stripe, so neither add is lost.
    busy: Cell<bool>,
}

impl StripeClaim {
    fn take() -> StripeClaim {
        let index = STRIPE_TAKEN
            .iter()
            .position(|t| {
                // Acquire: the stores of the stripe's last owner (in every
                // memory) come before this thread's first load of it.
                !t.load(Relaxed) && t.compare_exchange(false, true, Acquire, Relaxed).is_ok()
            })
            .unwrap_or(SHARED_STRIPE);
        StripeClaim {
            index,
            busy: Cell::new(false),
        }
    }
}

impl Drop for StripeClaim {
    fn drop(&mut self) {
        if let Some(t) = STRIPE_TAKEN.get(self.index) {
            t.store(false, Release);
        }
    }
}

thread_local! {
    static STRIPE: StripeClaim = StripeClaim::take();
}

/// A counter striped over cache lines, one per thread where it can be, so
/// that threads neither bounce one line nor lock the bus to add.
pub(crate) struct StripedCounter {
    stripes: [CachePadded<AtomicI64>; OWNED_STRIPES + 1],
}

impl StripedCounter {
    fn new() -> Self {
        StripedCounter {
            stripes: std::array::from_fn(|_| CachePadded::new(AtomicI64::new(0))),
        }
    }

    #[inline]
    pub(crate) fn add(&self, v: i64) {
        let owned = STRIPE
            .try_with(|c| {
                if c.index >= OWNED_STRIPES || c.busy.get() {
                    return false;
                }
                // This thread is the stripe's only writer (see `StripeClaim`);
                // the fences keep the flag around the add for a signal
                // handler on this thread (they emit no instruction).
                c.busy.set(true);
                compiler_fence(SeqCst);
                let st = &self.stripes[c.index];
                st.store(st.load(Relaxed).wrapping_add(v), Relaxed);
                compiler_fence(SeqCst);
                c.busy.set(false);
                true
            })
            .unwrap_or(false);
        if !owned {
            self.stripes[SHARED_STRIPE].fetch_add(v, Relaxed);
        }
    }

    pub(crate) fn sum(&self) -> i64 {
        self.stripes
            .iter()
            .fold(0i64, |a, s| a.wrapping_add(s.load(Relaxed)))
    }
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) store: Store,
    pub(crate) map: MapTable,
    /// Bytes referenced by live handles and map entries.
    pub(crate) logical: StripedCounter,
    pub(crate) backing: Arc<Backing>,
    path: Option<PathBuf>,
    recovery: Option<Recovery>,
    damage: Option<Damage>,
}

impl Drop for Inner {
    /// A clean close of a file-backed memory: every handle is gone, so the
    /// stored reference counts are exactly the committed references; flush
    /// and mark the file clean.
    fn drop(&mut self) {
        if !self.backing.is_file() {
            return;
        }
        let _ = self.store.persist_barrier();
        // The counts above 63 (a file that cannot take them stays unclean:
        // the next open recounts).
        let saved = self.store.save_extras();
        let _ = self.backing.msync(0, self.backing.len());
        if saved.is_ok() {
            let _ = persist::write_state(&self.backing, true);
        }
    }
}

/// A segment read in place ([`Memory::segment_from_reader`]).
#[derive(Debug)]
pub struct ReadSegment {
    /// The bytes read (fewer than asked at the end of the input or when
    /// `stopped` says why).
    pub segment: Segment,
    /// What the build read and made (`copied_bytes` is 0: hicamp copied
    /// nothing).
    pub counts: store::ReadCounts,
    /// Why the segment is shorter than asked, when the reader failed or the
    /// memory filled after some bytes were read (`None`: every byte, or the
    /// end of the input).
    pub stopped: Option<store::ReadError>,
}

/// What opening a memory file found and repaired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Recovery {
    /// The file had been closed cleanly.
    pub was_clean: bool,
    /// Live map entries.
    pub entries: u64,
    /// Lines reachable from them.
    pub live_lines: u64,
    /// Slots that held a count but were unreachable (written and never
    /// committed, or freed and not yet recycled): reclaimed.
    pub orphans_reclaimed: u64,
    /// Reachable lines whose stored reference count was wrong: repaired.
    pub refcounts_repaired: u64,
    /// Reachable lines equal to another reachable line (a non-canonical file;
    /// they stay usable, outside the dedup index).
    pub duplicate_lines: u64,
    /// Time the recovery took, in microseconds.
    pub micros: u64,
}

/// How [`Memory::open_with`] treats a damaged file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenOptions {
    /// Refuse ([`Error::Corrupt`]) a file with any damage (a corrected bit
    /// flip, an unreadable map slot of a cleanly closed file, a lost entry, a
    /// digest mismatch, a damaged directory) instead of salvaging it. A write
    /// torn by a crash is not damage.
    pub strict: bool,
    /// Open without writing the file and without excluding other readers
    /// (a shared lock, as [`crate::fsck`] takes; a writer that holds the file
    /// makes the open fail): the file is mapped privately, copy-on-write, so
    /// recovery and every later change happen in this process only and are
    /// lost at close. For inspection (`hicamp stat`, `hicamp grep`).
    pub read_only: bool,
}

/// What opening (or checking) a memory file found damaged. Everything named
/// here is also described by [`Damage::problems`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Damage {
    /// Map slots (entry, slot) with one flipped bit, corrected.
    pub slots_repaired: Vec<(SegmentId, u8)>,
    /// Entries of a cleanly closed file with an unreadable slot: the other
    /// slot's version (given) is used. The unreadable one may have been
    /// newer, so a change may be lost: corruption.
    pub slots_damaged: Vec<(SegmentId, u64)>,
    /// Entries of a file that was not closed cleanly with an unreadable slot:
    /// a write torn by the crash, rolled back to the version given (that
    /// write never returned). Not corruption.
    pub torn_writes: Vec<(SegmentId, u64)>,
    /// Entries lost, and why: no readable slot, or a DAG that does not hold
    /// together. A salvaging open deletes them.
    pub lost: Vec<(SegmentId, String)>,
    /// Names bound to lost entries (a salvaging open unbinds them).
    pub lost_names: Vec<String>,
    /// Named segments whose bytes no longer match the digest taken when they
    /// were bound (kept: their bytes are readable but wrong).
    pub digest_mismatches: Vec<String>,
    /// What is wrong with the directory of names, if anything (a salvaging
    /// open keeps the bindings before the damage).
    pub directory: Option<String>,
    /// Named segments.
    pub named: u64,
    /// Named segments whose digest verified.
    pub digests_verified: u64,
    /// Named segments written since they were bound (their entry's version
    /// moved on; the bind-time digest is of an older version and is not
    /// checked). Not damage.
    pub changed_since_bind: u64,
    /// The file's header failed its checks and was restored from its copy
    /// (a salvaging open rewrites it).
    pub header_restored: bool,
}

impl Damage {
    /// True when something was corrupted (anything but torn writes).
    pub fn is_corrupt(&self) -> bool {
        !(self.slots_repaired.is_empty()
            && !self.header_restored
            && self.slots_damaged.is_empty()
            && self.lost.is_empty()
            && self.lost_names.is_empty()
            && self.digest_mismatches.is_empty()
            && self.directory.is_none())
    }

    /// True when nothing at all was found (not even a torn write).
    pub fn is_clean(&self) -> bool {
        !self.is_corrupt() && self.torn_writes.is_empty()
    }

    /// One line per finding.
    pub fn problems(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.header_restored {
            v.push("the header failed its checks: restored from its copy".to_string());
        }
        for (id, s) in &self.slots_repaired {
            v.push(format!(
                "map entry {}: a flipped bit in slot {s}, corrected",
                id.0
            ));
        }
        for (id, ver) in &self.slots_damaged {
            v.push(format!(
                "map entry {}: a slot is unreadable in a cleanly closed file; version {ver} is used (a newer one may be lost)",
                id.0
            ));
        }
        for (id, ver) in &self.torn_writes {
            v.push(format!(
                "map entry {}: a write torn by the crash, rolled back to version {ver}",
                id.0
            ));
        }
        for (id, why) in &self.lost {
            v.push(format!("map entry {}: lost ({why})", id.0));
        }
        for n in &self.lost_names {
            v.push(format!("name {n:?}: its segment is lost"));
        }
        for n in &self.digest_mismatches {
            v.push(format!("name {n:?}: digest mismatch (its bytes changed)"));
        }
        if let Some(d) = &self.directory {
            v.push(d.clone());
        }
        v
    }

    /// The findings on one line.
    pub fn summary(&self) -> String {
        self.problems().join("; ")
    }
}

/// A HICAMP memory: immutable, deduplicated lines; segments as canonical DAGs
/// of lines; a segment map. Cloning a `Memory` clones a handle to the same
/// memory. `Memory` is `Send + Sync`; the intern path takes only the lock of
/// one of 64 index shards.
#[derive(Clone)]
pub struct Memory {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memory")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Memory {
    /// A new, empty memory in an anonymous mapping.
    pub fn new(config: Config) -> Result<Memory> {
        config.validate()?;
        let layout = Layout::for_config(&config);
        let backing = Backing::anon(layout.len as usize)?;
        Memory::assemble(backing, config, layout, None, None)
    }

    /// Creates a memory file at `path` (an error if it exists) and returns the
    /// new, empty memory. The file is locked while the memory is open.
    ///
    /// Creation is atomic: the file is built under a temporary name in the
    /// same directory, synced, and renamed into place, so a crash during
    /// create leaves no file at `path` (a later create removes the leftover
    /// temporary). Space is reserved as the memory fills (fallocate): a full
    /// file system is [`Error::NoSpace`] from the operation that needed room.
    pub fn create(path: impl AsRef<Path>, config: Config) -> Result<Memory> {
        let path = path.as_ref();
        let (backing, layout, creating) = persist::create_file(path, &config)?;
        persist::write_state(&backing, false).map_err(|e| Error::Io {
            path: path.display().to_string(),
            op: "write state",
            message: e.to_string(),
        })?;
        let mem = Memory::assemble(
            Arc::clone(&backing),
            config,
            layout,
            Some(path.to_path_buf()),
            None,
        )?;
        mem.inner
            .store
            .persist_barrier()
            .map_err(|e| persist::io_err(path, "sync", e))?;
        creating.finish(&backing)?;
        Ok(mem)
    }

    /// Opens a memory file: checks its header, then recovers (see
    /// [`Memory::recovery`]): reference counts, free lists and the dedup index
    /// are rebuilt from the committed segment-map entries, and every line a
    /// crash left unreferenced is reclaimed.
    ///
    /// Damage is salvaged and reported ([`Memory::damage`]): map slots with
    /// one flipped bit are corrected; entries that cannot be read, or whose
    /// DAGs do not hold together, are dropped (their names removed from the
    /// directory) so that every healthy segment survives; named segments
    /// whose bytes no longer match their digests are kept and named. Use
    /// [`Memory::open_with`] and [`OpenOptions::strict`] to refuse a damaged
    /// file instead.
    pub fn open(path: impl AsRef<Path>) -> Result<Memory> {
        Memory::open_with(path, OpenOptions::default())
    }

    /// [`Memory::open`] with options.
    pub fn open_with(path: impl AsRef<Path>, options: OpenOptions) -> Result<Memory> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let t = std::time::Instant::now();
        let opened = if options.read_only {
            persist::open_copy(path)?
        } else {
            persist::open_file(path)?
        };
        let (backing, config, layout) = (opened.backing.clone(), opened.config, opened.layout);
        let was_clean = persist::read_clean(&backing);
        let store = Store::new(&backing, &layout, &config);
        let map = MapTable::new(&backing, &layout, &config);
        let reserved_slots = backing.space().map_or(layout.slots, |s| s.reserved().slots);
        let mut a = store::analyze(
            &name,
            store.arena(),
            map.words(),
            map.reserved_entries(),
            reserved_slots as usize,
            store.shift() - 2,
            was_clean,
            options.strict,
        )?;
        if opened.header_restored && options.strict {
            return Err(Error::Corrupt {
                path: name,
                what: "strict open refuses a damaged file: the header failed its checks (its copy is whole)".into(),
            });
        }
        a.damage.header_restored = opened.header_restored;
        if a.states
            .first()
            .is_none_or(|s| *s == store::EntryState::Never)
        {
            return Err(Error::Corrupt {
                path: name,
                what: "map entry 0 (the directory of names) is missing".into(),
            });
        }
        // From here on the file changes: it is not clean until closed.
        if opened.header_rewrite {
            persist::rewrite_header(path, &opened)?;
        }
        drop(opened);
        if !options.read_only {
            persist::write_state(&backing, false).map_err(|e| Error::Io {
                path: name.clone(),
                op: "write state",
                message: e.to_string(),
            })?;
        }
        map.repair(&a)?;
        let rebuilt = store.rebuild(&a);
        let logical = map.recover(&a);
        let recovery = Recovery {
            was_clean,
            entries: a.entries.len() as u64,
            live_lines: a.live,
            orphans_reclaimed: rebuilt.orphans,
            refcounts_repaired: rebuilt.repaired,
            duplicate_lines: rebuilt.duplicates,
            micros: 0,
        };
        let mem = Memory::from_parts(
            backing,
            config,
            store,
            map,
            Some(path.to_path_buf()),
            Some(recovery),
        );
        mem.inner.logical.add(logical as i64);
        if a.rewrite_directory {
            directory::rewrite(&mem, &a.names)?;
        }
        if let Ok(d) = mem.map().entry(directory::DIRECTORY) {
            // Best effort: a file filled before the reserve existed may not
            // have room for it.
            let _ = mem.keep_directory_reserve(d.len);
        }
        let mut inner = mem.inner;
        let i = Arc::get_mut(&mut inner).expect("not shared yet");
        if let Some(r) = i.recovery.as_mut() {
            r.micros = t.elapsed().as_micros() as u64;
        }
        i.damage = Some(a.damage);
        Ok(Memory { inner })
    }

    /// What [`Memory::open`] found damaged and salvaged (None for a new
    /// memory).
    pub fn damage(&self) -> Option<&Damage> {
        self.inner.damage.as_ref()
    }

    fn assemble(
        backing: Arc<Backing>,
        config: Config,
        layout: Layout,
        path: Option<PathBuf>,
        recovery: Option<Recovery>,
    ) -> Result<Memory> {
        let store = Store::new(&backing, &layout, &config);
        let map = MapTable::new(&backing, &layout, &config);
        let mem = Memory::from_parts(backing, config, store, map, path, recovery);
        // Entry 0 is the directory of named segments.
        let dir = mem.map().insert(mem.empty())?;
        debug_assert_eq!(dir.get(), 0);
        Ok(mem)
    }

    fn from_parts(
        backing: Arc<Backing>,
        config: Config,
        store: Store,
        map: MapTable,
        path: Option<PathBuf>,
        recovery: Option<Recovery>,
    ) -> Memory {
        Memory {
            inner: Arc::new(Inner {
                config,
                store,
                map,
                logical: StripedCounter::new(),
                backing,
                path,
                recovery,
                damage: None,
            }),
        }
    }

    /// The file behind a persistent memory.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// What [`Memory::open`] found and repaired (None for a new memory).
    pub fn recovery(&self) -> Option<Recovery> {
        self.inner.recovery
    }

    /// Forces everything to the file (a full msync), whatever the durability
    /// mode. A no-op for an anonymous memory.
    pub fn sync(&self) -> Result<()> {
        let io = |e: std::io::Error| Error::Io {
            path: self
                .path()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            op: "sync",
            message: e.to_string(),
        };
        self.inner.store.persist_barrier().map_err(io)?;
        self.inner
            .backing
            .msync(0, self.inner.backing.len())
            .map_err(io)
    }

    /// A memory with the default config (64-byte lines).
    pub fn with_defaults() -> Result<Memory> {
        Memory::new(Config::default())
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Line size in bytes.
    pub fn line_size(&self) -> usize {
        self.inner.config.line_size
    }

    /// Child ids per interior line.
    pub fn fanout(&self) -> usize {
        self.inner.store.fanout()
    }

    /// True when both handles name the same memory.
    pub fn same(&self, other: &Memory) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// A segment holding a copy of `data`, deduplicated line by line.
    pub fn segment(&self, data: &[u8]) -> Result<Segment> {
        let tree = dag::build(&self.inner.store, data)?;
        Ok(Segment::from_tree(self.clone(), tree))
    }

    /// A segment holding a copy of `data` in **owned** lines: lines kept out
    /// of the dedup index (no hash, no lookup, no lock; the last release
    /// gives the slot straight back), for data that lives briefly and is
    /// not worth deduplicating, such as received frames. Such a segment
    /// equals (and hashes like) a segment of the same bytes, but `==`
    /// compares its content and `Hash` interns a canonical copy once (see
    /// [`Segment::is_canonical`]). Slices, splices and writes of it share
    /// its lines. A file-backed memory makes canonical segments here
    /// (`Memory::segment`): its recovery and fsck know only canonical DAGs.
    pub fn segment_owned(&self, data: &[u8]) -> Result<Segment> {
        let store = &self.inner.store;
        if !store.owned_enabled() || data.is_empty() {
            return self.segment(data);
        }
        dag::check_len(data.len() as u64)?;
        let fs = store.shift() - 2;
        let (root, height) = store.build_owned(data, |n| dag::height_for(n as u64, fs))?;
        let tree = Tree {
            root,
            height,
            len: data.len() as u64,
        };
        Ok(Segment::from_tree(self.clone(), tree))
    }

    /// True when this memory makes owned lines in
    /// [`Memory::segment_owned`] (a volatile memory).
    pub fn owned_lines_enabled(&self) -> bool {
        self.inner.store.owned_enabled()
    }

    /// Builds a segment of up to `len` bytes that `read` writes straight
    /// into free line slots of this memory (a `pread` of a file, say): the
    /// reader's copy is the only one. The lines are then deduplicated where
    /// they lie (a duplicate or zero line gives its slot back, a new line is
    /// indexed in place) and the interior levels built as [`Memory::segment`]
    /// builds them, so the segment equals `segment` of the same bytes.
    ///
    /// `read` is called with the bytes of consecutive free slots (a run of
    /// fresh slots per 256 KiB, or shorter runs of reused ones), in order,
    /// until `len` bytes were read or it returns `Ok(0)` (end of input: a
    /// shorter segment). `ErrorKind::Interrupted` is retried. Another error,
    /// or a memory that fills, ends the segment where it is (the reason in
    /// [`ReadSegment::stopped`]), or is the error when no byte was read.
    /// Every slot the build took and did not keep is returned, on every path.
    pub fn segment_from_reader(
        &self,
        len: u64,
        mut read: impl FnMut(&mut [u8]) -> std::io::Result<usize>,
    ) -> std::result::Result<ReadSegment, store::ReadError> {
        // The first buffer only: one run of consecutive slots per call.
        self.segment_from_vectored_reader(len, |bufs: &mut [std::io::IoSliceMut<'_>]| {
            match bufs.first_mut() {
                Some(b) => read(b),
                None => Ok(0),
            }
        })
    }

    /// [`Memory::segment_from_reader`] with a vectored reader (a `preadv`, say): `read` is
    /// given the buffers of every run of consecutive free slots of a chunk (up to 256 KiB)
    /// at once, in order, so that one call can fill them all; it returns the bytes it wrote,
    /// filling the buffers in order (the next call gets what is left).
    pub fn segment_from_vectored_reader(
        &self,
        len: u64,
        mut read: impl FnMut(&mut [std::io::IoSliceMut<'_>]) -> std::io::Result<usize>,
    ) -> std::result::Result<ReadSegment, store::ReadError> {
        dag::check_len(len)?;
        let shift = self.inner.store.shift();
        let f = self
            .inner
            .store
            .intern_tree_from(len, &mut read, |n| dag::height_for(n as u64, shift - 2))?;
        let tree = Tree {
            root: f.root,
            height: f.height,
            len: f.counts.bytes,
        };
        Ok(ReadSegment {
            segment: Segment::from_tree(self.clone(), tree),
            counts: f.counts,
            stopped: f.stopped,
        })
    }

    /// A segment of `len` zero bytes (costs no line at all).
    pub fn zeroed(&self, len: u64) -> Result<Segment> {
        dag::check_len(len)?;
        let tree = Tree {
            root: crate::LineId::ZERO,
            height: dag::height_for(
                dag::leaves_for(len, self.inner.store.shift()),
                self.inner.store.shift() - 2,
            ),
            len,
        };
        Ok(Segment::from_tree(self.clone(), tree))
    }

    /// The empty segment.
    pub fn empty(&self) -> Segment {
        Segment::from_tree(self.clone(), Tree::default())
    }

    /// A new, empty mutable segment.
    pub fn builder(&self) -> SegmentMut {
        SegmentMut::from_tree(self.clone(), Tree::default())
    }

    /// Drops many segments at once: their roots lose their reference in
    /// one batched release. Counts that stay above zero are decremented
    /// without a lock; the lines that die are hashed together, sorted by
    /// index shard and freed with one lock acquisition per shard and batch,
    /// level after level of their DAGs (dropping the segments one by one
    /// takes a lock per dying line). For callers that retire many segments
    /// together: a NIC's completed TX frames, a socket's acknowledged
    /// retransmission queue. Segments of another memory are simply dropped.
    pub fn release_segments(&self, segs: impl IntoIterator<Item = Segment>) {
        let mut roots = Vec::new();
        let mut bytes = 0i64;
        for seg in segs {
            if seg.memory().same(self) {
                let (_, tree) = seg.into_tree();
                bytes += tree.len as i64;
                roots.push(tree.root);
            } else {
                drop(seg);
            }
        }
        self.inner.logical.add(-bytes);
        self.inner.store.release_all(&roots);
    }

    /// Footprint statistics (takes each shard lock briefly).
    pub fn stats(&self) -> Stats {
        Stats::collect(self)
    }

    /// Lines in use (leaf and interior; the zero line is not counted).
    pub fn live_lines(&self) -> u64 {
        let c = self.inner.store.counters();
        c.live[0] + c.live[1]
    }

    /// The reference count of a line (0 for the zero line). For tests and
    /// tools.
    pub fn refcount(&self, id: crate::LineId) -> u32 {
        self.inner.store.refcount(id)
    }

    /// The kind of a live line (for tests and tools).
    pub fn line_kind(&self, id: crate::LineId) -> crate::LineKind {
        self.inner.store.kind(id)
    }
}
