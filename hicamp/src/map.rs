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
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::{Mutex, MutexGuard};

use crate::dag::{self, Tree};
use crate::error::{Error, Result};
use crate::id::{LineId, SegmentId};
use crate::memory::Memory;
use crate::region::AtomicU64Array;
use crate::segment::Segment;

const WORDS: usize = 3;
const LIVE: u64 = 1 << 63;
const STRIPES: usize = 256;
/// Bytes of one entry in the mapped array.
pub(crate) const ENTRY_BYTES: u64 = (WORDS * 8) as u64;

struct Ids {
    next: u32,
    free: Vec<u32>,
}

pub(crate) struct MapTable {
    words: AtomicU64Array,
    capacity: u32,
    stripes: Box<[Mutex<()>]>,
    ids: Mutex<Ids>,
    live: AtomicU64,
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
    pub(crate) fn new(capacity: u32) -> Result<MapTable> {
        Ok(MapTable {
            words: AtomicU64Array::new(capacity as usize * WORDS)?,
            capacity,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            ids: Mutex::new(Ids {
                next: 0,
                free: Vec::new(),
            }),
            live: AtomicU64::new(0),
        })
    }

    fn slot(&self, id: SegmentId) -> Result<&[AtomicU64]> {
        if id.0 >= self.capacity {
            return Err(Error::NoSuchSegment(id));
        }
        let i = id.0 as usize * WORDS;
        Ok(&self.words.as_slice()[i..i + WORDS])
    }

    fn lock(&self, id: SegmentId) -> MutexGuard<'_, ()> {
        self.stripes[id.0 as usize % STRIPES].lock()
    }

    /// Reads a live entry; the caller holds its stripe lock.
    fn read(&self, id: SegmentId) -> Result<(Tree, u64)> {
        let w = self.slot(id)?;
        let w0 = w[0].load(Relaxed);
        if w0 & LIVE == 0 {
            return Err(Error::NoSuchSegment(id));
        }
        let tree = Tree {
            root: LineId(w0 as u32),
            height: ((w0 >> 32) & 0xff) as u32,
            len: w[1].load(Relaxed),
        };
        Ok((tree, w[2].load(Relaxed)))
    }

    /// Writes an entry; the caller holds its stripe lock.
    fn write(&self, id: SegmentId, tree: Tree, version: u64) {
        let w = &self.words.as_slice()[id.0 as usize * WORDS..][..WORDS];
        w[0].store(
            LIVE | (u64::from(tree.height) << 32) | u64::from(tree.root.0),
            Relaxed,
        );
        w[1].store(tree.len, Relaxed);
        w[2].store(version, Relaxed);
    }

    fn alloc(&self) -> Result<SegmentId> {
        let mut ids = self.ids.lock();
        let id = match ids.free.pop() {
            Some(id) => id,
            None if ids.next < self.capacity => {
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
    /// mark, plus the free list).
    pub(crate) fn bytes(&self) -> u64 {
        let ids = self.ids.lock();
        u64::from(ids.next) * ENTRY_BYTES
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

    /// Binds a segment to a new id (the handle's reference moves into the
    /// entry).
    pub fn insert(&self, seg: Segment) -> Result<SegmentId> {
        self.check_mem(&seg)?;
        let t = self.table();
        let id = t.alloc()?;
        let (_, tree) = seg.into_tree();
        let _g = t.lock(id);
        // A reused id continues the version sequence of its previous life, so
        // a stale committer can never match it.
        let version = t.slot(id)?[2].load(Relaxed);
        t.write(id, tree, version);
        t.live.fetch_add(1, Relaxed);
        Ok(id)
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
            ids.next += count;
            ids.next - count
        };
        for i in start..start + count {
            let _g = t.lock(SegmentId(i));
            t.write(SegmentId(i), Tree::default(), 0);
        }
        t.live.fetch_add(u64::from(count), Relaxed);
        Ok(SegmentId(start)..SegmentId(start + count))
    }

    /// The entry of `id`.
    pub fn entry(&self, id: SegmentId) -> Result<MapEntry> {
        let t = self.table();
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
        let store = &self.mem.inner.store;
        let (old, version) = {
            let _g = t.lock(id);
            let (old, version) = t.read(id)?;
            let new = f(&old)?;
            t.write(id, new, version + 1);
            self.mem.inner.logical.add(new.len as i64 - old.len as i64);
            (old, version + 1)
        };
        store.release(old.root);
        Ok(version)
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
    /// Returns the new version.
    pub fn commit(&self, id: SegmentId, expected: u64, seg: Segment) -> Result<u64> {
        self.check_mem(&seg)?;
        let t = self.table();
        let old = {
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
            t.write(id, new, version + 1);
            self.mem.inner.logical.add(-(old.len as i64));
            old
        };
        self.mem.inner.store.release(old.root);
        Ok(expected + 1)
    }

    /// Removes the entry and releases its DAG.
    pub fn delete(&self, id: SegmentId) -> Result<()> {
        let t = self.table();
        let old = {
            let _g = t.lock(id);
            let (old, _) = t.read(id)?;
            let w = t.slot(id)?;
            w[0].store(0, Relaxed);
            w[2].fetch_add(1, Relaxed);
            old
        };
        t.live.fetch_sub(1, Relaxed);
        self.mem.inner.logical.add(-(old.len as i64));
        self.mem.inner.store.release(old.root);
        t.free(id);
        Ok(())
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
