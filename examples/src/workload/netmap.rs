//! netmap buffers as PASTE holds packets in them: a fixed 2 KiB buffer per packet, headers and
//! payload in place, zeros after.

use nicdma::checksum::{checksum, checksum_chunks};

use super::clients::Conn;

/// Size of one netmap buffer.
pub const NETMAP_BUF_SIZE: usize = 2048;
/// Bytes at the start of every netmap buffer reserved for the kernel (PASTE).
pub const NETMAP_BUF_HEADROOM: usize = 32;
/// Ethernet (14) + IPv4 (20) + TCP with timestamps (32) header length in a buffer.
pub const PACKET_HEADER_LEN: usize = 66;
/// Number of buffers in each netmap snapshot (at most; fewer if fewer messages).
pub const NETMAP_RING_SLOTS: usize = 1024;

/// One netmap buffer as PASTE's RX ring holds it: 32 bytes of kernel headroom (zeros), the
/// 66-byte Ethernet/IPv4/TCP header of a client-to-server segment, the payload, then zeros.
/// Advances the connection's client sequence number and IP id.
pub(super) fn netmap_buffer(conn: &mut Conn, payload: &[u8], now_us: u64) -> Vec<u8> {
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
    let ip_sum = checksum(ip);
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
    let tcp_sum = checksum_chunks([&pseudo[..], &tcp[..], payload]);
    tcp[16..18].copy_from_slice(&tcp_sum.to_be_bytes());
    let start = NETMAP_BUF_HEADROOM + PACKET_HEADER_LEN;
    buf[start..start + payload.len()].copy_from_slice(payload);
    conn.client_seq = conn.client_seq.wrapping_add(payload.len() as u32);
    conn.ip_id = conn.ip_id.wrapping_add(1);
    buf
}

/// Keeps the last `NETMAP_RING_SLOTS` buffers in arrival order, as a ring would.
#[derive(Debug, Default)]
pub(super) struct RingSnapshot {
    slots: Vec<Vec<u8>>,
    next: usize,
}

impl RingSnapshot {
    pub(super) fn push(&mut self, buf: Vec<u8>) {
        if self.slots.len() < NETMAP_RING_SLOTS {
            self.slots.push(buf);
        } else {
            self.slots[self.next] = buf;
            self.next = (self.next + 1) % NETMAP_RING_SLOTS;
        }
    }

    /// Buffers in slot order (the ring's memory), concatenated.
    pub(super) fn into_bytes(self) -> Vec<u8> {
        self.slots.concat()
    }
}
