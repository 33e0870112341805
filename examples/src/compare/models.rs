//! The four servers of the buffer-model runs, each doing its own real operations on the same
//! frames. A batch is one request per connection (closed-loop clients, all waiting for their
//! answer); [`Model::arrive`] puts the batch where the model's NIC or kernel would (not
//! timed), [`Model::serve`] is the server's work (timed): parse, keep, log, flush, fence,
//! respond, release.
//!
//! - [`HicampModel`]: phttpd's operations on a hicamp memory. Arrival is the NIC's RX DMA
//!   write (a segment holding nicdma's 32-byte metadata and the frame at offset 64, as
//!   `nicdma` deposits it). Serving: headers copied into a 256-byte parse window (as phttpd
//!   does), the body kept as a snapshot of the received lines spliced behind phttpd's record
//!   head and pad (lines shared, not copied), logged by a durable segment-map insert (the
//!   memory's persist barrier: flush of the new lines, sfence, the emulated latency; then the
//!   entry flushed and fenced), the answer a snapshot of a prebuilt response segment, the
//!   frame released. TCP is not run (see the sim-link path, `phttpd --sim`).
//! - [`PasteModel`]: the PASTE port of [`super::paste`]; arrival is the NIC's write into the
//!   RX slot's buffer; serving parses in place, logs (zero-copy or copy), writes the reply into
//!   a TX buffer, fences once for the batch, transmits and releases the batch.
//! - [`LinuxModel`]: a kernel epoll server (mio) over loopback TCP sockets: `read()` (a copy),
//!   parse, `memcpy` of the body into a log file mapped shared and flushed line by line, a
//!   fence and the emulated latency per request (PASTE's socket mode), `write()` of the reply.
//!   Arrival is the clients' `write()` on loopback (the kernel's TCP RX work happens there, in
//!   the sending thread, so it is not in the server's time).

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use hicamp::{Config, Durability, Memory, Piece, SegmentSlice};
use mio::net::{TcpListener as MioListener, TcpStream as MioStream};
use mio::{Events, Interest, Poll, Token};
use nicdma::DmaMeta;
use serde::Serialize;

use super::paste::{
    buffers_needed, copy_entry_len, CopyLog, PasteError, PastePort, ZeroCopyLog, BUF_SIZE,
    RECORD_LEN,
};
use super::region::Region;
use super::traffic::DOFF;
use crate::phttpd::http::{head_end, parse_head};
use crate::phttpd::{rpc_response, RECORD_HEAD};

/// The model names of the JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ModelKind {
    /// HICAMP segments (phttpd on segstack).
    #[serde(rename = "hicamp")]
    Hicamp,
    /// PASTE zero-copy.
    #[serde(rename = "paste")]
    Paste,
    /// PASTE with copy.
    #[serde(rename = "paste-copy")]
    PasteCopy,
    /// Linux epoll server.
    #[serde(rename = "linux")]
    Linux,
}

impl ModelKind {
    /// Name as in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Hicamp => "hicamp",
            ModelKind::Paste => "paste",
            ModelKind::PasteCopy => "paste-copy",
            ModelKind::Linux => "linux",
        }
    }
    /// All four.
    pub const ALL: [ModelKind; 4] = [
        ModelKind::Hicamp,
        ModelKind::Paste,
        ModelKind::PasteCopy,
        ModelKind::Linux,
    ];
}

