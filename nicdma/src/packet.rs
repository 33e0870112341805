//! The AF_PACKET backend: a [`Port`] on a Linux interface (a veth end)
//! through two packet sockets with rings mapped into this process — the
//! fallback where XDP is unavailable.
//!
//! ```text
//!  RX socket (TPACKET_V3)                 TX socket (TPACKET_V2, QDISC_BYPASS)
//!  +---------+---------+-- ... --+        +-------+-------+-- ... --+
//!  | block 0 | block 1 |         |        | frame | frame |         |
//!  +---------+---------+-- ... --+        +-------+-------+-- ... --+
//!   kernel fills a block with frames,      the TX DMA gathers a frame's lines
//!   hands it over when full or when the    into a free frame (offloads done on
//!   block timeout expires; receive() lends  the way), marks it SEND_REQUEST;
//!   each frame to the NIC, which copies    flush() kicks all queued frames out
//!   it into lines (the backend's one       with one sendto()
//!   RX copy), then the block goes back
//! ```
//!
//! * The RX ring is block-based: the kernel hands a block over when it is
//!   full or when the *block timeout* expires ([`PacketConfig::block_timeout_ms`],
//!   1 ms by default: a lone request waits at most that long; under load,
//!   blocks fill and go over at once). The socket ignores outgoing frames
//!   (`PACKET_IGNORE_OUTGOING`), so the port does not see its own.
//! * The TX ring uses TPACKET_V2 (V3's TX ring has no advantage for fixed
//!   frames) and `PACKET_QDISC_BYPASS`: frames go straight to the driver.
//! * Copies, counted in [`PortCopies`]: RX copies each frame once from the
//!   ring into segment lines (the ring is the kernel's memory, not line
//!   memory); TX gathers each frame's lines once into a ring frame.
//!   What would remove the RX copy: lines that are 64-byte slots of the ring
//!   itself, which AF_PACKET cannot give (it places frames at offsets of its
//!   own choosing inside blocks it reuses).
//! * Receive coalescing ([`PacketConfig::lro`], on by default): a run of
//!   one TCP flow's in-order segments in the held block is lent as one GSO
//!   frame (merged headers in a small buffer, payloads where they lie in
//!   the ring; see `ringrx`), so the stack handles one frame and sends one
//!   ACK; the copy into lines stays one.
//! * The link partner must not hand over GSO super-frames (the frames would
//!   be truncated to the ring's frame size and dropped, counted in
//!   `rx_dropped`): on a veth, turn segmentation offloads off on the other
//!   end (`ethtool -K <peer> tso off gso off`). Partial checksums are fine:
//!   the port passes them on as `F_NEEDS_CSUM`.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::meta::{VirtioNetHdr, F_DATA_VALID, F_NEEDS_CSUM};
use crate::port::{PortCopies, PortError};
use crate::ringport::{ring_port, RingBackend};
use crate::ringrx;
use crate::ringtx::TxSlots;
use crate::sys;
use crate::sys::mem::Mmap;
use crate::sys::sock;

const SOL_PACKET: libc::c_int = 263;
const PACKET_RX_RING: libc::c_int = 5;
const PACKET_VERSION: libc::c_int = 10;
const PACKET_TX_RING: libc::c_int = 13;
const PACKET_QDISC_BYPASS: libc::c_int = 20;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const TPACKET_V2: libc::c_int = 1;
const TPACKET_V3: libc::c_int = 2;
const ETH_P_ALL: u16 = 0x0003;

const TP_STATUS_KERNEL: u32 = 0;
const TP_STATUS_USER: u32 = 1;
const TP_STATUS_SEND_REQUEST: u32 = 1;
const TP_STATUS_SENDING: u32 = 2;
const TP_STATUS_CSUMNOTREADY: u32 = 1 << 3;
const TP_STATUS_CSUM_VALID: u32 = 1 << 7;
const PACKET_OUTGOING: u8 = 4;

/// `struct tpacket_block_desc`: block_status, num_pkts, offset_to_first_pkt.
const BLK_STATUS: usize = 8;
const BLK_NUM_PKTS: usize = 12;
const BLK_FIRST: usize = 16;
/// `TPACKET_ALIGN(sizeof(struct tpacket3_hdr))`: where the `sockaddr_ll`
/// follows each frame's header.
const TP3_HDR_LEN: usize = 48;
/// Where a TPACKET_V2 TX frame's data starts (`TPACKET2_HDRLEN -
/// sizeof(struct sockaddr_ll)`).
const TP2_DATA_OFF: usize = 32;

