//! The clients of the RPC and WAL workloads: keep-alive connections (`wrk`'s) whose requests
//! the server sees interleaved in time, and the per-connection streams they leave.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::netmap::{netmap_buffer, RingSnapshot};
use super::paste::{text_response, RESPONSE_LEN};
use super::rng::Rng;
use super::{Item, EPOCH_SECS};

/// Mean gap between two requests of one connection, microseconds (keep-alive clients with
/// think time; 50 connections give about 2,000 requests/s, so the clock covers many seconds).
const MEAN_GAP_US: u64 = 25_000;

/// One connection's addresses and TCP state, as the server sees it.
#[derive(Debug, Clone)]
pub(super) struct Conn {
    /// `Host` header value, always 18 bytes: `192.168.11.N:PPPPP`.
    pub(super) host: String,
    pub(super) server_ip: [u8; 4],
    pub(super) server_port: u16,
    pub(super) client_ip: [u8; 4],
    pub(super) client_port: u16,
    /// Next sequence number the client sends, and the server's (acknowledged by the client).
    pub(super) client_seq: u32,
    pub(super) server_seq: u32,
    pub(super) ip_id: u16,
    pub(super) rx: Vec<u8>,
    pub(super) tx: Vec<u8>,
}

impl Conn {
    pub(super) fn new(rng: &mut Rng, index: usize) -> Self {
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

/// The clients of one workload (RPC or WAL) and what the server saw of them.
#[derive(Debug)]
pub(super) struct Clients {
    conns: Vec<Conn>,
    /// The netmap buffers the last requests arrived in.
    ring: RingSnapshot,
}

impl Clients {
    /// `connections` connections, each with addresses and sequence numbers drawn from `rng`.
    pub(super) fn new(rng: &mut Rng, connections: usize) -> Self {
        Clients {
            conns: (0..connections).map(|i| Conn::new(rng, i)).collect(),
            ring: RingSnapshot::default(),
        }
    }

    /// Closed-loop clients: each connection sends its next request a random gap after its
    /// previous one; the server sees the requests of all connections interleaved in time
    /// order. For each of `requests` requests, `serve(rng, index, conn, now_us)` returns the
    /// request's bytes and the text of its answer's body; the request goes on the connection's
    /// RX stream and into the ring, the 151-byte response on its TX stream.
    pub(super) fn run(
        &mut self,
        rng: &mut Rng,
        requests: usize,
        mut serve: impl FnMut(&mut Rng, usize, &Conn, u64) -> (Vec<u8>, String),
    ) {
        let start_us = EPOCH_SECS * 1_000_000;
        let mut heap: BinaryHeap<Reverse<(u64, usize)>> = (0..self.conns.len())
            .map(|c| Reverse((start_us + rng.below(MEAN_GAP_US), c)))
            .collect();
        for _ in 0..requests {
            let Some(Reverse((now, c))) = heap.pop() else {
                break;
            };
            let (request, answer) = serve(rng, c, &self.conns[c], now);
            let conn = &mut self.conns[c];
            self.ring.push(netmap_buffer(conn, &request, now));
            conn.rx.extend_from_slice(&request);
            conn.tx.extend_from_slice(&text_response(&answer));
            conn.server_seq = conn.server_seq.wrapping_add(RESPONSE_LEN as u32);
            heap.push(Reverse((now + rng.gap(MEAN_GAP_US), c)));
        }
    }

    /// Two items per connection that sent anything, `KIND/connNNN/rx` and `KIND/connNNN/tx`,
    /// and the ring's buffers, concatenated.
    pub(super) fn into_items(self, kind: &str) -> (Vec<Item>, Vec<u8>) {
        let mut items = Vec::with_capacity(self.conns.len() * 2);
        for (i, c) in self.conns.into_iter().enumerate() {
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
        (items, self.ring.into_bytes())
    }
}
