//! A deterministic built-in workload for `hicamp dedup`, shaped like the traffic of PASTE's
//! published benchmarks, so that the command means something with no input.
//!
//! # What it models
//!
//! PASTE (a zero-copy TCP stack over netmap) publishes two workloads, both driven by `wrk` over
//! many keep-alive connections, and a web server's daily bread is a third:
//!
//! - **RPC**: HTTP/1.1 `GET` requests of exactly 44 bytes, each answered by a 151-byte response
//!   with a 64-byte body. The response header is PASTE's own (`phttpd`): status line,
//!   `Connection: keep-alive`, `Server: Apache/2.2.800`, `Content-Length: 64`, which is 87 bytes
//!   and leaves no room for a `Date` header. The per-second variation that a `Date` header would
//!   bring is therefore carried by the 64-byte body, a small JSON result stamped with the second
//!   of a simulated clock. The `Host` header (server address and port, fixed width) differs
//!   between connections and stays fixed within one, as `wrk` does.
//! - **WAL**: `POST` requests of exactly 1156 bytes with a 1 KiB (1024-byte) body, each answered
//!   by a 151-byte response (same header; the body acknowledges the sequence number). The bodies
//!   are a mix: about 75% batches of JSON key/value log records (sequence numbers, timestamps,
//!   keys from a skewed key space, base64 values) padded with spaces to 1 KiB, about 10% retries
//!   (the connection re-sends one of its recent requests byte for byte, idempotency key
//!   included) and about 15% random bytes (compressed or encrypted records).
//! - **Static objects**: a handful of files (HTML page, CSS, JavaScript, two PNG images whose
//!   compressed data is random, an icon that is mostly transparent zeros; 4 KiB to 512 KiB),
//!   each fetched many times with a skewed popularity, served with nginx-style response headers
//!   in front. The same object goes to many clients; only the headers (`Date`) change.
//! - **netmap buffers**: PASTE keeps packets in fixed 2048-byte netmap buffers: 32 bytes of
//!   kernel control block, 66 bytes of Ethernet/IPv4/TCP headers (with timestamps), the payload,
//!   and zeros after it. The workload includes a snapshot of the RX ring (the last
//!   [`NETMAP_RING_SLOTS`] RPC requests as they arrived, connections interleaved) and of the
//!   buffers that PASTE's zero-copy WAL holds (the last [`NETMAP_RING_SLOTS`] POSTs). These are
//!   where the all-zero line matters: a 44-byte request leaves most of its buffer zero.
//!
//! # Items
//!
//! Each [`Item`] is what one application-level reader would see as one file:
//!
//! - `rpc/connNNN/rx` and `rpc/connNNN/tx`: the bytes of one RPC connection in each direction,
//!   messages concatenated as they are on the wire (a socket receive log, a pcap of one flow);
//! - `wal/connNNN/rx` and `wal/connNNN/tx`: the same for the WAL connections;
//! - `static/fetchNNNNN/NAME`: one static-object transfer (response header and object);
//! - `netmap/rpc-rx-ring` and `netmap/wal-held-buffers`: the two buffer snapshots.
//!
//! Streams rather than one item per message, because a 44-byte item would be a whole page to a
//! page-granularity baseline and would say nothing about line-granularity dedup. Within a stream
//! identical messages fall at varying offsets modulo a line, exactly as in a byte stream, while
//! the netmap snapshots show the same messages buffer-aligned: both pictures are in the workload.
//!
//! Everything is generated from [`WorkloadConfig::seed`] by an internal SplitMix64 generator and
//! a simulated clock (starting at 2023-11-14 22:13:20 UTC): no OS randomness, no wall clock. The
//! default configuration gives about 38 MiB in about 400 items.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;

/// Length of one RPC request (PASTE's RPC workload).
pub const RPC_REQUEST_LEN: usize = 44;
/// Length of one response, RPC or WAL (PASTE's `phttpd` header and a 64-byte body).
pub const RESPONSE_LEN: usize = 151;
/// Length of the body of one response.
pub const RESPONSE_BODY_LEN: usize = 64;
/// Length of one WAL `POST` request, header and body.
pub const WAL_POST_LEN: usize = 1156;
/// Length of the body of one WAL `POST`.
pub const WAL_BODY_LEN: usize = 1024;
/// Size of one netmap buffer.
pub const NETMAP_BUF_SIZE: usize = 2048;
/// Bytes at the start of every netmap buffer reserved for the kernel (PASTE).
pub const NETMAP_BUF_HEADROOM: usize = 32;
/// Ethernet (14) + IPv4 (20) + TCP with timestamps (32) header length in a buffer.
pub const PACKET_HEADER_LEN: usize = 66;
/// Number of buffers in each netmap snapshot (at most; fewer if fewer messages).
pub const NETMAP_RING_SLOTS: usize = 1024;

