//! The TCP socket: one connection's state machine, sans-IO.
//!
//! See the [module documentation](super) for the model. Internally every
//! sequence position is an unwrapped 64-bit offset (see [`super::seq`]):
//! `snd_*` fields count from our ISS, `rcv_*` fields from the peer's.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddrV4;

use hicamp::{Memory, SegmentMut};

use super::assembler::Assembler;
use super::rtt::RttEstimator;
use super::sendq::SendQueue;
use super::seq;
use crate::payload::Payload;
use crate::wire::{TcpFlags, TcpRepr};

const MS: u64 = 1_000_000;
/// RFC 7323's limit on the window shift.
const MAX_WSCALE: u8 = 14;
/// MSS assumed when the peer's SYN has no MSS option (RFC 9293).
const DEFAULT_MSS: usize = 536;
/// Smallest peer MSS we honour (Linux's `TCP_MIN_SND_MSS`).
const MIN_MSS: usize = 48;
/// Bytes of the timestamp option as Linux lays it out (NOP, NOP, TS).
const TS_OPTION_LEN: usize = 12;
/// Largest payload of one emitted (TSO) segment: an IPv4 datagram is at
/// most 65535 bytes, headers included.
const MAX_TSO_PAYLOAD: usize = 65535 - 20 - 60;
/// A tail segment that `send_slice` appends to grows up to this size.
const TAIL_MAX: usize = 64 * 1024;
/// PAWS: TS.Recent is only trusted for 24 days of idleness (RFC 7323 5.5).
const PAWS_IDLE_NS: u64 = 24 * 24 * 3600 * 1_000_000_000;
/// Out-of-window pure ACKs are answered at most this often (Linux's
/// `tcp_invalid_ratelimit`), so two confused stacks cannot ACK-loop.
const OOW_ACK_INTERVAL_NS: u64 = 500 * MS;
/// Duplicate ACKs owed for out-of-order segments, at most.
const MAX_DUPACKS_OWED: u32 = 64;
/// Duplicate ACKs that trigger fast retransmit.
const DUPTHRESH: u32 = 3;

/// Tunables of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConfig {
    /// The MSS we advertise (and the largest segment we send): MTU minus 40
    /// bytes of IPv4 and TCP headers. Default 1460.
    pub mss: u16,
    /// Send buffer bound in bytes (queued unsent plus unacknowledged data);
    /// `send` returns [`TcpError::WouldBlock`] beyond it. Default 256 KiB.
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
            send_buf: 256 * 1024,
            recv_buf: 256 * 1024,
            nagle: true,
            delayed_ack_ns: 40 * MS,
            window_scale: true,
            timestamps: true,
            line_size: 64,
            tso_max: 0,
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

/// The callback [`TcpSocket::dispatch`] emits through: a segment's header,
/// its payload slices in order, and the MSS to cut the payload at when it is
/// larger than one MSS (segmentation offload). Returns false when the
/// segment could not be queued (TX ring full).
pub type Emit<'a> = dyn FnMut(&TcpRepr, &[Payload], Option<u16>) -> bool + 'a;

/// What one emitted segment is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    /// Send offset of the first sequence number.
    off: u64,
    syn: bool,
    len: usize,
    fin: bool,
    /// A fast retransmission: does not move `snd_nxt` back.
    rexmit: bool,
}

/// One TCP connection, sans-IO: [`TcpSocket::process`] takes incoming
/// segments, [`TcpSocket::dispatch`] emits outgoing ones, [`TcpSocket::poll_at`]
/// says when timers need a `dispatch`. Time is a monotonic `u64` in
/// nanoseconds with any epoch.
pub struct TcpSocket {
    cfg: TcpConfig,
    state: State,
    local: SocketAddrV4,
    remote: SocketAddrV4,
    /// Why the connection ended abnormally.
    error: Option<TcpError>,

    // Send side (offsets from `iss`).
    iss: u32,
    snd_una: u64,
    snd_nxt: u64,
    snd_max: u64,
    /// Peer's window in bytes (scaled).
    snd_wnd: u64,
    max_snd_wnd: u64,
    snd_wl1: i64,
    snd_wl2: u64,
    /// Shift applied to the peer's window field.
    snd_wscale: u8,
    /// Effective MSS for our segments (options and line rounding applied).
    send_mss: usize,
    tx: SendQueue,
    /// `send_slice` appends to the last chunk while it is this segment's.
    tx_tail: Option<SegmentMut>,
    /// close() was called: a FIN follows the queued data.
    fin_queued: bool,

    // Receive side (offsets from `irs`).
    irs: u32,
    rcv_nxt: u64,
    /// Right edge of the window we advertised last.
    rcv_adv: u64,
    /// Shift applied to the window field we send.
    rcv_wscale: u8,
    /// The shift we offer in our SYN.
    our_wscale: u8,
    /// Both sides sent the window scale option.
    ws_enabled: bool,
    rx: VecDeque<Payload>,
    rx_len: usize,
    ooo: Assembler,
    /// Offset of a FIN that arrived beyond a hole.
    rx_fin: Option<u64>,
    fin_received: bool,
    /// Largest segment seen from the peer (for delayed-ACK and SWS rules).
    rcv_mss: usize,
    /// In-order bytes received since our last ACK.
    unacked_bytes: usize,
    /// The window field the last SYN we sent carried.
    syn_window: u16,

    // Timestamps (RFC 7323).
    ts_enabled: bool,
    ts_recent: u32,
    ts_recent_at: u64,
    ts_offset: u32,
    last_ack_sent: u64,

    // Timers.
    rtt: RttEstimator,
    rto_at: Option<u64>,
    retries: u32,
    /// The segment being timed (Karn): `(start, end, sent at)`.
    rtt_sample: Option<(u64, u64, u64)>,
    delack_at: Option<u64>,
    ack_now: bool,
    /// Pure ACKs owed for out-of-order segments since the last dispatch.
    dupacks_owed: u32,
    persist_at: Option<u64>,
    persist_backoff: u32,
    probes: u32,
    probe_due: bool,
    persist_force: bool,
    timewait_at: Option<u64>,
    keepalive_at: Option<u64>,
    keepalive_sent: u32,
    keepalive_due: bool,
    oow_ack_at: Option<u64>,
    challenge_epoch: u64,
    challenge_count: u32,

    // Congestion control (RFC 5681, RFC 6582).
    cwnd: usize,
    ssthresh: usize,
    ca_acked: usize,
    dupacks: u32,
    recover: u64,
    in_recovery: bool,
    fast_rexmit: bool,
    /// When a segment carrying sequence space last went out.
    last_send: u64,

    /// A reset to emit at the next dispatch.
    pending_rst: Option<TcpRepr>,
    stats: TcpStats,
}

impl fmt::Debug for TcpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpSocket")
            .field("state", &self.state)
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field("snd_una", &self.snd_una)
            .field("snd_nxt", &self.snd_nxt)
            .field("snd_max", &self.snd_max)
            .field("snd_wnd", &self.snd_wnd)
            .field("rcv_nxt", &self.rcv_nxt)
            .field("rcv_adv", &self.rcv_adv)
            .field("cwnd", &self.cwnd)
            .field("ssthresh", &self.ssthresh)
            .field("send_queue", &self.tx.len())
            .field("recv_queue", &self.rx_len)
            .field("ooo_bytes", &self.ooo.bytes())
            .finish_non_exhaustive()
    }
}