/// Sizes of an AF_PACKET port's rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketConfig {
    /// Bytes of one RX block (a multiple of the page size).
    pub block_size: usize,
    /// RX blocks.
    pub blocks: usize,
    /// Milliseconds after which the kernel hands over a block that is not
    /// full (the latency of a lone frame; at least 1).
    pub block_timeout_ms: u32,
    /// TX frames.
    pub tx_frames: usize,
    /// Bytes of one TX frame slot (a power of two, at least 2048).
    pub tx_frame_size: usize,
    /// Coalesce runs of TCP segments in a block into GSO frames on receive
    /// (LRO, see `ringrx`); no extra copy.
    pub lro: bool,
}

impl Default for PacketConfig {
    fn default() -> Self {
        PacketConfig {
            block_size: 256 << 10,
            blocks: 32,
            block_timeout_ms: 1,
            tx_frames: 1024,
            tx_frame_size: 2048,
            lro: true,
        }
    }
}

/// A [`Port`] on an interface through AF_PACKET rings.
pub struct PacketPort {
    rx: OwnedFd,
    tx: OwnedFd,
    rx_ring: Mmap,
    tx_ring: Mmap,
    name: String,
    mac: [u8; 6],
    mtu: u32,
    cfg: PacketConfig,
    /// The RX block being read, if one is held.
    block: Option<usize>,
    /// The next block to take from the kernel.
    next_block: usize,
    /// Frames of the held block not yet lent, and where the next starts.
    pkt_left: u32,
    pkt_off: usize,
    tx_head: usize,
    tx_pending: usize,
    copies: PortCopies,
}

impl fmt::Debug for PacketPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PacketPort")
            .field("name", &self.name)
            .field("rx_fd", &self.rx.as_raw_fd())
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// Maps an error of a set-up call.
pub(crate) fn setup_err(op: &'static str, source: io::Error) -> PortError {
    match source.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => PortError::NotPermitted(op),
        Some(libc::ENODEV) => PortError::Os { op, source },
        _ => PortError::Os { op, source },
    }
}

/// `struct sockaddr_ll` for `bind`: family, protocol (network order),
/// interface index.
fn sockaddr_ll(protocol: u16, ifindex: u32) -> [u8; 20] {
    let mut a = [0u8; 20];
    a[0..2].copy_from_slice(&(libc::AF_PACKET as u16).to_ne_bytes());
    a[2..4].copy_from_slice(&protocol.to_be_bytes());
    a[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    a
}

/// The metadata for a frame the kernel left with a partial checksum
/// (`TP_STATUS_CSUMNOTREADY`): IPv4 TCP or UDP, `F_NEEDS_CSUM` at its
/// transport checksum (what virtio would say); anything else gets none.
pub(crate) fn partial_csum_hdr(frame: &[u8]) -> VirtioNetHdr {
    let mut h = VirtioNetHdr::default();
    if frame.len() >= 34 && frame[12..14] == [0x08, 0x00] && frame[14] >> 4 == 4 {
        let l4 = 14 + usize::from(frame[14] & 0x0f) * 4;
        let off = match frame[23] {
            6 => 16,
            17 => 6,
            _ => return h,
        };
        if l4 + off + 2 <= frame.len() {
            h.flags = F_NEEDS_CSUM;
            h.csum_start = l4 as u16;
            h.csum_offset = off as u16;
        }
    }
    h
}

/// Whether AF_PACKET works here (a packet socket opens), and if not, why.
pub fn probe() -> Result<(), String> {
    match sock::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) {
        Ok(_) => Ok(()),
        Err(e) => Err(match e.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) => "needs root (CAP_NET_RAW)".into(),
            Some(libc::EAFNOSUPPORT) => "the kernel has no AF_PACKET sockets".into(),
            _ => format!("packet socket: {e}"),
        }),
    }
}

impl PacketPort {
    /// Opens the interface `name` (in the calling thread's network
    /// namespace) with the default ring sizes.
    pub fn open(name: &str) -> Result<PacketPort, PortError> {
        Self::with_config(name, PacketConfig::default())
    }

