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

use hicamp::{Memory, Piece, Segment};
use nicdma::Port;
use segstack::iface::{Event, IfaceError, Interface, SocketHandle};
use segstack::Payload;

use crate::workload::paste;
pub use crate::workload::paste::{RESPONSE_BODY_LEN as BODY_LEN, RESPONSE_LEN};

pub mod cli;

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

/// Longest request header accepted.
pub const MAX_HEADER: usize = 8192;

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

/// Counters of a server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhttpdStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Requests answered.
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
    /// Malformed requests (connection closed).
    pub bad_requests: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Wal,
    Upload,
}

#[derive(Debug, Default)]
struct Conn {
    /// Request header bytes so far.
    head: Vec<u8>,
    body_left: usize,
    body_kind: Option<BodyKind>,
    body: Vec<Payload>,
    /// Response bytes the send buffer has not taken yet.
    out: VecDeque<Payload>,
    eof: bool,
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
    object: Payload,
    wal: Vec<Segment>,
    log_to_map: bool,
    stats: PhttpdStats,
}

impl Phttpd {
    /// Listens on `port`; `object_len` bytes of the object are prepared for
    /// `GET /obj/N`. With `log_to_map`, WAL bodies go into the memory's
    /// segment map (persistent when the memory is a file).
    pub fn new<P: Port>(
        iface: &mut Interface<P>,
        port: u16,
        object_len: usize,
        log_to_map: bool,
    ) -> Result<Phttpd, IfaceError> {
        let mem = iface.memory().clone();
        let response = Payload::from_bytes(&mem, &rpc_response())?;
        let object = Payload::from_bytes(&mem, &object(object_len))?;
        let listener = iface.tcp_listen(port)?;
        Ok(Phttpd {
            listener,
            mem,
            conns: Conns::default(),
            scratch: Vec::new(),
            response,
            object,
            wal: Vec::new(),
            log_to_map,
            stats: PhttpdStats::default(),
        })
    }

