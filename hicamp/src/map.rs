//! The segment map: segment id -> (root, height, length, version).
//!
//! Entries live in a mapped array of three `u64` words each (so the map is
//! addressable by offsets, ready for a file), guarded by 256 striped locks.
//! Every entry owns one reference to its root. A snapshot is one reference
//! increment plus a new entry; a write builds the new DAG copy-on-write and
//! publishes it with `version + 1`; [`SegmentMap::commit`] publishes a DAG
//! built elsewhere only if the version is still the one it was based on
//! (HICAMP's merge-update as compare-and-swap).

use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, MutexGuard};

use crate::config::{Config, Durability};
use crate::dag::{self, Tree};
use crate::error::{Error, Result};
use crate::id::{LineId, SegmentId};
use crate::memory::Memory;
use crate::persist::{slot_checksum, Layout, ENTRY_WORDS, LIVE_BIT};
use crate::region::{store_fence, AtomicU64Array, Backing};
use crate::segment::Segment;
use crate::store::{Analysis, EntryState};

const STRIPES: usize = 256;
/// Bytes of one entry in the mapped array (two slots of four words).
pub(crate) const ENTRY_BYTES: u64 = (ENTRY_WORDS * 8) as u64;
/// `cur` value of an entry that was never written.
const NEVER: u8 = 2;

/// The current slot of each entry, allocated in chunks of 64Ki entries as
/// entries are used (a map of 4G entries costs nothing until it is used).
struct CurSlots {
    chunks: Box<[OnceLock<Box<[AtomicU8]>>]>,
    capacity: usize,
}

const CUR_CHUNK_BITS: u32 = 16;

impl CurSlots {
    fn new(capacity: usize) -> CurSlots {
        CurSlots {
            chunks: (0..capacity.div_ceil(1 << CUR_CHUNK_BITS))
                .map(|_| OnceLock::new())
                .collect(),
            capacity,
        }
    }

    fn load(&self, i: usize) -> u8 {
        match self.chunks[i >> CUR_CHUNK_BITS].get() {
            Some(c) => c[i & ((1 << CUR_CHUNK_BITS) - 1)].load(Relaxed),
            None => NEVER,
        }
    }

    fn store(&self, i: usize, v: u8) {
        let k = i >> CUR_CHUNK_BITS;
        let c = self.chunks[k].get_or_init(|| {
            let n = (self.capacity - (k << CUR_CHUNK_BITS)).min(1 << CUR_CHUNK_BITS);
            (0..n).map(|_| AtomicU8::new(NEVER)).collect()
        });
        c[i & ((1 << CUR_CHUNK_BITS) - 1)].store(v, Relaxed);
    }
}

struct Ids {
    next: u32,
    free: Vec<u32>,
}

pub(crate) struct MapTable {
    words: AtomicU64Array,
    /// Byte offset of the entries in the backing mapping.
    off: usize,
    capacity: u32,
    /// Which slot of each entry is current (volatile, rebuilt on open).
    cur: CurSlots,
    stripes: Box<[Mutex<()>]>,
    ids: Mutex<Ids>,
    live: AtomicU64,
    durability: Durability,
}

/// One entry of the segment map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapEntry {
    /// Root line of the segment's DAG.
    pub root: LineId,
    /// Height of the DAG.
    pub height: u32,
    /// Length in bytes.
    pub len: u64,
    /// Bumped by every change to the entry.
    pub version: u64,
}

impl MapTable {
    pub(crate) fn new(backing: &Arc<Backing>, layout: &Layout, config: &Config) -> MapTable {
        let capacity = config.map_capacity;
        MapTable {
            words: backing.u64s(layout.map_off as usize, capacity as usize * ENTRY_WORDS),
            off: layout.map_off as usize,
            capacity,
            cur: CurSlots::new(capacity as usize),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            ids: Mutex::new(Ids {
                next: 0,
                free: Vec::new(),
            }),
            live: AtomicU64::new(0),
            durability: if backing.is_file() {
                config.durability
            } else {
                Durability::None
            },
        }
    }

