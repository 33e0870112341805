//! `hicamp dedup`: ingest files (or the built-in workload) into one HICAMP memory per line size
//! and into the page-dedup baseline, and report the footprints.
//!
//! # Pipeline
//!
//! ```text
//!   reader (calling thread)              workers (scoped threads, each owns some sinks)
//!   walk -> open -> read 4 MiB chunks ---> chunk, chunk, ..., end-of-item --> Memory(16 B): append, freeze
//!            (one buffer, shared by Arc,                                  --> Memory(4 KiB) ...
//!             broadcast to every worker)                                  --> PageDedup (KSM model)
//! ```
//!
//! Every file is read once, whatever the number of line sizes, and streamed: a file never has
//! to fit in RAM. Each sink is fed by exactly one worker, in input order, so the result does
//! not depend on the number of threads. Each item becomes one segment, and every segment stays
//! alive until the memory's statistics are taken (they are the data being measured).

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::Arc;

use hicamp::footprint::{human_bytes, LineSizeReport, ZeroLineCounter};
use hicamp::{Config, Memory, Segment, SegmentMut};
use indicatif::ProgressBar;

use super::pagededup::{PageDedup, PageDedupReport, DEFAULT_PAGE_SIZE};
use super::report::{DedupReport, InputReport};
use crate::workload::{self, WorkloadConfig};

/// Line sizes measured when none are given: every size HICAMP allows.
pub const DEFAULT_LINE_SIZES: [usize; 9] = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096];

/// Bytes read (and handed to the memories) at a time.
pub const DEFAULT_CHUNK_SIZE: usize = 4 << 20;

/// Chunks in flight per worker beyond the one it is processing.
const CHANNEL_DEPTH: usize = 2;

/// Most bytes read from one file whose size is not known (a regular file that reports size 0,
/// as the pseudo-files of `/proc` and `/sys` do): it is read to its end, up to this.
pub const UNSIZED_FILE_CAP: u64 = 64 << 10;

/// Most bytes read from all files of unknown size together, so that the memories' sizing
/// (done before reading) stays bounded on any input.
pub const UNSIZED_TOTAL_CAP: u64 = 16 << 20;

/// How directories are walked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalkOptions {
    /// Follow symbolic links met inside directories (`du -L`). Operands are always followed
    /// (`du -H`); by default links below them are not (`du -P`), so that `/proc/self/root`
    /// does not lead to `/`.
    pub follow_links: bool,
    /// Enter directories on other file systems than their operand's (by default they are
    /// left out and counted, as `du -x` does).
    pub cross_file_systems: bool,
}

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
// Inputs

/// One item to ingest: one segment.
#[derive(Debug, Clone)]
pub enum Item {
    /// A regular file, read when ingested; `len` is its size when it was found (at most that
    /// many bytes are read, so a growing file cannot overrun the memories' sizing).
    File {
        /// The path.
        path: PathBuf,
        /// Size when found; for a file of unknown size, the most that will be read of it.
        len: u64,
        /// The file reported size 0 (a `/proc` or `/sys` pseudo-file, or an empty file): it
        /// is read to its end, up to `len`.
        unsized_: bool,
    },
    /// Bytes already in memory (a workload item).
    Bytes {
        /// A name for messages.
        name: String,
        /// The bytes.
        data: Arc<Vec<u8>>,
    },
}

impl Item {
    /// Size in bytes (as found, for files).
    pub fn len(&self) -> u64 {
        match self {
            Item::File { len, .. } => *len,
            Item::Bytes { data, .. } => data.len() as u64,
        }
    }

    /// True when the item holds no byte.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where the items came from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Files and directories named on the command line.
    Paths(Vec<PathBuf>),
    /// The built-in workload, with a description.
    Workload(String),
}

/// The items to ingest, in a deterministic order, and what was left out while finding them.
#[derive(Debug, Clone)]
pub struct InputSet {
    /// Where they came from.
    pub source: Source,
    /// The items, in ingestion order.
    pub items: Vec<Item>,
    /// Paths that could not be examined or were not regular files or directories.
    pub skipped: u64,
    /// Paths naming a file or directory already found (ingested once).
    pub duplicates: u64,
    /// Symbolic links below the operands that were not followed.
    pub links_not_followed: u64,
    /// Directories on another file system than their operand's, not entered.
    pub other_file_systems: u64,
}

