//! Congestion control: slow start, congestion avoidance, fast retransmit and
//! NewReno recovery (RFC 5681, RFC 6582), and the retransmission timeout
//! (RFC 6298).

use super::*;

impl TcpSocket {
    /// Congestion control on an ACK of new data (`acked` bytes, up to
    /// `ack_off`, with `flight` bytes outstanding before it): NewReno
    /// recovery (RFC 6582), else slow start or congestion avoidance.
    pub(super) fn cc_on_ack(&mut self, ack_off: u64, acked: usize, flight: usize) {
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
    }

    /// A duplicate ACK: fast retransmit after [`DUPTHRESH`], window
    /// inflation during recovery.
    pub(super) fn on_dupack(&mut self) {
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

    /// The retransmission timer fired: back off, and collapse the window.
    pub(super) fn on_rto(&mut self) {
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
}
