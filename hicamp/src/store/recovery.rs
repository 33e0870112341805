//! Recovery: the walk of every DAG reachable from a file's committed map
//! entries, and the rebuild of the derived state (reference counts, index,
//! free lists, counters) from what the walk found.
//!
//! Only the map entries are the truth; everything else is rebuilt here on
//! every open, which reclaims the lines a crash orphaned and needs no log.

use std::sync::atomic::Ordering::*;

use super::counts::{encode_count, kind_bit, COUNT_MASK};
use super::line_of;
use super::{children_of, kind_index, line_hash, Store, SHARDS};
use crate::directory::{self, NamedSegment, DIRECTORY};
use crate::error::{Error, Result};
use crate::id::{LineId, LineKind, SegmentId};
use crate::memory::Damage;
use crate::persist::{read_entry, RootEntry, LIVE_BIT};
use crate::region::{Arena, AtomicU64Array};
use crate::shape::{height_for, leaves_for, MAX_HEIGHT, MAX_SEGMENT_LEN};

/// The state an entry was found in (one per map entry below the reserved
/// mark).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryState {
    /// Never written.
    Never,
    /// Its current slot (live or a tombstone).
    Current { slot: u8, words: [u64; 4] },
    /// Unreadable, or its DAG does not hold together: a salvaging open
    /// replaces it with a tombstone.
    Lost,
}

/// What a walk of every committed DAG found.
#[derive(Debug, Default)]
pub(crate) struct Analysis {
    /// Live entries whose DAGs hold together (index, root, height, len).
    pub entries: Vec<RootEntry>,
    /// Every entry below the reserved mark.
    pub states: Vec<EntryState>,
    /// Slots to rewrite with their corrected words (entry, slot, words).
    pub repairs: Vec<(u32, u8, [u64; 4])>,
    /// Unreadable slots beside a readable current one, to clear (a torn
    /// write, or damage that was reported).
    pub clear: Vec<(u32, u8)>,
    /// The directory's bindings (as far as it could be read), without the
    /// names of lost entries; `rewrite_directory` when that differs from
    /// what the file holds.
    pub names: Vec<NamedSegment>,
    pub rewrite_directory: bool,
    /// What is damaged.
    pub damage: Damage,
    /// References to each slot from committed roots and interior lines.
    pub counts: Vec<u32>,
    /// Height of each reached line, `UNREACHED` otherwise.
    pub heights: Vec<u8>,
    /// Lines reached (slot 0, the zero line, never is).
    pub live: u64,
    pub max_id: u32,
}

pub(crate) const UNREACHED: u8 = u8::MAX;

/// The walk's state, with an undo log so that an entry whose DAG turns out
/// broken leaves no trace.
struct Walker<'a> {
    arena: &'a Arena,
    slots: usize,
    counts: Vec<u32>,
    heights: Vec<u8>,
    live: u64,
    undo: Vec<(u32, bool)>,
}

impl Walker<'_> {
    /// Counts the references of the DAG at `root`; on a broken DAG undoes
    /// them and says why.
    fn walk(&mut self, root: u32, height: u32) -> std::result::Result<(), String> {
        self.undo.clear();
        let r = self.walk_inner(root, height);
        if r.is_err() {
            while let Some((id, first)) = self.undo.pop() {
                let i = id as usize;
                self.counts[i] -= 1;
                if first {
                    self.heights[i] = UNREACHED;
                    self.live -= 1;
                }
            }
        }
        r
    }

    fn walk_inner(&mut self, root: u32, height: u32) -> std::result::Result<(), String> {
        let mut stack = vec![(root, height)];
        while let Some((id, h)) = stack.pop() {
            if id == 0 {
                continue;
            }
            let i = id as usize;
            if i >= self.slots {
                return Err(format!("line L{id} is out of range"));
            }
            let first = self.heights[i] == UNREACHED;
            if first {
                self.heights[i] = h as u8;
                self.live += 1;
            } else if u32::from(self.heights[i]) != h {
                return Err(format!(
                    "line L{id} is reached at heights {} and {h}",
                    self.heights[i]
                ));
            }
            self.counts[i] = self.counts[i].saturating_add(1);
            self.undo.push((id, first));
            if first && h > 0 {
                // SAFETY: `id < slots` (checked above); the memory is not
                // shared yet (open) or the mapping is fsck's own copy, so
                // nothing writes the line.
                for c in unsafe { children_of(self.arena, id) } {
                    stack.push((c, h - 1));
                }
            }
        }
        Ok(())
    }
}