    /// Opens the interface `name` with `cfg`'s rings.
    pub fn with_config(name: &str, cfg: PacketConfig) -> Result<PacketPort, PortError> {
        let bad_cfg = |what: &str| PortError::Os {
            op: "AF_PACKET ring sizes",
            source: io::Error::new(io::ErrorKind::InvalidInput, what.to_owned()),
        };
        if cfg.block_size == 0
            || !cfg.block_size.is_multiple_of(4096)
            || cfg.blocks == 0
            || cfg.tx_frames == 0
            || !cfg.tx_frame_size.is_power_of_two()
            || cfg.tx_frame_size < 2048
            || cfg.block_timeout_ms == 0
        {
            return Err(bad_cfg("block size a multiple of 4096, frame size a power of two >= 2048, counts and timeout > 0"));
        }
        let ifindex =
            sock::if_index(name).ok_or_else(|| PortError::NoSuchInterface(name.into()))?;
        let open = |proto: u16| {
            sock::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto.to_be())).map_err(|e| {
                match e.raw_os_error() {
                    Some(libc::EAFNOSUPPORT) => PortError::Unsupported {
                        backend: "af_packet",
                        why: "no AF_PACKET sockets (CONFIG_PACKET)".into(),
                    },
                    _ => setup_err("AF_PACKET socket", e),
                }
            })
        };
        // RX: made with protocol 0 (it receives nothing until bound, so the
        // ring holds only this interface's frames).
        let rx = open(0)?;
        sock::setsockopt_int(rx.as_fd(), SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            .map_err(|e| setup_err("PACKET_VERSION V3", e))?;
        // Best effort (Linux 4.20+); without it, outgoing frames are skipped
        // by their packet type.
        let _ = sock::setsockopt_int(rx.as_fd(), SOL_PACKET, PACKET_IGNORE_OUTGOING, 1);
        let frame_nr = cfg.block_size / 2048 * cfg.blocks;
        let mut req3 = Vec::with_capacity(28);
        for v in [
            cfg.block_size as u32,
            cfg.blocks as u32,
            2048,
            frame_nr as u32,
            cfg.block_timeout_ms,
            0, // sizeof_priv
            0, // feature_req_word
        ] {
            req3.extend_from_slice(&v.to_ne_bytes());
        }
        sock::setsockopt(rx.as_fd(), SOL_PACKET, PACKET_RX_RING, &req3)
            .map_err(|e| setup_err("PACKET_RX_RING", e))?;
        let rx_ring = Mmap::shared_fd(rx.as_fd(), cfg.block_size * cfg.blocks, 0)
            .map_err(|e| setup_err("mmap RX ring", e))?;
        sock::bind(rx.as_fd(), &sockaddr_ll(ETH_P_ALL, ifindex))
            .map_err(|e| setup_err("bind RX", e))?;

        // TX: protocol 0 (receives nothing), V2 ring, no qdisc.
        let tx = open(0)?;
        sock::setsockopt_int(tx.as_fd(), SOL_PACKET, PACKET_VERSION, TPACKET_V2)
            .map_err(|e| setup_err("PACKET_VERSION V2", e))?;
        sock::setsockopt_int(tx.as_fd(), SOL_PACKET, PACKET_QDISC_BYPASS, 1)
            .map_err(|e| setup_err("PACKET_QDISC_BYPASS", e))?;
        let per_block = 4096usize.max(cfg.tx_frame_size);
        let tx_blocks = (cfg.tx_frames * cfg.tx_frame_size).div_ceil(per_block);
        let tx_frames = tx_blocks * per_block / cfg.tx_frame_size;
        let mut req = Vec::with_capacity(16);
        for v in [per_block, tx_blocks, cfg.tx_frame_size, tx_frames] {
            req.extend_from_slice(&(v as u32).to_ne_bytes());
        }
        sock::setsockopt(tx.as_fd(), SOL_PACKET, PACKET_TX_RING, &req)
            .map_err(|e| setup_err("PACKET_TX_RING", e))?;
        let tx_ring = Mmap::shared_fd(tx.as_fd(), per_block * tx_blocks, 0)
            .map_err(|e| setup_err("mmap TX ring", e))?;
        sock::bind(tx.as_fd(), &sockaddr_ll(0, ifindex)).map_err(|e| setup_err("bind TX", e))?;

        let mac = sock::hw_addr(rx.as_fd(), name).map_err(|e| setup_err("SIOCGIFHWADDR", e))?;
        let mtu = sock::mtu(rx.as_fd(), name).map_err(|e| setup_err("SIOCGIFMTU", e))?;
        Ok(PacketPort {
            rx,
            tx,
            rx_ring,
            tx_ring,
            name: name.to_owned(),
            mac,
            mtu,
            cfg: PacketConfig { tx_frames, ..cfg },
            block: None,
            next_block: 0,
            pkt_left: 0,
            pkt_off: 0,
            tx_head: 0,
            tx_pending: 0,
            copies: PortCopies::default(),
        })
    }

    /// The interface's MAC address (use it as the stack's).
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The interface's MTU.
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// The ring sizes in force.
    pub fn config(&self) -> &PacketConfig {
        &self.cfg
    }

    /// Waits up to `timeout` for a block to arrive; returns whether one
    /// (may have) did.
    pub fn wait_readable(&self, timeout: Duration) -> Result<bool, PortError> {
        if self.rx_ready() {
            return Ok(true);
        }
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        sys::poll_readable(self.rx.as_fd(), ms).map_err(|e| PortError::Os {
            op: "poll",
            source: e,
        })
    }

    /// Whether a frame is ready to lend without waiting.
    fn rx_ready(&self) -> bool {
        self.pkt_left > 0 || self.block_status(self.next_block) & TP_STATUS_USER != 0
    }

    fn block_status(&self, b: usize) -> u32 {
        self.rx_ring
            .atomic_u32(b * self.cfg.block_size + BLK_STATUS)
            .map_or(TP_STATUS_KERNEL, |a| a.load(Ordering::Acquire))
    }

    fn read_u32(&self, off: usize) -> Option<u32> {
        self.rx_ring.read::<4>(off).map(u32::from_ne_bytes)
    }

    /// Gives the held block back to the kernel.
    fn release_block(&mut self) {
        if let Some(b) = self.block.take() {
            if let Some(st) = self
                .rx_ring
                .atomic_u32(b * self.cfg.block_size + BLK_STATUS)
            {
                st.store(TP_STATUS_KERNEL, Ordering::Release);
            }
            self.pkt_left = 0;
            self.next_block = (b + 1) % self.cfg.blocks;
        }
    }

    fn tx_status(&self, i: usize) -> Option<&std::sync::atomic::AtomicU32> {
        self.tx_ring.atomic_u32(i * self.cfg.tx_frame_size)
    }
}