/// Simulated clock start, Unix seconds (2023-11-14T22:13:20Z).
const EPOCH_SECS: u64 = 1_700_000_000;
/// Mean gap between two requests of one connection, microseconds (keep-alive clients with
/// think time; 50 connections give about 2,000 requests/s, so the clock covers many seconds).
const MEAN_GAP_US: u64 = 25_000;
/// Mean gap between two static-object fetches, microseconds.
const STATIC_MEAN_GAP_US: u64 = 100_000;

/// One named input item (like a file): e.g. `rpc/conn017/rx` or `static/fetch00012/app.js`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Path-like name, unique within one workload.
    pub name: String,
    /// The bytes.
    pub data: Vec<u8>,
}

/// Sizes and seed of the built-in workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Connections of the RPC workload, and separately of the WAL workload (at least 1 is used).
    pub connections: usize,
    /// RPC requests in total (each answered).
    pub rpc_requests: usize,
    /// WAL `POST` requests in total (each answered).
    pub wal_posts: usize,
    /// Static-object transfers.
    pub static_fetches: usize,
}

impl Default for WorkloadConfig {
    /// 50 connections (PASTE's headline point), 50,000 RPCs (about 9.3 MiB), 8,000 WAL posts
    /// (about 10 MiB), 200 static fetches (about 15 MiB) and two 2 MiB netmap snapshots: about
    /// 38 MiB in 402 items, generated in well under a second in release builds.
    fn default() -> Self {
        WorkloadConfig {
            seed: 0x5EED_2024_0000_0001,
            connections: 50,
            rpc_requests: 50_000,
            wal_posts: 8_000,
            static_fetches: 200,
        }
    }
}

/// Total bytes of `items`.
pub fn total_bytes(items: &[Item]) -> u64 {
    items.iter().map(|i| i.data.len() as u64).sum()
}

/// Generates the workload described in the module documentation. Deterministic: the same
/// configuration gives the same items, byte for byte, in the same order.
pub fn default_workload(cfg: &WorkloadConfig) -> Vec<Item> {
    let mut root = Rng::new(cfg.seed);
    // Independent streams per part, so changing one size does not reshuffle the others.
    let mut rpc_rng = root.fork();
    let mut wal_rng = root.fork();
    let mut static_rng = root.fork();
    let connections = cfg.connections.max(1);

    let mut items = Vec::new();
    let (mut rpc_items, rpc_ring) = rpc_workload(&mut rpc_rng, connections, cfg.rpc_requests);
    let (mut wal_items, wal_held) = wal_workload(&mut wal_rng, connections, cfg.wal_posts);
    items.append(&mut rpc_items);
    items.append(&mut wal_items);
    items.append(&mut static_workload(&mut static_rng, cfg.static_fetches));
    if !rpc_ring.is_empty() {
        items.push(Item {
            name: "netmap/rpc-rx-ring".to_string(),
            data: rpc_ring,
        });
    }
    if !wal_held.is_empty() {
        items.push(Item {
            name: "netmap/wal-held-buffers".to_string(),
            data: wal_held,
        });
    }
    items
}

// ---------------------------------------------------------------------------------------------
// Random numbers and time

/// SplitMix64: small, fast, and good enough for synthetic data.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A new generator whose sequence is independent of this one's.
    fn fork(&mut self) -> Rng {
        Rng(self.next_u64() ^ 0xD6E8_FEB8_6659_FD93)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `per_mille / 1000`.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    /// Exponentially distributed with the given mean (Poisson arrivals), clamped to
    /// `1..=20 * mean` microseconds.
    fn gap(&mut self, mean: u64) -> u64 {
        // u in [0, 1), so 1 - u in (0, 1] and -ln(1 - u) >= 0.
        let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let e = -(1.0 - u).ln();
        ((e * mean as f64) as u64).clamp(1, mean * 20)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&last[..n]);
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.fill(&mut v);
        v
    }

    /// Index into `weights` chosen with probability proportional to its weight.
    fn weighted(&mut self, weights: &[u64]) -> usize {
        let total: u64 = weights.iter().sum();
        let mut x = self.below(total);
        for (i, &w) in weights.iter().enumerate() {
            if x < w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }

    /// Skewed choice in `0..n`: the minimum of two uniform draws (small values more likely).
    fn skewed(&mut self, n: u64) -> u64 {
        self.below(n).min(self.below(n))
    }
}

/// Civil date (year, month 1-12, day 1-31) of a day count since 1970-01-01 (H. Hinnant).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// RFC 9110 IMF-fixdate, always 29 bytes: `Tue, 14 Nov 2023 22:13:20 GMT`.
fn http_date(unix_secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// RFC 3339 with microseconds: `2023-11-14T22:13:20.123456Z`.
fn iso_time(unix_us: u64) -> String {
    let secs = unix_us / 1_000_000;
    let days = (secs / 86_400) as i64;
    let s = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        y,
        m,
        d,
        s / 3600,
        s / 60 % 60,
        s % 60,
        unix_us % 1_000_000
    )
}

