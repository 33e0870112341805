//! The interface: one IPv4 address on one nicdma port, with an ARP cache, a
//! subnet and a default gateway, ICMP echo, and UDP and TCP sockets, driven in
//! batches by [`Interface::poll`].
//!
//! ## TX ("Rethinking Network Stack Design with Memory Snapshots", figures 3
//! and 4)
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
//! buffer); the payload handed to sockets is a [`Payload`](crate::Payload) naming the bytes
//! inside that same segment.
//!
//! ## Batching (PASTE)
//! One [`Interface::poll`] runs the device, processes every received frame,
//! runs every socket's timers and output, rings one doorbell, and returns the
//! sockets with something to report.
//!
//! ## Files
//! As in smoltcp, the socket set is kept apart from the interface state, so
//! that a socket emits straight into the frame builder while the set is
//! borrowed:
//!
//! - `socket_set`: the sockets by handle and the demultiplexing tables;
//! - `sockets`: the application's calls (listen, connect, send, receive,
//!   close, UDP);
//! - `neighbour`: the ARP cache;
//! - `tx`: frame building (headers, then nicdma's splicing frame builder);
//! - `rx`: parsing and demultiplexing of received segments;
//! - this file: configuration, counters, and the poll loop.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, SocketAddrV4};

use hicamp::{Memory, Segment};
use nicdma::frame::TxFrame;
use nicdma::{Nic, NicConfig, NicError, Port};

use crate::tcp::{State, TcpConfig, TcpError};
use crate::wire::ipv4::HEADER_LEN as IP_LEN;
use crate::wire::{ethernet, EthernetAddress};

#[cfg(any(test, feature = "test-support"))]
mod fuzz;
mod neighbour;
mod rx;
mod socket_set;
mod sockets;
#[cfg(test)]
mod tests;
mod tx;

#[cfg(any(test, feature = "test-support"))]
pub use fuzz::IngressFuzzer;
pub use socket_set::SocketHandle;
pub use tx::{tx_desc, tx_frame};

use neighbour::Neighbours;
use socket_set::{Sock, SocketSet};

const ETH_LEN: usize = ethernet::HEADER_LEN;
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
    /// Answer SYNs with SYN cookies while a listener's backlog is full
    /// (else they are dropped); on by default.
    pub syn_cookies: bool,
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
    /// The range (inclusive) local ports of outgoing connections come from. Stacks that
    /// share one address on one link (queues of one multi-queue device) take disjoint
    /// ranges, so that two never pick the same 4-tuple.
    pub ephemeral: (u16, u16),
    /// Answer a segment of an unknown connection with a reset (RFC 793). Off for a stack
    /// that shares its address with others on one link: the segment may be another stack's
    /// (a flow the link steered to the wrong queue), so it is dropped (`rx_no_socket`).
    pub rst_unknown: bool,
    /// Build TX frames' own lines (metadata, headroom and header lines, and
    /// the interior lines above them) interned in the dedup index. Off (the
    /// default), a volatile memory makes them owned lines (no hash, no
    /// index; see `Memory::splice_owned`), the payload's lines shared either
    /// way: 0.43x the instructions per 200-byte reply frame; owned frames
    /// die when their TX slots are reaped (`Nic::tx_reap_release`). A
    /// file-backed memory interns them either way.
    /// `HICAMP_TX_DEDUP=0` or `=1` sets its default ([`IfaceConfig::new`]).
    /// Applies to frame segments ([`IfaceConfig::tx_inline`] off, or ARP's
    /// waiting frames as built).
    pub tx_dedup: bool,
    /// Hand the NIC TX descriptors with inline headers
    /// ([`nicdma::frame::TxDesc`]: the headers in the slot, snapshots of
    /// the payload's segments) instead of frame segments: no frame lines are
    /// built or released, the port gathers [headers, payload lines]. On by
    /// default; `HICAMP_TX_INLINE=0` or `=1` sets the default
    /// ([`IfaceConfig::new`]). A file-backed memory keeps frame segments either way
    /// (the interface clears it): in phttpd's full-file-system test
    /// (`a_full_file_system_under_wal_refuses_posts_and_the_server_keeps_serving`)
    /// the server, once its log filled the file system, takes a new
    /// connection only while the TX ring's lap of interned frames (kept
    /// until each slot's next prepare) gives lines back as it turns; with
    /// descriptors nothing does, and the SYN's RX deposit finds no line.
    pub tx_inline: bool,
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
            syn_cookies: true,
            udp_queue: 1024,
            arp_ttl_ns: 60_000_000_000,
            arp_retry_ns: 200_000_000,
            arp_queue: 64,
            seed: 0x5e65_7ac4,
            ephemeral: (49_152, u16::MAX),
            rst_unknown: true,
            tx_dedup: switch_from_env("HICAMP_TX_DEDUP", false),
            tx_inline: switch_from_env("HICAMP_TX_INLINE", true),
            nic: NicConfig {
                tx_slots: 1024,
                rx_slots: 1024,
                // Ethernet + IPv4 + TCP with timestamps is 66 bytes: the frame
                // offset that starts a typical TCP payload on a 64-byte line
                // (62).
                rx_frame_off: nicdma::frame::aligned_frame_off(64, ETH_LEN + IP_LEN + 32, 0),
                tx_batch: 256,
                rx_batch: 256,
                rx_dedup_counts: false,
                rx_dedup: false,
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
    /// SYNs dropped because the listener's backlog was full (and SYN
    /// cookies were off).
    pub rx_backlog_full: u64,
    /// SYNs answered with a SYN cookie (the listener's backlog was full).
    pub syn_cookies_sent: u64,
    /// Connections opened by a valid SYN cookie.
    pub syn_cookies_accepted: u64,
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
    /// Of those, bytes carried by shared (reused) lines (every byte of an
    /// inline descriptor's payload: referenced where it lies).
    pub tx_payload_shared: u64,
    /// Of those, bytes the stack copied into new lines (partial lines whose
    /// offset did not line up with their place behind the headers).
    pub tx_payload_copied: u64,
    /// Payload bytes delivered to sockets (as segment snapshots: no copy).
    pub rx_payload_bytes: u64,
}

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