/// One frame of a held RX block, as its `tpacket3_hdr` describes it.
#[derive(Debug, Clone, Copy, Default)]
struct Pkt {
    /// Where the next frame's header is (0: none).
    next: usize,
    /// The frame's bytes in the ring, when they are whole and in the block.
    frame: Option<(usize, usize)>,
    status: u32,
    outgoing: bool,
    /// The header itself was readable inside the block.
    ok: bool,
}

impl PacketPort {
    fn pkt(&self, at: usize, block_end: usize) -> Pkt {
        let Some(hdr) = self
            .rx_ring
            .read::<28>(at)
            .filter(|_| at + TP3_HDR_LEN + 12 <= block_end)
        else {
            return Pkt::default();
        };
        let word = |i: usize| u32::from_ne_bytes(hdr[i..i + 4].try_into().expect("4"));
        let snaplen = word(12) as usize;
        let len = word(16) as usize;
        let mac = usize::from(u16::from_ne_bytes([hdr[24], hdr[25]]));
        let pkttype = self
            .rx_ring
            .read::<1>(at + TP3_HDR_LEN + 10)
            .map_or(0, |b| b[0]);
        Pkt {
            next: word(0) as usize,
            frame: (snaplen == len && at + mac + snaplen <= block_end)
                .then_some((at + mac, snaplen)),
            status: word(20),
            outgoing: pkttype == PACKET_OUTGOING,
            ok: true,
        }
    }

