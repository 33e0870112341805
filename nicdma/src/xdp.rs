//! The AF_XDP backend: a [`Port`] on one queue of a Linux interface (a veth
//! end) through an AF_XDP socket, its UMEM and four rings, with the
//! XSKMAP-redirect XDP program loaded and attached by this process.
//!
//! ```text
//!            UMEM (this process's memory, registered with XDP_UMEM_REG)
//!  +------------------------------+------------------------------+
//!  | RX frames 0 .. n/2           | TX frames n/2 .. n (in runs) |
//!  +------------------------------+------------------------------+
//!    ^ fill ring: empty frames      ^ TX ring: frames to send
//!    | for the kernel               | (the TX DMA gathers lines here,
//!    v RX ring: frames it wrote     v  offloads applied; flush() kicks)
//!      (receive() lends each;         completion ring: frames sent,
//!       the NIC copies it into        reused
//!       lines, then it goes back
//!       to the fill ring)
//! ```
//!
//! * The program: `r2 = ctx->rx_queue_index; r1 = xskmap; r3 = XDP_PASS;
//!   call bpf_redirect_map; exit` (see `sys::bpf::redirect_program`), loaded
//!   with the `bpf()` system call (with `BPF_F_XDP_HAS_FRAGS` where the
//!   socket takes multi-buffer frames), attached in generic (SKB) mode, or
//!   native mode with [`XdpMode`], through a BPF link: the link is a
//!   descriptor of this process, so the program goes away when the port
//!   drops or the process dies, even by SIGKILL. Frames for other queues,
//!   or while no socket is in the map, pass to the kernel.
//! * Multi-buffer ([`XdpConfig::multi_buffer`], on by default: `XDP_USE_SG`):
//!   a frame longer than one UMEM frame spans several descriptors
//!   (`XDP_PKT_CONTD` on all but the last), so the interface's MTU may be a
//!   jumbo one (64000 on a veth: one skb per 64 KB instead of per 1.5 KB).
//!   RX lends such a frame as one chunk per descriptor; TX takes a run of
//!   consecutive UMEM frames, so the gather writes one contiguous buffer
//!   and the port cuts it into descriptors.
//! * TX checksum offload ([`XdpConfig::csum_offload`]): a frame that asks
//!   for its checksum goes out with it partial and TX metadata asking the
//!   kernel for it (`XDP_TXMD_FLAGS_CHECKSUM`); the skb is then
//!   `CHECKSUM_PARTIAL`, which a veth peer takes as verified, so nobody
//!   reads the payload for it. It needs an unaligned-chunk UMEM with
//!   `tx_metadata_len` (so that a multi-buffer frame stays contiguous
//!   behind its 24 bytes of metadata).
//! * On a veth the socket runs in copy mode (zero-copy binds fail there): the
//!   kernel copies each frame into UMEM frames (at offset 256), and the
//!   port copies it once more into segment lines (counted in
//!   [`PortCopies::rx_copy_bytes`]). The UMEM cannot be the line memory: the
//!   kernel writes whole frames (up to a frame size of 4096 bytes, at an
//!   offset of its choosing) while the memory's lines are 64-byte slots
//!   that are hashed and deduplicated in place. What would remove the copy:
//!   a zero-copy driver and a line store whose leaf lines live in the UMEM
//!   (frames of whole lines interned where they lie, the frame given back to
//!   the fill ring only when its lines are released).
//! * Receive coalescing ([`XdpConfig::lro`], on by default): a run of one
//!   TCP flow's in-order segments waiting in the RX ring is lent as one GSO
//!   frame, its merged headers in a small buffer and the payloads where they
//!   lie in the UMEM (see `ringrx`), so the stack handles one frame and
//!   sends one ACK; the copy into lines stays one.
//! * need_wakeup is on: the TX kick (`sendto`) and the fill-ring kick
//!   (`recvfrom`) are made only when the kernel asks (in copy mode, TX
//!   always needs the kick); TX is batched: frames queue during a NIC pass
//!   and one [`Port::flush`] kicks them out (one kick may send the whole
//!   ring: `XDP_MAX_TX_SKB_BUDGET`); lent RX frames go back to the fill
//!   ring in one batch at the next receive.
//! * The link partner must send wire frames: on a veth, turn its checksum
//!   and segmentation offloads off (`ethtool -K <peer> tx off tso off gso
//!   off`): XDP sees neither the partial-checksum metadata nor GSO.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::meta::VirtioNetHdr;
use crate::port::{PortCopies, PortError};
use crate::ringport::{ring_port, RingBackend};
use crate::ringrx;
use crate::ringtx::TxSlots;
use crate::sys::bpf;
use crate::sys::mem::Mmap;
use crate::sys::sock;

const AF_XDP: libc::c_int = 44;
const SOL_XDP: libc::c_int = 283;
const XDP_MMAP_OFFSETS: libc::c_int = 1;
const XDP_RX_RING: libc::c_int = 2;
const XDP_TX_RING: libc::c_int = 3;
const XDP_UMEM_REG: libc::c_int = 4;
const XDP_UMEM_FILL_RING: libc::c_int = 5;
const XDP_UMEM_COMPLETION_RING: libc::c_int = 6;
const XDP_STATISTICS: libc::c_int = 7;
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;
const XDP_COPY: u16 = 1 << 1;
const XDP_USE_NEED_WAKEUP: u16 = 1 << 3;
const XDP_USE_SG: u16 = 1 << 4;
/// `xdp_desc.options`: more descriptors of this frame follow.
const XDP_PKT_CONTD: u32 = 1;
/// `xdp_desc.options`: a `struct xsk_tx_metadata` precedes the data.
const XDP_TX_METADATA: u32 = 1 << 1;
/// `xsk_tx_metadata.flags`: complete the checksum at `csum_start +
/// csum_offset` (copy mode: the skb goes out `CHECKSUM_PARTIAL`).
const XDP_TXMD_FLAGS_CHECKSUM: u64 = 1 << 1;
/// `XDP_UMEM_UNALIGNED_CHUNK_FLAG`.
const XDP_UMEM_UNALIGNED_CHUNK_FLAG: u32 = 1;
/// `XDP_UMEM_TX_METADATA_LEN`: the registration's `tx_metadata_len` is
/// meant (Linux 6.11+; without it the kernel ignores the field).
const XDP_UMEM_TX_METADATA_LEN: u32 = 1 << 2;
/// `sizeof(struct xsk_tx_metadata)`: the UMEM's `tx_metadata_len`.
const TX_META_LEN: u32 = 24;
/// The headroom the kernel leaves before a received frame in its UMEM
/// frame (`XDP_PACKET_HEADROOM`).
const XDP_PACKET_HEADROOM: u32 = 256;
/// Unaligned-mode RX addresses carry the data's offset in their top 16
/// bits.
const XSK_UNALIGNED_BUF_OFFSET_SHIFT: u32 = 48;
/// The most descriptors of one multi-buffer frame: copy-mode TX builds an
/// skb of the first in its head and the rest in page frags
/// (`MAX_SKB_FRAGS`, 17).
const MAX_DESCS: usize = 18;
const XDP_RING_NEED_WAKEUP: u32 = 1;
const PGOFF_RX: u64 = 0;
const PGOFF_TX: u64 = 0x8000_0000;
const PGOFF_FILL: u64 = 0x1_0000_0000;
const PGOFF_COMP: u64 = 0x1_8000_0000;