/// The interface state a frame is built from: everything but the sockets
/// and the NIC, so that a socket can emit into it while the socket set is
/// borrowed.
#[derive(Debug)]
struct Inner {
    mem: Memory,
    cfg: IfaceConfig,
    neighbours: Neighbours,
    /// Built frames waiting for room in the TX ring.
    txq: VecDeque<TxFrame>,
    /// TX frames' own lines are owned lines (not `tx_dedup`, and the
    /// memory makes them).
    tx_owned: bool,
    stats: IfaceStats,
    ident: u16,
    next_port: u16,
    secret: (u64, u64),
}

impl Inner {
    /// RFC 6528: a keyed hash of the 4-tuple plus a 4 µs clock.
    pub(super) fn iss(&self, local: SocketAddrV4, remote: SocketAddrV4, now: u64) -> u32 {
        let mut h = std::hash::DefaultHasher::new();
        h.write_u64(self.secret.0);
        h.write_u32(u32::from(*local.ip()));
        h.write_u16(local.port());
        h.write_u32(u32::from(*remote.ip()));
        h.write_u16(remote.port());
        h.write_u64(self.secret.1);
        (h.finish() as u32).wrapping_add((now / 4_000) as u32)
    }
}

/// A switch's default as the environment variable `name` sets it (`0` or
/// `1`; anything else, or nothing, leaves `default`).
fn switch_from_env(name: &str, default: bool) -> bool {
    match std::env::var_os(name).as_deref().and_then(|v| v.to_str()) {
        Some("0") => false,
        Some("1") => true,
        _ => default,
    }
}

/// An IPv4 interface over a NIC.
pub struct Interface<P: Port> {
    nic: Nic<P>,
    inner: Inner,
    sockets: SocketSet,
    rx: Vec<Segment>,
    /// Received segments the last poll ingested, kept until the next poll
    /// releases them together (`retire_rx`).
    rx_retired: Vec<Segment>,
    events: Vec<Event>,
}

impl<P: Port> std::fmt::Debug for Interface<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interface")
            .field("ip", &self.inner.cfg.ip)
            .field("nic", &self.nic)
            .field("sockets", &self.sockets.len())
            .finish_non_exhaustive()
    }
}

impl<P: Port> Interface<P> {
    /// An interface on a new NIC over `port`.
    pub fn new(mem: &Memory, port: P, cfg: IfaceConfig) -> Result<Interface<P>, IfaceError> {
        let nic = Nic::new(mem, port, cfg.nic)?;
        Ok(Self::with_nic(nic, cfg))
    }