// ---------------------------------------------------------------------------------------------
// Messages

/// The 87-byte response header of PASTE's `phttpd` for a 64-byte body.
const RESPONSE_HEADER: &str = "HTTP/1.1 200 OK\r\n\
                               Connection: keep-alive\r\n\
                               Server: Apache/2.2.800\r\n\
                               Content-Length: 64\r\n\r\n";

/// `text` padded with spaces and a final newline to exactly `len` bytes (cut if longer).
fn pad_to(mut text: Vec<u8>, len: usize) -> Vec<u8> {
    text.truncate(len - 1);
    text.resize(len - 1, b' ');
    text.push(b'\n');
    text
}

/// A 151-byte response whose 64-byte body is the given JSON text (padded).
fn response(body_json: &str) -> Vec<u8> {
    let mut r = RESPONSE_HEADER.as_bytes().to_vec();
    r.extend_from_slice(&pad_to(body_json.as_bytes().to_vec(), RESPONSE_BODY_LEN));
    debug_assert_eq!(r.len(), RESPONSE_LEN);
    r
}

/// One connection's addresses and TCP state, as the server sees it.
#[derive(Debug, Clone)]
struct Conn {
    /// `Host` header value, always 18 bytes: `192.168.11.N:PPPPP`.
    host: String,
    server_ip: [u8; 4],
    server_port: u16,
    client_ip: [u8; 4],
    client_port: u16,
    /// Next sequence number the client sends, and the server's (acknowledged by the client).
    client_seq: u32,
    server_seq: u32,
    ip_id: u16,
    rx: Vec<u8>,
    tx: Vec<u8>,
}

impl Conn {
    fn new(rng: &mut Rng, index: usize) -> Self {
        let octet = 2 + (index % 8) as u8;
        let port = 60_000 + (index / 8 % 100) as u16;
        Conn {
            host: format!("192.168.11.{octet}:{port}"),
            server_ip: [192, 168, 11, octet],
            server_port: port,
            client_ip: [10, 0, (index / 250) as u8, (index % 250 + 1) as u8],
            client_port: rng.range(32_768, 60_999) as u16,
            client_seq: rng.next_u64() as u32,
            server_seq: rng.next_u64() as u32,
            ip_id: rng.next_u64() as u16,
            rx: Vec::new(),
            tx: Vec::new(),
        }
    }
}

/// The 44-byte `GET` that `wrk` sends: `GET / HTTP/1.1\r\nHost: 192.168.11.2:60000\r\n\r\n`.
fn rpc_request(conn: &Conn) -> Vec<u8> {
    let r = format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", conn.host).into_bytes();
    debug_assert_eq!(r.len(), RPC_REQUEST_LEN);
    r
}

/// Internet checksum (RFC 1071) over `parts`, each of even length except possibly the last.
fn inet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &b in *part {
            match odd.take() {
                None => odd = Some(b),
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(hi) << 8;
    }
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

/// One netmap buffer as PASTE's RX ring holds it: 32 bytes of kernel headroom (zeros), the
/// 66-byte Ethernet/IPv4/TCP header of a client-to-server segment, the payload, then zeros.
/// Advances the connection's client sequence number and IP id.
fn netmap_buffer(conn: &mut Conn, payload: &[u8], now_us: u64) -> Vec<u8> {
    let mut buf = vec![0u8; NETMAP_BUF_SIZE];
    let h = &mut buf[NETMAP_BUF_HEADROOM..NETMAP_BUF_HEADROOM + PACKET_HEADER_LEN];
    // Ethernet: server MAC, client MAC, IPv4.
    h[0..6].copy_from_slice(&[0x3c, 0xfd, 0xfe, 0xa5, 0x11, 0x02]);
    h[6..12].copy_from_slice(&[0x3c, 0xfd, 0xfe, 0xa5, 0x22, 0x01]);
    h[12..14].copy_from_slice(&[0x08, 0x00]);
    // IPv4, no options, DF, TTL 64, TCP.
    let total_len = (20 + 32 + payload.len()) as u16;
    let ip = &mut h[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total_len.to_be_bytes());
    ip[4..6].copy_from_slice(&conn.ip_id.to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&conn.client_ip);
    ip[16..20].copy_from_slice(&conn.server_ip);
    let ip_sum = inet_checksum(&[ip]);
    ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    // TCP: data offset 8 words, PSH|ACK, window, NOP NOP TS(val, ecr).
    let tcp = &mut h[34..66];
    tcp[0..2].copy_from_slice(&conn.client_port.to_be_bytes());
    tcp[2..4].copy_from_slice(&conn.server_port.to_be_bytes());
    tcp[4..8].copy_from_slice(&conn.client_seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&conn.server_seq.to_be_bytes());
    tcp[12] = 8 << 4;
    tcp[13] = 0x18;
    tcp[14..16].copy_from_slice(&502u16.to_be_bytes());
    tcp[20..24].copy_from_slice(&[1, 1, 8, 10]);
    let ts_val = (now_us / 1000) as u32;
    tcp[24..28].copy_from_slice(&ts_val.to_be_bytes());
    tcp[28..32].copy_from_slice(&ts_val.wrapping_sub(1).to_be_bytes());
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&conn.client_ip);
    pseudo[4..8].copy_from_slice(&conn.server_ip);
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&((32 + payload.len()) as u16).to_be_bytes());
    let tcp_sum = inet_checksum(&[&pseudo, tcp, payload]);
    tcp[16..18].copy_from_slice(&tcp_sum.to_be_bytes());
    let start = NETMAP_BUF_HEADROOM + PACKET_HEADER_LEN;
    buf[start..start + payload.len()].copy_from_slice(payload);
    conn.client_seq = conn.client_seq.wrapping_add(payload.len() as u32);
    conn.ip_id = conn.ip_id.wrapping_add(1);
    buf
}

