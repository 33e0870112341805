//! PASTE's RPC workload: 44-byte `GET`s, each answered by a 151-byte response.

use super::clients::{conn_items, schedule, Conn};
use super::netmap::RingSnapshot;
use super::paste::rpc_request;
use super::rng::Rng;
use super::Item;

/// RPC streams and the RX ring snapshot.
pub(super) fn rpc_workload(
    rng: &mut Rng,
    connections: usize,
    requests: usize,
) -> (Vec<Item>, Vec<u8>) {
    let mut conns: Vec<Conn> = (0..connections).map(|i| Conn::new(rng, i)).collect();
    let mut ring = RingSnapshot::default();
    schedule(rng, connections, requests, |_, c, now| {
        let conn = &mut conns[c];
        let secs = now / 1_000_000;
        let answer = format!(
            "{{\"status\":\"ok\",\"time\":{secs},\"node\":\"srv{}\"}}",
            conn.server_ip[3]
        );
        ring.push(conn.exchange(&rpc_request(&conn.host), &answer, now));
    });
    (conn_items("rpc", conns), ring.into_bytes())
}
