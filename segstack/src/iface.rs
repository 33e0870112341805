//! The interface: one IPv4 address on one nicdma port, with an ARP cache, a
//! subnet and a default gateway, ICMP echo, and UDP and TCP sockets, driven in
//! batches by [`Interface::poll`].
//!
//! ## TX (seed 004, figures 3 and 4)
//! A socket hands out payload slices (snapshots of the application's
//! segments). The interface writes the Ethernet, IPv4 and TCP/UDP headers and
//! the NIC metadata into *headroom* in front of the payload and splices the
//! payload's own lines behind it ([`hicamp::Memory::splice`]): the headroom is
//! sized so that the payload lands on the same offset within a line as in the
//! application's segment, so every whole payload line is shared, not copied.
//! Checksums and segmentation are left to the NIC (virtio-net offload
//! metadata), so the stack never even reads the payload on TX.
//!
//! ## RX (section 3.3)
//! A harvested RX segment is parsed in place (headers are read into a small
//! buffer); the payload handed to sockets is a [`Payload`] naming the bytes
//! inside that same segment.
//!
//! ## Batching (PASTE)
//! One [`Interface::poll`] runs the device, processes every received frame,
//! runs every socket's timers and output, rings one doorbell, and returns the
//! sockets with something to report.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, SocketAddrV4};

use hicamp::{Memory, Piece, Segment};
use nicdma::meta::{gso, F_DATA_VALID, F_NEEDS_CSUM};
use nicdma::{DmaMeta, Nic, NicConfig, NicError, Port, VirtioNetHdr, META_LEN};

use crate::Payload;
use crate::tcp::{State, TcpConfig, TcpError, TcpSocket};
use crate::wire::{
    self, checksum, ethernet, ArpOp, ArpRepr, EthernetAddress, EthernetRepr, IcmpRepr, Ipv4Repr,
    TcpRepr, UdpRepr,
};

const ETH_LEN: usize = ethernet::HEADER_LEN;
const IP_LEN: usize = 20;
/// Most entries in the ARP table.
const MAX_NEIGHBOURS: usize = 4096;
/// Enough for Ethernet + IPv4 with options + TCP with options.
const MAX_HDRS: usize = ETH_LEN + 60 + 60;

/// Errors of the interface.
#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    /// The NIC failed.
    #[error("nic: {0}")]
    Nic(#[from] NicError),
    /// The memory refused (capacity).
    #[error("memory: {0}")]
    Memory(#[from] hicamp::Error),
    /// No such socket, or a socket of another kind.
    #[error("bad socket handle")]
    BadHandle,
    /// The port is already bound or listened on.
    #[error("address in use")]
    AddrInUse,
    /// No free ephemeral port.
    #[error("no free local port")]
    NoPorts,
    /// A TCP socket error.
    #[error("tcp: {0}")]
    Tcp(#[from] TcpError),
    /// The datagram does not fit in one frame.
    #[error("datagram too large")]
    TooLarge,
    /// Nothing to receive right now, or no room to send.
    #[error("would block")]
    WouldBlock,
}

/// Configuration of an interface.
#[derive(Debug, Clone)]
pub struct IfaceConfig {
    /// Our MAC address.
    pub mac: EthernetAddress,
    /// Our IPv4 address.
    pub ip: Ipv4Addr,
    /// The subnet's prefix length.
    pub prefix_len: u8,
    /// Where packets outside the subnet go.
    pub gateway: Option<Ipv4Addr>,
    /// IP MTU of the link.
    pub mtu: usize,
    /// Ask the NIC to complete TCP/UDP checksums (else the stack computes
    /// them, reading the payload).
    pub tx_csum_offload: bool,
    /// Verify checksums of received frames the port has not vouched for.
    pub rx_verify_csum: bool,
    /// TCP settings for every connection.
    pub tcp: TcpConfig,
    /// Connections a listener holds before its application accepts them.
    pub backlog: usize,
    /// Datagrams a UDP socket queues before dropping.
    pub udp_queue: usize,
    /// How long an ARP entry lives.
    pub arp_ttl_ns: u64,
    /// Interval between ARP requests for one address.
    pub arp_retry_ns: u64,
    /// Frames held per unresolved neighbour.
    pub arp_queue: usize,
    /// Seeds initial sequence numbers and ephemeral ports.
    pub seed: u64,
    /// The NIC's rings.
    pub nic: NicConfig,
}

impl IfaceConfig {
    /// A configuration for `mac` and `ip/prefix_len` with defaults.
    pub fn new(mac: [u8; 6], ip: Ipv4Addr, prefix_len: u8) -> IfaceConfig {
        IfaceConfig {
            mac: EthernetAddress(mac),
            ip,
            prefix_len,
            gateway: None,
            mtu: 1500,
            tx_csum_offload: true,
            rx_verify_csum: true,
            // TCP hands the NIC segments of up to 64 KiB (TSO); 0 turns it off.
            tcp: TcpConfig {
                tso_max: 65_536 - 256,
                ..TcpConfig::default()
            },
            backlog: 1024,
            udp_queue: 1024,
            arp_ttl_ns: 60_000_000_000,
            arp_retry_ns: 200_000_000,
            arp_queue: 64,
            seed: 0x5e65_7ac4,
            nic: NicConfig {
                tx_slots: 1024,
                rx_slots: 1024,
                // Ethernet + IPv4 + TCP with timestamps is 66 bytes: with the
                // frame at 2 * 64 - 66 a typical TCP payload starts on a line.
                rx_frame_off: 62,
                tx_batch: 256,
                rx_batch: 256,
            },
        }
    }
}

/// What the interface did, in total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IfaceStats {
    /// Frames received.
    pub rx_frames: u64,
    /// Frames dropped as malformed (truncated, bad fields, bad metadata).
    pub rx_malformed: u64,
    /// Frames dropped for a bad checksum.
    pub rx_bad_csum: u64,
    /// Frames not for us (other MAC or IP, unsupported protocol).
    pub rx_ignored: u64,
    /// TCP segments or UDP datagrams that matched no socket.
    pub rx_no_socket: u64,
    /// SYNs dropped because the listener's backlog was full.
    pub rx_backlog_full: u64,
    /// Frames transmitted (handed to the TX ring).
    pub tx_frames: u64,
    /// Frames dropped at TX (unresolved neighbour queue full, build error).
    pub tx_dropped: u64,
    /// ARP requests sent.
    pub arp_requests: u64,
    /// ICMP echo requests answered.
    pub echo_replies: u64,
    /// Payload bytes put into TX frames.
    pub tx_payload_bytes: u64,
    /// Of those, bytes carried by shared (reused) lines.
    pub tx_payload_shared: u64,
    /// Of those, bytes the stack copied into new lines (partial lines whose
    /// offset did not line up with their place behind the headers).
    pub tx_payload_copied: u64,
    /// Payload bytes delivered to sockets (as segment snapshots: no copy).
    pub rx_payload_bytes: u64,
}

/// A socket of an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketHandle(pub usize);

/// One socket's news from a [`Interface::poll`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// The socket.
    pub handle: SocketHandle,
    /// Data (or a connection to accept, or EOF) is waiting.
    pub readable: bool,
    /// Room to send opened up after a send would have blocked.
    pub writable: bool,
    /// The connection is over (reset, timed out, or fully closed).
    pub closed: bool,
}

