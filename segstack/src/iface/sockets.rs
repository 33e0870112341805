//! The application's side of the interface: opening, using and closing
//! sockets. The sockets themselves live in the [`SocketSet`](super::socket_set).

use std::collections::VecDeque;
use std::net::SocketAddrV4;

use nicdma::Port;

use super::socket_set::{Listener, Sock, SocketHandle, TcpSock, UdpSock};
use super::{IfaceError, Interface, IP_LEN};
use crate::tcp::{TcpError, TcpSocket};
use crate::wire::{self, checksum, UdpRepr};
use crate::Payload;

impl<P: Port> Interface<P> {
    /// The TCP socket behind `h` (for its state, queues and statistics).
    pub fn tcp(&self, h: SocketHandle) -> Result<&TcpSocket, IfaceError> {
        Ok(&self.sockets.tcp(h)?.sock)
    }

    /// Listens for TCP connections on `port`.
    pub fn tcp_listen(&mut self, port: u16) -> Result<SocketHandle, IfaceError> {
        if self.sockets.listeners.contains_key(&port) {
            return Err(IfaceError::AddrInUse);
        }
        let backlog = self.inner.cfg.backlog;
        let h = self.sockets.insert(Sock::Listener(Listener {
            port,
            backlog,
            ready: VecDeque::new(),
            embryonic: 0,
            cookies: crate::tcp::cookie::SynCookies::random(),
            cookie_sent_at: None,
        }));
        self.sockets.listeners.insert(port, h);
        Ok(h)
    }

    /// Takes the next established connection of a listener, if any.
    pub fn tcp_accept(
        &mut self,
        listener: SocketHandle,
    ) -> Result<Option<SocketHandle>, IfaceError> {
        let Some(l) = self.sockets.listener_mut(listener) else {
            return Err(IfaceError::BadHandle);
        };
        let Some(h) = l.ready.pop_front() else {
            return Ok(None);
        };
        self.sockets.tcp_mut(h)?.queued = false;
        Ok(Some(h))
    }

    /// Opens a TCP connection to `remote` (the SYN leaves at the next poll).
    pub fn tcp_connect(
        &mut self,
        remote: SocketAddrV4,
        now: u64,
    ) -> Result<SocketHandle, IfaceError> {
        let local = self.free_local(remote)?;
        let iss = self.inner.iss(local, remote, now);
        let sock = TcpSocket::connect(self.inner.cfg.tcp.clone(), local, remote, iss, now);
        Ok(self.sockets.insert_tcp(TcpSock::new(sock, None)))
    }

    fn free_local(&mut self, remote: SocketAddrV4) -> Result<SocketAddrV4, IfaceError> {
        let (lo, hi) = self.inner.cfg.ephemeral;
        let (lo, hi) = (lo.min(hi), lo.max(hi));
        for _ in 0..=u32::from(hi - lo) {
            let p = self.inner.next_port.clamp(lo, hi);
            self.inner.next_port = if p >= hi { lo } else { p + 1 };
            let local = SocketAddrV4::new(self.inner.cfg.ip, p);
            if !self.sockets.tcp_demux.contains_key(&(local, remote))
                && !self.sockets.listeners.contains_key(&p)
            {
                return Ok(local);
            }
        }
        Err(IfaceError::NoPorts)
    }

    /// Queues `p` on a TCP connection without copying it (a snapshot).
    /// Returns the bytes taken (a prefix when the send buffer is short).
    pub fn send(&mut self, h: SocketHandle, p: Payload) -> Result<usize, IfaceError> {
        let t = self.sockets.tcp_mut(h)?;
        match t.sock.send(p) {
            Err(TcpError::WouldBlock) => {
                t.want_write = true;
                Err(IfaceError::WouldBlock)
            }
            r => Ok(r?),
        }
    }

