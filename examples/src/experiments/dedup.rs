//! `hicamp dedup`: measure how much memory files (or the built-in workload) need on
//! line-deduplicated memory at several line sizes, against 4 KiB page sharing (Linux KSM) and
//! content-defined chunking (restic, borg, casync).
//!
//! # Methods
//!
//! - [`Method::Fingerprint`] (the default for files): every line size is counted by 64-bit
//!   fingerprints of its leaves and of the interior lines of its canonical DAGs
//!   ([`super::fingerprint`]): exactly what a memory would store (up to fingerprint collisions,
//!   whose expected number is reported), without storing a line. The sets stay within a memory
//!   budget; past it they are sampled by fingerprint and the report gives the sample rate and
//!   the 95% interval. Metadata follows the model of `hicamp::Stats`
//!   ([`super::fingerprint::memory_metadata`]).
//! - [`Method::Exact`] (the built-in workload, or `--exact`): one real HICAMP memory per line
//!   size; the stats are the memory's own. It needs many times the input's size in RAM.
//!
//! # Pipeline
//!
//! ```text
//!   reader (calling thread)              workers (scoped threads, each owns some sinks)
//!   walk -> open -> read 4 MiB chunks ---> chunk, chunk, ..., end-of-item --> line size 16 B
//!            (one buffer, shared by Arc,                                  --> ... 4096 B
//!             broadcast to every worker)                                  --> pages (KSM model)
//!                                                                         --> CDC 2/8/64 KiB
//! ```
//!
//! Every file is read once, whatever the number of line sizes, and streamed: a file never has
//! to fit in RAM. Each sink is fed by exactly one worker, in input order, so the result does
//! not depend on the number of threads. Each item becomes one segment.

use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::Arc;

use hicamp::footprint::{human_bytes, LineSizeReport, ZeroLineCounter};
use hicamp::{Config, Memory, Segment, SegmentMut};
use indicatif::ProgressBar;

use super::cdc::{CdcCounter, CdcReport, CDC_AVERAGES};
use super::fingerprint::{
    expected_false_merges, fingerprinted_nodes, max_lines, memory_metadata, slots_for, Estimate,
    LineCounter, LineCounts, Pyramid, PyramidSpan, SLOT_BYTES,
};
pub use super::input::{
    name_unreadable, InputSet, Item, Source, WalkOptions, MAX_NAMED, UNSIZED_FILE_CAP,
    UNSIZED_TOTAL_CAP,
};
use super::pagededup::{PageDedup, PageDedupReport, DEFAULT_PAGE_SIZE};
use super::report::{CpuReport, DedupReport, InputReport, LineEstimate};

/// Line sizes measured when none are given: every size HICAMP allows.
pub const DEFAULT_LINE_SIZES: [usize; 9] = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096];

/// Bytes read (and handed to the memories) at a time.
pub const DEFAULT_CHUNK_SIZE: usize = 4 << 20;

/// Chunks in flight per worker beyond the one it is processing.
const CHANNEL_DEPTH: usize = 2;

/// Everything that stops `hicamp dedup`.
#[derive(Debug, thiserror::Error)]
pub enum DedupError {
    /// A path given on the command line cannot be examined.
    #[error("cannot access '{}': {source}", path.display())]
    Access {
        /// The path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A memory operation failed.
    #[error("line size {line_size}: {source}{}", capacity_hint(source))]
    Memory {
        /// Line size of the memory that failed.
        line_size: usize,
        /// The memory's error.
        source: hicamp::Error,
    },
    /// A line size HICAMP does not support.
    #[error("bad line size {0}: must be a power of two from {min} to {max}",
            min = hicamp::MIN_LINE_SIZE, max = hicamp::MAX_LINE_SIZE)]
    BadLineSize(usize),
    /// Bad ingestion options (a programming error of the caller).
    #[error("bad options: {0}")]
    BadOptions(String),
    /// A worker thread panicked (a bug).
    #[error("internal error: a worker thread panicked")]
    WorkerPanicked,
}

fn capacity_hint(e: &hicamp::Error) -> &'static str {
    match e {
        hicamp::Error::CapacityExhausted { .. } => {
            " (the input does not fit a memory of this line size: a memory holds at most \
             2^32 - 2 lines; choose larger line sizes with --line-sizes)"
        }
        hicamp::Error::BadConfig(msg) if msg.contains("cannot map") => {
            " (a memory reserves address space for the whole input at every line size; the \
             system refused it: try fewer line sizes with --line-sizes, or a smaller input)"
        }
        _ => "",
    }
}

/// Checks that `line_size` is one HICAMP supports ([`Config::check_line_size`]).
pub fn check_line_size(line_size: usize) -> Result<(), DedupError> {
    Config::check_line_size(line_size).map_err(|_| DedupError::BadLineSize(line_size))
}

// ---------------------------------------------------------------------------------------------
// Ingestion

/// How the line sizes are measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Every line size interned into a real HICAMP memory (bytes compared, exact stats): the
    /// memory holds every unique line, its DAG and its metadata, so it needs many times the
    /// input's size. The page baseline compares page bytes.
    Exact,
    /// Lines, DAGs, pages and chunks counted by 64-bit fingerprints in a memory budget
    /// ([`super::fingerprint`]); sampled by fingerprint when the budget is reached.
    #[default]
    Fingerprint,
}