    /// Writes what recovery decided (before the memory is shared): slots
    /// with a flipped bit get their corrected words; lost entries become
    /// tombstones (both slots rewritten), so that their ids can be reused.
    pub(crate) fn repair(&self, a: &Analysis) -> Result<()> {
        let words = self.words.as_slice();
        let mut touched = Vec::new();
        for &(index, slot, w) in &a.repairs {
            let base = index as usize * ENTRY_WORDS + slot as usize * 4;
            for (k, v) in w.iter().enumerate() {
                words[base + k].store(*v, Relaxed);
            }
            touched.push(index as usize);
        }
        for &(index, slot) in &a.clear {
            let base = index as usize * ENTRY_WORDS + slot as usize * 4;
            for k in 0..4 {
                words[base + k].store(0, Relaxed);
            }
            touched.push(index as usize);
        }
        for (index, state) in a.states.iter().enumerate() {
            if *state != EntryState::Lost {
                continue;
            }
            let base = index * ENTRY_WORDS;
            let version = (0..2)
                .map(|s| words[base + s * 4 + 2].load(Relaxed))
                .max()
                .unwrap_or(0)
                .wrapping_add(1);
            let tomb = [0, 0, version, slot_checksum(index as u32, 0, 0, version)];
            for k in 0..4 {
                words[base + 4 + k].store(0, Relaxed);
                words[base + k].store(tomb[k], Relaxed);
            }
            touched.push(index);
        }
        let mut result = Ok(());
        for i in touched {
            result = result.and(self.persist_entry(i));
        }
        result
    }

    /// Rebuilds the volatile state from what recovery found (after
    /// [`MapTable::repair`]): the current slots, the id allocator and the
    /// live count. Returns the logical bytes.
    pub(crate) fn recover(&self, a: &Analysis) -> u64 {
        let mut live = 0;
        let mut logical = 0;
        let mut used = Vec::new();
        let walked: std::collections::HashSet<u32> = a.entries.iter().map(|e| e.index).collect();
        for (i, state) in a.states.iter().enumerate() {
            match *state {
                EntryState::Never => {}
                EntryState::Lost => {
                    self.cur.store(i, 0);
                    used.push((i as u32, false));
                }
                EntryState::Current { slot, words: w } => {
                    self.cur.store(i, slot);
                    let is_live = w[0] & LIVE_BIT != 0 && walked.contains(&(i as u32));
                    used.push((i as u32, is_live));
                    if is_live {
                        live += 1;
                        logical += w[1];
                    }
                }
            }
        }
        let next = used.last().map_or(0, |u| u.0 + 1);
        let mut ids = self.ids.lock();
        ids.next = next;
        ids.free = used.iter().filter(|u| !u.1).map(|u| u.0).rev().collect();
        self.live.store(live, Relaxed);
        logical
    }

    pub(crate) fn words(&self) -> &AtomicU64Array {
        &self.words
    }

    /// Entries whose file space is reserved (all of them for an anonymous
    /// memory): the ones that can have been written.
    pub(crate) fn reserved_entries(&self) -> u32 {
        match self.words.backing().space() {
            Some(s) => s.reserved().entries.min(u64::from(self.capacity)) as u32,
            None => self.capacity,
        }
    }

    fn check(&self, id: SegmentId) -> Result<()> {
        if id.0 >= self.capacity {
            return Err(Error::NoSuchSegment(id));
        }
        Ok(())
    }