/// The RST that answers `repr` (which carried `payload_len` bytes) when it
/// matches no connection (RFC 9293, 3.10.7.1): `<SEQ=SEG.ACK><CTL=RST>` if it
/// had an ACK, else `<SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>`. `None` for an
/// incoming RST, which is never answered. Ports are swapped.
pub fn reply_rst(repr: &TcpRepr, payload_len: usize) -> Option<TcpRepr> {
    if repr.flags.contains(TcpFlags::RST) {
        return None;
    }
    let mut r = TcpRepr {
        src_port: repr.dst_port,
        dst_port: repr.src_port,
        ..TcpRepr::default()
    };
    if repr.flags.contains(TcpFlags::ACK) {
        r.seq = repr.ack;
        r.flags = TcpFlags::RST;
    } else {
        let mut len = payload_len as u32;
        if repr.flags.contains(TcpFlags::SYN) {
            len = len.wrapping_add(1);
        }
        if repr.flags.contains(TcpFlags::FIN) {
            len = len.wrapping_add(1);
        }
        r.seq = 0;
        r.ack = repr.seq.wrapping_add(len);
        r.flags = TcpFlags::RST | TcpFlags::ACK;
    }
    Some(r)
}

impl TcpSocket {
    fn new(cfg: TcpConfig, local: SocketAddrV4, remote: SocketAddrV4, iss: u32) -> TcpSocket {
        let mut our_wscale = 0u8;
        if cfg.window_scale {
            while our_wscale < MAX_WSCALE && (cfg.recv_buf >> our_wscale) > 65535 {
                our_wscale += 1;
            }
        }
        let rtt = RttEstimator::new(cfg.rto_initial_ns, cfg.rto_min_ns, cfg.rto_max_ns);
        let send_mss = usize::from(cfg.mss).max(MIN_MSS);
        TcpSocket {
            state: State::Closed,
            local,
            remote,
            error: None,
            iss,
            snd_una: 0,
            snd_nxt: 0,
            snd_max: 0,
            snd_wnd: 0,
            max_snd_wnd: 0,
            snd_wl1: 0,
            snd_wl2: 0,
            snd_wscale: 0,
            send_mss,
            tx: SendQueue::new(1),
            tx_tail: None,
            fin_queued: false,
            irs: 0,
            rcv_nxt: 0,
            rcv_adv: 0,
            rcv_wscale: 0,
            our_wscale,
            ws_enabled: false,
            rx: VecDeque::new(),
            rx_len: 0,
            ooo: Assembler::new(cfg.max_ooo_ranges),
            rx_fin: None,
            fin_received: false,
            rcv_mss: DEFAULT_MSS.min(usize::from(cfg.mss).max(1)),
            unacked_bytes: 0,
            syn_window: 0,
            ts_enabled: false,
            ts_recent: 0,
            ts_recent_at: 0,
            ts_offset: iss.rotate_left(13) ^ 0x5bd1_e995,
            last_ack_sent: 0,
            rtt,
            rto_at: None,
            retries: 0,
            rtt_sample: None,
            delack_at: None,
            ack_now: false,
            dupacks_owed: 0,
            persist_at: None,
            persist_backoff: 0,
            probes: 0,
            probe_due: false,
            persist_force: false,
            timewait_at: None,
            keepalive_at: None,
            keepalive_sent: 0,
            keepalive_due: false,
            oow_ack_at: None,
            challenge_epoch: 0,
            challenge_count: 0,
            cwnd: 0,
            ssthresh: usize::MAX / 2,
            ca_acked: 0,
            dupacks: 0,
            recover: 0,
            in_recovery: false,
            fast_rexmit: false,
            last_send: 0,
            pending_rst: None,
            stats: TcpStats::default(),
            cfg,
        }
    }

    /// Active open: a socket in SYN-SENT whose SYN (sequence number `iss`)
    /// goes out at the next [`TcpSocket::dispatch`].
    pub fn connect(
        cfg: TcpConfig,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        iss: u32,
        _now: u64,
    ) -> TcpSocket {
        let mut s = TcpSocket::new(cfg, local, remote, iss);
        s.state = State::SynSent;
        s
    }

    /// Passive open from a listener's SYN `syn` (addressed from `remote` to
    /// `local`): a socket in SYN-RECEIVED whose SYN-ACK goes out at the next
    /// dispatch. `None` when the segment is not an acceptable SYN (ACK, RST
    /// or FIN set, or no SYN).
    pub fn accept(
        cfg: TcpConfig,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        syn: &TcpRepr,
        iss: u32,
        now: u64,
    ) -> Option<TcpSocket> {
        let f = syn.flags;
        if !f.contains(TcpFlags::SYN)
            || f.contains(TcpFlags::ACK)
            || f.contains(TcpFlags::RST)
            || f.contains(TcpFlags::FIN)
        {
            return None;
        }
        let mut s = TcpSocket::new(cfg, local, remote, iss);
        s.state = State::SynReceived;
        s.take_syn_options(now, syn);
        s.snd_wnd = u64::from(syn.window);
        s.max_snd_wnd = s.snd_wnd;
        s.snd_wl1 = 0;
        s.snd_wl2 = 0;
        Some(s)
    }

    /// The connection state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Our address.
    pub fn local(&self) -> SocketAddrV4 {
        self.local
    }

    /// The peer's address.
    pub fn remote(&self) -> SocketAddrV4 {
        self.remote
    }

    /// Counters.
    pub fn stats(&self) -> &TcpStats {
        &self.stats
    }

    /// The configuration.
    pub fn config(&self) -> &TcpConfig {
        &self.cfg
    }

    /// Turns Nagle's algorithm on or off (off is `TCP_NODELAY`).
    pub fn set_nagle(&mut self, on: bool) {
        self.cfg.nagle = on;
    }

    /// Why the connection ended abnormally ([`TcpError::Reset`] or
    /// [`TcpError::TimedOut`]), if it did.
    pub fn error(&self) -> Option<TcpError> {
        self.error
    }

    /// The payload size of our segments: the peer's MSS (at most ours),
    /// less the timestamp option, rounded down to whole lines.
    pub fn send_mss(&self) -> usize {
        self.send_mss
    }

    /// The congestion window in bytes.
    pub fn cwnd(&self) -> usize {
        self.cwnd
    }

    /// The smoothed RTT in ns, once measured.
    pub fn srtt_ns(&self) -> Option<u64> {
        self.rtt.srtt()
    }

    /// The current retransmission timeout in ns (backoff included).
    pub fn rto_ns(&self) -> u64 {
        self.rtt.rto()
    }

    /// The peer's current send window in bytes (scaled).
    pub fn send_window(&self) -> u64 {
        self.snd_wnd
    }

    /// Bytes queued for sending (unsent and unacknowledged).
    pub fn send_queue(&self) -> usize {
        self.tx.len()
    }

    /// Bytes received in order and not read yet.
    pub fn recv_queue(&self) -> usize {
        self.rx_len
    }

    /// Whether `send` would take at least one byte now.
    pub fn can_send(&self) -> bool {
        self.send_state().is_ok() && self.tx.len() < self.cfg.send_buf
    }

    /// Whether `recv` would return data now.
    pub fn can_recv(&self) -> bool {
        self.rx_len > 0
    }

    /// Whether more data may still arrive or be read: false once the peer's
    /// FIN arrived and everything before it was read, or the connection
    /// ended.
    pub fn may_recv(&self) -> bool {
        if self.rx_len > 0 {
            return true;
        }
        !self.fin_received
            && matches!(
                self.state,
                State::SynSent
                    | State::SynReceived
                    | State::Established
                    | State::FinWait1
                    | State::FinWait2
            )
    }

    /// Whether a SYN for this socket's address pair may end its TIME-WAIT
    /// and open a new connection (RFC 1122 4.2.2.13, RFC 6191, as Linux):
    /// a plain SYN whose sequence number is beyond `RCV.NXT`, or whose
    /// timestamp is newer than the last one seen. The interface then drops
    /// this socket and [`TcpSocket::accept`]s the SYN. False in every other
    /// state (a SYN there gets a challenge ACK from [`TcpSocket::process`]).
    pub fn accepts_reopen(&self, syn: &TcpRepr) -> bool {
        if self.state != State::TimeWait
            || syn.flags.0 & (TcpFlags::SYN.0 | TcpFlags::ACK.0 | TcpFlags::RST.0)
                != TcpFlags::SYN.0
        {
            return false;
        }
        match (self.ts_enabled, syn.timestamp) {
            (true, Some((tsval, _))) => seq::lt(self.ts_recent, tsval),
            _ => seq::lt(seq::wrap(self.irs, self.rcv_nxt), syn.seq),
        }
    }