    /// The receive path: lends the next frame of the held block (or, with
    /// `lro`, a coalesced run of its frames).
    fn lend(
        &mut self,
        lro: bool,
        deposit: &mut dyn FnMut(&VirtioNetHdr, &[&[u8]]),
    ) -> Result<bool, PortError> {
        // Frames lent by the previous call are done with.
        loop {
            if self.pkt_left == 0 {
                self.release_block();
                let b = self.next_block;
                let base = b * self.cfg.block_size;
                if self.block_status(b) & TP_STATUS_USER == 0 {
                    return Ok(false);
                }
                let (Some(num), Some(first)) = (
                    self.read_u32(base + BLK_NUM_PKTS),
                    self.read_u32(base + BLK_FIRST),
                ) else {
                    return Ok(false);
                };
                self.block = Some(b);
                self.pkt_left = num;
                self.pkt_off = base + first as usize;
                continue;
            }
            let block_end = (self.block.unwrap_or(0) + 1) * self.cfg.block_size;
            // The frames waiting in the block from here: a run of good ones
            // (only the first, without `lro`).
            let want = if lro {
                (self.pkt_left as usize).min(ringrx::LRO_MAX)
            } else {
                1
            };
            let mut run = [(0usize, Pkt::default()); ringrx::LRO_MAX];
            let mut n = 0;
            let mut at = self.pkt_off;
            while n < want {
                let p = self.pkt(at, block_end);
                run[n] = (at, p);
                n += 1;
                if !p.ok || p.outgoing || p.frame.is_none() || p.next == 0 {
                    break;
                }
                at += p.next;
            }
            let first = run[0].1;
            let advance = |port: &mut PacketPort, k: usize| {
                port.pkt_left -= k as u32;
                if port.pkt_left > 0 {
                    let (last_at, last) = run[k - 1];
                    if last.next == 0 {
                        port.copies.rx_dropped += u64::from(port.pkt_left);
                        port.pkt_left = 0;
                    } else {
                        port.pkt_off = last_at + last.next;
                    }
                }
            };
            if !first.ok {
                // A header outside its block: the block is corrupt; drop it.
                self.copies.rx_dropped += u64::from(self.pkt_left);
                self.pkt_left = 0;
                continue;
            }
            if first.outgoing {
                advance(self, 1);
                continue;
            }
            let Some((f0, l0)) = first.frame else {
                self.copies.rx_dropped += 1;
                advance(self, 1);
                continue;
            };
            // The good frames of the run (a bad one ends it).
            let good = run[..n]
                .iter()
                .take_while(|(_, p)| p.ok && !p.outgoing && p.frame.is_some())
                .count();
            let ring = &self.rx_ring;
            let frame = |i: usize| {
                run.get(i)
                    .filter(|_| i < good)
                    .and_then(|(_, p)| p.frame)
                    .and_then(|(o, l)| ring.slice(o, l))
            };
            let mut hdr = [0u8; ringrx::LRO_HDR_MAX];
            let (k, merged) = if lro && good > 1 {
                let partial = |i: usize| {
                    run.get(i)
                        .is_some_and(|(_, p)| p.status & TP_STATUS_CSUMNOTREADY != 0)
                };
                ringrx::plan(good, frame, partial, &mut hdr)
            } else {
                (1, None)
            };
            let mut pieces: [&[u8]; ringrx::LRO_MAX + 1] = [&[]; ringrx::LRO_MAX + 1];
            let (vnet, count) = match merged {
                None => {
                    let f = ring.slice(f0, l0).unwrap_or(&[]);
                    pieces[0] = f;
                    let vnet = if first.status & TP_STATUS_CSUMNOTREADY != 0 {
                        partial_csum_hdr(f)
                    } else if first.status & TP_STATUS_CSUM_VALID != 0 {
                        VirtioNetHdr {
                            flags: F_DATA_VALID,
                            ..VirtioNetHdr::default()
                        }
                    } else {
                        VirtioNetHdr::default()
                    };
                    (vnet, 1)
                }
                Some((vnet, hl)) => {
                    pieces[0] = &hdr[..hl];
                    for (i, p) in pieces[1..=k].iter_mut().enumerate() {
                        *p = frame(i).map_or(&[][..], |f| &f[hl.min(f.len())..]);
                    }
                    (vnet, k + 1)
                }
            };
            let bytes: usize = pieces[..count].iter().map(|p| p.len()).sum();
            deposit(&vnet, &pieces[..count]);
            self.copies.rx_frames += k as u64;
            self.copies.rx_coalesced += k as u64 - 1;
            self.copies.rx_copy_bytes += bytes as u64;
            advance(self, k);
            return Ok(true);
        }
    }
}