    fn lock(&self, id: SegmentId) -> MutexGuard<'_, ()> {
        self.stripes[id.0 as usize % STRIPES].lock()
    }

    /// The current slot's words (w0, len, version), live or not; `None` for an
    /// entry never written. The caller holds the stripe lock.
    fn read_any(&self, id: SegmentId) -> Option<(u64, u64, u64)> {
        let slot = self.cur.load(id.0 as usize);
        if slot == NEVER {
            return None;
        }
        let w = &self.words.as_slice()[id.0 as usize * ENTRY_WORDS + slot as usize * 4..][..3];
        Some((w[0].load(Relaxed), w[1].load(Relaxed), w[2].load(Relaxed)))
    }

    /// Reads a live entry; the caller holds its stripe lock.
    fn read(&self, id: SegmentId) -> Result<(Tree, u64)> {
        self.check(id)?;
        match self.read_any(id) {
            Some((w0, len, version)) if w0 & LIVE_BIT != 0 => Ok((
                Tree {
                    root: LineId(w0 as u32),
                    height: ((w0 >> 32) & 0xff) as u32,
                    len,
                },
                version,
            )),
            _ => Err(Error::NoSuchSegment(id)),
        }
    }

    /// The version the next write of `id` gets: one past the current one, 0
    /// for an entry never written. The caller holds the stripe lock.
    fn next_version(&self, id: SegmentId) -> u64 {
        self.read_any(id).map_or(0, |(_, _, v)| v + 1)
    }

    /// Publishes `tree` (or a tombstone) as `version` of entry `id`: writes the
    /// slot that is not current, then makes the entry durable. A crash in
    /// between leaves the old slot current. The caller holds the stripe lock
    /// and has already made the tree's lines durable. The entry is published
    /// whatever happens: an error only says it may not be durable, and the
    /// caller finishes its bookkeeping before returning it.
    fn write(&self, id: SegmentId, tree: Option<Tree>, version: u64) -> Result<()> {
        let i = id.0 as usize;
        let slot = match self.cur.load(i) {
            0 => 1,
            _ => 0,
        };
        let w0 = tree.map_or(0, |t| {
            LIVE_BIT | (u64::from(t.height) << 32) | u64::from(t.root.0)
        });
        let len = tree.map_or(0, |t| t.len);
        let w = &self.words.as_slice()[i * ENTRY_WORDS + slot as usize * 4..][..4];
        w[0].store(w0, Relaxed);
        w[1].store(len, Relaxed);
        w[2].store(version, Relaxed);
        w[3].store(slot_checksum(id.0, w0, len, version), Relaxed);
        self.cur.store(i, slot);
        self.persist_entry(i)
    }

    fn persist_entry(&self, i: usize) -> Result<()> {
        let off = self.off + i * ENTRY_WORDS * 8;
        let backing = self.words.backing();
        match self.durability {
            Durability::None => Ok(()),
            Durability::CacheLine => {
                backing.flush_cache_lines(off, ENTRY_WORDS * 8);
                store_fence();
                Ok(())
            }
            Durability::Msync => backing.msync(off, ENTRY_WORDS * 8).map_err(|e| Error::Io {
                path: "memory file".into(),
                op: "msync map entry",
                message: e.to_string(),
            }),
        }
    }

    fn alloc(&self) -> Result<SegmentId> {
        let mut ids = self.ids.lock();
        let id = match ids.free.pop() {
            Some(id) => id,
            None if ids.next < self.capacity => {
                self.words
                    .backing()
                    .reserve_entries(u64::from(ids.next) + 1)?;
                ids.next += 1;
                ids.next - 1
            }
            None => {
                return Err(Error::MapFull {
                    capacity: u64::from(self.capacity),
                })
            }
        };
        Ok(SegmentId(id))
    }

    fn free(&self, id: SegmentId) {
        self.ids.lock().free.push(id.0);
    }

    /// Entries in use.
    pub(crate) fn live(&self) -> u64 {
        self.live.load(Relaxed)
    }

    /// Bytes of map metadata actually touched (entries up to the high-water
    /// mark, the volatile current-slot bytes, the free list and the locks).
    pub(crate) fn bytes(&self) -> u64 {
        let ids = self.ids.lock();
        u64::from(ids.next) * (ENTRY_BYTES + 1)
            + (ids.free.capacity() * 4) as u64
            + (STRIPES * std::mem::size_of::<Mutex<()>>()) as u64
    }
}

/// The segment map of a [`Memory`], borrowed from it by [`Memory::map`].
#[derive(Debug, Clone, Copy)]
pub struct SegmentMap<'m> {
    mem: &'m Memory,
}

impl Memory {
    /// The segment map.
    pub fn map(&self) -> SegmentMap<'_> {
        SegmentMap { mem: self }
    }
}