    /// Whether the connection is over and emitted everything it had to: the
    /// interface may forget it.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed && self.pending_rst.is_none()
    }

    /// The wire value of `RCV.NXT` (tests forge segments with it).
    #[cfg(test)]
    pub(crate) fn rcv_nxt_seq(&self) -> u32 {
        seq::wrap(self.irs, self.rcv_nxt)
    }

    /// The wire value of `SND.NXT`.
    #[cfg(test)]
    pub(crate) fn snd_nxt_seq(&self) -> u32 {
        seq::wrap(self.iss, self.snd_nxt)
    }

    // ------------------------------------------------------------------
    // Application side
    // ------------------------------------------------------------------

    fn send_state(&self) -> Result<(), TcpError> {
        match self.state {
            State::SynSent | State::SynReceived | State::Established | State::CloseWait
                if !self.fin_queued =>
            {
                Ok(())
            }
            State::Closed => Err(self.error.unwrap_or(if self.fin_queued {
                TcpError::Closed
            } else {
                TcpError::NotConnected
            })),
            _ => Err(TcpError::Closed),
        }
    }

    fn line(&self) -> usize {
        self.cfg.line_size.max(1)
    }

    /// Queues (a prefix of) `p` for sending, as snapshots: no byte is copied,
    /// now or on retransmission. Returns how many bytes were taken (bounded
    /// by the free send buffer; a partial take ends on a line boundary of
    /// `p`'s segment when possible, so the rest stays line-aligned), or
    /// [`TcpError::WouldBlock`] when the buffer is full. Data may be queued
    /// in SYN-SENT and SYN-RECEIVED; it goes out once established.
    pub fn send(&mut self, p: Payload) -> Result<usize, TcpError> {
        self.send_state()?;
        if p.is_empty() {
            return Ok(0);
        }
        let space = self.cfg.send_buf.saturating_sub(self.tx.len());
        if space == 0 {
            return Err(TcpError::WouldBlock);
        }
        let mut take = space.min(p.len());
        if take < p.len() {
            let phase = ((p.offset() + take as u64) % self.line() as u64) as usize;
            if take > phase {
                take -= phase;
            } else if self.tx.len() > 0 {
                return Err(TcpError::WouldBlock);
            }
        }
        let mut p = p;
        p.truncate(take);
        self.tx.push(p);
        self.tx_tail = None;
        Ok(take)
    }

    /// Byte API: copies (a prefix of) `data` into `mem` and queues it. Small
    /// writes are appended to a tail segment this socket owns (up to 64
    /// KiB), so consecutive writes share lines and stay line-aligned; an
    /// append rewrites the partial last line of the tail, and both that and
    /// the new bytes count in [`TcpStats::bytes_copied`]. Queued bytes are
    /// never copied afterwards.
    pub fn send_slice(&mut self, mem: &Memory, data: &[u8]) -> Result<usize, TcpError> {
        self.send_state()?;
        if data.is_empty() {
            return Ok(0);
        }
        let space = self.cfg.send_buf.saturating_sub(self.tx.len());
        if space == 0 {
            return Err(TcpError::WouldBlock);
        }
        let take = space.min(data.len());
        let data = &data[..take];
        if let Some(tail) = self.tx_tail.as_mut() {
            let old = tail.len() as usize;
            if old + take <= TAIL_MAX {
                tail.append(data).map_err(|_| TcpError::NoMemory)?;
                let snap = tail.snapshot();
                let copied = take + old % mem.line_size().max(1);
                if let Some(last) = self.tx.last_mut() {
                    *last = Payload::new(snap, last.offset(), last.len() + take);
                    self.tx.grew(take);
                    self.stats.bytes_copied += copied as u64;
                    return Ok(take);
                }
            }
        }
        let mut seg = mem.builder();
        seg.append(data).map_err(|_| TcpError::NoMemory)?;
        self.tx.push(Payload::from_segment(seg.snapshot()));
        self.tx_tail = Some(seg);
        self.stats.bytes_copied += take as u64;
        Ok(take)
    }

    fn recv_error(&self) -> TcpError {
        if self.fin_received {
            return TcpError::Finished;
        }
        match self.state {
            State::Closed => self.error.unwrap_or(TcpError::NotConnected),
            State::SynSent
            | State::SynReceived
            | State::Established
            | State::FinWait1
            | State::FinWait2 => TcpError::WouldBlock,
            _ => TcpError::Finished,
        }
    }

    /// Takes up to `max` bytes of received in-order data, as the payload
    /// snapshots they arrived in (the last one possibly split; no byte is
    /// copied or re-packed). `Ok(vec![])` only for `max == 0`;
    /// [`TcpError::WouldBlock`] when nothing is there yet;
    /// [`TcpError::Finished`] at end of stream (the peer's FIN, after all
    /// data); [`TcpError::Reset`] / [`TcpError::TimedOut`] after the
    /// connection failed (data that arrived before is still returned first).
    pub fn recv(&mut self, max: usize) -> Result<Vec<Payload>, TcpError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        if self.rx_len == 0 {
            return Err(self.recv_error());
        }
        let mut out = Vec::new();
        let mut left = max;
        while left > 0 {
            let Some(front) = self.rx.front_mut() else {
                break;
            };
            if front.len() <= left {
                left -= front.len();
                if let Some(p) = self.rx.pop_front() {
                    out.push(p);
                }
            } else {
                out.push(front.split_to(left));
                left = 0;
            }
        }
        self.rx_len -= max - left;
        self.after_read();
        Ok(out)
    }

    /// Byte API: copies up to `buf.len()` bytes of received data into `buf`
    /// (counted in [`TcpStats::bytes_copied`]). Same results as
    /// [`TcpSocket::recv`]: `Ok(0)` only for an empty `buf`, and
    /// [`TcpError::Finished`] at end of stream.
    pub fn recv_slice(&mut self, buf: &mut [u8]) -> Result<usize, TcpError> {
        let chunks = self.recv(buf.len())?;
        let mut n = 0;
        for c in &chunks {
            n += c.copy_to(&mut buf[n..]);
        }
        self.stats.bytes_copied += n as u64;
        Ok(n)
    }

    /// Copies up to `buf.len()` bytes of received data into `buf` without
    /// consuming them (counted in [`TcpStats::bytes_copied`]).
    pub fn peek_slice(&mut self, buf: &mut [u8]) -> Result<usize, TcpError> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.rx_len == 0 {
            return Err(self.recv_error());
        }
        let mut n = 0;
        for c in &self.rx {
            if n == buf.len() {
                break;
            }
            n += c.copy_to(&mut buf[n..]);
        }
        self.stats.bytes_copied += n as u64;
        Ok(n)
    }

    /// Shuts down the sending direction: a FIN follows the queued data
    /// (half-close; receiving goes on). In SYN-SENT the connection is simply
    /// dropped. Idempotent.
    pub fn close(&mut self) {
        match self.state {
            State::SynSent => self.become_closed(None),
            State::SynReceived => self.fin_queued = true,
            State::Established => {
                self.fin_queued = true;
                self.state = State::FinWait1;
            }
            State::CloseWait => {
                self.fin_queued = true;
                self.state = State::LastAck;
            }
            _ => {}
        }
        self.tx_tail = None;
    }

    /// Aborts: a RST goes out at the next dispatch (in synchronized states)
    /// and the socket is closed at once; queued data in both directions is
    /// dropped.
    pub fn abort(&mut self) {
        match self.state {
            State::Closed | State::SynSent | State::TimeWait => {}
            _ => {
                self.pending_rst = Some(TcpRepr {
                    src_port: self.local.port(),
                    dst_port: self.remote.port(),
                    seq: seq::wrap(self.iss, self.snd_max),
                    ack: seq::wrap(self.irs, self.rcv_nxt),
                    flags: TcpFlags::RST | TcpFlags::ACK,
                    ..TcpRepr::default()
                });
            }
        }
        self.become_closed(None);
        self.rx.clear();
        self.rx_len = 0;
    }

    // ------------------------------------------------------------------
    // Helpers
    // ------------------------------------------------------------------

    fn become_closed(&mut self, error: Option<TcpError>) {
        self.state = State::Closed;
        if error.is_some() {
            self.error = error;
        }
        self.rto_at = None;
        self.delack_at = None;
        self.persist_at = None;
        self.timewait_at = None;
        self.keepalive_at = None;
        self.keepalive_due = false;
        self.ack_now = false;
        self.dupacks_owed = 0;
        self.probe_due = false;
        self.persist_force = false;
        self.fast_rexmit = false;
        let end = self.tx.end();
        self.tx.ack_to(end);
        self.tx_tail = None;
        self.ooo.clear();
    }

    fn enter_time_wait(&mut self, now: u64) {
        self.state = State::TimeWait;
        self.timewait_at = Some(now.saturating_add(self.cfg.time_wait_ns));
        self.rto_at = None;
        self.persist_at = None;
        self.probe_due = false;
        self.persist_force = false;
        self.fast_rexmit = false;
    }

    fn ts_now(&self, now: u64) -> u32 {
        ((now / MS) as u32).wrapping_add(self.ts_offset)
    }

    fn take_syn_options(&mut self, now: u64, syn: &TcpRepr) {
        self.irs = syn.seq;
        self.rcv_nxt = 1;
        self.rcv_adv = 1;
        self.last_ack_sent = 1;
        let peer_mss = syn.mss.map_or(DEFAULT_MSS, usize::from).max(MIN_MSS);
        match syn.wscale {
            Some(ws) if self.cfg.window_scale => {
                self.ws_enabled = true;
                self.snd_wscale = ws.min(MAX_WSCALE);
                self.rcv_wscale = self.our_wscale;
            }
            _ => {
                self.ws_enabled = false;
                self.snd_wscale = 0;
                self.rcv_wscale = 0;
            }
        }
        match syn.timestamp {
            Some((tsval, _)) if self.cfg.timestamps => {
                self.ts_enabled = true;
                self.ts_recent = tsval;
                self.ts_recent_at = now;
            }
            _ => self.ts_enabled = false,
        }
        let mut mss = peer_mss.min(usize::from(self.cfg.mss).max(MIN_MSS));
        if self.ts_enabled {
            mss -= TS_OPTION_LEN;
        }
        let line = self.line();
        if line > 1 && mss >= line {
            mss -= mss % line;
        }
        self.send_mss = mss;
        self.cwnd = mss * (self.cfg.initial_cwnd.max(1) as usize);
    }

    fn max_seg(&self) -> usize {
        let mss = self.send_mss;
        let tso = self.cfg.tso_max.min(MAX_TSO_PAYLOAD);
        if tso >= 2 * mss {
            tso - tso % mss
        } else {
            mss
        }
    }

    /// Whether our FIN was sent and acknowledged.
    fn fin_acked(&self) -> bool {
        self.fin_queued && self.snd_una > self.tx.end()
    }

    /// The window to advertise now: `(field, new right edge)`. Never
    /// shrinks the right edge already advertised, and opens it only by at
    /// least min(recv_buf / 2, MSS) (receiver SWS avoidance, RFC 9293
    /// 3.8.6.2.2).
    fn rcv_window(&self) -> (u16, u64) {
        let shift = self.rcv_wscale;
        let free = (self.cfg.recv_buf.saturating_sub(self.rx_len) as u64).min(65535u64 << shift);
        let cur = self.rcv_adv.saturating_sub(self.rcv_nxt);
        let mut wnd = cur;
        if free > cur {
            let thresh = ((self.cfg.recv_buf / 2).min(self.rcv_mss).max(1)) as u64;
            if free - cur >= thresh || free == (65535u64 << shift) {
                wnd = free;
            }
        }
        let mut field = wnd >> shift;
        if (field << shift) < cur {
            field += 1;
        }
        let field = field.min(65535);
        let edge = self.rcv_nxt + (field << shift);
        (field as u16, edge.max(self.rcv_adv))
    }

    fn challenge_ack(&mut self, now: u64) {
        if now.saturating_sub(self.challenge_epoch) >= 1000 * MS {
            self.challenge_epoch = now;
            self.challenge_count = 0;
        }
        if self.challenge_count < self.cfg.challenge_ack_limit {
            self.challenge_count += 1;
            self.stats.challenge_acks += 1;
            self.ack_now = true;
        } else {
            self.stats.challenge_acks_suppressed += 1;
        }
    }

    /// Answers an unacceptable segment with an ACK; pure ACKs only once per
    /// 500 ms (except window probes, which are always answered).
    fn oow_ack(&mut self, now: u64, pure: bool, probe: bool) {
        if pure && !probe {
            if let Some(t) = self.oow_ack_at {
                if now.saturating_sub(t) < OOW_ACK_INTERVAL_NS {
                    return;
                }
            }
            self.oow_ack_at = Some(now);
        }
        self.ack_now = true;
    }

    // ------------------------------------------------------------------
    // Input
    // ------------------------------------------------------------------

    /// Processes an incoming segment for this connection (`payload` is its
    /// data). Replies (ACKs, RSTs, challenge ACKs) are queued for the next
    /// [`TcpSocket::dispatch`]. Hostile or malformed segments are dropped
    /// and counted, never trusted.
    pub fn process(&mut self, now: u64, repr: &TcpRepr, payload: Payload) {
        self.stats.segs_in += 1;
        let f = repr.flags;
        if (f.contains(TcpFlags::SYN) && f.contains(TcpFlags::RST))
            || repr.src_port != self.remote.port()
            || repr.dst_port != self.local.port()
        {
            self.stats.dropped += 1;
            return;
        }
        match self.state {
            State::Closed => {
                if let Some(r) = reply_rst(repr, payload.len()) {
                    self.pending_rst = Some(r);
                    self.stats.dropped += 1;
                }
            }
            State::SynSent => self.process_syn_sent(now, repr, payload),
            _ => self.process_synchronized(now, repr, payload),
        }
        self.keepalive_sent = 0;
        self.keepalive_at = None;
        self.update_persist(now);
    }

    fn process_syn_sent(&mut self, now: u64, repr: &TcpRepr, payload: Payload) {
        let f = repr.flags;
        let ack_ok =
            f.contains(TcpFlags::ACK) && self.snd_max >= 1 && repr.ack == seq::wrap(self.iss, 1);
        if f.contains(TcpFlags::ACK) && !ack_ok {
            if !f.contains(TcpFlags::RST) {
                self.pending_rst = Some(TcpRepr {
                    src_port: self.local.port(),
                    dst_port: self.remote.port(),
                    seq: repr.ack,
                    flags: TcpFlags::RST,
                    ..TcpRepr::default()
                });
            }
            self.stats.dropped += 1;
            return;
        }
        if f.contains(TcpFlags::RST) {
            if ack_ok {
                self.stats.rst_in += 1;
                self.become_closed(Some(TcpError::Reset));
            } else {
                self.stats.dropped += 1;
            }
            return;
        }
        if !f.contains(TcpFlags::SYN) {
            self.stats.dropped += 1;
            return;
        }
        self.take_syn_options(now, repr);
        self.rcv_adv = self.rcv_nxt + u64::from(self.syn_window);
        self.snd_wnd = u64::from(repr.window);
        self.max_snd_wnd = self.snd_wnd;
        self.snd_wl1 = 0;
        if ack_ok {
            self.snd_wl2 = 1;
            self.on_new_ack(now, 1, repr);
            self.state = State::Established;
            self.ack_now = true;
            let fin = f.contains(TcpFlags::FIN);
            if !payload.is_empty() || fin {
                self.process_text(now, 1, payload, fin);
            }
        } else {
            // Simultaneous open: our SYN goes out again, with an ACK.
            self.state = State::SynReceived;
            self.snd_wl2 = 0;
            self.snd_nxt = 0;
            self.rto_at = None;
        }
    }

    fn process_synchronized(&mut self, now: u64, repr: &TcpRepr, payload: Payload) {
        let mut repr = *repr;
        // Simultaneous open: the peer's SYN-ACK reaches us in SYN-RECEIVED.
        // Its SYN is old news; its ACK completes our side (as Linux does).
        if self.state == State::SynReceived
            && repr.flags.contains(TcpFlags::SYN | TcpFlags::ACK)
            && !repr.flags.contains(TcpFlags::FIN)
            && repr.seq == self.irs
            && payload.is_empty()
            && self.snd_max >= 1
            && repr.ack == seq::wrap(self.iss, self.snd_max)
        {
            repr.flags = TcpFlags(repr.flags.0 & !TcpFlags::SYN.0);
            repr.seq = seq::wrap(self.irs, self.rcv_nxt);
            // A SYN's window is never scaled: pre-divide (rounding down).
            repr.window >>= self.snd_wscale;
        }
        let repr = &repr;
        let f = repr.flags;
        let seg_off = seq::unwrap(repr.seq, seq::wrap(self.irs, self.rcv_nxt), self.rcv_nxt);
        let nxt = self.rcv_nxt as i64;

        // The peer retransmitted its SYN: our SYN-ACK was lost.
        if self.state == State::SynReceived
            && f.contains(TcpFlags::SYN)
            && !f.contains(TcpFlags::ACK)
            && repr.seq == self.irs
        {
            if self.snd_max > 0 {
                self.snd_nxt = 0;
            }
            // Echo the newest TSval, so the peer's RTT sample is not
            // inflated by the lost round (Linux's request socks do so too).
            if let (true, Some((tsval, _))) = (self.ts_enabled, repr.timestamp) {
                self.ts_recent = tsval;
                self.ts_recent_at = now;
            }
            return;
        }

        let seg_len = payload.len()
            + usize::from(f.contains(TcpFlags::SYN))
            + usize::from(f.contains(TcpFlags::FIN));

        // PAWS (RFC 7323 5.3), for segments that carry a timestamp.
        if self.ts_enabled && !f.contains(TcpFlags::RST) {
            if let Some((tsval, _)) = repr.timestamp {
                if seq::lt(tsval, self.ts_recent)
                    && now.saturating_sub(self.ts_recent_at) < PAWS_IDLE_NS
                {
                    self.stats.paws_rejected += 1;
                    self.oow_ack(now, seg_len == 0, false);
                    return;
                }
            }
        }

        // Acceptability (RFC 9293 3.10.7.4), with Linux's allowance for a
        // segment exactly at RCV.NXT when the window is zero (its ACK is
        // processed, its data dropped).
        let wnd = self.rcv_adv.saturating_sub(self.rcv_nxt) as i64;
        let acceptable = seg_off == nxt
            || if seg_len == 0 {
                wnd > 0 && seg_off >= nxt && seg_off < nxt + wnd
            } else {
                wnd > 0 && seg_off < nxt + wnd && seg_off + seg_len as i64 > nxt
            };
        if !acceptable {
            self.stats.out_of_window += 1;
            if f.contains(TcpFlags::RST) {
                return;
            }
            if f.contains(TcpFlags::SYN) {
                self.challenge_ack(now);
                return;
            }
            if self.state == State::TimeWait && f.contains(TcpFlags::FIN) {
                self.timewait_at = Some(now.saturating_add(self.cfg.time_wait_ns));
            }
            let probe = seg_len == 0 && seg_off == nxt - 1;
            self.oow_ack(now, seg_len == 0, probe);
            return;
        }

        // RST (RFC 5961 3.2): exact match resets, in-window gets a
        // challenge ACK.
        if f.contains(TcpFlags::RST) {
            if seg_off == nxt {
                self.stats.rst_in += 1;
                // In TIME-WAIT the connection already completed: the RST
                // only ends the wait (RFC 1337 hazards aside, as Linux).
                let err = (self.state != State::TimeWait).then_some(TcpError::Reset);
                self.become_closed(err);
            } else {
                self.challenge_ack(now);
            }
            return;
        }
        // SYN in a synchronized state (RFC 5961 4.2).
        if f.contains(TcpFlags::SYN) {
            self.challenge_ack(now);
            return;
        }
        if !f.contains(TcpFlags::ACK) {
            self.stats.dropped += 1;
            return;
        }
        if !self.process_ack(now, repr, payload.len(), seg_off) {
            return;
        }
        if self.state == State::Closed {
            return;
        }
        // TS.Recent (RFC 7323 4.3).
        if self.ts_enabled {
            if let Some((tsval, _)) = repr.timestamp {
                if seg_off <= self.last_ack_sent as i64 && !seq::lt(tsval, self.ts_recent) {
                    self.ts_recent = tsval;
                    self.ts_recent_at = now;
                }
            }
        }
        if matches!(
            self.state,
            State::Established | State::FinWait1 | State::FinWait2
        ) {
            let fin = f.contains(TcpFlags::FIN);
            if !payload.is_empty() || fin {
                self.process_text(now, seg_off, payload, fin);
            }
        } else if f.contains(TcpFlags::FIN) && self.state == State::TimeWait {
            self.timewait_at = Some(now.saturating_add(self.cfg.time_wait_ns));
            self.ack_now = true;
        }
    }

    /// The ACK field of an acceptable segment. Returns false when the
    /// segment must be dropped.
    fn process_ack(&mut self, now: u64, repr: &TcpRepr, payload_len: usize, seg_off: i64) -> bool {
        let ack_off = seq::unwrap(repr.ack, seq::wrap(self.iss, self.snd_una), self.snd_una);
        let f = repr.flags;
        if self.state == State::SynReceived {
            if ack_off <= self.snd_una as i64 || ack_off > self.snd_max as i64 {
                self.pending_rst = Some(TcpRepr {
                    src_port: self.local.port(),
                    dst_port: self.remote.port(),
                    seq: repr.ack,
                    flags: TcpFlags::RST,
                    ..TcpRepr::default()
                });
                self.stats.dropped += 1;
                return false;
            }
            self.state = if self.fin_queued {
                State::FinWait1
            } else {
                State::Established
            };
            self.snd_wnd = u64::from(repr.window) << self.snd_wscale;
            self.max_snd_wnd = self.max_snd_wnd.max(self.snd_wnd);
            self.snd_wl1 = seg_off;
            self.snd_wl2 = ack_off as u64;
        }
        if ack_off > self.snd_max as i64 {
            // Acknowledges something never sent (RFC 9293, RFC 5961 5.2).
            self.challenge_ack(now);
            self.stats.dropped += 1;
            return false;
        }
        if ack_off < self.snd_una as i64 - self.max_snd_wnd as i64 {
            // Too old to be a real duplicate (RFC 5961 5.2).
            self.challenge_ack(now);
            self.stats.dropped += 1;
            return false;
        }
        self.probes = 0;
        let wnd = u64::from(repr.window) << self.snd_wscale;
        if ack_off > self.snd_una as i64 {
            self.on_new_ack(now, ack_off as u64, repr);
        } else if ack_off == self.snd_una as i64
            && payload_len == 0
            && !f.contains(TcpFlags::SYN)
            && !f.contains(TcpFlags::FIN)
            && wnd == self.snd_wnd
            && self.snd_max > self.snd_una
        {
            self.stats.dup_acks += 1;
            self.dupacks += 1;
            self.on_dupack();
        }
        // Window update (RFC 9293 3.10.7.4, SND.WL1/SND.WL2).
        let ack_u = ack_off.max(0) as u64;
        if self.snd_wl1 < seg_off || (self.snd_wl1 == seg_off && self.snd_wl2 <= ack_u) {
            if self.snd_wnd == 0 && wnd > 0 {
                self.persist_backoff = 0;
            }
            self.snd_wnd = wnd;
            self.max_snd_wnd = self.max_snd_wnd.max(wnd);
            self.snd_wl1 = seg_off;
            self.snd_wl2 = ack_u;
        }
        // Our FIN acknowledged.
        if self.fin_acked() {
            match self.state {
                State::FinWait1 => self.state = State::FinWait2,
                State::Closing => self.enter_time_wait(now),
                State::LastAck => {
                    self.become_closed(None);
                    return false;
                }
                _ => {}
            }
        }
        true
    }

    /// `SND.UNA` advances to `ack_off`.
    fn on_new_ack(&mut self, now: u64, ack_off: u64, repr: &TcpRepr) {
        let acked = (ack_off - self.snd_una) as usize;
        let flight = (self.snd_nxt.max(self.snd_una) - self.snd_una) as usize;
        // RTT: the timed segment (Karn), else the echoed timestamp.
        match self.rtt_sample {
            Some((_, end, sent)) if ack_off >= end => {
                self.rtt.sample(now.saturating_sub(sent));
                self.rtt_sample = None;
            }
            None => {
                if let (true, Some((_, tsecr))) = (self.ts_enabled, repr.timestamp) {
                    let ms = self.ts_now(now).wrapping_sub(tsecr);
                    if tsecr != 0 && ms < (1 << 30) {
                        self.rtt.sample(u64::from(ms) * MS);
                    }
                }
            }
            _ => {}
        }
        self.rtt.reset_backoff();
        self.retries = 0;
        if self.tx.ack_to(ack_off) {
            self.tx_tail = None;
        }
        self.snd_una = ack_off;
        if self.snd_nxt < self.snd_una {
            self.snd_nxt = self.snd_una;
        }
        let mss = self.send_mss;
        if self.in_recovery {
            if ack_off >= self.recover {
                // Full ACK (RFC 6582 3.2 step 3).
                let out = (self.snd_max - self.snd_una) as usize;
                self.cwnd = self.ssthresh.min(out.max(mss) + mss);
                self.in_recovery = false;
                self.dupacks = 0;
                self.fast_rexmit = false;
            } else {
                // Partial ACK: retransmit the next hole, deflate.
                self.cwnd = self.cwnd.saturating_sub(acked).max(mss);
                if acked >= mss {
                    self.cwnd += mss;
                }
                self.fast_rexmit = true;
                self.stats.fast_retransmits += 1;
            }
        } else {
            self.dupacks = 0;
            self.fast_rexmit = false;
            // Grow only when the window was being used (RFC 7661 spirit).
            if 2 * flight >= self.cwnd {
                if self.cwnd < self.ssthresh {
                    self.cwnd += acked.min(self.ssthresh - self.cwnd).max(1);
                } else {
                    self.ca_acked += acked;
                    if self.ca_acked >= self.cwnd {
                        self.ca_acked -= self.cwnd;
                        self.cwnd += mss;
                    }
                }
                self.cwnd = self.cwnd.min(1 << 30);
            }
        }
        self.rto_at = if self.snd_una >= self.snd_max {
            None
        } else {
            Some(now.saturating_add(self.rtt.rto()))
        };
    }

    fn on_dupack(&mut self) {
        let mss = self.send_mss;
        if self.in_recovery {
            self.cwnd += mss;
            return;
        }
        if self.dupacks == DUPTHRESH && self.snd_una >= self.recover {
            let flight = (self.snd_max - self.snd_una) as usize;
            self.ssthresh = (flight / 2).max(2 * mss);
            self.cwnd = self.ssthresh + DUPTHRESH as usize * mss;
            self.recover = self.snd_max;
            self.in_recovery = true;
            self.fast_rexmit = true;
            self.stats.fast_retransmits += 1;
        }
    }

    /// Data and FIN of an acceptable segment whose first data byte has
    /// receive offset `seg_off`.
    fn process_text(&mut self, now: u64, seg_off: i64, payload: Payload, fin: bool) {
        let nxt = self.rcv_nxt as i64;
        let fin_off = seg_off + payload.len() as i64;
        let mut p = payload;
        let mut start = seg_off;
        if start < nxt {
            let cut = ((nxt - start) as usize).min(p.len());
            p.advance(cut);
            start += cut as i64;
        }
        let mut fin = fin && fin_off >= nxt;
        let right = self.rcv_adv as i64;
        if start + p.len() as i64 > right {
            p.truncate((right - start).max(0) as usize);
            fin = false;
        }
        if let Some(known) = self.rx_fin {
            // Nothing exists past the FIN.
            let limit = known as i64;
            if start + p.len() as i64 > limit {
                p.truncate((limit - start).max(0) as usize);
            }
        }
        let mut ack_at_once = false;
        if !p.is_empty() {
            self.stats.bytes_in += p.len() as u64;
            // Capped at our MSS: a coalesced (LRO/GRO) segment is several.
            self.rcv_mss = self
                .rcv_mss
                .max(p.len().min(usize::from(self.cfg.mss).max(1)));
            let start = start as u64;
            if start == self.rcv_nxt {
                let n = p.len();
                self.rx_len += n;
                self.rx.push_back(p);
                self.rcv_nxt += n as u64;
                self.unacked_bytes += n;
                if !self.ooo.is_empty() {
                    while let Some(q) = self.ooo.pop_at(self.rcv_nxt) {
                        let m = q.len();
                        self.rx_len += m;
                        self.rx.push_back(q);
                        self.rcv_nxt += m as u64;
                    }
                    ack_at_once = true;
                }
            } else {
                match self.ooo.insert(start, &p) {
                    Ok(_) => self.stats.out_of_order += 1,
                    Err(_) => self.stats.dropped += 1,
                }
                // One duplicate ACK per out-of-order segment, even when the
                // interface hands several over before the next dispatch:
                // the sender counts them (fast retransmit, NewReno).
                self.dupacks_owed = (self.dupacks_owed + 1).min(MAX_DUPACKS_OWED);
                ack_at_once = true;
            }
        }
        if fin && self.rx_fin.is_none() {
            self.rx_fin = Some(fin_off.max(0) as u64);
            self.ooo.truncate_from(fin_off.max(0) as u64);
            ack_at_once = true;
        }
        if self.rx_fin == Some(self.rcv_nxt) {
            self.rx_fin = None;
            self.rcv_nxt += 1;
            self.fin_received = true;
            self.ooo.clear();
            ack_at_once = true;
            match self.state {
                State::Established => self.state = State::CloseWait,
                State::FinWait1 => self.state = State::Closing,
                State::FinWait2 => self.enter_time_wait(now),
                _ => {}
            }
        }
        if ack_at_once || self.cfg.delayed_ack_ns == 0 || self.unacked_bytes >= 2 * self.rcv_mss {
            self.ack_now = true;
        } else if self.unacked_bytes > 0 && self.delack_at.is_none() {
            self.delack_at = Some(now.saturating_add(self.cfg.delayed_ack_ns));
        }
    }

    /// After the application read: a window update when the window opened
    /// much (at least doubled, or from below one MSS).
    fn after_read(&mut self) {
        if !matches!(
            self.state,
            State::Established | State::FinWait1 | State::FinWait2
        ) || self.fin_received
        {
            return;
        }
        let cur = self.rcv_adv.saturating_sub(self.rcv_nxt);
        let (_, edge) = self.rcv_window();
        let new = edge - self.rcv_nxt;
        if edge > self.rcv_adv && (new >= 2 * cur || cur < self.rcv_mss as u64) {
            self.ack_now = true;
        }
    }

    // ------------------------------------------------------------------
    // Output
    // ------------------------------------------------------------------

    /// The next segment to emit, if any (pure function of the state).
    fn plan(&self) -> Option<Plan> {
        match self.state {
            State::SynSent | State::SynReceived => {
                return (self.snd_nxt == 0).then_some(Plan {
                    off: 0,
                    syn: true,
                    len: 0,
                    fin: false,
                    rexmit: false,
                });
            }
            State::Established
            | State::CloseWait
            | State::FinWait1
            | State::Closing
            | State::LastAck => {}
            _ => return None,
        }
        let data_end = self.tx.end();
        let mss = self.send_mss;
        let line = self.line();
        if self.fast_rexmit && self.snd_una < self.snd_max {
            let off = self.snd_una;
            let len = (data_end.saturating_sub(off) as usize).min(mss);
            let len = if off + (len as u64) < data_end {
                self.tx.shape(off, len, line, mss / 2)
            } else {
                len
            };
            let fin = self.fin_queued && off + len as u64 == data_end && self.snd_max > data_end;
            if len > 0 || fin {
                return Some(Plan {
                    off,
                    syn: false,
                    len,
                    fin,
                    rexmit: true,
                });
            }
        }
        if self.snd_nxt > data_end {
            return None;
        }
        let avail = (data_end - self.snd_nxt) as usize;
        let win_end = self.snd_una + self.snd_wnd;
        let win_avail = win_end.saturating_sub(self.snd_nxt) as usize;
        let in_flight = (self.snd_nxt - self.snd_una) as usize;
        // Limited transmit (RFC 3042): the first two duplicate ACKs each
        // let one new segment out, so small windows still reach three.
        let limited = if self.in_recovery {
            0
        } else {
            self.dupacks.min(2) as usize * mss
        };
        let cwnd_avail = (self.cwnd + limited).saturating_sub(in_flight);
        let want = avail.min(self.max_seg());
        let mut len = want.min(win_avail);
        if cwnd_avail < len.min(mss) {
            len = 0;
        } else if len > cwnd_avail {
            len = cwnd_avail - cwnd_avail % mss;
        }
        let fin_plan = Plan {
            off: self.snd_nxt,
            syn: false,
            len: 0,
            fin: true,
            rexmit: false,
        };
        if len == 0 {
            return (avail == 0 && self.fin_queued).then_some(fin_plan);
        }
        if len < mss && !self.persist_force {
            if len < want {
                // Sender SWS avoidance (RFC 9293 3.8.6.2.1).
                if (len as u64) < self.max_snd_wnd / 2 {
                    return None;
                }
            } else if self.cfg.nagle && in_flight > 0 && !self.fin_queued {
                return None;
            }
        }
        if len >= line && len < want {
            // Window-limited: keep the end on a line boundary.
            len = self.tx.shape(self.snd_nxt, len, line, len / 2);
        } else if self.snd_nxt + (len as u64) < data_end {
            len = self.tx.shape(self.snd_nxt, len, line, mss / 2);
        }
        let fin = self.fin_queued && self.snd_nxt + len as u64 == data_end;
        Some(Plan {
            off: self.snd_nxt,
            syn: false,
            len,
            fin,
            rexmit: false,
        })
    }

    fn ack_fields(&self, r: &mut TcpRepr, syn: bool) {
        r.flags |= TcpFlags::ACK;
        r.ack = seq::wrap(self.irs, self.rcv_nxt);
        if syn {
            r.window = self.cfg.recv_buf.min(65535) as u16;
        } else {
            r.window = self.rcv_window().0;
        }
    }

    fn build(&self, now: u64, plan: &Plan) -> TcpRepr {
        let mut r = TcpRepr {
            src_port: self.local.port(),
            dst_port: self.remote.port(),
            seq: seq::wrap(self.iss, plan.off),
            ..TcpRepr::default()
        };
        if plan.syn {
            r.flags = TcpFlags::SYN;
            r.mss = Some(self.cfg.mss);
            if self.state == State::SynSent {
                r.window = self.cfg.recv_buf.min(65535) as u16;
                if self.cfg.window_scale {
                    r.wscale = Some(self.our_wscale);
                }
                if self.cfg.timestamps {
                    r.timestamp = Some((self.ts_now(now), 0));
                }
                return r;
            }
            self.ack_fields(&mut r, true);
            if self.ws_enabled {
                r.wscale = Some(self.rcv_wscale);
            }
        } else {
            self.ack_fields(&mut r, false);
            if plan.fin {
                r.flags |= TcpFlags::FIN;
            }
            if plan.len > 0 {
                r.flags |= TcpFlags::PSH;
            }
        }
        if self.ts_enabled {
            r.timestamp = Some((self.ts_now(now), self.ts_recent));
        }
        r
    }

    /// Bookkeeping after a segment carrying an ACK went out.
    fn sent_ack(&mut self, r: &TcpRepr) {
        if r.flags.contains(TcpFlags::SYN) {
            self.syn_window = r.window;
            self.rcv_adv = self.rcv_adv.max(self.rcv_nxt + u64::from(r.window));
        } else {
            self.rcv_adv = self
                .rcv_adv
                .max(self.rcv_nxt + (u64::from(r.window) << self.rcv_wscale));
        }
        self.last_ack_sent = self.rcv_nxt;
        self.ack_now = false;
        self.dupacks_owed = self.dupacks_owed.saturating_sub(1);
        self.delack_at = None;
        self.unacked_bytes = 0;
    }

    fn count_alignment(&mut self, slices: &[Payload]) {
        let line = self.line() as u64;
        if line <= 1 {
            return;
        }
        let mut first_phase = 0;
        let mut run = 0u64;
        for (i, s) in slices.iter().enumerate() {
            let phase = s.offset() % line;
            if i == 0 {
                first_phase = phase;
                if phase != 0 {
                    self.stats.tx_unaligned_slices += 1;
                    self.stats.tx_unaligned_bytes += (line - phase).min(s.len() as u64);
                }
            } else if phase != (first_phase + run) % line {
                self.stats.tx_unaligned_slices += 1;
                self.stats.tx_unaligned_bytes += s.len() as u64;
            }
            run += s.len() as u64;
        }
    }

    fn commit(&mut self, now: u64, plan: &Plan, r: &TcpRepr, slices: &[Payload]) {
        let end = plan.off + u64::from(plan.syn) + plan.len as u64 + u64::from(plan.fin);
        let retransmit = plan.off < self.snd_max;
        if plan.rexmit {
            self.fast_rexmit = false;
        }
        if !plan.rexmit || end > self.snd_nxt {
            self.snd_nxt = end;
        }
        if retransmit {
            self.stats.retransmits += 1;
            self.stats.retransmitted_bytes += plan.len as u64;
            if let Some((s, e, _)) = self.rtt_sample {
                if plan.off < e && end > s {
                    self.rtt_sample = None;
                }
            }
        }
        if end > self.snd_max {
            if self.rtt_sample.is_none() && !retransmit {
                self.rtt_sample = Some((plan.off, end, now));
            }
            self.snd_max = end;
        }
        if end > plan.off {
            self.last_send = now;
        }
        if end > plan.off && self.rto_at.is_none() {
            self.rto_at = Some(now.saturating_add(self.rtt.rto()));
        }
        if plan.len > 0 {
            self.persist_force = false;
        }
        self.stats.segs_out += 1;
        self.stats.bytes_out += plan.len as u64;
        self.count_alignment(slices);
        if r.flags.contains(TcpFlags::ACK) {
            self.sent_ack(r);
        } else if r.flags.contains(TcpFlags::SYN) {
            self.syn_window = r.window;
        }
    }

    fn run_timers(&mut self, now: u64) {
        if let Some(t) = self.timewait_at {
            if now >= t {
                self.become_closed(None);
                return;
            }
        }
        if let Some(t) = self.rto_at {
            if now >= t {
                self.on_rto();
                if self.state == State::Closed {
                    return;
                }
            }
        }
        if let Some(t) = self.delack_at {
            if now >= t {
                self.delack_at = None;
                self.ack_now = true;
            }
        }
        if let Some(t) = self.keepalive_at {
            if now >= t {
                self.keepalive_at = None;
                if self.snd_una == self.snd_max && self.tx.len() == 0 {
                    let ka = self.cfg.keepalive.unwrap_or_default();
                    if self.keepalive_sent >= ka.probes {
                        // As Linux: tell the peer, then give up.
                        self.abort();
                        self.error = Some(TcpError::TimedOut);
                        return;
                    }
                    self.keepalive_sent += 1;
                    self.keepalive_due = true;
                }
            }
        }
        if let Some(t) = self.persist_at {
            if now >= t {
                self.probes += 1;
                if self.probes > self.cfg.max_retries {
                    self.become_closed(Some(TcpError::TimedOut));
                    return;
                }
                self.persist_backoff = (self.persist_backoff + 1).min(32);
                let win_avail = (self.snd_una + self.snd_wnd).saturating_sub(self.snd_nxt);
                if win_avail > 0 {
                    self.persist_force = true;
                } else {
                    self.probe_due = true;
                }
                self.persist_at = Some(now.saturating_add(self.persist_interval()));
            }
        }
    }

    fn persist_interval(&self) -> u64 {
        let base = self.rtt.rto();
        let shifted = if self.persist_backoff >= 32 {
            u64::MAX
        } else {
            base.saturating_mul(1 << self.persist_backoff)
        };
        shifted.min(self.cfg.rto_max_ns.max(1))
    }

    fn on_rto(&mut self) {
        self.stats.timeouts += 1;
        self.retries += 1;
        self.rto_at = None;
        let handshake = matches!(self.state, State::SynSent | State::SynReceived);
        let limit = if handshake {
            self.cfg.syn_retries
        } else {
            self.cfg.max_retries
        };
        if self.retries > limit {
            self.become_closed(Some(TcpError::TimedOut));
            return;
        }
        self.rtt.back_off();
        if !handshake {
            let mss = self.send_mss;
            if self.retries == 1 {
                let flight = (self.snd_max - self.snd_una) as usize;
                self.ssthresh = (flight / 2).max(2 * mss);
            }
            self.cwnd = mss;
            self.ca_acked = 0;
            self.in_recovery = false;
            self.dupacks = 0;
            self.recover = self.snd_max;
        }
        self.snd_nxt = self.snd_una;
        self.fast_rexmit = false;
        self.rtt_sample = None;
    }

    /// Arms the persist timer when data waits for a window with nothing in
    /// flight (also after a timeout rewound `SND.NXT`), and disarms it
    /// otherwise.
    fn update_persist(&mut self, now: u64) {
        if let Some(ka) = self.cfg.keepalive {
            let open = matches!(
                self.state,
                State::Established | State::CloseWait | State::FinWait2
            );
            if !open {
                self.keepalive_at = None;
            } else if self.keepalive_at.is_none() && !self.keepalive_due {
                let wait = if self.keepalive_sent == 0 {
                    ka.idle_ns
                } else {
                    ka.interval_ns
                };
                self.keepalive_at = Some(now.saturating_add(wait.max(1)));
            }
        }
        if self.snd_nxt > self.snd_una && self.rto_at.is_none() && self.state != State::Closed {
            self.rto_at = Some(now.saturating_add(self.rtt.rto()));
        }
        let blocked = matches!(
            self.state,
            State::Established
                | State::CloseWait
                | State::FinWait1
                | State::Closing
                | State::LastAck
        ) && self.snd_nxt == self.snd_una
            && self.rto_at.is_none()
            && self.tx.end() > self.snd_nxt
            && !self.persist_force
            && self.plan().is_none();
        if blocked {
            if self.persist_at.is_none() {
                self.persist_at = Some(now.saturating_add(self.persist_interval()));
            }
        } else if !self.persist_force && !self.probe_due {
            self.persist_at = None;
            self.persist_backoff = 0;
        }
    }

    /// Emits every segment that is due: a pending RST, the SYN or SYN-ACK,
    /// data and FIN as the windows, Nagle and the timers allow,
    /// retransmissions, zero-window probes, and a pure ACK when an ACK is
    /// owed and nothing else carried it. Each segment is passed to `emit` as
    /// its header, its payload slices (snapshots of queued payloads, in
    /// order) and, when the payload exceeds one MSS (TSO), the MSS to cut it
    /// at. When `emit` returns false (TX ring full) emission stops and the
    /// refused segment counts as not sent.
    pub fn dispatch(&mut self, now: u64, emit: &mut Emit<'_>) {
        if let Some(rst) = self.pending_rst {
            if !emit(&rst, &[], None) {
                return;
            }
            self.pending_rst = None;
            self.stats.segs_out += 1;
            self.stats.rst_out += 1;
        }
        if self.state == State::Closed {
            return;
        }
        self.run_timers(now);
        if self.state == State::Closed {
            return;
        }
        // Restart window (RFC 5681 4.1): after an idle RTO, at most IW.
        if self.snd_una == self.snd_max
            && self.snd_max > 1
            && now.saturating_sub(self.last_send) > self.rtt.rto()
        {
            let iw = self.send_mss * (self.cfg.initial_cwnd.max(1) as usize);
            self.cwnd = self.cwnd.min(iw);
        }
        // Bounded: every round moves snd_nxt or clears a flag.
        for _ in 0..4096 {
            let Some(plan) = self.plan() else {
                break;
            };
            let r = self.build(now, &plan);
            let slices = if plan.len > 0 {
                self.tx.slices(plan.off, plan.len)
            } else {
                Vec::new()
            };
            let gso = (plan.len > self.send_mss).then_some(self.send_mss as u16);
            if !emit(&r, &slices, gso) {
                self.update_persist(now);
                return;
            }
            self.commit(now, &plan, &r, &slices);
        }
        if self.probe_due || self.keepalive_due {
            let mut r = TcpRepr {
                src_port: self.local.port(),
                dst_port: self.remote.port(),
                seq: seq::wrap(self.iss, self.snd_una).wrapping_sub(1),
                ..TcpRepr::default()
            };
            self.ack_fields(&mut r, false);
            if self.ts_enabled {
                r.timestamp = Some((self.ts_now(now), self.ts_recent));
            }
            if !emit(&r, &[], None) {
                return;
            }
            if self.probe_due {
                self.stats.window_probes += 1;
            } else {
                self.stats.keepalive_probes += 1;
            }
            self.probe_due = false;
            self.keepalive_due = false;
            self.stats.segs_out += 1;
            self.sent_ack(&r);
        }
        while (self.ack_now || self.dupacks_owed > 0)
            && !matches!(self.state, State::SynSent | State::Closed)
        {
            // SND.MAX, not SND.NXT: after a timeout rewound SND.NXT, the
            // peer may hold data up to SND.MAX and would find an ACK below
            // its RCV.NXT unacceptable (BSD does the same).
            let mut r = TcpRepr {
                src_port: self.local.port(),
                dst_port: self.remote.port(),
                seq: seq::wrap(self.iss, self.snd_max),
                ..TcpRepr::default()
            };
            self.ack_fields(&mut r, false);
            if self.ts_enabled {
                r.timestamp = Some((self.ts_now(now), self.ts_recent));
            }
            if !emit(&r, &[], None) {
                return;
            }
            self.stats.segs_out += 1;
            self.sent_ack(&r);
        }
        self.update_persist(now);
    }

    /// When [`TcpSocket::dispatch`] must be called next: `Some(0)` when
    /// something is ready to go now, `Some(t)` for the earliest timer
    /// (retransmission, delayed ACK, persist, TIME-WAIT expiry), `None` when
    /// nothing will happen until a segment arrives or the application acts.
    pub fn poll_at(&self) -> Option<u64> {
        if self.pending_rst.is_some() {
            return Some(0);
        }
        if self.state == State::Closed {
            return None;
        }
        if self.probe_due
            || self.keepalive_due
            || ((self.ack_now || self.dupacks_owed > 0) && self.state != State::SynSent)
            || self.plan().is_some()
        {
            return Some(0);
        }
        [
            self.rto_at,
            self.delack_at,
            self.persist_at,
            self.timewait_at,
            self.keepalive_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}
