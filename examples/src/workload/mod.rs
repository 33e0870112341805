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
//!
//! # Files
//!
//! | file         | job                                                                  |
//! |--------------|----------------------------------------------------------------------|
//! | `rpc.rs`, `wal.rs`, `objects.rs` | the three workloads                              |
//! | [`paste`]    | the 44-byte request and 151-byte response (shared with `phttpd`)     |
//! | `clients.rs` | connections, their streams, and the closed-loop request schedule     |
//! | `netmap.rs`  | packets in 2 KiB netmap buffers (checksums by `nicdma::offload`)     |
//! | `png.rs`     | PNG chunks and their CRC-32                                          |
//! | `date.rs`    | HTTP and RFC 3339 dates of the simulated clock                       |
//! | `rng.rs`     | the SplitMix64 generator of every random choice                      |

mod clients;
mod date;
mod netmap;
mod objects;
pub mod paste;
mod png;
mod rng;
mod rpc;
mod wal;

pub use netmap::{NETMAP_BUF_HEADROOM, NETMAP_BUF_SIZE, NETMAP_RING_SLOTS, PACKET_HEADER_LEN};
pub use paste::{RESPONSE_BODY_LEN, RESPONSE_LEN, RPC_REQUEST_LEN};
pub use wal::{WAL_BODY_LEN, WAL_POST_LEN};

use objects::static_workload;
use rng::Rng;
use rpc::rpc_workload;
use wal::wal_workload;

/// Simulated clock start, Unix seconds (2023-11-14T22:13:20Z).
const EPOCH_SECS: u64 = 1_700_000_000;

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

#[cfg(test)]
mod tests {
    use nicdma::checksum::checksum;

    use super::clients::Conn;
    use super::objects::{make_object, OBJECTS};
    use super::paste::{rpc_request, text_response, RESPONSE_HEADER};
    use super::wal::{wal_json_body, wal_post};
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
            assert_eq!(rpc_request(&conn.host).len(), RPC_REQUEST_LEN);
            let post = wal_post(&conn, rng.next_u64(), i % 2 == 0, &[b'x'; WAL_BODY_LEN]);
            assert_eq!(post.len(), WAL_POST_LEN);
            assert!(post.ends_with(&[b'x'; WAL_BODY_LEN]));
            let head = std::str::from_utf8(&post[..WAL_POST_LEN - WAL_BODY_LEN]).unwrap();
            assert!(head.starts_with("POST /wal HTTP/1.1\r\n"));
            assert!(head.contains("Content-Length: 1024\r\n"));
            assert!(head.ends_with("\r\n\r\n"));
        }
        assert_eq!(RESPONSE_HEADER.len(), RESPONSE_LEN - RESPONSE_BODY_LEN);
        let r = text_response("{\"status\":\"ok\",\"time\":1700000000}");
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
            assert_eq!(checksum(ip), 0, "IPv4 header checksum verifies");
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
