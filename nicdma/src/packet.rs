//! The AF_PACKET backend: a [`Port`] on a Linux interface (a veth end)
//! through two packet sockets with rings mapped into this process — the
//! fallback where XDP is unavailable.
//!
//! ```text
//!  RX socket (TPACKET_V2)                 TX socket (TPACKET_V2, QDISC_BYPASS)
//!  +-------+-------+-- ... --+            +-------+-------+-- ... --+
//!  | frame | frame |         |            | frame | frame |         |
//!  +-------+-------+-- ... --+            +-------+-------+-- ... --+
//!   kernel writes a frame into a slot,     the TX DMA gathers a frame's lines
//!   marks it USER and wakes the socket;    into a free frame (offloads done on
//!   receive() lends the frames waiting     the way), marks it SEND_REQUEST;
//!   (the NIC copies them into lines: the   flush() kicks all queued frames out
//!   backend's one RX copy), then gives     with one sendto()
//!   the slots back
//! ```
//!
//! * The RX ring has a status word per slot, so each frame is readable (and
//!   the socket polls readable) as soon as the kernel has written it. (It
//!   was TPACKET_V3 before: a block goes over only when full or when its
//!   timeout expires, and a lone request waited for that timeout, a few
//!   milliseconds here: redis-server at `-P 1` made 9-12k requests/s with
//!   a 4 ms median latency.) The socket ignores outgoing frames
//!   (`PACKET_IGNORE_OUTGOING`), so the port does not see its own.
//! * The TX ring uses TPACKET_V2 (V3's TX ring has no advantage for fixed
//!   frames) and `PACKET_QDISC_BYPASS`: frames go straight to the driver.
//!   With `vnet_hdr` each TX frame has a virtio header too: its `hdr_len`
//!   is the whole frame, so the kernel copies the frame into the skb (else
//!   it attaches the ring page as a fragment, which a veth copies out again
//!   into a page it allocates: 3.5% of redis-server's time at `-P 16`), and
//!   a TCP/UDP checksum goes out partial (`F_NEEDS_CSUM`, the checksum
//!   offload of `ringtx`), not computed here.
//! * Copies, counted in [`PortCopies`]: RX copies each frame once from the
//!   ring into segment lines (the ring is the kernel's memory, not line
//!   memory); TX gathers each frame's lines once into a ring frame.
//!   What would remove the RX copy: lines that are 64-byte slots of the ring
//!   itself, which AF_PACKET cannot give (it places a frame at an offset of
//!   its own choosing inside a slot it reuses).
//! * Receive coalescing ([`PacketConfig::lro`], on by default): a run of
//!   one TCP flow's in-order segments waiting in the ring is lent as one GSO
//!   frame (merged headers in a small buffer, payloads where they lie in
//!   the ring; see `ringrx`), so the stack handles one frame and sends one
//!   ACK; the copy into lines stays one.
//! * GSO on receive ([`PacketConfig::vnet_hdr`], on by default): the RX
//!   socket has `PACKET_VNET_HDR`, so the kernel writes a virtio header in
//!   front of each frame and hands a GSO frame (a veth peer's TSO: up to
//!   64 KiB) over whole in one 68 KiB slot; it is lent alone with that
//!   header (`gso_type`, `gso_size`, partial checksum), never coalesced.
//!   Without it, the link partner must not hand over GSO frames (they
//!   would be cut to the slot and dropped, counted in `rx_dropped`): turn
//!   its segmentation offloads off (`ethtool -K <peer> tso off gso off`).
//!   Partial checksums are fine: the port passes them on as `F_NEEDS_CSUM`.

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
const PACKET_VNET_HDR: libc::c_int = 15;
/// `struct virtio_net_hdr` as AF_PACKET writes it in front of a frame.
const PKT_VNET_LEN: usize = 10;
const TPACKET_V2: libc::c_int = 1;
const ETH_P_ALL: u16 = 0x0003;

