//! Interning: one line, or runs of lines in batches (hash and prefetch every
//! line, sort the batch by shard, take each shard lock once).

use std::sync::atomic::Ordering::*;

use super::{is_zero, kind_index, line_hash, with_line, Store, WriteCounts, SHARDS};
use crate::error::Result;
use crate::id::{LineId, LineKind};

/// Lines hashed, prefetched and sorted by shard together.
const BATCH: usize = 4096;

/// What happened to one line of a batch.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Status {
    /// Not processed (an error stopped the batch first).
    Pending,
    /// A new line (or the zero line): it consumed the caller's child references.
    Created,
    /// An existing line gained a reference.
    Hit,
}

impl Store {
    /// Interns one full, non-zero line whose hash is `h`. Returns the line and
    /// whether it was created (false: an existing line gained a reference).
    fn intern_hashed(&self, kind: LineKind, h: u64, line: &[u8]) -> Result<(LineId, bool)> {
        let cell = &self.shards[h as usize & (SHARDS - 1)];
        {
            let mut shard = cell.lock.lock();
            if let Some(r) = self.find_or_insert(cell, &mut shard, kind, h, line) {
                return Ok(r);
            }
        }
        self.drain_free_lists();
        let mut shard = cell.lock.lock();
        self.find_or_insert(cell, &mut shard, kind, h, line)
            .ok_or_else(|| self.arena().backing().exhausted(self.capacity()))
    }

    /// Interns one full line (any content); the caller owns the returned
    /// reference.
    pub(crate) fn intern(&self, kind: LineKind, line: &[u8]) -> Result<(LineId, bool)> {
        debug_assert_eq!(line.len(), self.line_size());
        if is_zero(line) {
            self.zero[kind_index(kind)].fetch_add(1, Relaxed);
            return Ok((LineId::ZERO, false));
        }
        self.intern_hashed(kind, line_hash(kind, line), line)
    }

    /// Interns `lines` (a whole number of full lines), appending one id per
    /// line to `out` and one [`Status`] per line to `status`.
    ///
    /// Lines go in batches of [`BATCH`]: hash every line (prefetching its
    /// index slot), sort the batch by shard, and take each shard lock once for
    /// all of its lines. On error every line of this call is released again;
    /// `status` then tells which lines had been done (an interior caller needs
    /// it to give back the child references of the groups that did not
    /// consume theirs).
    fn intern_run(
        &self,
        kind: LineKind,
        lines: &[u8],
        out: &mut Vec<LineId>,
        status: &mut Vec<Status>,
    ) -> Result<()> {
        // Small runs (a write of a few lines) get small batch arrays: the
        // arrays are initialised on every call.
        if lines.len() >> self.shift <= 64 {
            self.intern_batches::<64>(kind, lines, out, status)
        } else {
            self.intern_batches::<BATCH>(kind, lines, out, status)
        }
    }

