//! `fsck`: a read-only consistency check of a memory file.
//!
//! Checks that every stored reference count equals the references reachable
//! from the committed roots (a count byte holds `min(count, 63)`; the rest of
//! a larger count, its extra, is in the extras section a clean close writes:
//! byte + extra must be exact), that stored kinds match the lines' places in the
//! DAGs, that every DAG is canonical (no stored all-zero line, no two equal
//! lines, zeros past each segment's end, heights that fit lengths), that the
//! directory of names parses and every named segment's BLAKE3 digest
//! verifies, and counts orphans (slots holding a count that nothing reaches).
//! A file that was not closed cleanly is reported as such: its counts still
//! include references of the process that died, which the next open repairs.

use std::collections::HashMap;
use std::path::Path;

use crate::error::Result;
use crate::memory::Damage;
use crate::persist;
use crate::shape::leaves_for;
use crate::store::{self, encode_count, is_zero, line_hash, line_of, INTERIOR_BIT, UNREACHED};
use crate::LineKind;

const MAX_MESSAGES: usize = 100;

/// What [`fsck`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsckReport {
    /// The file.
    pub path: String,
    /// The file was closed cleanly.
    pub clean_close: bool,
    /// Line size of the file.
    pub line_size: u64,
    /// Live map entries.
    pub entries: u64,
    /// Logical bytes of the live entries.
    pub logical_bytes: u64,
    /// Reachable leaf lines.
    pub leaf_lines: u64,
    /// Reachable interior lines.
    pub interior_lines: u64,
    /// Unreachable slots with a non-zero stored count.
    pub orphans: u64,
    /// Reachable lines whose stored count differs from the reachable references.
    pub refcount_mismatches: u64,
    /// Reachable lines whose stored kind does not match their height.
    pub kind_mismatches: u64,
    /// Stored all-zero lines, duplicate lines and bad right edges.
    pub non_canonical: u64,
    /// Named segments.
    pub named: u64,
    /// Named segments whose digest verified.
    pub digests_verified: u64,
    /// Bytes of the file's reserved ranges (header, and the arena, count and
    /// map pages in use): all that fsck reads.
    pub reserved_bytes: u64,
    /// Reserved bytes the file system holds no blocks for (a sparse copy;
    /// the next open allocates them).
    pub unallocated_bytes: u64,
    /// What the open-time checks find (map slots, lost entries, digests,
    /// the directory); each finding is also one of `problems`.
    pub damage: Damage,
    /// Every problem found (the first 100 are described in `problems`).
    pub problem_count: u64,
    /// Descriptions of the first problems.
    pub problems: Vec<String>,
}

impl FsckReport {
    /// True when nothing is wrong.
    pub fn is_consistent(&self) -> bool {
        self.problem_count == 0
    }

    fn problem(&mut self, what: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_MESSAGES {
            self.problems.push(what);
        }
    }
}