impl InputSet {
    /// The built-in workload ([`workload::default_workload`] with its default configuration).
    pub fn default_workload() -> InputSet {
        let cfg = WorkloadConfig::default();
        let items = workload::default_workload(&cfg);
        let description = format!(
            "built-in default workload (PASTE-style traffic, seed {:#x}): {} RPC requests and \
             {} WAL posts over {} connections each, {} static-object fetches, 2 netmap buffer \
             snapshots",
            cfg.seed, cfg.rpc_requests, cfg.wal_posts, cfg.connections, cfg.static_fetches
        );
        InputSet::from_workload(items, description)
    }

    /// Workload items, each one segment.
    pub fn from_workload(items: Vec<workload::Item>, description: String) -> InputSet {
        InputSet {
            source: Source::Workload(description),
            items: items
                .into_iter()
                .map(|i| Item::Bytes {
                    name: i.name,
                    data: Arc::new(i.data),
                })
                .collect(),
            skipped: 0,
            duplicates: 0,
            links_not_followed: 0,
            other_file_systems: 0,
        }
    }

    /// The regular files named by `paths`, directories walked recursively (entries in byte
    /// order of their names), as `walk` says: operands are followed if they are symbolic
    /// links, links below them only with [`WalkOptions::follow_links`], and directories on
    /// other file systems are entered only with [`WalkOptions::cross_file_systems`]. A
    /// directory or file already found (a link loop, a hard link, a repeated operand) is
    /// ingested once. An operand that cannot be examined, opened or listed is an error;
    /// anything below it that cannot be read is reported through `warn` and counted as
    /// skipped.
    pub fn from_paths(
        paths: &[PathBuf],
        walk: WalkOptions,
        warn: &mut dyn FnMut(&str),
    ) -> Result<InputSet, DedupError> {
        let mut w = Walker {
            items: Vec::new(),
            skipped: 0,
            duplicates: 0,
            links_not_followed: 0,
            other_file_systems: 0,
            unsized_budget: UNSIZED_TOTAL_CAP,
            seen_files: HashSet::new(),
            seen_dirs: HashSet::new(),
            opts: walk,
            device: None,
            warn,
        };
        // Check every operand first, so that a typo or an unreadable operand fails fast,
        // before any walking.
        let mut metas = Vec::with_capacity(paths.len());
        for p in paths {
            let access = |source| DedupError::Access {
                path: p.clone(),
                source,
            };
            let meta = fs::metadata(p).map_err(access)?;
            if meta.is_dir() {
                fs::read_dir(p).map_err(access)?;
            } else if meta.is_file() {
                File::open(p).map_err(access)?;
            }
            metas.push(meta);
        }
        let mut ancestors = Vec::new();
        for (p, meta) in paths.iter().zip(metas) {
            w.device = file_key(&meta).map(|(dev, _)| dev);
            w.visit(p, &meta, &mut ancestors);
        }
        Ok(InputSet {
            source: Source::Paths(paths.to_vec()),
            items: w.items,
            skipped: w.skipped,
            duplicates: w.duplicates,
            links_not_followed: w.links_not_followed,
            other_file_systems: w.other_file_systems,
        })
    }

    /// Total size of the items (as found).
    pub fn total_bytes(&self) -> u64 {
        self.items.iter().map(Item::len).sum()
    }
}

/// Identity of a file or directory (device, inode), where the platform has one.
type FileKey = (u64, u64);

#[cfg(unix)]
fn file_key(meta: &fs::Metadata) -> Option<FileKey> {
    use std::os::unix::fs::MetadataExt;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn file_key(_meta: &fs::Metadata) -> Option<FileKey> {
    None
}

struct Walker<'w> {
    items: Vec<Item>,
    skipped: u64,
    duplicates: u64,
    links_not_followed: u64,
    other_file_systems: u64,
    /// What is left of [`UNSIZED_TOTAL_CAP`].
    unsized_budget: u64,
    seen_files: HashSet<FileKey>,
    seen_dirs: HashSet<FileKey>,
    opts: WalkOptions,
    /// The file system of the operand being walked.
    device: Option<u64>,
    warn: &'w mut dyn FnMut(&str),
}

