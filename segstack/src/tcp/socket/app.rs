//! The application side of a connection: send, receive, close.

use super::*;

impl TcpSocket {
    pub(super) fn send_state(&self) -> Result<(), TcpError> {
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

    pub(super) fn line(&self) -> usize {
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
        // Interned in one pass (a builder's append rebuilds its tree around the new leaves:
        // 600 ns for a 255-byte HTTP header against 380).
        let seg = mem.segment(data).map_err(|_| TcpError::NoMemory)?;
        self.tx.push(Payload::from_segment(seg.clone()));
        self.tx_tail = Some(seg.into_mut());
        self.stats.bytes_copied += take as u64;
        Ok(take)
    }

    pub(super) fn recv_error(&self) -> TcpError {
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
        let mut out = Vec::new();
        self.recv_into(max, &mut out)?;
        Ok(out)
    }

    /// [`TcpSocket::recv`] appending to `out` (a vector the caller reuses);
    /// returns the bytes taken.
    pub fn recv_into(&mut self, max: usize, out: &mut Vec<Payload>) -> Result<usize, TcpError> {
        if max == 0 {
            return Ok(0);
        }
        if self.rx_len == 0 {
            return Err(self.recv_error());
        }
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
        Ok(max - left)
    }

    /// Byte API: copies up to `buf.len()` bytes of received data into `buf`
    /// (counted in [`TcpStats::bytes_copied`]). Same results as
    /// [`TcpSocket::recv`]: `Ok(0)` only for an empty `buf`, and
    /// [`TcpError::Finished`] at end of stream.
    pub fn recv_slice(&mut self, buf: &mut [u8]) -> Result<usize, TcpError> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.rx_len == 0 {
            return Err(self.recv_error());
        }
        let mut n = 0;
        while n < buf.len() {
            let Some(front) = self.rx.front_mut() else {
                break;
            };
            let k = front.copy_to(&mut buf[n..]);
            n += k;
            if k == front.len() {
                self.rx.pop_front();
            } else {
                front.advance(k);
            }
        }
        self.rx_len -= n;
        self.after_read();
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
}
