//! Input: processing an incoming segment (RFC 9293 3.10.7).

use super::*;

impl TcpSocket {
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

    pub(super) fn process_syn_sent(&mut self, now: u64, repr: &TcpRepr, payload: Payload) {
        let f = repr.flags;
        let ack_ok =
            f.contains(TcpFlags::ACK) && self.snd_max >= 1 && repr.ack == seq::wrap(self.iss, 1);
        if f.contains(TcpFlags::ACK) && !ack_ok {
            if !f.contains(TcpFlags::RST) {
                self.pending_rst = Some(self.rst_at(repr.ack));
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

    pub(super) fn process_synchronized(&mut self, now: u64, repr: &TcpRepr, payload: Payload) {
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
    pub(super) fn process_ack(
        &mut self,
        now: u64,
        repr: &TcpRepr,
        payload_len: usize,
        seg_off: i64,
    ) -> bool {
        let ack_off = seq::unwrap(repr.ack, seq::wrap(self.iss, self.snd_una), self.snd_una);
        let f = repr.flags;
        if self.state == State::SynReceived {
            if ack_off <= self.snd_una as i64 || ack_off > self.snd_max as i64 {
                self.pending_rst = Some(self.rst_at(repr.ack));
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
    pub(super) fn on_new_ack(&mut self, now: u64, ack_off: u64, repr: &TcpRepr) {
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
        self.cc_on_ack(ack_off, acked, flight);
        self.rto_at = if self.snd_una >= self.snd_max {
            None
        } else {
            Some(now.saturating_add(self.rtt.rto()))
        };
    }

    /// Data and FIN of an acceptable segment whose first data byte has
    /// receive offset `seg_off`.
    pub(super) fn process_text(&mut self, now: u64, seg_off: i64, payload: Payload, fin: bool) {
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
    pub(super) fn after_read(&mut self) {
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

    /// `<SEQ=ack><CTL=RST>`: the reset that answers an unacceptable ACK of
    /// `ack` (RFC 9293 3.10.7.3 and 3.10.7.4).
    pub(super) fn rst_at(&self, ack: u32) -> TcpRepr {
        TcpRepr {
            src_port: self.local.port(),
            dst_port: self.remote.port(),
            seq: ack,
            flags: TcpFlags::RST,
            ..TcpRepr::default()
        }
    }
}