impl Walker<'_> {
    fn skip(&mut self, msg: String) {
        self.skipped += 1;
        (self.warn)(&msg);
    }

    /// `meta` follows symbolic links. `ancestors` are the directories being walked above.
    fn visit(&mut self, path: &Path, meta: &fs::Metadata, ancestors: &mut Vec<FileKey>) {
        let key = file_key(meta);
        if meta.is_file() {
            if let Some(k) = key {
                if !self.seen_files.insert(k) {
                    self.duplicates += 1;
                    return;
                }
            }
            let unsized_ = meta.len() == 0;
            let len = if unsized_ {
                let len = self.unsized_budget.min(UNSIZED_FILE_CAP);
                self.unsized_budget -= len;
                len
            } else {
                meta.len()
            };
            self.items.push(Item::File {
                path: path.to_path_buf(),
                len,
                unsized_,
            });
        } else if meta.is_dir() {
            if let (Some((dev, _)), Some(root), false) =
                (key, self.device, self.opts.cross_file_systems)
            {
                if dev != root {
                    self.other_file_systems += 1;
                    (self.warn)(&format!(
                        "not entering '{}': another file system (--cross-file-systems enters it)",
                        path.display()
                    ));
                    return;
                }
            }
            if let Some(k) = key {
                if ancestors.contains(&k) {
                    self.duplicates += 1;
                    (self.warn)(&format!(
                        "skipping '{}': file system loop (a symbolic link to a directory above it)",
                        path.display()
                    ));
                    return;
                }
                if !self.seen_dirs.insert(k) {
                    self.duplicates += 1;
                    return;
                }
            }
            self.walk_dir(path, key, ancestors);
        } else {
            self.skip(format!(
                "skipping '{}': not a regular file or directory",
                path.display()
            ));
        }
    }

    fn walk_dir(&mut self, dir: &Path, key: Option<FileKey>, ancestors: &mut Vec<FileKey>) {
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) => {
                return self.skip(format!("skipping directory '{}': {e}", dir.display()));
            }
        };
        let mut entries = Vec::new();
        for entry in rd {
            match entry {
                Ok(entry) => entries.push(entry.path()),
                Err(e) => self.skip(format!("skipping an entry of '{}': {e}", dir.display())),
            }
        }
        entries.sort_unstable();
        ancestors.extend(key);
        for p in entries {
            let meta = if self.opts.follow_links {
                fs::metadata(&p)
            } else {
                fs::symlink_metadata(&p)
            };
            match meta {
                Ok(meta) if meta.file_type().is_symlink() => self.links_not_followed += 1,
                Ok(meta) => self.visit(&p, &meta, ancestors),
                Err(e) => self.skip(format!("skipping '{}': {e}", p.display())),
            }
        }
        if key.is_some() {
            ancestors.pop();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Ingestion

/// How to ingest.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Line sizes, one memory each (reported in ascending order, without repeats).
    pub line_sizes: Vec<usize>,
    /// Worker threads (at least 1; more than the number of memories plus one is useless).
    pub threads: usize,
    /// Read size: a positive multiple of 4096 (so that chunks keep every line and page
    /// boundary of a file).
    pub chunk_size: usize,
    /// Line capacity of every memory; `None` sizes each from the input ([`capacity_for`]).
    pub capacity_lines: Option<u64>,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            line_sizes: DEFAULT_LINE_SIZES.to_vec(),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            chunk_size: DEFAULT_CHUNK_SIZE,
            capacity_lines: None,
        }
    }
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

/// What one item's reading sends to the workers.
enum Msg {
    /// The next bytes of the current item.
    Chunk(Arc<Vec<u8>>, Range<usize>),
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
}

enum SinkOutput {
    Line(usize, Result<LineSizeReport, hicamp::Error>),
    Page(PageDedupReport),
}

impl Sink {
    /// Relative cost per byte, for spreading sinks over workers: a fixed cost per line plus a
    /// cost per byte.
    fn weight(&self) -> f64 {
        let unit = match self {
            Sink::Line(l) => l.mem.line_size(),
            Sink::Page(p) => p.page_size(),
        };
        1.0 / unit as f64 + 1.0 / 400.0
    }

    fn apply(&mut self, msg: &Msg, progress: &ProgressBar) -> bool {
        match (self, msg) {
            (Sink::Line(l), Msg::Chunk(buf, r)) => {
                l.chunk(&buf[r.clone()]);
                progress.inc(r.len() as u64);
                l.error.is_none()
            }
            (Sink::Line(l), Msg::End) => {
                l.end();
                l.error.is_none()
            }
            // Chunks keep page boundaries (chunk size is a multiple of the page size), so
            // adding chunk by chunk is adding the whole file.
            (Sink::Page(p), Msg::Chunk(buf, r)) => {
                p.add(&buf[r.clone()]);
                true
            }
            (Sink::Page(_), Msg::End) => true,
        }
    }

    fn finish(self) -> SinkOutput {
        match self {
            Sink::Line(l) => {
                let ls = l.mem.line_size();
                SinkOutput::Line(ls, l.report())
            }
            Sink::Page(p) => SinkOutput::Page(p.report()),
        }
    }
}

/// Reusable read buffers: a buffer is free again when no worker holds it any more.
struct BufferPool {
    size: usize,
    bufs: Vec<Arc<Vec<u8>>>,
}