    /// An interface on `nic` (made with `cfg.nic`: [`Nic::with_rings`], for
    /// rings a server keeps across restarts).
    pub fn with_nic(nic: Nic<P>, mut cfg: IfaceConfig) -> Interface<P> {
        let mem = nic.memory().clone();
        let mem = &mem;
        cfg.tcp.line_size = mem.line_size();
        cfg.tx_inline &= mem.owned_lines_enabled();
        cfg.tcp.tso_align = mem.line_size() * mem.fanout();
        let mss_cap = cfg.mtu.saturating_sub(IP_LEN + 20).clamp(536, 65_495) as u16;
        cfg.tcp.mss = cfg.tcp.mss.min(mss_cap);
        let h = std::collections::hash_map::RandomState::new();
        let mut a = h.build_hasher();
        a.write_u64(cfg.seed);
        let mut b = h.build_hasher();
        b.write_u64(!cfg.seed);
        let secret = (a.finish(), b.finish());
        let tx_owned = !cfg.tx_dedup && mem.owned_lines_enabled();
        Interface {
            nic,
            inner: Inner {
                mem: mem.clone(),
                next_port: {
                    let (lo, hi) = cfg.ephemeral;
                    let (lo, hi) = (lo.min(hi), lo.max(hi));
                    lo + (secret.0 % (u64::from(hi - lo) + 1)) as u16
                },
                cfg,
                neighbours: Neighbours::new(),
                txq: VecDeque::new(),
                tx_owned,
                stats: IfaceStats::default(),
                ident: (secret.1 & 0xffff) as u16,
                secret,
            },
            sockets: SocketSet::default(),
            rx: Vec::new(),
            rx_retired: Vec::new(),
            events: Vec::new(),
        }
    }

    /// The configuration (with the TCP settings the interface derived).
    pub fn config(&self) -> &IfaceConfig {
        &self.inner.cfg
    }

    /// Turns [`IfaceConfig::rst_unknown`] on or off (the link became shared, or stopped
    /// being).
    pub fn set_rst_unknown(&mut self, on: bool) {
        self.inner.cfg.rst_unknown = on;
    }

    /// The memory packets live in.
    pub fn memory(&self) -> &Memory {
        &self.inner.mem
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
        &self.inner.stats
    }

    /// Adds `mac` for `ip` to the ARP cache (static until it expires).
    pub fn add_neighbour(&mut self, ip: Ipv4Addr, mac: [u8; 6], now: u64) {
        self.inner.learn(ip, EthernetAddress(mac), now);
    }

    // ---- the poll loop ---------------------------------------------------------

    /// One batch: run the device, process every received frame, run every
    /// socket's timers and output, transmit with one doorbell. Returns the
    /// sockets with news (readable, writable after back-pressure, closed).
    pub fn poll(&mut self, now: u64) -> Result<&[Event], IfaceError> {
        self.retire_rx();
        self.nic.rx_refill()?;
        self.nic.dma()?;
        self.reap()?;
        // The device pass of `flush` also deposits frames that arrived in the
        // meantime: they are in the RX ring, no longer in the port (a TAP
        // descriptor is then not readable, so a caller sleeping on it would
        // not wake for them). Ingest them in this poll too, a few rounds at
        // most; what is left shows in `poll_at` as `Some(0)`.
        for _ in 0..Self::RX_ROUNDS {
            self.harvest(now)?;
            // Only when a notification was raised: draining an empty channel
            // is a system call per poll for nothing (busy-polling callers
            // poll often).
            if self.nic.notified() {
                self.nic.ack();
            }
            self.egress(now)?;
            self.flush()?;
            if self.nic.rx_ring().completed_unreaped() == 0 {
                break;
            }
        }
        self.collect_events();
        Ok(&self.events)
    }

    /// Reaps the completed TX slots. Owned TX frames die with it (their
    /// lines are distinct, frame after frame: a 1024-slot ring that kept
    /// each frame until its slot's next prepare kept a lap of them alive,
    /// ~24k lines for phttpd's small answers); interned ones stay until
    /// the next prepare (a lap of them costs little: their lines repeat).
    fn reap(&mut self) -> Result<(), IfaceError> {
        if self.inner.tx_owned {
            self.nic.tx_reap_release()?;
        } else {
            self.nic.tx_reap()?;
        }
        Ok(())
    }

    /// Rounds of receive, output and flush one [`Interface::poll`] runs at
    /// most while the flush keeps depositing received frames.
    const RX_ROUNDS: usize = 4;

    /// Received bytes after which a harvest that goes on lets the sockets'
    /// output (their ACKs) out before the next device pass deposits more
    /// (at most `NicConfig::rx_batch` frames per pass): a bulk sender whose
    /// frames keep arriving is acknowledged while we work, not once per
    /// poll (a poll that drains a 4 MiB window would otherwise hold every
    /// ACK until all of it is deposited, and the sender would wait for it,
    /// idle, on the other core). Small-frame traffic never reaches it.
    /// Bulk RX over TAP at `rx_batch` 4, 8 alternated runs of 64 MiB at
    /// load 9: median 248 ms against 295 ms without it (worst 352 against
    /// 1345 ms), the same CPU time.
    const RX_OUTPUT_EVERY: usize = 128 << 10;