/// Sizes of an AF_XDP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XdpConfig {
    /// The interface queue to bind (a veth has one per CPU it was made
    /// with; 0 is always there).
    pub queue: u32,
    /// UMEM frames (half for RX, half for TX; a power of two).
    pub frames: u32,
    /// Bytes of one UMEM frame (2048 or 4096).
    pub frame_size: u32,
    /// Entries of each ring (a power of two, at least `frames / 2`).
    pub ring: u32,
    /// Coalesce runs of TCP segments into GSO frames on receive (LRO, see
    /// `ringrx`); no extra copy.
    pub lro: bool,
    /// Multi-buffer frames (`XDP_USE_SG` and a program loaded with
    /// `BPF_F_XDP_HAS_FRAGS`): a frame longer than one UMEM frame spans
    /// several descriptors (`XDP_PKT_CONTD`), so the interface's MTU may
    /// exceed the frame size (a 64000-byte MTU on a veth: one skb per 64
    /// KB instead of per 1.5 KB). Where the kernel refuses it, the port
    /// opens without it (see [`XdpPort::multi_buffer`]).
    pub multi_buffer: bool,
    /// Where the program attaches.
    pub mode: XdpMode,
    /// TX checksum offload through AF_XDP TX metadata (Linux 6.11+): a
    /// frame asking for its checksum goes to the kernel with it partial
    /// (`XDP_TXMD_FLAGS_CHECKSUM`), which on a veth the peer takes as
    /// verified, so neither the port nor the peer reads the payload for
    /// it. Needs an unaligned-chunk UMEM with `tx_metadata_len`, so that a
    /// multi-buffer frame stays contiguous behind its metadata; where the
    /// kernel refuses that, the port completes checksums itself.
    pub csum_offload: bool,
}

/// Where the XDP program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// Generic XDP (`XDP_FLAGS_SKB_MODE`): in the kernel's skb receive
    /// path; every driver has it.
    Generic,
    /// Native (driver) XDP (`XDP_FLAGS_DRV_MODE`): in the driver's receive
    /// path (a veth has it); the socket still binds in copy mode.
    Native,
    /// Native where the driver takes it, else generic.
    Auto,
}

impl Default for XdpConfig {
    fn default() -> Self {
        XdpConfig {
            queue: 0,
            // 16 MiB of RX frames: more than a 4 MiB receive window of
            // 1500-byte frames takes (2900), so a slow receiver never finds
            // the fill ring empty.
            frames: 8192,
            frame_size: 4096,
            ring: 4096,
            lro: true,
            multi_buffer: true,
            mode: XdpMode::Generic,
            csum_offload: true,
        }
    }
}

/// The kernel's drop counters of an AF_XDP socket (`XDP_STATISTICS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpStats {
    /// Frames dropped for reasons other than a full ring.
    pub rx_dropped: u64,
    /// Invalid RX descriptors.
    pub rx_invalid_descs: u64,
    /// Invalid TX descriptors.
    pub tx_invalid_descs: u64,
    /// Frames dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Times the fill ring was empty when a frame came.
    pub rx_fill_ring_empty: u64,
    /// Times the TX ring was empty when kicked.
    pub tx_ring_empty: u64,
}

/// One of the four rings: producer, consumer and flags words and the
/// descriptor array, in a mapping of the socket.
struct Ring {
    map: Mmap,
    producer: usize,
    consumer: usize,
    flags: Option<usize>,
    desc: usize,
    mask: u32,
    /// Our copy of the index we advance.
    local: u32,
    /// The other side's index as last read.
    cached: u32,
}

impl Ring {
    fn word(&self, off: usize) -> &AtomicU32 {
        self.map
            .atomic_u32(off)
            .expect("ring word offsets were checked when mapped")
    }

    /// (consumer side) Entries the kernel produced that we have not taken.
    fn available(&mut self) -> u32 {
        if self.cached == self.local {
            self.cached = self.word(self.producer).load(Ordering::Acquire);
        }
        self.cached.wrapping_sub(self.local)
    }

    /// (producer side) Entries we may still produce.
    fn room(&mut self) -> u32 {
        self.cached = self.word(self.consumer).load(Ordering::Acquire);
        (self.mask + 1).saturating_sub(self.local.wrapping_sub(self.cached))
    }

    fn needs_wakeup(&self) -> bool {
        self.flags
            .is_some_and(|f| self.word(f).load(Ordering::Relaxed) & XDP_RING_NEED_WAKEUP != 0)
    }

    fn slot(&self, idx: u32, size: usize) -> usize {
        self.desc + (idx & self.mask) as usize * size
    }

    /// Publishes our index (producer or consumer, per `off`).
    fn publish(&self, off: usize) {
        self.word(off).store(self.local, Ordering::Release);
    }
}

