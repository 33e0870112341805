//! The memories of one process (one per line size) and what went into them: payloads are
//! interned in batches from the pending buffer, and small repeated payloads become snapshots.

use hicamp::footprint::{LineSizeReport, ZeroLineCounter};
use hicamp::{Memory, Segment};

use crate::config::Config;

/// Arena of each memory (reserved virtually; only used lines cost RAM).
const ARENA_BYTES: u64 = 16 << 30;
/// Payloads up to this size are remembered whole, so that a repeat is a snapshot. (A
/// pipelined batch of requests is a few hundred bytes to a few KiB: redis-benchmark's 16
/// GETs are 592.)
const CACHE_PAYLOAD_MAX: usize = 4096;
/// Payloads remembered ...
const CACHE_ENTRIES: usize = 1 << 14;
/// ... and their bytes, at most.
const CACHE_BYTES: u64 = 16 << 20;
/// The memories' footprint is checked against the budget after this many payload bytes.
const CHECK_BYTES: u64 = 1 << 20;

/// Why an ingest stopped before the end of its batch: the exact memories are given up.
#[derive(Debug)]
pub(super) struct Stop {
    /// Why.
    pub(super) reason: String,
}

/// Payload waiting to be interned: each payload once, with the number of times it came (a
/// thread's repeats of a small payload are counted, not copied).
#[derive(Debug, Default)]
pub(super) struct Pending {
    pub(super) bytes: Vec<u8>,
    pub(super) lens: Vec<usize>,
    /// Occurrences of each payload (at least 1), parallel to `lens`.
    pub(super) reps: Vec<u64>,
}

impl Pending {
    /// Appends one payload that came once.
    pub(super) fn push(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
        self.lens.push(data.len());
        self.reps.push(1);
    }

    /// Moves `other`'s payloads to the end of this one.
    pub(super) fn append(&mut self, other: &mut Pending) {
        self.bytes.extend_from_slice(&other.bytes);
        self.lens.extend_from_slice(&other.lens);
        self.reps.extend_from_slice(&other.reps);
        other.clear();
    }

    pub(super) fn clear(&mut self) {
        self.bytes.clear();
        self.lens.clear();
        self.reps.clear();
    }
}

/// One memory of one line size.
#[derive(Debug)]
struct Sink {
    line_size: usize,
    mem: Option<Memory>,
    zero: ZeroLineCounter,
    /// Zero-line bytes of repeats counted without feeding them to `zero` again.
    zero_again: u64,
    error: Option<String>,
}

/// A recent small payload and its segment in each memory (`None` where that memory failed).
///
/// The cached handles are the first occurrence's own references (not extra ones), so the
/// memories' statistics stay exact; an entry that leaves the cache holds its handles forever
/// (`Segment::hold_forever`).
#[derive(Debug)]
struct Cached {
    bytes: Vec<u8>,
    segs: Vec<Option<hicamp::Segment>>,
}

impl Drop for Cached {
    fn drop(&mut self) {
        for s in self.segs.drain(..).flatten() {
            s.hold_forever();
        }
    }
}

/// The memories and what went into them.
#[derive(Debug, Default)]
pub(super) struct Interner {
    sinks: Vec<Sink>,
    pub(super) payloads: u64,
    pub(super) bytes: u64,
    /// Payloads that repeated a cached one whole (a snapshot per memory, no line lookup).
    pub(super) snapshot_hits: u64,
    cache: std::collections::HashMap<u64, Cached>,
    /// Bytes of the payloads in `cache`.
    cache_bytes: u64,
    pub(super) spare: Pending,
    /// Payload bytes since the last budget check.
    since_check: u64,
}

impl Interner {
    fn memory_for(line_size: usize) -> Result<Memory, String> {
        let mut capacity = (ARENA_BYTES / line_size as u64).min(u64::from(u32::MAX - 1));
        loop {
            let config = hicamp::Config {
                line_size,
                capacity_lines: capacity,
                map_capacity: 2,
                ..hicamp::Config::default()
            };
            match Memory::new(config) {
                Ok(m) => return Ok(m),
                Err(e) if capacity <= 1 << 16 => return Err(e.to_string()),
                Err(_) => capacity /= 4,
            }
        }
    }

    /// Interns a batch of payloads while the memories (with the cache) stay within `limit`
    /// bytes and `go_on` says yes (asked before each payload).
    pub(super) fn ingest(
        &mut self,
        bytes: &[u8],
        lens: &[usize],
        reps: &[u64],
        limit: u64,
        go_on: &dyn Fn() -> bool,
    ) -> Result<(), Stop> {
        if self.sinks.is_empty() {
            for &ls in &Config::get().line_sizes {
                let (mem, error) = match Interner::memory_for(ls) {
                    Ok(m) => (Some(m), None),
                    Err(e) => (
                        None,
                        Some(format!("line size {ls}: cannot create a memory: {e}")),
                    ),
                };
                self.sinks.push(Sink {
                    line_size: ls,
                    mem,
                    zero: ZeroLineCounter::new(ls),
                    zero_again: 0,
                    error,
                });
            }
        }
        let mut off = 0;
        for (i, &n) in lens.iter().enumerate() {
            let r = reps.get(i).copied().unwrap_or(1).max(1);
            let Some(p) = bytes.get(off..off + n) else {
                break;
            };
            if !go_on() {
                return Err(Stop {
                    reason: "exit came before the interning thread caught up (at most 100 ms \
                             are spent on it)"
                        .into(),
                });
            }
            if self.since_check >= CHECK_BYTES {
                self.since_check = 0;
                let used = self.memory_bytes();
                if used > limit {
                    return Err(Stop {
                        reason: format!(
                            "the memories reached the memory budget ({} of {} allowed for \
                             them) after {} payload bytes",
                            hicamp::footprint::human_bytes(used),
                            hicamp::footprint::human_bytes(limit),
                            self.bytes
                        ),
                    });
                }
            }
            off += n;
            self.payloads += r;
            self.bytes += n as u64 * r;
            self.since_check += n as u64 * r;
            self.ingest_one(p);
            if r > 1 {
                self.repeat(p, r - 1);
            }
        }
        Ok(())
    }

