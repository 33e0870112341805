//! `hicamp compare`: HICAMP segments against PASTE's buffer model, PASTE with copy, and a Linux
//! epoll server, on PASTE's RPC and WAL workloads (issue 17).
//!
//! | file            | job                                                                |
//! |-----------------|--------------------------------------------------------------------|
//! | [`paste`]       | PASTE's buffer model: 2 KiB pool, rings, extra buffers, the WALs   |
//! | [`region`]      | the pool's region: DRAM or a mapped file, hicamp's durability modes |
//! | [`traffic`]     | the same frames for every model (rpc, wal, wal-repeat)             |
//! | [`models`]      | the four servers' real operations                                  |
//! | [`report`]      | the tables beside PASTE's published numbers, and the JSON          |
//! | [`plots`]       | the SVG plots                                                      |
//! | [`sim_link`]    | HICAMP's whole path: phttpd on segstack over the sim link          |
//! | [`recovery`]    | SIGKILL mid-run, restart, count acknowledged against recovered     |
//! | [`end_to_end`]  | `--end-to-end`: the servers under `wrk` over TAP (root)            |
//!
//! A buffer-model run drives one model with closed-loop batches (one request per connection
//! per batch) until its request count or time budget is spent. Requests/s is the connections
//! over the median batch's service time (the server's time alone: arrival is the NIC's or the
//! sending kernel's work and is timed apart; the median keeps preemptions out); a request's latency runs from the start of its batch's service to its answer being
//! queued (PASTE answers a batch at the next poll, after its one fence).

pub mod end_to_end;
pub mod models;
pub mod paste;
pub mod plots;
pub mod recovery;
#[allow(unsafe_code)]
pub mod region;
pub mod report;
pub mod sim_link;
pub mod traffic;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hicamp::Durability;
use serde::Serialize;

use models::{HicampModel, LinuxModel, Model, ModelError, ModelKind, PasteModel};
use paste::copy_entry_len;
use region::Region;
use traffic::{Traffic, Workload};

/// The emulated persistent-memory write latency of the `pm` runs (PASTE's 10 us experiment).
pub const PM_LATENCY_NS: u32 = 10_000;

/// DRAM or emulated persistent memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemKind {
    /// No added latency.
    Dram,
    /// 10 us spun per barrier.
    Pm,
}

impl MemKind {
    /// Name as in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            MemKind::Dram => "dram",
            MemKind::Pm => "pm",
        }
    }
    pub(crate) fn latency_ns(self) -> u32 {
        match self {
            MemKind::Dram => 0,
            MemKind::Pm => PM_LATENCY_NS,
        }
    }
}

/// What a `compare` run does.
#[derive(Debug, Clone)]
pub struct Options {
    /// Directory for the memory, pool and log files (tmpfs by default).
    pub dir: PathBuf,
    /// Seed of the traffic.
    pub seed: u64,
    /// Server time each run may use.
    pub budget: Duration,
    /// Most requests per run.
    pub max_requests: u64,
    /// Connection counts.
    pub connections: Vec<usize>,
    /// Workloads.
    pub workloads: Vec<Workload>,
    /// Models.
    pub models: Vec<ModelKind>,
    /// Memory kinds.
    pub memories: Vec<MemKind>,
    /// WAL posts generated for `wal-repeat`.
    pub posts: usize,
    /// Records each server logs before the recovery experiment's SIGKILL.
    pub recovery_records: u64,
    /// HICAMP commits once per RX batch (PASTE's one fence per batch) rather than once per
    /// record (phttpd's policy).
    pub hicamp_group_commit: bool,
}

impl Options {
    /// The built-in default (about a minute on a quiet machine).
    pub fn default_in(dir: PathBuf) -> Options {
        Options {
            dir,
            seed: 0x5EED_2024_0000_0017,
            budget: Duration::from_millis(300),
            max_requests: 20_000,
            connections: vec![1, 50, 100],
            workloads: Workload::ALL.to_vec(),
            models: ModelKind::ALL.to_vec(),
            memories: vec![MemKind::Dram, MemKind::Pm],
            posts: 20_000,
            recovery_records: 3_000,
            hicamp_group_commit: true,
        }
    }

