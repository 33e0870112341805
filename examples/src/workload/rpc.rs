//! PASTE's RPC workload: 44-byte `GET`s, each answered by a 151-byte response.

use super::clients::Clients;
use super::paste::rpc_request;
use super::rng::Rng;
use super::Item;

/// RPC streams and the RX ring snapshot.
pub(super) fn rpc_workload(
    rng: &mut Rng,
    connections: usize,
    requests: usize,
) -> (Vec<Item>, Vec<u8>) {
    let mut clients = Clients::new(rng, connections);
    clients.run(rng, requests, |_, _, conn, now| {
        let secs = now / 1_000_000;
        let answer = format!(
            "{{\"status\":\"ok\",\"time\":{secs},\"node\":\"srv{}\"}}",
            conn.server_ip[3]
        );
        (rpc_request(&conn.host), answer)
    });
    clients.into_items("rpc")
}
