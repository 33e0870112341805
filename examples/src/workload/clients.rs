//! The clients of the RPC and WAL workloads: keep-alive connections (`wrk`'s) whose requests
//! the server sees interleaved in time, and the per-connection streams they leave.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::netmap::netmap_buffer;
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

    /// One request and its answer: `request` goes on the RX stream, the 151-byte response
    /// with body `answer` on the TX stream. Returns the netmap buffer the request arrived in.
    pub(super) fn exchange(&mut self, request: &[u8], answer: &str, now_us: u64) -> Vec<u8> {
        let buf = netmap_buffer(self, request, now_us);
        self.rx.extend_from_slice(request);
        self.tx.extend_from_slice(&text_response(answer));
        self.server_seq = self.server_seq.wrapping_add(RESPONSE_LEN as u32);
        buf
    }
}

/// Closed-loop clients: each connection sends its next request a random gap after its previous
/// one; the server sees the requests of all connections interleaved in time order. Calls
/// `serve(conn, now_us)` for each of `requests` requests.
pub(super) fn schedule(
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

pub(super) fn conn_items(kind: &str, conns: Vec<Conn>) -> Vec<Item> {
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