/// Streams a segment's bytes (from a DAG not yet trusted: ids are checked)
/// into `f`; an error for a DAG that does not hold together.
pub(crate) fn for_each_chunk(
    arena: &Arena,
    slots: usize,
    e: &RootEntry,
    fanout_shift: u32,
    mut f: impl FnMut(&[u8]),
) -> std::result::Result<(), String> {
    static ZEROS: [u8; 4096] = [0; 4096];
    let ls = 1usize << (fanout_shift + 2);
    let mut done = 0u64;
    let mut stack = vec![(e.root.0, e.height.min(MAX_HEIGHT as u32))];
    while let Some((id, h)) = stack.pop() {
        if done >= e.len {
            break;
        }
        let left = e.len - done;
        if id == 0 {
            let span = (ls as u64)
                .checked_shl(fanout_shift * h)
                .unwrap_or(u64::MAX)
                .min(left);
            let mut n = span;
            while n > 0 {
                let k = n.min(ZEROS.len() as u64) as usize;
                f(&ZEROS[..k]);
                n -= k as u64;
            }
            done += span;
            continue;
        }
        if id as usize >= slots {
            return Err(format!("line L{id} is out of range"));
        }
        // SAFETY: `id < slots`; single-threaded reader (see `Walker`).
        let line = unsafe { line_of(arena, id) };
        if h == 0 {
            let n = (ls as u64).min(left) as usize;
            f(&line[..n]);
            done += n as u64;
        } else {
            let kids: Vec<u32> = line
                .as_chunks::<4>()
                .0
                .iter()
                .map(|b| u32::from_le_bytes(*b))
                .collect();
            stack.extend(kids.into_iter().rev().map(|c| (c, h - 1)));
        }
    }
    if done < e.len {
        return Err("shorter than its length".into());
    }
    Ok(())
}

