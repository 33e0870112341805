//! The public types of a connection: configuration, state, errors, statistics.

use super::*;

/// Tunables of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConfig {
    /// The MSS we advertise (and the largest segment we send): MTU minus 40
    /// bytes of IPv4 and TCP headers. Default 1460.
    pub mss: u16,
    /// Send buffer bound in bytes (queued unsent plus unacknowledged data);
    /// `send` returns [`TcpError::WouldBlock`] beyond it. Default 4 MiB (a
    /// send buffer is snapshots of the application's segments, not a copy;
    /// 256 KiB left bulk senders waiting for ACKs with a few TSO frames out).
    pub send_buf: usize,
    /// Receive buffer bound in bytes: received data not yet read, and the
    /// window we advertise. Default 256 KiB.
    pub recv_buf: usize,
    /// Nagle's algorithm (RFC 896): hold a small segment while data is
    /// unacknowledged. Default on (`TCP_NODELAY` turns it off).
    pub nagle: bool,
    /// How long an ACK for in-order data may be delayed; 0 acknowledges
    /// every segment at once. Every second full-sized segment is
    /// acknowledged at once regardless. Default 40 ms (Linux's minimum).
    pub delayed_ack_ns: u64,
    /// Offer window scaling (RFC 7323). Default on.
    pub window_scale: bool,
    /// Offer timestamps (RFC 7323: RTTM and PAWS). Default on.
    pub timestamps: bool,
    /// Line size of the memory the payloads live in. Segment sizes are
    /// rounded down to multiples of it (when at least one line) and segment
    /// ends are pulled back to line boundaries, so that emitted payloads
    /// start line-aligned and can sit behind headers without a copy. 0 or 1
    /// disables the shaping. Default 64.
    pub line_size: usize,
    /// 0 disables segmentation offload; otherwise the largest payload of one
    /// emitted segment (rounded down to a multiple of the send MSS; the NIC
    /// cuts it into MSS-sized packets). Default 0.
    pub tso_max: usize,
    /// The span of one interior line of the memory (line size times
    /// fanout: 1024 bytes at 64-byte lines). A segmentation-offload segment
    /// of at least two spans ends on a multiple of it in its payload's
    /// segment, so that the next one starts on one; the interface puts
    /// such a payload at the same offset modulo the span in its frame, so
    /// the frame's interior lines over the payload are the payload's own
    /// (found in the index, not built anew and released). 0 or 1 disables
    /// it. Default 1024; the interface sets it from its memory.
    pub tso_align: usize,
    /// Lower bound of the retransmission timeout. Default 200 ms (Linux).
    pub rto_min_ns: u64,
    /// Upper bound of the retransmission timeout. Default 120 s (Linux).
    pub rto_max_ns: u64,
    /// Timeout before the first RTT sample. Default 1 s (RFC 6298).
    pub rto_initial_ns: u64,
    /// Consecutive retransmission timeouts (or unanswered zero-window
    /// probes) after which the connection is aborted with
    /// [`TcpError::TimedOut`]. Default 15 (Linux's `tcp_retries2`).
    pub max_retries: u32,
    /// Retransmissions of a SYN or SYN-ACK before giving up. Default 6
    /// (Linux's `tcp_syn_retries`).
    pub syn_retries: u32,
    /// How long TIME-WAIT lasts (2 MSL). Default 60 s (Linux).
    pub time_wait_ns: u64,
    /// Initial congestion window in segments. Default 10 (RFC 6928, Linux).
    pub initial_cwnd: u32,
    /// Challenge ACKs (RFC 5961) sent per second at most. Default 100.
    pub challenge_ack_limit: u32,
    /// Disjoint out-of-order ranges kept at most; a segment that would add
    /// more is dropped. Default 256.
    pub max_ooo_ranges: usize,
    /// Keepalive (`SO_KEEPALIVE`): off by default.
    pub keepalive: Option<Keepalive>,
}

/// Keepalive probing (RFC 1122 4.2.3.6), Linux's knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle time before the first probe (`TCP_KEEPIDLE`; Linux 7200 s).
    pub idle_ns: u64,
    /// Time between unanswered probes (`TCP_KEEPINTVL`; Linux 75 s).
    pub interval_ns: u64,
    /// Unanswered probes before the connection is dropped with
    /// [`TcpError::TimedOut`] (`TCP_KEEPCNT`; Linux 9).
    pub probes: u32,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            idle_ns: 7_200_000 * MS,
            interval_ns: 75_000 * MS,
            probes: 9,
        }
    }
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            mss: 1460,
            send_buf: 4 << 20,
            recv_buf: 256 * 1024,
            nagle: true,
            delayed_ack_ns: 40 * MS,
            window_scale: true,
            timestamps: true,
            line_size: 64,
            tso_max: 0,
            tso_align: 1024,
            rto_min_ns: 200 * MS,
            rto_max_ns: 120_000 * MS,
            rto_initial_ns: 1000 * MS,
            max_retries: 15,
            syn_retries: 6,
            time_wait_ns: 60_000 * MS,
            initial_cwnd: 10,
            challenge_ack_limit: 100,
            max_ooo_ranges: 256,
            keepalive: None,
        }
    }
}