/// The TX frames, handed out as runs of consecutive frames (one frame's
/// bytes are contiguous in the UMEM however many descriptors carry it), in
/// ring order; a frame comes back when the kernel completes it, and the
/// ring's tail moves past every completed frame (completions may come out
/// of order: the peer frees skbs in its own order).
#[derive(Debug)]
struct TxFrames {
    /// The first TX frame's index in the UMEM.
    first: u32,
    /// Frames in the TX half.
    n: u32,
    /// Frames handed out so far (a run that would wrap starts at 0, the
    /// frames skipped at the end counted as handed out and done).
    head: u64,
    /// Frames given back so far (`tail <= head`).
    tail: u64,
    /// Per frame: not in flight (completed, or never sent).
    done: Vec<bool>,
    /// Per frame that starts a run: the run's length (1 elsewhere).
    run: Vec<u32>,
}

impl TxFrames {
    fn new(first: u32, n: u32) -> TxFrames {
        TxFrames {
            first,
            n,
            head: 0,
            tail: 0,
            done: vec![true; n as usize],
            run: vec![1; n as usize],
        }
    }

    fn free(&self) -> u32 {
        self.n - (self.head - self.tail) as u32
    }

    /// Where a run of `need` frames would start (its offset in the TX half)
    /// and how many frames at the end it skips, if there is room.
    fn place(&self, need: u32) -> Option<(u32, u32)> {
        let pos = (self.head % u64::from(self.n)) as u32;
        let skip = if pos + need > self.n { self.n - pos } else { 0 };
        (need <= self.n && skip + need <= self.free()).then_some(((pos + skip) % self.n, skip))
    }

    /// Takes the run [`TxFrames::place`] found.
    fn take(&mut self, start: u32, skip: u32, need: u32) {
        self.head += u64::from(skip);
        for i in 0..need {
            self.done[(start + i) as usize] = false;
            self.run[(start + i) as usize] = 1;
        }
        self.run[start as usize] = need;
        self.head += u64::from(need);
        // The skipped frames are done: the tail passes them when it comes.
        self.advance();
    }

    /// The run starting at frame `idx` of the UMEM (or frame `idx` alone)
    /// was completed.
    fn complete(&mut self, idx: u32) {
        let Some(i) = idx.checked_sub(self.first).map(|i| i as usize) else {
            return;
        };
        let Some(&len) = self.run.get(i) else {
            return;
        };
        let end = (i + len as usize).min(self.done.len());
        for d in &mut self.done[i..end] {
            *d = true;
        }
    }

    /// Moves the tail past completed frames.
    fn advance(&mut self) {
        while self.tail < self.head && self.done[(self.tail % u64::from(self.n)) as usize] {
            self.tail += 1;
        }
    }
}

/// A [`Port`] on one queue of an interface through AF_XDP.
pub struct XdpPort {
    // Declared first: dropped first, detaching the program before the socket
    // goes.
    link: OwnedFd,
    _prog: OwnedFd,
    _map: OwnedFd,
    rx: Ring,
    tx: Ring,
    fill: Ring,
    comp: Ring,
    xsk: OwnedFd,
    umem: Mmap,
    cfg: XdpConfig,
    name: String,
    mac: [u8; 6],
    mtu: u32,
    /// Whether the socket is bound with `XDP_USE_SG`.
    sg: bool,
    /// Whether the program runs in native (driver) mode.
    native: bool,
    /// The UMEM's `tx_metadata_len` (0: no TX metadata, aligned chunks).
    meta: u32,
    /// The TX frames (the UMEM's upper half), handed out in runs.
    tx_frames: TxFrames,
    /// TX descriptors published but not yet taken by the kernel.
    tx_pending: bool,
    /// The RX frame lent by the last `receive`, to go back to the fill ring.
    rx_held: Vec<u64>,
    copies: PortCopies,
}

impl fmt::Debug for XdpPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdpPort")
            .field("name", &self.name)
            .field("fd", &self.xsk.as_raw_fd())
            .field("link_fd", &self.link.as_raw_fd())
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn os(op: &'static str) -> impl Fn(io::Error) -> PortError {
    move |source| match source.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => PortError::NotPermitted(op),
        _ => PortError::Os { op, source },
    }
}

/// The (MAC, MTU) of interface `name`, asked through a throw-away UDP socket
/// of the calling thread's namespace.
pub(crate) fn iface_info(name: &str) -> Result<([u8; 6], u32), PortError> {
    let s = sock::socket(libc::AF_INET, libc::SOCK_DGRAM, 0).map_err(os("socket"))?;
    let mac = sock::hw_addr(s.as_fd(), name).map_err(os("SIOCGIFHWADDR"))?;
    let mtu = sock::mtu(s.as_fd(), name).map_err(os("SIOCGIFMTU"))?;
    Ok((mac, mtu))
}

/// Whether AF_XDP works here (an AF_XDP socket opens, and the redirect
/// program with its XSKMAP loads), and if not, why.
pub fn probe() -> Result<(), String> {
    if let Err(e) = sock::socket(AF_XDP, libc::SOCK_RAW, 0) {
        return Err(match e.raw_os_error() {
            Some(libc::EAFNOSUPPORT) => {
                "the kernel has no AF_XDP sockets (CONFIG_XDP_SOCKETS)".into()
            }
            Some(libc::EPERM | libc::EACCES) => "needs root (CAP_NET_RAW)".into(),
            _ => format!("AF_XDP socket: {e}"),
        });
    }
    let map = bpf::xskmap_create(1).map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => {
            "bpf() needs root (CAP_BPF and CAP_NET_ADMIN)".to_string()
        }
        Some(libc::ENOSYS) => "the kernel has no bpf() system call".into(),
        _ => format!("bpf(MAP_CREATE XSKMAP): {e}"),
    })?;
    let mut log = [0u8; 0];
    bpf::prog_load_xdp(&bpf::redirect_program(map.as_fd()), &mut log)
        .map(drop)
        .map_err(|e| format!("bpf(PROG_LOAD) of the XDP redirect program: {e}"))
}

