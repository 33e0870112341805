//! The same traffic for every model: PASTE's RPC and WAL requests, as TCP payloads behind a
//! 66-byte Ethernet/IPv4/TCP header (one frame per request).
//!
//! - `rpc`: the 44-byte `GET` of `wrk` (one `Host` per connection).
//! - `wal`: 1156-byte `POST`s whose 1 KiB bodies are unique random bytes (nothing to
//!   deduplicate: the worst case for HICAMP). PASTE's own `wrk` script sends one fixed body,
//!   which HICAMP would deduplicate entirely; that case is not run.
//! - `wal-repeat`: the built-in workload generator's WAL posts (JSON log records from a skewed
//!   key space, about 10% retries sent again byte for byte, about 15% random bodies), in the
//!   order the generator's clients sent them.

use std::borrow::Cow;

use serde::Serialize;

use crate::workload::paste::rpc_request;
use crate::workload::{default_workload, WorkloadConfig, WAL_BODY_LEN, WAL_POST_LEN};

/// Bytes of the Ethernet, IPv4 and TCP (with timestamps) headers in front of each payload.
pub const DOFF: u16 = 66;

/// A workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// 44-byte GET, 151-byte response.
    Rpc,
    /// 1156-byte POST with a unique 1 KiB body, 151-byte response.
    Wal,
    /// 1156-byte POSTs from the workload generator (bodies repeat as real logs do).
    WalRepeat,
}

impl Workload {
    /// Name as in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Rpc => "rpc",
            Workload::Wal => "wal",
            Workload::WalRepeat => "wal-repeat",
        }
    }
    /// True for the WAL workloads.
    pub fn is_wal(self) -> bool {
        self != Workload::Rpc
    }
    /// All three.
    pub const ALL: [Workload; 3] = [Workload::Rpc, Workload::Wal, Workload::WalRepeat];
}

/// The requests of one workload: request `k` of connection `c` in round `r` is
/// [`Traffic::payload`]`(r * connections + c)`.
#[derive(Debug)]
pub struct Traffic {
    workload: Workload,
    /// RPC: one request per connection host; WAL: the generator's posts.
    pool: Vec<Vec<u8>>,
    seed: u64,
}

/// The `Host` of connection `c` (18 bytes, as the generator's).
pub fn host(c: usize) -> String {
    format!("192.168.11.{}:{}", 2 + c % 8, 60_000 + c / 8 % 100)
}

impl Traffic {
    /// The traffic of `workload`; `posts` WAL posts are generated (requests past them reuse
    /// the generated ones in order, which [`Traffic::generated`] reports).
    pub fn new(workload: Workload, posts: usize, seed: u64) -> Traffic {
        let pool = match workload {
            Workload::Rpc => (0..128).map(|c| rpc_request(&host(c))).collect(),
            Workload::Wal | Workload::WalRepeat => generated_posts(posts, seed),
        };
        Traffic {
            workload,
            pool,
            seed,
        }
    }

    /// WAL posts generated (0 for RPC).
    pub fn generated(&self) -> usize {
        if self.workload.is_wal() {
            self.pool.len()
        } else {
            0
        }
    }

    /// The TCP payload of global request `k` sent on connection `conn`.
    pub fn payload(&self, k: u64, conn: usize) -> Cow<'_, [u8]> {
        match self.workload {
            Workload::Rpc => Cow::Borrowed(&self.pool[conn % self.pool.len()]),
            Workload::WalRepeat => Cow::Borrowed(&self.pool[(k % self.pool.len() as u64) as usize]),
            Workload::Wal => {
                let post = &self.pool[(k % self.pool.len() as u64) as usize];
                let mut v = post[..WAL_POST_LEN - WAL_BODY_LEN].to_vec();
                v.extend_from_slice(&unique_body(self.seed, k));
                Cow::Owned(v)
            }
        }
    }

    /// The frame of a request: a 66-byte header for connection `conn`, then the payload.
    pub fn frame(&self, k: u64, conn: usize) -> Vec<u8> {
        let p = self.payload(k, conn);
        let mut f = frame_header(conn, k, p.len());
        f.extend_from_slice(&p);
        f
    }
}