/// How to ingest.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Line sizes, one memory each (reported in ascending order, without repeats).
    pub line_sizes: Vec<usize>,
    /// Worker threads (at least 1; more than the number of line sizes plus four is useless).
    pub threads: usize,
    /// Read size: a positive multiple of 4096 (so that chunks keep every line and page
    /// boundary of a file).
    pub chunk_size: usize,
    /// Line capacity of every memory (exact method); `None` sizes each from the input
    /// ([`capacity_for`]).
    pub capacity_lines: Option<u64>,
    /// Exact memories, or fingerprints in a budget.
    pub method: Method,
    /// Bytes the fingerprint sets may hold together (fingerprint method); beyond it they are
    /// sampled. Each set gets what the input can fill at most (when sizes are known), or a
    /// share of what is left in proportion to the lines it can hold per byte
    /// (`split_budget`).
    pub memory_budget: u64,
    /// Measure the content-defined chunking baseline ([`CDC_AVERAGES`]).
    pub cdc: bool,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            line_sizes: DEFAULT_LINE_SIZES.to_vec(),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            chunk_size: DEFAULT_CHUNK_SIZE,
            capacity_lines: None,
            method: Method::Fingerprint,
            memory_budget: default_memory_budget(),
            cdc: true,
        }
    }
}

/// Half of the machine's RAM (`MemTotal` of `/proc/meminfo`; 4 GiB where it cannot be read).
pub fn default_memory_budget() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(4 << 30, |kib| kib * 1024 / 2)
}

/// Bytes held outside the fingerprint sets: read buffers in flight (at most
/// `CHANNEL_DEPTH + 3` at once, as the workers share each one) with their fingerprint
/// pyramids (about as big again), per-sink scratch, the program itself; the bound of
/// `CHANNEL_DEPTH + 2` buffers per worker, 4 more and 32 MiB covers them. Taken off the
/// budget before it is split over the sets.
pub fn fixed_overhead(opts: &IngestOptions) -> u64 {
    let workers = opts.threads.max(1) as u64;
    (workers * (CHANNEL_DEPTH as u64 + 2) + 4) * opts.chunk_size as u64 + (32 << 20)
}

/// Lines a memory of `line_size` needs for items of `lens`: every leaf, every interior line
/// of the canonical DAGs, 20% and a fixed margin for the copy-on-write paths of appends and
/// the per-shard slot batches; clamped to what a memory can hold.
pub fn capacity_for(line_size: usize, lens: impl Iterator<Item = u64>) -> u64 {
    let ls = line_size as u64;
    let fanout = ls / 4;
    let mut lines: u64 = 0;
    for len in lens {
        let leaves = len.div_ceil(ls);
        let mut interior = 0;
        let mut level = leaves;
        while level > 1 {
            level = level.div_ceil(fanout);
            interior += level;
        }
        lines = lines.saturating_add(leaves + interior);
    }
    let max = u64::from(u32::MAX - 1);
    lines
        .saturating_add(lines / 5)
        .saturating_add(8192)
        .min(max)
}

/// The bytes of a block.
enum BlockData {
    /// A read buffer.
    Owned(Vec<u8>),
    /// An item held in memory.
    Shared(Arc<Vec<u8>>),
}

/// The next bytes of an item, in a block: they start at a multiple of the chunk size within
/// the item (so every non-final piece of an item keeps its line and page boundaries).
struct Seg {
    /// Where in the block's data.
    range: Range<usize>,
    /// The item ends with these bytes.
    end: bool,
    /// Where its lines' fingerprints are in the block's pyramid.
    span: PyramidSpan,
}

/// A buffer of pieces of items: one piece of a big item, or several small items whole (so
/// that small files cost one message to the workers per buffer, not two each).
struct Block {
    data: BlockData,
    segs: Vec<Seg>,
    /// For the fingerprint method, the leaf fingerprints of the pieces' lines at every
    /// line size, computed once by the reader instead of once per line size.
    fps: Pyramid,
}

impl Block {
    fn segs(&self) -> &[Seg] {
        &self.segs
    }

    fn bytes(&self, seg: &Seg) -> &[u8] {
        match &self.data {
            BlockData::Owned(v) => &v[seg.range.clone()],
            BlockData::Shared(v) => &v[seg.range.clone()],
        }
    }

    /// Bytes of the buffer in use.
    fn filled(&self) -> usize {
        self.segs().last().map_or(0, |s| s.range.end)
    }

    /// Adds a piece of `n` bytes at [`filled`](Self::filled) (already in the buffer) and
    /// computes its fingerprints up to `pyramid`.
    fn push(&mut self, n: usize, end: bool, pyramid: bool) {
        let start = self.filled();
        let range = start..start + n;
        self.push_range(range, end, pyramid);
    }

    fn push_range(&mut self, range: Range<usize>, end: bool, pyramid: bool) {
        let span = if pyramid {
            let data = match &self.data {
                BlockData::Owned(v) => &v[range.clone()],
                BlockData::Shared(v) => &v[range.clone()],
            };
            self.fps.append(data)
        } else {
            PyramidSpan::default()
        };
        self.segs.push(Seg { range, end, span });
    }
}

/// What one item's reading sends to the workers.
enum Msg {
    /// The next bytes of the current item.
    Chunk(Arc<Block>),
    /// The current item is complete.
    End,
}

/// One HICAMP memory being filled.
struct LineSink {
    mem: Memory,
    building: Option<SegmentMut>,
    segments: Vec<Segment>,
    zero: ZeroLineCounter,
    error: Option<hicamp::Error>,
}

impl LineSink {
    fn chunk(&mut self, data: &[u8]) {
        if self.error.is_some() {
            return;
        }
        let mem = &self.mem;
        let b = self.building.get_or_insert_with(|| mem.builder());
        if let Err(e) = b.append(data) {
            self.error = Some(e);
            self.building = None;
            return;
        }
        self.zero.feed(data);
    }