/// Keeps the last `NETMAP_RING_SLOTS` buffers in arrival order, as a ring would.
#[derive(Debug, Default)]
struct RingSnapshot {
    slots: Vec<Vec<u8>>,
    next: usize,
}

impl RingSnapshot {
    fn push(&mut self, buf: Vec<u8>) {
        if self.slots.len() < NETMAP_RING_SLOTS {
            self.slots.push(buf);
        } else {
            self.slots[self.next] = buf;
            self.next = (self.next + 1) % NETMAP_RING_SLOTS;
        }
    }

    /// Buffers in slot order (the ring's memory), concatenated.
    fn into_bytes(self) -> Vec<u8> {
        self.slots.concat()
    }
}

/// Closed-loop clients: each connection sends its next request a random gap after its previous
/// one; the server sees the requests of all connections interleaved in time order. Calls
/// `serve(conn, now_us)` for each of `requests` requests.
fn schedule(
    rng: &mut Rng,
    connections: usize,
    requests: usize,
    mut serve: impl FnMut(&mut Rng, usize, u64),
) {
    let start_us = EPOCH_SECS * 1_000_000;
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> = (0..connections)
        .map(|c| Reverse((start_us + rng.below(MEAN_GAP_US), c)))
        .collect();
    for _ in 0..requests {
        let Some(Reverse((now, c))) = heap.pop() else {
            break;
        };
        serve(rng, c, now);
        heap.push(Reverse((now + rng.gap(MEAN_GAP_US), c)));
    }
}

fn conn_items(kind: &str, conns: Vec<Conn>) -> Vec<Item> {
    let mut items = Vec::with_capacity(conns.len() * 2);
    for (i, c) in conns.into_iter().enumerate() {
        if c.rx.is_empty() {
            continue;
        }
        items.push(Item {
            name: format!("{kind}/conn{i:03}/rx"),
            data: c.rx,
        });
        items.push(Item {
            name: format!("{kind}/conn{i:03}/tx"),
            data: c.tx,
        });
    }
    items
}

/// RPC streams and the RX ring snapshot.
fn rpc_workload(rng: &mut Rng, connections: usize, requests: usize) -> (Vec<Item>, Vec<u8>) {
    let mut conns: Vec<Conn> = (0..connections).map(|i| Conn::new(rng, i)).collect();
    let mut ring = RingSnapshot::default();
    schedule(rng, connections, requests, |_, c, now| {
        let conn = &mut conns[c];
        let req = rpc_request(conn);
        ring.push(netmap_buffer(conn, &req, now));
        conn.rx.extend_from_slice(&req);
        let secs = now / 1_000_000;
        let body = format!(
            "{{\"status\":\"ok\",\"time\":{secs},\"node\":\"srv{}\"}}",
            conn.server_ip[3]
        );
        conn.tx.extend_from_slice(&response(&body));
        conn.server_seq = conn.server_seq.wrapping_add(RESPONSE_LEN as u32);
    });
    (conn_items("rpc", conns), ring.into_bytes())
}

/// A WAL `POST` of exactly 1156 bytes: 132 bytes of header (the `X-Request-Id` fills the header
/// to its exact length) and the 1024-byte body.
fn wal_post(conn: &Conn, request_id: u64, json: bool, body: &[u8]) -> Vec<u8> {
    debug_assert_eq!(body.len(), WAL_BODY_LEN);
    let ctype = if json {
        "application/json"
    } else {
        "application/octet-stream"
    };
    let head = format!(
        "POST /wal HTTP/1.1\r\nHost: {}\r\nContent-Type: {ctype}\r\nContent-Length: {WAL_BODY_LEN}\r\n",
        conn.host
    );
    let id_field = "X-Request-Id: ";
    let id_len = WAL_POST_LEN - WAL_BODY_LEN - head.len() - id_field.len() - 4;
    let id = format!("{request_id:0id_len$x}");
    let mut r = format!("{head}{id_field}{}\r\n\r\n", &id[id.len() - id_len..]).into_bytes();
    r.extend_from_slice(body);
    debug_assert_eq!(r.len(), WAL_POST_LEN);
    r
}