/// Walks every DAG reachable from a committed entry and counts references.
/// Checks that ids are in range, heights agree with lengths, and no line is
/// reached at two heights (which also rules out cycles); repairs map slots
/// with one flipped bit; verifies every named segment's BLAKE3 digest. Reads
/// only: what it decides to repair or drop is in the result.
///
/// An entry with no readable slot, or whose DAG does not hold together, is
/// lost: it is reported (with its name), and dropped from the walk so that
/// every other entry survives. Named entries whose digests verify are walked
/// first, so a damaged entry that collides with one of them is the one
/// dropped. In `strict` mode any damage is an error instead.
///
/// Only the reserved part of the file is read: map entries `0..entries` and
/// line slots `0..slots` (nothing beyond was ever written), so the walk's
/// structures are sized by what the file holds, not by its capacity.
#[allow(clippy::too_many_arguments)]
pub(crate) fn analyze(
    path: &str,
    arena: &Arena,
    map_words: &AtomicU64Array,
    entries: u32,
    slots: usize,
    fanout_shift: u32,
    was_clean: bool,
    strict: bool,
) -> Result<Analysis> {
    let slots = slots.max(1).min(arena.slots());
    let words = map_words.as_slice();
    let line_shift = fanout_shift + 2;
    let mut a = Analysis::default();
    let mut candidates: Vec<RootEntry> = Vec::new();
    for index in 0..entries {
        let e = read_entry(words, index);
        for s in 0..2u8 {
            if let Some(w) = e.repaired[s as usize] {
                a.repairs.push((index, s, w));
                a.damage.slots_repaired.push((SegmentId(index), s));
            }
        }
        let state = match e.current {
            None if e.invalid.iter().any(|x| *x) => {
                a.damage
                    .lost
                    .push((SegmentId(index), "no readable map slot".into()));
                EntryState::Lost
            }
            None => EntryState::Never,
            Some((slot, w)) => {
                for s in 0..2u8 {
                    if e.invalid[s as usize] {
                        a.clear.push((index, s));
                    }
                }
                if e.invalid.iter().any(|x| *x) {
                    if was_clean {
                        a.damage.slots_damaged.push((SegmentId(index), w[2]));
                    } else {
                        a.damage.torn_writes.push((SegmentId(index), w[2]));
                    }
                }
                EntryState::Current { slot, words: w }
            }
        };
        a.states.push(state);
        let EntryState::Current { slot, words: w } = state else {
            continue;
        };
        if w[0] & LIVE_BIT == 0 {
            continue;
        }
        let (root, height, len) = (w[0] as u32, ((w[0] >> 32) & 0xff) as u32, w[1]);
        let bad = if len > MAX_SEGMENT_LEN || height as usize > MAX_HEIGHT {
            Some(format!("length {len} or height {height} out of range"))
        } else if height != height_for(leaves_for(len, line_shift), fanout_shift) {
            Some(format!("height {height} does not fit length {len}"))
        } else if root as usize >= slots {
            Some(format!("root L{root} out of range"))
        } else {
            None
        };
        if let Some(why) = bad {
            a.damage.lost.push((SegmentId(index), why));
            a.states[index as usize] = EntryState::Lost;
            continue;
        }
        candidates.push(RootEntry {
            index,
            root: LineId(root),
            height,
            len,
            version: w[2],
            slot,
        });
    }
    let mut w = Walker {
        arena,
        slots,
        counts: vec![0; slots],
        heights: vec![UNREACHED; slots],
        live: 0,
        undo: Vec::new(),
    };
    let mut walked = vec![false; candidates.len()];
    let lose = |a: &mut Analysis, e: &RootEntry, why: String| {
        a.damage.lost.push((SegmentId(e.index), why));
        a.states[e.index as usize] = EntryState::Lost;
    };
    let by_index = |id: u32| candidates.binary_search_by_key(&id, |e| e.index).ok();
    // The directory first.
    if let Some(i) = by_index(DIRECTORY.0) {
        walked[i] = true;
        let e = candidates[i];
        let mut bytes = Vec::new();
        let r = w.walk(e.root.0, e.height).and_then(|()| {
            for_each_chunk(arena, slots, &e, fanout_shift, |c| {
                bytes.extend_from_slice(c)
            })
        });
        match r {
            Err(why) => {
                lose(&mut a, &e, why);
                a.damage.directory = Some("map entry 0 (the directory of names) is lost".into());
                a.rewrite_directory = true;
            }
            Ok(()) => {
                a.entries.push(e);
                let (list, err) = directory::parse_prefix(&bytes);
                if let Some(why) = err {
                    a.damage.directory = Some(why);
                    a.rewrite_directory = true;
                }
                a.names = list;
            }
        }
    } else {
        a.damage.directory = Some("map entry 0 (the directory of names) is missing".into());
        a.rewrite_directory = true;
    }
    // Named entries: digests, then the ones that verify are walked first.
    let mut order: Vec<usize> = Vec::new();
    let mut keep = Vec::new();
    for ns in std::mem::take(&mut a.names) {
        let Some(i) = by_index(ns.id.0).filter(|_| ns.id != DIRECTORY) else {
            a.damage.lost_names.push(ns.name);
            a.rewrite_directory = true;
            continue;
        };
        let e = candidates[i];
        if e.version != ns.version {
            // Written since it was bound (through the map or a window): the
            // digest is of an older version; the entry is walked like any
            // other.
            a.damage.changed_since_bind += 1;
            keep.push(ns);
            continue;
        }
        let mut h = blake3::Hasher::new();
        match for_each_chunk(arena, slots, &e, fanout_shift, |c| {
            h.update(c);
        }) {
            Err(why) => {
                if !std::mem::replace(&mut walked[i], true) {
                    lose(&mut a, &e, why);
                }
                a.damage.lost_names.push(ns.name);
                a.rewrite_directory = true;
                continue;
            }
            Ok(()) if *h.finalize().as_bytes() == ns.digest => {
                a.damage.digests_verified += 1;
                order.push(i);
            }
            Ok(()) => a.damage.digest_mismatches.push(ns.name.clone()),
        }
        keep.push(ns);
    }
    a.names = keep;
    order.extend(0..candidates.len());
    for i in order {
        if std::mem::replace(&mut walked[i], true) {
            continue;
        }
        let e = candidates[i];
        match w.walk(e.root.0, e.height) {
            Ok(()) => a.entries.push(e),
            Err(why) => {
                lose(&mut a, &e, why);
                if let Some(k) = a.names.iter().position(|n| n.id.0 == e.index) {
                    let n = a.names.remove(k);
                    a.damage.lost_names.push(n.name);
                    a.rewrite_directory = true;
                }
            }
        }
    }
    a.entries.sort_by_key(|e| e.index);
    a.damage.lost.sort_by_key(|l| l.0);
    a.damage.named = a.names.len() as u64;
    a.counts = w.counts;
    a.heights = w.heights;
    a.live = w.live;
    a.max_id = a.heights.iter().rposition(|h| *h != UNREACHED).unwrap_or(0) as u32;
    if strict && a.damage.is_corrupt() {
        return Err(Error::Corrupt {
            path: path.to_string(),
            what: format!("strict open refuses a damaged file: {}", a.damage.summary()),
        });
    }
    Ok(a)
}