    /// `p`, just interned, came `k` more times: what interning it again would leave behind
    /// (one more reference per memory each time), without looking it up again.
    fn repeat(&mut self, p: &[u8], k: u64) {
        let key = (p.len() <= CACHE_PAYLOAD_MAX).then(|| xxhash_rust::xxh3::xxh3_64(p));
        let Some(c) = key
            .and_then(|k| self.cache.get(&k))
            .filter(|c| *c.bytes == *p)
        else {
            for _ in 0..k {
                self.ingest_one(p);
            }
            return;
        };
        self.snapshot_hits += k;
        for (s, seg) in self.sinks.iter_mut().zip(&c.segs) {
            if let (Some(seg), Some(_)) = (seg, &s.mem) {
                seg.hold_snapshots(k);
                // Each item is cut from its own offset 0: every repeat has the same zero lines.
                let before = s.zero.zero_bytes();
                s.zero.feed_item(p);
                s.zero_again += (s.zero.zero_bytes() - before) * (k - 1);
            }
        }
    }

    /// What the memories and the cache hold now, bytes.
    pub(super) fn memory_bytes(&self) -> u64 {
        let mems: u64 = self
            .sinks
            .iter()
            .filter_map(|s| s.mem.as_ref())
            .map(|m| m.stats().footprint_bytes())
            .sum();
        mems + self.cache_bytes
    }

    /// Gives up the memories (the estimate takes over). Returns them: the caller drops them
    /// (their RAM goes back, which takes a while) after letting the interner go.
    pub(super) fn drop_all(&mut self) -> Vec<Memory> {
        self.cache.clear();
        self.cache_bytes = 0;
        self.spare = Pending::default();
        self.sinks.iter_mut().filter_map(|s| s.mem.take()).collect()
    }

    /// Interns one payload into every memory. Every handle made is kept (in the cache) or
    /// held forever (`Segment::hold_forever`): its reference (and its logical bytes) stay
    /// counted for the life of the memory, which is what the report measures.
    fn ingest_one(&mut self, p: &[u8]) {
        let key = (p.len() <= CACHE_PAYLOAD_MAX).then(|| xxhash_rust::xxh3::xxh3_64(p));
        if let Some(c) = key.and_then(|k| self.cache.get(&k)) {
            if c.bytes == p {
                // A repeat: one snapshot per memory, exactly what interning it again would
                // leave behind (the same root, one more reference).
                self.snapshot_hits += 1;
                for (s, seg) in self.sinks.iter_mut().zip(&c.segs) {
                    if let (Some(seg), Some(_)) = (seg, &s.mem) {
                        seg.hold_snapshots(1);
                        s.zero.feed_item(p);
                    }
                }
                return;
            }
        }
        let mut segs = Vec::with_capacity(self.sinks.len());
        for s in &mut self.sinks {
            let Some(mem) = &s.mem else {
                segs.push(None);
                continue;
            };
            match mem.segment(p) {
                Ok(seg) => segs.push(Some(seg)),
                Err(e) => {
                    s.error = Some(format!(
                        "line size {}: interning stopped after {} payload bytes: {e}",
                        s.line_size,
                        mem.stats().logical_bytes
                    ));
                    s.mem = None;
                    segs.push(None);
                    continue;
                }
            }
            s.zero.feed_item(p);
        }
        match key {
            Some(k) => {
                if self.cache.len() >= CACHE_ENTRIES || self.cache_bytes >= CACHE_BYTES {
                    self.cache.clear(); // the handles are held forever, their counts stay
                    self.cache_bytes = 0;
                }
                self.cache_bytes += p.len() as u64 + 64;
                self.cache.insert(
                    k,
                    Cached {
                        bytes: p.to_vec(),
                        segs,
                    },
                );
            }
            None => segs.into_iter().flatten().for_each(Segment::hold_forever),
        }
    }

    pub(super) fn line_sizes(&self) -> Vec<LineSizeReport> {
        self.sinks
            .iter()
            .filter_map(|s| {
                s.mem.as_ref().map(|m| {
                    LineSizeReport::from_stats(&m.stats(), s.zero.zero_bytes() + s.zero_again)
                })
            })
            .collect()
    }

    pub(super) fn errors(&self) -> Vec<String> {
        self.sinks.iter().filter_map(|s| s.error.clone()).collect()
    }
}