impl SegmentMap<'_> {
    fn table(&self) -> &MapTable {
        &self.mem.inner.map
    }

    fn check_mem(&self, seg: &Segment) -> Result<()> {
        if seg.memory().same(self.mem) {
            Ok(())
        } else {
            Err(Error::ForeignSegment)
        }
    }

    /// Makes the lines built so far durable (no-op for DRAM memories).
    fn barrier(&self) -> Result<()> {
        self.mem
            .inner
            .store
            .persist_barrier()
            .map_err(|e| Error::Io {
                path: "memory file".into(),
                op: "persist lines",
                message: e.to_string(),
            })
    }

    /// Binds a segment to a new id (the handle's reference moves into the
    /// entry). Durable when it returns, for a file-backed memory.
    pub fn insert(&self, seg: Segment) -> Result<SegmentId> {
        self.check_mem(&seg)?;
        let t = self.table();
        let id = t.alloc()?;
        if let Err(e) = self.barrier() {
            t.free(id);
            return Err(e);
        }
        let (_, tree) = seg.into_tree();
        let _g = t.lock(id);
        // A reused id continues the version sequence of its previous life, so
        // a stale committer can never match it.
        let version = t.next_version(id);
        let persisted = t.write(id, Some(tree), version);
        t.live.fetch_add(1, Relaxed);
        persisted.map(|()| id)
    }

    /// Creates a segment from bytes and binds it to a new id.
    pub fn create(&self, data: &[u8]) -> Result<SegmentId> {
        self.insert(self.mem.segment(data)?)
    }

    /// Reserves `count` consecutive ids, each bound to the empty segment (for
    /// rings of segments).
    pub fn reserve_range(&self, count: u32) -> Result<Range<SegmentId>> {
        let t = self.table();
        let start = {
            let mut ids = t.ids.lock();
            if u64::from(ids.next) + u64::from(count) > u64::from(t.capacity) {
                return Err(Error::MapFull {
                    capacity: u64::from(t.capacity),
                });
            }
            t.words
                .backing()
                .reserve_entries(u64::from(ids.next) + u64::from(count))?;
            ids.next += count;
            ids.next - count
        };
        let mut persisted = Ok(());
        for i in start..start + count {
            let id = SegmentId(i);
            let _g = t.lock(id);
            let version = t.next_version(id);
            persisted = persisted.and(t.write(id, Some(Tree::default()), version));
        }
        t.live.fetch_add(u64::from(count), Relaxed);
        persisted.map(|()| SegmentId(start)..SegmentId(start + count))
    }

    /// The entry of `id`.
    pub fn entry(&self, id: SegmentId) -> Result<MapEntry> {
        let t = self.table();
        t.check(id)?;
        let _g = t.lock(id);
        let (tree, version) = t.read(id)?;
        Ok(MapEntry {
            root: tree.root,
            height: tree.height,
            len: tree.len,
            version,
        })
    }

    /// A snapshot handle of the segment and the version it was taken at.
    pub fn get_versioned(&self, id: SegmentId) -> Result<(Segment, u64)> {
        let t = self.table();
        t.check(id)?;
        let (tree, version) = {
            let _g = t.lock(id);
            let (tree, version) = t.read(id)?;
            // Take the reference while the lock keeps the root alive.
            self.mem.inner.store.acquire(tree.root);
            (tree, version)
        };
        Ok((Segment::from_tree(self.mem.clone(), tree), version))
    }

    /// A snapshot handle of the segment.
    pub fn get(&self, id: SegmentId) -> Result<Segment> {
        Ok(self.get_versioned(id)?.0)
    }

    /// A new entry sharing `id`'s DAG: one reference increment plus the entry.
    pub fn snapshot(&self, id: SegmentId) -> Result<SegmentId> {
        let (seg, _) = self.get_versioned(id)?;
        self.insert(seg)
    }

    /// Copies bytes of segment `id` from `off` into `buf`; returns how many.
    pub fn read_at(&self, id: SegmentId, off: u64, buf: &mut [u8]) -> Result<usize> {
        self.get(id)?.read_at(off, buf)
    }

    /// Applies `f` (old tree -> new owned tree) to the entry under its lock and
    /// publishes the result with the next version.
    fn update(&self, id: SegmentId, f: impl FnOnce(&Tree) -> Result<Tree>) -> Result<u64> {
        let t = self.table();
        t.check(id)?;
        let store = &self.mem.inner.store;
        let (old, version, persisted) = {
            let _g = t.lock(id);
            let (old, version) = t.read(id)?;
            let new = f(&old)?;
            if let Err(e) = self.barrier() {
                store.release(new.root);
                return Err(e);
            }
            let persisted = t.write(id, Some(new), version + 1);
            self.mem.inner.logical.add(new.len as i64 - old.len as i64);
            (old, version + 1, persisted)
        };
        store.release(old.root);
        persisted.map(|()| version)
    }

    /// Copy-on-write write at `off` (may extend). Returns the new version.
    pub fn write_at(&self, id: SegmentId, off: u64, data: &[u8]) -> Result<u64> {
        let store = &self.mem.inner.store;
        self.update(id, |old| dag::write_at(store, old, off, data))
    }

    /// Appends at the end. Returns the new version.
    pub fn append(&self, id: SegmentId, data: &[u8]) -> Result<u64> {
        let store = &self.mem.inner.store;
        self.update(id, |old| dag::write_at(store, old, old.len, data))
    }

    /// Cuts or zero-extends to `len`. Returns the new version.
    pub fn resize(&self, id: SegmentId, len: u64) -> Result<u64> {
        let store = &self.mem.inner.store;
        self.update(id, |old| dag::resize(store, old, len))
    }

    /// Cuts to `len` bytes; an error if the segment is shorter.
    pub fn truncate(&self, id: SegmentId, len: u64) -> Result<u64> {
        let store = &self.mem.inner.store;
        self.update(id, |old| {
            if len > old.len {
                return Err(Error::BadOffset {
                    offset: len,
                    len: 0,
                    seg_len: old.len,
                });
            }
            dag::resize(store, old, len)
        })
    }

    /// Publishes `seg` as the new content of `id` if the entry is still at
    /// `expected` version; otherwise a [`Error::Conflict`] and nothing changes.
    /// Returns the new version. Durable when it returns, for a file-backed
    /// memory: the segment's lines reach the file before the entry does.
    pub fn commit(&self, id: SegmentId, expected: u64, seg: Segment) -> Result<u64> {
        self.check_mem(&seg)?;
        let t = self.table();
        t.check(id)?;
        self.barrier()?;
        let (old, persisted) = {
            let _g = t.lock(id);
            let (old, version) = t.read(id)?;
            if version != expected {
                return Err(Error::Conflict {
                    id,
                    expected,
                    actual: version,
                });
            }
            let (_, new) = seg.into_tree();
            let persisted = t.write(id, Some(new), version + 1);
            self.mem.inner.logical.add(-(old.len as i64));
            (old, persisted)
        };
        self.mem.inner.store.release(old.root);
        persisted.map(|()| expected + 1)
    }

    /// Publishes `seg` as the content of `id` whatever its version (the
    /// driver's "snapshot into the next ring slot"). Returns the new version.
    pub fn replace(&self, id: SegmentId, seg: Segment) -> Result<u64> {
        self.check_mem(&seg)?;
        let t = self.table();
        t.check(id)?;
        self.barrier()?;
        let (old, version, persisted) = {
            let _g = t.lock(id);
            let (old, version) = t.read(id)?;
            let (_, new) = seg.into_tree();
            let persisted = t.write(id, Some(new), version + 1);
            self.mem.inner.logical.add(-(old.len as i64));
            (old, version + 1, persisted)
        };
        self.mem.inner.store.release(old.root);
        persisted.map(|()| version)
    }

    /// Removes the entry and releases its DAG.
    pub fn delete(&self, id: SegmentId) -> Result<()> {
        let t = self.table();
        t.check(id)?;
        let (old, persisted) = {
            let _g = t.lock(id);
            let (old, version) = t.read(id)?;
            (old, t.write(id, None, version + 1))
        };
        t.live.fetch_sub(1, Relaxed);
        self.mem.inner.logical.add(-(old.len as i64));
        self.mem.inner.store.release(old.root);
        t.free(id);
        persisted
    }

    /// Deletes many entries and releases their DAGs in one batched release
    /// (see [`Memory::release_segments`]): the lines that die are freed
    /// with one lock acquisition per index shard and batch, not one per line.
    /// Stops at the first id that is not a live entry (the entries before it
    /// are deleted) and returns that error; otherwise returns the first
    /// persistence error, if any.
    pub fn delete_many(&self, ids: &[SegmentId]) -> Result<()> {
        let t = self.table();
        let mut roots = Vec::with_capacity(ids.len());
        let mut done = Vec::with_capacity(ids.len());
        let mut result = Ok(());
        for &id in ids {
            let r = t.check(id).and_then(|()| {
                let _g = t.lock(id);
                let (old, version) = t.read(id)?;
                Ok((old, t.write(id, None, version + 1)))
            });
            match r {
                Ok((old, persisted)) => {
                    t.live.fetch_sub(1, Relaxed);
                    self.mem.inner.logical.add(-(old.len as i64));
                    roots.push(old.root);
                    done.push(id);
                    if result.is_ok() {
                        result = persisted;
                    }
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.mem.inner.store.release_all(&roots);
        for id in done {
            t.free(id);
        }
        result
    }

    /// The ids of every live entry, in order (entry 0 is the directory).
    pub fn ids(&self) -> Vec<SegmentId> {
        let t = self.table();
        let next = t.ids.lock().next;
        (0..next)
            .map(SegmentId)
            .filter(|&id| {
                let _g = t.lock(id);
                t.read(id).is_ok()
            })
            .collect()
    }

    /// Entries in use.
    pub fn len(&self) -> u64 {
        self.table().live()
    }

    /// True when no entry is in use.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
