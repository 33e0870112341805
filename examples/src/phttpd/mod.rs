//! A PASTE-phttpd-like HTTP server on segstack.
//!
//! The two workloads of the PASTE paper:
//!
//! - **RPC**: `GET` answers with a fixed 64-byte body (151-byte response).
//!   The response is one segment built at start-up; each answer sends a
//!   snapshot of it, so no response byte is ever copied.
//! - **WAL**: `POST` with a body (1 KiB in the paper): the body is kept as the
//!   received segments' own lines (spliced into one record segment behind a
//!   pad that keeps them line-aligned, so only the partial first and last
//!   lines are copied) and logged in the memory's segment map, which a file-backed
//!   memory persists.
//!
//! Also `GET /obj/N` (N bytes of a fixed pseudo-random object, for bulk
//! downloads) and `POST /upload` (answers with the BLAKE3 digest of the body,
//! for byte-exact upload checks).
//!
//! Request headers are parsed from a small scratch copy; bodies are never
//! copied out of the segments they arrived in.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use hicamp::{Memory, Piece, Segment, SegmentId};
use nicdma::{Nic, Port};
use segstack::iface::{Event, IfaceConfig, IfaceError, Interface, SocketHandle};
use segstack::sim::{SimPair, A_IP, B_IP};
use segstack::Payload;

use http::{HttpError, Method};

use crate::workload::paste;
pub use crate::workload::paste::{RESPONSE_BODY_LEN as BODY_LEN, RESPONSE_LEN};

pub mod cli;
pub mod http;

/// Bytes in front of each WAL record's padding: body length, pad length.
pub const RECORD_HEAD: usize = 8;

/// The body of a WAL record segment.
pub fn record_body(record: &Segment) -> Option<Vec<u8>> {
    let mut head = [0u8; RECORD_HEAD];
    record.read_at(0, &mut head).ok()?;
    let len = u32::from_le_bytes(head[..4].try_into().ok()?) as usize;
    let pad = u32::from_le_bytes(head[4..].try_into().ok()?) as u64;
    let mut body = vec![0u8; len];
    let n = record.read_at(RECORD_HEAD as u64 + pad, &mut body).ok()?;
    (n == len).then_some(body)
}

/// Longest request head accepted by default (64 KiB).
pub const MAX_HEADER: usize = 64 << 10;

/// The fixed RPC response: PASTE's `phttpd` header and a 64-byte body,
/// exactly 151 bytes (the workload generator's responses, with a fixed body).
pub fn rpc_response() -> Vec<u8> {
    paste::response(&[b'x'; BODY_LEN])
}

/// The 44-byte RPC request of the PASTE workload.
pub fn rpc_request() -> Vec<u8> {
    paste::rpc_request("192.168.11.2:60000")
}

/// Byte `i` of the object `GET /obj/N` serves.
pub fn object_byte(i: u64) -> u8 {
    let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i >> 7);
    (x >> 24) as u8
}

/// The first `n` bytes of the object.
pub fn object(n: usize) -> Vec<u8> {
    (0..n as u64).map(object_byte).collect()
}

/// Request size limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest request head (request line and fields): 431 past it.
    pub max_header: usize,
    /// Longest request body: 413 (and the connection closes) past it; the
    /// body is never read.
    pub max_body: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header: MAX_HEADER,
            max_body: 64 << 20,
        }
    }
}

/// Bytes a connection may still send after an error answer (read and
/// dropped, so that the client sees the answer rather than a reset) before
/// it is reset.
pub const LINGER_BYTES: u64 = 4 << 20;

/// Counters of a server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhttpdStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Requests answered (errors included).
    pub requests: u64,
    /// GET requests.
    pub gets: u64,
    /// POST requests.
    pub posts: u64,
    /// Body bytes logged to the WAL.
    pub wal_bytes: u64,
    /// Of those, bytes copied while splicing bodies into log segments.
    pub wal_copied: u64,
    /// Header bytes copied into the parse scratch buffer.
    pub header_bytes_copied: u64,
    /// Malformed or unsupported requests (4xx/5xx answer, connection
    /// closed).
    pub bad_requests: u64,
    /// Requests over a size limit (413 or 431, connection closed).
    pub too_large: u64,
    /// Requests the memory or its segment map had no room for (507; the
    /// connection stays open).
    pub storage_full: u64,
    /// Connections reset: still sending after an error answer, or dropped
    /// to free memory.
    pub resets: u64,
    /// Polls on which the memory was full (a frame or request dropped).
    pub memory_full: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Wal,
    Upload,
    /// A GET's body: read and dropped.
    Discard,
}