/// What a rebuild found and repaired.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RebuildReport {
    /// Unreachable slots that held a count: reclaimed.
    pub orphans: u64,
    /// Reachable lines whose stored count was wrong: repaired.
    pub repaired: u64,
    /// Reachable lines equal to another one (kept out of the index).
    pub duplicates: u64,
}

impl Store {
    /// Rebuilds the derived state (reference counts, index, free lists,
    /// counters) from a walk of the committed roots, in one pass over the
    /// slots. Runs before the memory is shared.
    pub(crate) fn rebuild(&self, a: &Analysis) -> RebuildReport {
        let meta = self.meta.as_slice();
        let mut r = RebuildReport::default();
        let high = u64::from(a.max_id) + 1;
        // Size every shard's table for its share of the live lines up front, so
        // that the rebuild never rehashes.
        let per_shard = super::Table::buckets_for(a.live as usize / SHARDS + 16);
        for cell in self.shards.iter() {
            let mut shard = cell.lock.lock();
            debug_assert_eq!(shard.table.len(), 0, "rebuild runs on a fresh store");
            shard.table.rebuild(per_shard, &[], &[]);
            cell.set_hint(&shard.table);
        }
        let mut free = Vec::new();
        // Slots past the walk's (the reserved ones) were never written.
        for (id, m) in meta.iter().enumerate().take(a.heights.len()).skip(1) {
            let h = a.heights[id];
            let stored = m.load(Relaxed);
            if h == UNREACHED {
                if stored != 0 {
                    r.orphans += 1;
                    m.store(0, Relaxed);
                }
                if (id as u64) < high {
                    free.push(id as u32);
                }
                continue;
            }
            let kind = if h > 0 {
                LineKind::Interior
            } else {
                LineKind::Leaf
            };
            // The byte says `min(count, ESC)` (the extras are not in the
            // file: they are rebuilt here, with the counts).
            if stored & COUNT_MASK != encode_count(u64::from(a.counts[id])) {
                r.repaired += 1;
            }
            self.set_count(id as u32, kind_bit(kind), u64::from(a.counts[id]));
            let line = self.line(LineId(id as u32));
            let hash = line_hash(kind, line);
            let cell = &self.shards[hash as usize & (SHARDS - 1)];
            let mut shard = cell.lock.lock();
            shard.live[kind_index(kind)] += 1;
            shard.created[kind_index(kind)] += 1;
            if !self.index_insert_existing(cell, &mut shard, kind, hash, id as u32) {
                r.duplicates += 1;
            }
        }
        self.free_slots(free.iter().copied());
        self.free_count.store(free.len() as u64, Relaxed);
        self.next_fresh.store(high, Relaxed);
        r
    }
}