    fn end(&mut self) {
        if self.error.is_some() {
            return;
        }
        let seg = match self.building.take() {
            Some(b) => b.freeze(),
            None => self.mem.empty(),
        };
        self.segments.push(seg);
        self.zero.finish_item();
    }

    fn report(self) -> Result<LineSizeReport, hicamp::Error> {
        if let Some(e) = self.error {
            return Err(e);
        }
        debug_assert!(self.building.is_none());
        let stats = self.mem.stats();
        // The segments are released (on this worker thread) after the stats are taken.
        Ok(LineSizeReport::from_stats(&stats, self.zero.zero_bytes()))
    }
}

enum Sink {
    Line(Box<LineSink>),
    Page(PageDedup),
    /// Fingerprint counting of one line size (`tree`) or of pages.
    Fp(Box<LineCounter>, bool),
    Cdc(Box<CdcCounter>),
}

enum SinkOutput {
    Line(usize, Result<LineSizeReport, hicamp::Error>),
    Page(PageDedupReport),
    FpLine(Box<LineCounts>),
    FpPage(Box<LineCounts>),
    Cdc(CdcReport),
}

/// Relative cost per byte of a set of `unit`-byte lines: a set insertion per line, interior
/// lines included, plus hashing and zero checks. Fitted to the time each sink took on
/// /usr/lib/gcc and /usr/lib/llvm-14 (the 16 B lines about 40% of all, each FastCDC size
/// about 7%), so that the workers get about equal shares.
fn line_weight(unit: usize, tree: bool) -> f64 {
    40.0 * budget_weight(unit, tree) + 0.05
}

/// Relative cost per byte of one FastCDC sink, on the scale of [`line_weight`].
const CDC_WEIGHT: f64 = 0.55;

/// Relative share of the budget for a set of `unit`-byte lines (with the interior lines of
/// their DAGs when `tree`): the lines per byte it can hold at most.
fn budget_weight(unit: usize, tree: bool) -> f64 {
    let leaves = 1.0 / unit as f64;
    if tree {
        leaves * (1.0 + 1.0 / ((unit / 4) as f64 - 1.0))
    } else {
        leaves
    }
}

impl Sink {
    /// Relative cost per byte, for spreading sinks over workers.
    fn weight(&self) -> f64 {
        match self {
            Sink::Line(l) => line_weight(l.mem.line_size(), true),
            Sink::Page(p) => line_weight(p.page_size(), false),
            Sink::Fp(c, tree) => line_weight(c.line_size(), *tree),
            Sink::Cdc(_) => CDC_WEIGHT,
        }
    }

    /// Adds the next bytes of the current item, `fps` their lines' fingerprints if
    /// computed.
    fn chunk(&mut self, bytes: &[u8], fps: &Pyramid, span: &PyramidSpan) -> bool {
        match self {
            Sink::Line(l) => {
                l.chunk(bytes);
                l.error.is_none()
            }
            // Chunks keep page boundaries (chunk size is a multiple of the page size), so
            // adding chunk by chunk is adding the whole file.
            Sink::Page(p) => {
                p.add(bytes);
                true
            }
            Sink::Fp(c, _) => {
                match fps.level(span, c.line_size()) {
                    // Whole lines by the reader's fingerprints, the rest (an item's last,
                    // partial line) by bytes.
                    Some(fps) if c.at_line_boundary() => {
                        let whole = bytes.len() / c.line_size();
                        c.feed_fps(&fps[..whole]);
                        c.feed(&bytes[whole * c.line_size()..]);
                    }
                    _ => c.feed(bytes),
                }
                true
            }
            Sink::Cdc(c) => {
                c.feed(bytes);
                true
            }
        }
    }

    /// Ends the current item.
    fn end(&mut self) -> bool {
        match self {
            Sink::Line(l) => {
                l.end();
                l.error.is_none()
            }
            Sink::Page(_) => true,
            Sink::Fp(c, _) => {
                c.finish_item();
                true
            }
            Sink::Cdc(c) => {
                c.finish_item();
                true
            }
        }
    }

    fn apply(&mut self, msg: &Msg) -> bool {
        match msg {
            Msg::Chunk(b) => {
                let mut ok = true;
                for seg in b.segs() {
                    match self {
                        // A whole small file is cut in place.
                        Sink::Cdc(c) if seg.end => c.feed_last(b.bytes(seg)),
                        _ => {
                            // An empty item (a packed empty file) is only ended, as a
                            // stream's.
                            if !seg.range.is_empty() {
                                ok &= self.chunk(b.bytes(seg), &b.fps, &seg.span);
                            }
                            if seg.end {
                                ok &= self.end();
                            }
                        }
                    }
                }
                ok
            }
            Msg::End => self.end(),
        }
    }

    fn finish(self) -> SinkOutput {
        match self {
            Sink::Line(l) => {
                let ls = l.mem.line_size();
                SinkOutput::Line(ls, l.report())
            }
            Sink::Page(p) => SinkOutput::Page(p.report()),
            Sink::Fp(mut c, true) => SinkOutput::FpLine(Box::new(c.counts())),
            Sink::Fp(mut c, false) => SinkOutput::FpPage(Box::new(c.counts())),
            Sink::Cdc(c) => SinkOutput::Cdc(c.report()),
        }
    }
}

/// Reusable read buffers: a buffer is free again when no worker holds it any more.
struct BufferPool {
    size: usize,
    bufs: Vec<Arc<Block>>,
    /// Compute the fingerprint pyramid of each block.
    pyramid: bool,
}