#[derive(Debug)]
struct TcpSock {
    sock: TcpSocket,
    /// The listener it came from, while the handshake runs.
    listener: Option<SocketHandle>,
    /// In a listener's accept queue, not yet accepted.
    queued: bool,
    want_write: bool,
    /// The application gave it up: free it once TCP is done.
    released: bool,
    reported_closed: bool,
}

#[derive(Debug)]
struct Listener {
    port: u16,
    backlog: usize,
    /// Established connections not yet accepted.
    ready: VecDeque<SocketHandle>,
    /// Connections in the handshake.
    embryonic: usize,
}

#[derive(Debug)]
struct UdpSock {
    port: u16,
    rx: VecDeque<(SocketAddrV4, Payload)>,
}

#[derive(Debug)]
enum Sock {
    Tcp(Box<TcpSock>),
    Listener(Listener),
    Udp(UdpSock),
}

#[derive(Debug, Default)]
struct Neighbour {
    mac: Option<EthernetAddress>,
    expires: u64,
    last_request: Option<u64>,
    /// Frames waiting for the address (their destination MAC is patched in).
    waiting: Vec<Segment>,
}

/// A TCP segment a socket emitted, waiting to be built into a frame.
type Emitted = (TcpRepr, Vec<Payload>, Option<u16>);

/// An IPv4 interface over a NIC.
pub struct Interface<P: Port> {
    nic: Nic<P>,
    mem: Memory,
    cfg: IfaceConfig,
    sockets: Vec<Option<Sock>>,
    free: Vec<usize>,
    tcp_demux: HashMap<(SocketAddrV4, SocketAddrV4), SocketHandle>,
    listeners: HashMap<u16, SocketHandle>,
    udp_ports: HashMap<u16, SocketHandle>,
    neighbours: HashMap<Ipv4Addr, Neighbour>,
    /// Built frames waiting for room in the TX ring.
    txq: VecDeque<Segment>,
    rx: Vec<Segment>,
    emitted: Vec<Emitted>,
    events: Vec<Event>,
    stats: IfaceStats,
    ident: u16,
    next_port: u16,
    secret: (u64, u64),
}

impl<P: Port> std::fmt::Debug for Interface<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interface")
            .field("ip", &self.cfg.ip)
            .field("nic", &self.nic)
            .field("sockets", &(self.sockets.len() - self.free.len()))
            .finish_non_exhaustive()
    }
}

impl<P: Port> Interface<P> {
    /// An interface on a new NIC over `port`.
    pub fn new(mem: &Memory, port: P, mut cfg: IfaceConfig) -> Result<Interface<P>, IfaceError> {
        let nic = Nic::new(mem, port, cfg.nic)?;
        cfg.tcp.line_size = mem.line_size();
        let mss_cap = cfg.mtu.saturating_sub(IP_LEN + 20).clamp(536, 65_495) as u16;
        cfg.tcp.mss = cfg.tcp.mss.min(mss_cap);
        let h = std::collections::hash_map::RandomState::new();
        let mut a = h.build_hasher();
        a.write_u64(cfg.seed);
        let mut b = h.build_hasher();
        b.write_u64(!cfg.seed);
        let secret = (a.finish(), b.finish());
        Ok(Interface {
            nic,
            mem: mem.clone(),
            next_port: 49_152 + (secret.0 % 16_000) as u16,
            cfg,
            sockets: Vec::new(),
            free: Vec::new(),
            tcp_demux: HashMap::new(),
            listeners: HashMap::new(),
            udp_ports: HashMap::new(),
            neighbours: HashMap::new(),
            txq: VecDeque::new(),
            rx: Vec::new(),
            emitted: Vec::new(),
            events: Vec::new(),
            stats: IfaceStats::default(),
            ident: (secret.1 & 0xffff) as u16,
            secret,
        })
    }

    /// The configuration (with the TCP settings the interface derived).
    pub fn config(&self) -> &IfaceConfig {
        &self.cfg
    }

    /// The memory packets live in.
    pub fn memory(&self) -> &Memory {
        &self.mem
    }

    /// The NIC.
    pub fn nic(&self) -> &Nic<P> {
        &self.nic
    }

    /// The NIC, mutably (e.g. to reach the port).
    pub fn nic_mut(&mut self) -> &mut Nic<P> {
        &mut self.nic
    }

    /// The counters.
    pub fn stats(&self) -> &IfaceStats {
        &self.stats
    }