/// Errors of a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// hicamp.
    #[error("hicamp: {0}")]
    Hicamp(#[from] hicamp::Error),
    /// The PASTE model.
    #[error("{0}")]
    Paste(#[from] PasteError),
    /// Sockets or files.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// A request the server could not parse (a bug in the traffic).
    #[error("bad request: {0}")]
    Http(String),
}

/// Cumulative counters of a model (served requests only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Counts {
    /// Requests answered.
    pub requests: u64,
    /// WAL records logged.
    pub records: u64,
    /// Request bytes the CPU copied into another buffer (socket `read()`, a log `memcpy`, the
    /// partial lines of a splice). Header bytes copied into a parse window are not in it.
    pub copied_bytes: u64,
    /// Header bytes copied into a parse window (HICAMP's phttpd parses from one).
    pub header_bytes_copied: u64,
    /// Response bytes written by the CPU (into a TX buffer, or by `write()`).
    pub response_bytes_copied: u64,
    /// Cache lines written back (or covered by msync).
    pub flushed_lines: u64,
    /// Store fences.
    pub fences: u64,
    /// HICAMP: leaf and interior line writes (new, deduplicated or all-zero), arrival included.
    pub lines_written: u64,
    /// HICAMP: of those, writes that found the line already there (all-zero included).
    pub lines_deduplicated: u64,
    /// HICAMP: lines created.
    pub lines_created: u64,
    /// HICAMP: source lines a splice referenced without reading them.
    pub lines_shared: u64,
    /// HICAMP: stored leaf lines read: the parse window's (`Segment::read_cost`, a walk of
    /// the DAG as the read takes it) and the partial lines splices assembled from bytes
    /// (`SpliceCounts::assembled_lines`).
    pub lines_read: u64,
    /// HICAMP: interior lines (DAG nodes) visited on the way: by the parse window's read and
    /// by the record's splice of the body's lines (`Segment::read_cost` of each range).
    pub dag_nodes_visited: u64,
    /// Nanoseconds spent in arrival (NIC DMA or deposit; not in the server's time).
    pub arrival_ns: u64,
}

/// One server of the buffer-model runs.
pub trait Model {
    /// Puts one batch of frames (`(connection, frame)`) where the NIC or kernel would.
    fn arrive(&mut self, frames: &[(usize, Vec<u8>)]) -> Result<(), ModelError>;
    /// Serves the batch; pushes each request's completion time (ns since `t0`).
    fn serve(&mut self, t0: Instant, done: &mut Vec<u64>) -> Result<(), ModelError>;
    /// The counters so far.
    fn counts(&self) -> Counts;
    /// Bytes held for the records logged so far (and their metadata).
    fn footprint(&self) -> u64;
    /// After the timed part: the clients read the batch's answers (Linux).
    fn settle(&mut self, _conns: &[usize]) -> Result<(), ModelError> {
        Ok(())
    }
}

/// Where the request's body lies: `(header length, content length)`.
fn parse(payload: &[u8]) -> Result<(usize, usize), ModelError> {
    let end = head_end(payload, 0)
        .map_err(|e| ModelError::Http(format!("{e:?}")))?
        .ok_or_else(|| ModelError::Http("no end of head".into()))?;
    let r = parse_head(&payload[..end]).map_err(|e| ModelError::Http(format!("{e:?}")))?;
    Ok((end, r.content_length as usize))
}

fn ns(t0: Instant) -> u64 {
    t0.elapsed().as_nanos() as u64
}

// ---- HICAMP ------------------------------------------------------------------------------

/// phttpd's operations on a hicamp memory (see the module documentation).
#[derive(Debug)]
pub struct HicampModel {
    mem: Memory,
    response: SegmentSlice,
    wal: bool,
    arrived: Vec<SegmentSlice>,
    base: hicamp::Stats,
    counts: Counts,
    window: Vec<u8>,
    /// One commit per batch (a segment of the batch's records) instead of one per record.
    group: bool,
    batch: Vec<hicamp::Segment>,
    commits: u64,
}

/// The first bytes of a batch segment (group commit): magic, then the record count.
pub const BATCH_MAGIC: &[u8; 4] = b"HCB1";

/// The record bodies of a map entry: one phttpd record, or a batch of them.
pub fn entry_bodies(seg: &hicamp::Segment) -> Vec<Vec<u8>> {
    let mut head = [0u8; 8];
    if seg.read_at(0, &mut head).ok() != Some(8) {
        return Vec::new();
    }
    if &head[..4] != BATCH_MAGIC {
        return crate::phttpd::record_body(seg).into_iter().collect();
    }
    let n = u32::from_le_bytes(head[4..].try_into().expect("4"));
    let mut out = Vec::new();
    let mut pos = 64u64;
    for _ in 0..n {
        let mut h = [0u8; RECORD_HEAD];
        if seg.read_at(pos, &mut h).ok() != Some(RECORD_HEAD) {
            break;
        }
        let len = u64::from(u32::from_le_bytes(h[..4].try_into().expect("4")));
        let pad = u64::from(u32::from_le_bytes(h[4..].try_into().expect("4")));
        let mut body = vec![0u8; len as usize];
        if seg.read_at(pos + RECORD_HEAD as u64 + pad, &mut body).ok() != Some(len as usize) {
            break;
        }
        out.push(body);
        pos = (pos + RECORD_HEAD as u64 + pad + len).div_ceil(64) * 64;
    }
    out
}