const TP_STATUS_KERNEL: u32 = 0;
const TP_STATUS_USER: u32 = 1;
const TP_STATUS_SEND_REQUEST: u32 = 1;
const TP_STATUS_SENDING: u32 = 2;
const TP_STATUS_CSUMNOTREADY: u32 = 1 << 3;
const TP_STATUS_CSUM_VALID: u32 = 1 << 7;
const PACKET_OUTGOING: u8 = 4;

/// `TPACKET_ALIGN(sizeof(struct tpacket2_hdr))`: where the `sockaddr_ll`
/// follows each RX frame's header.
const TP2_HDR_LEN: usize = 32;
/// Frame bits of an RX slot's status: cut to the slot (`TP_STATUS_COPY`),
/// frames lost before it (`TP_STATUS_LOSING`).
const TP_STATUS_COPY: u32 = 1 << 1;
/// Where a TPACKET_V2 TX frame's data starts (`TPACKET2_HDRLEN -
/// sizeof(struct sockaddr_ll)`).
const TP2_DATA_OFF: usize = 32;

/// Sizes of an AF_PACKET port's rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketConfig {
    /// RX frame slots.
    pub rx_frames: usize,
    /// Bytes of one RX frame slot: 2048 or 4096, or a multiple of 4096 (the
    /// frame and the ring's header of about 80 bytes must fit; with
    /// `vnet_hdr`, a GSO frame of up to 64 KiB).
    pub rx_frame_size: usize,
    /// Receive with `PACKET_VNET_HDR`: the kernel hands over GSO frames
    /// (a veth peer's TSO, GRO) whole with their virtio header, so a
    /// 64 KiB send of the kernel is one frame here, not 45.
    pub vnet_hdr: bool,
    /// TX frames.
    pub tx_frames: usize,
    /// Bytes of one TX frame slot (a power of two, at least 2048).
    pub tx_frame_size: usize,
    /// Coalesce runs of TCP segments waiting in the ring into GSO frames on
    /// receive (LRO, see `ringrx`); no extra copy.
    pub lro: bool,
}