impl BufferPool {
    fn take(&mut self) -> Arc<Vec<u8>> {
        if let Some(i) = self.bufs.iter().position(|b| Arc::strong_count(b) == 1) {
            return self.bufs.swap_remove(i);
        }
        Arc::new(vec![0; self.size])
    }

    fn give(&mut self, buf: Arc<Vec<u8>>) {
        self.bufs.push(buf);
    }
}

/// Reads until `buf` is full or the reader ends. Returns the bytes read, and the error that
/// stopped it early, if any.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> (usize, Option<io::Error>) {
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

/// Ingests `input` into one memory per line size and into the 4 KiB page baseline.
///
/// `progress` is advanced by the bytes each memory has taken in (its length is set here to
/// the input size times the number of line sizes); pass [`ProgressBar::hidden`] for none.
/// Files that cannot be opened or read are reported through `warn` (and counted as skipped or
/// partial); every other failure is an error.
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

    let mut sinks = Vec::with_capacity(line_sizes.len() + 1);
    for &ls in &line_sizes {
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

    progress.set_length(input.total_bytes() * line_sizes.len() as u64);
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
                        if !sink.apply(&msg, progress) {
                            abort.store(true, Relaxed);
                        }
                    }
                }
                group
                    .into_iter()
                    .map(|(i, s)| (i, s.finish()))
                    .collect::<Vec<_>>()
            }));
        }
        let counts = read_all(input, opts.chunk_size, &senders, &abort, warn);
        drop(senders);
        let mut outputs = Vec::new();
        let mut panicked = false;
        for h in handles {
            match h.join() {
                Ok(o) => outputs.extend(o),
                Err(_) => panicked = true,
            }
        }
        (counts, (!panicked).then_some(outputs))
    });
    let mut outputs = outputs.ok_or(DedupError::WorkerPanicked)?;
    outputs.sort_by_key(|(i, _)| *i);

    let mut reports = Vec::with_capacity(line_sizes.len());
    let mut page = None;
    for (_, out) in outputs {
        match out {
            SinkOutput::Line(line_size, r) => {
                reports.push(r.map_err(|source| DedupError::Memory { line_size, source })?)
            }
            SinkOutput::Page(p) => page = Some(p),
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
    };
    Ok(DedupReport {
        input: input_report,
        line_sizes: reports,
        page_baseline,
    })
}

/// Reads every item and broadcasts its chunks to the workers. Stops early when a worker
/// failed (`abort`) or is gone.
fn read_all(
    input: &InputSet,
    chunk_size: usize,
    senders: &[mpsc::SyncSender<Msg>],
    abort: &AtomicBool,
    warn: &mut dyn FnMut(&str),
) -> ReadCounts {
    let mut counts = ReadCounts::default();
    let mut pool = BufferPool {
        size: chunk_size,
        bufs: Vec::new(),
    };
    let send =
        |make: &dyn Fn() -> Msg| -> bool { senders.iter().all(|tx| tx.send(make()).is_ok()) };
    'items: for item in &input.items {
        if abort.load(Relaxed) {
            break;
        }
        match item {
            Item::Bytes { data, .. } => {
                let mut off = 0;
                while off < data.len() {
                    let end = (off + chunk_size).min(data.len());
                    if !send(&|| Msg::Chunk(data.clone(), off..end)) {
                        break 'items;
                    }
                    off = end;
                }
                counts.bytes += data.len() as u64;
            }
            Item::File {
                path,
                len,
                unsized_,
            } => {
                let file = match File::open(path) {
                    Ok(f) => f,
                    Err(e) => {
                        counts.skipped += 1;
                        warn(&format!("skipping '{}': {e}", path.display()));
                        continue;
                    }
                };
                let mut r = file.take(*len);
                loop {
                    if abort.load(Relaxed) {
                        break 'items;
                    }
                    let mut buf = pool.take();
                    let (n, err) = fill(&mut r, Arc::get_mut(&mut buf).expect("buffer is free"));
                    let shared = buf.clone();
                    pool.give(buf);
                    if n > 0 && !send(&|| Msg::Chunk(shared.clone(), 0..n)) {
                        break 'items;
                    }
                    counts.bytes += n as u64;
                    if let Some(e) = err {
                        counts.partial += 1;
                        warn(&format!(
                            "error reading '{}' after {} bytes: {e} (the bytes read are ingested)",
                            path.display(),
                            *len - r.limit()
                        ));
                        break;
                    }
                    if n < chunk_size {
                        break;
                    }
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
    counts
}