/// Where nicdma puts a received frame in its segment.
const FRAME_OFF: u16 = 64;

impl HicampModel {
    /// A server on `mem` (logging WAL bodies with `wal`).
    pub fn new(mem: Memory, wal: bool) -> Result<HicampModel, ModelError> {
        let response = SegmentSlice::from_bytes(&mem, &rpc_response())?;
        let base = mem.stats();
        Ok(HicampModel {
            mem,
            response,
            wal,
            arrived: Vec::new(),
            base,
            counts: Counts::default(),
            window: Vec::with_capacity(256),
            group: false,
            batch: Vec::new(),
            commits: 0,
        })
    }

    /// Commits once per batch: the batch's records, each line-aligned, in one segment behind
    /// a [`BATCH_MAGIC`] line (their lines shared, not copied), inserted in the map once; the
    /// batch is answered after that commit, as PASTE answers after its one fence.
    pub fn set_group_commit(&mut self, group: bool) {
        self.group = group;
    }

    fn commit_batch(&mut self) -> Result<(), ModelError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let recs: Vec<SegmentSlice> = self
            .batch
            .drain(..)
            .map(SegmentSlice::from_segment)
            .collect();
        let mut head = [0u8; 8];
        head[..4].copy_from_slice(BATCH_MAGIC);
        head[4..].copy_from_slice(&(recs.len() as u32).to_le_bytes());
        let mut pieces = vec![Piece::Bytes(&head), Piece::Zeros(56)];
        for r in &recs {
            pieces.push(Piece::Range(r));
            let tail = (64 - r.len() % 64) % 64;
            pieces.push(Piece::Zeros(tail as u64));
        }
        let (seg, c) = self.mem.splice(&pieces)?;
        self.counts.copied_bytes += c.copied_bytes;
        self.mem.map().insert(seg)?;
        self.commits += 1;
        Ok(())
    }

    /// A memory for a run: a file in `dir` with cache-line durability for the WAL (the
    /// emulated latency spun per persist barrier), DRAM for RPC.
    pub fn memory(
        dir: &Path,
        wal: bool,
        pm_latency_ns: u32,
        records: u64,
    ) -> Result<Memory, ModelError> {
        let cfg = Config {
            capacity_lines: (records * 40 + (1 << 16)).next_power_of_two(),
            map_capacity: (records + 1024).min(u64::from(u32::MAX - 2)) as u32,
            durability: Durability::CacheLine,
            pm_write_latency_ns: pm_latency_ns,
            ..Config::default()
        };
        if wal {
            let p = dir.join("hicamp.mem");
            let _ = std::fs::remove_file(&p);
            Ok(Memory::create(p, cfg)?)
        } else {
            Ok(Memory::new(Config {
                durability: Durability::None,
                ..cfg
            })?)
        }
    }

    /// The memory.
    pub fn memory_ref(&self) -> &Memory {
        &self.mem
    }

    /// Stores one record in phttpd's layout (body length u32, pad length u32, then the body
    /// at `8 + pad`) and, without group commit, commits it; returns the splice's counts.
    ///
    /// The record keeps the body's received lines whole: after the 8-byte head and zeros to
    /// the end of the first line comes the received data from the start of the line the body
    /// begins in (the few header bytes before the body in that line ride along inside the
    /// "pad", which readers skip). Every body line is then a reference to a received line: no
    /// byte is copied, where phttpd's own layout copies the partial first line.
    fn store(&mut self, body: &SegmentSlice) -> Result<hicamp::SpliceCounts, ModelError> {
        let ls = self.mem.line_size();
        let lead = body.offset() as usize % ls;
        let end = body.offset() + body.len() as u64;
        let line_end = (end.div_ceil(ls as u64) * ls as u64).min(body.segment().len());
        let range = SegmentSlice::try_new(
            body.segment().clone(),
            body.offset() - lead as u64,
            (line_end - body.offset()) as usize + lead,
        )?;
        let pad = ls - RECORD_HEAD + lead;
        let mut head = [0u8; RECORD_HEAD];
        head[..4].copy_from_slice(&(body.len() as u32).to_le_bytes());
        head[4..].copy_from_slice(&(pad as u32).to_le_bytes());
        let pieces = [
            Piece::Bytes(&head),
            Piece::Zeros((ls - RECORD_HEAD) as u64),
            Piece::Range(&range),
        ];
        // The splice walks the body's range of the received DAG to reference its lines.
        self.counts.dag_nodes_visited += range.read_cost().interior_lines;
        let (seg, c) = self.mem.splice(&pieces)?;
        if self.group {
            self.batch.push(seg);
        } else {
            self.mem.map().insert(seg)?;
            self.commits += 1;
        }
        self.counts.records += 1;
        Ok(c)
    }
}