impl Default for PacketConfig {
    fn default() -> Self {
        PacketConfig {
            rx_frames: 512,
            rx_frame_size: 68 << 10,
            vnet_hdr: true,
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
    /// The next RX slot to read.
    rx_head: usize,
    tx_head: usize,
    /// TX slots from `tx_head` on known to be ours (a slot the kernel gave
    /// back stays ours until we commit it), so `free` reads no status word
    /// twice.
    tx_known_free: usize,
    /// Bytes of the virtio header in front of each TX frame (0 without
    /// `PACKET_VNET_HDR` on the TX socket).
    tx_vnet: usize,
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
        if cfg.rx_frames == 0
            || !(matches!(cfg.rx_frame_size, 2048 | 4096) || cfg.rx_frame_size.is_multiple_of(4096))
            || cfg.tx_frames == 0
            || !cfg.tx_frame_size.is_power_of_two()
            || cfg.tx_frame_size < 2048
        {
            return Err(bad_cfg(
                "RX frame size 2048, 4096 or a multiple of 4096, TX frame size a power of \
                 two >= 2048, frame counts > 0",
            ));
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
        // Both rings: TPACKET_V2 frame slots in page-sized (or slot-sized)
        // blocks, so slot i is at i * slot size.
        let ring_req = |frames: usize, frame_size: usize| {
            let per_block = 4096usize.max(frame_size);
            let blocks = (frames * frame_size).div_ceil(per_block);
            let frames = blocks * per_block / frame_size;
            let mut req = Vec::with_capacity(16);
            for v in [per_block, blocks, frame_size, frames] {
                req.extend_from_slice(&(v as u32).to_ne_bytes());
            }
            (req, frames, per_block * blocks)
        };
        // RX: made with protocol 0 (it receives nothing until bound, so the
        // ring holds only this interface's frames).
        let rx = open(0)?;
        sock::setsockopt_int(rx.as_fd(), SOL_PACKET, PACKET_VERSION, TPACKET_V2)
            .map_err(|e| setup_err("PACKET_VERSION V2 (RX)", e))?;
        // Best effort (Linux 4.20+); without it, outgoing frames are skipped
        // by their packet type.
        let _ = sock::setsockopt_int(rx.as_fd(), SOL_PACKET, PACKET_IGNORE_OUTGOING, 1);
        // Before the ring (the kernel refuses it after); without it (a kernel
        // that has no virtio headers on rings) the peer must not send GSO frames.
        let vnet_hdr = cfg.vnet_hdr
            && sock::setsockopt_int(rx.as_fd(), SOL_PACKET, PACKET_VNET_HDR, 1).is_ok();
        let (req, rx_frames, rx_len) = ring_req(cfg.rx_frames, cfg.rx_frame_size);
        sock::setsockopt(rx.as_fd(), SOL_PACKET, PACKET_RX_RING, &req)
            .map_err(|e| setup_err("PACKET_RX_RING", e))?;
        let rx_ring =
            Mmap::shared_fd(rx.as_fd(), rx_len, 0).map_err(|e| setup_err("mmap RX ring", e))?;
        sock::bind(rx.as_fd(), &sockaddr_ll(ETH_P_ALL, ifindex))
            .map_err(|e| setup_err("bind RX", e))?;

        // TX: protocol 0 (receives nothing), V2 ring, no qdisc.
        let tx = open(0)?;
        sock::setsockopt_int(tx.as_fd(), SOL_PACKET, PACKET_VERSION, TPACKET_V2)
            .map_err(|e| setup_err("PACKET_VERSION V2", e))?;
        sock::setsockopt_int(tx.as_fd(), SOL_PACKET, PACKET_QDISC_BYPASS, 1)
            .map_err(|e| setup_err("PACKET_QDISC_BYPASS", e))?;
        // A virtio header in front of each TX frame (best effort): its
        // `hdr_len` (the whole frame) makes the kernel copy the frame into the
        // skb's linear part, where it would otherwise attach the ring's page
        // as a fragment that a veth must copy out again (a page allocated per
        // frame), and `F_NEEDS_CSUM` lets a checksum stay partial.
        let tx_vnet = if cfg.vnet_hdr
            && sock::setsockopt_int(tx.as_fd(), SOL_PACKET, PACKET_VNET_HDR, 1).is_ok()
        {
            PKT_VNET_LEN
        } else {
            0
        };
        let (req, tx_frames, tx_len) = ring_req(cfg.tx_frames, cfg.tx_frame_size);
        sock::setsockopt(tx.as_fd(), SOL_PACKET, PACKET_TX_RING, &req)
            .map_err(|e| setup_err("PACKET_TX_RING", e))?;
        let tx_ring =
            Mmap::shared_fd(tx.as_fd(), tx_len, 0).map_err(|e| setup_err("mmap TX ring", e))?;
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
            cfg: PacketConfig {
                rx_frames,
                tx_frames,
                vnet_hdr,
                ..cfg
            },
            rx_head: 0,
            tx_known_free: 0,
            tx_vnet,
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

    /// Waits up to `timeout` for a frame to arrive; returns whether one
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
        self.rx_status(self.rx_head) & TP_STATUS_USER != 0
    }

    fn rx_status(&self, i: usize) -> u32 {
        self.rx_ring
            .atomic_u32(i * self.cfg.rx_frame_size)
            .map_or(TP_STATUS_KERNEL, |a| a.load(Ordering::Acquire))
    }

    /// Gives the next `k` RX slots back to the kernel.
    fn release(&mut self, k: usize) {
        for _ in 0..k {
            if let Some(st) = self
                .rx_ring
                .atomic_u32(self.rx_head * self.cfg.rx_frame_size)
            {
                st.store(TP_STATUS_KERNEL, Ordering::Release);
            }
            self.rx_head = (self.rx_head + 1) % self.cfg.rx_frames;
        }
    }

    fn tx_status(&self, i: usize) -> Option<&std::sync::atomic::AtomicU32> {
        self.tx_ring.atomic_u32(i * self.cfg.tx_frame_size)
    }
}

/// One RX slot the kernel handed over, as its `tpacket2_hdr` describes it.
#[derive(Debug, Clone, Copy, Default)]
struct Pkt {
    /// The frame's bytes in the ring, when they are whole and in the slot.
    frame: Option<(usize, usize)>,
    status: u32,
    outgoing: bool,
    /// The virtio header in front of the frame (with `vnet_hdr`).
    vnet: Option<VirtioNetHdr>,
}

impl PacketPort {
    /// Slot `i`, which the kernel has handed over (`TP_STATUS_USER`).
    fn pkt(&self, i: usize) -> Pkt {
        let at = i * self.cfg.rx_frame_size;
        let end = at + self.cfg.rx_frame_size;
        let Some(hdr) = self.rx_ring.read::<16>(at) else {
            return Pkt::default();
        };
        let word = |i: usize| u32::from_ne_bytes(hdr[i..i + 4].try_into().expect("4"));
        let status = word(0);
        let len = word(4) as usize;
        let snaplen = word(8) as usize;
        let mac = usize::from(u16::from_ne_bytes([hdr[12], hdr[13]]));
        let pkttype = self
            .rx_ring
            .read::<1>(at + TP2_HDR_LEN + 10)
            .map_or(0, |b| b[0]);
        let vnet = if self.cfg.vnet_hdr && mac >= TP2_HDR_LEN + PKT_VNET_LEN {
            self.rx_ring
                .read::<PKT_VNET_LEN>(at + mac - PKT_VNET_LEN)
                .and_then(|b| {
                    let mut h = [0u8; crate::meta::VNET_HDR_LEN];
                    h[..PKT_VNET_LEN].copy_from_slice(&b);
                    VirtioNetHdr::from_bytes(&h)
                })
        } else {
            None
        };
        Pkt {
            frame: (snaplen == len && status & TP_STATUS_COPY == 0 && at + mac + snaplen <= end)
                .then_some((at + mac, snaplen)),
            status,
            outgoing: pkttype == PACKET_OUTGOING,
            vnet,
        }
    }

    /// The receive path: lends the frame in the next slot (or, with `lro`, a
    /// coalesced run of the frames waiting from there), then gives the
    /// slots back.
    fn lend(
        &mut self,
        lro: bool,
        deposit: &mut dyn FnMut(&VirtioNetHdr, &[&[u8]]),
    ) -> Result<bool, PortError> {
        loop {
            if !self.rx_ready() {
                return Ok(false);
            }
            // The frames waiting from here: a run of good ones (only the
            // first, without `lro`).
            let want = if lro { ringrx::LRO_MAX } else { 1 };
            let mut run = [Pkt::default(); ringrx::LRO_MAX];
            let mut good = 0;
            let n = self.cfg.rx_frames;
            while good < want {
                let i = (self.rx_head + good) % n;
                if good > 0 && self.rx_status(i) & TP_STATUS_USER == 0 {
                    break;
                }
                let p = self.pkt(i);
                if p.outgoing || p.frame.is_none() {
                    break;
                }
                // A GSO frame is lent alone, as the kernel made it.
                let gso = p.vnet.is_some_and(|h| h.gso_type != crate::meta::gso::NONE);
                if gso && good > 0 {
                    break;
                }
                run[good] = p;
                good += 1;
                if good == n || gso {
                    break;
                }
            }
            if good == 0 {
                // Our own frame, or one cut to the slot: skipped.
                if !self.pkt(self.rx_head).outgoing {
                    self.copies.rx_dropped += 1;
                }
                self.release(1);
                continue;
            }
            let first = run[0];
            let ring = &self.rx_ring;
            let frame = |i: usize| {
                run.get(i)
                    .filter(|_| i < good)
                    .and_then(|p| p.frame)
                    .and_then(|(o, l)| ring.slice(o, l))
            };
            let mut hdr = [0u8; ringrx::LRO_HDR_MAX];
            let (k, merged) = if lro && good > 1 {
                let partial = |i: usize| {
                    run.get(i)
                        .is_some_and(|p| p.status & TP_STATUS_CSUMNOTREADY != 0)
                };
                ringrx::plan(good, frame, partial, &mut hdr)
            } else {
                (1, None)
            };
            let mut pieces: [&[u8]; ringrx::LRO_MAX + 1] = [&[]; ringrx::LRO_MAX + 1];
            let (vnet, count) = match merged {
                None => {
                    let f = frame(0).unwrap_or(&[]);
                    pieces[0] = f;
                    let vnet = if let Some(h) = first.vnet {
                        h
                    } else if first.status & TP_STATUS_CSUMNOTREADY != 0 {
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
            self.release(k);
            return Ok(true);
        }
    }
}

impl PacketPort {
    /// Hands TX slot `tx_head`, holding a `len`-byte frame, to the kernel
    /// with virtio header `h` (when the socket takes one).
    fn commit_with(&mut self, len: usize, h: &VirtioNetHdr) {
        let base = self.tx_head * self.cfg.tx_frame_size;
        if self.tx_vnet > 0 {
            self.tx_ring
                .write(base + TP2_DATA_OFF, &h.to_bytes()[..PKT_VNET_LEN]);
        }
        // tp_len and tp_snaplen, then the status that hands the frame over.
        let l = ((len + self.tx_vnet) as u32).to_ne_bytes();
        self.tx_ring.write(base + 4, &l);
        self.tx_ring.write(base + 8, &l);
        if let Some(st) = self.tx_status(self.tx_head) {
            st.store(TP_STATUS_SEND_REQUEST, Ordering::Release);
        }
        self.tx_head = (self.tx_head + 1) % self.cfg.tx_frames;
        self.tx_known_free = self.tx_known_free.saturating_sub(1);
        self.tx_pending += 1;
    }
}

impl TxSlots for PacketPort {
    fn free(&mut self) -> usize {
        let n = self.cfg.tx_frames;
        while self.tx_known_free < n.min(256) {
            let i = (self.tx_head + self.tx_known_free) % n;
            match self.tx_status(i).map(|s| s.load(Ordering::Acquire)) {
                Some(TP_STATUS_SEND_REQUEST | TP_STATUS_SENDING) | None => break,
                // Available (0), or rejected (WRONG_FORMAT): ours again.
                Some(_) => self.tx_known_free += 1,
            }
        }
        self.tx_known_free
    }

    fn capacity(&self) -> usize {
        (self.cfg.tx_frame_size - TP2_DATA_OFF - self.tx_vnet).min(self.mtu as usize + 14)
    }

    fn next(&mut self, len: usize) -> Result<&mut [u8], PortError> {
        let at = self.tx_head * self.cfg.tx_frame_size + TP2_DATA_OFF + self.tx_vnet;
        self.tx_ring.slice_mut(at, len).ok_or(PortError::TooLarge {
            len,
            max: self.cfg.tx_frame_size - TP2_DATA_OFF - self.tx_vnet,
        })
    }

    fn commit(&mut self, len: usize) {
        let h = VirtioNetHdr {
            hdr_len: len as u16,
            ..VirtioNetHdr::default()
        };
        self.commit_with(len, &h);
    }

    fn csum_offload(&self) -> bool {
        self.tx_vnet > 0
    }

    fn commit_partial(&mut self, len: usize, csum_start: u16, csum_offset: u16) {
        let h = VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            hdr_len: len as u16,
            csum_start,
            csum_offset,
            ..VirtioNetHdr::default()
        };
        self.commit_with(len, &h);
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