impl XdpPort {
    /// Opens queue 0 of interface `name` (in the calling thread's network
    /// namespace) with the default sizes.
    pub fn open(name: &str) -> Result<XdpPort, PortError> {
        Self::with_config(name, XdpConfig::default())
    }

    /// Opens `cfg.queue` of interface `name`.
    ///
    /// Errors: [`PortError::NotPermitted`] without CAP_NET_ADMIN/CAP_BPF,
    /// [`PortError::NoSuchInterface`], [`PortError::XdpBusy`] when the
    /// interface already has an XDP program, [`PortError::Unsupported`] on a
    /// kernel without AF_XDP (or without XDP links).
    pub fn with_config(name: &str, cfg: XdpConfig) -> Result<XdpPort, PortError> {
        if !cfg.frames.is_power_of_two()
            || !matches!(cfg.frame_size, 2048 | 4096)
            || cfg.frames / 2 < MAX_DESCS as u32
            || !cfg.ring.is_power_of_two()
            || cfg.ring < cfg.frames / 2
        {
            return Err(PortError::Os {
                op: "AF_XDP sizes",
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "frames a power of two >= 36, frame size 2048 or 4096, rings powers of two >= frames/2",
                ),
            });
        }
        if name == "lo" {
            // The program would take every loopback frame of the namespace
            // away from the kernel (every local connection).
            return Err(PortError::Unsupported {
                backend: "af_xdp",
                why: "refusing the loopback interface: its program would take every local connection's frames; use a veth".into(),
            });
        }
        let ifindex =
            sock::if_index(name).ok_or_else(|| PortError::NoSuchInterface(name.into()))?;
        let xsk = sock::socket(AF_XDP, libc::SOCK_RAW, 0).map_err(|e| match e.raw_os_error() {
            Some(libc::EAFNOSUPPORT) => PortError::Unsupported {
                backend: "af_xdp",
                why: "no AF_XDP sockets (CONFIG_XDP_SOCKETS)".into(),
            },
            _ => os("AF_XDP socket")(e),
        })?;
        // The kernel's copy-mode TX holds each frame's skb against the
        // socket's send buffer until the peer frees it: make room for every
        // TX frame (best effort: SO_SNDBUFFORCE needs CAP_NET_ADMIN).
        let want = (cfg.frames as usize / 2 * (cfg.frame_size as usize + 1024))
            .min(i32::MAX as usize) as i32;
        if sock::setsockopt_int(xsk.as_fd(), libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, want).is_err()
        {
            let _ = sock::setsockopt_int(xsk.as_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, want);
        }
        let fs = cfg.frame_size as usize;
        let umem = Mmap::anonymous(cfg.frames as usize * fs).map_err(os("mmap UMEM"))?;
        // struct xdp_umem_reg { u64 addr, len; u32 chunk_size, headroom,
        // flags, tx_metadata_len; }
        let reg = |flags: u32, meta: u32| {
            let mut reg = Vec::with_capacity(32);
            reg.extend_from_slice(&umem.addr().to_ne_bytes());
            reg.extend_from_slice(&(umem.len() as u64).to_ne_bytes());
            for v in [cfg.frame_size, 0, flags, meta] {
                reg.extend_from_slice(&v.to_ne_bytes());
            }
            sock::setsockopt(xsk.as_fd(), SOL_XDP, XDP_UMEM_REG, &reg)
        };
        // TX metadata for the checksum offload, in unaligned-chunk mode
        // (aligned chunks would need every descriptor of a multi-buffer
        // frame to leave room for metadata before it, breaking the frame's
        // contiguity); a kernel without it (before 6.11) gets plain chunks.
        let mut meta = 0;
        if cfg.csum_offload
            && reg(
                XDP_UMEM_UNALIGNED_CHUNK_FLAG | XDP_UMEM_TX_METADATA_LEN,
                TX_META_LEN,
            )
            .is_ok()
        {
            meta = TX_META_LEN;
        } else {
            reg(0, 0).map_err(os("XDP_UMEM_REG"))?;
        }
        for (opt, what) in [
            (XDP_UMEM_FILL_RING, "XDP_UMEM_FILL_RING"),
            (XDP_UMEM_COMPLETION_RING, "XDP_UMEM_COMPLETION_RING"),
            (XDP_RX_RING, "XDP_RX_RING"),
            (XDP_TX_RING, "XDP_TX_RING"),
        ] {
            sock::setsockopt(xsk.as_fd(), SOL_XDP, opt, &cfg.ring.to_ne_bytes())
                .map_err(os(what))?;
        }
        // struct xdp_mmap_offsets: rx, tx, fr, cr, each { producer,
        // consumer, desc, flags } (u64; without `flags` before Linux 5.4).
        let mut off = [0u8; 128];
        let n = sock::getsockopt(xsk.as_fd(), SOL_XDP, XDP_MMAP_OFFSETS, &mut off)
            .map_err(os("XDP_MMAP_OFFSETS"))?;
        let fields = if n >= 128 { 4 } else { 3 };
        let get = |ring: usize, field: usize| -> usize {
            let at = (ring * fields + field) * 8;
            u64::from_ne_bytes(off[at..at + 8].try_into().expect("8")) as usize
        };
        let map_ring = |idx: usize, entry: usize, pgoff: u64, what: &'static str| {
            let desc = get(idx, 2);
            let len = desc + cfg.ring as usize * entry;
            let map = Mmap::shared_fd(xsk.as_fd(), len, pgoff).map_err(os(what))?;
            let ring = Ring {
                producer: get(idx, 0),
                consumer: get(idx, 1),
                flags: (fields == 4).then(|| get(idx, 3)),
                desc,
                mask: cfg.ring - 1,
                local: 0,
                cached: 0,
                map,
            };
            let words_ok = [Some(ring.producer), Some(ring.consumer), ring.flags]
                .into_iter()
                .flatten()
                .all(|o| ring.map.atomic_u32(o).is_some());
            if !words_ok {
                return Err(PortError::Os {
                    op: what,
                    source: io::Error::other("ring offsets outside the mapping"),
                });
            }
            Ok(ring)
        };
        let rx = map_ring(0, 16, PGOFF_RX, "mmap RX ring")?;
        let tx = map_ring(1, 16, PGOFF_TX, "mmap TX ring")?;
        let mut fill = map_ring(2, 8, PGOFF_FILL, "mmap fill ring")?;
        let comp = map_ring(3, 8, PGOFF_COMP, "mmap completion ring")?;
        // Every RX frame goes to the fill ring (the kernel's indices start at
        // 0, like ours).
        let half = cfg.frames / 2;
        for i in 0..half {
            let at = fill.slot(i, 8);
            fill.map
                .write(at, &(u64::from(i) * fs as u64).to_ne_bytes());
        }
        fill.local = half;
        fill.publish(fill.producer);
        let tx_frames = TxFrames::new(half, cfg.frames - half);
        // Copy-mode TX sends at most this many descriptors per kick (32 by
        // default): let one kick send the whole ring (best effort, Linux
        // 6.17+).
        let _ = sock::setsockopt_int(
            xsk.as_fd(),
            SOL_XDP,
            XDP_MAX_TX_SKB_BUDGET,
            cfg.ring.min(i32::MAX as u32) as i32,
        );

        // struct sockaddr_xdp { u16 family, flags; u32 ifindex, queue_id,
        // shared_umem_fd; }
        let sockaddr = |sg: bool| {
            let mut sa = [0u8; 16];
            let flags = XDP_COPY | XDP_USE_NEED_WAKEUP | if sg { XDP_USE_SG } else { 0 };
            sa[0..2].copy_from_slice(&(AF_XDP as u16).to_ne_bytes());
            sa[2..4].copy_from_slice(&flags.to_ne_bytes());
            sa[4..8].copy_from_slice(&ifindex.to_ne_bytes());
            sa[8..12].copy_from_slice(&cfg.queue.to_ne_bytes());
            sa
        };
        let mut sg = cfg.multi_buffer;
        // A queue freed by a process that just exited stays busy for about
        // a second: retry for a while.
        let t0 = Instant::now();
        loop {
            match sock::bind(xsk.as_fd(), &sockaddr(sg)) {
                Ok(()) => break,
                Err(e)
                    if e.raw_os_error() == Some(libc::EBUSY)
                        && t0.elapsed() < Duration::from_secs(3) =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                // A kernel before 6.6 has no multi-buffer AF_XDP: without.
                Err(e)
                    if sg && matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) =>
                {
                    sg = false;
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    return Err(PortError::Os {
                        op: "bind AF_XDP",
                        source: io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!(
                                "{name} has no queue {} (or cannot take AF_XDP): {e}",
                                cfg.queue
                            ),
                        ),
                    })
                }
                Err(e) => return Err(os("bind AF_XDP")(e)),
            }
        }

        let map =
            bpf::xskmap_create(64.max(cfg.queue + 1)).map_err(os("bpf(MAP_CREATE XSKMAP)"))?;
        bpf::map_update_u32(map.as_fd(), cfg.queue, xsk.as_raw_fd() as u32)
            .map_err(os("bpf(MAP_UPDATE_ELEM)"))?;
        let insns = bpf::redirect_program(map.as_fd());
        let mut log = vec![0u8; 4096];
        // Frags-capable where the socket takes multi-buffer frames (the
        // kernel hands the program page-sized pieces instead of linearizing
        // each jumbo frame); a kernel without frags programs (before 5.18)
        // gets the plain one.
        let prog = if sg {
            bpf::prog_load_xdp_flags(&insns, bpf::BPF_F_XDP_HAS_FRAGS, &mut log)
                .or_else(|_| bpf::prog_load_xdp(&insns, &mut log))
        } else {
            bpf::prog_load_xdp(&insns, &mut log)
        };
        let prog = prog.map_err(|e| match e.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) => PortError::NotPermitted("bpf(PROG_LOAD)"),
            _ => {
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                PortError::Os {
                    op: "bpf(PROG_LOAD)",
                    source: io::Error::new(
                        e.kind(),
                        format!(
                            "{e}; verifier: {}",
                            String::from_utf8_lossy(&log[..end]).trim()
                        ),
                    ),
                }
            }
        })?;
        let mut native = matches!(cfg.mode, XdpMode::Native | XdpMode::Auto);
        let attach = |native: bool| {
            let flags = if native {
                bpf::XDP_FLAGS_DRV_MODE
            } else {
                bpf::XDP_FLAGS_SKB_MODE
            };
            bpf::xdp_link_create(prog.as_fd(), ifindex, flags)
        };
        let mut link = attach(native);
        if native && cfg.mode == XdpMode::Auto {
            if let Err(e) = &link {
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ERANGE)
                ) {
                    native = false;
                    link = attach(false);
                }
            }
        }
        let link = link.map_err(|e| {
                match e.raw_os_error() {
                    Some(libc::EBUSY | libc::EEXIST) => PortError::XdpBusy(name.into()),
                    Some(libc::EPERM | libc::EACCES) => PortError::NotPermitted("bpf(LINK_CREATE)"),
                    Some(libc::EINVAL) => PortError::Unsupported {
                        backend: "af_xdp",
                        why: format!("XDP links (BPF_LINK_CREATE, Linux 5.9+) refused: {e}"),
                    },
                    Some(libc::EOPNOTSUPP | libc::ERANGE) if native => PortError::Unsupported {
                        backend: "af_xdp",
                        why: format!("{name} refuses native XDP (its driver has none, or its MTU is too large for it): {e}"),
                    },
                    _ => PortError::Os {
                        op: "bpf(LINK_CREATE)",
                        source: e,
                    },
                }
            })?;
        let (mac, mtu) = iface_info(name)?;
        // Without multi-buffer the kernel drops every frame longer than one
        // UMEM frame (less its 256 bytes of headroom): say so now rather
        // than lose them.
        let rx_max = cfg.frame_size - XDP_PACKET_HEADROOM;
        if !sg && mtu + 14 > rx_max {
            return Err(PortError::Unsupported {
                backend: "af_xdp",
                why: format!(
                    "{name}'s MTU {mtu} makes frames of up to {} bytes, more than one UMEM frame holds ({rx_max}), and multi-buffer AF_XDP (XDP_USE_SG, Linux 6.6+) is {}: lower the MTU to {} or less",
                    mtu + 14,
                    if cfg.multi_buffer { "refused by this kernel" } else { "off" },
                    rx_max - 14
                ),
            });
        }
        Ok(XdpPort {
            link,
            _prog: prog,
            _map: map,
            rx,
            tx,
            fill,
            comp,
            xsk,
            umem,
            cfg,
            name: name.to_owned(),
            mac,
            mtu,
            sg,
            native,
            meta,
            tx_frames,
            tx_pending: false,
            rx_held: Vec::with_capacity(ringrx::LRO_MAX.max(MAX_DESCS)),
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

    /// Whether the socket takes multi-buffer frames (`XDP_USE_SG`).
    pub fn multi_buffer(&self) -> bool {
        self.sg
    }

    /// Whether the program runs in native (driver) mode, not generic.
    pub fn native(&self) -> bool {
        self.native
    }

    /// Whether frames go out with their checksum partial (TX metadata).
    pub fn csum_offload(&self) -> bool {
        self.meta != 0
    }

    /// The sizes in force.
    pub fn config(&self) -> &XdpConfig {
        &self.cfg
    }

    /// The kernel's drop counters for the socket.
    pub fn stats(&self) -> Result<XdpStats, PortError> {
        let mut b = [0u8; 48];
        let n = sock::getsockopt(self.xsk.as_fd(), SOL_XDP, XDP_STATISTICS, &mut b)
            .map_err(os("XDP_STATISTICS"))?;
        let get = |i: usize| {
            if (i + 1) * 8 <= n {
                u64::from_ne_bytes(b[i * 8..i * 8 + 8].try_into().expect("8"))
            } else {
                0
            }
        };
        Ok(XdpStats {
            rx_dropped: get(0),
            rx_invalid_descs: get(1),
            tx_invalid_descs: get(2),
            rx_ring_full: get(3),
            rx_fill_ring_empty: get(4),
            tx_ring_empty: get(5),
        })
    }

    /// Takes completed TX frames back.
    fn reap(&mut self) {
        let n = self.comp.available();
        for _ in 0..n {
            let at = self.comp.slot(self.comp.local, 8);
            if let Some(b) = self.comp.map.read::<8>(at) {
                // A run's first descriptor starts `meta` bytes into its first
                // frame; it completes the run (all of a frame's descriptors
                // complete together, with its skb). The others (at other
                // offsets when `meta` > 0) are skipped.
                let fs = u64::from(self.cfg.frame_size);
                let start = u64::from_ne_bytes(b).wrapping_sub(u64::from(self.meta));
                if start % fs == 0 {
                    self.tx_frames
                        .complete(u32::try_from(start / fs).unwrap_or(u32::MAX));
                }
            }
            self.comp.local = self.comp.local.wrapping_add(1);
        }
        if n > 0 {
            self.comp.publish(self.comp.consumer);
            self.tx_frames.advance();
        }
    }

    /// Gives an RX frame back to the kernel through the fill ring (which
    /// always has room: it holds every RX frame).
    fn refill(&mut self, addr: u64) {
        let at = self.fill.slot(self.fill.local, 8);
        self.fill.map.write(at, &addr.to_ne_bytes());
        self.fill.local = self.fill.local.wrapping_add(1);
        self.fill.publish(self.fill.producer);
    }
}

impl XdpPort {
    /// The receive path: gives the frames lent last time back to the fill
    /// ring, then lends the next frame (or, with `lro`, a coalesced run).
    fn lend(
        &mut self,
        lro: bool,
        deposit: &mut dyn FnMut(&VirtioNetHdr, &[&[u8]]),
    ) -> Result<bool, PortError> {
        if !self.rx_held.is_empty() {
            // Back to the fill ring in one batch (one index store).
            for &addr in &self.rx_held {
                let at = self.fill.slot(self.fill.local, 8);
                self.fill.map.write(at, &addr.to_ne_bytes());
                self.fill.local = self.fill.local.wrapping_add(1);
            }
            self.fill.publish(self.fill.producer);
            self.rx_held.clear();
        }
        loop {
            let avail = self.rx.available() as usize;
            if avail == 0 {
                if self.fill.needs_wakeup() {
                    self.copies.kicks += 1;
                    let _ = sock::kick_rx(self.xsk.as_fd());
                }
                return Ok(false);
            }
            // The first frame's descriptors: one, or (multi-buffer) a run
            // ending with one without XDP_PKT_CONTD.
            let mut descs = [RxDesc::default(); MAX_DESCS];
            let mut k = 0;
            let mut whole = false;
            while k < avail.min(MAX_DESCS) {
                descs[k] = self.rx_desc(k as u32);
                k += 1;
                if descs[k - 1].options & XDP_PKT_CONTD == 0 {
                    whole = true;
                    break;
                }
            }
            if !whole && k < MAX_DESCS {
                // The kernel publishes a frame's descriptors together: the
                // rest is on its way.
                return Ok(false);
            }
            if !whole || descs[..k].iter().any(|d| !d.ok) {
                // A descriptor outside the UMEM or past its frame, or a
                // frame of more pieces than the kernel makes: drop it (its
                // frames that are ours go back).
                self.copies.rx_dropped += 1;
                self.rx.local = self.rx.local.wrapping_add(k as u32);
                self.rx.publish(self.rx.consumer);
                for d in &descs[..k] {
                    if d.base < self.umem.len() as u64 {
                        self.refill(d.base);
                    }
                }
                continue;
            }
            if k > 1 {
                // A multi-buffer frame: its pieces, lent where they lie.
                let umem = &self.umem;
                let mut pieces: [&[u8]; MAX_DESCS] = [&[]; MAX_DESCS];
                for (p, d) in pieces.iter_mut().zip(&descs[..k]) {
                    *p = umem.slice(d.addr, d.len).unwrap_or(&[]);
                }
                let bytes: usize = pieces[..k].iter().map(|p| p.len()).sum();
                deposit(&VirtioNetHdr::default(), &pieces[..k]);
                self.rx_done(&descs[..k], 1, bytes);
                return Ok(true);
            }
            // Single-buffer frames: with `lro`, the run of them waiting.
            let n = if lro {
                let mut n = 1;
                while n < avail.min(ringrx::LRO_MAX) {
                    let d = self.rx_desc(n as u32);
                    if d.options & XDP_PKT_CONTD != 0 || !d.ok {
                        break;
                    }
                    n += 1;
                }
                n
            } else {
                1
            };
            let mut run = [RxDesc::default(); ringrx::LRO_MAX];
            run[0] = descs[0];
            for (i, d) in run.iter_mut().enumerate().take(n).skip(1) {
                *d = self.rx_desc(i as u32);
            }
            let umem = &self.umem;
            let frame = |i: usize| {
                run.get(i)
                    .filter(|d| i < n && d.ok)
                    .and_then(|d| umem.slice(d.addr, d.len))
            };
            let mut hdr = [0u8; ringrx::LRO_HDR_MAX];
            let (k, merged) = if lro {
                ringrx::plan(n, frame, |_| false, &mut hdr)
            } else {
                (1, None)
            };
            let mut pieces: [&[u8]; ringrx::LRO_MAX + 1] = [&[]; ringrx::LRO_MAX + 1];
            let (vnet, count) = match merged {
                None => {
                    pieces[0] = frame(0).unwrap_or(&[]);
                    (VirtioNetHdr::default(), 1)
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
            self.rx_done(&run[..k], k as u64, bytes);
            self.copies.rx_coalesced += k as u64 - 1;
            return Ok(true);
        }
    }

    /// RX descriptor `i` past our consumer index.
    fn rx_desc(&self, i: u32) -> RxDesc {
        let fs = u64::from(self.cfg.frame_size);
        let at = self.rx.slot(self.rx.local.wrapping_add(i), 16);
        let Some(b) = self.rx.map.read::<16>(at) else {
            return RxDesc::default();
        };
        let raw = u64::from_ne_bytes(b[0..8].try_into().expect("8"));
        let addr = if self.meta != 0 {
            // Unaligned chunks: the base we gave, plus the offset on top.
            (raw & ((1 << XSK_UNALIGNED_BUF_OFFSET_SHIFT) - 1))
                + (raw >> XSK_UNALIGNED_BUF_OFFSET_SHIFT)
        } else {
            raw
        };
        let len = u32::from_ne_bytes(b[8..12].try_into().expect("4")) as usize;
        let options = u32::from_ne_bytes(b[12..16].try_into().expect("4"));
        let base = addr & !(fs - 1);
        let ok = (addr - base) as usize + len <= fs as usize
            && self.umem.slice(addr as usize, len).is_some();
        RxDesc {
            base,
            addr: addr as usize,
            len,
            options,
            ok,
        }
    }

    /// Consumes the descriptors `descs` (lent: their frames go back to the
    /// fill ring at the next receive) of `frames` frames, `bytes` long.
    fn rx_done(&mut self, descs: &[RxDesc], frames: u64, bytes: usize) {
        self.rx_held.extend(descs.iter().map(|d| d.base));
        self.rx.local = self.rx.local.wrapping_add(descs.len() as u32);
        self.rx.publish(self.rx.consumer);
        self.copies.rx_frames += frames;
        self.copies.rx_copy_bytes += bytes as u64;
    }
}

/// One RX descriptor as read: its frame's base, the data's address and
/// length, its options, and whether it lies within one UMEM frame.
#[derive(Debug, Clone, Copy, Default)]
struct RxDesc {
    base: u64,
    addr: usize,
    len: usize,
    options: u32,
    ok: bool,
}

impl XdpPort {
    /// UMEM frames a TX frame of `len` bytes takes (its data starts `meta`
    /// bytes into the first, behind its metadata).
    fn frames_for(&self, len: usize) -> u32 {
        (self.meta as usize + len.max(1)).div_ceil(self.cfg.frame_size as usize) as u32
    }

    /// The bytes one TX descriptor carries at most (its length plus the
    /// metadata room the kernel checks before it fit a chunk).
    fn desc_max(&self) -> usize {
        (self.cfg.frame_size - self.meta) as usize
    }

    /// Queues the frame of `len` bytes at the next run of TX frames: one
    /// descriptor per `desc_max` bytes, all but the last marked
    /// `XDP_PKT_CONTD`; with `csum`, the first carries TX metadata asking
    /// for the checksum at (start, offset).
    fn queue_tx(&mut self, len: usize, csum: Option<(u16, u16)>) {
        let need = self.frames_for(len);
        let Some((start, skip)) = self.tx_frames.place(need) else {
            return;
        };
        let step = self.desc_max();
        let descs = len.max(1).div_ceil(step) as u32;
        if self.tx.room() < descs {
            return;
        }
        self.tx_frames.take(start, skip, need);
        let fs = u64::from(self.cfg.frame_size);
        let base = u64::from(self.tx_frames.first + start) * fs;
        let data = base + u64::from(self.meta);
        let mut opts0 = 0;
        if let (Some((cs, co)), true) = (csum, self.meta != 0) {
            // struct xsk_tx_metadata { u64 flags; union { struct { u16
            // csum_start, csum_offset; u64 launch_time; } request; ... } }
            let mut m = [0u8; TX_META_LEN as usize];
            m[0..8].copy_from_slice(&XDP_TXMD_FLAGS_CHECKSUM.to_ne_bytes());
            m[8..10].copy_from_slice(&cs.to_ne_bytes());
            m[10..12].copy_from_slice(&co.to_ne_bytes());
            self.umem.write(base as usize, &m);
            opts0 = XDP_TX_METADATA;
        }
        let mut left = len;
        for i in 0..descs {
            let addr = data + u64::from(i) * step as u64;
            let n = left.min(step);
            left -= n;
            let at = self.tx.slot(self.tx.local, 16);
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&addr.to_ne_bytes());
            d[8..12].copy_from_slice(&(n as u32).to_ne_bytes());
            let mut opts = if i + 1 < descs { XDP_PKT_CONTD } else { 0 };
            if i == 0 {
                opts |= opts0;
            }
            d[12..16].copy_from_slice(&opts.to_ne_bytes());
            self.tx.map.write(at, &d);
            self.tx.local = self.tx.local.wrapping_add(1);
        }
        self.tx.publish(self.tx.producer);
        self.tx_pending = true;
    }
}

impl TxSlots for XdpPort {
    /// Frames of the largest size that fit now (a multi-buffer frame takes
    /// a run of UMEM frames and one descriptor per `desc_max` bytes).
    fn free(&mut self) -> usize {
        self.reap();
        let cap = self.capacity();
        let per = self.frames_for(cap);
        let per_desc = cap.div_ceil(self.desc_max()) as u32;
        let frames = self.tx_frames.free().saturating_sub(per - 1) / per;
        frames.min(self.tx.room() / per_desc) as usize
    }

    fn capacity(&self) -> usize {
        let wire = self.mtu as usize + 14;
        if self.sg {
            wire.min(self.desc_max() * MAX_DESCS)
        } else {
            wire.min(self.desc_max())
        }
    }

    fn next(&mut self, len: usize) -> Result<&mut [u8], PortError> {
        let max = self.capacity();
        if len > max {
            return Err(PortError::TooLarge { len, max });
        }
        let (start, _) = self
            .tx_frames
            .place(self.frames_for(len))
            .ok_or(PortError::Disconnected)?;
        let addr = (self.tx_frames.first + start) as usize * self.cfg.frame_size as usize
            + self.meta as usize;
        self.umem
            .slice_mut(addr, len)
            .ok_or(PortError::TooLarge { len, max })
    }

    fn commit(&mut self, len: usize) {
        self.queue_tx(len, None);
    }

    fn csum_offload(&self) -> bool {
        self.meta != 0
    }

    fn commit_partial(&mut self, len: usize, csum_start: u16, csum_offset: u16) {
        self.queue_tx(len, Some((csum_start, csum_offset)));
    }
}

impl RingBackend for XdpPort {
    fn counters(&mut self) -> &mut PortCopies {
        &mut self.copies
    }

    fn tx_queued(&self) -> bool {
        self.tx_pending
    }

    /// Kicks the kernel (`sendto`) until it has taken every queued
    /// descriptor; in copy mode each kick sends up to 32 frames.
    fn kick(&mut self) -> Result<(), PortError> {
        if !self.tx_pending {
            return Ok(());
        }
        for _ in 0..256 {
            let taken = self.tx.word(self.tx.consumer).load(Ordering::Acquire);
            if taken == self.tx.local {
                self.tx_pending = false;
                return Ok(());
            }
            if !self.tx.needs_wakeup() && self.tx.flags.is_some() {
                // The kernel drives the ring itself.
                return Ok(());
            }
            self.copies.kicks += 1;
            match sock::kick_tx(self.xsk.as_fd()) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // More to send, or the completion ring is full: make room.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS)
                    ) =>
                {
                    self.reap();
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENETDOWN | libc::ENXIO)) => {
                    return Err(PortError::Disconnected)
                }
                Err(e) => {
                    return Err(PortError::Os {
                        op: "sendto (AF_XDP TX)",
                        source: e,
                    })
                }
            }
        }
        // Still not all taken: they go at the next flush.
        Ok(())
    }

    fn lend(
        &mut self,
        lro: bool,
        deposit: &mut dyn FnMut(&VirtioNetHdr, &[&[u8]]),
    ) -> Result<bool, PortError> {
        XdpPort::lend(self, lro, deposit)
    }

    fn lro(&self) -> bool {
        self.cfg.lro
    }

    fn fd(&self) -> RawFd {
        self.xsk.as_raw_fd()
    }

    fn iface_name(&self) -> &str {
        &self.name
    }
}

