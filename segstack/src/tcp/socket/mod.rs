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
use crate::wire::tcp::MAX_WSCALE;
use crate::wire::{TcpFlags, TcpRepr};
use crate::Payload;

const MS: u64 = 1_000_000;
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

mod app;
mod congestion;
mod input;
mod output;
mod types;

pub use types::{Keepalive, State, TcpConfig, TcpError, TcpStats};

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
    /// The payload slices of the segment being emitted (kept for reuse).
    scratch: Vec<Payload>,
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
    pub(super) fn new(
        cfg: TcpConfig,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        iss: u32,
    ) -> TcpSocket {
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
            scratch: Vec::new(),
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

    /// Turns keepalive probing on (with these knobs) or off
    /// (`SO_KEEPALIVE`); takes effect at the next dispatch.
    pub fn set_keepalive(&mut self, ka: Option<Keepalive>) {
        self.cfg.keepalive = ka;
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

    pub(super) fn become_closed(&mut self, error: Option<TcpError>) {
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

    pub(super) fn enter_time_wait(&mut self, now: u64) {
        self.state = State::TimeWait;
        self.timewait_at = Some(now.saturating_add(self.cfg.time_wait_ns));
        self.rto_at = None;
        self.persist_at = None;
        self.probe_due = false;
        self.persist_force = false;
        self.fast_rexmit = false;
    }

    pub(super) fn ts_now(&self, now: u64) -> u32 {
        ((now / MS) as u32).wrapping_add(self.ts_offset)
    }

    pub(super) fn take_syn_options(&mut self, now: u64, syn: &TcpRepr) {
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

    pub(super) fn max_seg(&self) -> usize {
        let mss = self.send_mss;
        let tso = self.cfg.tso_max.min(MAX_TSO_PAYLOAD);
        if tso >= 2 * mss {
            tso - tso % mss
        } else {
            mss
        }
    }

    /// Whether our FIN was sent and acknowledged.
    pub(super) fn fin_acked(&self) -> bool {
        self.fin_queued && self.snd_una > self.tx.end()
    }

    /// The window to advertise now: `(field, new right edge)`. Never
    /// shrinks the right edge already advertised, and opens it only by at
    /// least min(recv_buf / 2, MSS) (receiver SWS avoidance, RFC 9293
    /// 3.8.6.2.2).
    pub(super) fn rcv_window(&self) -> (u16, u64) {
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

    pub(super) fn challenge_ack(&mut self, now: u64) {
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
    pub(super) fn oow_ack(&mut self, now: u64, pure: bool, probe: bool) {
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
}