/// What a request target names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// `/obj/N` (`None`: N is not a number).
    Object(Option<usize>),
    /// `/upload`.
    Upload,
    /// Anything else: the RPC answer (GET) or the WAL (POST).
    Default,
}

impl Route {
    fn of(target: &str) -> Route {
        if let Some(n) = target.strip_prefix("/obj/") {
            Route::Object(n.parse().ok())
        } else if target == "/upload" {
            Route::Upload
        } else {
            Route::Default
        }
    }
}

#[derive(Debug, Default)]
struct Conn {
    /// Request header bytes so far.
    head: Vec<u8>,
    body_left: u64,
    body_kind: Option<BodyKind>,
    body: Vec<Payload>,
    /// Bytes held in `body`.
    body_bytes: u64,
    /// Response bytes the send buffer has not taken yet.
    out: VecDeque<Payload>,
    eof: bool,
    /// The request being read asked to close after its answer.
    close_after: bool,
    /// The last answer is queued: input is dropped, FIN once it is sent.
    closing: bool,
    /// FIN sent.
    shut: bool,
    /// Bytes dropped since `closing`.
    discarded: u64,
}

/// Hashes socket handles (small integers the interface hands out, not
/// chosen by peers) with one multiplication instead of SipHash.
#[derive(Debug, Default, Clone, Copy)]
struct HandleHasher(u64);

impl Hasher for HandleHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_usize(&mut self, i: usize) {
        self.0 = (self.0 ^ i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
}

type Conns = HashMap<SocketHandle, Conn, BuildHasherDefault<HandleHasher>>;

/// The reason phrase of a status phttpd answers with.
fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
        _ => "Error",
    }
}

/// The statuses answered from prebuilt segments (so that a full memory can
/// still be told so).
const ERROR_STATUSES: [u16; 6] = [400, 413, 431, 501, 505, 507];

/// An error answer: empty body; `close` adds `Connection: close`.
pub fn error_response(status: u16, close: bool) -> Vec<u8> {
    let conn = if close { "Connection: close\r\n" } else { "" };
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Length: 0\r\n{conn}\r\n",
        reason(status)
    )
    .into_bytes()
}

/// True for an interface error that a full memory or map causes: the
/// server keeps running (the frame or request it hit is dropped).
pub fn is_transient(e: &IfaceError) -> bool {
    matches!(
        e,
        IfaceError::Memory(_) | IfaceError::Nic(nicdma::NicError::Memory(_))
    )
}

/// A server's interface: on the rings recorded in `mem` ([`persistent_interface`]) when it
/// logs (`wal`), on new ones otherwise.
pub fn server_interface<P: Port>(
    mem: &Memory,
    wal: bool,
    port: P,
    cfg: IfaceConfig,
) -> Result<Interface<P>, IfaceError> {
    if wal {
        persistent_interface(mem, port, cfg)
    } else {
        Interface::new(mem, port, cfg)
    }
}

/// A sim link for phttpd: the server's interface (B, [`server_interface`]) in `server`,
/// facing a client (A) in a DRAM memory of its own, so that a `--wal` file holds only the
/// server's rings and records; Nagle off on both sides.
pub fn sim_pair(server: &Memory, wal: bool) -> Result<SimPair, String> {
    let e = |e: IfaceError| e.to_string();
    let client_mem = Memory::new(hicamp::Config::default()).map_err(|e| e.to_string())?;
    let (net, pa, pb) = nicdma::sim::SimNet::pair(1, nicdma::sim::LinkConfig::default())
        .map_err(|e| format!("sim link: {e}"))?;
    let mut ca = IfaceConfig::new([2, 0, 0, 0, 0, 1], A_IP, 24);
    ca.seed = 1;
    ca.tcp.nagle = false;
    let mut cb = IfaceConfig::new([2, 0, 0, 0, 0, 2], B_IP, 24);
    cb.seed = 2;
    cb.tcp.nagle = false;
    let a = Interface::new(&client_mem, pa, ca).map_err(e)?;
    let b = server_interface(server, wal, pb, cb).map_err(e)?;
    Ok(SimPair::from_parts(net, a, b))
}