/// Checks the memory file at `path` without changing it. Errors are for files
/// that cannot be examined at all (missing, not a memory file, truncated
/// header, in use by a writer); everything else is reported.
pub fn fsck(path: impl AsRef<Path>) -> Result<FsckReport> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let (backing, checked) = persist::read_file(path)?;
    let (config, layout, reserved) = (checked.config, checked.layout, checked.reserved);
    let mut r = FsckReport {
        path: name.clone(),
        clean_close: persist::read_clean(&backing),
        line_size: config.line_size as u64,
        reserved_bytes: reserved.bytes(&layout, config.line_size as u64),
        unallocated_bytes: checked.unallocated,
        ..FsckReport::default()
    };
    // The extras of the counts above 63 (written by a clean close only).
    let extras: HashMap<u32, u32> = if r.clean_close {
        let page = backing.read_bytes(0, 4096);
        match persist::read_extras(&checked.file, &page, &layout) {
            Ok(pairs) => pairs.into_iter().collect(),
            Err(what) => {
                r.problem(what);
                HashMap::new()
            }
        }
    } else {
        HashMap::new()
    };
    let mut extras_seen = 0usize;
    drop(checked.file);
    if checked.header_restored {
        r.damage.header_restored = true;
        r.problem(
            "the header failed its checks: its copy is whole (the next open restores it)".into(),
        );
    }
    if r.unallocated_bytes > 0 {
        r.problem(format!(
            "sparse: {} of the {} reserved bytes have no blocks on the file system (a sparse copy?); the next open allocates them, or fails with \"no space\"",
            r.unallocated_bytes, r.reserved_bytes
        ));
    }
    if !r.clean_close {
        r.problem("not closed cleanly: stored counts still hold the references of the process that died (the next open recovers)".into());
    }
    let arena = backing.arena(
        layout.arena_off as usize,
        config.line_size,
        layout.slots as usize,
    );
    let meta = backing.u8s(layout.meta_off as usize, layout.slots as usize);
    let words = backing.u64s(
        layout.map_off as usize,
        config.map_capacity as usize * persist::ENTRY_WORDS,
    );
    let fshift = config.line_size.trailing_zeros() - 2;
    let slots = reserved.slots as usize;
    let a = match store::analyze(
        &name,
        &arena,
        &words,
        reserved.entries as u32,
        slots,
        fshift,
        r.clean_close,
        false,
    ) {
        Ok(a) => a,
        Err(e) => {
            r.problem(e.to_string());
            return Ok(r);
        }
    };
    for p in a.damage.problems() {
        r.problem(p);
    }
    r.named = a.damage.named;
    r.digests_verified = a.damage.digests_verified;
    r.damage = Damage {
        header_restored: r.damage.header_restored,
        ..a.damage.clone()
    };
    r.entries = a.entries.len() as u64;
    r.logical_bytes = a.entries.iter().map(|e| e.len).sum();

    // Counts, kinds and orphans.
    let mut by_content: HashMap<(bool, u64), Vec<u32>> = HashMap::new();
    for id in 1..slots.min(layout.slots as usize) {
        let stored = meta.as_slice()[id].load(std::sync::atomic::Ordering::Relaxed);
        let count = stored & !INTERIOR_BIT;
        let h = a.heights[id];
        if h == UNREACHED {
            if count != 0 {
                r.orphans += 1;
            }
            continue;
        }
        let interior = h > 0;
        if interior {
            r.interior_lines += 1;
        } else {
            r.leaf_lines += 1;
        }
        let extra = extras.get(&(id as u32)).copied();
        extras_seen += usize::from(extra.is_some());
        let walked = u64::from(a.counts[id]);
        let byte_ok = count == encode_count(walked);
        // Only a clean close writes the extras: after a crash the bytes are
        // compared alone.
        let extra_ok = !r.clean_close
            || count != store::ESC
            || u64::from(extra.unwrap_or(0)) == walked.saturating_sub(u64::from(store::ESC))
            || (extra == Some(u32::MAX) && walked >= u64::from(store::ESC) + u64::from(u32::MAX));
        if !byte_ok || !extra_ok || (count != store::ESC && extra.is_some()) {
            r.refcount_mismatches += 1;
            if r.clean_close {
                r.problem(match extra {
                    Some(e) => format!(
                        "L{id}: stored count {count} + extra {e}, {walked} references reach it"
                    ),
                    None => format!("L{id}: stored count {count}, {walked} references reach it"),
                });
            }
        }
        if (stored & INTERIOR_BIT != 0) != interior {
            r.kind_mismatches += 1;
            r.problem(format!("L{id}: stored kind does not match height {h}"));
        }
        // SAFETY: `id < slots`; fsck's own mapping (module docs).
        let line = unsafe { line_of(&arena, id as u32) };
        if is_zero(line) {
            r.non_canonical += 1;
            r.problem(format!(
                "L{id}: an all-zero line is stored (must be line 0)"
            ));
        }
        let kind = if interior {
            LineKind::Interior
        } else {
            LineKind::Leaf
        };
        by_content
            .entry((interior, line_hash(kind, line)))
            .or_default()
            .push(id as u32);
    }
    if extras_seen < extras.len() {
        r.problem(format!(
            "{} count extras name lines that nothing reaches",
            extras.len() - extras_seen
        ));
    }
    if r.orphans > 0 {
        r.problem(format!(
            "{} orphaned lines (counted but unreachable)",
            r.orphans
        ));
    }
    if !r.clean_close && r.refcount_mismatches > 0 {
        r.problem(format!(
            "{} stored counts differ from reachable references",
            r.refcount_mismatches
        ));
    }
    for ids in by_content.values().filter(|v| v.len() > 1) {
        for (i, &x) in ids.iter().enumerate() {
            for &y in &ids[i + 1..] {
                // SAFETY: `x` comes from the loop over slots; fsck's own
                // mapping (module docs).
                let lx = unsafe { line_of(&arena, x) };
                // SAFETY: as for `x`.
                let ly = unsafe { line_of(&arena, y) };
                let same = lx == ly;
                if same {
                    r.non_canonical += 1;
                    r.problem(format!(
                        "L{x} and L{y} hold the same content (dedup violated)"
                    ));
                }
            }
        }
    }

    // Right edges: children past the last leaf are zero, bytes past the end
    // of the last leaf are zero.
    let ls = config.line_size as u64;
    for e in &a.entries {
        let n = leaves_for(e.len, config.line_size.trailing_zeros());
        if n == 0 {
            if e.root.0 != 0 {
                r.non_canonical += 1;
                r.problem(format!(
                    "entry {}: empty segment with root L{}",
                    e.index, e.root.0
                ));
            }
            continue;
        }
        let last = n - 1;
        let mut node = e.root.0;
        for level in (1..=e.height).rev() {
            if node == 0 {
                break;
            }
            let j = ((last >> (fshift * (level - 1))) & ((1 << fshift) - 1)) as usize;
            // SAFETY: `node` is the root or a child on a path `analyze`
            // range-checked; fsck's own mapping (module docs).
            let line = unsafe { line_of(&arena, node) };
            if !is_zero(&line[(j + 1) * 4..]) {
                r.non_canonical += 1;
                r.problem(format!(
                    "entry {}: L{node} has children past the end",
                    e.index
                ));
            }
            node = u32::from_le_bytes(line[j * 4..j * 4 + 4].try_into().expect("4"));
        }
        let tail = (e.len % ls) as usize;
        // SAFETY: as above: a range-checked id, fsck's own mapping.
        if node != 0 && tail != 0 && !is_zero(&unsafe { line_of(&arena, node) }[tail..]) {
            r.non_canonical += 1;
            r.problem(format!(
                "entry {}: bytes past the end are not zero",
                e.index
            ));
        }
    }

    Ok(r)
}