    /// Adds `mac` for `ip` to the ARP cache (static until it expires).
    pub fn add_neighbour(&mut self, ip: Ipv4Addr, mac: [u8; 6], now: u64) {
        self.learn(ip, EthernetAddress(mac), now);
    }

    // ---- sockets -------------------------------------------------------------

    fn insert(&mut self, s: Sock) -> SocketHandle {
        match self.free.pop() {
            Some(i) => {
                self.sockets[i] = Some(s);
                SocketHandle(i)
            }
            None => {
                self.sockets.push(Some(s));
                SocketHandle(self.sockets.len() - 1)
            }
        }
    }

    fn tcp_mut(&mut self, h: SocketHandle) -> Result<&mut TcpSock, IfaceError> {
        match self.sockets.get_mut(h.0) {
            Some(Some(Sock::Tcp(t))) => Ok(t),
            _ => Err(IfaceError::BadHandle),
        }
    }

    /// The TCP socket behind `h` (for its state, queues and statistics).
    pub fn tcp(&self, h: SocketHandle) -> Result<&TcpSocket, IfaceError> {
        match self.sockets.get(h.0) {
            Some(Some(Sock::Tcp(t))) => Ok(&t.sock),
            _ => Err(IfaceError::BadHandle),
        }
    }

    /// Listens for TCP connections on `port`.
    pub fn tcp_listen(&mut self, port: u16) -> Result<SocketHandle, IfaceError> {
        if self.listeners.contains_key(&port) {
            return Err(IfaceError::AddrInUse);
        }
        let backlog = self.cfg.backlog;
        let h = self.insert(Sock::Listener(Listener {
            port,
            backlog,
            ready: VecDeque::new(),
            embryonic: 0,
        }));
        self.listeners.insert(port, h);
        Ok(h)
    }

    /// Takes the next established connection of a listener, if any.
    pub fn tcp_accept(
        &mut self,
        listener: SocketHandle,
    ) -> Result<Option<SocketHandle>, IfaceError> {
        let Some(Some(Sock::Listener(l))) = self.sockets.get_mut(listener.0) else {
            return Err(IfaceError::BadHandle);
        };
        let Some(h) = l.ready.pop_front() else {
            return Ok(None);
        };
        self.tcp_mut(h)?.queued = false;
        Ok(Some(h))
    }

    /// Opens a TCP connection to `remote` (the SYN leaves at the next poll).
    pub fn tcp_connect(
        &mut self,
        remote: SocketAddrV4,
        now: u64,
    ) -> Result<SocketHandle, IfaceError> {
        let local = self.free_local(remote)?;
        let iss = self.iss(local, remote, now);
        let sock = TcpSocket::connect(self.cfg.tcp.clone(), local, remote, iss, now);
        let h = self.insert(Sock::Tcp(Box::new(TcpSock {
            sock,
            listener: None,
            queued: false,
            want_write: false,
            released: false,
            reported_closed: false,
        })));
        self.tcp_demux.insert((local, remote), h);
        Ok(h)
    }

    fn free_local(&mut self, remote: SocketAddrV4) -> Result<SocketAddrV4, IfaceError> {
        for _ in 0..16_384 {
            let p = self.next_port;
            self.next_port = if p == u16::MAX { 49_152 } else { p + 1 };
            let local = SocketAddrV4::new(self.cfg.ip, p);
            if !self.tcp_demux.contains_key(&(local, remote)) && !self.listeners.contains_key(&p) {
                return Ok(local);
            }
        }
        Err(IfaceError::NoPorts)
    }

    /// RFC 6528: a keyed hash of the 4-tuple plus a 4 µs clock.
    fn iss(&self, local: SocketAddrV4, remote: SocketAddrV4, now: u64) -> u32 {
        let mut h = std::hash::DefaultHasher::new();
        h.write_u64(self.secret.0);
        h.write_u32(u32::from(*local.ip()));
        h.write_u16(local.port());
        h.write_u32(u32::from(*remote.ip()));
        h.write_u16(remote.port());
        h.write_u64(self.secret.1);
        (h.finish() as u32).wrapping_add((now / 4_000) as u32)
    }