/// Name of the directory entry recording a `--wal` server's NIC rings.
pub const RINGS_NAME: &str = "phttpd.rings";

/// An interface for a server on a file-backed memory: its NIC's rings are
/// the map ranges recorded under [`RINGS_NAME`] by an earlier run (reused,
/// so a restart, even after SIGKILL, leaks none and needs no free map
/// entry), or new ranges recorded there.
pub fn persistent_interface<P: Port>(
    mem: &Memory,
    port: P,
    cfg: IfaceConfig,
) -> Result<Interface<P>, IfaceError> {
    let (tx_n, rx_n) = (cfg.nic.tx_slots, cfg.nic.rx_slots);
    let recorded = match mem.get_named(RINGS_NAME)? {
        Some(seg) => {
            let mut b = [0u8; 16];
            let n = seg.read_at(0, &mut b)?;
            let w = |i: usize| u32::from_le_bytes(b[i * 4..i * 4 + 4].try_into().expect("4"));
            (n == 16).then(|| (w(0), w(1), w(2), w(3)))
        }
        None => None,
    };
    if let Some((tx, tn, rx, rn)) = recorded {
        if (tn, rn) == (tx_n, rx_n) && ranges_free(mem, &[(tx, tn), (rx, rn)]) {
            let nic = Nic::with_rings(mem, port, cfg.nic, SegmentId(tx), SegmentId(rx))?;
            return Ok(Interface::with_nic(nic, cfg));
        }
        // Other ring sizes: give the old ranges back (only entries still
        // bound to the empty segment: the rings never hold anything else).
        // A range someone else took over (its entries deleted and reused)
        // is left alone, and new rings are made.
        if (tn, rn) != (tx_n, rx_n) {
            let map = mem.map();
            for (base, n) in [(tx, tn), (rx, rn)] {
                for id in (base..base.saturating_add(n)).map(SegmentId) {
                    if map.entry(id).is_ok_and(|e| e.len == 0) {
                        let _ = map.delete(id);
                    }
                }
            }
        }
        mem.unbind(RINGS_NAME)?;
    }
    let map = mem.map();
    let tx = map.reserve_range(tx_n)?;
    let rx = match map.reserve_range(rx_n) {
        Ok(rx) => rx,
        Err(e) => {
            let _ = map.delete_many(
                &(tx.start.get()..tx.end.get())
                    .map(SegmentId)
                    .collect::<Vec<_>>(),
            );
            return Err(e.into());
        }
    };
    let mut rec = Vec::with_capacity(16);
    for w in [tx.start.get(), tx_n, rx.start.get(), rx_n] {
        rec.extend_from_slice(&w.to_le_bytes());
    }
    let bound = mem.segment(&rec).and_then(|seg| mem.bind(RINGS_NAME, seg));
    if let Err(e) = bound {
        let ids: Vec<SegmentId> = (tx.start.get()..tx.end.get())
            .chain(rx.start.get()..rx.end.get())
            .map(SegmentId)
            .collect();
        let _ = map.delete_many(&ids);
        return Err(e.into());
    }
    let nic = Nic::with_rings(mem, port, cfg.nic, tx.start, rx.start)?;
    Ok(Interface::with_nic(nic, cfg))
}

/// True if every id of the ranges `(base, count)` is a live entry bound to
/// the empty segment (as ring entries are).
fn ranges_free(mem: &Memory, ranges: &[(u32, u32)]) -> bool {
    let map = mem.map();
    ranges.iter().all(|&(base, n)| {
        (0..n).all(|i| {
            base.checked_add(i)
                .is_some_and(|id| map.entry(SegmentId(id)).is_ok_and(|e| e.len == 0))
        })
    })
}