const OPS: [&str; 4] = ["put", "put", "del", "incr"];
const TABLES: [&str; 5] = ["user", "order", "cart", "session", "item"];
const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// A 1 KiB body of newline-separated JSON log records, padded with spaces.
fn wal_json_body(rng: &mut Rng, seq: &mut u64, conn: usize, now_us: u64) -> Vec<u8> {
    let mut text = String::with_capacity(WAL_BODY_LEN);
    let mut record = String::with_capacity(256);
    loop {
        record.clear();
        let op = OPS[rng.below(OPS.len() as u64) as usize];
        let table = TABLES[rng.skewed(TABLES.len() as u64) as usize];
        let key = rng.skewed(10_000);
        let _ = write!(
            record,
            "{{\"seq\":{},\"ts\":\"{}\",\"conn\":{conn},\"op\":\"{op}\",\"key\":\"{table}:{key:06}\"",
            *seq + 1,
            iso_time(now_us)
        );
        match op {
            "put" => {
                let n = 4 * rng.range(4, 24) as usize;
                let v: String = (0..n)
                    .map(|_| B64[rng.below(64) as usize] as char)
                    .collect();
                let _ = write!(record, ",\"val\":\"{v}\"");
            }
            "incr" => {
                let _ = write!(record, ",\"by\":{}", rng.range(1, 10));
            }
            _ => {}
        }
        record.push_str("}\n");
        // Whole records only; the rest of the block is padding.
        if text.len() + record.len() > WAL_BODY_LEN - 1 {
            break;
        }
        *seq += 1;
        text.push_str(&record);
    }
    pad_to(text.into_bytes(), WAL_BODY_LEN)
}

/// WAL streams and the held-buffer snapshot.
fn wal_workload(rng: &mut Rng, connections: usize, posts: usize) -> (Vec<Item>, Vec<u8>) {
    let mut conns: Vec<Conn> = (0..connections).map(|i| Conn::new(rng, i)).collect();
    // The last few requests of each connection, for retries.
    let mut recent: Vec<Vec<Vec<u8>>> = vec![Vec::new(); connections];
    let mut held = RingSnapshot::default();
    let mut seq = 0u64;
    let mut request_id = rng.next_u64() >> 8;
    schedule(rng, connections, posts, |rng, c, now| {
        let conn = &mut conns[c];
        let past = &mut recent[c];
        let post = if !past.is_empty() && rng.chance(100) {
            past[rng.below(past.len() as u64) as usize].clone()
        } else {
            request_id += 1;
            let post = if rng.chance(167) {
                wal_post(conn, request_id, false, &rng.bytes(WAL_BODY_LEN))
            } else {
                let body = wal_json_body(rng, &mut seq, c, now);
                wal_post(conn, request_id, true, &body)
            };
            if past.len() == 8 {
                past.remove(0);
            }
            past.push(post.clone());
            post
        };
        held.push(netmap_buffer(conn, &post, now));
        conn.rx.extend_from_slice(&post);
        let body = format!(
            "{{\"status\":\"ok\",\"seq\":{seq},\"time\":{}}}",
            now / 1_000_000
        );
        conn.tx.extend_from_slice(&response(&body));
        conn.server_seq = conn.server_seq.wrapping_add(RESPONSE_LEN as u32);
    });
    (conn_items("wal", conns), held.into_bytes())
}

// ---------------------------------------------------------------------------------------------
// Static objects

#[derive(Debug, Clone, Copy)]
enum Kind {
    Html,
    Css,
    Js,
    Png,
    Ico,
}

struct StaticObject {
    name: &'static str,
    content_type: &'static str,
    size: usize,
    /// Relative popularity.
    weight: u64,
    kind: Kind,
}

const OBJECTS: [StaticObject; 6] = [
    StaticObject {
        name: "index.html",
        content_type: "text/html",
        size: 22 * 1024,
        weight: 30,
        kind: Kind::Html,
    },
    StaticObject {
        name: "style.css",
        content_type: "text/css",
        size: 12 * 1024,
        weight: 20,
        kind: Kind::Css,
    },
    StaticObject {
        name: "app.js",
        content_type: "application/javascript",
        size: 160 * 1024,
        weight: 20,
        kind: Kind::Js,
    },
    StaticObject {
        name: "logo.png",
        content_type: "image/png",
        size: 48 * 1024,
        weight: 15,
        kind: Kind::Png,
    },
    StaticObject {
        name: "favicon.ico",
        content_type: "image/x-icon",
        size: 4286,
        weight: 10,
        kind: Kind::Ico,
    },
    StaticObject {
        name: "hero.png",
        content_type: "image/png",
        size: 512 * 1024,
        weight: 5,
        kind: Kind::Png,
    },
];