    /// Queues `p` on a TCP connection without copying it (a snapshot).
    /// Returns the bytes taken (a prefix when the send buffer is short).
    pub fn send(&mut self, h: SocketHandle, p: Payload) -> Result<usize, IfaceError> {
        let t = self.tcp_mut(h)?;
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
        let mem = self.mem.clone();
        let t = self.tcp_mut(h)?;
        match t.sock.send_slice(&mem, data) {
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
        match self.tcp_mut(h)?.sock.recv(max) {
            Err(TcpError::WouldBlock) => Err(IfaceError::WouldBlock),
            Err(TcpError::Finished) => Ok(Vec::new()),
            r => Ok(r?),
        }
    }

    /// Copies received bytes into `buf` (the byte API); 0 at end of stream.
    pub fn recv_slice(&mut self, h: SocketHandle, buf: &mut [u8]) -> Result<usize, IfaceError> {
        match self.tcp_mut(h)?.sock.recv_slice(buf) {
            Err(TcpError::WouldBlock) => Err(IfaceError::WouldBlock),
            Err(TcpError::Finished) => Ok(0),
            r => Ok(r?),
        }
    }

    /// Half-closes a connection: FIN after the queued data.
    pub fn shutdown(&mut self, h: SocketHandle) -> Result<(), IfaceError> {
        self.tcp_mut(h)?.sock.close();
        Ok(())
    }

    /// Resets a connection.
    pub fn abort(&mut self, h: SocketHandle) -> Result<(), IfaceError> {
        self.tcp_mut(h)?.sock.abort();
        Ok(())
    }

    /// Gives up a socket: a TCP connection is closed gracefully (FIN) and
    /// freed when TCP is done with it; listeners and UDP sockets go at once.
    pub fn close(&mut self, h: SocketHandle) -> Result<(), IfaceError> {
        match self.sockets.get_mut(h.0) {
            Some(Some(Sock::Tcp(t))) => {
                t.sock.close();
                t.released = true;
                Ok(())
            }
            Some(Some(Sock::Listener(l))) => {
                let port = l.port;
                let pending: Vec<SocketHandle> = l.ready.drain(..).collect();
                self.listeners.remove(&port);
                for p in pending {
                    if let Ok(t) = self.tcp_mut(p) {
                        t.sock.abort();
                        t.released = true;
                    }
                }
                // Connections still in the handshake are reset too.
                for s in self.sockets.iter_mut().flatten() {
                    if let Sock::Tcp(t) = s {
                        if t.listener == Some(h) {
                            t.sock.abort();
                            t.released = true;
                            t.listener = None;
                        }
                    }
                }
                self.sockets[h.0] = None;
                self.free.push(h.0);
                Ok(())
            }
            Some(Some(Sock::Udp(u))) => {
                let port = u.port;
                self.udp_ports.remove(&port);
                self.sockets[h.0] = None;
                self.free.push(h.0);
                Ok(())
            }
            _ => Err(IfaceError::BadHandle),
        }
    }

    /// Binds a UDP socket to `port`.
    pub fn udp_bind(&mut self, port: u16) -> Result<SocketHandle, IfaceError> {
        if self.udp_ports.contains_key(&port) {
            return Err(IfaceError::AddrInUse);
        }
        let h = self.insert(Sock::Udp(UdpSock {
            port,
            rx: VecDeque::new(),
        }));
        self.udp_ports.insert(port, h);
        Ok(h)
    }

    /// The next datagram of a UDP socket: its sender and payload snapshot.
    pub fn udp_recv(&mut self, h: SocketHandle) -> Result<(SocketAddrV4, Payload), IfaceError> {
        match self.sockets.get_mut(h.0) {
            Some(Some(Sock::Udp(u))) => u.rx.pop_front().ok_or(IfaceError::WouldBlock),
            _ => Err(IfaceError::BadHandle),
        }
    }

    /// Sends `p` as one datagram to `dst` (transmitted at the next poll).
    pub fn udp_send(
        &mut self,
        h: SocketHandle,
        dst: SocketAddrV4,
        p: &Payload,
        now: u64,
    ) -> Result<(), IfaceError> {
        let port = match self.sockets.get(h.0) {
            Some(Some(Sock::Udp(u))) => u.port,
            _ => return Err(IfaceError::BadHandle),
        };
        if p.len() + IP_LEN + 8 > self.cfg.mtu {
            return Err(IfaceError::TooLarge);
        }
        let udp = UdpRepr {
            src_port: port,
            dst_port: dst.port(),
            len: (8 + p.len()) as u16,
        };
        let mut l4 = [0u8; 8];
        udp.emit_header(&mut l4);
        let src = self.cfg.ip;
        let csum_at = if self.cfg.tx_csum_offload {
            wire::udp::fill_pseudo_checksum(&mut l4, src, *dst.ip(), udp.len);
            Some(wire::udp::CHECKSUM_OFFSET as u16)
        } else {
            let sum = p.chunks().fold(0, checksum::sum);
            wire::udp::fill_checksum(&mut l4, src, *dst.ip(), sum);
            None
        };
        self.send_ip(
            now,
            *dst.ip(),
            wire::ipv4::protocol::UDP,
            &l4,
            std::slice::from_ref(p),
            csum_at,
            None,
        )
    }

    // ---- the poll loop ---------------------------------------------------------

    /// One batch: run the device, process every received frame, run every
    /// socket's timers and output, transmit with one doorbell. Returns the
    /// sockets with news (readable, writable after back-pressure, closed).
    pub fn poll(&mut self, now: u64) -> Result<&[Event], IfaceError> {
        self.nic.rx_refill()?;
        self.nic.dma()?;
        self.nic.tx_reap()?;
        let mut rx = std::mem::take(&mut self.rx);
        loop {
            rx.clear();
            if self.nic.rx_harvest(&mut rx, 256)? == 0 {
                break;
            }
            for seg in rx.drain(..) {
                self.ingress(now, &seg);
            }
            self.nic.rx_refill()?;
            self.nic.dma()?;
        }
        self.rx = rx;
        self.nic.ack();
        self.egress(now)?;
        self.flush()?;
        self.collect_events();
        Ok(&self.events)
    }

    /// When the next poll is due for timers (absolute ns), if any.
    pub fn poll_at(&self) -> Option<u64> {
        let mut at = None::<u64>;
        for s in self.sockets.iter().flatten() {
            if let Sock::Tcp(t) = s {
                if let Some(p) = t.sock.poll_at() {
                    at = Some(at.map_or(p, |a| a.min(p)));
                }
            }
        }
        if !self.txq.is_empty() {
            at = Some(0);
        }
        at
    }

    fn collect_events(&mut self) {
        self.events.clear();
        let mut freed = Vec::new();
        for (i, s) in self.sockets.iter_mut().enumerate() {
            // (readable, writable, closed) news of this socket, if any.
            let news = match s {
                Some(Sock::Tcp(t)) => {
                    if t.released {
                        if t.sock.is_closed() {
                            freed.push(i);
                        }
                        continue;
                    }
                    if t.listener.is_some() || t.queued {
                        continue;
                    }
                    let closed = t.sock.state() == State::Closed;
                    let readable = t.sock.can_recv() || !t.sock.may_recv();
                    let writable = t.want_write && t.sock.can_send();
                    t.want_write &= !writable;
                    let closed_news = closed && !t.reported_closed;
                    t.reported_closed |= closed;
                    ((readable && !closed) || writable || closed_news).then_some((
                        readable,
                        writable,
                        closed_news,
                    ))
                }
                Some(Sock::Listener(l)) => (!l.ready.is_empty()).then_some((true, false, false)),
                Some(Sock::Udp(u)) => (!u.rx.is_empty()).then_some((true, false, false)),
                None => None,
            };
            if let Some((readable, writable, closed)) = news {
                self.events.push(Event {
                    handle: SocketHandle(i),
                    readable,
                    writable,
                    closed,
                });
            }
        }
        for i in freed {
            if let Some(Sock::Tcp(t)) = self.sockets[i].take() {
                self.tcp_demux.remove(&(t.sock.local(), t.sock.remote()));
            }
            self.free.push(i);
        }
    }

    /// Runs every TCP socket's output and timers; moves finished handshakes
    /// to their listener's accept queue.
    fn egress(&mut self, now: u64) -> Result<(), IfaceError> {
        let mut established = Vec::new();
        let mut dead = Vec::new();
        for i in 0..self.sockets.len() {
            let Some(Sock::Tcp(t)) = &mut self.sockets[i] else {
                continue;
            };
            let mut out = std::mem::take(&mut self.emitted);
            // Bound the burst by the frames the ring and queue can take.
            let mut budget = (self.nic.tx_room() as usize + 512).saturating_sub(self.txq.len());
            t.sock.dispatch(now, &mut |repr, payload, gso| {
                if budget == 0 {
                    return false;
                }
                budget -= 1;
                out.push((*repr, payload.to_vec(), gso));
                true
            });
            let (local, remote) = (t.sock.local(), t.sock.remote());
            if let Some(l) = t.listener {
                match t.sock.state() {
                    State::Established | State::CloseWait => established.push((l, i)),
                    State::SynReceived => {}
                    _ => dead.push((l, i)),
                }
            }
            for (repr, payload, gso) in out.drain(..) {
                self.send_tcp(now, local, remote, &repr, &payload, gso)?;
            }
            self.emitted = out;
        }
        for (l, i) in established {
            if let Some(Some(Sock::Listener(lst))) = self.sockets.get_mut(l.0) {
                lst.embryonic = lst.embryonic.saturating_sub(1);
                lst.ready.push_back(SocketHandle(i));
            }
            if let Some(Some(Sock::Tcp(t))) = self.sockets.get_mut(i) {
                t.listener = None;
                t.queued = true;
            }
        }
        for (l, i) in dead {
            if let Some(Some(Sock::Listener(lst))) = self.sockets.get_mut(l.0) {
                lst.embryonic = lst.embryonic.saturating_sub(1);
            }
            if let Some(Some(Sock::Tcp(t))) = self.sockets.get_mut(i) {
                t.listener = None;
                t.released = true;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), IfaceError> {
        loop {
            while let Some(seg) = self.txq.front() {
                if !self.nic.tx_prepare(seg)? {
                    break;
                }
                self.txq.pop_front();
                self.stats.tx_frames += 1;
            }
            self.nic.tx_doorbell()?;
            self.nic.dma()?;
            self.nic.tx_reap()?;
            if self.txq.is_empty() || self.nic.tx_room() == 0 {
                break;
            }
        }
        Ok(())
    }

    // ---- TX ------------------------------------------------------------------

    fn send_tcp(
        &mut self,
        now: u64,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        repr: &TcpRepr,
        payload: &[Payload],
        gso_mss: Option<u16>,
    ) -> Result<(), IfaceError> {
        let plen: usize = payload.iter().map(Payload::len).sum();
        let thl = repr.header_len();
        let mut l4 = [0u8; 60];
        repr.emit(&mut l4[..thl]);
        let tcp_len = (thl + plen) as u32;
        let csum_at = if self.cfg.tx_csum_offload {
            wire::tcp::fill_pseudo_checksum(&mut l4[..thl], *local.ip(), *remote.ip(), tcp_len);
            Some(wire::tcp::CHECKSUM_OFFSET as u16)
        } else {
            let mut acc = checksum::Accumulator::new();
            payload
                .iter()
                .flat_map(Payload::chunks)
                .for_each(|c| acc.add(c));
            wire::tcp::fill_checksum(
                &mut l4[..thl],
                *local.ip(),
                *remote.ip(),
                acc.sum(),
                tcp_len,
            );
            None
        };
        let gso = gso_mss.filter(|&m| plen > usize::from(m));
        self.send_ip(
            now,
            *remote.ip(),
            wire::ipv4::protocol::TCP,
            &l4[..thl],
            payload,
            csum_at,
            gso,
        )
    }

    /// Builds one frame: metadata, headroom, Ethernet + IPv4 + `l4` headers,
    /// then the payload's own lines; queues it for the ring (or for ARP).
    #[allow(clippy::too_many_arguments)]
    fn send_ip(
        &mut self,
        now: u64,
        dst: Ipv4Addr,
        protocol: u8,
        l4: &[u8],
        payload: &[Payload],
        csum_at: Option<u16>,
        gso_mss: Option<u16>,
    ) -> Result<(), IfaceError> {
        let plen: usize = payload.iter().map(Payload::len).sum();
        let hop = self.next_hop(dst);
        let mac = self.lookup(hop, now);
        let ip = Ipv4Repr {
            src: self.cfg.ip,
            dst,
            protocol,
            ttl: 64,
            tos: 0,
            ident: self.ident,
            dont_frag: true,
            payload_len: l4.len() + plen,
        };
        self.ident = self.ident.wrapping_add(1);
        let hdr_len = ETH_LEN + IP_LEN + l4.len();
        let mut hdrs = [0u8; MAX_HDRS];
        EthernetRepr {
            dst: mac.unwrap_or(EthernetAddress([0; 6])),
            src: self.cfg.mac,
            ethertype: ethernet::ethertype::IPV4,
        }
        .emit(&mut hdrs[..ETH_LEN]);
        ip.emit(&mut hdrs[ETH_LEN..ETH_LEN + IP_LEN]);
        hdrs[ETH_LEN + IP_LEN..hdr_len].copy_from_slice(l4);
        let mut vnet = VirtioNetHdr::default();
        if let Some(off) = csum_at {
            vnet.flags = F_NEEDS_CSUM;
            vnet.csum_start = (ETH_LEN + IP_LEN) as u16;
            vnet.csum_offset = off;
        }
        if let Some(mss) = gso_mss {
            vnet.gso_type = gso::TCPV4;
            vnet.gso_size = mss;
            vnet.hdr_len = hdr_len as u16;
        }
        let seg = self.frame(vnet, &hdrs[..hdr_len], payload)?;
        self.stats.tx_payload_bytes += plen as u64;
        match mac {
            Some(_) => self.txq.push_back(seg),
            None => {
                let cap = self.cfg.arp_queue;
                let n = self.neighbours.get_mut(&hop).expect("lookup made it");
                if n.waiting.len() < cap {
                    n.waiting.push(seg);
                } else {
                    self.stats.tx_dropped += 1;
                }
            }
        }
        Ok(())
    }

    /// The frame segment: `hdrs` placed so that the first payload byte keeps
    /// its offset within a line, then the payload pieces.
    fn frame(
        &mut self,
        vnet: VirtioNetHdr,
        hdrs: &[u8],
        payload: &[Payload],
    ) -> Result<Segment, IfaceError> {
        let ls = self.mem.line_size();
        let plen: usize = payload.iter().map(Payload::len).sum();
        let want = payload.first().map_or(0, |p| p.offset() as usize % ls);
        // The payload starts at x >= META_LEN + hdrs.len(), x ≡ want (mod ls).
        let min = META_LEN + hdrs.len();
        let x = min + (want + ls - min % ls) % ls;
        let frame_off = x - hdrs.len();
        let meta = DmaMeta {
            vnet,
            frame_off: frame_off as u16,
            frame_len: (hdrs.len() + plen) as u32,
            ..DmaMeta::default()
        };
        let meta = meta.to_bytes();
        let mut pieces = Vec::with_capacity(3 + payload.len());
        pieces.push(Piece::Bytes(&meta));
        pieces.push(Piece::Zeros((frame_off - META_LEN) as u64));
        pieces.push(Piece::Bytes(hdrs));
        for p in payload {
            pieces.push(Piece::Range {
                seg: p.segment(),
                off: p.offset(),
                len: p.len() as u64,
            });
        }
        let (seg, counts) = self.mem.splice(&pieces)?;
        self.stats.tx_payload_shared += counts.shared_bytes;
        self.stats.tx_payload_copied += counts.copied_bytes;
        Ok(seg)
    }

    fn in_subnet(&self, ip: Ipv4Addr) -> bool {
        let bits = u32::from(self.cfg.prefix_len.min(32));
        let mask = if bits == 0 {
            0
        } else {
            u32::MAX << (32 - bits)
        };
        u32::from(ip) & mask == u32::from(self.cfg.ip) & mask
    }

    fn next_hop(&self, dst: Ipv4Addr) -> Ipv4Addr {
        if self.in_subnet(dst) {
            dst
        } else {
            self.cfg.gateway.unwrap_or(dst)
        }
    }

    /// The MAC of `ip`, or None after (rate-limited) asking for it.
    fn lookup(&mut self, ip: Ipv4Addr, now: u64) -> Option<EthernetAddress> {
        let retry = self.cfg.arp_retry_ns;
        self.make_room(ip, now);
        let n = self.neighbours.entry(ip).or_default();
        if n.mac.is_some() && n.expires > now {
            return n.mac;
        }
        // A stale entry keeps working while we ask again.
        let known = n.mac;
        if n.last_request
            .is_none_or(|t| now.saturating_sub(t) >= retry)
        {
            n.last_request = Some(now);
            let req = ArpRepr {
                op: ArpOp::Request,
                sender_hw: self.cfg.mac,
                sender_ip: self.cfg.ip,
                target_hw: EthernetAddress([0; 6]),
                target_ip: ip,
            };
            self.stats.arp_requests += 1;
            if self.send_arp(EthernetAddress::BROADCAST, &req).is_err() {
                self.stats.tx_dropped += 1;
            }
        }
        known
    }

    /// Keeps the neighbour table bounded (peers can make us answer any
    /// address): before adding `ip` to a full table, forget expired and
    /// unresolved entries (their waiting frames are dropped and counted).
    fn make_room(&mut self, ip: Ipv4Addr, now: u64) {
        if self.neighbours.len() < MAX_NEIGHBOURS || self.neighbours.contains_key(&ip) {
            return;
        }
        let mut dropped = 0;
        self.neighbours.retain(|_, n| {
            let keep = n.mac.is_some() && n.expires > now;
            if !keep {
                dropped += n.waiting.len() as u64;
            }
            keep
        });
        if self.neighbours.len() >= MAX_NEIGHBOURS {
            // All live: forget them all rather than grow without bound.
            dropped += self
                .neighbours
                .values()
                .map(|n| n.waiting.len() as u64)
                .sum::<u64>();
            self.neighbours.clear();
        }
        self.stats.tx_dropped += dropped;
    }

    fn learn(&mut self, ip: Ipv4Addr, mac: EthernetAddress, now: u64) {
        let ttl = self.cfg.arp_ttl_ns;
        self.make_room(ip, now);
        let n = self.neighbours.entry(ip).or_default();
        n.mac = Some(mac);
        n.expires = now.saturating_add(ttl);
        let waiting = std::mem::take(&mut n.waiting);
        for seg in waiting {
            // Patch the destination MAC into the frame's header line.
            match patch_dst_mac(&seg, mac) {
                Ok(s) => self.txq.push_back(s),
                Err(_) => self.stats.tx_dropped += 1,
            }
        }
    }

    fn send_arp(&mut self, dst: EthernetAddress, arp: &ArpRepr) -> Result<(), IfaceError> {
        let mut f = [0u8; ETH_LEN + 28];
        EthernetRepr {
            dst,
            src: self.cfg.mac,
            ethertype: ethernet::ethertype::ARP,
        }
        .emit(&mut f[..ETH_LEN]);
        arp.emit(&mut f[ETH_LEN..]);
        let seg = self.frame(VirtioNetHdr::default(), &f, &[])?;
        self.txq.push_back(seg);
        Ok(())
    }

    // ---- RX ------------------------------------------------------------------

    /// Processes `seg` (a frame segment with [`DmaMeta`] in front, as the
    /// NIC deposits it) as if it had just been received: for tests and the
    /// ingress fuzz target. Whatever it holds is parsed, counted, and either
    /// delivered or dropped; nothing panics.
    pub fn inject(&mut self, now: u64, seg: &Segment) {
        self.ingress(now, seg);
    }

    fn ingress(&mut self, now: u64, seg: &Segment) {
        self.stats.rx_frames += 1;
        let mut head = [0u8; META_LEN];
        let meta = match seg.read_at(0, &mut head) {
            Ok(n) => DmaMeta::parse(&head[..n], seg.len()),
            Err(_) => {
                self.stats.rx_malformed += 1;
                return;
            }
        };
        let Ok(meta) = meta else {
            self.stats.rx_malformed += 1;
            return;
        };
        let base = u64::from(meta.frame_off);
        let flen = meta.frame_len as usize;
        let mut hdrs = [0u8; MAX_HDRS];
        let hn = flen.min(MAX_HDRS);
        if seg.read_at(base, &mut hdrs[..hn]).is_err() {
            self.stats.rx_malformed += 1;
            return;
        }
        let hdrs = &hdrs[..hn];
        let Ok(eth) = EthernetRepr::parse(hdrs) else {
            self.stats.rx_malformed += 1;
            return;
        };
        if eth.dst != self.cfg.mac && !eth.dst.is_broadcast() {
            self.stats.rx_ignored += 1;
            return;
        }
        match eth.ethertype {
            ethernet::ethertype::ARP => self.ingress_arp(now, &hdrs[ETH_LEN..]),
            ethernet::ethertype::IPV4 => {
                let trusted = meta.vnet.flags & (F_NEEDS_CSUM | F_DATA_VALID) != 0;
                self.ingress_ipv4(now, seg, base, flen, hdrs, trusted)
            }
            _ => self.stats.rx_ignored += 1,
        }
    }

    fn ingress_arp(&mut self, now: u64, b: &[u8]) {
        let Ok(arp) = ArpRepr::parse(b) else {
            self.stats.rx_malformed += 1;
            return;
        };
        if arp.target_ip != self.cfg.ip {
            self.stats.rx_ignored += 1;
            return;
        }
        self.learn(arp.sender_ip, arp.sender_hw, now);
        if arp.op == ArpOp::Request {
            let reply = ArpRepr {
                op: ArpOp::Reply,
                sender_hw: self.cfg.mac,
                sender_ip: self.cfg.ip,
                target_hw: arp.sender_hw,
                target_ip: arp.sender_ip,
            };
            if self.send_arp(arp.sender_hw, &reply).is_err() {
                self.stats.tx_dropped += 1;
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
                self.stats.rx_ignored += 1;
                return;
            }
            Err(wire::WireError::Checksum) => {
                self.stats.rx_bad_csum += 1;
                return;
            }
            Err(_) => {
                self.stats.rx_malformed += 1;
                return;
            }
        };
        if ip.dst != self.cfg.ip {
            self.stats.rx_ignored += 1;
            return;
        }
        let l4_off = ETH_LEN + ihl;
        let l4_len = ip.payload_len;
        let l4 = Payload::new(seg.clone(), base + l4_off as u64, l4_len);
        let verify = !trusted && self.cfg.rx_verify_csum;
        let l4h = &hdrs[l4_off.min(hdrs.len())..];
        match ip.protocol {
            wire::ipv4::protocol::ICMP => self.ingress_icmp(now, &ip, l4h, l4, verify),
            wire::ipv4::protocol::UDP => self.ingress_udp(&ip, l4h, l4, verify),
            wire::ipv4::protocol::TCP => self.ingress_tcp(now, &ip, l4h, l4, verify),
            _ => self.stats.rx_ignored += 1,
        }
    }

    fn ingress_icmp(&mut self, now: u64, ip: &Ipv4Repr, h: &[u8], msg: Payload, verify: bool) {
        let Ok(icmp) = IcmpRepr::parse(h) else {
            self.stats.rx_malformed += 1;
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
                self.stats.rx_bad_csum += 1;
                return;
            }
        }
        if let IcmpRepr::EchoRequest { ident, seq_no } = icmp {
            let reply = IcmpRepr::EchoReply { ident, seq_no };
            let mut hb = [0u8; 8];
            reply.emit(&mut hb, data_sum);
            self.stats.echo_replies += 1;
            if self
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
                self.stats.tx_dropped += 1;
            }
        }
    }

    fn ingress_udp(&mut self, ip: &Ipv4Repr, h: &[u8], dgram: Payload, verify: bool) {
        let Ok(udp) = UdpRepr::parse_header(h, dgram.len()) else {
            self.stats.rx_malformed += 1;
            return;
        };
        let len = usize::from(udp.len);
        let data = dgram.slice(wire::udp::HEADER_LEN, len);
        if verify
            && wire::udp::verify(ip.src, ip.dst, &h[..wire::udp::HEADER_LEN], data.chunks())
                .is_err()
        {
            self.stats.rx_bad_csum += 1;
            return;
        }
        let Some(&hd) = self.udp_ports.get(&udp.dst_port) else {
            self.stats.rx_no_socket += 1;
            return;
        };
        let cap = self.cfg.udp_queue;
        if let Some(Some(Sock::Udp(u))) = self.sockets.get_mut(hd.0) {
            if u.rx.len() < cap {
                self.stats.rx_payload_bytes += data.len() as u64;
                u.rx.push_back((SocketAddrV4::new(ip.src, udp.src_port), data));
            } else {
                self.stats.rx_no_socket += 1;
            }
        }
    }

    fn ingress_tcp(&mut self, now: u64, ip: &Ipv4Repr, h: &[u8], seg: Payload, verify: bool) {
        let Ok((tcp, thl)) = TcpRepr::parse(h) else {
            self.stats.rx_malformed += 1;
            return;
        };
        if verify && wire::tcp::verify(ip.src, ip.dst, &[], seg.chunks()).is_err() {
            self.stats.rx_bad_csum += 1;
            return;
        }
        if thl > seg.len() {
            self.stats.rx_malformed += 1;
            return;
        }
        let payload = seg.slice(thl, seg.len());
        let local = SocketAddrV4::new(ip.dst, tcp.dst_port);
        let remote = SocketAddrV4::new(ip.src, tcp.src_port);
        if let Some(&hd) = self.tcp_demux.get(&(local, remote)) {
            if let Some(Some(Sock::Tcp(t))) = self.sockets.get_mut(hd.0) {
                self.stats.rx_payload_bytes += payload.len() as u64;
                t.sock.process(now, &tcp, payload);
                return;
            }
        }
        let is_syn = tcp.flags.contains(wire::TcpFlags::SYN)
            && !tcp.flags.contains(wire::TcpFlags::ACK)
            && !tcp.flags.contains(wire::TcpFlags::RST);
        if is_syn {
            if let Some(&lh) = self.listeners.get(&tcp.dst_port) {
                let full = match self.sockets.get(lh.0) {
                    Some(Some(Sock::Listener(l))) => l.ready.len() + l.embryonic >= l.backlog,
                    _ => true,
                };
                if full {
                    self.stats.rx_backlog_full += 1;
                    return;
                }
                let iss = self.iss(local, remote, now);
                if let Some(sock) =
                    TcpSocket::accept(self.cfg.tcp.clone(), local, remote, &tcp, iss, now)
                {
                    let h = self.insert(Sock::Tcp(Box::new(TcpSock {
                        sock,
                        listener: Some(lh),
                        queued: false,
                        want_write: false,
                        released: false,
                        reported_closed: false,
                    })));
                    self.tcp_demux.insert((local, remote), h);
                    if let Some(Some(Sock::Listener(l))) = self.sockets.get_mut(lh.0) {
                        l.embryonic += 1;
                    }
                }
                return;
            }
        }
        self.stats.rx_no_socket += 1;
        // `reply_rst` swaps the ports.
        if let Some(rst) = crate::tcp::reply_rst(&tcp, payload.len()) {
            if self.send_tcp(now, local, remote, &rst, &[], None).is_err() {
                self.stats.tx_dropped += 1;
            }
        }
    }
}

/// `seg` (a built frame) with its Ethernet destination replaced: a
/// copy-on-write of the one header line.
fn patch_dst_mac(seg: &Segment, mac: EthernetAddress) -> Result<Segment, hicamp::Error> {
    let mut head = [0u8; META_LEN];
    seg.read_at(0, &mut head)?;
    let meta = DmaMeta::parse(&head, seg.len()).map_err(|_| hicamp::Error::BadOffset {
        offset: 0,
        len: META_LEN as u64,
        seg_len: seg.len(),
    })?;
    let mut m = seg.to_mut();
    m.write_at(u64::from(meta.frame_off), &mac.0)?;
    Ok(m.freeze())
}

/// The body of the `ingress` fuzz target: arbitrary bytes become a received
/// frame (with and without checksum-valid metadata) on an interface that has a
/// listener, a UDP socket and an open connection, so the bytes reach every
/// protocol path.
#[derive(Debug)]
pub struct IngressFuzzer {
    iface: Interface<nicdma::sim::SimPort>,
    now: u64,
}

impl IngressFuzzer {
    /// An interface at 10.0.0.2 with sockets on TCP port 80 and UDP port 53,
    /// and a connection to 10.0.0.1:80.
    pub fn new() -> IngressFuzzer {
        let mem = Memory::new(hicamp::Config {
            capacity_lines: 1 << 18,
            map_capacity: 1 << 12,
            ..hicamp::Config::default()
        })
        .expect("memory");
        let (_net, port, _peer) =
            nicdma::sim::SimNet::pair(1, nicdma::sim::LinkConfig::default()).expect("sim");
        let ip = Ipv4Addr::new(10, 0, 0, 2);
        let mut iface = Interface::new(&mem, port, IfaceConfig::new([2, 0, 0, 0, 0, 2], ip, 24))
            .expect("iface");
        iface.tcp_listen(80).expect("listen");
        iface.udp_bind(53).expect("bind");
        iface.add_neighbour(Ipv4Addr::new(10, 0, 0, 1), [2, 0, 0, 0, 0, 1], 0);
        iface
            .tcp_connect(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 80), 0)
            .expect("connect");
        IngressFuzzer { iface, now: 0 }
    }

    /// The interface's counters.
    pub fn stats(&self) -> &IfaceStats {
        self.iface.stats()
    }

    /// Entries in the interface's ARP table.
    pub fn neighbours(&self) -> usize {
        self.iface.neighbours.len()
    }

    /// Feeds `data` as one frame. The first byte picks the metadata flags.
    pub fn run(&mut self, data: &[u8]) {
        let Some((&flags, frame)) = data.split_first() else {
            return;
        };
        let vnet = VirtioNetHdr {
            flags: flags & F_DATA_VALID,
            ..VirtioNetHdr::default()
        };
        let mem = self.iface.memory().clone();
        let Ok(seg) = nicdma::tx_segment(&mem, vnet, 62, frame) else {
            return;
        };
        self.now += 1_000_000;
        self.iface.inject(self.now, &seg);
        let _ = self.iface.poll(self.now);
    }
}

impl Default for IngressFuzzer {
    fn default() -> Self {
        IngressFuzzer::new()
    }
}