    /// The counters.
    pub fn stats(&self) -> &PhttpdStats {
        &self.stats
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// The WAL records kept in memory (when not logging to the map).
    pub fn wal(&self) -> &[Segment] {
        &self.wal
    }

    /// Handles one poll's events.
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
                    self.serve(iface, h)?;
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
                self.serve(iface, ev.handle)?;
            }
        }
        // Continue responses the send buffers could not take at once.
        let pending: Vec<SocketHandle> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.out.is_empty())
            .map(|(h, _)| *h)
            .collect();
        for h in pending {
            self.flush(iface, h)?;
        }
        Ok(())
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
                if !self.consume(h, chunk)? {
                    self.stats.bad_requests += 1;
                    self.conns.remove(&h);
                    iface.abort(h)?;
                    iface.close(h)?;
                    return Ok(());
                }
            }
        }
        chunks.clear();
        self.scratch = chunks;
        self.flush(iface, h)?;
        if let Some(c) = self.conns.get(&h) {
            if c.eof && c.out.is_empty() {
                self.conns.remove(&h);
                iface.close(h)?;
            }
        }
        Ok(())
    }

    /// Feeds received bytes to connection `h`'s parser; false on a bad
    /// request.
    fn consume(&mut self, h: SocketHandle, mut chunk: Payload) -> Result<bool, IfaceError> {
        while !chunk.is_empty() {
            let c = self.conns.get_mut(&h).expect("known connection");
            if c.body_left > 0 {
                let n = c.body_left.min(chunk.len());
                c.body.push(chunk.split_to(n));
                c.body_left -= n;
                if c.body_left == 0 {
                    self.finish_body(h)?;
                }
                continue;
            }
            // Header bytes: copy a small window into the scratch buffer.
            let mut win = [0u8; 256];
            let n = chunk.copy_to(&mut win);
            let start = c.head.len();
            c.head.extend_from_slice(&win[..n]);
            let Some(end) = find_end(&c.head, start.saturating_sub(3)) else {
                self.stats.header_bytes_copied += n as u64;
                chunk.advance(n);
                if c.head.len() > MAX_HEADER {
                    return Ok(false);
                }
                continue;
            };
            // `end` is just past "\r\n\r\n": keep only the header bytes.
            let used = end - start;
            self.stats.header_bytes_copied += used as u64;
            c.head.truncate(end);
            chunk.advance(used);
            // Parse from the connection's buffer, then give it back
            // emptied (its capacity stays: no allocation per request).
            let mut head = std::mem::take(&mut c.head);
            let ok = self.request(h, &head)?;
            head.clear();
            if let Some(c) = self.conns.get_mut(&h) {
                c.head = head;
            }
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Handles a complete request header.
    fn request(&mut self, h: SocketHandle, head: &[u8]) -> Result<bool, IfaceError> {
        // Lines end in "\n" (the "\r" before it is trimmed); the request
        // line is "METHOD PATH VERSION".
        let mut lines = head
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let mut first = lines.next().unwrap_or(b"").split(|&b| b == b' ');
        let (method, path) = (first.next().unwrap_or(b""), first.next().unwrap_or(b""));
        let Ok(path) = std::str::from_utf8(path) else {
            return Ok(false);
        };
        let mut content_len = 0usize;
        for l in lines {
            let Some(colon) = l.iter().position(|&b| b == b':') else {
                continue;
            };
            let (k, v) = (l[..colon].trim_ascii(), l[colon + 1..].trim_ascii());
            if k.eq_ignore_ascii_case(b"content-length") {
                match std::str::from_utf8(v).ok().and_then(|v| v.parse().ok()) {
                    Some(n) => content_len = n,
                    None => return Ok(false),
                }
            }
        }
        match method {
            b"GET" => {
                self.stats.gets += 1;
                if let Some(n) = path.strip_prefix("/obj/") {
                    let Ok(n) = n.parse::<usize>() else {
                        return Ok(false);
                    };
                    let n = n.min(self.object.len());
                    let hdr = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n");
                    let hdr = Payload::from_bytes(&self.mem, hdr.as_bytes())?;
                    let body = self.object.slice(0, n);
                    self.respond(h, [hdr, body]);
                } else {
                    let r = self.response.clone();
                    self.respond(h, [r]);
                }
                Ok(true)
            }
            b"POST" => {
                self.stats.posts += 1;
                let c = self.conns.get_mut(&h).expect("known connection");
                c.body_kind = Some(if path == "/upload" {
                    BodyKind::Upload
                } else {
                    BodyKind::Wal
                });
                c.body_left = content_len;
                if content_len == 0 {
                    self.finish_body(h)?;
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn finish_body(&mut self, h: SocketHandle) -> Result<(), IfaceError> {
        let c = self.conns.get_mut(&h).expect("known connection");
        let body = std::mem::take(&mut c.body);
        let kind = c.body_kind.take();
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
        let (seg, counts) = self.mem.splice(&pieces)?;
        match kind {
            Some(BodyKind::Upload) => {
                let hex: String = seg.digest().iter().map(|b| format!("{b:02x}")).collect();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{hex}",
                    hex.len()
                );
                let resp = Payload::from_bytes(&self.mem, resp.as_bytes())?;
                self.respond(h, [resp]);
            }
            _ => {
                self.stats.wal_bytes += body_len as u64;
                self.stats.wal_copied += counts.copied_bytes;
                if self.log_to_map {
                    self.mem.map().insert(seg)?;
                } else {
                    self.wal.push(seg);
                }
                let r = self.response.clone();
                self.respond(h, [r]);
            }
        }
        Ok(())
    }

    fn respond<const N: usize>(&mut self, h: SocketHandle, parts: [Payload; N]) {
        self.stats.requests += 1;
        let c = self.conns.get_mut(&h).expect("known connection");
        c.out.extend(parts);
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

/// The index just past the first "\r\n\r\n" at or after `from`.
fn find_end(b: &[u8], from: usize) -> Option<usize> {
    b.get(from..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| from + i + 4)
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
