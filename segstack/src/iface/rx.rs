//! RX: a harvested segment is parsed in place (headers are read into a
//! small buffer) and demultiplexed; the payload handed to a socket is a
//! [`Payload`] naming bytes inside that same segment.

use std::net::SocketAddrV4;

use hicamp::Segment;
use nicdma::meta::{F_DATA_VALID, F_NEEDS_CSUM};
use nicdma::{DmaMeta, Port};

use super::socket_set::{Sock, SocketHandle, TcpSock};
use super::{Interface, ETH_LEN, MAX_HDRS};
use crate::tcp::{State, TcpSocket};
use crate::wire::{
    self, checksum, ethernet, ArpOp, ArpRepr, EthernetRepr, IcmpRepr, Ipv4Repr, TcpRepr, UdpRepr,
};
use crate::Payload;

/// Bytes read at once from the start of a received segment: the metadata,
/// the headroom up to the usual frame offset (62) and the longest headers.
const HEAD_READ: usize = 64 + MAX_HDRS;

impl<P: Port> Interface<P> {
    /// Processes `seg` (a frame segment with [`DmaMeta`] in front, as the
    /// NIC deposits it) as if it had just been received: for tests and the
    /// ingress fuzz target. Whatever it holds is parsed, counted, and either
    /// delivered or dropped; nothing panics.
    pub fn inject(&mut self, now: u64, seg: &Segment) {
        self.ingress(now, seg);
    }

    pub(super) fn ingress(&mut self, now: u64, seg: &Segment) {
        self.inner.stats.rx_frames += 1;
        // One read for the metadata and the headers when the frame starts
        // where the NIC deposits it (one walk of the segment, not two).
        let mut head = [0u8; HEAD_READ];
        let got = seg.read_at(0, &mut head).unwrap_or(0);
        let Ok(meta) = DmaMeta::parse(&head[..got], seg.len()) else {
            self.inner.stats.rx_malformed += 1;
            return;
        };
        let base = u64::from(meta.frame_off);
        let flen = meta.frame_len as usize;
        let mut hdrs = [0u8; MAX_HDRS];
        let hn = flen.min(MAX_HDRS);
        let start = base as usize;
        if start + hn <= got {
            hdrs[..hn].copy_from_slice(&head[start..start + hn]);
        } else if seg.read_at(base, &mut hdrs[..hn]).is_err() {
            self.inner.stats.rx_malformed += 1;
            return;
        }
        let hdrs = &hdrs[..hn];
        let Ok(eth) = EthernetRepr::parse(hdrs) else {
            self.inner.stats.rx_malformed += 1;
            return;
        };
        if eth.dst != self.inner.cfg.mac && !eth.dst.is_broadcast() {
            self.inner.stats.rx_ignored += 1;
            return;
        }
        match eth.ethertype {
            ethernet::ethertype::ARP => self.ingress_arp(now, &hdrs[ETH_LEN..]),
            ethernet::ethertype::IPV4 => {
                let trusted = meta.vnet.flags & (F_NEEDS_CSUM | F_DATA_VALID) != 0;
                self.ingress_ipv4(now, seg, base, flen, hdrs, trusted)
            }
            _ => self.inner.stats.rx_ignored += 1,
        }
    }

    fn ingress_arp(&mut self, now: u64, b: &[u8]) {
        let Ok(arp) = ArpRepr::parse(b) else {
            self.inner.stats.rx_malformed += 1;
            return;
        };
        if arp.target_ip != self.inner.cfg.ip {
            self.inner.stats.rx_ignored += 1;
            return;
        }
        self.inner.learn(arp.sender_ip, arp.sender_hw, now);
        if arp.op == ArpOp::Request {
            let reply = ArpRepr {
                op: ArpOp::Reply,
                sender_hw: self.inner.cfg.mac,
                sender_ip: self.inner.cfg.ip,
                target_hw: arp.sender_hw,
                target_ip: arp.sender_ip,
            };
            if self.inner.send_arp(arp.sender_hw, &reply).is_err() {
                self.inner.stats.tx_dropped += 1;
            }
        }
    }

    fn ingress_ipv4(
        &mut self,
        now: u64,
        seg: &Segment,
        base: u64,
        flen: usize,
        hdrs: &[u8],
        trusted: bool,
    ) {
        let ipb = &hdrs[ETH_LEN..];
        let (ip, ihl) = match Ipv4Repr::parse_header(ipb, flen.saturating_sub(ETH_LEN)) {
            Ok(v) => v,
            Err(wire::WireError::Unsupported) => {
                self.inner.stats.rx_ignored += 1;
                return;
            }
            Err(wire::WireError::Checksum) => {
                self.inner.stats.rx_bad_csum += 1;
                return;
            }
            Err(_) => {
                self.inner.stats.rx_malformed += 1;
                return;
            }
        };
        if ip.dst != self.inner.cfg.ip {
            self.inner.stats.rx_ignored += 1;
            return;
        }
        let l4_off = ETH_LEN + ihl;
        let l4_len = ip.payload_len;
        let l4 = Payload::new(seg.clone(), base + l4_off as u64, l4_len);
        let verify = !trusted && self.inner.cfg.rx_verify_csum;
        let l4h = &hdrs[l4_off.min(hdrs.len())..];
        match ip.protocol {
            wire::ipv4::protocol::ICMP => self.ingress_icmp(now, &ip, l4h, l4, verify),
            wire::ipv4::protocol::UDP => self.ingress_udp(&ip, l4h, l4, verify),
            wire::ipv4::protocol::TCP => self.ingress_tcp(now, &ip, l4h, l4, verify),
            _ => self.inner.stats.rx_ignored += 1,
        }
    }