    /// Queues as much of `p` as the send buffer takes (snapshots, no copy)
    /// and advances `p` past it. Returns the bytes taken: 0 when the buffer
    /// is full, and a writable event follows once there is room again.
    pub fn send_some(&mut self, h: SocketHandle, p: &mut Payload) -> Result<usize, IfaceError> {
        let mut taken = 0;
        while !p.is_empty() {
            match self.send(h, p.clone()) {
                Ok(0) | Err(IfaceError::WouldBlock) => break,
                Ok(n) => {
                    p.advance(n);
                    taken += n;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(taken)
    }

    /// Queues a copy of `data` on a TCP connection (the byte API).
    pub fn send_slice(&mut self, h: SocketHandle, data: &[u8]) -> Result<usize, IfaceError> {
        let t = self.sockets.tcp_mut(h)?;
        match t.sock.send_slice(&self.inner.mem, data) {
            Err(TcpError::WouldBlock) => {
                t.want_write = true;
                Err(IfaceError::WouldBlock)
            }
            r => Ok(r?),
        }
    }

    /// Received in-order payload snapshots, up to `max` bytes, as they
    /// arrived (no byte copied). Empty at end of stream.
    pub fn recv(&mut self, h: SocketHandle, max: usize) -> Result<Vec<Payload>, IfaceError> {
        // A receive that finds nothing changes nothing: the socket stays
        // off the active list.
        match self.sockets.tcp_quiet(h)?.sock.recv(max) {
            Err(TcpError::WouldBlock) => Err(IfaceError::WouldBlock),
            Err(TcpError::Finished) => {
                self.sockets.touch(h);
                Ok(Vec::new())
            }
            r => {
                self.sockets.touch(h);
                Ok(r?)
            }
        }
    }

    /// [`Interface::recv`] appending to `out`, a vector the caller reuses
    /// (no allocation per call). Returns the bytes taken; `Ok(0)` at end of
    /// stream.
    pub fn recv_into(
        &mut self,
        h: SocketHandle,
        max: usize,
        out: &mut Vec<Payload>,
    ) -> Result<usize, IfaceError> {
        // A receive that finds nothing changes nothing: the socket stays
        // off the active list.
        match self.sockets.tcp_quiet(h)?.sock.recv_into(max, out) {
            Err(TcpError::WouldBlock) => Err(IfaceError::WouldBlock),
            Err(TcpError::Finished) => {
                self.sockets.touch(h);
                Ok(0)
            }
            r => {
                self.sockets.touch(h);
                Ok(r?)
            }
        }
    }

    /// Copies received bytes into `buf` (the byte API); 0 at end of stream.
    pub fn recv_slice(&mut self, h: SocketHandle, buf: &mut [u8]) -> Result<usize, IfaceError> {
        // A receive that finds nothing changes nothing: the socket stays
        // off the active list.
        match self.sockets.tcp_quiet(h)?.sock.recv_slice(buf) {
            Err(TcpError::WouldBlock) => Err(IfaceError::WouldBlock),
            Err(TcpError::Finished) => {
                self.sockets.touch(h);
                Ok(0)
            }
            r => {
                self.sockets.touch(h);
                Ok(r?)
            }
        }
    }

    /// Copies received bytes into `buf` without consuming them (`MSG_PEEK`);
    /// 0 at end of stream.
    pub fn peek_slice(&mut self, h: SocketHandle, buf: &mut [u8]) -> Result<usize, IfaceError> {
        match self.sockets.tcp_mut(h)?.sock.peek_slice(buf) {
            Err(TcpError::WouldBlock) => Err(IfaceError::WouldBlock),
            Err(TcpError::Finished) => Ok(0),
            r => Ok(r?),
        }
    }

    /// Turns Nagle's algorithm on or off on a connection (`TCP_NODELAY`
    /// turns it off).
    pub fn set_nagle(&mut self, h: SocketHandle, on: bool) -> Result<(), IfaceError> {
        self.sockets.tcp_mut(h)?.sock.set_nagle(on);
        Ok(())
    }

    /// Turns keepalive probing on or off on a connection (`SO_KEEPALIVE`).
    pub fn set_keepalive(
        &mut self,
        h: SocketHandle,
        ka: Option<crate::tcp::Keepalive>,
    ) -> Result<(), IfaceError> {
        let t = self.sockets.tcp_mut(h)?;
        t.sock.set_keepalive(ka);
        t.dirty = true;
        Ok(())
    }

    /// Half-closes a connection: FIN after the queued data.
    pub fn shutdown(&mut self, h: SocketHandle) -> Result<(), IfaceError> {
        self.sockets.tcp_mut(h)?.sock.close();
        Ok(())
    }

    /// Resets a connection.
    pub fn abort(&mut self, h: SocketHandle) -> Result<(), IfaceError> {
        self.sockets.tcp_mut(h)?.sock.abort();
        Ok(())
    }

    /// Gives up a socket: a TCP connection is closed gracefully (FIN) and
    /// freed when TCP is done with it; listeners and UDP sockets go at once.
    pub fn close(&mut self, h: SocketHandle) -> Result<(), IfaceError> {
        let set = &mut self.sockets;
        match set.get_mut(h) {
            Some(Sock::Tcp(t)) => {
                t.sock.close();
                t.released = true;
                Ok(())
            }
            Some(Sock::Listener(l)) => {
                let port = l.port;
                let pending: Vec<SocketHandle> = l.ready.drain(..).collect();
                set.listeners.remove(&port);
                for p in pending {
                    if let Ok(t) = set.tcp_mut(p) {
                        t.sock.abort();
                        t.released = true;
                    }
                }
                // Connections still in the handshake are reset too.
                let mut embryos = Vec::new();
                for (i, s) in set.slots.iter_mut().enumerate() {
                    if let Some(Sock::Tcp(t)) = s {
                        if t.listener == Some(h) {
                            t.dirty = true;
                            t.sock.abort();
                            t.released = true;
                            t.listener = None;
                            embryos.push(i);
                        }
                    }
                }
                for i in embryos {
                    set.mark(i);
                }
                set.remove(h);
                Ok(())
            }
            Some(Sock::Udp(u)) => {
                let port = u.port;
                set.udp_ports.remove(&port);
                set.remove(h);
                Ok(())
            }
            None => Err(IfaceError::BadHandle),
        }
    }

    /// Binds a UDP socket to `port`.
    pub fn udp_bind(&mut self, port: u16) -> Result<SocketHandle, IfaceError> {
        if self.sockets.udp_ports.contains_key(&port) {
            return Err(IfaceError::AddrInUse);
        }
        let h = self.sockets.insert(Sock::Udp(UdpSock {
            port,
            rx: VecDeque::new(),
        }));
        self.sockets.udp_ports.insert(port, h);
        Ok(h)
    }

    /// The next datagram of a UDP socket: its sender and payload snapshot.
    pub fn udp_recv(&mut self, h: SocketHandle) -> Result<(SocketAddrV4, Payload), IfaceError> {
        let u = self.sockets.udp_mut(h)?;
        u.rx.pop_front().ok_or(IfaceError::WouldBlock)
    }

    /// Sends `p` as one datagram to `dst` (transmitted at the next poll).
    pub fn udp_send(
        &mut self,
        h: SocketHandle,
        dst: SocketAddrV4,
        p: &Payload,
        now: u64,
    ) -> Result<(), IfaceError> {
        let port = self.sockets.udp_mut(h)?.port;
        let inner = &mut self.inner;
        if p.len() + IP_LEN + 8 > inner.cfg.mtu {
            return Err(IfaceError::TooLarge);
        }
        let udp = UdpRepr {
            src_port: port,
            dst_port: dst.port(),
            len: (8 + p.len()) as u16,
        };
        let mut l4 = [0u8; 8];
        udp.emit_header(&mut l4);
        let src = inner.cfg.ip;
        let csum_at = if inner.cfg.tx_csum_offload {
            wire::udp::fill_pseudo_checksum(&mut l4, src, *dst.ip(), udp.len);
            Some(wire::udp::CHECKSUM_OFFSET as u16)
        } else {
            let sum = p.chunks().fold(0, checksum::sum);
            wire::udp::fill_checksum(&mut l4, src, *dst.ip(), sum);
            None
        };
        inner.send_ip(
            now,
            *dst.ip(),
            wire::ipv4::protocol::UDP,
            &l4,
            std::slice::from_ref(p),
            csum_at,
            None,
        )
    }
}