impl BufferPool {
    /// A free buffer, emptied.
    fn take(&mut self) -> Arc<Block> {
        if let Some(i) = self.bufs.iter().position(|b| Arc::strong_count(b) == 1) {
            let mut b = self.bufs.swap_remove(i);
            let block = Arc::get_mut(&mut b).expect("buffer is free");
            block.segs.clear();
            block.fps.clear();
            return b;
        }
        Arc::new(Block {
            data: BlockData::Owned(vec![0; self.size]),
            segs: Vec::new(),
            fps: Pyramid::default(),
        })
    }

    fn give(&mut self, buf: Arc<Block>) {
        self.bufs.push(buf);
    }

    /// A block of part of an item held in memory (not pooled).
    fn shared(&self, data: &Arc<Vec<u8>>, r: Range<usize>) -> Arc<Block> {
        let mut b = Block {
            data: BlockData::Shared(data.clone()),
            segs: Vec::new(),
            fps: Pyramid::default(),
        };
        b.push_range(r, false, self.pyramid);
        Arc::new(b)
    }
}

/// Reads until `buf` is full or the reader ends. Returns the bytes read, and the error that
/// stopped it early, if any.
fn fill(r: &mut (impl Read + ?Sized), buf: &mut [u8]) -> (usize, Option<io::Error>) {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (n, Some(e)),
        }
    }
    (n, None)
}

/// Counts of what the reader did.
#[derive(Debug, Default)]
struct ReadCounts {
    files: u64,
    bytes: u64,
    skipped: u64,
    partial: u64,
    unreadable: Vec<String>,
}

impl ReadCounts {
    /// Counts `name` as skipped, names it in the report and warns with `msg`.
    fn skip(&mut self, name: String, msg: &str, warn: &mut dyn FnMut(&str)) {
        self.skipped += 1;
        name_unreadable(&mut self.unreadable, name);
        warn(msg);
    }
}

/// Spreads sinks over `workers` groups, heaviest first onto the lightest group (LPT), keeping
/// the result a pure function of the sinks.
fn assign(sinks: Vec<Sink>, workers: usize) -> Vec<Vec<(usize, Sink)>> {
    let mut indexed: Vec<(usize, Sink)> = sinks.into_iter().enumerate().collect();
    indexed.sort_by(|a, b| b.1.weight().total_cmp(&a.1.weight()).then(a.0.cmp(&b.0)));
    let mut groups: Vec<(f64, Vec<(usize, Sink)>)> =
        (0..workers).map(|_| (0.0, Vec::new())).collect();
    for (i, s) in indexed {
        let g = groups
            .iter_mut()
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .expect("at least one worker");
        g.0 += s.weight();
        g.1.push((i, s));
    }
    groups
        .into_iter()
        .map(|g| g.1)
        .filter(|g| !g.is_empty())
        .collect()
}

/// The sinks of the exact method: one memory per line size and the byte-comparing pages.
fn exact_sinks(
    input: &InputSet,
    line_sizes: &[usize],
    opts: &IngestOptions,
) -> Result<Vec<Sink>, DedupError> {
    if input.items.iter().any(Item::is_stream) {
        return Err(DedupError::BadOptions(
            "the exact method sizes its memories from the input: it cannot read standard \
             input or tar streams (leave out --exact)"
                .into(),
        ));
    }
    let mut sinks = Vec::with_capacity(line_sizes.len() + 1);
    for &ls in line_sizes {
        let config = Config {
            line_size: ls,
            capacity_lines: opts
                .capacity_lines
                .unwrap_or_else(|| capacity_for(ls, input.items.iter().map(Item::len))),
            map_capacity: 1024,
            ..Config::default()
        };
        let mem = Memory::new(config).map_err(|source| DedupError::Memory {
            line_size: ls,
            source,
        })?;
        sinks.push(Sink::Line(Box::new(LineSink {
            mem,
            building: None,
            segments: Vec::with_capacity(input.items.len()),
            zero: ZeroLineCounter::new(ls),
            error: None,
        })));
    }
    sinks.push(Sink::Page(PageDedup::new(DEFAULT_PAGE_SIZE)));
    if opts.cdc {
        for avg in CDC_AVERAGES {
            sinks.push(Sink::Cdc(Box::new(CdcCounter::new(
                avg,
                opts.memory_budget / 8,
            ))));
        }
    }
    Ok(sinks)
}

/// The sinks of the fingerprint method, the budget split over their sets.
///
/// When every item's size is known (no stream), each set is sized once for the most distinct
/// things it can meet ([`max_lines`]: every line, page or chunk of the input distinct), so it
/// never grows; a set that cannot have that much of the budget gets what is left of it in
/// proportion to the lines it can hold per byte, and samples past it. With streams, the sets
/// grow as needed within those shares.
fn fingerprint_sinks(input: &InputSet, line_sizes: &[usize], opts: &IngestOptions) -> Vec<Sink> {
    let cdc: &[usize] = if opts.cdc { &CDC_AVERAGES } else { &[] };
    let lens = || input.items.iter().map(Item::len);
    let known = !input.items.iter().any(Item::is_stream);
    // (weight, slots wanted) per set: line sizes, pages, CDC.
    let mut sets: Vec<(f64, Option<u64>)> = Vec::new();
    for &ls in line_sizes {
        sets.push((
            budget_weight(ls, true),
            known.then(|| slots_for(max_lines(ls, true, lens()))),
        ));
    }
    sets.push((
        budget_weight(DEFAULT_PAGE_SIZE, false),
        known.then(|| slots_for(max_lines(DEFAULT_PAGE_SIZE, false, lens()))),
    ));
    for &avg in cdc {
        let min = (avg / 4) as u64;
        let chunks = lens().map(|l| l.div_ceil(min) + 1).sum();
        sets.push((budget_weight(avg, false), known.then(|| slots_for(chunks))));
    }
    let budgets = split_budget(
        opts.memory_budget.saturating_sub(fixed_overhead(opts)),
        &sets,
    );
    let mut sinks = Vec::with_capacity(sets.len());
    let mut b = budgets.into_iter();
    for &ls in line_sizes {
        let b = b.next().expect("budget");
        sinks.push(Sink::Fp(
            Box::new(if known {
                LineCounter::with_max_lines(ls, true, b, max_lines(ls, true, lens()))
            } else {
                LineCounter::new(ls, true, b)
            }),
            true,
        ));
    }
    let bp = b.next().expect("budget");
    sinks.push(Sink::Fp(
        Box::new(if known {
            LineCounter::with_max_lines(
                DEFAULT_PAGE_SIZE,
                false,
                bp,
                max_lines(DEFAULT_PAGE_SIZE, false, lens()),
            )
        } else {
            LineCounter::new(DEFAULT_PAGE_SIZE, false, bp)
        }),
        false,
    ));
    for &avg in cdc {
        let bc = b.next().expect("budget");
        sinks.push(Sink::Cdc(Box::new(if known {
            CdcCounter::with_lens(avg, bc, lens())
        } else {
            CdcCounter::new(avg, bc)
        })));
    }
    sinks
}