/// A phttpd-like server on one listening port of an interface.
#[derive(Debug)]
pub struct Phttpd {
    listener: SocketHandle,
    mem: Memory,
    conns: Conns,
    /// Received chunks being consumed (kept for reuse: no allocation per
    /// request).
    scratch: Vec<Payload>,
    response: Payload,
    /// `None`: the memory had no room for it.
    object: Option<Payload>,
    /// Prebuilt error answers: (status, keep-alive answer, closing answer).
    errors: Vec<(u16, Payload, Payload)>,
    last_record: Option<Segment>,
    /// Events of the last poll (kept for reuse).
    events: Vec<Event>,
    /// The NIC's `rx_dropped_nomem` when last looked at.
    nic_dropped: u64,
    log_to_map: bool,
    limits: Limits,
    stats: PhttpdStats,
}

impl Phttpd {
    /// Listens on `port`; `object_len` bytes of the object are prepared for
    /// `GET /obj/N` (if the memory has no room for them, `GET /obj/N` is
    /// answered 507: a full file still serves). With `log_to_map`, WAL bodies go into the memory's
    /// segment map (persistent when the memory is a file); without, a body
    /// is released once answered.
    pub fn new<P: Port>(
        iface: &mut Interface<P>,
        port: u16,
        object_len: usize,
        log_to_map: bool,
    ) -> Result<Phttpd, IfaceError> {
        let mem = iface.memory().clone();
        let response = Payload::from_bytes(&mem, &rpc_response())?;
        // Any store error (full, or out of space on disk) leaves no object.
        let object = Payload::from_bytes(&mem, &object(object_len)).ok();
        let errors = ERROR_STATUSES
            .iter()
            .map(|&s| {
                Ok((
                    s,
                    Payload::from_bytes(&mem, &error_response(s, false))?,
                    Payload::from_bytes(&mem, &error_response(s, true))?,
                ))
            })
            .collect::<Result<_, IfaceError>>()?;
        let listener = iface.tcp_listen(port)?;
        Ok(Phttpd {
            listener,
            mem,
            conns: Conns::default(),
            scratch: Vec::new(),
            response,
            object,
            errors,
            last_record: None,
            events: Vec::new(),
            nic_dropped: iface.nic().counters().rx_dropped_nomem,
            log_to_map,
            limits: Limits::default(),
            stats: PhttpdStats::default(),
        })
    }

    /// Sets the request size limits.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// The request size limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The counters.
    pub fn stats(&self) -> &PhttpdStats {
        &self.stats
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// The last WAL record (when not logging to the map: earlier ones are
    /// released once answered).
    pub fn last_record(&self) -> Option<&Segment> {
        self.last_record.as_ref()
    }

    /// Handles one poll's events. Errors are the interface's own (a bad
    /// handle, a dead port); a full memory costs a request or a connection,
    /// never the server.
    pub fn handle<P: Port>(
        &mut self,
        iface: &mut Interface<P>,
        events: &[Event],
    ) -> Result<(), IfaceError> {
        for ev in events {
            if ev.handle == self.listener {
                while let Some(h) = iface.tcp_accept(self.listener)? {
                    self.stats.accepted += 1;
                    self.conns.insert(h, Conn::default());
                    self.serve_or_drop(iface, h)?;
                }
                continue;
            }
            if ev.closed {
                if self.conns.remove(&ev.handle).is_some() {
                    iface.close(ev.handle)?;
                }
                continue;
            }
            if self.conns.contains_key(&ev.handle) {
                self.serve_or_drop(iface, ev.handle)?;
            }
        }
        // Continue responses the send buffers could not take at once.
        let pending: Vec<SocketHandle> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.out.is_empty() || (c.closing && !c.shut))
            .map(|(h, _)| *h)
            .collect();
        for h in pending {
            self.serve_or_drop(iface, h)?;
        }
        Ok(())
    }