impl Model for HicampModel {
    fn arrive(&mut self, frames: &[(usize, Vec<u8>)]) -> Result<(), ModelError> {
        let t = Instant::now();
        for (_, f) in frames {
            let meta = DmaMeta::frame(FRAME_OFF, f.len() as u32).to_bytes();
            // The frame's last line is a whole line of memory (zeros past the frame), as
            // lines are the unit of a HICAMP memory.
            let end = usize::from(FRAME_OFF) + f.len();
            let tail = (end.div_ceil(64) * 64 - end) as u64;
            let pieces = [
                Piece::Bytes(&meta),
                Piece::Zeros(u64::from(FRAME_OFF) - meta.len() as u64),
                Piece::Bytes(f),
                Piece::Zeros(tail),
            ];
            let (seg, _) = self.mem.splice(&pieces)?;
            let off = u64::from(FRAME_OFF) + u64::from(DOFF);
            self.arrived.push(SegmentSlice::try_new(
                seg,
                off,
                f.len() - usize::from(DOFF),
            )?);
        }
        self.counts.arrival_ns += ns(t);
        Ok(())
    }

    fn serve(&mut self, t0: Instant, done: &mut Vec<u64>) -> Result<(), ModelError> {
        let arrived = std::mem::take(&mut self.arrived);
        let served = arrived.len();
        for payload in arrived {
            // The header bytes, through a parse window (phttpd's scratch buffer).
            self.window.resize(256, 0);
            let n = payload.copy_to(&mut self.window);
            let (hlen, clen) = parse(&self.window[..n])?;
            self.counts.header_bytes_copied += hlen as u64;
            let cost = payload.slice(0, n).read_cost();
            self.counts.lines_read += cost.leaf_lines;
            self.counts.dag_nodes_visited += cost.interior_lines;
            if self.wal && clen > 0 {
                let body = payload.slice(hlen, hlen + clen);
                let c = self.store(&body)?;
                self.counts.copied_bytes += c.copied_bytes;
                self.counts.lines_shared += c.shared_lines;
                self.counts.lines_read += c.assembled_lines;
            }
            // The answer: a snapshot of the prebuilt response (sent by reference).
            let answer = self.response.clone();
            drop(answer);
            drop(payload);
            self.counts.requests += 1;
            if !self.group {
                done.push(ns(t0));
            }
        }
        if self.group {
            self.commit_batch()?;
            done.extend(std::iter::repeat(ns(t0)).take(served));
        }
        Ok(())
    }

    fn counts(&self) -> Counts {
        let s = self.mem.stats();
        let created = (s.leaf_lines_created + s.interior_lines_created)
            - (self.base.leaf_lines_created + self.base.interior_lines_created);
        let hits =
            (s.leaf_dedup_hits + s.interior_dedup_hits + s.zero_leaf_hits + s.zero_interior_hits)
                - (self.base.leaf_dedup_hits
                    + self.base.interior_dedup_hits
                    + self.base.zero_leaf_hits
                    + self.base.zero_interior_hits);
        let mut c = self.counts;
        c.lines_created = created;
        c.lines_deduplicated = hits;
        c.lines_written = created + hits;
        if self.wal {
            // The persist barrier flushes every line created since the previous one, then
            // the entry's line; two sfences per commit.
            c.flushed_lines = created + self.commits;
            c.fences = 2 * self.commits;
        }
        c
    }

    fn footprint(&self) -> u64 {
        self.mem
            .stats()
            .footprint_bytes()
            .saturating_sub(self.base.footprint_bytes())
    }
}

// ---- PASTE -------------------------------------------------------------------------------

/// How the PASTE model logs.
#[derive(Debug)]
pub enum PasteWal {
    /// RPC: nothing logged.
    None,
    /// Zero-copy WAL.
    ZeroCopy(ZeroCopyLog),
    /// WAL with copy.
    Copy(CopyLog),
}