ring_port!(XdpPort);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_runs_wrap_and_come_back_out_of_order() {
        let mut t = TxFrames::new(8, 8);
        // Runs of 3, 3: the third would wrap, so it skips the last 2 frames.
        let (a, skip) = t.place(3).expect("room");
        assert_eq!((a, skip), (0, 0));
        t.take(a, skip, 3);
        let (b, skip) = t.place(3).expect("room");
        assert_eq!((b, skip), (3, 0));
        t.take(b, skip, 3);
        assert_eq!(t.free(), 2);
        assert_eq!(
            t.place(3),
            None,
            "2 frames left at the end, none at the start"
        );
        // The second run completes first: nothing comes back until the first
        // does (the tail stops at it).
        t.complete(8 + b);
        t.advance();
        assert_eq!(t.free(), 2);
        t.complete(8 + a);
        t.advance();
        assert_eq!(t.free(), 8);
        // Now a run of 3 at frame 6 would wrap: it skips 6 and 7 and starts
        // at 0; the skipped frames are free again as soon as the tail passes
        // them.
        let (c, skip) = t.place(3).expect("room");
        assert_eq!((c, skip), (0, 2));
        t.take(c, skip, 3);
        assert_eq!(
            t.free(),
            5,
            "the skipped frames were done: the tail passed them"
        );
        t.complete(8 + c);
        t.advance();
        assert_eq!(t.free(), 8);
        // Larger than the ring, and completions outside it, are refused.
        assert_eq!(t.place(9), None);
        t.complete(3);
        t.complete(100);
        t.advance();
        assert_eq!(t.free(), 8);
    }

    #[test]
    fn bad_sizes_and_missing_interfaces_are_errors() {
        let cfg = XdpConfig {
            frame_size: 1000,
            ..XdpConfig::default()
        };
        assert!(matches!(
            XdpPort::with_config("lo", cfg),
            Err(PortError::Os {
                op: "AF_XDP sizes",
                ..
            })
        ));
        assert!(matches!(
            XdpPort::open("nicdma-nonesuch"),
            Err(PortError::NoSuchInterface(_))
        ));
        assert!(matches!(
            XdpPort::open("lo"),
            Err(PortError::Unsupported {
                backend: "af_xdp",
                ..
            })
        ));
    }
}
