//! Output: planning, building and emitting segments, and the timers.

use super::*;

impl TcpSocket {
    /// The next segment to emit, if any (pure function of the state).
    pub(super) fn plan(&self) -> Option<Plan> {
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
        let grain = self.cfg.tso_align;
        if len > mss && grain > line && len >= 2 * grain {
            // A TSO segment ends on a subtree boundary of its payload's
            // segment (it gives up less than one span of the window), so
            // the next one starts on one and the frame shares the
            // payload's interior lines.
            // Never below one MSS (no runt segment while data waits).
            len = self
                .tx
                .shape_end(self.snd_nxt, len, grain, (len / 2).max(mss));
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

    /// A segment with no data at sequence number `seq` that carries the ACK
    /// fields and, when on, a timestamp (pure ACKs, window probes,
    /// keepalives).
    pub(super) fn bare_ack(&self, now: u64, seq: u32) -> TcpRepr {
        let mut r = TcpRepr {
            src_port: self.local.port(),
            dst_port: self.remote.port(),
            seq,
            ..TcpRepr::default()
        };
        self.ack_fields(&mut r, false);
        if self.ts_enabled {
            r.timestamp = Some((self.ts_now(now), self.ts_recent));
        }
        r
    }

    pub(super) fn ack_fields(&self, r: &mut TcpRepr, syn: bool) {
        r.flags |= TcpFlags::ACK;
        r.ack = seq::wrap(self.irs, self.rcv_nxt);
        if syn {
            r.window = self.cfg.recv_buf.min(65535) as u16;
        } else {
            r.window = self.rcv_window().0;
        }
    }

    pub(super) fn build(&self, now: u64, plan: &Plan) -> TcpRepr {
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
    pub(super) fn sent_ack(&mut self, r: &TcpRepr) {
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

    pub(super) fn count_alignment(&mut self, slices: &[Payload]) {
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

    pub(super) fn commit(&mut self, now: u64, plan: &Plan, r: &TcpRepr, slices: &[Payload]) {
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

    pub(super) fn run_timers(&mut self, now: u64) {
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

    pub(super) fn persist_interval(&self) -> u64 {
        let base = self.rtt.rto();
        let shifted = if self.persist_backoff >= 32 {
            u64::MAX
        } else {
            base.saturating_mul(1 << self.persist_backoff)
        };
        shifted.min(self.cfg.rto_max_ns.max(1))
    }

    /// Arms the persist timer when data waits for a window with nothing in
    /// flight (also after a timeout rewound `SND.NXT`), and disarms it
    /// otherwise.
    pub(super) fn update_persist(&mut self, now: u64) {
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
            // A scratch vector kept by the socket: no allocation per segment.
            let mut slices = std::mem::take(&mut self.scratch);
            slices.clear();
            self.tx.slices_into(plan.off, plan.len, &mut slices);
            let gso = (plan.len > self.send_mss).then_some(self.send_mss as u16);
            if !emit(&r, &slices, gso) {
                slices.clear();
                self.scratch = slices;
                self.update_persist(now);
                return;
            }
            self.commit(now, &plan, &r, &slices);
            slices.clear();
            self.scratch = slices;
        }
        if self.probe_due || self.keepalive_due {
            let r = self.bare_ack(now, seq::wrap(self.iss, self.snd_una).wrapping_sub(1));
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
            let r = self.bare_ack(now, seq::wrap(self.iss, self.snd_max));
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