    fn intern_batches<const B: usize>(
        &self,
        kind: LineKind,
        lines: &[u8],
        out: &mut Vec<LineId>,
        status: &mut Vec<Status>,
    ) -> Result<()> {
        let ls = self.line_size();
        debug_assert_eq!(lines.len() % ls, 0);
        let n = lines.len() >> self.shift;
        let start = out.len();
        out.resize(start + n, LineId::ZERO);
        let sstart = status.len();
        status.resize(sstart + n, Status::Pending);
        let mut hashes = [0u64; B];
        let mut order = [0u16; B];
        let mut counts = [0u16; SHARDS + 1];
        let mut zeros = 0u64;
        let mut base = 0;
        let mut result = Ok(());
        'batches: while base < n {
            let m = B.min(n - base);
            let group = &lines[base * ls..(base + m) * ls];
            counts.fill(0);
            for (j, line) in group.chunks_exact(ls).enumerate() {
                if is_zero(line) {
                    zeros += 1;
                    status[sstart + base + j] = Status::Created;
                    hashes[j] = u64::MAX; // no shard: sorted past the end
                    counts[SHARDS] += 1;
                } else {
                    let h = line_hash(kind, line);
                    self.prefetch_index(h);
                    hashes[j] = h;
                    counts[h as usize & (SHARDS - 1)] += 1;
                }
            }
            // Counting sort of the batch by shard (zero lines last).
            let mut at = 0u16;
            for c in counts.iter_mut() {
                let k = *c;
                *c = at;
                at += k;
            }
            for j in 0..m {
                let sh = if hashes[j] == u64::MAX && is_zero(&group[j * ls..(j + 1) * ls]) {
                    SHARDS
                } else {
                    hashes[j] as usize & (SHARDS - 1)
                };
                order[counts[sh] as usize] = j as u16;
                counts[sh] += 1;
            }
            let nonzero = m - (counts[SHARDS] - counts[SHARDS - 1]) as usize;
            // Start the walk at a shard picked by the batch's own content, so
            // that threads interning different data at once do not queue on
            // the same locks in lockstep, and the same input always gives the
            // same slot allocation order (footprint figures stay
            // deterministic).
            let rot = (hashes[0] ^ hashes[m - 1].rotate_left(17)) as usize & (SHARDS - 1);
            let i0 = if rot == 0 {
                0
            } else {
                counts[rot - 1] as usize
            };
            // The walk order, rotated to start at `i0` (no division per line).
            let at = |k: usize| {
                let i = i0 + k;
                order[if i >= nonzero { i - nonzero } else { i }] as usize
            };
            let mut k = 0;
            while k < nonzero {
                let sh = hashes[at(k)] as usize & (SHARDS - 1);
                let cell = &self.shards[sh];
                let mut shard = cell.lock.lock();
                let mut run_end = k;
                while run_end < nonzero && hashes[at(run_end)] as usize & (SHARDS - 1) == sh {
                    run_end += 1;
                }
                self.prefetch_run(&shard, (k..run_end).map(|i| hashes[at(i)]));
                while k < nonzero && hashes[at(k)] as usize & (SHARDS - 1) == sh {
                    let j = at(k);
                    let line = &group[j * ls..(j + 1) * ls];
                    let r = match self.find_or_insert(cell, &mut shard, kind, hashes[j], line) {
                        Some(r) => Ok(r),
                        None => {
                            drop(shard);
                            let r = self.intern_hashed(kind, hashes[j], line);
                            shard = cell.lock.lock();
                            r
                        }
                    };
                    match r {
                        Ok((id, created)) => {
                            out[start + base + j] = id;
                            status[sstart + base + j] = if created {
                                Status::Created
                            } else {
                                Status::Hit
                            };
                        }
                        Err(e) => {
                            result = Err(e);
                            break 'batches;
                        }
                    }
                    k += 1;
                }
            }
            base += m;
        }
        self.zero[kind_index(kind)].fetch_add(zeros, Relaxed);
        if result.is_err() {
            for id in out.drain(start..) {
                self.release(id);
            }
        }
        result
    }

    /// Interns `data` as leaf lines (the last one zero-padded), appending one
    /// id per line to `out`. On error nothing of this call stays referenced.
    pub(crate) fn intern_leaves(
        &self,
        data: &[u8],
        out: &mut Vec<LineId>,
        counts: &mut WriteCounts,
    ) -> Result<()> {
        let ls = self.line_size();
        let full = data.len() / ls * ls;
        let start = out.len();
        let mut status = Vec::new();
        self.intern_run(LineKind::Leaf, &data[..full], out, &mut status)?;
        for (id, st) in out[start..].iter().zip(&status) {
            counts.add(*id, *st == Status::Created);
        }
        if full < data.len() {
            let interned = with_line(ls, |buf| {
                buf[..data.len() - full].copy_from_slice(&data[full..]);
                self.intern(LineKind::Leaf, buf)
            });
            match interned {
                Ok((id, created)) => {
                    counts.add(id, created);
                    out.push(id)
                }
                Err(e) => {
                    for id in out.drain(start..) {
                        self.release(id);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Interns one level of interior lines over `children` (grouped `fanout`
    /// at a time, the last group zero-padded). Consumes the caller's reference
    /// to every child, on success and on error alike.
    pub(crate) fn intern_interior_level(
        &self,
        children: &[LineId],
        out: &mut Vec<LineId>,
    ) -> Result<()> {
        let f = self.fanout();
        let groups = children.len().div_ceil(f);
        let mut bytes = vec![0u8; groups << self.shift];
        for (b, c) in bytes.chunks_exact_mut(4).zip(children) {
            b.copy_from_slice(&c.0.to_le_bytes());
        }
        let mut status = Vec::with_capacity(groups);
        let res = self.intern_run(LineKind::Interior, &bytes, out, &mut status);
        // Groups that found an existing line, or were never done, still own
        // their child references: give them back.
        for (g, st) in status.iter().enumerate() {
            if *st != Status::Created {
                self.release_all(&children[g * f..((g + 1) * f).min(children.len())]);
            }
        }
        res
    }

    /// Interns one interior line over `children` (at most `fanout`, the rest
    /// zero). Consumes the caller's reference to every child.
    pub(crate) fn intern_interior(&self, children: &[LineId]) -> Result<LineId> {
        debug_assert!(children.len() <= self.fanout());
        let interned = with_line(self.line_size(), |buf| {
            for (b, c) in buf.chunks_exact_mut(4).zip(children) {
                b.copy_from_slice(&c.0.to_le_bytes());
            }
            self.intern(LineKind::Interior, buf)
        });
        match interned {
            Ok((id, true)) => Ok(id),
            Ok((id, false)) => {
                self.release_all(children);
                Ok(id)
            }
            Err(e) => {
                self.release_all(children);
                Err(e)
            }
        }
    }
}