thread_local! {
    static RESERVE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with this thread allowed to take the line reserve (unbinding in
/// a full memory: see `Store::keep_reserve`). The reserve is a list of free
/// slots (their file space allocated) that ordinary allocations never see,
/// kept as large as the directory of names; an unbind's new directory is
/// smaller, so it always finds its lines, and deleting the entry then frees
/// lines.
pub(crate) fn using_reserve<R>(f: impl FnOnce() -> R) -> R {
    let was = RESERVE.with(|c| c.replace(true));
    let r = f();
    RESERVE.with(|c| c.set(was));
    r
}

impl Store {
    /// Takes up to `chunk` fresh slots (`start..end`) from the bump counter,
    /// after making sure the file has space for them (their arena and count
    /// pages are allocated): a slot is never handed out whose page the file
    /// system could refuse. `None` when the capacity is used up, or when the
    /// file system is full (the backing then reports `NoSpace`).
    ///
    /// The reserve: ordinary allocations leave the backing's `line_reserve`
    /// fresh slots, with their file space already allocated, ahead of the
    /// bump counter; only a thread in [`using_reserve`] takes them. So an
    /// unbind can always build its new directory in a full memory (or on a
    /// full file system), and then frees lines.
    /// Keeps `n` free line slots set aside for [`using_reserve`] (taken from
    /// the free lists or the fresh range, or given back to the free bitmap);
    /// an error when they cannot all be found (the memory is too full), in
    /// which case the caller must not make the directory that needs them.
    pub(crate) fn keep_reserve(&self, n: u64) -> Result<()> {
        let backing = self.arena.backing();
        {
            let mut list = backing.line_reserve();
            while list.len() as u64 > n {
                let id = list.pop().expect("non-empty");
                self.free_slots([id]);
                self.free_count.fetch_add(1, Relaxed);
            }
            if list.len() as u64 == n {
                return Ok(());
            }
        }
        let mut drained = false;
        loop {
            if backing.line_reserve().len() as u64 >= n {
                return Ok(());
            }
            // Ordinary slots only (never the reserve itself).
            let was = RESERVE.with(|c| c.replace(false));
            let got = {
                let mut shard = self.shards[0].lock.lock();
                self.alloc_slot(&mut shard)
            };
            RESERVE.with(|c| c.set(was));
            match got {
                Some(id) => backing.line_reserve().push(id),
                None if !drained => {
                    self.drain_free_lists();
                    drained = true;
                }
                None => return Err(backing.exhausted(self.capacity())),
            }
        }
    }

    /// Takes up to `chunk` fresh slots (`start..end`) from the bump counter,
    /// after making sure the file has space for them (their arena and count
    /// pages are allocated): a slot is never handed out whose page the file
    /// system could refuse. `None` when the capacity is used up, or when the
    /// file system is full (the backing then reports `NoSpace`). Then a
    /// thread in [`using_reserve`] gets one slot of the reserve.
    pub(super) fn take_fresh(&self, chunk: u64) -> Option<(u64, u64)> {
        let backing = self.arena.backing();
        let mut start = self.next_fresh.load(Relaxed);
        loop {
            if start >= self.slots {
                break;
            }
            let mut end = (start + chunk).min(self.slots);
            if backing.reserve_slots(end).is_err() {
                end = start + 1;
                if backing.reserve_slots(end).is_err() {
                    break;
                }
            }
            match self
                .next_fresh
                .compare_exchange_weak(start, end, Relaxed, Relaxed)
            {
                Ok(_) => return Some((start, end)),
                Err(s) => start = s,
            }
        }
        if RESERVE.with(|c| c.get()) {
            let id = u64::from(backing.line_reserve().pop()?);
            return Some((id, id + 1));
        }
        None
    }
}
