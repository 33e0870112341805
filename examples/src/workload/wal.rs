//! PASTE's WAL workload: 1156-byte `POST`s with 1 KiB bodies (JSON log records, retries and
//! random bytes), each answered by a 151-byte response.

use std::fmt::Write as _;

use super::clients::{Clients, Conn};
use super::date::iso_time;
use super::paste::pad_to;
use super::rng::Rng;
use super::Item;

/// Length of one WAL `POST` request, header and body.
pub const WAL_POST_LEN: usize = 1156;
/// Length of the body of one WAL `POST`.
pub const WAL_BODY_LEN: usize = 1024;

/// A WAL `POST` of exactly 1156 bytes: 132 bytes of header (the `X-Request-Id` fills the header
/// to its exact length) and the 1024-byte body.
pub(super) fn wal_post(conn: &Conn, request_id: u64, json: bool, body: &[u8]) -> Vec<u8> {
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
pub(super) fn wal_json_body(rng: &mut Rng, seq: &mut u64, conn: usize, now_us: u64) -> Vec<u8> {
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
pub(super) fn wal_workload(
    rng: &mut Rng,
    connections: usize,
    posts: usize,
) -> (Vec<Item>, Vec<u8>) {
    let mut clients = Clients::new(rng, connections);
    // The last few requests of each connection, for retries.
    let mut recent: Vec<Vec<Vec<u8>>> = vec![Vec::new(); connections];
    let mut seq = 0u64;
    let mut request_id = rng.next_u64() >> 8;
    clients.run(rng, posts, |rng, c, conn, now| {
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
        let answer = format!(
            "{{\"status\":\"ok\",\"seq\":{seq},\"time\":{}}}",
            now / 1_000_000
        );
        (post, answer)
    });
    clients.into_items("wal")
}