/// Smallest budget of a set, bytes.
const MIN_SET_BUDGET: u64 = 1 << 20;

/// Splits `total` bytes over sets of `(weight, slots wanted)`: a set that wants known slots
/// gets no more than their bytes; the rest is shared in proportion to the weights, again
/// capped by what each wants, until the budget or the wants run out. Every set gets at least
/// [`MIN_SET_BUDGET`].
fn split_budget(total: u64, sets: &[(f64, Option<u64>)]) -> Vec<u64> {
    let want: Vec<Option<u64>> = sets
        .iter()
        .map(|(_, s)| s.map(|s| s.saturating_mul(SLOT_BYTES)))
        .collect();
    let mut given = vec![0u64; sets.len()];
    let mut open: Vec<usize> = (0..sets.len()).collect();
    let mut left = total;
    while !open.is_empty() && left > 0 {
        let weight: f64 = open.iter().map(|&i| sets[i].0).sum();
        let mut capped = false;
        for &i in &open {
            let share = (left as f64 * sets[i].0 / weight) as u64;
            if let Some(w) = want[i] {
                if w <= share {
                    given[i] = w;
                    capped = true;
                }
            }
        }
        if !capped {
            for &i in &open {
                given[i] = (left as f64 * sets[i].0 / weight) as u64;
            }
            break;
        }
        open.retain(|&i| !matches!(want[i], Some(w) if given[i] >= w));
        left = total.saturating_sub(given.iter().sum());
    }
    given.into_iter().map(|g| g.max(MIN_SET_BUDGET)).collect()
}