    fn ingress_icmp(&mut self, now: u64, ip: &Ipv4Repr, h: &[u8], msg: Payload, verify: bool) {
        let Ok(icmp) = IcmpRepr::parse(h) else {
            self.inner.stats.rx_malformed += 1;
            return;
        };
        let data = msg.slice(wire::icmp::HEADER_LEN.min(msg.len()), msg.len());
        // One pass over the data serves the check and the reply's checksum.
        let mut acc = checksum::Accumulator::new();
        data.chunks().for_each(|c| acc.add(c));
        let data_sum = acc.sum();
        if verify {
            let mut full = checksum::Accumulator::with_sum(data_sum);
            full.add(&h[..wire::icmp::HEADER_LEN.min(h.len())]);
            if !full.verifies() {
                self.inner.stats.rx_bad_csum += 1;
                return;
            }
        }
        if let IcmpRepr::EchoRequest { ident, seq_no } = icmp {
            let reply = IcmpRepr::EchoReply { ident, seq_no };
            let mut hb = [0u8; 8];
            reply.emit(&mut hb, data_sum);
            self.inner.stats.echo_replies += 1;
            if self
                .inner
                .send_ip(
                    now,
                    ip.src,
                    wire::ipv4::protocol::ICMP,
                    &hb,
                    &[data],
                    None,
                    None,
                )
                .is_err()
            {
                self.inner.stats.tx_dropped += 1;
            }
        }
    }

    fn ingress_udp(&mut self, ip: &Ipv4Repr, h: &[u8], dgram: Payload, verify: bool) {
        let Ok(udp) = UdpRepr::parse_header(h, dgram.len()) else {
            self.inner.stats.rx_malformed += 1;
            return;
        };
        let len = usize::from(udp.len);
        let data = dgram.slice(wire::udp::HEADER_LEN, len);
        if verify
            && wire::udp::verify(ip.src, ip.dst, &h[..wire::udp::HEADER_LEN], data.chunks())
                .is_err()
        {
            self.inner.stats.rx_bad_csum += 1;
            return;
        }
        let Some(&hd) = self.sockets.udp_ports.get(&udp.dst_port) else {
            self.inner.stats.rx_no_socket += 1;
            return;
        };
        let cap = self.inner.cfg.udp_queue;
        if let Some(Sock::Udp(u)) = self.sockets.get_mut(hd) {
            if u.rx.len() < cap {
                self.inner.stats.rx_payload_bytes += data.len() as u64;
                u.rx.push_back((SocketAddrV4::new(ip.src, udp.src_port), data));
            } else {
                self.inner.stats.rx_no_socket += 1;
            }
        }
    }

    fn ingress_tcp(&mut self, now: u64, ip: &Ipv4Repr, h: &[u8], seg: Payload, verify: bool) {
        let Ok((tcp, thl)) = TcpRepr::parse(h) else {
            self.inner.stats.rx_malformed += 1;
            return;
        };
        if verify && wire::tcp::verify(ip.src, ip.dst, &[], seg.chunks()).is_err() {
            self.inner.stats.rx_bad_csum += 1;
            return;
        }
        if thl > seg.len() {
            self.inner.stats.rx_malformed += 1;
            return;
        }
        let payload = seg.slice(thl, seg.len());
        let local = SocketAddrV4::new(ip.dst, tcp.dst_port);
        let remote = SocketAddrV4::new(ip.src, tcp.src_port);
        if let Some(&hd) = self.sockets.tcp_demux.get(&(local, remote)) {
            if let Some(Sock::Tcp(t)) = self.sockets.get_mut(hd) {
                self.inner.stats.rx_payload_bytes += payload.len() as u64;
                t.sock.process(now, &tcp, payload);
                return;
            }
        }
        let is_syn = tcp.flags.contains(wire::TcpFlags::SYN)
            && !tcp.flags.contains(wire::TcpFlags::ACK)
            && !tcp.flags.contains(wire::TcpFlags::RST);
        if is_syn {
            if let Some(&lh) = self.sockets.listeners.get(&tcp.dst_port) {
                let full = match self.sockets.listener_mut(lh) {
                    Some(l) => l.ready.len() + l.embryonic >= l.backlog,
                    None => true,
                };
                if full {
                    if self.inner.cfg.syn_cookies {
                        self.send_cookie(now, lh, local, remote, &tcp);
                    } else {
                        self.inner.stats.rx_backlog_full += 1;
                    }
                    return;
                }
                let iss = self.inner.iss(local, remote, now);
                if let Some(sock) =
                    TcpSocket::accept(self.inner.cfg.tcp.clone(), local, remote, &tcp, iss, now)
                {
                    self.sockets.insert_tcp(TcpSock::new(sock, Some(lh)));
                    if let Some(l) = self.sockets.listener_mut(lh) {
                        l.embryonic += 1;
                    }
                }
                return;
            }
        }
        let is_ack = tcp.flags.contains(wire::TcpFlags::ACK)
            && !tcp.flags.contains(wire::TcpFlags::SYN)
            && !tcp.flags.contains(wire::TcpFlags::RST);
        if is_ack {
            if let Some(&lh) = self.sockets.listeners.get(&tcp.dst_port) {
                if self.accept_cookie(now, lh, local, remote, &tcp, &payload) {
                    return;
                }
            }
        }
        self.inner.stats.rx_no_socket += 1;
        if !self.inner.cfg.rst_unknown {
            return;
        }
        // `reply_rst` swaps the ports.
        if let Some(rst) = crate::tcp::reply_rst(&tcp, payload.len()) {
            if self
                .inner
                .send_tcp(now, local, remote, &rst, &[], None)
                .is_err()
            {
                self.inner.stats.tx_dropped += 1;
            }
        }
    }