    /// Polls `iface` and handles its events. A full memory drops what it
    /// hit (a frame, a request) and resets the connection holding the most
    /// unanswered body bytes; it never fails the server.
    pub fn poll<P: Port>(&mut self, iface: &mut Interface<P>, now: u64) -> Result<(), IfaceError> {
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        let full = match iface.poll(now) {
            Ok(ev) => {
                events.extend_from_slice(ev);
                false
            }
            Err(e) if is_transient(&e) => true,
            Err(e) => return Err(e),
        };
        let r = self.handle(iface, &events);
        self.events = events;
        // Frames the NIC dropped for want of memory, since the last look
        // (whoever polled).
        let dropped = iface.nic().counters().rx_dropped_nomem;
        let full = full || dropped != self.nic_dropped;
        self.nic_dropped = dropped;
        if full {
            self.stats.memory_full += 1;
            self.shed(iface)?;
        }
        r
    }

    /// Frees memory after the interface reported it full: resets the
    /// connection holding the most unanswered body bytes. Returns whether
    /// one was reset.
    pub fn shed<P: Port>(&mut self, iface: &mut Interface<P>) -> Result<bool, IfaceError> {
        let Some((&h, _)) = self
            .conns
            .iter()
            .filter(|(_, c)| c.body_bytes > 0)
            .max_by_key(|(_, c)| c.body_bytes)
        else {
            return Ok(false);
        };
        self.reset(iface, h)?;
        Ok(true)
    }

    fn reset<P: Port>(
        &mut self,
        iface: &mut Interface<P>,
        h: SocketHandle,
    ) -> Result<(), IfaceError> {
        self.stats.resets += 1;
        self.conns.remove(&h);
        iface.abort(h)?;
        iface.close(h)
    }

    /// Serves `h`; a full memory while doing so resets the connection.
    fn serve_or_drop<P: Port>(
        &mut self,
        iface: &mut Interface<P>,
        h: SocketHandle,
    ) -> Result<(), IfaceError> {
        match self.serve(iface, h) {
            Err(e) if is_transient(&e) => {
                self.scratch.clear();
                self.reset(iface, h)
            }
            r => r,
        }
    }