/// The PASTE port of [`super::paste`] serving batches.
#[derive(Debug)]
pub struct PasteModel {
    /// The port.
    pub port: PastePort,
    /// The log.
    pub wal: PasteWal,
    response: Vec<u8>,
    counts: Counts,
}

/// RX and TX ring slots of the PASTE model (netmap's default).
pub const RING_SLOTS: u32 = 1024;

impl PasteModel {
    /// A PASTE server with `extra` extra buffers, its pool and log regions made by `region`
    /// (`name`, bytes).
    pub fn new(
        wal: Option<bool>,
        extra: u32,
        log_records: usize,
        mut region: impl FnMut(&str, usize) -> io::Result<Region>,
    ) -> Result<PasteModel, ModelError> {
        let nbufs = buffers_needed(RING_SLOTS, RING_SLOTS, extra) as usize;
        let pool = region("paste.pool", nbufs * BUF_SIZE)?;
        let port = PastePort::new(pool, RING_SLOTS, RING_SLOTS, extra)?;
        let wal = match wal {
            None => PasteWal::None,
            Some(true) => PasteWal::ZeroCopy(ZeroCopyLog::new(region(
                "paste.log",
                log_records * RECORD_LEN,
            )?)),
            Some(false) => PasteWal::Copy(CopyLog::new(region(
                "paste-copy.log",
                log_records * copy_entry_len(1024),
            )?)),
        };
        Ok(PasteModel {
            port,
            wal,
            response: rpc_response(),
            counts: Counts::default(),
        })
    }
}

impl Model for PasteModel {
    fn arrive(&mut self, frames: &[(usize, Vec<u8>)]) -> Result<(), ModelError> {
        let t = Instant::now();
        for (c, f) in frames {
            self.port.deliver(f, *c as u32 + 3, DOFF)?;
        }
        self.counts.arrival_ns += ns(t);
        Ok(())
    }

    fn serve(&mut self, t0: Instant, done: &mut Vec<u64>) -> Result<(), ModelError> {
        let slots = self.port.rx.owned();
        let n = slots.len();
        for i in slots {
            let (off, len) = self.port.payload(i)?;
            let (hlen, clen) = parse(&self.port.pool.bytes()[off..off + len])?;
            match &mut self.wal {
                PasteWal::None => {}
                PasteWal::ZeroCopy(log) => {
                    log.append(&mut self.port, i, hlen, clen)?;
                    self.counts.records += 1;
                }
                PasteWal::Copy(log) => {
                    let b = off + hlen;
                    log.append(&self.port.pool.bytes()[b..b + clen])?;
                    self.counts.copied_bytes += clen as u64;
                    self.counts.records += 1;
                }
            }
            let fd = self.port.rx.slots[i as usize].fd();
            self.port.send(&self.response, fd, DOFF)?;
            self.counts.response_bytes_copied += self.response.len() as u64;
        }
        // One fence per RX batch (and the emulated latency), then the next poll transmits
        // every reply and releases the batch.
        match &mut self.wal {
            PasteWal::None => {}
            PasteWal::ZeroCopy(_) => self.port.pool.fence(),
            PasteWal::Copy(log) => log.log.fence(),
        }
        self.port.txsync();
        self.port.release_rx()?;
        let t = ns(t0);
        done.extend(std::iter::repeat(t).take(n));
        self.counts.requests += n as u64;
        Ok(())
    }

    fn counts(&self) -> Counts {
        let mut c = self.counts;
        let (log_lines, log_fences) = match &self.wal {
            PasteWal::None => (0, 0),
            PasteWal::ZeroCopy(l) => (l.log.counts.flushed_lines, l.log.counts.fences),
            PasteWal::Copy(l) => (l.log.counts.flushed_lines, l.log.counts.fences),
        };
        c.flushed_lines = self.port.pool.counts.flushed_lines + log_lines;
        c.fences = self.port.pool.counts.fences + log_fences;
        c
    }

    fn footprint(&self) -> u64 {
        match &self.wal {
            PasteWal::None => 0,
            PasteWal::ZeroCopy(l) => {
                self.port.held_buffers() * BUF_SIZE as u64
                    + l.records.min(l.capacity() as u64) * RECORD_LEN as u64
            }
            PasteWal::Copy(l) => {
                let cap = (l.log.len() / copy_entry_len(1024)) as u64;
                l.records.min(cap) * copy_entry_len(1024) as u64
            }
        }
    }
}

// ---- Linux -------------------------------------------------------------------------------