/// The SplitMix64 finalizer.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A unique 1 KiB body of random bytes for request `k` (its first 8 bytes are `k`). Each
/// body's generator starts from a hash of `k`, so that no body is a shifted copy of another.
pub fn unique_body(seed: u64, k: u64) -> Vec<u8> {
    let mut x = mix(seed ^ mix(k.wrapping_add(0x632B_E59B_D9B4_E019)));
    let mut v = Vec::with_capacity(WAL_BODY_LEN);
    v.extend_from_slice(&k.to_le_bytes());
    while v.len() < WAL_BODY_LEN {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        v.extend_from_slice(&mix(x).to_le_bytes());
    }
    v.truncate(WAL_BODY_LEN);
    v
}

/// `n` WAL posts of the workload generator (50 connections), interleaved as sent.
pub fn generated_posts(n: usize, seed: u64) -> Vec<Vec<u8>> {
    let items = default_workload(&WorkloadConfig {
        seed,
        connections: 50,
        rpc_requests: 0,
        wal_posts: n.max(1),
        static_fetches: 0,
    });
    let streams: Vec<Vec<Vec<u8>>> = items
        .iter()
        .filter(|i| i.name.starts_with("wal/") && i.name.ends_with("/rx"))
        .map(|i| {
            i.data
                .chunks_exact(WAL_POST_LEN)
                .map(<[u8]>::to_vec)
                .collect()
        })
        .collect();
    // Round-robin over the connections' streams: the order a server sees them.
    let mut out = Vec::with_capacity(n);
    let longest = streams.iter().map(Vec::len).max().unwrap_or(0);
    for j in 0..longest {
        for s in &streams {
            if let Some(p) = s.get(j) {
                out.push(p.clone());
            }
        }
    }
    out
}

/// A 66-byte Ethernet + IPv4 + TCP (timestamps option) header for a segment of `len` payload
/// bytes of connection `conn`, request `k` (checksums left to the NIC, as offload does).
pub fn frame_header(conn: usize, k: u64, len: usize) -> Vec<u8> {
    let mut h = Vec::with_capacity(usize::from(DOFF) + len);
    h.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // dst MAC (server)
    h.extend_from_slice(&[0x02, 0, 0, 0, (conn >> 8) as u8, conn as u8]); // src MAC
    h.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 32 + len) as u16;
    h.extend_from_slice(&[0x45, 0]);
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&(k as u16).to_be_bytes());
    h.extend_from_slice(&[0x40, 0, 64, 6, 0, 0]);
    h.extend_from_slice(&[10, 0, (conn / 250) as u8, (conn % 250 + 1) as u8]);
    h.extend_from_slice(&[192, 168, 11, 2 + (conn % 8) as u8]);
    h.extend_from_slice(&(32_768 + conn as u16).to_be_bytes());
    h.extend_from_slice(&60_000u16.to_be_bytes());
    h.extend_from_slice(&((k as u32).wrapping_mul(1156)).to_be_bytes());
    h.extend_from_slice(&((k as u32).wrapping_mul(151)).to_be_bytes());
    h.extend_from_slice(&[0x80, 0x18, 0x01, 0xf5, 0, 0, 0, 0]);
    h.extend_from_slice(&[1, 1, 8, 10]);
    h.extend_from_slice(&(k as u32).to_be_bytes());
    h.extend_from_slice(&(k as u32 ^ 0x5555).to_be_bytes());
    debug_assert_eq!(h.len(), usize::from(DOFF));
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_pastes() {
        let t = Traffic::new(Workload::Rpc, 0, 1);
        assert_eq!(t.payload(0, 3).len(), 44);
        assert_eq!(t.frame(0, 3).len(), 66 + 44);
        let t = Traffic::new(Workload::Wal, 100, 1);
        assert_eq!(t.payload(5, 0).len(), 1156);
        assert_ne!(t.payload(5, 0)[132..], t.payload(6, 0)[132..]);
        // No line of one body is a line of another.
        let lines = |k| {
            unique_body(1, k)
                .chunks(64)
                .map(<[u8]>::to_vec)
                .collect::<Vec<_>>()
        };
        let a: std::collections::HashSet<Vec<u8>> = (0..64).flat_map(lines).collect();
        assert_eq!(a.len(), 64 * 16);
        let t = Traffic::new(Workload::WalRepeat, 100, 1);
        assert!(t.generated() >= 100);
        assert_eq!(t.payload(7, 0).len(), 1156);
    }
}