const WORDS: [&str; 32] = [
    "memory", "line", "page", "network", "buffer", "zero", "copy", "stack", "request", "server",
    "client", "the", "a", "of", "and", "to", "in", "for", "with", "data", "packet", "ring", "log",
    "write", "read", "fast", "shared", "segment", "cache", "table", "value", "key",
];

fn words(rng: &mut Rng, n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[rng.skewed(WORDS.len() as u64) as usize]);
    }
    s
}

/// Text generated by `piece` until `size - footer.len()` bytes, cut there, then `footer`.
fn text_object(size: usize, footer: &str, mut piece: impl FnMut(&mut String)) -> Vec<u8> {
    let mut s = String::with_capacity(size + 512);
    while s.len() < size - footer.len() {
        piece(&mut s);
    }
    let mut v = s.into_bytes();
    v.truncate(size - footer.len());
    v.extend_from_slice(footer.as_bytes());
    v
}

fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for part in parts {
        for &b in *part {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
            }
        }
    }
    !crc
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc32(&[kind, data]).to_be_bytes());
}

fn make_object(rng: &mut Rng, obj: &StaticObject) -> Vec<u8> {
    let size = obj.size;
    let data = match obj.kind {
        Kind::Html => {
            let mut s = String::from(
                "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
                 <title>HICAMP</title>\n<link rel=\"stylesheet\" href=\"/style.css\">\n\
                 <script src=\"/app.js\" defer></script>\n</head>\n<body>\n",
            );
            let mut section = 0;
            let body = text_object(size - s.len(), "</main>\n</body>\n</html>\n", |t| {
                section += 1;
                let h = words(rng, 3);
                let n = rng.range(20, 80) as usize;
                let p = words(rng, n);
                let _ = write!(
                    t,
                    "<section id=\"s{section}\" class=\"card\">\n  <h2>{h}</h2>\n  <p>{p}.</p>\n</section>\n"
                );
            });
            s.push_str(&String::from_utf8_lossy(&body));
            s.into_bytes()
        }
        Kind::Css => {
            let mut rule = 0;
            text_object(size, "/* end */\n", |t| {
                rule += 1;
                let _ = write!(
                    t,
                    ".{}-{rule} {{\n  color: #{:06x};\n  margin: {}px {}px;\n  padding: {}px;\n  display: {};\n}}\n",
                    WORDS[rng.below(WORDS.len() as u64) as usize],
                    rng.below(1 << 24),
                    rng.below(5) * 4,
                    rng.below(5) * 4,
                    rng.below(4) * 2,
                    ["block", "flex", "grid", "inline-block"][rng.below(4) as usize]
                );
            })
        }
        Kind::Js => {
            let mut f = 0;
            text_object(size, "//# sourceMappingURL=app.js.map\n", |t| {
                f += 1;
                let a = WORDS[rng.below(WORDS.len() as u64) as usize];
                let b = WORDS[rng.below(WORDS.len() as u64) as usize];
                let _ = write!(
                    t,
                    "function {a}_{f}({b}, opts) {{\n  if (!{b}) return null;\n  const n = {b}.length * {};\n  \
                     return {{ {a}: n, ok: opts && opts.{b} !== undefined }};\n}}\n",
                    rng.range(1, 999)
                );
            })
        }
        Kind::Png => {
            let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
            let mut ihdr = Vec::with_capacity(13);
            ihdr.extend_from_slice(&(rng.range(64, 2048) as u32).to_be_bytes());
            ihdr.extend_from_slice(&(rng.range(64, 2048) as u32).to_be_bytes());
            ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
            png_chunk(&mut out, b"IHDR", &ihdr);
            // Compressed image data is indistinguishable from random bytes.
            let idat = rng.bytes(size - out.len() - 12 - 12);
            png_chunk(&mut out, b"IDAT", &idat);
            png_chunk(&mut out, b"IEND", &[]);
            out
        }
        Kind::Ico => {
            // ICONDIR + ICONDIRENTRY + BITMAPINFOHEADER, then 32x32 BGRA pixels (a round logo in
            // the middle, transparent zeros around it) and the AND mask.
            let mut out = vec![0, 0, 1, 0, 1, 0, 32, 32, 0, 0, 1, 0, 32, 0];
            out.extend_from_slice(&((size - 22) as u32).to_le_bytes());
            out.extend_from_slice(&22u32.to_le_bytes());
            let mut bih = vec![0u8; 40];
            bih[0] = 40;
            bih[4] = 32;
            bih[8] = 64;
            bih[12] = 1;
            bih[14] = 32;
            out.extend_from_slice(&bih);
            let color = rng.next_u64().to_le_bytes();
            for y in 0..32i32 {
                for x in 0..32i32 {
                    let (dx, dy) = (x - 16, y - 16);
                    if dx * dx + dy * dy < 100 {
                        out.extend_from_slice(&[color[0], color[1], color[2], 0xff]);
                    } else {
                        out.extend_from_slice(&[0; 4]);
                    }
                }
            }
            out.resize(size, 0);
            out
        }
    };
    debug_assert_eq!(data.len(), size);
    data
}