    /// Answers a SYN to a full listener with a SYN cookie: a SYN-ACK whose
    /// sequence number encodes the connection (MSS, no window scaling,
    /// timestamps or SACK), no state kept. The SYN-ACK is the one a socket
    /// made from the SYN would send, so the socket made when the cookie
    /// comes back agrees with it.
    fn send_cookie(
        &mut self,
        now: u64,
        lh: SocketHandle,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        syn: &TcpRepr,
    ) {
        let Some(l) = self.sockets.listener_mut(lh) else {
            return;
        };
        let (cookie, mss) = l.cookies.encode(local, remote, syn.seq, syn.mss, now);
        l.cookie_sent_at = Some(now);
        let Some(mut sock) = TcpSocket::accept(
            self.inner.cfg.tcp.clone(),
            local,
            remote,
            &cookie_syn(syn, mss),
            cookie,
            now,
        ) else {
            return;
        };
        self.inner.stats.syn_cookies_sent += 1;
        let inner = &mut self.inner;
        let mut sent = false;
        sock.dispatch(now, &mut |repr, payload, gso| {
            if sent {
                return false;
            }
            sent = true;
            if inner
                .send_tcp(now, local, remote, repr, payload, gso)
                .is_err()
            {
                inner.stats.tx_dropped += 1;
            }
            true
        });
    }

    /// Opens a connection from an ACK that returns a valid SYN cookie of
    /// listener `lh` (whose accept queue has room). True if it did.
    fn accept_cookie(
        &mut self,
        now: u64,
        lh: SocketHandle,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        ack: &TcpRepr,
        payload: &Payload,
    ) -> bool {
        let Some(l) = self.sockets.listener_mut(lh) else {
            return false;
        };
        let recent = l.cookie_sent_at.is_some_and(|t| {
            now.saturating_sub(t)
                <= (crate::tcp::cookie::COOKIE_MAX_AGE + 1) * crate::tcp::cookie::COOKIE_PERIOD_NS
        });
        if !recent || l.ready.len() >= l.backlog {
            return false;
        }
        let (iss, irs) = (ack.ack.wrapping_sub(1), ack.seq.wrapping_sub(1));
        let Some(mss) = l.cookies.decode(local, remote, irs, iss, now) else {
            return false;
        };
        let syn = TcpRepr {
            src_port: remote.port(),
            dst_port: local.port(),
            seq: irs,
            ack: 0,
            flags: wire::TcpFlags::SYN,
            window: ack.window,
            urgent: 0,
            mss: Some(mss),
            wscale: None,
            sack_permitted: false,
            timestamp: None,
        };
        let Some(mut sock) =
            TcpSocket::accept(self.inner.cfg.tcp.clone(), local, remote, &syn, iss, now)
        else {
            return false;
        };
        // The SYN-ACK went out when the cookie was made: let the socket
        // emit it again into nothing, so it knows what it said.
        let mut once = false;
        sock.dispatch(now, &mut |_, _, _| !std::mem::replace(&mut once, true));
        self.inner.stats.rx_payload_bytes += payload.len() as u64;
        sock.process(now, ack, payload.clone());
        if !matches!(
            sock.state(),
            State::Established | State::CloseWait | State::FinWait1
        ) {
            return false;
        }
        self.inner.stats.syn_cookies_accepted += 1;
        self.sockets.insert_tcp(TcpSock::new(sock, Some(lh)));
        if let Some(l) = self.sockets.listener_mut(lh) {
            // Counted as in the handshake until the next poll moves it to
            // the accept queue.
            l.embryonic += 1;
        }
        true
    }
}

/// The SYN a cookie SYN-ACK answers: the peer's, with the cookie's MSS and
/// without the options a cookie does not carry.
fn cookie_syn(syn: &TcpRepr, mss: u16) -> TcpRepr {
    TcpRepr {
        mss: Some(mss),
        wscale: None,
        sack_permitted: false,
        timestamp: None,
        ..*syn
    }
}