    fn serve<P: Port>(
        &mut self,
        iface: &mut Interface<P>,
        h: SocketHandle,
    ) -> Result<(), IfaceError> {
        let mut chunks = std::mem::take(&mut self.scratch);
        loop {
            chunks.clear();
            match iface.recv_into(h, 1 << 20, &mut chunks) {
                Ok(_) => {}
                Err(IfaceError::WouldBlock) => break,
                Err(IfaceError::Tcp(_)) => {
                    self.conns.remove(&h);
                    iface.close(h)?;
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            if chunks.is_empty() {
                if let Some(c) = self.conns.get_mut(&h) {
                    c.eof = true;
                }
                break;
            }
            for chunk in chunks.drain(..) {
                self.consume(h, chunk);
            }
            if self
                .conns
                .get(&h)
                .is_some_and(|c| c.discarded > LINGER_BYTES)
            {
                chunks.clear();
                self.scratch = chunks;
                return self.reset(iface, h);
            }
        }
        chunks.clear();
        self.scratch = chunks;
        self.flush(iface, h)?;
        if let Some(c) = self.conns.get_mut(&h) {
            if c.out.is_empty() {
                if c.eof {
                    self.conns.remove(&h);
                    iface.close(h)?;
                } else if c.closing && !c.shut {
                    // The last answer is out: FIN, and keep reading (and
                    // dropping) until the peer closes too.
                    c.shut = true;
                    iface.shutdown(h)?;
                }
            }
        }
        Ok(())
    }

    /// Feeds received bytes to connection `h`'s parser.
    fn consume(&mut self, h: SocketHandle, mut chunk: Payload) {
        while !chunk.is_empty() {
            let Some(c) = self.conns.get_mut(&h) else {
                return;
            };
            if c.closing {
                c.discarded += chunk.len() as u64;
                return;
            }
            if c.body_left > 0 {
                let n = c.body_left.min(chunk.len() as u64) as usize;
                let part = chunk.split_to(n);
                if c.body_kind != Some(BodyKind::Discard) {
                    c.body.push(part);
                    c.body_bytes += n as u64;
                }
                c.body_left -= n as u64;
                if c.body_left == 0 {
                    self.finish_body(h);
                }
                continue;
            }
            // Header bytes: copy a small window into the scratch buffer.
            let mut win = [0u8; 256];
            let n = chunk.copy_to(&mut win);
            let start = c.head.len();
            c.head.extend_from_slice(&win[..n]);
            let end = match http::head_end(&c.head, start) {
                Ok(end) => end,
                Err(e) => {
                    self.reject(h, e);
                    return;
                }
            };
            let Some(end) = end else {
                self.stats.header_bytes_copied += n as u64;
                chunk.advance(n);
                if c.head.len() > self.limits.max_header {
                    self.reject(h, HttpError::HeaderTooLarge);
                    return;
                }
                continue;
            };
            // `end` is just past "\r\n\r\n": keep only the header bytes.
            let used = end - start;
            self.stats.header_bytes_copied += used as u64;
            c.head.truncate(end);
            chunk.advance(used);
            if end > self.limits.max_header {
                self.reject(h, HttpError::HeaderTooLarge);
                return;
            }
            // Parse from the connection's buffer, then give it back
            // emptied (its capacity stays: no allocation per request).
            let mut head = std::mem::take(&mut c.head);
            let r = http::parse_head(&head)
                .map(|r| (r.method, Route::of(r.target), r.content_length, r.close));
            head.clear();
            if let Some(c) = self.conns.get_mut(&h) {
                c.head = head;
            }
            match r {
                Ok((method, route, len, close)) => self.request(h, method, route, len, close),
                Err(e) => {
                    self.reject(h, e);
                    return;
                }
            }
        }
    }

    /// The prebuilt answer for `status`.
    fn error_payload(&self, status: u16, close: bool) -> Payload {
        let (_, keep, closing) = self
            .errors
            .iter()
            .find(|(s, _, _)| *s == status)
            .expect("a prebuilt status");
        if close { closing } else { keep }.clone()
    }

    /// Answers an error and closes the connection (after the answer).
    fn reject(&mut self, h: SocketHandle, e: HttpError) {
        match e {
            HttpError::HeaderTooLarge | HttpError::BodyTooLarge => self.stats.too_large += 1,
            _ => self.stats.bad_requests += 1,
        }
        let p = self.error_payload(e.status(), true);
        self.respond(h, [p]);
        if let Some(c) = self.conns.get_mut(&h) {
            c.closing = true;
            c.head.clear();
            c.body.clear();
            c.body_bytes = 0;
            c.body_left = 0;
        }
    }

    /// Answers 507: no room in the memory or map for this request.
    fn insufficient_storage(&mut self, h: SocketHandle) {
        self.stats.storage_full += 1;
        let p = self.error_payload(507, false);
        self.respond(h, [p]);
    }

    /// Handles a parsed request head.
    fn request(&mut self, h: SocketHandle, method: Method, route: Route, len: u64, close: bool) {
        if len > self.limits.max_body {
            self.reject(h, HttpError::BodyTooLarge);
            return;
        }
        let Some(c) = self.conns.get_mut(&h) else {
            return;
        };
        c.close_after = close;
        c.body_left = len;
        match method {
            Method::Get => {
                self.stats.gets += 1;
                c.body_kind = Some(BodyKind::Discard);
                if let Route::Object(n) = route {
                    let Some(n) = n else {
                        self.reject(h, HttpError::Bad("object length"));
                        return;
                    };
                    let Some(object) = &self.object else {
                        self.insufficient_storage(h);
                        self.end_request(h);
                        return;
                    };
                    let n = n.min(object.len());
                    let body = object.slice(0, n);
                    let hdr = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n");
                    match Payload::from_bytes(&self.mem, hdr.as_bytes()) {
                        Ok(hdr) => self.respond(h, [hdr, body]),
                        Err(_) => self.insufficient_storage(h),
                    }
                } else {
                    let r = self.response.clone();
                    self.respond(h, [r]);
                }
                self.end_request(h);
            }
            Method::Post => {
                self.stats.posts += 1;
                c.body_kind = Some(if route == Route::Upload {
                    BodyKind::Upload
                } else {
                    BodyKind::Wal
                });
                if len == 0 {
                    self.finish_body(h);
                }
            }
        }
    }

    /// After a request's answer is queued: close if it asked to.
    fn end_request(&mut self, h: SocketHandle) {
        if let Some(c) = self.conns.get_mut(&h) {
            if c.close_after {
                c.closing = true;
            }
        }
    }

    fn finish_body(&mut self, h: SocketHandle) {
        let Some(c) = self.conns.get_mut(&h) else {
            return;
        };
        let body = std::mem::take(&mut c.body);
        c.body_bytes = 0;
        let kind = c.body_kind.take();
        if kind == Some(BodyKind::Discard) {
            // A GET's body: answered already.
            return;
        }
        match self.store_body(kind, body) {
            Some(resp) => self.respond(h, [resp]),
            None => self.insufficient_storage(h),
        }
        self.end_request(h);
    }

    /// Splices a body into a segment (a WAL record or an upload) and builds
    /// the answer; `None` when the memory or its map is full.
    fn store_body(&mut self, kind: Option<BodyKind>, body: Vec<Payload>) -> Option<Payload> {
        let ranges = body.iter().map(Piece::Range);
        let body_len: usize = body.iter().map(Payload::len).sum();
        // A WAL record is [body length u32][pad length u32][pad zeros][body]:
        // the pad puts the body at the offset within a line it had in the RX
        // segment, so its whole lines are shared, not copied.
        let ls = self.mem.line_size();
        let off = body.first().map_or(0, |p| p.offset() as usize % ls);
        let pad = (off + ls - RECORD_HEAD % ls) % ls;
        let mut head = [0u8; RECORD_HEAD];
        head[..4].copy_from_slice(&(body_len as u32).to_le_bytes());
        head[4..].copy_from_slice(&(pad as u32).to_le_bytes());
        let pieces: Vec<Piece<'_>> = match kind {
            Some(BodyKind::Upload) => ranges.collect(),
            _ => [Piece::Bytes(&head), Piece::Zeros(pad as u64)]
                .into_iter()
                .chain(ranges)
                .collect(),
        };
        let (seg, counts) = self.mem.splice(&pieces).ok()?;
        drop(pieces);
        // The received segments are released here, answered or not.
        drop(body);
        match kind {
            Some(BodyKind::Upload) => {
                let hex: String = seg.digest().iter().map(|b| format!("{b:02x}")).collect();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{hex}",
                    hex.len()
                );
                Payload::from_bytes(&self.mem, resp.as_bytes()).ok()
            }
            _ => {
                if self.log_to_map {
                    self.mem.map().insert(seg).ok()?;
                } else {
                    // Nothing keeps a record of a DRAM-only WAL: the last
                    // one is kept for inspection, the others are released.
                    self.last_record = Some(seg);
                }
                self.stats.wal_bytes += body_len as u64;
                self.stats.wal_copied += counts.copied_bytes;
                Some(self.response.clone())
            }
        }
    }

    fn respond<const N: usize>(&mut self, h: SocketHandle, parts: [Payload; N]) {
        self.stats.requests += 1;
        if let Some(c) = self.conns.get_mut(&h) {
            c.out.extend(parts);
        }
    }

    fn flush<P: Port>(
        &mut self,
        iface: &mut Interface<P>,
        h: SocketHandle,
    ) -> Result<(), IfaceError> {
        let Some(c) = self.conns.get_mut(&h) else {
            return Ok(());
        };
        while let Some(p) = c.out.front_mut() {
            match iface.send_some(h, p) {
                Ok(_) if p.is_empty() => {
                    c.out.pop_front();
                }
                Ok(_) => break,
                Err(IfaceError::Tcp(_)) => {
                    c.out.clear();
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_sizes_are_pastes() {
        assert_eq!(rpc_response().len(), RESPONSE_LEN);
        assert_eq!(rpc_request().len(), 44);
        assert!(rpc_response().ends_with(&[b'x'; 64]));
    }
}