/// nginx-style response header of a static object.
fn static_header(obj: &StaticObject, now_secs: u64, mtime: u64) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nServer: nginx/1.24.0\r\nDate: {}\r\nContent-Type: {}\r\n\
         Content-Length: {}\r\nLast-Modified: {}\r\nConnection: keep-alive\r\n\
         ETag: \"{mtime:x}-{:x}\"\r\nAccept-Ranges: bytes\r\n\r\n",
        http_date(now_secs),
        obj.content_type,
        obj.size,
        http_date(mtime),
        obj.size
    )
}

fn static_workload(rng: &mut Rng, fetches: usize) -> Vec<Item> {
    let objects: Vec<Vec<u8>> = OBJECTS.iter().map(|o| make_object(rng, o)).collect();
    let mtimes: Vec<u64> = OBJECTS
        .iter()
        .map(|_| EPOCH_SECS - rng.range(3_600, 30 * 86_400))
        .collect();
    let weights: Vec<u64> = OBJECTS.iter().map(|o| o.weight).collect();
    let mut now_us = EPOCH_SECS * 1_000_000;
    (0..fetches)
        .map(|i| {
            now_us += rng.gap(STATIC_MEAN_GAP_US);
            let k = rng.weighted(&weights);
            let obj = &OBJECTS[k];
            let mut data = static_header(obj, now_us / 1_000_000, mtimes[k]).into_bytes();
            data.extend_from_slice(&objects[k]);
            Item {
                name: format!("static/fetch{i:05}/{}", obj.name),
                data,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> WorkloadConfig {
        WorkloadConfig {
            seed: 7,
            connections: 5,
            rpc_requests: 500,
            wal_posts: 300,
            static_fetches: 20,
        }
    }

    #[test]
    fn deterministic_per_seed() {
        let a = default_workload(&small());
        let b = default_workload(&small());
        assert_eq!(a, b);
        let c = default_workload(&WorkloadConfig { seed: 8, ..small() });
        assert_ne!(a, c);
        // Every part depends on the seed, not only some.
        let differing = a.iter().zip(&c).filter(|(x, y)| x.data != y.data).count();
        assert!(differing > a.len() / 2, "{differing} of {}", a.len());
    }

    #[test]
    fn names_unique() {
        let items = default_workload(&small());
        let mut names: Vec<&str> = items.iter().map(|i| i.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), items.len());
    }

    #[test]
    fn message_sizes_exact() {
        let mut rng = Rng::new(1);
        for i in 0..200 {
            let conn = Conn::new(&mut rng, i);
            assert_eq!(conn.host.len(), 18);
            assert_eq!(rpc_request(&conn).len(), RPC_REQUEST_LEN);
            let post = wal_post(&conn, rng.next_u64(), i % 2 == 0, &[b'x'; WAL_BODY_LEN]);
            assert_eq!(post.len(), WAL_POST_LEN);
            assert!(post.ends_with(&[b'x'; WAL_BODY_LEN]));
            let head = std::str::from_utf8(&post[..WAL_POST_LEN - WAL_BODY_LEN]).unwrap();
            assert!(head.starts_with("POST /wal HTTP/1.1\r\n"));
            assert!(head.contains("Content-Length: 1024\r\n"));
            assert!(head.ends_with("\r\n\r\n"));
        }
        assert_eq!(RESPONSE_HEADER.len(), RESPONSE_LEN - RESPONSE_BODY_LEN);
        let r = response("{\"status\":\"ok\",\"time\":1700000000}");
        assert_eq!(r.len(), RESPONSE_LEN);
        let mut seq = 0;
        for _ in 0..50 {
            let body = wal_json_body(&mut rng, &mut seq, 3, EPOCH_SECS * 1_000_000);
            assert_eq!(body.len(), WAL_BODY_LEN);
        }
    }

    #[test]
    fn streams_are_whole_messages() {
        let cfg = small();
        let items = default_workload(&cfg);
        let sum = |prefix: &str, suffix: &str| -> usize {
            items
                .iter()
                .filter(|i| i.name.starts_with(prefix) && i.name.ends_with(suffix))
                .map(|i| i.data.len())
                .sum()
        };
        assert_eq!(sum("rpc/", "/rx"), cfg.rpc_requests * RPC_REQUEST_LEN);
        assert_eq!(sum("rpc/", "/tx"), cfg.rpc_requests * RESPONSE_LEN);
        assert_eq!(sum("wal/", "/rx"), cfg.wal_posts * WAL_POST_LEN);
        assert_eq!(sum("wal/", "/tx"), cfg.wal_posts * RESPONSE_LEN);
        for item in items.iter().filter(|i| i.name.starts_with("rpc/")) {
            let (msg, len) = if item.name.ends_with("/rx") {
                (&b"GET / HTTP/1.1\r\n"[..], RPC_REQUEST_LEN)
            } else {
                (&b"HTTP/1.1 200 OK\r\n"[..], RESPONSE_LEN)
            };
            for m in item.data.chunks(len) {
                assert_eq!(m.len(), len);
                assert!(m.starts_with(msg));
                assert!(m.ends_with(b"\n"));
            }
        }
        for item in items.iter().filter(|i| i.name.starts_with("wal/")) {
            let len = if item.name.ends_with("/rx") {
                WAL_POST_LEN
            } else {
                RESPONSE_LEN
            };
            assert_eq!(item.data.len() % len, 0);
        }
        let fetches = items
            .iter()
            .filter(|i| i.name.starts_with("static/"))
            .count();
        assert_eq!(fetches, cfg.static_fetches);
    }

    #[test]
    fn netmap_buffers_shaped_like_paste() {
        let items = default_workload(&small());
        let ring = items
            .iter()
            .find(|i| i.name == "netmap/rpc-rx-ring")
            .unwrap();
        assert_eq!(
            ring.data.len(),
            500.min(NETMAP_RING_SLOTS) * NETMAP_BUF_SIZE
        );
        for buf in ring.data.chunks(NETMAP_BUF_SIZE) {
            assert!(buf[..NETMAP_BUF_HEADROOM].iter().all(|&b| b == 0));
            let ip = &buf[NETMAP_BUF_HEADROOM + 14..NETMAP_BUF_HEADROOM + 34];
            assert_eq!(inet_checksum(&[ip]), 0, "IPv4 header checksum verifies");
            let p = NETMAP_BUF_HEADROOM + PACKET_HEADER_LEN;
            assert!(buf[p..].starts_with(b"GET / HTTP/1.1\r\n"));
            assert!(buf[p + RPC_REQUEST_LEN..].iter().all(|&b| b == 0));
        }
        let held = items
            .iter()
            .find(|i| i.name == "netmap/wal-held-buffers")
            .unwrap();
        assert_eq!(held.data.len(), 300 * NETMAP_BUF_SIZE);
    }

    #[test]
    fn retries_and_random_bodies_present() {
        let items = default_workload(&small());
        let mut posts: Vec<&[u8]> = Vec::new();
        for item in items
            .iter()
            .filter(|i| i.name.starts_with("wal/") && i.name.ends_with("/rx"))
        {
            posts.extend(item.data.chunks(WAL_POST_LEN));
        }
        let total = posts.len();
        let binary = posts
            .iter()
            .filter(|p| p.windows(24).any(|w| w == b"application/octet-stream"))
            .count();
        posts.sort_unstable();
        posts.dedup();
        let retries = total - posts.len();
        assert!(
            retries > total / 40 && retries < total / 5,
            "{retries}/{total}"
        );
        assert!(
            binary > total / 20 && binary < total / 3,
            "{binary}/{total}"
        );
    }

    #[test]
    fn dates_format() {
        assert_eq!(http_date(EPOCH_SECS), "Tue, 14 Nov 2023 22:13:20 GMT");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(
            iso_time(EPOCH_SECS * 1_000_000 + 42),
            "2023-11-14T22:13:20.000042Z"
        );
    }

    #[test]
    fn static_objects_repeat_and_png_valid() {
        let items = default_workload(&small());
        let mut rng = Rng::new(3);
        for obj in &OBJECTS {
            assert_eq!(make_object(&mut rng, obj).len(), obj.size);
            assert!((4096..=512 * 1024).contains(&obj.size));
        }
        let png = make_object(&mut rng, &OBJECTS[3]);
        // The IEND chunk's CRC is the well-known AE 42 60 82.
        assert_eq!(&png[png.len() - 4..], &[0xAE, 0x42, 0x60, 0x82]);
        let html: Vec<&Item> = items
            .iter()
            .filter(|i| i.name.ends_with("/index.html"))
            .collect();
        assert!(html.len() >= 2);
        let body = |i: &Item| {
            let p = i.data.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
            i.data[p + 4..].to_vec()
        };
        assert_eq!(body(html[0]), body(html[1]));
        assert_eq!(body(html[0]).len(), OBJECTS[0].size);
    }

    #[test]
    fn default_total_in_documented_range() {
        let items = default_workload(&WorkloadConfig::default());
        let total = total_bytes(&items);
        assert!(
            (16 << 20..=64 << 20).contains(&total),
            "{total} bytes in {} items",
            items.len()
        );
        eprintln!("default workload: {total} bytes in {} items", items.len());
    }

    #[test]
    fn empty_config() {
        let items = default_workload(&WorkloadConfig {
            seed: 1,
            connections: 0,
            rpc_requests: 0,
            wal_posts: 0,
            static_fetches: 0,
        });
        assert!(items.is_empty());
        assert_eq!(total_bytes(&items), 0);
    }
}