/// A kernel epoll server over loopback (see the module documentation).
#[derive(Debug)]
pub struct LinuxModel {
    clients: Vec<TcpStream>,
    server: Vec<(MioStream, Vec<u8>)>,
    poll: Poll,
    events: Events,
    log: Option<CopyLog>,
    response: Vec<u8>,
    pending: usize,
    counts: Counts,
}

impl LinuxModel {
    /// `connections` loopback connections to a server logging to `log` (None: RPC).
    pub fn new(connections: usize, log: Option<Region>) -> Result<LinuxModel, ModelError> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let addr = l.local_addr()?;
        let mut clients = Vec::with_capacity(connections);
        let mut server = Vec::with_capacity(connections);
        let poll = Poll::new()?;
        for i in 0..connections {
            let c = TcpStream::connect(addr)?;
            c.set_nodelay(true)?;
            let (s, _) = l.accept()?;
            s.set_nodelay(true)?;
            s.set_nonblocking(true)?;
            let mut s = MioStream::from_std(s);
            poll.registry()
                .register(&mut s, Token(i), Interest::READABLE)?;
            clients.push(c);
            server.push((s, Vec::with_capacity(4096)));
        }
        drop(MioListener::from_std(l));
        Ok(LinuxModel {
            clients,
            server,
            poll,
            events: Events::with_capacity(1024),
            log: log.map(CopyLog::new),
            response: rpc_response(),
            pending: 0,
            counts: Counts::default(),
        })
    }

    /// Answers every whole request in connection `c`'s buffer.
    fn drain(&mut self, c: usize, t0: Instant, done: &mut Vec<u64>) -> Result<(), ModelError> {
        loop {
            let (s, buf) = &mut self.server[c];
            let Ok(Some(end)) = head_end(buf, 0) else {
                return Ok(());
            };
            let (hlen, clen) = parse(&buf[..end])?;
            if buf.len() < hlen + clen {
                return Ok(());
            }
            if let Some(log) = &mut self.log {
                log.append(&buf[hlen..hlen + clen])?;
                // PASTE's socket mode: the fence and the latency before every write().
                log.log.fence();
                self.counts.copied_bytes += clen as u64;
                self.counts.records += 1;
            }
            buf.drain(..hlen + clen);
            s.write_all(&self.response)?;
            self.counts.response_bytes_copied += self.response.len() as u64;
            self.counts.requests += 1;
            self.pending -= 1;
            done.push(ns(t0));
        }
    }
}

impl Model for LinuxModel {
    fn arrive(&mut self, frames: &[(usize, Vec<u8>)]) -> Result<(), ModelError> {
        let t = Instant::now();
        for (c, f) in frames {
            self.clients[*c].write_all(&f[usize::from(DOFF)..])?;
            self.pending += 1;
        }
        self.counts.arrival_ns += ns(t);
        Ok(())
    }

    fn serve(&mut self, t0: Instant, done: &mut Vec<u64>) -> Result<(), ModelError> {
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.pending > 0 {
            if Instant::now() > deadline {
                return Err(ModelError::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "loopback requests did not arrive",
                )));
            }
            self.poll
                .poll(&mut self.events, Some(Duration::from_millis(100)))?;
            let ready: Vec<usize> = self.events.iter().map(|e| e.token().0).collect();
            for c in ready {
                loop {
                    let (s, pending) = &mut self.server[c];
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            pending.extend_from_slice(&buf[..n]);
                            self.counts.copied_bytes += n as u64;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e.into()),
                    }
                }
                self.drain(c, t0, done)?;
            }
        }
        // The clients read their answers (not timed: the caller stops its clock first).
        Ok(())
    }

    fn counts(&self) -> Counts {
        let mut c = self.counts;
        if let Some(l) = &self.log {
            c.flushed_lines = l.log.counts.flushed_lines;
            c.fences = l.log.counts.fences;
        }
        c
    }

    fn footprint(&self) -> u64 {
        self.log.as_ref().map_or(0, |l| {
            let cap = (l.log.len() / copy_entry_len(1024)) as u64;
            l.records.min(cap) * copy_entry_len(1024) as u64
        })
    }

    fn settle(&mut self, conns: &[usize]) -> Result<(), ModelError> {
        let mut buf = vec![0u8; self.response.len()];
        for &c in conns {
            self.clients[c].read_exact(&mut buf)?;
        }
        Ok(())
    }
}