/// Ingests `input` into one memory (or fingerprint counter) per line size, the 4 KiB page
/// baseline and, with the fingerprint method, the CDC baseline.
///
/// `progress` is advanced by the bytes read (its length is set here to the input's size when
/// known); pass [`ProgressBar::hidden`] for none. Files that cannot be opened or read are
/// reported through `warn` (and counted as skipped or partial); every other failure is an
/// error.
pub fn ingest(
    input: &InputSet,
    opts: &IngestOptions,
    progress: &ProgressBar,
    warn: &mut dyn FnMut(&str),
) -> Result<DedupReport, DedupError> {
    let mut line_sizes = opts.line_sizes.clone();
    line_sizes.sort_unstable();
    line_sizes.dedup();
    for &ls in &line_sizes {
        check_line_size(ls)?;
    }
    if opts.chunk_size == 0 || opts.chunk_size % DEFAULT_PAGE_SIZE != 0 {
        return Err(DedupError::BadOptions(format!(
            "chunk size {} is not a positive multiple of {DEFAULT_PAGE_SIZE}",
            opts.chunk_size
        )));
    }

    let sinks = match opts.method {
        Method::Exact => exact_sinks(input, &line_sizes, opts)?,
        Method::Fingerprint => fingerprint_sinks(input, &line_sizes, opts),
    };

    progress.set_length(input.total_bytes());
    let groups = assign(sinks, opts.threads.max(1));
    let abort = AtomicBool::new(false);

    let (counts, outputs) = std::thread::scope(|scope| {
        let mut senders = Vec::with_capacity(groups.len());
        let mut handles = Vec::with_capacity(groups.len());
        for mut group in groups {
            let (tx, rx) = mpsc::sync_channel::<Msg>(CHANNEL_DEPTH);
            senders.push(tx);
            let abort = &abort;
            handles.push(scope.spawn(move || {
                for msg in rx {
                    if abort.load(Relaxed) {
                        continue; // drain, so that the reader never blocks
                    }
                    for (_, sink) in group.iter_mut() {
                        if !sink.apply(&msg) {
                            abort.store(true, Relaxed);
                        }
                    }
                }
                let out = group
                    .into_iter()
                    .map(|(i, s)| (i, s.finish()))
                    .collect::<Vec<_>>();
                (out, thread_cpu())
            }));
        }
        let reader0 = thread_cpu();
        // The fingerprint sinks take their lines' fingerprints from the reader (chunks start
        // at multiples of the chunk size, a multiple of the largest line).
        let pyramid = opts.method == Method::Fingerprint;
        let counts = read_all(
            input,
            opts.chunk_size,
            pyramid,
            &senders,
            &abort,
            progress,
            warn,
        );
        let reader = thread_cpu()
            .zip(reader0)
            .map(|(b, a)| (b.0 - a.0, b.1 - a.1));
        drop(senders);
        let mut outputs = Vec::new();
        let mut panicked = false;
        let mut workers = Some(Vec::new());
        for h in handles {
            match h.join() {
                Ok((o, cpu)) => {
                    outputs.extend(o);
                    workers = workers.zip(cpu).map(|(mut w, c)| {
                        w.push(c);
                        w
                    });
                }
                Err(_) => panicked = true,
            }
        }
        let cpu = reader.zip(workers).map(|(r, w)| {
            let run: f64 = r.0 + w.iter().map(|c| c.0).sum::<f64>();
            CpuReport {
                reader_seconds: r.0,
                worker_seconds: w.iter().map(|c| c.0).collect(),
                waiting_seconds: r.1 + w.iter().map(|c| c.1).sum::<f64>(),
                ns_per_byte: run * 1e9 / (counts.bytes.max(1) as f64),
            }
        });
        (counts, (!panicked).then_some((outputs, cpu)))
    });
    let (mut outputs, cpu) = outputs.ok_or(DedupError::WorkerPanicked)?;
    outputs.sort_by_key(|(i, _)| *i);

    let mut reports = Vec::with_capacity(line_sizes.len());
    let mut estimates = Vec::new();
    let mut page = None;
    let mut page_estimate = None;
    let mut cdc = Vec::new();
    let mut set_peak = 0;
    for (_, out) in outputs {
        match out {
            SinkOutput::Line(line_size, r) => {
                reports.push(r.map_err(|source| DedupError::Memory { line_size, source })?)
            }
            SinkOutput::Page(p) => page = Some(p),
            SinkOutput::FpLine(c) => {
                set_peak += c.set_peak_bytes;
                let (r, e) = line_report_from_counts(&c);
                reports.push(r);
                estimates.push(e);
            }
            SinkOutput::FpPage(c) => {
                set_peak += c.set_peak_bytes;
                let (p, e) = page_report_from_counts(&c);
                page = Some(p);
                page_estimate = Some(e);
            }
            SinkOutput::Cdc(r) => cdc.push(r),
        }
    }
    let page_baseline = page.expect("the page sink always reports");

    let description = match &input.source {
        Source::Workload(d) => d.clone(),
        Source::Paths(paths) => {
            let shown: Vec<String> = paths
                .iter()
                .take(3)
                .map(|p| format!("'{}'", p.display()))
                .collect();
            let more = if paths.len() > 3 {
                format!(" and {} more", paths.len() - 3)
            } else {
                String::new()
            };
            format!(
                "{} file{}, {} ({} bytes) from {}{more}",
                counts.files,
                if counts.files == 1 { "" } else { "s" },
                human_bytes(counts.bytes),
                counts.bytes,
                shown.join(", ")
            )
        }
    };
    let mut unreadable = input.unreadable.clone();
    for n in counts.unreadable {
        name_unreadable(&mut unreadable, n);
    }
    let input_report = InputReport {
        source: match input.source {
            Source::Paths(_) => "paths",
            Source::Workload(_) => "default_workload",
        }
        .to_string(),
        description,
        files: counts.files,
        bytes: counts.bytes,
        skipped: input.skipped + counts.skipped,
        partial: counts.partial,
        duplicates: input.duplicates,
        links_not_followed: input.links_not_followed,
        other_file_systems: input.other_file_systems,
        unreadable,
    };
    let sampled = estimates.iter().any(|e: &LineEstimate| e.sample_rate < 1.0)
        || page_estimate.is_some_and(|e: Estimate| e.rate < 1.0)
        || cdc.iter().any(|c| c.estimate.rate < 1.0);
    Ok(DedupReport {
        method: opts.method,
        sampled,
        memory_budget_bytes: (opts.method == Method::Fingerprint).then_some(opts.memory_budget),
        set_peak_bytes: set_peak,
        input: input_report,
        line_sizes: reports,
        line_estimates: estimates,
        page_baseline,
        page_estimate,
        cdc,
        cpu,
        run: None,
    })
}

/// The line-size report of fingerprint counts, in the model of `hicamp::Stats` (see
/// [`memory_metadata`]), and its estimate.
pub fn line_report_from_counts(c: &LineCounts) -> (LineSizeReport, LineEstimate) {
    let ls = c.line_size;
    let leaves = c.leaves.value;
    let interior = c.interior.value;
    let lines = leaves + interior;
    let (refcount, index, free) = memory_metadata(lines);
    let map = empty_map_bytes();
    let metadata = refcount + index + free + map;
    let physical = lines * ls;
    let footprint = physical + metadata;
    let ratio = |num: u64| {
        if c.logical_bytes == 0 {
            1.0
        } else {
            num as f64 / footprint as f64
        }
    };
    let r = LineSizeReport {
        line_size: ls,
        logical_bytes: c.logical_bytes,
        physical_bytes: physical,
        metadata_bytes: metadata,
        footprint_bytes: footprint,
        zero_bytes: c.zero_bytes,
        dedup_ratio: ratio(c.logical_bytes),
        dedup_ratio_excl_zero: ratio(c.logical_bytes - c.zero_bytes),
        leaf_lines: leaves,
        interior_lines: interior,
        dedup_hits: c.leaf_writes.saturating_sub(leaves)
            + c.interior_writes.saturating_sub(interior),
        leaf_dedup_hits: c.leaf_writes.saturating_sub(leaves),
        interior_dedup_hits: c.interior_writes.saturating_sub(interior),
        zero_leaf_hits: c.zero_leaves,
        zero_interior_hits: c.zero_interior,
        leaf_lines_created: leaves,
        interior_lines_created: interior,
        refcount_bytes: refcount,
        index_bytes: index,
        map_bytes: map,
        free_list_bytes: free,
    };
    let e = LineEstimate {
        line_size: ls,
        sample_rate: c.lines.rate,
        sampled_lines: c.lines.sampled,
        rel_err_95: c.lines.rel_err_95,
        expected_false_merges: expected_false_merges(fingerprinted_nodes(
            ls as usize,
            leaves,
            interior,
        )),
    };
    (r, e)
}