/// Connection states of RFC 9293 (LISTEN belongs to the interface, which
/// hands a listener's SYN to [`TcpSocket::accept`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// No connection (never opened, or finished, reset, timed out).
    Closed,
    /// Our SYN is out, waiting for the peer's.
    SynSent,
    /// The peer's SYN arrived and our SYN-ACK is out.
    SynReceived,
    /// Open in both directions.
    Established,
    /// We closed; our FIN is not acknowledged yet.
    FinWait1,
    /// We closed and our FIN is acknowledged; the peer may still send.
    FinWait2,
    /// The peer closed; we may still send.
    CloseWait,
    /// Both closed at once; our FIN is not acknowledged yet.
    Closing,
    /// The peer closed, then we did; waiting for the ACK of our FIN.
    LastAck,
    /// Both closed; lingering 2 MSL to absorb stray segments.
    TimeWait,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            State::Closed => "CLOSED",
            State::SynSent => "SYN-SENT",
            State::SynReceived => "SYN-RECEIVED",
            State::Established => "ESTABLISHED",
            State::FinWait1 => "FIN-WAIT-1",
            State::FinWait2 => "FIN-WAIT-2",
            State::CloseWait => "CLOSE-WAIT",
            State::Closing => "CLOSING",
            State::LastAck => "LAST-ACK",
            State::TimeWait => "TIME-WAIT",
        };
        f.write_str(s)
    }
}

/// Why a socket operation did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TcpError {
    /// Nothing can be done now (send buffer full, or no data yet): retry
    /// after the next `process`/`dispatch`.
    #[error("operation would block")]
    WouldBlock,
    /// The connection is not in a state that allows the operation.
    #[error("not connected")]
    NotConnected,
    /// The peer reset the connection.
    #[error("connection reset by peer")]
    Reset,
    /// Retransmissions went unanswered `max_retries` times.
    #[error("connection timed out")]
    TimedOut,
    /// Sending after [`TcpSocket::close`] (or after the connection ended).
    #[error("connection closed for sending")]
    Closed,
    /// End of stream: the peer's FIN arrived and all data before it was read.
    #[error("end of stream")]
    Finished,
    /// The memory could not hold the bytes handed to the byte API.
    #[error("out of segment memory")]
    NoMemory,
}

/// Counters of one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Segments handed to `process`.
    pub segs_in: u64,
    /// Segments emitted by `dispatch`.
    pub segs_out: u64,
    /// In-window payload bytes received (duplicates included).
    pub bytes_in: u64,
    /// Payload bytes emitted (retransmissions included).
    pub bytes_out: u64,
    /// Segments emitted that carried already-sent sequence space.
    pub retransmits: u64,
    /// Payload bytes in those.
    pub retransmitted_bytes: u64,
    /// Fast retransmits (third duplicate ACK) and NewReno partial-ACK
    /// retransmissions.
    pub fast_retransmits: u64,
    /// Retransmission timer expirations.
    pub timeouts: u64,
    /// Duplicate ACKs received (RFC 5681's definition).
    pub dup_acks: u64,
    /// Challenge ACKs sent (RFC 5961).
    pub challenge_acks: u64,
    /// Challenge ACKs not sent because of the rate limit.
    pub challenge_acks_suppressed: u64,
    /// Segments whose sequence range was outside the receive window.
    pub out_of_window: u64,
    /// Segments rejected by PAWS (an old timestamp).
    pub paws_rejected: u64,
    /// Segments dropped for other reasons (bad flags, unacceptable ACK, no
    /// room for out-of-order data, ...).
    pub dropped: u64,
    /// Segments that arrived ahead of a hole and were kept.
    pub out_of_order: u64,
    /// RSTs accepted (the connection was reset).
    pub rst_in: u64,
    /// RSTs emitted.
    pub rst_out: u64,
    /// Zero-window probes emitted.
    pub window_probes: u64,
    /// Keepalive probes emitted.
    pub keepalive_probes: u64,
    /// Bytes copied by the byte API (`send_slice`, `recv_slice`,
    /// `peek_slice`); 0 on the `Payload` path.
    pub bytes_copied: u64,
    /// Emitted payload slices that do not continue line-aligned (the first
    /// slice of a segment starting mid-line, or a later slice whose line
    /// phase breaks the segment's).
    pub tx_unaligned_slices: u64,
    /// Payload bytes the interface must copy to put the payload behind
    /// line-aligned headers: the partial first line of a segment that
    /// starts mid-line, and every byte of a later slice whose phase breaks.
    pub tx_unaligned_bytes: u64,
}