    /// Ingests every received frame, refilling the ring and running the
    /// device until no more completes.
    fn harvest(&mut self, now: u64) -> Result<(), IfaceError> {
        let mut rx = std::mem::take(&mut self.rx);
        let mut unsent = 0usize;
        let result = loop {
            rx.clear();
            match self.nic.rx_harvest(&mut rx, 256) {
                Ok(0) => break Ok(()),
                Ok(_) => {}
                Err(e) => break Err(e.into()),
            }
            for seg in rx.drain(..) {
                unsent += seg.len() as usize;
                self.ingress(now, &seg);
                self.rx_retired.push(seg);
            }
            if unsent >= Self::RX_OUTPUT_EVERY {
                unsent = 0;
                if let Err(e) = self.egress(now).and_then(|_| self.flush()) {
                    break Err(e);
                }
            }
            if let Err(e) = self.nic.rx_refill().and_then(|_| self.nic.dma()) {
                break Err(e.into());
            }
        };
        self.rx = rx;
        result
    }

    /// Releases the segments the last poll received. A frame's payload
    /// lives on in the sockets it reached (and in the application, which
    /// usually drops it before the next poll: a request parsed, a
    /// response copied out), so a frame's lines mostly die here, in one
    /// [`Memory::release_segments`] for every frame of the last poll,
    /// instead of one release per frame wherever its last piece was dropped.
    fn retire_rx(&mut self) {
        match self.rx_retired.len() {
            0 => {}
            // One frame: a plain drop costs less than a batch of one.
            1 => self.rx_retired.clear(),
            _ => self.inner.mem.release_segments(self.rx_retired.drain(..)),
        }
    }

    /// When the next poll is due for timers (absolute ns), if any. Early
    /// rather than late: it may name a time at which no timer turns out to
    /// be due (a timer that moved later since the last poll).
    pub fn poll_at(&self) -> Option<u64> {
        // Frames queued to send, or received frames already in the RX ring
        // (deposited by the last device pass, after the poll harvested).
        if !self.inner.txq.is_empty() || self.nic.rx_ring().completed_unreaped() > 0 {
            return Some(0);
        }
        let set = &self.sockets;
        let mut at = (set.timer_floor != u64::MAX).then_some(set.timer_floor);
        // Sockets touched since the last dispatch: their own answer (a clean
        // socket's timer is in the floor).
        for &i in &set.active {
            if let Some(Some(Sock::Tcp(t))) = set.slots.get(i) {
                let p = if t.dirty { t.sock.poll_at() } else { t.wake_at };
                if let Some(p) = p {
                    at = Some(at.map_or(p, |a| a.min(p)));
                }
            }
        }
        at
    }

