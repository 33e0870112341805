//! The messages of PASTE's RPC and WAL workloads that the workload generator and the phttpd
//! server share: the 44-byte `GET` that `wrk` sends and the 151-byte response of PASTE's
//! `phttpd` (its own 87-byte header and a 64-byte body).

/// Length of one RPC request (PASTE's RPC workload).
pub const RPC_REQUEST_LEN: usize = 44;
/// Length of one response, RPC or WAL (PASTE's `phttpd` header and a 64-byte body).
pub const RESPONSE_LEN: usize = 151;
/// Length of the body of one response.
pub const RESPONSE_BODY_LEN: usize = 64;

/// The 87-byte response header of PASTE's `phttpd` for a 64-byte body.
pub const RESPONSE_HEADER: &str = "HTTP/1.1 200 OK\r\n\
                                   Connection: keep-alive\r\n\
                                   Server: Apache/2.2.800\r\n\
                                   Content-Length: 64\r\n\r\n";

/// Length of the `Host` value that makes a request [`RPC_REQUEST_LEN`] bytes long, such as
/// `192.168.11.2:60000`.
pub const RPC_HOST_LEN: usize = 18;

/// The 44-byte `GET` that `wrk` sends: `GET / HTTP/1.1\r\nHost: 192.168.11.2:60000\r\n\r\n`
/// (`host` is [`RPC_HOST_LEN`] bytes long).
pub fn rpc_request(host: &str) -> Vec<u8> {
    let r = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes();
    debug_assert_eq!(r.len(), RPC_REQUEST_LEN);
    r
}

/// A 151-byte response: the header, then `body`.
pub fn response(body: &[u8; RESPONSE_BODY_LEN]) -> Vec<u8> {
    let mut r = Vec::with_capacity(RESPONSE_LEN);
    r.extend_from_slice(RESPONSE_HEADER.as_bytes());
    r.extend_from_slice(body);
    debug_assert_eq!(r.len(), RESPONSE_LEN);
    r
}

/// A 151-byte response whose body is `text` (JSON, say) padded with spaces and a newline.
pub fn text_response(text: &str) -> Vec<u8> {
    let body = pad_to(text.as_bytes().to_vec(), RESPONSE_BODY_LEN);
    response(
        body.as_slice()
            .try_into()
            .expect("padded to the body length"),
    )
}

/// `text` padded with spaces and a final newline to exactly `len` bytes (cut if longer).
pub(crate) fn pad_to(mut text: Vec<u8>, len: usize) -> Vec<u8> {
    text.truncate(len - 1);
    text.resize(len - 1, b' ');
    text.push(b'\n');
    text
}