impl TxSlots for PacketPort {
    fn free(&mut self) -> usize {
        let n = self.cfg.tx_frames;
        let mut free = 0;
        while free < n.min(256) {
            let i = (self.tx_head + free) % n;
            match self.tx_status(i).map(|s| s.load(Ordering::Acquire)) {
                Some(TP_STATUS_SEND_REQUEST | TP_STATUS_SENDING) | None => break,
                // Available (0), or rejected (WRONG_FORMAT): ours again.
                Some(_) => free += 1,
            }
        }
        free
    }

    fn capacity(&self) -> usize {
        (self.cfg.tx_frame_size - TP2_DATA_OFF).min(self.mtu as usize + 14)
    }

    fn next(&mut self, len: usize) -> Result<&mut [u8], PortError> {
        let at = self.tx_head * self.cfg.tx_frame_size + TP2_DATA_OFF;
        self.tx_ring.slice_mut(at, len).ok_or(PortError::TooLarge {
            len,
            max: self.cfg.tx_frame_size - TP2_DATA_OFF,
        })
    }

    fn commit(&mut self, len: usize) {
        let base = self.tx_head * self.cfg.tx_frame_size;
        // tp_len and tp_snaplen, then the status that hands the frame over.
        let l = (len as u32).to_ne_bytes();
        self.tx_ring.write(base + 4, &l);
        self.tx_ring.write(base + 8, &l);
        if let Some(st) = self.tx_status(self.tx_head) {
            st.store(TP_STATUS_SEND_REQUEST, Ordering::Release);
        }
        self.tx_head = (self.tx_head + 1) % self.cfg.tx_frames;
        self.tx_pending += 1;
    }
}

impl RingBackend for PacketPort {
    fn counters(&mut self) -> &mut PortCopies {
        &mut self.copies
    }

    fn tx_queued(&self) -> bool {
        self.tx_pending > 0
    }

    /// One `sendto` for every queued frame.
    fn kick(&mut self) -> Result<(), PortError> {
        if self.tx_pending == 0 {
            return Ok(());
        }
        self.copies.kicks += 1;
        loop {
            match sock::kick_tx(self.tx.as_fd()) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The device queue is full: the frames stay queued and go
                // at a later flush.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::ENOBUFS)) => {
                    return Ok(())
                }
                Err(e)
                    if e.raw_os_error() == Some(libc::ENXIO)
                        || e.raw_os_error() == Some(libc::ENETDOWN) =>
                {
                    return Err(PortError::Disconnected)
                }
                Err(e) => {
                    return Err(PortError::Os {
                        op: "sendto (TX ring)",
                        source: e,
                    })
                }
            }
        }
        self.tx_pending = 0;
        Ok(())
    }

    fn lend(
        &mut self,
        lro: bool,
        deposit: &mut dyn FnMut(&VirtioNetHdr, &[&[u8]]),
    ) -> Result<bool, PortError> {
        PacketPort::lend(self, lro, deposit)
    }

    fn lro(&self) -> bool {
        self.cfg.lro
    }

    fn fd(&self) -> RawFd {
        self.rx.as_raw_fd()
    }

    fn iface_name(&self) -> &str {
        &self.name
    }
}

ring_port!(PacketPort);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_partial_checksums() {
        let a = sockaddr_ll(ETH_P_ALL, 7);
        assert_eq!(u16::from_ne_bytes([a[0], a[1]]), 17);
        assert_eq!(&a[2..4], &[0, 3]);
        assert_eq!(i32::from_ne_bytes(a[4..8].try_into().unwrap()), 7);
        let mut f = vec![0u8; 60];
        f[12..14].copy_from_slice(&[8, 0]);
        f[14] = 0x45;
        f[23] = 6;
        let h = partial_csum_hdr(&f);
        assert_eq!(
            (h.flags, h.csum_start, h.csum_offset),
            (F_NEEDS_CSUM, 34, 16)
        );
        f[23] = 1;
        assert_eq!(partial_csum_hdr(&f).flags, 0);
        assert_eq!(partial_csum_hdr(&f[..20]).flags, 0);
    }

    #[test]
    fn a_missing_interface_is_named() {
        assert!(matches!(
            PacketPort::open("nicdma-nonesuch"),
            Err(PortError::NoSuchInterface(n)) if n == "nicdma-nonesuch"
        ));
    }
}