/// The page-baseline report of fingerprint counts (KSM model, as [`PageDedup`]).
pub fn page_report_from_counts(c: &LineCounts) -> (PageDedupReport, Estimate) {
    let p = PageDedupReport::new(
        c.line_size,
        c.logical_bytes,
        c.leaf_writes + c.zero_leaves,
        c.zero_leaves,
        c.leaves.value,
        c.zero_bytes,
    );
    (p, c.leaves)
}

/// The segment map's bytes in a memory that holds no map entry (the constant part of the
/// model: `hicamp dedup` keeps its segments as handles, not map entries).
fn empty_map_bytes() -> u64 {
    static MAP: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *MAP.get_or_init(|| {
        let config = Config {
            line_size: 64,
            capacity_lines: 1024,
            map_capacity: 1024,
            ..Config::default()
        };
        Memory::new(config).map_or(0, |m| m.stats().map_bytes)
    })
}

/// Seconds the calling thread has run and has waited, runnable, for a CPU
/// (`/proc/thread-self/schedstat`); `None` where the system does not tell.
fn thread_cpu() -> Option<(f64, f64)> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let mut f = s.split_whitespace().map(|v| v.parse::<u64>().ok());
    let run = f.next()??;
    let wait = f.next()??;
    Some((run as f64 * 1e-9, wait as f64 * 1e-9))
}

/// Sends the chunks of one reader (an item) to the workers, then the end of the item.
/// Returns false when the workers are gone or failed.
#[allow(clippy::too_many_arguments)]
fn send_stream(
    r: &mut dyn Read,
    name: &str,
    pool: &mut BufferPool,
    counts: &mut ReadCounts,
    send: &dyn Fn(&dyn Fn() -> Msg) -> bool,
    abort: &AtomicBool,
    progress: &ProgressBar,
    warn: &mut dyn FnMut(&str),
) -> Result<(), ()> {
    let chunk_size = pool.size;
    let mut total = 0u64;
    loop {
        if abort.load(Relaxed) {
            return Err(());
        }
        let mut buf = pool.take();
        let block = Arc::get_mut(&mut buf).expect("buffer is free");
        let BlockData::Owned(data) = &mut block.data else {
            unreachable!("pooled blocks own their buffer")
        };
        let (n, err) = fill(r, data);
        block.push(n, false, pool.pyramid);
        let shared = buf.clone();
        pool.give(buf);
        if n > 0 && !send(&|| Msg::Chunk(shared.clone())) {
            return Err(());
        }
        counts.bytes += n as u64;
        total += n as u64;
        progress.inc(n as u64);
        if let Some(e) = err {
            counts.partial += 1;
            name_unreadable(&mut counts.unreadable, name.to_string());
            warn(&format!(
                "error reading '{name}' after {total} bytes: {e} (the bytes read are ingested)"
            ));
            break;
        }
        if n < chunk_size {
            break;
        }
    }
    Ok(())
}