    /// A reduced setting for tests (`--quick`).
    pub fn quick_in(dir: PathBuf) -> Options {
        Options {
            budget: Duration::from_millis(30),
            max_requests: 1_000,
            posts: 1_000,
            recovery_records: 400,
            ..Options::default_in(dir)
        }
    }
}

/// HICAMP's line operations per request.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct LineOps {
    /// Leaf and interior line writes (arrival's deposit included).
    pub lines_written_per_req: f64,
    /// Writes that found their line already stored (all-zero lines included).
    pub lines_deduplicated_per_req: f64,
    /// Lines created.
    pub lines_created_per_req: f64,
    /// Received lines a record referenced without reading or copying them.
    pub lines_shared_per_req: f64,
    /// Stored leaf lines read (the parse window's, and partial lines a splice assembled).
    pub lines_read_per_req: f64,
    /// Interior lines (DAG nodes) visited by those reads and by the body's splice.
    pub dag_nodes_visited_per_req: f64,
}

/// One run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// `hicamp`, `paste`, `paste-copy` or `linux`.
    pub model: &'static str,
    /// `rpc`, `wal` or `wal-repeat`.
    pub workload: &'static str,
    /// Connections (requests per batch).
    pub connections: usize,
    /// `dram` or `pm`.
    pub memory: &'static str,
    /// `buffer-model` or `end-to-end`.
    pub kind: &'static str,
    /// What the timed part includes.
    pub includes: &'static str,
    /// Requests answered.
    pub requests: u64,
    /// Requests per second of server time: connections over the median batch's service
    /// time (robust to preemption on a shared machine).
    pub req_per_s: f64,
    /// Requests over the total service time (preemptions included).
    pub req_per_s_total: f64,
    /// Batches served.
    pub batches: u64,
    /// Mean latency, microseconds.
    pub mean_us: f64,
    /// 99th-percentile latency, microseconds.
    pub p99_us: f64,
    /// Request payload bytes copied per request.
    pub copied_bytes_per_req: f64,
    /// Header bytes copied into a parse window per request.
    pub header_bytes_copied_per_req: f64,
    /// Response bytes written per request.
    pub response_bytes_copied_per_req: f64,
    /// Cache lines flushed per request.
    pub flushed_lines_per_req: f64,
    /// Fences per request.
    pub fences_per_req: f64,
    /// WAL records logged.
    pub records: u64,
    /// Bytes held for the logged records after the run.
    pub footprint_bytes: u64,
    /// `footprint_bytes / records`.
    pub memory_per_record_bytes: Option<f64>,
    /// Arrival time per request, ns (NIC DMA, deposit or loopback send; not in req/s).
    pub arrival_ns_per_req: f64,
    /// HICAMP only.
    pub line_ops: Option<LineOps>,
    /// HICAMP only: `per-batch` (one durable map commit per RX batch) or `per-record`.
    pub commit: Option<&'static str>,
}

/// Footprint against records logged, for one model and workload.
#[derive(Debug, Clone, Serialize)]
pub struct FootprintSeries {
    /// Model.
    pub model: &'static str,
    /// Workload.
    pub workload: &'static str,
    /// `(records, bytes)`.
    pub points: Vec<(u64, u64)>,
}

/// What the timed part of each model includes.
pub fn includes(model: ModelKind) -> &'static str {
    match model {
        ModelKind::Hicamp => {
            "phttpd's operations on hicamp: parse window copy, splice of the body's received lines into a record, durable segment-map insert per RX batch (or per record: --hicamp-commit record) = flush of new lines + entry, 2 sfences, PM latency per commit; answer by snapshot; release; not TCP; arrival (nicdma-style deposit) timed apart"
        }
        ModelKind::Paste => {
            "PASTE zero-copy: parse in place, flush body in place, 8 B record appended + flushed, NS_BUF_CHANGED swap, reply written to TX buffer, 1 sfence + PM latency per batch, txsync, release; not the kernel TCP stack; arrival (NIC write into the RX buffer) timed apart"
        }
        ModelKind::PasteCopy => {
            "PASTE with copy: as PASTE but the body memcpy'd into the log (entry = 8 B length + body, line aligned) and flushed; no swap"
        }
        ModelKind::Linux => {
            "kernel epoll server over loopback TCP: epoll_wait, read() (copy), parse, memcpy into an mmap'd log file + line flushes, sfence + PM latency per request (PASTE's socket mode), write() of the reply; the clients' send is timed apart"
        }
    }
}