    /// The events of the active sockets (see `SocketSet::active`); a socket
    /// with news stays active, so that it is reported again at the next
    /// poll unless the application took what it was told about.
    fn collect_events(&mut self) {
        self.events.clear();
        let mut active = std::mem::take(&mut self.sockets.active);
        active.sort_unstable();
        let mut keep = 0;
        for k in 0..active.len() {
            let i = active[k];
            let set = &mut self.sockets;
            // (readable, writable, closed) news of this socket, if any.
            let news = match set.slots.get_mut(i) {
                Some(Some(Sock::Tcp(t))) => {
                    if t.released {
                        if t.sock.is_closed() {
                            if let Some(Sock::Tcp(t)) = set.remove(SocketHandle(i)) {
                                let key = (t.sock.local(), t.sock.remote());
                                set.tcp_demux.remove(&key);
                            }
                        }
                        None
                    } else if t.listener.is_some() || t.queued {
                        None
                    } else {
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
                }
                Some(Some(Sock::Listener(l))) => {
                    (!l.ready.is_empty()).then_some((true, false, false))
                }
                Some(Some(Sock::Udp(u))) => (!u.rx.is_empty()).then_some((true, false, false)),
                _ => None,
            };
            // A socket still waiting for a timer or output stays on the
            // list too, so that the next egress finds it.
            let pending = matches!(set.slots.get(i), Some(Some(Sock::Tcp(t))) if t.dirty);
            if let Some((readable, writable, closed)) = news {
                self.events.push(Event {
                    handle: SocketHandle(i),
                    readable,
                    writable,
                    closed,
                });
            }
            if news.is_some() || pending {
                active[keep] = i;
                keep += 1;
            } else {
                set.unlist(i);
            }
        }
        active.truncate(keep);
        // Sockets the loop above marked (none today) come after.
        active.append(&mut self.sockets.active);
        self.sockets.active = active;
    }

    /// Runs the TCP output and timers of the active sockets and of those
    /// whose timer is due; moves finished handshakes to their listener's
    /// accept queue.
    fn egress(&mut self, now: u64) -> Result<(), IfaceError> {
        let set = &mut self.sockets;
        if now >= set.timer_floor {
            // A timer may be due: find the clean sockets whose timer is, and
            // the next one of the rest (the only scan of every socket).
            let mut floor = u64::MAX;
            let mut due = Vec::new();
            for (i, s) in set.slots.iter().enumerate() {
                if let Some(Sock::Tcp(t)) = s {
                    match t.wake_at {
                        Some(w) if w <= now => due.push(i),
                        Some(w) => floor = floor.min(w),
                        None => {}
                    }
                }
            }
            set.timer_floor = floor;
            for i in due {
                set.mark(i);
            }
        }
        let mut established = Vec::new();
        let mut dead = Vec::new();
        let inner = &mut self.inner;
        let mut active = std::mem::take(&mut set.active);
        // In handle order, as a scan of every slot would go.
        active.sort_unstable();
        let mut result = Ok(());
        for &i in &active {
            let Some(Some(Sock::Tcp(t))) = set.slots.get_mut(i) else {
                continue;
            };
            // A socket nothing happened to since its last dispatch, with no
            // timer due, has nothing to emit: skip it.
            if !t.dirty && t.wake_at.is_none_or(|w| w > now) {
                continue;
            }
            t.dirty = false;
            // Bound the burst by the frames the ring and queue can take.
            let mut budget = (self.nic.tx_room() as usize + 512).saturating_sub(inner.txq.len());
            let (local, remote) = (t.sock.local(), t.sock.remote());
            let mut failed = None;
            // The socket emits straight into the frame builder: the socket
            // set and the interface state are borrowed apart.
            t.sock.dispatch(now, &mut |repr, payload, gso| {
                if budget == 0 || failed.is_some() {
                    return false;
                }
                budget -= 1;
                match inner.send_tcp(now, local, remote, repr, payload, gso) {
                    Ok(()) => true,
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                }
            });
            t.wake_at = t.sock.poll_at();
            match t.wake_at {
                // More to emit (the burst ran out of budget): the next poll
                // dispatches it again.
                Some(w) if w <= now => t.dirty = true,
                Some(w) => set.timer_floor = set.timer_floor.min(w),
                None => {}
            }
            if let Some(e) = failed {
                t.dirty = true;
                result = Err(e);
                break;
            }
            if let Some(l) = t.listener {
                match t.sock.state() {
                    State::Established | State::CloseWait => established.push((l, i)),
                    State::SynReceived => {}
                    _ => dead.push((l, i)),
                }
            }
        }
        active.append(&mut set.active);
        set.active = active;
        for (l, i) in established {
            if let Some(lst) = self.sockets.listener_mut(l) {
                lst.embryonic = lst.embryonic.saturating_sub(1);
                lst.ready.push_back(SocketHandle(i));
            }
            if let Ok(t) = self.sockets.tcp_mut(SocketHandle(i)) {
                t.listener = None;
                t.queued = true;
            }
        }
        for (l, i) in dead {
            if let Some(lst) = self.sockets.listener_mut(l) {
                lst.embryonic = lst.embryonic.saturating_sub(1);
            }
            if let Ok(t) = self.sockets.tcp_mut(SocketHandle(i)) {
                t.listener = None;
                t.released = true;
            }
        }
        result
    }

    fn flush(&mut self) -> Result<(), IfaceError> {
        // Nothing to send (an idle poll): no second DMA pass, which would
        // only take the port's lock again (the poll's first pass ran the
        // device).
        if self.inner.txq.is_empty() {
            return Ok(());
        }
        loop {
            while let Some(f) = self.inner.txq.pop_front() {
                if let Some(f) = self.nic.tx_prepare_frame(f)? {
                    self.inner.txq.push_front(f);
                    break;
                }
                self.inner.stats.tx_frames += 1;
            }
            self.nic.tx_doorbell()?;
            self.nic.dma()?;
            self.reap()?;
            if self.inner.txq.is_empty() || self.nic.tx_room() == 0 {
                break;
            }
        }
        Ok(())
    }
}