/// Reads every item and broadcasts its chunks to the workers. Stops early when a worker
/// failed (`abort`) or is gone.
fn read_all(
    input: &InputSet,
    chunk_size: usize,
    pyramid: bool,
    senders: &[mpsc::SyncSender<Msg>],
    abort: &AtomicBool,
    progress: &ProgressBar,
    warn: &mut dyn FnMut(&str),
) -> ReadCounts {
    let mut counts = ReadCounts::default();
    let mut pool = BufferPool {
        size: chunk_size,
        bufs: Vec::new(),
        pyramid,
    };
    let send =
        |make: &dyn Fn() -> Msg| -> bool { senders.iter().all(|tx| tx.send(make()).is_ok()) };
    // The block small files are being read into.
    let mut packing: Option<Arc<Block>> = None;
    'items: for item in &input.items {
        if abort.load(Relaxed) {
            break;
        }
        // A file that fits a buffer is read whole into the block being packed (a fresh one
        // when it does not fit what is left of it).
        if let Item::File {
            path,
            len,
            unsized_: false,
        } = item
        {
            if let Ok(len) = usize::try_from(*len) {
                if len <= chunk_size {
                    let room = packing.as_ref().map_or(0, |b| chunk_size - b.filled());
                    if len > room && !flush(&mut packing, &mut pool, &send) {
                        break 'items;
                    }
                    pack_file(
                        path,
                        len,
                        &mut packing,
                        &mut pool,
                        &mut counts,
                        progress,
                        warn,
                    );
                    continue;
                }
            }
        }
        // Anything else goes on its own, after what was packed.
        if !flush(&mut packing, &mut pool, &send) {
            break 'items;
        }
        match item {
            Item::Bytes { data, .. } => {
                let mut off = 0;
                while off < data.len() {
                    let end = (off + chunk_size).min(data.len());
                    let block = pool.shared(data, off..end);
                    if !send(&|| Msg::Chunk(block.clone())) {
                        break 'items;
                    }
                    off = end;
                }
                counts.bytes += data.len() as u64;
                progress.inc(data.len() as u64);
            }
            Item::Stdin => {
                let mut stdin = io::stdin().lock();
                if send_stream(
                    &mut stdin,
                    "-",
                    &mut pool,
                    &mut counts,
                    &send,
                    abort,
                    progress,
                    warn,
                )
                .is_err()
                {
                    break 'items;
                }
            }
            Item::Tar { path, .. } => {
                let name = path
                    .as_ref()
                    .map_or_else(|| "-".to_string(), |p| p.display().to_string());
                let reader: Box<dyn Read> = match path {
                    None => Box::new(io::stdin().lock()),
                    Some(p) => match File::open(p) {
                        Ok(f) => Box::new(f),
                        Err(e) => {
                            counts.skip(name.clone(), &format!("skipping '{name}': {e}"), warn);
                            continue;
                        }
                    },
                };
                let mut archive = tar::Archive::new(reader);
                let entries = match archive.entries() {
                    Ok(e) => e,
                    Err(e) => {
                        let msg = format!("skipping '{name}': not a tar stream: {e}");
                        counts.skip(name.clone(), &msg, warn);
                        continue;
                    }
                };
                for entry in entries {
                    let mut entry = match entry {
                        Ok(e) => e,
                        Err(e) => {
                            counts.partial += 1;
                            name_unreadable(&mut counts.unreadable, name.clone());
                            warn(&format!("error reading tar stream '{name}': {e}"));
                            break;
                        }
                    };
                    if !entry.header().entry_type().is_file() {
                        continue;
                    }
                    let member = format!(
                        "{name}:{}",
                        entry
                            .path()
                            .map_or_else(|_| "?".to_string(), |p| p.display().to_string())
                    );
                    if send_stream(
                        &mut entry,
                        &member,
                        &mut pool,
                        &mut counts,
                        &send,
                        abort,
                        progress,
                        warn,
                    )
                    .is_err()
                    {
                        break 'items;
                    }
                    if !send(&|| Msg::End) {
                        break 'items;
                    }
                    counts.files += 1;
                }
                continue;
            }
            Item::File {
                path,
                len,
                unsized_,
            } => {
                let file = match File::open(path) {
                    Ok(f) => f,
                    Err(e) => {
                        let name = path.display().to_string();
                        counts.skip(name.clone(), &format!("skipping '{name}': {e}"), warn);
                        continue;
                    }
                };
                let mut r = file.take(*len);
                let name = path.display().to_string();
                if send_stream(
                    &mut r,
                    &name,
                    &mut pool,
                    &mut counts,
                    &send,
                    abort,
                    progress,
                    warn,
                )
                .is_err()
                {
                    break 'items;
                }
                // A file of unknown size read up to its cap: say so if it goes on.
                if *unsized_ && r.limit() == 0 {
                    let mut probe = [0u8; 1];
                    if matches!(r.into_inner().read(&mut probe), Ok(1)) {
                        counts.partial += 1;
                        warn(&format!(
                            "'{}' reports no size and holds more than {}: only that much is ingested",
                            path.display(),
                            human_bytes(*len)
                        ));
                    }
                }
            }
        }
        if !send(&|| Msg::End) {
            break;
        }
        counts.files += 1;
    }
    flush(&mut packing, &mut pool, &send);
    counts
}

/// Sends the block being packed, if it holds anything. False when the workers are gone.
fn flush(
    packing: &mut Option<Arc<Block>>,
    pool: &mut BufferPool,
    send: &dyn Fn(&dyn Fn() -> Msg) -> bool,
) -> bool {
    let Some(block) = packing.take() else {
        return true;
    };
    let ok = block.segs.is_empty() || send(&|| Msg::Chunk(block.clone()));
    pool.give(block);
    ok
}

/// Reads the file at `path`, of `len` bytes (at most what is left of the block being
/// packed, which is taken from the pool if there is none), whole into the block.
fn pack_file(
    path: &std::path::Path,
    len: usize,
    packing: &mut Option<Arc<Block>>,
    pool: &mut BufferPool,
    counts: &mut ReadCounts,
    progress: &ProgressBar,
    warn: &mut dyn FnMut(&str),
) {
    let name = || path.display().to_string();
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => {
            counts.skip(name(), &format!("skipping '{}': {e}", name()), warn);
            return;
        }
    };
    let block = packing.get_or_insert_with(|| pool.take());
    let block = Arc::get_mut(block).expect("a block is not sent while it is packed");
    let start = block.filled();
    let BlockData::Owned(data) = &mut block.data else {
        unreachable!("pooled blocks own their buffer")
    };
    let (n, err) = fill(&mut file.take(len as u64), &mut data[start..start + len]);
    block.push(n, true, pool.pyramid);
    counts.bytes += n as u64;
    progress.inc(n as u64);
    if let Some(e) = err {
        counts.partial += 1;
        name_unreadable(&mut counts.unreadable, name());
        warn(&format!(
            "error reading '{}' after {n} bytes: {e} (the bytes read are ingested)",
            name()
        ));
    }
    counts.files += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_split_caps_known_sets_and_shares_the_rest() {
        const M: u64 = 1 << 20;
        // Everything fits: each set gets what it wants (at least the minimum).
        let sets = [
            (4.0, Some(100 * M / 8)),
            (1.0, Some(10 * M / 8)),
            (1.0, Some(0)),
        ];
        assert_eq!(
            split_budget(1000 * M, &sets),
            [100 * M, 10 * M, MIN_SET_BUDGET]
        );
        // Too little: the small set is capped at its want, the rest shared 4:1.
        let sets = [
            (4.0, Some(1000 * M / 8)),
            (1.0, Some(1000 * M / 8)),
            (1.0, Some(8 * M / 8)),
        ];
        let b = split_budget(208 * M, &sets);
        assert_eq!(b[2], 8 * M);
        assert_eq!(b[0], 160 * M);
        assert_eq!(b[1], 40 * M);
        // Unknown wants (streams) share by weight.
        let b = split_budget(100 * M, &[(3.0, None), (1.0, None)]);
        assert_eq!(b, [75 * M, 25 * M]);
        assert!(b.iter().sum::<u64>() <= 100 * M);
    }
}