/// The memory of a HICAMP server run: a new file at `file` (any earlier one removed) when
/// it logs (`wal`), else a DRAM memory of `cfg` without durability.
pub(crate) fn server_memory(
    file: &Path,
    cfg: hicamp::Config,
    wal: bool,
) -> Result<hicamp::Memory, String> {
    let _ = std::fs::remove_file(file);
    if wal {
        hicamp::Memory::create(file, cfg)
    } else {
        hicamp::Memory::new(hicamp::Config {
            durability: hicamp::Durability::None,
            ..cfg
        })
    }
    .map_err(|e| e.to_string())
}

/// Makes the directory for a run's files; the caller removes what it made.
/// Directories that runs killed before their clean-up (Ctrl-C) left behind,
/// named for a process that no longer exists, are removed first.
pub fn default_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    remove_stale_dirs(&base);
    base.join(format!("hicamp-compare-{}", std::process::id()))
}

/// Removes `hicamp-compare-PID` directories under `base` whose PID is not a
/// running process.
fn remove_stale_dirs(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("hicamp-compare-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn build(
    model: ModelKind,
    workload: Workload,
    connections: usize,
    mem: MemKind,
    opts: &Options,
) -> Result<Box<dyn Model>, ModelError> {
    let wal = workload.is_wal();
    let lat = mem.latency_ns();
    let dir = opts.dir.clone();
    let region = move |name: &str, len: usize| -> std::io::Result<Region> {
        if wal {
            let p = dir.join(name);
            let _ = std::fs::remove_file(&p);
            Region::file(&p, len, Durability::CacheLine, lat)
        } else {
            Region::anon(len, Durability::None, 0)
        }
    };
    let records = opts.max_requests + connections as u64;
    Ok(match model {
        ModelKind::Hicamp => {
            let m = HicampModel::memory(&opts.dir, wal, lat, records)?;
            let mut h = HicampModel::new(m, wal)?;
            h.set_group_commit(opts.hicamp_group_commit);
            Box::new(h)
        }
        ModelKind::Paste | ModelKind::PasteCopy => {
            // Zero-copy keeps a buffer per record; the copy WAL keeps none.
            let extra = if model == ModelKind::Paste {
                records.min(u64::from(u32::MAX) / 2) as u32
            } else {
                0
            };
            let w = wal.then_some(model == ModelKind::Paste);
            Box::new(PasteModel::new(w, extra, records as usize, region)?)
        }
        ModelKind::Linux => {
            let log = if wal {
                Some(region(
                    "linux.log",
                    records as usize * copy_entry_len(1024),
                )?)
            } else {
                None
            };
            Box::new(LinuxModel::new(connections, log)?)
        }
    })
}

/// Runs one model on one workload; returns its figures and its footprint series.
pub fn run_one(
    model: ModelKind,
    workload: Workload,
    connections: usize,
    mem: MemKind,
    traffic: &Traffic,
    opts: &Options,
) -> Result<(Run, FootprintSeries), ModelError> {
    std::fs::create_dir_all(&opts.dir)?;
    let mut m = build(model, workload, connections, mem, opts)?;
    let conns: Vec<usize> = (0..connections).collect();
    let step = (opts.max_requests / 16).max(1);
    let mut next_sample = step;
    let mut points = vec![(0, 0)];
    let mut lat: Vec<u64> = Vec::new();
    let mut done = Vec::with_capacity(connections);
    let mut served = Duration::ZERO;
    let mut batch_ns: Vec<u64> = Vec::new();
    let wall = Instant::now();
    let mut k = 0u64;
    while k < opts.max_requests && served < opts.budget && wall.elapsed() < opts.budget * 8 {
        let frames: Vec<(usize, Vec<u8>)> = conns
            .iter()
            .map(|&c| (c, traffic.frame(k + c as u64, c)))
            .collect();
        k += connections as u64;
        m.arrive(&frames)?;
        let t0 = Instant::now();
        m.serve(t0, &mut done)?;
        let d = t0.elapsed();
        served += d;
        batch_ns.push(d.as_nanos() as u64);
        lat.append(&mut done);
        m.settle(&conns)?;
        let c = m.counts();
        if workload.is_wal() && c.records >= next_sample {
            points.push((c.records, m.footprint()));
            next_sample += step;
        }
    }
    let c = m.counts();
    let n = c.requests.max(1) as f64;
    lat.sort_unstable();
    let mean = lat.iter().sum::<u64>() as f64 / lat.len().max(1) as f64;
    let p99 = lat
        .get(((lat.len() as f64 * 0.99).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(0);
    batch_ns.sort_unstable();
    let median_batch = batch_ns
        .get(batch_ns.len() / 2)
        .copied()
        .unwrap_or(0)
        .max(1);
    let footprint = m.footprint();
    if workload.is_wal() && points.last().is_some_and(|p| p.0 != c.records) {
        points.push((c.records, footprint));
    }
    let line_ops = (model == ModelKind::Hicamp).then(|| LineOps {
        lines_written_per_req: c.lines_written as f64 / n,
        lines_deduplicated_per_req: c.lines_deduplicated as f64 / n,
        lines_created_per_req: c.lines_created as f64 / n,
        lines_shared_per_req: c.lines_shared as f64 / n,
        lines_read_per_req: c.lines_read as f64 / n,
        dag_nodes_visited_per_req: c.dag_nodes_visited as f64 / n,
    });
    drop(m);
    for f in [
        "hicamp.mem",
        "paste.pool",
        "paste.log",
        "paste-copy.log",
        "linux.log",
    ] {
        let _ = std::fs::remove_file(opts.dir.join(f));
    }
    let run = Run {
        model: model.name(),
        workload: workload.name(),
        connections,
        memory: mem.name(),
        kind: "buffer-model",
        includes: includes(model),
        requests: c.requests,
        req_per_s: connections as f64 * 1e9 / median_batch as f64,
        req_per_s_total: c.requests as f64 / served.as_secs_f64().max(1e-9),
        batches: batch_ns.len() as u64,
        mean_us: mean / 1e3,
        p99_us: p99 as f64 / 1e3,
        copied_bytes_per_req: c.copied_bytes as f64 / n,
        header_bytes_copied_per_req: c.header_bytes_copied as f64 / n,
        response_bytes_copied_per_req: c.response_bytes_copied as f64 / n,
        flushed_lines_per_req: c.flushed_lines as f64 / n,
        fences_per_req: c.fences as f64 / n,
        records: c.records,
        footprint_bytes: footprint,
        memory_per_record_bytes: (c.records > 0).then(|| footprint as f64 / c.records as f64),
        arrival_ns_per_req: c.arrival_ns as f64 / n,
        line_ops,
        commit: (model == ModelKind::Hicamp && workload.is_wal()).then_some(
            if opts.hicamp_group_commit {
                "per-batch"
            } else {
                "per-record"
            },
        ),
    };
    Ok((
        run,
        FootprintSeries {
            model: model.name(),
            workload: workload.name(),
            points,
        },
    ))
}

/// Every buffer-model run of `opts`; `progress` is called after each with (done, total, run).
pub fn run_all(
    opts: &Options,
    mut progress: impl FnMut(usize, usize, &Run),
) -> Result<(Vec<Run>, Vec<FootprintSeries>), ModelError> {
    let total =
        opts.workloads.len() * opts.connections.len() * opts.memories.len() * opts.models.len();
    let mut runs = Vec::with_capacity(total);
    let mut series = Vec::new();
    let plot_conns = opts.connections.iter().copied().max().unwrap_or(1);
    let mut i = 0;
    for &w in &opts.workloads {
        let traffic = Traffic::new(w, opts.posts, opts.seed);
        for &mem in &opts.memories {
            for &n in &opts.connections {
                for &model in &opts.models {
                    let (run, s) = run_one(model, w, n, mem, &traffic, opts)?;
                    if w.is_wal() && mem == MemKind::Dram && n == plot_conns {
                        series.push(s);
                    }
                    i += 1;
                    progress(i, total, &run);
                    runs.push(run);
                }
            }
        }
    }
    Ok((runs, series))
}
